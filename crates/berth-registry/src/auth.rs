//! Basic authentication against an htpasswd file (bcrypt entries) and per-repository
//! rights from a small TOML file:
//!
//! ```toml
//! # Rules are checked in order; a user gets the union of the actions of every rule that
//! # names them (or "*" for any authenticated user, "anonymous" for no credentials) and
//! # a repository pattern that matches ("*" matches any characters, '/' included).
//! [[rule]]
//! users = ["ci"]
//! repositories = ["*"]
//! actions = ["pull", "push", "delete"]
//!
//! [[rule]]
//! users = ["*"]
//! repositories = ["team/*"]
//! actions = ["pull"]
//! ```
//!
//! Without a rules file every authenticated user may do everything.
//!
//! bcrypt is slow by design (tens of milliseconds at cost 10), so it is kept away from
//! the async worker threads and out of reach of anyone who can send a request:
//!
//! - a check runs on tokio's blocking pool, at most [`LoginLimits::workers`] at a time;
//! - a successful check is remembered (keyed by a hash of the credentials, never the
//!   password itself) for the life of the process, since clients send credentials with
//!   every request;
//! - a failed one is remembered for [`LoginLimits::failure_ttl`], so the same wrong
//!   credentials (a misconfigured CI job retrying) cost bcrypt once;
//! - each client address has a token bucket of login attempts with credentials not yet
//!   known good; when it is empty the answer is 429 with `Retry-After`, before any bcrypt
//!   (and after a second, so that a client ignoring `Retry-After` cannot make the
//!   server answer refusals as fast as it can send);
//! - an unknown user is checked against a dummy hash of the users' cost, so an answer
//!   takes as long whether the name exists or not.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv6Addr};
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;
use sha2::Digest as _;
use tokio::sync::Semaphore;

use crate::error::{Code, RegistryError};
use crate::routes::Config;

/// What a request wants to do to a repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Read manifests, blobs, tags, referrers.
    Pull,
    /// Upload blobs and manifests.
    Push,
    /// Delete manifests, tags and blobs.
    Delete,
}

/// One rule of the rules file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessRule {
    /// User names; `*` is any authenticated user, `anonymous` is no credentials.
    pub users: Vec<String>,
    /// Repository patterns; `*` matches any run of characters.
    pub repositories: Vec<String>,
    /// What they may do.
    pub actions: Vec<Action>,
}

/// The rules file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Access {
    /// Rules, in order.
    #[serde(default)]
    pub rule: Vec<AccessRule>,
}

/// Why auth configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// A file could not be read.
    #[error("read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A line of the htpasswd file is not `user:bcrypt-hash`.
    #[error(
        "{path}:{line}: expected 'user:$2y$...' (a bcrypt entry; create one with 'htpasswd -B')"
    )]
    Htpasswd {
        /// The file.
        path: String,
        /// 1-based line number.
        line: usize,
    },
    /// The rules file is not valid TOML of the expected shape.
    #[error("{path}: {message}")]
    Rules {
        /// The file.
        path: String,
        /// The parser's message, with line and column.
        message: String,
    },
}

/// Why a login was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LoginError {
    /// Credentials were given and are wrong (unknown user, wrong password, malformed).
    #[error("authentication failed: check the user name and password")]
    BadCredentials,
    /// This client address made too many login attempts that failed, or too many
    /// logins wait for a check.
    #[error(
        "too many failed logins from this address; retry in {} s with the right credentials",
        retry_after.as_secs().max(1)
    )]
    Throttled {
        /// When a new attempt will be accepted.
        retry_after: Duration,
    },
}

/// How long a throttled login waits for its 429.
const THROTTLED_HOLD: Duration = Duration::from_secs(1);

/// Bounds on what logins may cost the server.
#[derive(Debug, Clone)]
pub struct LoginLimits {
    /// bcrypt checks that run at once, each on a blocking thread (default: half the
    /// cores, at least one, so request handling keeps the other half).
    pub workers: usize,
    /// Checks allowed to wait for a worker; beyond that a login gets 429.
    pub queue: usize,
    /// Attempts with credentials not yet known good a client address may make in a row.
    pub burst: u32,
    /// One attempt is given back to an address per this interval.
    pub refill: Duration,
    /// How long wrong credentials are remembered (answered 401 without bcrypt).
    pub failure_ttl: Duration,
    /// Client addresses tracked at once (idle ones are forgotten first, then the oldest).
    pub max_clients: usize,
    /// Wrong credentials remembered at once.
    pub max_failures: usize,
}

