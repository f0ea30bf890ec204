//! End-to-end test harness for Portico: both binaries on real sockets on
//! 127.0.0.1.
//!
//! - [`Bin`] / [`binaries`]: `portico` and `portico-threaded`, built once per
//!   test process by a nested `cargo build` of the same profile (or taken
//!   from `PORTICO_BIN_DIR`).
//! - [`Portico`]: a running proxy started on a configuration; its stdout and
//!   stderr are collected line by line.
//! - [`TestServer`]: backends (echo, sink, source, exchange, digest-reply).
//! - [`both!`]: turns `fn case(bin: Bin)` into the tests `case::mio` and
//!   `case::threaded`.
//!
//! Every wait is bounded: sockets carry read and write timeouts, processes
//! are waited for with deadlines, and a failing case never hangs the run.

mod bin;
pub mod data;
pub mod logline;
pub mod net;
mod process;
pub mod servers;

pub use bin::{binaries, Bin};
pub use data::{digest, pattern, recv_all, send_stream, Digest};
pub use net::{
    connect, connect_from, cpu_time, echo_check, free_port, listen_overflows, local, poll_until,
    read_outcome, rss_kib, ReadOutcome, Rendezvous, CONNECT_TIMEOUT, IO_TIMEOUT,
};
pub use process::{
    expected_listeners, run_cli, CliOutput, Portico, StartError, StartOptions, TempDir,
    START_TIMEOUT,
};
pub use servers::{Behaviour, Report, TestServer, UdpEcho, SERVER_SEED};

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

/// A configuration with one mapped TCP service `map` on 127.0.0.1:`port`
/// forwarding to `destination`; `limits` and `log` are extra lines for
/// those sections (e.g. `idle_timeout = "1s"`; without one, the idle
/// timeout is 5 minutes).
pub fn mapped_config(port: u16, destination: SocketAddr, limits: &str, log: &str) -> String {
    let idle = if limits.contains("idle_timeout") {
        ""
    } else {
        "idle_timeout = \"5m\""
    };
    format!(
        r#"[network]
internal = ["127.0.0.1"]

[limits]
{idle}
{limits}

[log]
access = "stderr"
{log}

[[service]]
name = "map"
kind = "mapped"
listen = ["127.0.0.1:{port}"]
destination = "{destination}"
"#
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
    let mut tries = 0;
    loop {
        let port = free_port();
        match Portico::try_start_with(bin, &config(port), opts) {
            Ok(p) => return (p, local(port)),
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
