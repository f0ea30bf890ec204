//! The SOCKS service (`kind = "socks"`: SOCKS 4, 4a and 5 on one port),
//! end to end through both binaries: curl in every SOCKS mode, ssh through
//! `nc -X 5`, and a raw client for the corners of the protocol (reply codes,
//! bound address, split and coalesced handshakes, timeouts, limits, rules).
//!
//! Tools the cases need beyond the harness: `curl` (package curl), `nc`
//! with `-X` (netcat-openbsd), `ssh`/`ssh-keygen` (openssh-client) and
//! `sshd` (openssh-server). A case whose tool is missing fails and names the
//! package.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{
    IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream,
};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use portico_tests::logline::AccessLine;
use portico_tests::{
    both, config_head, connect, connect_from, curl_command, digest, echo_check, expect_closed,
    free_port, listen_overflows, local, pattern, poll_until, read_digest_reply, read_outcome,
    recv_all, require, run_tool, send_all, send_stream, service, spawn_bounded, start_on_free_port,
    Acceptor, Behaviour, Bin, LineLog, Portico, ReadOutcome, StartOptions, TempDir, TestServer,
    ToolOutput, ALICE, CLIENT_SEED, IO_TIMEOUT, PROMPTLY, SERVER_SEED,
};

const MIB: u64 = 1024 * 1024;
/// How long one run of curl, ssh or ssh-keygen may take.
const TOOL_LIMIT: Duration = Duration::from_secs(90);
/// How long a 20 MB transfer may take (a debug build on a busy machine).
const TRANSFER_LIMIT: Duration = Duration::from_secs(180);
/// With `handshake_timeout = "1s"`: the bound within which a stalled
/// handshake must have been closed (generous; never a speed check).
const STALL_BOUND: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------
// The proxy under test.

/// A configuration with one `socks` service on 127.0.0.1:`port`, the user
/// alice (password `secret`), `limits` lines in `[limits]` and `extra`
/// (users, rules) at the end.
fn socks_config(port: u16, auth: bool, limits: &str, extra: &str) -> String {
    format!(
        "{}\n{ALICE}{}{extra}\n",
        config_head(limits, ""),
        service("socks", "socks", port, &format!("auth = {auth}"))
    )
}

/// Starts `bin` with [`socks_config`] on a fresh port; returns the proxy and
/// its address.
fn start_socks(bin: Bin, auth: bool, limits: &str, extra: &str) -> (Portico, SocketAddr) {
    start_on_free_port(bin, StartOptions::default(), |port| {
        socks_config(port, auth, limits, extra)
    })
}

/// The access-log line of the client connection from `client`, waiting at
/// most [`PROMPTLY`].
fn access_of(p: &Portico, client: SocketAddr) -> AccessLine {
    p.access_of("socks", client, PROMPTLY)
}

/// The first access-log line of the socks service whose target is `target`
/// (for clients whose local port we do not know, such as curl).
fn access_for_target(p: &Portico, target: &str) -> AccessLine {
    p.expect_access("socks", &format!("target {target:?}"), PROMPTLY, |a| {
        a.target == target
    })
}

fn assert_status(bin: Bin, line: &AccessLine, status: &str, what: &str) {
    assert_eq!(
        line.status, status,
        "{bin}: {what}: outcome word of the access-log line {line:?}"
    );
}

/// Checks the byte counts of an access-log line: `up` is exactly the
/// payload the client sent through the tunnel (its handshake is not
/// counted); `down` is the payload relayed to the client, to which Portico
/// today adds the `replies` handshake bytes it wrote itself — either reading
/// is accepted, since SPEC.md does not say which.
fn assert_counts(bin: Bin, l: &AccessLine, up: u64, down: u64, replies: u64) {
    assert_eq!(
        l.up, up,
        "{bin}: up= (payload bytes to the destination) in {l:?}"
    );
    assert!(
        l.down == down || l.down == down + replies,
        "{bin}: down= in {l:?}: want {down} relayed bytes (or {} with the {replies} handshake \
         reply bytes)",
        down + replies
    );
}

// ---------------------------------------------------------------------------
// A raw SOCKS client.

fn dial(bin: Bin, addr: SocketAddr) -> TcpStream {
    connect(addr).unwrap_or_else(|e| panic!("{bin}: connect to the SOCKS port {addr}: {e}"))
}

fn me(s: &TcpStream) -> SocketAddr {
    s.local_addr().expect("local_addr of a connected socket")
}

/// Reads exactly `n` bytes (bounded by the socket's read timeout).
fn read_n(bin: Bin, s: &mut TcpStream, n: usize, what: &str) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    let mut got = 0;
    while got < n {
        match s.read(&mut buf[got..]) {
            Ok(0) => panic!(
                "{bin}: {what}: the proxy closed after {got} of {n} bytes: {:02x?}",
                &buf[..got]
            ),
            Ok(k) => got += k,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => panic!(
                "{bin}: {what}: reading {n} bytes (after {got}: {:02x?}): {e}",
                &buf[..got]
            ),
        }
    }
    buf
}

/// The proxy closes `c` now, sending nothing more, and logs it with
/// `status`; returns the access-log line.
fn closed_as(bin: Bin, p: &Portico, c: &mut TcpStream, status: &str, what: &str) -> AccessLine {
    expect_closed(bin, c, what);
    let l = access_of(p, me(c));
    assert_status(bin, &l, status, what);
    l
}

/// Nothing may come back for a little while (the handshake is incomplete).
fn expect_silence(bin: Bin, s: &mut TcpStream, wait: Duration, what: &str) {
    match read_outcome(s, wait) {
        ReadOutcome::TimedOut => {}
        other => panic!("{bin}: {what}: expected no answer yet, got {other:?}"),
    }
}

