//! TLS client settings: the system's roots plus those of `--ca-file`, or
//! none at all when the operator asks for it (`--tls-insecure` for the
//! server, `:tls:insecure` for a service on the customer's own network
//! with a self-signed certificate).

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};

/// Certificates trusted besides the system's roots (`--ca-file`: a PEM
/// file of one or more CA certificates).
#[derive(Debug, Clone, Default)]
pub struct ExtraRoots(Arc<Vec<CertificateDer<'static>>>);

impl ExtraRoots {
    /// Reads the certificates of a PEM file; at least one.
    pub fn load(path: &std::path::Path) -> Result<Self, String> {
        use rustls::pki_types::pem::PemObject;
        let bad = |e: &dyn std::fmt::Display| format!("--ca-file {}: {e}", path.display());
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| bad(&e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(&e))?;
        if certs.is_empty() {
            return Err(bad(&"no certificate in it (PEM, BEGIN CERTIFICATE)"));
        }
        let mut roots = rustls::RootCertStore::empty();
        for cert in &certs {
            roots.add(cert.clone()).map_err(|e| bad(&e))?;
        }
        Ok(ExtraRoots(Arc::new(certs)))
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A TLS handshake's failure in words: what is wrong with the peer's
/// certificate when that is the reason, else the error as it is.
pub(crate) fn describe_handshake_error(e: &std::io::Error) -> String {
    use rustls::CertificateError as C;
    let Some(rustls::Error::InvalidCertificate(cert)) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return e.to_string();
    };
    let why = match cert {
        C::UnknownIssuer => "its certificate is not signed by a CA trusted here".to_owned(),
        C::NotValidForName | C::NotValidForNameContext { .. } => {
            "its certificate is not for the name dialed".to_owned()
        }
        C::Expired | C::ExpiredContext { .. } => "its certificate has expired".to_owned(),
        C::NotValidYet | C::NotValidYetContext { .. } => {
            "its certificate is not valid yet (check the clocks)".to_owned()
        }
        C::Revoked => "its certificate is revoked".to_owned(),
        C::Other(other) if other.to_string().contains("CaUsedAsEndEntity") => {
            "it presents a CA certificate as its own (a self-signed certificate)".to_owned()
        }
        other => format!("its certificate is refused ({other:?})"),
    };
    format!("invalid peer certificate: {why}")
}

/// What to add to a certificate error so that a person knows what to do.
pub(crate) fn certificate_hint(error: &str, insecure_option: &str) -> Option<String> {
    let about_certificate = error.contains("certificate") || error.contains("UnknownIssuer");
    about_certificate.then(|| {
        format!(
            "trust its issuer with --ca-file (a PEM file of the CA), or accept any certificate with {insecure_option}"
        )
    })
}

/// A client config that checks certificates against the system's roots
/// and `extra`, or accepts any certificate when `insecure`.
pub(crate) fn client_config(insecure: bool, extra: &ExtraRoots) -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap_or_else(|_| unreachable!("ring supports the default versions"));
    let config = if insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
            .with_no_client_auth()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        let found = rustls_native_certs::load_native_certs();
        for cert in found.certs {
            let _ = roots.add(cert);
        }
        for cert in extra.0.iter() {
            let _ = roots.add(cert.clone());
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    Arc::new(config)
}

/// Accepts any certificate, still checking that handshake signatures are
/// valid for the certificate presented.
#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
