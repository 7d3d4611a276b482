//! `berth satellite …`: run a satellite, manage its tokens and clients (on its host), and
//! enroll with satellites and build on them (on a client).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use berth_build::Progress;
use berth_pki::{Token, TokenKind, TokenOptions};
use berth_satellite::{Enrollments, POOL_PREFIX, Pools, SatelliteOptions, SatelliteRoot};
use clap::{Args, Subcommand};

use crate::settings::Settings;

#[derive(Subcommand)]
pub enum SatelliteCommand {
    /// Run a satellite: a remote builder for enrolled clients (port 8372, mutual TLS).
    #[command(
        after_help = "Configuration: --config FILE names the satellite's own TOML here \
        ([builder] allow, [network] proxies and CAs, [registries.\"host:port\"] ca, insecure, \
        http, mirrors), or BERTH_SATELLITE_CONFIG holds it inline; berth's config.toml is \
        read from its default place."
    )]
    Serve(ServeArgs),
    /// Enrollment and pull tokens (run on the satellite's host, with its --root).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Enrolled clients (run on the satellite's host, with its --root).
    Clients {
        #[command(subcommand)]
        command: ClientsCommand,
    },
    /// Print the satellite's CA certificate (PEM), for a deploy host's Docker to trust:
    /// save it as /etc/docker/certs.d/HOST:PORT/ca.crt there (run on the satellite's host,
    /// with its --root).
    Ca,
    /// Enroll with a satellite, using a token from its operator.
    Add(AddArgs),
    /// List the satellites this machine is enrolled with.
    Ls,
    /// Forget a satellite (its client certificate and key are deleted).
    Rm {
        /// The satellite's name here.
        name: String,
    },
    /// Build on this satellite by default (`berth build --no-satellite` builds here).
    Use {
        /// The satellite's name here, or `pool:NAME` for a pool of them.
        name: String,
    },
    /// Show a satellite's version, load, builds and cache, and this client's certificate.
    Inspect {
        /// The satellite's name here [default: the one in use].
        name: Option<String>,
    },
    /// Pools of enrolled satellites: `berth build --satellite pool:NAME` sends the build
    /// to the member holding most of its cache (then the least busy one), and to the
    /// next member when one fails before the build starts.
    Pool {
        #[command(subcommand)]
        command: PoolCommand,
    },
    /// Print Kubernetes YAML for a satellite: a StatefulSet (privileged pod, its root on a
    /// PersistentVolumeClaim, the CA optionally from a Secret) and a Service on port 8372.
    Manifests(ManifestArgs),
    /// Apply the satellite of `manifests` to a cluster (server-side apply, berth's
    /// ServiceAccount and pull secrets) and wait until its pod exists.
    Deploy(SatDeployArgs),
}

#[derive(Args)]
pub struct SatDeployArgs {
    #[command(flatten)]
    cluster: crate::k8s::ClusterArgs,
    #[command(flatten)]
    manifest: ManifestArgs,
    /// Wait (up to --timeout) until the pod runs, read the enrollment token its first
    /// start printed from its log, and enroll this client (`satellite add`): the token's
    /// address (the first --advertise, else `<name>.<namespace>.svc`, which resolves only
    /// inside the cluster) must reach the satellite from here.
    #[arg(long)]
    enroll: bool,
    /// With --enroll: the name this client enrolls as [default: USER-host].
    #[arg(long, requires = "enroll")]
    client_name: Option<String>,
}

#[derive(Args)]
pub struct ManifestArgs {
    /// The satellite's name: the StatefulSet, the Service and the `<name>-ca` Secret.
    #[arg(long, default_value = "berth-satellite")]
    name: String,
    /// The image holding the berth binary and runc.
    #[arg(long, default_value = concat!("berth:", env!("CARGO_PKG_VERSION")))]
    image: String,
    /// Size of the PersistentVolumeClaim holding the root (cache, identity, enrolments).
    #[arg(long, default_value = "50Gi")]
    storage: String,
    /// The ServiceAccount the pod runs as (it must exist in the namespace).
    #[arg(long, default_value = "default")]
    service_account: String,
    /// An image pull secret for the pod (repeatable), e.g. `berth-pull`.
    #[arg(long = "image-pull-secret")]
    image_pull_secrets: Vec<String>,
    /// The Service's type: ClusterIP (in the cluster only), NodePort (with --node-port)
    /// or LoadBalancer, for clients outside the cluster.
    #[arg(long, default_value = "ClusterIP", value_parser = ["ClusterIP", "NodePort", "LoadBalancer"])]
    service_type: String,
    /// With --service-type NodePort: the port on every node.
    #[arg(long)]
    node_port: Option<u16>,
    /// Names and addresses clients outside the cluster reach the satellite by (a node's or
    /// the load balancer's), comma-separated or repeated, each with an optional :PORT
    /// (the node port is added to those without one); the first goes into tokens.
    #[arg(long, value_delimiter = ',')]
    advertise: Vec<String>,
    /// The satellite's configuration file (as `berth satellite serve --config`:
    /// [network], [registries], …), kept in the Secret `<name>-config`; paths in it
    /// are the pod's.
    #[arg(long, value_name = "FILE")]
    satellite_config: Option<PathBuf>,
}