/// A SOCKS5 destination as the client writes it.
enum Dest<'a> {
    Ip(SocketAddr),
    Name(&'a str, u16),
    /// An arbitrary address type and the bytes after it (address and port).
    Raw(u8, &'a [u8]),
}

fn v5_request(cmd: u8, dest: &Dest) -> Vec<u8> {
    let mut r = vec![5, cmd, 0];
    match dest {
        Dest::Ip(SocketAddr::V4(a)) => {
            r.push(1);
            r.extend_from_slice(&a.ip().octets());
            r.extend_from_slice(&a.port().to_be_bytes());
        }
        Dest::Ip(SocketAddr::V6(a)) => {
            r.push(4);
            r.extend_from_slice(&a.ip().octets());
            r.extend_from_slice(&a.port().to_be_bytes());
        }
        Dest::Name(host, port) => {
            r.push(3);
            r.push(u8::try_from(host.len()).expect("a host name under 256 bytes"));
            r.extend_from_slice(host.as_bytes());
            r.extend_from_slice(&port.to_be_bytes());
        }
        Dest::Raw(atyp, rest) => {
            r.push(*atyp);
            r.extend_from_slice(rest);
        }
    }
    r
}

/// RFC 1929 username/password request.
fn v5_userpass(user: &[u8], password: &[u8]) -> Vec<u8> {
    let mut r = vec![1, u8::try_from(user.len()).expect("a short user name")];
    r.extend_from_slice(user);
    r.push(u8::try_from(password.len()).expect("a short password"));
    r.extend_from_slice(password);
    r
}

/// A SOCKS5 reply: its code and, for address types 1 and 4, the bound
/// address.
#[derive(Debug)]
struct V5Reply {
    code: u8,
    bound: Option<SocketAddr>,
}

fn read_v5_reply(bin: Bin, s: &mut TcpStream, what: &str) -> V5Reply {
    let head = read_n(bin, s, 4, what);
    assert_eq!(
        (head[0], head[2]),
        (5, 0),
        "{bin}: {what}: a SOCKS5 reply starts 05 REP 00 ATYP; got {head:02x?}"
    );
    let bound = match head[3] {
        1 => {
            let a = read_n(bin, s, 6, what);
            Some(SocketAddr::new(
                Ipv4Addr::new(a[0], a[1], a[2], a[3]).into(),
                u16::from_be_bytes([a[4], a[5]]),
            ))
        }
        4 => {
            let a = read_n(bin, s, 18, what);
            let mut o = [0u8; 16];
            o.copy_from_slice(&a[..16]);
            Some(SocketAddr::new(
                Ipv6Addr::from(o).into(),
                u16::from_be_bytes([a[16], a[17]]),
            ))
        }
        3 => {
            let n = read_n(bin, s, 1, what)[0] as usize;
            read_n(bin, s, n + 2, what);
            None
        }
        other => panic!("{bin}: {what}: reply with address type {other}: {head:02x?}"),
    };
    V5Reply {
        code: head[1],
        bound,
    }
}

/// Method negotiation offering `methods`; returns the chosen method.
fn v5_greet(bin: Bin, s: &mut TcpStream, methods: &[u8], what: &str) -> u8 {
    let mut g = vec![5, methods.len() as u8];
    g.extend_from_slice(methods);
    send_all(bin, s, &g, what);
    let r = read_n(bin, s, 2, what);
    assert_eq!(
        r[0], 5,
        "{bin}: {what}: method reply must start with 05: {r:02x?}"
    );
    r[1]
}

/// A SOCKS5 CONNECT without authentication; returns the reply.
fn v5_connect(bin: Bin, s: &mut TcpStream, dest: &Dest, what: &str) -> V5Reply {
    let m = v5_greet(bin, s, &[0], what);
    assert_eq!(m, 0, "{bin}: {what}: auth off must choose no-auth (00)");
    send_all(bin, s, &v5_request(1, dest), what);
    read_v5_reply(bin, s, what)
}

/// A SOCKS5 CONNECT as `user`/`password`; returns the reply.
fn v5_connect_as(
    bin: Bin,
    s: &mut TcpStream,
    user: &str,
    password: &str,
    dest: &Dest,
    what: &str,
) -> V5Reply {
    let m = v5_greet(bin, s, &[0, 2], what);
    assert_eq!(
        m, 2,
        "{bin}: {what}: auth on must choose username/password (02)"
    );
    send_all(
        bin,
        s,
        &v5_userpass(user.as_bytes(), password.as_bytes()),
        what,
    );
    let a = read_n(bin, s, 2, what);
    assert_eq!(
        a,
        [1, 0],
        "{bin}: {what}: {user}/{password} must authenticate"
    );
    send_all(bin, s, &v5_request(1, dest), what);
    read_v5_reply(bin, s, what)
}

/// A SOCKS4 request; `host` makes it SOCKS4a (DSTIP 0.0.0.1).
fn v4_request(cmd: u8, dest: SocketAddrV4, userid: &[u8], host: Option<&str>) -> Vec<u8> {
    let mut r = vec![4, cmd];
    r.extend_from_slice(&dest.port().to_be_bytes());
    match host {
        Some(_) => r.extend_from_slice(&[0, 0, 0, 1]),
        None => r.extend_from_slice(&dest.ip().octets()),
    }
    r.extend_from_slice(userid);
    r.push(0);
    if let Some(h) = host {
        r.extend_from_slice(h.as_bytes());
        r.push(0);
    }
    r
}

/// Sends the SOCKS4 `request` on `s`; returns the reply: (CD,
/// DSTPORT/DSTIP).
fn v4_exchange(bin: Bin, s: &mut TcpStream, request: &[u8], what: &str) -> (u8, SocketAddrV4) {
    send_all(bin, s, request, what);
    read_v4_reply(bin, s, what)
}

/// A SOCKS4 reply: (CD, DSTPORT/DSTIP).
fn read_v4_reply(bin: Bin, s: &mut TcpStream, what: &str) -> (u8, SocketAddrV4) {
    let r = read_n(bin, s, 8, what);
    assert_eq!(
        r[0], 0,
        "{bin}: {what}: a SOCKS4 reply starts with VN 00: {r:02x?}"
    );
    let addr = SocketAddrV4::new(
        Ipv4Addr::new(r[4], r[5], r[6], r[7]),
        u16::from_be_bytes([r[2], r[3]]),
    );
    (r[1], addr)
}

fn v4_addr(a: SocketAddr) -> SocketAddrV4 {
    match a {
        SocketAddr::V4(a) => a,
        SocketAddr::V6(a) => panic!("{a} is not IPv4"),
    }
}

/// Writes `msg` one byte per write. After each byte but the last nothing
/// may come back (checked for a moment, which also keeps the writes in
/// separate segments).
fn dribble(bin: Bin, s: &mut TcpStream, msg: &[u8], what: &str) {
    for (i, b) in msg.iter().enumerate() {
        s.write_all(std::slice::from_ref(b))
            .unwrap_or_else(|e| panic!("{bin}: {what}: writing byte {i}: {e}"));
        if i + 1 < msg.len() {
            expect_silence(
                bin,
                s,
                Duration::from_millis(15),
                &format!("{what}, after byte {i} of {}", msg.len()),
            );
        }
    }
}

// ---------------------------------------------------------------------------
// A tiny HTTP/1.1 origin for curl.

const HELLO: &[u8] = b"hello through portico's SOCKS service\n";
const BIG: u64 = 20 * MIB;

/// Serves `GET /hello` (a short body) and `GET /big` ([`BIG`] pattern bytes
/// of [`SERVER_SEED`]), one request per connection, then closes.
struct HttpOrigin {
    addr: SocketAddr,
    requests: Arc<AtomicU64>,
    _acceptor: Acceptor,
}

impl HttpOrigin {
    fn start() -> HttpOrigin {
        let requests = Arc::new(AtomicU64::new(0));
        let rq = requests.clone();
        let acceptor = Acceptor::start(IpAddr::V4(Ipv4Addr::LOCALHOST), "origin", move |s, _| {
            let _ = serve_http(s, &rq);
        });
        HttpOrigin {
            addr: acceptor.addr(),
            requests,
            _acceptor: acceptor,
        }
    }

    fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }
}

fn serve_http(mut s: TcpStream, requests: &AtomicU64) -> io::Result<()> {
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf)?;
        if n == 0 || head.len() > 64 * 1024 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    requests.fetch_add(1, Ordering::SeqCst);
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let path = line.split(|&b| b == b' ').nth(1).unwrap_or_default();
    match path {
        b"/hello" => {
            let h = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n",
                HELLO.len()
            );
            s.write_all(h.as_bytes())?;
            s.write_all(HELLO)?;
        }
        b"/big" => {
            let h = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\
                 Content-Length: {BIG}\r\nConnection: close\r\n\r\n"
            );
            s.write_all(h.as_bytes())?;
            send_stream(&mut s, BIG, SERVER_SEED, None)?;
        }
        _ => s.write_all(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )?,
    }
    s.shutdown(Shutdown::Write)?;
    // Drain until the client closes, so that closing never resets.
    let _ = recv_all(&mut s);
    Ok(())
}

// ---------------------------------------------------------------------------
// External tools, run with a bounded wait.

/// `curl -q -sS --max-time 60 MODE PROXY [ARGS…] URL`, with a bounded wait.
fn curl(bin: Bin, mode: &str, proxy: SocketAddr, args: &[&str], url: &str) -> ToolOutput {
    let mut cmd = curl_command(60);
    cmd.arg(mode).arg(proxy.to_string()).args(args).arg(url);
    run_tool(bin, cmd, None, TOOL_LIMIT)
}

// ---------------------------------------------------------------------------
// The cases.

both!(
    curl_socks4,
    curl_socks4a,
    curl_socks5,
    curl_socks5_hostname,
    curl_socks5_auth,
    curl_socks5_hostname_auth,
    curl_socks5_wrong_password,
    curl_socks5_no_credentials,
    socks4_userid_auth,
    download_20mb_socks5,
    curl_download_20mb,
    reply_refused,
    reply_name_not_resolved,
    reply_bind_unsupported,
    reply_udp_associate_unsupported,
    reply_address_type_unsupported,
    reply_connect_timeout,
    auth_on_only_noauth_offered,
    socks4_refused,
    bound_address_socks5,
    bound_address_socks4,
    connect_ipv6,
    one_byte_at_a_time_socks5,
    one_byte_at_a_time_socks4a,
    coalesced_socks5,
    coalesced_socks5_auth_name,
    coalesced_socks4a,
    stalled_handshake_closes,
    stalled_after_login_is_logged_with_the_user,
    trickled_handshake_closes,
    bad_first_byte_closes,
    nul_in_username_never_authenticates,
    rules_deny,
    rules_on_user,
    rules_deny_loopback_via_unspecified_address,
    max_connections_limit,
    max_per_client_limit,
    bound_address_with_outgoing,
    socks4_bind_unsupported,
    oversized_fields_close,
    coalesced_large_payload_while_connecting,
    ssh_through_nc,
);

/// curl through the proxy in `mode` to `http://HOST:PORT/hello`; checks the
/// body, that the origin saw one request, and the access-log line.
fn curl_mode(bin: Bin, mode: &str, host: &str, method: &str) {
    let origin = HttpOrigin::start();
    let (p, addr) = start_socks(bin, false, "", "");
    let target = format!("{host}:{}", origin.addr.port());
    let out = curl(bin, mode, addr, &[], &format!("http://{target}/hello"));
    assert!(
        out.status.success(),
        "{bin}: curl {mode} through the proxy failed: {}",
        out.text()
    );
    assert_eq!(
        out.stdout,
        HELLO,
        "{bin}: curl {mode}: body; {}",
        out.text()
    );
    assert_eq!(origin.requests(), 1, "{bin}: requests the origin served");
    let l = access_for_target(&p, &target);
    assert_status(bin, &l, "ok", &format!("curl {mode}"));
    assert_eq!(l.method, method, "{bin}: curl {mode}: method in {l:?}");
    assert_eq!(l.user, "-", "{bin}: curl {mode}: user in {l:?} (auth off)");
    assert_eq!(
        l.destination,
        origin.addr.to_string(),
        "{bin}: curl {mode}: destination in {l:?}"
    );
    assert!(
        l.down >= HELLO.len() as u64 && l.up > 0,
        "{bin}: curl {mode}: byte counts in {l:?}"
    );
}

fn curl_socks4(bin: Bin) {
    curl_mode(bin, "--socks4", "127.0.0.1", "SOCKS4");
}

fn curl_socks4a(bin: Bin) {
    curl_mode(bin, "--socks4a", "localhost", "SOCKS4");
}

fn curl_socks5(bin: Bin) {
    curl_mode(bin, "--socks5", "127.0.0.1", "SOCKS5");
}

fn curl_socks5_hostname(bin: Bin) {
    curl_mode(bin, "--socks5-hostname", "localhost", "SOCKS5");
}

