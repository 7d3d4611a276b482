//! The Distribution API over HTTP, against an in-process registry on 127.0.0.1:0:
//! every flow of the spec, and every bad input refused with the spec's error and
//! nothing written.

use std::collections::HashMap;

use berth_oci::{Algorithm, Digest};
use berth_registry::{Access, Auth, Config, Registry};
use berth_store::Store;
use reqwest::{Client, Method, Response, StatusCode};
use tokio::io::AsyncWriteExt;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

struct Server {
    base: String,
    addr: std::net::SocketAddr,
    store: Store,
    http: Client,
    /// The S3 server, when this file runs as tests/s3.rs's module.
    moto: Option<berth_testutil::moto::Moto>,
    _dir: tempfile::TempDir,
}

/// Whether these tests run on object storage: tests/s3.rs includes this file as its
/// module `api`, so every flow runs on both backends.
fn on_s3() -> bool {
    module_path!().starts_with("s3::")
}

const BUCKET: &str = "berth-test";

/// A registry on the backend of this test binary; `None` when it needs moto and moto is
/// not installed (the test is then skipped).
async fn start_with(f: impl FnOnce(&mut Config)) -> Option<Server> {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("root")).unwrap();
    let mut config = Config::new(store.clone());
    let mut moto = None;
    if on_s3() {
        let m = berth_testutil::moto::Moto::start(BUCKET)?;
        let settings = berth_registry::S3Settings {
            bucket: BUCKET.into(),
            prefix: "reg".into(),
            endpoint: Some(m.endpoint.clone()),
            ..Default::default()
        };
        let env = |k: &str| match k {
            "AWS_ACCESS_KEY_ID" => Some("test".to_string()),
            "AWS_SECRET_ACCESS_KEY" => Some("test".to_string()),
            _ => None,
        };
        let os =
            berth_registry::ObjectStorage::with_env(&settings, &Default::default(), &env).unwrap();
        os.check(false).await.unwrap();
        config.objects = Some(os);
        moto = Some(m);
    }
    f(&mut config);
    let addr = serve_in_process(config).await;
    Some(Server {
        base: format!("http://{addr}"),
        addr,
        store,
        http: Client::new(),
        moto,
        _dir: dir,
    })
}

/// Serve a registry of `config` on 127.0.0.1 from this process; its address.
pub(crate) async fn serve_in_process(config: Config) -> std::net::SocketAddr {
    let registry = Registry::new(config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(berth_registry::serve(
        listener,
        registry.router(),
        None,
        std::future::pending(),
    ));
    addr
}

/// A registry with users `ci` (password `ci-pass`) and `dev` (`dev-pass`) and `rules`.
async fn start_with_users(rules: &str) -> Option<Server> {
    let users = HashMap::from([
        ("ci".to_string(), bcrypt::hash("ci-pass", 4).unwrap()),
        ("dev".to_string(), bcrypt::hash("dev-pass", 4).unwrap()),
    ]);
    let access: Access = toml::from_str(rules).unwrap();
    start_with(|c| c.auth = Some(Auth::new(users, Some(access)))).await
}

async fn start() -> Option<Server> {
    start_with(|_| {}).await
}

/// What the backend holds, read behind the registry's back.
impl Server {
    /// The bucket's keys below the registry's prefix.
    fn keys(&self, under: &str) -> Vec<String> {
        let m = self.moto.as_ref().expect("moto");
        m.keys_in(BUCKET)
            .into_iter()
            .filter_map(|k| k.strip_prefix("reg/").map(str::to_string))
            .filter(|k| k.starts_with(under))
            .collect()
    }

    /// Committed blobs, sorted.
    fn blobs(&self) -> Vec<Digest> {
        if self.moto.is_none() {
            return self.store.blobs().unwrap();
        }
        let mut v: Vec<Digest> = self
            .keys("blobs/")
            .iter()
            .map(|k| {
                let mut parts = k.split('/').skip(1);
                let (alg, hex) = (parts.next().unwrap(), parts.next().unwrap());
                format!("{alg}:{hex}").parse().unwrap()
            })
            .collect();
        v.sort();
        v
    }

    /// Upload sessions (ingests) left, as names.
    fn ingests(&self) -> Vec<String> {
        if self.moto.is_none() {
            return self
                .store
                .ingests()
                .unwrap()
                .into_iter()
                .map(|i| format!("{i:?}"))
                .collect();
        }
        self.keys("uploads/")
    }

    fn tags(&self, repo: &str) -> Vec<String> {
        if self.moto.is_none() {
            return self.store.repos().tags(repo).unwrap();
        }
        let dir = format!("repositories/{repo}/_tags/");
        self.keys(&dir)
            .iter()
            .map(|k| k[dir.len()..].to_string())
            .collect()
    }

    fn repositories(&self) -> Vec<String> {
        if self.moto.is_none() {
            return self.store.repos().repositories().unwrap();
        }
        self.keys("repositories/")
    }

    fn has_blob(&self, repo: &str, d: &Digest) -> bool {
        if self.moto.is_none() {
            return self.store.repos().has_blob(repo, d).unwrap();
        }
        let k = format!(
            "repositories/{repo}/_blobs/{}/{}",
            d.algorithm().as_str(),
            d.hex()
        );
        !self.keys(&k).is_empty()
    }
}

impl Server {
    fn req(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let url = if path.starts_with("http") {
            path.to_string()
        } else {
            format!("{}{path}", self.base)
        };
        self.http.request(method, url)
    }

    async fn push_blob(&self, repo: &str, data: &[u8]) -> Digest {
        push_blob_to(&self.http, &self.base, repo, data).await
    }

    /// Push config + one layer and a manifest under `tag`; returns (manifest bytes, digest).
    async fn push_image(&self, repo: &str, tag: &str, layer: &[u8]) -> (Vec<u8>, Digest) {
        let config = format!(
            r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":[]}},"x":{}}}"#,
            layer.len()
        );
        let c = self.push_blob(repo, config.as_bytes()).await;
        let l = self.push_blob(repo, layer).await;
        let manifest = image_manifest(&c, config.len(), &l, layer.len(), None);
        let r = self.put_manifest(repo, tag, OCI_MANIFEST, &manifest).await;
        assert_eq!(
            r.status(),
            StatusCode::CREATED,
            "{}",
            r.text().await.unwrap()
        );
        let d = Digest::sha256(&manifest);
        (manifest, d)
    }

    async fn put_manifest(&self, repo: &str, reference: &str, ct: &str, body: &[u8]) -> Response {
        self.req(Method::PUT, &format!("/v2/{repo}/manifests/{reference}"))
            .header("content-type", ct)
            .body(body.to_vec())
            .send()
            .await
            .unwrap()
    }
}

/// A single-POST upload of `data` to `repo` at `base`, which must answer 201.
pub(crate) async fn push_blob_to(http: &Client, base: &str, repo: &str, data: &[u8]) -> Digest {
    let d = Digest::sha256(data);
    let r = http
        .post(format!("{base}/v2/{repo}/blobs/uploads/?digest={d}"))
        .body(data.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "{}",
        r.text().await.unwrap()
    );
    d
}

fn image_manifest(
    config: &Digest,
    config_len: usize,
    layer: &Digest,
    layer_len: usize,
    extra: Option<&str>,
) -> Vec<u8> {
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":{config_len}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{layer}","size":{layer_len}}}]{}}}"#,
        extra.unwrap_or("")
    )
    .into_bytes()
}

