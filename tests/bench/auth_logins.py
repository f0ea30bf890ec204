#!/usr/bin/env python3
"""Password floods against the health of everything else.

N clients log in to a SOCKS5 service over and over with a wrong password
(every login a real argon2 check: the hash `portico hash-password` makes,
no verdict cache, no throttling), while this process asks the status
service for /healthz every 10 ms and times each answer. A proxy that checks
passwords on its event loop makes /healthz wait behind the checks; one that
hands them to a pool does not.

Usage (from the project root, after `cargo build --release --bins`):

    tests/bench/auth_logins.py [--seconds S] [--clients 8,64] BINARY...

BINARY: a portico or portico-threaded executable; an older build that does
not know `[limits] auth_cache` / `auth_failures` is detected and started
without them. Prints, per binary and client count, the /healthz latency
(p50, p99, max, in ms) and the logins answered per second. Runs on
127.0.0.1 only, with one worker.
"""

import argparse
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def hash_password(binary, password):
    out = subprocess.run([binary, "hash-password"], input=password.encode(),
                         capture_output=True, check=True, timeout=30)
    return out.stdout.decode().strip()


def config(phc, socks, status, new_keys):
    limits = ("[limits]\nauth_cache = \"0s\"\nauth_failures = 4294967295\n"
              if new_keys else "")
    return f"""[network]
internal = ["127.0.0.1"]
[runtime]
workers = 1
[log]
access = "off"
{limits}[[user]]
name = "alice"
password = "{phc}"
[[service]]
name = "socks"
kind = "socks"
port = {socks}
auth = true
[[service]]
name = "status"
kind = "status"
port = {status}
"""


def knows_new_keys(binary, phc):
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write(config(phc, free_port(), free_port(), True))
    try:
        r = subprocess.run([binary, "--config", f.name, "--check"],
                           capture_output=True, timeout=30)
        return r.returncode == 0
    finally:
        os.unlink(f.name)


def wait_listening(port, limit=10.0):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on 127.0.0.1:{port}")


def one_login(port):
    """A SOCKS5 login with a wrong password; True when it was answered."""
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    try:
        s.sendall(b"\x05\x01\x02")
        if s.recv(2) != b"\x05\x02":
            return False
        user, pw = b"alice", b"wrong-password"
        s.sendall(bytes([1, len(user)]) + user + bytes([len(pw)]) + pw)
        return len(s.recv(2)) == 2
    finally:
        s.close()


def flood(port, clients, stop_at, counter):
    def loop():
        n = 0
        while time.monotonic() < stop_at:
            try:
                n += one_login(port)
            except OSError:
                pass
        with counter.get_lock():
            counter.value += n
    threads = [threading.Thread(target=loop) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def healthz(port):
    t0 = time.perf_counter()
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    try:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        while s.recv(4096):
            pass
    finally:
        s.close()
    return (time.perf_counter() - t0) * 1000.0


def run(binary, clients, seconds, phc, new_keys):
    socks, status = free_port(), free_port()
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write(config(phc, socks, status, new_keys))
    proc = subprocess.Popen([binary, "--config", f.name],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(socks)
        wait_listening(status)
        counter = multiprocessing.Value("l", 0)
        stop_at = time.monotonic() + seconds
        # The flood in a process of its own: this one only times /healthz.
        p = multiprocessing.Process(target=flood, args=(socks, clients, stop_at, counter))
        p.start()
        time.sleep(0.5)  # the flood under way
        lat = []
        while time.monotonic() < stop_at - 0.2:
            lat.append(healthz(status))
            time.sleep(0.01)
        p.join(timeout=seconds + 60)
        lat.sort()
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
        return (statistics.median(lat), p99, lat[-1], len(lat),
                counter.value / seconds)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        os.unlink(f.name)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--clients", default="8,64")
    ap.add_argument("binaries", nargs="+")
    a = ap.parse_args()
    print("| binary | clients | /healthz p50 ms | p99 ms | max ms | samples | logins/s |")
    print("|---|---|---|---|---|---|---|")
    for clients in [int(c) for c in a.clients.split(",")]:
        for b in a.binaries:
            phc = hash_password(b, "secret")
            new_keys = knows_new_keys(b, phc)
            p50, p99, mx, n, rate = run(b, clients, a.seconds, phc, new_keys)
            print(f"| {b} | {clients} | {p50:.2f} | {p99:.2f} | {mx:.2f} | {n} | {rate:.0f} |",
                  flush=True)


if __name__ == "__main__":
    sys.exit(main())