#[derive(Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "BERTH_SATELLITE_ADDR", default_value = "0.0.0.0:8372")]
    addr: String,
    /// The satellite's name [default: the host name].
    #[arg(long)]
    name: Option<String>,
    /// Names and addresses clients reach it by, comma-separated, each with an optional
    /// :PORT when something maps another port to --addr's (a Kubernetes NodePort, a NAT,
    /// a proxy); the first goes into tokens [default: the host's first address].
    #[arg(long, value_delimiter = ',')]
    advertise: Vec<String>,
    /// Let builds ask for an entitlement (repeatable): network.host.
    #[arg(long = "allow", value_parser = |s: &str| s.parse::<berth_build::Entitlement>())]
    allow: Vec<berth_build::Entitlement>,
    /// How long client certificates stay valid; clients renew them at half.
    #[arg(long, default_value = "30d", value_parser = crate::parse_duration)]
    client_validity: Duration,
    /// On SIGTERM, how long running builds may finish before they are canceled (new
    /// builds are refused meanwhile).
    #[arg(long, default_value = "10m", value_parser = crate::parse_duration)]
    drain_timeout: Duration,
    /// Build contexts kept per client between builds (e.g. 512M, 4G); the least recently
    /// built go first.
    #[arg(long, default_value = "4G", value_parser = crate::build::parse_size)]
    context_cache: u64,
    /// A directory that may hold the CA (ca.crt, ca.key), such as a mounted Kubernetes
    /// Secret; when it does, that CA is installed into the root and used, otherwise the
    /// root's own CA is (made on the first start).
    #[arg(long, value_name = "DIR")]
    ca_dir: Option<PathBuf>,
    /// The satellite's configuration: the global `--config FILE` (main.rs moves it here),
    /// or inline TOML in BERTH_SATELLITE_CONFIG.
    #[arg(skip)]
    pub config: Option<PathBuf>,
    /// Print the satellite configuration equivalent to a BuildKit buildkitd.toml on
    /// stdout, and every key that has no equivalent on stderr; then exit.
    #[arg(long, value_name = "FILE")]
    import_buildkitd_toml: Option<PathBuf>,
}

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Make an enrollment token and print it alone on stdout; with --pull, make a pull
    /// token and print what `docker login` needs.
    Create {
        /// How long it stays valid (e.g. 30m, 24h, 7d).
        #[arg(long, default_value = "24h", value_parser = crate::parse_duration)]
        ttl: Duration,
        /// How many enrollments it allows (0: unlimited) [default: 1].
        #[arg(long)]
        uses: Option<u32>,
        /// A pull token: credentials for `docker login` to the satellite's registry that
        /// may pull (never push or delete), reusable until it expires or is revoked.
        /// Prints three lines on stdout, `registry: HOST:PORT`, `username: berth-<id>`
        /// and `password: <secret>` (or one JSON object with --format json, keys
        /// registry, username, password, expires), e.g. on the deploy host:
        /// `docker login HOST:PORT -u berth-<id> --password-stdin`.
        #[arg(long)]
        pull: bool,
        /// Output: text, or json (one object: token, id and expires; with --pull
        /// registry, username, password and expires).
        #[arg(long, default_value = "text", value_parser = ["text", "json"])]
        format: String,
    },
    /// List tokens (secrets are never shown again).
    Ls,
    /// Revoke a token by its id.
    Revoke {
        /// The token's id.
        id: String,
    },
}

#[derive(Subcommand)]
pub enum PoolCommand {
    /// Add enrolled satellites to a pool (made if new).
    Add {
        /// The pool's name (`--satellite pool:NAME`).
        name: String,
        /// Enrolled satellites (`berth satellite ls`).
        #[arg(required = true)]
        satellites: Vec<String>,
    },
    /// List the pools and their members.
    Ls,
    /// Forget a pool (its members stay enrolled).
    Rm {
        /// The pool's name.
        name: String,
    },
}

#[derive(Subcommand)]
pub enum ClientsCommand {
    /// List the client certificates issued.
    Ls,
    /// Revoke a client's certificates: the next handshake is refused.
    Revoke {
        /// The client's name, or a certificate serial.
        client: String,
        /// Why (kept in the revocation list).
        #[arg(long, default_value = "revoked by the operator")]
        reason: String,
    },
}

#[derive(Args)]
pub struct AddArgs {
    /// A name for the satellite on this machine.
    name: String,
    /// The token its operator gave (`berth satellite token create`).
    #[arg(long, env = "BERTH_SATELLITE_TOKEN")]
    token: String,
    /// This client's name on the satellite [default: user@host].
    #[arg(long)]
    client_name: Option<String>,
}

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// Where this machine keeps its enrolments.
pub fn enrollments(settings: &Settings) -> Enrollments {
    Enrollments::new(settings.config_dir().join("satellites"))
}

/// Where this machine keeps its satellite pools: beside the enrolments.
pub fn pools(settings: &Settings) -> Pools {
    Pools::new(settings.config_dir().join("satellites"))
}

/// `berth satellite pool …`.
fn pool(settings: &Settings, command: PoolCommand) -> Result<()> {
    let p = pools(settings);
    match command {
        PoolCommand::Add { name, satellites } => {
            let pool = p.add(&name, &satellites, &enrollments(settings))?;
            eprintln!(
                "pool {} has {} member(s): {}; build on it with `berth build --satellite pool:{}`",
                pool.name,
                pool.members.len(),
                pool.members.join(", "),
                pool.name
            );
        }
        PoolCommand::Ls => {
            let enrolled: Vec<String> = enrollments(settings)
                .list()?
                .into_iter()
                .map(|e| e.name)
                .collect();
            println!("{:<16} MEMBERS", "POOL");
            for pool in p.list()? {
                let members: Vec<String> = pool
                    .members
                    .iter()
                    .map(|m| {
                        if enrolled.contains(m) {
                            m.clone()
                        } else {
                            format!("{m} (not enrolled)")
                        }
                    })
                    .collect();
                println!("{:<16} {}", pool.name, members.join(", "));
            }
        }
        PoolCommand::Rm { name } => {
            p.remove(&name)?;
            eprintln!("forgot pool {name} (its satellites stay enrolled)");
        }
    }
    Ok(())
}

pub(crate) fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "satellite".into())
}

pub(crate) fn plain_name(s: &str) -> String {
    let n: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    n.trim_start_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_owned()
}

