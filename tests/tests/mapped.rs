//! Mapped TCP ports (`kind = "mapped"`): the relay itself, for both binaries.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Shutdown, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use portico_tests::{
    both, connect, connect_from, digest, echo_check, listen_overflows, pattern, poll_until,
    read_digest_reply, read_outcome, recv_all, send_all, send_stream, spawn_bounded, start_mapped,
    Behaviour, Bin, Digest, Portico, ReadOutcome, Rendezvous, TestServer, CLIENT_SEED,
};

const MIB: u64 = 1024 * 1024;
const BIG: u64 = 50 * MIB;
/// How long a whole 50 MB transfer may take (a debug build on a busy
/// two-core machine).
const TRANSFER_LIMIT: Duration = Duration::from_secs(180);
/// How long to wait for something that should happen "at once".
const PROMPTLY: Duration = Duration::from_secs(10);

fn client(bin: Bin, addr: std::net::SocketAddr) -> TcpStream {
    connect(addr).unwrap_or_else(|e| panic!("{bin}: connect to the mapped port {addr}: {e}"))
}

fn report(bin: Bin, server: &TestServer) -> portico_tests::Report {
    server.report_ok(bin)
}

/// Waits for the access-log line of the client connection from local port
/// `client_port` on service `map`.
fn access_line(p: &Portico, client_port: u16, limit: Duration) -> String {
    p.expect_log_line(&format!(" map 127.0.0.1:{client_port} "), limit)
}

/// Sends `data` and EOF; returns the reply of the [`Behaviour::DigestReply`]
/// server with `reply_len` behind the proxy, checked to say it received
/// `data` exactly.
fn send_for_digest_reply(
    bin: Bin,
    c: &mut TcpStream,
    data: &[u8],
    reply_len: u64,
    what: &str,
) -> Vec<u8> {
    send_all(bin, c, data, what);
    c.shutdown(Shutdown::Write)
        .unwrap_or_else(|e| panic!("{bin}: {what}: shutdown(Write): {e}"));
    read_digest_reply(bin, c, reply_len, data, what)
}

both!(
    upload_50mb,
    download_50mb,
    bidirectional_50mb,
    half_close_reply_after_client_eof,
    concurrent_200_connections,
    destination_refused_closes_client,
    idle_timeout_closes,
    max_connections_limit,
    max_per_client_limit,
    early_data_arrives,
    data_before_upstream_connects,
    slow_reader_does_not_stall_others,
    reader_that_pauses_gets_every_byte,
    sides_listen_where_they_belong,
);

fn upload_50mb(bin: Bin) {
    let server = TestServer::start(Behaviour::Sink);
    let (_p, addr) = start_mapped(bin, server.addr(), "", "");
    let mut c = client(bin, addr);
    let started = Instant::now();
    let sent = send_stream(&mut c, BIG, CLIENT_SEED, None)
        .unwrap_or_else(|e| panic!("{bin}: sending 50 MB through the proxy: {e}"));
    c.shutdown(Shutdown::Write)
        .unwrap_or_else(|e| panic!("{bin}: shutdown(Write): {e}"));
    let (n, _) = recv_all(&mut c)
        .unwrap_or_else(|e| panic!("{bin}: waiting for the close after the upload: {e}"));
    assert_eq!(
        n, 0,
        "{bin}: the sink sent nothing, yet {n} bytes came back"
    );
    let r = report(bin, &server);
    assert_eq!(r.received, BIG, "{bin}: bytes that reached the server");
    assert_eq!(
        r.received_digest, sent,
        "{bin}: the 50 MB that reached the server differ from those sent"
    );
    eprintln!("{bin}: 50 MB up in {:?}", started.elapsed());
}

fn download_50mb(bin: Bin) {
    let server = TestServer::start(Behaviour::Source { len: BIG });
    let (_p, addr) = start_mapped(bin, server.addr(), "", "");
    let mut c = client(bin, addr);
    let started = Instant::now();
    let (n, d) = recv_all(&mut c)
        .unwrap_or_else(|e| panic!("{bin}: receiving 50 MB through the proxy: {e}"));
    drop(c);
    let r = report(bin, &server);
    assert_eq!(n, BIG, "{bin}: bytes that reached the client");
    assert_eq!(
        d, r.sent_digest,
        "{bin}: the 50 MB that reached the client differ from those the server sent"
    );
    eprintln!("{bin}: 50 MB down in {:?}", started.elapsed());
}

