import Testing
@testable import WeirConfig
import WeirBalance
import WeirCore
import WeirHTTP

/// Compiles `yaml` and returns the error messages with their line:column, or [] if it compiled.
func errors(_ yaml: String) -> [String] {
    do {
        _ = try Compiler.compile(YAMLLoader.parse(yaml, file: "t.yaml"))
        return []
    } catch let e as ConfigErrors {
        return e.errors.map { "\($0.position.line):\($0.position.column) \($0.message)" }
    } catch {
        return ["unexpected \(error)"]
    }
}

let good = """
shards: 2
listeners:
  - name: pg
    address: 127.0.0.1:6432
    protocol: tcp
    cluster: pg
clusters:
  - name: pg
    balancer: round_robin
    connect_timeout: 1s
    endpoints:
      - { address: 127.0.0.1:5432, weight: 1 }
      - { address: "[::1]:5433", weight: 3 }
"""

@Suite struct CompilerTests {
    @Test func aGoodConfigCompilesWithItsValuesAndDefaults() throws {
        let s = try Compiler.compile(YAMLLoader.parse(good, file: "t.yaml"))
        #expect(s.shards == 2)
        #expect(s.listeners.count == 1)
        #expect(s.listeners[0].address == SocketAddress(ipv4: 127, 0, 0, 1, port: 6432))
        #expect(s.listeners[0].idleTimeoutNanoseconds == Compiler.defaultIdleTimeoutNanoseconds)
        #expect(s.clusters[0].connectTimeoutNanoseconds == 1_000_000_000)
        #expect(s.clusters[0].connectAttempts == 3)
        #expect(s.clusters[0].endpoints.map(\.weight) == [1, 3])
        #expect(s.clusters[0].endpoints[1].address.description == "[::1]:5433")
        #expect(s.drainTimeoutNanoseconds == 30_000_000_000)
        #expect(s.limits == .defaults)
    }

