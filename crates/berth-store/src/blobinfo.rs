//! What berth learned about a committed blob that its bytes do not say, kept beside it:
//!
//! ```text
//! root/blobinfo/<alg>/<hex>/sources/<registry>+<repository>   the blob is in that remote repository
//! root/blobinfo/<alg>/<hex>/uncompressed                      "<diff_id> <size>" of a compressed layer
//! root/blobinfo/<alg>/<hex>/variant.<compression>             "<digest> <size>": the same layer compressed so
//! ```
//!
//! Sources let a push mount a blob from another repository of the same registry instead
//! of uploading it (containerd keeps the same fact as a `distribution.source` label);
//! the uncompressed digest and size let berth hand a layer to a local Docker daemon
//! uncompressed without reading it twice. Both are hints: a wrong or missing one costs a
//! fallback (an upload, a decompression), never a wrong result, because every consumer
//! verifies digests. They are written by rename and removed with their blob by gc.

use std::path::PathBuf;

use berth_oci::Digest;

use crate::content::Store;
use crate::error::{IoContext, Result};
use crate::fsutil;

/// A layer's uncompressed form: its digest (the image config's diff_id) and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uncompressed {
    /// Digest of the uncompressed tar.
    pub diff_id: Digest,
    /// Its size in bytes.
    pub size: u64,
}

impl Store {
    pub(crate) fn info_dir(&self, digest: &Digest) -> PathBuf {
        self.root()
            .join("blobinfo")
            .join(digest.algorithm().as_str())
            .join(digest.hex())
    }

    /// Remember that `registry`'s `repository` holds blob `digest`. Hints are best
    /// effort: a failure to write one is logged, never an error.
    pub fn add_source(&self, digest: &Digest, registry: &str, repository: &str) {
        let name = format!("{registry}+{}", repository.replace('/', "+"));
        let path = self.info_dir(digest).join("sources").join(name);
        if !path.exists() {
            hint(fsutil::write_replace(&path, b""));
        }
    }

    /// The repositories of `registry` known to hold blob `digest`.
    pub fn sources(&self, digest: &Digest, registry: &str) -> Result<Vec<String>> {
        let prefix = format!("{registry}+");
        Ok(fsutil::list_dir(&self.info_dir(digest).join("sources"))?
            .into_iter()
            .filter_map(|n| n.strip_prefix(&prefix).map(|r| r.replace('+', "/")))
            .collect())
    }

    /// Record the uncompressed digest and size of the compressed layer `digest`.
    pub fn set_uncompressed(&self, digest: &Digest, u: &Uncompressed) {
        let path = self.info_dir(digest).join("uncompressed");
        hint(fsutil::write_replace(
            &path,
            format!("{} {}", u.diff_id, u.size).as_bytes(),
        ));
    }

    /// The uncompressed digest and size of layer `digest`, when recorded.
    pub fn uncompressed(&self, digest: &Digest) -> Result<Option<Uncompressed>> {
        let path = self.info_dir(digest).join("uncompressed");
        let Some(text) = fsutil::read_optional(&path)? else {
            return Ok(None);
        };
        let mut parts = text.split_whitespace();
        let parsed = (|| {
            let diff_id = parts.next()?.parse().ok()?;
            let size = parts.next()?.parse().ok()?;
            Some(Uncompressed { diff_id, size })
        })();
        Ok(parsed)
    }

    /// Record that `other` (of `size` bytes) is layer `digest` compressed as `kind`.
    pub fn set_variant(&self, digest: &Digest, kind: &str, other: &Digest, size: u64) {
        let path = self.info_dir(digest).join(format!("variant.{kind}"));
        hint(fsutil::write_replace(
            &path,
            format!("{other} {size}").as_bytes(),
        ));
    }

    /// Layer `digest` compressed as `kind`, when recorded and still in the store.
    pub fn variant(&self, digest: &Digest, kind: &str) -> Result<Option<(Digest, u64)>> {
        let path = self.info_dir(digest).join(format!("variant.{kind}"));
        let Some(text) = fsutil::read_optional(&path)? else {
            return Ok(None);
        };
        let mut parts = text.split_whitespace();
        let parsed: Option<(Digest, u64)> =
            (|| Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?)))();
        match parsed {
            Some((d, size)) if self.blob_size(&d)? == Some(size) => Ok(Some((d, size))),
            _ => Ok(None),
        }
    }

    /// Forget everything about blob `digest` (after it was deleted).
    pub(crate) fn forget(&self, digest: &Digest) -> Result<()> {
        let dir = self.info_dir(digest);
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            other => other.ctx("remove", &dir),
        }
    }
}

fn hint(written: Result<()>) {
    if let Err(e) = written {
        tracing::warn!(error = %e, "a blob hint was not recorded");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_and_uncompressed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let d = Digest::sha256(b"layer");
        assert!(store.sources(&d, "r:5000").unwrap().is_empty());
        store.add_source(&d, "r:5000", "team/app");
        store.add_source(&d, "r:5000", "team/app");
        store.add_source(&d, "r:5000", "base");
        store.add_source(&d, "other", "x");
        assert_eq!(
            store.sources(&d, "r:5000").unwrap(),
            vec!["base".to_string(), "team/app".to_string()]
        );
        assert_eq!(store.uncompressed(&d).unwrap(), None);
        let u = Uncompressed {
            diff_id: Digest::sha256(b"tar"),
            size: 10240,
        };
        store.set_uncompressed(&d, &u);
        assert_eq!(store.uncompressed(&d).unwrap(), Some(u));
        store.forget(&d).unwrap();
        assert_eq!(store.uncompressed(&d).unwrap(), None);
        store.forget(&d).unwrap();
    }
}
