//! Messages encoded once and sent to many connections (gorilla's `PreparedMessage`).
//!
//! A [`PreparedMessage`] holds the whole server frame (header and payload) in one reference-counted
//! buffer. Sending it to a connection queues a reference to that buffer (one iovec of the
//! connection's write queue), never a copy of the payload, on any worker: the buffer lives until
//! the last connection's write of it completes.
//!
//! Variants: a connection that negotiated an extension changing the frame (permessage-deflate,
//! one parameter set per variant) needs other bytes for the same message. Each variant is encoded
//! at most once, lazily, by the first worker that needs it ([`PreparedMessage::variant`]), and
//! shared the same way as the plain frame. The engine compresses a prepared message once per
//! sending window among its recipients (key: the window bits, see [`deflate_key`]), unless it is
//! shorter than `deflate.min_size` or made with [`PreparedMessage::uncompressed`].
//!
//! The same type is [`surge::blocking`](crate::blocking)'s (gorilla's `PreparedMessage`):
//! `PreparedMessage::new` also takes a [`MessageType`](crate::blocking::MessageType), control types
//! included ([`PreparedKind`]), and `write_prepared_message` sends it on a blocking connection.

use std::sync::{Arc, Mutex};

use bytes::Bytes;

use crate::proto::{
    compress_variant, DeflatePool, FrameHeader, MessageKind, OpCode, SendError, Variant,
    MAX_HEADER_LEN, RSV1,
};

/// Identifies one encoding of a message: 0 is the plain frame; extensions pick their own keys
/// (e.g. a hash of the negotiated deflate parameters).
pub type VariantKey = u64;

/// The plain frame's key.
pub const PLAIN: VariantKey = 0;

/// The key of the permessage-deflate variant compressed (without context takeover) for a sending
/// window of `window_bits` (8..=15): connections sending with the same window share it.
pub fn deflate_key(window_bits: u8) -> VariantKey {
    VariantKey::from(window_bits)
}

/// A message encoded once, shared by every connection it is sent to. Cheap to clone (a reference
/// count); `Send + Sync`.
#[derive(Clone)]
pub struct PreparedMessage {
    inner: Arc<Inner>,
}

struct Inner {
    /// Text or Binary; Close, Ping or Pong for a control message (surge::blocking's).
    opcode: OpCode,
    /// The unmasked server frame: header then payload, FIN set, no RSV bits.
    plain: Bytes,
    /// Where the payload starts in `plain`.
    header_len: u8,
    /// May be compressed for connections that negotiated permessage-deflate.
    compressible: bool,
    /// Other encodings, computed on first use (few: one per negotiated parameter set).
    variants: Mutex<Vec<(VariantKey, Bytes)>>,
}

impl std::fmt::Debug for PreparedMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedMessage")
            .field("opcode", &self.inner.opcode)
            .field("payload_len", &self.payload().len())
            .finish_non_exhaustive()
    }
}

/// What [`PreparedMessage::new`] takes as the message's kind, and what it then gives back:
///
/// - the engine's [`MessageKind`]: the message;
/// - surge::blocking's [`MessageType`](crate::blocking::MessageType), as gorilla's
///   `NewPreparedMessage(messageType, data)`: a `Result`, since a control type (close, ping, pong)
///   is accepted too, and its payload may be at most 125 bytes.
///
/// Sealed: implemented for those two only.
pub trait PreparedKind: sealed::Sealed {
    /// What [`PreparedMessage::new`] returns for this kind.
    type Prepared;

    /// Makes the message ([`PreparedMessage::new`] calls this).
    fn prepare(self, payload: &[u8]) -> Self::Prepared;
}

pub(crate) mod sealed {
    pub trait Sealed {}
}

impl sealed::Sealed for MessageKind {}

impl PreparedKind for MessageKind {
    type Prepared = PreparedMessage;

    fn prepare(self, payload: &[u8]) -> PreparedMessage {
        PreparedMessage::build(self.opcode(), payload, true)
    }
}

impl PreparedMessage {
    /// Encodes `payload` as one unfragmented frame of `kind`, a [`MessageKind`]. Text is not
    /// re-validated here: use [`text`](Self::text) for a `&str`.
    ///
    /// `kind` may also be a [`blocking::MessageType`](crate::blocking::MessageType) (gorilla's
    /// `NewPreparedMessage`): the result is then a `Result` (see [`PreparedKind`]).
    // `Self` for a `MessageKind`, `Result<Self, _>` for gorilla's `MessageType`.
    #[allow(clippy::new_ret_no_self)]
    pub fn new<K: PreparedKind>(kind: K, payload: &[u8]) -> K::Prepared {
        kind.prepare(payload)
    }

