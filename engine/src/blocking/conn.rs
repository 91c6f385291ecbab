//! The blocking connection: a read half that feeds a read buffer to [`proto::Session`] and a write half
//! shared behind locks.
//!
//! The halves are [`Reader`] (reader.rs, its read path recv.rs) and [`Writer`] (writer.rs); the
//! write path they both send through is send.rs, and the state they share, with its two locks,
//! shared.rs.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::reader::{MessageReader, Reader};
use super::send::OutSide;
use super::shared::{Negotiated, ProtoSide, Shared};
use super::writer::{MessageWriter, Writer};
use super::{CloseCode, Error, MessageType, Stream};
use crate::handshake::Request;
use crate::prepared::PreparedMessage;
use crate::proto;

/// A blocking WebSocket connection (gorilla's `Conn`), from [`Upgrader::upgrade`](super::Upgrader)
/// or [`Dialer::dial`](super::Dialer): a [`Reader`] and a [`Writer`] in one value. Use it from one
/// thread, or [`split`](Conn::split) it for a reader thread and writer threads.
pub struct Conn<S> {
    reader: Reader<S>,
    request: Option<Request>,
}

impl<S> std::fmt::Debug for Conn<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("reader", &self.reader)
            .field("request", &self.request)
            .finish()
    }
}

/// Buffer sizes of a new connection.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Buffers {
    pub(crate) read: usize,
    pub(crate) write: usize,
}

impl<S: Stream> Conn<S> {
    /// A connection over a stream whose handshake is already done (`cfg.role` says which end this
    /// is). Read and write buffers of 16 KiB.
    pub fn from_upgraded(stream: S, cfg: proto::Config) -> Conn<S> {
        Conn::new(
            stream,
            cfg,
            Vec::new(),
            None,
            None,
            Buffers {
                read: 16 * 1024,
                write: 16 * 1024,
            },
            None,
        )
    }

    pub(crate) fn new(
        stream: S,
        mut cfg: proto::Config,
        leftover: Vec<u8>,
        subprotocol: Option<String>,
        request: Option<Request>,
        sizes: Buffers,
        deflate: Option<Negotiated>,
    ) -> Conn<S> {
        // Pings go to the ping handler (whose default answers them); messages that do not arrive
        // whole in one read are delivered piece by piece, so a message is never held whole here.
        cfg.auto_pong = false;
        cfg.stream_fragments = true;
        let mut send_cfg = cfg.clone();
        send_cfg.max_send_frame_size = 0;
        let seed = {
            let mut b = [0u8; 8];
            // A failing OS RNG leaves a fixed seed: masking still works, keys are just predictable.
            let _ = getrandom::getrandom(&mut b);
            u64::from_ne_bytes(b)
        };
        let local = stream.local_addr();
        let peer = stream.peer_addr();
        let own = stream.try_clone().ok();
        let mut conn = proto::Session::new(cfg.role, seed);
        if deflate.is_some() {
            conn.enable_compression();
        }
        let shared = Arc::new(Shared {
            proto: Mutex::new(ProtoSide {
                conn,
                cfg: send_cfg,
            }),
            out: Mutex::new(OutSide {
                stream,
                buf: Vec::new(),
                deadline: None,
                timeout_set: false,
                err: None,
                compress: true,
                level: deflate.map_or(1, |n| n.cfg.level.min(9)),
                deflate: None,
            }),
            role: cfg.role,
            subprotocol,
            local,
            peer,
            write_buffer_size: sizes.write.max(1),
            deflate,
        });
        let writer = Writer {
            shared: Arc::clone(&shared),
        };
        let read_size = sizes.read.max(leftover.len()).max(1);
        let end = leftover.len();
        let mut buf = leftover;
        buf.resize(read_size, 0);
        let reader = Reader::new(shared, writer, own, cfg, buf, end);
        Conn { reader, request }
    }

    /// Splits into the read half and the write half, for a reader thread and writer threads.
    pub fn split(self) -> (Reader<S>, Writer<S>) {
        let writer = self.reader.writer.clone();
        (self.reader, writer)
    }

    /// A handle on the write half for another thread (`write_control`, `close`, messages).
    pub fn writer(&self) -> Writer<S> {
        self.reader.writer.clone()
    }

    /// The read half.
    pub fn reader(&mut self) -> &mut Reader<S> {
        &mut self.reader
    }

    /// The upgrade request this connection answered (server side; gorilla's application keeps the
    /// `*http.Request`).
    pub fn request(&self) -> Option<&Request> {
        self.request.as_ref()
    }

