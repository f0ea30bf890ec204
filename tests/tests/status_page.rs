//! The status page as a person opens it when something is wrong, end to end
//! through both binaries: in headless Chromium (`/usr/bin/chromium`, Debian
//! package chromium), under load, what the page's scripts drew from the
//! JSON answers (version, uptime, last reload, bytes in binary units, each
//! service's chart of its last minutes, refusals by cause, the top users,
//! the connections in flight) and a screenshot that is a real picture; and
//! `/metrics`' process lines following a failed and a successful reload.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use portico_tests::browser::{decode_png, dump_dom, rows, screenshot, tbody};
use portico_tests::json::{parse_json, Json};
use portico_tests::{
    both, config_head, connect, echo_check, free_port, local, mapped_service, pattern, poll_until,
    read_outcome, require, service, spawn_bounded, start_on_free_ports, Behaviour, Bin,
    StartOptions, TempDir, TestServer, ALICE, CLIENT_SEED, PROMPTLY,
};

both!(page_under_load_in_chromium, metrics_and_page_follow_reloads);

/// The version every binary of the workspace carries.
const VERSION: &str = env!("CARGO_PKG_VERSION");
/// How often a bounded poll looks again.
const EVERY: Duration = Duration::from_millis(20);
/// The screenshot's size.
const SHOT: (u32, u32) = (1280, 1400);
/// `blocked` refuses everyone; the rest is open.
const RULES: &str = "\n[[rule]]\naction = \"deny\"\nservices = [\"blocked\"]\n\n\
                     [[rule]]\naction = \"allow\"\n";
/// Several event loops in `portico` (the status answers gather them all);
/// `portico-threaded` takes the key and runs its one table.
const WORKERS: &str = "\n[runtime]\nworkers = 3\n";

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

// ---------------------------------------------------------------------------
// HTTP and /metrics.

/// `GET path` on the status service: the status code and the body.
fn get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let mut s = connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .map_err(|e| format!("write the request: {e}"))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .map_err(|e| format!("read the reply: {e}"))?;
    let text = String::from_utf8(raw).map_err(|e| format!("reply not UTF-8: {e}"))?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no complete head in {text:?}"))?;
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad status line in {head:?}"))?;
    Ok((code, body.to_string()))
}

fn get_ok(bin: Bin, addr: SocketAddr, path: &str) -> String {
    match get(addr, path) {
        Ok((200, body)) => body,
        Ok((code, body)) => panic!("{bin}: GET {path}: {code}\n{body}"),
        Err(e) => panic!("{bin}: GET {path}: {e}"),
    }
}

fn get_json(bin: Bin, addr: SocketAddr, path: &str) -> Json {
    let body = get_ok(bin, addr, path);
    parse_json(&body).unwrap_or_else(|e| panic!("{bin}: {path} is not JSON: {e}\n{body}"))
}

/// The value of the one sample `series` (name and labels as written) in
/// Prometheus text.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
}

/// The four process lines of `/metrics`: build info, start time, whether
/// the last reload worked, and when the configuration last loaded.
fn process_lines(bin: Bin, status: SocketAddr) -> (f64, f64, f64, f64) {
    let m = get_ok(bin, status, "/metrics");
    let get = |series: &str| {
        sample(&m, series).unwrap_or_else(|| panic!("{bin}: /metrics has no {series}:\n{m}"))
    };
    for family in [
        "portico_build_info",
        "process_start_time_seconds",
        "portico_config_last_reload_successful",
        "portico_config_last_reload_success_timestamp_seconds",
    ] {
        assert!(
            m.contains(&format!("\n# TYPE {family} gauge\n")),
            "{bin}: /metrics has no gauge TYPE line for {family}:\n{m}"
        );
    }
    (
        get(&format!("portico_build_info{{version=\"{VERSION}\"}}")),
        get("process_start_time_seconds"),
        get("portico_config_last_reload_successful"),
        get("portico_config_last_reload_success_timestamp_seconds"),
    )
}

