//! Unpacking an image's layers into snapshots while a pull downloads them, as `docker
//! pull` extracts what it fetches: a build on the image then unpacks nothing.
//!
//! A [`PullUnpack`] is a pull's [`berth_client::LayerSink`]. Each layer whose chain is
//! not unpacked is staged on a thread of its own (at most a few at a time), reading the
//! blob as it arrives (or from the store, when the store has it), into a staging
//! directory of this process ([`Snapshotter::stage`]); staged layers are installed
//! bottom up as soon as the layers below them are, by rename. So a pull killed half-way
//! leaves whole chains only (and staging directories of a dead owner, which the next
//! snapshotter open removes), and a layer is installed only once its blob is verified
//! against its digest and committed. What is missing after a failed or killed pull, a
//! build unpacks itself (`Solver::ensure_chain`).

use std::io::Read;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use berth_client::{LayerData, LayerSink};
use berth_oci::{Descriptor, Digest, Manifest};
use berth_snapshot::{Snapshotter, Staged};
use berth_store::Store;

use crate::error::{BuildError, Result};

/// Unpacks the layers a pull hands it; see the module's documentation.
#[derive(Clone)]
pub struct PullUnpack {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    snapshots: Snapshotter,
    state: Mutex<State>,
    /// Signaled when a staging job ends or a slot frees.
    changed: Condvar,
    /// Set once nothing more is wanted (the puller gave up): jobs stop early.
    stop: AtomicBool,
    /// Staging jobs allowed at once.
    slots: usize,
}

#[derive(Default)]
struct State {
    image: Option<Image>,
    /// Staging jobs started and not ended.
    running: usize,
    /// Staging jobs holding a slot.
    busy: usize,
    /// The first failure (staging or installing), for [`PullUnpack::wait`].
    error: Option<String>,
}

/// The image whose layers are unpacked.
struct Image {
    /// Which one (a retry from another source may bring the same again).
    generation: usize,
    diff_ids: Vec<Digest>,
    /// The chain ID of each layer's chain.
    chains: Vec<Digest>,
    /// The next layer to install (those below it are installed).
    next: usize,
    /// Each layer's staging: started (or done), and the staged directory once done.
    started: Vec<bool>,
    staged: Vec<Option<Staged>>,
}

static GENERATION: AtomicUsize = AtomicUsize::new(0);

impl PullUnpack {
    /// Unpack into `snapshots` (opened, so this process's staging directories carry its
    /// owner token) what pulls into `store` hand over.
    pub fn new(store: Store, snapshots: Snapshotter) -> PullUnpack {
        // Each staging job is two threads (inflate; create files), as a build's unpack.
        let slots = std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .clamp(2, 4);
        PullUnpack {
            inner: Arc::new(Inner {
                store,
                snapshots,
                state: Mutex::new(State::default()),
                changed: Condvar::new(),
                stop: AtomicBool::new(false),
                slots,
            }),
        }
    }

    /// [`PullUnpack::new`] into the snapshots of the data root `root` (those builds over
    /// `root` use).
    pub fn open(store: Store, root: &std::path::Path) -> Result<PullUnpack> {
        let snapshots = Snapshotter::open(root.join("snapshots"))?;
        Ok(PullUnpack::new(store, snapshots))
    }

    /// The sink to put in [`berth_client::PullOptions::layers`].
    pub fn sink(&self) -> Arc<dyn LayerSink> {
        Arc::new(self.clone())
    }

    /// Stop the staging still running early (a pull that failed): what is staged whole
    /// is still installed.
    pub fn stop(&self) {
        self.inner.stop.store(true, Ordering::Relaxed);
    }

    /// The chains of the image being unpacked, lowest first (empty before the pull told
    /// of one).
    pub fn chains(&self) -> Vec<Digest> {
        let st = self.inner.state.lock().expect("unpack state");
        st.image
            .as_ref()
            .map(|i| i.chains.clone())
            .unwrap_or_default()
    }

