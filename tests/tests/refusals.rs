//! A refusal says why, end to end through both binaries: every cause that
//! can be produced on loopback (and `unreachable` in a network namespace
//! the test makes), as the client hears it (HTTP status, `Portico-Error`,
//! an HTML page or one line of text by `Accept`; SOCKS reply codes; a
//! gateway's words), as the access log says it (` err=CAUSE`, JSON
//! `"error"`) and as `/metrics` counts it (`portico_connect_errors_total`,
//! `portico_refused_total`, `portico_http_responses_total`).
//!
//! `unreachable_says_why` needs root (a network namespace) and `ip`
//! (Debian package iproute2).

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

use portico_tests::logline::{parse_json_object, AccessLine, Json};
use portico_tests::reply::Reply;
use portico_tests::{
    both, config_head, connect, connect_from, echo_check, free_port, local, mapped_service,
    poll_until, read_outcome, require, service, start_on_free_ports, Acceptor, Behaviour, Bin,
    Portico, StartOptions, TestServer, ALICE, IO_TIMEOUT, PROMPTLY,
};

both!(
    connect_failures_say_why,
    connect_timeout_says_why,
    refusals_say_why,
    limits_say_why,
    json_access_line_has_the_error,
    unreachable_says_why,
);

/// How often a bounded poll looks again.
const EVERY: Duration = Duration::from_millis(20);

/// What a browser sends as Accept.
const BROWSER: &str = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
/// What curl sends: no text/html, so one line of text.
const CURL: &str = "*/*";

/// Sends `request` on a new connection (from `from`, if given) and reads
/// the reply to the close: every refusal closes the connection.
fn ask_from(bin: Bin, from: Option<IpAddr>, proxy: SocketAddr, request: &str) -> Reply {
    let mut s = match from {
        Some(ip) => connect_from(ip, proxy),
        None => connect(proxy),
    }
    .unwrap_or_else(|e| panic!("{bin}: connect to the proxy {proxy}: {e}"));
    s.write_all(request.as_bytes())
        .unwrap_or_else(|e| panic!("{bin}: send {request:?}: {e}"));
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .unwrap_or_else(|e| panic!("{bin}: read the reply to {request:?}: {e}"));
    Reply::parse(&raw).unwrap_or_else(|e| panic!("{bin}: {request:?}: {e}"))
}

fn ask(bin: Bin, proxy: SocketAddr, request: &str) -> Reply {
    ask_from(bin, None, proxy, request)
}

fn get(target: &str, accept: &str) -> String {
    let host = target.trim_start_matches("http://");
    let host = host.split('/').next().unwrap_or(host);
    // Served or not, the reply is read to the close.
    format!(
        "GET {target} HTTP/1.1\r\nHost: {host}\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
    )
}

fn connect_to(authority: &str, accept: &str) -> String {
    format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\nAccept: {accept}\r\n\r\n")
}

/// Checks a refusal the proxy made: `status`, `Portico-Error: cause`, the
/// connection closed, and the body naming the cause and `destination`: a
/// short HTML page for a browser, one line of text otherwise.
fn check_refusal(
    bin: Bin,
    r: &Reply,
    status: u16,
    cause: &str,
    destination: &str,
    html: bool,
    what: &str,
) {
    let ctx = format!("{bin}: {what}: reply\n{}\r\n\r\n{}", r.head, r.body);
    assert_eq!(r.status, status, "{ctx}");
    assert_eq!(r.header("portico-error"), Some(cause), "{ctx}");
    assert!(
        r.header("connection")
            .is_some_and(|c| c.eq_ignore_ascii_case("close")),
        "{ctx}"
    );
    assert_eq!(
        r.header("content-length").and_then(|n| n.parse().ok()),
        Some(r.body.len()),
        "{ctx}"
    );
    let ctype = r.header("content-type").unwrap_or("");
    if html {
        assert!(ctype.starts_with("text/html"), "{ctx}");
        assert!(r.body.starts_with("<!doctype html>"), "{ctx}");
        assert!(r.body.contains(&format!("<title>{status} ")), "{ctx}");
        assert!(
            r.body.contains(&format!("<code>{cause}</code>")),
            "the page names the cause: {ctx}"
        );
        assert!(
            r.body.contains(&format!("<code>{destination}</code>")),
            "the page names the destination: {ctx}"
        );
    } else {
        assert!(ctype.starts_with("text/plain"), "{ctx}");
        assert!(
            r.body.starts_with(&format!("{status} ")) && r.body.ends_with(&format!("({cause})\n")),
            "one line naming the status and the cause: {ctx}"
        );
        assert_eq!(r.body.matches('\n').count(), 1, "{ctx}");
        assert!(r.body.contains(destination), "{ctx}");
    }
}

