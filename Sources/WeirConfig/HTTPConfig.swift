// `protocol: http` listeners: their limits, routes and what each route does, compiled to bytes the
// shard compares and copies without allocating; and the HTTP upstream pool settings of a cluster.
import WeirBalance
import WeirCore
import WeirHTTP

/// Upstream connection pools, kept per shard and per endpoint.
public struct PoolSettings: Sendable, Equatable {
    /// Open connections (busy and idle) to one endpoint from one shard; a request over it gets 503.
    public var maxConnections = 1024
    /// Idle keep-alive connections kept per endpoint per shard; more are closed.
    public var maxIdle = 1024
    public var idleTimeoutNanoseconds: Int64 = 60_000_000_000
    /// Requests one upstream connection carries before it is closed; 0 means no limit.
    public var maxRequestsPerConnection = 0
    public init() {}
}

public struct RetryPolicy: Sendable, Equatable {
    /// Extra tries after the first; 0 means none.
    public var attempts = 0
    /// Retry when the upstream resets or closes before any response byte.
    public var onReset = false
    /// Retry when the upstream answers one of these statuses (502, 503, 504).
    public var statuses: [Int] = []
    public var backoffNanoseconds: Int64 = 25_000_000
    /// Also retry POST, PATCH and other non-idempotent methods.
    public var nonIdempotent = false
    public init() {}
}

public enum RouteTarget: Sendable {
    case cluster(Int)
    /// Clusters and their running weight totals: pick r in 0..<total, the first total above r.
    case weighted(ClusterWeights)
    /// A complete response Weir sends itself: with keep-alive, and with `Connection: close`.
    case direct(status: Int, keepAlive: [UInt8], close: [UInt8])
    case redirect(Redirect)
}

public struct Redirect: Sendable {
    public var status: Int
    /// Replaced parts of the location; nil keeps the request's own (the host from Host).
    public var scheme: [UInt8]?
    public var host: [UInt8]?
    public var path: [UInt8]?
    /// Replaces the matched path_prefix, keeping the rest of the path.
    public var prefix: [UInt8]?
}

public struct Route: Sendable {
    public var target: RouteTarget
    /// Overrides the cluster's hash_key for ring_hash and maglev (Envoy's route hash_policy).
    public var hashKey: HashKey?
    /// Whole request, from its head to the end of the response; 0 means none.
    public var timeoutNanoseconds: Int64
    /// Longest quiet spell while a request is in flight; 0 means none.
    public var idleTimeoutNanoseconds: Int64
    public var retry: RetryPolicy
    /// Header rewrites and the target's prefix replacement; `prefixLength` is the length of the
    /// matched path_prefix (0 without one).
    public var forwarding: ForwardingRules
    public var prefixLength: Int
    /// Lowercase names to drop from responses, and complete "Name: value" lines to add.
    public var responseRemove: [[UInt8]]
    public var responseAdd: [[UInt8]]
}

/// X-Forwarded-Client-Cert, as Envoy's forward_client_cert_details: what a request forwarded
/// from a connection with (mTLS) or without a client certificate carries.
public struct ClientCertPolicy: Sendable, Equatable {
    public enum Mode: String, Sendable, CaseIterable {
        /// Remove what the client sent (the default: a client could claim any identity).
        case sanitize
        /// Forward the client's only from an mTLS peer.
        case forward_only
        /// From an mTLS peer: forward the client's and append the peer's details.
        case append_forward
        /// From an mTLS peer: the peer's details only.
        case sanitize_set
        /// Forward the client's, whoever sent it.
        case always_forward_only
    }
    public var mode: Mode = .sanitize
    /// Bits of WEIR_XFCC_SUBJECT, WEIR_XFCC_URI, WEIR_XFCC_DNS (By and Hash are always there).
    public var details: Int32 = 0
    public init(mode: Mode = .sanitize, details: Int32 = 0) { self.mode = mode; self.details = details }
    /// Whether a request needs the peer's element written.
    public var writesPeer: Bool { mode == .append_forward || mode == .sanitize_set }
}

