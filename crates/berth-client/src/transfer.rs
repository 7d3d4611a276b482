//! Moving images between a registry and berth's content store: [`pull_image`] brings
//! an image (the manifest for one platform, its config and layers) into the store, and
//! [`push_image`] sends an image of the store to a repository.
//!
//! Both keep the store consistent whatever fails: a pulled blob is written through an
//! ingest and committed only under the digest its descriptor names (a blob served with
//! other bytes, or cut short, leaves nothing), and an ingest a failed or abandoned fetch
//! started is removed. Manifests go in last, after everything they reference, so the
//! store never holds a pulled manifest without its blobs.
//!
//! The store remembers where each blob came from (`Store::add_source`): a push to
//! another repository of the same registry then asks the registry to mount the blob from
//! there (a cross-repository mount) instead of uploading it again.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use berth_oci::{Descriptor, Digest, Manifest, Reference, media_type};
use berth_store::Store;

use crate::client::{BlobPush, Client, Error};

/// Result with [`TransferError`].
pub type TransferResult<T> = std::result::Result<T, TransferError>;

/// Why a pull or push failed.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// The registry failed or refused; `context` says what was being done
    /// (`pull registry/app:1`, `push to registry/app:1`).
    #[error("{context}: {source}")]
    Registry {
        /// What was being done, and with which image.
        context: String,
        /// The client's error.
        #[source]
        source: Error,
    },
    /// An index has no manifest for the platform asked for.
    #[error("{reference} has no image for {os}/{architecture}")]
    NoPlatform {
        /// The image.
        reference: String,
        /// The operating system asked for.
        os: String,
        /// The architecture asked for.
        architecture: String,
    },
    /// A manifest does not parse.
    #[error("{what}: {message}")]
    Manifest {
        /// Which manifest (`registry/app:1`, `manifest sha256:…`).
        what: String,
        /// The parser's complaint.
        message: String,
    },
    /// Content an image names is not in the store (a push of an incomplete image).
    #[error("{0} is missing from the store")]
    Missing(String),
    /// The content store failed.
    #[error(transparent)]
    Store(#[from] berth_store::Error),
    /// Every source of an image with mirrors failed: each mirror, then its registry.
    #[error("pull {reference}: no source served it: {}", attempts.join("; "))]
    Sources {
        /// The image, as asked for.
        reference: String,
        /// Each attempt, in order: `mirror HOST: error`, then `upstream HOST: error`.
        attempts: Vec<String>,
    },
}

/// An OS and CPU architecture, as OCI names them (`linux`, `amd64`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    /// `linux`.
    pub os: String,
    /// `amd64`, `arm64`, ….
    pub architecture: String,
}

impl Platform {
    /// The platform `os`/`architecture`.
    pub fn new(os: impl Into<String>, architecture: impl Into<String>) -> Platform {
        Platform {
            os: os.into(),
            architecture: architecture.into(),
        }
    }
}

/// How [`pull_image`] runs.
#[derive(Clone)]
pub struct PullOptions {
    /// The platform whose manifest is taken out of a multi-platform index.
    pub platform: Platform,
    /// Take every manifest of an index, and the index itself (`platform` is unused).
    pub all_platforms: bool,
    /// Told about each blob as it is fetched.
    pub progress: Option<PullProgress>,
    /// Handed the layers of the image pulled for `platform` as they arrive (for an index
    /// pulled whole, those of `platform`'s manifest): to unpack them beside the download.
    pub layers: Option<Arc<dyn LayerSink>>,
}

impl PullOptions {
    /// Pull the manifest for `platform`, quietly.
    pub fn new(platform: Platform) -> PullOptions {
        PullOptions {
            platform,
            all_platforms: false,
            progress: None,
            layers: None,
        }
    }
}

impl std::fmt::Debug for PullOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PullOptions")
            .field("platform", &self.platform)
            .field("all_platforms", &self.all_platforms)
            .field("layers", &self.layers.is_some())
            .finish_non_exhaustive()
    }
}

