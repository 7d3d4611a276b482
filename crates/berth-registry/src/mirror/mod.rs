//! The pull-through cache: upstream registries served as read-only namespaces of this
//! registry, from the same store.
//!
//! Each [`MirrorConfig`] is served three ways at once: under `/v2/<prefix>/<repo>`,
//! under `/v2/<repo>?ns=<upstream host>` (containerd's `hosts.toml` mirrors) and, for the
//! `default` mirror, at the root (`/v2/<repo>`, dockerd's `registry-mirrors`) for every
//! repository the registry does not hold itself. Whichever way it is asked, the content
//! is kept under the repository `<prefix>/<upstream repo>`, so the three share one
//! cache; local repositories (any name outside the prefixes) stay pushable, pushes into
//! a prefix are refused.
//!
//! Manifests by digest never change and are never asked again; a tag is served from the
//! cache for `tag_ttl` after it was last checked, then revalidated with a HEAD. When the
//! upstream is down or rate-limits, a cached tag is served stale (and logged); content not
//! cached then fails with the upstream's answer. Blobs stream to every client while they
//! are written to the store, from one upstream fetch per blob ([`fetch`]); the store
//! commits a blob only under its digest. [`evict`] keeps the cache under a size cap,
//! least recently pulled first.

mod evict;
mod fetch;
mod metrics;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::http::StatusCode;
use axum::response::Response;
use berth_oci::{Digest, Reference};
use berth_store::{GcRoots, Store};

use crate::error::{Code, RegistryError};

pub use evict::{EvictReport, evict};
pub(crate) use metrics::render as render_metrics;

type Result<T, E = RegistryError> = std::result::Result<T, E>;

/// Default time a cached tag is served before it is checked upstream again.
pub const DEFAULT_TAG_TTL: Duration = Duration::from_secs(600);

/// An upstream registry's address: `https://host[:port]` or `http://host[:port]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// The URL as given, without a trailing slash.
    pub url: String,
    /// The registry as berth-client names it (`docker.io` for Docker Hub's hosts).
    pub registry: String,
    /// Plain HTTP.
    pub http: bool,
}

impl Upstream {
    /// Parse `https://registry-1.docker.io` or `http://10.0.0.5:5000`.
    pub fn parse(url: &str) -> std::result::Result<Upstream, String> {
        let (http, rest) = if let Some(r) = url.strip_prefix("https://") {
            (false, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (true, r)
        } else {
            return Err(format!(
                "upstream {url:?} must start with https:// (or http:// for a plain-HTTP registry)"
            ));
        };
        let host = rest.trim_end_matches('/');
        if host.is_empty() || host.contains('/') || host.contains('@') {
            return Err(format!(
                "upstream {url:?} must be a registry's address (scheme://host[:port]), without a path"
            ));
        }
        let registry = match host {
            "registry-1.docker.io" | "index.docker.io" | "docker.io" => {
                berth_oci::DOCKER_HUB.to_string()
            }
            h => h.to_string(),
        };
        // The reference parser is the judge of what a registry name is.
        let probe: Reference = format!("{registry}/x/y")
            .parse()
            .map_err(|e| format!("upstream {url:?} is not a registry host[:port]: {e}"))?;
        if probe.registry != registry {
            return Err(format!(
                "upstream {url:?} is not a registry host[:port] (a host name needs a dot or a port, or is localhost)"
            ));
        }
        Ok(Upstream {
            url: format!("{}://{host}", if http { "http" } else { "https" }),
            registry,
            http,
        })
    }

    /// Docker Hub, whose one-part names live under `library/`.
    pub fn is_docker_hub(&self) -> bool {
        self.registry == berth_oci::DOCKER_HUB
    }

    /// Whether containerd's `?ns=` names this upstream.
    fn named(&self, ns: &str) -> bool {
        if self.is_docker_hub() {
            return matches!(ns, "docker.io" | "registry-1.docker.io" | "index.docker.io");
        }
        ns == self.registry
            || self
                .url
                .split_once("://")
                .is_some_and(|(_, host)| host == ns)
    }

    /// The repository to ask the upstream for (`busybox` is `library/busybox` on Hub).
    fn repository(&self, repo: &str) -> String {
        if self.is_docker_hub() && !repo.contains('/') {
            format!("library/{repo}")
        } else {
            repo.to_string()
        }
    }
}

/// One upstream served as a read-only namespace (`[[registry.mirror]]` in config.toml).
#[derive(Clone)]
pub struct MirrorConfig {
    /// Served as `/v2/<prefix>/<repo>`; the cache's repositories live under it.
    pub prefix: String,
    /// The upstream registry.
    pub upstream: Upstream,
    /// Also served at the root (`/v2/<repo>`) for names no local repository has.
    pub default: bool,
    /// User name for the upstream (basic auth, or Docker Hub's token service).
    pub username: Option<String>,
    /// Its password or token. Without a user name, credentials come from Docker's
    /// config file and credential helpers for the upstream's host.
    pub password: Option<String>,
    /// Extra CA (PEM) to trust for the upstream.
    pub ca: Option<PathBuf>,
    /// Do not verify the upstream's certificate.
    pub insecure: bool,
    /// How long a cached tag is served before a HEAD asks the upstream again.
    pub tag_ttl: Duration,
}

impl std::fmt::Debug for MirrorConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MirrorConfig")
            .field("prefix", &self.prefix)
            .field("upstream", &self.upstream.url)
            .field("default", &self.default)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("ca", &self.ca)
            .field("insecure", &self.insecure)
            .field("tag_ttl", &self.tag_ttl)
            .finish()
    }
}

