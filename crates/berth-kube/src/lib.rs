//! berth-kube owns berth on Kubernetes: the `[k8s]` table of `berth.toml` ([`config`]),
//! rendering `[deploy]` services into Deployments, Services, ConfigMaps and Secrets
//! ([`render`]), the one function every PodSpec berth renders goes through ([`pod`]:
//! service account and merged image pull secrets), the per-namespace pull secret and its
//! ServiceAccount ([`pull`]), knowing what the server has before sending anything
//! ([`version`]), server-side apply under one field manager with conflicts reported
//! ([`apply`]), rollouts waited on and rollbacks to the previous ReplicaSet revision
//! ([`rollout`]), a satellite in the cluster ([`satellite`], printed through the small
//! YAML emitter [`yaml`]), berth's registry as replicas on one bucket ([`registry`]), and
//! pruning what no kept revision needs after a deploy ([`prune`]).
//! The client takes berth's `[network]` settings (proxy, NO_PROXY, extra CAs) like every
//! other client of berth ([`KubeOptions::network`]).
//!
//! Building and pushing images is the caller's (berth-cli owns the store); this crate
//! gets the pinned image references.
//!
//! Not yet: helper pods.
#![warn(missing_docs)]

pub mod apply;
pub mod config;
mod error;
pub mod pod;
pub mod prune;
pub mod pull;
pub mod registry;
pub mod render;
pub mod rollout;
pub mod satellite;
pub mod version;
pub mod yaml;

pub use apply::{Kube, KubeOptions};
pub use config::K8sConfig;
pub use error::KubeError;

/// The one field manager berth applies with.
pub const FIELD_MANAGER: &str = "berth";
