//! The solver: runs a graph of [`State`]s with the real executor and snapshotter.
//!
//! Each vertex is solved once per build however many states reach it (results are
//! shared futures keyed by vertex digest), independent vertices run concurrently (two
//! stages of a multi-stage build build at once), and every result is recorded under a
//! *cache key*: a digest of the op definition, the cache keys of its inputs and, for
//! copies out of a build context, the content checksum of exactly the files copied. A
//! later build whose key matches reuses the recorded layers without running anything.
//!
//! When a step does run, the solver compares its key's ingredients with those of the
//! same step in the last run of the same build (context, build file and target, see
//! [`SolveOptions::build_id`]) and says why it re-ran: which instruction text or
//! variable, which input step (changed, added or removed), which files, or
//! `SOURCE_DATE_EPOCH`.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use berth_exec::{Executor, Meta, Network, Stream};
use berth_oci::{Descriptor, Digest, Mount};
use berth_snapshot::{Active, DiffOptions, Snapshotter};
use berth_store::Store;
use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared, try_join_all};
use serde::{Deserialize, Serialize};

use crate::error::{BuildError, Result};
use crate::fileops::{self, CopyOptions};
use crate::image;
use crate::ir::{ExecOp, FileAction, FileOp, MountSource, NetworkMode, Op, Sharing, State};
use crate::pattern::Ignore;

/// A layer of a result: its uncompressed digest and its blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layer {
    /// sha256 of the uncompressed tar.
    pub diff_id: Digest,
    /// The blob in the content store.
    pub blob: Descriptor,
}

/// What solving a vertex gives.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Output {
    /// A file system made of layers (empty: scratch).
    Layers(Vec<Layer>),
    /// A local directory (a build context) with its ignore rules.
    Dir {
        /// The directory.
        path: PathBuf,
        /// `.dockerignore` patterns.
        exclude: Vec<String>,
    },
}

/// A solved vertex.
#[derive(Debug, Clone)]
pub struct Solved {
    /// Its cache key.
    pub key: Digest,
    /// Its result.
    pub output: Output,
}

/// Progress of a build, as events (after BuildKit's vertex status stream).
#[derive(Debug, Clone)]
pub enum Event {
    /// Step `id` started.
    Started {
        /// Step number in this build.
        id: usize,
        /// Its label.
        name: String,
    },
    /// Step `id` was taken from cache.
    Cached {
        /// Step number.
        id: usize,
        /// Its label.
        name: String,
    },
    /// Why step `id` did not come from cache.
    Reason {
        /// Step number.
        id: usize,
        /// Its label.
        name: String,
        /// Why it runs.
        reason: String,
    },
    /// Output of step `id`.
    Log {
        /// Step number.
        id: usize,
        /// stdout or stderr.
        stream: Stream,
        /// The bytes.
        data: Vec<u8>,
    },
    /// Step `id` finished.
    Done {
        /// Step number.
        id: usize,
        /// Its label.
        name: String,
        /// How long it ran.
        elapsed: Duration,
    },
    /// Step `id` failed.
    Failed {
        /// Step number.
        id: usize,
        /// Its label.
        name: String,
    },
}

/// Receives progress. One method; the solver pushes events as they happen.
pub trait Progress: Send + Sync {
    /// An event happened.
    fn event(&self, event: Event);
}

/// Discards progress.
pub struct NoProgress;

impl Progress for NoProgress {
    fn event(&self, _: Event) {}
}

/// Where a secret's value comes from.
#[derive(Debug, Clone)]
pub enum SecretSource {
    /// A file.
    File(PathBuf),
    /// An environment variable of berth's process.
    Env(String),
}

/// Cancels a build: steps not yet started fail with [`BuildError::Canceled`]; pair it
/// with [`berth_exec::Executor::cancel`] to stop the steps that run.
#[derive(Debug, Clone, Default)]
pub struct Cancel(Arc<std::sync::atomic::AtomicBool>);

