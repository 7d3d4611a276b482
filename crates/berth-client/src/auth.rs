//! Credentials: Docker's config file (`auths`, `credsStore`, `credHelpers`).

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine;
use serde::Deserialize;

/// A user name and password (or token) for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User name.
    pub username: String,
    /// Password or token.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, ***)", self.username)
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default, rename = "identitytoken")]
    identity_token: Option<String>,
}

/// `~/.docker/config.json` (or `$DOCKER_CONFIG/config.json`), as far as credentials go.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct DockerConfig {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: HashMap<String, String>,
}

impl DockerConfig {
    /// The config of this user, empty when there is none (or it cannot be read).
    pub fn load() -> DockerConfig {
        let dir = std::env::var_os("DOCKER_CONFIG")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker")));
        dir.map(|d| DockerConfig::load_from(&d.join("config.json")))
            .unwrap_or_default()
    }

    /// Read a given config file (empty on error).
    pub fn load_from(path: &Path) -> DockerConfig {
        match std::fs::read(path) {
            Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
                tracing::warn!(path = %path.display(), error = %e, "Docker config not understood; using no credentials from it");
                DockerConfig::default()
            }),
            Err(_) => DockerConfig::default(),
        }
    }

    /// Credentials for `registry` (as written in references: `docker.io`, `host:port`).
    pub fn credentials(&self, registry: &str) -> Option<Credentials> {
        let keys: Vec<String> = if registry == berth_oci::DOCKER_HUB {
            vec![
                "https://index.docker.io/v1/".into(),
                "index.docker.io".into(),
                "docker.io".into(),
                "registry-1.docker.io".into(),
            ]
        } else {
            vec![
                registry.to_string(),
                format!("https://{registry}"),
                format!("http://{registry}"),
            ]
        };
        if let Some(helper) = keys.iter().find_map(|k| self.cred_helpers.get(k)) {
            return run_helper(helper, &keys[0]);
        }
        for k in &keys {
            if let Some(c) = self.auths.get(k).and_then(decode_entry) {
                return Some(c);
            }
        }
        self.creds_store
            .as_deref()
            .and_then(|h| run_helper(h, &keys[0]))
    }
}

/// The Docker config file berth reads credentials from and `berth login` writes to.
pub fn docker_config_path() -> Option<PathBuf> {
    std::env::var_os("DOCKER_CONFIG")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker")))
        .map(|d| d.join("config.json"))
}

/// Store (`Some`) or remove (`None`) credentials for `registry` in the `auths` of Docker's
/// config file, keeping everything else in it. Written atomically, mode 0600.
pub fn save_credentials(registry: &str, creds: Option<&Credentials>) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = docker_config_path()
        .ok_or_else(|| std::io::Error::other("neither DOCKER_CONFIG nor HOME is set"))?;
    let mut doc: serde_json::Value = match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b)
            .map_err(|e| std::io::Error::other(format!("{}: {e}", path.display())))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => serde_json::json!({}),
        Err(e) => return Err(e),
    };
    let key = if registry == berth_oci::DOCKER_HUB {
        "https://index.docker.io/v1/"
    } else {
        registry
    };
    let obj = doc
        .as_object_mut()
        .ok_or_else(|| std::io::Error::other(format!("{} is not a JSON object", path.display())))?;
    let auths = obj.entry("auths").or_insert_with(|| serde_json::json!({}));
    match creds {
        Some(c) => {
            let auth = base64::engine::general_purpose::STANDARD
                .encode(format!("{}:{}", c.username, c.password));
            auths[key] = serde_json::json!({ "auth": auth });
        }
        None => {
            if let Some(a) = auths.as_object_mut() {
                a.remove(key);
            }
        }
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("json.berth-tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&doc).expect("json"))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

fn decode_entry(e: &AuthEntry) -> Option<Credentials> {
    if let Some(token) = &e.identity_token {
        return Some(Credentials {
            username: "<token>".into(),
            password: token.clone(),
        });
    }
    if let (Some(u), Some(p)) = (&e.username, &e.password) {
        return Some(Credentials {
            username: u.clone(),
            password: p.clone(),
        });
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(e.auth.as_deref()?.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (u, p) = text.split_once(':')?;
    Some(Credentials {
        username: u.to_string(),
        password: p.to_string(),
    })
}

/// `docker-credential-<helper> get`, with the server on stdin.
fn run_helper(helper: &str, server: &str) -> Option<Credentials> {
    let mut child = Command::new(format!("docker-credential-{helper}"))
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| tracing::warn!(helper, error = %e, "credential helper could not run"))
        .ok()?;
    child.stdin.take()?.write_all(server.as_bytes()).ok()?;
    let out = child.wait_with_output().ok()?;
    if !out.status.success() {
        return None;
    }
    #[derive(Deserialize)]
    struct Reply {
        #[serde(rename = "Username")]
        username: String,
        #[serde(rename = "Secret")]
        secret: String,
    }
    let r: Reply = serde_json::from_slice(&out.stdout).ok()?;
    Some(Credentials {
        username: r.username,
        password: r.secret,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auths_entries_and_helpers() {
        let dir = tempfile::tempdir().unwrap();
        let helper = dir.path().join("docker-credential-berthtest");
        std::fs::write(&helper, "#!/bin/sh\nread server\necho \"{\\\"Username\\\":\\\"helper-user\\\",\\\"Secret\\\":\\\"for-$server\\\"}\"\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
        let cfg: DockerConfig = serde_json::from_str(
            r#"{"auths":{"https://index.docker.io/v1/":{"auth":"aHViOnNlY3JldA=="},"reg.internal:5000":{"auth":"dTpwOmFzcw=="}},
                "credHelpers":{"helped.internal":"berthtest"}}"#,
        )
        .unwrap();
        assert_eq!(cfg.credentials("docker.io").unwrap().username, "hub");
        let c = cfg.credentials("reg.internal:5000").unwrap();
        assert_eq!((c.username.as_str(), c.password.as_str()), ("u", "p:ass"));
        assert!(cfg.credentials("other").is_none());
        let path = std::env::var("PATH").unwrap_or_default();
        // SAFETY-free: tests in this module do not read PATH concurrently.
        unsafe { std::env::set_var("PATH", format!("{}:{path}", dir.path().display())) };
        let c = cfg.credentials("helped.internal").unwrap();
        assert_eq!(
            (c.username.as_str(), c.password.as_str()),
            ("helper-user", "for-helped.internal")
        );
        assert!(format!("{c:?}").contains("***"));
    }
}
