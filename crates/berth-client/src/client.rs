//! The HTTP side: per-registry TLS settings, the auth dance, manifests and blobs.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use berth_oci::{Digest, media_type};
use futures_util::StreamExt;
use reqwest::{Method, Response, StatusCode, header};

use crate::auth::{Credentials, DockerConfig};
use berth_oci::Reference;

/// Result with the client's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A registry client failure, saying what to do where it can.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The registry could not be reached or the connection broke.
    #[error("{url}: {message}")]
    Transport {
        /// The URL.
        url: String,
        /// What happened and what to check.
        message: String,
    },
    /// Credentials are missing or refused.
    #[error(
        "{registry}: authentication failed ({status}); log in to {registry} or check the credentials in ~/.docker/config.json"
    )]
    Unauthorized {
        /// The registry.
        registry: String,
        /// HTTP status.
        status: u16,
    },
    /// The image or blob does not exist.
    #[error("{0}: not found in the registry")]
    NotFound(String),
    /// Any other unexpected answer.
    #[error("{method} {url}: {status} {body}")]
    Http {
        /// Method.
        method: String,
        /// URL.
        url: String,
        /// Status.
        status: u16,
        /// The start of the body (registries explain themselves there).
        body: String,
    },
    /// Content does not match its digest.
    #[error(
        "{what}: expected {expected}, got {got}; the registry served corrupt or substituted content"
    )]
    DigestMismatch {
        /// What was checked.
        what: String,
        /// Expected digest.
        expected: Digest,
        /// Actual digest.
        got: Digest,
    },
    /// The address answers HTTP, but not as a registry.
    #[error(
        "{registry} does not speak the registry API ({answer}); check the registry's address and port"
    )]
    NotRegistry {
        /// The registry as named.
        registry: String,
        /// What it answered.
        answer: String,
    },
    /// Something local failed (a CA file, the sink).
    #[error("{0}")]
    Local(String),
}

impl Error {
    /// The HTTP status the registry answered with, when it answered (404 for
    /// [`Error::NotFound`]).
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Unauthorized { status, .. } | Error::Http { status, .. } => Some(*status),
            Error::NotFound(_) => Some(404),
            _ => None,
        }
    }
}

/// What a HEAD of a manifest or blob told.
#[derive(Debug, Clone, Default)]
pub struct Head {
    /// `Docker-Content-Digest`, when sent.
    pub digest: Option<Digest>,
    /// `Content-Type`, parameters cut.
    pub media_type: Option<String>,
    /// `Content-Length`.
    pub size: Option<u64>,
    /// Requests left in the registry's rate-limit window (Docker Hub's
    /// `ratelimit-remaining: 76;w=21600`), when it says.
    pub rate_limit_remaining: Option<u64>,
}

impl Head {
    fn of(resp: &Response) -> Head {
        let h = resp.headers();
        let text = |name: &str| h.get(name).and_then(|v| v.to_str().ok());
        Head {
            digest: text("docker-content-digest").and_then(|v| v.parse().ok()),
            media_type: text("content-type")
                .map(|s| s.split(';').next().unwrap_or("").trim().to_string()),
            size: text("content-length").and_then(|v| v.trim().parse().ok()),
            rate_limit_remaining: rate_limit_remaining(h),
        }
    }
}

/// Docker Hub's `ratelimit-remaining: 76;w=21600` (the count before the window).
fn rate_limit_remaining(h: &header::HeaderMap) -> Option<u64> {
    let v = h.get("ratelimit-remaining")?.to_str().ok()?;
    v.split(';').next()?.trim().parse().ok()
}

/// A blob's body as the registry streams it, not verified: the caller hashes it.
pub struct BlobBody {
    /// `Content-Length`, when sent.
    pub size: Option<u64>,
    /// The bytes.
    pub stream: futures_util::stream::BoxStream<'static, Result<bytes::Bytes>>,
}

/// How to reach one registry.
#[derive(Debug, Clone, Default)]
pub struct HostOptions {
    /// Extra CA certificate (PEM) to trust for it.
    pub ca: Option<PathBuf>,
    /// Skip TLS verification (only when configured).
    pub insecure: bool,
    /// Plain HTTP.
    pub http: bool,
    /// A complete TLS configuration for this registry (a satellite's CA and this
    /// client's certificate); `ca` and `insecure` do not apply then.
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    /// Registries (`host[:port]`) holding copies of this one's images: a pull tries each
    /// in order, then this registry ([`crate::pull_image`]). A mirror's own TLS settings
    /// are its own entry's.
    pub mirrors: Vec<String>,
}

