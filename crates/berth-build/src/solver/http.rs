//! `ADD https://…`: a download keyed by its content. The content is kept under
//! `cache/http/blobs/<sha256>`, and what the server said of each URL (its ETag,
//! Last-Modified and the content's digest) under `cache/http/urls/<sha256 of the URL>`.
//! A later build revalidates with `If-None-Match`/`If-Modified-Since`: a 304 keeps the
//! content, so the key, and the steps after, stay the same. With `--checksum` and that
//! content present, no request is made at all.
//!
//! The step's output is a directory holding only the named file, mode 0600, dated by
//! `Last-Modified` (`cache/http/files/<key>/`), copied from as from a build context.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use berth_client::{UrlFetch, Validators};
use berth_oci::Digest;
use serde::{Deserialize, Serialize};

use super::{Event, Output, Solved, Solver, io_err, unique, write_atomic};
use crate::error::{BuildError, Result};
use crate::ir::{HttpSource, Op, State};

/// What is remembered of a URL between builds.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct UrlRecord {
    digest: Digest,
    etag: Option<String>,
    last_modified: Option<String>,
}

impl Solver {
    fn http_dir(&self) -> PathBuf {
        self.root.join("cache/http")
    }

    fn url_record_path(&self, url: &str) -> PathBuf {
        self.http_dir()
            .join("urls")
            .join(Digest::sha256(url.as_bytes()).hex())
    }

    fn http_blob(&self, digest: &Digest) -> PathBuf {
        self.http_dir().join("blobs").join(digest.hex())
    }

    /// Solve a remote source (a download or a git checkout), which is never recorded:
    /// its key comes from what the remote holds now.
    pub(super) fn solve_remote(&self, state: &State) -> Result<Solved> {
        let v = state.vertex();
        let id = self.step_id(state);
        let progress = &self.opts.progress;
        progress.event(Event::Started {
            id,
            name: v.name.clone(),
        });
        let start = Instant::now();
        let fetched = match &v.op {
            Op::Http(src) => self.fetch_http(src),
            Op::Git(src) => self.fetch_git(src),
            _ => Err(BuildError::Invalid(format!(
                "{} is not a remote source",
                v.name
            ))),
        };
        match fetched {
            Ok(solved) => {
                progress.event(Event::Done {
                    id,
                    name: v.name.clone(),
                    elapsed: start.elapsed(),
                });
                Ok(solved)
            }
            Err(e) => {
                progress.event(Event::Failed {
                    id,
                    name: v.name.clone(),
                });
                Err(e)
            }
        }
    }

