//! The `berth` binary: parses the command line, resolves settings, calls the crates.

mod build;
mod deploy;
mod doctor;
mod earthly;
mod format;
mod image;
mod k8s;
mod progress;
mod satellite;
mod settings;
mod system;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, CommandFactory, Parser, Subcommand};

use settings::Settings;

#[derive(Parser)]
#[command(
    name = "berth",
    version,
    about = "Build container images on your own machines and ship them"
)]
struct Cli {
    /// Data directory (default: /var/lib/berth for root, else $XDG_DATA_HOME/berth).
    #[arg(long, global = true, env = "BERTH_ROOT")]
    root: Option<PathBuf>,
    /// Config file (default: $XDG_CONFIG_HOME/berth/config.toml).
    #[arg(long, global = true, env = "BERTH_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build an image from a Dockerfile (`berth build +target` runs an Earthfile target).
    Build(build::BuildArgs),
    /// List the images in berth's store.
    Images(image::ImagesArgs),
    /// Pull an image (every platform, or --platform's) from a registry into the store.
    Pull(image::PullArgs),
    /// Give an image of the store another name.
    Tag(image::TagArgs),
    /// Remove image names from the store (gc then frees what nothing references).
    Rmi(image::RmiArgs),
    /// Describe images as `docker image inspect` does (JSON).
    Inspect(image::InspectArgs),
    /// Show the steps that made an image, with their layers' sizes.
    History(image::HistoryArgs),
    /// Disk use of the store and the build cache, and freeing it.
    System {
        #[command(subcommand)]
        command: system::SystemCommand,
    },
    /// Print a shell completion script (bash, zsh, fish, …).
    Completions(system::CompletionsArgs),
    /// Write man pages for berth and each command into a directory.
    Man(system::ManArgs),
    /// Free build cache, least recently used first (images in the store stay).
    Prune(build::PruneArgs),
    /// Push an image from berth's store to a registry.
    Push(build::PushArgs),
    /// Load an image from berth's store into the local Docker daemon.
    Load(build::LoadArgs),
    /// Read an image archive (docker save, OCI layout tar) into berth's store.
    Import(image::ImportArgs),
    /// Write images from berth's store as an archive (docker-archive or OCI layout tar).
    Save(image::SaveArgs),
    /// Log in to a registry (credentials are kept in Docker's config file).
    Login(build::LoginArgs),
    /// Forget the credentials for a registry.
    Logout {
        /// The registry (host[:port]).
        registry: String,
    },
    /// Remote builders: run one, enroll with one, build on one.
    Satellite {
        #[command(subcommand)]
        command: satellite::SatelliteCommand,
    },
    /// Deploy agent on a host: serve, enrollment tokens.
    Agent {
        #[command(subcommand)]
        command: deploy::AgentCommand,
    },
    /// Hosts this machine deploys to: enroll with their agents, list, forget.
    Host {
        #[command(subcommand)]
        command: deploy::HostCommand,
    },
    /// Deploy services of berth.toml to their hosts: push, then per host pull, start
    /// beside the old one, health check, switch traffic, drain and remove the old one.
    /// With --k8s: to Kubernetes, by server-side apply.
    Deploy(deploy::DeployArgs),
    /// Put a service's previous version (or VERSION) back on its hosts, health-gated;
    /// --list shows each host's versions.
    Rollback(deploy::RollbackArgs),
    /// Show berth's effective configuration and where each value came from.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Check proxies, registries, the Docker daemon, this host and satellites; print a
    /// fix for every problem.
    Doctor(doctor::DoctorArgs),
    /// Run and maintain berth's OCI registry.
    Registry {
        #[command(subcommand)]
        command: RegistryCommand,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print every setting, its value and its source (flag, env, file, default).
    Show {
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: ShowFormat,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ShowFormat {
    Table,
    Json,
}

#[derive(Subcommand)]
enum RegistryCommand {
    /// Serve the OCI Distribution API over the store.
    Serve(settings::RegistryServeArgs),
    /// Remove blobs no manifest references, and expired upload sessions.
    Gc(GcArgs),
    /// Re-hash every blob, and check that every manifest pulls whole (its blob, config,
    /// layers, child manifests, referrer record).
    Check,
    /// Print Kubernetes YAML for N replicas of the registry on the S3 bucket of
    /// [registry.storage]: a Secret with their config and credentials, a Deployment, a
    /// Service and a PodDisruptionBudget.
    Manifests {
        /// `metadata.namespace` of every object [default: none, kubectl's].
        #[arg(long, short = 'n')]
        namespace: Option<String>,
        #[command(flatten)]
        args: k8s::RegistryManifestArgs,
    },
    /// Apply the registry of `manifests` to a cluster (server-side apply, berth's
    /// ServiceAccount and pull secrets) and wait until its pods exist.
    Deploy(k8s::RegistryDeployArgs),
}

#[derive(Args)]
struct GcArgs {
    /// Report what would be removed; remove nothing.
    #[arg(long)]
    dry_run: bool,
    /// Keep unreferenced blobs younger than this (pushes in progress) [e.g. 30m, 1h, 0s].
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    grace: Duration,
    /// Remove upload sessions idle for this long.
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    upload_expiry: Duration,
}

pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 30s, 15m, 1h or 2d"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        _ => return Err(format!("{s:?}: unit must be s, m, h or d")),
    };
    Ok(Duration::from_secs(secs))
}

fn main() {
    // `berth +target` and `berth build +target` run Earthfiles (earthly.rs).
    if let Some(code) = earthly::intercept(|| init_logging(QUIET_SERVERS)) {
        std::process::exit(code);
    }
    let cli = Cli::parse();
    // Request logs are for the registry server; other commands that serve (the proxy of
    // `berth load`) keep them quiet unless BERTH_LOG asks.
    init_logging(match &cli.command {
        Command::Registry {
            command: RegistryCommand::Serve(_),
        } => "info",
        _ => QUIET_SERVERS,
    });
    if let Err(e) = run(cli) {
        eprintln!("berth: error: {e:#}");
        std::process::exit(1);
    }
}

/// The log filter of commands that are not the registry server.
const QUIET_SERVERS: &str = "info,berth::access=warn,berth_registry=warn";

/// Logs to stderr, filtered by BERTH_LOG or else `default_filter`.
fn init_logging(default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BERTH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    // BERTH_LOG_FORMAT=json: one JSON object a line, for log collectors.
    if std::env::var("BERTH_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json")) {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    } else {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
}

fn run(mut cli: Cli) -> Result<()> {
    // `berth satellite serve --config FILE` names the satellite's own configuration
    // (berth_satellite::config); config.toml is read from its usual place then.
    if let Command::Satellite {
        command: satellite::SatelliteCommand::Serve(args),
    } = &mut cli.command
    {
        args.config = cli.config.take();
    }
    // Generated from the command definitions alone: no config is read.
    let command = match cli.command {
        Command::Completions(args) => return system::completions(Cli::command(), args),
        Command::Man(args) => return system::man(Cli::command(), args),
        command => command,
    };
    let settings = Settings::load(cli.root, cli.config.as_deref())?;
    match command {
        Command::Build(args) => build::run(&settings, args),
        Command::Images(args) => image::images(&settings, args),
        Command::Pull(args) => image::pull(&settings, args),
        Command::Tag(args) => image::tag(&settings, args),
        Command::Rmi(args) => image::rmi(&settings, args),
        Command::Inspect(args) => image::inspect(&settings, args),
        Command::History(args) => image::history(&settings, args),
        Command::System { command } => system::run(&settings, command),
        Command::Completions(_) | Command::Man(_) => unreachable!("handled above"),
        Command::Prune(args) => build::prune(&settings, args),
        Command::Push(args) => build::push(&settings, args),
        Command::Load(args) => build::load(&settings, args),
        Command::Import(args) => image::import(&settings, args),
        Command::Save(args) => image::save(&settings, args),
        Command::Login(args) => build::login(&settings, args),
        Command::Logout { registry } => build::logout(&registry),
        Command::Satellite { command } => satellite::run(&settings, command),
        Command::Agent { command } => deploy::agent(&settings, command),
        Command::Host { command } => deploy::host(&settings, command),
        Command::Deploy(args) => deploy::deploy(&settings, args),
        Command::Rollback(args) => deploy::rollback(&settings, args),
        Command::Config {
            command: ConfigCommand::Show { format },
        } => {
            let entries = settings.provenance(&|k| std::env::var(k).ok());
            match format {
                ShowFormat::Table => print!("{}", settings::config_show::table(&entries)),
                ShowFormat::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&settings::config_show::json(&entries))?
                ),
            }
            Ok(())
        }
        Command::Doctor(args) => doctor::run(&settings, args),
        Command::Registry { command } => match command {
            RegistryCommand::Serve(args) => serve(&settings, args),
            RegistryCommand::Gc(args) => gc(&settings, args),
            RegistryCommand::Check => check(&settings),
            RegistryCommand::Manifests { namespace, args } => {
                k8s::registry_manifests(&settings, &args, namespace)
            }
            RegistryCommand::Deploy(args) => k8s::registry_deploy(&settings, &args),
        },
    }
}

