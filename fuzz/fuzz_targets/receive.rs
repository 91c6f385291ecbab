//! The whole receive path with arbitrary split points: see `surge::fuzzing::fuzz_check_receive`.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| surge::fuzzing::fuzz_check_receive(data));
