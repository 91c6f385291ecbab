//! AVX-512 unmasking: 64-byte aligned loads and stores, four vectors per iteration. The unaligned
//! head and the tail (each < 64 bytes) use byte-masked loads and stores, which is why this needs
//! AVX512BW as well as AVX512F (every AVX-512 CPU since Skylake-SP has both).

use super::arch::{
    __m512i, __mmask64, _mm512_load_si512, _mm512_mask_storeu_epi8, _mm512_maskz_loadu_epi8,
    _mm512_set1_epi32, _mm512_store_si512, _mm512_xor_si512,
};
use crate::scalar;

const V: usize = 64;

pub(crate) fn available() -> bool {
    std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bw")
}

pub(crate) fn apply_mask(buf: &mut [u8], key: [u8; 4], phase: usize) -> usize {
    if !available() {
        return scalar::apply_mask(buf, key, phase);
    }
    // SAFETY: the CPU supports AVX512F and AVX512BW, checked just above.
    unsafe { apply_mask_avx512(buf, key, phase) }
}

/// XOR `part` (fewer than 64 bytes) with `k` through a byte-masked load and store: the lanes past
/// `part.len()` are neither read nor written.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn xor_partial(part: &mut [u8], k: __m512i) {
    debug_assert!(part.len() < V);
    let mask: __mmask64 = (1u64 << part.len()) - 1;
    let p = part.as_mut_ptr().cast::<i8>();
    // SAFETY: only the first `part.len()` bytes at `p` are enabled in `mask`, and those are the
    // bytes of `part`; masked-off lanes are not accessed. Unaligned access is allowed.
    unsafe {
        let v = _mm512_maskz_loadu_epi8(mask, p);
        _mm512_mask_storeu_epi8(p, mask, _mm512_xor_si512(v, k));
    }
}

#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn apply_mask_avx512(buf: &mut [u8], key: [u8; 4], phase: usize) -> usize {
    let phase = phase & 3;
    let next = (phase + buf.len()) & 3;

    let head_len = buf.as_ptr().align_offset(V).min(buf.len());
    let (head, body) = buf.split_at_mut(head_len);
    if !head.is_empty() {
        xor_partial(head, _mm512_set1_epi32(super::key_lane(key, phase)));
    }
    let phase = (phase + head_len) & 3;
    let k = _mm512_set1_epi32(super::key_lane(key, phase));

    // `body` starts 64-byte aligned and every chunk below is a multiple of 64 bytes long, so each
    // chunk starts 64-byte aligned too.
    let mut blocks = body.chunks_exact_mut(4 * V);
    for block in &mut blocks {
        let p = block.as_mut_ptr().cast::<__m512i>();
        // SAFETY: `block` is 256 bytes, so p..p+4 are in bounds; p is 64-byte aligned (see above).
        unsafe {
            let a = _mm512_load_si512(p);
            let b = _mm512_load_si512(p.add(1));
            let c = _mm512_load_si512(p.add(2));
            let d = _mm512_load_si512(p.add(3));
            _mm512_store_si512(p, _mm512_xor_si512(a, k));
            _mm512_store_si512(p.add(1), _mm512_xor_si512(b, k));
            _mm512_store_si512(p.add(2), _mm512_xor_si512(c, k));
            _mm512_store_si512(p.add(3), _mm512_xor_si512(d, k));
        }
    }
    let mut vectors = blocks.into_remainder().chunks_exact_mut(V);
    for v in &mut vectors {
        let p = v.as_mut_ptr().cast::<__m512i>();
        // SAFETY: `v` is 64 bytes and 64-byte aligned (see above).
        unsafe { _mm512_store_si512(p, _mm512_xor_si512(_mm512_load_si512(p), k)) };
    }
    let tail = vectors.into_remainder();
    if !tail.is_empty() {
        // Whole vectors kept the phase, so the tail uses the same key vector.
        xor_partial(tail, k);
    }
    next
}