fn ago(unix: u64) -> String {
    berth_pki::format_utc(SystemTime::UNIX_EPOCH + Duration::from_secs(unix))
}

pub fn run(settings: &Settings, command: SatelliteCommand) -> Result<()> {
    match command {
        SatelliteCommand::Serve(args) => serve(settings, args),
        SatelliteCommand::Pool { command } => pool(settings, command),
        SatelliteCommand::Manifests(args) => {
            print!("{}", manifests(&args)?);
            Ok(())
        }
        SatelliteCommand::Deploy(args) => deploy_k8s(settings, &args),
        SatelliteCommand::Token { command } => {
            let root = SatelliteRoot::new(&settings.root);
            match command {
                TokenCommand::Create {
                    ttl,
                    uses,
                    pull,
                    format,
                } => create_token(&root, ttl, uses, pull, &format)?,
                TokenCommand::Ls => {
                    println!(
                        "{:<18} {:<7} {:<6} {:<22} STATE",
                        "ID", "KIND", "USED", "EXPIRES"
                    );
                    let now = SystemTime::now();
                    for t in root.tokens()?.list()? {
                        let state = if t.revoked_unix.is_some() {
                            "revoked"
                        } else if t.is_usable(now) {
                            "usable"
                        } else if t.expires() <= now {
                            "expired"
                        } else {
                            "used up"
                        };
                        let uses = if t.uses == 0 {
                            format!("{}/∞", t.used)
                        } else {
                            format!("{}/{}", t.used, t.uses)
                        };
                        println!(
                            "{:<18} {:<7} {:<6} {:<22} {state}",
                            t.id,
                            t.kind.to_string(),
                            uses,
                            ago(t.expires_unix)
                        );
                    }
                }
                TokenCommand::Revoke { id } => {
                    root.tokens()?.revoke(&id, SystemTime::now())?;
                    eprintln!("token {id} revoked");
                }
            }
            Ok(())
        }
        SatelliteCommand::Clients { command } => {
            let root = SatelliteRoot::new(&settings.root);
            match command {
                ClientsCommand::Ls => {
                    let revoked: Vec<String> = root
                        .revocations()?
                        .list()?
                        .into_iter()
                        .map(|r| r.serial)
                        .collect();
                    let now = SystemTime::now()
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs());
                    println!("{:<24} {:<34} {:<22} STATE", "CLIENT", "SERIAL", "EXPIRES");
                    for c in root.clients()? {
                        let state = if revoked.contains(&c.serial) {
                            "revoked"
                        } else if c.not_after_unix <= now {
                            "expired"
                        } else {
                            "valid"
                        };
                        println!(
                            "{:<24} {:<34} {:<22} {state}",
                            c.name,
                            c.serial,
                            ago(c.not_after_unix)
                        );
                    }
                }
                ClientsCommand::Revoke { client, reason } => {
                    let n = root.revoke_client(&client, &reason)?;
                    eprintln!("revoked {n} certificate(s) of {client}");
                }
            }
            Ok(())
        }
        SatelliteCommand::Ca => {
            let root = SatelliteRoot::new(&settings.root);
            print!("{}", root.ca()?.cert_pem());
            Ok(())
        }
        SatelliteCommand::Add(args) => {
            let token: Token = args.token.trim().parse().context(
                "--token is not a berth token (berth-<id>.<secret>@host:port#sha256:<pin>)",
            )?;
            let client = args.client_name.unwrap_or_else(|| {
                let user = std::env::var("USER").unwrap_or_else(|_| "user".into());
                plain_name(&format!("{user}-{}", host_name()))
            });
            let rec =
                runtime()?.block_on(enrollments(settings).add(&args.name, &token, &client))?;
            println!(
                "enrolled with satellite {} ({}) as {}",
                rec.satellite, rec.address, rec.client
            );
            Ok(())
        }
        SatelliteCommand::Ls => {
            let e = enrollments(settings);
            let default = e.default_name()?;
            println!(
                "{:<16} {:<28} {:<16} CLIENT",
                "NAME", "ADDRESS", "SATELLITE"
            );
            for s in e.list()? {
                let mark = if default.as_deref() == Some(&s.name) {
                    "*"
                } else {
                    ""
                };
                println!(
                    "{:<16} {:<28} {:<16} {}",
                    format!("{}{mark}", s.name),
                    s.address,
                    s.satellite,
                    s.client
                );
            }
            Ok(())
        }
        SatelliteCommand::Rm { name } => {
            enrollments(settings).remove(&name)?;
            eprintln!("forgot satellite {name}");
            Ok(())
        }
        SatelliteCommand::Use { name } => {
            enrollments(settings).set_default(&name)?;
            eprintln!("builds go to satellite {name} (`berth build --no-satellite` builds here)");
            Ok(())
        }
        SatelliteCommand::Inspect { name } => {
            let e = enrollments(settings);
            let name = match name {
                Some(n) => n,
                None => e.default_name()?.context(
                    "no satellite in use: name one, or pick one with `berth satellite use NAME`",
                )?,
            };
            if let Some(pool) = name.strip_prefix(POOL_PREFIX) {
                anyhow::bail!(
                    "builds go to satellite pool {pool}: inspect one of its members \
                     (`berth satellite pool ls`), e.g. `berth satellite inspect MEMBER`"
                );
            }
            let rec = e.get(&name)?;
            let rt = runtime()?;
            let st = rt.block_on(async {
                let mut conn = e.connect(&name).await?;
                conn.status().await
            })?;
            println!("name:            {name} (satellite {})", st.name);
            println!("address:         {}", rec.address);
            println!("version:         {}", st.version);
            println!("load:            {:.2} on {} cpus", st.load1, st.cpus);
            println!("running builds:  {}", st.running_builds);
            println!(
                "cache:           {}{}",
                human(st.cache_bytes),
                if st.cache_cap_bytes > 0 {
                    format!(" of {}", human(st.cache_cap_bytes))
                } else {
                    String::new()
                }
            );
            println!("clients:         {}", st.enrolled_clients);
            println!(
                "this client:     {} (certificate valid until {})",
                st.client,
                ago(st.client_cert_expires.max(0) as u64)
            );
            Ok(())
        }
    }
}

