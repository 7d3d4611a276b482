//! Pull tokens as registry credentials: a deploy host runs `docker login SATELLITE -u
//! berth-<id> -p <secret>` with a token from `berth satellite token create --pull`, and may
//! then pull (never push or delete) from the satellite's registry.
//!
//! A token is checked against the token store on every request (a SHA-256 and one small
//! file read; see [`TokenStore::verify`]), so a revocation takes effect at once. Guessing is
//! left to the registry's login throttling, which every [`Credentials`] goes through.

use std::time::SystemTime;

use berth_pki::{TokenError, TokenKind, TokenStore};
use berth_registry::{Action, Credentials, LoginError};

/// The user name of a pull token: `berth-<id>`.
pub(crate) const USER_PREFIX: &str = "berth-";

/// The satellite's pull tokens, as registry credentials: user `berth-<id>`, password the
/// token's secret; pull only.
#[derive(Debug)]
pub(crate) struct PullTokens {
    pub(crate) tokens: TokenStore,
}

impl Credentials for PullTokens {
    fn verify(&self, user: &str, password: &str) -> Result<(), LoginError> {
        let Some(id) = user.strip_prefix(USER_PREFIX) else {
            return Err(LoginError::BadCredentials);
        };
        let err = match self
            .tokens
            .verify(TokenKind::Pull, id, password, SystemTime::now())
        {
            Ok(_) => return Ok(()),
            Err(e) => e,
        };
        // Past the secret check the holder may learn why the token no longer works.
        let again = "ask the satellite's operator for a new one \
                     (`berth satellite token create --pull` on the satellite)";
        Err(match err.as_token() {
            Some(TokenError::Revoked { id, at }) => {
                LoginError::Refused(format!("pull token {id} was revoked on {at}; {again}"))
            }
            Some(TokenError::Expired { id, at }) => {
                LoginError::Refused(format!("pull token {id} expired on {at}; {again}"))
            }
            Some(TokenError::WrongKind { id, actual, .. }) => LoginError::Refused(format!(
                "token {id} is an {actual} token, which `docker login` cannot use; {again}"
            )),
            Some(e @ TokenError::UsedUp { .. }) => LoginError::Refused(e.to_string()),
            Some(_) => LoginError::BadCredentials,
            None => {
                tracing::warn!("check pull token {id}: {err}");
                LoginError::BadCredentials
            }
        })
    }

    /// Tokens expire and can be revoked: checked on every request.
    fn lasting(&self) -> bool {
        false
    }

    fn allowed(&self, user: Option<&str>, _repository: &str, action: Action) -> bool {
        user.is_some() && action == Action::Pull
    }

    fn denied(&self, user: &str, repository: &str, action: Action) -> String {
        let id = user.strip_prefix(USER_PREFIX).unwrap_or(user);
        format!(
            "pull token {id} may only pull: it may not {action} repository {repository}; \
             build and tag images with an enrolled client (`berth build --satellite NAME -t …`)"
        )
    }
}
