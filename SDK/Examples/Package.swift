// swift-tools-version: 6.2
import PackageDescription

/// Example custom policy plugins for Ambit, in a package of their own as a third party
/// would write them: they depend on Ambit's plugin API (`Kernel`), record metrics with
/// swift-metrics, and test with `AmbitTestKit`.
let package = Package(
    name: "ambit-example-policies",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "ExamplePolicies", targets: ["ExamplePolicies"])
    ],
    dependencies: [
        // Ambit by path (this repository); outside it, use
        // .package(url: "https://…/ambit.git", from: "0.1.0").
        .package(name: "ambit", path: "../.."),
        // For plugins that record metrics (`context.metrics`); the version Ambit uses.
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
    ],
    targets: [
        .target(
            name: "ExamplePolicies",
            dependencies: [
                .product(name: "Kernel", package: "ambit"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
            ],
            swiftSettings: [.enableUpcomingFeature("ExistentialAny"), .enableUpcomingFeature("MemberImportVisibility")]
        ),
        .testTarget(
            name: "ExamplePoliciesTests",
            dependencies: [
                "ExamplePolicies",
                .product(name: "Kernel", package: "ambit"),
                .product(name: "AmbitTestKit", package: "ambit"),
                .product(name: "MetricsTestKit", package: "swift-metrics"),
            ],
            swiftSettings: [.enableUpcomingFeature("ExistentialAny"), .enableUpcomingFeature("MemberImportVisibility")]
        ),
    ]
)
