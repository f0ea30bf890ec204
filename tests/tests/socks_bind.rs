//! SOCKS BIND (RFC 1928 section 4, and SOCKS4 BIND) end to end through
//! both binaries, with a client written here from the RFCs: the first
//! reply names the listening address, a stranger's connection is closed
//! while the wait goes on, the peer's connection is announced in a second
//! reply and relayed both ways (on the `outgoing` address when set, for
//! one peer only); a denied peer and a command left out of `commands` are
//! refused in each version's words, and `commands` is checked at start and
//! applies on SIGHUP.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

use portico_tests::{
    both, config_head, connect_from, poll_until, read_outcome, service, start_on_free_port, Bin,
    ReadOutcome, StartOptions,
};

both!(
    socks5_bind_accepts_only_its_peer_and_relays,
    socks4_bind_replies_twice_and_relays,
    a_denied_peer_is_refused,
    bind_left_out_of_commands_is_not_supported,
    no_peer_within_connect_timeout,
    bind_listens_on_the_outgoing_address_for_one_peer,
    connect_left_out_of_commands_is_not_supported,
    an_unknown_command_is_refused,
    no_command_at_all_is_refused,
    commands_apply_on_reload,
);

/// How long a reply may take (a debug build on a busy machine); never a
/// speed check.
const WAIT: Duration = Duration::from_secs(10);

fn config(port: u16, rules: &str, extra: &str) -> String {
    format!(
        "{}{rules}{}",
        config_head("", ""),
        service("socks", "socks", port, extra)
    )
}

fn control(bin: Bin, proxy: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(proxy).unwrap_or_else(|e| panic!("{bin}: connect: {e}"));
    s.set_read_timeout(Some(WAIT)).expect("read timeout");
    s
}

/// A SOCKS5 reply: its code and address (IPv4 only here).
fn v5_reply(bin: Bin, s: &mut TcpStream) -> (u8, SocketAddr) {
    let mut r = [0u8; 10];
    s.read_exact(&mut r)
        .unwrap_or_else(|e| panic!("{bin}: no SOCKS5 reply: {e}"));
    assert_eq!((r[0], r[2], r[3]), (5, 0, 1), "{bin}: reply {r:?}");
    let ip = Ipv4Addr::new(r[4], r[5], r[6], r[7]);
    (
        r[1],
        SocketAddr::new(ip.into(), u16::from_be_bytes([r[8], r[9]])),
    )
}

/// A SOCKS4 reply: its code and address.
fn v4_reply(bin: Bin, s: &mut TcpStream) -> (u8, SocketAddr) {
    let mut r = [0u8; 8];
    s.read_exact(&mut r)
        .unwrap_or_else(|e| panic!("{bin}: no SOCKS4 reply: {e}"));
    assert_eq!(r[0], 0, "{bin}: reply {r:?}");
    let ip = Ipv4Addr::new(r[4], r[5], r[6], r[7]);
    (
        r[1],
        SocketAddr::new(ip.into(), u16::from_be_bytes([r[2], r[3]])),
    )
}

fn v5_bind(bin: Bin, s: &mut TcpStream, peer: Ipv4Addr) {
    s.write_all(&[5, 1, 0]).expect("greeting");
    let mut m = [0u8; 2];
    s.read_exact(&mut m).expect("method choice");
    assert_eq!(m, [5, 0], "{bin}: no-auth chosen");
    let mut req = vec![5, 2, 0, 1];
    req.extend_from_slice(&peer.octets());
    req.extend_from_slice(&[0, 0]);
    s.write_all(&req).expect("BIND request");
}

/// Bytes both ways between the client's control connection and the peer.
fn relays(bin: Bin, client: &mut TcpStream, peer: &mut TcpStream) {
    peer.set_read_timeout(Some(WAIT)).expect("read timeout");
    client.write_all(b"from the client").expect("client writes");
    let mut buf = [0u8; 15];
    peer.read_exact(&mut buf)
        .unwrap_or_else(|e| panic!("{bin}: the peer got nothing: {e}"));
    assert_eq!(&buf, b"from the client");
    peer.write_all(b"from the peer").expect("peer writes");
    let mut buf = [0u8; 13];
    client
        .read_exact(&mut buf)
        .unwrap_or_else(|e| panic!("{bin}: the client got nothing: {e}"));
    assert_eq!(&buf, b"from the peer");
}