/// What a pull tells about a blob (config or layer), for people watching it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullEvent {
    /// The store has it already: nothing to fetch.
    Exists {
        /// The blob.
        digest: Digest,
        /// Its size.
        size: u64,
    },
    /// Fetching started.
    Started {
        /// The blob.
        digest: Digest,
        /// Its size.
        size: u64,
    },
    /// `done` of `size` bytes arrived; sent at most every two seconds a blob.
    Progress {
        /// The blob.
        digest: Digest,
        /// Bytes so far.
        done: u64,
        /// Its size.
        size: u64,
    },
    /// Fetched, verified against its digest and committed.
    Done {
        /// The blob.
        digest: Digest,
        /// Its size.
        size: u64,
    },
}

/// Where [`pull_image`] sends its [`PullEvent`]s (from several tasks at once).
pub type PullProgress = Arc<dyn Fn(&PullEvent) + Send + Sync>;

/// Where [`pull_image`] hands the layers of the image it pulls for its platform, as they
/// arrive: `docker pull` extracts an image while it downloads it, and a sink can do the
/// same (berth's snapshots). The sink is told of the image first, once its config is in
/// the store (a pull with a sink fetches the config before the layers), then of each
/// layer as its fetch starts or, for a layer the store has, right away.
pub trait LayerSink: Send + Sync {
    /// The layers of the image manifest `manifest` (digest `digest`) are about to be
    /// fetched; its config is in the store. `false`: say nothing of its layers.
    fn image(&self, digest: &Digest, manifest: &Manifest) -> bool;
    /// Layer `index` (0 the lowest) of that image, `layer`. Called on the pull's async
    /// tasks: it must not block (read `data` on a thread of its own). A layer can come
    /// again (from the next mirror) after an attempt whose data failed.
    fn layer(&self, index: usize, layer: &Descriptor, data: LayerData);
}

/// A layer's bytes, for a [`LayerSink`].
#[derive(Debug)]
pub enum LayerData {
    /// The store has the blob (`Store::open_blob`).
    Stored,
    /// The blob is being fetched: read it as it arrives.
    Arriving(ArrivingBlob),
}

/// How far a blob being fetched has got, shared by its fetch and its readers.
#[derive(Debug, Default)]
struct Fill {
    /// Bytes in the ingest file.
    written: u64,
    /// `Some(true)`: whole, verified and committed; `Some(false)`: the fetch failed.
    end: Option<bool>,
}

#[derive(Debug, Default)]
struct Arrival {
    fill: std::sync::Mutex<Fill>,
    grew: std::sync::Condvar,
}

/// A blob read while it is fetched: it reads the store's ingest file up to what has been
/// written, waits (blocking) for more, ends once the blob is verified and committed, and
/// fails if the fetch failed (a cut stream, a digest that does not match): a reader
/// never takes a blob the store refused for whole.
#[derive(Debug)]
pub struct ArrivingBlob {
    file: std::fs::File,
    pos: u64,
    arrival: Arc<Arrival>,
}

impl ArrivingBlob {
    /// A handle that tells when the fetch ends, kept by a reader that stops before the
    /// end of the blob (a tar's end-of-archive comes before its padding).
    pub fn watch(&self) -> ArrivalWatch {
        ArrivalWatch(self.arrival.clone())
    }
}

/// See [`ArrivingBlob::watch`].
#[derive(Debug, Clone)]
pub struct ArrivalWatch(Arc<Arrival>);

impl ArrivalWatch {
    /// Wait (blocking) until the fetch ends: `true` when the blob is whole, verified and
    /// committed.
    pub fn wait_whole(&self) -> bool {
        let mut fill = self.0.fill.lock().expect("fill");
        while fill.end.is_none() {
            fill = self.0.grew.wait(fill).expect("fill");
        }
        fill.end == Some(true)
    }
}

impl std::io::Read for ArrivingBlob {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::os::unix::fs::FileExt;
        if buf.is_empty() {
            return Ok(0);
        }
        let written = {
            let mut fill = self.arrival.fill.lock().expect("fill");
            while fill.written <= self.pos && fill.end.is_none() {
                fill = self.arrival.grew.wait(fill).expect("fill");
            }
            if fill.written <= self.pos {
                return match fill.end {
                    Some(true) => Ok(0),
                    _ => Err(std::io::Error::other("the blob's fetch failed")),
                };
            }
            fill.written
        };
        let want = buf.len().min((written - self.pos) as usize);
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the ingest file is shorter than written",
            ));
        }
        self.pos += n as u64;
        Ok(n)
    }
}

