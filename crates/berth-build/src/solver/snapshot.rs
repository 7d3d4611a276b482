//! Layers and snapshots: unpacking a chain of layers, committing a step's changes as a
//! new layer, and throw-away mounted views of a file system.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use berth_oci::{Descriptor, Digest};
use berth_snapshot::{Active, DiffOptions, Snapshotter, Staged};

use super::{Layer, Output, Solver, io_err, unique};
use crate::error::{BuildError, Result};
use crate::fileops::{self, CopyOptions};
use crate::image;
use crate::pattern::Ignore;

impl Solver {
    /// Unpacks of base images a pull started (unpacking while it downloaded): a chain
    /// one of them unpacks is waited for rather than unpacked again.
    pub fn await_unpacks(&self, unpacks: Vec<crate::PullUnpack>) {
        self.unpacks.lock().expect("unpacks").extend(unpacks);
    }

    /// The layers of an image in the store.
    pub(super) fn load_image(&self, manifest: &Digest) -> Result<Output> {
        let descs = image::layers_of(&self.store, manifest)?;
        let cfg = image::resolve_config_diff_ids(&self.store, manifest)?;
        let layers: Vec<Layer> = descs
            .into_iter()
            .zip(cfg)
            .map(|(blob, diff_id)| Layer { diff_id, blob })
            .collect();
        Ok(Output::Layers(layers))
    }

    /// Copy the file system of `layers` into the directory `dest` (`--output type=local`).
    pub fn export_dir(&self, layers: &[Layer], dest: &Path) -> Result<()> {
        fs::create_dir_all(dest).map_err(|e| io_err("create directory", dest, e))?;
        let view = self.view(layers)?;
        let matched = [fileops::Matched { rel: String::new() }];
        fileops::copy(
            &view.dir,
            &matched,
            &Ignore::default(),
            &Ignore::default(),
            dest,
            "/",
            CopyOptions {
                keep_owner: true,
                ..CopyOptions::default()
            },
        )
    }

    /// Make sure the snapshot chain of `layers` is unpacked; returns its chain ID.
    ///
    /// The layers missing (always a top part of the chain: a chain is installed only on
    /// an existing parent) are unpacked at once, each into a staging directory of its
    /// own, since a layer's unpack needs nothing of the layers below it; they are then
    /// installed bottom up, so a build killed half-way leaves only whole chains (and
    /// staging directories of a dead owner, which the next build removes).
    fn ensure_chain(&self, layers: &[Layer]) -> Result<Option<Digest>> {
        let mut chains = Vec::with_capacity(layers.len());
        let mut parent: Option<Digest> = None;
        for l in layers {
            let chain = berth_snapshot::chain_id(parent.as_ref(), &l.diff_id);
            parent = Some(chain.clone());
            chains.push(chain);
        }
        // The lowest missing layer; everything above it is missing too, unless another
        // build is installing the same chain right now (then its layers are staged
        // here as well and the first install wins).
        let missing_from = || chains.iter().position(|c| !self.snapshots.exists(c));
        if missing_from().is_none() {
            return Ok(parent);
        }
        // A pull's unpack of these layers (the base was pulled by this build) is
        // waited for; what it did not install is unpacked here.
        let pulling: Vec<crate::PullUnpack> = {
            let mut all = self.unpacks.lock().expect("unpacks");
            let (these, others) = std::mem::take(&mut *all)
                .into_iter()
                .partition(|u| u.chains().iter().any(|c| chains.contains(c)));
            *all = others;
            these
        };
        // The first unpack of the build walks the context beside it: the steps after
        // it find their checksums made.
        let prefetch = !self.prefetched.swap(true, Ordering::Relaxed);
        let (mut staged, origin, first) = std::thread::scope(|scope| {
            if prefetch {
                scope.spawn(|| self.prefetch_context_sums());
            }
            for u in &pulling {
                if let Err(e) = u.wait() {
                    tracing::debug!(error = %e, "a pull's unpack stopped; unpacking the rest here");
                }
            }
            match missing_from() {
                Some(first) => {
                    let (staged, origin) = self.stage_layers(&layers[first..]);
                    (staged, origin, first)
                }
                None => (Vec::new(), None, layers.len()),
            }
        });
        // The layers staged whole from the bottom up are installed, also when one above
        // failed (or the build was canceled): that work is kept, as a one-by-one unpack
        // keeps the layers below the one it stopped in. The rest are removed as they
        // drop, and the error is that of the layer whose failure stopped the others.
        let error = origin.map(|i| {
            std::mem::replace(&mut staged[i], Err(BuildError::Canceled))
                .expect_err("the failed layer")
        });
        let mut below = first.checked_sub(1).map(|i| chains[i].clone());
        for s in staged {
            match s {
                Ok(s) => below = Some(self.snapshots.install_staged(s, below.as_ref())?),
                Err(e) => return Err(error.unwrap_or(e)),
            }
        }
        Ok(below)
    }