/// `berth satellite token create`.
fn create_token(
    root: &SatelliteRoot,
    ttl: Duration,
    uses: Option<u32>,
    pull: bool,
    format: &str,
) -> Result<()> {
    let (kind, uses) = match (pull, uses) {
        (false, uses) => (TokenKind::Enroll, uses.unwrap_or(1)),
        (true, None | Some(0)) => (TokenKind::Pull, 0),
        (true, Some(_)) => anyhow::bail!(
            "--uses does not apply to pull tokens: they are checked on every registry \
             request, not counted; bound them with --ttl and end them with `berth satellite \
             token revoke ID`"
        ),
    };
    let token = root.create_token(TokenOptions { kind, ttl, uses })?;
    let expires = berth_pki::format_utc(SystemTime::now() + ttl);
    let user = format!("berth-{}", token.id);
    match (pull, format) {
        (false, "json") => println!(
            "{}",
            serde_json::json!({ "token": token.to_string(), "id": token.id, "expires": expires })
        ),
        (false, _) => println!("{token}"),
        (true, "json") => println!(
            "{}",
            serde_json::json!({
                "registry": token.addr,
                "username": user,
                "password": token.secret,
                "expires": expires,
            })
        ),
        (true, _) => {
            println!(
                "registry: {}\nusername: {user}\npassword: {}",
                token.addr, token.secret
            );
            eprintln!(
                "pull token {} (valid until {expires}; `berth satellite token revoke {}` ends it).\n\
                 On the deploy host: save the output of `berth satellite ca` (run here) as\n  \
                 /etc/docker/certs.d/{}/ca.crt\nthen\n  \
                 docker login {} --username {user} --password-stdin",
                token.id, token.id, token.addr, token.addr
            );
        }
    }
    Ok(())
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn serve(settings: &Settings, args: ServeArgs) -> Result<()> {
    if let Some(file) = &args.import_buildkitd_toml {
        return import_buildkitd(file);
    }
    let addr: SocketAddr = args
        .addr
        .parse()
        .with_context(|| format!("--addr {:?} is not host:port", args.addr))?;
    let inline = std::env::var(berth_satellite::config::CONFIG_ENV).ok();
    let config = berth_satellite::SatelliteConfig::load(args.config.as_deref(), inline.as_deref())?;
    let opts = SatelliteOptions {
        root: settings.root.clone(),
        name: args.name.unwrap_or_else(|| plain_name(&host_name())),
        advertise: args.advertise,
        addr,
        allow: args.allow,
        client_validity: args.client_validity,
        drain_timeout: args.drain_timeout,
        context_cache: args.context_cache,
        ca_dir: args.ca_dir,
        config,
    };
    let (sat, opened) = berth_satellite::Satellite::open(&opts)?;
    let rt = runtime()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("listen on {addr}: choose another --addr"))?;
        let local = listener.local_addr()?;
        // A closed stdout (a supervisor that read the first line) must not stop the server.
        let mut text = format!(
            "berth satellite {} listening on {local} (root {}, tokens name {})\n",
            opts.name,
            settings.root.display(),
            opened.address
        );
        if opened.first_start {
            let token = sat.root().create_token(TokenOptions::default())?;
            text.push_str(&format!(
                "first start: enroll a client with\n  berth satellite add {} --token {token}\n\
                 (valid 24 h, once; more with `berth satellite token create`)\n",
                opts.name
            ));
        }
        use std::io::Write;
        let mut out = std::io::stdout();
        let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
        sat.serve(listener, crate::shutdown_signal()).await?;
        Ok(())
    })
}

/// `serve --import-buildkitd-toml FILE`: the equivalent satellite config on stdout, each
/// key without one on stderr.
fn import_buildkitd(file: &std::path::Path) -> Result<()> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("read buildkitd config {}", file.display()))?;
    let imported = berth_satellite::config::import_buildkitd(&text, &file.display().to_string())?;
    print!(
        "# berth satellite config from {} (berth satellite serve --import-buildkitd-toml)\n{}",
        file.display(),
        imported.config.to_toml()
    );
    for (key, why) in &imported.unmapped {
        eprintln!("{key}: not mapped: {why}");
    }
    Ok(())
}

/// The Kubernetes YAML of `berth satellite manifests`, rendered by
/// `berth_kube::satellite` from typed objects (the pod through `berth_kube::pod`).
///
/// The CA lives in the root, on the PersistentVolumeClaim, so a restarted or rescheduled
/// pod keeps it with the cache and the enrolments. The Secret `<name>-ca` is optional: an
/// operator who wants the CA to outlive the volume copies it there once, and the pod
/// (mounting it at `--ca-dir`) then uses it even on a fresh volume. It is not printed
/// here: it would need the CA's key, which only the first start makes.
fn manifests(args: &ManifestArgs) -> Result<String> {
    berth_kube::satellite::manifests(&satellite_input(args)?).map_err(anyhow::Error::msg)
}

