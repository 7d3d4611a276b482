//! `berth agent …` (on a host), `berth host …`, `berth deploy` and `berth rollback` (on
//! the deploying machine). The work is berth-deploy's; this pushes the image (the store
//! is the CLI's) and prints.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use berth_deploy::deployer::{HostResult, Planned};
use berth_deploy::{AgentOptions, AgentRoot, DeployFile, Hosts};
use berth_pki::{Token, TokenOptions};
use clap::{Args, Subcommand};

use crate::satellite::{host_name, plain_name, runtime};
use crate::settings::Settings;

#[derive(Subcommand)]
pub enum AgentCommand {
    /// Run the deploy agent on this host: it drives this host's dockerd (DOCKER_HOST) and
    /// berth's reverse proxy for the deploying machines enrolled with it (port 8373,
    /// mutual TLS).
    Serve(AgentServeArgs),
    /// Enrollment tokens for deploying machines (run on the agent's host, with its --root).
    Token {
        #[command(subcommand)]
        command: AgentTokenCommand,
    },
}

#[derive(Args)]
pub struct AgentServeArgs {
    /// Address to listen on.
    #[arg(long, env = "BERTH_AGENT_ADDR", default_value = "0.0.0.0:8373")]
    addr: String,
    /// The agent's name [default: the host name].
    #[arg(long)]
    name: Option<String>,
    /// Names and addresses deploying machines reach it by, comma-separated, each with an
    /// optional :PORT when a NAT or proxy maps another port to --addr's; the first goes
    /// into tokens [default: the --addr address].
    #[arg(long, value_delimiter = ',')]
    advertise: Vec<String>,
    /// How long certificates of deploying machines stay valid.
    #[arg(long, default_value = "30d", value_parser = crate::parse_duration)]
    client_validity: Duration,
    /// Serve plain HTTP on this unix socket instead of mutual TLS on --addr: the agent
    /// container berth starts on SSH-driven hosts, reached through an SSH forward.
    #[arg(long)]
    unix: Option<PathBuf>,
}

#[derive(Subcommand)]
pub enum AgentTokenCommand {
    /// Make an enrollment token and print it alone on stdout.
    Create {
        /// How long it stays valid (e.g. 30m, 24h, 7d).
        #[arg(long, default_value = "24h", value_parser = crate::parse_duration)]
        ttl: Duration,
        /// How many enrollments it allows (0: unlimited).
        #[arg(long, default_value = "1")]
        uses: u32,
    },
}

#[derive(Subcommand)]
pub enum HostCommand {
    /// Enroll with a host's agent, using a token from `berth agent token create` there.
    Add(HostAddArgs),
    /// List the hosts this machine deploys to.
    Ls,
    /// Forget a host (this machine's certificate and key for it are deleted).
    Rm {
        /// The host's name here.
        name: String,
    },
    /// Ask a host's agent for its status (over mutual TLS).
    Status {
        /// The host's name here.
        name: String,
    },
}

#[derive(Args)]
pub struct HostAddArgs {
    /// A name for the host; deploy files name it in `[deploy.roles.*] hosts`.
    name: String,
    /// The token (`berth agent token create` on the host).
    #[arg(long, env = "BERTH_AGENT_TOKEN")]
    token: String,
    /// This machine's name on the agent [default: user-host].
    #[arg(long)]
    client_name: Option<String>,
}