    @Test func endpointPrioritiesBecomeDenseLevels() throws {
        let yaml = good.replacingOccurrences("""
              - { address: 127.0.0.1:5432, weight: 1 }
              - { address: "[::1]:5433", weight: 3 }
        """, """
              - { address: 127.0.0.1:5432, priority: 0 }
              - { address: 127.0.0.1:5433, priority: 2 }
              - { address: 127.0.0.1:5434, priority: 2 }
        """).replacingOccurrences("    connect_timeout: 1s", "    connect_timeout: 1s\n    overprovisioning_factor: 150")
        let c = try Compiler.compile(YAMLLoader.parse(yaml, file: "t.yaml")).clusters[0]
        #expect(c.endpoints.map(\.priority) == [0, 1, 1])
        #expect(c.overprovisioningPercent == 150 && c.hasLevels)
        #expect(c.eligibility.cumulativeLoad == [10000, 10000], "all healthy: level 0 takes everything")
        #expect(errors(yaml.replacingOccurrences("priority: 2 }", "priority: 200 }")).first?.contains("priority must be 0 (the highest) to 127") == true)
        #expect(errors(yaml.replacingOccurrences("overprovisioning_factor: 150", "overprovisioning_factor: 50")).first?
            .contains("overprovisioning_factor must be 100 to 1000") == true)
        let one = try Compiler.compile(YAMLLoader.parse(good, file: "t.yaml")).clusters[0]
        #expect(!one.hasLevels, "no priorities: no levels")
    }

    @Test func aTCPListenerMaySplitAcrossClustersByWeight() throws {
        let yaml = good.replacingOccurrences("    cluster: pg\n", "    weighted_clusters: [{ cluster: pg, weight: 3 }, { cluster: pg2, weight: 1 }]\n")
            + "\n  - { name: pg2, endpoints: [{ address: 127.0.0.1:5440 }] }\n"
        let s = try Compiler.compile(YAMLLoader.parse(yaml, file: "t.yaml"))
        let w = try #require(s.listeners[0].clusterWeights)
        #expect(w.clusters == [0, 1] && w.cumulative == [3, 4])
        #expect(w.pick(0) == 0 && w.pick(2) == 0 && w.pick(3) == 1 && w.pick(7) == 1)
        #expect(errors(yaml.replacingOccurrences("    weighted_clusters:", "    cluster: pg\n    weighted_clusters:")).first?
            .contains("give either 'cluster' or 'weighted_clusters'") == true)
        #expect(errors(yaml.replacingOccurrences("cluster: pg2, weight: 1", "cluster: nope, weight: 1")).first?.contains("'nope', which is not defined") == true)
        #expect(errors(yaml.replacingOccurrences("pg, weight: 3 }", "pg, weight: 0 }").replacingOccurrences("pg2, weight: 1 }]", "pg2, weight: 0 }]")).first?
            .contains("need a weight above 0") == true)
    }

    @Test func shardsAutoMeansNil() throws {
        let s = try Compiler.compile(YAMLLoader.parse(good.replacingOccurrences("shards: 2", "shards: auto"), file: "t"))
        #expect(s.shards == nil)
    }

    @Test func weightDefaultsToOne() throws {
        let s = try Compiler.compile(YAMLLoader.parse(good.replacingOccurrences(", weight: 3", ""), file: "t"))
        #expect(s.clusters[0].endpoints.map(\.weight) == [1, 1])
    }

    @Test func unknownKeysAreErrorsWithPositionAndSuggestion() {
        let e = errors(good.replacingOccurrences("    connect_timeout: 1s", "    conect_timeout: 1s"))
        #expect(e.count == 1)
        #expect(e.first?.hasPrefix("10:5 unknown key 'conect_timeout' in a cluster") == true)
        #expect(e.first?.contains("did you mean 'connect_timeout'?") == true)
        #expect(errors(good + "\nbogus: 1").first?.hasPrefix("14:1 unknown key 'bogus' in the top level") == true)
    }

    @Test func duplicateNamesAreErrors() {
        let dupCluster = good + """

          - name: pg
            endpoints: [{ address: 127.0.0.1:1 }]
        """
        #expect(errors(dupCluster).contains { $0.contains("duplicate cluster name 'pg'") })
        let dupListener = good.replacingOccurrences("clusters:", """
          - name: pg
            address: 127.0.0.1:6433
            cluster: pg
        clusters:
        """)
        #expect(errors(dupListener) == ["7:11 duplicate listener name 'pg' (also defined at t.yaml:3)"])
    }

    @Test func aDanglingClusterReferenceNamesWhatExists() {
        let e = errors(good.replacingOccurrences("    cluster: pg", "    cluster: pgx"))
        #expect(e == ["6:14 listener 'pg' refers to cluster 'pgx', which is not defined (defined: pg)"])
    }

    @Test func badAddressesAreErrors() {
        #expect(errors(good.replacingOccurrences("127.0.0.1:6432", "localhost:6432")).first?.contains("is not an IPv4 or IPv6 address") == true)
        #expect(errors(good.replacingOccurrences("127.0.0.1:6432", "127.0.0.1")).first?.contains("has no port") == true)
        #expect(errors(good.replacingOccurrences("127.0.0.1:6432", "127.0.0.1:70000")).first?.contains("not a port number") == true)
        #expect(errors(good.replacingOccurrences("127.0.0.1:5432", "300.0.0.1:5432")).first?.contains("is not an IPv4 or IPv6 address") == true)
        #expect(errors(good.replacingOccurrences("127.0.0.1:5432", "127.0.0.1:0")).first?.contains("port must not be 0") == true)
        #expect(errors(good.replacingOccurrences("\"[::1]:5433\"", "\"::1:5433\"")).first?.contains("brackets") == true)
    }

    @Test func weightsOutOfRangeAreErrors() {
        #expect(errors(good.replacingOccurrences("weight: 3", "weight: 0")) == ["13:42 cluster 'pg': weight must be 1 to 10000, not 0"])
        #expect(errors(good.replacingOccurrences("weight: 3", "weight: 10001")).count == 1)
        #expect(errors(good.replacingOccurrences("weight: 3", "weight: heavy")).first?.contains("'weight' must be a whole number") == true)
    }

    @Test func durationsMustParse() {
        #expect(errors(good.replacingOccurrences("connect_timeout: 1s", "connect_timeout: 1 sec")).first?.contains("must be a duration") == true)
        #expect(errors(good.replacingOccurrences("connect_timeout: 1s", "connect_timeout: 0s")).first?.contains("connect_timeout must be 1ms to 5m") == true)
    }

    @Test func everyErrorIsReportedNotJustTheFirst() {
        let e = errors(good.replacingOccurrences("weight: 3", "weight: 0").replacingOccurrences("    cluster: pg", "    cluster: nope")
            .replacingOccurrences("balancer: round_robin", "balancer: fastest"))
        #expect(e.count == 3)
    }

    @Test func otherValidations() {
        #expect(errors(good.replacingOccurrences("protocol: tcp", "protocol: udp")).first?.contains("protocol must be 'tcp'") == true)
        #expect(errors(good.replacingOccurrences("shards: 2", "shards: 0")).first?.contains("shards must be auto or 1 to 1024") == true)
        #expect(errors("listeners: []\nclusters: []").first?.contains("there are no listeners") == true)
        #expect(errors("").first?.contains("the file is empty") == true)
        #expect(errors("listeners: [").first?.contains("YAML syntax") == true)
        #expect(errors(good + "\nlimits: { buffers_per_shard: 1000 }").first?.contains("power of two") == true)
        #expect(errors(good + "\nlog_level: loud").first?.contains("log_level must be one of") == true)
        let twice = good.replacingOccurrences("[::1]:5433", "127.0.0.1:5432")
        #expect(errors(twice).first?.contains("is listed twice") == true)
        let noEndpoints = "listeners: [{name: a, address: 127.0.0.1:1, cluster: c}]\nclusters: [{name: c, endpoints: []}]"
        #expect(errors(noEndpoints).first?.contains("cluster 'c' has no endpoints") == true)
        #expect(errors(good.replacingOccurrences("connect_timeout: 1s", "connect_timeout: 1s\n    connect_attempts: 9")).first?.contains("connect_attempts must be 1 to 4") == true)
    }

    @Test func balancersAndTheirOptionsCompile() throws {
        let yaml = good.replacingOccurrences("balancer: round_robin", """
        balancer: ring_hash
            balancer_options: { hash_key: source_ip, minimum_ring_size: 64K, maximum_ring_size: 1M }
        """)
        let s = try Compiler.compile(YAMLLoader.parse(yaml, file: "t"))
        #expect(s.clusters[0].balancer == .ringHash)
        #expect(s.clusters[0].options.minimumRingSize == 65536)
        guard case .ring(let table) = s.clusters[0].table else { Issue.record("no ring built"); return }
        #expect(table.size >= 65536)
        let lr = good.replacingOccurrences("balancer: round_robin", """
        balancer: least_request
            balancer_options: { choice_count: 3, active_request_bias: 0.5 }
            slow_start: { window: 30s, aggression: 2, min_weight_percent: 5% }
        """)
        let l = try Compiler.compile(YAMLLoader.parse(lr, file: "t"))
        #expect(l.clusters[0].options.choiceCount == 3)
        #expect(l.clusters[0].slowStart == SlowStart(windowNanoseconds: 30_000_000_000, aggression: 2, minimumWeightFraction: 0.05))
    }

    @Test func knobsThatDoNotFitTheBalancerAreErrors() {
        func withBalancer(_ b: String) -> String { good.replacingOccurrences("balancer: round_robin", b) }
        #expect(errors(withBalancer("balancer: round_robin\n    balancer_options: { choice_count: 3 }")).first?
            .contains("balancer_options 'choice_count' does not fit balancer round_robin (it applies to least_request); round_robin takes no options") == true)
        #expect(errors(withBalancer("balancer: maglev\n    balancer_options: { table_size: 65536 }")).first?.contains("table_size must be prime") == true)
        #expect(errors(withBalancer("balancer: ring_hash\n    balancer_options: { hash_key: header:x-user }")).first?.contains("listener 'pg' is tcp, but cluster 'pg' hashes an HTTP hash_key") == true)
        #expect(errors(withBalancer("balancer: ring_hash\n    balancer_options: { minimum_ring_size: 2048, maximum_ring_size: 1024 }")).first?.contains("must not exceed") == true)
        #expect(errors(withBalancer("balancer: maglev\n    slow_start: { window: 10s }")).first?.contains("slow_start works with round_robin and least_request, not maglev") == true)
        #expect(errors(withBalancer("balancer: least_request\n    balancer_options: { choice_count: 1 }")).first?.contains("choice_count must be a whole number from 2 to 100") == true)
        #expect(errors(withBalancer("balancer: round_robin\n    slow_start: { aggression: 1 }")).first?.contains("slow_start needs a 'window'") == true)
    }

    @Test func aReloadStampsOnlyTheEndpointsItAdds() throws {
        let first = try Compiler.compile(YAMLLoader.parse(good, file: "t"))
        let added = good.replacingOccurrences("      - { address: 127.0.0.1:5432, weight: 1 }", "      - { address: 127.0.0.1:5432, weight: 1 }\n      - { address: 127.0.0.1:5434 }")
        let next = try Compiler.compile(YAMLLoader.parse(added, file: "t")).inheritingEndpointState(from: first, now: 777)
        #expect(next.clusters[0].endpoints.map(\.addedAt) == [nil, 777, nil])
    }

    @Test func healthChecksCompileAndBadOnesAreErrors() throws {
        func with(_ extra: String) -> String { good.replacingOccurrences("    connect_timeout: 1s", "    connect_timeout: 1s\n" + extra) }
        let s = try Compiler.compile(YAMLLoader.parse(with("""
            health_check: { type: http, path: /healthz, expect_status: [200-299, 404], interval: 2s, timeout: 1s, jitter: 10%, unhealthy_interval: 4s, initial: unhealthy }
            outlier_detection: { consecutive_failures: 3, base_ejection_time: 10s, max_ejection_percent: 30 }
            panic_threshold: 40%
        """), file: "t"))
        let h = s.clusters[0].health
        #expect(h.probe == .http(path: "/healthz", host: nil, expectStatus: [200...299, 404...404]))
        #expect(h.unhealthyIntervalNanoseconds == 4_000_000_000 && !h.startHealthy && h.jitterFraction == 0.1)
        #expect(h.consecutiveFailures == 3 && h.maxEjectionPercent == 30 && h.panicThresholdPercent == 40)
        #expect(s.clusters[0].available == [false, false], "initial: unhealthy")
        #expect(s.clusters[0].eligibility.panic, "all down: balance across all")
        #expect(errors(with("    health_check: { type: udp }")).first?.contains("type must be tcp or http") == true)
        #expect(errors(with("    health_check: { type: tcp, path: /x }")).first?.contains("'path' is for type http") == true)
        #expect(errors(with("    health_check: { type: http, interval: 1s, timeout: 2s }")).first?.contains("shorter than interval") == true)
        #expect(errors(with("    health_check: { type: http, expect_status: [2xx] }")).first?.contains("expect_status items") == true)
        #expect(errors(with("    health_check: { type: http, intervall: 1s }")).first?.contains("did you mean 'interval'?") == true)
        #expect(errors(with("    outlier_detection: { max_ejection_percent: 150 }")).first?.contains("max_ejection_percent must be") == true)
    }

    @Test func aHealthUpdateSharesEveryUnchangedCluster() throws {
        let two = good + "\n  - name: other\n    endpoints: [{ address: 127.0.0.1:7000 }]"
        let s = try Compiler.compile(YAMLLoader.parse(two, file: "t"))
        let next = s.replacing(clusters: [0: s.clusters[0].with(available: [false, true])])
        #expect(next.clusters[1] === s.clusters[1])
        #expect(next.clusters[0] !== s.clusters[0])
        #expect(next.clusters[0].available == [false, true])
        guard case .none = next.clusters[0].table else { Issue.record("round robin has no table"); return }
        #expect(next.clusters[0].eligibility.eligible == [false, true] && !next.clusters[0].eligibility.panic)
    }

    @Test func aReloadReusesTheTableOfAnUnchangedCluster() throws {
        let ring = good.replacingOccurrences("balancer: round_robin", "balancer: ring_hash")
        let first = try Compiler.compile(YAMLLoader.parse(ring, file: "t"))
        let same = try Compiler.compile(YAMLLoader.parse(ring, file: "t"), previous: first)
        let changed = try Compiler.compile(YAMLLoader.parse(ring.replacingOccurrences("weight: 3", "weight: 4"), file: "t"), previous: first)
        guard case .ring(let a) = first.clusters[0].table, case .ring(let b) = same.clusters[0].table,
              case .ring(let c) = changed.clusters[0].table else { Issue.record("no rings"); return }
        #expect(a === b)
        #expect(a !== c)
    }

    @Test func aMissingFileIsAClearError() {
        #expect(throws: ConfigErrors.self) { try YAMLLoader.load(path: "/nonexistent/weir.yaml") }
    }

    @Test func theStorePublishesIncreasingGenerations() throws {
        let s = try Compiler.compile(YAMLLoader.parse(good, file: "t"))
        let store = SnapshotStore(s)
        #expect(store.generation == 1)
        let next = store.publish(s)
        #expect(next.generation == 2)
        #expect(store.generation == 2)
        #expect(store.snapshot === next)
    }
}

