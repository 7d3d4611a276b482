//! Flags, `BERTH_*` environment variables and `config.toml` become one [`Settings`].
//! Precedence: flag, then environment (clap reads `BERTH_*` for each flag), then the
//! config file, then the built-in default.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;

/// `$XDG_CONFIG_HOME/berth/config.toml`, as written by users.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Data directory.
    pub root: Option<PathBuf>,
    /// `[registry]` section.
    #[serde(default)]
    pub registry: RegistryFile,
    /// `[docker]`: delivery into the local Docker daemon.
    #[serde(default)]
    pub docker: DockerFile,
    /// `[registries."host:port"]`: how to reach other registries.
    #[serde(default)]
    pub registries: std::collections::BTreeMap<String, RegistryHost>,
    /// `[build]`: defaults of `berth build`.
    #[serde(default)]
    pub build: BuildFile,
}

/// `[build]` in config.toml.
#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct BuildFile {
    /// Entitlements every build is granted, as with `--allow` (e.g. `["network.host"]`).
    #[serde(default)]
    pub allow: Vec<String>,
}

/// `[docker]` in config.toml.
#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct DockerFile {
    /// Use the registry proxy (default true); false always streams a tar.
    pub registry_proxy: Option<bool>,
    /// Port of the registry proxy on 127.0.0.1 (default: any free port).
    pub registry_proxy_port: Option<u16>,
}

/// `[registries."host:port"]` in config.toml.
#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RegistryHost {
    /// Extra CA certificate (PEM) to trust for this registry.
    pub ca: Option<PathBuf>,
    /// Do not verify its TLS certificate.
    #[serde(default)]
    pub insecure: bool,
    /// Speak plain HTTP to it.
    #[serde(default)]
    pub http: bool,
}

/// `[registry]` in config.toml.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryFile {
    /// Listen address.
    pub addr: Option<String>,
    /// PEM certificate chain.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key.
    pub tls_key: Option<PathBuf>,
    /// htpasswd file with bcrypt entries.
    pub htpasswd: Option<PathBuf>,
    /// Rights file.
    pub access: Option<PathBuf>,
    /// Refuse writes.
    pub read_only: Option<bool>,
    /// Allow deletes (default true).
    pub delete: Option<bool>,
    /// Accept writes without auth beyond loopback.
    pub allow_anonymous_push: Option<bool>,
    /// Connections served at once.
    pub max_connections: Option<usize>,
}

/// Resolved settings shared by every command.
#[derive(Debug)]
pub struct Settings {
    /// Data directory: the store lives here.
    pub root: PathBuf,
    /// The config file as read (empty when absent).
    pub file: FileConfig,
}

fn config_path(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Some(p.to_path_buf());
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("berth/config.toml"))
}

fn default_root() -> PathBuf {
    // SAFETY-free check for root: the effective uid is what decides /var/lib access.
    let is_root = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false);
    if is_root {
        return PathBuf::from("/var/lib/berth");
    }
    std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."))
        .join("berth")
}

impl Settings {
    /// berth's configuration directory (`$XDG_CONFIG_HOME/berth`): enrolled satellites
    /// live in it.
    pub fn config_dir(&self) -> PathBuf {
        config_path(None)
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .unwrap_or_else(|| self.root.join("config"))
    }

    /// A registry client configured from `[registries]` and Docker's credentials.
    pub fn registry_client(&self) -> berth_client::Client {
        berth_client::Client::new(self.registry_config())
    }

    /// The configuration [`Settings::registry_client`] uses.
    pub fn registry_config(&self) -> berth_client::ClientConfig {
        let hosts = self
            .file
            .registries
            .iter()
            .map(|(h, r)| {
                (
                    h.clone(),
                    berth_client::HostOptions {
                        ca: r.ca.clone(),
                        insecure: r.insecure,
                        http: r.http,
                    },
                )
            })
            .collect();
        berth_client::ClientConfig {
            hosts,
            docker_config: berth_client::DockerConfig::load(),
            credentials: Default::default(),
        }
    }

    /// Read the config file (an explicit one must exist) and resolve the root.
    pub fn load(
        root_flag: Option<PathBuf>,
        config_flag: Option<&Path>,
    ) -> anyhow::Result<Settings> {
        let file = match config_path(config_flag) {
            Some(p) if p.exists() || config_flag.is_some() => {
                let text = std::fs::read_to_string(&p)
                    .with_context(|| format!("read config {}", p.display()))?;
                toml::from_str(&text)
                    .with_context(|| format!("config {} is not valid", p.display()))?
            }
            _ => FileConfig::default(),
        };
        let root = root_flag
            .or_else(|| file.root.clone())
            .unwrap_or_else(default_root);
        Ok(Settings { root, file })
    }
}
