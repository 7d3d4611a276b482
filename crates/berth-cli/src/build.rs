//! `berth build`, `push`, `load`, `prune`, `login` and `logout`.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use berth_build::{BuildOptions, OutputSpec, Progress, SecretSource};
use clap::Args;

use crate::progress::{self, Mode};
use crate::settings::{DockerArgs, Settings};

#[derive(Args)]
pub struct BuildArgs {
    /// The build context directory.
    context: PathBuf,
    /// `berth deploy`: on a satellite, the image goes from there to the deploy's registry
    /// (or, when the satellite cannot push, comes into this machine's store to be pushed
    /// from here). A build here leaves it in the store.
    #[arg(skip)]
    pub(crate) deploy_push: Option<crate::satellite::DeployPush>,
    /// The Dockerfile [default: CONTEXT/Dockerfile].
    #[arg(short = 'f', long)]
    file: Option<PathBuf>,
    /// Name the image (repeatable), e.g. -t app:1.0.
    #[arg(short = 't', long = "tag")]
    tags: Vec<String>,
    /// Build this stage instead of the last. Repeated (--target a --target b) with
    /// --satellite pool:NAME: one build per stage, all at once, each on the member that
    /// holds most of its cache; name each stage's image with -t STAGE=NAME.
    #[arg(long = "target", value_name = "STAGE")]
    targets: Vec<String>,
    /// Build the image for this platform (os/arch[/variant], e.g. linux/arm64) instead
    /// of this machine's, or for several (linux/amd64,linux/arm64: one build each, named
    /// together as an OCI index): base images are resolved to that platform's manifest, and RUN
    /// steps run through the kernel's binfmt_misc emulation (qemu-user-static).
    #[arg(long, value_parser = parse_platforms)]
    platform: Option<Platforms>,
    /// A build argument, KEY=VALUE (repeatable).
    #[arg(long = "build-arg", value_parser = key_value)]
    build_args: Vec<(String, String)>,
    /// A secret: id=ID,src=FILE or id=ID,env=VAR (repeatable).
    #[arg(long = "secret")]
    secrets: Vec<String>,
    /// Forward an SSH agent to `RUN --mount=type=ssh` steps (repeatable): `default` or
    /// `ID` for the agent of $SSH_AUTH_SOCK, or `ID=SOCKET` for another agent's socket.
    #[arg(long = "ssh")]
    ssh: Vec<String>,
    /// Run every step; reuse nothing from cache.
    #[arg(long)]
    no_cache: bool,
    /// Resolve every base image tag against its registry, even when berth's store has
    /// it (by default a stored tag is used as is, as `docker build` does) [config:
    /// [build] resolve_ttl = "1h" re-resolves stored tags older than that].
    #[arg(long)]
    pull: bool,
    /// Layer compression: gzip, zstd (smaller, faster; Docker 23+ and most registries)
    /// or uncompressed [default: gzip; uncompressed with --load to a daemon on this
    /// machine and neither --push nor an OCI output: the image stays here until pushed].
    #[arg(long)]
    compression: Option<berth_build::Compression>,
    /// Re-compress the base image's layers too (by default they stay as they are).
    #[arg(long)]
    force_compression: bool,
    /// Progress display.
    #[arg(long, value_enum, default_value = "auto")]
    progress: Mode,
    /// Say why each step that runs was not taken from cache.
    #[arg(long)]
    explain: bool,
    /// Show no progress and print only the image ID (as `docker build -q`); errors are
    /// still told.
    #[arg(long, short = 'q')]
    quiet: bool,
    /// Also write the result: type=oci,dest=FILE.tar or type=local,dest=DIR.
    #[arg(long = "output", short = 'o')]
    outputs: Vec<String>,
    /// Push the image to the registry of each -t name after the build.
    #[arg(long)]
    push: bool,
    /// Load the image into the local Docker daemon (under each -t name) after the build.
    #[arg(long)]
    load: bool,
    /// Grant an entitlement (repeatable): network.host lets `RUN --network=host` use
    /// the host's network, security.insecure lets `RUN --security=insecure` run
    /// privileged [config: [build] allow = ["network.host"]].
    #[arg(long = "allow", value_parser = parse_entitlement)]
    allow: Vec<berth_build::Entitlement>,
    /// Add a line to the `/etc/hosts` of every RUN step (repeatable): NAME:ADDRESS or
    /// NAME=ADDRESS, e.g. --add-host db.internal:192.0.2.7 (never in the image).
    #[arg(long = "add-host", value_parser = berth_build::parse_extra_host)]
    add_hosts: Vec<(String, std::net::IpAddr)>,
    /// Build on this enrolled satellite, or on a member of a pool with `pool:NAME`
    /// [default: the one `berth satellite use` chose].
    #[arg(long, env = "BERTH_SATELLITE", conflicts_with = "no_satellite")]
    satellite: Option<String>,
    /// Build on this machine even when a satellite is in use.
    #[arg(long)]
    no_satellite: bool,
    #[command(flatten)]
    docker: DockerArgs,
}

