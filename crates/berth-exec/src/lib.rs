//! berth-exec owns running a process in a container: the [`Executor`] trait (a process
//! over a root file system given as mounts, plus extra mounts), mounting those mount
//! plans (overlayfs through the new mount API, so deep images do not hit the one-page
//! limit of classic mount options), and the runc implementation, which writes an OCI
//! bundle and drives Debian's `runc`.
//!
//! Steps are isolated as Docker isolates containers by default: a network namespace of
//! their own with outbound access through slirp4netns (pooled, see the `net` module),
//! Docker's default seccomp profile, capabilities, and masked and read-only `/proc`
//! paths.
//!
//! Nothing is left behind by a crash: bundles are named `<pid>-<n>`, and opening a
//! [`Runc`] executor deletes the containers, mounts and bundles of processes that are
//! gone.

mod bundle;
mod mount;
mod net;
mod preflight;
mod privileged;
mod runc;
mod seccomp;

use std::path::PathBuf;

use berth_oci::Mount;

pub use bundle::BundleBuilder;
pub use mount::{MountGuard, cleanup_stale_mounts, mount_rootfs};
pub use net::{DNS_ADDR, STEP_ADDR, host_addresses};
pub use preflight::{HostCheck, host_checks};
pub use runc::Runc;

/// Result with the executor's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An executor failure (not a non-zero exit, which is a normal outcome).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O operation failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A mount plan could not be mounted.
    #[error("mount {what} on {}: {source}", target.display())]
    Mount {
        /// Which mount.
        what: String,
        /// Where.
        target: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The request is malformed (bad container id, unsupported mount).
    #[error("{0}")]
    Invalid(String),
    /// The runtime itself failed (not the process in it).
    #[error("runc failed: {0}")]
    Runtime(String),
    /// A step's network could not be set up.
    #[error("step network: {0}")]
    Network(String),
}

/// Network for the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Network {
    /// A namespace of its own with outbound access through slirp4netns, fenced off the
    /// host's loopback and addresses (the default, as Docker and BuildKit isolate
    /// steps).
    #[default]
    Isolated,
    /// A namespace of its own with only loopback.
    None,
    /// The host's network namespace (a build grants it only with the `network.host`
    /// entitlement).
    Host,
}

/// What to run (after BuildKit's `executor.Meta`).
#[derive(Debug, Clone, Default)]
pub struct Meta {
    /// argv.
    pub args: Vec<String>,
    /// `KEY=value` pairs.
    pub env: Vec<String>,
    /// Working directory inside the container.
    pub cwd: String,
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Supplementary groups.
    pub additional_gids: Vec<u32>,
    /// Host name.
    pub hostname: String,
    /// Network mode.
    pub network: Network,
    /// Lines added to the process's `/etc/hosts`, name then address (`docker build
    /// --add-host`, Earthly's `HOST`), in every network mode.
    pub extra_hosts: Vec<(String, std::net::IpAddr)>,
    /// Run privileged, as `docker run --privileged`: every capability berth holds, no
    /// seccomp, no masked or read-only paths, the host's devices, `/sys` and cgroups
    /// writable. The step keeps its own namespaces and mounts; an isolated network
    /// namespace it used is discarded afterwards instead of pooled, since the step can
    /// change it.
    pub privileged: bool,
}

/// Which output stream a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// Runs processes in containers.
pub trait Executor: Send + Sync {
    /// Run `meta` with `rootfs` mounted as `/` and `mounts` on top; stream its output to
    /// `output` as it comes, and return its exit code (128+n for a signal n).
    fn run(
        &self,
        rootfs: &[Mount],
        mounts: &[Mount],
        meta: &Meta,
        output: &mut dyn FnMut(Stream, &[u8]),
    ) -> Result<i32>;

    /// Kill every process this executor is running (a build was canceled). Their `run`
    /// calls then return as the processes die.
    fn cancel(&self) {}

    /// A step will run soon (a build found its first cache miss): make in the background
    /// what the first `run` needs, so it overlaps with the work before it. Called any
    /// number of times; a build whose steps all come from cache never calls it, and so
    /// never pays for it.
    fn prepare(&self) {}
}
