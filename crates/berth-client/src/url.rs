//! Plain HTTP(S) downloads (a Dockerfile's `ADD https://…`) with the client's network
//! settings: proxies, NO_PROXY, extra CAs, and a host's own TLS settings if it has any.

use std::io::Write;

use berth_oci::{Algorithm, Digest};
use futures_util::StreamExt;
use reqwest::{StatusCode, header};

use crate::client::{Client, Error, Result, transport};

/// What a previous download of a URL answered, sent back to revalidate it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Validators {
    /// `ETag` (sent as `If-None-Match`).
    pub etag: Option<String>,
    /// `Last-Modified` (sent as `If-Modified-Since`).
    pub last_modified: Option<String>,
}

/// The answer to [`Client::fetch_url`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UrlFetch {
    /// 304: what was downloaded before still holds.
    NotModified,
    /// The body was written to the sink.
    Fetched {
        /// Its validators, for the next revalidation.
        validators: Validators,
        /// The sha256 of the body.
        digest: Digest,
        /// Its size.
        size: u64,
    },
}

impl Client {
    /// GET `url` (http or https), revalidating with `previous` when given, and write the
    /// body into `sink`. Statuses other than 2xx and 304 are errors naming the URL.
    pub async fn fetch_url(
        &self,
        url: &str,
        previous: Option<&Validators>,
        sink: &mut (dyn Write + Send),
    ) -> Result<UrlFetch> {
        let parsed = reqwest::Url::parse(url).map_err(|e| Error::Transport {
            url: url.to_string(),
            message: format!("not a URL: {e}"),
        })?;
        let host = match (parsed.host_str(), parsed.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_string(),
            (None, _) => {
                return Err(Error::Transport {
                    url: url.to_string(),
                    message: "the URL has no host".into(),
                });
            }
        };
        let http = self.http_client(&host)?;
        let mut req = http.get(parsed);
        if let Some(v) = previous {
            if let Some(etag) = &v.etag {
                req = req.header(header::IF_NONE_MATCH, etag);
            }
            if let Some(lm) = &v.last_modified {
                req = req.header(header::IF_MODIFIED_SINCE, lm);
            }
        }
        let resp = req.send().await.map_err(|e| transport(url, e))?;
        let status = resp.status();
        if status == StatusCode::NOT_MODIFIED && previous.is_some() {
            return Ok(UrlFetch::NotModified);
        }
        if !status.is_success() {
            let body = resp.text().await.unwrap_or_default();
            return Err(Error::Http {
                method: "GET".into(),
                url: url.to_string(),
                status: status.as_u16(),
                body: body.chars().take(300).collect(),
            });
        }
        let text = |name| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let validators = Validators {
            etag: text(header::ETAG),
            last_modified: text(header::LAST_MODIFIED),
        };
        let mut hasher = Algorithm::Sha256.hasher();
        let mut size = 0u64;
        let mut body = resp.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| transport(url, e))?;
            hasher.update(&chunk);
            size += chunk.len() as u64;
            sink.write_all(&chunk)
                .map_err(|e| Error::Local(format!("write the body of {url}: {e}")))?;
        }
        Ok(UrlFetch::Fetched {
            validators,
            digest: hasher.finish(),
            size,
        })
    }
}
