//! Runs the `mask` fuzz target's check over its seed corpus (fuzz/corpus/mask) and a few
//! generated inputs, so the ordinary test suite covers it.

use std::path::Path;

#[test]
fn fuzz_check_mask_over_seed_corpus() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/mask");
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_file() {
            let data = std::fs::read(&path).unwrap();
            surge_simd::fuzz_check_mask(&data);
            count += 1;
        }
    }
    assert!(count >= 3, "expected seed files in {}", dir.display());
}

#[test]
fn fuzz_check_mask_over_generated_inputs() {
    surge_simd::fuzz_check_mask(&[]);
    surge_simd::fuzz_check_mask(&[1, 2, 3]);
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    for len in (0..2000).step_by(37) {
        let input: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        surge_simd::fuzz_check_mask(&input);
    }
}
