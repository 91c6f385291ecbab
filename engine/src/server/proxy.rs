//! The PROXY protocol (HAProxy's, versions 1 and 2): what a listener expects
//! ([`ProxyProtocol`]) and the sans-IO reading of the header in front of the HTTP request, with
//! the `ppp` crate doing the parsing.
//!
//! A load balancer that passes TCP through (HAProxy `send-proxy`/`send-proxy-v2`, AWS NLB, nginx
//! `proxy_protocol on`) opens its own connection to the server, so the socket's peer is the
//! balancer. It writes the client's address first: version 1 is one text line (`PROXY TCP4
//! 192.0.2.1 198.51.100.1 56324 443\r\n`, 107 bytes at most), version 2 a binary block (a 12-byte
//! signature, 4 bytes of version, command, family and length, then the addresses and optional
//! TLVs). See <https://www.haproxy.org/download/2.6/doc/proxy-protocol.txt>.

use std::net::{IpAddr, SocketAddr};

use ppp::PartialResult;

/// Whether a listener's connections start with a PROXY protocol header
/// ([`ServerConfig::proxy_protocol`](crate::ServerConfig::proxy_protocol)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ProxyProtocol {
    /// No header: the connection starts with the HTTP request (the default).
    #[default]
    Off,
    /// A header (version 1 or 2) may come first: a connection that starts with `PROXY ` or with
    /// the version 2 signature is read as one, any other as HTTP. For a migration only (the
    /// balancer switched on while clients still connect directly): the specification says "The
    /// receiver MUST be configured to only receive the protocol described in this specification
    /// and MUST not try to guess whether the protocol header is present or not", because a client
    /// that connects directly can then claim any address. Use `Required` once every connection
    /// comes through the balancer.
    Optional,
    /// Every connection starts with a header (version 1 or 2); one without is closed.
    Required,
}

/// What listener `i` expects (an index into `cfg.bind`, then `cfg.tls_bind`: the workers' listener
/// order).
pub(crate) fn listener_mode(cfg: &crate::ServerConfig, i: usize) -> ProxyProtocol {
    if cfg.proxy_protocol_listeners.is_empty() {
        return cfg.proxy_protocol;
    }
    let Some(addr) = cfg.bind.iter().chain(&cfg.tls_bind).nth(i) else {
        return cfg.proxy_protocol;
    };
    cfg.proxy_protocol_listeners
        .iter()
        .find(|(a, _)| a == addr)
        .map_or(cfg.proxy_protocol, |&(_, mode)| mode)
}

/// Fails the start on a per-listener setting for an address that is in neither `bind` nor
/// `tls_bind`.
pub(crate) fn check_listeners(cfg: &crate::ServerConfig) -> std::io::Result<()> {
    match cfg
        .proxy_protocol_listeners
        .iter()
        .find(|(a, _)| !cfg.bind.contains(a) && !cfg.tls_bind.contains(a))
    {
        Some((a, _)) => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("proxy_protocol_listeners names {a}, which is in neither bind nor tls_bind"),
        )),
        None => Ok(()),
    }
}

/// The version 1 header's start.
const V1_PREFIX: &[u8] = b"PROXY ";
/// The longest version 1 header, `\r\n` included: "worst case (optional fields set to 0xff) :
/// 107 chars", "So a 108-byte buffer is always enough to store all the line".
const V1_MAX: usize = 107;
/// The version 2 header's 12-byte signature.
const V2_SIGNATURE: &[u8] = ppp::v2::PROTOCOL_PREFIX;
/// The version 2 header's fixed part: signature, version and command, family and protocol,
/// length.
const V2_FIXED: usize = 16;

/// The least [`ServerConfig::max_proxy_header_size`](crate::ServerConfig::max_proxy_header_size)
/// can be: a version 2 header with IPv6 addresses and no TLV (16 + 36 bytes), and more than the
/// longest version 1 header (107).
pub(crate) const MIN_HEADER_LIMIT: usize = 108;

/// What the bytes at the start of a connection are.
#[derive(Debug, PartialEq)]
pub(crate) enum ProxyHeader {
    /// Not enough bytes yet to tell, or an incomplete header.
    Partial,
    /// No header (`Optional` only): the bytes are the HTTP request.
    Absent,
    /// A header of `len` bytes; `client` is the address it names (`None`: a version 2 `LOCAL`
    /// command, such as a balancer's health check, an `UNKNOWN` or unspecified family, a unix
    /// socket, or an address that cannot be a TCP peer: the socket's own peer stands).
    Header {
        len: usize,
        client: Option<SocketAddr>,
    },
    /// Malformed, too large, or missing where required: the connection is closed.
    Invalid(ProxyError),
}

