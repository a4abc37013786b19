#!/usr/bin/env python3
"""Hostile HTTP/2 traffic for a soak run: `h2_hostile.py PORT SECONDS [SEED] [--tls]` runs many
short connections against 127.0.0.1:PORT, each doing one hostile thing with frames written by
hand: a preface cut short, garbage after it, random frames and flags on random streams, bodies
cut off by RST or FIN, window updates that overflow, header blocks with forbidden fields
(connection headers, uppercase names, CR/LF in values, a second :path, TE other than trailers,
content-length that disagrees with the DATA), requests abandoned mid-flight. Between them it
checks that a normal request is still answered. Prints `served N/M hostile K` and exits 1 when
a normal request failed.
"""
import os, random, socket, ssl, struct, sys, time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Tests", "IntegrationTests", "Support"))
from h2_attacks import frame, hstr, hint, request_block, DATA, HEADERS, RST, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION  # noqa: E402

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
END_STREAM, END_HEADERS = 1, 4


def connect(port, tls):
    s = socket.create_connection(("127.0.0.1", port), timeout=3)
    if tls:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.set_alpn_protocols(["h2"])
        s = ctx.wrap_socket(s, server_hostname="a.example.com")
    return s


def lit(name, value):
    return b"\x00" + hstr(name) + hstr(value)


def post_block(path=b"/echo", extra=b""):
    return bytes([0x83, 0x86]) + hint(4, 4) + hstr(path) + hint(1, 4) + hstr(b"weir.test") + extra


def hostile(port, tls, rng):
    s = connect(port, tls)
    kind = rng.randrange(14)
    try:
        if kind == 0:
            s.sendall(PREFACE[:rng.randrange(1, len(PREFACE))])
        elif kind == 1:
            s.sendall(PREFACE + os.urandom(rng.randrange(1, 4000)))
        elif kind == 2:
            out = PREFACE + frame(SETTINGS, 0, 0)
            for _ in range(rng.randrange(1, 40)):
                t = rng.randrange(0, 12)
                payload = os.urandom(rng.randrange(0, 64))
                out += frame(t, rng.randrange(256), rng.choice([0, 1, 3, 5, 2 ** 31 - 1, rng.randrange(2 ** 31)]), payload)
            s.sendall(out)
        elif kind == 3:
            # A body cut off by RST_STREAM or by closing the socket.
            out = PREFACE + frame(SETTINGS, 0, 0) + frame(HEADERS, END_HEADERS, 1, post_block())
            out += frame(DATA, 0, 1, os.urandom(rng.randrange(1, 30000)))
            if rng.random() < 0.5:
                out += frame(RST, 0, 1, struct.pack(">I", 8))
            s.sendall(out)
        elif kind == 4:
            # WINDOW_UPDATE past 2^31-1, on the connection and on a stream.
            s.sendall(PREFACE + frame(SETTINGS, 0, 0) + frame(HEADERS, END_HEADERS | END_STREAM, 1, request_block(b"/big?n=200000"))
                      + frame(WINDOW_UPDATE, 0, rng.choice([0, 1]), struct.pack(">I", 0x7FFFFFFF)) * 2)
        elif kind == 5:
            bad = rng.choice([lit(b"connection", b"close"), lit(b"Upper", b"x"), lit(b"x-a", b"a\r\nb: c"), hint(4, 4) + hstr(b"/second"),
                              lit(b"te", b"gzip"), lit(b"transfer-encoding", b"chunked"), lit(b"host", b"a b"), lit(b"x", b"\x00"),
                              lit(b":unknown", b"x"), lit(b"keep-alive", b"1"), lit(b"", b"empty")])
            s.sendall(PREFACE + frame(SETTINGS, 0, 0) + frame(HEADERS, END_HEADERS | END_STREAM, 1, request_block() + bad))
        elif kind == 6:
            # content-length that the DATA contradicts (more, or fewer).
            n = rng.randrange(1, 100)
            s.sendall(PREFACE + frame(SETTINGS, 0, 0) + frame(HEADERS, END_HEADERS, 1, post_block(extra=lit(b"content-length", str(n).encode())))
                      + frame(DATA, END_STREAM, 1, b"x" * (n + rng.choice([-1, 1, 50]))))
        elif kind == 7:
            # Many requests, then gone before the answers.
            out = PREFACE + frame(SETTINGS, 0, 0)
            for i in range(rng.randrange(1, 60)):
                out += frame(HEADERS, END_HEADERS | END_STREAM, 2 * i + 1, request_block(rng.choice([b"/hello", b"/slow?ms=50", b"/chunked?n=100000", b"/big?n=300000"])))
            s.sendall(out)
        elif kind == 8:
            # :method CONNECT, an absolute-form :path, a path with a space, no :path at all.
            block = rng.choice([
                hint(2, 4) + hstr(b"CONNECT") + hint(1, 4) + hstr(b"example.com:443"),
                bytes([0x82, 0x86]) + hint(4, 4) + hstr(b"http://internal/admin") + hint(1, 4) + hstr(b"x"),
                bytes([0x82, 0x86]) + hint(4, 4) + hstr(b"/a b") + hint(1, 4) + hstr(b"x"),
                bytes([0x82, 0x86]) + hint(1, 4) + hstr(b"x"),
                bytes([0x82, 0x86]) + hint(4, 4) + hstr(b"/x") + hint(1, 4) + hstr(b"a/b@c"),
            ])
            s.sendall(PREFACE + frame(SETTINGS, 0, 0) + frame(HEADERS, END_HEADERS | END_STREAM, 1, block))
        elif kind == 9:
            # Header block cut in the middle of a CONTINUATION sequence, then a DATA frame.
            s.sendall(PREFACE + frame(SETTINGS, 0, 0) + frame(HEADERS, 0, 1, request_block()) + frame(CONTINUATION, 0, 1, lit(b"x", b"y"))
                      + frame(DATA, 0, 1, b"zz"))
        elif kind == 10:
            # Request trailers (chunked upstream), some with forbidden fields.
            s.sendall(PREFACE + frame(SETTINGS, 0, 0) + frame(HEADERS, END_HEADERS, 1, post_block())
                      + frame(DATA, 0, 1, b"abc") + frame(HEADERS, END_HEADERS | END_STREAM, 1, lit(b"x-trailer", b"1") + rng.choice([b"", lit(b":path", b"/x")])))
        elif kind == 11:
            # Zero window, then read a little and go.
            s.sendall(PREFACE + frame(SETTINGS, 0, 0, struct.pack(">HI", 4, 0)) + frame(HEADERS, END_HEADERS | END_STREAM, 1, request_block(b"/big?n=100000")))
        elif kind == 12:
            # GOAWAY from the client with streams open, then more frames.
            s.sendall(PREFACE + frame(SETTINGS, 0, 0) + frame(HEADERS, END_HEADERS | END_STREAM, 1, request_block(b"/slow?ms=30"))
                      + frame(GOAWAY, 0, 0, struct.pack(">II", 0, 0)) + frame(HEADERS, END_HEADERS | END_STREAM, 3, request_block()))
        else:
            # PINGs and SETTINGS with odd values.
            s.sendall(PREFACE + frame(SETTINGS, 0, 0, struct.pack(">HI", 5, rng.choice([0, 1, 16383, 16777216]))
                                      + struct.pack(">HI", 3, rng.choice([0, 1, 2 ** 31]))) + frame(PING, 0, 0, b"x" * rng.choice([7, 8, 9])))
        if rng.random() < 0.6:
            s.settimeout(0.3)
            try:
                s.recv(65536)
            except OSError:
                pass
    except OSError:
        pass
    finally:
        try:
            if rng.random() < 0.3:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST
            s.close()
        except OSError:
            pass
    return kind