/// The fetch's side of its [`ArrivingBlob`]s: dropped before [`Feed::whole`], the readers
/// fail.
struct Feed {
    arrival: Arc<Arrival>,
}

impl Feed {
    fn tell(&self, f: impl FnOnce(&mut Fill)) {
        f(&mut self.arrival.fill.lock().expect("fill"));
        self.arrival.grew.notify_all();
    }

    fn grown(&self, written: u64) {
        self.tell(|f| f.written = written);
    }

    fn whole(&self) {
        self.tell(|f| f.end = Some(true));
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.tell(|f| {
            f.end.get_or_insert(false);
        });
    }
}

/// What [`pull_image`] brought into the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PulledImage {
    /// The image manifest's digest (for an index, the platform's manifest; with
    /// [`PullOptions::all_platforms`], the index itself).
    pub manifest: Digest,
    /// Its media type.
    pub media_type: String,
    /// The index it was picked from, when the reference named one (also in the store).
    pub index: Option<Digest>,
}

/// Pull `reference` from its registry into `store`: the manifest (for an index, the one
/// for `opts.platform`), its config and layers. Blobs the store has are not fetched; the
/// others are fetched in parallel, each verified against its digest before it is
/// committed. The manifests are stored last.
///
/// When the client has mirrors for the reference's registry ([`crate::HostOptions`]),
/// each is tried in order with the same repository path (`docker.io/library/busybox`
/// is `library/busybox` on a mirror, as BuildKit's mirrors take it), then the registry
/// itself; any failure moves on to the next source, and if all fail the error
/// ([`TransferError::Sources`]) names every attempt. Content is verified by digest
/// whatever served it, so a mirror cannot substitute an image pulled by digest.
pub async fn pull_image(
    client: &Client,
    store: &Store,
    reference: &Reference,
    opts: &PullOptions,
) -> TransferResult<PulledImage> {
    let mirrors: Vec<&String> = client
        .mirrors(&reference.registry)
        .iter()
        .filter(|m| **m != reference.registry)
        .collect();
    if mirrors.is_empty() {
        return pull_from(client, store, reference, opts).await;
    }
    let mut attempts = Vec::new();
    for m in mirrors {
        let via = Reference {
            registry: m.clone(),
            ..reference.clone()
        };
        match pull_from(client, store, &via, opts).await {
            Ok(pulled) => {
                tracing::info!(image = %reference, mirror = %m, "pulled from mirror");
                return Ok(pulled);
            }
            Err(e) => {
                tracing::info!(image = %reference, mirror = %m, error = %e, "mirror failed; trying the next source");
                attempts.push(format!("mirror {m}: {}", source_error(e)));
            }
        }
    }
    match pull_from(client, store, reference, opts).await {
        Ok(pulled) => {
            tracing::info!(image = %reference, registry = %reference.registry, "pulled from the upstream registry (every mirror failed)");
            Ok(pulled)
        }
        Err(e) => {
            attempts.push(format!(
                "upstream {}: {}",
                reference.registry,
                source_error(e)
            ));
            Err(TransferError::Sources {
                reference: reference.to_string(),
                attempts,
            })
        }
    }
}

/// An attempt's error without the `pull REFERENCE: ` its context adds (the attempt is
/// named by its source already).
fn source_error(e: TransferError) -> String {
    match e {
        TransferError::Registry { source, .. } => source.to_string(),
        e => e.to_string(),
    }
}

