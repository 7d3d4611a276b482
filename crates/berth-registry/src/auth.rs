//! Basic authentication: [`Auth`] keeps logins cheap and hard to guess (the rules below),
//! and asks a [`Credentials`] whether a user name and password are good and what their
//! holder may do. berth-registry's own credentials are [`Htpasswd`]: an htpasswd file
//! (bcrypt entries) and per-repository rights from a small TOML file:
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
//! the async worker threads and out of reach of anyone who can send a request; any other
//! [`Credentials`] (the satellite's pull tokens) gets the same protection:
//!
//! - a check runs on tokio's blocking pool, at most [`LoginLimits::workers`] at a time;
//! - a successful check is remembered (keyed by a hash of the credentials, never the
//!   password itself) for the life of the process, since clients send credentials with
//!   every request; credentials that can be revoked ([`Credentials::lasting`] is false)
//!   are checked again on each request, but known good ones take no login attempt;
//! - a failed one is remembered for [`LoginLimits::failure_ttl`], with its reason, so the
//!   same wrong credentials (a misconfigured CI job retrying) cost bcrypt once;
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
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoginError {
    /// Credentials were given and are wrong (unknown user, wrong password, malformed).
    #[error("authentication failed: check the user name and password")]
    BadCredentials,
    /// Credentials were given, are the holder's, and are no longer good (a revoked or
    /// expired token); the message says which and what to do.
    #[error("{0}")]
    Refused(String),
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

/// Where [`Auth`] checks user names and passwords, and who may do what.
///
/// For each request with basic-auth credentials, [`Auth`] calls [`Credentials::verify`]
/// (unless the credentials are known good and [`Credentials::lasting`]), on the blocking
/// pool and behind its throttling; then [`Credentials::allowed`] for the repository and
/// action of the route. Requests without credentials are anonymous.
pub trait Credentials: Send + Sync + std::fmt::Debug + 'static {
    /// Whether `password` is `user`'s. Runs on tokio's blocking pool, at most
    /// [`LoginLimits::workers`] at once, so it may be slow (bcrypt) or read a file.
    /// Refuse with [`LoginError::BadCredentials`] when the password is wrong (say nothing
    /// more), or [`LoginError::Refused`] to tell the holder of good credentials why they
    /// no longer work.
    fn verify(&self, user: &str, password: &str) -> Result<(), LoginError>;

    /// Whether credentials that passed once stay good for the life of the process. When
    /// false (tokens that expire or can be revoked), [`Credentials::verify`] runs on
    /// every request, so it must be cheap.
    fn lasting(&self) -> bool {
        true
    }

    /// Whether `user` (`None`: anonymous) may do `action` on `repository`.
    fn allowed(&self, user: Option<&str>, repository: &str, action: Action) -> bool;

    /// Whether anonymous requests may do anything at all.
    fn anonymous_allowed(&self) -> bool {
        false
    }

    /// The message of the 403 answering an authenticated `user` who may not do `action`
    /// on `repository`.
    fn denied(&self, user: &str, repository: &str, action: Action) -> String {
        format!("user {user:?} may not {action} repository {repository}")
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Action::Pull => "pull",
            Action::Push => "push",
            Action::Delete => "delete",
        })
    }
}

/// Users of an htpasswd file (bcrypt) and rights from an optional rules file.
#[derive(Debug)]
pub struct Htpasswd {
    users: HashMap<String, String>,
    access: Option<Access>,
    /// Checked instead of a user's hash when the user does not exist.
    dummy: String,
}

/// Who may do what: a [`Credentials`] behind the login throttling of this module.
#[derive(Debug)]
pub struct Auth {
    credentials: Arc<dyn Credentials>,
    limits: LoginLimits,
    verified: Mutex<HashSet<[u8; 32]>>,
    failed: Mutex<HashMap<[u8; 32], (Instant, LoginError)>>,
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

impl Htpasswd {
    /// Load an htpasswd file and an optional rules file.
    pub fn load(htpasswd: &Path, rules: Option<&Path>) -> Result<Htpasswd, AuthError> {
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
        Ok(Htpasswd::new(users, access))
    }

