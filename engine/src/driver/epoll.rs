//! Readiness through epoll, via mio (edge-triggered).

use std::io;
use std::time::Duration;

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

use super::{IoEvent, Token as Target};

/// The waker's mio token; listener `i`'s counts down from below it; connections' have the top bit
/// clear (a connection id's slot and generation).
const WAKER: usize = usize::MAX;
const SPECIAL: usize = 1 << (usize::BITS - 1);

fn listener_token(i: usize) -> Token {
    Token(WAKER - 1 - i)
}

fn target(t: Token) -> Target {
    match t.0 {
        WAKER => Target::Waker,
        t if t & SPECIAL != 0 => Target::Listener(WAKER - 1 - t),
        t => Target::Conn(t as u64),
    }
}

/// An epoll instance and its event buffer.
pub(crate) struct EpollDriver {
    poll: Poll,
    events: Events,
}

impl std::fmt::Debug for EpollDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EpollDriver")
    }
}

impl EpollDriver {
    pub(crate) fn new() -> io::Result<Self> {
        Ok(EpollDriver {
            poll: Poll::new()?,
            events: Events::with_capacity(1024),
        })
    }

    pub(crate) fn waker(&self) -> io::Result<mio::Waker> {
        mio::Waker::new(self.poll.registry(), Token(WAKER))
    }

    pub(crate) fn register_listener(
        &mut self,
        listener: &mut TcpListener,
        index: usize,
    ) -> io::Result<()> {
        self.poll
            .registry()
            .register(listener, listener_token(index), Interest::READABLE)
    }

    pub(crate) fn deregister_listener(&mut self, listener: &mut TcpListener) -> io::Result<()> {
        self.poll.registry().deregister(listener)
    }

    pub(crate) fn register_conn(&mut self, stream: &mut TcpStream, token: u64) -> io::Result<()> {
        debug_assert_eq!(token as usize & SPECIAL, 0);
        self.poll.registry().register(
            stream,
            Token(token as usize),
            Interest::READABLE | Interest::WRITABLE,
        )
    }

    pub(crate) fn poll(
        &mut self,
        out: &mut Vec<IoEvent>,
        timeout: Option<Duration>,
    ) -> io::Result<()> {
        match self.poll.poll(&mut self.events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(e),
        }
        for ev in self.events.iter() {
            // Errors and hang-ups surface through the next read or write, so they count as both.
            let broken = ev.is_error() || ev.is_read_closed() || ev.is_write_closed();
            out.push(IoEvent::Ready {
                token: target(ev.token()),
                readable: ev.is_readable() || broken,
                writable: ev.is_writable() || broken,
                hup: ev.is_read_closed() || ev.is_error(),
            });
        }
        Ok(())
    }
}
