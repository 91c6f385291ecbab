//! [`Conn`], a connection as handlers see it, and [`MessageWriter`].

use std::io;
use std::net::SocketAddr;

use super::*;
use crate::driver::Socket;
use crate::handler::SendStatus;
use crate::proto::{CloseCode, Message, MessageKind, OpCode};
use crate::server::registry::ConnId;

/// A connection, as handlers see it in callbacks.
pub struct Conn<'a, D> {
    pub(super) ctx: &'a mut WorkerCtx<D>,
    pub(super) id: ConnId,
}

impl<D> std::fmt::Debug for Conn<'_, D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").field("id", &self.id).finish()
    }
}

impl<'a, D> Conn<'a, D> {
    pub(super) fn entry(&self) -> &Connection<D> {
        self.ctx
            .conns
            .get(self.id)
            .expect("a Conn handle names a live connection")
    }

    /// This connection's id within its worker.
    pub fn id(&self) -> ConnId {
        self.id
    }

    /// Sends a text message.
    pub fn send_text(&mut self, text: &str) -> SendStatus {
        self.ctx
            .send_message(self.id, MessageKind::Text, text.as_bytes(), true)
    }

    /// Sends a binary message.
    pub fn send_binary(&mut self, data: &[u8]) -> SendStatus {
        self.ctx
            .send_message(self.id, MessageKind::Binary, data, true)
    }

    /// Sends a message of either kind (an echo server passes the received one straight back).
    pub fn send(&mut self, msg: Message<'_>) -> SendStatus {
        match msg {
            Message::Text(t) => self.send_text(t),
            Message::Binary(b) => self.send_binary(b),
        }
    }

    /// A writer for one message sent in pieces: a frame goes out each time its buffer (one write
    /// chunk) fills, and [`MessageWriter::finish`] (or dropping it) ends the message.
    pub fn writer(&mut self, kind: MessageKind) -> MessageWriter<'_, D> {
        let buf = self.ctx.chunks.get();
        MessageWriter {
            ctx: self.ctx,
            id: self.id,
            kind,
            buf,
            first: true,
            done: false,
            status: SendStatus::Sent,
        }
    }

    /// Sends a ping (payload at most 125 bytes). It counts toward the backpressure limit like a
    /// message and is refused (or closes) as the policy says.
    pub fn ping(&mut self, payload: &[u8]) -> SendStatus {
        self.ctx
            .send_frame(self.id, OpCode::Ping, payload, true, false, 0)
    }

    /// Sends a pong (payload at most 125 bytes). It counts toward the backpressure limit: past it,
    /// under the `Drop` policy, only the latest pong waits for the queue to drain (`Backpressure`);
    /// under `Close`, the connection closes.
    pub fn pong(&mut self, payload: &[u8]) -> SendStatus {
        self.ctx.send_pong(self.id, payload)
    }

    /// Starts the close handshake. `on_close` follows when the peer answers, or with 1006 after the
    /// close timeout. No data can be sent afterwards.
    pub fn close(&mut self, code: CloseCode, reason: &str) -> SendStatus {
        self.ctx.start_close(self.id, code, reason)
    }

    /// Bytes queued and not yet written to the socket. (The backpressure limit counts a little
    /// more: what the queue costs in memory, 32 bytes per queued frame reference or chunk besides
    /// the bytes.)
    pub fn buffered_amount(&self) -> usize {
        self.entry().queue.len()
    }

    /// Messages refused on this connection under the `Drop` backpressure policy.
    pub fn dropped_count(&self) -> u32 {
        self.entry().dropped
    }

    /// Whether data can still be sent (open, no close sent).
    pub fn is_open(&self) -> bool {
        self.entry().can_send()
    }

    /// The peer's address: the client's as its PROXY protocol header named it (see
    /// [`ServerConfig::proxy_protocol`]); otherwise asked of the kernel on an ordinary
    /// descriptor (`None` once the socket is broken); on an io_uring direct descriptor the one
    /// asked through the ring at accept (`None` where the kernel lacks that command: see
    /// [`ServerConfig::uring_direct_descriptors`]).
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        let c = self.entry();
        // Kept in the slot: a direct descriptor's, a PROXY header's, a counted client's.
        if let Some(addr) = self.ctx.kept_peer(self.id) {
            return Some(addr);
        }
        match c.socket {
            Socket::Fd(_) => c.socket.peer_addr().ok(),
            _ => None,
        }
    }

    /// The subprotocol agreed at upgrade.
    pub fn subprotocol(&self) -> Option<&str> {
        self.ctx.protocols.get(self.id, self.entry().subprotocol)
    }

    /// The user data created at upgrade.
    pub fn data(&self) -> &D {
        self.entry()
            .data
            .as_ref()
            .expect("open connections have data")
    }

    /// The user data created at upgrade.
    pub fn data_mut(&mut self) -> &mut D {
        self.ctx
            .conns
            .get_mut(self.id)
            .and_then(|c| c.data.as_mut())
            .expect("open connections have data")
    }

    /// The worker: timers and the other connections.
    pub fn worker(&mut self) -> &mut WorkerCtx<D> {
        self.ctx
    }

    /// The user data and the connection at once, for what needs both (the player's state and a
    /// publish, a send to another connection, a timer). `data()` and `data_mut()` borrow the
    /// connection, so they cannot be held across `conn.worker()` or a send; this lends the data
    /// out for the closure instead (a move of `D` out of the slot and back, no allocation).
    ///
    /// Inside the closure the connection works as usual (send, subscribe, publish, close, its
    /// worker) except that its data is with the closure: `conn.data()` panics, and the worker
    /// does not list it (`worker.conn(id)` is `None` for it, `for_each_conn` skips it).
    ///
    /// ```
    /// # use surge::{Conn, PreparedMessage};
    /// struct Player { name: String, score: u32 }
    ///
    /// fn scored(conn: &mut Conn<'_, Player>, points: u32) {
    ///     conn.with_data(|player, conn| {
    ///         player.score += points;
    ///         let news = format!("{} has {}", player.name, player.score);
    ///         conn.worker().publish("scores", &PreparedMessage::text(&news));
    ///     });
    /// }
    /// ```
    pub fn with_data<R>(&mut self, f: impl FnOnce(&mut D, &mut Conn<'_, D>) -> R) -> R {
        let c = self
            .ctx
            .conns
            .get_mut(self.id)
            .expect("open connections have a slot");
        let mut data = c.data.take().expect("open connections have data");
        c.set(Flag::Lent);
        let r = f(&mut data, self);
        // The connection cannot have been removed meanwhile: only the worker ends connections,
        // after a callback, and the closure runs inside one.
        if let Some(c) = self.ctx.conns.get_mut(self.id) {
            c.clear(Flag::Lent);
            c.data = Some(data);
        }
        r
    }
}