/// Asks `request` twice, as a browser and as curl, and checks both
/// refusals; returns the text one.
#[allow(clippy::too_many_arguments)]
fn refused_both_ways(
    bin: Bin,
    proxy: SocketAddr,
    request: impl Fn(&str) -> String,
    status: u16,
    cause: &str,
    destination: &str,
    what: &str,
) -> Reply {
    let page = ask(bin, proxy, &request(BROWSER));
    check_refusal(bin, &page, status, cause, destination, true, what);
    let line = ask(bin, proxy, &request(CURL));
    check_refusal(bin, &line, status, cause, destination, false, what);
    line
}

/// The access-log lines of `service` with `err=cause`, once there are `n`.
fn expect_err_lines(p: &Portico, service: &str, cause: &str, n: usize) -> Vec<AccessLine> {
    p.expect_access_lines(service, n, PROMPTLY, |l| l.err.as_deref() == Some(cause))
}

/// `GET /metrics` from the status service.
fn metrics(bin: Bin, status: SocketAddr) -> String {
    let r = ask(
        bin,
        status,
        "GET /metrics HTTP/1.1\r\nHost: status\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 200, "{bin}: /metrics: {r:?}");
    r.body
}

/// Waits (bounded) until /metrics has every line of `want`, exactly.
fn expect_metrics(bin: Bin, status: SocketAddr, want: &[String]) -> String {
    let mut last = String::new();
    poll_until(PROMPTLY, EVERY, || {
        last = metrics(bin, status);
        want.iter()
            .all(|w| last.lines().any(|l| l == w))
            .then(|| last.clone())
    })
    .unwrap_or_else(|| {
        let missing: Vec<&String> = want
            .iter()
            .filter(|w| !last.lines().any(|l| l == *w))
            .collect();
        panic!("{bin}: /metrics lacks {missing:?} within {PROMPTLY:?}:\n{last}")
    })
}

fn connect_errors(service: &str, cause: &str, n: u64) -> String {
    format!("portico_connect_errors_total{{service=\"{service}\",cause=\"{cause}\"}} {n}")
}

fn refused(service: &str, reason: &str, n: u64) -> String {
    format!("portico_refused_total{{service=\"{service}\",reason=\"{reason}\"}} {n}")
}

fn responses(service: &str, code: u16, n: u64) -> String {
    format!("portico_http_responses_total{{service=\"{service}\",code=\"{code}\"}} {n}")
}

/// A SOCKS5 destination.
enum Dest<'a> {
    Addr(SocketAddr),
    Name(&'a str, u16),
}

fn socks5_request(dest: &Dest) -> Vec<u8> {
    let mut req = vec![5, 1, 0];
    match dest {
        Dest::Addr(SocketAddr::V4(a)) => {
            req.push(1);
            req.extend_from_slice(&a.ip().octets());
            req.extend_from_slice(&a.port().to_be_bytes());
        }
        Dest::Addr(SocketAddr::V6(a)) => {
            req.push(4);
            req.extend_from_slice(&a.ip().octets());
            req.extend_from_slice(&a.port().to_be_bytes());
        }
        Dest::Name(host, port) => {
            req.push(3);
            req.push(host.len() as u8);
            req.extend_from_slice(host.as_bytes());
            req.extend_from_slice(&port.to_be_bytes());
        }
    }
    req
}

/// A SOCKS5 CONNECT without authentication; returns the reply code and
/// the client's address (for its access line).
fn socks5(bin: Bin, from: Option<IpAddr>, proxy: SocketAddr, dest: &Dest) -> (u8, SocketAddr) {
    let mut s = match from {
        Some(ip) => connect_from(ip, proxy),
        None => connect(proxy),
    }
    .unwrap_or_else(|e| panic!("{bin}: connect to the SOCKS service: {e}"));
    let me = s.local_addr().expect("local_addr");
    let run = |s: &mut TcpStream| -> io::Result<u8> {
        s.write_all(&[5, 1, 0])?;
        let mut m = [0u8; 2];
        s.read_exact(&mut m)?;
        if m != [5, 0] {
            return Err(io::Error::other(format!("method reply {m:02x?}")));
        }
        s.write_all(&socks5_request(dest))?;
        let mut r = [0u8; 2];
        s.read_exact(&mut r)?;
        Ok(r[1])
    };
    let code = run(&mut s).unwrap_or_else(|e| panic!("{bin}: SOCKS5 CONNECT: {e}"));
    (code, me)
}

/// The text access line of `service` for the client `me`.
fn line_of(p: &Portico, service: &str, me: SocketAddr) -> AccessLine {
    p.access_of(service, me, PROMPTLY)
}

/// Starts `bin` on `config(ports)` for `n` fresh ports.
fn start(bin: Bin, n: usize, config: impl Fn(&[u16]) -> String) -> (Portico, Vec<u16>) {
    start_on_free_ports(bin, n, StartOptions::default(), config)
}

// ---------------------------------------------------------------------------

/// A name that does not resolve and a port nobody listens on, through the
/// http proxy (GET and CONNECT), SOCKS5, a mapped port and an smtp
/// gateway.
fn connect_failures_say_why(bin: Bin) {
    let closed = local(free_port());
    let (p, ports) = start(bin, 5, |ports| {
        format!(
            "{}{}{}{}{}{}",
            config_head("", ""),
            service(
                "web",
                "http",
                ports[0],
                &format!("connect_ports = [443, {}]", closed.port())
            ),
            service("socks", "socks", ports[1], ""),
            mapped_service("map", ports[2], closed, ""),
            service(
                "mail",
                "smtp",
                ports[3],
                &format!("destination = \"{closed}\"")
            ),
            service("status", "status", ports[4], ""),
        )
    });
    let (web, socks, map, mail, status) = (
        local(ports[0]),
        local(ports[1]),
        local(ports[2]),
        local(ports[3]),
        local(ports[4]),
    );

    refused_both_ways(
        bin,
        web,
        |a| get("http://nowhere.invalid/", a),
        502,
        "dns-failure",
        "nowhere.invalid:80",
        "GET of a name under .invalid",
    );
    refused_both_ways(
        bin,
        web,
        |a| connect_to("nowhere.invalid:443", a),
        502,
        "dns-failure",
        "nowhere.invalid:443",
        "CONNECT to a name under .invalid",
    );
    let closed_url = format!("http://{closed}/");
    refused_both_ways(
        bin,
        web,
        |a| get(&closed_url, a),
        502,
        "connect-refused",
        &closed.to_string(),
        "GET of a closed port",
    );
    refused_both_ways(
        bin,
        web,
        |a| connect_to(&closed.to_string(), a),
        502,
        "connect-refused",
        &closed.to_string(),
        "CONNECT to a closed port",
    );
    let dns = expect_err_lines(&p, "web", "dns-failure", 4);
    assert!(
        dns.iter()
            .all(|l| l.status == "502" && l.target.contains("nowhere.invalid")),
        "{bin}: {dns:?}"
    );
    let refused_lines = expect_err_lines(&p, "web", "connect-refused", 4);
    assert!(
        refused_lines.iter().all(|l| l.status == "502"),
        "{bin}: {refused_lines:?}"
    );

    // SOCKS5: 04 for a name not resolved, 05 for a refusal.
    let (code, me) = socks5(bin, None, socks, &Dest::Name("nowhere.invalid", 80));
    assert_eq!(code, 4, "{bin}: SOCKS5 CONNECT to a name under .invalid");
    let l = line_of(&p, "socks", me);
    assert_eq!(l.err.as_deref(), Some("dns-failure"), "{bin}: {l:?}");
    let (code, me) = socks5(bin, None, socks, &Dest::Addr(closed));
    assert_eq!(code, 5, "{bin}: SOCKS5 CONNECT to a closed port");
    let l = line_of(&p, "socks", me);
    assert_eq!(l.err.as_deref(), Some("connect-refused"), "{bin}: {l:?}");

    // A mapped port just closes; the log says why.
    let mut m = connect(map).unwrap_or_else(|e| panic!("{bin}: connect to map: {e}"));
    let me = m.local_addr().expect("local_addr");
    assert!(
        read_outcome(&mut m, PROMPTLY).is_closed(),
        "{bin}: a mapped port to a closed port closes"
    );
    let l = line_of(&p, "map", me);
    assert_eq!(
        (l.status.as_str(), l.err.as_deref()),
        ("refused", Some("connect-refused")),
        "{bin}: {l:?}"
    );

    // The smtp gateway says its words, and the log why.
    let mut g = connect(mail).unwrap_or_else(|e| panic!("{bin}: connect to mail: {e}"));
    let me = g.local_addr().expect("local_addr");
    let mut said = String::new();
    g.read_to_string(&mut said)
        .unwrap_or_else(|e| panic!("{bin}: read the smtp gateway's words: {e}"));
    assert!(said.starts_with("421 "), "{bin}: smtp says {said:?}");
    let l = line_of(&p, "mail", me);
    assert_eq!(l.err.as_deref(), Some("connect-refused"), "{bin}: {l:?}");

    let text = expect_metrics(
        bin,
        status,
        &[
            connect_errors("web", "dns-failure", 4),
            connect_errors("web", "connect-refused", 4),
            connect_errors("socks", "dns-failure", 1),
            connect_errors("socks", "connect-refused", 1),
            connect_errors("map", "connect-refused", 1),
            connect_errors("mail", "connect-refused", 1),
            responses("web", 502, 8),
        ],
    );
    assert!(
        !text.contains("portico_refused_total{service=\"web\""),
        "{bin}: a failed connect is not the proxy's refusal:\n{text}"
    );
}

/// A destination whose accept queue is full drops the SYNs: the connect
/// times out (`connect_timeout = "1s"`).
fn connect_timeout_says_why(bin: Bin) {
    let server = TestServer::start_held(Behaviour::Sink);
    server
        .fill_backlog()
        .unwrap_or_else(|e| panic!("{bin}: filling the destination's accept queue: {e}"));
    let dest = server.addr();
    let (p, ports) = start(bin, 3, |ports| {
        format!(
            "{}{}{}{}",
            config_head("connect_timeout = \"1s\"", ""),
            service("web", "http", ports[0], ""),
            service("socks", "socks", ports[1], ""),
            service("status", "status", ports[2], ""),
        )
    });
    let (web, socks, status) = (local(ports[0]), local(ports[1]), local(ports[2]));
    let url = format!("http://{dest}/");
    refused_both_ways(
        bin,
        web,
        |a| get(&url, a),
        504,
        "connect-timeout",
        &dest.to_string(),
        "GET of a destination that drops SYNs",
    );
    let lines = expect_err_lines(&p, "web", "connect-timeout", 2);
    assert!(lines.iter().all(|l| l.status == "504"), "{bin}: {lines:?}");

    let (code, me) = socks5(bin, None, socks, &Dest::Addr(dest));
    assert_eq!(code, 6, "{bin}: SOCKS5 CONNECT that times out");
    let l = line_of(&p, "socks", me);
    assert_eq!(
        (l.status.as_str(), l.err.as_deref()),
        ("timeout", Some("connect-timeout")),
        "{bin}: {l:?}"
    );
    expect_metrics(
        bin,
        status,
        &[
            connect_errors("web", "connect-timeout", 2),
            connect_errors("socks", "connect-timeout", 1),
            responses("web", 504, 2),
        ],
    );
    server.release();
}

/// A small HTTP origin answering every request `200 ok` and closing.
fn origin() -> Acceptor {
    Acceptor::start(IpAddr::V4(Ipv4Addr::LOCALHOST), "origin", |mut s, _| {
        let _ = s.set_read_timeout(Some(IO_TIMEOUT));
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match s.read(&mut b) {
                Ok(1) => head.push(b[0]),
                _ => return,
            }
        }
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
    })
}