/// HTTP/2 on an http listener: h2 by ALPN on TLS, h2c by its connection preface on plaintext
/// (as Envoy's codec_type AUTO), and the limits each connection's codec enforces.
public struct HTTP2Settings: Sendable, Equatable {
    /// SETTINGS_MAX_CONCURRENT_STREAMS: streams a client may have open at once.
    public var maxConcurrentStreams = 100
    /// SETTINGS_INITIAL_WINDOW_SIZE: request body bytes a stream may send before Weir has
    /// forwarded them (what one stream can make Weir hold).
    public var streamWindowBytes = 64 * 1024
    /// The connection's receive window (all streams together).
    public var connectionWindowBytes = 1024 * 1024
    /// Rapid reset (CVE-2023-44487): streams a client may reset in a burst, and per second after it;
    /// past that the connection ends with GOAWAY ENHANCE_YOUR_CALM.
    public var resetBurst = 200
    public var resetsPerSecond = 100
    /// CONTINUATION frames one header block may use (CVE-2024-27316: a flood of them).
    public var maxContinuations = 8
    /// SETTINGS and PING frames whose answers may wait unsent (a flood of them), and the entries
    /// one SETTINGS frame may carry.
    public var maxPendingAcks = 1000
    public var maxSettingsEntries = 32
    public init() {}
}

public final class HTTPListener: Sendable {
    public let routes: RouteTable
    /// Parallel to `routes.routes`.
    public let actions: [Route]
    public let limits: HTTPLimits
    public let requestHeaderTimeoutNanoseconds: Int64
    /// A file that gets one JSON line per request, or nil.
    public let accessLog: String?
    /// normalize_path: targets are made canonical (PathNormalizer) before routing and forwarding.
    public let normalizesPath: Bool
    public let clientCert: ClientCertPolicy
    /// HTTP/2's settings, or nil when the listener speaks only HTTP/1.1 (`http2: false`).
    public let http2: HTTP2Settings?

    init(routes: RouteTable, actions: [Route], limits: HTTPLimits, requestHeaderTimeoutNanoseconds: Int64, accessLog: String?,
         normalizesPath: Bool = false, clientCert: ClientCertPolicy = ClientCertPolicy(), http2: HTTP2Settings? = HTTP2Settings()) {
        self.routes = routes; self.actions = actions; self.limits = limits
        self.requestHeaderTimeoutNanoseconds = requestHeaderTimeoutNanoseconds; self.accessLog = accessLog
        self.normalizesPath = normalizesPath
        self.clientCert = clientCert
        self.http2 = http2
    }
}

extension Compiler {
    public static let defaultHTTPIdleTimeoutNanoseconds: Int64 = 75_000_000_000
    public static let defaultRouteTimeoutNanoseconds: Int64 = 15_000_000_000
    static let redirectStatuses = [301, 302, 303, 307, 308]

    /// The reason phrase Weir writes for a status it makes.
    public static func reason(_ status: Int) -> String {
        switch status {
        case 200: return "OK"
        case 201: return "Created"
        case 204: return "No Content"
        case 301: return "Moved Permanently"
        case 302: return "Found"
        case 303: return "See Other"
        case 307: return "Temporary Redirect"
        case 308: return "Permanent Redirect"
        case 400: return "Bad Request"
        case 401: return "Unauthorized"
        case 403: return "Forbidden"
        case 404: return "Not Found"
        case 408: return "Request Timeout"
        case 413: return "Content Too Large"
        case 429: return "Too Many Requests"
        case 431: return "Request Header Fields Too Large"
        case 500: return "Internal Server Error"
        case 501: return "Not Implemented"
        case 502: return "Bad Gateway"
        case 503: return "Service Unavailable"
        case 504: return "Gateway Timeout"
        case 505: return "HTTP Version Not Supported"
        default: return "Status"
        }
    }

    /// A whole response as bytes: status line, Content-Length, Content-Type when there is a body.
    public static func responseBytes(status: Int, body: [UInt8], close: Bool, extra: String = "") -> [UInt8] {
        var head = "HTTP/1.1 \(status) \(reason(status))\r\nContent-Length: \(body.count)\r\n"
        if !body.isEmpty { head += "Content-Type: text/plain; charset=utf-8\r\n" }
        head += extra
        head += close ? "Connection: close\r\n\r\n" : "\r\n"
        return Array(head.utf8) + body
    }