fn num(j: &Json, key: &str) -> Option<i64> {
    match j.get(key)? {
        Json::Num(n) => n.parse().ok(),
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// Traffic.

/// Echoes `n` bytes through a fresh connection to `addr` and closes it
/// cleanly.
fn echo_once(addr: SocketAddr, seed: u64, n: usize) -> Result<(), String> {
    let mut s = connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    echo_check(&mut s, &pattern(seed, n)).map_err(|e| format!("echo {n} bytes: {e}"))?;
    close_echo(&mut s)
}

/// Ends an echo tunnel: our side shut, the rest read to EOF (nothing).
fn close_echo(s: &mut TcpStream) -> Result<(), String> {
    s.shutdown(Shutdown::Write)
        .map_err(|e| format!("shutdown: {e}"))?;
    let mut rest = Vec::new();
    s.read_to_end(&mut rest)
        .map_err(|e| format!("read to EOF: {e}"))?;
    if rest.is_empty() {
        Ok(())
    } else {
        Err(format!("{} unexpected bytes after the echo", rest.len()))
    }
}

fn read_exact_pair(s: &mut TcpStream, want: [u8; 2], what: &str) -> Result<(), String> {
    let mut m = [0u8; 2];
    s.read_exact(&mut m).map_err(|e| format!("{what}: {e}"))?;
    if m == want {
        Ok(())
    } else {
        Err(format!("{what}: {m:02x?}, want {want:02x?}"))
    }
}

/// SOCKS5 with username/password (RFC 1929) and CONNECT to the IPv4
/// `dest`; Ok once the proxy says it connected.
fn socks5_as(s: &mut TcpStream, dest: SocketAddr, user: &str, pass: &str) -> Result<(), String> {
    let SocketAddr::V4(d) = dest else {
        return Err("IPv4 destinations only".into());
    };
    s.write_all(&[5, 1, 2]).map_err(|e| e.to_string())?;
    read_exact_pair(s, [5, 2], "method reply")?;
    let mut auth = vec![1, user.len() as u8];
    auth.extend_from_slice(user.as_bytes());
    auth.push(pass.len() as u8);
    auth.extend_from_slice(pass.as_bytes());
    s.write_all(&auth).map_err(|e| e.to_string())?;
    read_exact_pair(s, [1, 0], "auth reply")?;
    let mut req = vec![5, 1, 0, 1];
    req.extend_from_slice(&d.ip().octets());
    req.extend_from_slice(&d.port().to_be_bytes());
    s.write_all(&req).map_err(|e| e.to_string())?;
    // VER REP RSV ATYP=1, then 4 + 2 bytes of address.
    let mut reply = [0u8; 10];
    s.read_exact(&mut reply)
        .map_err(|e| format!("CONNECT reply: {e}"))?;
    if reply[..4] == [5, 0, 0, 1] {
        Ok(())
    } else {
        Err(format!("CONNECT reply {reply:02x?}"))
    }
}

/// Bytes in binary units, as the page writes them.
fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

// ---------------------------------------------------------------------------
// What Chromium rendered.

/// The text inside the element with `id` (up to its first child tag).
fn text_of<'a>(dom: &'a str, id: &str) -> &'a str {
    let at = dom
        .find(&format!(" id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id} in the DOM:\n{dom}"));
    let rest = &dom[at..];
    let start = rest.find('>').map_or(rest.len(), |i| i + 1);
    let rest = &rest[start..];
    &rest[..rest.find('<').unwrap_or(rest.len())]
}

/// The start tag of the element with `id`.
fn tag_of<'a>(dom: &'a str, id: &str) -> &'a str {
    let at = dom
        .find(&format!(" id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id} in the DOM:\n{dom}"));
    let open = dom[..at].rfind('<').unwrap_or(0);
    let end = dom[at..].find('>').map_or(dom.len(), |i| at + i);
    &dom[open..end]
}

