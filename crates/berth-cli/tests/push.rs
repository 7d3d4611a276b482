//! `berth push` and `berth build --push`: to berth's own registry with basic auth
//! (credentials from a Docker config file) and to Debian's docker-registry; the pushed
//! digest is the one the registry serves, blobs already there are skipped, and docker
//! can pull and run the result (the builder-host → deploy-host hand-over).

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::*;

fn ready() -> bool {
    require_build() && require("skopeo")
}

fn berth(root: &Path, docker_config: &Path, args: &[&str]) -> Output {
    Command::new(berth_bin())
        .arg("--root")
        .arg(root)
        .args(args)
        .env("DOCKER_CONFIG", docker_config)
        .output()
        .unwrap()
}

fn context(dir: &Path) -> std::path::PathBuf {
    let layout = dir.join("busybox");
    busybox_layout(&layout, "v1");
    let ctx = dir.join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        format!(
            "FROM oci-layout://{}:v1\nRUN echo shipped > /msg\nCMD [\"cat\", \"/msg\"]\n",
            layout.display()
        ),
    )
    .unwrap();
    ctx
}

#[test]
fn build_push_to_berth_registry_with_auth_then_docker_runs_it() {
    if !ready() || !require("htpasswd") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let reg = serve_with_user(dir.path(), "ci", "pw");
    let ctx = context(dir.path());
    let root = dir.path().join("root");
    let name = format!("{}/team/app:1", reg.addr);

    // Without credentials the push is refused, saying what to do.
    let none = dir.path().join("no-creds");
    std::fs::create_dir_all(&none).unwrap();
    let out = berth(
        &root,
        &none,
        &[
            "build",
            "--progress",
            "plain",
            "-t",
            &name,
            "--push",
            ctx.to_str().unwrap(),
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("authentication failed") && err.contains("log in"),
        "{err}"
    );

    let creds = dir.path().join("docker-config");
    std::fs::create_dir_all(&creds).unwrap();
    std::fs::write(
        creds.join("config.json"),
        format!(
            "{{\"auths\":{{\"{}\":{{\"auth\":\"Y2k6cHc=\"}}}}}}",
            reg.addr
        ),
    )
    .unwrap();
    let out = berth(
        &root,
        &creds,
        &[
            "build",
            "--progress",
            "plain",
            "-t",
            &name,
            "--push",
            ctx.to_str().unwrap(),
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pushed = stdout
        .lines()
        .find(|l| l.contains('@'))
        .unwrap_or_else(|| panic!("no digest printed: {stdout}"))
        .to_string();
    let digest = pushed.split('@').nth(1).unwrap().to_string();
    let served = run(Command::new("skopeo").args([
        "inspect",
        "--tls-verify=false",
        "--creds",
        "ci:pw",
        "--format",
        "{{.Digest}}",
        &format!("docker://{name}"),
    ]));
    assert_eq!(served.trim(), digest);

    // Pushing again sends no blob.
    let out = berth(&root, &creds, &["push", &name]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("pushed sha256"), "{err}");
    assert!(err.contains("exists sha256"), "{err}");

    // The deploy host: docker pulls from berth's registry and runs the image.
    if require_docker() {
        let d = docker();
        let cfg = dir.path().join("docker-client");
        std::fs::create_dir_all(&cfg).unwrap();
        std::fs::copy(creds.join("config.json"), cfg.join("config.json")).unwrap();
        run(Command::new(d)
            .env("DOCKER_CONFIG", &cfg)
            .args(["pull", &format!("{}/team/app@{digest}", reg.addr)]));
        let out = run(Command::new(d).env("DOCKER_CONFIG", &cfg).args([
            "run",
            "--rm",
            &format!("{}/team/app@{digest}", reg.addr),
        ]));
        assert_eq!(out.trim(), "shipped");
        let _ = Command::new(d)
            .args(["rmi", "-f", &format!("{}/team/app@{digest}", reg.addr)])
            .output();
    }
}

#[test]
fn push_to_distribution() {
    if !ready() {
        return;
    }
    let Some(peer) = Distribution::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(dir.path());
    let root = dir.path().join("root");
    let none = dir.path().join("no-creds");
    std::fs::create_dir_all(&none).unwrap();
    let out = berth(
        &root,
        &none,
        &[
            "build",
            "--progress",
            "plain",
            "-t",
            "local/app:2",
            ctx.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dest = format!("{}/moved/app:2", peer.addr);
    let out = berth(&root, &none, &["push", "local/app:2", &dest]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let digest = stdout.trim().split('@').nth(1).unwrap().to_string();
    let served = run(Command::new("skopeo").args([
        "inspect",
        "--tls-verify=false",
        "--format",
        "{{.Digest}}",
        &format!("docker://{dest}"),
    ]));
    assert_eq!(served.trim(), digest);
    let out = dir.path().join("out");
    run(&mut skopeo_copy(
        &format!("docker://{dest}"),
        &format!("oci:{}:2", out.display()),
        &[],
    ));
    assert_eq!(layout_digest(&out), digest);
    // A name that is not in the store is explained.
    let out = berth(&root, &none, &["push", "nothing/here:1", &dest]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not in berth's store"));
}

#[test]
fn login_then_push_then_logout() {
    if !ready() || !require("htpasswd") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let reg = serve_with_user(dir.path(), "deployer", "s3cret");
    let cfg = dir.path().join("docker-config");
    let login = |password: &str| {
        let mut c = Command::new(berth_bin());
        c.args(["login", "-u", "deployer", "--password-stdin", &reg.addr])
            .env("DOCKER_CONFIG", &cfg)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = c.spawn().unwrap();
        std::io::Write::write_all(
            child.stdin.as_mut().unwrap(),
            format!("{password}\n").as_bytes(),
        )
        .unwrap();
        drop(child.stdin.take());
        child.wait_with_output().unwrap()
    };
    let out = login("wrong");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("authentication failed"));
    assert!(
        !cfg.join("config.json").exists(),
        "nothing saved on a failed login"
    );
    let out = login("s3cret");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let saved = std::fs::read_to_string(cfg.join("config.json")).unwrap();
    assert!(saved.contains(&reg.addr), "{saved}");

    let ctx = context(dir.path());
    let root = dir.path().join("root");
    let name = format!("{}/deploy/app:1", reg.addr);
    let out = berth(
        &root,
        &cfg,
        &[
            "build",
            "--progress",
            "plain",
            "-t",
            &name,
            "--push",
            ctx.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = Command::new(berth_bin())
        .args(["logout", &reg.addr])
        .env("DOCKER_CONFIG", &cfg)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(
        !std::fs::read_to_string(cfg.join("config.json"))
            .unwrap()
            .contains(&reg.addr)
    );
    let out = berth(&root, &cfg, &["push", &name]);
    assert!(!out.status.success(), "logged out: the push is refused");
}
