//! The `/v2/` API on object storage: the same routes, checks and answers as on the
//! local store (`routes.rs`), with the bucket's objects in place of files.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::Response;
use berth_oci::{Digest, media_type};
use futures_util::{StreamExt, TryStreamExt};
use object_store::{GetOptions, GetRange, ObjectStore};

use super::ObjectStorage;
use super::upload::Session;
use crate::auth::Action;
use crate::error::{Code, RegistryError};
use crate::routes::{
    Registry, Route, blob_created, blob_response, blob_unknown, byte_range, check_accepts,
    check_content_range, check_name, check_size, check_upload, empty, json_response, link_next,
    manifest_created, manifest_response, not_in_repository, paginate, parse_digest, query_param,
    query_params, receive_manifest, referrers_response, set, upload_accepted, upload_unknown,
};

type Result<T, E = RegistryError> = std::result::Result<T, E>;

/// Serve `route` from `os` (authorization, read-only and delete checks are done).
pub(crate) async fn handle(
    reg: &Registry,
    os: &ObjectStorage,
    route: Route,
    method: Method,
    user: Option<String>,
    query: Option<String>,
    req: Request,
) -> Result<Response> {
    let q = |k: &str| query_param(query.as_deref(), k);
    match (route, method) {
        (Route::Base, Method::GET | Method::HEAD) => {
            Ok(json_response(StatusCode::OK, &serde_json::json!({})))
        }
        (Route::Catalog, Method::GET) => {
            let mut repos = os.repositories().await?;
            if let Some(auth) = &reg.config().auth {
                repos.retain(|r| auth.allowed(user.as_deref(), r, Action::Pull));
            }
            let (page, more) = paginate(repos, q("n"), q("last"))?;
            let mut r = json_response(StatusCode::OK, &serde_json::json!({ "repositories": page }));
            link_next(&mut r, "/v2/_catalog", &page, more);
            Ok(r)
        }
        (Route::Tags(name), Method::GET) => {
            check_name(&name)?;
            let tags = os.tags(&name).await?;
            if tags.is_empty() && !os.has_manifests(&name).await? {
                return Err(RegistryError::new(
                    Code::NameUnknown,
                    format!("repository {name} is not known to this registry"),
                ));
            }
            let (page, more) = paginate(tags, q("n"), q("last"))?;
            let mut r = json_response(
                StatusCode::OK,
                &serde_json::json!({ "name": name, "tags": page }),
            );
            link_next(&mut r, &format!("/v2/{name}/tags/list"), &page, more);
            Ok(r)
        }
        (Route::Manifest(name, reference), m @ (Method::GET | Method::HEAD)) => {
            check_name(&name)?;
            let (digest, media_type) = resolve(os, &name, &reference).await?;
            check_accepts(req.headers(), &digest, &media_type)?;
            let bytes = os.read_blob(&digest).await?;
            manifest_response(bytes, &digest, &media_type, m == Method::HEAD)
        }
        (Route::Manifest(name, reference), Method::PUT) => {
            let tags = query_params(query.as_deref(), "tag");
            put_manifest(reg, os, &name, &reference, tags, req).await
        }
        (Route::Manifest(name, reference), Method::DELETE) => {
            delete_manifest(os, &name, &reference).await
        }
        (Route::Blob(name, digest), m @ (Method::GET | Method::HEAD)) => {
            get_blob(os, &name, &digest, req.headers(), m == Method::HEAD).await
        }
        (Route::Blob(name, digest), Method::DELETE) => {
            check_name(&name)?;
            let d = parse_digest(&digest)?;
            if !os.unlink_blob(&name, &d).await? {
                return Err(blob_unknown(&d, &name));
            }
            Ok(empty(StatusCode::ACCEPTED))
        }
        (Route::Upload(name, None), Method::POST) => {
            start_upload(
                reg,
                os,
                &name,
                q("digest"),
                q("mount"),
                q("from"),
                user,
                req,
            )
            .await
        }
        (Route::Upload(name, Some(id)), Method::PATCH) => {
            let mut s = open(os, &name, &id).await?;
            let expect = check_content_range(req.headers(), &name, &id, s.received())?;
            receive(os, &mut s, req.into_body(), expect, true).await?;
            os.save(&mut s).await?;
            Ok(upload_accepted(
                StatusCode::ACCEPTED,
                &name,
                &id,
                s.received(),
            ))
        }
        (Route::Upload(name, Some(id)), Method::PUT) => {
            let mut s = open(os, &name, &id).await?;
            let d = parse_digest(q("digest").as_deref().ok_or_else(|| {
                RegistryError::new(
                    Code::DigestInvalid,
                    "the closing PUT of an upload needs ?digest=<digest>",
                )
            })?)?;
            let has_body = req
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v != "0");
            let expect = if has_body {
                check_content_range(req.headers(), &name, &id, s.received())?
            } else {
                None
            };
            receive(os, &mut s, req.into_body(), expect, true).await?;
            os.commit_upload(s, &d).await?;
            link_committed(os, &name, &d).await?;
            Ok(blob_created(&name, &d))
        }
        (Route::Upload(name, Some(id)), Method::GET) => {
            let s = open(os, &name, &id).await?;
            Ok(upload_accepted(
                StatusCode::NO_CONTENT,
                &name,
                &id,
                s.received(),
            ))
        }
        (Route::Upload(name, Some(id)), Method::DELETE) => {
            let s = open(os, &name, &id).await?;
            os.cancel(s).await;
            Ok(empty(StatusCode::NO_CONTENT))
        }
        (Route::Referrers(name, digest), Method::GET) => {
            check_name(&name)?;
            let subject = parse_digest(&digest)?;
            let mut list = Vec::new();
            for d in os.referrers(&name, &subject).await? {
                if os.manifest(&name, &d.digest).await?.is_some() {
                    list.push(d);
                }
            }
            Ok(referrers_response(list, q("artifactType")))
        }
        (_, m) => Err(RegistryError::new(
            Code::Unsupported,
            format!("method {m} is not supported on this endpoint"),
        )),
    }
}