fn satellite_input(args: &ManifestArgs) -> Result<berth_kube::satellite::SatelliteInput> {
    use berth_kube::satellite::Exposure;
    let exposure = match (args.service_type.as_str(), args.node_port) {
        ("NodePort", Some(_)) if args.advertise.is_empty() => bail!(
            "--service-type NodePort needs --advertise NODE (a node's name or address): \
             tokens name it with the node port, and the certificate carries it"
        ),
        ("NodePort", Some(port)) => Exposure::NodePort(port),
        ("NodePort", None) => {
            bail!("--service-type NodePort needs --node-port: the port tokens name")
        }
        (_, Some(_)) => bail!("--node-port goes with --service-type NodePort"),
        ("LoadBalancer", None) => {
            if args.advertise.is_empty() {
                eprintln!(
                    "warning: --service-type LoadBalancer without --advertise: tokens name \
                     {}.<namespace>.svc, which clients outside the cluster cannot reach; \
                     deploy again with --advertise and the balancer's name once it has one",
                    args.name
                );
            }
            Exposure::LoadBalancer
        }
        _ => Exposure::ClusterIp,
    };
    let config = match &args.satellite_config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("--satellite-config {}", path.display()))?;
            berth_satellite::SatelliteConfig::parse(&text, &path.display().to_string())?;
            Some(text)
        }
        None => None,
    };
    Ok(berth_kube::satellite::SatelliteInput {
        name: args.name.clone(),
        image: args.image.clone(),
        storage: args.storage.clone(),
        port: berth_satellite::DEFAULT_PORT,
        identity: berth_kube::pod::PodIdentity {
            service_account: args.service_account.clone(),
            pull_secrets: args.image_pull_secrets.clone(),
        },
        advertise: args.advertise.clone(),
        exposure,
        config,
    })
}

/// `berth satellite deploy --k8s`: berth_kube::satellite::deploy on the chosen cluster,
/// with a pull Secret from berth's credentials for the image's registry (when it has
/// some), as `berth deploy --k8s` makes one from the credentials it pushed with.
fn deploy_k8s(settings: &Settings, args: &SatDeployArgs) -> Result<()> {
    let input = satellite_input(&args.manifest)?;
    berth_kube::satellite::validate(&input).map_err(anyhow::Error::msg)?;
    let creds = crate::k8s::pull_credentials_for(&input.image)?;
    runtime()?.block_on(async {
        let kube = crate::k8s::connect_cluster(settings, &args.cluster).await?;
        let pod =
            berth_kube::satellite::deploy(&kube, &input, creds.as_ref(), args.cluster.timeout)
                .await?;
        let spec = pod.spec.unwrap_or_default();
        println!(
            "satellite {}: pod {}-0 as {} with pull secrets {}",
            input.name,
            input.name,
            spec.service_account_name.unwrap_or_default(),
            spec.image_pull_secrets
                .unwrap_or_default()
                .into_iter()
                .map(|r| r.name)
                .collect::<Vec<_>>()
                .join(",")
        );
        let how = berth_kube::satellite::enroll_instructions(&input.name, &kube.namespace);
        if !args.enroll {
            eprintln!("{how}\n(or deploy with --enroll to do it now)");
            return Ok(());
        }
        enroll_in_cluster(settings, &kube, &input.name, args, &how).await
    })
}

