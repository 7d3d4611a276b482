//! The `/v2/` API. Repository names may hold slashes, so routes are recognised by their
//! *suffix* (`/manifests/<reference>`, `/blobs/uploads/<id>`, `/blobs/<digest>`,
//! `/tags/list`, `/referrers/<digest>`), the rest being the name, which is then checked
//! against the spec's grammar before it reaches the store.

use std::collections::HashMap;
use std::io::SeekFrom;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use berth_oci::{Algorithm, Descriptor, Digest, Manifest, media_type};
use berth_store::{Store, Writer};
use futures_util::StreamExt;
use tokio::io::AsyncReadExt;

use crate::auth::{Action, Auth, LoginError};
use crate::error::{Code, RegistryError};

type Result<T, E = RegistryError> = std::result::Result<T, E>;

/// How the registry behaves.
#[derive(Debug)]
pub struct Config {
    /// Where content and metadata live.
    pub store: Store,
    /// Refuse every write.
    pub read_only: bool,
    /// Allow DELETE of manifests, tags and blobs.
    pub delete_enabled: bool,
    /// Authentication and rights; `None` lets everyone do everything.
    pub auth: Option<Auth>,
    /// Largest manifest accepted, in bytes.
    pub max_manifest_bytes: usize,
    /// The registry listens beyond loopback: without `auth`, writes are refused unless
    /// `allow_anonymous_push` (see [`Config::listen_on`]).
    pub beyond_loopback: bool,
    /// Accept pushes and deletes without authentication even beyond loopback.
    pub allow_anonymous_push: bool,
    /// A client that presented a TLS certificate the listener verified (see
    /// [`crate::PeerCertificates`]) may do everything, as user `client-certificate`: the
    /// satellite's listener accepts only certificates of its own CA, unrevoked.
    pub client_certificates: bool,
    /// Upstream registries served as read-only namespaces (the pull-through cache).
    pub mirror: crate::mirror::MirrorSettings,
    /// Keep content and metadata in this bucket instead of `store` (which then holds
    /// nothing of the registry's). Mirrors are not served from object storage.
    pub objects: Option<crate::objects::ObjectStorage>,
}

impl Config {
    /// Defaults: writable, deletes enabled, no auth, 4 MiB manifests.
    pub fn new(store: Store) -> Config {
        Config {
            store,
            read_only: false,
            delete_enabled: true,
            auth: None,
            max_manifest_bytes: 4 << 20,
            beyond_loopback: false,
            allow_anonymous_push: false,
            client_certificates: false,
            mirror: Default::default(),
            objects: None,
        }
    }

    /// Record where the registry listens: any address but 127.0.0.0/8 and ::1
    /// (0.0.0.0 included) is beyond loopback.
    pub fn listen_on(&mut self, addr: std::net::SocketAddr) {
        self.beyond_loopback = !addr.ip().is_loopback();
    }
}

/// A registry: configuration plus the upload writers open between requests.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    /// Writers of chunked uploads, kept open between PATCH requests so each chunk is
    /// hashed once. A request takes its writer out and puts it back when done; after a
    /// restart the map is empty and the writer is re-opened from disk (re-hashing).
    uploads: Mutex<HashMap<String, (Writer, std::time::Instant)>>,
    /// The pull-through cache, when mirrors are configured.
    mirrors: Option<Arc<crate::mirror::Mirrors>>,
}

impl Registry {
    /// A registry over `config`.
    pub fn new(config: Config) -> Registry {
        crate::auth::warn_if_writes_refused(&config);
        let mirrors = if config.objects.is_some() {
            if !config.mirror.mirrors.is_empty() {
                tracing::warn!("mirrors are not served from object storage: ignoring them");
            }
            None
        } else {
            crate::mirror::Mirrors::new(&config.mirror, config.store.clone())
        };
        Registry {
            inner: Arc::new(Inner {
                config,
                uploads: Mutex::new(HashMap::new()),
                mirrors,
            }),
        }
    }

    /// The axum router serving `/v2/`, and `/metrics` when the registry has mirrors (a
    /// registry embedded with routes of its own, like a satellite's, has none).
    pub fn router(&self) -> Router {
        let mut router = Router::new();
        if self.inner.mirrors.is_some() {
            router = router.route("/metrics", axum::routing::get(metrics));
        }
        router
            .fallback(dispatch)
            .with_state(self.clone())
            .layer(axum::middleware::from_fn(crate::server::log_request))
    }

    /// The bucket the registry keeps its content in, if not the local store.
    pub fn objects(&self) -> Option<&crate::objects::ObjectStorage> {
        self.inner.config.objects.as_ref()
    }

    pub(crate) fn config(&self) -> &Config {
        &self.inner.config
    }

    fn store(&self) -> &Store {
        &self.inner.config.store
    }

    fn take_writer(&self, id: &str) -> Option<Writer> {
        self.inner
            .uploads
            .lock()
            .expect("uploads")
            .remove(id)
            .map(|(w, _)| w)
    }

    /// Keep an upload's writer for its next request. Writers idle for 15 minutes are
    /// closed (their data stays on disk; a later request re-opens it), and at most 256
    /// are kept open, oldest closed first: an abandoned upload must not hold a file
    /// descriptor and a lock for ever.
    fn put_writer(&self, w: Writer) {
        const IDLE: std::time::Duration = std::time::Duration::from_secs(15 * 60);
        const MAX_OPEN: usize = 256;
        let mut uploads = self.inner.uploads.lock().expect("uploads");
        let now = std::time::Instant::now();
        uploads.retain(|_, (_, used)| now.duration_since(*used) < IDLE);
        while uploads.len() >= MAX_OPEN {
            let oldest = uploads
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => uploads.remove(&k),
                None => break,
            };
        }
        uploads.insert(w.reference().to_string(), (w, now));
    }
}

#[derive(Debug)]
pub(crate) enum Route {
    Base,
    Catalog,
    Tags(String),
    Manifest(String, String),
    Blob(String, String),
    Upload(String, Option<String>),
    Referrers(String, String),
}

impl Route {
    /// The repository the route names, if any.
    fn name_mut(&mut self) -> Option<&mut String> {
        match self {
            Route::Base | Route::Catalog => None,
            Route::Tags(n)
            | Route::Manifest(n, _)
            | Route::Blob(n, _)
            | Route::Upload(n, _)
            | Route::Referrers(n, _) => Some(n),
        }
    }
}

/// `/metrics`: Prometheus text (the pull-through cache's counters); counts only.
async fn metrics(State(reg): State<Registry>) -> Response {
    let text = crate::mirror::render_metrics(reg.inner.mirrors.as_deref());
    let mut r = text.into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    r
}

