//! Content store behaviour: commit rules, resume, locking, concurrency, metadata, gc.

use std::collections::HashSet;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use berth_oci::{Algorithm, Descriptor, Digest};
use berth_store::{Error, ErrorKind, GcOptions, GcRoots, NoRoots, Store};

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path().join("root")).unwrap();
    (dir, s)
}

#[test]
fn content_is_invisible_until_commit() {
    let (_d, s) = store();
    let want = Digest::sha256(b"layer");
    let mut w = s.writer("a", Algorithm::Sha256).unwrap();
    w.write_all(b"layer").unwrap();
    assert_eq!(s.blob_size(&want).unwrap(), None);
    assert_eq!(s.blobs().unwrap(), vec![]);
    let c = w.commit(Some(&want), Some(5)).unwrap();
    assert!(!c.existed);
    assert_eq!(s.read_blob(&want).unwrap().unwrap(), b"layer");
    assert!(s.ingests().unwrap().is_empty(), "commit removes the ingest");
}

#[test]
fn wrong_digest_or_size_is_refused_and_names_both_sides() {
    let (_d, s) = store();
    let mut w = s.writer("a", Algorithm::Sha256).unwrap();
    w.write_all(b"actual").unwrap();
    let claimed = Digest::sha256(b"claimed");
    let err = w.commit(Some(&claimed), None).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::DigestMismatch { .. }));
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert!(
        msg.contains(&claimed.to_string()) && msg.contains(&Digest::sha256(b"actual").to_string()),
        "{msg}"
    );
    assert!(s.blobs().unwrap().is_empty(), "nothing committed");

    let mut w = s.writer("b", Algorithm::Sha256).unwrap();
    w.write_all(b"12345").unwrap();
    let err = w.commit(None, Some(4)).unwrap_err();
    assert!(
        matches!(
            err,
            Error::SizeMismatch {
                expected: 4,
                got: 5
            }
        ),
        "{err}"
    );
    assert!(s.blobs().unwrap().is_empty());
}

#[test]
fn resume_rehashes_what_is_there() {
    let (_d, s) = store();
    let mut w = s.writer("up", Algorithm::Sha512).unwrap();
    w.write_all(b"first half, ").unwrap();
    drop(w);
    let info = s.ingest("up").unwrap().unwrap();
    assert_eq!(info.offset, 12);
    let mut w = s.writer("up", Algorithm::Sha512).unwrap();
    assert_eq!(w.offset(), 12);
    w.write_all(b"second half").unwrap();
    let want = Digest::of(Algorithm::Sha512, b"first half, second half");
    assert_eq!(w.commit(Some(&want), None).unwrap().digest, want);
    assert!(
        s.blob_path(&want)
            .to_string_lossy()
            .contains("blobs/sha512/")
    );
}

#[test]
fn an_open_ingest_is_locked() {
    let (_d, s) = store();
    let _w = s.writer("busy", Algorithm::Sha256).unwrap();
    let err = s.writer("busy", Algorithm::Sha256).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert_eq!(s.abort("busy").unwrap_err().kind(), ErrorKind::Unavailable);
}

#[test]
fn bad_ingest_refs_are_refused() {
    let (_d, s) = store();
    for bad in ["", "../x", "a/b", ".hidden"] {
        assert_eq!(
            s.writer(bad, Algorithm::Sha256).unwrap_err().kind(),
            ErrorKind::InvalidArgument,
            "{bad:?}"
        );
    }
}