impl MirrorConfig {
    /// A mirror of `upstream` under `prefix`, with defaults for the rest.
    pub fn new(prefix: impl Into<String>, upstream: Upstream) -> MirrorConfig {
        MirrorConfig {
            prefix: prefix.into(),
            upstream,
            default: false,
            username: None,
            password: None,
            ca: None,
            insecure: false,
            tag_ttl: DEFAULT_TAG_TTL,
        }
    }
}

/// The registry client configuration that reaches `mirrors`' upstreams as the cache
/// does: each upstream's CA, TLS and protocol, and its own credentials where it has a
/// user name (else Docker's, from `docker_config`). `berth doctor` probes with it too.
pub fn upstream_client_config(
    mirrors: &[MirrorConfig],
    network: berth_net::Network,
    docker_config: berth_client::DockerConfig,
) -> berth_client::ClientConfig {
    let mut hosts = HashMap::new();
    let mut credentials = HashMap::new();
    for m in mirrors {
        hosts.insert(
            m.upstream.registry.clone(),
            berth_client::HostOptions {
                ca: m.ca.clone(),
                insecure: m.insecure,
                http: m.upstream.http,
                ..Default::default()
            },
        );
        if let Some(user) = &m.username {
            credentials.insert(
                m.upstream.registry.clone(),
                berth_client::Credentials {
                    username: user.clone(),
                    password: m.password.clone().unwrap_or_default(),
                },
            );
        }
    }
    berth_client::ClientConfig {
        hosts,
        docker_config,
        credentials,
        network,
    }
}

/// Checks a mirror's prefix: one repository-name component (`hub`, `quay`).
pub fn check_prefix(prefix: &str) -> std::result::Result<(), String> {
    if prefix.contains('/') || berth_oci::validate_repository(prefix).is_err() {
        return Err(format!(
            "mirror prefix {prefix:?} must be one lowercase repository-name component (like \"hub\")"
        ));
    }
    Ok(())
}

/// Checks a set of mirrors together: prefixes valid and distinct, one default at most.
pub fn check_mirrors(mirrors: &[MirrorConfig]) -> std::result::Result<(), String> {
    let mut seen = std::collections::HashSet::new();
    for m in mirrors {
        check_prefix(&m.prefix)?;
        if !seen.insert(m.prefix.as_str()) {
            return Err(format!("two mirrors use the prefix {:?}", m.prefix));
        }
    }
    if mirrors.iter().filter(|m| m.default).count() > 1 {
        return Err("only one mirror can be `default = true` (served at the root)".into());
    }
    Ok(())
}

/// The pull-through cache's part of [`crate::Config`].
#[derive(Clone, Default)]
pub struct MirrorSettings {
    /// The upstreams served.
    pub mirrors: Vec<MirrorConfig>,
    /// Size cap of the cached content, in bytes: over it, the least recently pulled
    /// blobs go ([`evict`]).
    pub max_bytes: Option<u64>,
    /// Proxies and CAs for reaching upstreams.
    pub network: berth_net::Network,
    /// Docker's config, for upstream credentials of mirrors without a user name.
    pub docker_config: berth_client::DockerConfig,
    /// What else in the store must never be evicted (the build cache of a shared root).
    pub roots: Option<Arc<dyn GcRoots + Send + Sync>>,
}

