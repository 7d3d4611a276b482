//! Base images: resolving a reference to a manifest and config, importing the blobs of
//! an OCI layout into the content store, and the image config a build edits.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use berth_client::{PullOptions, TransferError};
use berth_oci::{
    Digest, LayoutReference, Manifest, Reference, ReferenceError, WrittenReference, media_type,
};
use berth_store::Store;
use serde::{Deserialize, Serialize};

use crate::error::{BuildError, Result};
use crate::platform::Platform;

/// Reads JSON `null` as the type's default (empty). Docker writes `"Env": null`,
/// `"Cmd": null`, `"Volumes": null`, `"history": null` … wherever its Go structs hold a
/// nil slice or map (`docker import`, `docker commit`, the classic builder), and means
/// the same as an absent or empty field. Every non-`Option` field of the config types
/// below is read through this, so a `null` anywhere in them is empty, never an error.
fn null_as_default<'de, D, T>(d: D) -> std::result::Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// The parts of an OCI/Docker image config a build reads and writes. Unknown fields of
/// a base image's config are not carried over.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerConfig {
    /// `KEY=value`.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub env: Vec<String>,
    /// Default command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    /// Entrypoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// Working directory.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub working_dir: String,
    /// User.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub user: String,
    /// `80/tcp` → `{}`.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub exposed_ports: BTreeMap<String, serde_json::Value>,
    /// Labels.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub labels: BTreeMap<String, String>,
    /// Volumes.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub volumes: BTreeMap<String, serde_json::Value>,
    /// Stop signal.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub stop_signal: String,
    /// Docker's healthcheck.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<serde_json::Value>,
    /// Docker's SHELL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<Vec<String>>,
    /// Docker's ONBUILD triggers (recorded).
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub on_build: Vec<String>,
}

impl ContainerConfig {
    /// The value of `key` in `env`.
    pub fn env_get(&self, key: &str) -> Option<&str> {
        self.env
            .iter()
            .rev()
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
    }

    /// Set `key=value` in `env`: in the place of an earlier value (Docker keeps a
    /// redefined variable where it was), else last.
    pub fn env_set(&mut self, key: &str, value: &str) {
        let kv = format!("{key}={value}");
        match self
            .env
            .iter()
            .position(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) == key)
        {
            Some(i) => self.env[i] = kv,
            None => self.env.push(kv),
        }
    }
}

/// One history entry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    /// When.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// What made it.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub created_by: String,
    /// A step that made no layer.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub empty_layer: bool,
    /// Comment.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub comment: String,
}

/// An image config document.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// Creation time (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// Who made the image (MAINTAINER).
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub author: String,
    /// CPU architecture.
    #[serde(default, deserialize_with = "null_as_default")]
    pub architecture: String,
    /// Operating system.
    #[serde(default, deserialize_with = "null_as_default")]
    pub os: String,
    /// CPU variant (`v7` of `arm`).
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub variant: String,
    /// Runtime configuration.
    #[serde(default, deserialize_with = "null_as_default")]
    pub config: ContainerConfig,
    /// Layers.
    #[serde(default, deserialize_with = "null_as_default")]
    pub rootfs: RootFs,
    /// History.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub history: Vec<History>,
}

/// `rootfs` of an image config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RootFs {
    /// Always `layers`.
    #[serde(rename = "type", default, deserialize_with = "null_as_default")]
    pub kind: String,
    /// Uncompressed layer digests.
    #[serde(default, deserialize_with = "null_as_default")]
    pub diff_ids: Vec<Digest>,
}

impl Default for RootFs {
    fn default() -> Self {
        RootFs {
            kind: "layers".into(),
            diff_ids: Vec::new(),
        }
    }
}

/// A base image, resolved and with its blobs in the content store.
#[derive(Debug, Clone)]
pub struct ResolvedImage {
    /// The reference as written.
    pub reference: String,
    /// Its manifest's digest.
    pub manifest: Digest,
    /// Its config.
    pub config: ImageConfig,
}