fn curl_auth_ok(bin: Bin, mode: &str, host: &str) {
    let origin = HttpOrigin::start();
    let (p, addr) = start_socks(bin, true, "", "");
    let target = format!("{host}:{}", origin.addr.port());
    let out = curl(
        bin,
        mode,
        addr,
        &["--proxy-user", "alice:secret"],
        &format!("http://{target}/hello"),
    );
    assert!(
        out.status.success(),
        "{bin}: curl {mode} --proxy-user alice:secret with auth on failed: {}",
        out.text()
    );
    assert_eq!(out.stdout, HELLO, "{bin}: curl {mode}: body");
    let l = access_for_target(&p, &target);
    assert_status(bin, &l, "ok", &format!("curl {mode} as alice"));
    assert_eq!(l.user, "alice", "{bin}: user in {l:?}");
    assert_eq!(l.method, "SOCKS5", "{bin}: method in {l:?}");
    assert_eq!(l.destination, origin.addr.to_string(), "{bin}: {l:?}");
}

fn curl_socks5_auth(bin: Bin) {
    curl_auth_ok(bin, "--socks5", "127.0.0.1");
}

fn curl_socks5_hostname_auth(bin: Bin) {
    curl_auth_ok(bin, "--socks5-hostname", "localhost");
}

/// curl with `args` against an auth-on proxy must fail, the origin must see
/// nothing, and the proxy must log `status`.
fn curl_auth_refused(bin: Bin, args: &[&str], status: &str) {
    let origin = HttpOrigin::start();
    let (p, addr) = start_socks(bin, true, "", "");
    let url = format!("http://127.0.0.1:{}/hello", origin.addr.port());
    let out = curl(bin, "--socks5", addr, args, &url);
    assert!(
        !out.status.success(),
        "{bin}: curl --socks5 {args:?} must fail with auth on; {}",
        out.text()
    );
    assert!(
        out.stdout.is_empty(),
        "{bin}: no body may arrive; {}",
        out.text()
    );
    let l = p.expect_access("socks", "the refused curl", PROMPTLY, |_| true);
    assert_status(bin, &l, status, &format!("curl --socks5 {args:?}"));
    assert_eq!(l.method, "SOCKS5", "{bin}: method in {l:?}");
    assert_eq!(
        origin.requests(),
        0,
        "{bin}: the origin must see no request"
    );
}

fn curl_socks5_wrong_password(bin: Bin) {
    curl_auth_refused(bin, &["--proxy-user", "alice:wrong"], "auth-failed");
}

fn curl_socks5_no_credentials(bin: Bin) {
    curl_auth_refused(bin, &[], "auth-required");
}

/// SOCKS4 and 4a with auth on: USERID `name:password` (curl would send only
/// the name, so this is a raw client).
fn socks4_userid_auth(bin: Bin) {
    let server = TestServer::start(Behaviour::Echo);
    let dest = v4_addr(server.addr());
    let (p, addr) = start_socks(bin, true, "", "");

    let mut c = dial(bin, addr);
    let (code, _) = v4_exchange(
        bin,
        &mut c,
        &v4_request(1, dest, b"alice:secret", None),
        "SOCKS4 as alice:secret",
    );
    assert_eq!(
        code, 0x5A,
        "{bin}: SOCKS4 USERID alice:secret must be granted"
    );
    echo_check(&mut c, b"socks4 as alice")
        .unwrap_or_else(|e| panic!("{bin}: the SOCKS4 tunnel as alice: {e}"));
    let who = me(&c);
    drop(c);
    let l = access_of(&p, who);
    assert_status(bin, &l, "ok", "SOCKS4 as alice:secret");
    assert_eq!(l.user, "alice", "{bin}: user in {l:?}");
    assert_eq!(l.method, "SOCKS4", "{bin}: method in {l:?}");

    let mut c = dial(bin, addr);
    let (code, _) = v4_exchange(
        bin,
        &mut c,
        &v4_request(1, dest, b"alice:secret", Some("localhost")),
        "SOCKS4a as alice:secret",
    );
    assert_eq!(
        code, 0x5A,
        "{bin}: SOCKS4a USERID alice:secret must be granted"
    );
    echo_check(&mut c, b"socks4a as alice")
        .unwrap_or_else(|e| panic!("{bin}: the SOCKS4a tunnel as alice: {e}"));
    drop(c);

    let accepted = server.accepted();
    for userid in [
        &b"alice:wrong"[..],
        b"alice",
        b"alice:",
        b"bob:secret",
        b"",
        b":secret",
    ] {
        let what = format!("SOCKS4 USERID {:?}", String::from_utf8_lossy(userid));
        let mut c = dial(bin, addr);
        let (code, _) = v4_exchange(bin, &mut c, &v4_request(1, dest, userid, None), &what);
        assert_eq!(code, 0x5B, "{bin}: {what} must be refused (5B)");
        closed_as(bin, &p, &mut c, "auth-failed", &what);
    }
    assert_eq!(
        server.accepted(),
        accepted,
        "{bin}: refused SOCKS4 clients must not reach the destination"
    );
}

fn download_20mb_socks5(bin: Bin) {
    let server = TestServer::start(Behaviour::Source { len: BIG });
    let (p, addr) = start_socks(bin, false, "", "");
    let mut c = dial(bin, addr);
    let r = v5_connect(
        bin,
        &mut c,
        &Dest::Ip(server.addr()),
        "SOCKS5 to the source",
    );
    assert_eq!(r.code, 0, "{bin}: CONNECT to the source: {r:?}");
    let who = me(&c);
    let started = Instant::now();
    let got = spawn_bounded(move || recv_all(&mut c))
        .join(TRANSFER_LIMIT)
        .unwrap_or_else(|e| panic!("{bin}: receiving 20 MB: {e}"))
        .unwrap_or_else(|e| panic!("{bin}: receiving 20 MB through SOCKS5: {e}"));
    let rep = server.report_ok(bin);
    assert_eq!(got.0, BIG, "{bin}: bytes that reached the client");
    assert_eq!(
        got.1, rep.sent_digest,
        "{bin}: the 20 MB that reached the client differ from those the server sent"
    );
    eprintln!(
        "{bin}: 20 MB down through SOCKS5 in {:?}",
        started.elapsed()
    );
    let l = access_of(&p, who);
    assert_status(bin, &l, "ok", "20 MB download");
    assert_counts(bin, &l, 0, BIG, 2 + 10);
}

fn curl_download_20mb(bin: Bin) {
    let origin = HttpOrigin::start();
    let (_p, addr) = start_socks(bin, false, "", "");
    let dir = TempDir::new();
    let file = dir.path().join("big");
    let url = format!("http://localhost:{}/big", origin.addr.port());
    let out = curl(
        bin,
        "--socks5-hostname",
        addr,
        &["-o", file.to_str().expect("a UTF-8 temp path")],
        &url,
    );
    assert!(
        out.status.success(),
        "{bin}: curl --socks5-hostname of 20 MB failed: {}",
        out.text()
    );
    let body = std::fs::read(&file).unwrap_or_else(|e| panic!("{bin}: reading {file:?}: {e}"));
    assert_eq!(body.len() as u64, BIG, "{bin}: size of the 20 MB download");
    let want = send_stream(&mut io::sink(), BIG, SERVER_SEED, None).expect("a sink");
    assert_eq!(
        digest(&body),
        want,
        "{bin}: the 20 MB curl downloaded through SOCKS5 differ from those the origin sent"
    );
}

/// A SOCKS5 CONNECT (no auth) to `dest` must be answered `code` and closed;
/// returns the access-log line.
fn v5_expect_code(bin: Bin, p: &Portico, addr: SocketAddr, dest: &Dest, code: u8) -> AccessLine {
    let mut c = dial(bin, addr);
    let what = format!("SOCKS5 CONNECT expecting reply {code:02x}");
    let r = v5_connect(bin, &mut c, dest, &what);
    assert_eq!(r.code, code, "{bin}: {what}: {r:?}");
    expect_closed(bin, &mut c, &what);
    access_of(p, me(&c))
}

fn reply_refused(bin: Bin) {
    let (p, addr) = start_socks(bin, false, "", "");
    let closed = local(free_port());
    let l = v5_expect_code(bin, &p, addr, &Dest::Ip(closed), 0x05);
    assert_status(bin, &l, "refused", "CONNECT to a closed port");
    assert_eq!(l.target, closed.to_string(), "{bin}: target in {l:?}");
    let l = v5_expect_code(bin, &p, addr, &Dest::Name("localhost", closed.port()), 0x05);
    assert_status(bin, &l, "refused", "CONNECT to localhost's closed port");
}

fn reply_name_not_resolved(bin: Bin) {
    let (p, addr) = start_socks(bin, false, "", "");
    let l = v5_expect_code(bin, &p, addr, &Dest::Name("nonexistent.invalid", 80), 0x04);
    assert_status(bin, &l, "unresolved", "CONNECT to nonexistent.invalid");
    assert_eq!(l.target, "nonexistent.invalid:80", "{bin}: target in {l:?}");
}

