//! uWebSockets.js as a peer (system `uws`): the Node binding of uWebSockets (C++) and uSockets,
//! started as `node benches/peers/uws/{echo,broadcast}.js --port P --workers N`, a child process like
//! every other server (its CPU time and RSS are read from /proc for the node process, all its
//! threads). One thread: it corresponds to surge with one worker. Every message also passes through
//! one JS callback on top of the C++ core.
//!
//! Optional: `bash benches/peers/uws/setup.sh` installs the package into `target/uws-peer/`
//! (git-ignored). Without node or the package, a run names the system skipped and goes on.
//! `SURGE_NODE` picks the node binary (default `node` on the PATH), `SURGE_UWS_DIR` the install
//! directory (default `target/uws-peer` at the repository root).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The system's name on the command line.
pub const SYSTEM: &str = "uws";

/// How tables and charts name a system.
pub fn label(system: &str) -> &str {
    match system {
        SYSTEM => "uWebSockets.js",
        crate::uws_cpp::SYSTEM => "uWS C++",
        _ => system,
    }
}

/// The repository's `benches/peers/uws/` (the scripts).
pub fn scripts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../peers/uws")
}

fn install_dir() -> PathBuf {
    match std::env::var_os("SURGE_UWS_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/uws-peer"),
    }
}

fn node() -> PathBuf {
    match std::env::var_os("SURGE_NODE") {
        Some(n) if !n.is_empty() => PathBuf::from(n),
        _ => PathBuf::from("node"),
    }
}

/// Whether `node` runs and loads the native uWebSockets.js addon from `dir` (through the scripts'
/// own loader, `common.js`); the reason when not.
pub fn probe(node: &Path, scripts: &Path, dir: &Path) -> Result<String, String> {
    let loader = scripts.join("common.js");
    if !loader.exists() {
        return Err(format!("{} is missing", loader.display()));
    }
    let code = format!(
        "require({:?}).load(); process.stdout.write(process.version)",
        loader.display().to_string()
    );
    let out = Command::new(node)
        .args(["-e", &code])
        .env("SURGE_UWS_DIR", dir)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", node.display()))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let first = err
            .lines()
            .find(|l| l.contains("Error"))
            .unwrap_or("")
            .trim();
        return Err(format!(
            "uWebSockets.js does not load from {} ({first})",
            dir.display()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The probe's answer for this run (asked once).
fn availability() -> &'static Result<String, String> {
    static ONCE: OnceLock<Result<String, String>> = OnceLock::new();
    ONCE.get_or_init(|| probe(&node(), &scripts_dir(), &install_dir()))
}

/// True (after saying why, once per call) when `system` is uWebSockets.js and it cannot run here.
pub fn skip(system: &str) -> bool {
    if system != SYSTEM {
        return false;
    }
    match availability() {
        Ok(_) => false,
        Err(why) => {
            eprintln!(
                "[{SYSTEM}] skipped: {why}; install it with `bash benches/peers/uws/setup.sh` \
                 (needs node and npm)"
            );
            true
        }
    }
}

/// The program and arguments that start one of the scripts (`echo.js`, `broadcast.js`).
pub fn command(script: &str, args: &[String]) -> (PathBuf, Vec<String>) {
    let mut all = vec![scripts_dir().join(script).display().to_string()];
    all.extend(args.iter().cloned());
    (node(), all)
}

/// `Command` for a script, with `SURGE_UWS_DIR` set for its loader. The node process gets SIGKILL
/// when the harness goes (node does not read its stdin, so nothing else would end it if the harness
/// were killed before dropping it).
pub fn spawn_command(script: &str, args: &[String]) -> Command {
    use std::os::unix::process::CommandExt;
    let (program, args) = command(script, args);
    let mut cmd = Command::new(program);
    cmd.args(args).env("SURGE_UWS_DIR", install_dir());
    // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        assert_eq!(label("uws"), "uWebSockets.js");
        assert_eq!(label("uws-cpp"), "uWS C++");
        assert_eq!(label("surge-epoll"), "surge-epoll");
    }

    #[test]
    fn missing_node_is_a_reason_not_a_panic() {
        let r = probe(
            Path::new("/nonexistent/node"),
            &scripts_dir(),
            Path::new("/nonexistent"),
        );
        assert!(r.unwrap_err().contains("cannot run"));
    }

    #[test]
    fn missing_scripts_is_a_reason() {
        let r = probe(
            Path::new("node"),
            Path::new("/nonexistent"),
            Path::new("/nonexistent"),
        );
        assert!(r.unwrap_err().contains("missing"));
    }

    #[test]
    fn scripts_are_in_the_repository() {
        for s in ["common.js", "echo.js", "broadcast.js", "setup.sh"] {
            assert!(scripts_dir().join(s).exists(), "{s}");
        }
    }

    #[test]
    fn others_are_never_skipped() {
        assert!(!skip("surge-epoll"));
        assert!(!skip("tokio-tungstenite"));
    }
}
