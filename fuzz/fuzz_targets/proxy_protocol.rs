//! See `portico_core::proxy_protocol::fuzz`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    portico_core::proxy_protocol::fuzz(data);
});
