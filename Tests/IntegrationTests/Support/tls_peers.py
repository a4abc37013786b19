#!/usr/bin/env python3
"""TLS peers for the SNI passthrough tests.

  tls_peers.py server NAME CERT KEY
      A TLS server on 127.0.0.1:0: prints "port N", then per connection completes the handshake,
      sends "NAME\\n" and echoes every byte until EOF. Exits when its stdin closes.
  tls_peers.py client PORT SNI CA BYTES
      Connects to 127.0.0.1:PORT with server name SNI ("-" for none), verifies the certificate
      against CA (and the name, when given), reads the server's name line, sends BYTES random
      bytes and checks they come back unchanged. Prints "NAME ok", or the failure.
"""
import os, socket, ssl, sys, threading

if sys.argv[1] == "server":
    name, cert, key = sys.argv[2:5]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    print(f"port {listener.getsockname()[1]}", flush=True)

    def serve(raw):
        try:
            with ctx.wrap_socket(raw, server_side=True) as s:
                s.sendall(f"{name}\n".encode())
                while True:
                    data = s.recv(65536)
                    if not data:
                        break
                    s.sendall(data)
        except (OSError, ssl.SSLError):
            pass

    def accept():
        while True:
            c, _ = listener.accept()
            threading.Thread(target=serve, args=(c,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    sys.stdin.read()
else:
    port, sni, ca, count = int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
    ctx = ssl.create_default_context(cafile=ca)
    if sni == "-":
        ctx.check_hostname = False
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname=None if sni == "-" else sni) as s:
                line = b""
                while not line.endswith(b"\n"):
                    d = s.recv(1)
                    if not d:
                        raise OSError("closed before the name line")
                    line += d
                payload = os.urandom(count)
                # One thread per SSL socket (OpenSSL objects are not safe to read and write from
                # two threads): send in pieces, keeping at most 256 KiB unanswered.
                got = b""
                sent = 0
                while sent < count or len(got) < count:
                    if sent < count:
                        s.sendall(payload[sent:sent + 65536])
                        sent = min(count, sent + 65536)
                    while len(got) < (count if sent == count else sent - 262144):
                        d = s.recv(65536)
                        if not d:
                            raise OSError(f"closed after {len(got)} of {count} bytes came back")
                        got += d
                first = next((i for i in range(min(len(got), len(payload))) if got[i] != payload[i]), None)
                print(f"{line.decode().strip()} {'ok' if got == payload else f'mismatch: got {len(got)} of {len(payload)}, first difference at {first}'}")
    except Exception as e:
        print(f"failed: {type(e).__name__}: {e}")
