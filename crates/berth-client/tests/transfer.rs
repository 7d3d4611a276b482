//! Image transfer between berth's content store and real berth registries, in-process
//! on 127.0.0.1: a multi-platform, multi-layer image pulled for a chosen platform, pushed
//! to a second repository of the same registry (cross-repository mounts) and to another
//! registry (uploads), with every digest checked; and pulls that fail (a blob served
//! with other bytes, a blob the registry lost) leave the store without a trace of them.

use std::sync::{Arc, Mutex};

use berth_client::{
    Client, ClientConfig, Error, Platform, PullEvent, PullOptions, TransferError, pull_image,
    push_image,
};
use berth_oci::{Algorithm, Digest, Reference, media_type};
use berth_registry::{Config, Registry};
use berth_store::Store;

struct Server {
    addr: std::net::SocketAddr,
    store: Store,
    _dir: tempfile::TempDir,
}

async fn start() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("root")).unwrap();
    let registry = Registry::new(Config::new(store.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(berth_registry::serve(
        listener,
        registry.router(),
        None,
        std::future::pending(),
    ));
    Server {
        addr,
        store,
        _dir: dir,
    }
}

impl Server {
    fn reference(&self, name: &str) -> Reference {
        format!("{}/{name}", self.addr).parse().unwrap()
    }
}

/// What [`publish`] put into a registry.
struct Image {
    index: Digest,
    /// Per platform (amd64, arm64): manifest digest and its layers' digests.
    amd64: (Digest, Vec<Digest>),
    arm64: (Digest, Vec<Digest>),
}

/// Deterministic bytes that do not compress away.
fn noise(seed: u8, len: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_u32 ^ u32::from(seed);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn descriptor(mt: &str, d: &Digest, size: usize) -> serde_json::Value {
    serde_json::json!({"mediaType": mt, "digest": d, "size": size})
}

/// Put `data` into `repo` of the registry's store, as a finished push leaves it.
fn put(store: &Store, repo: &str, data: &[u8]) -> Digest {
    let d = store.put_blob(Algorithm::Sha256, data).unwrap().digest;
    store.repos().link_blob(repo, &d).unwrap();
    d
}

/// An image manifest of three layers (one of 3 MB) for `arch`, in `repo`.
fn image_for(store: &Store, repo: &str, arch: &str, seed: u8) -> (Digest, Vec<Digest>) {
    let layers: Vec<Vec<u8>> = vec![
        noise(seed, 3_000_000),
        noise(seed + 1, 40_000),
        noise(seed + 2, 10),
    ];
    let config = serde_json::json!({
        "architecture": arch, "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| Digest::sha256(l)).collect::<Vec<_>>()},
    })
    .to_string();
    let c = put(store, repo, config.as_bytes());
    let digests: Vec<Digest> = layers.iter().map(|l| put(store, repo, l)).collect();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media_type::OCI_MANIFEST,
        "config": descriptor(media_type::OCI_CONFIG, &c, config.len()),
        "layers": layers.iter().zip(&digests)
            .map(|(l, d)| descriptor(media_type::OCI_LAYER_GZIP, d, l.len())).collect::<Vec<_>>(),
    })
    .to_string();
    let m = put(store, repo, manifest.as_bytes());
    store
        .repos()
        .link_manifest(repo, &m, media_type::OCI_MANIFEST)
        .unwrap();
    let mut blobs = digests;
    blobs.push(c);
    (m, blobs)
}

/// A two-platform image tagged `repo:1` in the registry's store.
fn publish(store: &Store, repo: &str) -> Image {
    let amd64 = image_for(store, repo, "amd64", 1);
    let arm64 = image_for(store, repo, "arm64", 7);
    let size = |d: &Digest| store.blob_size(d).unwrap().unwrap() as usize;
    let platform = |d: &Digest, arch: &str| {
        let mut v = descriptor(media_type::OCI_MANIFEST, d, size(d));
        v["platform"] = serde_json::json!({"os": "linux", "architecture": arch});
        v
    };
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media_type::OCI_INDEX,
        "manifests": [platform(&amd64.0, "amd64"), platform(&arm64.0, "arm64")],
    })
    .to_string();
    let i = put(store, repo, index.as_bytes());
    let repos = store.repos();
    repos
        .link_manifest(repo, &i, media_type::OCI_INDEX)
        .unwrap();
    repos.set_tag(repo, "1", &i).unwrap();
    Image {
        index: i,
        amd64,
        arm64,
    }
}

