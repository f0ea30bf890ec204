//! tlsload: the load of tests/bench/tls.sh. An HTTP proxy client that
//! speaks to the proxy in the clear or over TLS (an "HTTPS proxy"), which
//! wrk cannot. One thread per connection, blocking sockets, bounded in time.
//!
//! ```text
//! tlsload --mode connect|keepalive --proxy ADDR --dest IP:PORT
//!         [--tls CA.pem] [--no-resume] [--tls12] [--concurrency 16] [--seconds 4]
//!         [--rate PER_SECOND] [--path /index.html] [--scenario NAME] [--forwarder NAME]
//! ```
//!
//! - `connect`: over and over, a new connection to the proxy (TLS handshake
//!   first with `--tls`), `CONNECT dest`, its 200, one `GET` with
//!   `Connection: close`, the response read to the proxy's close.
//! - `keepalive`: each thread keeps one connection to the proxy and sends
//!   absolute-form `GET http://dest/path` on it, one after the other.
//!
//! `--rate` paces the requests (all threads together) to at most that many
//! a second: a proxy's CPU per request measured at another's rate.
//! `--no-resume` makes every TLS handshake a full one (no session
//! resumption); `--tls12` offers TLS 1.2 alone (else 1.3 and 1.2). The
//! client offers X25519 first, then P-256, as curl and browsers do. Output: `scenario forwarder metric value` lines, as the
//! harness in ../shared/bench prints (`req_per_s`, `ok`, `errors`,
//! `resumed`, `p50_ms`, `p99_ms`). Exit status 1 when a request failed.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

/// How long one read or write may block: a stuck proxy ends the thread's
/// run instead of the whole load.
const IO_LIMIT: Duration = Duration::from_secs(5);

trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Connect,
    KeepAlive,
}

struct Opts {
    mode: Mode,
    proxy: SocketAddr,
    dest: SocketAddr,
    tls: Option<Arc<rustls::ClientConfig>>,
    concurrency: usize,
    seconds: f64,
    /// Requests a second, all threads together; 0: as fast as they go.
    rate: f64,
    path: String,
    scenario: String,
    forwarder: String,
}

#[derive(Default)]
struct Counts {
    ok: AtomicU64,
    errors: AtomicU64,
    resumed: AtomicU64,
}

fn fail(msg: impl Into<String>) -> io::Error {
    io::Error::other(msg.into())
}

fn usage(msg: &str) -> ! {
    eprintln!("tlsload: {msg}\n(see the head of tests/bench/tlsload/src/main.rs for the options)");
    std::process::exit(2)
}

fn parse() -> Opts {
    let mut map = std::collections::HashMap::new();
    let (mut no_resume, mut tls12) = (false, false);
    let mut args = std::env::args().skip(1);
    while let Some(k) = args.next() {
        match k.as_str() {
            "--no-resume" => no_resume = true,
            "--tls12" => tls12 = true,
            _ if k.starts_with("--") => {
                let v = args
                    .next()
                    .unwrap_or_else(|| usage(&format!("{k} needs a value")));
                map.insert(k[2..].to_string(), v);
            }
            _ => usage(&format!("unexpected {k}")),
        }
    }
    let get = |k: &str, d: &str| map.get(k).cloned().unwrap_or_else(|| d.to_string());
    let addr = |k: &str| -> SocketAddr {
        get(k, "")
            .parse()
            .unwrap_or_else(|_| usage(&format!("--{k} IP:PORT")))
    };
    let mode = match get("mode", "").as_str() {
        "connect" => Mode::Connect,
        "keepalive" => Mode::KeepAlive,
        _ => usage("--mode connect|keepalive"),
    };
    let tls = map.get("tls").map(|ca| client_config(ca, no_resume, tls12));
    Opts {
        mode,
        proxy: addr("proxy"),
        dest: addr("dest"),
        tls,
        concurrency: get("concurrency", "16")
            .parse()
            .unwrap_or_else(|_| usage("--concurrency N")),
        seconds: get("seconds", "4")
            .parse()
            .unwrap_or_else(|_| usage("--seconds S")),
        rate: get("rate", "0")
            .parse()
            .unwrap_or_else(|_| usage("--rate PER_SECOND")),
        path: get("path", "/index.html"),
        scenario: get("scenario", "tls"),
        forwarder: get("forwarder", "unknown"),
    }
}