impl std::fmt::Debug for MirrorSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MirrorSettings")
            .field("mirrors", &self.mirrors)
            .field("max_bytes", &self.max_bytes)
            .finish_non_exhaustive()
    }
}

/// A mirror at run time: its settings and counters.
pub(crate) struct Mirror {
    pub(crate) config: MirrorConfig,
    pub(crate) counters: metrics::Counters,
    /// Until when the upstream said it will refuse (429, or no requests left).
    limited_until: Mutex<Option<Instant>>,
}

impl Mirror {
    fn rate_limited(&self) -> bool {
        self.limited_until
            .lock()
            .expect("limit")
            .is_some_and(|t| Instant::now() < t)
    }

    /// Note what the upstream said of its rate limit.
    fn note_limit(&self, remaining: Option<u64>) {
        if let Some(r) = remaining {
            self.counters
                .rate_limit_remaining
                .store(r, Ordering::Relaxed);
            if r == 0 {
                self.limit_for(Duration::from_secs(60));
            }
        }
    }

    fn limit_for(&self, d: Duration) {
        *self.limited_until.lock().expect("limit") = Some(Instant::now() + d);
    }

    /// An upstream failure as the client of this cache sees it, naming the upstream and
    /// its answer; `what` is what was asked for.
    fn upstream_error(&self, e: &berth_client::Error, what: &str, code: Code) -> RegistryError {
        self.counters
            .upstream_errors
            .fetch_add(1, Ordering::Relaxed);
        let url = &self.config.upstream.url;
        match e.status() {
            Some(404) => RegistryError::new(
                code,
                format!("upstream {url} has no {what} ({e}); check the name"),
            ),
            Some(429) => {
                self.limit_for(Duration::from_secs(60));
                self.counters
                    .rate_limit_remaining
                    .store(0, Ordering::Relaxed);
                RegistryError::new(
                    Code::TooManyRequests,
                    format!(
                        "upstream {url} answered 429 (rate limit) and {what} is not cached: {e}; \
                         retry later, or give mirror {:?} credentials",
                        self.config.prefix
                    ),
                )
                .with_header(axum::http::header::RETRY_AFTER, "60")
            }
            Some(401 | 403) => RegistryError::new(
                Code::Unavailable,
                format!(
                    "upstream {url} refused this cache's credentials for {what}: {e}; set \
                     username and password_env of mirror {:?} (or Docker's credentials for it)",
                    self.config.prefix
                ),
            )
            .with_status(StatusCode::BAD_GATEWAY),
            _ => RegistryError::new(
                Code::Unavailable,
                format!("upstream {url} failed for {what}, which is not cached: {e}"),
            )
            .with_status(StatusCode::BAD_GATEWAY),
        }
    }
}

/// Where a request under a mirror goes.
pub(crate) struct Target {
    pub(crate) mirror: Arc<Mirror>,
    /// The cache's repository (`<prefix>/<upstream repo>`).
    pub(crate) name: String,
    /// The upstream repository.
    upstream: Reference,
}

impl Target {
    fn upstream_ref(&self, tag: Option<&str>, digest: Option<&Digest>) -> Reference {
        Reference {
            tag: tag.map(str::to_string),
            digest: digest.cloned(),
            ..self.upstream.clone()
        }
    }
}

/// Every mirror of a registry, the upstream client and the blob fetches in flight.
pub(crate) struct Mirrors {
    list: Vec<Arc<Mirror>>,
    client: berth_client::Client,
    store: Store,
    flights: fetch::Flights,
    max_bytes: Option<u64>,
    roots: Option<Arc<dyn GcRoots + Send + Sync>>,
    /// The cache's size as last measured; `u64::MAX` before the first measurement.
    cache_bytes: AtomicU64,
    /// Bytes cached since the last measurement began.
    added: AtomicU64,
    evicting: AtomicBool,
    evicted_blobs: AtomicU64,
}

impl Mirrors {
    pub(crate) fn new(settings: &MirrorSettings, store: Store) -> Option<Arc<Mirrors>> {
        if settings.mirrors.is_empty() {
            return None;
        }
        let client = berth_client::Client::new(upstream_client_config(
            &settings.mirrors,
            settings.network.clone(),
            settings.docker_config.clone(),
        ));
        Some(Arc::new(Mirrors {
            list: settings
                .mirrors
                .iter()
                .map(|c| {
                    Arc::new(Mirror {
                        config: c.clone(),
                        counters: Default::default(),
                        limited_until: Mutex::new(None),
                    })
                })
                .collect(),
            client,
            store,
            flights: Default::default(),
            max_bytes: settings.max_bytes,
            roots: settings.roots.clone(),
            cache_bytes: AtomicU64::new(u64::MAX),
            added: AtomicU64::new(0),
            evicting: AtomicBool::new(false),
            evicted_blobs: AtomicU64::new(0),
        }))
    }

