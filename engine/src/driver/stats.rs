//! What a driver counts for the metrics (`server::metrics`): kernel events the worker cannot see
//! otherwise. Read once per loop turn; the worker never matches on the backend for them.

/// Counts since the driver opened (all zero on epoll).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct DriverStats {
    /// io_uring: receives that ended with `ENOBUFS` (no provided buffer was free).
    pub(crate) recv_enobufs: u64,
    /// io_uring: completions the kernel dropped or held back because the completion ring was full.
    pub(crate) cq_overflow: u64,
}
