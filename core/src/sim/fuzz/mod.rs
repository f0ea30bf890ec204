//! The fuzz targets' entry points (the targets in `fuzz/` call them, and
//! `core/tests/fuzz_corpus.rs` replays their committed corpus on stable
//! Rust). Each panics, saying which invariant broke, on a bug, and returns
//! normally on any input the core handles correctly; none unwraps anything
//! derived from the input.

mod config;
mod event_sequence;
mod protocol;
mod tls;

pub use config::config;
pub use event_sequence::event_sequence;
pub use protocol::protocol;
pub use tls::tls_accept;

/// HTTP request heads, whole and resumed, encoded again, their bodies.
pub use crate::http::fuzz_request as http_request;
/// HTTP response heads (after a method byte), likewise.
pub use crate::http::fuzz_response as http_response;
/// A transparent service's peek at a client's first bytes (an HTTP
/// request's Host, a TLS ClientHello's server name), whole and cut.
pub use crate::proto::peek::fuzz as peek;
/// SOCKS5 UDP request headers, parsed and encoded again.
pub use crate::proto::socks_udp::fuzz as socks_udp_header;
/// A parent proxy's answers to Portico's handshake (HTTP CONNECT, SOCKS5,
/// SOCKS4/4a), whole and a byte more at a time.
pub use crate::proto::upstream::fuzz_reply as parent_reply;
/// PROXY protocol headers, parsed and encoded again.
pub use crate::proxy_protocol::fuzz as proxy_protocol;
