//! Server-side copies of any size.
//!
//! An upload's data is completed at `uploads/<id>/data` and then copied to
//! `blobs/<alg>/<hex>` (the digest is only known at the closing PUT, after the multipart
//! upload's key was fixed). S3's CopyObject stops at 5 GiB; beyond that the copy is a
//! multipart upload to the blob's key whose parts are UploadPartCopy requests, each a
//! byte range of the source, so no byte passes through the replica.
//!
//! object_store has no UploadPartCopy with a range, but its `Signer` signs any S3
//! request given its query and headers: the replica presigns each part request with
//! `partNumber`, `uploadId`, `x-amz-copy-source` and `x-amz-copy-source-range`, and sends
//! it through object_store's own HTTP client, built from the same options (proxy, CAs).

use std::ops::Range;
use std::time::Duration;

use axum::http::{HeaderName, HeaderValue, header};
use futures_util::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;
use object_store::client::HttpRequestBody;
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::signer::{Method, SignedUrlOptions, Signer};

use super::upload::MAX_PARTS;
use super::{ObjectStorage, failure, failure_msg};
use crate::error::RegistryError;

/// S3's limit on one CopyObject (and on one part).
pub(crate) const SINGLE_COPY_MAX: u64 = 5 << 30;

/// S3's smallest part but the last.
pub(crate) const MIN_PART: u64 = 5 << 20;

/// The size of the parts of a multipart copy: few requests, and at 1 GiB a 5 TiB object
/// takes 5120 of the 10,000 parts.
const COPY_PART: u64 = 1 << 30;

/// Part copies in flight at once for one copy.
const COPIES_AT_ONCE: usize = 4;

/// How many times a part copy is tried.
const COPY_TRIES: usize = 3;

/// The byte ranges of a multipart copy of `size` bytes, for a store whose single copy
/// stops at `limit`: parts of `min(limit, 1 GiB)`, larger if 10,000 of those would not
/// cover `size`.
pub(crate) fn copy_parts(size: u64, limit: u64) -> Vec<Range<u64>> {
    let part = limit
        .min(COPY_PART)
        .max(size.div_ceil(MAX_PARTS as u64))
        .max(MIN_PART);
    (0..size.div_ceil(part))
        .map(|i| i * part..((i + 1) * part).min(size))
        .collect()
}

