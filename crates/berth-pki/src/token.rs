//! Enrollment and pull tokens: the single-line text a user copies, and the satellite's store.
//!
//! A token reads `berth-<id>.<secret>@<host:port>#sha256:<pin>`:
//! `id` is 8 lower-case hex digits (names the token in `token ls` / `token revoke`),
//! `secret` is 32 lower-case hex digits (128 random bits), `host:port` is the satellite's
//! address (`[v6]:port` for IPv6), and the pin is the SHA-256 of the satellite CA's public
//! key. The store keeps only the SHA-256 of the secret: with 128 random bits a fast hash is
//! enough, and a stolen store file cannot be turned into a working token.

use std::fmt;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use crate::fsutil::{
    create_private_dir, format_utc, from_unix_secs, hex, lock_exclusive, random, unix_secs,
    write_atomic,
};
use crate::{Pin, PkiError, TokenError};

/// How long a token is valid unless told otherwise.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

const PREFIX: &str = "berth-";
const ID_LEN: usize = 8;
const SECRET_LEN: usize = 32;

/// What a token may be used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenKind {
    /// Enrolling a client (`berth satellite add`): exchanged for a client certificate.
    Enroll,
    /// Pulling images from the satellite's registry (`docker login`).
    Pull,
}

impl fmt::Display for TokenKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TokenKind::Enroll => "enroll",
            TokenKind::Pull => "pull",
        })
    }
}

/// A token as the user sees it. Its `Display` is the copy-pasteable line.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    /// Names the token; not secret.
    pub id: String,
    /// The secret; only its hash is stored on the satellite.
    pub secret: String,
    /// The satellite's address, `host:port`.
    pub addr: String,
    /// The pin of the satellite's CA.
    pub pin: Pin,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("id", &self.id)
            .field("secret", &"<hidden>")
            .field("addr", &self.addr)
            .field("pin", &self.pin)
            .finish()
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{PREFIX}{}.{}@{}#{}",
            self.id, self.secret, self.addr, self.pin
        )
    }
}

impl FromStr for Token {
    type Err = TokenError;

    fn from_str(s: &str) -> Result<Token, TokenError> {
        let bad = |reason: &str| TokenError::Malformed {
            reason: reason.to_owned(),
        };
        let rest = s
            .trim()
            .strip_prefix(PREFIX)
            .ok_or_else(|| bad("it does not start with `berth-`"))?;
        let (rest, pin) = rest
            .rsplit_once('#')
            .ok_or_else(|| bad("the `#sha256:<pin>` part is missing"))?;
        let pin: Pin = pin.parse()?;
        let (credential, addr) = rest
            .split_once('@')
            .ok_or_else(|| bad("the `@host:port` part is missing"))?;
        let (id, secret) = credential
            .split_once('.')
            .ok_or_else(|| bad("the `.` between token id and secret is missing"))?;
        if !is_hex(id, ID_LEN) {
            return Err(bad("the token id is not 8 lower-case hex digits"));
        }
        if !is_hex(secret, SECRET_LEN) {
            return Err(bad("the secret is not 32 lower-case hex digits"));
        }
        check_addr(addr).map_err(|reason| bad(&reason))?;
        Ok(Token {
            id: id.to_owned(),
            secret: secret.to_owned(),
            addr: addr.to_owned(),
            pin,
        })
    }
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn check_addr(addr: &str) -> Result<(), String> {
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| format!("the address `{addr}` has no `:port`"))?;
    port.parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("the port in `{addr}` is not a number from 1 to 65535"))?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() || host.contains(|c: char| c.is_whitespace() || "/@#".contains(c)) {
        return Err(format!(
            "the host in `{addr}` is empty or has invalid characters"
        ));
    }
    Ok(())
}

/// How to make a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenOptions {
    /// What it is for.
    pub kind: TokenKind,
    /// How long it is valid.
    pub ttl: Duration,
    /// How many times it can be redeemed; 0 means without limit (until it expires).
    pub uses: u32,
}

impl Default for TokenOptions {
    /// An enrollment token, valid 24 hours, for one use.
    fn default() -> Self {
        TokenOptions {
            kind: TokenKind::Enroll,
            ttl: DEFAULT_TOKEN_TTL,
            uses: 1,
        }
    }
}

