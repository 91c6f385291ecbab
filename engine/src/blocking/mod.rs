//! gorilla/websocket's programming model: a connection read and written in plain blocking loops, on
//! threads of the application's own, over any byte stream (a `TcpStream`, a TLS stream, a pipe).
//!
//! ```no_run
//! use std::net::TcpListener;
//! use surge::blocking::Upgrader;
//!
//! let listener = TcpListener::bind("127.0.0.1:9001")?;
//! let upgrader = Upgrader::default();
//! for stream in listener.incoming() {
//!     let upgrader = upgrader.clone();
//!     let stream = stream?;
//!     std::thread::spawn(move || {
//!         let Ok(mut conn) = upgrader.upgrade(stream) else { return };
//!         while let Ok((kind, data)) = conn.read_message() {
//!             if conn.write_message(kind, &data).is_err() {
//!                 break;
//!             }
//!         }
//!     });
//! }
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! Layers: the handshake is [`crate::handshake`] (the engine's parser, origin policy and responses);
//! framing, assembly, UTF-8 and the close handshake are [`crate::proto::Session`], fed from a read buffer
//! of this module's. Nothing here duplicates a protocol rule.
//!
//! Concurrency follows gorilla: one reader and one writer at a time. [`Conn::split`] gives a
//! [`Reader`] and a [`Writer`]; the writer is a cheap `Clone`, so `write_control` and `close` work
//! from any thread. Streams that can be duplicated ([`Stream::try_clone`], e.g. `TcpStream`) read
//! and write independently; for the others the reader reads through the writer's lock, so a write
//! waits while a read blocks.
//!
//! docs/GORILLA.md maps every gorilla/websocket name to its counterpart here and in the engine.
//!
//! # `wss://` over rustls
//!
//! TLS is the stream's business: wrap the socket in a [`rustls::StreamOwned`] (re-exported as
//! `surge::tls::rustls`) and hand it to [`Dialer::dial_stream`] or [`Upgrader::upgrade`]. Both
//! `StreamOwned<ClientConnection, S>` and `StreamOwned<ServerConnection, S>` are a [`Stream`]
//! over any [`Stream`] `S`: read and write deadlines and the handshake timeout apply to the
//! socket; the reader shares the writer's lock (a TLS session cannot be split). The TLS handshake
//! runs inside the first read or write, so it counts against the handshake timeout. The
//! configurations of [`crate::tls`] serve both sides (the engine's defaults: *ring*, ALPN
//! `http/1.1`, session tickets).
//!
//! A client (the server's certificate checked against the webpki roots, or a CA of your own with
//! [`ClientTlsConfig::with_ca_pem_file`](crate::tls::ClientTlsConfig::with_ca_pem_file)):
//!
//! ```no_run
//! use std::net::TcpStream;
//! use surge::blocking::{Dialer, MessageType};
//! use surge::tls::{rustls, ClientTlsConfig};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let config = ClientTlsConfig::webpki_roots(); // or ClientTlsConfig::with_ca_pem_file("ca.pem")?
//! let name = rustls::pki_types::ServerName::try_from("echo.example.com")?.to_owned();
//! let tls = rustls::ClientConnection::new(config.rustls_config().clone(), name)?;
//! let tcp = TcpStream::connect("echo.example.com:443")?;
//! let stream = rustls::StreamOwned::new(tls, tcp);
//! let (mut conn, _response) = Dialer::default().dial_stream(stream, "wss://echo.example.com/")?;
//! conn.write_message(MessageType::Text, b"hello")?;
//! let (_kind, _echo) = conn.read_message()?;
//! # Ok(())
//! # }
//! ```
//!
//! A server (one thread per connection, as above):
//!
//! ```no_run
//! use std::net::TcpListener;
//! use surge::blocking::Upgrader;
//! use surge::tls::{rustls, TlsConfig};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let tls = TlsConfig::from_pem_files("chain.pem", "key.pem")?;
//! let listener = TcpListener::bind("0.0.0.0:9443")?;
//! for tcp in listener.incoming() {
//!     let tcp = tcp?;
//!     let session = rustls::ServerConnection::new(tls.rustls_config().clone())?;
//!     std::thread::spawn(move || {
//!         let stream = rustls::StreamOwned::new(session, tcp);
//!         let Ok(mut conn) = Upgrader::default().upgrade(stream) else { return };
//!         while let Ok((kind, data)) = conn.read_message() {
//!             if conn.write_message(kind, &data).is_err() {
//!                 break;
//!             }
//!         }
//!     });
//! }
//! # Ok(())
//! # }
//! ```
//!
//! When the connection ends (after the close handshake, a failure or `close`), the TLS
//! close_notify goes out before the socket's sending side shuts down
//! ([`Stream::finish_writes`]).

mod conn;
mod dial;
mod reader;
mod recv;
mod send;
mod shared;
mod upgrade;
mod writer;

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::time::Duration;

pub use conn::Conn;
pub use dial::Dialer;
pub use reader::{MessageReader, Reader};
pub use upgrade::Upgrader;
pub use writer::{MessageWriter, Writer, COMPRESS_WHOLE_MAX};

pub use crate::handshake::client::Response;
/// gorilla's `PreparedMessage`: the engine's type. `PreparedMessage::new(MessageType, data)` is
/// gorilla's `NewPreparedMessage` (see [`PreparedKind`](crate::prepared::PreparedKind)).
pub use crate::prepared::PreparedMessage;
pub use crate::proto::{CloseCode, DeflateConfig, DeflateMode};

use crate::handshake::client::ClientHandshakeError;
use crate::handshake::deflate_negotiation::DeflateResponseError;
use crate::handshake::HandshakeError;
use crate::proto::{self, MessageKind, SendError};

/// What a blocking connection runs over: any `Read + Write`, plus what only sockets can do. Every
/// method has a default meaning "not supported", so a stream type needs only `impl Stream for T {}`
/// (or the [`Generic`] wrapper, for types of other crates).
pub trait Stream: Read + Write {
    /// A second handle on the same stream, so that a reader and a writer never wait for each other.
    fn try_clone(&self) -> io::Result<Self>
    where
        Self: Sized,
    {
        Err(io::ErrorKind::Unsupported.into())
    }

    /// How long a read may block (`None`: forever). Read deadlines and the handshake timeout need it.
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        let _ = timeout;
        Err(io::ErrorKind::Unsupported.into())
    }

    /// How long a write may block (`None`: forever). Write deadlines need it.
    fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        let _ = timeout;
        Err(io::ErrorKind::Unsupported.into())
    }

    /// Shuts one or both directions down (a socket's `shutdown(2)`); a no-op by default.
    fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        let _ = how;
        Ok(())
    }

    /// Called once nothing more will be written, right before [`shutdown`](Stream::shutdown): a
    /// TLS stream sends its close_notify here, so the peer sees a clean end of the TLS stream
    /// rather than a truncation. A no-op by default.
    fn finish_writes(&mut self) -> io::Result<()> {
        Ok(())
    }

    /// The local address, for a socket.
    fn local_addr(&self) -> Option<SocketAddr> {
        None
    }

    /// The peer's address, for a socket.
    fn peer_addr(&self) -> Option<SocketAddr> {
        None
    }
}