    static func compileHTTPListener(_ l: ListenerDocument, name: String, clusterIndex: [String: Int], invalidClusters: Set<String>,
                                    clusters: [Cluster], fail: (SourcePosition, String) -> Void) -> HTTPListener? {
        var ok = true
        func bad(_ p: SourcePosition, _ m: String) { fail(p, "listener '\(name)': \(m)"); ok = false }
        var limits = HTTPLimits()
        var headerTimeout: Int64 = 10_000_000_000
        var accessLog: String? = nil
        var stripPort = true
        var normalizePath = false
        var clientCert = ClientCertPolicy()
        var http2: HTTP2Settings? = HTTP2Settings()
        var h2 = HTTP2Settings()
        for (key, v) in (l.http ?? [:]).sorted(by: { $0.key < $1.key }) {
            func count(_ range: ClosedRange<Int>) -> Int? {
                guard let n = Int(v.value), range.contains(n) else {
                    bad(v.position, "\(key) must be a whole number from \(range.lowerBound) to \(range.upperBound)"); return nil
                }
                return n
            }
            func size(_ range: ClosedRange<Int>) -> Int? {
                guard let n = parseByteSize(v.value), range.contains(n) else {
                    bad(v.position, "\(key) must be a size from \(range.lowerBound) to \(range.upperBound) bytes"); return nil
                }
                return n
            }
            switch key {
            case "strip_host_port":
                switch v.value {
                case "true": stripPort = true
                case "false": stripPort = false
                default: bad(v.position, "strip_host_port must be true or false")
                }
            case "normalize_path":
                switch v.value {
                case "true": normalizePath = true
                case "false": normalizePath = false
                default: bad(v.position, "normalize_path must be true or false")
                }
            case "request_header_timeout":
                if let ns = parseDurationNanoseconds(v.value), (1_000_000...3_600_000_000_000).contains(ns) { headerTimeout = ns }
                else { bad(v.position, "request_header_timeout must be a duration from 1ms to 1h") }
            case "max_request_line_bytes": if let n = size(64...(1 << 20)) { limits.maxRequestLineBytes = n }
            case "max_header_bytes": if let n = size(256...(1 << 20)) { limits.maxHeaderBytes = n }
            case "max_headers":
                if let n = Int(v.value), (1...1000).contains(n) { limits.maxHeaderCount = n } else { bad(v.position, "max_headers must be 1 to 1000") }
            case "max_body_bytes":
                if let n = parseByteSize(v.value), n >= 0 { limits.maxBodyBytes = UInt64(n) } else { bad(v.position, "max_body_bytes must be a size such as 10MiB") }
            case "access_log":
                if v.value.hasPrefix("/") { accessLog = v.value } else { bad(v.position, "access_log must be an absolute file path") }
            case "forward_client_cert":
                if let m = ClientCertPolicy.Mode(rawValue: v.value) { clientCert.mode = m }
                else { bad(v.position, "forward_client_cert must be one of \(ClientCertPolicy.Mode.allCases.map(\.rawValue).joined(separator: ", ")), not '\(v.value)'") }
            case "http2":
                switch v.value {
                case "true": break
                case "false": http2 = nil
                default: bad(v.position, "http2 must be true or false")
                }
            case "http2_max_concurrent_streams": if let n = count(1...10_000) { h2.maxConcurrentStreams = n }
            case "http2_stream_window_bytes": if let n = size(1024...(1 << 30)) { h2.streamWindowBytes = n }
            case "http2_connection_window_bytes": if let n = size(65535...(1 << 30)) { h2.connectionWindowBytes = n }
            case "http2_reset_burst": if let n = count(1...1_000_000) { h2.resetBurst = n }
            case "http2_resets_per_second": if let n = count(1...1_000_000) { h2.resetsPerSecond = n }
            case "http2_max_continuations": if let n = count(0...10_000) { h2.maxContinuations = n }
            case "http2_max_pending_acks": if let n = count(1...1_000_000) { h2.maxPendingAcks = n }
            case "http2_max_settings_entries": if let n = count(1...1000) { h2.maxSettingsEntries = n }
            case "client_cert_details":
                for part in v.value.split(separator: ",").map({ $0.trimmingCharacters(in: .whitespaces) }) {
                    switch part {
                    case "subject": clientCert.details |= 1
                    case "uri": clientCert.details |= 2
                    case "dns": clientCert.details |= 4
                    default: bad(v.position, "client_cert_details lists subject, uri and dns, not '\(part)'")
                    }
                }
            default: break
            }
        }
        if l.http?["max_request_line_bytes"] == nil { limits.maxRequestLineBytes = min(limits.maxRequestLineBytes, limits.maxHeaderBytes) }
        if limits.maxRequestLineBytes > limits.maxHeaderBytes {
            bad(l.httpPosition ?? l.position, "max_request_line_bytes must not exceed max_header_bytes")
        }
        var matches: [RouteMatch] = []
        var actions: [Route] = []
        var documents = l.routes
        if let c = l.cluster {
            if !documents.isEmpty { bad(c.position, "give either 'cluster' or 'routes', not both") }
            var r = RouteDocument(position: c.position)
            r.cluster = c
            documents = [r]
        }
        if documents.isEmpty && !l.mayHaveNoRoutes { bad(l.routesPosition ?? l.position, "an http listener needs 'routes' (or a 'cluster' for every request)") }
        for r in documents {
            guard let (m, a) = compileRoute(r, listener: name, clusterIndex: clusterIndex, invalidClusters: invalidClusters,
                                            clusters: clusters, fail: fail) else { ok = false; continue }
            matches.append(m)
            actions.append(a)
        }
        guard ok else { return nil }
        if clientCert.details != 0 && !clientCert.writesPeer {
            bad(l.http?["client_cert_details"]?.position ?? l.position, "client_cert_details needs forward_client_cert append_forward or sanitize_set")
        }
        if http2 == nil, let k = (l.http ?? [:]).keys.sorted().first(where: { $0.hasPrefix("http2_") }) {
            bad(l.http![k]!.position, "\(k) needs http2 (it is false here)")
            return nil
        }
        if http2 != nil { http2 = h2 }
        return HTTPListener(routes: RouteTable(matches, stripsPort: stripPort), actions: actions, limits: limits,
                            requestHeaderTimeoutNanoseconds: headerTimeout, accessLog: accessLog, normalizesPath: normalizePath,
                            clientCert: clientCert, http2: http2)
    }