/// `key` as S3 wants it in `x-amz-copy-source`: percent-encoded but for `/`.
fn encode_key(key: &str) -> String {
    let mut s = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

/// The ETag in an UploadPartCopy answer (`<CopyPartResult><ETag>"…"</ETag>…`).
fn copy_part_etag(body: &str) -> Option<String> {
    let start = body.find("<ETag>")? + "<ETag>".len();
    let end = start + body[start..].find("</ETag>")?;
    Some(
        body[start..end]
            .replace("&quot;", "\"")
            .replace("&#34;", "\""),
    )
}

impl ObjectStorage {
    /// Copy object `from` (`size` bytes) to `to` inside the bucket, server-side: one
    /// CopyObject up to the store's limit, a multipart upload of UploadPartCopy parts
    /// beyond it.
    pub(crate) async fn copy_object(
        &self,
        from: &Path,
        to: &Path,
        size: u64,
    ) -> Result<(), RegistryError> {
        if size <= self.copy_limit {
            return self.inner.copy(from, to).await.map_err(failure);
        }
        let upload = self.inner.create_multipart(to).await.map_err(failure)?;
        let parts: Result<Vec<PartId>, RegistryError> =
            futures_util::stream::iter(copy_parts(size, self.copy_limit).into_iter().enumerate())
                .map(|(i, range)| self.copy_part(from, to, &upload, i, range))
                .buffered(COPIES_AT_ONCE)
                .try_collect()
                .await;
        let done = match parts {
            Ok(parts) => self
                .inner
                .complete_multipart(to, &upload, parts)
                .await
                .map(|_| ())
                .map_err(failure),
            Err(e) => Err(e),
        };
        if done.is_err() {
            let _ = self.inner.abort_multipart(to, &upload).await;
        }
        done
    }

    /// UploadPartCopy of `range` of `from` as part `index` (from 0) of `upload` to `to`.
    async fn copy_part(
        &self,
        from: &Path,
        to: &Path,
        upload: &str,
        index: usize,
        range: Range<u64>,
    ) -> Result<PartId, RegistryError> {
        let source = format!("{}/{}", self.bucket, encode_key(from.as_ref()));
        let bytes = format!("bytes={}-{}", range.start, range.end - 1);
        let value = |v: &str| {
            HeaderValue::from_str(v)
                .map_err(|_| failure_msg(format!("copy of {from}: key {v:?} is no header value")))
        };
        let headers = [
            (
                HeaderName::from_static("x-amz-copy-source"),
                value(&source)?,
            ),
            (
                HeaderName::from_static("x-amz-copy-source-range"),
                value(&bytes)?,
            ),
        ];
        let mut options = SignedUrlOptions::new().with_query([
            ("partNumber", (index + 1).to_string()),
            ("uploadId", upload.to_string()),
        ]);
        for (k, v) in &headers {
            options = options.with_signed_header(k.clone(), v.clone());
        }
        let what = || format!("copy of {from} {bytes} to {to} (part {})", index + 1);
        let mut last = String::new();
        for attempt in 0..COPY_TRIES {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
            }
            // Signed per attempt: a URL is valid for minutes, a retry may come later.
            let url = self
                .inner
                .signed_url_opts(Method::PUT, to, Duration::from_secs(15 * 60), &options)
                .await
                .map_err(failure)?;
            let mut req = axum::http::Request::builder()
                .method(Method::PUT)
                .uri(url.as_str())
                .header(header::CONTENT_LENGTH, "0");
            for (k, v) in &headers {
                req = req.header(k, v);
            }
            let req = req
                .body(HttpRequestBody::empty())
                .map_err(|e| failure_msg(format!("{}: {e}", what())))?;
            let resp = match self.copier.execute(req).await {
                Ok(r) => r,
                Err(e) => {
                    last = super::error_chain(&e);
                    continue;
                }
            };
            let status = resp.status();
            let body = match resp.into_body().bytes().await {
                Ok(b) => String::from_utf8_lossy(&b).into_owned(),
                Err(e) => {
                    last = super::error_chain(&e);
                    continue;
                }
            };
            // S3 may answer a copy 200 with an <Error> body when it fails late.
            if status.is_success()
                && !body.contains("<Error>")
                && let Some(e_tag) = copy_part_etag(&body)
            {
                return Ok(PartId { content_id: e_tag });
            }
            last = format!("{status}: {}", body.trim());
            if status.is_client_error() {
                break;
            }
        }
        Err(failure_msg(format!("{}: {last}", what())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every range is a part S3 takes (5 MiB to 5 GiB, the last may be smaller), the
    /// ranges cover the object once, in order, in at most 10,000 parts.
    fn check(size: u64, limit: u64) -> Vec<Range<u64>> {
        let parts = copy_parts(size, limit);
        assert!(
            !parts.is_empty() && parts.len() <= MAX_PARTS,
            "{size}: {} parts",
            parts.len()
        );
        let mut at = 0;
        for (i, r) in parts.iter().enumerate() {
            assert_eq!(r.start, at, "{size}: part {i}");
            let n = r.end - r.start;
            assert!(n > 0 && n <= SINGLE_COPY_MAX, "{size}: part {i} of {n}");
            if i + 1 < parts.len() {
                assert!(n >= MIN_PART, "{size}: part {i} of {n}");
            }
            at = r.end;
        }
        assert_eq!(at, size);
        parts
    }

    #[test]
    fn copy_parts_cover_any_object_s3_holds() {
        let gib = 1u64 << 30;
        // Just over CopyObject's limit: 1 GiB parts.
        let p = check(5 * gib + 1, SINGLE_COPY_MAX);
        assert_eq!(p.len(), 6);
        assert_eq!(p[5], 5 * gib..5 * gib + 1);
        // S3's largest object, 5 TiB: still 1 GiB parts, 5120 of them.
        assert_eq!(check(5 << 40, SINGLE_COPY_MAX).len(), 5120);
        // Beyond 10,000 GiB the parts grow so 10,000 still cover the object.
        let p = check(20 << 40, SINGLE_COPY_MAX);
        assert_eq!(p.len(), MAX_PARTS);
        // A lowered limit (tests, stores with a smaller one) gives parts of that size.
        let p = check((21 << 20) + 5, 6 << 20);
        assert_eq!(p.len(), 4);
        assert_eq!(p[0], 0..6 << 20);
        for size in [MIN_PART + 1, 7 * gib + 12345, (1 << 40) + 3] {
            check(size, SINGLE_COPY_MAX);
            check(size, MIN_PART);
        }
    }

    #[test]
    fn copy_source_is_encoded_and_etag_read() {
        assert_eq!(
            encode_key("reg one/uploads/ab-c_d.e~/data+x"),
            "reg%20one/uploads/ab-c_d.e~/data%2Bx"
        );
        let body = r#"<?xml version="1.0" encoding="UTF-8"?>
<CopyPartResult><LastModified>2026-12-03T14:00:00.000Z</LastModified><ETag>&quot;9b2cf535f27731c974343645a3985328&quot;</ETag></CopyPartResult>"#;
        assert_eq!(
            copy_part_etag(body).as_deref(),
            Some("\"9b2cf535f27731c974343645a3985328\"")
        );
        assert_eq!(
            copy_part_etag(r#"<CopyPartResult><ETag>"abc"</ETag></CopyPartResult>"#).as_deref(),
            Some("\"abc\"")
        );
        assert_eq!(copy_part_etag("<Error><Code>SlowDown</Code></Error>"), None);
    }
}