/// A request with command `cmd`, left out of the service's `commands`,
/// must be answered 07 and closed, without a connection to the destination.
fn unsupported_command(bin: Bin, cmd: u8, name: &str) {
    let server = TestServer::start(Behaviour::Echo);
    let (p, addr) = start_socks(bin, false, "", "commands = [\"connect\"]");
    let mut c = dial(bin, addr);
    assert_eq!(v5_greet(bin, &mut c, &[0], name), 0);
    send_all(
        bin,
        &mut c,
        &v5_request(cmd, &Dest::Ip(server.addr())),
        name,
    );
    let r = read_v5_reply(bin, &mut c, name);
    assert_eq!(r.code, 0x07, "{bin}: {name} must be answered 07: {r:?}");
    closed_as(bin, &p, &mut c, "unsupported", name);
    assert_eq!(
        server.accepted(),
        0,
        "{bin}: {name} must not connect anywhere"
    );
}

fn reply_bind_unsupported(bin: Bin) {
    unsupported_command(bin, 2, "BIND");
}

fn reply_udp_associate_unsupported(bin: Bin) {
    unsupported_command(bin, 3, "UDP ASSOCIATE");
}

fn reply_address_type_unsupported(bin: Bin) {
    let (p, addr) = start_socks(bin, false, "", "");
    let l = v5_expect_code(bin, &p, addr, &Dest::Raw(9, &[127, 0, 0, 1, 0, 80]), 0x08);
    assert_status(bin, &l, "unsupported", "address type 9");
}

fn reply_connect_timeout(bin: Bin) {
    // A destination whose accept queue is full: the proxy's SYN is dropped.
    let server = TestServer::start_held(Behaviour::Echo);
    server
        .fill_backlog()
        .unwrap_or_else(|e| panic!("{bin}: filling the destination's accept queue: {e}"));
    let (p, addr) = start_socks(bin, false, "connect_timeout = \"1s\"", "");
    let mut c = dial(bin, addr);
    c.set_read_timeout(Some(STALL_BOUND))
        .expect("set_read_timeout");
    let r = v5_connect(
        bin,
        &mut c,
        &Dest::Ip(server.addr()),
        "CONNECT that cannot complete",
    );
    assert_eq!(
        r.code, 0x06,
        "{bin}: a connect over connect_timeout must be answered 06: {r:?}"
    );
    closed_as(
        bin,
        &p,
        &mut c,
        "timeout",
        "connect timeout (after reply 06)",
    );
    server.release();
}

fn auth_on_only_noauth_offered(bin: Bin) {
    let (p, addr) = start_socks(bin, true, "", "");
    let mut c = dial(bin, addr);
    let m = v5_greet(bin, &mut c, &[0], "offering only no-auth with auth on");
    assert_eq!(
        m, 0xFF,
        "{bin}: with auth on and only no-auth offered the method must be FF"
    );
    closed_as(bin, &p, &mut c, "auth-required", "after 05 FF");

    // Offering methods the proxy does not know (GSSAPI 01, private 80) gets
    // FF as well.
    let mut c = dial(bin, addr);
    let m = v5_greet(bin, &mut c, &[1, 0x80], "offering GSSAPI and 80");
    assert_eq!(m, 0xFF, "{bin}: no acceptable method must give FF");
    expect_closed(bin, &mut c, "after 05 FF");
}

fn socks4_refused(bin: Bin) {
    let (p, addr) = start_socks(bin, false, "", "");
    let closed = local(free_port());
    for host in [None, Some("localhost")] {
        let what = format!(
            "SOCKS4{} to a closed port",
            if host.is_some() { "a" } else { "" }
        );
        let mut c = dial(bin, addr);
        let (code, _) = v4_exchange(
            bin,
            &mut c,
            &v4_request(1, v4_addr(closed), b"", host),
            &what,
        );
        assert_eq!(code, 0x5B, "{bin}: {what} must be answered 5B");
        let l = closed_as(bin, &p, &mut c, "refused", &what);
        assert_eq!(l.method, "SOCKS4", "{bin}: method in {l:?}");
    }
}

/// The success reply's BND.ADDR:BND.PORT is the local address of the
/// proxy's outgoing connection, which the destination saw as its peer.
fn bound_address_socks5(bin: Bin) {
    let server = TestServer::start(Behaviour::Echo);
    let (p, addr) = start_socks(bin, false, "", "");
    for dest in [
        Dest::Ip(server.addr()),
        Dest::Name("localhost", server.addr().port()),
    ] {
        let mut c = dial(bin, addr);
        let r = v5_connect(bin, &mut c, &dest, "SOCKS5 CONNECT");
        assert_eq!(r.code, 0, "{bin}: CONNECT to the echo server: {r:?}");
        echo_check(&mut c, b"where am I").unwrap_or_else(|e| panic!("{bin}: tunnel: {e}"));
        let who = me(&c);
        drop(c);
        let rep = server.report_ok(bin);
        assert_eq!(
            r.bound,
            Some(rep.peer),
            "{bin}: BND.ADDR/BND.PORT must be the outgoing connection's local address \
             (the destination saw {})",
            rep.peer
        );
        let l = access_of(&p, who);
        assert_status(bin, &l, "ok", "SOCKS5 CONNECT");
        assert_eq!(l.destination, server.addr().to_string(), "{bin}: {l:?}");
        assert_counts(bin, &l, 10, 10, 2 + 10);
    }
}

fn bound_address_socks4(bin: Bin) {
    let server = TestServer::start(Behaviour::Echo);
    let (p, addr) = start_socks(bin, false, "", "");
    let mut c = dial(bin, addr);
    let (code, bound) = v4_exchange(
        bin,
        &mut c,
        &v4_request(1, v4_addr(server.addr()), b"someone", None),
        "SOCKS4",
    );
    assert_eq!(code, 0x5A, "{bin}: SOCKS4 CONNECT must be granted");
    echo_check(&mut c, b"socks4").unwrap_or_else(|e| panic!("{bin}: tunnel: {e}"));
    let who = me(&c);
    drop(c);
    let rep = server.report_ok(bin);
    assert_eq!(
        SocketAddr::V4(bound),
        rep.peer,
        "{bin}: the SOCKS4 reply's DSTIP/DSTPORT must be the outgoing local address"
    );
    let l = access_of(&p, who);
    assert_status(bin, &l, "ok", "SOCKS4 CONNECT");
    assert_eq!(l.method, "SOCKS4", "{bin}: {l:?}");
    assert_eq!(l.target, server.addr().to_string(), "{bin}: {l:?}");
}

/// An echo server on [::1] for one connection; its result is the peer it
/// saw.
fn v6_echo_once() -> (SocketAddr, portico_tests::Pending<io::Result<SocketAddr>>) {
    let l = TcpListener::bind((Ipv6Addr::LOCALHOST, 0))
        .unwrap_or_else(|e| panic!("cannot listen on [::1] (IPv6 loopback is needed): {e}"));
    let addr = l.local_addr().expect("local_addr");
    let done = spawn_bounded(move || -> io::Result<SocketAddr> {
        l.set_nonblocking(true)?;
        let deadline = Instant::now() + IO_TIMEOUT;
        let (mut s, peer) = loop {
            match l.accept() {
                Ok(x) => break x,
                Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                    thread::sleep(Duration::from_millis(5))
                }
                Err(e) => return Err(e),
            }
        };
        s.set_nonblocking(false)?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        let mut buf = [0u8; 4096];
        loop {
            let n = s.read(&mut buf)?;
            if n == 0 {
                break;
            }
            s.write_all(&buf[..n])?;
        }
        s.shutdown(Shutdown::Write)?;
        Ok(peer)
    });
    (addr, done)
}

fn connect_ipv6(bin: Bin) {
    let (dest, done) = v6_echo_once();
    let (p, addr) = start_socks(bin, false, "", "");
    let mut c = dial(bin, addr);
    let r = v5_connect(bin, &mut c, &Dest::Ip(dest), "SOCKS5 CONNECT to [::1]");
    assert_eq!(r.code, 0, "{bin}: CONNECT to {dest}: {r:?}");
    echo_check(&mut c, b"over IPv6").unwrap_or_else(|e| panic!("{bin}: IPv6 tunnel: {e}"));
    c.shutdown(Shutdown::Write).expect("shutdown(Write)");
    let (n, _) = recv_all(&mut c).unwrap_or_else(|e| panic!("{bin}: waiting for EOF: {e}"));
    assert_eq!(n, 0, "{bin}: nothing after the echo");
    let peer = done
        .join(IO_TIMEOUT)
        .unwrap_or_else(|e| panic!("{bin}: IPv6 echo: {e}"))
        .unwrap_or_else(|e| panic!("{bin}: IPv6 echo: {e}"));
    assert_eq!(
        r.bound,
        Some(peer),
        "{bin}: the bound address of an IPv6 CONNECT (address type 4)"
    );
    let l = access_of(&p, me(&c));
    assert_status(bin, &l, "ok", "IPv6 CONNECT");
    assert_eq!(l.destination, dest.to_string(), "{bin}: {l:?}");
}