@Suite struct VocabularyTests {
    @Test func durationsParse() {
        #expect(parseDurationNanoseconds("500ms") == 500_000_000)
        #expect(parseDurationNanoseconds("2s") == 2_000_000_000)
        #expect(parseDurationNanoseconds("1.5s") == 1_500_000_000)
        #expect(parseDurationNanoseconds("1m") == 60_000_000_000)
        #expect(parseDurationNanoseconds("1h") == 3_600_000_000_000)
        #expect(parseDurationNanoseconds("10") == nil)
        #expect(parseDurationNanoseconds("-1s") == nil)
        #expect(formatDuration(nanoseconds: 1_500_000_000) == "1500ms")
    }

    @Test func sizesParse() {
        #expect(parseByteSize("64KiB") == 65536)
        #expect(parseByteSize("1MiB") == 1 << 20)
        #expect(parseByteSize("4096") == 4096)
        #expect(parseByteSize("lots") == nil)
    }

    @Test func addressesRoundTrip() throws {
        #expect(try SocketAddress.parse("10.1.2.3:80").description == "10.1.2.3:80")
        #expect(try SocketAddress.parse("[2001:db8::1]:443").description == "[2001:db8::1]:443")
        #expect(try SocketAddress.parse("127.0.0.1:1").isLoopback)
    }
}

