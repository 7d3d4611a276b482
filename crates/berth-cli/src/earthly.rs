//! `berth +target` and `berth build +target`: Earthly's command line over
//! [`berth_build::earth_build`].
//!
//! Earthly's form, `[flags] <target-ref> [--ARG=value…]`, puts build arguments after the
//! target, where clap's subcommands cannot take them; so the command line is looked at
//! before clap ([`intercept`]) and, when it names a target, parsed here.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use berth_build::{EarthBuildOptions, EarthOutput, Progress, SecretSource};
use clap::Parser;

use crate::progress::{self, Mode};
use crate::settings::{DockerArgs, Settings};

#[derive(Parser)]
#[command(
    name = "berth",
    about = "Run an Earthfile target: berth [flags] +target [--ARG=value…]"
)]
struct EarthCli {
    /// Data directory (default: /var/lib/berth for root, else $XDG_DATA_HOME/berth).
    #[arg(long, env = "BERTH_ROOT")]
    root: Option<PathBuf>,
    /// Config file (default: $XDG_CONFIG_HOME/berth/config.toml).
    #[arg(long, env = "BERTH_CONFIG")]
    config: Option<PathBuf>,
    /// Push `SAVE IMAGE --push` images and run `RUN --push` steps, after everything
    /// else succeeded [env: EARTHLY_PUSH, also from the .env file].
    #[arg(long, env = "EARTHLY_PUSH", value_parser = clap::builder::FalseyValueParser::new())]
    push: bool,
    /// CI mode: --no-output --strict, and EARTHLY_CI=true.
    #[arg(long)]
    ci: bool,
    /// Refuse what is not repeatable: LOCALLY targets.
    #[arg(long)]
    strict: bool,
    /// Write no local artifacts and load no images into Docker.
    #[arg(long)]
    no_output: bool,
    /// Run every step; reuse nothing from cache.
    #[arg(long)]
    no_cache: bool,
    /// Resolve every base image tag against its registry, even when berth's store has
    /// it [config: [build] resolve_ttl].
    #[arg(long)]
    pull: bool,
    /// Output only this artifact: --artifact +target/path [dest] (default dest: ./).
    #[arg(long, num_args = 1..=2, value_names = ["TARGET/PATH", "DEST"])]
    artifact: Option<Vec<String>>,
    /// Output only the images of this target.
    #[arg(long)]
    image: Option<String>,
    /// A secret: ID=VALUE, or ID to take the value from $ID (repeatable).
    #[arg(long = "secret", short = 's')]
    secrets: Vec<String>,
    /// A secret from a file: ID=PATH (repeatable).
    #[arg(long = "secret-file")]
    secret_files: Vec<String>,
    /// Grant an entitlement (repeatable): network.host, security.insecure.
    #[arg(long = "allow", value_parser = |s: &str| s.parse::<berth_build::Entitlement>())]
    allow: Vec<berth_build::Entitlement>,
    /// Earthly's names for --allow security.insecure: allow RUN --privileged and
    /// WITH DOCKER.
    #[arg(short = 'P', long = "allow-privileged")]
    allow_privileged: bool,
    /// Build the invoked target for this platform (os/arch[/variant], e.g. linux/arm64);
    /// RUN steps of another platform than this machine's run through binfmt_misc
    /// emulation (qemu-user-static).
    #[arg(long, value_parser = crate::build::parse_platform)]
    platform: Option<berth_build::Platform>,
    /// Progress display.
    #[arg(long, value_enum, default_value = "auto")]
    progress: Mode,
    /// Say why each step that runs was not taken from cache.
    #[arg(long)]
    explain: bool,
    #[command(flatten)]
    docker: DockerArgs,
    /// Build on this enrolled satellite, or on a member of a pool with `pool:NAME`
    /// [default: the one `berth satellite use` chose]: the folder berth runs in is sent, AS LOCAL artifacts come back here, images are
    /// fetched into this machine's store and Docker, `--push` pushes from the satellite.
    #[arg(long, env = "BERTH_SATELLITE", conflicts_with = "no_satellite")]
    satellite: Option<String>,
    /// Build on this machine even when a satellite is in use.
    #[arg(long)]
    no_satellite: bool,
    /// The target: +target, ./dir+target, ../dir+target, host/org/repo[/path][:ref]+target.
    target: Option<String>,
    /// The SSH agent socket `RUN --ssh` steps get [default: $SSH_AUTH_SOCK; env:
    /// EARTHLY_SSH_AUTH_SOCK].
    #[arg(long = "ssh-auth-sock", env = "EARTHLY_SSH_AUTH_SOCK")]
    ssh_auth_sock: Option<PathBuf>,
    /// Build arguments from this dotenv file [default: .arg in the current folder, if
    /// there is one; env: EARTHLY_ARG_FILE_PATH].
    #[arg(long = "arg-file-path", env = "EARTHLY_ARG_FILE_PATH")]
    arg_file_path: Option<PathBuf>,
    /// Secrets from this dotenv file [default: .secret in the current folder, if there
    /// is one; env: EARTHLY_SECRET_FILE_PATH].
    #[arg(long = "secret-file-path", env = "EARTHLY_SECRET_FILE_PATH")]
    secret_file_path: Option<PathBuf>,
    /// Earthly's settings (EARTHLY_* variables) from this dotenv file, for those not
    /// set in the environment [default: .env in the current folder, if there is one;
    /// env: EARTHLY_ENV_FILE_PATH].
    #[arg(long = "env-file-path", env = "EARTHLY_ENV_FILE_PATH")]
    _env_file_path: Option<PathBuf>,
    /// An ARG override, NAME=value, before the target (Earthly's older form of
    /// `--NAME=value` after it; repeatable).
    #[arg(long = "build-arg", value_name = "NAME=VALUE")]
    build_arg: Vec<String>,
    /// --ARG=value overrides of the target's ARGs.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    build_args: Vec<String>,
}

