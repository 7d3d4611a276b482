//! Real clients against `berth registry serve`: skopeo, docker and buildah push and pull, TLS
//! with a CA made here, basic auth. The skopeo round trip also runs against Debian's
//! docker-registry, so the test itself is checked against the reference registry.

mod common;

use std::process::Command;

use common::*;

fn skopeo_round_trip(addr: &str) {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let want = busybox_layout(&src, "v1");
    let reference = format!("docker://{addr}/team/busybox:v1");
    run(&mut skopeo_copy(
        &format!("oci:{}:v1", src.display()),
        &reference,
        &[],
    ));
    let out = dir.path().join("out");
    run(&mut skopeo_copy(
        &reference,
        &format!("oci:{}:v1", out.display()),
        &[],
    ));
    assert_eq!(layout_digest(&out), want, "digest survives the round trip");
    let inspect =
        run(Command::new("skopeo").args(["inspect", "--raw", "--tls-verify=false", &reference]));
    assert!(
        inspect.contains("application/vnd.oci.image.manifest.v1+json"),
        "{inspect}"
    );
    // Converting to Docker schema2 on the way is a different manifest, pushed as such.
    let docker_ref = format!("docker://{addr}/team/busybox:v2s2");
    run(&mut skopeo_copy(
        &format!("oci:{}:v1", src.display()),
        &docker_ref,
        &["--format", "v2s2"],
    ));
    let raw =
        run(Command::new("skopeo").args(["inspect", "--raw", "--tls-verify=false", &docker_ref]));
    assert!(
        raw.contains("application/vnd.docker.distribution.manifest.v2+json"),
        "{raw}"
    );
    let tags = run(Command::new("skopeo").args([
        "list-tags",
        "--tls-verify=false",
        &format!("docker://{addr}/team/busybox"),
    ]));
    assert!(
        tags.contains("\"v1\"") && tags.contains("\"v2s2\""),
        "{tags}"
    );
}

