// swift-tools-version: 6.2
import Foundation
import PackageDescription

// libFuzzer targets for Ambit's parsers of untrusted input. A package of its own, so the
// main package's build and `swift test` never see the sanitizer flags; `fuzz/run` builds
// it with `-sanitize=fuzzer,address` and runs every target (see RELIABILITY.md).

/// SwiftPM names a path dependency after its folder: the checkout's own name.
let ambitFolder = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
let ambit = ambitFolder.lastPathComponent

let strictSettings: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("MemberImportVisibility"),
]

/// One fuzz target: an executable whose `main` hands the fuzz function to libFuzzer.
func fuzzTarget(_ name: String, _ products: [String]) -> Target {
    .executableTarget(
        name: "fuzz-\(name)",
        dependencies: ["FuzzSupport"] + products.map { .product(name: $0, package: ambit) },
        path: "Sources/fuzz-\(name)",
        swiftSettings: strictSettings
    )
}

let package = Package(
    name: "ambit-fuzz",
    platforms: [.macOS(.v15)],
    products: [],
    dependencies: [
        .package(path: ambitFolder.path)
    ],
    targets: [
        .target(name: "FuzzSupport", path: "Sources/FuzzSupport", swiftSettings: strictSettings),
        fuzzTarget("socks5", ["Capture"]),
        fuzzTarget("manifest", ["Kernel", "LocalConfig", "Capture", "Authorization", "Telemetry", "HBONE", "Certificates", "CAServer"]),
        fuzzTarget("local-config", ["Kernel", "LocalConfig"]),
        fuzzTarget("authz", ["Kernel", "Authorization"]),
        fuzzTarget("hbone-request", ["Kernel", "HBONE"]),
        fuzzTarget("pem-csr", ["Kernel", "LocalConfig", "Certificates", "CAServer"]),
    ]
)