    /// From users (name → bcrypt hash) and optional rules. Hashes one random password at
    /// the highest cost among the users' hashes, for unknown users to be checked against.
    pub fn new(users: HashMap<String, String>, access: Option<Access>) -> Htpasswd {
        let cost = users
            .values()
            .filter_map(|h| bcrypt_cost(h))
            .max()
            .unwrap_or(4);
        let secret = uuid::Uuid::new_v4().to_string();
        let dummy = bcrypt::hash(secret, cost).expect("bcrypt with a cost read from a hash");
        Htpasswd {
            users,
            access,
            dummy,
        }
    }
}

impl Credentials for Htpasswd {
    /// Unknown users take the same path as known ones: same hash cost, same time.
    fn verify(&self, user: &str, password: &str) -> Result<(), LoginError> {
        let (hash, known) = match self.users.get(user) {
            Some(h) => (h.as_str(), true),
            None => (self.dummy.as_str(), false),
        };
        match bcrypt::verify(password, hash) {
            Ok(true) if known => Ok(()),
            _ => Err(LoginError::BadCredentials),
        }
    }

    /// Without a rules file every authenticated user may do everything.
    fn allowed(&self, user: Option<&str>, repository: &str, action: Action) -> bool {
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

    fn anonymous_allowed(&self) -> bool {
        self.access.as_ref().is_some_and(|a| {
            a.rule
                .iter()
                .any(|r| r.users.iter().any(|u| u == "anonymous"))
        })
    }
}

impl Auth {
    /// Load an htpasswd file and an optional rules file (see [`Htpasswd::load`]).
    pub fn load(htpasswd: &Path, rules: Option<&Path>) -> Result<Auth, AuthError> {
        Ok(Auth::with_credentials(
            Htpasswd::load(htpasswd, rules)?,
            LoginLimits::default(),
        ))
    }

    /// Build from users (name → bcrypt hash) and optional rules, with default limits.
    pub fn new(users: HashMap<String, String>, access: Option<Access>) -> Auth {
        Auth::with_limits(users, access, LoginLimits::default())
    }

    /// Build from users and rules with explicit login limits.
    pub fn with_limits(
        users: HashMap<String, String>,
        access: Option<Access>,
        limits: LoginLimits,
    ) -> Auth {
        Auth::with_credentials(Htpasswd::new(users, access), limits)
    }

    /// Check logins against `credentials`, within `limits`.
    pub fn with_credentials(credentials: impl Credentials, limits: LoginLimits) -> Auth {
        Auth {
            credentials: Arc::new(credentials),
            workers: Arc::new(Semaphore::new(limits.workers.max(1))),
            limits,
            verified: Mutex::new(HashSet::new()),
            failed: Mutex::new(HashMap::new()),
            buckets: Mutex::new(HashMap::new()),
            waiting: AtomicUsize::new(0),
            checks: AtomicU64::new(0),
        }
    }

    /// How many credential checks ran so far (for htpasswd users each is a bcrypt check,
    /// which costs a blocking thread tens of ms).
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
        if user.is_empty() && pass.is_empty() {
            // What some clients without credentials send after a 401 (skopeo, containers/
            // image): answered as anonymous, so the refusal says "authentication required".
            return Ok(None);
        }
        let key: [u8; 32] = sha2::Sha256::digest(text.as_bytes()).into();
        if self.verified.lock().expect("auth cache").contains(&key) {
            if self.credentials.lasting() {
                return Ok(Some(user.to_string()));
            }
            // Known good but revocable: checked again, without taking an attempt (these
            // credentials were right, so this is no guess).
            return match self.check(user, pass).await {
                Ok(()) => Ok(Some(user.to_string())),
                Err(e @ LoginError::Throttled { .. }) => Err(e),
                Err(e) => {
                    self.verified.lock().expect("auth cache").remove(&key);
                    self.remember_failure(key, e.clone());
                    Err(e)
                }
            };
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
        if let Some(e) = self.failed_recently(&key) {
            return Err(e);
        }
        match self.check(user, pass).await {
            Ok(()) => {
                self.verified.lock().expect("auth cache").insert(key);
                self.give_back(client);
                Ok(Some(user.to_string()))
            }
            Err(e @ LoginError::Throttled { .. }) => {
                self.give_back(client);
                Err(e)
            }
            Err(e) => {
                self.remember_failure(key, e.clone());
                Err(e)
            }
        }
    }

    /// [`Credentials::verify`] on the blocking pool, at most `workers` at once and `queue`
    /// waiting.
    async fn check(&self, user: &str, pass: &str) -> Result<(), LoginError> {
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
            .expect("the check pool is never closed");
        drop(waiting);
        self.checks.fetch_add(1, Ordering::Relaxed);
        // The permit goes with the check: a request dropped mid-check does not free a
        // worker that is still busy.
        let (credentials, user, pass) =
            (self.credentials.clone(), user.to_owned(), pass.to_owned());
        let verify = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            credentials.verify(&user, &pass)
        });
        verify.await.unwrap_or(Err(LoginError::BadCredentials))
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

