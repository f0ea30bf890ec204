//! SOCKS5 UDP ASSOCIATE (RFC 1928 section 7) end to end through both
//! binaries: a client written here from the RFC (the association's reply,
//! the datagram header both ways, a destination by name, what is dropped
//! and counted: a denied or unresolved destination, a stranger's datagram
//! on either side, a fragment; the end with the TCP connection or after
//! `udp_idle_timeout`), and a real one: Dante's `socksify` carrying `drill` to
//! a local `dnsmasq`.
//!
//! `drill`, not `dig`: dig (BIND 9.18, libuv) sends its queries with
//! sendmmsg(2), which Dante's preloaded library does not wrap, so they
//! reach the relay without their SOCKS header; Dante's own server drops
//! them too ("Could not extract valid address from SOCKS UDP header").
//! drill sends with sendto(2), which Dante wraps.
//!
//! Tools the cases need beyond the harness: `socksify` (dante-client),
//! `drill` (ldnsutils) and `dnsmasq` (dnsmasq-base). A case whose tool is
//! missing fails and names the package.
//!
//! Lookups that hang for real: a case runs Portico with a private
//! `/etc/resolv.conf` naming a name server the test plays on a loopback
//! address; it holds every query until the test lets it answer.

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use portico_tests::{
    both, config_head, free_port, require, run_tool, service, start_on_free_port, Bin, Portico,
    StartOptions, TempDir, UdpEcho,
};

both!(
    udp_associate_round_trip,
    udp_associate_from_ipv4_reaches_ipv6,
    udp_associate_drops_a_denied_destination,
    udp_associate_ends_with_its_tcp_connection,
    udp_associate_left_out_of_commands_is_not_supported,
    udp_announce_names_another_address,
    an_association_counts_as_a_connection,
    drill_through_socksify,
    udp_associate_drops_a_strangers_datagram,
    udp_associate_port_zero_takes_any_port_of_the_client,
    udp_associate_drops_a_reply_from_a_stranger,
    udp_associate_drops_a_fragment,
    udp_associate_to_a_name,
    udp_associate_ends_after_its_idle_timeout,
    the_relay_is_on_the_address_the_client_reached,
    udp_rules_see_the_user_and_the_client,
    bad_udp_settings_are_refused,
    at_most_1024_datagrams_wait_for_names,
);

/// How long a reply, or a line in the log, may take (a debug build on a
/// busy machine); never a speed check.
const WAIT: Duration = Duration::from_secs(10);

fn socks_config(port: u16, rules: &str, extra: &str) -> String {
    format!(
        "{}{rules}{}",
        config_head("", ""),
        service("socks", "socks", port, extra)
    )
}

/// The RFC 1928 header of a datagram to (or from) `addr`.
fn header(addr: SocketAddr) -> Vec<u8> {
    let mut h = vec![0, 0, 0];
    match addr {
        SocketAddr::V4(a) => {
            h.push(1);
            h.extend_from_slice(&a.ip().octets());
        }
        SocketAddr::V6(a) => {
            h.push(4);
            h.extend_from_slice(&a.ip().octets());
        }
    }
    h.extend_from_slice(&addr.port().to_be_bytes());
    h
}

/// A SOCKS5 reply's code and bound address (IPv4 and IPv6 only).
fn read_reply(bin: Bin, s: &mut TcpStream) -> (u8, SocketAddr) {
    let mut head = [0u8; 4];
    s.read_exact(&mut head)
        .unwrap_or_else(|e| panic!("{bin}: no SOCKS5 reply: {e}"));
    assert_eq!((head[0], head[2]), (5, 0), "{bin}: reply head {head:?}");
    let ip: IpAddr = match head[3] {
        1 => {
            let mut a = [0u8; 4];
            s.read_exact(&mut a).expect("IPv4 bound address");
            a.into()
        }
        4 => {
            let mut a = [0u8; 16];
            s.read_exact(&mut a).expect("IPv6 bound address");
            a.into()
        }
        t => panic!("{bin}: bound address of type {t}"),
    };
    let mut p = [0u8; 2];
    s.read_exact(&mut p).expect("bound port");
    (head[1], SocketAddr::new(ip, u16::from_be_bytes(p)))
}

/// Opens a UDP association through the proxy at `proxy` for a client
/// sending from `from`: the control connection and the relay's address.
fn associate(bin: Bin, proxy: SocketAddr, from: SocketAddr) -> (TcpStream, SocketAddr) {
    let mut s = TcpStream::connect(proxy).unwrap_or_else(|e| panic!("{bin}: connect: {e}"));
    s.set_read_timeout(Some(WAIT)).expect("read timeout");
    s.write_all(&[5, 1, 0]).expect("greeting");
    let mut m = [0u8; 2];
    s.read_exact(&mut m).expect("method choice");
    assert_eq!(m, [5, 0], "{bin}: no-auth chosen");
    let mut req = vec![5, 3, 0];
    req.extend_from_slice(&header(from)[3..]);
    s.write_all(&req).expect("UDP ASSOCIATE");
    let (code, relay) = read_reply(bin, &mut s);
    assert_eq!(code, 0, "{bin}: UDP ASSOCIATE succeeds");
    assert_eq!(
        relay.ip(),
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        "{bin}: the relay is on the address the client reached"
    );
    assert_ne!(relay.port(), 0, "{bin}: the relay names its port");
    (s, relay)
}

