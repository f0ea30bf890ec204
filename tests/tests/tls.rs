//! TLS to the proxy: an HTTPS proxy (curl `--proxy https://…`), a CONNECT
//! through it, the status page over HTTPS, client certificates, plain text
//! to a TLS port, and `--check` on bad certificate files. Certificates are
//! made for each test with `openssl`.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use portico_tests::{
    both, config_head, connect, curl_command, poll_until, require, run_cli, run_tool, service,
    start_on_free_ports, Acceptor, Bin, StartOptions, TempDir, ALICE,
};

const LIMIT: Duration = Duration::from_secs(20);

both!(
    https_proxy_get,
    https_proxy_connect,
    status_page_over_https,
    plain_text_to_a_tls_port,
    client_certificate_required,
    client_certificate_names_the_user,
    check_names_a_bad_tls_file,
    socks5_over_tls,
    auto_over_tls,
    reload_reads_the_files_again,
    large_bodies_both_ways,
    tls_1_2_and_1_3,
    client_certificate_of_another_ca,
    megabytes_through_a_tls_tunnel,
);

/// A CA, a server certificate for 127.0.0.1 and localhost, a client
/// certificate with CN `carol`, and a key that matches neither.
struct Certs {
    dir: TempDir,
}

impl Certs {
    fn new() -> Certs {
        let dir = TempDir::new();
        let d = dir.path();
        let openssl = |args: &[&str]| {
            let mut cmd = Command::new(require("openssl", "openssl"));
            cmd.current_dir(d).args(args);
            let out = run_tool("openssl", cmd, None, LIMIT);
            assert!(out.status.success(), "openssl {args:?}: {}", out.stderr);
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let mut ca = vec!["req", "-x509"];
        ca.extend(ec);
        ca.extend([
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "30",
            "-subj",
            "/CN=Test CA",
        ]);
        openssl(&ca);
        std::fs::write(
            d.join("srv.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        )
        .expect("srv.ext");
        std::fs::write(d.join("cli.ext"), "extendedKeyUsage=clientAuth\n").expect("cli.ext");
        for (name, cn, ext) in [
            ("server", "/CN=localhost", "srv.ext"),
            ("client", "/CN=carol", "cli.ext"),
        ] {
            let key = format!("{name}.key");
            let csr = format!("{name}.csr");
            let pem = format!("{name}.pem");
            let mut req = vec!["req"];
            req.extend(ec);
            req.extend(["-keyout", &key, "-out", &csr, "-subj", cn]);
            openssl(&req);
            openssl(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "30",
                "-extfile",
                ext,
            ]);
        }
        openssl(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-out",
            "other.key",
        ]);
        Certs { dir }
    }

    /// `expired.pem`: the server's key, certified by the CA for January
    /// 2020 only (`openssl ca`, which takes dates in the past).
    fn expired(&self) -> PathBuf {
        let d = self.dir.path();
        std::fs::write(
            d.join("ca.cnf"),
            "[ca]\ndefault_ca = d\n[d]\ndatabase = index.txt\nnew_certs_dir = .\n\
             serial = serial\ndefault_md = sha256\npolicy = p\n[p]\ncommonName = supplied\n",
        )
        .expect("ca.cnf");
        std::fs::write(d.join("index.txt"), "").expect("index.txt");
        std::fs::write(d.join("serial"), "01\n").expect("serial");
        let mut cmd = Command::new(require("openssl", "openssl"));
        cmd.current_dir(d).args([
            "ca",
            "-batch",
            "-config",
            "ca.cnf",
            "-cert",
            "ca.pem",
            "-keyfile",
            "ca.key",
            "-in",
            "server.csr",
            "-out",
            "expired.pem",
            "-notext",
            "-startdate",
            "20200101000000Z",
            "-enddate",
            "20200201000000Z",
        ]);
        let out = run_tool("openssl ca", cmd, None, LIMIT);
        assert!(out.status.success(), "openssl ca: {}", out.stderr);
        self.path("expired.pem")
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn p(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    /// The `tls = { … }` line of a service, with `extra` keys.
    fn tls(&self, extra: &str) -> String {
        format!(
            "tls = {{ cert = \"{}\", key = \"{}\"{extra} }}",
            self.p("server.pem"),
            self.p("server.key")
        )
    }
}

/// A small HTTP origin answering every request `200 ok` and closing.
fn origin() -> Acceptor {
    Acceptor::start(IpAddr::V4(Ipv4Addr::LOCALHOST), "origin", |mut s, _| {
        let _ = s.set_read_timeout(Some(LIMIT));
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

fn curl(bin: Bin, args: &[&str]) -> (bool, String, String) {
    let mut cmd = curl_command(10);
    cmd.args(args);
    let out = run_tool(format!("{bin}: curl"), cmd, None, LIMIT);
    (out.status.success(), out.stdout_text(), out.stderr)
}

/// A plain status service `plain` next to the TLS ones, to read metrics.
fn metrics(bin: Bin, port: u16) -> String {
    let (ok, body, err) = curl(bin, &[&format!("http://127.0.0.1:{port}/metrics")]);
    assert!(ok, "{bin}: metrics: {err}");
    body
}

fn https_proxy_get(bin: Bin) {
    let certs = Certs::new();
    let o = origin();
    let (p, ports) = start_on_free_ports(bin, 1, StartOptions::default(), |ports| {
        format!(
            "{}{}\n[[rule]]\naction = \"allow\"\n",
            config_head("", ""),
            service("web", "http", ports[0], &certs.tls(""))
        )
    });
    let (ok, body, err) = curl(
        bin,
        &[
            "--proxy",
            &format!("https://127.0.0.1:{}", ports[0]),
            "--proxy-cacert",
            &certs.p("ca.pem"),
            &format!("http://{}/", o.addr()),
        ],
    );
    assert!(ok, "{bin}: curl through the HTTPS proxy: {err}");
    assert_eq!(body, "ok", "{bin}");
    p.expect_log_line("GET http://", LIMIT);
}

fn https_proxy_connect(bin: Bin) {
    let certs = Certs::new();
    // An HTTPS origin: openssl's own server, on the same certificate.
    let port = portico_tests::free_port();
    let mut server = Command::new(require("openssl", "openssl"));
    server
        .args(["s_server", "-www", "-quiet", "-accept"])
        .arg(port.to_string())
        .args([
            "-cert",
            &certs.p("server.pem"),
            "-key",
            &certs.p("server.key"),
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut child = server.spawn().expect("openssl s_server");
    // (The probe is closed at once: s_server serves one connection at a
    // time.)
    let up = poll_until(LIMIT, Duration::from_millis(50), || {
        connect(portico_tests::local(port)).ok().map(drop)
    });
    let (p, ports) = start_on_free_ports(bin, 1, StartOptions::default(), |ports| {
        format!(
            "{}{}\n[[rule]]\naction = \"allow\"\n",
            config_head("", ""),
            service(
                "web",
                "http",
                ports[0],
                &format!("connect_ports = [{port}]\n{}", certs.tls(""))
            )
        )
    });
    let result = up.map(|_| {
        curl(
            bin,
            &[
                "--proxy",
                &format!("https://127.0.0.1:{}", ports[0]),
                "--proxy-cacert",
                &certs.p("ca.pem"),
                "--cacert",
                &certs.p("ca.pem"),
                &format!("https://localhost:{port}/"),
            ],
        )
    });
    let _ = child.kill();
    let _ = child.wait();
    let (ok, body, err) = result.unwrap_or_else(|| panic!("{bin}: openssl s_server did not start"));
    assert!(ok, "{bin}: CONNECT through the HTTPS proxy: {err}");
    assert!(body.contains("s_server"), "{bin}: {body}");
    p.expect_log_line("CONNECT", LIMIT);
}

fn status_page_over_https(bin: Bin) {
    let certs = Certs::new();
    let (_p, ports) = start_on_free_ports(bin, 1, StartOptions::default(), |ports| {
        format!(
            "{}{}",
            config_head("", ""),
            service("st", "status", ports[0], &certs.tls(""))
        )
    });
    let (ok, body, err) = curl(
        bin,
        &[
            "--cacert",
            &certs.p("ca.pem"),
            &format!("https://127.0.0.1:{}/metrics", ports[0]),
        ],
    );
    assert!(ok, "{bin}: the status page over HTTPS: {err}");
    assert!(body.contains("portico_connections_total"), "{bin}: {body}");
}

fn plain_text_to_a_tls_port(bin: Bin) {
    let certs = Certs::new();
    let (p, ports) = start_on_free_ports(bin, 2, StartOptions::default(), |ports| {
        format!(
            "{}{}{}",
            config_head("", ""),
            service("st", "status", ports[0], &certs.tls("")),
            service("plain", "status", ports[1], "")
        )
    });
    let mut s = connect(portico_tests::local(ports[0])).expect("connect");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("send");
    s.set_read_timeout(Some(LIMIT)).expect("timeout");
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    assert!(
        !String::from_utf8_lossy(&got).contains("HTTP/1.1"),
        "{bin}: plain text was served: {got:?}"
    );
    let line = "portico_tls_failures_total{service=\"st\"} 1";
    let seen = poll_until(LIMIT, Duration::from_millis(50), || {
        metrics(bin, ports[1]).contains(line).then_some(())
    });
    assert!(
        seen.is_some(),
        "{bin}: no {line:?} in\n{}",
        metrics(bin, ports[1])
    );
    p.wait_for_stderr(|l| l.contains("TLS handshake failed"), LIMIT)
        .unwrap_or_else(|| {
            panic!(
                "{bin}: the failure is not logged:\n{}",
                p.stderr_lines().join("\n")
            )
        });
}

fn client_ca_config(certs: &Certs, port: u16, extra: &str) -> String {
    format!(
        "{}{ALICE}{}\n[[rule]]\naction = \"deny\"\nusers = [\"carol\"]\ndestinations = [\"blocked.invalid\"]\n\
         [[rule]]\naction = \"allow\"\n",
        config_head("", ""),
        service(
            "web",
            "http",
            port,
            &format!("auth = true\n{}", certs.tls(&format!(", client_ca = \"{}\"{extra}", certs.p("ca.pem"))))
        )
    )
}

fn client_certificate_required(bin: Bin) {
    let certs = Certs::new();
    let o = origin();
    let (_p, ports) = start_on_free_ports(bin, 1, StartOptions::default(), |ports| {
        client_ca_config(&certs, ports[0], ", client_cert_user = true")
    });
    let proxy = format!("https://127.0.0.1:{}", ports[0]);
    let url = format!("http://{}/", o.addr());
    let (ok, body, _) = curl(
        bin,
        &[
            "--proxy",
            &proxy,
            "--proxy-cacert",
            &certs.p("ca.pem"),
            &url,
        ],
    );
    assert!(
        !ok && body.is_empty(),
        "{bin}: served without a client certificate: {body}"
    );
    let (ok, body, err) = curl(
        bin,
        &[
            "--proxy",
            &proxy,
            "--proxy-cacert",
            &certs.p("ca.pem"),
            "--proxy-cert",
            &certs.p("client.pem"),
            "--proxy-key",
            &certs.p("client.key"),
            &url,
        ],
    );
    assert!(ok, "{bin}: with a client certificate: {err}");
    assert_eq!(body, "ok", "{bin}");
}

fn client_certificate_names_the_user(bin: Bin) {
    let certs = Certs::new();
    let o = origin();
    let (p, ports) = start_on_free_ports(bin, 1, StartOptions::default(), |ports| {
        client_ca_config(&certs, ports[0], ", client_cert_user = true")
    });
    let base = [
        "--proxy".to_string(),
        format!("https://127.0.0.1:{}", ports[0]),
        "--proxy-cacert".into(),
        certs.p("ca.pem"),
        "--proxy-cert".into(),
        certs.p("client.pem"),
        "--proxy-key".into(),
        certs.p("client.key"),
        "-o".into(),
        "/dev/null".into(),
        "-w".into(),
        "%{http_code}".into(),
    ];
    let run = |url: &str| {
        let mut args: Vec<&str> = base.iter().map(String::as_str).collect();
        args.push(url);
        curl(bin, &args)
    };
    // No password asked: the certificate's CN is the user.
    let (ok, code, err) = run(&format!("http://{}/", o.addr()));
    assert!(ok, "{bin}: {err}");
    assert_eq!(code, "200", "{bin}");
    let line = p.expect_log_line(" carol ", LIMIT);
    assert!(line.contains("GET"), "{bin}: {line}");
    // A rule naming carol matches her.
    let (_, code, _) = run("http://blocked.invalid/");
    assert_eq!(code, "403", "{bin}: the rule naming carol");
}

fn check_names_a_bad_tls_file(bin: Bin) {
    let certs = Certs::new();
    let dir = TempDir::new();
    // Each case: the file the error must name, and the words saying why.
    let check = |tls: String, needle: &Path, why: &str| {
        let text = format!(
            "{}{}",
            config_head("", ""),
            service("st", "status", 1, &tls)
        );
        let path = dir.write("portico.toml", &text);
        let path = path.display().to_string();
        let out = run_cli(bin, &["--config", &path, "--check"], None, LIMIT);
        assert_eq!(out.code(), Some(2), "{bin}: --check must fail: {out:?}");
        assert!(
            out.stderr.contains(&needle.display().to_string()),
            "{bin}: the error names {}: {}",
            needle.display(),
            out.stderr
        );
        assert!(
            out.stderr.contains(why),
            "{bin}: the error says {why:?}: {}",
            out.stderr
        );
    };
    let missing = certs.path("missing.pem");
    check(
        format!(
            "tls = {{ cert = \"{}\", key = \"{}\" }}",
            missing.display(),
            certs.p("server.key")
        ),
        &missing,
        "cannot read it",
    );
    // Unreadable: a directory where the certificate should be.
    check(
        format!(
            "tls = {{ cert = \"{}\", key = \"{}\" }}",
            dir.path().display(),
            certs.p("server.key")
        ),
        dir.path(),
        "cannot read it",
    );
    check(
        format!(
            "tls = {{ cert = \"{}\", key = \"{}\" }}",
            certs.p("server.pem"),
            certs.p("other.key")
        ),
        &certs.path("other.key"),
        "does not match",
    );
    let expired = certs.expired();
    check(
        format!(
            "tls = {{ cert = \"{}\", key = \"{}\" }}",
            expired.display(),
            certs.p("server.key")
        ),
        &expired,
        "expired on",
    );
    let good = format!(
        "{}{}",
        config_head("", ""),
        service("st", "status", 1, &certs.tls(""))
    );
    let path = dir.write("good.toml", &good);
    let out = run_cli(
        bin,
        &["--config", &path.display().to_string(), "--check"],
        None,
        LIMIT,
    );
    assert_eq!(
        out.code(),
        Some(0),
        "{bin}: good files pass --check: {out:?}"
    );
}

/// A TLS client over `s` trusting `ca` (a PEM file).
fn tls_client(
    ca: &Path,
    s: std::net::TcpStream,
) -> rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(ca).expect("CA file") {
        roots.add(c.expect("CA")).expect("CA added");
    }
    #[allow(deprecated)]
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).expect("client");
    rustls::StreamOwned::new(conn, s)
}

fn socks5_over_tls(bin: Bin) {
    let certs = Certs::new();
    let o = origin();
    let (_p, ports) = start_on_free_ports(bin, 1, StartOptions::default(), |ports| {
        format!(
            "{}{}\n[[rule]]\naction = \"allow\"\n",
            config_head("", ""),
            service("socks", "socks", ports[0], &certs.tls(""))
        )
    });
    socks5_get_over_tls(bin, &certs, ports[0], &o);
}

/// An auto service with `tls`: curl's HTTPS proxy GET, a SOCKS5 and a
/// SOCKS4 CONNECT over TLS on the one port, told apart inside TLS.
fn auto_over_tls(bin: Bin) {
    let certs = Certs::new();
    let o = origin();
    let (p, ports) = start_on_free_ports(bin, 1, StartOptions::default(), |ports| {
        format!(
            "{}{}\n[[rule]]\naction = \"allow\"\n",
            config_head("", ""),
            service("all", "auto", ports[0], &certs.tls(""))
        )
    });
    let (ok, body, err) = curl(
        bin,
        &[
            "--proxy",
            &format!("https://127.0.0.1:{}", ports[0]),
            "--proxy-cacert",
            &certs.p("ca.pem"),
            &format!("http://{}/", o.addr()),
        ],
    );
    assert!(ok, "{bin}: curl through the auto port's HTTPS proxy: {err}");
    assert_eq!(body, "ok", "{bin}");
    p.expect_log_line("GET http://", LIMIT);
    socks5_get_over_tls(bin, &certs, ports[0], &o);
    p.expect_log_line(" SOCKS5 ", LIMIT);
    socks4_get_over_tls(bin, &certs, ports[0], &o);
    p.expect_log_line(" SOCKS4 ", LIMIT);
}

/// A SOCKS4 CONNECT to `o` over TLS to 127.0.0.1:`port`, then a GET
/// through it that gets `ok`.
fn socks4_get_over_tls(bin: Bin, certs: &Certs, port: u16, o: &Acceptor) {
    let s = connect(portico_tests::local(port)).expect("connect");
    s.set_read_timeout(Some(LIMIT)).expect("timeout");
    let mut t = tls_client(&certs.path("ca.pem"), s);
    let std::net::SocketAddr::V4(a) = o.addr() else {
        panic!("an IPv4 origin")
    };
    let mut req = vec![4, 1];
    req.extend_from_slice(&a.port().to_be_bytes());
    req.extend_from_slice(&a.ip().octets());
    req.push(0);
    let mut run = || -> std::io::Result<Vec<u8>> {
        t.write_all(&req)?;
        let mut r = [0u8; 8];
        t.read_exact(&mut r)?;
        assert_eq!(r[1], 0x5A, "{bin}: SOCKS4 reply");
        t.write_all(b"GET / HTTP/1.1\r\nHost: o\r\n\r\n")?;
        let mut got = Vec::new();
        let mut b = [0u8; 512];
        while !got.ends_with(b"ok") {
            match t.read(&mut b)? {
                0 => break,
                n => got.extend_from_slice(&b[..n]),
            }
        }
        Ok(got)
    };
    let got = run().unwrap_or_else(|e| panic!("{bin}: SOCKS4 over TLS: {e}"));
    let got = String::from_utf8_lossy(&got);
    assert!(
        got.starts_with("HTTP/1.1 200") && got.ends_with("ok"),
        "{bin}: {got}"
    );
}

/// A SOCKS5 CONNECT to `o` over TLS to 127.0.0.1:`port`, then a GET
/// through it that gets `ok`.
fn socks5_get_over_tls(bin: Bin, certs: &Certs, port: u16, o: &Acceptor) {
    let s = connect(portico_tests::local(port)).expect("connect");
    s.set_read_timeout(Some(LIMIT)).expect("timeout");
    let mut t = tls_client(&certs.path("ca.pem"), s);
    let run = |t: &mut rustls::StreamOwned<_, _>| -> std::io::Result<Vec<u8>> {
        t.write_all(&[5, 1, 0])?;
        let mut m = [0u8; 2];
        t.read_exact(&mut m)?;
        assert_eq!(m, [5, 0], "{bin}: method reply");
        let std::net::SocketAddr::V4(a) = o.addr() else {
            panic!("an IPv4 origin")
        };
        let mut req = vec![5, 1, 0, 1];
        req.extend_from_slice(&a.ip().octets());
        req.extend_from_slice(&a.port().to_be_bytes());
        t.write_all(&req)?;
        let mut r = [0u8; 10];
        t.read_exact(&mut r)?;
        assert_eq!(r[1], 0, "{bin}: SOCKS5 reply");
        t.write_all(b"GET / HTTP/1.1\r\nHost: o\r\n\r\n")?;
        let mut got = Vec::new();
        let mut b = [0u8; 512];
        while !got.ends_with(b"ok") {
            match t.read(&mut b)? {
                0 => break,
                n => got.extend_from_slice(&b[..n]),
            }
        }
        Ok(got)
    };
    let got = run(&mut t).unwrap_or_else(|e| panic!("{bin}: SOCKS5 over TLS: {e}"));
    let got = String::from_utf8_lossy(&got);
    assert!(
        got.starts_with("HTTP/1.1 200") && got.ends_with("ok"),
        "{bin}: {got}"
    );
}

fn reload_reads_the_files_again(bin: Bin) {
    let first = Certs::new();
    let second = Certs::new();
    let dir = TempDir::new();
    let cert = dir.path().join("proxy.pem");
    let key = dir.path().join("proxy.key");
    std::fs::copy(first.path("server.pem"), &cert).expect("copy");
    std::fs::copy(first.path("server.key"), &key).expect("copy");
    let (p, ports) = start_on_free_ports(bin, 1, StartOptions::default(), |ports| {
        format!(
            "{}{}",
            config_head("", ""),
            service(
                "st",
                "status",
                ports[0],
                &format!(
                    "tls = {{ cert = \"{}\", key = \"{}\" }}",
                    cert.display(),
                    key.display()
                )
            )
        )
    });
    let url = format!("https://127.0.0.1:{}/metrics", ports[0]);
    let get = |ca: &Certs| curl(bin, &["--cacert", &ca.p("ca.pem"), &url]).0;
    assert!(get(&first), "{bin}: the first certificate");
    assert!(
        !get(&second),
        "{bin}: the second CA does not know the first certificate"
    );
    std::fs::copy(second.path("server.pem"), &cert).expect("copy");
    std::fs::copy(second.path("server.key"), &key).expect("copy");
    p.signal(libc::SIGHUP);
    p.wait_for_stderr(|l| l.contains("configuration reloaded"), LIMIT)
        .unwrap_or_else(|| panic!("{bin}: no reload:\n{}", p.stderr_lines().join("\n")));
    assert!(
        get(&second),
        "{bin}: new connections see the new certificate"
    );
    assert!(!get(&first), "{bin}: the old certificate is gone");
}

const BIG: usize = 1024 * 1024 + 17;

/// An origin that answers a POST with the length and digest of its body,
/// and a GET with [`BIG`] bytes of a pattern.
fn big_origin() -> Acceptor {
    Acceptor::start(IpAddr::V4(Ipv4Addr::LOCALHOST), "big origin", |mut s, _| {
        let _ = s.set_read_timeout(Some(LIMIT));
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match s.read(&mut b) {
                Ok(1) => head.push(b[0]),
                _ => return,
            }
        }
        let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
        if head.starts_with("post") {
            let len: u64 = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            let Ok((n, d)) = portico_tests::recv_exact(&mut s, len).map(|d| (len, d)) else {
                return;
            };
            let body = format!("{n} {d:x}");
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        } else {
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Length: {BIG}\r\nConnection: close\r\n\r\n"
            );
            let _ = s.write_all(&portico_tests::pattern(7, BIG));
        }
    })
}

/// Megabytes through the HTTPS proxy each way arrive whole: the TLS
/// layer's bounded buffers pass everything on, however it is chopped.
fn large_bodies_both_ways(bin: Bin) {
    let certs = Certs::new();
    let o = big_origin();
    let (_p, ports) = start_on_free_ports(bin, 1, StartOptions::default(), |ports| {
        format!(
            "{}{}\n[[rule]]\naction = \"allow\"\n",
            config_head("buffer = \"4 KiB\"", ""),
            service("web", "http", ports[0], &certs.tls(""))
        )
    });
    let proxy = format!("https://127.0.0.1:{}", ports[0]);
    let url = format!("http://{}/", o.addr());
    let down = certs.path("down.bin");
    let (ok, _, err) = curl(
        bin,
        &[
            "--proxy",
            &proxy,
            "--proxy-cacert",
            &certs.p("ca.pem"),
            "-o",
            &down.display().to_string(),
            &url,
        ],
    );
    assert!(ok, "{bin}: download: {err}");
    let got = std::fs::read(&down).expect("downloaded file");
    assert_eq!(got.len(), BIG, "{bin}: download length");
    assert!(
        got == portico_tests::pattern(7, BIG),
        "{bin}: download bytes"
    );
    let up = certs.path("up.bin");
    let sent = portico_tests::pattern(9, BIG);
    std::fs::write(&up, &sent).expect("upload file");
    let (ok, body, err) = curl(
        bin,
        &[
            "--proxy",
            &proxy,
            "--proxy-cacert",
            &certs.p("ca.pem"),
            "--data-binary",
            &format!("@{}", up.display()),
            "-H",
            "Expect:",
            &url,
        ],
    );
    assert!(ok, "{bin}: upload: {err}");
    assert_eq!(
        body,
        format!("{BIG} {:x}", portico_tests::digest(&sent)),
        "{bin}: upload"
    );
}

/// A TLS client over `s` trusting `ca`, offering only `version`.
fn tls_client_version(
    ca: &Path,
    s: std::net::TcpStream,
    version: &'static rustls::SupportedProtocolVersion,
) -> rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(ca).expect("CA file") {
        roots.add(c.expect("CA")).expect("CA added");
    }
    #[allow(deprecated)]
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[version])
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).expect("client");
    rustls::StreamOwned::new(conn, s)
}

/// A client that offers TLS 1.2 alone, and one that offers TLS 1.3 alone,
/// each get the status page over HTTPS on that version.
fn tls_1_2_and_1_3(bin: Bin) {
    let certs = Certs::new();
    let (_p, ports) = start_on_free_ports(bin, 1, StartOptions::default(), |ports| {
        format!(
            "{}{}",
            config_head("", ""),
            service("st", "status", ports[0], &certs.tls(""))
        )
    });
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let s = connect(portico_tests::local(ports[0])).expect("connect");
        s.set_read_timeout(Some(LIMIT)).expect("timeout");
        let mut t = tls_client_version(&certs.path("ca.pem"), s, version);
        t.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap_or_else(|e| panic!("{bin}: {:?}: {e}", version.version));
        let mut got = Vec::new();
        let mut b = [0u8; 4096];
        // To the end: the close, with or without a close_notify.
        while let Ok(n) = t.read(&mut b) {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&b[..n]);
        }
        assert_eq!(
            t.conn.protocol_version(),
            Some(version.version),
            "{bin}: the version spoken"
        );
        let got = String::from_utf8_lossy(&got);
        assert!(
            got.starts_with("HTTP/1.1 200") && got.contains("portico_connections_total"),
            "{bin}: {:?}: {got}",
            version.version
        );
    }
}