/// `--hosts` and `--role`: the part of the file's hosts a deploy or rollback touches.
#[derive(Args)]
struct OnlyHosts {
    /// Only these hosts (comma-separated names of the file's roles).
    #[arg(long, value_delimiter = ',')]
    hosts: Vec<String>,
    /// Only the hosts of these roles (comma-separated, or repeated).
    #[arg(long, value_delimiter = ',')]
    role: Vec<String>,
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct DeployArgs {
    #[command(subcommand)]
    command: Option<DeployCommand>,
    /// Services to deploy [default: every service of the file].
    services: Vec<String>,
    /// The deploy file.
    #[arg(long, short = 'f', default_value = "berth.toml")]
    file: PathBuf,
    /// The version to deploy: the image's tag in berth's store (`IMAGE:VERSION`)
    /// [default: the tag the file names].
    #[arg(long)]
    version: Option<String>,
    #[command(flatten)]
    only: OnlyHosts,
    #[command(flatten)]
    k8s: crate::k8s::K8sArgs,
}

/// What runs on the hosts: `berth deploy ps|logs|exec|history` (`berth history` is the
/// image command).
#[derive(Subcommand)]
pub enum DeployCommand {
    /// The services on each host of the file: serving version, container, state, ports.
    Ps {
        /// The deploy file.
        #[arg(long, short = 'f', default_value = "berth.toml")]
        file: PathBuf,
    },
    /// The output of a service's serving container on each of its hosts.
    Logs {
        /// The service.
        service: String,
        /// Keep printing what it writes.
        #[arg(long, short = 'f')]
        follow: bool,
        /// Only the last N lines.
        #[arg(long, short = 'n')]
        tail: Option<u64>,
        /// Only this host [default: each host of the service].
        #[arg(long)]
        host: Option<String>,
        /// The deploy file.
        #[arg(long, default_value = "berth.toml")]
        file: PathBuf,
    },
    /// Run a command in a service's serving container on each of its hosts (no
    /// terminal, no stdin); fails when it fails on any host.
    Exec {
        /// The service.
        service: String,
        /// The command and its arguments (after `--`).
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
        /// Only this host [default: each host of the service].
        #[arg(long)]
        host: Option<String>,
        /// In this replica, from 1 [default: the first].
        #[arg(long)]
        replica: Option<u32>,
        /// The deploy file.
        #[arg(long, short = 'f', default_value = "berth.toml")]
        file: PathBuf,
    },
    /// Each host's versions of a service, newest first, with image digests; the live one
    /// marked.
    History {
        /// The service [default: the file's only service].
        service: Option<String>,
        /// The deploy file.
        #[arg(long, short = 'f', default_value = "berth.toml")]
        file: PathBuf,
    },
}

#[derive(Args)]
pub struct RollbackArgs {
    /// The version to go back to [default: the one before the serving one, per host].
    version: Option<String>,
    /// The service [default: the file's only service].
    #[arg(long, short = 's')]
    service: Option<String>,
    /// The deploy file.
    #[arg(long, short = 'f', default_value = "berth.toml")]
    file: PathBuf,
    /// Only list each host's versions (newest, the serving one, first).
    #[arg(long)]
    list: bool,
    #[command(flatten)]
    only: OnlyHosts,
    #[command(flatten)]
    k8s: crate::k8s::K8sArgs,
}

fn hosts(settings: &Settings) -> Hosts {
    Hosts::new(settings.config_dir().join("hosts"))
}

pub fn agent(settings: &Settings, command: AgentCommand) -> Result<()> {
    match command {
        AgentCommand::Serve(args) => serve(settings, args),
        AgentCommand::Token {
            command: AgentTokenCommand::Create { ttl, uses },
        } => {
            let token = AgentRoot::new(&settings.root).create_token(TokenOptions {
                kind: berth_pki::TokenKind::Enroll,
                ttl,
                uses,
            })?;
            println!("{token}");
            Ok(())
        }
    }
}

fn serve(settings: &Settings, args: AgentServeArgs) -> Result<()> {
    let addr: SocketAddr = args
        .addr
        .parse()
        .with_context(|| format!("--addr {:?} is not host:port", args.addr))?;
    let opts = AgentOptions {
        root: settings.root.clone(),
        name: args.name.unwrap_or_else(|| plain_name(&host_name())),
        advertise: args.advertise,
        addr,
        client_validity: args.client_validity,
    };
    if let Some(path) = args.unix {
        return runtime()?.block_on(serve_unix(settings, &opts, path));
    }
    runtime()?.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("listen on {addr}: choose another --addr"))?;
        let (agent, first, address) = berth_deploy::Agent::open(&opts).await?;
        let mut text = format!(
            "berth agent {} listening on {} (root {}, tokens name {address})\n",
            opts.name,
            listener.local_addr()?,
            settings.root.display()
        );
        if first {
            let token = AgentRoot::new(&settings.root).create_token(TokenOptions::default())?;
            text.push_str(&format!(
                "first start: enroll the deploying machine with\n  berth host add {} --token {token}\n\
                 (valid 24 h, once; more with `berth agent token create`)\n",
                opts.name
            ));
        }
        use std::io::Write;
        let mut out = std::io::stdout();
        let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
        agent.serve(listener, crate::shutdown_signal()).await?;
        Ok(())
    })
}