/// What the satellite keeps of a token (one JSON file per token).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// The token id.
    pub id: String,
    /// What it is for.
    pub kind: TokenKind,
    /// Lower-case hex SHA-256 of the secret.
    secret_sha256: String,
    /// When it was made, seconds since the Unix epoch.
    pub created_unix: u64,
    /// When it expires, seconds since the Unix epoch.
    pub expires_unix: u64,
    /// Uses allowed; 0 means without limit.
    pub uses: u32,
    /// Uses so far.
    pub used: u32,
    /// When it was revoked, seconds since the Unix epoch.
    pub revoked_unix: Option<u64>,
}

impl TokenRecord {
    /// When it expires.
    pub fn expires(&self) -> SystemTime {
        from_unix_secs(self.expires_unix)
    }

    /// Whether it can still be redeemed at `now`.
    pub fn is_usable(&self, now: SystemTime) -> bool {
        self.revoked_unix.is_none()
            && unix_secs(now) < self.expires_unix
            && (self.uses == 0 || self.used < self.uses)
    }
}

/// The satellite's tokens: `<dir>/<id>.json` (0600) each written atomically, and
/// `<dir>/.lock`, held with `flock` while a token is created, redeemed or revoked, so two
/// satellite processes (or `berth satellite token …` beside a running satellite) never
/// redeem one use twice.
#[derive(Debug, Clone)]
pub struct TokenStore {
    dir: PathBuf,
}

impl TokenStore {
    /// Opens (and creates, mode 0700) the token directory.
    pub fn open(dir: &Path) -> Result<TokenStore, PkiError> {
        create_private_dir(dir)?;
        Ok(TokenStore {
            dir: dir.to_owned(),
        })
    }

    /// Makes a token for the satellite at `addr` whose CA has `pin`.
    pub fn create(
        &self,
        options: TokenOptions,
        addr: &str,
        pin: Pin,
        now: SystemTime,
    ) -> Result<Token, PkiError> {
        check_addr(addr).map_err(|reason| TokenError::Malformed { reason })?;
        let _lock = self.lock()?;
        let (id, path) = loop {
            let id = hex(&random::<{ ID_LEN / 2 }>());
            let path = self.path(&id);
            if !path.exists() {
                break (id, path);
            }
        };
        let secret = hex(&random::<{ SECRET_LEN / 2 }>());
        let record = TokenRecord {
            id: id.clone(),
            kind: options.kind,
            secret_sha256: sha256_hex(&secret),
            created_unix: unix_secs(now),
            expires_unix: unix_secs(now + options.ttl),
            uses: options.uses,
            used: 0,
            revoked_unix: None,
        };
        write_record(&path, &record)?;
        Ok(Token {
            id,
            secret,
            addr: addr.to_owned(),
            pin,
        })
    }

    /// Every token, usable or not, oldest first.
    pub fn list(&self) -> Result<Vec<TokenRecord>, PkiError> {
        let mut records = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(PkiError::io("list", &self.dir))? {
            let path = entry.map_err(PkiError::io("list", &self.dir))?.path();
            let is_token = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".json"))
                .is_some_and(|id| is_hex(id, ID_LEN));
            if is_token {
                records.push(read_record(&path)?);
            }
        }
        records.sort_by(|a, b| (a.created_unix, &a.id).cmp(&(b.created_unix, &b.id)));
        Ok(records)
    }

    /// Revokes a token; it can no longer be redeemed. Revoking twice keeps the first time.
    pub fn revoke(&self, id: &str, now: SystemTime) -> Result<TokenRecord, PkiError> {
        let _lock = self.lock()?;
        let path = self.existing(id)?;
        let mut record = read_record(&path)?;
        if record.revoked_unix.is_none() {
            record.revoked_unix = Some(unix_secs(now));
            write_record(&path, &record)?;
        }
        Ok(record)
    }

    /// Checks a token offered by a client and uses it up once.
    ///
    /// Order of checks: known id, secret (constant-time compare of the hashes), kind,
    /// revocation, expiry, remaining uses. The secret comes first so that someone without
    /// it learns nothing about the token's state. The use is counted under the store's
    /// lock, so concurrent redemptions across processes never exceed `uses`.
    pub fn redeem(
        &self,
        kind: TokenKind,
        id: &str,
        secret: &str,
        now: SystemTime,
    ) -> Result<TokenRecord, PkiError> {
        let _lock = self.lock()?;
        let path = self.existing(id)?;
        let mut record = read_record(&path)?;
        check(&record, kind, id, secret, now)?;
        record.used = record.used.saturating_add(1);
        write_record(&path, &record)?;
        Ok(record)
    }

    /// Checks a token offered by a client without using it up: the same checks as
    /// [`TokenStore::redeem`], in the same order, but nothing is written and no lock is
    /// taken (records are replaced by atomic rename, so a read sees one whole version).
    ///
    /// This is for tokens presented again and again, such as a pull token sent with
    /// every registry request: it costs a SHA-256 and the read of one small file.
    pub fn verify(
        &self,
        kind: TokenKind,
        id: &str,
        secret: &str,
        now: SystemTime,
    ) -> Result<TokenRecord, PkiError> {
        let record = read_record(&self.existing(id)?)?;
        check(&record, kind, id, secret, now)?;
        Ok(record)
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// The file of token `id`; the id is checked first so it can never name another path.
    fn existing(&self, id: &str) -> Result<PathBuf, PkiError> {
        let path = self.path(id);
        if !is_hex(id, ID_LEN) || !path.exists() {
            return Err(TokenError::Unknown { id: id.to_owned() }.into());
        }
        Ok(path)
    }

    fn lock(&self) -> Result<File, PkiError> {
        lock_exclusive(&self.dir.join(".lock"))
    }
}

