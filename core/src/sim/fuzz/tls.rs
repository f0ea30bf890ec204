//! The `tls_accept` target: arbitrary client bytes to a TLS service, through
//! the table and its TLS layer, in the simulated runtime.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::config::{Config, Files};
use crate::sim::runtime::Runtime;
use crate::Side;

struct Mem(HashMap<PathBuf, &'static str>);

impl Files for Mem {
    fn read(&mut self, path: &Path) -> io::Result<String> {
        self.0
            .get(path)
            .map(|t| t.to_string())
            .ok_or_else(|| io::ErrorKind::NotFound.into())
    }
    fn list(&mut self, _dir: &Path) -> io::Result<Vec<OsString>> {
        Ok(Vec::new())
    }
}

/// Four TLS services: status, http, socks, and http asking for a client
/// certificate whose CN is the user.
fn config() -> &'static Config {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    CONFIG.get_or_init(|| {
        let tls = "tls = { cert = \"/s.pem\", key = \"/s.key\" }";
        let ca = "tls = { cert = \"/s.pem\", key = \"/s.key\", client_ca = \"/ca.pem\", \
                  client_cert_user = true }";
        let text = format!(
            "[network]\ninternal = [\"127.0.0.1\"]\n\
             [[service]]\nname = \"st\"\nkind = \"status\"\nport = 9000\n{tls}\n\
             [[service]]\nname = \"web\"\nkind = \"http\"\nport = 9001\n{tls}\n\
             [[service]]\nname = \"so\"\nkind = \"socks\"\nport = 9002\n{tls}\n\
             [[service]]\nname = \"ca\"\nkind = \"http\"\nport = 9003\n{ca}\n\
             [[rule]]\naction = \"allow\"\n"
        );
        let mut files = Mem(HashMap::from([
            (
                "/s.pem".into(),
                include_str!("../../session/testdata/server.pem"),
            ),
            (
                "/s.key".into(),
                include_str!("../../session/testdata/server.key"),
            ),
            (
                "/ca.pem".into(),
                include_str!("../../session/testdata/ca.pem"),
            ),
        ]));
        crate::config::parse_with_files(&text, "fuzz.toml", &mut files)
            .unwrap_or_else(|e| panic!("the tls_accept configuration: {e}"))
    })
}

/// The first byte picks the service (low two bits) and how the rest is
/// chopped into reads (the other six); the rest is what the client sends,
/// then its EOF. Whatever it sends, the table answers at most with TLS
/// records (never plain text: the first byte written is a TLS record
/// type), and once the client is gone and the deadlines have passed, the
/// table is empty, with no buffer held.
pub fn tls_accept(data: &[u8]) {
    let Some((&pick, input)) = data.split_first() else {
        return;
    };
    let mut rt = Runtime::new(config().clone(), 1, Instant::now());
    rt.collect = false;
    let listeners = rt.open();
    let Some(&listener) = listeners.get(pick as usize % 4) else {
        return;
    };
    let step = (pick as usize >> 2) * 37 + 1;
    let Ok(id) = rt.accept(listener, ([127, 0, 0, 1], 40000).into(), None) else {
        return;
    };
    rt.drain();
    let mut sent = Vec::new();
    for chunk in input.chunks(step) {
        if !rt.is_live(id) {
            break;
        }
        let mut at = 0;
        while at < chunk.len() && rt.is_live(id) {
            let Some(n) = rt.recv(id, Side::Client, |buf| {
                let n = buf.len().min(chunk.len() - at);
                buf[..n].copy_from_slice(&chunk[at..at + n]);
                n
            }) else {
                break;
            };
            at += n;
            rt.drain();
            if rt.is_live(id) {
                sent.extend(rt.flush(id, Side::Client));
            }
            rt.drain();
        }
    }
    if let Some(&first) = sent.first() {
        // handshake (22) or alert (21)
        assert!(
            first == 22 || first == 21,
            "the table sent the client a non-TLS byte first: {first}"
        );
    }
    if rt.is_live(id) {
        rt.handle(crate::Event::Eof {
            conn: id,
            side: Side::Client,
        });
        rt.drain();
        if rt.is_live(id) {
            rt.flush(id, Side::Client);
            rt.drain();
        }
    }
    for _ in 0..8 {
        if rt.is_empty() {
            break;
        }
        rt.advance(Duration::from_secs(600));
        rt.handle_timeout();
        rt.drain();
    }
    assert!(
        rt.is_empty(),
        "a connection outlived its client and deadlines"
    );
    assert_eq!(rt.buffers_in_use(), 0, "buffers held after the end");
}
