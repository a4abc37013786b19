// The intermediate form: what a config source (YAML file now, xDS later) says, unvalidated but
// typed, with the position of every value so the compiler's errors can point at it.

/// A value and where it was written.
public struct Located<Value: Sendable>: Sendable {
    public var value: Value
    public var position: SourcePosition
    public init(_ value: Value, at position: SourcePosition) { self.value = value; self.position = position }
}

public struct ConfigDocument: Sendable {
    public var source: String
    /// nil means "auto": one shard per CPU.
    public var shards: Located<Int>?
    public var drainTimeout: Located<Int64>?
    public var logLevel: Located<String>?
    public var limits = LimitsDocument()
    public var watchConfig: Located<String>?
    public var adminAddress: Located<String>?
    public var adminAllowRemote: Located<String>?
    public var adminPosition: SourcePosition?
    public var listeners: [ListenerDocument] = []
    public var clusters: [ClusterDocument] = []
    /// `xds:` keys address, initial_fetch_timeout; `node:` keys id, cluster, metadata.
    public var xds: [String: Located<String>]? = nil
    public var xdsPosition: SourcePosition?
    public var node: [String: Located<String>] = [:]
    public var nodeMetadata: [String: String] = [:]
    /// From an Envoy bootstrap: node.metadata as JSON.
    public var nodeMetadataJSON: String? = nil
    public var position: SourcePosition
    /// Problems the reader found in the shape of the source (unknown keys, wrong types).
    public var shapeErrors: [ConfigError] = []
    public init(source: String, position: SourcePosition) { self.source = source; self.position = position }
}

public struct LimitsDocument: Sendable {
    public var maxConnectionsPerShard: Located<Int>?
    public var bufferBytes: Located<Int>?
    public var buffersPerShard: Located<Int>?
    public var maxQueuedBuffersPerDirection: Located<Int>?
    public var dataPath: Located<String>?
    public var io: Located<String>?
    public var headBuffersPerShard: Located<Int>?
    public init() {}
}

public struct ListenerDocument: Sendable {
    public var position: SourcePosition
    public var name: Located<String>?
    public var address: Located<String>?
    public var proto: Located<String>?
    public var cluster: Located<String>?
    public var idleTimeout: Located<Int64>?
    public var backlog: Located<Int>?
    /// `http:` (protocol http only): limits and timeouts as written, checked by the compiler.
    public var http: [String: Located<String>]? = nil
    public var httpPosition: SourcePosition?
    public var routes: [RouteDocument] = []
    public var routesPosition: SourcePosition?
    public var tls: TLSDocument?
    public var clientHelloTimeout: Located<Int64>?
    /// From xDS, a listener activated by initial_fetch_timeout before its routes arrived: it
    /// answers 404 until they do.
    public var mayHaveNoRoutes = false
    /// tcp listeners: `weighted_clusters:` instead of `cluster:`.
    public var weightedClusters: [WeightedClusterDocument]? = nil
    public var weightedClustersPosition: SourcePosition?
    /// `bind_to_port: false`: served only through hand-off (see useOriginalDestination).
    public var bindToPort: Located<Bool>?
    public var useOriginalDestination: Located<Bool>?
    /// `chains:` (filter chains): each serves the connections its match selects, with its own
    /// protocol, cluster, routes and TLS; the listener's own such settings must be absent.
    public var chains: [ChainDocument] = []
    public var chainsPosition: SourcePosition?
    /// Listener inspectors (`inspectors: [tls, http]`); from YAML, nil means whichever the
    /// chains' matches need.
    public var inspectors: [Located<String>]? = nil
    public var inspectTimeout: Located<Int64>?
    public var continueOnInspectTimeout: Located<Bool>?
    /// Destination ports each inspector does not run for (xDS filter_disabled).
    public var tlsInspectorOffPorts: [ClosedRange<Int>] = []
    public var httpInspectorOffPorts: [ClosedRange<Int>] = []
    public init(position: SourcePosition) { self.position = position }
}

/// One filter chain as written: its match (nil: the default chain, used when no chain matches),
/// and the settings of the listener that serves it (no name or address of its own). `refused`
/// (from xDS): Weir cannot serve this chain; connections it would get are closed.
public struct ChainDocument: Sendable {
    public var position: SourcePosition
    public var name: Located<String>?
    public var match: ChainMatchDocument?
    public var body: ListenerDocument
    public var refused: String? = nil
    public init(position: SourcePosition, body: ListenerDocument) { self.position = position; self.body = body }
}

public struct ChainMatchDocument: Sendable {
    public var position: SourcePosition
    public var destinationPort: Located<Int>?
    /// "10.0.0.0/8", "::/0".
    public var destinationPrefixes: [Located<String>] = []
    public var serverNames: [Located<String>] = []
    public var transportProtocol: Located<String>?
    public var applicationProtocols: [Located<String>] = []
    public var sourcePrefixes: [Located<String>] = []
    public var sourcePorts: [Located<Int>] = []
    public init(position: SourcePosition) { self.position = position }
}

