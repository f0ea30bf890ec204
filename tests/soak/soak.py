#!/usr/bin/env python3
"""A bounded soak of one Portico binary under mixed, misbehaving traffic.

    python3 tests/soak/soak.py target/release/portico [--duration 60] [--seed 1]
    python3 tests/soak/soak.py target/release/portico-threaded --duration 300

Starts BIN with four services on loopback -- an HTTP proxy, a SOCKS5 proxy,
a mapped TCP port and the status page -- in front of a local echo server
and a local HTTP origin, and runs --clients client threads (default 6) for
--duration seconds. Each client picks, seeded, one of: HTTP proxy GETs
(one to three on a keep-alive connection), a CONNECT tunnel, a SOCKS5
CONNECT or the mapped port, and how it behaves: finishes normally, stalls
a while in the middle, resets (SO_LINGER 0) or just disconnects at a random
point. Every --interval seconds (default 2) it samples the proxy's RSS and
open file descriptors from /proc and its /metrics (connections in flight,
bytes relayed).

At the end, after the clients are done, it checks and exits non-zero,
saying which check failed, unless:

  memory   RSS is flat after the warm-up (the first 20% of the run, at least
           10 s): the largest RSS sample of the last third of the samples
           after the warm-up is at most 1.10 x the largest of their first
           third (or that plus 1 MiB, for a small process).
  open     nothing is left open: within 30 s of the last client finishing,
           /metrics shows no connection in flight but the scrape's own,
           /connections lists nothing else, and the proxy holds as many
           sockets as before the traffic (besides the scrape's; the pipes it
           keeps for splicing are reported, not counted).
  bytes    every byte is accounted for: each connection that finished
           cleanly has access-log lines (one per request for http) whose
           down= adds up to exactly the bytes it received (the proxy's own
           replies included) and up= to exactly the bytes it sent past the
           SOCKS or CONNECT handshake (what the proxy relays upstream; a
           GET's is its rewritten request, not predicted); one cut short
           has up= no more and down= no less than that (bytes in flight die
           with the socket); portico_bytes_total
           and portico_connections_total of each service equal the access
           log's sums and the connections the clients made.
  clients  no client met an error it did not cause itself (a refused
           tunnel, an echo that differs, an operation over 15 s).

CPU stays moderate: a handful of client threads, payloads of at most
256 KiB, and a short pause between connections. The figures it prints are
what docs/benchmarks.md ("Soak") quotes.
"""
import argparse, os, random, re, signal, socket, struct, subprocess, sys, tempfile
import threading, time

ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
ap.add_argument("bin")
ap.add_argument("--duration", type=float, default=60.0, help="seconds of traffic (default 60)")
ap.add_argument("--seed", type=int, default=1)
ap.add_argument("--clients", type=int, default=6, help="client threads (default 6)")
ap.add_argument("--interval", type=float, default=2.0, help="seconds between samples")
ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
args = ap.parse_args()

TIMEOUT = 15.0  # any single socket operation; a stuck proxy fails the run


def log(msg):
    print(msg, flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def recv_exact(s, n):
    out = b""
    while len(out) < n:
        d = s.recv(min(65536, n - len(out)))
        if not d:
            raise ConnectionError(f"EOF after {len(out)} of {n} bytes")
        out += d
    return out


class Server:
    """Accepts on loopback and serves each connection on a thread."""

    def __init__(self, serve):
        self.l = socket.socket()
        self.l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.l.bind(("127.0.0.1", 0))
        self.l.listen(1024)
        self.port = self.l.getsockname()[1]
        self.serve = serve
        threading.Thread(target=self.run, daemon=True).start()

    def run(self):
        while True:
            c, _ = self.l.accept()
            threading.Thread(target=self.guard, args=(c,), daemon=True).start()

    def guard(self, c):
        try:
            c.settimeout(60)
            self.serve(c)
        except OSError:
            pass
        finally:
            c.close()


def echo(c):
    while True:
        d = c.recv(65536)
        if not d:
            return
        c.sendall(d)


def origin(c):
    """HTTP/1.1 with keep-alive: GET /N answers N bytes."""
    buf = b""
    while True:
        while b"\r\n\r\n" not in buf:
            d = c.recv(65536)
            if not d:
                return
            buf += d
        head, buf = buf.split(b"\r\n\r\n", 1)
        path = head.split(b" ", 2)[1]
        n = int(path.rsplit(b"/", 1)[1])
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % n + body(n))


