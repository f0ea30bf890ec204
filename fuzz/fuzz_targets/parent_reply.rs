//! See `portico_core::sim::fuzz::parent_reply`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    portico_core::sim::fuzz::parent_reply(data);
});

include!("../asan_options.rs");
