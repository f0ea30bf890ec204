//! The auto service (`kind = "auto"`: HTTP, SOCKS4 and SOCKS5 on one port,
//! told by the first byte), end to end through both binaries: curl as an
//! HTTP proxy client (GET and CONNECT) and in every SOCKS mode on the same
//! port, and with `auth = true` SOCKS5 with credentials, SOCKS4 refused,
//! HTTP without credentials 407 — each with its access-log line under the
//! auto service's name.
//!
//! Tools: `curl` (package curl).

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use portico_tests::logline::AccessLine;
use portico_tests::origin::Origin;
use portico_tests::reply::exchange;
use portico_tests::{
    both, config_head, connect, curl_command, local, poll_until, run_tool, service,
    start_on_free_port, start_on_free_ports, Bin, Portico, StartOptions, ToolOutput, ALICE,
    PROMPTLY,
};

/// How long one run of curl may take.
const TOOL_LIMIT: Duration = Duration::from_secs(90);
const BODY: &str = "hello from the origin\n";
const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Starts `bin` with one auto service `all` (and the user alice) whose
/// CONNECT may reach `origin`'s port; returns the proxy and its address.
fn start_auto(bin: Bin, auth: bool, origin: &Origin) -> (Portico, SocketAddr) {
    let extra = format!("auth = {auth}\nconnect_ports = [{}]", origin.addr().port());
    start_on_free_port(bin, StartOptions::default(), |port| {
        format!(
            "{}\n{ALICE}{}",
            config_head("", ""),
            service("all", "auto", port, &extra)
        )
    })
}

/// `curl -q -sS --max-time 60 ARGS… URL`, bounded.
fn curl(bin: Bin, args: &[&str], url: &str) -> ToolOutput {
    let mut cmd = curl_command(60);
    cmd.args(args).arg(url);
    run_tool(bin, cmd, None, TOOL_LIMIT)
}

/// The auto service's access-log line whose target is `target`.
fn line_for(p: &Portico, target: &str) -> AccessLine {
    p.expect_access("all", &format!("target {target:?}"), PROMPTLY, |a| {
        a.target == target
    })
}

/// curl through the auto port with `args` fetches the origin's body, and
/// the line for `target` says `method`, `status` and `user`.
fn through(bin: Bin, auth: bool, args: &[&str], host: &str, method: &str, user: &str) {
    let origin = Origin::start(LOOPBACK, BODY);
    let (p, addr) = start_auto(bin, auth, &origin);
    let proxy = addr.to_string();
    let mut all: Vec<&str> = args.to_vec();
    all.push(&proxy);
    let target = format!("{host}:{}", origin.addr().port());
    let url = format!("http://{target}/hello");
    let out = curl(bin, &all, &url);
    assert!(out.status.success(), "{bin}: curl {args:?}: {}", out.text());
    assert_eq!(out.stdout_text(), BODY, "{bin}: curl {args:?}: body");
    assert_eq!(origin.heads().len(), 1, "{bin}: requests the origin saw");
    // An HTTP GET is logged by its URL; a tunnel by where it went.
    let logged = if method == "GET" { url.clone() } else { target };
    let l = line_for(&p, &logged);
    assert_eq!(l.method, method, "{bin}: curl {args:?}: method in {l:?}");
    let status = if method == "GET" || method == "CONNECT" {
        "200"
    } else {
        "ok"
    };
    assert_eq!(l.status, status, "{bin}: curl {args:?}: status in {l:?}");
    assert_eq!(l.user, user, "{bin}: curl {args:?}: user in {l:?}");
    assert_eq!(l.service, "all", "{bin}: {l:?}");
    assert!(
        l.down >= BODY.len() as u64 && l.up > 0,
        "{bin}: curl {args:?}: byte counts in {l:?}"
    );
}

