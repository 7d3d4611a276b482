//! Flags, `BERTH_*` environment variables and `config.toml` become one [`Settings`].
//!
//! Precedence, for every setting: the flag, then its `BERTH_*` variable (clap reads the
//! variable for the flag, so the two arrive as one value), then `config.toml`, then the
//! built-in default. Commands do not read the file: they ask [`Settings`] for the
//! resolved values of their part, handing over their flags ([`Settings::build`],
//! [`Settings::docker`], [`Settings::registry_serve`], [`Settings::registry_config`]).
//!
//! To add a section `[x]`: an `XFile` struct (what users write: every field optional,
//! unknown keys refused) as a field of [`FileConfig`]; the flags that override it as a
//! clap `XArgs` struct, flattened into the command; and `Settings::x(&self, &XArgs)`
//! returning the resolved value; and its keys to `Settings::provenance`
//! (config_show.rs) so `berth config show` lists them. Values that need parsing
//! (addresses, entitlements) get a type that parses while the file is read, so a bad
//! one is reported with the file, the key and the line.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use berth_build::Entitlement;
use clap::Args;
use serde::{Deserialize, Deserializer};

#[path = "config_show.rs"]
pub mod config_show;

/// `$XDG_CONFIG_HOME/berth/config.toml`, as written by users.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    /// Data directory.
    root: Option<PathBuf>,
    /// `[registry]`: `berth registry serve`.
    #[serde(default)]
    registry: RegistryFile,
    /// `[docker]`: delivery into the local Docker daemon.
    #[serde(default)]
    docker: DockerFile,
    /// `[registries."host:port"]`: how to reach other registries.
    #[serde(default)]
    registries: BTreeMap<String, RegistryHost>,
    /// `[build]`: defaults of `berth build`.
    #[serde(default)]
    build: BuildFile,
    /// `[network]`: proxies and CAs for every part of berth.
    #[serde(default)]
    network: NetworkFile,
}

/// `[network]` in config.toml. Proxies set here win over the environment's; `no_proxy`
/// entries are added to the environment's NO_PROXY (both merged, nothing overwritten).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NetworkFile {
    /// Proxy for http:// URLs.
    http_proxy: Option<String>,
    /// Proxy for https:// URLs.
    https_proxy: Option<String>,
    /// Hosts, `.suffixes`, CIDRs, `host:port` or `*` reached directly.
    #[serde(default)]
    no_proxy: Vec<String>,
    /// PEM bundles trusted besides the system's roots.
    #[serde(default)]
    ca: Vec<PathBuf>,
    /// RUN steps see the host's roots and `ca` (mounted read-only, never in a layer).
    #[serde(default)]
    ca_to_steps: bool,
}

/// `[build]` in config.toml.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct BuildFile {
    /// Entitlements every build is granted, as with `--allow` (e.g. `["network.host"]`).
    #[serde(default, deserialize_with = "parsed")]
    allow: Vec<Entitlement>,
    /// Resolve a base image tag berth's store has against its registry again once the
    /// store's answer is older than this (`"1h"`); unset: never (as `docker build`),
    /// `--pull` always.
    #[serde(default, deserialize_with = "duration")]
    resolve_ttl: Option<Duration>,
}

/// `[docker]` in config.toml.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DockerFile {
    /// Use the registry proxy (default true); false always streams a tar.
    registry_proxy: Option<bool>,
    /// Port of the registry proxy on 127.0.0.1 (default: any free port).
    registry_proxy_port: Option<u16>,
}

/// `[registries."host:port"]` in config.toml.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistryHost {
    /// Extra CA certificate (PEM) to trust for this registry.
    ca: Option<PathBuf>,
    /// Do not verify its TLS certificate.
    #[serde(default)]
    insecure: bool,
    /// Speak plain HTTP to it.
    #[serde(default)]
    http: bool,
    /// Registries (`host[:port]`) holding copies of its images, tried in order before
    /// it when pulling (`[registries."docker.io"] mirrors = ["mirror.corp:5000"]`).
    #[serde(default, deserialize_with = "checked_mirrors")]
    mirrors: Vec<String>,
}

fn checked_mirrors<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|m| berth_client::check_mirror(m).map_err(serde::de::Error::custom))
        .collect()
}

/// `[registry]` in config.toml.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistryFile {
    /// Listen address.
    addr: Option<SocketAddr>,
    /// PEM certificate chain.
    tls_cert: Option<PathBuf>,
    /// PEM private key.
    tls_key: Option<PathBuf>,
    /// htpasswd file with bcrypt entries.
    htpasswd: Option<PathBuf>,
    /// Rights file.
    access: Option<PathBuf>,
    /// Refuse writes.
    read_only: Option<bool>,
    /// Allow deletes (default true).
    delete: Option<bool>,
    /// Accept writes without auth beyond loopback.
    allow_anonymous_push: Option<bool>,
    /// Connections served at once.
    max_connections: Option<usize>,
    /// `[[registry.mirror]]`: upstreams served as read-only namespaces.
    #[serde(default)]
    mirror: Vec<MirrorFile>,
    /// Size cap of the pull-through cache (`"20GB"`); least recently pulled goes first.
    #[serde(default, deserialize_with = "size")]
    mirror_max_size: Option<u64>,
    /// `[registry.storage]`: where content and metadata live (default: the root).
    storage: Option<StorageFile>,
}

/// `[registry.storage]` in config.toml.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum StorageFile {
    /// Under the root, beside the builder's content (the default).
    Filesystem,
    /// An S3-compatible bucket.
    S3(berth_registry::S3Settings),
}

/// One `[[registry.mirror]]` entry as [`Settings::mirror_checks`] gives it to `berth doctor`.
pub struct MirrorCheck {
    /// Its `prefix`.
    pub prefix: String,
    /// Its `upstream` URL.
    pub upstream: String,
    /// The upstream as berth-client names it (`docker.io` for Docker Hub).
    pub registry: String,
    /// Its `ca`.
    pub ca: Option<PathBuf>,
    /// Its `username`.
    pub username: Option<String>,
    /// Its `password_env`.
    pub password_env: Option<String>,
    /// `password_env` names a variable that is not set.
    pub password_unset: bool,
    /// A client for the upstream configured as the cache's is.
    pub client: berth_client::ClientConfig,
}

