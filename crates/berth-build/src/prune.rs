//! `berth prune`: free build cache, least recently used first.
//!
//! The build cache is the cache records (a step's key → its layers), the unpacked
//! snapshots and the layer blobs only records refer to. Images named in the store are
//! never removed, though their unpacked snapshots may be (they are unpacked again when
//! a build needs them); the unpacked snapshots of base images (images a registry gave,
//! by a tag or a digest) stay unless `--all`, as Docker keeps its images extracted.
//! Builds hold a shared lock on the root for their whole run and prune takes it
//! exclusively, so prune never removes a layer a running build mounts.
//!
//! The cache-miss history (`cache/history/<build>/<step>`, see the solver) goes with
//! the records: an entry whose cache key no longer has a record is removed, and
//! `--all` removes all of it, so the history never outgrows the cache.
//!
//! The store's gc knows nothing of the cache's files: [`BuildCache`] gives it the layers
//! the records list as roots ([`berth_store::GcRoots`]), so `berth registry gc` keeps what
//! cached builds rely on.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use berth_oci::Digest;
use berth_store::Store;

use crate::error::{BuildError, Result};
use crate::solver::Layer;

/// What to prune.
#[derive(Debug, Clone, Default)]
pub struct PruneOptions {
    /// Keep this many bytes of cache (most recently used first); 0 removes it all.
    pub keep_storage: u64,
    /// Cache unused for longer than this goes, whatever `keep_storage` allows.
    pub keep_duration: Option<std::time::Duration>,
    /// Also remove cache mounts (`RUN --mount=type=cache`) and the whole cache-miss
    /// history.
    pub all: bool,
}

/// What prune removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// Cache records removed.
    pub records: usize,
    /// Unpacked layers removed.
    pub snapshots: usize,
    /// Layer blobs removed.
    pub blobs: usize,
    /// Cache mounts removed.
    pub cache_mounts: usize,
    /// Cache-miss history entries (one per build and step) removed.
    pub histories: usize,
    /// Bytes freed (approximate: file sizes).
    pub bytes: u64,
}

#[derive(serde::Deserialize)]
struct Record {
    layers: Vec<Layer>,
}

/// The build cache of a data root, as the store's gc sees it: the layer blobs its
/// records list are roots. Pass it to every [`Store::gc`] of a root builds use.
#[derive(Debug, Clone)]
pub struct BuildCache {
    root: PathBuf,
}

impl BuildCache {
    /// The build cache of the data root `root` (the directory holding `cache/`).
    pub fn new(root: impl Into<PathBuf>) -> BuildCache {
        BuildCache { root: root.into() }
    }
}

impl berth_store::GcRoots for BuildCache {
    /// The layer blobs of every record. A record that does not parse is no cache hit
    /// (the solver reads it as a miss, prune removes it), so its layers are not roots;
    /// a record or directory that cannot be read fails the collection.
    fn roots(&self, _store: &Store) -> berth_store::Result<HashSet<Digest>> {
        let dir = self.root.join("cache/records");
        let io = |op, path: &Path| {
            let path = path.to_path_buf();
            move |source| berth_store::Error::Io { op, path, source }
        };
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashSet::new()),
            Err(e) => return Err(io("list build cache records", &dir)(e)),
        };
        let mut out = HashSet::new();
        for entry in entries {
            let path = entry.map_err(io("list build cache records", &dir))?.path();
            let bytes = match fs::read(&path) {
                Ok(bytes) => bytes,
                // A temporary name renamed into place meanwhile.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io("read build cache record", &path)(e)),
            };
            if let Ok(rec) = serde_json::from_slice::<Record>(&bytes) {
                out.extend(rec.layers.into_iter().map(|l| l.blob.digest));
            }
        }
        Ok(out)
    }
}

/// The part of a history entry prune reads: the cache key the step made. Entries
/// written before the key was kept have none and are treated as orphans.
#[derive(serde::Deserialize)]
struct HistoryEntry {
    #[serde(default)]
    key: Option<Digest>,
}

