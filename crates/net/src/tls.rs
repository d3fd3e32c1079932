//! Key-bound TLS: a node's certificate is a self-signed X.509 certificate
//! made with the node's own Ed25519 key — the key of its peerline identity —
//! and peers accept exactly that, with no certificate authority anywhere.
//!
//! What a handshake proves: the peer holds the private half of the Ed25519
//! key in its certificate (TLS 1.3 `CertificateVerify`, checked here with
//! that key). Names, dates and issuers in the certificate carry no
//! authority and are not checked: the key is the identity, and the core's
//! own device certificates carry the expiry that matters. Both sides present
//! a certificate (mutual authentication); a dialer that knows which key it
//! expects (a pinned bootstrap contact) refuses any other.

use ed25519_dalek::{Signature as DalekSignature, VerifyingKey};
use peerline_core::Keypair;
use peerline_proto::PublicKey;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, SignatureScheme,
};
use std::sync::Arc;
use x509_parser::oid_registry::OID_SIG_ED25519;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The ALPN protocol every peerline connection negotiates.
pub const ALPN: &[u8] = b"peerline/1";

/// The name a dialer puts in its ClientHello. The verifiers ignore names
/// (the key is the identity), but TLS wants one.
pub const SERVER_NAME: &str = "peerline";

/// Why a node's TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("the node key is a modelled stand-in, not an Ed25519 key: the real driver needs full crypto")]
    ModelledKey,
    #[error("could not make the node certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("could not build the TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Why a peer's certificate was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CertificateRejected {
    #[error("the peer must present exactly one self-signed certificate, not a chain")]
    NotOneCertificate,
    #[error("the certificate is not valid DER-encoded X.509")]
    Malformed,
    #[error("the certificate's key is not an Ed25519 key")]
    NotEd25519,
    #[error("the certificate is not signed by its own Ed25519 key")]
    BadSelfSignature,
    #[error("the peer's key is {found:?}, not the expected {expected:?}")]
    UnexpectedKey {
        expected: PublicKey,
        found: PublicKey,
    },
}

/// A node's certificate and the key that signs its handshakes.
#[derive(Debug)]
pub struct NodeCertificate {
    certificate: CertificateDer<'static>,
    private_key: PrivatePkcs8KeyDer<'static>,
    public: PublicKey,
}

impl NodeCertificate {
    /// The self-signed certificate of `keypair` (which must be a real
    /// Ed25519 key, not the simulator's modelled stand-in).
    pub fn new(keypair: &Keypair) -> Result<NodeCertificate, TlsError> {
        let seed = keypair.secret_seed().ok_or(TlsError::ModelledKey)?;
        let private_key = PrivatePkcs8KeyDer::from(ed25519_pkcs8_v1(&seed));
        let signing =
            rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&private_key, &rcgen::PKCS_ED25519)?;
        let params = rcgen::CertificateParams::new(vec![SERVER_NAME.to_string()])?;
        let certificate = params.self_signed(&signing)?;
        Ok(NodeCertificate {
            certificate: certificate.der().clone(),
            private_key,
            public: keypair.public(),
        })
    }

    /// The peerline key the certificate binds.
    pub fn public_key(&self) -> PublicKey {
        self.public
    }

    pub fn der(&self) -> &CertificateDer<'static> {
        &self.certificate
    }

    /// TLS for accepting connections: any peer with a valid key-bound
    /// certificate may connect; the core decides what it may do.
    pub fn server_config(&self) -> Result<rustls::ServerConfig, TlsError> {
        let verifier = Arc::new(KeyBoundVerifier { expected: None });
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![self.certificate.clone()], self.private_key())?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(config)
    }

    /// TLS for dialing; `expected` pins the peer's key when the dialer
    /// knows it, and any other key then fails the handshake.
    pub fn client_config(
        &self,
        expected: Option<PublicKey>,
    ) -> Result<rustls::ClientConfig, TlsError> {
        let verifier = Arc::new(KeyBoundVerifier { expected });
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(vec![self.certificate.clone()], self.private_key())?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(config)
    }

    fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.private_key.clone_key())
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// PKCS#8 v1 (RFC 8410) for an Ed25519 seed: a fixed 16-byte header, then
/// the 32 seed bytes. ring (under rcgen and rustls) reads it as is.
fn ed25519_pkcs8_v1(seed: &[u8; 32]) -> Vec<u8> {
    const HEADER: [u8; 16] = [
        0x30, 0x2e, // SEQUENCE, 46 bytes
        0x02, 0x01, 0x00, // INTEGER 0 (version 1)
        0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, // AlgorithmIdentifier: id-Ed25519
        0x04, 0x22, 0x04, 0x20, // OCTET STRING { OCTET STRING, 32 bytes }
    ];
    let mut der = Vec::with_capacity(HEADER.len() + seed.len());
    der.extend_from_slice(&HEADER);
    der.extend_from_slice(seed);
    der
}

