//! Deciding the backend once per process: the `SURGE_BACKEND` override, then (for `Auto` and
//! `IoUring`) a probe that io_uring works here with everything the uring driver uses (monoio's
//! `uring_detect`).
//!
//! The probe creates a small ring with the flags the driver asks for, checks every opcode it submits
//! with `IORING_REGISTER_PROBE`, the features it relies on (`EXT_ARG` for timed waits, `NODROP`), and
//! registers a provided-buffer ring (kernel 5.19). Multishot receive arrived in 6.0 with no opcode
//! of its own, so the kernel version is checked for it.
//!
//! Direct descriptors are an extra: `SHUTDOWN` and `CLOSE` supported and a sparse file table
//! registered on the probe ring (accept into an allocated slot is 5.19, like multishot accept).
//! Without them the uring driver uses ordinary descriptors.
//!
//! With direct descriptors, the peer's address is asked through the ring (there is no process fd
//! for `getpeername`): `IORING_OP_URING_CMD` with `SOCKET_URING_OP_GETSOCKOPT` and
//! `SOL_SOCKET`/`SO_PEERNAME` (kernel 6.7). The probe runs that query on a real loopback connection
//! and checks the address it returns; where it fails (older kernel, no loopback, a security module
//! refusing it), direct descriptors are still used but the peer's address is `None`
//! ([`peer_support`] says why, and the driver logs it once).

use std::sync::OnceLock;

use io_uring::{opcode, IoUring, Probe};

use super::Backend;

/// The environment variable that overrides [`ServerConfig::backend`](crate::ServerConfig::backend).
pub(crate) const ENV: &str = "SURGE_BACKEND";

/// The opcodes the uring driver submits.
const OPCODES: &[(u8, &str)] = &[
    (opcode::AcceptMulti::CODE, "accept"),
    (opcode::RecvMulti::CODE, "recv"),
    (opcode::SendMsg::CODE, "sendmsg"),
    (opcode::AsyncCancel::CODE, "async_cancel"),
    (opcode::Read::CODE, "read"),
    (opcode::Timeout::CODE, "timeout"),
];

/// The opcodes the uring driver submits on direct descriptors only.
const DIRECT_OPCODES: &[u8] = &[opcode::Shutdown::CODE, opcode::Close::CODE];

/// Whether io_uring can run the uring driver here; the reason when not. Probed once per process.
pub(crate) fn uring_support() -> Result<(), String> {
    probed().map(drop)
}

/// Whether the uring driver can accept into direct descriptors here (probed with
/// [`uring_support`]).
pub(crate) fn direct_support() -> bool {
    probed().map(|s| s.direct).unwrap_or(false)
}

/// Whether a direct descriptor's peer address can be asked through the ring (see the module
/// documentation); the reason when not.
pub(crate) fn peer_support() -> Result<(), String> {
    probed()?.peer
}

#[derive(Clone, Debug)]
struct Support {
    direct: bool,
    peer: Result<(), String>,
}

fn probed() -> Result<Support, String> {
    static RESULT: OnceLock<Result<Support, String>> = OnceLock::new();
    // On a thread of its own: tearing the probe's ring down later queues task work on the thread
    // that used it (TWA_SIGNAL), which makes a blocking socket call with a timeout on that thread
    // fail with EINTR. A thread that has exited gets none.
    RESULT
        .get_or_init(|| {
            std::thread::spawn(probe)
                .join()
                .unwrap_or_else(|_| Err("the probe panicked".into()))
        })
        .clone()
}

