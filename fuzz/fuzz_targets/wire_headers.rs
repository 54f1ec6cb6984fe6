#![no_main]
//! libFuzzer target: see `patronus::fuzzing::wire_headers`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| patronus::fuzzing::wire_headers(data));