fn key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        // `--build-arg NAME` takes the value from berth's environment, as docker does.
        None if !s.is_empty() => std::env::var(s)
            .map(|v| (s.to_string(), v))
            .map_err(|_| format!("--build-arg {s}: no value given and ${s} is not set")),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

/// `--platform`'s list.
#[derive(Clone, Debug)]
struct Platforms(Vec<berth_build::Platform>);

fn parse_platforms(s: &str) -> Result<Platforms, String> {
    berth_build::Platform::parse_list(s).map(Platforms)
}

pub(crate) fn parse_platform(s: &str) -> Result<berth_build::Platform, String> {
    let list = berth_build::Platform::parse_list(s)?;
    match list.as_slice() {
        [one] => Ok(one.clone()),
        _ => Err(format!(
            "{s}: berth builds one platform at a time; run one build per platform"
        )),
    }
}

fn parse_entitlement(s: &str) -> Result<berth_build::Entitlement, String> {
    s.parse()
}

fn parse_opts(s: &str) -> HashMap<String, String> {
    s.split(',')
        .filter_map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        })
        .collect()
}

fn parse_secret(s: &str) -> Result<(String, SecretSource)> {
    let o = parse_opts(s);
    let id = o
        .get("id")
        .cloned()
        .with_context(|| format!("--secret {s:?}: id= is required"))?;
    let src = match (o.get("src").or_else(|| o.get("source")), o.get("env")) {
        (Some(f), None) => SecretSource::File(PathBuf::from(f)),
        (None, Some(e)) => SecretSource::Env(e.clone()),
        (None, None) => SecretSource::Env(id.clone()),
        _ => bail!("--secret {s:?}: give src=FILE or env=VAR, not both"),
    };
    if let SecretSource::File(f) = &src
        && !f.is_file()
    {
        bail!("--secret {s:?}: {} is not a file", f.display());
    }
    Ok((id, src))
}

/// One `--ssh`: `ID` (the agent of $SSH_AUTH_SOCK) or `ID=SOCKET`. Docker also takes key
/// files there; berth forwards agents only.
fn parse_ssh(s: &str) -> Result<(String, PathBuf)> {
    let (id, path) = match s.split_once('=') {
        Some((id, path)) => (id, PathBuf::from(path)),
        None => {
            let sock = std::env::var_os("SSH_AUTH_SOCK").with_context(|| {
                format!(
                    "--ssh {s}: SSH_AUTH_SOCK is not set, so there is no agent to forward; \
                     start one (eval $(ssh-agent); ssh-add) or give its socket: --ssh {s}=/path/to/agent.sock"
                )
            })?;
            (s, PathBuf::from(sock))
        }
    };
    if id.is_empty() {
        bail!("--ssh {s:?}: the id is empty; write --ssh default or --ssh ID=SOCKET");
    }
    use std::os::unix::fs::FileTypeExt;
    match std::fs::metadata(&path) {
        Ok(m) if m.file_type().is_socket() => Ok((id.to_string(), path)),
        Ok(_) => bail!(
            "--ssh {s}: {} is not an agent socket; berth forwards SSH agents, not key files: \
             load the key into an agent (ssh-add {}) and pass --ssh {id}",
            path.display(),
            path.display()
        ),
        Err(e) => bail!("--ssh {s}: agent socket {}: {e}", path.display()),
    }
}

fn parse_output(s: &str) -> Result<OutputSpec> {
    let o = parse_opts(s);
    let dest = o
        .get("dest")
        .with_context(|| format!("--output {s:?}: dest= is required"))?;
    match o.get("type").map(String::as_str) {
        Some("oci") | Some("tar") => Ok(OutputSpec::OciTar(PathBuf::from(dest))),
        Some("local") => Ok(OutputSpec::Local(PathBuf::from(dest))),
        other => bail!("--output {s:?}: type must be oci or local, got {other:?}"),
    }
}