/// Whether `s` is a target reference as Earthly's command line takes it.
fn is_target(s: &str) -> bool {
    let Some((project, name)) = s.split_once('+') else {
        return false;
    };
    let local = project.is_empty()
        || project.starts_with("./")
        || project.starts_with("../")
        || project.starts_with('/');
    // host/org/repo[/path][:ref]
    let mut parts = project.split('/');
    let host = parts.next().unwrap_or("");
    let remote = (host.contains('.') || host.contains(':')) && parts.count() >= 2;
    // `./dir+x/Dockerfile` is a path, not a target.
    (local || remote)
        && !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Flags of Earthly's command line (and `berth build`'s) whose value is the next word.
const VALUE_FLAGS: &[&str] = &[
    "--image",
    "--secret",
    "-s",
    "--secret-file",
    "--allow",
    "--platform",
    "--progress",
    "--satellite",
    "--registry-proxy-port",
    "--build-arg",
    "--arg-file-path",
    "--secret-file-path",
    "--env-file-path",
];

/// The first word of `rest` that is neither a flag nor the value of one.
fn first_positional(rest: &[String]) -> Option<&String> {
    let mut words = rest.iter();
    while let Some(a) = words.next() {
        if VALUE_FLAGS.contains(&a.as_str()) {
            words.next();
        } else if !a.starts_with('-') {
            return Some(a);
        }
    }
    None
}

/// If the command line names an Earthfile target, set up logging with `init_logging`,
/// run it and return the exit code.
pub fn intercept(init_logging: impl FnOnce()) -> Option<i32> {
    let mut args: Vec<String> = std::env::args().collect();
    // Past the global options to the command word.
    let mut i = 1;
    while i < args.len() {
        match args[i].as_str() {
            "--root" | "--config" => i += 2,
            a if a.starts_with("--root=") || a.starts_with("--config=") => i += 1,
            _ => break,
        }
    }
    let word = args.get(i)?.clone();
    // A target (or --artifact, --image) anywhere after Earthly's own flags.
    let names_target = |rest: &[String]| {
        rest.iter().any(|a| {
            is_target(a) || a == "--artifact" || a == "--image" || a.starts_with("--image=")
        })
    };
    let earthly = if is_target(&word) {
        true
    } else if word.starts_with('-') && word != "-h" && word != "--help" && word != "-V" {
        names_target(&args[i..])
    } else if word == "build" {
        let rest = &args[i + 1..];
        let first_positional = first_positional(rest);
        let is = first_positional.is_some_and(|a| is_target(a))
            || rest
                .iter()
                .any(|a| a == "--artifact" || a == "--image" || a.starts_with("--image="));
        if is {
            args.remove(i);
        }
        is
    } else {
        false
    };
    if !earthly {
        return None;
    }
    if let Err(e) = load_env_file(&args) {
        eprintln!("berth: error: {e:#}");
        return Some(1);
    }
    let cli = EarthCli::parse_from(args);
    init_logging();
    Some(match run(cli) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("berth: error: {e:#}");
            1
        }
    })
}

