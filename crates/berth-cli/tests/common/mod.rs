//! Shared test support: prerequisites that skip (or fail under BERTH_TEST_STRICT=1),
//! running the built `berth` binary and the peer registry, and locally made images.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Whether missing prerequisites must fail the test (CI sets BERTH_TEST_STRICT=1).
pub fn strict() -> bool {
    std::env::var("BERTH_TEST_STRICT").is_ok_and(|v| v == "1")
}

/// Skip the test (return false) with a reason, or panic under strict mode.
pub fn skip(why: &str) -> bool {
    if strict() {
        panic!("prerequisite missing under BERTH_TEST_STRICT=1: {why}");
    }
    eprintln!("SKIP: {why}");
    false
}

/// Whether `tool` is on PATH (else skip or fail).
pub fn require(tool: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    found
        || skip(&format!(
            "{tool} is not installed (scripts/install-test-deps installs it)"
        ))
}

/// The Docker CLI to use: Debian's docker.io client if present.
pub fn docker() -> &'static str {
    if Path::new("/usr/bin/docker").exists() {
        "/usr/bin/docker"
    } else {
        "docker"
    }
}

/// Whether a Docker daemon answers (else skip or fail).
pub fn require_docker() -> bool {
    let ok = Command::new(docker())
        .args(["version", "--format", "{{.Server.Version}}"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok || skip("no Docker daemon answers (scripts/test starts Debian's dockerd)")
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Run a command, panicking with its output when it fails; returns stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Run a command expected to fail; returns its stderr.
pub fn run_fails(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    assert!(!out.status.success(), "{cmd:?} should have failed");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Make the busybox OCI layout fixture in `dir` with `tag`; returns the manifest digest.
pub fn busybox_layout(dir: &Path, tag: &str) -> String {
    let out = run(
        Command::new(repo_root().join("scripts/make-busybox-layout"))
            .arg(dir)
            .arg(tag),
    );
    out.trim().to_string()
}

/// A `berth registry serve` process on 127.0.0.1 with a free port, killed on drop.
pub struct Berth {
    pub child: Child,
    pub addr: String,
    pub root: PathBuf,
}

/// The berth binary under test.
pub fn berth_bin() -> &'static str {
    env!("CARGO_BIN_EXE_berth")
}

impl Berth {
    /// Start serving `root` with extra `args`; waits until it listens.
    pub fn serve(root: &Path, args: &[&str]) -> Berth {
        Self::serve_at(root, "127.0.0.1:0", args)
    }

    /// Start serving on a given address.
    pub fn serve_at(root: &Path, addr: &str, args: &[&str]) -> Berth {
        let mut child = Command::new(berth_bin())
            .args(["--root"])
            .arg(root)
            .args(["registry", "serve", "--addr", addr])
            .args(args)
            .env("BERTH_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn berth");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .expect("read berth's first line");
        let addr = line
            .split("://")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .unwrap_or_else(|| panic!("berth did not say where it listens: {line:?}"))
            .to_string();
        Berth {
            child,
            addr,
            root: root.to_path_buf(),
        }
    }

    /// `kill -9`.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Send SIGTERM.
    pub fn sigterm(&self) {
        run(Command::new("kill").args(["-TERM", &self.child.id().to_string()]));
    }

    /// Wait for exit, at most `limit`; returns the exit status.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Berth {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Debian's docker-registry (distribution 2.8) on a free port, killed on drop.
pub struct Distribution {
    pub child: Child,
    pub addr: String,
    _dir: tempfile::TempDir,
}

impl Distribution {
    pub fn start() -> Option<Distribution> {
        if !require("docker-registry") {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn docker-registry");
        wait_listening(&addr);
        Some(Distribution {
            child,
            addr,
            _dir: dir,
        })
    }
}

impl Drop for Distribution {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Wait until something accepts connections on `addr`.
pub fn wait_listening(addr: &str) {
    let start = Instant::now();
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "nothing listens on {addr}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `skopeo copy` with TLS verification off (plain HTTP on loopback) plus extra args.
pub fn skopeo_copy(src: &str, dst: &str, extra: &[&str]) -> Command {
    let mut c = Command::new("skopeo");
    c.args([
        "copy",
        "--quiet",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
    ])
    .args(extra)
    .args([src, dst]);
    c
}

/// The manifest digest of the single image in an OCI layout's index.json.
pub fn layout_digest(dir: &Path) -> String {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string()
}

/// `berth registry check` on a root: panics if the store is inconsistent.
pub fn check_store(root: &Path) -> String {
    run(Command::new(berth_bin())
        .arg("--root")
        .arg(root)
        .args(["registry", "check"]))
}
