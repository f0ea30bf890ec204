//! Drives one HTTP proxy connection through N keep-alive exchanges (a wrk
//! request, an nginx response with a 100-byte body), playing the runtime, to
//! measure the core's cost per exchange under callgrind:
//!
//! ```sh
//! cargo build --release --example http_exchange -p portico-core
//! valgrind --tool=callgrind target/release/examples/http_exchange 20000
//! ```
//!
//! Run it with two counts and divide the difference in instructions by the
//! difference in exchanges: what is left is the cost of one exchange.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use portico_core::{Accepted, Action, ConnId, Event, Proxy, Side};

const CONFIG: &str = r#"
[network]
internal = ["127.0.0.1"]
[log]
access = "off"
[[service]]
name = "web"
kind = "http"
listen = ["127.0.0.1:8080"]
"#;

const REQUEST: &[u8] =
    b"GET http://127.0.0.1:18081/index.html HTTP/1.1\r\nHost: 127.0.0.1:18081\r\n\r\n";

const RESPONSE_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Tue, 01 Dec 2026 16:00:00 GMT\r\nContent-Type: text/html\r\nContent-Length: 100\r\nLast-Modified: Tue, 01 Dec 2026 15:00:00 GMT\r\nConnection: keep-alive\r\nETag: \"674c8a10-64\"\r\nAccept-Ranges: bytes\r\n\r\n";

/// Drains the actions, answering connects at once.
fn drain(proxy: &mut Proxy, now: Instant) {
    let mut connected = Vec::new();
    while let Some(a) = proxy.poll_action() {
        match a {
            Action::Connect { conn, attempt, .. } => connected.push((conn, attempt)),
            Action::Fatal { message } => panic!("fatal: {message}"),
            _ => {}
        }
    }
    for (conn, attempt) in connected {
        let local: SocketAddr = "127.0.0.1:40000".parse().expect("address");
        let connected = Event::Connected {
            conn,
            attempt,
            local,
        };
        proxy.handle(connected, now);
        drain(proxy, now);
    }
}

fn feed(proxy: &mut Proxy, conn: ConnId, side: Side, bytes: &[u8], now: Instant) {
    let buf = proxy.recv_buf(conn, side).expect("a receive buffer");
    buf[..bytes.len()].copy_from_slice(bytes);
    proxy.handle(
        Event::Read {
            conn,
            side,
            n: bytes.len(),
        },
        now,
    );
    drain(proxy, now);
}

/// Writes out everything queued toward `side`, appending it to `out`.
fn flush(proxy: &mut Proxy, conn: ConnId, side: Side, out: &mut Vec<u8>, now: Instant) {
    while let Some(parts) = proxy.send_buf(conn, side) {
        let n = parts[0].len() + parts[1].len();
        out.extend_from_slice(parts[0]);
        out.extend_from_slice(parts[1]);
        proxy.handle(Event::Written { conn, side, n }, now);
        drain(proxy, now);
    }
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20_000);
    let mut response = RESPONSE_HEAD.to_vec();
    response.resize(RESPONSE_HEAD.len() + 100, b'x');

    let config = portico_core::config::parse(CONFIG, "bench.toml").expect("config");
    let mut now = Instant::now();
    let mut proxy = Proxy::new(config, 1, now);
    let mut listener = None;
    while let Some(a) = proxy.poll_action() {
        if let Action::Listen {
            listener: l, addr, ..
        } = a
        {
            listener = Some((l, addr));
        }
    }
    let (listener, local) = listener.expect("a listener");
    proxy.handle(Event::Listening { listener, local }, now);
    drain(&mut proxy, now);
    let peer: SocketAddr = "127.0.0.1:50000".parse().expect("address");
    let conn = proxy
        .accept(Accepted::new(listener, peer), now)
        .expect("accepted");
    drain(&mut proxy, now);

    let (mut sent_up, mut sent_down) = (Vec::new(), Vec::new());
    let (mut first_up, mut first_down) = (Vec::new(), Vec::new());
    for i in 0..n {
        now += Duration::from_micros(10);
        sent_up.clear();
        sent_down.clear();
        feed(&mut proxy, conn, Side::Client, REQUEST, now);
        flush(&mut proxy, conn, Side::Upstream, &mut sent_up, now);
        feed(&mut proxy, conn, Side::Upstream, &response, now);
        flush(&mut proxy, conn, Side::Client, &mut sent_down, now);
        if i == 0 {
            first_up = sent_up.clone();
            first_down = sent_down.clone();
        } else {
            assert!(
                sent_up == first_up && sent_down == first_down,
                "exchange {i} differs"
            );
        }
    }
    if std::env::var_os("SHOW").is_some() {
        println!("{}", String::from_utf8_lossy(&first_up));
        println!("{}", String::from_utf8_lossy(&first_down));
    }
}
