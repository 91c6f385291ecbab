#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    surge::fuzzing::fuzz_check_timer_wheel(data);
});