/// A client trusting the CA in `ca` alone; resumption (rustls' default
/// in-memory cache, shared by the threads) unless `no_resume`; TLS 1.2
/// alone with `tls12`.
fn client_config(ca: &str, no_resume: bool, tls12: bool) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca).unwrap_or_else(|e| usage(&format!("{ca}: {e}")));
    for c in certs {
        let c = c.unwrap_or_else(|e| usage(&format!("{ca}: {e}")));
        roots
            .add(c)
            .unwrap_or_else(|e| usage(&format!("{ca}: {e}")));
    }
    // ring's provider, as the core's; its own group order starts with
    // P-384, which no common client sends first.
    #[allow(deprecated)]
    let mut provider = rustls::crypto::ring::default_provider();
    use rustls::crypto::ring::kx_group;
    provider.kx_groups = vec![kx_group::X25519, kx_group::SECP256R1, kx_group::SECP384R1];
    let versions: &[&rustls::SupportedProtocolVersion] = if tls12 {
        &[&rustls::version::TLS12]
    } else {
        rustls::DEFAULT_VERSIONS
    };
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(versions)
        .unwrap_or_else(|e| usage(&format!("TLS versions: {e}")))
        .with_root_certificates(roots)
        .with_no_client_auth();
    if no_resume {
        config.resumption = rustls::client::Resumption::disabled();
    }
    Arc::new(config)
}

/// A connection to the proxy; over TLS, with the handshake done (so that a
/// resumed one can be counted).
fn open(o: &Opts, counts: &Counts) -> io::Result<Box<dyn Stream>> {
    let s = TcpStream::connect(o.proxy)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(IO_LIMIT))?;
    s.set_write_timeout(Some(IO_LIMIT))?;
    let Some(config) = &o.tls else {
        return Ok(Box::new(s));
    };
    let name = ServerName::try_from("localhost").map_err(|e| fail(e.to_string()))?;
    let conn =
        rustls::ClientConnection::new(config.clone(), name).map_err(|e| fail(e.to_string()))?;
    let mut t = rustls::StreamOwned::new(conn, s);
    while t.conn.is_handshaking() {
        t.conn.complete_io(&mut t.sock)?;
    }
    if t.conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
        counts.resumed.fetch_add(1, Ordering::Relaxed);
    }
    Ok(Box::new(t))
}

/// Reads into `buf` until it holds a whole head; returns the head's length.
fn read_head(s: &mut dyn Stream, buf: &mut Vec<u8>) -> io::Result<usize> {
    let mut chunk = [0u8; 16384];
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Ok(i + 4);
        }
        if buf.len() > 65536 {
            return Err(fail("a response head over 64 KiB"));
        }
        match s.read(&mut chunk)? {
            0 => return Err(fail("the proxy closed before a whole response head")),
            n => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn status_ok(head: &[u8]) -> bool {
    head.starts_with(b"HTTP/1.1 200") || head.starts_with(b"HTTP/1.0 200")
}

fn content_length(head: &[u8]) -> io::Result<usize> {
    let text = String::from_utf8_lossy(head).to_ascii_lowercase();
    text.lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| fail("a response without Content-Length"))
}

/// One response whose head is in `buf` or still to come, with its body:
/// removed from `buf`, which keeps whatever follows it.
fn read_response(s: &mut dyn Stream, buf: &mut Vec<u8>) -> io::Result<()> {
    let head = read_head(s, buf)?;
    if !status_ok(buf) {
        return Err(fail(format!(
            "status {:?}",
            String::from_utf8_lossy(&buf[..buf.len().min(12)])
        )));
    }
    let end = head + content_length(&buf[..head])?;
    let mut chunk = [0u8; 16384];
    while buf.len() < end {
        match s.read(&mut chunk)? {
            0 => return Err(fail("the proxy closed inside a body")),
            n => buf.extend_from_slice(&chunk[..n]),
        }
    }
    buf.drain(..end);
    Ok(())
}

