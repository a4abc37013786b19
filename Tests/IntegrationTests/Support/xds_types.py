"""Loads every message type xds-protos carries into protobuf's default pool, so proto-JSON with
any @type (captured Istio resources, say) can be parsed and packed. Used by xds_server.py (with
XDS_IMPORT_ALL=1) and scripts/istio_replay.py."""
import importlib, pkgutil


def import_all():
    import envoy, udpa, xds
    for pkg in (envoy, udpa, xds):
        for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
            if m.name.endswith("_pb2"):
                try:
                    importlib.import_module(m.name)
                except Exception:
                    pass
