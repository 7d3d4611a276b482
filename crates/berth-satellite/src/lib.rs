//! berth-satellite owns berth's remote builder ("satellite") and its client. A satellite is
//! `berth build` run as a service: the same build engine and store, reached over one mutual
//! TLS listener that carries the gRPC control API (enrollment, status, context sync, builds
//! with their event streams) and the registry API over the satellite's store, for images
//! going out.
//!
//! Trust sets itself up (berth-pki): the first start makes the satellite's CA; a one-time
//! token carries the CA's pin; [`Enrollments::add`] connects pinned, sends a CSR for a key
//! made on the client, and keeps the certificate it gets. Every later call presents it.
//!
//! A client may group satellites into [`pool`]s and send each build to the member that
//! already holds most of its cache.
//!
//! Build contexts travel content-addressed ([`context`]): the client lists names, modes and
//! digests, and uploads only the contents the satellite lacks.
#![warn(missing_docs)]

mod client;
pub mod config;
pub mod context;
mod error;
mod metrics;
pub mod pool;
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto;
mod pull;
mod server;
mod service;
mod ssh;

pub use client::{
    Connection, Described, Enrolled, Enrollments, Refusal, RemoteBuild, RemoteResult,
    SatelliteProbe, build, build_described, connect, connect_watched, describe,
    earthfile_registry_hosts, probe, remote_error,
};
pub use config::SatelliteConfig;
pub use error::SatError;
pub use pool::{Candidate, POOL_PREFIX, Pool, Pools};
pub use server::{ClientRecord, DEFAULT_PORT, Opened, Satellite, SatelliteOptions, SatelliteRoot};
