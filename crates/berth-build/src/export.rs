//! Exporters: an image into the store under its names, an OCI layout tar, a directory.

use std::fs;
use std::io::Write;
use std::path::Path;

use berth_oci::{Algorithm, Digest, media_type};
use berth_snapshot::Compression;
use berth_store::Store;

use crate::error::{BuildError, Result};
use crate::image::ImageConfig;
use crate::solver::Layer;

/// An image written to the store.
#[derive(Debug, Clone)]
pub struct Exported {
    /// The manifest's digest.
    pub manifest: Digest,
    /// The config's digest: the image ID Docker shows.
    pub config: Digest,
    /// The manifest bytes.
    pub manifest_bytes: Vec<u8>,
}

/// OCI media type for a layer blob (Docker's types name the same bytes).
fn oci_layer_type(t: &str) -> &str {
    match t {
        media_type::DOCKER_LAYER_GZIP => media_type::OCI_LAYER_GZIP,
        media_type::DOCKER_LAYER => media_type::OCI_LAYER,
        other => other,
    }
}

/// `layers` with every layer from index `keep` on compressed as `to`: a layer compressed
/// otherwise (a cached one from a build with other settings, or a base layer when
/// forced) is re-encoded once; the store remembers the variant for the next time.
pub fn convert_layers(
    store: &Store,
    layers: &[Layer],
    to: Compression,
    keep: usize,
) -> Result<Vec<Layer>> {
    let mut out = layers.to_vec();
    for l in out.iter_mut().skip(keep) {
        let t = &l.blob.media_type;
        let Some(from) = Compression::of_media_type(t) else {
            continue; // foreign or unknown layers go as they are
        };
        if t.contains("foreign") || t.contains("nondistributable") {
            continue; // their bytes live elsewhere: re-encoding would change what they name
        }
        if from == to {
            continue;
        }
        let (digest, size) = variant(store, &l.blob.digest, from, to)?;
        l.blob = berth_oci::Descriptor {
            media_type: to.media_type().to_string(),
            digest,
            size,
            artifact_type: None,
            annotations: None,
            platform: None,
        };
    }
    Ok(out)
}

/// Layer `blob` (compressed as `from`) compressed as `to`: recorded earlier, or
/// re-encoded now into the store and recorded.
fn variant(
    store: &Store,
    blob: &Digest,
    from: Compression,
    to: Compression,
) -> Result<(Digest, u64)> {
    let kind = to.to_string();
    if let Some(v) = store.variant(blob, &kind)? {
        return Ok(v);
    }
    let (file, _) = store
        .open_blob(blob)?
        .ok_or_else(|| BuildError::Image(format!("layer {blob} is missing from the store")))?;
    let reference = format!("convert-{}-{}", berth_snapshot::owner::token(), blob.hex());
    let mut w = store.writer(&reference, Algorithm::Sha256)?;
    let converted = berth_snapshot::recompress(from, to, file, &mut w)
        .map_err(|e| BuildError::Image(format!("re-compress layer {blob}: {e}")));
    if let Err(e) = converted {
        drop(w);
        let _ = store.abort(&reference);
        return Err(e);
    }
    let c = w.commit(None, None)?;
    store.set_variant(blob, &kind, &c.digest, c.size);
    if let Some(u) = store.uncompressed(blob)? {
        store.set_uncompressed(&c.digest, &u);
    }
    Ok((c.digest, c.size))
}

/// The manifest `bytes` with its uncompressed layers gzip'ed (in the store), for a
/// registry: layers are kept uncompressed only on this machine (`berth build --load`),
/// and compressed when they leave it, as `docker push` does. `None` if there are none.
fn compressed_for_registry(store: &Store, bytes: &[u8]) -> Result<Option<Vec<u8>>> {
    let mut doc: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| BuildError::Image(format!("manifest: {e}")))?;
    let docker = doc["mediaType"] == media_type::DOCKER_MANIFEST;
    let mut changed = false;
    for l in doc["layers"].as_array_mut().into_iter().flatten() {
        let t = l["mediaType"].as_str().unwrap_or_default();
        if Compression::of_media_type(t) != Some(Compression::Uncompressed) {
            continue;
        }
        let blob: Digest = l["digest"]
            .as_str()
            .unwrap_or_default()
            .parse()
            .map_err(|e| BuildError::Image(format!("manifest layer digest: {e}")))?;
        let (digest, size) = variant(store, &blob, Compression::Uncompressed, Compression::Gzip)?;
        l["digest"] = digest.to_string().into();
        l["size"] = size.into();
        l["mediaType"] = if docker {
            media_type::DOCKER_LAYER_GZIP.into()
        } else {
            Compression::Gzip.media_type().into()
        };
        changed = true;
    }
    Ok(changed.then(|| serde_json::to_vec(&doc).expect("json")))
}

