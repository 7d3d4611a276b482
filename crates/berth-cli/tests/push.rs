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

    // To another repository of the same registry, every blob is mounted, none sent.
    let copy = format!("{}/team/copy:1", reg.addr);
    let out = berth(&root, &creds, &["push", &name, &copy]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("pushed sha256"), "{err}");
    assert_eq!(err.matches("from team/app").count(), 3, "{err}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("{}/team/copy@{digest}", reg.addr)
    );

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

/// Build `tag` into a fresh root under `dir`; returns the root and an empty Docker
/// config directory (no credentials).
fn build_anonymous(dir: &Path, tag: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let ctx = context(dir);
    let root = dir.join("root");
    let none = dir.join("no-creds");
    std::fs::create_dir_all(&none).unwrap();
    let out = berth(
        &root,
        &none,
        &[
            "build",
            "--progress",
            "plain",
            "-t",
            tag,
            ctx.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (root, none)
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
    let (root, none) = build_anonymous(dir.path(), "local/app:2");
    let dest = format!("{}/moved/app:2", peer.addr);
    let out = berth(&root, &none, &["push", "local/app:2", &dest]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let digest = stdout.trim().split('@').nth(1).unwrap().to_string();
    assert_eq!(served_digest(&dest), digest);
    let out = dir.path().join("out");
    run(&mut skopeo_copy(
        &format!("docker://{dest}"),
        &format!("oci:{}:2", out.display()),
        &[],
    ));
    assert_eq!(layout_digest(&out), digest);
    // distribution mounts the blobs into another repository: nothing is uploaded again.
    let other = format!("{}/moved/other:2", peer.addr);
    let out = berth(&root, &none, &["push", "local/app:2", &other]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("pushed sha256"), "{err}");
    assert_eq!(err.matches("mounted sha256").count(), 3, "{err}");
    assert_eq!(served_digest(&other), digest);
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

/// A web server that is not a registry: it answers every request with an HTML 404.
fn not_a_registry() -> String {
    loopback_server(|mut conn| {
        let mut buf = [0u8; 4096];
        let _ = std::io::Read::read(&mut conn, &mut buf);
        let body = "<html><body><h1>404 Not Found</h1></body></html>";
        let _ = std::io::Write::write_all(
            &mut conn,
            format!(
                "HTTP/1.1 404 Not Found\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
    })
}

#[test]
fn push_errors_say_what_failed() {
    if !ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (root, none) = build_anonymous(dir.path(), "local/app:3");

    // An address that answers HTTP but not the registry API.
    let web = not_a_registry();
    let out = berth(
        &root,
        &none,
        &["push", "local/app:3", &format!("{web}/app:3")],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&format!("{web} does not speak the registry API"))
            && err.contains("404")
            && err.contains("address and port"),
        "{err}"
    );

    // Nothing listening.
    let closed = format!("127.0.0.1:{}", free_port());
    let out = berth(
        &root,
        &none,
        &["push", "local/app:3", &format!("{closed}/app:3")],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("is the registry running"), "{err}");

    // A TLS registry whose certificate comes from a CA berth was not given: the error
    // names the certificate and the setting that fixes it; with the CA, the push works.
    let certs = dir.path().join("certs");
    let (ca, crt, key) = make_tls(&certs);
    let reg = Berth::serve(
        &dir.path().join("registry"),
        &[
            "--tls-cert",
            crt.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    let wrong = dir.path().join("wrong");
    let (wrong_ca, _, _) = make_tls(&wrong);
    let dest = format!("{}/secure/app:3", reg.addr);
    // A push with `ca` set to this CA file in berth's config.
    let push_with_ca = |ca: &Path| {
        let cfg = dir.path().join("berth.toml");
        std::fs::write(
            &cfg,
            format!("[registries.\"{}\"]\nca = \"{}\"\n", reg.addr, ca.display()),
        )
        .unwrap();
        let args = [
            "--config",
            cfg.to_str().unwrap(),
            "push",
            "local/app:3",
            &dest,
        ];
        berth(&root, &none, &args)
    };
    let out = push_with_ca(&wrong_ca);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("certificate is not trusted") && err.contains("`ca`"),
        "{err}"
    );
    let out = push_with_ca(&ca);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
