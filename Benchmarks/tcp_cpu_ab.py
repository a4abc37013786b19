#!/usr/bin/env python3
"""CPU per GB of two weir binaries at a fixed TCP rate: iperf3 -b RATE through each in turn
(alternating order), utime+stime of each weir from /proc. At a fixed rate CPU per GB is far
steadier on this shared machine than unbounded throughput.

Usage: Benchmarks/tcp_cpu_ab.py BASELINE_WEIR [ROUNDS=6] [RATE=8G]   (the new binary is
.build/release/weir)
"""
import json, os, signal, subprocess, sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tcp_throughput import ROOT, free_port, start  # noqa: E402


def cpu(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main():
    baseline = sys.argv[1]
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 6
    rate = sys.argv[3] if len(sys.argv) > 3 else "8G"
    log = open(os.devnull, "w")
    up = free_port()
    procs = {"iperf3": start(["iperf3", "-s", "-p", str(up)], up, log)}
    ports = {}
    try:
        for name, binary in [("weir", os.path.join(ROOT, ".build", "release", "weir")), ("weir-base", baseline)]:
            port = free_port()
            cfg = f"/tmp/tcp-cpu-ab-{os.getpid()}-{name}.yaml"
            with open(cfg, "w") as f:
                f.write(f"shards: 2\nlisteners:\n  - {{ name: b, address: \"127.0.0.1:{port}\", protocol: tcp, cluster: up }}\n"
                        f"clusters:\n  - name: up\n    endpoints:\n      - {{ address: \"127.0.0.1:{up}\" }}\n")
            procs[name] = start([binary, "run", "--config", cfg, "--log-level", "warning"], port, log)
            ports[name] = port
        res = {n: [] for n in ports}
        for r in range(rounds):
            for name in (list(ports) if r % 2 == 0 else list(reversed(list(ports)))):
                before = cpu(procs[name].pid)
                out = subprocess.run(["iperf3", "-c", "127.0.0.1", "-p", str(ports[name]), "-t", "4", "-b", rate, "-J"],
                                     capture_output=True, text=True, timeout=60).stdout
                gb = json.loads(out)["end"]["sum_received"]["bytes"] / 1e9
                res[name].append((cpu(procs[name].pid) - before) / gb)
        med = {n: sorted(v)[len(v) // 2] for n, v in res.items()}
        for n, v in res.items():
            print(f"{n:<10} CPU s/GB median {med[n]:.3f}  all {', '.join(f'{x:.3f}' for x in sorted(v))}")
        print(f"weir / weir-base CPU per GB at {rate}: {med['weir'] / med['weir-base']:.2f}x (target <= 1.0)")
    finally:
        for p in procs.values():
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(timeout=10)


if __name__ == "__main__":
    main()