fn udp_client(bin: Bin) -> UdpSocket {
    let u = UdpSocket::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{bin}: bind: {e}"));
    u.set_read_timeout(Some(WAIT)).expect("read timeout");
    u
}

/// Sends `payload` to `to` through the relay and expects it back from
/// `to`, with the header naming `to`.
fn round_trip(bin: Bin, u: &UdpSocket, relay: SocketAddr, to: SocketAddr, payload: &[u8]) {
    let d = [header(to), payload.to_vec()].concat();
    u.send_to(&d, relay).expect("send to the relay");
    let mut buf = [0u8; 2048];
    let (n, from) = u
        .recv_from(&mut buf)
        .unwrap_or_else(|e| panic!("{bin}: no reply through the association: {e}"));
    assert_eq!(from, relay, "{bin}: the reply comes from the relay");
    assert_eq!(
        &buf[..n],
        &d[..],
        "{bin}: the reply carries the header naming its source, then the payload"
    );
}

/// The association's access line, once it is written.
fn association_line(bin: Bin, p: &Portico, client: SocketAddr) -> String {
    p.wait_for_stderr(
        |l| l.contains(&format!(" socks {client} - UDP-ASSOCIATE ")),
        WAIT,
    )
    .unwrap_or_else(|| {
        panic!(
            "{bin}: no UDP-ASSOCIATE access line for {client}\nstderr:\n{}",
            p.stderr_text()
        )
    })
}

fn udp_associate_round_trip(bin: Bin) {
    let echo = UdpEcho::start();
    let (p, proxy) = start_on_free_port(bin, StartOptions::default(), |port| {
        socks_config(port, "", "")
    });
    let u = udp_client(bin);
    let from = u.local_addr().expect("local address");
    let (s, relay) = associate(bin, proxy, from);
    let control = s.local_addr().expect("control address");
    for i in 0..5usize {
        round_trip(bin, &u, relay, echo.addr(), &vec![b'a' + i as u8; 100 + i]);
    }
    let relayed_from: Vec<SocketAddr> = echo.peers();
    assert!(
        relayed_from.iter().all(|a| a.port() != relay.port()),
        "{bin}: datagrams leave by the outward socket, not the client's side"
    );
    drop(s);
    let line = association_line(bin, &p, control);
    let total: usize = (0..5).map(|i| 100 + i).sum();
    assert!(
        line.contains(&format!(" ok up={total} down={total} ")),
        "{bin}: payload bytes each way: {line}"
    );
    assert!(
        line.ends_with(" datagrams_up=5 datagrams_down=5 dropped=0"),
        "{bin}: datagram counts after the duration: {line}"
    );
}

/// An IPv4 client reaches an IPv6 destination (and an IPv4 one) through
/// one association: with no `outgoing`, its outward socket is dual-stack.
fn udp_associate_from_ipv4_reaches_ipv6(bin: Bin) {
    let echo6 = UdpEcho::start_on(IpAddr::V6(std::net::Ipv6Addr::LOCALHOST));
    let echo4 = UdpEcho::start();
    let (p, proxy) = start_on_free_port(bin, StartOptions::default(), |port| {
        socks_config(port, "", "")
    });
    let u = udp_client(bin);
    let from = u.local_addr().expect("local address");
    let (s, relay) = associate(bin, proxy, from);
    let control = s.local_addr().expect("control address");
    round_trip(bin, &u, relay, echo6.addr(), b"to six");
    round_trip(bin, &u, relay, echo4.addr(), b"to four");
    drop(s);
    let line = association_line(bin, &p, control);
    assert!(
        line.ends_with(" datagrams_up=2 datagrams_down=2 dropped=0"),
        "{bin}: both went out and came back: {line}"
    );
}

fn udp_associate_drops_a_denied_destination(bin: Bin) {
    let allowed = UdpEcho::start();
    let denied = UdpEcho::start();
    let rules = format!(
        "[[rule]]\naction = \"deny\"\nports = [{}]\n[[rule]]\naction = \"allow\"\n",
        denied.addr().port()
    );
    let (p, proxy) = start_on_free_port(bin, StartOptions::default(), |port| {
        socks_config(port, &rules, "")
    });
    let u = udp_client(bin);
    let (s, relay) = associate(bin, proxy, u.local_addr().expect("local address"));
    let control = s.local_addr().expect("control address");
    // The denied one goes first: the allowed one's reply coming back
    // shows that the first was handled (and dropped) before it.
    u.send_to(&[header(denied.addr()), b"no".to_vec()].concat(), relay)
        .expect("send");
    round_trip(bin, &u, relay, allowed.addr(), b"yes");
    assert!(
        denied.peers().is_empty(),
        "{bin}: nothing reached the denied destination"
    );
    drop(s);
    let line = association_line(bin, &p, control);
    assert!(
        line.ends_with(" datagrams_up=1 datagrams_down=1 dropped=1"),
        "{bin}: the denied datagram is counted as dropped: {line}"
    );
}

