//! The server name (SNI) from a ClientHello's first record, for [`TlsInfo`](super::TlsInfo):
//! rustls 0.23's unbuffered server connection does not expose it.

/// What the first bytes of a connection say about its server name.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Hello {
    /// Not a whole first record yet.
    Partial,
    /// A ClientHello (its server name, lowercase, if it has one and it is ASCII), or something
    /// this parser does not follow (rustls judges it): no name.
    Done(Option<String>),
}

/// RFC 8446 4.1.2 / RFC 6066 3: record header, handshake header, version, random, session id,
/// cipher suites, compression methods, extensions; `server_name` (0) holds a list whose
/// `host_name` (0) entry is the name.
pub(crate) fn client_hello_sni(buf: &[u8]) -> Hello {
    if buf.len() < 5 {
        return Hello::Partial;
    }
    if buf[0] != 22 {
        return Hello::Done(None);
    }
    let len = u16::from_be_bytes([buf[3], buf[4]]) as usize;
    if buf.len() < 5 + len {
        return Hello::Partial;
    }
    Hello::Done(parse(&buf[5..5 + len]))
}

fn parse(rec: &[u8]) -> Option<String> {
    let mut r = Reader(rec);
    if r.u8()? != 1 {
        return None;
    }
    let _hs_len = r.take(3)?;
    r.take(2 + 32)?;
    let sid = r.u8()? as usize;
    r.take(sid)?;
    let suites = r.u16()? as usize;
    r.take(suites)?;
    let comp = r.u8()? as usize;
    r.take(comp)?;
    let ext_len = r.u16()? as usize;
    let mut exts = Reader(r.take(ext_len)?);
    while !exts.0.is_empty() {
        let ty = exts.u16()?;
        let len = exts.u16()? as usize;
        let body = exts.take(len)?;
        if ty != 0 {
            continue;
        }
        let mut list = Reader(body);
        let list_len = list.u16()? as usize;
        let mut list = Reader(list.take(list_len)?);
        while !list.0.is_empty() {
            let kind = list.u8()?;
            let n = list.u16()? as usize;
            let name = list.take(n)?;
            if kind == 0 {
                return std::str::from_utf8(name)
                    .ok()
                    .filter(|s| s.is_ascii())
                    .map(str::to_ascii_lowercase);
            }
        }
        return None;
    }
    None
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello as rustls's client writes it.
    fn hello(name: &str) -> Vec<u8> {
        let cfg = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let mut c = rustls::ClientConnection::new(
            std::sync::Arc::new(cfg),
            name.to_string().try_into().unwrap(),
        )
        .unwrap();
        let mut out = Vec::new();
        c.write_tls(&mut out).unwrap();
        out
    }

    #[test]
    fn finds_the_server_name_at_every_split() {
        let h = hello("Example.COM");
        for cut in 0..h.len() {
            assert_eq!(client_hello_sni(&h[..cut]), Hello::Partial, "cut at {cut}");
        }
        assert_eq!(
            client_hello_sni(&h),
            Hello::Done(Some("example.com".into()))
        );
        // An IP address sends no SNI.
        let h = hello("127.0.0.1");
        assert_eq!(client_hello_sni(&h), Hello::Done(None));
        assert_eq!(client_hello_sni(b"GET / HTTP/1.1\r\n"), Hello::Done(None));
        // Garbage after a handshake record header: no name, no panic.
        assert_eq!(
            client_hello_sni(&[22, 3, 1, 0, 3, 1, 0, 0]),
            Hello::Done(None)
        );
    }
}