fn parse_secret(s: &str) -> Result<(String, SecretSource)> {
    match s.split_once('=') {
        Some((id, v)) => Ok((id.to_string(), SecretSource::Value(Arc::from(v.as_bytes())))),
        None => {
            if std::env::var_os(s).is_none() {
                bail!("--secret {s}: no value given and ${s} is not set; write --secret {s}=VALUE");
            }
            Ok((s.to_string(), SecretSource::Env(s.to_string())))
        }
    }
}

/// Earthly reads `.env` (or `--env-file-path`, `$EARTHLY_ENV_FILE_PATH`) into its
/// environment before its flags, so `EARTHLY_PUSH=1` there is `--push`. Only its
/// `EARTHLY_*` settings are taken, and none that the environment already sets: the
/// other lines of a project's `.env` are the application's, and LOCALLY commands get
/// berth's environment.
fn load_env_file(args: &[String]) -> Result<()> {
    let mut path = std::env::var_os("EARTHLY_ENV_FILE_PATH").map(PathBuf::from);
    for (i, a) in args.iter().enumerate() {
        if a == "--env-file-path" {
            path = args.get(i + 1).map(PathBuf::from);
        } else if let Some(p) = a.strip_prefix("--env-file-path=") {
            path = Some(PathBuf::from(p));
        }
    }
    for (k, v) in dotenv(path.as_deref(), ".env")? {
        if k.starts_with("EARTHLY_") && std::env::var_os(&k).is_none() {
            // SAFETY: called from `intercept`, the first thing `main` does, before any
            // other thread exists.
            unsafe { std::env::set_var(&k, v) };
        }
    }
    Ok(())
}

/// The environment variables of Earthly's own flags that are not `EARTHLY_*`: what a
/// `.env` may hold besides those without Earthly warning about it.
const EARTHLY_FLAG_ENVS: &[&str] = &["GITHUB_ACTIONS", "GIT_USERNAME", "GIT_PASSWORD"];

/// Earthly 0.7 moved build arguments from `.env` to `.arg` (and secrets to
/// `.secret`): when neither of those is there, each `.env` line that is none of
/// Earthly's settings gets Earthly's warning (its dotenv test looks for the words).
fn warn_build_args_in_env_file(path: Option<&Path>) -> Result<()> {
    for k in dotenv(path, ".env")?.keys() {
        if !k.starts_with("EARTHLY_") && !EARTHLY_FLAG_ENVS.contains(&k.as_str()) {
            eprintln!(
                "berth: warning: unexpected env \"{k}\": as of v0.7.0, --build-arg values \
                 must be defined in .arg (and --secret values in .secret)"
            );
        }
    }
    Ok(())
}

/// `NAME=value` lines of dotenv file `path`, or of `default` in the current folder
/// when there is one (a missing `path` is an error).
fn dotenv(path: Option<&std::path::Path>, default: &str) -> Result<BTreeMap<String, String>> {
    Ok(dotenv_file(path, default)?.unwrap_or_default())
}

/// As [`dotenv`], `None` where there is no file to read.
fn dotenv_file(
    path: Option<&std::path::Path>,
    default: &str,
) -> Result<Option<BTreeMap<String, String>>> {
    let (path, required) = match path {
        Some(p) => (p.to_path_buf(), true),
        None => (PathBuf::from(default), false),
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(None);
        }
        Err(e) => return Err(anyhow::anyhow!("open {}: {e}", path.display())),
    };
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let (k, v) = line
            .split_once('=')
            .with_context(|| format!("{}:{}: write NAME=value", path.display(), i + 1))?;
        let v = v.trim();
        let v = match (v.chars().next(), v.chars().last()) {
            (Some(q @ ('"' | '\'')), Some(e)) if v.len() >= 2 && q == e => &v[1..v.len() - 1],
            _ => v,
        };
        out.insert(k.trim().to_string(), v.to_string());
    }
    Ok(Some(out))
}

fn run(cli: EarthCli) -> Result<()> {
    let settings = Settings::load(cli.root.clone(), cli.config.as_deref())?;
    run_with(&settings, cli, None).map(drop)
}

