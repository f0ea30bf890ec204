//! See `portico_core::http::fuzz_response`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    portico_core::http::fuzz_response(data);
});