/// Write config and manifest for `layers` into the store and name the image `tags`.
pub fn export_image(
    store: &Store,
    layers: &[Layer],
    mut config: ImageConfig,
    tags: &[String],
) -> Result<Exported> {
    config.rootfs.diff_ids = layers.iter().map(|l| l.diff_id.clone()).collect();
    let config_bytes = serde_json::to_vec(&config).expect("config serialises");
    let config_digest = store.put_blob(Algorithm::Sha256, &config_bytes)?.digest;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media_type::OCI_MANIFEST,
        "config": {"mediaType": media_type::OCI_CONFIG, "digest": config_digest, "size": config_bytes.len()},
        "layers": layers.iter().map(|l| serde_json::json!({
            "mediaType": oci_layer_type(&l.blob.media_type),
            "digest": l.blob.digest,
            "size": l.blob.size,
        })).collect::<Vec<_>>(),
    });
    let manifest_bytes = serde_json::to_vec(&manifest).expect("json");
    let digest = store.put_blob(Algorithm::Sha256, &manifest_bytes)?.digest;
    let blobs: Vec<Digest> = std::iter::once(config_digest.clone())
        .chain(layers.iter().map(|l| l.blob.digest.clone()))
        .collect();
    name_in_store(
        store,
        tags,
        &blobs,
        &[],
        (&digest, media_type::OCI_MANIFEST),
    )?;
    Ok(Exported {
        manifest: digest,
        config: config_digest,
        manifest_bytes,
    })
}

/// A multi-platform image: an OCI index over image manifests of the store, one per
/// platform (each built by its own [`crate::build`]), named by each of `tags` (the
/// children and their blobs are linked into each repository too, so the registry
/// serves them). Returns the index's digest.
pub fn export_index(
    store: &Store,
    children: &[(crate::Platform, Digest)],
    tags: &[String],
) -> Result<Digest> {
    let mut manifests = Vec::with_capacity(children.len());
    let mut blobs = Vec::new();
    for (platform, digest) in children {
        let bytes = store.read_blob(digest)?.ok_or_else(|| {
            BuildError::Image(format!("manifest {digest} is missing from the store"))
        })?;
        let (m, _) = berth_oci::Manifest::parse(&bytes, None)
            .map_err(|e| BuildError::Image(format!("manifest {digest}: {e}")))?;
        blobs.extend(m.blobs().map(|d| d.digest.clone()));
        let mut p = serde_json::json!({
            "architecture": platform.architecture,
            "os": platform.os,
        });
        if !platform.variant.is_empty() {
            p["variant"] = serde_json::json!(platform.variant);
        }
        manifests.push(serde_json::json!({
            "mediaType": media_type::OCI_MANIFEST,
            "digest": digest.to_string(),
            "size": bytes.len(),
            "platform": p,
        }));
    }
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media_type::OCI_INDEX,
        "manifests": manifests,
    });
    let bytes = serde_json::to_vec(&index).expect("json");
    let digest = store.put_blob(Algorithm::Sha256, &bytes)?.digest;
    let child_manifests: Vec<Digest> = children.iter().map(|(_, d)| d.clone()).collect();
    name_in_store(
        store,
        tags,
        &blobs,
        &child_manifests,
        (&digest, media_type::OCI_INDEX),
    )?;
    Ok(digest)
}