    /// Wait (blocking) for the staging jobs to end; then the image's chain is unpacked
    /// whole (its chain ID; `None` for an image of no layers, or when the pull told of
    /// no image it unpacks: an artifact, a pull that failed first), or the error says
    /// why not.
    pub fn wait(&self) -> Result<Option<Digest>> {
        let mut st = self.inner.state.lock().expect("unpack state");
        while st.running > 0 {
            st = self.inner.changed.wait(st).expect("unpack state");
        }
        match &st.image {
            None => Ok(None),
            Some(i) if i.next == i.chains.len() => Ok(i.chains.last().cloned()),
            Some(_) => Err(BuildError::Image(format!(
                "the image was not unpacked whole: {}",
                st.error
                    .as_deref()
                    .unwrap_or("its layers did not all arrive")
            ))),
        }
    }
}

impl LayerSink for PullUnpack {
    fn image(&self, _digest: &Digest, manifest: &Manifest) -> bool {
        let inner = &self.inner;
        let Some(config) = &manifest.config else {
            return false;
        };
        let diff_ids = match crate::image::diff_ids_of_config(&inner.store, &config.digest) {
            Ok(d) if d.len() == manifest.layers.len() => d,
            Ok(d) => {
                tracing::debug!(
                    layers = manifest.layers.len(),
                    diff_ids = d.len(),
                    "config and manifest disagree; not unpacking on pull"
                );
                return false;
            }
            Err(e) => {
                tracing::debug!(error = %e, "config unreadable; not unpacking on pull");
                return false;
            }
        };
        let mut chains = Vec::with_capacity(diff_ids.len());
        let mut parent: Option<Digest> = None;
        for d in &diff_ids {
            let c = berth_snapshot::chain_id(parent.as_ref(), d);
            parent = Some(c.clone());
            chains.push(c);
        }
        let mut st = inner.state.lock().expect("unpack state");
        if st.image.as_ref().is_some_and(|i| i.chains == chains) {
            return true;
        }
        // The lowest chain not unpacked: a chain exists only above existing ones.
        let next = chains
            .iter()
            .position(|c| !inner.snapshots.exists(c))
            .unwrap_or(chains.len());
        let n = chains.len();
        st.image = Some(Image {
            generation: GENERATION.fetch_add(1, Ordering::Relaxed),
            diff_ids,
            chains,
            next,
            started: vec![false; n],
            staged: (0..n).map(|_| None).collect(),
        });
        true
    }

    fn layer(&self, index: usize, layer: &Descriptor, data: LayerData) {
        let (generation, diff_id) = {
            let mut st = self.inner.state.lock().expect("unpack state");
            let Some(img) = st.image.as_mut() else { return };
            if index < img.next || index >= img.chains.len() || img.started[index] {
                return;
            }
            img.started[index] = true;
            let job = (img.generation, img.diff_ids[index].clone());
            st.running += 1;
            job
        };
        let inner = self.inner.clone();
        let layer = layer.clone();
        let spawned = std::thread::Builder::new()
            .name("pull-unpack".into())
            .spawn(move || {
                let staged = inner.stage(&layer, &diff_id, data);
                inner.staged(generation, index, staged);
            });
        if let Err(e) = spawned {
            let mut st = self.inner.state.lock().expect("unpack state");
            st.running -= 1;
            if let Some(img) = st.image.as_mut().filter(|i| i.generation == generation) {
                img.started[index] = false;
            }
            st.error.get_or_insert(format!("start an unpack: {e}"));
            self.inner.changed.notify_all();
        }
    }
}

impl Inner {
    /// Stage one layer, holding a slot while it runs.
    fn stage(&self, layer: &Descriptor, diff_id: &Digest, data: LayerData) -> Result<Staged> {
        {
            let mut st = self.state.lock().expect("unpack state");
            while st.busy >= self.slots {
                st = self.changed.wait(st).expect("unpack state");
            }
            st.busy += 1;
        }
        let staged = match data {
            LayerData::Stored => match self.store.open_blob(&layer.digest) {
                Ok(Some((file, _))) => self.stage_from(layer, diff_id, file),
                Ok(None) => Err(BuildError::Image(format!(
                    "layer {} is missing from the store",
                    layer.digest
                ))),
                Err(e) => Err(e.into()),
            },
            LayerData::Arriving(blob) => {
                let watch = blob.watch();
                let staged = self.stage_from(layer, diff_id, blob);
                // The unpacker may stop at the tar's end, before the blob's: the layer
                // counts only once all of the blob arrived and matched its digest.
                match staged {
                    Ok(s) if watch.wait_whole() => Ok(s),
                    Ok(_) => Err(BuildError::Image(format!(
                        "layer {}: its fetch failed",
                        layer.digest
                    ))),
                    Err(e) => Err(e),
                }
            }
        };
        let mut st = self.state.lock().expect("unpack state");
        st.busy -= 1;
        self.changed.notify_all();
        staged
    }

