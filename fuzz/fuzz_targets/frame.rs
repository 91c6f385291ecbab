//! Frame header parsing: see `surge::fuzzing::fuzz_check_frame` for the invariants.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| surge::fuzzing::fuzz_check_frame(data));
