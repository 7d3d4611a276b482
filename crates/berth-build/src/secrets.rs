//! Where `RUN --mount=type=secret` files are staged, and how the ones a killed build left
//! behind are found again.
//!
//! A secret lives in memory (/dev/shm is a tmpfs; under the data root's `tmp/` where there
//! is none), in a new directory only its owner may enter, for the length of one step. The
//! directory is named `berth-secret-<root>-<token>-<n>`: `<root>` is a hash of the data
//! root, `<token>` the owner token of the process (see [`berth_snapshot::owner`]). A build
//! killed with `-9` cannot remove its own; the next build on the same root does, once the
//! owner's lock says it is gone. /dev/shm is shared by every data root on the machine, and
//! an owner is only known in the owners directory of its own root, so the root's hash
//! keeps a build from judging (and removing) the live secrets of another root's build.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::error::{BuildError, Result};

/// The directory secret directories go to, and the name prefix of this root's.
fn place(root: &Path) -> (PathBuf, String) {
    let shm = Path::new("/dev/shm");
    let base = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        root.join("tmp")
    };
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    root.canonicalize()
        .unwrap_or_else(|_| root.to_path_buf())
        .hash(&mut h);
    (base, format!("berth-secret-{:016x}-", h.finish()))
}

/// Make a new directory (mode 0700, never one that was already there) for a secret of a
/// build on `root`; `unique` starts with this process's owner token.
pub(crate) fn stage_dir(root: &Path, unique: &str) -> Result<PathBuf> {
    let (base, prefix) = place(root);
    let dir = base.join(format!("{prefix}{unique}"));
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|e| BuildError::Io(format!("create secret directory {}: {e}", dir.display())))?;
    Ok(dir)
}

/// Remove the secret directories of `root` whose owners (judged in `owners`) are gone.
/// Only real directories of this user are touched: anyone may create names in /dev/shm.
pub(crate) fn sweep(root: &Path, owners: &Path) {
    let (base, prefix) = place(root);
    let Ok(entries) = fs::read_dir(&base) else {
        return;
    };
    let me = rustix::process::geteuid().as_raw();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(&prefix) else {
            continue;
        };
        let ours = fs::symlink_metadata(e.path()).is_ok_and(|m| m.is_dir() && m.uid() == me);
        if ours
            && berth_snapshot::owner::is_gone(owners, rest)
            && let Err(err) = fs::remove_dir_all(e.path())
        {
            tracing::warn!("remove leftover secret {}: {err}", e.path().display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leftovers_of_dead_owners_of_this_root_go() {
        let d = tempfile::tempdir().unwrap();
        let (root, other, owners) = (
            d.path().join("root"),
            d.path().join("other"),
            d.path().join("owners"),
        );
        for p in [&root, &other] {
            fs::create_dir_all(p).unwrap();
        }
        berth_snapshot::owner::register(&owners).unwrap();
        let token = berth_snapshot::owner::token();
        let live = stage_dir(&root, &format!("{token}-t1")).unwrap();
        // A dead owner of this root (no lock in its owners directory).
        let dead = stage_dir(&root, "1x00000000deadbeef-t2").unwrap();
        fs::write(dead.join("value"), "s3cret").unwrap();
        // Another root's secret, whose owner this root cannot know.
        let foreign = stage_dir(&other, "1x00000000deadbeef-t3").unwrap();
        assert_eq!(
            fs::metadata(&dead).unwrap().mode() & 0o777,
            0o700,
            "private from the start"
        );
        assert!(
            stage_dir(&root, &format!("{token}-t1")).is_err(),
            "always new"
        );
        sweep(&root, &owners);
        assert!(live.exists(), "a live owner's secret stays");
        assert!(!dead.exists(), "a dead owner's secret is removed");
        assert!(foreign.exists(), "another root's secret is left alone");
        for p in [live, foreign] {
            fs::remove_dir_all(p).unwrap();
        }
    }
}
