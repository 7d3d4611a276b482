//! berth-pki owns the trust between berth's satellites (remote builders) and their clients:
//! the satellite's own certificate authority (ECDSA P-256, key kept 0600 in the satellite's
//! root and never sent anywhere), its server certificate, enrollment and pull tokens that
//! carry the CA's pin (the SHA-256 of its public key, as kubeadm's discovery hash), the
//! client side of enrollment (a key made on the client and a CSR), CSR signing into short-lived
//! client certificates, the renewal policy, the revocation list, and the rustls
//! configurations (aws-lc-rs only) that put all of it on the wire.
//!
//! The flow of an enrollment:
//!
//! 1. The satellite calls [`Ca::load_or_create`], [`Ca::issue_server_cert`] and
//!    [`TokenStore::create`], and prints the [`Token`].
//! 2. The client parses the token, connects with [`first_contact`] (the server is accepted
//!    only if its chain carries a CA matching the pin), makes a [`ClientKey`] and sends
//!    [`ClientKey::csr_pem`] with the token's id and secret.
//! 3. The satellite calls [`TokenStore::redeem`] and [`Ca::sign_client_csr`] and returns the
//!    certificate; the client saves [`ClientKey::into_identity`] and the CA certificate that
//!    [`PinnedCaVerifier::ca_cert`] matched, and from then on connects with [`client_config`].
//! 4. [`needs_renewal`] tells the client when to repeat step 2 over mutual TLS; the
//!    satellite's [`RevocationList`] refuses revoked and expired certificates at the handshake.
//!
//! ```
//! use std::time::SystemTime;
//! use berth_pki::*;
//!
//! # fn main() -> Result<(), PkiError> {
//! # let root = tempfile::tempdir().unwrap();
//! // On the satellite, first start:
//! let (ca, _created) = Ca::load_or_create(&root.path().join("pki"), "sat-1")?;
//! let tokens = TokenStore::open(&root.path().join("tokens"))?;
//! let token = tokens.create(TokenOptions::default(), "sat.internal:8372", ca.pin(), SystemTime::now())?;
//! let line = token.to_string(); // berth-<id>.<secret>@sat.internal:8372#sha256:<pin>
//!
//! // On the client (after a pinned first contact):
//! let token: Token = line.parse()?;
//! let key = ClientKey::generate()?;
//! let csr = key.csr_pem("laptop")?;
//!
//! // Back on the satellite:
//! tokens.redeem(TokenKind::Enroll, &token.id, &token.secret, SystemTime::now())?;
//! let issued = ca.sign_client_csr(&csr, "laptop", Validity::from_now(DEFAULT_CLIENT_VALIDITY))?;
//!
//! // The client keeps its key and the certificate.
//! let identity = key.into_identity(issued.cert_pem);
//! assert!(!needs_renewal(&identity.chain()?[0], SystemTime::now())?);
//! # Ok(())
//! # }
//! ```
//!
//! [`Authority`] keeps a server's side of this on disk and serves one enrollment;
//! [`TrustDir`], [`check_enrollment`] and [`PeerStore`] are the client's. Satellites and deploy agents
//! both use them, each over its own transport.
//!
//! The satellite service (gRPC, file layout in its root, `berth satellite …` commands) is
//! berth-satellite's and berth-cli's; this crate holds no network protocol of its own.
#![warn(missing_docs)]

mod advertise;
mod authority;
mod ca;
mod cert;
mod error;
mod fsutil;
mod revocation;
mod tls;
mod token;

pub use advertise::{Advertised, split_entry as split_advertised};
pub use authority::{
    Authority, ClientRecord, EnrollRequest, EnrollResponse, PeerStore, TrustDir, check_enrollment,
    pem_to_der,
};
pub use ca::{
    CA_VALIDITY, Ca, ClientKey, DEFAULT_CLIENT_VALIDITY, DEFAULT_SERVER_VALIDITY, Identity,
    IssuedCert,
};
pub use cert::{CertInfo, Pin, Validity, needs_renewal};
pub use error::{PkiError, TokenError};
pub use fsutil::format_utc;
pub use revocation::{Refusal, Revocation, RevocationList};
pub use tls::{
    ClientAuth, PinMismatch, PinnedCaVerifier, ServerTrust, client_config, explain_refusal,
    first_contact, provider, server_config,
};
pub use token::{DEFAULT_TOKEN_TTL, Token, TokenKind, TokenOptions, TokenRecord, TokenStore};
