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

/// An image served by [`serve_image`]: its blobs and manifest by digest, the manifest
/// also as `app:v1`, and one blob whose body can be held half-sent.
struct Served {
    blobs: std::collections::HashMap<String, Vec<u8>>,
    manifest: Vec<u8>,
    manifest_digest: String,
    /// This blob is sent half, then held until `released` (the connection then closes).
    stall: Option<String>,
    released: std::sync::atomic::AtomicBool,
}

fn sha256(data: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("data");
    std::fs::write(&f, data).unwrap();
    let out = run(Command::new("sha256sum").arg(&f));
    format!("sha256:{}", out.split_whitespace().next().unwrap())
}

/// The busybox fixture with a second layer on top: `/big/data`, `len` bytes that do not
/// compress. Returns what to serve (no stall) and the data's sha256 (bare hex).
fn two_layer_image(dir: &Path, len: usize) -> (Served, String) {
    let layout = dir.join("layout");
    busybox_layout(&layout, "v1");
    let read = |d: &str| {
        std::fs::read(
            layout
                .join("blobs/sha256")
                .join(d.trim_start_matches("sha256:")),
        )
        .unwrap()
    };
    let json = |b: &[u8]| serde_json::from_slice::<serde_json::Value>(b).unwrap();
    let mut manifest = json(&read(&layout_digest(&layout)));
    let mut config = json(&read(manifest["config"]["digest"].as_str().unwrap()));
    let mut blobs = std::collections::HashMap::new();
    let base_layer = manifest["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    blobs.insert(base_layer.clone(), read(&base_layer));

    // The data: xorshift, so gzip cannot shrink it.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut data = Vec::with_capacity(len);
    while data.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    data.truncate(len);
    let data_sum = sha256(&data);
    let mut t = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(0o755);
    h.set_size(0);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    t.append_data(&mut h, "big/", std::io::empty()).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o644);
    h.set_size(data.len() as u64);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    t.append_data(&mut h, "big/data", &data[..]).unwrap();
    let tar = t.into_inner().unwrap();
    let tar_path = dir.join("top.tar");
    std::fs::write(&tar_path, &tar).unwrap();
    run(Command::new("gzip").args(["-n", "-1", "-f"]).arg(&tar_path));
    let gz = std::fs::read(dir.join("top.tar.gz")).unwrap();
    let (diff_id, layer) = (sha256(&tar), sha256(&gz));

    config["rootfs"]["diff_ids"]
        .as_array_mut()
        .unwrap()
        .push(diff_id.clone().into());
    let config = serde_json::to_vec(&config).unwrap();
    let config_digest = sha256(&config);
    manifest["config"]["digest"] = config_digest.clone().into();
    manifest["config"]["size"] = config.len().into();
    manifest["layers"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": layer,
            "size": gz.len(),
        }));
    blobs.insert(config_digest, config);
    blobs.insert(layer, gz);
    let manifest = serde_json::to_vec(&manifest).unwrap();
    let served = Served {
        blobs,
        manifest_digest: sha256(&manifest),
        manifest,
        stall: None,
        released: Default::default(),
    };
    (served, data_sum.trim_start_matches("sha256:").to_string())
}

/// A registry on 127.0.0.1 serving `served` as `app` over plain HTTP (TLS attempts are
/// closed); returns its address.
fn serve_image(served: std::sync::Arc<Served>) -> String {
    use std::io::{BufRead, Write};
    use std::sync::atomic::Ordering;
    loopback_server(move |conn| {
        let s = served.clone();
        std::thread::spawn(move || {
            let mut first = [0u8; 1];
            if conn.peek(&mut first).is_err() || !first[0].is_ascii_uppercase() {
                return;
            }
            let mut r = std::io::BufReader::new(conn.try_clone().unwrap());
            let mut w = conn;
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 {
                    return;
                }
                loop {
                    let mut h = String::new();
                    if r.read_line(&mut h).unwrap_or(0) == 0 {
                        return;
                    }
                    if h == "\r\n" {
                        break;
                    }
                }
                let mut parts = line.split_whitespace();
                let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                let (status, ctype, body, digest) = if path == "/v2/" {
                    ("200 OK", "application/json", &b"{}"[..], String::new())
                } else if let Some(m) = path.strip_prefix("/v2/app/manifests/")
                    && (m == "v1" || m == s.manifest_digest)
                {
                    let ct = "application/vnd.oci.image.manifest.v1+json";
                    ("200 OK", ct, &s.manifest[..], s.manifest_digest.clone())
                } else if let Some(d) = path.strip_prefix("/v2/app/blobs/")
                    && let Some(b) = s.blobs.get(d)
                {
                    ("200 OK", "application/octet-stream", &b[..], d.to_string())
                } else {
                    (
                        "404 Not Found",
                        "application/json",
                        &b"{\"errors\":[]}"[..],
                        String::new(),
                    )
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nContent-Type: {ctype}\r\nDocker-Content-Digest: {digest}\r\n\r\n",
                    body.len()
                );
                if w.write_all(head.as_bytes()).is_err() {
                    return;
                }
                if method == "HEAD" {
                    continue;
                }
                if s.stall.as_deref() == Some(&digest) && !s.released.load(Ordering::SeqCst) {
                    let _ = w.write_all(&body[..body.len() / 2]);
                    let _ = w.flush();
                    while !s.released.load(Ordering::SeqCst) {
                        std::thread::sleep(std::time::Duration::from_millis(50));
                    }
                    return;
                }
                if w.write_all(body).is_err() {
                    return;
                }
            }
        });
    })
}