/// The proxy's own refusals: a rule, a CONNECT port, proxy
/// authentication; SOCKS5 by a rule and without acceptable credentials.
/// A request that is served gets no `err=`, and its relayed response is
/// counted too.
fn refusals_say_why(bin: Bin) {
    let o = origin();
    let (p, ports) = start(bin, 5, |ports| {
        format!(
            "{}{ALICE}{}{}{}{}{}\n[[rule]]\naction = \"deny\"\ndestinations = [\"blocked.invalid\"]\n\n\
             [[rule]]\naction = \"allow\"\n",
            config_head("", ""),
            service("web", "http", ports[0], "connect_ports = [443]"),
            service("authweb", "http", ports[1], "auth = true"),
            service("socks", "socks", ports[2], ""),
            service("authsocks", "socks", ports[3], "auth = true"),
            service("status", "status", ports[4], ""),
        )
    });
    let (web, authweb, socks, authsocks, status) = (
        local(ports[0]),
        local(ports[1]),
        local(ports[2]),
        local(ports[3]),
        local(ports[4]),
    );

    let line = refused_both_ways(
        bin,
        web,
        |a| get("http://blocked.invalid/", a),
        403,
        "denied",
        "blocked.invalid:80",
        "GET denied by a rule",
    );
    assert!(line.body.contains("rules"), "{bin}: {line:?}");
    let line = refused_both_ways(
        bin,
        web,
        |a| connect_to("127.0.0.1:25", a),
        403,
        "port-denied",
        "127.0.0.1:25",
        "CONNECT to a port not in connect_ports",
    );
    assert!(
        line.body.contains("port 25 is not in") && line.body.contains("connect_ports"),
        "{bin}: the port refusal names connect_ports: {line:?}"
    );
    assert!(
        !line.body.contains("rules"),
        "{bin}: no rule refused it: {line:?}"
    );
    let url = format!("http://{}/", o.addr());
    let line = refused_both_ways(
        bin,
        authweb,
        |a| get(&url, a),
        407,
        "auth-required",
        &o.addr().to_string(),
        "GET without credentials",
    );
    assert_eq!(
        line.header("proxy-authenticate"),
        Some("Basic realm=\"portico\""),
        "{bin}: {line:?}"
    );
    // Wrong credentials are the same refusal.
    let wrong = format!(
        "GET {url} HTTP/1.1\r\nHost: {}\r\nProxy-Authorization: Basic YWxpY2U6d3Jvbmc=\r\n\r\n",
        o.addr()
    );
    let r = ask(bin, authweb, &wrong);
    check_refusal(
        bin,
        &r,
        407,
        "auth-required",
        &o.addr().to_string(),
        false,
        "GET with a wrong password",
    );

    // Served: the relayed 200 is counted, and its line has no err=.
    let ok = ask(bin, web, &get(&url, CURL));
    assert_eq!((ok.status, ok.body.as_str()), (200, "ok"), "{bin}: {ok:?}");
    assert_eq!(ok.header("portico-error"), None, "{bin}: {ok:?}");
    let served = p.expect_access("web", "the served GET", PROMPTLY, |l| l.status == "200");
    assert_eq!(served.err, None, "{bin}: {served:?}");

    expect_err_lines(&p, "web", "denied", 2);
    expect_err_lines(&p, "web", "port-denied", 2);
    let auth = expect_err_lines(&p, "authweb", "auth-required", 3);
    assert!(auth.iter().all(|l| l.status == "407"), "{bin}: {auth:?}");

    // SOCKS5: 02 for a rule; no acceptable method (05 FF) or a wrong
    // password (RFC 1929 status 01) on a service with auth.
    let (code, me) = socks5(bin, None, socks, &Dest::Name("blocked.invalid", 80));
    assert_eq!(code, 2, "{bin}: SOCKS5 CONNECT denied by a rule");
    let l = line_of(&p, "socks", me);
    assert_eq!(l.err.as_deref(), Some("denied"), "{bin}: {l:?}");

    let mut s = connect(authsocks).unwrap_or_else(|e| panic!("{bin}: connect: {e}"));
    let me = s.local_addr().expect("local_addr");
    s.write_all(&[5, 1, 0]).expect("send the greeting");
    let mut m = [0u8; 2];
    s.read_exact(&mut m).expect("the method reply");
    assert_eq!(m, [5, 0xFF], "{bin}: no acceptable method");
    let l = line_of(&p, "authsocks", me);
    assert_eq!(l.err.as_deref(), Some("auth-required"), "{bin}: {l:?}");

    let mut s = connect(authsocks).unwrap_or_else(|e| panic!("{bin}: connect: {e}"));
    let me = s.local_addr().expect("local_addr");
    s.write_all(&[5, 1, 2]).expect("send the greeting");
    s.read_exact(&mut m).expect("the method reply");
    assert_eq!(m, [5, 2], "{bin}: username/password chosen");
    s.write_all(b"\x01\x05alice\x05wrong")
        .expect("send the credentials");
    s.read_exact(&mut m).expect("the RFC 1929 reply");
    assert_eq!(m, [1, 1], "{bin}: a wrong password fails");
    let l = line_of(&p, "authsocks", me);
    assert_eq!(l.err.as_deref(), Some("auth-required"), "{bin}: {l:?}");

    let text = expect_metrics(
        bin,
        status,
        &[
            refused("web", "denied", 2),
            refused("web", "port-denied", 2),
            refused("authweb", "auth-required", 3),
            refused("socks", "denied", 1),
            refused("authsocks", "auth-required", 2),
            responses("web", 403, 4),
            responses("web", 200, 1),
            responses("authweb", 407, 3),
        ],
    );
    assert!(
        !text.contains("portico_connect_errors_total{service=\"web\""),
        "{bin}: a refusal is not a connect failure:\n{text}"
    );
}

