//! The Bearer token dance against a registry that demands it, run in-process on
//! 127.0.0.1: challenge, token request with the user's credentials, retry with the
//! token, cached token for the next request, digest checks.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use berth_client::{Client, ClientConfig, Credentials};
use berth_oci::Digest;
use berth_oci::Reference;

const MANIFEST: &str = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}"#;

#[derive(Clone)]
struct S {
    realm: String,
    token_requests: Arc<AtomicUsize>,
    corrupt: bool,
}

fn challenge(s: &S) -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(
            "www-authenticate",
            format!(
                "Bearer realm=\"{}\",service=\"test-registry\",scope=\"repository:team/app:pull\"",
                s.realm
            ),
        )],
    )
        .into_response()
}

async fn token(
    State(s): State<S>,
    Query(q): Query<HashMap<String, String>>,
    h: HeaderMap,
) -> Response {
    s.token_requests.fetch_add(1, Ordering::SeqCst);
    // "u:p" in base64.
    let ok = h.get("authorization").and_then(|v| v.to_str().ok()) == Some("Basic dTpw");
    if !ok
        || q.get("service").map(String::as_str) != Some("test-registry")
        || q.get("scope").map(String::as_str) != Some("repository:team/app:pull")
    {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    axum::Json(serde_json::json!({"token": "tok-123"})).into_response()
}

fn authorized(h: &HeaderMap) -> bool {
    h.get("authorization").and_then(|v| v.to_str().ok()) == Some("Bearer tok-123")
}

/// `GET /v2/`: a challenge without a scope, as Docker Hub answers it.
async fn base(State(s): State<S>, h: HeaderMap) -> Response {
    if authorized(&h) {
        return axum::Json(serde_json::json!({})).into_response();
    }
    (
        StatusCode::UNAUTHORIZED,
        [(
            "www-authenticate",
            format!("Bearer realm=\"{}\",service=\"test-registry\"", s.realm),
        )],
    )
        .into_response()
}

async fn manifest(State(s): State<S>, h: HeaderMap) -> Response {
    if !authorized(&h) {
        return challenge(&s);
    }
    let body = if s.corrupt {
        MANIFEST.replace("layers", "Layers")
    } else {
        MANIFEST.to_string()
    };
    (
        [
            (
                "content-type",
                "application/vnd.oci.image.manifest.v1+json".to_string(),
            ),
            (
                "docker-content-digest",
                Digest::sha256(MANIFEST.as_bytes()).to_string(),
            ),
        ],
        body,
    )
        .into_response()
}

async fn blob(State(s): State<S>, h: HeaderMap) -> Response {
    if !authorized(&h) {
        return challenge(&s);
    }
    b"{}".to_vec().into_response()
}

async fn serve(corrupt: bool) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let s = S {
        realm: format!("http://{addr}/token"),
        token_requests: Arc::new(AtomicUsize::new(0)),
        corrupt,
    };
    let counter = s.token_requests.clone();
    let app = Router::new()
        .route("/token", get(token))
        .route("/v2/", get(base))
        .route("/v2/team/app/manifests/{reference}", get(manifest))
        .route("/v2/team/app/blobs/{digest}", get(blob))
        .with_state(s);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr.to_string(), counter)
}

fn client(registry: &str, creds: Option<(&str, &str)>) -> Client {
    let mut credentials = HashMap::new();
    if let Some((u, p)) = creds {
        credentials.insert(
            registry.to_string(),
            Credentials {
                username: u.into(),
                password: p.into(),
            },
        );
    }
    Client::new(ClientConfig {
        credentials,
        ..ClientConfig::default()
    })
}

#[tokio::test]
async fn bearer_tokens_are_fetched_once_and_used() {
    let (addr, token_requests) = serve(false).await;
    let c = client(&addr, Some(("u", "p")));
    let r: Reference = format!("{addr}/team/app:v1").parse().unwrap();
    let m = c.manifest(&r).await.unwrap();
    assert_eq!(m.digest, Digest::sha256(MANIFEST.as_bytes()));
    let mut got = Vec::new();
    let d = Digest::sha256(b"{}");
    let n = c
        .blob(&r, &d, &mut |b| {
            got.extend_from_slice(b);
            Ok(())
        })
        .await
        .unwrap();
    assert_eq!((n, got.as_slice()), (2, b"{}".as_slice()));
    assert_eq!(
        token_requests.load(Ordering::SeqCst),
        1,
        "the token is reused"
    );
    // A blob that is not what its digest says.
    let wrong = Digest::sha256(b"something else");
    let err = c.blob(&r, &wrong, &mut |_| Ok(())).await.unwrap_err();
    assert!(err.to_string().contains("expected"), "{err}");
}

#[tokio::test]
async fn wrong_credentials_and_corrupt_manifests_fail_clearly() {
    let (addr, _) = serve(false).await;
    let r: Reference = format!("{addr}/team/app:v1").parse().unwrap();
    let err = client(&addr, Some(("u", "wrong")))
        .manifest(&r)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("authentication failed"), "{err}");
    let err = client(&addr, None).manifest(&r).await.unwrap_err();
    assert!(err.to_string().contains("authentication failed"), "{err}");
    let (addr, _) = serve(true).await;
    let r: Reference = format!("{addr}/team/app:v1").parse().unwrap();
    let err = client(&addr, Some(("u", "p")))
        .manifest(&r)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("expected sha256:"), "{err}");
}
