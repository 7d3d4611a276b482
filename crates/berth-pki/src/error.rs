//! The crate's errors: one enum for I/O, certificates and configuration, one for tokens.

use std::path::PathBuf;

/// What went wrong in berth-pki. Every variant says what failed, where, and what to do.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A file operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done ("write", "read", "lock" …).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// rcgen could not make, sign or parse something.
    #[error("{what}: {source}")]
    Rcgen {
        /// What was being made or parsed.
        what: String,
        /// rcgen's error.
        #[source]
        source: rcgen::Error,
    },
    /// A certificate could not be read.
    #[error("cannot read {what}: {reason}")]
    BadCertificate {
        /// Which certificate.
        what: String,
        /// Why.
        reason: String,
    },
    /// A private key file can be read by other users.
    #[error(
        "{path} is readable by other users (mode {mode:o}); run `chmod 600 {path}` and check who copied it",
        path = path.display()
    )]
    InsecureKeyFile {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The CA certificate and key on disk do not belong together.
    #[error(
        "{dir}: ca.crt and ca.key do not belong together; restore both from the same backup",
        dir = dir.display()
    )]
    KeyMismatch {
        /// The CA directory.
        dir: PathBuf,
    },
    /// A file berth wrote is damaged.
    #[error("{path} is damaged: {reason}; restore it from a backup or remove it to start over", path = path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A certificate signing request was refused.
    #[error("certificate signing request for client {client} refused: {reason}")]
    Csr {
        /// The client name the request was made for.
        client: String,
        /// Why it was refused.
        reason: String,
    },
    /// An enrollment answer came with a CA other than the token pinned.
    #[error(
        "enrollment refused: {0}; the token may belong to another server, or someone is \
         intercepting the connection"
    )]
    CaMismatch(String),
    /// rustls refused a configuration.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// An enrollment or pull token was malformed or refused.
    #[error(transparent)]
    Token(#[from] TokenError),
}

impl PkiError {
    /// The token error, when this is one (callers map them to their protocol's codes).
    pub fn as_token(&self) -> Option<&TokenError> {
        match self {
            PkiError::Token(e) => Some(e),
            _ => None,
        }
    }

    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| PkiError::Io { op, path, source }
    }

    pub(crate) fn rcgen(what: impl Into<String>) -> impl FnOnce(rcgen::Error) -> Self {
        let what = what.into();
        move |source| PkiError::Rcgen { what, source }
    }
}

/// Why a token was not accepted. Each case is distinct so the client can say what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The text is not a berth token.
    #[error(
        "the token is malformed: {reason}; expected `berth-<id>.<secret>@<host:port>#sha256:<pin>`, \
         copy it again from the output of `berth satellite token create`"
    )]
    Malformed {
        /// What is wrong with it.
        reason: String,
    },
    /// No token with this id exists on the satellite.
    #[error(
        "token {id} is not known to this satellite; create one with `berth satellite token create` on it"
    )]
    Unknown {
        /// The token id.
        id: String,
    },
    /// The secret does not match the token id.
    #[error("token {id}: the secret does not match; copy the whole token again")]
    WrongSecret {
        /// The token id.
        id: String,
    },
    /// The token has expired.
    #[error("token {id} expired on {at}; create a new one with `berth satellite token create`")]
    Expired {
        /// The token id.
        id: String,
        /// When it expired (UTC).
        at: String,
    },
    /// The token was revoked.
    #[error("token {id} was revoked on {at}; create a new one with `berth satellite token create`")]
    Revoked {
        /// The token id.
        id: String,
        /// When it was revoked (UTC).
        at: String,
    },
    /// The token has no uses left.
    #[error(
        "token {id} was already used ({uses} use(s) allowed); create a new one with \
         `berth satellite token create` (`--uses` allows more)"
    )]
    UsedUp {
        /// The token id.
        id: String,
        /// How many uses it allowed.
        uses: u32,
    },
    /// The token is of another kind (a pull token offered for enrollment, or the reverse).
    #[error(
        "token {id} is a {actual} token, not an {wanted} token; create one with the right kind"
    )]
    WrongKind {
        /// The token id.
        id: String,
        /// The kind the caller needs.
        wanted: String,
        /// The kind the token has.
        actual: String,
    },
}