/// Which mirror, if any, a request for `route` goes to: a name under a mirror's prefix,
/// `?ns=` naming an upstream, or (reads only) a name no local repository has while a
/// default mirror is set. The route's name becomes the cache's repository.
async fn mirror_target(
    reg: &Registry,
    route: &mut Route,
    method: &Method,
    query: Option<&str>,
) -> Result<Option<crate::mirror::Target>> {
    let Some(mirrors) = &reg.inner.mirrors else {
        return Ok(None);
    };
    let Some(name) = route.name_mut() else {
        return Ok(None);
    };
    let ns = query_param(query, "ns");
    let mut target = mirrors.by_name(name, ns.as_deref());
    let read = matches!(*method, Method::GET | Method::HEAD);
    if target.is_none() && read && mirrors.has_default() && check_name(name).is_ok() {
        let (store, n) = (reg.store().clone(), name.clone());
        let local = blocking(move || {
            let repos = store.repos();
            Ok(!repos.tags(&n)?.is_empty() || !repos.manifests(&n)?.is_empty())
        })
        .await?;
        if !local {
            target = mirrors.by_default(name);
        }
    }
    if let Some(t) = &target {
        check_name(&t.name)?;
        *name = t.name.clone();
    }
    Ok(target)
}

fn parse_route(path: &str) -> Option<Route> {
    let rest = path.strip_prefix("/v2")?;
    if rest.is_empty() || rest == "/" {
        return Some(Route::Base);
    }
    let rest = rest.strip_prefix('/')?;
    if rest == "_catalog" {
        return Some(Route::Catalog);
    }
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return Some(Route::Tags(name.to_string()));
    }
    if let Some(name) = rest
        .strip_suffix("/blobs/uploads")
        .or_else(|| rest.strip_suffix("/blobs/uploads/"))
    {
        return Some(Route::Upload(name.to_string(), None));
    }
    let (head, last) = rest.rsplit_once('/')?;
    let (name, kind) = head.rsplit_once('/')?;
    let last = last.to_string();
    match kind {
        "manifests" => Some(Route::Manifest(name.to_string(), last)),
        "referrers" => Some(Route::Referrers(name.to_string(), last)),
        "blobs" => Some(Route::Blob(name.to_string(), last)),
        "uploads" => {
            let name = name.strip_suffix("/blobs")?;
            Some(Route::Upload(name.to_string(), Some(last)))
        }
        _ => None,
    }
}

pub(crate) fn check_name(name: &str) -> Result<()> {
    berth_oci::validate_repository(name)
        .map_err(|e| RegistryError::new(Code::NameInvalid, e.to_string()))
}

pub(crate) fn parse_digest(s: &str) -> Result<Digest> {
    s.parse()
        .map_err(|e: berth_oci::DigestError| RegistryError::new(Code::DigestInvalid, e.to_string()))
}

pub(crate) fn query_param(req_query: Option<&str>, key: &str) -> Option<String> {
    req_query?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == key).then(|| percent_decode(v))
    })
}

