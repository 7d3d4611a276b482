//! `berth import` and `berth save` against a real dockerd (issue 13 item 5, issue 17
//! item 2): images Docker made (`docker import`, `docker commit`, the classic builder,
//! whose configs hold `null`s) go through `docker save` and `berth import` and are built
//! FROM; `berth save` output is `docker load`ed and run; a damaged archive changes
//! nothing. (The same images pushed by docker to a berth registry and built FROM are
//! build_fidelity.rs's `images_docker_made_are_bases`.)

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

fn berth(root: &Path) -> Command {
    let mut c = Command::new(berth_bin());
    c.arg("--root").arg(root).env("BERTH_LOG", "warn");
    c
}

/// Blob `digest` of the store at `root`.
fn blob(root: &Path, digest: &str) -> Vec<u8> {
    let hex = digest.trim().strip_prefix("sha256:").unwrap();
    std::fs::read(root.join("blobs/sha256").join(hex)).unwrap()
}

/// The manifest `name:tag` has in the store at `root`.
fn tagged(root: &Path, repo: &str, tag: &str) -> String {
    std::fs::read_to_string(root.join(format!("repositories/{repo}/_tags/{tag}")))
        .unwrap_or_else(|e| panic!("{repo}:{tag} is not in the store: {e}"))
        .trim()
        .to_string()
}

fn config_digest(root: &Path, manifest: &str) -> String {
    let m: serde_json::Value = serde_json::from_slice(&blob(root, manifest)).unwrap();
    m["config"]["digest"].as_str().unwrap().to_string()
}

/// No name, no ingest, and a store that checks clean.
fn assert_unchanged(root: &Path) {
    let repos: Vec<_> = std::fs::read_dir(root.join("repositories"))
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(repos.is_empty(), "nothing named: {repos:?}");
    let ingests: Vec<_> = std::fs::read_dir(root.join("ingest"))
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(ingests.is_empty(), "no half-written blob: {ingests:?}");
    check_store(root);
}

#[test]
fn images_docker_saved_are_bases() {
    if !require_build() || !require_docker() {
        return;
    }
    let d = docker();
    let dir = tempfile::tempdir().unwrap();
    let name = format!("berth-arc-{}", std::process::id());
    let made = DockerMadeImages::new(dir.path(), &name);
    let archive = dir.path().join("saved.tar");
    run(Command::new(d)
        .args(["save", "-o"])
        .arg(&archive)
        .args(made.all().map(|(_, image)| image)));

    let root = dir.path().join("root");
    let out = run(berth(&root).arg("import").arg(&archive));
    for (variant, image) in made.all() {
        assert!(
            out.contains(&format!("imported {image} ")),
            "{variant}: {out}"
        );
        // The image ID is Docker's: the config came over byte for byte.
        let id = run(Command::new(d).args(["image", "inspect", "--format", "{{.Id}}", image]));
        let m = tagged(&root, &name, variant);
        assert_eq!(config_digest(&root, &m), id.trim(), "{variant}");
    }
    check_store(&root);

    for (variant, image) in made.all() {
        let ctx = context(
            dir.path(),
            &format!("ctx-{variant}"),
            &format!("FROM {image}\nRUN echo berth-ran-on-{variant} > /ran\n"),
        );
        let out_dir = dir.path().join(format!("out-{variant}"));
        let built = output(
            berth_build(&root)
                .args(["-t", &format!("arc-{variant}:1"), "-o"])
                .arg(format!("type=local,dest={}", out_dir.display()))
                .arg(&ctx),
        );
        assert!(built.success, "FROM {image}:\n{}", built.stderr);
        assert_eq!(
            std::fs::read_to_string(out_dir.join("ran")).unwrap(),
            format!("berth-ran-on-{variant}\n")
        );
        let config = blob(
            &root,
            &config_digest(&root, &tagged(&root, &format!("arc-{variant}"), "1")),
        );
        let text = String::from_utf8(config).unwrap();
        assert!(!text.contains("null"), "{variant}: {text}");
    }
    assert!(
        dir.path().join("out-classic/classic").is_file(),
        "the classic builder's own RUN is in the result"
    );
}

