//! Shared test support: prerequisites that skip (or fail under BERTH_TEST_STRICT=1),
//! running the built `berth` binary and the peer registry, and locally made images.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub mod git;
pub mod satellite;
pub mod sshd;
pub mod tinyproxy;

/// Skip the test (return false) with a reason that scripts/test counts, or panic under
/// strict mode (CI sets BERTH_TEST_STRICT=1).
#[allow(unused_imports)]
pub use berth_testutil::{skip, strict};

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

/// Make the two-platform OCI layout fixture (scripts/make-platform-layout) in `dir` with
/// `tag`; returns its linux/amd64 and linux/arm64 manifest digests.
pub fn platform_layout(dir: &Path, tag: &str) -> (String, String) {
    let out = run(
        Command::new(repo_root().join("scripts/make-platform-layout"))
            .arg(dir)
            .arg(tag),
    );
    let mut lines = out.lines().map(str::to_string);
    (lines.next().unwrap(), lines.next().unwrap())
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
        Self::serve_to(root, addr, args, Stdio::inherit())
    }

    /// Start serving on a given address, its log going to `stderr`.
    pub fn serve_to(root: &Path, addr: &str, args: &[&str], stderr: Stdio) -> Berth {
        let mut child = Command::new(berth_bin())
            .args(["--root"])
            .arg(root)
            .args(["registry", "serve", "--addr", addr])
            .args(args)
            .env("BERTH_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(stderr)
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

// ---------------------------------------------------------------------------------------
// Build tests: `berth build` on the busybox fixture, file trees, and docker as the peer.

/// Whether `berth build` can run here: root (overlayfs, runc), runc, slirp4netns (the
/// default network of RUN steps), and busybox-static for the base image (else skip or
/// fail).
pub fn require_build() -> bool {
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if !is_root {
        return skip("berth build needs root (overlayfs, runc)");
    }
    require("runc") && require("slirp4netns") && require("busybox")
}

/// The folder of build corpus cases, one sub-folder (context with its Dockerfile) each.
pub fn builds_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/builds")
}

/// A busybox base image for builds: an OCI layout in its own temporary folder.
pub struct BuildBase {
    dir: tempfile::TempDir,
}

impl BuildBase {
    const TAG: &'static str = "base";

    pub fn new() -> BuildBase {
        let dir = tempfile::tempdir().unwrap();
        busybox_layout(&dir.path().join("busybox"), Self::TAG);
        BuildBase { dir }
    }

    /// The layout folder.
    pub fn layout(&self) -> PathBuf {
        self.dir.path().join("busybox")
    }

    /// `oci-layout:///abs/dir:tag`, for `FROM` or `--build-arg BASE=`.
    pub fn reference(&self) -> String {
        format!("oci-layout://{}:{}", self.layout().display(), Self::TAG)
    }

    /// The same image in dockerd as `berth-test/busybox:corpus`, copied there once per
    /// test process (the fixture is deterministic, so any test's copy is the same image).
    pub fn docker_reference(&self) -> &'static str {
        static LOADED: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();
        LOADED.get_or_init(|| {
            let name = "berth-test/busybox:corpus";
            run(&mut skopeo_copy(
                &format!("oci:{}:{}", self.layout().display(), Self::TAG),
                &format!("docker-daemon:{name}"),
                &[],
            ));
            name
        })
    }
}

impl Default for BuildBase {
    fn default() -> Self {
        Self::new()
    }
}

/// `berth --root ROOT build --progress plain`, with SOURCE_DATE_EPOCH=0 so that equal
/// inputs give equal digests.
pub fn berth_build(root: &Path) -> Command {
    let mut c = Command::new(berth_bin());
    c.arg("--root")
        .arg(root)
        .args(["build", "--progress", "plain"])
        .env("SOURCE_DATE_EPOCH", "0")
        .env("BERTH_LOG", "warn");
    c
}

/// What a finished command printed.
pub struct Output {
    pub success: bool,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// The manifest digest from berth build's closing `built image ... (manifest D, ...)`.
    pub fn manifest(&self) -> String {
        self.stderr
            .split("(manifest ")
            .nth(1)
            .and_then(|r| r.split([',', ')']).next())
            .unwrap_or_else(|| panic!("no manifest digest in the output:\n{}", self.stderr))
            .to_string()
    }
}