/// Link a committed blob into `name`, held against a concurrent gc.
async fn link_committed(os: &ObjectStorage, name: &str, d: &Digest) -> Result<()> {
    os.link_blob(name, d).await?;
    if os.hold(d).await? {
        return Ok(());
    }
    os.unlink_blob(name, d).await?;
    Err(RegistryError::new(
        Code::Unavailable,
        format!("{d} was removed by a garbage collection as this upload finished; push it again"),
    )
    .with_status(StatusCode::SERVICE_UNAVAILABLE)
    .with_header(header::RETRY_AFTER, "1"))
}

async fn open(os: &ObjectStorage, name: &str, id: &str) -> Result<Session> {
    check_upload(name, id)?;
    os.open_upload(name, id)
        .await?
        .ok_or_else(|| upload_unknown(name, id))
}

/// Stream a request body into session `s`. A body that breaks off keeps what arrived
/// when `keep` (the session is saved, so the client resumes from its offset); a body
/// that is not the length its `Content-Range` announced is refused with nothing saved.
async fn receive(
    os: &ObjectStorage,
    s: &mut Session,
    body: Body,
    expect: Option<u64>,
    keep: bool,
) -> Result<()> {
    os.reserve(s).await?;
    let result = receive_body(os, s, body, expect, keep).await;
    s.release();
    result
}

async fn receive_body(
    os: &ObjectStorage,
    s: &mut Session,
    body: Body,
    expect: Option<u64>,
    keep: bool,
) -> Result<()> {
    let start = s.received();
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(c) => os.append(s, &c).await?,
            Err(e) => {
                if keep {
                    os.save(s).await?;
                }
                return Err(RegistryError::new(
                    Code::BlobUploadInvalid,
                    format!(
                        "upload body ended early after {} bytes: {e}; resume from the offset the upload reports",
                        s.received() - start
                    ),
                ));
            }
        }
    }
    let received = s.received() - start;
    if let Some(e) = expect
        && received != e
    {
        return Err(RegistryError::new(
            Code::RangeInvalid,
            format!(
                "Content-Range announces {e} bytes but the body has {received}; nothing of it was written"
            ),
        ));
    }
    Ok(())
}

