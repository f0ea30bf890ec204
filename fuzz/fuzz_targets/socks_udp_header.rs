//! See `portico_core::sim::fuzz::socks_udp_header`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    portico_core::sim::fuzz::socks_udp_header(data);
});

include!("../asan_options.rs");
