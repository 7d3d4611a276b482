//! gc on object storage, safe beside pushes on every replica.
//!
//! A bucket has no locks, so gc and writers meet through two kinds of marker objects
//! per blob, each side writing its own before reading the other's:
//!
//! - a writer that makes a blob referenced (a manifest PUT for every blob it references
//!   and for itself, an upload commit, a mount) writes `gc/touch/<alg>/<hex>` after the
//!   link it answers for, then reads `gc/doomed/<alg>/<hex>` and, while it is there,
//!   waits for the gc to decide (it removes its marker after keeping or deleting), then
//!   checks the blob is still there ([`ObjectStorage::hold`]); if it is gone, the writer
//!   takes its link back and does not answer 2xx;
//! - gc, for a blob that no linked manifest referenced when it listed, and that is older
//!   than the grace, writes `gc/doomed/…`, then reads the blob's and the touch's times
//!   again, and deletes only if both are still old.
//!
//! Times are the bucket's own (`LastModified`), compared with the time of an object gc
//! writes when it starts (`T0`), so replicas' clocks do not matter.
//!
//! **Invariant:** a manifest answered 2xx never loses a blob it references (until a
//! manifest delete). Its link is written at l, its touch at e > l, its doom check at
//! c > e, its existence check at v > c. If l < T0, gc's listing (after T0; S3 lists are
//! strongly consistent) sees the manifest and marks the blob. Otherwise e > T0. If gc
//! read the touch after e, it saw a time after T0 > T0 - grace and kept the blob. If it
//! read it before e, its doom marker was written before that, so before c: the writer
//! saw it and waited until the marker was gone, which gc removes only after deleting (or
//! keeping); the writer's existence check comes after that, so it saw the blob gone and
//! did not answer 2xx, or saw it kept.

use std::collections::{HashMap, HashSet};

use berth_oci::{Digest, Manifest};
use berth_store::{GcOptions, GcReport};
use chrono::{DateTime, Utc};

use object_store::ObjectStoreExt;

use super::{ObjectStorage, failure};
use crate::error::RegistryError;

/// A doom marker this old is a dead gc's: gc deletes within seconds of dooming.
const STALE_DOOM: chrono::TimeDelta = chrono::TimeDelta::minutes(15);

/// How long a writer waits for a gc that doomed its blob to decide.
const DOOM_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Slack on the bucket's times: `LastModified` from a HEAD has whole seconds.
const TIME_SLACK: chrono::TimeDelta = chrono::TimeDelta::seconds(2);

impl ObjectStorage {
    fn marker_key(&self, kind: &str, d: &Digest) -> object_store::path::Path {
        self.key(&format!("gc/{kind}/{}/{}", d.algorithm().as_str(), d.hex()))
    }

