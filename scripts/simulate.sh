#!/usr/bin/env bash
# Runs the simulator over many seeds (default: 1000 seeds of 10,000 steps from seed 1) with a
# release build; a failing seed is printed with the command that replays it.
# Usage: scripts/simulate.sh [FIRST_SEED] [COUNT] [STEPS]
set -euo pipefail
cd "$(dirname "$0")/.."
swift build -c release --disable-default-traits --product weir >/dev/null
exec .build/release/weir simulate --seed "${1:-1}" --count "${2:-1000}" --steps "${3:-10000}"
