//! The TLS identity of a cluster's nodes, for the node mesh.
//!
//! Every node holds the cluster key; from it each derives the same Ed25519
//! key pair (the seed is HMAC-SHA256 of the key and a fixed label) and a
//! certificate for it. Nodes speak TLS 1.3 to each other, both sides
//! presenting that certificate, and each accepts only a peer whose
//! certificate carries that public key and who proves holding its private
//! key in the handshake: only holders of the cluster key get in, in either
//! direction, without a CA or certificate files. What the connection then
//! carries is encrypted; the node ids are bound on top of it by a hello
//! signed with the cluster key ([`crate::node`]).
//!
//! ```
//! use rtunnel_auth::mesh::MeshIdentity;
//!
//! let a = MeshIdentity::from_cluster_key(&[7; 32]).unwrap();
//! let b = MeshIdentity::from_cluster_key(&[7; 32]).unwrap();
//! assert_eq!(a.public_key(), b.public_key());
//! let other = MeshIdentity::from_cluster_key(&[8; 32]).unwrap();
//! assert_ne!(a.public_key(), other.public_key());
//! ```

use std::sync::Arc;

use hmac::{Hmac, Mac};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// The name nodes ask each other for (every node's certificate names it).
pub const SERVER_NAME: &str = "rtunnel-node";

const SEED_LABEL: &[u8] = b"rtunnel node mesh tls v1";

/// PKCS#8 v1 of an Ed25519 key, before its 32-byte seed (RFC 8410).
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// Why a mesh identity could not be made.
#[derive(Debug, thiserror::Error)]
#[error("cannot make the node mesh's TLS identity: {0}")]
pub struct MeshError(String);

/// The certificate and key every node of a cluster presents, and the
/// TLS settings that accept only them.
#[derive(Clone)]
pub struct MeshIdentity {
    cert: CertificateDer<'static>,
    key: Arc<Vec<u8>>,
    spki: Arc<Vec<u8>>,
    provider: Arc<CryptoProvider>,
}

impl std::fmt::Debug for MeshIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshIdentity").finish_non_exhaustive()
    }
}

impl MeshIdentity {
    /// The identity of every node holding `cluster_key`.
    pub fn from_cluster_key(cluster_key: &[u8]) -> Result<Self, MeshError> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(cluster_key)
            .map_err(|e| MeshError(e.to_string()))?;
        mac.update(SEED_LABEL);
        let seed = mac.finalize().into_bytes();
        let mut pkcs8 = ED25519_PKCS8_PREFIX.to_vec();
        pkcs8.extend_from_slice(&seed);
        let der = PrivatePkcs8KeyDer::from(pkcs8.clone());
        let key_pair = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&der, &rcgen::PKCS_ED25519)
            .map_err(|e| MeshError(e.to_string()))?;
        let mut params = rcgen::CertificateParams::new(vec![SERVER_NAME.to_owned()])
            .map_err(|e| MeshError(e.to_string()))?;
        params.serial_number = Some(rcgen::SerialNumber::from(1u64));
        let cert = params
            .self_signed(&key_pair)
            .map_err(|e| MeshError(e.to_string()))?
            .der()
            .clone();
        let spki = spki_of(&cert).ok_or_else(|| MeshError("unreadable certificate".into()))?;
        Ok(MeshIdentity {
            cert,
            key: Arc::new(pkcs8),
            spki: Arc::new(spki),
            provider: Arc::new(mesh_provider()),
        })
    }

    /// The public key every node presents (its SubjectPublicKeyInfo).
    pub fn public_key(&self) -> &[u8] {
        &self.spki
    }

    fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.as_ref().clone()))
    }

    fn pinned(&self) -> Arc<Pinned> {
        Arc::new(Pinned {
            spki: self.spki.clone(),
            provider: self.provider.clone(),
        })
    }

    /// TLS 1.3 for the node accepting a connection: it presents the
    /// identity and requires the peer to present it too. It picks the
    /// cipher suite by its own order (AES-128-GCM first), so a node of an
    /// older version dialing it gets AES-128-GCM too.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, MeshError> {
        let mut config = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| MeshError(e.to_string()))?
            .with_client_cert_verifier(self.pinned())
            .with_single_cert(vec![self.cert.clone()], self.private_key())
            .map_err(|e| MeshError(e.to_string()))?;
        config.ignore_client_order = true;
        Ok(Arc::new(config))
    }

    /// TLS 1.3 for the node dialing another: it accepts only a peer with
    /// the identity, and presents it.
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, MeshError> {
        let config = rustls::ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| MeshError(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(self.pinned())
            .with_client_auth_cert(vec![self.cert.clone()], self.private_key())
            .map_err(|e| MeshError(e.to_string()))?;
        Ok(Arc::new(config))
    }
}

