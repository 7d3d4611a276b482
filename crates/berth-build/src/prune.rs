//! `berth prune`: free build cache, least recently used first.
//!
//! The build cache is the cache records (a step's key → its layers), the unpacked
//! snapshots and the layer blobs only records refer to. Images named in the store are
//! never removed, though their unpacked snapshots may be (they are unpacked again when
//! a build needs them). Builds hold a shared lock on the root for their whole run and
//! prune takes it exclusively, so prune never removes a layer a running build mounts.

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
    /// Also remove cache mounts (`RUN --mount=type=cache`).
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
    /// Bytes freed (approximate: file sizes).
    pub bytes: u64,
}

#[derive(serde::Deserialize)]
struct Record {
    layers: Vec<Layer>,
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

/// Prune the build cache of the data root `root`.
pub fn prune(root: &Path, store: &Store, opts: &PruneOptions) -> Result<PruneReport> {
    let waiting = std::time::Instant::now();
    let _lock = store.lock_root(true)?;
    if waiting.elapsed().as_secs() > 1 {
        tracing::info!("waited for running builds to finish");
    }
    let mut report = PruneReport::default();
    let records_dir = root.join("cache/records");
    let snaps_dir = root.join("snapshots/layers");
    let mut records: Vec<(PathBuf, SystemTime, Vec<Layer>, u64)> = Vec::new();
    for e in fs::read_dir(&records_dir).into_iter().flatten().flatten() {
        let path = e.path();
        let Ok(bytes) = fs::read(&path) else { continue };
        let Ok(rec) = serde_json::from_slice::<Record>(&bytes) else {
            let _ = fs::remove_file(&path);
            continue;
        };
        let mtime = e
            .metadata()
            .and_then(|m| m.modified())
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let weight = match (rec.layers.last(), chains(&rec.layers).last()) {
            (Some(l), Some(c)) => l.blob.size + du(&snaps_dir.join(c.hex())),
            _ => 0,
        };
        records.push((path, mtime, rec.layers, weight));
    }
    records.sort_by_key(|r| std::cmp::Reverse(r.1));
    // Keep the most recently used records within the budget.
    let mut kept = Vec::new();
    let mut used = 0u64;
    let mut removed_layers: Vec<Layer> = Vec::new();
    for (path, _, layers, weight) in records {
        if used + weight <= opts.keep_storage {
            used += weight;
            kept.push(layers);
        } else {
            fs::remove_file(&path)
                .map_err(|e| BuildError::Io(format!("remove {}: {e}", path.display())))?;
            report.records += 1;
            removed_layers.extend(layers);
        }
    }
    let live_chains: HashSet<Digest> = kept.iter().flat_map(|l| chains(l)).collect();
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
