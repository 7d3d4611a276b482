//! Blobs and ingests.
//!
//! Content is written through a [`Writer`] opened on an ingest *ref* (a caller-chosen
//! name, such as a registry upload's UUID). The writer hashes while it writes, so nothing
//! is ever read back or held in memory, and the content stays invisible until
//! [`Writer::commit`] checks size and digest and renames it into `blobs/`. A writer
//! dropped without commit leaves its ingest on disk, so a later writer on the same ref
//! resumes it (re-hashing what is there). A writer holds an advisory lock on its ingest,
//! which the OS drops when the process dies, so two writers never share one ingest.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use berth_oci::{Algorithm, Digest, Hasher};

use crate::error::{Error, IoContext, Result};
use crate::fsutil::{self, list_dir, sync_dir};
use crate::meta::Repos;
use crate::protect::BlobGuard;

/// A content store rooted at one directory. Cheap to clone; all state is on disk.
#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
}

/// The outcome of a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// The digest the content is stored under.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// The blob was already in the store (the new copy was discarded). Callers treat
    /// this as success.
    pub existed: bool,
}

/// An ingest found on disk.
#[derive(Debug, Clone)]
pub struct IngestInfo {
    /// Its ref.
    pub reference: String,
    /// Bytes written so far.
    pub offset: u64,
    /// Last write.
    pub updated: SystemTime,
    /// What the starter recorded (for a registry upload: the repository).
    pub owner: Option<String>,
}

impl Store {
    /// Open (creating if needed) the store at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Store> {
        let root = root.into();
        for dir in ["blobs/sha256", "blobs/sha512", "ingest", "repositories"] {
            let p = root.join(dir);
            fs::create_dir_all(&p).ctx("create store directory", &p)?;
        }
        Ok(Store { root })
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Take the root's build lock: shared by builds for their whole run, exclusive for
    /// whoever deletes content (`berth prune`, `berth registry gc`), so nothing a running
    /// build uses disappears under it. Released when the file is dropped.
    pub fn lock_root(&self, exclusive: bool) -> Result<File> {
        let dir = self.root.join("cache");
        fs::create_dir_all(&dir).ctx("create directory", &dir)?;
        let path = dir.join("prune.lock");
        let f = File::create(&path).ctx("create lock", &path)?;
        if exclusive { f.lock() } else { f.lock_shared() }.ctx("lock", &path)?;
        Ok(f)
    }

    /// Repository metadata kept in this store.
    pub fn repos(&self) -> Repos {
        Repos::new(self.root.join("repositories"))
    }

