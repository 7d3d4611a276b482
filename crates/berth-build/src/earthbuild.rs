//! One Earthfile build, end to end: lower the invoked target and what it reaches, solve
//! every state the output needs at once, then save images into the store and artifacts
//! on the host, following Earthly's output rule (only targets connected to the invoked
//! one through `BUILD` chains give output).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use berth_oci::Digest;
use berth_store::Store;

use crate::build::rfc3339;
use crate::error::{BuildError, Result};
use crate::export;
use crate::frontend::earthfile::lower::{
    EarthOptions, Host, LocalRun, Plan, SavedImage, SavedLocal, lower,
};
use crate::ir::State;
use crate::solver::{
    Cancel, Event, Output, Progress, SecretSource, SolveOptions, Solver, build_id,
};

/// What to output besides the normal rule.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum EarthOutput {
    /// Images and local artifacts of the targets connected through `BUILD`.
    #[default]
    Normal,
    /// `--artifact +t/path dest`: that artifact only, into `dest`.
    Artifact {
        /// The path in the target's artifacts (may end in `*`).
        path: String,
        /// Where on the host.
        dest: PathBuf,
    },
    /// `--image +t`: the invoked target's images only.
    Image,
}

/// An Earthfile build request.
#[derive(Clone)]
pub struct EarthBuildOptions {
    /// The folder target references are relative to (the invocation's working folder).
    pub dir: PathBuf,
    /// `+target`, `./dir+target`.
    pub target: String,
    /// `--NAME=value` after the target.
    pub args: BTreeMap<String, String>,
    /// Secrets by id.
    pub secrets: HashMap<String, SecretSource>,
    /// SSH agent sockets by id, for `RUN --ssh` (id `default`).
    pub ssh: HashMap<String, PathBuf>,
    /// Reuse nothing.
    pub no_cache: bool,
    /// `--push`: run `RUN --push` steps and mark `SAVE IMAGE --push` images for pushing.
    pub push: bool,
    /// `--ci`.
    pub ci: bool,
    /// `--strict` (implied by `--ci`): refuse `LOCALLY`.
    pub strict: bool,
    /// `--no-output`: save no local artifacts (images stay in the store only).
    pub no_output: bool,
    /// What to output.
    pub output: EarthOutput,
    /// `SOURCE_DATE_EPOCH`.
    pub source_date_epoch: Option<u64>,
    /// Proxy variables for RUN steps.
    pub proxy_env: Vec<String>,
    /// Progress sink.
    pub progress: Arc<dyn Progress>,
    /// Cancellation.
    pub cancel: Cancel,
    /// Registry client for base images not in the store.
    pub client: Option<Arc<berth_client::Client>>,
    /// Layer compression of new layers.
    pub compression: berth_snapshot::Compression,
    /// Entitlements granted.
    pub allow: Vec<crate::ir::Entitlement>,
    /// A CA bundle RUN steps see.
    pub ca_bundle: Option<PathBuf>,
    /// When a base image tag in the store is asked of its registry again (`--pull`).
    pub resolve: crate::ResolvePolicy,
    /// Built on a satellite over the folder its client sent: see
    /// `EarthOptions::satellite` for what is refused.
    pub satellite: bool,
    /// Where `SAVE ARTIFACT … AS LOCAL` outputs go instead of this host's files (a
    /// satellite sends them to its client); `None` writes them here.
    pub local_sink: Option<Arc<dyn LocalSink>>,
    /// Steps at once, shared with other builds (a satellite's `max_parallel_steps`).
    pub step_slots: Option<Arc<crate::solver::StepSlots>>,
    /// The platform the invoked target is for (`--platform`; `None`: this host's).
    pub platform: Option<crate::Platform>,
}

/// A `SAVE ARTIFACT … AS LOCAL` output, as it is placed on a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalOutput {
    /// Where (absolute on the building host); a trailing `/` means "into this folder".
    pub dest: String,
    /// The source had wildcards: every entry of the staged `out/` goes into `dest`.
    pub glob: bool,
    /// The artifact's name in the staged `out/` (one path).
    pub name: String,
}