/// A client certificate from a CA other than `client_ca` is refused like
/// none at all: nothing is served.
fn client_certificate_of_another_ca(bin: Bin) {
    let certs = Certs::new();
    let stranger = Certs::new();
    let o = origin();
    let (_p, ports) = start_on_free_ports(bin, 1, StartOptions::default(), |ports| {
        client_ca_config(&certs, ports[0], ", client_cert_user = true")
    });
    let (ok, body, _) = curl(
        bin,
        &[
            "--proxy",
            &format!("https://127.0.0.1:{}", ports[0]),
            "--proxy-cacert",
            &certs.p("ca.pem"),
            "--proxy-cert",
            &stranger.p("client.pem"),
            "--proxy-key",
            &stranger.p("client.key"),
            &format!("http://{}/", o.addr()),
        ],
    );
    assert!(
        !ok && body.is_empty(),
        "{bin}: served with another CA's client certificate: {body}"
    );
}

/// Reads one response (head and a Content-Length body) from `t`.
fn response(t: &mut impl Read) -> std::io::Result<(String, Vec<u8>)> {
    let mut got = Vec::new();
    let mut b = [0u8; 16384];
    let head_end = loop {
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match t.read(&mut b)? {
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            n => got.extend_from_slice(&b[..n]),
        }
    };
    let head = String::from_utf8_lossy(&got[..head_end]).to_string();
    let len: usize = head
        .to_ascii_lowercase()
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while got.len() < head_end + len {
        match t.read(&mut b)? {
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            n => got.extend_from_slice(&b[..n]),
        }
    }
    Ok((head, got.split_off(head_end)))
}