def normal(port, tls):
    try:
        s = connect(port, tls)
        s.sendall(PREFACE + frame(SETTINGS, 0, 0) + frame(HEADERS, END_HEADERS | END_STREAM, 1, request_block()))
        buf, deadline, i = b"", time.time() + 5, 0
        while time.time() < deadline:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
            # A DATA frame on stream 1 with END_STREAM carrying the upstream's answer.
            while i + 9 <= len(buf):
                length = int.from_bytes(buf[i:i + 3], "big")
                t, flags, sid = buf[i + 3], buf[i + 4], int.from_bytes(buf[i + 5:i + 9], "big")
                if i + 9 + length > len(buf):
                    break
                if sid == 1 and t in (DATA, HEADERS) and flags & END_STREAM:
                    s.close()
                    return True
                if t == SETTINGS and not flags & 1:
                    s.sendall(frame(SETTINGS, 1, 0))
                i += 9 + length
        s.close()
    except OSError:
        pass
    return False


def main():
    port, seconds = int(sys.argv[1]), float(sys.argv[2])
    seed = int(sys.argv[3]) if len(sys.argv) > 3 and sys.argv[3].isdigit() else 1
    tls = "--tls" in sys.argv
    rng = random.Random(seed)
    end = time.time() + seconds
    served = tried = hostiles = 0
    while time.time() < end:
        for _ in range(20):
            hostile(port, tls, rng)
            hostiles += 1
        tried += 1
        served += normal(port, tls)
    print(f"served {served}/{tried} hostile {hostiles}")
    sys.exit(0 if served == tried else 1)


if __name__ == "__main__":
    main()
