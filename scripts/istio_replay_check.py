#!/usr/bin/env python3
"""Replays a captured Istio folder (../shared/istio/*) into a real weir over ADS and reports what
was applied and what was refused, with the reasons grouped. Everything runs on 127.0.0.1: the
capture's addresses are rewritten to loopback (scripts/istio_replay.py), listeners to ports from
LISTENER_BASE up, endpoints to one local HTTP upstream. The workload certificate and root CA a
sidecar gets from pilot-agent ("default" and "ROOTCA", asked for over ADS here) come from a test
CA (Tests/IntegrationTests/Support/make_certs.sh), so mTLS clusters and chains become active.
Usage: istio_replay_check.py DIR [WEIR_BINARY] [LISTENER_BASE]
Needs the test venv (./scripts/setup-debian.sh --tests).
"""
import collections, json, os, re, subprocess, sys, tempfile, time, urllib.request

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
folder = sys.argv[1]
weir = sys.argv[2] if len(sys.argv) > 2 else os.path.join(root, ".build/release/weir")
base = int(sys.argv[3]) if len(sys.argv) > 3 else 20000
py = os.path.join(root, ".build/venv-test/bin/python3")
support = os.path.join(root, "Tests/IntegrationTests/Support")

up = subprocess.Popen([sys.executable, f"{support}/http_upstream.py", "up"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
up_port = int(up.stdout.readline().split()[-1])
commands = subprocess.run([py, f"{root}/scripts/istio_replay.py", folder, str(up_port), str(base)], check=True,
                          capture_output=True, text=True).stdout
cp = subprocess.Popen([py, f"{support}/xds_server.py"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                      env=dict(os.environ, XDS_IMPORT_ALL="1"))
cp_port = int(cp.stdout.readline().split()[-1])
d = tempfile.mkdtemp(prefix="weir-replay-")
subprocess.run(["bash", f"{support}/make_certs.sh", f"{d}/certs"], check=True)
def pem(name): return open(f"{d}/certs/{name}").read()
commands += json.dumps({"type": "SDS", "version": "s1", "resources": [
    {"name": "default", "tls_certificate": {"certificate_chain": {"inline_string": pem("weir-side.pem")}, "private_key": {"inline_string": pem("weir-side.key")}}},
    {"name": "ROOTCA", "validation_context": {"trusted_ca": {"inline_string": pem("ca.pem")}}}]}) + "\n"
cfg = os.path.join(d, "weir.yaml")
open(cfg, "w").write(f"""
admin: {{ address: 127.0.0.1:0 }}
node: {{ id: "sidecar~127.0.0.1~replay.default~default.svc.cluster.local", cluster: replay.default }}
xds: {{ address: "127.0.0.1:{cp_port}", initial_fetch_timeout: 10s }}
""")
log = open(os.path.join(d, "weir.log"), "w+")
w = subprocess.Popen([weir, "run", "--config", cfg], stdout=log, stderr=subprocess.STDOUT)
try:
    cp.stdin.write(commands); cp.stdin.flush()
    requests = collections.defaultdict(list)
    time.sleep(0)
    deadline = time.time() + 40
    import selectors
    sel = selectors.DefaultSelector(); sel.register(cp.stdout, selectors.EVENT_READ)
    while time.time() < deadline:
        if not sel.select(timeout=1):
            if all(requests[t] for t in ("CDS", "LDS", "RDS")) and time.time() > deadline - 30: break
            continue
        line = cp.stdout.readline()
        if line.startswith("REQ "):
            t = line.split()[1]
            requests[t].append(line)
    log.seek(0); text = log.read()
    m = re.search(r"admin API on http://([0-9.:]+)/", text)
    dump = json.loads(urllib.request.urlopen(f"http://{m.group(1)}/config_dump", timeout=5).read()) if m else {}
    x = dump.get("xds", dump)
    states = collections.Counter((r["type"], r["state"]) for r in x.get("resources", []))
    print("applied:", dict(sorted(states.items())))
    refused = collections.defaultdict(collections.Counter)
    for r in x.get("refused", []):
        refused[r["type"]][re.sub(r"'[^']*'", "'X'", re.sub(r"[0-9]+(\.[0-9]+){3}:[0-9]+", "ADDR", r["error"]))[:200]] += 1
    for t, reasons in refused.items():
        print(f"{t}: {sum(reasons.values())} refused")
        for why, n in reasons.most_common(12): print(f"  {n:4d} {why}")
    print("ignored:", sorted({i["field"] for i in x.get("ignored", [])}))
finally:
    w.terminate(); w.wait(timeout=30)
    cp.stdin.close(); cp.wait(timeout=10); up.stdin.close(); up.wait(timeout=10)
