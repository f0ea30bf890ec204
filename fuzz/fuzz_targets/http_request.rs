//! See `portico_core::sim::fuzz::http_request`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    portico_core::sim::fuzz::http_request(data);
});

include!("../asan_options.rs");