/// ring's TLS 1.3 suites in the order the mesh prefers them: AES-128-GCM
/// first where the CPU has AES instructions (ring's default puts
/// AES-256-GCM first), ChaCha20-Poly1305 first where it has not.
///
/// Every byte between two nodes is sealed once and opened once. With
/// AES instructions the cipher alone runs a fifth faster than AES-256-GCM
/// (`openssl speed` on the benchmark machine: 4.3 against 3.5 GB/s);
/// `benches/mesh_tls` put a whole mesh frame at about 5% less, within that
/// machine's noise. AES-128-GCM is the suite TLS 1.3 makes mandatory for
/// every implementation. Without AES instructions (a Raspberry Pi 4, for
/// one) AES runs in software, several times slower than ChaCha20. The node
/// dialed picks by its own order, so its CPU decides. Every suite stays
/// offered, so nodes of every version and CPU agree.
fn mesh_provider() -> CryptoProvider {
    CryptoProvider {
        cipher_suites: mesh_suites(cpu_has_aes()),
        ..rustls::crypto::ring::default_provider()
    }
}

fn mesh_suites(aes: bool) -> Vec<rustls::SupportedCipherSuite> {
    use rustls::crypto::ring::cipher_suite::{
        TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256,
    };
    if aes {
        vec![
            TLS13_AES_128_GCM_SHA256,
            TLS13_AES_256_GCM_SHA384,
            TLS13_CHACHA20_POLY1305_SHA256,
        ]
    } else {
        vec![
            TLS13_CHACHA20_POLY1305_SHA256,
            TLS13_AES_128_GCM_SHA256,
            TLS13_AES_256_GCM_SHA384,
        ]
    }
}

/// Whether this CPU does AES-GCM in hardware (AES rounds and carry-less
/// multiplication); unknown architectures count as not.
fn cpu_has_aes() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes")
            && std::arch::is_aarch64_feature_detected!("pmull")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

/// The SubjectPublicKeyInfo of a certificate, as parsed for verification.
fn spki_of(cert: &CertificateDer<'_>) -> Option<Vec<u8>> {
    let parsed = webpki::EndEntityCert::try_from(cert).ok()?;
    Some(parsed.subject_public_key_info().as_ref().to_vec())
}

/// Accepts exactly the certificates carrying the pinned public key, and
/// handshake signatures made with it. Names and dates do not matter: the
/// key is the identity.
#[derive(Debug)]
struct Pinned {
    spki: Arc<Vec<u8>>,
    provider: Arc<CryptoProvider>,
}

