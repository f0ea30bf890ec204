//! End-to-end test harness for Portico: both binaries on real sockets on
//! 127.0.0.1.
//!
//! - [`Bin`] / [`binaries`]: `portico` and `portico-threaded`, built once per
//!   test process by a nested `cargo build` of the same profile (or taken
//!   from `PORTICO_BIN_DIR`).
//! - [`Portico`]: a running proxy started on a configuration; its stdout and
//!   stderr are collected line by line.
//! - [`TestServer`]: backends (echo, sink, source, exchange, digest-reply);
//!   [`Acceptor`]: a listener handing each connection to a handler, for
//!   the scripted servers of the test files.
//! - [`origin::Origin`]: an HTTP origin that keeps the request heads it read.
//! - [`browser`]: headless Chromium and what it rendered (the status page).
//! - [`reply`]: HTTP replies read to the close.
//! - [`tools`]: external programs ([`require`] names the Debian package),
//!   run with a bounded wait ([`run_tool`]).
//! - Configurations: [`config_head`], [`service`], [`mapped_config`].
//! - [`both!`]: turns `fn case(bin: Bin)` into the tests `case::mio` and
//!   `case::threaded`.
//!
//! Every wait is bounded: sockets carry read and write timeouts, processes
//! are waited for with deadlines, and a failing case never hangs the run.

mod bin;
pub mod browser;
pub mod data;
pub mod json;
pub mod logline;
pub mod net;
pub mod origin;
mod process;
pub mod reply;
pub mod servers;
pub mod tools;

pub use bin::{binaries, Bin};
pub use data::{digest, file_digest, pattern, recv_all, recv_exact, send_stream, Digest};
pub use net::{
    connect, connect_from, cpu_time, echo_check, expect_closed, free_port, listen_overflows, local,
    poll_until, read_outcome, rss_kib, send_all, BlackHole, ReadOutcome, Rendezvous,
    CONNECT_TIMEOUT, IO_TIMEOUT, PROMPTLY,
};
pub use process::{
    expected_listeners, private_files, private_hosts, run_cli, run_on_config, CliOutput, LineLog,
    Portico, StartError, StartOptions, TempDir, START_TIMEOUT,
};
pub use servers::{
    check_digest_reply, read_digest_reply, Acceptor, Behaviour, Report, TestServer, UdpEcho,
    SERVER_SEED,
};
pub use tools::{
    curl_command, require, require_python_module, run_tool, without_proxy_env, ToolOutput,
};

use std::net::SocketAddr;

