#!/usr/bin/env python3
"""SOCKS5 UDP ASSOCIATE: Portico against Dante, and against a UDP mapped port.

Two measurements, side by side in one run, on 127.0.0.1 only:

1. dns: DNS queries per second through a SOCKS5 UDP association (RFC 1928
   section 7 header on every datagram) to dnsmasq, which answers
   example.test itself (no cache, no upstream), through `portico`,
   `portico-threaded` and Dante (`danted`).
2. echo: datagrams per second (SIZE bytes each) to a UDP echo server,
   through a Portico UDP mapped port (no SOCKS header), and through an
   association on `portico`, `portico-threaded` and Dante.

Each client process makes its association (its own TCP connection), then
keeps WINDOW datagrams outstanding for SECONDS: one sent for each answer,
and the window sent again after 100 ms without an answer (a loss). The
proxy's CPU time (utime + stime from /proc, for Dante all its processes
and the children they reaped) is read around the timed part and given
per answered datagram: the Python clients take part of the same cores, so
that figure says more than the rate on a shared machine. The proxies are
interleaved (A B C, A B C) for REPS repetitions; the table gives medians.

Usage (from the project root; builds the release binaries when missing):

    tests/bench/socks_udp.py [-r REPS] [-t SECONDS] [-c CLIENTS]
                             [-w WINDOW] [-s SIZE] [--quick]

--quick: one repetition of one second per case (to check that it works).
Needs dnsmasq (dnsmasq-base) and danted (dante-server); run as root (Dante
switches between root and nobody).
"""

import argparse
import multiprocessing
import os
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RELEASE = os.path.join(ROOT, "target", "release")
HOST = "127.0.0.1"
LOSS_WAIT = 0.1  # seconds without an answer before the window is sent again
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port(kind=socket.SOCK_STREAM):
    s = socket.socket(socket.AF_INET, kind)
    s.bind((HOST, 0))
    port = s.getsockname()[1]
    s.close()
    return port


def free_port_both():
    """A port free for TCP and UDP both (a SOCKS service and the echo)."""
    for _ in range(100):
        p = free_port()
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            u.bind((HOST, p))
            return p
        except OSError:
            continue
        finally:
            u.close()
    raise SystemExit("no free port on 127.0.0.1")


