//! The reverse proxy berth runs on each host: one listener per published port, forwarding
//! to the current containers of its service. A deploy switches the target in one step
//! ([`Proxies::switch`]); requests in flight to the old containers finish there, and
//! [`Target::drained`] tells when the last one has. Requests that arrive while a port
//! has no target yet (before the first healthy container) wait for one, up to
//! [`WAIT_FOR_TARGET`], instead of failing.
//!
//! - **Replicas**: a [`Target`] is every container of one version (`replicas = N`);
//!   requests go to them in turn, and a replica that refuses the connection passes the
//!   request to the next one.
//! - **HTTP/1.1 and HTTP/2**: a connection that opens with HTTP/2's preface (h2c with
//!   prior knowledge, `curl --http2-prior-knowledge`) is served as HTTP/2; anything
//!   else as HTTP/1.1. Containers are spoken to in HTTP/1.1 either way: an HTTP/2
//!   request is sent in origin form with its authority as `Host`. h2c through
//!   `Upgrade: h2c` is not offered (the request is forwarded as HTTP/1.1 with the header
//!   removed): hyper cannot answer the upgrading request on stream 1, and clients fall
//!   back by themselves.
//! - **Upgrades** (WebSocket, any `Connection: upgrade` of HTTP/1.1): the request goes
//!   to a container; when it answers `101 Switching Protocols`, the two connections are
//!   joined byte for byte. The joined connection counts as in flight to its target
//!   until either side closes it, so a drain waits for it; [`Target::close`] ends
//!   those still open when the drain's time is up.
//!
//! Every request gets its own upstream connection: after a switch nothing can reuse a
//! kept-alive connection to a container that is going away. Requests carry
//! `X-Forwarded-For`, `X-Forwarded-Proto` and `X-Forwarded-Host`.
//!
//! Not yet: TLS termination (and so h2 over ALPN), WebSockets over HTTP/2 (RFC 8441),
//! handing the target to an existing proxy.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::header::{CONNECTION, HOST, HeaderValue, UPGRADE};
use hyper::{Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::watch;

use crate::error::DeployError;

/// How long a request waits for a port to get its first target.
pub const WAIT_FOR_TARGET: Duration = Duration::from_secs(30);

/// How long connecting to a container may take. A container on this host answers in
/// well under a millisecond; a connection that takes longer went to an address that
/// vanished (a container removed as the request set out gets no RST, only silence), so
/// the request goes to the current target instead of waiting for TCP's own timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

type Body = BoxBody<Bytes, hyper::Error>;

/// A port's current target (none before the first healthy container).
type Route = watch::Sender<Option<Arc<Target>>>;

/// The containers of one version a port forwards to, with the requests and upgraded
/// connections in flight to them.
#[derive(Debug)]
pub struct Target {
    /// `ip:port` of each replica.
    pub addrs: Vec<SocketAddr>,
    next: AtomicUsize,
    inflight: AtomicUsize,
    upgraded: AtomicUsize,
    closed: watch::Sender<bool>,
}

impl Target {
    /// A target of one container at `addr`.
    pub fn new(addr: SocketAddr) -> Arc<Target> {
        Target::pool(vec![addr])
    }

    /// A target of the replicas at `addrs`, taken in turn.
    ///
    /// # Panics
    /// When `addrs` is empty.
    pub fn pool(addrs: Vec<SocketAddr>) -> Arc<Target> {
        assert!(!addrs.is_empty(), "a target has at least one container");
        Arc::new(Target {
            addrs,
            next: AtomicUsize::new(0),
            inflight: AtomicUsize::new(0),
            upgraded: AtomicUsize::new(0),
            closed: watch::channel(false).0,
        })
    }

    /// The replica the next request goes to.
    fn pick(&self) -> SocketAddr {
        self.addrs[self.next.fetch_add(1, Ordering::Relaxed) % self.addrs.len()]
    }

    /// Requests being served by it now, upgraded connections included.
    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::SeqCst)
    }

    /// Upgraded connections (WebSockets) open to it now.
    pub fn upgraded(&self) -> usize {
        self.upgraded.load(Ordering::SeqCst)
    }

    /// Waits until no request is in flight to it and no upgraded connection is open
    /// (after a switch away from it), at most `limit`; false when some were still
    /// running then.
    pub async fn drained(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        while self.inflight() > 0 {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    /// Closes the upgraded connections still open to it (both sides), when a drain's
    /// time is up and its containers are about to stop.
    pub fn close(&self) {
        self.closed.send_replace(true);
    }
}

/// Counts one request (or upgraded connection) against a target while it lives.
struct Guard(Arc<Target>);

impl Drop for Guard {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The proxy listeners of one host, by host port.
#[derive(Clone)]
pub struct Proxies {
    routes: Arc<Mutex<HashMap<u16, Route>>>,
    bind: IpAddr,
}

impl Default for Proxies {
    /// Listeners on every address of the host.
    fn default() -> Self {
        Proxies::on(IpAddr::from([0, 0, 0, 0]))
    }
}

impl Proxies {
    /// Listeners on `bind` only.
    pub fn on(bind: IpAddr) -> Proxies {
        Proxies {
            routes: Arc::default(),
            bind,
        }
    }

    /// Points host port `listen`'s listener at `target`, starting the listener (on all
    /// addresses) if it is not running. Returns the previous target.
    pub async fn switch(
        &self,
        listen: u16,
        target: Arc<Target>,
    ) -> Result<Option<Arc<Target>>, DeployError> {
        let existing = self.routes.lock().expect("routes").get(&listen).cloned();
        let tx = match existing {
            Some(tx) => tx,
            None => {
                let addr = SocketAddr::new(self.bind, listen);
                let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                    DeployError::Docker(format!(
                        "berth's proxy cannot listen on port {listen} of this host: {e}; \
                         free the port or publish another one"
                    ))
                })?;
                let (tx, rx) = watch::channel(None);
                tokio::spawn(serve(listener, rx));
                self.routes
                    .lock()
                    .expect("routes")
                    .insert(listen, tx.clone());
                tracing::info!(port = listen, "proxy listening");
                tx
            }
        };
        Ok(tx.send_replace(Some(target)))
    }

    /// The current target of host port `listen`.
    pub fn current(&self, listen: u16) -> Option<Arc<Target>> {
        self.routes
            .lock()
            .expect("routes")
            .get(&listen)
            .and_then(|tx| tx.borrow().clone())
    }
}