/// Every value of `key` in the query (`?tag=a&tag=b`).
pub(crate) fn query_params(req_query: Option<&str>, key: &str) -> Vec<String> {
    req_query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k == key).then(|| percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => match (hex_val(b[i + 1]), hex_val(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_val(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|v| v as u8)
}

async fn dispatch(State(reg): State<Registry>, req: Request) -> Response {
    let mut resp = match handle(&reg, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    resp.headers_mut().insert(
        "docker-distribution-api-version",
        HeaderValue::from_static("registry/2.0"),
    );
    resp
}

/// The repository and action a route needs, for the rights check.
fn required(route: &Route, method: &Method) -> Option<(String, Action)> {
    let action = match *method {
        Method::GET | Method::HEAD => Action::Pull,
        Method::DELETE => Action::Delete,
        _ => Action::Push,
    };
    let name = match route {
        Route::Base | Route::Catalog => return None,
        Route::Tags(n)
        | Route::Manifest(n, _)
        | Route::Blob(n, _)
        | Route::Upload(n, _)
        | Route::Referrers(n, _) => n,
    };
    // Reading an upload's status is part of pushing it.
    let action = match (route, action) {
        (Route::Upload(..), Action::Pull | Action::Delete) => Action::Push,
        (_, a) => a,
    };
    Some((name.clone(), action))
}

fn unauthorized(message: &str) -> RegistryError {
    RegistryError::new(Code::Unauthorized, message)
        .with_header(header::WWW_AUTHENTICATE, "Basic realm=\"berth\"")
}

/// Who is asking, and whether they may do what the route needs.
async fn authorize(
    reg: &Registry,
    route: &Route,
    method: &Method,
    headers: &HeaderMap,
    client: std::net::IpAddr,
) -> Result<Option<String>> {
    let cfg = &reg.inner.config;
    let Some(auth) = &cfg.auth else {
        if crate::auth::writes_refused(cfg) && !matches!(*method, Method::GET | Method::HEAD) {
            return Err(crate::auth::writes_refused_error());
        }
        return Ok(None);
    };
    let header = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let user = match auth.authenticate(header, client).await {
        Ok(user) => user,
        Err(e @ (LoginError::BadCredentials | LoginError::Refused(_))) => {
            return Err(unauthorized(&e.to_string()));
        }
        Err(e @ LoginError::Throttled { retry_after }) => {
            return Err(
                RegistryError::new(Code::TooManyRequests, e.to_string()).with_header(
                    header::RETRY_AFTER,
                    retry_after.as_secs().max(1).to_string(),
                ),
            );
        }
    };
    match required(route, method) {
        None if user.is_none() && !auth.anonymous_allowed() => {
            Err(unauthorized("authentication required"))
        }
        None => Ok(user),
        Some((repo, action)) if !auth.allowed(user.as_deref(), &repo, action) => Err(match &user {
            None => unauthorized("authentication required"),
            Some(who) => RegistryError::new(Code::Denied, auth.denied(who, &repo, action)),
        }),
        Some(_) => Ok(user),
    }
}

async fn handle(reg: &Registry, req: Request) -> Result<Response> {
    let cfg = &reg.inner.config;
    let mut route = parse_route(req.uri().path()).ok_or_else(|| {
        RegistryError::new(
            Code::NameUnknown,
            format!("no such API endpoint: {}", req.uri().path()),
        )
        .with_status(StatusCode::NOT_FOUND)
    })?;
    let method = req.method().clone();
    let mirror = mirror_target(reg, &mut route, &method, req.uri().query()).await?;
    if let (Some(t), Some(mirrors)) = (&mirror, &reg.inner.mirrors)
        && !matches!(method, Method::GET | Method::HEAD)
    {
        return Err(crate::error::refuse(mirrors.refuse_write(t), req).await);
    }

    let client = req
        .extensions()
        .get::<crate::server::ClientAddr>()
        .map_or(std::net::Ipv4Addr::UNSPECIFIED.into(), |c| c.0.ip());
    let certified = cfg.client_certificates
        && req
            .extensions()
            .get::<crate::server::PeerCertificates>()
            .is_some();
    let authorized = if certified {
        Ok(Some("client-certificate".to_string()))
    } else {
        authorize(reg, &route, &method, req.headers(), client).await
    };
    let user = match authorized {
        Ok(user) => user,
        Err(e) => return Err(crate::error::refuse(e, req).await),
    };
    let writes = !matches!(method, Method::GET | Method::HEAD);
    if writes && cfg.read_only {
        return Err(RegistryError::new(
            Code::Unsupported,
            "this registry is read-only",
        ));
    }
    if method == Method::DELETE && !cfg.delete_enabled && !matches!(route, Route::Upload(..)) {
        return Err(RegistryError::new(
            Code::Unsupported,
            "deletes are disabled on this registry",
        ));
    }

    let query = req.uri().query().map(str::to_string);
    let q = |k: &str| query_param(query.as_deref(), k);
    if let (Some(t), Some(mirrors)) = (&mirror, &reg.inner.mirrors) {
        return mirrored(
            reg,
            mirrors,
            t,
            route,
            method,
            req.headers(),
            q("n"),
            q("last"),
        )
        .await;
    }
    if let Some(objects) = &cfg.objects {
        return crate::objects::api::handle(reg, objects, route, method, user, query, req).await;
    }
    match (route, method) {
        (Route::Base, Method::GET | Method::HEAD) => {
            Ok(json_response(StatusCode::OK, &serde_json::json!({})))
        }
        (Route::Catalog, Method::GET) => catalog(reg, user.as_deref(), q("n"), q("last")),
        (Route::Tags(name), Method::GET) => tags_list(reg, &name, q("n"), q("last")),
        (Route::Manifest(name, reference), m @ (Method::GET | Method::HEAD)) => {
            get_manifest(reg, &name, &reference, req.headers(), m == Method::HEAD)
        }
        (Route::Manifest(name, reference), Method::PUT) => {
            let tags = query_params(query.as_deref(), "tag");
            put_manifest(reg, &name, &reference, tags, req).await
        }
        (Route::Manifest(name, reference), Method::DELETE) => {
            let reg = reg.clone();
            blocking(move || delete_manifest(&reg, &name, &reference)).await
        }
        (Route::Blob(name, digest), m @ (Method::GET | Method::HEAD)) => {
            get_blob(reg, &name, &digest, req.headers(), m == Method::HEAD).await
        }
        (Route::Blob(name, digest), Method::DELETE) => {
            check_name(&name)?;
            let d = parse_digest(&digest)?;
            let (store, n, d2) = (reg.store().clone(), name.clone(), d.clone());
            if !blocking(move || Ok(store.repos().unlink_blob(&n, &d2)?)).await? {
                return Err(RegistryError::new(
                    Code::BlobUnknown,
                    format!("blob {d} is not in repository {name}"),
                ));
            }
            Ok(empty(StatusCode::ACCEPTED))
        }
        (Route::Upload(name, None), Method::POST) => {
            let user = user.clone();
            start_upload(
                reg,
                &name,
                q("digest"),
                q("mount"),
                q("from"),
                user.as_deref(),
                req,
            )
            .await
        }
        (Route::Upload(name, Some(id)), Method::PATCH) => patch_upload(reg, &name, &id, req).await,
        (Route::Upload(name, Some(id)), Method::PUT) => {
            put_upload(reg, &name, &id, q("digest"), req).await
        }
        (Route::Upload(name, Some(id)), Method::GET) => {
            let w = open_upload(reg, &name, &id).await?;
            let resp = upload_accepted(StatusCode::NO_CONTENT, &name, &id, w.offset());
            reg.put_writer(w);
            Ok(resp)
        }
        (Route::Upload(name, Some(id)), Method::DELETE) => {
            let w = open_upload(reg, &name, &id).await?;
            let store = reg.store().clone();
            blocking(move || {
                drop(w);
                Ok(store.abort(&id)?)
            })
            .await?;
            Ok(empty(StatusCode::NO_CONTENT))
        }
        (Route::Referrers(name, digest), Method::GET) => {
            referrers(reg, &name, &digest, q("artifactType"))
        }
        (_, m) => Err(RegistryError::new(
            Code::Unsupported,
            format!("method {m} is not supported on this endpoint"),
        )),
    }
}

/// A read of a mirrored repository: the cache makes sure it holds what is asked for
/// (fetching, revalidating or streaming from upstream), and the store serves it.
#[allow(clippy::too_many_arguments)]
async fn mirrored(
    reg: &Registry,
    mirrors: &Arc<crate::mirror::Mirrors>,
    t: &crate::mirror::Target,
    route: Route,
    method: Method,
    headers: &HeaderMap,
    n: Option<String>,
    last: Option<String>,
) -> Result<Response> {
    use crate::mirror::BlobSource;
    let head = method == Method::HEAD;
    match route {
        Route::Manifest(name, reference) => {
            let digest = crate::mirror::manifest(mirrors, t, &reference).await?;
            get_manifest(reg, &name, &digest.to_string(), headers, head)
        }
        Route::Blob(name, digest) => match crate::mirror::blob(mirrors, t, &digest, head).await? {
            BlobSource::Cached => get_blob(reg, &name, &digest, headers, head).await,
            BlobSource::Head(r) | BlobSource::Fetching(r) => Ok(r),
        },
        Route::Tags(name) if method == Method::GET => tags_list(reg, &name, n, last),
        Route::Referrers(name, digest) if method == Method::GET => {
            referrers(reg, &name, &digest, None)
        }
        _ => Err(RegistryError::new(
            Code::Unsupported,
            format!("method {method} is not supported on this endpoint"),
        )),
    }
}

pub(crate) fn empty(status: StatusCode) -> Response {
    let mut r = status.into_response();
    r.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    r
}

pub(crate) fn json_response(status: StatusCode, v: &serde_json::Value) -> Response {
    let body = serde_json::to_vec(v).expect("json");
    let mut r = (status, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

pub(crate) fn set(r: &mut Response, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        r.headers_mut().insert(name, v);
    }
}

/// Apply `last` and `n` to a sorted list; returns the page and whether more follow.
pub(crate) fn paginate(
    items: Vec<String>,
    n: Option<String>,
    last: Option<String>,
) -> Result<(Vec<String>, Option<usize>)> {
    let n = match n {
        None => None,
        Some(s) => Some(s.parse::<usize>().map_err(|_| {
            RegistryError::new(
                Code::SizeInvalid,
                format!("query parameter n={s:?} is not a number"),
            )
        })?),
    };
    let mut items: Vec<String> = match last {
        Some(l) => items.into_iter().filter(|t| *t > l).collect(),
        None => items,
    };
    let more = match n {
        Some(n) if items.len() > n => {
            items.truncate(n);
            Some(n)
        }
        _ => None,
    };
    Ok((items, more))
}

pub(crate) fn link_next(r: &mut Response, base: &str, page: &[String], n: Option<usize>) {
    if let (Some(n), Some(last)) = (n, page.last()) {
        set(
            r,
            "link",
            &format!("<{base}?n={n}&last={last}>; rel=\"next\""),
        );
    }
}

fn catalog(
    reg: &Registry,
    user: Option<&str>,
    n: Option<String>,
    last: Option<String>,
) -> Result<Response> {
    let mut repos = reg.store().repos().repositories()?;
    if let Some(auth) = &reg.inner.config.auth {
        repos.retain(|r| auth.allowed(user, r, Action::Pull));
    }
    let (page, more) = paginate(repos, n, last)?;
    let mut r = json_response(StatusCode::OK, &serde_json::json!({ "repositories": page }));
    link_next(&mut r, "/v2/_catalog", &page, more);
    Ok(r)
}

fn tags_list(
    reg: &Registry,
    name: &str,
    n: Option<String>,
    last: Option<String>,
) -> Result<Response> {
    check_name(name)?;
    let repos = reg.store().repos();
    let tags = repos.tags(name)?;
    if tags.is_empty() && repos.manifests(name)?.is_empty() {
        return Err(RegistryError::new(
            Code::NameUnknown,
            format!("repository {name} is not known to this registry"),
        ));
    }
    let (page, more) = paginate(tags, n, last)?;
    let mut r = json_response(
        StatusCode::OK,
        &serde_json::json!({ "name": name, "tags": page }),
    );
    link_next(&mut r, &format!("/v2/{name}/tags/list"), &page, more);
    Ok(r)
}

/// Resolve a tag or digest to a manifest digest and its media type in `name`.
fn resolve(reg: &Registry, name: &str, reference: &str) -> Result<(Digest, String)> {
    let repos = reg.store().repos();
    let digest = if reference.contains(':') {
        parse_digest(reference)?
    } else {
        berth_oci::validate_tag(reference)
            .map_err(|e| RegistryError::new(Code::ManifestInvalid, e.to_string()))?;
        repos.tag(name, reference)?.ok_or_else(|| {
            RegistryError::new(
                Code::ManifestUnknown,
                format!("tag {reference} is not in repository {name}"),
            )
        })?
    };
    let media_type = repos.manifest(name, &digest)?.ok_or_else(|| {
        RegistryError::new(
            Code::ManifestUnknown,
            format!("manifest {digest} is not in repository {name}"),
        )
    })?;
    Ok((digest, media_type))
}

/// Whether the client's `Accept` header admits `media_type`. No header (or `*/*`)
/// admits everything: the bytes are served as pushed, never converted.
pub(crate) fn accepts(headers: &HeaderMap, media_type: &str) -> bool {
    let mut any = false;
    for v in headers.get_all(header::ACCEPT) {
        let Ok(v) = v.to_str() else { continue };
        for t in v.split(',') {
            any = true;
            let t = t.split(';').next().unwrap_or("").trim();
            if t == media_type || t == "*/*" || t == "application/*" || t == "application/json" {
                return true;
            }
        }
    }
    !any
}

fn get_manifest(
    reg: &Registry,
    name: &str,
    reference: &str,
    headers: &HeaderMap,
    head: bool,
) -> Result<Response> {
    check_name(name)?;
    let (digest, media_type) = resolve(reg, name, reference)?;
    check_accepts(headers, &digest, &media_type)?;
    let bytes = reg.store().read_blob(&digest)?;
    manifest_response(bytes, &digest, &media_type, head)
}

/// Refuse a manifest whose type the client's `Accept` does not list.
pub(crate) fn check_accepts(headers: &HeaderMap, digest: &Digest, media_type: &str) -> Result<()> {
    if accepts(headers, media_type) {
        return Ok(());
    }
    Err(RegistryError::new(
        Code::ManifestUnknown,
        format!(
            "manifest {digest} is a {media_type}, which the request's Accept header does not list"
        ),
    ))
}

/// The answer to a manifest GET or HEAD, from its bytes (`None`: missing).
pub(crate) fn manifest_response(
    bytes: Option<impl Into<bytes::Bytes>>,
    digest: &Digest,
    media_type: &str,
    head: bool,
) -> Result<Response> {
    let bytes: bytes::Bytes = bytes
        .ok_or_else(|| {
            RegistryError::new(
                Code::ManifestUnknown,
                format!("manifest {digest} is missing from the store"),
            )
        })?
        .into();
    let len = bytes.len();
    let mut r = if head {
        Body::empty().into_response()
    } else {
        bytes.into_response()
    };
    set(&mut r, "content-type", media_type);
    set(&mut r, "content-length", &len.to_string());
    set(&mut r, "docker-content-digest", &digest.to_string());
    set(&mut r, "etag", &format!("\"{digest}\""));
    Ok(r)
}

pub(crate) async fn read_limited(body: Body, limit: usize) -> Result<Vec<u8>> {
    let mut stream = body.into_data_stream();
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            RegistryError::new(
                Code::ManifestInvalid,
                format!("request body ended early: {e}"),
            )
        })?;
        if out.len() + chunk.len() > limit {
            return Err(RegistryError::new(
                Code::ManifestInvalid,
                format!("manifest is larger than this registry's limit of {limit} bytes"),
            )
            .with_status(StatusCode::PAYLOAD_TOO_LARGE));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// A manifest PUT as received and checked, before anything is stored.
pub(crate) struct PushedManifest {
    pub(crate) manifest: Manifest,
    pub(crate) media_type: String,
    pub(crate) bytes: Vec<u8>,
    pub(crate) algorithm: Algorithm,
    pub(crate) digest: Digest,
    /// The tags to set: the reference if it is one, and `?tag=` parameters.
    pub(crate) tags: Vec<String>,
    pub(crate) by_digest: bool,
}

/// Read and check a manifest PUT: name, reference, tags, size, syntax and digest.
pub(crate) async fn receive_manifest(
    reg: &Registry,
    name: &str,
    reference: &str,
    extra_tags: Vec<String>,
    req: Request,
) -> Result<PushedManifest> {
    check_name(name)?;
    let by_digest = reference.contains(':');
    let want = if by_digest {
        Some(parse_digest(reference)?)
    } else {
        berth_oci::validate_tag(reference)
            .map_err(|e| RegistryError::new(Code::ManifestInvalid, e.to_string()))?;
        None
    };
    // OCI 1.1: `PUT /manifests/<digest>?tag=<t>` tags the manifest too.
    let mut tags: Vec<String> = Vec::new();
    if !by_digest {
        tags.push(reference.to_string());
    }
    for t in extra_tags {
        berth_oci::validate_tag(&t).map_err(|e| {
            RegistryError::new(Code::ManifestInvalid, format!("query parameter tag: {e}"))
        })?;
        if !tags.contains(&t) {
            tags.push(t);
        }
    }
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if let Some(len) = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        && len > reg.inner.config.max_manifest_bytes
    {
        return Err(RegistryError::new(
            Code::ManifestInvalid,
            format!(
                "manifest of {len} bytes is larger than this registry's limit of {} bytes",
                reg.inner.config.max_manifest_bytes
            ),
        )
        .with_status(StatusCode::PAYLOAD_TOO_LARGE));
    }
    let bytes = read_limited(req.into_body(), reg.inner.config.max_manifest_bytes).await?;
    let (manifest, media_type) = Manifest::parse(&bytes, content_type.as_deref())
        .map_err(|e| RegistryError::new(Code::ManifestInvalid, e.to_string()))?;
    let algorithm = want.as_ref().map_or(Algorithm::Sha256, Digest::algorithm);
    let digest = Digest::of(algorithm, &bytes);
    if let Some(w) = &want
        && *w != digest
    {
        return Err(RegistryError::new(
            Code::DigestInvalid,
            format!("manifest was pushed as {w} but its content is {digest}"),
        ));
    }
    Ok(PushedManifest {
        manifest,
        media_type,
        bytes,
        algorithm,
        digest,
        tags,
        by_digest,
    })
}

async fn put_manifest(
    reg: &Registry,
    name: &str,
    reference: &str,
    extra_tags: Vec<String>,
    req: Request,
) -> Result<Response> {
    let pushed = Arc::new(receive_manifest(reg, name, reference, extra_tags, req).await?);
    let store = reg.store().clone();
    let (n, p) = (name.to_string(), pushed.clone());
    blocking(move || {
        let repos = store.repos();
        // Every reference is held (protected from gc) from its check until the manifest
        // is linked; the guards stamp the blobs when dropped, after the link.
        let hold = |r: &Descriptor, linked: bool, holder: &str, what: &str| {
            let guard = if linked {
                store.protect_blob(&r.digest)?
            } else {
                None
            };
            let Some(guard) = guard else {
                return Err(not_in_repository(r, &n, holder, what));
            };
            check_size(&r.digest, r.size, guard.size(), what)?;
            Ok(guard)
        };
        let mut guards = Vec::new();
        for r in p.manifest.blobs() {
            if !media_type::is_non_distributable(&r.media_type) {
                guards.push(hold(r, repos.has_blob(&n, &r.digest)?, "manifest", "blob")?);
            }
        }
        for r in &p.manifest.manifests {
            let linked = repos.manifest(&n, &r.digest)?.is_some();
            guards.push(hold(r, linked, "index", "manifest")?);
        }
        let (_, own) = store.put_blob_protected(p.algorithm, &p.bytes)?;
        guards.push(own);
        // The referrer record goes first: a crash between the two leaves a record whose
        // manifest is not linked, which listings skip, rather than a linked manifest that
        // never shows up as a referrer.
        if let Some((subject, descriptor)) = p.referrer() {
            repos.add_referrer(&n, &subject, &descriptor)?;
        }
        repos.link_manifest(&n, &p.digest, &p.media_type)?;
        for tag in &p.tags {
            repos.set_tag(&n, tag, &p.digest)?;
        }
        drop(guards);
        Ok(())
    })
    .await?;
    Ok(manifest_created(name, &pushed))
}

/// MANIFEST_BLOB_UNKNOWN for a reference `name` does not hold.
pub(crate) fn not_in_repository(
    r: &Descriptor,
    name: &str,
    holder: &str,
    what: &str,
) -> RegistryError {
    RegistryError::new(
        Code::ManifestBlobUnknown,
        format!(
            "{holder} references {what} {} which is not in repository {name}; push it first",
            r.digest
        ),
    )
    .with_detail(serde_json::json!({ "digest": r.digest }))
}

impl PushedManifest {
    /// The subject and the referrer record to file under it, if the manifest has one.
    pub(crate) fn referrer(&self) -> Option<(Digest, Descriptor)> {
        let subject = self.manifest.subject.as_ref()?;
        let descriptor = Descriptor {
            media_type: self.media_type.clone(),
            digest: self.digest.clone(),
            size: self.bytes.len() as u64,
            artifact_type: self.manifest.referrer_artifact_type(),
            annotations: self.manifest.annotations.clone(),
            platform: None,
        };
        Some((subject.digest.clone(), descriptor))
    }
}

/// 201 for a stored manifest.
pub(crate) fn manifest_created(name: &str, pushed: &PushedManifest) -> Response {
    let digest = &pushed.digest;
    let mut r = empty(StatusCode::CREATED);
    set(
        &mut r,
        "location",
        &format!("/v2/{name}/manifests/{digest}"),
    );
    set(&mut r, "docker-content-digest", &digest.to_string());
    if let Some(subject) = &pushed.manifest.subject {
        set(&mut r, "oci-subject", &subject.digest.to_string());
    }
    if pushed.by_digest {
        for tag in &pushed.tags {
            if let Ok(v) = HeaderValue::from_str(tag) {
                r.headers_mut().append("oci-tag", v);
            }
        }
    }
    r
}

/// A descriptor's size must be the stored blob's (image-spec: "size ... MUST" match;
/// a client that trusted it would read a truncated or overlong blob).
pub(crate) fn check_size(digest: &Digest, declared: u64, stored: u64, what: &str) -> Result<()> {
    if declared == stored {
        return Ok(());
    }
    Err(RegistryError::new(
        Code::ManifestInvalid,
        format!(
            "manifest gives {what} {digest} a size of {declared} bytes, but the stored {what} has {stored}; fix the descriptor's size"
        ),
    )
    .with_detail(serde_json::json!({ "digest": digest, "size": declared, "stored": stored })))
}

fn delete_manifest(reg: &Registry, name: &str, reference: &str) -> Result<Response> {
    check_name(name)?;
    let store = reg.store();
    let repos = store.repos();
    if !reference.contains(':') {
        berth_oci::validate_tag(reference)
            .map_err(|e| RegistryError::new(Code::ManifestInvalid, e.to_string()))?;
        if !repos.delete_tag(name, reference)? {
            return Err(RegistryError::new(
                Code::ManifestUnknown,
                format!("tag {reference} is not in repository {name}"),
            ));
        }
        return Ok(empty(StatusCode::ACCEPTED));
    }
    let digest = parse_digest(reference)?;
    if repos.manifest(name, &digest)?.is_none() {
        return Err(RegistryError::new(
            Code::ManifestUnknown,
            format!("manifest {digest} is not in repository {name}"),
        ));
    }
    if let Some(bytes) = store.read_blob(&digest)?
        && let Ok((m, _)) = Manifest::parse(&bytes, None)
        && let Some(subject) = m.subject
    {
        repos.remove_referrer(name, &subject.digest, &digest)?;
    }
    repos.unlink_manifest(name, &digest)?;
    Ok(empty(StatusCode::ACCEPTED))
}

/// A parsed `Range: bytes=…` against a blob of `size` bytes: `Ok(None)` means the whole
/// blob (no header, or one we may ignore: several ranges, another unit).
pub(crate) fn byte_range(headers: &HeaderMap, size: u64) -> Result<Option<(u64, u64)>> {
    let Some(v) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) else {
        return Ok(None);
    };
    let Some(spec) = v.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let unsatisfiable = || {
        RegistryError::new(
            Code::RangeInvalid,
            format!("range {v:?} is outside the blob's {size} bytes"),
        )
        .with_header(header::CONTENT_RANGE, format!("bytes */{size}"))
    };
    let (a, b) = spec.split_once('-').ok_or_else(unsatisfiable)?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", suffix) => {
            let n: u64 = suffix.parse().map_err(|_| unsatisfiable())?;
            if n == 0 {
                return Err(unsatisfiable());
            }
            (size.saturating_sub(n), size.saturating_sub(1))
        }
        (s, "") => (
            s.parse().map_err(|_| unsatisfiable())?,
            size.saturating_sub(1),
        ),
        (s, e) => {
            let s: u64 = s.parse().map_err(|_| unsatisfiable())?;
            let e: u64 = e.parse().map_err(|_| unsatisfiable())?;
            (s, e.min(size.saturating_sub(1)))
        }
    };
    if size == 0 || start >= size || end < start {
        return Err(unsatisfiable());
    }
    Ok(Some((start, end)))
}

async fn get_blob(
    reg: &Registry,
    name: &str,
    digest: &str,
    headers: &HeaderMap,
    head: bool,
) -> Result<Response> {
    check_name(name)?;
    let digest = parse_digest(digest)?;
    let store = reg.store().clone();
    let (n, d, h) = (name.to_string(), digest.clone(), headers.clone());
    // A HEAD or GET that finds the blob stamps it (a re-push relies on that HEAD).
    let found = blocking(move || {
        let repos = store.repos();
        if !repos.has_blob(&n, &d)? && repos.manifest(&n, &d)?.is_none() {
            return Ok(None);
        }
        let Some(guard) = store.protect_blob(&d)? else {
            return Ok(None);
        };
        let size = guard.size();
        let range = byte_range(&h, size)?;
        if head {
            return Ok(Some((None, size, range)));
        }
        let mut file = guard.into_file();
        if let Some((start, _)) = range {
            use std::io::Seek;
            file.seek(SeekFrom::Start(start))
                .map_err(|e| berth_store::Error::Io {
                    op: "seek blob",
                    path: store.blob_path(&d),
                    source: e,
                })?;
        }
        Ok(Some((Some(file), size, range)))
    })
    .await?;
    let Some((file, size, range)) = found else {
        return Err(blob_unknown(&digest, name));
    };
    let body = file.map(|file| {
        let len = range.map_or(size, |(s, e)| e - s + 1);
        let file = tokio::fs::File::from_std(file);
        let stream = tokio_util::io::ReaderStream::with_capacity(file.take(len), 1 << 20);
        Body::from_stream(stream)
    });
    Ok(blob_response(body, &digest, size, range))
}

pub(crate) fn blob_unknown(digest: &Digest, name: &str) -> RegistryError {
    RegistryError::new(
        Code::BlobUnknown,
        format!("blob {digest} is not in repository {name}"),
    )
}

/// The answer to a blob GET (`body`) or HEAD (`None`) of `range` of a blob of `size`.
pub(crate) fn blob_response(
    body: Option<Body>,
    digest: &Digest,
    size: u64,
    range: Option<(u64, u64)>,
) -> Response {
    let (status, len) = match range {
        None => (StatusCode::OK, size),
        Some((s, e)) => (StatusCode::PARTIAL_CONTENT, e - s + 1),
    };
    let mut r = body.unwrap_or_else(Body::empty).into_response();
    *r.status_mut() = status;
    set(&mut r, "content-length", &len.to_string());
    set(&mut r, "content-type", "application/octet-stream");
    set(&mut r, "docker-content-digest", &digest.to_string());
    set(&mut r, "accept-ranges", "bytes");
    set(&mut r, "etag", &format!("\"{digest}\""));
    if let Some((s, e)) = range {
        set(&mut r, "content-range", &format!("bytes {s}-{e}/{size}"));
    }
    r
}

/// Run blocking store work (file writes, fsync, rename, hashing, locks) on tokio's
/// blocking pool, so the async workers only move bytes between sockets and channels.
async fn blocking<T, F>(f: F) -> Result<T>
where
    F: FnOnce() -> Result<T> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        RegistryError::new(Code::Unavailable, format!("internal error: {e}"))
            .with_status(StatusCode::INTERNAL_SERVER_ERROR)
    })?
}

