//! Bandwidth caps (`rate` on an allow rule) in simulated time: a capped
//! client moves data at its rate, give or take the one-second burst, while
//! an uncapped one on the same proxy is not slowed.

use std::net::SocketAddr;
use std::time::Duration;

use portico_core::sim::Runtime;
use portico_core::{ConnId, Event, ListenerId, Side};

const CONFIG: &str = r#"
[network]
internal = ["127.0.0.1"]
[log]
access = "off"
[[service]]
name = "map"
kind = "mapped"
listen = ["127.0.0.1:8000"]
destination = "127.0.0.1:9000"
[[rule]]
action = "allow"
clients = ["127.0.0.1/32"]
rate = "100KiB/s"
[[rule]]
action = "allow"
"#;

struct Flow {
    id: ConnId,
    /// Bytes the proxy wrote to the destination.
    delivered: u64,
}

/// Drives the table for `secs` simulated seconds: every client always has
/// bytes to send and every destination always takes them. Returns the
/// flows in the order of `clients`.
fn run(clients: &[&str], secs: u64) -> Vec<u64> {
    let mut rt = Runtime::started(CONFIG, 7);
    let listener = ListenerId::new(0, 0);
    let local: SocketAddr = "127.0.0.1:8000".parse().unwrap();
    let mut flows = Vec::new();
    for (i, c) in clients.iter().enumerate() {
        let peer: SocketAddr = format!("{c}:{}", 40000 + i).parse().unwrap();
        let id = rt.accept(listener, peer, Some(local)).expect("accepted");
        rt.drain();
        let local = "127.0.0.1:50000".parse().unwrap();
        rt.handle(Event::Connected {
            conn: id,
            attempt: 0,
            local,
        });
        flows.push(Flow { id, delivered: 0 });
    }
    let end = Duration::from_secs(secs);
    let mut steps = 0u64;
    while rt.now() < end {
        steps += 1;
        assert!(steps < 10_000_000, "the simulation does not advance");
        rt.drain();
        let mut moved = false;
        for f in &mut flows {
            moved |= rt.recv(f.id, Side::Client, |buf| buf.len()).is_some();
            let first = |p: [&[u8]; 2]| {
                if p[0].is_empty() {
                    p[1].len()
                } else {
                    p[0].len()
                }
            };
            if let Some(n) = rt.send(f.id, Side::Upstream, first) {
                f.delivered += n as u64;
                moved = true;
            }
        }
        if !moved {
            // Nothing can happen until a timer: jump to it.
            let next = rt.deadline().unwrap_or(end).min(end).max(rt.now());
            rt.set_now(next);
        } else {
            // The uncapped flow runs at "network speed": 1 ms a turn.
            rt.advance(Duration::from_millis(1));
        }
        rt.handle_timeout();
    }
    flows.iter().map(|f| f.delivered).collect()
}

#[test]
fn capped_client_moves_at_its_rate() {
    let secs = 20;
    let got = run(&["127.0.0.1", "127.0.0.2"], secs);
    let rate = 100 * 1024u64;
    // The burst (one second's worth) plus the steady rate.
    let expected = rate * (secs + 1);
    let capped = got[0];
    assert!(
        capped as f64 >= expected as f64 * 0.9 && capped as f64 <= expected as f64 * 1.1,
        "capped client moved {capped} bytes in {secs} s, expected {expected} ± 10%"
    );
    assert!(
        got[1] > capped * 10,
        "the uncapped client must not be slowed by the other's cap: {} vs {capped}",
        got[1]
    );
}

#[test]
fn connections_of_one_client_share_its_cap() {
    let secs = 20;
    let got = run(&["127.0.0.1", "127.0.0.1"], secs);
    let rate = 100 * 1024u64;
    let expected = rate * (secs + 1);
    let total = got[0] + got[1];
    assert!(
        total as f64 >= expected as f64 * 0.9 && total as f64 <= expected as f64 * 1.1,
        "two connections of one capped client moved {total} bytes together, expected {expected} ± 10%"
    );
}
