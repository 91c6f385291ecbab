//! NEON unmasking: unaligned 16-byte loads and stores (cheap on aarch64), four per iteration.

use std::arch::aarch64::{
    uint8x16_t, vdupq_n_u32, veorq_u8, vld1q_u8, vreinterpretq_u8_u32, vst1q_u8,
};

use crate::scalar;

const V: usize = 16;

pub(crate) fn available() -> bool {
    std::arch::is_aarch64_feature_detected!("neon")
}

pub(crate) fn apply_mask(buf: &mut [u8], key: [u8; 4], phase: usize) -> usize {
    if !available() {
        return scalar::apply_mask(buf, key, phase);
    }
    // SAFETY: the CPU supports NEON, checked just above.
    unsafe { apply_mask_neon(buf, key, phase) }
}

#[target_feature(enable = "neon")]
unsafe fn apply_mask_neon(buf: &mut [u8], key: [u8; 4], phase: usize) -> usize {
    let phase = phase & 3;
    let next = (phase + buf.len()) & 3;
    let k: uint8x16_t = vreinterpretq_u8_u32(vdupq_n_u32(u32::from_ne_bytes(scalar::rotate_key(
        key, phase,
    ))));

    let mut blocks = buf.chunks_exact_mut(4 * V);
    for block in &mut blocks {
        let p = block.as_mut_ptr();
        // SAFETY: `block` is 64 bytes, so the four 16-byte accesses at p, p+16, p+32 and p+48 are
        // in bounds; vld1q_u8/vst1q_u8 have no alignment requirement.
        unsafe {
            let a = vld1q_u8(p);
            let b = vld1q_u8(p.add(V));
            let c = vld1q_u8(p.add(2 * V));
            let d = vld1q_u8(p.add(3 * V));
            vst1q_u8(p, veorq_u8(a, k));
            vst1q_u8(p.add(V), veorq_u8(b, k));
            vst1q_u8(p.add(2 * V), veorq_u8(c, k));
            vst1q_u8(p.add(3 * V), veorq_u8(d, k));
        }
    }
    let mut vectors = blocks.into_remainder().chunks_exact_mut(V);
    for v in &mut vectors {
        let p = v.as_mut_ptr();
        // SAFETY: `v` is 16 bytes; no alignment requirement.
        unsafe { vst1q_u8(p, veorq_u8(vld1q_u8(p), k)) };
    }
    // Whole vectors (multiples of 4 bytes) kept the phase.
    scalar::mask_bytes(vectors.into_remainder(), key, phase);
    next
}