/// Takes `SAVE ARTIFACT … AS LOCAL` outputs instead of this host's file system.
pub trait LocalSink: Send + Sync {
    /// `staged` holds the output as `out/<name>` (or every wildcard match in `out/`);
    /// it is removed after the call. Called off the async workers, one output at a time.
    fn local(&self, output: &LocalOutput, staged: &Path) -> Result<()>;
}

/// An image a build saved.
#[derive(Debug, Clone)]
pub struct EarthImage {
    /// Its name (`SAVE IMAGE name`).
    pub name: String,
    /// Manifest digest.
    pub manifest: Digest,
    /// Config digest.
    pub image_id: Digest,
    /// `SAVE IMAGE --push` (pushed only with `--push`).
    pub push: bool,
}

/// What an Earthfile build made.
#[derive(Debug, Clone, Default)]
pub struct EarthResult {
    /// Images saved into the store, for the caller to load into Docker or push.
    pub images: Vec<EarthImage>,
    /// Files and folders written on the host.
    pub artifacts: Vec<PathBuf>,
    /// Targets lowered (each once per set of ARG values).
    pub targets: usize,
}

/// Run an Earthfile build over the data root `root`.
pub async fn earth_build(
    root: &Path,
    store: Store,
    executor: Arc<dyn berth_exec::Executor>,
    opts: EarthBuildOptions,
) -> Result<EarthResult> {
    let _lock = store.lock_root(false)?;
    let created = Some(rfc3339(opts.source_date_epoch.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    })));
    let lower_opts = EarthOptions {
        args: opts.args.clone(),
        proxy_env: opts.proxy_env.clone(),
        no_cache: opts.no_cache,
        created,
        allow: opts.allow.clone(),
        cancel: opts.cancel.clone(),
        push: opts.push,
        ci: opts.ci,
        git_cache: Some(root.join("cache/earthly-git")),
        strict: opts.strict,
        no_output: opts.no_output,
        satellite: opts.satellite,
        platform: opts.platform.clone(),
    };
    let handle = tokio::runtime::Handle::current();
    let store2 = store.clone();
    // Base images as `berth build` takes them: a tag in the store is the answer unless
    // `--pull` or the resolve TTL says otherwise.
    let bases = Arc::new(crate::bases::Bases::new(
        store.clone(),
        opts.client.clone(),
        opts.resolve,
        opts.progress.clone(),
        opts.platform.clone().unwrap_or_else(crate::Platform::host),
    ));
    let holds = Arc::new(std::sync::Mutex::new(Vec::new()));
    let holds2 = holds.clone();
    let (dir, target) = (opts.dir.clone(), opts.target.clone());
    let solve_opts = {
        let opts = opts.clone();
        move |contexts: HashMap<String, PathBuf>| SolveOptions {
            contexts,
            secrets: opts.secrets.clone(),
            ssh: opts.ssh.clone(),
            no_cache: opts.no_cache,
            source_date_epoch: opts.source_date_epoch,
            compression: opts.compression,
            progress: opts.progress.clone(),
            cancel: opts.cancel.clone(),
            build_id: build_id(&opts.dir, &opts.dir.join("Earthfile"), Some(&opts.target)),
            ca_bundle: opts.ca_bundle.clone(),
            step_slots: opts.step_slots.clone(),
            client: opts.client.clone(),
        }
    };
    // Folders lowering asks for (LOCALLY snapshots, artifact contexts) live until the
    // build ends.
    let scratch = Arc::new(Mutex::new(Vec::new()));
    let mut host = LowerHost {
        root: root.to_path_buf(),
        store: store.clone(),
        executor: executor.clone(),
        solve_opts: solve_opts.clone(),
        handle: handle.clone(),
        solver: None,
        scratch: scratch.clone(),
        progress: opts.progress.clone(),
        cancel: opts.cancel.clone(),
        // A satellite's sink places outputs at the build's end only.
        write_early: opts.output == EarthOutput::Normal
            && !opts.no_output
            && opts.local_sink.is_none(),
    };
    let (plan, lowering_solver) = tokio::task::spawn_blocking(move || {
        let plan = lower(
            &dir,
            &target,
            &lower_opts,
            &mut |r, platform| {
                let resolved = bases.resolve_blocking(&handle, r, platform)?;
                let hold = store2.hold_image(&resolved.manifest)?;
                holds2.lock().expect("image holds").push(hold);
                Ok(resolved)
            },
            &mut host,
        );
        plan.map(|p| (p, host.solver.take()))
    })
    .await
    .map_err(|e| BuildError::Invalid(format!("lowering panicked: {e}")))??;
    // The solver lowering used, when it has every context: what it solved (a WAIT
    // block's BUILDs, `RUN --no-cache` steps included) is not solved again.
    let solver = match lowering_solver {
        Some((contexts, s)) if contexts == plan.contexts => s,
        other => {
            if let Some((_, s)) = other {
                s.save_sums();
            }
            Solver::new(
                root,
                store.clone(),
                executor,
                solve_opts(plan.contexts.clone()),
            )?
        }
    };
    let result = run_plan(root, &solver, &store, &plan, &opts).await;
    solver.save_sums();
    drop(scratch);
    result.map_err(|e| match e {
        // The solver knows the path only; the plan knows where it was written.
        BuildError::SourceNotFound(path) => match plan.sources.iter().find(|(p, _)| *p == path) {
            Some((_, err)) => BuildError::Source(err.clone()),
            None => BuildError::SourceNotFound(path),
        },
        // Earthly's errors name the Earthfile line of the failed RUN.
        BuildError::StepFailed {
            step,
            command,
            code,
            output,
        } => {
            let step = match plan.step_at(&step) {
                Some(at) => format!("{}:{}:{}: {step}", at.file, at.line, at.column),
                None => step,
            };
            BuildError::StepFailed {
                step,
                command,
                code,
                output,
            }
        }
        e => e,
    })
}

