#!/usr/bin/env bash
# Heap allocations per proxied TCP connection and per MiB moved, counted (not sampled): run weir
# under an LD_PRELOAD malloc counter twice, with N and 2N connections (and with a small and a
# large transfer), and divide the difference, so start-up and shutdown cancel out.
# Usage: Benchmarks/allocations/run.sh [N, default 2000]   (BALANCER=ring_hash etc. to pick another; IO=epoll for the epoll backend)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
n=${1:-2000}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cc -O2 -shared -fPIC -o "$work/count_malloc.so" "$here/count_malloc.c" -ldl
[ -x "$root/.build/release/weir" ] || (cd "$root" && swift build -c release --product weir >/dev/null)
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
up=$(port)
python3 - "$up" <<'PY' &
import socket, sys, threading
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); l.bind(("127.0.0.1", int(sys.argv[1]))); l.listen(512)
def serve(c):
    while True:
        d = c.recv(65536)
        if not d: break
        c.sendall(d)
    c.close()
while True:
    c, _ = l.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()
PY
echo_pid=$!
trap 'kill $echo_pid 2>/dev/null; rm -rf "$work"' EXIT

measure() { # connections bytes-per-connection
  local w; w=$(port)
  printf 'shards: 2\nlisteners:\n  - { name: a, address: "127.0.0.1:%s", cluster: up }\nclusters:\n  - { name: up, balancer: %s, endpoints: [{ address: "127.0.0.1:%s" }] }\n' "$w" "${BALANCER:-round_robin}" "$up" > "$work/weir.yaml"
  COUNT_MALLOC_OUT="$work/count" LD_PRELOAD="$work/count_malloc.so" "$root/.build/release/weir" run --config "$work/weir.yaml" --log-level error ${IO:+--io "$IO"} &
  local pid=$!
  python3 - "$w" "$1" "$2" <<'PY'
import socket, sys, time
port, count, size = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
for _ in range(100):
    try: socket.create_connection(("127.0.0.1", port)).close(); break
    except OSError: time.sleep(0.05)
payload = b"x" * size
for _ in range(count):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(payload); s.shutdown(socket.SHUT_WR)
    got = 0
    while True:
        d = s.recv(1 << 20)
        if not d: break
        got += len(d)
    assert got == size, (got, size)
    s.close()
PY
  kill -TERM $pid; wait $pid
  awk '{print $2}' "$work/count"
}
# The probe connection the client makes first is the same in both runs.
a=$(measure "$n" 100); b=$(measure $((2 * n)) 100)
c=$(measure 20 1048576); d=$(measure 20 $((16 * 1048576)))
echo "connections: $n -> $a allocations, $((2 * n)) -> $b allocations: $(python3 -c "print(round(($b - $a) / $n, 3))") per connection"
echo "bytes: 20 x 1 MiB -> $c, 20 x 16 MiB -> $d: $(python3 -c "print(round(($d - $c) / (20 * 15), 3))") per MiB echoed"
