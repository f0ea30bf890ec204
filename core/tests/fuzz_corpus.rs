//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/`) through the
//! same functions the fuzz targets call, on stable Rust, as an ordinary test.
//! Longer fuzzing runs are a developer's tool:
//! `cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run event_sequence`.
//!
//! A missing or empty corpus fails the test: it must never pass vacuously.

use std::fs;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};

fn corpus(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let entries = fs::read_dir(&dir).unwrap_or_else(|e| {
        panic!(
            "cannot read the {target} corpus at {}: {e}; it is committed with the fuzz targets",
            dir.display()
        )
    });
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "the {target} corpus at {} is empty",
        dir.display()
    );
    files
}

fn replay(target: &str, run: fn(&[u8])) {
    let files = corpus(target);
    let mut failed = Vec::new();
    for f in &files {
        let data = fs::read(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        if panic::catch_unwind(AssertUnwindSafe(|| run(&data))).is_err() {
            failed.push(f.display().to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} {target} corpus inputs fail (replay one with the fuzz target, e.g. \
         `cargo fuzz run {target} FILE`): {failed:#?}",
        failed.len(),
        files.len()
    );
}

#[test]
fn event_sequence_corpus() {
    replay("event_sequence", portico_core::sim::fuzz::event_sequence);
}

#[test]
fn config_corpus() {
    replay("config", portico_core::sim::fuzz::config);
}

#[test]
fn protocol_corpus() {
    replay("protocol", portico_core::sim::fuzz::protocol);
}

#[test]
fn http_request_corpus() {
    replay("http_request", portico_core::sim::fuzz::http_request);
}

#[test]
fn http_response_corpus() {
    replay("http_response", portico_core::sim::fuzz::http_response);
}

#[test]
fn proxy_protocol_corpus() {
    replay("proxy_protocol", portico_core::sim::fuzz::proxy_protocol);
}

#[test]
fn socks_udp_header_corpus() {
    replay(
        "socks_udp_header",
        portico_core::sim::fuzz::socks_udp_header,
    );
}

#[test]
fn parent_reply_corpus() {
    replay("parent_reply", portico_core::sim::fuzz::parent_reply);
}

#[test]
fn tls_accept_corpus() {
    replay("tls_accept", portico_core::sim::fuzz::tls_accept);
}

#[test]
fn peek_corpus() {
    replay("peek", portico_core::sim::fuzz::peek);
}
