//! Enrollment shared by every berth service that enrolls its peers with a one-time token
//! (satellites enroll build clients, deploy agents enroll deploying machines): the
//! server's trust directory ([`Authority`]), the exchange's two messages, and the client's
//! side ([`TrustDir`], [`check_enrollment`]). The transport is the caller's (gRPC for
//! satellites, HTTPS for agents): this module only says what travels and what is kept.
//!
//! Under an authority's directory:
//!
//! ```text
//! pki/ca.{crt,key}      the service's own CA (key 0600, never sent)
//! address               host:port that tokens carry
//! tokens/               enrollment and pull tokens (secrets hashed)
//! revoked.json          revoked client certificates
//! clients/<serial>.json the client certificates issued
//! ```
//!
//! Under a client's trust directory (one per enrolled server):
//!
//! ```text
//! ca.crt                the server's CA (its pin was in the token)
//! client.{crt,key}      this client's certificate and key (key 0600, made here)
//! ```

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};

use crate::fsutil::{create_private_dir, read_text, unix_secs, write_atomic};
use crate::{
    Ca, CertInfo, ClientKey, Identity, PinnedCaVerifier, PkiError, RevocationList, ServerTrust,
    Token, TokenKind, TokenOptions, TokenStore, Validity,
};

/// What a client sends to enroll: the token's id and secret, its name, and a CSR for a
/// key it made itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnrollRequest {
    /// The token's id.
    pub token_id: String,
    /// The token's secret.
    pub token_secret: String,
    /// How the server will list this client.
    pub client_name: String,
    /// PKCS#10 request for the client's own key, PEM.
    pub csr_pem: String,
}

impl EnrollRequest {
    /// A request for `token`, with a CSR for `key` in the name of `client`.
    pub fn new(token: &Token, key: &ClientKey, client: &str) -> Result<EnrollRequest, PkiError> {
        Ok(EnrollRequest {
            token_id: token.id.clone(),
            token_secret: token.secret.clone(),
            client_name: client.to_owned(),
            csr_pem: key.csr_pem(client)?,
        })
    }
}

/// What the server answers: the client's certificate and the server's CA.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnrollResponse {
    /// The client certificate, PEM.
    pub cert_pem: String,
    /// The server's CA certificate, PEM (the one the token pinned).
    pub ca_pem: String,
    /// The server's own name.
    pub server: String,
}

/// A client certificate an authority issued.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClientRecord {
    /// The client's name.
    pub name: String,
    /// Certificate serial (hex).
    pub serial: String,
    /// End of validity, seconds since the epoch.
    pub not_after_unix: u64,
    /// When it was issued.
    pub issued_unix: u64,
    /// The certificate.
    pub cert_pem: String,
}

/// A server's trust directory: its CA, tokens, revocations and the clients it enrolled.
#[derive(Debug, Clone)]
pub struct Authority {
    dir: PathBuf,
}

impl Authority {
    /// The authority kept in `dir`.
    pub fn new(dir: &Path) -> Authority {
        Authority {
            dir: dir.to_path_buf(),
        }
    }

    /// Its directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the CA is kept.
    pub fn ca_dir(&self) -> PathBuf {
        self.dir.join("pki")
    }

    /// Whether the CA was made (the service has started once).
    pub fn has_ca(&self) -> bool {
        self.ca_dir().join("ca.crt").exists()
    }

    /// The CA, which must exist.
    pub fn ca(&self) -> Result<Ca, PkiError> {
        Ca::load(&self.ca_dir())
    }

    /// The CA, made now (named `name`) if there is none; true when made.
    pub fn load_or_create_ca(&self, name: &str) -> Result<(Ca, bool), PkiError> {
        create_private_dir(&self.dir)?;
        Ca::load_or_create(&self.ca_dir(), name)
    }

    /// The token store.
    pub fn tokens(&self) -> Result<TokenStore, PkiError> {
        TokenStore::open(&self.dir.join("tokens"))
    }

    /// The revocation list.
    pub fn revocations(&self) -> Result<RevocationList, PkiError> {
        RevocationList::open(&self.dir.join("revoked.json"))
    }

    /// The address tokens carry, as the service last recorded it (`None`: never started).
    pub fn address(&self) -> Option<String> {
        std::fs::read_to_string(self.dir.join("address"))
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
    }

