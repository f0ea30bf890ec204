//! The proxy auto-config file (`[pac]`), end to end through both binaries:
//! `GET /proxy.pac` and `/wpad.dat` on the http, auto and status services
//! (Content-Type, the PROXY and SOCKS5 entries naming the address the
//! request arrived on, `direct`, `fallback_direct`), the PAC file
//! regenerated on SIGHUP, served without credentials and to HEAD, the
//! refusal of a `[pac] proxy` that is not an
//! http or auto service, and headless Chromium following the file.
//!
//! Chromium and loopback: whatever the PAC file says, Chromium sends
//! `localhost`, `*.localhost` and loopback addresses DIRECT (its implicit
//! bypass rules apply to PAC results, and `--proxy-bypass-list=<-loopback>`
//! only lifts them for fixed proxy servers). So the page that must go
//! through the proxy is on a non-loopback address of this machine (the
//! source address of its default route), which Chromium does not bypass
//! and the proxy can connect to; the page that must go DIRECT is on
//! 127.0.0.1 under the name `direct.test`, which
//! `--host-resolver-rules="MAP direct.test 127.0.0.1"` resolves for
//! Chromium alone, and which `[pac] direct` names.
//!
//! Tools: `chromium` (package chromium).

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::time::Duration;

use portico_tests::browser::chromium;
use portico_tests::origin::Origin;
use portico_tests::reply::{exchange, Reply};
use portico_tests::{
    both, config_head, connect, curl_command, poll_until, require, run_on_config, run_tool,
    service, start_on_free_ports, Bin, Portico, StartOptions, TempDir, ALICE, PROMPTLY,
};

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// A second loopback address, also internal, to see the PAC file name the
/// address its request arrived on.
const LOOPBACK2: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
const EVERY: Duration = Duration::from_millis(50);

/// Services `web` (http), `s` (socks), `all` (auto) and `status` on
/// `ports` (in that order) on every internal address (127.0.0.1 and
/// 127.0.0.2), and `pac` as the `[pac]` section's lines (none: no `[pac]`).
fn config(ports: &[u16], pac: Option<&str>) -> String {
    let mut c = config_head("", "").replace(
        "internal = [\"127.0.0.1\"]",
        "internal = [\"127.0.0.1\", \"127.0.0.2\"]",
    );
    for (i, (name, kind)) in [
        ("web", "http"),
        ("s", "socks"),
        ("all", "auto"),
        ("status", "status"),
    ]
    .into_iter()
    .enumerate()
    {
        c.push_str(&format!(
            "\n[[service]]\nname = \"{name}\"\nkind = \"{kind}\"\nport = {}\n",
            ports[i]
        ));
    }
    if let Some(pac) = pac {
        c.push_str(&format!("\n[pac]\n{pac}\n"));
    }
    c
}

fn start(bin: Bin, pac: Option<&str>) -> (Portico, Vec<u16>) {
    start_on_free_ports(bin, 4, StartOptions::default(), |ports| config(ports, pac))
}

/// `GET path` on `addr` as an origin-form request to the service itself.
fn get(bin: Bin, addr: SocketAddr, path: &str) -> Reply {
    exchange(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
    )
    .unwrap_or_else(|e| panic!("{bin}: GET {path} from {addr}: {e}"))
}

/// The PAC file at `path` on `addr`: 200 with its Content-Type; its text.
fn pac_at(bin: Bin, addr: SocketAddr, path: &str) -> String {
    let r = get(bin, addr, path);
    assert_eq!(r.status, 200, "{bin}: GET {path} from {addr}: {}", r.head);
    assert_eq!(
        r.header("content-type"),
        Some("application/x-ns-proxy-autoconfig"),
        "{bin}: GET {path} from {addr}: {}",
        r.head
    );
    assert!(
        r.body.contains("function FindProxyForURL(url, host)"),
        "{bin}: GET {path} from {addr}:\n{}",
        r.body
    );
    r.body
}

both!(
    served_by_http_auto_and_status,
    fallback_direct_and_auto_proxy,
    regenerated_on_reload,
    without_pac_nothing_is_served,
    proxy_must_be_http_or_auto,
    chromium_follows_the_pac,
    no_credentials_needed_and_head,
    https_for_a_tls_proxy,
);