impl Default for LoginLimits {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        LoginLimits {
            workers: (cores / 2).max(1),
            queue: 256,
            burst: 10,
            refill: Duration::from_secs(2),
            failure_ttl: Duration::from_secs(300),
            max_clients: 4096,
            max_failures: 4096,
        }
    }
}

/// Who may do what.
#[derive(Debug)]
pub struct Auth {
    users: HashMap<String, String>,
    access: Option<Access>,
    /// Checked instead of a user's hash when the user does not exist.
    dummy: String,
    limits: LoginLimits,
    verified: Mutex<HashSet<[u8; 32]>>,
    failed: Mutex<HashMap<[u8; 32], Instant>>,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
    workers: Arc<Semaphore>,
    waiting: AtomicUsize,
    checks: AtomicU64,
}

/// A token bucket of login attempts for one client address.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl Bucket {
    fn refilled(mut self, now: Instant, limits: &LoginLimits) -> Bucket {
        let gained = now.duration_since(self.updated).as_secs_f64() / limits.refill.as_secs_f64();
        self.tokens = (self.tokens + gained).min(f64::from(limits.burst));
        self.updated = now;
        self
    }
}

impl Auth {
    /// Load an htpasswd file and an optional rules file.
    pub fn load(htpasswd: &Path, rules: Option<&Path>) -> Result<Auth, AuthError> {
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|source| AuthError::Read {
                path: p.display().to_string(),
                source,
            })
        };
        let text = read(htpasswd)?;
        let mut users = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            match line.split_once(':') {
                Some((u, h)) if !u.is_empty() && bcrypt_cost(h).is_some() => {
                    users.insert(u.to_string(), h.to_string());
                }
                _ => {
                    return Err(AuthError::Htpasswd {
                        path: htpasswd.display().to_string(),
                        line: i + 1,
                    });
                }
            }
        }
        let access = match rules {
            None => None,
            Some(p) => Some(
                toml::from_str::<Access>(&read(p)?).map_err(|e| AuthError::Rules {
                    path: p.display().to_string(),
                    message: e.to_string(),
                })?,
            ),
        };
        Ok(Auth::new(users, access))
    }

    /// Build from users (name → bcrypt hash) and optional rules, with default limits.
    pub fn new(users: HashMap<String, String>, access: Option<Access>) -> Auth {
        Auth::with_limits(users, access, LoginLimits::default())
    }

    /// Build with explicit login limits. Hashes one random password at the highest cost
    /// among the users' hashes, for unknown users to be checked against.
    pub fn with_limits(
        users: HashMap<String, String>,
        access: Option<Access>,
        limits: LoginLimits,
    ) -> Auth {
        let cost = users
            .values()
            .filter_map(|h| bcrypt_cost(h))
            .max()
            .unwrap_or(4);
        let secret = uuid::Uuid::new_v4().to_string();
        let dummy = bcrypt::hash(secret, cost).expect("bcrypt with a cost read from a hash");
        Auth {
            users,
            access,
            dummy,
            workers: Arc::new(Semaphore::new(limits.workers.max(1))),
            limits,
            verified: Mutex::new(HashSet::new()),
            failed: Mutex::new(HashMap::new()),
            buckets: Mutex::new(HashMap::new()),
            waiting: AtomicUsize::new(0),
            checks: AtomicU64::new(0),
        }
    }

    /// How many bcrypt checks ran so far (each costs a blocking thread tens of ms).
    pub fn bcrypt_checks(&self) -> u64 {
        self.checks.load(Ordering::Relaxed)
    }

    /// Check credentials from an `Authorization` header value sent from `client`.
    /// `Ok(None)` is anonymous; an error means credentials were given and are wrong, or
    /// that `client` must wait before trying again.
    pub async fn authenticate(
        &self,
        header: Option<&str>,
        client: IpAddr,
    ) -> Result<Option<String>, LoginError> {
        let Some(h) = header else { return Ok(None) };
        let Some(b64) = h
            .strip_prefix("Basic ")
            .or_else(|| h.strip_prefix("basic "))
        else {
            return Err(LoginError::BadCredentials);
        };
        let raw = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b64.trim())
            .map_err(|_| LoginError::BadCredentials)?;
        let text = String::from_utf8(raw).map_err(|_| LoginError::BadCredentials)?;
        let (user, pass) = text.split_once(':').ok_or(LoginError::BadCredentials)?;
        let key: [u8; 32] = sha2::Sha256::digest(text.as_bytes()).into();
        if self.verified.lock().expect("auth cache").contains(&key) {
            return Ok(Some(user.to_string()));
        }
        // Take an attempt before anything else, so a burst of parallel requests cannot
        // all get past the limit while the first ones are being checked. It is given
        // back only once the credentials proved good (or no check ran for lack of
        // room): a client that hangs up mid-check still paid for it.
        let client = match self.reserve(client) {
            Ok(key) => key,
            Err(e) => {
                // Hold the refusal a moment: a client that ignores Retry-After and asks
                // again at once would otherwise make the server answer at line rate.
                tokio::time::sleep(THROTTLED_HOLD).await;
                return Err(e);
            }
        };
        if self.failed_recently(&key) {
            return Err(LoginError::BadCredentials);
        }
        // Unknown users take the same path as known ones: same hash cost, same pool.
        let (hash, known) = match self.users.get(user) {
            Some(h) => (h.clone(), true),
            None => (self.dummy.clone(), false),
        };
        let matches = match self.check(pass.to_string(), hash).await {
            Ok(m) => m,
            Err(e) => {
                self.give_back(client);
                return Err(e);
            }
        };
        if matches && known {
            self.verified.lock().expect("auth cache").insert(key);
            self.give_back(client);
            Ok(Some(user.to_string()))
        } else {
            self.remember_failure(key);
            Err(LoginError::BadCredentials)
        }
    }

    /// bcrypt on the blocking pool, at most `workers` at once and `queue` waiting.
    async fn check(&self, pass: String, hash: String) -> Result<bool, LoginError> {
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::Relaxed);
            }
        }
        if self.waiting.fetch_add(1, Ordering::Relaxed) >= self.limits.queue {
            self.waiting.fetch_sub(1, Ordering::Relaxed);
            return Err(LoginError::Throttled {
                retry_after: Duration::from_secs(1),
            });
        }
        let waiting = Waiting(&self.waiting);
        let permit = self
            .workers
            .clone()
            .acquire_owned()
            .await
            .expect("bcrypt pool is never closed");
        drop(waiting);
        self.checks.fetch_add(1, Ordering::Relaxed);
        // The permit goes with the check: a request dropped mid-check does not free a
        // worker that is still busy.
        let verify = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            bcrypt::verify(pass, &hash).unwrap_or(false)
        });
        Ok(verify.await.unwrap_or(false))
    }

    /// Take one attempt from `client`'s bucket, or say when one will be there. Returns
    /// the key the bucket is kept under.
    fn reserve(&self, client: IpAddr) -> Result<IpAddr, LoginError> {
        let client = client_key(client);
        let now = Instant::now();
        let mut buckets = self.buckets.lock().expect("login buckets");
        if !buckets.contains_key(&client) && buckets.len() >= self.limits.max_clients {
            let limits = &self.limits;
            buckets.retain(|_, b| b.refilled(now, limits).tokens < f64::from(limits.burst));
            if buckets.len() >= limits.max_clients
                && let Some(oldest) = buckets
                    .iter()
                    .min_by_key(|(_, b)| b.updated)
                    .map(|(k, _)| *k)
            {
                buckets.remove(&oldest);
            }
        }
        let full = Bucket {
            tokens: f64::from(self.limits.burst),
            updated: now,
        };
        let bucket = buckets.entry(client).or_insert(full);
        *bucket = bucket.refilled(now, &self.limits);
        if bucket.tokens < 1.0 {
            let wait = (1.0 - bucket.tokens) * self.limits.refill.as_secs_f64();
            return Err(LoginError::Throttled {
                retry_after: Duration::from_secs_f64(wait.ceil().max(1.0)),
            });
        }
        bucket.tokens -= 1.0;
        Ok(client)
    }

    fn give_back(&self, client: IpAddr) {
        if let Some(b) = self.buckets.lock().expect("login buckets").get_mut(&client) {
            b.tokens = (b.tokens + 1.0).min(f64::from(self.limits.burst));
        }
    }

    fn failed_recently(&self, key: &[u8; 32]) -> bool {
        let failed = self.failed.lock().expect("failed logins");
        failed.get(key).is_some_and(|until| *until > Instant::now())
    }

    fn remember_failure(&self, key: [u8; 32]) {
        let now = Instant::now();
        let mut failed = self.failed.lock().expect("failed logins");
        if failed.len() >= self.limits.max_failures {
            failed.retain(|_, until| *until > now);
            if failed.len() >= self.limits.max_failures
                && let Some(first) = failed.iter().min_by_key(|(_, u)| **u).map(|(k, _)| *k)
            {
                failed.remove(&first);
            }
        }
        failed.insert(key, now + self.limits.failure_ttl);
    }

    /// Whether `user` (`None`: anonymous) may do `action` on `repository`.
    pub fn allowed(&self, user: Option<&str>, repository: &str, action: Action) -> bool {
        let Some(access) = &self.access else {
            return user.is_some();
        };
        access.rule.iter().any(|r| {
            r.actions.contains(&action)
                && r.users.iter().any(|u| match (u.as_str(), user) {
                    ("anonymous", None) => true,
                    ("*", Some(_)) => true,
                    (name, Some(who)) => name == who,
                    _ => false,
                })
                && r.repositories.iter().any(|p| glob(p, repository))
        })
    }

    /// Whether anonymous requests may do anything at all.
    pub fn anonymous_allowed(&self) -> bool {
        self.access.as_ref().is_some_and(|a| {
            a.rule
                .iter()
                .any(|r| r.users.iter().any(|u| u == "anonymous"))
        })
    }
}

