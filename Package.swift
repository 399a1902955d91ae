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
        .library(name: "HBONE", targets: ["HBONE"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.3"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/jpsim/Yams.git", from: "6.2.2"),
        .package(url: "https://github.com/apple/swift-crypto.git", from: "4.5.2"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-nio-http2.git", from: "1.46.0"),
        .package(url: "https://github.com/apple/swift-certificates.git", from: "1.21.1"),
        .package(url: "https://github.com/apple/swift-asn1.git", from: "1.7.4"),
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
            name: "HBONE",
            dependencies: [
                "Kernel",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOTLS", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOHTTP2", package: "swift-nio-http2"),
                .product(name: "NIOHPACK", package: "swift-nio-http2"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            path: "Sources/Plugins/HBONE",
            swiftSettings: strictSettings
        ),
        .executableTarget(
            name: "ambit",
            dependencies: [
                "Kernel", "LocalConfig", "Capture", "HBONE",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
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
        .testTarget(
            name: "KernelTests",
            dependencies: [
                "Kernel",
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
            name: "HBONETests",
            dependencies: [
                "Kernel", "LocalConfig", "Capture", "HBONE", "TestSupport",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOHTTP2", package: "swift-nio-http2"),
                .product(name: "NIOHPACK", package: "swift-nio-http2"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
                .product(name: "Crypto", package: "swift-crypto"),
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
