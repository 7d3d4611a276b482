use std::io;
use std::path::PathBuf;

use berth_oci::Digest;

/// Result with the store's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Classes of failure a caller can act on (after containerd's errdefs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The thing asked for does not exist.
    NotFound,
    /// The input is wrong (a digest or size that does not match, a bad name).
    InvalidArgument,
    /// Someone else holds it right now (an ingest open in another writer).
    Unavailable,
    /// The disk or the OS failed.
    Io,
}

/// A store failure. I/O errors name the operation and the path.
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
    /// Committed content does not hash to the digest the caller expected.
    #[error("content digest mismatch: expected {expected}, got {got} ({size} bytes)")]
    DigestMismatch {
        /// What the caller said the content is.
        expected: Digest,
        /// What it hashes to.
        got: Digest,
        /// How many bytes were written.
        size: u64,
    },
    /// Committed content is not of the size the caller expected.
    #[error("content size mismatch: expected {expected} bytes, got {got} bytes")]
    SizeMismatch {
        /// What the caller said.
        expected: u64,
        /// What was written.
        got: u64,
    },
    /// The ingest is open in another writer (this process or another one).
    #[error("ingest {0:?} is in use by another writer")]
    Locked(String),
    /// Something does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// The input cannot be used.
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    /// The class of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Io { source, .. } if source.kind() == io::ErrorKind::NotFound => {
                ErrorKind::NotFound
            }
            Error::Io { .. } => ErrorKind::Io,
            Error::DigestMismatch { .. } | Error::SizeMismatch { .. } | Error::Invalid(_) => {
                ErrorKind::InvalidArgument
            }
            Error::Locked(_) => ErrorKind::Unavailable,
            Error::NotFound(_) => ErrorKind::NotFound,
        }
    }

    /// Whether this is a [`ErrorKind::NotFound`].
    pub fn is_not_found(&self) -> bool {
        self.kind() == ErrorKind::NotFound
    }
}

/// Attach an operation and a path to an I/O result.
pub(crate) trait IoContext<T> {
    fn ctx(self, op: &'static str, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, op: &'static str, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|source| Error::Io {
            op,
            path: path.into(),
            source,
        })
    }
}