async fn serve(listener: tokio::net::TcpListener, rx: watch::Receiver<Option<Arc<Target>>>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "proxy accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let rx = rx.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| forward(req, peer, rx.clone()));
            // HTTP/2's preface (prior knowledge) or HTTP/1.1, upgrades allowed.
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if let Err(e) = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                .await
            {
                tracing::debug!(%peer, error = %e, "proxy connection ended");
            }
        });
    }
}

fn answer(status: StatusCode, text: String) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from(text))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    r
}

async fn current(rx: &mut watch::Receiver<Option<Arc<Target>>>) -> Option<Arc<Target>> {
    let waited = tokio::time::timeout(WAIT_FOR_TARGET, rx.wait_for(Option::is_some)).await;
    match waited {
        Ok(Ok(t)) => t.clone(),
        _ => None,
    }
}

/// An HTTP/1.1 request that asks for another protocol on its connection (WebSocket).
fn wants_upgrade(req: &Request<Incoming>) -> bool {
    req.version() == Version::HTTP_11
        && req
            .headers()
            .get(UPGRADE)
            .is_some_and(|v| v.as_bytes() != b"h2c")
        && req
            .headers()
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Adds `X-Forwarded-*`, and makes an HTTP/2 request one a container speaking HTTP/1.1
/// takes: origin-form target, `Host` from the authority.
fn prepare(req: &mut Request<Incoming>, peer: SocketAddr) {
    if req.version() == Version::HTTP_2 {
        if let Some(auth) = req.uri().authority().cloned()
            && !req.headers().contains_key(HOST)
            && let Ok(v) = HeaderValue::from_str(auth.as_str())
        {
            req.headers_mut().insert(HOST, v);
        }
        let path = req
            .uri()
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
        if let Ok(uri) = path.parse() {
            *req.uri_mut() = uri;
        }
        *req.version_mut() = Version::HTTP_11;
    } else if req.headers().get(UPGRADE).and_then(|v| v.to_str().ok()) == Some("h2c") {
        // Not offered (see the module's notes): the request goes on as HTTP/1.1.
        req.headers_mut().remove(UPGRADE);
        req.headers_mut().remove("http2-settings");
    }
    let headers = req.headers_mut();
    let xff = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prev) => format!("{prev}, {}", peer.ip()),
        None => peer.ip().to_string(),
    };
    if let Ok(v) = xff.parse() {
        headers.insert("x-forwarded-for", v);
    }
    if !headers.contains_key("x-forwarded-proto") {
        headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    }
    if let Some(host) = headers.get(HOST).cloned()
        && !headers.contains_key("x-forwarded-host")
    {
        headers.insert("x-forwarded-host", host);
    }
}

