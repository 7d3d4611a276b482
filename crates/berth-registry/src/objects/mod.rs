//! The registry on S3-compatible object storage (`[registry.storage] kind = "s3"`).
//!
//! Content and metadata live in one bucket under a prefix, in the local store's layout:
//!
//! ```text
//! <prefix>/blobs/<alg>/<hex>                                  committed content
//! <prefix>/repositories/<name>/_blobs/<alg>/<hex>             the repository holds this blob (empty)
//! <prefix>/repositories/<name>/_manifests/<alg>/<hex>         ... this manifest; holds its media type
//! <prefix>/repositories/<name>/_tags/<tag>                    tag -> manifest digest
//! <prefix>/repositories/<name>/_referrers/<alg>-<hex>/<alg>-<hex>   referrer descriptor (JSON)
//! <prefix>/uploads/<id>/state                                 upload session (JSON)
//! <prefix>/uploads/<id>/tail-<uuid>                           bytes not yet in a part
//! <prefix>/uploads/<id>/data                                  the multipart upload's target
//! ```
//!
//! Every write is one atomic object PUT; a replica keeps nothing between requests, so
//! any number of replicas serve one bucket and an upload started on one finishes on
//! another (see [`upload`]).

pub(crate) mod api;
mod copy;
mod gc;
pub(crate) mod upload;
mod verify;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use berth_oci::{Descriptor, Digest};
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path;
use object_store::{
    BackoffConfig, ClientOptions, ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutOptions,
    PutPayload, RetryConfig,
};
use serde::Deserialize;

use crate::error::{Code, RegistryError};

