//! The registry's conformance flows (tests/api.rs, every one of them) on S3-compatible
//! object storage: moto's server on 127.0.0.1, one per test. Skipped without moto
//! (`scripts/install-test-deps`); a failure under BERTH_TEST_STRICT=1.

#[path = "api.rs"]
mod api;

use berth_oci::Digest;
use berth_registry::{Config, ObjectStorage, S3Settings};
use berth_store::Store;
use berth_testutil::moto::Moto;
use reqwest::{Client, StatusCode};

/// A replica on `bucket` at `m`, in this process; its base URL.
async fn replica(m: &Moto, bucket: &str, dir: &std::path::Path) -> String {
    let settings = S3Settings {
        bucket: bucket.into(),
        endpoint: Some(m.endpoint.clone()),
        ..Default::default()
    };
    replica_with(&settings, dir).await
}

async fn replica_with(settings: &S3Settings, dir: &std::path::Path) -> String {
    replica_env(settings, dir, &[]).await
}

/// [`replica_with`], with variables beyond the AWS keys in its environment.
async fn replica_env(
    settings: &S3Settings,
    dir: &std::path::Path,
    extra: &[(&str, &str)],
) -> String {
    let env = |k: &str| {
        extra
            .iter()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| v.to_string())
            .or_else(|| k.starts_with("AWS_").then(|| "test".to_string()))
    };
    let os = ObjectStorage::with_env(settings, &Default::default(), &env).unwrap();
    os.check(false).await.unwrap();
    let mut config = Config::new(Store::open(dir).unwrap());
    config.objects = Some(os);
    format!("http://{}", api::serve_in_process(config).await)
}

/// moto with bucket `bucket` and two replicas on it: (moto, their roots, A, B).
async fn two_replicas(bucket: &str) -> Option<(Moto, tempfile::TempDir, String, String)> {
    let m = Moto::start(bucket)?;
    let dir = tempfile::tempdir().unwrap();
    let a = replica(&m, bucket, &dir.path().join("a")).await;
    let b = replica(&m, bucket, &dir.path().join("b")).await;
    Some((m, dir, a, b))
}

