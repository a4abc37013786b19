// Which filters in an xDS resource Weir knowingly skips, and which it refuses by name. The rule
// (docs/xds.md): a filter that only observes (stats, metadata exchange between Istio proxies,
// ALPN hints for Istio's mTLS, empty fault and CORS filters) is skipped, and the skip is listed
// in /config_dump and counted; a filter that can deny, rewrite or redirect a request (RBAC,
// ext_authz, JWT, Lua, Wasm other than Istio's built-in observers, Istio's authn) is refused
// with the resource, the filter and the reason named, never skipped; anything else is refused
// as not on the list.
import Foundation
import SwiftProtobuf

/// A filter's configuration type without the type.googleapis.com/ prefix, looking through
/// udpa.type.v1.TypedStruct and xds.type.v3.TypedStruct (Istio wraps its own filters in them),
/// and whether it carries any configuration.
struct FilterType {
    let name: String
    let empty: Bool
    /// The configuration's bytes (nil inside a TypedStruct, whose value is a JSON-like Struct).
    let value: Data?
    /// Inside a TypedStruct: its value, a google.protobuf.Struct.
    var structValue: RawProto? = nil
}

func filterType(_ any: Google_Protobuf_Any) -> FilterType {
    func bare(_ url: String) -> String { url.split(separator: "/").last.map(String.init) ?? url }
    let name = bare(any.typeURL)
    if name == "udpa.type.v1.TypedStruct" || name == "xds.type.v3.TypedStruct", let raw = RawProto(any.value), let inner = raw.string(1) {
        return FilterType(name: bare(inner), empty: (raw.bytes(2) ?? []).isEmpty, value: nil, structValue: raw.message(2))
    }
    return FilterType(name: name, empty: any.value.isEmpty, value: any.value)
}

enum FilterVerdict: Equatable {
    /// Skipped: the filter only observes; the text says what it would do.
    case skip(String)
    case refuse(String)
}

/// Istio's built-in Wasm plugins on the null VM (compiled into Istio's Envoy, not Wasm code):
/// metadata exchange and stats, both observers.
func nullVMObserver(_ t: FilterType) -> String? {
    let runtime: String?, code: String?
    if let value = t.value {
        let vm = RawProto(value)?.message(1)?.message(3)
        runtime = vm?.string(2)
        code = vm?.message(3)?.message(1)?.string(3)
    } else if let s = t.structValue {
        // Older Istio (1.9) sends the Wasm config as a TypedStruct: the same fields, as a Struct.
        runtime = s.structString(["config", "vm_config", "runtime"])
        code = s.structString(["config", "vm_config", "code", "local", "inline_string"])
    } else {
        return nil
    }
    guard runtime == "envoy.wasm.runtime.null", let code else { return nil }
    switch code {
    case "envoy.wasm.metadata_exchange": return "Istio's metadata exchange (null VM)"
    case "envoy.wasm.stats": return "Istio's stats (null VM)"
    default: return nil
    }
}

let refusedFilters: [String: String] = [
    "envoy.extensions.filters.http.rbac.v3.RBAC": "RBAC decides who may send a request",
    "envoy.extensions.filters.network.rbac.v3.RBAC": "RBAC decides who may connect",
    "envoy.extensions.filters.http.ext_authz.v3.ExtAuthz": "ext_authz decides who may send a request",
    "envoy.extensions.filters.network.ext_authz.v3.ExtAuthz": "ext_authz decides who may connect",
    "envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication": "JWT authentication decides who may send a request",
    "envoy.extensions.filters.http.lua.v3.Lua": "a Lua filter can change or deny any request",
    "istio.envoy.config.filter.http.authn.v2alpha1.FilterConfig": "Istio's authn filter decides who may send a request",
    "io.istio.network.authn.Config": "Istio's authn filter decides who may connect",
]

/// An HTTP filter other than the router.
func httpFilterVerdict(_ t: FilterType) -> FilterVerdict {
    if let why = refusedFilters[t.name] { return .refuse(why + "; Weir does not implement it") }
    switch t.name {
    case "envoy.extensions.filters.http.wasm.v3.Wasm":
        if let what = nullVMObserver(t) { return .skip(what) }
        return .refuse("Wasm filters other than Istio's null-VM metadata exchange and stats can change or deny requests; Weir does not run Wasm")
    case "envoy.extensions.filters.http.grpc_stats.v3.FilterConfig": return .skip("gRPC statistics")
    case "istio.envoy.config.filter.http.alpn.v2alpha1.FilterConfig": return .skip("ALPN for Istio's upstream mTLS")
    case "stats.PluginConfig", "istio.stats.PluginConfig": return .skip("Istio's stats")
    case "envoy.extensions.filters.http.fault.v3.HTTPFault":
        return t.empty ? .skip("an empty fault filter (no fault configured)") : .refuse("fault injection is not implemented")
    case "envoy.extensions.filters.http.cors.v3.Cors":
        return t.empty ? .skip("an empty CORS filter (policies come from routes)") : .refuse("a configured CORS filter is not implemented")
    default:
        return .refuse("not on the list of filters Weir knowingly skips (docs/xds.md)")
    }
}

/// A network filter before a listener chain's last one (http_connection_manager or tcp_proxy).
func networkFilterVerdict(_ t: FilterType) -> FilterVerdict {
    if let why = refusedFilters[t.name] { return .refuse(why + "; Weir does not implement it") }
    switch t.name {
    case "stats.PluginConfig", "istio.stats.PluginConfig": return .skip("Istio's stats")
    case "envoy.tcp.metadataexchange.config.MetadataExchange": return .skip("Istio's metadata exchange (only on istio-peer-exchange mTLS)")
    case "envoy.extensions.filters.network.wasm.v3.Wasm":
        if let what = nullVMObserver(t) { return .skip(what) }
        return .refuse("Wasm filters other than Istio's null-VM metadata exchange and stats can change or deny traffic; Weir does not run Wasm")
    default:
        return .refuse("not on the list of filters Weir knowingly skips (docs/xds.md)")
    }
}

/// A cluster's upstream network filter.
func clusterFilterVerdict(_ t: FilterType) -> FilterVerdict {
    switch t.name {
    case "envoy.tcp.metadataexchange.config.MetadataExchange": return .skip("Istio's metadata exchange (only on istio-peer-exchange mTLS)")
    default: return .refuse("not on the list of filters Weir knowingly skips (docs/xds.md)")
    }
}