/// Every http, auto and status service serves the file at both paths; its
/// entries name the address the request arrived on; the socks service is
/// the SOCKS5 entry; `direct` becomes shExpMatch and isInNet; no DIRECT
/// fallback by default. The fetch is logged like any request.
fn served_by_http_auto_and_status(bin: Bin) {
    let (p, ports) = start(
        bin,
        Some("proxy = \"web\"\ndirect = [\"*.lan\", \"192.168.0.0/16\"]"),
    );
    let (web, socks, auto, status) = (ports[0], ports[1], ports[2], ports[3]);
    for ip in [LOOPBACK, LOOPBACK2] {
        for port in [web, auto, status] {
            for path in ["/proxy.pac", "/wpad.dat"] {
                let js = pac_at(bin, SocketAddr::new(ip, port), path);
                let want = format!("return \"PROXY {ip}:{web}; SOCKS5 {ip}:{socks}\";");
                assert!(
                    js.contains(&want),
                    "{bin}: {path} on {ip}:{port}: {want} in\n{js}"
                );
                for want in [
                    "if (isPlainHostName(h) && h.indexOf(\":\") < 0) return \"DIRECT\";",
                    "if (h == \"127.0.0.1\" || h == \"127.0.0.2\") return \"DIRECT\";",
                    "if (shExpMatch(h, \"*.lan\")) return \"DIRECT\";",
                    "if (isInNet(h, \"192.168.0.0\", \"255.255.0.0\")) return \"DIRECT\";",
                ] {
                    assert!(
                        js.contains(want),
                        "{bin}: {path} on {ip}:{port}: {want} in\n{js}"
                    );
                }
            }
        }
    }
    let l = p.expect_access("web", "the PAC fetch", PROMPTLY, |a| {
        a.target == "/proxy.pac"
    });
    assert_eq!(
        (l.method.as_str(), l.status.as_str()),
        ("GET", "200"),
        "{bin}: {l:?}"
    );
    let l = p.expect_access("all", "the PAC fetch", PROMPTLY, |a| {
        a.target == "/wpad.dat"
    });
    assert_eq!(
        (l.method.as_str(), l.status.as_str()),
        ("GET", "200"),
        "{bin}: {l:?}"
    );
}

/// An auto service as `[pac] proxy`, and `fallback_direct = true`.
fn fallback_direct_and_auto_proxy(bin: Bin) {
    let (_p, ports) = start(bin, Some("proxy = \"all\"\nfallback_direct = true"));
    let (socks, auto, status) = (ports[1], ports[2], ports[3]);
    let js = pac_at(bin, SocketAddr::new(LOOPBACK, status), "/proxy.pac");
    let want = format!("return \"PROXY 127.0.0.1:{auto}; SOCKS5 127.0.0.1:{socks}; DIRECT\";");
    assert!(js.contains(&want), "{bin}: {want} in\n{js}");
    assert!(!js.contains("isInNet"), "{bin}: no direct networks:\n{js}");
}

/// A reload that changes `[pac] direct` changes the file served.
fn regenerated_on_reload(bin: Bin) {
    let (p, ports) = start(bin, Some("proxy = \"web\"\ndirect = [\"*.lan\"]"));
    let at = SocketAddr::new(LOOPBACK, ports[3]);
    let before = pac_at(bin, at, "/proxy.pac");
    assert!(
        before.contains("shExpMatch(h, \"*.lan\")"),
        "{bin}:\n{before}"
    );
    std::fs::write(
        p.config_path(),
        config(
            &ports,
            Some("proxy = \"web\"\ndirect = [\"*.home.arpa\", \"10.0.0.0/8\"]"),
        ),
    )
    .unwrap_or_else(|e| panic!("{bin}: rewrite the configuration: {e}"));
    p.signal(libc::SIGHUP);
    let after = poll_until(PROMPTLY, EVERY, || {
        let js = pac_at(bin, at, "/proxy.pac");
        js.contains("shExpMatch(h, \"*.home.arpa\")").then_some(js)
    })
    .unwrap_or_else(|| {
        panic!(
            "{bin}: the PAC file did not change after SIGHUP\nstderr:\n{}",
            p.stderr_text()
        )
    });
    assert!(
        !after.contains("*.lan"),
        "{bin}: the old pattern stayed:\n{after}"
    );
    assert!(
        after.contains("isInNet(h, \"10.0.0.0\", \"255.0.0.0\")"),
        "{bin}:\n{after}"
    );
}

/// Without `[pac]` no service serves a PAC file: the http and auto
/// services refuse the origin-form request as before (400), the status
/// service has no such page (404).
fn without_pac_nothing_is_served(bin: Bin) {
    let (_p, ports) = start(bin, None);
    for port in [ports[0], ports[2]] {
        let r = get(bin, SocketAddr::new(LOOPBACK, port), "/proxy.pac");
        assert_eq!(r.status, 400, "{bin}: port {port}: {}", r.head);
    }
    let r = get(bin, SocketAddr::new(LOOPBACK, ports[3]), "/wpad.dat");
    assert_eq!(r.status, 404, "{bin}: status: {}", r.head);
}