/// `tls:` on a listener, as written.
public struct TLSDocument: Sendable {
    public var position: SourcePosition
    public var certificates: [CertificateDocument] = []
    public var minVersion: Located<String>?
    public var maxVersion: Located<String>?
    /// TLS 1.2 cipher suites (OpenSSL names, ':'-separated), TLS 1.3 suites, key exchange groups.
    public var ciphers: Located<String>?
    public var cipherSuites: Located<String>?
    public var curves: Located<String>?
    public var alpn: [Located<String>] = []
    public var clientCA: Located<String>?
    /// From SDS: the client CA bundle as PEM text (`clientCA` then names the secret).
    public var clientCAPEM: String? = nil
    /// Client certificates must carry a subject alt name one of these matches (with clientCA).
    public var clientSAN: [Located<SANMatcher>] = []
    public var ticketKeyRotation: Located<Int64>?
    public init(position: SourcePosition) { self.position = position }
}

public struct CertificateDocument: Sendable {
    public var position: SourcePosition
    public var cert: Located<String>?
    public var key: Located<String>?
    public var serverNames: [Located<String>] = []
    /// A DER OCSP response to staple for this certificate (read when the snapshot compiles).
    public var ocspStaple: Located<String>?
    /// From SDS: the chain and key as PEM text instead of file paths (`cert`/`key` then name
    /// the secret, for messages and summaries).
    public var inlinePEM: (cert: String, key: String)? = nil
    /// From SDS: the OCSP response itself (`ocspStaple` then names it).
    public var ocspStapleDER: [UInt8]? = nil
    public init(position: SourcePosition) { self.position = position }
}

/// A header name and value as written (`request_headers_to_add`, `match.headers`).
public struct HeaderDocument: Sendable {
    public var position: SourcePosition
    public var name: Located<String>?
    /// nil in a match: the header must only be present.
    public var value: Located<String>?
    /// Matches only: `prefix`, `suffix`, `contains`, `regex`, `present` (instead of `value`),
    /// and the `ignore_case` and `invert` flags.
    public var prefix: Located<String>?
    public var suffix: Located<String>?
    public var contains: Located<String>?
    public var regex: Located<String>?
    public var present: Located<String>?
    public var ignoreCase: Located<String>?
    public var invert: Located<String>?
    public init(position: SourcePosition) { self.position = position }

    /// The tests given, by key.
    public var tests: [(String, Located<String>)] {
        [("value", value), ("prefix", prefix), ("suffix", suffix), ("contains", contains), ("regex", regex), ("present", present)]
            .compactMap { k, v in v.map { (k, $0) } }
    }
}

public struct WeightedClusterDocument: Sendable {
    public var position: SourcePosition
    public var cluster: Located<String>?
    public var weight: Located<Int>?
    public init(position: SourcePosition) { self.position = position }
}

public struct RouteDocument: Sendable {
    public var position: SourcePosition
    /// `match:` keys host (list), path_prefix, path_exact, path_regex, methods (list).
    public var match: [String: Located<String>] = [:]
    public var matchHeaders: [HeaderDocument] = []
    public var cluster: Located<String>?
    public var weightedClusters: [WeightedClusterDocument]? = nil
    public var weightedClustersPosition: SourcePosition?
    /// `direct_response:` keys status, body.
    public var directResponse: [String: Located<String>]? = nil
    public var directResponsePosition: SourcePosition?
    /// `redirect:` keys status, scheme, host, path, prefix.
    public var redirect: [String: Located<String>]? = nil
    public var redirectPosition: SourcePosition?
    public var timeout: Located<Int64>?
    public var idleTimeout: Located<Int64>?
    /// `retries:` keys attempts, on (list), backoff, non_idempotent.
    public var retries: [String: Located<String>]? = nil
    public var prefixRewrite: Located<String>?
    public var hostRewrite: Located<String>?
    public var requestHeadersToAdd: [HeaderDocument] = []
    public var requestHeadersToRemove: [Located<String>] = []
    public var responseHeadersToAdd: [HeaderDocument] = []
    public var responseHeadersToRemove: [Located<String>] = []
    /// `hash_key:` for ring_hash and maglev clusters this route reaches (overrides the cluster's).
    public var hashKey: Located<String>?
    public init(position: SourcePosition) { self.position = position }
}

