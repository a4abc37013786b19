#!/usr/bin/env python3
"""Chaos for the HTTP data path: an upstream that misbehaves on request and clients that check
every answer is their own. Each request carries X-Id (unique) and X-Chaos (what the upstream
does with it); the upstream puts the id in every body it sends, so a response that reaches the
wrong client, or a request smuggled or replayed into another, shows.

  chaos.py upstream                     serve on 127.0.0.1:0, print "port N", until stdin closes
  chaos.py client PORT SEED SECONDS [CLIENTS [CA]]
                                        run clients against PORT (Weir), print one JSON summary;
                                        exit 1 if any answer was wrong; with CA, over TLS
                                        (server name a.example.com, verified against CA)

Upstream actions (X-Chaos):
  ok        200, Content-Length        chunked  200, chunked, with a trailer
  close     200, Connection: close, head and body in one write, then close
  early     103 Early Hints, then 200  slow     200 after 30 ms
  big       200, 200 KB (the id repeated)
  echo      200, the request body back (POST, Content-Length or chunked request body)
  reset     close without answering (before any response byte)
  cut       a head promising 1,000 bytes, 10 of them, then close
Idle keep-alive connections are closed after 25 ms, as nginx's keepalive_timeout does, so
pooled connections race their upstream's close.
"""
import json, os, random, socket, socketserver, sys, threading, time

ACTIONS = ["ok", "ok", "ok", "chunked", "close", "early", "slow", "big", "echo", "echo", "reset", "cut"]


# ---------------------------------------------------------------- upstream

def more(s, buf):
    """buf with what the socket has next; raises EOFError when the peer has closed."""
    d = s.recv(65536)
    if not d:
        raise EOFError
    return buf + d


class Upstream(socketserver.BaseRequestHandler):
    def handle(self):
        s = self.request
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = b""
        while True:
            while b"\r\n\r\n" not in buf:
                s.settimeout(0.025)
                try:
                    d = s.recv(65536)
                except OSError:
                    return  # idle too long (or reset): close, as nginx does
                if not d:
                    return
                buf += d
            head, buf = buf.split(b"\r\n\r\n", 1)
            lines = head.split(b"\r\n")
            fields = {}
            for line in lines[1:]:
                k, _, v = line.partition(b":")
                fields[k.strip().lower()] = v.strip()
            rid = fields.get(b"x-id", b"?")
            action = fields.get(b"x-chaos", b"ok").decode()
            s.settimeout(5)
            body = b""
            try:
                if b"content-length" in fields:
                    n = int(fields[b"content-length"])
                    while len(buf) < n:
                        buf = more(s, buf)
                    body, buf = buf[:n], buf[n:]
                elif fields.get(b"transfer-encoding", b"").lower() == b"chunked":
                    while True:
                        while b"\r\n" not in buf:
                            buf = more(s, buf)
                        line, buf = buf.split(b"\r\n", 1)
                        size = int(line.split(b";")[0], 16)
                        if size == 0:
                            while b"\r\n\r\n" not in b"\r\n" + buf:
                                buf = more(s, buf)
                            _, buf = (b"\r\n" + buf).split(b"\r\n\r\n", 1)
                            break
                        while len(buf) < size + 2:
                            buf = more(s, buf)
                        body += buf[:size]
                        buf = buf[size + 2:]
                if not self.answer(s, action, rid, body):
                    return
            except (OSError, EOFError, ValueError):
                return  # the peer left (or sent what no request is): this connection is done

    @staticmethod
    def answer(s, action, rid, body):
        tag = b"id=" + rid + b";"
        if action == "reset":
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            return False
        if action == "cut":
            s.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + tag[:10].ljust(10, b"."))
            return False
        if action == "slow":
            time.sleep(0.03)
        if action == "echo":
            out = tag + body
        elif action == "big":
            out = tag * (200_000 // len(tag))
        else:
            out = tag
        if action == "chunked":
            s.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\nX-T: 1\r\n\r\n" % (len(out), out))
            return True
        early = b"HTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\n" if action == "early" else b""
        close = b"Connection: close\r\n" if action == "close" else b""
        s.sendall(early + b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(out), close, out))
        return action != "close"


