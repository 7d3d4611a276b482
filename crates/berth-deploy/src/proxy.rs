//! The reverse proxy berth runs on each host: one listener per published port, forwarding
//! HTTP/1.1 to the current container of its service. A deploy switches the target in one
//! step ([`Proxies::switch`]); requests in flight to the old container finish there, and
//! [`Target::drained`] tells when the last one has. Requests that arrive while a port
//! has no target yet (before the first healthy container) wait for one, up to
//! [`WAIT_FOR_TARGET`], instead of failing.
//!
//! Every request gets its own upstream connection: after a switch nothing can reuse a
//! kept-alive connection to a container that is going away. Requests carry
//! `X-Forwarded-For`, `X-Forwarded-Proto` and `X-Forwarded-Host`.
//!
//! Not yet: HTTP/2, WebSocket upgrades, TLS termination, handing the target to an
//! existing proxy.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
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

/// A container a port forwards to, with the requests in flight to it.
#[derive(Debug)]
pub struct Target {
    /// `ip:port` of the container.
    pub addr: SocketAddr,
    inflight: AtomicUsize,
}

impl Target {
    /// A target at `addr`.
    pub fn new(addr: SocketAddr) -> Arc<Target> {
        Arc::new(Target {
            addr,
            inflight: AtomicUsize::new(0),
        })
    }

    /// Requests being served by it now.
    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::SeqCst)
    }

    /// Waits until no request is in flight to it (after a switch away from it), at most
    /// `limit`; false when some were still running then.
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
}

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
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
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
    let headers = req.headers_mut();
    let xff = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prev) => format!("{prev}, {}", peer.ip()),
        None => peer.ip().to_string(),
    };
    if let Ok(v) = xff.parse() {
        headers.insert("x-forwarded-for", v);
    }
    if !headers.contains_key("x-forwarded-proto") {
        headers.insert(
            "x-forwarded-proto",
            hyper::header::HeaderValue::from_static("http"),
        );
    }
    if let Some(host) = headers.get(hyper::header::HOST).cloned()
        && !headers.contains_key("x-forwarded-host")
    {
        headers.insert("x-forwarded-host", host);
    }
    // Count the request against its target before anything else, then look again: a
    // switch that happened meanwhile is seen here, so a drain never misses a request.
    let (stream, guard) = loop {
        target.inflight.fetch_add(1, Ordering::SeqCst);
        let guard = Guard(target.clone());
        let now = rx.borrow().clone();
        if let Some(t) = now
            && !Arc::ptr_eq(&t, &target)
        {
            target = t;
            continue;
        }
        let connected =
            tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(target.addr))
                .await
                .unwrap_or_else(|_| {
                    Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no answer in {CONNECT_TIMEOUT:?}"),
                    ))
                });
        match connected {
            Ok(s) => break (s, guard),
            Err(e) => {
                // Switched away and gone: the new container takes the request (nothing
                // of it was sent yet).
                let now = rx.borrow().clone();
                match now {
                    Some(t) if !Arc::ptr_eq(&t, &target) => target = t,
                    _ => {
                        return Ok(answer(
                            StatusCode::BAD_GATEWAY,
                            format!("berth proxy: container {} unreachable: {e}\n", target.addr),
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
                format!("berth proxy: container {}: {e}\n", target.addr),
            ));
        }
    };
    tokio::spawn(async move {
        let _ = conn.await;
    });
    match sender.send_request(req).await {
        // The guard lives as long as the response body: draining waits for it.
        Ok(resp) => Ok(resp.map(move |b| {
            b.map_frame(move |f| {
                let _ = &guard;
                f
            })
            .boxed()
        })),
        Err(e) => Ok(answer(
            StatusCode::BAD_GATEWAY,
            format!("berth proxy: container {}: {e}\n", target.addr),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An upstream that answers `name`, the X-Forwarded-* it got, after `delay` for
    /// `/slow`.
    async fn upstream(name: &'static str) -> SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (s, _) = l.accept().await.unwrap();
                tokio::spawn(async move {
                    let svc =
                        hyper::service::service_fn(move |req: Request<Incoming>| async move {
                            if req.uri().path() == "/slow" {
                                tokio::time::sleep(Duration::from_millis(300)).await;
                            }
                            let h = |k: &str| {
                                req.headers()
                                    .get(k)
                                    .and_then(|v| v.to_str().ok())
                                    .unwrap_or("-")
                                    .to_owned()
                            };
                            let text = format!(
                                "{name} {} {} {}",
                                h("x-forwarded-for"),
                                h("x-forwarded-proto"),
                                h("x-forwarded-host")
                            );
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(text))))
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        addr
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
        assert_eq!(old.addr, a);
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
}
