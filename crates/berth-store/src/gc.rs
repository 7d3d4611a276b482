//! Mark-and-sweep garbage collection and consistency checks.
//!
//! Marking walks every repository: each linked manifest is live, and so is everything it
//! references (config, layers, child manifests). Blob links that no manifest references
//! are dropped. Sweeping deletes unmarked blobs and expired ingests.
//!
//! GC may run while a registry serves the same root. A push uploads blobs before the
//! manifest that references them, so blobs and blob links younger than the *grace
//! period* are always kept; an upload still in progress holds its ingest locked, so it
//! is never swept.

use std::collections::HashSet;
use std::fs;
use std::io::Read;
use std::time::{Duration, SystemTime};

use berth_oci::{Digest, Manifest};

use crate::content::Store;
use crate::error::{IoContext, Result};

/// How a collection runs.
#[derive(Debug, Clone)]
pub struct GcOptions {
    /// Report what would be removed, remove nothing.
    pub dry_run: bool,
    /// Blobs and links younger than this are kept even when unreferenced.
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
    /// Blobs whose content does not hash to their name.
    pub corrupt: Vec<Digest>,
    /// `(repository, digest)` of manifests linked but missing from the blob store.
    pub missing: Vec<(String, Digest)>,
}

fn older_than(path: &std::path::Path, age: Duration, now: SystemTime) -> bool {
    fs::metadata(path)
        .and_then(|m| m.modified())
        .map(|t| now.duration_since(t).unwrap_or_default() >= age)
        .unwrap_or(false)
}

impl Store {
    /// Every digest some repository's manifests reach: the manifests, their configs,
    /// layers and child manifests. (Blobs only linked, never referenced, are not in it.)
    pub fn referenced(&self) -> Result<HashSet<Digest>> {
        let repos = self.repos();
        let mut live = HashSet::new();
        for name in repos.repositories()? {
            for m in repos.manifests(&name)? {
                if let Some(bytes) = self.read_blob(&m)?
                    && let Ok((manifest, _)) = Manifest::parse(&bytes, None)
                {
                    for d in manifest.blobs().chain(manifest.manifests.iter()) {
                        live.insert(d.digest.clone());
                    }
                }
                live.insert(m);
            }
        }
        Ok(live)
    }

    /// Collect garbage: see the module docs.
    pub fn gc(&self, opts: &GcOptions) -> Result<GcReport> {
        // Builds hold this lock shared; the build cache's layers are roots too.
        let _lock = self.lock_root(true)?;
        let now = SystemTime::now();
        let repos = self.repos();
        let mut live: HashSet<Digest> = self.cache_roots()?;
        let mut report = GcReport::default();
        for name in repos.repositories()? {
            let mut referenced: HashSet<Digest> = HashSet::new();
            for m in repos.manifests(&name)? {
                live.insert(m.clone());
                let Some(bytes) = self.read_blob(&m)? else {
                    continue;
                };
                let Ok((manifest, _)) = Manifest::parse(&bytes, None) else {
                    continue;
                };
                for d in manifest.blobs().chain(manifest.manifests.iter()) {
                    referenced.insert(d.digest.clone());
                    live.insert(d.digest.clone());
                }
            }
            for b in repos.blobs(&name)? {
                if referenced.contains(&b) {
                    continue;
                }
                let link = self
                    .root()
                    .join("repositories")
                    .join(&name)
                    .join("_blobs")
                    .join(b.algorithm().as_str())
                    .join(b.hex());
                if older_than(&link, opts.grace, now) {
                    report.removed_links += 1;
                    if !opts.dry_run {
                        repos.unlink_blob(&name, &b)?;
                    }
                } else {
                    live.insert(b);
                }
            }
        }
        report.live_blobs = live.len();
        for blob in self.blobs()? {
            if live.contains(&blob) {
                continue;
            }
            let path = self.blob_path(&blob);
            if !older_than(&path, opts.grace, now) {
                continue;
            }
            report.removed_bytes += fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            if !opts.dry_run {
                self.delete_blob(&blob)?;
            }
            report.removed_blobs.push(blob);
        }
        for ingest in self.ingests()? {
            let age = now.duration_since(ingest.updated).unwrap_or_default();
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

    /// Re-hash every blob and check every manifest link has its blob.
    pub fn check(&self) -> Result<CheckReport> {
        let mut report = CheckReport::default();
        let mut buf = vec![0u8; 1 << 20];
        for blob in self.blobs()? {
            report.blobs += 1;
            let path = self.blob_path(&blob);
            let mut f = fs::File::open(&path).ctx("open blob", &path)?;
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
                if self.blob_size(&m)?.is_none() {
                    report.missing.push((name.clone(), m));
                }
            }
        }
        Ok(report)
    }
}