/// Solve what `plan` must output, then write it.
async fn run_plan(
    root: &Path,
    solver: &Arc<Solver>,
    store: &Store,
    plan: &Plan,
    opts: &EarthBuildOptions,
) -> Result<EarthResult> {
    let invoked = &plan.targets[plan.invoked];
    let mut out = EarthResult {
        targets: plan.targets.len(),
        ..EarthResult::default()
    };
    if let EarthOutput::Artifact { path, dest } = &opts.output {
        let layers = layers_of(solver, &invoked.artifact).await?;
        if let Some(sink) = opts.local_sink.clone() {
            // Staged as an `AS LOCAL` output, for the sink to place.
            let tmp = Staging(owned_scratch(root)?);
            let (solver, path, dest) = (solver.clone(), path.clone(), dest.clone());
            out.artifacts.push(dest.clone());
            tokio::task::spawn_blocking(move || {
                let output = stage_artifact(&solver, &layers, tmp.path(), &path, &dest)?;
                sink.local(&output, tmp.path())
            })
            .await
            .map_err(|e| BuildError::Invalid(e.to_string()))??;
            return Ok(out);
        }
        let tmp = local_staging(dest)?;
        let r = export_artifact(solver, &layers, tmp.path(), path, dest);
        out.artifacts.push(dest.clone());
        return r.map(|_| out);
    }
    let connected = match opts.output {
        EarthOutput::Image => vec![plan.invoked],
        _ => plan.connected(),
    };
    let mut images: Vec<&SavedImage> = Vec::new();
    let mut locals: Vec<&SavedLocal> = Vec::new();
    let mut states: Vec<State> = Vec::new();
    for &t in &connected {
        let target = &plan.targets[t];
        states.push(target.state.clone());
        for img in &target.images {
            if img.names.is_empty() || (img.push_only && !opts.push) {
                continue;
            }
            states.push(img.state.clone());
            images.push(img);
        }
        if opts.output == EarthOutput::Normal {
            for l in target.locals.iter().filter(|l| l.early && !opts.no_output) {
                out.artifacts.push(PathBuf::from(&l.dest));
            }
            for l in target.locals.iter().filter(|l| !l.early) {
                states.push(l.state.clone());
                locals.push(l);
            }
        }
    }
    // Everything at once: the solver runs independent states in parallel and each
    // vertex once.
    futures_util::future::try_join_all(states.iter().map(|s| solver.solve(s))).await?;
    if opts.push {
        // `RUN --push` steps only once everything else succeeded, as Earthly.
        let pushes: Vec<&State> = connected
            .iter()
            .filter_map(|&t| plan.targets[t].push_state.as_ref())
            .collect();
        futures_util::future::try_join_all(pushes.into_iter().map(|s| solver.solve(s))).await?;
    }
    for img in images {
        let layers = layers_of(solver, &img.state).await?;
        let mut config = img.config.clone();
        for (h, s) in config.history.iter_mut().zip(&img.history_states) {
            if let Some(s) = s
                && solver.added_layer(s) == Some(false)
            {
                h.empty_layer = true;
            }
        }
        let keep = config.rootfs.diff_ids.len().min(layers.len());
        let converted = {
            let (store, layers, to) = (store.clone(), layers.clone(), opts.compression);
            tokio::task::spawn_blocking(move || export::convert_layers(&store, &layers, to, keep))
                .await
                .map_err(|e| BuildError::Invalid(e.to_string()))??
        };
        // A rebuild that changed nothing keeps its image and writes nothing, as
        // `berth build` does.
        let exported = match export::unchanged_image(store, &converted, &config, &img.names) {
            Some(same) => same,
            None => export::export_image(store, &converted, config, &img.names)?,
        };
        for name in &img.names {
            out.images.push(EarthImage {
                name: name.clone(),
                manifest: exported.manifest.clone(),
                image_id: exported.config.clone(),
                push: img.push,
            });
        }
    }
    if !opts.no_output {
        for l in locals {
            let layers = layers_of(solver, &l.state).await?;
            let output = LocalOutput {
                dest: l.dest.clone(),
                glob: l.glob,
                name: l.name.clone(),
            };
            let dest = PathBuf::from(&l.dest);
            let solver2 = solver.clone();
            let sink = opts.local_sink.clone();
            let root = root.to_path_buf();
            tokio::task::spawn_blocking(move || -> Result<()> {
                match sink {
                    // Staged in the build's own scratch, never beside a path of this host.
                    Some(sink) => {
                        let tmp = Staging(owned_scratch(&root)?);
                        solver2.export_dir(&layers, tmp.path())?;
                        sink.local(&output, tmp.path())
                    }
                    None => {
                        let tmp = local_staging(&dest)?;
                        solver2.export_dir(&layers, tmp.path())?;
                        place_local_output(tmp.path(), &output)
                    }
                }
            })
            .await
            .map_err(|e| BuildError::Invalid(e.to_string()))??;
            out.artifacts.push(PathBuf::from(&l.dest));
        }
    }
    Ok(out)
}