/// `satellite deploy --k8s --enroll`: waits for the pod to run, reads its first-start
/// token from its log and enrolls with it; otherwise says why and how to do it by hand.
async fn enroll_in_cluster(
    settings: &Settings,
    kube: &berth_kube::Kube,
    name: &str,
    args: &SatDeployArgs,
    how: &str,
) -> Result<()> {
    use berth_kube::satellite::{Enrollment, first_start_token};
    let start = std::time::Instant::now();
    let token = loop {
        match first_start_token(kube, name).await? {
            Enrollment::Token(t) => break t,
            Enrollment::NoToken => bail!(
                "satellite {name}: its log holds no first-start token (its root was there \
                 before, or the log was rotated)\n{how}"
            ),
            Enrollment::NotRunning(why) if start.elapsed() >= args.cluster.timeout => bail!(
                "satellite {name}: not enrolled: {why} after {}s\n{how}",
                args.cluster.timeout.as_secs()
            ),
            Enrollment::NotRunning(_) => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    };
    let token: Token = token
        .parse()
        .with_context(|| format!("satellite {name}: the token in its log is not a berth token"))?;
    let client = args.client_name.clone().unwrap_or_else(|| {
        let user = std::env::var("USER").unwrap_or_else(|_| "user".into());
        plain_name(&format!("{user}-{}", host_name()))
    });
    // The Service sends connections only to a Ready pod (its /healthz answers), and a
    // node port or load balancer may take a moment more to follow.
    while !berth_kube::satellite::pod_ready(kube, name).await? {
        if start.elapsed() >= args.cluster.timeout {
            bail!(
                "satellite {name}: not enrolled: its pod runs but is not Ready after {}s \
                 (its readiness probe, /healthz, fails: see kubectl describe pod {name}-0)\n{how}",
                args.cluster.timeout.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut tries = 0u32;
    let rec = loop {
        match enrollments(settings).add(name, &token, &client).await {
            Ok(rec) => break rec,
            // Refused or reset before the request went out (a Service whose endpoint is
            // not there yet): the token went nowhere, try again.
            Err(berth_satellite::SatError::Unreachable(why))
                if start.elapsed() < args.cluster.timeout =>
            {
                if tries.is_multiple_of(10) {
                    eprintln!("satellite {name}: waiting for {}: {why}", token.addr);
                }
                tries += 1;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!(
                    "satellite {name}: enroll with the token from its log\n{how}"
                )));
            }
        }
    };
    println!(
        "enrolled with satellite {} ({}) as {}",
        rec.satellite, rec.address, rec.client
    );
    Ok(())
}

/// The satellite a build goes to: `--satellite NAME`, BERTH_SATELLITE, or the one chosen
/// with `berth satellite use`; none with `--no-satellite`.
pub fn chosen(
    flag: Option<&str>,
    no_satellite: bool,
    settings: &Settings,
) -> Result<Option<String>> {
    if no_satellite {
        return Ok(None);
    }
    if let Some(n) = flag.filter(|n| !n.is_empty()) {
        return Ok(Some(n.to_owned()));
    }
    Ok(enrollments(settings).default_name()?)
}

/// How long each member of a pool has to answer its probe before a build
/// (BERTH_POOL_PROBE_TIMEOUT overrides; 0 skips the probes: members are tried in the
/// pool's order).
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

fn probe_timeout() -> Result<Duration> {
    match std::env::var("BERTH_POOL_PROBE_TIMEOUT") {
        Ok(v) => {
            crate::parse_duration(&v).map_err(|e| anyhow::anyhow!("BERTH_POOL_PROBE_TIMEOUT: {e}"))
        }
        Err(_) => Ok(PROBE_TIMEOUT),
    }
}

/// A build on satellite `name` (or on a member of pool `pool:NAME`), shown like a local
/// one. With `fetch` (a berth root), the images come down into that store afterwards:
/// the request's tags (a Dockerfile build), or every image an Earthfile build saved.
/// Returns the satellite that ran it, and what it made.
#[allow(clippy::too_many_arguments)]
pub fn build(
    settings: &Settings,
    name: &str,
    context: PathBuf,
    dockerfile: Option<PathBuf>,
    request: berth_satellite::proto::BuildRequest,
    ssh: HashMap<String, PathBuf>,
    sink: Arc<dyn Progress>,
    fetch: Option<PathBuf>,
    quiet: bool,
) -> Result<(String, berth_satellite::RemoteResult)> {
    let e = enrollments(settings);
    let remote = berth_satellite::RemoteBuild {
        sums: sums_path(settings, &context),
        context,
        dockerfile,
        request,
        ssh,
    };
    let rt = runtime()?;
    rt.block_on(async {
        let run = async {
            let described = berth_satellite::describe(&remote).await?;
            let pool = name.strip_prefix(POOL_PREFIX);
            let order: Vec<String> = match pool {
                None => vec![name.to_owned()],
                Some(pool) => {
                    let pool = pools(settings).get(pool)?;
                    let timeout = probe_timeout()?;
                    if timeout.is_zero() {
                        pool.members
                    } else {
                        let ranked = berth_satellite::pool::rank(
                            berth_satellite::pool::probe_members(
                                &e,
                                &pool.members,
                                &described,
                                &remote.request,
                                timeout,
                            )
                            .await,
                        );
                        if !quiet {
                            for c in &ranked {
                                eprintln!("pool {}: {}: {}", pool.name, c.name, c.summary());
                            }
                        }
                        ranked.into_iter().map(|c| c.name).collect()
                    }
                }
            };
            let attempt = Attempt {
                enrolled: &e,
                pool,
                remote: &remote,
                described: &described,
                fetch: fetch.as_deref(),
                quiet,
                label: None,
                offset: 0,
            };
            attempt
                .run(&order, sink.as_ref())
                .await
                .map_err(|(_, err)| err)
        };
        tokio::select! {
            r = run => r,
            () = crate::shutdown_signal() => {
                // Dropping the stream tells the satellite to stop the build.
                eprintln!("berth: canceling the build on satellite {name}");
                std::process::exit(130);
            }
        }
    })
}

/// Where `berth deploy` has a satellite push the image it builds for a service, so the
/// image goes from the satellite straight to the deploy's registry.
pub(crate) struct DeployPush {
    /// The image's name in the build (`IMAGE:VERSION`): the Dockerfile build's tag, or the
    /// name the Earthfile target saves it under.
    pub name: String,
    /// Where it goes: `registry/repository:version`.
    pub dest: String,
    /// berth's credentials for the deploy's registry (`registry`, then the login).
    pub credential: Option<(String, berth_client::Credentials)>,
}

impl DeployPush {
    /// Asks the satellite to push, with the credentials for this push only.
    pub(crate) fn add_to(&self, request: &mut berth_satellite::proto::BuildRequest) {
        request.push_to.insert(self.name.clone(), self.dest.clone());
        if let Some((registry, c)) = &self.credential {
            request.credentials.insert(
                registry.clone(),
                berth_satellite::proto::Credential {
                    username: c.username.clone(),
                    password: c.password.clone(),
                },
            );
        }
    }

    /// After the build on `member`: the satellite's push (`registry/repository@digest`),
    /// said so; or, when it could not push (no route to the registry, credentials
    /// refused, a satellite older than this berth), why, and the image (`manifest`)
    /// fetched into this machine's store under its name, for the deploy to push from
    /// here (`None`).
    pub(crate) fn outcome(
        &self,
        settings: &Settings,
        member: &str,
        result: &berth_satellite::proto::BuildResult,
        manifest: Option<&str>,
    ) -> Result<Option<String>> {
        if let Some(pushed) = result.pushed_to.get(&self.name) {
            eprintln!(
                "push: satellite {member} pushed {} to {} ({pushed}); nothing came to this machine",
                self.name, self.dest
            );
            return Ok(Some(pushed.clone()));
        }
        let why = if result.push_error.is_empty() {
            "it did not push (a berth older than this one, without pushes for deploys)".to_owned()
        } else {
            result.push_error.clone()
        };
        eprintln!(
            "push: satellite {member} could not push {} to {}: {why}\n\
             push: fetching {} from satellite {member} and pushing it from this machine instead",
            self.name, self.dest, self.name
        );
        let manifest: berth_oci::Digest = manifest
            .with_context(|| {
                format!(
                    "the build on satellite {member} made no image named {}",
                    self.name
                )
            })?
            .parse()?;
        let store = crate::open_store(settings)?;
        let e = enrollments(settings);
        runtime()?.block_on(async {
            let conn = e.connect(member).await?;
            conn.fetch_image(&store, &self.name, &manifest).await
        })?;
        Ok(None)
    }
}

/// Where the client keeps the file hashes of `context` between builds.
fn sums_path(settings: &Settings, context: &std::path::Path) -> PathBuf {
    settings.root.join("satellite-client/sums").join(format!(
        "{:016x}",
        fnv(context.to_string_lossy().as_bytes())
    ))
}

/// One build tried on the members of an order in turn (one member for a satellite).
struct Attempt<'a> {
    enrolled: &'a Enrollments,
    /// The pool's name, when it is one.
    pool: Option<&'a str>,
    remote: &'a berth_satellite::RemoteBuild,
    described: &'a berth_satellite::Described,
    fetch: Option<&'a std::path::Path>,
    quiet: bool,
    /// What the build is, for its lines, when it is one of several (`+a`); its
    /// steps' names then start with the member's, and their numbers with `offset`.
    label: Option<&'a str>,
    offset: usize,
}

impl Attempt<'_> {
    /// Runs the build on the first member of `order` that takes it: a member that fails
    /// before its build started (down, draining, refusing this client) hands it to the
    /// next. Returns the member and what it made, or the member that failed (the last
    /// one tried) and why.
    async fn run(
        &self,
        order: &[String],
        sink: &dyn Progress,
    ) -> std::result::Result<(String, berth_satellite::RemoteResult), (String, anyhow::Error)> {
        let (e, pool) = (self.enrolled, self.pool);
        let what = self.label.map(|l| format!(" {l}")).unwrap_or_default();
        let mut failed = Vec::new();
        for (i, member) in order.iter().enumerate() {
            if let Some(pool) = pool
                && !self.quiet
            {
                eprintln!("building{what} on satellite {member} (pool {pool})");
            }
            let mut started = false;
            // Err((whether the next member may take the build, why)).
            let attempt = async {
                let mut conn = e
                    .connect(member)
                    .await
                    .map_err(|err| (true, anyhow::Error::from(err)))?;
                let tagged = Tagged {
                    inner: sink,
                    offset: self.offset,
                    tag: format!("{member}:"),
                };
                let sink: &dyn Progress = if self.label.is_some() { &tagged } else { sink };
                let mut on_event = |ev| {
                    started = true;
                    sink.event(ev)
                };
                let r = berth_satellite::build_described(
                    &mut conn,
                    self.remote.clone(),
                    self.described.clone(),
                    &mut on_event,
                )
                .await
                .map_err(|err| (err.is_satellite_unavailable(), err.into()))?;
                Ok((conn, r))
            };
            let (conn, r) = match attempt.await {
                Ok(done) => done,
                // Before its build started, a member that cannot take it (down,
                // draining, refusing this client) sends the build to the next one.
                Err((true, err)) if !started && pool.is_some() && i + 1 < order.len() => {
                    eprintln!(
                        "berth: satellite {member} failed before the build{what} started: \
                         {err:#}; trying {}",
                        order[i + 1]
                    );
                    failed.push(format!("{member}: {err:#}"));
                    continue;
                }
                Err((_, err)) if !failed.is_empty() => {
                    failed.push(format!("{member}: {err:#}"));
                    return Err((
                        member.clone(),
                        anyhow::anyhow!(
                            "no member of pool {} could run the build{what}:\n  {}",
                            pool.unwrap_or(member),
                            failed.join("\n  ")
                        ),
                    ));
                }
                Err((_, err)) => return Err((member.clone(), err)),
            };
            self.fetch_images(conn, &r)
                .await
                .map_err(|err| (member.clone(), err))?;
            return Ok((member.clone(), r));
        }
        Err((
            String::new(),
            anyhow::anyhow!("satellite pool {} has no members", pool.unwrap_or_default()),
        ))
    }

    /// Brings the images `r` made into the store at `self.fetch`, if any: only the
    /// blobs this machine lacks come down.
    async fn fetch_images(
        &self,
        conn: berth_satellite::Connection,
        r: &berth_satellite::RemoteResult,
    ) -> Result<()> {
        let Some(root) = self.fetch else {
            return Ok(());
        };
        let store = berth_store::Store::open(root)
            .with_context(|| format!("open store at {}", root.display()))?;
        let images: Vec<(&str, &str)> = if r.result.images.is_empty() {
            self.remote
                .request
                .tags
                .iter()
                .map(|t| (t.as_str(), r.result.manifest.as_str()))
                .collect()
        } else {
            r.result
                .images
                .iter()
                .map(|i| (i.name.as_str(), i.manifest.as_str()))
                .collect()
        };
        for (t, manifest) in images {
            conn.fetch_image(&store, t, &manifest.parse()?).await?;
        }
        Ok(())
    }
}

