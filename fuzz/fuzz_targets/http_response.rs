//! See `portico_core::sim::fuzz::http_response`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    portico_core::sim::fuzz::http_response(data);
});

include!("../asan_options.rs");
