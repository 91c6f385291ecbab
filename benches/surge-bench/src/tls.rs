//! `--tls` runs: a test CA and a certificate for `localhost` and 127.0.0.1, made at run time with
//! rcgen (no key is committed) and written once per harness process to a directory of its own
//! under the temporary directory, for the servers (`--tls-cert`, `--tls-key`) and the load
//! generators (`--tls-ca`).

use std::path::PathBuf;
use std::sync::OnceLock;

/// Where the PEM files are.
#[derive(Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

/// The files, made at the first call.
pub fn files() -> std::io::Result<&'static TlsFiles> {
    static FILES: OnceLock<TlsFiles> = OnceLock::new();
    if let Some(f) = FILES.get() {
        return Ok(f);
    }
    let made = make()?;
    Ok(FILES.get_or_init(|| made))
}

fn make() -> std::io::Result<TlsFiles> {
    let err = std::io::Error::other;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "surge-bench test CA");
    let ca_key = rcgen::KeyPair::generate().map_err(err)?;
    let ca = ca_params.self_signed(&ca_key).map_err(err)?;
    let params =
        rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .map_err(err)?;
    let key = rcgen::KeyPair::generate().map_err(err)?;
    let cert = params.signed_by(&key, &ca, &ca_key).map_err(err)?;
    let dir = std::env::temp_dir().join(format!("surge-bench-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let files = TlsFiles {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
        ca: dir.join("ca.pem"),
    };
    std::fs::write(&files.cert, cert.pem())?;
    std::fs::write(&files.key, key.serialize_pem())?;
    std::fs::write(&files.ca, ca.pem())?;
    Ok(files)
}

/// The server flags of a `--tls` run.
pub fn server_flags() -> std::io::Result<Vec<String>> {
    let f = files()?;
    Ok(vec![
        "--tls-cert".to_owned(),
        f.cert.display().to_string(),
        "--tls-key".to_owned(),
        f.key.display().to_string(),
    ])
}

/// The systems that can serve TLS.
pub fn supports(system: &str) -> bool {
    system.starts_with("surge") || system == "tokio-tungstenite"
}
