//! Images of berth's store described as Docker describes its own: the document of
//! `docker image inspect` (Docker 20.10's fields) and the rows of `docker history`, so
//! scripts written against Docker read berth's answers.
//!
//! Docker decodes an image config's `config` into its Go `container.Config` and encodes
//! it again: every field appears, absent ones as their zero value (`""`, `false`,
//! `null`), and a few only when set (`omitempty`). [`DockerConfig`] is that struct, so
//! `Config` and `ContainerConfig` compare equal with Docker's for the same image.

use berth_oci::{Digest, Manifest, media_type};
use berth_store::Store;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::{Error, Result};

/// Docker's `container.Config` (API 1.41), field for field, in its order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct DockerConfig {
    hostname: String,
    domainname: String,
    user: String,
    attach_stdin: bool,
    attach_stdout: bool,
    attach_stderr: bool,
    #[serde(skip_serializing_if = "empty")]
    exposed_ports: Value,
    tty: bool,
    open_stdin: bool,
    stdin_once: bool,
    env: Value,
    cmd: Value,
    #[serde(skip_serializing_if = "Value::is_null")]
    healthcheck: Value,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    args_escaped: bool,
    image: String,
    volumes: Value,
    working_dir: String,
    entrypoint: Value,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    network_disabled: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    mac_address: String,
    on_build: Value,
    labels: Value,
    #[serde(skip_serializing_if = "String::is_empty")]
    stop_signal: String,
    #[serde(skip_serializing_if = "Value::is_null")]
    stop_timeout: Value,
    #[serde(skip_serializing_if = "empty")]
    shell: Value,
}

/// `omitempty` of a Go map or slice: nil or empty.
fn empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

/// Docker's reading of a config section: `null` for an absent one, every field else.
fn docker_config(v: Option<&Value>) -> Option<DockerConfig> {
    match v {
        None | Some(Value::Null) => None,
        Some(v) => Some(serde_json::from_value(v.clone()).unwrap_or_default()),
    }
}

/// The document `docker image inspect` prints for an image (Docker 20.10's fields, in
/// its order). `GraphDriver` names berth, which keeps no unpacked image.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Inspected {
    /// The image ID: the config's digest.
    pub id: String,
    /// `name:tag` of each name.
    pub repo_tags: Vec<String>,
    /// `name@digest` of each registry it was pulled from or pushed to.
    pub repo_digests: Vec<String>,
    /// Always empty (a classic-builder notion).
    pub parent: String,
    /// The config's `comment`.
    pub comment: String,
    /// The config's `created`.
    pub created: String,
    /// The config's `container`.
    pub container: String,
    /// The config's `container_config`.
    pub container_config: Option<DockerConfig>,
    /// The config's `docker_version`.
    pub docker_version: String,
    /// The config's `author`.
    pub author: String,
    /// The config's `config`, as Docker reads it.
    pub config: Option<DockerConfig>,
    /// CPU architecture.
    pub architecture: String,
    /// CPU variant.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub variant: String,
    /// Operating system.
    pub os: String,
    /// Its version.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub os_version: String,
    /// Layer bytes (uncompressed where berth knows it).
    pub size: u64,
    /// The same.
    pub virtual_size: u64,
    /// Where the daemon keeps the image; berth says `berth`.
    pub graph_driver: Value,
    /// The layers' diff IDs.
    #[serde(rename = "RootFS")]
    pub root_fs: Value,
    /// Docker's `LastTagTime` (not kept by berth: the zero time).
    pub metadata: Value,
}

/// An image manifest of the store, read: for an index, this machine's platform's.
struct Image {
    manifest: Manifest,
    config_digest: Digest,
    config: Value,
}

fn read(store: &Store, manifest: &Digest, name: &str) -> Result<Image> {
    let manifest = crate::archive::platform_manifest(store, manifest, name)?;
    let bytes = store
        .read_blob(&manifest)
        .map_err(|e| Error::Store(e.to_string()))?
        .ok_or_else(|| Error::Store(format!("manifest {manifest} of {name} is missing")))?;
    let (m, _) = Manifest::parse(&bytes, None).map_err(|e| Error::Store(format!("{name}: {e}")))?;
    let cfg = m
        .config
        .clone()
        .ok_or_else(|| Error::Store(format!("{name}: the manifest has no config")))?;
    let cfg_bytes = store
        .read_blob(&cfg.digest)
        .map_err(|e| Error::Store(e.to_string()))?
        .ok_or_else(|| Error::Store(format!("{name}: config {} is missing", cfg.digest)))?;
    let config: Value = serde_json::from_slice(&cfg_bytes)
        .map_err(|e| Error::Store(format!("{name}: config {}: {e}", cfg.digest)))?;
    Ok(Image {
        manifest: m,
        config_digest: cfg.digest,
        config,
    })
}

/// A layer's size as Docker counts it (uncompressed), when berth knows it; its stored
/// size otherwise.
fn layer_size(store: &Store, d: &berth_oci::Descriptor) -> u64 {
    if d.media_type == media_type::OCI_LAYER || d.media_type == media_type::DOCKER_LAYER {
        return d.size;
    }
    match store.uncompressed(&d.digest) {
        Ok(Some(u)) => u.size,
        _ => d.size,
    }
}