/// Checks a mirror as configuration gives it: a registry `host[:port]`, no scheme and no
/// path (the image's repository path is kept on the mirror). Returns it as given.
pub fn check_mirror(mirror: &str) -> std::result::Result<String, String> {
    if let Some((scheme, _)) = mirror.split_once("://") {
        return Err(format!(
            "mirror {mirror:?}: give host[:port] without {scheme}://; set `http = true` in the \
             mirror's own [registries.\"host:port\"] entry for plain HTTP"
        ));
    }
    let r: Reference = format!("{mirror}/x")
        .parse()
        .map_err(|e| format!("mirror {mirror:?} is not a registry host[:port]: {e}"))?;
    if r.registry != mirror {
        let why = if mirror.contains('/') {
            "paths on mirrors are not supported: the image's own path is used"
        } else {
            "a registry host name has a dot or a port, or is localhost"
        };
        return Err(format!(
            "mirror {mirror:?} is not a registry host[:port] ({why})"
        ));
    }
    Ok(mirror.to_owned())
}

/// Client settings.
#[derive(Debug, Clone, Default)]
pub struct ClientConfig {
    /// Per-registry settings, keyed by `host[:port]`.
    pub hosts: HashMap<String, HostOptions>,
    /// Docker's config, for credentials.
    pub docker_config: DockerConfig,
    /// Credentials berth was given directly, by registry (win over Docker's).
    pub credentials: HashMap<String, Credentials>,
    /// Proxies, NO_PROXY and extra CA bundles (berth-net): the environment's are not read
    /// here, only what this carries.
    pub network: berth_net::Network,
}

/// A manifest as fetched.
#[derive(Debug, Clone)]
pub struct Pulled {
    /// The bytes as served.
    pub bytes: Vec<u8>,
    /// Its media type.
    pub media_type: String,
    /// Its digest (verified).
    pub digest: Digest,
    /// Requests left in the registry's rate-limit window, when it says (Docker Hub).
    pub rate_limit_remaining: Option<u64>,
}

/// A registry client. Cheap to share; keeps one HTTP client per registry and the
/// tokens it was given.
pub struct Client {
    config: ClientConfig,
    http: Mutex<HashMap<String, reqwest::Client>>,
    tokens: Mutex<HashMap<String, String>>,
    scheme: Mutex<HashMap<String, &'static str>>,
    /// Where the scheme a registry spoke is remembered between processes (see
    /// [`Client::with_scheme_memory`]).
    scheme_dir: Option<PathBuf>,
    /// Registries whose scheme was read from `scheme_dir` and has not answered yet.
    scheme_unconfirmed: Mutex<std::collections::HashSet<String>>,
    /// Registries whose `/v2/` answered like a registry.
    pinged: Mutex<std::collections::HashSet<String>>,
}

const ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json";

impl Client {
    /// A client with `config`.
    pub fn new(config: ClientConfig) -> Client {
        Client {
            config,
            http: Mutex::new(HashMap::new()),
            tokens: Mutex::new(HashMap::new()),
            scheme: Mutex::new(HashMap::new()),
            scheme_dir: None,
            scheme_unconfirmed: Mutex::new(Default::default()),
            pinged: Mutex::new(Default::default()),
        }
    }

    /// Remember in `dir` (a file per registry) which scheme each registry that may speak
    /// either answered on, so the next process asks it first: a registry on this machine
    /// with no settings is otherwise tried over HTTPS, then HTTP, on every run. A
    /// remembered scheme that stops working is forgotten and both are tried again.
    pub fn with_scheme_memory(mut self, dir: impl Into<PathBuf>) -> Client {
        self.scheme_dir = Some(dir.into());
        self
    }

    /// The file remembering `registry`'s scheme (registry names hold no `/`).
    fn scheme_file(&self, registry: &str) -> Option<PathBuf> {
        let dir = self.scheme_dir.as_ref()?;
        (!registry.is_empty() && !registry.contains('/') && !registry.starts_with('.'))
            .then(|| dir.join(registry))
    }

    /// Keep `scheme` for `registry` in memory, and on disk when it is remembered there.
    fn learned_scheme(&self, r: &Reference, scheme: &'static str) {
        let known = self
            .scheme
            .lock()
            .expect("scheme")
            .insert(r.registry.clone(), scheme);
        if known != Some(scheme)
            && self.default_schemes(r).len() > 1
            && let Some(path) = self.scheme_file(&r.registry)
        {
            // A hint: losing it costs one HTTPS attempt.
            let write = || -> std::io::Result<()> {
                let dir = path.parent().expect("a file of the scheme folder");
                std::fs::create_dir_all(dir)?;
                let tmp = dir.join(format!(".tmp-{}", std::process::id()));
                std::fs::write(&tmp, scheme)?;
                std::fs::rename(&tmp, &path)
            };
            if let Err(e) = write() {
                tracing::debug!(registry = %r.registry, error = %e, "scheme not remembered");
            }
        }
    }

    /// Forget a scheme read from disk that did not work; whether there was one.
    fn forget_unconfirmed(&self, r: &Reference) -> bool {
        if !self
            .scheme_unconfirmed
            .lock()
            .expect("scheme")
            .remove(&r.registry)
        {
            return false;
        }
        self.scheme.lock().expect("scheme").remove(&r.registry);
        if let Some(path) = self.scheme_file(&r.registry) {
            let _ = std::fs::remove_file(path);
        }
        true
    }

