//! Several tables sharing one ledger (one per `portico` worker): the limits
//! hold across them, only the first opens UDP ports and prints what is
//! listening, and a status request on one answers with all of them.

use std::net::SocketAddr;
use std::time::Instant;

use portico_core::sim::{Rng, Runtime};
use portico_core::{Action, ConnId, Event, Ledger, ListenerId, Refused, Side};

const CONFIG: &str = r#"
[network]
internal = ["127.0.0.1"]
[limits]
max_connections = 3
max_per_client = 2
[log]
access = "off"
[[service]]
name = "map"
kind = "mapped"
listen = ["127.0.0.1:8000"]
destination = "127.0.0.1:9000"
[[service]]
name = "dns"
kind = "mapped"
protocol = "udp"
listen = ["127.0.0.1:5353"]
destination = "127.0.0.1:53"
[[service]]
name = "status"
kind = "status"
listen = ["127.0.0.1:8080"]
"#;

/// The table of worker `k` of those sharing `ledger`, its listeners open.
fn worker(k: usize, ledger: &Ledger, now: Instant) -> Runtime {
    let config = portico_core::sim::parse(CONFIG);
    let mut rt = Runtime::worker(config, k as u64 + 1, now, ledger.clone(), k);
    rt.open();
    rt
}

/// The TCP listener on `port`.
fn on(rt: &Runtime, port: u16) -> ListenerId {
    rt.listeners()
        .iter()
        .find(|l| !l.udp && l.asked.port() == port)
        .map(|l| l.id)
        .expect("a listener on that port")
}

fn workers(now: Instant) -> (Runtime, Runtime) {
    let ledger = Ledger::new(2);
    let (a, b) = (worker(0, &ledger, now), worker(1, &ledger, now));
    let count = |rt: &Runtime| {
        let udp = rt.listeners().iter().filter(|l| l.udp).count();
        (rt.listeners().len() - udp, udp)
    };
    assert_eq!(count(&a), (2, 1), "worker 0 opens every port");
    assert_eq!(count(&b), (2, 0), "worker 1 opens the TCP ports only");
    assert_eq!(a.says.len(), 3, "worker 0 says what listens: {:?}", a.says);
    assert!(b.says.is_empty(), "worker 1 says nothing: {:?}", b.says);
    (a, b)
}

/// The client of `conn` reset the connection.
fn reset(rt: &mut Runtime, conn: ConnId) {
    let error = portico_core::IoKind::Reset;
    let side = Side::Client;
    rt.handle(Event::IoError { conn, side, error });
    rt.drain();
}

fn peer(ip: &str, port: u16) -> SocketAddr {
    format!("{ip}:{port}").parse().expect("address")
}

fn local() -> Option<SocketAddr> {
    Some(peer("127.0.0.1", 8000))
}

#[test]
fn limits_hold_across_workers() {
    let (mut a, mut b) = workers(Instant::now());
    let (la, lb) = (on(&a, 8000), on(&b, 8000));
    let c1 = a.accept(la, peer("10.0.0.1", 1), local()).expect("1st");
    b.accept(lb, peer("10.0.0.1", 2), local()).expect("2nd");
    // Two from 10.0.0.1 across both tables: a third is over max_per_client.
    assert_eq!(
        b.accept(lb, peer("10.0.0.1", 3), local()),
        Err(Refused::PerClient)
    );
    b.accept(lb, peer("10.0.0.2", 1), local()).expect("3rd");
    // Three in all: over max_connections on either table.
    assert_eq!(
        a.accept(la, peer("10.0.0.3", 1), local()),
        Err(Refused::TooMany)
    );
    assert_eq!(
        b.accept(lb, peer("10.0.0.3", 1), local()),
        Err(Refused::TooMany)
    );
    // One closes on worker 0: worker 1 may take one more.
    reset(&mut a, c1);
    assert!(a.is_empty(), "worker 0's connection is gone");
    b.accept(lb, peer("10.0.0.3", 1), local())
        .expect("room again");
}

/// Feeds `request` to a new status connection on `rt`.
fn status_request(rt: &mut Runtime, listener: ListenerId, request: &[u8]) -> ConnId {
    let at = Some(peer("127.0.0.1", 8080));
    let conn = rt
        .accept(listener, peer("127.0.0.1", 40000), at)
        .expect("status connection");
    rt.feed(conn, Side::Client, request);
    conn
}

