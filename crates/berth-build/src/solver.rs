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
//! last build of the same step and says why it re-ran: which instruction text, which
//! input step, which files.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
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

/// What a step's key was made of, kept per step label to explain the next miss.
#[derive(Serialize, Deserialize, Default)]
struct Ingredients {
    op: String,
    inputs: Vec<(String, String)>,
    files: BTreeMap<String, String>,
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
        for d in ["cache/records", "cache/steps", "cache/mounts", "tmp"] {
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
        self.solve_shared(state)
            .await
            .map_err(|e| match Arc::try_unwrap(e) {
                Ok(e) => e,
                Err(e) => BuildError::Invalid(e.to_string()),
            })
    }

    fn solve_shared(self: &Arc<Self>, state: &State) -> SharedSolve {
        let mut memo = self.memo.lock().expect("memo");
        if let Some(f) = memo.get(state.digest()) {
            return f.clone();
        }
        let this = self.clone();
        let st = state.clone();
        let fut = async move { this.solve_vertex(st).await.map_err(Arc::new) }
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

    async fn solve_vertex(self: Arc<Self>, state: State) -> Result<Arc<Solved>> {
        let inputs: Vec<Arc<Solved>> =
            try_join_all(state.vertex().inputs.iter().map(|i| self.solve_shared(i)))
                .await
                .map_err(|e| BuildError::Invalid(e.to_string()))?;
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.solve_blocking(&state, &inputs))
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
            self.remember(&v.name, &ingredients);
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
            self.remember(&v.name, &ingredients);
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
            source_date_epoch: self.opts.source_date_epoch,
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

    fn steps_path(&self, name: &str) -> PathBuf {
        self.root
            .join("cache/steps")
            .join(Digest::sha256(name.as_bytes()).hex())
    }

    fn remember(&self, name: &str, ing: &Ingredients) {
        if let Ok(bytes) = serde_json::to_vec(ing) {
            let _ = write_atomic(&self.steps_path(name), &bytes);
        }
    }

    /// Why a step runs: compare with what its key was made of last time.
    fn explain(&self, name: &str, now: &Ingredients) -> String {
        let Some(before) = fs::read(self.steps_path(name))
            .ok()
            .and_then(|b| serde_json::from_slice::<Ingredients>(&b).ok())
        else {
            return "first build of this step".into();
        };
        let mut why = Vec::new();
        if before.op != now.op {
            why.push(describe_op_change(&before.op, &now.op));
        }
        for ((name_now, key_now), (_, key_before)) in now.inputs.iter().zip(&before.inputs) {
            if key_now != key_before {
                why.push(format!("input {name_now:?} changed"));
            }
        }
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
        if why.is_empty() {
            "its cached result is gone (pruned)".into()
        } else {
            why.join("; ")
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
                NetworkMode::Host => Network::Host,
                NetworkMode::None => Network::None,
            },
        };
        // The runtime creates a file for each file mount whose target the image lacks;
        // those stubs must not end up in the layer (directories stay, as in Docker).
        let mut stubs: Vec<String> = op.mounts.iter().map(|m| m.target.clone()).collect();
        if op.network == NetworkMode::Host {
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