/// Over `max_per_client`: http 503, SOCKS5 01, a mapped port closed; each
/// logged and counted `limit`, at accept.
fn limits_say_why(bin: Bin) {
    let echo = TestServer::start(Behaviour::Echo);
    let (p, ports) = start(bin, 4, |ports| {
        format!(
            "{}{}{}{}{}",
            config_head("max_per_client = 1", ""),
            service("web", "http", ports[0], ""),
            service("socks", "socks", ports[1], ""),
            mapped_service("map", ports[2], echo.addr(), ""),
            service("status", "status", ports[3], ""),
        )
    });
    let (web, socks, map, status) = (
        local(ports[0]),
        local(ports[1]),
        local(ports[2]),
        local(ports[3]),
    );
    // 127.0.0.2 takes its one place, and is served.
    let other = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    let mut held = connect_from(other, map).unwrap_or_else(|e| panic!("{bin}: connect: {e}"));
    echo_check(&mut held, b"first").unwrap_or_else(|e| panic!("{bin}: the first one: {e}"));

    let what = "a request over max_per_client";
    let page = ask_from(
        bin,
        Some(other),
        web,
        &get("http://limit.invalid/", BROWSER),
    );
    check_refusal(bin, &page, 503, "limit", "limit.invalid:80", true, what);
    let line = ask_from(bin, Some(other), web, &get("http://limit.invalid/", CURL));
    check_refusal(bin, &line, 503, "limit", "limit.invalid:80", false, what);
    let lines = expect_err_lines(&p, "web", "limit", 2);
    assert!(lines.iter().all(|l| l.status == "503"), "{bin}: {lines:?}");

    let (code, me) = socks5(bin, Some(other), socks, &Dest::Addr(echo.addr()));
    assert_eq!(code, 1, "{bin}: SOCKS5 over a limit");
    let l = line_of(&p, "socks", me);
    assert_eq!(l.err.as_deref(), Some("limit"), "{bin}: {l:?}");

    let mut m = connect_from(other, map).unwrap_or_else(|e| panic!("{bin}: connect: {e}"));
    let me = m.local_addr().expect("local_addr");
    assert!(
        read_outcome(&mut m, PROMPTLY).is_closed(),
        "{bin}: a mapped port over a limit closes"
    );
    let l = line_of(&p, "map", me);
    assert_eq!(
        (l.status.as_str(), l.err.as_deref()),
        ("limit", Some("limit")),
        "{bin}: {l:?}"
    );

    expect_metrics(
        bin,
        status,
        &[
            refused("web", "limit", 2),
            refused("socks", "limit", 1),
            refused("map", "limit", 1),
            responses("web", 503, 2),
        ],
    );
    echo_check(&mut held, b"still served")
        .unwrap_or_else(|e| panic!("{bin}: the first one after the refusals: {e}"));
}

