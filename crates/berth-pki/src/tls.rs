//! rustls configurations for satellites and their clients (aws-lc-rs provider only).
//!
//! - [`server_config`]: the satellite's listener. Presents the server certificate *and* the
//!   CA certificate (so first-contact clients can check the pin), verifies client
//!   certificates against the CA, and refuses revoked or expired ones with a TLS alert that
//!   names the cause (`certificate_revoked`, `certificate_expired`); the full message
//!   ("certificate for client X was revoked on …") is logged on the satellite.
//! - [`client_config`] with [`ServerTrust::Ca`]: an enrolled client, trusting only the
//!   satellite's CA, presenting its client certificate.
//! - [`client_config`] with [`ServerTrust::Pin`]: first contact (enrollment) before the
//!   client has the CA certificate: the server is accepted only if the chain it sends holds a
//!   CA whose public key matches the token's pin, and the chain verifies against that CA.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    AlertDescription, CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName,
    OtherError, RootCertStore, ServerConfig, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::{Identity, Pin, PkiError, Refusal, RevocationList};

/// The one crypto provider berth uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Whether the satellite's listener lets clients in without a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// Every connection must present a valid client certificate.
    Required,
    /// Connections without a certificate are let in (for enrollment, which carries a
    /// token instead); the service must then refuse every other call on them. A presented
    /// certificate is still verified, revocation and expiry included.
    Optional,
}

/// The satellite's TLS server configuration. ALPN and the like are the caller's to add.
pub fn server_config(
    ca_cert: &CertificateDer<'static>,
    server: &Identity,
    revocations: Arc<RevocationList>,
    client_auth: ClientAuth,
) -> Result<ServerConfig, PkiError> {
    let provider = provider();
    let mut roots = RootCertStore::empty();
    roots.add(ca_cert.clone())?;
    let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
    let builder = match client_auth {
        ClientAuth::Required => builder,
        ClientAuth::Optional => builder.allow_unauthenticated(),
    };
    let inner = builder
        .build()
        .map_err(|e| rustls::Error::General(format!("client certificate verifier: {e}")))?;
    let verifier = Arc::new(CheckedClientVerifier { inner, revocations });
    Ok(ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(server.chain()?, server.key()?)?)
}

/// How a client decides to trust the satellite.
#[derive(Debug, Clone)]
pub enum ServerTrust {
    /// The satellite's CA certificate, stored at enrollment.
    Ca(CertificateDer<'static>),
    /// The pin from a token, for first contact.
    Pin(Pin),
}

/// A client configuration; `identity` is the client certificate and key, if enrolled.
/// With [`ServerTrust::Pin`] use [`first_contact`] instead to learn the CA certificate.
pub fn client_config(
    trust: ServerTrust,
    identity: Option<&Identity>,
) -> Result<ClientConfig, PkiError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match trust {
        ServerTrust::Ca(ca) => {
            let mut roots = RootCertStore::empty();
            roots.add(ca)?;
            builder.with_root_certificates(roots)
        }
        ServerTrust::Pin(pin) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedCaVerifier::new(pin, provider))),
    };
    Ok(match identity {
        Some(id) => builder.with_client_auth_cert(id.chain()?, id.key()?)?,
        None => builder.with_no_client_auth(),
    })
}

/// A first-contact client: its configuration (no client certificate) and the verifier,
/// which after a successful handshake hands out the CA certificate that matched the pin,
/// for the client to store.
pub fn first_contact(pin: Pin) -> Result<(ClientConfig, Arc<PinnedCaVerifier>), PkiError> {
    let provider = provider();
    let verifier = Arc::new(PinnedCaVerifier::new(pin, provider.clone()));
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    Ok((config, verifier))
}