#[test]
fn parallel_commits_of_one_blob_all_succeed() {
    let (_d, s) = store();
    let data: Vec<u8> = (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect();
    let want = Digest::sha256(&data);
    let n = 8;
    let barrier = Arc::new(Barrier::new(n));
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let (s, data, want, barrier) = (s.clone(), data.clone(), want.clone(), barrier.clone());
            std::thread::spawn(move || {
                let mut w = s.writer(&format!("w{i}"), Algorithm::Sha256).unwrap();
                for chunk in data.chunks(7919) {
                    w.write_all(chunk).unwrap();
                }
                barrier.wait();
                w.commit(Some(&want), Some(data.len() as u64)).unwrap()
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap().digest, want);
    }
    assert_eq!(s.read_blob(&want).unwrap().unwrap(), data);
    assert!(s.ingests().unwrap().is_empty());
    assert!(s.check().unwrap().corrupt.is_empty());
}

#[test]
fn tags_manifests_and_referrers() {
    let (_d, s) = store();
    let r = s.repos();
    let m = s.put_blob(Algorithm::Sha256, b"{}").unwrap().digest;
    r.link_manifest("team/app", &m, "application/vnd.oci.image.manifest.v1+json")
        .unwrap();
    r.set_tag("team/app", "v1", &m).unwrap();
    r.set_tag("team/app", "latest", &m).unwrap();
    assert_eq!(r.tags("team/app").unwrap(), ["latest", "v1"]);
    assert_eq!(r.tag("team/app", "v1").unwrap(), Some(m.clone()));
    assert_eq!(r.repositories().unwrap(), ["team/app"]);
    let referrer = Descriptor {
        media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        digest: Digest::sha256(b"sig"),
        size: 3,
        artifact_type: Some("application/example".into()),
        annotations: None,
        platform: None,
    };
    r.add_referrer("team/app", &m, &referrer).unwrap();
    assert_eq!(r.referrers("team/app", &m).unwrap(), vec![referrer]);
    assert!(r.unlink_manifest("team/app", &m).unwrap());
    assert!(
        r.tags("team/app").unwrap().is_empty(),
        "deleting a manifest deletes its tags"
    );
    assert!(r.set_tag("team/app", "../x", &m).is_err());
    assert!(r.link_blob("../etc", &m).is_err());
}

#[test]
fn gc_sweeps_unreferenced_blobs_and_keeps_referenced_ones() {
    let (_d, s) = store();
    let layer = s.put_blob(Algorithm::Sha256, b"layer").unwrap().digest;
    let config = s
        .put_blob(Algorithm::Sha256, b"{\"config\":1}")
        .unwrap()
        .digest;
    let orphan = s.put_blob(Algorithm::Sha256, b"orphan").unwrap().digest;
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":12}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{layer}","size":5}}]}}"#
    );
    let m = s
        .put_blob(Algorithm::Sha256, manifest.as_bytes())
        .unwrap()
        .digest;
    let r = s.repos();
    for b in [&layer, &config, &orphan] {
        r.link_blob("app", b).unwrap();
    }
    r.link_manifest("app", &m, "application/vnd.oci.image.manifest.v1+json")
        .unwrap();
    let mut stale = s.writer("stale-upload", Algorithm::Sha256).unwrap();
    stale.write_all(b"partial").unwrap();
    drop(stale);

    // Within the grace period nothing goes.
    let report = s.gc(&GcOptions::default(), &NoRoots).unwrap();
    assert!(report.removed_blobs.is_empty(), "{report:?}");
    // Freshly stamped blobs stay even with no grace (the clock margin).
    let fresh = s
        .gc(
            &GcOptions {
                dry_run: true,
                grace: Duration::ZERO,
                upload_expiry: Duration::ZERO,
            },
            &NoRoots,
        )
        .unwrap();
    assert!(fresh.removed_blobs.is_empty(), "{fresh:?}");
    backdate(&s.blob_path(&orphan));
    backdate(
        &s.root()
            .join("repositories/app/_blobs/sha256")
            .join(orphan.hex()),
    );

    let now = GcOptions {
        dry_run: true,
        grace: Duration::ZERO,
        upload_expiry: Duration::ZERO,
    };
    let dry = s.gc(&now, &NoRoots).unwrap();
    assert_eq!(dry.removed_blobs, vec![orphan.clone()]);
    assert_eq!(dry.removed_ingests, vec!["stale-upload".to_string()]);
    assert!(
        s.blob_size(&orphan).unwrap().is_some(),
        "dry run removes nothing"
    );

    let real = s
        .gc(
            &GcOptions {
                dry_run: false,
                ..now
            },
            &NoRoots,
        )
        .unwrap();
    assert_eq!(real.removed_blobs, vec![orphan.clone()]);
    assert_eq!(real.removed_bytes, 6);
    assert_eq!(s.blob_size(&orphan).unwrap(), None);
    assert!(!r.has_blob("app", &orphan).unwrap());
    for live in [&layer, &config, &m] {
        assert!(s.blob_size(live).unwrap().is_some(), "{live} kept");
    }
    assert!(s.ingests().unwrap().is_empty());
    let check = s.check().unwrap();
    assert!(
        check.corrupt.is_empty() && check.problems.is_empty(),
        "{check:?}"
    );
}

/// Make a file look an hour old (as if stamped before any grace period).
fn backdate(path: &std::path::Path) {
    let old = std::time::SystemTime::now() - Duration::from_secs(3600);
    std::fs::File::open(path)
        .unwrap()
        .set_modified(old)
        .unwrap();
}

#[test]
fn gc_never_removes_a_protected_blob() {
    let (_d, s) = store();
    let orphan = s.put_blob(Algorithm::Sha256, b"held").unwrap().digest;
    backdate(&s.blob_path(&orphan));
    let now = GcOptions {
        dry_run: false,
        grace: Duration::ZERO,
        upload_expiry: Duration::ZERO,
    };
    // Held by a request (a HEAD, a manifest PUT checking it): kept.
    let guard = s.protect_blob(&orphan).unwrap().expect("blob present");
    assert_eq!(guard.size(), 4);
    assert!(s.gc(&now, &NoRoots).unwrap().removed_blobs.is_empty());
    // Released: stamped now, so kept by this and any gc that marked before.
    drop(guard);
    assert!(s.gc(&now, &NoRoots).unwrap().removed_blobs.is_empty());
    assert!(
        s.sweep_blob(&orphan, std::time::SystemTime::now(), Duration::ZERO, false)
            .unwrap()
            .is_none()
    );
    // Once its stamp is older than the cutoff, it goes.
    backdate(&s.blob_path(&orphan));
    assert_eq!(
        s.gc(&now, &NoRoots).unwrap().removed_blobs,
        vec![orphan.clone()]
    );
    assert!(s.protect_blob(&orphan).unwrap().is_none());
    // Committing it again works, and the new blob is protected on return.
    let mut w = s.writer("again", Algorithm::Sha256).unwrap();
    w.write_all(b"held").unwrap();
    let (c, guard) = w.commit_protected(Some(&orphan), None).unwrap();
    assert!(!c.existed);
    backdate(&s.blob_path(&orphan));
    assert!(s.gc(&now, &NoRoots).unwrap().removed_blobs.is_empty());
    drop(guard);
}

