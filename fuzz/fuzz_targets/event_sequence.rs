//! Whole event sequences through the connection table: see
//! `portico_core::fuzzing::event_sequence`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    portico_core::fuzzing::event_sequence(data);
});