    /// The network settings (proxies, NO_PROXY, extra CAs) it was given.
    pub fn network(&self) -> &berth_net::Network {
        &self.config.network
    }

    pub(crate) fn host(&self, registry: &str) -> HostOptions {
        self.config.hosts.get(registry).cloned().unwrap_or_default()
    }

    /// The mirrors configured for `registry`, in the order to try them.
    pub fn mirrors(&self, registry: &str) -> &[String] {
        self.config
            .hosts
            .get(registry)
            .map_or(&[], |h| h.mirrors.as_slice())
    }

    /// Schemes to try, in order. A registry on this machine with no settings is tried
    /// over HTTPS, then plain HTTP (as Docker treats 127.0.0.0/8), unless an earlier
    /// request already found out which one it speaks.
    pub(crate) fn schemes(&self, r: &Reference) -> Vec<&'static str> {
        if let Some(s) = self.scheme.lock().expect("scheme").get(&r.registry) {
            return vec![s];
        }
        let schemes = self.default_schemes(r);
        if schemes.len() > 1
            && let Some(path) = self.scheme_file(&r.registry)
            && let Ok(text) = std::fs::read_to_string(path)
            && let Some(s) = schemes.iter().find(|s| **s == text.trim())
        {
            self.scheme
                .lock()
                .expect("scheme")
                .insert(r.registry.clone(), s);
            self.scheme_unconfirmed
                .lock()
                .expect("scheme")
                .insert(r.registry.clone());
            return vec![s];
        }
        schemes
    }

    /// Schemes to try when nothing was learned about the registry yet.
    fn default_schemes(&self, r: &Reference) -> Vec<&'static str> {
        let opts = self.host(&r.registry);
        if opts.http {
            vec!["http"]
        } else if r.is_loopback() && opts.ca.is_none() && !opts.insecure {
            vec!["https", "http"]
        } else {
            vec!["https"]
        }
    }

    pub(crate) fn http_client(&self, registry: &str) -> Result<reqwest::Client> {
        let mut cache = self.http.lock().expect("clients");
        if let Some(c) = cache.get(registry) {
            return Ok(c.clone());
        }
        let opts = self.host(registry);
        let builder = || {
            let mut b = reqwest::Client::builder()
                .user_agent(concat!("berth/", env!("CARGO_PKG_VERSION")))
                // Proxies come from the one network configuration, NO_PROXY rules
                // included (CIDRs and ports, which reqwest's own reading of the
                // environment lacks).
                .no_proxy();
            let proxies = self.config.network.proxies.clone();
            if proxies.http.is_some() || proxies.https.is_some() {
                b = b.proxy(reqwest::Proxy::custom(move |url| {
                    let host = url.host_str()?;
                    let port = url.port_or_known_default()?;
                    proxies
                        .proxy_for(url.scheme(), host, port)
                        .map(str::to_owned)
                }));
            }
            if opts.insecure {
                b = b.danger_accept_invalid_certs(true);
            }
            if let Some(tls) = &opts.tls {
                b = b.use_preconfigured_tls((**tls).clone());
            }
            b
        };
        let mut roots = Vec::new();
        for pem in self.config.network.extra_roots().map_err(Error::Local)? {
            roots.extend(
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                    Error::Local(format!("a CA bundle of [network] is not PEM: {e}"))
                })?,
            );
        }
        if let Some(ca) = &opts.ca {
            let pem = std::fs::read(ca).map_err(|e| {
                Error::Local(format!("read CA {} for {registry}: {e}", ca.display()))
            })?;
            roots.extend(reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                Error::Local(format!(
                    "CA {} for {registry} is not PEM: {e}",
                    ca.display()
                ))
            })?);
        }
        // The system's trust store and the configured CAs; a system without one (a
        // container image holding only berth) still reaches plain-HTTP registries and
        // those whose CA is configured.
        let c = match builder().tls_certs_merge(roots.clone()).build() {
            Ok(c) => c,
            // The platform verifier fails only for a missing system store, and only when
            // no CA is configured (with some, it merges them): anything else is a real
            // error.
            Err(first) if roots.is_empty() => {
                NO_SYSTEM_TRUST_STORE.store(true, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(
                    "no system trust store ({}): for {registry} only the CAs of berth's \
                     configuration are trusted",
                    error_chain(&first)
                );
                builder().tls_certs_only(roots).build().map_err(|e| {
                    Error::Local(format!("HTTP client for {registry}: {}", error_chain(&e)))
                })?
            }
            Err(e) => {
                return Err(Error::Local(format!(
                    "HTTP client for {registry}: {}",
                    error_chain(&e)
                )));
            }
        };
        cache.insert(registry.to_string(), c.clone());
        Ok(c)
    }

    pub(crate) fn credentials(&self, registry: &str) -> Option<Credentials> {
        self.config
            .credentials
            .get(registry)
            .cloned()
            .or_else(|| self.config.docker_config.credentials(registry))
    }

    /// Send a request, answering auth challenges (Bearer tokens, Basic) once.
    async fn send(&self, r: &Reference, req: &Req<'_>) -> Result<Response> {
        if req.path != "/v2/" && !self.pinged.lock().expect("pinged").contains(&r.registry) {
            self.ping(r).await?;
        }
        let schemes = self.schemes(r);
        let mut last = None;
        for (i, scheme) in schemes.iter().enumerate() {
            match self.send_with(r, scheme, req).await {
                Err(Error::Transport { url, message })
                    if i + 1 < schemes.len() && !message.contains("certificate") =>
                {
                    tracing::debug!(url, message, "HTTPS failed; trying plain HTTP");
                    last = Some(Error::Transport { url, message });
                }
                other => {
                    if other.is_ok() {
                        self.learned_scheme(r, scheme);
                    }
                    return other;
                }
            }
        }
        Err(last.expect("at least one scheme"))
    }

    /// Check once per registry that it speaks the distribution API (`GET /v2/` answers
    /// 200, or 401 to ask for credentials), as Docker does before its first request, so
    /// a wrong address or port is told as such instead of as a puzzling 404 or 405 later.
    async fn ping(&self, r: &Reference) -> Result<()> {
        match self.ping_once(r).await {
            // The scheme remembered from an earlier run no longer answers (the registry
            // moved to TLS, or off it): forget it and try every scheme again.
            Err(e) if self.forget_unconfirmed(r) => {
                tracing::debug!(registry = %r.registry, error = %e, "remembered scheme failed; trying both");
                self.ping_once(r).await
            }
            other => other,
        }
    }

    async fn ping_once(&self, r: &Reference) -> Result<()> {
        let resp = match Box::pin(self.send(r, &Req::get("/v2/", None))).await {
            Err(Error::Unauthorized { .. }) => None,
            other => Some(other?),
        };
        if let Some(resp) = resp {
            let status = resp.status();
            if !speaks_registry_api(&resp) {
                let url = resp.url().to_string();
                let body: String = resp
                    .text()
                    .await
                    .unwrap_or_default()
                    .chars()
                    .take(120)
                    .collect();
                return Err(Error::NotRegistry {
                    registry: r.registry.clone(),
                    answer: format!("GET {url} answered {status} {}", body.trim()),
                });
            }
        }
        self.pinged
            .lock()
            .expect("pinged")
            .insert(r.registry.clone());
        self.scheme_unconfirmed
            .lock()
            .expect("scheme")
            .remove(&r.registry);
        Ok(())
    }

    async fn send_with(&self, r: &Reference, scheme: &str, req: &Req<'_>) -> Result<Response> {
        // Upload locations may come back absolute.
        let url = if req.path.starts_with("http://") || req.path.starts_with("https://") {
            req.path.to_string()
        } else {
            format!("{scheme}://{}{}", r.api_host(), req.path)
        };
        let http = self.http_client(&r.registry)?;
        let mut scopes = vec![format!(
            "repository:{}:{}",
            r.repository,
            if req.push { "pull,push" } else { "pull" }
        )];
        if let Some(from) = req.mount_from {
            scopes.push(format!("repository:{from}:pull"));
        }
        let token_key = format!("{}|{}", r.registry, scopes.join(" "));
        let build = |auth: Option<String>| -> Result<reqwest::RequestBuilder> {
            let mut b = http.request(req.method.clone(), &url);
            if let Some(a) = req.accept {
                b = b.header(header::ACCEPT, a);
            }
            if let Some(t) = req.content_type {
                b = b.header(header::CONTENT_TYPE, t);
            }
            if let Some(a) = auth {
                b = b.header(header::AUTHORIZATION, a);
            }
            Ok(match &req.body {
                Body::Empty => b,
                Body::Bytes(bytes) => b.body(bytes.clone()),
                Body::File(path, len, sent) => {
                    let f = std::fs::File::open(path)
                        .map_err(|e| Error::Local(format!("open {}: {e}", path.display())))?;
                    if let Some(s) = sent {
                        s.store(0, std::sync::atomic::Ordering::Relaxed);
                    }
                    let stream = tokio_util_stream(tokio::fs::File::from_std(f), sent.clone());
                    b.header(header::CONTENT_LENGTH, *len)
                        .body(reqwest::Body::wrap_stream(stream))
                }
            })
        };
        let cached = self.tokens.lock().expect("tokens").get(&token_key).cloned();
        let retry = req.retryable();
        let resp = send_once_more(|| build(cached.clone()), retry, &url).await?;
        if resp.status() != StatusCode::UNAUTHORIZED {
            return Ok(resp);
        }
        let challenge = resp
            .headers()
            .get(header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let creds = self.credentials(&r.registry);
        let auth = if let Some(params) = challenge
            .strip_prefix("Bearer ")
            .or_else(|| challenge.strip_prefix("bearer "))
        {
            let token = self
                .fetch_token(&http, &r.registry, params, &scopes, creds.as_ref())
                .await?;
            format!("Bearer {token}")
        } else {
            let c = creds.ok_or(Error::Unauthorized {
                registry: r.registry.clone(),
                status: 401,
            })?;
            basic(&c)
        };
        self.tokens
            .lock()
            .expect("tokens")
            .insert(token_key, auth.clone());
        let resp = send_once_more(|| build(Some(auth.clone())), retry, &url).await?;
        if matches!(
            resp.status(),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
        ) {
            return Err(Error::Unauthorized {
                registry: r.registry.clone(),
                status: resp.status().as_u16(),
            });
        }
        Ok(resp)
    }

    async fn fetch_token(
        &self,
        http: &reqwest::Client,
        registry: &str,
        params: &str,
        scopes: &[String],
        creds: Option<&Credentials>,
    ) -> Result<String> {
        let p = parse_challenge(params);
        let realm = p
            .get("realm")
            .ok_or_else(|| Error::Local(format!("{registry}: Bearer challenge without realm")))?;
        let mut req = http.get(realm);
        // The challenge names the scope of the refused request; a mount also needs
        // pull rights on its source repository.
        if let Some(s) = p.get("scope").filter(|s| !scopes.contains(s)) {
            req = req.query(&[("scope", s.as_str())]);
        }
        for s in scopes {
            req = req.query(&[("scope", s.as_str())]);
        }
        if let Some(service) = p.get("service") {
            req = req.query(&[("service", service.as_str())]);
        }
        if let Some(c) = creds {
            req = req.header(header::AUTHORIZATION, basic(c));
        }
        let resp = req.send().await.map_err(|e| transport(realm, e))?;
        if !resp.status().is_success() {
            return Err(Error::Unauthorized {
                registry: registry.to_string(),
                status: resp.status().as_u16(),
            });
        }
        #[derive(serde::Deserialize)]
        struct Token {
            #[serde(default)]
            token: Option<String>,
            #[serde(default)]
            access_token: Option<String>,
        }
        let t: Token = resp.json().await.map_err(|e| transport(realm, e))?;
        t.token.or(t.access_token).ok_or_else(|| {
            Error::Local(format!(
                "{registry}: token server {realm} returned no token"
            ))
        })
    }

    /// The headers of a `HEAD` of `r`'s manifest (Docker Hub reports its rate limit
    /// there; a HEAD does not count against it).
    pub(crate) async fn manifest_headers(&self, r: &Reference) -> Result<header::HeaderMap> {
        let path = format!("/v2/{}/manifests/{}", r.repository, r.manifest_ref());
        let mut req = Req::get(&path, Some(ACCEPT));
        req.method = Method::HEAD;
        let resp = self.send(r, &req).await?;
        Ok(check(resp, "HEAD", &r.to_string()).await?.headers().clone())
    }

    /// Fetch a manifest (or index) by the reference's tag or digest; its digest is
    /// checked against the reference's digest, or the registry's `Docker-Content-Digest`.
    pub async fn manifest(&self, r: &Reference) -> Result<Pulled> {
        let path = format!("/v2/{}/manifests/{}", r.repository, r.manifest_ref());
        let resp = self.send(r, &Req::get(&path, Some(ACCEPT))).await?;
        let resp = check(resp, "GET", &r.to_string()).await?;
        let rate_limit_remaining = rate_limit_remaining(resp.headers());
        let header_digest = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<Digest>().ok());
        let ct = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.split(';').next().unwrap_or("").trim().to_string());
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| transport(&path, e))?
            .to_vec();
        let expected = r.digest.clone().or(header_digest);
        let digest = match &expected {
            Some(e) => Digest::of(e.algorithm(), &bytes),
            None => Digest::sha256(&bytes),
        };
        if let Some(e) = expected
            && e != digest
        {
            return Err(Error::DigestMismatch {
                what: format!("manifest of {r}"),
                expected: e,
                got: digest,
            });
        }
        let (_, media_type) = berth_oci::Manifest::parse(&bytes, ct.as_deref())
            .map_err(|e| Error::Local(format!("manifest of {r}: {e}")))?;
        Ok(Pulled {
            bytes,
            media_type,
            digest,
            rate_limit_remaining,
        })
    }

    /// HEAD a manifest by the reference's tag or digest: its digest and media type as
    /// the registry reports them, without fetching it (a cache revalidating a tag).
    pub async fn manifest_head(&self, r: &Reference) -> Result<Head> {
        let path = format!("/v2/{}/manifests/{}", r.repository, r.manifest_ref());
        let req = Req {
            method: Method::HEAD,
            ..Req::get(&path, Some(ACCEPT))
        };
        let resp = check(self.send(r, &req).await?, "HEAD", &r.to_string()).await?;
        Ok(Head::of(&resp))
    }

    /// HEAD blob `digest` of `r`'s repository (with pull rights only).
    pub async fn blob_head(&self, r: &Reference, digest: &Digest) -> Result<Head> {
        let path = format!("/v2/{}/blobs/{digest}", r.repository);
        let req = Req {
            method: Method::HEAD,
            ..Req::get(&path, None)
        };
        let what = format!("{}@{digest}", r.repository);
        let resp = check(self.send(r, &req).await?, "HEAD", &what).await?;
        Ok(Head::of(&resp))
    }

    /// Start fetching blob `digest` of `r`'s repository and hand over its body as it
    /// arrives, unverified: the caller hashes it (berth's store commits only under the
    /// expected digest). A body that breaks off ends the stream with an error.
    pub async fn blob_body(&self, r: &Reference, digest: &Digest) -> Result<BlobBody> {
        let path = format!("/v2/{}/blobs/{digest}", r.repository);
        let resp = self.send(r, &Req::get(&path, None)).await?;
        let resp = check(resp, "GET", &format!("{}@{digest}", r.repository)).await?;
        let size = resp.content_length();
        let stream = resp
            .bytes_stream()
            .map(move |c| c.map_err(|e| transport(&path, e)))
            .boxed();
        Ok(BlobBody { size, stream })
    }

    /// Stream blob `digest` of `r`'s repository into `sink`, verifying its digest; the
    /// sink sees every byte before the check, so it must not publish them until this
    /// returns `Ok` (berth's content store commits only under the expected digest).
    pub async fn blob(
        &self,
        r: &Reference,
        digest: &Digest,
        sink: &mut (dyn FnMut(&[u8]) -> std::result::Result<(), String> + Send),
    ) -> Result<u64> {
        let path = format!("/v2/{}/blobs/{digest}", r.repository);
        let resp = self.send(r, &Req::get(&path, None)).await?;
        let resp = check(resp, "GET", &format!("{}@{digest}", r.repository)).await?;
        let mut hasher = digest.algorithm().hasher();
        let mut n = 0u64;
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| transport(&path, e))?;
            hasher.update(&chunk);
            n += chunk.len() as u64;
            sink(&chunk).map_err(Error::Local)?;
        }
        let got = hasher.finish();
        if got != *digest {
            return Err(Error::DigestMismatch {
                what: format!("blob of {}", r.repository),
                expected: digest.clone(),
                got,
            });
        }
        Ok(n)
    }

    /// Check that `registry` accepts this client's credentials for it (`GET /v2/`,
    /// answering its challenge), as `docker login` does.
    pub async fn login(&self, registry: &str) -> Result<()> {
        let r = Reference {
            registry: registry.to_string(),
            repository: "berth/login".into(),
            tag: None,
            digest: None,
        };
        let resp = self.send(&r, &Req::get("/v2/", None)).await?;
        check(resp, "GET", &format!("{registry}/v2/"))
            .await
            .map(|_| ())
    }

    /// Whether `r`'s repository holds blob `d`.
    pub async fn has_blob(&self, r: &Reference, d: &Digest) -> Result<bool> {
        let path = format!("/v2/{}/blobs/{d}", r.repository);
        let req = Req {
            method: Method::HEAD,
            push: true,
            ..Req::get(&path, None)
        };
        let resp = self.send(r, &req).await?;
        match resp.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => check(resp, "HEAD", &path).await.map(|_| false),
        }
    }

    /// Get blob `d` (`size` bytes, in `file`) into `r`'s repository: nothing to do if it
    /// is there already; else mounted from one of `mount_from` (repositories of the same
    /// registry believed to hold it), which costs no upload; else uploaded, `sent`
    /// (if given) counting the bytes on their way. Transient upload failures (transport
    /// errors, 5xx) are retried three times.
    pub async fn push_blob(
        &self,
        r: &Reference,
        d: &Digest,
        file: &std::path::Path,
        size: u64,
        mount_from: &[String],
        sent: Option<&Arc<AtomicU64>>,
    ) -> Result<BlobPush> {
        if self.has_blob(r, d).await? {
            return Ok(BlobPush::Exists);
        }
        let mut location = None;
        for from in mount_from.iter().filter(|f| **f != r.repository).take(3) {
            match self.mount(r, d, from).await {
                Ok(Mount::Done) => return Ok(BlobPush::Mounted(from.clone())),
                Ok(Mount::Upload(loc)) => {
                    // The registry opened an ordinary upload instead: use it.
                    location = Some(loc);
                    break;
                }
                Err(e) => tracing::debug!(blob = %d, from, error = %e, "mount refused"),
            }
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.upload(r, d, file, size, location.take(), sent).await {
                Ok(()) => return Ok(BlobPush::Uploaded),
                Err(e) if attempt < 4 && is_transient(&e) => {
                    tracing::warn!(blob = %d, error = %e, attempt, "blob upload failed; retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(200 << attempt)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Ask the registry to mount blob `d` from repository `from` into `r`'s.
    async fn mount(&self, r: &Reference, d: &Digest, from: &str) -> Result<Mount> {
        let path = format!("/v2/{}/blobs/uploads/?mount={d}&from={from}", r.repository);
        let req = Req {
            method: Method::POST,
            push: true,
            mount_from: Some(from),
            ..Req::get(&path, None)
        };
        let resp = check(self.send(r, &req).await?, "POST", &path).await?;
        if resp.status() == StatusCode::CREATED {
            return Ok(Mount::Done);
        }
        upload_location(r, &resp).map(Mount::Upload)
    }

    async fn upload(
        &self,
        r: &Reference,
        d: &Digest,
        file: &std::path::Path,
        size: u64,
        location: Option<String>,
        sent: Option<&Arc<AtomicU64>>,
    ) -> Result<()> {
        let loc = match location {
            Some(loc) => loc,
            None => {
                let path = format!("/v2/{}/blobs/uploads/", r.repository);
                let req = Req {
                    method: Method::POST,
                    push: true,
                    ..Req::get(&path, None)
                };
                let resp = check(self.send(r, &req).await?, "POST", &path).await?;
                upload_location(r, &resp)?
            }
        };
        let sep = if loc.contains('?') { '&' } else { '?' };
        let put = format!("{loc}{sep}digest={d}");
        let req = Req {
            method: Method::PUT,
            push: true,
            content_type: Some("application/octet-stream"),
            body: Body::File(file.to_path_buf(), size, sent.cloned()),
            ..Req::get(&put, None)
        };
        check(self.send(r, &req).await?, "PUT", &put).await?;
        Ok(())
    }

    /// Put a manifest under `r`'s tag (or digest); returns its digest, checked against
    /// what the registry reports.
    pub async fn push_manifest(
        &self,
        r: &Reference,
        bytes: &[u8],
        media_type: &str,
    ) -> Result<Digest> {
        let digest = Digest::sha256(bytes);
        let path = format!(
            "/v2/{}/manifests/{}",
            r.repository,
            r.tag.clone().unwrap_or_else(|| digest.to_string())
        );
        let req = Req {
            method: Method::PUT,
            push: true,
            content_type: Some(media_type),
            body: Body::Bytes(bytes::Bytes::copy_from_slice(bytes)),
            ..Req::get(&path, None)
        };
        let resp = check(self.send(r, &req).await?, "PUT", &path).await?;
        if let Some(reported) = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            && reported != digest.to_string()
        {
            return Err(Error::DigestMismatch {
                what: format!("manifest pushed to {r}"),
                expected: digest,
                got: reported
                    .parse()
                    .map_err(|e| Error::Local(format!("{r}: {e}")))?,
            });
        }
        Ok(digest)
    }

    /// Pick the manifest for `os/arch` out of an index.
    pub fn pick_platform(index: &Pulled, os: &str, arch: &str) -> Option<Digest> {
        if !media_type::is_index(&index.media_type) {
            return None;
        }
        let (m, _) = berth_oci::Manifest::parse(&index.bytes, Some(&index.media_type)).ok()?;
        m.manifests
            .iter()
            .find(|d| {
                d.platform
                    .as_ref()
                    .is_some_and(|p| p["os"] == os && p["architecture"] == arch)
            })
            .map(|d| d.digest.clone())
    }
}

/// How [`Client::push_blob`] got a blob into the repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobPush {
    /// The repository had it.
    Exists,
    /// Mounted from this repository of the same registry.
    Mounted(String),
    /// Uploaded.
    Uploaded,
}

enum Mount {
    Done,
    Upload(String),
}

fn upload_location(r: &Reference, resp: &Response) -> Result<String> {
    resp.headers()
        .get(header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .ok_or_else(|| Error::Local(format!("{}: upload started without a Location", r.registry)))
}

/// A request body that can be produced again (a request may be re-sent after an auth
/// challenge).
enum Body {
    Empty,
    Bytes(bytes::Bytes),
    /// A file of this size; the counter (if any) follows the bytes sent.
    File(PathBuf, u64, Option<Arc<AtomicU64>>),
}

/// One request, as [`Client::send`] takes it.
struct Req<'a> {
    method: Method,
    path: &'a str,
    accept: Option<&'a str>,
    content_type: Option<&'a str>,
    body: Body,
    /// Ask for push rights (token scope `pull,push`).
    push: bool,
    /// Also ask for pull rights on this repository (a cross-repository mount).
    mount_from: Option<&'a str>,
}

impl<'a> Req<'a> {
    fn get(path: &'a str, accept: Option<&'a str>) -> Req<'a> {
        Req {
            method: Method::GET,
            path,
            accept,
            content_type: None,
            body: Body::Empty,
            push: false,
            mount_from: None,
        }
    }

    /// May be sent again after a failure: GET or HEAD, with no body.
    fn retryable(&self) -> bool {
        matches!(self.method, Method::GET | Method::HEAD) && matches!(self.body, Body::Empty)
    }
}

fn tokio_util_stream(
    f: tokio::fs::File,
    sent: Option<Arc<AtomicU64>>,
) -> impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>> {
    futures_util::stream::unfold(
        (f, vec![0u8; 1 << 20], sent),
        |(mut f, mut buf, sent)| async move {
            use tokio::io::AsyncReadExt;
            match f.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    if let Some(s) = &sent {
                        s.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                    }
                    let chunk = bytes::Bytes::copy_from_slice(&buf[..n]);
                    Some((Ok(chunk), (f, buf, sent)))
                }
                Err(e) => Some((Err(e), (f, buf, sent))),
            }
        },
    )
}