fn socks5_bind_accepts_only_its_peer_and_relays(bin: Bin) {
    let (_p, proxy) = start_on_free_port(bin, StartOptions::default(), |port| config(port, "", ""));
    let mut s = control(bin, proxy);
    v5_bind(bin, &mut s, Ipv4Addr::LOCALHOST);
    let (code, listening) = v5_reply(bin, &mut s);
    assert_eq!(code, 0, "{bin}: BIND succeeds");
    assert_eq!(
        listening.ip(),
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        "{bin}: the listener is on the address toward the peer"
    );
    // A stranger (another address) is closed; the wait goes on.
    let mut stranger = connect_from(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)), listening)
        .unwrap_or_else(|e| panic!("{bin}: the stranger cannot connect: {e}"));
    match read_outcome(&mut stranger, WAIT) {
        ReadOutcome::Eof | ReadOutcome::Reset(_) => {}
        other => panic!("{bin}: a stranger's connection must be closed, got {other:?}"),
    }
    let mut peer = connect_from(IpAddr::V4(Ipv4Addr::LOCALHOST), listening)
        .unwrap_or_else(|e| panic!("{bin}: the peer cannot connect: {e}"));
    let (code, named) = v5_reply(bin, &mut s);
    assert_eq!(code, 0, "{bin}: the second reply");
    assert_eq!(
        named,
        peer.local_addr().expect("peer address"),
        "{bin}: the second reply names the peer"
    );
    relays(bin, &mut s, &mut peer);
}

fn socks4_bind_replies_twice_and_relays(bin: Bin) {
    let (_p, proxy) = start_on_free_port(bin, StartOptions::default(), |port| config(port, "", ""));
    let mut s = control(bin, proxy);
    s.write_all(&[4, 2, 0, 21, 127, 0, 0, 1, b'u', 0])
        .expect("BIND request");
    let (code, listening) = v4_reply(bin, &mut s);
    assert_eq!(code, 0x5A, "{bin}: granted");
    let mut peer = connect_from(IpAddr::V4(Ipv4Addr::LOCALHOST), listening)
        .unwrap_or_else(|e| panic!("{bin}: the peer cannot connect to {listening}: {e}"));
    let (code, named) = v4_reply(bin, &mut s);
    assert_eq!(code, 0x5A, "{bin}: the second reply");
    assert_eq!(named, peer.local_addr().expect("peer address"));
    relays(bin, &mut s, &mut peer);
}

fn a_denied_peer_is_refused(bin: Bin) {
    let rules = "[[rule]]\naction = \"deny\"\ndestinations = [\"127.0.0.9\"]\n\
                 [[rule]]\naction = \"allow\"\n";
    let (_p, proxy) =
        start_on_free_port(bin, StartOptions::default(), |port| config(port, rules, ""));
    let mut s = control(bin, proxy);
    v5_bind(bin, &mut s, Ipv4Addr::new(127, 0, 0, 9));
    assert_eq!(v5_reply(bin, &mut s).0, 0x02, "{bin}: SOCKS5 denied");
    let mut s = control(bin, proxy);
    s.write_all(&[4, 2, 0, 21, 127, 0, 0, 9, 0])
        .expect("request");
    assert_eq!(v4_reply(bin, &mut s).0, 0x5B, "{bin}: SOCKS4 refused");
}

fn bind_left_out_of_commands_is_not_supported(bin: Bin) {
    let (_p, proxy) = start_on_free_port(bin, StartOptions::default(), |port| {
        config(port, "", "commands = [\"connect\", \"udp\"]")
    });
    let mut s = control(bin, proxy);
    v5_bind(bin, &mut s, Ipv4Addr::LOCALHOST);
    assert_eq!(v5_reply(bin, &mut s).0, 0x07, "{bin}: not supported");
    let mut s = control(bin, proxy);
    s.write_all(&[4, 2, 0, 21, 127, 0, 0, 1, 0])
        .expect("request");
    assert_eq!(v4_reply(bin, &mut s).0, 0x5B, "{bin}: SOCKS4 refused");
}

/// No peer within `connect_timeout`: the second reply says timeout (06)
/// and the listener is gone.
fn no_peer_within_connect_timeout(bin: Bin) {
    let (_p, proxy) = start_on_free_port(bin, StartOptions::default(), |port| {
        format!(
            "{}{}",
            config_head("connect_timeout = \"1s\"", ""),
            service("socks", "socks", port, "")
        )
    });
    let mut s = control(bin, proxy);
    v5_bind(bin, &mut s, Ipv4Addr::LOCALHOST);
    let (code, listening) = v5_reply(bin, &mut s);
    assert_eq!(code, 0, "{bin}: BIND succeeds");
    assert_eq!(v5_reply(bin, &mut s).0, 0x06, "{bin}: timed out");
    assert!(
        TcpStream::connect(listening).is_err(),
        "{bin}: the listener closed with the timeout"
    );
}