async fn connect(addr: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
        .await
        .unwrap_or_else(|_| {
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer in {CONNECT_TIMEOUT:?}"),
            ))
        })
}

async fn forward(
    mut req: Request<Incoming>,
    peer: SocketAddr,
    mut rx: watch::Receiver<Option<Arc<Target>>>,
) -> Result<Response<Body>, Infallible> {
    let Some(mut target) = current(&mut rx).await else {
        return Ok(answer(
            StatusCode::SERVICE_UNAVAILABLE,
            "berth proxy: no healthy container for this port yet\n".into(),
        ));
    };
    let upgrade = wants_upgrade(&req).then(|| hyper::upgrade::on(&mut req));
    prepare(&mut req, peer);
    // Count the request against its target before anything else, then look again: a
    // switch that happened meanwhile is seen here, so a drain never misses a request.
    let mut tried = 0;
    let (stream, guard, addr) = loop {
        target.inflight.fetch_add(1, Ordering::SeqCst);
        let guard = Guard(target.clone());
        let now = rx.borrow().clone();
        if let Some(t) = now
            && !Arc::ptr_eq(&t, &target)
        {
            target = t;
            tried = 0;
            continue;
        }
        let addr = target.pick();
        match connect(addr).await {
            Ok(s) => break (s, guard, addr),
            Err(e) => {
                // Switched away and gone: the new containers take the request (nothing
                // of it was sent yet); else the next replica, once each.
                tried += 1;
                let now = rx.borrow().clone();
                match now {
                    Some(t) if !Arc::ptr_eq(&t, &target) => {
                        target = t;
                        tried = 0;
                    }
                    _ if tried < target.addrs.len() => {}
                    _ => {
                        return Ok(answer(
                            StatusCode::BAD_GATEWAY,
                            format!("berth proxy: container {addr} unreachable: {e}\n"),
                        ));
                    }
                }
            }
        }
    };
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
    {
        Ok(x) => x,
        Err(e) => {
            return Ok(answer(
                StatusCode::BAD_GATEWAY,
                format!("berth proxy: container {addr}: {e}\n"),
            ));
        }
    };
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    let mut resp = match sender.send_request(req).await {
        Ok(r) => r,
        Err(e) => {
            return Ok(answer(
                StatusCode::BAD_GATEWAY,
                format!("berth proxy: container {addr}: {e}\n"),
            ));
        }
    };
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(client) = upgrade
    {
        let upstream = hyper::upgrade::on(&mut resp);
        tokio::spawn(join(client, upstream, guard));
        return Ok(resp.map(|_| Empty::new().map_err(|never| match never {}).boxed()));
    }
    // The guard lives as long as the response body: draining waits for it.
    Ok(resp.map(move |b| {
        b.map_frame(move |f| {
            let _ = &guard;
            f
        })
        .boxed()
    }))
}

