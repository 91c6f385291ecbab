//! Which kernel interface the workers use, and how io_uring receives: chosen in
//! [`ServerConfig`](crate::ServerConfig), resolved here (`SURGE_BACKEND`, `SURGE_URING_RECV`, the
//! probe).

/// Which kernel interface the workers use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Backend {
    /// io_uring when a probe succeeds (the ring can be created with every opcode and feature the
    /// driver uses), else epoll with one log line saying why.
    #[default]
    Auto,
    /// Readiness-based epoll (through mio).
    Epoll,
    /// Completion-based io_uring; `Server::start` fails with `Unsupported` where the kernel refuses.
    IoUring,
}

impl Backend {
    /// The backend a server configured with `self` would ask for, after the `SURGE_BACKEND`
    /// environment variable (`epoll`, `io_uring` or `auto`), which overrides the configuration.
    pub fn requested(self) -> Backend {
        crate::driver::probe::requested(self)
    }

    /// Whether io_uring can run here; the reason when not (probed once per process). Tests that
    /// run once per driver skip the io_uring version, with this message, when it is `Err`.
    pub fn io_uring_support() -> Result<(), String> {
        crate::driver::probe::uring_support()
    }

    /// Whether the io_uring driver can accept into direct descriptors here (see
    /// [`ServerConfig::uring_direct_descriptors`](crate::ServerConfig::uring_direct_descriptors));
    /// `false` where io_uring itself is unavailable.
    pub fn io_uring_direct_support() -> bool {
        crate::driver::probe::direct_support()
    }

    /// The name `FromStr` accepts and `SURGE_BACKEND` uses.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Auto => "auto",
            Backend::Epoll => "epoll",
            Backend::IoUring => "io_uring",
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Backend::Auto),
            "epoll" => Ok(Backend::Epoll),
            "io_uring" | "iouring" | "uring" => Ok(Backend::IoUring),
            _ => Err(format!("unknown backend {s:?} (auto, epoll, io_uring)")),
        }
    }
}

/// How the io_uring driver receives (see
/// [`ServerConfig::uring_recv`](crate::ServerConfig::uring_recv)). No effect on epoll.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UringRecv {
    /// One multishot `RECV` armed per connection: each arrival completes straight into a
    /// provided buffer, one completion per arrival. The kernel keeps the armed receive on every
    /// connection, idle or not: about 0.84 KB of kernel memory each (docs/BENCHMARKS.md).
    #[default]
    Multishot,
    /// One multishot `POLL_ADD` (readiness) armed per connection; on readiness, non-blocking
    /// single-shot `RECV`s (two linked, then more while they bring bytes) into provided buffers
    /// of the same ring. An idle connection costs the kernel only the armed poll, about 0.25 KB
    /// (an epoll registration: about 0.2 KB), but every arrival takes a poll completion and two
    /// receive completions: 6-27% more CPU per message than `Multishot` in the echo benchmarks,
    /// about epoll's cost. For servers whose connections are mostly idle.
    PollThenRecv,
}

impl UringRecv {
    /// The mode a server configured with `self` runs, after the `SURGE_URING_RECV` environment
    /// variable (`multishot` or `poll`), which overrides the configuration.
    pub fn requested(self) -> UringRecv {
        match std::env::var("SURGE_URING_RECV") {
            Ok(v) if !v.is_empty() => v.parse().unwrap_or_else(|e| {
                eprintln!("surge: ignoring SURGE_URING_RECV: {e}");
                self
            }),
            _ => self,
        }
    }

    /// The name `FromStr` accepts and `SURGE_URING_RECV` uses.
    pub fn name(self) -> &'static str {
        match self {
            UringRecv::Multishot => "multishot",
            UringRecv::PollThenRecv => "poll",
        }
    }
}

impl std::fmt::Display for UringRecv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for UringRecv {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "multishot" => Ok(UringRecv::Multishot),
            "poll" | "poll-then-recv" => Ok(UringRecv::PollThenRecv),
            _ => Err(format!(
                "unknown io_uring receive mode {s:?} (multishot, poll)"
            )),
        }
    }
}
