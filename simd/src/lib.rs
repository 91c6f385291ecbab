//! SIMD building blocks for surge: WebSocket payload unmasking and UTF-8 validation.
//!
//! Every unmasking implementation (`avx512`, `avx2`, `sse2`, `neon`) is a private
//! `#[target_feature]` function behind a safe wrapper, and is tested against the portable
//! [`apply_mask_scalar`]. [`apply_mask`] calls the best one for this CPU, chosen at first use
//! (see `SURGE_SIMD` in [`mask_implementation`]). Nothing here assumes `target-cpu=native`.

mod dispatch;
#[cfg(any(test, fuzzing))]
mod fuzz_check;
mod scalar;
mod utf8;

#[cfg(target_arch = "aarch64")]
mod aarch64;
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
mod x86;

#[cfg(any(test, fuzzing))]
#[doc(hidden)]
pub use fuzz_check::fuzz_check_mask;
pub use utf8::{validate_utf8, Utf8Error, Utf8Stream};

/// The signature shared by every unmasking implementation.
pub type MaskFn = fn(&mut [u8], [u8; 4], usize) -> usize;

/// In-place XOR of `buf` with the 4-byte masking key, starting at key byte `phase` (0..=3;
/// larger values are taken modulo 4). Returns the phase for the next call:
/// `(phase + buf.len()) % 4`, so a payload unmasked in pieces equals one call over all of it.
///
/// RFC 6455 §5.3: "j = i MOD 4; transformed-octet-i = original-octet-i XOR masking-key-octet-j".
#[inline]
pub fn apply_mask(buf: &mut [u8], key: [u8; 4], phase: usize) -> usize {
    (dispatch::selected().1)(buf, key, phase)
}

/// Scalar (portable, u64 words) reference implementation, always built; same contract as
/// [`apply_mask`].
pub fn apply_mask_scalar(buf: &mut [u8], key: [u8; 4], phase: usize) -> usize {
    scalar::apply_mask(buf, key, phase)
}

/// Which implementation [`apply_mask`] dispatches to: `"avx512"`, `"avx2"`, `"sse2"`, `"neon"`
/// or `"scalar"`.
///
/// The best available one, unless the environment variable `SURGE_SIMD` (read once, at the first
/// call of this or [`apply_mask`]) names another available one. An unavailable or unknown name
/// falls back to the best, with one warning on stderr.
pub fn mask_implementation() -> &'static str {
    dispatch::selected().0
}

/// Each implementation available on this CPU, best first, `"scalar"` last.
pub fn mask_implementations() -> Vec<(&'static str, MaskFn)> {
    let mut v: Vec<(&'static str, MaskFn)> = Vec::new();
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    {
        if x86::avx512::available() {
            v.push(("avx512", x86::avx512::apply_mask));
        }
        if x86::avx2::available() {
            v.push(("avx2", x86::avx2::apply_mask));
        }
        if x86::sse2::available() {
            v.push(("sse2", x86::sse2::apply_mask));
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        if aarch64::neon::available() {
            v.push(("neon", aarch64::neon::apply_mask));
        }
    }
    v.push(("scalar", apply_mask_scalar));
    v
}
