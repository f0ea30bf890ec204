#!/usr/bin/env bash
# Before and after in one run: this tree's release binaries against those
# in BASELINE_DIR (for instance a copy of target/release/ built from an
# earlier commit), side by side and interleaved like every forwarder of the
# harness, so that drift on a shared machine hits both alike.
#
# Usage (from the project root):
#   tests/bench/ab.sh BASELINE_DIR [-r REPS] [-s SCENARIOS] [FORWARDER…]
# Default forwarders: portico-before portico portico-threaded-before
# portico-threaded. The harness (../shared/bench) is copied to a scratch
# directory with two more forwarders, `portico-before` and
# `portico-threaded-before`; the harness itself is not changed.
set -euo pipefail
cd "$(dirname "$0")/../.."
base=${1:?usage: tests/bench/ab.sh BASELINE_DIR [-r REPS] [-s SCENARIOS] [FORWARDER…]}
shift
base=$(cd "$base" && pwd)
for b in portico portico-threaded; do
    [ -x "$base/$b" ] || { echo "no $b in $base" >&2; exit 1; }
done
harness=${BENCH_HARNESS:-../shared/bench}
scratch=$(mktemp -d /tmp/portico-ab.XXXXXX)
trap 'rm -rf "$scratch"' EXIT
cp -r "$harness"/. "$scratch"/
cat >>"$scratch/forwarders.sh" <<EOT

# ------------------------------------------------------------------ the baseline
# The same configuration as portico's, binaries from $base.
fw_tcp_portico_before()            { local PORTICO_BIN_DIR="$base"; _portico portico tcp "\$@"; }
fw_http_portico_before()           { local PORTICO_BIN_DIR="$base"; _portico portico http "\$@"; }
fw_socks_portico_before()          { local PORTICO_BIN_DIR="$base"; _portico portico socks "\$@"; }
fw_tcp_portico_threaded_before()   { local PORTICO_BIN_DIR="$base"; _portico portico-threaded tcp "\$@"; }
fw_http_portico_threaded_before()  { local PORTICO_BIN_DIR="$base"; _portico portico-threaded http "\$@"; }
fw_socks_portico_threaded_before() { local PORTICO_BIN_DIR="$base"; _portico portico-threaded socks "\$@"; }
EOT
reps=3 scen=""
while getopts "r:s:" o; do
    case $o in
        r) reps=$OPTARG ;;
        s) scen=$OPTARG ;;
        *) sed -n '2,13p' "$0"; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
fws=${*:-portico-before portico portico-threaded-before portico-threaded}
cargo build --release --bins
export QUIET_WAIT_S=${QUIET_WAIT_S:-5}
args=(-r "$reps")
[ -n "$scen" ] && args+=(-s "$scen")
# shellcheck disable=SC2086  # the forwarders are words
BENCH_HARNESS="$scratch" "$scratch/run_all.sh" "${args[@]}" $fws
summary=$(ls -t "${BENCH_RESULTS:-/tmp/portico-bench/results}"/raw-*.md 2>/dev/null | head -1)
[ -n "$summary" ] && cat "$summary"
