//! Revoked client certificates: a list on disk and the check every handshake runs.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::fsutil::{format_utc, from_unix_secs, lock_exclusive, unix_secs, write_atomic};
use crate::{CertInfo, PkiError};

/// One revoked certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    /// Serial number, lower-case hex as in [`CertInfo::serial`].
    pub serial: String,
    /// The client it was issued to.
    pub client: String,
    /// Why (free text from the operator).
    pub reason: String,
    /// When, seconds since the Unix epoch.
    pub revoked_unix: u64,
}

/// Why a client certificate is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Its serial is on the revocation list.
    #[error(
        "certificate for client {client} was revoked on {at} ({reason}); \
         enroll again with `berth satellite add` and a new token from the satellite's operator"
    )]
    Revoked {
        /// Client name.
        client: String,
        /// When (UTC).
        at: String,
        /// Why.
        reason: String,
    },
    /// It is past its end of validity.
    #[error(
        "certificate for client {client} expired on {at}; run `berth satellite add` again or let it renew"
    )]
    Expired {
        /// Client name.
        client: String,
        /// When (UTC).
        at: String,
    },
    /// It is not valid yet (a clock is wrong).
    #[error(
        "certificate for client {client} is not valid before {at}; check the clocks of client and satellite"
    )]
    NotYetValid {
        /// Client name.
        client: String,
        /// When it becomes valid (UTC).
        at: String,
    },
    /// The certificate or the revocation list could not be read; refused to fail closed.
    #[error("client certificate refused: {0}")]
    Unreadable(String),
}

/// The satellite's revocation list, a JSON file changed by atomic rename.
///
/// The list is kept in memory and re-read when the file changes (another process, such as
/// `berth satellite clients revoke`, may write it), so a revocation takes effect at the next
/// handshake without a restart.
#[derive(Debug)]
pub struct RevocationList {
    path: PathBuf,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    entries: BTreeMap<String, Revocation>,
    /// (inode, mtime ns, size) of the file last read; `None` when it did not exist.
    seen: Option<(u64, i128, u64)>,
}

impl RevocationList {
    /// Opens the list at `path`; a missing file is an empty list.
    pub fn open(path: &Path) -> Result<RevocationList, PkiError> {
        let list = RevocationList {
            path: path.to_owned(),
            state: Mutex::new(State::default()),
        };
        list.refresh(&mut list.state.lock().expect("revocation list lock"))?;
        Ok(list)
    }

    /// Adds a certificate to the list (kept if already there) and writes the file.
    pub fn revoke(
        &self,
        cert: &CertInfo,
        reason: &str,
        now: SystemTime,
    ) -> Result<Revocation, PkiError> {
        // The lock file serialises writers across processes; the mutex, threads in this one.
        let _lock = lock_exclusive(&self.path.with_extension("lock"))?;
        let mut state = self.state.lock().expect("revocation list lock");
        self.refresh(&mut state)?;
        let entry = state
            .entries
            .entry(cert.serial.clone())
            .or_insert_with(|| Revocation {
                serial: cert.serial.clone(),
                client: cert.display_name(),
                reason: reason.to_owned(),
                revoked_unix: unix_secs(now),
            })
            .clone();
        let list: Vec<&Revocation> = state.entries.values().collect();
        let json = serde_json::to_vec_pretty(&list).expect("revocations serialise");
        write_atomic(&self.path, &json, 0o644)?;
        state.seen = file_identity(&self.path)?;
        Ok(entry)
    }

    /// Every revocation, by serial.
    pub fn list(&self) -> Result<Vec<Revocation>, PkiError> {
        let mut state = self.state.lock().expect("revocation list lock");
        self.refresh(&mut state)?;
        Ok(state.entries.values().cloned().collect())
    }

    /// Accepts a client certificate (DER) at `now` unless it is revoked, expired or not
    /// yet valid. Returns what it read of the certificate. Chain and signature are checked
    /// by the TLS verifier; this is the part rustls's WebPKI verifier cannot explain.
    pub fn check(&self, cert_der: &[u8], now: SystemTime) -> Result<CertInfo, Refusal> {
        let info = CertInfo::from_der(cert_der).map_err(|e| Refusal::Unreadable(e.to_string()))?;
        let client = info.display_name();
        {
            let mut state = self.state.lock().expect("revocation list lock");
            self.refresh(&mut state)
                .map_err(|e| Refusal::Unreadable(e.to_string()))?;
            if let Some(r) = state.entries.get(&info.serial) {
                return Err(Refusal::Revoked {
                    client,
                    at: format_utc(from_unix_secs(r.revoked_unix)),
                    reason: r.reason.clone(),
                });
            }
        }
        if now > info.validity.not_after {
            return Err(Refusal::Expired {
                client,
                at: format_utc(info.validity.not_after),
            });
        }
        if now < info.validity.not_before {
            return Err(Refusal::NotYetValid {
                client,
                at: format_utc(info.validity.not_before),
            });
        }
        Ok(info)
    }

    fn refresh(&self, state: &mut State) -> Result<(), PkiError> {
        let seen = file_identity(&self.path)?;
        if seen == state.seen {
            return Ok(());
        }
        state.entries = match seen {
            None => BTreeMap::new(),
            Some(_) => {
                let text = fs::read(&self.path).map_err(PkiError::io("read", &self.path))?;
                let list: Vec<Revocation> =
                    serde_json::from_slice(&text).map_err(|e| PkiError::Corrupt {
                        path: self.path.clone(),
                        reason: e.to_string(),
                    })?;
                list.into_iter().map(|r| (r.serial.clone(), r)).collect()
            }
        };
        state.seen = seen;
        Ok(())
    }
}

fn file_identity(path: &Path) -> Result<Option<(u64, i128, u64)>, PkiError> {
    match fs::metadata(path) {
        Ok(m) => Ok(Some((
            m.ino(),
            i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            m.size(),
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(PkiError::io("stat", path)(e)),
    }
}