/// The Ed25519 key a certificate binds, after checking it is one
/// well-formed, self-signed Ed25519 certificate.
pub fn certificate_key(der: &[u8]) -> Result<PublicKey, CertificateRejected> {
    let (rest, certificate) =
        X509Certificate::from_der(der).map_err(|_| CertificateRejected::Malformed)?;
    if !rest.is_empty() {
        return Err(CertificateRejected::Malformed);
    }
    let spki = certificate.public_key();
    if spki.algorithm.algorithm != OID_SIG_ED25519
        || certificate.signature_algorithm.algorithm != OID_SIG_ED25519
    {
        return Err(CertificateRejected::NotEd25519);
    }
    let key_bytes: [u8; 32] = spki
        .subject_public_key
        .data
        .as_ref()
        .try_into()
        .map_err(|_| CertificateRejected::NotEd25519)?;
    let signature: [u8; 64] = certificate
        .signature_value
        .data
        .as_ref()
        .try_into()
        .map_err(|_| CertificateRejected::BadSelfSignature)?;
    let key = VerifyingKey::from_bytes(&key_bytes).map_err(|_| CertificateRejected::NotEd25519)?;
    key.verify_strict(
        certificate.tbs_certificate.as_ref(),
        &DalekSignature::from_bytes(&signature),
    )
    .map_err(|_| CertificateRejected::BadSelfSignature)?;
    Ok(PublicKey(key_bytes))
}

/// The key of the peer at the other end of an established connection.
pub fn peer_key(connection: &quinn::Connection) -> Option<PublicKey> {
    let identity = connection.peer_identity()?;
    let chain = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    match chain.as_slice() {
        [only] => certificate_key(only).ok(),
        _ => None,
    }
}

/// Accepts exactly one self-signed Ed25519 certificate (optionally for one
/// expected key) and checks handshake signatures with its key. Serves as
/// both the client's and the server's verifier.
#[derive(Debug)]
struct KeyBoundVerifier {
    expected: Option<PublicKey>,
}

impl KeyBoundVerifier {
    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
    ) -> Result<(), rustls::Error> {
        if !intermediates.is_empty() {
            return Err(rejected(CertificateRejected::NotOneCertificate));
        }
        let found = certificate_key(end_entity).map_err(rejected)?;
        match self.expected {
            Some(expected) if expected != found => {
                Err(rejected(CertificateRejected::UnexpectedKey {
                    expected,
                    found,
                }))
            }
            _ => Ok(()),
        }
    }

    fn check_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signed: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        if signed.scheme != SignatureScheme::ED25519 {
            return Err(rustls::Error::PeerMisbehaved(
                rustls::PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme,
            ));
        }
        let key = certificate_key(certificate).map_err(rejected)?;
        let key = VerifyingKey::from_bytes(&key.0)
            .map_err(|_| rejected(CertificateRejected::NotEd25519))?;
        let signature: [u8; 64] = signed
            .signature()
            .try_into()
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadSignature))?;
        key.verify_strict(message, &DalekSignature::from_bytes(&signature))
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadSignature))?;
        Ok(HandshakeSignatureValid::assertion())
    }
}

fn rejected(reason: CertificateRejected) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(reason))))
}

fn tls12_refused() -> rustls::Error {
    rustls::Error::General("peerline speaks TLS 1.3 only".into())
}

impl ServerCertVerifier for KeyBoundVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity, intermediates)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _certificate: &CertificateDer<'_>,
        _signed: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(tls12_refused())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signed: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.check_signature(message, certificate, signed)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