/// Remove the history entries under `root`'s `cache/history` whose record is gone (all
/// of them with `all`), and the build directories left empty, counting them in `report`.
fn prune_history(root: &Path, all: bool, report: &mut PruneReport) -> Result<()> {
    let records = root.join("cache/records");
    for build in fs::read_dir(root.join("cache/history"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let dir = build.path();
        let mut left = 0usize;
        for e in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = e.path();
            let live = !all
                && fs::read(&path)
                    .ok()
                    .and_then(|b| serde_json::from_slice::<HistoryEntry>(&b).ok())
                    .and_then(|h| h.key)
                    .is_some_and(|k| records.join(k.hex()).exists());
            if live {
                left += 1;
                continue;
            }
            report.bytes += du(&path);
            fs::remove_file(&path)
                .map_err(|err| BuildError::Io(format!("remove {}: {err}", path.display())))?;
            report.histories += 1;
        }
        if left == 0 {
            let _ = fs::remove_dir(&dir);
        }
    }
    Ok(())
}

fn du(path: &Path) -> u64 {
    let Ok(m) = fs::symlink_metadata(path) else {
        return 0;
    };
    if !m.is_dir() {
        return m.len();
    }
    fs::read_dir(path)
        .map(|it| it.flatten().map(|e| du(&e.path())).sum())
        .unwrap_or(0)
}

/// The snapshot chains of the base images in the store, for the host platform: the
/// images a registry gave, by a tag that still names what a build or `berth pull`
/// resolved it to, or by the digest they were pulled by (see `Store::pulled_images`).
fn base_chains(store: &Store) -> HashSet<Digest> {
    let mut out = HashSet::new();
    let mut seen = HashSet::new();
    for (repository, manifest) in store.pulled_images().unwrap_or_default() {
        if !seen.insert(manifest.clone()) {
            continue;
        }
        let Ok(image) = crate::image::load(store, &repository, manifest) else {
            continue;
        };
        let mut parent: Option<Digest> = None;
        for d in &image.config.rootfs.diff_ids {
            let c = berth_snapshot::chain_id(parent.as_ref(), d);
            out.insert(c.clone());
            parent = Some(c);
        }
    }
    out
}

fn chains(layers: &[Layer]) -> Vec<Digest> {
    let mut out = Vec::new();
    let mut parent: Option<Digest> = None;
    for l in layers {
        let c = berth_snapshot::chain_id(parent.as_ref(), &l.diff_id);
        out.push(c.clone());
        parent = Some(c);
    }
    out
}

/// The cache records of `root` (path, last use, layers), and the paths of records that
/// do not parse (a miss to the solver; prune removes them).
#[allow(clippy::type_complexity)]
fn read_records(root: &Path) -> (Vec<(PathBuf, SystemTime, Vec<Layer>)>, Vec<PathBuf>) {
    let (mut records, mut unreadable) = (Vec::new(), Vec::new());
    for e in fs::read_dir(root.join("cache/records"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let path = e.path();
        let Ok(bytes) = fs::read(&path) else { continue };
        let Ok(rec) = serde_json::from_slice::<Record>(&bytes) else {
            unreadable.push(path);
            continue;
        };
        let mtime = e
            .metadata()
            .and_then(|m| m.modified())
            .unwrap_or(SystemTime::UNIX_EPOCH);
        records.push((path, mtime, rec.layers));
    }
    (records, unreadable)
}

/// What the build cache of a data root holds on disk, for `berth system df`. `prune`
/// with `keep_storage: 0` frees all of it but `shared_bytes` (layers images reference
/// too); `all` adds the cache mounts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheUsage {
    /// Cache records.
    pub records: usize,
    /// Their layer blobs' bytes, each blob once.
    pub layer_bytes: u64,
    /// Of `layer_bytes`, what images in the store reference too.
    pub shared_bytes: u64,
    /// Unpacked layers.
    pub snapshots: usize,
    /// Their bytes.
    pub snapshot_bytes: u64,
    /// Bytes of the cache-miss history.
    pub history_bytes: u64,
    /// Cache mounts (`RUN --mount=type=cache`): id and bytes.
    pub mounts: Vec<(String, u64)>,
}