fn client() -> Client {
    Client::new(ClientConfig::default())
}

fn on(arch: &str) -> PullOptions {
    PullOptions::new(Platform::new("linux", arch))
}

/// A store the test pulls into.
fn local() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    (dir, store)
}

/// Progress lines, collected.
#[derive(Default)]
struct Lines(Mutex<Vec<String>>);

impl Lines {
    fn push(&self, line: &str) {
        self.0.lock().unwrap().push(line.to_string());
    }

    fn starting(&self, word: &str) -> usize {
        let lines = self.0.lock().unwrap();
        lines.iter().filter(|l| l.starts_with(word)).count()
    }
}

#[tokio::test]
async fn pull_a_platform_then_push_it_by_mount_and_by_upload() {
    let src = start().await;
    let image = publish(&src.store, "team/app");
    let (_dir, store) = local();
    let client = client();

    // The arm64 manifest, not the host's: the platform is the caller's choice.
    let pulled = pull_image(&client, &store, &src.reference("team/app:1"), &on("arm64"))
        .await
        .unwrap();
    assert_eq!(pulled.manifest, image.arm64.0);
    assert_eq!(pulled.index.as_ref(), Some(&image.index));
    assert_eq!(pulled.media_type, media_type::OCI_MANIFEST);
    for d in image.arm64.1.iter().chain([&image.arm64.0, &image.index]) {
        assert_eq!(
            store.read_blob(d).unwrap().map(|b| Digest::sha256(&b)),
            Some(d.clone()),
            "{d} pulled whole"
        );
    }
    for d in &image.amd64.1 {
        assert_eq!(store.blob_size(d).unwrap(), None, "other platform's {d}");
    }
    assert!(store.ingests().unwrap().is_empty());

    // Another repository of the same registry: every blob is mounted, none uploaded.
    let lines = Lines::default();
    let copy = src.reference("team/copy:1");
    let pushed = push_image(&client, &store, &pulled.manifest, &copy, &|l| lines.push(l))
        .await
        .unwrap();
    assert_eq!(pushed, image.arm64.0);
    assert_eq!(lines.starting("mounted"), 4, "{:?}", lines.0);
    assert_eq!(lines.starting("pushed"), 0, "{:?}", lines.0);
    assert_eq!(
        src.store.repos().tag("team/copy", "1").unwrap(),
        Some(image.arm64.0.clone())
    );

    // Another registry: uploaded, and it pulls back to the same digests.
    let dst = start().await;
    let lines = Lines::default();
    let there = dst.reference("mirror/app:arm");
    let pushed = push_image(&client, &store, &pulled.manifest, &there, &|l| {
        lines.push(l)
    })
    .await
    .unwrap();
    assert_eq!(pushed, image.arm64.0);
    assert_eq!(lines.starting("pushed"), 4, "{:?}", lines.0);
    let (_dir2, again) = local();
    let back = pull_image(&client, &again, &there, &on("arm64"))
        .await
        .unwrap();
    assert_eq!((back.manifest, back.index), (image.arm64.0.clone(), None));

    // With both platforms in the store the index goes too, byte for byte: its
    // manifests first, by digest.
    pull_image(&client, &store, &src.reference("team/app:1"), &on("amd64"))
        .await
        .unwrap();
    let pushed = push_image(&client, &store, &image.index, &there, &|_| {})
        .await
        .unwrap();
    assert_eq!(pushed, image.index);
    let report = dst.store.check().unwrap();
    assert!(
        report.problems.is_empty() && report.corrupt.is_empty(),
        "{report:?}"
    );
    assert_eq!(report.manifests, 3);
}

