//! A browser over wss://: headless Chromium loads the chat example's page over https (a test CA's
//! certificate, trusted through `--ignore-certificate-errors-spki-list` with the certificate's
//! SPKI hash, computed by `openssl`), the page opens `wss://.../ws` and sends a line; an observer
//! in the room (surge::blocking over rustls, trusting the same CA) must hear it.
//!
//! Chromium is `$CHROMIUM` or the first of chromium, chromium-browser, google-chrome on the PATH.
//! Without it (or openssl) the test prints why and passes, unless `CI=true`: then it fails.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use surge::blocking::{Dialer, Error, MessageType};
use surge::tls::{rustls, ClientTlsConfig};

/// A tool missing: skipped with a reason, or a failure under CI=true.
fn missing(tool: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{tool} is missing (required under CI=true)");
    }
    eprintln!("SKIPPED chromium: {tool} not found");
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

fn chromium() -> Option<PathBuf> {
    if let Some(c) = std::env::var_os("CHROMIUM") {
        return Some(PathBuf::from(c));
    }
    [
        "chromium",
        "chromium-browser",
        "google-chrome",
        "google-chrome-stable",
    ]
    .iter()
    .find_map(|n| on_path(n))
}

/// A child process killed on drop.
struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The chat example next to this test binary (target/<profile>/examples/chat), built first if
/// `cargo test --test chromium` did not build it.
fn chat_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    let path = profile_dir.join("examples").join("chat");
    if !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let mut build = Command::new(cargo);
        build.args(["build", "-p", "surge-cluster", "--example", "chat"]);
        if profile_dir.file_name().is_some_and(|d| d == "release") {
            build.arg("--release");
        }
        assert!(
            build.status().unwrap().success(),
            "building the chat example"
        );
    }
    path
}

/// The base64 SHA-256 of the certificate's public key (SPKI), as Chromium's
/// `--ignore-certificate-errors-spki-list` wants it.
fn spki_hash(cert: &Path) -> String {
    let script = format!(
        "openssl x509 -in '{}' -pubkey -noout | openssl pkey -pubin -outform der \
         | openssl dgst -sha256 -binary | openssl enc -base64",
        cert.display()
    );
    let out = Command::new("sh").args(["-c", &script]).output().unwrap();
    assert!(out.status.success(), "openssl: {out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
fn chromium_opens_wss_to_the_chat_example() {
    let Some(browser) = chromium() else {
        return missing("chromium ($CHROMIUM or on the PATH)");
    };
    if on_path("openssl").is_none() {
        return missing("openssl");
    }
    // The test CA and the chat's certificate (127.0.0.1 and localhost).
    let pki = support::pki::Pki::new();
    let leaf = pki.leaf(&["127.0.0.1", "localhost"]);
    let dir = std::env::temp_dir().join(format!("surge-chromium-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, &leaf.cert_pem).unwrap();
    std::fs::write(&key_path, &leaf.key_pem).unwrap();

    // The chat over TLS on a port of its choosing.
    let mut chat = Kill(
        Command::new(chat_binary())
            .args(["--host", "127.0.0.1", "--port", "0"])
            .arg("--tls-cert")
            .arg(&cert_path)
            .arg("--tls-key")
            .arg(&key_path)
            .stdout(Stdio::piped())
            .spawn()
            .expect("the chat example"),
    );
    let mut line = String::new();
    BufReader::new(chat.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    // "chat on https://127.0.0.1:PORT/ (WebSocket at wss://127.0.0.1:PORT/ws)"
    let addr = line
        .split_whitespace()
        .nth(2)
        .and_then(|u| u.strip_prefix("https://"))
        .map(|a| a.trim_end_matches('/').to_owned())
        .unwrap_or_else(|| panic!("the chat said {line:?}"));

    // The observer, in the room before the browser comes.
    let tls = ClientTlsConfig::with_ca_pem(pki.ca_pem().as_bytes()).unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let session = rustls::ClientConnection::new(Arc::clone(tls.rustls_config()), name).unwrap();
    let tcp = TcpStream::connect(&addr).unwrap();
    let stream = rustls::StreamOwned::new(session, tcp);
    let url = format!("wss://{addr}/ws?nick=observer");
    let (mut observer, _) = Dialer::default().dial_stream(stream, &url).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    observer.set_read_deadline(Some(deadline)).unwrap();

    let profile = dir.join("profile");
    let page = format!("https://{addr}/?nick=chromium&say=hellofromchromium");
    let mut browser = Kill(
        Command::new(&browser)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(format!(
                "--ignore-certificate-errors-spki-list={}",
                spki_hash(&cert_path)
            ))
            .arg(&page)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("chromium"),
    );
    let mut heard = Vec::new();
    let said = loop {
        match observer.read_message() {
            Ok((MessageType::Text, text)) => {
                let text = String::from_utf8(text).unwrap();
                if text == "chromium: hellofromchromium" {
                    break true;
                }
                heard.push(text);
            }
            Ok(_) => {}
            Err(Error::Timeout) => break false,
            Err(e) => panic!("observer: {e} (heard {heard:?})"),
        }
    };
    if !said {
        let _ = browser.0.kill();
        let mut err = String::new();
        if let Some(mut e) = browser.0.stderr.take() {
            use std::io::Read;
            let _ = e.read_to_string(&mut err);
        }
        panic!("Chromium's line never came (heard {heard:?}); chromium said:\n{err}");
    }
    assert!(
        heard.iter().any(|l| l.starts_with("* chromium joined")),
        "heard {heard:?}"
    );
    drop(browser);
    let _ = observer.write_close(surge::blocking::CloseCode::NORMAL, "");
    let _ = chat.0.stdin.take().map(|mut s| s.flush());
    drop(chat);
    let _ = std::fs::remove_dir_all(&dir);
}