/// A registry that listens beyond loopback with no authentication refuses writes from
/// everyone, unless told to accept anonymous pushes: anyone on the network could
/// otherwise push over or delete every image. On loopback only local users can reach it.
pub(crate) fn writes_refused(config: &Config) -> bool {
    config.auth.is_none() && config.beyond_loopback && !config.allow_anonymous_push
}

const WRITES_REFUSED: &str = "this registry listens beyond loopback without authentication, so it \
     refuses pushes and deletes; enable them with 'berth registry serve --htpasswd FILE' \
     (basic auth) or, on a trusted network, --allow-anonymous-push";

/// The answer to a write refused by [`writes_refused`].
pub(crate) fn writes_refused_error() -> RegistryError {
    RegistryError::new(Code::Denied, WRITES_REFUSED)
}

/// Say at start that writes will be refused, so it is not first learnt from a client.
pub(crate) fn warn_if_writes_refused(config: &Config) {
    if writes_refused(config) && !config.read_only {
        tracing::warn!("{WRITES_REFUSED}");
    }
}

/// The cost of a bcrypt hash (`$2y$10$...` → 10), if it looks like one.
fn bcrypt_cost(hash: &str) -> Option<u32> {
    let mut parts = hash.split('$');
    let (empty, version, cost) = (parts.next()?, parts.next()?, parts.next()?);
    (empty.is_empty() && version.starts_with('2') && cost.len() == 2)
        .then(|| cost.parse().ok())
        .flatten()
}

