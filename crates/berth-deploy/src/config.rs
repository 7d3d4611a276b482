//! The deploy file: the `[deploy]` table of `berth.toml`, parsed with serde and checked
//! into plain values. Every error names the file and the key (`deploy.services.web.ports[0]`).
//!
//! ```toml
//! [deploy]
//! history = 5                       # versions each host keeps
//!
//! [deploy.registry]                 # where `berth deploy` pushes and hosts pull
//! address = "registry.internal:5000"
//! username = "deploy"
//! password_env = "REGISTRY_PASSWORD" # or password_file = "secrets/registry"
//! satellite_address = "registry.berth.svc:5000" # optional: the same registry as a
//!                                   # satellite building the services reaches it
//!
//! [deploy.batch]
//! limit = "50%"                     # or a count of hosts
//! wait = "5s"                       # between batches
//!
//! [deploy.roles.web]
//! hosts = ["web1", "web2", "web3"]  # names given to `berth host add`, or below
//!
//! [deploy.hosts.web3]               # a host without an agent, driven over SSH
//! ssh = "deploy@web3.internal"      # or "ssh://deploy@web3.internal:2222"
//! docker_socket = "/var/run/docker.sock"  # dockerd's socket on the host (default)
//! agent_socket = "/run/berth/agent.sock"  # where berth's agent container listens (default)
//!
//! [deploy.services.app]
//! image = "app:v1"                  # an image of berth's store
//! build = { context = ".", dockerfile = "Dockerfile", target = "prod", args = { A = "1" } }
//! # or build = { earthfile = "+docker" }: `berth deploy` builds it first
//! roles = ["web"]
//! command = ["httpd", "-f", "-p", "80"]
//! env = { GREETING = "hello" }
//! secrets = { API_KEY = { env = "API_KEY" }, DB = { file = "secrets/db" } }
//! volumes = ["/srv/app:/data", "cache:/cache:ro"]
//! ports = ["8080:80"]               # berth's proxy on host port 8080 → container port 80
//! stop_signal = "SIGTERM"
//! stop_timeout = "10s"
//! replicas = 2                      # containers per host (1 to 64), requests in turn
//! health = { path = "/health", interval = "1s", timeout = "2s", retries = 10 }
//!
//! [deploy.services.app.proxy.external]   # the host's own proxy instead of berth's
//! upstream_file = "/etc/nginx/berth/app.conf"
//! template = "server {addr};"       # lines naming {addr}, {ip}, {port} or {replica}: one per replica
//! reload = ["nginx", "-s", "reload"]
//! container = "nginx"               # optional: the proxy runs in this container
//! drain = "5s"                      # old containers live on this long after the reload
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::DeployError;

/// Versions a host keeps when the file does not say.
pub const DEFAULT_HISTORY: usize = 5;

/// A checked deploy file.
#[derive(Debug, Clone)]
pub struct DeployFile {
    /// The file it came from (relative secret files are found beside it).
    pub path: PathBuf,
    /// Where images are pushed and pulled.
    pub registry: Registry,
    /// Role name → host names.
    pub roles: BTreeMap<String, Vec<String>>,
    /// Service name → service.
    pub services: BTreeMap<String, Service>,
    /// How many hosts are deployed at once.
    pub batch: Batch,
    /// Versions each host keeps.
    pub history: usize,
    /// Hosts driven over SSH (`[deploy.hosts.NAME] ssh = …`), by name; the other hosts
    /// of the roles are enrolled agents (`berth host add`).
    pub ssh_hosts: BTreeMap<String, SshHost>,
}

/// The dockerd socket of a host when the file does not say.
pub const DEFAULT_DOCKER_SOCKET: &str = "/var/run/docker.sock";
/// Where berth's agent container on an SSH host listens when the file does not say.
pub const DEFAULT_AGENT_SOCKET: &str = "/run/berth/agent.sock";

/// A host reached with the system `ssh` (the user's config, keys and known hosts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshHost {
    /// What `ssh` is given: `user@host`, `host` or `ssh://user@host:port`.
    pub destination: String,
    /// dockerd's socket on the host.
    pub docker_socket: String,
    /// The agent container's socket on the host.
    pub agent_socket: String,
}

/// The registry the deploying machine pushes to and the hosts pull from.
#[derive(Debug, Clone)]
pub struct Registry {
    /// `host[:port]`, as the hosts reach it.
    pub address: String,
    /// `host[:port]` of the same registry as a satellite that builds the services reaches
    /// it, when its network names it otherwise (a satellite in a cluster: the registry's
    /// Service name): the satellite pushes there, the hosts pull the digest from `address`.
    pub satellite_address: Option<String>,
    /// User name for pulls and pushes.
    pub username: Option<String>,
    /// Where the password comes from.
    pub password: Option<SecretSource>,
}

/// Batching of hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batch {
    /// At most this many hosts at once.
    pub limit: Limit,
    /// Pause between two batches.
    pub wait: Duration,
}

/// A batch size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// Every host at once.
    All,
    /// This many hosts.
    Count(usize),
    /// This percentage of the hosts (at least one).
    Percent(u8),
}

impl Batch {
    /// `hosts` cut into batches, in order.
    pub fn split<T: Clone>(&self, hosts: &[T]) -> Vec<Vec<T>> {
        let n = match self.limit {
            Limit::All => hosts.len(),
            Limit::Count(n) => n,
            Limit::Percent(p) => (hosts.len() * usize::from(p)).div_ceil(100),
        }
        .max(1);
        hosts.chunks(n).map(<[T]>::to_vec).collect()
    }
}

/// Where a secret's value is read on the deploying machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecretSource {
    /// An environment variable.
    Env(String),
    /// A file (relative to the deploy file's directory); one trailing newline is dropped.
    File(PathBuf),
}