/// SOCKS5 with auth on and a host name, every byte of the handshake in its
/// own write.
fn one_byte_at_a_time_socks5(bin: Bin) {
    let server = TestServer::start(Behaviour::Echo);
    let (p, addr) = start_socks(bin, true, "", "");
    let mut c = dial(bin, addr);
    dribble(bin, &mut c, &[5, 2, 0, 2], "methods");
    assert_eq!(
        read_n(bin, &mut c, 2, "method reply"),
        [5, 2],
        "{bin}: method"
    );
    dribble(bin, &mut c, &v5_userpass(b"alice", b"secret"), "user/pass");
    assert_eq!(read_n(bin, &mut c, 2, "auth reply"), [1, 0], "{bin}: auth");
    let dest = Dest::Name("localhost", server.addr().port());
    dribble(bin, &mut c, &v5_request(1, &dest), "request");
    let r = read_v5_reply(bin, &mut c, "request one byte at a time");
    assert_eq!(r.code, 0, "{bin}: CONNECT sent one byte at a time: {r:?}");
    echo_check(&mut c, b"split").unwrap_or_else(|e| panic!("{bin}: tunnel: {e}"));
    let who = me(&c);
    drop(c);
    let l = access_of(&p, who);
    assert_status(bin, &l, "ok", "one byte at a time");
    assert_eq!(l.user, "alice", "{bin}: {l:?}");
    assert_eq!(
        l.target,
        format!("localhost:{}", server.addr().port()),
        "{bin}: {l:?}"
    );
}

fn one_byte_at_a_time_socks4a(bin: Bin) {
    let server = TestServer::start(Behaviour::Echo);
    let (p, addr) = start_socks(bin, false, "", "");
    let mut c = dial(bin, addr);
    let req = v4_request(1, v4_addr(server.addr()), b"u", Some("localhost"));
    dribble(bin, &mut c, &req, "SOCKS4a request");
    let (code, _) = read_v4_reply(bin, &mut c, "SOCKS4a one byte at a time");
    assert_eq!(code, 0x5A, "{bin}: SOCKS4a sent one byte at a time");
    echo_check(&mut c, b"split 4a").unwrap_or_else(|e| panic!("{bin}: tunnel: {e}"));
    let who = me(&c);
    drop(c);
    assert_status(bin, &access_of(&p, who), "ok", "SOCKS4a one byte at a time");
}

const REPLY_LEN: u64 = 1000;

/// `handshake` and `payload` in one write, then EOF; `replies` handshake
/// bytes come back before the relay, which `check_replies` judges.
fn coalesced(
    bin: Bin,
    auth: bool,
    replies: u64,
    handshake: impl FnOnce(SocketAddr) -> Vec<u8>,
    check_replies: impl FnOnce(&mut TcpStream),
) {
    let server = TestServer::start(Behaviour::DigestReply {
        reply_len: REPLY_LEN,
    });
    let (p, addr) = start_socks(bin, auth, "", "");
    let payload = pattern(CLIENT_SEED, 20_000);
    let mut all = handshake(server.addr());
    all.extend_from_slice(&payload);
    let mut c = dial(bin, addr);
    let written = c
        .write(&all)
        .unwrap_or_else(|e| panic!("{bin}: one write of the handshake and payload: {e}"));
    if written < all.len() {
        // The kernel took less in one go: send the rest (still one burst).
        send_all(bin, &mut c, &all[written..], "the rest");
    }
    c.shutdown(Shutdown::Write)
        .unwrap_or_else(|e| panic!("{bin}: shutdown(Write): {e}"));
    check_replies(&mut c);
    read_digest_reply(bin, &mut c, REPLY_LEN, &payload, "coalesced handshake");
    let rep = server.report_ok(bin);
    assert_eq!(
        rep.received,
        payload.len() as u64,
        "{bin}: the destination must receive the payload exactly once"
    );
    let l = access_of(&p, me(&c));
    assert_status(bin, &l, "ok", "coalesced handshake");
    assert_counts(bin, &l, payload.len() as u64, REPLY_LEN + 16, replies);
}

fn coalesced_socks5(bin: Bin) {
    coalesced(
        bin,
        false,
        2 + 10,
        |dest| {
            let mut h = vec![5, 1, 0];
            h.extend(v5_request(1, &Dest::Ip(dest)));
            h
        },
        |c| {
            assert_eq!(read_n(bin, c, 2, "method reply"), [5, 0]);
            let r = read_v5_reply(bin, c, "coalesced CONNECT");
            assert_eq!(r.code, 0, "{bin}: coalesced CONNECT: {r:?}");
        },
    );
}

fn coalesced_socks5_auth_name(bin: Bin) {
    coalesced(
        bin,
        true,
        2 + 2 + 10,
        |dest| {
            let mut h = vec![5, 1, 2];
            h.extend(v5_userpass(b"alice", b"secret"));
            h.extend(v5_request(1, &Dest::Name("localhost", dest.port())));
            h
        },
        |c| {
            assert_eq!(read_n(bin, c, 2, "method reply"), [5, 2]);
            assert_eq!(read_n(bin, c, 2, "auth reply"), [1, 0]);
            let r = read_v5_reply(bin, c, "coalesced CONNECT");
            assert_eq!(r.code, 0, "{bin}: coalesced CONNECT: {r:?}");
        },
    );
}

fn coalesced_socks4a(bin: Bin) {
    coalesced(
        bin,
        true,
        8,
        |dest| v4_request(1, v4_addr(dest), b"alice:secret", Some("localhost")),
        |c| {
            let (code, _) = read_v4_reply(bin, c, "coalesced SOCKS4a");
            assert_eq!(code, 0x5A, "{bin}: coalesced SOCKS4a");
        },
    );
}

/// With `handshake_timeout = "1s"`, handshakes stalled at various points are
/// closed (within a generous bound) and logged as `timeout`.
fn stalled_handshake_closes(bin: Bin) {
    let (p, addr) = start_socks(bin, false, "handshake_timeout = \"1s\"", "");
    let mut silent = dial(bin, addr);
    let mut first_byte = dial(bin, addr);
    send_all(bin, &mut first_byte, &[5], "a first byte");
    let mut after_methods = dial(bin, addr);
    assert_eq!(v5_greet(bin, &mut after_methods, &[0], "methods"), 0);
    send_all(
        bin,
        &mut after_methods,
        &[5, 1, 0, 3, 9, b'l'],
        "half a request",
    );
    let mut v4 = dial(bin, addr);
    send_all(
        bin,
        &mut v4,
        &[4, 1, 0, 80, 127, 0, 0, 1, b'u'],
        "half a SOCKS4 request",
    );
    for (c, what) in [
        (&mut silent, "a client that sends nothing"),
        (&mut first_byte, "a client that sent only 05"),
        (&mut after_methods, "a client stalled in its request"),
        (&mut v4, "a SOCKS4 client stalled in its USERID"),
    ] {
        let outcome = read_outcome(c, STALL_BOUND);
        assert!(
            outcome.is_closed(),
            "{bin}: {what} must be closed after handshake_timeout (1s); \
             within {STALL_BOUND:?} got {outcome:?}"
        );
        assert_status(bin, &access_of(&p, me(c)), "timeout", what);
    }
}

/// A client that logs in and then names no destination is closed by the
/// handshake timeout, and its access line names the user it logged in as.
fn stalled_after_login_is_logged_with_the_user(bin: Bin) {
    let (p, addr) = start_socks(bin, true, "handshake_timeout = \"1s\"", "");
    let mut c = dial(bin, addr);
    let what = "a client stalled after its login";
    assert_eq!(v5_greet(bin, &mut c, &[2], what), 2);
    send_all(bin, &mut c, &v5_userpass(b"alice", b"secret"), what);
    assert_eq!(read_n(bin, &mut c, 2, what), [1, 0], "{bin}: {what}: login");
    let outcome = read_outcome(&mut c, STALL_BOUND);
    assert!(
        outcome.is_closed(),
        "{bin}: {what} must be closed after handshake_timeout (1s); \
         within {STALL_BOUND:?} got {outcome:?}"
    );
    let l = access_of(&p, me(&c));
    assert_status(bin, &l, "timeout", what);
    assert_eq!(l.user, "alice", "{bin}: {what}: user of {l:?}");
}

/// The handshake timeout counts from the start of the handshake: a byte
/// every 100 ms does not keep it open.
fn trickled_handshake_closes(bin: Bin) {
    let (p, addr) = start_socks(bin, true, "handshake_timeout = \"1s\"", "");
    let mut c = dial(bin, addr);
    assert_eq!(v5_greet(bin, &mut c, &[2], "methods"), 2);
    let mut msg = vec![1, 255];
    msg.extend_from_slice(&[b'a'; 255]);
    let started = Instant::now();
    let mut closed = false;
    for &b in &msg {
        if c.write_all(&[b]).is_err() {
            closed = true;
            break;
        }
        let o = read_outcome(&mut c, Duration::from_millis(100));
        if o.is_closed() {
            closed = true;
            break;
        }
        assert!(
            matches!(o, ReadOutcome::TimedOut),
            "{bin}: unexpected answer to a partial user name: {o:?}"
        );
        if started.elapsed() > STALL_BOUND {
            break;
        }
    }
    assert!(
        closed,
        "{bin}: a handshake trickled a byte per 100 ms must be closed after \
         handshake_timeout (1s); still open after {:?}",
        started.elapsed()
    );
    assert_status(bin, &access_of(&p, me(&c)), "timeout", "trickled handshake");
}