impl Pinned {
    fn check(&self, cert: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        let presented = spki_of(cert).ok_or(rustls::Error::InvalidCertificate(
            rustls::CertificateError::BadEncoding,
        ))?;
        if bool::from(presented.as_slice().ct_eq(self.spki.as_slice())) {
            Ok(())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.check(cert)?;
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General(
            "the node mesh speaks TLS 1.3 only".into(),
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes()
    }
}

impl ClientCertVerifier for Pinned {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General(
            "the node mesh speaks TLS 1.3 only".into(),
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Runs a TLS handshake in memory: the cipher suite both sides
    /// agreed on, or the first error either side hits.
    fn handshake(
        client: Arc<rustls::ClientConfig>,
        server: Arc<rustls::ServerConfig>,
    ) -> Result<rustls::CipherSuite, rustls::Error> {
        let name = ServerName::try_from(SERVER_NAME).unwrap();
        let mut c = rustls::ClientConnection::new(client, name)?;
        let mut s = rustls::ServerConnection::new(server)?;
        for _ in 0..10 {
            let mut wire = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut wire).unwrap();
            }
            let mut rd = wire.as_slice();
            while !rd.is_empty() {
                s.read_tls(&mut rd).unwrap();
            }
            s.process_new_packets()?;
            let mut wire = Vec::new();
            while s.wants_write() {
                s.write_tls(&mut wire).unwrap();
            }
            let mut rd = wire.as_slice();
            while !rd.is_empty() {
                c.read_tls(&mut rd).unwrap();
            }
            c.process_new_packets()?;
            if !c.is_handshaking() && !s.is_handshaking() {
                let suite = c.negotiated_cipher_suite().unwrap().suite();
                assert_eq!(s.negotiated_cipher_suite().unwrap().suite(), suite);
                return Ok(suite);
            }
        }
        Err(rustls::Error::General("handshake did not finish".into()))
    }

    #[test]
    fn nodes_with_the_cluster_key_reach_each_other_and_no_one_else_does() {
        let a = MeshIdentity::from_cluster_key(&[7; 32]).unwrap();
        let b = MeshIdentity::from_cluster_key(&[7; 32]).unwrap();
        let stranger = MeshIdentity::from_cluster_key(&[9; 32]).unwrap();
        handshake(a.client_config().unwrap(), b.server_config().unwrap()).unwrap();
        // A node with another key is refused, dialing or dialed.
        assert!(
            handshake(
                stranger.client_config().unwrap(),
                b.server_config().unwrap()
            )
            .is_err()
        );
        assert!(
            handshake(
                a.client_config().unwrap(),
                stranger.server_config().unwrap()
            )
            .is_err()
        );
        // So is a client presenting no certificate at all.
        let anonymous = rustls::ClientConfig::builder_with_provider(a.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(a.pinned())
            .with_no_client_auth();
        assert!(handshake(Arc::new(anonymous), b.server_config().unwrap()).is_err());
    }

    #[test]
    fn nodes_seal_the_mesh_with_aes_128_gcm_even_for_a_node_preferring_aes_256() {
        let mut a = MeshIdentity::from_cluster_key(&[7; 32]).unwrap();
        let mut b = MeshIdentity::from_cluster_key(&[7; 32]).unwrap();
        // Both on CPUs with AES instructions, whatever this one has.
        for node in [&mut a, &mut b] {
            node.provider = Arc::new(CryptoProvider {
                cipher_suites: mesh_suites(true),
                ..rustls::crypto::ring::default_provider()
            });
        }
        let suite = handshake(a.client_config().unwrap(), b.server_config().unwrap()).unwrap();
        assert_eq!(suite, rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
        // A node of an older version offers ring's default order
        // (AES-256-GCM first); the node it dials picks by its own.
        let mut older = a.clone();
        older.provider = Arc::new(rustls::crypto::ring::default_provider());
        assert_eq!(
            older.provider.cipher_suites[0].suite(),
            rustls::CipherSuite::TLS13_AES_256_GCM_SHA384
        );
        let suite = handshake(older.client_config().unwrap(), b.server_config().unwrap()).unwrap();
        assert_eq!(suite, rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
        // An older node dialed follows the newer one's order.
        let older_server = rustls::ServerConfig::builder_with_provider(older.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_client_cert_verifier(older.pinned())
            .with_single_cert(vec![older.cert.clone()], older.private_key())
            .unwrap();
        let suite = handshake(a.client_config().unwrap(), Arc::new(older_server)).unwrap();
        assert_eq!(suite, rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    }

    #[test]
    fn a_node_without_aes_instructions_has_the_mesh_sealed_with_chacha20() {
        let with_aes = |aes| {
            let mut node = MeshIdentity::from_cluster_key(&[7; 32]).unwrap();
            node.provider = Arc::new(CryptoProvider {
                cipher_suites: mesh_suites(aes),
                ..rustls::crypto::ring::default_provider()
            });
            node
        };
        let (fast, slow) = (with_aes(true), with_aes(false));
        // The node dialed decides, by its own CPU.
        let suite = handshake(fast.client_config().unwrap(), slow.server_config().unwrap());
        assert_eq!(
            suite.unwrap(),
            rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256
        );
        let suite = handshake(slow.client_config().unwrap(), fast.server_config().unwrap());
        assert_eq!(
            suite.unwrap(),
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
        );
        // Whatever this machine has, the identity's own settings agree
        // with themselves on one of the two.
        let own = MeshIdentity::from_cluster_key(&[7; 32]).unwrap();
        let suite = handshake(own.client_config().unwrap(), own.server_config().unwrap());
        let expected = if cpu_has_aes() {
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
        } else {
            rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256
        };
        assert_eq!(suite.unwrap(), expected);
    }

    #[test]
    fn a_certificate_naming_the_key_elsewhere_is_not_the_key() {
        // A stranger's certificate that carries the cluster's public key
        // bytes in a name still has the stranger's key: refused.
        let real = MeshIdentity::from_cluster_key(&[7; 32]).unwrap();
        let stranger = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let hex: String = real
            .public_key()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let params =
            rcgen::CertificateParams::new(vec![SERVER_NAME.to_owned(), format!("{hex}.x")])
                .unwrap();
        let cert = params.self_signed(&stranger).unwrap();
        assert!(real.pinned().check(cert.der()).is_err());
        assert!(real.pinned().check(&real.cert).is_ok());
    }
}