    /// Where a committed blob lives.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root
            .join("blobs")
            .join(digest.algorithm().as_str())
            .join(digest.hex())
    }

    /// Size of a committed blob, `None` if absent.
    pub fn blob_size(&self, digest: &Digest) -> Result<Option<u64>> {
        let path = self.blob_path(digest);
        match fs::metadata(&path) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).ctx("stat blob", path),
        }
    }

    /// Open a committed blob for reading, with its size; `None` if absent.
    pub fn open_blob(&self, digest: &Digest) -> Result<Option<(File, u64)>> {
        let path = self.blob_path(digest);
        match File::open(&path) {
            Ok(f) => {
                let len = f.metadata().ctx("stat blob", &path)?.len();
                Ok(Some((f, len)))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).ctx("open blob", path),
        }
    }

    /// Read a whole (small) blob, `None` if absent.
    pub fn read_blob(&self, digest: &Digest) -> Result<Option<Vec<u8>>> {
        let path = self.blob_path(digest);
        match fs::read(&path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).ctx("read blob", path),
        }
    }

    /// Store small content in one step (manifests). Returns its digest.
    pub fn put_blob(&self, algorithm: Algorithm, data: &[u8]) -> Result<Committed> {
        self.put_blob_protected(algorithm, data).map(|(c, _)| c)
    }

    /// [`Store::put_blob`], returning the blob protected until the guard is dropped.
    pub fn put_blob_protected(
        &self,
        algorithm: Algorithm,
        data: &[u8],
    ) -> Result<(Committed, BlobGuard)> {
        let digest = Digest::of(algorithm, data);
        if let Some(guard) = self.protect_blob(&digest)? {
            let committed = Committed {
                digest,
                size: guard.size(),
                existed: true,
            };
            return Ok((committed, guard));
        }
        let reference = format!(
            "put-{}-{}-{}",
            digest.hex(),
            std::process::id(),
            fsutil::unique()
        );
        let mut w = self.writer(&reference, algorithm)?;
        w.write_all(data)?;
        w.commit_protected(Some(&digest), Some(data.len() as u64))
    }

    /// Delete a committed blob, unconditionally. Garbage collection uses
    /// [`Store::sweep_blob`], which respects protection; this is for tests and repairs.
    pub fn delete_blob(&self, digest: &Digest) -> Result<bool> {
        let removed = fsutil::remove_optional(&self.blob_path(digest))?;
        if let Err(e) = self.forget(digest) {
            tracing::warn!(blob = %digest, error = %e, "hints of a deleted blob not removed");
        }
        Ok(removed)
    }

    /// Every committed blob, by walking `blobs/`.
    pub fn blobs(&self) -> Result<Vec<Digest>> {
        let mut out = Vec::new();
        for alg in Algorithm::ALL {
            let dir = self.root.join("blobs").join(alg.as_str());
            for name in list_dir(&dir)? {
                if let Ok(d) = format!("{}:{name}", alg.as_str()).parse() {
                    out.push(d);
                }
            }
        }
        Ok(out)
    }

    fn ingest_dir(&self, reference: &str) -> Result<PathBuf> {
        let ok = !reference.is_empty()
            && reference.len() <= 200
            && reference
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
            && !reference.starts_with('.');
        if !ok {
            return Err(Error::Invalid(format!(
                "ingest ref {reference:?} must be 1-200 characters of [A-Za-z0-9._-], not starting with '.'"
            )));
        }
        Ok(self.root.join("ingest").join(reference))
    }

    /// Open a writer on ingest `reference`, creating it or resuming what is there.
    ///
    /// Fails with [`Error::Locked`] while another writer has it open.
    pub fn writer(&self, reference: &str, algorithm: Algorithm) -> Result<Writer> {
        let dir = self.ingest_dir(reference)?;
        let path = dir.join("data");
        let mut attempts = 0;
        let mut file = loop {
            fs::create_dir_all(&dir).ctx("create ingest", &dir)?;
            let file = OpenOptions::new()
                .read(true)
                .append(true)
                .create(true)
                .open(&path)
                .ctx("open ingest", &path)?;
            match file.try_lock() {
                Ok(()) => {}
                Err(fs::TryLockError::WouldBlock) => {
                    return Err(Error::Locked(reference.to_string()));
                }
                Err(fs::TryLockError::Error(e)) => return Err(e).ctx("lock ingest", &path),
            }
            // The previous writer may have committed or aborted the ingest between our
            // open and our lock: then the file we hold is no longer `path`, and writing
            // to it would be writing to nothing. Start over on the current one.
            use std::os::unix::fs::MetadataExt;
            let held = file.metadata().ctx("stat ingest", &path)?;
            match fs::metadata(&path) {
                Ok(now) if now.dev() == held.dev() && now.ino() == held.ino() => break file,
                _ if attempts < 3 => attempts += 1,
                _ => return Err(Error::Locked(reference.to_string())),
            }
        };
        let mut hasher = algorithm.hasher();
        let mut offset = 0u64;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buf).ctx("resume ingest", &path)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            offset += n as u64;
        }
        Ok(Writer {
            store: self.clone(),
            reference: reference.to_string(),
            path,
            file,
            algorithm,
            hasher,
            offset,
        })
    }

    /// Record who started an ingest (a registry upload records its repository).
    pub fn set_ingest_owner(&self, reference: &str, owner: &str) -> Result<()> {
        let dir = self.ingest_dir(reference)?;
        fsutil::write_replace(&dir.join("owner"), owner.as_bytes())
    }

    /// Status of an ingest, `None` if there is none.
    pub fn ingest(&self, reference: &str) -> Result<Option<IngestInfo>> {
        let dir = self.ingest_dir(reference)?;
        let data = dir.join("data");
        let meta = match fs::metadata(&data) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).ctx("stat ingest", data),
        };
        Ok(Some(IngestInfo {
            reference: reference.to_string(),
            offset: meta.len(),
            updated: meta.modified().ctx("stat ingest", &data)?,
            owner: fsutil::read_optional(&dir.join("owner"))?,
        }))
    }

    /// Every ingest on disk.
    pub fn ingests(&self) -> Result<Vec<IngestInfo>> {
        let mut out = Vec::new();
        for name in list_dir(&self.root.join("ingest"))? {
            if let Ok(Some(info)) = self.ingest(&name) {
                out.push(info);
            }
        }
        Ok(out)
    }

    /// Remove an ingest. Fails with [`Error::Locked`] while a writer has it open.
    pub fn abort(&self, reference: &str) -> Result<()> {
        let dir = self.ingest_dir(reference)?;
        let path = dir.join("data");
        match File::open(&path) {
            Ok(f) => match f.try_lock() {
                Ok(()) => remove_ingest_dir(&dir),
                Err(fs::TryLockError::WouldBlock) => Err(Error::Locked(reference.to_string())),
                Err(fs::TryLockError::Error(e)) => Err(e).ctx("lock ingest", &path),
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => remove_ingest_dir(&dir),
            Err(e) => Err(e).ctx("open ingest", path),
        }
    }
}