/// Run a command and collect its exit and output, whatever they are.
pub fn output(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    Output {
        success: out.status.success(),
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Run a command that must succeed; its output.
pub fn output_ok(cmd: &mut Command) -> Output {
    let out = output(cmd);
    assert!(
        out.success,
        "{cmd:?} failed ({:?}):\nstdout:\n{}\nstderr:\n{}",
        out.code, out.stdout, out.stderr
    );
    out
}

/// One path of a file tree, as the comparisons see it: everything but timestamps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeEntry {
    /// `dir`, `file`, `symlink`, `char`, `block`, `fifo` or `socket`.
    pub kind: &'static str,
    /// Permission bits with setuid, setgid and sticky (st_mode & 0o7777), in octal.
    pub mode: String,
    pub uid: u32,
    pub gid: u32,
    /// Regular files only (a directory's size depends on the file system).
    pub size: u64,
    pub symlink_target: Option<String>,
    pub sha256: Option<String>,
    /// The other paths of the tree that are hard links to the same regular file.
    pub hardlinks: Vec<String>,
    /// The `security.capability` xattr in hex: the one xattr image layers carry (Docker
    /// and containerd write no other).
    pub capability: Option<String>,
}

/// A file tree by absolute path (`/etc/passwd`); the root folder itself is left out.
pub type Tree = std::collections::BTreeMap<String, TreeEntry>;

/// Walk `root` (not following symlinks) into a `Tree`.
pub fn file_tree(root: &Path) -> Tree {
    use std::collections::BTreeMap;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};

    fn walk(
        root: &Path,
        dir: &Path,
        tree: &mut Tree,
        inodes: &mut BTreeMap<(u64, u64), Vec<String>>,
        files: &mut Vec<(String, PathBuf)>,
    ) {
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        for path in names {
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let key = format!("/{}", path.strip_prefix(root).unwrap().display());
            let ft = meta.file_type();
            let kind = if ft.is_dir() {
                "dir"
            } else if ft.is_symlink() {
                "symlink"
            } else if ft.is_file() {
                "file"
            } else if ft.is_char_device() {
                "char"
            } else if ft.is_block_device() {
                "block"
            } else if ft.is_fifo() {
                "fifo"
            } else {
                "socket"
            };
            if ft.is_file() {
                files.push((key.clone(), path.clone()));
                if meta.nlink() > 1 {
                    inodes
                        .entry((meta.dev(), meta.ino()))
                        .or_default()
                        .push(key.clone());
                }
            }
            tree.insert(
                key,
                TreeEntry {
                    kind,
                    mode: format!("{:o}", meta.mode() & 0o7777),
                    uid: meta.uid(),
                    gid: meta.gid(),
                    size: if ft.is_file() { meta.size() } else { 0 },
                    symlink_target: ft
                        .is_symlink()
                        .then(|| std::fs::read_link(&path).unwrap().display().to_string()),
                    sha256: None,
                    hardlinks: Vec::new(),
                    capability: capability(&path),
                },
            );
            if ft.is_dir() {
                walk(root, &path, tree, inodes, files);
            }
        }
    }

    let mut tree = Tree::new();
    let mut inodes = BTreeMap::new();
    let mut files = Vec::new();
    walk(root, root, &mut tree, &mut inodes, &mut files);
    for group in inodes.values() {
        for path in group {
            tree.get_mut(path).unwrap().hardlinks =
                group.iter().filter(|p| *p != path).cloned().collect();
        }
    }
    for chunk in files.chunks(200) {
        let sums = run(Command::new("sha256sum")
            .arg("--")
            .args(chunk.iter().map(|(_, p)| p)));
        for ((key, _), line) in chunk.iter().zip(sums.lines()) {
            let sum = line.split_whitespace().next().unwrap().to_string();
            tree.get_mut(key).unwrap().sha256 = Some(sum);
        }
    }
    tree
}

/// `path`'s `security.capability` xattr in hex, if it has one.
fn capability(path: &Path) -> Option<String> {
    let mut buf = [0u8; 64];
    let n = rustix::fs::lgetxattr(path, "security.capability", &mut buf).ok()?;
    Some(buf[..n].iter().map(|b| format!("{b:02x}")).collect())
}

/// The file tree of a container made from `image`: `docker create`, `docker export`,
/// unpacked under `work` (which must not exist yet) as root, keeping owners and modes.
pub fn docker_image_tree(image: &str, work: &Path) -> Tree {
    let id = run(Command::new(docker()).args(["create", image]))
        .trim()
        .to_string();
    std::fs::create_dir_all(work).unwrap();
    let tar = work.join("export.tar");
    let exported = output(
        Command::new(docker())
            .args(["export", "-o"])
            .arg(&tar)
            .arg(&id),
    );
    run(Command::new(docker()).args(["rm", &id]));
    assert!(exported.success, "docker export: {}", exported.stderr);
    let rootfs = work.join("rootfs");
    std::fs::create_dir(&rootfs).unwrap();
    run(Command::new("tar")
        .args(["-x", "-p", "--numeric-owner", "--xattrs"])
        .args(["--xattrs-include=security.capability", "-f"])
        .arg(&tar)
        .arg("-C")
        .arg(&rootfs));
    file_tree(&rootfs)
}

