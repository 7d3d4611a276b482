//! Images as a Docker user sees them in the store: named by a repository's tags, or
//! dangling (a manifest a repository still holds that no tag names), renamed by linking
//! an image's tree into another repository, removed by untagging.
//!
//! Removing never deletes content: untagging unlinks the image's manifests from the
//! repository when no other tag of it reaches them, and gc then frees the blobs nothing
//! else references (the usual grace applies). A running build holds the images it
//! builds on ([`Store::hold_image`]); removal claims the image exclusively first
//! ([`Store::claim_image`]) and is refused while a build holds it:
//!
//! ```text
//! root/inuse/<alg>-<hex>    flock'ed shared by each build using manifest <hex>, exclusively by rmi
//! ```

use std::collections::{BTreeSet, HashSet};
use std::fs::{self, File};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use berth_oci::{Digest, Manifest, media_type};

use crate::content::Store;
use crate::error::{IoContext, Result};
use crate::fsutil;

/// One row of the store's image list: a tag, or a dangling manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageEntry {
    /// The repository, as the store names it (`127.0.0.1-5000/app`).
    pub repository: String,
    /// The tag; `None` for a manifest no tag of the repository names.
    pub tag: Option<String>,
    /// The manifest (or index) the tag names.
    pub manifest: Digest,
    /// The image ID: the config's digest, or the index's own digest for an index.
    pub id: Digest,
}

/// What an image's manifest reaches in the store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageTree {
    /// The manifest itself and, for an index, the child manifests the store has, with
    /// their media types.
    pub manifests: Vec<(Digest, String)>,
    /// Configs and layers, each once.
    pub blobs: Vec<Digest>,
}

/// What untagging one name did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Untagged {
    /// The manifest the tag named.
    pub manifest: Digest,
    /// Whether no repository holds the manifest any more (the image is gone; gc frees
    /// its blobs that nothing else references).
    pub deleted: bool,
}

/// A running build's hold on an image (a shared lock), released when dropped.
#[derive(Debug)]
pub struct ImageHold {
    _file: File,
}

/// The exclusive claim of a removal on an image, released when dropped.
#[derive(Debug)]
pub struct ImageClaim {
    files: Vec<(File, PathBuf)>,
}

impl Drop for ImageClaim {
    fn drop(&mut self) {
        // Nobody holds these images now: the lock files go (still locked, so a build
        // that opened one meanwhile sees it unlinked once it gets its lock, and retries
        // on a new file; see `hold_image`). Otherwise one file per image ever used stays.
        for (_, path) in &self.files {
            let _ = fs::remove_file(path);
        }
    }
}

impl Store {
    /// The tree of image `manifest`: itself, child manifests (recursively) and their
    /// configs and layers. Children missing from the store (platforms not pulled) are
    /// left out; a manifest that does not parse reaches nothing.
    pub fn image_tree(&self, manifest: &Digest) -> Result<ImageTree> {
        let mut tree = ImageTree::default();
        let mut seen = HashSet::new();
        let mut blobs = HashSet::new();
        let mut todo = vec![manifest.clone()];
        while let Some(d) = todo.pop() {
            if !seen.insert(d.clone()) {
                continue;
            }
            let Some(bytes) = self.read_blob(&d)? else {
                continue;
            };
            let Ok((m, mt)) = Manifest::parse(&bytes, None) else {
                tree.manifests
                    .push((d, media_type::OCI_MANIFEST.to_string()));
                continue;
            };
            for b in m.blobs() {
                if blobs.insert(b.digest.clone()) {
                    tree.blobs.push(b.digest.clone());
                }
            }
            todo.extend(m.manifests.iter().map(|c| c.digest.clone()));
            tree.manifests.push((d, mt));
        }
        Ok(tree)
    }