extension String {
    func replacingOccurrences(_ a: String, _ b: String) -> String {
        precondition(contains(a), "test fixture does not contain \(a)")
        return components(a).joined(separator: b)
    }
    func components(_ sep: String) -> [String] {
        var out: [String] = []
        var rest = Substring(self)
        while let r = rest.range(of: sep) { out.append(String(rest[..<r.lowerBound])); rest = rest[r.upperBound...] }
        out.append(String(rest))
        return out
    }
}

let goodHTTP = """
listeners:
  - name: web
    address: 127.0.0.1:8080
    protocol: http
    http: { request_header_timeout: 5s, max_header_bytes: 16KiB, max_headers: 50, max_body_bytes: 10MiB }
    routes:
      - match: { host: [api.example.com, "*.api.example.com"], path_prefix: /v1, methods: [GET, POST], headers: [{ name: x-env, value: prod }, { name: x-trace }] }
        cluster: api
        timeout: 2s
        retries: { attempts: 2, on: [reset, 503], backoff: 50ms }
        prefix_rewrite: /
        request_headers_to_add: { X-From: weir }
        response_headers_to_remove: [server]
      - match: { path_prefix: /canary }
        weighted_clusters: [{ cluster: api, weight: 90 }, { cluster: web, weight: 10 }]
      - match: { path_exact: /healthz }
        direct_response: { status: 200, body: ok }
      - match: { path_prefix: /old }
        redirect: { scheme: https, prefix: /new }
      - cluster: web
clusters:
  - name: api
    pool: { max_connections: 100, max_idle: 10, idle_timeout: 30s, max_requests_per_connection: 1000 }
    endpoints: [{ address: 127.0.0.1:9000 }]
  - name: web
    balancer: ring_hash
    balancer_options: { hash_key: "cookie:session" }
    endpoints: [{ address: 127.0.0.1:9001 }, { address: 127.0.0.1:9002 }]
"""

