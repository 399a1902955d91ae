// swift-tools-version: 6.2
import PackageDescription

/// A policy plugin package for Ambit: copy this directory, rename `MyPolicy`, and
/// write your decision in `authorize`. See SDK/README.md.
///
/// Ambit comes by path: `AMBIT_PATH` (an Ambit checkout) or, inside Ambit's own tree,
/// `../..`. A released Ambit would be `.package(url: …, from: "0.1.0")`.
let ambitPath = Context.environment["AMBIT_PATH"] ?? "../.."

let package = Package(
    name: "my-policy",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "MyPolicy", targets: ["MyPolicy"])
    ],
    dependencies: [
        .package(name: "ambit", path: ambitPath)
    ],
    targets: [
        .target(
            name: "MyPolicy",
            dependencies: [.product(name: "Kernel", package: "ambit")]
        ),
        .testTarget(
            name: "MyPolicyTests",
            dependencies: [
                "MyPolicy",
                .product(name: "Kernel", package: "ambit"),
                .product(name: "AmbitTestKit", package: "ambit"),
            ]
        ),
    ]
)