#[test]
fn skopeo_round_trip_against_berth() {
    if !require("skopeo") {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let berth = Berth::serve(root.path(), &[]);
    skopeo_round_trip(&berth.addr);
    check_store(root.path());
}

#[test]
fn skopeo_round_trip_against_distribution() {
    if !require("skopeo") {
        return;
    }
    let Some(peer) = Distribution::start() else {
        return;
    };
    skopeo_round_trip(&peer.addr);
}

#[test]
fn docker_push_and_pull() {
    if !require("skopeo") || !require_docker() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let berth = Berth::serve(&root, &[]);
    let src = dir.path().join("src");
    busybox_layout(&src, "v1");
    let name = format!("{}/docker-test/busybox", berth.addr);
    run(&mut skopeo_copy(
        &format!("oci:{}:v1", src.display()),
        &format!("docker://{name}:v1"),
        &[],
    ));
    let d = docker();
    run(Command::new(d).args(["pull", &format!("{name}:v1")]));
    let out = run(Command::new(d).args([
        "run",
        "--rm",
        "--network=none",
        &format!("{name}:v1"),
        "echo",
        "ran from berth",
    ]));
    assert_eq!(out.trim(), "ran from berth");
    // docker push to another repository: the layer is mounted, the digest printed by
    // docker is the one the registry serves.
    let pushed = format!("{}/docker-test/pushed:latest", berth.addr);
    run(Command::new(d).args(["tag", &format!("{name}:v1"), &pushed]));
    let out = run(Command::new(d).args(["push", &pushed]));
    let digest = out
        .split_whitespace()
        .skip_while(|w| *w != "digest:")
        .nth(1)
        .unwrap_or_else(|| panic!("docker push printed no digest: {out}"))
        .to_string();
    let raw = run(Command::new("skopeo").args([
        "inspect",
        "--tls-verify=false",
        "--format",
        "{{.Digest}}",
        &format!("docker://{pushed}"),
    ]));
    assert_eq!(raw.trim(), digest);
    // Pull again from scratch, by digest.
    run(Command::new(d).args(["rmi", "-f", &pushed, &format!("{name}:v1")]));
    let by_digest = format!("{}/docker-test/pushed@{digest}", berth.addr);
    run(Command::new(d).args(["pull", &by_digest]));
    let out = run(Command::new(d).args([
        "run",
        "--rm",
        "--network=none",
        &by_digest,
        "cat",
        "/etc/passwd",
    ]));
    assert!(out.starts_with("root:x:0:0"), "{out}");
    let _ = Command::new(d).args(["rmi", "-f", &by_digest]).output();
    check_store(&root);
}

#[test]
fn tls_and_basic_auth_with_skopeo() {
    if !require("skopeo") || !require("htpasswd") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    let (_ca, crt, key) = make_tls(&certs);
    let htpasswd = dir.path().join("htpasswd");
    run(Command::new("htpasswd")
        .args(["-Bbc"])
        .arg(&htpasswd)
        .args(["ci", "s3cret"]));
    let rules = dir.path().join("access.toml");
    std::fs::write(
        &rules,
        "[[rule]]\nusers = [\"ci\"]\nrepositories = [\"ci/*\"]\nactions = [\"pull\", \"push\"]\n",
    )
    .unwrap();
    let root = dir.path().join("root");
    let berth = Berth::serve(
        &root,
        &[
            "--tls-cert",
            crt.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--htpasswd",
            htpasswd.to_str().unwrap(),
            "--access",
            rules.to_str().unwrap(),
        ],
    );
    let src = dir.path().join("src");
    let want = busybox_layout(&src, "v1");
    let oci = format!("oci:{}:v1", src.display());
    let dest = format!("docker://{}/ci/busybox:v1", berth.addr);
    let cadir = certs.join("ca");
    let certdir = cadir.to_str().unwrap();
    let copy = |creds: &str, dest: &str, verify_with_ca: bool| {
        let mut c = Command::new("skopeo");
        c.args(["copy", "--quiet", "--dest-creds", creds]);
        if verify_with_ca {
            c.args(["--dest-cert-dir", certdir]);
        }
        c.args([oci.as_str(), dest]);
        c
    };
    // Without the CA the certificate is not trusted.
    let err = run_fails(&mut copy("ci:s3cret", &dest, false));
    assert!(err.contains("certificate") || err.contains("x509"), "{err}");
    // Wrong password.
    let err = run_fails(&mut copy("ci:wrong", &dest, true));
    assert!(
        err.contains("401") || err.to_lowercase().contains("unauthorized"),
        "{err}"
    );
    // A repository the rules do not grant.
    let err = run_fails(&mut copy(
        "ci:s3cret",
        &format!("docker://{}/other/busybox:v1", berth.addr),
        true,
    ));
    assert!(
        err.contains("403") || err.to_lowercase().contains("denied"),
        "{err}"
    );
    // Right CA, right credentials.
    run(&mut copy("ci:s3cret", &dest, true));
    let out = dir.path().join("out");
    run(Command::new("skopeo").args([
        "copy",
        "--quiet",
        "--src-creds",
        "ci:s3cret",
        "--src-cert-dir",
        certdir,
        &dest,
        &format!("oci:{}:v1", out.display()),
    ]));
    assert_eq!(layout_digest(&out), want);
}

#[test]
fn docker_login_push_pull_over_tls() {
    if !require("skopeo") || !require("htpasswd") || !require_docker() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    let (ca, crt, key) = make_tls(&certs);
    let htpasswd = dir.path().join("htpasswd");
    run(Command::new("htpasswd")
        .args(["-Bbc"])
        .arg(&htpasswd)
        .args(["ci", "s3cret"]));
    let root = dir.path().join("root");
    let berth = Berth::serve(
        &root,
        &[
            "--tls-cert",
            crt.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--htpasswd",
            htpasswd.to_str().unwrap(),
        ],
    );
    // dockerd trusts the test CA for this registry only, through certs.d.
    let certs_d = std::path::PathBuf::from(format!("/etc/docker/certs.d/{}", berth.addr));
    std::fs::create_dir_all(&certs_d).unwrap();
    std::fs::copy(&ca, certs_d.join("ca.crt")).unwrap();
    struct Cleanup(std::path::PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = Cleanup(certs_d);
    let docker_config = dir.path().join("docker-config");
    let d = || {
        let mut c = Command::new(docker());
        c.env("DOCKER_CONFIG", &docker_config);
        c
    };
    let src = dir.path().join("src");
    busybox_layout(&src, "v1");
    let name = format!("{}/tls/busybox:v1", berth.addr);
    // Anonymous pulls are refused. (dockerd then retries 127.0.0.0/8 over plain HTTP,
    // so the message it prints is about that second attempt; its log has the 401.)
    run_fails(d().args(["pull", &name]));
    let mut login = d();
    login
        .args(["login", "--username", "ci", "--password-stdin", &berth.addr])
        .stdin(std::process::Stdio::piped());
    let mut child = login
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), b"s3cret").unwrap();
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "docker login: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    run(&mut skopeo_copy(
        &format!("oci:{}:v1", src.display()),
        &format!("docker://{name}"),
        &[
            "--dest-creds",
            "ci:s3cret",
            "--dest-cert-dir",
            certs.join("ca").to_str().unwrap(),
        ],
    ));
    run(d().args(["pull", &name]));
    let pushed = format!("{}/tls/pushed:v1", berth.addr);
    run(d().args(["tag", &name, &pushed]));
    let out = run(d().args(["push", &pushed]));
    assert!(out.contains("digest: sha256:"), "{out}");
    let out = run(d().args(["run", "--rm", "--network=none", &pushed, "echo", "over tls"]));
    assert_eq!(out.trim(), "over tls");
    let _ = d().args(["rmi", "-f", &name, &pushed]).output();
    check_store(&root);
}