/// The host platform, as OCI names it.
pub fn host_platform() -> (&'static str, &'static str) {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        other => other,
    };
    ("linux", arch)
}

/// Pull `reference` (as written in the build file) from its registry into the store:
/// the manifest for `platform` (os and architecture; a variant is picked later, by
/// [`load_for`]), its config and layers (see [`berth_client::pull_image`]), handing the
/// layers to `layers` as they arrive. Returns the manifest's digest.
pub(crate) async fn pull(
    client: &berth_client::Client,
    store: &Store,
    reference: &str,
    platform: &Platform,
    layers: Option<std::sync::Arc<dyn berth_client::LayerSink>>,
) -> Result<Digest> {
    let r: Reference = reference
        .parse()
        .map_err(|e: ReferenceError| BuildError::Image(e.to_string()))?;
    let (os, arch) = (&platform.os, &platform.architecture);
    let mut opts = PullOptions::new(berth_client::Platform::new(os, arch));
    opts.layers = layers;
    match berth_client::pull_image(client, store, &r, &opts).await {
        Ok(pulled) => Ok(pulled.manifest),
        // Told with the reference as the build file wrote it.
        Err(TransferError::Registry { source, .. }) => {
            Err(BuildError::Image(format!("pull {reference}: {source}")))
        }
        Err(TransferError::NoPlatform { .. }) => Err(BuildError::Image(format!(
            "{reference} has no image for {os}/{arch}"
        ))),
        Err(TransferError::Manifest { message, .. }) => {
            Err(BuildError::Image(format!("{reference}: {message}")))
        }
        Err(e) => Err(e.into()),
    }
}

/// Pulls an image into the store and returns its manifest digest.
pub type PullFn<'a> = dyn Fn(&str) -> Result<Digest> + 'a;

/// Resolve `reference`: `oci-layout://DIR[:TAG|@DIGEST]`, a name in the local store
/// (`app`, `app:tag`, `library/busybox:1.36`; `docker.io/` and `library/` are tried),
/// or else an image in a registry, pulled into the store through `pull` (which gets
/// the reference and returns the manifest digest).
pub fn resolve(store: &Store, reference: &str, pull: Option<&PullFn<'_>>) -> Result<ResolvedImage> {
    resolve_for(store, reference, &Platform::host(), pull)
}

/// [`resolve`] for `platform`: an index gives its manifest for that platform.
pub fn resolve_for(
    store: &Store,
    reference: &str,
    platform: &Platform,
    pull: Option<&PullFn<'_>>,
) -> Result<ResolvedImage> {
    let manifest = if let Some(rest) = reference.strip_prefix(berth_oci::LAYOUT_SCHEME) {
        import_layout(store, rest)?
    } else {
        match (lookup_local(store, reference), pull) {
            (Ok(d), _) => d,
            (Err(_), Some(pull)) => pull(reference)?,
            (Err(e), None) => return Err(e),
        }
    };
    load_for(store, reference, manifest, platform)
}

/// The image `reference` resolved to, `manifest` (an image manifest or an index, in
/// the store): for an index, its manifest for the host platform; and its config.
pub(crate) fn load(store: &Store, reference: &str, manifest: Digest) -> Result<ResolvedImage> {
    load_for(store, reference, manifest, &Platform::host())
}

/// Whether `manifest` (in the store) serves `platform`: an index with that platform's
/// manifest in the store, or an image manifest whose config names that platform (or
/// none).
pub(crate) fn serves(store: &Store, manifest: &Digest, platform: &Platform) -> bool {
    let Ok(Some(bytes)) = store.read_blob(manifest) else {
        return false;
    };
    let Ok((m, mt)) = Manifest::parse(&bytes, None) else {
        return false;
    };
    if media_type::is_index(&mt) {
        return m.manifests.iter().any(|d| {
            d.platform.as_ref().is_some_and(|p| platform.matches(p))
                && store.blob_size(&d.digest).ok().flatten().is_some()
        });
    }
    let config = m
        .config
        .and_then(|c| store.read_blob(&c.digest).ok().flatten())
        .and_then(|b| serde_json::from_slice::<ImageConfig>(&b).ok());
    config.is_some_and(|c| c.architecture.is_empty() || platform.matches(&config_platform(&c)))
}

