#!/usr/bin/env bash
# Portico side by side with the programs its users would otherwise pick, on
# this machine, in one run: installs the peers (Debian packages), builds
# Portico in release mode, runs ../shared/bench's harness interleaved
# (A B C …, A B C …) and prints a table of medians and ratios.
#
# Usage (from the project root):
#   tests/bench/run.sh [-r REPS] [-s SCENARIOS] [-b BASELINE_DIR] [FORWARDER…]
# Default: 3 repetitions of every scenario for direct, HAProxy (splice and
# two threads), Squid, tinyproxy, microsocks, Dante, portico and
# portico-threaded (about 15–40 minutes on two cores).
# -b: before and after in one run. BASELINE_DIR holds portico and
# portico-threaded built from an earlier commit; they run as the
# forwarders `portico-before` and `portico-threaded-before` (the default
# list is then those and this tree's two), from a scratch copy of the
# harness with those two added (the harness itself is not changed).
set -euo pipefail
cd "$(dirname "$0")/../.."
harness=${BENCH_HARNESS:-../shared/bench}
[ -x "$harness/run_all.sh" ] || { echo "no benchmark harness at $harness" >&2; exit 1; }

need=()
for p in haproxy socat rinetd redir nginx iperf3 wrk tinyproxy squid microsocks curl; do
    command -v "$p" >/dev/null 2>&1 || [ -x "/usr/sbin/$p" ] || [ -x "/usr/bin/$p" ] || need+=("$p")
done
[ -x /usr/sbin/danted ] || need+=(dante-server)
[ -e /usr/lib/nginx/modules/ngx_stream_module.so ] || need+=(libnginx-mod-stream)
if [ ${#need[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need[@]}"
fi

reps=3 scen="" base=""
while getopts "r:s:b:" o; do
    case $o in
        r) reps=$OPTARG ;;
        s) scen=$OPTARG ;;
        b) base=$(cd "$OPTARG" && pwd) ;;
        *) sed -n '2,16p' "$0"; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
fws=${*:-direct haproxy-nt1-splice haproxy-nt2 squid tinyproxy microsocks dante portico portico-threaded}

if [ -n "$base" ]; then
    for b in portico portico-threaded; do
        [ -x "$base/$b" ] || { echo "no $b in $base" >&2; exit 1; }
    done
    scratch=$(mktemp -d /tmp/portico-ab.XXXXXX)
    trap 'rm -rf "$scratch"' EXIT
    cp -r "$harness"/. "$scratch"/
    for role in tcp http socks; do
        for b in portico portico-threaded; do
            echo "fw_${role}_${b//-/_}_before() { local PORTICO_BIN_DIR=\"$base\"; _portico $b $role \"\$@\"; }"
        done
    done >>"$scratch/forwarders.sh"
    harness=$scratch
    fws=${*:-portico-before portico portico-threaded-before portico-threaded}
fi

cargo build --release --bins
# A shared machine: wait only briefly for quiet before each measurement.
export QUIET_WAIT_S=${QUIET_WAIT_S:-5}
args=(-r "$reps")
[ -n "$scen" ] && args+=(-s "$scen")
# shellcheck disable=SC2086  # the forwarders are words
"$harness/run_all.sh" "${args[@]}" $fws
summary=$(ls -t "${BENCH_RESULTS:-/tmp/portico-bench/results}"/raw-*.md 2>/dev/null | head -1)
[ -n "$summary" ] && cat "$summary"
