//! Negotiating permessage-deflate (RFC 7692 section 7.1), both sides.
//!
//! Server: [`negotiate`] walks the client's offers in order and accepts the first acceptable one; the
//! others are declined by not being mentioned. "A server MUST decline an extension negotiation offer
//! for this extension if ... the negotiation offer contains an extension parameter not defined for use
//! in an offer, ... an extension parameter with an invalid value, ... multiple extension parameters with
//! the same name" (section 5): such an offer is skipped. When no offer is acceptable the connection
//! runs without compression; the handshake itself never fails because of an offer.
//!
//! Client: [`client_offer`] writes the offer for a [`DeflateMode`]; [`client_accept`] checks the
//! server's response: "If a client receives an extension negotiation response that includes invalid
//! extension parameters or ... parameters the client did not ask for, the client MUST _Fail the
//! WebSocket Connection_" (section 5).

use std::fmt;

use super::extensions::Extension;
use crate::proto::deflate::{DeflateMode, DeflateParams, MAX_WINDOW_BITS, MIN_WINDOW_BITS};

/// The extension token (section 7).
pub const PERMESSAGE_DEFLATE: &str = "permessage-deflate";

/// The parameters of one offer or response, checked for syntax: known names, no duplicates, values
/// where a value is needed and none where none is allowed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Params {
    server_no_context_takeover: bool,
    client_no_context_takeover: bool,
    server_max_window_bits: Option<u8>,
    /// `Some(None)`: present without a value (only valid in an offer).
    client_max_window_bits: Option<Option<u8>>,
}

/// "The value of the parameter is a decimal integer value without leading zeroes between 8 to 15,
/// inclusive" (7.1.2.1, 7.1.2.2).
fn window_bits(value: &str) -> Option<u8> {
    match value.as_bytes() {
        [d @ b'8'..=b'9'] => Some(d - b'0'),
        [b'1', d @ b'0'..=b'5'] => Some(10 + d - b'0'),
        _ => None,
    }
}

fn parse(ext: &Extension<'_>) -> Option<Params> {
    let mut p = Params::default();
    for (name, value) in ext.params() {
        let name = name.to_ascii_lowercase();
        match (name.as_str(), value) {
            ("server_no_context_takeover", None) if !p.server_no_context_takeover => {
                p.server_no_context_takeover = true
            }
            ("client_no_context_takeover", None) if !p.client_no_context_takeover => {
                p.client_no_context_takeover = true
            }
            ("server_max_window_bits", Some(v)) if p.server_max_window_bits.is_none() => {
                p.server_max_window_bits = Some(window_bits(v)?)
            }
            ("client_max_window_bits", v) if p.client_max_window_bits.is_none() => {
                p.client_max_window_bits = Some(match v {
                    None => None,
                    Some(v) => Some(window_bits(v)?),
                })
            }
            _ => return None,
        }
    }
    Some(p)
}

/// An accepted offer: the connection's parameters and the `Sec-WebSocket-Extensions` value to answer
/// with (pass it to `write_accept_response`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Negotiated {
    /// What applies on the wire.
    pub params: DeflateParams,
    /// The response's extension value, e.g. `permessage-deflate; server_no_context_takeover`.
    pub response: String,
}

/// Server side: the first acceptable permessage-deflate offer among `offers` (a request's
/// `extensions()`), or `None` (compression off for this connection).
pub fn negotiate<'a>(
    offers: impl IntoIterator<Item = Extension<'a>>,
    mode: DeflateMode,
) -> Option<Negotiated> {
    if mode == DeflateMode::Disabled {
        return None;
    }
    offers
        .into_iter()
        .filter(|e| e.name().eq_ignore_ascii_case(PERMESSAGE_DEFLATE))
        .find_map(|e| accept(parse(&e)?, mode))
}