    /// `weighted_clusters:` (on an http route or a tcp listener): each entry's cluster resolved by
    /// `cluster` (which reports its own errors), weights 0 to 10000, at least one above 0.
    static func compileWeights(_ w: [WeightedClusterDocument], at: SourcePosition, cluster: (Located<String>) -> Int?,
                               bad: (SourcePosition, String) -> Void) -> ClusterWeights? {
        var ok = true
        if w.isEmpty { bad(at, "weighted_clusters must not be empty"); return nil }
        var ids: [Int] = [], cumulative: [UInt32] = [], total: UInt32 = 0
        for e in w {
            guard let c = e.cluster else { bad(e.position, "a weighted cluster needs a 'cluster'"); ok = false; continue }
            let weight = e.weight?.value ?? 1
            if !(0...10_000).contains(weight) { bad(e.weight!.position, "weight must be 0 to 10000"); ok = false; continue }
            guard let i = cluster(c) else { ok = false; continue }
            total += UInt32(weight)
            ids.append(i); cumulative.append(total)
        }
        if ok && total == 0 { bad(at, "weighted_clusters need a weight above 0"); ok = false }
        return ok ? ClusterWeights(clusters: ids, cumulative: cumulative) : nil
    }

    static func isToken(_ s: String) -> Bool {
        !s.isEmpty && s.utf8.allSatisfy { c in
            (c >= 48 && c <= 57) || (c >= 65 && c <= 90) || (c >= 97 && c <= 122) || "!#$%&'*+-.^_`|~".utf8.contains(c)
        }
    }
    static func isFieldValue(_ s: String) -> Bool { s.utf8.allSatisfy { $0 == 9 || ($0 >= 32 && $0 != 127) } }
    static func isPathText(_ s: String) -> Bool { s.hasPrefix("/") && s.utf8.allSatisfy { $0 > 32 && $0 < 127 } }

