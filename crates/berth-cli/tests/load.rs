//! `berth load` into a real dockerd: through the registry proxy, with the proxy turned
//! off, with the proxy unreachable from the daemon (berth in a network namespace of its
//! own, the Docker socket shared: the Earthly failure), and with the pull breaking
//! midway. Each time the image runs and its ID is the one berth built.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::*;

fn ready() -> bool {
    require_build() && require_docker()
}

/// Build a small image as `name` in a fresh root; returns (root, image ID).
fn build(dir: &Path, name: &str) -> (std::path::PathBuf, String) {
    build_with(dir, name, &[])
}

fn build_with(dir: &Path, name: &str, args: &[&str]) -> (std::path::PathBuf, String) {
    let layout = dir.join("busybox");
    busybox_layout(&layout, "v1");
    let ctx = dir.join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        format!(
            "FROM oci-layout://{}:v1\nRUN echo {name} > /who\nCMD [\"cat\", \"/who\"]\n",
            layout.display()
        ),
    )
    .unwrap();
    let root = dir.join("root");
    let out = run(Command::new(berth_bin())
        .arg("--root")
        .arg(&root)
        .args(["build", "--progress", "plain", "-t", name])
        .args(args)
        .arg(&ctx));
    let id = out.lines().last().unwrap().trim().to_string();
    assert!(id.starts_with("sha256:"), "{out}");
    (root, id)
}

fn load(root: &Path, args: &[&str], netns: Option<&str>) -> Output {
    let mut c = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, berth_bin()]);
            c
        }
        None => Command::new(berth_bin()),
    };
    c.arg("--root")
        .arg(root)
        .arg("load")
        .args(args)
        .output()
        .unwrap()
}

/// `berth load ARGS` with `env` set.
fn load_with(root: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(berth_bin())
        .arg("--root")
        .arg(root)
        .arg("load")
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

fn check_runs(name: &str, id: &str) {
    let d = docker();
    let out = run(Command::new(d).args(["run", "--rm", "--network=none", name]));
    assert_eq!(
        out.trim(),
        name,
        "the image's CMD prints the name it was built as"
    );
    let got = run(Command::new(d).args(["image", "inspect", "--format", "{{.Id}}", name]));
    assert_eq!(got.trim(), id, "Docker holds the image berth built");
    let repos = run(Command::new(d).args(["image", "ls", "--format", "{{.Repository}}"]));
    let repo = name.split(':').next().unwrap();
    let temporary = |r: &str| r.starts_with("127.0.0.1:") && r.ends_with(&format!("/{repo}"));
    assert!(
        !repos.contains("berth-probe") && !repos.lines().any(temporary),
        "temporary names removed: {repos}"
    );
    let _ = Command::new(d).args(["rmi", "-f", name]).output();
}

#[test]
fn through_the_registry_proxy() {
    if !ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (root, id) = build(dir.path(), "loadproxy:1");
    let out = load_with(
        &root,
        &["loadproxy:1"],
        &[("BERTH_LOG", "berth_docker=debug")],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("through berth's registry proxy"), "{err}");
    // The daemon is local: it asked for the new layer uncompressed, by its diff_id
    // (the base layer may be in the daemon already, from other images).
    let config: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            root.join("blobs/sha256")
                .join(id.trim_start_matches("sha256:")),
        )
        .unwrap(),
    )
    .unwrap();
    let top = config["rootfs"]["diff_ids"]
        .as_array()
        .unwrap()
        .last()
        .unwrap();
    let top = top.as_str().unwrap();
    assert!(
        err.contains(&format!("/blobs/{top}")),
        "{top} not asked for: {err}"
    );
    check_runs("loadproxy:1", &id);
}

#[test]
fn with_the_proxy_turned_off() {
    if !ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (root, id) = build(dir.path(), "loadtar:1");
    let out = load(&root, &["--no-registry-proxy", "loadtar:1"], None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("as a tar stream"), "{err}");
    check_runs("loadtar:1", &id);
}

#[test]
fn falls_back_when_the_daemon_cannot_reach_the_proxy() {
    if !ready() || !require("ip") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (root, id) = build(dir.path(), "loadnetns:1");
    let ns = format!("berth-test-{}", std::process::id());
    run(Command::new("ip").args(["netns", "add", &ns]));
    struct Netns(String);
    impl Drop for Netns {
        fn drop(&mut self) {
            let _ = Command::new("ip")
                .args(["netns", "delete", &self.0])
                .status();
        }
    }
    let _ns = Netns(ns.clone());
    run(Command::new("ip").args(["netns", "exec", &ns, "ip", "link", "set", "lo", "up"]));
    // berth listens on 127.0.0.1 of its namespace; dockerd dials 127.0.0.1 of its own.
    let out = load(&root, &["loadnetns:1"], Some(&ns));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("could not pull from berth's registry proxy"),
        "{err}"
    );
    assert!(err.contains("as a tar stream"), "{err}");
    check_runs("loadnetns:1", &id);
}