/// Runs Earthfile `target` with `--NAME=value` `args` for `berth deploy`, as a command
/// line `berth --no-output TARGET` run in `dir` (the deploy file's folder): built here,
/// its images go into the store only; on the chosen satellite, `push`'s image goes from
/// there to the deploy's registry (or comes into the store when the satellite cannot
/// push). Returns where the satellite pushed it.
pub(crate) fn build_target(
    settings: &Settings,
    dir: &Path,
    target: &str,
    args: &BTreeMap<String, String>,
    push: &crate::satellite::DeployPush,
) -> Result<Option<String>> {
    let dir = std::path::absolute(dir).with_context(|| format!("{}", dir.display()))?;
    let target = target_in(&dir, target);
    let mut argv = vec!["berth".to_owned(), "--no-output".to_owned(), target];
    argv.extend(args.iter().map(|(k, v)| format!("--{k}={v}")));
    let cli = EarthCli::try_parse_from(argv)?;
    run_with(settings, cli, Some(Deploy { dir: &dir, push }))
}

/// `target` (`/abs/dir+t`, as deploy files resolve theirs) relative to the folder `dir`
/// it lies in (`./sub+t`, `+t`): a satellite is sent that folder. Others stay as given.
fn target_in(dir: &Path, target: &str) -> String {
    let Some((project, name)) = target.split_once('+') else {
        return target.to_owned();
    };
    match Path::new(project).strip_prefix(dir) {
        Ok(rel) if project.starts_with('/') && rel.as_os_str().is_empty() => format!("+{name}"),
        Ok(rel) if project.starts_with('/') => format!("./{}+{name}", rel.display()),
        _ => target.to_owned(),
    }
}

/// What a deploy's build adds to a command line: the folder it runs in, and where the
/// satellite pushes the service's image.
#[derive(Clone, Copy)]
struct Deploy<'a> {
    dir: &'a Path,
    push: &'a crate::satellite::DeployPush,
}