impl Cancel {
    /// Cancel.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether it was canceled.
    pub fn is_canceled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// What a solver needs besides the graph.
#[derive(Clone)]
pub struct SolveOptions {
    /// Local sources by name (the build context is `context`).
    pub contexts: HashMap<String, PathBuf>,
    /// Secrets by id.
    pub secrets: HashMap<String, SecretSource>,
    /// Run every step, reuse nothing.
    pub no_cache: bool,
    /// Clamp layer timestamps (reproducible builds).
    pub source_date_epoch: Option<u64>,
    /// How new layers are compressed.
    pub compression: berth_snapshot::Compression,
    /// Progress sink.
    pub progress: Arc<dyn Progress>,
    /// Cancellation.
    pub cancel: Cancel,
    /// What identifies the build whose last run explains a cache miss (its context
    /// directory, build file and target, see [`build_id`]): the history of a step is
    /// kept under it and the step's label, so two projects sharing a root and a label
    /// are never compared.
    pub build_id: String,
}

/// The [`SolveOptions::build_id`] of a build of `target` (default: the last stage) from
/// `build_file` in `context`. Paths are made absolute, so `berth build .` and
/// `berth build /abs/path` are the same build.
pub fn build_id(context: &Path, build_file: &Path, target: Option<&str>) -> String {
    let abs = |p: &Path| {
        fs::canonicalize(p)
            .or_else(|_| std::path::absolute(p))
            .unwrap_or_else(|_| p.to_path_buf())
    };
    serde_json::json!({
        "context": abs(context),
        "file": abs(build_file),
        "target": target,
    })
    .to_string()
}

type SharedSolve = Shared<BoxFuture<'static, Result<Arc<Solved>, Arc<BuildError>>>>;

/// Solves graphs over one data root.
pub struct Solver {
    store: Store,
    snapshots: Snapshotter,
    executor: Arc<dyn Executor>,
    root: PathBuf,
    opts: SolveOptions,
    memo: Mutex<HashMap<Digest, SharedSolve>>,
    ids: Mutex<HashMap<Digest, usize>>,
    next_id: AtomicUsize,
    /// Content hashes of context files, by context directory (see `save_sums`).
    sums: Mutex<HashMap<PathBuf, Arc<fileops::SumCache>>>,
    /// Shared prune lock, held while this solver lives.
    _lock: fs::File,
}

static SEQ: AtomicU64 = AtomicU64::new(0);

fn unique(prefix: &str) -> String {
    format!(
        "{}-{prefix}{}",
        berth_snapshot::owner::token(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

fn io_err(op: &str, path: &Path, e: impl std::fmt::Display) -> BuildError {
    BuildError::Io(format!("{op} {}: {e}", path.display()))
}

/// The record kept for each cache key.
#[derive(Serialize, Deserialize)]
struct Record {
    layers: Vec<Layer>,
}

/// What a step's key was made of, kept per build and step label to explain the next
/// miss.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
struct Ingredients {
    op: String,
    /// `(label, cache key)` of each input, in the op's order.
    inputs: Vec<(String, String)>,
    files: BTreeMap<String, String>,
    #[serde(default)]
    source_date_epoch: Option<u64>,
}

/// A solve error shared by every vertex that waited on it, back as an owned error of
/// the same kind where the kind matters to callers (a cancel stays [`BuildError::Canceled`],
/// a failed command keeps its exit code and output).
fn unshare(e: Arc<BuildError>) -> BuildError {
    match Arc::try_unwrap(e) {
        Ok(e) => e,
        Err(e) => match &*e {
            BuildError::Canceled => BuildError::Canceled,
            BuildError::StepFailed {
                step,
                command,
                code,
                output,
            } => BuildError::StepFailed {
                step: step.clone(),
                command: command.clone(),
                code: *code,
                output: output.clone(),
            },
            BuildError::SourceNotFound(s) => BuildError::SourceNotFound(s.clone()),
            BuildError::MissingSecret(s) => BuildError::MissingSecret(s.clone()),
            BuildError::Image(s) => BuildError::Image(s.clone()),
            BuildError::Io(s) => BuildError::Io(s.clone()),
            other => BuildError::Invalid(other.to_string()),
        },
    }
}

impl Solver {
    /// A solver over the data root `root` (store, snapshots, cache, exec state below it).
    pub fn new(
        root: &Path,
        store: Store,
        executor: Arc<dyn Executor>,
        opts: SolveOptions,
    ) -> Result<Arc<Solver>> {
        let lock = store.lock_root(false)?;
        let owners = root.join("owners");
        berth_snapshot::owner::register(&owners).map_err(|e| io_err("register in", &owners, e))?;
        // Whatever a killed build left mounted goes first, then its snapshots.
        berth_exec::cleanup_stale_mounts(&root.join("tmp"), &owners);
        crate::secrets::sweep(root, &owners);
        let snapshots = Snapshotter::open(root.join("snapshots"))?;
        snapshots.clean_active();
        if let Ok(entries) = fs::read_dir(root.join("tmp")) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if berth_snapshot::owner::is_gone(&owners, &name) {
                    let _ = fs::remove_dir_all(e.path());
                }
            }
        }
        // Step history was once kept per label alone; it is now per build (`history_path`).
        let _ = fs::remove_dir_all(root.join("cache/steps"));
        for d in ["cache/records", "cache/history", "cache/mounts", "tmp"] {
            let p = root.join(d);
            fs::create_dir_all(&p).map_err(|e| io_err("create directory", &p, e))?;
        }
        Ok(Arc::new(Solver {
            store,
            snapshots,
            executor,
            root: root.to_path_buf(),
            opts,
            memo: Mutex::new(HashMap::new()),
            ids: Mutex::new(HashMap::new()),
            next_id: AtomicUsize::new(1),
            sums: Mutex::new(HashMap::new()),
            _lock: lock,
        }))
    }

    /// Solve `state` and everything it needs.
    pub async fn solve(self: &Arc<Self>, state: &State) -> Result<Arc<Solved>> {
        self.solve_shared(state).await.map_err(unshare)
    }

    fn solve_shared(self: &Arc<Self>, state: &State) -> SharedSolve {
        let mut memo = self.memo.lock().expect("memo");
        if let Some(f) = memo.get(state.digest()) {
            return f.clone();
        }
        // The future holds the solver weakly. The memo, which the solver owns, keeps
        // futures that never finish when a build fails in one branch while another
        // still runs, or when its caller stops waiting; a strong handle in them made a
        // cycle that kept the solver, its memo and its prune lock alive for the rest of
        // the process.
        let this = Arc::downgrade(self);
        let st = state.clone();
        let fut = async move { Self::solve_vertex(this, st).await.map_err(Arc::new) }
            .boxed()
            .shared();
        memo.insert(state.digest().clone(), fut.clone());
        fut
    }

    fn step_id(&self, state: &State) -> usize {
        let mut ids = self.ids.lock().expect("ids");
        *ids.entry(state.digest().clone())
            .or_insert_with(|| self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    /// Solve the inputs of `state`, then `state`. The solver is upgraded only to start
    /// work, never held across an await (see `solve_shared`). It is always there: a
    /// caller of [`Solver::solve`] holds it while anything polls these futures.
    async fn solve_vertex(this: Weak<Self>, state: State) -> Result<Arc<Solved>> {
        let gone = || BuildError::Invalid("the solver was dropped during its build".into());
        let inputs = {
            let solver = this.upgrade().ok_or_else(gone)?;
            try_join_all(state.vertex().inputs.iter().map(|i| solver.solve_shared(i)))
        };
        let inputs: Vec<Arc<Solved>> = inputs.await.map_err(unshare)?;
        let solver = this.upgrade().ok_or_else(gone)?;
        tokio::task::spawn_blocking(move || solver.solve_blocking(&state, &inputs))
            .await
            .map_err(|e| BuildError::Invalid(format!("build step panicked: {e}")))?
            .map(Arc::new)
    }

    fn visible(state: &State) -> bool {
        !matches!(state.vertex().op, Op::Scratch)
    }

    fn solve_blocking(&self, state: &State, inputs: &[Arc<Solved>]) -> Result<Solved> {
        if self.opts.cancel.is_canceled() {
            return Err(BuildError::Canceled);
        }
        let v = state.vertex();
        let (key, ingredients) = self.cache_key(state, inputs)?;
        let visible = Self::visible(state);
        let id = if visible { self.step_id(state) } else { 0 };
        let progress = &self.opts.progress;
        // Sources are not cached results; they are cheap to (re)load.
        let cacheable = matches!(v.op, Op::Exec(_) | Op::File(_));
        if cacheable
            && !v.ignore_cache
            && !self.opts.no_cache
            && let Some(layers) = self.lookup(&key)?
        {
            progress.event(Event::Cached {
                id,
                name: v.name.clone(),
            });
            self.remember(&v.name, &key, &ingredients);
            return Ok(Solved {
                key,
                output: Output::Layers(layers),
            });
        }
        if visible {
            progress.event(Event::Started {
                id,
                name: v.name.clone(),
            });
        }
        if cacheable {
            let reason = if v.ignore_cache || self.opts.no_cache {
                "--no-cache".to_string()
            } else {
                self.explain(&v.name, &ingredients)
            };
            progress.event(Event::Reason {
                id,
                name: v.name.clone(),
                reason,
            });
        }
        let start = Instant::now();
        let result = match &v.op {
            Op::Scratch => Ok(Output::Layers(Vec::new())),
            Op::Image(src) => self.load_image(&src.manifest),
            Op::Local(l) => {
                let path = self.opts.contexts.get(&l.name).cloned().ok_or_else(|| {
                    BuildError::Invalid(format!(
                        "the build uses local source {:?}, which was not given",
                        l.name
                    ))
                })?;
                Ok(Output::Dir {
                    path,
                    exclude: l.exclude.clone(),
                })
            }
            Op::Exec(e) => self.run_exec(state, id, e, inputs),
            Op::File(f) => self.run_file(f, inputs),
        };
        let output = match result {
            Ok(o) => o,
            Err(e) => {
                if visible {
                    progress.event(Event::Failed {
                        id,
                        name: v.name.clone(),
                    });
                }
                return Err(e);
            }
        };
        if cacheable && let Output::Layers(layers) = &output {
            let rec = serde_json::to_vec(&Record {
                layers: layers.clone(),
            })
            .expect("json");
            let path = self.root.join("cache/records").join(key.hex());
            write_atomic(&path, &rec)?;
            self.remember(&v.name, &key, &ingredients);
        }
        if visible {
            progress.event(Event::Done {
                id,
                name: v.name.clone(),
                elapsed: start.elapsed(),
            });
        }
        Ok(Solved { key, output })
    }

    fn cache_key(&self, state: &State, inputs: &[Arc<Solved>]) -> Result<(Digest, Ingredients)> {
        let v = state.vertex();
        let op = serde_json::to_string(&v.op).expect("ops serialise");
        let mut ing = Ingredients {
            op,
            inputs: v
                .inputs
                .iter()
                .zip(inputs)
                .map(|(s, r)| (s.vertex().name.clone(), r.key.to_string()))
                .collect(),
            files: BTreeMap::new(),
            // Only what a step makes has timestamps to clamp. A source's key without
            // it keeps "input FROM … changed" out of the explanation of a new epoch.
            source_date_epoch: self
                .opts
                .source_date_epoch
                .filter(|_| matches!(v.op, Op::Exec(_) | Op::File(_))),
        };
        // Content of the context files a step reads.
        let mut content = Vec::new();
        let sources: Vec<(usize, Vec<String>)> = match &v.op {
            Op::File(f) => f
                .actions
                .iter()
                .filter_map(|a| match a {
                    FileAction::Copy { from, sources, .. } => Some((*from, sources.clone())),
                    _ => None,
                })
                .collect(),
            Op::Exec(e) => e
                .mounts
                .iter()
                .filter_map(|m| match &m.source {
                    MountSource::Input { input, path, .. } => Some((*input, vec![path.clone()])),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        for (input, srcs) in sources {
            if let Some(Output::Dir { path, exclude }) = inputs.get(input).map(|s| &s.output) {
                let ignore = Ignore::new(exclude.iter().map(String::as_str));
                let matched = fileops::resolve_sources(path, &srcs, &ignore)?;
                let cache = self.sum_cache(path);
                let (sum, files) = fileops::checksum_cached(path, &matched, &ignore, Some(&cache))?;
                content.push(sum.to_string());
                ing.files.extend(files);
            }
        }
        #[derive(Serialize)]
        struct KeyDoc<'a> {
            op: &'a str,
            inputs: Vec<&'a str>,
            content: &'a [String],
            /// Layer timestamps depend on it, so results made under another do not fit.
            source_date_epoch: Option<u64>,
        }
        let doc = KeyDoc {
            op: &ing.op,
            inputs: ing.inputs.iter().map(|(_, k)| k.as_str()).collect(),
            content: &content,
            source_date_epoch: ing.source_date_epoch,
        };
        let key = Digest::sha256(&serde_json::to_vec(&doc).expect("json"));
        Ok((key, ing))
    }

    fn sums_path(&self, context: &Path) -> PathBuf {
        let id = Digest::sha256(context.to_string_lossy().as_bytes());
        self.root.join("cache/sums").join(id.hex())
    }

    /// The content-hash cache of a context directory, loaded on first use.
    fn sum_cache(&self, context: &Path) -> Arc<fileops::SumCache> {
        let mut all = self.sums.lock().expect("sums");
        all.entry(context.to_path_buf())
            .or_insert_with(|| {
                let map = fs::read(self.sums_path(context))
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok())
                    .unwrap_or_default();
                Arc::new(std::sync::Mutex::new(map))
            })
            .clone()
    }

    /// Keep the content hashes computed in this build for the next one, so unchanged
    /// context files are not read again.
    pub fn save_sums(&self) {
        let all = self.sums.lock().expect("sums");
        for (context, cache) in all.iter() {
            let path = self.sums_path(context);
            if let Some(dir) = path.parent() {
                let _ = fs::create_dir_all(dir);
            }
            let map = cache.lock().expect("sums");
            if let Ok(bytes) = serde_json::to_vec(&*map) {
                let _ = write_atomic(&path, &bytes);
            }
        }
    }

    fn lookup(&self, key: &Digest) -> Result<Option<Vec<Layer>>> {
        let path = self.root.join("cache/records").join(key.hex());
        let Ok(bytes) = fs::read(&path) else {
            return Ok(None);
        };
        let Ok(rec) = serde_json::from_slice::<Record>(&bytes) else {
            return Ok(None);
        };
        // The record's mtime is its last use, for `berth prune`.
        if let Ok(f) = fs::File::options().write(true).open(&path) {
            let _ = f.set_modified(std::time::SystemTime::now());
        }
        for l in &rec.layers {
            if self.store.blob_size(&l.blob.digest)?.is_none() {
                return Ok(None);
            }
        }
        Ok(Some(rec.layers))
    }

    /// Where the ingredients of step `name` of this build are kept:
    /// `cache/history/<build>/<step>`, both hashed.
    fn history_path(&self, name: &str) -> PathBuf {
        self.root
            .join("cache/history")
            .join(Digest::sha256(self.opts.build_id.as_bytes()).hex())
            .join(Digest::sha256(name.as_bytes()).hex())
    }

    /// Keep `ing` as step `name`'s history, with the cache key it made (`key`), which
    /// `berth prune` reads to drop the history of the records it removes.
    fn remember(&self, name: &str, key: &Digest, ing: &Ingredients) {
        #[derive(Serialize)]
        struct Entry<'a> {
            key: &'a Digest,
            #[serde(flatten)]
            ingredients: &'a Ingredients,
        }
        let path = self.history_path(name);
        if let Some(dir) = path.parent() {
            let _ = fs::create_dir_all(dir);
        }
        let entry = Entry {
            key,
            ingredients: ing,
        };
        if let Ok(bytes) = serde_json::to_vec(&entry) {
            let _ = write_atomic(&path, &bytes);
        }
    }

    /// Why a step runs: compare with what its key was made of in this build's last run.
    fn explain(&self, name: &str, now: &Ingredients) -> String {
        match fs::read(self.history_path(name))
            .ok()
            .and_then(|b| serde_json::from_slice::<Ingredients>(&b).ok())
        {
            Some(before) => explain_change(&before, now),
            None => "first build of this step".into(),
        }
    }

    fn load_image(&self, manifest: &Digest) -> Result<Output> {
        let descs = image::layers_of(&self.store, manifest)?;
        let cfg = image::resolve_config_diff_ids(&self.store, manifest)?;
        let layers: Vec<Layer> = descs
            .into_iter()
            .zip(cfg)
            .map(|(blob, diff_id)| Layer { diff_id, blob })
            .collect();
        Ok(Output::Layers(layers))
    }

    /// Whether the step that made `state` added a layer (`None` if it was not solved).
    pub fn added_layer(&self, state: &State) -> Option<bool> {
        let memo = self.memo.lock().expect("memo");
        let own = memo.get(state.digest())?.peek()?.as_ref().ok()?.clone();
        let input = memo
            .get(state.vertex().inputs.first()?.digest())?
            .peek()?
            .as_ref()
            .ok()?
            .clone();
        match (&own.output, &input.output) {
            (Output::Layers(a), Output::Layers(b)) => Some(a.len() > b.len()),
            _ => None,
        }
    }

    /// Copy the file system of `layers` into the directory `dest` (`--output type=local`).
    pub fn export_dir(&self, layers: &[Layer], dest: &Path) -> Result<()> {
        fs::create_dir_all(dest).map_err(|e| io_err("create directory", dest, e))?;
        let view = self.view(layers)?;
        let matched = [fileops::Matched { rel: String::new() }];
        fileops::copy(
            &view.dir,
            &matched,
            &Ignore::default(),
            &Ignore::default(),
            dest,
            "/",
            CopyOptions {
                keep_owner: true,
                ..CopyOptions::default()
            },
        )
    }

    /// Make sure the snapshot chain of `layers` is unpacked; returns its chain ID.
    fn ensure_chain(&self, layers: &[Layer]) -> Result<Option<Digest>> {
        let mut parent: Option<Digest> = None;
        for l in layers {
            let chain = berth_snapshot::chain_id(parent.as_ref(), &l.diff_id);
            if !self.snapshots.exists(&chain) {
                let (file, _) = self.store.open_blob(&l.blob.digest)?.ok_or_else(|| {
                    BuildError::Image(format!("layer {} is missing from the store", l.blob.digest))
                })?;
                let compression = berth_snapshot::Compression::of_media_type(&l.blob.media_type)
                    .ok_or_else(|| {
                        BuildError::Image(format!(
                            "layer {} has media type {}, which berth cannot unpack",
                            l.blob.digest, l.blob.media_type
                        ))
                    })?;
                if compression != berth_snapshot::Compression::Uncompressed {
                    // Decompress on a thread of its own, piping into the unpacker: the
                    // two halves (inflate; creating files) overlap on two cores.
                    let (pipe_r, mut pipe_w) =
                        std::io::pipe().map_err(|e| io_err("create pipe", &self.root, e))?;
                    let inflater = std::thread::spawn(move || {
                        std::io::copy(&mut compression.reader(file)?, &mut pipe_w)
                    });
                    let reader = std::io::BufReader::with_capacity(1 << 20, pipe_r);
                    let applied = self.snapshots.apply(
                        parent.as_ref(),
                        &l.diff_id,
                        berth_snapshot::Cancelable::new(reader, || self.opts.cancel.is_canceled()),
                    );
                    let inflated = inflater
                        .join()
                        .map_err(|_| BuildError::Invalid("layer decompression panicked".into()))?;
                    applied?;
                    match inflated {
                        // A hint for loads into Docker, which take layers uncompressed.
                        Ok(size) => self.store.set_uncompressed(
                            &l.blob.digest,
                            &berth_store::Uncompressed {
                                diff_id: l.diff_id.clone(),
                                size,
                            },
                        ),
                        // Another build unpacked the same chain first: nothing was read.
                        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
                        Err(e) => {
                            return Err(BuildError::Image(format!("layer {}: {e}", l.blob.digest)));
                        }
                    }
                } else {
                    let reader = std::io::BufReader::with_capacity(1 << 20, file);
                    let reader =
                        berth_snapshot::Cancelable::new(reader, || self.opts.cancel.is_canceled());
                    self.snapshots.apply(parent.as_ref(), &l.diff_id, reader)?;
                }
            }
            parent = Some(chain);
        }
        Ok(parent)
    }

    fn prepare(&self, layers: &[Layer]) -> Result<Active> {
        let chain = self.ensure_chain(layers)?;
        Ok(self.snapshots.prepare(&unique("s"), chain.as_ref())?)
    }

    /// Diff an active snapshot into a layer on top of `below`; an empty diff adds none.
    fn commit(&self, active: Active, below: &[Layer]) -> Result<Output> {
        let reference = unique("layer");
        let mut w = self
            .store
            .writer(&reference, berth_oci::Algorithm::Sha256)?;
        let opts = DiffOptions {
            source_date_epoch: self.opts.source_date_epoch,
            gzip_level: None,
            compression: self.opts.compression,
        };
        let info = match berth_snapshot::diff(&active.upper, &mut w, &opts) {
            Ok(i) => i,
            Err(e) => {
                drop(w);
                let _ = self.store.abort(&reference);
                let _ = self.snapshots.remove(active);
                return Err(e.into());
            }
        };
        if info.empty {
            drop(w);
            let _ = self.store.abort(&reference);
            self.snapshots.remove(active)?;
            return Ok(Output::Layers(below.to_vec()));
        }
        w.commit(Some(&info.digest), Some(info.size))?;
        self.store.set_uncompressed(
            &info.digest,
            &berth_store::Uncompressed {
                diff_id: info.diff_id.clone(),
                size: info.uncompressed_size,
            },
        );
        self.snapshots.commit(active, &info.diff_id)?;
        let mut layers = below.to_vec();
        layers.push(Layer {
            diff_id: info.diff_id,
            blob: Descriptor {
                media_type: info.media_type.to_string(),
                digest: info.digest,
                size: info.size,
                artifact_type: None,
                annotations: None,
                platform: None,
            },
        });
        Ok(Output::Layers(layers))
    }

    /// Mount a throw-away view of `layers` at a fresh directory.
    fn view(&self, layers: &[Layer]) -> Result<View> {
        let active = self.prepare(layers)?;
        let dir = self.root.join("tmp").join(unique("view"));
        fs::create_dir_all(&dir).map_err(|e| io_err("create directory", &dir, e))?;
        let guard = berth_exec::mount_rootfs(&active.mounts(), &dir)?;
        Ok(View {
            dir,
            guard: Some(guard),
            active: Some(active),
            snapshots: self.snapshots.clone(),
        })
    }

    fn source_root(&self, input: &Solved) -> Result<(PathBuf, Ignore, Option<View>, bool)> {
        match &input.output {
            Output::Dir { path, exclude } => Ok((
                path.clone(),
                Ignore::new(exclude.iter().map(String::as_str)),
                None,
                false,
            )),
            Output::Layers(layers) => {
                let view = self.view(layers)?;
                Ok((view.dir.clone(), Ignore::default(), Some(view), true))
            }
        }
    }

    fn run_file(&self, op: &FileOp, inputs: &[Arc<Solved>]) -> Result<Output> {
        let Output::Layers(below) = &inputs[0].output else {
            return Err(BuildError::Invalid(
                "file operations need a file system, not a directory".into(),
            ));
        };
        let active = self.prepare(below)?;
        let target = self.root.join("tmp").join(unique("mnt"));
        fs::create_dir_all(&target).map_err(|e| io_err("create directory", &target, e))?;
        let result = (|| {
            let guard = berth_exec::mount_rootfs(&active.mounts(), &target)?;
            for action in &op.actions {
                self.file_action(action, &op.cwd, &target, &active.lowers, inputs)?;
            }
            guard.unmount()?;
            Ok::<_, BuildError>(())
        })();
        let _ = fs::remove_dir(&target);
        if let Err(e) = result {
            let _ = self.snapshots.remove(active);
            return Err(e);
        }
        self.commit(active, below)
    }

    fn file_action(
        &self,
        action: &FileAction,
        cwd: &str,
        target: &Path,
        lowers: &[PathBuf],
        inputs: &[Arc<Solved>],
    ) -> Result<()> {
        let abs = |p: &str| {
            if p.starts_with('/') {
                p.to_string()
            } else {
                format!("{}/{p}", cwd.trim_end_matches('/'))
            }
        };
        let owner = |c: &Option<String>| c.as_deref().map(|u| lookup_user(lowers, u)).transpose();
        match action {
            FileAction::Copy {
                from,
                sources,
                dest,
                chown,
                chmod,
                extract_archives,
                exclude,
            } => {
                let input = inputs.get(*from).ok_or_else(|| {
                    BuildError::Invalid(format!("copy from missing input {from}"))
                })?;
                let (root, ignore, _view, from_stage) = self.source_root(input)?;
                let exclude = Ignore::new(exclude.iter().map(String::as_str));
                let matched = fileops::resolve_sources(&root, sources, &ignore)?;
                let dest = if dest.ends_with('/') {
                    format!("{}/", abs(dest).trim_end_matches('/'))
                } else {
                    abs(dest)
                };
                let chown = owner(chown)?;
                fileops::copy(
                    &root,
                    &matched,
                    &ignore,
                    &exclude,
                    target,
                    &dest,
                    CopyOptions {
                        chown,
                        chmod: *chmod,
                        keep_owner: from_stage,
                        // Only archives from the build context are unpacked, as in Docker.
                        extract_archives: *extract_archives && !from_stage,
                    },
                )
            }
            FileAction::Mkdir { path, chown } => {
                fileops::mkdir_all(target, &abs(path), owner(chown)?).map(|_| ())
            }
            FileAction::Write {
                path,
                data,
                mode,
                chown,
            } => {
                let chown = owner(chown)?;
                let p = abs(path);
                let parent = Path::new(&p)
                    .parent()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "/".into());
                let dir = fileops::mkdir_all(target, &parent, chown)?;
                let file = dir.join(Path::new(&p).file_name().unwrap_or_default());
                // Whatever stands there is replaced, a symlink included: writing through
                // it could reach outside the image.
                match fs::symlink_metadata(&file) {
                    Ok(m) if m.is_dir() => {
                        fs::remove_dir_all(&file).map_err(|e| io_err("replace", &file, e))?
                    }
                    Ok(_) => fs::remove_file(&file).map_err(|e| io_err("replace", &file, e))?,
                    Err(_) => {}
                }
                fs::write(&file, data).map_err(|e| io_err("write", &file, e))?;
                use std::os::unix::fs::PermissionsExt;
                fs::set_permissions(&file, fs::Permissions::from_mode(*mode))
                    .map_err(|e| io_err("chmod", &file, e))?;
                let (u, g) = chown.unwrap_or((0, 0));
                std::os::unix::fs::lchown(&file, Some(u), Some(g))
                    .map_err(|e| io_err("chown", &file, e))
            }
        }
    }

    fn run_exec(
        &self,
        state: &State,
        id: usize,
        op: &ExecOp,
        inputs: &[Arc<Solved>],
    ) -> Result<Output> {
        let Output::Layers(below) = &inputs[0].output else {
            return Err(BuildError::Invalid(
                "RUN needs a file system, not a directory".into(),
            ));
        };
        let active = self.prepare(below)?;
        let mut holds = Holds::default();
        let result = self.exec_in(state, id, op, inputs, &active, &mut holds);
        drop(holds);
        match result {
            Ok(()) => self.commit(active, below),
            Err(e) => {
                let _ = self.snapshots.remove(active);
                Err(e)
            }
        }
    }

    fn exec_in(
        &self,
        state: &State,
        id: usize,
        op: &ExecOp,
        inputs: &[Arc<Solved>],
        active: &Active,
        holds: &mut Holds,
    ) -> Result<()> {
        let (uid, gid) = lookup_user(&active.lowers, &op.user)?;
        let mut env = op.env.clone();
        env.extend(op.proxy_env.iter().cloned());
        let mut mounts = Vec::new();
        for m in &op.mounts {
            let mut mount = Mount::default();
            mount.set_destination(PathBuf::from(&m.target));
            match &m.source {
                MountSource::Cache {
                    id,
                    sharing,
                    uid,
                    gid,
                    mode,
                } => {
                    let dir = self.cache_mount_dir(id, *sharing, holds, (*uid, *gid, *mode))?;
                    mount.set_typ(Some("bind".into()));
                    mount.set_source(Some(dir));
                    mount.set_options(Some(vec!["rbind".into(), "rw".into()]));
                }
                MountSource::Secret {
                    id,
                    env: as_env,
                    required,
                } => {
                    let value = match self.opts.secrets.get(id) {
                        Some(SecretSource::File(p)) => {
                            fs::read(p).map_err(|e| io_err("read secret", p, e))?
                        }
                        Some(SecretSource::Env(var)) => std::env::var(var)
                            .map_err(|_| {
                                BuildError::Invalid(format!(
                                    "secret {id:?}: environment variable {var} is not set"
                                ))
                            })?
                            .into_bytes(),
                        None if *required => return Err(BuildError::MissingSecret(id.clone())),
                        None => continue,
                    };
                    if let Some(var) = as_env {
                        env.push(format!("{var}={}", String::from_utf8_lossy(&value)));
                        continue;
                    }
                    // Secrets live in memory (/dev/shm is a tmpfs), in a directory only
                    // root can enter, and only for the step.
                    let dir = crate::secrets::stage_dir(&self.root, &unique("s"))?;
                    let file = dir.join("value");
                    fs::write(&file, &value).map_err(|e| io_err("write secret", &file, e))?;
                    use std::os::unix::fs::PermissionsExt;
                    let _ = fs::set_permissions(&file, fs::Permissions::from_mode(0o400));
                    let _ = std::os::unix::fs::chown(&file, Some(uid), Some(gid));
                    holds.dirs.push(dir);
                    mount.set_typ(Some("bind".into()));
                    mount.set_source(Some(file));
                    mount.set_options(Some(vec!["rbind".into(), "ro".into()]));
                }
                MountSource::Input { input, path, rw } => {
                    let solved = inputs.get(*input).ok_or_else(|| {
                        BuildError::Invalid(format!("mount of missing input {input}"))
                    })?;
                    let (root, ignore, view, _) = self.source_root(solved)?;
                    let mut src = fileops::resolve_in_root(&root, path)?;
                    let from_context = view.is_none();
                    if let Some(v) = view {
                        holds.views.push(v);
                    }
                    // A mount of the build context is an overlay: files .dockerignore
                    // excludes are hidden by whiteouts in its upper directory (the step
                    // must not read what its cache key does not cover), and writes to a
                    // writable mount are thrown away, never reaching the user's files.
                    let hide = from_context && !ignore.patterns().is_empty();
                    if from_context && src.is_dir() && (*rw || hide) {
                        let scratch = self.root.join("tmp").join(unique("ctxmnt"));
                        let (upper, work, at) = (
                            scratch.join("upper"),
                            scratch.join("work"),
                            scratch.join("mnt"),
                        );
                        for d in [&upper, &work, &at] {
                            fs::create_dir_all(d).map_err(|e| io_err("create directory", d, e))?;
                        }
                        holds.dirs.push(scratch.clone());
                        let rel = src
                            .strip_prefix(&root)
                            .unwrap_or(Path::new(""))
                            .to_string_lossy()
                            .into_owned();
                        fileops::whiteout_ignored(&src, &rel, &ignore, &upper)?;
                        let plan = berth_snapshot::overlay_mount(&[src.clone()], &upper, &work);
                        holds.mounts.push(berth_exec::mount_rootfs(&[plan], &at)?);
                        src = at;
                    }
                    mount.set_typ(Some("bind".into()));
                    mount.set_source(Some(src));
                    mount.set_options(Some(vec![
                        "rbind".into(),
                        if *rw { "rw".into() } else { "ro".into() },
                    ]));
                }
                MountSource::Tmpfs { size } => {
                    mount.set_typ(Some("tmpfs".into()));
                    mount.set_source(Some(PathBuf::from("tmpfs")));
                    let mut opts = vec!["nosuid".into(), "nodev".into(), "mode=1777".into()];
                    if let Some(n) = size {
                        opts.push(format!("size={n}"));
                    }
                    mount.set_options(Some(opts));
                }
            }
            mounts.push(mount);
        }
        let meta = Meta {
            args: op.args.clone(),
            env,
            cwd: op.cwd.clone(),
            uid,
            gid,
            additional_gids: Vec::new(),
            hostname: String::new(),
            network: match op.network {
                NetworkMode::Isolated => Network::Isolated,
                NetworkMode::Host => Network::Host,
                NetworkMode::None => Network::None,
            },
        };
        // The runtime creates a file for each file mount whose target the image lacks;
        // those stubs must not end up in the layer (directories stay, as in Docker).
        let mut stubs: Vec<String> = op.mounts.iter().map(|m| m.target.clone()).collect();
        if op.network != NetworkMode::None {
            stubs.extend(["/etc/hosts".to_string(), "/etc/resolv.conf".to_string()]);
        }
        stubs.retain(|t| !exists_in(&active.lowers, t));
        let mut tail = Tail::default();
        let progress = &self.opts.progress;
        let code = self
            .executor
            .run(&active.mounts(), &mounts, &meta, &mut |stream, data| {
                tail.push(data);
                progress.event(Event::Log {
                    id,
                    stream,
                    data: data.to_vec(),
                });
            })?;
        if code != 0 {
            return Err(BuildError::StepFailed {
                step: state.vertex().name.clone(),
                command: format!("{:?}", op.args),
                code,
                output: tail.text(),
            });
        }
        for t in stubs {
            let p = active.upper.join(t.trim_start_matches('/'));
            let meta = fs::symlink_metadata(&p);
            if meta.as_ref().is_ok_and(|m| m.is_file() && m.len() == 0) {
                fs::remove_file(&p).map_err(|e| io_err("remove mount stub", &p, e))?;
            } else if t == crate::frontend::dockerfile::lower::HEREDOC_DIR
                && meta.is_ok_and(|m| m.is_dir())
            {
                // berth's own mount point, not the user's: it leaves no trace, nor does
                // a /run that only it made.
                let _ = fs::remove_dir(&p);
                if !exists_in(&active.lowers, "/run") {
                    let _ = fs::remove_dir(active.upper.join("run"));
                }
            }
        }
        Ok(())
    }

    fn cache_mount_dir(
        &self,
        id: &str,
        sharing: Sharing,
        holds: &mut Holds,
        (uid, gid, mode): (u32, u32, u32),
    ) -> Result<PathBuf> {
        let base = self
            .root
            .join("cache/mounts")
            .join(Digest::sha256(id.as_bytes()).hex());
        let lock_at = |dir: &Path, wait: bool| -> Result<Option<fs::File>> {
            let lock_path = dir.with_extension("lock");
            let f =
                fs::File::create(&lock_path).map_err(|e| io_err("create lock", &lock_path, e))?;
            if wait {
                f.lock().map_err(|e| io_err("lock", &lock_path, e))?;
                Ok(Some(f))
            } else {
                match f.try_lock() {
                    Ok(()) => Ok(Some(f)),
                    Err(_) => Ok(None),
                }
            }
        };
        let dir = match sharing {
            Sharing::Shared => base,
            Sharing::Locked => {
                if let Some(l) = lock_at(&base, true)? {
                    holds.locks.push(l);
                }
                base
            }
            Sharing::Private => {
                let mut n = 0;
                loop {
                    let d = if n == 0 {
                        base.clone()
                    } else {
                        base.with_file_name(format!(
                            "{}-{n}",
                            base.file_name().unwrap().to_string_lossy()
                        ))
                    };
                    if let Some(l) = lock_at(&d, false)? {
                        holds.locks.push(l);
                        break d;
                    }
                    n += 1;
                }
            }
        };
        if !dir.is_dir() {
            fs::create_dir_all(&dir).map_err(|e| io_err("create cache mount", &dir, e))?;
            use std::os::unix::fs::PermissionsExt;
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
                .map_err(|e| io_err("chown cache mount", &dir, e))?;
            fs::set_permissions(&dir, fs::Permissions::from_mode(mode))
                .map_err(|e| io_err("chmod cache mount", &dir, e))?;
        }
        Ok(dir)
    }
}

/// Things held for the duration of a step: cache-mount locks, mounted views, secret
/// files. Dropping releases them.
#[derive(Default)]
struct Holds {
    locks: Vec<fs::File>,
    views: Vec<View>,
    mounts: Vec<berth_exec::MountGuard>,
    dirs: Vec<PathBuf>,
}

impl Drop for Holds {
    fn drop(&mut self) {
        self.views.clear();
        // Unmount before the scratch directories under them go.
        self.mounts.clear();
        for d in &self.dirs {
            let _ = fs::remove_dir_all(d);
        }
    }
}

/// A mounted, throw-away view of a file system.
struct View {
    dir: PathBuf,
    guard: Option<berth_exec::MountGuard>,
    active: Option<Active>,
    snapshots: Snapshotter,
}

impl Drop for View {
    fn drop(&mut self) {
        if let Some(g) = self.guard.take() {
            let _ = g.unmount();
        }
        let _ = fs::remove_dir(&self.dir);
        if let Some(a) = self.active.take() {
            let _ = self.snapshots.remove(a);
        }
    }
}

/// The last lines of a step's output, for its error message.
#[derive(Default)]
struct Tail {
    buf: Vec<u8>,
}

impl Tail {
    const KEEP: usize = 8 << 10;

    fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
        if self.buf.len() > 2 * Self::KEEP {
            self.buf.drain(..self.buf.len() - Self::KEEP);
        }
    }

    fn text(&self) -> String {
        let s = String::from_utf8_lossy(&self.buf);
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
}

/// Why a step whose key was made of `before` last time and of `now` this time runs.
fn explain_change(before: &Ingredients, now: &Ingredients) -> String {
    let mut why = Vec::new();
    if before.op != now.op {
        why.push(describe_op_change(&before.op, &now.op));
    }
    why.extend(describe_input_changes(&before.inputs, &now.inputs));
    let mut changed = Vec::new();
    for (path, sum) in &now.files {
        match before.files.get(path) {
            None => changed.push(format!("{path} (new)")),
            Some(b) if b != sum => changed.push(path.clone()),
            _ => {}
        }
    }
    for path in before.files.keys() {
        if !now.files.contains_key(path) {
            changed.push(format!("{path} (removed)"));
        }
    }
    if !changed.is_empty() {
        let shown: Vec<_> = changed.iter().take(5).cloned().collect();
        let more = if changed.len() > 5 {
            format!(" and {} more", changed.len() - 5)
        } else {
            String::new()
        };
        why.push(format!("files changed: {}{more}", shown.join(", ")));
    }
    if before.source_date_epoch != now.source_date_epoch {
        let show = |v: Option<u64>| v.map_or_else(|| "unset".to_string(), |v| v.to_string());
        why.push(format!(
            "SOURCE_DATE_EPOCH changed from {} to {}",
            show(before.source_date_epoch),
            show(now.source_date_epoch)
        ));
    }
    if why.is_empty() {
        "its cached result is gone (pruned)".into()
    } else {
        why.join("; ")
    }
}

/// How a step's inputs differ between two runs. With as many inputs as before, each
/// slot is compared with the same slot (the op names its inputs by position); otherwise
/// the first input (the file system the step runs on) is compared by position and the
/// others are matched by label, so an extra `COPY --from` or bind mount reads as
/// "input added", not as every later slot changing.
fn describe_input_changes(before: &[(String, String)], now: &[(String, String)]) -> Vec<String> {
    let changed = |label: &str| format!("input {label:?} changed");
    if before.len() == now.len() {
        return now
            .iter()
            .zip(before)
            .filter(|((_, k_now), (_, k_before))| k_now != k_before)
            .map(|((label, _), _)| changed(label))
            .collect();
    }
    let mut why = Vec::new();
    if let (Some((label, k_now)), Some((_, k_before))) = (now.first(), before.first())
        && k_now != k_before
    {
        why.push(changed(label));
    }
    let (before, now) = (before.get(1..).unwrap_or(&[]), now.get(1..).unwrap_or(&[]));
    let mut unmatched: Vec<&(String, String)> = before.iter().collect();
    for (label, key) in now {
        match unmatched.iter().position(|(l, _)| l == label) {
            Some(i) => {
                if unmatched.remove(i).1 != *key {
                    why.push(changed(label));
                }
            }
            None => why.push(format!("input added: {label}")),
        }
    }
    why.extend(
        unmatched
            .into_iter()
            .map(|(label, _)| format!("input removed: {label}")),
    );
    why
}

fn describe_op_change(before: &str, now: &str) -> String {
    let (Ok(b), Ok(n)) = (
        serde_json::from_str::<serde_json::Value>(before),
        serde_json::from_str::<serde_json::Value>(now),
    ) else {
        return "the instruction changed".into();
    };
    let env = |v: &serde_json::Value| -> BTreeMap<String, String> {
        v.pointer("/Exec/env")
            .and_then(|e| e.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|s| {
                        s.as_str()?
                            .split_once('=')
                            .map(|(k, v)| (k.to_string(), v.to_string()))
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let (eb, en) = (env(&b), env(&n));
    let mut changes: Vec<String> = en
        .iter()
        .filter(|(k, v)| eb.get(*k) != Some(*v))
        .map(|(k, v)| match eb.get(k) {
            Some(old) => format!("{k} changed from {old:?} to {v:?}"),
            None => format!("{k}={v:?} is new"),
        })
        .collect();
    changes.extend(
        eb.keys()
            .filter(|k| !en.contains_key(*k))
            .map(|k| format!("{k} was removed")),
    );
    let mut b2 = b.clone();
    let mut n2 = n.clone();
    if let (Some(x), Some(y)) = (b2.pointer_mut("/Exec/env"), n2.pointer_mut("/Exec/env")) {
        *x = serde_json::Value::Null;
        *y = serde_json::Value::Null;
    }
    if b2 != n2 {
        changes.insert(0, "the instruction changed".into());
    }
    if changes.is_empty() {
        "the instruction changed".into()
    } else {
        changes.join(", ")
    }
}

/// Resolve `user[:group]` against the image's /etc/passwd and /etc/group (numeric ids
/// pass through; an empty user is root).
fn lookup_user(lowers: &[PathBuf], user: &str) -> Result<(u32, u32)> {
    if user.is_empty() {
        return Ok((0, 0));
    }
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    // The topmost layer with an entry at /etc/<name> decides; a whiteout means the file
    // was deleted.
    let read = |name: &str| -> Option<String> {
        let p = lowers
            .iter()
            .map(|l| l.join("etc").join(name))
            .find(|p| fs::symlink_metadata(p).is_ok())?;
        let m = fs::symlink_metadata(&p).ok()?;
        m.is_file().then(|| fs::read_to_string(&p).ok()).flatten()
    };
    let field = |file: &str, name: &str, idx: usize| -> Option<u32> {
        read(file)?.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.first() == Some(&name))
                .then(|| f.get(idx)?.parse().ok())
                .flatten()
        })
    };
    let (uid, primary) = match u.parse::<u32>() {
        // A numeric user takes the group of the passwd entry with that uid, or 0, as
        // runc and Docker do.
        Ok(n) => {
            let gid = read("passwd").and_then(|text| {
                text.lines().find_map(|l| {
                    let f: Vec<&str> = l.split(':').collect();
                    (f.get(2).and_then(|x| x.parse::<u32>().ok()) == Some(n))
                        .then(|| f.get(3)?.parse().ok())
                        .flatten()
                })
            });
            (n, gid.unwrap_or(0))
        }
        Err(_) => {
            let uid = field("passwd", u, 2).ok_or_else(|| {
                BuildError::Invalid(format!("user {u:?} is not in the image's /etc/passwd"))
            })?;
            (uid, field("passwd", u, 3).unwrap_or(0))
        }
    };
    let gid = match g {
        None => primary,
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => field("group", g, 2).ok_or_else(|| {
                BuildError::Invalid(format!("group {g:?} is not in the image's /etc/group"))
            })?,
        },
    };
    Ok((uid, gid))
}

/// Whether `path` exists in the file system made of `lowers` (topmost first): the
/// topmost layer that has an entry there decides, and a whiteout means "deleted".
fn exists_in(lowers: &[PathBuf], path: &str) -> bool {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let rel = path.trim_start_matches('/');
    for l in lowers {
        if let Ok(m) = fs::symlink_metadata(l.join(rel)) {
            return !(m.file_type().is_char_device() && m.rdev() == 0);
        }
    }
    false
}

fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("tmp-{}", unique("w")));
    fs::write(&tmp, data).map_err(|e| io_err("write", &tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| io_err("rename", path, e))
}

/// The solver driven with in-memory vertices and an executor that counts its calls
/// instead of running containers (after BuildKit's `solver/scheduler_test.go`): what is
/// asserted is how often each step ran, what came from cache and why the rest ran.
/// Snapshots and layers are real (plain directories and the content store), so no root,
/// runc or overlayfs is needed.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{ExecMount, LocalSource};