fn bidirectional_50mb(bin: Bin) {
    let server = TestServer::start(Behaviour::Exchange { len: BIG });
    let (_p, addr) = start_mapped(bin, server.addr(), "", "");
    let mut c = client(bin, addr);
    let mut w = c
        .try_clone()
        .unwrap_or_else(|e| panic!("{bin}: try_clone: {e}"));
    let writer = spawn_bounded(move || {
        let r = send_stream(&mut w, BIG, CLIENT_SEED, None);
        let _ = w.shutdown(Shutdown::Write);
        r
    });
    let reader = spawn_bounded(move || recv_all(&mut c));
    let sent = writer
        .join(TRANSFER_LIMIT)
        .unwrap_or_else(|e| panic!("{bin}: writer: {e}"))
        .unwrap_or_else(|e| panic!("{bin}: sending 50 MB while receiving 50 MB: {e}"));
    let (n, got) = reader
        .join(TRANSFER_LIMIT)
        .unwrap_or_else(|e| panic!("{bin}: reader: {e}"))
        .unwrap_or_else(|e| panic!("{bin}: receiving 50 MB while sending 50 MB: {e}"));
    let r = report(bin, &server);
    assert_eq!(r.received, BIG, "{bin}: bytes that reached the server");
    assert_eq!(r.received_digest, sent, "{bin}: client→server bytes differ");
    assert_eq!(n, BIG, "{bin}: bytes that reached the client");
    assert_eq!(got, r.sent_digest, "{bin}: server→client bytes differ");
}

fn half_close_reply_after_client_eof(bin: Bin) {
    let server = TestServer::start(Behaviour::DigestReply { reply_len: MIB });
    let (_p, addr) = start_mapped(bin, server.addr(), "", "");
    let mut c = client(bin, addr);
    let request = pattern(CLIENT_SEED, 100_000);
    let body = send_for_digest_reply(
        bin,
        &mut c,
        &request,
        MIB,
        "the whole reply (1 MiB) after the client's EOF (the request)",
    );
    let r = report(bin, &server);
    assert_eq!(
        digest(&body),
        r.sent_digest,
        "{bin}: the reply body differs"
    );
}

