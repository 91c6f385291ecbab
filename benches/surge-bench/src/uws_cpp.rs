//! Native uWebSockets (C++) as a peer (system `uws-cpp`): uWebSockets v20.79.0 over uSockets (epoll,
//! no SSL, -O3, generic x86-64), one thread, built from its public sources by
//! `bash benches/peers/uws-cpp/build.sh UWEBSOCKETS_GIT USOCKETS_GIT` into `target/uws-cpp/`
//! (git-ignored; `SURGE_UWS_CPP_DIR` overrides). The program `uws-cpp-server` plays the echo and the
//! pub/sub server (`benches/peers/uws-cpp/server.cpp`). Without it a run names the system skipped,
//! says where to get the sources, and goes on.
//!
//! This is the bar surge is measured against; uWebSockets.js (`uws`, the Node binding, one JS
//! callback per message on top of the same core) is a different, slower system with its own row.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The system's name on the command line.
pub const SYSTEM: &str = "uws-cpp";

/// The build's folder.
pub fn build_dir() -> PathBuf {
    match std::env::var_os("SURGE_UWS_CPP_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/uws-cpp"),
    }
}

/// The server program.
pub fn program() -> PathBuf {
    build_dir().join("uws-cpp-server")
}

/// True (after saying why) when `system` is native uWS and it is not built here.
pub fn skip(system: &str) -> bool {
    if system != SYSTEM || program().exists() {
        return false;
    }
    eprintln!(
        "[{SYSTEM}] skipped: {} is missing; build it with `bash benches/peers/uws-cpp/build.sh \
         UWEBSOCKETS_GIT USOCKETS_GIT` from clones of https://github.com/uNetworking/uWebSockets \
         and https://github.com/uNetworking/uSockets (needs g++ and zlib1g-dev)",
        program().display()
    );
    true
}

/// What the build says it is (`target/uws-cpp/VERSION`).
pub fn version() -> Option<String> {
    std::fs::read_to_string(build_dir().join("VERSION"))
        .ok()
        .map(|s| s.trim().to_owned())
}

/// `Command` for a role (`echo`, `pubsub`) with the server's arguments.
pub fn command(role: &str, args: &[String]) -> Command {
    let mut cmd = Command::new(program());
    cmd.arg(role).args(args);
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_in_the_repository() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../peers/uws-cpp");
        for f in ["build.sh", "server.cpp"] {
            assert!(dir.join(f).exists(), "{f}");
        }
    }

    #[test]
    fn others_are_never_skipped() {
        assert!(!skip("surge-epoll"));
        assert!(!skip(crate::uws::SYSTEM));
    }
}
