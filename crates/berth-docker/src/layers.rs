//! The image as it goes to a Docker daemon: layers uncompressed when the daemon is on
//! this machine. Over loopback or a unix socket, compression costs CPU on both ends and
//! saves nothing; berth inflates a gzip layer with zlib-rs on its own thread, which is
//! faster than the daemon's Go inflater, and the daemon skips its decompression.
//!
//! An uncompressed layer's digest is its diff_id, so the daemon verifies it against the
//! image config as usual and the image ID (the config digest) stays the same.

use std::io::{self, Read};
use std::path::PathBuf;

use berth_oci::{Digest, Manifest, media_type};
use berth_snapshot::Compression;
use berth_store::{Store, Uncompressed};

use crate::{Error, Result};

/// One layer as the daemon gets it.
#[derive(Debug, Clone)]
pub(crate) struct Layer {
    /// Its digest as sent (the diff_id when inflated).
    pub digest: Digest,
    /// Its size as sent.
    pub size: u64,
    /// Its media type as sent.
    pub media_type: String,
    /// The blob in berth's store.
    pub path: PathBuf,
    /// How berth decodes the blob on the way (`Uncompressed`: sent as stored).
    pub decode: Compression,
}

impl Layer {
    /// The bytes as sent.
    pub fn open(&self) -> io::Result<Box<dyn Read + Send>> {
        self.decode.reader(std::fs::File::open(&self.path)?)
    }
}

/// The image as sent: its manifest (re-written when layers are inflated), config and
/// layers.
#[derive(Debug, Clone)]
pub(crate) struct Image {
    pub manifest: Vec<u8>,
    pub manifest_digest: Digest,
    pub manifest_type: String,
    pub config: Vec<u8>,
    pub config_digest: Digest,
    pub layers: Vec<Layer>,
}

fn store_err(e: impl std::fmt::Display) -> Error {
    Error::Store(e.to_string())
}

/// Which gzip layers go to the daemon inflated (zstd ones always do).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Inflate {
    /// None: a daemon on another machine.
    Never,
    /// Those gzip shrank (see [`worth_inflating`]): a daemon on this machine.
    WhenWorthIt,
    /// All of them.
    Always,
}

/// Read image `manifest` from the store; gzip layers become uncompressed ones (in a
/// new OCI manifest) as `inflate` says.
pub(crate) fn image(store: &Store, manifest: &Digest, inflate: Inflate) -> Result<Image> {
    let bytes = store
        .read_blob(manifest)
        .map_err(store_err)?
        .ok_or_else(|| Error::Store(format!("manifest {manifest} is not in berth's store")))?;
    let (m, manifest_type) = Manifest::parse(&bytes, None)
        .map_err(|e| Error::Store(format!("manifest {manifest}: {e}")))?;
    let config_d = m
        .config
        .clone()
        .ok_or_else(|| Error::Store(format!("manifest {manifest} has no config")))?;
    let config = store
        .read_blob(&config_d.digest)
        .map_err(store_err)?
        .ok_or_else(|| Error::Store(format!("config {} is not in the store", config_d.digest)))?;
    let diff_ids = diff_ids(&config);
    let mut layers = Vec::new();
    let mut rewritten = false;
    for (i, l) in m.layers.iter().enumerate() {
        let path = store.blob_path(&l.digest);
        if store.blob_size(&l.digest).map_err(store_err)?.is_none() {
            return Err(Error::Store(format!(
                "layer {} is not in berth's store",
                l.digest
            )));
        }
        // Docker before 23 cannot read zstd: such layers are always inflated.
        let compression = Compression::of_media_type(&l.media_type);
        let plain = match compression {
            Some(Compression::Zstd) => {
                let u = uncompressed(store, &l.digest, Compression::Zstd, diff_ids.get(i))?;
                Some(u.ok_or_else(|| {
                    Error::Store(format!(
                        "zstd layer {} does not inflate to its diff_id; the image is damaged",
                        l.digest
                    ))
                })?)
            }
            Some(Compression::Gzip) if inflate != Inflate::Never => {
                uncompressed(store, &l.digest, Compression::Gzip, diff_ids.get(i))?
                    .filter(|u| inflate == Inflate::Always || worth_inflating(l.size, u.size))
            }
            _ => None,
        };
        layers.push(match plain {
            Some(u) => {
                rewritten = true;
                Layer {
                    digest: u.diff_id,
                    size: u.size,
                    media_type: media_type::OCI_LAYER.to_string(),
                    path,
                    decode: compression.unwrap_or(Compression::Uncompressed),
                }
            }
            None => Layer {
                digest: l.digest.clone(),
                size: l.size,
                media_type: l.media_type.clone(),
                path,
                decode: Compression::Uncompressed,
            },
        });
    }
    if !rewritten {
        return Ok(Image {
            manifest: bytes,
            manifest_digest: manifest.clone(),
            manifest_type,
            config,
            config_digest: config_d.digest,
            layers,
        });
    }
    let descriptors: Vec<serde_json::Value> = layers
        .iter()
        .map(|l| serde_json::json!({"mediaType": l.media_type, "digest": l.digest.to_string(), "size": l.size}))
        .collect();
    let doc = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media_type::OCI_MANIFEST,
        "config": {
            "mediaType": media_type::OCI_CONFIG,
            "digest": config_d.digest.to_string(),
            "size": config_d.size,
        },
        "layers": descriptors,
    });
    let manifest = serde_json::to_vec(&doc).expect("json");
    Ok(Image {
        manifest_digest: Digest::sha256(&manifest),
        manifest,
        manifest_type: media_type::OCI_MANIFEST.to_string(),
        config,
        config_digest: config_d.digest,
        layers,
    })
}

