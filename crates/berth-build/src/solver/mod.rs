//! The solver: runs a graph of [`State`](crate::ir::State)s with the real executor and snapshotter.
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
//!
//! A [`Solver`] serves one build: its options name the build, and what it remembers
//! (the solved vertices, step numbers, context checksums) goes when it is dropped.
//!
//! The module is cut by concern:
//!
//! - this file: the public vocabulary ([`Event`], [`Output`], [`SolveOptions`]…) and
//!   [`Solver::new`];
//! - `schedule`: the solve loop: each vertex once, inputs first, a step's way from cache
//!   key to cache hit or run, and its progress events;
//! - `cache`: cache keys (and the ingredients they are made of), cache records, and the
//!   content checksums of build contexts;
//! - `history`: the ingredients of each step's last run, and why a step missed;
//! - `exec`: running a RUN step (user lookup, mount stubs, output tail);
//! - `mounts`: the mounts of a RUN step (cache, secret, bind, tmpfs) and what they hold;
//! - `file`: COPY/ADD/WORKDIR file operations;
//! - `http`: downloads (`ADD https://…`), keyed by their content;
//! - `capture`: running a command for its exit code and output (Earthly's `IF`, `FOR`,
//!   `$(cmd)`), cached by the key a RUN of it would have;
//! - `docker`: steps with a dockerd of their own (Earthly's `WITH DOCKER`);
//! - `probe`: a dry walk counting the steps the cache answers (satellite pools);
//! - `git`: git checkouts (`ADD <repository>#<ref>`), keyed by their commit;
//! - `snapshot`: layers ↔ snapshots: unpacking chains, committing a step's changes as a
//!   layer, throw-away views.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_exec::{Executor, Stream};
use berth_oci::{Descriptor, Digest};
use berth_snapshot::Snapshotter;
use berth_store::Store;
use serde::{Deserialize, Serialize};

use crate::error::{BuildError, Result};
use crate::fileops;
use schedule::SharedSolve;

pub use capture::Captured;
pub use probe::{CacheProbe, probe_history};

mod cache;
mod capture;
mod docker;
mod exec;
mod file;
mod git;
mod history;
mod http;
mod mounts;
mod probe;
mod schedule;
mod snapshot;
#[cfg(test)]
mod testkit;

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
    /// The value itself, in memory (a satellite's secrets arrive in the build request).
    Value(Arc<[u8]>),
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
    /// SSH agent sockets by id (`--ssh`), for `RUN --mount=type=ssh`.
    pub ssh: HashMap<String, PathBuf>,
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
    /// A CA bundle (PEM file) RUN steps see read-only at the usual places
    /// (`/etc/ssl/certs/ca-certificates.crt`, `/etc/pki/tls/certs/ca-bundle.crt`,
    /// `/etc/ssl/cert.pem`, those the image has; the first otherwise), never in a layer
    /// and outside cache keys.
    pub ca_bundle: Option<PathBuf>,
    /// Limits how many steps run at once, across every build sharing it (a satellite's
    /// `max_parallel_steps`); `None` runs every ready step.
    pub step_slots: Option<Arc<StepSlots>>,
    /// The client downloads (`ADD https://…`) go through, with the configured proxies
    /// and CAs (`None`: a client with no proxy and the system's roots).
    pub client: Option<Arc<berth_client::Client>>,
}

/// A counting semaphore for running steps, shared by builds. Waiting steps show as
/// queued; a canceled build stops waiting within a fraction of a second.
#[derive(Debug)]
pub struct StepSlots {
    max: usize,
    state: Mutex<(usize, usize)>,
    freed: std::sync::Condvar,
}

impl StepSlots {
    /// At most `max` steps at once (at least one).
    pub fn new(max: usize) -> StepSlots {
        StepSlots {
            max: max.max(1),
            state: Mutex::new((0, 0)),
            freed: std::sync::Condvar::new(),
        }
    }

    /// Steps waiting for a slot now.
    pub fn queued(&self) -> usize {
        self.state.lock().expect("slots").1
    }

    /// Steps holding a slot now.
    pub fn running(&self) -> usize {
        self.state.lock().expect("slots").0
    }

    /// Waits for a slot (blocking); `None` if `cancel` fires first.
    pub(crate) fn acquire(self: &Arc<Self>, cancel: &Cancel) -> Option<StepSlot> {
        let mut st = self.state.lock().expect("slots");
        st.1 += 1;
        while st.0 >= self.max {
            if cancel.is_canceled() {
                st.1 -= 1;
                return None;
            }
            st = self
                .freed
                .wait_timeout(st, Duration::from_millis(200))
                .expect("slots")
                .0;
        }
        st.1 -= 1;
        st.0 += 1;
        Some(StepSlot(self.clone()))
    }
}

