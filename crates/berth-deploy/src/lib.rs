//! berth-deploy owns deploys to hosts: the deploy file (`[deploy]` of `berth.toml`,
//! [`config`]), the agent that runs on each host ([`agent`]: enrollment with a one-time
//! token and a pinned CA through berth-pki, as satellites do; the host's dockerd through
//! bollard; a reverse proxy per published port, [`proxy`], or the host's own proxy handed
//! an upstream file and reloaded, [`config::ExternalProxy`]; the history of versions) and
//! the deploying machine's side ([`client`], [`deployer`]): enrolled hosts, batches,
//! rollbacks.
//!
//! A deploy on one host pulls the pinned image, starts the new container beside the old
//! one, waits for its health check, switches the proxy, drains, reports, and then stops
//! and removes the old one ([`engine`]). Building and pushing the image is the caller's (berth-cli), which owns
//! the store.
//!
//! SSH-driven hosts ([`ssh`]) run the same agent, as a container berth installs through
//! the host's dockerd over the system `ssh`.
//!
//! A deploy of a service holds its lock on the host ([`lock`], kept in the agent's state
//! directory, so an agent process that restarts sees it, and a deploy that died with its
//! process is cleaned after).
//!
//! Not yet: agents dialing out (`--connect`), `[network]` settings for agents.
#![warn(missing_docs)]

pub mod agent;
pub mod api;
pub mod bridge;
pub mod client;
pub mod config;
pub mod deployer;
pub mod engine;
mod error;
pub mod lock;
pub mod proxy;
pub mod ssh;

pub use agent::{Agent, AgentOptions, AgentRoot};
pub use client::{AgentClient, HostRecord, Hosts};
pub use config::DeployFile;
pub use error::DeployError;
