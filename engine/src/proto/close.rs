//! Close frames (RFC 6455 sections 5.5.1 and 7.4): payload parsing and validation.

use super::error::{CloseCode, Error};

/// Parses a close frame's body into its code and reason. An empty body gives
/// [`CloseCode::NO_STATUS`]; a 1-byte body, a code that may not be on the wire, or a reason that is not
/// UTF-8 are protocol errors.
pub fn parse_close_payload(payload: &[u8]) -> Result<(CloseCode, &str), Error> {
    match payload.len() {
        0 => Ok((CloseCode::NO_STATUS, "")),
        // "If there is a body, the first two bytes of the body MUST be a 2-byte unsigned integer" (5.5.1)
        1 => Err(Error::ClosePayloadTooShort),
        _ => {
            let code = CloseCode(u16::from_be_bytes([payload[0], payload[1]]));
            if !code.is_valid_on_wire() {
                return Err(Error::InvalidCloseCode(code.0));
            }
            // "the data ... is not guaranteed to be human readable" but "the body ... MUST be UTF-8"
            let reason =
                simdutf8::basic::from_utf8(&payload[2..]).map_err(|_| Error::InvalidUtf8)?;
            Ok((code, reason))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes() {
        for c in 0..=u16::MAX {
            let valid = matches!(c, 1000..=1003 | 1007..=1014 | 3000..=4999);
            assert_eq!(CloseCode(c).is_valid_on_wire(), valid, "{c}");
            let body = c.to_be_bytes();
            assert_eq!(parse_close_payload(&body).is_ok(), valid, "{c}");
        }
        assert_eq!(parse_close_payload(&[]), Ok((CloseCode::NO_STATUS, "")));
        assert_eq!(parse_close_payload(&[3]), Err(Error::ClosePayloadTooShort));
        assert_eq!(
            parse_close_payload(&[0x03, 0xe8, b'o', b'k']),
            Ok((CloseCode::NORMAL, "ok"))
        );
        assert_eq!(
            parse_close_payload(&[0x03, 0xe8, 0xff]),
            Err(Error::InvalidUtf8)
        );
    }
}
