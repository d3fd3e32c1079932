//! QUIC endpoint set-up: one quinn endpoint per node, server and client at
//! once, on the node's one UDP socket.

use crate::demux::{DemuxHandle, DemuxLimits, DemuxSocket};
use crate::tls::{NodeCertificate, TlsError};
use peerline_proto::PublicKey;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use std::sync::Arc;
use std::time::Duration;

/// Bounds on what one QUIC connection may hold open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuicLimits {
    /// A connection with no traffic for this long is closed (and a dial
    /// that gets no answer fails after it). The only timer the driver sets
    /// on its own; the core's keepalives decide whether a peer is alive.
    pub idle_timeout: Duration,
    /// Unidirectional streams (frames in flight) a peer may have open
    /// towards us at once; further frames wait for credit (backpressure).
    pub uni_streams_max: u32,
}

impl Default for QuicLimits {
    fn default() -> Self {
        QuicLimits {
            // Longer than the core's 25 s keepalive period, so an attached
            // client's connection to its supernode stays up between pings.
            idle_timeout: Duration::from_secs(30),
            uni_streams_max: 64,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("QUIC refused the TLS configuration: {0}")]
    Quic(String),
    #[error("could not use the UDP socket: {0}")]
    Socket(#[from] std::io::Error),
}

fn transport(limits: QuicLimits) -> Result<Arc<quinn::TransportConfig>, EndpointError> {
    let idle = quinn::IdleTimeout::try_from(limits.idle_timeout)
        .map_err(|error| EndpointError::Quic(error.to_string()))?;
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_idle_timeout(Some(idle))
        .max_concurrent_uni_streams(limits.uni_streams_max.into())
        // Core frames travel on unidirectional streams only; media datagrams come later.
        .max_concurrent_bidi_streams(0u32.into())
        .datagram_receive_buffer_size(None);
    Ok(Arc::new(transport))
}

/// The QUIC client configuration for one dial (`expected` pins the key).
pub fn client_config(
    certificate: &NodeCertificate,
    expected: Option<PublicKey>,
    limits: QuicLimits,
) -> Result<quinn::ClientConfig, EndpointError> {
    let tls = certificate.client_config(expected)?;
    let quic = QuicClientConfig::try_from(tls).map_err(|e| EndpointError::Quic(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(transport(limits)?);
    Ok(config)
}

fn server_config(
    certificate: &NodeCertificate,
    limits: QuicLimits,
) -> Result<quinn::ServerConfig, EndpointError> {
    let tls = certificate.server_config()?;
    let quic = QuicServerConfig::try_from(tls).map_err(|e| EndpointError::Quic(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    config.transport_config(transport(limits)?);
    // Connections are keyed by the peer's address: a peer that moves is a
    // new peer (it dials again), not a migrated connection.
    config.migration(false);
    Ok(config)
}

/// A server-and-client endpoint on `socket` (which must be bound already),
/// behind the demultiplexer with default limits.
/// Must be called inside a tokio runtime.
pub fn endpoint(
    socket: std::net::UdpSocket,
    certificate: &NodeCertificate,
    limits: QuicLimits,
) -> Result<quinn::Endpoint, EndpointError> {
    let (endpoint, _demux) = demux_endpoint(socket, certificate, limits, DemuxLimits::default())?;
    Ok(endpoint)
}

/// [`endpoint`] with its demultiplexer's limits given, and the handle to
/// the demultiplexer (counters, STUN Binding transactions, relay tables).
pub fn demux_endpoint(
    socket: std::net::UdpSocket,
    certificate: &NodeCertificate,
    limits: QuicLimits,
    demux_limits: DemuxLimits,
) -> Result<(quinn::Endpoint, DemuxHandle), EndpointError> {
    let runtime = runtime()?;
    let inner = runtime.wrap_udp_socket(socket)?;
    let (socket, handle) = DemuxSocket::new(inner, demux_limits);
    let endpoint = endpoint_on(Arc::new(socket), certificate, limits)?;
    Ok((endpoint, handle))
}

fn runtime() -> Result<Arc<dyn quinn::Runtime>, EndpointError> {
    quinn::default_runtime()
        .ok_or_else(|| EndpointError::Quic("no async runtime is running".into()))
}

/// The endpoint on any socket quinn can drive (tests wrap the
/// demultiplexer to watch what the endpoint sends).
pub fn endpoint_on(
    socket: Arc<dyn quinn::AsyncUdpSocket>,
    certificate: &NodeCertificate,
    limits: QuicLimits,
) -> Result<quinn::Endpoint, EndpointError> {
    let mut endpoint_config = quinn::EndpointConfig::default();
    // RFC 9443 demultiplexing (STUN, QUIC and relay frames on one port)
    // needs QUIC's fixed bit to stay set: we neither grease it nor invite
    // peers to (quinn greases towards a peer only if that peer asked).
    endpoint_config.grease_quic_bit(false);
    let mut endpoint = quinn::Endpoint::new_with_abstract_socket(
        endpoint_config,
        Some(server_config(certificate, limits)?),
        socket,
        runtime()?,
    )?;
    endpoint.set_default_client_config(client_config(certificate, None, limits)?);
    Ok(endpoint)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::{peer_key, ALPN, SERVER_NAME};
    use peerline_core::{CryptoMode, Keypair};
    use std::net::{Ipv4Addr, SocketAddr, UdpSocket};

    fn loopback_socket() -> UdpSocket {
        UdpSocket::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).unwrap()
    }

    fn node_certificate(seed: u8) -> NodeCertificate {
        NodeCertificate::new(&Keypair::from_seed(CryptoMode::Full, [seed; 32])).unwrap()
    }

    fn limits() -> QuicLimits {
        QuicLimits {
            idle_timeout: Duration::from_secs(5),
            ..QuicLimits::default()
        }
    }

    /// Runs a server that accepts one connection and reports the key it saw.
    fn serve_one(
        server: quinn::Endpoint,
    ) -> tokio::task::JoinHandle<Result<PublicKey, quinn::ConnectionError>> {
        tokio::spawn(async move {
            let incoming = server.accept().await.expect("endpoint open");
            let connection = incoming.await?;
            let key = peer_key(&connection).expect("a verified peer has a key");
            // Hold the connection until the client is done with it.
            let _ = connection.closed().await;
            Ok(key)
        })
    }

    async fn dial(
        client: &quinn::Endpoint,
        certificate: &NodeCertificate,
        to: SocketAddr,
        expected: Option<PublicKey>,
    ) -> Result<quinn::Connection, quinn::ConnectionError> {
        let config = client_config(certificate, expected, limits()).unwrap();
        let connecting = client.connect_with(config, to, SERVER_NAME).unwrap();
        tokio::time::timeout(Duration::from_secs(5), connecting)
            .await
            .expect("the handshake finishes or fails well within 5 s")
    }

    #[tokio::test]
    async fn the_right_key_connects_and_both_sides_learn_the_peer_key() {
        let server_certificate = node_certificate(1);
        let client_certificate = node_certificate(2);
        let server = endpoint(loopback_socket(), &server_certificate, limits()).unwrap();
        let client = endpoint(loopback_socket(), &client_certificate, limits()).unwrap();
        let accepted = serve_one(server.clone());
        let to = server.local_addr().unwrap();
        let connection = dial(
            &client,
            &client_certificate,
            to,
            Some(server_certificate.public_key()),
        )
        .await
        .expect("the pinned key matches");
        assert_eq!(peer_key(&connection), Some(server_certificate.public_key()));
        let alpn = connection
            .handshake_data()
            .and_then(|data| data.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
            .and_then(|data| data.protocol);
        assert_eq!(alpn.as_deref(), Some(ALPN));
        connection.close(0u32.into(), b"done");
        let seen_by_server = accepted.await.unwrap().unwrap();
        assert_eq!(seen_by_server, client_certificate.public_key());
    }

    #[tokio::test]
    async fn an_unpinned_dial_accepts_any_key_bound_certificate() {
        let server_certificate = node_certificate(3);
        let client_certificate = node_certificate(4);
        let server = endpoint(loopback_socket(), &server_certificate, limits()).unwrap();
        let client = endpoint(loopback_socket(), &client_certificate, limits()).unwrap();
        let _accepted = serve_one(server.clone());
        let connection = dial(
            &client,
            &client_certificate,
            server.local_addr().unwrap(),
            None,
        )
        .await
        .expect("no pin, valid certificate");
        assert_eq!(peer_key(&connection), Some(server_certificate.public_key()));
    }

    #[tokio::test]
    async fn a_different_key_than_the_pinned_one_fails_the_handshake() {
        let server_certificate = node_certificate(5);
        let client_certificate = node_certificate(6);
        let expected = node_certificate(7).public_key();
        let server = endpoint(loopback_socket(), &server_certificate, limits()).unwrap();
        let client = endpoint(loopback_socket(), &client_certificate, limits()).unwrap();
        let accepted = serve_one(server.clone());
        let error = dial(
            &client,
            &client_certificate,
            server.local_addr().unwrap(),
            Some(expected),
        )
        .await
        .expect_err("the server's key is not the pinned one");
        let text = error.to_string();
        assert!(text.contains("UnexpectedKey"), "unexpected error: {text}");
        // The server never gets a connection it could use.
        let server_side = tokio::time::timeout(Duration::from_secs(5), accepted)
            .await
            .unwrap()
            .unwrap();
        assert!(server_side.is_err());
    }

    /// rustls configurations for a stranger presenting `der` (with its
    /// private key `pkcs8`) and trusting any certificate it is shown.
    fn stranger_configs(
        der: rustls::pki_types::CertificateDer<'static>,
        pkcs8: Vec<u8>,
    ) -> (rustls::ServerConfig, rustls::ClientConfig) {
        let private = || {
            rustls::pki_types::PrivateKeyDer::Pkcs8(rustls::pki_types::PrivatePkcs8KeyDer::from(
                pkcs8.clone(),
            ))
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![der.clone()], private())
            .unwrap();
        server.alpn_protocols = vec![ALPN.to_vec()];
        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnything))
            .with_client_auth_cert(vec![der], private())
            .unwrap();
        client.alpn_protocols = vec![ALPN.to_vec()];
        (server, client)
    }

    /// A self-signed certificate with an ECDSA P-256 key.
    fn ecdsa_configs() -> (rustls::ServerConfig, rustls::ClientConfig) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let certificate = rcgen::CertificateParams::new(vec![SERVER_NAME.into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        stranger_configs(certificate.der().clone(), key.serialize_der())
    }

    /// An Ed25519 certificate issued by another Ed25519 key (a "CA"): the
    /// stranger can sign handshakes, but its certificate is not self-signed.
    fn issued_ed25519_configs() -> (rustls::ServerConfig, rustls::ClientConfig) {
        let issuer_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let issuer = rcgen::CertificateParams::new(vec!["issuer".into()])
            .unwrap()
            .self_signed(&issuer_key)
            .unwrap();
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let certificate = rcgen::CertificateParams::new(vec![SERVER_NAME.into()])
            .unwrap()
            .signed_by(&key, &issuer, &issuer_key)
            .unwrap();
        assert_eq!(
            crate::tls::certificate_key(certificate.der()),
            Err(crate::tls::CertificateRejected::BadSelfSignature)
        );
        stranger_configs(certificate.der().clone(), key.serialize_der())
    }

    /// A peerline node dials a stranger's server; the dial must fail.
    async fn dial_stranger(server_tls: rustls::ServerConfig) -> quinn::ConnectionError {
        let quic = QuicServerConfig::try_from(server_tls).unwrap();
        let server = quinn::Endpoint::server(
            quinn::ServerConfig::with_crypto(Arc::new(quic)),
            SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        )
        .unwrap();
        let _accepted = tokio::spawn({
            let server = server.clone();
            async move {
                if let Some(incoming) = server.accept().await {
                    let _ = incoming.await;
                }
            }
        });
        let client_certificate = node_certificate(8);
        let client = endpoint(loopback_socket(), &client_certificate, limits()).unwrap();
        dial(
            &client,
            &client_certificate,
            server.local_addr().unwrap(),
            None,
        )
        .await
        .expect_err("the stranger's certificate is not a peerline identity")
    }

    /// A stranger dials a peerline node; returns what the node's side saw.
    async fn stranger_dials(client_tls: rustls::ClientConfig) -> quinn::ConnectionError {
        let server_certificate = node_certificate(9);
        let server = endpoint(loopback_socket(), &server_certificate, limits()).unwrap();
        let accepted = serve_one(server.clone());
        let quic = QuicClientConfig::try_from(client_tls).unwrap();
        let mut client =
            quinn::Endpoint::client(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).unwrap();
        client.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
        let connecting = client
            .connect(server.local_addr().unwrap(), SERVER_NAME)
            .unwrap();
        // TLS 1.3 lets the client finish before the server has checked its
        // certificate; the server's refusal then closes the connection.
        let client_side = tokio::time::timeout(Duration::from_secs(5), async {
            let connection = connecting.await?;
            Err::<(), _>(connection.closed().await)
        })
        .await
        .expect("refused within 5 s");
        assert!(client_side.is_err());
        tokio::time::timeout(Duration::from_secs(5), accepted)
            .await
            .unwrap()
            .unwrap()
            .expect_err("the node must refuse the connection")
    }

    // A non-Ed25519 peer is refused before its certificate is even parsed:
    // both sides offer only the Ed25519 signature scheme, so the stranger
    // cannot sign its handshake. `certificate_key` refuses such a
    // certificate too (tls.rs tests).
    #[tokio::test]
    async fn a_peerline_dialer_refuses_a_non_ed25519_server() {
        let (server, _) = ecdsa_configs();
        let error = dial_stranger(server).await;
        assert!(
            error.to_string().contains("NoSignatureSchemesInCommon"),
            "unexpected error: {error}"
        );
    }

    #[tokio::test]
    async fn a_peerline_server_refuses_a_non_ed25519_client() {
        let (_, client) = ecdsa_configs();
        let error = stranger_dials(client).await;
        // The stranger has no certificate for the only scheme on offer.
        assert!(
            error.to_string().contains("no certificates"),
            "unexpected error: {error}"
        );
    }

    #[tokio::test]
    async fn a_peerline_dialer_refuses_an_ed25519_certificate_issued_by_another_key() {
        let (server, _) = issued_ed25519_configs();
        let error = dial_stranger(server).await;
        assert!(
            error.to_string().contains("BadSelfSignature"),
            "unexpected error: {error}"
        );
    }

    #[tokio::test]
    async fn a_peerline_server_refuses_an_ed25519_certificate_issued_by_another_key() {
        let (_, client) = issued_ed25519_configs();
        let error = stranger_dials(client).await;
        assert!(
            error.to_string().contains("BadSelfSignature"),
            "unexpected error: {error}"
        );
    }

    #[derive(Debug)]
    struct AcceptAnything;

    impl rustls::client::danger::ServerCertVerifier for AcceptAnything {
        fn verify_server_cert(
            &self,
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &[rustls::pki_types::CertificateDer<'_>],
            _: &rustls::pki_types::ServerName<'_>,
            _: &[u8],
            _: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }

        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }

        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            rustls::crypto::ring::default_provider()
                .signature_verification_algorithms
                .supported_schemes()
        }
    }
}
