//! Protocol errors: one variant per RFC 6455 violation, each mapped to the close code that goes on the
//! wire when the connection is failed.

use std::fmt;

/// A WebSocket close status code (RFC 6455 section 7.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CloseCode(pub u16);

impl CloseCode {
    /// 1000: the purpose for which the connection was established has been fulfilled.
    pub const NORMAL: CloseCode = CloseCode(1000);
    /// 1001: an endpoint is going away (server shutdown, page navigation).
    pub const GOING_AWAY: CloseCode = CloseCode(1001);
    /// 1002: protocol error.
    pub const PROTOCOL: CloseCode = CloseCode(1002);
    /// 1003: a data type the endpoint cannot accept.
    pub const UNSUPPORTED: CloseCode = CloseCode(1003);
    /// 1005: no status code was present (never sent on the wire).
    pub const NO_STATUS: CloseCode = CloseCode(1005);
    /// 1006: the connection closed without a close frame (never sent on the wire).
    pub const ABNORMAL: CloseCode = CloseCode(1006);
    /// 1007: data inconsistent with the message type (invalid UTF-8 in text).
    pub const INVALID_PAYLOAD: CloseCode = CloseCode(1007);
    /// 1008: policy violation.
    pub const POLICY: CloseCode = CloseCode(1008);
    /// 1009: a message too big to process.
    pub const TOO_BIG: CloseCode = CloseCode(1009);
    /// 1010: the client expected an extension the server did not negotiate.
    pub const MANDATORY_EXTENSION: CloseCode = CloseCode(1010);
    /// 1011: an unexpected condition prevented the server from fulfilling the request.
    pub const INTERNAL: CloseCode = CloseCode(1011);
    /// 1012: service restart.
    pub const RESTART: CloseCode = CloseCode(1012);
    /// 1013: try again later (overload).
    pub const TRY_AGAIN: CloseCode = CloseCode(1013);
    /// 1014: bad gateway.
    pub const BAD_GATEWAY: CloseCode = CloseCode(1014);