/// The value of attribute `name` in the start tag `tag`.
fn attr<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let at = tag.find(&format!(" {name}=\""))? + name.len() + 3;
    let rest = &tag[at..];
    Some(&rest[..rest.find('"')?])
}

/// The chart `series` of `service` in the page: its start tag.
fn chart<'a>(dom: &'a str, service: &str, series: &str) -> &'a str {
    let at = dom
        .find(&format!("data-service=\"{service}\""))
        .unwrap_or_else(|| panic!("no chart box for {service} in the page:\n{dom}"));
    let rest = &dom[at..];
    let rest = &rest[..rest.find("</div>").unwrap_or(rest.len())];
    let svg = rest
        .split("<svg")
        .skip(1)
        .find(|t| attr(t, "data-series") == Some(series))
        .unwrap_or_else(|| panic!("no {series} chart for {service}:\n{rest}"));
    &svg[..svg.find('>').unwrap_or(svg.len())]
}

/// The numbers a chart says it drew (one per interval, oldest first).
fn chart_values(tag: &str, name: &str) -> Vec<u64> {
    let list = attr(tag, name).unwrap_or_else(|| panic!("no {name} in the chart {tag}"));
    list.split(',')
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{v:?} in {name} is not a count: {tag}"))
        })
        .collect()
}

/// `up 42s`, `3m 07s`, `1h 02m`: the seconds, for uptimes under a day.
fn uptime_secs(text: &str) -> Option<u64> {
    let mut secs = 0;
    if !text.is_ascii() {
        return None;
    }
    for part in text.split(' ') {
        let (n, unit) = part.split_at(part.len().checked_sub(1)?);
        let n: u64 = n.parse().ok()?;
        secs += n * match unit {
            "h" => 3600,
            "m" => 60,
            "s" => 1,
            _ => return None,
        };
    }
    Some(secs)
}

// ---------------------------------------------------------------------------
// The screenshot.

/// The screenshot is a PNG of the window's size that shows something:
/// many colours (text, the charts' lines), none of them nearly everywhere.
fn check_screenshot(bin: Bin, path: &Path) {
    let png = std::fs::read(path)
        .unwrap_or_else(|e| panic!("{bin}: no screenshot at {}: {e}", path.display()));
    let pic = decode_png(&png).unwrap_or_else(|e| panic!("{bin}: the screenshot: {e}"));
    assert_eq!((pic.width, pic.height), SHOT, "{bin}: screenshot size");
    let mut counts = std::collections::HashMap::new();
    for p in &pic.pixels {
        *counts.entry(*p).or_insert(0usize) += 1;
    }
    let commonest = counts.values().copied().max().unwrap_or(0);
    assert!(
        counts.len() >= 16 && commonest * 100 < pic.pixels.len() * 99,
        "{bin}: the screenshot is nearly uniform: {} colours, the commonest on {commonest} of {} \
         pixels",
        counts.len(),
        pic.pixels.len()
    );
    // The charts' line colours (the page's CSS) are in it.
    for (name, rgb) in [("connections", 0x2a62b8u32), ("down", 0x2e8b57)] {
        assert!(
            pic.pixels.iter().any(|p| p >> 8 == rgb),
            "{bin}: no pixel of the {name} chart's colour #{rgb:06x} in the screenshot"
        );
    }
}

// ---------------------------------------------------------------------------
// 1. The page under load.

/// Counts of the load a thread drove through the mapped port.
struct Load {
    connections: u64,
    bytes: u64,
}

/// Echo connections one after another to `addr` until `stop` (and at
/// least `min` of them), each of `size` bytes.
fn drive(addr: SocketAddr, stop: Arc<AtomicBool>, min: u64, size: usize) -> Result<Load, String> {
    let mut load = Load {
        connections: 0,
        bytes: 0,
    };
    while load.connections < min || !stop.load(Ordering::Relaxed) {
        echo_once(addr, CLIENT_SEED + load.connections, size)
            .map_err(|e| format!("connection {}: {e}", load.connections))?;
        load.connections += 1;
        load.bytes += size as u64;
    }
    Ok(load)
}