both!(
    socks_commands_on_auto,
    http_get,
    http_connect,
    socks5,
    socks5_hostname,
    socks4,
    socks4a,
    auth_socks5_with_credentials,
    auth_http_with_credentials,
    auth_socks4_refused,
    auth_http_without_credentials_407,
    counted_under_the_auto_service,
);

fn http_get(bin: Bin) {
    through(bin, false, &["--proxy"], "127.0.0.1", "GET", "-");
}

fn http_connect(bin: Bin) {
    through(
        bin,
        false,
        &["--proxytunnel", "--proxy"],
        "127.0.0.1",
        "CONNECT",
        "-",
    );
}

fn socks5(bin: Bin) {
    through(bin, false, &["--socks5"], "127.0.0.1", "SOCKS5", "-");
}

fn socks5_hostname(bin: Bin) {
    through(
        bin,
        false,
        &["--socks5-hostname"],
        "localhost",
        "SOCKS5",
        "-",
    );
}

fn socks4(bin: Bin) {
    through(bin, false, &["--socks4"], "127.0.0.1", "SOCKS4", "-");
}

fn socks4a(bin: Bin) {
    through(bin, false, &["--socks4a"], "localhost", "SOCKS4", "-");
}

fn auth_socks5_with_credentials(bin: Bin) {
    through(
        bin,
        true,
        &["--proxy-user", "alice:secret", "--socks5"],
        "127.0.0.1",
        "SOCKS5",
        "alice",
    );
}

fn auth_http_with_credentials(bin: Bin) {
    through(
        bin,
        true,
        &["--proxy-user", "alice:secret", "--proxy"],
        "127.0.0.1",
        "GET",
        "alice",
    );
}

/// With `auth = true` a SOCKS4 request (which has no password field) is
/// refused as on a socks service: reply code 0x5B, and the origin sees
/// nothing.
fn auth_socks4_refused(bin: Bin) {
    let origin = Origin::start(LOOPBACK, BODY);
    let (p, addr) = start_auto(bin, true, &origin);
    let mut s = connect(addr).unwrap_or_else(|e| panic!("{bin}: connect {addr}: {e}"));
    let mut req = vec![4, 1];
    req.extend_from_slice(&origin.addr().port().to_be_bytes());
    req.extend_from_slice(&[127, 0, 0, 1]);
    req.extend_from_slice(b"alice\0");
    s.write_all(&req)
        .unwrap_or_else(|e| panic!("{bin}: send the SOCKS4 request: {e}"));
    let mut reply = Vec::new();
    s.read_to_end(&mut reply)
        .unwrap_or_else(|e| panic!("{bin}: read the SOCKS4 reply: {e}"));
    assert_eq!(
        reply.get(..2),
        Some(&[0u8, 0x5B][..]),
        "{bin}: SOCKS4 reply {reply:02x?}"
    );
    let me = s.local_addr().expect("local_addr of a connected socket");
    let l = p.access_of("all", me, PROMPTLY);
    assert_eq!(l.method, "SOCKS4", "{bin}: method in {l:?}");
    assert_eq!(l.status, "auth-failed", "{bin}: status in {l:?}");
    assert!(origin.heads().is_empty(), "{bin}: the origin saw a request");
}

/// With `auth = true` an HTTP request without credentials gets 407, as on
/// an http service.
fn auth_http_without_credentials_407(bin: Bin) {
    let origin = Origin::start(LOOPBACK, BODY);
    let (p, addr) = start_auto(bin, true, &origin);
    let url = format!("http://127.0.0.1:{}/hello", origin.addr().port());
    let out = curl(
        bin,
        &[
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--proxy",
            &addr.to_string(),
        ],
        &url,
    );
    assert_eq!(out.stdout_text(), "407", "{bin}: {}", out.text());
    let l = line_for(&p, &url);
    assert_eq!(l.method, "GET", "{bin}: method in {l:?}");
    assert_eq!(l.status, "407", "{bin}: status in {l:?}");
    assert_eq!(l.err.as_deref(), Some("auth-required"), "{bin}: {l:?}");
    assert!(origin.heads().is_empty(), "{bin}: the origin saw a request");
}

