//! UTF-8 validation of text messages.
//!
//! RFC 6455 §8.1: "When an endpoint is to interpret a byte stream as UTF-8 but finds that the byte
//! stream is not, in fact, a valid UTF-8 stream, that endpoint MUST _Fail the WebSocket
//! Connection_." Text may arrive in fragments (and in reads) that split a code point, so
//! [`Utf8Stream`] carries an incomplete code point from one piece to the next, and fails as soon
//! as the bytes seen so far cannot begin valid UTF-8 (Autobahn's "fail fast" cases, 6.4.x).

use std::fmt;

/// The bytes are not valid UTF-8 (or a message ended inside a code point).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Utf8Error;

impl fmt::Display for Utf8Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid UTF-8 in text message")
    }
}

impl std::error::Error for Utf8Error {}

/// Whole-buffer validation.
#[inline]
pub fn validate_utf8(buf: &[u8]) -> bool {
    simdutf8::basic::from_utf8(buf).is_ok()
}

/// What the bytes at the start of a slice are, as far as one code point goes.
#[derive(Debug, PartialEq, Eq)]
enum Seq {
    /// A whole valid code point of this many bytes.
    Complete(usize),
    /// A valid but truncated code point: every byte present is allowed where it stands.
    Incomplete,
    Invalid,
}

/// Check the code point that starts at `bytes[0]` (`bytes` is not empty), using the table of
/// well-formed byte sequences (Unicode 15, table 3-7), which excludes overlongs (C0, C1, E0 80..9F,
/// F0 80..8F), surrogates (ED A0..BF) and code points above U+10FFFF (F4 90.., F5..FF).
fn check_seq(bytes: &[u8]) -> Seq {
    let b0 = bytes[0];
    let width = match b0 {
        0x00..=0x7F => return Seq::Complete(1),
        0xC2..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF4 => 4,
        _ => return Seq::Invalid,
    };
    for i in 1..width {
        let Some(&b) = bytes.get(i) else {
            return Seq::Incomplete;
        };
        let (lo, hi) = match (i, b0) {
            (1, 0xE0) => (0xA0, 0xBF),
            (1, 0xED) => (0x80, 0x9F),
            (1, 0xF0) => (0x90, 0xBF),
            (1, 0xF4) => (0x80, 0x8F),
            _ => (0x80, 0xBF),
        };
        if !(lo..=hi).contains(&b) {
            return Seq::Invalid;
        }
    }
    Seq::Complete(width)
}

/// Streaming validator for a fragmented text message.
///
/// Feed each piece with [`feed`](Self::feed) and call [`finish`](Self::finish) at the end of the
/// message. After an error every call fails until [`reset`](Self::reset) (or `finish`).
#[derive(Debug, Default, Clone)]
pub struct Utf8Stream {
    /// The incomplete code point carried from the previous piece (up to 3 bytes; the 4th slot is
    /// used while completing it).
    carry: [u8; 4],
    carry_len: u8,
    failed: bool,
}

impl Utf8Stream {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feed the next piece. Fails as soon as the data seen so far can't be a prefix of valid
    /// UTF-8, even if the offending code point is cut at the end of `chunk`.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), Utf8Error> {
        if self.failed {
            return Err(Utf8Error);
        }
        let mut rest = chunk;
        if self.carry_len > 0 {
            let have = usize::from(self.carry_len);
            let take = rest.len().min(4 - have);
            self.carry[have..have + take].copy_from_slice(&rest[..take]);
            match check_seq(&self.carry[..have + take]) {
                Seq::Invalid => return self.fail(),
                Seq::Incomplete => {
                    // Still short: `take` was the whole chunk (4 bytes would have completed it).
                    self.carry_len = (have + take) as u8;
                    return Ok(());
                }
                Seq::Complete(width) => {
                    rest = &rest[width - have..];
                    self.carry_len = 0;
                }
            }
        }
        match simdutf8::compat::from_utf8(rest) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_none() => {
                // The input ended inside a code point: carry it, if what is there is allowed.
                let tail = &rest[e.valid_up_to()..];
                if tail.len() < 4 && check_seq(tail) == Seq::Incomplete {
                    self.carry[..tail.len()].copy_from_slice(tail);
                    self.carry_len = tail.len() as u8;
                    Ok(())
                } else {
                    self.fail()
                }
            }
            Err(_) => self.fail(),
        }
    }

    /// End of message: fails if the stream failed or a code point is still incomplete. Either
    /// way the stream is then ready for the next message.
    pub fn finish(&mut self) -> Result<(), Utf8Error> {
        let ok = !self.failed && self.carry_len == 0;
        self.reset();
        if ok {
            Ok(())
        } else {
            Err(Utf8Error)
        }
    }

    pub fn reset(&mut self) {
        *self = Self::default();
    }

    /// Whether an incomplete code point is carried.
    pub fn is_pending(&self) -> bool {
        self.carry_len > 0
    }

    fn fail(&mut self) -> Result<(), Utf8Error> {
        self.failed = true;
        self.carry_len = 0;
        Err(Utf8Error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_seq_agrees_with_std_on_all_short_sequences() {
        // Every 1- and 2-byte sequence, and every 3-byte one with a valid-looking start.
        for b0 in 0..=255u8 {
            for b1 in 0..=255u8 {
                let s = [b0, b1];
                let std_ok = std::str::from_utf8(&s).is_ok();
                let ours = match check_seq(&s) {
                    Seq::Complete(1) => check_seq(&s[1..]) == Seq::Complete(1),
                    Seq::Complete(2) => true,
                    _ => false,
                };
                assert_eq!(std_ok, ours, "{s:02x?}");
                // A prefix is Incomplete exactly when std says "ends early".
                let std_incomplete =
                    matches!(std::str::from_utf8(&s[..1]), Err(e) if e.error_len().is_none());
                assert_eq!(
                    std_incomplete,
                    check_seq(&s[..1]) == Seq::Incomplete,
                    "{b0:02x}"
                );
            }
        }
    }
}
