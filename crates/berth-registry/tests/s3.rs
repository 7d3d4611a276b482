//! The registry's conformance flows (tests/api.rs, every one of them) on S3-compatible
//! object storage: moto's server on 127.0.0.1, one per test. Skipped without moto
//! (`scripts/install-test-deps`); a failure under BERTH_TEST_STRICT=1.

#[path = "api.rs"]
mod api;

use berth_oci::Digest;
use berth_registry::{Config, ObjectStorage, Registry, S3Settings};
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
    let env = |k: &str| k.starts_with("AWS_").then(|| "test".to_string());
    let os = ObjectStorage::with_env(&settings, &Default::default(), &env).unwrap();
    os.check(false).await.unwrap();
    let mut config = Config::new(Store::open(dir).unwrap());
    config.objects = Some(os);
    let registry = Registry::new(config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(berth_registry::serve(
        listener,
        registry.router(),
        None,
        std::future::pending(),
    ));
    format!("http://{addr}")
}

/// A chunked upload goes back and forth between two replicas, chunk by chunk, with
/// chunks smaller and larger than a multipart part, and the closing PUT on the other
/// replica: the blob is whole, its digest checked, and no session is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_upload_started_on_one_replica_finishes_on_another() {
    let Some(m) = Moto::start("replicas") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let a = replica(&m, "replicas", &dir.path().join("a")).await;
    let b = replica(&m, "replicas", &dir.path().join("b")).await;
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
