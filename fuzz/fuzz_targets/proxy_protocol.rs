//! See `portico_core::sim::fuzz::proxy_protocol`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    portico_core::sim::fuzz::proxy_protocol(data);
});

include!("../asan_options.rs");