fn is_transient(e: &Error) -> bool {
    match e {
        Error::Transport { .. } => true,
        Error::Http { status, .. } => *status >= 500 || *status == 429,
        _ => false,
    }
}

fn basic(c: &Credentials) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", c.username, c.password))
    )
}

/// Whether an answer to `GET /v2/` comes from a registry. A registry answers 200, or
/// 401/403 without credentials; some proxies in front of one drop the version header. A
/// 404, a 405 or a redirect to a web page from an address without that header is not a
/// registry.
pub(crate) fn speaks_registry_api(resp: &Response) -> bool {
    let status = resp.status();
    status.is_success()
        || status == StatusCode::UNAUTHORIZED
        || status == StatusCode::FORBIDDEN
        || resp
            .headers()
            .contains_key("docker-distribution-api-version")
}

/// Sends the request `build` makes; if it may be repeated (`retry`: GET or HEAD without a
/// body) and failed because the server or a proxy closed a kept-alive connection just as
/// it was reused, sends it once more on a new connection, as Go's and Docker's clients do.
/// (A proxy such as tinyproxy closes its end between requests without saying so.)
async fn send_once_more(
    build: impl Fn() -> Result<reqwest::RequestBuilder>,
    retry: bool,
    url: &str,
) -> Result<reqwest::Response> {
    match build()?.send().await {
        Err(e) if retry && closed_under_us(&e) => {
            tracing::debug!(url, error = %e, "connection closed as it was reused; sending again");
            build()?.send().await.map_err(|e| transport(url, e))
        }
        r => r.map_err(|e| transport(url, e)),
    }
}

