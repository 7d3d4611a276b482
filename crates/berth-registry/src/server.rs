//! Listening: plain TCP or TLS, HTTP/1.1 and HTTP/2, a log line per request, graceful
//! shutdown, and the limits that keep a few clients from stalling everyone: a header
//! timeout, an idle timeout, a connection limit answered with 503, and surviving the
//! process running out of descriptors.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, HttpBody};
use axum::extract::Request;
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::StreamExt;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::error::{Code, RegistryError};

/// How long in-flight requests get to finish after a shutdown signal.
const DRAIN: Duration = Duration::from_secs(30);

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate file could not be read or holds no certificate.
    #[error("TLS certificate {path}: {message}")]
    Cert {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The key file could not be read or holds no private key.
    #[error("TLS key {path}: {message}")]
    Key {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// rustls refused the pair (e.g. the key does not match the certificate).
    #[error("TLS certificate and key do not work together: {0}")]
    Config(#[from] rustls::Error),
}

/// A TLS acceptor from PEM files (certificate chain, private key).
pub fn tls_acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| TlsError::Cert {
            path: cert.display().to_string(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Cert {
            path: cert.display().to_string(),
            message: "no PEM certificate in file".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
        path: key.display().to_string(),
        message: e.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// How the listener treats connections. The defaults suit a registry facing clients it
/// does not trust; [`ServeOptions::default`] derives the connection limit from the
/// process's descriptor limit.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Connections served at once. Further ones get a short 503 and are closed (a few
    /// beyond that are closed without an answer), instead of failing `accept` once the
    /// descriptors run out.
    pub max_connections: usize,
    /// Time a client gets to send a request's headers, from the moment the server waits
    /// for them: a new connection, or an HTTP/1.1 keep-alive connection after its last
    /// answer. Slow or silent clients are disconnected after it.
    pub header_read_timeout: Duration,
    /// A connection with no request in flight for this long is closed (HTTP/2, and
    /// connections that never sent a request line).
    pub idle_timeout: Duration,
    /// A connection with a request in flight that moves no byte either way for this long
    /// is closed: a client that stops reading a download or stops sending an upload
    /// would otherwise hold its connection slot (and an open file) for ever.
    pub stall_timeout: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            max_connections: default_max_connections(),
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(120),
            stall_timeout: Duration::from_secs(300),
        }
    }
}

/// Half the process's soft descriptor limit, at most 1024 and at least 16: the other
/// half is for blobs being read, uploads being written and the store's metadata files.
pub fn default_max_connections() -> usize {
    let soft = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|t| {
            let line = t.lines().find(|l| l.starts_with("Max open files"))?;
            line.split_whitespace().nth(3)?.parse::<usize>().ok()
        })
        .unwrap_or(1024);
    (soft / 2).clamp(16, 1024)
}

/// The peer of the connection a request came on, put into each request's extensions
/// by [`serve`] (login rate limits are per client address).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClientAddr(pub(crate) SocketAddr);

/// The certificate chain a TLS client presented and the listener's verifier accepted,
/// put into each request's extensions by [`serve`] (absent without one).
#[derive(Debug, Clone)]
pub struct PeerCertificates(pub Arc<[rustls_pki_types::CertificateDer<'static>]>);

/// Serve `app` on `listener` with [`ServeOptions::default`]; see [`serve_with`].
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    serve_with(listener, app, tls, ServeOptions::default(), shutdown).await
}

/// Serve `app` on `listener` (through `tls` if given) until `shutdown` resolves, then
/// stop accepting and give in-flight requests up to 30 s to finish. Uploads cut off by
/// that deadline keep what they received, so clients can resume them after a restart.
///
/// When the process runs out of descriptors, `accept` fails: that is logged once, the
/// listener backs off (the pending connections wait in the kernel's backlog) and serves
/// again as soon as descriptors are free.
pub async fn serve_with(
    listener: TcpListener,
    app: Router,
    tls: Option<TlsAcceptor>,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout);
    let slots = Arc::new(Semaphore::new(options.max_connections.max(1)));
    // Over the limit a connection still gets an answer, while these last; beyond them it
    // is closed at once.
    let overflow = Arc::new(Semaphore::new(OVERFLOW_ANSWERS));
    let options = Arc::new(options);
    let mut exhausted: Option<Exhaustion> = None;
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) if is_exhaustion(&e) => {
                    let ex = exhausted.get_or_insert_with(|| {
                        tracing::error!(
                            error = %e,
                            max_connections = options.max_connections,
                            "cannot accept connections: out of file descriptors or memory; \
                             new connections wait until some close. Raise the limit \
                             (ulimit -n, LimitNOFILE=) or lower --max-connections"
                        );
                        Exhaustion { failures: 0, last: Instant::now(), backoff: Duration::from_millis(10) }
                    });
                    ex.failures += 1;
                    ex.last = Instant::now();
                    let pause = ex.backoff;
                    ex.backoff = (ex.backoff * 2).min(Duration::from_secs(1));
                    tokio::select! {
                        () = tokio::time::sleep(pause) => continue,
                        () = &mut shutdown => break,
                    }
                }
                Err(e) => {
                    // The peer gave up before we accepted it (ECONNABORTED) and the like.
                    tracing::debug!(error = %e, "accept failed");
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // An episode ends after a quiet spell, not at the first accept that works:
        // near the limit, accepts succeed and fail in turns, and that is one story.
        if let Some(ex) = &mut exhausted {
            ex.backoff = Duration::from_millis(10);
            if ex.last.elapsed() >= EXHAUSTION_QUIET {
                tracing::warn!(
                    failed_accepts = ex.failures,
                    "descriptors available again: accepting connections"
                );
                exhausted = None;
            }
        }
        let _ = stream.set_nodelay(true);
        let (permit, service) = match slots.clone().try_acquire_owned() {
            Ok(permit) => (permit, Tracked::new(app.clone(), peer)),
            Err(_) => match overflow.clone().try_acquire_owned() {
                Ok(permit) => {
                    tracing::debug!(%peer, "connection limit reached: answering 503");
                    (permit, Tracked::busy(options.max_connections, peer))
                }
                Err(_) => {
                    tracing::debug!(%peer, "connection limit reached: closing");
                    continue;
                }
            },
        };
        let tls = tls.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let options = options.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let activity = service.activity.clone();
            let stream = Watched {
                inner: stream,
                activity: activity.clone(),
            };
            match tls {
                None => {
                    let conn =
                        builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    drive(watcher.watch(conn.into_owned()), &activity, &options, peer).await;
                }
                Some(acceptor) => {
                    let tls = match tokio::time::timeout(
                        options.header_read_timeout.min(Duration::from_secs(10)),
                        acceptor.accept(stream),
                    )
                    .await
                    {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::info!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::info!(%peer, "TLS handshake timed out");
                            return;
                        }
                    };
                    let mut service = service;
                    service.peer_certs = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .filter(|c| !c.is_empty())
                        .map(|c| {
                            PeerCertificates(c.iter().map(|c| c.clone().into_owned()).collect())
                        });
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
                    drive(watcher.watch(conn.into_owned()), &activity, &options, peer).await;
                }
            }
        });
    }
    drop(listener);
    tracing::info!("shutting down: waiting for in-flight requests");
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(DRAIN) => tracing::warn!("in-flight requests still running after {DRAIN:?}; stopping anyway"),
    }
    Ok(())
}