/// The key a client's login attempts are counted under: its IPv4 address, or the /64
/// of an IPv6 address (one host usually holds a whole /64).
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & !u128::from(u64::MAX))),
        },
    }
}

/// `*` matches any run of characters; everything else matches itself.
fn glob(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob("*", "a/b/c"));
        assert!(glob("team/*", "team/app/x"));
        assert!(!glob("team/*", "other/app"));
        assert!(glob("a*c", "abbbc"));
        assert!(!glob("a*c", "abbbd"));
        assert!(glob("exact", "exact"));
    }

    const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    fn basic(user: &str, pass: &str) -> String {
        let b64 = base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("{user}:{pass}"),
        );
        format!("Basic {b64}")
    }

    #[tokio::test]
    async fn rules_grant_per_repository() {
        let hash = bcrypt::hash("pw", 4).unwrap();
        let users = HashMap::from([("ci".to_string(), hash.clone()), ("dev".to_string(), hash)]);
        let access: Access = toml::from_str(
            r#"
            [[rule]]
            users = ["ci"]
            repositories = ["*"]
            actions = ["pull", "push"]
            [[rule]]
            users = ["*"]
            repositories = ["team/*"]
            actions = ["pull"]
            [[rule]]
            users = ["anonymous"]
            repositories = ["public/*"]
            actions = ["pull"]
            "#,
        )
        .unwrap();
        let auth = Auth::new(users, Some(access));
        assert!(auth.allowed(Some("ci"), "x/y", Action::Push));
        assert!(!auth.allowed(Some("ci"), "x/y", Action::Delete));
        assert!(auth.allowed(Some("dev"), "team/app", Action::Pull));
        assert!(!auth.allowed(Some("dev"), "team/app", Action::Push));
        assert!(auth.allowed(None, "public/a", Action::Pull));
        assert!(!auth.allowed(None, "team/app", Action::Pull));
        assert_eq!(
            auth.authenticate(Some("Basic ZGV2OnB3"), LOCAL).await,
            Ok(Some("dev".into()))
        );
        assert_eq!(
            auth.authenticate(Some("Basic ZGV2OnB4"), LOCAL).await,
            Err(LoginError::BadCredentials)
        );
        assert_eq!(auth.authenticate(None, LOCAL).await, Ok(None));
    }

    #[tokio::test]
    async fn unknown_user_and_wrong_password_take_the_same_path() {
        let users = HashMap::from([("ci".to_string(), bcrypt::hash("pw", 5).unwrap())]);
        let auth = Auth::new(users, None);
        // The stand-in hash costs what the real ones cost.
        assert_eq!(bcrypt_cost(&auth.dummy), Some(5));
        let wrong = auth.authenticate(Some(&basic("ci", "nope")), LOCAL).await;
        assert_eq!(wrong, Err(LoginError::BadCredentials));
        assert_eq!(auth.bcrypt_checks(), 1);
        let unknown = auth
            .authenticate(Some(&basic("ghost", "nope")), LOCAL)
            .await;
        assert_eq!(unknown, Err(LoginError::BadCredentials));
        assert_eq!(
            auth.bcrypt_checks(),
            2,
            "an unknown user costs a bcrypt check too"
        );
    }

    #[tokio::test]
    async fn failures_are_cached_and_rate_limited_per_address() {
        let users = HashMap::from([("ci".to_string(), bcrypt::hash("pw", 4).unwrap())]);
        let limits = LoginLimits {
            burst: 3,
            refill: Duration::from_secs(3600),
            ..LoginLimits::default()
        };
        let auth = Auth::with_limits(users, None, limits);
        let wrong = basic("ci", "wrong");
        for _ in 0..2 {
            let r = auth.authenticate(Some(&wrong), LOCAL).await;
            assert_eq!(r, Err(LoginError::BadCredentials));
        }
        assert_eq!(
            auth.bcrypt_checks(),
            1,
            "the same wrong credentials cost bcrypt once"
        );
        // The third attempt is the last of the burst; the fourth is refused unchecked.
        let other = basic("ci", "other");
        assert_eq!(
            auth.authenticate(Some(&other), LOCAL).await,
            Err(LoginError::BadCredentials)
        );
        let r = auth.authenticate(Some(&basic("ci", "pw")), LOCAL).await;
        assert!(
            matches!(r, Err(LoginError::Throttled { retry_after }) if retry_after >= Duration::from_secs(1)),
            "{r:?}"
        );
        assert_eq!(auth.bcrypt_checks(), 2);
        // Another address has its own bucket, and a good login gives its attempt back.
        let other_host: IpAddr = "127.0.0.2".parse().unwrap();
        for _ in 0..5 {
            let r = auth
                .authenticate(Some(&basic("ci", "pw")), other_host)
                .await;
            assert_eq!(r, Ok(Some("ci".into())));
        }
        // Known good credentials pass even from the throttled address: no check runs.
        assert_eq!(
            auth.authenticate(Some(&basic("ci", "pw")), LOCAL).await,
            Ok(Some("ci".into()))
        );
        assert_eq!(auth.bcrypt_checks(), 3);
    }

    #[test]
    fn client_keys() {
        let k = |s: &str| client_key(s.parse().unwrap()).to_string();
        assert_eq!(k("10.1.2.3"), "10.1.2.3");
        assert_eq!(k("2001:db8:1:2:3:4:5:6"), "2001:db8:1:2::");
        assert_eq!(k("::ffff:10.1.2.3"), "10.1.2.3");
        assert_eq!(bcrypt_cost("$2y$05$abc"), Some(5));
        assert_eq!(bcrypt_cost("plain"), None);
    }
}
