//! Base images pulled from registries during a build: berth's own registry with TLS
//! and basic auth (credentials from a Docker config file, the CA from berth's config),
//! Debian's docker-registry, corrupt content refused, unknown hosts explained.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

fn ready() -> bool {
    require_build() && require("skopeo")
}

fn build(
    root: &Path,
    ctx: &Path,
    env: &[(&str, &Path)],
    config: Option<&Path>,
) -> std::process::Output {
    let mut c = Command::new(berth_bin());
    c.arg("--root").arg(root);
    if let Some(cfg) = config {
        c.arg("--config").arg(cfg);
    }
    c.args(["build", "--progress", "plain"]).arg(ctx);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn context(dir: &Path, from: &str) -> std::path::PathBuf {
    let ctx = dir.join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        format!("FROM {from}\nRUN echo the-base-runs && ls /bin/busybox\n"),
    )
    .unwrap();
    ctx
}

#[test]
fn pulls_from_berth_registry_with_tls_and_basic_auth() {
    if !ready() || !require("htpasswd") || !require("openssl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // A CA and a server certificate for 127.0.0.1, made with openssl.
    let pki = dir.path().join("pki");
    std::fs::create_dir_all(&pki).unwrap();
    let sh = format!(
        "cd {} && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.crt -days 2 -subj /CN=berth-test-ca 2>/dev/null \
         && openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout server.key -out server.csr -subj /CN=127.0.0.1 2>/dev/null \
         && printf 'subjectAltName=IP:127.0.0.1' > ext && openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt -days 2 -extfile ext 2>/dev/null",
        pki.display()
    );
    run(Command::new("sh").args(["-c", &sh]));
    let htpasswd = dir.path().join("htpasswd");
    run(Command::new("htpasswd")
        .args(["-Bbc"])
        .arg(&htpasswd)
        .args(["puller", "pw"]));
    let reg_root = dir.path().join("registry");
    let reg = Berth::serve(
        &reg_root,
        &[
            "--tls-cert",
            pki.join("server.crt").to_str().unwrap(),
            "--tls-key",
            pki.join("server.key").to_str().unwrap(),
            "--htpasswd",
            htpasswd.to_str().unwrap(),
        ],
    );
    let layout = dir.path().join("layout");
    busybox_layout(&layout, "v1");
    let dest = format!("docker://{}/base/busybox:v1", reg.addr);
    // skopeo's --cert-dir takes every *.key as a client key: give it the CA alone.
    let ca_only = dir.path().join("ca-only");
    std::fs::create_dir_all(&ca_only).unwrap();
    std::fs::copy(pki.join("ca.crt"), ca_only.join("ca.crt")).unwrap();
    run(Command::new("skopeo")
        .args([
            "copy",
            "--quiet",
            "--dest-creds",
            "puller:pw",
            "--dest-cert-dir",
        ])
        .arg(&ca_only)
        .arg(format!("oci:{}:v1", layout.display()))
        .arg(&dest));
    let ctx = context(dir.path(), &format!("{}/base/busybox:v1", reg.addr));
    let root = dir.path().join("root");

    // No CA configured: the certificate is not trusted, and the error says what to set.
    let out = build(&root, &ctx, &[], None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("certificate") && err.contains("ca"), "{err}");

    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[registries.\"{}\"]\nca = \"{}\"\n",
            reg.addr,
            pki.join("ca.crt").display()
        ),
    )
    .unwrap();
    // CA but no credentials: refused, and the error says to log in.
    let empty_docker = dir.path().join("no-docker-config");
    std::fs::create_dir_all(&empty_docker).unwrap();
    let out = build(
        &root,
        &ctx,
        &[("DOCKER_CONFIG", &empty_docker)],
        Some(&config),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("authentication failed") && err.contains("log in"),
        "{err}"
    );

    // Credentials from a Docker config file.
    let docker_config = dir.path().join("docker-config");
    std::fs::create_dir_all(&docker_config).unwrap();
    std::fs::write(
        docker_config.join("config.json"),
        format!(
            "{{\"auths\":{{\"{}\":{{\"auth\":\"cHVsbGVyOnB3\"}}}}}}",
            reg.addr
        ),
    )
    .unwrap();
    let out = build(
        &root,
        &ctx,
        &[("DOCKER_CONFIG", &docker_config)],
        Some(&config),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("the-base-runs"), "{err}");
}

#[test]
fn pulls_from_distribution_and_refuses_corrupt_blobs() {
    if !ready() {
        return;
    }
    let Some(peer) = Distribution::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    busybox_layout(&layout, "v1");
    run(&mut skopeo_copy(
        &format!("oci:{}:v1", layout.display()),
        &format!("docker://{}/base/busybox:v1", peer.addr),
        &[],
    ));
    let ctx = context(dir.path(), &format!("{}/base/busybox:v1", peer.addr));
    let root = dir.path().join("root");
    let out = build(&root, &ctx, &[], None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("the-base-runs"), "{err}");

    // A registry serving bytes that do not match the digest: berth's own registry over a
    // store whose layer was tampered with on disk.
    let reg_root = dir.path().join("registry");
    let reg = Berth::serve(&reg_root, &[]);
    run(&mut skopeo_copy(
        &format!("oci:{}:v1", layout.display()),
        &format!("docker://{}/base/busybox:v1", reg.addr),
        &[],
    ));
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let mdigest = index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_string();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("blobs/sha256").join(&mdigest)).unwrap())
            .unwrap();
    let layer = manifest["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_string();
    let blob = reg_root.join("blobs/sha256").join(&layer);
    let mut bytes = std::fs::read(&blob).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&blob, &bytes).unwrap();
    let ctx2 = dir.path().join("ctx2");
    std::fs::create_dir_all(&ctx2).unwrap();
    std::fs::write(
        ctx2.join("Dockerfile"),
        format!("FROM {}/base/busybox:v1\nRUN true\n", reg.addr),
    )
    .unwrap();
    let root2 = dir.path().join("root2");
    let out = build(&root2, &ctx2, &[], None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains(&format!("expected sha256:{layer}")), "{err}");
    assert!(
        !root2.join("blobs/sha256").join(&layer).exists(),
        "the corrupt layer was not committed"
    );
    assert!(
        std::fs::read_dir(root2.join("ingest"))
            .unwrap()
            .next()
            .is_none(),
        "no ingest left behind"
    );
}

#[test]
fn an_unknown_registry_host_is_explained() {
    if !ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(dir.path(), "registry.invalid/team/base:1");
    let out = build(&dir.path().join("root"), &ctx, &[], None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("Dockerfile:1:1")
            && err.contains("registry.invalid")
            && err.contains("does not resolve"),
        "{err}"
    );
}
