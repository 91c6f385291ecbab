//! SSE2 unmasking: 16-byte aligned loads and stores, four vectors per iteration.

use super::arch::{__m128i, _mm_load_si128, _mm_set1_epi32, _mm_store_si128, _mm_xor_si128};
use crate::scalar;

const V: usize = 16;

pub(crate) fn available() -> bool {
    std::is_x86_feature_detected!("sse2")
}

pub(crate) fn apply_mask(buf: &mut [u8], key: [u8; 4], phase: usize) -> usize {
    if !available() {
        return scalar::apply_mask(buf, key, phase);
    }
    // SAFETY: the CPU supports SSE2, checked just above.
    unsafe { apply_mask_sse2(buf, key, phase) }
}

#[target_feature(enable = "sse2")]
unsafe fn apply_mask_sse2(buf: &mut [u8], key: [u8; 4], phase: usize) -> usize {
    let phase = phase & 3;
    let next = (phase + buf.len()) & 3;

    let head_len = buf.as_ptr().align_offset(V).min(buf.len());
    let (head, body) = buf.split_at_mut(head_len);
    let phase = scalar::apply_mask(head, key, phase);
    let k = _mm_set1_epi32(super::key_lane(key, phase));

    // `body` starts 16-byte aligned and every chunk below is a multiple of 16 bytes long, so each
    // chunk starts 16-byte aligned too.
    let mut blocks = body.chunks_exact_mut(4 * V);
    for block in &mut blocks {
        let p = block.as_mut_ptr().cast::<__m128i>();
        // SAFETY: `block` is 64 bytes, so p..p+4 are in bounds; p is 16-byte aligned (see above).
        unsafe {
            let a = _mm_load_si128(p);
            let b = _mm_load_si128(p.add(1));
            let c = _mm_load_si128(p.add(2));
            let d = _mm_load_si128(p.add(3));
            _mm_store_si128(p, _mm_xor_si128(a, k));
            _mm_store_si128(p.add(1), _mm_xor_si128(b, k));
            _mm_store_si128(p.add(2), _mm_xor_si128(c, k));
            _mm_store_si128(p.add(3), _mm_xor_si128(d, k));
        }
    }
    let mut vectors = blocks.into_remainder().chunks_exact_mut(V);
    for v in &mut vectors {
        let p = v.as_mut_ptr().cast::<__m128i>();
        // SAFETY: `v` is 16 bytes and 16-byte aligned (see above).
        unsafe { _mm_store_si128(p, _mm_xor_si128(_mm_load_si128(p), k)) };
    }
    // Whole vectors kept the phase; the last < 16 bytes continue from it.
    scalar::mask_bytes(vectors.into_remainder(), key, phase);
    next
}