    /// Runs nothing: records each command and writes `/<command>.out` (holding the
    /// step's environment) into the step's upper directory, so every step makes a layer.
    ///
    /// The command `gated` waits until [`Counting::open`]; the command `fail` waits
    /// until `gated` runs, then exits 1.
    #[derive(Default)]
    struct Counting {
        runs: Mutex<Vec<String>>,
        /// Cancel this build while running the command named.
        cancel_on: Mutex<Option<(String, Cancel)>>,
        /// Whether `gated` runs, and whether it may finish.
        gate: (Mutex<(bool, bool)>, std::sync::Condvar),
    }

    impl Counting {
        fn runs(&self) -> Vec<String> {
            self.runs.lock().unwrap().clone()
        }

        fn clear(&self) {
            self.runs.lock().unwrap().clear();
        }

        /// Let `gated` finish.
        fn open(&self) {
            self.gate.0.lock().unwrap().1 = true;
            self.gate.1.notify_all();
        }
    }

    impl Executor for Counting {
        fn run(
            &self,
            rootfs: &[Mount],
            _mounts: &[Mount],
            meta: &Meta,
            output: &mut dyn FnMut(Stream, &[u8]),
        ) -> berth_exec::Result<i32> {
            let command = meta.args.last().cloned().unwrap_or_default();
            self.runs.lock().unwrap().push(command.clone());
            let upper = rootfs[0]
                .options()
                .iter()
                .flatten()
                .find_map(|o| o.strip_prefix("upperdir="))
                .map(PathBuf::from)
                .expect("an overlay root with an upper directory");
            fs::write(upper.join(format!("{command}.out")), meta.env.join("\n")).unwrap();
            if let Some((on, cancel)) = &*self.cancel_on.lock().unwrap()
                && *on == command
            {
                cancel.cancel();
            }
            let (gate, changed) = &self.gate;
            if command == "gated" {
                gate.lock().unwrap().0 = true;
                changed.notify_all();
                let _open = changed.wait_while(gate.lock().unwrap(), |g| !g.1).unwrap();
            }
            if command == "fail" {
                let _running = changed.wait_while(gate.lock().unwrap(), |g| !g.0).unwrap();
            }
            output(Stream::Stdout, b"ran\n");
            Ok(if command == "fail" { 1 } else { 0 })
        }
    }

