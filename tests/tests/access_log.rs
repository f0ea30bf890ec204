//! The access log of a mapped port: the text line and the JSON object.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::time::Duration;

use portico_tests::logline::{is_timestamp, parse_json_object, parse_text_line, Json};
use portico_tests::{
    both, connect, pattern, start_mapped, Behaviour, Bin, Portico, TestServer, CLIENT_SEED,
};

const UP: usize = 1234;
const REPLY: u64 = 5000;
/// What the client receives: the reply and the 16-byte trailer.
const DOWN: u64 = REPLY + 16;

both!(text_line_format, json_line_format);

/// Makes one connection that sends `UP` bytes and receives `DOWN`; returns
/// the client's address.
fn one_transfer(bin: Bin, addr: std::net::SocketAddr) -> std::net::SocketAddr {
    let mut c = connect(addr).unwrap_or_else(|e| panic!("{bin}: connect: {e}"));
    let me = c.local_addr().expect("local_addr");
    c.write_all(&pattern(CLIENT_SEED, UP))
        .unwrap_or_else(|e| panic!("{bin}: write: {e}"));
    c.shutdown(Shutdown::Write)
        .unwrap_or_else(|e| panic!("{bin}: shutdown(Write): {e}"));
    let mut reply = Vec::new();
    c.read_to_end(&mut reply)
        .unwrap_or_else(|e| panic!("{bin}: reading the reply: {e}"));
    assert_eq!(reply.len() as u64, DOWN, "{bin}: reply length");
    me
}

fn wait_line(p: &Portico, needle: &str) -> String {
    p.expect_log_line(needle, Duration::from_secs(10))
}

fn text_line_format(bin: Bin) {
    let server = TestServer::start(Behaviour::DigestReply { reply_len: REPLY });
    let (p, addr) = start_mapped(bin, server.addr(), "", "format = \"text\"");
    let me = one_transfer(bin, addr);
    let line = wait_line(&p, &format!(" map {me} "));
    let l = parse_text_line(&line).unwrap_or_else(|e| panic!("{bin}: {e}"));
    let dest = server.addr().to_string();
    assert_eq!(l.service, "map", "{bin}: service in {line:?}");
    assert_eq!(l.client, me, "{bin}: client in {line:?}");
    assert_eq!(l.user, "-", "{bin}: user in {line:?}");
    assert_eq!(l.method, "TCP", "{bin}: method in {line:?}");
    assert_eq!(l.target, dest, "{bin}: target in {line:?}");
    assert_eq!(l.destination, dest, "{bin}: destination in {line:?}");
    assert_eq!(l.status, "ok", "{bin}: status in {line:?}");
    assert_eq!(l.up, UP as u64, "{bin}: up= in {line:?}");
    assert_eq!(l.down, DOWN, "{bin}: down= in {line:?}");
}

fn json_line_format(bin: Bin) {
    let server = TestServer::start(Behaviour::DigestReply { reply_len: REPLY });
    let (p, addr) = start_mapped(bin, server.addr(), "", "format = \"json\"");
    let me = one_transfer(bin, addr);
    let line = wait_line(&p, &format!("\"client\":\"{me}\""));
    let obj =
        parse_json_object(&line).unwrap_or_else(|e| panic!("{bin}: not one JSON object: {e}"));
    let get = |k: &str| -> &Json {
        obj.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v)
            .unwrap_or_else(|| panic!("{bin}: key {k:?} missing in {line}"))
    };
    let dest = server.addr().to_string();
    let time = get("time").as_str().unwrap_or_default();
    assert!(is_timestamp(time), "{bin}: time {time:?} in {line}");
    assert_eq!(get("service"), &Json::Str("map".into()), "{bin}: {line}");
    assert_eq!(get("client"), &Json::Str(me.to_string()), "{bin}: {line}");
    assert_eq!(get("user"), &Json::Null, "{bin}: {line}");
    assert_eq!(get("method"), &Json::Str("TCP".into()), "{bin}: {line}");
    assert_eq!(get("target"), &Json::Str(dest.clone()), "{bin}: {line}");
    assert_eq!(get("destination"), &Json::Str(dest), "{bin}: {line}");
    assert_eq!(get("status"), &Json::Str("ok".into()), "{bin}: {line}");
    assert_eq!(get("up").as_u64(), Some(UP as u64), "{bin}: up in {line}");
    assert_eq!(get("down").as_u64(), Some(DOWN), "{bin}: down in {line}");
    assert!(
        get("duration_ms").as_u64().is_some(),
        "{bin}: duration_ms must be a whole number in {line}"
    );
    for l in p.stderr_lines() {
        if l.starts_with('{') {
            parse_json_object(&l).unwrap_or_else(|e| {
                panic!("{bin}: an access-log line is not one JSON object: {e}")
            });
        }
    }
}