    fn fetch_http(&self, src: &HttpSource) -> Result<Solved> {
        for d in ["urls", "blobs", "files"] {
            let p = self.http_dir().join(d);
            fs::create_dir_all(&p).map_err(|e| io_err("create directory", &p, e))?;
        }
        let record_path = self.url_record_path(&src.url);
        let record: Option<UrlRecord> = fs::read(&record_path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .filter(|r: &UrlRecord| self.http_blob(&r.digest).is_file());
        let fail =
            |what: String| BuildError::Remote(format!("{}: ADD {}: {what}", src.origin, src.url));
        // With a checksum whose content is here, nothing is asked.
        let (digest, last_modified) = match &src.checksum {
            Some(sum) if self.http_blob(sum).is_file() => {
                let lm = record
                    .as_ref()
                    .filter(|r| &r.digest == sum)
                    .and_then(|r| r.last_modified.clone());
                (sum.clone(), lm)
            }
            _ => {
                let client = match &self.opts.client {
                    Some(c) => c.clone(),
                    None => std::sync::Arc::new(berth_client::Client::new(Default::default())),
                };
                let tmp = self.http_dir().join("blobs").join(unique("dl"));
                let mut file = fs::File::create(&tmp).map_err(|e| io_err("create", &tmp, e))?;
                let previous = record.as_ref().map(|r| Validators {
                    etag: r.etag.clone(),
                    last_modified: r.last_modified.clone(),
                });
                let handle = tokio::runtime::Handle::current();
                let fetched = handle.block_on(async {
                    let fetch = client.fetch_url(&src.url, previous.as_ref(), &mut file);
                    tokio::select! {
                        r = fetch => Some(r),
                        _ = cancelled(&self.opts.cancel) => None,
                    }
                });
                let fetched = match fetched {
                    None => {
                        let _ = fs::remove_file(&tmp);
                        return Err(BuildError::Canceled);
                    }
                    Some(f) => f.and_then(|f| {
                        file.flush()
                            .map_err(|e| berth_client::Error::Local(e.to_string()))?;
                        Ok(f)
                    }),
                };
                drop(file);
                match fetched {
                    Err(e) => {
                        let _ = fs::remove_file(&tmp);
                        return Err(fail(e.to_string()));
                    }
                    Ok(UrlFetch::NotModified) => {
                        let _ = fs::remove_file(&tmp);
                        let r = record.expect("revalidated only with a record");
                        (r.digest, r.last_modified)
                    }
                    Ok(UrlFetch::Fetched {
                        validators, digest, ..
                    }) => {
                        if let Some(sum) = &src.checksum
                            && sum != &digest
                        {
                            let _ = fs::remove_file(&tmp);
                            return Err(fail(format!(
                                "checksum mismatch: expected {sum}, got {digest}; fix --checksum or the file served"
                            )));
                        }
                        let blob = self.http_blob(&digest);
                        fs::rename(&tmp, &blob).map_err(|e| io_err("rename", &blob, e))?;
                        let rec = UrlRecord {
                            digest: digest.clone(),
                            etag: validators.etag,
                            last_modified: validators.last_modified.clone(),
                        };
                        write_atomic(&record_path, &serde_json::to_vec(&rec).expect("json"))?;
                        (digest, validators.last_modified)
                    }
                }
            }
        };
        let mtime = last_modified
            .as_deref()
            .and_then(|lm| httpdate::parse_http_date(lm).ok());
        let secs = mtime
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map(|d| d.as_secs());
        let key = Digest::sha256(
            &serde_json::to_vec(&serde_json::json!({
                "http": digest.to_string(),
                "filename": src.filename,
                "mtime": secs,
            }))
            .expect("json"),
        );
        let dir = self.http_dir().join("files").join(key.hex());
        if !dir.join(&src.filename).is_file() {
            self.make_http_dir(&dir, &self.http_blob(&digest), &src.filename, mtime)?;
        }
        Ok(Solved {
            key,
            output: Output::Dir {
                path: dir,
                exclude: Vec::new(),
            },
        })
    }

    /// `dir` with `blob` as `name` in it, mode 0600, dated `mtime`; made aside and
    /// renamed, so a reader sees it whole or not at all.
    fn make_http_dir(
        &self,
        dir: &Path,
        blob: &Path,
        name: &str,
        mtime: Option<SystemTime>,
    ) -> Result<()> {
        let tmp = self.http_dir().join("files").join(unique("new"));
        fs::create_dir(&tmp).map_err(|e| io_err("create directory", &tmp, e))?;
        let file = tmp.join(name);
        let result = (|| {
            fs::copy(blob, &file).map_err(|e| io_err("copy to", &file, e))?;
            fs::set_permissions(&file, fs::Permissions::from_mode(0o600))
                .map_err(|e| io_err("chmod", &file, e))?;
            if let Some(t) = mtime {
                let f = fs::File::options()
                    .write(true)
                    .open(&file)
                    .map_err(|e| io_err("open", &file, e))?;
                f.set_modified(t).map_err(|e| io_err("date", &file, e))?;
            }
            Ok::<_, BuildError>(())
        })();
        if let Err(e) = result {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e);
        }
        if fs::rename(&tmp, dir).is_err() {
            // Another build made it first: theirs is the same.
            let _ = fs::remove_dir_all(&tmp);
        }
        Ok(())
    }
}

/// Resolves when `cancel` fires (checked every 200 ms).
async fn cancelled(cancel: &super::Cancel) {
    while !cancel.is_canceled() {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
