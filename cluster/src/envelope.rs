//! What a node puts on the broker for one publish: a 12-byte header and the payload.
//!
//! ```text
//! offset  size  field
//! 0       1     magic 0x53 ('S')
//! 1       1     version (1)
//! 2       1     kind: 1 text, 2 binary
//! 3       1     flags: bit 0 set = never compress (PreparedMessage::uncompressed)
//! 4       8     publishing node's id, little-endian u64
//! 12      ...   payload (the message as published, uncompressed)
//! ```
//!
//! The topic is not in the envelope: it is the broker subject or channel the envelope travels on
//! (see [`crate::ClusterConfig::prefix`]). A receiver drops, and counts as malformed, an envelope
//! with another magic or version, an unknown kind, or text that is not UTF-8.

use surge::{MessageKind, PreparedMessage};

/// Bytes before the payload.
pub const HEADER_LEN: usize = 12;
const MAGIC: u8 = 0x53;
const VERSION: u8 = 1;
const UNCOMPRESSED: u8 = 1;

/// Encodes `msg` as published by `node`.
pub fn encode(node: u64, msg: &PreparedMessage) -> Vec<u8> {
    let payload = msg.payload();
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.push(MAGIC);
    out.push(VERSION);
    out.push(match msg.kind() {
        MessageKind::Text => 1,
        MessageKind::Binary => 2,
    });
    out.push(if msg.compressible() { 0 } else { UNCOMPRESSED });
    out.extend_from_slice(&node.to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// A decoded envelope, the payload borrowed.
#[derive(Debug, PartialEq, Eq)]
pub struct Envelope<'a> {
    pub node: u64,
    pub kind: MessageKind,
    pub compressible: bool,
    pub payload: &'a [u8],
}

impl Envelope<'_> {
    /// The message to deliver (framed once, for every subscriber of the node).
    pub fn prepare(&self) -> PreparedMessage {
        if self.compressible {
            PreparedMessage::new(self.kind, self.payload)
        } else {
            PreparedMessage::uncompressed(self.kind, self.payload)
        }
    }
}

/// Decodes an envelope; `None` if it is not one (or its text is not UTF-8).
pub fn decode(bytes: &[u8]) -> Option<Envelope<'_>> {
    if bytes.len() < HEADER_LEN || bytes[0] != MAGIC || bytes[1] != VERSION {
        return None;
    }
    let kind = match bytes[2] {
        1 => MessageKind::Text,
        2 => MessageKind::Binary,
        _ => return None,
    };
    let payload = &bytes[HEADER_LEN..];
    if kind == MessageKind::Text && std::str::from_utf8(payload).is_err() {
        return None;
    }
    Some(Envelope {
        node: u64::from_le_bytes(bytes[4..12].try_into().expect("8 bytes")),
        kind,
        compressible: bytes[3] & UNCOMPRESSED == 0,
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejects() {
        let bytes = encode(0xfeed, &PreparedMessage::text("héllo"));
        assert_eq!(bytes.len(), HEADER_LEN + "héllo".len());
        let e = decode(&bytes).unwrap();
        assert_eq!(
            e,
            Envelope {
                node: 0xfeed,
                kind: MessageKind::Text,
                compressible: true,
                payload: "héllo".as_bytes(),
            }
        );
        assert_eq!(e.prepare().payload(), "héllo".as_bytes());
        let raw = encode(
            7,
            &PreparedMessage::uncompressed(MessageKind::Binary, &[0xff]),
        );
        let e = decode(&raw).unwrap();
        assert!(!e.compressible && e.kind == MessageKind::Binary && e.payload == [0xff]);
        assert!(!e.prepare().compressible());
        // Not envelopes: short, other magic or version, unknown kind, text that is not UTF-8.
        assert!(decode(&bytes[..HEADER_LEN - 1]).is_none());
        for (at, v) in [(0, 0u8), (1, 2), (2, 9)] {
            let mut b = bytes.clone();
            b[at] = v;
            assert!(decode(&b).is_none(), "byte {at} = {v}");
        }
        let mut bad = encode(1, &PreparedMessage::text("ok"));
        bad.push(0xc3);
        assert!(decode(&bad).is_none());
    }
}