pub(crate) fn upload_accepted(status: StatusCode, name: &str, id: &str, offset: u64) -> Response {
    let mut r = empty(status);
    set(
        &mut r,
        "location",
        &format!("/v2/{name}/blobs/uploads/{id}"),
    );
    set(&mut r, "range", &format!("0-{}", offset.saturating_sub(1)));
    set(&mut r, "docker-upload-uuid", id);
    r
}

pub(crate) fn blob_created(name: &str, digest: &Digest) -> Response {
    let mut r = empty(StatusCode::CREATED);
    set(&mut r, "location", &format!("/v2/{name}/blobs/{digest}"));
    set(&mut r, "docker-content-digest", &digest.to_string());
    r
}

/// What becomes of an upload whose body did not arrive whole (the client went away).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OnBreak {
    /// Keep what arrived: a chunked upload resumes from the offset it reports.
    Keep,
    /// Remove the ingest: a single-POST upload has no session to resume.
    Discard,
}

/// Stream a request body into `w`. The chunks go through a small bounded channel to a
/// writer on the blocking pool, so no async worker writes or hashes and at most a few
/// chunks are in memory. `expect` is the length the request announced (its
/// `Content-Range`): a body of another length is undone and refused with 416. A body that
/// breaks off keeps or discards what arrived as `on_break` says, also when the client
/// goes away and this future is dropped. Returns the writer (none once discarded).
async fn write_body(
    store: &Store,
    w: Writer,
    body: Body,
    expect: Option<u64>,
    on_break: OnBreak,
) -> (Option<Writer>, Result<u64>) {
    enum End {
        Whole,
        Broken(String),
    }
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Option<bytes::Bytes>>(4);
    let store = store.clone();
    let task = tokio::task::spawn_blocking(move || {
        let mut w = w;
        let start = w.offset();
        let mut received = 0u64;
        let mut failed = None;
        let mut whole = false;
        while let Some(msg) = rx.blocking_recv() {
            let Some(chunk) = msg else {
                whole = true;
                break;
            };
            received += chunk.len() as u64;
            if failed.is_none() && expect.is_none_or(|e| received <= e) {
                failed = w.write_all(&chunk).err();
            }
        }
        if let Some(e) = failed {
            return (Some(w), Err(RegistryError::from(e)));
        }
        if !whole {
            let written = w.offset() - start;
            if on_break == OnBreak::Discard {
                let reference = w.reference().to_string();
                drop(w);
                let _ = store.abort(&reference);
                return (None, Ok(written));
            }
            return (Some(w), Ok(written));
        }
        if let Some(e) = expect
            && received != e
        {
            let undone = w.truncate(start).map_err(RegistryError::from);
            let err = undone.and(Err(RegistryError::new(
                Code::RangeInvalid,
                format!(
                    "Content-Range announces {e} bytes but the body has {received}; nothing of it was written"
                ),
            )));
            return (Some(w), err);
        }
        (Some(w), Ok(received))
    });
    let mut stream = body.into_data_stream();
    let mut end = End::Whole;
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(c) => {
                if tx.send(Some(c)).await.is_err() {
                    break;
                }
            }
            Err(e) => {
                end = End::Broken(e.to_string());
                break;
            }
        }
    }
    if matches!(end, End::Whole) {
        let _ = tx.send(None).await;
    }
    drop(tx);
    let (w, result) = match task.await {
        Ok(r) => r,
        Err(e) => {
            return (
                None,
                Err(
                    RegistryError::new(Code::Unavailable, format!("internal error: {e}"))
                        .with_status(StatusCode::INTERNAL_SERVER_ERROR),
                ),
            );
        }
    };
    match (end, result) {
        (End::Broken(e), Ok(n)) => (
            w,
            Err(RegistryError::new(
                Code::BlobUploadInvalid,
                format!(
                    "upload body ended early after {n} bytes: {e}; resume from the offset the upload reports"
                ),
            )),
        ),
        (_, r) => (w, r),
    }
}

