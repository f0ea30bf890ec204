#!/usr/bin/env python3
"""How long a Portico binary takes to serve again once file descriptors come
free: a measurement, not a pass/fail test (timings vary with the machine).

Starts BIN with RLIMIT_NOFILE=$NOFILE (default 64, as in
tests/tests/resources.rs) as a mapped TCP proxy to a local echo server, opens
$CLIENTS connections (default 100; most cannot be served), waits until the
backend sees no new connection for 0.5 s, closes every client, and times the
first new connection that gets its bytes echoed. Prints one figure per run,
then the median.

    python3 tests/bench/fd_recovery.py target/debug/portico-threaded 10
    NOFILE=63 python3 tests/bench/fd_recovery.py target/debug/portico 3
"""
import os, resource, socket, subprocess, sys, threading, time, tempfile

BIN = sys.argv[1]
RUNS = int(sys.argv[2]) if len(sys.argv) > 2 else 5
CLIENTS = int(os.environ.get("CLIENTS", "100"))
NOFILE = int(os.environ.get("NOFILE", "64"))

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

class Echo:
    def __init__(self):
        self.l = socket.socket(); self.l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.l.bind(("127.0.0.1", 0)); self.l.listen(1024)
        self.addr = self.l.getsockname(); self.accepted = 0
        threading.Thread(target=self.run, daemon=True).start()
    def run(self):
        while True:
            c, _ = self.l.accept(); self.accepted += 1
            threading.Thread(target=self.serve, args=(c,), daemon=True).start()
    def serve(self, c):
        try:
            while True:
                d = c.recv(65536)
                if not d: break
                c.sendall(d)
        except OSError: pass
        finally: c.close()

def one(echo):
    port = free_port()
    cfg = f'''[network]
internal = ["127.0.0.1"]
[limits]
idle_timeout = "5m"
[log]
access = "off"
[[service]]
name = "map"
kind = "mapped"
listen = ["127.0.0.1:{port}"]
destination = "{echo.addr[0]}:{echo.addr[1]}"
'''
    d = tempfile.mkdtemp(); path = os.path.join(d, "p.toml"); open(path, "w").write(cfg)
    def lim(): resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))
    p = subprocess.Popen([BIN, "--config", path], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, preexec_fn=lim)
    while not p.stdout.readline().startswith(b"listening:"): pass
    conns = []
    for _ in range(CLIENTS):
        try:
            c = socket.create_connection(("127.0.0.1", port), timeout=2); c.sendall(b"x"); conns.append(c)
        except OSError: pass
    last, t = echo.accepted, time.monotonic()
    while time.monotonic() - t < 0.5:
        time.sleep(0.02)
        if echo.accepted != last: last, t = echo.accepted, time.monotonic()
    t0 = time.monotonic()
    for c in conns: c.close()
    tries = 0
    while True:
        tries += 1
        try:
            c = socket.create_connection(("127.0.0.1", port), timeout=2); c.settimeout(2)
            c.sendall(b"back"); got = b""
            while len(got) < 4:
                d = c.recv(4)
                if not d: break
                got += d
            c.close()
            if got == b"back": break
        except OSError: pass
        if time.monotonic() - t0 > 15: break
        time.sleep(0.01)
    el = time.monotonic() - t0
    p.kill(); p.wait()
    return el, tries

echo = Echo()
res = []
for _ in range(RUNS):
    el, tries = one(echo); res.append(el)
    print(f"{os.path.basename(BIN)}: served again {el*1000:.0f} ms after the clients left ({tries} tries)", flush=True)
res.sort()
print(f"{os.path.basename(BIN)}: median {res[len(res)//2]*1000:.0f} ms, min {res[0]*1000:.0f}, max {res[-1]*1000:.0f}")