    /// The image ID of `manifest`: its config's digest, or the manifest's own digest for
    /// an index (or a manifest the store cannot read).
    pub fn image_id(&self, manifest: &Digest) -> Result<Digest> {
        let parsed = self
            .read_blob(manifest)?
            .and_then(|b| Manifest::parse(&b, None).ok());
        Ok(match parsed {
            Some((m, mt)) if !media_type::is_index(&mt) => m
                .config
                .map(|c| c.digest)
                .unwrap_or_else(|| manifest.clone()),
            _ => manifest.clone(),
        })
    }

    /// Every image of the store: each tag of each repository, then the manifests a
    /// repository holds that neither a tag nor another such manifest reaches (dangling;
    /// referrers such as signatures are not images and are left out). Sorted by
    /// repository, tagged first, then by tag.
    pub fn images(&self) -> Result<Vec<ImageEntry>> {
        let repos = self.repos();
        let mut out = Vec::new();
        for repo in repos.repositories()? {
            let mut reached = HashSet::new();
            for tag in repos.tags(&repo)? {
                let Some(m) = repos.tag(&repo, &tag)? else {
                    continue;
                };
                for (d, _) in self.image_tree(&m)?.manifests {
                    reached.insert(d);
                }
                out.push(ImageEntry {
                    repository: repo.clone(),
                    tag: Some(tag),
                    id: self.image_id(&m)?,
                    manifest: m,
                });
            }
            let mut loose = Vec::new();
            for d in repos.manifests(&repo)? {
                if reached.contains(&d) {
                    continue;
                }
                let Some(bytes) = self.read_blob(&d)? else {
                    continue;
                };
                match Manifest::parse(&bytes, None) {
                    Ok((m, _)) if m.subject.is_none() => loose.push((d, m)),
                    _ => {}
                }
            }
            let children: HashSet<&Digest> = loose
                .iter()
                .flat_map(|(_, m)| m.manifests.iter().map(|c| &c.digest))
                .collect();
            let mut dangling: Vec<&Digest> = loose
                .iter()
                .map(|(d, _)| d)
                .filter(|d| !children.contains(d))
                .collect();
            dangling.sort();
            for d in dangling {
                out.push(ImageEntry {
                    repository: repo.clone(),
                    tag: None,
                    id: self.image_id(d)?,
                    manifest: d.clone(),
                });
            }
        }
        Ok(out)
    }

    /// Name image `manifest` (in the store) `repository:tag`: link its manifests and
    /// blobs into the repository, then point the tag at it (without a tag, the image is
    /// only linked). The repository name must be valid.
    pub fn name_image(&self, repository: &str, tag: Option<&str>, manifest: &Digest) -> Result<()> {
        let tree = self.image_tree(manifest)?;
        if tree.manifests.is_empty() {
            return Err(crate::Error::NotFound(format!(
                "manifest {manifest} in the store"
            )));
        }
        let repos = self.repos();
        for b in &tree.blobs {
            repos.link_blob(repository, b)?;
        }
        // Children before their index, as a registry receives them.
        for (d, mt) in tree.manifests.iter().rev() {
            repos.link_manifest(repository, d, mt)?;
        }
        if let Some(tag) = tag {
            repos.set_tag(repository, tag, manifest)?;
        }
        Ok(())
    }

    /// Remove tag `tag` of `repository`. The manifests it named that no other tag of the
    /// repository reaches are unlinked from the repository, so gc may collect what only
    /// they referenced. `None` when there is no such tag.
    pub fn untag(&self, repository: &str, tag: &str) -> Result<Option<Untagged>> {
        let repos = self.repos();
        let Some(manifest) = repos.tag(repository, tag)? else {
            return Ok(None);
        };
        repos.delete_tag(repository, tag)?;
        self.unlink_image(repository, &manifest)?;
        Ok(Some(Untagged {
            deleted: !self.is_named(&manifest)?,
            manifest,
        }))
    }