fn probe() -> Result<Support, String> {
    let (major, minor) = kernel_version().ok_or("cannot read the kernel version")?;
    if (major, minor) < (6, 0) {
        return Err(format!(
            "kernel {major}.{minor} has no multishot receive (6.0+)"
        ));
    }
    let mut ring: IoUring = super::uring::builder()
        .build(8)
        .map_err(|e| format!("io_uring_setup failed: {e}"))?;
    if !ring.params().is_feature_ext_arg() {
        return Err("no IORING_FEAT_EXT_ARG (timed waits)".into());
    }
    if !ring.params().is_feature_nodrop() {
        return Err("no IORING_FEAT_NODROP".into());
    }
    let mut probe = Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(|e| format!("IORING_REGISTER_PROBE failed: {e}"))?;
    for (code, name) in OPCODES {
        if !probe.is_supported(*code) {
            return Err(format!("opcode {name} not supported"));
        }
    }
    super::uring::BufRing::new(&ring, 8, 64, 0, 8, false)
        .map(drop)
        .map_err(|e| format!("provided buffer ring refused: {e}"))?;
    let direct = DIRECT_OPCODES.iter().all(|&c| probe.is_supported(c))
        && ring.submitter().register_files_sparse(16).is_ok();
    let peer = if !direct {
        Err("no direct descriptors".into())
    } else if !probe.is_supported(opcode::UringCmd16::CODE) {
        Err("opcode uring_cmd not supported".into())
    } else {
        probe_peername(&mut ring)
    };
    Ok(Support { direct, peer })
}

/// Asks `SO_PEERNAME` through the ring on the accepted end of a loopback connection and checks it
/// against the connecting end's address.
fn probe_peername(ring: &mut IoUring) -> Result<(), String> {
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("loopback: {e}"))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("loopback: {e}"))?;
    let client = TcpStream::connect(addr).map_err(|e| format!("loopback: {e}"))?;
    let (accepted, from) = listener.accept().map_err(|e| format!("loopback: {e}"))?;
    let expected = client.local_addr().map_err(|e| format!("loopback: {e}"))?;
    // SAFETY: sockaddr_in6 is a plain C struct; all-zero is valid.
    let mut out: Box<libc::sockaddr_in6> = Box::new(unsafe { std::mem::zeroed() });
    let ptr: *mut libc::sockaddr_in6 = &mut *out;
    let len = std::mem::size_of::<libc::sockaddr_in>() as u32;
    // SAFETY: `out` lives until the completion is reaped below (or is leaked if it never comes).
    let e = unsafe {
        super::uring::peername_entry(super::uring::PeerTarget::Fd(accepted.as_raw_fd()), ptr, len)
    }
    .user_data(1);
    // SAFETY: as above; the ring is otherwise idle.
    unsafe { ring.submission().push(&e) }.map_err(|_| "submission queue full".to_string())?;
    if let Err(e) = ring.submit_and_wait(1) {
        std::mem::forget(out);
        return Err(format!("submit failed: {e}"));
    }
    let Some(cqe) = ring.completion().next() else {
        std::mem::forget(out);
        return Err("no completion".into());
    };
    let res = cqe.result();
    if res < 0 {
        let e = std::io::Error::from_raw_os_error(-res);
        return Err(format!(
            "getsockopt(SO_PEERNAME) through the ring failed: {e} (kernel 6.7+)"
        ));
    }
    match super::uring::parse_sockaddr(&out, res as usize) {
        Some(a) if a == expected && a == from => Ok(()),
        other => Err(format!(
            "getsockopt(SO_PEERNAME) through the ring returned {other:?}, not {expected}"
        )),
    }
}

fn kernel_version() -> Option<(u32, u32)> {
    let s = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let mut it = s.trim().split(|c: char| !c.is_ascii_digit());
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// The backend after the `SURGE_BACKEND` override (an unknown value is reported and ignored).
pub(crate) fn requested(configured: Backend) -> Backend {
    match std::env::var(ENV) {
        Ok(v) if !v.is_empty() => v.parse().unwrap_or_else(|e| {
            eprintln!("surge: ignoring {ENV}: {e}");
            configured
        }),
        _ => configured,
    }
}

/// Resolves `Auto` and checks `IoUring`: the backend the workers will run, never `Auto`.
/// `Auto` falls back to epoll with one log line saying why; a forced `IoUring` that cannot run is an
/// error (`Unsupported`).
pub(crate) fn resolve(configured: Backend) -> std::io::Result<Backend> {
    match requested(configured) {
        Backend::Epoll => Ok(Backend::Epoll),
        Backend::IoUring => match uring_support() {
            Ok(()) => Ok(Backend::IoUring),
            Err(why) => Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                format!("io_uring backend unavailable: {why}"),
            )),
        },
        Backend::Auto => match uring_support() {
            Ok(()) => Ok(Backend::IoUring),
            Err(why) => {
                eprintln!("surge: io_uring unavailable ({why}); using epoll");
                Ok(Backend::Epoll)
            }
        },
    }
}
