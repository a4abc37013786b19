// swift-tools-version:6.1
// Weir: a Layer 4/7 load balancer on io_uring. See README.md and man/weir.8.
import PackageDescription

// Swift 5 language mode for now: the data plane is pointer slabs owned by one thread each, which
// strict Sendable checking cannot express without wrapping every shard pointer.
let v5: [SwiftSetting] = [.swiftLanguageMode(.v5)]

let package = Package(
    name: "weir",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "weir", targets: ["weir"]),
        // For Benchmarks/Micro, which measures the balancers alone.
        .library(name: "WeirBalance", targets: ["WeirBalance"]),
        // For Benchmarks/Micro (config compile-and-swap).
        .library(name: "WeirConfig", targets: ["WeirConfig"]),
        // For Fuzz/, which runs the HTTP parser under libFuzzer.
        .library(name: "WeirHTTP", targets: ["WeirHTTP"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
    ],
    targets: [
        .systemLibrary(name: "CURing", pkgConfig: "liburing",
                       providers: [.apt(["liburing-dev"])]),
        .systemLibrary(name: "COpenSSL", pkgConfig: "openssl",
                       providers: [.apt(["libssl-dev"])]),
        .target(name: "CWeirSys"),
        // Session ticket key rotation: an OpenSSL callback, in C.
        .target(name: "CWeirTLS", dependencies: ["COpenSSL"], linkerSettings: [.linkedLibrary("ssl"), .linkedLibrary("crypto")]),
        .target(name: "WeirCore", dependencies: [.product(name: "Logging", package: "swift-log")], swiftSettings: v5),
        .target(name: "WeirRing", dependencies: ["CURing", "WeirCore"], swiftSettings: v5),
        .target(name: "WeirBalance", dependencies: ["WeirCore"], swiftSettings: v5),
        .target(name: "WeirHTTP", swiftSettings: v5),
        .target(name: "WeirHealth", swiftSettings: v5),
        .target(name: "WeirConfig",
                dependencies: ["WeirCore", "WeirBalance", "WeirHealth", "WeirHTTP", "COpenSSL", "CWeirTLS", .product(name: "Yams", package: "Yams")],
                swiftSettings: v5),
        .target(name: "WeirProxy",
                dependencies: ["WeirCore", "WeirRing", "WeirBalance", "WeirConfig", "WeirHealth", "WeirHTTP", "CWeirSys", "COpenSSL"],
                swiftSettings: v5),
        .target(name: "WeirAdmin", dependencies: ["WeirProxy", "WeirConfig", "WeirHTTP", "WeirRing", "WeirCore"], swiftSettings: v5),
        .target(name: "WeirDemo", dependencies: ["WeirCore"], swiftSettings: v5),
        .executableTarget(name: "weir",
                          dependencies: ["WeirCore", "WeirConfig", "WeirProxy", "WeirRing", "WeirDemo", "WeirAdmin", "WeirHealth",
                                         .product(name: "ArgumentParser", package: "swift-argument-parser")],
                          swiftSettings: v5),
        .testTarget(name: "WeirConfigTests", dependencies: ["WeirConfig", "WeirBalance"], swiftSettings: v5),
        .testTarget(name: "WeirBalanceTests", dependencies: ["WeirBalance"], swiftSettings: v5),
        .testTarget(name: "WeirHealthTests", dependencies: ["WeirHealth"], swiftSettings: v5),
        .testTarget(name: "WeirHTTPTests", dependencies: ["WeirHTTP"], swiftSettings: v5),
        .testTarget(name: "WeirRingTests", dependencies: ["WeirRing", "CURing"], swiftSettings: v5),
        .testTarget(name: "IntegrationTests", dependencies: ["weir", "WeirDemo"],
                    exclude: ["Support/http_upstream.py", "Support/tls_peers.py", "Support/make_certs.sh"], swiftSettings: v5),
    ]
)
