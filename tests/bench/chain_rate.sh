#!/usr/bin/env bash
# Where a chain's CPU goes: Portico with Squid as its `[[parent]]`, each
# process's CPU per request counted apart, beside Squid alone, Portico
# alone at full speed, and Portico alone paced to the chain's own rate
# (tlsload --rate). A proxy spends more CPU per request at a lower rate
# (fewer events per wake-up), and in a chain Portico runs at Squid's rate,
# so the fair sum is Squid alone plus Portico alone at that rate.
#
# Usage (from the project root, as root on Debian):
#   tests/bench/chain_rate.sh [-r REPS] [-t SECONDS] [-s SCENARIOS]
# Scenarios: keepalive (32 kept-alive connections sending absolute-form
# GETs), connect (new connection, CONNECT, one GET; 16 at once); default
# both. REPS (default 3) repetitions of SECONDS (default 4) each; medians.
# Run it under `flock /tmp/portico-bench.lock` on a shared machine.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD

reps=3 secs=4 scen="keepalive connect"
while getopts "r:t:s:" o; do
    case $o in
        r) reps=$OPTARG ;;
        t) secs=$OPTARG ;;
        s) scen=${OPTARG//,/ } ;;
        *) sed -n '2,14p' "$0"; exit 2 ;;
    esac
done