/// What lowering asks of this machine ([`Host`]): answers and artifacts from a solver
/// over the local sources known so far (made anew when another folder joins; its steps
/// are cache hits for the main solve), `LOCALLY` commands run here, and folders kept
/// until the build ends.
struct LowerHost<F> {
    root: PathBuf,
    store: Store,
    executor: Arc<dyn berth_exec::Executor>,
    solve_opts: F,
    handle: tokio::runtime::Handle,
    solver: Option<(HashMap<String, PathBuf>, Arc<Solver>)>,
    scratch: Arc<Mutex<Vec<Staging>>>,
    progress: Arc<dyn Progress>,
    cancel: Cancel,
    /// `AS LOCAL` outputs may be written during lowering (the end of a `WAIT`).
    write_early: bool,
}

impl<F: Fn(HashMap<String, PathBuf>) -> SolveOptions> LowerHost<F> {
    /// The solver over `contexts` (made anew when they changed).
    fn solver(&mut self, contexts: &HashMap<String, PathBuf>) -> Result<Arc<Solver>> {
        if self.solver.as_ref().is_none_or(|(c, _)| c != contexts) {
            if let Some((_, old)) = self.solver.take() {
                old.save_sums();
            }
            let s = Solver::new(
                &self.root,
                self.store.clone(),
                self.executor.clone(),
                (self.solve_opts)(contexts.clone()),
            )?;
            self.solver = Some((contexts.clone(), s));
        }
        Ok(self.solver.as_ref().expect("made above").1.clone())
    }
}

impl<F: Fn(HashMap<String, PathBuf>) -> SolveOptions> Host for LowerHost<F> {
    fn scratch(&mut self) -> Result<PathBuf> {
        let dir = owned_scratch(&self.root)?;
        self.scratch
            .lock()
            .expect("scratch folders")
            .push(Staging(dir.clone()));
        Ok(dir)
    }