/// Measure the build cache of the data root `root` (nothing is locked or changed).
pub fn cache_usage(root: &Path, store: &Store) -> Result<CacheUsage> {
    let mut usage = CacheUsage::default();
    let images = store.referenced()?;
    let mut seen = HashSet::new();
    let (records, _) = read_records(root);
    usage.records = records.len();
    for l in records.iter().flat_map(|(_, _, layers)| layers) {
        if !seen.insert(l.blob.digest.clone()) {
            continue;
        }
        let size = store.blob_size(&l.blob.digest)?.unwrap_or(0);
        usage.layer_bytes += size;
        if images.contains(&l.blob.digest) {
            usage.shared_bytes += size;
        }
    }
    for e in fs::read_dir(root.join("snapshots/layers"))
        .into_iter()
        .flatten()
        .flatten()
    {
        usage.snapshots += 1;
        usage.snapshot_bytes += du(&e.path());
    }
    usage.history_bytes = du(&root.join("cache/history"));
    for e in fs::read_dir(root.join("cache/mounts"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let id = e.file_name().to_string_lossy().into_owned();
        usage.mounts.push((id, du(&e.path())));
    }
    usage.mounts.sort();
    Ok(usage)
}

/// Prune the build cache of the data root `root`.
pub fn prune(root: &Path, store: &Store, opts: &PruneOptions) -> Result<PruneReport> {
    let waiting = std::time::Instant::now();
    let _lock = store.lock_root(true)?;
    if waiting.elapsed().as_secs() > 1 {
        tracing::info!("waited for running builds to finish");
    }
    let mut report = PruneReport::default();
    let snaps_dir = root.join("snapshots/layers");
    let (read, unreadable) = read_records(root);
    for path in unreadable {
        let _ = fs::remove_file(&path);
    }
    let mut records: Vec<(PathBuf, SystemTime, Vec<Layer>, u64)> = Vec::new();
    for (path, mtime, layers) in read {
        let weight = match (layers.last(), chains(&layers).last()) {
            (Some(l), Some(c)) => l.blob.size + du(&snaps_dir.join(c.hex())),
            _ => 0,
        };
        records.push((path, mtime, layers, weight));
    }
    records.sort_by_key(|r| std::cmp::Reverse(r.1));
    // Keep the most recently used records within the budget.
    let mut kept = Vec::new();
    let mut used = 0u64;
    let mut removed_layers: Vec<Layer> = Vec::new();
    let now = SystemTime::now();
    for (path, last_used, layers, weight) in records {
        let stale = opts
            .keep_duration
            .is_some_and(|keep| now.duration_since(last_used).unwrap_or_default() > keep);
        if !stale && used.saturating_add(weight) <= opts.keep_storage {
            used += weight;
            kept.push(layers);
        } else {
            fs::remove_file(&path)
                .map_err(|e| BuildError::Io(format!("remove {}: {e}", path.display())))?;
            report.records += 1;
            removed_layers.extend(layers);
        }
    }
    let mut live_chains: HashSet<Digest> = kept.iter().flat_map(|l| chains(l)).collect();
    // Unpacked base images stay, as Docker keeps its images extracted: the next cold
    // build of a project need not unpack its base again. `--all` frees them too.
    if !opts.all {
        live_chains.extend(base_chains(store));
    }
    for e in fs::read_dir(&snaps_dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Ok(chain) = format!("sha256:{name}").parse::<Digest>() else {
            continue;
        };
        if !live_chains.contains(&chain) {
            report.bytes += du(&e.path());
            fs::remove_dir_all(e.path())
                .map_err(|err| BuildError::Io(format!("remove {}: {err}", e.path().display())))?;
            report.snapshots += 1;
        }
    }
    let live_blobs: HashSet<Digest> = kept
        .iter()
        .flatten()
        .map(|l| l.blob.digest.clone())
        .collect();
    // Taken before looking for references: a registry serving this root may link a
    // layer into a repository meanwhile, and `sweep_blob` keeps what it protected since.
    let marked_at = SystemTime::now();
    let images = store.referenced()?;
    let mut seen = HashSet::new();
    for l in removed_layers {
        let d = l.blob.digest;
        if live_blobs.contains(&d) || images.contains(&d) || !seen.insert(d.clone()) {
            continue;
        }
        if let Some(size) = store.sweep_blob(&d, marked_at, std::time::Duration::ZERO, false)? {
            report.blobs += 1;
            report.bytes += size;
        }
    }
    prune_history(root, opts.all, &mut report)?;
    // Downloads and git checkouts (`ADD` of URLs and repositories, remote Earthfile
    // references) are fetched again when needed, captured answers asked again: they go
    // when no record stays. A build using them holds the root lock shared, so not now.
    if kept.is_empty() {
        for d in [
            "cache/http",
            "cache/git",
            "cache/earthly-git",
            "cache/captures",
        ] {
            let p = root.join(d);
            if p.exists() {
                report.bytes += du(&p);
                fs::remove_dir_all(&p)
                    .map_err(|err| BuildError::Io(format!("remove {}: {err}", p.display())))?;
            }
        }
    }
    if opts.all {
        for e in fs::read_dir(root.join("cache/mounts"))
            .into_iter()
            .flatten()
            .flatten()
        {
            report.bytes += du(&e.path());
            let p = e.path();
            let r = if p.is_dir() {
                fs::remove_dir_all(&p)
            } else {
                fs::remove_file(&p)
            };
            r.map_err(|err| BuildError::Io(format!("remove {}: {err}", p.display())))?;
            report.cache_mounts += 1;
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_oci::{Algorithm, Descriptor};

    /// A record of one layer (a blob in the store) under key `key`, last used `age`
    /// seconds ago.
    fn record(root: &Path, store: &Store, key: &Digest, data: &[u8], age: u64) -> u64 {
        let blob = store.put_blob(Algorithm::Sha256, data).unwrap();
        let layer = serde_json::json!({
            "diff_id": Digest::sha256(data),
            "blob": Descriptor {
                media_type: berth_oci::media_type::OCI_LAYER_GZIP.into(),
                digest: blob.digest,
                size: blob.size,
                artifact_type: None,
                annotations: None,
                platform: None,
            },
        });
        let path = root.join("cache/records").join(key.hex());
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, serde_json::json!({ "layers": [layer] }).to_string()).unwrap();
        let when = SystemTime::now() - std::time::Duration::from_secs(age);
        fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(when)
            .unwrap();
        blob.size
    }

    fn history(root: &Path, build: &str, step: &str, key: Option<&Digest>) {
        let dir = root.join("cache/history").join(build);
        fs::create_dir_all(&dir).unwrap();
        let mut entry = serde_json::json!({"op": "run", "inputs": [], "files": {}});
        if let Some(k) = key {
            entry["key"] = serde_json::json!(k);
        }
        fs::write(dir.join(step), entry.to_string()).unwrap();
    }

    fn histories(root: &Path) -> Vec<String> {
        let mut out: Vec<String> = walk(&root.join("cache/history"));
        out.sort();
        out
    }

    fn walk(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        for e in fs::read_dir(dir).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if e.path().is_dir() {
                out.extend(walk(&e.path()).into_iter().map(|n| format!("{name}/{n}")));
                out.push(format!("{name}/"));
            } else {
                out.push(name);
            }
        }
        out
    }

    #[test]
    fn the_cache_gives_gc_its_layers_as_roots() {
        use berth_store::{GcOptions, GcRoots, NoRoots};
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let store = Store::open(root).unwrap();
        let cache = BuildCache::new(root);
        assert!(cache.roots(&store).unwrap().is_empty(), "no cache yet");
        let key = Digest::sha256(b"key");
        record(root, &store, &key, b"cached layer", 0);
        let layer = Digest::sha256(b"cached layer");
        let junk = root.join("cache/records/junk");
        fs::write(&junk, "not a record").unwrap();
        assert_eq!(cache.roots(&store).unwrap(), HashSet::from([layer.clone()]));

        // Unnamed by any repository and past the grace: only the roots keep it.
        let old = SystemTime::now() - std::time::Duration::from_secs(3600);
        fs::File::open(store.blob_path(&layer))
            .unwrap()
            .set_modified(old)
            .unwrap();
        let now = GcOptions {
            grace: std::time::Duration::ZERO,
            ..GcOptions::default()
        };
        assert!(store.gc(&now, &cache).unwrap().removed_blobs.is_empty());
        assert!(store.blob_size(&layer).unwrap().is_some());
        let dry = GcOptions {
            dry_run: true,
            ..now
        };
        assert_eq!(store.gc(&dry, &NoRoots).unwrap().removed_blobs, [layer]);
    }

    #[test]
    fn prune_drops_the_history_of_removed_records_and_all_of_it_with_all() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let store = Store::open(root).unwrap();
        let (old, new) = (Digest::sha256(b"old key"), Digest::sha256(b"new key"));
        record(root, &store, &old, b"old layer", 3600);
        let kept = record(root, &store, &new, b"new layer", 0);
        history(root, "a", "old-step", Some(&old));
        history(root, "a", "new-step", Some(&new));
        history(root, "b", "old-step", Some(&old));
        // Written before entries kept their key: nothing says it is live.
        history(root, "b", "legacy", None);

        let opts = PruneOptions {
            keep_storage: kept,
            keep_duration: None,
            all: false,
        };
        let report = prune(root, &store, &opts).unwrap();
        assert_eq!((report.records, report.histories), (1, 3));
        assert_eq!(histories(root), ["a/", "a/new-step"]);

        let report = prune(root, &store, &PruneOptions { all: true, ..opts }).unwrap();
        assert_eq!((report.records, report.histories), (0, 1));
        assert!(histories(root).is_empty(), "{:?}", histories(root));
    }

    #[test]
    fn usage_measures_what_prune_frees() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let store = Store::open(root).unwrap();
        let size = record(root, &store, &Digest::sha256(b"key"), b"a layer", 0);
        // Older than sweeping's clock margin.
        let old = SystemTime::now() - std::time::Duration::from_secs(3600);
        fs::File::open(store.blob_path(&Digest::sha256(b"a layer")))
            .unwrap()
            .set_modified(old)
            .unwrap();
        fs::create_dir_all(root.join("cache/mounts/m")).unwrap();
        fs::write(root.join("cache/mounts/m/f"), b"abc").unwrap();
        for d in [
            "cache/http/blobs",
            "cache/git/c",
            "cache/earthly-git/0123abcd",
            "cache/captures",
        ] {
            fs::create_dir_all(root.join(d)).unwrap();
            fs::write(root.join(d).join("f"), b"fetched").unwrap();
        }
        let u = cache_usage(root, &store).unwrap();
        assert_eq!((u.records, u.layer_bytes, u.shared_bytes), (1, size, 0));
        assert_eq!(u.mounts, [("m".to_string(), 3)]);
        let all = PruneOptions {
            keep_storage: 0,
            keep_duration: None,
            all: true,
        };
        let r = prune(root, &store, &all).unwrap();
        assert_eq!((r.records, r.blobs, r.cache_mounts), (1, 1, 1));
        assert!(!root.join("cache/http").exists() && !root.join("cache/git").exists());
        assert!(!root.join("cache/captures").exists());
        assert!(!root.join("cache/earthly-git").exists());
        assert_eq!(cache_usage(root, &store).unwrap(), CacheUsage::default());
    }

    #[test]
    fn cache_unused_longer_than_keep_duration_goes_whatever_the_budget() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let store = Store::open(root).unwrap();
        let (old, new) = (Digest::sha256(b"old key"), Digest::sha256(b"new key"));
        record(root, &store, &old, b"old layer", 3 * 3600);
        record(root, &store, &new, b"new layer", 60);
        let opts = PruneOptions {
            keep_storage: u64::MAX,
            keep_duration: Some(std::time::Duration::from_secs(3600)),
            all: false,
        };
        let report = prune(root, &store, &opts).unwrap();
        assert_eq!(report.records, 1, "only the record unused for 3 h goes");
        assert!(root.join("cache/records").join(new.hex()).exists());
        assert!(!root.join("cache/records").join(old.hex()).exists());
    }
}