fn upload_id_ok(id: &str) -> bool {
    uuid::Uuid::parse_str(id).is_ok()
}

pub(crate) fn upload_unknown(name: &str, id: &str) -> RegistryError {
    RegistryError::new(
        Code::BlobUploadUnknown,
        format!("upload {id} is not known for repository {name}"),
    )
}

/// Check an upload request's repository name and upload id.
pub(crate) fn check_upload(name: &str, id: &str) -> Result<()> {
    check_name(name)?;
    if !upload_id_ok(id) {
        return Err(upload_unknown(name, id));
    }
    Ok(())
}

async fn open_upload(reg: &Registry, name: &str, id: &str) -> Result<Writer> {
    check_upload(name, id)?;
    let unknown = || upload_unknown(name, id);
    let (reg2, n, i) = (reg.clone(), name.to_string(), id.to_string());
    blocking(move || {
        let store = reg2.store();
        match store.ingest(&i)? {
            Some(info) if info.owner.as_deref() == Some(n.as_str()) => {}
            _ => return Ok(None),
        }
        if let Some(w) = reg2.take_writer(&i) {
            return Ok(Some(w));
        }
        // After a restart: open from disk, re-hashing what was received.
        Ok(Some(store.writer(&i, Algorithm::Sha256)?))
    })
    .await?
    .ok_or_else(unknown)
}