/// The `platform` object of an index entry for `config`.
fn config_platform(config: &ImageConfig) -> serde_json::Value {
    serde_json::json!({
        "os": config.os,
        "architecture": config.architecture,
        "variant": config.variant,
    })
}

/// [`load`] for `platform`. An image manifest (not an index) is taken whatever its
/// config says, with a warning when that is another platform, as BuildKit does.
pub(crate) fn load_for(
    store: &Store,
    reference: &str,
    manifest: Digest,
    platform: &Platform,
) -> Result<ResolvedImage> {
    let bytes = store.read_blob(&manifest)?.ok_or_else(|| {
        BuildError::Image(format!(
            "manifest {manifest} of {reference} is missing from the store"
        ))
    })?;
    let (m, mt) = Manifest::parse(&bytes, None)
        .map_err(|e| BuildError::Image(format!("{reference}: {e}")))?;
    let (manifest, m) = if media_type::is_index(&mt) {
        let pick = m
            .manifests
            .iter()
            .find(|d| d.platform.as_ref().is_some_and(|p| platform.matches(p)))
            .ok_or_else(|| {
                let has: Vec<String> = m
                    .manifests
                    .iter()
                    .filter_map(|d| d.platform.as_ref())
                    .map(|p| {
                        let f = |k: &str| p[k].as_str().unwrap_or_default().to_string();
                        Platform::new(&f("os"), &f("architecture"), &f("variant")).to_string()
                    })
                    .collect();
                BuildError::Image(format!(
                    "{reference} has no image for {platform}; it has: {}",
                    if has.is_empty() {
                        "no platforms named".to_string()
                    } else {
                        has.join(", ")
                    }
                ))
            })?;
        let bytes = store.read_blob(&pick.digest)?.ok_or_else(|| {
            BuildError::Image(format!("{reference}: manifest {} is missing", pick.digest))
        })?;
        let (m, _) = Manifest::parse(&bytes, None)
            .map_err(|e| BuildError::Image(format!("{reference}: {e}")))?;
        (pick.digest.clone(), m)
    } else {
        (manifest, m)
    };
    let cfg_desc = m
        .config
        .as_ref()
        .ok_or_else(|| BuildError::Image(format!("{reference}: manifest has no config")))?;
    let cfg_bytes = store.read_blob(&cfg_desc.digest)?.ok_or_else(|| {
        BuildError::Image(format!(
            "{reference}: config {} is missing",
            cfg_desc.digest
        ))
    })?;
    let config: ImageConfig = serde_json::from_slice(&cfg_bytes)
        .map_err(|e| BuildError::Image(format!("{reference}: image config is not valid: {e}")))?;
    if !config.architecture.is_empty() && !platform.matches(&config_platform(&config)) {
        tracing::warn!(
            "{reference} is a {}/{} image, not {platform}; using it as it is",
            config.os,
            config.architecture
        );
    }
    if config.rootfs.diff_ids.len() != m.layers.len() {
        return Err(BuildError::Image(format!(
            "{reference}: config lists {} layers, manifest {}",
            config.rootfs.diff_ids.len(),
            m.layers.len()
        )));
    }
    Ok(ResolvedImage {
        reference: reference.to_string(),
        manifest,
        config,
    })
}

/// The layers (descriptors) and diff IDs of an image manifest in the store.
pub fn layers_of(store: &Store, manifest: &Digest) -> Result<Vec<berth_oci::Descriptor>> {
    let bytes = store.read_blob(manifest)?.ok_or_else(|| {
        BuildError::Image(format!("manifest {manifest} is missing from the store"))
    })?;
    let (m, _) = Manifest::parse(&bytes, None)
        .map_err(|e| BuildError::Image(format!("manifest {manifest}: {e}")))?;
    Ok(m.layers)
}

