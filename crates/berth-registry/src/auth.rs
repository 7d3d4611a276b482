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
//! Without a rules file every authenticated user may do everything. bcrypt is slow by
//! design (tens of milliseconds), and clients send credentials with every request, so a
//! successful check is remembered (keyed by a hash of the credentials, never the
//! password itself) for the life of the process.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Mutex;

use serde::Deserialize;
use sha2::Digest as _;

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

/// Credentials were given and are wrong (unknown user, wrong password, malformed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("authentication failed: check the user name and password")]
pub struct BadCredentials;

/// Who may do what.
#[derive(Debug)]
pub struct Auth {
    users: HashMap<String, String>,
    access: Option<Access>,
    verified: Mutex<HashSet<[u8; 32]>>,
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
                Some((u, h)) if !u.is_empty() && h.starts_with("$2") => {
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

    /// Build from users (name → bcrypt hash) and optional rules.
    pub fn new(users: HashMap<String, String>, access: Option<Access>) -> Auth {
        Auth {
            users,
            access,
            verified: Mutex::new(HashSet::new()),
        }
    }

    /// Check credentials from an `Authorization` header value. `Ok(None)` is anonymous;
    /// an error means credentials were given and are wrong.
    pub fn authenticate(&self, header: Option<&str>) -> Result<Option<String>, BadCredentials> {
        let Some(h) = header else { return Ok(None) };
        let Some(b64) = h
            .strip_prefix("Basic ")
            .or_else(|| h.strip_prefix("basic "))
        else {
            return Err(BadCredentials);
        };
        let raw = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b64.trim())
            .map_err(|_| BadCredentials)?;
        let text = String::from_utf8(raw).map_err(|_| BadCredentials)?;
        let (user, pass) = text.split_once(':').ok_or(BadCredentials)?;
        let key: [u8; 32] = sha2::Sha256::digest(text.as_bytes()).into();
        if self.verified.lock().expect("auth cache").contains(&key) {
            return Ok(Some(user.to_string()));
        }
        let hash = self.users.get(user).ok_or(BadCredentials)?;
        if bcrypt::verify(pass, hash).unwrap_or(false) {
            self.verified.lock().expect("auth cache").insert(key);
            Ok(Some(user.to_string()))
        } else {
            Err(BadCredentials)
        }
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

    #[test]
    fn rules_grant_per_repository() {
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
            auth.authenticate(Some("Basic ZGV2OnB3")),
            Ok(Some("dev".into()))
        );
        assert_eq!(
            auth.authenticate(Some("Basic ZGV2OnB4")),
            Err(BadCredentials)
        );
        assert_eq!(auth.authenticate(None), Ok(None));
    }
}
