//! When each tag of a remote image was last resolved against its registry.
//!
//! A build, or `berth pull`, that resolves `registry/repo:tag` names the image in the
//! store (as `docker build` and `docker pull` do in Docker's image store) and records the
//! time here, so a later build can take the tag from the store without a request and
//! still tell how old that answer is, and re-resolve it once it is older than a TTL:
//!
//! ```text
//! root/resolved/<repository>/<tag>    "<manifest digest> <unix seconds>\n"
//! ```
//!
//! A record is a hint: it counts only while the tag still names the manifest it
//! recorded (a tag moved by `berth tag` or a build is a local name again).

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use berth_oci::Digest;

use crate::content::Store;
use crate::error::Result;
use crate::fsutil::{read_optional, write_replace};

/// A tag's last resolution against its registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    /// The manifest the tag resolved to.
    pub manifest: Digest,
    /// When.
    pub at: SystemTime,
}

impl Resolution {
    /// How long ago it was resolved (zero for a time in the future).
    pub fn age(&self) -> Duration {
        SystemTime::now()
            .duration_since(self.at)
            .unwrap_or(Duration::ZERO)
    }
}

impl Store {
    fn resolution_path(&self, repository: &str, tag: &str) -> Option<PathBuf> {
        // Both are validated names, but this is read from builds' references: refuse
        // anything that could leave the folder rather than trust the callers.
        let safe = berth_oci::validate_repository(repository).is_ok()
            && berth_oci::validate_tag(tag).is_ok();
        safe.then(|| self.root().join("resolved").join(repository).join(tag))
    }

    /// Record that `repository:tag` (the store's name of a remote image) resolved to
    /// `manifest` now. Written by rename without fsync: losing it costs one request.
    pub fn record_resolution(&self, repository: &str, tag: &str, manifest: &Digest) -> Result<()> {
        let Some(path) = self.resolution_path(repository, tag) else {
            return Ok(());
        };
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        write_replace(&path, format!("{manifest} {secs}\n").as_bytes())
    }

    /// The last resolution of `repository:tag`, if one was recorded and still reads.
    pub fn resolution(&self, repository: &str, tag: &str) -> Result<Option<Resolution>> {
        let Some(path) = self.resolution_path(repository, tag) else {
            return Ok(None);
        };
        let Some(text) = read_optional(&path)? else {
            return Ok(None);
        };
        let mut parts = text.split_whitespace();
        let (Some(d), Some(s)) = (parts.next(), parts.next()) else {
            return Ok(None);
        };
        let (Ok(manifest), Ok(secs)) = (d.parse::<Digest>(), s.parse::<u64>()) else {
            return Ok(None);
        };
        Ok(Some(Resolution {
            manifest,
            at: UNIX_EPOCH + Duration::from_secs(secs),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolutions_round_trip_and_refuse_paths_outside() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let d = Digest::sha256(b"m");
        assert_eq!(store.resolution("127.0.0.1-5000/app", "v1").unwrap(), None);
        store
            .record_resolution("127.0.0.1-5000/app", "v1", &d)
            .unwrap();
        let r = store
            .resolution("127.0.0.1-5000/app", "v1")
            .unwrap()
            .unwrap();
        assert_eq!(r.manifest, d);
        assert!(r.age() < Duration::from_secs(60));
        // Not a tag: nothing written, nothing read.
        store.record_resolution("app", "../x", &d).unwrap();
        assert!(!dir.path().join("resolved/x").exists());
        assert_eq!(store.resolution("app", "../x").unwrap(), None);
        // A torn or foreign file reads as no record.
        std::fs::write(dir.path().join("resolved/127.0.0.1-5000/app/v1"), "junk").unwrap();
        assert_eq!(store.resolution("127.0.0.1-5000/app", "v1").unwrap(), None);
    }
}