    static func compileRoute(_ r: RouteDocument, listener: String, clusterIndex: [String: Int], invalidClusters: Set<String>,
                             clusters: [Cluster], fail: (SourcePosition, String) -> Void) -> (RouteMatch, Route)? {
        var ok = true
        func bad(_ p: SourcePosition, _ m: String) { fail(p, "listener '\(listener)' route: \(m)"); ok = false }
        var match = RouteMatch()
        var prefixLength = 0
        if let h = r.match["host"] {
            for host in h.value.split(separator: ",").map(String.init) {
                let bare = host.hasPrefix("*.") ? String(host.dropFirst(2)) : host.hasSuffix("*") ? String(host.dropLast()) : host
                if bare.isEmpty || bare.contains("*") || !bare.utf8.allSatisfy({ $0 > 32 && $0 < 127 && $0 != UInt8(ascii: "/") }) {
                    bad(h.position, "host '\(host)' must be a name, '*.' followed by a domain, or a prefix followed by '*'")
                }
                match.hosts.append(HostPattern(host))
            }
        }
        let paths = ["path_prefix", "path_exact", "path_regex"].filter { r.match[$0] != nil }
        if paths.count > 1 { bad(r.match[paths[1]]!.position, "give one of path_prefix, path_exact, path_regex, not several") }
        if let p = r.match["path_prefix"] {
            if isPathText(p.value) { match.path = .prefix(Array(p.value.utf8)); prefixLength = p.value.utf8.count }
            else { bad(p.position, "path_prefix must start with '/' and hold no spaces or control bytes") }
        }
        if let p = r.match["path_exact"] {
            if isPathText(p.value) { match.path = .exact(Array(p.value.utf8)) }
            else { bad(p.position, "path_exact must start with '/' and hold no spaces or control bytes") }
        }
        if let p = r.match["path_regex"] {
            do { match.path = .regex(try PathRegex(p.value)) } catch { bad(p.position, "path_regex '\(p.value)': \(error)") }
        }
        if let m = r.match["methods"] {
            for name in m.value.split(separator: ",").map(String.init) {
                switch name {
                case "GET": match.methods.append(.get)
                case "HEAD": match.methods.append(.head)
                case "POST": match.methods.append(.post)
                case "PUT": match.methods.append(.put)
                case "DELETE": match.methods.append(.delete)
                case "OPTIONS": match.methods.append(.options)
                case "PATCH": match.methods.append(.patch)
                case "TRACE": match.methods.append(.trace)
                default: bad(m.position, "methods must be GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH or TRACE, not '\(name)'")
                }
            }
        }
        for h in r.matchHeaders {
            guard let n = h.name, isToken(n.value) else { bad(h.position, "a header match needs a valid 'name'"); continue }
            let tests = h.tests
            if tests.count > 1 { bad(h.position, "header '\(n.value)': give one of value, prefix, suffix, contains, regex, present, not several"); continue }
            var test = HeaderMatch.Test.present
            if let (kind, v) = tests.first {
                if !isFieldValue(v.value) { bad(v.position, "header '\(n.value)': \(kind) holds control bytes"); continue }
                let bytes = Array(v.value.utf8)
                switch kind {
                case "value": test = .exact(bytes)
                case "prefix": test = .prefix(bytes)
                case "suffix": test = .suffix(bytes)
                case "contains": test = .contains(bytes)
                case "regex":
                    do { test = .regex(try PathRegex(v.value)) } catch { bad(v.position, "header '\(n.value)': regex '\(v.value)': \(error)"); continue }
                default:  // present
                    switch v.value {
                    case "true": test = .present
                    case "false": test = .absent
                    default: bad(v.position, "header '\(n.value)': present must be true or false"); continue
                    }
                }
            }
            func flag(_ l: Located<String>?, _ what: String) -> Bool {
                guard let l else { return false }
                if l.value == "true" { return true }
                if l.value != "false" { bad(l.position, "header '\(n.value)': \(what) must be true or false") }
                return false
            }
            match.headers.append(HeaderMatch(name: n.value, test: test, ignoreCase: flag(h.ignoreCase, "ignore_case"), invert: flag(h.invert, "invert")))
        }

        // What it does: exactly one of cluster, weighted_clusters, direct_response, redirect.
        let given = [r.cluster != nil, r.weightedClusters != nil, r.directResponse != nil, r.redirect != nil].filter { $0 }.count
        if given != 1 {
            bad(r.position, given == 0 ? "a route needs one of cluster, weighted_clusters, direct_response, redirect"
                : "give only one of cluster, weighted_clusters, direct_response, redirect")
        }
        func cluster(_ c: Located<String>) -> Int? {
            if let i = clusterIndex[c.value] { return i }
            if invalidClusters.contains(c.value) { ok = false; return nil }
            let known = (Array(clusterIndex.keys) + invalidClusters).sorted().joined(separator: ", ")
            bad(c.position, "cluster '\(c.value)' is not defined (defined: \(known.isEmpty ? "none" : known))")
            return nil
        }
        var target = RouteTarget.direct(status: 404, keepAlive: [], close: [])
        if let c = r.cluster, let i = cluster(c) { target = .cluster(i) }
        if let w = r.weightedClusters {
            if let weights = compileWeights(w, at: r.weightedClustersPosition ?? r.position, cluster: cluster, bad: bad) { target = .weighted(weights) }
            else { ok = false }
        }
        if let d = r.directResponse {
            let status = d["status"].map { Int($0.value) } ?? 200
            if let s = status, (200...599).contains(s) {
                let body = Array((d["body"]?.value ?? "").utf8)
                target = .direct(status: s, keepAlive: responseBytes(status: s, body: body, close: false),
                                 close: responseBytes(status: s, body: body, close: true))
            } else {
                bad(d["status"]!.position, "direct_response status must be 200 to 599")
            }
        }
        if let d = r.redirect {
            var rd = Redirect(status: 301)
            if let s = d["status"] {
                if let n = Int(s.value), redirectStatuses.contains(n) { rd.status = n }
                else { bad(s.position, "redirect status must be one of 301, 302, 303, 307, 308") }
            }
            if let s = d["scheme"] {
                if s.value == "http" || s.value == "https" { rd.scheme = Array(s.value.utf8) } else { bad(s.position, "redirect scheme must be http or https") }
            }
            if let h = d["host"] {
                if !h.value.isEmpty && h.value.utf8.allSatisfy({ $0 > 32 && $0 < 127 && $0 != UInt8(ascii: "/") }) { rd.host = Array(h.value.utf8) }
                else { bad(h.position, "redirect host must be a host name (with an optional port)") }
            }
            if let p = d["path"] {
                if isPathText(p.value) { rd.path = Array(p.value.utf8) } else { bad(p.position, "redirect path must start with '/'") }
            }
            if let p = d["prefix"] {
                if prefixLength == 0 { bad(p.position, "redirect prefix needs a match on path_prefix") }
                if isPathText(p.value) { rd.prefix = Array(p.value.utf8) } else { bad(p.position, "redirect prefix must start with '/'") }
            }
            if rd.path != nil && rd.prefix != nil { bad(r.redirectPosition ?? r.position, "give redirect path or prefix, not both") }
            target = .redirect(rd)
        }

        var timeout = defaultRouteTimeoutNanoseconds
        if let t = r.timeout {
            if t.value == 0 || (1_000_000...86_400_000_000_000).contains(t.value) { timeout = t.value }
            else { bad(t.position, "timeout must be 0 (none) or 1ms to 24h") }
        }
        var idle: Int64 = 0
        if let t = r.idleTimeout {
            if t.value == 0 || (1_000_000...86_400_000_000_000).contains(t.value) { idle = t.value }
            else { bad(t.position, "idle_timeout must be 0 (none) or 1ms to 24h") }
        }
        var retry = RetryPolicy()
        if let t = r.retries {
            retry.attempts = 1
            retry.onReset = true
            retry.statuses = [502, 503, 504]
            if let a = t["attempts"] {
                if let n = Int(a.value), (0...Exclusions.capacity - 1).contains(n) { retry.attempts = n }
                else { bad(a.position, "retries attempts must be 0 to \(Exclusions.capacity - 1)") }
            }
            if let on = t["on"] {
                retry.onReset = false
                retry.statuses = []
                for cond in on.value.split(separator: ",").map(String.init) {
                    switch cond {
                    case "reset": retry.onReset = true
                    case "connect_failure": break  // always retried, up to the cluster's connect_attempts
                    case "502", "503", "504": retry.statuses.append(Int(cond)!)
                    case "5xx": retry.statuses = [500, 501, 502, 503, 504, 505]
                    default: bad(on.position, "retries on must list connect_failure, reset, 502, 503, 504 or 5xx, not '\(cond)'")
                    }
                }
            }
            if let b = t["backoff"] {
                if let ns = parseDurationNanoseconds(b.value), (0...10_000_000_000).contains(ns) { retry.backoffNanoseconds = ns }
                else { bad(b.position, "retries backoff must be a duration from 0 to 10s") }
            }
            if let n = t["non_idempotent"] {
                switch n.value {
                case "true": retry.nonIdempotent = true
                case "false": retry.nonIdempotent = false
                default: bad(n.position, "non_idempotent must be true or false")
                }
            }
        }
        var rules = ForwardingRules()
        if let p = r.prefixRewrite {
            if prefixLength == 0 { bad(p.position, "prefix_rewrite needs a match on path_prefix") }
            if isPathText(p.value) { rules.prefixReplacement = Array(p.value.utf8) } else { bad(p.position, "prefix_rewrite must start with '/'") }
        }
        if let h = r.hostRewrite {
            if !h.value.isEmpty && isFieldValue(h.value) && !h.value.contains(" ") { rules.hostRewrite = Array(h.value.utf8) }
            else { bad(h.position, "host_rewrite must be a host name") }
        }
        func lines(_ list: [HeaderDocument], _ what: String) -> [[UInt8]] {
            list.compactMap { h in
                guard let n = h.name, isToken(n.value) else { bad(h.position, "\(what): a header needs a valid name"); return nil }
                guard let v = h.value, isFieldValue(v.value) else { bad(h.position, "\(what): header '\(n.value)' needs a value without control bytes"); return nil }
                let lower = n.value.lowercased()
                if ["content-length", "transfer-encoding", "connection", "host", "upgrade"].contains(lower) {
                    bad(n.position, "\(what): '\(n.value)' frames or routes the message and cannot be added")
                }
                return Array("\(n.value): \(v.value)".utf8)
            }
        }
        func names(_ list: [Located<String>], _ what: String) -> [[UInt8]] {
            list.compactMap { n in
                guard isToken(n.value) else { bad(n.position, "\(what): '\(n.value)' is not a header name"); return nil }
                if ["content-length", "transfer-encoding", "host"].contains(n.value.lowercased()) {
                    bad(n.position, "\(what): '\(n.value)' frames or routes the message and cannot be removed")
                }
                return Array(n.value.lowercased().utf8)
            }
        }
        rules.addHeaders = lines(r.requestHeadersToAdd, "request_headers_to_add")
        rules.removeHeaders = names(r.requestHeadersToRemove, "request_headers_to_remove")
        let responseAdd = lines(r.responseHeadersToAdd, "response_headers_to_add")
        let responseRemove = names(r.responseHeadersToRemove, "response_headers_to_remove")
        var hashKey: HashKey? = nil
        if let h = r.hashKey {
            if let k = HashKey(parsing: h.value) { hashKey = k } else { bad(h.position, "hash_key must be \(HashKey.forms), not '\(h.value)'") }
        }
        guard ok else { return nil }
        return (match, Route(target: target, hashKey: hashKey, timeoutNanoseconds: timeout, idleTimeoutNanoseconds: idle, retry: retry,
                             forwarding: rules, prefixLength: prefixLength,
                             responseRemove: responseRemove, responseAdd: responseAdd))
    }