/// Runs each named `fn(Bin)` against both binaries: `both!(a, b)` defines
/// the tests `a::mio`, `a::threaded`, `b::mio` and `b::threaded`.
/// Attributes before a name apply to both of its tests, e.g.
/// `both!(#[ignore = "not implemented yet"] c)`.
#[macro_export]
macro_rules! both {
    ($($(#[$attr:meta])* $name:ident),+ $(,)?) => {
        $(
            mod $name {
                #[test]
                $(#[$attr])*
                fn mio() {
                    super::$name($crate::Bin::Mio)
                }
                #[test]
                $(#[$attr])*
                fn threaded() {
                    super::$name($crate::Bin::Threaded)
                }
            }
        )+
    };
}

/// The start of a configuration: `[network]` with 127.0.0.1 as the one
/// internal address, `[limits]` with the lines `limits`, and `[log]` with
/// the access log on stderr and the lines `log`.
pub fn config_head(limits: &str, log: &str) -> String {
    format!(
        r#"[network]
internal = ["127.0.0.1"]

[limits]
{limits}

[log]
access = "stderr"
{log}
"#
    )
}

/// The user alice, with the password `secret`.
pub const ALICE: &str = "[[user]]\nname = \"alice\"\npassword = \"plain:secret\"\n";

/// A SOCKS5 CONNECT to the IPv4 `dest` through `proxy`, logged in as
/// alice (RFC 1929, [`ALICE`]): the reply code and the stream (a tunnel
/// when the code is 0). Panics, naming `bin`, when the exchange breaks.
pub fn socks5_as_alice(bin: Bin, proxy: SocketAddr, dest: SocketAddr) -> (u8, std::net::TcpStream) {
    use std::io::{self, Read, Write};
    let mut s = connect(proxy).unwrap_or_else(|e| panic!("{bin}: connect to SOCKS: {e}"));
    let run = |s: &mut std::net::TcpStream| -> io::Result<u8> {
        s.write_all(&[5, 1, 2])?;
        let mut m = [0u8; 2];
        s.read_exact(&mut m)?;
        if m != [5, 2] {
            return Err(io::Error::other(format!("method reply {m:02x?}")));
        }
        s.write_all(b"\x01\x05alice\x06secret")?;
        s.read_exact(&mut m)?;
        if m != [1, 0] {
            return Err(io::Error::other(format!("login reply {m:02x?}")));
        }
        let SocketAddr::V4(a) = dest else {
            return Err(io::Error::other("an IPv4 destination"));
        };
        let mut req = vec![5, 1, 0, 1];
        req.extend_from_slice(&a.ip().octets());
        req.extend_from_slice(&a.port().to_be_bytes());
        s.write_all(&req)?;
        let mut r = [0u8; 10];
        s.read_exact(&mut r)?;
        Ok(r[1])
    };
    let code = run(&mut s).unwrap_or_else(|e| panic!("{bin}: SOCKS5 as alice: {e}"));
    (code, s)
}

/// A `[[service]]` `name` of `kind` on 127.0.0.1:`port`, with the lines
/// `extra` after its `listen`.
pub fn service(name: &str, kind: &str, port: u16, extra: &str) -> String {
    format!(
        r#"
[[service]]
name = "{name}"
kind = "{kind}"
listen = ["127.0.0.1:{port}"]
{extra}
"#
    )
}

/// A mapped `[[service]]` `name` on 127.0.0.1:`port` forwarding to
/// `destination`, with the lines `extra`.
pub fn mapped_service(name: &str, port: u16, destination: SocketAddr, extra: &str) -> String {
    service(
        name,
        "mapped",
        port,
        &format!("destination = \"{destination}\"\n{extra}"),
    )
}

/// A configuration with one mapped TCP service `map` on 127.0.0.1:`port`
/// forwarding to `destination`; `limits` and `log` are extra lines for
/// those sections (e.g. `idle_timeout = "1s"`; without one, the idle
/// timeout is 5 minutes). The service comes last, so that lines appended
/// belong to it.
pub fn mapped_config(port: u16, destination: SocketAddr, limits: &str, log: &str) -> String {
    let idle = if limits.contains("idle_timeout") {
        ""
    } else {
        "idle_timeout = \"5m\""
    };
    format!(
        "{}{}",
        config_head(&format!("{idle}\n{limits}"), log),
        mapped_service("map", port, destination, "")
    )
}

/// Starts `bin` with [`mapped_config`] on a fresh port forwarding to
/// `destination`; returns the proxy and the address to connect to.
pub fn start_mapped(
    bin: Bin,
    destination: SocketAddr,
    limits: &str,
    log: &str,
) -> (Portico, SocketAddr) {
    start_on_free_port(bin, StartOptions::default(), |port| {
        mapped_config(port, destination, limits, log)
    })
}

/// Starts `bin` on the configuration `config(port)` for a fresh port,
/// trying another port if that one was taken meanwhile (by another test
/// process on the machine); returns the proxy and 127.0.0.1:port.
pub fn start_on_free_port(
    bin: Bin,
    opts: StartOptions<'_>,
    config: impl Fn(u16) -> String,
) -> (Portico, SocketAddr) {
    let (p, ports) = start_on_free_ports(bin, 1, opts, |ports| config(ports[0]));
    (p, local(ports[0]))
}

/// Starts `bin` on the configuration `config(ports)` for `n` fresh ports,
/// trying other ports if one was taken meanwhile; returns the proxy and
/// the ports.
pub fn start_on_free_ports(
    bin: Bin,
    n: usize,
    opts: StartOptions<'_>,
    config: impl Fn(&[u16]) -> String,
) -> (Portico, Vec<u16>) {
    let mut tries = 0;
    loop {
        let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        match Portico::try_start_with(bin, &config(&ports), opts) {
            Ok(p) => return (p, ports),
            Err(e) if e.is_listen_failure() && tries < 3 => tries += 1,
            Err(e) => panic!("{}", e.message),
        }
    }
}

/// Seed of the byte streams clients send.
pub const CLIENT_SEED: u64 = 0xc11e_47c1_1e47_0002;

/// A thread whose result can be awaited with a deadline.
pub struct Pending<T>(std::sync::mpsc::Receiver<std::thread::Result<T>>);

/// Runs `f` on a new thread; see [`Pending::join`].
pub fn spawn_bounded<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Pending<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        let _ = tx.send(r);
    });
    Pending(rx)
}

impl<T> Pending<T> {
    /// The thread's result, or `Err` if it panicked or did not finish in time.
    pub fn join(self, limit: std::time::Duration) -> Result<T, String> {
        match self.0.recv_timeout(limit) {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(p)) => Err(format!(
                "the thread panicked: {}",
                p.downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default()
            )),
            Err(_) => Err(format!("the thread did not finish within {limit:?}")),
        }
    }
}

/// Checks that `bin --check` refuses `toml` (exit 2) with an error at
/// the line that reads exactly `line` (`FILE:LINE:COLUMN:`) saying each of
/// `words`.
pub fn expect_config_error(bin: Bin, toml: &str, line: &str, words: &[&str]) {
    let number = 1 + toml
        .lines()
        .position(|l| l == line)
        .unwrap_or_else(|| panic!("no line {line:?} in:\n{toml}"));
    let (path, out) = run_on_config(bin, toml, &["--check"], std::time::Duration::from_secs(30));
    assert_eq!(
        out.code(),
        Some(2),
        "{bin}: `{line}` must be refused with exit 2:\n{toml}\n{out:?}"
    );
    let at = format!("{path}:{number}:");
    assert!(
        out.stderr.contains(&at) && words.iter().all(|w| out.stderr.contains(w)),
        "{bin}: `{line}`: the error must say {at}… and {words:?}: {}",
        out.stderr
    );
}
