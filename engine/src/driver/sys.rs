//! The few system calls made outside the drivers' event loops: thread affinity, limits, eventfds,
//! and the non-blocking connect of outgoing connections.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use socket2::{Domain, Protocol, Socket, Type};

/// Pins the calling thread to one CPU.
pub(crate) fn pin_to_cpu(cpu: usize) {
    // SAFETY: `cpu_set_t` is plain data for which all-zero is the empty set; CPU_SET writes inside
    // it (the index is reduced below CPU_SETSIZE), and sched_setaffinity only reads `size_of` bytes
    // of it. Pid 0 means the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu % libc::CPU_SETSIZE as usize, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// `RLIMIT_NOFILE`'s soft limit (1024 if it cannot be read).
pub(crate) fn nofile_limit() -> u64 {
    // SAFETY: `rlimit` is plain data; getrlimit writes one into it.
    let mut lim: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: `lim` is a live, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        lim.rlim_cur
    } else {
        1024
    }
}

/// A non-blocking, close-on-exec eventfd (an io_uring worker's waker).
pub(crate) fn event_fd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd takes no pointers; the result is checked before use.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `IP_BIND_ADDRESS_NO_PORT` (Linux 4.2): a bind without a port does not reserve one; the port
/// is chosen at connect time, per destination, so many addresses can share the port range.
const IP_BIND_ADDRESS_NO_PORT: libc::c_int = 24;

/// A non-blocking TCP socket, bound to `source` if given, with its connect under way.
pub(crate) fn start_connect(
    addr: SocketAddr,
    source: Option<IpAddr>,
    nodelay: bool,
) -> io::Result<mio::net::TcpStream> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_nonblocking(true)?;
    if nodelay {
        socket.set_nodelay(true)?;
    }
    if let Some(src) = source {
        if src.is_ipv4() {
            let one: libc::c_int = 1;
            // SAFETY: setsockopt reads `size_of::<c_int>()` bytes of `one`, a live local; the
            // descriptor is the socket's own.
            let r = unsafe {
                libc::setsockopt(
                    socket.as_raw_fd(),
                    libc::IPPROTO_IP,
                    IP_BIND_ADDRESS_NO_PORT,
                    (&one as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if r != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        socket.bind(&SocketAddr::new(src, 0).into())?;
    }
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(mio::net::TcpStream::from_std(socket.into()))
}