    /// Unlink image `manifest` (and the child manifests only it reaches) from
    /// `repository`, unless a tag of the repository still reaches it. Returns whether
    /// the image left the repository.
    pub fn unlink_image(&self, repository: &str, manifest: &Digest) -> Result<bool> {
        let repos = self.repos();
        let mut kept = HashSet::new();
        for t in repos.tags(repository)? {
            if let Some(m) = repos.tag(repository, &t)? {
                kept.extend(self.image_tree(&m)?.manifests.into_iter().map(|(d, _)| d));
            }
        }
        if kept.contains(manifest) {
            return Ok(false);
        }
        for (d, _) in self.image_tree(manifest)?.manifests {
            if !kept.contains(&d) {
                repos.unlink_manifest(repository, &d)?;
            }
        }
        // A manifest missing from the store has no tree; its link goes too.
        repos.unlink_manifest(repository, manifest)?;
        Ok(true)
    }

    /// Whether any repository still holds manifest `manifest`.
    pub fn is_named(&self, manifest: &Digest) -> Result<bool> {
        let repos = self.repos();
        for r in repos.repositories()? {
            if repos.manifest(&r, manifest)?.is_some() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn inuse_path(&self, manifest: &Digest) -> PathBuf {
        self.root().join("inuse").join(format!(
            "{}-{}",
            manifest.algorithm().as_str(),
            manifest.hex()
        ))
    }

    /// Hold image `manifest` for a build that uses it: removal is refused until the hold
    /// is dropped. Waits while a removal holds its claim.
    pub fn hold_image(&self, manifest: &Digest) -> Result<ImageHold> {
        let path = self.inuse_path(manifest);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).ctx("create directory", dir)?;
        }
        loop {
            let file = File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .ctx("open", &path)?;
            file.lock_shared().ctx("lock", &path)?;
            // A claim unlinks the file before releasing it: holding a lock on a file no
            // longer at `path` would hold nothing, so open the new one.
            let held = file.metadata().ctx("inspect", &path)?;
            match fs::metadata(&path) {
                Ok(now) if (now.dev(), now.ino()) == (held.dev(), held.ino()) => {
                    return Ok(ImageHold { _file: file });
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).ctx("inspect", &path),
            }
        }
    }

