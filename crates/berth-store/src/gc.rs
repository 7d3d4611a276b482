//! Mark-and-sweep garbage collection and consistency checks.
//!
//! Marking walks every repository: each linked manifest is live, and so is everything it
//! reaches (config, layers, child manifests and theirs). Blob links that no manifest of
//! their repository reaches are dropped. Sweeping deletes unmarked blobs and expired
//! ingests.
//!
//! GC may run while registries serve the same root, in other processes. A push uploads
//! blobs before the manifest that references them, and a re-push finds blobs by HEAD and
//! skips them; every such request protects the blobs it relies on (`protect`), and gc
//! removes a blob or a link only under the blob's exclusive lock, when the blob's stamp is
//! older than the mark time less the *grace period*. docs/ARCHITECTURE.md ("gc beside
//! pushes") proves that no manifest answered 2xx loses a blob. An upload still in
//! progress holds its ingest locked, so it is never swept.
//!
//! Content kept for other parts of berth without a repository naming it (the build
//! cache's layers) is live too: its owner tells gc through [`GcRoots`], which every
//! collection takes, so the store never reads another crate's files and a caller cannot
//! forget the roots by leaving an option out.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::Read;
use std::time::{Duration, SystemTime};

use berth_oci::{Descriptor, Digest, Manifest, media_type};

use crate::content::Store;
use crate::error::{IoContext, Result};
use crate::protect;

/// The roots another part of berth keeps in the store: digests gc must keep although
/// no repository's manifest reaches them (berth-build's cache records list the layers
/// of cached steps).
///
/// [`Store::gc`] calls [`GcRoots::roots`] once, after taking the root's lock
/// exclusively (so no build writes a record meanwhile: builds hold it shared) and
/// before it removes anything; an error ends the collection with nothing removed.
///
/// ```
/// # let dir = tempfile::tempdir().unwrap();
/// use std::collections::HashSet;
/// use berth_oci::{Algorithm, Digest};
/// use berth_store::{GcOptions, GcRoots, Result, Store};
///
/// /// Keeps one blob, as a cache would keep its layers.
/// struct Keep(Digest);
///
/// impl GcRoots for Keep {
///     fn roots(&self, _store: &Store) -> Result<HashSet<Digest>> {
///         Ok(HashSet::from([self.0.clone()]))
///     }
/// }
///
/// let store = Store::open(dir.path()).unwrap();
/// let layer = store.put_blob(Algorithm::Sha256, b"cached layer").unwrap().digest;
/// let now = GcOptions { grace: std::time::Duration::ZERO, ..GcOptions::default() };
/// store.gc(&now, &Keep(layer.clone())).unwrap();
/// assert!(store.blob_size(&layer).unwrap().is_some());
/// ```
pub trait GcRoots {
    /// Every digest to keep.
    fn roots(&self, store: &Store) -> Result<HashSet<Digest>>;
}

/// No roots besides the repositories: for a store nothing but registries writes.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoRoots;

impl GcRoots for NoRoots {
    fn roots(&self, _store: &Store) -> Result<HashSet<Digest>> {
        Ok(HashSet::new())
    }
}

/// How a collection runs.
#[derive(Debug, Clone)]
pub struct GcOptions {
    /// Report what would be removed, remove nothing.
    pub dry_run: bool,
    /// Blobs and links stamped more recently than this before the mark are kept even
    /// when unreferenced (plus [`crate::CLOCK_MARGIN`]).
    pub grace: Duration,
    /// Ingests (upload sessions) untouched for this long are removed.
    pub upload_expiry: Duration,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            dry_run: false,
            grace: Duration::from_secs(3600),
            upload_expiry: Duration::from_secs(24 * 3600),
        }
    }
}

/// What a collection found and did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcReport {
    /// Blobs reachable from some manifest.
    pub live_blobs: usize,
    /// Blobs removed (or that would be, on a dry run).
    pub removed_blobs: Vec<Digest>,
    /// Their total size in bytes.
    pub removed_bytes: u64,
    /// Repository blob links removed.
    pub removed_links: usize,
    /// Expired ingests removed.
    pub removed_ingests: Vec<String>,
}

/// What a consistency check found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CheckReport {
    /// Blobs checked.
    pub blobs: usize,
    /// Manifests checked (counting a manifest once per repository that links it).
    pub manifests: usize,
    /// Blobs whose content does not hash to their name.
    pub corrupt: Vec<Digest>,
    /// What is wrong with the manifests repositories serve.
    pub problems: Vec<Problem>,
}

/// One thing wrong with a manifest a repository serves: a pull of it would fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The repository that links the manifest.
    pub repository: String,
    /// The manifest.
    pub manifest: Digest,
    /// What is wrong.
    pub kind: ProblemKind,
}