/// `berth agent serve --unix PATH`: the socket is made readable by the group of dockerd's
/// socket, as who may use dockerd may use the agent.
async fn serve_unix(settings: &Settings, opts: &AgentOptions, path: PathBuf) -> Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path)
        .with_context(|| format!("listen on {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("chmod {}", path.display()))?;
    let docker_sock =
        std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into());
    let docker_sock = docker_sock.trim_start_matches("unix://");
    if let Ok(m) = std::fs::metadata(docker_sock) {
        let _ = std::os::unix::fs::chown(&path, None, Some(m.gid()));
    }
    let (agent, _, _) = berth_deploy::Agent::open(opts).await?;
    {
        use std::io::Write;
        let mut out = std::io::stdout();
        let _ = writeln!(
            out,
            "berth agent {} listening on {} (root {})",
            opts.name,
            path.display(),
            settings.root.display()
        )
        .and_then(|()| out.flush());
    }
    agent.serve_unix(listener, crate::shutdown_signal()).await?;
    Ok(())
}

pub fn host(settings: &Settings, command: HostCommand) -> Result<()> {
    let hosts = hosts(settings);
    match command {
        HostCommand::Add(args) => {
            let token: Token = args.token.trim().parse().context(
                "--token is not a berth token (berth-<id>.<secret>@host:port#sha256:<pin>)",
            )?;
            let client = args.client_name.unwrap_or_else(|| {
                let user = std::env::var("USER").unwrap_or_else(|_| "user".into());
                plain_name(&format!("{user}-{}", host_name()))
            });
            let rec = runtime()?.block_on(hosts.add(&args.name, &token, &client))?;
            println!(
                "enrolled with agent {} ({}) as host {}",
                rec.agent, rec.address, rec.name
            );
        }
        HostCommand::Ls => {
            for h in hosts.list()? {
                println!("{}\t{}\tagent {}", h.name, h.address, h.agent);
            }
        }
        HostCommand::Rm { name } => {
            hosts.remove(&name)?;
            println!("forgot host {name}");
        }
        HostCommand::Status { name } => {
            let st = runtime()?.block_on(async { hosts.connect(&name)?.status().await })?;
            println!(
                "host {name}: agent {} (berth {}), docker {}",
                st.name, st.version, st.docker
            );
        }
    }
    Ok(())
}

/// Prints each host's outcome, then a table of them (host, service, serving version,
/// replicas, result); an error when any host failed.
fn summarize(file: &DeployFile, what: &str, results: &[HostResult]) -> Result<()> {
    let mut failed = Vec::new();
    for r in results {
        match &r.report {
            Ok(rep) if rep.error.is_none() => println!(
                "{}: {} {}",
                r.host,
                r.service,
                rep.serving.as_deref().unwrap_or("?")
            ),
            Ok(rep) => {
                eprintln!(
                    "{}: {} failed: {}",
                    r.host,
                    r.service,
                    rep.error.as_deref().unwrap_or_default()
                );
                if let Some(v) = &rep.serving {
                    eprintln!("{}: {} {v} still serves", r.host, r.service);
                }
                failed.push(r.host.clone());
            }
            Err(e) => {
                eprintln!("{}: {} failed: {e}", r.host, r.service);
                failed.push(r.host.clone());
            }
        }
    }
    if !results.is_empty() {
        println!();
        print!("{}", result_table(file, results));
    }
    if !failed.is_empty() {
        bail!("{what} failed on {} (see above)", failed.join(", "));
    }
    Ok(())
}

