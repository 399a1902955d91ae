// swift-tools-version: 6.2
import PackageDescription

/// Settings every Ambit module compiles with: Swift 6 language mode (the tools
/// version's default) plus the upcoming features that keep APIs explicit.
let strictSettings: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("MemberImportVisibility"),
    .enableUpcomingFeature("InternalImportsByDefault"),
]

/// What both ends of Istio's CA API (the certificates client, the CA server) build on:
/// X.509 and keys, TLS, gRPC over HTTP/2 with protobuf messages.
let istioCADependencies: [Target.Dependency] = [
    .product(name: "X509", package: "swift-certificates"),
    .product(name: "SwiftASN1", package: "swift-asn1"),
    .product(name: "Crypto", package: "swift-crypto"),
    .product(name: "NIOSSL", package: "swift-nio-ssl"),
    .product(name: "GRPCCore", package: "grpc-swift-2"),
    .product(name: "GRPCNIOTransportHTTP2", package: "grpc-swift-nio-transport"),
    .product(name: "GRPCProtobuf", package: "grpc-swift-protobuf"),
    .product(name: "SwiftProtobuf", package: "swift-protobuf"),
]

let package = Package(
    name: "ambit",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "ambit", targets: ["ambit"]),
        .library(name: "Kernel", targets: ["Kernel"]),
        .library(name: "ConfigYAML", targets: ["ConfigYAML"]),
        .library(name: "AmbitRuntime", targets: ["AmbitRuntime"]),
        .library(name: "NodeProxy", targets: ["NodeProxy"]),
        .library(name: "LocalConfig", targets: ["LocalConfig"]),
        .library(name: "Capture", targets: ["Capture"]),
        .library(name: "DNSProxy", targets: ["DNSProxy"]),
        .library(name: "Authorization", targets: ["Authorization"]),
        .library(name: "Telemetry", targets: ["Telemetry"]),
        .library(name: "HBONE", targets: ["HBONE"]),
        .library(name: "Certificates", targets: ["Certificates"]),
        .library(name: "CAServer", targets: ["CAServer"]),
        .library(name: "XDS", targets: ["XDS"]),
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
        .package(url: "https://github.com/apple/swift-certificates.git", from: "1.21.1"),
        .package(url: "https://github.com/apple/swift-asn1.git", from: "1.7.4"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-protobuf.git", from: "1.39.0"),
        .package(url: "https://github.com/grpc/grpc-swift-2.git", from: "2.4.3"),
        .package(url: "https://github.com/grpc/grpc-swift-nio-transport.git", from: "2.9.2"),
        .package(url: "https://github.com/grpc/grpc-swift-protobuf.git", from: "2.4.1"),
        .package(url: "https://github.com/apple/swift-nio-http2.git", from: "1.46.0"),
        .package(url: "https://github.com/swiftlang/swift-subprocess", from: "1.0.2"),
        .package(url: "https://github.com/apple/swift-system", from: "1.8.1"),
    ],
    targets: [
        // Linux calls Glibc's Swift module leaves out (setns, fstatfs).
        .target(name: "CAmbitSystem"),
        // The plugin API: what every plugin, SDK plugins included, builds against. No
        // NIOPosix, no YAML parser, no C module (`scripts/check-plugin-api` checks it in CI).
        .target(
            name: "Kernel",
            dependencies: [
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strictSettings
        ),
        // YAML into the plugin API's config values (manifests, mesh and policy files).
        .target(
            name: "ConfigYAML",
            dependencies: ["Kernel", .product(name: "Yams", package: "Yams")],
            swiftSettings: strictSettings
        ),
        // The node runtime: lifecycle, manifest loading, admin and readiness, sockets, the
        // relay, network namespaces, logging.
        .target(
            name: "AmbitRuntime",
            dependencies: [
                "Kernel", "ConfigYAML", "CAmbitSystem",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strictSettings
        ),
        // The node-proxy role (ztunnel's): the forwarding decision, the inbound and outbound
        // paths every capture source and tunnel terminator uses, the captured pods.
        .target(
            name: "NodeProxy",
            dependencies: [
                "Kernel", "AmbitRuntime",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strictSettings
        ),
        .target(
            name: "LocalConfig",
            dependencies: ["Kernel", "ConfigYAML", "AmbitRuntime"],
            path: "Sources/Plugins/LocalConfig",
            swiftSettings: strictSettings
        ),
        // The DNS proxy (ztunnel's): mesh answers for service names, the rest forwarded;
        // the capture plugin runs one inside each pod.
        .target(
            name: "DNSProxy",
            dependencies: [
                "Kernel", "AmbitRuntime",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
            ],
            path: "Sources/Plugins/DNS",
            swiftSettings: strictSettings
        ),
        .target(
            name: "Capture",
            // Subprocess: the in-pod rule tools (iptables-restore, ip6tables-restore, nft, ip);
            // SystemPackage: the file their standard input is fed from.
            dependencies: [
                "Kernel", "AmbitRuntime", "NodeProxy", "DNSProxy", "IstioXDSAPI", "CAmbitSystem",
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                .product(name: "Subprocess", package: "swift-subprocess"),
                .product(name: "SystemPackage", package: "swift-system"),
            ],
            path: "Sources/Plugins/Capture",
            swiftSettings: strictSettings
        ),
        .target(
            name: "Authorization",
            dependencies: [
                "Kernel", "ConfigYAML", "AmbitRuntime",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            path: "Sources/Plugins/Authorization",
            swiftSettings: strictSettings
        ),
        .executableTarget(
            name: "ambit-mesh-bench",
            dependencies: ["Kernel"],
            path: "bench/MeshBench",
            swiftSettings: strictSettings
        ),
        .executableTarget(
            name: "ambit-policy-bench",
            dependencies: ["Kernel", "AmbitRuntime", "Authorization"],
            path: "bench/PolicyBench",
            swiftSettings: strictSettings
        ),
        .target(
            name: "Telemetry",
            dependencies: [
                "Kernel", "AmbitRuntime",
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
            name: "IstioCAAPI",
            dependencies: [
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "GRPCProtobuf", package: "grpc-swift-protobuf"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            ],
            exclude: ["istio-ca.proto"],
            // Generated by protoc-swift and grpc-swift: their imports are as generated.
            swiftSettings: strictSettings.filter { "\($0)" != "\(SwiftSetting.enableUpcomingFeature("InternalImportsByDefault"))" }
        ),
        // istio's Workload API and the delta xDS messages it travels in (generated code,
        // committed; scripts/generate-istio-xds.sh regenerates it).
        .target(
            name: "IstioXDSAPI",
            dependencies: [
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "GRPCProtobuf", package: "grpc-swift-protobuf"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            ],
            exclude: ["workload.proto", "authorization.proto", "zds.proto", "xds.proto", "google/rpc/status.proto"],
            // Generated by protoc-swift and grpc-swift: their imports are as generated.
            swiftSettings: strictSettings.filter { "\($0)" != "\(SwiftSetting.enableUpcomingFeature("InternalImportsByDefault"))" }
        ),
        .target(
            name: "XDS",
            dependencies: [
                "Kernel", "AmbitRuntime", "IstioXDSAPI",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "GRPCNIOTransportHTTP2", package: "grpc-swift-nio-transport"),
                .product(name: "GRPCProtobuf", package: "grpc-swift-protobuf"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            path: "Sources/Plugins/XDS",
            swiftSettings: strictSettings
        ),
        // The xDS path at scale (issue 18): the istiod stand-in pushing N workloads to a
        // node running the real xds plugin, on loopback.
        .executableTarget(
            name: "ambit-xds-bench",
            dependencies: [
                "Kernel", "AmbitRuntime", "XDS", "IstioXDSAPI", "IstiodStandIn", "Certificates", "TestSupport",
                "CAmbitSystem",
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            ],
            path: "bench/XDSBench",
            swiftSettings: strictSettings
        ),
        .target(
            name: "Certificates",
            dependencies: [
                "Kernel", "AmbitRuntime", "IstioCAAPI",
            ] + istioCADependencies,
            path: "Sources/Plugins/Certificates",
            swiftSettings: strictSettings
        ),
        .target(
            name: "CAServer",
            dependencies: [
                "Kernel", "ConfigYAML", "AmbitRuntime", "Certificates", "IstioCAAPI",
            ] + istioCADependencies,
            path: "Sources/Plugins/CAServer",
            swiftSettings: strictSettings
        ),
        .target(
            name: "HBONE",
            dependencies: [
                // Not NodeProxy: the transport hands streams to whichever TunnelTerminator is enabled.
                "Kernel", "AmbitRuntime",
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
        .target(
            name: "AmbitCLI",
            dependencies: [
                "Kernel", "ConfigYAML", "AmbitRuntime", "NodeProxy", "LocalConfig", "Capture", "Authorization",
                "Telemetry", "Certificates", "CAServer", "HBONE", "XDS",
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
                "Kernel", "ConfigYAML", "AmbitRuntime", "NodeProxy", "LocalConfig", "Capture", "Certificates", "HBONE",
                "Telemetry",
                .product(name: "CoreMetrics", package: "swift-metrics"),
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
                "Kernel", "AmbitRuntime", "CAmbitSystem", "IstioXDSAPI",
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            path: "Tests/TestSupport",
            swiftSettings: strictSettings
        ),
        // A stand-in for istiod in tests: a delta ADS server over TLS built from the same
        // generated code, with a token check and scripted pushes.
        .target(
            name: "IstiodStandIn",
            dependencies: [
                "Kernel", "IstioXDSAPI",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "GRPCNIOTransportHTTP2", package: "grpc-swift-nio-transport"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            ],
            path: "Tests/IstiodStandIn",
            swiftSettings: strictSettings
        ),
        // The stand-in as a process, for end-to-end tests of `ambit run --profile ztunnel`
        // nodes (Tests/e2e/istiod.py): xDS from a resources file and the CA API, one port.
        .executableTarget(
            name: "ambit-istiod-standin",
            dependencies: [
                "IstiodStandIn", "CAServer", "Certificates", "XDS", "Kernel", "IstioXDSAPI",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ],
            path: "Tests/IstiodStandInTool",
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
                "Kernel", "ConfigYAML", "AmbitRuntime", "NodeProxy", "TestSupport",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
            ],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "DNSProxyTests",
            dependencies: [
                "Kernel", "ConfigYAML", "AmbitRuntime", "DNSProxy", "Telemetry", "TestSupport",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "MetricsTestKit", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "LocalConfigTests",
            dependencies: ["Kernel", "ConfigYAML", "AmbitRuntime", "LocalConfig"],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "CaptureTests",
            dependencies: [
                "Kernel", "ConfigYAML", "AmbitRuntime", "NodeProxy", "Capture", "LocalConfig", "TestSupport",
                "IstioXDSAPI", "CAmbitSystem", "DNSProxy",
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
            ],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "AuthorizationTests",
            dependencies: [
                "Kernel", "ConfigYAML", "AmbitRuntime", "NodeProxy", "Authorization", "LocalConfig", "TestSupport",
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
                "Kernel", "ConfigYAML", "AmbitRuntime", "NodeProxy", "Capture", "LocalConfig", "Telemetry", "TestSupport",
                .product(name: "Prometheus", package: "swift-prometheus"),
            ],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "CertificatesTests",
            dependencies: [
                "Kernel", "ConfigYAML", "AmbitRuntime", "LocalConfig", "Certificates", "CAServer", "IstioCAAPI", "TestSupport",
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "GRPCNIOTransportHTTP2", package: "grpc-swift-nio-transport"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            ],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "XDSTests",
            dependencies: [
                "Kernel", "ConfigYAML", "AmbitRuntime", "NodeProxy", "LocalConfig", "Capture", "Authorization",
                "Telemetry", "Certificates", "XDS", "IstioXDSAPI", "IstiodStandIn", "TestSupport",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                .product(name: "GRPCCore", package: "grpc-swift-2"),
            ],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "HBONETests",
            dependencies: [
                "Kernel", "ConfigYAML", "AmbitRuntime", "NodeProxy", "LocalConfig", "Capture", "HBONE", "Telemetry",
                "TestSupport",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOTLS", package: "swift-nio"),
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
            name: "SDKTests",
            dependencies: [
                "Kernel", "ConfigYAML", "AmbitRuntime", "AmbitTestKit", "AmbitCLI", "Telemetry", "TestSupport",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "MetricsTestKit", package: "swift-metrics"),
            ],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "AmbitTests",
            dependencies: [
                "Kernel", "ConfigYAML", "AmbitRuntime", "NodeProxy", "LocalConfig", "Capture", "TestSupport", "AmbitCLI",
                "Certificates",
            ],
            exclude: ["Fixtures"],
            swiftSettings: strictSettings
        ),
    ]
)