    /// Stage `missing` (at once when there are several); each layer's result, and the
    /// index of the one whose failure stopped the others.
    fn stage_layers(&self, missing: &[Layer]) -> (Vec<Result<Staged>>, Option<usize>) {
        let failed = AtomicBool::new(false);
        // The layer whose failure stopped the others: its error is the one to report.
        let origin = OnceLock::new();
        let staged: Vec<Result<Staged>> = if missing.len() == 1 {
            vec![self.stage_layer(&missing[0], &failed)]
        } else {
            // Each unpack is two threads already (inflate; create files): two layers at
            // a time keep two cores busy without thrashing the disk with more.
            let workers = std::thread::available_parallelism()
                .map_or(2, |n| n.get())
                .clamp(2, 4)
                .min(missing.len());
            let next = AtomicUsize::new(0);
            let slots: Vec<Mutex<Option<Result<Staged>>>> =
                missing.iter().map(|_| Mutex::new(None)).collect();
            std::thread::scope(|scope| {
                for _ in 0..workers {
                    scope.spawn(|| {
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            let Some(l) = missing.get(i) else { break };
                            let r = self.stage_layer(l, &failed);
                            if r.is_err() && !failed.swap(true, Ordering::Relaxed) {
                                let _ = origin.set(i);
                            }
                            *slots[i].lock().expect("slot") = Some(r);
                        }
                    });
                }
            });
            slots
                .into_iter()
                .map(|s| s.into_inner().expect("slot").expect("every layer staged"))
                .collect()
        };
        (staged, origin.into_inner())
    }

    /// Unpack layer `l` into a staging directory; stops early when the build is canceled
    /// or `failed` (another layer of the same chain failed).
    fn stage_layer(&self, l: &Layer, failed: &AtomicBool) -> Result<Staged> {
        let stop = || self.opts.cancel.is_canceled() || failed.load(Ordering::Relaxed);
        let (file, _) = self.store.open_blob(&l.blob.digest)?.ok_or_else(|| {
            BuildError::Image(format!("layer {} is missing from the store", l.blob.digest))
        })?;
        crate::unpack::stage_blob(
            &self.snapshots,
            &self.store,
            &l.blob,
            &l.diff_id,
            file,
            stop,
        )
    }

    /// An active snapshot on top of `layers`, unpacking them first if needed.
    pub(super) fn prepare(&self, layers: &[Layer]) -> Result<Active> {
        let chain = self.ensure_chain(layers)?;
        Ok(self.snapshots.prepare(&unique("s"), chain.as_ref())?)
    }

    /// Diff an active snapshot into a layer on top of `below`; an empty diff adds none.
    pub(super) fn commit(&self, active: Active, below: &[Layer]) -> Result<Output> {
        let reference = unique("layer");
        let mut w = self
            .store
            .writer(&reference, berth_oci::Algorithm::Sha256)?;
        let opts = DiffOptions {
            source_date_epoch: self.opts.source_date_epoch,
            gzip_level: None,
            compression: self.opts.compression,
        };
        // The store's writer hashes what it writes: the layer's bytes are hashed once.
        let info = match berth_snapshot::diff_into(&active.upper, &mut w, &opts, |w| w.digest()) {
            Ok(i) => i,
            Err(e) => {
                drop(w);
                let _ = self.store.abort(&reference);
                let _ = self.snapshots.remove(active);
                return Err(e.into());
            }
        };
        if info.empty {
            drop(w);
            let _ = self.store.abort(&reference);
            self.snapshots.remove(active)?;
            return Ok(Output::Layers(below.to_vec()));
        }
        w.commit(Some(&info.digest), Some(info.size))?;
        self.store.set_uncompressed(
            &info.digest,
            &berth_store::Uncompressed {
                diff_id: info.diff_id.clone(),
                size: info.uncompressed_size,
            },
        );
        self.snapshots.commit(active, &info.diff_id)?;
        let mut layers = below.to_vec();
        layers.push(Layer {
            diff_id: info.diff_id,
            blob: Descriptor {
                media_type: info.media_type.to_string(),
                digest: info.digest,
                size: info.size,
                artifact_type: None,
                annotations: None,
                platform: None,
            },
        });
        Ok(Output::Layers(layers))
    }

    /// Mount a throw-away view of `layers` at a fresh directory.
    pub(super) fn view(&self, layers: &[Layer]) -> Result<View> {
        let active = self.prepare(layers)?;
        let dir = self.root.join("tmp").join(unique("view"));
        fs::create_dir_all(&dir).map_err(|e| io_err("create directory", &dir, e))?;
        let guard = berth_exec::mount_rootfs(&active.mounts(), &dir)?;
        Ok(View {
            dir,
            guard: Some(guard),
            active: Some(active),
            snapshots: self.snapshots.clone(),
        })
    }
}

/// A mounted, throw-away view of a file system.
pub(super) struct View {
    pub(super) dir: PathBuf,
    guard: Option<berth_exec::MountGuard>,
    active: Option<Active>,
    snapshots: Snapshotter,
}

impl Drop for View {
    fn drop(&mut self) {
        if let Some(g) = self.guard.take() {
            let _ = g.unmount();
        }
        let _ = fs::remove_dir(&self.dir);
        if let Some(a) = self.active.take() {
            let _ = self.snapshots.remove(a);
        }
    }
}