impl Stream for TcpStream {
    fn try_clone(&self) -> io::Result<Self> {
        TcpStream::try_clone(self)
    }
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        TcpStream::set_read_timeout(self, timeout)
    }
    fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        TcpStream::set_write_timeout(self, timeout)
    }
    fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        TcpStream::shutdown(self, how)
    }
    fn local_addr(&self) -> Option<SocketAddr> {
        TcpStream::local_addr(self).ok()
    }
    fn peer_addr(&self) -> Option<SocketAddr> {
        TcpStream::peer_addr(self).ok()
    }
}

impl Stream for UnixStream {
    fn try_clone(&self) -> io::Result<Self> {
        UnixStream::try_clone(self)
    }
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        UnixStream::set_read_timeout(self, timeout)
    }
    fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        UnixStream::set_write_timeout(self, timeout)
    }
    fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        UnixStream::shutdown(self, how)
    }
}

// TLS (client and server side) over a stream: deadlines and shutdown go to the socket, the
// close_notify goes out before our side shuts down; no `try_clone` (one TLS session cannot be read
// and written from two handles). See "`wss://` over rustls" above.
macro_rules! tls_stream {
    ($conn:ty) => {
        impl<S: Stream> Stream for rustls::StreamOwned<$conn, S> {
            fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
                self.sock.set_read_timeout(timeout)
            }
            fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
                self.sock.set_write_timeout(timeout)
            }
            fn shutdown(&self, how: Shutdown) -> io::Result<()> {
                self.sock.shutdown(how)
            }
            fn finish_writes(&mut self) -> io::Result<()> {
                finish_tls(&mut self.conn, &mut self.sock)
            }
            fn local_addr(&self) -> Option<SocketAddr> {
                self.sock.local_addr()
            }
            fn peer_addr(&self) -> Option<SocketAddr> {
                self.sock.peer_addr()
            }
        }
    };
}

tls_stream!(rustls::ClientConnection);
tls_stream!(rustls::ServerConnection);

/// Sends a TLS session's close_notify (and whatever it still has to write).
fn finish_tls<D: rustls::SideData>(
    conn: &mut rustls::ConnectionCommon<D>,
    sock: &mut impl Write,
) -> io::Result<()> {
    conn.send_close_notify();
    while conn.wants_write() {
        conn.write_tls(sock)?;
    }
    sock.flush()
}

