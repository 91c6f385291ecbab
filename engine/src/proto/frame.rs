//! Frame header parsing and encoding (RFC 6455 section 5.2). The payload is never copied here: parsing
//! returns the header and its length, and the caller finds the payload right behind it.

use super::error::Error;

/// Which end of the connection this endpoint is: it decides which frames must be masked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Receives masked frames, sends unmasked ones.
    Server,
    /// Receives unmasked frames, sends masked ones.
    Client,
}

/// Frame opcodes defined by RFC 6455 (section 5.2); the others are reserved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum OpCode {
    /// 0x0: continuation of a fragmented message.
    Continuation = 0x0,
    /// 0x1: text frame.
    Text = 0x1,
    /// 0x2: binary frame.
    Binary = 0x2,
    /// 0x8: connection close.
    Close = 0x8,
    /// 0x9: ping.
    Ping = 0x9,
    /// 0xA: pong.
    Pong = 0xA,
}

impl OpCode {
    /// The opcode for a 4-bit value, or `None` for the reserved ones (0x3-0x7, 0xB-0xF).
    pub fn from_u8(v: u8) -> Option<OpCode> {
        Some(match v {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            _ => return None,
        })
    }

    /// "Control frames are identified by opcodes where the most significant bit of the opcode is 1" (5.5).
    pub fn is_control(self) -> bool {
        (self as u8) & 0x8 != 0
    }
}

/// RSV1: used by permessage-deflate to mark a compressed message (RFC 7692).
pub const RSV1: u8 = 0b100;
/// RSV2.
pub const RSV2: u8 = 0b010;
/// RSV3.
pub const RSV3: u8 = 0b001;

/// The largest frame header: 2 bytes, 8 bytes of extended length, 4 bytes of masking key.
pub const MAX_HEADER_LEN: usize = 14;

/// The rules a received header is checked against.
#[derive(Clone, Copy, Debug)]
pub struct HeaderRules {
    /// Our role: a server requires masked frames, a client requires unmasked ones.
    pub role: Role,
    /// RSV bits that a negotiated extension gives meaning to (e.g. [`RSV1`] for permessage-deflate).
    pub allowed_rsv: u8,
    /// The largest payload accepted in one frame (checked before anything is allocated).
    pub max_frame_size: u64,
}

/// A parsed frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// "Indicates that this is the final fragment in a message."
    pub fin: bool,
    /// RSV1-3 as three bits (RSV1 = 0b100).
    pub rsv: u8,
    /// The frame's opcode.
    pub opcode: OpCode,
    /// The masking key, present on frames sent by a client.
    pub mask: Option<[u8; 4]>,
    /// The payload length.
    pub len: u64,
}