/// Connections over the limit that still get a 503 before being closed.
const OVERFLOW_ANSWERS: usize = 64;

/// A run of failed accepts for lack of descriptors (or memory), logged once.
struct Exhaustion {
    failures: u64,
    /// The latest failure.
    last: Instant,
    backoff: Duration,
}

/// How long accepts must work before running out of descriptors counts as over.
const EXHAUSTION_QUIET: Duration = Duration::from_secs(5);

/// EMFILE, ENFILE, ENOBUFS, ENOMEM (Linux numbers): the process or the system is out of
/// something a new connection needs; retrying at once would spin.
fn is_exhaustion(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(24 | 23 | 105 | 12))
}

/// Run a connection until it ends, or until it has been idle too long: no request in
/// flight for `header_read_timeout` before its first request, `idle_timeout` after; or
/// a request in flight but no byte read or written for `stall_timeout`. Dropping the
/// connection's future closes its socket.
async fn drive<E: std::fmt::Display>(
    conn: impl Future<Output = Result<(), E>>,
    activity: &Activity,
    options: &ServeOptions,
    peer: SocketAddr,
) {
    tokio::pin!(conn);
    loop {
        let limit = if activity.requests.load(Ordering::Relaxed) == 0 {
            options.header_read_timeout
        } else {
            options.idle_timeout
        };
        // Nothing wakes this loop when a request starts or ends, so it also looks again
        // after the shorter of the two limits: each is then seen within twice its time.
        let deadline = match activity.idle_since() {
            Some(since) => since + limit,
            None => activity.last_io() + options.stall_timeout,
        }
        .min(Instant::now() + limit.min(options.stall_timeout));
        tokio::select! {
            r = &mut conn => {
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                return;
            }
            () = tokio::time::sleep_until(deadline.into()) => {
                match activity.idle_since() {
                    Some(since) if since.elapsed() >= limit => {
                        tracing::debug!(%peer, "closing idle connection");
                        return;
                    }
                    None if activity.last_io().elapsed() >= options.stall_timeout => {
                        tracing::info!(
                            %peer,
                            "closing a connection whose request moved no data for {:?}",
                            options.stall_timeout
                        );
                        return;
                    }
                    _ => {}
                }
            }
        }
    }
}