/// `[[registry.mirror]]` in config.toml: one upstream served by `berth registry serve`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MirrorFile {
    /// Served as `/v2/<prefix>/<repo>`.
    #[serde(deserialize_with = "prefix")]
    prefix: String,
    /// `https://host[:port]` (or `http://`).
    #[serde(deserialize_with = "upstream")]
    upstream: berth_registry::Upstream,
    /// Also served at the root (dockerd's `registry-mirrors`).
    #[serde(default)]
    default: bool,
    /// User name for the upstream.
    username: Option<String>,
    /// The environment variable holding its password or token.
    password_env: Option<String>,
    /// Extra CA (PEM) for the upstream.
    ca: Option<PathBuf>,
    /// Do not verify the upstream's certificate.
    #[serde(default)]
    insecure: bool,
    /// How long a cached tag is served before it is checked upstream (`"10m"`).
    #[serde(default, deserialize_with = "duration")]
    tag_ttl: Option<Duration>,
}

fn prefix<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let p = String::deserialize(d)?;
    berth_registry::check_prefix(&p).map_err(serde::de::Error::custom)?;
    Ok(p)
}

fn upstream<'de, D: Deserializer<'de>>(d: D) -> Result<berth_registry::Upstream, D::Error> {
    berth_registry::Upstream::parse(&String::deserialize(d)?).map_err(serde::de::Error::custom)
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    crate::parse_duration(&String::deserialize(d)?)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

fn size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    crate::build::parse_size(&String::deserialize(d)?)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

/// A list of strings in the file, each parsed with `FromStr`.
fn parsed<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: std::str::FromStr<Err = String>,
{
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|s| s.parse().map_err(serde::de::Error::custom))
        .collect()
}

/// Flags of `berth registry serve` (each overrides `[registry]` in config.toml).
#[derive(Args, Debug)]
pub struct RegistryServeArgs {
    /// Address to listen on [default: 127.0.0.1:5000].
    #[arg(long, env = "BERTH_REGISTRY_ADDR")]
    addr: Option<String>,
    /// TLS certificate chain (PEM); serve HTTPS with --tls-key.
    #[arg(long, env = "BERTH_REGISTRY_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, env = "BERTH_REGISTRY_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// htpasswd file with bcrypt entries ('htpasswd -B'); enables basic auth.
    #[arg(long, env = "BERTH_REGISTRY_HTPASSWD")]
    htpasswd: Option<PathBuf>,
    /// TOML rules giving users pull/push/delete per repository pattern.
    #[arg(long, env = "BERTH_REGISTRY_ACCESS", requires = "htpasswd")]
    access: Option<PathBuf>,
    /// Refuse every write.
    #[arg(long)]
    read_only: bool,
    /// Refuse DELETE of manifests, tags and blobs.
    #[arg(long)]
    no_delete: bool,
    /// Accept pushes and deletes without --htpasswd on an address beyond loopback.
    #[arg(long)]
    allow_anonymous_push: bool,
    /// Connections served at once; more get 503 [default: half of `ulimit -n`, at most 1024].
    #[arg(long, env = "BERTH_REGISTRY_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// Time a client gets to send a request's headers [default: 30s].
    #[arg(long, value_parser = crate::parse_duration)]
    header_timeout: Option<Duration>,
    /// Close connections with no request for this long [default: 2m].
    #[arg(long, value_parser = crate::parse_duration)]
    idle_timeout: Option<Duration>,
}

/// What `berth registry serve` runs with.
#[derive(Debug)]
pub struct RegistryServe {
    /// Listen address.
    pub addr: SocketAddr,
    /// Certificate chain and key: serve HTTPS.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// htpasswd file: basic auth.
    pub htpasswd: Option<PathBuf>,
    /// Rights file (only with `htpasswd`).
    pub access: Option<PathBuf>,
    /// Refuse every write.
    pub read_only: bool,
    /// Allow deletes.
    pub delete: bool,
    /// Accept writes without auth beyond loopback.
    pub allow_anonymous_push: bool,
    /// Connection limit and timeouts.
    pub options: berth_registry::ServeOptions,
    /// The pull-through cache (no mirrors: none). Its `roots` are left to the caller.
    pub mirror: berth_registry::MirrorSettings,
    /// The bucket, with `[registry.storage] kind = "s3"`.
    pub s3: Option<berth_registry::S3Settings>,
}

/// Flags for delivery into the Docker daemon (`berth build --load`, `berth load`); each
/// overrides `[docker]` in config.toml.
#[derive(Args, Clone, Debug)]
pub struct DockerArgs {
    /// Do not use the registry proxy; always stream a tar to the daemon.
    #[arg(long)]
    no_registry_proxy: bool,
    /// Port of the registry proxy on 127.0.0.1 [default: any free port].
    #[arg(long)]
    registry_proxy_port: Option<u16>,
}

/// What `berth build` takes from the settings.
#[derive(Debug, Clone, PartialEq)]
pub struct BuildSettings {
    /// Entitlements granted: `--allow` and `[build] allow`, together.
    pub allow: Vec<Entitlement>,
    /// Proxy variables of berth's environment, for RUN steps (`KEY=value`).
    pub proxy_env: Vec<String>,
    /// `SOURCE_DATE_EPOCH`: the time stamp of reproducible builds.
    pub source_date_epoch: Option<u64>,
    /// `[build] resolve_ttl`: re-resolve stored base image tags older than this.
    pub resolve_ttl: Option<Duration>,
}

