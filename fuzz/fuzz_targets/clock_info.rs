#![no_main]
//! libFuzzer target: see `patronus::fuzzing::clock_info`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| patronus::fuzzing::clock_info(data));