/// The checks of [`TokenStore::redeem`] and [`TokenStore::verify`], secret first.
fn check(
    record: &TokenRecord,
    kind: TokenKind,
    id: &str,
    secret: &str,
    now: SystemTime,
) -> Result<(), TokenError> {
    let offered = sha256_hex(secret);
    if aws_lc_rs::constant_time::verify_slices_are_equal(
        offered.as_bytes(),
        record.secret_sha256.as_bytes(),
    )
    .is_err()
    {
        return Err(TokenError::WrongSecret { id: id.to_owned() });
    }
    if record.kind != kind {
        return Err(TokenError::WrongKind {
            id: id.to_owned(),
            wanted: kind.to_string(),
            actual: record.kind.to_string(),
        });
    }
    if let Some(at) = record.revoked_unix {
        return Err(TokenError::Revoked {
            id: id.to_owned(),
            at: format_utc(from_unix_secs(at)),
        });
    }
    if unix_secs(now) >= record.expires_unix {
        return Err(TokenError::Expired {
            id: id.to_owned(),
            at: format_utc(record.expires()),
        });
    }
    if record.uses != 0 && record.used >= record.uses {
        return Err(TokenError::UsedUp {
            id: id.to_owned(),
            uses: record.uses,
        });
    }
    Ok(())
}

fn sha256_hex(secret: &str) -> String {
    hex(&sha2::Sha256::digest(secret.as_bytes()))
}