/// Resolved settings shared by every command.
#[derive(Debug)]
pub struct Settings {
    /// Data directory: the store lives here.
    pub root: PathBuf,
    /// The config file as read (empty when absent).
    file: FileConfig,
    /// The variables berth reads besides the flags' own (which clap reads):
    /// `SOURCE_DATE_EPOCH` and the proxy variables, as berth found them.
    env: BTreeMap<String, String>,
    /// The config file read, if any (for `berth config show`).
    config_file: Option<PathBuf>,
    /// `--config` (or BERTH_CONFIG) named it.
    config_from_flag: bool,
    /// `--root` (or BERTH_ROOT) gave the root.
    root_from_flag: bool,
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

/// Parse config.toml; an error names the file, the key and its line.
fn parse_file(path: &Path, text: &str) -> anyhow::Result<FileConfig> {
    let e = match toml::from_str(text) {
        Ok(file) => return Ok(file),
        Err(e) => e,
    };
    let Some(span) = e.span() else {
        bail!("config {} is not valid: {}", path.display(), e.message());
    };
    let before = text.get(..span.start).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before[before.rfind('\n').map_or(0, |i| i + 1)..]
        .chars()
        .count()
        + 1;
    let key = toml::de::DeTable::parse(text)
        .ok()
        .and_then(|doc| key_at(doc.get_ref(), &span));
    match key {
        Some(key) => bail!(
            "config {} is not valid: {key} (line {line}, column {column}): {}",
            path.display(),
            e.message()
        ),
        None => bail!(
            "config {} is not valid: line {line}, column {column}: {}",
            path.display(),
            e.message()
        ),
    }
}

/// The dotted key (`registries."host:5000".ca`) whose name or value holds `span`.
fn key_at(table: &toml::de::DeTable, span: &Range<usize>) -> Option<String> {
    let holds = |r: Range<usize>| r.start <= span.start && span.end <= r.end;
    table.iter().find_map(|(k, v)| {
        let name = key_name(k.get_ref());
        if holds(k.span()) {
            return Some(name);
        }
        // A `[section]`'s own span is only its header: look inside it in any case.
        match key_within(v.get_ref(), span) {
            Some(rest) => Some(format!("{name}{rest}")),
            None => holds(v.span()).then_some(name),
        }
    })
}

/// The rest of the key (`.key`, `[2].key`) inside a table or an array of tables.
fn key_within(v: &toml::de::DeValue, span: &Range<usize>) -> Option<String> {
    match v {
        toml::de::DeValue::Table(t) => key_at(t, span).map(|k| format!(".{k}")),
        toml::de::DeValue::Array(items) => items.iter().enumerate().find_map(|(i, item)| {
            key_within(item.get_ref(), span).map(|rest| format!("[{i}]{rest}"))
        }),
        _ => None,
    }
}

fn key_name(k: &str) -> String {
    let bare = !k.is_empty()
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if bare {
        k.to_string()
    } else {
        format!("{k:?}")
    }
}

impl Settings {
    /// berth's configuration directory (`$XDG_CONFIG_HOME/berth`): enrolled satellites
    /// live in it.
    pub fn config_dir(&self) -> PathBuf {
        config_path(None)
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .unwrap_or_else(|| self.root.join("config"))
    }

    /// Read the config file (an explicit one must exist) and resolve the root.
    pub fn load(
        root_flag: Option<PathBuf>,
        config_flag: Option<&Path>,
    ) -> anyhow::Result<Settings> {
        let mut config_file = None;
        let file = match config_path(config_flag) {
            Some(p) if p.exists() || config_flag.is_some() => {
                let text = std::fs::read_to_string(&p)
                    .with_context(|| format!("read config {}", p.display()))?;
                let parsed = parse_file(&p, &text)?;
                config_file = Some(p);
                parsed
            }
            _ => FileConfig::default(),
        };
        let env = ["SOURCE_DATE_EPOCH"]
            .iter()
            .chain(berth_build::PROXY_ARGS.iter())
            .filter_map(|k| Some((k.to_string(), std::env::var(k).ok()?)))
            .collect();
        let root_from_flag = root_flag.is_some();
        Ok(Settings {
            config_file,
            config_from_flag: config_flag.is_some(),
            root_from_flag,
            ..Settings::resolve(root_flag, file, env)
        })
    }

    fn resolve(
        root_flag: Option<PathBuf>,
        file: FileConfig,
        env: BTreeMap<String, String>,
    ) -> Settings {
        let root = root_flag
            .or_else(|| file.root.clone())
            .unwrap_or_else(default_root);
        Settings {
            root,
            file,
            env,
            config_file: None,
            config_from_flag: false,
            root_from_flag: false,
        }
    }

    /// A registry client configured from `[registries]` and Docker's credentials.
    pub fn registry_client(&self) -> berth_client::Client {
        berth_client::Client::new(self.registry_config())
    }