/// With `outgoing` set, BIND listens on that address (the source it would
/// use toward the peer) and names it; it takes one connection: once the
/// peer is in, the listener is gone.
fn bind_listens_on_the_outgoing_address_for_one_peer(bin: Bin) {
    let (_p, proxy) = start_on_free_port(bin, StartOptions::default(), |port| {
        format!(
            "[network]\ninternal = [\"127.0.0.1\"]\nexternal = [\"127.0.0.3\"]\n\
             [log]\naccess = \"stderr\"\n{}",
            service("socks", "socks", port, "outgoing = \"127.0.0.3\"")
        )
    });
    let mut s = control(bin, proxy);
    v5_bind(bin, &mut s, Ipv4Addr::LOCALHOST);
    let (code, listening) = v5_reply(bin, &mut s);
    assert_eq!(code, 0, "{bin}: BIND succeeds");
    assert_eq!(
        listening.ip(),
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)),
        "{bin}: the listener is on the outgoing address"
    );
    let mut peer = connect_from(IpAddr::V4(Ipv4Addr::LOCALHOST), listening)
        .unwrap_or_else(|e| panic!("{bin}: the peer cannot connect to {listening}: {e}"));
    let (code, named) = v5_reply(bin, &mut s);
    assert_eq!(code, 0, "{bin}: the second reply");
    assert_eq!(named, peer.local_addr().expect("peer address"));
    relays(bin, &mut s, &mut peer);
    let closed = poll_until(WAIT, Duration::from_millis(50), || {
        connect_from(IpAddr::V4(Ipv4Addr::LOCALHOST), listening)
            .is_err()
            .then_some(())
    });
    assert!(
        closed.is_some(),
        "{bin}: a second connection to {listening} must be refused once the peer is in"
    );
}

/// `commands` without "connect": a SOCKS5 CONNECT is answered 07, a
/// SOCKS4 CONNECT 5B.
fn connect_left_out_of_commands_is_not_supported(bin: Bin) {
    let (_p, proxy) = start_on_free_port(bin, StartOptions::default(), |port| {
        config(port, "", "commands = [\"bind\", \"udp\"]")
    });
    let mut s = control(bin, proxy);
    s.write_all(&[5, 1, 0]).expect("greeting");
    let mut m = [0u8; 2];
    s.read_exact(&mut m).expect("method choice");
    s.write_all(&[5, 1, 0, 1, 127, 0, 0, 1, 0, 80])
        .expect("CONNECT request");
    assert_eq!(v5_reply(bin, &mut s).0, 0x07, "{bin}: not supported");
    let mut s = control(bin, proxy);
    s.write_all(&[4, 1, 0, 80, 127, 0, 0, 1, 0])
        .expect("request");
    assert_eq!(v4_reply(bin, &mut s).0, 0x5B, "{bin}: SOCKS4 refused");
}

/// A `commands` entry that is not a SOCKS command is refused at start
/// (exit 2) at its line, naming the three.
fn an_unknown_command_is_refused(bin: Bin) {
    let line = "commands = [\"connect\", \"dance\"]";
    portico_tests::expect_config_error(
        bin,
        &config(portico_tests::free_port(), "", line),
        line,
        &["\"dance\"", "\"connect\", \"bind\" or \"udp\""],
    );
}

/// An empty `commands` on a socks service is refused at start (exit 2)
/// at its line: the service would refuse every request.
fn no_command_at_all_is_refused(bin: Bin) {
    let line = "commands = []";
    portico_tests::expect_config_error(
        bin,
        &config(portico_tests::free_port(), "", line),
        line,
        &["commands is empty", "\"connect\", \"bind\" or \"udp\""],
    );
}

/// `commands` applies on SIGHUP like the rest: BIND left out is answered
/// 07; once the file allows it and the proxy is told, BIND succeeds.
fn commands_apply_on_reload(bin: Bin) {
    let (p, proxy) = start_on_free_port(bin, StartOptions::default(), |port| {
        config(port, "", "commands = [\"connect\"]")
    });
    let mut s = control(bin, proxy);
    v5_bind(bin, &mut s, Ipv4Addr::LOCALHOST);
    assert_eq!(v5_reply(bin, &mut s).0, 0x07, "{bin}: BIND left out");
    std::fs::write(
        p.config_path(),
        config(proxy.port(), "", "commands = [\"connect\", \"bind\"]"),
    )
    .expect("rewrite the configuration");
    p.signal(libc::SIGHUP);
    let granted = poll_until(WAIT, Duration::from_millis(100), || {
        let mut s = control(bin, proxy);
        v5_bind(bin, &mut s, Ipv4Addr::LOCALHOST);
        (v5_reply(bin, &mut s).0 == 0).then_some(())
    });
    assert!(
        granted.is_some(),
        "{bin}: BIND after the reload\n{}",
        p.stderr_text()
    );
}