    /// The refusal of these credentials, if they failed within `failure_ttl`.
    fn failed_recently(&self, key: &[u8; 32]) -> Option<LoginError> {
        let failed = self.failed.lock().expect("failed logins");
        failed
            .get(key)
            .filter(|(until, _)| *until > Instant::now())
            .map(|(_, e)| e.clone())
    }

    fn remember_failure(&self, key: [u8; 32], error: LoginError) {
        let now = Instant::now();
        let mut failed = self.failed.lock().expect("failed logins");
        if failed.len() >= self.limits.max_failures {
            failed.retain(|_, (until, _)| *until > now);
            if failed.len() >= self.limits.max_failures
                && let Some(first) = failed.iter().min_by_key(|(_, (u, _))| *u).map(|(k, _)| *k)
            {
                failed.remove(&first);
            }
        }
        failed.insert(key, (now + self.limits.failure_ttl, error));
    }

    /// Whether `user` (`None`: anonymous) may do `action` on `repository`.
    pub fn allowed(&self, user: Option<&str>, repository: &str, action: Action) -> bool {
        self.credentials.allowed(user, repository, action)
    }

    /// Whether anonymous requests may do anything at all.
    pub fn anonymous_allowed(&self) -> bool {
        self.credentials.anonymous_allowed()
    }

    /// Why authenticated `user` may not do `action` on `repository` (the 403's message).
    pub fn denied(&self, user: &str, repository: &str, action: Action) -> String {
        self.credentials.denied(user, repository, action)
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
        assert_eq!(
            auth.authenticate(Some(&basic("", "")), LOCAL).await,
            Ok(None),
            "empty credentials are anonymous"
        );
    }

    #[tokio::test]
    async fn unknown_user_and_wrong_password_take_the_same_path() {
        let users = HashMap::from([("ci".to_string(), bcrypt::hash("pw", 5).unwrap())]);
        let htpasswd = Htpasswd::new(users, None);
        // The stand-in hash costs what the real ones cost.
        assert_eq!(bcrypt_cost(&htpasswd.dummy), Some(5));
        let auth = Auth::with_credentials(htpasswd, LoginLimits::default());
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

    /// Credentials that can be revoked: one user, pull only.
    #[derive(Debug)]
    struct Revocable {
        revoked: Arc<std::sync::atomic::AtomicBool>,
    }

    impl Credentials for Revocable {
        fn verify(&self, user: &str, password: &str) -> Result<(), LoginError> {
            if (user, password) != ("t", "secret") {
                return Err(LoginError::BadCredentials);
            }
            if self.revoked.load(Ordering::SeqCst) {
                return Err(LoginError::Refused("token t was revoked".into()));
            }
            Ok(())
        }
        fn lasting(&self) -> bool {
            false
        }
        fn allowed(&self, user: Option<&str>, _: &str, action: Action) -> bool {
            user.is_some() && action == Action::Pull
        }
        fn denied(&self, user: &str, _: &str, action: Action) -> String {
            format!("{user} is a pull token: it may not {action}")
        }
    }

    #[tokio::test]
    async fn revocable_credentials_are_checked_each_time_without_spending_attempts() {
        let limits = LoginLimits {
            burst: 2,
            refill: Duration::from_secs(3600),
            ..LoginLimits::default()
        };
        let revoked = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let auth = Auth::with_credentials(
            Revocable {
                revoked: revoked.clone(),
            },
            limits,
        );
        let good = basic("t", "secret");
        // Far more requests than the burst: known good credentials take no attempt.
        for _ in 0..6 {
            assert_eq!(
                auth.authenticate(Some(&good), LOCAL).await,
                Ok(Some("t".into()))
            );
        }
        assert_eq!(auth.bcrypt_checks(), 6, "checked again on every request");
        assert!(auth.allowed(Some("t"), "app", Action::Pull));
        assert!(!auth.allowed(Some("t"), "app", Action::Push));
        assert!(!auth.anonymous_allowed());
        assert_eq!(
            auth.denied("t", "app", Action::Push),
            "t is a pull token: it may not push"
        );

        revoked.store(true, Ordering::SeqCst);
        let refused = Err(LoginError::Refused("token t was revoked".into()));
        assert_eq!(auth.authenticate(Some(&good), LOCAL).await, refused);
        // Remembered with its reason: the next refusal costs no check.
        assert_eq!(auth.authenticate(Some(&good), LOCAL).await, refused);
        assert_eq!(auth.bcrypt_checks(), 7);
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