    /// Records the address tokens carry.
    pub fn set_address(&self, address: &str) -> Result<(), PkiError> {
        create_private_dir(&self.dir)?;
        write_atomic(&self.dir.join("address"), address.as_bytes(), 0o644)
    }

    /// A token for this authority's CA, naming `address`.
    pub fn create_token(&self, options: TokenOptions, address: &str) -> Result<Token, PkiError> {
        let ca = self.ca()?;
        self.tokens()?
            .create(options, address, ca.pin(), SystemTime::now())
    }

    fn clients_dir(&self) -> PathBuf {
        self.dir.join("clients")
    }

    /// Records an issued client certificate.
    pub fn record_client(&self, cert_pem: &str, info: &CertInfo) -> Result<(), PkiError> {
        let dir = self.clients_dir();
        create_private_dir(&dir)?;
        let rec = ClientRecord {
            name: info.display_name(),
            serial: info.serial.clone(),
            not_after_unix: unix_secs(info.validity.not_after),
            issued_unix: unix_secs(SystemTime::now()),
            cert_pem: cert_pem.to_owned(),
        };
        write_atomic(
            &dir.join(format!("{}.json", info.serial)),
            &serde_json::to_vec_pretty(&rec).expect("record serialises"),
            0o644,
        )
    }

    /// Every client certificate issued, oldest first.
    pub fn clients(&self) -> Result<Vec<ClientRecord>, PkiError> {
        let dir = self.clients_dir();
        let mut out = Vec::new();
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(PkiError::io("list", &dir)(e)),
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "json")
                && let Ok(b) = std::fs::read(&p)
                && let Ok(r) = serde_json::from_slice::<ClientRecord>(&b)
            {
                out.push(r);
            }
        }
        out.sort_by(|a, b| (a.issued_unix, &a.serial).cmp(&(b.issued_unix, &b.serial)));
        Ok(out)
    }

    /// Revokes every certificate of client `who` (a name or a serial); returns how many
    /// (0: no such client, which the caller explains in its own terms).
    pub fn revoke_client(&self, who: &str, reason: &str) -> Result<usize, PkiError> {
        let list = self.revocations()?;
        let mut n = 0;
        for c in self.clients()? {
            if c.name == who || c.serial == who {
                list.revoke(&CertInfo::from_pem(&c.cert_pem)?, reason, SystemTime::now())?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Signs `csr_pem` for `client` with `ca` and records the certificate.
    pub fn issue(
        &self,
        ca: &Ca,
        csr_pem: &str,
        client: &str,
        validity: Validity,
        server: &str,
    ) -> Result<EnrollResponse, PkiError> {
        let issued = ca.sign_client_csr(csr_pem, client, validity)?;
        self.record_client(&issued.cert_pem, &issued.info)?;
        Ok(EnrollResponse {
            cert_pem: issued.cert_pem,
            ca_pem: ca.cert_pem().to_owned(),
            server: server.to_owned(),
        })
    }

    /// Serves one enrollment: signs the CSR first (a malformed CSR must not use up the
    /// token), then redeems the token. Blocking file work: run it off async workers.
    pub fn enroll(
        &self,
        ca: &Ca,
        tokens: &TokenStore,
        req: &EnrollRequest,
        validity: Validity,
        server: &str,
    ) -> Result<EnrollResponse, PkiError> {
        let resp = self.issue(ca, &req.csr_pem, &req.client_name, validity, server)?;
        tokens.redeem(
            TokenKind::Enroll,
            &req.token_id,
            &req.token_secret,
            SystemTime::now(),
        )?;
        tracing::info!(client = %req.client_name, token = %req.token_id, "client enrolled");
        Ok(resp)
    }
}

/// Checks a server's enrollment answer on the client: the CA the handshake pinned, the
/// CA the server sent and the token's pin must all be the same key. Returns the CA.
pub fn check_enrollment(
    token: &Token,
    verifier: &PinnedCaVerifier,
    ca_pem: &str,
) -> Result<CertificateDer<'static>, PkiError> {
    let pinned = verifier
        .ca_cert()
        .ok_or_else(|| PkiError::CaMismatch("the handshake pinned no CA".into()))?;
    let sent = pem_to_der(ca_pem)?;
    let (pinned_pin, sent_pin) = (
        crate::Pin::of_cert_der(&pinned)?,
        crate::Pin::of_cert_der(&sent)?,
    );
    if pinned_pin != token.pin || sent_pin != token.pin {
        return Err(PkiError::CaMismatch(format!(
            "the server answered with CA {sent_pin} after a handshake with CA {pinned_pin}; \
             the token pins {}",
            token.pin
        )));
    }
    Ok(sent)
}

/// The first certificate of PEM text.
pub fn pem_to_der(pem: &str) -> Result<CertificateDer<'static>, PkiError> {
    use rustls_pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| PkiError::BadCertificate {
        what: "CA certificate".into(),
        reason: e.to_string(),
    })
}