    fn target(&self, mirror: &Arc<Mirror>, repo: &str) -> Target {
        let upstream_repo = mirror.config.upstream.repository(repo);
        Target {
            mirror: mirror.clone(),
            name: format!("{}/{upstream_repo}", mirror.config.prefix),
            upstream: Reference {
                registry: mirror.config.upstream.registry.clone(),
                repository: upstream_repo,
                tag: None,
                digest: None,
            },
        }
    }

    /// The mirror a repository name belongs to: its first component is a prefix, or
    /// `ns` names an upstream. `None` for a local repository.
    pub(crate) fn by_name(&self, name: &str, ns: Option<&str>) -> Option<Target> {
        if let Some(ns) = ns
            && let Some(m) = self.list.iter().find(|m| m.config.upstream.named(ns))
        {
            return Some(self.target(m, name));
        }
        let (first, rest) = name.split_once('/')?;
        let m = self.list.iter().find(|m| m.config.prefix == first)?;
        Some(self.target(m, rest))
    }

    /// The default mirror's view of `name` (served at the root).
    pub(crate) fn by_default(&self, name: &str) -> Option<Target> {
        let m = self.list.iter().find(|m| m.config.default)?;
        Some(self.target(m, name))
    }

    pub(crate) fn has_default(&self) -> bool {
        self.list.iter().any(|m| m.config.default)
    }

    /// The refusal of a write into a mirrored namespace.
    pub(crate) fn refuse_write(&self, t: &Target) -> RegistryError {
        RegistryError::new(
            Code::Denied,
            format!(
                "repository {} is a read-only cache of {} (mirror prefix {:?}); push to a \
                 repository outside the mirrored prefixes ({})",
                t.name,
                t.mirror.config.upstream.url,
                t.mirror.config.prefix,
                self.list
                    .iter()
                    .map(|m| format!("{}/", m.config.prefix))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
    }

    /// Account a newly cached blob; evict in the background when over the cap.
    fn cached(self: &Arc<Self>, bytes: u64) {
        let Some(max) = self.max_bytes else { return };
        self.added.fetch_add(bytes, Ordering::Relaxed);
        let known = self.cache_bytes.load(Ordering::Relaxed);
        let over =
            known == u64::MAX || known.saturating_add(self.added.load(Ordering::Relaxed)) > max;
        if !over || self.evicting.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let prefixes: Vec<String> = this.list.iter().map(|m| m.config.prefix.clone()).collect();
            let roots = this.roots.as_deref().map(|r| r as &dyn GcRoots);
            // Again while blobs cached during a run take the cache over the cap.
            loop {
                this.added.store(0, Ordering::Relaxed);
                let report = match evict(&this.store, &prefixes, max, roots) {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!(error = %e, "pull-through cache eviction failed");
                        break;
                    }
                };
                this.cache_bytes
                    .store(report.cache_bytes, Ordering::Relaxed);
                this.evicted_blobs
                    .fetch_add(report.evicted.len() as u64, Ordering::Relaxed);
                if !report.evicted.is_empty() {
                    tracing::info!(
                        evicted = report.evicted.len(),
                        freed = report.cache_bytes_before - report.cache_bytes,
                        cache_bytes = report.cache_bytes,
                        "pull-through cache over its cap: least recently pulled blobs evicted"
                    );
                }
                let added = this.added.load(Ordering::Relaxed);
                if added == 0 || report.cache_bytes + added <= max {
                    break;
                }
            }
            this.evicting.store(false, Ordering::Release);
        });
    }

    /// The cache's size: as last measured plus what was fetched since.
    pub(crate) fn cache_bytes(&self) -> Option<u64> {
        let known = self.cache_bytes.load(Ordering::Relaxed);
        (known != u64::MAX).then(|| known + self.added.load(Ordering::Relaxed))
    }
}

/// Run blocking store work off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        RegistryError::new(Code::Unavailable, format!("internal error: {e}"))
            .with_status(StatusCode::INTERNAL_SERVER_ERROR)
    })?
}