fn udp_associate_ends_with_its_tcp_connection(bin: Bin) {
    let echo = UdpEcho::start();
    let (p, proxy) = start_on_free_port(bin, StartOptions::default(), |port| {
        socks_config(port, "", "")
    });
    let u = udp_client(bin);
    let (s, relay) = associate(bin, proxy, u.local_addr().expect("local address"));
    let control = s.local_addr().expect("control address");
    round_trip(bin, &u, relay, echo.addr(), b"before");
    drop(s);
    let line = association_line(bin, &p, control);
    assert!(line.contains(" ok up=6 down=6 "), "{bin}: {line}");
    // The relay's socket closes (the threaded binary's UDP thread closes
    // it just after the line): a datagram to it is then refused (ICMP
    // port unreachable, seen by a connected socket), never relayed.
    u.connect(relay).expect("connect the client socket");
    u.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("read timeout");
    let deadline = Instant::now() + WAIT;
    let mut buf = [0u8; 64];
    loop {
        u.send(&[header(echo.addr()), b"after".to_vec()].concat())
            .expect("send");
        match u.recv(&mut buf) {
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => break,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            other => panic!("{bin}: nothing is relayed once the association ended: {other:?}"),
        }
        assert!(
            Instant::now() < deadline,
            "{bin}: the relay's socket must close with its association"
        );
    }
    assert_eq!(
        echo.peers().len(),
        1,
        "{bin}: only the datagram sent before the end reached the echo"
    );
}

fn udp_associate_left_out_of_commands_is_not_supported(bin: Bin) {
    let (_p, proxy) = start_on_free_port(bin, StartOptions::default(), |port| {
        socks_config(port, "", "commands = [\"connect\", \"bind\"]")
    });
    let mut s = TcpStream::connect(proxy).expect("connect");
    s.set_read_timeout(Some(WAIT)).expect("read timeout");
    s.write_all(&[5, 1, 0, 5, 3, 0, 1, 0, 0, 0, 0, 0, 0])
        .expect("request");
    let mut r = [0u8; 12];
    s.read_exact(&mut r).expect("reply");
    assert_eq!(
        r,
        [5, 0, 5, 7, 0, 1, 0, 0, 0, 0, 0, 0],
        "{bin}: command not supported"
    );
}

/// Behind address translation: the reply names `udp_announce` and the
/// socket's own port; the socket stays on the address the client reached.
fn udp_announce_names_another_address(bin: Bin) {
    let echo = UdpEcho::start();
    let (_p, proxy) = start_on_free_port(bin, StartOptions::default(), |port| {
        socks_config(port, "", "udp_announce = \"198.51.100.7\"")
    });
    let u = udp_client(bin);
    let mut s = TcpStream::connect(proxy).expect("connect");
    s.set_read_timeout(Some(WAIT)).expect("read timeout");
    s.write_all(&[5, 1, 0, 5, 3, 0, 1, 0, 0, 0, 0, 0, 0])
        .expect("request");
    let mut m = [0u8; 2];
    s.read_exact(&mut m).expect("method choice");
    let (code, named) = read_reply(bin, &mut s);
    assert_eq!(code, 0, "{bin}: UDP ASSOCIATE succeeds");
    assert_eq!(
        named.ip(),
        "198.51.100.7".parse::<IpAddr>().expect("address"),
        "{bin}: the reply names udp_announce"
    );
    // The socket itself is on the address the client reached.
    let relay = SocketAddr::new(proxy.ip(), named.port());
    round_trip(bin, &u, relay, echo.addr(), b"behind NAT");
}

/// With `max_per_client = 1`, an open association is the client's one
/// connection: another request from it is refused until it ends.
fn an_association_counts_as_a_connection(bin: Bin) {
    let (p, proxy) = start_on_free_port(bin, StartOptions::default(), |port| {
        format!(
            "{}{}",
            config_head("max_per_client = 1", ""),
            service("socks", "socks", port, "")
        )
    });
    let u = udp_client(bin);
    let (s, _relay) = associate(bin, proxy, u.local_addr().expect("local address"));
    let second = || {
        let mut t = TcpStream::connect(proxy).expect("connect");
        t.set_read_timeout(Some(WAIT)).expect("read timeout");
        t.write_all(&[5, 1, 0, 5, 3, 0, 1, 0, 0, 0, 0, 0, 0])
            .expect("request");
        let mut m = [0u8; 2];
        t.read_exact(&mut m).expect("method choice");
        read_reply(bin, &mut t).0
    };
    assert_ne!(second(), 0, "{bin}: a second association is over the limit");
    let control = s.local_addr().expect("control address");
    drop(s);
    association_line(bin, &p, control);
    assert_eq!(second(), 0, "{bin}: once it ended, the client may again");
}

