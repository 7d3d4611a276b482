//! Repository metadata: which blobs and manifests a repository holds, its tags and the
//! referrers of its manifests. Each fact is one small file, written atomically, so any
//! number of processes can read and change it at once and a crash never leaves a torn
//! record. Repository names must be validated ([`berth_oci::validate_repository`])
//! before they reach this module; a valid name can hold no `..` or empty component.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use berth_oci::{Algorithm, Descriptor, Digest};

use crate::error::{Error, IoContext, Result};
use crate::fsutil::{list_dir, read_optional, remove_optional, write_atomic, write_replace};

/// Repository metadata under `root/repositories`.
#[derive(Clone, Debug)]
pub struct Repos {
    dir: PathBuf,
}

impl Repos {
    pub(crate) fn new(dir: PathBuf) -> Repos {
        Repos { dir }
    }

    fn repo(&self, name: &str) -> Result<PathBuf> {
        berth_oci::validate_repository(name).map_err(|e| Error::Invalid(e.to_string()))?;
        Ok(self.dir.join(name))
    }

    pub(crate) fn link(&self, name: &str, kind: &str, digest: &Digest) -> Result<PathBuf> {
        Ok(self
            .repo(name)?
            .join(kind)
            .join(digest.algorithm().as_str())
            .join(digest.hex()))
    }

    /// Record that repository `name` holds blob `digest`.
    pub fn link_blob(&self, name: &str, digest: &Digest) -> Result<()> {
        let path = self.link(name, "_blobs", digest)?;
        if path.exists() {
            // A re-push restarts gc's grace period for the blob.
            if let Ok(f) = fs::File::options().write(true).open(&path) {
                let _ = f.set_modified(std::time::SystemTime::now());
            }
            return Ok(());
        }
        // A lost link (power failure) only makes a client push the blob again.
        write_replace(&path, b"")
    }

    /// Whether repository `name` holds blob `digest`.
    pub fn has_blob(&self, name: &str, digest: &Digest) -> Result<bool> {
        Ok(self.link(name, "_blobs", digest)?.exists())
    }

    /// Forget that `name` holds blob `digest`. Returns whether it did.
    pub fn unlink_blob(&self, name: &str, digest: &Digest) -> Result<bool> {
        remove_optional(&self.link(name, "_blobs", digest)?)
    }

    /// Record that repository `name` holds manifest `digest` of `media_type`.
    pub fn link_manifest(&self, name: &str, digest: &Digest, media_type: &str) -> Result<()> {
        let path = self.link(name, "_manifests", digest)?;
        if read_optional(&path)?.as_deref() == Some(media_type) {
            return Ok(());
        }
        write_atomic(&path, media_type.as_bytes())
    }

    /// The media type of manifest `digest` in `name`, `None` if the repository lacks it.
    pub fn manifest(&self, name: &str, digest: &Digest) -> Result<Option<String>> {
        read_optional(&self.link(name, "_manifests", digest)?)
    }

    /// Forget manifest `digest` in `name`, and every tag pointing at it.
    pub fn unlink_manifest(&self, name: &str, digest: &Digest) -> Result<bool> {
        for tag in self.tags(name)? {
            if self.tag(name, &tag)?.as_ref() == Some(digest) {
                self.delete_tag(name, &tag)?;
            }
        }
        remove_optional(&self.link(name, "_manifests", digest)?)
    }

    /// Every manifest digest linked in `name`.
    pub fn manifests(&self, name: &str) -> Result<Vec<Digest>> {
        self.links(name, "_manifests")
    }

    /// Every blob digest linked in `name`.
    pub fn blobs(&self, name: &str) -> Result<Vec<Digest>> {
        self.links(name, "_blobs")
    }

    fn links(&self, name: &str, kind: &str) -> Result<Vec<Digest>> {
        let dir = self.repo(name)?.join(kind);
        let mut out = Vec::new();
        for alg in Algorithm::ALL {
            for hex in list_dir(&dir.join(alg.as_str()))? {
                if let Ok(d) = format!("{}:{hex}", alg.as_str()).parse() {
                    out.push(d);
                }
            }
        }
        Ok(out)
    }

    /// Point `tag` of `name` at manifest `digest`.
    pub fn set_tag(&self, name: &str, tag: &str, digest: &Digest) -> Result<()> {
        berth_oci::validate_tag(tag).map_err(|e| Error::Invalid(e.to_string()))?;
        write_atomic(
            &self.repo(name)?.join("_tags").join(tag),
            digest.to_string().as_bytes(),
        )
    }

