#!/usr/bin/env python3
"""Writes a FileDescriptorSet with Envoy's v3 xDS protos that Weir uses (and everything they
import), taken from the PyPI package xds-protos (its Python modules carry the serialized
descriptors; no .proto files are needed). Files that are imported only for their options
(validate, udpa/xds/envoy annotations) are dropped, and the imports of them removed, so the
generated Swift does not carry them. Used by scripts/generate-xds.sh.
Usage: xds_descriptors.py OUT.pb > list-of-files-to-generate
"""
import importlib, sys
from google.protobuf import descriptor_pb2, descriptor_pool

ROOTS = [
    "envoy.service.discovery.v3.ads_pb2",
    "envoy.config.cluster.v3.cluster_pb2",
    "envoy.config.endpoint.v3.endpoint_pb2",
    "envoy.config.listener.v3.listener_pb2",
    "envoy.config.route.v3.route_pb2",
    "envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2",
    "envoy.extensions.filters.network.tcp_proxy.v3.tcp_proxy_pb2",
    "envoy.extensions.filters.http.router.v3.router_pb2",
    # SDS: Secret, and the TLS contexts that name secrets (listener chains, clusters).
    "envoy.extensions.transport_sockets.tls.v3.secret_pb2",
    "envoy.extensions.transport_sockets.tls.v3.tls_pb2",
]
OPTION_ONLY = ("validate/", "udpa/annotations/", "xds/annotations/", "envoy/annotations/")
# Shipped with protoc itself (Debian's protobuf-compiler): well-known types come from there.
WELL_KNOWN = ("google/protobuf/",)

for m in ROOTS:
    importlib.import_module(m)
pool = descriptor_pool.Default()
roots = [importlib.import_module(m).DESCRIPTOR for m in ROOTS]
seen, order = set(), []

def visit(fd):
    if fd.name in seen:
        return
    seen.add(fd.name)
    for dep in fd.dependencies:
        visit(dep)
    order.append(fd)

for fd in roots:
    visit(fd)

out = descriptor_pb2.FileDescriptorSet()
names = []
for fd in order:
    if fd.name.startswith(OPTION_ONLY):
        continue
    proto = descriptor_pb2.FileDescriptorProto()
    fd.CopyToProto(proto)
    keep = [d for d in proto.dependency if not d.startswith(OPTION_ONLY)]
    # public/weak dependency indexes refer to positions in the dependency list; rebuild them.
    public = [proto.dependency[i] for i in proto.public_dependency if not proto.dependency[i].startswith(OPTION_ONLY)]
    del proto.dependency[:]
    proto.dependency.extend(keep)
    del proto.public_dependency[:]
    proto.public_dependency.extend(keep.index(p) for p in public)
    del proto.weak_dependency[:]
    out.file.append(proto)
    if not fd.name.startswith(WELL_KNOWN):
        names.append(fd.name)

with open(sys.argv[1], "wb") as f:
    f.write(out.SerializeToString())
print("\n".join(names))