#[tokio::test]
async fn pull_every_platform_of_an_index_with_an_event_per_blob() {
    let src = start().await;
    let image = publish(&src.store, "team/app");
    let (_dir, store) = local();
    // One blob of arm64 is there already.
    let had = image.arm64.1[0].clone();
    store
        .put_blob(
            Algorithm::Sha256,
            &src.store.read_blob(&had).unwrap().unwrap(),
        )
        .unwrap();
    let events = Arc::new(Mutex::new(Vec::new()));
    let seen = events.clone();
    let opts = PullOptions {
        all_platforms: true,
        progress: Some(Arc::new(move |e: &PullEvent| {
            seen.lock().unwrap().push(e.clone())
        })),
        ..on("s390x")
    };
    let pulled = pull_image(&client(), &store, &src.reference("team/app:1"), &opts)
        .await
        .unwrap();
    assert_eq!((&pulled.manifest, &pulled.index), (&image.index, &None));
    assert_eq!(pulled.media_type, media_type::OCI_INDEX);
    let all: Vec<&Digest> = image.amd64.1.iter().chain(&image.arm64.1).collect();
    for d in all
        .iter()
        .copied()
        .chain([&image.amd64.0, &image.arm64.0, &image.index])
    {
        assert!(store.blob_size(d).unwrap().is_some(), "{d} pulled");
    }
    let events = events.lock().unwrap();
    let done: Vec<&Digest> = events
        .iter()
        .filter_map(|e| match e {
            PullEvent::Done { digest, .. } => Some(digest),
            _ => None,
        })
        .collect();
    assert_eq!(done.len(), all.len() - 1, "{events:?}");
    assert!(!done.contains(&&had));
    assert!(events.contains(&PullEvent::Exists {
        size: store.blob_size(&had).unwrap().unwrap(),
        digest: had,
    }));
}

/// What a failed pull may leave: complete blobs of the image (valid content gc
/// collects), never an ingest, a blob under the wrong name, or a manifest whose blobs
/// are not all there.
fn assert_no_trace(store: &Store, image: &Image, bad: &Digest) {
    assert!(store.ingests().unwrap().is_empty(), "an ingest was left");
    assert_eq!(store.blob_size(bad).unwrap(), None, "the bad blob was kept");
    for m in [&image.index, &image.amd64.0] {
        assert_eq!(store.blob_size(m).unwrap(), None, "manifest {m} was stored");
    }
    assert!(store.check().unwrap().corrupt.is_empty());
}

#[tokio::test]
async fn a_blob_served_with_other_bytes_is_refused_and_leaves_nothing() {
    let src = start().await;
    let image = publish(&src.store, "team/app");
    // The registry's copy of the big layer rots: same length, other bytes.
    let bad = image.amd64.1[0].clone();
    let path = src.store.blob_path(&bad);
    let mut perms = std::fs::metadata(&path).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o644);
    std::fs::set_permissions(&path, perms).unwrap();
    std::fs::write(&path, noise(99, 3_000_000)).unwrap();

    let (_dir, store) = local();
    let r = src.reference("team/app:1");
    let err = pull_image(&client(), &store, &r, &on("amd64"))
        .await
        .unwrap_err();
    match &err {
        TransferError::Registry {
            source: Error::DigestMismatch { expected, .. },
            ..
        } => assert_eq!(*expected, bad),
        other => panic!("not a digest mismatch: {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!("pull {r}: ")) && msg.contains(&format!("expected {bad}")),
        "{msg}"
    );
    assert_no_trace(&store, &image, &bad);
}

