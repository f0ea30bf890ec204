//! Mapped ports relayed with splice(2) (on Linux both binaries splice a
//! pure relay through a pipe): the cases where bytes still sit in a pipe
//! when something else happens, and the counting of spliced bytes.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use portico_tests::logline::{parse_text_line, AccessLine};
use portico_tests::{
    both, connect, digest, echo_check, pattern, read_outcome, recv_all, send_stream, spawn_bounded,
    start_mapped, Behaviour, Bin, Digest, Portico, TestServer, CLIENT_SEED, IO_TIMEOUT,
};

const MIB: u64 = 1024 * 1024;
const PROMPTLY: Duration = Duration::from_secs(10);
/// Long enough for the proxy's pipe and both sockets to fill behind a peer
/// that does not read yet.
const STALL: Duration = Duration::from_millis(400);
/// How much a slow reader takes at a time, and how long it waits between.
const SIP: usize = 64 * 1024;
const SIP_PAUSE: Duration = Duration::from_millis(1);
const SMALL_RCVBUF: usize = 4096;

both!(
    client_sends_then_closes_at_once,
    upstream_eof_waits_behind_bytes_in_flight,
    client_eof_waits_behind_bytes_in_flight,
    access_log_counts_spliced_bytes,
    spliced_trickle_keeps_a_relay_open_until_idle,
);