/// One row per host and service: `HOST SERVICE VERSION REPLICAS RESULT`, the version
/// being what serves now (`-`: nothing), the result `ok` or the error's first line.
fn result_table(file: &DeployFile, results: &[HostResult]) -> String {
    let mut rows = vec![[
        "HOST".to_owned(),
        "SERVICE".to_owned(),
        "VERSION".to_owned(),
        "REPLICAS".to_owned(),
        "RESULT".to_owned(),
    ]];
    for r in results {
        let (serving, result) = match &r.report {
            Ok(rep) => (
                rep.serving.clone(),
                rep.error.as_deref().map_or_else(
                    || "ok".to_owned(),
                    |e| format!("failed: {}", e.lines().next().unwrap_or_default()),
                ),
            ),
            Err(e) => (
                None,
                format!(
                    "failed: {}",
                    e.to_string().lines().next().unwrap_or_default()
                ),
            ),
        };
        let replicas = file
            .services
            .get(&r.service)
            .map_or_else(|| "-".to_owned(), |s| s.replicas.to_string());
        rows.push([
            r.host.clone(),
            r.service.clone(),
            serving.unwrap_or_else(|| "-".to_owned()),
            replicas,
            result,
        ]);
    }
    let mut width = [0; 4];
    for row in &rows {
        for (w, cell) in width.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        for (cell, w) in row[..4].iter().zip(width) {
            out.push_str(&format!("{cell:<w$}  "));
        }
        out.push_str(&row[4]);
        out.push('\n');
    }
    out
}

pub fn deploy(settings: &Settings, args: DeployArgs) -> Result<()> {
    if let Some(command) = args.command {
        return on_hosts(settings, command);
    }
    if args.k8s.k8s {
        return crate::k8s::deploy(
            settings,
            &args.file,
            &args.services,
            args.version.as_deref(),
            &args.k8s,
        );
    }
    let file = DeployFile::load(&args.file)?.only(&args.only.hosts, &args.only.role)?;
    let mut services = file.select(&args.services)?;
    services.retain(|s| !file.hosts_of(s).is_empty());
    if services.is_empty() {
        bail!(
            "no service of {} runs on the hosts chosen",
            args.file.display()
        );
    }
    // Every host must be enrolled (or an SSH host of the file) before anything is built.
    for svc in &services {
        for h in file.hosts_of(svc) {
            if !file.ssh_hosts.contains_key(&h) {
                hosts(settings).get(&h)?;
            }
        }
    }
    let mut built = Vec::new();
    for svc in &services {
        built.push(build_service(
            settings,
            &file,
            svc,
            args.version.as_deref(),
        )?);
    }
    let store = crate::open_store(settings)?;
    let client = push_client(settings, &file)?;
    let hosts = hosts(settings);
    let progress = |line: &str| eprintln!("{line}");
    runtime()?.block_on(async {
        let mut results = Vec::new();
        for (svc, built) in services.into_iter().zip(built) {
            // The hosts are reached (SSH logins, agent containers) while the image is
            // pushed; nothing is asked of them before the push is done.
            let (pushed, connected) = tokio::join!(
                push_unless_pushed(built, &store, &client, &file, svc, args.version.as_deref()),
                berth_deploy::deployer::connect_hosts(&file, &hosts, svc)
            );
            let (pushed, connected) = (pushed?, connected?);
            let (image, version) = (pushed.image, pushed.version);
            let plan = Planned {
                service: svc.clone(),
                image,
                version,
            };
            results.extend(
                berth_deploy::deployer::deploy_connected(&file, connected, &plan, &progress)
                    .await?,
            );
        }
        summarize(&file, "deploy", &results)
    })
}

/// The registry client `berth deploy` pushes with: `berth login`'s credentials, and the
/// deploy file's registry credentials over them.
pub(crate) fn push_client(settings: &Settings, file: &DeployFile) -> Result<berth_client::Client> {
    Ok(berth_client::Client::new(push_config(settings, file)?))
}

fn push_config(settings: &Settings, file: &DeployFile) -> Result<berth_client::ClientConfig> {
    let mut config = settings.registry_config();
    if let Some(auth) = berth_deploy::deployer::registry_auth(file)? {
        config.credentials.insert(
            auth.server,
            berth_client::Credentials {
                username: auth.username,
                password: auth.password,
            },
        );
    }
    Ok(config)
}

