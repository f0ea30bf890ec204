//! Signals, shutdown and start-up failures.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use portico_tests::{
    both, config_head, connect, echo_check, free_port, local, mapped_config, mapped_service,
    poll_until, read_outcome, run_on_config, start_mapped, Behaviour, Bin, Portico, ReadOutcome,
    TempDir, TestServer, START_TIMEOUT,
};

both!(
    sigterm_exits_zero_after_grace,
    sigint_exits_zero_after_grace,
    sigterm_stops_accepting_keeps_connections,
    listen_address_in_use,
    sighup_does_not_stop_the_proxy,
    sighup_reloads_configuration,
    start_lines_on_one_terminal,
);

fn signal_exits_zero(bin: Bin, sig: i32, name: &str) {
    let server = TestServer::start(Behaviour::Echo);
    let (mut p, addr) = start_mapped(bin, server.addr(), "shutdown_grace = \"1s\"", "");
    let mut c = connect(addr).unwrap_or_else(|e| panic!("{bin}: connect: {e}"));
    echo_check(&mut c, b"x").unwrap_or_else(|e| panic!("{bin}: echo before {name}: {e}"));
    let sent = Instant::now();
    p.signal(sig);
    let st = p.wait_exit(Duration::from_secs(20));
    assert_eq!(
        st.code(),
        Some(0),
        "{bin}: exit status after {name} with an idle connection open and shutdown_grace = 1s: {st}\nstderr:\n{}",
        p.stderr_text()
    );
    eprintln!("{bin}: exited {:?} after {name}", sent.elapsed());
    let outcome = read_outcome(&mut c, Duration::from_secs(5));
    assert!(
        outcome.is_closed(),
        "{bin}: the idle connection must be closed once the proxy exited; got {outcome:?}"
    );
    assert!(
        connect(addr).is_err(),
        "{bin}: after {name} and exit, the port must not accept connections"
    );
}

fn sigterm_exits_zero_after_grace(bin: Bin) {
    signal_exits_zero(bin, libc::SIGTERM, "SIGTERM");
}

fn sigint_exits_zero_after_grace(bin: Bin) {
    signal_exits_zero(bin, libc::SIGINT, "SIGINT");
}

/// During the grace period new connections are not served, the ones in
/// flight keep working, and once the last one ends the process exits 0
/// without waiting out the rest of a long grace.
fn sigterm_stops_accepting_keeps_connections(bin: Bin) {
    let server = TestServer::start(Behaviour::Echo);
    let (mut p, addr) = start_mapped(bin, server.addr(), "shutdown_grace = \"30s\"", "");
    let mut c = connect(addr).unwrap_or_else(|e| panic!("{bin}: connect: {e}"));
    echo_check(&mut c, b"x").unwrap_or_else(|e| panic!("{bin}: echo before SIGTERM: {e}"));
    p.signal(libc::SIGTERM);

    // A new attempt is refused, closed, or left unanswered. One accepted in
    // the instant before the signal was handled may still be served, so
    // retry for a bounded time.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match connect(addr) {
            Err(_) => break,
            Ok(mut n) => {
                let _ = std::io::Write::write_all(&mut n, b"?");
                match read_outcome(&mut n, Duration::from_millis(500)) {
                    ReadOutcome::Data(_) => {} // served: accepted before the signal? retry
                    _ => break,
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "{bin}: 10 s after SIGTERM, new connections are still accepted and served"
        );
    }
    assert!(
        p.is_running(),
        "{bin}: with shutdown_grace = 30s and a connection open, the process must still run\nstderr:\n{}",
        p.stderr_text()
    );
    echo_check(&mut c, b"still here").unwrap_or_else(|e| {
        panic!("{bin}: a connection in flight must keep working during the grace period: {e}")
    });
    drop(c);
    let st = p.wait_exit(Duration::from_secs(10));
    assert_eq!(
        st.code(),
        Some(0),
        "{bin}: exit status once the last connection ended during the grace period: {st}"
    );
}

fn listen_address_in_use(bin: Bin) {
    // Port 0: the kernel picks a port nobody else can take meanwhile.
    let taken = TcpListener::bind(local(0)).expect("bind a port first");
    let port = taken.local_addr().expect("local_addr").port();
    let (_path, out) = run_on_config(
        bin,
        &mapped_config(port, local(9), "", ""),
        &[],
        Duration::from_secs(20),
    );
    assert_eq!(
        out.code(),
        Some(1),
        "{bin}: a listen address in use is a runtime failure (exit 1): {out:?}"
    );
    let want = format!("cannot listen on 127.0.0.1:{port} for service 'map'");
    assert!(
        out.stderr.contains(&want),
        "{bin}: stderr should contain {want:?}:\n{}",
        out.stderr
    );
}

fn named_service(name: &str, port: u16, destination: std::net::SocketAddr) -> String {
    format!(
        "{}{}",
        config_head("", ""),
        mapped_service(name, port, destination, "")
    )
}