/// Name `top` (digest, media type) by each of `tags` in the store, with `blobs` and the
/// image manifests `manifests` it references linked into each repository.
fn name_in_store(
    store: &Store,
    tags: &[String],
    blobs: &[Digest],
    manifests: &[Digest],
    top: (&Digest, &str),
) -> Result<()> {
    let repos = store.repos();
    for t in tags {
        let written = berth_oci::WrittenReference::parse(t)
            .map_err(|e| BuildError::Invalid(format!("image name: {e}")))?;
        let (name, tag) = (written.local_repository(), written.tag_or_latest());
        berth_oci::validate_repository(&name)
            .map_err(|e| BuildError::Invalid(format!("image name {t:?}: {e}")))?;
        for b in blobs {
            repos.link_blob(&name, b)?;
        }
        for m in manifests {
            repos.link_manifest(&name, m, media_type::OCI_MANIFEST)?;
        }
        repos.link_manifest(&name, top.0, top.1)?;
        repos.set_tag(&name, tag, top.0)?;
    }
    Ok(())
}

/// The image every one of `tags` names already, if it is the one [`export_image`] would
/// write but for its timestamps (`created`, top-level and in the history): a rebuild
/// that changed nothing. As with BuildKit, such a rebuild keeps the image, its ID and
/// its creation time, and writes nothing (no config, manifest, links or tags).
pub fn unchanged_image(
    store: &Store,
    layers: &[Layer],
    config: &ImageConfig,
    tags: &[String],
) -> Option<Exported> {
    let repos = store.repos();
    let mut found: Option<Digest> = None;
    for t in tags {
        let written = berth_oci::WrittenReference::parse(t).ok()?;
        let d = repos
            .tag(&written.local_repository(), written.tag_or_latest())
            .ok()??;
        if found.as_ref().is_some_and(|f| *f != d) {
            return None;
        }
        found = Some(d);
    }
    let manifest = found?;
    let manifest_bytes = store.read_blob(&manifest).ok()??;
    let (m, mt) = berth_oci::Manifest::parse(&manifest_bytes, None).ok()?;
    if mt != media_type::OCI_MANIFEST
        || m.layers.len() != layers.len()
        || m.layers.iter().zip(layers).any(|(a, b)| {
            a.digest != b.blob.digest
                || a.size != b.blob.size
                || a.media_type != oci_layer_type(&b.blob.media_type)
        })
    {
        return None;
    }
    let cfg = m.config?;
    let old: serde_json::Value =
        serde_json::from_slice(&store.read_blob(&cfg.digest).ok()??).ok()?;
    let mut new = config.clone();
    new.rootfs.diff_ids = layers.iter().map(|l| l.diff_id.clone()).collect();
    let new = serde_json::to_value(&new).ok()?;
    let timeless = |mut v: serde_json::Value| {
        if let Some(o) = v.as_object_mut() {
            o.remove("created");
            if let Some(h) = o.get_mut("history").and_then(|h| h.as_array_mut()) {
                for e in h {
                    if let Some(e) = e.as_object_mut() {
                        e.remove("created");
                    }
                }
            }
        }
        v
    };
    (timeless(old) == timeless(new)).then_some(Exported {
        manifest,
        config: cfg.digest,
        manifest_bytes,
    })
}