    fn export(
        &mut self,
        contexts: &HashMap<String, PathBuf>,
        state: &State,
        dest: &Path,
    ) -> Result<()> {
        let solver = self.solver(contexts)?;
        let layers = self.handle.block_on(layers_of(&solver, state))?;
        solver.export_dir(&layers, dest)
    }

    fn run_local(&mut self, run: &LocalRun) -> Result<(i32, String)> {
        run_on_host(run, &*self.progress, &self.cancel)
    }

    fn wait(
        &mut self,
        contexts: &HashMap<String, PathBuf>,
        states: &[State],
        locals: &[SavedLocal],
    ) -> Result<bool> {
        let solver = self.solver(contexts)?;
        let mut all: Vec<&State> = states.iter().collect();
        if self.write_early {
            all.extend(locals.iter().map(|l| &l.state));
        }
        self.handle.block_on(futures_util::future::try_join_all(
            all.iter().map(|s| solver.solve(s)),
        ))?;
        if !self.write_early {
            return Ok(false);
        }
        for l in locals {
            let layers = self.handle.block_on(layers_of(&solver, &l.state))?;
            let tmp = local_staging(Path::new(&l.dest))?;
            solver.export_dir(&layers, tmp.path())?;
            place_local_output(
                tmp.path(),
                &LocalOutput {
                    dest: l.dest.clone(),
                    glob: l.glob,
                    name: l.name.clone(),
                },
            )?;
        }
        Ok(true)
    }
}

impl<F> Drop for LowerHost<F> {
    fn drop(&mut self) {
        if let Some((_, s)) = self.solver.take() {
            s.save_sums();
        }
    }
}

/// A new folder under `root/tmp`, named for this process's owner token so that a
/// killed build's are swept.
fn owned_scratch(root: &Path) -> Result<PathBuf> {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let owners = root.join("owners");
    berth_snapshot::owner::register(&owners)
        .map_err(|e| BuildError::Io(format!("register in {}: {e}", owners.display())))?;
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = root
        .join("tmp")
        .join(format!("{}-earthly{n}", berth_snapshot::owner::token()));
    std::fs::create_dir_all(&dir)
        .map_err(|e| BuildError::Io(format!("create directory {}: {e}", dir.display())))?;
    Ok(dir)
}

/// Run a `LOCALLY` command here, its output shown as a step's: exit code and, when
/// asked, standard output.
fn run_on_host(run: &LocalRun, progress: &dyn Progress, cancel: &Cancel) -> Result<(i32, String)> {
    use std::io::Read;
    use std::process::Stdio;
    if cancel.is_canceled() {
        return Err(BuildError::Canceled);
    }
    let (program, args) = run
        .args
        .split_first()
        .ok_or_else(|| BuildError::Invalid("RUN needs a command".into()))?;
    progress.event(Event::Started {
        id: 0,
        name: run.name.clone(),
    });
    // A LOCALLY WORKDIR's folder, as Earthly makes it.
    std::fs::create_dir_all(&run.cwd)
        .map_err(|e| BuildError::Io(format!("create directory {}: {e}", run.cwd.display())))?;
    let start = std::time::Instant::now();
    let mut child = std::process::Command::new(program)
        .args(args)
        .envs(run.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&run.cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| BuildError::Io(format!("run {program} in {}: {e}", run.cwd.display())))?;
    let pump = |mut r: Box<dyn Read + Send>, stream: berth_exec::Stream, keep: bool| {
        let mut kept = Vec::new();
        let mut buf = [0u8; 8192];
        while let Ok(n) = r.read(&mut buf) {
            if n == 0 {
                break;
            }
            if keep {
                kept.extend_from_slice(&buf[..n]);
            }
            progress.event(Event::Log {
                id: 0,
                stream,
                data: buf[..n].to_vec(),
            });
        }
        kept
    };
    let stdout: Box<dyn Read + Send> = Box::new(child.stdout.take().expect("piped"));
    let stderr: Box<dyn Read + Send> = Box::new(child.stderr.take().expect("piped"));
    let out = std::thread::scope(|s| {
        let err = s.spawn(|| pump(stderr, berth_exec::Stream::Stderr, false));
        let out = pump(stdout, berth_exec::Stream::Stdout, run.capture);
        let _ = err.join();
        out
    });
    let status = child
        .wait()
        .map_err(|e| BuildError::Io(format!("wait for {program}: {e}")))?;
    use std::os::unix::process::ExitStatusExt;
    let code = status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
    if code == 0 || run.capture {
        progress.event(Event::Done {
            id: 0,
            name: run.name.clone(),
            elapsed: start.elapsed(),
        });
    } else {
        progress.event(Event::Failed {
            id: 0,
            name: run.name.clone(),
        });
    }
    Ok((code, String::from_utf8_lossy(&out).into_owned()))
}

