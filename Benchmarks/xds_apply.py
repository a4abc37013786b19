#!/usr/bin/env python3
"""How long an xDS update takes to be applied and ACKed, Weir against Envoy, both fed by the test
suite's management server (Tests/IntegrationTests/Support/xds_server.py) at the same time.

A mesh-sized config: N EDS clusters with E endpoints each, one HTTP listener whose RDS route
configuration has a virtual host per cluster. The clock runs from the moment the server pushes a
response until it reads the client's ACK of that version (state of the world: every EDS update
carries all N assignments, as Istio sends them). Measured: the initial load (CDS+EDS+LDS+RDS),
then R rounds of an EDS update that moves one cluster's endpoints (all N assignments resent), and
of an RDS update that renames every virtual host's domain.

Usage: python3 Benchmarks/xds_apply.py [--clusters 1000] [--endpoints 10] [--rounds 5]
Needs .build/venv-test (scripts/setup-debian.sh --tests), .build/release/weir built with the
default traits, and Envoy in .build/venv-envoy.
"""
import argparse, glob, json, os, queue, signal, socket, statistics, subprocess, sys, tempfile, threading, time

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p


class ControlPlane:
    def __init__(self):
        self.p = subprocess.Popen([os.path.join(root, ".build/venv-test/bin/python3"),
                                   os.path.join(root, "Tests/IntegrationTests/Support/xds_server.py")],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1)
        self.lines = queue.Queue()
        self.port = int(self.p.stdout.readline().split()[1])
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.p.stdout:
            self.lines.put((time.monotonic(), line.rstrip("\n")))

    def push(self, kind, version, resources):
        self.p.stdin.write(json.dumps({"type": kind, "version": version, "resources": resources}) + "\n")
        self.p.stdin.flush()
        return time.monotonic()

    def stop(self):
        self.p.stdin.close(); self.p.wait(timeout=10)


def resources(n, e, port, shift=0):
    clusters = [{"name": f"c{i}", "type": "EDS", "eds_cluster_config": {"eds_config": {"ads": {}}}, "connect_timeout": "1s"} for i in range(n)]
    def cla(i):
        # `shift` moves the endpoints of cluster 0 only: one deployment scaling, the common case.
        base = 10000 + (i * e + (shift if i == 0 else 0)) % 50000
        return {"cluster_name": f"c{i}", "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": base + k}}}} for k in range(e)]}]}
    listener = {"name": "web", "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": "web", "rds": {"route_config_name": "routes", "config_source": {"ads": {}}},
                    "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}]}]}
    def routes(tag):
        return {"name": "routes", "virtual_hosts": [
            {"name": f"v{i}", "domains": [f"svc{i}.{tag}.example"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": f"c{i}"}}]}
            for i in range(n)]}
    return clusters, [cla(i) for i in range(n)], listener, routes


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--clusters", type=int, default=1000)
    ap.add_argument("--endpoints", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    cp = ControlPlane()
    work = tempfile.mkdtemp()
    procs = []
    try:
        port = free_port()
        with open(f"{work}/weir.yaml", "w") as f:
            f.write(f'shards: 2\nlog_level: info\nnode: {{ id: weir-bench }}\nxds: {{ address: "127.0.0.1:{cp.port}" }}\n')
        procs.append(subprocess.Popen([os.path.join(root, ".build/release/weir"), "run", "--config", f"{work}/weir.yaml"],
                                      stdout=subprocess.DEVNULL, stderr=open(f"{work}/weir.log", "w")))
        envoy = glob.glob(os.path.join(root, ".build/venv-envoy/lib/*/site-packages/envoy/_bin/envoy"))
        with open(os.path.join(root, "Tests/IntegrationTests/Support/envoy_bootstrap.yaml")) as t, open(f"{work}/envoy.yaml", "w") as f:
            f.write(t.read().replace("@NODE@", "envoy-bench").replace("@ADMIN_PORT@", str(free_port())).replace("@XDS_PORT@", str(cp.port)))
        procs.append(subprocess.Popen([envoy[0], "-c", f"{work}/envoy.yaml", "--disable-hot-restart", "--concurrency", "2", "-l", "error"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        time.sleep(2)
        clusters, clas, listener, routes = resources(args.clusters, args.endpoints, port)
        # Both clients ACK every version; the fixture names the stream's node on each line.
        def timed(kind, version, payload):
            t0 = cp.push(kind, version, payload)
            acks = {}
            deadline = time.monotonic() + 120
            while len(acks) < 2:
                t, line = cp.lines.get(timeout=max(0.1, deadline - time.monotonic()))
                if line.startswith(f"REQ {kind} version={version} "):
                    if "error=" in line and not line.endswith("error="):
                        raise SystemExit(f"NACK: {line[:300]}")
                    who = "weir" if "node=weir-bench" in line else "envoy" if "node=envoy-bench" in line else None
                    if who and who not in acks:
                        acks[who] = t - t0
            return acks
        t0 = time.monotonic()
        cp.push("CDS", "c1", clusters)
        cp.push("EDS", "e1", clas)
        cp.push("LDS", "l1", [listener])
        first = timed("RDS", "r1", [routes("a")])
        print(f"initial load of {args.clusters} clusters x {args.endpoints} endpoints and {args.clusters} virtual hosts: "
              f"both ACKed RDS r1 {time.monotonic() - t0:.2f} s after the first push")
        eds, rds = [], []
        for r in range(args.rounds):
            _, shifted, _, _ = resources(args.clusters, args.endpoints, port, shift=r + 1)
            eds.append(timed("EDS", f"e{r + 2}", shifted))
            rds.append(timed("RDS", f"r{r + 2}", [routes(f"t{r}")]))
        def med(xs, who): return statistics.median(x[who] for x in xs) * 1000
        for name, xs in [(f"EDS update (all {args.clusters} assignments resent, one cluster's endpoints moved)", eds),
                         (f"RDS update ({args.clusters} virtual hosts)", rds)]:
            w, e = med(xs, "weir"), med(xs, "envoy")
            print(f"{name}, median of {args.rounds}: weir {w:.0f} ms, envoy {e:.0f} ms to ACK (weir/envoy {w / e:.2f}x)")
        acks = [l[l.index("xds: ACK"):] for l in open(f"{work}/weir.log").read().splitlines() if "xds: ACK" in l]
        print("weir's own account of its last updates:\n  " + "\n  ".join(acks[-4:]))
        print(f"first load: weir {first['weir'] * 1000:.0f} ms, envoy {first['envoy'] * 1000:.0f} ms from the RDS push to its ACK")
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try: p.wait(timeout=5)
            except subprocess.TimeoutExpired: p.kill(); p.wait()
        cp.stop()


if __name__ == "__main__":
    main()
