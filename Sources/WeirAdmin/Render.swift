// What the admin API shows: Prometheus text, cluster tables, JSON documents.
import WeirConfig
import WeirCore
import WeirProxy

enum AdminRender {
    /// Escapes a label value for the Prometheus text format.
    static func label(_ s: String) -> String {
        var out = ""
        for ch in s {
            switch ch {
            case "\\": out += "\\\\"
            case "\"": out += "\\\""
            case "\n": out += "\\n"
            default: out.append(ch)
            }
        }
        return out
    }

    /// Escapes a JSON string value.
    static func json(_ s: String) -> String {
        var out = "\""
        for u in s.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if u.value < 0x20 { out += "\\u" + String(repeating: "0", count: 4 - String(u.value, radix: 16).count) + String(u.value, radix: 16) }
                else { out.unicodeScalars.append(u) }
            }
        }
        return out + "\""
    }

    static func prometheus(_ server: Server) -> String {
        var out = ""
        func family(_ name: String, _ type: String, _ help: String, _ samples: [(String, Int64)]) {
            out += "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n"
            for (labels, v) in samples { out += labels.isEmpty ? "\(name) \(v)\n" : "\(name){\(labels)} \(v)\n" }
        }
        let snap = server.store.snapshot
        let (listeners, endpoints) = server.namedStats()
        let totals = server.stats
        let ls = listeners.sorted { $0.key < $1.key }
        family("weir_downstream_connections_total", "counter", "Connections accepted, per listener.",
               ls.map { ("listener=\"\(label($0.key))\"", $0.value.accepted) })
        family("weir_downstream_connections_active", "gauge", "Connections open now, per listener.",
               ls.map { ("listener=\"\(label($0.key))\"", $0.value.active) })
        family("weir_downstream_connections_rejected_total", "counter", "Connections refused because a shard's slab was full.",
               ls.map { ("listener=\"\(label($0.key))\"", $0.value.rejected) })
        var byClass: [(String, Int64)] = []
        for (name, v) in ls {
            for k in 1...5 { byClass.append(("listener=\"\(label(name))\",class=\"\(k)xx\"", v.responses(class: k))) }
        }
        family("weir_http_requests_total", "counter", "HTTP requests whose head arrived (or was refused), per listener.",
               ls.map { ("listener=\"\(label($0.key))\"", $0.value.requests) })
        family("weir_http_responses_total", "counter", "HTTP responses sent, per listener and status class.", byClass)
        family("weir_http_local_responses_total", "counter", "HTTP responses Weir made itself (errors, direct_response, redirect).",
               ls.map { ("listener=\"\(label($0.key))\"", $0.value.localResponses) })
        family("weir_http_retries_total", "counter", "HTTP requests sent again to another endpoint (route retries).",
               ls.map { ("listener=\"\(label($0.key))\"", $0.value.retries) })
        family("weir_http_pool_retries_total", "counter",
               "HTTP requests sent again on a fresh connection because the pooled one they met had been closed by the upstream.",
               ls.map { ("listener=\"\(label($0.key))\"", $0.value.poolRetries) })
        family("weir_tls_handshakes_total", "counter", "TLS handshakes completed, per listener.",
               ls.map { ("listener=\"\(label($0.key))\"", $0.value.tlsHandshakes) })
        family("weir_tls_resumptions_total", "counter", "TLS handshakes that resumed a session (tickets), per listener.",
               ls.map { ("listener=\"\(label($0.key))\"", $0.value.tlsResumptions) })
        var tlsFailures: [(String, Int64)] = []
        for (name, v) in ls {
            tlsFailures.append(("listener=\"\(label(name))\",reason=\"version\"", v.tlsFailedVersion))
            tlsFailures.append(("listener=\"\(label(name))\",reason=\"certificate\"", v.tlsFailedCertificate))
            tlsFailures.append(("listener=\"\(label(name))\",reason=\"other\"", v.tlsFailedOther))
        }
        family("weir_tls_handshake_failures_total", "counter", "TLS handshakes that failed, per listener and reason.", tlsFailures)
        out += "# HELP weir_http_request_duration_seconds HTTP request duration, from its first byte to the last response byte.\n"
        out += "# TYPE weir_http_request_duration_seconds histogram\n"
        for (name, v) in ls where v.latency.count > 0 || v.requests > 0 {
            let l = "listener=\"\(label(name))\""
            var cumulative: Int64 = 0
            let counts = v.latency.counts
            for (i, bound) in LatencyHistogram.bounds.enumerated() {
                cumulative += counts[i]
                out += "weir_http_request_duration_seconds_bucket{\(l),le=\"\(bound)\"} \(cumulative)\n"
            }
            out += "weir_http_request_duration_seconds_bucket{\(l),le=\"+Inf\"} \(v.latency.count)\n"
            out += "weir_http_request_duration_seconds_sum{\(l)} \(Double(v.latency.sumNanoseconds) / 1e9)\n"
            out += "weir_http_request_duration_seconds_count{\(l)} \(v.latency.count)\n"
        }
        let eps = endpoints.sorted { $0.key < $1.key }.flatMap { c, list in
            list.sorted { $0.0.description < $1.0.description }.map { ("cluster=\"\(label(c))\",endpoint=\"\(label($0.0.description))\"", $0.1) }
        }
        family("weir_upstream_connections_total", "counter", "Connections made to each endpoint (attempts included).", eps.map { ($0.0, $0.1.connections) })
        family("weir_upstream_connections_active", "gauge", "Connections open (or connecting) to each endpoint.", eps.map { ($0.0, $0.1.active) })
        family("weir_upstream_connect_failures_total", "counter", "Connects refused or unreachable.", eps.map { ($0.0, $0.1.connectFailures) })
        family("weir_upstream_connect_timeouts_total", "counter", "Connects that hit connect_timeout.", eps.map { ($0.0, $0.1.connectTimeouts) })
        family("weir_upstream_requests_total", "counter", "HTTP requests sent to each endpoint.", eps.map { ($0.0, $0.1.requests) })
        family("weir_upstream_pool_reuses_total", "counter", "HTTP requests sent on a pooled (reused) connection.", eps.map { ($0.0, $0.1.poolReuses) })
        family("weir_upstream_bytes_sent_total", "counter", "Bytes delivered to each endpoint.", eps.map { ($0.0, $0.1.bytesSent) })
        family("weir_upstream_bytes_received_total", "counter", "Bytes received from each endpoint and delivered to clients.", eps.map { ($0.0, $0.1.bytesReceived) })
        var health: [(String, Int64)] = []
        for c in snap.clusters {
            for (i, e) in c.endpoints.enumerated() {
                health.append(("cluster=\"\(label(c.name))\",endpoint=\"\(label(e.address.description))\"", c.available[i] ? 1 : 0))
            }
        }
        family("weir_endpoint_available", "gauge", "1 when new traffic may go to the endpoint (healthy, not ejected).", health)
        family("weir_cluster_panic", "gauge", "1 while a cluster balances across all endpoints because too few are healthy.",
               snap.clusters.map { ("cluster=\"\(label($0.name))\"", $0.eligibility.panic ? 1 : 0) })
        let (changes, panics) = server.healthCounters
        family("weir_health_state_changes_total", "counter", "Endpoint health changes (probes and ejections).", [("", Int64(changes))])
        family("weir_cluster_panics_total", "counter", "Times a cluster entered panic.", [("", Int64(panics))])
        family("weir_idle_timeouts_total", "counter", "Connections closed by idle_timeout.", [("", Int64(totals.idleTimeouts))])
        family("weir_http_overloads_total", "counter", "HTTP requests answered 503 because a pool hit max_connections or no head buffer was free.",
               [("reason=\"pool_full\"", Int64(totals.poolOverflows)), ("reason=\"head_buffers\"", Int64(totals.headBuffersExhausted))])
        family("weir_source_bind_failures_total", "counter", "Upstream connections that could not bind their cluster's source_address (closed; the first per address is logged).",
               [("", Int64(totals.sourceBindFailures))])
        family("weir_client_cert_details_too_long_total", "counter", "mTLS peers whose X-Forwarded-Client-Cert details did not fit in 1 KiB: their requests go without them.",
               [("", Int64(totals.clientCertTooLong))])
        family("weir_sni_unrouted_total", "counter", "TLS passthrough connections closed: no route for their server name (or a ClientHello timeout).",
               [("reason=\"no_route\"", Int64(totals.sniUnrouted)), ("reason=\"timeout\"", Int64(totals.sniTimeouts))])
        family("weir_filter_chain_closed_total", "counter", "Connections closed before a session: no filter chain fit, the chain that fit was refused, or the inspectors timed out without continue_on_inspect_timeout.",
               [("reason=\"no_chain\"", Int64(totals.chainUnmatched)), ("reason=\"refused_chain\"", Int64(totals.chainRefused)),
                ("reason=\"inspect_timeout\"", Int64(totals.inspectTimeouts))])
        family("weir_http2_connections_total", "counter", "HTTP/2 connections (h2 by ALPN, h2c by preface).", [("", Int64(totals.h2Connections))])
        family("weir_http2_streams_total", "counter", "HTTP/2 streams by how they ended: each request served, refused with REFUSED_STREAM (stream limit, no slot or head buffer), reset by the client, or answered 431 for header blocks over the header limits.",
               [("outcome=\"served\"", Int64(totals.h2Streams)), ("outcome=\"refused\"", Int64(totals.h2StreamsRefused)),
                ("outcome=\"reset_by_client\"", Int64(totals.h2StreamsResetByClient)), ("outcome=\"headers_too_large\"", Int64(totals.h2HeadersTooLarge))])
        family("weir_http2_goaway_total", "counter", "HTTP/2 connections Weir ended with GOAWAY for a protocol error, or for a flood (ENHANCE_YOUR_CALM: rapid reset, CONTINUATION, SETTINGS or PING floods).",
               [("reason=\"protocol_error\"", Int64(totals.h2GoawayProtocol)), ("reason=\"flood\"", Int64(totals.h2GoawayFlood))])
        family("weir_original_destination_loops_total", "counter", "ORIGINAL_DST connections whose destination was a listener of Weir's own (no NAT redirect): closed (tcp) or answered 503 (http).",
               [("", Int64(totals.originalDestinationLoops))])
        family("weir_buffer_ring_dry_total", "counter", "Times a receive stopped because a shard's buffer pool was empty.", [("", Int64(totals.bufferRingDry))])
        family("weir_config_generation", "gauge", "The running snapshot's generation.", [("", Int64(snap.generation))])
        family("weir_reloads_total", "counter", "Config reloads by result.",
               [("result=\"success\"", Int64(server.reloadsSucceeded.load(ordering: .relaxed))),
                ("result=\"failure\"", Int64(server.reloadsFailed.load(ordering: .relaxed)))])
        family("weir_shards", "gauge", "Shard threads.", [("", Int64(server.shardCount))])
        if let extra = server.extraPrometheus { out += extra() }
        return out
    }

    static func clustersText(_ server: Server) -> String {
        let snap = server.store.snapshot
        let (_, endpoints) = server.namedStats()
        var out = ""
        for c in snap.clusters {
            let counters = Dictionary(endpoints[c.name] ?? [], uniquingKeysWith: { a, _ in a })
            out += "\(c.name) \(c.balancer.rawValue)\(c.eligibility.panic ? " PANIC" : "")\(c.hasLevels ? " priority_shares=" + levelShares(c).map { "\($0)%" }.joined(separator: ",") : "")\n"
            for (i, e) in c.endpoints.enumerated() {
                let n = counters[e.address] ?? EndpointCounters()
                out += "  \(e.address) weight=\(e.weight) \(c.available[i] ? "healthy" : "unavailable") active=\(n.active) connections=\(n.connections) connect_failures=\(n.connectFailures) requests=\(n.requests) pool_reuses=\(n.poolReuses)\(c.hasLevels ? " priority=\(e.priority)" : "")\n"
            }
        }
        return out
    }

    /// Per priority level, the percent of new traffic it takes now (one level: [100]).
    static func levelShares(_ c: Cluster) -> [Double] {
        let cumulative = c.eligibility.cumulativeLoad
        guard !cumulative.isEmpty else { return [100] }
        return cumulative.indices.map { Double(cumulative[$0] - ($0 == 0 ? 0 : cumulative[$0 - 1])) / 100 }
    }

    static func clustersJSON(_ server: Server) -> String {
        let snap = server.store.snapshot
        let (_, endpoints) = server.namedStats()
        let clusters = snap.clusters.map { c -> String in
            let counters = Dictionary(endpoints[c.name] ?? [], uniquingKeysWith: { a, _ in a })
            let eps = c.endpoints.enumerated().map { i, e -> String in
                let n = counters[e.address] ?? EndpointCounters()
                return "{\"address\":\(json(e.address.description)),\"weight\":\(e.weight),\"healthy\":\(c.available[i]),\"active\":\(n.active),\"connections\":\(n.connections),\"connect_failures\":\(n.connectFailures),\"priority\":\(e.priority)}"
            }
            return "{\"name\":\(json(c.name)),\"balancer\":\(json(c.balancer.rawValue)),\"panic\":\(c.eligibility.panic),\"priority_shares\":[\(levelShares(c).map { String($0) }.joined(separator: ","))],\"endpoints\":[\(eps.joined(separator: ","))]}"
        }
        return "{\"clusters\":[\(clusters.joined(separator: ","))]}\n"
    }

    static func configDump(_ server: Server) -> String {
        let s = server.store.snapshot
        let listeners = s.listeners.map {
            "{\"name\":\(json($0.name)),\"address\":\(json($0.address.description)),\"protocol\":\(json($0.proto.rawValue)),\"cluster\":\($0.http == nil && $0.clusterIndex >= 0 ? json(s.clusters[$0.clusterIndex].name) : "null"),\"routes\":\($0.http?.actions.count ?? $0.sniRoutes.count),\"tls\":\($0.tls != nil),\"idle_timeout\":\(json(formatDuration(nanoseconds: $0.idleTimeoutNanoseconds)))}"
        }
        let clusters = s.clusters.map { c in
            "{\"name\":\(json(c.name)),\"balancer\":\(json(c.balancer.rawValue)),\"connect_timeout\":\(json(formatDuration(nanoseconds: c.connectTimeoutNanoseconds))),\"connect_attempts\":\(c.connectAttempts),\"endpoints\":[\(c.endpoints.map { "{\"address\":\(json($0.address.description)),\"weight\":\($0.weight)}" }.joined(separator: ","))]}"
        }
        let age = Double(monotonicNanoseconds() - server.startedAt) / 1e9
        return "{\"generation\":\(s.generation),\"source\":\(json(s.source)),\"uptime_seconds\":\(Int(age)),\"shards\":\(server.shardCount),\"listeners\":[\(listeners.joined(separator: ","))],\"clusters\":[\(clusters.joined(separator: ","))]\(server.extraConfigDump.map { ",\"xds\":" + $0() } ?? "")}\n"
    }

    static func serverInfo(_ server: Server, version: String, failing: Bool) -> String {
        let state = server.draining.load(ordering: .relaxed) ? "DRAINING" : (failing ? "FAILED" : "LIVE")
        let uptime = Int(Double(monotonicNanoseconds() - server.startedAt) / 1e9)
        return "{\"version\":\(json(version)),\"state\":\(json(state)),\"uptime_seconds\":\(uptime),\"generation\":\(server.store.snapshot.generation),\"shards\":\(server.shardCount),\"config\":\(json(server.store.snapshot.source))}\n"
    }
}