/// A chunked upload goes back and forth between two replicas, chunk by chunk, with
/// chunks smaller and larger than a multipart part, and the closing PUT on the other
/// replica: the blob is whole, its digest checked, and no session is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_upload_started_on_one_replica_finishes_on_another() {
    let Some((m, _dir, a, b)) = two_replicas("replicas").await else {
        return;
    };
    let http = Client::new();
    // 21 MiB + 5 bytes of varied content: parts of 8 MiB, tails in between.
    let data: Vec<u8> = (0..(21usize << 20) + 5)
        .map(|i| (i % 251) as u8 ^ (i >> 20) as u8)
        .collect();
    let d = Digest::sha256(&data);
    let r = http
        .post(format!("{a}/v2/big/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let mut loc = r.headers()["location"].to_str().unwrap().to_string();
    let chunks = [1usize << 20, 3 << 20, 9 << 20, 100, (5 << 20) - 100];
    let mut offset = 0;
    for (i, len) in chunks.iter().enumerate() {
        let base = if i % 2 == 0 { &a } else { &b };
        let chunk = &data[offset..offset + len];
        let r = http
            .patch(format!("{base}{loc}"))
            .header("content-range", format!("{offset}-{}", offset + len - 1))
            .body(chunk.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::ACCEPTED, "chunk {i}");
        offset += len;
        assert_eq!(
            r.headers()["range"].to_str().unwrap(),
            format!("0-{}", offset - 1),
            "chunk {i}"
        );
        loc = r.headers()["location"].to_str().unwrap().to_string();
        // The other replica sees the same offset.
        let other = if i % 2 == 0 { &b } else { &a };
        let r = http.get(format!("{other}{loc}")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        assert_eq!(
            r.headers()["range"].to_str().unwrap(),
            format!("0-{}", offset - 1)
        );
    }
    // A chunk that does not start at the offset is refused by either replica.
    let r = http
        .patch(format!("{b}{loc}"))
        .header("content-range", "0-9")
        .body(vec![0u8; 10])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    // A wrong digest on B: refused, and the session is gone on both.
    let rest = &data[offset..];
    let wrong = Digest::sha256(b"not this");
    let r = http
        .put(format!("{b}{loc}?digest={wrong}"))
        .header(
            "content-range",
            format!("{offset}-{}", offset + rest.len() - 1),
        )
        .body(rest.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = http.get(format!("{a}{loc}")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // Again, and this time the closing PUT on B carries the last bytes.
    let r = http
        .post(format!("{a}/v2/big/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    let split = 13 << 20;
    let r = http
        .patch(format!("{a}{loc}"))
        .body(data[..split].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let r = http
        .put(format!("{b}{loc}?digest={d}"))
        .body(data[split..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "{}",
        r.text().await.unwrap()
    );
    for base in [&a, &b] {
        let got = http
            .get(format!("{base}/v2/big/blobs/{d}"))
            .send()
            .await
            .unwrap();
        assert_eq!(got.status(), StatusCode::OK);
        let body = got.bytes().await.unwrap();
        assert_eq!(body.len(), data.len());
        assert!(body[..] == data[..], "the blob is the bytes sent");
    }
    let ranged = http
        .get(format!("{b}/v2/big/blobs/{d}"))
        .header("range", "bytes=8388600-8388615")
        .send()
        .await
        .unwrap();
    assert_eq!(ranged.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(&ranged.bytes().await.unwrap()[..], &data[8388600..8388616]);
    let keys = m.keys_in("replicas");
    assert!(
        !keys.iter().any(|k| k.starts_with("uploads/")),
        "sessions left: {keys:?}"
    );
    assert!(
        keys.contains(&format!("blobs/sha256/{}", d.hex())),
        "{keys:?}"
    );
}

/// Blobs above the single-copy limit (5 GiB on S3, lowered to 6 MiB here) go from the
/// upload's object to their key as a multipart upload of UploadPartCopy parts: a chunked
/// upload and a single-request one, both whole afterwards, their objects made of the
/// copy's parts (a multipart ETag ends in `-<parts>`), no session left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_above_the_copy_limit_are_copied_in_parts() {
    let Some(m) = Moto::start("bigcopy") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let settings = S3Settings {
        bucket: "bigcopy".into(),
        endpoint: Some(m.endpoint.clone()),
        ..Default::default()
    };
    let a = replica_env(&settings, dir.path(), &[("BERTH_S3_COPY_LIMIT", "6291456")]).await;
    let http = Client::new();
    // 21 MiB + 5 bytes: uploaded in 8 MiB parts (3), copied in 6 MiB ones (4).
    let big: Vec<u8> = (0..(21usize << 20) + 5)
        .map(|i| (i % 253) as u8 ^ (i >> 19) as u8)
        .collect();
    let d_big = Digest::sha256(&big);
    let r = http
        .post(format!("{a}/v2/big/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    let split = 10 << 20;
    let r = http
        .patch(format!("{a}{loc}"))
        .header("content-range", format!("0-{}", split - 1))
        .body(big[..split].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    let r = http
        .put(format!("{a}{loc}?digest={d_big}"))
        .body(big[split..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "{}",
        r.text().await.unwrap()
    );
    // 13 MiB in one POST: 2 parts uploaded, 3 copied.
    let mono: Vec<u8> = big[..13 << 20].iter().map(|b| b ^ 0x5a).collect();
    let d_mono = Digest::sha256(&mono);
    let r = http
        .post(format!("{a}/v2/big/blobs/uploads/?digest={d_mono}"))
        .body(mono.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "{}",
        r.text().await.unwrap()
    );
    for (d, data, parts) in [(&d_big, &big, 4), (&d_mono, &mono, 3)] {
        let got = http
            .get(format!("{a}/v2/big/blobs/{d}"))
            .send()
            .await
            .unwrap();
        assert_eq!(got.status(), StatusCode::OK);
        let body = got.bytes().await.unwrap();
        assert!(
            body.len() == data.len() && body[..] == data[..],
            "{d} is the bytes sent"
        );
        // The object itself, from moto (no auth): its ETag counts the copy's parts.
        let head = http
            .head(format!("{}/bigcopy/blobs/sha256/{}", m.endpoint, d.hex()))
            .send()
            .await
            .unwrap();
        assert_eq!(head.status(), StatusCode::OK);
        let etag = head.headers()["etag"]
            .to_str()
            .unwrap()
            .trim_matches('"')
            .to_string();
        assert!(etag.ends_with(&format!("-{parts}")), "{d}: ETag {etag}");
    }
    let keys = m.keys_in("bigcopy");
    assert!(
        !keys.iter().any(|k| k.starts_with("uploads/")),
        "sessions left: {keys:?}"
    );
}

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

fn manifest(config: &Digest, config_len: usize, layers: &[(&Digest, usize)]) -> Vec<u8> {
    let layers: Vec<String> = layers
        .iter()
        .map(|(d, n)| {
            format!(
                r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{d}","size":{n}}}"#
            )
        })
        .collect();
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":{config_len}}},"layers":[{}]}}"#,
        layers.join(",")
    )
    .into_bytes()
}

/// A push as docker does it: HEAD each blob, upload the missing ones, PUT the manifest.
/// Returns the manifest's digest if it was answered 201.
async fn push_image(
    http: &Client,
    base: &str,
    repo: &str,
    tag: &str,
    blobs: &[Vec<u8>],
) -> Option<(Digest, Vec<Digest>)> {
    let mut digests = Vec::new();
    for b in blobs {
        let d = Digest::sha256(b);
        let head = http
            .head(format!("{base}/v2/{repo}/blobs/{d}"))
            .send()
            .await
            .unwrap();
        if head.status() != StatusCode::OK {
            api::push_blob_to(http, base, repo, b).await;
        }
        digests.push(d);
    }
    let layers: Vec<(&Digest, usize)> = digests[1..]
        .iter()
        .zip(&blobs[1..])
        .map(|(d, b)| (d, b.len()))
        .collect();
    let m = manifest(&digests[0], blobs[0].len(), &layers);
    let r = http
        .put(format!("{base}/v2/{repo}/manifests/{tag}"))
        .header("content-type", OCI_MANIFEST)
        .body(m.clone())
        .send()
        .await
        .unwrap();
    match r.status() {
        StatusCode::CREATED => Some((Digest::sha256(&m), digests)),
        s => {
            let body = r.text().await.unwrap();
            assert!(
                s == StatusCode::BAD_REQUEST && body.contains("MANIFEST_BLOB_UNKNOWN"),
                "a push may only be refused for a blob gc took: {s} {body}"
            );
            None
        }
    }
}

/// gc with no grace runs again and again on its own handle while two replicas push,
/// re-pushing images whose blobs are garbage (HEAD finds them, so only the manifest is
/// sent): every manifest answered 201 is whole afterwards, and the garbage nobody
/// pushed again is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_beside_pushes_on_two_replicas_breaks_nothing() {
    let Some((m, _dir, a, b)) = two_replicas("gc-test").await else {
        return;
    };
    let settings = S3Settings {
        bucket: "gc-test".into(),
        endpoint: Some(m.endpoint.clone()),
        ..Default::default()
    };
    let env = |k: &str| k.starts_with("AWS_").then(|| "test".to_string());
    let gc = ObjectStorage::with_env(&settings, &Default::default(), &env).unwrap();
    let http = Client::new();
    let blobs = |i: usize| -> Vec<Vec<u8>> {
        vec![
            format!(r#"{{"architecture":"amd64","os":"linux","n":{i}}}"#).into_bytes(),
            format!("layer of image {i}").into_bytes().repeat(100),
            b"shared layer".repeat(50),
        ]
    };
    // Old images, four of them deleted: their own blobs become garbage.
    let mut old = Vec::new();
    for i in 0..6 {
        let (d, ds) = push_image(&http, &a, "app", &format!("old{i}"), &blobs(i))
            .await
            .expect("no gc runs yet");
        old.push((d, ds));
    }
    for (d, _) in &old[..4] {
        let r = http
            .delete(format!("{a}/v2/app/manifests/{d}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::ACCEPTED);
    }
    // Garbage must be older than gc's slack on the bucket's whole-second times.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;

    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = done.clone();
    let collector = tokio::spawn(async move {
        let opts = berth_store::GcOptions {
            grace: std::time::Duration::ZERO,
            ..Default::default()
        };
        let mut removed = Vec::new();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let r = gc.gc(&opts).await.unwrap();
            removed.extend(r.removed_blobs);
        }
        (gc, removed)
    });
    let mut pushed = Vec::new();
    let mut refused = 0;
    for round in 0..4 {
        let mut tasks = Vec::new();
        for (k, base) in [&a, &b].into_iter().enumerate() {
            let (http, base) = (http.clone(), base.clone());
            // New images, and the deleted old ones again (0 and 1 on A, 2 on B).
            let i = 100 + round * 2 + k;
            let again = if k == 0 { round % 2 } else { 2 };
            let (new, old_again) = (blobs(i), blobs(again));
            tasks.push(tokio::spawn(async move {
                let x = push_image(&http, &base, "app", &format!("new{i}"), &new).await;
                let y = push_image(&http, &base, "app", &format!("again{i}"), &old_again).await;
                [x, y]
            }));
        }
        for t in tasks {
            for r in t.await.unwrap() {
                match r {
                    Some(p) => pushed.push(p),
                    None => refused += 1,
                }
            }
        }
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let (gc, mut removed) = collector.await.unwrap();
    let last = gc
        .gc(&berth_store::GcOptions {
            grace: std::time::Duration::ZERO,
            ..Default::default()
        })
        .await
        .unwrap();
    removed.extend(last.removed_blobs);
    eprintln!("{} pushes answered 201, {refused} refused", pushed.len());

    // Everything answered 201, and the old images never deleted, pull whole from both.
    pushed.extend(old[4..].iter().cloned());
    for (d, refs) in &pushed {
        for base in [&a, &b] {
            let r = http
                .get(format!("{base}/v2/app/manifests/{d}"))
                .header("accept", OCI_MANIFEST)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::OK, "manifest {d}");
            for blob in refs {
                let r = http
                    .get(format!("{base}/v2/app/blobs/{blob}"))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), StatusCode::OK, "blob {blob} of {d}");
                let body = r.bytes().await.unwrap();
                assert_eq!(&Digest::sha256(&body), blob);
            }
        }
    }
    // Image 3 was deleted and never pushed again: its own config and layer are gone.
    for own in &old[3].1[..2] {
        assert!(removed.contains(own), "{own} removed ({removed:?})");
        let r = http
            .get(format!("{a}/v2/app/blobs/{own}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
    }
    // The shared layer stayed: live images reference it.
    assert!(!removed.contains(&old[0].1[2]));
}

/// With `redirect = true` a blob GET is a 307 to a presigned URL of the bucket, which
/// serves the bytes (ranges too); HEAD and manifests are still answered by the replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_gets_redirect_to_presigned_urls() {
    let Some(m) = Moto::start("redirects") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let settings = S3Settings {
        bucket: "redirects".into(),
        endpoint: Some(m.endpoint.clone()),
        redirect: true,
        ..Default::default()
    };
    let base = replica_with(&settings, dir.path()).await;
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 241) as u8).collect();
    let http = Client::new();
    let d = api::push_blob_to(&http, &base, "app", &data).await;
    let manual = Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = manual
        .get(format!("{base}/v2/app/blobs/{d}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TEMPORARY_REDIRECT);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    assert!(location.starts_with(&m.endpoint), "{location}");
    assert!(location.contains("X-Amz-Signature="), "{location}");
    let r = http
        .get(format!("{base}/v2/app/blobs/{d}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.bytes().await.unwrap()[..] == data[..]);
    let r = http
        .get(format!("{base}/v2/app/blobs/{d}"))
        .header("range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(&r.bytes().await.unwrap()[..], &data[10..20]);
    let r = manual
        .head(format!("{base}/v2/app/blobs/{d}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.headers()["content-length"],
        data.len().to_string().as_str()
    );
    // Not in the repository: no redirect, but the spec's error.
    let r = manual
        .get(format!("{base}/v2/other/blobs/{d}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}
