//! Resolving a build's base images: a tag berth's store has is taken from the store,
//! as `docker build` takes it from Docker's image store, with no request to the
//! registry; `--pull` asks the registry every time, and a resolve TTL asks it again
//! once the store's answer is older than the TTL. A tag resolved against a registry is
//! named in the store (as `docker pull` names it) and the time recorded
//! (`Store::record_resolution`), so the progress can say how old a stored answer is.
//!
//! The bases a build needs are resolved at once ([`Bases::prefetch`], concurrently)
//! before lowering; lowering then finds them resolved ([`Bases::resolve_blocking`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_oci::{Digest, WrittenReference};
use berth_store::Store;

use crate::error::{BuildError, Result};
use crate::image;
use crate::platform::Platform;
use crate::solver::{Event, Progress};

/// When a stored tag is resolved against its registry again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResolvePolicy {
    /// Always (`--pull`).
    pub pull: bool,
    /// Once the stored resolution is older than this (`None`: never, as Docker).
    pub ttl: Option<Duration>,
}

/// The progress id of resolution lines (the solver numbers steps from 1).
const RESOLVE_ID: usize = 0;

/// A build's base-image resolver.
pub(crate) struct Bases {
    store: Store,
    client: Option<Arc<berth_client::Client>>,
    policy: ResolvePolicy,
    progress: Arc<dyn Progress>,
    /// The build's target platform: what [`Bases::prefetch`] resolves for.
    platform: Platform,
    /// What each reference resolved to in this build, per platform.
    resolved: Mutex<HashMap<(String, Platform), Digest>>,
    /// Where a pulled image's layers are unpacked as they arrive (`None`: not on pull).
    unpack_into: Option<berth_snapshot::Snapshotter>,
    /// The unpacks of the images pulled, still running or done.
    unpacks: Mutex<Vec<crate::PullUnpack>>,
}

impl Bases {
    pub(crate) fn new(
        store: Store,
        client: Option<Arc<berth_client::Client>>,
        policy: ResolvePolicy,
        progress: Arc<dyn Progress>,
        platform: Platform,
    ) -> Bases {
        Bases {
            store,
            client,
            policy,
            progress,
            platform,
            resolved: Mutex::new(HashMap::new()),
            unpack_into: None,
            unpacks: Mutex::new(Vec::new()),
        }
    }

    /// Unpack the layers of the images this resolver pulls into `snapshots` while they
    /// download; the unpacks run on after the pull returns ([`Bases::take_unpacks`]).
    pub(crate) fn with_unpack(mut self, snapshots: berth_snapshot::Snapshotter) -> Bases {
        self.unpack_into = Some(snapshots);
        self
    }

    /// The unpacks of the images pulled so far, for the solver to wait for before it
    /// unpacks those chains itself.
    pub(crate) fn take_unpacks(&self) -> Vec<crate::PullUnpack> {
        std::mem::take(&mut *self.unpacks.lock().expect("unpacks"))
    }

    /// Resolve `references` concurrently. Failures are left for lowering, which
    /// resolves the reference again when it meets it and reports the error at its line.
    pub(crate) async fn prefetch(&self, references: &[String]) {
        let each = references
            .iter()
            .filter(|r| !r.starts_with(berth_oci::LAYOUT_SCHEME))
            .map(|r| self.resolve(r, &self.platform));
        for r in futures_util::future::join_all(each).await {
            if let Err(e) = r {
                tracing::debug!(error = %e, "base image not resolved ahead; lowering retries");
            }
        }
    }

    /// [`image::ResolvedImage`] of `reference` for `platform`, from a blocking thread of
    /// the runtime `handle`: what [`Bases::prefetch`] found, else resolved now.
    pub(crate) fn resolve_blocking(
        &self,
        handle: &tokio::runtime::Handle,
        reference: &str,
        platform: &Platform,
    ) -> Result<image::ResolvedImage> {
        if reference.starts_with(berth_oci::LAYOUT_SCHEME) {
            return image::resolve_for(&self.store, reference, platform, None);
        }
        let manifest = match self.known(reference, platform) {
            Some(d) => d,
            None => handle.block_on(self.resolve(reference, platform))?,
        };
        image::load_for(&self.store, reference, manifest, platform)
    }

    fn known(&self, reference: &str, platform: &Platform) -> Option<Digest> {
        self.resolved
            .lock()
            .expect("resolved")
            .get(&(reference.to_string(), platform.clone()))
            .cloned()
    }

    /// The manifest (or index) `reference` names for `platform`, by the policy.
    async fn resolve(&self, reference: &str, platform: &Platform) -> Result<Digest> {
        if let Some(d) = self.known(reference, platform) {
            return Ok(d);
        }
        let d = self.decide(reference, platform).await?;
        self.resolved
            .lock()
            .expect("resolved")
            .insert((reference.to_string(), platform.clone()), d.clone());
        Ok(d)
    }