    /// The same as [`new`](Self::new), but always sent uncompressed, whatever the connections
    /// negotiated: the per-message opt-out (already compressed data, or secrets that must not be
    /// compressed along with attacker-controlled data).
    pub fn uncompressed(kind: MessageKind, payload: &[u8]) -> Self {
        Self::build(kind.opcode(), payload, false)
    }

    /// A control message (close, ping or pong), for surge::blocking's `write_prepared_message`
    /// (gorilla lets a prepared message be of any type). The engine's sends refuse it: see
    /// [`is_control`](Self::is_control).
    pub(crate) fn control(opcode: OpCode, payload: &[u8]) -> Result<Self, SendError> {
        debug_assert!(opcode.is_control());
        if payload.len() > 125 {
            return Err(SendError::ControlTooLong);
        }
        Ok(Self::build(opcode, payload, false))
    }

    fn build(opcode: OpCode, payload: &[u8], compressible: bool) -> Self {
        let header = FrameHeader {
            fin: true,
            rsv: 0,
            opcode,
            mask: None,
            len: payload.len() as u64,
        };
        let mut head = [0u8; MAX_HEADER_LEN];
        let n = header.encode(&mut head);
        let mut frame = Vec::with_capacity(n + payload.len());
        frame.extend_from_slice(&head[..n]);
        frame.extend_from_slice(payload);
        PreparedMessage {
            inner: Arc::new(Inner {
                opcode,
                plain: Bytes::from(frame),
                header_len: n as u8,
                compressible,
                variants: Mutex::new(Vec::new()),
            }),
        }
    }

    /// A text message.
    pub fn text(text: &str) -> Self {
        Self::new(MessageKind::Text, text.as_bytes())
    }

    /// A binary message.
    pub fn binary(data: &[u8]) -> Self {
        Self::new(MessageKind::Binary, data)
    }

    /// The message kind. A control message ([`is_control`](Self::is_control)) is neither text
    /// nor binary; it reports `Binary`.
    pub fn kind(&self) -> MessageKind {
        match self.inner.opcode {
            OpCode::Text => MessageKind::Text,
            _ => MessageKind::Binary,
        }
    }

    /// The frame's opcode: `Text` or `Binary`, or for a control message `Close`, `Ping` or `Pong`.
    pub fn opcode(&self) -> OpCode {
        self.inner.opcode
    }

    /// Whether this is a control message (close, ping or pong), made through surge::blocking's
    /// [`MessageType`](crate::blocking::MessageType) for its `write_prepared_message`. The
    /// engine's sends refuse one: [`Conn::send_prepared`](crate::Conn::send_prepared) answers
    /// [`SendStatus::Invalid`](crate::SendStatus::Invalid), a handle's send discards it, and a
    /// publish of one reaches no connection and no [`FanoutBridge`](crate::FanoutBridge) (the
    /// engine sends control frames with `ping`, `pong` and `close`).
    pub fn is_control(&self) -> bool {
        self.inner.opcode.is_control()
    }

    /// The payload (as sent without extensions).
    pub fn payload(&self) -> &[u8] {
        &self.inner.plain[usize::from(self.inner.header_len)..]
    }

    /// Whether the message may be sent compressed (not made with
    /// [`uncompressed`](Self::uncompressed)).
    pub fn compressible(&self) -> bool {
        self.inner.compressible
    }