/// The `rootfs.diff_ids` of the image manifest `manifest` in the store.
pub fn resolve_config_diff_ids(store: &Store, manifest: &Digest) -> Result<Vec<Digest>> {
    let bytes = store.read_blob(manifest)?.ok_or_else(|| {
        BuildError::Image(format!("manifest {manifest} is missing from the store"))
    })?;
    let (m, _) = Manifest::parse(&bytes, None)
        .map_err(|e| BuildError::Image(format!("manifest {manifest}: {e}")))?;
    let cfg = m
        .config
        .ok_or_else(|| BuildError::Image(format!("manifest {manifest} has no config")))?;
    diff_ids_of_config(store, &cfg.digest)
}

/// The `rootfs.diff_ids` of the image config `config` in the store.
pub(crate) fn diff_ids_of_config(store: &Store, config: &Digest) -> Result<Vec<Digest>> {
    let cfg_bytes = store
        .read_blob(config)?
        .ok_or_else(|| BuildError::Image(format!("config {config} is missing from the store")))?;
    let config: ImageConfig = serde_json::from_slice(&cfg_bytes)
        .map_err(|e| BuildError::Image(format!("config {config}: {e}")))?;
    Ok(config.rootfs.diff_ids)
}

/// The manifest an image name (`name[:tag][@digest]`) has in the local store.
pub fn local_manifest(store: &Store, reference: &str) -> Result<Digest> {
    lookup_local(store, reference)
}

fn lookup_local(store: &Store, reference: &str) -> Result<Digest> {
    let written =
        WrittenReference::parse(reference).map_err(|e| BuildError::Image(e.to_string()))?;
    let name = written.local_repository();
    let repos = store.repos();
    let short = name
        .strip_prefix(berth_oci::DOCKER_HUB)
        .and_then(|rest| rest.strip_prefix('/'))
        .unwrap_or(&name)
        .to_string();
    let mut candidates = vec![name.clone(), short.clone()];
    if let Some(s) = short.strip_prefix("library/") {
        candidates.push(s.to_string());
    } else if !short.contains('/') {
        candidates.push(format!("library/{short}"));
    }
    for repo in &candidates {
        if berth_oci::validate_repository(repo).is_err() {
            continue;
        }
        if let Some(d) = &written.digest {
            if repos.manifest(repo, d)?.is_some() {
                return Ok(d.clone());
            }
        } else if let Some(d) = repos.tag(repo, written.tag_or_latest())? {
            return Ok(d);
        }
    }
    Err(BuildError::Image(format!(
        "image {reference} is not in berth's store; name a registry image, an OCI layout \
         (FROM oci-layout:///path/to/layout:tag), or build it first"
    )))
}

/// Import an OCI layout's image into the store (blobs verified by digest); returns the
/// manifest (or index) digest. `spec` is `DIR`, `DIR:TAG` or `DIR@DIGEST`.
fn import_layout(store: &Store, spec: &str) -> Result<Digest> {
    let layout = LayoutReference::parse(spec).map_err(|e| BuildError::Image(e.to_string()))?;
    let dir = PathBuf::from(&layout.dir);
    let index_path = dir.join("index.json");
    let index: Manifest = serde_json::from_slice(
        &fs::read(&index_path)
            .map_err(|e| BuildError::Image(format!("read {}: {e}", index_path.display())))?,
    )
    .map_err(|e| BuildError::Image(format!("{}: {e}", index_path.display())))?;
    let pick = match (&layout.digest, &layout.tag) {
        (Some(digest), _) => index.manifests.iter().find(|d| d.digest == *digest),
        (None, Some(tag)) => index.manifests.iter().find(|d| {
            d.annotations
                .as_ref()
                .and_then(|a| a.get("org.opencontainers.image.ref.name"))
                // A tag, or a full name whose tag is this one.
                .is_some_and(|n| {
                    n == tag
                        || WrittenReference::parse(n)
                            .is_ok_and(|w| w.tag.as_deref() == Some(tag.as_str()))
                })
        }),
        (None, None) if index.manifests.len() == 1 => index.manifests.first(),
        (None, None) => None,
    }
    .ok_or_else(|| {
        let which = match (&layout.digest, &layout.tag) {
            (Some(d), _) => format!("with manifest {d}"),
            (None, Some(t)) => format!("tagged {t:?}"),
            (None, None) => "(several images; name a tag)".to_string(),
        };
        BuildError::Image(format!("{}: no image {which} in the layout", dir.display()))
    })?;
    import_tree(store, &dir, &pick.digest)?;
    Ok(pick.digest.clone())
}