/// The differences between two trees, one line each (empty when equal).
pub fn tree_diff(a_name: &str, a: &Tree, b_name: &str, b: &Tree) -> Vec<String> {
    let mut out = Vec::new();
    for (path, ea) in a {
        match b.get(path) {
            None => out.push(format!("{path}: only in {a_name}: {ea:?}")),
            Some(eb) if ea != eb => out.push(format!(
                "{path}:\n    {a_name}: {ea:?}\n    {b_name}: {eb:?}"
            )),
            Some(_) => {}
        }
    }
    for (path, eb) in b {
        if !a.contains_key(path) {
            out.push(format!("{path}: only in {b_name}: {eb:?}"));
        }
    }
    out
}

/// Removes docker images by name when dropped.
#[derive(Default)]
pub struct DockerImages(pub Vec<String>);

impl Drop for DockerImages {
    fn drop(&mut self) {
        if !self.0.is_empty() {
            let _ = Command::new(docker())
                .args(["rmi", "-f"])
                .args(&self.0)
                .output();
        }
    }
}

/// A build context `dir/name` with `body` as its Dockerfile.
pub fn context(dir: &Path, name: &str, body: &str) -> PathBuf {
    let ctx = dir.join(name);
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(ctx.join("Dockerfile"), body).unwrap();
    ctx
}

/// A busybox root file system as a plain tar, for `docker import`.
pub fn busybox_rootfs_tar(dir: &Path) -> PathBuf {
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    std::fs::create_dir_all(rootfs.join("tmp")).unwrap();
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    for applet in ["sh", "echo", "cat", "ls", "true", "sleep", "stat"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
    }
    let tar = dir.join("rootfs.tar");
    run(Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .arg("-cf")
        .arg(&tar)
        .arg("."));
    tar
}

/// Images Docker made itself, whose configs hold the `null`s Docker writes (issue 13):
/// `NAME:imported` by `docker import` of busybox, `NAME:committed` by `docker commit` of
/// a container of it (command `true`), `NAME:classic` by the classic builder
/// (`DOCKER_BUILDKIT=0`) with a RUN writing `/classic`. Removed from dockerd on drop.
pub struct DockerMadeImages {
    pub imported: String,
    pub committed: String,
    pub classic: String,
    _cleanup: DockerImages,
}

impl DockerMadeImages {
    /// Make them in dockerd, using `dir` for scratch files.
    pub fn new(dir: &Path, name: &str) -> DockerMadeImages {
        let d = docker();
        let mut cleanup = DockerImages(Vec::new());
        let imported = format!("{name}:imported");
        run(Command::new(d)
            .arg("import")
            .arg(busybox_rootfs_tar(dir))
            .arg(&imported));
        cleanup.0.push(imported.clone());
        let committed = format!("{name}:committed");
        let container = format!("{name}-c");
        run(Command::new(d).args(["create", "--name", &container, &imported, "true"]));
        let commit = output(Command::new(d).args(["commit", &container, &committed]));
        run(Command::new(d).args(["rm", &container]));
        assert!(commit.success, "{}", commit.stderr);
        cleanup.0.push(committed.clone());
        let classic = format!("{name}:classic");
        let ctx = dir.join("classic");
        std::fs::create_dir_all(&ctx).unwrap();
        std::fs::write(
            ctx.join("Dockerfile"),
            format!("FROM {imported}\nRUN echo classic > /classic\n"),
        )
        .unwrap();
        run(Command::new(d)
            .env("DOCKER_BUILDKIT", "0")
            .args(["build", "--network=none", "-q", "-t", &classic])
            .arg(&ctx));
        cleanup.0.push(classic.clone());
        let raw = run(Command::new(d).args([
            "image",
            "inspect",
            "--format",
            "{{json .Config}}",
            &imported,
        ]));
        assert!(raw.contains("\"Env\":null"), "the case under test: {raw}");
        DockerMadeImages {
            imported,
            committed,
            classic,
            _cleanup: cleanup,
        }
    }