    /// Whether this code may appear in a close frame on the wire: 1000-1003, 1007-1014 and the
    /// registered/private ranges 3000-4999. 1004-1006 and 1015 are reserved and "MUST NOT be set as a
    /// status code in a Close control frame by an endpoint" (RFC 6455 section 7.4.1).
    pub fn is_valid_on_wire(self) -> bool {
        matches!(self.0, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl From<u16> for CloseCode {
    fn from(code: u16) -> Self {
        CloseCode(code)
    }
}

/// A violation of RFC 6455 by the peer. Each variant maps to the close code sent when the connection is
/// failed ([`Error::close_code`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// "RSV1, RSV2, RSV3: MUST be 0 unless an extension is negotiated that defines meanings for non-zero
    /// values" (5.2). Carries the three bits (RSV1 = 0b100).
    ReservedBits(u8),
    /// "If an unknown opcode is received, the receiving endpoint MUST _Fail the WebSocket Connection_" (5.2).
    UnknownOpcode(u8),
    /// "All control frames MUST have a payload length of 125 bytes or less" (5.5).
    ControlFrameTooBig(u64),
    /// "All control frames ... MUST NOT be fragmented" (5.5).
    FragmentedControlFrame,
    /// "The server MUST close the connection upon receiving a frame that is not masked" (5.1).
    UnmaskedFrameFromClient,
    /// "A client MUST close a connection if it detects a masked frame" (5.1).
    MaskedFrameFromServer,
    /// "the most significant bit MUST be 0" for a 64-bit payload length (5.2).
    LengthTopBitSet,
    /// A frame longer than the configured maximum frame size (1009).
    FrameTooBig {
        /// The announced length.
        len: u64,
        /// The configured limit.
        max: u64,
    },
    /// A message longer than the configured maximum message size (1009).
    MessageTooBig {
        /// Bytes the message would reach.
        len: u64,
        /// The configured limit.
        max: u64,
    },
    /// A data message of more frames than the configured maximum (1009): a message of endless
    /// 0-byte continuation frames never reaches the size limit, yet never ends.
    TooManyFragments {
        /// The configured limit.
        max: u32,
    },
    /// A continuation frame without a message in progress (5.4).
    ContinuationWithoutStart,
    /// A new text or binary frame while a fragmented message is in progress (5.4).
    DataFrameInsideFragmented,
    /// RSV1 (per-message compressed) on a continuation frame (RFC 7692 section 6).
    CompressedContinuation,
    /// A text message (or close reason) that is not UTF-8 (8.1): 1007.
    InvalidUtf8,
    /// A close frame whose payload is one byte: "the first two bytes of the body MUST be a 2-byte
    /// unsigned integer" (5.5.1).
    ClosePayloadTooShort,
    /// A close code that must not appear on the wire (7.4).
    InvalidCloseCode(u16),
    /// A compressed message (RFC 7692) that does not inflate: 1007, "data within a message that was
    /// not consistent with the type of the message".
    CompressedDataInvalid,
}

impl Error {
    /// The close code sent when failing the connection for this error.
    pub fn close_code(&self) -> CloseCode {
        match self {
            Error::FrameTooBig { .. }
            | Error::MessageTooBig { .. }
            | Error::TooManyFragments { .. } => CloseCode::TOO_BIG,
            Error::InvalidUtf8 | Error::CompressedDataInvalid => CloseCode::INVALID_PAYLOAD,
            _ => CloseCode::PROTOCOL,
        }
    }
}

impl From<&Error> for CloseCode {
    fn from(e: &Error) -> Self {
        e.close_code()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::ReservedBits(b) => write!(
                f,
                "reserved bits {b:#05b} set without a negotiated extension"
            ),
            Error::UnknownOpcode(op) => write!(f, "unknown opcode {op:#x}"),
            Error::ControlFrameTooBig(n) => write!(f, "control frame of {n} bytes (at most 125)"),
            Error::FragmentedControlFrame => f.write_str("fragmented control frame"),
            Error::UnmaskedFrameFromClient => f.write_str("unmasked frame from a client"),
            Error::MaskedFrameFromServer => f.write_str("masked frame from a server"),
            Error::LengthTopBitSet => f.write_str("64-bit payload length with the top bit set"),
            Error::FrameTooBig { len, max } => {
                write!(f, "frame of {len} bytes exceeds the limit of {max}")
            }
            Error::MessageTooBig { len, max } => {
                write!(
                    f,
                    "message of {len} bytes or more exceeds the limit of {max}"
                )
            }
            Error::TooManyFragments { max } => {
                write!(f, "message of more than {max} frames")
            }
            Error::ContinuationWithoutStart => {
                f.write_str("continuation frame without a message in progress")
            }
            Error::DataFrameInsideFragmented => {
                f.write_str("new data frame while a fragmented message is in progress")
            }
            Error::CompressedContinuation => f.write_str("RSV1 set on a continuation frame"),
            Error::InvalidUtf8 => f.write_str("invalid UTF-8 in a text message or close reason"),
            Error::ClosePayloadTooShort => f.write_str("close frame with a 1-byte payload"),
            Error::InvalidCloseCode(c) => write!(f, "close code {c} is not allowed on the wire"),
            Error::CompressedDataInvalid => f.write_str("compressed message does not inflate"),
        }
    }
}

impl std::error::Error for Error {}

/// Why a send was refused. Sending never fails for I/O reasons in the core: it only writes bytes into
/// the caller's [`Output`](super::Output).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendError {
    /// A close frame was already sent: no data may follow it (5.5.1).
    Closed,
    /// A control frame payload over 125 bytes.
    ControlTooLong,
    /// A close code that must not be sent (see [`CloseCode::is_valid_on_wire`]).
    InvalidCloseCode(u16),
    /// A new message while a fragmented message started with the message writer is still open.
    MessageInProgress,
    /// A fragment with no fragmented message open.
    NoMessageInProgress,
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::Closed => {
                f.write_str("the connection is closing: a close frame was already sent")
            }
            SendError::ControlTooLong => f.write_str("control frame payload over 125 bytes"),
            SendError::InvalidCloseCode(c) => write!(f, "close code {c} may not be sent"),
            SendError::MessageInProgress => {
                f.write_str("a fragmented message is still being written")
            }
            SendError::NoMessageInProgress => f.write_str("no fragmented message is open"),
        }
    }
}

impl std::error::Error for SendError {}