def wait_tcp(port, proc, limit=15.0):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{proc.args[0]} exited ({proc.returncode}) before listening")
        try:
            socket.create_connection((HOST, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {HOST}:{port}")


def wait_udp(port, payload, check, limit=15.0):
    """Bounded wait until a UDP server on `port` answers `payload`."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(0.2)
    deadline = time.monotonic() + limit
    try:
        while time.monotonic() < deadline:
            s.sendto(payload, (HOST, port))
            try:
                if check(s.recv(65535)):
                    return
            except OSError:
                pass
        raise SystemExit(f"no UDP answer on {HOST}:{port}")
    finally:
        s.close()


# --- CPU time of a process and its descendants --------------------------------

def _stat(pid):
    with open(f"/proc/{pid}/stat") as f:
        data = f.read()
    fields = data[data.rindex(")") + 2:].split()
    # fields[0] is field 3 (state): ppid 4, utime 14, stime 15, cutime 16, cstime 17
    return int(fields[1]), sum(int(x) for x in fields[11:15])


def tree_cpu(root):
    """CPU seconds of `root` and every live descendant, each with the time of
    the children it reaped (so a short-lived child is counted once)."""
    procs = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                procs[int(name)] = _stat(name)
            except (OSError, ValueError, IndexError):
                pass
    kids = {}
    for pid, (ppid, _) in procs.items():
        kids.setdefault(ppid, []).append(pid)
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        if pid in procs:
            total += procs[pid][1]
        todo.extend(kids.get(pid, ()))
    return total / CLK_TCK


# --- servers -------------------------------------------------------------------

class Servers:
    """Everything started, stopped in reverse order at the end."""

    def __init__(self, tmp):
        self.tmp = tmp
        self.procs = []

    def start(self, argv, name):
        log = open(os.path.join(self.tmp, f"{name}.log"), "wb")
        p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        self.procs.append(p)
        return p

    def stop(self, p):
        if p.poll() is None:
            # SIGTERM to the process alone: danted takes its children down.
            p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except OSError:
                    pass
                p.wait(timeout=10)
        if p in self.procs:
            self.procs.remove(p)

    def stop_all(self):
        for p in reversed(list(self.procs)):
            self.stop(p)
        reap_orphans()


def become_subreaper():
    """Dante's mother exits on SIGTERM without waiting for its children:
    made their reaper, this process collects them (see reap_orphans)."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass


def reap_orphans(limit=10.0):
    """Bounded wait for every remaining child (call once the clients and the
    echo server are joined: it would take theirs too)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            time.sleep(0.05)


def echo_server(port, ready):
    import asyncio

    class Echo(asyncio.DatagramProtocol):
        def connection_made(self, transport):
            self.t = transport

        def datagram_received(self, data, addr):
            self.t.sendto(data, addr)

    async def main():
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(Echo, local_addr=(HOST, port))
        ready.set()
        await asyncio.Event().wait()

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops the run
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    asyncio.run(main())


def start_dnsmasq(srv):
    port = free_port(socket.SOCK_DGRAM)
    p = srv.start(["dnsmasq", "--no-daemon", "--conf-file=/dev/null", f"--port={port}",
                   "--listen-address=127.0.0.1", "--bind-interfaces",
                   "--address=/example.test/192.0.2.1", "--no-resolv", "--no-hosts",
                   "--cache-size=0", "--pid-file=", "--user=root"], "dnsmasq")
    wait_udp(port, dns_query(1), lambda a: a[:2] == b"\x00\x01")
    return p, port


def start_portico(srv, binary, socks, mapped, echo):
    cfg = os.path.join(srv.tmp, f"{os.path.basename(binary)}.toml")
    with open(cfg, "w") as f:
        f.write(f"""[network]
internal = ["127.0.0.1"]
[runtime]
workers = 1
[log]
access = "off"
[[service]]
name = "socks"
kind = "socks"
listen = ["127.0.0.1:{socks}"]
commands = ["udp"]
[[service]]
name = "udp"
kind = "mapped"
protocol = "udp"
listen = ["127.0.0.1:{mapped}"]
destination = "127.0.0.1:{echo}"
""")
    p = srv.start([binary, "--config", cfg], os.path.basename(binary))
    wait_tcp(socks, p)
    return p


def start_dante(srv, port):
    cfg = os.path.join(srv.tmp, "danted.conf")
    with open(cfg, "w") as f:
        f.write(f"""logoutput: {srv.tmp}/danted-own.log
internal: 127.0.0.1 port = {port}
external: 127.0.0.1
clientmethod: none
socksmethod: none
user.privileged: root
user.unprivileged: nobody
client pass {{ from: 127.0.0.0/8 to: 0.0.0.0/0 }}
socks pass {{ from: 127.0.0.0/8 to: 0.0.0.0/0 command: connect udpassociate udpreply }}
""")
    p = srv.start(["danted", "-f", cfg, "-p", os.path.join(srv.tmp, "danted.pid")], "danted")
    wait_tcp(port, p)
    return p


# --- clients -------------------------------------------------------------------

def dns_query(qid):
    return (struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
            + b"\x07example\x04test\x00" + struct.pack(">HH", 1, 1))


def socks_header(port):
    return b"\x00\x00\x00\x01" + socket.inet_aton(HOST) + struct.pack(">H", port)


def recv_exact(s, n):
    buf = b""
    while len(buf) < n:
        part = s.recv(n - len(buf))
        if not part:
            raise OSError("the proxy closed the connection")
        buf += part
    return buf


def associate(proxy_port, udp):
    """SOCKS5 UDP ASSOCIATE naming `udp`'s address: the TCP connection (kept
    open for the association's life) and the relay's address."""
    t = socket.create_connection((HOST, proxy_port), timeout=10)
    t.sendall(b"\x05\x01\x00")
    if recv_exact(t, 2) != b"\x05\x00":
        raise OSError("the proxy refused method 00 (no authentication)")
    ip, port = udp.getsockname()
    t.sendall(b"\x05\x03\x00\x01" + socket.inet_aton(ip) + struct.pack(">H", port))
    head = recv_exact(t, 4)
    if head[1] != 0:
        raise OSError(f"UDP ASSOCIATE answered {head[1]:02x}")
    if head[3] == 1:
        addr = socket.inet_ntoa(recv_exact(t, 4))
    elif head[3] == 4:
        addr = socket.inet_ntop(socket.AF_INET6, recv_exact(t, 16))
    else:
        addr = recv_exact(t, recv_exact(t, 1)[0]).decode()
    rport = struct.unpack(">H", recv_exact(t, 2))[0]
    if addr in ("0.0.0.0", "::"):
        addr = HOST
    return t, (addr, rport)


def client(mode, proxy_port, dest_port, window, size, seconds, ready, go, out):
    """One client process: set up, wait for `go`, run, put (answers, losses)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops the run
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind((HOST, 0))
    tcp = None
    try:
        if mode == "mapped":
            target, head = (HOST, proxy_port), b""
        else:
            tcp, target = associate(proxy_port, udp)
            head = socks_header(dest_port)
        if mode == "dns":
            def payload(n):
                return head + dns_query(n & 0xFFFF)
        else:
            body = b"x" * size

            def payload(n):
                return head + body
        hl = len(head)
        udp.connect(target)
        udp.settimeout(LOSS_WAIT)
        # One exchange before the clock starts: the path works end to end.
        for _ in range(50):
            udp.send(payload(0))
            try:
                udp.recv(65535)
                break
            except socket.timeout:
                continue
        else:
            raise OSError(f"{mode}: no answer through the proxy")
        ready.put(None)
        go.wait()
        # Drain what came late from the check above.
        udp.setblocking(False)
        try:
            while True:
                udp.recv(65535)
        except BlockingIOError:
            pass
        udp.settimeout(LOSS_WAIT)
        answers = losses = n = 0
        stop_at = time.monotonic() + seconds
        for _ in range(window):
            n += 1
            udp.send(payload(n))
        while time.monotonic() < stop_at:
            try:
                data = udp.recv(65535)
            except socket.timeout:
                losses += window
                for _ in range(window):
                    n += 1
                    udp.send(payload(n))
                continue
            if mode == "dns" and (len(data) < hl + 12 or data[hl + 2] & 0x80 == 0):
                continue
            answers += 1
            n += 1
            udp.send(payload(n))
        out.put((answers, losses))
    except Exception as e:  # reported to the parent, which stops everything
        ready.put(f"{mode}: {e}")
        out.put(None)
    finally:
        udp.close()
        if tcp is not None:
            tcp.close()


def measure(mode, proxy_pid, proxy_port, dest_port, a):
    ctx = multiprocessing.get_context("fork")
    ready, out, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    ps = [ctx.Process(target=client, args=(mode, proxy_port, dest_port, a.window, a.size,
                                           a.seconds, ready, go, out), daemon=True)
          for _ in range(a.clients)]
    for p in ps:
        p.start()
    try:
        for _ in ps:
            err = ready.get(timeout=30)
            if err is not None:
                raise SystemExit(err)
        cpu0 = tree_cpu(proxy_pid)
        go.set()
        results = [out.get(timeout=a.seconds + 30) for _ in ps]
        cpu1 = tree_cpu(proxy_pid)
    finally:
        for p in ps:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
    if any(r is None for r in results):
        raise SystemExit(f"{mode}: a client failed")
    answers = sum(r[0] for r in results)
    losses = sum(r[1] for r in results)
    # Each client runs `seconds` from `go`; the CPU window (go to the last result) is a
    # little wider, which counts the proxy's idle time only.
    cpu_us = (cpu1 - cpu0) * 1e6 / answers if answers else float("nan")
    return answers / a.seconds, cpu_us, losses


# --- the run -------------------------------------------------------------------

def ensure_binaries():
    bins = [os.path.join(RELEASE, b) for b in ("portico", "portico-threaded")]
    if not all(os.access(b, os.X_OK) for b in bins):
        subprocess.run(["cargo", "build", "--release", "--bins"], cwd=ROOT, check=True)
    for tool, pkg in (("dnsmasq", "dnsmasq-base"), ("danted", "dante-server")):
        if shutil.which(tool) is None and not os.access(f"/usr/sbin/{tool}", os.X_OK):
            raise SystemExit(f"{tool} is missing: apt-get install {pkg}")
    return bins


def fmt_rate(v):
    return f"{v:,.0f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-r", "--reps", type=int, default=3, help="repetitions (default 3)")
    ap.add_argument("-t", "--seconds", type=float, default=5.0,
                    help="seconds per case (default 5)")
    ap.add_argument("-c", "--clients", type=int, default=2,
                    help="client processes per case (default 2)")
    ap.add_argument("-w", "--window", type=int, default=32,
                    help="datagrams outstanding per client (default 32)")
    ap.add_argument("-s", "--size", type=int, default=512,
                    help="echo datagram size in bytes (default 512)")
    ap.add_argument("--quick", action="store_true",
                    help="1 repetition of 1 second per case")
    a = ap.parse_args()
    if a.quick:
        a.reps, a.seconds = 1, 1.0
    if os.environ.get("PATH", "").find("/usr/sbin") < 0:
        os.environ["PATH"] += ":/usr/sbin:/sbin"
    portico, threaded = ensure_binaries()

    become_subreaper()
    tmp = tempfile.mkdtemp(prefix="socks-udp-")
    srv = Servers(tmp)
    ctx = multiprocessing.get_context("fork")
    echo = None
    # Ctrl-C and SIGTERM end the run through the finally below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        _, dns_port = start_dnsmasq(srv)
        echo_port = free_port(socket.SOCK_DGRAM)
        ready = ctx.Event()
        echo = ctx.Process(target=echo_server, args=(echo_port, ready), daemon=True)
        echo.start()
        if not ready.wait(15):
            raise SystemExit("the echo server did not start")
        # The proxies run for the whole run, each idle while another is measured.
        ports = {}
        procs = {}
        for name, binary in (("portico", portico), ("portico-threaded", threaded)):
            ports[name] = (free_port_both(), free_port_both())
            procs[name] = start_portico(srv, binary, ports[name][0], ports[name][1], echo_port)
        ports["dante"] = (free_port_both(), None)
        procs["dante"] = start_dante(srv, ports["dante"][0])

        dns_cases = [("portico", "dns", "portico"),
                     ("portico-threaded", "dns", "portico-threaded"),
                     ("dante", "dns", "dante")]
        echo_cases = [("mapped port (portico)", "mapped", "portico"),
                      ("portico", "echo", "portico"),
                      ("portico-threaded", "echo", "portico-threaded"),
                      ("dante", "echo", "dante")]
        res = {}
        for rep in range(a.reps):
            for label, mode, proxy in dns_cases + echo_cases:
                if mode == "mapped":
                    port, dest = ports[proxy][1], echo_port
                else:
                    port, dest = ports[proxy][0], dns_port if mode == "dns" else echo_port
                r = measure(mode, procs[proxy].pid, port, dest, a)
                res.setdefault((mode == "dns", label), []).append(r)
                print(f"# rep {rep + 1}/{a.reps} {mode:6} {label:22} {fmt_rate(r[0]):>9}/s "
                      f"{r[1]:8.1f} µs CPU each, {r[2]} lost", file=sys.stderr, flush=True)
    finally:
        if echo is not None and echo.is_alive():
            echo.terminate()
            echo.join(timeout=5)
        srv.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)

    def med(key):
        rs = res[key]
        return (statistics.median(r[0] for r in rs), statistics.median(r[1] for r in rs),
                sum(r[2] for r in rs))

    print(f"SOCKS5 UDP, {a.clients} clients x window {a.window}, {a.seconds:g} s per case, "
          f"medians of {a.reps}\n")
    print("| DNS through UDP ASSOCIATE | queries/s | / Dante | proxy CPU µs per query "
          "| / Dante | lost |")
    print("|---|---|---|---|---|---|")
    base = med((True, "dante"))
    for label, _, _ in dns_cases:
        rate, cpu, lost = med((True, label))
        print(f"| {label} | {fmt_rate(rate)} | {rate / base[0]:.2f} | {cpu:.1f} "
              f"| {cpu / base[1]:.2f} | {lost} |")
    print(f"\n| echo, {a.size}-byte datagrams | datagrams/s | / mapped | proxy CPU µs per "
          "datagram | / mapped | lost |")
    print("|---|---|---|---|---|---|")
    base = med((False, "mapped port (portico)"))
    for label, _, _ in echo_cases:
        rate, cpu, lost = med((False, label))
        print(f"| {label} | {fmt_rate(rate)} | {rate / base[0]:.2f} | {cpu:.1f} "
              f"| {cpu / base[1]:.2f} | {lost} |")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit("interrupted: everything started was stopped")