/// One of several builds [`build_fanned`] runs at once: what it is for people (`+a`)
/// and its request.
pub struct Unit {
    pub label: String,
    pub request: berth_satellite::proto::BuildRequest,
}

/// What one [`Unit`] made, and the member that made it.
pub struct UnitDone {
    pub label: String,
    pub member: String,
    pub result: berth_satellite::RemoteResult,
}

impl UnitDone {
    /// For a closing line: `+a on s1, +b on s2`, and the context's entries, the files
    /// and bytes uploaded, over all of `done`.
    pub fn summary(done: &[UnitDone]) -> (String, usize, u64, u64) {
        let ran: Vec<String> = done
            .iter()
            .map(|d| format!("{} on {}", d.label, d.member))
            .collect();
        let (files, bytes) = done.iter().fold((0, 0), |(f, b), d| {
            (f + d.result.uploaded_files, b + d.result.uploaded_bytes)
        });
        let entries = done.first().map_or(0, |d| d.result.entries);
        (ran.join(", "), entries, files, bytes)
    }
}

/// Builds `units` (from the folder `context`, with `dockerfile` for Dockerfile stages, or
/// none for Earthfile targets) at once on the members of pool `pool`: each member is probed for each unit, each unit goes to
/// the member [`berth_satellite::pool::assign`] picks (its cache first, then spread over
/// the members), and a member that fails before that unit's build starts hands it to
/// the next of that unit's order. Each unit's progress comes through `sink` with the
/// member before its steps' names. A unit that fails fails the whole, naming its member,
/// once every unit has ended.
#[allow(clippy::too_many_arguments)]
pub fn build_fanned(
    settings: &Settings,
    pool: &str,
    context: PathBuf,
    dockerfile: Option<PathBuf>,
    ssh: HashMap<String, PathBuf>,
    units: Vec<Unit>,
    sink: Arc<dyn Progress>,
    fetch: Option<PathBuf>,
) -> Result<Vec<UnitDone>> {
    let e = enrollments(settings);
    let pool = pools(settings).get(pool)?;
    let sums = sums_path(settings, &context);
    let remotes: Vec<berth_satellite::RemoteBuild> = units
        .iter()
        .map(|u| berth_satellite::RemoteBuild {
            context: context.clone(),
            dockerfile: dockerfile.clone(),
            sums: sums.clone(),
            request: u.request.clone(),
            ssh: ssh.clone(),
        })
        .collect();
    let rt = runtime()?;
    rt.block_on(async {
        let run = async {
            // The folder is described once: every unit sends the same one.
            let described = berth_satellite::describe(&remotes[0]).await?;
            let timeout = probe_timeout()?;
            let orders: Vec<Vec<String>> = if timeout.is_zero() {
                vec![pool.members.clone(); units.len()]
            } else {
                let probes = remotes.iter().map(|r| {
                    berth_satellite::pool::probe_members(
                        &e,
                        &pool.members,
                        &described,
                        &r.request,
                        timeout,
                    )
                });
                let assigned =
                    berth_satellite::pool::assign(futures_util::future::join_all(probes).await);
                for (u, ranked) in units.iter().zip(&assigned) {
                    for c in ranked {
                        eprintln!(
                            "pool {}: {} {}: {}",
                            pool.name,
                            u.label,
                            c.name,
                            c.summary()
                        );
                    }
                }
                assigned
                    .into_iter()
                    .map(|r| r.into_iter().map(|c| c.name).collect())
                    .collect()
            };
            let each = units.iter().zip(&remotes).zip(&orders).enumerate().map(
                |(i, ((u, remote), order))| {
                    let attempt = Attempt {
                        enrolled: &e,
                        pool: Some(&pool.name),
                        remote,
                        described: &described,
                        fetch: fetch.as_deref(),
                        quiet: false,
                        label: Some(&u.label),
                        offset: i * 1000,
                    };
                    let sink = sink.clone();
                    async move { attempt.run(order, sink.as_ref()).await }
                },
            );
            let ended = futures_util::future::join_all(each).await;
            let mut done = Vec::new();
            let mut failed = Vec::new();
            for (u, r) in units.iter().zip(ended) {
                match r {
                    Ok((member, result)) => done.push(UnitDone {
                        label: u.label.clone(),
                        member,
                        result,
                    }),
                    Err((member, err)) if member.is_empty() => {
                        failed.push(format!("{}: {err:#}", u.label))
                    }
                    Err((member, err)) => failed.push(format!(
                        "{} on satellite {member} (pool {}): {err:#}",
                        u.label, pool.name
                    )),
                }
            }
            match failed.len() {
                0 => Ok(done),
                1 => anyhow::bail!("{}", failed[0]),
                n => anyhow::bail!("{n} builds failed:\n  {}", failed.join("\n  ")),
            }
        };
        tokio::select! {
            r = run => r,
            () = crate::shutdown_signal() => {
                // Dropping the streams tells the members to stop their builds.
                eprintln!("berth: canceling the builds on pool {}", pool.name);
                std::process::exit(130);
            }
        }
    })
}