    /// Keeps every event.
    #[derive(Default)]
    struct Events(Mutex<Vec<Event>>);

    impl Progress for Events {
        fn event(&self, event: Event) {
            self.0.lock().unwrap().push(event);
        }
    }

    impl Events {
        /// What `pick` takes from each event it matches, in order.
        fn pick<T>(&self, pick: impl Fn(&Event) -> Option<T>) -> Vec<T> {
            self.0.lock().unwrap().iter().filter_map(pick).collect()
        }

        /// Labels of the steps that came from cache.
        fn cached(&self) -> Vec<String> {
            self.pick(|e| match e {
                Event::Cached { name, .. } => Some(name.clone()),
                _ => None,
            })
        }

        /// Labels of the steps that started, in order, with repeats.
        fn started(&self) -> Vec<String> {
            self.pick(|e| match e {
                Event::Started { name, .. } => Some(name.clone()),
                _ => None,
            })
        }

        /// Why the step labelled `step` ran (it must have, once).
        fn reason(&self, step: &str) -> String {
            let found = self.pick(|e| match e {
                Event::Reason { name, reason, .. } if name == step => Some(reason.clone()),
                _ => None,
            });
            assert_eq!(
                found.len(),
                1,
                "one reason for {step:?} in {:#?}",
                self.0.lock().unwrap()
            );
            found[0].clone()
        }
    }

