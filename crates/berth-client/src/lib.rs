//! berth-client owns talking to registries as a client, for image references as
//! berth-oci parses them ([`berth_oci::Reference`]): credentials (the
//! Docker config file, credential helpers, berth's own), the Distribution API's token
//! and basic auth dance, TLS with extra CAs or none for insecure registries, and
//! pulling manifests and blobs with their digests verified; and moving whole images
//! between a registry and berth's content store ([`transfer`]: pull, push,
//! cross-repository mounts), which builds, satellites and `berth push` share.
//!
//! Proxies, NO_PROXY and extra CAs come from the [`berth_net::Network`] the client is
//! given; [`Client::fetch_url`] downloads plain URLs (`ADD https://…`) with the same
//! settings. Registry mirrors ([`HostOptions::mirrors`]) serve pulls before their upstream.
//! [`Client::probe`] checks one registry step by step (name, connection, TLS, API,
//! credentials, rate limit) for `berth doctor`.

mod auth;
mod client;
mod probe;
pub mod transfer;
mod url;

pub use auth::{Credentials, DockerConfig, docker_config_path, save_credentials};
pub use client::{
    BlobBody, BlobPush, Client, ClientConfig, Error, Head, HostOptions, Pulled, Result,
    check_mirror,
};
pub use probe::{Outcome, ProbeStep, RateLimit};
pub use transfer::{
    ArrivalWatch, ArrivingBlob, LayerData, LayerSink, Platform, PullEvent, PullOptions,
    PullProgress, PulledImage, TransferError, pull_image, push_image, push_manifest,
};
pub use url::{UrlFetch, Validators};