fn accept(offer: Params, mode: DeflateMode) -> Option<Negotiated> {
    let (server_limit, client_limit, ours_nct) = match mode {
        DeflateMode::Disabled => return None,
        DeflateMode::NoContextTakeover => (MAX_WINDOW_BITS, MAX_WINDOW_BITS, true),
        DeflateMode::ContextTakeover {
            server_max_window_bits,
            client_max_window_bits,
        } => (
            server_max_window_bits.clamp(MIN_WINDOW_BITS, MAX_WINDOW_BITS),
            client_max_window_bits.clamp(MIN_WINDOW_BITS, MAX_WINDOW_BITS),
            false,
        ),
    };
    let mut response = String::from(PERMESSAGE_DEFLATE);
    // "A server MAY include the server_no_context_takeover extension parameter in an extension
    // negotiation response even if the extension negotiation offer being accepted by the response
    // didn't include" it (7.1.1.1); a server accepts an offer that has it by including it.
    let server_nct = offer.server_no_context_takeover || ours_nct;
    if server_nct {
        response.push_str("; server_no_context_takeover");
    }
    // The server may also ask the client not to take over context (7.1.1.2): without context
    // takeover our inflater is the worker's, not the connection's.
    let client_nct = offer.client_no_context_takeover || ours_nct;
    if client_nct {
        response.push_str("; client_no_context_takeover");
    }
    // server_max_window_bits: "the same or smaller value as the offer" when offered; a server may
    // also limit its window unasked (7.1.2.1).
    let server_bits = offer
        .server_max_window_bits
        .map_or(server_limit, |b| b.min(server_limit));
    if offer.server_max_window_bits.is_some() || server_bits < MAX_WINDOW_BITS {
        response.push_str("; server_max_window_bits=");
        response.push_str(&server_bits.to_string());
    }
    // client_max_window_bits: only if offered ("If a received extension negotiation offer doesn't
    // have the client_max_window_bits extension parameter, the corresponding extension negotiation
    // response to the offer MUST NOT include" it, 7.1.2.2); the value at most the offer's.
    let client_bits = match offer.client_max_window_bits {
        None => MAX_WINDOW_BITS,
        Some(offered) => {
            let bits = offered.unwrap_or(MAX_WINDOW_BITS).min(client_limit);
            if offered.is_some() || bits < MAX_WINDOW_BITS {
                response.push_str("; client_max_window_bits=");
                response.push_str(&bits.to_string());
            }
            bits
        }
    };
    Some(Negotiated {
        params: DeflateParams {
            server_no_context_takeover: server_nct,
            client_no_context_takeover: client_nct,
            server_max_window_bits: server_bits,
            client_max_window_bits: client_bits,
        },
        response,
    })
}

/// Client side: the `Sec-WebSocket-Extensions` offer for `mode` (`None` when disabled). Pass it to
/// `ClientRequest::extensions`.
pub fn client_offer(mode: DeflateMode) -> Option<String> {
    client_offer_with(mode, false)
}

/// [`client_offer`], also offering `client_no_context_takeover` when `client_nct` (in
/// `ContextTakeover` mode; `NoContextTakeover` always offers it): "a client informs the peer server
/// of a hint that even if the server doesn't include the client_no_context_takeover extension
/// parameter in the corresponding extension negotiation response to the offer, the client is not
/// going to use context takeover" (7.1.1.2). We then compress each message alone while the server
/// may still take over its context; some servers (Autobahn's fuzzing server) only ask a client for
/// no context takeover, or a window, when it offered this. Check the response with
/// [`client_accept_with`] and the same `client_nct`.
pub fn client_offer_with(mode: DeflateMode, client_nct: bool) -> Option<String> {
    match mode {
        DeflateMode::Disabled => None,
        DeflateMode::NoContextTakeover => Some(format!(
            "{PERMESSAGE_DEFLATE}; server_no_context_takeover; client_no_context_takeover"
        )),
        DeflateMode::ContextTakeover {
            server_max_window_bits,
            ..
        } => {
            let mut offer = String::from(PERMESSAGE_DEFLATE);
            if client_nct {
                offer.push_str("; client_no_context_takeover");
            }
            offer.push_str("; client_max_window_bits");
            let bits = server_max_window_bits.clamp(MIN_WINDOW_BITS, MAX_WINDOW_BITS);
            if bits < MAX_WINDOW_BITS {
                offer.push_str(&format!("; server_max_window_bits={bits}"));
            }
            // A second, fallback offer with the hint that we can do without our own context
            // takeover (RFC 7692 7.1.1.2): a server that insists on `client_no_context_takeover`
            // accepts that one instead of declining compression. The server picks the first it can.
            // (Not needed when the first offer already has it.)
            if client_nct {
                return Some(offer);
            }
            let fallback = format!("{offer}; client_no_context_takeover");
            Some(format!("{offer}, {fallback}"))
        }
    }
}

