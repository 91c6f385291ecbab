//! `validate_utf8` and `Utf8Stream` against `std::str::from_utf8`.

use surge_simd::{validate_utf8, Utf8Error, Utf8Stream};

/// Bytes that must have been seen before the input can be proven invalid (`None` if it is a
/// valid prefix of UTF-8). std's `error_len` counts the bytes of the maximal invalid subpart; when
/// that subpart starts with a valid lead byte it is the byte after it that proves the error.
fn bytes_to_prove_invalid(input: &[u8]) -> Option<usize> {
    let e = std::str::from_utf8(input).err()?;
    let v = e.valid_up_to();
    let len = e.error_len()?;
    let bad_lead = matches!(input[v], 0x80..=0xC1 | 0xF5..=0xFF);
    Some(if bad_lead { v + 1 } else { v + len + 1 })
}

/// Feed `input` cut at the sorted `cuts` and check the outcome against std: a valid input passes
/// every feed and `finish`; an invalid one fails exactly at the first piece that reaches the
/// byte proving it invalid (not before, not after); a truncated one fails only at `finish`.
fn check_split(input: &[u8], cuts: &[usize]) {
    let proof = bytes_to_prove_invalid(input);
    let valid = std::str::from_utf8(input).is_ok();
    assert_eq!(validate_utf8(input), valid, "{input:02x?}");
    let mut s = Utf8Stream::new();
    let mut start = 0;
    for &end in cuts.iter().chain(std::iter::once(&input.len())) {
        let r = s.feed(&input[start..end]);
        match proof {
            Some(n) if end >= n && start < n => {
                assert_eq!(
                    r,
                    Err(Utf8Error),
                    "{input:02x?} cuts {cuts:?}: piece {start}..{end} should fail (proof at {n})"
                );
                assert!(s.feed(b"a").is_err(), "errors are sticky");
                assert!(s.finish().is_err());
                return;
            }
            _ => assert_eq!(
                r,
                Ok(()),
                "{input:02x?} cuts {cuts:?}: piece {start}..{end} should pass"
            ),
        }
        start = end;
    }
    assert!(proof.is_none());
    assert_eq!(s.is_pending(), !valid, "{input:02x?} cuts {cuts:?}");
    assert_eq!(s.finish().is_ok(), valid, "{input:02x?} cuts {cuts:?}");
    assert!(!s.is_pending());
}

fn interesting() -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"Hello, world".to_vec(),
        "κόσμε".as_bytes().to_vec(),
        "Hello-µ@ßöäüàá-UTF-8!!".as_bytes().to_vec(),
        "日本語のテキスト".as_bytes().to_vec(),
        "emoji 😀🎉 mixed ñ 中".as_bytes().to_vec(),
        "\u{7F}\u{80}\u{7FF}\u{800}\u{FFFF}\u{10000}\u{10FFFF}"
            .as_bytes()
            .to_vec(),
        "\u{D7FF}\u{E000}\u{FFFD}".as_bytes().to_vec(),
        // Surrogates (U+D800, U+DFFF, a CESU-8 pair).
        vec![0xED, 0xA0, 0x80],
        vec![0xED, 0xBF, 0xBF],
        vec![0xED, 0xA0, 0xBD, 0xED, 0xB8, 0x80],
        // Overlongs.
        vec![0xC0, 0x80],
        vec![0xC1, 0xBF],
        vec![0xE0, 0x80, 0x80],
        vec![0xE0, 0x9F, 0xBF],
        vec![0xF0, 0x80, 0x80, 0x80],
        vec![0xF0, 0x8F, 0xBF, 0xBF],
        // Above U+10FFFF and never-valid lead bytes.
        vec![0xF4, 0x90, 0x80, 0x80],
        vec![0xF5, 0x80, 0x80, 0x80],
        vec![0xF7, 0xBF, 0xBF, 0xBF],
        vec![0xF8, 0x88, 0x80, 0x80, 0x80],
        vec![0xFE],
        vec![0xFF],
        // Lone continuation bytes, truncated sequences, a bad continuation.
        vec![0x80],
        vec![0xBF, 0x41],
        vec![0xC2],
        vec![0xE2, 0x82],
        vec![0xF0, 0x9F, 0x98],
        vec![0xE2, 0x41, 0x82],
        vec![0xF0, 0x9F, 0x41, 0x80],
        vec![0xC2, 0xC2, 0x80],
    ];
    // Each of those in the middle of text, to exercise the vector paths and the carry.
    let base = v.clone();
    for s in &base {
        let mut long = "ascii prefix κόσμε ".as_bytes().to_vec();
        long.extend_from_slice(s);
        long.extend_from_slice("tail 😀 text".as_bytes());
        v.push(long);
    }
    v
}

#[test]
fn interesting_strings_at_every_split_point() {
    for s in interesting() {
        check_split(&s, &[]);
        for at in 0..=s.len() {
            check_split(&s, &[at]);
        }
        let bytewise: Vec<usize> = (1..s.len()).collect();
        check_split(&s, &bytewise);
    }
}