/// The credentials [`push_client`] has for the file's registry, for a satellite to push
/// with.
fn push_credential(
    settings: &Settings,
    file: &DeployFile,
) -> Result<Option<(String, berth_client::Credentials)>> {
    let config = push_config(settings, file)?;
    let registry = &file.registry.address;
    Ok(config
        .credentials
        .get(registry)
        .cloned()
        .or_else(|| config.docker_config.credentials(registry))
        .map(|c| (registry.clone(), c)))
}

/// A service's image as pushed to the file's registry.
pub(crate) struct Pushed {
    /// `IMAGE:VERSION`: its name in berth's store (unless a satellite pushed it).
    pub local: String,
    /// `registry/repository@digest`.
    pub image: String,
    /// The registry's repository (without the registry).
    pub repository: String,
    /// The manifest's digest.
    pub digest: String,
    /// The version deployed.
    pub version: String,
}

/// `svc`'s image in the deploy file's registry: as the satellite that built it pushed it
/// (`built`, which it said), or pushed from berth's store now ([`push_service`]).
pub(crate) async fn push_unless_pushed(
    built: Option<Pushed>,
    store: &berth_store::Store,
    client: &berth_client::Client,
    file: &DeployFile,
    svc: &berth_deploy::config::Service,
    version: Option<&str>,
) -> Result<Pushed> {
    let pushed = match built {
        Some(p) => p,
        None => push_service(store, client, file, svc, version).await?,
    };
    eprintln!("pushed {} as {}", pushed.local, pushed.image);
    Ok(pushed)
}

/// Pushes `svc`'s image (`IMAGE:VERSION` of berth's store) to the deploy file's registry:
/// the one push path of hosts and Kubernetes deploys.
pub(crate) async fn push_service(
    store: &berth_store::Store,
    client: &berth_client::Client,
    file: &DeployFile,
    svc: &berth_deploy::config::Service,
    version: Option<&str>,
) -> Result<Pushed> {
    let (local, dest, version) = destination(file, svc, version)?;
    let manifest =
        berth_build::image::local_manifest(store, &local).with_context(|| match &svc.build {
            Some(berth_deploy::config::Build::Earthfile { target, .. }) => format!(
                "the Earthfile target {target} of service {} saved no image {local}: \
                 its SAVE IMAGE must name the service's image at the version deployed",
                svc.name
            ),
            _ => format!(
                "the image of service {} ({local}) is not in berth's store; build it \
                 first, or say how in deploy.services.{}.build",
                svc.name, svc.name
            ),
        })?;
    let digest = crate::build::push_one(store, client, &manifest, &dest)
        .await
        .with_context(|| format!("push {dest}"))?;
    Ok(Pushed {
        local,
        image: format!("{}/{}@{digest}", dest.registry, dest.repository),
        repository: dest.repository.clone(),
        digest: digest.to_string(),
        version,
    })
}

/// `svc`'s image in berth's store (`IMAGE:VERSION`), where it goes in the file's registry,
/// and the version deployed.
fn destination(
    file: &DeployFile,
    svc: &berth_deploy::config::Service,
    version: Option<&str>,
) -> Result<(String, berth_oci::Reference, String)> {
    let written = written_image(file, svc)?;
    let version = version
        .map(str::to_owned)
        .unwrap_or_else(|| written.tag_or_latest().to_owned());
    let local = format!("{}:{version}", written.name());
    let dest = format!(
        "{}/{}:{version}",
        file.registry.address,
        written.local_repository()
    )
    .parse()
    .with_context(|| format!("the destination of service {}", svc.name))?;
    Ok((local, dest, version))
}

/// `dest` (in the deploy's registry) as a satellite reaches it: in `satellite_address`,
/// else `dest` itself.
fn satellite_destination(
    file: &DeployFile,
    dest: &berth_oci::Reference,
    version: &str,
) -> Result<berth_oci::Reference> {
    match &file.registry.satellite_address {
        Some(a) => format!("{a}/{}:{version}", dest.repository)
            .parse()
            .with_context(|| format!("deploy.registry.satellite_address {a:?}")),
        None => Ok(dest.clone()),
    }
}

