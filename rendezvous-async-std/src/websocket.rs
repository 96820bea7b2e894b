//! WebSocket, for peers that cannot dial TCP: js-libp2p in a browser.
//!
//! The WebSocket layer is libp2p-websocket around our [`TcpTransport`]; noise
//! and yamux run on top of it exactly as on plain TCP. A point listens on
//! `/ip4/.../tcp/P/ws`, or on `/ip4/.../tcp/P/wss` when given a certificate
//! ([`Tls`]); a client dials either.
//!
//! What a connection may cost before it has authenticated stays bounded: the
//! HTTP upgrade and the TLS handshake run inside the listener's upgrade, so
//! the point's handshake limits and timeout cover them
//! ([`handshakes`](crate::handshakes)), and a WebSocket message larger than
//! [`MAX_MESSAGE`] closes its connection.

use std::fmt;
use std::path::{Path, PathBuf};

use libp2p_websocket::tls;
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::transport::{Config as TcpConfig, TcpTransport};

/// The largest WebSocket message a connection takes (256 KiB). libp2p
/// stacks send one noise frame, at most 65,537 bytes, per message; the
/// crate's default of 256 MiB would let one connection buffer that much.
pub const MAX_MESSAGE: usize = 256 * 1024;

/// A WebSocket transport over TCP with `tcp`'s settings, serving `/wss`
/// with `tls` if given.
pub(crate) fn transport(
    tcp: TcpConfig,
    tls: Option<&Tls>,
) -> libp2p_websocket::Config<TcpTransport> {
    let mut ws = libp2p_websocket::Config::new(TcpTransport::new(tcp));
    ws.set_max_data_size(MAX_MESSAGE);
    if let Some(tls) = tls {
        ws.set_tls_config(tls.0.clone());
    }
    ws
}

/// A certificate chain and its key, for serving `/wss`.
#[derive(Clone)]
pub struct Tls(tls::Config);

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Tls")
    }
}

/// Why a certificate or key cannot serve `/wss`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The certificate file cannot be read, or holds no PEM certificate.
    #[error("{}: {reason}", path.display())]
    Certificate {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The key file cannot be read, or holds no PEM private key (PKCS#8,
    /// PKCS#1 or SEC1).
    #[error("{}: {reason}", path.display())]
    Key {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The key does not fit the certificate, or rustls refuses them.
    #[error("the certificate and key cannot serve TLS: {0}")]
    Refused(String),
}

/// What a PEM reading error means for a file expected to hold `what`.
fn unreadable(error: pem::Error, what: &str) -> String {
    match error {
        pem::Error::Io(e) => format!("cannot read it: {e}"),
        pem::Error::NoItemsFound => format!("no PEM {what} in it"),
        other => format!("not a PEM {what}: {other}"),
    }
}

impl Tls {
    /// A certificate chain (leaf first) and its private key, both PEM files
    /// as certbot and openssl write them.
    pub fn from_pem_files(certificate: &Path, key: &Path) -> Result<Tls, TlsError> {
        let bad_certificate = |error: pem::Error| TlsError::Certificate {
            path: certificate.into(),
            reason: unreadable(error, "certificate"),
        };
        let chain = CertificateDer::pem_file_iter(certificate)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(bad_certificate)?;
        if chain.is_empty() {
            return Err(bad_certificate(pem::Error::NoItemsFound));
        }
        let key_der = PrivateKeyDer::from_pem_file(key).map_err(|error| TlsError::Key {
            path: key.into(),
            reason: unreadable(error, "private key"),
        })?;
        // `tls::PrivateKey::new` panics on DER whose kind it cannot tell;
        // ask first, the way it does.
        let der = key_der.secret_der().to_vec();
        PrivateKeyDer::try_from(der.as_slice()).map_err(|why| TlsError::Key {
            path: key.into(),
            reason: format!("not a private key: {why}"),
        })?;
        let key = tls::PrivateKey::new(der);
        let chain = chain.into_iter().map(|der| tls::Certificate::new(der.to_vec()));
        let config = tls::Config::new(key, chain).map_err(|e| TlsError::Refused(e.to_string()))?;
        Ok(Tls(config))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed() -> (String, String) {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        (certified.cert.pem(), certified.key_pair.serialize_pem())
    }

    #[test]
    fn a_certificate_and_its_key_serve_tls() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = self_signed();
        let (cert_file, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&cert_file, cert).unwrap();
        std::fs::write(&key_file, key).unwrap();
        Tls::from_pem_files(&cert_file, &key_file).unwrap();
    }

    #[test]
    fn files_without_a_certificate_or_a_key_are_refused_with_their_path() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, _) = self_signed();
        let (cert_file, empty) = (dir.path().join("cert.pem"), dir.path().join("empty.pem"));
        std::fs::write(&cert_file, &cert).unwrap();
        std::fs::write(&empty, "").unwrap();

        let error = Tls::from_pem_files(&empty, &empty).unwrap_err();
        assert!(matches!(error, TlsError::Certificate { .. }), "{error}");
        assert!(error.to_string().starts_with(&empty.display().to_string()), "{error}");

        // The certificate given as its own key.
        let error = Tls::from_pem_files(&cert_file, &cert_file).unwrap_err();
        assert!(matches!(error, TlsError::Key { .. }), "{error}");

        let missing = dir.path().join("missing.pem");
        let error = Tls::from_pem_files(&cert_file, &missing).unwrap_err();
        assert!(error.to_string().contains("missing.pem"), "{error}");
    }

    #[test]
    fn a_key_that_does_not_fit_the_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, _) = self_signed();
        let (_, other_key) = self_signed();
        let (cert_file, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&cert_file, cert).unwrap();
        std::fs::write(&key_file, other_key).unwrap();
        let error = Tls::from_pem_files(&cert_file, &key_file).unwrap_err();
        assert!(matches!(error, TlsError::Refused(_)), "{error}");
    }
}
