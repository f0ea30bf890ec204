//! Spliced directions that stay bulk: a pipe may hold more than `buffer`
//! (256 KiB) once its direction has carried a mebibyte, while the memory
//! bound (`max_connections × 2 × buffer`) allows it; the others stay held
//! to `buffer`. Either way every byte arrives, once and in order.

use std::net::{Shutdown, SocketAddr};
use std::time::Duration;

use portico_tests::{
    both, connect, pattern, read_digest_reply, send_stream, spawn_bounded, start_mapped, Behaviour,
    Bin, TestServer, CLIENT_SEED,
};

const MIB: u64 = 1024 * 1024;
const UP: u64 = 5 * MIB + 333;
const REPLY: u64 = 4 * MIB + 77;
const DEADLINE: Duration = Duration::from_secs(60);

both!(bulk_streams_arrive_whole_with_pipes_grown_or_not);

/// One client: sends `UP` bytes, shuts its write side, and checks the
/// server's reply and its trailer (what the server received).
fn stream(bin: Bin, addr: SocketAddr, seed: u64) {
    let sent = pattern(seed, UP as usize);
    let mut c = connect(addr).unwrap_or_else(|e| panic!("{bin}: connect to {addr}: {e}"));
    send_stream(&mut c, UP, seed, None).unwrap_or_else(|e| panic!("{bin}: sending: {e}"));
    c.shutdown(Shutdown::Write)
        .unwrap_or_else(|e| panic!("{bin}: shutdown(Write): {e}"));
    read_digest_reply(bin, &mut c, REPLY, &sent, "a bulk stream");
}

/// SPEC (configuration.md, Splicing): with `max_connections = 5` (the
/// bound: 5 × 2 × 64 KiB), one connection alone has room for both its
/// directions to grow; three at once have room for one grown pipe, and
/// the other directions stay at 64 KiB. Bulk both ways arrives whole in
/// each case.
fn bulk_streams_arrive_whole_with_pipes_grown_or_not(bin: Bin) {
    let server = TestServer::start(Behaviour::DigestReply { reply_len: REPLY });
    let (_p, addr) = start_mapped(bin, server.addr(), "max_connections = 5", "");
    for clients in [1u64, 3] {
        let running: Vec<_> = (0..clients)
            .map(|i| spawn_bounded(move || stream(bin, addr, CLIENT_SEED + i)))
            .collect();
        for (i, r) in running.into_iter().enumerate() {
            r.join(DEADLINE)
                .unwrap_or_else(|e| panic!("{bin}: client {i} of {clients}: {e}"));
        }
        for _ in 0..clients {
            let r = server.report_ok(bin);
            assert_eq!(r.received, UP, "{bin}: bytes the server received");
        }
    }
}
