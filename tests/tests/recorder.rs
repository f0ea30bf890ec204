//! The flight recorder: `--record FILE` writes every input the core was
//! handed; `portico replay FILE` runs the core over it and prints the same
//! actions the live run took (written beside the trace as FILE.actions).

use std::io::{Read, Write};
use std::time::Duration;

use portico_tests::{
    both, config_head, connect, echo_check, free_port, local, mapped_service, run_cli, service,
    Behaviour, Bin, Portico, StartOptions, TempDir, TestServer,
};

both!(recorded_run_replays_to_the_same_actions);

fn recorded_run_replays_to_the_same_actions(bin: Bin) {
    let server = TestServer::start(Behaviour::Echo);
    let dir = TempDir::new();
    let trace = dir.path().join("run.trace");
    let trace_arg = trace.to_str().expect("utf-8 temp path").to_string();
    let (map_port, socks_port) = (free_port(), free_port());
    let config = format!(
        "{}{}{}",
        config_head("", ""),
        mapped_service("map", map_port, server.addr(), ""),
        service("socks", "socks", socks_port, "")
    );
    let mut p = Portico::start_with(
        bin,
        &config,
        StartOptions {
            args: &["--record", &trace_arg],
            ..StartOptions::default()
        },
    );
    // A relayed payload (the trace keeps only its length) ...
    let secret = b"relayed-payload-that-the-trace-must-not-hold";
    let mut c = connect(local(map_port)).unwrap_or_else(|e| panic!("{bin}: connect: {e}"));
    echo_check(&mut c, secret).unwrap_or_else(|e| panic!("{bin}: echo: {e}"));
    drop(c);
    // ... and a SOCKS handshake (kept: the core parses it), then payload.
    let mut s = connect(local(socks_port)).unwrap_or_else(|e| panic!("{bin}: connect: {e}"));
    let ip = match server.addr().ip() {
        std::net::IpAddr::V4(v4) => v4.octets(),
        std::net::IpAddr::V6(_) => panic!("{bin}: the test server is on IPv4"),
    };
    let port = server.addr().port().to_be_bytes();
    let mut req = vec![5, 1, 0, 5, 1, 0, 1];
    req.extend_from_slice(&ip);
    req.extend_from_slice(&port);
    s.write_all(&req).expect("socks request");
    let mut reply = [0u8; 12];
    s.read_exact(&mut reply).expect("socks replies");
    assert_eq!(&reply[..3], &[5, 0, 5], "{bin}: SOCKS method and reply");
    echo_check(&mut s, secret).unwrap_or_else(|e| panic!("{bin}: echo through socks: {e}"));
    drop(s);
    p.signal(libc::SIGTERM);
    let st = p.wait_exit(Duration::from_secs(20));
    assert_eq!(st.code(), Some(0), "{bin}: exit after SIGTERM");

    let recorded = std::fs::read(&trace).unwrap_or_else(|e| panic!("{bin}: read the trace: {e}"));
    assert!(
        !recorded.windows(secret.len()).any(|w| w == secret),
        "{bin}: relayed bytes must be kept as lengths only"
    );
    let text = String::from_utf8_lossy(&recorded);
    assert!(
        text.contains("read "),
        "{bin}: the trace has no reads:\n{text}"
    );
    // Recording turns splice(2) off: every relayed byte is a read and a
    // write the replay steps through.
    assert!(
        !text.contains(" spliced "),
        "{bin}: a recorded run spliced:\n{text}"
    );
    let actions_path = format!("{trace_arg}.actions");
    let live = std::fs::read_to_string(&actions_path)
        .unwrap_or_else(|e| panic!("{bin}: read {actions_path}: {e}"));
    assert!(
        live.lines().count() > 10,
        "{bin}: the live run's actions were not written:\n{live}"
    );
    let replay = run_cli(bin, &["replay", &trace_arg], None, Duration::from_secs(60));
    assert_eq!(
        replay.code(),
        Some(0),
        "{bin}: replay failed:\n{}",
        replay.stderr
    );
    if replay.stdout != live {
        let first = replay
            .stdout
            .lines()
            .zip(live.lines())
            .position(|(a, b)| a != b);
        panic!(
            "{bin}: the replay differs from the live run at line {first:?} \
             (replay {} lines, live {} lines)",
            replay.stdout.lines().count(),
            live.lines().count()
        );
    }
}