/// Commit an upload's writer under `expected` and link the blob into `name`, with the
/// blob protected from gc until the link is written. A failed commit removes the ingest:
/// its data can never become this digest.
async fn commit_upload(
    reg: &Registry,
    name: &str,
    w: Writer,
    expected: Digest,
) -> Result<Response> {
    let (store, n, d) = (reg.store().clone(), name.to_string(), expected.clone());
    blocking(move || {
        let reference = w.reference().to_string();
        match w.commit_protected(Some(&d), None) {
            Ok((_, guard)) => {
                store.repos().link_blob(&n, &d)?;
                drop(guard);
                Ok(())
            }
            Err(e) => {
                let _ = store.abort(&reference);
                Err(e.into())
            }
        }
    })
    .await?;
    Ok(blob_created(name, &expected))
}

/// Link blob `digest` into `name` from a repository the client may read: `from` when
/// given, else any. Returns whether it was mounted.
async fn mount_blob(
    reg: &Registry,
    name: &str,
    digest: Digest,
    from: Option<String>,
    user: Option<&str>,
) -> Result<bool> {
    let (reg, n, user) = (reg.clone(), name.to_string(), user.map(str::to_string));
    blocking(move || {
        let store = reg.store();
        let repos = store.repos();
        let may_read = |repo: &str| {
            reg.inner
                .config
                .auth
                .as_ref()
                .is_none_or(|a| a.allowed(user.as_deref(), repo, Action::Pull))
        };
        let sources = match from {
            Some(f) if berth_oci::validate_repository(&f).is_ok() => vec![f],
            Some(_) => Vec::new(),
            None => repos.repositories()?,
        };
        for src in sources {
            if !may_read(&src) || !repos.has_blob(&src, &digest)? {
                continue;
            }
            let Some(guard) = store.protect_blob(&digest)? else {
                return Ok(false);
            };
            repos.link_blob(&n, &digest)?;
            drop(guard);
            return Ok(true);
        }
        Ok(false)
    })
    .await
}

