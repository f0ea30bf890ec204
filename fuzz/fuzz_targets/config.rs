//! The configuration parser and validator: see
//! `portico_core::sim::fuzz::config`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    portico_core::sim::fuzz::config(data);
});

include!("../asan_options.rs");