pub fn run(settings: &Settings, args: BuildArgs) -> Result<()> {
    build(settings, args).map(drop)
}

/// `berth build`; for `berth deploy` ([`BuildArgs::deploy_push`]), where a satellite
/// pushed the image (`registry/repository@digest`), if one did.
pub(crate) fn build(settings: &Settings, args: BuildArgs) -> Result<Option<String>> {
    let context = args
        .context
        .canonicalize()
        .with_context(|| format!("build context {}", args.context.display()))?;
    let dockerfile = args
        .file
        .clone()
        .unwrap_or_else(|| context.join("Dockerfile"));
    let secrets = args
        .secrets
        .iter()
        .map(|s| parse_secret(s))
        .collect::<Result<HashMap<_, _>>>()?;
    let ssh = args
        .ssh
        .iter()
        .map(|s| parse_ssh(s))
        .collect::<Result<HashMap<_, _>>>()?;
    let outputs = args
        .outputs
        .iter()
        .map(|s| parse_output(s))
        .collect::<Result<Vec<_>>>()?;
    let outputs_oci = outputs
        .iter()
        .any(|o| matches!(o, berth_build::OutputSpec::OciTar(_)));
    let build = settings.build(&args.allow)?;
    let platforms = args
        .platform
        .as_ref()
        .map(|p| p.0.clone())
        .unwrap_or_default();
    let one_platform = match platforms.as_slice() {
        [one] => Some(one.clone()),
        _ => None,
    };
    let multi = platforms.len() > 1;
    if multi && args.load {
        bail!(
            "--load with several platforms: Docker keeps one image per name; load one platform (e.g. --platform linux/arm64 --load)"
        );
    }
    if multi && !outputs.is_empty() {
        bail!(
            "--output with several platforms is not supported yet; build one platform for an OCI or local output"
        );
    }
    let tty = match args.progress {
        _ if args.quiet => false,
        Mode::Tty => true,
        Mode::Plain => false,
        Mode::Auto => std::io::IsTerminal::is_terminal(&std::io::stderr()),
    };
    let tty_view = tty.then(|| Arc::new(progress::Tty::new(args.explain)));
    let sink: Arc<dyn Progress> = match &tty_view {
        Some(t) => t.clone(),
        None if args.quiet => Arc::new(berth_build::NoProgress),
        None => Arc::new(progress::Plain::new(args.explain)),
    };
    let chosen = crate::satellite::chosen(args.satellite.as_deref(), args.no_satellite, settings)?;
    if args.targets.len() > 1 {
        let pool = chosen
            .as_deref()
            .and_then(|n| n.strip_prefix(berth_satellite::POOL_PREFIX))
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "several --target: berth builds them at once over a satellite pool (--satellite pool:NAME); elsewhere build one target per command"
                )
            })?;
        if multi {
            bail!("several --target with several platforms: build one platform at a time");
        }
        if !outputs.is_empty() {
            bail!(
                "--output with several --target is not supported; build the target to write alone"
            );
        }
        return remote_targets(
            settings, pool, &args, context, dockerfile, secrets, ssh, &build, sink, tty_view,
        )
        .map(|()| None);
    }
    if let Some(name) = chosen {
        if multi {
            bail!(
                "--platform with several platforms: satellites build one platform at a time; build each on the satellite, or all with --no-satellite"
            );
        }
        return remote(
            settings, &name, &args, context, dockerfile, secrets, ssh, &build, sink, tty_view,
        );
    }
    let cancel = berth_build::Cancel::default();
    // The executor runs privileged steps only for a build granted them.
    let privileged = build
        .allow
        .contains(&berth_build::Entitlement::SecurityInsecure);
    let opts = BuildOptions {
        dockerfile,
        context,
        tags: args.tags.clone(),
        target: args.targets.first().cloned(),
        build_args: args.build_args.iter().cloned().collect::<BTreeMap<_, _>>(),
        secrets,
        ssh,
        no_cache: args.no_cache,
        source_date_epoch: build.source_date_epoch,
        proxy_env: build.proxy_env,
        outputs,
        progress: sink,
        cancel: cancel.clone(),
        client: Some(Arc::new(settings.remembering_registry_client())),
        resolve: berth_build::ResolvePolicy {
            pull: args.pull,
            ttl: build.resolve_ttl,
        },
        compression: args.compression.unwrap_or({
            let leaves = args.push || outputs_oci;
            if args.load && !leaves && berth_docker::daemon_is_local() {
                berth_build::Compression::Uncompressed
            } else {
                berth_build::Compression::Gzip
            }
        }),
        force_compression: args.force_compression,
        allow: build.allow,
        extra_hosts: args.add_hosts.clone(),
        ca_bundle: None,
        step_slots: None,
        platform: one_platform.clone(),
    };
    // [network] ca_to_steps: the bundle lives in the root's tmp/ for this build only.
    let step_ca = settings
        .network()
        .step_bundle(&settings.root.join("tmp"))
        .map_err(|e| anyhow::anyhow!("[network] ca_to_steps: {e}"))?;
    let opts = BuildOptions {
        ca_bundle: step_ca.as_ref().map(|b| b.path().to_path_buf()),
        ..opts
    };
    let store = berth_store::Store::open(&settings.root)
        .with_context(|| format!("open store at {}", settings.root.display()))?;
    let store_for_push = store.clone();
    let executor: Arc<dyn berth_exec::Executor> =
        Arc::new(berth_exec::Runc::new(&settings.root.join("exec"))?.with_privileged(privileged));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if multi {
        // One build per platform (sharing the store and cache), then an index over them.
        let mut children = Vec::new();
        for p in &platforms {
            let one = BuildOptions {
                platform: Some(p.clone()),
                tags: Vec::new(),
                ..opts.clone()
            };
            let built = run_cancelable(
                &rt,
                berth_build::build(&settings.root, store.clone(), executor.clone(), one),
                &cancel,
                executor.as_ref(),
                tty_view.as_deref(),
            )?;
            children.push((p.clone(), built.manifest));
        }
        let index = berth_build::export_index(&store, &children, &args.tags)?;
        for t in args.tags.iter().filter(|_| !args.quiet) {
            println!("{t}");
        }
        println!("{index}");
        if args.push {
            push_tags(settings, &rt, &store, &index, &args.tags)?;
        }
        if !args.quiet {
            let names: Vec<String> = platforms.iter().map(|p| p.to_string()).collect();
            eprintln!(
                "built a multi-platform image (index {index}: {})",
                names.join(", ")
            );
        }
        return Ok(None);
    }
    let result = run_cancelable(
        &rt,
        berth_build::build(&settings.root, store, executor.clone(), opts),
        &cancel,
        executor.as_ref(),
        tty_view.as_deref(),
    );
    let result = result?;
    for t in args.tags.iter().filter(|_| !args.quiet) {
        println!("{t}");
    }
    println!("{}", result.image_id);
    if args.load {
        if args.tags.is_empty() {
            bail!("--load needs a -t name for the image in Docker");
        }
        let opts = settings.docker(&args.docker);
        for t in &args.tags {
            rt.block_on(load_one(&store_for_push, t, None, &opts))?;
        }
    }
    if args.push {
        push_tags(settings, &rt, &store_for_push, &result.manifest, &args.tags)?;
    }
    if !args.quiet {
        eprintln!(
            "built image {} (manifest {}, {} layers)",
            result.image_id, result.manifest, result.layers
        );
    }
    Ok(None)
}