/// Joins an upgraded client connection to its container's, byte for byte, until one
/// side closes or the target is closed; `guard` keeps it counted as in flight.
async fn join(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    guard: Guard,
) {
    let target = guard.0.clone();
    target.upgraded.fetch_add(1, Ordering::SeqCst);
    let mut closed = target.closed.subscribe();
    match tokio::try_join!(client, upstream) {
        Ok((c, u)) => {
            let (mut c, mut u) = (TokioIo::new(c), TokioIo::new(u));
            tokio::select! {
                r = tokio::io::copy_bidirectional(&mut c, &mut u) => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "upgraded connection ended");
                    }
                }
                _ = closed.wait_for(|c| *c) => {
                    tracing::debug!("upgraded connection closed by the drain");
                }
            }
        }
        Err(e) => tracing::debug!(error = %e, "upgrade failed"),
    }
    target.upgraded.fetch_sub(1, Ordering::SeqCst);
    drop(guard);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An upstream that answers `name`, the X-Forwarded-* it got, after `delay` for
    /// `/slow`; `/seen` answers the version and `Host` it got; `/ws` with a WebSocket
    /// handshake switches protocols and then echoes what it reads as `name:…`.
    async fn upstream(name: &'static str) -> SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (s, _) = l.accept().await.unwrap();
                tokio::spawn(async move {
                    let svc =
                        hyper::service::service_fn(move |mut req: Request<Incoming>| async move {
                            let h = |req: &Request<Incoming>, k: &str| {
                                req.headers()
                                    .get(k)
                                    .and_then(|v| v.to_str().ok())
                                    .unwrap_or("-")
                                    .to_owned()
                            };
                            if req.uri().path() == "/ws" && h(&req, "upgrade") == "websocket" {
                                let on = hyper::upgrade::on(&mut req);
                                tokio::spawn(async move {
                                    let mut io = TokioIo::new(on.await.unwrap());
                                    let mut buf = [0u8; 64];
                                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                                    loop {
                                        let n = io.read(&mut buf).await.unwrap_or(0);
                                        if n == 0 {
                                            break;
                                        }
                                        let mut out = format!("{name}:").into_bytes();
                                        out.extend_from_slice(&buf[..n]);
                                        if io.write_all(&out).await.is_err() {
                                            break;
                                        }
                                    }
                                });
                                let r = Response::builder()
                                    .status(101)
                                    .header("upgrade", "websocket")
                                    .header("connection", "Upgrade")
                                    .body(Full::new(Bytes::new()))
                                    .unwrap();
                                return Ok::<_, Infallible>(r);
                            }
                            if req.uri().path() == "/slow" {
                                tokio::time::sleep(Duration::from_millis(300)).await;
                            }
                            let text = if req.uri().path() == "/seen" {
                                format!(
                                    "{name} {:?} {} {}",
                                    req.version(),
                                    h(&req, "host"),
                                    req.uri()
                                )
                            } else {
                                format!(
                                    "{name} {} {} {}",
                                    h(&req, "x-forwarded-for"),
                                    h(&req, "x-forwarded-proto"),
                                    h(&req, "x-forwarded-host")
                                )
                            };
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(text))))
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc)
                        .with_upgrades()
                        .await;
                });
            }
        });
        addr
    }

    /// A WebSocket handshake through the proxy on `port`, then the raw connection.
    async fn websocket(port: u16) -> tokio::net::TcpStream {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        s.write_all(
            b"GET /ws HTTP/1.1\r\nHost: app.example\r\nUpgrade: websocket\r\n\
              Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
              Sec-WebSocket-Version: 13\r\n\r\n",
        )
        .await
        .unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut b = [0u8; 1];
            assert_eq!(s.read(&mut b).await.unwrap(), 1, "{head:?}");
            head.push(b[0]);
        }
        let head = String::from_utf8(head).unwrap();
        assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
        assert!(
            head.to_ascii_lowercase().contains("upgrade: websocket"),
            "{head}"
        );
        s
    }

    /// Sends `msg` on an upgraded connection and reads the echo.
    async fn echo(s: &mut tokio::net::TcpStream, msg: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        s.write_all(msg.as_bytes()).await.unwrap();
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).await.unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    async fn get(port: u16, path: &str) -> (u16, String) {
        let s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = Request::builder()
            .uri(path)
            .header("host", format!("app.example:{port}"))
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn forwards_switches_and_drains() {
        let (a, b) = (upstream("A").await, upstream("B").await);
        let proxies = Proxies::on(IpAddr::from([127, 0, 0, 1]));
        let port = free_port();
        assert!(
            proxies
                .switch(port, Target::new(a))
                .await
                .unwrap()
                .is_none()
        );
        let (status, body) = get(port, "/").await;
        assert_eq!(status, 200);
        assert_eq!(body, format!("A 127.0.0.1 http app.example:{port}"));

        // A slow request to A is in flight when B takes over.
        let slow = tokio::spawn(get(port, "/slow"));
        let old = loop {
            let cur = proxies.current(port).unwrap();
            if cur.inflight() == 1 {
                break proxies.switch(port, Target::new(b)).await.unwrap().unwrap();
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        assert_eq!(old.addrs, [a]);
        assert!(get(port, "/").await.1.starts_with("B "));
        assert_eq!(old.inflight(), 1, "the slow request still runs on A");
        assert!(old.drained(Duration::from_secs(10)).await);
        assert!(slow.await.unwrap().1.starts_with("A "), "it finished on A");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_wait_for_the_first_target() {
        let b = upstream("B").await;
        let proxies = Proxies::on(IpAddr::from([127, 0, 0, 1]));
        let port = free_port();
        // The listener exists with a target that is gone; then none is set (as before a
        // first healthy container): a request waits until one is.
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        proxies.switch(port, Target::new(dead)).await.unwrap();
        let (status, body) = get(port, "/").await;
        assert_eq!(status, 502, "{body}");
        assert!(body.contains("unreachable"), "{body}");
        let tx = proxies.routes.lock().unwrap()[&port].clone();
        tx.send_replace(None);
        let waiting = tokio::spawn(get(port, "/"));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!waiting.is_finished());
        proxies.switch(port, Target::new(b)).await.unwrap();
        assert!(waiting.await.unwrap().1.starts_with("B "));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_websocket_survives_a_switch_until_drained() {
        use tokio::io::AsyncReadExt;
        let (a, b) = (upstream("A").await, upstream("B").await);
        let proxies = Proxies::on(IpAddr::from([127, 0, 0, 1]));
        let port = free_port();
        proxies.switch(port, Target::new(a)).await.unwrap();
        let mut ws = websocket(port).await;
        assert_eq!(echo(&mut ws, "one").await, "A:one");
        let old = proxies.switch(port, Target::new(b)).await.unwrap().unwrap();
        assert!(get(port, "/").await.1.starts_with("B "));
        // The socket still goes to A, and the drain waits for it.
        assert_eq!(echo(&mut ws, "two").await, "A:two");
        assert_eq!((old.inflight(), old.upgraded()), (1, 1));
        assert!(!old.drained(Duration::from_millis(300)).await);
        assert_eq!(echo(&mut ws, "three").await, "A:three");
        drop(ws);
        assert!(old.drained(Duration::from_secs(10)).await);
        assert_eq!(old.upgraded(), 0);

        // A socket still open when the drain's time is up is closed by `close`.
        let mut ws = websocket(port).await;
        assert_eq!(echo(&mut ws, "x").await, "B:x");
        let old = proxies.switch(port, Target::new(a)).await.unwrap().unwrap();
        assert!(!old.drained(Duration::from_millis(100)).await);
        old.close();
        let mut buf = [0u8; 8];
        let n = tokio::time::timeout(Duration::from_secs(10), ws.read(&mut buf))
            .await
            .expect("the proxy closed the socket")
            .unwrap_or(0);
        assert_eq!(n, 0);
        assert!(old.drained(Duration::from_secs(10)).await);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_h2c_client_gets_answers() {
        let a = upstream("A").await;
        let proxies = Proxies::on(IpAddr::from([127, 0, 0, 1]));
        let port = free_port();
        proxies.switch(port, Target::new(a)).await.unwrap();
        let s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s))
                .await
                .unwrap();
        tokio::spawn(conn);
        for (path, want) in [
            ("/", format!("A 127.0.0.1 http app.example:{port}")),
            // The container got HTTP/1.1 in origin form, the authority as Host.
            (
                "/seen?q=1",
                format!("A HTTP/1.1 app.example:{port} /seen?q=1"),
            ),
        ] {
            let req = Request::builder()
                .uri(format!("http://app.example:{port}{path}"))
                .body(http_body_util::Empty::<Bytes>::new())
                .unwrap();
            let resp = send.send_request(req).await.unwrap();
            assert_eq!(resp.version(), Version::HTTP_2);
            assert_eq!(resp.status(), 200);
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(String::from_utf8_lossy(&body), want);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replicas_take_requests_in_turn() {
        let (a, b) = (upstream("A").await, upstream("B").await);
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let proxies = Proxies::on(IpAddr::from([127, 0, 0, 1]));
        let port = free_port();
        proxies
            .switch(port, Target::pool(vec![a, b]))
            .await
            .unwrap();
        let mut seen = Vec::new();
        for _ in 0..4 {
            seen.push(get(port, "/").await.1[..1].to_owned());
        }
        seen.sort();
        assert_eq!(seen, ["A", "A", "B", "B"]);
        // A replica that refuses connections passes its requests on.
        proxies
            .switch(port, Target::pool(vec![dead, a]))
            .await
            .unwrap();
        for _ in 0..4 {
            let (status, body) = get(port, "/").await;
            assert_eq!(status, 200, "{body}");
            assert!(body.starts_with("A "), "{body}");
        }
    }
}