fn concurrent_200_connections(bin: Bin) {
    const N: usize = 200;
    let server = TestServer::start(Behaviour::Echo);
    let (_p, addr) = start_mapped(bin, server.addr(), "", "");
    let all_open = Rendezvous::new(N);
    let (tx, rx) = mpsc::channel();
    for i in 0..N {
        let tx = tx.clone();
        let all_open = all_open.clone();
        std::thread::spawn(move || {
            let run = || -> Result<(), String> {
                let mut c = connect(addr).map_err(|e| format!("connect: {e}"));
                let first = match &mut c {
                    Ok(c) => echo_check(c, &pattern(i as u64, 3000 + i))
                        .map_err(|e| format!("first echo: {e}")),
                    Err(e) => Err(e.clone()),
                };
                // Every connection is open at once before the second round.
                let together = all_open.arrive_and_wait(Duration::from_secs(60));
                first?;
                if !together {
                    return Err("not all 200 connections were open within 60 s".into());
                }
                let mut c = c?;
                echo_check(&mut c, &pattern(1000 + i as u64, 5000 - i))
                    .map_err(|e| format!("second echo: {e}"))?;
                c.shutdown(Shutdown::Write)
                    .map_err(|e| format!("shutdown: {e}"))?;
                match read_outcome(&mut c, PROMPTLY) {
                    ReadOutcome::Eof => Ok(()),
                    other => Err(format!("after our EOF, expected EOF back, got {other:?}")),
                }
            };
            let _ = tx.send((i, run()));
        });
    }
    drop(tx);
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut failures = Vec::new();
    let mut done = 0;
    while done < N {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((i, Err(e))) => {
                failures.push(format!("connection {i}: {e}"));
                done += 1;
            }
            Ok((_, Ok(()))) => done += 1,
            Err(_) => {
                failures.push(format!("{} connections did not finish in time", N - done));
                break;
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{bin}: {} of {N} concurrent connections failed; first ones:\n{}",
        failures.len(),
        failures
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

fn destination_refused_closes_client(bin: Bin) {
    let nothing = portico_tests::local(portico_tests::free_port());
    let (p, addr) = start_mapped(bin, nothing, "", "");
    let mut c = client(bin, addr);
    let port = c.local_addr().expect("local_addr").port();
    let outcome = read_outcome(&mut c, PROMPTLY);
    assert!(
        outcome.is_closed(),
        "{bin}: with nothing listening at the destination the client must be closed; got {outcome:?}"
    );
    let line = access_line(&p, port, PROMPTLY);
    assert!(
        line.contains(" map 127.0.0.1:") && line.contains(" refused "),
        "{bin}: access-log line should say refused: {line}"
    );
}

fn idle_timeout_closes(bin: Bin) {
    let server = TestServer::start(Behaviour::Echo);
    let (p, addr) = start_mapped(bin, server.addr(), "idle_timeout = \"1s\"", "");
    let mut c = client(bin, addr);
    echo_check(&mut c, b"x").unwrap_or_else(|e| panic!("{bin}: echo before going idle: {e}"));
    let port = c.local_addr().expect("local_addr").port();
    let outcome = read_outcome(&mut c, Duration::from_secs(15));
    assert!(
        outcome.is_closed(),
        "{bin}: an idle connection must be closed after idle_timeout = 1s; got {outcome:?}"
    );
    let line = access_line(&p, port, PROMPTLY);
    assert!(
        line.contains(" idle "),
        "{bin}: access-log line should say idle: {line}"
    );
}

/// Sends a byte on a connection over a limit and checks it is closed
/// without it being relayed (an echo would come back).
fn expect_refused(bin: Bin, c: std::io::Result<TcpStream>, what: &str) {
    let Ok(mut c) = c else {
        return; // Not even connected: refused too.
    };
    let _ = c.write_all(b"?");
    let outcome = read_outcome(&mut c, PROMPTLY);
    assert!(
        outcome.is_closed(),
        "{bin}: {what} must be closed without being served; got {outcome:?}"
    );
}

/// After `closed` (a client local port) was closed and logged, a new
/// connection made by `open` is served (allowing the proxy a moment to
/// count the closed one out).
fn eventually_served(
    bin: Bin,
    p: &Portico,
    closed: u16,
    mut open: impl FnMut() -> std::io::Result<TcpStream>,
) {
    access_line(p, closed, PROMPTLY);
    let served = poll_until(Duration::from_secs(5), Duration::from_millis(20), || {
        let mut c = open().ok()?;
        echo_check(&mut c, b"n").ok()?;
        Some(c)
    });
    assert!(
        served.is_some(),
        "{bin}: after a connection under the limit closed, a new one must be served"
    );
}

fn max_connections_limit(bin: Bin) {
    let server = TestServer::start(Behaviour::Echo);
    let (p, addr) = start_mapped(bin, server.addr(), "max_connections = 2", "");
    let mut c1 = client(bin, addr);
    echo_check(&mut c1, b"1").unwrap_or_else(|e| panic!("{bin}: first connection: {e}"));
    let mut c2 = client(bin, addr);
    echo_check(&mut c2, b"2").unwrap_or_else(|e| panic!("{bin}: second connection: {e}"));
    expect_refused(
        bin,
        connect(addr),
        "a third connection with max_connections = 2",
    );
    echo_check(&mut c1, b"a")
        .unwrap_or_else(|e| panic!("{bin}: first connection after the refusal: {e}"));
    echo_check(&mut c2, b"b")
        .unwrap_or_else(|e| panic!("{bin}: second connection after the refusal: {e}"));
    let port1 = c1.local_addr().expect("local_addr").port();
    drop(c1);
    eventually_served(bin, &p, port1, || connect(addr));
    echo_check(&mut c2, b"c")
        .unwrap_or_else(|e| panic!("{bin}: second connection at the end: {e}"));
}

fn max_per_client_limit(bin: Bin) {
    let server = TestServer::start(Behaviour::Echo);
    let (p, addr) = start_mapped(bin, server.addr(), "max_per_client = 1", "");
    let one = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
    let two = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    let mut c1 = connect_from(one, addr).unwrap_or_else(|e| panic!("{bin}: connect: {e}"));
    echo_check(&mut c1, b"1").unwrap_or_else(|e| panic!("{bin}: first connection: {e}"));
    expect_refused(
        bin,
        connect_from(one, addr),
        "a second connection from 127.0.0.1 with max_per_client = 1",
    );
    let mut other =
        connect_from(two, addr).unwrap_or_else(|e| panic!("{bin}: connect from 127.0.0.2: {e}"));
    echo_check(&mut other, b"2").unwrap_or_else(|e| {
        panic!("{bin}: a connection from another client address (127.0.0.2) must be served: {e}")
    });
    echo_check(&mut c1, b"a")
        .unwrap_or_else(|e| panic!("{bin}: first connection after the refusal: {e}"));
    let port1 = c1.local_addr().expect("local_addr").port();
    drop(c1);
    eventually_served(bin, &p, port1, || connect_from(one, addr));
}

fn early_data_arrives(bin: Bin) {
    let server = TestServer::start(Behaviour::DigestReply { reply_len: 0 });
    let (_p, addr) = start_mapped(bin, server.addr(), "", "");
    let early = pattern(CLIENT_SEED, 20_000);
    let mut c = client(bin, addr);
    send_for_digest_reply(bin, &mut c, &early, 0, "bytes sent at once on connect");
}

/// The destination's accept queue is full, so the proxy's connect hangs
/// (its SYN is dropped and retried after a second); the client's bytes and
/// EOF, sent meanwhile, must still arrive once it connects.
fn data_before_upstream_connects(bin: Bin) {
    let server = TestServer::start_held(Behaviour::DigestReply { reply_len: 0 });
    let filler = server
        .fill_backlog()
        .unwrap_or_else(|e| panic!("{bin}: filling the backend's accept queue: {e}"));
    let (_p, addr) = start_mapped(bin, server.addr(), "", "");
    let early = pattern(CLIENT_SEED, 20_000);
    let overflows = listen_overflows();
    let started = Instant::now();
    let mut c = client(bin, addr);
    send_all(bin, &mut c, &early, "bytes sent at once on connect");
    c.shutdown(Shutdown::Write)
        .unwrap_or_else(|e| panic!("{bin}: shutdown(Write): {e}"));
    // Wait (bounded) until the kernel dropped the proxy's SYN, so that the
    // bytes above really were sent before the upstream connected; if the
    // counter is not available, the case still checks delivery.
    let dropped = overflows.and_then(|before| {
        poll_until(Duration::from_secs(5), Duration::from_millis(5), || {
            listen_overflows().filter(|&n| n > before)
        })
    });
    server.release();
    server.close_fillers();
    read_digest_reply(
        bin,
        &mut c,
        0,
        &early,
        "bytes sent before the upstream connected",
    );
    eprintln!(
        "{bin}: reply {:?} after connecting; SYN dropped: {}; filler {filler}",
        started.elapsed(),
        dropped.is_some()
    );
}

fn request(bin: Bin, c: &mut TcpStream, len: u64) {
    c.write_all(&len.to_be_bytes())
        .unwrap_or_else(|e| panic!("{bin}: sending the request: {e}"));
}

fn slow_reader_does_not_stall_others(bin: Bin) {
    const FLOOD: u64 = 200 * MIB;
    const LIMIT_KIB: u64 = 32 * 1024;
    let server = TestServer::start(Behaviour::RequestedSource);
    let (p, addr) = start_mapped(bin, server.addr(), "buffer = \"64KiB\"", "");

    // Warm up (allocator, threads), then take the baseline.
    let mut c0 = client(bin, addr);
    request(bin, &mut c0, MIB);
    let (n, _) = recv_all(&mut c0).unwrap_or_else(|e| panic!("{bin}: warm-up transfer: {e}"));
    assert_eq!(n, MIB, "{bin}: warm-up transfer length");
    drop(c0);
    report(bin, &server);
    let rss0 = p.rss_kib();

    // A client that asks for a flood and never reads.
    let before = server.sent_bytes();
    let mut stalled = client(bin, addr);
    request(bin, &mut stalled, FLOOD);
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut last, mut since) = (server.sent_bytes(), Instant::now());
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let now = server.sent_bytes();
        if now != last {
            (last, since) = (now, Instant::now());
        } else if now > before && since.elapsed() >= Duration::from_millis(500) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{bin}: the flood toward a client that never reads did not stall within 60 s \
             ({} bytes sent)",
            now - before
        );
    }
    let flooded = last - before;
    let rss1 = p.rss_kib();
    assert!(
        flooded < FLOOD,
        "{bin}: the server could send all {FLOOD} bytes to a client that reads nothing: \
         the proxy buffers without bound"
    );

    // Another connection through the same proxy still moves 5 MB.
    let mut c2 = client(bin, addr);
    let started = Instant::now();
    request(bin, &mut c2, 5 * MIB);
    let (n, d) = recv_all(&mut c2)
        .unwrap_or_else(|e| panic!("{bin}: 5 MB transfer while another client is stalled: {e}"));
    let took = started.elapsed();
    drop(c2);
    let r = report(bin, &server);
    assert_eq!(n, 5 * MIB, "{bin}: bytes of the second transfer");
    assert_eq!(
        d, r.sent_digest,
        "{bin}: the second transfer's bytes differ"
    );
    let rss2 = p.rss_kib();
    eprintln!(
        "{bin}: stalled after {flooded} bytes; second transfer took {took:?}; \
         VmRSS {rss0} → {rss1} → {rss2} KiB"
    );
    for (when, rss) in [("while stalled", rss1), ("after the second transfer", rss2)] {
        assert!(
            rss.saturating_sub(rss0) < LIMIT_KIB,
            "{bin}: VmRSS grew from {rss0} KiB to {rss} KiB {when} with buffer = 64KiB \
             (limit +{LIMIT_KIB} KiB)"
        );
    }
    // The stalled client is still connected (not dropped as a side effect).
    let outcome = read_outcome(&mut stalled, Duration::from_secs(5));
    assert!(
        matches!(outcome, ReadOutcome::Data(_)),
        "{bin}: the stalled client should still be able to read its flood; got {outcome:?}"
    );
}

