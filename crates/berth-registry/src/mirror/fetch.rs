//! One upstream fetch per blob, streamed to every client that asks while it runs.
//!
//! The first request for a blob the cache lacks starts a *flight*: a task that GETs the
//! blob upstream and writes it through an ingest of the store (hashing as it writes).
//! Every request for the same blob while it runs — the first included — reads the
//! ingest's file as it grows, through its own read-only handle, so a slow client never
//! holds the fetch back and memory holds no blob. The last byte is held back from every
//! client until the whole blob is in and hashes to its digest: a client never receives
//! a whole blob that failed verification. (The commit's fsync runs after that.) A fetch that fails (the upstream
//! dies mid-blob, or the content does not match its digest) ends every client's body
//! with an error, removes the ingest, and the next request starts a new flight.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use berth_oci::Digest;
use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use tokio::sync::watch;

use super::{Mirrors, Target};
use crate::error::{Code, RegistryError};

/// Largest piece read from the ingest for one client at a time.
const READ_CHUNK: u64 = 1 << 20;

/// Most bytes handed to the ingest's writer at once.
const BATCH: usize = 1 << 20;

/// Blobs being fetched, by digest.
#[derive(Default)]
pub(crate) struct Flights(Mutex<HashMap<Digest, Arc<Flight>>>);

/// A fetch in progress.
pub(crate) struct Flight {
    /// The ingest being written, opened for reading.
    file: Arc<File>,
    progress: watch::Receiver<Progress>,
}

/// How a flight is doing.
#[derive(Debug, Clone, Default)]
struct Progress {
    /// The upstream answered: `size` is what it announced.
    started: bool,
    size: Option<u64>,
    /// Bytes in the ingest.
    written: u64,
    /// All of it is in, and it hashes to the digest: clients may have the last byte
    /// (the commit, with its fsync, may still be under way).
    verified: bool,
    /// Done: committed, or failed with the error clients get.
    end: Option<Result<(), Failure>>,
}

/// A failed fetch, as every waiting client gets it.
#[derive(Debug, Clone)]
struct Failure {
    status: StatusCode,
    code: Code,
    message: String,
}

impl From<RegistryError> for Failure {
    fn from(e: RegistryError) -> Failure {
        Failure {
            status: e.status,
            code: e.code,
            message: e.message,
        }
    }
}

impl From<Failure> for RegistryError {
    fn from(f: Failure) -> RegistryError {
        RegistryError::new(f.code, f.message).with_status(f.status)
    }
}

/// The answer to a HEAD of a blob the cache does not hold (the upstream has it).
pub(crate) fn head_response(d: &Digest, size: Option<u64>) -> Response {
    let mut r = Body::empty().into_response();
    let h = r.headers_mut();
    if let Some(size) = size {
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    }
    set_blob_headers(h, d);
    r
}

fn set_blob_headers(h: &mut axum::http::HeaderMap, d: &Digest) {
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Ok(v) = HeaderValue::from_str(&d.to_string()) {
        h.insert("docker-content-digest", v.clone());
    }
}

/// Join the flight of blob `d` (starting it if none runs) and answer with its body;
/// `None` when a flight that just ended left it in the cache.
pub(crate) async fn get(
    mirrors: &Arc<Mirrors>,
    t: &Target,
    d: &Digest,
) -> Result<Option<Response>, RegistryError> {
    let Some(flight) = join(mirrors, t, d).await? else {
        return Ok(None);
    };
    let mut rx = flight.progress.clone();
    // Wait for the upstream's answer: its failure is this request's error response.
    let p = rx
        .wait_for(|p| p.started || p.end.is_some())
        .await
        .map(|p| p.clone())
        .map_err(|_| lost())?;
    if let Some(Err(f)) = p.end
        && !p.started
    {
        return Err(f.into());
    }
    let counters = t.mirror.clone();
    let stream = futures_util::stream::unfold(
        Reader {
            file: flight.file.clone(),
            rx,
            offset: 0,
            done: false,
        },
        |mut r| async move {
            let item = r.next().await?;
            Some((item, r))
        },
    )
    .inspect(move |c| {
        if let Ok(c) = c {
            counters
                .counters
                .served_bytes
                .fetch_add(c.len() as u64, Ordering::Relaxed);
        }
    });
    let mut r = Body::from_stream(stream).into_response();
    let h = r.headers_mut();
    if let Some(size) = p.size {
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    }
    set_blob_headers(h, d);
    Ok(Some(r))
}

fn lost() -> RegistryError {
    RegistryError::new(
        Code::Unavailable,
        "the upstream fetch of this blob ended without a result; retry",
    )
    .with_status(StatusCode::BAD_GATEWAY)
}

