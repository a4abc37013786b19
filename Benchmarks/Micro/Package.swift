// swift-tools-version:6.1
// Micro benchmarks (package-benchmark): balancer picks and table builds, config compile-and-swap.
// A package of its own so the main build and CI never compile the benchmark framework. Run from
// this folder: swift package benchmark   (or --target BalancerPicks / ConfigCompile)
import PackageDescription

let package = Package(
    name: "weir-micro-benchmarks",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(name: "weir", path: "../.."),
        .package(url: "https://github.com/ordo-one/benchmark", from: "1.38.1", traits: ["MallocInterposer"]),
    ],
    targets: [
        .executableTarget(
            name: "BalancerPicks",
            dependencies: [
                .product(name: "Benchmark", package: "benchmark"),
                .product(name: "WeirBalance", package: "weir"),
            ],
            path: "Benchmarks/BalancerPicks",
            swiftSettings: [.swiftLanguageMode(.v5)],
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
        .executableTarget(
            name: "ConfigCompile",
            dependencies: [
                .product(name: "Benchmark", package: "benchmark"),
                .product(name: "WeirConfig", package: "weir"),
                .product(name: "WeirHTTP", package: "weir"),
            ],
            path: "Benchmarks/ConfigCompile",
            swiftSettings: [.swiftLanguageMode(.v5)],
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
    ]
)
