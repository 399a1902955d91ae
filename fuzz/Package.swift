// swift-tools-version: 6.2
import Foundation
import PackageDescription

// libFuzzer targets for Ambit's parsers of untrusted input. A package of its own, so the
// main package's build and `swift test` never see the sanitizer flags; `fuzz/run` builds
// it with `-sanitize=fuzzer,address` and runs every target (see RELIABILITY.md).

/// SwiftPM names a path dependency after its folder: the checkout's own name.
let ambitFolder = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
let ambit = ambitFolder.lastPathComponent.lowercased()

let strictSettings: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("MemberImportVisibility"),
]

/// One fuzz target: an executable whose `main` hands the fuzz function to libFuzzer.
func fuzzTarget(_ name: String, _ products: [String]) -> Target {
    .executableTarget(
        name: "fuzz-\(name)",
        dependencies: ["FuzzSupport"]
            + products.map { product -> Target.Dependency in
                product.hasPrefix("NIO") ? .product(name: product, package: "swift-nio") : .product(name: product, package: ambit)
            },
        path: "Sources/fuzz-\(name)",
        swiftSettings: strictSettings
    )
}

/// Every target; `AMBIT_FUZZ_TARGETS=a,b` (set by `fuzz/run --target`) keeps only some, so
/// a short run builds only what it runs.
let allTargets: [(name: String, products: [String])] = [
    ("socks5", ["Capture"]),
    ("socks5-handler", ["Kernel", "Capture", "NIOCore", "NIOEmbedded", "NIOConcurrencyHelpers"]),
    ("hbone-request", ["Kernel", "HBONE", "NodeProxy"]),
    // Not the certificates and ca-server plugins: they would link the Istio CA's gRPC
    // stack, which doubles the sanitizer build; their configs use the same decoder.
    ("manifest", ["Kernel", "AmbitRuntime", "NodeProxy", "LocalConfig", "Capture", "Authorization", "Telemetry", "HBONE"]),
    ("local-config", ["Kernel", "LocalConfig", "NodeProxy"]),
    ("authz", ["Kernel", "Authorization"]),
    ("ip-address", ["Kernel"]),
    ("pem-csr", ["Kernel", "LocalConfig", "Certificates", "CAServer"]),
    ("dns-message", ["Kernel", "DNSProxy"]),
    ("zds-message", ["Capture"]),
    // Links the gRPC stack too (the xds plugin's module): run by hand, not in CI's short run.
    ("xds-resource", ["Kernel", "XDS"]),
]
let selected = ProcessInfo.processInfo.environment["AMBIT_FUZZ_TARGETS"].map { $0.split(separator: ",").map(String.init) }

let package = Package(
    name: "ambit-fuzz",
    platforms: [.macOS(.v15)],
    products: [],
    dependencies: [
        .package(path: ambitFolder.path),
        // The same SwiftNIO as the main package (its Package.swift pins the version).
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.3"),
    ],
    targets: [
        .target(name: "FuzzSupport", path: "Sources/FuzzSupport", swiftSettings: strictSettings)
    ] + allTargets.filter { selected?.contains($0.name) ?? true }.map { fuzzTarget($0.name, $0.products) }
)
