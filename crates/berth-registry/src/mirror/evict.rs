//! Keeping the pull-through cache under its size cap, least recently pulled first.
//!
//! The cache is every blob (manifests included) linked into a repository under a mirror
//! prefix and into no local repository, and not named by the caller's roots (the build
//! cache of a shared root). A blob's stamp (its file's modification time) is renewed
//! whenever a request serves it ([`berth_store::Store::protect_blob`]), so ordering by
//! stamp is ordering by last pull. Blobs are removed with [`Store::sweep_blob`], which
//! skips any a request holds or stamped in the last [`berth_store::CLOCK_MARGIN`]; their
//! links and the tags of removed manifests go too, so a later pull fetches them again.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime};

use berth_oci::Digest;
use berth_store::{GcRoots, Store};

/// What an eviction found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EvictReport {
    /// Bytes of the cache before.
    pub cache_bytes_before: u64,
    /// Bytes of the cache after.
    pub cache_bytes: u64,
    /// Blobs removed, with their sizes, least recently pulled first.
    pub evicted: Vec<(Digest, u64)>,
}

/// Remove the least recently pulled blobs of the repositories under `prefixes` until
/// they take at most `max_bytes`. Blobs local repositories or `roots` name are neither
/// counted nor removed.
pub fn evict(
    store: &Store,
    prefixes: &[String],
    max_bytes: u64,
    roots: Option<&dyn GcRoots>,
) -> berth_store::Result<EvictReport> {
    let repos = store.repos();
    let mirrored = |r: &str| {
        let first = r.split('/').next().unwrap_or(r);
        prefixes.iter().any(|p| p == first)
    };
    let mut keep: HashSet<Digest> = match roots {
        Some(r) => r.roots(store)?,
        None => HashSet::new(),
    };
    let mut holders: HashMap<Digest, Vec<String>> = HashMap::new();
    for name in repos.repositories()? {
        let blobs = repos.blobs(&name)?;
        let manifests = repos.manifests(&name)?;
        if mirrored(&name) {
            for d in blobs.into_iter().chain(manifests) {
                holders.entry(d).or_default().push(name.clone());
            }
        } else {
            keep.extend(blobs);
            keep.extend(manifests);
        }
    }
    let mut candidates = Vec::new();
    let mut total = 0u64;
    for d in holders.keys() {
        if keep.contains(d) {
            continue;
        }
        if let Ok(m) = std::fs::metadata(store.blob_path(d)) {
            total += m.len();
            let stamp = m.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            candidates.push((stamp, d.clone(), m.len()));
        }
    }
    let mut report = EvictReport {
        cache_bytes_before: total,
        cache_bytes: total,
        evicted: Vec::new(),
    };
    if total <= max_bytes {
        return Ok(report);
    }
    candidates.sort();
    let now = SystemTime::now();
    for (_, d, _) in candidates {
        if total <= max_bytes {
            break;
        }
        let Some(size) = store.sweep_blob(&d, now, Duration::ZERO, false)? else {
            continue;
        };
        total = total.saturating_sub(size);
        for name in &holders[&d] {
            repos.unlink_blob(name, &d)?;
            if repos.manifest(name, &d)?.is_some() {
                for tag in repos.tags(name)? {
                    if repos.tag(name, &tag)?.as_ref() == Some(&d) {
                        repos.delete_tag(name, &tag)?;
                    }
                }
                repos.unlink_manifest(name, &d)?;
            }
        }
        report.evicted.push((d, size));
    }
    report.cache_bytes = total;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_oci::Algorithm;

    #[test]
    fn evicts_least_recently_pulled_and_spares_local_repositories() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let repos = store.repos();
        let old = SystemTime::now() - Duration::from_secs(3600);
        let put = |data: &[u8], age: u64, repo: &str| {
            let d = store.put_blob(Algorithm::Sha256, data).unwrap().digest;
            repos.link_blob(repo, &d).unwrap();
            let f = std::fs::File::open(store.blob_path(&d)).unwrap();
            f.set_modified(old + Duration::from_secs(age)).unwrap();
            d
        };
        let a = put(&[1u8; 100], 1, "hub/library/a");
        let b = put(&[2u8; 100], 2, "hub/library/b");
        let c = put(&[3u8; 100], 3, "hub/library/c");
        // Oldest of all, but a local repository holds it too.
        let shared = put(&[4u8; 100], 0, "hub/library/a");
        repos.link_blob("app", &shared).unwrap();
        let local = put(&[5u8; 100], 0, "app");

        let prefixes = ["hub".to_string()];
        let r = evict(&store, &prefixes, 250, None).unwrap();
        assert_eq!(r.cache_bytes_before, 300);
        assert_eq!(r.cache_bytes, 200);
        assert_eq!(r.evicted, [(a.clone(), 100)]);
        assert!(store.blob_size(&a).unwrap().is_none());
        assert!(!repos.has_blob("hub/library/a", &a).unwrap());
        for kept in [&b, &c, &shared, &local] {
            assert!(store.blob_size(kept).unwrap().is_some());
        }
        // Under the cap: nothing more goes.
        assert!(
            evict(&store, &prefixes, 250, None)
                .unwrap()
                .evicted
                .is_empty()
        );
        let r = evict(&store, &prefixes, 100, None).unwrap();
        assert_eq!(r.evicted, [(b, 100)]);
    }
}
