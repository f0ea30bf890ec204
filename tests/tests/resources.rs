//! Running out of resources: file descriptors.

use std::io::Write;
use std::time::{Duration, Instant};

use portico_tests::logline::parse_text_line;
use portico_tests::{
    both, connect, echo_check, mapped_config, poll_until, start_on_free_port, Behaviour, Bin,
    StartOptions, TestServer,
};

both!(fd_exhaustion_neither_kills_nor_spins);

/// SPEC: running out of file descriptors never makes it spin or die: it
/// stops accepting for a moment and logs it once.
fn fd_exhaustion_neither_kills_nor_spins(bin: Bin) {
    const NOFILE: u64 = 64;
    const CLIENTS: usize = 100;
    let server = TestServer::start(Behaviour::Echo);
    let (mut p, addr) = start_on_free_port(
        bin,
        StartOptions {
            nofile: Some(NOFILE),
            ..StartOptions::default()
        },
        |port| mapped_config(port, server.addr(), "", ""),
    );

    // Each relayed connection needs two descriptors in the proxy, so most of
    // these cannot be served while the others stay open.
    let mut conns = Vec::new();
    for _ in 0..CLIENTS {
        if let Ok(mut c) = connect(addr) {
            let _ = c.write_all(b"x");
            conns.push(c);
        }
    }
    // Let the proxy take what it can: wait until the backend stops seeing
    // new connections.
    let mut last = (server.accepted(), Instant::now());
    let settled = poll_until(Duration::from_secs(20), Duration::from_millis(20), || {
        let n = server.accepted();
        if n != last.0 {
            last = (n, Instant::now());
        }
        (last.1.elapsed() >= Duration::from_millis(500)).then_some(n)
    });
    let served = settled.unwrap_or_else(|| server.accepted());

    // Measure the CPU the proxy burns while out of descriptors.
    let cpu0 = p.cpu_time();
    let window = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    let used = p.cpu_time().saturating_sub(cpu0);
    let elapsed = window.elapsed();
    eprintln!(
        "{bin}: {} clients connected, {served} reached the backend; \
         {used:?} CPU in {elapsed:?} while out of descriptors",
        conns.len()
    );
    assert!(
        p.is_running(),
        "{bin}: running out of file descriptors (RLIMIT_NOFILE = {NOFILE}) must not kill the proxy\nstderr:\n{}",
        p.stderr_text()
    );
    assert!(
        used < elapsed / 2,
        "{bin}: the proxy used {used:?} of CPU in {elapsed:?} while out of file descriptors: it spins"
    );
    // Access-log lines for refused connections are fine; diagnostics
    // should not repeat per connection or per retry.
    let diagnostics: Vec<String> = p
        .stderr_lines()
        .into_iter()
        .filter(|l| parse_text_line(l).is_err())
        .collect();
    assert!(
        diagnostics.len() <= 5,
        "{bin}: {} diagnostic lines while out of file descriptors (SPEC: it logs it once); first ones:\n{}",
        diagnostics.len(),
        diagnostics[..diagnostics.len().min(10)].join("\n")
    );

    // Once the clients leave, service resumes.
    drop(conns);
    let ok = poll_until(Duration::from_secs(15), Duration::from_millis(50), || {
        let mut c = connect(addr).ok()?;
        echo_check(&mut c, b"back").ok()
    });
    assert!(
        ok.is_some(),
        "{bin}: after the descriptors were freed, a new connection must be served\nstderr:\n{}",
        p.stderr_text()
    );
    assert!(p.is_running(), "{bin}: still running at the end");
}
