#!/usr/bin/env bash
# TLS to the proxy: Portico's TLS port against Squid's https_port, and each
# against its own plain port, on this machine, in one run, interleaved
# (A B C D, A B C D, …), with the proxy's CPU per request.
#
# Usage (from the project root, as root on Debian):
#   tests/bench/tls.sh [-r REPS] [-t SECONDS] [-s SCENARIOS] [-b BASELINE_DIR] [FORWARDER…]
# Forwarders: portico, portico-tls (the same service with `tls`), squid
# (http_port), squid-tls (https_port); default all four. With -b, also
# portico-tls-before: the `portico` in BASELINE_DIR (built from an earlier
# commit) on the TLS port.
# Scenarios (default all): connect (new connection, TLS handshake when the
# port has TLS, CONNECT, one GET, read to the close; 16 at once; session
# resumption as the client offers it), connect-full (the same, every TLS
# handshake a full one), connect-tls12 (the same, full handshakes, TLS 1.2
# alone), keepalive (32 kept-alive connections sending absolute-form GETs
# one after the other). connect-full and connect-tls12 run on TLS ports
# alone (on a plain port they are connect).
# Each measurement runs SECONDS (default 4) with tests/bench/tlsload as the
# load; REPS (default 3) repetitions; the table gives medians. Run it under
# `flock /tmp/portico-bench.lock` on a shared machine.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD

reps=3 secs=4 scen="connect connect-full connect-tls12 keepalive" base=""
while getopts "r:t:s:b:" o; do
    case $o in
        r) reps=$OPTARG ;;
        t) secs=$OPTARG ;;
        s) scen=${OPTARG//,/ } ;;
        b) base=$(cd "$OPTARG" && pwd) ;;
        *) sed -n '2,23p' "$0"; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
if [ -n "$base" ]; then
    [ -x "$base/portico" ] || { echo "no portico in $base" >&2; exit 1; }
    fws=${*:-portico portico-tls-before portico-tls squid squid-tls}
else
    fws=${*:-portico portico-tls squid squid-tls}
fi

need=()
[ -x /usr/sbin/squid ] || need+=(squid)
[ -x /usr/sbin/nginx ] || need+=(nginx)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v curl >/dev/null 2>&1 || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need[@]}"
fi
# Debian's squid (GnuTLS) has https_port; an older build without TLS says
# so here rather than in the middle of the run.
squid -v | grep -qE 'with-(gnutls|openssl)' || { echo "this squid has no TLS (https_port)" >&2; exit 1; }

cargo build --release --bins
tool_target=${TLSLOAD_TARGET:-/tmp/portico-bench/tlsload-target}
CARGO_TARGET_DIR=$tool_target cargo build --release --manifest-path tests/bench/tlsload/Cargo.toml
TOOL=$tool_target/release/tlsload

RUN=${BENCH_RUN:-/tmp/portico-bench/tls}
rm -rf "$RUN"; mkdir -p "$RUN"
RESULTS=${BENCH_RESULTS:-/tmp/portico-bench/results}
mkdir -p "$RESULTS"
raw=$RESULTS/tls-$(date +%Y%m%d-%H%M%S).txt
BACKEND=127.0.0.1:18181
PROXY_PORT=23128
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

log() { echo "[tls $(date +%H:%M:%S)] $*" >&2; }
port_listening() { [ -n "$(ss -Hltn "sport = :$1" 2>/dev/null)" ]; }

# ---------------------------------------------------------------- cgroups
# The proxy and the load each in a controller-less v2 cgroup: cpu.stat
# counts every process and thread in it (Squid's helpers too).
CG_ROOT=${BENCH_CG_ROOT:-/sys/fs/cgroup/unified}
CG_FW=$CG_ROOT/tlsbench-fw CG_LOAD=$CG_ROOT/tlsbench-load
mkdir -p "$CG_FW" "$CG_LOAD" 2>/dev/null && [ -f "$CG_FW/cpu.stat" ] \
    || { echo "no cgroup v2 accounting at $CG_ROOT (set BENCH_CG_ROOT)" >&2; exit 1; }