/// `[pac] proxy` naming a socks service, or no service, is a configuration
/// error (exit 2) that names the http and auto services there are.
fn proxy_must_be_http_or_auto(bin: Bin) {
    let ports = [3128, 1080, 8000, 8081];
    for (proxy, says) in [
        ("s", "pac.proxy names service 's', a socks service"),
        ("nope", "pac.proxy names unknown service 'nope'"),
    ] {
        let text = config(&ports, Some(&format!("proxy = \"{proxy}\"")));
        let (path, out) = run_on_config(bin, &text, &["--check"], PROMPTLY);
        assert_eq!(
            out.code(),
            Some(2),
            "{bin}: --check with proxy = {proxy:?}: {out:?}"
        );
        assert!(
            out.stderr.contains(says)
                && out
                    .stderr
                    .contains("the http and auto services are: web, all"),
            "{bin}: proxy = {proxy:?}: {}",
            out.stderr
        );
        assert!(
            out.stderr.contains(&path),
            "{bin}: the error names the file: {}",
            out.stderr
        );
    }
}

/// A non-loopback IPv4 address of this machine: the source address of its
/// default route (a UDP connect sends nothing).
fn outward_ip(bin: Bin) -> IpAddr {
    let s = UdpSocket::bind("0.0.0.0:0").unwrap_or_else(|e| panic!("{bin}: UDP bind: {e}"));
    s.connect("203.0.113.1:9").unwrap_or_else(|e| {
        panic!(
            "{bin}: this test needs a non-loopback IPv4 address (a default route) for the page \
             that goes through the proxy (Chromium never proxies loopback): {e}"
        )
    });
    let ip = s
        .local_addr()
        .unwrap_or_else(|e| panic!("{bin}: UDP local_addr: {e}"))
        .ip();
    assert!(!ip.is_loopback() && !ip.is_unspecified(), "{bin}: {ip}");
    ip
}

/// Chromium pointed at the status service's /proxy.pac loads a page on a
/// name `[pac] direct` lists straight from its origin (no access-log line,
/// no Via from the proxy), and another page through the proxy.
fn chromium_follows_the_pac(bin: Bin) {
    const DIRECT_PAGE: &str = "<html><body>the direct page</body></html>";
    const PROXIED_PAGE: &str = "<html><body>the proxied page</body></html>";
    let direct = Origin::start(LOOPBACK, DIRECT_PAGE);
    let proxied = Origin::start(outward_ip(bin), PROXIED_PAGE);
    let (p, ports) = start(bin, Some("proxy = \"web\"\ndirect = [\"direct.test\"]"));
    let args = |extra: &[&str]| -> Vec<String> {
        let mut a = vec![
            format!("--proxy-pac-url=http://127.0.0.1:{}/proxy.pac", ports[3]),
            "--dump-dom".to_string(),
        ];
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };

    let url = format!("http://direct.test:{}/", direct.addr().port());
    let dom = chromium(
        &url,
        &args(&["--host-resolver-rules=MAP direct.test 127.0.0.1"]),
    );
    assert!(dom.contains("the direct page"), "{bin}: {url}:\n{dom}");
    let heads = direct.heads();
    assert!(!heads.is_empty(), "{bin}: the direct origin saw no request");
    assert!(
        heads
            .iter()
            .all(|h| !h.to_ascii_lowercase().contains("portico")),
        "{bin}: a request to the direct origin came through the proxy: {heads:?}"
    );

    let url = format!("http://{}/", proxied.addr());
    let dom = chromium(&url, &args(&[]));
    assert!(dom.contains("the proxied page"), "{bin}: {url}:\n{dom}");
    let l = p.expect_access("web", "the proxied page", PROMPTLY, |a| a.target == url);
    assert_eq!(l.status, "200", "{bin}: {l:?}");
    let heads = proxied.heads();
    assert!(
        heads
            .iter()
            .any(|h| h.to_ascii_lowercase().contains("via: 1.1 portico")),
        "{bin}: the proxied origin saw no request with the proxy's Via: {heads:?}"
    );
    // The direct page never reached the proxy.
    let stderr = p.stderr_text();
    assert!(
        !stderr.contains("direct.test"),
        "{bin}: the direct page went through the proxy:\n{stderr}"
    );
}