/// `format = "json"`: the object gets `"error"` after `duration_ms` when
/// there is a cause, and none otherwise.
fn json_access_line_has_the_error(bin: Bin) {
    let o = origin();
    let (p, ports) = start(bin, 1, |ports| {
        format!(
            "{}{}",
            config_head("", "format = \"json\""),
            service("web", "http", ports[0], ""),
        )
    });
    let web = local(ports[0]);
    let r = ask(bin, web, &get("http://nowhere.invalid/", CURL));
    assert_eq!(r.status, 502, "{bin}: {r:?}");
    let ok = ask(bin, web, &get(&format!("http://{}/", o.addr()), CURL));
    assert_eq!(ok.status, 200, "{bin}: {ok:?}");

    let objects = |lines: &[String]| -> Vec<Vec<(String, Json)>> {
        lines
            .iter()
            .filter(|l| l.starts_with('{'))
            .filter_map(|l| parse_json_object(l).ok())
            .collect()
    };
    let mut found = Vec::new();
    poll_until(PROMPTLY, EVERY, || {
        found = objects(&p.stderr_lines());
        (found.len() >= 2).then_some(())
    })
    .unwrap_or_else(|| panic!("{bin}: two JSON access lines; stderr:\n{}", p.stderr_text()));
    let status_of = |o: &Vec<(String, Json)>| -> String {
        o.iter()
            .find(|(k, _)| k == "status")
            .and_then(|(_, v)| v.as_str().map(str::to_string))
            .unwrap_or_default()
    };
    for obj in &found {
        let keys: Vec<&str> = obj.iter().map(|(k, _)| k.as_str()).collect();
        let error = obj
            .iter()
            .find(|(k, _)| k == "error")
            .and_then(|(_, v)| v.as_str());
        match status_of(obj).as_str() {
            "502" => {
                assert_eq!(error, Some("dns-failure"), "{bin}: {obj:?}");
                assert_eq!(keys.last(), Some(&"error"), "{bin}: {keys:?}");
            }
            "200" => assert_eq!(error, None, "{bin}: {obj:?}"),
            other => panic!("{bin}: unexpected status {other:?} in {obj:?}"),
        }
    }
}