/// Reads `r` to EOF a little at a time, so that what the proxy writes to it
/// mostly waits (in the proxy's pipe, when splicing) and the sender's EOF
/// arrives behind bytes still on their way; returns the count and checksum.
fn recv_slowly(r: &mut impl Read) -> std::io::Result<(u64, u64)> {
    let mut d = Digest::new();
    let mut buf = vec![0u8; SIP];
    loop {
        match r.read(&mut buf) {
            Ok(0) => return Ok((d.len(), d.finish())),
            Ok(n) => d.update(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        std::thread::sleep(SIP_PAUSE);
    }
}

/// A socket with a small receive buffer (set before it connects, so the
/// kernel does not grow it): a peer behind it that reads slowly makes the
/// proxy wait to write.
fn small_receiver() -> Socket {
    let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).expect("socket");
    s.set_recv_buffer_size(SMALL_RCVBUF).expect("SO_RCVBUF");
    s
}

/// Connects to `addr` through a [`small_receiver`].
fn slow_client(bin: Bin, addr: SocketAddr) -> TcpStream {
    let s = small_receiver();
    s.connect_timeout(&addr.into(), PROMPTLY)
        .unwrap_or_else(|e| panic!("{bin}: connect to {addr}: {e}"));
    let c: TcpStream = s.into();
    c.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    c.set_write_timeout(Some(IO_TIMEOUT)).expect("timeout");
    c
}

fn client(bin: Bin, addr: std::net::SocketAddr) -> TcpStream {
    connect(addr).unwrap_or_else(|e| panic!("{bin}: connect to the mapped port {addr}: {e}"))
}

/// Waits for the access-log line of the client from local port `port`.
fn access_line(p: &Portico, port: u16) -> AccessLine {
    let line = p.expect_log_line(&format!(" map 127.0.0.1:{port} "), PROMPTLY);
    parse_text_line(&line).unwrap_or_else(|e| panic!("{}: access line {line:?}: {e}", p.bin()))
}

/// SPEC: a client that sends and closes at once (data and FIN arrive
/// together, perhaps before the upstream is connected) has every byte
/// delivered, then the EOF.
fn client_sends_then_closes_at_once(bin: Bin) {
    let server = TestServer::start(Behaviour::Sink);
    let (p, addr) = start_mapped(bin, server.addr(), "", "");
    let data = pattern(CLIENT_SEED, (4 * MIB) as usize);
    let mut c = client(bin, addr);
    let port = c.local_addr().expect("local_addr").port();
    c.write_all(&data)
        .unwrap_or_else(|e| panic!("{bin}: write: {e}"));
    drop(c);
    let r = server.report_ok(bin);
    assert_eq!(r.received, data.len() as u64, "{bin}: bytes that arrived");
    assert_eq!(r.received_digest, digest(&data), "{bin}: the bytes differ");
    let l = access_line(&p, port);
    assert_eq!(
        (l.status.as_str(), l.up, l.down),
        ("ok", 4 * MIB, 0),
        "{bin}"
    );
}

/// SPEC: the server sends a lot and shuts its write side at once while the
/// client is not reading yet: the EOF reaches the client only after the
/// last byte (the half-close is not carried past bytes still on their way).
fn upstream_eof_waits_behind_bytes_in_flight(bin: Bin) {
    let len = 6 * MIB + 4321;
    let server = TestServer::start(Behaviour::Source { len });
    let (p, addr) = start_mapped(bin, server.addr(), "", "");
    let mut c = slow_client(bin, addr);
    let port = c.local_addr().expect("local_addr").port();
    std::thread::sleep(STALL);
    let (n, d) = recv_slowly(&mut c).unwrap_or_else(|e| panic!("{bin}: receiving: {e}"));
    // The client is done too: the server, reading to EOF, finishes.
    c.shutdown(Shutdown::Write)
        .unwrap_or_else(|e| panic!("{bin}: shutdown(Write): {e}"));
    let r = server.report_ok(bin);
    assert_eq!(n, len, "{bin}: bytes before the EOF");
    assert_eq!(d, r.sent_digest, "{bin}: the bytes differ");
    let l = access_line(&p, port);
    assert_eq!((l.status.as_str(), l.up, l.down), ("ok", 0, len), "{bin}");
}

/// SPEC: the client sends a lot and shuts its write side while the server
/// is not reading yet; the server still gets every byte before the EOF,
/// and its answer after that EOF still reaches the client.
fn client_eof_waits_behind_bytes_in_flight(bin: Bin) {
    let len = 6 * MIB + 4321;
    // One connection, to a server that reads late and slowly through a
    // small receive buffer (accepted sockets inherit the listener's).
    let l = small_receiver();
    l.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .expect("bind");
    l.listen(1).expect("listen");
    let server_addr = l
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .expect("address");
    let l: std::net::TcpListener = l.into();
    let server = spawn_bounded(move || {
        let (mut s, _) = l.accept().expect("accept");
        s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
        s.set_write_timeout(Some(IO_TIMEOUT)).expect("timeout");
        std::thread::sleep(STALL);
        // What arrived before the EOF: its count and checksum, back.
        let (n, d) = recv_slowly(&mut s).expect("the server reads to EOF");
        let mut answer = n.to_be_bytes().to_vec();
        answer.extend_from_slice(&d.to_be_bytes());
        s.write_all(&answer).expect("the server answers");
    });
    let (p, addr) = start_mapped(bin, server_addr, "", "");
    let mut c = client(bin, addr);
    let port = c.local_addr().expect("local_addr").port();
    let sent = send_stream(&mut c, len, CLIENT_SEED, None)
        .unwrap_or_else(|e| panic!("{bin}: sending: {e}"));
    c.shutdown(Shutdown::Write)
        .unwrap_or_else(|e| panic!("{bin}: shutdown(Write): {e}"));
    let mut answer = Vec::new();
    c.read_to_end(&mut answer)
        .unwrap_or_else(|e| panic!("{bin}: reading the answer: {e}"));
    assert_eq!(answer.len(), 16, "{bin}: the server's answer");
    let n = u64::from_be_bytes(answer[..8].try_into().expect("8 bytes"));
    let d = u64::from_be_bytes(answer[8..].try_into().expect("8 bytes"));
    assert_eq!((n, d), (len, sent), "{bin}: what reached the server");
    server
        .join(PROMPTLY)
        .unwrap_or_else(|e| panic!("{bin}: the server: {e}"));
    let l = access_line(&p, port);
    assert_eq!((l.status.as_str(), l.up, l.down), ("ok", len, 16), "{bin}");
}

/// SPEC: the access log counts spliced bytes as it counts copied ones:
/// exactly what went each way.
fn access_log_counts_spliced_bytes(bin: Bin) {
    let (up, reply) = (3 * MIB + 17, 2 * MIB + 5);
    let server = TestServer::start(Behaviour::DigestReply { reply_len: reply });
    let (p, addr) = start_mapped(bin, server.addr(), "", "");
    let mut c = client(bin, addr);
    let port = c.local_addr().expect("local_addr").port();
    send_stream(&mut c, up, CLIENT_SEED, None).unwrap_or_else(|e| panic!("{bin}: sending: {e}"));
    c.shutdown(Shutdown::Write)
        .unwrap_or_else(|e| panic!("{bin}: shutdown(Write): {e}"));
    let (n, _) = recv_all(&mut c).unwrap_or_else(|e| panic!("{bin}: receiving: {e}"));
    assert_eq!(n, reply + 16, "{bin}: the reply and its trailer");
    let l = access_line(&p, port);
    assert_eq!(
        (l.status.as_str(), l.up, l.down),
        ("ok", up, reply + 16),
        "{bin}"
    );
}

/// SPEC: bytes that pass by splice count as activity: a relay that
/// trickles (after a bulk amount has made it a spliced one) stays open
/// past `idle_timeout`, and once quiet is closed by it, its bytes counted.
fn spliced_trickle_keeps_a_relay_open_until_idle(bin: Bin) {
    let server = TestServer::start(Behaviour::Echo);
    let (p, addr) = start_mapped(bin, server.addr(), "idle_timeout = \"1s\"", "");
    let mut c = client(bin, addr);
    let port = c.local_addr().expect("local_addr").port();
    // A bulk amount first, both ways: from then on the relay is spliced.
    const BULK: u64 = 64 * 1024;
    echo_check(&mut c, &pattern(CLIENT_SEED, BULK as usize))
        .unwrap_or_else(|e| panic!("{bin}: echo of {BULK} bytes: {e}"));
    let start = Instant::now();
    let mut beats = 0u64;
    while start.elapsed() < Duration::from_millis(2500) {
        echo_check(&mut c, b"beat").unwrap_or_else(|e| {
            panic!(
                "{bin}: a relay trickling every 300 ms was closed after {:?}: {e}",
                start.elapsed()
            )
        });
        beats += 1;
        std::thread::sleep(Duration::from_millis(300));
    }
    let quiet = Instant::now();
    let outcome = read_outcome(&mut c, Duration::from_secs(15));
    assert!(
        outcome.is_closed(),
        "{bin}: a quiet relay must be closed after idle_timeout; got {outcome:?}"
    );
    assert!(
        quiet.elapsed() >= Duration::from_millis(600),
        "{bin}: closed {:?} after the last byte, idle_timeout is 1s",
        quiet.elapsed()
    );
    let l = access_line(&p, port);
    assert_eq!(
        (l.status.as_str(), l.up, l.down),
        ("idle", BULK + 4 * beats, BULK + 4 * beats),
        "{bin}"
    );
}
