//! Running out of resources: file descriptors.

use std::io::Write;
use std::time::{Duration, Instant};

use portico_tests::{
    both, connect, echo_check, free_port, local, mapped_config, poll_until, Behaviour, Bin,
    Portico, StartOptions, TestServer,
};

both!(fd_exhaustion_neither_kills_nor_spins);

/// SPEC: running out of file descriptors never makes it spin or die: it
/// stops accepting for a moment and logs it once.
fn fd_exhaustion_neither_kills_nor_spins(bin: Bin) {
    const NOFILE: u64 = 64;
    const CLIENTS: usize = 100;
    let server = TestServer::start(Behaviour::Echo);
    let port = free_port();
    let addr = local(port);
    let mut p = Portico::start_with(
        bin,
        &mapped_config(port, server.addr(), "", ""),
        StartOptions {
            nofile: Some(NOFILE),
            ..StartOptions::default()
        },
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
    let lines = p.stderr_lines().len();
    assert!(
        lines < 50,
        "{bin}: {lines} stderr lines while out of file descriptors (it should log it once)\n{}",
        p.stderr_text()
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
