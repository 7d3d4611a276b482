//! Committed layers by chain ID, active snapshots by key.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use berth_oci::{Digest, Mount};

use crate::owner;

/// Result with the snapshotter's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A snapshot failure. I/O errors name the operation and the path.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O operation failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A layer is malformed.
    #[error("bad layer: {0}")]
    Layer(String),
    /// A parent snapshot is not there.
    #[error("snapshot {0} does not exist")]
    NotFound(String),
}

pub(crate) fn io_err(op: &'static str, path: &Path, source: io::Error) -> Error {
    Error::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// The OCI chain ID of a layer with `diff_id` on top of the chain `parent`.
pub fn chain_id(parent: Option<&Digest>, diff_id: &Digest) -> Digest {
    match parent {
        None => diff_id.clone(),
        Some(p) => Digest::sha256(format!("{p} {diff_id}").as_bytes()),
    }
}

/// Snapshots under one directory.
#[derive(Debug, Clone)]
pub struct Snapshotter {
    root: PathBuf,
}

/// A layer unpacked by [`Snapshotter::stage`], waiting for
/// [`Snapshotter::install_staged`]; dropped, its directory is removed.
#[derive(Debug)]
pub struct Staged {
    dir: Option<PathBuf>,
    diff_id: Digest,
}

impl Staged {
    fn path(&self) -> &Path {
        self.dir.as_deref().expect("staged")
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if let Some(d) = self.dir.take() {
            let _ = fs::remove_dir_all(d);
        }
    }
}

/// An active snapshot: an upperdir and workdir over committed layers.
#[derive(Debug)]
pub struct Active {
    /// Its key.
    pub key: String,
    /// The chain it stands on (`None`: scratch).
    pub parent: Option<Digest>,
    /// Where changes land.
    pub upper: PathBuf,
    /// overlayfs' work directory.
    pub work: PathBuf,
    /// Lower layers, topmost first.
    pub lowers: Vec<PathBuf>,
}

impl Active {
    /// The mount plan for this snapshot as a container's root file system.
    pub fn mounts(&self) -> Vec<Mount> {
        vec![overlay_mount(&self.lowers, &self.upper, &self.work)]
    }
}

/// An overlay of `lowers` (topmost first) with `upper` and `work`, as a root mount plan.
pub fn overlay_mount(lowers: &[PathBuf], upper: &Path, work: &Path) -> Mount {
    let lowers: Vec<String> = lowers.iter().map(|p| p.display().to_string()).collect();
    let mut m = Mount::default();
    m.set_destination(PathBuf::from("/"));
    m.set_typ(Some("overlay".into()));
    m.set_source(Some(PathBuf::from("overlay")));
    m.set_options(Some(vec![
        format!("lowerdir={}", lowers.join(":")),
        format!("upperdir={}", upper.display()),
        format!("workdir={}", work.display()),
    ]));
    m
}

impl Snapshotter {
    /// Open (creating) the snapshotter at `root`, clearing leftovers of dead processes.
    pub fn open(root: impl Into<PathBuf>) -> Result<Snapshotter> {
        let root = root.into();
        for d in ["layers", "active", "tmp", "empty"] {
            let p = root.join(d);
            fs::create_dir_all(&p).map_err(|e| io_err("create directory", &p, e))?;
        }
        let s = Snapshotter { root };
        owner::register(&s.owners()).map_err(|e| io_err("register in", &s.owners(), e))?;
        s.clean_tmp();
        Ok(s)
    }

    /// Where processes using this snapshotter hold their owner locks.
    fn owners(&self) -> PathBuf {
        self.root.join("owners")
    }

    fn clean_tmp(&self) {
        let Ok(entries) = fs::read_dir(self.root.join("tmp")) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if owner::is_gone(&self.owners(), &name) {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }

    fn layer_dir(&self, chain: &Digest) -> PathBuf {
        self.root.join("layers").join(chain.hex())
    }

    /// Whether the layer chain `chain` is unpacked.
    pub fn exists(&self, chain: &Digest) -> bool {
        self.layer_dir(chain).join("fs").is_dir()
    }

    /// The chain's layer directories, topmost first.
    pub fn lowers(&self, chain: &Digest) -> Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        let mut cur = Some(chain.clone());
        while let Some(c) = cur {
            let dir = self.layer_dir(&c);
            if !dir.join("fs").is_dir() {
                return Err(Error::NotFound(c.to_string()));
            }
            out.push(dir.join("fs"));
            cur = match fs::read_to_string(dir.join("parent")) {
                Ok(p) => Some(
                    p.trim()
                        .parse()
                        .map_err(|e| Error::Layer(format!("{}: {e}", dir.display())))?,
                ),
                Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                Err(e) => return Err(io_err("read parent", &dir, e)),
            };
        }
        Ok(out)
    }

    fn tmp_dir(&self) -> Result<PathBuf> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let p = self.root.join("tmp").join(format!(
            "{}-{}",
            owner::token(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(p.join("fs")).map_err(|e| io_err("create directory", &p, e))?;
        Ok(p)
    }

    /// Move a prepared directory (holding `fs/`) into place as layer `chain`. If another
    /// process got there first, its copy wins and ours is dropped.
    fn install(
        &self,
        staged: &Path,
        chain: &Digest,
        parent: Option<&Digest>,
        diff_id: &Digest,
    ) -> Result<()> {
        if let Some(p) = parent {
            fs::write(staged.join("parent"), p.to_string())
                .map_err(|e| io_err("write parent", staged, e))?;
        }
        fs::write(staged.join("diff"), diff_id.to_string())
            .map_err(|e| io_err("write diff id", staged, e))?;
        let target = self.layer_dir(chain);
        match fs::rename(staged, &target) {
            Ok(()) => Ok(()),
            Err(_) if target.join("fs").is_dir() => {
                let _ = fs::remove_dir_all(staged);
                Ok(())
            }
            Err(e) => Err(io_err("install layer", &target, e)),
        }
    }

    /// Unpack a layer (uncompressed tar) with `diff_id` on top of `parent`; returns the
    /// new chain ID. Does nothing if that chain is already unpacked.
    pub fn apply(
        &self,
        parent: Option<&Digest>,
        diff_id: &Digest,
        layer: impl io::Read,
    ) -> Result<Digest> {
        let chain = chain_id(parent, diff_id);
        if self.exists(&chain) {
            return Ok(chain);
        }
        if let Some(p) = parent
            && !self.exists(p)
        {
            return Err(Error::NotFound(p.to_string()));
        }
        self.install_staged(self.stage(diff_id, layer)?, parent)
    }

    /// Unpack a layer (uncompressed tar) into a staging directory of its own, not yet
    /// part of any chain: a layer's unpack needs nothing of the layers below it (each is
    /// its own directory, overlayfs stacks them), so the layers of an image can be
    /// staged at once and installed in order with [`Snapshotter::install_staged`].
    /// A staging directory carries this process's owner token: dropped, or left by a
    /// process that died, it is removed, and no chain ever names it.
    pub fn stage(&self, diff_id: &Digest, layer: impl io::Read) -> Result<Staged> {
        let dir = self.tmp_dir()?;
        let staged = Staged {
            dir: Some(dir),
            diff_id: diff_id.clone(),
        };
        crate::apply_layer(&staged.path().join("fs"), layer)?;
        Ok(staged)
    }

    /// Make a staged layer the chain on top of `parent`, which must be unpacked (the
    /// order a chain's layers become visible in: a chain directory exists only above
    /// existing ones); returns the chain ID. If the chain appeared meanwhile (another
    /// build), that copy stays and the staged one goes.
    pub fn install_staged(&self, mut staged: Staged, parent: Option<&Digest>) -> Result<Digest> {
        let chain = chain_id(parent, &staged.diff_id);
        if let Some(p) = parent
            && !self.exists(p)
        {
            return Err(Error::NotFound(p.to_string()));
        }
        let dir = staged.dir.take().expect("staged once");
        if let Err(e) = self.install(&dir, &chain, parent, &staged.diff_id) {
            let _ = fs::remove_dir_all(&dir);
            return Err(e);
        }
        Ok(chain)
    }

    /// Start an active snapshot on `parent` (`None`: an empty root).
    pub fn prepare(&self, key: &str, parent: Option<&Digest>) -> Result<Active> {
        let lowers = match parent {
            Some(p) => self.lowers(p)?,
            None => vec![self.root.join("empty")],
        };
        let dir = self.root.join("active").join(key);
        let (upper, work) = (dir.join("fs"), dir.join("work"));
        for d in [&upper, &work] {
            fs::create_dir_all(d).map_err(|e| io_err("create directory", d, e))?;
        }
        Ok(Active {
            key: key.to_string(),
            parent: parent.cloned(),
            upper,
            work,
            lowers,
        })
    }

    /// Commit an active snapshot whose diff has `diff_id` as a layer; returns its chain.
    pub fn commit(&self, active: Active, diff_id: &Digest) -> Result<Digest> {
        let chain = chain_id(active.parent.as_ref(), diff_id);
        let dir = self.root.join("active").join(&active.key);
        let _ = fs::remove_dir_all(&active.work);
        if self.exists(&chain) {
            let _ = fs::remove_dir_all(&dir);
            return Ok(chain);
        }
        self.install(&dir, &chain, active.parent.as_ref(), diff_id)?;
        Ok(chain)
    }

    /// Throw an active snapshot away.
    pub fn remove(&self, active: Active) -> Result<()> {
        let dir = self.root.join("active").join(&active.key);
        fs::remove_dir_all(&dir).map_err(|e| io_err("remove snapshot", &dir, e))
    }

    /// Remove active snapshots no live process owns (keys start with an owner token,
    /// see [`crate::owner`]).
    pub fn clean_active(&self) {
        let Ok(entries) = fs::read_dir(self.root.join("active")) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if owner::is_gone(&self.owners(), &name) {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
}
