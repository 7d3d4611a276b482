//! Build errors: what failed, where, and what to do.

use crate::frontend::source::SourceError;

/// Result with [`BuildError`].
pub type Result<T, E = BuildError> = std::result::Result<T, E>;

/// Why a build failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The build file is malformed (carries file:line:column and the offending line).
    #[error(transparent)]
    Source(#[from] SourceError),
    /// A step's command exited non-zero.
    #[error("{step}: command {command} exited with code {code}{}", tail(.output))]
    StepFailed {
        /// The step (`[build 2/4] RUN make`).
        step: String,
        /// The command as run.
        command: String,
        /// Its exit code.
        code: i32,
        /// Its last output lines.
        output: String,
    },
    /// A COPY/ADD source is missing.
    #[error(
        "source {0:?} not found in the build context, or excluded by .dockerignore; check the path relative to the context directory"
    )]
    SourceNotFound(String),
    /// A base image could not be resolved.
    #[error("{0}")]
    Image(String),
    /// A required secret was not given.
    #[error(
        "secret {0:?} is required by the build but was not given; pass --secret id={0},src=FILE or id={0},env=VAR"
    )]
    MissingSecret(String),
    /// A step needs an SSH agent (`--mount=type=ssh,required`) that was not given.
    #[error(
        "no SSH agent {0:?} was forwarded to the build, and a RUN --mount=type=ssh,required needs it; pass --ssh {0} (the agent of $SSH_AUTH_SOCK) or --ssh {0}=/path/to/agent.sock"
    )]
    MissingSsh(String),
    /// The build was canceled (Ctrl-C, SIGTERM).
    #[error("the build was canceled")]
    Canceled,
    /// Input that is well-formed but unusable.
    #[error("{0}")]
    Invalid(String),
    /// A COPY/ADD would put a folder where the image has a file or a symlink, or a file
    /// where it has a folder (BuildKit refuses both too).
    #[error("{0}")]
    Conflict(String),
    /// An I/O failure (operation and path in the message).
    #[error("{0}")]
    Io(String),
    /// A remote source (`ADD https://…`) could not be fetched or did not match.
    #[error("{0}")]
    Remote(String),
    /// The content store failed.
    #[error(transparent)]
    Store(#[from] berth_store::Error),
    /// Moving an image between a registry and the store failed.
    #[error(transparent)]
    Transfer(#[from] berth_client::TransferError),
    /// A snapshot operation failed.
    #[error(transparent)]
    Snapshot(#[from] berth_snapshot::Error),
    /// The container runtime failed.
    #[error(transparent)]
    Exec(#[from] berth_exec::Error),
}

fn tail(output: &str) -> String {
    if output.trim().is_empty() {
        String::new()
    } else {
        format!("; its last output:\n{}", output.trim_end())
    }
}