/// [`pull_image`] from `reference`'s registry alone.
async fn pull_from(
    client: &Client,
    store: &Store,
    reference: &Reference,
    opts: &PullOptions,
) -> TransferResult<PulledImage> {
    let registry = |source: Error| TransferError::Registry {
        context: format!("pull {reference}"),
        source,
    };
    let mut pulled = client.manifest(reference).await.map_err(registry)?;
    let mut index = None;
    if media_type::is_index(&pulled.media_type) && opts.all_platforms {
        return pull_index(client, store, reference, pulled, opts).await;
    }
    if media_type::is_index(&pulled.media_type) {
        let Platform { os, architecture } = &opts.platform;
        let child = Client::pick_platform(&pulled, os, architecture).ok_or_else(|| {
            TransferError::NoPlatform {
                reference: reference.to_string(),
                os: os.clone(),
                architecture: architecture.clone(),
            }
        })?;
        let by_digest = Reference {
            tag: None,
            digest: Some(child),
            ..reference.clone()
        };
        let child = client.manifest(&by_digest).await.map_err(registry)?;
        index = Some(std::mem::replace(&mut pulled, child));
    }
    let (m, _) = Manifest::parse(&pulled.bytes, Some(&pulled.media_type)).map_err(|e| {
        TransferError::Manifest {
            what: reference.to_string(),
            message: e.to_string(),
        }
    })?;
    let feeds = feed_image(
        client,
        store,
        reference,
        &pulled.digest,
        &m,
        &registry,
        opts,
    )
    .await?;
    // With a sink the config is in already.
    let rest = m
        .blobs()
        .skip(usize::from(opts.layers.is_some() && m.config.is_some()));
    let fetches = unique_blobs(rest).into_iter().map(|d| {
        let feed = feeds.map(|f| (f, layer_indexes(&m, &d.digest)));
        pull_blob(client, store, reference, d, &registry, opts, feed)
    });
    futures_util::future::try_join_all(fetches).await?;
    store.put_blob(pulled.digest.algorithm(), &pulled.bytes)?;
    if let Some(index) = &index {
        store.put_blob(index.digest.algorithm(), &index.bytes)?;
    }
    Ok(PulledImage {
        manifest: pulled.digest,
        media_type: pulled.media_type,
        index: index.map(|i| i.digest),
    })
}

/// Every manifest of the index `pulled` (of `reference`), their blobs, then the index.
async fn pull_index(
    client: &Client,
    store: &Store,
    reference: &Reference,
    pulled: crate::client::Pulled,
    opts: &PullOptions,
) -> TransferResult<PulledImage> {
    let registry = |source: Error| TransferError::Registry {
        context: format!("pull {reference}"),
        source,
    };
    let parse = |bytes: &[u8], mt: &str, what: String| {
        Manifest::parse(bytes, Some(mt))
            .map(|(m, _)| m)
            .map_err(|e| TransferError::Manifest {
                what,
                message: e.to_string(),
            })
    };
    let index = parse(&pulled.bytes, &pulled.media_type, reference.to_string())?;
    // The manifest a build here would take from the index: its layers go to the sink.
    let fed = opts.layers.as_ref().and_then(|_| {
        Client::pick_platform(&pulled, &opts.platform.os, &opts.platform.architecture)
    });
    let mut feeds = None;
    let mut children = Vec::new();
    let mut blobs: Vec<Descriptor> = Vec::new();
    for c in &index.manifests {
        let by_digest = Reference {
            tag: None,
            digest: Some(c.digest.clone()),
            ..reference.clone()
        };
        let child = client.manifest(&by_digest).await.map_err(registry)?;
        if media_type::is_index(&child.media_type) {
            return Err(TransferError::Manifest {
                what: format!("{reference}: manifest {}", c.digest),
                message: "an index inside an index is not supported; pull it by digest".into(),
            });
        }
        let m = parse(
            &child.bytes,
            &child.media_type,
            format!("manifest {}", c.digest),
        )?;
        if fed.as_ref() == Some(&c.digest) {
            feeds = feed_image(client, store, reference, &c.digest, &m, &registry, opts)
                .await?
                .map(|sink| (sink, m.clone()));
        }
        for d in m.blobs() {
            if !blobs.iter().any(|b| b.digest == d.digest) {
                blobs.push(d.clone());
            }
        }
        children.push(child);
    }
    let fetches = blobs.iter().map(|d| {
        let feed = feeds
            .as_ref()
            .map(|(sink, m)| (*sink, layer_indexes(m, &d.digest)));
        pull_blob(client, store, reference, d, &registry, opts, feed)
    });
    futures_util::future::try_join_all(fetches).await?;
    for child in &children {
        store.put_blob(child.digest.algorithm(), &child.bytes)?;
    }
    store.put_blob(pulled.digest.algorithm(), &pulled.bytes)?;
    Ok(PulledImage {
        manifest: pulled.digest,
        media_type: pulled.media_type,
        index: None,
    })
}

