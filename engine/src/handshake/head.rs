//! Where the bytes of an HTTP head wait between reads: [`HeadBuffer`].

use super::client::ResponseStatus;
use super::ParseStatus;

/// Most bytes [`HeadBuffer::read_with`] asks for at once.
const READ_CHUNK: usize = 4096;

/// What a head parser answered: whether it needs more bytes. Implemented by the parsers' results.
pub trait HeadStatus {
    /// The head is not complete yet: read more and parse again.
    fn is_partial(&self) -> bool;
}

impl HeadStatus for ParseStatus {
    fn is_partial(&self) -> bool {
        matches!(self, ParseStatus::Partial)
    }
}

impl HeadStatus for ResponseStatus {
    fn is_partial(&self) -> bool {
        matches!(self, ResponseStatus::Partial)
    }
}

/// An error is final: nothing more to read.
impl<S: HeadStatus, E> HeadStatus for Result<S, E> {
    fn is_partial(&self) -> bool {
        self.as_ref().is_ok_and(S::is_partial)
    }
}

/// The bytes of an HTTP head (a request's or a response's header block) that arrive over several
/// reads, sans-IO and pool-agnostic.
///
/// The parsers ([`parse_request`](super::parse_request),
/// [`parse_response`](super::client::parse_response)) take all the bytes received so far and say
/// `Partial` until the head is complete. A `HeadBuffer` is where those bytes wait between reads:
///
/// - A caller with a read buffer of its own (the engine's workers) [`feed`](HeadBuffer::feed)s
///   each read. While nothing is held, the read is parsed where it lies: a head that arrives whole
///   in one read (the common case) is never copied. Only an incomplete head is copied, into a
///   buffer the caller provides (a pooled one), where later reads are appended.
/// - A caller without one (a blocking stream) reads straight into the held buffer
///   ([`read_with`](HeadBuffer::read_with), which never reads far past the size limit), then
///   [`parse`](HeadBuffer::parse)s it.
///
/// Either way, once the head is complete, [`rest`](HeadBuffer::rest) gives the bytes behind it (the
/// start of the WebSocket stream), and [`release`](HeadBuffer::release) gives the held buffer, if
/// one was taken, back to its owner.
///
/// A buffer is held once it has capacity: [`HeadBuffer::new`] holds none (bytes are parsed where
/// they were read until a head turns out incomplete); `HeadBuffer::from(buf)` holds `buf` (its
/// contents are the bytes so far) if it has capacity, e.g. a buffer kept in a connection's state
/// between reads ([`into_buffer`](HeadBuffer::into_buffer)), or an empty one to read into.
///
/// ```
/// use surge::handshake::{parse_request, HandshakeConfig, HeadBuffer, ParseStatus};
///
/// let cfg = HandshakeConfig::default();
/// let request: &[u8] = b"GET /chat HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\
///     Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
///     Sec-WebSocket-Version: 13\r\n\r\n\x81\x00";
/// let (first, second) = request.split_at(20);
/// let mut head = HeadBuffer::new();
/// // The first read: incomplete, so it is copied into a buffer of the caller's.
/// let status = head.feed(first, Vec::new, |b| parse_request(b, &cfg));
/// assert!(matches!(status, Ok(ParseStatus::Partial)));
/// assert!(head.is_holding());
/// // The second read completes the head; a frame follows it.
/// let mut read = second.to_vec();
/// let Ok(ParseStatus::Complete { request, consumed }) =
///     head.feed(&read, Vec::new, |b| parse_request(b, &cfg))
/// else {
///     panic!("not complete")
/// };
/// assert_eq!(request.path(), "/chat");
/// assert_eq!(head.rest(&mut read, consumed), b"\x81\x00");
/// head.release(drop);
/// ```
#[derive(Debug, Default)]
pub struct HeadBuffer {
    held: Vec<u8>,
}

impl From<Vec<u8>> for HeadBuffer {
    fn from(held: Vec<u8>) -> Self {
        HeadBuffer { held }
    }
}

impl HeadBuffer {
    /// Nothing held.
    pub const fn new() -> Self {
        HeadBuffer { held: Vec::new() }
    }

    /// Whether a buffer is held (the bytes so far are in it, and later ones are appended).
    pub fn is_holding(&self) -> bool {
        self.held.capacity() != 0
    }

    /// Bytes held.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// Whether no bytes are held.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// The bytes held.
    pub fn bytes(&self) -> &[u8] {
        &self.held
    }

    /// Keeps `new` without parsing (the caller must wait for something else first), in a buffer
    /// from `get` if none is held yet.
    pub fn hold(&mut self, new: &[u8], get: impl FnOnce() -> Vec<u8>) {
        if !self.is_holding() {
            self.held = get();
            self.held.clear();
        }
        self.held.extend_from_slice(new);
    }