/// `svc`'s image as a satellite pushed it for the deploy (`registry/repository@digest`
/// under the satellite's name for the registry), named as the hosts reach it.
fn pushed_by_satellite(
    file: &DeployFile,
    svc: &berth_deploy::config::Service,
    version: Option<&str>,
    reported: &str,
) -> Result<Pushed> {
    let (local, dest, version) = destination(file, svc, version)?;
    let sat_dest = satellite_destination(file, &dest, &version)?;
    let asked = format!("{}/{}@", sat_dest.registry, sat_dest.repository);
    let digest = reported.strip_prefix(&asked).with_context(|| {
        format!("the satellite reported pushing {reported}, not to {asked}… as asked")
    })?;
    let digest: berth_oci::Digest = digest
        .parse()
        .with_context(|| format!("the satellite's push {reported}"))?;
    Ok(Pushed {
        local,
        image: format!("{}/{}@{digest}", dest.registry, dest.repository),
        repository: dest.repository.clone(),
        digest: digest.to_string(),
        version,
    })
}

/// The image name `svc` gives, parsed.
fn written_image(
    file: &DeployFile,
    svc: &berth_deploy::config::Service,
) -> Result<berth_oci::WrittenReference> {
    berth_oci::WrittenReference::parse(&svc.image).with_context(|| {
        format!(
            "{}: deploy.services.{}.image",
            file.path.display(),
            svc.name
        )
    })
}

/// Builds `svc`'s image when the file says how (`build = …`), through `berth build`'s and
/// `berth +target`'s own paths: a Dockerfile is tagged `IMAGE:VERSION`; an Earthfile
/// target must `SAVE IMAGE` that name itself. Built here, the image is in the store for
/// [`push_service`]; built on a satellite, the satellite pushes it to the file's registry
/// and this returns that push (or, when the satellite could not, the image is fetched
/// into the store and this returns `None`).
pub(crate) fn build_service(
    settings: &Settings,
    file: &DeployFile,
    svc: &berth_deploy::config::Service,
    version: Option<&str>,
) -> Result<Option<Pushed>> {
    use berth_deploy::config::Build;
    use clap::{Args as _, FromArgMatches as _};
    let Some(build) = &svc.build else {
        return Ok(None);
    };
    let (tag, dest, version_tag) = destination(file, svc, version)?;
    eprintln!("building {tag} for service {}", svc.name);
    // A satellite pushes to the registry under the name it reaches it by, with the same
    // credentials.
    let sat_dest = satellite_destination(file, &dest, &version_tag)?;
    let push = crate::satellite::DeployPush {
        name: tag.clone(),
        dest: sat_dest.to_string(),
        credential: push_credential(settings, file)?.map(|(_, c)| (sat_dest.registry.clone(), c)),
    };
    let what = || format!("build of service {} ({tag})", svc.name);
    let pushed = match build {
        Build::Dockerfile {
            context,
            dockerfile,
            target,
            args,
        } => {
            let mut argv: Vec<std::ffi::OsString> = vec![
                "build".into(),
                context.into(),
                "-t".into(),
                tag.clone().into(),
            ];
            if let Some(f) = dockerfile {
                argv.extend(["-f".into(), f.into()]);
            }
            if let Some(t) = target {
                argv.extend(["--target".into(), t.into()]);
            }
            for (k, v) in args {
                argv.extend(["--build-arg".into(), format!("{k}={v}").into()]);
            }
            let matches = crate::build::BuildArgs::augment_args(clap::Command::new("build"))
                .try_get_matches_from(argv)
                .with_context(what)?;
            let mut args =
                crate::build::BuildArgs::from_arg_matches(&matches).with_context(what)?;
            args.deploy_push = Some(push);
            crate::build::build(settings, args).with_context(what)
        }
        Build::Earthfile { target, args } => {
            let dir = match file.path.parent() {
                Some(d) if !d.as_os_str().is_empty() => d,
                _ => std::path::Path::new("."),
            };
            crate::earthly::build_target(settings, dir, target, args, &push).with_context(what)
        }
    }?;
    pushed
        .map(|p| pushed_by_satellite(file, svc, version, &p))
        .transpose()
}