    /// How many variants besides the plain frame have been encoded so far (e.g. one per distinct
    /// permessage-deflate window among the connections it was sent to).
    pub fn variant_count(&self) -> usize {
        self.inner
            .variants
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// The plain frame (header and payload), shared.
    pub fn frame(&self) -> &Bytes {
        &self.inner.plain
    }

    /// The frame for variant `key`, encoding it with `encode(kind, payload)` the first time any
    /// thread asks (the result is kept with the message and shared from then on). `PLAIN` is the
    /// plain frame.
    pub fn variant(
        &self,
        key: VariantKey,
        encode: impl FnOnce(MessageKind, &[u8]) -> Vec<u8>,
    ) -> Bytes {
        if key == PLAIN {
            return self.inner.plain.clone();
        }
        let mut variants = self
            .inner
            .variants
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some((_, b)) = variants.iter().find(|(k, _)| *k == key) {
            return b.clone();
        }
        let b = Bytes::from(encode(self.kind(), self.payload()));
        variants.push((key, b.clone()));
        b
    }

    /// The frame to send on a server-role connection that negotiated permessage-deflate and sends
    /// with the window of `variant` ([`DeflateState::variant`](crate::proto::DeflateState::variant)):
    /// the message compressed without context takeover, with RSV1. Compressed (with `pool`, in
    /// `scratch`) by the first caller for this window, shared from then on. `None`: send the plain
    /// frame, for a message that may not be compressed (a control message, or one made with
    /// [`uncompressed`](Self::uncompressed)), is shorter than `min_size`, or (`min_size` above 0)
    /// does not shrink.
    ///
    /// After sending the compressed frame on a connection with context takeover, call
    /// [`DeflateState::sent_independent`](crate::proto::DeflateState::sent_independent).
    pub fn deflated(
        &self,
        variant: Variant,
        min_size: usize,
        pool: &mut DeflatePool,
        scratch: &mut Vec<u8>,
    ) -> Option<Bytes> {
        if !self.compressible() || self.payload().len() < min_size {
            return None;
        }
        let frame = self.variant(deflate_key(variant.window_bits), |kind, payload| {
            scratch.clear();
            compress_variant(payload, variant, pool, scratch);
            if min_size > 0 && scratch.len() >= payload.len() {
                // Cached as "no variant": every connection with this window sends the plain frame.
                return Vec::new();
            }
            let header = FrameHeader {
                fin: true,
                rsv: RSV1,
                opcode: kind.opcode(),
                mask: None,
                len: scratch.len() as u64,
            };
            let mut head = [0u8; MAX_HEADER_LEN];
            let n = header.encode(&mut head);
            let mut frame = Vec::with_capacity(n + scratch.len());
            frame.extend_from_slice(&head[..n]);
            frame.extend_from_slice(scratch);
            frame
        });
        (!frame.is_empty()).then_some(frame)
    }

    /// Whether two handles name the same prepared message.
    pub fn ptr_eq(a: &Self, b: &Self) -> bool {
        Arc::ptr_eq(&a.inner, &b.inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_once_and_shares() {
        let m = PreparedMessage::text("hello");
        assert_eq!(&m.frame()[..], b"\x81\x05hello");
        assert_eq!(m.payload(), b"hello");
        let big = PreparedMessage::binary(&[7u8; 70_000]);
        assert_eq!(&big.frame()[..2], &[0x82, 127]);
        assert_eq!(big.payload().len(), 70_000);
        let c = big.clone();
        assert!(PreparedMessage::ptr_eq(&c, &big));
        assert_eq!(c.frame().as_ptr(), big.frame().as_ptr(), "no copy");
    }

    #[test]
    fn both_kinds_of_kind() {
        let m = PreparedMessage::new(MessageKind::Text, b"t");
        assert_eq!(
            (m.kind(), m.opcode(), m.is_control()),
            (MessageKind::Text, OpCode::Text, false)
        );
        assert!(m.compressible());
        let m = PreparedMessage::new(crate::blocking::MessageType::Binary, b"b").unwrap();
        assert_eq!(&m.frame()[..], b"\x82\x01b");
        assert!(m.compressible());
        let m = PreparedMessage::new(crate::blocking::MessageType::Ping, b"p").unwrap();
        assert_eq!(&m.frame()[..], b"\x89\x01p");
        assert!(m.is_control() && !m.compressible());
        assert!(PreparedMessage::new(crate::blocking::MessageType::Close, &[0; 126]).is_err());
        let m = PreparedMessage::uncompressed(MessageKind::Binary, b"u");
        assert!(!m.compressible() && !m.is_control());
    }

    #[test]
    fn variants_are_encoded_once() {
        let m = PreparedMessage::text("abc");
        let mut calls = 0;
        let a = m.variant(7, |_, p| {
            calls += 1;
            [&[0xc1, p.len() as u8][..], p].concat()
        });
        let b = m.variant(7, |_, _| unreachable!("cached"));
        assert_eq!(calls, 1);
        assert_eq!(m.variant_count(), 1);
        assert_eq!(a.as_ptr(), b.as_ptr());
        assert_eq!(m.variant(PLAIN, |_, _| unreachable!()), m.frame());
    }
}
