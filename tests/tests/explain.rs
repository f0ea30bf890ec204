//! `portico explain` (why a request would be allowed or denied) and the
//! access line's ` rule=N` (which rule decided a request), end to end
//! through both binaries.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use portico_tests::logline::parse_json_object;
use portico_tests::{
    both, config_head, connect, echo_check, local, mapped_service, read_outcome, run_cli, service,
    start_on_free_ports, Behaviour, Bin, CliOutput, StartOptions, TempDir, TestServer, ALICE,
    PROMPTLY,
};

both!(
    explain_allowed,
    explain_denied,
    explain_refuses_a_wrong_question,
    access_line_names_the_rule_http,
    access_line_names_the_rule_socks,
    json_line_names_the_rule,
    reload_recheck_names_the_new_rule,
);

const LIMIT: Duration = Duration::from_secs(30);

/// The rules, in a file of their own (included, so that FILE:LINE points
/// into it).
const RULES: &str = r#"# Rules of the LAN.

[[rule]]
action = "deny"
services = ["mail"]

[[rule]]
action = "deny"
destinations = ["*.ads.example", "10.0.0.0/8", "127.0.0.0/8", "::1"]

[[rule]]
action = "allow"
users = ["alice"]
days = ["mon-fri"]
hours = "08:00-18:00"
rate = "1MiB/s"

[[rule]]
action = "deny"
"#;

/// Alice's quota, and one per client address of the LAN.
const QUOTAS: &str = "\n[[quota]]\nname = \"daily\"\nusers = [\"alice\"]\nbytes = \"2GiB\"\n\
                      per = \"day\"\n\n[[quota]]\nname = \"lan\"\nclients = [\"192.168.1.0/24\"]\n\
                      bytes = \"50GB\"\nper = \"month\"\n";

/// A configuration directory: portico.toml including rules.toml. Returns
/// the directory (kept while in use) and both paths.
fn config_dir() -> (TempDir, String, String) {
    let dir = TempDir::new();
    let main = format!(
        "include = [\"rules.toml\"]\n{}{ALICE}{QUOTAS}{}{}",
        config_head("", ""),
        service("web", "http", 18080, "auth = true"),
        service("mail", "smtp", 12525, "destination = \"192.0.2.25:25\""),
    );
    let rules = dir.write("rules.toml", RULES);
    let main = dir.write("portico.toml", &main);
    let text = |p: std::path::PathBuf| p.to_str().expect("utf-8 temp path").to_string();
    (dir, text(main), text(rules))
}

fn explain(bin: Bin, config: &str, args: &[&str]) -> CliOutput {
    let mut all = vec!["explain", "--config", config];
    all.extend_from_slice(args);
    run_cli(bin, &all, None, LIMIT)
}

fn explain_allowed(bin: Bin) {
    let (_dir, main, rules) = config_dir();
    let out = explain(
        bin,
        &main,
        &[
            "--service",
            "web",
            "--client",
            "192.168.1.5",
            "--user",
            "alice",
            "--destination",
            "93.184.215.14:443",
            "--at",
            "2026-12-07T09:30",
        ],
    );
    assert_eq!(out.code(), Some(0), "{bin}: {out:?}");
    let want = [
        "verdict: allowed".to_string(),
        format!("rule: 3 at {rules}:11"),
        "parent: none".to_string(),
        "outgoing: none (the system picks)".to_string(),
        "rate: 1048576 bytes/s each way".to_string(),
        "quota: daily: 2147483648 bytes a day for alice".to_string(),
        "quota: lan: 50000000000 bytes a month for 192.168.1.5".to_string(),
        format!("rule 1 at {rules}:3: no match: deny rule: service web is not one of mail"),
        format!(
            "rule 2 at {rules}:7: no match: deny rule: destination 93.184.215.14 is not one of \
             *.ads.example, 10.0.0.0/8, 127.0.0.0/8, ::1/128"
        ),
    ];
    let got: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(got, want, "{bin}: stdout");
    assert_eq!(out.stderr, "", "{bin}: stderr");
}