/// One service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    /// Its name.
    pub name: String,
    /// The image in berth's store (`app:v1`).
    pub image: String,
    /// The roles whose hosts run it.
    pub roles: Vec<String>,
    /// The command (default: the image's).
    pub command: Option<Vec<String>>,
    /// Plain environment.
    pub env: BTreeMap<String, String>,
    /// Secret environment variables and where the deploying machine reads them.
    pub secrets: BTreeMap<String, SecretSource>,
    /// Volumes.
    pub volumes: Vec<Volume>,
    /// Ports berth's proxy publishes.
    pub ports: Vec<Port>,
    /// When a new container is ready for traffic.
    pub health: Health,
    /// The signal that stops a container.
    pub stop_signal: String,
    /// How long a container gets after the signal (and old containers to drain).
    pub stop_timeout: Duration,
    /// What `berth deploy` builds before it pushes (none: the image is in the store).
    #[serde(default)]
    pub build: Option<Build>,
    /// Containers per host (1 to [`MAX_REPLICAS`]), all health-gated before a switch;
    /// berth's proxy gives them requests in turn.
    #[serde(default = "one")]
    pub replicas: u32,
    /// A proxy the host runs already, handed the new upstreams instead of berth's proxy
    /// listening on `ports`.
    #[serde(default)]
    pub proxy: Option<ExternalProxy>,
}

/// A proxy the host already runs (nginx, Caddy, HAProxy, Traefik…): after the new
/// containers are healthy the agent writes `upstream_file` from `template` and runs
/// `reload`; the old containers are stopped `drain` later. A failed reload puts the old
/// file back and keeps the old version serving.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExternalProxy {
    /// The file the proxy includes (absolute; on the host, or in `container`).
    pub upstream_file: String,
    /// The file's text: a line naming `{addr}`, `{ip}`, `{port}` or `{replica}` is
    /// written once per replica; `{service}` and `{version}` may be anywhere.
    pub template: String,
    /// The command that makes the proxy read the file again (none: it watches it).
    pub reload: Option<Vec<String>>,
    /// The proxy's container: the file is written into it and `reload` runs in it
    /// through dockerd; none: on the agent's own file system and as its child.
    pub container: Option<String>,
    /// How long the old containers keep running after the reload (the proxy's requests
    /// to them finish; berth cannot count them).
    pub drain: Duration,
    /// The container port the upstreams name.
    pub port: u16,
}

/// The placeholders of [`ExternalProxy::template`] that make a line repeat per replica.
pub const PER_REPLICA: [&str; 4] = ["{addr}", "{ip}", "{port}", "{replica}"];

impl ExternalProxy {
    /// The upstream file for the replicas at `ips`, in order.
    pub fn render(&self, service: &str, version: &str, ips: &[std::net::IpAddr]) -> String {
        let mut out = String::new();
        for line in self.template.lines() {
            let line = line
                .replace("{service}", service)
                .replace("{version}", version);
            if PER_REPLICA.iter().any(|p| line.contains(p)) {
                for (i, ip) in ips.iter().enumerate() {
                    let addr = std::net::SocketAddr::new(*ip, self.port);
                    out.push_str(
                        &line
                            .replace("{addr}", &addr.to_string())
                            .replace("{ip}", &ip.to_string())
                            .replace("{port}", &self.port.to_string())
                            .replace("{replica}", &(i + 1).to_string()),
                    );
                    out.push('\n');
                }
            } else {
                out.push_str(&line);
                out.push('\n');
            }
        }
        out
    }
}

/// The most containers of a service per host.
pub const MAX_REPLICAS: u32 = 64;

fn one() -> u32 {
    1
}

/// How a service's image is built by `berth deploy` (paths relative to the deploy file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Build {
    /// `berth build CONTEXT -f DOCKERFILE --target T --build-arg K=V -t IMAGE:VERSION`.
    Dockerfile {
        /// The build context.
        context: PathBuf,
        /// The Dockerfile (default: in the context).
        dockerfile: Option<PathBuf>,
        /// The stage.
        target: Option<String>,
        /// Build arguments.
        args: BTreeMap<String, String>,
    },
    /// `berth +target --K=V`: the target's `SAVE IMAGE` must name the service's image.
    Earthfile {
        /// `+target` or `./dir+target`, from the deploy file's directory.
        target: String,
        /// ARG overrides.
        args: BTreeMap<String, String>,
    },
}

/// A volume: a host path or a named volume, mounted at `target`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    /// An absolute host path, or a Docker volume name.
    pub source: String,
    /// The absolute path in the container.
    pub target: String,
    /// Mounted read-only.
    pub read_only: bool,
}

/// A published port: berth's proxy listens on `host` and forwards to the current
/// container's `container` port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Port {
    /// The port on the host.
    pub host: u16,
    /// The port in the container.
    pub container: u16,
}

/// A health check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// What is checked.
    pub check: Check,
    /// Time between two checks.
    pub interval: Duration,
    /// Time one check may take.
    pub timeout: Duration,
    /// Checks that may fail before the container is declared unhealthy.
    pub retries: u32,
}

/// What a health check runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Check {
    /// `GET path` on the container's port answers 2xx.
    Http {
        /// The path.
        path: String,
        /// The container port.
        port: u16,
    },
    /// The command, run in the container, exits 0.
    Command(Vec<String>),
    /// The container is running (a service with no port and no check).
    Running,
}