/// SIGHUP: new listeners open, removed ones close, connections in flight
/// keep going; a bad file is reported and the old configuration stays.
fn sighup_reloads_configuration(bin: Bin) {
    let server = TestServer::start(Behaviour::Echo);
    let (p1, p2) = (free_port(), free_port());
    let mut p = Portico::start(bin, &named_service("a", p1, server.addr()));
    let mut c = connect(local(p1)).unwrap_or_else(|e| panic!("{bin}: connect: {e}"));
    echo_check(&mut c, b"before").unwrap_or_else(|e| panic!("{bin}: echo before SIGHUP: {e}"));

    std::fs::write(p.config_path(), named_service("b", p2, server.addr()))
        .expect("rewrite the configuration");
    p.signal(libc::SIGHUP);
    let served = poll_until(Duration::from_secs(10), Duration::from_millis(20), || {
        let mut n = connect(local(p2)).ok()?;
        echo_check(&mut n, b"new").ok()
    });
    assert!(
        served.is_some(),
        "{bin}: after SIGHUP the new service on port {p2} must serve\nstderr:\n{}",
        p.stderr_text()
    );
    let closed = poll_until(Duration::from_secs(10), Duration::from_millis(20), || {
        connect(local(p1)).is_err().then_some(())
    });
    assert!(
        closed.is_some(),
        "{bin}: after SIGHUP the removed service's port {p1} must close"
    );
    echo_check(&mut c, b"in flight")
        .unwrap_or_else(|e| panic!("{bin}: a connection in flight must survive a reload: {e}"));

    let path = p
        .config_path()
        .to_str()
        .expect("utf-8 temp path")
        .to_string();
    std::fs::write(p.config_path(), "[network\n").expect("write a bad configuration");
    p.signal(libc::SIGHUP);
    let reported = p.wait_for_stderr(
        |l| l.contains(&format!("{path}:1:")),
        Duration::from_secs(10),
    );
    assert!(
        reported.is_some(),
        "{bin}: a bad file on SIGHUP must be reported as {path}:LINE:COLUMN: ...\nstderr:\n{}",
        p.stderr_text()
    );
    assert!(
        p.is_running(),
        "{bin}: a bad file on SIGHUP must not stop the proxy"
    );
    let mut n = connect(local(p2))
        .unwrap_or_else(|e| panic!("{bin}: the old configuration must stay in force: {e}"));
    echo_check(&mut n, b"still")
        .unwrap_or_else(|e| panic!("{bin}: the old configuration must stay in force: {e}"));
}

/// Whatever a reload does, SIGHUP never stops the proxy.
fn sighup_does_not_stop_the_proxy(bin: Bin) {
    let server = TestServer::start(Behaviour::Echo);
    let (mut p, addr) = start_mapped(bin, server.addr(), "", "");
    p.signal(libc::SIGHUP);
    // A negative can only be watched for a while: two seconds is far longer
    // than a proxy needs to act on a signal.
    if let Some(st) = p.try_wait_exit(Duration::from_secs(2)) {
        panic!(
            "{bin}: SIGHUP (reload) made the proxy exit ({st})\nstderr:\n{}",
            p.stderr_text()
        );
    }
    let mut c = connect(addr).unwrap_or_else(|e| panic!("{bin}: connect after SIGHUP: {e}"));
    echo_check(&mut c, b"after SIGHUP").unwrap_or_else(|e| {
        panic!(
            "{bin}: a connection after SIGHUP must be served: {e}\nstderr:\n{}",
            p.stderr_text()
        )
    });
}

/// Starts `bin` on `config` with its stdout and stderr on one pipe, as both
/// are on one terminal, and returns the first `n` lines it writes there
/// (fewer if it exits first, or if `START_TIMEOUT` passes); then stops it.
/// A pipe keeps the order of the writes into it, whichever descriptor
/// wrote them: the lines come in the order the process wrote them, which
/// is the order a terminal would show (each line is written whole, and
/// stdout is flushed at each).
fn first_lines_on_one_pipe(bin: Bin, config: &str, n: usize) -> Vec<String> {
    let dir = TempDir::new();
    let path = dir.write("portico.toml", config);
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two new descriptors into the array it is given.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2: {}", std::io::Error::last_os_error());
    // SAFETY: both are fresh and owned by nobody else.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let stderr = write.try_clone().expect("dup the pipe's write end");
    let mut cmd = Command::new(bin.path());
    cmd.arg("--config")
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::from(write))
        .stderr(Stdio::from(stderr));
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("{bin}: cannot start {}: {e}", bin.path().display()));
    // Only the child holds the write end now: the pipe ends when it exits.
    drop(cmd);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(std::fs::File::from(read)).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + START_TIMEOUT;
    let mut lines = Vec::new();
    while lines.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => lines.push(line),
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    lines
}

/// A configuration's warning (here: an open proxy on the external side) is
/// a line on stderr, the `listening:` lines are on stdout; on one terminal
/// the warning comes first, then the listening lines in the order of the
/// file (a UDP port among them), as the core queues them, in both binaries.
fn start_lines_on_one_terminal(bin: Bin) {
    for attempt in 0.. {
        let (http, udp) = (free_port(), free_port());
        let config = format!(
            r#"[network]
internal = ["127.0.0.2"]
external = ["127.0.0.1"]
[process]
user = "nobody"   # run as root, the external side needs a user to switch to

[[service]]
name = "open"
kind = "http"
side = "external"
open_proxy = true
listen = ["127.0.0.1:{http}"]

[[service]]
name = "dns"
kind = "mapped"
protocol = "udp"
side = "external"
listen = ["127.0.0.1:{udp}"]
destination = "127.0.0.1:9"
"#
        );
        let lines = first_lines_on_one_pipe(bin, &config, 3);
        if attempt < 3 && lines.iter().any(|l| l.contains("cannot listen on")) {
            // A port taken since it was found free: try others.
            continue;
        }
        let want = [
            format!("listening: open (http) on 127.0.0.1:{http}"),
            format!("listening: dns (mapped) on 127.0.0.1:{udp}"),
        ];
        let shown = lines.join("\n");
        assert_eq!(
            lines.len(),
            3,
            "{bin}: want a warning and two listening lines:\n{shown}"
        );
        assert!(
            lines[0].contains(" portico: warn: ") && lines[0].contains("open_proxy"),
            "{bin}: the open-proxy warning must come first, before the listening lines:\n{shown}"
        );
        assert_eq!(
            lines[1..],
            want,
            "{bin}: the listening lines, in the order of the file, after the warning:\n{shown}"
        );
        return;
    }
}