need=()
[ -x /usr/sbin/squid ] || need+=(squid)
[ -x /usr/sbin/nginx ] || need+=(nginx)
if [ ${#need[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need[@]}"
fi
cargo build --release --bins
tool_target=${TLSLOAD_TARGET:-/tmp/portico-bench/tlsload-target}
CARGO_TARGET_DIR=$tool_target cargo build --release --manifest-path tests/bench/tlsload/Cargo.toml
TOOL=$tool_target/release/tlsload

RUN=${BENCH_RUN:-/tmp/portico-bench/chain-rate}
rm -rf "$RUN"; mkdir -p "$RUN"
RESULTS=${BENCH_RESULTS:-/tmp/portico-bench/results}
mkdir -p "$RESULTS"
raw=$RESULTS/chain-rate-$(date +%Y%m%d-%H%M%S).txt
BACKEND=127.0.0.1:18181 PORTICO_PORT=23128 SQUID_PORT=23135
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

log() { echo "[chain $(date +%H:%M:%S)] $*" >&2; }
port_listening() { [ -n "$(ss -Hltn "sport = :$1" 2>/dev/null)" ]; }
wait_port() {
    local i
    for i in $(seq 1 100); do port_listening "$1" && return 0; sleep 0.1; done
    return 1
}

# Each process in its own controller-less v2 cgroup, so that the chain's
# two are counted apart.
CG_ROOT=${BENCH_CG_ROOT:-/sys/fs/cgroup/unified}
CG_P=$CG_ROOT/chainrate-portico CG_S=$CG_ROOT/chainrate-squid CG_L=$CG_ROOT/chainrate-load
mkdir -p "$CG_P" "$CG_S" "$CG_L" 2>/dev/null && [ -f "$CG_P/cpu.stat" ] \
    || { echo "no cgroup v2 accounting at $CG_ROOT (set BENCH_CG_ROOT)" >&2; exit 1; }
cg_usec() { awk '/^usage_usec/ { print $2 }' "$1/cpu.stat"; }
in_cg() { local cg=$1; shift; ( echo "$BASHPID" >"$cg/cgroup.procs"; exec "$@" ); }
cg_kill() {
    local i pids
    pids=$(cat "$1/cgroup.procs")
    [ -n "$pids" ] || return 0
    # shellcheck disable=SC2086
    kill -TERM $pids 2>/dev/null || true
    for i in $(seq 1 50); do [ -z "$(cat "$1/cgroup.procs")" ] && return 0; sleep 0.1; done
    pids=$(cat "$1/cgroup.procs")
    # shellcheck disable=SC2086
    [ -n "$pids" ] && kill -KILL $pids 2>/dev/null || true
    for i in $(seq 1 50); do [ -z "$(cat "$1/cgroup.procs")" ] && return 0; sleep 0.1; done
}

d=$RUN/nginx
mkdir -p "$d/www" "$d/logs"
printf '<html><body>hello from the benchmark backend nginx, a tiny static file.........</body></html>\n' >"$d/www/index.html"
cat >"$d/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $d/nginx.pid;
error_log $d/logs/error.log warn;
events { worker_connections 16384; }
http {
    access_log off;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    server {
        listen $BACKEND backlog=4096 default_server;
        root $d/www;
        location / { }
    }
}
EOF
nginx -p "$d" -c "$d/nginx.conf" -e "$d/logs/error.log" </dev/null >>"$d/logs/stdout.log" 2>&1 &
NGINX_PID=$!
cleanup() {
    cg_kill "$CG_P"; cg_kill "$CG_S"; cg_kill "$CG_L"
    kill "$NGINX_PID" 2>/dev/null || true
    rmdir "$CG_P" "$CG_S" "$CG_L" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM
wait_port "${BACKEND##*:}" || { echo "the backend nginx did not start; see $d/logs" >&2; exit 1; }

start_squid() {
    local s=$RUN/squid
    rm -rf "$s"; mkdir -p "$s"
    cat >"$s/squid.conf" <<EOF
http_port 127.0.0.1:$SQUID_PORT
http_access allow localhost
http_access deny all
cache deny all
cache_mem 8 MB
access_log none
cache_store_log none
cache_log $s/cache.log
pid_filename $s/squid.pid
coredump_dir $s
shutdown_lifetime 0 seconds
visible_hostname bench
via off
max_filedescriptors 65536
EOF
    chown -R proxy:proxy "$s"
    in_cg "$CG_S" squid -N -f "$s/squid.conf" </dev/null >>"$s/stdout.log" 2>&1 &
    wait_port $SQUID_PORT
}
start_portico() {  # $1: "" or "via" (Squid as its parent)
    local cfg=$RUN/portico.toml parent="" via=""
    if [ "$1" = via ]; then
        parent=$(printf '[[parent]]\nname = "up"\nkind = "http"\naddresses = ["127.0.0.1:%s"]' $SQUID_PORT)
        via='via = "up"'
    fi
    cat >"$cfg" <<EOF
[network]
internal = ["127.0.0.1"]

[limits]
max_connections = 20000
max_per_client = 20000
idle_timeout = "300s"

[log]
access = "off"

$parent

[[service]]
name = "bench"
kind = "http"
listen = ["127.0.0.1:$PORTICO_PORT"]
connect_ports = [${BACKEND##*:}]
$via
EOF
    in_cg "$CG_P" "$root/target/release/portico" --config "$cfg" </dev/null >>"$RUN/portico.log" 2>&1 &
    wait_port $PORTICO_PORT
}

# measure SCENARIO CASE REP PORT [RATE]: the load through PORT; prints the
# rate and each process's CPU per request.
measure() {
    local s=$1 c=$2 rep=$3 port=$4 rate=${5:-} args=() p0 p1 s0 s1 out ok
    case $s in
        keepalive) args=(--mode keepalive --concurrency 32) ;;
        connect) args=(--mode connect --concurrency 16) ;;
        *) log "unknown scenario $s"; return 1 ;;
    esac
    [ -n "$rate" ] && args+=(--rate "$rate")
    sleep 0.3
    p0=$(cg_usec "$CG_P") s0=$(cg_usec "$CG_S")
    out=$(in_cg "$CG_L" timeout $(( ${secs%.*} + 20 )) "$TOOL" "${args[@]}" \
        --proxy "127.0.0.1:$port" --dest "$BACKEND" --seconds "$secs" \
        --scenario "$s" --forwarder "$c") || log "$s $c: errors (see above)"
    p1=$(cg_usec "$CG_P") s1=$(cg_usec "$CG_S")
    ok=$(echo "$out" | awk '$3 == "ok" { print $4 }')
    echo "$out" | grep -E ' (req_per_s|errors) ' | sed "s/\$/ rep=$rep/"
    if [ "${ok:-0}" -gt 0 ]; then
        awk -v s="$s" -v c="$c" -v r="$rep" -v p=$(( p1 - p0 )) -v q=$(( s1 - s0 )) -v ok="$ok" 'BEGIN {
            printf "%s %s portico_us_per_op %.1f rep=%s\n", s, c, p / ok, r
            printf "%s %s squid_us_per_op %.1f rep=%s\n", s, c, q / ok, r }'
    fi
    cg_kill "$CG_P"; cg_kill "$CG_S"
}

echo "# chain_rate.sh $(date -u +%FT%TZ) reps=$reps seconds=$secs scenarios: $scen; loadavg $(cut -d' ' -f1-3 /proc/loadavg)" >>"$raw"
for ((rep = 1; rep <= reps; rep++)); do
    for s in $scen; do
        log "rep $rep/$reps: $s"
        start_squid && start_portico via
        measure "$s" chain "$rep" $PORTICO_PORT | tee -a "$raw"
        rate=$(awk -v s="$s" -v r="rep=$rep" '$1 == s && $2 == "chain" && $3 == "req_per_s" && $5 == r { print $4 }' "$raw")
        start_squid
        measure "$s" squid "$rep" $SQUID_PORT | tee -a "$raw"
        start_portico ""
        measure "$s" portico "$rep" $PORTICO_PORT | tee -a "$raw"
        start_portico ""
        measure "$s" portico-paced "$rep" $PORTICO_PORT "$rate" | tee -a "$raw"
    done
done

python3 - "$raw" <<'PY'
import statistics, sys
from collections import defaultdict
vals = defaultdict(list)
for line in open(sys.argv[1]):
    p = line.split()
    if line.startswith("#") or len(p) < 4:
        continue
    vals[(p[0], p[1], p[2])].append(float(p[3]))
m = {k: statistics.median(v) for k, v in vals.items()}
g = lambda s, c, k: m.get((s, c, k), float("nan"))
print(f"\nraw: {sys.argv[1]}\n")
print("| scenario | chain req/s | chain µs/req: Squid + Portico = sum | Squid alone | Portico alone (req/s) | Portico paced to the chain | Squid + Portico alone | Squid + Portico paced |")
print("|---|---|---|---|---|---|---|---|")
for s in dict.fromkeys(k[0] for k in m):
    cs, cp = g(s, "chain", "squid_us_per_op"), g(s, "chain", "portico_us_per_op")
    sa, pa, pp = g(s, "squid", "squid_us_per_op"), g(s, "portico", "portico_us_per_op"), g(s, "portico-paced", "portico_us_per_op")
    print(f"| {s} | {g(s, 'chain', 'req_per_s'):,.0f} | {cs:.1f} + {cp:.1f} = {cs + cp:.1f} | {sa:.1f} "
          f"| {pa:.1f} ({g(s, 'portico', 'req_per_s'):,.0f}) | {pp:.1f} | {sa + pa:.1f} ({(cs + cp) / (sa + pa) - 1:+.0%}) "
          f"| {sa + pp:.1f} ({(cs + cp) / (sa + pp) - 1:+.0%}) |")
PY
