//! Sends: one `sendmsg` per connection at a time over the chunks of its write queue, in a boxed
//! [`SendOp`] that the kernel reads until the completion; a connection removed meanwhile hands its
//! queue to that op (see the module docs of [`uring`](super)).

use std::io;
use std::os::fd::AsRawFd;

use io_uring::{opcode, types};

use super::ops::Op;
use super::UringDriver;
use crate::buf::WriteQueue;
use crate::driver::{IoEvent, Socket};

/// Most chunks in one `sendmsg`.
const MAX_IOV: usize = 64;
/// Completed sends' boxes kept for reuse (each about 1 KiB).
const MAX_FREE_SENDS: usize = 1024;

/// One `sendmsg` in flight: its header and iovecs (read by the kernel) and, once the connection is
/// gone, the queue whose chunks the iovecs point into.
pub(super) struct SendOp {
    token: u64,
    msg: libc::msghdr,
    iov: [libc::iovec; MAX_IOV],
    orphan: Option<WriteQueue>,
}

impl UringDriver {
    /// Starts one `sendmsg` of (the first chunks of) `queue` for connection `token`.
    pub(crate) fn send(
        &mut self,
        socket: &Socket,
        token: u64,
        queue: &mut WriteQueue,
    ) -> io::Result<()> {
        let entry = self.sends.vacant_entry();
        let key = entry.key() as u64;
        let popped = self.free_sends.pop();
        self.free_sends_low = self.free_sends_low.min(self.free_sends.len());
        let mut op = match popped {
            Some(mut op) => {
                op.token = token;
                op
            }
            None => {
                // SAFETY: msghdr and iovec are plain C structs (integers and raw pointers) for
                // which all-zero is a valid value.
                let (msg, iov) = unsafe { (std::mem::zeroed(), std::mem::zeroed()) };
                Box::new(SendOp {
                    token,
                    msg,
                    iov,
                    orphan: None,
                })
            }
        };
        let n = queue.lend_iovecs(&mut op.iov);
        op.msg.msg_iov = op.iov.as_mut_ptr();
        op.msg.msg_iovlen = n as _;
        let e = match socket {
            Socket::Fd(s) => opcode::SendMsg::new(types::Fd(s.as_raw_fd()), &op.msg)
                .flags(libc::MSG_NOSIGNAL as u32)
                .build(),
            Socket::Direct(slot) => opcode::SendMsg::new(super::fixed(*slot), &op.msg)
                .flags(libc::MSG_NOSIGNAL as u32)
                .build(),
        }
        .user_data(Op::Send.ud(key));
        entry.insert(op);
        // SAFETY: the msghdr and iovecs live in a Box held by `sends` until this op's completion
        // (the Box's heap address does not change when the slab grows). The iovecs point into the
        // chunks of `queue`, which `lend_iovecs` put in flight: until `advance`/`end_write` at this
        // op's completion, the queue frees, shrinks or reallocates none of them (it appends only
        // within capacity or in new chunks; release and drop leak rather than free; see
        // `buf::write_queue`). If the connection goes away its queue moves into this op
        // (`orphan`), moving the `Vec` headers but not the heap buffers the iovecs name. The
        // kernel only reads them.
        unsafe { self.push(e) };
        Ok(())
    }

    /// The connection whose send is in flight is gone: its queue stays alive until the completion,
    /// and the send is cancelled (to a peer that reads nothing it would wait forever, holding the
    /// queue and the socket).
    pub(crate) fn orphan_send(&mut self, token: u64, mut queue: WriteQueue) -> Option<WriteQueue> {
        match self.sends.iter_mut().find(|(_, op)| op.token == token) {
            Some((key, op)) => {
                op.orphan = Some(queue);
                self.cancel(Op::Send.ud(key as u64));
                None
            }
            None => {
                // Its completion was reaped already (the connection went before handling it).
                queue.end_write();
                Some(queue)
            }
        }
    }

    /// The completion of send `key` (the user_data payload): its connection learns how many
    /// bytes went out (and gets back a queue it had orphaned); the box is kept for reuse (up to
    /// [`MAX_FREE_SENDS`]).
    pub(super) fn sent(&mut self, key: usize, res: i32, out: &mut Vec<IoEvent>) {
        if self.sends.contains(key) {
            let mut op = self.sends.remove(key);
            out.push(IoEvent::Sent {
                token: op.token,
                res,
                orphan: op.orphan.take().map(|mut q| {
                    q.end_write();
                    q
                }),
            });
            if self.free_sends.len() < MAX_FREE_SENDS {
                self.free_sends.push(op);
            }
        }
    }
}