/// With a [`LayerSink`] in `opts`: fetch the config of the image `manifest` (digest
/// `digest`) first and ask the sink whether it takes the layers; `None` when it does
/// not, or there is no sink.
async fn feed_image<'a>(
    client: &Client,
    store: &Store,
    reference: &Reference,
    digest: &Digest,
    manifest: &Manifest,
    registry: &impl Fn(Error) -> TransferError,
    opts: &'a PullOptions,
) -> TransferResult<Option<&'a Arc<dyn LayerSink>>> {
    let Some(sink) = &opts.layers else {
        return Ok(None);
    };
    if let Some(config) = &manifest.config {
        pull_blob(client, store, reference, config, registry, opts, None).await?;
    }
    Ok(sink.image(digest, manifest).then_some(sink))
}

/// Each blob once (a manifest may name a layer twice: one fetch fills both).
fn unique_blobs<'a>(blobs: impl Iterator<Item = &'a Descriptor>) -> Vec<&'a Descriptor> {
    let mut out: Vec<&Descriptor> = Vec::new();
    for d in blobs {
        if !out.iter().any(|o| o.digest == d.digest) {
            out.push(d);
        }
    }
    out
}

/// Where `digest` is among the layers of `m`.
fn layer_indexes(m: &Manifest, digest: &Digest) -> Vec<usize> {
    m.layers
        .iter()
        .enumerate()
        .filter(|(_, l)| l.digest == *digest)
        .map(|(i, _)| i)
        .collect()
}

/// Fetch blob `d` of `reference`'s repository into the store, unless it is there; with
/// `feed`, hand it to the sink as the layers of those indexes.
async fn pull_blob(
    client: &Client,
    store: &Store,
    reference: &Reference,
    d: &Descriptor,
    registry: &impl Fn(Error) -> TransferError,
    opts: &PullOptions,
    feed: Option<(&Arc<dyn LayerSink>, Vec<usize>)>,
) -> TransferResult<()> {
    let tell = |e: PullEvent| {
        if let Some(p) = &opts.progress {
            p(&e)
        }
    };
    let feed = feed.filter(|(_, at)| !at.is_empty());
    let (digest, size) = (d.digest.clone(), d.size);
    store.add_source(&d.digest, &reference.registry, &reference.repository);
    if store.blob_size(&d.digest)?.is_some() {
        tell(PullEvent::Exists { digest, size });
        if let Some((sink, at)) = feed {
            for i in at {
                sink.layer(i, d, LayerData::Stored);
            }
        }
        return Ok(());
    }
    tell(PullEvent::Started {
        digest: digest.clone(),
        size,
    });
    let ingest = format!("pull-{}-{}", std::process::id(), d.digest.hex());
    // Declared before the writer so it drops after it: an abandoned fetch (a sibling
    // failed, the caller was canceled) removes its ingest.
    let _guard = AbortOnDrop {
        store,
        reference: &ingest,
    };
    let mut w = store.writer(&ingest, d.digest.algorithm())?;
    // Declared after the writer so it drops first: the readers are told of a failure
    // before the ingest goes.
    let fed = match feed {
        Some((sink, at)) => {
            let arrival = Arc::new(Arrival::default());
            arrival.fill.lock().expect("fill").written = w.offset();
            for i in at {
                let blob = ArrivingBlob {
                    file: w.reader()?,
                    pos: 0,
                    arrival: arrival.clone(),
                };
                sink.layer(i, d, LayerData::Arriving(blob));
            }
            Some(Feed { arrival })
        }
        None => None,
    };
    let (mut done, mut told) = (0u64, std::time::Instant::now());
    client
        .blob(reference, &d.digest, &mut |chunk| {
            done += chunk.len() as u64;
            if told.elapsed() >= std::time::Duration::from_secs(2) {
                told = std::time::Instant::now();
                tell(PullEvent::Progress {
                    digest: digest.clone(),
                    done,
                    size,
                });
            }
            w.write_all(chunk).map_err(|e| e.to_string())?;
            if let Some(f) = &fed {
                f.grown(w.offset());
            }
            Ok(())
        })
        .await
        .map_err(registry)?;
    w.commit(Some(&d.digest), Some(d.size))?;
    if let Some(f) = &fed {
        f.whole();
    }
    tell(PullEvent::Done { digest, size });
    Ok(())
}

/// Removes an ingest when dropped (a no-op once it was committed).
struct AbortOnDrop<'a> {
    store: &'a Store,
    reference: &'a str,
}