#[test]
fn short_strings_at_every_pair_of_split_points() {
    for s in interesting().iter().filter(|s| s.len() <= 40) {
        for a in 0..=s.len() {
            for b in a..=s.len() {
                check_split(s, &[a, b]);
            }
        }
    }
}

#[test]
fn fail_fast_on_surrogate_at_end_of_piece() {
    let mut s = Utf8Stream::new();
    assert!(s.feed("κόσμε".as_bytes()).is_ok());
    assert!(s.feed(&[0xED, 0xA0]).is_err(), "must fail at this feed");
    assert!(s.finish().is_err());
}

#[test]
fn fail_fast_cases() {
    let cases: [&[u8]; 6] = [
        &[0xF4, 0x90],
        &[0xED, 0xA0],
        &[0xC0],
        &[0xC1],
        &[0xF5],
        &[0xE0, 0x80],
    ];
    for case in cases {
        // In one piece, after valid text, and completing a carried lead byte.
        assert!(Utf8Stream::new().feed(case).is_err(), "{case:02x?}");
        let mut s = Utf8Stream::new();
        s.feed(b"ok ").unwrap();
        assert!(s.feed(case).is_err(), "{case:02x?}");
        if case.len() == 2 {
            let mut s = Utf8Stream::new();
            s.feed(&case[..1]).unwrap();
            assert!(s.is_pending());
            assert!(s.feed(&case[1..]).is_err(), "{case:02x?}");
        }
    }
}

#[test]
fn pending_finish_and_reset() {
    let euro = "€".as_bytes();
    let mut s = Utf8Stream::new();
    assert!(!s.is_pending());
    s.feed(&euro[..1]).unwrap();
    assert!(s.is_pending());
    s.feed(&[]).unwrap();
    assert!(s.is_pending());
    s.feed(&euro[1..2]).unwrap();
    assert!(s.is_pending());
    s.feed(&euro[2..]).unwrap();
    assert!(!s.is_pending());
    s.finish().unwrap();

    s.feed(&euro[..2]).unwrap();
    assert_eq!(s.finish(), Err(Utf8Error));
    // finish leaves the stream ready for the next message.
    s.feed(b"next").unwrap();
    s.finish().unwrap();

    s.feed(&[0xFF]).unwrap_err();
    s.reset();
    s.feed(euro).unwrap();
    s.finish().unwrap();
    assert_eq!(Utf8Error.to_string(), "invalid UTF-8 in text message");
}

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Mostly valid UTF-8 (ASCII and random code points of every width), with the occasional random
/// byte or dropped byte.
fn biased_utf8(rng: &mut XorShift, max_chars: u64) -> Vec<u8> {
    let mut out = Vec::new();
    let n = rng.below(max_chars + 1);
    for _ in 0..n {
        match rng.below(100) {
            0..=49 => out.push(b' ' + rng.below(95) as u8),
            50..=94 => {
                let cp = match rng.below(3) {
                    0 => 0x80 + rng.below(0x780),
                    1 => 0x800 + rng.below(0xF800),
                    _ => 0x10000 + rng.below(0x100000),
                } as u32;
                if let Some(c) = char::from_u32(cp) {
                    let mut b = [0; 4];
                    out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
                }
            }
            95..=97 => out.push(rng.next() as u8),
            _ => {
                out.pop();
            }
        }
    }
    out
}

#[test]
fn random_differential_against_std() {
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let (mut valid, mut invalid) = (0, 0);
    for round in 0..6000 {
        // Mostly short inputs in small pieces; some long ones so pieces exceed simdutf8's blocks.
        let (max_chars, max_piece) = if round % 10 == 0 {
            (600, 300)
        } else {
            (40, 12)
        };
        let input = biased_utf8(&mut rng, max_chars);
        let mut cuts = Vec::new();
        let mut at = 0;
        loop {
            at += rng.below(max_piece) as usize;
            if at >= input.len() {
                break;
            }
            cuts.push(at);
        }
        check_split(&input, &cuts);
        if std::str::from_utf8(&input).is_ok() {
            valid += 1;
        } else {
            invalid += 1;
        }
    }
    assert!(
        valid > 1000 && invalid > 1000,
        "valid {valid} invalid {invalid}"
    );
}

#[test]
fn large_pieces() {
    let text = "ASCII text, Ελληνικά, 中文字符, emoji 🚀🦀 and more. ".repeat(2000);
    let bytes = text.as_bytes();
    assert!(validate_utf8(bytes));
    for piece in [1000, 4096, 4099, 65536] {
        let mut s = Utf8Stream::new();
        for chunk in bytes.chunks(piece) {
            s.feed(chunk).unwrap();
        }
        s.finish().unwrap();
    }
    let mut bad = bytes.to_vec();
    let pos = bad.len() / 2;
    bad[pos] = 0xFF;
    assert!(!validate_utf8(&bad));
    check_split(&bad, &[4096, 8192, pos, pos + 1, pos + 4096]);
}
