//! One error type for the deploy file, the agent and its client.

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// The deploy file is wrong: the file, the key and what to change.
    #[error("{file}: {key}: {message}")]
    Config {
        /// The file.
        file: String,
        /// The key (`deploy.services.web.ports[0]`) or `line N`.
        key: String,
        /// What is wrong.
        message: String,
    },
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
    /// The request is malformed or names something that does not exist.
    #[error("{0}")]
    BadRequest(String),
    /// The caller may not do this (no certificate, bad token).
    #[error("{0}")]
    Denied(String),
    /// Trust: certificates, keys, tokens.
    #[error(transparent)]
    Pki(#[from] berth_pki::PkiError),
    /// The host's Docker daemon failed.
    #[error("{0}")]
    Docker(String),
    /// The new version did not become healthy; the old one keeps serving.
    #[error("{0}")]
    Unhealthy(String),
    /// Talking to an agent failed.
    #[error("{0}")]
    Remote(String),
    /// A bug or an unexpected state.
    #[error("{0}")]
    Internal(String),
}

impl DeployError {
    /// A closure mapping an I/O error on `path` while doing `op`.
    pub fn io(
        op: &'static str,
        path: &std::path::Path,
    ) -> impl FnOnce(std::io::Error) -> DeployError + use<> {
        let path = path.display().to_string();
        move |source| DeployError::Io { op, path, source }
    }
}