/// Link `digest` into `name` from a repository the client may read: `from` when given,
/// else any. Returns whether it was mounted.
async fn mount(
    reg: &Registry,
    os: &ObjectStorage,
    name: &str,
    digest: &Digest,
    from: Option<String>,
    user: Option<&str>,
) -> Result<bool> {
    let may_read = |repo: &str| {
        reg.config()
            .auth
            .as_ref()
            .is_none_or(|a| a.allowed(user, repo, Action::Pull))
    };
    let sources = match from {
        Some(f) if berth_oci::validate_repository(&f).is_ok() => vec![f],
        Some(_) => Vec::new(),
        None => os.repositories().await?,
    };
    for src in sources {
        if !may_read(&src) || !os.has_blob(&src, digest).await? {
            continue;
        }
        if os.blob_size(digest).await?.is_none() {
            return Ok(false);
        }
        os.link_blob(name, digest).await?;
        if !os.hold(digest).await? {
            // A gc is removing it: an ordinary upload instead.
            os.unlink_blob(name, digest).await?;
            return Ok(false);
        }
        return Ok(true);
    }
    Ok(false)
}

#[allow(clippy::too_many_arguments)]
async fn start_upload(
    reg: &Registry,
    os: &ObjectStorage,
    name: &str,
    digest: Option<String>,
    mount_digest: Option<String>,
    from: Option<String>,
    user: Option<String>,
    req: Request,
) -> Result<Response> {
    check_name(name)?;
    if let Some(m) = &mount_digest {
        let d = parse_digest(m)?;
        if mount(reg, os, name, &d, from, user.as_deref()).await? {
            return Ok(blob_created(name, &d));
        }
        // Not mountable: fall through to an ordinary upload, as the spec says.
    }
    if let Some(digest) = digest {
        let d = parse_digest(&digest)?;
        let mut s = os.start_upload(name, true).await?;
        if let Err(e) = receive(os, &mut s, req.into_body(), None, false).await {
            os.cancel(s).await;
            return Err(e);
        }
        os.commit_upload(s, &d).await?;
        link_committed(os, name, &d).await?;
        return Ok(blob_created(name, &d));
    }
    let s = os.start_upload(name, false).await?;
    Ok(upload_accepted(StatusCode::ACCEPTED, name, s.id(), 0))
}

/// Resolve a tag or digest to a manifest digest and its media type in `name`.
async fn resolve(os: &ObjectStorage, name: &str, reference: &str) -> Result<(Digest, String)> {
    let digest = if reference.contains(':') {
        parse_digest(reference)?
    } else {
        berth_oci::validate_tag(reference)
            .map_err(|e| RegistryError::new(Code::ManifestInvalid, e.to_string()))?;
        os.tag(name, reference).await?.ok_or_else(|| {
            RegistryError::new(
                Code::ManifestUnknown,
                format!("tag {reference} is not in repository {name}"),
            )
        })?
    };
    let media_type = os.manifest(name, &digest).await?.ok_or_else(|| {
        RegistryError::new(
            Code::ManifestUnknown,
            format!("manifest {digest} is not in repository {name}"),
        )
    })?;
    Ok((digest, media_type))
}