fn remove_ingest_dir(dir: &Path) -> Result<()> {
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).ctx("remove ingest", dir),
    }
}

/// An open ingest. Write with [`Writer::write_all`], then [`Writer::commit`]; dropping it
/// without commit keeps the ingest for a later resume.
pub struct Writer {
    store: Store,
    reference: String,
    path: PathBuf,
    file: File,
    algorithm: Algorithm,
    hasher: Hasher,
    offset: u64,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("reference", &self.reference)
            .field("offset", &self.offset)
            .finish()
    }
}

/// Lets a writer be the sink of encoders and `io::copy`.
impl Write for Writer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_all(buf).map_err(io::Error::other)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Writer {
    /// The ingest's ref.
    pub fn reference(&self) -> &str {
        &self.reference
    }

    /// Bytes written so far (including those of earlier writers on this ingest).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// A second, read-only handle on the ingest's data, to read what is written while it
    /// is written (a pull-through cache streams a blob to its clients as it arrives).
    /// The handle stays valid after commit or abort: it is the same file.
    pub fn reader(&self) -> Result<File> {
        File::open(&self.path).ctx("open ingest", &self.path)
    }

    /// Append `data`, hashing it on the way.
    pub fn write_all(&mut self, data: &[u8]) -> Result<()> {
        self.file.write_all(data).ctx("write ingest", &self.path)?;
        self.hasher.update(data);
        self.offset += data.len() as u64;
        Ok(())
    }

