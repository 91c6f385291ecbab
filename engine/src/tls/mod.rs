//! TLS settings for `wss://` (rustls 0.23 with the *ring* provider), both sides.
//!
//! Server: [`TlsConfig`] is what [`ServerConfig::tls`](crate::ServerConfig::tls) holds and what
//! [`ServerHandle::reload_tls`](crate::ServerHandle::reload_tls) swaps in: certificates from PEM
//! (one default and any number chosen by SNI) or a ready [`rustls::ServerConfig`]. ALPN offers
//! `http/1.1`; session tickets are on by default.
//!
//! Client: [`ClientTlsConfig`] is what a `wss://` [`ConnectRequest`](crate::ConnectRequest) uses
//! to verify the server: the webpki roots (Mozilla's) by default, a CA of your own, or a ready
//! [`rustls::ClientConfig`].
//!
//! The worker drives each connection through rustls's unbuffered (sans-IO) API
//! (`server/worker/tls.rs`); an accepted TLS 1.3 connection, once its handshake is done, is
//! handed over to the worker's own record layer (`record`), with the traffic keys rustls gives
//! through its kTLS seam.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

pub(crate) mod record;
pub(crate) mod sni;

pub use rustls;

/// The crypto provider: *ring* (builds with a C compiler only; aws-lc-rs needs cmake here).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// TLS settings of a server: a ready [`rustls::ServerConfig`], shared by every worker and read
/// once per handshake. Cheap to clone.
#[derive(Clone)]
pub struct TlsConfig {
    pub(crate) rustls: Arc<rustls::ServerConfig>,
}

/// A running server's current TLS configuration: read (a read lock and an `Arc` clone) once per
/// accepted TLS connection, never per message; [`ServerHandle::reload_tls`] swaps it.
///
/// [`ServerHandle::reload_tls`]: crate::ServerHandle::reload_tls
#[derive(Debug, Default)]
pub(crate) struct TlsCell(std::sync::RwLock<Option<Arc<rustls::ServerConfig>>>);

impl TlsCell {
    pub(crate) fn new(cfg: Option<&TlsConfig>) -> Self {
        TlsCell(std::sync::RwLock::new(cfg.map(|c| Arc::clone(&c.rustls))))
    }

    pub(crate) fn get(&self) -> Option<Arc<rustls::ServerConfig>> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn set(&self, cfg: &TlsConfig) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::clone(&cfg.rustls));
    }
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfig")
            .field("alpn", &self.rustls.alpn_protocols)
            .field("tickets", &self.rustls.ticketer.enabled())
            .finish_non_exhaustive()
    }
}

impl TlsConfig {
    /// One certificate chain and its key, from PEM files (defaults: ALPN `http/1.1`, tickets).
    pub fn from_pem_files(cert_chain: impl AsRef<Path>, key: impl AsRef<Path>) -> io::Result<Self> {
        TlsConfig::builder()
            .cert_pem_files(cert_chain, key)?
            .build()
    }

    /// A ready rustls configuration, used as it is (its ALPN list, tickets and resolver), with
    /// `enable_secret_extraction` turned on: after a TLS 1.3 handshake the worker seals and
    /// opens records itself with the traffic keys (see `tls::record`), dropping rustls's
    /// connection object.
    pub fn from_rustls(config: Arc<rustls::ServerConfig>) -> Self {
        if config.enable_secret_extraction {
            return TlsConfig { rustls: config };
        }
        let mut cfg = (*config).clone();
        cfg.enable_secret_extraction = true;
        TlsConfig {
            rustls: Arc::new(cfg),
        }
    }

    /// Several certificates, chosen by SNI, and other settings.
    pub fn builder() -> TlsConfigBuilder {
        TlsConfigBuilder {
            default: None,
            by_name: HashMap::new(),
            tickets: true,
            alpn: vec![b"http/1.1".to_vec()],
        }
    }

    /// The rustls configuration new handshakes use.
    pub fn rustls_config(&self) -> &Arc<rustls::ServerConfig> {
        &self.rustls
    }
}

/// Builds a [`TlsConfig`]: a default certificate and certificates by server name (SNI).
pub struct TlsConfigBuilder {
    default: Option<Arc<CertifiedKey>>,
    by_name: HashMap<String, Arc<CertifiedKey>>,
    tickets: bool,
    alpn: Vec<Vec<u8>>,
}

impl fmt::Debug for TlsConfigBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfigBuilder")
            .field("default", &self.default.is_some())
            .field("names", &self.by_name.keys().collect::<Vec<_>>())
            .field("tickets", &self.tickets)
            .finish()
    }
}

