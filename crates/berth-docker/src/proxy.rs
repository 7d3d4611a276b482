//! The registry proxy: a read-only registry on 127.0.0.1 that serves exactly one image
//! (its manifest, config and layers) for the daemon to pull, and nothing else. It lives
//! for one load; it writes nothing.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::layers::{Image, Layer};

/// Test failpoint: with `BERTH_FAILPOINT=load-proxy-layer-404` the proxy answers 404 for
/// the image's last layer, so the daemon's pull fails after the manifest and config
/// went through (a pull broken midway); the tests use it to check the fallback.
const FAILPOINT_LAYER_404: &str = "load-proxy-layer-404";

struct Served {
    image: Image,
    failing_layer: Option<berth_oci::Digest>,
}

pub(crate) struct Proxy {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Proxy {
    pub async fn start(image: Image, port: u16) -> std::io::Result<Proxy> {
        let failing_layer = (std::env::var("BERTH_FAILPOINT").as_deref()
            == Ok(FAILPOINT_LAYER_404))
        .then(|| image.layers.last().map(|l| l.digest.clone()))
        .flatten();
        let state = Arc::new(Served {
            image,
            failing_layer,
        });
        let app = axum::Router::new().fallback(handle).with_state(state);
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(berth_registry::serve(listener, app, None, async {
            let _ = rx.await;
        }));
        Ok(Proxy {
            addr,
            stop: Some(tx),
            task,
        })
    }

    /// Stop listening and wait for requests in flight.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = (&mut self.task).await;
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // A proxy dropped without stop() (an error path) must not outlive the load.
        self.task.abort();
    }
}

fn not_found(code: &str) -> Response {
    let body =
        format!(r#"{{"errors":[{{"code":"{code}","message":"not served by this proxy"}}]}}"#);
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

async fn handle(State(s): State<Arc<Served>>, req: Request) -> Response {
    let head = req.method() == Method::HEAD;
    if !head && req.method() != Method::GET {
        return StatusCode::METHOD_NOT_ALLOWED.into_response();
    }
    let path = req.uri().path();
    tracing::debug!(path, "proxy request");
    if path == "/v2/" || path == "/v2" {
        return ([("docker-distribution-api-version", "registry/2.0")], "{}").into_response();
    }
    let img = &s.image;
    if let Some((_, reference)) = path.rsplit_once("/manifests/") {
        if reference != img.manifest_digest.to_string() {
            return not_found("MANIFEST_UNKNOWN");
        }
        return bytes_response(
            &img.manifest,
            &img.manifest_type,
            &img.manifest_digest,
            head,
        );
    }
    let Some((_, digest)) = path.rsplit_once("/blobs/") else {
        return not_found("NAME_UNKNOWN");
    };
    if digest == img.config_digest.to_string() {
        return bytes_response(
            &img.config,
            "application/octet-stream",
            &img.config_digest,
            head,
        );
    }
    let Some(layer) = img.layers.iter().find(|l| l.digest.to_string() == digest) else {
        return not_found("BLOB_UNKNOWN");
    };
    if s.failing_layer.as_ref() == Some(&layer.digest) {
        return not_found("BLOB_UNKNOWN");
    }
    layer_response(layer.clone(), head)
}

fn bytes_response(
    bytes: &[u8],
    media_type: &str,
    digest: &berth_oci::Digest,
    head: bool,
) -> Response {
    let body = if head {
        Body::empty()
    } else {
        Body::from(bytes.to_vec())
    };
    blob_response(body, bytes.len() as u64, media_type, &digest.to_string())
}

/// A response carrying a blob of `size` bytes (its body, or none for HEAD).
fn blob_response(body: Body, size: u64, media_type: &str, digest: &str) -> Response {
    let mut r = Response::new(body);
    let h = r.headers_mut();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(media_type)
            .unwrap_or(HeaderValue::from_static("application/octet-stream")),
    );
    if let Ok(v) = HeaderValue::from_str(digest) {
        h.insert("docker-content-digest", v);
    }
    r
}

/// A layer's bytes, read (and inflated) on a blocking thread as the daemon takes them.
fn layer_response(layer: Layer, head: bool) -> Response {
    let (size, digest) = (layer.size, layer.digest.to_string());
    let body = if head {
        Body::empty()
    } else {
        let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<bytes::Bytes>>(4);
        let path = layer.path.clone();
        tokio::task::spawn_blocking(move || {
            let mut r = match layer.open() {
                Ok(r) => r,
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            };
            loop {
                let mut buf = vec![0u8; 1 << 20];
                match std::io::Read::read(&mut r, &mut buf) {
                    Ok(0) => return,
                    Ok(n) => {
                        buf.truncate(n);
                        if tx.blocking_send(Ok(bytes::Bytes::from(buf))).is_err() {
                            return; // the daemon hung up
                        }
                    }
                    Err(e) => {
                        tracing::warn!(layer = %path.display(), error = %e, "reading a layer for the daemon");
                        let _ = tx.blocking_send(Err(e));
                        return;
                    }
                }
            }
        });
        Body::from_stream(crate::receiver_stream(rx))
    };
    blob_response(body, size, "application/octet-stream", &digest)
}