/// The layer directories (chain IDs, bare hex) unpacked under a root.
fn unpacked(root: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(root.join("snapshots/layers"))
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().join("fs").is_dir())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn chain_ids(served: &Served) -> Vec<String> {
    let m: serde_json::Value = serde_json::from_slice(&served.manifest).unwrap();
    chains_of_config(&served.blobs[m["config"]["digest"].as_str().unwrap()])
}

/// The chain IDs (bare hex) of the layers of the image config `config`, lowest first.
fn chains_of_config(config: &[u8]) -> Vec<String> {
    let c: serde_json::Value = serde_json::from_slice(config).unwrap();
    let mut out = Vec::new();
    let mut parent: Option<String> = None;
    for d in c["rootfs"]["diff_ids"].as_array().unwrap() {
        let d = d.as_str().unwrap().to_string();
        let chain = match &parent {
            None => d,
            Some(p) => sha256(format!("{p} {d}").as_bytes()),
        };
        parent = Some(chain.clone());
        out.push(chain);
    }
    out.iter()
        .map(|c| c.trim_start_matches("sha256:").to_string())
        .collect()
}

fn pull(root: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(berth_bin());
    c.arg("--root").arg(root).arg("pull").args(args);
    c
}

/// `berth pull` leaves the image ready to build on, as `docker pull` does: every layer
/// is unpacked into its snapshot, and the build after it unpacks nothing; `--no-unpack`
/// only fetches.
#[test]
fn pull_unpacks_the_layers_a_build_uses() {
    if !ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (served, data_sum) = two_layer_image(dir.path(), 4 << 20);
    let chains = chain_ids(&served);
    let addr = serve_image(std::sync::Arc::new(served));
    let image = format!("{addr}/app:v1");

    let root = dir.path().join("root");
    let out = output_ok(&mut pull(&root, &[&image]));
    assert!(out.stderr.contains("Unpacked: "), "{}", out.stderr);
    assert_eq!(unpacked(&root), {
        let mut c = chains.clone();
        c.sort();
        c
    });
    let top = root.join("snapshots/layers").join(&chains[1]);
    use std::os::unix::fs::MetadataExt;
    let inode = std::fs::metadata(&top).unwrap().ino();
    let ctx = sum_context(dir.path(), &image);
    build_reads_the_data(&root, &ctx, &data_sum);
    assert_eq!(
        std::fs::metadata(&top).unwrap().ino(),
        inode,
        "the build kept the pulled snapshot"
    );

    // Blobs only: nothing unpacked; the build unpacks the chain itself.
    let root2 = dir.path().join("root2");
    run(&mut pull(&root2, &["--no-unpack", &image]));
    assert!(unpacked(&root2).is_empty(), "{:?}", unpacked(&root2));
    build_reads_the_data(&root2, &ctx, &data_sum);
    let have = unpacked(&root2);
    assert!(chains.iter().all(|c| have.contains(c)), "{have:?}");
    check_store(&root);
    check_store(&root2);
}

/// A context whose Dockerfile builds on `image` and hashes its `/big/data`.
fn sum_context(dir: &Path, image: &str) -> std::path::PathBuf {
    let ctx = context(dir, image);
    std::fs::write(
        ctx.join("Dockerfile"),
        format!("FROM {image}\nRUN busybox sha256sum /big/data\n"),
    )
    .unwrap();
    ctx
}

/// Builds `ctx` in `root`, which must succeed and print `data_sum` (the RUN read the
/// whole base).
fn build_reads_the_data(root: &Path, ctx: &Path, data_sum: &str) {
    let out = build(root, ctx, &[], None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains(data_sum), "{err}");
}

