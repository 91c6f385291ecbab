//! Per-client limits: concurrent connections and handshakes per second per client address,
//! enforced across workers without a lock ([`ClientLimits`], [`ClientLimiter`]).
//!
//! The client is the connection's peer address, or the one its PROXY protocol header names (see
//! [`ServerConfig::proxy_protocol`](crate::ServerConfig::proxy_protocol)); an IPv6 client is its
//! /64 (one host usually has a whole /64 to pick addresses from), an IPv4-mapped IPv6 address
//! counts as the IPv4 address. Ports never count.
//!
//! All workers share one table of counters in an `Arc`: slot `hash(client) % size`, with a hash
//! keyed at random per server (SipHash), so clients cannot aim at a slot of their choice. Each
//! slot has an `AtomicU32` of open connections and an `AtomicU64` token bucket (the time of its
//! last update in milliseconds and the tokens it lacks, packed), updated with compare-exchange:
//! no lock, no allocation per client, and memory fixed at start (12 bytes per slot). Two clients
//! whose addresses fall in the same slot share its counts: a collision can only refuse early,
//! never let a client past its limit. With `n` clients active at once and `s` slots, a given
//! client shares its slot with about `n / s` others; the default 65,536 slots keep that small
//! for tens of thousands of concurrent clients.

use std::hash::BuildHasher;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Per-client limits ([`ServerConfig::client_limits`](crate::ServerConfig::client_limits)). Off
/// by default: nothing is counted and no table is allocated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientLimits {
    /// Most connections one client may hold open at once, across all workers, handshakes and
    /// closing connections included (default `None`: no limit). Counted from the moment its
    /// address is known (at accept, or after its PROXY header) until the connection is removed.
    pub max_connections: Option<u32>,
    /// Most new connections (handshakes) one client may start per second, across all workers,
    /// as a token bucket that holds one second's worth: a burst of this many, then this many per
    /// second (default `None`: no limit; at most 65,535).
    pub max_handshakes_per_sec: Option<u32>,
    /// What a refused connection gets (default [`LimitAction::Reject`] with `Retry-After: 1`).
    pub action: LimitAction,
    /// Slots in the shared table of counters (default 65,536, rounded up to a power of two;
    /// 12 bytes each). Fewer slots, more clients sharing one (see the module's documentation).
    pub table_size: usize,
}

impl Default for ClientLimits {
    fn default() -> Self {
        ClientLimits {
            max_connections: None,
            max_handshakes_per_sec: None,
            action: LimitAction::Reject {
                retry_after: Duration::from_secs(1),
            },
            table_size: 1 << 16,
        }
    }
}

impl ClientLimits {
    /// Whether any limit is set.
    pub fn enabled(&self) -> bool {
        self.max_connections.is_some() || self.max_handshakes_per_sec.is_some()
    }
}

/// What a connection over a per-client limit gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitAction {
    /// An HTTP `429 Too Many Requests` with `Retry-After` (whole seconds, at least 1) instead of
    /// the upgrade, sent at once (the request is not waited for), then the connection drains and
    /// closes as any refused upgrade does. Browsers and client libraries show the status.
    Reject {
        /// The `Retry-After` value.
        retry_after: Duration,
    },
    /// Close the connection at once, without reading it or answering: the cheapest, for a flood.
    Close,
}

/// Which limit refused a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    Connections,
    HandshakeRate,
}

/// The table every worker counts clients in, and how many connections each limit refused. Reached
/// through [`ServerHandle::client_limiter`](crate::ServerHandle::client_limiter) (present when a
/// limit is set).
#[derive(Debug)]
pub struct ClientLimiter {
    /// Open connections per slot (empty without `max_connections`).
    conns: Box<[AtomicU32]>,
    /// Token buckets per slot (empty without `max_handshakes_per_sec`): bits 24.. the time of
    /// the last take in milliseconds since `epoch` (34 years fit), bits 0..24 the tokens the
    /// bucket lacks, in 1/256 token (0: full; a zeroed slot is a full bucket of a client never
    /// seen).
    buckets: Box<[AtomicU64]>,
    hasher: std::collections::hash_map::RandomState,
    epoch: Instant,
    max_connections: u32,
    rate: u32,
    /// Connections refused because their client already had `max_connections` open (a counter
    /// for metrics: it only grows).
    pub refused_connections: AtomicU64,
    /// Connections refused because their client started more than `max_handshakes_per_sec`
    /// (a counter for metrics: it only grows).
    pub refused_handshake_rate: AtomicU64,
}