    /// The manifest `tag` of `name` points at.
    pub fn tag(&self, name: &str, tag: &str) -> Result<Option<Digest>> {
        berth_oci::validate_tag(tag).map_err(|e| Error::Invalid(e.to_string()))?;
        let path = self.repo(name)?.join("_tags").join(tag);
        match read_optional(&path)? {
            None => Ok(None),
            Some(s) => s
                .trim()
                .parse()
                .map(Some)
                .map_err(|e| Error::Invalid(format!("{}: {e}", path.display()))),
        }
    }

    /// When `tag` of `name` was last set (each [`Repos::set_tag`] renews it, even to the
    /// same digest); `None` without the tag. A pull-through cache revalidates tags by it.
    pub fn tag_set_at(&self, name: &str, tag: &str) -> Result<Option<std::time::SystemTime>> {
        berth_oci::validate_tag(tag).map_err(|e| Error::Invalid(e.to_string()))?;
        let path = self.repo(name)?.join("_tags").join(tag);
        match std::fs::metadata(&path) {
            Ok(m) => Ok(Some(m.modified().ctx("stat tag", &path)?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).ctx("stat tag", &path),
        }
    }

    /// Remove `tag` of `name`. Returns whether it existed.
    pub fn delete_tag(&self, name: &str, tag: &str) -> Result<bool> {
        berth_oci::validate_tag(tag).map_err(|e| Error::Invalid(e.to_string()))?;
        remove_optional(&self.repo(name)?.join("_tags").join(tag))
    }

    /// The tags of `name`, sorted.
    pub fn tags(&self, name: &str) -> Result<Vec<String>> {
        list_dir(&self.repo(name)?.join("_tags"))
    }

    fn referrers_dir(&self, name: &str, subject: &Digest) -> Result<PathBuf> {
        Ok(self.repo(name)?.join("_referrers").join(format!(
            "{}-{}",
            subject.algorithm().as_str(),
            subject.hex()
        )))
    }

    /// Record that `referrer` (a manifest descriptor) names `subject` as its subject.
    pub fn add_referrer(&self, name: &str, subject: &Digest, referrer: &Descriptor) -> Result<()> {
        let d = &referrer.digest;
        let path = self.referrers_dir(name, subject)?.join(format!(
            "{}-{}",
            d.algorithm().as_str(),
            d.hex()
        ));
        let json = serde_json::to_vec(referrer).expect("descriptors serialise");
        write_atomic(&path, &json)
    }

    /// Forget `referrer` as a referrer of `subject`.
    pub fn remove_referrer(&self, name: &str, subject: &Digest, referrer: &Digest) -> Result<bool> {
        let path = self.referrers_dir(name, subject)?.join(format!(
            "{}-{}",
            referrer.algorithm().as_str(),
            referrer.hex()
        ));
        remove_optional(&path)
    }

    /// The descriptors of the manifests in `name` whose subject is `subject`.
    pub fn referrers(&self, name: &str, subject: &Digest) -> Result<Vec<Descriptor>> {
        let dir = self.referrers_dir(name, subject)?;
        let mut out = Vec::new();
        for entry in list_dir(&dir)? {
            let path = dir.join(&entry);
            let Some(json) = read_optional(&path)? else {
                continue;
            };
            let d: Descriptor = serde_json::from_str(&json)
                .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
            out.push(d);
        }
        Ok(out)
    }

    /// Every repository that holds at least one manifest or blob, sorted.
    pub fn repositories(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        walk_repos(&self.dir, "", &mut out)?;
        out.sort();
        Ok(out)
    }
}

fn walk_repos(dir: &Path, prefix: &str, out: &mut Vec<String>) -> Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).ctx("list repositories", dir),
    };
    let mut is_repo = false;
    for entry in entries {
        let entry = entry.ctx("list repositories", dir)?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if name == "_manifests" || name == "_blobs" {
            is_repo = true;
        } else if !name.starts_with('_') && !name.starts_with('.') && entry.path().is_dir() {
            let child = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            walk_repos(&entry.path(), &child, out)?;
        }
    }
    if is_repo && !prefix.is_empty() {
        out.push(prefix.to_string());
    }
    Ok(())
}