/// What is wrong with a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProblemKind {
    /// The manifest is linked but its own blob is missing from the store.
    ManifestMissing,
    /// The manifest's bytes do not parse.
    Unreadable(String),
    /// A referenced blob (`role`: config, layer, manifest) is missing from the store.
    BlobMissing {
        /// config, layer or manifest.
        role: &'static str,
        /// The blob.
        digest: Digest,
    },
    /// A referenced blob is in the store, but the repository does not serve it.
    NotInRepository {
        /// config, layer or manifest.
        role: &'static str,
        /// The blob.
        digest: Digest,
    },
    /// A referenced blob's size is not the descriptor's.
    SizeMismatch {
        /// config, layer or manifest.
        role: &'static str,
        /// The blob.
        digest: Digest,
        /// The descriptor's size.
        expected: u64,
        /// The stored blob's size.
        got: u64,
    },
    /// The manifest names a subject, but the subject's referrers do not list it.
    ReferrerNotRecorded {
        /// The subject.
        subject: Digest,
    },
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "repository {}: manifest {}: ",
            self.repository, self.manifest
        )?;
        match &self.kind {
            ProblemKind::ManifestMissing => write!(f, "missing from the blob store"),
            ProblemKind::Unreadable(e) => write!(f, "does not parse: {e}"),
            ProblemKind::BlobMissing { role, digest } => {
                write!(f, "{role} {digest} is missing from the blob store")
            }
            ProblemKind::NotInRepository { role, digest } => write!(
                f,
                "{role} {digest} is stored but not linked in the repository (a pull gets 404)"
            ),
            ProblemKind::SizeMismatch {
                role,
                digest,
                expected,
                got,
            } => write!(
                f,
                "{role} {digest} is {got} bytes, the manifest says {expected}"
            ),
            ProblemKind::ReferrerNotRecorded { subject } => write!(
                f,
                "its subject {subject} does not list it among its referrers"
            ),
        }
    }
}

/// Reads manifests once each and follows their references.
struct Marker<'a> {
    store: &'a Store,
    /// A manifest's config and layers, and its child manifests.
    refs: HashMap<Digest, (Vec<Digest>, Vec<Digest>)>,
}

impl<'a> Marker<'a> {
    fn new(store: &'a Store) -> Self {
        Marker {
            store,
            refs: HashMap::new(),
        }
    }

    /// Add to `out` everything the manifests `roots` reach, themselves included. Only
    /// manifests are read: configs and layers are leaves.
    fn reach(&mut self, roots: Vec<Digest>, out: &mut HashSet<Digest>) -> Result<()> {
        let mut todo = roots;
        while let Some(d) = todo.pop() {
            if !out.insert(d.clone()) {
                continue;
            }
            if !self.refs.contains_key(&d) {
                let mut refs = (Vec::new(), Vec::new());
                if let Some(bytes) = self.store.read_blob(&d)?
                    && let Ok((m, _)) = Manifest::parse(&bytes, None)
                {
                    refs.0 = m.blobs().map(|x| x.digest.clone()).collect();
                    refs.1 = m.manifests.iter().map(|x| x.digest.clone()).collect();
                }
                self.refs.insert(d.clone(), refs);
            }
            let (leaves, children) = &self.refs[&d];
            out.extend(leaves.iter().cloned());
            todo.extend(children.iter().cloned());
        }
        Ok(())
    }
}

impl Store {
    /// Every digest some repository's manifests reach: the manifests, their configs,
    /// layers and child manifests, recursively. (Blobs only linked are not in it.)
    pub fn referenced(&self) -> Result<HashSet<Digest>> {
        let repos = self.repos();
        let mut marker = Marker::new(self);
        let mut live = HashSet::new();
        for name in repos.repositories()? {
            marker.reach(repos.manifests(&name)?, &mut live)?;
        }
        Ok(live)
    }

    /// The blobs nothing keeps, with their sizes: no repository's manifest reaches them
    /// and `roots` does not name them. gc removes them once their grace is over (a blob
    /// only linked into a repository, or stamped recently, waits for it). Nothing is
    /// locked: an estimate for reports.
    pub fn unreferenced(&self, roots: &dyn GcRoots) -> Result<Vec<(Digest, u64)>> {
        let mut live = self.referenced()?;
        live.extend(roots.roots(self)?);
        let mut out = Vec::new();
        for b in self.blobs()? {
            if !live.contains(&b)
                && let Some(size) = self.blob_size(&b)?
            {
                out.push((b, size));
            }
        }
        Ok(out)
    }