public struct ClusterDocument: Sendable {
    public var position: SourcePosition
    public var name: Located<String>?
    public var balancer: Located<String>?
    public var connectTimeout: Located<Int64>?
    public var connectAttempts: Located<Int>?
    /// `balancer_options:` as written: key -> scalar text, checked against the balancer.
    public var balancerOptions: [String: Located<String>] = [:]
    public var balancerOptionsPosition: SourcePosition?
    public var slowStart: SlowStartDocument?
    /// `health_check:` and `outlier_detection:` as written: key -> scalar text (lists joined by
    /// commas), checked by the compiler.
    public var healthCheck: [String: Located<String>]? = nil
    public var healthCheckPosition: SourcePosition?
    public var outlierDetection: [String: Located<String>]? = nil
    public var outlierDetectionPosition: SourcePosition?
    public var panicThreshold: Located<String>?
    /// `pool:` (HTTP upstream connections) keys max_connections, max_idle, idle_timeout,
    /// max_requests_per_connection.
    public var pool: [String: Located<String>]? = nil
    /// `tls:` (TLS to the endpoints) keys sni, ca, verify, cert, key, verify_san, alpn.
    public var tls: [String: Located<String>]? = nil
    public var tlsPosition: SourcePosition?
    /// TLS to the endpoints as xDS gives it (PEM from SDS, subject alt name matchers), in place
    /// of `tls`.
    public var upstreamTLS: UpstreamTLSDocument? = nil
    public var endpoints: [EndpointDocument] = []
    /// `overprovisioning_factor:` (percent, default 140): how much a priority level's healthy
    /// share is stretched before traffic spills to the next level.
    public var overprovisioningFactor: Located<Int>?
    /// A cluster without endpoints is an error in a file, but normal from xDS (an EDS cluster
    /// scaled to zero, or activated by initial_fetch_timeout before its endpoints arrived).
    public var mayBeEmpty = false
    /// `original_destination: true` (ORIGINAL_DST): no endpoints; each connection goes to its
    /// own original destination.
    public var originalDestination: Located<Bool>?
    /// `source_address`: upstream sockets bind to it first (IP, or IP:PORT).
    public var sourceAddress: Located<String>?
    public init(position: SourcePosition) { self.position = position }
}

public struct EndpointDocument: Sendable {
    public var position: SourcePosition
    public var address: Located<String>?
    public var weight: Located<Int>?
    /// 0 is the highest priority; lower ones take traffic only when higher ones lack healthy
    /// endpoints.
    public var priority: Located<Int>?
    /// In a cluster with TLS, this endpoint is reached in plaintext (xDS transport_socket_matches:
    /// Istio's endpoints without a sidecar).
    public var plaintext = false
    public init(position: SourcePosition) { self.position = position }
}

/// TLS to a cluster's endpoints from xDS (an UpstreamTlsContext with its SDS secrets).
public struct UpstreamTLSDocument: Sendable {
    public var position: SourcePosition
    /// The name sent as SNI (never checked against the certificate: Envoy checks SANs only).
    public var serverName: String?
    /// A client certificate chain and key, as PEM, and what to call it in messages.
    public var certificate: (chain: String, key: String, name: String)? = nil
    /// CAs that sign the endpoints' certificates, as PEM; nil: the endpoints are not verified.
    public var trustedCA: (pem: String, name: String)? = nil
    public var san: [SANMatcher] = []
    /// ALPN offered by HTTP sessions (the context's), and by TCP sessions when it differs.
    public var alpn: [String] = []
    public var tcpALPN: [String]? = nil
    public var minVersion = "1.2", maxVersion = "1.3"
    public var ciphers: String? = nil, curves: String? = nil
    public init(position: SourcePosition) { self.position = position }
}

/// One subject alt name matcher (Envoy's StringMatcher, with an optional SAN type).
public struct SANMatcher: Sendable, Equatable, CustomStringConvertible {
    public enum Kind: Int32, Sendable { case any = 0, dns, uri, email, ip }
    public enum Operation: Int32, Sendable { case exact = 0, prefix, suffix, contains }
    public var kind: Kind
    public var operation: Operation
    public var value: String
    public var ignoreCase: Bool
    public init(kind: Kind = .any, _ operation: Operation, _ value: String, ignoreCase: Bool = false) {
        self.kind = kind; self.operation = operation; self.value = value; self.ignoreCase = ignoreCase
    }
    /// As written in YAML: `VALUE` (exact), or `prefix:VALUE`, `suffix:VALUE`, `contains:VALUE`,
    /// `exact:VALUE`.
    public init(text: String) {
        for (word, op) in [("exact:", Operation.exact), ("prefix:", .prefix), ("suffix:", .suffix), ("contains:", .contains)] where text.hasPrefix(word) {
            self.init(op, String(text.dropFirst(word.count)))
            return
        }
        self.init(.exact, text)
    }
    public var description: String {
        let type = kind == .any ? "" : "\(kind) "
        return operation == .exact ? "\(type)\(value)" : "\(type)\(operation):\(value)"
    }
}
public struct SlowStartDocument: Sendable {
    public var position: SourcePosition
    public var window: Located<Int64>?
    public var aggression: Located<String>?
    public var minWeightPercent: Located<String>?
    public init(position: SourcePosition) { self.position = position }
}
