//! Unmasking differential fuzz target: every implementation (and the dispatched one) must equal
//! the byte-by-byte reference and the scalar oracle, in one call and split with a carried phase.
//! Input layout (see `surge_simd::fuzz_check_mask`):
//! `key[4] phase offset nsplits split*(u16 le) data...`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    surge_simd::fuzz_check_mask(data);
});