PATTERN = bytes(range(256)) * 1024


def body(n):
    return (PATTERN * (n // len(PATTERN) + 1))[:n]


ECHO = Server(echo)
ORIGIN = Server(origin)
PORTS = {name: free_port() for name in ("web", "socks", "map", "status")}

tmp = tempfile.mkdtemp(prefix="portico-soak-")
access_path = os.path.join(tmp, "access.log")
config = f"""[network]
internal = ["127.0.0.1"]
[log]
access = "{access_path}"
[[service]]
name = "web"
kind = "http"
listen = ["127.0.0.1:{PORTS['web']}"]
connect_ports = [{ECHO.port}]
[[service]]
name = "socks"
kind = "socks"
listen = ["127.0.0.1:{PORTS['socks']}"]
[[service]]
name = "map"
kind = "mapped"
listen = ["127.0.0.1:{PORTS['map']}"]
destination = "127.0.0.1:{ECHO.port}"
[[service]]
name = "status"
kind = "status"
listen = ["127.0.0.1:{PORTS['status']}"]
"""
config_path = os.path.join(tmp, "portico.toml")
open(config_path, "w").write(config)

proxy = subprocess.Popen(
    [args.bin, "--config", config_path],
    stdout=subprocess.PIPE,
    stderr=open(os.path.join(tmp, "stderr.log"), "w"),
)
for _ in PORTS:
    line = proxy.stdout.readline()
    if not line.startswith(b"listening:"):
        sys.exit(f"soak: {args.bin} did not start (see {tmp}/stderr.log)")
PID = proxy.pid


def fail(msg):
    log(f"soak FAILED: {msg}")
    proxy.kill()
    log(f"soak: files kept in {tmp}")
    sys.exit(1)


def status_get(path):
    s = socket.create_connection(("127.0.0.1", PORTS["status"]), timeout=TIMEOUT)
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    out = b""
    while True:
        d = s.recv(65536)
        if not d:
            break
        out += d
    s.close()
    return out.split(b"\r\n\r\n", 1)[1].decode()


def metrics():
    m = {}
    for line in status_get("/metrics").splitlines():
        g = re.match(r'(portico_(?:connections_active|connections_total|bytes_total))\{service="(\w+)"(?:,direction="(\w+)")?\} (\d+)', line)
        if g:
            name, svc, d, v = g.groups()
            m[(name, svc, d)] = int(v)
    return m


def rss_kib():
    for line in open(f"/proc/{PID}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def fds():
    return len(os.listdir(f"/proc/{PID}/fd"))


def sockets():
    """The proxy's sockets (pipes it keeps for splicing are not counted)."""
    n = 0
    for fd in os.listdir(f"/proc/{PID}/fd"):
        try:
            n += os.readlink(f"/proc/{PID}/fd/{fd}").startswith("socket:")
        except OSError:
            pass
    return n


# ---------------------------------------------------------------- clients

records = []  # (service, local port, sent, received, clean, requests)
rec_lock = threading.Lock()
counts = {}
errors = []


class Conn:
    def __init__(self, service):
        self.service = service
        self.s = socket.create_connection(("127.0.0.1", PORTS[service]), timeout=TIMEOUT)
        self.port = self.s.getsockname()[1]
        self.sent = self.recv = 0
        self.requests = 0
        # What the proxy relays of what the client sent: all of it but the
        # SOCKS or CONNECT handshake; for GETs, rewritten requests (None:
        # not predicted).
        self.handshake = 0
        self.relayed = True

    def send(self, b):
        self.s.sendall(b)
        self.sent += len(b)

    def read(self, n):
        d = recv_exact(self.s, n)
        self.recv += len(d)
        return d

    def read_head(self):
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            d = self.s.recv(1)
            if not d:
                raise ConnectionError("EOF in a reply head")
            head += d
        self.recv += len(head)
        return head

    def drain(self):
        """Half-closes, then reads to the end: a clean finish."""
        self.s.shutdown(socket.SHUT_WR)
        while True:
            d = self.s.recv(65536)
            if not d:
                break
            self.recv += len(d)
        self.s.close()

    def abort(self, reset):
        if reset:
            self.s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.s.close()


class Abort(Exception):
    pass


def client(i, deadline):
    rng = random.Random(args.seed * 1000 + i)
    while time.monotonic() < deadline:
        kind = rng.choice(["get", "connect", "socks", "map"])
        how = rng.choices(["normal", "stall", "reset", "disconnect"], [70, 10, 10, 10])[0]
        service = "web" if kind in ("get", "connect") else kind
        try:
            c = Conn(service)
        except OSError as e:
            errors.append(f"connect to {service}: {e}")
            continue
        # Where to misbehave: after this many payload steps.
        cut = rng.randrange(0, 4)
        clean = True
        try:
            def step(k):
                if k != cut:
                    return
                if how == "stall":
                    time.sleep(rng.uniform(0.5, 3.0))
                elif how in ("reset", "disconnect"):
                    raise Abort

            if kind == "get":
                c.relayed = False
                for k in range(rng.randint(1, 3)):
                    n = rng.choice([0, 100, 5000, 70000, 250000])
                    c.send(f"GET http://127.0.0.1:{ORIGIN.port}/{n} HTTP/1.1\r\nHost: 127.0.0.1:{ORIGIN.port}\r\n\r\n".encode())
                    c.requests += 1
                    head = c.read_head()
                    if not head.startswith(b"HTTP/1.1 200"):
                        raise ConnectionError(f"GET answered {head[:40]!r}")
                    step(k)
                    c.read(n)
                step(3)
                c.drain()
            else:
                if kind == "connect":
                    target = f"127.0.0.1:{ECHO.port}"
                    c.send(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
                    c.handshake = c.sent
                    head = c.read_head()
                    if not head.startswith(b"HTTP/1.1 200"):
                        raise ConnectionError(f"CONNECT answered {head[:40]!r}")
                elif kind == "socks":
                    c.send(b"\x05\x01\x00")
                    if c.read(2) != b"\x05\x00":
                        raise ConnectionError("SOCKS5 method refused")
                    c.send(b"\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1") + struct.pack(">H", ECHO.port))
                    c.handshake = c.sent
                    rep = c.read(10)
                    if rep[1] != 0:
                        raise ConnectionError(f"SOCKS5 reply {rep[1]}")
                for k in range(4):
                    n = rng.choice([1, 1000, 16000, 64000])
                    chunk = body(n)
                    c.send(chunk)
                    step(k)
                    if c.read(n) != chunk:
                        raise ConnectionError("the echo differs from what was sent")
                c.drain()
        except Abort:
            clean = False
            c.abort(how == "reset")
        except OSError as e:
            clean = False
            errors.append(f"{kind}/{how}: {e}")
            c.abort(True)
        with rec_lock:
            up = c.sent - c.handshake if c.relayed else None
            # Access lines: one per request of a GET connection, else one.
            records.append((service, c.port, c.sent, c.recv, clean, c.requests if kind == "get" else 1, up))
            counts[(kind, how)] = counts.get((kind, how), 0) + 1
        time.sleep(rng.uniform(0.0, 0.05))


# ---------------------------------------------------------------- the run

time.sleep(0.5)
base_fds = fds()
base_sockets = sockets()
base_rss = rss_kib()
log(f"soak: {os.path.basename(args.bin)} pid {PID}, {args.duration:.0f} s, seed {args.seed}, "
    f"{args.clients} clients; at start RSS {base_rss} KiB, {base_fds} fds")
start = time.monotonic()
deadline = start + args.duration
threads = [threading.Thread(target=client, args=(i, deadline), daemon=True) for i in range(args.clients)]
for t in threads:
    t.start()

samples = []  # (t, rss KiB, fds, active, up, down)
cpu0 = None
while any(t.is_alive() for t in threads):
    time.sleep(args.interval)
    if proxy.poll() is not None:
        fail(f"the proxy exited with {proxy.returncode} during the run")
    m = metrics()
    active = sum(v for (n, s, _), v in m.items() if n == "portico_connections_active" and s != "status")
    up = sum(v for (n, s, d), v in m.items() if n == "portico_bytes_total" and d == "up" and s != "status")
    down = sum(v for (n, s, d), v in m.items() if n == "portico_bytes_total" and d == "down" and s != "status")
    sample = (time.monotonic() - start, rss_kib(), fds(), active, up, down)
    samples.append(sample)
    log("  t=%5.0fs rss=%6d KiB fds=%4d active=%3d up=%d down=%d" % sample)
    if time.monotonic() > deadline + 120:
        fail("clients still busy 120 s after the end")
elapsed = time.monotonic() - start
with open(f"/proc/{PID}/stat") as f:
    st = f.read().rsplit(")", 1)[1].split()
    cpu_s = (int(st[11]) + int(st[12])) / os.sysconf("SC_CLK_TCK")

# Nothing left open, within a bound.
settle = time.monotonic() + 30
while True:
    m = metrics()
    active = {s: v for (n, s, _), v in m.items() if n == "portico_connections_active" and v}
    conns = status_get("/connections")
    others = [x for x in re.findall(r'"service":"(\w+)"', conns) if x != "status"]
    left_fds, left_sockets = fds(), sockets()
    # The scrape's own socket may still be open.
    if not others and set(active) <= {"status"} and active.get("status", 0) <= 1 \
            and left_sockets <= base_sockets + 1:
        break
    if time.monotonic() > settle:
        fail(f"30 s after the clients finished: in flight {active}, /connections lists {others}, "
             f"{left_sockets} sockets (at start {base_sockets}), {left_fds} fds (at start {base_fds})")
    time.sleep(0.5)

# Stop the proxy so that every access line is written.
proxy.send_signal(signal.SIGTERM)
try:
    proxy.wait(timeout=30)
except subprocess.TimeoutExpired:
    fail("the proxy did not exit within 30 s of SIGTERM")

# ---------------------------------------------------------------- checks

problems = []

# memory
warm = max(10.0, 0.2 * args.duration)
after = [s for s in samples if s[0] >= warm]
if len(after) < 6:
    problems.append(f"memory: only {len(after)} samples after the {warm:.0f} s warm-up; run longer")
    first_max = last_max = 0
else:
    third = len(after) // 3
    first_max = max(s[1] for s in after[:third])
    last_max = max(s[1] for s in after[-third:])
    allowed = max(1.10 * first_max, first_max + 1024)
    if last_max > allowed:
        problems.append(f"memory: RSS grew from {first_max} KiB (largest, first third after warm-up) "
                        f"to {last_max} KiB (largest, last third): more than {allowed:.0f} KiB")

# bytes: the access log per client connection
line_re = re.compile(r"^\S+ (\w+) 127\.0\.0\.1:(\d+) \S+ (\S+) \S+ \S+ (\S+) up=(\d+) down=(\d+) ")
lines = {}
per_service = {}
status_lines = 0
for line in open(access_path):
    g = line_re.match(line)
    if not g:
        problems.append(f"bytes: an access line not understood: {line.strip()}")
        continue
    svc, port, method, outcome, up, down = g.groups()
    if svc == "status":
        status_lines += 1
        continue
    key = (svc, int(port))
    u, d, n = lines.get(key, (0, 0, 0))
    lines[key] = (u + int(up), d + int(down), n + 1)
    pu, pd, pn = per_service.get(svc, (0, 0, 0))
    per_service[svc] = (pu + int(up), pd + int(down), pn + 1)

by_port = {}
# A client port may come again in a long run: its connections are summed.
for svc, port, sent, recv, clean, nlines, relayed in records:
    s, r, all_clean, want_lines, n = by_port.get((svc, port), (0, 0, True, 0, 0))
    # up= counts what was relayed upstream; for GETs (rewritten) at most
    # what was sent.
    s = None if s is None or relayed is None else s + relayed
    by_port[(svc, port)] = (s, r + recv, all_clean and clean, want_lines + nlines, n + 1)
mismatched = []
for key, (relayed, recv, clean, want_lines, n) in by_port.items():
    up, down, nlines = lines.get(key, (0, 0, 0))
    want_up = up if relayed is None else relayed
    if clean and (up, down, nlines) != (want_up, recv, want_lines):
        mismatched.append(f"{key}: relayed {relayed} received {recv} in {want_lines} records; "
                          f"logged up={up} down={down} in {nlines} lines")
    if not clean and ((relayed is not None and up > relayed) or down < recv or nlines == 0):
        mismatched.append(f"{key} (cut short): relayed {relayed} received {recv}; "
                          f"logged up={up} down={down} in {nlines} lines")
for key in lines.keys() - by_port.keys():
    mismatched.append(f"{key}: logged, but no client made it")
if mismatched:
    problems.append(f"bytes: {len(mismatched)} connections not accounted for, e.g. " + "; ".join(mismatched[:5]))

# bytes and connections: the metrics against the log and the clients
made = {}
for svc, *_ in records:
    made[svc] = made.get(svc, 0) + 1
for svc in ("web", "socks", "map"):
    up = m.get(("portico_bytes_total", svc, "up"), 0)
    down = m.get(("portico_bytes_total", svc, "down"), 0)
    total = m.get(("portico_connections_total", svc, None), 0)
    lu, ld, _ = per_service.get(svc, (0, 0, 0))
    if (up, down) != (lu, ld):
        problems.append(f"bytes: {svc}: portico_bytes_total up={up} down={down}, the access log up={lu} down={ld}")
    if total != made.get(svc, 0):
        problems.append(f"open: {svc}: portico_connections_total {total}, the clients made {made.get(svc, 0)}")

# ---------------------------------------------------------------- report

clean_n = sum(1 for r in records if r[4])
sent = sum(r[2] for r in records)
recv = sum(r[3] for r in records)
log(f"soak: {len(records)} connections in {elapsed:.0f} s ({clean_n} clean, {len(records) - clean_n} cut short), "
    f"clients sent {sent} and received {recv} bytes; proxy CPU {cpu_s:.1f} s "
    f"({100 * cpu_s / elapsed:.0f}% of one core)")
log("soak: by kind/behaviour: " + ", ".join(f"{k}/{h} {n}" for (k, h), n in sorted(counts.items())))
if samples:
    log(f"soak: RSS at start {base_rss} KiB, largest after warm-up: first third {first_max} KiB, "
        f"last third {last_max} KiB; sockets at start {base_sockets}, at the end {left_sockets} "
        f"(the scrape's own included); fds at start {base_fds}, at the end {left_fds}")
if errors:
    problems.append(f"clients: {len(errors)} errors the proxy caused, e.g. {errors[:3]}")
if problems:
    for p in problems:
        log(f"soak FAILED: {p}")
    log(f"soak: files kept in {tmp}")
    sys.exit(1)
log("soak: passed (memory flat, nothing left open, every byte accounted for)")
if not args.keep:
    for f in os.listdir(tmp):
        os.unlink(os.path.join(tmp, f))
    os.rmdir(tmp)
