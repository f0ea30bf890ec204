//! The fuzz targets' entry points (the targets in `fuzz/` call them, and
//! `core/tests/fuzz_corpus.rs` replays their committed corpus on stable
//! Rust). Each panics, saying which invariant broke, on a bug, and returns
//! normally on any input the core handles correctly; none unwraps anything
//! derived from the input.

mod config;
mod event_sequence;
mod protocol;

pub use config::config;
pub use event_sequence::event_sequence;
pub use protocol::protocol;
