//! berth-registry owns the OCI Distribution Spec v1.1 HTTP server: routing of the `/v2/`
//! API (nested repository names included), content negotiation, uploads (monolithic,
//! chunked, cross-repository mounts), tags, the referrers API and the catalog, basic
//! authentication with per-repository rights (htpasswd, or any [`Credentials`]), TLS,
//! request logs and graceful shutdown; and a pull-through cache serving upstream
//! registries as read-only namespaces beside the local repositories ([`MirrorConfig`]).
//! Content and metadata live in a [`berth_store::Store`], or in an S3-compatible bucket
//! ([`ObjectStorage`], `Config::objects`) shared by any number of replicas; the registry
//! holds nothing but open upload writers in memory, so it can be killed at any moment.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! let store = berth_store::Store::open("/var/lib/berth").unwrap();
//! let registry = berth_registry::Registry::new(berth_registry::Config::new(store));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:5000").await?;
//! berth_registry::serve(listener, registry.router(), None, std::future::pending()).await
//! # }
//! ```

mod auth;
mod error;
mod mirror;
mod objects;
mod routes;
mod server;

pub use auth::{
    Access, AccessRule, Action, Auth, AuthError, Credentials, Htpasswd, LoginError, LoginLimits,
};
pub use error::{Code, RegistryError};
pub use mirror::{
    DEFAULT_TAG_TTL, EvictReport, MirrorConfig, MirrorSettings, Upstream, check_mirrors,
    check_prefix, evict, upstream_client_config,
};
pub use objects::{ObjectStorage, S3Settings, StorageError};
pub use routes::{Config, Registry};
pub use server::{
    PeerCertificates, ServeOptions, TlsError, default_max_connections, serve, serve_with,
    tls_acceptor,
};