/// CONNECT, one GET, the response, then reading on to the proxy's close so
/// that the closed connection's TIME_WAIT stays on the proxy's side.
fn connect_once(o: &Opts, counts: &Counts) -> io::Result<()> {
    let mut s = open(o, counts)?;
    let d = o.dest;
    write!(s, "CONNECT {d} HTTP/1.1\r\nHost: {d}\r\n\r\n")?;
    s.flush()?;
    let mut buf = Vec::with_capacity(1024);
    let head = read_head(&mut *s, &mut buf)?;
    if !status_ok(&buf) || head != buf.len() {
        return Err(fail("CONNECT: not a bare 200"));
    }
    buf.clear();
    write!(
        s,
        "GET {} HTTP/1.1\r\nHost: {d}\r\nUser-Agent: tlsload\r\nConnection: close\r\n\r\n",
        o.path
    )?;
    s.flush()?;
    read_response(&mut *s, &mut buf)?;
    let mut chunk = [0u8; 4096];
    // The response is whole: how the proxy ends the connection (TLS
    // close_notify or not) does not matter.
    while let Ok(n) = s.read(&mut chunk) {
        if n == 0 {
            break;
        }
    }
    Ok(())
}

fn run_thread(o: &Opts, counts: &Counts, deadline: Instant) -> Vec<f64> {
    let mut lat = Vec::new();
    let mut first_error = None;
    let request = format!(
        "GET http://{d}{p} HTTP/1.1\r\nHost: {d}\r\nUser-Agent: tlsload\r\n\r\n",
        d = o.dest,
        p = o.path
    );
    let mut kept: Option<(Box<dyn Stream>, Vec<u8>)> = None;
    // Each thread's share of the rate: one request every `every`.
    let every = (o.rate > 0.0).then(|| Duration::from_secs_f64(o.concurrency as f64 / o.rate));
    let mut next = Instant::now();
    while Instant::now() < deadline {
        if let Some(every) = every {
            let now = Instant::now();
            if next > now {
                std::thread::sleep(next - now);
            }
            next += every;
        }
        let t = Instant::now();
        let r = match o.mode {
            Mode::Connect => connect_once(o, counts),
            Mode::KeepAlive => (|| {
                if kept.is_none() {
                    kept = Some((open(o, counts)?, Vec::with_capacity(4096)));
                }
                let Some((s, buf)) = kept.as_mut() else {
                    unreachable!("just opened")
                };
                s.write_all(request.as_bytes())?;
                s.flush()?;
                read_response(&mut **s, buf)
            })(),
        };
        match r {
            Ok(()) => {
                counts.ok.fetch_add(1, Ordering::Relaxed);
                lat.push(t.elapsed().as_secs_f64() * 1e3);
            }
            Err(e) => {
                counts.errors.fetch_add(1, Ordering::Relaxed);
                kept = None;
                if first_error.is_none() {
                    eprintln!("tlsload: {}: first error: {e}", o.forwarder);
                    first_error = Some(());
                }
                // A refusing proxy must not turn the run into a busy loop.
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
    lat
}

fn main() {
    let o = Arc::new(parse());
    let counts = Arc::new(Counts::default());
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs_f64(o.seconds);
    let threads: Vec<_> = (0..o.concurrency)
        .map(|_| {
            let (o, counts) = (o.clone(), counts.clone());
            std::thread::spawn(move || run_thread(&o, &counts, deadline))
        })
        .collect();
    let mut lat = Vec::new();
    for t in threads {
        match t.join() {
            Ok(l) => lat.extend(l),
            Err(_) => {
                counts.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    let elapsed = t0.elapsed().as_secs_f64();
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    let (ok, errors) = (
        counts.ok.load(Ordering::Relaxed),
        counts.errors.load(Ordering::Relaxed),
    );
    let (s, f) = (&o.scenario, &o.forwarder);
    println!("{s} {f} req_per_s {:.0}", ok as f64 / elapsed);
    println!("{s} {f} ok {ok}");
    println!("{s} {f} errors {errors}");
    println!("{s} {f} resumed {}", counts.resumed.load(Ordering::Relaxed));
    println!("{s} {f} elapsed_s {elapsed:.2}");
    println!("{s} {f} p50_ms {:.3}", pct(0.5));
    println!("{s} {f} p99_ms {:.3}", pct(0.99));
    std::process::exit(if errors > 0 || ok == 0 { 1 } else { 0 })
}
