//! One error type for the satellite and its client, mapped to gRPC statuses in one place.

use std::path::Path;

/// What went wrong, on either side.
#[derive(Debug, thiserror::Error)]
pub enum SatError {
    /// A file operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// To which file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The request is malformed or refers to something that does not exist.
    #[error("{0}")]
    BadRequest(String),
    /// The caller may not do this (no certificate, missing entitlement, bad token).
    #[error("{0}")]
    Denied(String),
    /// The satellite is draining or otherwise not taking builds.
    #[error("{0}")]
    Unavailable(String),
    /// Trust: certificates, keys, tokens.
    #[error(transparent)]
    Pki(#[from] berth_pki::PkiError),
    /// The build failed.
    #[error(transparent)]
    Build(#[from] berth_build::BuildError),
    /// Talking to the satellite failed.
    #[error("{0}")]
    Remote(String),
    /// The connection to the satellite was refused or reset before any request went
    /// out (nothing listens yet, a Service without a ready endpoint): trying again
    /// repeats nothing the satellite saw.
    #[error("{0}")]
    Unreachable(String),
    /// A bug or an unexpected state.
    #[error("{0}")]
    Internal(String),
}

impl SatError {
    /// Whether the satellite could not take a build (unreachable, lost, draining, or
    /// refusing this client), as opposed to the build or its request being wrong: the
    /// errors on which a pool tries its next member.
    pub fn is_satellite_unavailable(&self) -> bool {
        matches!(
            self,
            SatError::Remote(_)
                | SatError::Unreachable(_)
                | SatError::Unavailable(_)
                | SatError::Denied(_)
                | SatError::Pki(_)
        )
    }

    /// A closure mapping an I/O error on `path` while doing `op`.
    pub fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SatError + use<> {
        let path = path.display().to_string();
        move |source| SatError::Io { op, path, source }
    }
}

impl From<SatError> for tonic::Status {
    fn from(e: SatError) -> tonic::Status {
        use berth_build::BuildError;
        let msg = e.to_string();
        match e {
            SatError::BadRequest(_) => tonic::Status::invalid_argument(msg),
            SatError::Denied(_) => tonic::Status::permission_denied(msg),
            SatError::Unavailable(_) => tonic::Status::unavailable(msg),
            SatError::Pki(p) if p.as_token().is_some() => tonic::Status::permission_denied(msg),
            SatError::Pki(berth_pki::PkiError::Csr { .. }) => tonic::Status::invalid_argument(msg),
            SatError::Build(BuildError::Canceled) => tonic::Status::cancelled(msg),
            SatError::Build(_) => tonic::Status::failed_precondition(msg),
            _ => tonic::Status::internal(msg),
        }
    }
}