/// dnsmasq answering `example.test` on 127.0.0.1:`port`, alone (no
/// upstream, no hosts file), with a configuration file of its own.
struct Dnsmasq {
    child: Child,
    _dir: TempDir,
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn dnsmasq(port: u16) -> Dnsmasq {
    let bin = require("dnsmasq", "dnsmasq-base");
    let dir = TempDir::new();
    let conf = dir.write("dnsmasq.conf", "# only what the command line says\n");
    let child = Command::new(bin)
        .arg(format!("--conf-file={}", conf.display()))
        .args([
            "--no-daemon",
            &format!("--port={port}"),
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            "--address=/example.test/192.0.2.1",
            "--no-resolv",
            "--no-hosts",
            "--user=root",
            &format!("--pid-file={}", dir.path().join("pid").display()),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start dnsmasq: {e}"));
    Dnsmasq { child, _dir: dir }
}

/// `drill` wrapped in Dante's `socksify`, which carries its UDP query to
/// the local dnsmasq through the proxy's UDP ASSOCIATE; the access line
/// shows the association.
fn drill_through_socksify(bin: Bin) {
    let socksify = require("socksify", "dante-client");
    let drill = require("drill", "ldnsutils");
    let dns_port = free_port();
    let _dns = dnsmasq(dns_port);
    let (p, proxy) = start_on_free_port(bin, StartOptions::default(), |port| {
        socks_config(port, "", "")
    });
    let dir = TempDir::new();
    let conf = dir.write(
        "socks.conf",
        &format!(
            "route {{\n  from: 0.0.0.0/0 to: 0.0.0.0/0 via: 127.0.0.1 port = {}\n  \
             proxyprotocol: socks_v5\n  command: connect udpassociate\n  method: none\n}}\n",
            proxy.port()
        ),
    );
    let mut cmd = Command::new(socksify);
    // Dante routes the host's own networks (loopback included) directly
    // unless told not to: the DNS server is on loopback.
    cmd.env("SOCKS_CONF", &conf)
        .env("SOCKS_AUTOADD_LANROUTES", "no")
        .arg(drill)
        .args([
            "-p",
            &dns_port.to_string(),
            "example.test",
            "A",
            "@127.0.0.1",
        ]);
    let out = run_tool(bin, cmd, None, Duration::from_secs(60));
    let answered = out.stdout_text().lines().any(|l| {
        l.split_whitespace().collect::<Vec<_>>() == ["example.test.", "0", "IN", "A", "192.0.2.1"]
    });
    assert!(
        out.status.success() && answered,
        "{bin}: drill through socksify must get the answer\n{}\nproxy stderr:\n{}",
        out.text(),
        p.stderr_text()
    );
    let line = p
        .wait_for_stderr(|l| l.contains(" UDP-ASSOCIATE "), WAIT)
        .unwrap_or_else(|| {
            panic!(
                "{bin}: the query went through an association: no UDP-ASSOCIATE line\n{}",
                p.stderr_text()
            )
        });
    assert!(
        line.ends_with(" datagrams_up=1 datagrams_down=1 dropped=0"),
        "{bin}: one query, one answer: {line}"
    );
}

/// A datagram to the association's client-facing socket from another IP
/// address than the client's, or from the client's IP but another port
/// than its request named, is dropped and counted; nothing of it reaches
/// the destination. Each is sent before the client's own: a socket reads
/// in arrival order, so the client's reply coming back shows both were
/// handled first.
fn udp_associate_drops_a_strangers_datagram(bin: Bin) {
    let echo = UdpEcho::start();
    let (p, proxy) = start_on_free_port(bin, StartOptions::default(), |port| {
        socks_config(port, "", "")
    });
    let u = udp_client(bin);
    let (s, relay) = associate(bin, proxy, u.local_addr().expect("local address"));
    let control = s.local_addr().expect("control address");
    let other_ip = UdpSocket::bind("127.0.0.2:0").expect("bind 127.0.0.2");
    let other_port = udp_client(bin);
    for stranger in [&other_ip, &other_port] {
        stranger
            .send_to(&[header(echo.addr()), b"stranger".to_vec()].concat(), relay)
            .expect("send from a stranger");
    }
    round_trip(bin, &u, relay, echo.addr(), b"the client");
    assert_eq!(
        echo.peers().len(),
        1,
        "{bin}: only the client's datagram reached the destination"
    );
    drop(s);
    let line = association_line(bin, &p, control);
    assert!(
        line.ends_with(" datagrams_up=1 datagrams_down=1 dropped=2"),
        "{bin}: both strangers' datagrams are counted as dropped: {line}"
    );
}

/// A request naming port 0 takes datagrams from any port of the client's
/// IP address; the replies go where the last one came from.
fn udp_associate_port_zero_takes_any_port_of_the_client(bin: Bin) {
    let echo = UdpEcho::start();
    let (p, proxy) = start_on_free_port(bin, StartOptions::default(), |port| {
        socks_config(port, "", "")
    });
    let (s, relay) = associate(bin, proxy, "0.0.0.0:0".parse().expect("address"));
    let control = s.local_addr().expect("control address");
    let (a, b) = (udp_client(bin), udp_client(bin));
    round_trip(bin, &a, relay, echo.addr(), b"from one port");
    round_trip(bin, &b, relay, echo.addr(), b"from another");
    drop(s);
    let line = association_line(bin, &p, control);
    assert!(
        line.ends_with(" datagrams_up=2 datagrams_down=2 dropped=0"),
        "{bin}: {line}"
    );
}

/// Only a reply from an address and port the client has sent to is
/// relayed: a datagram to the association's outward socket from another
/// port is dropped and counted (the outward side is not open to anyone).
fn udp_associate_drops_a_reply_from_a_stranger(bin: Bin) {
    let echo = UdpEcho::start();
    let (p, proxy) = start_on_free_port(bin, StartOptions::default(), |port| {
        socks_config(port, "", "")
    });
    let u = udp_client(bin);
    let (s, relay) = associate(bin, proxy, u.local_addr().expect("local address"));
    let control = s.local_addr().expect("control address");
    round_trip(bin, &u, relay, echo.addr(), b"first");
    // The echo saw the outward socket's address.
    let outward = echo.peers()[0];
    assert_ne!(outward, relay, "{bin}: two sockets");
    for ip in ["127.0.0.1", "127.0.0.2"] {
        let stranger = UdpSocket::bind((ip, 0)).expect("bind a stranger");
        stranger
            .send_to(b"unasked", outward)
            .unwrap_or_else(|e| panic!("{bin}: send to the outward socket {outward}: {e}"));
    }
    // The strangers' datagrams are queued at the outward socket before the
    // echo's reply to this one: were they relayed, they would come first.
    round_trip(bin, &u, relay, echo.addr(), b"second");
    drop(s);
    let line = association_line(bin, &p, control);
    assert!(
        line.ends_with(" datagrams_up=2 datagrams_down=2 dropped=2"),
        "{bin}: the strangers' datagrams are dropped and counted: {line}"
    );
}

/// A datagram with FRAG other than 0 is dropped (and counted).
fn udp_associate_drops_a_fragment(bin: Bin) {
    let echo = UdpEcho::start();
    let (p, proxy) = start_on_free_port(bin, StartOptions::default(), |port| {
        socks_config(port, "", "")
    });
    let u = udp_client(bin);
    let (s, relay) = associate(bin, proxy, u.local_addr().expect("local address"));
    let control = s.local_addr().expect("control address");
    let mut fragment = header(echo.addr());
    fragment[2] = 1;
    fragment.extend_from_slice(b"a fragment");
    u.send_to(&fragment, relay).expect("send");
    round_trip(bin, &u, relay, echo.addr(), b"whole");
    assert_eq!(
        echo.peers().len(),
        1,
        "{bin}: the fragment did not reach the destination"
    );
    drop(s);
    let line = association_line(bin, &p, control);
    assert!(
        line.ends_with(" datagrams_up=1 datagrams_down=1 dropped=1"),
        "{bin}: the fragment is counted as dropped: {line}"
    );
}

/// The header of a datagram to the name `host` and `port`.
fn name_header(host: &str, port: u16) -> Vec<u8> {
    let mut h = vec![0, 0, 0, 3, host.len() as u8];
    h.extend_from_slice(host.as_bytes());
    h.extend_from_slice(&port.to_be_bytes());
    h
}

/// A destination given as a name is resolved (here through a private
/// `/etc/hosts`) and reached; the reply's header names the address it
/// came from. A name denied by a rule, and a name that does not resolve,
/// are dropped and counted.
fn udp_associate_to_a_name(bin: Bin) {
    let echo = UdpEcho::start();
    let rules = "[[rule]]\naction = \"deny\"\ndestinations = [\"*.blocked.test\"]\n\
                 [[rule]]\naction = \"allow\"\n";
    let opts = StartOptions {
        hosts: Some("127.0.0.1 localhost\n127.0.0.1 udp.test\n127.0.0.1 x.blocked.test\n"),
        ..StartOptions::default()
    };
    let (p, proxy) = start_on_free_port(bin, opts, |port| socks_config(port, rules, ""));
    let u = udp_client(bin);
    let (s, relay) = associate(bin, proxy, u.local_addr().expect("local address"));
    let control = s.local_addr().expect("control address");
    let port = echo.addr().port();
    // The two that go nowhere first: the name's reply coming back shows
    // they were handled before it (one name resolves at a time, in order).
    for host in ["x.blocked.test", "nowhere.invalid"] {
        u.send_to(&[name_header(host, port), b"no".to_vec()].concat(), relay)
            .expect("send");
    }
    for payload in [&b"by name"[..], b"again by name"] {
        u.send_to(
            &[name_header("udp.test", port), payload.to_vec()].concat(),
            relay,
        )
        .expect("send to a name");
        let mut buf = [0u8; 2048];
        let (n, from) = u.recv_from(&mut buf).unwrap_or_else(|e| {
            panic!(
                "{bin}: no reply from udp.test through the association: {e}\nstderr:\n{}",
                p.stderr_text()
            )
        });
        assert_eq!(from, relay, "{bin}: the reply comes from the relay");
        assert_eq!(
            &buf[..n],
            &[header(echo.addr()), payload.to_vec()].concat()[..],
            "{bin}: the reply's header names the address it came from"
        );
    }
    assert_eq!(
        echo.peers().len(),
        2,
        "{bin}: only the datagrams to udp.test reached the destination"
    );
    drop(s);
    let line = association_line(bin, &p, control);
    assert!(
        line.ends_with(" datagrams_up=2 datagrams_down=2 dropped=2"),
        "{bin}: the denied name and the one that did not resolve are dropped: {line}"
    );
}

/// An association with no datagram for `udp_idle_timeout` ends while its
/// TCP connection is still open: the proxy closes that connection, and
/// the line says `idle` with its counts.
fn udp_associate_ends_after_its_idle_timeout(bin: Bin) {
    let echo = UdpEcho::start();
    let (p, proxy) = start_on_free_port(bin, StartOptions::default(), |port| {
        format!(
            "{}{}",
            config_head("udp_idle_timeout = \"1s\"", ""),
            service("socks", "socks", port, "")
        )
    });
    let u = udp_client(bin);
    let (mut s, relay) = associate(bin, proxy, u.local_addr().expect("local address"));
    let control = s.local_addr().expect("control address");
    round_trip(bin, &u, relay, echo.addr(), b"once");
    let line = association_line(bin, &p, control);
    assert!(
        line.contains(" idle up=4 down=4 ")
            && line.ends_with(" datagrams_up=1 datagrams_down=1 dropped=0"),
        "{bin}: the association ended idle: {line}"
    );
    let mut rest = Vec::new();
    match s.read_to_end(&mut rest) {
        Ok(_) => assert!(rest.is_empty(), "{bin}: nothing after the reply: {rest:?}"),
        Err(e) => assert_eq!(
            e.kind(),
            ErrorKind::ConnectionReset,
            "{bin}: the control connection must be closed by the proxy: {e}"
        ),
    }
}

/// A service on two addresses: a client that reached it on the second
/// gets a relay there (and it relays).
fn the_relay_is_on_the_address_the_client_reached(bin: Bin) {
    let echo = UdpEcho::start();
    let second = Ipv4Addr::new(127, 0, 0, 5);
    let (_p, proxy) = start_on_free_port(bin, StartOptions::default(), |port| {
        format!(
            "[network]\ninternal = [\"127.0.0.1\", \"{second}\"]\n[log]\naccess = \"stderr\"\n\
             [[service]]\nname = \"socks\"\nkind = \"socks\"\n\
             listen = [\"127.0.0.1:{port}\", \"{second}:{port}\"]\n"
        )
    });
    let there = SocketAddr::new(second.into(), proxy.port());
    let u = udp_client(bin);
    let mut s = TcpStream::connect(there).expect("connect");
    s.set_read_timeout(Some(WAIT)).expect("read timeout");
    s.write_all(&[5, 1, 0, 5, 3, 0, 1, 0, 0, 0, 0, 0, 0])
        .expect("request");
    let mut m = [0u8; 2];
    s.read_exact(&mut m).expect("method choice");
    let (code, relay) = read_reply(bin, &mut s);
    assert_eq!(code, 0, "{bin}: UDP ASSOCIATE succeeds");
    assert_eq!(
        relay.ip(),
        IpAddr::V4(second),
        "{bin}: the relay is on the address the client reached"
    );
    round_trip(bin, &u, relay, echo.addr(), b"on the second address");
}

/// Each datagram is checked against the rules with the association's
/// service, client and user: a rule for alice's user name and one for the
/// client's address each drop datagrams to their port; another port goes.
fn udp_rules_see_the_user_and_the_client(bin: Bin) {
    let (by_user, by_client, allowed) = (UdpEcho::start(), UdpEcho::start(), UdpEcho::start());
    let rules = format!(
        "{}[[rule]]\naction = \"deny\"\nusers = [\"alice\"]\nports = [{}]\n\
         [[rule]]\naction = \"deny\"\nservices = [\"socks\"]\nclients = [\"127.0.0.1\"]\n\
         ports = [{}]\n[[rule]]\naction = \"allow\"\n",
        portico_tests::ALICE,
        by_user.addr().port(),
        by_client.addr().port()
    );
    let (p, proxy) = start_on_free_port(bin, StartOptions::default(), |port| {
        socks_config(port, &rules, "auth = true")
    });
    let u = udp_client(bin);
    let from = u.local_addr().expect("local address");
    let mut s = TcpStream::connect(proxy).unwrap_or_else(|e| panic!("{bin}: connect: {e}"));
    s.set_read_timeout(Some(WAIT)).expect("read timeout");
    s.write_all(&[5, 1, 2]).expect("greeting");
    let mut m = [0u8; 2];
    s.read_exact(&mut m).expect("method choice");
    assert_eq!(m, [5, 2], "{bin}: a login is asked for");
    s.write_all(b"\x01\x05alice\x06secret").expect("login");
    s.read_exact(&mut m).expect("login reply");
    assert_eq!(m, [1, 0], "{bin}: alice logs in");
    let mut req = vec![5, 3, 0];
    req.extend_from_slice(&header(from)[3..]);
    s.write_all(&req).expect("UDP ASSOCIATE");
    let (code, relay) = read_reply(bin, &mut s);
    assert_eq!(code, 0, "{bin}: UDP ASSOCIATE succeeds");
    let control = s.local_addr().expect("control address");
    for denied in [&by_user, &by_client] {
        u.send_to(&[header(denied.addr()), b"no".to_vec()].concat(), relay)
            .expect("send");
    }
    round_trip(bin, &u, relay, allowed.addr(), b"yes");
    assert!(
        by_user.peers().is_empty() && by_client.peers().is_empty(),
        "{bin}: nothing reached a denied destination"
    );
    drop(s);
    let line = p
        .wait_for_stderr(
            |l| l.contains(&format!(" socks {control} alice UDP-ASSOCIATE ")),
            WAIT,
        )
        .unwrap_or_else(|| {
            panic!(
                "{bin}: no line for alice's association\n{}",
                p.stderr_text()
            )
        });
    assert!(
        line.ends_with(" datagrams_up=1 datagrams_down=1 dropped=2"),
        "{bin}: both denied datagrams are dropped: {line}"
    );
}

/// `udp_announce` and `udp_idle_timeout` are checked at start: a bad value
/// is refused (exit 2) at its line, saying what is wrong.
fn bad_udp_settings_are_refused(bin: Bin) {
    let line = "udp_announce = \"somewhere\"";
    portico_tests::expect_config_error(
        bin,
        &socks_config(free_port(), "", line),
        line,
        &["udp_announce", "not an IP address"],
    );
    let line = "udp_idle_timeout = \"-1s\"";
    portico_tests::expect_config_error(
        bin,
        &format!(
            "{}{}",
            config_head(line, ""),
            service("socks", "socks", free_port(), "")
        ),
        line,
        &["udp_idle_timeout", "not a duration"],
    );
}

/// A name server on `127.53.X.Y:53` (each one its own address, as
/// `resolv.conf` cannot name a port) that holds every query until
/// [`HeldDns::release`], then answers each name with `127.0.0.1` (A) and
/// no IPv6 address (AAAA: NOERROR, no answer).
struct HeldDns {
    addr: SocketAddr,
    released: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HeldDns {
    fn start(bin: Bin) -> HeldDns {
        static NEXT: AtomicUsize = AtomicUsize::new(1);
        let n = NEXT.fetch_add(1, Ordering::Relaxed) % 250 + 1;
        let ip = Ipv4Addr::new(127, 53, (std::process::id() % 250) as u8 + 1, n as u8);
        let addr = SocketAddr::new(ip.into(), 53);
        let sock = UdpSocket::bind(addr)
            .unwrap_or_else(|e| panic!("{bin}: cannot bind the test's name server on {addr}: {e}"));
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("read timeout");
        let released = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, st) = (released.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut held: Vec<(Vec<u8>, SocketAddr)> = Vec::new();
            let mut buf = [0u8; 1500];
            while !st.load(Ordering::Relaxed) {
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    held.push((buf[..n].to_vec(), from));
                }
                if r.load(Ordering::Relaxed) {
                    for (q, from) in held.drain(..) {
                        if let Some(a) = dns_answer(&q) {
                            let _ = sock.send_to(&a, from);
                        }
                    }
                }
            }
        });
        HeldDns {
            addr,
            released,
            stop,
            thread: Some(thread),
        }
    }

    fn release(&self) {
        self.released.store(true, Ordering::Relaxed);
    }
}

impl Drop for HeldDns {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The answer to the DNS query `q`: A gets `127.0.0.1`, anything else
/// none (NOERROR). `None` for what is not a one-question query.
fn dns_answer(q: &[u8]) -> Option<Vec<u8>> {
    if q.len() < 12 || q[4..6] != [0, 1] {
        return None;
    }
    let mut i = 12;
    loop {
        let len = *q.get(i)? as usize;
        i += 1 + len;
        if len == 0 {
            break;
        }
    }
    let qtype = q.get(i..i + 2)?;
    let end = i + 4;
    let question = q.get(12..end)?;
    let is_a = qtype == [0, 1];
    // QR, the query's RD, RA; one question, one answer or none.
    let mut a = vec![
        q[0],
        q[1],
        0x80 | (q[2] & 1),
        0x80,
        0,
        1,
        0,
        is_a as u8,
        0,
        0,
        0,
        0,
    ];
    a.extend_from_slice(question);
    if is_a {
        a.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 127, 0, 0, 1]);
    }
    Some(a)
}