    static func compilePool(_ c: ClusterDocument, name: String, fail: (SourcePosition, String) -> Void) -> PoolSettings? {
        var p = PoolSettings()
        var ok = true
        for (key, v) in (c.pool ?? [:]).sorted(by: { $0.key < $1.key }) {
            func count(_ range: ClosedRange<Int>) -> Int? {
                if let n = Int(v.value), range.contains(n) { return n }
                fail(v.position, "cluster '\(name)': pool \(key) must be \(range.lowerBound) to \(range.upperBound)"); ok = false
                return nil
            }
            switch key {
            case "max_connections": if let n = count(1...1_000_000) { p.maxConnections = n }
            case "max_idle": if let n = count(0...1_000_000) { p.maxIdle = n }
            case "max_requests_per_connection": if let n = count(0...1_000_000_000) { p.maxRequestsPerConnection = n }
            case "idle_timeout":
                if let ns = parseDurationNanoseconds(v.value), (1_000_000...86_400_000_000_000).contains(ns) { p.idleTimeoutNanoseconds = ns }
                else { fail(v.position, "cluster '\(name)': pool idle_timeout must be a duration from 1ms to 24h"); ok = false }
            default: break
            }
        }
        return ok ? p : nil
    }
}

extension Compiler {
    /// `routes:` on a tcp listener: `- { match: { sni: [names] }, cluster: x }`, first match wins,
    /// a route without match takes everything else.
    static func compileSNIRoutes(_ l: ListenerDocument, name: String, clusterIndex: [String: Int], invalidClusters: Set<String>,
                                 clusters: [Cluster], fail: (SourcePosition, String) -> Void) -> [SNIRoute]? {
        var ok = true
        var out: [SNIRoute] = []
        for r in l.routes {
            func bad(_ p: SourcePosition, _ m: String) { fail(p, "listener '\(name)' route: \(m)"); ok = false }
            if let other = r.match.keys.sorted().first(where: { $0 != "sni" }) ?? (r.matchHeaders.isEmpty ? nil : "headers") {
                bad(r.match[other]?.position ?? r.position, "a tcp route matches on sni only, not '\(other)' (http routes need protocol: http)")
            }
            if r.weightedClusters != nil || r.directResponse != nil || r.redirect != nil || r.timeout != nil || r.retries != nil || r.hashKey != nil
                || r.prefixRewrite != nil || r.hostRewrite != nil || !r.requestHeadersToAdd.isEmpty || !r.responseHeadersToAdd.isEmpty {
                bad(r.position, "a tcp route takes match.sni and cluster only")
            }
            var names: [HostPattern] = []
            if let sni = r.match["sni"] {
                for n in sni.value.split(separator: ",").map(String.init) {
                    let bare = n.hasPrefix("*.") ? String(n.dropFirst(2)) : n
                    if bare.isEmpty || bare.contains("*") || !bare.utf8.allSatisfy({ $0 > 32 && $0 < 127 && $0 != UInt8(ascii: "/") }) {
                        bad(sni.position, "sni '\(n)' must be a name or '*.' followed by a domain")
                    }
                    names.append(HostPattern(n))
                }
            }
            guard let c = r.cluster else { bad(r.position, "a tcp route needs a 'cluster'"); continue }
            guard let ci = clusterIndex[c.value] else {
                if invalidClusters.contains(c.value) { ok = false; continue }
                bad(c.position, "cluster '\(c.value)' is not defined")
                continue
            }
            if clusters[ci].options.hashKey.isHTTP && clusters[ci].balancer.usesHash {
                bad(c.position, "cluster '\(c.value)' hashes an HTTP hash_key; tcp listeners hash source_ip")
            }
            out.append(SNIRoute(names: names, clusterIndex: ci))
        }
        return ok ? out : nil
    }
}