    /// [`Settings::registry_client`] that remembers under the root which scheme (HTTPS or
    /// HTTP) each registry on this machine answered on, for builds and pulls, which run
    /// often: the next one asks it first instead of trying HTTPS every time.
    pub fn remembering_registry_client(&self) -> berth_client::Client {
        self.registry_client()
            .with_scheme_memory(self.root.join("resolved").join("_schemes"))
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
                        tls: None,
                        mirrors: r.mirrors.clone(),
                    },
                )
            })
            .collect();
        berth_client::ClientConfig {
            hosts,
            docker_config: berth_client::DockerConfig::load(),
            credentials: Default::default(),
            network: self.network(),
        }
    }

    /// The one network configuration: the environment's proxies and NO_PROXY, with
    /// `[network]` of config.toml on top.
    pub fn network(&self) -> berth_net::Network {
        let n = &self.file.network;
        berth_net::Network {
            proxies: berth_net::Proxies::from_env_with(&|k| self.env.get(k).cloned()).merge(
                n.http_proxy.as_deref(),
                n.https_proxy.as_deref(),
                &n.no_proxy,
            ),
            ca_bundles: n.ca.clone(),
            ca_to_steps: n.ca_to_steps,
        }
    }

    /// `berth build`'s settings, with its `--allow` flags.
    pub fn build(&self, allow: &[Entitlement]) -> anyhow::Result<BuildSettings> {
        let mut all: Vec<Entitlement> = allow
            .iter()
            .chain(&self.file.build.allow)
            .copied()
            .collect();
        all.sort();
        all.dedup();
        let source_date_epoch =
            match self.env.get("SOURCE_DATE_EPOCH") {
                Some(v) => Some(v.trim().parse::<u64>().with_context(|| {
                    format!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds")
                })?),
                None => None,
            };
        // HTTP(S)_PROXY and NO_PROXY as the network configuration resolves them (both
        // cases, lists merged); FTP_PROXY and ALL_PROXY as the environment has them.
        let mut proxy_env = self.network().proxies.step_env();
        proxy_env.extend(
            ["FTP_PROXY", "ftp_proxy", "ALL_PROXY", "all_proxy"]
                .iter()
                .filter_map(|k| Some(format!("{k}={}", self.env.get(*k)?))),
        );
        Ok(BuildSettings {
            allow: all,
            proxy_env,
            source_date_epoch,
            resolve_ttl: self.file.build.resolve_ttl,
        })
    }

    /// How images reach the Docker daemon.
    pub fn docker(&self, flags: &DockerArgs) -> berth_docker::LoadOptions {
        let file = &self.file.docker;
        berth_docker::LoadOptions {
            no_registry_proxy: flags.no_registry_proxy || file.registry_proxy == Some(false),
            proxy_port: flags
                .registry_proxy_port
                .or(file.registry_proxy_port)
                .unwrap_or(0),
        }
    }

    /// What `berth registry serve` runs with.
    pub fn registry_serve(&self, flags: &RegistryServeArgs) -> anyhow::Result<RegistryServe> {
        let file = &self.file.registry;
        let addr = match &flags.addr {
            Some(a) => a
                .parse()
                .with_context(|| format!("--addr {a:?} is not host:port"))?,
            None => file
                .addr
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 5000))),
        };
        let tls_cert = flags.tls_cert.clone().or_else(|| file.tls_cert.clone());
        let tls_key = flags.tls_key.clone().or_else(|| file.tls_key.clone());
        let htpasswd = flags.htpasswd.clone().or_else(|| file.htpasswd.clone());
        let access = flags.access.clone().or_else(|| file.access.clone());
        if access.is_some() && htpasswd.is_none() {
            bail!(
                "an access rules file needs --htpasswd: rules name users, and users need passwords"
            );
        }
        let tls = match (tls_cert, tls_key) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => bail!("TLS needs both a certificate and a key (--tls-cert and --tls-key)"),
        };
        let mirror = self.mirrors(&|k| std::env::var(k).ok())?;
        let s3 = self.registry_s3().cloned();
        if s3.is_some() && !mirror.mirrors.is_empty() {
            bail!(
                "[[registry.mirror]] is not supported with [registry.storage] kind = \"s3\": \
                 serve mirrors from a registry on the local file system"
            );
        }
        let mut options = berth_registry::ServeOptions::default();
        if let Some(n) = flags.max_connections.or(file.max_connections) {
            options.max_connections = n;
        }
        if let Some(t) = flags.header_timeout {
            options.header_read_timeout = t;
        }
        if let Some(t) = flags.idle_timeout {
            options.idle_timeout = t;
        }
        Ok(RegistryServe {
            addr,
            tls,
            htpasswd,
            access,
            read_only: flags.read_only || file.read_only.unwrap_or(false),
            delete: !flags.no_delete && file.delete.unwrap_or(true),
            allow_anonymous_push: flags.allow_anonymous_push
                || file.allow_anonymous_push.unwrap_or(false),
            options,
            mirror,
            s3,
        })
    }

    /// The files replicas of the registry in a cluster read (`berth registry
    /// manifests`), by name, for one Secret mounted at `dir`: `config_key` is a
    /// config.toml with this machine's `[registry.storage]` (it must be S3: replicas
    /// share the bucket), the `[registry]` settings that matter there, and `[network]`
    /// from the file (not the environment: that is this machine's); then the files it
    /// names, copied: the S3 credentials (`credentials_file`, else AWS_ACCESS_KEY_ID and
    /// AWS_SECRET_ACCESS_KEY written as one; none on AWS without keys, where the pods'
    /// own identity signs), htpasswd, access rules and CA bundles.
    pub fn registry_replica_files(
        &self,
        dir: &str,
        config_key: &str,
        tls: Option<(&Path, &Path)>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> anyhow::Result<BTreeMap<String, String>> {
        let where_ = || {
            self.config_file
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "config.toml".into())
        };
        let Some(s3) = self.registry_s3() else {
            bail!(
                "replicas of the registry share one S3 bucket: set [registry.storage] kind = \"s3\" \
                 (bucket, endpoint, region) in {}, or name a file with --config",
                where_()
            );
        };
        let read = |what: &str, p: &Path| {
            std::fs::read_to_string(p).with_context(|| format!("read {what} {}", p.display()))
        };
        let mut files = BTreeMap::new();
        let mut storage = toml::Table::new();
        storage.insert("kind".into(), "s3".into());
        storage.insert("bucket".into(), s3.bucket.clone().into());
        if !s3.prefix.is_empty() {
            storage.insert("prefix".into(), s3.prefix.clone().into());
        }
        for (k, v) in [("endpoint", &s3.endpoint), ("region", &s3.region)] {
            if let Some(v) = v {
                storage.insert(k.into(), v.clone().into());
            }
        }
        if let Some(p) = s3.path_style {
            storage.insert("path_style".into(), p.into());
        }
        if s3.redirect {
            storage.insert("redirect".into(), true.into());
        }
        let credentials = match (&s3.credentials_file, env("AWS_ACCESS_KEY_ID")) {
            (Some(file), _) => {
                if let Some(p) = &s3.profile {
                    storage.insert("profile".into(), p.clone().into());
                }
                Some(read("[registry.storage] credentials_file", file)?)
            }
            (None, Some(key)) => {
                let secret = env("AWS_SECRET_ACCESS_KEY")
                    .context("AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not")?;
                let mut text = format!(
                    "[default]\naws_access_key_id = {key}\naws_secret_access_key = {secret}\n"
                );
                if let Some(t) = env("AWS_SESSION_TOKEN") {
                    text.push_str(&format!("aws_session_token = {t}\n"));
                }
                Some(text)
            }
            (None, None) if s3.endpoint.is_some() => bail!(
                "no S3 credentials for the replicas: set AWS_ACCESS_KEY_ID and \
                 AWS_SECRET_ACCESS_KEY, or [registry.storage] credentials_file in {}",
                where_()
            ),
            (None, None) => None,
        };
        if let Some(c) = credentials {
            storage.insert(
                "credentials_file".into(),
                format!("{dir}/credentials").into(),
            );
            files.insert("credentials".to_owned(), c);
        }
        let r = &self.file.registry;
        let mut registry = toml::Table::new();
        if let Some(h) = &r.htpasswd {
            files.insert("htpasswd".to_owned(), read("[registry] htpasswd", h)?);
            registry.insert("htpasswd".into(), format!("{dir}/htpasswd").into());
        }
        if let Some(a) = &r.access {
            files.insert("access.toml".to_owned(), read("[registry] access", a)?);
            registry.insert("access".into(), format!("{dir}/access.toml").into());
        }
        for (k, v) in [
            ("read_only", r.read_only),
            ("delete", r.delete),
            ("allow_anonymous_push", r.allow_anonymous_push),
        ] {
            if let Some(v) = v {
                registry.insert(k.into(), v.into());
            }
        }
        if let Some(n) = r.max_connections {
            registry.insert("max_connections".into(), (n as i64).into());
        }
        // TLS: the given pair, else this machine's [registry] tls_cert/tls_key; the
        // replicas read them as `berth registry serve` reads its own.
        let tls = match (tls, &r.tls_cert, &r.tls_key) {
            (Some((c, k)), _, _) => {
                Some((c.to_path_buf(), k.to_path_buf(), "--tls-cert/--tls-key"))
            }
            (None, Some(c), Some(k)) => Some((c.clone(), k.clone(), "[registry] tls_cert/tls_key")),
            (None, None, None) => None,
            (None, _, _) => bail!(
                "[registry] in {}: TLS needs both tls_cert and tls_key",
                where_()
            ),
        };
        if let Some((cert, key, what)) = tls {
            for (name, path, pem) in [
                ("tls.crt", &cert, "CERTIFICATE"),
                ("tls.key", &key, "PRIVATE KEY"),
            ] {
                let text = read(what, path)?;
                if !text.contains("-----BEGIN ") || !text.contains(pem) {
                    bail!("{what}: {} holds no PEM {pem}", path.display());
                }
                files.insert(name.to_owned(), text);
            }
            registry.insert("tls_cert".into(), format!("{dir}/tls.crt").into());
            registry.insert("tls_key".into(), format!("{dir}/tls.key").into());
        }
        registry.insert("storage".into(), storage.into());
        let mut top = toml::Table::new();
        top.insert("registry".into(), registry.into());
        let n = &self.file.network;
        let mut network = toml::Table::new();
        for (k, v) in [
            ("http_proxy", &n.http_proxy),
            ("https_proxy", &n.https_proxy),
        ] {
            if let Some(v) = v {
                network.insert(k.into(), v.clone().into());
            }
        }
        if !n.no_proxy.is_empty() {
            network.insert("no_proxy".into(), n.no_proxy.clone().into());
        }
        let mut cas = Vec::new();
        for (i, ca) in n.ca.iter().enumerate() {
            let key = format!("ca-{i}.pem");
            files.insert(key.clone(), read("[network] ca", ca)?);
            cas.push(format!("{dir}/{key}"));
        }
        if !cas.is_empty() {
            network.insert("ca".into(), cas.into());
        }
        if !network.is_empty() {
            top.insert("network".into(), network.into());
        }
        files.insert(
            config_key.to_owned(),
            format!(
                "# berth registry replicas (berth registry manifests from {})\n{}",
                where_(),
                toml::to_string(&top).context("write the replicas' config.toml")?
            ),
        );
        Ok(files)
    }

    /// The bucket of `[registry.storage] kind = "s3"`, if so configured.
    pub fn registry_s3(&self) -> Option<&berth_registry::S3Settings> {
        match &self.file.registry.storage {
            Some(StorageFile::S3(s)) => Some(s),
            _ => None,
        }
    }

    /// The prefixes of `[[registry.mirror]]` and `[registry] mirror_max_size`, for
    /// `berth registry gc`'s eviction (`None` without a cap).
    pub fn mirror_cap(&self) -> Option<(Vec<String>, u64)> {
        let file = &self.file.registry;
        let max = file.mirror_max_size?;
        Some((file.mirror.iter().map(|m| m.prefix.clone()).collect(), max))
    }

    /// Each `[[registry.mirror]]` as `berth doctor` probes its upstream: a client
    /// configured the way the pull-through cache's is (the entry's CA, insecure, plain
    /// HTTP and credentials; Docker's without a user name), even when the entry is
    /// incomplete, so that the doctor can name what is missing.
    pub fn mirror_checks(&self, env: &dyn Fn(&str) -> Option<String>) -> Vec<MirrorCheck> {
        self.file
            .registry
            .mirror
            .iter()
            .map(|m| {
                let password = m.password_env.as_deref().and_then(env);
                let registry = m.upstream.registry.clone();
                // The client the cache itself would build, so doctor probes what serve uses.
                let mut one =
                    berth_registry::MirrorConfig::new(m.prefix.clone(), m.upstream.clone());
                one.ca = m.ca.clone();
                one.insecure = m.insecure;
                if password.is_some() {
                    one.username = m.username.clone();
                    one.password = password.clone();
                }
                let config = berth_registry::upstream_client_config(
                    &[one],
                    self.network(),
                    berth_client::DockerConfig::load(),
                );
                MirrorCheck {
                    prefix: m.prefix.clone(),
                    upstream: m.upstream.url.clone(),
                    registry,
                    ca: m.ca.clone(),
                    username: m.username.clone(),
                    password_env: m.password_env.clone(),
                    password_unset: m.password_env.is_some() && password.is_none(),
                    client: config,
                }
            })
            .collect()
    }

    /// `[[registry.mirror]]` resolved: passwords read from their variables (`env`).
    fn mirrors(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> anyhow::Result<berth_registry::MirrorSettings> {
        let file = &self.file.registry;
        let mut mirrors = Vec::new();
        for m in &file.mirror {
            let password = match &m.password_env {
                Some(var) => Some(env(var).with_context(|| {
                    format!(
                        "mirror {:?}: password_env names {var}, which is not set; export it \
                         before `berth registry serve`",
                        m.prefix
                    )
                })?),
                None => None,
            };
            if m.username.is_some() != password.is_some() {
                bail!(
                    "mirror {:?}: give both username and password_env, or neither (then Docker's \
                     credentials for {} are used)",
                    m.prefix,
                    m.upstream.url
                );
            }
            mirrors.push(berth_registry::MirrorConfig {
                prefix: m.prefix.clone(),
                upstream: m.upstream.clone(),
                default: m.default,
                username: m.username.clone(),
                password,
                ca: m.ca.clone(),
                insecure: m.insecure,
                tag_ttl: m.tag_ttl.unwrap_or(berth_registry::DEFAULT_TAG_TTL),
            });
        }
        berth_registry::check_mirrors(&mirrors)
            .map_err(|e| anyhow::anyhow!("[[registry.mirror]]: {e}"))?;
        Ok(berth_registry::MirrorSettings {
            mirrors,
            max_bytes: file.mirror_max_size,
            network: self.network(),
            docker_config: berth_client::DockerConfig::load(),
            roots: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use std::sync::Mutex;

    /// Held by every test that parses flags: some set `BERTH_*` variables, which clap
    /// reads while parsing.
    static ENV_LOCK: Mutex<()> = Mutex::new(());

    #[derive(Parser)]
    struct Serve {
        #[command(flatten)]
        flags: RegistryServeArgs,
    }

    #[derive(Parser)]
    struct Docker {
        #[command(flatten)]
        flags: DockerArgs,
    }

    fn settings(file: &str) -> Settings {
        settings_env(file, &[])
    }

    fn settings_env(file: &str, env: &[(&str, &str)]) -> Settings {
        let file = parse_file(Path::new("/etc/berth/config.toml"), file).unwrap();
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::resolve(Some("/srv/berth".into()), file, env)
    }

    /// Parse `berth registry serve` flags with `env` set, as clap sees them.
    fn serve_flags(args: &[&str], env: &[(&str, &str)]) -> RegistryServeArgs {
        let _lock = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        for (k, v) in env {
            // SAFETY: the tests that read these variables (through clap) hold ENV_LOCK,
            // and nothing else in this test binary reads them.
            unsafe { std::env::set_var(k, v) };
        }
        let parsed = Serve::try_parse_from(std::iter::once("serve").chain(args.iter().copied()));
        for (k, _) in env {
            // SAFETY: as above.
            unsafe { std::env::remove_var(k) };
        }
        parsed.unwrap().flags
    }

    #[test]
    fn flag_beats_env_beats_file_beats_default() {
        const FILE: &str = "[registry]\naddr = \"127.0.0.1:7000\"\nmax_connections = 30\n";
        let env = [
            ("BERTH_REGISTRY_ADDR", "127.0.0.1:8000"),
            ("BERTH_REGISTRY_MAX_CONNECTIONS", "40"),
        ];
        let flags = ["--addr", "127.0.0.1:9000", "--max-connections", "50"];

        let default = settings("").registry_serve(&serve_flags(&[], &[])).unwrap();
        assert_eq!(default.addr, "127.0.0.1:5000".parse().unwrap());
        assert_eq!(
            default.options.max_connections,
            berth_registry::ServeOptions::default().max_connections
        );

        let file = settings(FILE)
            .registry_serve(&serve_flags(&[], &[]))
            .unwrap();
        assert_eq!(file.addr, "127.0.0.1:7000".parse().unwrap());
        assert_eq!(file.options.max_connections, 30);

        let env_over_file = settings(FILE)
            .registry_serve(&serve_flags(&[], &env))
            .unwrap();
        assert_eq!(env_over_file.addr, "127.0.0.1:8000".parse().unwrap());
        assert_eq!(env_over_file.options.max_connections, 40);

        let flag_over_env = settings(FILE)
            .registry_serve(&serve_flags(&flags, &env))
            .unwrap();
        assert_eq!(flag_over_env.addr, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(flag_over_env.options.max_connections, 50);
    }

    #[test]
    fn registry_switches_and_paths() {
        let file = "[registry]\nread_only = true\ndelete = false\nhtpasswd = \"/etc/h\"\n\
                    tls_cert = \"/etc/c.pem\"\ntls_key = \"/etc/k.pem\"\n";
        let s = settings(file)
            .registry_serve(&serve_flags(&["--htpasswd", "/flag/h"], &[]))
            .unwrap();
        assert!(s.read_only);
        assert!(!s.delete);
        assert!(!s.allow_anonymous_push);
        assert_eq!(s.htpasswd, Some(PathBuf::from("/flag/h")));
        assert_eq!(
            s.tls,
            Some((PathBuf::from("/etc/c.pem"), PathBuf::from("/etc/k.pem")))
        );

        let d = settings("").registry_serve(&serve_flags(&[], &[])).unwrap();
        assert!(!d.read_only && d.delete && d.tls.is_none() && d.htpasswd.is_none());
        let flags = [
            "--no-delete",
            "--allow-anonymous-push",
            "--idle-timeout",
            "5s",
        ];
        let f = settings("")
            .registry_serve(&serve_flags(&flags, &[]))
            .unwrap();
        assert!(!f.delete && f.allow_anonymous_push);
        assert_eq!(f.options.idle_timeout, Duration::from_secs(5));

        // Half a TLS pair from the file, or rules without passwords, are refused.
        let err = settings("[registry]\ntls_key = \"/etc/k.pem\"\n")
            .registry_serve(&serve_flags(&[], &[]))
            .unwrap_err();
        assert!(err.to_string().contains("--tls-cert"), "{err}");
        let err = settings("[registry]\naccess = \"/etc/a.toml\"\n")
            .registry_serve(&serve_flags(&[], &[]))
            .unwrap_err();
        assert!(err.to_string().contains("--htpasswd"), "{err}");
        let err = settings("")
            .registry_serve(&serve_flags(&["--addr", "nowhere"], &[]))
            .unwrap_err();
        assert!(err.to_string().contains("--addr \"nowhere\""), "{err}");
    }

    #[test]
    fn docker_delivery_flag_beats_file_beats_default() {
        let parse = |args: &[&str]| {
            let _lock = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
            Docker::try_parse_from(std::iter::once("load").chain(args.iter().copied()))
                .unwrap()
                .flags
        };
        let d = settings("").docker(&parse(&[]));
        assert!(!d.no_registry_proxy);
        assert_eq!(d.proxy_port, 0);
        let file = "[docker]\nregistry_proxy = false\nregistry_proxy_port = 5001\n";
        let f = settings(file).docker(&parse(&[]));
        assert!(f.no_registry_proxy);
        assert_eq!(f.proxy_port, 5001);
        let file_on = "[docker]\nregistry_proxy = true\nregistry_proxy_port = 5001\n";
        let flags = parse(&["--no-registry-proxy", "--registry-proxy-port", "5002"]);
        let g = settings(file_on).docker(&flags);
        assert!(g.no_registry_proxy);
        assert_eq!(g.proxy_port, 5002);
    }

    #[test]
    fn build_settings_join_flags_file_and_environment() {
        let host = Entitlement::NetworkHost;
        let b = settings("").build(&[]).unwrap();
        assert_eq!(
            b,
            BuildSettings {
                allow: vec![],
                proxy_env: vec![],
                source_date_epoch: None,
                resolve_ttl: None,
            }
        );
        assert_eq!(settings("").build(&[host]).unwrap().allow, [host]);
        let file = "[build]\nallow = [\"network.host\"]\n";
        assert_eq!(settings(file).build(&[]).unwrap().allow, [host]);
        let ttl = "[build]\nresolve_ttl = \"90m\"\n";
        assert_eq!(
            settings(ttl).build(&[]).unwrap().resolve_ttl,
            Some(Duration::from_secs(90 * 60))
        );
        assert_eq!(settings(file).build(&[host]).unwrap().allow, [host]);

        let env = [
            ("SOURCE_DATE_EPOCH", " 1700000000 "),
            ("HTTPS_PROXY", "http://proxy:3128"),
        ];
        let b = settings_env("", &env).build(&[]).unwrap();
        assert_eq!(b.source_date_epoch, Some(1_700_000_000));
        // Steps get both cases, as Docker passes them.
        assert_eq!(
            b.proxy_env,
            [
                "HTTPS_PROXY=http://proxy:3128",
                "https_proxy=http://proxy:3128"
            ]
        );
        // [network] wins for proxies and adds to NO_PROXY; the registry client and the
        // steps see the same result.
        let file = "[network]\nhttps_proxy = \"http://file:8080\"\nno_proxy = [\"10.0.0.0/8\", \".corp\"]\n";
        let s = settings_env(
            file,
            &[
                ("HTTPS_PROXY", "http://env:3128"),
                ("no_proxy", "localhost"),
            ],
        );
        let net = s.network();
        assert_eq!(net.proxies.https.as_deref(), Some("http://file:8080"));
        assert_eq!(
            net.proxies.no_proxy.entries(),
            ["localhost", "10.0.0.0/8", ".corp"]
        );
        let b = s.build(&[]).unwrap();
        assert!(
            b.proxy_env
                .contains(&"NO_PROXY=localhost,10.0.0.0/8,.corp".to_string())
        );
        assert!(
            b.proxy_env
                .contains(&"https_proxy=http://file:8080".to_string())
        );
        assert_eq!(
            s.registry_config()
                .network
                .proxies
                .proxy_for("https", "10.1.1.1", 443),
            None
        );
        let err = settings_env("", &[("SOURCE_DATE_EPOCH", "yesterday")])
            .build(&[])
            .unwrap_err();
        assert!(
            err.to_string().contains("SOURCE_DATE_EPOCH=\"yesterday\""),
            "{err}"
        );
    }

    #[test]
    fn registry_mirrors_reach_the_client_config() {
        let file = "[registries.\"docker.io\"]\nmirrors = [\"mirror.corp:5000\", \"m2.corp\"]\n\
                    [registries.\"mirror.corp:5000\"]\nhttp = true\n";
        let hosts = settings(file).registry_config().hosts;
        assert_eq!(hosts["docker.io"].mirrors, ["mirror.corp:5000", "m2.corp"]);
        assert!(hosts["mirror.corp:5000"].http && hosts["mirror.corp:5000"].mirrors.is_empty());
        let err = parse_file(
            Path::new("c.toml"),
            "[registries.\"docker.io\"]\nmirrors = [\"m/path\"]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("registries.\"docker.io\".mirrors (line 2")
                && err.contains("paths on mirrors"),
            "{err}"
        );
    }

    #[test]
    fn registry_mirrors_are_read_with_their_passwords() {
        let file = "[registry]\nmirror_max_size = \"2GB\"\n\
                    [[registry.mirror]]\nprefix = \"hub\"\nupstream = \"https://registry-1.docker.io\"\n\
                    default = true\nusername = \"ci\"\npassword_env = \"HUB_TOKEN\"\ntag_ttl = \"5m\"\n\
                    [[registry.mirror]]\nprefix = \"corp\"\nupstream = \"http://10.0.0.5:5000/\"\n";
        let s = settings(file);
        let m = s
            .mirrors(&|k| (k == "HUB_TOKEN").then(|| "secret".to_string()))
            .unwrap();
        assert_eq!(m.max_bytes, Some(2_000_000_000));
        let (hub, corp) = (&m.mirrors[0], &m.mirrors[1]);
        assert_eq!(hub.upstream.registry, "docker.io");
        assert!(hub.default && !corp.default);
        assert_eq!(hub.password.as_deref(), Some("secret"));
        assert_eq!(hub.tag_ttl, Duration::from_secs(300));
        assert_eq!(corp.upstream.url, "http://10.0.0.5:5000");
        assert!(corp.upstream.http && corp.username.is_none());
        assert_eq!(corp.tag_ttl, berth_registry::DEFAULT_TAG_TTL);
        assert_eq!(
            s.mirror_cap(),
            Some((vec!["hub".to_string(), "corp".to_string()], 2_000_000_000))
        );
        let err = s.mirrors(&|_| None).unwrap_err().to_string();
        assert!(err.contains("HUB_TOKEN, which is not set"), "{err}");

        let err = |text: &str| {
            parse_file(Path::new("c.toml"), text)
                .unwrap_err()
                .to_string()
        };
        let e = err("[[registry.mirror]]\nprefix = \"Hub/x\"\nupstream = \"https://r.example\"\n");
        assert!(
            e.contains("registry.mirror[0].prefix (line 2") && e.contains("one lowercase"),
            "{e}"
        );
        let e = err("[[registry.mirror]]\nprefix = \"hub\"\nupstream = \"r.example\"\n");
        assert!(
            e.contains("registry.mirror[0].upstream (line 3") && e.contains("https://"),
            "{e}"
        );
        let two = "[[registry.mirror]]\nprefix = \"a\"\nupstream = \"https://a.example\"\ndefault = true\n\
                   [[registry.mirror]]\nprefix = \"b\"\nupstream = \"https://b.example\"\ndefault = true\n";
        let e = settings(two).mirrors(&|_| None).unwrap_err().to_string();
        assert!(e.contains("only one mirror"), "{e}");
    }

    #[test]
    fn root_flag_beats_file_beats_default() {
        let file = |text: &str| parse_file(Path::new("c.toml"), text).unwrap();
        let env = BTreeMap::new;
        let flag = Settings::resolve(Some("/flag".into()), file("root = \"/file\""), env());
        assert_eq!(flag.root, Path::new("/flag"));
        let from_file = Settings::resolve(None, file("root = \"/file\""), env());
        assert_eq!(from_file.root, Path::new("/file"));
        assert_eq!(
            Settings::resolve(None, file(""), env()).root,
            default_root()
        );
    }

    #[test]
    fn invalid_config_names_the_file_and_the_key() {
        let path = Path::new("/home/u/.config/berth/config.toml");
        let err = |text: &str| parse_file(path, text).unwrap_err().to_string();
        for (text, key, line, says) in [
            (
                "[docker]\nregistry_proxy = \"no\"\n",
                "docker.registry_proxy",
                2,
                "expected a boolean",
            ),
            (
                "[docker]\nregistry_proxi = true\n",
                "docker.registry_proxi",
                2,
                "unknown field",
            ),
            ("root = 5\n", "root", 1, "expected path string"),
            (
                "\n[registry]\naddr = \"nope\"\n",
                "registry.addr",
                3,
                "socket address",
            ),
            (
                "[build]\nallow = [\"network.everything\"]\n",
                "build.allow",
                2,
                "network.host",
            ),
            (
                "[registries.\"r.internal:5000\"]\ninsecure = 1\n",
                "registries.\"r.internal:5000\".insecure",
                2,
                "expected a boolean",
            ),
            (
                "docker = { registry_proxy_port = 70000 }\n",
                "docker.registry_proxy_port",
                1,
                "u16",
            ),
            ("[dockr]\n", "dockr", 1, "unknown field"),
        ] {
            let e = err(text);
            assert!(
                e.starts_with(&format!("config {} is not valid: ", path.display())),
                "{e}"
            );
            assert!(e.contains(&format!("{key} (line {line}, ")), "{key}: {e}");
            assert!(e.contains(says), "{says}: {e}");
        }
        // Not TOML at all: no key to name, but the file and the place.
        let e = err("[docker\n");
        assert!(
            e.contains("config.toml is not valid: line 1, column 8"),
            "{e}"
        );
    }

    #[test]
    fn keys_inside_arrays_of_tables_are_named() {
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct Rules {
            rule: Vec<Rule>,
        }
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct Rule {
            users: Vec<String>,
        }
        let text = "[[rule]]\nusers = [\"a\"]\n[[rule]]\nusers = \"b\"\n";
        let e = toml::from_str::<Rules>(text).unwrap_err();
        let doc = toml::de::DeTable::parse(text).unwrap();
        let key = key_at(doc.get_ref(), &e.span().unwrap());
        assert_eq!(key.as_deref(), Some("rule[1].users"));
    }

    #[test]
    fn an_explicit_config_file_must_exist() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("none.toml");
        let err = Settings::load(None, Some(&missing)).unwrap_err();
        assert!(format!("{err:#}").contains("none.toml"), "{err:#}");
        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, "[registry]\nread_only = \"yes\"\n").unwrap();
        let err = Settings::load(None, Some(&bad)).unwrap_err().to_string();
        assert!(
            err.contains("bad.toml is not valid: registry.read_only (line 2"),
            "{err}"
        );
    }
}