#[test]
fn berth_saved_archives_load_into_docker() {
    if !require_build() || !require_docker() {
        return;
    }
    let d = docker();
    let dir = tempfile::tempdir().unwrap();
    let base = BuildBase::new();
    let root = dir.path().join("root");
    let tag = format!("berth-save-{}", std::process::id());
    let ctx = context(
        dir.path(),
        "ctx",
        &format!(
            "FROM {}\nRUN echo saved-by-berth > /who\nCMD [\"cat\", \"/who\"]\n",
            base.reference()
        ),
    );
    let (one, also) = (format!("{tag}:1"), format!("{tag}:also"));
    let built = output_ok(berth_build(&root).args(["-t", &one, "-t", &also]).arg(&ctx));
    let manifest = built.manifest();
    let id = built.stdout.lines().last().unwrap().trim().to_string();
    let _cleanup = DockerImages(vec![one.clone(), also.clone()]);

    // docker-archive, one image under two names: docker loads both and runs it.
    let archive = dir.path().join("saved.tar");
    run(berth(&root).args(["save", &one, &also, "-o"]).arg(&archive));
    let loaded = run(Command::new(d).args(["load", "-i"]).arg(&archive));
    assert!(loaded.contains(&format!("Loaded image: {one}")), "{loaded}");
    assert!(
        loaded.contains(&format!("Loaded image: {also}")),
        "{loaded}"
    );
    let ran = run(Command::new(d).args(["run", "--rm", "--network=none", &one]));
    assert_eq!(ran.trim(), "saved-by-berth");
    let got = run(Command::new(d).args(["image", "inspect", "--format", "{{.Id}}", &one]));
    assert_eq!(got.trim(), id, "Docker holds the image berth built");
    assert!(
        !dir.path().read_dir().unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .contains("partial"))
    );

    // To standard output, as docker save does.
    let piped = Command::new(berth_bin())
        .arg("--root")
        .arg(&root)
        .args(["save", &one, &also])
        .output()
        .unwrap();
    assert!(
        piped.status.success(),
        "{}",
        String::from_utf8_lossy(&piped.stderr)
    );
    assert_eq!(
        piped.stdout,
        std::fs::read(&archive).unwrap(),
        "the same archive"
    );

    // OCI layout: skopeo reads it, and it imports back into another root byte for byte.
    let oci = dir.path().join("saved-oci.tar");
    run(berth(&root)
        .args(["save", "--format", "oci", "-o"])
        .arg(&oci)
        .arg(&one));
    let inspected = run(Command::new("skopeo").args([
        "inspect",
        "--format",
        "{{.Digest}}",
        &format!("oci-archive:{}", oci.display()),
    ]));
    assert_eq!(inspected.trim(), manifest);
    let other = dir.path().join("other");
    run(berth(&other).arg("import").arg(&oci));
    assert_eq!(tagged(&other, &tag, "1"), manifest);
    check_store(&other);
}

#[test]
fn damaged_archives_leave_the_store_unchanged() {
    if !require_docker() {
        return;
    }
    let d = docker();
    let dir = tempfile::tempdir().unwrap();
    let image = format!("berth-damaged-{}:1", std::process::id());
    run(Command::new(d)
        .arg("import")
        .arg(busybox_rootfs_tar(dir.path()))
        .arg(&image));
    let _cleanup = DockerImages(vec![image.clone()]);
    let archive = dir.path().join("saved.tar");
    run(Command::new(d)
        .args(["save", "-o"])
        .arg(&archive)
        .arg(&image));
    let bytes = std::fs::read(&archive).unwrap();
    // Where the layer's content starts, after its header.
    let at = bytes.windows(9).position(|w| w == b"layer.tar").unwrap() / 512 * 512 + 512;

    let fails = |name: &str, data: &[u8], want: &[&str], stdin: bool| {
        let root = dir.path().join(format!("root-{name}"));
        let file = dir.path().join(format!("{name}.tar"));
        std::fs::write(&file, data).unwrap();
        let mut c = berth(&root);
        c.arg("import");
        if stdin {
            c.arg("-").stdin(std::fs::File::open(&file).unwrap());
        } else {
            c.arg(&file);
        }
        let err = run_fails(&mut c);
        for w in want {
            assert!(err.contains(w), "{name}: {w:?} not in:\n{err}");
        }
        assert_unchanged(&root);
    };
    fails(
        "truncated",
        &bytes[..at + 100_000],
        &["layer.tar", "truncated", "nothing was named"],
        false,
    );
    fails(
        "truncated-stdin",
        &bytes[..bytes.len() / 2],
        &["truncated"],
        true,
    );
    let mut corrupt = bytes.clone();
    corrupt[at + 5000] ^= 0x20;
    fails(
        "corrupt",
        &corrupt,
        &["layer.tar", "diff_id", "corrupt"],
        false,
    );
    fails("empty", b"", &["neither manifest.json"], false);

    // The intact archive imports, from standard input too.
    let root = dir.path().join("root-ok");
    let out = run(berth(&root)
        .args(["import", "-"])
        .stdin(std::fs::File::open(&archive).unwrap()));
    assert!(out.contains(&format!("imported {image} ")), "{out}");
    check_store(&root);
}