/// Runs `build` on `rt` until it ends; Ctrl-C or SIGTERM cancels it (running steps
/// stopped, nothing new started, every step cleaned up) and then exits with 130.
pub(crate) fn run_cancelable<T>(
    rt: &tokio::runtime::Runtime,
    build: impl std::future::Future<Output = T>,
    cancel: &berth_build::Cancel,
    executor: &dyn berth_exec::Executor,
    tty_view: Option<&progress::Tty>,
) -> T {
    let result = rt.block_on(async {
        tokio::pin!(build);
        tokio::select! {
            r = &mut build => r,
            () = crate::shutdown_signal() => {
                eprintln!("berth: canceling the build");
                cancel.cancel();
                executor.cancel();
                build.await
            }
        }
    });
    if let Some(t) = tty_view {
        t.finish();
    }
    if cancel.is_canceled() {
        eprintln!("berth: build canceled; nothing was recorded");
        std::process::exit(130);
    }
    result
}

/// `berth build` on a satellite: the same request, progress and output as a local build.
/// For a deploy, where the satellite pushed the image, if it did.
#[allow(clippy::too_many_arguments)]
fn remote(
    settings: &Settings,
    name: &str,
    args: &BuildArgs,
    context: PathBuf,
    dockerfile: PathBuf,
    secrets: HashMap<String, SecretSource>,
    ssh: HashMap<String, PathBuf>,
    build: &crate::settings::BuildSettings,
    sink: Arc<dyn Progress>,
    tty_view: Option<Arc<progress::Tty>>,
) -> Result<Option<String>> {
    let outputs = args
        .outputs
        .iter()
        .map(|s| parse_output(s))
        .collect::<Result<Vec<_>>>()?;
    let fetch = args.load || !outputs.is_empty();
    if (fetch || args.push) && args.tags.is_empty() {
        bail!("--load, --push and --output with a satellite need a -t name for the image");
    }
    let mut request = satellite_request(
        settings,
        args,
        &args.tags,
        args.targets.first().map_or("", String::as_str),
        &secrets,
        build,
    )?;
    if let Some(push) = &args.deploy_push {
        push.add_to(&mut request);
    }
    let result = crate::satellite::build(
        settings,
        name,
        context,
        Some(dockerfile),
        request,
        ssh,
        sink,
        fetch.then(|| settings.root.clone()),
        args.quiet,
    );
    if let Some(t) = &tty_view {
        t.finish();
    }
    let (member, r) = result?;
    for t in args.tags.iter().filter(|_| !args.quiet) {
        println!("{t}");
    }
    println!("{}", r.result.image_id);
    for p in &r.result.pushed {
        println!("{p}");
    }
    if fetch {
        let store = berth_store::Store::open(&settings.root)
            .with_context(|| format!("open store at {}", settings.root.display()))?;
        if args.load {
            load_tags(settings, args, &store, &args.tags)?;
        }
        let manifest: berth_oci::Digest = r.result.manifest.parse()?;
        for out in &outputs {
            if let OutputSpec::Local(dest) = out {
                berth_build::export_rootfs(&store, &manifest, dest)?;
            }
            if let OutputSpec::OciTar(dest) = out {
                berth_docker::save_to_file(
                    &store,
                    &[berth_docker::SaveImage {
                        name: args.tags[0].clone(),
                        manifest: manifest.clone(),
                    }],
                    berth_docker::ArchiveFormat::Oci,
                    dest,
                )?;
            }
        }
    }
    if !args.quiet {
        eprintln!(
            "built image {} on satellite {member}{} (manifest {}, {} layers; context {} entries, \
             {} files uploaded, {} bytes)",
            r.result.image_id,
            match name.strip_prefix(berth_satellite::POOL_PREFIX) {
                Some(pool) => format!(" of pool {pool}"),
                None => String::new(),
            },
            r.result.manifest,
            r.result.layers,
            r.entries,
            r.uploaded_files,
            r.uploaded_bytes
        );
    }
    match &args.deploy_push {
        Some(push) => push.outcome(
            settings,
            &member,
            &r.result,
            Some(r.result.manifest.as_str()),
        ),
        None => Ok(None),
    }
}