/// `berth [flags] +target`; for `berth deploy` (`deploy`), where a satellite pushed the
/// service's image, if one did.
fn run_with(settings: &Settings, cli: EarthCli, deploy: Option<Deploy>) -> Result<Option<String>> {
    let cwd = match deploy {
        Some(d) => d.dir.to_path_buf(),
        None => std::env::current_dir()?,
    };
    let (target, output) = match (&cli.artifact, &cli.image, &cli.target) {
        (Some(a), None, None) => {
            let r = &a[0];
            let plus = r.find('+').context("--artifact takes +target/path")?;
            let slash = r[plus..]
                .find('/')
                .map(|s| s + plus)
                .context("--artifact takes +target/path")?;
            let dest = a.get(1).cloned().unwrap_or_else(|| "./".into());
            let dest = cwd.join(dest);
            (
                r[..slash].to_string(),
                EarthOutput::Artifact {
                    path: r[slash + 1..].to_string(),
                    dest,
                },
            )
        }
        (None, Some(t), None) => (t.clone(), EarthOutput::Image),
        (None, None, Some(t)) => (t.clone(), EarthOutput::Normal),
        (None, None, None) => bail!("name a target: berth +target [--ARG=value…]"),
        _ => bail!("give one of a target, --artifact or --image"),
    };
    // Earthly's .arg and .secret files: the lowest precedence.
    let arg_file = dotenv_file(cli.arg_file_path.as_deref(), ".arg")?;
    let secret_file = dotenv_file(cli.secret_file_path.as_deref(), ".secret")?;
    if arg_file.is_none() && secret_file.is_none() && deploy.is_none() {
        warn_build_args_in_env_file(cli._env_file_path.as_deref())?;
    }
    let mut args = arg_file.unwrap_or_default();
    for a in &cli.build_arg {
        let (k, v) = a
            .split_once('=')
            .with_context(|| format!("--build-arg {a:?}: write --build-arg NAME=value"))?;
        args.insert(k.to_string(), v.to_string());
    }
    for a in &cli.build_args {
        let Some((k, v)) = a.strip_prefix("--").and_then(|kv| kv.split_once('=')) else {
            bail!(
                "{a:?}: after the target come build arguments, --NAME=value; put berth's flags before the target"
            );
        };
        args.insert(k.to_string(), v.to_string());
    }
    if let Some(k) = args
        .keys()
        .find(|k| berth_build::frontend::earthfile::lower::is_builtin_arg(k))
    {
        bail!("{k} is a built-in ARG: its value cannot be passed on the command line");
    }
    let mut secrets: HashMap<String, SecretSource> = HashMap::new();
    for (id, v) in secret_file.unwrap_or_default() {
        secrets.insert(id, SecretSource::Value(Arc::from(v.as_bytes())));
    }
    for s in &cli.secrets {
        let (id, src) = parse_secret(s)?;
        secrets.insert(id, src);
    }
    for s in &cli.secret_files {
        let (id, path) = s
            .split_once('=')
            .with_context(|| format!("--secret-file {s:?}: write ID=PATH"))?;
        if !std::path::Path::new(path).is_file() {
            bail!("--secret-file {s}: {path} is not a file");
        }
        secrets.insert(id.to_string(), SecretSource::File(PathBuf::from(path)));
    }
    let no_output = cli.no_output || cli.ci;
    let mut allow = cli.allow.clone();
    if cli.allow_privileged {
        allow.push(berth_build::Entitlement::SecurityInsecure);
    }
    let build = settings.build(&allow)?;
    // The executor runs a privileged process only for a build granted it.
    let privileged = build
        .allow
        .contains(&berth_build::Entitlement::SecurityInsecure);
    let tty = match cli.progress {
        Mode::Tty => true,
        Mode::Plain => false,
        Mode::Auto => std::io::IsTerminal::is_terminal(&std::io::stderr()),
    };
    let tty_view = tty.then(|| Arc::new(progress::Tty::new(cli.explain)));
    let sink: Arc<dyn Progress> = match &tty_view {
        Some(t) => t.clone(),
        None => Arc::new(progress::Plain::new(cli.explain)),
    };
    if let Some(name) =
        crate::satellite::chosen(cli.satellite.as_deref(), cli.no_satellite, settings)?
    {
        return remote(
            settings,
            &name,
            &cli,
            Remote {
                target,
                output,
                args,
                secrets,
                build,
                cwd,
                deploy,
            },
            sink,
            tty_view,
        );
    }
    let cancel = berth_build::Cancel::default();
    let step_ca = settings
        .network()
        .step_bundle(&settings.root.join("tmp"))
        .map_err(|e| anyhow::anyhow!("[network] ca_to_steps: {e}"))?;
    let opts = EarthBuildOptions {
        dir: cwd,
        target,
        args,
        secrets,
        // Earthly forwards the agent of --ssh-auth-sock ($SSH_AUTH_SOCK) to `RUN --ssh`.
        ssh: cli
            .ssh_auth_sock
            .clone()
            .or_else(|| std::env::var_os("SSH_AUTH_SOCK").map(PathBuf::from))
            .filter(|s| !s.as_os_str().is_empty())
            .map(|s| HashMap::from([("default".to_string(), s)]))
            .unwrap_or_default(),
        no_cache: cli.no_cache,
        push: cli.push,
        ci: cli.ci,
        strict: cli.strict || cli.ci,
        no_output,
        output,
        source_date_epoch: build.source_date_epoch,
        proxy_env: build.proxy_env,
        progress: sink,
        cancel: cancel.clone(),
        client: Some(Arc::new(settings.remembering_registry_client())),
        compression: berth_build::Compression::Gzip,
        allow: build.allow,
        ca_bundle: step_ca.as_ref().map(|b| b.path().to_path_buf()),
        resolve: berth_build::ResolvePolicy {
            pull: cli.pull,
            ttl: build.resolve_ttl,
        },
        satellite: false,
        local_sink: None,
        step_slots: None,
        platform: cli.platform.clone(),
    };
    let store = crate::open_store(settings)?;
    let executor: Arc<dyn berth_exec::Executor> =
        Arc::new(berth_exec::Runc::new(&settings.root.join("exec"))?.with_privileged(privileged));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = crate::build::run_cancelable(
        &rt,
        berth_build::earth_build(&settings.root, store.clone(), executor.clone(), opts),
        &cancel,
        executor.as_ref(),
        tty_view.as_deref(),
    );
    let result = result?;
    let docker = settings.docker(&cli.docker);
    for img in &result.images {
        println!("{} {}", img.name, img.image_id);
        if !no_output {
            rt.block_on(crate::build::load_one(&store, &img.name, None, &docker))?;
        }
    }
    if cli.push {
        let client = settings.registry_client();
        for img in result.images.iter().filter(|i| i.push) {
            let dest: berth_oci::Reference = img.name.parse()?;
            let digest = rt.block_on(crate::build::push_one(
                &store,
                &client,
                &img.manifest,
                &dest,
            ))?;
            println!("{}/{}@{digest}", dest.registry, dest.repository);
        }
    }
    for a in &result.artifacts {
        println!("{}", a.display());
    }
    eprintln!(
        "built {} target{}: {} image{}, {} artifact{} written",
        result.targets,
        if result.targets == 1 { "" } else { "s" },
        result.images.len(),
        if result.images.len() == 1 { "" } else { "s" },
        result.artifacts.len(),
        if result.artifacts.len() == 1 { "" } else { "s" },
    );
    Ok(None)
}