/// Archives another tool wrote: skopeo's oci-archive (a full name as ref.name) and
/// docker-archive of the busybox fixture.
#[test]
fn skopeo_archives_import() {
    if !require("skopeo") || !require("busybox") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let base = BuildBase::new();
    let layout = format!("oci:{}:base", base.layout().display());
    let digest = layout_digest(&base.layout());
    let root = dir.path().join("root");

    let oci = dir.path().join("oci.tar");
    run(&mut skopeo_copy(
        &layout,
        &format!("oci-archive:{}:peer/oci:1", oci.display()),
        &[],
    ));
    let out = run(berth(&root).arg("import").arg(&oci));
    assert!(out.contains("imported peer/oci:1 "), "{out}");
    assert_eq!(tagged(&root, "peer/oci", "1"), digest, "kept byte for byte");

    let docker = dir.path().join("docker.tar");
    run(&mut skopeo_copy(
        &layout,
        &format!("docker-archive:{}:peer/docker:1", docker.display()),
        &[],
    ));
    let out = run(berth(&root).arg("import").arg(&docker));
    assert!(out.contains("imported peer/docker:1 "), "{out}");
    assert_eq!(
        config_digest(&root, &tagged(&root, "peer/docker", "1")),
        config_digest(&root, &digest),
        "the same image config"
    );
    check_store(&root);
}

/// Layers as containers-storage tools rewrite them: skopeo recompresses the busybox
/// fixture's layers as zstd and as zstd:chunked (zstd with skippable frames holding a
/// table of contents, and annotations naming it). Both import, build FROM and give the
/// same image config as the gzip original: the layers' uncompressed bytes are the same.
#[test]
fn zstd_and_zstd_chunked_layers_from_skopeo_are_bases() {
    if !require_build() || !require("skopeo") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let base = BuildBase::new();
    let layout = format!("oci:{}:base", base.layout().display());
    let original_config = {
        let m: serde_json::Value = serde_json::from_slice(
            &std::fs::read(
                base.layout()
                    .join("blobs/sha256")
                    .join(&layout_digest(&base.layout())["sha256:".len()..]),
            )
            .unwrap(),
        )
        .unwrap();
        m["config"]["digest"].as_str().unwrap().to_string()
    };
    let root = dir.path().join("root");
    for format in ["zstd", "zstd:chunked"] {
        let tag = format.replace(':', "-");
        let archive = dir.path().join(format!("{tag}.tar"));
        run(&mut skopeo_copy(
            &layout,
            &format!("oci-archive:{}:peer/{tag}:1", archive.display()),
            &["--dest-compress", "--dest-compress-format", format],
        ));
        let out = run(berth(&root).arg("import").arg(&archive));
        assert!(out.contains(&format!("imported peer/{tag}:1 ")), "{out}");
        let manifest: serde_json::Value =
            serde_json::from_slice(&blob(&root, &tagged(&root, &format!("peer/{tag}"), "1")))
                .unwrap();
        let layer = &manifest["layers"][0];
        assert_eq!(
            layer["mediaType"], "application/vnd.oci.image.layer.v1.tar+zstd",
            "{format}: skopeo recompressed the layer"
        );
        if format == "zstd:chunked" {
            assert!(
                layer["annotations"]["io.containers.zstd-chunked.manifest-position"].is_string(),
                "a chunked layer: {layer}"
            );
        }
        assert_eq!(
            manifest["config"]["digest"], original_config,
            "{format}: the same image"
        );

        let ctx = context(
            dir.path(),
            &format!("ctx-{tag}"),
            &format!("FROM peer/{tag}:1\nRUN ls /bin/busybox > /ran && echo {tag} >> /ran\n"),
        );
        let out_dir = dir.path().join(format!("out-{tag}"));
        let built = output(
            berth_build(&root)
                .arg("-o")
                .arg(format!("type=local,dest={}", out_dir.display()))
                .arg(&ctx),
        );
        assert!(built.success, "FROM a {format} base:\n{}", built.stderr);
        assert_eq!(
            std::fs::read_to_string(out_dir.join("ran")).unwrap(),
            format!("/bin/busybox\n{tag}\n")
        );
    }
    check_store(&root);
}
