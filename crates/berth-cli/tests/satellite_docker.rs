//! A satellite running in dockerd (issue 8): the image `scripts/satellite-image` builds
//! with berth itself from this machine's binaries, run as `docker run --privileged` with a
//! host directory as its data root, serving a remote build to a client on this host
//! through the port published on 127.0.0.1.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// Removes docker objects (`docker rm -f`, `docker rmi -f`) when dropped.
struct DockerGuard {
    args: Vec<String>,
}

impl DockerGuard {
    fn container(name: &str) -> DockerGuard {
        DockerGuard {
            args: vec!["rm".into(), "-f".into(), name.into()],
        }
    }

    fn image(name: &str) -> DockerGuard {
        DockerGuard {
            args: vec!["rmi".into(), "-f".into(), name.into()],
        }
    }
}

impl Drop for DockerGuard {
    fn drop(&mut self) {
        let _ = Command::new(docker()).args(&self.args).output();
    }
}

/// The satellite image, built by `scripts/satellite-image` with the berth under test;
/// its name is removed from dockerd on drop.
struct SatImage {
    name: String,
    _guard: DockerGuard,
}

impl SatImage {
    fn build(dir: &Path) -> SatImage {
        let name = format!("berth-test/satellite:p{}", std::process::id());
        let guard = DockerGuard::image(&name);
        let out = output_ok(
            Command::new(repo_root().join("scripts/satellite-image"))
                .arg(&name)
                .env("BERTH", berth_bin())
                .env("BERTH_ROOT", dir.join("image-root"))
                .env("XDG_CONFIG_HOME", dir.join("image-config"))
                .env("BERTH_LOG", "warn"),
        );
        assert!(
            out.stderr.contains("loaded"),
            "the image went into dockerd: {}",
            out.stderr
        );
        let config = run(Command::new(docker()).args([
            "image",
            "inspect",
            "--format",
            "{{json .Config.Entrypoint}} {{json .Config.Volumes}}",
            &name,
        ]));
        assert_eq!(
            config.trim(),
            r#"["/usr/local/bin/berth","satellite","serve"] {"/var/lib/berth":{}}"#
        );
        SatImage {
            name,
            _guard: guard,
        }
    }
}

/// How to give a container what a satellite needs: `--privileged`, or, where this
/// dockerd cannot start privileged containers, the same granted one by one.
///
/// Docker 20.10 gives a privileged container every capability it knows, and runc fails
/// ("unable to apply caps: operation not permitted") when dockerd's own bounding set
/// lacks one, as in sandboxes that withhold CAP_SYS_RESOURCE. The explicit flags give
/// what a privileged container has that a satellite uses: the capabilities dockerd holds,
/// no seccomp filter of Docker's (runc makes session keyrings), /dev/net/tun (slirp4netns)
/// and writable cgroups (runc). The root file system stays on overlayfs either way.
fn privileges(image: &str) -> Vec<String> {
    let probe = output(Command::new(docker()).args([
        "run",
        "--rm",
        "--privileged",
        "--entrypoint",
        "/usr/local/bin/berth",
        image,
        "--version",
    ]));
    if probe.success {
        return vec!["--privileged".into()];
    }
    assert!(
        probe.stderr.contains("apply caps"),
        "docker run --privileged failed: {}",
        probe.stderr
    );
    let mut flags: Vec<String> = ["--cap-add", "ALL"].map(String::from).to_vec();
    for name in capabilities_not_held() {
        flags.extend(["--cap-drop".into(), name.into()]);
    }
    flags.extend(
        [
            "--security-opt",
            "seccomp=unconfined",
            "--security-opt",
            "apparmor=unconfined",
            "--device",
            "/dev/net/tun",
            "-v",
            "/sys/fs/cgroup:/sys/fs/cgroup",
        ]
        .map(String::from),
    );
    eprintln!(
        "dockerd cannot start privileged containers here ({}); the satellite runs with the \
         explicit equivalent instead: {}",
        probe.stderr.trim(),
        flags.join(" ")
    );
    flags
}

