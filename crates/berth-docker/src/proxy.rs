//! The registry proxy: a read-only registry on 127.0.0.1 that serves exactly one image
//! (its manifest, config and layers) for the daemon to pull, and nothing else. It lives
//! for one load; it writes nothing.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
    gate: Arc<Gate>,
}

/// How long the first layer request waits for the daemon's other ones, so that the
/// lowest layer it asks for goes first. dockerd sends its (up to 3) layer requests at once.
const GATHER: Duration = Duration::from_millis(10);

/// Layer bodies go to the daemon one at a time, lowest layer first. dockerd downloads up to
/// three layers at once but extracts them in order, each only after its own download
/// ended: served side by side, the first layer finishes when nearly all bytes are through,
/// and extraction starts late; one at a time, it starts after the first layer's bytes and
/// overlaps the other downloads (bench/load.sh).
#[derive(Default)]
struct Gate {
    state: Mutex<GateState>,
    changed: tokio::sync::Notify,
}

#[derive(Default)]
struct GateState {
    serving: bool,
    /// Layer index -> requests waiting for their turn.
    waiting: BTreeMap<usize, usize>,
    first_request: Option<tokio::time::Instant>,
}

/// The right to send one layer's body; the next waiting layer goes when it is dropped.
struct Turn(Arc<Gate>);

impl Drop for Turn {
    fn drop(&mut self) {
        self.0.state.lock().expect("gate lock").serving = false;
        self.0.changed.notify_waiters();
    }
}

impl Gate {
    async fn turn(self: Arc<Self>, index: usize) -> Turn {
        let gathered = {
            let mut st = self.state.lock().expect("gate lock");
            *st.waiting.entry(index).or_default() += 1;
            *st.first_request
                .get_or_insert_with(tokio::time::Instant::now)
                + GATHER
        };
        tokio::time::sleep_until(gathered).await;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut st = self.state.lock().expect("gate lock");
                if !st.serving && st.waiting.keys().next() == Some(&index) {
                    st.serving = true;
                    let n = st.waiting.get_mut(&index).expect("waiting");
                    *n -= 1;
                    if *n == 0 {
                        st.waiting.remove(&index);
                    }
                    return Turn(self.clone());
                }
            }
            notified.await;
        }
    }
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
            gate: Arc::default(),
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
    let Some((index, layer)) = img
        .layers
        .iter()
        .enumerate()
        .find(|(_, l)| l.digest.to_string() == digest)
    else {
        return not_found("BLOB_UNKNOWN");
    };
    if s.failing_layer.as_ref() == Some(&layer.digest) {
        return not_found("BLOB_UNKNOWN");
    }
    if head {
        return blob_response(
            Body::empty(),
            layer.size,
            "application/octet-stream",
            digest,
        );
    }
    layer_response(layer.clone(), s.gate.clone().turn(index))
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

/// A layer's bytes, read (and inflated) on a blocking thread as the daemon takes them,
/// once `turn` comes (the head goes at once).
fn layer_response(
    layer: Layer,
    turn: impl std::future::Future<Output = Turn> + Send + 'static,
) -> Response {
    let (size, digest) = (layer.size, layer.digest.to_string());
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<bytes::Bytes>>(4);
    let path = layer.path.clone();
    tokio::spawn(async move {
        let turn = turn.await;
        tokio::task::spawn_blocking(move || {
            let _turn = turn;
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
    });
    let body = Body::from_stream(crate::receiver_stream(rx));
    blob_response(body, size, "application/octet-stream", &digest)
}