async fn put_manifest(
    reg: &Registry,
    os: &ObjectStorage,
    name: &str,
    reference: &str,
    extra_tags: Vec<String>,
    req: Request,
) -> Result<Response> {
    let p = receive_manifest(reg, name, reference, extra_tags, req).await?;
    for r in p.manifest.blobs() {
        if media_type::is_non_distributable(&r.media_type) {
            continue;
        }
        let size = match os.has_blob(name, &r.digest).await? {
            true => os.blob_size(&r.digest).await?,
            false => None,
        };
        let size = size.ok_or_else(|| not_in_repository(r, name, "manifest", "blob"))?;
        check_size(&r.digest, r.size, size, "blob")?;
    }
    for r in &p.manifest.manifests {
        let size = match os.manifest(name, &r.digest).await? {
            Some(_) => os.blob_size(&r.digest).await?,
            None => None,
        };
        let size = size.ok_or_else(|| not_in_repository(r, name, "index", "manifest"))?;
        check_size(&r.digest, r.size, size, "manifest")?;
    }
    os.put_blob(&p.digest, bytes::Bytes::from(p.bytes.clone()))
        .await?;
    // The referrer record goes first, as on disk: a record whose manifest is not linked
    // is skipped by listings.
    if let Some((subject, descriptor)) = p.referrer() {
        os.add_referrer(name, &subject, &descriptor).await?;
    }
    os.link_manifest(name, &p.digest, &p.media_type).await?;
    // Each reference (and the manifest itself) is held against a concurrent gc: a
    // blob a gc is removing makes the push fail rather than answer 201 and break.
    let held = p
        .manifest
        .blobs()
        .filter(|r| !media_type::is_non_distributable(&r.media_type))
        .chain(p.manifest.manifests.iter())
        .map(|r| r.digest.clone())
        .chain([p.digest.clone()]);
    for d in held {
        if !os.hold(&d).await? {
            os.unlink_manifest(name, &p.digest).await?;
            if let Some((subject, _)) = p.referrer() {
                os.remove_referrer(name, &subject, &p.digest).await?;
            }
            return Err(RegistryError::new(
                Code::ManifestBlobUnknown,
                format!(
                    "{d} was removed by a garbage collection while this manifest was pushed; push it again"
                ),
            )
            .with_detail(serde_json::json!({ "digest": d })));
        }
    }
    for tag in &p.tags {
        os.set_tag(name, tag, &p.digest).await?;
    }
    Ok(manifest_created(name, &p))
}

async fn delete_manifest(os: &ObjectStorage, name: &str, reference: &str) -> Result<Response> {
    check_name(name)?;
    if !reference.contains(':') {
        berth_oci::validate_tag(reference)
            .map_err(|e| RegistryError::new(Code::ManifestInvalid, e.to_string()))?;
        if !os.delete_tag(name, reference).await? {
            return Err(RegistryError::new(
                Code::ManifestUnknown,
                format!("tag {reference} is not in repository {name}"),
            ));
        }
        return Ok(empty(StatusCode::ACCEPTED));
    }
    let digest = parse_digest(reference)?;
    if os.manifest(name, &digest).await?.is_none() {
        return Err(RegistryError::new(
            Code::ManifestUnknown,
            format!("manifest {digest} is not in repository {name}"),
        ));
    }
    if let Some(bytes) = os.read_blob(&digest).await?
        && let Ok((m, _)) = berth_oci::Manifest::parse(&bytes, None)
        && let Some(subject) = m.subject
    {
        os.remove_referrer(name, &subject.digest, &digest).await?;
    }
    os.unlink_manifest(name, &digest).await?;
    Ok(empty(StatusCode::ACCEPTED))
}

async fn get_blob(
    os: &ObjectStorage,
    name: &str,
    digest: &str,
    headers: &HeaderMap,
    head: bool,
) -> Result<Response> {
    check_name(name)?;
    let digest = parse_digest(digest)?;
    if !os.has_blob(name, &digest).await? && os.manifest(name, &digest).await?.is_none() {
        return Err(blob_unknown(&digest, name));
    }
    let Some(size) = os.blob_size(&digest).await? else {
        return Err(blob_unknown(&digest, name));
    };
    let range = byte_range(headers, size)?;
    if head {
        return Ok(blob_response(None, &digest, size, range));
    }
    if let Some(url) = os.blob_redirect(&digest).await? {
        // The client sends its Range again to the bucket.
        let mut r = empty(StatusCode::TEMPORARY_REDIRECT);
        set(&mut r, "location", &url);
        set(&mut r, "docker-content-digest", &digest.to_string());
        return Ok(r);
    }
    let options = GetOptions {
        range: range.map(|(s, e)| GetRange::Bounded(s..e + 1)),
        ..Default::default()
    };
    let got = match os.inner.get_opts(&os.blob_key(&digest), options).await {
        Ok(g) => g,
        Err(object_store::Error::NotFound { .. }) => return Err(blob_unknown(&digest, name)),
        Err(e) => return Err(super::failure(e)),
    };
    let stream = got
        .into_stream()
        .map_err(|e| std::io::Error::other(e.to_string()));
    Ok(blob_response(
        Some(Body::from_stream(stream)),
        &digest,
        size,
        range,
    ))
}
