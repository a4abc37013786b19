#!/usr/bin/env python3
"""Turns a folder of captured Istio xDS resources (../shared/istio/*: lds.json, cds.json,
eds.json, rds.json, arrays of proto-JSON resources) into commands for the test management
server (Tests/IntegrationTests/Support/xds_server.py, run with XDS_IMPORT_ALL=1), one JSON line
per type, on standard output. Every address is rewritten to loopback: an assignment's endpoints
to 127.0.0.1:UPSTREAM_PORT, 127.0.0.2:UPSTREAM_PORT, and so on, listeners to 127.0.0.1 with ports from LISTENER_BASE up (the captured
addresses belong to other people's clusters and must never be a traffic target). Types that
xds-protos does not carry (Istio's own filters) are wrapped in a udpa TypedStruct, as Istio
itself does for several of them.
Usage: istio_replay.py DIR UPSTREAM_PORT LISTENER_BASE > commands
"""
import json, os, sys
from google.protobuf import symbol_database
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "../Tests/IntegrationTests/Support"))
from xds_types import import_all

def known(type_url):
    try:
        symbol_database.Default().pool.FindMessageTypeByName(type_url.split("/")[-1])
        return True
    except KeyError:
        return False

def wrap(node):
    if isinstance(node, dict):
        node = {k: wrap(v) for k, v in node.items()}
        t = node.get("@type")
        if t and not known(t):
            value = {k: v for k, v in node.items() if k != "@type"}
            return {"@type": "type.googleapis.com/udpa.type.v1.TypedStruct", "type_url": t, "value": value}
        return node
    if isinstance(node, list):
        return [wrap(v) for v in node]
    return node

def loopback_endpoints(node, port, seen=None):
    # The first endpoint of an assignment goes to 127.0.0.1:port (the test upstream), the others
    # to 127.0.0.2, .3, ... on the same port, so no assignment lists one address twice.
    if seen is None:
        seen = [0]
    if isinstance(node, dict):
        if "socket_address" in node and isinstance(node["socket_address"], dict):
            seen[0] += 1
            node["socket_address"]["address"] = f"127.0.{(seen[0] - 1) // 250}.{(seen[0] - 1) % 250 + 1}"
            node["socket_address"]["port_value"] = port
        for v in node.values():
            loopback_endpoints(v, port, seen)
    elif isinstance(node, list):
        for v in node:
            loopback_endpoints(v, port, seen)

if __name__ == "__main__":
    folder, upstream, base = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    import_all()
    out = {}
    for short, name in (("CDS", "cds"), ("EDS", "eds"), ("LDS", "lds"), ("RDS", "rds")):
        try:
            resources = json.load(open(f"{folder}/{name}.json"))
        except FileNotFoundError:
            continue
        resources = [{k: v for k, v in wrap(r).items() if k != "@type"} for r in resources]
        if short in ("CDS", "EDS"):
            for r in resources:
                loopback_endpoints(r, upstream)
        if short == "LDS":
            for i, l in enumerate(resources):
                sa = l.get("address", {}).get("socket_address")
                if sa:
                    sa["address"] = "127.0.0.1"
                    sa["port_value"] = base + i
                loopback_endpoints(l.get("filter_chains", []), upstream)
        out[short] = resources
    for short in ("CDS", "EDS", "LDS", "RDS"):
        if short in out:
            print(json.dumps({"type": short, "version": "captured-1", "resources": out[short]}))