/// The connections an auto service serves, whichever protocol they speak,
/// count under its name: a SOCKS5 tunnel and an HTTP request refused with
/// 407, in the status service's metrics.
fn counted_under_the_auto_service(bin: Bin) {
    let origin = Origin::start(LOOPBACK, BODY);
    let (_p, ports) = start_on_free_ports(bin, 2, StartOptions::default(), |ports| {
        format!(
            "{}\n{ALICE}{}{}",
            config_head("", ""),
            service("all", "auto", ports[0], "auth = true"),
            service("status", "status", ports[1], "")
        )
    });
    let proxy = local(ports[0]).to_string();
    let url = format!("http://127.0.0.1:{}/hello", origin.addr().port());
    let out = curl(
        bin,
        &["--proxy-user", "alice:secret", "--socks5", &proxy],
        &url,
    );
    assert_eq!(out.stdout_text(), BODY, "{bin}: SOCKS5: {}", out.text());
    let out = curl(
        bin,
        &["-o", "/dev/null", "-w", "%{http_code}", "--proxy", &proxy],
        &url,
    );
    assert_eq!(out.stdout_text(), "407", "{bin}: HTTP: {}", out.text());
    let want = [
        "portico_connections_total{service=\"all\"} 2",
        "portico_refused_total{service=\"all\",reason=\"auth-required\"} 1",
        "portico_http_responses_total{service=\"all\",code=\"407\"} 1",
    ];
    let status = local(ports[1]);
    let mut last = String::new();
    let counted = poll_until(PROMPTLY, Duration::from_millis(50), || {
        let r = exchange(status, "GET /metrics HTTP/1.1\r\nHost: s\r\n\r\n").ok()?;
        last = r.body;
        want.iter()
            .all(|w| last.lines().any(|l| l == *w))
            .then_some(())
    });
    assert!(
        counted.is_some(),
        "{bin}: want {want:?} in /metrics:\n{last}"
    );
}

/// A SOCKS5 request for `cmd` (no authentication) to 0.0.0.0:0 through
/// the auto port at `addr`: the reply code.
fn socks5_command(bin: Bin, addr: SocketAddr, cmd: u8) -> u8 {
    let mut s = connect(addr).unwrap_or_else(|e| panic!("{bin}: connect: {e}"));
    let mut run = || -> std::io::Result<u8> {
        s.write_all(&[5, 1, 0])?;
        let mut m = [0u8; 2];
        s.read_exact(&mut m)?;
        s.write_all(&[5, cmd, 0, 1, 0, 0, 0, 0, 0, 0])?;
        let mut r = [0u8; 10];
        s.read_exact(&mut r)?;
        Ok(r[1])
    };
    run().unwrap_or_else(|e| panic!("{bin}: SOCKS5 command {cmd}: {e}"))
}

/// An auto service takes the socks services' `commands`: by default a
/// UDP ASSOCIATE is granted (00); with `commands = ["connect"]` it and
/// BIND are answered 07.
fn socks_commands_on_auto(bin: Bin) {
    let (_p, ports) = start_on_free_ports(bin, 2, StartOptions::default(), |ports| {
        format!(
            "{}{}{}",
            config_head("", ""),
            service("all", "auto", ports[0], ""),
            service("narrow", "auto", ports[1], "commands = [\"connect\"]"),
        )
    });
    assert_eq!(
        socks5_command(bin, local(ports[0]), 3),
        0,
        "{bin}: UDP ASSOCIATE"
    );
    assert_eq!(
        socks5_command(bin, local(ports[1]), 3),
        7,
        "{bin}: UDP ASSOCIATE left out"
    );
    assert_eq!(
        socks5_command(bin, local(ports[1]), 2),
        7,
        "{bin}: BIND left out"
    );
}
