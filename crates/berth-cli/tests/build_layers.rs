//! The layers a build records are the bytes it stored: every layer descriptor's digest
//! and size are those of its blob, the config's diff_ids those of the tar inside, and the
//! store's uncompressed hint agrees, for each compression, for a step that ran and for a
//! cached layer re-encoded at export (issue 16, item 3: the layer is written, compressed
//! and hashed in one pass, so nothing else checks this).

mod common;

use std::io::Read;
use std::path::Path;

use berth_oci::Digest;
use common::*;

/// Check every layer of the image `manifest` in the store at `root`; returns how many
/// there are.
fn check_layers(root: &Path, manifest: &str) -> usize {
    let blob = |d: &str| {
        let hex = d.strip_prefix("sha256:").expect("sha256 digest");
        std::fs::read(root.join("blobs/sha256").join(hex))
            .unwrap_or_else(|e| panic!("blob {d}: {e}"))
    };
    let m: serde_json::Value = serde_json::from_slice(&blob(manifest)).unwrap();
    let config: serde_json::Value =
        serde_json::from_slice(&blob(m["config"]["digest"].as_str().unwrap())).unwrap();
    let layers = m["layers"].as_array().unwrap();
    let diff_ids = config["rootfs"]["diff_ids"].as_array().unwrap();
    assert_eq!(
        layers.len(),
        diff_ids.len(),
        "layers and diff_ids of {manifest}"
    );
    for (l, diff_id) in layers.iter().zip(diff_ids) {
        let digest = l["digest"].as_str().unwrap();
        let bytes = blob(digest);
        assert_eq!(
            Digest::sha256(&bytes).to_string(),
            digest,
            "layer {digest}: its bytes have another digest"
        );
        assert_eq!(
            l["size"].as_u64(),
            Some(bytes.len() as u64),
            "size of {digest}"
        );
        let media_type = l["mediaType"].as_str().unwrap();
        let compression = berth_snapshot::Compression::of_media_type(media_type)
            .unwrap_or_else(|| panic!("{digest}: media type {media_type}"));
        let mut tar = Vec::new();
        compression
            .reader(bytes.as_slice())
            .unwrap()
            .read_to_end(&mut tar)
            .unwrap();
        assert_eq!(
            Digest::sha256(&tar).to_string(),
            diff_id.as_str().unwrap(),
            "layer {digest} ({media_type}): its tar is not the config's diff_id"
        );
        // The hint loads into Docker rely on, when berth wrote or unpacked the layer.
        let hint = root
            .join("blobinfo/sha256")
            .join(digest.strip_prefix("sha256:").unwrap())
            .join("uncompressed");
        if let Ok(h) = std::fs::read_to_string(&hint) {
            assert_eq!(
                h.trim(),
                format!("{} {}", diff_id.as_str().unwrap(), tar.len()),
                "uncompressed hint of {digest}"
            );
        }
    }
    layers.len()
}

#[test]
fn recorded_layer_digests_and_diff_ids_match_their_bytes() {
    if !require_build() {
        return;
    }
    let base = BuildBase::new();
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(
        dir.path(),
        "ctx",
        "ARG BASE\nFROM ${BASE}\nCOPY files/ /files/\n\
         RUN rm /files/gone && mkdir -p /out && seq 1 50000 > /out/big && ln /out/big /out/link\n",
    );
    std::fs::create_dir_all(ctx.join("files/sub")).unwrap();
    for i in 0..40 {
        std::fs::write(ctx.join(format!("files/sub/f{i}")), format!("file {i}\n")).unwrap();
    }
    std::fs::write(ctx.join("files/gone"), "soon deleted").unwrap();
    std::fs::write(ctx.join("files/empty"), "").unwrap();
    let root = dir.path().join("root");
    let build = |compression: &str, tag: &str, cache: bool| {
        output_ok(
            berth_build(&root)
                .args(["--compression", compression, "-t", tag])
                .args((!cache).then_some("--no-cache"))
                .arg("--build-arg")
                .arg(format!("BASE={}", base.reference()))
                .arg(&ctx),
        )
        .manifest()
    };
    // Each compression writes its layers (no cache: the steps run and are diffed); the
    // busybox base layer is checked as well.
    for compression in ["gzip", "zstd", "uncompressed"] {
        let manifest = build(compression, &format!("layers-{compression}:1"), false);
        assert_eq!(check_layers(&root, &manifest), 3, "{compression}");
    }
    // Steps cached from the uncompressed build, re-encoded at export.
    let again = build("gzip", "layers-again:1", true);
    check_layers(&root, &again);
    check_store(&root);
}