    /// See [`Reader::read_message`].
    pub fn read_message(&mut self) -> Result<(MessageType, Vec<u8>), Error> {
        self.reader.read_message()
    }

    /// See [`Reader::next_reader`].
    pub fn next_reader(&mut self) -> Result<(MessageType, MessageReader<'_, S>), Error> {
        self.reader.next_reader()
    }

    /// See [`Reader::read_json`].
    #[cfg(feature = "json")]
    pub fn read_json<T: serde::de::DeserializeOwned>(&mut self) -> Result<T, Error> {
        self.reader.read_json()
    }

    /// See [`Reader::set_read_limit`].
    pub fn set_read_limit(&mut self, limit: u64) {
        self.reader.set_read_limit(limit)
    }

    /// See [`Reader::set_read_deadline`].
    pub fn set_read_deadline(&mut self, deadline: Option<Instant>) -> Result<(), Error> {
        self.reader.set_read_deadline(deadline)
    }

    /// See [`Reader::set_ping_handler`].
    pub fn set_ping_handler(
        &mut self,
        handler: impl FnMut(&Writer<S>, &[u8]) -> Result<(), Error> + Send + 'static,
    ) {
        self.reader.set_ping_handler(handler)
    }

    /// See [`Reader::set_pong_handler`].
    pub fn set_pong_handler(
        &mut self,
        handler: impl FnMut(&Writer<S>, &[u8]) -> Result<(), Error> + Send + 'static,
    ) {
        self.reader.set_pong_handler(handler)
    }

    /// See [`Reader::set_close_handler`].
    pub fn set_close_handler(
        &mut self,
        handler: impl FnMut(&Writer<S>, CloseCode, &str) -> Result<(), Error> + Send + 'static,
    ) {
        self.reader.set_close_handler(handler)
    }

    /// See [`Writer::write_message`].
    pub fn write_message(&self, kind: MessageType, data: &[u8]) -> Result<(), Error> {
        self.reader.writer.write_message(kind, data)
    }

    /// See [`Writer::write_message_uncompressed`].
    pub fn write_message_uncompressed(&self, kind: MessageType, data: &[u8]) -> Result<(), Error> {
        self.reader.writer.write_message_uncompressed(kind, data)
    }

    /// See [`Writer::compression`].
    pub fn compression(&self) -> bool {
        self.reader.writer.compression()
    }

    /// See [`Writer::enable_write_compression`].
    pub fn enable_write_compression(&self, enable: bool) {
        self.reader.writer.enable_write_compression(enable)
    }

    /// See [`Writer::set_compression_level`].
    pub fn set_compression_level(&self, level: u8) -> Result<(), Error> {
        self.reader.writer.set_compression_level(level)
    }

    /// See [`Writer::write_text`].
    pub fn write_text(&self, text: &str) -> Result<(), Error> {
        self.reader.writer.write_text(text)
    }

    /// See [`Writer::write_json`].
    #[cfg(feature = "json")]
    pub fn write_json<T: serde::Serialize + ?Sized>(&self, value: &T) -> Result<(), Error> {
        self.reader.writer.write_json(value)
    }

    /// See [`Writer::next_writer`].
    pub fn next_writer(&self, kind: MessageType) -> Result<MessageWriter<S>, Error> {
        self.reader.writer.next_writer(kind)
    }

    /// See [`Writer::write_control`].
    pub fn write_control(
        &self,
        kind: MessageType,
        data: &[u8],
        deadline: Option<Instant>,
    ) -> Result<(), Error> {
        self.reader.writer.write_control(kind, data, deadline)
    }

    /// See [`Writer::write_close`].
    pub fn write_close(&self, code: CloseCode, reason: &str) -> Result<(), Error> {
        self.reader.writer.write_close(code, reason)
    }

    /// See [`Writer::write_prepared_message`].
    pub fn write_prepared_message(&self, pm: &PreparedMessage) -> Result<(), Error> {
        self.reader.writer.write_prepared_message(pm)
    }

    /// See [`Writer::set_write_deadline`].
    pub fn set_write_deadline(&self, deadline: Option<Instant>) -> Result<(), Error> {
        self.reader.writer.set_write_deadline(deadline)
    }

    /// See [`Writer::close`].
    pub fn close(&self) -> Result<(), Error> {
        self.reader.writer.close()
    }

    /// See [`Writer::subprotocol`].
    pub fn subprotocol(&self) -> Option<&str> {
        self.reader.shared.subprotocol.as_deref()
    }

    /// See [`Writer::local_addr`].
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.reader.shared.local
    }

    /// See [`Writer::peer_addr`].
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.reader.shared.peer
    }
}