    /// A data root, a build context and the counting executor.
    struct Fixture {
        dir: tempfile::TempDir,
        exec: Arc<Counting>,
    }

    /// How one build is run.
    struct Run<'a> {
        build_id: &'a str,
        source_date_epoch: Option<u64>,
        no_cache: bool,
        cancel: Cancel,
    }

    impl Default for Run<'_> {
        fn default() -> Self {
            Run {
                build_id: "project-a",
                source_date_epoch: None,
                no_cache: false,
                cancel: Cancel::default(),
            }
        }
    }

    impl Fixture {
        fn new() -> Fixture {
            let f = Fixture {
                dir: tempfile::tempdir().unwrap(),
                exec: Arc::default(),
            };
            fs::create_dir(f.context()).unwrap();
            f
        }

        fn root(&self) -> PathBuf {
            self.dir.path().join("root")
        }

        fn context(&self) -> PathBuf {
            self.dir.path().join("context")
        }

        /// Solve `states` together in a fresh solver (a new build); clears the run count.
        async fn build(
            &self,
            states: &[&State],
            run: Run<'_>,
        ) -> (Vec<Result<Digest>>, Arc<Events>) {
            self.exec.clear();
            let events = Arc::new(Events::default());
            let store = Store::open(self.root().join("store")).unwrap();
            let solver = Solver::new(
                &self.root(),
                store,
                self.exec.clone(),
                SolveOptions {
                    contexts: HashMap::from([("context".to_string(), self.context())]),
                    secrets: HashMap::new(),
                    no_cache: run.no_cache,
                    source_date_epoch: run.source_date_epoch,
                    compression: berth_snapshot::Compression::Gzip,
                    progress: events.clone(),
                    cancel: run.cancel,
                    build_id: run.build_id.to_string(),
                },
            )
            .unwrap();
            let results =
                futures_util::future::join_all(states.iter().map(|s| solver.solve(s))).await;
            let results = results
                .into_iter()
                .map(|r| r.map(|s| s.key.clone()))
                .collect();
            (results, events)
        }

        /// Solve one state; it must succeed.
        async fn build_ok(&self, state: &State, run: Run<'_>) -> Arc<Events> {
            let (mut results, events) = self.build(&[state], run).await;
            results.remove(0).expect("the build succeeds");
            events
        }

        /// Solve one state with `cancel`; it must fail as canceled.
        async fn build_canceled(&self, state: &State, cancel: Cancel) -> Arc<Events> {
            let run = Run {
                cancel,
                ..Run::default()
            };
            let (results, events) = self.build(&[state], run).await;
            assert!(
                matches!(results[0], Err(BuildError::Canceled)),
                "{:?}",
                results[0]
            );
            events
        }
    }

    fn exec(command: &str, env: &[&str]) -> ExecOp {
        ExecOp {
            args: vec!["/bin/sh".into(), "-c".into(), command.into()],
            env: env.iter().map(|e| e.to_string()).collect(),
            cwd: "/".into(),
            user: String::new(),
            network: NetworkMode::None,
            mounts: Vec::new(),
            proxy_env: Vec::new(),
        }
    }

    fn run(on: &State, command: &str, label: &str) -> State {
        on.run(exec(command, &[]), Vec::new(), label)
    }

    fn context() -> State {
        State::local(LocalSource {
            name: "context".into(),
            exclude: Vec::new(),
        })
    }

    /// `RUN --mount=type=bind,target=/src <command>` over the build context.
    fn run_on_context(on: &State, command: &str, label: &str) -> State {
        let mut op = exec(command, &[]);
        op.mounts.push(ExecMount {
            target: "/src".into(),
            source: MountSource::Input {
                input: 1,
                path: "/".into(),
                rw: false,
            },
        });
        on.run(op, vec![context()], label)
    }

    fn sorted(mut v: Vec<String>) -> Vec<String> {
        v.sort();
        v
    }

    #[tokio::test]
    async fn each_vertex_is_solved_once_however_many_paths_reach_it() {
        let f = Fixture::new();
        let base = run(&State::scratch(), "base", "base");
        let left = run(&base, "left", "left");
        let right = run(&base, "right", "right");
        // `top` reads both branches, which both read `base`.
        let top = left.run(exec("top", &[]), vec![right.clone()], "top");
        // The same vertex built again from scratch, and solved alongside.
        let left_again = run(&run(&State::scratch(), "base", "base"), "left", "left");
        assert_eq!(left_again.digest(), left.digest());
        let (results, events) = f
            .build(&[&top, &left_again, &left, &right], Run::default())
            .await;
        for r in &results {
            assert!(r.is_ok(), "{r:?}");
        }
        assert_eq!(sorted(f.exec.runs()), ["base", "left", "right", "top"]);
        assert_eq!(sorted(events.started()), ["base", "left", "right", "top"]);
        assert_eq!(results[1].as_ref().unwrap(), results[2].as_ref().unwrap());
    }

    #[tokio::test]
    async fn a_second_build_takes_every_step_from_cache() {
        let f = Fixture::new();
        fs::write(f.context().join("a.txt"), "a\n").unwrap();
        let a = run(&State::scratch(), "a", "a");
        let b = run_on_context(&a, "b", "b");
        let c = run(&b, "c", "c");
        let first = f.build_ok(&c, Run::default()).await;
        assert_eq!(f.exec.runs(), ["a", "b", "c"]);
        assert!(first.cached().is_empty());
        assert_eq!(first.reason("a"), "first build of this step");

        let second = f.build_ok(&c, Run::default()).await;
        assert!(f.exec.runs().is_empty(), "ran again: {:?}", f.exec.runs());
        assert_eq!(second.cached(), ["a", "b", "c"]);
        assert_eq!(second.started(), ["[internal] load context"]);
    }

    #[tokio::test]
    async fn a_miss_reruns_that_step_and_what_follows_only() {
        let f = Fixture::new();
        let a = run(&State::scratch(), "a", "a");
        f.build_ok(&run(&run(&a, "b", "b"), "c", "c"), Run::default())
            .await;
        let events = f
            .build_ok(&run(&run(&a, "b2", "b"), "c", "c"), Run::default())
            .await;
        assert_eq!(f.exec.runs(), ["b2", "c"]);
        assert_eq!(events.cached(), ["a"]);
        assert_eq!(events.reason("b"), "the instruction changed");
        assert_eq!(events.reason("c"), r#"input "b" changed"#);
    }

    #[tokio::test]
    async fn a_changed_or_added_or_removed_variable_is_named_old_to_new() {
        let f = Fixture::new();
        let step = |env: &[&str]| State::scratch().run(exec("build", env), Vec::new(), "build");
        f.build_ok(&step(&["FLAVOR=plain", "GONE=1"]), Run::default())
            .await;
        let events = f
            .build_ok(&step(&["FLAVOR=spicy", "NEW=x"]), Run::default())
            .await;
        assert_eq!(
            events.reason("build"),
            r#"FLAVOR changed from "plain" to "spicy", NEW="x" is new, GONE was removed"#
        );
        // A change of both the command and a variable names both.
        let events = f
            .build_ok(
                &State::scratch().run(
                    exec("build2", &["FLAVOR=mild", "NEW=x"]),
                    Vec::new(),
                    "build",
                ),
                Run::default(),
            )
            .await;
        assert_eq!(
            events.reason("build"),
            r#"the instruction changed, FLAVOR changed from "spicy" to "mild""#
        );
    }

    #[tokio::test]
    async fn changed_added_and_removed_context_files_are_named() {
        let f = Fixture::new();
        let write = |name: &str, text: &str| fs::write(f.context().join(name), text).unwrap();
        write("a.txt", "a\n");
        write("b.txt", "b\n");
        let step = run_on_context(&State::scratch(), "use-context", "use");
        f.build_ok(&step, Run::default()).await;
        write("b.txt", "b changed\n");
        write("c.txt", "c\n");
        fs::remove_file(f.context().join("a.txt")).unwrap();
        let events = f.build_ok(&step, Run::default()).await;
        assert_eq!(f.exec.runs(), ["use-context"]);
        assert_eq!(
            events.reason("use"),
            "files changed: b.txt, c.txt (new), a.txt (removed)"
        );
    }

    #[tokio::test]
    async fn added_and_removed_inputs_are_named() {
        let f = Fixture::new();
        let base = run(&State::scratch(), "base", "base");
        let helper = run(&State::scratch(), "helper", "helper");
        let plain = base.run(exec("step", &[]), Vec::new(), "step");
        let with_helper = base.run(exec("step", &[]), vec![helper.clone()], "step");
        f.build_ok(&plain, Run::default()).await;
        let events = f.build_ok(&with_helper, Run::default()).await;
        assert_eq!(events.reason("step"), "input added: helper");
        let events = f.build_ok(&plain, Run::default()).await;
        assert_eq!(events.cached(), ["base", "step"]);
        // Back to the plain step, but through a changed base: the base is compared
        // by position, the helper reported as gone.
        f.build_ok(&with_helper, Run::default()).await;
        let other_base = run(&State::scratch(), "base2", "base");
        let events = f
            .build_ok(
                &other_base.run(exec("step", &[]), Vec::new(), "step"),
                Run::default(),
            )
            .await;
        assert_eq!(
            events.reason("step"),
            r#"input "base" changed; input removed: helper"#
        );
    }

    #[tokio::test]
    async fn a_changed_source_date_epoch_is_named() {
        let f = Fixture::new();
        let step = run(&State::scratch(), "build", "build");
        let at = |epoch| Run {
            source_date_epoch: epoch,
            ..Run::default()
        };
        f.build_ok(&step, at(Some(0))).await;
        assert_eq!(
            f.build_ok(&step, at(Some(100))).await.reason("build"),
            "SOURCE_DATE_EPOCH changed from 0 to 100"
        );
        assert_eq!(
            f.build_ok(&step, at(None)).await.reason("build"),
            "SOURCE_DATE_EPOCH changed from 100 to unset"
        );
        assert_eq!(f.build_ok(&step, at(None)).await.cached(), ["build"]);
    }

    #[tokio::test]
    async fn a_pruned_result_and_no_cache_are_named() {
        let f = Fixture::new();
        let step = run(&State::scratch(), "build", "build");
        f.build_ok(&step, Run::default()).await;
        let records = f.root().join("cache/records");
        for e in fs::read_dir(&records).unwrap() {
            fs::remove_file(e.unwrap().path()).unwrap();
        }
        let events = f.build_ok(&step, Run::default()).await;
        assert_eq!(events.reason("build"), "its cached result is gone (pruned)");
        let no_cache = Run {
            no_cache: true,
            ..Run::default()
        };
        assert_eq!(
            f.build_ok(&step, no_cache).await.reason("build"),
            "--no-cache"
        );
        assert_eq!(f.exec.runs(), ["build"]);
    }

    #[tokio::test]
    async fn history_is_kept_per_build_not_per_label() {
        let f = Fixture::new();
        let project = |id| Run {
            build_id: id,
            ..Run::default()
        };
        // Two projects in one root with a step of the same label.
        let in_a = run(&State::scratch(), "make a", "[build 1/1] RUN make");
        let in_b = run(&State::scratch(), "make b", "[build 1/1] RUN make");
        f.build_ok(&in_a, project("a")).await;
        let events = f.build_ok(&in_b, project("b")).await;
        assert_eq!(
            events.reason("[build 1/1] RUN make"),
            "first build of this step"
        );
        // Project a, changed, is compared with its own last build, not with b's.
        let in_a2 = in_a.vertex().inputs[0].run(
            exec("make a", &["MODE=fast"]),
            Vec::new(),
            "[build 1/1] RUN make",
        );
        let events = f.build_ok(&in_a2, project("a")).await;
        assert_eq!(
            events.reason("[build 1/1] RUN make"),
            r#"MODE="fast" is new"#
        );
    }

    #[test]
    fn build_ids_name_context_file_and_target() {
        let dir = tempfile::tempdir().unwrap();
        let (ctx, file) = (dir.path().join("ctx"), dir.path().join("ctx/Dockerfile"));
        fs::create_dir(&ctx).unwrap();
        let id = build_id(&ctx, &file, None);
        assert_eq!(id, build_id(&ctx.join("."), &file, None));
        assert_ne!(id, build_id(&ctx, &file, Some("test")));
        assert_ne!(id, build_id(dir.path(), &file, None));
        assert_ne!(id, build_id(&ctx, &ctx.join("other.Dockerfile"), None));
    }

    #[tokio::test]
    async fn a_cancel_stops_new_steps_and_returns_canceled() {
        let f = Fixture::new();
        let a = run(&State::scratch(), "a", "a");
        let b = run(&a, "b", "b");
        let c = run(&b, "c", "c");
        let d = run(&c, "d", "d");
        let cancel = Cancel::default();
        *f.exec.cancel_on.lock().unwrap() = Some(("b".into(), cancel.clone()));
        let events = f.build_canceled(&d, cancel).await;
        // The step that ran finished; nothing started after the cancel.
        assert_eq!(f.exec.runs(), ["a", "b"]);
        assert_eq!(events.started(), ["a", "b"]);
    }

    #[tokio::test]
    async fn a_canceled_build_runs_nothing() {
        let f = Fixture::new();
        let cancel = Cancel::default();
        cancel.cancel();
        let step = run(&run(&State::scratch(), "a", "a"), "b", "b");
        f.build_canceled(&step, cancel).await;
        assert!(f.exec.runs().is_empty());
    }

    impl Fixture {
        /// A solver for a build in this fixture.
        fn solver(&self) -> Arc<Solver> {
            let store = Store::open(self.root().join("store")).unwrap();
            let opts = SolveOptions {
                contexts: HashMap::new(),
                secrets: HashMap::new(),
                no_cache: false,
                source_date_epoch: None,
                compression: berth_snapshot::Compression::Gzip,
                progress: Arc::new(NoProgress),
                cancel: Cancel::default(),
                build_id: "project-a".into(),
            };
            Solver::new(&self.root(), store, self.exec.clone(), opts).unwrap()
        }

        /// Whether `berth prune` could take the root's lock now (no build holds it).
        fn prune_lock_free(&self) -> bool {
            let store = Store::open(self.root().join("store")).unwrap();
            let path = self.root().join("store/cache/prune.lock");
            drop(store);
            let f = fs::File::open(&path).unwrap();
            f.try_lock().is_ok()
        }
    }

    /// A satellite runs many builds in one process: a build that failed while another
    /// branch was still running must not leave its solver (memo, prune lock) behind.
    #[test]
    fn a_failed_build_drops_its_solver() {
        let f = Fixture::new();
        let failing = run(&State::scratch(), "fail", "fail");
        let gated = run(&State::scratch(), "gated", "gated");
        let top = failing.run(exec("top", &[]), vec![gated], "top");
        let rt = tokio::runtime::Runtime::new().unwrap();
        let solver = f.solver();
        let weak = Arc::downgrade(&solver);
        let result = rt.block_on(solver.solve(&top));
        assert!(
            matches!(result, Err(BuildError::StepFailed { code: 1, .. })),
            "{result:?}"
        );
        drop(solver);
        // `gated` still runs; once it ends (the runtime waits for it), nothing of the
        // build is left.
        f.exec.open();
        drop(rt);
        assert_eq!(sorted(f.exec.runs()), ["fail", "gated"]);
        assert!(weak.upgrade().is_none(), "the solver outlived its build");
        assert!(
            f.prune_lock_free(),
            "the failed build still holds the prune lock"
        );
    }

    /// A build whose caller stops waiting (an aborted task) drops its solver too.
    #[test]
    fn an_abandoned_build_drops_its_solver() {
        let f = Fixture::new();
        let step = run(&run(&State::scratch(), "a", "a"), "b", "b");
        let rt = tokio::runtime::Runtime::new().unwrap();
        let solver = f.solver();
        let weak = Arc::downgrade(&solver);
        let polled_once = rt.block_on(async { solver.solve(&step).now_or_never() });
        assert!(
            polled_once.is_none(),
            "the build cannot be done at its first poll"
        );
        drop(solver);
        drop(rt);
        assert!(weak.upgrade().is_none(), "the solver outlived its build");
        assert!(
            f.prune_lock_free(),
            "the abandoned build still holds the prune lock"
        );
    }

    #[test]
    fn a_shared_error_keeps_its_kind() {
        let shared = Arc::new(BuildError::Canceled);
        let _other_waiter = shared.clone();
        assert!(matches!(unshare(shared), BuildError::Canceled));
        let failed = Arc::new(BuildError::StepFailed {
            step: "s".into(),
            command: "c".into(),
            code: 3,
            output: "o".into(),
        });
        let _other_waiter = failed.clone();
        assert!(matches!(
            unshare(failed),
            BuildError::StepFailed { code: 3, .. }
        ));
    }
}