impl ClientCertVerifier for KeyBoundVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity, intermediates)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _certificate: &CertificateDer<'_>,
        _signed: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(tls12_refused())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signed: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.check_signature(message, certificate, signed)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use peerline_core::CryptoMode;

    fn certificate(seed: u8) -> NodeCertificate {
        NodeCertificate::new(&Keypair::from_seed(CryptoMode::Full, [seed; 32])).unwrap()
    }

    #[test]
    fn the_certificate_binds_the_node_key() {
        let keypair = Keypair::from_seed(CryptoMode::Full, [1; 32]);
        let certificate = NodeCertificate::new(&keypair).unwrap();
        assert_eq!(certificate.public_key(), keypair.public());
        assert_eq!(certificate_key(certificate.der()), Ok(keypair.public()));
    }

    #[test]
    fn a_modelled_key_cannot_make_a_certificate() {
        let keypair = Keypair::from_seed(CryptoMode::Modelled, [1; 32]);
        assert!(matches!(
            NodeCertificate::new(&keypair),
            Err(TlsError::ModelledKey)
        ));
    }

    proptest::proptest! {
        /// The certificate decoder is total: any bytes give a key or a
        /// refusal, never a panic.
        #[test]
        fn any_bytes_give_a_key_or_a_refusal(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let _ = certificate_key(&bytes);
        }

        /// A valid certificate with any one byte changed, cut short or
        /// extended is refused, or still binds the same key (a change in a
        /// part the signature does not cover cannot move the key).
        #[test]
        fn a_mutated_certificate_never_binds_another_key(
            at in proptest::num::usize::ANY,
            value in proptest::num::u8::ANY,
            cut in proptest::num::usize::ANY,
        ) {
            let original = certificate(7);
            let der = original.der().as_ref();
            let mut mutated = der.to_vec();
            let at = at % mutated.len();
            mutated[at] = value;
            if let Ok(key) = certificate_key(&mutated) {
                proptest::prop_assert_eq!(key, original.public_key());
            }
            let truncated = &der[..cut % der.len()];
            proptest::prop_assert!(certificate_key(truncated).is_err());
            let mut extended = der.to_vec();
            extended.push(value);
            proptest::prop_assert_eq!(certificate_key(&extended), Err(CertificateRejected::Malformed));
        }
    }

    #[test]
    fn garbage_and_truncated_certificates_are_malformed() {
        assert_eq!(certificate_key(&[]), Err(CertificateRejected::Malformed));
        assert_eq!(
            certificate_key(&[0x30, 0x82, 0xff, 0xff, 0x00]),
            Err(CertificateRejected::Malformed)
        );
        let der = certificate(2).der().to_vec();
        for len in [1, der.len() / 2, der.len() - 1] {
            assert_eq!(
                certificate_key(&der[..len]),
                Err(CertificateRejected::Malformed),
                "truncated to {len} bytes"
            );
        }
        let mut trailing = der.clone();
        trailing.push(0);
        assert_eq!(
            certificate_key(&trailing),
            Err(CertificateRejected::Malformed)
        );
    }

    #[test]
    fn a_certificate_not_signed_by_its_own_key_is_refused() {
        let der = certificate(3).der().to_vec();
        // The signature is the last 64 bytes of the DER: flip one bit.
        let mut forged = der.clone();
        let last = forged.len() - 1;
        forged[last] ^= 1;
        assert_eq!(
            certificate_key(&forged),
            Err(CertificateRejected::BadSelfSignature)
        );
        // Swap in another node's key (same length, same position): the
        // signature no longer matches the key.
        let other = certificate(4);
        let (mine, theirs) = (
            Keypair::from_seed(CryptoMode::Full, [3; 32]).public(),
            other.public_key(),
        );
        let at = der
            .windows(32)
            .position(|window| window == mine.0)
            .expect("the key is in the certificate");
        let mut swapped = der.clone();
        swapped[at..at + 32].copy_from_slice(&theirs.0);
        assert_eq!(
            certificate_key(&swapped),
            Err(CertificateRejected::BadSelfSignature)
        );
    }

    #[test]
    fn an_ecdsa_certificate_is_not_ed25519() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let ecdsa = rcgen::CertificateParams::new(vec![SERVER_NAME.into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        assert_eq!(
            certificate_key(ecdsa.der()),
            Err(CertificateRejected::NotEd25519)
        );
    }

    #[test]
    fn the_verifier_refuses_chains_and_other_keys() {
        let mine = certificate(5);
        let other = certificate(6);
        let unpinned = KeyBoundVerifier { expected: None };
        assert!(unpinned.check(mine.der(), &[]).is_ok());
        assert!(unpinned.check(mine.der(), &[other.der().clone()]).is_err());
        let pinned = KeyBoundVerifier {
            expected: Some(other.public_key()),
        };
        assert!(pinned.check(other.der(), &[]).is_ok());
        assert!(pinned.check(mine.der(), &[]).is_err());
    }
}
