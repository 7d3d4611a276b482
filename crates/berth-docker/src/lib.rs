//! berth-docker owns delivering images from berth's store into a Docker daemon.
//!
//! The fast path serves the image from a short-lived, read-only registry on 127.0.0.1
//! and asks the daemon (through its API) to pull it, so layers the daemon already has
//! are not sent again. That only works when the daemon can reach berth's loopback — not
//! when berth runs in another network namespace or container, or `DOCKER_HOST` points
//! at another machine (Earthly's "connection refused"). So a pre-flight first has the
//! daemon resolve the image's manifest on the proxy (`GET /distribution/…/json`: no
//! layers, nothing stored); if that fails, or the real pull fails midway, berth streams
//! the image as a `docker load` archive instead and says why.
//!
//! To a daemon on this machine layers go uncompressed on both paths (see `layers`).
//!
//! It also owns image archives, the other delivery format: `docker save` output and OCI
//! layout tars read into berth's store, and written from it (see `archive`); and
//! describing images of the store as Docker does (`docker image inspect`, `docker
//! history`; see `inspect`).

mod archive;
mod inspect;
mod layers;
mod probe;
mod proxy;

pub use archive::{
    ArchiveFormat, ImportOptions, Imported, ImportedImage, SaveImage, import, save, save_to_file,
};
pub use inspect::{DockerConfig, HistoryRow, ImageFacts, Inspected, history, image_facts, inspect};
pub use probe::{daemon_reaches_loopback, daemon_version};

use berth_oci::Digest;
use berth_store::Store;
use bollard::Docker;
use bollard::query_parameters::{
    CreateImageOptions, ImportImageOptions, RemoveImageOptions, TagImageOptions,
};
use futures_util::StreamExt;

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A delivery failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The daemon could not be reached or answered an error.
    #[error("Docker daemon ({host}): {message}")]
    Docker {
        /// Where berth looked for it.
        host: String,
        /// What happened and what to do.
        message: String,
    },
    /// The image is not (completely) in berth's store.
    #[error("{0}")]
    Store(String),
    /// An image archive is not one, or is damaged (the message names the entry).
    #[error("{0}")]
    Archive(String),
    /// The daemon holds a different image than the one berth built.
    #[error("the daemon loaded image {got}, but berth built {expected}")]
    Mismatch {
        /// Berth's image ID.
        expected: String,
        /// The daemon's.
        got: String,
    },
}

/// How to load.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Skip the registry proxy; always stream a tar.
    pub no_registry_proxy: bool,
    /// Port for the proxy on 127.0.0.1 (0: any free one).
    pub proxy_port: u16,
}

/// Which way the image went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Path {
    /// Pulled by the daemon from berth's registry proxy.
    RegistryProxy,
    /// Streamed as a `docker load` archive, and why.
    Tar(String),
}

/// A loaded image.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// Its ID in the daemon (the config digest).
    pub image_id: String,
    /// How it got there.
    pub path: Path,
}

fn docker_host() -> String {
    std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into())
}

fn derr(e: impl std::fmt::Display) -> Error {
    let msg = e.to_string();
    let hint = if msg.contains("No such file")
        || msg.contains("not found")
        || msg.contains("onnection refused")
    {
        "; is dockerd running, and does DOCKER_HOST point at it?"
    } else if msg.contains("ermission denied") {
        "; add yourself to the docker group or run as root"
    } else {
        ""
    };
    Error::Docker {
        host: docker_host(),
        message: format!("{msg}{hint}"),
    }
}

/// Connect to the daemon of `DOCKER_HOST` (unix socket or tcp), at the API version it
/// speaks.
pub async fn connect() -> Result<Docker> {
    let d = Docker::connect_with_defaults().map_err(derr)?;
    d.negotiate_version().await.map_err(derr)
}

/// Whether the daemon is on this machine (a unix socket, or tcp to loopback): then
/// layers go to it uncompressed.
pub fn daemon_is_local() -> bool {
    let host = docker_host();
    let Some(rest) = host
        .strip_prefix("tcp://")
        .or_else(|| host.strip_prefix("http://"))
    else {
        return host.starts_with("unix://") || host.starts_with('/');
    };
    berth_oci::is_loopback_host(rest.split('/').next().unwrap_or(""))
}

/// Load image `manifest` (in the store as `repo`) into the daemon, named `name`
/// (`app:1`).
pub async fn load(
    docker: &Docker,
    store: &Store,
    repo: &str,
    manifest: &Digest,
    name: &str,
    opts: &LoadOptions,
) -> Result<Loaded> {
    // BERTH_LOAD_LAYERS=as-stored|inflate overrides the choice (for benchmarks).
    let inflate = match std::env::var("BERTH_LOAD_LAYERS").as_deref() {
        Ok("as-stored") => layers::Inflate::Never,
        Ok("inflate") => layers::Inflate::Always,
        _ if daemon_is_local() => layers::Inflate::WhenWorthIt,
        _ => layers::Inflate::Never,
    };
    // A daemon takes one platform: an index (`berth pull` keeps them whole) gives this
    // machine's.
    let manifest = archive::platform_manifest(store, manifest, name)?;
    let image = {
        let store = store.clone();
        let manifest = manifest.clone();
        tokio::task::spawn_blocking(move || layers::image(&store, &manifest, inflate))
            .await
            .map_err(|e| Error::Store(e.to_string()))??
    };
    let expected = image.config_digest.to_string();
    let path = if opts.no_registry_proxy {
        load_tar(docker, &image, name).await?;
        Path::Tar("the registry proxy is turned off".into())
    } else {
        match via_proxy(docker, &image, repo, name, opts.proxy_port).await {
            Ok(()) => Path::RegistryProxy,
            Err(reason) => {
                eprintln!(
                    "berth: the Docker daemon could not pull from berth's registry proxy ({reason}); sending the image as a tar stream instead"
                );
                load_tar(docker, &image, name).await?;
                Path::Tar(reason)
            }
        }
    };
    let got = docker
        .inspect_image(name)
        .await
        .map_err(derr)?
        .id
        .unwrap_or_default();
    if got != expected {
        return Err(Error::Mismatch { expected, got });
    }
    Ok(Loaded {
        image_id: got,
        path,
    })
}