/// Under load through a mapped port, with an authenticated SOCKS user, a
/// refused connection and a tunnel held open, the page in Chromium shows
/// (after its scripts fetched the JSON answers): the version, the uptime
/// and the start as the last load; the mapped port's bytes in MiB and
/// its chart of connections and bytes per interval adding up to exactly
/// the load; the refusal under its cause, like every cause `/services`
/// lists; alice as the top user; the held tunnel in the connections table.
/// A screenshot taken while the load runs is a real, non-uniform PNG.
fn page_under_load_in_chromium(bin: Bin) {
    require("chromium", "chromium");
    let test_start = Instant::now();
    let server = TestServer::start(Behaviour::Echo);
    let dest = server.addr();
    // Nothing listens here: `dead` cannot connect.
    let nowhere = local(free_port());
    let (p, ports) = start_on_free_ports(bin, 5, StartOptions::default(), |ports| {
        format!(
            "{}{ALICE}{}{}{}{}{}{WORKERS}{RULES}",
            config_head("idle_timeout = \"5m\"", ""),
            service("st", "status", ports[0], ""),
            mapped_service("map", ports[1], dest, ""),
            service("socks", "socks", ports[2], "auth = true"),
            mapped_service("blocked", ports[3], dest, ""),
            mapped_service("dead", ports[4], nowhere, ""),
        )
    });
    let status = local(ports[0]);
    let (map, socks, blocked) = (local(ports[1]), local(ports[2]), local(ports[3]));
    let dead = local(ports[4]);
    let url = format!("http://{status}/");

    // A tunnel held open for the connections table.
    let mut held = connect(map).unwrap_or_else(|e| panic!("{bin}: connect: {e}"));
    echo_check(&mut held, b"held open").unwrap_or_else(|e| panic!("{bin}: held tunnel: {e}"));
    let held_client = held.local_addr().expect("local address").to_string();

    // A big one, so the bytes are in MiB.
    let big = 2 * 1024 * 1024 + 512 * 1024;
    echo_once(map, CLIENT_SEED ^ 0xb16, big).unwrap_or_else(|e| panic!("{bin}: big echo: {e}"));

    // Load while the screenshot is taken.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        spawn_bounded(move || drive(map, stop, 5, 64 * 1024))
    };
    let dir = TempDir::new();
    let shot: PathBuf = dir.path().join("status.png");
    screenshot(&url, &shot, SHOT);
    stop.store(true, Ordering::Relaxed);
    let load = load
        .join(PROMPTLY * 6)
        .unwrap_or_else(|e| panic!("{bin}: the load: {e}"))
        .unwrap_or_else(|e| panic!("{bin}: the load: {e}"));
    check_screenshot(bin, &shot);

    // alice moves 300 KiB each way through SOCKS.
    let alice_bytes = 300 * 1024;
    let mut a = connect(socks).unwrap_or_else(|e| panic!("{bin}: connect socks: {e}"));
    socks5_as(&mut a, dest, "alice", "secret").unwrap_or_else(|e| panic!("{bin}: SOCKS5: {e}"));
    echo_check(&mut a, &pattern(CLIENT_SEED ^ 0xa11ce, alice_bytes))
        .unwrap_or_else(|e| panic!("{bin}: echo as alice: {e}"));
    close_echo(&mut a).unwrap_or_else(|e| panic!("{bin}: alice's tunnel: {e}"));
    drop(a);

    // One refused by the rules.
    let mut r = connect(blocked).unwrap_or_else(|e| panic!("{bin}: connect blocked: {e}"));
    let _ = r.write_all(b"x");
    assert!(
        read_outcome(&mut r, PROMPTLY).is_closed(),
        "{bin}: a connection the rules deny is closed"
    );

    // One that cannot reach its destination.
    let mut d = connect(dead).unwrap_or_else(|e| panic!("{bin}: connect dead: {e}"));
    assert!(
        read_outcome(&mut d, PROMPTLY).is_closed(),
        "{bin}: a mapped connection whose destination refuses is closed"
    );

    let map_conns = load.connections + 2;
    let map_bytes = load.bytes + big as u64 + b"held open".len() as u64;
    // Everything settled: alice's session and the load's are over, the
    // refusal counted.
    let mut last = Json::Null;
    let services = poll_until(PROMPTLY, EVERY, || {
        let s = get_json(bin, status, "/services");
        last = s.clone();
        let Json::Arr(list) = &s else { return None };
        let find = |n: &str| list.iter().find(|x| x.str_of("name") == Some(n));
        let m = find("map")?;
        let settled = m.u64_of("total") == Some(map_conns)
            && m.u64_of("bytes_up") == Some(map_bytes)
            && m.u64_of("bytes_down") == Some(map_bytes)
            && m.u64_of("active") == Some(1)
            && find("socks")?.u64_of("active") == Some(0)
            && find("blocked")?.get("refused")?.u64_of("denied") == Some(1)
            && find("dead")?
                .get("connect_errors")?
                .u64_of("connect-refused")
                == Some(1);
        settled.then_some(list.clone())
    })
    .unwrap_or_else(|| {
        panic!(
            "{bin}: /services never showed map with {map_conns} connections and {map_bytes} \
             bytes each way, one open, and blocked's refusal; last:\n{last:?}"
        )
    });

    let dom = dump_dom(&url);

    // Who and since when.
    assert_eq!(text_of(&dom, "version"), VERSION, "{bin}: version");
    let uptime = text_of(&dom, "uptime");
    let secs = uptime_secs(uptime)
        .unwrap_or_else(|| panic!("{bin}: the uptime {uptime:?} is not a duration"));
    assert!(
        secs <= test_start.elapsed().as_secs() + 1,
        "{bin}: uptime {uptime} is longer than this test has run ({:?})",
        test_start.elapsed()
    );
    let reload = text_of(&dom, "reload");
    assert!(
        reload.starts_with("ok, ") && reload.ends_with(" UTC"),
        "{bin}: the start counts as a successful load: {reload:?}"
    );
    assert!(
        attr(tag_of(&dom, "reload"), "class") == Some("ok"),
        "{bin}: {}",
        tag_of(&dom, "reload")
    );

    // The services table, redrawn by the script, in binary units.
    let svc_rows = rows(tbody(&dom, "services"));
    let (cells, classed) = svc_rows
        .iter()
        .find(|(c, _)| c.first().map(String::as_str) == Some("map"))
        .unwrap_or_else(|| panic!("{bin}: no row for map: {svc_rows:?}"));
    assert!(
        *classed,
        "{bin}: the services table was not redrawn by the script"
    );
    for (i, what) in [(5, "up"), (6, "down")] {
        let cell = &cells[i];
        let shown: f64 = cell
            .strip_suffix(" MiB")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{bin}: bytes {what} of map {cell:?} are not in MiB"));
        let exact = map_bytes as f64 / (1024.0 * 1024.0);
        assert!(
            (shown - exact).abs() <= 0.051,
            "{bin}: bytes {what} {cell} for {map_bytes} bytes"
        );
    }

    // The charts: exactly the load, interval by interval.
    let conns = chart(&dom, "map", "connections");
    let per_interval = chart_values(conns, "data-values");
    assert_eq!(
        per_interval.len(),
        60,
        "{bin}: ten minutes of 10-second intervals"
    );
    assert_eq!(
        per_interval.iter().sum::<u64>(),
        map_conns,
        "{bin}: the connections chart adds up to the connections made: {conns}"
    );
    assert!(conns.contains(" class=\"chart\""), "{bin}: {conns}");
    let bytes = chart(&dom, "map", "bytes");
    for name in ["data-up", "data-down"] {
        let v = chart_values(bytes, name);
        assert_eq!(
            v.iter().sum::<u64>(),
            map_bytes,
            "{bin}: the throughput chart's {name} adds up to the bytes moved: {bytes}"
        );
    }
    let box_at = dom.find("data-service=\"map\"").unwrap_or(0);
    let map_box = &dom[box_at..];
    let map_box = &map_box[..map_box.find("</div>").unwrap_or(map_box.len())];
    assert!(
        map_box.contains("<polyline"),
        "{bin}: the charts have no line drawn:\n{map_box}"
    );

    // Refusals: every cause /services counts, and blocked's denial.
    let ref_rows: Vec<Vec<String>> = rows(tbody(&dom, "refusals"))
        .into_iter()
        .map(|(c, _)| c)
        .collect();
    let mut causes = 0;
    for s in &services {
        let (Some(Json::Obj(refused)), Some(Json::Obj(failed))) =
            (s.get("refused"), s.get("connect_errors"))
        else {
            panic!("{bin}: no refused or connect_errors map in {s:?}")
        };
        for (cause, n) in refused.iter().chain(failed) {
            let n = n.as_u64().unwrap_or(0);
            if n == 0 {
                continue;
            }
            causes += 1;
            let want = vec![
                s.str_of("name").unwrap_or_default().to_string(),
                cause.clone(),
                n.to_string(),
            ];
            assert!(
                ref_rows.contains(&want),
                "{bin}: the refusals table has no row {want:?}: {ref_rows:?}"
            );
        }
    }
    assert!(
        causes >= 1 && ref_rows.len() == causes,
        "{bin}: {ref_rows:?}"
    );
    assert!(
        ref_rows.contains(&vec!["blocked".into(), "denied".into(), "1".into()])
            && ref_rows.contains(&vec!["dead".into(), "connect-refused".into(), "1".into()]),
        "{bin}: {ref_rows:?}"
    );

    // The top user.
    let users = rows(tbody(&dom, "users"));
    let first = users.first().map(|(c, _)| c.clone()).unwrap_or_default();
    assert_eq!(
        first,
        vec![
            "alice".to_string(),
            human(alice_bytes as u64),
            human(alice_bytes as u64),
            human(2 * alice_bytes as u64)
        ],
        "{bin}: the top user: {users:?}"
    );

    // The tunnel still open, in the connections table the script drew.
    let conn_rows = rows(tbody(&dom, "connections"));
    let row = conn_rows
        .iter()
        .find(|(c, _)| c.get(2) == Some(&held_client))
        .unwrap_or_else(|| panic!("{bin}: no row for the held tunnel: {conn_rows:?}"));
    assert!(
        row.1,
        "{bin}: the connections table was not redrawn: {row:?}"
    );
    assert_eq!(
        row.0.get(1).map(String::as_str),
        Some("map"),
        "{bin}: {row:?}"
    );
    assert_eq!(
        row.0.get(7).map(String::as_str),
        Some("9 B"),
        "{bin}: bytes up of the held tunnel: {row:?}"
    );

    close_echo(&mut held).unwrap_or_else(|e| panic!("{bin}: the held tunnel: {e}"));
    drop(p);
}