/// Why a connection's PROXY header was refused (the log line says it).
#[derive(Debug, PartialEq)]
pub(crate) enum ProxyError {
    /// `Required`, and the connection started with something else.
    Missing,
    /// A version 2 header longer than the limit.
    TooLarge { len: usize, limit: usize },
    /// A version 1 header the parser refused (107 bytes without the line's end included).
    V1(ppp::v1::BinaryParseError),
    /// A version 2 header the parser refused.
    V2(ppp::v2::ParseError),
}

impl std::fmt::Display for ProxyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProxyError::Missing => f.write_str("no PROXY protocol header (required)"),
            ProxyError::TooLarge { len, limit } => write!(
                f,
                "PROXY protocol v2 header of {len} bytes (max_proxy_header_size {limit})"
            ),
            ProxyError::V1(e) => write!(f, "malformed PROXY protocol v1 header: {e}"),
            ProxyError::V2(e) => write!(f, "malformed PROXY protocol v2 header: {e}"),
        }
    }
}

/// Reads the header at the start of `bytes` (all the connection's bytes so far). `limit` bounds a
/// version 2 header (its 16 fixed bytes plus its length), checked as soon as its length is in;
/// version 1 is bounded at 107 bytes by the protocol (and the parser). A header is looked for in
/// `Optional` and `Required` modes only (`Off` answers `Absent`).
pub(crate) fn read_header(bytes: &[u8], mode: ProxyProtocol, limit: usize) -> ProxyHeader {
    if mode == ProxyProtocol::Off {
        return ProxyHeader::Absent;
    }
    let starts = |prefix: &[u8]| {
        let n = bytes.len().min(prefix.len());
        bytes[..n] == prefix[..n]
    };
    if bytes.len() < V1_PREFIX.len() && starts(V1_PREFIX)
        || bytes.len() < V2_SIGNATURE.len() && starts(V2_SIGNATURE)
    {
        return ProxyHeader::Partial;
    }
    if starts(V2_SIGNATURE) {
        if bytes.len() >= V2_FIXED {
            let len = V2_FIXED + usize::from(u16::from_be_bytes([bytes[14], bytes[15]]));
            if len > limit.max(MIN_HEADER_LIMIT) {
                return ProxyHeader::Invalid(ProxyError::TooLarge { len, limit });
            }
        }
        return match ppp::v2::Header::try_from(bytes) {
            Ok(h) => ProxyHeader::Header {
                len: h.len(),
                // LOCAL: "The receiver must accept this connection as valid and must use the
                // real connection endpoints and discard the protocol block including the family
                // which is ignored." (a balancer's health check).
                client: match (h.command, h.addresses) {
                    (ppp::v2::Command::Local, _) => None,
                    (_, ppp::v2::Addresses::IPv4(a)) => {
                        tcp_peer(IpAddr::V4(a.source_address), a.source_port)
                    }
                    (_, ppp::v2::Addresses::IPv6(a)) => {
                        tcp_peer(IpAddr::V6(a.source_address), a.source_port)
                    }
                    (_, ppp::v2::Addresses::Unspecified | ppp::v2::Addresses::Unix(_)) => None,
                },
            },
            Err(e) if e.is_incomplete() => ProxyHeader::Partial,
            Err(e) => ProxyHeader::Invalid(ProxyError::V2(e)),
        };
    }
    if starts(V1_PREFIX) {
        // Parsed once the line has ended (or cannot end within 107 bytes): `ppp` reads a line
        // cut right after a field's space (`... 56324 `) as a last field that is empty, and
        // refuses it instead of waiting for more.
        let window = &bytes[..bytes.len().min(V1_MAX)];
        if bytes.len() < V1_MAX && !window.contains(&b'\n') {
            return ProxyHeader::Partial;
        }
        let parsed = ppp::v1::Header::try_from(bytes);
        if parsed.is_incomplete() {
            return ProxyHeader::Partial;
        }
        return match parsed {
            Ok(h) => ProxyHeader::Header {
                len: h.header.len(),
                client: match h.addresses {
                    ppp::v1::Addresses::Tcp4(a) => {
                        tcp_peer(IpAddr::V4(a.source_address), a.source_port)
                    }
                    ppp::v1::Addresses::Tcp6(a) => {
                        tcp_peer(IpAddr::V6(a.source_address), a.source_port)
                    }
                    // "the receiver ... SHOULD accept the connection and use the real
                    // connection's parameters as if there were no PROXY protocol header".
                    ppp::v1::Addresses::Unknown => None,
                },
            },
            Err(e) => ProxyHeader::Invalid(ProxyError::V1(e)),
        };
    }
    match mode {
        ProxyProtocol::Required => ProxyHeader::Invalid(ProxyError::Missing),
        _ => ProxyHeader::Absent,
    }
}