impl FrameHeader {
    /// Parses a header at the start of `buf`. `Ok(None)` means more bytes are needed; `Ok(Some((h, n)))`
    /// gives the header and its length in bytes, the payload starting at `buf[n]`. Every rule of section
    /// 5 that a header alone can break is checked here, each with its own error.
    pub fn parse(buf: &[u8], rules: &HeaderRules) -> Result<Option<(FrameHeader, usize)>, Error> {
        if buf.len() < 2 {
            return Ok(None);
        }
        let b0 = buf[0];
        let b1 = buf[1];
        let fin = b0 & 0x80 != 0;
        let rsv = (b0 >> 4) & 0x7;
        // "MUST be 0 unless an extension is negotiated that defines meanings for non-zero values" (5.2)
        if rsv & !rules.allowed_rsv != 0 {
            return Err(Error::ReservedBits(rsv));
        }
        // "If an unknown opcode is received, the receiving endpoint MUST _Fail the WebSocket Connection_"
        let opcode = OpCode::from_u8(b0 & 0x0F).ok_or(Error::UnknownOpcode(b0 & 0x0F))?;
        let masked = b1 & 0x80 != 0;
        match rules.role {
            // "The server MUST close the connection upon receiving a frame that is not masked." (5.1)
            Role::Server if !masked => return Err(Error::UnmaskedFrameFromClient),
            // "A client MUST close a connection if it detects a masked frame." (5.1)
            Role::Client if masked => return Err(Error::MaskedFrameFromServer),
            _ => {}
        }
        let len7 = b1 & 0x7F;
        if opcode.is_control() {
            // "All control frames MUST have a payload length of 125 bytes or less and MUST NOT be
            // fragmented." (5.5)
            if !fin {
                return Err(Error::FragmentedControlFrame);
            }
            if len7 > 125 {
                return Err(Error::ControlFrameTooBig(len7 as u64));
            }
            // RSV1 means "compressed" for data messages only (RFC 7692 section 6.1).
            if rsv != 0 {
                return Err(Error::ReservedBits(rsv));
            }
        }
        let (len, mut n) = match len7 {
            126 => {
                if buf.len() < 4 {
                    return Ok(None);
                }
                (u16::from_be_bytes([buf[2], buf[3]]) as u64, 4)
            }
            127 => {
                if buf.len() < 10 {
                    return Ok(None);
                }
                let mut b = [0u8; 8];
                b.copy_from_slice(&buf[2..10]);
                let len = u64::from_be_bytes(b);
                // "the most significant bit MUST be 0" (5.2)
                if len >> 63 != 0 {
                    return Err(Error::LengthTopBitSet);
                }
                (len, 10)
            }
            l => (l as u64, 2),
        };
        if len > rules.max_frame_size {
            return Err(Error::FrameTooBig {
                len,
                max: rules.max_frame_size,
            });
        }
        let mask = if masked {
            if buf.len() < n + 4 {
                return Ok(None);
            }
            let key = [buf[n], buf[n + 1], buf[n + 2], buf[n + 3]];
            n += 4;
            Some(key)
        } else {
            None
        };
        Ok(Some((
            FrameHeader {
                fin,
                rsv,
                opcode,
                mask,
                len,
            },
            n,
        )))
    }

    /// Writes the header into `out` and returns its length (2 to 14 bytes). The length uses the minimal
    /// encoding: "the minimal number of bytes MUST be used to encode the length" (5.2).
    pub fn encode(&self, out: &mut [u8; MAX_HEADER_LEN]) -> usize {
        out[0] = (self.fin as u8) << 7 | (self.rsv & 0x7) << 4 | self.opcode as u8;
        let mask_bit = if self.mask.is_some() { 0x80 } else { 0 };
        let mut n = if self.len < 126 {
            out[1] = mask_bit | self.len as u8;
            2
        } else if self.len <= u16::MAX as u64 {
            out[1] = mask_bit | 126;
            out[2..4].copy_from_slice(&(self.len as u16).to_be_bytes());
            4
        } else {
            out[1] = mask_bit | 127;
            out[2..10].copy_from_slice(&self.len.to_be_bytes());
            10
        };
        if let Some(key) = self.mask {
            out[n..n + 4].copy_from_slice(&key);
            n += 4;
        }
        n
    }