// ---------------------------------------------------------------------------
// 2. Reloads.

/// `/metrics` carries the build, the start and the last reload: at start
/// the start is the last successful load; a file that does not load turns
/// `portico_config_last_reload_successful` to 0 (the page says it failed,
/// and why) and keeps the time of the last success; a good one turns it
/// back to 1 and moves that time on.
fn metrics_and_page_follow_reloads(bin: Bin) {
    require("chromium", "chromium");
    let before_start = unix_now();
    let config = |ports: &[u16]| {
        format!(
            "{}{}{WORKERS}",
            config_head("", ""),
            service("st", "status", ports[0], "")
        )
    };
    let (p, ports) = start_on_free_ports(bin, 1, StartOptions::default(), config);
    let status = local(ports[0]);
    let good = config(&ports);

    let (build, started, ok, last_ok) = process_lines(bin, status);
    assert_eq!(build, 1.0, "{bin}: portico_build_info is 1");
    assert!(
        started >= before_start as f64 && started <= unix_now() as f64,
        "{bin}: process_start_time_seconds {started} is not between {before_start} and now"
    );
    assert_eq!(ok, 1.0, "{bin}: the start is a successful load");
    assert_eq!(
        last_ok, started,
        "{bin}: the start is the last successful load"
    );

    // A file that does not load.
    std::fs::write(p.config_path(), "[[service]\nname = ").expect("write a broken file");
    p.signal(libc::SIGHUP);
    let logged = p.expect_log_line("the old configuration stays in force", PROMPTLY);
    let failed = poll_until(PROMPTLY, EVERY, || {
        let l = process_lines(bin, status);
        (l.2 == 0.0).then_some(l)
    })
    .unwrap_or_else(|| {
        panic!("{bin}: portico_config_last_reload_successful is not 0 after a failed reload")
    });
    assert_eq!(failed.1, started, "{bin}: the start time stays");
    assert_eq!(failed.3, last_ok, "{bin}: the last success stays the start");
    let info = get_json(bin, status, "/info");
    let reload = info
        .get("reload")
        .unwrap_or_else(|| panic!("{bin}: /info has no reload: {info:?}"));
    assert_eq!(
        reload.get("ok"),
        Some(&Json::Bool(false)),
        "{bin}: {info:?}"
    );
    let message = reload
        .str_of("message")
        .unwrap_or_else(|| panic!("{bin}: a failed reload without its message: {info:?}"));
    assert!(
        !message.is_empty() && logged.contains(message),
        "{bin}: /info's message {message:?} is not what was logged: {logged}"
    );
    assert_eq!(info.str_of("version"), Some(VERSION), "{bin}: {info:?}");
    assert_eq!(
        num(&info, "started"),
        Some(started as i64),
        "{bin}: {info:?}"
    );

    let dom = dump_dom(&format!("http://{status}/"));
    let shown = text_of(&dom, "reload");
    assert!(
        shown.starts_with("failed, "),
        "{bin}: the page does not say the reload failed: {shown:?}"
    );
    assert_eq!(attr(tag_of(&dom, "reload"), "class"), Some("bad"), "{bin}");
    let why = text_of(&dom, "reload-message")
        .replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&");
    assert_eq!(why, message, "{bin}: the page's reload message");

    // A good one, in a later second than the start.
    poll_until(PROMPTLY, EVERY, || {
        (unix_now() > last_ok as i64).then_some(())
    })
    .expect("the wall clock moves on");
    std::fs::write(p.config_path(), &good).expect("write the configuration");
    p.signal(libc::SIGHUP);
    p.expect_log_line("configuration reloaded", PROMPTLY);
    let back = poll_until(PROMPTLY, EVERY, || {
        let l = process_lines(bin, status);
        (l.2 == 1.0).then_some(l)
    })
    .unwrap_or_else(|| panic!("{bin}: portico_config_last_reload_successful is not back to 1"));
    assert!(
        back.3 > last_ok && back.3 <= unix_now() as f64,
        "{bin}: the last successful load {} is not after the start {last_ok} and by now",
        back.3
    );
    assert_eq!(back.1, started, "{bin}: the start time stays");
    let info = get_json(bin, status, "/info");
    let reload = info.get("reload").expect("reload in /info");
    assert_eq!(reload.get("ok"), Some(&Json::Bool(true)), "{bin}: {info:?}");
    assert_eq!(reload.get("message"), Some(&Json::Null), "{bin}: {info:?}");
    assert_eq!(
        num(reload, "last_success"),
        Some(back.3 as i64),
        "{bin}: {info:?}"
    );
}