impl TlsConfigBuilder {
    /// The certificate for clients that send no server name or one without a certificate of its
    /// own (PEM: the chain, leaf first, and its private key).
    pub fn cert_pem(mut self, cert_chain: &[u8], key: &[u8]) -> io::Result<Self> {
        self.default = Some(certified_key(cert_chain, key)?);
        Ok(self)
    }

    /// [`cert_pem`](Self::cert_pem) from files.
    pub fn cert_pem_files(
        self,
        cert_chain: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> io::Result<Self> {
        let (c, k) = read_pair(cert_chain.as_ref(), key.as_ref())?;
        self.cert_pem(&c, &k)
    }

    /// The certificate for clients asking for `server_name` (SNI, case-insensitive).
    pub fn sni_cert_pem(
        mut self,
        server_name: &str,
        cert_chain: &[u8],
        key: &[u8],
    ) -> io::Result<Self> {
        let ck = certified_key(cert_chain, key)?;
        self.by_name.insert(server_name.to_ascii_lowercase(), ck);
        Ok(self)
    }

    /// [`sni_cert_pem`](Self::sni_cert_pem) from files.
    pub fn sni_cert_pem_files(
        self,
        server_name: &str,
        cert_chain: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> io::Result<Self> {
        let (c, k) = read_pair(cert_chain.as_ref(), key.as_ref())?;
        self.sni_cert_pem(server_name, &c, &k)
    }

    /// Session resumption with tickets (default on; stateful resumption from a 256-entry cache
    /// per server is always on). Tickets are encrypted with keys made for this configuration: a
    /// reload starts new ones, and clients resuming an older session do a full handshake.
    pub fn session_tickets(mut self, on: bool) -> Self {
        self.tickets = on;
        self
    }

    /// The ALPN protocols offered (default `http/1.1`; empty: no ALPN).
    pub fn alpn(mut self, protocols: Vec<Vec<u8>>) -> Self {
        self.alpn = protocols;
        self
    }

    /// The configuration; fails without any certificate.
    pub fn build(self) -> io::Result<TlsConfig> {
        if self.default.is_none() && self.by_name.is_empty() {
            return Err(invalid("a TLS configuration needs a certificate"));
        }
        let resolver = Arc::new(Resolver {
            default: self.default,
            by_name: self.by_name,
        });
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(io::Error::other)?
            .with_no_client_auth()
            .with_cert_resolver(resolver);
        cfg.alpn_protocols = self.alpn;
        // TLS 1.3 connections are handed over to `tls::record` after their handshake.
        cfg.enable_secret_extraction = true;
        if self.tickets {
            cfg.ticketer = rustls::crypto::ring::Ticketer::new().map_err(io::Error::other)?;
        }
        Ok(TlsConfig {
            rustls: Arc::new(cfg),
        })
    }
}

/// Picks the certificate by the ClientHello's server name, else the default.
#[derive(Debug)]
struct Resolver {
    default: Option<Arc<CertifiedKey>>,
    by_name: HashMap<String, Arc<CertifiedKey>>,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        hello
            .server_name()
            .and_then(|n| self.by_name.get(&n.to_ascii_lowercase()))
            .or(self.default.as_ref())
            .cloned()
    }
}

/// How a `wss://` client connection verifies the server (and resumes sessions): a ready
/// [`rustls::ClientConfig`], shared by the connections given it. Cheap to clone.
///
/// The server's certificate is checked against the roots for the URL's host (a DNS name or an IP
/// address, also sent as SNI). The connections of one `ClientTlsConfig` (and its clones) share its
/// session cache, so a second connection to a server resumes the first one's session (TLS 1.3
/// tickets, TLS 1.2 session ids) unless [`without_resumption`](Self::without_resumption).
///
/// ```no_run
/// use surge::tls::ClientTlsConfig;
/// use surge::ConnectRequest;
///
/// # fn main() -> std::io::Result<()> {
/// // Public servers: the webpki roots (also what a wss:// request without `tls` gets).
/// let public = ConnectRequest::new("wss://echo.example.com/ws");
/// // A private CA (PEM, one or more certificates).
/// let ca = ClientTlsConfig::with_ca_pem_file("ca.pem")?;
/// let private = ConnectRequest::new("wss://10.0.0.7:9443/").tls(ca.clone());
/// // Any rustls configuration (client certificates, other roots, ...), used as it is.
/// let custom = ClientTlsConfig::from_rustls(ca.rustls_config().clone());
/// # let _ = (public, private, custom);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct ClientTlsConfig {
    pub(crate) rustls: Arc<rustls::ClientConfig>,
}

impl fmt::Debug for ClientTlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTlsConfig")
            .field("alpn", &self.rustls.alpn_protocols)
            .finish_non_exhaustive()
    }
}