    /// The encoded header length for a payload of `len` bytes.
    pub fn encoded_len(len: u64, masked: bool) -> usize {
        let base = if len < 126 {
            2
        } else if len <= u16::MAX as u64 {
            4
        } else {
            10
        };
        base + if masked { 4 } else { 0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server() -> HeaderRules {
        HeaderRules {
            role: Role::Server,
            allowed_rsv: 0,
            max_frame_size: 1 << 24,
        }
    }
    fn client() -> HeaderRules {
        HeaderRules {
            role: Role::Client,
            allowed_rsv: 0,
            max_frame_size: 1 << 24,
        }
    }

    #[test]
    fn rfc_unmasked_hello() {
        // RFC 6455 5.7: a single-frame unmasked text message
        let f = [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
        let (h, n) = FrameHeader::parse(&f, &client()).unwrap().unwrap();
        assert_eq!(n, 2);
        assert!(h.fin);
        assert_eq!(h.opcode, OpCode::Text);
        assert_eq!(h.len, 5);
        assert_eq!(h.mask, None);
        assert_eq!(
            FrameHeader::parse(&f, &server()),
            Err(Error::UnmaskedFrameFromClient)
        );
    }

    #[test]
    fn rfc_masked_hello() {
        let f = [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        let (h, n) = FrameHeader::parse(&f, &server()).unwrap().unwrap();
        assert_eq!(n, 6);
        assert_eq!(h.mask, Some([0x37, 0xfa, 0x21, 0x3d]));
        assert_eq!(
            FrameHeader::parse(&f, &client()),
            Err(Error::MaskedFrameFromServer)
        );
    }

    #[test]
    fn rfc_lengths() {
        // 256 bytes binary in a single unmasked frame: 0x82 0x7E 0x0100
        let (h, n) = FrameHeader::parse(&[0x82, 0x7E, 0x01, 0x00], &client())
            .unwrap()
            .unwrap();
        assert_eq!((h.len, n), (256, 4));
        // 64 KiB: 0x82 0x7F 0x0000000000010000
        let f = [0x82, 0x7F, 0, 0, 0, 0, 0, 1, 0, 0];
        let (h, n) = FrameHeader::parse(&f, &client()).unwrap().unwrap();
        assert_eq!((h.len, n), (65536, 10));
        for cut in 0..f.len() {
            assert_eq!(FrameHeader::parse(&f[..cut], &client()), Ok(None));
        }
    }

    #[test]
    fn each_violation_is_distinct() {
        let r = client();
        assert_eq!(
            FrameHeader::parse(&[0xC1, 0], &r),
            Err(Error::ReservedBits(0b100))
        );
        assert_eq!(
            FrameHeader::parse(&[0x83, 0], &r),
            Err(Error::UnknownOpcode(3))
        );
        assert_eq!(
            FrameHeader::parse(&[0x8B, 0], &r),
            Err(Error::UnknownOpcode(0xB))
        );
        assert_eq!(
            FrameHeader::parse(&[0x89, 126], &r),
            Err(Error::ControlFrameTooBig(126))
        );
        assert_eq!(
            FrameHeader::parse(&[0x09, 0], &r),
            Err(Error::FragmentedControlFrame)
        );
        let top = [0x82, 0x7F, 0x80, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(FrameHeader::parse(&top, &r), Err(Error::LengthTopBitSet));
        let small = HeaderRules {
            max_frame_size: 100,
            ..r
        };
        assert_eq!(
            FrameHeader::parse(&[0x82, 126, 0, 101], &small),
            Err(Error::FrameTooBig { len: 101, max: 100 })
        );
        assert_eq!(Error::FrameTooBig { len: 1, max: 0 }.close_code().0, 1009);
        assert_eq!(Error::InvalidUtf8.close_code().0, 1007);
        assert_eq!(Error::UnknownOpcode(3).close_code().0, 1002);
        // RSV1 allowed on data frames when an extension negotiated it, never on control frames
        let deflate = HeaderRules {
            allowed_rsv: RSV1,
            ..r
        };
        assert!(FrameHeader::parse(&[0xC1, 0], &deflate).unwrap().is_some());
        assert_eq!(
            FrameHeader::parse(&[0xC9, 0], &deflate),
            Err(Error::ReservedBits(0b100))
        );
    }

    #[test]
    fn encode_round_trip() {
        for len in [0u64, 1, 125, 126, 127, 65535, 65536, 1 << 32] {
            for mask in [None, Some([1, 2, 3, 4])] {
                let h = FrameHeader {
                    fin: len % 2 == 0,
                    rsv: 0,
                    opcode: OpCode::Binary,
                    mask,
                    len,
                };
                let mut out = [0u8; MAX_HEADER_LEN];
                let n = h.encode(&mut out);
                assert_eq!(n, FrameHeader::encoded_len(len, mask.is_some()));
                let rules = HeaderRules {
                    role: if mask.is_some() {
                        Role::Server
                    } else {
                        Role::Client
                    },
                    allowed_rsv: 0,
                    max_frame_size: u64::MAX >> 1,
                };
                assert_eq!(FrameHeader::parse(&out[..n], &rules), Ok(Some((h, n))));
            }
        }
    }
}