/// What `run_with` resolved, for a build on a satellite.
struct Remote<'a> {
    target: String,
    output: EarthOutput,
    args: BTreeMap<String, String>,
    secrets: HashMap<String, SecretSource>,
    build: crate::settings::BuildSettings,
    cwd: PathBuf,
    deploy: Option<Deploy<'a>>,
}

/// `berth --satellite NAME +target`: the folder berth runs in goes to the satellite
/// (only what it lacks), which runs the target there; `SAVE ARTIFACT … AS LOCAL`
/// outputs come back into this folder as a local build writes them, saved images come
/// down into this machine's store and Docker (not with `--no-output`), and `--push`
/// pushes from the satellite with this machine's credentials for the registry hosts
/// the invoked Earthfile and the `--ARG` values name. For a deploy, the satellite pushes
/// the service's image too ([`crate::satellite::DeployPush`]).
fn remote(
    settings: &Settings,
    name: &str,
    cli: &EarthCli,
    r: Remote,
    sink: Arc<dyn Progress>,
    tty_view: Option<Arc<progress::Tty>>,
) -> Result<Option<String>> {
    let cwd = r.cwd.clone();
    let project = r.target.split_once('+').map_or("", |(p, _)| p);
    if project == ".." || project.starts_with("../") || project.starts_with('/') {
        bail!(
            "{}: on a satellite, berth sends the folder it runs in ({}) and builds targets \
             inside it; run berth from a folder that holds {project} (as ./…), or build \
             here with --no-satellite",
            r.target,
            cwd.display()
        );
    }
    let no_output = cli.no_output || cli.ci;
    // `--artifact`: the place here, into it when it is a folder (as locally).
    let artifact = match &r.output {
        EarthOutput::Artifact { path, dest } => {
            let mut d = dest.display().to_string();
            if dest.is_dir() && !d.ends_with('/') {
                d.push('/');
            }
            (path.clone(), d)
        }
        _ => (String::new(), String::new()),
    };
    let credentials = if cli.push {
        push_credentials(settings, &cwd, project, r.args.values())
    } else {
        HashMap::new()
    };
    let mut request = berth_satellite::proto::BuildRequest {
        frontend: "earthfile".into(),
        target: r.target.clone(),
        build_args: r.args.into_iter().collect(),
        secrets: r
            .secrets
            .iter()
            .map(|(id, src)| Ok((id.clone(), crate::satellite::secret_value(src)?)))
            .collect::<Result<_>>()?,
        no_cache: cli.no_cache,
        pull: cli.pull,
        resolve_ttl_secs: r.build.resolve_ttl.map(|t| t.as_secs()),
        source_date_epoch: r.build.source_date_epoch,
        allow: r.build.allow.iter().map(|e| e.name().to_owned()).collect(),
        push: cli.push,
        credentials,
        ci: cli.ci,
        strict: cli.strict,
        no_output,
        image_only: r.output == EarthOutput::Image,
        artifact: artifact.0,
        artifact_dest: artifact.1,
        platform: cli
            .platform
            .as_ref()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        ..Default::default()
    };
    if let Some(d) = r.deploy {
        d.push.add_to(&mut request);
    }
    if let Some(pool) = name.strip_prefix(berth_satellite::POOL_PREFIX)
        && r.output == EarthOutput::Normal
        && r.deploy.is_none()
        && let Some(fanned) = fanned(&cwd, &r.target, &request)
    {
        return remote_fanned(settings, pool, cli, cwd, request, fanned, sink, tty_view)
            .map(|()| None);
    }
    let result = crate::satellite::build(
        settings,
        name,
        cwd,
        None,
        request,
        HashMap::new(),
        sink,
        (!no_output).then(|| settings.root.clone()),
        false,
    );
    if let Some(t) = &tty_view {
        t.finish();
    }
    let (member, done) = result?;
    let images = &done.result.images;
    remote_outputs(
        settings,
        cli,
        &images.iter().collect::<Vec<_>>(),
        &done.artifacts.iter().collect::<Vec<_>>(),
    )?;
    let targets = done.result.targets;
    eprintln!(
        "built {targets} target{} on satellite {member}{}: {} image{}, {} artifact{} written \
         (context {} entries, {} files uploaded, {} bytes)",
        if targets == 1 { "" } else { "s" },
        match name.strip_prefix(berth_satellite::POOL_PREFIX) {
            Some(pool) => format!(" of pool {pool}"),
            None => String::new(),
        },
        images.len(),
        if images.len() == 1 { "" } else { "s" },
        done.artifacts.len(),
        if done.artifacts.len() == 1 { "" } else { "s" },
        done.entries,
        done.uploaded_files,
        done.uploaded_bytes,
    );
    match r.deploy {
        Some(Deploy { push, .. }) => {
            let manifest = images
                .iter()
                .find(|i| i.name == push.name)
                .map(|i| i.manifest.as_str());
            push.outcome(settings, &member, &done.result, manifest)
        }
        None => Ok(None),
    }
}