/// The address a TCP peer can have: not unspecified, not port 0 (a header that says so is read
/// as naming nobody, and the socket's peer stands).
fn tcp_peer(ip: IpAddr, port: u16) -> Option<SocketAddr> {
    (!ip.is_unspecified() && port != 0).then_some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ProxyProtocol::*;

    fn v2(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x20 | command);
        h.push(family);
        h.extend_from_slice(&(body.len() as u16).to_be_bytes());
        h.extend_from_slice(body);
        h
    }

    fn v2_ipv4(src: [u8; 4], port: u16) -> Vec<u8> {
        let mut body = src.to_vec();
        body.extend_from_slice(&[10, 0, 0, 1]);
        body.extend_from_slice(&port.to_be_bytes());
        body.extend_from_slice(&443u16.to_be_bytes());
        v2(1, 0x11, &body)
    }

    const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";

    #[test]
    fn v1_tcp4_tcp6_unknown() {
        let line = b"PROXY TCP4 192.0.2.7 10.0.0.1 56324 443\r\n";
        let mut bytes = line.to_vec();
        bytes.extend_from_slice(GET);
        assert_eq!(
            read_header(&bytes, Required, 536),
            ProxyHeader::Header {
                len: line.len(),
                client: Some("192.0.2.7:56324".parse().unwrap())
            }
        );
        let line = b"PROXY TCP6 2001:db8::7 2001:db8::1 4000 443\r\n";
        assert_eq!(
            read_header(line, Optional, 536),
            ProxyHeader::Header {
                len: line.len(),
                client: Some("[2001:db8::7]:4000".parse().unwrap())
            }
        );
        let line = b"PROXY UNKNOWN\r\n";
        assert_eq!(
            read_header(line, Required, 536),
            ProxyHeader::Header {
                len: line.len(),
                client: None
            }
        );
    }

    #[test]
    fn v2_proxy_local_unspec_ipv6() {
        let h = v2_ipv4([192, 0, 2, 9], 4242);
        let mut bytes = h.clone();
        bytes.extend_from_slice(GET);
        assert_eq!(
            read_header(&bytes, Required, 536),
            ProxyHeader::Header {
                len: h.len(),
                client: Some("192.0.2.9:4242".parse().unwrap())
            }
        );
        // LOCAL (a health check): the socket's peer stands.
        let mut local = h.clone();
        local[12] = 0x20;
        assert_eq!(
            read_header(&local, Required, 536),
            ProxyHeader::Header {
                len: h.len(),
                client: None
            }
        );
        let unspec = v2(1, 0x00, &[]);
        assert_eq!(
            read_header(&unspec, Required, 536),
            ProxyHeader::Header {
                len: 16,
                client: None
            }
        );
        let mut body = [0u8; 36];
        body[..16].copy_from_slice(
            &"2001:db8::9"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets(),
        );
        body[32..34].copy_from_slice(&7000u16.to_be_bytes());
        let six = v2(1, 0x21, &body);
        assert_eq!(
            read_header(&six, Required, 536),
            ProxyHeader::Header {
                len: 52,
                client: Some("[2001:db8::9]:7000".parse().unwrap())
            }
        );
        // Unspecified source or port 0: nobody.
        let zero = v2_ipv4([0, 0, 0, 0], 4242);
        assert!(matches!(
            read_header(&zero, Required, 536),
            ProxyHeader::Header { client: None, .. }
        ));
    }

    /// Every prefix of a header is `Partial`, and the whole is the same header however it arrives.
    #[test]
    fn every_prefix_is_partial() {
        let headers = [
            b"PROXY TCP4 192.0.2.7 10.0.0.1 56324 443\r\n".to_vec(),
            b"PROXY TCP6 2001:db8::7 2001:db8::1 4000 443\r\n".to_vec(),
            b"PROXY UNKNOWN\r\n".to_vec(),
            v2_ipv4([192, 0, 2, 9], 4242),
            v2(1, 0x00, &[]),
        ];
        for h in headers {
            for mode in [Optional, Required] {
                for n in 0..h.len() {
                    assert_eq!(read_header(&h[..n], mode, 536), ProxyHeader::Partial, "{n}");
                }
                assert!(matches!(
                    read_header(&h, mode, 536),
                    ProxyHeader::Header { len, .. } if len == h.len()
                ));
            }
        }
    }

    /// Random bytes behind either signature (and bytes of valid headers with random damage):
    /// never a panic; once a header is found, every shorter prefix was `Partial` and more bytes
    /// behind it change nothing; once refused, more bytes do not make it acceptable.
    #[test]
    fn arbitrary_bytes_are_decided_consistently() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let samples = [
            b"PROXY TCP4 192.0.2.7 10.0.0.1 56324 443\r\n".to_vec(),
            b"PROXY TCP6 2001:db8::7 2001:db8::1 4000 443\r\n".to_vec(),
            v2_ipv4([192, 0, 2, 9], 4242),
            V1_PREFIX.to_vec(),
            V2_SIGNATURE.to_vec(),
        ];
        for _ in 0..20_000 {
            let mut bytes = samples[next() as usize % samples.len()].clone();
            match next() % 3 {
                0 => {
                    let at = next() as usize % bytes.len();
                    bytes[at] = next() as u8;
                }
                1 => bytes.truncate(next() as usize % (bytes.len() + 1)),
                _ => {}
            }
            for _ in 0..next() % 40 {
                bytes.push(match next() % 4 {
                    0 => b' ',
                    1 => b'\r',
                    2 => b'\n',
                    _ => next() as u8,
                });
            }
            let mode = if next() % 2 == 0 { Optional } else { Required };
            let whole = read_header(&bytes, mode, 536);
            let mut longer = bytes.clone();
            longer.extend_from_slice(b"GET / HTTP/1.1\r\n");
            let more = read_header(&longer, mode, 536);
            match &whole {
                ProxyHeader::Header { len, .. } => {
                    assert_eq!(more, whole, "{bytes:?}");
                    for n in 0..*len {
                        assert_eq!(read_header(&bytes[..n], mode, 536), ProxyHeader::Partial);
                    }
                }
                ProxyHeader::Invalid(_) => {
                    assert!(
                        matches!(more, ProxyHeader::Invalid(_)),
                        "{bytes:?}: {more:?}"
                    )
                }
                ProxyHeader::Absent => assert_eq!(more, ProxyHeader::Absent),
                ProxyHeader::Partial => {}
            }
        }
    }

    #[test]
    fn optional_and_required_without_header() {
        assert_eq!(read_header(GET, Optional, 536), ProxyHeader::Absent);
        assert_eq!(read_header(b"POST", Optional, 536), ProxyHeader::Absent);
        assert_eq!(read_header(b"PRO", Optional, 536), ProxyHeader::Partial);
        assert_eq!(read_header(b"PROXZ", Optional, 536), ProxyHeader::Absent);
        assert_eq!(
            read_header(GET, Required, 536),
            ProxyHeader::Invalid(ProxyError::Missing)
        );
        assert_eq!(read_header(GET, Off, 536), ProxyHeader::Absent);
    }

    #[test]
    fn malformed_and_oversized() {
        for bad in [
            &b"PROXY TCP4 999.0.2.7 10.0.0.1 56324 443\r\n"[..],
            b"PROXY TCP4 192.0.2.7 10.0.0.1 99999 443\r\n",
            b"PROXY TCP5 192.0.2.7 10.0.0.1 1 443\r\n",
            b"PROXY TCP4 192.0.2.7 10.0.0.1 1 443\rX\n",
            b"PROXY \xff\xfe\r\n",
        ] {
            assert!(
                matches!(
                    read_header(bad, Optional, 536),
                    ProxyHeader::Invalid(ProxyError::V1(_))
                ),
                "{bad:?}"
            );
        }
        // No line end within 107 bytes.
        let long = [&b"PROXY TCP4 "[..], &[b'1'; 120]].concat();
        assert!(matches!(
            read_header(&long, Required, 536),
            ProxyHeader::Invalid(ProxyError::V1(_))
        ));
        // Version 2: bad version, command, family; a length too short for the family.
        let good = v2_ipv4([192, 0, 2, 9], 4242);
        for (at, byte) in [(12, 0x31), (12, 0x2f), (13, 0x41), (13, 0x1f)] {
            let mut bad = good.clone();
            bad[at] = byte;
            assert!(
                matches!(
                    read_header(&bad, Required, 536),
                    ProxyHeader::Invalid(ProxyError::V2(_))
                ),
                "{at} {byte:#x}"
            );
        }
        let short = v2(1, 0x11, &[1, 2, 3]);
        assert!(matches!(
            read_header(&short, Required, 536),
            ProxyHeader::Invalid(ProxyError::V2(_))
        ));
        // Too large: refused as soon as the length is in, before the body arrives.
        let big = v2(1, 0x11, &[0u8; 600]);
        assert_eq!(
            read_header(&big[..16], Required, 536),
            ProxyHeader::Invalid(ProxyError::TooLarge {
                len: 616,
                limit: 536
            })
        );
        assert!(matches!(
            read_header(&big, Required, 1000),
            ProxyHeader::Header { len: 616, .. }
        ));
    }
}
