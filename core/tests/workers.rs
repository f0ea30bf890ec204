//! Several tables sharing one ledger (one per `portico` worker): the limits
//! hold across them, only the first opens UDP ports and prints what is
//! listening, and a status request on one answers with all of them.

use std::net::SocketAddr;
use std::time::Instant;

use portico_core::ledger::Ledger;
use portico_core::{Action, ConnId, Event, ListenerId, Proxy, Refused, Side};

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

/// Opens every listener `proxy` asks for; returns its actions by kind.
fn start(proxy: &mut Proxy, now: Instant) -> (Vec<(ListenerId, SocketAddr)>, usize, Vec<String>) {
    let (mut tcp, mut udp, mut said) = (Vec::new(), 0, Vec::new());
    let mut opened = Vec::new();
    while let Some(a) = proxy.poll_action() {
        match a {
            Action::Listen { listener, addr } => {
                tcp.push((listener, addr));
                opened.push((listener, addr));
            }
            Action::ListenUdp { listener, addr } => {
                udp += 1;
                opened.push((listener, addr));
            }
            Action::Say(line) => said.push(line),
            _ => {}
        }
    }
    for (listener, local) in opened {
        proxy.handle(Event::Listening { listener, local }, now);
    }
    while let Some(a) = proxy.poll_action() {
        if let Action::Say(line) = a {
            said.push(line);
        }
    }
    (tcp, udp, said)
}

type Ports = Vec<(ListenerId, SocketAddr)>;

fn on(ports: &Ports, port: u16) -> ListenerId {
    ports
        .iter()
        .find(|(_, a)| a.port() == port)
        .map(|(l, _)| *l)
        .expect("a listener on that port")
}

fn workers(now: Instant) -> (Proxy, Proxy, Ports, Ports) {
    let config = portico_core::config::parse(CONFIG, "workers.toml").expect("config");
    let ledger = Ledger::new(2);
    let mut a = Proxy::worker(config.clone(), 1, now, ledger.clone(), 0);
    let mut b = Proxy::worker(config, 2, now, ledger, 1);
    let (tcp_a, udp_a, said_a) = start(&mut a, now);
    let (tcp_b, udp_b, said_b) = start(&mut b, now);
    assert_eq!((tcp_a.len(), udp_a), (2, 1), "worker 0 opens every port");
    assert_eq!(
        (tcp_b.len(), udp_b),
        (2, 0),
        "worker 1 opens the TCP ports only"
    );
    assert_eq!(said_a.len(), 3, "worker 0 says what listens: {said_a:?}");
    assert!(said_b.is_empty(), "worker 1 says nothing: {said_b:?}");
    (a, b, tcp_a, tcp_b)
}

/// The client of `conn` reset the connection.
fn reset(p: &mut Proxy, conn: ConnId, now: Instant) {
    let error = portico_core::IoKind::Reset;
    let side = Side::Client;
    p.handle(Event::IoError { conn, side, error }, now);
    while p.poll_action().is_some() {}
}

fn peer(ip: &str, port: u16) -> SocketAddr {
    format!("{ip}:{port}").parse().expect("address")
}

fn local() -> SocketAddr {
    peer("127.0.0.1", 8000)
}

#[test]
fn limits_hold_across_workers() {
    let now = Instant::now();
    let (mut a, mut b, pa, pb) = workers(now);
    let (la, lb) = (on(&pa, 8000), on(&pb, 8000));
    let c1 = a
        .accept_on(la, peer("10.0.0.1", 1), local(), now)
        .expect("1st");
    b.accept_on(lb, peer("10.0.0.1", 2), local(), now)
        .expect("2nd");
    // Two from 10.0.0.1 across both tables: a third is over max_per_client.
    assert_eq!(
        b.accept_on(lb, peer("10.0.0.1", 3), local(), now),
        Err(Refused::PerClient)
    );
    b.accept_on(lb, peer("10.0.0.2", 1), local(), now)
        .expect("3rd");
    // Three in all: over max_connections on either table.
    assert_eq!(
        a.accept_on(la, peer("10.0.0.3", 1), local(), now),
        Err(Refused::TooMany)
    );
    assert_eq!(
        b.accept_on(lb, peer("10.0.0.3", 1), local(), now),
        Err(Refused::TooMany)
    );
    // One closes on worker 0: worker 1 may take one more.
    reset(&mut a, c1, now);
    assert!(a.is_empty(), "worker 0's connection is gone");
    b.accept_on(lb, peer("10.0.0.3", 1), local(), now)
        .expect("room again");
}

