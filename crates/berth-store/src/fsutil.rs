//! Small file-system steps that every durable write in the store is made of.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

use crate::error::{IoContext, Result};

/// Make `dir` durable: its entries (renames, new files) survive a crash.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .ctx("sync directory", dir)
}

/// Write `data` to `path` atomically: a temporary file in the same directory, fsync,
/// rename over `path`, fsync the directory. Readers see the old content or the new one,
/// never a part.
pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let dir = path.parent().expect("store paths have a parent");
    fs::create_dir_all(dir).ctx("create directory", dir)?;
    let tmp = dir.join(format!(".tmp-{}-{}", std::process::id(), unique()));
    let result = (|| {
        let mut f = File::create(&tmp).ctx("create", &tmp)?;
        f.write_all(data).ctx("write", &tmp)?;
        f.sync_all().ctx("sync", &tmp)?;
        fs::rename(&tmp, path).ctx("rename into place", path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    sync_dir(dir)
}

/// Write `data` to `path` by rename, without fsync: readers still never see a torn
/// file, and a process crash loses nothing, but a power loss may lose the write. For
/// records a client re-creates by retrying (a blob link, an upload's owner), where an
/// fsync per request would cost more than it protects.
pub(crate) fn write_replace(path: &Path, data: &[u8]) -> Result<()> {
    let dir = path.parent().expect("store paths have a parent");
    fs::create_dir_all(dir).ctx("create directory", dir)?;
    let tmp = dir.join(format!(".tmp-{}-{}", std::process::id(), unique()));
    let result = fs::write(&tmp, data)
        .ctx("write", &tmp)
        .and_then(|()| fs::rename(&tmp, path).ctx("rename into place", path));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Read a small file, `None` when it does not exist.
pub(crate) fn read_optional(path: &Path) -> Result<Option<String>> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).ctx("read", path),
    }
}

/// Remove a file; a file already gone is fine.
pub(crate) fn remove_optional(path: &Path) -> Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).ctx("remove", path),
    }
}

/// Names in a directory (skipping temporaries), empty when it does not exist.
pub(crate) fn list_dir(dir: &Path) -> Result<Vec<String>> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).ctx("list", dir),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.ctx("list", dir)?;
        if let Ok(name) = entry.file_name().into_string()
            && !name.starts_with(".tmp-")
        {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// A process-unique counter for temporary names.
pub(crate) fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}
