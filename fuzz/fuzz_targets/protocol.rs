//! See `portico_core::fuzzing::protocol`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    portico_core::fuzzing::protocol(data);
});