/// The receive queue (bytes) and kernel drops of the UDP socket bound to
/// `addr` (IPv4), from /proc/net/udp; `None` when there is no such socket.
fn udp_socket_queue(addr: SocketAddr) -> Option<(u64, u64)> {
    let SocketAddr::V4(a) = addr else {
        return None;
    };
    let want = format!(
        "{:08X}:{:04X}",
        u32::from_ne_bytes(a.ip().octets()),
        a.port()
    );
    let table = std::fs::read_to_string("/proc/net/udp").expect("/proc/net/udp");
    table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.get(1) != Some(&want.as_str()) {
            return None;
        }
        let rx = f.get(4)?.split(':').nth(1)?;
        let rx = u64::from_str_radix(rx, 16).ok()?;
        let drops = f.last()?.parse().ok()?;
        Some((rx, drops))
    })
}

/// A number after `key=` in an access line.
fn count_in(line: &str, key: &str) -> u64 {
    line.split(' ')
        .find_map(|w| w.strip_prefix(key))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {key}N in: {line}"))
}

/// Datagrams whose destination is a name wait for its lookup: at most 32
/// per association, at most 1024 per worker; past that they are dropped
/// and counted. The lookups hang (a name server that holds its queries)
/// while 40 associations each send 33 datagrams to names of their own;
/// then it answers, and exactly 1024 go out, the rest are counted dropped.
fn at_most_1024_datagrams_wait_for_names(bin: Bin) {
    const ASSOCIATIONS: usize = 40;
    const EACH: usize = 33;
    // What the core's rule gives: each association holds at most 32, and
    // 40 × 32 = 1280 ≥ 1024, so the worker's bound is reached whatever
    // the order the datagrams are read in: exactly 1024 wait.
    const WAITING: u64 = 1024;
    let dns = HeldDns::start(bin);
    let sink = UdpSocket::bind("127.0.0.1:0").expect("bind the destination");
    sink.set_read_timeout(Some(Duration::from_millis(100)))
        .expect("read timeout");
    let port = sink.local_addr().expect("destination address").port();
    let received = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let counter = {
        let (received, done) = (received.clone(), done.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !done.load(Ordering::Relaxed) {
                if sink.recv_from(&mut buf).is_ok() {
                    received.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let resolv = format!(
        "nameserver {}\noptions timeout:30 attempts:1\n",
        dns.addr.ip()
    );
    let opts = StartOptions {
        resolv: Some(&resolv),
        hosts: Some("127.0.0.1 localhost\n"),
        ..StartOptions::default()
    };
    let (p, proxy) = start_on_free_port(bin, opts, |port| {
        format!(
            "{}\n[runtime]\nworkers = 1\n",
            socks_config(port, "[[rule]]\naction = \"allow\"\n", "")
        )
    });
    let mut assocs = Vec::new();
    for a in 0..ASSOCIATIONS {
        let u = udp_client(bin);
        let (s, relay) = associate(bin, proxy, u.local_addr().expect("local address"));
        for d in 0..EACH {
            let host = format!("n{d}.a{a}.hang.test");
            let payload = format!("{a}/{d}");
            u.send_to(
                &[name_header(&host, port), payload.into_bytes()].concat(),
                relay,
            )
            .expect("send to a name");
        }
        assocs.push((s, u, relay));
    }
    // Every datagram has been read by Portico (its sockets' receive
    // queues are empty) and none was lost before it: then the lookups may
    // answer, and what waits is what the bound let wait.
    let deadline = Instant::now() + WAIT;
    loop {
        let queues: Vec<Option<(u64, u64)>> = assocs
            .iter()
            .map(|(_, _, relay)| udp_socket_queue(*relay))
            .collect();
        assert!(
            queues.iter().flatten().all(|&(_, drops)| drops == 0),
            "{bin}: the kernel dropped datagrams before Portico read them: {queues:?}"
        );
        if queues.iter().all(|q| matches!(q, Some((0, _)))) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{bin}: Portico did not read every datagram within {WAIT:?}: {queues:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        received.load(Ordering::Relaxed),
        0,
        "{bin}: nothing goes out while its name's lookup hangs"
    );
    dns.release();
    let deadline = Instant::now() + Duration::from_secs(60);
    while (received.load(Ordering::Relaxed) as u64) < WAITING && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let controls: Vec<SocketAddr> = assocs
        .iter()
        .map(|(s, _, _)| s.local_addr().expect("control address"))
        .collect();
    drop(assocs);
    let (mut up, mut dropped) = (0, 0);
    for c in controls {
        let line = association_line(bin, &p, c);
        let (u, d) = (
            count_in(&line, "datagrams_up="),
            count_in(&line, "dropped="),
        );
        assert_eq!(
            u + d,
            EACH as u64,
            "{bin}: every datagram of an association is relayed or dropped: {line}"
        );
        assert!(u <= 32, "{bin}: at most 32 wait per association: {line}");
        up += u;
        dropped += d;
    }
    done.store(true, Ordering::Relaxed);
    let _ = counter.join();
    assert_eq!(
        up, WAITING,
        "{bin}: the datagrams that waited went out once their names resolved"
    );
    assert_eq!(
        dropped,
        (ASSOCIATIONS * EACH) as u64 - WAITING,
        "{bin}: past 1024 waiting, datagrams are dropped and counted"
    );
    assert_eq!(
        received.load(Ordering::Relaxed) as u64,
        WAITING,
        "{bin}: exactly the datagrams that waited reached their destination"
    );
}