    fn stage_from(
        &self,
        layer: &Descriptor,
        diff_id: &Digest,
        blob: impl Read + Send + 'static,
    ) -> Result<Staged> {
        let stop = || self.stop.load(Ordering::Relaxed);
        stage_blob(&self.snapshots, &self.store, layer, diff_id, blob, stop)
    }

    /// A staging job of `generation` ended: keep what it staged and install every layer
    /// that now has all those below it installed.
    fn staged(&self, generation: usize, index: usize, staged: Result<Staged>) {
        let mut st = self.state.lock().expect("unpack state");
        st.running -= 1;
        self.changed.notify_all();
        let State { image, error, .. } = &mut *st;
        let Some(img) = image.as_mut().filter(|i| i.generation == generation) else {
            return;
        };
        match staged {
            Ok(s) => img.staged[index] = Some(s),
            Err(e) => {
                // Another attempt (the next mirror) may bring the layer again.
                img.started[index] = false;
                tracing::debug!(layer = index, error = %e, "layer not unpacked on pull");
                error.get_or_insert(e.to_string());
                return;
            }
        }
        while img.next < img.chains.len() {
            let Some(s) = img.staged[img.next].take() else {
                break;
            };
            let parent = img.next.checked_sub(1).map(|i| &img.chains[i]);
            match self.snapshots.install_staged(s, parent) {
                Ok(_) => img.next += 1,
                Err(e) => {
                    error.get_or_insert(e.to_string());
                    break;
                }
            }
        }
    }
}

/// Unpack the layer blob `layer` (with `diff_id`), read from `blob`, into a staging
/// directory of `snapshots`; stops early once `stop` says so. A compressed blob is
/// inflated on a thread of its own, piping into the unpacker: the two halves overlap on
/// two cores.
pub(crate) fn stage_blob(
    snapshots: &Snapshotter,
    store: &Store,
    layer: &Descriptor,
    diff_id: &Digest,
    blob: impl Read + Send + 'static,
    stop: impl Fn() -> bool,
) -> Result<Staged> {
    let compression =
        berth_snapshot::Compression::of_media_type(&layer.media_type).ok_or_else(|| {
            BuildError::Image(format!(
                "layer {} has media type {}, which berth cannot unpack",
                layer.digest, layer.media_type
            ))
        })?;
    if compression == berth_snapshot::Compression::Uncompressed {
        let reader = std::io::BufReader::with_capacity(1 << 20, blob);
        let reader = berth_snapshot::Cancelable::new(reader, stop);
        return Ok(snapshots.stage(diff_id, reader)?);
    }
    let (pipe_r, mut pipe_w) =
        std::io::pipe().map_err(|e| BuildError::Io(format!("create pipe: {e}")))?;
    let inflater =
        std::thread::spawn(move || std::io::copy(&mut compression.reader(blob)?, &mut pipe_w));
    let reader = std::io::BufReader::with_capacity(1 << 20, pipe_r);
    let staged = snapshots.stage(diff_id, berth_snapshot::Cancelable::new(reader, stop));
    let inflated = inflater
        .join()
        .map_err(|_| BuildError::Invalid("layer decompression panicked".into()))?;
    let staged = staged?;
    match inflated {
        // A hint for loads into Docker, which take layers uncompressed.
        Ok(size) => store.set_uncompressed(
            &layer.digest,
            &berth_store::Uncompressed {
                diff_id: diff_id.clone(),
                size,
            },
        ),
        // The tar ended before the stream (padding past the end-of-archive blocks):
        // the unpacker stopped reading, and the layer is whole.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        Err(e) => {
            return Err(BuildError::Image(format!("layer {}: {e}", layer.digest)));
        }
    }
    Ok(staged)
}