/// `HEAD path` on `addr`: the whole reply, read to the close.
fn head(bin: Bin, addr: SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = connect(addr).unwrap_or_else(|e| panic!("{bin}: connect {addr}: {e}"));
    s.write_all(format!("HEAD {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .unwrap_or_else(|e| panic!("{bin}: HEAD {path} to {addr}: {e}"));
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .unwrap_or_else(|e| panic!("{bin}: HEAD {path} from {addr}: {e}"));
    String::from_utf8_lossy(&raw).into_owned()
}

/// An http service with `auth = true` serves the PAC file without
/// credentials (browsers fetch it without any); HEAD gets the head alone.
fn no_credentials_needed_and_head(bin: Bin) {
    let (_p, ports) = start_on_free_ports(bin, 2, StartOptions::default(), |ports| {
        format!(
            "{}\n{ALICE}{}{}\n[pac]\nproxy = \"web\"\n",
            config_head("", ""),
            service("web", "http", ports[0], "auth = true"),
            service("status", "status", ports[1], "")
        )
    });
    let web = SocketAddr::new(LOOPBACK, ports[0]);
    let js = pac_at(bin, web, "/proxy.pac");
    assert!(
        js.contains(&format!("return \"PROXY 127.0.0.1:{}\";", ports[0])),
        "{bin}:\n{js}"
    );
    for port in ports {
        let reply = head(bin, SocketAddr::new(LOOPBACK, port), "/wpad.dat");
        assert!(
            reply.starts_with("HTTP/1.1 200 OK\r\n"),
            "{bin}: port {port}: {reply}"
        );
        assert!(
            reply.contains("\r\nContent-Type: application/x-ns-proxy-autoconfig\r\n"),
            "{bin}: port {port}: {reply}"
        );
        assert!(
            reply.ends_with("\r\n\r\n"),
            "{bin}: port {port}: a body after HEAD: {reply}"
        );
    }
}

/// A self-signed certificate for localhost and 127.0.0.1 in `dir`:
/// (cert.pem, key.pem).
fn self_signed(dir: &TempDir) -> (String, String) {
    let mut cmd = std::process::Command::new(require("openssl", "openssl"));
    cmd.current_dir(dir.path()).args([
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        "key.pem",
        "-out",
        "cert.pem",
        "-days",
        "30",
        "-subj",
        "/CN=localhost",
        "-addext",
        "subjectAltName=DNS:localhost,IP:127.0.0.1",
    ]);
    let out = run_tool("openssl", cmd, None, PROMPTLY);
    assert!(out.status.success(), "openssl: {}", out.stderr);
    let p = |n: &str| dir.path().join(n).display().to_string();
    (p("cert.pem"), p("key.pem"))
}

/// A `[pac] proxy` with `tls` is named `HTTPS` (browsers then speak TLS
/// to it); a socks service with `tls` is passed over for the SOCKS5 entry
/// (browsers speak SOCKS in the clear), so the auto service after it is
/// named; and the TLS service serves the file itself, over HTTPS.
fn https_for_a_tls_proxy(bin: Bin) {
    let dir = TempDir::new();
    let (cert, key) = self_signed(&dir);
    let tls = format!("tls = {{ cert = \"{cert}\", key = \"{key}\" }}");
    let (_p, ports) = start_on_free_ports(bin, 4, StartOptions::default(), |ports| {
        format!(
            "{}{}{}{}{}\n[pac]\nproxy = \"web\"\n",
            config_head("", ""),
            service("web", "http", ports[0], &tls),
            service("s", "socks", ports[1], &tls),
            service("all", "auto", ports[2], ""),
            service("status", "status", ports[3], ""),
        )
    });
    let want = format!(
        "return \"HTTPS 127.0.0.1:{}; SOCKS5 127.0.0.1:{}\";",
        ports[0], ports[2]
    );
    let js = pac_at(bin, SocketAddr::new(LOOPBACK, ports[3]), "/proxy.pac");
    assert!(js.contains(&want), "{bin}: {want} in\n{js}");
    let mut cmd = curl_command(10);
    cmd.args([
        "--cacert",
        &cert,
        "-D",
        "-",
        &format!("https://127.0.0.1:{}/wpad.dat", ports[0]),
    ]);
    let out = run_tool(format!("{bin}: curl"), cmd, None, PROMPTLY);
    assert!(
        out.status.success(),
        "{bin}: the PAC file over HTTPS: {}",
        out.stderr
    );
    let text = out.stdout_text();
    assert!(
        text.starts_with("HTTP/1.1 200")
            && text
                .to_ascii_lowercase()
                .contains("content-type: application/x-ns-proxy-autoconfig")
            && text.contains(&want),
        "{bin}: the PAC file over HTTPS:\n{text}"
    );
}
