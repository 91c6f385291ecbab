//! AVX2 unmasking: 32-byte aligned loads and stores, four vectors per iteration.

use super::arch::{
    __m256i, _mm256_load_si256, _mm256_set1_epi32, _mm256_store_si256, _mm256_xor_si256,
};
use crate::scalar;

const V: usize = 32;

pub(crate) fn available() -> bool {
    std::is_x86_feature_detected!("avx2")
}

pub(crate) fn apply_mask(buf: &mut [u8], key: [u8; 4], phase: usize) -> usize {
    if !available() {
        return scalar::apply_mask(buf, key, phase);
    }
    // SAFETY: the CPU supports AVX2, checked just above.
    unsafe { apply_mask_avx2(buf, key, phase) }
}

#[target_feature(enable = "avx2")]
unsafe fn apply_mask_avx2(buf: &mut [u8], key: [u8; 4], phase: usize) -> usize {
    let phase = phase & 3;
    let next = (phase + buf.len()) & 3;

    // Head (< 32 bytes) with the scalar code: at most 7 bytes and 3 words.
    let head_len = buf.as_ptr().align_offset(V).min(buf.len());
    let (head, body) = buf.split_at_mut(head_len);
    let phase = scalar::apply_mask(head, key, phase);
    let k = _mm256_set1_epi32(super::key_lane(key, phase));

    // `body` starts 32-byte aligned and every chunk below is a multiple of 32 bytes long, so each
    // chunk starts 32-byte aligned too.
    let mut blocks = body.chunks_exact_mut(4 * V);
    for block in &mut blocks {
        let p = block.as_mut_ptr().cast::<__m256i>();
        // SAFETY: `block` is 128 bytes, so p..p+4 are in bounds; p is 32-byte aligned (see above).
        unsafe {
            let a = _mm256_load_si256(p);
            let b = _mm256_load_si256(p.add(1));
            let c = _mm256_load_si256(p.add(2));
            let d = _mm256_load_si256(p.add(3));
            _mm256_store_si256(p, _mm256_xor_si256(a, k));
            _mm256_store_si256(p.add(1), _mm256_xor_si256(b, k));
            _mm256_store_si256(p.add(2), _mm256_xor_si256(c, k));
            _mm256_store_si256(p.add(3), _mm256_xor_si256(d, k));
        }
    }
    let mut vectors = blocks.into_remainder().chunks_exact_mut(V);
    for v in &mut vectors {
        let p = v.as_mut_ptr().cast::<__m256i>();
        // SAFETY: `v` is 32 bytes and 32-byte aligned (see above).
        unsafe { _mm256_store_si256(p, _mm256_xor_si256(_mm256_load_si256(p), k)) };
    }
    // Whole vectors kept the phase; the tail (< 32 bytes) continues from it.
    scalar::apply_mask(vectors.into_remainder(), key, phase);
    next
}
