//! Test certificates and TLS clients, for the tests of built-in HTTPS.
//! The signalling suite includes this file by path (`#[path]` in its
//! `tests/common/mod.rs`), so both binaries are tested with one helper.

#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, ServerName};

/// A self-signed certificate for `localhost` and `127.0.0.1`, and its key.
pub struct TestCert {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
}

impl TestCert {
    /// A new key and certificate; `name` is an extra DNS name that tells
    /// certificates apart (every call also gets a fresh serial and key).
    pub fn new(name: &str) -> Self {
        let rcgen::CertifiedKey { cert, signing_key } = rcgen::generate_simple_self_signed(vec![
            name.to_owned(),
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
        ])
        .unwrap();
        Self {
            cert_pem: cert.pem(),
            key_pem: signing_key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    /// Writes the PEM files the way a careful operator replaces them: to a
    /// temporary name, then renamed over the old ones.
    pub fn write(&self, cert: &Path, key: &Path) {
        for (path, text) in [(cert, &self.cert_pem), (key, &self.key_pem)] {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, path).unwrap();
        }
    }
}

/// A rustls client configuration that trusts exactly `certs`, offering
/// HTTP/1.1.
pub fn client_config(certs: &[&TestCert]) -> Arc<rustls::ClientConfig> {
    trusting(certs.iter().map(|c| c.der.clone()))
}

/// A rustls client configuration that trusts exactly these certificates.
pub fn trusting(
    certs: impl IntoIterator<Item = CertificateDer<'static>>,
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in certs {
        roots.add(c).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// An HTTP client that trusts exactly `certs`.
pub fn https_client(certs: &[&TestCert]) -> reqwest::Client {
    https_client_with(client_config(certs))
}

/// An HTTP client with this TLS configuration.
pub fn https_client_with(config: Arc<rustls::ClientConfig>) -> reqwest::Client {
    reqwest::Client::builder()
        .use_preconfigured_tls(Arc::unwrap_or_clone(config))
        .build()
        .unwrap()
}

/// A new TLS connection to `addr` (server name `localhost`) trusting
/// `certs`; returns the stream and the certificate the server presented.
pub async fn connect(
    addr: SocketAddr,
    certs: &[&TestCert],
) -> (
    tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    CertificateDer<'static>,
) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let stream = tokio_rustls::TlsConnector::from(client_config(certs))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let presented = stream.get_ref().1.peer_certificates().unwrap()[0].clone();
    (stream, presented)
}