/// Have the daemon pull `reference`; the error says why it could not.
async fn pull(docker: &Docker, reference: &str) -> std::result::Result<(), String> {
    let opts = CreateImageOptions {
        from_image: Some(reference.to_string()),
        ..Default::default()
    };
    let mut stream = docker.create_image(Some(opts), None, None);
    while let Some(item) = stream.next().await {
        match item {
            Ok(info) => {
                if let Some(e) = info.error_detail.and_then(|d| d.message) {
                    return Err(e);
                }
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(())
}

async fn remove(docker: &Docker, reference: &str) {
    let opts = RemoveImageOptions {
        force: false,
        noprune: true,
        ..Default::default()
    };
    if let Err(e) = docker.remove_image(reference, Some(opts), None).await {
        tracing::debug!(reference, error = %e, "temporary reference not removed");
    }
}

async fn via_proxy(
    docker: &Docker,
    image: &layers::Image,
    repo: &str,
    name: &str,
    port: u16,
) -> std::result::Result<(), String> {
    let proxy = proxy::Proxy::start(image.clone(), port)
        .await
        .map_err(|e| format!("cannot listen on 127.0.0.1:{port}: {e}"))?;
    let reference = format!("{}/{repo}@{}", proxy.addr, image.manifest_digest);
    let result = async {
        // Pre-flight: the daemon resolves the manifest on the proxy, which proves it
        // reaches it, before a pull that would leave partial downloads behind.
        docker
            .inspect_registry_image(&reference, None)
            .await
            .map_err(|e| e.to_string())?;
        pull(docker, &reference).await?;
        let (r, t) = split_name(name)?;
        docker
            .tag_image(
                &reference,
                Some(TagImageOptions {
                    repo: Some(r),
                    tag: Some(t),
                }),
            )
            .await
            .map_err(|e| e.to_string())?;
        remove(docker, &reference).await;
        Ok(())
    }
    .await;
    proxy.stop().await;
    result
}

/// The repository and tag (`latest` if none is written) Docker is to name the image.
fn split_name(name: &str) -> std::result::Result<(String, String), String> {
    let w = berth_oci::WrittenReference::parse(name).map_err(|e| e.to_string())?;
    Ok((w.name(), w.tag_or_latest().to_string()))
}

/// Stream the image as a docker-archive (`manifest.json`, config, one file per layer)
/// into the daemon's image-load endpoint. Docker 20.10 cannot load OCI layouts, so this
/// is the format every daemon takes.
async fn load_tar(docker: &Docker, image: &layers::Image, name: &str) -> Result<()> {
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<bytes::Bytes>>(8);
    let image = image.clone();
    let name = name.to_string();
    let writer = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        let names = [name];
        let written = archive::write_docker_archive(
            &[(&image, &names[..])],
            ChannelWriter { tx: tx.clone() },
        )
        .map(|_| ());
        if let Err(e) = &written {
            // Cut the request body short: the daemon must not load a truncated archive.
            let _ = tx.blocking_send(Err(std::io::Error::new(e.kind(), e.to_string())));
        }
        written
    });
    let stream = receiver_stream(rx);
    let mut results = docker.import_image_stream(
        ImportImageOptions {
            quiet: true,
            ..Default::default()
        },
        stream,
        None,
    );
    let mut failure = None;
    while let Some(item) = results.next().await {
        match item {
            Ok(info) => {
                if let Some(e) = info.error_detail.and_then(|d| d.message) {
                    failure = Some(e);
                }
            }
            Err(e) => failure = Some(e.to_string()),
        }
    }
    let written = writer.await.map_err(|e| Error::Store(e.to_string()))?;
    match (written, failure) {
        // The daemon stopped reading because it failed: its reason is the one to tell.
        (Err(e), Some(f)) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            Err(derr(format!("docker load failed: {f}")))
        }
        (Err(e), _) => Err(Error::Store(format!("writing the image archive: {e}"))),
        (Ok(()), Some(f)) => Err(derr(format!("docker load failed: {f}"))),
        (Ok(()), None) => Ok(()),
    }
}

struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<std::io::Result<bytes::Bytes>>,
}

impl std::io::Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.tx
            .blocking_send(Ok(bytes::Bytes::copy_from_slice(buf)))
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the daemon stopped reading")
            })?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub(crate) fn receiver_stream(
    mut rx: tokio::sync::mpsc::Receiver<std::io::Result<bytes::Bytes>>,
) -> impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[cfg(test)]
mod tests {
    #[test]
    fn names() {
        let split = |n| super::split_name(n).unwrap();
        assert_eq!(split("app:1"), ("app".into(), "1".into()));
        assert_eq!(
            split("host:5000/app"),
            ("host:5000/app".into(), "latest".into())
        );
        assert_eq!(split("a/b:c"), ("a/b".into(), "c".into()));
        assert!(super::split_name("App:1").is_err());
    }
}
