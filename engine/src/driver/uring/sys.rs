//! The kernel interface below the io-uring crate: the `io_uring_enter` and ring-registration calls
//! it offers no form of, their `#[repr(C)]` structs, the `SO_PEERNAME` command entry and its
//! result, and anonymous mappings.

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

use io_uring::{opcode, squeue, types};

const ENTER_GETEVENTS: u32 = 1;
const ENTER_EXT_ARG: u32 = 8;
const ENTER_REGISTERED_RING: u32 = 16;
const REGISTER_RING_FDS: u32 = 20;

/// `struct io_uring_getevents_arg`.
#[repr(C)]
struct GetEventsArg {
    sigmask: u64,
    sigmask_sz: u32,
    min_wait_usec: u32,
    ts: u64,
}

/// `struct __kernel_timespec`.
#[repr(C)]
struct KernelTimespec {
    tv_sec: i64,
    tv_nsec: i64,
}

/// `struct io_uring_rsrc_update`.
#[repr(C)]
struct RsrcUpdate {
    offset: u32,
    resv: u32,
    data: u64,
}

/// Registers the ring's descriptor in the calling thread's ring table (5.18); its index.
/// (The io-uring crate keeps the index inside a short-lived `Submitter`, so this is done here.)
pub(super) fn register_ring_fd(ring_fd: RawFd) -> Option<u32> {
    let mut up = RsrcUpdate {
        offset: u32::MAX, // any free slot
        resv: 0,
        data: ring_fd as u64,
    };
    // SAFETY: IORING_REGISTER_RING_FDS reads and writes back one io_uring_rsrc_update, which `up`
    // is (repr(C), live for the call).
    let r = unsafe {
        libc::syscall(
            libc::SYS_io_uring_register,
            ring_fd,
            REGISTER_RING_FDS,
            &mut up as *mut RsrcUpdate,
            1u32,
        )
    };
    (r == 1).then_some(up.offset)
}

/// The loop turn's `io_uring_enter` on the ring `ring_fd` (through its index in the thread's
/// registered-ring table where `ring_index` has one): submits `to_submit` queued entries and waits
/// for at least one completion or `timeout` (GETEVENTS also runs the deferred task work).
pub(super) fn enter(
    ring_fd: RawFd,
    ring_index: Option<u32>,
    to_submit: u32,
    timeout: Option<Duration>,
) -> io::Result<()> {
    let (fd, mut flags) = match ring_index {
        Some(i) => (i as libc::c_int, ENTER_GETEVENTS | ENTER_REGISTERED_RING),
        None => (ring_fd, ENTER_GETEVENTS),
    };
    let ts;
    let arg;
    let (argp, argsz): (*const GetEventsArg, usize) = match timeout {
        None => (std::ptr::null(), 0),
        Some(t) => {
            ts = KernelTimespec {
                tv_sec: t.as_secs().min(i64::MAX as u64) as i64,
                tv_nsec: i64::from(t.subsec_nanos()),
            };
            arg = GetEventsArg {
                sigmask: 0,
                sigmask_sz: 0,
                min_wait_usec: 0,
                ts: &ts as *const KernelTimespec as u64,
            };
            flags |= ENTER_EXT_ARG;
            (&arg, std::mem::size_of::<GetEventsArg>())
        }
    };
    // SAFETY: io_uring_enter reads `argsz` bytes of `arg` (a live local, or null with size 0)
    // and the timespec it points to (a live local); no signal mask is passed. `fd` is the
    // ring's descriptor or its registered index (with the matching flag).
    let r = unsafe {
        libc::syscall(
            libc::SYS_io_uring_enter,
            fd,
            to_submit,
            1u32,
            flags,
            argp,
            argsz,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `SOCKET_URING_OP_GETSOCKOPT`: the `cmd_op` of a socket's generic getsockopt through
/// `IORING_OP_URING_CMD` (kernel 6.7; `SOL_SOCKET` options only).
const SOCKET_URING_OP_GETSOCKOPT: u32 = 2;

/// The `SO_PEERNAME` query for `target`, writing at most `len` bytes (the kernel refuses a length
/// over the address's own: 16 for IPv4, 28 for IPv6) to `out`. The result is the length written.
///
/// # Safety
/// `out` must stay valid and unaliased until the entry's completion (see
/// [`UringDriver::push`](super::UringDriver::push)).
pub(crate) unsafe fn peername_entry(
    target: PeerTarget,
    out: *mut libc::sockaddr_in6,
    len: u32,
) -> squeue::Entry {
    let level_optname =
        (libc::SOL_SOCKET as u32 as u64) | ((libc::SO_PEERNAME as u32 as u64) << 32);
    let mut cmd = [0u8; 16];
    cmd[..8].copy_from_slice(&(out as u64).to_ne_bytes());
    let e = match target {
        PeerTarget::Fd(fd) => opcode::UringCmd16::new(types::Fd(fd), SOCKET_URING_OP_GETSOCKOPT),
        PeerTarget::Fixed(slot) => {
            opcode::UringCmd16::new(types::Fixed(slot), SOCKET_URING_OP_GETSOCKOPT)
        }
    }
    // `level` and `optname` share the `addr` union (offset 16); `optval` is the first 8 bytes of
    // the command area (offset 48).
    .addr(Some(level_optname))
    .cmd(cmd)
    .build();
    // SAFETY: `squeue::Entry` is `#[repr(C)]` around the kernel's 64-byte `io_uring_sqe`
    // (`transmute` checks the size), and any bit pattern is a valid `[u8; 64]`. Bytes 44..48 are
    // the `optlen` member of the union at that offset (`splice_fd_in`/`file_index`), which
    // `UringCmd16` leaves zero and the crate offers no setter for; writing it back is a valid
    // `io_uring_sqe` (plain integers) and so a valid `Entry`.
    let mut raw: [u8; 64] = unsafe { std::mem::transmute::<squeue::Entry, [u8; 64]>(e) };
    raw[44..48].copy_from_slice(&len.to_ne_bytes());
    // SAFETY: as above.
    unsafe { std::mem::transmute::<[u8; 64], squeue::Entry>(raw) }
}

/// What a [`peername_entry`] names: an ordinary descriptor (the probe) or a direct one.
#[derive(Clone, Copy, Debug)]
pub(crate) enum PeerTarget {
    Fd(RawFd),
    Fixed(u32),
}

/// The address an `SO_PEERNAME` query wrote (`len` bytes of `raw`).
pub(crate) fn parse_sockaddr(raw: &libc::sockaddr_in6, len: usize) -> Option<std::net::SocketAddr> {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
    match i32::from(raw.sin6_family) {
        libc::AF_INET if len >= std::mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: a sockaddr_in (16 bytes) fits in a sockaddr_in6 (28) and has alignment 4
            // like it; the kernel wrote one (family AF_INET).
            let v4 = unsafe { &*(raw as *const libc::sockaddr_in6).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr)),
                u16::from_be(v4.sin_port),
            )))
        }
        libc::AF_INET6 if len >= std::mem::size_of::<libc::sockaddr_in6>() => {
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(raw.sin6_addr.s6_addr),
                u16::from_be(raw.sin6_port),
                raw.sin6_flowinfo,
                raw.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// An anonymous private read-write mapping of `len` bytes.
pub(super) fn mmap(len: usize) -> io::Result<*mut u8> {
    // SAFETY: an anonymous private mapping at an address of the kernel's choice; no existing
    // memory is affected. The result is checked against MAP_FAILED.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(p.cast())
}