/// Feeds `request` to a new status connection on `proxy`.
fn status_request(proxy: &mut Proxy, listener: ListenerId, request: &[u8], now: Instant) -> ConnId {
    let conn = proxy
        .accept_on(
            listener,
            peer("127.0.0.1", 40000),
            peer("127.0.0.1", 8080),
            now,
        )
        .expect("status connection");
    let buf = proxy.recv_buf(conn, Side::Client).expect("a buffer");
    buf[..request.len()].copy_from_slice(request);
    proxy.handle(
        Event::Read {
            conn,
            side: Side::Client,
            n: request.len(),
        },
        now,
    );
    conn
}

#[test]
fn status_answers_for_every_worker() {
    let now = Instant::now();
    let (mut a, mut b, pa, pb) = workers(now);
    while b.poll_action().is_some() {}
    a.accept_on(on(&pa, 8000), peer("10.0.0.7", 1), local(), now)
        .expect("on worker 0");
    let conn = status_request(
        &mut b,
        on(&pb, 8080),
        b"GET /connections HTTP/1.0\r\n\r\n",
        now,
    );
    let mut asked = false;
    while let Some(act) = b.poll_action() {
        asked |= act == Action::Gather { conn };
    }
    assert!(asked, "worker 1 asks for the others' tables");
    assert!(
        b.send_buf(conn, Side::Client).is_none(),
        "no answer before the other tables are in"
    );
    let part = a.snapshot(now);
    b.handle_gathered(conn, vec![part], now);
    let answer =
        String::from_utf8_lossy(b.send_buf(conn, Side::Client).expect("answer")).to_string();
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
    let before = b.send_buf(conn, Side::Client).map(|d| d.len());
    b.handle_gathered(conn, vec![a.snapshot(now)], now);
    assert_eq!(b.send_buf(conn, Side::Client).map(|d| d.len()), before);
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
    let mut rng = seed;
    // splitmix64
    let mut next = move |n: u64| {
        rng = rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) % n
    };
    let now = Instant::now();
    let config = portico_core::config::parse(CONFIG, "workers.toml").expect("config");
    let ledger = Ledger::new(3);
    let mut tables: Vec<(Proxy, ListenerId)> = (0..3)
        .map(|k| {
            let mut p = Proxy::worker(config.clone(), k as u64, now, ledger.clone(), k);
            let (tcp, _, _) = start(&mut p, now);
            let l = on(&tcp, 8000);
            (p, l)
        })
        .collect();
    let mut open: Vec<(usize, ConnId, &str)> = Vec::new();
    let clients = ["10.0.0.1", "10.0.0.2", "10.0.0.3"];
    let mut refused = [0u32; 2];
    for step in 0..2000 {
        let k = next(3) as usize;
        if next(3) < 2 || open.is_empty() {
            let ip = clients[next(3) as usize];
            let (p, l) = &mut tables[k];
            let r = p.accept_on(*l, peer(ip, 1000 + step as u16), local(), now);
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
            let (k, conn, _) = open.swap_remove(next(open.len() as u64) as usize);
            reset(&mut tables[k].0, conn, now);
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
        reset(&mut tables[k].0, conn, now);
    }
    let counts = ledger.lock();
    assert_eq!(
        (counts.sessions, counts.refusing, counts.per_client.len()),
        (0, 0, 0),
        "seed {seed}: the ledger counts nothing once all are gone"
    );
}