/// Runs `ip ARGS` (in the calling thread's network namespace).
fn ip(bin: Bin, args: &[&str]) {
    let tool = require("ip", "iproute2");
    let out = std::process::Command::new(tool)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{bin}: run ip {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{bin}: ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A route of type `unreachable` in a network namespace of the test's own:
/// the connect fails at once with "no route to host".
fn unreachable_says_why(bin: Bin) {
    require("ip", "iproute2");
    // Built (if need be) before this thread leaves the host's network.
    let path = bin.path();
    assert!(path.exists(), "{bin}: {} is missing", path.display());
    // SAFETY: unshare(2) with CLONE_NEWNET moves only the calling thread
    // (this test's own) into a new network namespace; the proxy and the
    // `ip` commands it starts inherit it, the other tests keep theirs.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(
        rc,
        0,
        "{bin}: unshare(CLONE_NEWNET) failed ({}): this test needs root to make a network \
         namespace of its own",
        io::Error::last_os_error()
    );
    ip(bin, &["link", "set", "lo", "up"]);
    // 192.0.2.0/24 is TEST-NET-1, inside this namespace only.
    ip(bin, &["route", "add", "unreachable", "192.0.2.0/24"]);
    let (p, ports) = start(bin, 3, |ports| {
        format!(
            "{}{}{}{}",
            config_head("", ""),
            service("web", "http", ports[0], "connect_ports = [80]"),
            service("socks", "socks", ports[1], ""),
            service("status", "status", ports[2], ""),
        )
    });
    let (web, socks, status) = (local(ports[0]), local(ports[1]), local(ports[2]));
    refused_both_ways(
        bin,
        web,
        |a| get("http://192.0.2.1/", a),
        502,
        "unreachable",
        "192.0.2.1:80",
        "GET of an unreachable address",
    );
    refused_both_ways(
        bin,
        web,
        |a| connect_to("192.0.2.1:80", a),
        502,
        "unreachable",
        "192.0.2.1:80",
        "CONNECT to an unreachable address",
    );
    expect_err_lines(&p, "web", "unreachable", 4);
    let dest = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 80);
    let (code, me) = socks5(bin, None, socks, &Dest::Addr(dest));
    assert_eq!(code, 4, "{bin}: SOCKS5 to an unreachable host: 04");
    let l = line_of(&p, "socks", me);
    assert_eq!(
        (l.status.as_str(), l.err.as_deref()),
        ("unreachable", Some("unreachable")),
        "{bin}: {l:?}"
    );
    expect_metrics(
        bin,
        status,
        &[
            connect_errors("web", "unreachable", 4),
            connect_errors("socks", "unreachable", 1),
            responses("web", 502, 4),
        ],
    );
}