impl ClientTlsConfig {
    /// Verifies servers against the webpki roots (`webpki-roots`: Mozilla's CA list), offers ALPN
    /// `http/1.1`. One configuration per process (built at the first call), so every connection
    /// using it shares one session cache.
    pub fn webpki_roots() -> Self {
        static DEFAULT: std::sync::OnceLock<Arc<rustls::ClientConfig>> = std::sync::OnceLock::new();
        let cfg = DEFAULT.get_or_init(|| {
            let roots = rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            };
            Arc::new(client_config(roots).expect("the ring provider supports the safe defaults"))
        });
        ClientTlsConfig {
            rustls: Arc::clone(cfg),
        }
    }

    /// Verifies servers against the CA certificates in `pem` only (one or more), offers ALPN
    /// `http/1.1`.
    pub fn with_ca_pem(pem: &[u8]) -> io::Result<Self> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| invalid(&format!("CA certificate PEM: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| invalid(&format!("CA certificate: {e}")))?;
        }
        if roots.is_empty() {
            return Err(invalid("no CA certificate in the PEM"));
        }
        Ok(ClientTlsConfig {
            rustls: Arc::new(client_config(roots)?),
        })
    }

    /// [`with_ca_pem`](Self::with_ca_pem) from a file.
    pub fn with_ca_pem_file(path: impl AsRef<Path>) -> io::Result<Self> {
        let path = path.as_ref();
        let pem = std::fs::read(path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        Self::with_ca_pem(&pem)
    }

    /// A ready rustls configuration, used as it is (roots, verifier, ALPN, client certificate,
    /// session cache). Its crypto provider should be *ring* ([`provider`]) or compatible.
    pub fn from_rustls(config: Arc<rustls::ClientConfig>) -> Self {
        ClientTlsConfig { rustls: config }
    }

    /// The same verification with session resumption off: every connection does a full
    /// handshake (a copy of the configuration with a session cache of its own, disabled).
    pub fn without_resumption(self) -> Self {
        let mut cfg = (*self.rustls).clone();
        cfg.resumption = rustls::client::Resumption::disabled();
        ClientTlsConfig {
            rustls: Arc::new(cfg),
        }
    }

    /// The rustls configuration connections use.
    pub fn rustls_config(&self) -> &Arc<rustls::ClientConfig> {
        &self.rustls
    }
}

fn client_config(roots: rustls::RootCertStore) -> io::Result<rustls::ClientConfig> {
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// What [`Request::tls`](crate::Request::tls) tells about a `wss://` connection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsInfo {
    pub(crate) server_name: Option<String>,
    pub(crate) alpn: Option<Vec<u8>>,
    pub(crate) version: Option<rustls::ProtocolVersion>,
    pub(crate) resumed: bool,
}

impl TlsInfo {
    /// The server name the client asked for (SNI), lowercase; `None` without one.
    pub fn server_name(&self) -> Option<&str> {
        self.server_name.as_deref()
    }

    /// The protocol ALPN agreed on (`http/1.1`), if the client offered ALPN.
    pub fn alpn(&self) -> Option<&[u8]> {
        self.alpn.as_deref()
    }

    /// The TLS version (1.2 or 1.3).
    pub fn version(&self) -> Option<rustls::ProtocolVersion> {
        self.version
    }

    /// The handshake resumed an earlier session (a ticket or a session id), rather than a full
    /// one.
    pub fn resumed(&self) -> bool {
        self.resumed
    }
}

fn read_pair(cert: &Path, key: &Path) -> io::Result<(Vec<u8>, Vec<u8>)> {
    let c = std::fs::read(cert)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", cert.display())))?;
    let k = std::fs::read(key)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", key.display())))?;
    Ok((c, k))
}

fn certified_key(cert_chain: &[u8], key: &[u8]) -> io::Result<Arc<CertifiedKey>> {
    let certs = CertificateDer::pem_slice_iter(cert_chain)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(&format!("certificate PEM: {e}")))?;
    if certs.is_empty() {
        return Err(invalid("no certificate in the PEM"));
    }
    let key = PrivateKeyDer::from_pem_slice(key)
        .map_err(|e| invalid(&format!("private key PEM: {e}")))?;
    let signer = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| invalid(&format!("private key: {e}")))?;
    let ck = CertifiedKey::new(certs, signer);
    ck.keys_match().or_else(|e| match e {
        // A key whose public half rustls cannot derive: taken as it is.
        rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown) => Ok(()),
        e => Err(invalid(&format!("certificate and key: {e}"))),
    })?;
    Ok(Arc::new(ck))
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg.to_string())
}