/// Any `Read + Write` as a [`Stream`] without socket features: no deadlines, no handshake timeout,
/// and a reader that shares the writer's lock. Wrap a type of another crate in a newtype that
/// implements [`Stream`] to give it those.
#[derive(Debug)]
pub struct Generic<T>(pub T);

impl<T: Read> Read for Generic<T> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl<T: Write> Write for Generic<T> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl<T: Read + Write> Stream for Generic<T> {}

/// gorilla's message types: the two data types and the three control types (the values are the
/// opcodes, as gorilla's `TextMessage` ... `PongMessage`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MessageType {
    /// UTF-8 text (1).
    Text = 1,
    /// Binary data (2).
    Binary = 2,
    /// Close (8): the payload is a code and a reason, see [`format_close_message`].
    Close = 8,
    /// Ping (9).
    Ping = 9,
    /// Pong (10).
    Pong = 10,
}

impl MessageType {
    /// Whether this is close, ping or pong.
    pub fn is_control(self) -> bool {
        matches!(
            self,
            MessageType::Close | MessageType::Ping | MessageType::Pong
        )
    }

    /// The data kind, for text and binary.
    pub fn data_kind(self) -> Option<MessageKind> {
        match self {
            MessageType::Text => Some(MessageKind::Text),
            MessageType::Binary => Some(MessageKind::Binary),
            _ => None,
        }
    }
}

impl From<MessageKind> for MessageType {
    fn from(kind: MessageKind) -> Self {
        match kind {
            MessageKind::Text => MessageType::Text,
            MessageKind::Binary => MessageType::Binary,
        }
    }
}

/// The peer closed the connection (gorilla's `CloseError`): the code of its close frame (1005 when
/// the frame had no body) and its reason; 1006 when the stream ended without a close frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloseError {
    /// The close code.
    pub code: CloseCode,
    /// The close reason (empty when none was given).
    pub text: String,
}

impl fmt::Display for CloseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self.code.0 {
            1000 => " (normal)",
            1001 => " (going away)",
            1002 => " (protocol error)",
            1003 => " (unsupported data)",
            1005 => " (no status)",
            1006 => " (abnormal closure)",
            1007 => " (invalid payload data)",
            1008 => " (policy violation)",
            1009 => " (message too big)",
            1010 => " (mandatory extension missing)",
            1011 => " (internal server error)",
            1012 => " (service restart)",
            1013 => " (try again later)",
            1014 => " (bad gateway)",
            1015 => " (TLS handshake error)",
            _ => "",
        };
        write!(f, "websocket: close {}{name}", self.code.0)?;
        if !self.text.is_empty() {
            write!(f, ": {}", self.text)?;
        }
        Ok(())
    }
}

impl std::error::Error for CloseError {}

/// Everything that can go wrong on a blocking connection.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The stream failed.
    Io(io::Error),
    /// The client's upgrade request was refused (the HTTP error was sent to it).
    Handshake(HandshakeError),
    /// The application refused the upgrade ([`Upgrader::upgrade_with`]) with this HTTP status, which
    /// was sent to the client.
    Rejected(u16),
    /// The server's response was refused; [`Error::status`] gives the status of a refusal.
    ClientHandshake(ClientHandshakeError),
    /// The peer broke RFC 6455; the connection was failed with the error's close code.
    Protocol(proto::Error),
    /// The peer closed the connection (or the stream ended: 1006).
    Close(CloseError),
    /// A message was larger than the read limit; the connection was closed with 1009 (gorilla's
    /// `ErrReadLimit`).
    ReadLimit,
    /// A deadline passed. The connection is unusable afterwards (in that direction; after a partial
    /// write, in both), as in gorilla.
    Timeout,
    /// A close frame was already sent: no data may follow it (gorilla's `ErrCloseSent`).
    CloseSent,
    /// The send was refused: a control payload over 125 bytes, a close code that may not be sent,
    /// or a message started while another one is still being written.
    Send(SendError),
    /// The server's permessage-deflate response is invalid or answers what was not offered: the
    /// dial fails (RFC 7692 section 5).
    Compression(DeflateResponseError),
    /// A URL the dialer cannot use.
    BadUrl(String),
    /// The operation needs what this stream cannot do (e.g. deadlines on a [`Generic`] stream).
    Unsupported(&'static str),
    /// `read_json` / `write_json`: the value did not (de)serialise.
    #[cfg(feature = "json")]
    Json(serde_json::Error),
}