#[tokio::test]
async fn a_blob_the_registry_lost_fails_the_pull_and_leaves_nothing() {
    let src = start().await;
    let image = publish(&src.store, "team/app");
    let lost = image.amd64.1[1].clone();
    src.store.delete_blob(&lost).unwrap();

    let (_dir, store) = local();
    let err = pull_image(
        &client(),
        &store,
        &src.reference("team/app:1"),
        &on("amd64"),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, TransferError::Registry { source: Error::NotFound(what), .. } if what.contains(&lost.to_string())),
        "{err:?}"
    );
    assert_no_trace(&store, &image, &lost);

    // A platform the index lacks is named as such.
    let err = pull_image(
        &client(),
        &store,
        &src.reference("team/app:1"),
        &on("s390x"),
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string().ends_with("has no image for linux/s390x"),
        "{err}"
    );
}

#[tokio::test]
async fn pushing_an_image_whose_blob_is_missing_writes_no_manifest() {
    let src = start().await;
    let image = publish(&src.store, "team/app");
    let (_dir, store) = local();
    let client = client();
    pull_image(&client, &store, &src.reference("team/app:1"), &on("amd64"))
        .await
        .unwrap();
    let gone = image.amd64.1[2].clone();
    store.delete_blob(&gone).unwrap();

    let dst = start().await;
    let err = push_image(
        &client,
        &store,
        &image.amd64.0,
        &dst.reference("app:1"),
        &|_| {},
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, TransferError::Missing(what) if what.contains(&gone.to_string())),
        "{err:?}"
    );
    assert_eq!(dst.store.repos().tag("app", "1").unwrap(), None);
    assert_eq!(dst.store.blob_size(&image.amd64.0).unwrap(), None);
}

/// A port on 127.0.0.1 where nothing listens.
fn dead_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn with_mirrors(registry: &str, mirrors: &[String]) -> Client {
    let mut config = ClientConfig::default();
    config.hosts.insert(
        registry.to_string(),
        berth_client::HostOptions {
            mirrors: mirrors.to_vec(),
            ..Default::default()
        },
    );
    Client::new(config)
}

#[tokio::test]
async fn docker_hub_pulls_go_to_the_mirrors_in_order_with_the_library_path() {
    let mirror = start().await;
    let image = publish(&mirror.store, "library/app");
    let dead = format!("127.0.0.1:{}", dead_port());
    let client = with_mirrors("docker.io", &[dead, mirror.addr.to_string()]);
    let (_dir, store) = local();
    // `app:1` is docker.io/library/app:1: the first mirror is down, the second serves
    // library/app; docker.io itself is never asked (this machine has no internet).
    let r: Reference = "app:1".parse().unwrap();
    let pulled = pull_image(&client, &store, &r, &on("arm64")).await.unwrap();
    assert_eq!(pulled.manifest, image.arm64.0);
    assert_eq!(pulled.index, Some(image.index));
    for d in &image.arm64.1 {
        assert!(store.blob_size(d).unwrap().is_some(), "{d} pulled");
    }
}

#[tokio::test]
async fn when_every_source_fails_the_error_names_each_attempt() {
    let empty_mirror = start().await;
    let (m1, up) = (
        empty_mirror.addr.to_string(),
        format!("127.0.0.1:{}", dead_port()),
    );
    let m2 = format!("127.0.0.1:{}", dead_port());
    let client = with_mirrors(&up, &[m1.clone(), m2.clone()]);
    let (_dir, store) = local();
    let r: Reference = format!("{up}/team/app:1").parse().unwrap();
    let err = pull_image(&client, &store, &r, &on("amd64"))
        .await
        .unwrap_err();
    let TransferError::Sources { attempts, .. } = &err else {
        panic!("not a Sources error: {err}");
    };
    assert_eq!(attempts.len(), 3, "{attempts:?}");
    assert!(
        attempts[0].starts_with(&format!("mirror {m1}: ")) && attempts[0].contains("not found"),
        "{}",
        attempts[0]
    );
    assert!(
        attempts[1].starts_with(&format!("mirror {m2}: ")),
        "{}",
        attempts[1]
    );
    assert!(
        attempts[2].starts_with(&format!("upstream {up}: ")),
        "{}",
        attempts[2]
    );
    assert!(
        err.to_string()
            .starts_with(&format!("pull {r}: no source served it: mirror {m1}: ")),
        "{err}"
    );
}
