#!/usr/bin/env bash
# Generates Sources/WeirXDSProtos from Envoy's v3 xDS protos. Run once when the proto set changes;
# the output is committed (never edited by hand), so builds and CI need none of these tools.
#   1. a venv with xds-protos (PyPI), whose modules carry Envoy's serialized descriptors;
#   2. scripts/xds_descriptors.py writes the import closure as a FileDescriptorSet, minus the
#      files imported only for options;
#   3. protoc (Debian's protobuf-compiler) runs protoc-gen-swift (swift-protobuf 1.39.0) and
#      protoc-gen-grpc-swift-2 (grpc-swift-protobuf 2.4.1), both built from the package copies.
# Usage: scripts/generate-xds.sh [tools directory, default ../tools beside the checkout]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
tools=${1:-$(cd "$root/.." && pwd)/tools}
out="$root/Sources/WeirXDSProtos"
mkdir -p "$tools"
command -v protoc >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq protobuf-compiler >/dev/null; }
if [ ! -x "$tools/venv-xds/bin/python3" ] || ! "$tools/venv-xds/bin/python3" -c "import envoy.config.cluster.v3.cluster_pb2" 2>/dev/null; then
  python3 -m venv "$tools/venv-xds"
  "$tools/venv-xds/bin/pip" install -q "xds-protos==1.85.0"
fi
build_plugin() { # repo version product
  local dir="$tools/$(basename "$1")"
  [ -d "$dir" ] || git clone -q --branch "$2" "https://github.com/$1" "$dir"
  (cd "$dir" && swift build -c release --product "$3" >/dev/null)
  echo "$dir/.build/release/$3"
}
swift_plugin=$(build_plugin apple/swift-protobuf 1.39.0 protoc-gen-swift)
grpc_plugin=$(build_plugin grpc/grpc-swift-protobuf 2.4.1 protoc-gen-grpc-swift-2)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$tools/venv-xds/bin/python3" "$root/scripts/xds_descriptors.py" "$work/xds.pb" > "$work/files"
rm -rf "$out"
mkdir -p "$out"
# One flat directory with unique file names (Swift modules compile per file name).
protoc --descriptor_set_in="$work/xds.pb" --plugin=protoc-gen-swift="$swift_plugin" \
  --swift_out="$out" --swift_opt=Visibility=Public --swift_opt=FileNaming=PathToUnderscores \
  $(cat "$work/files")
protoc --descriptor_set_in="$work/xds.pb" --plugin=protoc-gen-grpc-swift-2="$grpc_plugin" \
  --grpc-swift-2_out="$out" --grpc-swift-2_opt=Visibility=Public,Server=false,Client=true,FileNaming=PathToUnderscores \
  envoy/service/discovery/v3/ads.proto
echo "generated $(ls "$out" | wc -l) files, $(cat "$out"/*.swift | wc -l) lines in $out"