/// The connection was closed before any answer came (hyper's "incomplete message").
fn closed_under_us(e: &reqwest::Error) -> bool {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = src {
        let text = s.to_string();
        if text.contains("connection closed before message completed")
            || text.contains("connection reset")
        {
            return true;
        }
        src = s.source();
    }
    false
}

/// Set when a client was made without the system's trust store (it has none).
static NO_SYSTEM_TRUST_STORE: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

pub(crate) fn transport(url: &str, e: reqwest::Error) -> Error {
    let msg = error_chain(&e);
    let untrusted = msg.contains("certificate") || msg.contains("UnknownIssuer");
    let hint = if untrusted && NO_SYSTEM_TRUST_STORE.load(std::sync::atomic::Ordering::Relaxed) {
        "; the registry's certificate is not trusted: this system has no CA bundle \
         (install ca-certificates), or set `ca` for this registry in berth's config"
    } else if untrusted {
        "; the registry's certificate is not trusted: set `ca` for this registry in berth's config (or `insecure = true`)"
    } else if msg.contains("dns error") || msg.contains("failed to lookup") {
        "; the registry's host name does not resolve: check the image name, DNS or the proxy settings (HTTPS_PROXY, NO_PROXY)"
    } else if msg.to_lowercase().contains("connect") {
        "; is the registry running and reachable from here (proxy settings: HTTPS_PROXY, NO_PROXY)?"
    } else {
        ""
    };
    Error::Transport {
        url: url.to_string(),
        message: format!("{msg}{hint}"),
    }
}

