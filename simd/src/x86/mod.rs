//! x86 / x86_64 implementations. Each file holds one private `#[target_feature]` function and a
//! safe wrapper that checks (cheaply, the result is cached by std) that the CPU has the feature.

pub(crate) mod avx2;
pub(crate) mod avx512;
pub(crate) mod sse2;

#[cfg(target_arch = "x86")]
pub(crate) use std::arch::x86 as arch;
#[cfg(target_arch = "x86_64")]
pub(crate) use std::arch::x86_64 as arch;

/// Broadcast value: the key rotated to `phase`, as the 32-bit lane that repeats in memory order.
#[inline]
pub(crate) fn key_lane(key: [u8; 4], phase: usize) -> i32 {
    i32::from_ne_bytes(crate::scalar::rotate_key(key, phase))
}