/// Waits for the container's satellite to print where tokens point; returns that line.
fn wait_serving(name: &str) -> String {
    let start = Instant::now();
    loop {
        let logs = output(Command::new(docker()).args(["logs", name]));
        if let Some(line) = logs.stdout.lines().find(|l| l.contains("tokens name")) {
            return line.to_string();
        }
        let running = output(Command::new(docker()).args([
            "inspect",
            "--format",
            "{{.State.Running}}",
            name,
        ]));
        assert!(
            running.stdout.trim() == "true" && start.elapsed() < Duration::from_secs(30),
            "the satellite in container {name} did not start:\n{}{}",
            logs.stdout,
            logs.stderr
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A client on this host: its own config directory (enrolments) and berth root.
fn client(dir: &Path) -> impl Fn() -> Command {
    let (cfg, root): (PathBuf, PathBuf) = (dir.join("client-config"), dir.join("client-root"));
    move || {
        let mut c = Command::new(berth_bin());
        c.env("XDG_CONFIG_HOME", &cfg)
            .env("BERTH_LOG", "warn")
            .env("SOURCE_DATE_EPOCH", "0")
            .arg("--root")
            .arg(&root);
        c
    }
}

#[test]
fn satellite_in_docker_serves_a_remote_build() {
    if !require_build() || !require_docker() || !require("ldd") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let image = SatImage::build(dir.path());
    let privileges = privileges(&image.name);

    // A data root on the container's own overlay root is refused at start, saying what
    // to do (overlayfs keeps no upper directory on overlayfs).
    let refused = output(
        Command::new(docker())
            .args(["run", "--rm"])
            .args(&privileges)
            .arg(&image.name)
            .args(["--root", "/srv/berth"]),
    );
    assert!(!refused.success, "{}", refused.stdout);
    assert!(
        refused
            .stderr
            .contains("cannot hold overlayfs upper directories (it is on overlayfs")
            && refused.stderr.contains("volume or a bind mount"),
        "{}",
        refused.stderr
    );

    // The satellite, its root a host directory, the base image visible at the same path
    // inside (a satellite sees only its container's files). It listens on the port the
    // host publishes: tokens carry the listening port.
    let base = BuildBase::new();
    let port = free_port();
    let sat_root = dir.path().join("sat-root");
    std::fs::create_dir(&sat_root).unwrap();
    let name = format!("berth-test-satellite-p{}", std::process::id());
    let _container = DockerGuard::container(&name);
    let layout = base.layout().display().to_string();
    run(Command::new(docker())
        .args(["run", "-d", "--name", &name])
        .args(&privileges)
        .args(["-p", &format!("127.0.0.1:{port}:{port}")])
        .arg("-v")
        .arg(format!("{}:/var/lib/berth", sat_root.display()))
        .args(["-v", &format!("{layout}:{layout}:ro")])
        .arg(&image.name)
        .args(["--addr", &format!("0.0.0.0:{port}")])
        .args(["--advertise", "127.0.0.1", "--name", "docker-sat"]));
    let first = wait_serving(&name);
    assert!(
        first.contains(&format!("tokens name 127.0.0.1:{port})")),
        "{first}"
    );
    assert!(
        sat_root.join("satellite/pki/ca.key").is_file(),
        "the satellite's identity lives in the mounted root"
    );

    let token =
        run(Command::new(docker()).args(["exec", &name, "berth", "satellite", "token", "create"]));
    let berth = client(dir.path());
    let add = output_ok(berth().args([
        "satellite",
        "add",
        "dsat",
        "--token",
        token.trim(),
        "--client-name",
        "host",
    ]));
    assert!(add.stdout.contains("as host"), "{}", add.stdout);

    let ctx = dir.path().join("ctx");
    std::fs::create_dir(&ctx).unwrap();
    std::fs::write(ctx.join("hello.txt"), "hello from the host\n").unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        format!(
            "FROM {}\nCOPY hello.txt /hello.txt\n\
             RUN cat /hello.txt > /out && echo built in a container >> /out\n",
            base.reference()
        ),
    )
    .unwrap();
    let remote = output_ok(
        berth()
            .args(["build", "--progress", "plain", "--satellite", "dsat"])
            .args(["-t", "app:1"])
            .arg(&ctx),
    );
    assert!(
        remote.stderr.contains("on satellite dsat"),
        "{}",
        remote.stderr
    );

    // The same build here gives the same image, and that image runs in dockerd. (`--load`
    // from a satellite is not there yet.)
    let app = format!("berth-test/satellite-app:p{}", std::process::id());
    let _app = DockerGuard::image(&app);
    let local = output_ok(
        berth_build(&dir.path().join("local-root"))
            .args([
                "--no-satellite",
                "-t",
                &app,
                "--load",
                "--compression",
                "gzip",
            ])
            .arg(&ctx)
            .env("XDG_CONFIG_HOME", dir.path().join("none")),
    );
    assert_eq!(
        remote.manifest(),
        local.manifest(),
        "remote and local differ"
    );
    let out = run(Command::new(docker()).args(["run", "--rm", &app, "cat", "/out"]));
    assert_eq!(out, "hello from the host\nbuilt in a container\n");
}