/// buildah (containers/storage and containers/image) with its own storage in a temp dir.
fn buildah(storage: &std::path::Path) -> Command {
    let mut c = Command::new("buildah");
    c.arg("--root")
        .arg(storage.join("root"))
        .arg("--runroot")
        .arg(storage.join("run"))
        .args(["--storage-driver", "vfs"]);
    c
}

/// Images buildah made and pushed (OCI and Docker schema 2, a whiteout in the second
/// layer) are bases for berth; an image berth built and pushed is pulled and run by
/// buildah.
#[test]
fn buildah_images_are_bases_and_berth_images_run_in_buildah() {
    if !require("buildah") || !require("busybox") || !require_build() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let registry_root = dir.path().join("registry");
    let registry = Berth::serve(&registry_root, &[]);
    let storage = dir.path().join("buildah");

    // Layer 1: busybox and its links, /who and /gone; layer 2 deletes /gone (a whiteout buildah writes).
    let ctr = run(buildah(&storage).args(["from", "scratch"]));
    let ctr = ctr.trim();
    run(buildah(&storage).args(["copy", ctr, "/bin/busybox", "/bin/busybox"]));
    let sh = |ctr: &str, script: &str| {
        run(buildah(&storage).args([
            "run",
            "--isolation",
            "chroot",
            ctr,
            "--",
            "/bin/busybox",
            "sh",
            "-c",
            script,
        ]));
    };
    sh(
        ctr,
        "/bin/busybox --install -s /bin && echo made-by-buildah > /who && echo x > /gone",
    );
    run(buildah(&storage).args(["commit", "-q", ctr, "peer-one"]));
    let on_top = run(buildah(&storage).args(["from", "peer-one"]));
    sh(on_top.trim(), "rm /gone");
    run(buildah(&storage).args(["commit", "-q", on_top.trim(), "peer-two"]));

    let root = dir.path().join("root");
    for format in ["oci", "v2s2"] {
        let name = format!("{}/peer/buildah:{format}", registry.addr);
        run(buildah(&storage).args([
            "push",
            "-q",
            "--tls-verify=false",
            "--format",
            format,
            "peer-two",
            &format!("docker://{name}"),
        ]));
        let raw = run(Command::new("skopeo").args([
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{name}"),
        ]));
        let manifest: serde_json::Value = serde_json::from_str(&raw).unwrap();
        assert_eq!(
            manifest["layers"].as_array().unwrap().len(),
            2,
            "the deletion is a layer of its own: {raw}"
        );
        let ctx = context(
            dir.path(),
            &format!("ctx-{format}"),
            &format!(
                "FROM {name}\nRUN test ! -e /gone && cat /who > /ran && echo {format} >> /ran\n"
            ),
        );
        let out_dir = dir.path().join(format!("out-{format}"));
        let built = output(
            berth_build(&root)
                .arg("-o")
                .arg(format!("type=local,dest={}", out_dir.display()))
                .arg(&ctx),
        );
        assert!(
            built.success,
            "FROM buildah's {format} image:\n{}",
            built.stderr
        );
        assert_eq!(
            std::fs::read_to_string(out_dir.join("ran")).unwrap(),
            format!("made-by-buildah\n{format}\n"),
            "buildah's layers, its whiteout applied"
        );
        assert!(!out_dir.join("gone").exists());
    }

    // And back: berth builds on it and pushes; buildah pulls and runs the result.
    let ctx = context(
        dir.path(),
        "ctx-back",
        &format!(
            "FROM {}/peer/buildah:oci\nRUN echo built-by-berth > /by\n",
            registry.addr
        ),
    );
    let ours = format!("{}/peer/ours:1", registry.addr);
    let built = output(berth_build(&root).args(["-t", &ours, "--push"]).arg(&ctx));
    assert!(built.success, "{}", built.stderr);
    run(buildah(&storage).args(["pull", "-q", "--tls-verify=false", &ours]));
    let back = run(buildah(&storage).args(["from", &ours]));
    let out = run(buildah(&storage).args([
        "run",
        "--isolation",
        "chroot",
        back.trim(),
        "--",
        "/bin/busybox",
        "cat",
        "/by",
        "/who",
    ]));
    assert_eq!(out, "built-by-berth\nmade-by-buildah\n");
    check_store(&registry_root);
    check_store(&root);
}