    /// Claim image `manifest` (each of `manifests`) for removal: `None` when a running
    /// build holds one of them. Hold the claim while untagging.
    pub fn claim_image(&self, manifests: &[Digest]) -> Result<Option<ImageClaim>> {
        let mut files = Vec::new();
        for m in manifests {
            let path = self.inuse_path(m);
            let file = match File::options().write(true).open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e).ctx("open", &path),
            };
            match file.try_lock() {
                Ok(()) => files.push((file, path)),
                Err(fs::TryLockError::WouldBlock) => return Ok(None),
                Err(fs::TryLockError::Error(e)) => return Err(e).ctx("lock", &path),
            }
        }
        Ok(Some(ImageClaim { files }))
    }

    /// Remember that local image `manifest` is `name@remote` in a registry (pulled from
    /// or pushed there): `docker image inspect`'s RepoDigests. A hint, as the others.
    pub fn add_repo_digest(&self, manifest: &Digest, name: &str, remote: &Digest) {
        let path = self
            .info_dir(manifest)
            .join("repodigests")
            .join(name.replace('/', "+"));
        if let Err(e) = fsutil::write_replace(&path, remote.to_string().as_bytes()) {
            tracing::warn!(error = %e, "a repository digest was not recorded");
        }
    }

    /// The `name@digest` forms recorded for local image `manifest`, sorted.
    pub fn repo_digests(&self, manifest: &Digest) -> Result<Vec<String>> {
        let dir = self.info_dir(manifest).join("repodigests");
        let mut out = BTreeSet::new();
        for n in fsutil::list_dir(&dir)? {
            if let Some(d) = fsutil::read_optional(&dir.join(&n))? {
                out.insert(format!("{}@{}", n.replace('+', "/"), d.trim()));
            }
        }
        Ok(out.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_oci::Algorithm;

    fn image(store: &Store, layers: &[&[u8]]) -> Digest {
        let config = store.put_blob(Algorithm::Sha256, b"{}").unwrap();
        let layers: Vec<_> = layers
            .iter()
            .map(|l| {
                let c = store.put_blob(Algorithm::Sha256, l).unwrap();
                serde_json::json!({"mediaType": media_type::OCI_LAYER_GZIP, "digest": c.digest, "size": c.size})
            })
            .collect();
        let m = serde_json::json!({
            "schemaVersion": 2, "mediaType": media_type::OCI_MANIFEST,
            "config": {"mediaType": media_type::OCI_CONFIG, "digest": config.digest, "size": config.size},
            "layers": layers,
        });
        store
            .put_blob(Algorithm::Sha256, m.to_string().as_bytes())
            .unwrap()
            .digest
    }

    #[test]
    fn tag_untag_and_dangling() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let a = image(&store, &[b"base", b"a"]);
        let b = image(&store, &[b"base", b"b"]);
        store.name_image("app", Some("1"), &a).unwrap();
        store.name_image("app", Some("2"), &a).unwrap();
        store.name_image("other/app", Some("1"), &b).unwrap();
        let rows: Vec<_> = store
            .images()
            .unwrap()
            .into_iter()
            .map(|e| (e.repository, e.tag))
            .collect();
        assert_eq!(
            rows,
            [
                ("app".into(), Some("1".into())),
                ("app".into(), Some("2".into())),
                ("other/app".into(), Some("1".into()))
            ]
        );

        // Another tag still names it: the manifest stays linked.
        let u = store.untag("app", "1").unwrap().unwrap();
        assert_eq!((u.manifest.clone(), u.deleted), (a.clone(), false));
        assert!(store.repos().manifest("app", &a).unwrap().is_some());
        let u = store.untag("app", "2").unwrap().unwrap();
        assert!(u.deleted);
        assert!(store.repos().manifest("app", &a).unwrap().is_none());
        assert!(store.untag("app", "2").unwrap().is_none());

        // Linked without a tag: dangling.
        store.name_image("app", None, &a).unwrap();
        let dangling: Vec<_> = store
            .images()
            .unwrap()
            .into_iter()
            .filter(|e| e.tag.is_none())
            .map(|e| e.manifest)
            .collect();
        assert_eq!(dangling, [a]);
    }

    #[test]
    fn holds_refuse_claims() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let a = image(&store, &[b"a"]);
        assert!(
            store
                .claim_image(std::slice::from_ref(&a))
                .unwrap()
                .is_some()
        );
        let hold = store.hold_image(&a).unwrap();
        assert!(
            store
                .claim_image(std::slice::from_ref(&a))
                .unwrap()
                .is_none()
        );
        drop(hold);
        assert!(store.claim_image(&[a]).unwrap().is_some());
    }

    #[test]
    fn claims_remove_lock_files_and_a_waiting_hold_takes_a_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let a = image(&store, &[b"a"]);
        let lock = store.inuse_path(&a);
        drop(store.hold_image(&a).unwrap());
        assert!(lock.exists());
        drop(
            store
                .claim_image(std::slice::from_ref(&a))
                .unwrap()
                .unwrap(),
        );
        assert!(!lock.exists(), "the claim left its lock file");

        // A build that opened the file while a removal held it ends up on a live file,
        // which a later removal sees.
        drop(store.hold_image(&a).unwrap());
        let claim = store
            .claim_image(std::slice::from_ref(&a))
            .unwrap()
            .unwrap();
        let (s2, a2) = (store.clone(), a.clone());
        let waiter = std::thread::spawn(move || s2.hold_image(&a2).unwrap());
        std::thread::sleep(std::time::Duration::from_millis(50));
        drop(claim);
        let hold = waiter.join().unwrap();
        assert!(lock.exists(), "the hold is on a file at the path");
        assert!(
            store
                .claim_image(std::slice::from_ref(&a))
                .unwrap()
                .is_none()
        );
        drop(hold);
    }

    #[test]
    fn repo_digests_are_remembered() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let a = image(&store, &[b"a"]);
        let remote = Digest::sha256(b"remote");
        store.add_repo_digest(&a, "127.0.0.1:5000/app", &remote);
        assert_eq!(
            store.repo_digests(&a).unwrap(),
            [format!("127.0.0.1:5000/app@{remote}")]
        );
    }
}
