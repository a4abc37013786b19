#!/usr/bin/env bash
# Fuzzes with libFuzzer (+ AddressSanitizer) from a committed seed corpus: the HTTP parser
# (HTTPParserFuzz, the default), the ClientHello reader and path regexes (MatcherFuzz), or whole
# simulated shards steered by the input (ConnectionFuzz: clients, byte streams, event orders).
# Usage: scripts/fuzz-http.sh [seconds, default 60] [target]. New inputs it finds go to
# Fuzz/.corpus-run/<target> (not committed); a crash is written to Fuzz/crash-* and the script
# exits non-zero.
set -euo pipefail
cd "$(dirname "$0")/../Fuzz"
seconds=${1:-60}
target=${2:-HTTPParserFuzz}
case "$target" in
  HTTPParserFuzz) corpus=corpus/request ;;
  MatcherFuzz) corpus=corpus/matcher ;;
  ConnectionFuzz) corpus=corpus/connection ;;
  *) echo "fuzz-http.sh: unknown target '$target' (HTTPParserFuzz, MatcherFuzz or ConnectionFuzz)" >&2; exit 2 ;;
esac
# SwiftPM keeps this package's build plan when a file is added to the main package (../), and
# then fails to find the new type: drop the plan so it is made again (the build stays incremental).
rm -f .build/release.yaml .build/release/description.json
swift build -c release --product "$target" -Xswiftc -sanitize=fuzzer,address >/dev/null
mkdir -p ".corpus-run/$target"
bin=$(swift build -c release --show-bin-path)/$target
"$bin" -max_total_time="$seconds" -max_len=4096 -timeout=10 -print_final_stats=1 ".corpus-run/$target" "$corpus"
