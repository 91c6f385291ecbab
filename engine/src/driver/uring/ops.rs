//! What a completion is about: every entry's user_data names the kind of operation in its top 4
//! bits and a payload below (a listener index, a connection token, a table key, a slot).

/// The user_data bits below the kind.
const KIND_SHIFT: u32 = 60;
const PAYLOAD: u64 = (1 << KIND_SHIFT) - 1;

/// The kind of an operation, as its user_data carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Op {
    /// A listener's multishot accept (payload: the listener index).
    Accept = 1,
    /// A connection's receive (payload: the token): multishot, or in the poll mode single-shot.
    Recv = 2,
    /// A `sendmsg` (payload: the key in `sends`).
    Send = 3,
    /// The eventfd read.
    Wake = 4,
    /// A cancel.
    Cancel = 5,
    /// The timeout before re-arming a failed accept (payload: the listener index).
    Retry = 6,
    /// A connect poll (payload: the token).
    Connect = 7,
    /// `CLOSE` of a direct descriptor: its completion frees the slot in the ring's count (the
    /// result is not looked at).
    Quiet = 8,
    /// `SHUTDOWN` of a direct descriptor (payload: the slot).
    Shutdown = 9,
    /// `getsockopt(SO_PEERNAME)` of a direct descriptor (payload: the key in `peers`).
    Peer = 10,
    /// Poll mode: a connection's multishot readiness poll (payload: the token; its receives are
    /// `Recv`, single-shot).
    Poll = 11,
    /// The primary ring's read of another ring's eventfd (payload: that ring's index).
    Ring = 12,
}

impl Op {
    /// The user_data of this kind of operation with `payload`.
    #[inline]
    pub(super) fn ud(self, payload: u64) -> u64 {
        debug_assert!(payload <= PAYLOAD);
        (self as u64) << KIND_SHIFT | payload
    }

    /// The kind and payload of a completion's user_data (`None`: no kind of ours).
    #[inline]
    pub(super) fn decode(user_data: u64) -> Option<(Op, u64)> {
        let op = match user_data >> KIND_SHIFT {
            1 => Op::Accept,
            2 => Op::Recv,
            3 => Op::Send,
            4 => Op::Wake,
            5 => Op::Cancel,
            6 => Op::Retry,
            7 => Op::Connect,
            8 => Op::Quiet,
            9 => Op::Shutdown,
            10 => Op::Peer,
            11 => Op::Poll,
            12 => Op::Ring,
            _ => return None,
        };
        Some((op, user_data & PAYLOAD))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_data_round_trips() {
        let all = [
            Op::Accept,
            Op::Recv,
            Op::Send,
            Op::Wake,
            Op::Cancel,
            Op::Retry,
            Op::Connect,
            Op::Quiet,
            Op::Shutdown,
            Op::Peer,
            Op::Poll,
            Op::Ring,
        ];
        for op in all {
            for payload in [0, 1, 12345, PAYLOAD] {
                assert_eq!(Op::decode(op.ud(payload)), Some((op, payload)));
            }
        }
        assert_eq!(Op::decode(0), None);
        assert_eq!(Op::decode(13 << KIND_SHIFT), None);
    }
}
