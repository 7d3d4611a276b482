//! berth-docker owns delivering images from berth's store into a Docker daemon.
//!
//! The fast path serves the image from a short-lived, read-only registry on 127.0.0.1
//! and asks the daemon (through its API) to pull it, so layers the daemon already has
//! are not sent again. That only works when the daemon can reach berth's loopback — not
//! when berth runs in another network namespace or container, or `DOCKER_HOST` points
//! at another machine (Earthly's "connection refused"). So a pre-flight first has the
//! daemon pull a tiny probe image from the proxy; if that fails, or the real pull fails
//! midway, berth streams the image as a `docker load` archive instead and says why.

use std::net::SocketAddr;

use berth_oci::{Digest, Manifest};
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
    let config = config_digest(store, manifest)?;
    let expected = config.to_string();
    let path = if opts.no_registry_proxy {
        load_tar(docker, store, manifest, name).await?;
        Path::Tar("the registry proxy is turned off".into())
    } else {
        match via_proxy(docker, store, repo, manifest, name, opts.proxy_port).await {
            Ok(()) => Path::RegistryProxy,
            Err(reason) => {
                eprintln!(
                    "berth: the Docker daemon could not pull from berth's registry proxy ({reason}); sending the image as a tar stream instead"
                );
                load_tar(docker, store, manifest, name).await?;
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

fn config_digest(store: &Store, manifest: &Digest) -> Result<Digest> {
    let m = read_manifest(store, manifest)?;
    Ok(m.config
        .ok_or_else(|| Error::Store(format!("manifest {manifest} has no config")))?
        .digest)
}

fn read_manifest(store: &Store, manifest: &Digest) -> Result<Manifest> {
    let bytes = store
        .read_blob(manifest)
        .map_err(|e| Error::Store(e.to_string()))?
        .ok_or_else(|| Error::Store(format!("manifest {manifest} is not in berth's store")))?;
    Manifest::parse(&bytes, None)
        .map(|(m, _)| m)
        .map_err(|e| Error::Store(format!("manifest {manifest}: {e}")))
}

/// The registry proxy: berth's registry, read-only, over the store, on 127.0.0.1.
struct Proxy {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Proxy {
    async fn start(store: &Store, port: u16) -> std::io::Result<Proxy> {
        let mut config = berth_registry::Config::new(store.clone());
        config.read_only = true;
        config.delete_enabled = false;
        let registry = berth_registry::Registry::new(config);
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(berth_registry::serve(
            listener,
            registry.router(),
            None,
            async {
                let _ = rx.await;
            },
        ));
        Ok(Proxy {
            addr,
            stop: Some(tx),
            task,
        })
    }

    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = (&mut self.task).await;
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // A proxy dropped without stop() (an error path) must not outlive the load.
        self.task.abort();
    }
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
    store: &Store,
    repo: &str,
    manifest: &Digest,
    name: &str,
    port: u16,
) -> std::result::Result<(), String> {
    let proxy = Proxy::start(store, port)
        .await
        .map_err(|e| format!("cannot listen on 127.0.0.1:{port}: {e}"))?;
    let result = async {
        // Pre-flight: a tiny image proves the daemon reaches the proxy before the real pull.
        let probe = probe_image(store).map_err(|e| e.to_string())?;
        let probe_ref = format!("{}/berth-probe@{probe}", proxy.addr);
        pull(docker, &probe_ref).await?;
        remove(docker, &probe_ref).await;
        let reference = format!("{}/{repo}@{manifest}", proxy.addr);
        pull(docker, &reference).await?;
        let (r, t) = split_name(name);
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

fn split_name(name: &str) -> (String, String) {
    let slash = name.rfind('/').map_or(0, |i| i + 1);
    match name[slash..].rfind(':') {
        Some(i) => (
            name[..slash + i].to_string(),
            name[slash + i + 1..].to_string(),
        ),
        None => (name.to_string(), "latest".to_string()),
    }
}

/// A one-layer image (an empty tar) in the store as `berth-probe`; returns its manifest.
fn probe_image(store: &Store) -> Result<Digest> {
    let se = |e: berth_store::Error| Error::Store(e.to_string());
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &[0u8; 1024]).expect("in memory");
    let layer = gz.finish().expect("in memory");
    let diff_id = Digest::sha256(&[0u8; 1024]);
    let layer_d = store
        .put_blob(berth_oci::Algorithm::Sha256, &layer)
        .map_err(se)?
        .digest;
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","config":{{}},"rootfs":{{"type":"layers","diff_ids":["{diff_id}"]}}}}"#
    );
    let config_d = store
        .put_blob(berth_oci::Algorithm::Sha256, config.as_bytes())
        .map_err(se)?
        .digest;
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_d}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{layer_d}","size":{}}}]}}"#,
        config.len(),
        layer.len()
    );
    let m = store
        .put_blob(berth_oci::Algorithm::Sha256, manifest.as_bytes())
        .map_err(se)?
        .digest;
    let repos = store.repos();
    for d in [&layer_d, &config_d] {
        repos.link_blob("berth-probe", d).map_err(se)?;
    }
    repos
        .link_manifest("berth-probe", &m, berth_oci::media_type::OCI_MANIFEST)
        .map_err(se)?;
    Ok(m)
}

/// Stream the image as a docker-archive (`manifest.json`, config, one file per layer)
/// into the daemon's image-load endpoint. Docker 20.10 cannot load OCI layouts, so this
/// is the format every daemon takes. Layers go as stored (gzip); the daemon unpacks
/// them either way.
async fn load_tar(docker: &Docker, store: &Store, manifest: &Digest, name: &str) -> Result<()> {
    let m = read_manifest(store, manifest)?;
    let config = m
        .config
        .clone()
        .ok_or_else(|| Error::Store(format!("manifest {manifest} has no config")))?;
    let config_bytes = store
        .read_blob(&config.digest)
        .map_err(|e| Error::Store(e.to_string()))?
        .ok_or_else(|| Error::Store(format!("config {} is not in the store", config.digest)))?;
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<bytes::Bytes>>(8);
    let store2 = store.clone();
    let name = name.to_string();
    let writer = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        let mut tar = tar::Builder::new(ChannelWriter { tx: tx.clone() });
        let mut add = |path: &str, size: u64, data: &mut dyn std::io::Read| {
            let mut h = tar::Header::new_ustar();
            h.set_size(size);
            h.set_mode(0o644);
            h.set_mtime(0);
            tar.append_data(&mut h, path, data)
        };
        let cfg_name = format!("{}.json", config.digest.hex());
        add(
            &cfg_name,
            config_bytes.len() as u64,
            &mut config_bytes.as_slice(),
        )?;
        let mut layers = Vec::new();
        for l in &m.layers {
            let (mut f, size) = store2
                .open_blob(&l.digest)
                .map_err(std::io::Error::other)?
                .ok_or_else(|| {
                    std::io::Error::other(format!("layer {} is not in the store", l.digest))
                })?;
            let p = format!("{}/layer.tar", l.digest.hex());
            add(&p, size, &mut f)?;
            layers.push(p);
        }
        let mf = serde_json::json!([{"Config": cfg_name, "RepoTags": [name], "Layers": layers}]);
        let mf = serde_json::to_vec(&mf).expect("json");
        add("manifest.json", mf.len() as u64, &mut mf.as_slice())?;
        tar.into_inner()?;
        Ok(())
    });
    let stream = tokio_stream(rx);
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
    if let Some(f) = failure {
        return Err(derr(format!("docker load failed: {f}")));
    }
    written.map_err(|e| Error::Store(format!("writing the image archive: {e}")))
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

fn tokio_stream(
    mut rx: tokio::sync::mpsc::Receiver<std::io::Result<bytes::Bytes>>,
) -> impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[cfg(test)]
mod tests {
    #[test]
    fn names() {
        assert_eq!(super::split_name("app:1"), ("app".into(), "1".into()));
        assert_eq!(
            super::split_name("host:5000/app"),
            ("host:5000/app".into(), "latest".into())
        );
        assert_eq!(super::split_name("a/b:c"), ("a/b".into(), "c".into()));
    }
}