async fn start_upload(
    reg: &Registry,
    name: &str,
    digest: Option<String>,
    mount: Option<String>,
    from: Option<String>,
    user: Option<&str>,
    req: Request,
) -> Result<Response> {
    check_name(name)?;
    let store = reg.store().clone();
    if let Some(mount) = &mount {
        let d = parse_digest(mount)?;
        if mount_blob(reg, name, d.clone(), from, user).await? {
            return Ok(blob_created(name, &d));
        }
        // Not mountable: fall through to an ordinary upload, as the spec says.
    }
    let id = uuid::Uuid::new_v4().to_string();
    if let Some(digest) = digest {
        let d = parse_digest(&digest)?;
        let (s, i, alg) = (store.clone(), id.clone(), d.algorithm());
        let w = blocking(move || Ok(s.writer(&i, alg)?)).await?;
        let (w, result) = write_body(&store, w, req.into_body(), None, OnBreak::Discard).await;
        let Some(w) = w else {
            return Err(result.err().unwrap_or_else(|| {
                RegistryError::new(Code::BlobUploadInvalid, "upload body ended early")
            }));
        };
        if let Err(e) = result {
            let s = store.clone();
            blocking(move || {
                drop(w);
                let _ = s.abort(&id);
                Ok(())
            })
            .await?;
            return Err(e);
        }
        return commit_upload(reg, name, w, d).await;
    }
    let (s, i, n) = (store.clone(), id.clone(), name.to_string());
    let w = blocking(move || {
        let w = s.writer(&i, Algorithm::Sha256)?;
        s.set_ingest_owner(&i, &n)?;
        Ok(w)
    })
    .await?;
    reg.put_writer(w);
    Ok(upload_accepted(StatusCode::ACCEPTED, name, &id, 0))
}