/// Why the client refuses the server's permessage-deflate response: the connection must be failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeflateResponseError {
    /// permessage-deflate accepted more than once.
    Repeated,
    /// An unknown or repeated parameter, a bad value, or `client_max_window_bits` without a value.
    InvalidParameter,
    /// A parameter that answers nothing offered (`client_max_window_bits` not offered), or a window
    /// larger than the one asked for.
    NotOffered,
    /// An offered parameter the server must echo to accept the offer is missing
    /// (`server_no_context_takeover`, `server_max_window_bits`).
    Missing,
}

impl fmt::Display for DeflateResponseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DeflateResponseError::Repeated => "permessage-deflate accepted more than once",
            DeflateResponseError::InvalidParameter => "invalid permessage-deflate parameter",
            DeflateResponseError::NotOffered => "permessage-deflate parameter not offered",
            DeflateResponseError::Missing => {
                "permessage-deflate response lacks an offered parameter"
            }
        })
    }
}

impl std::error::Error for DeflateResponseError {}

/// Client side: checks the server's accepted extensions (a response's `extensions()`) against what
/// [`client_offer`] offered for `mode`. `Ok(None)`: the server declined, no compression.
pub fn client_accept<'a>(
    accepted: impl IntoIterator<Item = Extension<'a>>,
    mode: DeflateMode,
) -> Result<Option<DeflateParams>, DeflateResponseError> {
    client_accept_with(accepted, mode, false)
}

/// [`client_accept`] for an offer made by [`client_offer_with`] with `client_nct`: the client
/// compresses without context takeover whatever the response says.
pub fn client_accept_with<'a>(
    accepted: impl IntoIterator<Item = Extension<'a>>,
    mode: DeflateMode,
    client_nct: bool,
) -> Result<Option<DeflateParams>, DeflateResponseError> {
    use DeflateResponseError as E;
    let mut found = None;
    for e in accepted {
        if !e.name().eq_ignore_ascii_case(PERMESSAGE_DEFLATE) {
            continue;
        }
        if found.is_some() {
            return Err(E::Repeated);
        }
        found = Some(parse(&e).ok_or(E::InvalidParameter)?);
    }
    let Some(r) = found else { return Ok(None) };
    let (offered_nct, offered_server_bits, offered_client_bits, client_limit) = match mode {
        // Nothing was offered: the server cannot accept it.
        DeflateMode::Disabled => return Err(E::NotOffered),
        DeflateMode::NoContextTakeover => (true, None, false, MAX_WINDOW_BITS),
        DeflateMode::ContextTakeover {
            server_max_window_bits,
            client_max_window_bits,
        } => {
            let s = server_max_window_bits.clamp(MIN_WINDOW_BITS, MAX_WINDOW_BITS);
            let c = client_max_window_bits.clamp(MIN_WINDOW_BITS, MAX_WINDOW_BITS);
            (false, (s < MAX_WINDOW_BITS).then_some(s), true, c)
        }
    };
    // "A server accepts an extension negotiation offer that includes the server_no_context_takeover
    // extension parameter by including the server_no_context_takeover extension parameter" (7.1.1.1).
    if offered_nct && !r.server_no_context_takeover {
        return Err(E::Missing);
    }
    let server_bits = match (offered_server_bits, r.server_max_window_bits) {
        (Some(_), None) => return Err(E::Missing),
        (Some(asked), Some(b)) if b > asked => return Err(E::NotOffered),
        (_, b) => b.unwrap_or(MAX_WINDOW_BITS),
    };
    let client_bits = match r.client_max_window_bits {
        None => MAX_WINDOW_BITS,
        Some(_) if !offered_client_bits => return Err(E::NotOffered),
        // In a response the parameter "MUST have a value" (7.1.2.2).
        Some(None) => return Err(E::InvalidParameter),
        Some(Some(b)) => b,
    };
    Ok(Some(DeflateParams {
        server_no_context_takeover: r.server_no_context_takeover,
        // We may use no context takeover even when not asked to; in NoContextTakeover mode we do.
        client_no_context_takeover: r.client_no_context_takeover || offered_nct || client_nct,
        server_max_window_bits: server_bits,
        client_max_window_bits: client_bits.min(client_limit),
    }))
}