#[test]
fn status_answers_for_every_worker() {
    let (mut a, mut b) = workers(Instant::now());
    let mapped = on(&a, 8000);
    a.accept(mapped, peer("10.0.0.7", 1), local())
        .expect("on worker 0");
    let status = on(&b, 8080);
    let conn = status_request(&mut b, status, b"GET /connections HTTP/1.0\r\n\r\n");
    let asked = b.drain().contains(&Action::Gather { conn });
    assert!(asked, "worker 1 asks for the others' tables");
    assert!(
        b.send_buf(conn, Side::Client).is_none(),
        "no answer before the other tables are in"
    );
    let part = a.snapshot();
    b.handle_gathered(conn, vec![part]);
    let shown = |b: &Runtime| b.send_buf(conn, Side::Client).map(|p| p.concat());
    let answer = String::from_utf8_lossy(&shown(&b).expect("answer")).to_string();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.contains("10.0.0.7:1"),
        "worker 0's connection is listed: {answer}"
    );
    assert!(answer.contains("\"0:"), "ids name their worker: {answer}");
    assert!(
        answer.contains("\"1:"),
        "the status connection itself, on worker 1: {answer}"
    );
    // A second answer for the same request changes nothing.
    let before = shown(&b).map(|d| d.len());
    b.handle_gathered(conn, vec![a.snapshot()]);
    assert_eq!(shown(&b).map(|d| d.len()), before);
}

/// Seeded random accepts and closes spread over three tables: the limits
/// hold at every step, and once every connection is gone the ledger counts
/// nothing.
#[test]
fn random_accepts_and_closes_keep_the_ledger_exact() {
    let seed: u64 = std::env::var("PORTICO_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_0f1e_d6e5);
    let mut rng = Rng::new(seed);
    let now = Instant::now();
    let ledger = Ledger::new(3);
    let mut tables: Vec<(Runtime, ListenerId)> = (0..3)
        .map(|k| {
            let rt = worker(k, &ledger, now);
            let l = on(&rt, 8000);
            (rt, l)
        })
        .collect();
    let mut open: Vec<(usize, ConnId, &str)> = Vec::new();
    let clients = ["10.0.0.1", "10.0.0.2", "10.0.0.3"];
    let mut refused = [0u32; 2];
    for step in 0..2000 {
        let k = rng.below(3);
        if rng.below(3) < 2 || open.is_empty() {
            let ip = clients[rng.below(3)];
            let (rt, l) = &mut tables[k];
            let r = rt.accept(*l, peer(ip, 1000 + step as u16), local());
            rt.drain();
            let same = open.iter().filter(|(_, _, c)| *c == ip).count();
            match r {
                Ok(c) => open.push((k, c, ip)),
                Err(Refused::TooMany) => {
                    refused[0] += 1;
                    assert!(open.len() >= 3, "seed {seed}: TooMany with {}", open.len())
                }
                Err(Refused::PerClient) => {
                    refused[1] += 1;
                    assert!(same >= 2, "seed {seed}: PerClient with {same}")
                }
                Err(e) => panic!("seed {seed}: step {step}: {e:?}"),
            }
        } else {
            let (k, conn, _) = open.swap_remove(rng.below(open.len()));
            reset(&mut tables[k].0, conn);
        }
        assert!(open.len() <= 3, "seed {seed}: over max_connections");
        for ip in clients {
            let n = open.iter().filter(|(_, _, c)| *c == ip).count();
            assert!(n <= 2, "seed {seed}: {ip} over max_per_client");
        }
    }
    assert!(
        refused.iter().all(|n| *n > 0),
        "seed {seed}: both limits were reached at some step: {refused:?}"
    );
    for (k, conn, _) in open.drain(..) {
        reset(&mut tables[k].0, conn);
    }
    let counts = ledger.lock();
    assert_eq!(
        (counts.sessions, counts.refusing, counts.per_client.len()),
        (0, 0, 0),
        "seed {seed}: the ledger counts nothing once all are gone"
    );
}