/// What builds on satellites made, here: their images (already in the store) loaded
/// into Docker unless `--no-output`, then a line per image, push and artifact.
fn remote_outputs(
    settings: &Settings,
    cli: &EarthCli,
    images: &[&berth_satellite::proto::SavedImage],
    artifacts: &[&PathBuf],
) -> Result<()> {
    let no_output = cli.no_output || cli.ci;
    if !no_output && !images.is_empty() {
        let store = crate::open_store(settings)?;
        let docker = settings.docker(&cli.docker);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        for img in images {
            rt.block_on(crate::build::load_one(&store, &img.name, None, &docker))?;
        }
    }
    for img in images {
        println!("{} {}", img.name, img.image_id);
    }
    for img in images.iter().filter(|i| !i.pushed.is_empty()) {
        println!("{}", img.pushed);
    }
    for a in artifacts {
        println!("{}", a.display());
    }
    Ok(())
}

/// The credentials of this machine for the registry hosts an Earthfile build of
/// `project` (`""`, `./dir`) with ARG values `args` may push to, sent with the request
/// (`--push` pushes from the satellite).
fn push_credentials<'a>(
    settings: &Settings,
    cwd: &std::path::Path,
    project: &str,
    args: impl IntoIterator<Item = &'a String>,
) -> HashMap<String, berth_satellite::proto::Credential> {
    let mut credentials = HashMap::new();
    let earthfile = match project {
        "" => Some(cwd.join("Earthfile")),
        p if p == "." || p.starts_with("./") => Some(cwd.join(p).join("Earthfile")),
        _ => None,
    };
    let text = earthfile
        .and_then(|f| std::fs::read_to_string(f).ok())
        .unwrap_or_default();
    let docker = settings.registry_config().docker_config;
    let args: Vec<&str> = args.into_iter().map(String::as_str).collect();
    for host in berth_satellite::earthfile_registry_hosts(&text, args) {
        if let Some(c) = docker.credentials(&host) {
            credentials.insert(
                host,
                berth_satellite::proto::Credential {
                    username: c.username,
                    password: c.password,
                },
            );
        }
    }
    credentials
}

/// The builds that `target` stands for when its recipe only BUILDs other targets
/// ([`berth_build::frontend::earthfile::fan_out`]), with the command line's `request`
/// arguments; `None` when it is built whole (or its Earthfile cannot be read here: the
/// member then says why).
fn fanned(
    cwd: &std::path::Path,
    target: &str,
    request: &berth_satellite::proto::BuildRequest,
) -> Option<Vec<berth_build::frontend::earthfile::FannedTarget>> {
    let project = target.split_once('+')?.0;
    let file = cwd.join(project).join("Earthfile");
    let text = std::fs::read_to_string(&file).ok()?;
    let ef = berth_build::Earthfile::parse("Earthfile", &text).ok()?;
    let args: BTreeMap<String, String> = request
        .build_args
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    berth_build::frontend::earthfile::fan_out(&ef, target, &args)
}

