//! berth-snapshot owns the file-system side of a build: layers unpacked once into
//! directories named by their chain ID, active snapshots (an overlayfs upperdir and
//! workdir over those directories), and turning an upperdir back into a layer.
//!
//! Snapshots are returned as *mount plans* ([`berth_oci::Mount`] values), never mounted
//! here: the executor mounts them. That keeps the plan testable as data.
//!
//! The vocabulary follows containerd: a committed snapshot has a *name* (its chain ID,
//! the OCI `ChainID` of the layers below and including it), an active one has a *key*,
//! and each has a *parent*.
//!
//! Unpacked layers keep overlayfs' own encoding of deletions — whiteouts are character
//! devices 0/0, opaque directories carry `trusted.overlay.opaque=y` — so a committed
//! upperdir can serve as a lowerdir as it is, and [`diff`] turns that encoding into OCI's
//! `.wh.` entries.

mod apply;
mod compression;
mod diff;
pub mod owner;
mod snapshotter;

pub use apply::{Cancelable, apply_layer, apply_layer_flat};
pub use compression::{Compression, recompress};
pub use diff::{DiffOptions, LayerInfo, diff, diff_into};
pub use snapshotter::{Active, Error, Result, Snapshotter, Staged, chain_id, overlay_mount};