fn bad_first_byte_closes(bin: Bin) {
    let server = TestServer::start(Behaviour::Echo);
    let (p, addr) = start_socks(bin, false, "", "");
    let req = v5_request(1, &Dest::Ip(server.addr()));
    for first in [0u8, 1, 3, 6, b'G', 0xFF] {
        let what = format!("a first byte {first:02x}");
        let mut c = dial(bin, addr);
        let mut msg = vec![first, 1, 0];
        msg.extend_from_slice(&req);
        send_all(bin, &mut c, &msg, &what);
        closed_as(bin, &p, &mut c, "bad-request", &what);
    }
    let mut c = dial(bin, addr);
    send_all(
        bin,
        &mut c,
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        "an HTTP request",
    );
    expect_closed(bin, &mut c, "an HTTP request on the SOCKS port");
    assert_eq!(
        server.accepted(),
        0,
        "{bin}: nothing may reach the destination"
    );
}

fn nul_in_username_never_authenticates(bin: Bin) {
    let server = TestServer::start(Behaviour::Echo);
    let (p, addr) = start_socks(bin, true, "", "");
    for user in [
        &b"alice\0"[..],
        b"alice\0x",
        b"\0alice",
        b"ali\0ce",
        b"alice\0secret",
    ] {
        let what = format!("user name {user:?}");
        let mut c = dial(bin, addr);
        assert_eq!(v5_greet(bin, &mut c, &[2], &what), 2);
        send_all(bin, &mut c, &v5_userpass(user, b"secret"), &what);
        let a = read_n(bin, &mut c, 2, &what);
        assert_eq!(a[0], 1, "{bin}: {what}: auth reply version: {a:02x?}");
        assert_ne!(a[1], 0, "{bin}: {what} must not authenticate");
        closed_as(bin, &p, &mut c, "auth-failed", &what);
    }
    // SOCKS4 with auth on: `alice\0` ends the USERID, the rest is not a
    // password.
    let mut c = dial(bin, addr);
    let mut req = v4_request(1, v4_addr(server.addr()), b"alice", None);
    req.extend_from_slice(b":secret\0");
    send_all(bin, &mut c, &req, "SOCKS4 USERID alice NUL :secret");
    let (code, _) = read_v4_reply(bin, &mut c, "SOCKS4 USERID alice NUL :secret");
    assert_eq!(code, 0x5B, "{bin}: SOCKS4 USERID `alice` must be refused");
    // The right credentials still work on the same proxy.
    let mut c = dial(bin, addr);
    let r = v5_connect_as(
        bin,
        &mut c,
        "alice",
        "secret",
        &Dest::Ip(server.addr()),
        "alice",
    );
    assert_eq!(r.code, 0, "{bin}: alice/secret: {r:?}");
    echo_check(&mut c, b"ok").unwrap_or_else(|e| panic!("{bin}: tunnel as alice: {e}"));
}

/// Rules on the destination (by name before any lookup, by resolved
/// address, by port) and on the client address: SOCKS5 02, SOCKS4 5B.
fn rules_deny(bin: Bin) {
    let denied_dest = TestServer::start(Behaviour::Echo);
    let allowed = TestServer::start(Behaviour::Echo);
    let dport = denied_dest.addr().port();
    let rules = format!(
        r#"[[rule]]
action = "deny"
destinations = ["*.invalid"]

[[rule]]
action = "deny"
destinations = ["127.0.0.0/8"]
ports = [{dport}]

[[rule]]
action = "deny"
clients = ["127.0.0.2/32"]

[[rule]]
action = "allow"
"#
    );
    let (p, addr) = start_socks(bin, false, "", &rules);
    // Denied by name, before the name is looked up (else it would be 04).
    let l = v5_expect_code(bin, &p, addr, &Dest::Name("nonexistent.invalid", 80), 0x02);
    assert_status(bin, &l, "denied", "*.invalid");
    // Denied by the resolved address and port.
    let l = v5_expect_code(bin, &p, addr, &Dest::Name("localhost", dport), 0x02);
    assert_status(bin, &l, "denied", "localhost resolving into 127.0.0.0/8");
    let l = v5_expect_code(bin, &p, addr, &Dest::Ip(denied_dest.addr()), 0x02);
    assert_status(bin, &l, "denied", "127.0.0.1 on a denied port");
    let mut c = dial(bin, addr);
    let (code, _) = v4_exchange(
        bin,
        &mut c,
        &v4_request(1, v4_addr(denied_dest.addr()), b"", None),
        "SOCKS4 to a denied port",
    );
    assert_eq!(code, 0x5B, "{bin}: SOCKS4 denied by a rule");
    closed_as(bin, &p, &mut c, "denied", "SOCKS4 denied by a rule");
    // A denied client address is answered when it makes its request.
    let mut c = connect_from(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)), addr)
        .unwrap_or_else(|e| panic!("{bin}: connect from 127.0.0.2: {e}"));
    let r = v5_connect(bin, &mut c, &Dest::Ip(allowed.addr()), "from 127.0.0.2");
    assert_eq!(
        r.code, 0x02,
        "{bin}: a client denied by address gets 02: {r:?}"
    );
    closed_as(bin, &p, &mut c, "denied", "denied client");
    assert_eq!(
        denied_dest.accepted(),
        0,
        "{bin}: a denied destination must not be connected to"
    );
    // What no deny rule matches is served.
    let mut c = dial(bin, addr);
    let r = v5_connect(bin, &mut c, &Dest::Ip(allowed.addr()), "allowed");
    assert_eq!(r.code, 0, "{bin}: an allowed CONNECT: {r:?}");
    echo_check(&mut c, b"allowed").unwrap_or_else(|e| panic!("{bin}: tunnel: {e}"));
    assert_eq!(
        allowed.accepted(),
        1,
        "{bin}: only the allowed CONNECT reaches the allowed server"
    );
}

fn rules_on_user(bin: Bin) {
    let server = TestServer::start(Behaviour::Echo);
    let extra = r#"[[user]]
name = "bob"
password = "plain:hunter2"

[[rule]]
action = "deny"
users = ["bob"]

[[rule]]
action = "allow"
"#;
    let (p, addr) = start_socks(bin, true, "", extra);
    let dest = Dest::Ip(server.addr());
    let mut c = dial(bin, addr);
    let r = v5_connect_as(bin, &mut c, "bob", "hunter2", &dest, "bob");
    assert_eq!(r.code, 0x02, "{bin}: bob is denied by a rule: {r:?}");
    let l = closed_as(bin, &p, &mut c, "denied", "bob denied");
    assert_eq!(l.user, "bob", "{bin}: {l:?}");
    let mut c = dial(bin, addr);
    assert_eq!(
        v4_exchange(
            bin,
            &mut c,
            &v4_request(1, v4_addr(server.addr()), b"bob:hunter2", None),
            "SOCKS4 as bob"
        )
        .0,
        0x5B
    );
    let mut c = dial(bin, addr);
    let r = v5_connect_as(bin, &mut c, "alice", "secret", &dest, "alice");
    assert_eq!(r.code, 0, "{bin}: alice is allowed: {r:?}");
    echo_check(&mut c, b"alice").unwrap_or_else(|e| panic!("{bin}: tunnel: {e}"));
    assert_eq!(server.accepted(), 1, "{bin}: only alice reaches the server");
}

/// A listener nobody accepts on: a connection that reached it waits in its
/// accept queue, so [`Unaccepted::reached`] tells for sure whether one
/// arrived.
struct Unaccepted(TcpListener);

impl Unaccepted {
    fn bind(ip: IpAddr) -> Unaccepted {
        let l = TcpListener::bind((ip, 0)).unwrap_or_else(|e| panic!("bind {ip}:0: {e}"));
        l.set_nonblocking(true).expect("set_nonblocking");
        Unaccepted(l)
    }

    fn port(&self) -> u16 {
        self.0.local_addr().expect("local_addr").port()
    }

    fn reached(&self) -> Option<SocketAddr> {
        self.0.accept().ok().map(|(_, peer)| peer)
    }
}

/// Connecting to the unspecified address (0.0.0.0, ::) reaches the proxy's
/// own host on Linux, so a rule denying the loopback networks must not be
/// bypassed by naming 0.0.0.0 or :: instead (Squid counts 0.0.0.0/32 as
/// localhost for the same reason). Any failure reply is accepted; what
/// matters is that no connection reaches the loopback listener.
fn rules_deny_loopback_via_unspecified_address(bin: Bin) {
    let v4 = Unaccepted::bind(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let v6 = Unaccepted::bind(IpAddr::V6(Ipv6Addr::LOCALHOST));
    let rules = r#"[[rule]]
action = "deny"
destinations = ["127.0.0.0/8", "::1/128"]

[[rule]]
action = "allow"
"#;
    let (p, addr) = start_socks(bin, false, "", rules);
    let l = v5_expect_code(bin, &p, addr, &Dest::Ip(local(v4.port())), 0x02);
    assert_status(bin, &l, "denied", "127.0.0.1 with 127.0.0.0/8 denied");
    let unspecified4 = SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), v4.port());
    let unspecified6 = SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), v6.port());
    let mut leaks = Vec::new();
    for (dest, what) in [
        (Dest::Ip(unspecified4), "SOCKS5 CONNECT 0.0.0.0"),
        (
            Dest::Name("0.0.0.0", v4.port()),
            "SOCKS5 CONNECT to the name 0.0.0.0",
        ),
        (Dest::Ip(unspecified6), "SOCKS5 CONNECT [::]"),
    ] {
        let mut c = dial(bin, addr);
        let r = v5_connect(bin, &mut c, &dest, what);
        let reached = v4.reached().or_else(|| v6.reached());
        if r.code == 0 || reached.is_some() {
            leaks.push(format!(
                "{what}: reply {:02x}, loopback listener reached from {reached:?}",
                r.code
            ));
        }
    }
    let mut c = dial(bin, addr);
    let (code, _) = v4_exchange(
        bin,
        &mut c,
        &v4_request(1, v4_addr(unspecified4), b"", None),
        "SOCKS4 CONNECT 0.0.0.0",
    );
    if code == 0x5A || v4.reached().is_some() {
        leaks.push(format!(
            "SOCKS4 CONNECT 0.0.0.0: reply {code:02x}, loopback listener reached"
        ));
    }
    assert!(
        leaks.is_empty(),
        "{bin}: with 127.0.0.0/8 and ::1/128 denied, the unspecified address must not lead \
         to the loopback listener:\n{}",
        leaks.join("\n")
    );
}