    /// Parses the head with the bytes of one more read, `new`: appended to the held bytes and
    /// parsed there if a buffer is held; otherwise parsed where they lie, and only if the head is
    /// incomplete copied into a buffer from `get` (which is then held). Returns what `parse` said.
    ///
    /// Once it is complete (or refused), the bytes after the head are [`rest`](Self::rest), with
    /// the same `new`.
    pub fn feed<T: HeadStatus>(
        &mut self,
        new: &[u8],
        get: impl FnOnce() -> Vec<u8>,
        parse: impl FnOnce(&[u8]) -> T,
    ) -> T {
        if self.is_holding() {
            self.held.extend_from_slice(new);
            return parse(&self.held);
        }
        let status = parse(new);
        if status.is_partial() {
            self.hold(new, get);
        }
        status
    }

    /// Parses the bytes held (for a caller that reads into this buffer: [`read_with`]).
    ///
    /// [`read_with`]: Self::read_with
    pub fn parse<T: HeadStatus>(&mut self, parse: impl FnOnce(&[u8]) -> T) -> T {
        self.feed(&[], Vec::new, parse)
    }

    /// Reads the next bytes straight into the held buffer with `read`, which fills the slice it is
    /// given and returns how many bytes it read (at most the slice's length). For a head limited to
    /// `limit` bytes, it is given at most what takes the buffer one byte past the limit (the
    /// parsers never look past their limit; one byte more tells them the head is too long), and
    /// never more than 4 KiB at once. Returns what `read` returned.
    pub fn read_with<E>(
        &mut self,
        limit: usize,
        read: impl FnOnce(&mut [u8]) -> Result<usize, E>,
    ) -> Result<usize, E> {
        let len = self.held.len();
        let want = limit
            .saturating_add(1)
            .saturating_sub(len)
            .clamp(1, READ_CHUNK);
        self.held.resize(len + want, 0);
        let result = read(&mut self.held[len..]);
        let n = result.as_ref().map_or(0, |&n| n.min(want));
        self.held.truncate(len + n);
        result
    }

    /// The bytes after a complete head that took `consumed` bytes (as the parser said): in the held
    /// buffer, or in `new` (the read given to the last [`feed`](Self::feed); empty after
    /// [`parse`](Self::parse)) when none is held.
    pub fn rest<'a>(&'a mut self, new: &'a mut [u8], consumed: usize) -> &'a mut [u8] {
        let bytes = if self.is_holding() {
            &mut self.held[..]
        } else {
            new
        };
        let at = consumed.min(bytes.len());
        &mut bytes[at..]
    }

    /// Gives the held buffer, if one is held, to `put` (back to the pool it came from).
    pub fn release(self, put: impl FnOnce(Vec<u8>)) {
        if self.is_holding() {
            put(self.held);
        }
    }

