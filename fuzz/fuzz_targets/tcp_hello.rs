#![no_main]
//! libFuzzer target: see `patronus::fuzzing::tcp_hello`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| patronus::fuzzing::tcp_hello(data));
