#!/usr/bin/env python3
"""A small xDS management server (ADS, state of the world) for Weir's tests, on Envoy's real
protos (PyPI xds-protos + grpcio). `xds_server.py [PORT | unix:PATH]` prints "port N" when listening. Reads commands from stdin, one
JSON object per line: {"type": "CDS"|"LDS"|"EDS"|"RDS", "version": "v1", "resources": [...]},
resources in proto3 JSON (SDS: Secret resources). Each command replaces that type's resources and is pushed to the
connected stream. Every request Weir sends is printed as one line:
  REQ <type> version=<v> nonce=<n> names=<a,b> node=<the stream's node id> error=<error_detail message, lines joined by " | ">
(with "stream=sds " before node= on the SecretDiscoveryService, which serves the same state).
Exits when stdin closes.

A client whose node id starts with "envoy" (a real Envoy serving as the oracle beside Weir) gets
listeners bound to 127.0.0.2 instead of 127.0.0.1, so both can hold the same resources at once.
"""
import json, queue, sys, threading
from concurrent import futures
import grpc
from google.protobuf import any_pb2, json_format
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from envoy.service.secret.v3 import sds_pb2_grpc
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2  # noqa: F401 (Any types)
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2  # noqa: F401
from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: F401
# What Istio's resources pack (Istio's own filters come wrapped in a udpa TypedStruct).
from udpa.type.v1 import typed_struct_pb2  # noqa: F401
from envoy.extensions.filters.http.wasm.v3 import wasm_pb2  # noqa: F401
from envoy.extensions.filters.http.grpc_stats.v3 import config_pb2  # noqa: F401
from envoy.extensions.filters.http.fault.v3 import fault_pb2  # noqa: F401
from envoy.extensions.filters.http.cors.v3 import cors_pb2  # noqa: F401
from envoy.extensions.filters.http.lua.v3 import lua_pb2  # noqa: F401
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2  # noqa: F401
from envoy.extensions.transport_sockets.raw_buffer.v3 import raw_buffer_pb2  # noqa: F401
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2  # noqa: F401
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.extensions.access_loggers.file.v3 import file_pb2  # noqa: F401
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2  # noqa: F401
from envoy.extensions.filters.listener.http_inspector.v3 import http_inspector_pb2  # noqa: F401
from envoy.extensions.filters.listener.original_dst.v3 import original_dst_pb2  # noqa: F401

if __import__("os").environ.get("XDS_IMPORT_ALL"):
    # Replaying captured resources (scripts/istio_replay.py): every type xds-protos carries.
    from xds_types import import_all
    import_all()

TYPES = {
    "CDS": ("type.googleapis.com/envoy.config.cluster.v3.Cluster", cluster_pb2.Cluster),
    "LDS": ("type.googleapis.com/envoy.config.listener.v3.Listener", listener_pb2.Listener),
    "EDS": ("type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment", endpoint_pb2.ClusterLoadAssignment),
    "RDS": ("type.googleapis.com/envoy.config.route.v3.RouteConfiguration", route_pb2.RouteConfiguration),
    "SDS": ("type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret", secret_pb2.Secret),
}
SHORT = {url: short for short, (url, _) in TYPES.items()}
state = {}          # short -> (version, [Any])
streams = []        # queues of responses for connected streams
lock = threading.Lock()
nonce = [0]


def for_envoy(short, resources):
    if short != "LDS":
        return resources
    out = []
    for a in resources:
        m = listener_pb2.Listener()
        a.Unpack(m)
        if m.address.socket_address.address == "127.0.0.1":
            m.address.socket_address.address = "127.0.0.2"
        b = any_pb2.Any()
        b.Pack(m)
        out.append(b)
    return out


def response(short, envoy=False):
    version, resources = state[short]
    if envoy:
        resources = for_envoy(short, resources)
    nonce[0] += 1
    return discovery_pb2.DiscoveryResponse(version_info=version, resources=resources, type_url=TYPES[short][0], nonce=str(nonce[0]))


class ADS(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    def StreamAggregatedResources(self, request_iterator, context, stream=""):
        q = queue.Queue()
        envoy = [False]
        node = [""]
        with lock:
            streams.append(q)

        def read():
            try:
                for r in request_iterator:
                    if r.node.id:
                        envoy[0] = r.node.id.startswith("envoy")
                        node[0] = r.node.id
                        l = r.node.locality
                        if l.region or l.zone or l.sub_zone:
                            node[0] += f" locality={l.region}/{l.zone}/{l.sub_zone}"
                    short = SHORT.get(r.type_url, r.type_url)
                    print(f"REQ {short} version={r.version_info} nonce={r.response_nonce} names={','.join(r.resource_names)} "
                          f"{stream}node={node[0]} error={' | '.join(r.error_detail.message.splitlines())}", flush=True)
                    # A first request for a type gets what we hold of it.
                    if not r.response_nonce and short in state:
                        q.put(short)
            finally:
                q.put(None)

        threading.Thread(target=read, daemon=True).start()
        try:
            while True:
                short = q.get()
                if short is None:
                    return
                with lock:
                    r = response(short, envoy[0])
                yield r  # serialized and sent outside the lock, so streams do not wait on each other
        finally:
            with lock:
                streams.remove(q)


class SDS(sds_pb2_grpc.SecretDiscoveryServiceServicer):
    """SecretDiscoveryService, as pilot-agent serves it on its socket: the same state, the same
    protocol; its requests are printed with "stream=sds"."""
    def StreamSecrets(self, request_iterator, context):
        return ADS().StreamAggregatedResources(request_iterator, context, stream="stream=sds ")


server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(ADS(), server)
sds_pb2_grpc.add_SecretDiscoveryServiceServicer_to_server(SDS(), server)
where = sys.argv[1] if len(sys.argv) > 1 else "0"
# "unix:PATH" listens on a Unix socket, as pilot-agent serves xDS to its proxy.
port = server.add_insecure_port(where if where.startswith("unix:") else f"127.0.0.1:{where}")
server.start()
print(f"port {port}", flush=True)
for line in sys.stdin:
    if not line.strip():
        continue
    cmd = json.loads(line)
    short = cmd["type"]
    url, cls = TYPES[short]
    packed = []
    for r in cmd["resources"]:
        m = json_format.ParseDict(r, cls())
        a = any_pb2.Any()
        a.Pack(m)
        packed.append(a)
    with lock:
        state[short] = (cmd["version"], packed)
        for q in streams:
            q.put(short)
    print(f"SET {short} {cmd['version']}", flush=True)
server.stop(0)