fn max_connections_limit(bin: Bin) {
    let server = TestServer::start(Behaviour::Echo);
    let (p, addr) = start_socks(bin, false, "max_connections = 1", "");
    let dest = Dest::Ip(server.addr());
    let mut first = dial(bin, addr);
    let r = v5_connect(bin, &mut first, &dest, "the one allowed tunnel");
    assert_eq!(r.code, 0, "{bin}: first tunnel: {r:?}");
    echo_check(&mut first, b"one").unwrap_or_else(|e| panic!("{bin}: first tunnel: {e}"));

    let mut c = dial(bin, addr);
    let r = v5_connect(bin, &mut c, &dest, "a second SOCKS5 client");
    assert_eq!(
        r.code, 0x01,
        "{bin}: over max_connections SOCKS5 gets 01 after method negotiation: {r:?}"
    );
    closed_as(bin, &p, &mut c, "limit", "second SOCKS5 client");

    let mut c = dial(bin, addr);
    let (code, _) = v4_exchange(
        bin,
        &mut c,
        &v4_request(1, v4_addr(server.addr()), b"", None),
        "a second SOCKS4 client",
    );
    assert_eq!(code, 0x5B, "{bin}: over max_connections SOCKS4 gets 5B");
    closed_as(bin, &p, &mut c, "limit", "second SOCKS4 client");

    echo_check(&mut first, b"still")
        .unwrap_or_else(|e| panic!("{bin}: the first tunnel after the refusals: {e}"));
    assert_eq!(
        server.accepted(),
        1,
        "{bin}: refused clients connect nowhere"
    );
    let who = me(&first);
    drop(first);
    access_of(&p, who);
    let served = poll_until(Duration::from_secs(5), Duration::from_millis(20), || {
        let mut c = connect(addr).ok()?;
        let mut g = vec![5, 1, 0];
        g.extend(v5_request(1, &dest));
        c.write_all(&g).ok()?;
        let mut r = [0u8; 12];
        c.read_exact(&mut r).ok()?;
        (r[3] == 0).then_some(c)
    });
    let mut c = served.unwrap_or_else(|| {
        panic!("{bin}: after the one tunnel closed, a new SOCKS5 client must be served")
    });
    echo_check(&mut c, b"again").unwrap_or_else(|e| panic!("{bin}: new tunnel: {e}"));
}

/// A SOCKS5 CONNECT through the proxy at `addr` to the echo server
/// `dest` works (the proxy is still serving).
fn still_serving(bin: Bin, addr: SocketAddr, dest: SocketAddr, what: &str) {
    let mut c = dial(bin, addr);
    let r = v5_connect(bin, &mut c, &Dest::Ip(dest), what);
    assert_eq!(r.code, 0, "{bin}: {what}: a CONNECT afterwards: {r:?}");
    echo_check(&mut c, b"still serving")
        .unwrap_or_else(|e| panic!("{bin}: {what}: a tunnel afterwards: {e}"));
}

fn max_per_client_limit(bin: Bin) {
    let server = TestServer::start(Behaviour::Echo);
    let (p, addr) = start_socks(bin, false, "max_per_client = 1", "");
    let dest = Dest::Ip(server.addr());
    let one = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let two = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    let mut first = connect_from(one, addr).unwrap_or_else(|e| panic!("{bin}: connect: {e}"));
    let r = v5_connect(bin, &mut first, &dest, "the one tunnel from 127.0.0.1");
    assert_eq!(r.code, 0, "{bin}: first tunnel: {r:?}");
    echo_check(&mut first, b"one").unwrap_or_else(|e| panic!("{bin}: first tunnel: {e}"));

    let mut c = connect_from(one, addr).unwrap_or_else(|e| panic!("{bin}: connect: {e}"));
    let r = v5_connect(bin, &mut c, &dest, "a second SOCKS5 client from 127.0.0.1");
    assert_eq!(
        r.code, 0x01,
        "{bin}: over max_per_client SOCKS5 gets 01: {r:?}"
    );
    closed_as(
        bin,
        &p,
        &mut c,
        "limit",
        "max_per_client SOCKS5 (second SOCKS5 client from 127.0.0.1)",
    );

    let mut c = connect_from(one, addr).unwrap_or_else(|e| panic!("{bin}: connect: {e}"));
    let (code, _) = v4_exchange(
        bin,
        &mut c,
        &v4_request(1, v4_addr(server.addr()), b"", None),
        "a second SOCKS4 client from 127.0.0.1",
    );
    assert_eq!(code, 0x5B, "{bin}: over max_per_client SOCKS4 gets 5B");
    closed_as(
        bin,
        &p,
        &mut c,
        "limit",
        "max_per_client SOCKS4 (second SOCKS4 client from 127.0.0.1)",
    );

    let mut other =
        connect_from(two, addr).unwrap_or_else(|e| panic!("{bin}: connect from 127.0.0.2: {e}"));
    let r = v5_connect(bin, &mut other, &dest, "a client from 127.0.0.2");
    assert_eq!(
        r.code, 0,
        "{bin}: another client address is under its own limit: {r:?}"
    );
    echo_check(&mut other, b"two").unwrap_or_else(|e| panic!("{bin}: tunnel from .2: {e}"));
    echo_check(&mut first, b"still")
        .unwrap_or_else(|e| panic!("{bin}: the first tunnel after the refusals: {e}"));
}

/// With `[network] outgoing`, connections out come from that address and
/// the success reply says so (with the real port).
fn bound_address_with_outgoing(bin: Bin) {
    let server = TestServer::start(Behaviour::Echo);
    let port = free_port();
    let config = socks_config(port, false, "", "").replace(
        "internal = [\"127.0.0.1\"]",
        "internal = [\"127.0.0.1\"]\nexternal = [\"127.0.0.2\"]\noutgoing = \"127.0.0.2\"",
    );
    let p = Portico::start(bin, &config);
    let addr = local(port);
    let mut c = dial(bin, addr);
    let r = v5_connect(
        bin,
        &mut c,
        &Dest::Ip(server.addr()),
        "CONNECT via 127.0.0.2",
    );
    assert_eq!(r.code, 0, "{bin}: CONNECT with outgoing = 127.0.0.2: {r:?}");
    echo_check(&mut c, b"from .2").unwrap_or_else(|e| panic!("{bin}: tunnel: {e}"));
    let mut v4 = dial(bin, addr);
    let (code, bound4) = v4_exchange(
        bin,
        &mut v4,
        &v4_request(1, v4_addr(server.addr()), b"", None),
        "SOCKS4 via 127.0.0.2",
    );
    assert_eq!(code, 0x5A, "{bin}: SOCKS4 with outgoing = 127.0.0.2");
    echo_check(&mut v4, b"4 from .2").unwrap_or_else(|e| panic!("{bin}: tunnel: {e}"));
    drop(c);
    drop(v4);
    let mut peers = vec![server.report_ok(bin).peer, server.report_ok(bin).peer];
    peers.sort();
    let bound = r.bound.expect("an IPv4 bound address");
    let mut replied = vec![bound, SocketAddr::V4(bound4)];
    replied.sort();
    assert_eq!(
        replied, peers,
        "{bin}: the bound addresses of the replies must be the outgoing connections' \
         local addresses"
    );
    for a in &replied {
        assert_eq!(
            a.ip(),
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)),
            "{bin}: outgoing = 127.0.0.2 must be the source of connections out"
        );
        assert_ne!(a.port(), 0, "{bin}: the bound port must be the real one");
    }
    drop(p);
}

/// SOCKS4 BIND left out of the service's `commands`.
fn socks4_bind_unsupported(bin: Bin) {
    let server = TestServer::start(Behaviour::Echo);
    let (p, addr) = start_socks(bin, false, "", "commands = [\"connect\"]");
    let mut c = dial(bin, addr);
    let (code, _) = v4_exchange(
        bin,
        &mut c,
        &v4_request(2, v4_addr(server.addr()), b"", None),
        "SOCKS4 BIND",
    );
    assert_eq!(code, 0x5B, "{bin}: SOCKS4 BIND must be refused (5B)");
    closed_as(bin, &p, &mut c, "unsupported", "SOCKS4 BIND");
    assert_eq!(server.accepted(), 0, "{bin}: BIND must connect nowhere");
}