pub(crate) fn open_store(settings: &Settings) -> Result<berth_store::Store> {
    berth_store::Store::open(&settings.root).with_context(|| {
        format!(
            "open store at {} (set --root or BERTH_ROOT)",
            settings.root.display()
        )
    })
}

fn serve(settings: &Settings, args: settings::RegistryServeArgs) -> Result<()> {
    let serve = settings.registry_serve(&args)?;
    let addr = serve.addr;
    let store = open_store(settings)?;
    let mut config = berth_registry::Config::new(store);
    config.read_only = serve.read_only;
    config.delete_enabled = serve.delete;
    config.allow_anonymous_push = serve.allow_anonymous_push;
    config.listen_on(addr);
    config.mirror = serve.mirror;
    // The build cache of a shared root is never evicted from under its builds.
    config.mirror.roots = Some(std::sync::Arc::new(berth_build::BuildCache::new(
        &settings.root,
    )));
    if let Some(h) = &serve.htpasswd {
        config.auth = Some(berth_registry::Auth::load(h, serve.access.as_deref())?);
    }
    if let Some(s3) = &serve.s3 {
        config.objects = Some(berth_registry::ObjectStorage::new(s3, &settings.network())?);
    }
    let tls = match &serve.tls {
        Some((cert, key)) => Some(berth_registry::tls_acceptor(cert, key)?),
        None => None,
    };
    let registry = berth_registry::Registry::new(config);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let objects = registry.objects().cloned();
    rt.block_on(async move {
        // A wrong key or an unreachable endpoint stops the registry here, not at the
        // first push.
        if let Some(os) = &objects {
            os.check(serve.read_only).await?;
        }
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
            format!("listen on {addr}: is another registry running there? choose another --addr")
        })?;
        let local = listener.local_addr()?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let place = match &objects {
            Some(os) => format!("bucket {}", os.bucket()),
            None => format!("root {}", settings.root.display()),
        };
        println!("berth registry listening on {scheme}://{local} ({place})");
        use std::io::Write;
        std::io::stdout().flush()?;
        berth_registry::serve_with(
            listener,
            registry.router(),
            tls,
            serve.options,
            shutdown_signal(),
        )
        .await?;
        Ok(())
    })
}