/// A message sent in pieces (gorilla's `NextWriter`), from [`Conn::writer`]. Pieces are never
/// dropped by the backpressure policy (that would corrupt the message), but the status reports it.
pub struct MessageWriter<'a, D> {
    ctx: &'a mut WorkerCtx<D>,
    id: ConnId,
    kind: MessageKind,
    buf: Vec<u8>,
    first: bool,
    done: bool,
    status: SendStatus,
}

impl<D> std::fmt::Debug for MessageWriter<'_, D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageWriter")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .field("buffered", &self.buf.len())
            .finish()
    }
}

impl<D> MessageWriter<'_, D> {
    pub(super) fn emit(&mut self, fin: bool) -> SendStatus {
        let op = if self.first {
            self.kind.opcode()
        } else {
            OpCode::Continuation
        };
        let status = self.ctx.send_frame(self.id, op, &self.buf, fin, true, 0);
        self.first = false;
        self.buf.clear();
        if status != SendStatus::Sent {
            self.status = status;
        }
        status
    }

    /// Ends the message (sends its last frame). Returns the worst status of its frames.
    pub fn finish(mut self) -> SendStatus {
        self.done = true;
        let _ = self.emit(true);
        self.status
    }
}

impl<D> io::Write for MessageWriter<'_, D> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if matches!(self.status, SendStatus::Closed | SendStatus::Invalid) {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        let room = self.buf.capacity() - self.buf.len();
        if room == 0 {
            if self.emit(false) == SendStatus::Closed {
                return Err(io::ErrorKind::BrokenPipe.into());
            }
            return self.write(data);
        }
        let n = room.min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<D> Drop for MessageWriter<'_, D> {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.emit(true);
        }
        let buf = std::mem::take(&mut self.buf);
        self.ctx.chunks.put(buf);
    }
}