extension Listener {
    /// Where the listener sends traffic, for logs and `weir check`: "cluster x", or for HTTP the
    /// routes and the clusters they reach.
    public func targetSummary(in snapshot: Snapshot) -> String {
        if let chains {
            let prefix = self.name.count + 1
            func name(_ t: Int) -> String { t >= 0 ? String(snapshot.listeners[t].name.dropFirst(prefix)) : "(refused: closed)" }
            let inspect = [chains.inspectTLS ? "tls" : nil, chains.inspectHTTP ? "http" : nil].compactMap { $0 }
            return "\(chains.targets.count) chains (\(chains.targets.map(name).joined(separator: ", ")))"
                + (chains.defaultTarget.map { ", default \(name($0))" } ?? ", no default")
                + (inspect.isEmpty ? "" : ", inspecting \(inspect.joined(separator: "+"))")
                + (useOriginalDestination ? ", hands off by original destination" : "")
        }
        return (useOriginalDestination ? "hands off by original destination, else " : "") + Listener.summary(self, snapshot)
    }

    static func summary(_ l: Listener, _ snapshot: Snapshot) -> String {
        let sniRoutes = l.sniRoutes, http = l.http, clusterIndex = l.clusterIndex
        if clusterIndex >= 0 && snapshot.clusters[clusterIndex].originalDestination && http == nil {
            return "cluster \(snapshot.clusters[clusterIndex].name) (original destination)"
        }
        if !sniRoutes.isEmpty {
            return "by server name: " + sniRoutes.map { r in
                (r.names.isEmpty ? "any" : r.names.map(\.text).joined(separator: "|")) + " -> " + snapshot.clusters[r.clusterIndex].name
            }.joined(separator: ", ")
        }
        guard let http else { return "cluster \(snapshot.clusters[clusterIndex].name)" }
        var names: [String] = []
        for a in http.actions {
            switch a.target {
            case .cluster(let i): names.append(snapshot.clusters[i].name)
            case .weighted(let w): names += w.clusters.map { snapshot.clusters[$0].name }
            case .direct: names.append("direct_response")
            case .redirect: names.append("redirect")
            }
        }
        var seen = Set<String>()
        let unique = names.filter { seen.insert($0).inserted }
        return "\(http.actions.count) route(s) -> \(unique.joined(separator: ", "))"
    }
}