/// A pull killed while its top layer downloads leaves the layers below it unpacked whole
/// and the top one nowhere a build would take it; the build after it pulls what is
/// missing, unpacks the top layer and runs on the whole file system.
#[test]
fn a_pull_killed_mid_layer_leaves_whole_snapshots_only() {
    if !ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (mut served, data_sum) = two_layer_image(dir.path(), 16 << 20);
    let chains = chain_ids(&served);
    let m: serde_json::Value = serde_json::from_slice(&served.manifest).unwrap();
    served.stall = Some(m["layers"][1]["digest"].as_str().unwrap().to_string());
    let served = std::sync::Arc::new(served);
    let addr = serve_image(served.clone());
    let image = format!("{addr}/app:v1");
    let root = dir.path().join("root");

    let mut child = pull(&root, &[&image])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait (no time limit asserted) until the base layer is installed and the top one
    // is half unpacked in a staging directory.
    let staging = root.join("snapshots/tmp");
    let half_unpacked = || {
        std::fs::read_dir(&staging)
            .map(|d| d.flatten().any(|e| e.path().join("fs/big").is_dir()))
            .unwrap_or(false)
    };
    let start = std::time::Instant::now();
    while !(unpacked(&root).contains(&chains[0]) && half_unpacked()) {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the pull ended before the stalled layer arrived"
        );
        assert!(
            start.elapsed() < std::time::Duration::from_secs(120),
            "the pull did not get to the stalled layer"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    served
        .released
        .store(true, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(
        unpacked(&root),
        vec![chains[0].clone()],
        "only whole chains"
    );
    assert!(half_unpacked(), "the staging directory is the dead pull's");

    let ctx = sum_context(dir.path(), &image);
    build_reads_the_data(&root, &ctx, &data_sum);
    // The base's chains, and the RUN step's layer above them.
    let have = unpacked(&root);
    assert!(chains.iter().all(|c| have.contains(c)), "{have:?}");
    assert!(
        !half_unpacked(),
        "the dead pull's staging directory was removed"
    );
    check_store(&root);
}

/// The inode of each unpacked layer directory of `chains` under `root`: the same after a
/// build means the build unpacked none of them again.
fn inodes(root: &Path, chains: &[String]) -> Vec<u64> {
    use std::os::unix::fs::MetadataExt;
    chains
        .iter()
        .map(|c| {
            std::fs::metadata(root.join("snapshots/layers").join(c))
                .unwrap()
                .ino()
        })
        .collect()
}

/// `berth pull` of a multi-platform index unpacks the layers of the manifest a build
/// here takes (this host's) and no other platform's; `--platform` pulls and unpacks the
/// other one instead; a build on either, for its platform, unpacks nothing again.
#[test]
fn pull_of_an_index_unpacks_the_platform_it_takes() {
    if !ready() {
        return;
    }
    if std::env::consts::ARCH != "x86_64" {
        berth_testutil::skip("the two-platform fixture's host child is linux/amd64");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("multi");
    let children = platform_layout(&layout, "t");
    let blob = |d: &str| {
        std::fs::read(
            layout
                .join("blobs/sha256")
                .join(d.trim_start_matches("sha256:")),
        )
        .unwrap()
    };
    let chains_of = |manifest: &str| {
        let m: serde_json::Value = serde_json::from_slice(&blob(manifest)).unwrap();
        let mut c = chains_of_config(&blob(m["config"]["digest"].as_str().unwrap()));
        c.sort();
        c
    };
    let (amd64, arm64) = (chains_of(&children.0), chains_of(&children.1));
    assert!(amd64.iter().all(|c| !arm64.contains(c)));
    let reg = Berth::serve(&dir.path().join("registry"), &[]);
    let base = format!("{}/multi/base:t", reg.addr);
    run(&mut skopeo_copy(
        &format!("oci:{}:t", layout.display()),
        &format!("docker://{base}"),
        &["--all"],
    ));

    // Every platform's blobs are pulled; the host's layers alone are unpacked.
    let root = dir.path().join("root");
    let out = output_ok(&mut pull(&root, &[&base]));
    assert!(out.stderr.contains("Unpacked: "), "{}", out.stderr);
    assert_eq!(unpacked(&root), amd64);
    let before = inodes(&root, &amd64);
    let ctx = context(dir.path(), &base);
    let out = build(&root, &ctx, &[], None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && err.contains("the-base-runs"),
        "{err}"
    );
    assert_eq!(
        inodes(&root, &amd64),
        before,
        "the build unpacked the base again"
    );
    assert!(
        unpacked(&root).iter().all(|c| !arm64.contains(c)),
        "{:?}",
        unpacked(&root)
    );

    // The other platform: its layers, and none of the host's.
    let root2 = dir.path().join("root2");
    let out = output_ok(&mut pull(&root2, &["--platform", "linux/arm64", &base]));
    assert!(out.stderr.contains("Unpacked: "), "{}", out.stderr);
    assert_eq!(unpacked(&root2), arm64);
    let before = inodes(&root2, &arm64);
    let ctx2 = common::context(
        dir.path(),
        "ctx-arm64",
        &format!("FROM {base}\nCOPY note /note\n"),
    );
    std::fs::write(ctx2.join("note"), "n\n").unwrap();
    output_ok(
        berth_build(&root2)
            .args(["--platform", "linux/arm64"])
            .arg(&ctx2),
    );
    assert_eq!(
        inodes(&root2, &arm64),
        before,
        "the build unpacked the base again"
    );
    assert!(
        unpacked(&root2).iter().all(|c| !amd64.contains(c)),
        "{:?}",
        unpacked(&root2)
    );
    check_store(&root);
    check_store(&root2);
}
