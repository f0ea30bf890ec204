//! Mapped UDP ports (`protocol = "udp"`).

use std::collections::HashSet;
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use portico_tests::{
    both, config_head, local, mapped_service, poll_until, service, start_on_free_port,
    start_on_free_ports, Bin, StartOptions, UdpEcho, PROMPTLY,
};

both!(
    udp_datagrams_round_trip,
    udp_each_client_has_its_own_mapping,
    udp_mapping_ends_after_idle_timeout,
    udp_datagrams_count_in_the_quota,
);

fn udp_config(port: u16, destination: SocketAddr) -> String {
    udp_config_with(port, destination, "")
}

fn udp_config_with(port: u16, destination: SocketAddr, limits: &str) -> String {
    format!(
        "{}{}",
        config_head(limits, ""),
        mapped_service("dns", port, destination, "protocol = \"udp\"")
    )
}

fn udp_client(bin: Bin) -> UdpSocket {
    let s =
        UdpSocket::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{bin}: bind a UDP client: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap_or_else(|e| panic!("{bin}: set_read_timeout: {e}"));
    s
}

/// Sends `msg` to the proxy and expects it back from the proxy's address.
fn round_trip(bin: Bin, s: &UdpSocket, proxy: SocketAddr, msg: &[u8]) {
    s.send_to(msg, proxy)
        .unwrap_or_else(|e| panic!("{bin}: send_to {proxy}: {e}"));
    let mut buf = [0u8; 2048];
    let (n, from) = s
        .recv_from(&mut buf)
        .unwrap_or_else(|e| panic!("{bin}: no reply through the UDP mapping within 5 s: {e}"));
    assert_eq!(&buf[..n], msg, "{bin}: the echoed datagram differs");
    assert_eq!(
        from, proxy,
        "{bin}: the reply must come from the mapped port"
    );
}

fn udp_datagrams_round_trip(bin: Bin) {
    let echo = UdpEcho::start();
    let (_p, proxy) = start_on_free_port(bin, StartOptions::default(), |port| {
        udp_config(port, echo.addr())
    });
    let s = udp_client(bin);
    for i in 0..20u32 {
        let msg = format!("datagram {i} {}", "x".repeat(i as usize * 50));
        round_trip(bin, &s, proxy, msg.as_bytes());
    }
}

fn udp_each_client_has_its_own_mapping(bin: Bin) {
    let echo = UdpEcho::start();
    let (_p, proxy) = start_on_free_port(bin, StartOptions::default(), |port| {
        udp_config(port, echo.addr())
    });
    let (a, b) = (udp_client(bin), udp_client(bin));
    round_trip(bin, &a, proxy, b"from a");
    round_trip(bin, &b, proxy, b"from b");
    round_trip(bin, &a, proxy, b"from a again");
    let peers: HashSet<SocketAddr> = echo.peers().into_iter().collect();
    assert_eq!(
        peers.len(),
        2,
        "{bin}: two clients must reach the destination from two sockets, saw {peers:?}"
    );
}

/// A mapping that carries nothing for `udp_idle_timeout` ends (and is
/// logged with its byte counts); the next datagram makes a new one.
fn udp_mapping_ends_after_idle_timeout(bin: Bin) {
    let echo = UdpEcho::start();
    let (p, proxy) = start_on_free_port(bin, StartOptions::default(), |port| {
        udp_config_with(port, echo.addr(), "udp_idle_timeout = \"1s\"")
    });
    let s = udp_client(bin);
    round_trip(bin, &s, proxy, b"12345");
    let client = s.local_addr().expect("local address");
    let line = p.wait_for_stderr(
        |l| l.contains(&format!(" dns {client} - UDP ")) && l.contains(" idle up=5 down=5 "),
        Duration::from_secs(15),
    );
    assert!(
        line.is_some(),
        "{bin}: an idle UDP mapping must end and be logged as idle with its bytes\nstderr:\n{}",
        p.stderr_text()
    );
    round_trip(bin, &s, proxy, b"again");
    let peers: HashSet<SocketAddr> = echo.peers().into_iter().collect();
    assert_eq!(
        peers.len(),
        2,
        "{bin}: after the idle timeout a new mapping (a new socket) must carry the datagram, saw {peers:?}"
    );
}

/// A client-address quota of 2000 bytes: two 500-byte datagrams and their
/// echoes use it up (`/quotas` says 2000). Then a new client socket opens
/// no mapping (its datagram is dropped, nothing reaches the destination
/// from a new socket), while the mapping already open goes on.
fn udp_datagrams_count_in_the_quota(bin: Bin) {
    let echo = UdpEcho::start();
    let (_p, ports) = start_on_free_ports(bin, 2, StartOptions::default(), |ports| {
        format!(
            "{}\n[[quota]]\nname = \"lan\"\nclients = [\"127.0.0.0/8\"]\nbytes = \"2000B\"\n\
             per = \"day\"\n{}{}",
            config_head("", ""),
            mapped_service("dns", ports[0], echo.addr(), "protocol = \"udp\""),
            service("status", "status", ports[1], ""),
        )
    });
    let (proxy, status) = (local(ports[0]), local(ports[1]));
    let a = udp_client(bin);
    round_trip(bin, &a, proxy, &[b'a'; 500]);
    round_trip(bin, &a, proxy, &[b'b'; 500]);
    let used = poll_until(PROMPTLY, Duration::from_millis(50), || {
        let r = portico_tests::reply::exchange(
            status,
            "GET /quotas HTTP/1.1\r\nHost: s\r\nConnection: close\r\n\r\n",
        )
        .ok()?;
        r.body.contains("\"used_bytes\":2000").then_some(())
    });
    assert!(used.is_some(), "{bin}: /quotas does not say 2000 bytes");

    let b = udp_client(bin);
    b.set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap_or_else(|e| panic!("{bin}: set_read_timeout: {e}"));
    b.send_to(b"over", proxy)
        .unwrap_or_else(|e| panic!("{bin}: send_to {proxy}: {e}"));
    let mut buf = [0u8; 64];
    assert!(
        b.recv_from(&mut buf).is_err(),
        "{bin}: a new client over its quota gets no mapping"
    );
    round_trip(bin, &a, proxy, b"the open mapping goes on");
    assert_eq!(
        echo.peers().into_iter().collect::<HashSet<_>>().len(),
        1,
        "{bin}: only the first client's mapping reached the destination"
    );
}
