//! Every mask implementation against the scalar oracle and a byte-by-byte reference.

use surge_simd::{apply_mask, apply_mask_scalar, mask_implementation, mask_implementations};

const KEYS: [[u8; 4]; 4] = [
    [0x00, 0x00, 0x00, 0x00],
    [0x01, 0x02, 0x03, 0x04],
    [0x37, 0xfa, 0x21, 0x3d],
    [0xff, 0x80, 0x7f, 0x5a],
];

fn reference(buf: &mut [u8], key: [u8; 4], phase: usize) -> usize {
    for (i, b) in buf.iter_mut().enumerate() {
        *b ^= key[(phase + i) % 4];
    }
    (phase + buf.len()) % 4
}

/// Deterministic filler: a different byte pattern for each length.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Check one (len, offset, phase, key) case for every implementation, including that bytes around
/// the slice (guard bytes) are left alone.
fn check_case(
    impls: &[(&'static str, surge_simd::MaskFn)],
    data: &[u8],
    offset: usize,
    key: [u8; 4],
    phase: usize,
) {
    const GUARD: usize = 16;
    let mut expected = data.to_vec();
    let expected_phase = reference(&mut expected, key, phase);
    let mut buf = vec![0xA5u8; offset + data.len() + GUARD];
    for &(name, f) in impls {
        buf.fill(0xA5);
        buf[offset..offset + data.len()].copy_from_slice(data);
        let got_phase = f(&mut buf[offset..offset + data.len()], key, phase);
        assert_eq!(
            got_phase,
            expected_phase,
            "{name}: phase len={} off={offset} phase={phase}",
            data.len()
        );
        if buf[offset..offset + data.len()] != expected[..] {
            let first = buf[offset..]
                .iter()
                .zip(&expected)
                .position(|(a, b)| a != b)
                .unwrap();
            panic!(
                "{name}: len={} off={offset} phase={phase} key={key:02x?}: first difference at {first}",
                data.len()
            );
        }
        assert!(
            buf[..offset].iter().all(|&b| b == 0xA5),
            "{name}: wrote before"
        );
        assert!(
            buf[offset + data.len()..].iter().all(|&b| b == 0xA5),
            "{name}: wrote after"
        );
    }
}

fn all_impls() -> Vec<(&'static str, surge_simd::MaskFn)> {
    let mut v = mask_implementations();
    v.push(("dispatched", apply_mask));
    v
}

#[test]
fn implementations_are_listed_best_first_with_scalar_last() {
    let impls = mask_implementations();
    assert_eq!(impls.last().unwrap().0, "scalar");
    let names: Vec<_> = impls.iter().map(|(n, _)| *n).collect();
    assert!(names.contains(&mask_implementation()), "{names:?}");
    #[cfg(target_arch = "x86_64")]
    {
        assert!(names.contains(&"sse2"));
        if std::is_x86_feature_detected!("avx2") {
            assert!(names.contains(&"avx2"));
        }
        if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bw") {
            assert!(names.contains(&"avx512"));
        }
    }
    eprintln!(
        "implementations: {names:?}, dispatched: {}",
        mask_implementation()
    );
}

#[test]
fn scalar_matches_reference_exhaustively_small() {
    let impls: Vec<(&'static str, surge_simd::MaskFn)> = vec![("scalar", apply_mask_scalar)];
    for len in 0..=40 {
        let data = pattern(len, len as u64);
        for offset in 0..16 {
            for phase in 0..4 {
                for key in KEYS {
                    check_case(&impls, &data, offset, key, phase);
                }
            }
        }
    }
}

#[test]
fn every_implementation_lengths_0_to_300_all_offsets_and_phases() {
    let impls = all_impls();
    for len in 0..=300 {
        let data = pattern(len, 1000 + len as u64);
        for offset in 0..64 {
            for phase in 0..4 {
                // Vary the key with the case so every key meets every alignment class.
                let key = KEYS[(len + offset + phase) % KEYS.len()];
                check_case(&impls, &data, offset, key, phase);
            }
        }
    }
}

#[test]
fn every_implementation_large_sizes() {
    let impls = all_impls();
    for len in [4095, 4096, 4097, 65536 + 7, (1 << 20) + 3] {
        let data = pattern(len, len as u64);
        for offset in [0, 1, 14, 31, 63] {
            for phase in 0..4 {
                check_case(&impls, &data, offset, KEYS[2], phase);
            }
        }
    }
}

#[test]
fn phase_above_three_is_taken_modulo_four() {
    for (name, f) in all_impls() {
        let data = pattern(37, 5);
        let (mut a, mut b) = (data.clone(), data.clone());
        assert_eq!(f(&mut a, KEYS[2], 6), f(&mut b, KEYS[2], 2), "{name}");
        assert_eq!(a, b, "{name}");
    }
}

#[test]
fn split_calls_with_carried_phase_equal_one_call() {
    let data = pattern(1000, 77);
    for (name, f) in all_impls() {
        for key in KEYS {
            for phase in 0..4 {
                let mut whole = data.clone();
                let whole_phase = f(&mut whole, key, phase);
                // Every single split point.
                for at in 0..=data.len() {
                    let mut split = data.clone();
                    let (a, b) = split.split_at_mut(at);
                    let p = f(a, key, phase);
                    let p = f(b, key, p);
                    assert_eq!(p, whole_phase, "{name} at={at}");
                    assert!(
                        split == whole,
                        "{name}: split at {at} key={key:02x?} phase={phase}"
                    );
                }
                // Many pieces of irregular sizes.
                let mut pieces = data.clone();
                let (mut start, mut p, mut step) = (0, phase, 1);
                while start < pieces.len() {
                    let end = (start + step).min(pieces.len());
                    p = f(&mut pieces[start..end], key, p);
                    start = end;
                    step = (step * 7 + 3) % 131;
                }
                assert_eq!(p, whole_phase, "{name}");
                assert!(pieces == whole, "{name}: pieces");
            }
        }
    }
}

#[test]
fn applying_twice_restores_the_input() {
    let data = pattern(5000, 9);
    for (name, f) in all_impls() {
        let mut buf = data.clone();
        f(&mut buf[3..], KEYS[3], 1);
        f(&mut buf[3..], KEYS[3], 1);
        assert!(buf == data, "{name}");
    }
}

#[test]
fn rfc6455_example_masked_hello() {
    // RFC 6455 §5.7: "A single-frame masked text message" 0x81 0x85 0x37 0xfa 0x21 0x3d 0x7f 0x9f
    // 0x4d 0x51 0x58 (contains "Hello").
    for (name, f) in all_impls() {
        let mut payload = [0x7f, 0x9f, 0x4d, 0x51, 0x58];
        assert_eq!(f(&mut payload, [0x37, 0xfa, 0x21, 0x3d], 0), 1, "{name}");
        assert_eq!(&payload, b"Hello", "{name}");
    }
}