/// A manifest of the cache: stamped (it was pulled now) and present.
fn cached_manifest(store: &Store, name: &str, d: &Digest) -> Result<bool> {
    if store.repos().manifest(name, d)?.is_none() {
        return Ok(false);
    }
    Ok(store.protect_blob(d)?.is_some())
}

/// Store a manifest fetched from upstream under `name` (and `tag`).
fn keep_manifest(
    store: &Store,
    name: &str,
    pulled: &berth_client::Pulled,
    tag: Option<&str>,
) -> Result<()> {
    let (_, guard) = store.put_blob_protected(pulled.digest.algorithm(), &pulled.bytes)?;
    let repos = store.repos();
    repos.link_manifest(name, &pulled.digest, &pulled.media_type)?;
    if let Some(tag) = tag {
        repos.set_tag(name, tag, &pulled.digest)?;
    }
    drop(guard);
    Ok(())
}

/// `GET`/`HEAD /v2/<name>/manifests/<reference>` under a mirror: make sure the cache
/// holds the manifest (fetching or revalidating as the rules say), then return its
/// digest, served from the cache by the caller.
pub(crate) async fn manifest(
    mirrors: &Arc<Mirrors>,
    t: &Target,
    reference: &str,
) -> Result<Digest> {
    let m = &t.mirror;
    let c = &m.counters;
    let store = mirrors.store.clone();
    if reference.contains(':') {
        let d: Digest = reference.parse().map_err(|e: berth_oci::DigestError| {
            RegistryError::new(Code::DigestInvalid, e.to_string())
        })?;
        let (s, n, d2) = (store.clone(), t.name.clone(), d.clone());
        if blocking(move || cached_manifest(&s, &n, &d2)).await? {
            c.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(d);
        }
        c.misses.fetch_add(1, Ordering::Relaxed);
        fetch_manifest(mirrors, t, None, Some(&d)).await?;
        return Ok(d);
    }
    berth_oci::validate_tag(reference)
        .map_err(|e| RegistryError::new(Code::ManifestInvalid, e.to_string()))?;
    let tag = reference.to_string();
    let (s, n, tg) = (store.clone(), t.name.clone(), tag.clone());
    let cached = blocking(move || {
        let repos = s.repos();
        let Some(d) = repos.tag(&n, &tg)? else {
            return Ok(None);
        };
        let set_at = repos.tag_set_at(&n, &tg)?;
        Ok(cached_manifest(&s, &n, &d)?.then_some((d, set_at)))
    })
    .await?;
    let Some((d, set_at)) = cached else {
        c.misses.fetch_add(1, Ordering::Relaxed);
        return fetch_manifest(mirrors, t, Some(&tag), None).await;
    };
    let age = set_at
        .and_then(|at| SystemTime::now().duration_since(at).ok())
        .unwrap_or(Duration::MAX);
    if age < m.config.tag_ttl {
        c.hits.fetch_add(1, Ordering::Relaxed);
        return Ok(d);
    }
    let stale = |why: &str| {
        c.stale.fetch_add(1, Ordering::Relaxed);
        c.hits.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            mirror = %m.config.prefix,
            upstream = %m.config.upstream.url,
            repository = %t.name,
            tag,
            digest = %d,
            "{why}: serving the cached tag stale"
        );
        Ok(d.clone())
    };
    if m.rate_limited() {
        return stale("the upstream is rate-limiting this cache");
    }
    c.revalidations.fetch_add(1, Ordering::Relaxed);
    match mirrors
        .client
        .manifest_head(&t.upstream_ref(Some(&tag), None))
        .await
    {
        Ok(head) => {
            m.note_limit(head.rate_limit_remaining);
            if head.digest.as_ref() == Some(&d) {
                let (s, n, tg, d2) = (store, t.name.clone(), tag.clone(), d.clone());
                blocking(move || Ok(s.repos().set_tag(&n, &tg, &d2)?)).await?;
                c.hits.fetch_add(1, Ordering::Relaxed);
                return Ok(d);
            }
            c.misses.fetch_add(1, Ordering::Relaxed);
            match fetch_manifest(mirrors, t, Some(&tag), None).await {
                Ok(new) => Ok(new),
                Err(e) if e.status != StatusCode::NOT_FOUND => stale(&format!(
                    "the tag moved upstream but fetching it failed ({})",
                    e.message
                )),
                Err(e) => Err(e),
            }
        }
        Err(e) if e.status() == Some(404) => Err(m.upstream_error(
            &e,
            &format!("tag {tag} of {}", t.upstream.repository),
            Code::ManifestUnknown,
        )),
        Err(e) => {
            let err = m.upstream_error(&e, "the tag", Code::ManifestUnknown);
            stale(&format!("upstream check failed: {}", err.message))
        }
    }
}

