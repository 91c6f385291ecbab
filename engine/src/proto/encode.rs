//! The send path: frame headers into a stack array, payloads passed separately (for `writev`),
//! client masking, automatic fragmentation and a piece-by-piece message writer.

use super::assemble::MessageKind;
use super::error::{CloseCode, SendError};
use super::frame::{FrameHeader, OpCode, Role, MAX_HEADER_LEN};

/// Where encoded frames go: the engine's write queue, a `Vec<u8>`, a blocking stream's buffer.
pub trait Output {
    /// Appends one frame: its header, then its payload. With `mask`, the payload is XORed with the
    /// key on the way (client role); the caller's slice is never modified.
    fn write_frame(&mut self, header: &[u8], payload: &[u8], mask: Option<[u8; 4]>);
}

impl Output for Vec<u8> {
    fn write_frame(&mut self, header: &[u8], payload: &[u8], mask: Option<[u8; 4]>) {
        self.reserve(header.len() + payload.len());
        self.extend_from_slice(header);
        let start = self.len();
        self.extend_from_slice(payload);
        if let Some(key) = mask {
            surge_simd::apply_mask(&mut self[start..], key, 0);
        }
    }
}

/// Send-side state of one connection.
#[derive(Debug)]
pub struct Encoder {
    role: Role,
    /// xorshift32 state for client masking keys (seeded from the OS by the caller); 4 bytes, so
    /// the encoder costs a server connection 8 bytes in all.
    rng: u32,
    /// The fragmented message open in the message writer, if any.
    open: Option<MessageKind>,
    /// A close frame was sent: no data may follow.
    close_sent: bool,
}

impl Encoder {
    /// An encoder for `role`. `seed` feeds the masking-key generator (client role only); pass an
    /// unpredictable value (the engine takes it from the OS).
    pub fn new(role: Role, seed: u64) -> Self {
        Encoder {
            role,
            rng: ((seed >> 32) as u32 ^ seed as u32) | 1,
            open: None,
            close_sent: false,
        }
    }

    /// Whether a close frame was sent.
    pub fn close_sent(&self) -> bool {
        self.close_sent
    }

    /// Whether a fragmented message is open in the message writer.
    pub fn message_open(&self) -> bool {
        self.open.is_some()
    }

    fn next_mask(&mut self) -> Option<[u8; 4]> {
        match self.role {
            Role::Server => None,
            Role::Client => {
                // xorshift32: fast and unpredictable enough once seeded from the OS; RFC 6455 10.3
                // asks that keys not be predictable by scripts choosing the payload.
                let mut x = self.rng;
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                self.rng = x;
                Some(x.to_ne_bytes())
            }
        }
    }

    /// Writes one frame, with no state checks (they are the callers').
    pub fn raw_frame(
        &mut self,
        out: &mut impl Output,
        opcode: OpCode,
        fin: bool,
        rsv: u8,
        payload: &[u8],
    ) {
        let mask = self.next_mask();
        let header = FrameHeader {
            fin,
            rsv,
            opcode,
            mask,
            len: payload.len() as u64,
        };
        let mut buf = [0u8; MAX_HEADER_LEN];
        let n = header.encode(&mut buf);
        out.write_frame(&buf[..n], payload, mask);
    }

    /// Sends a whole message, split into frames of at most `max_frame` bytes (0 or `usize::MAX`: one
    /// frame). `rsv` is set on the first frame (RSV1 for a compressed message).
    pub fn message(
        &mut self,
        out: &mut impl Output,
        kind: MessageKind,
        payload: &[u8],
        max_frame: usize,
        rsv: u8,
    ) -> Result<(), SendError> {
        if self.close_sent {
            return Err(SendError::Closed);
        }
        if self.open.is_some() {
            return Err(SendError::MessageInProgress);
        }
        if max_frame == 0 || payload.len() <= max_frame {
            self.raw_frame(out, kind.opcode(), true, rsv, payload);
            return Ok(());
        }
        let mut chunks = payload.chunks(max_frame).peekable();
        let mut opcode = kind.opcode();
        let mut rsv = rsv;
        while let Some(chunk) = chunks.next() {
            let fin = chunks.peek().is_none();
            self.raw_frame(out, opcode, fin, rsv, chunk);
            opcode = OpCode::Continuation;
            rsv = 0;
        }
        Ok(())
    }

    /// Opens a fragmented message (gorilla's `NextWriter`): its pieces follow with [`Encoder::fragment`].
    pub fn begin_message(&mut self, kind: MessageKind) -> Result<(), SendError> {
        if self.close_sent {
            return Err(SendError::Closed);
        }
        if self.open.is_some() {
            return Err(SendError::MessageInProgress);
        }
        self.open = Some(kind);
        Ok(())
    }

    /// Writes the next piece of the open message; `fin` ends it. The first piece carries the message's
    /// opcode and `rsv` (0; RSV1 when the message is compressed by an extension), later ones are
    /// continuations without RSV bits. Control frames may be sent between pieces.
    pub fn fragment(
        &mut self,
        out: &mut impl Output,
        data: &[u8],
        first: bool,
        fin: bool,
        rsv: u8,
    ) -> Result<(), SendError> {
        let kind = self.open.ok_or(SendError::NoMessageInProgress)?;
        if self.close_sent {
            return Err(SendError::Closed);
        }
        let opcode = if first {
            kind.opcode()
        } else {
            OpCode::Continuation
        };
        let rsv = if first { rsv } else { 0 };
        self.raw_frame(out, opcode, fin, rsv, data);
        if fin {
            self.open = None;
        }
        Ok(())
    }

    /// Forgets the open message (the connection is going away).
    pub fn abandon_message(&mut self) {
        self.open = None;
    }

    /// Sends a ping or pong. "All control frames MUST have a payload length of 125 bytes or less."
    pub fn control(
        &mut self,
        out: &mut impl Output,
        opcode: OpCode,
        payload: &[u8],
    ) -> Result<(), SendError> {
        debug_assert!(matches!(opcode, OpCode::Ping | OpCode::Pong));
        if self.close_sent {
            return Err(SendError::Closed);
        }
        if payload.len() > 125 {
            return Err(SendError::ControlTooLong);
        }
        self.raw_frame(out, opcode, true, 0, payload);
        Ok(())
    }

    /// Sends a close frame. `None` sends an empty body; otherwise the code must be valid on the wire
    /// and code plus reason at most 125 bytes (a longer reason is cut at a character boundary).
    pub fn close(
        &mut self,
        out: &mut impl Output,
        code: Option<CloseCode>,
        reason: &str,
    ) -> Result<(), SendError> {
        if self.close_sent {
            return Err(SendError::Closed);
        }
        let mut body = [0u8; 125];
        let n = match code {
            None => 0,
            Some(code) => {
                if !code.is_valid_on_wire() {
                    return Err(SendError::InvalidCloseCode(code.0));
                }
                body[..2].copy_from_slice(&code.0.to_be_bytes());
                let mut end = reason.len().min(123);
                while !reason.is_char_boundary(end) {
                    end -= 1;
                }
                body[2..2 + end].copy_from_slice(&reason.as_bytes()[..end]);
                2 + end
            }
        };
        self.raw_frame(out, OpCode::Close, true, 0, &body[..n]);
        self.close_sent = true;
        self.open = None;
        Ok(())
    }
}