/// Check `Content-Range: <start>-<end>` against the upload's offset and the request's
/// `Content-Length`; returns the length the range announces, if it has an end.
pub(crate) fn check_content_range(
    headers: &HeaderMap,
    name: &str,
    id: &str,
    offset: u64,
) -> Result<Option<u64>> {
    let Some(v) = headers
        .get(header::CONTENT_RANGE)
        .and_then(|v| v.to_str().ok())
    else {
        return Ok(None);
    };
    let spec = v
        .trim()
        .trim_start_matches("bytes ")
        .trim_start_matches("bytes=");
    let mut parts = spec.split(['-', '/']).map(|s| s.trim().parse::<u64>().ok());
    let (start, end) = (parts.next().flatten(), parts.next().flatten());
    let refuse = |why: String| {
        RegistryError::new(Code::RangeInvalid, why)
            .with_header(header::LOCATION, format!("/v2/{name}/blobs/uploads/{id}"))
            .with_header(header::RANGE, format!("0-{}", offset.saturating_sub(1)))
    };
    if start != Some(offset) {
        return Err(refuse(format!(
            "chunk starts at {spec:?} but the upload has {offset} bytes; send the chunk that starts at byte {offset}"
        )));
    }
    let Some(end) = end else { return Ok(None) };
    if end < offset {
        return Err(refuse(format!(
            "Content-Range {spec:?} ends before it starts"
        )));
    }
    let announced = end - offset + 1;
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if let Some(len) = length
        && len != announced
    {
        return Err(refuse(format!(
            "Content-Range {spec:?} announces {announced} bytes but Content-Length is {len}"
        )));
    }
    Ok(Some(announced))
}

async fn patch_upload(reg: &Registry, name: &str, id: &str, req: Request) -> Result<Response> {
    let w = open_upload(reg, name, id).await?;
    let expect = match check_content_range(req.headers(), name, id, w.offset()) {
        Ok(e) => e,
        Err(e) => {
            reg.put_writer(w);
            return Err(e);
        }
    };
    let (w, result) = write_body(reg.store(), w, req.into_body(), expect, OnBreak::Keep).await;
    let offset = w.as_ref().map_or(0, Writer::offset);
    if let Some(w) = w {
        reg.put_writer(w);
    }
    result?;
    Ok(upload_accepted(StatusCode::ACCEPTED, name, id, offset))
}

async fn put_upload(
    reg: &Registry,
    name: &str,
    id: &str,
    digest: Option<String>,
    req: Request,
) -> Result<Response> {
    let mut w = open_upload(reg, name, id).await?;
    let d = match digest.as_deref().map(parse_digest) {
        Some(Ok(d)) => d,
        other => {
            reg.put_writer(w);
            return Err(match other {
                Some(Err(e)) => e,
                _ => RegistryError::new(
                    Code::DigestInvalid,
                    "the closing PUT of an upload needs ?digest=<digest>",
                ),
            });
        }
    };
    if d.algorithm() != Algorithm::Sha256 {
        // Writers hash with sha256 until the closing PUT names the algorithm; re-open
        // with the right one, re-hashing what is on disk.
        let (s, i, alg) = (reg.store().clone(), id.to_string(), d.algorithm());
        w = blocking(move || {
            drop(w);
            Ok(s.writer(&i, alg)?)
        })
        .await?;
    }
    let has_body = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v != "0");
    let mut expect = None;
    if has_body {
        match check_content_range(req.headers(), name, id, w.offset()) {
            Ok(e) => expect = e,
            Err(e) => {
                reg.put_writer(w);
                return Err(e);
            }
        }
    }
    let (w, result) = write_body(reg.store(), w, req.into_body(), expect, OnBreak::Keep).await;
    let Some(w) = w else {
        return Err(result.err().unwrap_or_else(|| {
            RegistryError::new(Code::BlobUploadInvalid, "upload body ended early")
        }));
    };
    if let Err(e) = result {
        reg.put_writer(w);
        return Err(e);
    }
    commit_upload(reg, name, w, d).await
}

fn referrers(
    reg: &Registry,
    name: &str,
    digest: &str,
    artifact_type: Option<String>,
) -> Result<Response> {
    check_name(name)?;
    let subject = parse_digest(digest)?;
    let repos = reg.store().repos();
    let mut list = repos.referrers(name, &subject)?;
    list.retain(|d| repos.manifest(name, &d.digest).ok().flatten().is_some());
    Ok(referrers_response(list, artifact_type))
}

/// The referrers index, filtered by `artifact_type`.
pub(crate) fn referrers_response(
    mut list: Vec<Descriptor>,
    artifact_type: Option<String>,
) -> Response {
    if let Some(t) = &artifact_type {
        list.retain(|d| d.artifact_type.as_deref() == Some(t.as_str()));
    }
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media_type::OCI_INDEX,
        "manifests": list,
    });
    let mut r = json_response(StatusCode::OK, &index);
    set(&mut r, "content-type", media_type::OCI_INDEX);
    if artifact_type.is_some() {
        set(&mut r, "oci-filters-applied", "artifactType");
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_with_nested_names() {
        assert!(matches!(parse_route("/v2/"), Some(Route::Base)));
        assert!(matches!(parse_route("/v2"), Some(Route::Base)));
        assert!(matches!(parse_route("/v2/_catalog"), Some(Route::Catalog)));
        assert!(matches!(parse_route("/v2/a/b/tags/list"), Some(Route::Tags(n)) if n == "a/b"));
        assert!(
            matches!(parse_route("/v2/a/manifests/x/manifests/latest"), Some(Route::Manifest(n, r)) if n == "a/manifests/x" && r == "latest")
        );
        assert!(
            matches!(parse_route("/v2/a/b/blobs/uploads/"), Some(Route::Upload(n, None)) if n == "a/b")
        );
        assert!(
            matches!(parse_route("/v2/a/blobs/uploads/123"), Some(Route::Upload(n, Some(i))) if n == "a" && i == "123")
        );
        assert!(
            matches!(parse_route("/v2/a/blobs/sha256:00"), Some(Route::Blob(n, d)) if n == "a" && d == "sha256:00")
        );
        assert!(
            matches!(parse_route("/v2/a/referrers/sha256:00"), Some(Route::Referrers(n, _)) if n == "a")
        );
        assert!(parse_route("/v3/a").is_none());
        assert!(parse_route("/v2/a/unknown/x").is_none());
    }

    #[test]
    fn ranges() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::RANGE, v.parse().unwrap());
            m
        };
        assert_eq!(byte_range(&HeaderMap::new(), 10).unwrap(), None);
        assert_eq!(byte_range(&h("bytes=0-3"), 10).unwrap(), Some((0, 3)));
        assert_eq!(byte_range(&h("bytes=5-"), 10).unwrap(), Some((5, 9)));
        assert_eq!(byte_range(&h("bytes=-4"), 10).unwrap(), Some((6, 9)));
        assert_eq!(byte_range(&h("bytes=8-100"), 10).unwrap(), Some((8, 9)));
        assert!(byte_range(&h("bytes=10-"), 10).is_err());
        assert!(byte_range(&h("bytes=5-2"), 10).is_err());
        assert_eq!(byte_range(&h("bytes=0-1,3-4"), 10).unwrap(), None);
    }

    #[test]
    fn query_decoding() {
        assert_eq!(
            query_param(Some("a=1&digest=sha256%3Aab"), "digest").as_deref(),
            Some("sha256:ab")
        );
        assert_eq!(query_param(Some("n=2"), "last"), None);
        assert_eq!(percent_decode("%2"), "%2");
    }
}