/// Load each of `tags` from `store` into Docker.
fn load_tags(
    settings: &Settings,
    args: &BuildArgs,
    store: &berth_store::Store,
    tags: &[String],
) -> Result<()> {
    let opts = settings.docker(&args.docker);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    for t in tags {
        rt.block_on(load_one(store, t, None, &opts))?;
    }
    Ok(())
}

/// The request a satellite builds stage `target` from (empty: the last), naming the
/// image `tags`; with `--push`, the credentials of their registries for this build only.
fn satellite_request(
    settings: &Settings,
    args: &BuildArgs,
    tags: &[String],
    target: &str,
    secrets: &HashMap<String, SecretSource>,
    build: &crate::settings::BuildSettings,
) -> Result<berth_satellite::proto::BuildRequest> {
    let mut credentials = HashMap::new();
    if args.push {
        let docker = settings.registry_config().docker_config;
        for t in tags {
            let dest: berth_oci::Reference = t.parse()?;
            if let Some(c) = docker.credentials(&dest.registry) {
                credentials.insert(
                    dest.registry.clone(),
                    berth_satellite::proto::Credential {
                        username: c.username,
                        password: c.password,
                    },
                );
            }
        }
    }
    Ok(berth_satellite::proto::BuildRequest {
        tags: tags.to_vec(),
        target: target.to_owned(),
        build_args: args.build_args.iter().cloned().collect(),
        secrets: secrets
            .iter()
            .map(|(id, src)| Ok((id.clone(), crate::satellite::secret_value(src)?)))
            .collect::<Result<_>>()?,
        no_cache: args.no_cache,
        pull: args.pull,
        resolve_ttl_secs: build.resolve_ttl.map(|t| t.as_secs()),
        source_date_epoch: build.source_date_epoch,
        allow: build.allow.iter().map(|e| e.name().to_owned()).collect(),
        extra_hosts: args
            .add_hosts
            .iter()
            .map(|(name, addr)| format!("{name}={addr}"))
            .collect(),
        compression: match args.compression {
            Some(berth_build::Compression::Zstd) => "zstd".into(),
            Some(berth_build::Compression::Uncompressed) => "uncompressed".into(),
            _ => String::new(),
        },
        force_compression: args.force_compression,
        push: args.push,
        credentials,
        platform: args
            .platform
            .as_ref()
            .and_then(|p| p.0.first())
            .map(|p| p.to_string())
            .unwrap_or_default(),
        ..Default::default()
    })
}

