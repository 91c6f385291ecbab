//! The WebSocket opening handshake (RFC 6455 section 4), sans-IO.
//!
//! Nothing here reads from or writes to a socket. The server side takes the bytes received so far
//! and answers [`ParseStatus::Partial`] until the request's header block is complete; the caller
//! keeps reading and calls [`parse_request`] again with the grown buffer ([`HeadBuffer`] holds the
//! bytes between reads). Once complete, the returned `consumed` tells how many bytes the request
//! took: whatever follows (a client may send its first frame right behind the request) belongs to
//! the WebSocket connection.
//!
//! ```text
//! bytes --parse_request--> Request --check_origin--> on_upgrade(&Request)
//!                                                   |-- accept: write_accept_response
//!                                                   `-- reject: write_rejection
//! ```
//!
//! Every failure is one [`HandshakeError`] variant with its HTTP status and a response body that
//! says what was wrong ([`HandshakeError::to_rejection`]). The client side lives in [`client`].
//!
//! Semantics follow gorilla/websocket's `Upgrader`: 405 for a method other than GET, 426 with
//! `Sec-WebSocket-Version: 13` for an unsupported version, 403 for a cross-origin request under the
//! default origin policy, 400 for everything else that is not a WebSocket upgrade.

#![forbid(unsafe_code)]

pub mod client;
pub mod deflate_negotiation;
mod error;
mod extensions;
mod fields;
mod head;
mod origin;
mod request;
mod response;

use std::fmt;
use std::sync::Arc;

pub use deflate_negotiation::{
    client_accept, client_accept_with, client_offer, client_offer_with, negotiate,
    DeflateResponseError, Negotiated, PERMESSAGE_DEFLATE,
};
pub use error::{HandshakeError, Rejection, Response};
pub use extensions::{Extension, ExtensionParams, Extensions};
pub use fields::HeaderIter;
pub use head::{HeadBuffer, HeadStatus};
pub use origin::check_origin;
pub use request::{parse_request, ParseStatus, Protocols, Request};
pub use response::{accept_key, reason_phrase, write_accept_response, write_rejection};

/// The GUID that RFC 6455 section 1.3 appends to the client's key.
pub const WEBSOCKET_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The only protocol version this crate speaks (RFC 6455 section 4.1: "The value of this header
/// field MUST be 13").
pub const WEBSOCKET_VERSION: &str = "13";

/// Default limit on the size of a request's (or response's) header block, in bytes.
pub const DEFAULT_MAX_HEAD_SIZE: usize = 8 * 1024;

/// Most header fields accepted in one request or response; more is answered with 431.
pub const MAX_HEADERS: usize = 64;

/// Server-side handshake settings.
#[derive(Clone, Debug)]
pub struct HandshakeConfig {
    /// Largest header block accepted, in bytes (default 8 KiB). A request whose header block goes
    /// past it, complete or not, is rejected with 431. Values above `u32::MAX` act as `u32::MAX`.
    pub max_request_size: usize,
    /// Which `Origin` values are accepted (default: [`OriginPolicy::SameHost`]).
    pub origin: OriginPolicy,
    /// The server's subprotocols in preference order; see [`Request::select_subprotocol`].
    pub subprotocols: Vec<String>,
}

impl Default for HandshakeConfig {
    fn default() -> Self {
        HandshakeConfig {
            max_request_size: DEFAULT_MAX_HEAD_SIZE,
            origin: OriginPolicy::SameHost,
            subprotocols: Vec::new(),
        }
    }
}

/// Decides whether a request's `Origin` is acceptable; see [`check_origin`].
#[derive(Clone, Default)]
pub enum OriginPolicy {
    /// gorilla's safe default: a request without `Origin` passes; one whose `Origin` names another
    /// `host[:port]` than the `Host` header (compared case-insensitively, default ports implied by
    /// the scheme) fails with 403.
    #[default]
    SameHost,
    /// Any origin passes.
    AllowAll,
    /// The function decides; `false` fails with 403.
    Custom(Arc<dyn Fn(&Request) -> bool + Send + Sync>),
}

impl fmt::Debug for OriginPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OriginPolicy::SameHost => f.write_str("SameHost"),
            OriginPolicy::AllowAll => f.write_str("AllowAll"),
            OriginPolicy::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

/// A byte range inside an owned header block. `u32` keeps the per-header index small; header
/// blocks are limited far below 4 GiB.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Span {
    start: u32,
    end: u32,
}

impl Span {
    pub(crate) fn new(start: usize, end: usize) -> Span {
        debug_assert!(start <= end && end <= u32::MAX as usize);
        Span {
            start: start as u32,
            end: end as u32,
        }
    }

    /// The span of `part`, a sub-slice of `whole`.
    pub(crate) fn within(whole: &[u8], part: &[u8]) -> Span {
        // An empty `part` need not point into `whole`; it then stands for nothing at offset 0.
        match (part.as_ptr() as usize).checked_sub(whole.as_ptr() as usize) {
            Some(start) if start + part.len() <= whole.len() => {
                Span::new(start, start + part.len())
            }
            _ => {
                debug_assert!(part.is_empty(), "span outside its block");
                Span::default()
            }
        }
    }

    pub(crate) fn get(self, text: &str) -> &str {
        &text[self.start as usize..self.end as usize]
    }