    /// Collect garbage: see the module docs. `roots` names what other parts of berth
    /// keep in the store (see [`GcRoots`]); pass [`NoRoots`] only for a store no build
    /// uses.
    pub fn gc(&self, opts: &GcOptions, roots: &dyn GcRoots) -> Result<GcReport> {
        // Builds hold this lock shared, so the roots cannot change until gc is done.
        let _lock = self.lock_root(true)?;
        // Taken before any manifest is listed: what is linked before it is marked, what
        // is linked after it stamps its blobs after it.
        let marked_at = SystemTime::now();
        let cutoff = protect::cutoff(marked_at, opts.grace);
        let repos = self.repos();
        let mut live: HashSet<Digest> = roots.roots(self)?;
        let mut marker = Marker::new(self);
        let mut report = GcReport::default();
        for name in repos.repositories()? {
            let mut reached = HashSet::new();
            marker.reach(repos.manifests(&name)?, &mut reached)?;
            for b in repos.blobs(&name)? {
                if reached.contains(&b) {
                    continue;
                }
                let link = repos.link(&name, "_blobs", &b)?;
                let removed = self.with_blob_exclusive(&b, |blob| {
                    let link_old =
                        fs::metadata(&link).is_ok_and(|m| protect::stamped_before(&m, cutoff));
                    let blob_old = blob.is_none_or(|m| protect::stamped_before(m, cutoff));
                    if !(link_old && blob_old) {
                        return Ok(false);
                    }
                    if !opts.dry_run {
                        repos.unlink_blob(&name, &b)?;
                    }
                    Ok(true)
                })?;
                if removed == Some(true) {
                    report.removed_links += 1;
                } else {
                    live.insert(b);
                }
            }
            live.extend(reached);
        }
        report.live_blobs = live.len();
        for blob in self.blobs()? {
            if live.contains(&blob) {
                continue;
            }
            if let Some(size) = self.sweep_blob(&blob, marked_at, opts.grace, opts.dry_run)? {
                report.removed_bytes += size;
                report.removed_blobs.push(blob);
            }
        }
        // Temporary names a commit killed mid-way left beside the blobs.
        for alg in berth_oci::Algorithm::ALL {
            let dir = self.root().join("blobs").join(alg.as_str());
            for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
                let old = entry.metadata().ok().and_then(|m| m.modified().ok());
                let expired = old.is_some_and(|t| {
                    marked_at.duration_since(t).unwrap_or_default() >= opts.upload_expiry
                });
                if expired
                    && entry.file_name().to_string_lossy().starts_with(".tmp-")
                    && !opts.dry_run
                {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
        for ingest in self.ingests()? {
            let age = marked_at.duration_since(ingest.updated).unwrap_or_default();
            if age < opts.upload_expiry {
                continue;
            }
            // An ingest a writer holds (an upload in progress) stays: abort refuses it.
            if opts.dry_run || self.abort(&ingest.reference).is_ok() {
                report.removed_ingests.push(ingest.reference);
            }
        }
        Ok(report)
    }

    /// Re-hash every blob, and check every manifest each repository links the way a pull
    /// would: its own blob, its config and layers (present, of the descriptor's size,
    /// served by the repository), the child manifests of an index, and that a manifest
    /// with a subject is listed among the subject's referrers.
    pub fn check(&self) -> Result<CheckReport> {
        let mut report = CheckReport::default();
        let mut buf = vec![0u8; 1 << 20];
        for blob in self.blobs()? {
            report.blobs += 1;
            let path = self.blob_path(&blob);
            let mut f = match fs::File::open(&path) {
                Ok(f) => f,
                // Removed by a gc running beside us.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e).ctx("open blob", &path),
            };
            let mut h = blob.algorithm().hasher();
            loop {
                let n = f.read(&mut buf).ctx("read blob", &path)?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
            }
            if h.finish() != blob {
                report.corrupt.push(blob);
            }
        }
        let repos = self.repos();
        for name in repos.repositories()? {
            for m in repos.manifests(&name)? {
                report.manifests += 1;
                let problems = self.check_manifest(&name, &m)?;
                report
                    .problems
                    .extend(problems.into_iter().map(|kind| Problem {
                        repository: name.clone(),
                        manifest: m.clone(),
                        kind,
                    }));
            }
        }
        Ok(report)
    }

    fn check_manifest(&self, name: &str, digest: &Digest) -> Result<Vec<ProblemKind>> {
        let repos = self.repos();
        let Some(bytes) = self.read_blob(digest)? else {
            return Ok(vec![ProblemKind::ManifestMissing]);
        };
        let manifest = match Manifest::parse(&bytes, repos.manifest(name, digest)?.as_deref()) {
            Ok((m, _)) => m,
            Err(e) => return Ok(vec![ProblemKind::Unreadable(e.to_string())]),
        };
        let mut out = Vec::new();
        let mut check = |role: &'static str, d: &Descriptor| -> Result<()> {
            let linked = if role == "manifest" {
                repos.manifest(name, &d.digest)?.is_some()
            } else {
                repos.has_blob(name, &d.digest)?
            };
            let digest = d.digest.clone();
            match self.blob_size(&d.digest)? {
                None => out.push(ProblemKind::BlobMissing { role, digest }),
                Some(got) if got != d.size => out.push(ProblemKind::SizeMismatch {
                    role,
                    digest,
                    expected: d.size,
                    got,
                }),
                Some(_) if !linked => out.push(ProblemKind::NotInRepository { role, digest }),
                Some(_) => {}
            }
            Ok(())
        };
        if let Some(d) = &manifest.config {
            check("config", d)?;
        }
        for d in &manifest.layers {
            if !media_type::is_non_distributable(&d.media_type) {
                check("layer", d)?;
            }
        }
        for d in &manifest.manifests {
            check("manifest", d)?;
        }
        if let Some(subject) = &manifest.subject
            && !repos
                .referrers(name, &subject.digest)?
                .iter()
                .any(|r| r.digest == *digest)
        {
            out.push(ProblemKind::ReferrerNotRecorded {
                subject: subject.digest.clone(),
            });
        }
        Ok(out)
    }
}