fn text(v: &Value, key: &str) -> String {
    v.get(key).and_then(Value::as_str).unwrap_or("").to_string()
}

/// The config's `comment`, or as Docker's inspect falls back, its last history entry's.
fn comment(c: &Value) -> String {
    let own = text(c, "comment");
    if !own.is_empty() {
        return own;
    }
    c.get("history")
        .and_then(Value::as_array)
        .and_then(|h| h.last())
        .map(|h| text(h, "comment"))
        .unwrap_or_default()
}

/// The creation time and layer size of an image, for `berth images`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageFacts {
    /// The config's `created` (RFC 3339), if any.
    pub created: Option<String>,
    /// Layer sizes summed (uncompressed where known).
    pub size: u64,
}

/// [`ImageFacts`] of image `manifest` (`name` names it in errors).
pub fn image_facts(store: &Store, manifest: &Digest, name: &str) -> Result<ImageFacts> {
    let img = read(store, manifest, name)?;
    Ok(ImageFacts {
        created: img
            .config
            .get("created")
            .and_then(Value::as_str)
            .map(str::to_string),
        size: img
            .manifest
            .layers
            .iter()
            .map(|l| layer_size(store, l))
            .sum(),
    })
}

/// The `docker image inspect` document of image `manifest` (for an index, this
/// machine's platform), with the names and registry digests the caller found for it.
pub fn inspect(
    store: &Store,
    manifest: &Digest,
    name: &str,
    repo_tags: &[String],
    repo_digests: &[String],
) -> Result<Inspected> {
    let img = read(store, manifest, name)?;
    let c = &img.config;
    let size: u64 = img
        .manifest
        .layers
        .iter()
        .map(|l| layer_size(store, l))
        .sum();
    let diff_ids = c
        .get("rootfs")
        .and_then(|r| r.get("diff_ids"))
        .cloned()
        .unwrap_or(Value::Null);
    Ok(Inspected {
        id: img.config_digest.to_string(),
        repo_tags: repo_tags.to_vec(),
        repo_digests: repo_digests.to_vec(),
        parent: String::new(),
        comment: comment(c),
        created: c
            .get("created")
            .and_then(Value::as_str)
            .unwrap_or("0001-01-01T00:00:00Z")
            .to_string(),
        container: text(c, "container"),
        // A struct in Docker's image type, not a pointer: never null.
        container_config: Some(docker_config(c.get("container_config")).unwrap_or_default()),
        docker_version: text(c, "docker_version"),
        author: text(c, "author"),
        config: docker_config(c.get("config")),
        architecture: text(c, "architecture"),
        variant: text(c, "variant"),
        os: text(c, "os"),
        os_version: text(c, "os.version"),
        size,
        virtual_size: size,
        graph_driver: json!({"Data": null, "Name": "berth"}),
        root_fs: json!({"Type": "layers", "Layers": diff_ids}),
        metadata: json!({"LastTagTime": "0001-01-01T00:00:00Z"}),
    })
}

/// One step of an image's history, as `docker history` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryRow {
    /// The image ID on the newest row; `None` (Docker's `<missing>`) on the others.
    pub id: Option<Digest>,
    /// When (RFC 3339), if recorded.
    pub created: Option<String>,
    /// What made it.
    pub created_by: String,
    /// The size of the layer it made (0 for a step that made none).
    pub size: u64,
    /// Its comment.
    pub comment: String,
}

/// The history of image `manifest`, newest first, each step with the size of the layer
/// it made. An image without history gets one row per layer.
pub fn history(store: &Store, manifest: &Digest, name: &str) -> Result<Vec<HistoryRow>> {
    let img = read(store, manifest, name)?;
    let mut layers = img.manifest.layers.iter();
    let mut rows = Vec::new();
    let steps = img
        .config
        .get("history")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for h in &steps {
        let empty = h.get("empty_layer").and_then(Value::as_bool) == Some(true);
        let size = if empty {
            0
        } else {
            layers.next().map_or(0, |l| layer_size(store, l))
        };
        rows.push(HistoryRow {
            id: None,
            created: h.get("created").and_then(Value::as_str).map(str::to_string),
            created_by: text(h, "created_by"),
            size,
            comment: text(h, "comment"),
        });
    }
    for l in layers {
        rows.push(HistoryRow {
            id: None,
            created: None,
            created_by: String::new(),
            size: layer_size(store, l),
            comment: String::new(),
        });
    }
    rows.reverse();
    if let Some(first) = rows.first_mut() {
        first.id = Some(img.config_digest);
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_read_as_docker_writes_them() {
        let c = serde_json::to_value(docker_config(Some(
            &json!({"Env": ["A=1"], "Cmd": ["sh"], "Shell": []}),
        )))
        .unwrap();
        assert_eq!(c["Hostname"], "");
        assert_eq!(c["Env"], json!(["A=1"]));
        assert_eq!(c["Entrypoint"], Value::Null);
        assert_eq!(c["AttachStdin"], false);
        for omitted in [
            "Shell",
            "ExposedPorts",
            "Healthcheck",
            "StopSignal",
            "ArgsEscaped",
        ] {
            assert!(c.get(omitted).is_none(), "{omitted}: {c}");
        }
        assert_eq!(docker_config(None), None);
    }
}
