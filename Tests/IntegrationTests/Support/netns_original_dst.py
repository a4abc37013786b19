#!/usr/bin/env python3
"""The original-destination test's world, in a network namespace it makes and removes: an
iptables REDIRECT (as Istio's init container sets up) sends connections for 127.0.0.2:7000-7100
to Weir's virtual listener on 127.0.0.1:15001, except those from 127.0.0.6 (Weir's upstream
source address, as Istio's inbound clusters bind it). Inside, it starts an HTTP upstream, an
echo server on 127.0.0.2:7050 that records who connected, and the real weir binary, then runs the
clients and prints one JSON line of what they saw.

Usage: netns_original_dst.py COMMAND_JSON [weir run arguments...]
COMMAND_JSON: how to start weir, as a JSON list (["/path/to/weir"], or a launcher before it).
Exit 77 (skip) when this machine cannot make a namespace or a NAT rule (no root, no iptables).
"""
import json, os, socket, subprocess, sys, tempfile, threading, time

NS = f"weir-od-{os.getpid()}"

def sh(*args, check=True):
    return subprocess.run(list(args), check=check, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=20)

def outer():
    try:
        sh("ip", "netns", "add", NS)
    except Exception as e:
        print(json.dumps({"skip": f"cannot make a network namespace: {e}"})); sys.exit(77)
    try:
        sh("ip", "netns", "exec", NS, "ip", "link", "set", "lo", "up")
        try:
            sh("ip", "netns", "exec", NS, "iptables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-d", "127.0.0.2",
               "--dport", "7000:7100", "!", "-s", "127.0.0.6", "-j", "REDIRECT", "--to-ports", "15001")
        except Exception as e:
            print(json.dumps({"skip": f"cannot add a NAT redirect: {e}"})); sys.exit(77)
        r = subprocess.run(["ip", "netns", "exec", NS, sys.executable, os.path.abspath(__file__), "--inner"] + sys.argv[1:],
                           timeout=90)
        sys.exit(r.returncode)
    finally:
        subprocess.run(["ip", "netns", "del", NS], timeout=20)

CONFIG = """
shards: 2
listeners:
  - name: virtualOutbound
    address: 127.0.0.1:15001
    use_original_destination: true
    chains:
      - name: blackhole
        match: {{ destination_port: 15001 }}
        cluster: svc_tcp
    default_chain:
      cluster: passthrough
  - name: noBlackhole
    address: 127.0.0.1:15002
    use_original_destination: true
    cluster: passthrough
  - name: svc_7001
    address: 127.0.0.2:7001
    bind_to_port: false
    inspect_timeout: 5s
    chains:
      - name: http
        match: {{ transport_protocol: raw_buffer, application_protocols: [http/1.1, http/1.0] }}
        protocol: http
        routes: [{{ cluster: svc }}]
    default_chain:
      cluster: svc_tcp
clusters:
  - name: passthrough
    original_destination: true
    source_address: 127.0.0.6
    connect_timeout: 2s
  - name: svc
    endpoints: [{{ address: "127.0.0.1:{http}" }}]
  - name: svc_tcp
    endpoints: [{{ address: "127.0.0.1:{echo_local}" }}]
"""

def serve_http(sock):
    while True:
        c, _ = sock.accept()
        threading.Thread(target=http_conn, args=(c,), daemon=True).start()

def http_conn(c):
    c.settimeout(10)
    data = b""
    try:
        while True:
            while b"\r\n\r\n" not in data:
                d = c.recv(65536)
                if not d: return
                data += d
            _, data = data.split(b"\r\n\r\n", 1)
            body = b"svc"
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n" + body)
    except OSError:
        pass
    finally:
        c.close()

peers = []

def serve_echo(sock, name):
    while True:
        c, peer = sock.accept()
        peers.append((name, peer[0]))
        threading.Thread(target=echo_conn, args=(c, name), daemon=True).start()

def echo_conn(c, name):
    c.settimeout(10)
    try:
        c.sendall(name.encode() + b":")
        while True:
            d = c.recv(65536)
            if not d: break
            c.sendall(d)
    except OSError:
        pass
    finally:
        c.close()

def listen(addr):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(addr)
    s.listen(64)
    return s

def exchange(addr, payload, expect_len, timeout=5):
    s = socket.create_connection(addr, timeout=timeout)
    s.sendall(payload)
    got = b""
    try:
        while len(got) < expect_len:
            d = s.recv(65536)
            if not d: break
            got += d
    except OSError:
        pass
    s.close()
    return got

def closed_without_answer(addr, payload, timeout=5):
    s = socket.create_connection(addr, timeout=timeout)
    try:
        s.sendall(payload)
        return s.recv(100) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False
    finally:
        s.close()

def inner(command, args):
    h = listen(("127.0.0.1", 0)); threading.Thread(target=serve_http, args=(h,), daemon=True).start()
    e = listen(("127.0.0.2", 7050)); threading.Thread(target=serve_echo, args=(e, "direct"), daemon=True).start()
    el = listen(("127.0.0.1", 0)); threading.Thread(target=serve_echo, args=(el, "svc_tcp"), daemon=True).start()
    d = tempfile.mkdtemp(prefix="weir-od-")
    path = os.path.join(d, "weir.yaml")
    with open(path, "w") as f:
        f.write(CONFIG.format(http=h.getsockname()[1], echo_local=el.getsockname()[1]))
    log = open(os.path.join(d, "weir.log"), "w+")
    p = subprocess.Popen(json.loads(command) + ["run", "--config", path] + args, stdout=log, stderr=subprocess.STDOUT)
    out = {}
    try:
        deadline = time.time() + 15
        while time.time() < deadline:
            log.seek(0)
            if "running generation" in log.read(): break
            if p.poll() is not None: break
            time.sleep(0.05)
        # 1: redirected to the virtual listener, handed to svc_7001, HTTP chain by the inspector.
        r = exchange(("127.0.0.2", 7001), b"GET /x HTTP/1.1\r\nHost: svc\r\n\r\n", 41)
        out["http"] = r.decode("latin-1")
        # 2: the same listener, not HTTP: its default chain (tcp to svc_tcp).
        out["tcp"] = exchange(("127.0.0.2", 7001), b"\x00\x01ping", len("svc_tcp:") + 6).decode("latin-1")
        # 3: no listener for 127.0.0.2:7050: the virtual listener's default chain passes it
        # through to where the client was going, from 127.0.0.6.
        out["passthrough"] = exchange(("127.0.0.2", 7050), b"hello", len("direct:") + 5).decode("latin-1")
        out["passthrough_peers"] = [a for n, a in peers if n == "direct"]
        # 4: straight to the virtual listener's port: the blackhole chain (destination_port 15001).
        out["blackhole"] = exchange(("127.0.0.1", 15001), b"x", len("svc_tcp:") + 1).decode("latin-1")
        # 5: straight to a virtual listener without one: its original destination is itself,
        # so passing it through would loop; it is closed.
        out["loop_closed"] = closed_without_answer(("127.0.0.1", 15002), b"x")
    finally:
        p.terminate()
        try: p.wait(timeout=20)
        except subprocess.TimeoutExpired: p.kill(); p.wait()
        log.seek(0)
        out["exit"] = p.returncode
        out["log_tail"] = log.read()[-3000:]
    print(json.dumps(out))

if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--inner":
        inner(sys.argv[2], sys.argv[3:])
    else:
        outer()