    /// This span without leading and trailing spaces and tabs (HTTP's OWS).
    pub(crate) fn trim(self, text: &str) -> Span {
        let s = self.get(text);
        let lead = s.len() - s.trim_start_matches([' ', '\t']).len();
        let trimmed = s.trim_matches([' ', '\t']);
        let start = self.start as usize + lead;
        Span::new(start, start + trimmed.len())
    }
}

/// Checks one fuzz input: parses it whole and split at a position derived from the input, and
/// asserts that nothing panics, `consumed <= len`, and the result does not depend on the split.
#[cfg(any(test, fuzzing))]
#[doc(hidden)]
pub fn fuzz_check_request(data: &[u8]) {
    let pos = match data {
        [a, b, ..] => (usize::from(*a) << 8 | usize::from(*b)) % (data.len() + 1),
        _ => 0,
    };
    for cfg in fuzz_configs() {
        check_request_split(data, pos, &cfg);
    }
}

#[cfg(any(test, fuzzing))]
fn fuzz_configs() -> [HandshakeConfig; 2] {
    let small = HandshakeConfig {
        max_request_size: 96,
        origin: OriginPolicy::SameHost,
        subprotocols: vec!["chat".into(), "superchat".into()],
    };
    [HandshakeConfig::default(), small]
}

#[cfg(any(test, fuzzing))]
fn check_request_split(data: &[u8], pos: usize, cfg: &HandshakeConfig) {
    let whole = parse_request(data, cfg);
    let mut out = Vec::new();
    match &whole {
        Ok(ParseStatus::Partial) => assert!(data.len() <= cfg.max_request_size),
        Ok(ParseStatus::Complete { request, consumed }) => {
            assert!(*consumed <= data.len() && *consumed <= cfg.max_request_size);
            assert_eq!(request.key().len(), 24);
            let _ = check_origin(request, cfg);
            let protocol = request.select_subprotocol(&cfg.subprotocols);
            for ext in request.extensions() {
                assert!(!ext.name().is_empty());
                for (name, _) in ext.params() {
                    assert!(!name.is_empty());
                }
            }
            let _ = request.headers().count();
            write_accept_response(&mut out, request.key(), protocol, None, &[]);
        }
        Ok(ParseStatus::Http { request, consumed }) => {
            assert!(*consumed <= data.len() && *consumed <= cfg.max_request_size);
            assert!(request.key().is_empty());
            write_rejection(
                &mut out,
                &HandshakeError::UpgradeNotWebSocket.to_rejection(),
            );
        }
        Err(e) => {
            assert!((400..600).contains(&e.status()));
            write_rejection(&mut out, &e.to_rejection());
        }
    }
    // Feeding a prefix first must either ask for more or already give the final answer.
    match parse_request(&data[..pos], cfg) {
        Ok(ParseStatus::Partial) => {}
        early => assert_eq!(early, whole, "split at {pos} changed the result"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fuzz_corpus_holds_at_every_split() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/corpus/handshake");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).expect("fuzz corpus directory") {
            let data = std::fs::read(entry.unwrap().path()).unwrap();
            fuzz_check_request(&data);
            client::fuzz_check_response(&data);
            for cfg in fuzz_configs() {
                for pos in 0..=data.len() {
                    check_request_split(&data, pos, &cfg);
                }
            }
            seen += 1;
        }
        assert!(seen >= 6, "expected at least 6 seed files, found {seen}");
    }

    /// A few thousand mutations of the corpus through the fuzz checks, so that `cargo test`
    /// exercises them without cargo-fuzz.
    #[test]
    fn mutated_corpus_holds() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/corpus/handshake");
        let seeds: Vec<Vec<u8>> = std::fs::read_dir(dir)
            .expect("fuzz corpus directory")
            .map(|e| std::fs::read(e.unwrap().path()).unwrap())
            .collect();
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut rand = move |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n.max(1) as u64) as usize
        };
        let alphabet = b"\r\n:;, =\"\\\t\x00\xe9\xffaZ0/?";
        for i in 0..4000 {
            let mut data = seeds[i % seeds.len()].clone();
            for _ in 0..1 + rand(4) {
                let at = rand(data.len() + 1);
                match rand(4) {
                    0 if at < data.len() => data[at] = alphabet[rand(alphabet.len())],
                    1 if at < data.len() => {
                        data.remove(at);
                    }
                    2 => data.insert(at, alphabet[rand(alphabet.len())]),
                    _ => data.truncate(at),
                }
            }
            fuzz_check_request(&data);
            client::fuzz_check_response(&data);
        }
    }

    #[test]
    fn empty_header_values() {
        let req = b"GET / HTTP/1.1\r\nHost: a\r\nX-Empty:\r\nX-Blank:   \r\nUpgrade: websocket\r\n\
            Connection: Upgrade\r\nSec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n\
            Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol:\r\n\r\n";
        let Ok(ParseStatus::Complete { request, .. }) =
            parse_request(req, &HandshakeConfig::default())
        else {
            panic!("not complete")
        };
        assert_eq!(request.header("x-empty"), Some(""));
        assert_eq!(request.header("x-blank"), Some(""));
        assert_eq!(request.protocols().count(), 0);
    }

    #[test]
    fn span_trim() {
        let text = "ab \t value\t ";
        let s = Span::new(2, text.len()).trim(text);
        assert_eq!(s.get(text), "value");
        assert_eq!(Span::new(2, 4).trim(text).get(text), "");
    }
}
