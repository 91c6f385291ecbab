//! A test CA made at test time (rcgen) and the leaf certificates it signs; no key is committed.

use surge::tls::TlsConfig;

/// A test CA and the leaf certificates it signs (PEM).
pub struct Pki {
    ca: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
}

/// A leaf certificate: its chain and key in PEM, and its DER to compare with what a client saw.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: Vec<u8>,
}

impl Pki {
    pub fn new() -> Pki {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "surge test CA");
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca = params.self_signed(&ca_key).unwrap();
        Pki { ca, ca_key }
    }

    /// A certificate for `names` (DNS names or IP addresses), signed by the CA.
    pub fn leaf(&self, names: &[&str]) -> Leaf {
        let params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }

    /// The CA's certificate (PEM), what clients trust.
    pub fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    /// The CA's certificate (DER).
    pub fn ca_der(&self) -> surge::tls::rustls::pki_types::CertificateDer<'static> {
        self.ca.der().clone()
    }

    /// A server configuration with one certificate for `names` (defaults: ALPN, tickets).
    pub fn server_tls(&self, names: &[&str]) -> TlsConfig {
        let leaf = self.leaf(names);
        TlsConfig::builder()
            .cert_pem(leaf.cert_pem.as_bytes(), leaf.key_pem.as_bytes())
            .unwrap()
            .build()
            .unwrap()
    }
}
