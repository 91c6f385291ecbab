//! Portable unmasking: the oracle every SIMD implementation is tested against.
//!
//! RFC 6455 §5.3: "Octet i of the transformed data ("transformed-octet-i") is the XOR of
//! octet i of the original data ("original-octet-i") with octet at index i modulo 4 of the
//! masking key ("masking-key-octet-j")". With a carried `phase`, octet i of this call uses key
//! octet `(phase + i) % 4`.

/// The key as it applies from key octet `phase` on: `rotate_key(k, 1) == [k1, k2, k3, k0]`.
#[inline]
pub(crate) fn rotate_key(key: [u8; 4], phase: usize) -> [u8; 4] {
    [
        key[phase & 3],
        key[(phase + 1) & 3],
        key[(phase + 2) & 3],
        key[(phase + 3) & 3],
    ]
}

/// Byte at a time; used for prologues and epilogues of a few bytes.
#[inline]
pub(crate) fn mask_bytes(buf: &mut [u8], key: [u8; 4], phase: usize) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b ^= key[(phase + i) & 3];
    }
}

/// Scalar implementation: bytes up to 16-byte alignment, then u64 words XORed with the rotated
/// key repeated twice (four words per iteration), then the remaining words and bytes.
pub fn apply_mask(buf: &mut [u8], key: [u8; 4], phase: usize) -> usize {
    let phase = phase & 3;
    let next = (phase + buf.len()) & 3;

    // 16 rather than 8: the compiler turns the word loop into 16-byte vector operations on
    // targets that have them, and aligned ones never straddle a cache line.
    let head_len = buf.as_ptr().align_offset(16).min(buf.len());
    let (head, body) = buf.split_at_mut(head_len);
    mask_bytes(head, key, phase);

    let phase = (phase + head_len) & 3;
    let k = rotate_key(key, phase);
    let word = u64::from_ne_bytes([k[0], k[1], k[2], k[3], k[0], k[1], k[2], k[3]]);
    let mut blocks = body.chunks_exact_mut(32);
    for block in &mut blocks {
        for chunk in block.chunks_exact_mut(8) {
            xor_word(chunk, word);
        }
    }
    let mut words = blocks.into_remainder().chunks_exact_mut(8);
    for chunk in &mut words {
        xor_word(chunk, word);
    }
    // The words covered a multiple of 8 bytes, so the phase is unchanged.
    mask_bytes(words.into_remainder(), key, phase);
    next
}

/// `chunk` (8 bytes) ^= `word`.
#[inline(always)]
fn xor_word(chunk: &mut [u8], word: u64) {
    let w = u64::from_ne_bytes([
        chunk[0], chunk[1], chunk[2], chunk[3], chunk[4], chunk[5], chunk[6], chunk[7],
    ]) ^ word;
    chunk.copy_from_slice(&w.to_ne_bytes());
}