/// Write an exported image as an OCI image layout in a tar file at `dest` (written to
/// a temporary name and renamed, so a failed export leaves no partial file).
pub fn export_oci_tar(
    store: &Store,
    image: &Exported,
    layers: &[Layer],
    name: Option<&str>,
    dest: &Path,
) -> Result<()> {
    let tmp = dest.with_extension(format!("partial-{}", std::process::id()));
    let result = (|| {
        let file = fs::File::create(&tmp)
            .map_err(|e| BuildError::Io(format!("create {}: {e}", tmp.display())))?;
        let mut tar = tar::Builder::new(std::io::BufWriter::new(file));
        let add = |tar: &mut tar::Builder<_>, path: &str, data: &[u8]| {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_mtime(0);
            tar.append_data(&mut h, path, data)
                .map_err(|e| BuildError::Io(format!("write {}: {e}", tmp.display())))
        };
        add(&mut tar, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        let mut desc = serde_json::json!({
            "mediaType": media_type::OCI_MANIFEST,
            "digest": image.manifest,
            "size": image.manifest_bytes.len(),
        });
        if let Some(n) = name {
            // As BuildKit's OCI exporter: the tag as ref.name, the full name for containerd.
            let tag = berth_oci::WrittenReference::parse(n)
                .map_err(|e| BuildError::Invalid(format!("image name: {e}")))?
                .tag_or_latest()
                .to_string();
            desc["annotations"] = serde_json::json!({
                "io.containerd.image.name": n,
                "org.opencontainers.image.ref.name": tag,
            });
        }
        let index = serde_json::json!({"schemaVersion": 2, "mediaType": media_type::OCI_INDEX, "manifests": [desc]});
        add(
            &mut tar,
            "index.json",
            &serde_json::to_vec(&index).expect("json"),
        )?;
        let mut blobs: Vec<Digest> = vec![image.manifest.clone(), image.config.clone()];
        blobs.extend(layers.iter().map(|l| l.blob.digest.clone()));
        blobs.dedup();
        for d in blobs {
            let (mut f, size) = store
                .open_blob(&d)?
                .ok_or_else(|| BuildError::Io(format!("blob {d} is missing from the store")))?;
            let mut h = tar::Header::new_ustar();
            h.set_size(size);
            h.set_mode(0o644);
            h.set_mtime(0);
            tar.append_data(
                &mut h,
                format!("blobs/{}/{}", d.algorithm().as_str(), d.hex()),
                &mut f,
            )
            .map_err(|e| BuildError::Io(format!("write {}: {e}", tmp.display())))?;
        }
        let mut w = tar
            .into_inner()
            .map_err(|e| BuildError::Io(format!("write {}: {e}", tmp.display())))?;
        w.flush()
            .map_err(|e| BuildError::Io(format!("write {}: {e}", tmp.display())))?;
        Ok(())
    })();
    match result {
        Ok(()) => fs::rename(&tmp, dest)
            .map_err(|e| BuildError::Io(format!("rename to {}: {e}", dest.display()))),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// The registry exporter: push the image `manifest` of the store to `dest` through
/// [`berth_client::push_image`] (blobs the registry lacks go up in parallel, existing ones
/// are skipped, known ones mounted, then the manifest). Returns the pushed manifest's
/// digest. Uncompressed layers (`berth build --load` keeps them so) are gzip'ed on the
/// way, so the pushed digest then differs from the local one; an index goes byte for
/// byte (it names its manifests' digests).
pub async fn push_image(
    store: &Store,
    client: &berth_client::Client,
    manifest: &Digest,
    dest: &berth_oci::Reference,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<Digest> {
    let bytes = store.read_blob(manifest)?.ok_or_else(|| {
        BuildError::Image(format!("manifest {manifest} is missing from the store"))
    })?;
    let (_, mt) = berth_oci::Manifest::parse(&bytes, None)
        .map_err(|e| BuildError::Image(format!("manifest {manifest}: {e}")))?;
    let mut bytes = bytes;
    if !media_type::is_index(&mt) {
        let store2 = store.clone();
        let original = bytes.clone();
        let gz = tokio::task::spawn_blocking(move || compressed_for_registry(&store2, &original))
            .await
            .map_err(|e| BuildError::Invalid(e.to_string()))??;
        if let Some(gz) = gz {
            progress("compressed the uncompressed layers with gzip for the registry");
            bytes = gz;
        }
    }
    Ok(berth_client::push_manifest(client, store, &bytes, dest, progress).await?)
}

/// Write the file system of the image whose manifest is `manifest` (in `store`) into the
/// directory `dest`, its layers applied in order with whiteouts carried out: what
/// `--output type=local` gives for an image that was not built here (a satellite's).
pub fn export_rootfs(store: &Store, manifest: &Digest, dest: &Path) -> Result<()> {
    let layers = crate::image::layers_of(store, manifest)?;
    fs::create_dir_all(dest)
        .map_err(|e| BuildError::Io(format!("create {}: {e}", dest.display())))?;
    for l in layers {
        let compression = Compression::of_media_type(&l.media_type).ok_or_else(|| {
            BuildError::Image(format!(
                "layer {} has media type {}, which berth cannot unpack",
                l.digest, l.media_type
            ))
        })?;
        let (file, _) = store.open_blob(&l.digest)?.ok_or_else(|| {
            BuildError::Image(format!("layer {} is missing from the store", l.digest))
        })?;
        let reader = compression
            .reader(std::io::BufReader::new(file))
            .map_err(|e| BuildError::Io(format!("read layer {}: {e}", l.digest)))?;
        berth_snapshot::apply_layer_flat(dest, reader)?;
    }
    Ok(())
}
