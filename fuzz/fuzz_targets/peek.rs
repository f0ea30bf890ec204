//! See `portico_core::sim::fuzz::peek`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    portico_core::sim::fuzz::peek(data);
});

include!("../asan_options.rs");