/// A held slot of [`StepSlots`]; given back on drop.
pub(crate) struct StepSlot(Arc<StepSlots>);

impl Drop for StepSlot {
    fn drop(&mut self) {
        self.0.state.lock().expect("slots").0 -= 1;
        self.0.freed.notify_one();
    }
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

/// Solves graphs over one data root, for one build: what it remembers of the build
/// (solved vertices, step numbers, context checksums) and its shared prune lock go when
/// the last handle is dropped.
pub struct Solver {
    store: Store,
    snapshots: Snapshotter,
    executor: Arc<dyn Executor>,
    root: PathBuf,
    opts: SolveOptions,
    /// Each vertex's solve, by vertex digest (see `schedule`).
    memo: Mutex<HashMap<Digest, SharedSolve>>,
    /// Step numbers for progress, by vertex digest.
    ids: Mutex<HashMap<Digest, usize>>,
    next_id: AtomicUsize,
    /// Content hashes of context files, by context directory, and what the file held
    /// when read, so an unchanged cache is not written back (see `save_sums`).
    sums: Mutex<HashMap<PathBuf, (Arc<fileops::SumCache>, fileops::SumMap)>>,
    /// Each context checksum of this build, by directory, ignore rules and sources
    /// (`cache::context_sum`); a slot is locked while its walk runs.
    context_sums: Mutex<HashMap<ContextRead, Arc<Mutex<Option<ContextSum>>>>>,
    /// The states `solve` was asked for, for the background context walk.
    targets: Mutex<Vec<crate::ir::State>>,
    /// Whether the background context walk was started.
    prefetched: std::sync::atomic::AtomicBool,
    /// Unpacks of pulled bases still running (see `ensure_chain`).
    unpacks: Mutex<Vec<crate::PullUnpack>>,
    /// Shared prune lock, held while this solver lives.
    _lock: fs::File,
}

/// A directory, its ignore rules and the sources read from it.
type ContextRead = (PathBuf, Vec<String>, Vec<String>);
/// The content checksum of a [`ContextRead`] and the sum of each file.
type ContextSum = (Digest, Vec<(String, String)>);

static SEQ: AtomicU64 = AtomicU64::new(0);

/// A name no other build (nor this one) uses, owned by this process (`<token>-…`).
fn unique(prefix: &str) -> String {
    format!(
        "{}-{prefix}{}",
        berth_snapshot::owner::token(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// An I/O error naming the operation and the path.
fn io_err(op: &str, path: &Path, e: impl std::fmt::Display) -> BuildError {
    BuildError::Io(format!("{op} {}: {e}", path.display()))
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
            context_sums: Mutex::new(HashMap::new()),
            targets: Mutex::new(Vec::new()),
            prefetched: std::sync::atomic::AtomicBool::new(false),
            unpacks: Mutex::new(Vec::new()),
            _lock: lock,
        }))
    }
}

/// Write `data` to `path` by rename, so readers see the old or the new content.
fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("tmp-{}", unique("w")));
    fs::write(&tmp, data).map_err(|e| io_err("write", &tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| io_err("rename", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

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
}

#[cfg(test)]
mod slot_tests {
    use super::*;

    #[test]
    fn slots_queue_steps_beyond_the_limit_and_let_cancels_go() {
        let slots = Arc::new(StepSlots::new(1));
        let cancel = Cancel::default();
        let held = slots.acquire(&cancel).unwrap();
        assert_eq!((slots.running(), slots.queued()), (1, 0));
        let (s2, c2) = (slots.clone(), cancel.clone());
        let waiter = std::thread::spawn(move || s2.acquire(&c2).is_some());
        while slots.queued() == 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(held);
        assert!(waiter.join().unwrap(), "the queued step got the freed slot");
        assert_eq!((slots.running(), slots.queued()), (0, 0));

        let held = slots.acquire(&cancel).unwrap();
        let (s3, c3) = (slots.clone(), cancel.clone());
        let waiter = std::thread::spawn(move || s3.acquire(&c3).is_none());
        while slots.queued() == 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
        cancel.cancel();
        assert!(waiter.join().unwrap(), "a canceled build stops waiting");
        assert_eq!(slots.queued(), 0);
        drop(held);
    }
}