#[derive(Deserialize)]
struct FileRaw {
    deploy: Option<DeployRaw>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeployRaw {
    registry: Option<RegistryRaw>,
    #[serde(default)]
    roles: BTreeMap<String, RoleRaw>,
    #[serde(default)]
    services: BTreeMap<String, ServiceRaw>,
    #[serde(default)]
    batch: BatchRaw,
    history: Option<i64>,
    #[serde(default)]
    hosts: BTreeMap<String, HostRaw>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HostRaw {
    ssh: String,
    docker_socket: Option<String>,
    agent_socket: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistryRaw {
    address: String,
    satellite_address: Option<String>,
    username: Option<String>,
    password_env: Option<String>,
    password_file: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleRaw {
    hosts: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct BatchRaw {
    limit: Option<toml::Value>,
    wait: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceRaw {
    image: String,
    #[serde(default)]
    roles: Vec<String>,
    command: Option<Vec<String>>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    secrets: BTreeMap<String, SecretRaw>,
    #[serde(default)]
    volumes: Vec<String>,
    #[serde(default)]
    ports: Vec<toml::Value>,
    health: Option<HealthRaw>,
    stop_signal: Option<String>,
    stop_timeout: Option<String>,
    build: Option<BuildRaw>,
    replicas: Option<toml::Value>,
    proxy: Option<ProxyRaw>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProxyRaw {
    external: ExternalRaw,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExternalRaw {
    upstream_file: String,
    template: Option<String>,
    reload: Option<Vec<String>>,
    container: Option<String>,
    drain: Option<String>,
    port: Option<u16>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BuildRaw {
    context: Option<PathBuf>,
    dockerfile: Option<PathBuf>,
    target: Option<String>,
    earthfile: Option<String>,
    #[serde(default)]
    args: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretRaw {
    env: Option<String>,
    file: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HealthRaw {
    path: Option<String>,
    cmd: Option<Vec<String>>,
    port: Option<u16>,
    interval: Option<String>,
    timeout: Option<String>,
    retries: Option<u32>,
}

/// Parses `5s`, `500ms`, `2m`, `1h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 500ms, 5s, 2m or 1h"))?;
    Ok(match unit {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => return Err(format!("{s:?}: the unit must be ms, s, m or h")),
    })
}

fn valid_name(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c))
}

fn valid_env_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

struct Checker<'a> {
    file: &'a Path,
}

impl Checker<'_> {
    fn err(&self, key: impl Into<String>, message: impl Into<String>) -> DeployError {
        DeployError::Config {
            file: self.file.display().to_string(),
            key: key.into(),
            message: message.into(),
        }
    }

    fn duration(
        &self,
        key: &str,
        v: Option<&str>,
        default: Duration,
    ) -> Result<Duration, DeployError> {
        match v {
            None => Ok(default),
            Some(s) => parse_duration(s).map_err(|m| self.err(key, m)),
        }
    }
}

impl DeployFile {
    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<DeployFile, DeployError> {
        let text = std::fs::read_to_string(path).map_err(|e| DeployError::Config {
            file: path.display().to_string(),
            key: "deploy".into(),
            message: format!(
                "cannot read it ({e}); write a berth.toml with a [deploy] table, or pass --file"
            ),
        })?;
        DeployFile::parse(&text, path)
    }

    /// Checks the text of a deploy file read from `path`.
    pub fn parse(text: &str, path: &Path) -> Result<DeployFile, DeployError> {
        let c = Checker { file: path };
        let raw: FileRaw = toml::from_str(text).map_err(|e| {
            let key = e
                .span()
                .map(|s| {
                    let line = text[..s.start].matches('\n').count() + 1;
                    format!("line {line}")
                })
                .unwrap_or_else(|| "deploy".into());
            c.err(key, e.message().to_owned())
        })?;
        let d = raw
            .deploy
            .ok_or_else(|| c.err("deploy", "no [deploy] table in the file"))?;
        let r = d.registry.ok_or_else(|| {
            c.err(
                "deploy.registry",
                "missing: say where images go, e.g. [deploy.registry] address = \"registry.internal:5000\"",
            )
        })?;
        let not_host =
            |a: &str| a.is_empty() || a.contains(|c: char| c == '/' || c.is_whitespace());
        if not_host(&r.address) {
            return Err(c.err(
                "deploy.registry.address",
                format!("{:?} is not host[:port] (no scheme, no path)", r.address),
            ));
        }
        if let Some(a) = r.satellite_address.as_deref().filter(|a| not_host(a)) {
            return Err(c.err(
                "deploy.registry.satellite_address",
                format!("{a:?} is not host[:port] (no scheme, no path)"),
            ));
        }
        let password = match (r.password_env, r.password_file) {
            (Some(_), Some(_)) => {
                return Err(c.err(
                    "deploy.registry",
                    "password_env and password_file are both set; keep one",
                ));
            }
            (Some(e), None) => Some(SecretSource::Env(e)),
            (None, Some(f)) => Some(SecretSource::File(f)),
            (None, None) => None,
        };
        if password.is_some() != r.username.is_some() {
            return Err(c.err(
                "deploy.registry",
                "username and a password (password_env or password_file) go together",
            ));
        }
        let registry = Registry {
            address: r.address,
            satellite_address: r.satellite_address,
            username: r.username,
            password,
        };
        let mut roles = BTreeMap::new();
        for (name, role) in d.roles {
            let key = format!("deploy.roles.{name}");
            if !valid_name(&name) {
                return Err(c.err(
                    key,
                    "a role name is 1 to 63 lower-case letters, digits, `-`, `_` or `.`",
                ));
            }
            if role.hosts.is_empty() {
                return Err(c.err(format!("{key}.hosts"), "is empty: name at least one host"));
            }
            let mut seen = BTreeSet::new();
            for (i, h) in role.hosts.iter().enumerate() {
                if !seen.insert(h) {
                    return Err(c.err(format!("{key}.hosts[{i}]"), format!("{h} is listed twice")));
                }
            }
            roles.insert(name, role.hosts);
        }
        if d.services.is_empty() {
            return Err(c.err(
                "deploy.services",
                "no service: add a [deploy.services.NAME] table with at least `image`",
            ));
        }
        let mut services = BTreeMap::new();
        for (name, s) in d.services {
            let svc = c.service(&name, s, &roles)?;
            services.insert(name, svc);
        }
        // Two services on one host cannot publish the same port.
        let mut taken: BTreeMap<(String, u16), String> = BTreeMap::new();
        for s in services.values() {
            for (i, p) in s.ports.iter().enumerate() {
                for role in &s.roles {
                    for host in &roles[role] {
                        if let Some(other) = taken.get(&(host.clone(), p.host))
                            && other != &s.name
                        {
                            return Err(c.err(
                                format!("deploy.services.{}.ports[{i}]", s.name),
                                format!(
                                    "host port {} is also published by service {other} on host {host}",
                                    p.host
                                ),
                            ));
                        }
                        taken.insert((host.clone(), p.host), s.name.clone());
                    }
                }
            }
        }
        let limit = match d.batch.limit {
            None => Limit::All,
            Some(toml::Value::Integer(n)) if n >= 1 => Limit::Count(n as usize),
            Some(toml::Value::String(s))
                if s.strip_suffix('%')
                    .and_then(|p| p.trim().parse::<u8>().ok())
                    .is_some_and(|p| (1..=100).contains(&p)) =>
            {
                Limit::Percent(s.trim_end_matches('%').trim().parse().expect("checked"))
            }
            Some(v) => {
                return Err(c.err(
                    "deploy.batch.limit",
                    format!(
                        "{v} is neither a count of hosts (1 or more) nor a percentage like \"50%\""
                    ),
                ));
            }
        };
        let batch = Batch {
            limit,
            wait: c.duration("deploy.batch.wait", d.batch.wait.as_deref(), Duration::ZERO)?,
        };
        let history = match d.history {
            None => DEFAULT_HISTORY,
            Some(n) if (1..=100).contains(&n) => n as usize,
            Some(n) => return Err(c.err("deploy.history", format!("{n}: keep 1 to 100 versions"))),
        };
        let mut ssh_hosts = BTreeMap::new();
        for (name, h) in d.hosts {
            let key = format!("deploy.hosts.{name}");
            if !roles.values().any(|hs| hs.contains(&name)) {
                return Err(c.err(key, "is in no role's hosts: add it to one, or remove it"));
            }
            let dest = h.ssh.trim();
            if dest.is_empty() || dest.starts_with('-') || dest.contains(char::is_whitespace) {
                return Err(c.err(
                    format!("{key}.ssh"),
                    format!("{:?} is not an ssh destination like user@host", h.ssh),
                ));
            }
            let socket = |k: &str, v: Option<String>, default: &str| match v {
                None => Ok(default.to_owned()),
                Some(p) if p.starts_with('/') && !p.contains(':') => Ok(p),
                Some(p) => Err(c.err(
                    format!("{key}.{k}"),
                    format!("{p:?} is not an absolute path (without `:`)"),
                )),
            };
            let host = SshHost {
                destination: dest.to_owned(),
                docker_socket: socket("docker_socket", h.docker_socket, DEFAULT_DOCKER_SOCKET)?,
                agent_socket: socket("agent_socket", h.agent_socket, DEFAULT_AGENT_SOCKET)?,
            };
            if host
                .agent_socket
                .rsplit_once('/')
                .is_none_or(|(d, _)| d.is_empty())
            {
                return Err(c.err(
                    format!("{key}.agent_socket"),
                    "must be in a directory other than / (the directory is mounted into the agent's container)",
                ));
            }
            ssh_hosts.insert(name, host);
        }
        Ok(DeployFile {
            path: path.to_path_buf(),
            registry,
            roles,
            services,
            batch,
            history,
            ssh_hosts,
        })
    }

    /// The hosts of `service`, in the order its roles list them, each once.
    pub fn hosts_of(&self, service: &Service) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for r in &service.roles {
            for h in &self.roles[r] {
                if !out.contains(h) {
                    out.push(h.clone());
                }
            }
        }
        out
    }

    /// The file cut down to some hosts (`berth deploy --hosts a,b --role web`): each
    /// role keeps only its hosts named in `hosts` (all when empty), and only the roles
    /// named in `roles` (all when empty) keep any. A host or role the file does not
    /// have is an error; services then run on what is left of their roles (maybe
    /// nothing).
    pub fn only(&self, hosts: &[String], roles: &[String]) -> Result<DeployFile, DeployError> {
        let err = |key: &str, message: String| DeployError::Config {
            file: self.path.display().to_string(),
            key: key.to_owned(),
            message,
        };
        let names = |it: &mut dyn Iterator<Item = &String>| {
            let mut v: Vec<&str> = it.map(String::as_str).collect();
            v.sort_unstable();
            v.dedup();
            v.join(", ")
        };
        for r in roles {
            if !self.roles.contains_key(r) {
                return Err(err(
                    "deploy.roles",
                    format!(
                        "--role {r}: no such role (the file has {})",
                        names(&mut self.roles.keys())
                    ),
                ));
            }
        }
        for h in hosts {
            if !self.roles.values().any(|hs| hs.contains(h)) {
                return Err(err(
                    "deploy.roles",
                    format!(
                        "--hosts {h}: no role lists this host (the file has {})",
                        names(&mut self.roles.values().flatten())
                    ),
                ));
            }
        }
        let mut out = self.clone();
        for (name, hs) in &mut out.roles {
            if !roles.is_empty() && !roles.contains(name) {
                hs.clear();
            }
            if !hosts.is_empty() {
                hs.retain(|h| hosts.contains(h));
            }
        }
        Ok(out)
    }

    /// The services named (all when `names` is empty), or an error naming an unknown one.
    pub fn select(&self, names: &[String]) -> Result<Vec<&Service>, DeployError> {
        if names.is_empty() {
            return Ok(self.services.values().collect());
        }
        names
            .iter()
            .map(|n| {
                self.services.get(n).ok_or_else(|| DeployError::Config {
                    file: self.path.display().to_string(),
                    key: format!("deploy.services.{n}"),
                    message: format!(
                        "no such service; the file has {}",
                        self.services.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                })
            })
            .collect()
    }

    /// Reads a secret's value on this machine. `key` names it in errors.
    pub fn read_secret(&self, key: &str, source: &SecretSource) -> Result<String, DeployError> {
        read_secret(&self.path, key, source, &|k| std::env::var(k).ok())
    }

    /// Every secret of `service`, read now (name → value).
    pub fn secrets_of(&self, service: &Service) -> Result<BTreeMap<String, String>, DeployError> {
        service
            .secrets
            .iter()
            .map(|(name, src)| {
                let key = format!("deploy.services.{}.secrets.{name}", service.name);
                Ok((name.clone(), self.read_secret(&key, src)?))
            })
            .collect()
    }
}

/// Reads a secret for the deploy file at `file`, with `env` as the environment.
pub fn read_secret(
    file: &Path,
    key: &str,
    source: &SecretSource,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, DeployError> {
    let err = |message: String| DeployError::Config {
        file: file.display().to_string(),
        key: key.to_owned(),
        message,
    };
    match source {
        SecretSource::Env(var) => env(var).ok_or_else(|| {
            err(format!(
                "environment variable {var} is not set on this machine; export it before `berth deploy`"
            ))
        }),
        SecretSource::File(p) => {
            let p = if p.is_absolute() {
                p.clone()
            } else {
                file.parent().unwrap_or(Path::new(".")).join(p)
            };
            let mut s = std::fs::read_to_string(&p)
                .map_err(|e| err(format!("cannot read {}: {e}", p.display())))?;
            if s.ends_with('\n') {
                s.pop();
            }
            Ok(s)
        }
    }
}

impl Checker<'_> {
    fn service(
        &self,
        name: &str,
        s: ServiceRaw,
        roles: &BTreeMap<String, Vec<String>>,
    ) -> Result<Service, DeployError> {
        let key = format!("deploy.services.{name}");
        if !valid_name(name) {
            return Err(self.err(
                key,
                "a service name is 1 to 63 lower-case letters, digits, `-`, `_` or `.`",
            ));
        }
        if s.image.trim().is_empty() || s.image.contains(char::is_whitespace) {
            return Err(self.err(
                format!("{key}.image"),
                format!("{:?} is not an image name", s.image),
            ));
        }
        if s.roles.is_empty() {
            return Err(self.err(
                format!("{key}.roles"),
                "is empty: name the roles whose hosts run the service",
            ));
        }
        for (i, r) in s.roles.iter().enumerate() {
            if !roles.contains_key(r) {
                return Err(self.err(
                    format!("{key}.roles[{i}]"),
                    format!("no role {r}: add [deploy.roles.{r}] hosts = [...]"),
                ));
            }
        }
        if let Some(cmd) = &s.command
            && cmd.is_empty()
        {
            return Err(self.err(
                format!("{key}.command"),
                "is empty: leave it out to run the image's own",
            ));
        }
        for k in s.env.keys() {
            if !valid_env_name(k) {
                return Err(self.err(format!("{key}.env.{k}"), "is not a valid variable name"));
            }
        }
        let mut secrets = BTreeMap::new();
        for (k, v) in s.secrets {
            let skey = format!("{key}.secrets.{k}");
            if !valid_env_name(&k) {
                return Err(self.err(skey, "is not a valid variable name"));
            }
            if s.env.contains_key(&k) {
                return Err(self.err(skey, format!("{k} is also in env; keep one")));
            }
            let src = match (v.env, v.file) {
                (Some(e), None) => SecretSource::Env(e),
                (None, Some(f)) => SecretSource::File(f),
                _ => {
                    return Err(
                        self.err(skey, "give exactly one of env = \"VAR\" or file = \"path\"")
                    );
                }
            };
            secrets.insert(k, src);
        }
        let mut volumes = Vec::new();
        for (i, v) in s.volumes.iter().enumerate() {
            let vkey = format!("{key}.volumes[{i}]");
            let parts: Vec<&str> = v.split(':').collect();
            let (source, target, read_only) = match parts.as_slice() {
                [s, t] => (*s, *t, false),
                [s, t, "ro"] => (*s, *t, true),
                [s, t, "rw"] => (*s, *t, false),
                _ => {
                    return Err(self.err(
                        vkey,
                        format!("{v:?} is not SOURCE:TARGET[:ro] (a host path or volume name, then a path)"),
                    ));
                }
            };
            if source.is_empty() || !target.starts_with('/') {
                return Err(self.err(vkey, format!("{v:?}: the target must be an absolute path")));
            }
            volumes.push(Volume {
                source: source.into(),
                target: target.into(),
                read_only,
            });
        }
        let mut ports = Vec::new();
        for (i, p) in s.ports.iter().enumerate() {
            let pkey = format!("{key}.ports[{i}]");
            let port = |t: &str| t.parse::<u16>().ok().filter(|n| *n > 0);
            let parsed = match p {
                toml::Value::Integer(n) => {
                    u16::try_from(*n).ok().filter(|n| *n > 0).map(|n| Port {
                        host: n,
                        container: n,
                    })
                }
                toml::Value::String(s) => match s.split_once(':') {
                    Some((h, c)) => port(h)
                        .zip(port(c))
                        .map(|(host, container)| Port { host, container }),
                    None => port(s).map(|n| Port {
                        host: n,
                        container: n,
                    }),
                },
                _ => None,
            };
            let parsed = parsed.ok_or_else(|| {
                self.err(
                    pkey.clone(),
                    format!("{p} is not \"HOST:CONTAINER\" or a port (1 to 65535)"),
                )
            })?;
            if ports.iter().any(|q: &Port| q.host == parsed.host) {
                return Err(self.err(
                    pkey,
                    format!("host port {} is published twice", parsed.host),
                ));
            }
            ports.push(parsed);
        }
        let health = self.health(&key, s.health, &ports)?;
        let stop_signal = s.stop_signal.unwrap_or_else(|| "SIGTERM".into());
        let signal_ok = stop_signal.strip_prefix("SIG").is_some_and(|n| {
            !n.is_empty()
                && n.chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
        }) || stop_signal.parse::<u8>().is_ok_and(|n| n > 0);
        if !signal_ok {
            return Err(self.err(
                format!("{key}.stop_signal"),
                format!("{stop_signal:?} is not a signal like SIGTERM, SIGQUIT or 15"),
            ));
        }
        let build = match s.build {
            None => None,
            Some(b) => Some(self.build(&key, b)?),
        };
        let replicas = match s.replicas {
            None => 1,
            Some(toml::Value::Integer(n)) if (1..=i64::from(MAX_REPLICAS)).contains(&n) => n as u32,
            Some(v) => {
                return Err(self.err(
                    format!("{key}.replicas"),
                    format!("{v} is not a count of containers per host from 1 to {MAX_REPLICAS}"),
                ));
            }
        };
        let proxy = match s.proxy {
            None => None,
            Some(p) => Some(self.external(&key, p.external, &ports)?),
        };
        Ok(Service {
            proxy,
            build,
            replicas,
            name: name.to_owned(),
            image: s.image,
            roles: s.roles,
            command: s.command,
            env: s.env,
            secrets,
            volumes,
            ports,
            health,
            stop_signal,
            stop_timeout: self.duration(
                &format!("{key}.stop_timeout"),
                s.stop_timeout.as_deref(),
                Duration::from_secs(10),
            )?,
        })
    }

    fn external(
        &self,
        key: &str,
        e: ExternalRaw,
        ports: &[Port],
    ) -> Result<ExternalProxy, DeployError> {
        let key = format!("{key}.proxy.external");
        if !e.upstream_file.starts_with('/') || e.upstream_file.ends_with('/') {
            return Err(self.err(
                format!("{key}.upstream_file"),
                format!("{:?} is not an absolute file path", e.upstream_file),
            ));
        }
        let template = e.template.unwrap_or_else(|| "server {addr};".into());
        let mut rest = template.as_str();
        while let Some(i) = rest.find('{') {
            let word = rest[i..].split_inclusive('}').next().unwrap_or("");
            let known = PER_REPLICA.contains(&word) || word == "{service}" || word == "{version}";
            if !known {
                return Err(self.err(
                    format!("{key}.template"),
                    format!(
                        "{word:?} is not a placeholder: use {{addr}}, {{ip}}, {{port}}, {{replica}}, \
                         {{service}} or {{version}}"
                    ),
                ));
            }
            rest = &rest[i + word.len()..];
        }
        if !PER_REPLICA.iter().any(|p| template.contains(p)) {
            return Err(self.err(
                format!("{key}.template"),
                "names no upstream: put {addr} (or {ip} and {port}) on the line written per replica",
            ));
        }
        if e.reload
            .as_ref()
            .is_some_and(|r| r.is_empty() || r[0].is_empty())
        {
            return Err(self.err(
                format!("{key}.reload"),
                "is empty: leave it out if the proxy watches the file",
            ));
        }
        if let Some(c) = &e.container
            && (c.is_empty() || c.contains(|ch: char| ch.is_whitespace() || ch == '/'))
        {
            return Err(self.err(
                format!("{key}.container"),
                format!("{c:?} is not a container name"),
            ));
        }
        let port = e
            .port
            .or(ports.first().map(|p| p.container))
            .ok_or_else(|| {
                self.err(
                    format!("{key}.port"),
                    "the upstreams need a container port: set port or publish one in ports",
                )
            })?;
        Ok(ExternalProxy {
            upstream_file: e.upstream_file,
            template,
            reload: e.reload,
            container: e.container,
            drain: self.duration(
                &format!("{key}.drain"),
                e.drain.as_deref(),
                Duration::from_secs(5),
            )?,
            port,
        })
    }

    fn build(&self, key: &str, b: BuildRaw) -> Result<Build, DeployError> {
        let key = format!("{key}.build");
        let base = self.file.parent().unwrap_or(Path::new(""));
        for k in b.args.keys() {
            if !valid_env_name(k) {
                return Err(self.err(format!("{key}.args"), format!("{k:?} is not an ARG name")));
            }
        }
        match b.earthfile {
            Some(t) => {
                if b.context.is_some() || b.dockerfile.is_some() || b.target.is_some() {
                    return Err(self.err(
                        key,
                        "earthfile goes alone: context, dockerfile and target are for Dockerfiles",
                    ));
                }
                let (dir, name) = t.split_once('+').unwrap_or(("", ""));
                let name_ok = !name.is_empty()
                    && name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
                if !name_ok || !(dir.is_empty() || dir.starts_with("./") || dir.starts_with("../"))
                {
                    return Err(self.err(
                        format!("{key}.earthfile"),
                        format!("{t:?} is not a target like \"+docker\" or \"./dir+docker\""),
                    ));
                }
                let sub = dir.trim_start_matches("./");
                let dir = base.join(sub);
                let dir = dir.to_string_lossy();
                let dir = if dir.is_empty() || dir.starts_with('/') || dir.starts_with("../") {
                    dir.trim_end_matches('/').to_owned()
                } else {
                    format!("./{}", dir.trim_end_matches('/'))
                };
                Ok(Build::Earthfile {
                    target: format!("{dir}+{name}"),
                    args: b.args,
                })
            }
            None => {
                let context = b.context.ok_or_else(|| {
                    self.err(
                        key.clone(),
                        "say what to build: context = \"DIR\" (a Dockerfile) or earthfile = \"+target\"",
                    )
                })?;
                Ok(Build::Dockerfile {
                    context: base.join(context),
                    dockerfile: b.dockerfile.map(|d| base.join(d)),
                    target: b.target,
                    args: b.args,
                })
            }
        }
    }

    fn health(
        &self,
        key: &str,
        h: Option<HealthRaw>,
        ports: &[Port],
    ) -> Result<Health, DeployError> {
        let hkey = format!("{key}.health");
        let h = h.unwrap_or(HealthRaw {
            path: None,
            cmd: None,
            port: None,
            interval: None,
            timeout: None,
            retries: None,
        });
        let check = match (h.path, h.cmd) {
            (Some(_), Some(_)) => {
                return Err(self.err(hkey, "path and cmd are both set; keep one"));
            }
            (Some(path), None) => {
                if !path.starts_with('/') {
                    return Err(self.err(
                        format!("{hkey}.path"),
                        format!("{path:?} must start with /"),
                    ));
                }
                let port = h
                    .port
                    .or(ports.first().map(|p| p.container))
                    .ok_or_else(|| {
                        self.err(
                            format!("{hkey}.port"),
                            "an HTTP check needs a port: set health.port or publish one in ports",
                        )
                    })?;
                Check::Http { path, port }
            }
            (None, Some(cmd)) if cmd.is_empty() => {
                return Err(self.err(format!("{hkey}.cmd"), "is empty"));
            }
            (None, Some(cmd)) => Check::Command(cmd),
            (None, None) => match ports.first() {
                Some(p) => Check::Http {
                    path: "/".into(),
                    port: h.port.unwrap_or(p.container),
                },
                None => Check::Running,
            },
        };
        let retries = h.retries.unwrap_or(30);
        if retries == 0 {
            return Err(self.err(format!("{hkey}.retries"), "must be 1 or more"));
        }
        Ok(Health {
            check,
            interval: self.duration(
                &format!("{hkey}.interval"),
                h.interval.as_deref(),
                Duration::from_secs(1),
            )?,
            timeout: self.duration(
                &format!("{hkey}.timeout"),
                h.timeout.as_deref(),
                Duration::from_secs(5),
            )?,
            retries,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[deploy]
history = 3
[deploy.registry]
address = "10.0.0.1:5000"
[deploy.batch]
limit = "50%"
wait = "2s"
[deploy.roles.web]
hosts = ["h1", "h2", "h3"]
[deploy.services.app]
image = "app:v1"
roles = ["web"]
command = ["httpd", "-f", "-p", "80"]
env = { A = "1" }
secrets = { S = { env = "MY_SECRET" }, F = { file = "sec" } }
volumes = ["/srv:/data:ro", "cache:/cache"]
ports = ["8080:80", 9000]
health = { path = "/ok", interval = "200ms", retries = 4 }
"#;

    fn parse(text: &str) -> Result<DeployFile, DeployError> {
        DeployFile::parse(text, Path::new("berth.toml"))
    }

    fn err(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn a_full_file() {
        let f = parse(GOOD).unwrap();
        assert_eq!(f.history, 3);
        let s = &f.services["app"];
        assert_eq!(
            s.ports[0],
            Port {
                host: 8080,
                container: 80
            }
        );
        assert_eq!(
            s.ports[1],
            Port {
                host: 9000,
                container: 9000
            }
        );
        assert_eq!(
            s.health.check,
            Check::Http {
                path: "/ok".into(),
                port: 80
            }
        );
        assert_eq!(s.health.interval, Duration::from_millis(200));
        assert_eq!(s.health.retries, 4);
        assert_eq!(s.replicas, 1);
        let f = parse(&GOOD.replace("image = \"app:v1\"", "image = \"app:v1\"\nreplicas = 64"))
            .unwrap();
        assert_eq!(f.services["app"].replicas, 64);
        assert!(s.volumes[0].read_only && !s.volumes[1].read_only);
        assert_eq!(s.secrets["S"], SecretSource::Env("MY_SECRET".into()));
        assert_eq!(f.hosts_of(s), ["h1", "h2", "h3"]);
        assert_eq!(f.batch.split(&f.hosts_of(s)).len(), 2);
        assert_eq!(f.batch.wait, Duration::from_secs(2));
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            (
                GOOD.replace("ports = [\"8080:80\", 9000]", "ports = [\"80:x\"]"),
                "deploy.services.app.ports[0]",
            ),
            (
                GOOD.replace("roles = [\"web\"]", "roles = [\"db\"]"),
                "deploy.services.app.roles[0]: no role db",
            ),
            (
                GOOD.replace("limit = \"50%\"", "limit = \"150%\""),
                "deploy.batch.limit",
            ),
            (
                GOOD.replace("wait = \"2s\"", "wait = \"2 weeks\""),
                "deploy.batch.wait",
            ),
            (
                GOOD.replace("{ env = \"MY_SECRET\" }", "{ }"),
                "deploy.services.app.secrets.S",
            ),
            (
                GOOD.replace("/srv:/data:ro", "/srv"),
                "deploy.services.app.volumes[0]",
            ),
            (
                GOOD.replace("path = \"/ok\"", "path = \"ok\""),
                "deploy.services.app.health.path",
            ),
            (
                GOOD.replace("address = \"10.0.0.1:5000\"", "address = \"http://x/y\""),
                "deploy.registry.address",
            ),
            (
                GOOD.replace(
                    "address = \"10.0.0.1:5000\"",
                    "address = \"10.0.0.1:5000\"\nsatellite_address = \"reg.svc/x\"",
                ),
                "deploy.registry.satellite_address",
            ),
            (GOOD.replace("history = 3", "history = 0"), "deploy.history"),
            (
                GOOD.replace("image = \"app:v1\"", "image = \"app:v1\"\nreplicas = 0"),
                "deploy.services.app.replicas: 0 is not a count of containers per host from 1 to 64",
            ),
            (
                GOOD.replace("image = \"app:v1\"", "image = \"app:v1\"\nreplicas = 65"),
                "deploy.services.app.replicas: 65 is not",
            ),
            (
                GOOD.replace("image = \"app:v1\"", "image = \"app:v1\"\nreplicas = \"2\""),
                "deploy.services.app.replicas: \"2\" is not",
            ),
            (
                GOOD.replace("image = \"app:v1\"", "image = \"app:v1\"\nreplica = 2"),
                "unknown field `replica`",
            ),
        ];
        for (text, want) in cases {
            let e = err(&text);
            assert!(e.starts_with("berth.toml: "), "{e}");
            assert!(e.contains(want), "{want:?} not in {e:?}");
        }
    }

    #[test]
    fn a_port_published_twice_on_one_host() {
        let text = format!(
            "{GOOD}\n[deploy.services.other]\nimage = \"o\"\nroles = [\"web\"]\nports = [\"8080:81\"]\n"
        );
        let e = err(&text);
        assert!(
            e.contains("deploy.services.other.ports[0]")
                || e.contains("deploy.services.app.ports[0]"),
            "{e}"
        );
        assert!(e.contains("host port 8080 is also published"), "{e}");
    }

    #[test]
    fn secrets_are_read_with_the_key_in_errors() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("sec"), "from-file\n").unwrap();
        let file = dir.path().join("berth.toml");
        let env = |k: &str| (k == "MY_SECRET").then(|| "from-env".to_owned());
        let v = read_secret(&file, "k", &SecretSource::File("sec".into()), &env).unwrap();
        assert_eq!(v, "from-file");
        let v = read_secret(&file, "k", &SecretSource::Env("MY_SECRET".into()), &env).unwrap();
        assert_eq!(v, "from-env");
        let e = read_secret(
            &file,
            "deploy.services.app.secrets.X",
            &SecretSource::Env("NOPE".into()),
            &env,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("deploy.services.app.secrets.X") && e.contains("NOPE is not set"),
            "{e}"
        );
    }

    #[test]
    fn only_some_hosts_or_roles() {
        let text = format!(
            "{GOOD}[deploy.roles.db]\nhosts = [\"h3\", \"h4\"]\n\
             [deploy.services.pg]\nimage = \"pg\"\nroles = [\"db\"]\n"
        );
        let f = parse(&text).unwrap();
        let hosts = |f: &DeployFile, s: &str| f.hosts_of(&f.services[s]);
        let o = f.only(&["h1".into(), "h3".into()], &[]).unwrap();
        assert_eq!(hosts(&o, "app"), ["h1", "h3"]);
        assert_eq!(hosts(&o, "pg"), ["h3"]);
        let o = f.only(&[], &["db".into()]).unwrap();
        assert!(hosts(&o, "app").is_empty());
        assert_eq!(hosts(&o, "pg"), ["h3", "h4"]);
        let o = f.only(&["h3".into()], &["web".into()]).unwrap();
        assert_eq!(hosts(&o, "app"), ["h3"]);
        assert!(hosts(&o, "pg").is_empty());
        assert_eq!(f.only(&[], &[]).unwrap().roles, f.roles);
        let e = f.only(&[], &["cache".into()]).unwrap_err().to_string();
        assert!(
            e.contains("--role cache: no such role (the file has db, web)"),
            "{e}"
        );
        let e = f.only(&["h9".into()], &[]).unwrap_err().to_string();
        assert!(
            e.contains("--hosts h9: no role lists this host (the file has h1, h2, h3, h4)"),
            "{e}"
        );
    }

    #[test]
    fn an_external_proxy() {
        let with = |t: &str| {
            parse(&format!(
                "{GOOD}[deploy.services.app.proxy.external]\n{t}\n"
            ))
        };
        let f = with(
            "upstream_file = \"/etc/nginx/app.conf\"\nreload = [\"nginx\", \"-s\", \"reload\"]\n\
             template = \"# {service} {version}\\nserver {addr}; # {replica}\\n\"",
        )
        .unwrap();
        let p = f.services["app"].proxy.clone().unwrap();
        assert_eq!(p.port, 80);
        assert_eq!(p.drain, Duration::from_secs(5));
        assert_eq!(p.container, None);
        let ips = ["172.17.0.2".parse().unwrap(), "172.17.0.3".parse().unwrap()];
        assert_eq!(
            p.render("app", "v2", &ips),
            "# app v2\nserver 172.17.0.2:80; # 1\nserver 172.17.0.3:80; # 2\n"
        );
        let f = with("upstream_file = \"/x\"\ncontainer = \"nginx\"\nport = 81\ndrain = \"1s\"")
            .unwrap();
        let p = f.services["app"].proxy.clone().unwrap();
        assert_eq!((p.port, p.container.as_deref()), (81, Some("nginx")));
        assert_eq!(p.render("app", "v1", &ips[..1]), "server 172.17.0.2:81;\n");
        assert_eq!(p.reload, None);
        for (t, what) in [
            (
                "upstream_file = \"x.conf\"",
                "upstream_file: \"x.conf\" is not an absolute",
            ),
            (
                "upstream_file = \"/x\"\ntemplate = \"server {host};\"",
                "\"{host}\" is not a placeholder",
            ),
            (
                "upstream_file = \"/x\"\ntemplate = \"server a;\"",
                "template: names no upstream",
            ),
            ("upstream_file = \"/x\"\nreload = []", "reload: is empty"),
            (
                "upstream_file = \"/x\"\ncontainer = \"a b\"",
                "container: \"a b\" is not",
            ),
            (
                "upstream_file = \"/x\"\ndrain = \"soon\"",
                "proxy.external.drain",
            ),
            ("file = \"/x\"", "unknown field `file`"),
        ] {
            let e = with(t).unwrap_err().to_string();
            assert!(e.contains(what), "{what:?} not in {e}");
        }
        let e = parse(
            "[deploy.registry]\naddress = \"r:5000\"\n[deploy.roles.a]\nhosts = [\"h\"]\n\
             [deploy.services.s]\nimage = \"i\"\nroles = [\"a\"]\n\
             proxy = { external = { upstream_file = \"/x\" } }\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("deploy.services.s.proxy.external.port: the upstreams need"),
            "{e}"
        );
    }

    #[test]
    fn defaults() {
        let f = parse(
            "[deploy.registry]\naddress = \"r:5000\"\n[deploy.roles.a]\nhosts = [\"h\"]\n\
             [deploy.services.s]\nimage = \"i\"\nroles = [\"a\"]\n",
        )
        .unwrap();
        let s = &f.services["s"];
        assert_eq!(s.health.check, Check::Running);
        assert_eq!(s.stop_signal, "SIGTERM");
        assert_eq!(s.replicas, 1);
        assert_eq!(f.batch.limit, Limit::All);
        assert_eq!(f.history, DEFAULT_HISTORY);
    }

    #[test]
    fn ssh_hosts() {
        let f = parse(&format!(
            "{GOOD}[deploy.hosts.h3]\nssh = \"deploy@h3.internal\"\n\
             [deploy.hosts.h2]\nssh = \"ssh://h2:2222\"\ndocker_socket = \"/run/docker.sock\"\n\
             agent_socket = \"/srv/berth/a.sock\"\n"
        ))
        .unwrap();
        assert_eq!(
            f.ssh_hosts["h3"],
            SshHost {
                destination: "deploy@h3.internal".into(),
                docker_socket: DEFAULT_DOCKER_SOCKET.into(),
                agent_socket: DEFAULT_AGENT_SOCKET.into(),
            }
        );
        assert_eq!(f.ssh_hosts["h2"].docker_socket, "/run/docker.sock");
        assert_eq!(f.ssh_hosts["h2"].agent_socket, "/srv/berth/a.sock");
        assert!(!f.ssh_hosts.contains_key("h1"));
        for (extra, key, what) in [
            (
                "[deploy.hosts.h9]\nssh = \"h9\"\n",
                "deploy.hosts.h9",
                "in no role",
            ),
            (
                "[deploy.hosts.h1]\nssh = \"-oProxyCommand=x\"\n",
                "deploy.hosts.h1.ssh",
                "not an ssh destination",
            ),
            (
                "[deploy.hosts.h1]\nssh = \"h1\"\ndocker_socket = \"run/d.sock\"\n",
                "deploy.hosts.h1.docker_socket",
                "not an absolute path",
            ),
            (
                "[deploy.hosts.h1]\nssh = \"h1\"\nagent_socket = \"/a.sock\"\n",
                "deploy.hosts.h1.agent_socket",
                "other than /",
            ),
            (
                "[deploy.hosts.h1]\nagent = \"h1\"\n",
                "line ",
                "unknown field",
            ),
        ] {
            let e = err(&format!("{GOOD}{extra}"));
            assert!(
                e.contains(&format!("berth.toml: {key}")) && e.contains(what),
                "{e}"
            );
        }
    }

    #[test]
    fn builds() {
        let with = |b: &str| {
            let text = GOOD.replace(
                "image = \"app:v1\"\n",
                &format!("image = \"app:v1\"\nbuild = {b}\n"),
            );
            DeployFile::parse(&text, Path::new("/srv/proj/berth.toml"))
        };
        let f = with("{ context = \"app\", target = \"prod\", args = { V = \"1\" } }").unwrap();
        assert_eq!(
            f.services["app"].build,
            Some(Build::Dockerfile {
                context: "/srv/proj/app".into(),
                dockerfile: None,
                target: Some("prod".into()),
                args: [("V".to_owned(), "1".to_owned())].into(),
            })
        );
        let f = with("{ earthfile = \"./web+docker\" }").unwrap();
        assert_eq!(
            f.services["app"].build,
            Some(Build::Earthfile {
                target: "/srv/proj/web+docker".into(),
                args: BTreeMap::new(),
            })
        );
        for (b, what) in [
            (
                "{ earthfile = \"+x\", context = \".\" }",
                "earthfile goes alone",
            ),
            ("{ earthfile = \"docker\" }", "is not a target"),
            ("{ dockerfile = \"D\" }", "say what to build"),
            (
                "{ context = \".\", args = { \"a b\" = \"1\" } }",
                "not an ARG name",
            ),
        ] {
            let e = with(b).unwrap_err().to_string();
            assert!(
                e.contains("deploy.services.app.build") && e.contains(what),
                "{e}"
            );
        }
    }
}