async fn check(resp: Response, method: &str, what: &str) -> Result<Response> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    if status == StatusCode::NOT_FOUND {
        return Err(Error::NotFound(what.to_string()));
    }
    let url = resp.url().to_string();
    let body = resp.text().await.unwrap_or_default();
    Err(Error::Http {
        method: method.into(),
        url,
        status: status.as_u16(),
        body: body.chars().take(300).collect(),
    })
}

/// `realm="…",service="…",scope="…"` → map.
fn parse_challenge(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let Some((k, v)) = rest.split_once('=') else {
            break;
        };
        let k = k.trim().trim_start_matches(',').trim().to_string();
        let v = v.trim_start();
        let (value, tail) = if let Some(q) = v.strip_prefix('"') {
            match q.find('"') {
                Some(end) => (q[..end].to_string(), &q[end + 1..]),
                None => (q.to_string(), ""),
            }
        } else {
            match v.find(',') {
                Some(end) => (v[..end].to_string(), &v[end..]),
                None => (v.to_string(), ""),
            }
        };
        out.insert(k, value);
        rest = tail.trim_start().trim_start_matches(',');
    }
    out
}

/// An error and its sources, `: `-separated (reqwest's own text is only "builder error").
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        text.push_str(": ");
        text.push_str(&s.to_string());
        cur = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        let p = parse_challenge(
            r#"realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(p["realm"], "https://auth.example/token");
        assert_eq!(p["service"], "registry.example");
        assert_eq!(p["scope"], "repository:a/b:pull,push");
    }
}
