#!/usr/bin/env bash
# Heap allocations per forwarded HTTP request in steady state, counted (not sampled): run weir
# under the LD_PRELOAD malloc counter twice, with N and 2N keep-alive requests (4 client
# connections, a pooled upstream), and divide the difference, so start-up, the first requests
# (pools filling) and shutdown cancel out.
# Usage: Benchmarks/allocations/http.sh [N, default 20000]   (BALANCER=ring_hash etc.; TARGET= the
# listener's routing, e.g. 'routes: [{ match: { path_regex: "/item.*", headers: [{ name: x-user, prefix: u }] }, cluster: up }]';
# IO=epoll runs weir on its epoll backend; ENDPOINTS= the cluster's endpoint list, $UP standing for the upstream's port)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
n=${1:-20000}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cc -O2 -shared -fPIC -o "$work/count_malloc.so" "$here/count_malloc.c" -ldl
[ -x "$root/.build/release/weir" ] || (cd "$root" && swift build -c release --disable-default-traits --product weir >/dev/null)
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
up=$(port)
# The upstream: a minimal keep-alive HTTP server answering every request with a fixed response.
python3 - "$up" <<'PY' &
import socket, sys, threading
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); l.bind(("127.0.0.1", int(sys.argv[1]))); l.listen(512)
reply = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nContent-Type: text/plain\r\n\r\nhello\n"
def serve(c):
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = b""
    while True:
        d = c.recv(65536)
        if not d: break
        buf += d
        while b"\r\n\r\n" in buf:
            _, buf = buf.split(b"\r\n\r\n", 1)
            c.sendall(reply)
    c.close()
while True:
    c, _ = l.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()
PY
up_pid=$!
trap 'kill $up_pid 2>/dev/null; rm -rf "$work"' EXIT

measure() { # requests
  local w; w=$(port)
  local endpoints='[{ address: "127.0.0.1:$UP" }]'
  endpoints=${ENDPOINTS:-$endpoints}
  endpoints=${endpoints//\$UP/$up}
  printf 'shards: 2\nlisteners:\n  - { name: a, address: "127.0.0.1:%s", protocol: http, %s }\nclusters:\n  - { name: up, balancer: %s, %s endpoints: %s }\n' \
    "$w" "${TARGET:-cluster: up}" "${BALANCER:-round_robin}" "${OPTIONS:-}" "$endpoints" > "$work/weir.yaml"
  COUNT_MALLOC_OUT="$work/count" LD_PRELOAD="$work/count_malloc.so" "$root/.build/release/weir" run --config "$work/weir.yaml" --log-level error ${IO:+--io "$IO"} &
  local pid=$!
  python3 - "$w" "$1" <<'PY'
import socket, sys, time, threading
port, count = int(sys.argv[1]), int(sys.argv[2])
for _ in range(100):
    try: socket.create_connection(("127.0.0.1", port)).close(); break
    except OSError: time.sleep(0.05)
req = b"GET /item?id=42 HTTP/1.1\r\nHost: bench\r\nUser-Agent: alloc-count\r\nX-User: u1\r\n\r\n"
def client(k):
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = b""
    for _ in range(k):
        s.sendall(req)
        while True:
            i = buf.find(b"\r\n\r\n")
            if i >= 0 and len(buf) >= i + 4 + 6:
                assert buf.startswith(b"HTTP/1.1 200"), buf[:40]
                buf = buf[i + 4 + 6:]
                break
            d = s.recv(65536)
            assert d, "closed"
            buf += d
    s.close()
threads = [threading.Thread(target=client, args=(count // 4,)) for _ in range(4)]
for t in threads: t.start()
for t in threads: t.join()
PY
  kill -TERM $pid; wait $pid
  awk '{print $2}' "$work/count"
}
a=$(measure "$n"); b=$(measure $((2 * n)))
echo "requests: $n -> $a allocations, $((2 * n)) -> $b allocations: $(python3 -c "print(round(($b - $a) / $n, 4))") per request"