    /// Cut the ingest back to its first `len` bytes (undoing a refused chunk), re-hashing
    /// what stays.
    pub fn truncate(&mut self, len: u64) -> Result<()> {
        if len >= self.offset {
            return Ok(());
        }
        self.file.set_len(len).ctx("truncate ingest", &self.path)?;
        let mut hasher = self.algorithm.hasher();
        let mut f = File::open(&self.path)
            .ctx("open ingest", &self.path)?
            .take(len);
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf).ctx("re-hash ingest", &self.path)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        self.hasher = hasher;
        self.offset = len;
        Ok(())
    }

    /// The digest of what is written so far, without committing.
    pub fn digest(&self) -> Digest {
        self.hasher.clone().finish()
    }

    /// Check the content against `expected` digest and `size` (either may be `None`),
    /// then make it visible under its digest. Consumes the writer, so the ingest is
    /// closed whatever the outcome. On a mismatch the ingest is kept and the error names
    /// both sides; the caller decides whether to [`Store::abort`] it.
    pub fn commit(self, expected: Option<&Digest>, size: Option<u64>) -> Result<Committed> {
        self.commit_protected(expected, size).map(|(c, _)| c)
    }

    /// [`Writer::commit`], returning the new blob protected from garbage collection
    /// (see [`Store::protect_blob`]) until the guard is dropped: a caller that records
    /// the blob somewhere (a repository link) does so before dropping it.
    pub fn commit_protected(
        self,
        expected: Option<&Digest>,
        size: Option<u64>,
    ) -> Result<(Committed, BlobGuard)> {
        let Writer {
            store,
            reference,
            path,
            file,
            algorithm: _,
            hasher,
            offset,
        } = self;
        if let Some(want) = size
            && want != offset
        {
            return Err(Error::SizeMismatch {
                expected: want,
                got: offset,
            });
        }
        let got = hasher.finish();
        if let Some(want) = expected
            && *want != got
        {
            return Err(Error::DigestMismatch {
                expected: want.clone(),
                got,
                size: offset,
            });
        }
        let dir = path
            .parent()
            .expect("ingest data has a parent")
            .to_path_buf();
        let target = store.blob_path(&got);
        if let Some(guard) = store.protect_blob(&got)? {
            drop(file);
            if let Err(e) = remove_ingest_dir(&dir) {
                tracing::warn!(error = %e, reference, "blob already committed but the ingest was not removed");
            }
            let committed = Committed {
                digest: got,
                size: offset,
                existed: true,
            };
            return Ok((committed, guard));
        }
        // Durable before visible: the data must reach the disk before the link can.
        file.sync_all().ctx("sync ingest", &path)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o444))
            .ctx("make blob read-only", &path)?;
        // Out of the ingest first (a new writer on this ref starts a new file), then
        // unlocked: the blob's lock is the inode's, and we take it shared below.
        let blob_dir = target.parent().expect("blob has a parent");
        let tmp = blob_dir.join(format!(".tmp-{}-{}", std::process::id(), fsutil::unique()));
        fs::rename(&path, &tmp).ctx("move ingest to the blob store", &tmp)?;
        let _ = file.unlock();
        drop(file);
        if let Err(e) = remove_ingest_dir(&dir) {
            // The data has left it; what remains is litter gc removes.
            tracing::warn!(error = %e, reference, "ingest not removed after commit");
        }
        // The blob appears by hard link, never by rename: a link does not replace a blob
        // gc holds locked (see `protect`), so gc removes only the file it checked. The
        // temporary name stays until the blob is protected, so a blob gc removed between
        // our link and our lock is linked again.
        let result = (|| {
            for _ in 0..8 {
                let linked = match fs::hard_link(&tmp, &target) {
                    Ok(()) => {
                        if let Err(e) = sync_dir(blob_dir) {
                            tracing::warn!(error = %e, "blob committed but its directory was not synced");
                        }
                        true
                    }
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
                    Err(e) => return Err(e).ctx("commit blob", &target),
                };
                if let Some(guard) = store.protect_blob(&got)? {
                    let committed = Committed {
                        digest: got.clone(),
                        size: offset,
                        existed: !linked,
                    };
                    return Ok((committed, guard));
                }
            }
            Err(Error::Locked(format!(
                "{reference} (blob {got} was removed by garbage collection as often as it was committed)"
            )))
        })();
        let _ = fs::remove_file(&tmp);
        result
    }
}