pub fn rollback(settings: &Settings, args: RollbackArgs) -> Result<()> {
    if args.k8s.k8s {
        return crate::k8s::rollback(
            settings,
            &args.file,
            args.service.as_deref(),
            args.version.as_deref(),
            args.list,
            &args.k8s,
        );
    }
    let file = DeployFile::load(&args.file)?.only(&args.only.hosts, &args.only.role)?;
    let svc = one_service(&file, args.service.as_deref(), "--service")?;
    if file.hosts_of(svc).is_empty() {
        bail!("service {} runs on none of the hosts chosen", svc.name);
    }
    let hosts = hosts(settings);
    let progress = |line: &str| eprintln!("{line}");
    runtime()?.block_on(async {
        if args.list {
            return print_history(&file, &hosts, svc).await;
        }
        let results = berth_deploy::deployer::rollback(
            &file,
            &hosts,
            svc,
            args.version.as_deref(),
            &progress,
        )
        .await?;
        summarize(&file, "rollback", &results)
    })
}

/// The service `name` of the file, or its only one; `how` says how to name one.
pub(crate) fn one_service<'a>(
    file: &'a DeployFile,
    name: Option<&str>,
    how: &str,
) -> Result<&'a berth_deploy::config::Service> {
    Ok(match name {
        Some(s) => file.select(&[s.to_owned()])?[0],
        None if file.services.len() == 1 => file.services.values().next().expect("one"),
        None => bail!(
            "{} has several services ({}); say which with {how}",
            file.path.display(),
            file.services.keys().cloned().collect::<Vec<_>>().join(", ")
        ),
    })
}

/// Each host's versions of `svc`, newest (the live one) first.
async fn print_history(
    file: &DeployFile,
    hosts: &Hosts,
    svc: &berth_deploy::config::Service,
) -> Result<()> {
    let mut failed = false;
    for (host, h) in berth_deploy::deployer::history(file, hosts, svc).await {
        match h {
            Ok(h) => {
                for (i, r) in h.iter().enumerate() {
                    let mark = if i == 0 { " (serving)" } else { "" };
                    println!(
                        "{host}\t{}\t{}\t{}{mark}",
                        r.version,
                        r.image,
                        berth_pki::format_utc(
                            std::time::UNIX_EPOCH + Duration::from_secs(r.deployed_unix)
                        )
                    );
                }
            }
            Err(e) => {
                eprintln!("{host}: {e}");
                failed = true;
            }
        }
    }
    if failed {
        bail!("some hosts did not answer");
    }
    Ok(())
}

/// The hosts of `svc`, or `only` (which must be one of them).
fn hosts_for(
    file: &DeployFile,
    svc: &berth_deploy::config::Service,
    only: Option<&str>,
) -> Result<Vec<String>> {
    let all = file.hosts_of(svc);
    match only {
        None => Ok(all),
        Some(h) if all.iter().any(|a| a == h) => Ok(vec![h.to_owned()]),
        Some(h) => bail!(
            "host {h} does not run service {} in {} (its hosts: {})",
            svc.name,
            file.path.display(),
            all.join(", ")
        ),
    }
}

