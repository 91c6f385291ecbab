//! The sans-IO RFC 6455 core: bytes in, events and bytes out. No sockets, no clock, no `unsafe`.
//!
//! - [`frame`]: header parsing and encoding (section 5.2).
//! - [`assemble`]: the receive path: unmasking in place, fragments, UTF-8, limits (5.4, 8.1).
//! - [`close`]: close codes and payloads (5.5.1, 7.4).
//! - [`encode`]: the send path: headers on the stack, payloads apart, masking, the message writer.
//! - [`deflate`]: permessage-deflate (RFC 7692): compression, bounded inflation, context takeover;
//!   the reader inflates compressed messages through an [`Inflate`] its caller lends per read.
//! - [`session`]: one connection: the close handshake, automatic replies, keepalive; time from the caller.
#![forbid(unsafe_code)]

pub mod assemble;
pub mod close;
pub mod deflate;
pub mod encode;
pub mod error;
pub mod frame;
pub mod session;

pub use assemble::{BufferPool, Decoder, DecoderConfig, Event, Message, MessageKind, NoPool};
pub use close::parse_close_payload;
pub use deflate::{
    compress_variant, DeflateConfig, DeflateMode, DeflateParams, DeflatePool, DeflateState,
    DeflateStats, Direction, Inflate, Variant, MAX_KEPT_BUFFER,
};
pub use encode::{Encoder, Output};
pub use error::{CloseCode, Error, SendError};
pub use frame::{FrameHeader, HeaderRules, OpCode, Role, MAX_HEADER_LEN, RSV1, RSV2, RSV3};
pub use session::{Config, RecvHalf, SendHalf, Session, State, TimeoutAction};
