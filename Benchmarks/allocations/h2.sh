#!/usr/bin/env bash
# Heap allocations per forwarded HTTP/2 request (h2c, h2load: 4 connections, 8 streams each, to a
# pooled HTTP/1.1 upstream) in steady state, counted as Benchmarks/allocations/http.sh counts
# HTTP/1.1's: weir under the LD_PRELOAD malloc counter with N and 2N requests, the difference
# divided by N.
# Usage: Benchmarks/allocations/h2.sh [N, default 20000]   (BALANCER=ring_hash etc.; TARGET= the
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
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$w) 2>/dev/null && break; sleep 0.05; done
  h2load -n "$1" -c 4 -m 8 "http://127.0.0.1:$w/item?id=42" | grep -q "$1 succeeded" || { echo "h2load failed" >&2; exit 1; }
  kill -TERM $pid; wait $pid
  awk '{print $2}' "$work/count"
}
a=$(measure "$n"); b=$(measure $((2 * n)))
echo "requests: $n -> $a allocations, $((2 * n)) -> $b allocations: $(python3 -c "print(round(($b - $a) / $n, 4))") per request"
