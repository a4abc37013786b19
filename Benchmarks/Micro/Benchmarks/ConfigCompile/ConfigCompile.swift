// Compile-and-swap: parse a YAML config, compile it to a Snapshot (balancer tables included) and
// publish it through the SnapshotStore, carrying endpoint state from the running snapshot, as a
// reload does. Target (issue: live operations): 1,000 clusters x 10 endpoints under 50 ms.
import Benchmark
import WeirConfig

#if canImport(Glibc)
import Glibc
#endif

/// A config with `clusters` clusters of `endpoints` endpoints and one listener per 10 clusters.
func config(clusters: Int, endpoints: Int, balancer: String) -> String {
    var out = "listeners:\n"
    for l in 0..<max(1, clusters / 10) { out += "  - { name: l\(l), address: \"127.0.\(1 + l / 250).\(l % 250 + 1):\(10000 + l)\", cluster: c\(l * 10) }\n" }
    out += "clusters:\n"
    for c in 0..<clusters {
        out += "  - name: c\(c)\n    balancer: \(balancer)\n    endpoints:\n"
        for e in 0..<endpoints { out += "      - { address: \"10.\(c / 250).\(c % 250).\(e + 1):8080\", weight: \(e % 3 + 1) }\n" }
    }
    return out
}

/// Resident bytes now (/proc/self/statm), to size a snapshot held in memory.
func heapInUse() -> Int {
    let fd = open("/proc/self/statm", O_RDONLY)
    defer { close(fd) }
    var buffer = [UInt8](repeating: 0, count: 128)
    let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
    let fields = String(decoding: buffer[0..<max(0, n)], as: UTF8.self).split(separator: " ")
    return (fields.count > 1 ? Int(fields[1]) ?? 0 : 0) * Int(sysconf(Int32(_SC_PAGESIZE)))
}

let benchmarks: @Sendable () -> Void = {
    let settings = Benchmark.Configuration(metrics: [.wallClock, .mallocCountTotal], scalingFactor: .one,
                                           maxDuration: .seconds(10), maxIterations: 20)
    for (clusters, balancer) in [(1_000, "round_robin"), (1_000, "ring_hash"), (10_000, "round_robin")] {
        let yaml = config(clusters: clusters, endpoints: 10, balancer: balancer)
        let first = try! Compiler.compile(YAMLLoader.parse(yaml, file: "bench.yaml"))
        let store = SnapshotStore(first)
        let before = heapInUse()
        let held = try! Compiler.compile(YAMLLoader.parse(yaml, file: "bench.yaml"))
        print("snapshot of \(clusters) x 10 \(balancer): \((heapInUse() - before) / 1024) KiB more resident memory, \(held.clusters.count) clusters")
        Benchmark("compile and swap, \(clusters) clusters x 10 endpoints, \(balancer)", configuration: settings) { _ in
            let next = try! Compiler.compile(YAMLLoader.parse(yaml, file: "bench.yaml"), previous: store.snapshot)
            blackHole(store.publish { current in next.inheritingEndpointState(from: current, now: 1) })
        }
        Benchmark("compile only (no YAML), \(clusters) clusters x 10 endpoints, \(balancer)", configuration: settings) { benchmark in
            let doc = try! YAMLLoader.parse(yaml, file: "bench.yaml")
            benchmark.startMeasurement()
            blackHole(try! Compiler.compile(doc))
        }
        Benchmark("compile and swap without YAML, unchanged tables reused, \(clusters) clusters x 10 endpoints, \(balancer)", configuration: settings) { benchmark in
            let doc = try! YAMLLoader.parse(yaml, file: "bench.yaml")
            benchmark.startMeasurement()
            let next = try! Compiler.compile(doc, previous: store.snapshot)
            blackHole(store.publish { current in next.inheritingEndpointState(from: current, now: 1) })
        }
    }
}
