//! When each tag of a remote image was last resolved against its registry.
//!
//! A build, or `berth pull`, that resolves `registry/repo:tag` names the image in the
//! store (as `docker build` and `docker pull` do in Docker's image store) and records the
//! time here, so a later build can take the tag from the store without a request and
//! still tell how old that answer is, and re-resolve it once it is older than a TTL:
//!
//! ```text
//! root/resolved/<repository>/<tag>        "<manifest digest> <unix seconds>\n"
//! root/resolved/<repository>/@<digest>    the same, for an image pulled by digest
//! ```
//!
//! A record is a hint: it counts only while the name still names the manifest it
//! recorded (a tag moved by `berth tag` or a build is a local name again; an image
//! pulled by digest counts while its repository holds it, until `rmi`). The images whose
//! records count are the store's *pulled* images ([`Store::pulled_images`]), whose
//! unpacked layers `berth prune` keeps, as Docker keeps its images extracted.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use berth_oci::Digest;

use crate::content::Store;
use crate::error::Result;
use crate::fsutil::{list_dir, read_optional, write_replace};

/// How deep repository names go under `resolved/` before a walk stops looking.
const MAX_DEPTH: usize = 32;

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
        write_replace(&path, format!("{manifest} {}\n", unix_now()).as_bytes())
    }

    /// Record that image `manifest` was pulled from a registry into `repository` by its
    /// digest (`repository@manifest`, named in the store without a tag). Written as
    /// [`Store::record_resolution`]; a digest is never resolved again, the record only
    /// tells [`Store::pulled_images`] the image came from a registry.
    pub fn record_pin(&self, repository: &str, manifest: &Digest) -> Result<()> {
        if berth_oci::validate_repository(repository).is_err() {
            return Ok(());
        }
        let path = self
            .root()
            .join("resolved")
            .join(repository)
            .join(format!("@{manifest}"));
        write_replace(&path, format!("{manifest} {}\n", unix_now()).as_bytes())
    }

    /// The images of the store a registry gave (repository and manifest, each once, by
    /// repository): those whose record still counts, a tag that still names what it
    /// resolved to or a digest pin whose repository still holds the manifest. Records
    /// that do not read are skipped.
    pub fn pulled_images(&self) -> Result<Vec<(String, Digest)>> {
        let mut records = Vec::new();
        walk_records(&self.root().join("resolved"), "", 0, &mut records)?;
        records.sort();
        let repos = self.repos();
        let mut out: Vec<(String, Digest)> = Vec::new();
        for (repository, name) in records {
            let manifest = match name.strip_prefix('@') {
                Some(pin) => pin
                    .parse::<Digest>()
                    .ok()
                    .filter(|d| repos.manifest(&repository, d).ok().flatten().is_some()),
                None => self
                    .resolution(&repository, &name)
                    .ok()
                    .flatten()
                    .map(|r| r.manifest)
                    .filter(|m| repos.tag(&repository, &name).ok().flatten().as_ref() == Some(m)),
            };
            if let Some(m) = manifest
                && !out.iter().any(|(r, d)| *r == repository && *d == m)
            {
                out.push((repository, m));
            }
        }
        Ok(out)
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

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The records under `dir` (`resolved/`, or a repository prefix `prefix` of it), as
/// (repository, tag or `@digest`); `_schemes` and temporary files are not records.
fn walk_records(
    dir: &Path,
    prefix: &str,
    depth: usize,
    out: &mut Vec<(String, String)>,
) -> Result<()> {
    if depth > MAX_DEPTH {
        return Ok(());
    }
    for name in list_dir(dir)? {
        if name.starts_with('.') || (prefix.is_empty() && name == "_schemes") {
            continue;
        }
        let path = dir.join(&name);
        if path.is_dir() {
            let child = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            walk_records(&path, &child, depth + 1, out)?;
        } else if !prefix.is_empty() {
            out.push((prefix.to_string(), name));
        }
    }
    Ok(())
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

    #[test]
    fn pulled_images_are_those_whose_record_still_names_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let blob = |b: &[u8]| {
            store
                .put_blob(berth_oci::Algorithm::Sha256, b)
                .unwrap()
                .digest
        };
        let (a, b) = (blob(b"{\"a\":1}"), blob(b"{\"b\":1}"));
        let (base, pinned) = ("127.0.0.1-5000/team/base", "127.0.0.1-5000/pinned");
        store.name_image(base, Some("v1"), &a).unwrap();
        store.record_resolution(base, "v1", &a).unwrap();
        store.name_image(pinned, None, &b).unwrap();
        store.record_pin(pinned, &b).unwrap();
        // Not records: the scheme memory, a record of a tag the store does not have.
        std::fs::create_dir_all(dir.path().join("resolved/_schemes")).unwrap();
        std::fs::write(dir.path().join("resolved/_schemes/127.0.0.1:5000"), "http").unwrap();
        store.record_resolution("gone", "v1", &a).unwrap();
        assert_eq!(
            store.pulled_images().unwrap(),
            [
                (pinned.to_string(), b.clone()),
                (base.to_string(), a.clone())
            ]
        );
        // A tag moved here is a local name; an image removed from its repository is gone.
        store.name_image(base, Some("v1"), &b).unwrap();
        assert_eq!(
            store.pulled_images().unwrap(),
            [(pinned.to_string(), b.clone())]
        );
        store.unlink_image(pinned, &b).unwrap();
        assert_eq!(store.pulled_images().unwrap(), []);
    }
}
