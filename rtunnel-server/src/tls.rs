//! TLS served by the server itself (`--tls-cert`, `--tls-key`): rustls,
//! HTTP/1.1, the certificate chain and key read from PEM files at start and
//! again on [`TlsReloader::reload`] (SIGHUP for the binary), so a renewed
//! certificate (certbot, cert-manager) is taken without a restart.
//! Connections already open keep the certificate they started with.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The `Strict-Transport-Security` value sent over the server's own TLS:
/// browsers come back over HTTPS only, for a year.
pub(crate) const HSTS: &str = "max-age=31536000";

/// The certificate files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, leaf first (PEM).
    pub cert: PathBuf,
    /// The private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

impl TlsFiles {
    /// Reads and checks both files: a chain, a key, and that they belong
    /// together. The message names the file and what is wrong.
    pub fn load(&self) -> Result<Arc<rustls::ServerConfig>, String> {
        let cert_path = self.cert.display();
        let key_path = self.key.display();
        let chain = CertificateDer::pem_file_iter(&self.cert)
            .map_err(|e| format!("--tls-cert {cert_path}: {e}"))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("--tls-cert {cert_path}: {e}"))?;
        if chain.is_empty() {
            return Err(format!(
                "--tls-cert {cert_path}: no certificate in it (PEM, BEGIN CERTIFICATE)"
            ));
        }
        let key = PrivateKeyDer::from_pem_file(&self.key).map_err(|e| {
            format!(
                "--tls-key {key_path}: no private key read ({e}); PKCS#8, PKCS#1 or SEC1 in PEM"
            )
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| {
                format!("--tls-cert {cert_path} and --tls-key {key_path} do not go together: {e}")
            })?;
        // The accept loop speaks HTTP/1.1 (WebSocket upgrades need it).
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

/// The TLS settings connections are accepted with, replaced by
/// [`Self::reload`].
#[derive(Debug)]
pub struct TlsReloader {
    files: TlsFiles,
    current: RwLock<Arc<rustls::ServerConfig>>,
}

impl TlsReloader {
    /// Loads the files; fails as [`TlsFiles::load`] does.
    pub fn new(files: TlsFiles) -> Result<Self, String> {
        let current = RwLock::new(files.load()?);
        Ok(TlsReloader { files, current })
    }

    /// Reads the files again; new connections use them. On failure the
    /// certificate in use stays, and the error says why.
    pub fn reload(&self) -> Result<(), String> {
        let config = self.files.load()?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = config;
        Ok(())
    }

    /// The acceptor for the next connection.
    pub(crate) fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }

    /// The files.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }
}