/// The flight of `d`, started when none runs; `None` when the blob is cached after all.
async fn join(
    mirrors: &Arc<Mirrors>,
    t: &Target,
    d: &Digest,
) -> Result<Option<Arc<Flight>>, RegistryError> {
    if let Some(f) = mirrors.flights.0.lock().expect("flights").get(d) {
        return Ok(Some(f.clone()));
    }
    // A flight leaves the map only after its blob is linked: one that ended since the
    // caller looked at the store has left the blob there. Else the ingest is opened
    // before taking the map again; a racing request may have started the same flight
    // meanwhile, and then this ingest is dropped unused.
    let store = mirrors.store.clone();
    let reference = format!(
        "mirror-{}-{}",
        &d.hex()[..16],
        uuid::Uuid::new_v4().simple()
    );
    let (s, r, alg) = (store.clone(), reference.clone(), d.algorithm());
    let (n, d2) = (t.name.clone(), d.clone());
    let opened = super::blocking(move || {
        if s.repos().has_blob(&n, &d2)? && s.blob_size(&d2)?.is_some() {
            return Ok(None);
        }
        let w = s.writer(&r, alg)?;
        let f = w.reader()?;
        Ok(Some((w, f)))
    })
    .await?;
    let Some((writer, file)) = opened else {
        return Ok(None);
    };
    let (tx, rx) = watch::channel(Progress::default());
    let flight = {
        let mut map = mirrors.flights.0.lock().expect("flights");
        if let Some(f) = map.get(d) {
            let f = f.clone();
            drop(map);
            tokio::task::spawn_blocking(move || {
                drop(writer);
                let _ = store.abort(&reference);
            });
            return Ok(Some(f));
        }
        let f = Arc::new(Flight {
            file: Arc::new(file),
            progress: rx,
        });
        map.insert(d.clone(), f.clone());
        f
    };
    let (mirrors2, name, upstream, mirror, d2) = (
        mirrors.clone(),
        t.name.clone(),
        t.upstream_ref(None, None),
        t.mirror.clone(),
        d.clone(),
    );
    tokio::spawn(async move {
        let tx = Arc::new(tx);
        let result = fly(&mirrors2, &mirror, &name, &upstream, &d2, writer, &tx).await;
        let size = match &result {
            Ok(size) => Some(*size),
            Err(e) => {
                tracing::warn!(
                    mirror = %mirror.config.prefix,
                    blob = %d2,
                    error = %e.message,
                    "pull-through fetch failed; nothing was kept"
                );
                None
            }
        };
        tx.send_modify(|p| p.end = Some(result.map(drop).map_err(Failure::from)));
        mirrors2.flights.0.lock().expect("flights").remove(&d2);
        if let Some(size) = size {
            mirrors2.cached(size);
        }
    });
    Ok(Some(flight))
}