    /// The held buffer (capacity 0: none), to keep in a connection's state until the next read
    /// (`HeadBuffer::from` takes it back).
    pub fn into_buffer(self) -> Vec<u8> {
        self.held
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handshake::client::{parse_response, ClientRequest};
    use crate::handshake::{parse_request, HandshakeConfig, HandshakeError};

    const REQUEST: &[u8] = b"GET /chat HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\
        Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Sec-WebSocket-Version: 13\r\n\r\n";

    /// A pool that counts what it lends and gets back.
    #[derive(Default)]
    struct Pool {
        lent: usize,
        back: usize,
    }

    impl Pool {
        fn get(&mut self) -> Vec<u8> {
            self.lent += 1;
            Vec::with_capacity(64)
        }
    }

    #[test]
    fn one_read_is_parsed_in_place() {
        let cfg = HandshakeConfig::default();
        let mut pool = Pool::default();
        let mut read = [REQUEST, b"\x81\x02hi"].concat();
        let mut head = HeadBuffer::new();
        let status = head.feed(&read, || pool.get(), |b| parse_request(b, &cfg));
        let Ok(ParseStatus::Complete { consumed, .. }) = status else {
            panic!("{status:?}")
        };
        assert_eq!(consumed, REQUEST.len());
        assert!(!head.is_holding(), "nothing copied");
        let rest = head.rest(&mut read, consumed);
        assert_eq!(rest, b"\x81\x02hi");
        // In place: the rest is the read's own bytes.
        let at = rest.as_ptr() as usize;
        assert_eq!(at, read[REQUEST.len()..].as_ptr() as usize);
        head.release(|_| pool.back += 1);
        assert_eq!((pool.lent, pool.back), (0, 0));
    }

    #[test]
    fn every_split_gives_the_same_head_and_rest() {
        let cfg = HandshakeConfig::default();
        let whole = [REQUEST, b"\x81\x02hi"].concat();
        for split in 0..=whole.len() {
            for third in [split, (split + whole.len()) / 2] {
                let mut pool = Pool::default();
                let mut head = HeadBuffer::new();
                let mut reads = [
                    whole[..split].to_vec(),
                    whole[split..third].to_vec(),
                    whole[third..].to_vec(),
                ];
                let mut done = None;
                for (i, read) in reads.iter_mut().enumerate() {
                    match head.feed(read, || pool.get(), |b| parse_request(b, &cfg)) {
                        Ok(ParseStatus::Partial) => assert!(head.is_holding()),
                        Ok(ParseStatus::Complete { request, consumed }) => {
                            assert_eq!(request.path(), "/chat");
                            done = Some((i, consumed));
                            break;
                        }
                        other => panic!("{other:?}"),
                    }
                }
                let (i, consumed) = done.expect("complete");
                // What came with the read that completed the head (the rest comes later).
                let end = [split, third, whole.len()][i];
                assert_eq!(
                    head.rest(&mut reads[i], consumed),
                    &whole[REQUEST.len()..end]
                );
                let held = head.is_holding();
                head.release(|_| pool.back += 1);
                assert!(pool.lent <= 1);
                assert_eq!(pool.back, pool.lent);
                assert_eq!(held, pool.lent == 1);
            }
        }
    }

    #[test]
    fn a_refusal_gives_the_buffer_back() {
        let cfg = HandshakeConfig {
            max_request_size: 40,
            ..HandshakeConfig::default()
        };
        let mut pool = Pool::default();
        let mut head = HeadBuffer::new();
        let status = head.feed(&REQUEST[..30], || pool.get(), |b| parse_request(b, &cfg));
        assert!(status.is_partial());
        let status = head.feed(&REQUEST[30..], || pool.get(), |b| parse_request(b, &cfg));
        assert!(
            matches!(status, Err(HandshakeError::RequestTooLarge { .. })),
            "{status:?}"
        );
        head.release(|_| pool.back += 1);
        assert_eq!((pool.lent, pool.back), (1, 1));
    }

    #[test]
    fn hold_then_parse() {
        let cfg = HandshakeConfig::default();
        let mut head = HeadBuffer::new();
        head.hold(REQUEST, || Vec::with_capacity(8));
        assert_eq!(head.bytes(), REQUEST);
        let buf = head.into_buffer();
        let mut head = HeadBuffer::from(buf);
        let status = head.feed(&[], Vec::new, |b| parse_request(b, &cfg));
        assert!(matches!(status, Ok(ParseStatus::Complete { .. })));
        assert!(head.rest(&mut [], REQUEST.len()).is_empty());
    }

    #[test]
    fn read_with_stops_one_byte_past_the_limit() {
        let mut head = HeadBuffer::from(Vec::with_capacity(16));
        let mut source: &[u8] = &[b'x'; 10_000];
        let mut sizes = Vec::new();
        while head.len() <= 5000 {
            let n = head
                .read_with(5000, |room| {
                    sizes.push(room.len());
                    std::io::Read::read(&mut source, room)
                })
                .unwrap();
            assert!(n > 0);
        }
        assert_eq!(head.len(), 5001);
        assert_eq!(sizes, [4096, 905]);
        // Past the limit: one byte at a time (the parser has said so by then).
        head.read_with(5000, |room| Ok::<_, ()>(room.len()))
            .unwrap();
        assert_eq!(head.len(), 5002);
        // A failed read leaves the bytes as they were.
        assert!(head.read_with(5000, |_| Err(())).is_err());
        assert_eq!(head.len(), 5002);
        assert!(head.read_with(usize::MAX, |_| Ok::<_, ()>(0)).is_ok());
        assert_eq!(head.len(), 5002);
    }

    #[test]
    fn responses_too() {
        let mut out = Vec::new();
        let expected = ClientRequest::new("a", 80, "/").write_with_nonce(&mut out, [7; 16]);
        let accept = crate::handshake::accept_key(
            out.split(|&b| b == b'\n')
                .find_map(|l| l.strip_prefix(b"Sec-WebSocket-Key: "))
                .unwrap()
                .trim_ascii_end(),
        );
        let mut response = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
            Connection: Upgrade\r\nSec-WebSocket-Accept: "
            .to_vec();
        response.extend_from_slice(&accept);
        response.extend_from_slice(b"\r\n\r\n\x81\x00");
        let mut head = HeadBuffer::from(Vec::with_capacity(8));
        let mut source = &response[..];
        // Three bytes at a time: the head is found however it is split.
        let consumed = loop {
            match head.parse(|b| parse_response(b, &expected)) {
                Ok(ResponseStatus::Partial) => {}
                Ok(ResponseStatus::Complete { consumed, .. }) => break consumed,
                Err(e) => panic!("{e}"),
            }
            head.read_with(8192, |room| {
                std::io::Read::read(&mut source, &mut room[..3])
            })
            .unwrap();
        };
        let rest = [head.rest(&mut [], consumed), source].concat();
        assert_eq!(rest, b"\x81\x00");
    }
}