fn read_record(path: &Path) -> Result<TokenRecord, PkiError> {
    let text = fs::read(path).map_err(PkiError::io("read", path))?;
    serde_json::from_slice(&text).map_err(|e| PkiError::Corrupt {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

fn write_record(path: &Path, record: &TokenRecord) -> Result<(), PkiError> {
    let json = serde_json::to_vec_pretty(record).expect("a token record serialises");
    write_atomic(path, &json, 0o600)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_store() -> (tempfile::TempDir, TokenStore, SystemTime) {
        let dir = tempfile::tempdir().unwrap();
        let store = TokenStore::open(dir.path()).unwrap();
        (dir, store, SystemTime::now())
    }

    fn pin() -> Pin {
        Pin::of_spki(b"ca key")
    }

    #[test]
    fn text_round_trip() {
        let token = Token {
            id: "0a1b2c3d".into(),
            secret: "00112233445566778899aabbccddeeff".into(),
            addr: "[fd00::1]:8372".into(),
            pin: pin(),
        };
        let text = token.to_string();
        assert!(
            text.starts_with(
                "berth-0a1b2c3d.00112233445566778899aabbccddeeff@[fd00::1]:8372#sha256:"
            )
        );
        assert_eq!(text.parse::<Token>().unwrap(), token);
        assert_eq!(
            format!("  {text}\n").parse::<Token>().unwrap(),
            token,
            "pasted with whitespace"
        );
        assert!(
            !format!("{token:?}").contains(&token.secret),
            "Debug hides the secret"
        );
    }

    #[test]
    fn malformed_tokens_say_what_is_wrong() {
        let good = Token {
            id: "0a1b2c3d".into(),
            secret: "0".repeat(32),
            addr: "sat:8372".into(),
            pin: pin(),
        }
        .to_string();
        let cases = [
            (good.replace("berth-", "kube-"), "does not start"),
            (
                good.split('#').next().unwrap().to_owned(),
                "`#sha256:<pin>`",
            ),
            (good.replace("@sat:8372", ""), "`@host:port`"),
            (good.replace("0a1b2c3d.", "0a1b2c3d"), "`.` between"),
            (good.replace("0a1b2c3d", "../../x"), "token id"),
            (good.replace(&"0".repeat(32), "short"), "secret"),
            (good.replace("sat:8372", "sat"), "no `:port`"),
            (good.replace("sat:8372", "sat:http"), "port"),
            (good.replace("#sha256:", "#md5:"), "sha256:"),
        ];
        for (text, want) in cases {
            let err = text.parse::<Token>().unwrap_err();
            assert!(matches!(err, TokenError::Malformed { .. }), "{text}");
            assert!(err.to_string().contains(want), "{text}: {err}");
        }
    }

    #[test]
    fn store_keeps_only_the_hash_and_counts_uses() {
        let (_dir, store, now) = new_store();
        let opts = TokenOptions {
            uses: 2,
            ..TokenOptions::default()
        };
        let token = store.create(opts, "127.0.0.1:8372", pin(), now).unwrap();
        let file = fs::read_to_string(store.path(&token.id)).unwrap();
        assert!(
            !file.contains(&token.secret),
            "the secret itself is never stored"
        );
        use std::os::unix::fs::MetadataExt as _;
        assert_eq!(
            fs::metadata(store.path(&token.id)).unwrap().mode() & 0o777,
            0o600
        );

        for used in 1..=2 {
            let r = store
                .redeem(TokenKind::Enroll, &token.id, &token.secret, now)
                .unwrap();
            assert_eq!(r.used, used);
        }
        let err = store
            .redeem(TokenKind::Enroll, &token.id, &token.secret, now)
            .unwrap_err();
        assert_eq!(
            err.as_token(),
            Some(&TokenError::UsedUp {
                id: token.id.clone(),
                uses: 2
            })
        );
        assert_eq!(store.list().unwrap().len(), 1);
    }

    #[test]
    fn distinct_refusals() {
        let (_dir, store, now) = new_store();
        let t = store
            .create(TokenOptions::default(), "sat:8372", pin(), now)
            .unwrap();
        let redeem = |kind, id: &str, secret: &str, at| {
            store
                .redeem(kind, id, secret, at)
                .unwrap_err()
                .as_token()
                .cloned()
                .unwrap()
        };
        assert!(matches!(
            redeem(TokenKind::Enroll, "ffffffff", &t.secret, now),
            TokenError::Unknown { .. }
        ));
        assert!(matches!(
            redeem(TokenKind::Enroll, "../x", &t.secret, now),
            TokenError::Unknown { .. }
        ));
        assert!(matches!(
            redeem(TokenKind::Enroll, &t.id, &"0".repeat(32), now),
            TokenError::WrongSecret { .. }
        ));
        assert!(matches!(
            redeem(TokenKind::Pull, &t.id, &t.secret, now),
            TokenError::WrongKind { .. }
        ));
        let later = now + DEFAULT_TOKEN_TTL + Duration::from_secs(1);
        assert!(matches!(
            redeem(TokenKind::Enroll, &t.id, &t.secret, later),
            TokenError::Expired { .. }
        ));
        store.revoke(&t.id, now).unwrap();
        assert!(matches!(
            redeem(TokenKind::Enroll, &t.id, &t.secret, now),
            TokenError::Revoked { .. }
        ));
        assert!(!store.list().unwrap()[0].is_usable(now));
    }

    #[test]
    fn unlimited_uses_until_expiry() {
        let (_dir, store, now) = new_store();
        let opts = TokenOptions {
            kind: TokenKind::Pull,
            uses: 0,
            ..TokenOptions::default()
        };
        let t = store.create(opts, "sat:8372", pin(), now).unwrap();
        for _ in 0..5 {
            store
                .redeem(TokenKind::Pull, &t.id, &t.secret, now)
                .unwrap();
        }
    }

    #[test]
    fn verify_checks_like_redeem_without_using_up() {
        let (_dir, store, now) = new_store();
        let opts = TokenOptions {
            kind: TokenKind::Pull,
            uses: 1,
            ..TokenOptions::default()
        };
        let t = store.create(opts, "sat:8372", pin(), now).unwrap();
        for _ in 0..3 {
            let r = store
                .verify(TokenKind::Pull, &t.id, &t.secret, now)
                .unwrap();
            assert_eq!(r.used, 0, "verify never counts a use");
        }
        let refused = |kind, secret: &str, at| {
            store
                .verify(kind, &t.id, secret, at)
                .unwrap_err()
                .as_token()
                .cloned()
                .unwrap()
        };
        assert!(matches!(
            refused(TokenKind::Pull, &"0".repeat(32), now),
            TokenError::WrongSecret { .. }
        ));
        assert!(matches!(
            refused(TokenKind::Enroll, &t.secret, now),
            TokenError::WrongKind { .. }
        ));
        let later = now + DEFAULT_TOKEN_TTL + Duration::from_secs(1);
        assert!(matches!(
            refused(TokenKind::Pull, &t.secret, later),
            TokenError::Expired { .. }
        ));
        store.revoke(&t.id, now).unwrap();
        assert!(matches!(
            refused(TokenKind::Pull, &t.secret, now),
            TokenError::Revoked { .. }
        ));
        assert!(matches!(
            store
                .verify(TokenKind::Pull, "ffffffff", &t.secret, now)
                .unwrap_err()
                .as_token(),
            Some(TokenError::Unknown { .. })
        ));
    }

    /// Redeems across processes: this test binary runs itself as children, each redeeming
    /// once from the same store (see `child_redeem`).
    #[test]
    fn redemptions_across_processes_never_exceed_uses() {
        let (dir, store, now) = new_store();
        let options = TokenOptions {
            uses: 2,
            ..TokenOptions::default()
        };
        let t = store.create(options, "sat:1", pin(), now).unwrap();
        let children: Vec<_> = (0..5)
            .map(|_| {
                std::process::Command::new(std::env::current_exe().unwrap())
                    .args([
                        "--exact",
                        "token::tests::child_redeem",
                        "--ignored",
                        "--nocapture",
                    ])
                    .env("BERTH_PKI_CHILD_STORE", dir.path())
                    .env("BERTH_PKI_CHILD_TOKEN", t.to_string())
                    .stdout(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let outputs: Vec<String> = children
            .into_iter()
            .map(|c| String::from_utf8(c.wait_with_output().unwrap().stdout).unwrap())
            .collect();
        let redeemed = outputs
            .iter()
            .filter(|o| o.contains("child: redeemed"))
            .count();
        let refused = outputs
            .iter()
            .filter(|o| o.contains("child: refused"))
            .count();
        assert_eq!((redeemed, refused), (2, 3), "{outputs:?}");
        assert_eq!(store.list().unwrap()[0].used, 2);
    }

    /// The child half of `redemptions_across_processes_never_exceed_uses`.
    #[test]
    #[ignore = "run by redemptions_across_processes_never_exceed_uses"]
    fn child_redeem() {
        let (Some(dir), Some(token)) = (
            std::env::var_os("BERTH_PKI_CHILD_STORE"),
            std::env::var("BERTH_PKI_CHILD_TOKEN").ok(),
        ) else {
            return;
        };
        let token: Token = token.parse().unwrap();
        let store = TokenStore::open(Path::new(&dir)).unwrap();
        match store.redeem(
            TokenKind::Enroll,
            &token.id,
            &token.secret,
            SystemTime::now(),
        ) {
            Ok(_) => println!("child: redeemed"),
            Err(e) if matches!(e.as_token(), Some(TokenError::UsedUp { .. })) => {
                println!("child: refused")
            }
            Err(e) => panic!("{e}"),
        }
    }

    /// flock is per open file, so threads each opening the lock behave as processes do.
    #[test]
    fn concurrent_redemptions_never_exceed_uses() {
        let (dir, store, now) = new_store();
        let t = store
            .create(
                TokenOptions {
                    uses: 3,
                    ..TokenOptions::default()
                },
                "sat:1",
                pin(),
                now,
            )
            .unwrap();
        let ok = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    let store = TokenStore::open(dir.path()).unwrap();
                    let t = &t;
                    s.spawn(move || {
                        store
                            .redeem(TokenKind::Enroll, &t.id, &t.secret, now)
                            .is_ok()
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap())
                .filter(|ok| *ok)
                .count()
        });
        assert_eq!(ok, 3);
    }
}
