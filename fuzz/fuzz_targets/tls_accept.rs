//! See `portico_core::sim::fuzz::tls_accept`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    portico_core::sim::fuzz::tls_accept(data);
});

include!("../asan_options.rs");
