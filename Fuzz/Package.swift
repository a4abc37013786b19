// swift-tools-version:6.1
// libFuzzer harnesses for Weir's parsers and for whole simulated shards; a package of its own because a fuzz target has no
// main() and builds only with -sanitize=fuzzer. Run: scripts/fuzz-http.sh [seconds] [HTTPParserFuzz|MatcherFuzz|ConnectionFuzz]
import PackageDescription

let package = Package(
    name: "weir-fuzz",
    dependencies: [.package(name: "weir", path: "..")],
    targets: [
        .target(name: "FuzzSupport", swiftSettings: [.swiftLanguageMode(.v5)]),
        .executableTarget(
            name: "HTTPParserFuzz",
            dependencies: ["FuzzSupport", .product(name: "WeirHTTP", package: "weir")],
            swiftSettings: [.swiftLanguageMode(.v5), .unsafeFlags(["-parse-as-library"])]
        ),
        .executableTarget(
            name: "MatcherFuzz",
            dependencies: ["FuzzSupport", .product(name: "WeirHTTP", package: "weir")],
            swiftSettings: [.swiftLanguageMode(.v5), .unsafeFlags(["-parse-as-library"])]
        ),
        .executableTarget(
            name: "ConnectionFuzz",
            dependencies: ["FuzzSupport", .product(name: "WeirProxy", package: "weir")],
            swiftSettings: [.swiftLanguageMode(.v5), .unsafeFlags(["-parse-as-library"])]
        ),
    ]
)