/// `[registry.storage]` with `kind = "s3"`: where the bucket is and how to sign.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct S3Settings {
    /// The bucket (it must exist).
    pub bucket: String,
    /// Key prefix inside the bucket (default: none), so several registries share one.
    #[serde(default)]
    pub prefix: String,
    /// The S3 endpoint URL, for servers other than AWS (`http://127.0.0.1:9000`).
    pub endpoint: Option<String>,
    /// The region (default `us-east-1`).
    pub region: Option<String>,
    /// An AWS shared-credentials file (`aws_access_key_id`, `aws_secret_access_key`,
    /// `aws_session_token` under `[profile]`); without it `AWS_ACCESS_KEY_ID` and
    /// `AWS_SECRET_ACCESS_KEY` (and `AWS_SESSION_TOKEN`) from the environment.
    pub credentials_file: Option<PathBuf>,
    /// The profile in `credentials_file` (default `default`).
    pub profile: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`); default: on with an `endpoint`,
    /// off for AWS (virtual-hosted style).
    pub path_style: Option<bool>,
    /// Answer blob GETs with a redirect (307) to a presigned URL of the object, so the
    /// bytes go from the bucket to the client directly. Clients must reach the endpoint.
    #[serde(default)]
    pub redirect: bool,
}

/// Why the bucket could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The settings are incomplete or contradictory.
    #[error("[registry.storage]: {0}")]
    Settings(String),
    /// The credentials file could not be read or lacks a key.
    #[error("S3 credentials file {path}: {message}")]
    Credentials {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The bucket did not answer as it should at start-up.
    #[error(
        "S3 bucket {bucket:?} at {endpoint}: {what} failed: {message}; check the endpoint, the bucket's name and the credentials"
    )]
    Unusable {
        /// The bucket.
        bucket: String,
        /// The endpoint (or "AWS").
        endpoint: String,
        /// The probe that failed.
        what: &'static str,
        /// The server's or the connection's error.
        message: String,
    },
}

/// A connection to the registry's bucket.
#[derive(Clone)]
pub struct ObjectStorage {
    inner: Arc<AmazonS3>,
    /// Requests streaming a body into the bucket at once: each holds up to a part
    /// ([`upload::PART`]) in memory, so this bounds the memory uploads take.
    receiving: Arc<tokio::sync::Semaphore>,
    redirect: bool,
    /// object_store's HTTP client on the bucket's options, for the requests it has no
    /// call for (UploadPartCopy with a range, see [`copy`]).
    copier: object_store::client::HttpClient,
    /// The largest object one CopyObject copies (5 GiB on S3).
    copy_limit: u64,
    prefix: String,
    bucket: String,
    endpoint: String,
}

impl std::fmt::Debug for ObjectStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectStorage")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

/// Read `[profile]`'s keys from an AWS shared-credentials file.
fn credentials_from_file(
    path: &std::path::Path,
    profile: &str,
) -> Result<(String, String, Option<String>), StorageError> {
    let err = |message: String| StorageError::Credentials {
        path: path.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let mut section = String::new();
    let (mut key, mut secret, mut token) = (None, None, None);
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            section = s.trim().trim_start_matches("profile ").trim().to_string();
            continue;
        }
        if section != profile {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let v = v.trim().to_string();
        match k.trim() {
            "aws_access_key_id" => key = Some(v),
            "aws_secret_access_key" => secret = Some(v),
            "aws_session_token" => token = Some(v),
            _ => {}
        }
    }
    match (key, secret) {
        (Some(k), Some(s)) => Ok((k, s, token)),
        _ => Err(err(format!(
            "profile [{profile}] needs aws_access_key_id and aws_secret_access_key"
        ))),
    }
}

impl ObjectStorage {
    /// Configure a client for `settings`, with the proxies and extra CAs of `network`.
    /// Nothing is sent yet: [`ObjectStorage::check`] does that.
    pub fn new(
        settings: &S3Settings,
        network: &berth_net::Network,
    ) -> Result<ObjectStorage, StorageError> {
        Self::with_env(settings, network, &|k| std::env::var(k).ok())
    }

    /// [`ObjectStorage::new`] with the environment given (for tests).
    pub fn with_env(
        settings: &S3Settings,
        network: &berth_net::Network,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<ObjectStorage, StorageError> {
        if settings.bucket.is_empty() {
            return Err(StorageError::Settings("bucket is required".into()));
        }
        let prefix = settings.prefix.trim_matches('/').to_string();
        let region = settings
            .region
            .clone()
            .unwrap_or_else(|| "us-east-1".into());
        let explicit = match (&settings.credentials_file, env("AWS_ACCESS_KEY_ID")) {
            (Some(file), _) => {
                let profile = settings.profile.as_deref().unwrap_or("default");
                Some(credentials_from_file(file, profile)?)
            }
            (None, Some(key)) => {
                let secret = env("AWS_SECRET_ACCESS_KEY").ok_or_else(|| {
                    StorageError::Settings(
                        "AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not".into(),
                    )
                })?;
                Some((key, secret, env("AWS_SESSION_TOKEN")))
            }
            (None, None) => None,
        };
        let mut builder = match &explicit {
            // On AWS, without keys: the SDK's chain (web identity, container, instance).
            None if settings.endpoint.is_none() => AmazonS3Builder::from_env(),
            None => {
                return Err(StorageError::Settings(
                    "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or credentials_file".into(),
                ));
            }
            Some(_) => AmazonS3Builder::new(),
        };
        if let Some((key, secret, token)) = explicit {
            builder = builder
                .with_access_key_id(key)
                .with_secret_access_key(secret);
            if let Some(t) = token {
                builder = builder.with_token(t);
            }
        }
        let mut options = ClientOptions::new()
            .with_connect_timeout(Duration::from_secs(10))
            .with_timeout_disabled();
        let endpoint = settings.endpoint.clone();
        let (scheme, host, port) = match &endpoint {
            Some(e) => {
                let url = e.trim_end_matches('/');
                let (scheme, rest) = url.split_once("://").ok_or_else(|| {
                    StorageError::Settings(format!(
                        "endpoint {e:?} is not a URL (http://host:port or https://host)"
                    ))
                })?;
                if scheme != "http" && scheme != "https" {
                    return Err(StorageError::Settings(format!(
                        "endpoint {e:?}: the scheme must be http or https"
                    )));
                }
                let authority = rest.split('/').next().unwrap_or(rest);
                let (host, port) = match authority.rsplit_once(':') {
                    Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => {
                        (h.to_string(), p.parse().unwrap_or(0))
                    }
                    _ => (authority.to_string(), 0),
                };
                let port = match (port, scheme) {
                    (0, "http") => 80,
                    (0, _) => 443,
                    (p, _) => p,
                };
                (scheme.to_string(), host, port)
            }
            None => (
                "https".into(),
                format!("{}.s3.{region}.amazonaws.com", settings.bucket),
                443,
            ),
        };
        let host_bare = host.trim_start_matches('[').trim_end_matches(']');
        if let Some(proxy) = network.proxies.proxy_for(&scheme, host_bare, port) {
            options = options.with_proxy_url(proxy);
        }
        let roots = network
            .extra_roots()
            .map_err(|e| StorageError::Settings(format!("[network] CA: {e}")))?;
        for pem in roots {
            let certs = object_store::Certificate::from_pem_bundle(&pem)
                .map_err(|e| StorageError::Settings(format!("[network] CA: {e}")))?;
            for c in certs {
                options = options.with_root_certificate(c);
            }
        }
        if scheme == "http" {
            options = options.with_allow_http(true);
        }
        let copier = {
            use object_store::client::{HttpConnector, ReqwestConnector};
            ReqwestConnector::default()
                .connect(&options)
                .map_err(|e| StorageError::Settings(e.to_string()))?
        };
        let copy_limit = copy_limit(env)?;
        let path_style = settings.path_style.unwrap_or(endpoint.is_some());
        builder = builder
            .with_bucket_name(&settings.bucket)
            .with_region(&region)
            .with_virtual_hosted_style_request(!path_style)
            .with_client_options(options)
            .with_retry(RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(100),
                    max_backoff: Duration::from_secs(2),
                    base: 2.0,
                },
                max_retries: 3,
                retry_timeout: Duration::from_secs(30),
            });
        if let Some(e) = &endpoint {
            builder = builder.with_endpoint(e.trim_end_matches('/'));
        }
        let inner = builder
            .build()
            .map_err(|e| StorageError::Settings(e.to_string()))?;
        Ok(ObjectStorage {
            inner: Arc::new(inner),
            receiving: Arc::new(tokio::sync::Semaphore::new(RECEIVING)),
            redirect: settings.redirect,
            copier,
            copy_limit,
            prefix,
            bucket: settings.bucket.clone(),
            endpoint: endpoint.unwrap_or_else(|| "AWS".into()),
        })
    }

    /// Make sure the bucket answers with these credentials: list under the prefix, and
    /// unless `read_only`, write and remove a probe object. Meant for start-up, so that
    /// a wrong key or an unreachable endpoint stops the registry with a clear error
    /// instead of failing its first push.
    pub async fn check(&self, read_only: bool) -> Result<(), StorageError> {
        let fail = |what: &'static str, e: object_store::Error| StorageError::Unusable {
            bucket: self.bucket.clone(),
            endpoint: self.endpoint.clone(),
            what,
            message: error_chain(&e),
        };
        self.inner
            .list_with_delimiter(Some(&self.key("")))
            .await
            .map_err(|e| fail("listing", e))?;
        if !read_only {
            let probe = self.key(&format!("_probe/{}", uuid::Uuid::new_v4()));
            let put = |mode: PutMode| {
                self.inner.put_opts(
                    &probe,
                    PutPayload::from_static(b"berth"),
                    PutOptions::from(mode),
                )
            };
            put(PutMode::Create)
                .await
                .map_err(|e| fail("writing a probe object", e))?;
            // Upload sessions rely on conditional writes (If-None-Match, If-Match): a
            // server that ignores them would let two replicas corrupt one upload.
            let again = put(PutMode::Create).await;
            let stale = put(PutMode::Update(object_store::UpdateVersion {
                e_tag: Some("\"0000\"".into()),
                version: None,
            }))
            .await;
            let _ = self.inner.delete(&probe).await;
            let refused = |r: &object_store::Result<object_store::PutResult>| {
                matches!(
                    r,
                    Err(object_store::Error::AlreadyExists { .. }
                        | object_store::Error::Precondition { .. })
                )
            };
            if !refused(&again) || !refused(&stale) {
                return Err(StorageError::Unusable {
                    bucket: self.bucket.clone(),
                    endpoint: self.endpoint.clone(),
                    what: "a conditional write",
                    message: format!(
                        "the server does not refuse a PUT with If-None-Match: * on an existing object ({}) or with a stale If-Match ({}); upload sessions need both",
                        result_word(&again),
                        result_word(&stale)
                    ),
                });
            }
        }
        Ok(())
    }

    /// A presigned GET of blob `d`, valid for `PRESIGNED_FOR`, when redirects are on.
    pub(crate) async fn blob_redirect(&self, d: &Digest) -> Result<Option<String>, RegistryError> {
        if !self.redirect {
            return Ok(None);
        }
        use object_store::signer::{Method, Signer};
        let url = self
            .inner
            .signed_url(Method::GET, &self.blob_key(d), PRESIGNED_FOR)
            .await
            .map_err(failure)?;
        Ok(Some(url.to_string()))
    }

    /// The bucket's name.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    fn key(&self, rel: &str) -> Path {
        if self.prefix.is_empty() {
            Path::from(rel)
        } else if rel.is_empty() {
            Path::from(self.prefix.as_str())
        } else {
            Path::from(format!("{}/{rel}", self.prefix))
        }
    }

    /// A key relative to the prefix, back from a listing.
    fn relative<'a>(&self, p: &'a Path) -> &'a str {
        let s = p.as_ref();
        if self.prefix.is_empty() {
            s
        } else {
            s.strip_prefix(self.prefix.as_str())
                .and_then(|r| r.strip_prefix('/'))
                .unwrap_or(s)
        }
    }

    fn blob_key(&self, d: &Digest) -> Path {
        self.key(&format!("blobs/{}/{}", d.algorithm().as_str(), d.hex()))
    }

    fn repo_key(&self, name: &str, rest: &str) -> Path {
        self.key(&format!("repositories/{name}/{rest}"))
    }

    fn link_key(&self, name: &str, kind: &str, d: &Digest) -> Path {
        self.repo_key(
            name,
            &format!("_{kind}/{}/{}", d.algorithm().as_str(), d.hex()),
        )
    }

    /// Read a whole small object; `None` when there is none.
    async fn read(&self, key: &Path) -> Result<Option<Bytes>, RegistryError> {
        match self.inner.get(key).await {
            Ok(r) => Ok(Some(r.bytes().await.map_err(failure)?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(failure(e)),
        }
    }

    async fn head(&self, key: &Path) -> Result<Option<ObjectMeta>, RegistryError> {
        match self.inner.head(key).await {
            Ok(m) => Ok(Some(m)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(failure(e)),
        }
    }

    async fn write(&self, key: &Path, data: impl Into<Bytes>) -> Result<(), RegistryError> {
        self.inner
            .put(key, PutPayload::from_bytes(data.into()))
            .await
            .map_err(failure)?;
        Ok(())
    }

    /// Remove an object; whether it was there.
    async fn remove(&self, key: &Path) -> Result<bool, RegistryError> {
        if self.head(key).await?.is_none() {
            return Ok(false);
        }
        match self.inner.delete(key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(true),
            Err(e) => Err(failure(e)),
        }
    }

    /// Every object under `rel` (recursively).
    async fn list(&self, rel: &str) -> Result<Vec<ObjectMeta>, RegistryError> {
        let prefix = self.key(rel);
        self.inner
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(failure)
    }

    /// Remove every object under `rel`.
    async fn remove_all(&self, rel: &str) -> Result<(), RegistryError> {
        let objects = self.list(rel).await?;
        let paths = futures_util::stream::iter(objects.into_iter().map(|m| Ok(m.location))).boxed();
        let mut deleted = self.inner.delete_stream(paths);
        while let Some(r) = deleted.next().await {
            match r {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(failure(e)),
            }
        }
        Ok(())
    }

    // --- the repository view, as berth_store::Repos gives it on disk ---

    pub(crate) async fn blob_size(&self, d: &Digest) -> Result<Option<u64>, RegistryError> {
        Ok(self.head(&self.blob_key(d)).await?.map(|m| m.size))
    }

    pub(crate) async fn has_blob(&self, name: &str, d: &Digest) -> Result<bool, RegistryError> {
        Ok(self.head(&self.link_key(name, "blobs", d)).await?.is_some())
    }

    pub(crate) async fn link_blob(&self, name: &str, d: &Digest) -> Result<(), RegistryError> {
        self.write(&self.link_key(name, "blobs", d), Bytes::new())
            .await
    }

    pub(crate) async fn unlink_blob(&self, name: &str, d: &Digest) -> Result<bool, RegistryError> {
        self.remove(&self.link_key(name, "blobs", d)).await
    }

    /// The media type of manifest `d` in `name`, if linked.
    pub(crate) async fn manifest(
        &self,
        name: &str,
        d: &Digest,
    ) -> Result<Option<String>, RegistryError> {
        Ok(self
            .read(&self.link_key(name, "manifests", d))
            .await?
            .map(|b| String::from_utf8_lossy(&b).trim().to_string()))
    }

    pub(crate) async fn link_manifest(
        &self,
        name: &str,
        d: &Digest,
        media_type: &str,
    ) -> Result<(), RegistryError> {
        self.write(
            &self.link_key(name, "manifests", d),
            Bytes::from(media_type.to_string()),
        )
        .await
    }

    pub(crate) async fn unlink_manifest(
        &self,
        name: &str,
        d: &Digest,
    ) -> Result<bool, RegistryError> {
        self.remove(&self.link_key(name, "manifests", d)).await
    }

    pub(crate) async fn has_manifests(&self, name: &str) -> Result<bool, RegistryError> {
        let prefix = self.repo_key(name, "_manifests");
        let first = self.inner.list(Some(&prefix)).next().await;
        match first {
            None => Ok(false),
            Some(Ok(_)) => Ok(true),
            Some(Err(e)) => Err(failure(e)),
        }
    }

    pub(crate) async fn tag(&self, name: &str, tag: &str) -> Result<Option<Digest>, RegistryError> {
        let Some(b) = self
            .read(&self.repo_key(name, &format!("_tags/{tag}")))
            .await?
        else {
            return Ok(None);
        };
        let s = String::from_utf8_lossy(&b);
        s.trim().parse().map(Some).map_err(|e| {
            failure_msg(format!(
                "tag {tag} of {name} holds no digest ({e}); push the tag again"
            ))
        })
    }

    pub(crate) async fn set_tag(
        &self,
        name: &str,
        tag: &str,
        d: &Digest,
    ) -> Result<(), RegistryError> {
        self.write(
            &self.repo_key(name, &format!("_tags/{tag}")),
            Bytes::from(d.to_string()),
        )
        .await
    }

    pub(crate) async fn delete_tag(&self, name: &str, tag: &str) -> Result<bool, RegistryError> {
        self.remove(&self.repo_key(name, &format!("_tags/{tag}")))
            .await
    }

    /// The tags of `name`, sorted.
    pub(crate) async fn tags(&self, name: &str) -> Result<Vec<String>, RegistryError> {
        let objects = self.list(&format!("repositories/{name}/_tags")).await?;
        let mut tags: Vec<String> = objects
            .iter()
            .filter_map(|m| m.location.filename().map(str::to_string))
            .collect();
        tags.sort();
        Ok(tags)
    }

    /// Every repository that has a link, a tag or a referrer, sorted.
    pub(crate) async fn repositories(&self) -> Result<Vec<String>, RegistryError> {
        let objects = self.list("repositories").await?;
        let mut names = std::collections::BTreeSet::new();
        for m in &objects {
            let rel = self.relative(&m.location);
            let Some(rest) = rel.strip_prefix("repositories/") else {
                continue;
            };
            if let Some((name, _)) = rest.split_once("/_") {
                names.insert(name.to_string());
            }
        }
        Ok(names.into_iter().collect())
    }

    fn referrer_key(&self, name: &str, subject: &Digest, d: &Digest) -> Path {
        self.repo_key(
            name,
            &format!(
                "_referrers/{}-{}/{}-{}",
                subject.algorithm().as_str(),
                subject.hex(),
                d.algorithm().as_str(),
                d.hex()
            ),
        )
    }

    pub(crate) async fn add_referrer(
        &self,
        name: &str,
        subject: &Digest,
        descriptor: &Descriptor,
    ) -> Result<(), RegistryError> {
        let json = serde_json::to_vec(descriptor).expect("descriptor json");
        self.write(
            &self.referrer_key(name, subject, &descriptor.digest),
            Bytes::from(json),
        )
        .await
    }

    pub(crate) async fn remove_referrer(
        &self,
        name: &str,
        subject: &Digest,
        d: &Digest,
    ) -> Result<(), RegistryError> {
        self.remove(&self.referrer_key(name, subject, d)).await?;
        Ok(())
    }

    pub(crate) async fn referrers(
        &self,
        name: &str,
        subject: &Digest,
    ) -> Result<Vec<Descriptor>, RegistryError> {
        let dir = format!(
            "repositories/{name}/_referrers/{}-{}",
            subject.algorithm().as_str(),
            subject.hex()
        );
        let mut out = Vec::new();
        for m in self.list(&dir).await? {
            if let Some(b) = self.read(&m.location).await?
                && let Ok(d) = serde_json::from_slice::<Descriptor>(&b)
            {
                out.push(d);
            }
        }
        out.sort_by(|a, b| a.digest.cmp(&b.digest));
        Ok(out)
    }

    pub(crate) async fn read_blob(&self, d: &Digest) -> Result<Option<Bytes>, RegistryError> {
        self.read(&self.blob_key(d)).await
    }

    /// Store small content (a manifest) under its digest.
    pub(crate) async fn put_blob(&self, d: &Digest, data: Bytes) -> Result<(), RegistryError> {
        self.write(&self.blob_key(d), data).await
    }
}

/// The largest object one CopyObject copies: S3's 5 GiB, or less from
/// `BERTH_S3_COPY_LIMIT` (bytes, at least 5 MiB) for a store with a lower limit, and for
/// tests that take the multipart copy without moving 5 GiB.
fn copy_limit(env: &dyn Fn(&str) -> Option<String>) -> Result<u64, StorageError> {
    let Some(v) = env("BERTH_S3_COPY_LIMIT") else {
        return Ok(copy::SINGLE_COPY_MAX);
    };
    match v.trim().parse::<u64>() {
        Ok(n) if (copy::MIN_PART..=copy::SINGLE_COPY_MAX).contains(&n) => Ok(n),
        _ => Err(StorageError::Settings(format!(
            "BERTH_S3_COPY_LIMIT={v:?}: want a number of bytes from {} (5 MiB) to {} (5 GiB)",
            copy::MIN_PART,
            copy::SINGLE_COPY_MAX
        ))),
    }
}

/// The receive budget of a replica, in first-size parts ([`upload::PART`]): 64 × 8 MiB
/// = 512 MiB; a request takes as many as its part size needs (one, until its upload has
/// 1000 parts), and further ones wait before their body is read.
const RECEIVING: usize = 64;

/// How long a redirect's presigned URL is valid: long enough for a slow client to
/// start, short enough not to be a standing credential.
const PRESIGNED_FOR: Duration = Duration::from_secs(20 * 60);

fn result_word(r: &object_store::Result<object_store::PutResult>) -> String {
    match r {
        Ok(_) => "it succeeded".into(),
        Err(e) => error_chain(e),
    }
}

/// An error and its sources, one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

fn failure_msg(message: String) -> RegistryError {
    tracing::error!(error = %message, "object storage failure");
    RegistryError::new(
        Code::Unavailable,
        format!("object storage failure: {message}"),
    )
    .with_status(axum::http::StatusCode::INTERNAL_SERVER_ERROR)
}

/// An object-storage error the client cannot fix: 500, logged.
pub(crate) fn failure(e: object_store::Error) -> RegistryError {
    failure_msg(error_chain(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_file_profiles() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("credentials");
        std::fs::write(
            &f,
            "[default]\naws_access_key_id = AK\naws_secret_access_key=SK\n\n[profile ci]\naws_access_key_id=CI\naws_secret_access_key=CS\naws_session_token=T\n",
        )
        .unwrap();
        assert_eq!(
            credentials_from_file(&f, "default").unwrap(),
            ("AK".into(), "SK".into(), None)
        );
        assert_eq!(
            credentials_from_file(&f, "ci").unwrap(),
            ("CI".into(), "CS".into(), Some("T".into()))
        );
        let e = credentials_from_file(&f, "prod").unwrap_err().to_string();
        assert!(e.contains("[prod]") && e.contains("credentials"), "{e}");
        let e = credentials_from_file(&dir.path().join("none"), "default")
            .unwrap_err()
            .to_string();
        assert!(e.contains("none"), "{e}");
    }

    #[test]
    fn settings_are_checked_before_any_request() {
        let net = berth_net::Network::default();
        let none = |_: &str| None;
        let s = S3Settings {
            bucket: "b".into(),
            endpoint: Some("http://127.0.0.1:9".into()),
            ..Default::default()
        };
        let e = ObjectStorage::with_env(&s, &net, &none)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no S3 credentials"), "{e}");
        let env = |k: &str| (k == "AWS_ACCESS_KEY_ID").then(|| "AK".to_string());
        let e = ObjectStorage::with_env(&s, &net, &env)
            .unwrap_err()
            .to_string();
        assert!(e.contains("AWS_SECRET_ACCESS_KEY"), "{e}");
        let bad = S3Settings {
            endpoint: Some("127.0.0.1:9000".into()),
            ..s.clone()
        };
        let env = |k: &str| k.starts_with("AWS_").then(|| k.to_string());
        let e = ObjectStorage::with_env(&bad, &net, &env)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a URL"), "{e}");
        let empty = S3Settings::default();
        let e = ObjectStorage::with_env(&empty, &net, &env)
            .unwrap_err()
            .to_string();
        assert!(e.contains("bucket"), "{e}");
        let ok = ObjectStorage::with_env(&s, &net, &env).unwrap();
        assert_eq!(ok.key("blobs").as_ref(), "blobs");
        assert_eq!(ok.copy_limit, 5 << 30);
        for (v, good) in [
            ("6291456", true),
            ("1000", false),
            ("6GiB", false),
            ("6442450944", false),
        ] {
            let env = |k: &str| match k {
                "BERTH_S3_COPY_LIMIT" => Some(v.to_string()),
                k => k.starts_with("AWS_").then(|| k.to_string()),
            };
            match ObjectStorage::with_env(&s, &net, &env) {
                Ok(os) => assert!(good && os.copy_limit == 6 << 20, "{v}"),
                Err(e) => assert!(
                    !good && e.to_string().contains("BERTH_S3_COPY_LIMIT"),
                    "{v}: {e}"
                ),
            }
        }
        let p = S3Settings {
            prefix: "/reg/one/".into(),
            ..s
        };
        let ok = ObjectStorage::with_env(&p, &net, &env).unwrap();
        assert_eq!(ok.key("blobs/x").as_ref(), "reg/one/blobs/x");
        assert_eq!(ok.relative(&ok.key("blobs/x")), "blobs/x");
    }
}