/// The connection's socket, noting when bytes move (for [`drive`]'s stall check).
struct Watched<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.moved();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.moved();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.moved();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// What a connection is doing, for [`drive`]'s idle check.
struct Activity {
    start: Instant,
    in_flight: AtomicUsize,
    requests: AtomicU64,
    /// Milliseconds after `start` when the last request in flight finished.
    idle_ms: AtomicU64,
    /// Milliseconds after `start` when a byte was last read or written.
    io_ms: AtomicU64,
}

impl Activity {
    fn moved(&self) {
        self.io_ms
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn last_io(&self) -> Instant {
        self.start + Duration::from_millis(self.io_ms.load(Ordering::Relaxed))
    }

    /// When the connection became idle; `None` while a request is in flight.
    fn idle_since(&self) -> Option<Instant> {
        (self.in_flight.load(Ordering::Acquire) == 0)
            .then(|| self.start + Duration::from_millis(self.idle_ms.load(Ordering::Acquire)))
    }
}

/// Marks a request in flight until its response body is sent or dropped.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn new(activity: Arc<Activity>) -> InFlight {
        activity.requests.fetch_add(1, Ordering::Relaxed);
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.0;
        a.idle_ms
            .store(a.start.elapsed().as_millis() as u64, Ordering::Release);
        a.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its request counted as in flight until it is done.
struct CountedBody {
    inner: Body,
    _in_flight: InFlight,
}

impl HttpBody for CountedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The per-connection service: the router (or a 503 when over the limit), with the
/// client's address in each request and each request counted for the idle check.
#[derive(Clone)]
struct Tracked {
    app: Option<Router>,
    max_connections: usize,
    peer: SocketAddr,
    peer_certs: Option<PeerCertificates>,
    activity: Arc<Activity>,
}

impl Tracked {
    fn new(app: Router, peer: SocketAddr) -> Tracked {
        Tracked::with(Some(app), 0, peer)
    }

    fn busy(max_connections: usize, peer: SocketAddr) -> Tracked {
        Tracked::with(None, max_connections, peer)
    }

    fn with(app: Option<Router>, max_connections: usize, peer: SocketAddr) -> Tracked {
        Tracked {
            app,
            max_connections,
            peer,
            peer_certs: None,
            activity: Arc::new(Activity {
                start: Instant::now(),
                in_flight: AtomicUsize::new(0),
                requests: AtomicU64::new(0),
                idle_ms: AtomicU64::new(0),
                io_ms: AtomicU64::new(0),
            }),
        }
    }
}

impl hyper::service::Service<Request<Incoming>> for Tracked {
    type Response = Response<CountedBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        let in_flight = InFlight::new(self.activity.clone());
        req.extensions_mut().insert(ClientAddr(self.peer));
        if let Some(certs) = &self.peer_certs {
            req.extensions_mut().insert(certs.clone());
        }
        let app = self.app.clone();
        let max = self.max_connections;
        Box::pin(async move {
            let resp = match app {
                Some(app) => {
                    let Ok(resp) = tower::ServiceExt::oneshot(app, req.map(Body::new)).await;
                    resp
                }
                None => busy(max),
            };
            Ok(resp.map(|inner| CountedBody {
                inner,
                _in_flight: in_flight,
            }))
        })
    }
}

/// The answer to a connection over the limit.
fn busy(max_connections: usize) -> Response {
    let mut resp = RegistryError::new(
        Code::Unavailable,
        format!(
            "the registry serves {max_connections} connections at most and all are in use; retry shortly"
        ),
    )
    .with_header(header::RETRY_AFTER, "1")
    .into_response();
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// One log line per request: method, path, status, bytes in and out, time.
///
/// Bytes in are counted as the body is read (chunked uploads carry no Content-Length);
/// every handler reads its whole body before answering, so the count is complete when
/// the line is written. Bytes out are the response's Content-Length, which berth always
/// sets.
pub(crate) async fn log_request(req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let counted = Arc::new(AtomicU64::new(0));
    let counter = counted.clone();
    let req = req.map(|body| {
        Body::from_stream(body.into_data_stream().inspect(move |chunk| {
            if let Ok(c) = chunk {
                counter.fetch_add(c.len() as u64, Ordering::Relaxed);
            }
        }))
    });
    let resp = next.run(req).await;
    let bytes_in = counted.load(Ordering::Relaxed);
    let bytes_out = content_length(resp.headers());
    tracing::info!(
        target: "berth::access",
        %method,
        path,
        status = resp.status().as_u16(),
        bytes_in,
        bytes_out,
        ms = format_args!("{:.2}", start.elapsed().as_secs_f64() * 1000.0),
    );
    resp
}

fn content_length(h: &axum::http::HeaderMap) -> u64 {
    h.get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or(0)
}