/// Roots given by another part of berth, as berth-build gives its cache's layers.
struct Roots(Result<Vec<Digest>, ()>);

impl GcRoots for Roots {
    fn roots(&self, store: &Store) -> berth_store::Result<HashSet<Digest>> {
        match &self.0 {
            Ok(d) => Ok(d.iter().cloned().collect()),
            Err(()) => Err(Error::Io {
                op: "read roots",
                path: store.root().join("cache/records"),
                source: std::io::Error::other("unreadable"),
            }),
        }
    }
}

#[test]
fn gc_keeps_the_roots_it_is_given_and_stops_when_they_fail() {
    let (_d, s) = store();
    let cached = s.put_blob(Algorithm::Sha256, b"cached").unwrap().digest;
    let orphan = s.put_blob(Algorithm::Sha256, b"orphan").unwrap().digest;
    backdate(&s.blob_path(&cached));
    backdate(&s.blob_path(&orphan));
    let now = GcOptions {
        dry_run: false,
        grace: Duration::ZERO,
        upload_expiry: Duration::ZERO,
    };
    // Roots that cannot be read: nothing is removed, and the error says why.
    let err = s.gc(&now, &Roots(Err(()))).unwrap_err();
    assert!(err.to_string().contains("read roots"), "{err}");
    assert!(s.blob_size(&orphan).unwrap().is_some());
    // A root is live; what no root or repository reaches goes.
    let report = s.gc(&now, &Roots(Ok(vec![cached.clone()]))).unwrap();
    assert_eq!(report.removed_blobs, vec![orphan]);
    assert!(s.blob_size(&cached).unwrap().is_some());
    // Without the roots it would have gone too.
    assert_eq!(s.gc(&now, &NoRoots).unwrap().removed_blobs, vec![cached]);
}

#[test]
fn check_verifies_every_manifest_deeply() {
    let (_d, s) = store();
    let put = |b: &[u8]| s.put_blob(Algorithm::Sha256, b).unwrap().digest;
    let r = s.repos();
    let layer = put(b"layer");
    let config = put(b"{}");
    let unlinked = put(b"unlinked layer");
    let missing = berth_oci::Digest::sha256(b"never stored");
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":2}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{layer}","size":99}},{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{missing}","size":1}},{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{unlinked}","size":14}},{{"mediaType":"application/vnd.oci.image.layer.nondistributable.v1.tar","digest":"{missing}","size":1}}],"subject":{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{missing}","size":1}}}}"#
    );
    let m = put(manifest.as_bytes());
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{m}","size":{}}},{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{missing}","size":1}}]}}"#,
        manifest.len()
    );
    let i = put(index.as_bytes());
    let gone = berth_oci::Digest::sha256(b"gone manifest");
    for b in [&layer, &config] {
        r.link_blob("app", b).unwrap();
    }
    r.link_manifest("app", &m, "application/vnd.oci.image.manifest.v1+json")
        .unwrap();
    r.link_manifest("app", &i, "application/vnd.oci.image.index.v1+json")
        .unwrap();
    r.link_manifest("app", &gone, "application/vnd.oci.image.manifest.v1+json")
        .unwrap();
    let report = s.check().unwrap();
    assert_eq!(report.manifests, 3);
    let text: Vec<String> = report.problems.iter().map(|p| p.to_string()).collect();
    let has = |want: &str| {
        assert!(
            text.iter().any(|t| t.contains(want)),
            "no problem with {want:?} in {text:#?}"
        )
    };
    has(&format!("manifest {gone}: missing from the blob store"));
    has(&format!("layer {layer} is 5 bytes, the manifest says 99"));
    has(&format!("manifest {m}: layer {missing} is missing"));
    has(&format!("layer {unlinked} is stored but not linked"));
    has(&format!("subject {missing} does not list it"));
    has(&format!("manifest {i}: manifest {missing} is missing"));
    // The non-distributable layer is not a problem; nothing else is either.
    assert_eq!(report.problems.len(), 6, "{text:#?}");
    assert!(report.problems.iter().all(|p| p.repository == "app"));
}

#[test]
fn check_finds_corrupt_blobs() {
    let (_d, s) = store();
    let d = s.put_blob(Algorithm::Sha256, b"good").unwrap().digest;
    let path = s.blob_path(&d);
    let mut perm = std::fs::metadata(&path).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perm.set_readonly(false);
    std::fs::set_permissions(&path, perm).unwrap();
    std::fs::write(&path, b"evil").unwrap();
    assert_eq!(s.check().unwrap().corrupt, vec![d]);
}