    /// After writing a link that makes `d` referenced: stamp it, and tell whether it is
    /// safe to answer 2xx. A gc that doomed `d` first is waited for (its marker goes once
    /// it has kept or removed the blob), then the blob's presence decides.
    pub(crate) async fn hold(&self, d: &Digest) -> Result<bool, RegistryError> {
        let touch = self.marker_key("touch", d);
        self.write(&touch, bytes::Bytes::new()).await?;
        let start = std::time::Instant::now();
        while let Some(doomed) = self.head(&self.marker_key("doomed", d)).await? {
            // A gc that died after dooming leaves its marker: stale after STALE_DOOM.
            let now = self.head(&touch).await?.map(|t| t.last_modified);
            if now.is_some_and(|now| now - doomed.last_modified >= STALE_DOOM) {
                break;
            }
            if start.elapsed() > DOOM_WAIT {
                return Err(RegistryError::new(
                    crate::error::Code::Unavailable,
                    format!("a garbage collection is deciding about {d}; retry shortly"),
                )
                .with_status(axum::http::StatusCode::SERVICE_UNAVAILABLE)
                .with_header(axum::http::header::RETRY_AFTER, "5"));
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        Ok(self.blob_size(d).await?.is_some())
    }

    /// Remove blobs no linked manifest references, their links, and upload sessions
    /// older than `opts.upload_expiry`.
    pub async fn gc(&self, opts: &GcOptions) -> Result<GcReport, RegistryError> {
        let mut report = GcReport::default();
        let marker = self.key(&format!("gc/run-{}", uuid::Uuid::new_v4()));
        self.write(&marker, bytes::Bytes::new()).await?;
        let t0 = self
            .head(&marker)
            .await?
            .map(|m| m.last_modified)
            .ok_or_else(|| super::failure_msg(format!("gc's marker {marker} vanished")))?;
        let _ = self.inner.delete(&marker).await;
        let grace = chrono::TimeDelta::from_std(opts.grace).unwrap_or(chrono::TimeDelta::MAX);
        let old = t0 - grace - TIME_SLACK;

        // Mark: every manifest linked anywhere, and what it references.
        let mut manifests = Vec::new();
        let mut links: HashMap<Digest, Vec<object_store::path::Path>> = HashMap::new();
        for m in self.list("repositories").await? {
            let rel = self.relative(&m.location).to_string();
            let Some((_, kind_rest)) = rel.split_once("/_") else {
                continue;
            };
            let mut parts = kind_rest.split('/');
            let (kind, alg, hex) = (parts.next(), parts.next(), parts.next());
            let (Some(kind), Some(alg), Some(hex)) = (kind, alg, hex) else {
                continue;
            };
            let Ok(d) = format!("{alg}:{hex}").parse::<Digest>() else {
                continue;
            };
            match kind {
                "manifests" => manifests.push(d),
                "blobs" => links.entry(d).or_default().push(m.location.clone()),
                _ => {}
            }
        }
        let mut marked: HashSet<Digest> = HashSet::new();
        for d in manifests {
            if !marked.insert(d.clone()) {
                continue;
            }
            let Some(bytes) = self.read_blob(&d).await? else {
                continue;
            };
            if let Ok((m, _)) = Manifest::parse(&bytes, None) {
                for r in m.blobs() {
                    marked.insert(r.digest.clone());
                }
                for r in &m.manifests {
                    marked.insert(r.digest.clone());
                }
            }
        }
        report.live_blobs = marked.len();

        // Sweep, re-checking each candidate after dooming it.
        for m in self.list("blobs").await? {
            let rel = self.relative(&m.location).to_string();
            let mut parts = rel.split('/').skip(1);
            let (Some(alg), Some(hex)) = (parts.next(), parts.next()) else {
                continue;
            };
            let Ok(d) = format!("{alg}:{hex}").parse::<Digest>() else {
                continue;
            };
            if marked.contains(&d) || m.last_modified >= old {
                continue;
            }
            if opts.dry_run {
                report.removed_bytes += m.size;
                report.removed_links += links.get(&d).map_or(0, Vec::len);
                report.removed_blobs.push(d);
                continue;
            }
            let doomed = self.marker_key("doomed", &d);
            self.write(&doomed, bytes::Bytes::new()).await?;
            let recent = |t: Option<DateTime<Utc>>| t.is_some_and(|t| t >= old);
            let touched = self.head(&self.marker_key("touch", &d)).await?;
            let now = self.head(&m.location).await?;
            if recent(touched.map(|t| t.last_modified)) || recent(now.map(|n| n.last_modified)) {
                let _ = self.inner.delete(&doomed).await;
                continue;
            }
            for link in links.get(&d).into_iter().flatten() {
                match self.inner.delete(link).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => report.removed_links += 1,
                    Err(e) => return Err(failure(e)),
                }
            }
            match self.inner.delete(&m.location).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(failure(e)),
            }
            let _ = self.inner.delete(&self.marker_key("touch", &d)).await;
            let _ = self.inner.delete(&doomed).await;
            report.removed_bytes += m.size;
            report.removed_blobs.push(d);
        }

        // Touches only matter while recent; doom markers of dead runs go too.
        if !opts.dry_run {
            for m in self.list("gc").await? {
                let stale = match self.relative(&m.location).split('/').nth(1) {
                    Some("touch") => m.last_modified < old,
                    Some("doomed") => t0 - m.last_modified >= STALE_DOOM,
                    _ => false,
                };
                if stale {
                    let _ = self.inner.delete(&m.location).await;
                }
            }
        }

        // Upload sessions nobody wrote to for `upload_expiry`.
        let expiry =
            chrono::TimeDelta::from_std(opts.upload_expiry).unwrap_or(chrono::TimeDelta::MAX);
        for m in self.list("uploads").await? {
            let rel = self.relative(&m.location).to_string();
            let Some(id) = rel
                .strip_prefix("uploads/")
                .and_then(|r| r.strip_suffix("/state"))
            else {
                continue;
            };
            if m.last_modified >= t0 - expiry - TIME_SLACK {
                continue;
            }
            if !opts.dry_run {
                let multipart = self.upload_multipart(id).await?;
                self.discard(id, multipart.as_deref()).await;
            }
            report.removed_ingests.push(id.to_string());
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both orders of the handshake, one step at a time: a writer that stamps before gc
    /// re-checks keeps the blob; a writer that comes after gc doomed or removed it is
    /// told not to answer 2xx.
    #[tokio::test]
    async fn the_handshake_between_gc_and_writers() {
        let Some(m) = berth_testutil::moto::Moto::start("handshake") else {
            return;
        };
        let settings = crate::S3Settings {
            bucket: "handshake".into(),
            endpoint: Some(m.endpoint.clone()),
            ..Default::default()
        };
        let env = |k: &str| k.starts_with("AWS_").then(|| "test".to_string());
        let os = ObjectStorage::with_env(&settings, &Default::default(), &env).unwrap();
        let blob = |s: &str| {
            (
                Digest::sha256(s.as_bytes()),
                bytes::Bytes::from(s.to_string()),
            )
        };
        let (kept, kept_data) = blob("stamped by a writer");
        let (doomed, doomed_data) = blob("doomed by a gc");
        let (gone, gone_data) = blob("removed by a gc");
        for (d, data) in [
            (&kept, kept_data),
            (&doomed, doomed_data),
            (&gone, gone_data),
        ] {
            os.put_blob(d, data).await.unwrap();
            os.link_blob("app", d).await.unwrap();
        }
        // Unreferenced and older than gc's slack on whole-second times.
        tokio::time::sleep(std::time::Duration::from_secs(3)).await;
        let opts = GcOptions {
            grace: std::time::Duration::ZERO,
            ..Default::default()
        };

        // The writer stamps first: gc sees a recent touch and keeps the blob.
        assert!(os.hold(&kept).await.unwrap());
        // gc dooms first: the writer waits for its decision. Here gc keeps one blob and
        // removes the other, and removes its markers after deciding.
        for d in [&doomed, &gone] {
            os.write(&os.marker_key("doomed", d), bytes::Bytes::new())
                .await
                .unwrap();
        }
        let waiting = {
            let os = os.clone();
            let (doomed, gone) = (doomed.clone(), gone.clone());
            tokio::spawn(async move {
                (
                    os.hold(&doomed).await.unwrap(),
                    os.hold(&gone).await.unwrap(),
                )
            })
        };
        os.inner.delete(&os.blob_key(&gone)).await.unwrap();
        for d in [&doomed, &gone] {
            os.inner.delete(&os.marker_key("doomed", d)).await.unwrap();
        }
        assert_eq!(waiting.await.unwrap(), (true, false));

        let report = os.gc(&opts).await.unwrap();
        assert!(os.blob_size(&kept).await.unwrap().is_some(), "{report:?}");
        assert!(os.blob_size(&doomed).await.unwrap().is_some(), "{report:?}");
        assert!(
            report.removed_blobs.is_empty(),
            "touched blobs stay: {report:?}"
        );
        // Untouched for longer than the slack, nothing references them: gc removes
        // them with their links, and a writer now learns it.
        tokio::time::sleep(std::time::Duration::from_secs(3)).await;
        let report = os.gc(&opts).await.unwrap();
        assert!(report.removed_blobs.contains(&kept), "{report:?}");
        assert_eq!(report.removed_links, 2, "{report:?}");
        assert!(!os.has_blob("app", &kept).await.unwrap());
        assert!(!os.hold(&kept).await.unwrap());
    }
}