async fn error_code(r: Response) -> String {
    let v: serde_json::Value = r.json().await.expect("error body is JSON");
    v["errors"][0]["code"]
        .as_str()
        .expect("errors[0].code")
        .to_string()
}

fn header<'a>(r: &'a Response, name: &str) -> &'a str {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

#[tokio::test]
async fn base_endpoint_answers_with_api_version() {
    let Some(s) = start().await else { return };
    let r = s.req(Method::GET, "/v2/").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        header(&r, "docker-distribution-api-version"),
        "registry/2.0"
    );
    let r = s.req(Method::GET, "/v3/").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn monolithic_push_then_pull_with_ranges() {
    let Some(s) = start().await else { return };
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let d = Digest::sha256(&data);
    // POST then PUT.
    let r = s
        .req(Method::POST, "/v2/app/blobs/uploads/")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let loc = header(&r, "location").to_string();
    assert!(loc.starts_with("/v2/app/blobs/uploads/"), "{loc}");
    assert!(!header(&r, "docker-upload-uuid").is_empty());
    let r = s
        .req(Method::PUT, &format!("{loc}?digest={d}"))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(header(&r, "docker-content-digest"), d.to_string());
    assert_eq!(header(&r, "location"), format!("/v2/app/blobs/{d}"));

    let r = s
        .req(Method::HEAD, &format!("/v2/app/blobs/{d}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "content-length"), "100000");
    let r = s
        .req(Method::GET, &format!("/v2/app/blobs/{d}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap().as_ref(), data.as_slice());
    let r = s
        .req(Method::GET, &format!("/v2/app/blobs/{d}"))
        .header("range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(header(&r, "content-range"), "bytes 10-19/100000");
    assert_eq!(r.bytes().await.unwrap().as_ref(), &data[10..20]);
    let r = s
        .req(Method::GET, &format!("/v2/app/blobs/{d}"))
        .header("range", "bytes=100000-")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(header(&r, "content-range"), "bytes */100000");
    // Another repository does not see it.
    let r = s
        .req(Method::GET, &format!("/v2/other/blobs/{d}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(r).await, "BLOB_UNKNOWN");
}

#[tokio::test]
async fn chunked_push_refuses_out_of_order_chunks() {
    let Some(s) = start().await else { return };
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let d = Digest::sha256(&data);
    let r = s
        .req(Method::POST, "/v2/team/app/blobs/uploads/")
        .send()
        .await
        .unwrap();
    let loc = header(&r, "location").to_string();
    let r = s
        .req(Method::PATCH, &loc)
        .header("content-range", "0-99999")
        .header("content-type", "application/octet-stream")
        .body(data[..100_000].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(header(&r, "range"), "0-99999");
    let loc = header(&r, "location").to_string();
    // Out of order: starts at 200000 while the upload holds 100000 bytes.
    let r = s
        .req(Method::PATCH, &loc)
        .header("content-range", "200000-299999")
        .body(data[200_000..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(header(&r, "range"), "0-99999");
    // Status.
    let r = s.req(Method::GET, &loc).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&r, "range"), "0-99999");
    // Next chunk without Content-Range (streamed), then the last in the PUT.
    let r = s
        .req(Method::PATCH, &loc)
        .body(data[100_000..200_000].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(header(&r, "range"), "0-199999");
    let r = s
        .req(Method::PUT, &format!("{loc}?digest={d}"))
        .header("content-range", "200000-299999")
        .header("content-length", "100000")
        .body(data[200_000..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "{}",
        r.text().await.unwrap()
    );
    let r = s
        .req(Method::GET, &format!("/v2/team/app/blobs/{d}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap().as_ref(), data.as_slice());
    // The session is over.
    let r = s.req(Method::GET, &loc).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(r).await, "BLOB_UPLOAD_UNKNOWN");
}

#[tokio::test]
async fn wrong_digest_is_refused_and_nothing_is_stored() {
    let Some(s) = start().await else { return };
    let claimed = Digest::sha256(b"something else");
    let r = s
        .req(
            Method::POST,
            &format!("/v2/app/blobs/uploads/?digest={claimed}"),
        )
        .body(b"actual".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(r).await, "DIGEST_INVALID");

    let r = s
        .req(Method::POST, "/v2/app/blobs/uploads/")
        .send()
        .await
        .unwrap();
    let loc = header(&r, "location").to_string();
    let r = s
        .req(Method::PUT, &format!("{loc}?digest={claimed}"))
        .body(b"actual".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(r).await, "DIGEST_INVALID");
    let r = s
        .req(Method::PUT, &format!("{loc}?digest=sha256:nothex"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::NOT_FOUND,
        "the failed upload is gone"
    );

    assert!(s.blobs().is_empty(), "no blob committed");
    assert!(s.ingests().is_empty(), "no ingest left behind");
    let r = s
        .req(Method::GET, &format!("/v2/app/blobs/{claimed}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = s
        .req(Method::GET, "/v2/app/blobs/sha256:1234")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(r).await, "DIGEST_INVALID");
}

/// Send raw bytes on a fresh connection and close it (a client killed mid-request).
async fn send_truncated(s: &Server, head: String, body: &[u8]) {
    let mut c = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    c.write_all(head.as_bytes()).await.unwrap();
    c.write_all(body).await.unwrap();
    c.shutdown().await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::io::AsyncReadExt::read_to_end(&mut c, &mut buf).await;
}

#[tokio::test]
async fn truncated_uploads_commit_nothing() {
    let Some(s) = start().await else { return };
    let d = Digest::sha256(&[7u8; 1000]);
    send_truncated(
        &s,
        format!("POST /v2/app/blobs/uploads/?digest={d} HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n"),
        &[7u8; 400],
    )
    .await;
    // A chunk cut short keeps what arrived; the upload can go on from there.
    let r = s
        .req(Method::POST, "/v2/app/blobs/uploads/")
        .send()
        .await
        .unwrap();
    let loc = header(&r, "location").to_string();
    send_truncated(
        &s,
        format!("PATCH {loc} HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n"),
        &[7u8; 400],
    )
    .await;
    let mut status = None;
    for _ in 0..50 {
        let r = s.req(Method::GET, &loc).send().await.unwrap();
        // On object storage nothing locks the session while the broken PATCH saves it:
        // its status shows the old offset until then.
        if r.status() == StatusCode::NO_CONTENT && (!on_s3() || header(&r, "range") == "0-399") {
            status = Some(header(&r, "range").to_string());
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(status.as_deref(), Some("0-399"));
    let r = s
        .req(Method::PUT, &format!("{loc}?digest={d}"))
        .body(vec![7u8; 600])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(s.blobs(), vec![d], "only the completed upload is a blob");
    assert!(s.ingests().is_empty());
}

#[tokio::test]
async fn cancel_and_mount() {
    let Some(s) = start().await else { return };
    let r = s
        .req(Method::POST, "/v2/app/blobs/uploads/")
        .send()
        .await
        .unwrap();
    let loc = header(&r, "location").to_string();
    assert_eq!(
        s.req(Method::DELETE, &loc).send().await.unwrap().status(),
        StatusCode::NO_CONTENT
    );
    let r = s.req(Method::GET, &loc).send().await.unwrap();
    assert_eq!(error_code(r).await, "BLOB_UPLOAD_UNKNOWN");

    let d = s.push_blob("src/repo", b"shared layer").await;
    let r = s
        .req(
            Method::POST,
            &format!("/v2/dst/blobs/uploads/?mount={d}&from=src/repo"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(header(&r, "docker-content-digest"), d.to_string());
    let r = s
        .req(Method::GET, &format!("/v2/dst/blobs/{d}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"shared layer");
    // A repository that lacks the blob cannot lend it: an ordinary upload starts.
    let r = s
        .req(
            Method::POST,
            &format!("/v2/dst2/blobs/uploads/?mount={d}&from=nowhere"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    // Upload ids are per repository.
    let loc = header(&r, "location").to_string();
    let other = loc.replace("/v2/dst2/", "/v2/src/repo/");
    assert_eq!(
        s.req(Method::GET, &other).send().await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn manifests_by_tag_and_digest_with_negotiation() {
    let Some(s) = start().await else { return };
    let (manifest, d) = s
        .push_image("library/busybox", "1.36", b"layer-bytes")
        .await;
    for reference in ["1.36".to_string(), d.to_string()] {
        let r = s
            .req(
                Method::GET,
                &format!("/v2/library/busybox/manifests/{reference}"),
            )
            .header("accept", format!("{OCI_MANIFEST}, {OCI_INDEX}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(header(&r, "content-type"), OCI_MANIFEST);
        assert_eq!(header(&r, "docker-content-digest"), d.to_string());
        assert_eq!(r.bytes().await.unwrap().as_ref(), manifest.as_slice());
    }
    let r = s
        .req(Method::HEAD, "/v2/library/busybox/manifests/1.36")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "content-length"), manifest.len().to_string());
    // A client that only takes Docker manifests is not handed an OCI one.
    let r = s
        .req(Method::GET, "/v2/library/busybox/manifests/1.36")
        .header("accept", DOCKER_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(r).await, "MANIFEST_UNKNOWN");
    let r = s
        .req(Method::GET, "/v2/library/busybox/manifests/nope")
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, "MANIFEST_UNKNOWN");

    // Push by digest, Docker schema2, then a Docker manifest list over both.
    let docker = String::from_utf8(manifest.clone())
        .unwrap()
        .replace(OCI_MANIFEST, DOCKER_MANIFEST);
    let dd = Digest::sha256(docker.as_bytes());
    let r = s
        .put_manifest(
            "library/busybox",
            &dd.to_string(),
            DOCKER_MANIFEST,
            docker.as_bytes(),
        )
        .await;
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "{}",
        r.text().await.unwrap()
    );
    assert_eq!(
        header(&r, "location"),
        format!("/v2/library/busybox/manifests/{dd}")
    );
    let list = format!(
        r#"{{"schemaVersion":2,"mediaType":"{DOCKER_LIST}","manifests":[{{"mediaType":"{DOCKER_MANIFEST}","digest":"{dd}","size":{},"platform":{{"architecture":"amd64","os":"linux"}}}}]}}"#,
        docker.len()
    );
    let r = s
        .put_manifest("library/busybox", "multi", DOCKER_LIST, list.as_bytes())
        .await;
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "{}",
        r.text().await.unwrap()
    );
    let r = s
        .req(Method::GET, "/v2/library/busybox/manifests/multi")
        .send()
        .await
        .unwrap();
    assert_eq!(header(&r, "content-type"), DOCKER_LIST);
    assert_eq!(r.text().await.unwrap(), list);
}

#[tokio::test]
async fn bad_manifests_are_refused_and_nothing_is_written() {
    let Some(s) = start().await else { return };
    let (_, _) = s.push_image("app", "good", b"l").await;
    let before = s.blobs().len();
    let c = Digest::sha256(b"not pushed");
    let missing = image_manifest(&c, 10, &c, 10, None);
    let r = s.put_manifest("app", "bad", OCI_MANIFEST, &missing).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(r).await, "MANIFEST_BLOB_UNKNOWN");
    let r = s
        .put_manifest("app", "bad", OCI_MANIFEST, b"{not json")
        .await;
    assert_eq!(error_code(r).await, "MANIFEST_INVALID");
    let r = s
        .put_manifest("app", "bad", OCI_MANIFEST, br#"{"schemaVersion":1}"#)
        .await;
    assert_eq!(error_code(r).await, "MANIFEST_INVALID");
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{c}","size":1}}]}}"#
    );
    let r = s
        .put_manifest("app", "bad", OCI_INDEX, index.as_bytes())
        .await;
    assert_eq!(error_code(r).await, "MANIFEST_BLOB_UNKNOWN");
    // Wrong digest in the URL.
    let r = s
        .put_manifest(
            "app",
            &c.to_string(),
            OCI_INDEX,
            br#"{"schemaVersion":2,"manifests":[]}"#,
        )
        .await;
    assert_eq!(error_code(r).await, "DIGEST_INVALID");
    // Over 4 MiB.
    let big = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[],"annotations":{{"x":"{}"}}}}"#,
        "a".repeat(4 << 20)
    );
    let r = s
        .put_manifest("app", "big", OCI_INDEX, big.as_bytes())
        .await;
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error_code(r).await, "MANIFEST_INVALID");
    // Content-Type and mediaType disagree.
    let r = s.put_manifest("app", "bad", DOCKER_LIST, br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#).await;
    assert_eq!(error_code(r).await, "MANIFEST_INVALID");
    // Bad tag.
    let r = s
        .put_manifest(
            "app",
            "-bad",
            OCI_INDEX,
            br#"{"schemaVersion":2,"manifests":[]}"#,
        )
        .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    assert_eq!(s.blobs().len(), before, "no refused manifest was stored");
    assert_eq!(s.tags("app"), ["good"]);
}

#[tokio::test]
async fn invalid_names_and_path_tricks() {
    let Some(s) = start().await else { return };
    for path in [
        "/v2/UPPER/manifests/latest",
        "/v2/a//b/manifests/latest",
        "/v2/../etc/manifests/latest",
        "/v2/a/%2e%2e/b/manifests/latest",
        "/v2/a/../../b/tags/list",
        "/v2/-a/blobs/uploads/",
    ] {
        let method = if path.ends_with("uploads/") {
            Method::POST
        } else {
            Method::GET
        };
        // reqwest normalises dot segments; send these raw.
        let mut c = tokio::net::TcpStream::connect(s.addr).await.unwrap();
        c.write_all(format!("{method} {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: 0\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut buf = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut c, &mut buf)
            .await
            .unwrap();
        assert!(
            buf.starts_with("HTTP/1.1 400") || buf.starts_with("HTTP/1.1 404"),
            "{path}: {buf}"
        );
        assert!(
            buf.contains("NAME_INVALID") || buf.contains("NAME_UNKNOWN"),
            "{path}: {buf}"
        );
    }
    assert!(s.repositories().is_empty());
    assert!(s.ingests().is_empty());
}

#[tokio::test]
async fn tags_and_catalog_paginate() {
    let Some(s) = start().await else { return };
    for repo in ["a", "b/c", "d"] {
        s.push_image(repo, "v1", repo.as_bytes()).await;
    }
    let (m, d) = s.push_image("e", "t0", b"e").await;
    for t in ["t1", "t2", "t3", "t4"] {
        assert_eq!(
            s.put_manifest("e", t, OCI_MANIFEST, &m).await.status(),
            StatusCode::CREATED
        );
    }
    let _ = d;
    let r = s
        .req(Method::GET, "/v2/e/tags/list?n=2")
        .send()
        .await
        .unwrap();
    let link = header(&r, "link").to_string();
    assert_eq!(link, "</v2/e/tags/list?n=2&last=t1>; rel=\"next\"");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v, serde_json::json!({"name": "e", "tags": ["t0", "t1"]}));
    let v: serde_json::Value = s
        .req(Method::GET, "/v2/e/tags/list?n=2&last=t1")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["tags"], serde_json::json!(["t2", "t3"]));
    let r = s
        .req(Method::GET, "/v2/e/tags/list?last=t3")
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("link").is_none());
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["tags"], serde_json::json!(["t4"]));
    let v: serde_json::Value = s
        .req(Method::GET, "/v2/e/tags/list?n=0")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["tags"], serde_json::json!([]));
    let r = s
        .req(Method::GET, "/v2/nothing/tags/list")
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, "NAME_UNKNOWN");

    let r = s.req(Method::GET, "/v2/_catalog?n=2").send().await.unwrap();
    assert_eq!(
        header(&r, "link"),
        "</v2/_catalog?n=2&last=b/c>; rel=\"next\""
    );
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["repositories"], serde_json::json!(["a", "b/c"]));
    let v: serde_json::Value = s
        .req(Method::GET, "/v2/_catalog?last=b/c")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["repositories"], serde_json::json!(["d", "e"]));
}

#[tokio::test]
async fn referrers_with_artifact_type_filter() {
    let Some(s) = start().await else { return };
    let (subject_bytes, subject) = s.push_image("app", "v1", b"app layer").await;
    let empty = s.push_blob("app", b"{}").await;
    let mut pushed = Vec::new();
    for (i, at) in [
        "application/vnd.example.sbom",
        "application/vnd.example.sig",
    ]
    .iter()
    .enumerate()
    {
        let m = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","artifactType":"{at}","config":{{"mediaType":"application/vnd.oci.empty.v1+json","digest":"{empty}","size":2}},"layers":[{{"mediaType":"application/vnd.oci.empty.v1+json","digest":"{empty}","size":2}}],"subject":{{"mediaType":"{OCI_MANIFEST}","digest":"{subject}","size":{}}},"annotations":{{"n":"{i}"}}}}"#,
            subject_bytes.len()
        );
        let d = Digest::sha256(m.as_bytes());
        let r = s
            .put_manifest("app", &d.to_string(), OCI_MANIFEST, m.as_bytes())
            .await;
        assert_eq!(
            r.status(),
            StatusCode::CREATED,
            "{}",
            r.text().await.unwrap()
        );
        assert_eq!(header(&r, "oci-subject"), subject.to_string());
        pushed.push(d);
    }
    let r = s
        .req(Method::GET, &format!("/v2/app/referrers/{subject}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "content-type"), OCI_INDEX);
    let v: serde_json::Value = r.json().await.unwrap();
    let list = v["manifests"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert!(list.iter().any(
        |m| m["artifactType"] == "application/vnd.example.sig" && m["annotations"]["n"] == "1"
    ));

    let r = s
        .req(
            Method::GET,
            &format!("/v2/app/referrers/{subject}?artifactType=application/vnd.example.sbom"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(header(&r, "oci-filters-applied"), "artifactType");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["manifests"].as_array().unwrap().len(), 1);
    assert_eq!(v["manifests"][0]["digest"], pushed[0].to_string());

    // Deleting a referrer removes it from the list.
    let r = s
        .req(Method::DELETE, &format!("/v2/app/manifests/{}", pushed[0]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let v: serde_json::Value = s
        .req(Method::GET, &format!("/v2/app/referrers/{subject}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["manifests"].as_array().unwrap().len(), 1);
    // A subject with no referrers gives an empty index, not an error.
    let none = Digest::sha256(b"none");
    let v: serde_json::Value = s
        .req(Method::GET, &format!("/v2/app/referrers/{none}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["manifests"], serde_json::json!([]));
}

#[tokio::test]
async fn deletes_of_manifests_tags_and_blobs() {
    let Some(s) = start().await else { return };
    let (m, d) = s.push_image("app", "v1", b"x").await;
    s.put_manifest("app", "v2", OCI_MANIFEST, &m).await;
    assert_eq!(
        s.req(Method::DELETE, "/v2/app/manifests/v2")
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::ACCEPTED
    );
    assert_eq!(s.tags("app"), ["v1"]);
    assert_eq!(
        s.req(Method::DELETE, "/v2/app/manifests/v2")
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        s.req(Method::DELETE, &format!("/v2/app/manifests/{d}"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::ACCEPTED
    );
    let r = s
        .req(Method::GET, "/v2/app/manifests/v1")
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, "MANIFEST_UNKNOWN");
    let layer = Digest::sha256(b"x");
    assert_eq!(
        s.req(Method::DELETE, &format!("/v2/app/blobs/{layer}"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::ACCEPTED
    );
    let r = s
        .req(Method::GET, &format!("/v2/app/blobs/{layer}"))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, "BLOB_UNKNOWN");

    let Some(s) = start_with(|c| c.delete_enabled = false).await else {
        return;
    };
    let (_, d) = s.push_image("app", "v1", b"x").await;
    let r = s
        .req(Method::DELETE, &format!("/v2/app/manifests/{d}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(error_code(r).await, "UNSUPPORTED");
}

#[tokio::test]
async fn sha512_content() {
    let Some(s) = start().await else { return };
    let data = b"sha512 layer".to_vec();
    let d = Digest::of(Algorithm::Sha512, &data);
    let r = s
        .req(Method::POST, "/v2/app/blobs/uploads/")
        .send()
        .await
        .unwrap();
    let loc = header(&r, "location").to_string();
    s.req(Method::PATCH, &loc)
        .body(data[..4].to_vec())
        .send()
        .await
        .unwrap();
    let r = s
        .req(Method::PUT, &format!("{loc}?digest={d}"))
        .body(data[4..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "{}",
        r.text().await.unwrap()
    );
    let r = s
        .req(Method::GET, &format!("/v2/app/blobs/{d}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap().as_ref(), data.as_slice());
    let c = s.push_blob("app", b"{}").await;
    let m = image_manifest(&c, 2, &d, data.len(), None);
    let md = Digest::of(Algorithm::Sha512, &m);
    let r = s
        .put_manifest("app", &md.to_string(), OCI_MANIFEST, &m)
        .await;
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "{}",
        r.text().await.unwrap()
    );
    assert_eq!(header(&r, "docker-content-digest"), md.to_string());
    let r = s
        .req(Method::GET, &format!("/v2/app/manifests/{md}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap().as_ref(), m.as_slice());
}

#[tokio::test]
async fn read_only_refuses_writes() {
    let Some(s) = start_with(|c| c.read_only = true).await else {
        return;
    };
    let r = s
        .req(Method::POST, "/v2/app/blobs/uploads/")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(error_code(r).await, "UNSUPPORTED");
    assert_eq!(
        s.req(Method::GET, "/v2/").send().await.unwrap().status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn basic_auth_and_rights() {
    let users = HashMap::from([
        ("ci".to_string(), bcrypt::hash("ci-pass", 4).unwrap()),
        ("dev".to_string(), bcrypt::hash("dev-pass", 4).unwrap()),
    ]);
    let access: Access = toml::from_str(
        r#"
        [[rule]]
        users = ["ci"]
        repositories = ["*"]
        actions = ["pull", "push", "delete"]
        [[rule]]
        users = ["dev"]
        repositories = ["team/*"]
        actions = ["pull"]
        "#,
    )
    .unwrap();
    let Some(s) = start_with(|c| c.auth = Some(Auth::new(users, Some(access)))).await else {
        return;
    };
    let r = s.req(Method::GET, "/v2/").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(header(&r, "www-authenticate"), "Basic realm=\"berth\"");
    assert_eq!(error_code(r).await, "UNAUTHORIZED");
    let r = s
        .req(Method::GET, "/v2/")
        .basic_auth("ci", Some("wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = s
        .req(Method::GET, "/v2/")
        .basic_auth("ci", Some("ci-pass"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    let d = Digest::sha256(b"secret layer");
    let r = s
        .req(
            Method::POST,
            &format!("/v2/team/app/blobs/uploads/?digest={d}"),
        )
        .basic_auth("ci", Some("ci-pass"))
        .body(b"secret layer".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = s
        .req(Method::GET, &format!("/v2/team/app/blobs/{d}"))
        .basic_auth("dev", Some("dev-pass"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = s
        .req(Method::POST, "/v2/team/app/blobs/uploads/")
        .basic_auth("dev", Some("dev-pass"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(error_code(r).await, "DENIED");
    // dev may not mount out of a repository it cannot read either.
    let r = s
        .req(Method::GET, &format!("/v2/other/blobs/{d}"))
        .basic_auth("dev", Some("dev-pass"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = s
        .req(Method::GET, &format!("/v2/team/app/blobs/{d}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn parallel_pushes_of_one_blob() {
    let Some(s) = start().await else { return };
    let s = std::sync::Arc::new(s);
    let data: Vec<u8> = (0..2_000_000u32).map(|i| (i % 253) as u8).collect();
    let d = Digest::sha256(&data);
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (s, data, d) = (s.clone(), data.clone(), d.clone());
        tasks.push(tokio::spawn(async move {
            let repo = format!("r{}", i % 2);
            let r = s
                .req(Method::POST, &format!("/v2/{repo}/blobs/uploads/"))
                .send()
                .await
                .unwrap();
            let loc = header(&r, "location").to_string();
            let r = s
                .req(Method::PATCH, &loc)
                .body(data[..1_000_000].to_vec())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::ACCEPTED);
            let r = s
                .req(Method::PUT, &format!("{loc}?digest={d}"))
                .body(data[1_000_000..].to_vec())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::CREATED);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(s.blobs(), vec![d.clone()]);
    assert!(s.ingests().is_empty());
    if !on_s3() {
        let check = s.store.check().unwrap();
        assert!(check.corrupt.is_empty());
    }
    for repo in ["r0", "r1"] {
        let r = s
            .req(Method::GET, &format!("/v2/{repo}/blobs/{d}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.bytes().await.unwrap().len(), data.len());
    }
}

// ---------------------------------------------------------------------------------------
// Input checks (issue 13, item 4).

#[tokio::test]
async fn descriptor_sizes_must_match_the_stored_blobs() {
    let Some(s) = start().await else { return };
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let c = s.push_blob("app", config).await;
    let l = s.push_blob("app", b"layer of 17 bytes").await;
    // The layer is 17 bytes; the manifest says 16.
    let bad = image_manifest(&c, config.len(), &l, 16, None);
    let r = s.put_manifest("app", "bad", OCI_MANIFEST, &bad).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(r).await, "MANIFEST_INVALID");
    let bad = image_manifest(&c, config.len() + 1, &l, 17, None);
    let r = s.put_manifest("app", "bad", OCI_MANIFEST, &bad).await;
    assert_eq!(error_code(r).await, "MANIFEST_INVALID");
    assert!(!s.tags("app").contains(&"bad".to_string()));
    // An index whose child's size is wrong is refused too.
    let good = image_manifest(&c, config.len(), &l, 17, None);
    let r = s.put_manifest("app", "good", OCI_MANIFEST, &good).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let m = Digest::sha256(&good);
    let index = |size: usize| {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{m}","size":{size}}}]}}"#
        )
    };
    let r = s
        .put_manifest("app", "list", OCI_INDEX, index(good.len() + 5).as_bytes())
        .await;
    assert_eq!(error_code(r).await, "MANIFEST_INVALID");
    let r = s
        .put_manifest("app", "list", OCI_INDEX, index(good.len()).as_bytes())
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn only_exact_non_distributable_types_skip_the_existence_check() {
    let Some(s) = start().await else { return };
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let c = s.push_blob("app", config).await;
    let absent = Digest::sha256(b"lives elsewhere");
    let manifest = |layer_type: &str| {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{c}","size":{}}},"layers":[{{"mediaType":"{layer_type}","digest":"{absent}","size":15,"urls":["https://example.invalid/l"]}}]}}"#,
            config.len()
        )
    };
    for exempt in [
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    ] {
        let r = s
            .put_manifest("app", "ok", OCI_MANIFEST, manifest(exempt).as_bytes())
            .await;
        assert_eq!(r.status(), StatusCode::CREATED, "{exempt}");
    }
    for lookalike in [
        "application/vnd.example.foreign+gzip",
        "application/x-nondistributable",
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip.evil",
    ] {
        let r = s
            .put_manifest("app", "bad", OCI_MANIFEST, manifest(lookalike).as_bytes())
            .await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{lookalike}");
        assert_eq!(error_code(r).await, "MANIFEST_BLOB_UNKNOWN", "{lookalike}");
    }
}

#[tokio::test]
async fn a_patch_whose_body_is_not_its_content_range_writes_nothing() {
    let Some(s) = start().await else { return };
    let r = s
        .req(Method::POST, "/v2/app/blobs/uploads/")
        .send()
        .await
        .unwrap();
    let loc = header(&r, "location").to_string();
    let r = s
        .req(Method::PATCH, &loc)
        .header("content-range", "0-9")
        .body(vec![1u8; 10])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    // Announces bytes 10-19 (10 bytes) but sends 25.
    let r = s
        .req(Method::PATCH, &loc)
        .header("content-range", "10-19")
        .body(vec![2u8; 25])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(header(&r, "range"), "0-9");
    // The same without Content-Length (a streamed body): undone after the fact.
    let stream = futures_util::stream::iter(vec![Ok::<_, std::io::Error>(vec![3u8; 4])]);
    let r = s
        .req(Method::PATCH, &loc)
        .header("content-range", "10-19")
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    let r = s.req(Method::GET, &loc).send().await.unwrap();
    assert_eq!(header(&r, "range"), "0-9", "nothing of the refused chunks");
    // The right chunk, then close: the content is exactly the accepted chunks.
    let mut data = vec![1u8; 10];
    data.extend([4u8; 10]);
    let r = s
        .req(Method::PATCH, &loc)
        .header("content-range", "10-19")
        .body(vec![4u8; 10])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let d = Digest::sha256(&data);
    let r = s
        .req(Method::PUT, &format!("{loc}?digest={d}"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "{}",
        r.text().await.unwrap()
    );
}

#[tokio::test]
async fn an_aborted_single_post_upload_leaves_nothing() {
    let Some(s) = start().await else { return };
    let d = Digest::sha256(&[9u8; 100_000]);
    send_truncated(
        &s,
        format!("POST /v2/app/blobs/uploads/?digest={d} HTTP/1.1\r\nhost: x\r\ncontent-length: 100000\r\n\r\n"),
        &[9u8; 30_000],
    )
    .await;
    // The server notices the broken body on its own time: wait for it, boundedly.
    let mut left = s.ingests();
    for _ in 0..100 {
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        left = s.ingests();
    }
    assert!(left.is_empty(), "ingests left behind: {left:?}");
    assert!(s.blobs().is_empty());
}

#[tokio::test]
async fn put_by_digest_with_tag_parameters_tags_it() {
    let Some(s) = start().await else { return };
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let c = s.push_blob("app", config).await;
    let l = s.push_blob("app", b"l").await;
    let m = image_manifest(&c, config.len(), &l, 1, None);
    let d = Digest::sha256(&m);
    let r = s
        .put_manifest("app", &format!("{d}?tag=v1&tag=latest"), OCI_MANIFEST, &m)
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let tags: Vec<&str> = r
        .headers()
        .get_all("oci-tag")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(tags, ["v1", "latest"]);
    for t in ["v1", "latest"] {
        if on_s3() {
            assert!(s.tags("app").contains(&t.to_string()), "tag {t}");
        } else {
            assert_eq!(s.store.repos().tag("app", t).unwrap(), Some(d.clone()));
        }
    }
    let r = s
        .put_manifest("app", &format!("{d}?tag=bad:tag"), OCI_MANIFEST, &m)
        .await;
    assert_eq!(error_code(r).await, "MANIFEST_INVALID");
}

#[tokio::test]
async fn mount_without_from_finds_a_readable_repository() {
    let Some(s) = start_with_users(
        r#"
        [[rule]]
        users = ["ci"]
        repositories = ["*"]
        actions = ["pull", "push"]
        [[rule]]
        users = ["dev"]
        repositories = ["dev/*"]
        actions = ["pull", "push"]
        "#,
    )
    .await
    else {
        return;
    };
    let post = |user: &'static str, pass: &'static str, path: String| {
        s.req(Method::POST, &path).basic_auth(user, Some(pass))
    };
    let mut digests = Vec::new();
    for (repo, data) in [
        ("secret/app", &b"secret layer"[..]),
        ("dev/base", &b"shared layer"[..]),
    ] {
        let d = Digest::sha256(data);
        let path = format!("/v2/{repo}/blobs/uploads/?digest={d}");
        let r = post("ci", "ci-pass", path)
            .body(data.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        digests.push(d);
    }
    // dev may read dev/base: mounted without naming it. dev may not read secret/app:
    // an ordinary upload starts, and nothing is linked.
    for (d, want, linked) in [
        (&digests[1], StatusCode::CREATED, true),
        (&digests[0], StatusCode::ACCEPTED, false),
    ] {
        let path = format!("/v2/dev/app/blobs/uploads/?mount={d}");
        let r = post("dev", "dev-pass", path).send().await.unwrap();
        assert_eq!(r.status(), want, "mount {d}");
        assert_eq!(s.has_blob("dev/app", d), linked);
    }
}