cg_usec() { awk '/^usage_usec/ { print $2 }' "$1/cpu.stat"; }
in_cg() { local cg=$1; shift; ( echo "$BASHPID" >"$cg/cgroup.procs"; exec "$@" ); }
cg_kill() {  # TERM, up to 5 s, then KILL whatever is left in the cgroup
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

# ---------------------------------------------------------------- certificate
# One ECDSA P-256 certificate (signed by a CA the load trusts) for both
# proxies, so both do the same handshake.
(
    cd "$RUN"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout ca.key -out ca.pem -days 30 -subj "/CN=bench CA" 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout proxy.key -out proxy.csr -subj /CN=localhost 2>/dev/null
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >proxy.ext
    openssl x509 -req -in proxy.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
        -out proxy.pem -days 30 -extfile proxy.ext 2>/dev/null
)
chmod 644 "$RUN"/*

# ---------------------------------------------------------------- backend
backend_up() {
    local d=$RUN/nginx
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
    local i
    for i in $(seq 1 50); do port_listening "${BACKEND##*:}" && return 0; sleep 0.1; done
    echo "the backend nginx did not start; see $d/logs" >&2
    return 1
}
cleanup() {
    cg_kill "$CG_FW"; cg_kill "$CG_LOAD"
    [ -n "${NGINX_PID:-}" ] && kill "$NGINX_PID" 2>/dev/null
    rmdir "$CG_FW" "$CG_LOAD" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- proxies
# Each starts in the proxy cgroup, listening on 127.0.0.1:$PROXY_PORT, not
# daemonized, access log off.
start_portico() {  # $1: "" or the tls line, [$2: the directory of the binary]
    local cfg=$RUN/portico.toml bin=${2:-$root/target/release}
    cat >"$cfg" <<EOF
[network]
internal = ["127.0.0.1"]

[limits]
max_connections = 20000
max_per_client = 20000
idle_timeout = "300s"

[log]
access = "off"

[[service]]
name = "bench"
kind = "http"
listen = ["127.0.0.1:$PROXY_PORT"]
connect_ports = [${BACKEND##*:}]
$1
EOF
    in_cg "$CG_FW" "$bin/portico" --config "$cfg" </dev/null >>"$RUN/portico.log" 2>&1 &
}
start_squid() {  # $1: http_port or https_port line
    local d=$RUN/squid
    rm -rf "$d"; mkdir -p "$d"
    cat >"$d/squid.conf" <<EOF
$1
http_access allow localhost
http_access deny all
cache deny all
cache_mem 8 MB
access_log none
cache_store_log none
cache_log $d/cache.log
pid_filename $d/squid.pid
coredump_dir $d
shutdown_lifetime 0 seconds
visible_hostname bench
via off
max_filedescriptors 65536
EOF
    chown -R proxy:proxy "$d"
    in_cg "$CG_FW" squid -N -f "$d/squid.conf" </dev/null >>"$d/stdout.log" 2>&1 &
}
fw_start() {
    case $1 in
        portico) start_portico "" ;;
        portico-tls) start_portico "tls = { cert = \"$RUN/proxy.pem\", key = \"$RUN/proxy.key\" }" ;;
        portico-tls-before)
            start_portico "tls = { cert = \"$RUN/proxy.pem\", key = \"$RUN/proxy.key\" }" "$base" ;;
        squid) start_squid "http_port 127.0.0.1:$PROXY_PORT" ;;
        squid-tls) start_squid "https_port 127.0.0.1:$PROXY_PORT tls-cert=$RUN/proxy.pem tls-key=$RUN/proxy.key" ;;
        *) echo "unknown forwarder $1 (portico, portico-tls, squid, squid-tls)" >&2; return 1 ;;
    esac
    local i
    for i in $(seq 1 100); do port_listening $PROXY_PORT && break; sleep 0.1; done
    port_listening $PROXY_PORT || { log "$1 did not listen; see $RUN"; return 1; }
    sleep 0.3
    # One request through it must work before it is measured.
    local proxy=http://127.0.0.1:$PROXY_PORT
    case $1 in *-tls*) proxy=https://127.0.0.1:$PROXY_PORT ;; esac
    curl -sf -o /dev/null --max-time 5 --proxy "$proxy" --proxy-cacert "$RUN/ca.pem" \
        "http://$BACKEND/index.html" || { log "$1: a request through it failed"; return 1; }
}

measure() {  # scenario forwarder rep
    local s=$1 fw=$2 rep=$3 mode args=() t0 t1 f0 f1 l0 l1 out
    case $s in
        connect) mode=connect args=(--concurrency 16) ;;
        connect-full) mode=connect args=(--concurrency 16 --no-resume) ;;
        connect-tls12) mode=connect args=(--concurrency 16 --no-resume --tls12) ;;
        keepalive) mode=keepalive args=(--concurrency 32) ;;
        *) log "unknown scenario $s"; return 1 ;;
    esac
    case $fw in
        *-tls*) args+=(--tls "$RUN/ca.pem") ;;
        *) case $s in connect-full | connect-tls12) return 0 ;; esac ;;
    esac
    fw_start "$fw" || { echo "$s $fw error start_failed rep=$rep"; cg_kill "$CG_FW"; return 0; }
    t0=$(date +%s.%N) f0=$(cg_usec "$CG_FW") l0=$(cg_usec "$CG_LOAD")
    out=$(in_cg "$CG_LOAD" timeout $(( ${secs%.*} + 20 )) "$TOOL" --mode "$mode" \
        --proxy 127.0.0.1:$PROXY_PORT --dest "$BACKEND" --seconds "$secs" \
        --scenario "$s" --forwarder "$fw" "${args[@]}") || log "$s $fw: errors (see above)"
    t1=$(date +%s.%N) f1=$(cg_usec "$CG_FW") l1=$(cg_usec "$CG_LOAD")
    cg_kill "$CG_FW"
    echo "$out" | sed "s/\$/ rep=$rep/"
    awk -v s="$s" -v f="$fw" -v r="$rep" -v t0="$t0" -v t1="$t1" \
        -v fw=$(( f1 - f0 )) -v ld=$(( l1 - l0 )) \
        -v ok="$(echo "$out" | awk '$3 == "ok" { print $4 }')" 'BEGIN { el = t1 - t0
            printf "%s %s fwd_cores %.3f rep=%s\n", s, f, fw / 1e6 / el, r
            printf "%s %s client_cores %.3f rep=%s\n", s, f, ld / 1e6 / el, r
            if (ok > 0) printf "%s %s fwd_us_per_op %.1f rep=%s\n", s, f, fw / ok, r }'
}

backend_up
{
    echo "# tls.sh $(date -u +%FT%TZ) reps=$reps seconds=$secs scenarios: $scen forwarders: $fws"
    echo "# host: $(nproc) cpus, kernel $(uname -r), loadavg $(cut -d' ' -f1-3 /proc/loadavg); squid $(dpkg-query -W -f='${Version}' squid 2>/dev/null)"
} >>"$raw"
for ((rep = 1; rep <= reps; rep++)); do
    for s in $scen; do
        for fw in $fws; do
            log "rep $rep/$reps: $s / $fw"
            measure "$s" "$fw" "$rep" | tee -a "$raw"
        done
    done
done

python3 - "$raw" <<'EOF'
import statistics, sys
from collections import defaultdict
vals = defaultdict(list)
for line in open(sys.argv[1]):
    p = line.split()
    if line.startswith("#") or len(p) < 4 or p[2] == "error":
        continue
    try:
        vals[(p[0], p[1], p[2])].append(float(p[3]))
    except ValueError:
        pass
med = {k: statistics.median(v) for k, v in vals.items()}
scens = list(dict.fromkeys(k[0] for k in med))
fws = list(dict.fromkeys(k[1] for k in med))
print(f"\nraw: {sys.argv[1]}\n")
print("| scenario | proxy | req/s | proxy cores | proxy µs/req | client cores | resumed | errors |")
print("|---|---|---|---|---|---|---|---|")
for s in scens:
    for f in fws:
        g = lambda m, d=float("nan"): med.get((s, f, m), d)
        if (s, f, "req_per_s") in med:
            print(f"| {s} | {f} | {g('req_per_s'):,.0f} | {g('fwd_cores'):.2f} | {g('fwd_us_per_op'):.1f} "
                  f"| {g('client_cores'):.2f} | {g('resumed', 0):.0f} | {g('errors', 0):.0f} |")
# TLS cost: against the same proxy's plain port in `connect` (the same
# requests without TLS) or in the same scenario.
print("\n| scenario | portico-tls / squid-tls: rate | µs/req | TLS cost, µs/req: portico | squid |")
print("|---|---|---|---|---|")
for s in scens:
    g = lambda f, m, sc=s: med.get((sc, f, m), float("nan"))
    plain = s if s == "keepalive" else "connect"
    print(f"| {s} | {g('portico-tls', 'req_per_s') / g('squid-tls', 'req_per_s'):.2f} "
          f"| {g('portico-tls', 'fwd_us_per_op') / g('squid-tls', 'fwd_us_per_op'):.2f} "
          f"| {g('portico-tls', 'fwd_us_per_op') - g('portico', 'fwd_us_per_op', plain):+.1f} "
          f"| {g('squid-tls', 'fwd_us_per_op') - g('squid', 'fwd_us_per_op', plain):+.1f} |")
if any(k[1] == "portico-tls-before" for k in med):
    print("\n| scenario | portico-tls µs/req: before | after | after / before |")
    print("|---|---|---|---|")
    for s in scens:
        b, a = med.get((s, "portico-tls-before", "fwd_us_per_op")), med.get((s, "portico-tls", "fwd_us_per_op"))
        if b and a:
            print(f"| {s} | {b:.1f} | {a:.1f} | {a / b:.2f} |")
EOF
