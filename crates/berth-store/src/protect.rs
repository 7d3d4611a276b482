//! Protection of blobs from garbage collection while a request relies on them.
//!
//! A blob's *stamp* is its file's modification time. Whoever relies on a blob (a registry
//! HEAD or GET, a mount, an upload commit, a manifest PUT checking its references) holds a
//! shared `flock` on the blob file for as long as it relies on it, and stamps it with the
//! current time when it lets go ([`BlobGuard`]). Garbage collection removes a blob only
//! under an exclusive `flock` on that same file, and only when the blob was unmarked and
//! its stamp is older than the collection's cutoff ([`Store::sweep_blob`]). Blobs appear by
//! hard link, which never replaces a file, so the file gc locked is the file it removes.
//!
//! Why this keeps every committed manifest whole is written out in docs/ARCHITECTURE.md
//! ("gc beside pushes"); the proof needs exactly these rules:
//!
//! 1. a manifest PUT holds guards on every blob it references (and on its own blob) from
//!    before it checks them until after its link is written;
//! 2. a guard's stamp is taken when it is dropped, from the wall clock
//!    (`SystemTime::now`, not the kernel's coarse file time), and is at most
//!    [`STAMP_SLACK`] old afterwards;
//! 3. gc takes its mark time before it lists any manifest, and removes only blobs whose
//!    stamp is older than `mark time - grace -` [`CLOCK_MARGIN`].

use std::fs::{self, File, Metadata};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use berth_oci::Digest;

use crate::content::Store;
use crate::error::{IoContext, Result};

/// A guard does not re-stamp a blob whose stamp is younger than this, so a burst of HEADs
/// costs one `futimens`, not one each.
pub const STAMP_SLACK: Duration = Duration::from_millis(500);

/// gc keeps blobs stamped within this much before its cutoff. It must cover
/// [`STAMP_SLACK`] plus the file system's timestamp granularity (1 ns on ext4, xfs, btrfs
/// and tmpfs; 1 s on the coarsest Linux file systems berth may run on). Every process
/// reads the same system clock, so no skew between processes needs covering.
pub const CLOCK_MARGIN: Duration = Duration::from_secs(2);

/// A committed blob, held so that garbage collection cannot remove it. Dropping it
/// stamps the blob (see the module docs) and releases it.
#[derive(Debug)]
pub struct BlobGuard {
    file: Option<File>,
    path: PathBuf,
    size: u64,
}

impl BlobGuard {
    /// The blob's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Stamp and release the blob, keeping the open file to read it.
    pub fn into_file(mut self) -> File {
        let file = self.file.take().expect("guard holds its file");
        release(&file, &self.path);
        file
    }
}

impl Drop for BlobGuard {
    fn drop(&mut self) {
        if let Some(file) = self.file.take() {
            release(&file, &self.path);
        }
    }
}

fn release(file: &File, path: &Path) {
    let now = SystemTime::now();
    let fresh = file
        .metadata()
        .and_then(|m| m.modified())
        .is_ok_and(|t| t + STAMP_SLACK >= now);
    if !fresh && let Err(e) = file.set_modified(now) {
        // Only the blob's owner may set its times: a root shared by several users loses
        // gc's protection for this blob (gc may then remove it if nothing references it).
        tracing::warn!(path = %path.display(), error = %e, "blob not stamped; gc beside pushes needs one owner of the store");
    }
    let _ = file.unlock();
}

/// Whether `file` (open, locked) is still the one at `path`. `Ok(None)`: `path` is gone.
fn same_file(file: &File, path: &Path) -> Result<Option<(bool, Metadata)>> {
    let held = file.metadata().ctx("stat blob", path)?;
    match fs::metadata(path) {
        Ok(now) => Ok(Some((
            now.dev() == held.dev() && now.ino() == held.ino(),
            held,
        ))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).ctx("stat blob", path),
    }
}

impl Store {
    /// Hold committed blob `digest` so that gc cannot remove it until the guard is dropped;
    /// `None` if the blob is absent. Callers that answer a client on the strength of a
    /// blob's presence (HEAD, mount, a manifest's references) take it first and drop it
    /// after the answer's effects (links) are written.
    pub fn protect_blob(&self, digest: &Digest) -> Result<Option<BlobGuard>> {
        let path = self.blob_path(digest);
        loop {
            let file = match File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e).ctx("open blob", path),
            };
            // gc holds its exclusive lock only to check a stamp and unlink: short.
            file.lock_shared().ctx("lock blob", &path)?;
            match same_file(&file, &path)? {
                None => return Ok(None),
                // gc removed the one we opened and a new one was committed: take that.
                Some((false, _)) => continue,
                Some((true, meta)) => {
                    return Ok(Some(BlobGuard {
                        file: Some(file),
                        path,
                        size: meta.len(),
                    }));
                }
            }
        }
    }

    /// Remove blob `digest` if nobody relies on it: it is removed only when no guard holds
    /// it and its stamp is older than `marked_at - grace -` [`CLOCK_MARGIN`], where
    /// `marked_at` is a time taken before the caller looked for references to the blob
    /// and found none. Returns the size removed (or that would be, on a dry run).
    pub fn sweep_blob(
        &self,
        digest: &Digest,
        marked_at: SystemTime,
        grace: Duration,
        dry_run: bool,
    ) -> Result<Option<u64>> {
        let cutoff = cutoff(marked_at, grace);
        let path = self.blob_path(digest);
        let Some((file, meta)) = self.try_lock_exclusive(&path)? else {
            return Ok(None);
        };
        if !stamped_before(&meta, cutoff) {
            return Ok(None);
        }
        if !dry_run {
            // Still under the lock: a guard cannot be taken, nor a new blob linked here.
            crate::fsutil::remove_optional(&path)?;
            drop(file);
            if let Err(e) = self.forget(digest) {
                tracing::warn!(blob = %digest, error = %e, "hints of a removed blob not removed");
            }
        }
        Ok(Some(meta.len()))
    }

    /// Run `f` with blob `digest` held exclusively (its metadata, or `None` when the blob
    /// is absent); returns `None` without calling `f` when someone holds the blob.
    pub(crate) fn with_blob_exclusive<T>(
        &self,
        digest: &Digest,
        f: impl FnOnce(Option<&Metadata>) -> Result<T>,
    ) -> Result<Option<T>> {
        let path = self.blob_path(digest);
        if !path.exists() {
            return f(None).map(Some);
        }
        match self.try_lock_exclusive(&path)? {
            Some((_file, meta)) => f(Some(&meta)).map(Some),
            None if !path.exists() => f(None).map(Some),
            None => Ok(None),
        }
    }

    /// Lock the blob at `path` exclusively without waiting; `None` when it is absent or
    /// held (a blob in use is being stamped, so gc would keep it anyway).
    fn try_lock_exclusive(&self, path: &Path) -> Result<Option<(File, Metadata)>> {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).ctx("open blob", path),
        };
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Ok(None),
            Err(fs::TryLockError::Error(e)) => return Err(e).ctx("lock blob", path),
        }
        match same_file(&file, path)? {
            Some((true, meta)) => Ok(Some((file, meta))),
            _ => Ok(None),
        }
    }
}

/// The stamp below which gc may remove an unmarked blob.
pub(crate) fn cutoff(marked_at: SystemTime, grace: Duration) -> SystemTime {
    marked_at
        .checked_sub(grace + CLOCK_MARGIN)
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// Whether `meta`'s stamp is older than `cutoff`.
pub(crate) fn stamped_before(meta: &Metadata, cutoff: SystemTime) -> bool {
    meta.modified().is_ok_and(|t| t < cutoff)
}