/// A client's trust in one enrolled server: the server's CA and this client's identity.
#[derive(Debug, Clone)]
pub struct TrustDir {
    dir: PathBuf,
}

impl TrustDir {
    /// The trust kept in `dir`.
    pub fn new(dir: &Path) -> TrustDir {
        TrustDir {
            dir: dir.to_path_buf(),
        }
    }

    /// Keeps the server's CA and this client's identity (the directory is made 0700).
    pub fn save(&self, ca_pem: &str, identity: &Identity) -> Result<(), PkiError> {
        create_private_dir(&self.dir)?;
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))
            .map_err(PkiError::io("chmod", &self.dir))?;
        identity.save(&self.dir, "client")?;
        write_atomic(&self.dir.join("ca.crt"), ca_pem.as_bytes(), 0o644)
    }

    /// The server's CA.
    pub fn ca(&self) -> Result<CertificateDer<'static>, PkiError> {
        pem_to_der(&read_text(&self.dir.join("ca.crt"))?)
    }

    /// This client's identity.
    pub fn identity(&self) -> Result<Identity, PkiError> {
        Identity::load(&self.dir, "client")
    }

    /// A mutual-TLS client configuration for the server.
    pub fn client_config(&self) -> Result<rustls::ClientConfig, PkiError> {
        crate::client_config(ServerTrust::Ca(self.ca()?), Some(&self.identity()?))
    }
}

/// The servers a client enrolled with, a directory each under one directory: the
/// [`TrustDir`] and a JSON record (file name `record`) of the caller's type. Errors for
/// people (an unknown name) are the caller's: it knows its commands.
#[derive(Debug, Clone)]
pub struct PeerStore {
    dir: PathBuf,
    record: &'static str,
}

impl PeerStore {
    /// Peers kept in `dir`, each with its record in `<name>/<record>`.
    pub fn new(dir: &Path, record: &'static str) -> PeerStore {
        PeerStore {
            dir: dir.to_path_buf(),
            record,
        }
    }

    /// Whether `name` may name a peer: 1 to 64 letters, digits, `.`, `-` or `_`, not
    /// starting with a punctuation mark (it becomes a directory name).
    pub fn valid_name(name: &str) -> bool {
        (1..=64).contains(&name.len())
            && name.starts_with(|c: char| c.is_ascii_alphanumeric())
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    }

    /// The directory of peer `name`.
    pub fn dir_of(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The trust kept for peer `name`.
    pub fn trust(&self, name: &str) -> TrustDir {
        TrustDir::new(&self.dir_of(name))
    }

    /// Peer `name`'s record; `None` when it is not enrolled.
    pub fn read<R: serde::de::DeserializeOwned>(&self, name: &str) -> Result<Option<R>, PkiError> {
        let p = self.dir_of(name).join(self.record);
        let bytes = match std::fs::read(&p) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(PkiError::io("read", &p)(e)),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| PkiError::Corrupt {
                path: p,
                reason: e.to_string(),
            })
    }

    /// Keeps peer `name`'s record (its trust is saved with [`TrustDir::save`]).
    pub fn write<R: Serialize>(&self, name: &str, record: &R) -> Result<(), PkiError> {
        let dir = self.dir_of(name);
        create_private_dir(&dir)?;
        write_atomic(
            &dir.join(self.record),
            &serde_json::to_vec_pretty(record).expect("record serialises"),
            0o644,
        )
    }

    /// The names of every enrolled peer, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut out: Vec<String> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().join(self.record).exists())
            .filter_map(|e| e.file_name().to_str().map(str::to_owned))
            .collect();
        out.sort();
        out
    }

    /// Forgets peer `name`: its record, certificate and key.
    pub fn remove(&self, name: &str) -> Result<(), PkiError> {
        let dir = self.dir_of(name);
        std::fs::remove_dir_all(&dir).map_err(PkiError::io("remove", &dir))
    }
}
