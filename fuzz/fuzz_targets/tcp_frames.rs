#![no_main]
//! libFuzzer target: see `patronus::fuzzing::tcp_frames`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| patronus::fuzzing::tcp_frames(data));