/// What a client should tell its user when a connection to a satellite failed for a trust
/// reason: the satellite refused the client's certificate (read from the TLS alert it sent;
/// with TLS 1.3 that arrives on the first read), the server's CA did not match the token's
/// pin, or the server is not signed by the CA stored at enrollment. `None` for other errors.
pub fn explain_refusal(err: &std::io::Error) -> Option<String> {
    let tls = err.get_ref()?.downcast_ref::<rustls::Error>()?;
    match tls {
        rustls::Error::AlertReceived(AlertDescription::CertificateRevoked) => Some(
            "the satellite refused this client's certificate: it was revoked; enroll again with \
             `berth satellite add` and a new token from the satellite's operator"
                .into(),
        ),
        rustls::Error::AlertReceived(AlertDescription::CertificateExpired) => Some(
            "the satellite refused this client's certificate: it expired (or is not valid yet); \
             run `berth satellite add` again or let it renew"
                .into(),
        ),
        rustls::Error::InvalidCertificate(CertificateError::Other(other)) => {
            other.0.downcast_ref::<PinMismatch>().map(ToString::to_string)
        }
        // BadSignature: a CA with the same name but another key signed it (an impostor, or
        // the satellite's CA was made anew).
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer | CertificateError::BadSignature) => Some(
            "the server's certificate is not signed by the satellite's CA stored at enrollment; \
             check the address, or enroll again with `berth satellite add` if the satellite was rebuilt"
                .into(),
        ),
        _ => None,
    }
}

/// WebPKI client verification with berth's revocation list and readable refusals.
#[derive(Debug)]
struct CheckedClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    revocations: Arc<RevocationList>,
}

impl ClientCertVerifier for CheckedClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // WebPKI first: only a certificate of this CA is judged by the revocation list, and
        // names in log lines come from certificates the CA signed.
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(now.as_secs());
        let verified = match self
            .inner
            .verify_client_cert(end_entity, intermediates, now)
        {
            Ok(verified) => verified,
            Err(err) => {
                if let Err(refusal @ (Refusal::Expired { .. } | Refusal::NotYetValid { .. })) =
                    self.revocations.check(end_entity, at)
                {
                    tracing::warn!("{refusal}");
                }
                return Err(err);
            }
        };
        if let Err(refusal) = self.revocations.check(end_entity, at) {
            tracing::warn!("{refusal}");
            return Err(match refusal {
                Refusal::Revoked { .. } => CertificateError::Revoked.into(),
                Refusal::Expired { .. } => CertificateError::Expired.into(),
                Refusal::NotYetValid { .. } => CertificateError::NotValidYet.into(),
                Refusal::Unreadable(_) => {
                    CertificateError::Other(OtherError(Arc::new(refusal))).into()
                }
            });
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The server's chain holds no CA certificate with the pinned public key.
#[derive(Debug, thiserror::Error)]
#[error(
    "the server's CA does not match the token: the token pins {expected}, the server sent {sent}; \
     the token may belong to another satellite or agent, or someone is intercepting the connection"
)]
pub struct PinMismatch {
    /// The pin from the token.
    pub expected: Pin,
    /// What the server's chain carried, for the message.
    pub sent: String,
}

/// Accepts a server whose chain carries a CA with the pinned key, then verifies the chain
/// (signature, validity, server name) against that CA with rustls's WebPKI verifier.
#[derive(Debug)]
pub struct PinnedCaVerifier {
    pin: Pin,
    provider: Arc<CryptoProvider>,
    matched: Mutex<Option<CertificateDer<'static>>>,
}

impl PinnedCaVerifier {
    fn new(pin: Pin, provider: Arc<CryptoProvider>) -> PinnedCaVerifier {
        PinnedCaVerifier {
            pin,
            provider,
            matched: Mutex::new(None),
        }
    }

    /// The CA certificate that matched the pin, once a handshake has succeeded.
    pub fn ca_cert(&self) -> Option<CertificateDer<'static>> {
        self.matched.lock().expect("pinned verifier lock").clone()
    }
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let pins: Vec<Option<Pin>> = intermediates
            .iter()
            .map(|c| Pin::of_cert_der(c).ok())
            .collect();
        let Some(index) = pins.iter().position(|p| *p == Some(self.pin)) else {
            let sent: Vec<String> = pins.iter().flatten().map(ToString::to_string).collect();
            let sent = if sent.is_empty() {
                "no CA certificate".to_owned()
            } else {
                sent.join(", ")
            };
            return Err(CertificateError::Other(OtherError(Arc::new(PinMismatch {
                expected: self.pin,
                sent,
            })))
            .into());
        };
        let ca = intermediates[index].clone().into_owned();
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone())?;
        let webpki =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(format!("server certificate verifier: {e}")))?;
        let others: Vec<CertificateDer<'_>> = intermediates
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != index)
            .map(|(_, c)| c.clone())
            .collect();
        let verified =
            webpki.verify_server_cert(end_entity, &others, server_name, ocsp_response, now)?;
        *self.matched.lock().expect("pinned verifier lock") = Some(ca);
        Ok(verified)
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
            &self.provider.signature_verification_algorithms,
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
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