impl Drop for AbortOnDrop<'_> {
    fn drop(&mut self) {
        let _ = self.store.abort(self.reference);
    }
}

/// How [`push_image`] reports what it does: one line per blob (`exists …`,
/// `mounted … from …`, `pushed … (… MB) in … s`), and every few seconds how far the
/// big uploads still running have got.
pub type PushProgress<'a> = &'a (dyn Fn(&str) + Sync);

/// Push the image (or index) `manifest` of `store` to `dest`: see [`push_manifest`].
pub async fn push_image(
    client: &Client,
    store: &Store,
    manifest: &Digest,
    dest: &Reference,
    progress: PushProgress<'_>,
) -> TransferResult<Digest> {
    let bytes = read_manifest(store, manifest)?;
    push_manifest(client, store, &bytes, dest, progress).await
}

/// Push the manifest `bytes` to `dest` (under its tag, or its digest), with what it
/// references from `store`: the manifests of an index first (byte for byte, by
/// digest), the blobs the repository lacks in parallel (existing ones are skipped,
/// ones the store saw in another repository of the same registry are mounted), then the
/// manifest. The bytes need not be in the store (a manifest rewritten for the push).
/// Returns the pushed manifest's digest, as the registry confirmed it.
pub async fn push_manifest(
    client: &Client,
    store: &Store,
    bytes: &[u8],
    dest: &Reference,
    progress: PushProgress<'_>,
) -> TransferResult<Digest> {
    let what = || format!("manifest {}", Digest::sha256(bytes));
    let (m, mt) = Manifest::parse(bytes, None).map_err(|e| TransferError::Manifest {
        what: what(),
        message: e.to_string(),
    })?;
    let registry = |source: Error| TransferError::Registry {
        context: format!("push to {dest}"),
        source,
    };
    for child in &m.manifests {
        let by_digest = Reference {
            tag: None,
            digest: Some(child.digest.clone()),
            ..dest.clone()
        };
        let child_bytes = read_manifest(store, &child.digest)?;
        Box::pin(push_manifest(
            client,
            store,
            &child_bytes,
            &by_digest,
            progress,
        ))
        .await?;
    }
    let blobs: Vec<_> = m
        .blobs()
        .map(|d| (d, Arc::new(AtomicU64::new(0))))
        .collect();
    let uploads = blobs.iter().map(|(d, sent)| async {
        let size = store
            .blob_size(&d.digest)?
            .ok_or_else(|| TransferError::Missing(format!("blob {} of {}", d.digest, what())))?;
        let sources = store.sources(&d.digest, &dest.registry)?;
        let started = std::time::Instant::now();
        let how = client
            .push_blob(
                dest,
                &d.digest,
                &store.blob_path(&d.digest),
                size,
                &sources,
                Some(sent),
            )
            .await
            .map_err(registry)?;
        store.add_source(&d.digest, &dest.registry, &dest.repository);
        progress(&match how {
            BlobPush::Exists => format!("exists {}", d.digest),
            BlobPush::Mounted(from) => format!("mounted {} from {from}", d.digest),
            BlobPush::Uploaded => format!(
                "pushed {} ({}) in {:.1} s",
                d.digest,
                megabytes(size),
                started.elapsed().as_secs_f64()
            ),
        });
        Ok::<_, TransferError>(())
    });
    // Every few seconds, how far the big uploads still running have got.
    let ticker = async {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(2));
        tick.tick().await;
        loop {
            tick.tick().await;
            for (d, sent) in &blobs {
                let n = sent.load(Ordering::Relaxed);
                if n > 0 && n < d.size {
                    progress(&format!(
                        "pushing {} {} / {}",
                        d.digest,
                        megabytes(n),
                        megabytes(d.size)
                    ));
                }
            }
        }
    };
    tokio::select! {
        done = futures_util::future::try_join_all(uploads) => { done?; }
        () = ticker => {}
    }
    client
        .push_manifest(dest, bytes, &mt)
        .await
        .map_err(registry)
}

fn read_manifest(store: &Store, digest: &Digest) -> TransferResult<Vec<u8>> {
    store
        .read_blob(digest)?
        .ok_or_else(|| TransferError::Missing(format!("manifest {digest}")))
}

fn megabytes(n: u64) -> String {
    format!("{:.1} MB", n as f64 / 1e6)
}
