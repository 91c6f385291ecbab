//! The body of the `mask` fuzz target, here so that the ordinary test suite can run it over the
//! seed corpus.

/// Byte-by-byte XOR, the most obvious statement of RFC 6455 §5.3.
fn reference(buf: &mut [u8], key: [u8; 4], phase: usize) -> usize {
    for (i, b) in buf.iter_mut().enumerate() {
        *b ^= key[(phase + i) % 4];
    }
    (phase + buf.len()) % 4
}

/// Input layout: `key[4] phase offset nsplits split*(2 bytes, little endian) data...` (missing
/// header bytes read as zero). Checks that every implementation and the dispatched
/// [`apply_mask`](crate::apply_mask) equal both the byte-by-byte reference and the scalar oracle,
/// at the given start offset and phase, in one call and split at the given points with the
/// phase carried. Panics on any difference.
pub fn fuzz_check_mask(input: &[u8]) {
    let mut header = [0u8; 7];
    let n = input.len().min(7);
    header[..n].copy_from_slice(&input[..n]);
    let key = [header[0], header[1], header[2], header[3]];
    let phase = usize::from(header[4] & 3);
    let offset = usize::from(header[5] % 64);
    let nsplits = usize::from(header[6] % 8);
    let mut rest = &input[n..];
    let mut raw_splits = Vec::with_capacity(nsplits);
    for _ in 0..nsplits {
        if rest.len() < 2 {
            break;
        }
        raw_splits.push(usize::from(u16::from_le_bytes([rest[0], rest[1]])));
        rest = &rest[2..];
    }
    let data = rest;
    let mut splits: Vec<usize> = raw_splits.iter().map(|s| s % (data.len() + 1)).collect();
    splits.sort_unstable();

    let mut expected = data.to_vec();
    let expected_phase = reference(&mut expected, key, phase);

    let mut oracle = vec![0u8; offset + data.len()];
    oracle[offset..].copy_from_slice(data);
    assert_eq!(
        crate::apply_mask_scalar(&mut oracle[offset..], key, phase),
        expected_phase
    );
    assert_eq!(&oracle[offset..], &expected[..], "scalar != reference");

    let mut impls = crate::mask_implementations();
    impls.push(("dispatched", crate::apply_mask));
    for (name, f) in impls {
        // One call.
        let mut buf = vec![0u8; offset + data.len()];
        buf[offset..].copy_from_slice(data);
        assert_eq!(
            f(&mut buf[offset..], key, phase),
            expected_phase,
            "{name}: phase"
        );
        assert_eq!(&buf[offset..], &expected[..], "{name}: one call");
        assert!(
            buf[..offset].iter().all(|&b| b == 0),
            "{name}: wrote before"
        );

        // Split calls with the phase carried.
        buf[offset..].copy_from_slice(data);
        let mut p = phase;
        let mut start = 0;
        for &end in splits.iter().chain(std::iter::once(&data.len())) {
            p = f(&mut buf[offset + start..offset + end], key, p);
            start = end;
        }
        assert_eq!(p, expected_phase, "{name}: split phase");
        assert_eq!(
            &buf[offset..],
            &expected[..],
            "{name}: split calls {splits:?}"
        );
    }
}

/// The `mask` target's seed corpus (fuzz/corpus/mask) and a few generated inputs, so the ordinary
/// test suite covers the check.
#[cfg(test)]
mod corpus {
    use std::path::Path;

    #[test]
    fn fuzz_check_mask_over_seed_corpus() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/mask");
        let mut count = 0;
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            if path.is_file() {
                let data = std::fs::read(&path).unwrap();
                super::fuzz_check_mask(&data);
                count += 1;
            }
        }
        assert!(count >= 3, "expected seed files in {}", dir.display());
    }

    #[test]
    fn fuzz_check_mask_over_generated_inputs() {
        super::fuzz_check_mask(&[]);
        super::fuzz_check_mask(&[1, 2, 3]);
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
            super::fuzz_check_mask(&input);
        }
    }
}