pub(crate) async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}

fn gc(settings: &Settings, args: GcArgs) -> Result<()> {
    let opts = berth_store::GcOptions {
        dry_run: args.dry_run,
        grace: args.grace,
        upload_expiry: args.upload_expiry,
    };
    if let Some(s3) = settings.registry_s3() {
        let os = berth_registry::ObjectStorage::new(s3, &settings.network())?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        let report = rt.block_on(async {
            os.check(args.dry_run).await?;
            os.gc(&opts)
                .await
                .map_err(|e| anyhow::anyhow!("gc of bucket {}: {}", s3.bucket, e.message))
        })?;
        return print_gc(&report, args.dry_run);
    }
    let store = open_store(settings)?;
    // The build cache's layers are roots: builds share this root.
    let roots = berth_build::BuildCache::new(&settings.root);
    // Over its cap, the pull-through cache loses its least recently pulled blobs first.
    if let Some((prefixes, max)) = settings.mirror_cap()
        && !args.dry_run
    {
        let r = berth_registry::evict(&store, &prefixes, max, Some(&roots))?;
        for (d, size) in &r.evicted {
            println!("evicted blob {d} ({size} bytes) from the pull-through cache");
        }
        println!(
            "pull-through cache: {} bytes (cap {max}); evicted {} blobs",
            r.cache_bytes,
            r.evicted.len()
        );
    }
    let report = store.gc(&opts, &roots)?;
    print_gc(&report, args.dry_run)
}

fn print_gc(report: &berth_store::GcReport, dry_run: bool) -> Result<()> {
    let verb = if dry_run { "would remove" } else { "removed" };
    for d in &report.removed_blobs {
        println!("{verb} blob {d}");
    }
    for i in &report.removed_ingests {
        println!("{verb} upload {i}");
    }
    println!(
        "{} live blobs; {verb} {} blobs ({} bytes), {} repository links, {} uploads",
        report.live_blobs,
        report.removed_blobs.len(),
        report.removed_bytes,
        report.removed_links,
        report.removed_ingests.len()
    );
    Ok(())
}

fn check(settings: &Settings) -> Result<()> {
    let report = match settings.registry_s3() {
        Some(s3) => {
            let os = berth_registry::ObjectStorage::new(s3, &settings.network())?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                os.check(true).await?;
                os.verify()
                    .await
                    .map_err(|e| anyhow::anyhow!("check of bucket {}: {}", s3.bucket, e.message))
            })?
        }
        None => open_store(settings)?.check()?,
    };
    for d in &report.corrupt {
        println!("corrupt blob {d}: its content does not hash to its name");
    }
    for p in &report.problems {
        println!("{p}");
    }
    println!(
        "{} blobs checked, {} corrupt; {} manifests checked, {} problems",
        report.blobs,
        report.corrupt.len(),
        report.manifests,
        report.problems.len()
    );
    if !report.corrupt.is_empty() || !report.problems.is_empty() {
        let place = match settings.registry_s3() {
            Some(s3) => format!("bucket {}", s3.bucket),
            None => format!("store at {}", settings.root.display()),
        };
        bail!(
            "{place} is inconsistent: pulls of the manifests listed above fail; push them again, or delete them"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("0s").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert!(parse_duration("1w").is_err());
        assert!(parse_duration("h").is_err());
    }
}