/// Inflating costs berth the CPU the daemon saves; it pays when gzip shrank the layer.
/// An incompressible layer (random data, media already compressed) is stored blocks:
/// as many bytes either way, and the daemon's pass over them is no slower than berth's
/// (measured: 300 MB of random data loaded in 1.8-2.0 s inflated, 1.5-1.7 s as gzip).
fn worth_inflating(compressed: u64, uncompressed: u64) -> bool {
    uncompressed > compressed + compressed / 8
}

fn diff_ids(config: &[u8]) -> Vec<Digest> {
    let v: serde_json::Value = serde_json::from_slice(config).unwrap_or_default();
    v["rootfs"]["diff_ids"]
        .as_array()
        .map(|a| a.iter().filter_map(|d| d.as_str()?.parse().ok()).collect())
        .unwrap_or_default()
}

/// The uncompressed form of gzip layer `blob` when it matches the config's diff_id:
/// from the store's record, or measured once (inflating it) and recorded.
fn uncompressed(
    store: &Store,
    blob: &Digest,
    compression: Compression,
    diff_id: Option<&Digest>,
) -> Result<Option<Uncompressed>> {
    let Some(diff_id) = diff_id else {
        return Ok(None);
    };
    if let Some(u) = store.uncompressed(blob).map_err(store_err)? {
        return Ok((u.diff_id == *diff_id).then_some(u));
    }
    let f = std::fs::File::open(store.blob_path(blob)).map_err(store_err)?;
    let Ok(mut gz) = compression.reader(f) else {
        return Ok(None);
    };
    let mut hasher = berth_oci::Algorithm::Sha256.hasher();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = match gz.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            // Not gzip after all, or damaged: send it as it is.
            Err(_) => return Ok(None),
        };
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    let u = Uncompressed {
        diff_id: hasher.finish(),
        size,
    };
    store.set_uncompressed(blob, &u);
    Ok((u.diff_id == *diff_id).then_some(u))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store holding a one-layer image whose layer is `tar` gzip'ed; returns the
    /// manifest digest and the layer's diff_id.
    fn one_layer_image(store: &Store, tar: &[u8]) -> (Digest, Digest) {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, tar).unwrap();
        let layer = gz.finish().unwrap();
        let put = |b: &[u8]| {
            store
                .put_blob(berth_oci::Algorithm::Sha256, b)
                .unwrap()
                .digest
        };
        let layer_d = put(&layer);
        let diff_id = Digest::sha256(tar);
        let config = format!(r#"{{"rootfs":{{"type":"layers","diff_ids":["{diff_id}"]}}}}"#);
        let config_d = put(config.as_bytes());
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"{}","digest":"{config_d}","size":{}}},"layers":[{{"mediaType":"{}","digest":"{layer_d}","size":{}}}]}}"#,
            media_type::OCI_MANIFEST,
            media_type::OCI_CONFIG,
            config.len(),
            media_type::OCI_LAYER_GZIP,
            layer.len()
        );
        (put(manifest.as_bytes()), diff_id)
    }

    #[test]
    fn inflated_layers_are_named_by_diff_id() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let tar = vec![7u8; 3 * 512];
        let (m, diff_id) = one_layer_image(&store, &tar);

        let kept = image(&store, &m, Inflate::Never).unwrap();
        assert_eq!(kept.manifest_digest, m);
        assert_eq!(kept.layers[0].decode, Compression::Uncompressed);

        let img = image(&store, &m, Inflate::WhenWorthIt).unwrap();
        assert_ne!(img.manifest_digest, m);
        assert_eq!(img.manifest_digest, Digest::sha256(&img.manifest));
        let l = &img.layers[0];
        assert_eq!((&l.digest, l.size), (&diff_id, tar.len() as u64));
        let mut sent = Vec::new();
        l.open().unwrap().read_to_end(&mut sent).unwrap();
        assert_eq!(sent, tar);
        let (parsed, _) = Manifest::parse(&img.manifest, None).unwrap();
        assert_eq!(parsed.layers[0].digest, diff_id);
        assert_eq!(parsed.layers[0].media_type, media_type::OCI_LAYER);
        // Measured once, then recorded.
        let layer = &kept.layers[0].digest;
        assert_eq!(store.uncompressed(layer).unwrap().unwrap().size, 1536);
    }

    #[test]
    fn a_wrong_record_is_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (m, _) = one_layer_image(&store, &[1u8; 1024]);
        let layer = image(&store, &m, Inflate::Never).unwrap().layers[0]
            .digest
            .clone();
        store.set_uncompressed(
            &layer,
            &Uncompressed {
                diff_id: Digest::sha256(b"something else"),
                size: 5,
            },
        );
        let img = image(&store, &m, Inflate::WhenWorthIt).unwrap();
        assert_eq!(img.manifest_digest, m, "sent as stored");
        assert_eq!(img.layers[0].decode, Compression::Uncompressed);
    }
}