/// 1/256 token: the bucket's unit.
const UNIT: u64 = 256;
const TOKENS_BITS: u32 = 24;
const TOKENS_MASK: u64 = (1 << TOKENS_BITS) - 1;

impl ClientLimiter {
    /// The table for `limits` (`None` when no limit is set).
    pub(crate) fn new(limits: &ClientLimits) -> Option<ClientLimiter> {
        if !limits.enabled() {
            return None;
        }
        let size = limits.table_size.clamp(1, 1 << 24).next_power_of_two();
        let table = |on: bool| if on { size } else { 0 };
        Some(ClientLimiter {
            conns: (0..table(limits.max_connections.is_some()))
                .map(|_| AtomicU32::new(0))
                .collect(),
            buckets: (0..table(limits.max_handshakes_per_sec.is_some()))
                .map(|_| AtomicU64::new(0))
                .collect(),
            hasher: Default::default(),
            epoch: Instant::now(),
            max_connections: limits.max_connections.unwrap_or(u32::MAX),
            rate: limits.max_handshakes_per_sec.unwrap_or(0).min(65_535),
            refused_connections: AtomicU64::new(0),
            refused_handshake_rate: AtomicU64::new(0),
        })
    }

    /// The client an address counts as: the IPv4 address, or the IPv6 /64.
    fn client(ip: IpAddr) -> u128 {
        match ip.to_canonical() {
            IpAddr::V4(v4) => u128::from(u32::from(v4)) | 1 << 64,
            IpAddr::V6(v6) => u128::from(v6) & !u128::from(u64::MAX),
        }
    }

    fn slot(&self, addr: SocketAddr) -> usize {
        let size = self.conns.len().max(self.buckets.len());
        (self.hasher.hash_one(Self::client(addr.ip())) as usize) & (size - 1)
    }