    async fn decide(&self, reference: &str, platform: &Platform) -> Result<Digest> {
        let written =
            WrittenReference::parse(reference).map_err(|e| BuildError::Image(e.to_string()))?;
        let local = image::local_manifest(&self.store, reference).ok();
        // A stored image that does not serve the platform is no answer for it. Names in
        // the store are the host's: a pull for another platform names nothing, so it
        // does not move a tag another build reads.
        if !platform.is_host() {
            if let Some(d) = local.filter(|d| image::serves(&self.store, d, platform)) {
                self.note_stored(reference, &format!("has {platform}"));
                return Ok(d);
            }
            return self.pull(reference, Name::Nothing, platform).await;
        }
        let familiar = written.familiar();
        if let Some(digest) = &familiar.digest {
            // A digest names one image forever: the store's copy is it.
            if let Some(d) = local {
                self.note_stored(reference, "pinned by digest");
                return Ok(d);
            }
            let pin = Name::Pin(familiar.local_repository(), digest.clone());
            return self.pull(reference, pin, platform).await;
        }
        let name = (
            familiar.local_repository(),
            familiar.tag_or_latest().to_string(),
        );
        // The record counts while the tag still names what was resolved; a tag moved
        // since (`berth tag`, a build's -t) is a local name.
        let record = self
            .store
            .resolution(&name.0, &name.1)?
            .filter(|r| Some(&r.manifest) == local.as_ref());
        let Some(local) = local else {
            return self.pull(reference, Name::Tag(&name), platform).await;
        };
        let age = record.as_ref().map(|r| r.age());
        let expired = matches!((self.policy.ttl, age), (Some(ttl), Some(age)) if age > ttl);
        if !self.policy.pull && !expired {
            let how = match age {
                Some(a) => format!("resolved {} ago", ago(a)),
                None => "a local image".into(),
            };
            self.note_stored(reference, &how);
            return Ok(local);
        }
        match self.pull(reference, Name::Tag(&name), platform).await {
            Ok(d) => Ok(d),
            // A TTL asks when it can; an unreachable registry leaves the stored answer.
            Err(e) if !self.policy.pull => {
                tracing::warn!(
                    "{reference}: resolve TTL passed but the registry did not answer ({e}); using berth's stored image"
                );
                self.note_stored(
                    reference,
                    &format!(
                        "resolved {} ago; the registry did not answer",
                        ago(age.unwrap_or_default())
                    ),
                );
                Ok(local)
            }
            // --pull of a name built or tagged here, never pulled: Docker fails; the
            // image the user made is what they mean.
            Err(e) if record.is_none() => {
                tracing::warn!("{reference}: not pulled ({e}); using the local image");
                self.note_stored(reference, "a local image; no registry has it");
                Ok(local)
            }
            Err(e) => Err(e),
        }
    }

    /// Pull `reference` for `platform`, and name it in the store as `name` says.
    async fn pull(&self, reference: &str, name: Name<'_>, platform: &Platform) -> Result<Digest> {
        let client = self.client.as_ref().ok_or_else(|| {
            BuildError::Image(format!("image {reference} is not in berth's store"))
        })?;
        let label = if platform.is_host() {
            format!("[internal] load metadata for {reference}")
        } else {
            format!("[internal] load metadata for {reference} ({platform})")
        };
        self.progress.event(Event::Started {
            id: RESOLVE_ID,
            name: label.clone(),
        });
        let start = Instant::now();
        let unpack = self
            .unpack_into
            .as_ref()
            .map(|s| crate::PullUnpack::new(self.store.clone(), s.clone()));
        let pulled = image::pull(
            client,
            &self.store,
            reference,
            platform,
            unpack.as_ref().map(|u| u.sink()),
        )
        .await;
        if let Some(u) = unpack {
            // Left running: the solver waits for it when it needs the chain.
            if pulled.is_err() {
                u.stop();
            }
            self.unpacks.lock().expect("unpacks").push(u);
        }
        let pulled = pulled.and_then(|d| {
            match name {
                Name::Nothing => {}
                Name::Tag((repo, tag)) => {
                    self.store.name_image(repo, Some(tag), &d)?;
                    self.store.record_resolution(repo, tag, &d)?;
                }
                // The digest written (an index's, whose manifest for the platform is
                // `d`): the next build finds it by that digest.
                Name::Pin(repo, digest) => {
                    self.store.name_image(&repo, None, &digest)?;
                    self.store.record_pin(&repo, &digest)?;
                }
            }
            Ok(d)
        });
        match &pulled {
            Ok(_) => self.progress.event(Event::Done {
                id: RESOLVE_ID,
                name: label,
                elapsed: start.elapsed(),
            }),
            Err(_) => self.progress.event(Event::Failed {
                id: RESOLVE_ID,
                name: label,
            }),
        }
        pulled
    }

    fn note_stored(&self, reference: &str, how: &str) {
        self.progress.event(Event::Cached {
            id: RESOLVE_ID,
            name: format!("[internal] load metadata for {reference}: berth's store, {how}"),
        });
    }
}

/// How [`Bases::pull`] names what it pulled in the store.
enum Name<'a> {
    /// Not at all (a pull for another platform: the store's names are the host's).
    Nothing,
    /// As (repository, tag), with the time it was resolved.
    Tag(&'a (String, String)),
    /// Untagged in the repository, as the digest written (a pin: as `docker pull
    /// NAME@DIGEST` keeps it, a cold build finds it, and prune keeps it unpacked).
    Pin(String, Digest),
}

/// `42s`, `5m`, `3h`, `2d`.
fn ago(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..172_800 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ages_read_short() {
        use std::time::Duration;
        let ago = |s| super::ago(Duration::from_secs(s));
        assert_eq!(ago(5), "5s");
        assert_eq!(ago(300), "5m");
        assert_eq!(ago(7200), "2h");
        assert_eq!(ago(86400 * 3), "3d");
    }
}