class Server(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 512


def upstream():
    server = Server(("127.0.0.1", 0), Upstream)
    print("port", server.server_address[1], flush=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    sys.stdin.read()


# ---------------------------------------------------------------- clients

class Wrong(Exception):
    pass


def read_response(f, method):
    """(status, headers, body) of the next final response, or None when the connection ended."""
    while True:
        line = f.readline()
        if not line:
            return None
        parts = line.split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
            raise Wrong(f"bad status line {line!r}")
        status = int(parts[1])
        fields = {}
        while True:
            h = f.readline()
            if not h:
                return None
            if h in (b"\r\n", b"\n"):
                break
            k, _, v = h.partition(b":")
            fields[k.strip().lower()] = v.strip()
        if 100 <= status < 200:
            continue
        body = b""
        if method == "HEAD" or status in (204, 304):
            pass
        elif fields.get(b"transfer-encoding", b"").lower() == b"chunked":
            while True:
                size_line = f.readline()
                if not size_line:
                    return None
                size = int(size_line.split(b";")[0], 16)
                if size == 0:
                    while f.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunk = f.read(size + 2)
                if len(chunk) < size + 2:
                    return None
                body += chunk[:size]
        elif b"content-length" in fields:
            n = int(fields[b"content-length"])
            body = f.read(n)
            if len(body) < n:
                return None
        else:
            body = f.read()
        return status, fields, body


def client(port, rng, deadline, stats, lock, tls):
    seq = 0
    while time.time() < deadline:
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            if tls:
                s = tls.wrap_socket(s, server_hostname="a.example.com")
        except OSError:
            with lock:
                stats["connect_failed"] += 1
            continue
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        f = s.makefile("rb")
        alive = True
        for _ in range(rng.randint(1, 12)):
            if not alive or time.time() >= deadline:
                break
            batch = []
            for _ in range(rng.choice([1, 1, 1, 2, 3])):  # sometimes pipelined
                seq += 1
                rid = f"{threading.get_ident()}-{seq}"
                action = rng.choice(ACTIONS)
                method = "POST" if action == "echo" else "GET"
                payload = (rid * rng.randint(1, 400)).encode()
                if method == "POST" and rng.random() < 0.5:
                    body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(payload), payload)
                    framing = b"Transfer-Encoding: chunked\r\n"
                else:
                    body = payload if method == "POST" else b""
                    framing = b"Content-Length: %d\r\n" % len(body) if method == "POST" else b""
                req = (b"%s /c/%s HTTP/1.1\r\nHost: chaos\r\nX-Id: %s\r\nX-Chaos: %s\r\n%s\r\n%s"
                       % (method.encode(), rid.encode(), rid.encode(), action.encode(), framing, body))
                batch.append((rid, action, method, payload, req))
            if rng.random() < 0.03:
                # A client that leaves mid-request.
                s.sendall(batch[0][4][: rng.randint(1, len(batch[0][4]))])
                with lock:
                    stats["abandoned"] += 1
                alive = False
                break
            s.sendall(b"".join(b[4] for b in batch))
            # Weir may end a connection after a cut body without saying so; anything else it
            # ends says Connection: close.
            may_close = False
            for rid, action, method, payload, _ in batch:
                r = read_response(f, method)
                if r is None:
                    if action not in ("cut", "reset") and not may_close:
                        raise Wrong(f"connection closed on {action} {rid}")
                    with lock:
                        stats["closed_after_" + action] += 1
                    alive = False
                    break
                status, fields, body = r
                with lock:
                    stats[f"{action}:{status}"] += 1
                if action == "cut":
                    may_close = True
                if action in ("reset", "cut"):
                    if status not in (502, 503):
                        raise Wrong(f"{action} {rid} answered {status} {body[:60]!r}")
                    continue
                if status == 502 and method == "POST":
                    # A POST that met a pooled connection as its upstream closed it is not sent
                    # again (the upstream may have applied it): 502, the client's to retry. When
                    # its body did not go out whole the connection ends, and the 502 says so (a
                    # close it did not announce fails the read of the next answer).
                    if fields.get(b"connection", b"").lower() == b"close":
                        alive = False
                        break
                    continue
                if status != 200:
                    raise Wrong(f"{action} {rid} answered {status} {body[:80]!r}")
                tag = b"id=" + rid.encode() + b";"
                if not body.startswith(tag):
                    raise Wrong(f"{action} {rid} got someone else's body {body[:80]!r}")
                if action == "echo" and body != tag + payload:
                    raise Wrong(f"echo {rid}: body differs ({len(body)} bytes, sent {len(payload)})")
                if action == "big" and body != tag * (200_000 // len(tag)):
                    raise Wrong(f"big {rid}: body differs ({len(body)} bytes)")
                if fields.get(b"connection", b"").lower() == b"close":
                    alive = False
                    break
        if rng.random() < 0.2:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()


def clients(port, seed, seconds, count, ca=None):
    tls = None
    if ca:
        import ssl
        tls = ssl.create_default_context(cafile=ca)
    import collections
    stats, lock, errors = collections.Counter(), threading.Lock(), []
    deadline = time.time() + seconds

    def run(i):
        try:
            client(port, random.Random(seed * 1000 + i), deadline, stats, lock, tls)
        except Wrong as e:
            errors.append(str(e))
        except Exception as e:  # a timeout or reset where none belongs
            errors.append(f"{type(e).__name__}: {e}")

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    print(json.dumps({"errors": errors, "stats": dict(sorted(stats.items()))}))
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    if sys.argv[1] == "upstream":
        upstream()
    else:
        clients(int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]) if len(sys.argv) > 5 else 8,
                sys.argv[6] if len(sys.argv) > 6 else None)
