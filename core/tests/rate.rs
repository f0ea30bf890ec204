//! Bandwidth caps (`rate` on an allow rule) in simulated time: a capped
//! client moves data at its rate, give or take the one-second burst, while
//! an uncapped one on the same proxy is not slowed.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use portico_core::{Action, ConnId, Event, ListenerId, Proxy, Side};

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

/// Drives `proxy` for `secs` simulated seconds: every client always has
/// bytes to send and every destination always takes them. Returns the
/// flows in the order of `clients`.
fn run(clients: &[&str], secs: u64) -> Vec<u64> {
    let config = portico_core::config::parse(CONFIG, "rate.toml").expect("config");
    let t0 = Instant::now();
    let mut now = t0;
    let mut proxy = Proxy::new(config, 7, now);
    let listener = ListenerId::new(0, 0);
    let local: SocketAddr = "127.0.0.1:8000".parse().unwrap();
    while let Some(a) = proxy.poll_action() {
        if let Action::Listen { listener, addr } = a {
            proxy.handle(
                Event::Listening {
                    listener,
                    local: addr,
                },
                now,
            );
        }
    }
    let mut flows = Vec::new();
    for (i, c) in clients.iter().enumerate() {
        let peer: SocketAddr = format!("{c}:{}", 40000 + i).parse().unwrap();
        let id = proxy
            .accept_on(listener, peer, local, now)
            .expect("accepted");
        proxy.handle(
            Event::Connected {
                conn: id,
                local: "127.0.0.1:50000".parse().unwrap(),
            },
            now,
        );
        flows.push(Flow { id, delivered: 0 });
    }
    let end = t0 + Duration::from_secs(secs);
    let mut steps = 0u64;
    while now < end {
        steps += 1;
        assert!(steps < 10_000_000, "the simulation does not advance");
        while proxy.poll_action().is_some() {}
        let mut moved = false;
        for f in &mut flows {
            if let Some(buf) = proxy.recv_buf(f.id, Side::Client) {
                let n = buf.len();
                proxy.handle(
                    Event::Read {
                        conn: f.id,
                        side: Side::Client,
                        n,
                    },
                    now,
                );
                moved = true;
            }
            if let Some(data) = proxy.send_buf(f.id, Side::Upstream) {
                let n = data.len();
                f.delivered += n as u64;
                proxy.handle(
                    Event::Written {
                        conn: f.id,
                        side: Side::Upstream,
                        n,
                    },
                    now,
                );
                moved = true;
            }
        }
        if !moved {
            // Nothing can happen until a timer: jump to it.
            now = proxy.poll_timeout().unwrap_or(end).min(end).max(now);
            proxy.handle_timeout(now);
        } else {
            // The uncapped flow runs at "network speed": 1 ms a turn.
            now += Duration::from_millis(1);
            proxy.handle_timeout(now);
        }
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
