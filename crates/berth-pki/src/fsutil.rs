//! Small file helpers: atomic writes with a mode, random bytes, hex and UTC time text.

use std::fs::{self, File, OpenOptions, Permissions};
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::PkiError;

/// Writes `data` to `path` so that readers see the old or the new content, never a part:
/// a temporary file in the same directory (created with `mode`), fsync, rename, fsync of
/// the directory. The mode is set explicitly so a restrictive umask cannot change it.
pub(crate) fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), PkiError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(
        ".{name}.tmp-{}-{}",
        std::process::id(),
        hex(&random::<6>())
    ));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(PkiError::io("create", &tmp))?;
        file.set_permissions(Permissions::from_mode(mode))
            .map_err(PkiError::io("chmod", &tmp))?;
        file.write_all(data).map_err(PkiError::io("write", &tmp))?;
        file.sync_all().map_err(PkiError::io("fsync", &tmp))?;
        fs::rename(&tmp, path).map_err(PkiError::io("rename into place", path))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(PkiError::io("fsync directory", dir))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Creates `dir` (and its parents) with mode 0700 if it does not exist.
pub(crate) fn create_private_dir(dir: &Path) -> Result<(), PkiError> {
    use std::os::unix::fs::DirBuilderExt as _;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(PkiError::io("create directory", dir))
}

/// Reads a file as text.
pub(crate) fn read_text(path: &Path) -> Result<String, PkiError> {
    fs::read_to_string(path).map_err(PkiError::io("read", path))
}

/// `N` bytes from aws-lc-rs's CSPRNG.
pub(crate) fn random<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    // aws-lc's RNG fails only if the OS entropy source is gone; nothing sane can continue then.
    aws_lc_rs::rand::fill(&mut bytes).expect("the system random number generator failed");
    bytes
}

/// Lower-case hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Seconds since the Unix epoch (0 for times before it).
pub(crate) fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The time `secs` seconds after the Unix epoch.
pub(crate) fn from_unix_secs(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// `2026-12-02 03:50:48 UTC`: the form every message of this crate uses.
pub fn format_utc(t: SystemTime) -> String {
    let t = time::OffsetDateTime::from(t);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// Opens (creating) `path` and takes an exclusive `flock` on it, waiting for other holders
/// (other processes, or other open files in this one). Released when the file is dropped.
pub(crate) fn lock_exclusive(path: &Path) -> Result<File, PkiError> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(PkiError::io("open", path))?;
    file.lock().map_err(PkiError::io("lock", path))?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_text() {
        assert_eq!(format_utc(from_unix_secs(0)), "1970-01-01 00:00:00 UTC");
        assert_eq!(
            format_utc(from_unix_secs(1_796_183_448)),
            "2026-12-02 03:50:48 UTC"
        );
        assert_eq!(
            format_utc(from_unix_secs(951_782_400)),
            "2000-02-29 00:00:00 UTC"
        );
    }

    #[test]
    fn atomic_write_sets_mode_despite_umask_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        write_atomic(&path, b"one", 0o600).unwrap();
        write_atomic(&path, b"two", 0o644).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        use std::os::unix::fs::MetadataExt as _;
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o644);
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary file left"
        );
    }
}