/// A client that stops reading several times while the destination keeps
/// sending: each pause fills the proxy's buffer and leaves the destination's
/// socket unread (where `portico` stops listening for its bytes), each
/// resumption drains it; every byte and the end of stream arrive.
fn reader_that_pauses_gets_every_byte(bin: Bin) {
    const LEN: u64 = 24 * MIB;
    const PAUSES: u64 = 4;
    let server = TestServer::start(Behaviour::RequestedSource);
    let (_p, addr) = start_mapped(bin, server.addr(), "buffer = \"64KiB\"", "");
    let mut c = client(bin, addr);
    request(bin, &mut c, LEN);
    let mut d = Digest::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut next_pause = 0;
    loop {
        if d.len() >= next_pause && next_pause < LEN {
            // Long enough for every buffer on the way to fill.
            std::thread::sleep(Duration::from_millis(200));
            next_pause += LEN / PAUSES;
        }
        match std::io::Read::read(&mut c, &mut buf) {
            Ok(0) => break,
            Ok(n) => d.update(&buf[..n]),
            Err(e) => panic!("{bin}: after {} of {LEN} bytes: {e}", d.len()),
        }
    }
    // The server reads to EOF before it reports.
    drop(c);
    let r = report(bin, &server);
    assert_eq!(d.len(), LEN, "{bin}: bytes that reached the pausing client");
    assert_eq!(
        d.finish(),
        r.sent_digest,
        "{bin}: the bytes that reached the pausing client differ from those sent"
    );
}