#[test]
fn falls_back_when_the_pull_breaks_midway() {
    if !ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (root, id) = build(dir.path(), "loadbroken:1");
    // The failpoint has the proxy answer 404 for the last layer: the daemon's pull
    // fails after the manifest and config went through.
    let failpoint = ("BERTH_FAILPOINT", "load-proxy-layer-404");
    let out = load_with(&root, &["loadbroken:1"], &[failpoint]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("could not pull from berth's registry proxy"),
        "{err}"
    );
    check_runs("loadbroken:1", &id);
}

#[test]
fn an_unreachable_daemon_is_explained() {
    if !ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (root, _) = build(dir.path(), "loadnodaemon:1");
    let nowhere = format!("unix://{}/no.sock", dir.path().display());
    let out = load_with(&root, &["loadnodaemon:1"], &[("DOCKER_HOST", &nowhere)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("Docker daemon") && err.contains("DOCKER_HOST"),
        "{err}"
    );
}

/// Docker 20.10 cannot read zstd layers: berth inflates them on both paths, and the
/// daemon's diff_id checks prove the bytes.
#[test]
fn zstd_images_load_into_an_old_daemon() {
    if !ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (root, id) = build_with(
        dir.path(),
        "loadzstd:1",
        &["--compression", "zstd", "--force-compression"],
    );
    let out = load(&root, &["loadzstd:1"], None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("through berth's registry proxy"), "{err}");
    check_runs("loadzstd:1", &id);
    let out = load(&root, &["--no-registry-proxy", "loadzstd:1"], None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    check_runs("loadzstd:1", &id);
}

/// `berth build --load` alone keeps the image's own layers uncompressed (no gzip at
/// build, no inflating at load); pushing it later gzips them for the registry, as
/// `docker push` does, and the registry serves what berth says it pushed.
#[test]
fn build_load_keeps_layers_uncompressed_and_push_compresses_them() {
    if !ready() || !require("skopeo") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (root, id) = build_with(dir.path(), "loadplain:1", &["--load"]);
    check_runs("loadplain:1", &id);
    let tag = std::fs::read_to_string(root.join("repositories/loadplain/_tags/1")).unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            root.join("blobs/sha256")
                .join(tag.trim().trim_start_matches("sha256:")),
        )
        .unwrap(),
    )
    .unwrap();
    let types: Vec<&str> = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["mediaType"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "application/vnd.oci.image.layer.v1.tar+gzip",
            "application/vnd.oci.image.layer.v1.tar"
        ],
        "the base layer as it came, the built one uncompressed"
    );

    let reg = Berth::serve(&dir.path().join("registry"), &[]);
    let dest = format!("{}/plain/app:1", reg.addr);
    let out = Command::new(berth_bin())
        .arg("--root")
        .arg(&root)
        .args(["push", "loadplain:1", &dest])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("compressed the uncompressed layers"), "{err}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let digest = stdout.trim().split('@').nth(1).unwrap().to_string();
    assert_ne!(digest, tag.trim(), "the pushed manifest is the gzip'ed one");
    let raw = run(Command::new("skopeo").args([
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{dest}"),
    ]));
    assert_eq!(
        raw.matches("application/vnd.oci.image.layer.v1.tar+gzip")
            .count(),
        2,
        "{raw}"
    );
    assert_eq!(served_digest(&dest), digest);
    // The layers really are the image's: the daemon pulls and runs it.
    let pulled = format!("{}/plain/app@{digest}", reg.addr);
    run(Command::new(docker()).args(["pull", &pulled]));
    let out = run(Command::new(docker()).args(["run", "--rm", "--network=none", &pulled]));
    assert_eq!(out.trim(), "loadplain:1");
    let _ = Command::new(docker()).args(["rmi", "-f", &pulled]).output();
    check_store(&root);
}

/// Forward TCP connections on 127.0.0.1 to the Docker socket; returns the address.
fn tcp_to_docker_socket() -> String {
    let socket = std::env::var("DOCKER_HOST")
        .ok()
        .and_then(|h| h.strip_prefix("unix://").map(str::to_string))
        .unwrap_or_else(|| "/var/run/docker.sock".into());
    loopback_server(move |tcp| {
        let Ok(unix) = std::os::unix::net::UnixStream::connect(&socket) else {
            return;
        };
        let (mut t2, mut u2) = (tcp.try_clone().unwrap(), unix.try_clone().unwrap());
        let (mut t1, mut u1) = (tcp, unix);
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut t1, &mut u1);
            let _ = u1.shutdown(std::net::Shutdown::Write);
        });
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut u2, &mut t2);
            let _ = t2.shutdown(std::net::Shutdown::Write);
        });
    })
}

/// `DOCKER_HOST=tcp://…` is honoured: the daemon is reached over TCP (a loopback one
/// counts as local, so the registry proxy on 127.0.0.1 works), and the tar path too.
#[test]
fn honours_a_tcp_docker_host() {
    if !ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (root, id) = build(dir.path(), "loadtcp:1");
    let tcp = format!("tcp://{}", tcp_to_docker_socket());
    for args in [
        &["loadtcp:1"][..],
        &["--no-registry-proxy", "loadtcp:1"][..],
    ] {
        let out = load_with(&root, args, &[("DOCKER_HOST", &tcp)]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {err}");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), id);
        check_runs("loadtcp:1", &id);
    }
}