extension RouteMatch {
    /// The conditions, as an operator wrote them.
    public var summary: String {
        var parts: [String] = []
        if !hosts.isEmpty {
            parts.append("host " + hosts.map(\.text).joined(separator: "|"))
        }
        switch path {
        case .any: break
        case .prefix(let p): parts.append("path_prefix " + String(decoding: p, as: UTF8.self))
        case .exact(let p): parts.append("path_exact " + String(decoding: p, as: UTF8.self))
        case .regex(let r): parts.append("path_regex " + r.pattern)
        }
        if !methods.isEmpty { parts.append("methods \(methods.count)") }
        for h in headers {
            let text: (String, [UInt8]) -> String = { op, w in op + String(decoding: w, as: UTF8.self) }
            var t: String
            switch h.test {
            case .present: t = ""
            case .absent: t = " absent"
            case .exact(let w): t = text("=", w)
            case .prefix(let w): t = text(" prefix ", w)
            case .suffix(let w): t = text(" suffix ", w)
            case .contains(let w): t = text(" contains ", w)
            case .regex(let r): t = " regex " + r.pattern
            }
            parts.append("header " + (h.invert ? "not " : "") + String(decoding: h.name, as: UTF8.self) + t)
        }
        return parts.isEmpty ? "any request" : parts.joined(separator: ", ")
    }
}

extension Route {
    public func summary(in snapshot: Snapshot) -> String {
        var s: String
        switch target {
        case .cluster(let i): s = "cluster \(snapshot.clusters[i].name)"
        case .weighted(let w):
            var prev: UInt32 = 0
            s = "weighted " + zip(w.clusters, w.cumulative).map { id, c in defer { prev = c }; return "\(snapshot.clusters[id].name) \(c - prev)" }.joined(separator: ", ")
        case .direct(let status, _, _): s = "direct_response \(status)"
        case .redirect(let r): s = "redirect \(r.status)"
        }
        if case .cluster = target { s += ", timeout \(timeoutNanoseconds == 0 ? "none" : formatDuration(nanoseconds: timeoutNanoseconds))" }
        if retry.attempts > 0 { s += ", \(retry.attempts) retr\(retry.attempts == 1 ? "y" : "ies")" }
        return s
    }
}
