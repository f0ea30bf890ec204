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
# -c: chained to a parent. Adds the forwarders `portico-via-squid` (http:
# Portico with Squid as its `[[parent]]`, started beside it) and
# `portico-via-dante` (socks: Dante as a socks5 parent); the default list
# is then those, Squid, Dante and portico, for the scenarios http-proxy,
# http-connect and socks5. A chain's fwd_cores is both processes' CPU.
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

reps=3 scen="" base="" chain=""
while getopts "r:s:b:c" o; do
    case $o in
        r) reps=$OPTARG ;;
        s) scen=$OPTARG ;;
        b) base=$(cd "$OPTARG" && pwd) ;;
        c) chain=1 ;;
        *) sed -n '2,21p' "$0"; exit 2 ;;
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

if [ -n "$chain" ]; then
    scratch=$(mktemp -d /tmp/portico-chain.XXXXXX)
    trap 'rm -rf "$scratch"' EXIT
    cp -r "$harness"/. "$scratch"/
    # The parent listens 7 ports above the forwarder's, in the same cgroup
    # (so both are measured and stopped together); only Portico's PID is
    # printed, as the harness wants one.
    cat >>"$scratch/forwarders.sh" <<'CHAIN'
_portico_via() {   # $1 role (http|socks), $2 listen port, $3 parent kind, $4 parent port
    local bin="$PORTICO_BIN_DIR/portico" role=$1 lport=$2
    local cfg="$RUN/portico-via-$role-$lport.toml" svc
    case $role in
        http)  svc=$'kind = "http"\nconnect_ports = [443, 8081]' ;;
        socks) svc='kind = "socks"' ;;
    esac
    cat >"$cfg" <<CFG
[network]
internal = ["127.0.0.1"]

[limits]
max_connections = $(( IDLE_N + 1000 ))
max_per_client = $(( IDLE_N + 1000 ))
idle_timeout = "300s"

[log]
access = "off"

[[parent]]
name = "up"
kind = "$3"
addresses = ["127.0.0.1:$4"]

[[service]]
name = "bench"
listen = ["127.0.0.1:$lport"]
via = "up"
$svc
CFG
    bg_start "$RUN/portico-via-$role-$lport.log" "$bin" --config "$cfg"
}
_parent_up() {   # waits (bounded) until the parent listens on 127.0.0.1:$1
    local i
    for i in $(seq 1 100); do
        port_listening "$1" && return 0
        sleep 0.1
    done
    return 1
}
fw_http_portico_via_squid() {
    fw_http_squid $(( $1 + 7 )) >/dev/null
    _parent_up $(( $1 + 7 )) || return 1
    _portico_via http "$1" http $(( $1 + 7 ))
}
fw_socks_portico_via_dante() {
    fw_socks_dante $(( $1 + 7 )) >/dev/null
    _parent_up $(( $1 + 7 )) || return 1
    _portico_via socks "$1" socks5 $(( $1 + 7 ))
}
CHAIN
    harness=$scratch
    fws=${*:-squid portico-via-squid dante portico-via-dante portico}
    scen=${scen:-http-proxy,http-connect,socks5}
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