/// Copy a manifest or index and everything it references from a layout into the store.
fn import_tree(store: &Store, dir: &Path, digest: &Digest) -> Result<()> {
    let bytes = import_blob(store, dir, digest)?;
    if let Ok((m, _)) = Manifest::parse(&bytes, None) {
        for d in m.blobs() {
            import_blob(store, dir, &d.digest)?;
        }
        for d in &m.manifests {
            import_tree(store, dir, &d.digest)?;
        }
    }
    Ok(())
}

fn import_blob(store: &Store, dir: &Path, digest: &Digest) -> Result<Vec<u8>> {
    let path = dir
        .join("blobs")
        .join(digest.algorithm().as_str())
        .join(digest.hex());
    if store.blob_size(digest)?.is_none() {
        let mut f = fs::File::open(&path)
            .map_err(|e| BuildError::Image(format!("read {}: {e}", path.display())))?;
        // An ingest of its own: two builds (or probes) of this process importing the
        // same layout at once would otherwise meet on one ingest, and the second fail
        // as "in use"; both commit, the second finds the blob there.
        static IMPORTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = IMPORTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let reference = format!("import-{}-{n}-{}", std::process::id(), digest.hex());
        let mut w = store.writer(&reference, digest.algorithm())?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = std::io::Read::read(&mut f, &mut buf)
                .map_err(|e| BuildError::Io(format!("read {}: {e}", path.display())))?;
            if n == 0 {
                break;
            }
            w.write_all(&buf[..n])?;
        }
        if let Err(e) = w.commit(Some(digest), None) {
            let _ = store.abort(&reference);
            return Err(BuildError::Image(format!("{}: {e}", path.display())));
        }
    }
    // Only manifests are read back, and they are small.
    let size = store.blob_size(digest)?.unwrap_or(0);
    if size > 4 << 20 {
        return Ok(Vec::new());
    }
    Ok(store.read_blob(digest)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two imports of one layout at once (two builds or probes in one satellite) both
    /// succeed: each writes its own ingest.
    #[test]
    fn one_layout_imported_by_several_threads_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let layout = dir.path().join("layout");
        let blobs = layout.join("blobs/sha256");
        fs::create_dir_all(&blobs).unwrap();
        let put = |data: &[u8]| {
            let d = Digest::sha256(data);
            fs::write(blobs.join(d.hex()), data).unwrap();
            d
        };
        let layer = vec![7u8; 3 << 20];
        let layer_d = put(&layer);
        let config_d = put(b"{}");
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_d}","size":2}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{layer_d}","size":{}}}]}}"#,
            media_type::OCI_MANIFEST,
            layer.len()
        );
        let manifest_d = put(manifest.as_bytes());
        fs::write(
            layout.join("index.json"),
            format!(
                r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{}","digest":"{manifest_d}","size":{},"annotations":{{"org.opencontainers.image.ref.name":"base"}}}}]}}"#,
                media_type::OCI_MANIFEST,
                manifest.len()
            ),
        )
        .unwrap();
        fs::write(
            layout.join("oci-layout"),
            r#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .unwrap();
        let store = Store::open(dir.path().join("root")).unwrap();
        let spec = format!("{}:base", layout.display());
        let barrier = std::sync::Barrier::new(4);
        let results: Vec<Result<Digest>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        barrier.wait();
                        import_layout(&store, &spec)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for r in results {
            assert_eq!(r.unwrap(), manifest_d);
        }
        assert_eq!(store.blob_size(&layer_d).unwrap(), Some(layer.len() as u64));
    }

    #[test]
    fn store_names_resolve_as_written_with_hub_forms_tried() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let digest = |s: &str| {
            let blob = store.put_blob(berth_oci::Algorithm::Sha256, s.as_bytes());
            blob.unwrap().digest
        };
        let name = |repo: &str, tag: &str, d: &Digest| {
            let repos = store.repos();
            repos
                .link_manifest(repo, d, media_type::OCI_MANIFEST)
                .unwrap();
            repos.set_tag(repo, tag, d).unwrap();
        };
        let (app, local, hub) = (digest("app"), digest("local"), digest("hub"));
        name("app", "1.0", &app);
        name("127.0.0.1-5000/team/app", "latest", &local);
        name("library/busybox", "1.36", &hub);
        let find = |r: &str| local_manifest(&store, r).ok();
        assert_eq!(find("app:1.0"), Some(app.clone()));
        assert_eq!(find("docker.io/library/app:1.0"), Some(app.clone()));
        assert_eq!(find(&format!("app@{app}")), Some(app.clone()));
        assert_eq!(find("app"), None, "no latest tag");
        assert_eq!(find("127.0.0.1:5000/team/app"), Some(local));
        assert_eq!(find("busybox:1.36"), Some(hub.clone()));
        assert_eq!(find("docker.io/busybox:1.36"), Some(hub));
        assert_eq!(find("App:1.0"), None);
    }

    /// The config `docker import` wrote (Docker 20.10, saved with `docker save`):
    /// `null` for Env, Cmd, Entrypoint, Volumes, OnBuild, Labels.
    const IMPORTED: &str = r#"{"architecture":"amd64","comment":"Imported from -","config":{"Hostname":"","Domainname":"","User":"","AttachStdin":false,"AttachStdout":false,"AttachStderr":false,"Tty":false,"OpenStdin":false,"StdinOnce":false,"Env":null,"Cmd":null,"Image":"","Volumes":null,"WorkingDir":"","Entrypoint":null,"OnBuild":null,"Labels":null},"container_config":{"Hostname":"","Domainname":"","User":"","AttachStdin":false,"AttachStdout":false,"AttachStderr":false,"Tty":false,"OpenStdin":false,"StdinOnce":false,"Env":null,"Cmd":null,"Image":"","Volumes":null,"WorkingDir":"","Entrypoint":null,"OnBuild":null,"Labels":null},"created":"2026-12-02T02:49:40.833114398Z","docker_version":"20.10.24+dfsg1","history":[{"created":"2026-12-02T02:49:40.833114398Z","comment":"Imported from -"}],"os":"linux","rootfs":{"type":"layers","diff_ids":["sha256:8b93b320085f420fc78446320be9e9c460c42f13da6b02c0f83ea589bc5c0c26"]}}"#;

    #[test]
    fn nulls_docker_writes_read_as_empty() {
        let c: ImageConfig = serde_json::from_str(IMPORTED).unwrap();
        assert_eq!(c.config, ContainerConfig::default());
        assert_eq!(c.rootfs.diff_ids.len(), 1);
        assert_eq!(c.history[0].comment, "Imported from -");
        // Every field Docker may leave nil, at once, including the top-level ones.
        let all_null = r#"{"architecture":"amd64","os":"linux",
            "config":{"Env":null,"Cmd":null,"Entrypoint":null,"Volumes":null,
              "ExposedPorts":null,"Labels":null,"OnBuild":null,"Shell":null,
              "Healthcheck":null,"WorkingDir":null,"User":null,"StopSignal":null},
            "history":[{"created":null,"created_by":null,"empty_layer":null,"comment":null}],
            "rootfs":{"type":"layers","diff_ids":null}}"#;
        let c: ImageConfig = serde_json::from_str(all_null).unwrap();
        assert_eq!(c.config, ContainerConfig::default());
        assert!(c.rootfs.diff_ids.is_empty());
        let c: ImageConfig = serde_json::from_str(
            r#"{"architecture":"amd64","os":"linux","config":null,"history":null,"rootfs":null}"#,
        )
        .unwrap();
        assert!(c.history.is_empty() && c.rootfs.kind == "layers");
        // Written back, an empty field is left out, never `null`.
        let out = serde_json::to_string(&c).unwrap();
        assert!(!out.contains("null"), "{out}");
    }
}
