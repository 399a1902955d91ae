// swift-tools-version: 6.2
import PackageDescription

/// Settings every Ambit module compiles with: Swift 6 language mode (the tools
/// version's default) plus the upcoming features that keep APIs explicit.
let strictSettings: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("MemberImportVisibility"),
]

let package = Package(
    name: "ambit",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "ambit", targets: ["ambit"]),
        .library(name: "Kernel", targets: ["Kernel"]),
        .library(name: "LocalConfig", targets: ["LocalConfig"]),
        .library(name: "Capture", targets: ["Capture"]),
        .library(name: "Authorization", targets: ["Authorization"]),
        .library(name: "Telemetry", targets: ["Telemetry"]),
        // The SDK: `Kernel` is the plugin API; `AmbitTestKit` tests plugins; `AmbitCLI`
        // is the command line a composed binary runs (see SDK/README.md).
        .library(name: "AmbitTestKit", targets: ["AmbitTestKit"]),
        .library(name: "AmbitCLI", targets: ["AmbitCLI"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.3"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/jpsim/Yams.git", from: "6.2.2"),
        .package(url: "https://github.com/apple/swift-crypto.git", from: "4.5.2"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
    ],
    targets: [
        .target(
            name: "Kernel",
            dependencies: [
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "Yams", package: "Yams"),
            ],
            swiftSettings: strictSettings
        ),
        .target(
            name: "LocalConfig",
            dependencies: ["Kernel"],
            path: "Sources/Plugins/LocalConfig",
            swiftSettings: strictSettings
        ),
        .target(
            name: "Capture",
            dependencies: ["Kernel"],
            path: "Sources/Plugins/Capture",
            swiftSettings: strictSettings
        ),
        .target(
            name: "Authorization",
            dependencies: [
                "Kernel",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            path: "Sources/Plugins/Authorization",
            swiftSettings: strictSettings
        ),
        .executableTarget(
            name: "ambit-policy-bench",
            dependencies: ["Kernel", "Authorization"],
            path: "bench/PolicyBench",
            swiftSettings: strictSettings
        ),
        .target(
            name: "Telemetry",
            dependencies: [
                "Kernel",
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            path: "Sources/Plugins/Telemetry",
            swiftSettings: strictSettings
        ),
        .target(
            name: "AmbitCLI",
            dependencies: [
                "Kernel", "LocalConfig", "Capture", "Authorization", "Telemetry",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: strictSettings
        ),
        .executableTarget(
            name: "ambit",
            dependencies: ["AmbitCLI"],
            swiftSettings: strictSettings
        ),
        .target(
            name: "AmbitTestKit",
            dependencies: [
                "Kernel", "LocalConfig", "Capture",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strictSettings
        ),
        .target(
            name: "TestSupport",
            dependencies: [
                "Kernel",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            path: "Tests/TestSupport",
            swiftSettings: strictSettings
        ),
        .plugin(
            name: "NewPlugin",
            capability: .command(
                intent: .custom(verb: "new-plugin", description: "Scaffold a new Ambit plugin target"),
                permissions: [.writeToPackageDirectory(reason: "creates Sources/Plugins/<Name>/")]
            ),
            path: "Plugins/NewPlugin"
        ),
        .plugin(
            name: "Compose",
            capability: .command(
                intent: .custom(
                    verb: "compose",
                    description: "Build an ambit binary with the first-party plugins plus third-party plugin packages"),
                permissions: [
                    .writeToPackageDirectory(reason: "generates and builds the composed package under .build-compose/")
                ]
            ),
            path: "Plugins/Compose"
        ),
        .testTarget(
            name: "KernelTests",
            dependencies: [
                "Kernel", "TestSupport",
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "LocalConfigTests",
            dependencies: ["Kernel", "LocalConfig"],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "CaptureTests",
            dependencies: ["Kernel", "Capture", "LocalConfig", "TestSupport"],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "AuthorizationTests",
            dependencies: [
                "Kernel", "Authorization", "LocalConfig", "TestSupport",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "TelemetryTests",
            dependencies: [
                "Kernel", "Capture", "LocalConfig", "Telemetry", "TestSupport",
                .product(name: "Prometheus", package: "swift-prometheus"),
            ],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "SDKTests",
            dependencies: [
                "Kernel", "AmbitTestKit", "AmbitCLI", "TestSupport",
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "AmbitTests",
            dependencies: ["Kernel", "LocalConfig", "Capture", "TestSupport"],
            swiftSettings: strictSettings
        ),
    ]
)
