#!/bin/sh
# Records http-socks-status.trace (and its .actions) again, from a live run
# of target/release/portico: needed whenever the core's actions change for
# the same inputs (the replay test then says where they diverge).
#
#   cargo build --release && sh core/tests/traces/record.sh
#
# Uses ports 17080 (a Python origin) and 17095-17097 on 127.0.0.1, curl,
# ss and python3.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
bin=${PORTICO:-$root/target/release/portico}
tmp=$(mktemp -d)
trap 'kill $origin $proxy 2>/dev/null || true; rm -rf "$tmp"' EXIT

cat >"$tmp/portico.toml" <<'EOF'
[network]
internal = ["127.0.0.1"]
[[service]]
name = "web"
kind = "http"
port = 17095
[[service]]
name = "socks"
kind = "socks"
port = 17096
[[service]]
name = "status"
kind = "status"
port = 17097
EOF
mkdir "$tmp/www"
printf '<h1>hello</h1>\n' >"$tmp/www/index.html"
python3 -m http.server --bind 127.0.0.1 --directory "$tmp/www" 17080 >/dev/null 2>&1 &
origin=$!
"$bin" --config "$tmp/portico.toml" --record "$tmp/t.trace" &
proxy=$!
# Bounded waits for both listeners (without a connection to portico: the
# trace should hold only the requests below).
i=0
until curl -s -o /dev/null http://127.0.0.1:17080/ && [ -n "$(ss -Hltn 'sport = :17097')" ]; do
    i=$((i + 1))
    [ $i -lt 100 ] || { echo "record.sh: origin or portico did not start" >&2; exit 1; }
    sleep 0.1
done
q="-s -o /dev/null --max-time 10"
curl $q -o /dev/null -x http://127.0.0.1:17095 http://localhost:17080/ http://localhost:17080/index.html
curl $q --socks5-hostname 127.0.0.1:17096 http://localhost:17080/
curl $q --socks5 127.0.0.1:17096 http://localhost:17080/index.html
curl $q http://127.0.0.1:17097/metrics
curl $q http://127.0.0.1:17097/connections
kill -TERM $proxy
wait $proxy || true
cp "$tmp/t.trace" "$here/http-socks-status.trace"
cp "$tmp/t.trace.actions" "$here/http-socks-status.trace.actions"
echo "recorded $here/http-socks-status.trace"
