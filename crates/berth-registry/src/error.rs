//! The spec's error codes and JSON bodies, mapped from store errors in one place.

use std::time::Duration;

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue, StatusCode, Version, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;

/// OCI distribution error codes (spec, "Error Codes").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Code {
    BlobUnknown,
    BlobUploadInvalid,
    BlobUploadUnknown,
    DigestInvalid,
    ManifestBlobUnknown,
    ManifestInvalid,
    ManifestUnknown,
    NameInvalid,
    NameUnknown,
    SizeInvalid,
    Unauthorized,
    Denied,
    Unsupported,
    TooManyRequests,
    RangeInvalid,
    Unavailable,
}

impl Code {
    /// The code as written in JSON bodies.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::BlobUnknown => "BLOB_UNKNOWN",
            Code::BlobUploadInvalid => "BLOB_UPLOAD_INVALID",
            Code::BlobUploadUnknown => "BLOB_UPLOAD_UNKNOWN",
            Code::DigestInvalid => "DIGEST_INVALID",
            Code::ManifestBlobUnknown => "MANIFEST_BLOB_UNKNOWN",
            Code::ManifestInvalid => "MANIFEST_INVALID",
            Code::ManifestUnknown => "MANIFEST_UNKNOWN",
            Code::NameInvalid => "NAME_INVALID",
            Code::NameUnknown => "NAME_UNKNOWN",
            Code::SizeInvalid => "SIZE_INVALID",
            Code::Unauthorized => "UNAUTHORIZED",
            Code::Denied => "DENIED",
            Code::Unsupported => "UNSUPPORTED",
            Code::TooManyRequests => "TOOMANYREQUESTS",
            Code::RangeInvalid => "RANGE_INVALID",
            Code::Unavailable => "UNAVAILABLE",
        }
    }

    fn default_status(self) -> StatusCode {
        match self {
            Code::BlobUnknown
            | Code::BlobUploadUnknown
            | Code::ManifestUnknown
            | Code::NameUnknown => StatusCode::NOT_FOUND,
            Code::Unauthorized => StatusCode::UNAUTHORIZED,
            Code::Denied => StatusCode::FORBIDDEN,
            Code::Unsupported => StatusCode::METHOD_NOT_ALLOWED,
            Code::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            Code::RangeInvalid => StatusCode::RANGE_NOT_SATISFIABLE,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// An error response: status, one spec error, and extra headers.
#[derive(Debug)]
pub struct RegistryError {
    /// HTTP status.
    pub status: StatusCode,
    /// Spec code.
    pub code: Code,
    /// Human message: what failed and what to do.
    pub message: String,
    /// Optional structured detail.
    pub detail: Option<serde_json::Value>,
    /// Extra headers (WWW-Authenticate, Range, Location…).
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl RegistryError {
    /// An error with the code's usual status.
    pub fn new(code: Code, message: impl Into<String>) -> RegistryError {
        RegistryError {
            status: code.default_status(),
            code,
            message: message.into(),
            detail: None,
            headers: Vec::new(),
        }
    }

    /// Override the status.
    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    /// Attach a detail value.
    pub fn with_detail(mut self, detail: serde_json::Value) -> Self {
        self.detail = Some(detail);
        self
    }

    /// Attach a header.
    pub fn with_header(mut self, name: HeaderName, value: impl AsRef<str>) -> Self {
        if let Ok(v) = HeaderValue::from_str(value.as_ref()) {
            self.headers.push((name, v));
        }
        self
    }
}

impl IntoResponse for RegistryError {
    fn into_response(self) -> Response {
        let mut err = serde_json::json!({ "code": self.code.as_str(), "message": self.message });
        if let Some(d) = self.detail {
            err["detail"] = d;
        }
        let body = serde_json::to_vec(&serde_json::json!({ "errors": [err] })).expect("json");
        let mut resp = (self.status, body).into_response();
        let h = resp.headers_mut();
        h.insert("content-type", HeaderValue::from_static("application/json"));
        for (k, v) in self.headers {
            h.append(k, v);
        }
        resp
    }
}

impl From<berth_store::Error> for RegistryError {
    fn from(e: berth_store::Error) -> Self {
        use berth_store::{Error, ErrorKind};
        match &e {
            Error::DigestMismatch { .. } => RegistryError::new(Code::DigestInvalid, e.to_string()),
            Error::SizeMismatch { .. } => RegistryError::new(Code::SizeInvalid, e.to_string()),
            Error::Locked(_) => RegistryError::new(
                Code::BlobUploadInvalid,
                format!("{e}; retry when it finishes"),
            )
            .with_status(StatusCode::CONFLICT),
            Error::Invalid(m) => RegistryError::new(Code::NameInvalid, m.clone()),
            _ if e.kind() == ErrorKind::NotFound => {
                RegistryError::new(Code::BlobUnknown, e.to_string())
            }
            _ => {
                tracing::error!(error = %e, "store failure");
                RegistryError::new(Code::Unavailable, format!("storage failure: {e}"))
                    .with_status(StatusCode::INTERNAL_SERVER_ERROR)
            }
        }
    }
}

/// Most of a refused request's body read (and thrown away) before the answer.
const DRAIN_BYTES: usize = 1 << 20;
/// Longest wait for it.
const DRAIN_TIME: Duration = Duration::from_secs(1);

/// Refuse `req` with `err` (401, 403, 429 before the body was touched). A client still
/// sending a body would otherwise hit a closed connection and report a broken pipe
/// instead of the challenge: so up to 1 MiB or 1 s of the body is read and dropped
/// first, and the HTTP/1 connection is closed after the answer (`Connection: close`),
/// since the rest of the body may still be on its way. A client that asked for
/// `100-continue` has sent nothing yet and is answered at once.
pub(crate) async fn refuse(err: RegistryError, req: Request) -> RegistryError {
    let headers = req.headers();
    let has_body = headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() != "0");
    if !has_body {
        return err;
    }
    let waits_for_continue = headers
        .get(header::EXPECT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
    let http1 = req.version() <= Version::HTTP_11;
    if !waits_for_continue {
        let mut body = req.into_body().into_data_stream();
        let _ = tokio::time::timeout(DRAIN_TIME, async {
            let mut read = 0;
            while read < DRAIN_BYTES {
                match body.next().await {
                    Some(Ok(chunk)) => read += chunk.len(),
                    _ => break,
                }
            }
        })
        .await;
    }
    if http1 {
        err.with_header(header::CONNECTION, "close")
    } else {
        err
    }
}