fn on_hosts(settings: &Settings, command: DeployCommand) -> Result<()> {
    let hosts = hosts(settings);
    match command {
        DeployCommand::Ps { file } => {
            let file = DeployFile::load(&file)?;
            let mut names: Vec<String> = file
                .services
                .values()
                .flat_map(|s| file.hosts_of(s))
                .collect();
            names.sort();
            names.dedup();
            runtime()?.block_on(async {
                let mut failed = false;
                println!("HOST\tSERVICE\tVERSION\tSTATE\tPORTS\tCONTAINER\tIMAGE");
                for name in names {
                    let r = match berth_deploy::deployer::connect(&file, &hosts, &name).await {
                        Ok(c) => c.ps().await,
                        Err(e) => Err(e),
                    };
                    match r {
                        Ok(list) => {
                            for s in list {
                                let mut state = match &s.deploying {
                                    Some((client, since)) => format!(
                                        "{} (deploy by {client} since {})",
                                        s.state,
                                        berth_pki::format_utc(
                                            std::time::UNIX_EPOCH + Duration::from_secs(*since)
                                        )
                                    ),
                                    None => s.state,
                                };
                                if !s.removing.is_empty() {
                                    state.push_str(&format!(
                                        " (removing the old {})",
                                        s.removing.join(", ")
                                    ));
                                }
                                for (c, e) in &s.leftovers {
                                    state.push_str(&format!(
                                        " (old {c} not removed: {e}; the next deploy tries \
                                         again, or `docker rm -f {c}` on the host)"
                                    ));
                                }
                                println!(
                                    "{name}\t{}\t{}\t{state}\t{}\t{}\t{}",
                                    s.name,
                                    s.version,
                                    s.ports.join(","),
                                    if s.containers.is_empty() {
                                        s.container
                                    } else {
                                        s.containers.join(",")
                                    },
                                    s.image.as_deref().unwrap_or("?")
                                );
                            }
                        }
                        Err(e) => {
                            eprintln!("{name}: {e}");
                            failed = true;
                        }
                    }
                }
                if failed {
                    bail!("some hosts did not answer");
                }
                Ok(())
            })
        }
        DeployCommand::History { service, file } => {
            let file = DeployFile::load(&file)?;
            let svc = one_service(&file, service.as_deref(), "a SERVICE argument")?;
            runtime()?.block_on(print_history(&file, &hosts, svc))
        }
        DeployCommand::Exec {
            service,
            cmd,
            host,
            replica,
            file,
        } => {
            let file = DeployFile::load(&file)?;
            let svc = one_service(&file, Some(&service), "")?;
            let names = hosts_for(&file, svc, host.as_deref())?;
            let prefix = names.len() > 1;
            runtime()?.block_on(async {
                let mut failed = Vec::new();
                for name in names {
                    let r = match berth_deploy::deployer::connect(&file, &hosts, &name).await {
                        Ok(c) => c.exec(&svc.name, &cmd, replica).await,
                        Err(e) => Err(e),
                    };
                    match r {
                        Ok(r) => {
                            for line in r.output.lines() {
                                if prefix {
                                    println!("{name} | {line}");
                                } else {
                                    println!("{line}");
                                }
                            }
                            if r.exit_code != 0 {
                                eprintln!("{name}: {:?} exited {}", cmd, r.exit_code);
                                failed.push(name);
                            }
                        }
                        Err(e) => {
                            eprintln!("{name}: {e}");
                            failed.push(name);
                        }
                    }
                }
                if !failed.is_empty() {
                    bail!("exec failed on {}", failed.join(", "));
                }
                Ok(())
            })
        }
        DeployCommand::Logs {
            service,
            follow,
            tail,
            host,
            file,
        } => {
            let file = DeployFile::load(&file)?;
            let svc = one_service(&file, Some(&service), "")?;
            let names = hosts_for(&file, svc, host.as_deref())?;
            let prefix = names.len() > 1;
            runtime()?.block_on(async {
                let mut clients = Vec::new();
                for n in &names {
                    clients.push(berth_deploy::deployer::connect(&file, &hosts, n).await?);
                }
                // Every host at once (with --follow they run until their containers stop).
                let runs: Vec<_> = clients
                    .into_iter()
                    .map(|c| {
                        let svc = svc.name.clone();
                        tokio::spawn(async move {
                            let mut partial = Vec::new();
                            let name = c.rec.name.clone();
                            let mut sink = |data: &[u8]| {
                                use std::io::Write;
                                partial.extend_from_slice(data);
                                let mut out = std::io::stdout().lock();
                                while let Some(i) = partial.iter().position(|b| *b == b'\n') {
                                    let line: Vec<u8> = partial.drain(..=i).collect();
                                    if prefix {
                                        let _ = write!(out, "{name} | ");
                                    }
                                    let _ = out.write_all(&line);
                                }
                                let _ = out.flush();
                            };
                            let r = c.logs(&svc, tail, follow, &mut sink).await;
                            (c.rec.name.clone(), r)
                        })
                    })
                    .collect();
                let mut failed = Vec::new();
                for run in runs {
                    let (name, r) = run.await.context("a logs task panicked")?;
                    if let Err(e) = r {
                        eprintln!("{name}: {e}");
                        failed.push(name);
                    }
                }
                if !failed.is_empty() {
                    bail!("logs failed on {}", failed.join(", "));
                }
                Ok(())
            })
        }
    }
}