/// A CONNECT tunnel over TLS carries megabytes each way, whole: bytes of a
/// TLS connection are never spliced (a spliced tunnel would hand the
/// client the origin's bytes outside TLS, which its TLS layer refuses).
fn megabytes_through_a_tls_tunnel(bin: Bin) {
    let certs = Certs::new();
    let o = big_origin();
    let (_p, ports) = start_on_free_ports(bin, 1, StartOptions::default(), |ports| {
        format!(
            "{}{}\n[[rule]]\naction = \"allow\"\n",
            config_head("", ""),
            service(
                "web",
                "http",
                ports[0],
                &format!("connect_ports = [{}]\n{}", o.addr().port(), certs.tls(""))
            )
        )
    });
    let sent = portico_tests::pattern(9, BIG);
    let tunnel = |request: &[u8]| -> std::io::Result<(String, Vec<u8>)> {
        let s = connect(portico_tests::local(ports[0]))?;
        s.set_read_timeout(Some(LIMIT))?;
        let mut t = tls_client(&certs.path("ca.pem"), s);
        let a = o.addr();
        write!(t, "CONNECT {a} HTTP/1.1\r\nHost: {a}\r\n\r\n")?;
        let (head, _) = response(&mut t)?;
        assert!(head.starts_with("HTTP/1.1 200"), "{bin}: CONNECT: {head}");
        t.write_all(request)?;
        response(&mut t)
    };
    let (head, body) = tunnel(b"GET / HTTP/1.1\r\nHost: o\r\n\r\n")
        .unwrap_or_else(|e| panic!("{bin}: download through the tunnel: {e}"));
    assert!(head.starts_with("HTTP/1.1 200"), "{bin}: {head}");
    assert_eq!(body.len(), BIG, "{bin}: download length");
    assert!(
        body == portico_tests::pattern(7, BIG),
        "{bin}: download bytes"
    );
    let mut post =
        format!("POST / HTTP/1.1\r\nHost: o\r\nContent-Length: {BIG}\r\n\r\n").into_bytes();
    post.extend_from_slice(&sent);
    let (_, body) =
        tunnel(&post).unwrap_or_else(|e| panic!("{bin}: upload through the tunnel: {e}"));
    assert_eq!(
        String::from_utf8_lossy(&body),
        format!("{BIG} {:x}", portico_tests::digest(&sent)),
        "{bin}: upload"
    );
}