@Suite struct HTTPConfigTests {
    @Test func anHTTPListenerCompilesWithRoutesAndPools() throws {
        let s = try Compiler.compile(YAMLLoader.parse(goodHTTP, file: "t.yaml"))
        let http = try #require(s.listeners[0].http)
        #expect(s.listeners[0].proto == .http)
        #expect(http.actions.count == 5)
        #expect(http.limits.maxHeaderBytes == 16384 && http.limits.maxHeaderCount == 50 && http.limits.maxBodyBytes == 10 << 20)
        #expect(http.requestHeaderTimeoutNanoseconds == 5_000_000_000)
        #expect(http.actions[0].retry.attempts == 2 && http.actions[0].retry.onReset && http.actions[0].retry.statuses == [503])
        #expect(http.actions[0].timeoutNanoseconds == 2_000_000_000)
        #expect(http.actions[0].prefixLength == 3)
        #expect(http.routes.routes[0].hosts == [.exact(Array("api.example.com".utf8)), .suffix(Array(".api.example.com".utf8))])
        guard case .weighted(let w) = http.actions[1].target else { Issue.record("not weighted"); return }
        #expect(w.clusters == [0, 1] && w.cumulative == [90, 100])
        #expect(s.clusters[0].pool.maxConnections == 100 && s.clusters[0].pool.maxRequestsPerConnection == 1000)
        #expect(s.clusters[1].options.hashKey == .cookie(Array("session".utf8)))
        #expect(s.listeners[0].idleTimeoutNanoseconds == Compiler.defaultHTTPIdleTimeoutNanoseconds)
    }