    /// A new connection from `addr` at `now`: counted, or refused by one limit (and that limit's
    /// counter grows). A counted connection must be [`release`](Self::release)d once.
    pub(crate) fn admit(&self, addr: SocketAddr, now: Instant) -> Result<(), Refusal> {
        let i = self.slot(addr);
        if let Some(open) = self.conns.get(i) {
            let max = self.max_connections;
            if open
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < max).then_some(n + 1)
                })
                .is_err()
            {
                self.refused_connections.fetch_add(1, Ordering::Relaxed);
                return Err(Refusal::Connections);
            }
        }
        if let Some(bucket) = self.buckets.get(i) {
            if !self.take_token(bucket, now) {
                if let Some(open) = self.conns.get(i) {
                    open.fetch_sub(1, Ordering::AcqRel);
                }
                self.refused_handshake_rate.fetch_add(1, Ordering::Relaxed);
                return Err(Refusal::HandshakeRate);
            }
        }
        Ok(())
    }

    /// Takes one token from a bucket that refills at `rate` per second up to `rate` tokens.
    fn take_token(&self, bucket: &AtomicU64, now: Instant) -> bool {
        let rate = u64::from(self.rate);
        let full = rate * UNIT;
        let now_ms = now.saturating_duration_since(self.epoch).as_millis() as u64;
        let mut cur = bucket.load(Ordering::Acquire);
        loop {
            let (last, lacking) = (cur >> TOKENS_BITS, cur & TOKENS_MASK);
            // Workers' clocks differ by a loop turn: one behind the last take refills nothing.
            let elapsed = now_ms.saturating_sub(last).min(3_600_000);
            let lacking = lacking.saturating_sub(elapsed * rate * UNIT / 1000);
            if lacking + UNIT > full {
                // Refused: nothing stored, so the time since the last take keeps counting.
                return false;
            }
            let next = now_ms.max(last) << TOKENS_BITS | (lacking + UNIT);
            match bucket.compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return true,
                Err(seen) => cur = seen,
            }
        }
    }

    /// A counted connection from `addr` is gone.
    pub(crate) fn release(&self, addr: SocketAddr) {
        if let Some(open) = self.conns.get(self.slot(addr)) {
            // Never below 0 (a slot stuck at u32::MAX would refuse its clients for good).
            let _ = open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        }
    }

    /// Connections counted as open for `addr`'s client (its slot's, shared on a collision).
    pub fn open_connections(&self, addr: SocketAddr) -> u32 {
        self.conns
            .get(self.slot(addr))
            .map_or(0, |n| n.load(Ordering::Acquire))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn off_by_default() {
        assert!(ClientLimiter::new(&ClientLimits::default()).is_none());
    }

    #[test]
    fn connections_per_client_and_per_ipv6_64() {
        let l = ClientLimiter::new(&ClientLimits {
            max_connections: Some(2),
            ..ClientLimits::default()
        })
        .unwrap();
        let now = Instant::now();
        let a = addr("192.0.2.1:1000");
        assert_eq!(l.admit(a, now), Ok(()));
        // The port does not count; a mapped IPv6 address is the IPv4 one.
        assert_eq!(l.admit(addr("[::ffff:192.0.2.1]:2000"), now), Ok(()));
        assert_eq!(l.admit(a, now), Err(Refusal::Connections));
        assert_eq!(l.open_connections(a), 2);
        l.release(a);
        assert_eq!(l.admit(a, now), Ok(()));
        // One /64: the same client; another /64: another.
        assert_eq!(l.admit(addr("[2001:db8::1]:1"), now), Ok(()));
        assert_eq!(l.admit(addr("[2001:db8::ffff:2]:1"), now), Ok(()));
        assert_eq!(
            l.admit(addr("[2001:db8::3]:1"), now),
            Err(Refusal::Connections)
        );
        assert_eq!(l.admit(addr("[2001:db8:0:1::1]:1"), now), Ok(()));
        assert_eq!(l.refused_connections.load(Ordering::Relaxed), 2);
        // Never below zero.
        for _ in 0..5 {
            l.release(addr("[2001:db8:0:1::1]:1"));
        }
        assert_eq!(l.open_connections(addr("[2001:db8:0:1::1]:1")), 0);
    }

    /// One slot: every client collides, and the shared count refuses early (never late).
    #[test]
    fn collisions_are_conservative() {
        let l = ClientLimiter::new(&ClientLimits {
            max_connections: Some(1),
            table_size: 1,
            ..ClientLimits::default()
        })
        .unwrap();
        let now = Instant::now();
        assert_eq!(l.admit(addr("192.0.2.1:1"), now), Ok(()));
        assert_eq!(l.admit(addr("192.0.2.2:1"), now), Err(Refusal::Connections));
    }

    #[test]
    fn handshake_rate_bucket() {
        let l = ClientLimiter::new(&ClientLimits {
            max_handshakes_per_sec: Some(4),
            max_connections: Some(100),
            ..ClientLimits::default()
        })
        .unwrap();
        let t0 = Instant::now();
        let a = addr("192.0.2.1:1");
        for _ in 0..4 {
            assert_eq!(l.admit(a, t0), Ok(()));
        }
        assert_eq!(l.admit(a, t0), Err(Refusal::HandshakeRate));
        // A refusal gives the connection count back.
        assert_eq!(l.open_connections(a), 4);
        // Another client has its own bucket.
        assert_eq!(l.admit(addr("192.0.2.2:1"), t0), Ok(()));
        // A quarter second later, one more token; refusals meanwhile do not delay it.
        for ms in [50, 100, 200] {
            assert_eq!(
                l.admit(a, t0 + Duration::from_millis(ms)),
                Err(Refusal::HandshakeRate)
            );
        }
        assert_eq!(l.admit(a, t0 + Duration::from_millis(251)), Ok(()));
        assert_eq!(
            l.admit(a, t0 + Duration::from_millis(260)),
            Err(Refusal::HandshakeRate)
        );
        // A clock a little behind (another worker's) refills nothing and breaks nothing.
        assert_eq!(l.admit(a, t0), Err(Refusal::HandshakeRate));
        // After a second, a full burst again, never more.
        let later = t0 + Duration::from_secs(5);
        for _ in 0..4 {
            assert_eq!(l.admit(a, later), Ok(()));
        }
        assert_eq!(l.admit(a, later), Err(Refusal::HandshakeRate));
        assert_eq!(l.refused_handshake_rate.load(Ordering::Relaxed), 7);
    }

    /// Workers admitting at once never let a client past its limit.
    #[test]
    fn concurrent_admits_stay_within_the_limit() {
        let l = std::sync::Arc::new(
            ClientLimiter::new(&ClientLimits {
                max_connections: Some(50),
                ..ClientLimits::default()
            })
            .unwrap(),
        );
        let now = Instant::now();
        let admitted: u32 = (0..4)
            .map(|_| {
                let l = std::sync::Arc::clone(&l);
                std::thread::spawn(move || {
                    (0..100)
                        .filter(|_| l.admit(addr("192.0.2.1:1"), now).is_ok())
                        .count() as u32
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .sum();
        assert_eq!(admitted, 50);
        assert_eq!(l.refused_connections.load(Ordering::Relaxed), 350);
    }
}
