//! The PROXY protocol header in front of a connection's request (the parsing is
//! `server/proxy.rs`'s): read before the HTTP parser sees a byte, its client address put where
//! `Request::peer`, `Conn::peer_addr` and the per-client limits find it.

use std::net::SocketAddr;

use super::*;
use crate::handler::Handler;
use crate::server::proxy::{read_header, ProxyHeader, ProxyProtocol};
use crate::server::registry::ConnId;

impl<H: Handler> Worker<H> {
    /// Bytes at the start of a connection whose listener expects a PROXY header: `Some` with
    /// the bytes of `new` left for the HTTP parser (the held buffer keeps the rest when bytes
    /// were held), `None` when the header is still incomplete (the bytes are held, within the
    /// header's size bound), or the connection was closed (a bad header) or refused (a
    /// per-client limit). No header expected, or done: `new` unchanged.
    pub(super) fn proxy_header<'a>(
        &mut self,
        id: ConnId,
        new: &'a mut [u8],
    ) -> Option<&'a mut [u8]> {
        let ctx = &mut self.ctx;
        let c = ctx.conns.get_mut(id)?;
        let Stage::Handshake(hs) = &mut c.stage else {
            return Some(new);
        };
        // The socket's own peer first, when the driver is still asking for it (a v2 LOCAL
        // header keeps it): the bytes wait in `held` meanwhile (upgrade.rs).
        if hs.proxy == ProxyProtocol::Off || hs.peer_pending {
            return Some(new);
        }
        let holding = hs.held.capacity() != 0;
        if holding {
            hs.held.extend_from_slice(new);
        }
        let bytes: &[u8] = if holding { &hs.held } else { new };
        let (len, client) = match read_header(bytes, hs.proxy, ctx.cfg.max_proxy_header_size) {
            ProxyHeader::Partial => {
                if !holding {
                    let mut held = ctx.chunks.get();
                    held.clear();
                    held.extend_from_slice(new);
                    hs.held = held;
                }
                return None;
            }
            ProxyHeader::Absent => (0, None),
            ProxyHeader::Header { len, client } => (len, client),
            ProxyHeader::Invalid(e) => {
                let peer = hs.peer.or_else(|| c.socket.peer_addr().ok());
                let refused = &ctx.admission.shared.proxy_refused;
                refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if let Some(quiet) = ctx.admission.proxy_log.ready(ctx.now, 1) {
                    let from = peer.map_or_else(|| "an unknown peer".into(), |a| a.to_string());
                    eprintln!(
                        "surge: closing a connection from {from}: {e}{}",
                        crate::ratelog::RateLog::more(quiet)
                    );
                }
                ctx.remove(id);
                return None;
            }
        };
        hs.proxy = ProxyProtocol::Off;
        if client.is_some() {
            hs.peer = client;
        }
        let rest: &'a mut [u8] = if holding {
            hs.held.drain(..len);
            &mut []
        } else {
            &mut new[len..]
        };
        if let Some(addr) = client {
            ctx.keep_peer(id, addr);
        }
        if !self.count_client(id) {
            return None;
        }
        Some(rest)
    }
}

impl<D> WorkerCtx<D> {
    /// Keeps the client's address in the connection's slot, where `Conn::peer_addr` finds it
    /// after the upgrade (an IPv4 one packed in the entry, an IPv6 one in `peers6`): a PROXY
    /// header's, or the one the per-client limits counted.
    pub(super) fn keep_peer(&mut self, id: ConnId, addr: SocketAddr) {
        let Some(c) = self.conns.get_mut(id) else {
            return;
        };
        c.peer = match addr {
            SocketAddr::V4(a) => {
                let [a0, a1, a2, a3] = a.ip().octets();
                let [p0, p1] = a.port().to_be_bytes();
                PackedPeer([a0, a1, a2, a3, p0, p1])
            }
            SocketAddr::V6(_) => {
                self.peers6.insert(id, addr);
                PackedPeer::V6
            }
        };
    }

    /// The address `keep_peer` kept.
    pub(super) fn kept_peer(&self, id: ConnId) -> Option<SocketAddr> {
        let c = self.conns.get(id)?;
        if c.peer == PackedPeer::V6 {
            return self.peers6.get(&id).copied();
        }
        c.peer.get()
    }
}
