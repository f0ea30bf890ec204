//! See `portico_core::sim::fuzz::protocol`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    portico_core::sim::fuzz::protocol(data);
});

include!("../asan_options.rs");
