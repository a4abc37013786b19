#!/usr/bin/env python3
"""An HTTP/1.1 upstream for Weir's integration tests. Binds 127.0.0.1:0, prints "port N" once
listening, and serves until its stdin closes (so it never outlives the test that started it).
`http_upstream.py NAME [CERT KEY [CLIENT_CA]]`: with a certificate it serves HTTPS.

Paths:
  /stats              connections=N requests=M (counted by this server)
  /echo (POST, PUT)   the request body back (Content-Length or chunked request)
  /chunked?n=K        K bytes of a fixed pattern, sent with Transfer-Encoding: chunked
  /big?n=K            K bytes of the pattern with Content-Length
  /status/CODE        that status, body "CODE from NAME"
  /reset              closes the connection without answering
  /fail-on/NAME       503 from the server called NAME, 200 from the others
  /reset-on/NAME      the server called NAME closes without answering, the others say 200
  /slow?ms=N          answers after N ms
  /close              "closing from NAME" with Connection: close, head and body in one write,
                      then closes at once (as nginx does after keepalive_requests)
  /early-close        103 Early Hints, then that /close response, all in one write, then closes
  /ws                 with Upgrade: websocket answers 101, then echoes raw bytes until EOF
  anything else       "NAME PATH" plus the forwarded headers Weir added, one per line
"""
import http.server, os, socketserver, sys, threading, time, urllib.parse

NAME = sys.argv[1]
lock = threading.Lock()
counts = {"connections": 0, "requests": 0}


def pattern(n):
    block = bytes(range(256))
    return (block * (n // 256 + 1))[:n]


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    # IDLE_TIMEOUT_MS: close a keep-alive connection idle that long (as nginx's keepalive_timeout).
    timeout = int(os.environ["IDLE_TIMEOUT_MS"]) / 1000 if os.environ.get("IDLE_TIMEOUT_MS") else None

    def setup(self):
        super().setup()
        with lock:
            counts["connections"] += 1

    def log_message(self, *args):
        pass

    def reply(self, status, body, headers=()):
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def read_body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length", 0))
        return self.rfile.read(n) if n else b""

    def handle_any(self):
        with lock:
            counts["requests"] += 1
        url = urllib.parse.urlparse(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        body = self.read_body() if self.command in ("POST", "PUT", "PATCH") else b""
        if url.path == "/stats":
            with lock:
                text = f"connections={counts['connections']} requests={counts['requests']}"
            return self.reply(200, text.encode())
        if url.path == "/echo":
            return self.reply(200, body, [("X-Upstream", NAME)])
        if url.path == "/chunked":
            data = pattern(int(query.get("n", "1000")))
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("X-Upstream", NAME)
            self.end_headers()
            for i in range(0, len(data), 7001):
                piece = data[i:i + 7001]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\nX-Trailer: yes\r\n\r\n")
            return
        if url.path == "/big":
            return self.reply(200, pattern(int(query.get("n", "1000"))), [("X-Upstream", NAME)])
        if url.path.startswith("/status/"):
            code = int(url.path.split("/")[2])
            return self.reply(code, f"{code} from {NAME}".encode(), [("X-Upstream", NAME)])
        if url.path.startswith("/fail-on/"):
            if url.path.split("/")[2] == NAME:
                return self.reply(503, f"503 from {NAME}".encode(), [("X-Upstream", NAME)])
            return self.reply(200, f"ok from {NAME}".encode(), [("X-Upstream", NAME)])
        if url.path.startswith("/reset-on/") and url.path.split("/")[2] == NAME:
            self.close_connection = True
            self.connection.close()
            return
        if url.path.startswith("/reset-on/"):
            return self.reply(200, f"ok from {NAME}".encode(), [("X-Upstream", NAME)])
        if url.path == "/reset":
            self.close_connection = True
            self.connection.close()
            return
        if url.path in ("/close", "/early-close"):
            body = f"closing from {NAME}".encode()
            early = b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n" if url.path == "/early-close" else b""
            self.wfile.write(early + b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\nX-Upstream: %s\r\n\r\n%s"
                             % (len(body), NAME.encode(), body))
            self.wfile.flush()
            self.close_connection = True
            return
        if url.path == "/slow":
            time.sleep(int(query.get("ms", "1000")) / 1000)
            return self.reply(200, f"slow from {NAME}".encode())
        if url.path == "/ws" and self.headers.get("Upgrade", "").lower() == "websocket":
            self.send_response(101)
            self.send_header("Upgrade", "websocket")
            self.send_header("Connection", "Upgrade")
            self.end_headers()
            self.wfile.flush()
            while True:
                data = self.connection.recv(65536)
                if not data:
                    break
                self.connection.sendall(data)
            self.close_connection = True
            return
        lines = [f"{NAME} {self.path}"]
        for h in ("Host", "X-Forwarded-For", "X-Forwarded-Proto", "X-Request-Id", "X-Added", "X-Secret", "Connection", "X-Forwarded-Client-Cert", "Cookie"):
            if h in self.headers:
                lines.append(f"{h}: {self.headers[h]}")
        self.reply(200, ("\n".join(lines) + "\n").encode(), [("X-Upstream", NAME), ("X-Internal", "1")])

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = handle_any


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # A backlog for proxies that open many connections at once (HTTP/2 streams, each a request).
    request_queue_size = 1024


server = Server(("127.0.0.1", 0), Handler)
if len(sys.argv) >= 4:
    # HTTPS: http_upstream.py NAME CERT KEY [CLIENT_CA] (with CLIENT_CA, client certificates are required).
    import ssl
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(sys.argv[2], sys.argv[3])
    if len(sys.argv) >= 5:
        ctx.load_verify_locations(sys.argv[4])
        ctx.verify_mode = ssl.CERT_REQUIRED
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
print(f"port {server.server_address[1]}", flush=True)
threading.Thread(target=server.serve_forever, daemon=True).start()
sys.stdin.read()