/// `berth --satellite pool:NAME +all` where `+all` only BUILDs independent targets:
/// each of them is a build of its own, sent to the member that holds its cache (or the
/// least busy), all at once; their outputs come back as a single build's do, and the
/// closing line says which member built which target.
#[allow(clippy::too_many_arguments)]
fn remote_fanned(
    settings: &Settings,
    pool: &str,
    cli: &EarthCli,
    cwd: PathBuf,
    request: berth_satellite::proto::BuildRequest,
    fanned: Vec<berth_build::frontend::earthfile::FannedTarget>,
    sink: Arc<dyn Progress>,
    tty_view: Option<Arc<progress::Tty>>,
) -> Result<()> {
    let no_output = cli.no_output || cli.ci;
    let units: Vec<crate::satellite::Unit> = fanned
        .into_iter()
        .map(|f| {
            let label = if f.args.is_empty() {
                f.target.clone()
            } else {
                let args: Vec<String> = f.args.iter().map(|(k, v)| format!("--{k}={v}")).collect();
                format!("{} {}", f.target, args.join(" "))
            };
            let project = f.target.split_once('+').map_or("", |(p, _)| p);
            let credentials = if cli.push {
                push_credentials(settings, &cwd, project, f.args.values())
            } else {
                HashMap::new()
            };
            crate::satellite::Unit {
                label,
                request: berth_satellite::proto::BuildRequest {
                    target: f.target,
                    build_args: f.args.into_iter().collect(),
                    credentials,
                    ..request.clone()
                },
            }
        })
        .collect();
    eprintln!(
        "{}: {} independent builds over pool {pool}",
        request.target,
        units.len()
    );
    let result = crate::satellite::build_fanned(
        settings,
        pool,
        cwd,
        None,
        HashMap::new(),
        units,
        sink,
        (!no_output).then(|| settings.root.clone()),
    );
    if let Some(t) = &tty_view {
        t.finish();
    }
    let done = result?;
    let images: Vec<&berth_satellite::proto::SavedImage> =
        done.iter().flat_map(|d| &d.result.result.images).collect();
    let artifacts: Vec<&PathBuf> = done.iter().flat_map(|d| &d.result.artifacts).collect();
    remote_outputs(settings, cli, &images, &artifacts)?;
    let targets: u32 = done.iter().map(|d| d.result.result.targets).sum();
    let (ran, entries, files, bytes) = crate::satellite::UnitDone::summary(&done);
    eprintln!(
        "built {targets} target{} on pool {pool} ({ran}): {} image{}, {} artifact{} written \
         (context {entries} entries, {files} files uploaded, {bytes} bytes)",
        if targets == 1 { "" } else { "s" },
        images.len(),
        if images.len() == 1 { "" } else { "s" },
        artifacts.len(),
        if artifacts.len() == 1 { "" } else { "s" },
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn deploy_targets_are_relative_to_the_deploy_files_folder() {
        let dir = std::path::Path::new("/srv/proj");
        assert_eq!(
            super::target_in(dir, "/srv/proj/api+docker"),
            "./api+docker"
        );
        assert_eq!(super::target_in(dir, "/srv/proj/a/b+t"), "./a/b+t");
        assert_eq!(super::target_in(dir, "/srv/proj+t"), "+t");
        assert_eq!(super::target_in(dir, "/srv/other+t"), "/srv/other+t");
        assert_eq!(super::target_in(dir, "./api+t"), "./api+t");
        assert_eq!(super::target_in(dir, "+t"), "+t");
    }

    #[test]
    fn targets_are_told_from_paths() {
        for t in [
            "+build",
            "./a+b",
            "../x/y+z-1",
            "/abs+t",
            "github.com/org/repo:v1+t",
        ] {
            assert!(super::is_target(t), "{t}");
        }
        for p in [".", "./ctx", "./dir+x/Dockerfile", "app+1", "+", "A=+x"] {
            assert!(!super::is_target(p), "{p}");
        }
        let words = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        assert_eq!(
            super::first_positional(&words("--satellite s1 --push +all")).map(String::as_str),
            Some("+all")
        );
        assert_eq!(
            super::first_positional(&words("-t x --load ./ctx")).map(String::as_str),
            Some("x")
        );
    }
}