/// The progress of one of several builds at once: its step numbers moved past the
/// others' (`offset`), its steps' names after `tag` (the member's).
struct Tagged<'a> {
    inner: &'a dyn Progress,
    offset: usize,
    tag: String,
}

impl Progress for Tagged<'_> {
    fn event(&self, e: berth_build::Event) {
        use berth_build::Event;
        let o = self.offset;
        let tag = |name: String| format!("{} {name}", self.tag);
        self.inner.event(match e {
            Event::Started { id, name } => Event::Started {
                id: id + o,
                name: tag(name),
            },
            Event::Cached { id, name } => Event::Cached {
                id: id + o,
                name: tag(name),
            },
            Event::Reason { id, name, reason } => Event::Reason {
                id: id + o,
                name: tag(name),
                reason,
            },
            Event::Log { id, stream, data } => Event::Log {
                id: id + o,
                stream,
                data,
            },
            Event::Done { id, name, elapsed } => Event::Done {
                id: id + o,
                name: tag(name),
                elapsed,
            },
            Event::Failed { id, name } => Event::Failed {
                id: id + o,
                name: tag(name),
            },
        });
    }
}

fn fnv(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Reads a secret's value on the client, to send it in the build request.
pub fn secret_value(src: &berth_build::SecretSource) -> Result<Vec<u8>> {
    Ok(match src {
        berth_build::SecretSource::File(p) => {
            std::fs::read(p).with_context(|| format!("read secret {}", p.display()))?
        }
        berth_build::SecretSource::Env(v) => std::env::var(v)
            .with_context(|| format!("secret: environment variable {v} is not set"))?
            .into_bytes(),
        berth_build::SecretSource::Value(v) => v.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn context_cache_sizes() {
        use crate::build::parse_size;
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("100"), Ok(100));
        assert!(parse_size("4X").is_err() && parse_size("G").is_err());
    }

    #[test]
    fn plain_names() {
        assert_eq!(super::plain_name("root@my host"), "root-my-host");
        assert_eq!(super::plain_name("-x"), "x");
    }
}