fn explain_denied(bin: Bin) {
    let (_dir, main, rules) = config_dir();
    // Saturday: the allow rule's days fail, the last rule denies.
    let out = explain(
        bin,
        &main,
        &[
            "--service",
            "web",
            "--client",
            "192.168.1.5",
            "--user",
            "alice",
            "--destination",
            "192.0.2.7:80",
            "--at",
            "2026-12-12T09:30",
        ],
    );
    assert_eq!(out.code(), Some(3), "{bin}: {out:?}");
    let got: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(got.first(), Some(&"verdict: denied"), "{bin}: {got:?}");
    assert_eq!(
        got.get(1).copied(),
        Some(format!("rule: 4 at {rules}:18").as_str()),
        "{bin}: {got:?}"
    );
    assert!(
        got.contains(
            &format!(
                "rule 3 at {rules}:11: no match: allow rule: sat is not one of its days \
                 mon,tue,wed,thu,fri (a window crossing midnight counts from the day it starts)"
            )
            .as_str()
        ),
        "{bin}: {got:?}"
    );
    assert!(
        !out.stdout.contains("parent:") && !out.stdout.contains("rate:"),
        "{bin}: a denial has no parent or rate: {got:?}"
    );
    // A fixed destination (the smtp service's own) is checked; a deny rule
    // on an address decides; and the time now is used without --at.
    let out = explain(
        bin,
        &main,
        &["--service", "mail", "--client", "192.168.1.5"],
    );
    assert_eq!(out.code(), Some(3), "{bin}: {out:?}");
    assert!(
        out.stdout
            .starts_with(&format!("verdict: denied\nrule: 1 at {rules}:3\n")),
        "{bin}: {out:?}"
    );
    // An address in a denied network, at any time.
    let out = explain(
        bin,
        &main,
        &[
            "--service",
            "web",
            "--client",
            "192.168.1.5",
            "--destination",
            "10.1.2.3:443",
        ],
    );
    assert_eq!(out.code(), Some(3), "{bin}: {out:?}");
    assert!(
        out.stdout
            .starts_with(&format!("verdict: denied\nrule: 2 at {rules}:7\n")),
        "{bin}: {out:?}"
    );
    // A name is resolved as the proxy would: localhost's every address is
    // in a denied network.
    let out = explain(
        bin,
        &main,
        &[
            "--service",
            "web",
            "--client",
            "192.168.1.5",
            "--destination",
            "localhost:443",
        ],
    );
    assert_eq!(out.code(), Some(3), "{bin}: {out:?}");
    let got: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        got.get(1).copied(),
        Some(format!("rule: 2 at {rules}:7").as_str()),
        "{bin}: {got:?}"
    );
    assert!(
        got.get(2)
            .is_some_and(|l| l.starts_with("resolved: localhost to ")),
        "{bin}: {got:?}"
    );
}

fn explain_refuses_a_wrong_question(bin: Bin) {
    let (_dir, main, _) = config_dir();
    let base = ["--client", "192.168.1.5"];
    for (args, says) in [
        (
            &["--service", "news"][..],
            "no service is named 'news'; the services are: web, mail",
        ),
        (
            &["--service", "web", "--destination", "example.com"][..],
            "is not HOST:PORT",
        ),
        (
            &["--service", "web", "--at", "2026-02-30T09:30"][..],
            "there is no such date",
        ),
    ] {
        let mut all = base.to_vec();
        all.extend_from_slice(args);
        let out = explain(bin, &main, &all);
        assert_eq!(out.code(), Some(2), "{bin} {args:?}: {out:?}");
        assert!(out.stderr.contains(says), "{bin} {args:?}: {out:?}");
        assert_eq!(out.stdout, "", "{bin} {args:?}");
    }
    // Without rules (the embedded default) everything is allowed.
    let out = run_cli(
        bin,
        &["explain", "--service", "web", "--client", "127.0.0.1"],
        None,
        LIMIT,
    );
    assert_eq!(out.code(), Some(0), "{bin}: {out:?}");
    assert_eq!(
        out.stdout,
        "verdict: allowed\nrule: none (no [[rule]] is configured: everything is allowed)\n\
         parent: none\noutgoing: none (the system picks)\nrate: none\nquota: none\n",
        "{bin}"
    );
}

/// Rules for the live cases: the service `shut` denied at accept (rule
/// 1), TEST-NET-1 denied (rule 2), the rest allowed (rule 3).
const LIVE_RULES: &str = "[[rule]]\naction = \"deny\"\nservices = [\"shut\"]\n\
                          [[rule]]\naction = \"deny\"\ndestinations = [\"192.0.2.0/24\"]\n\
                          [[rule]]\naction = \"allow\"\n";

/// The proxy of the live cases and its services' addresses.
struct Live {
    p: portico_tests::Portico,
    web: SocketAddr,
    socks: SocketAddr,
    shut: SocketAddr,
}

