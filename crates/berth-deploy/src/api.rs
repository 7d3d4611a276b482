//! What travels between the deploying machine and an agent (JSON over mutual TLS).
//!
//! | call | body | answer |
//! |---|---|---|
//! | `POST /v1/enroll` (no client certificate) | [`berth_pki::EnrollRequest`] | [`berth_pki::EnrollResponse`] |
//! | `GET /v1/status` | | [`Status`] |
//! | `POST /v1/deploy` | [`DeployRequest`] | [`DeployReport`] |
//! | `GET /v1/services/{name}/history` | | [`Vec<Release>`], newest first |
//! | `GET /v1/services` | | [`Vec<ServiceState>`] |
//! | `GET /v1/services/{name}/logs?tail=N&follow=true` | | the serving container's output (text, streamed) |
//! | `POST /v1/services/{name}/exec` | [`ExecRequest`] | [`ExecResult`] |
//!
//! Errors answer a status code and `{"error": "…"}`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::Service;

/// A deploy of one service on one host.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeployRequest {
    /// The service as the deploy file describes it (secrets by source only).
    pub service: Service,
    /// What the host pulls: `registry/repository@sha256:…`.
    pub image: String,
    /// The version's name (the image's tag, or what `--version` said).
    pub version: String,
    /// Secret values: they go into the container's environment and nowhere else on the
    /// host (not into its history).
    pub secrets: BTreeMap<String, String>,
    /// Credentials for this pull only (never written to the host's Docker config).
    pub registry_auth: Option<RegistryAuth>,
    /// Versions the host keeps.
    pub history: usize,
}

/// Registry credentials handed to the host's dockerd with one pull.
#[derive(Clone, Serialize, Deserialize)]
pub struct RegistryAuth {
    /// `host[:port]`.
    pub server: String,
    /// User name.
    pub username: String,
    /// Password.
    pub password: String,
}

impl std::fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryAuth")
            .field("server", &self.server)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// What a deploy did on a host.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeployReport {
    /// The version now serving.
    pub serving: Option<String>,
    /// What happened, step by step.
    pub steps: Vec<String>,
    /// Why the deploy failed (the previous version, if any, keeps serving).
    pub error: Option<String>,
}

/// One version a host ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    /// Its name.
    pub version: String,
    /// The pinned image (`registry/repository@sha256:…`).
    pub image: String,
    /// When it went live (seconds since the epoch).
    pub deployed_unix: u64,
    /// The service as deployed (secret values are not kept).
    pub service: Service,
}

/// An agent's answer to `GET /v1/status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    /// The agent's name.
    pub name: String,
    /// berth's version.
    pub version: String,
    /// The Docker daemon's version, or why it did not answer.
    pub docker: String,
}

/// A service on a host (`GET /v1/services`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceState {
    /// The service.
    pub name: String,
    /// The serving version.
    pub version: String,
    /// Its pinned image, from the history.
    pub image: Option<String>,
    /// Its container (the first replica).
    pub container: String,
    /// Every replica's container (agents before replicas sent only `container`).
    #[serde(default)]
    pub containers: Vec<String>,
    /// Docker's state of those containers (`running`, `exited`, …, or why none; the
    /// different states of the replicas comma-separated).
    pub state: String,
    /// Published ports (`host:container`).
    pub ports: Vec<String>,
    /// A deploy running now: by which client, since when (seconds since the epoch).
    /// Not while it only removes the old containers after its report: see `removing`.
    pub deploying: Option<(String, u64)>,
    /// Old containers a deploy that has reported is stopping and removing now (it still
    /// holds the lock; a new deploy waits for the end).
    #[serde(default)]
    pub removing: Vec<String>,
    /// Old containers whose removal after a deploy failed, and dockerd's error: they
    /// still exist, and the next deploy of the service tries again.
    #[serde(default)]
    pub leftovers: Vec<(String, String)>,
}

/// A command to run in a service's serving container.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecRequest {
    /// The command and its arguments.
    pub cmd: Vec<String>,
    /// Which replica runs it, from 1 [default: the first].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<u32>,
}

/// What an exec did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecResult {
    /// Its exit code.
    pub exit_code: i64,
    /// Its output (stdout and stderr interleaved).
    pub output: String,
}