    @Test func headerMatchesCompileEveryTest() throws {
        let yaml = goodHTTP.replacingOccurrences("headers: [{ name: x-env, value: prod }, { name: x-trace }]",
            "headers: [{ name: x-env, value: prod, invert: true }, { name: x-user, prefix: adm, ignore_case: true }, { name: x-tier, regex: \"gold|silver\" }, { name: x-debug, present: false }]")
        let s = try Compiler.compile(YAMLLoader.parse(yaml, file: "t.yaml"))
        let headers = try #require(s.listeners[0].http).routes.routes[0].headers
        #expect(headers.count == 4)
        #expect(headers[0].invert && headers[0].test == .exact(Array("prod".utf8)))
        #expect(headers[1].ignoreCase && headers[1].test == .prefix(Array("adm".utf8)))
        #expect(headers[2].test == .regex(try PathRegex("gold|silver")))
        #expect(headers[3].test == .absent)
    }

    @Test func badRoutesAreErrorsWithPositions() {
        func with(_ from: String, _ to: String) -> String? { errors(goodHTTP.replacingOccurrences(from, to)).first }
        #expect(with("cluster: web\nclusters", "cluster: nope\nclusters")?.contains("cluster 'nope' is not defined") == true)
        #expect(with("path_prefix: /v1,", "path_prefix: v1,")?.contains("path_prefix must start with '/'") == true)
        #expect(with("path_prefix: /v1,", "path_regex: \"^/v[0-9\",")?.contains("path_regex '^/v[0-9': regex: unclosed '['") == true)
        #expect(with("methods: [GET, POST]", "methods: [GET, FETCH]")?.contains("methods must be GET") == true)
        #expect(with("{ name: x-trace }", "{ name: x-trace, prefix: a, suffix: b }")?.contains("give one of value, prefix, suffix, contains, regex, present") == true)
        #expect(with("{ name: x-trace }", "{ name: x-trace, present: maybe }")?.contains("present must be true or false") == true)
        #expect(with("{ name: x-trace }", "{ name: x-trace, regex: \"a(\" }")?.contains("regex 'a(': regex: unclosed '('") == true)
        #expect(with("{ name: x-trace }", "{ name: x-trace, regx: a }")?.contains("regex") == true, "a misspelt key is named with a suggestion")
        #expect(with("on: [reset, 503]", "on: [reset, 418]")?.contains("retries on must list") == true)
        #expect(with("{ X-From: weir }", "{ Content-Length: 5 }")?.contains("cannot be added") == true)
        #expect(with("redirect: { scheme: https, prefix: /new }", "redirect: { scheme: ftp }")?.contains("redirect scheme must be http or https") == true)
        #expect(with("direct_response: { status: 200, body: ok }", "direct_response: { status: 99 }")?.contains("direct_response status must be 200 to 599") == true)
        #expect(with("      - cluster: web\n", "      - match: { path_exact: /x }\n")?.contains("a route needs one of cluster") == true)
        #expect(with("max_headers: 50", "max_headers: 5000")?.contains("max_headers must be 1 to 1000") == true)
        #expect(with("max_header_bytes: 16KiB", "max_header_bytes: 70000")?.contains("must be at most limits.buffer_bytes - 4KiB") == true)
        #expect(with("max_connections: 100", "max_connections: 0")?.contains("pool max_connections must be 1 to") == true)
        #expect(with("protocol: http", "protocol: tcp")?.contains("'http' settings need protocol: http") == true)
        #expect(with("idle_timeout: 30s", "idle_timeout: soon")?.contains("pool idle_timeout must be a duration") == true)
        let line = errors(goodHTTP.replacingOccurrences("path_prefix: /v1,", "path_prefix: v1,")).first ?? ""
        #expect(line.hasPrefix("7:"), "the error points at the route's line: \(line)")
    }

    @Test func aTCPListenerCannotUseAnHTTPHashKey() {
        let yaml = goodHTTP.replacingOccurrences("listeners:\n", "listeners:\n  - { name: raw, address: 127.0.0.1:7000, cluster: web }\n")
        #expect(errors(yaml).first?.contains("listener 'raw' is tcp, but cluster 'web' hashes an HTTP hash_key") == true)
    }
}
