//! berth-store owns everything berth keeps on disk about images: the content store
//! (blobs named by digest, written through ingests that hash while they write and become
//! visible only on commit under the expected digest), the repository metadata a registry
//! serves (which blobs and manifests a repository holds, its tags, the referrers of its
//! manifests) and garbage collection, whose roots beyond the repositories (the build
//! cache's layers) their owners give through [`GcRoots`].
//!
//! Everything is plain files under one root, changed only by atomic renames, so several
//! processes can share a root and a killed process leaves nothing half-written visible:
//!
//! ```text
//! root/blobs/<alg>/<hex>                         committed content, read-only
//! root/ingest/<ref>/data                         an ingest being written (locked while open)
//! root/ingest/<ref>/owner                        who started it (a registry upload: its repository)
//! root/repositories/<name>/_blobs/<alg>/<hex>    the repository holds this blob
//! root/repositories/<name>/_manifests/<alg>/<hex> ... this manifest (file holds its media type)
//! root/repositories/<name>/_tags/<tag>           tag -> manifest digest
//! root/repositories/<name>/_referrers/<alg>-<hex>/<alg>-<hex>  descriptor of a referrer
//! root/blobinfo/<alg>/<hex>/...                  hints about a blob: remote sources, uncompressed size
//! root/inuse/<alg>-<hex>                         locked by builds using that image (see `images`)
//! root/resolved/<name>/<tag>                     when a remote tag was last resolved (see `resolved`)
//! ```
//!
//! A lifecycle, as a registry upload uses it:
//!
//! ```
//! # let dir = tempfile::tempdir().unwrap();
//! use berth_oci::{Algorithm, Digest};
//! use berth_store::Store;
//!
//! let store = Store::open(dir.path()).unwrap();
//! let mut w = store.writer("upload-1", Algorithm::Sha256).unwrap();
//! w.write_all(b"hello ").unwrap();
//! drop(w); // closed without commit: the ingest stays and can be resumed
//! let mut w = store.writer("upload-1", Algorithm::Sha256).unwrap();
//! assert_eq!(w.offset(), 6);
//! w.write_all(b"world").unwrap();
//! let want = Digest::sha256(b"hello world");
//! let got = w.commit(Some(&want), None).unwrap();
//! assert_eq!(got.digest, want);
//! assert_eq!(store.blob_size(&want).unwrap(), Some(11));
//! ```

mod blobinfo;
mod content;
mod error;
mod fsutil;
mod gc;
mod images;
mod meta;
mod protect;
mod resolved;

pub use blobinfo::Uncompressed;
pub use content::{Committed, IngestInfo, Store, Writer};
pub use error::{Error, ErrorKind, Result};
pub use gc::{CheckReport, GcOptions, GcReport, GcRoots, NoRoots, Problem, ProblemKind};
pub use images::{ImageClaim, ImageEntry, ImageHold, ImageTree, Untagged};
pub use meta::Repos;
pub use protect::{BlobGuard, CLOCK_MARGIN, STAMP_SLACK};
pub use resolved::Resolution;