impl Error {
    /// The HTTP status of a refused handshake, on either side: the one the server sent back
    /// (`Dialer`), or the one sent to the client (`Upgrader`).
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::ClientHandshake(e) => e.refused_status(),
            Error::Handshake(e) => Some(e.status()),
            Error::Rejected(status) => Some(*status),
            _ => None,
        }
    }

    /// The close error, if this is one.
    pub fn close_error(&self) -> Option<&CloseError> {
        match self {
            Error::Close(c) => Some(c),
            _ => None,
        }
    }

    /// An equal error, for the sticky error a failed connection keeps returning (`io::Error` is
    /// not `Clone`).
    pub(crate) fn duplicate(&self) -> Error {
        match self {
            Error::Io(e) => Error::Io(io::Error::new(e.kind(), e.to_string())),
            Error::Handshake(e) => Error::Handshake(*e),
            Error::Rejected(status) => Error::Rejected(*status),
            Error::ClientHandshake(e) => Error::ClientHandshake(e.clone()),
            Error::Protocol(e) => Error::Protocol(e.clone()),
            Error::Close(c) => Error::Close(c.clone()),
            Error::ReadLimit => Error::ReadLimit,
            Error::Timeout => Error::Timeout,
            Error::CloseSent => Error::CloseSent,
            Error::Send(e) => Error::Send(*e),
            Error::Compression(e) => Error::Compression(*e),
            Error::BadUrl(u) => Error::BadUrl(u.clone()),
            Error::Unsupported(what) => Error::Unsupported(what),
            #[cfg(feature = "json")]
            Error::Json(e) => Error::Io(io::Error::new(io::ErrorKind::InvalidData, e.to_string())),
        }
    }

    /// Maps an I/O error: a read or write timeout is [`Error::Timeout`].
    pub(crate) fn from_io(e: io::Error) -> Error {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Error::Timeout,
            _ => Error::Io(e),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io(e) => write!(f, "websocket: {e}"),
            Error::Handshake(e) => e.fmt(f),
            Error::Rejected(status) => write!(f, "websocket: upgrade refused with {status}"),
            Error::ClientHandshake(e) => e.fmt(f),
            Error::Protocol(e) => write!(f, "websocket: {e}"),
            Error::Close(c) => c.fmt(f),
            Error::ReadLimit => f.write_str("websocket: read limit exceeded"),
            Error::Timeout => f.write_str("websocket: i/o timeout"),
            Error::CloseSent => f.write_str("websocket: close sent"),
            Error::Send(e) => write!(f, "websocket: {e}"),
            Error::Compression(e) => write!(f, "websocket: {e}"),
            Error::BadUrl(u) => write!(f, "websocket: bad URL {u:?}"),
            Error::Unsupported(what) => write!(f, "websocket: the stream does not support {what}"),
            #[cfg(feature = "json")]
            Error::Json(e) => write!(f, "websocket: {e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io(e) => Some(e),
            Error::Handshake(e) => Some(e),
            Error::ClientHandshake(e) => Some(e),
            Error::Protocol(e) => Some(e),
            Error::Close(c) => Some(c),
            Error::Send(e) => Some(e),
            Error::Compression(e) => Some(e),
            #[cfg(feature = "json")]
            Error::Json(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        // An error that crossed an `io::Read`/`io::Write` boundary comes back as itself.
        if e.get_ref().is_some_and(|inner| inner.is::<Error>()) {
            let inner = e.into_inner().expect("checked above");
            return *inner.downcast::<Error>().expect("checked above");
        }
        Error::from_io(e)
    }
}

impl From<Error> for io::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Io(e) => e,
            Error::Timeout => io::Error::new(io::ErrorKind::TimedOut, Error::Timeout),
            other => io::Error::other(other),
        }
    }
}

impl From<SendError> for Error {
    fn from(e: SendError) -> Self {
        match e {
            SendError::Closed => Error::CloseSent,
            other => Error::Send(other),
        }
    }
}

/// A close frame's payload (gorilla's `FormatCloseMessage`): the code big-endian, then the text.
/// 1005 (no status) gives an empty payload, as gorilla.
pub fn format_close_message(code: CloseCode, text: &str) -> Vec<u8> {
    if code == CloseCode::NO_STATUS {
        return Vec::new();
    }
    let mut buf = Vec::with_capacity(2 + text.len());
    buf.extend_from_slice(&code.0.to_be_bytes());
    buf.extend_from_slice(text.as_bytes());
    buf
}

/// Whether `err` is a close error with one of `codes` (gorilla's `IsCloseError`).
pub fn is_close_error(err: &Error, codes: &[CloseCode]) -> bool {
    err.close_error().is_some_and(|c| codes.contains(&c.code))
}

/// Whether `err` is a close error with a code *not* in `expected` (gorilla's
/// `IsUnexpectedCloseError`): the usual way to tell a normal end from a crash in a read loop.
pub fn is_unexpected_close_error(err: &Error, expected: &[CloseCode]) -> bool {
    err.close_error()
        .is_some_and(|c| !expected.contains(&c.code))
}