/// Starts `bin` with an http service (CONNECT allowed to `port`) and two
/// socks services (`socks`, and `shut` that rule 1 denies), under
/// [`LIVE_RULES`].
fn start_live(bin: Bin, port: u16) -> Live {
    start_live_logging(bin, port, "")
}

/// [`start_live`] with the lines `log` in `[log]`.
fn start_live_logging(bin: Bin, port: u16, log: &str) -> Live {
    let (p, ports) = start_on_free_ports(bin, 3, StartOptions::default(), |ports| {
        format!(
            "{}{}{}{}{LIVE_RULES}",
            config_head("", log),
            service(
                "web",
                "http",
                ports[0],
                &format!("connect_ports = [{port}]")
            ),
            service("socks", "socks", ports[1], ""),
            service("shut", "socks", ports[2], ""),
        )
    });
    let local = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
    Live {
        p,
        web: local(ports[0]),
        socks: local(ports[1]),
        shut: local(ports[2]),
    }
}

/// Reads until the end of an HTTP head (or the peer closes).
fn read_head(bin: Bin, s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(0) => break,
            Ok(_) => head.push(byte[0]),
            Err(e) => panic!("{bin}: reading the reply head: {e}"),
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

fn access_line_names_the_rule_http(bin: Bin) {
    let server = TestServer::start(Behaviour::Echo);
    let port = server.addr().port();
    let Live { p, web, .. } = start_live(bin, port);

    // Allowed by rule 2: a tunnel that echoes.
    let mut c = connect(web).unwrap_or_else(|e| panic!("{bin}: connect: {e}"));
    let me = c.local_addr().expect("local_addr");
    write!(
        c,
        "CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n"
    )
    .unwrap_or_else(|e| panic!("{bin}: write: {e}"));
    let head = read_head(bin, &mut c);
    assert!(head.starts_with("HTTP/1.1 200"), "{bin}: {head:?}");
    c.write_all(b"ping").expect("write through the tunnel");
    let mut echo = [0u8; 4];
    c.read_exact(&mut echo).expect("the echo");
    assert_eq!(&echo, b"ping", "{bin}");
    drop(c);
    let l = p.access_of("web", me, PROMPTLY);
    assert_eq!(
        (l.status.as_str(), l.err.as_deref(), l.rule),
        ("200", None, Some(3)),
        "{bin}: {l:?}"
    );

    // Denied by rule 1, before any connect.
    let mut c = connect(web).unwrap_or_else(|e| panic!("{bin}: connect: {e}"));
    let me = c.local_addr().expect("local_addr");
    write!(
        c,
        "CONNECT 192.0.2.1:{port} HTTP/1.1\r\nHost: 192.0.2.1:{port}\r\n\r\n"
    )
    .unwrap_or_else(|e| panic!("{bin}: write: {e}"));
    let head = read_head(bin, &mut c);
    assert!(head.starts_with("HTTP/1.1 403"), "{bin}: {head:?}");
    drop(c);
    let l = p.access_of("web", me, PROMPTLY);
    assert_eq!(
        (l.status.as_str(), l.err.as_deref(), l.rule),
        ("403", Some("denied"), Some(2)),
        "{bin}: {l:?}"
    );
}

/// A SOCKS5 CONNECT without authentication to `dest`: the reply code.
fn socks5_connect(bin: Bin, s: &mut TcpStream, dest: SocketAddr) -> u8 {
    s.write_all(&[5, 1, 0]).expect("greeting");
    let mut method = [0u8; 2];
    s.read_exact(&mut method)
        .unwrap_or_else(|e| panic!("{bin}: method reply: {e}"));
    assert_eq!(method, [5, 0], "{bin}: no-auth method");
    let SocketAddr::V4(v4) = dest else {
        panic!("an IPv4 destination")
    };
    let mut req = vec![5, 1, 0, 1];
    req.extend_from_slice(&v4.ip().octets());
    req.extend_from_slice(&v4.port().to_be_bytes());
    s.write_all(&req).expect("request");
    let mut reply = [0u8; 10];
    s.read_exact(&mut reply)
        .unwrap_or_else(|e| panic!("{bin}: CONNECT reply: {e}"));
    reply[1]
}

fn access_line_names_the_rule_socks(bin: Bin) {
    let server = TestServer::start(Behaviour::Echo);
    let Live { p, socks, shut, .. } = start_live(bin, server.addr().port());

    let mut c = connect(socks).unwrap_or_else(|e| panic!("{bin}: connect: {e}"));
    let me = c.local_addr().expect("local_addr");
    assert_eq!(
        socks5_connect(bin, &mut c, server.addr()),
        0,
        "{bin}: allowed"
    );
    drop(c);
    let l = p.access_of("socks", me, PROMPTLY);
    assert_eq!((l.err.as_deref(), l.rule), (None, Some(3)), "{bin}: {l:?}");

    let mut c = connect(socks).unwrap_or_else(|e| panic!("{bin}: connect: {e}"));
    let me = c.local_addr().expect("local_addr");
    let denied = SocketAddr::from(([192, 0, 2, 1], 80));
    assert_eq!(socks5_connect(bin, &mut c, denied), 2, "{bin}: denied");
    drop(c);
    let l = p.access_of("socks", me, PROMPTLY);
    assert_eq!(
        (l.status.as_str(), l.err.as_deref(), l.rule),
        ("denied", Some("denied"), Some(2)),
        "{bin}: {l:?}"
    );

    // Denied at accept by a rule on the service: told in answer to the
    // request, and the line names that rule.
    let mut c = connect(shut).unwrap_or_else(|e| panic!("{bin}: connect: {e}"));
    let me = c.local_addr().expect("local_addr");
    assert_eq!(socks5_connect(bin, &mut c, server.addr()), 2, "{bin}: shut");
    drop(c);
    let l = p.access_of("shut", me, PROMPTLY);
    assert_eq!(
        (l.status.as_str(), l.err.as_deref(), l.rule),
        ("denied", Some("denied"), Some(1)),
        "{bin}: {l:?}"
    );
}

fn json_line_names_the_rule(bin: Bin) {
    let server = TestServer::start(Behaviour::Echo);
    let Live { p, socks, .. } = start_live_logging(bin, server.addr().port(), "format = \"json\"");
    for (dest, code, rule) in [
        (server.addr(), 0, 3),
        (SocketAddr::from(([192, 0, 2, 1], 80)), 2, 2),
    ] {
        let mut c = connect(socks).unwrap_or_else(|e| panic!("{bin}: connect: {e}"));
        let me = c.local_addr().expect("local_addr");
        assert_eq!(socks5_connect(bin, &mut c, dest), code, "{bin}: {dest}");
        drop(c);
        let line = p.expect_log_line(&format!("\"client\":\"{me}\""), PROMPTLY);
        let obj = parse_json_object(&line).unwrap_or_else(|e| panic!("{bin}: {e}"));
        let got = obj
            .iter()
            .find(|(k, _)| k == "rule")
            .map(|(_, v)| v.as_u64());
        assert_eq!(got, Some(Some(rule)), "{bin}: {line}");
    }
}

/// With `--reload-recheck`, a tunnel the new rules deny is closed, and its
/// line names the new rule that denied it, not the old one that allowed it.
fn reload_recheck_names_the_new_rule(bin: Bin) {
    let server = TestServer::start(Behaviour::Echo);
    let config = |port: u16, rules: &str| {
        format!(
            "{}{}{rules}",
            config_head("", ""),
            mapped_service("map", port, server.addr(), "")
        )
    };
    // Rule 2 allows the tunnel; after the reload rule 1 denies it.
    let old = "[[rule]]\naction = \"deny\"\nclients = [\"10.0.0.0/8\"]\n\
               [[rule]]\naction = \"allow\"\n";
    let new = "[[rule]]\naction = \"deny\"\nclients = [\"127.0.0.1/32\"]\n";
    let opts = StartOptions {
        args: &["--reload-recheck"],
        ..StartOptions::default()
    };
    let (p, ports) = start_on_free_ports(bin, 1, opts, |ports| config(ports[0], old));
    let mut t = connect(local(ports[0])).unwrap_or_else(|e| panic!("{bin}: connect: {e}"));
    let me = t.local_addr().expect("local_addr");
    echo_check(&mut t, b"before").unwrap_or_else(|e| panic!("{bin}: echo: {e}"));

    std::fs::write(p.config_path(), config(ports[0], new)).expect("rewrite the configuration");
    p.signal(libc::SIGHUP);
    assert!(
        read_outcome(&mut t, PROMPTLY).is_closed(),
        "{bin}: the tunnel the new rules deny is closed\nstderr:\n{}",
        p.stderr_text()
    );
    let l = p.access_of("map", me, PROMPTLY);
    assert_eq!(
        (l.status.as_str(), l.rule),
        ("denied", Some(1)),
        "{bin}: {l:?}"
    );
}