/// GET a manifest from upstream by tag or digest and keep it; returns its digest.
async fn fetch_manifest(
    mirrors: &Arc<Mirrors>,
    t: &Target,
    tag: Option<&str>,
    digest: Option<&Digest>,
) -> Result<Digest> {
    let m = &t.mirror;
    let what = match (tag, digest) {
        (_, Some(d)) => format!("manifest {}@{d}", t.upstream.repository),
        (Some(tag), None) => format!("manifest {}:{tag}", t.upstream.repository),
        (None, None) => unreachable!("a manifest is asked for by tag or digest"),
    };
    if m.rate_limited() {
        return Err(RegistryError::new(
            Code::TooManyRequests,
            format!(
                "upstream {} answered 429 (rate limit) or has no requests left, and {what} is \
                 not cached; retry later",
                m.config.upstream.url
            ),
        )
        .with_header(axum::http::header::RETRY_AFTER, "60"));
    }
    m.counters.manifest_fetches.fetch_add(1, Ordering::Relaxed);
    let pulled = mirrors
        .client
        .manifest(&t.upstream_ref(tag, digest))
        .await
        .map_err(|e| m.upstream_error(&e, &what, Code::ManifestUnknown))?;
    m.note_limit(pulled.rate_limit_remaining);
    m.counters
        .upstream_bytes
        .fetch_add(pulled.bytes.len() as u64, Ordering::Relaxed);
    let d = pulled.digest.clone();
    let (s, n, tg) = (
        mirrors.store.clone(),
        t.name.clone(),
        tag.map(str::to_string),
    );
    blocking(move || keep_manifest(&s, &n, &pulled, tg.as_deref())).await?;
    Ok(d)
}

/// What a blob request under a mirror needs.
pub(crate) enum BlobSource {
    /// The cache holds it (linked in the target's repository): serve from the store.
    Cached,
    /// A HEAD not cached: the upstream's answer.
    Head(Response),
    /// Being fetched: stream it.
    Fetching(Response),
}

/// `GET`/`HEAD /v2/<name>/blobs/<digest>` under a mirror.
pub(crate) async fn blob(
    mirrors: &Arc<Mirrors>,
    t: &Target,
    digest: &str,
    head: bool,
) -> Result<BlobSource> {
    let m = &t.mirror;
    let c = &m.counters;
    let d: Digest = digest.parse().map_err(|e: berth_oci::DigestError| {
        RegistryError::new(Code::DigestInvalid, e.to_string())
    })?;
    let (s, n, d2) = (mirrors.store.clone(), t.name.clone(), d.clone());
    let (linked, present) = blocking(move || {
        Ok((
            s.repos().has_blob(&n, &d2)? || s.repos().manifest(&n, &d2)?.is_some(),
            s.blob_size(&d2)?.is_some(),
        ))
    })
    .await?;
    if linked && present {
        c.hits.fetch_add(1, Ordering::Relaxed);
        return Ok(BlobSource::Cached);
    }
    let what = format!("blob {}@{d}", t.upstream.repository);
    if present || head {
        // In the store for another repository (or only asked about): the upstream says
        // whether this repository has it, so the cache never serves content a client
        // could not pull upstream.
        let h = mirrors
            .client
            .blob_head(&t.upstream_ref(None, None), &d)
            .await
            .map_err(|e| m.upstream_error(&e, &what, Code::BlobUnknown))?;
        m.note_limit(h.rate_limit_remaining);
        if present {
            let (s, n, d2) = (mirrors.store.clone(), t.name.clone(), d.clone());
            blocking(move || Ok(s.repos().link_blob(&n, &d2)?)).await?;
            c.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(BlobSource::Cached);
        }
        c.misses.fetch_add(1, Ordering::Relaxed);
        return Ok(BlobSource::Head(fetch::head_response(&d, h.size)));
    }
    match fetch::get(mirrors, t, &d).await? {
        Some(resp) => {
            c.misses.fetch_add(1, Ordering::Relaxed);
            Ok(BlobSource::Fetching(resp))
        }
        None => {
            c.hits.fetch_add(1, Ordering::Relaxed);
            Ok(BlobSource::Cached)
        }
    }
}