/// The fetch itself: upstream GET into the ingest, commit under the digest, link into
/// the cache's repository. Returns the blob's size.
async fn fly(
    mirrors: &Arc<Mirrors>,
    mirror: &super::Mirror,
    name: &str,
    upstream: &berth_oci::Reference,
    d: &Digest,
    writer: berth_store::Writer,
    tx: &Arc<watch::Sender<Progress>>,
) -> Result<u64, RegistryError> {
    let store = mirrors.store.clone();
    let reference = writer.reference().to_string();
    let discard = |writer: Option<berth_store::Writer>| {
        let (s, r) = (store.clone(), reference.clone());
        tokio::task::spawn_blocking(move || {
            drop(writer);
            if let Err(e) = s.abort(&r) {
                tracing::warn!(ingest = r, error = %e, "failed fetch's ingest not removed");
            }
        })
    };
    let what = format!("blob {}@{d}", upstream.repository);
    mirror.counters.blob_fetches.fetch_add(1, Ordering::Relaxed);
    let body = match mirrors.client.blob_body(upstream, d).await {
        Ok(b) => b,
        Err(e) => {
            let _ = discard(Some(writer)).await;
            return Err(mirror.upstream_error(&e, &what, Code::BlobUnknown));
        }
    };
    tx.send_modify(|p| {
        p.started = true;
        p.size = body.size;
    });
    let (chunks, mut rx) = tokio::sync::mpsc::channel::<Bytes>(8);
    let tx2 = tx.clone();
    let write = tokio::task::spawn_blocking(move || {
        let mut w = writer;
        while let Some(c) = rx.blocking_recv() {
            if let Err(e) = w.write_all(&c) {
                return (w, Err(e));
            }
            tx2.send_modify(|p| p.written += c.len() as u64);
        }
        (w, Ok(()))
    });
    let mut stream = body.stream;
    let mut broken = None;
    // Chunks that are already there go to the writer together (up to BATCH): one hop to
    // the blocking pool and one wake-up of the readers for each, not for every 16 KiB.
    let mut batch = bytes::BytesMut::new();
    let mut next = stream.next().await;
    loop {
        match next {
            Some(Ok(c)) => {
                mirror
                    .counters
                    .upstream_bytes
                    .fetch_add(c.len() as u64, Ordering::Relaxed);
                if batch.is_empty() && c.len() >= BATCH {
                    batch = c.into();
                } else {
                    batch.extend_from_slice(&c);
                }
            }
            Some(Err(e)) => {
                broken = Some(e);
                break;
            }
            None => break,
        }
        next = match stream.next().now_or_never() {
            Some(n) if batch.len() < BATCH => n,
            ready => {
                if chunks.send(batch.split().freeze()).await.is_err() {
                    break;
                }
                match ready {
                    Some(n) => n,
                    None => stream.next().await,
                }
            }
        };
    }
    if broken.is_none() && !batch.is_empty() {
        let _ = chunks.send(batch.freeze()).await;
    }
    drop(chunks);
    let (w, written) = write.await.map_err(|e| {
        RegistryError::new(Code::Unavailable, format!("internal error: {e}"))
            .with_status(StatusCode::INTERNAL_SERVER_ERROR)
    })?;
    if let Err(e) = written {
        let _ = discard(Some(w)).await;
        return Err(e.into());
    }
    if let Some(e) = broken {
        let got = w.offset();
        let _ = discard(Some(w)).await;
        return Err(mirror.upstream_error(
            &e,
            &format!("{what} (the transfer broke off after {got} bytes)"),
            Code::BlobUnknown,
        ));
    }
    // Verified before the commit (whose fsync of a big blob takes a while): the clients
    // get their last byte now.
    let got = w.digest();
    if got != *d || body.size.is_some_and(|s| s != w.offset()) {
        let size = w.offset();
        let _ = discard(Some(w)).await;
        mirror
            .counters
            .upstream_errors
            .fetch_add(1, Ordering::Relaxed);
        return Err(RegistryError::new(
            Code::BlobUnknown,
            format!(
                "the upstream served {d} with other content ({got}, {size} bytes); nothing was kept"
            ),
        )
        .with_status(StatusCode::BAD_GATEWAY));
    }
    tx.send_modify(|p| p.verified = true);
    let (s, n, d2, size) = (store.clone(), name.to_string(), d.clone(), body.size);
    let committed = super::blocking(move || {
        let r = w.reference().to_string();
        match w.commit_protected(Some(&d2), size) {
            Ok((c, guard)) => {
                s.repos().link_blob(&n, &d2)?;
                drop(guard);
                Ok(c.size)
            }
            Err(e) => {
                let _ = s.abort(&r);
                Err(RegistryError::new(
                    Code::BlobUnknown,
                    format!("the upstream served {d2} with other content ({e}); nothing was kept"),
                )
                .with_status(StatusCode::BAD_GATEWAY))
            }
        }
    })
    .await;
    if committed.is_err() {
        mirror
            .counters
            .upstream_errors
            .fetch_add(1, Ordering::Relaxed);
    }
    committed
}

/// One client's view of a flight: reads the ingest up to what may be sent.
struct Reader {
    file: Arc<File>,
    rx: watch::Receiver<Progress>,
    offset: u64,
    done: bool,
}

impl Reader {
    async fn next(&mut self) -> Option<std::io::Result<Bytes>> {
        if self.done {
            return None;
        }
        loop {
            let p = self.rx.borrow_and_update().clone();
            // The last byte waits for the commit: a blob that fails its digest check is
            // never delivered whole.
            let limit = match &p.end {
                _ if p.verified => p.written,
                Some(Ok(())) => p.written,
                Some(Err(f)) => {
                    self.done = true;
                    return Some(Err(std::io::Error::other(f.message.clone())));
                }
                None => p.written.saturating_sub(1),
            };
            if self.offset < limit {
                let len = (limit - self.offset).min(READ_CHUNK);
                let (file, offset) = (self.file.clone(), self.offset);
                let read = tokio::task::spawn_blocking(move || {
                    let mut buf = vec![0u8; len as usize];
                    let mut got = 0;
                    while got < buf.len() {
                        match file.read_at(&mut buf[got..], offset + got as u64)? {
                            0 => break,
                            n => got += n,
                        }
                    }
                    buf.truncate(got);
                    Ok::<_, std::io::Error>(buf)
                })
                .await
                .map_err(std::io::Error::other)
                .and_then(|r| r);
                return match read {
                    Ok(buf) if !buf.is_empty() => {
                        self.offset += buf.len() as u64;
                        Some(Ok(Bytes::from(buf)))
                    }
                    Ok(_) => {
                        self.done = true;
                        Some(Err(std::io::Error::other("blob ingest ended early")))
                    }
                    Err(e) => {
                        self.done = true;
                        Some(Err(e))
                    }
                };
            }
            if p.end.is_some() || p.verified {
                self.done = true;
                return None;
            }
            if self.rx.changed().await.is_err() {
                self.done = true;
                return Some(Err(std::io::Error::other(
                    "the upstream fetch ended without a result",
                )));
            }
        }
    }
}
