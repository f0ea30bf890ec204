//! Whole event sequences through the connection table: see
//! `portico_core::sim::fuzz::event_sequence`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    portico_core::sim::fuzz::event_sequence(data);
});

include!("../asan_options.rs");