async fn layers_of(solver: &Arc<Solver>, state: &State) -> Result<Vec<crate::solver::Layer>> {
    match &solver.solve(state).await?.output {
        Output::Layers(l) => Ok(l.clone()),
        Output::Dir { .. } => Err(BuildError::Invalid(
            "an Earthfile output is not a file system".into(),
        )),
    }
}

/// A temporary folder beside an output, so the result moves into place by rename;
/// removed with what is left in it when dropped.
pub struct Staging(PathBuf);

impl Staging {
    /// The folder.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A [`Staging`] folder beside `dest`.
pub fn local_staging(dest: &Path) -> Result<Staging> {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let parent = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)
        .map_err(|e| BuildError::Io(format!("create directory {}: {e}", parent.display())))?;
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = parent.join(format!(".berth-artifact-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir)
        .map_err(|e| BuildError::Io(format!("create directory {}: {e}", dir.display())))?;
    Ok(Staging(dir))
}

/// Move what a `SAVE ARTIFACT … AS LOCAL` exported into `tmp/out` to its `dest`: one
/// path replaces `dest` (or goes into it when `dest` ends in `/`), wildcard matches go
/// into the folder `dest`. `tmp` must be on `dest`'s file system (see [`local_staging`]).
pub fn place_local_output(tmp: &Path, l: &LocalOutput) -> Result<()> {
    let dest = Path::new(&l.dest);
    let out = tmp.join("out");
    // `AS LOCAL .` (and `dir/.`) is a folder too, as in Earthly.
    if l.glob || l.dest.ends_with('/') || l.dest.ends_with("/.") || l.dest == "." {
        std::fs::create_dir_all(dest)
            .map_err(|e| BuildError::Io(format!("create directory {}: {e}", dest.display())))?;
        let entries: Vec<PathBuf> = if l.glob {
            match std::fs::read_dir(&out) {
                Ok(rd) => rd.flatten().map(|e| e.path()).collect(),
                Err(_) => Vec::new(),
            }
        } else {
            vec![out.join(&l.name)]
        };
        for e in entries {
            let name = e.file_name().map(PathBuf::from).unwrap_or_default();
            replace(&e, &dest.join(name))?;
        }
        return Ok(());
    }
    let src = out.join(&l.name);
    if std::fs::symlink_metadata(&src).is_err() {
        // SAVE ARTIFACT --if-exists of a missing path.
        return Ok(());
    }
    replace(&src, dest)
}

/// Rename `src` to `dest`, replacing what is there. The old `dest` is first renamed
/// aside and removed only once `src` is in its place, so a failure (a mount point, a
/// busy folder, a full disk) leaves the old `dest` whole where it was.
fn replace(src: &Path, dest: &Path) -> Result<()> {
    let old = std::fs::symlink_metadata(dest).is_ok().then(|| {
        let name = dest.file_name().unwrap_or_default().to_string_lossy();
        dest.with_file_name(format!(".{name}.berth-old-{}", std::process::id()))
    });
    if let Some(old) = &old {
        std::fs::rename(dest, old)
            .map_err(|e| BuildError::Io(format!("replace {}: {e}", dest.display())))?;
    }
    if let Err(e) = std::fs::rename(src, dest) {
        if let Some(old) = &old {
            let _ = std::fs::rename(old, dest);
        }
        return Err(BuildError::Io(format!("write {}: {e}", dest.display())));
    }
    if let Some(old) = old {
        let r = if std::fs::symlink_metadata(&old).is_ok_and(|m| m.is_dir()) {
            std::fs::remove_dir_all(&old)
        } else {
            std::fs::remove_file(&old)
        };
        r.map_err(|e| BuildError::Io(format!("remove the replaced {}: {e}", old.display())))?;
    }
    Ok(())
}

/// `--artifact +t/path dest` for a [`LocalSink`]: the artifact file system exported
/// into `tmp/fs`, then `path` (or every match of a trailing `*`) moved into `tmp/out`,
/// as an `AS LOCAL` output for `dest` (a trailing `/` puts it into that folder).
fn stage_artifact(
    solver: &Arc<Solver>,
    layers: &[crate::solver::Layer],
    tmp: &Path,
    path: &str,
    dest: &Path,
) -> Result<LocalOutput> {
    let (fs, out) = (tmp.join("fs"), tmp.join("out"));
    for d in [&fs, &out] {
        std::fs::create_dir_all(d)
            .map_err(|e| BuildError::Io(format!("create directory {}: {e}", d.display())))?;
    }
    solver.export_dir(layers, &fs)?;
    let path = path.trim_start_matches('/');
    let dest = dest.display().to_string();
    if path == "*" || path.ends_with("/*") {
        let dir = fs.join(path.trim_end_matches('*'));
        for e in std::fs::read_dir(&dir)
            .map_err(|e| BuildError::Io(format!("read {}: {e}", dir.display())))?
            .flatten()
        {
            replace(&e.path(), &out.join(e.file_name()))?;
        }
        return Ok(LocalOutput {
            dest,
            glob: true,
            name: String::new(),
        });
    }
    let src = fs.join(path);
    if std::fs::symlink_metadata(&src).is_err() {
        return Err(BuildError::SourceNotFound(path.to_string()));
    }
    let name = Path::new(path)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    replace(&src, &out.join(&name))?;
    Ok(LocalOutput {
        dest,
        glob: false,
        name,
    })
}

/// `--artifact +t/path dest`: the artifact file system exported, then `path` (or every
/// match of a trailing `*`) moved to `dest`.
fn export_artifact(
    solver: &Arc<Solver>,
    layers: &[crate::solver::Layer],
    tmp: &Path,
    path: &str,
    dest: &Path,
) -> Result<()> {
    solver.export_dir(layers, tmp)?;
    let path = path.trim_start_matches('/');
    if path == "*" || path.ends_with("/*") {
        let dir = tmp.join(path.trim_end_matches('*'));
        std::fs::create_dir_all(dest)
            .map_err(|e| BuildError::Io(format!("create directory {}: {e}", dest.display())))?;
        for e in std::fs::read_dir(&dir)
            .map_err(|e| BuildError::Io(format!("read {}: {e}", dir.display())))?
            .flatten()
        {
            replace(&e.path(), &dest.join(e.file_name()))?;
        }
        return Ok(());
    }
    let src = tmp.join(path);
    if std::fs::symlink_metadata(&src).is_err() {
        return Err(BuildError::SourceNotFound(path.to_string()));
    }
    let dest = if dest.to_string_lossy().ends_with('/') || dest.is_dir() {
        std::fs::create_dir_all(dest)
            .map_err(|e| BuildError::Io(format!("create directory {}: {e}", dest.display())))?;
        dest.join(Path::new(path).file_name().unwrap_or_default())
    } else {
        dest.to_path_buf()
    };
    replace(&src, &dest)
}

#[cfg(test)]
mod tests {
    use super::replace;

    #[test]
    fn a_replaced_output_is_whole_before_and_after() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out");
        std::fs::create_dir_all(dest.join("sub")).unwrap();
        std::fs::write(dest.join("sub/old"), "old").unwrap();
        // A failing replace (nothing to move in) keeps the old folder where it was.
        let err = replace(&dir.path().join("missing"), &dest).unwrap_err();
        assert!(err.to_string().contains("write "), "{err}");
        assert_eq!(
            std::fs::read_to_string(dest.join("sub/old")).unwrap(),
            "old"
        );
        // A working one puts the new content in and leaves nothing aside.
        let src = dir.path().join("new");
        std::fs::create_dir(&src).unwrap();
        std::fs::write(src.join("f"), "new").unwrap();
        replace(&src, &dest).unwrap();
        assert_eq!(std::fs::read_to_string(dest.join("f")).unwrap(), "new");
        assert!(!dest.join("sub").exists());
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("out")]);
        // A file over a folder and back.
        std::fs::write(&src, "file").unwrap();
        replace(&src, &dest).unwrap();
        assert_eq!(std::fs::read_to_string(&dest).unwrap(), "file");
    }
}