    /// (variant, image) for each.
    pub fn all(&self) -> [(&'static str, &str); 3] {
        [
            ("imported", &self.imported),
            ("committed", &self.committed),
            ("classic", &self.classic),
        ]
    }
}

/// `berth registry serve` over `dir/registry` with basic auth for one user (bcrypt
/// htpasswd made with Debian's htpasswd).
pub fn serve_with_user(dir: &Path, user: &str, password: &str) -> Berth {
    let htpasswd = dir.join("htpasswd");
    run(Command::new("htpasswd")
        .args(["-Bbc"])
        .arg(&htpasswd)
        .args([user, password]));
    Berth::serve(
        &dir.join("registry"),
        &["--htpasswd", htpasswd.to_str().unwrap()],
    )
}

/// berth's registry over TLS (a CA of its own, made in `dir`) with basic auth for one
/// user: the server, and the CA's PEM file.
pub fn serve_tls_with_user(dir: &Path, user: &str, password: &str) -> (Berth, PathBuf) {
    let (ca, crt, key) = make_tls(dir);
    let htpasswd = dir.join("htpasswd");
    run(Command::new("htpasswd")
        .args(["-Bbc"])
        .arg(&htpasswd)
        .args([user, password]));
    let berth = Berth::serve(
        &dir.join("upstream"),
        &[
            "--htpasswd",
            htpasswd.to_str().unwrap(),
            "--tls-cert",
            crt.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    (berth, ca)
}

/// A CA, and a server certificate for 127.0.0.1 signed by it, as PEM files in `dir`.
pub fn make_tls(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "berth test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let params =
        CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    // The CA goes alone in `ca/`: skopeo's --cert-dir takes every *.key there as a client key.
    std::fs::create_dir_all(dir.join("ca")).unwrap();
    let (ca, crt, k) = (
        dir.join("ca/ca.crt"),
        dir.join("server.crt"),
        dir.join("server.key"),
    );
    std::fs::write(&ca, ca_cert.pem()).unwrap();
    std::fs::write(&crt, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (ca, crt, k)
}

/// The manifest digest a registry serves for `reference` (host/repo:tag), asked with
/// skopeo over plain HTTP.
pub fn served_digest(reference: &str) -> String {
    run(Command::new("skopeo").args([
        "inspect",
        "--tls-verify=false",
        "--format",
        "{{.Digest}}",
        &format!("docker://{reference}"),
    ]))
    .trim()
    .to_string()
}

/// A server on 127.0.0.1 (any free port) handing each connection to `handle` on its
/// own thread's loop; returns its address.
pub fn loopback_server(handle: impl Fn(std::net::TcpStream) + Send + 'static) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            handle(conn);
        }
    });
    addr
}

/// How many mounts lie below `root` (as this process sees them).
pub fn mounts_under(root: &Path) -> usize {
    let root = root.canonicalize().unwrap_or(root.to_path_buf());
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| {
            l.split(' ')
                .nth(4)
                .is_some_and(|m| m.starts_with(root.to_str().unwrap()))
        })
        .count()
}

/// A scratch directory with the busybox base image.
pub struct Project {
    pub dir: tempfile::TempDir,
    pub base: BuildBase,
}

impl Project {
    pub fn new() -> Project {
        Project {
            dir: tempfile::tempdir().unwrap(),
            base: BuildBase::new(),
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// A context `name` whose Dockerfile is `FROM <busybox>` and `body`.
    pub fn context(&self, name: &str, body: &str) -> PathBuf {
        context(
            self.dir.path(),
            name,
            &format!("FROM {}\n{body}", self.base.reference()),
        )
    }
}

impl Default for Project {
    fn default() -> Self {
        Self::new()
    }
}

/// An `ssh-agent` of this test's own, holding one new key, listening in `dir`.
pub struct Agent {
    child: std::process::Child,
    pub socket: PathBuf,
}

impl Agent {
    pub fn start(dir: &std::path::Path) -> Agent {
        let socket = dir.join("agent.sock");
        let child = Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&socket)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let agent = Agent { child, socket };
        while !agent.socket.exists() {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let key = dir.join("key");
        run(Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&key));
        run(Command::new("ssh-add")
            .arg("-q")
            .arg(&key)
            .env("SSH_AUTH_SOCK", &agent.socket));
        agent
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `dir/context`: `tests/builds/run_ssh` (its Dockerfile) with its `agent-ask` helper
/// built static by gcc (busybox has no unix-socket client to ask an agent with).
pub fn run_ssh_context(dir: &Path) -> PathBuf {
    let context = dir.join("context");
    std::fs::create_dir(&context).unwrap();
    for f in ["Dockerfile", "agent-ask.c"] {
        std::fs::copy(builds_dir().join("run_ssh").join(f), context.join(f)).unwrap();
    }
    run(Command::new("gcc")
        .args(["-static", "-Os", "-o"])
        .arg(context.join("agent-ask"))
        .arg(context.join("agent-ask.c")));
    context
}

/// Docker's names of the capabilities, by number.
pub const CAPABILITIES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// Docker's names of the capabilities this process's bounding set lacks (dockerd's too,
/// started from here): a privileged container asks for them and runc fails ("unable to
/// apply caps") where a sandbox withholds one, as CAP_SYS_RESOURCE here.
pub fn capabilities_not_held() -> Vec<&'static str> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let bounding = status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .map(|hex| u64::from_str_radix(hex.trim(), 16).unwrap())
        .unwrap();
    CAPABILITIES
        .iter()
        .enumerate()
        .filter(|(bit, _)| bounding & (1 << bit) == 0)
        .map(|(_, name)| *name)
        .collect()
}
