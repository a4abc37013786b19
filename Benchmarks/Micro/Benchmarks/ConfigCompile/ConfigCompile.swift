// Compile-and-swap: parse a YAML config, compile it to a Snapshot (balancer tables included) and
// publish it through the SnapshotStore, carrying endpoint state from the running snapshot, as a
// reload does. Target (issue: live operations): 1,000 clusters x 10 endpoints under 50 ms.
import Benchmark
import WeirConfig
import WeirHTTP

#if canImport(Glibc)
import Glibc
#endif

/// A config with `clusters` clusters of `endpoints` endpoints and one listener per 10 clusters,
/// plus (when `routes` > 0) an HTTP listener with that many routes, each on its own host and path.
func config(clusters: Int, endpoints: Int, balancer: String, routes: Int = 0) -> String {
    var out = "listeners:\n"
    for l in 0..<max(1, clusters / 10) { out += "  - { name: l\(l), address: \"127.0.\(1 + l / 250).\(l % 250 + 1):\(10000 + l)\", cluster: c\(l * 10) }\n" }
    if routes > 0 {
        out += "  - name: web\n    address: 127.0.0.1:8080\n    protocol: http\n    routes:\n"
        for r in 0..<routes { out += "      - { match: { host: [h\(r).example.com], path_prefix: /r\(r) }, cluster: c\(r % clusters) }\n" }
    }
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
    routing()
    let settings = Benchmark.Configuration(metrics: [.wallClock, .mallocCountTotal], scalingFactor: .one,
                                           maxDuration: .seconds(10), maxIterations: 20)
    for (clusters, balancer, routes) in [(1_000, "round_robin", 0), (1_000, "ring_hash", 0), (10_000, "round_robin", 0),
                                         (1_000, "round_robin", 10_000)] {
        let yaml = config(clusters: clusters, endpoints: 10, balancer: balancer, routes: routes)
        let name = "\(clusters) clusters x 10 endpoints, \(balancer)\(routes > 0 ? ", \(routes) routes" : "")"
        let first = try! Compiler.compile(YAMLLoader.parse(yaml, file: "bench.yaml"))
        let store = SnapshotStore(first)
        let before = heapInUse()
        let held = try! Compiler.compile(YAMLLoader.parse(yaml, file: "bench.yaml"))
        print("snapshot of \(name): \((heapInUse() - before) / 1024) KiB more resident memory, \(held.clusters.count) clusters")
        Benchmark("compile and swap, \(name)", configuration: settings) { _ in
            let next = try! Compiler.compile(YAMLLoader.parse(yaml, file: "bench.yaml"), previous: store.snapshot)
            blackHole(store.publish { current in next.inheritingEndpointState(from: current, now: 1) })
        }
        Benchmark("compile only (no YAML), \(name)", configuration: settings) { benchmark in
            let doc = try! YAMLLoader.parse(yaml, file: "bench.yaml")
            benchmark.startMeasurement()
            blackHole(try! Compiler.compile(doc))
        }
        Benchmark("compile and swap without YAML, unchanged tables reused, \(name)", configuration: settings) { benchmark in
            let doc = try! YAMLLoader.parse(yaml, file: "bench.yaml")
            benchmark.startMeasurement()
            let next = try! Compiler.compile(doc, previous: store.snapshot)
            blackHole(store.publish { current in next.inheritingEndpointState(from: current, now: 1) })
        }
    }
}

/// Route matching at 10,000 routes: the request matches the last route (its host is indexed), or
/// a host no route names (404 after the host-less routes).
let routing: @Sendable () -> Void = {
    let yaml = config(clusters: 10, endpoints: 1, balancer: "round_robin", routes: 10_000)
    let table = try! Compiler.compile(YAMLLoader.parse(yaml, file: "bench.yaml")).listeners.first { $0.http != nil }!.http!.routes
    let headers = HeaderTable(capacity: 64)
    for (label, text) in [("last of 10,000 routes", "GET /r9999/x HTTP/1.1\r\nHost: h9999.example.com\r\n\r\n"),
                          ("no route among 10,000", "GET /x HTTP/1.1\r\nHost: nowhere.example.org\r\n\r\n")] {
        let bytes = Array(text.utf8)
        Benchmark("route match, \(label)", configuration: .init(metrics: [.wallClock, .mallocCountTotal], scalingFactor: .kilo)) { benchmark in
            bytes.withUnsafeBytes { buf in
                guard case .complete(let head) = HTTPParser.parseRequest(buf, limits: HTTPLimits(), headers: headers) else { fatalError() }
                for _ in benchmark.scaledIterations { blackHole(table.firstMatch(head, source: buf, headers: headers)) }
            }
        }
    }
}
