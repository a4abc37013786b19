#!/usr/bin/env bash
# Fuzzes the HTTP parser with libFuzzer (+ AddressSanitizer) from the committed seed corpus.
# Usage: scripts/fuzz-http.sh [seconds, default 60]. New inputs it finds go to Fuzz/.corpus-run/
# (not committed); a crash is written to Fuzz/crash-* and the script exits non-zero.
set -euo pipefail
cd "$(dirname "$0")/../Fuzz"
seconds=${1:-60}
swift build -c release --product HTTPParserFuzz -Xswiftc -sanitize=fuzzer,address >/dev/null
mkdir -p .corpus-run
bin=$(swift build -c release --show-bin-path)/HTTPParserFuzz
"$bin" -max_total_time="$seconds" -max_len=4096 -print_final_stats=1 .corpus-run corpus/request