/// Every length field is bounded: a SOCKS4 USERID or 4a host name that never
/// ends, and SOCKS5 names at the one-byte limit, close (or fail) the
/// connection; the proxy goes on serving.
fn oversized_fields_close(bin: Bin) {
    let server = TestServer::start(Behaviour::Echo);
    let (p, addr) = start_socks(bin, false, "", "");
    let dest = v4_addr(server.addr());
    let endless = vec![b'u'; 256 * 1024];
    let mut v4_userid = v4_request(1, dest, b"", None);
    v4_userid.truncate(8);
    v4_userid.extend_from_slice(&endless);
    let mut v4a_host = v4_request(1, dest, b"", Some("x"));
    v4a_host.truncate(9);
    v4a_host.extend_from_slice(&endless);
    for (msg, what) in [
        (v4_userid, "a SOCKS4 USERID of 256 KiB without NUL"),
        (v4a_host, "a SOCKS4a host name of 256 KiB without NUL"),
    ] {
        let mut c = dial(bin, addr);
        let who = me(&c);
        let mut w = c.try_clone().expect("try_clone");
        // The proxy may close before taking it all: errors are expected.
        let writer = spawn_bounded(move || {
            let _ = w.write_all(&msg);
        });
        let outcome = read_outcome(&mut c, PROMPTLY);
        assert!(
            outcome.is_closed(),
            "{bin}: {what} must close the connection without a reply; got {outcome:?}"
        );
        writer
            .join(IO_TIMEOUT)
            .unwrap_or_else(|e| panic!("{bin}: {what}: writer: {e}"));
        assert_status(bin, &access_of(&p, who), "bad-request", what);
    }
    // SOCKS5 names: 255 bytes is the most the length byte can say; a
    // (too long to be a DNS name) 255-byte name is answered, never
    // connected.
    let long = "a".repeat(255);
    let mut c = dial(bin, addr);
    let r = v5_connect(bin, &mut c, &Dest::Name(&long, 80), "a 255-byte name");
    assert_ne!(
        r.code, 0,
        "{bin}: a 255-byte host name cannot be connected to"
    );
    expect_closed(bin, &mut c, "a 255-byte name");
    // A user name and password of 255 bytes each.
    let (pa, aaddr) = start_socks(bin, true, "", "");
    let mut c = dial(bin, aaddr);
    assert_eq!(v5_greet(bin, &mut c, &[2], "255-byte credentials"), 2);
    send_all(
        bin,
        &mut c,
        &v5_userpass(&[b'a'; 255], &[b'b'; 255]),
        "255-byte credentials",
    );
    assert_eq!(
        read_n(bin, &mut c, 2, "255-byte credentials")[1],
        1,
        "{bin}: 255-byte credentials of no user must fail"
    );
    closed_as(bin, &pa, &mut c, "auth-failed", "255-byte credentials");
    still_serving(bin, addr, server.addr(), "after oversized fields");
}

/// The handshake and 1 MiB of payload in one burst while the connect to the
/// destination hangs (its accept queue is full, so the proxy's SYN is
/// dropped and retried): the proxy must hold the payload back within its
/// buffer and deliver all of it, exactly once, when the connect completes.
fn coalesced_large_payload_while_connecting(bin: Bin) {
    let server = TestServer::start_held(Behaviour::DigestReply {
        reply_len: REPLY_LEN,
    });
    server
        .fill_backlog()
        .unwrap_or_else(|e| panic!("{bin}: filling the destination's accept queue: {e}"));
    let (p, addr) = start_socks(bin, false, "buffer = \"16KiB\"", "");
    let payload = pattern(CLIENT_SEED, MIB as usize);
    let mut all = vec![5, 1, 0];
    all.extend(v5_request(1, &Dest::Ip(server.addr())));
    all.extend_from_slice(&payload);
    let overflows = listen_overflows();
    let mut c = dial(bin, addr);
    let who = me(&c);
    let mut w = c.try_clone().expect("try_clone");
    let writer = spawn_bounded(move || {
        let r = w.write_all(&all);
        let _ = w.shutdown(Shutdown::Write);
        r
    });
    // Wait (bounded) until the kernel dropped the proxy's SYN, so that the
    // connect really was pending; without the counter the case still checks
    // delivery.
    if let Some(before) = overflows {
        poll_until(Duration::from_secs(5), Duration::from_millis(5), || {
            listen_overflows().filter(|&n| n > before)
        });
    }
    server.release();
    server.close_fillers();
    assert_eq!(read_n(bin, &mut c, 2, "method reply"), [5, 0]);
    let r = read_v5_reply(bin, &mut c, "CONNECT while the destination is slow");
    assert_eq!(r.code, 0, "{bin}: CONNECT: {r:?}");
    read_digest_reply(bin, &mut c, REPLY_LEN, &payload, "1 MiB coalesced payload");
    writer
        .join(TRANSFER_LIMIT)
        .unwrap_or_else(|e| panic!("{bin}: writer: {e}"))
        .unwrap_or_else(|e| panic!("{bin}: writing the handshake and 1 MiB: {e}"));
    let l = access_of(&p, who);
    assert_status(bin, &l, "ok", "1 MiB coalesced payload");
    assert_counts(bin, &l, payload.len() as u64, REPLY_LEN + 16, 2 + 10);
}

// ---------------------------------------------------------------------------
// ssh through `nc -X 5` to a private sshd.

struct Sshd {
    child: Child,
    port: u16,
    dir: TempDir,
    user: String,
    log: Arc<LineLog>,
}

impl Sshd {
    fn start(bin: Bin) -> Sshd {
        let sshd = require("sshd", "openssh-server");
        let keygen = require("ssh-keygen", "openssh-client");
        let dir = TempDir::new();
        for key in ["host", "client"] {
            let mut cmd = Command::new(&keygen);
            cmd.args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(dir.path().join(key));
            let out = run_tool(bin, cmd, None, TOOL_LIMIT);
            assert!(out.status.success(), "{bin}: ssh-keygen: {}", out.text());
        }
        let pubkey = std::fs::read_to_string(dir.path().join("client.pub"))
            .unwrap_or_else(|e| panic!("{bin}: reading client.pub: {e}"));
        dir.write("authorized_keys", &pubkey);
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let user = if root {
            "root".to_string()
        } else {
            std::env::var("USER").unwrap_or_else(|_| panic!("{bin}: USER is not set"))
        };
        if root {
            // Privilege separation needs its directory.
            std::fs::create_dir_all("/run/sshd")
                .unwrap_or_else(|e| panic!("{bin}: mkdir /run/sshd: {e}"));
        }
        let port = free_port();
        let d = dir.path().display();
        let config = dir.write(
            "sshd_config",
            &format!(
                "ListenAddress 127.0.0.1\nPort {port}\nHostKey {d}/host\nPidFile none\n\
                 AuthorizedKeysFile {d}/authorized_keys\nStrictModes no\nUsePAM no\n\
                 PermitRootLogin yes\nPubkeyAuthentication yes\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nLogLevel INFO\n"
            ),
        );
        let mut child = Command::new(&sshd)
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{bin}: cannot start {}: {e}", sshd.display()));
        let log = LineLog::start(child.stderr.take());
        let mut me = Sshd {
            child,
            port,
            dir,
            user,
            log,
        };
        let ready = format!("Server listening on 127.0.0.1 port {port}");
        if me
            .log
            .wait_for(|l| l.contains(&ready), Duration::from_secs(20))
            .is_none()
        {
            let st = me.child.try_wait().ok().flatten();
            panic!(
                "{bin}: sshd did not report {ready:?} within 20 s (exited: {st:?}); \
                 its log:\n{}",
                me.log_text()
            );
        }
        me
    }

    fn log_text(&self) -> String {
        self.log.text()
    }

    fn key(&self) -> PathBuf {
        self.dir.path().join("client")
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ssh_via(bin: Bin, sshd: &Sshd, nc: &Path, proxy: SocketAddr, host: &str) -> ToolOutput {
    let mut cmd = Command::new(require("ssh", "openssh-client"));
    cmd.args(["-F", "/dev/null", "-i"])
        .arg(sshd.key())
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "ConnectTimeout=30",
            "-o",
        ])
        .arg(format!(
            "ProxyCommand={} -X 5 -x {proxy} %h %p",
            nc.display()
        ))
        .arg("-p")
        .arg(sshd.port.to_string())
        .arg(format!("{}@{host}", sshd.user))
        .args(["echo", "through-portico"]);
    run_tool(bin, cmd, None, TOOL_LIMIT)
}

fn ssh_through_nc(bin: Bin) {
    let nc = require("nc", "netcat-openbsd");
    let sshd = Sshd::start(bin);
    let (p, addr) = start_socks(bin, false, "", "");
    // 127.0.0.1: nc sends an IPv4 address; localhost: a host name.
    for host in ["127.0.0.1", "localhost"] {
        let out = ssh_via(bin, &sshd, &nc, addr, host);
        assert!(
            out.status.success() && out.stdout == b"through-portico\n",
            "{bin}: ssh {}@{host} through `nc -X 5 -x {addr}` must print through-portico; {}\
             \nsshd log:\n{}",
            sshd.user,
            out.text(),
            sshd.log_text()
        );
        let l = access_for_target(&p, &format!("{host}:{}", sshd.port));
        assert_status(bin, &l, "ok", &format!("ssh to {host}"));
        assert_eq!(l.method, "SOCKS5", "{bin}: {l:?}");
        assert_eq!(
            l.destination,
            format!("127.0.0.1:{}", sshd.port),
            "{bin}: {l:?}"
        );
        assert!(l.up > 0 && l.down > 0, "{bin}: byte counts in {l:?}");
    }
}