/// `-t` names with several `--target`s: each is `STAGE=NAME` for one of them. Returns
/// each target's names, in the targets' order.
fn tags_by_target(targets: &[String], tags: &[String]) -> Result<Vec<Vec<String>>> {
    let mut seen = std::collections::HashSet::new();
    if let Some(dup) = targets.iter().find(|t| !seen.insert(t.as_str())) {
        bail!("--target {dup} is given twice");
    }
    let mut out = vec![Vec::new(); targets.len()];
    for t in tags {
        let Some((stage, name)) = t.split_once('=') else {
            bail!(
                "-t {t}: with several --target, name each stage's image as -t STAGE=NAME (e.g. -t {}={t})",
                targets[0]
            );
        };
        let i = targets.iter().position(|x| x == stage).ok_or_else(|| {
            anyhow::anyhow!(
                "-t {t}: {stage} is not one of the --target stages ({})",
                targets.join(", ")
            )
        })?;
        berth_oci::WrittenReference::parse(name).with_context(|| format!("-t {t}"))?;
        out[i].push(name.to_owned());
    }
    Ok(out)
}

/// `berth build --satellite pool:NAME --target a --target b`: one build per stage, all at
/// once over the pool, each on the member that holds most of its cache (then the least
/// busy); the closing line says which member built which stage.
#[allow(clippy::too_many_arguments)]
fn remote_targets(
    settings: &Settings,
    pool: &str,
    args: &BuildArgs,
    context: PathBuf,
    dockerfile: PathBuf,
    secrets: HashMap<String, SecretSource>,
    ssh: HashMap<String, PathBuf>,
    build: &crate::settings::BuildSettings,
    sink: Arc<dyn Progress>,
    tty_view: Option<Arc<progress::Tty>>,
) -> Result<()> {
    let names = tags_by_target(&args.targets, &args.tags)?;
    let unnamed = args.targets.iter().zip(&names).find(|(_, n)| n.is_empty());
    if (args.load || args.push)
        && let Some((t, _)) = unnamed
    {
        bail!(
            "--load and --push with several --target need a name for each stage's image: -t {t}=NAME"
        );
    }
    let units = args
        .targets
        .iter()
        .zip(&names)
        .map(|(target, tags)| {
            Ok(crate::satellite::Unit {
                label: target.clone(),
                request: satellite_request(settings, args, tags, target, &secrets, build)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    if !args.quiet {
        eprintln!(
            "{} targets over pool {pool}: {}",
            units.len(),
            args.targets.join(", ")
        );
    }
    let result = crate::satellite::build_fanned(
        settings,
        pool,
        context,
        Some(dockerfile),
        ssh,
        units,
        sink,
        args.load.then(|| settings.root.clone()),
    );
    if let Some(t) = &tty_view {
        t.finish();
    }
    let done = result?;
    for (d, tags) in done.iter().zip(&names) {
        for t in tags.iter().filter(|_| !args.quiet) {
            println!("{t}");
        }
        println!("{}", d.result.result.image_id);
        for p in &d.result.result.pushed {
            println!("{p}");
        }
    }
    if args.load {
        let store = berth_store::Store::open(&settings.root)
            .with_context(|| format!("open store at {}", settings.root.display()))?;
        load_tags(settings, args, &store, &names.concat())?;
    }
    if !args.quiet {
        let (ran, entries, files, bytes) = crate::satellite::UnitDone::summary(&done);
        eprintln!(
            "built {} targets on pool {pool} ({ran}): context {entries} entries, {files} files uploaded, {bytes} bytes",
            done.len(),
        );
    }
    Ok(())
}

#[derive(Args)]
pub struct PruneArgs {
    /// Keep this much cache, most recently used first (e.g. 10GB, 500MB) [default: 0,
    /// or no limit with --keep-duration].
    #[arg(long, value_parser = parse_size)]
    keep_storage: Option<u64>,
    /// Remove cache unused for longer than this (e.g. 12h, 7d), whatever --keep-storage
    /// allows.
    #[arg(long, value_parser = crate::parse_duration)]
    keep_duration: Option<std::time::Duration>,
    /// Also remove cache mounts (RUN --mount=type=cache) and all cache-miss history.
    #[arg(long)]
    all: bool,
}

/// `500MB`, `10GB`, `4G`, `512MiB` (kB/MB/GB decimal, KiB/MiB/GiB binary), or bytes.
pub(crate) fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size like 500MB or 10GB"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "t" | "tb" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        _ => {
            return Err(format!(
                "{s:?}: unknown unit (use B, kB, MB, GB, KiB, MiB, GiB)"
            ));
        }
    };
    Ok((n * mult) as u64)
}

pub fn prune(settings: &Settings, args: PruneArgs) -> Result<()> {
    let store = berth_store::Store::open(&settings.root)?;
    let r = berth_build::prune(
        &settings.root,
        &store,
        &berth_build::PruneOptions {
            keep_storage: args.keep_storage.unwrap_or(match args.keep_duration {
                Some(_) => u64::MAX,
                None => 0,
            }),
            keep_duration: args.keep_duration,
            all: args.all,
        },
    )?;
    println!(
        "removed {} cache records, {} unpacked layers, {} layer blobs, {} cache mounts, {} step histories; freed {}",
        r.records,
        r.snapshots,
        r.blobs,
        r.cache_mounts,
        r.histories,
        crate::format::human_size(r.bytes)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes() {
        assert_eq!(super::parse_size("0").unwrap(), 0);
        assert_eq!(super::parse_size("10GB").unwrap(), 10_000_000_000);
        assert_eq!(super::parse_size("1.5MiB").unwrap(), 1_572_864);
        assert!(super::parse_size("ten").is_err());
        assert!(super::parse_size("5XB").is_err());
    }

    fn strings(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn several_targets_name_their_images_stage_by_stage() {
        let targets = strings(&["api", "worker"]);
        assert_eq!(
            super::tags_by_target(
                &targets,
                &strings(&["worker=reg.example/w:1", "api=api:1", "api=api:latest"])
            )
            .unwrap(),
            vec![
                strings(&["api:1", "api:latest"]),
                strings(&["reg.example/w:1"])
            ]
        );
        assert_eq!(
            super::tags_by_target(&targets, &[]).unwrap(),
            vec![Vec::<String>::new(), Vec::new()]
        );
        let e = super::tags_by_target(&targets, &strings(&["app:1"])).unwrap_err();
        assert!(format!("{e:#}").contains("-t api=app:1"), "{e:#}");
        let e = super::tags_by_target(&targets, &strings(&["web=app:1"])).unwrap_err();
        assert!(
            format!("{e:#}").contains("web is not one of the --target stages (api, worker)"),
            "{e:#}"
        );
        let e = super::tags_by_target(&targets, &strings(&["api=Not A Name"])).unwrap_err();
        assert!(format!("{e:#}").contains("-t api=Not A Name"), "{e:#}");
        let e = super::tags_by_target(&strings(&["api", "api"]), &[]).unwrap_err();
        assert!(
            format!("{e:#}").contains("--target api is given twice"),
            "{e:#}"
        );
    }
}

#[derive(Args)]
pub struct PushArgs {
    /// The image in berth's store (NAME[:TAG]).
    name: String,
    /// Where to push it [default: NAME itself, e.g. registry.internal:5000/app:1].
    dest: Option<String>,
}

/// `--push`: the image (or index) `manifest` to the registry of each of `tags`, each
/// pushed digest printed.
fn push_tags(
    settings: &Settings,
    rt: &tokio::runtime::Runtime,
    store: &berth_store::Store,
    manifest: &berth_oci::Digest,
    tags: &[String],
) -> Result<()> {
    if tags.is_empty() {
        bail!("--push needs at least one -t name saying where to push");
    }
    let client = settings.registry_client();
    for t in tags {
        let dest: berth_oci::Reference = t.parse()?;
        let digest = rt.block_on(push_one(store, &client, manifest, &dest))?;
        println!("{}/{}@{digest}", dest.registry, dest.repository);
    }
    Ok(())
}

pub(crate) async fn push_one(
    store: &berth_store::Store,
    client: &berth_client::Client,
    manifest: &berth_oci::Digest,
    dest: &berth_oci::Reference,
) -> Result<berth_oci::Digest> {
    let show = |line: &str| eprintln!("{dest}: {line}");
    let pushed = berth_build::push_image(store, client, manifest, dest, &show).await?;
    // `berth inspect` shows it among the image's RepoDigests, as docker does.
    let name =
        berth_oci::WrittenReference::parse(&format!("{}/{}", dest.registry, dest.repository))?
            .familiar()
            .name();
    store.add_repo_digest(manifest, &name, &pushed);
    Ok(pushed)
}

pub fn push(settings: &Settings, args: PushArgs) -> Result<()> {
    let store = berth_store::Store::open(&settings.root)?;
    let manifest = berth_build::image::local_manifest(&store, &args.name)
        .with_context(|| format!("berth push {}", args.name))?;
    let dest: berth_oci::Reference = args.dest.as_deref().unwrap_or(&args.name).parse()?;
    let client = settings.registry_client();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let digest = rt.block_on(push_one(&store, &client, &manifest, &dest))?;
    println!("{}/{}@{digest}", dest.registry, dest.repository);
    Ok(())
}

#[derive(Args)]
pub struct LoadArgs {
    /// The image in berth's store (NAME[:TAG]).
    name: String,
    /// Name it gets in Docker [default: NAME].
    #[arg(long = "as")]
    as_name: Option<String>,
    #[command(flatten)]
    docker: DockerArgs,
}

/// Load `name` from the store into Docker as `target` (default: `name`).
pub(crate) async fn load_one(
    store: &berth_store::Store,
    name: &str,
    target: Option<&str>,
    opts: &berth_docker::LoadOptions,
) -> Result<()> {
    let manifest = berth_build::image::local_manifest(store, name)
        .with_context(|| format!("berth load {name}"))?;
    let repo = berth_oci::WrittenReference::parse(name)?.local_repository();
    let target = target.unwrap_or(name);
    // Docker names an image by name and tag; a digest written here cannot be kept.
    let target = berth_oci::WrittenReference::parse(target)?;
    let full = format!("{}:{}", target.name(), target.tag_or_latest());
    let docker = berth_docker::connect().await?;
    let loaded = berth_docker::load(&docker, store, &repo, &manifest, &full, opts).await?;
    let how = match &loaded.path {
        berth_docker::Path::RegistryProxy => "through berth's registry proxy",
        berth_docker::Path::Tar(_) => "as a tar stream",
    };
    eprintln!("loaded {full} into Docker {how}");
    println!("{}", loaded.image_id);
    Ok(())
}

pub fn load(settings: &Settings, args: LoadArgs) -> Result<()> {
    let store = berth_store::Store::open(&settings.root)?;
    let opts = settings.docker(&args.docker);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(load_one(&store, &args.name, args.as_name.as_deref(), &opts))
}

#[derive(Args)]
pub struct LoginArgs {
    /// The registry (host[:port]; docker.io for Docker Hub).
    registry: String,
    /// User name.
    #[arg(short, long)]
    username: String,
    /// Read the password from standard input (otherwise from BERTH_PASSWORD).
    #[arg(long)]
    password_stdin: bool,
}

pub fn login(settings: &Settings, args: LoginArgs) -> Result<()> {
    let password = if args.password_stdin {
        let mut p = String::new();
        std::io::stdin().read_line(&mut p)?;
        p.trim_end_matches(['\n', '\r']).to_string()
    } else {
        std::env::var("BERTH_PASSWORD").context(
            "give the password on standard input with --password-stdin, or in BERTH_PASSWORD",
        )?
    };
    let creds = berth_client::Credentials {
        username: args.username.clone(),
        password,
    };
    let mut client = settings.registry_config();
    client.docker_config = berth_client::DockerConfig::default();
    client
        .credentials
        .insert(args.registry.clone(), creds.clone());
    let client = berth_client::Client::new(client);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(client.login(&args.registry))?;
    let path = berth_client::save_credentials(&args.registry, Some(&creds))?;
    eprintln!(
        "login to {} succeeded; credentials saved in {}",
        args.registry,
        path.display()
    );
    Ok(())
}

pub fn logout(registry: &str) -> Result<()> {
    let path = berth_client::save_credentials(registry, None)?;
    eprintln!(
        "removed the credentials for {registry} from {}",
        path.display()
    );
    Ok(())
}