/// `port = N` opens an internal service on every internal address and an
/// incoming mapped port (`side = "external"`) on the external ones only;
/// connections out leave from `network.outgoing`.
fn sides_listen_where_they_belong(bin: Bin) {
    let server = TestServer::start(Behaviour::Echo);
    let (inner, outer) = (portico_tests::free_port(), portico_tests::free_port());
    let config = format!(
        r#"[network]
internal = ["127.0.0.1", "127.0.0.3"]
external = ["127.0.0.2"]
outgoing = "127.0.0.2"
[log]
access = "stderr"
[process]
user = "nobody"   # run as root, the external side needs a user to switch to
[[service]]
name = "out"
kind = "mapped"
port = {inner}
destination = "{dest}"
[[service]]
name = "in"
kind = "mapped"
side = "external"
port = {outer}
destination = "{dest}"
"#,
        dest = server.addr()
    );
    let p = Portico::start_with(
        bin,
        &config,
        portico_tests::StartOptions {
            listeners: Some(3),
            ..Default::default()
        },
    );
    let at = |ip: [u8; 4], port: u16| std::net::SocketAddr::from((ip, port));
    let mut peers = Vec::new();
    for addr in [
        at([127, 0, 0, 1], inner),
        at([127, 0, 0, 3], inner),
        at([127, 0, 0, 2], outer),
    ] {
        let mut c = client(bin, addr);
        echo_check(&mut c, b"side").unwrap_or_else(|e| panic!("{bin}: echo through {addr}: {e}"));
        drop(c);
        peers.push(report(bin, &server).peer);
    }
    for addr in [
        at([127, 0, 0, 2], inner),
        at([127, 0, 0, 1], outer),
        at([127, 0, 0, 3], outer),
    ] {
        assert!(
            connect(addr).is_err(),
            "{bin}: nothing may listen on {addr}\nstderr:\n{}",
            p.stderr_text()
        );
    }
    assert!(
        !peers.is_empty()
            && peers
                .iter()
                .all(|a| a.ip() == IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))),
        "{bin}: connections out must leave from network.outgoing (127.0.0.2), saw {peers:?}"
    );
}
