//! The pull-through cache of `berth registry serve` (issue 10, item 1): an upstream berth
//! registry with a private CA and basic auth, reached through tinyproxy (whose log proves
//! the cache's requests crossed it), served under a prefix, under `?ns=` and at the root
//! for a second dockerd configured with `registry-mirrors`; one upstream fetch for
//! concurrent clients of a blob still being fetched (the upstream held back by a relay
//! in the test); an upstream dying mid-blob; 429 and a dead upstream answered with the
//! stale tag; TTL revalidation; pushes refused and accepted; eviction under a cap.
//! Everything on 127.0.0.1.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use berth_oci::Digest;
use common::tinyproxy::Proxy;
use common::*;

/// An OCI layout holding one image with a single uncompressed layer of `size`
/// pseudo-random bytes (a file `/data-<seed>`), valid for skopeo and dockerd alike.
/// Returns the layer's digest.
fn random_image(dir: &Path, tag: &str, seed: u64, size: usize) -> Digest {
    let mut data = vec![0u8; size];
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
    let mut tar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_size(size as u64);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_cksum();
    tar.append_data(&mut h, format!("data-{seed}"), &data[..])
        .unwrap();
    let layer = tar.into_inner().unwrap();
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| {
        let d = Digest::sha256(bytes);
        std::fs::write(blobs.join(d.hex()), bytes).unwrap();
        (d, bytes.len())
    };
    let (ld, lsize) = put(&layer);
    let config = format!(
        "{{\"architecture\":\"amd64\",\"os\":\"linux\",\"config\":{{}},\"rootfs\":{{\"type\":\"layers\",\"diff_ids\":[\"{ld}\"]}}}}"
    );
    let (cd, csize) = put(config.as_bytes());
    let manifest = format!(
        "{{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\
         \"config\":{{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\"{cd}\",\"size\":{csize}}},\
         \"layers\":[{{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar\",\"digest\":\"{ld}\",\"size\":{lsize}}}]}}"
    );
    let (md, msize) = put(manifest.as_bytes());
    std::fs::write(dir.join("oci-layout"), "{\"imageLayoutVersion\":\"1.0.0\"}").unwrap();
    std::fs::write(
        dir.join("index.json"),
        format!(
            "{{\"schemaVersion\":2,\"manifests\":[{{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\
             \"digest\":\"{md}\",\"size\":{msize},\"annotations\":{{\"org.opencontainers.image.ref.name\":\"{tag}\"}}}}]}}"
        ),
    )
    .unwrap();
    ld
}

/// Push an OCI layout's `tag` to a plain-HTTP registry as `repo:tag`.
fn push_layout(layout: &Path, tag: &str, registry: &str, repo: &str) {
    run(&mut skopeo_copy(
        &format!("oci:{}:{tag}", layout.display()),
        &format!("docker://{registry}/{repo}:{tag}"),
        // Uncompressed layers stay as they are (skopeo would gzip them).
        &["--preserve-digests"],
    ));
}

/// What a relay does with connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Forward both ways.
    Pass,
    /// Forward, but hold every connection's answer once it has carried `hold_after`
    /// bytes, until the mode changes.
    Hold,
    /// Answer every new request 429 with Docker Hub's `ratelimit-remaining: 0`.
    TooMany,
    /// Close every new connection at once.
    Down,
}

struct RelayState {
    upstream: String,
    mode: Mutex<Mode>,
    changed: Condvar,
    hold_after: u64,
    /// A connection is being held.
    holding: AtomicBool,
    conns: Mutex<Vec<TcpStream>>,
}

/// A TCP relay on 127.0.0.1 in front of an upstream registry: what a slow, dying or
/// rate-limiting upstream looks like to the cache. (TLS passes through it untouched.)
struct Relay {
    addr: String,
    state: Arc<RelayState>,
}

impl Relay {
    fn start(upstream: &str, hold_after: u64) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let state = Arc::new(RelayState {
            upstream: upstream.to_string(),
            mode: Mutex::new(Mode::Pass),
            changed: Condvar::new(),
            hold_after,
            holding: AtomicBool::new(false),
            conns: Mutex::new(Vec::new()),
        });
        let s = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let s = s.clone();
                std::thread::spawn(move || relay_connection(&s, conn));
            }
        });
        Relay { addr, state }
    }

    fn set(&self, mode: Mode) {
        *self.state.mode.lock().unwrap() = mode;
        self.state.changed.notify_all();
    }

    /// Cut every open connection (both ways).
    fn cut(&self) {
        for c in self.state.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
        self.state.holding.store(false, Ordering::SeqCst);
        self.state.changed.notify_all();
    }

    /// Wait until a connection is held mid-answer.
    fn wait_holding(&self) {
        let start = Instant::now();
        while !self.state.holding.load(Ordering::SeqCst) {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "the relay never held an answer"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn relay_connection(s: &Arc<RelayState>, mut client: TcpStream) {
    let mode = *s.mode.lock().unwrap();
    match mode {
        Mode::Down => return,
        Mode::TooMany => {
            let mut head = Vec::new();
            let mut b = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && client.read(&mut b).is_ok_and(|n| n == 1) {
                head.push(b[0]);
            }
            let _ = client.write_all(
                b"HTTP/1.1 429 Too Many Requests\r\nratelimit-limit: 100;w=21600\r\n\
                  ratelimit-remaining: 0;w=21600\r\ncontent-type: application/json\r\n\
                  content-length: 62\r\nconnection: close\r\n\r\n\
                  {\"errors\":[{\"code\":\"TOOMANYREQUESTS\",\"message\":\"slow down\"}]}",
            );
            return;
        }
        Mode::Pass | Mode::Hold => {}
    }
    let Ok(upstream) = TcpStream::connect(&s.upstream) else {
        return;
    };
    {
        let mut conns = s.conns.lock().unwrap();
        conns.push(client.try_clone().unwrap());
        conns.push(upstream.try_clone().unwrap());
    }
    let (mut up_r, mut client_w) = (upstream.try_clone().unwrap(), client.try_clone().unwrap());
    let mut up_w = upstream;
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut client, &mut up_w);
        let _ = up_w.shutdown(Shutdown::Write);
    });
    let mut buf = vec![0u8; 16 << 10];
    let mut total = 0u64;
    loop {
        let n = match up_r.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        total += n as u64;
        if total > s.hold_after {
            let mut mode = s.mode.lock().unwrap();
            while *mode == Mode::Hold {
                s.holding.store(true, Ordering::SeqCst);
                let (m, _) = s
                    .changed
                    .wait_timeout(mode, Duration::from_millis(100))
                    .unwrap();
                mode = m;
                if !s.holding.load(Ordering::SeqCst) {
                    // Cut while held.
                    return;
                }
            }
        }
        if client_w.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = client_w.shutdown(Shutdown::Write);
}

/// A `berth registry serve` with mirrors from a config file, its log in a file.
struct Cache {
    berth: Berth,
    log: PathBuf,
    config: PathBuf,
}

impl Cache {
    fn start(dir: &Path, config: &str, env: &[(&str, &str)]) -> Cache {
        let path = dir.join("cache.toml");
        std::fs::write(&path, config).unwrap();
        let log = dir.join("cache.log");
        let root = dir.join("cache");
        let mut child = Command::new(berth_bin());
        child
            .arg("--root")
            .arg(&root)
            .arg("--config")
            .arg(&path)
            .args(["registry", "serve", "--addr", "127.0.0.1:0"])
            .env("BERTH_LOG", "info")
            .env_remove("NO_PROXY")
            .env_remove("no_proxy")
            .env_remove("HTTPS_PROXY")
            .env_remove("https_proxy")
            .env_remove("HTTP_PROXY")
            .env_remove("http_proxy")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap());
        for (k, v) in env {
            child.env(k, v);
        }
        let mut child = child.spawn().expect("spawn berth");
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let addr = line
            .split("://")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .unwrap_or_else(|| {
                panic!(
                    "cache did not start: {line:?}\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            })
            .to_string();
        Cache {
            berth: Berth { child, addr, root },
            log,
            config: path,
        }
    }

    fn addr(&self) -> &str {
        &self.berth.addr
    }

    /// A counter of /metrics for the mirror with `prefix`.
    fn metric(&self, name: &str, prefix: &str) -> u64 {
        let text =
            run(Command::new("curl").args(["-sf", &format!("http://{}/metrics", self.addr())]));
        text.lines()
            .find(|l| {
                l.starts_with(&format!("berth_mirror_{name}{{"))
                    && l.contains(&format!("mirror=\"{prefix}\""))
            })
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} for {prefix} in:\n{text}"))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// `curl` a path of the cache: (HTTP status, headers and body as text).
fn curl(addr: &str, path: &str, extra: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "-i", "-H"])
        .arg("Accept: application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json")
        .args(extra)
        .arg(format!("http://{addr}{path}"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

fn header<'a>(response: &'a str, name: &str) -> Option<&'a str> {
    response.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// The upstream: a berth registry with TLS from a private CA and one user.
struct Upstream {
    berth: Berth,
    ca: PathBuf,
    ca_dir: PathBuf,
}

impl Upstream {
    fn start(dir: &Path) -> Upstream {
        let (berth, ca) = serve_tls_with_user(dir, "puller", "s3cret");
        Upstream {
            berth,
            ca_dir: ca.parent().unwrap().to_path_buf(),
            ca,
        }
    }

    fn push(&self, layout: &Path, tag: &str, repo: &str) {
        run(Command::new("skopeo")
            .args([
                "copy",
                "--quiet",
                "--dest-creds",
                "puller:s3cret",
                "--dest-cert-dir",
            ])
            .arg(&self.ca_dir)
            .arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!("docker://{}/{repo}:{tag}", self.berth.addr)));
    }
}

/// Pull `reference` from the (plain-HTTP) cache into a fresh OCI layout under `dir`.
fn pull(dir: &Path, reference: &str) -> Result<PathBuf, String> {
    let dest = dir.join(format!(
        "pulled-{}",
        reference.replace(['/', ':', '?', '='], "_")
    ));
    let _ = std::fs::remove_dir_all(&dest);
    let out = skopeo_copy(
        &format!("docker://{reference}"),
        &format!("oci:{}:x", dest.display()),
        &["--dest-oci-accept-uncompressed-layers"],
    )
    .output()
    .unwrap();
    if out.status.success() {
        Ok(dest)
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn ingests(root: &Path) -> Vec<String> {
    std::fs::read_dir(root.join("ingest"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn mirror_serves_prefix_ns_and_root_through_the_proxy_and_refuses_pushes() {
    if !require("skopeo") || !require("tinyproxy") || !require("htpasswd") || !require("curl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::start(dir.path());
    let layout = dir.path().join("busybox");
    let digest = busybox_layout(&layout, "v1");
    up.push(&layout, "v1", "library/busybox");
    let proxy = Proxy::start(dir.path());
    let cache = Cache::start(
        dir.path(),
        &format!(
            "[network]\nhttps_proxy = \"http://{}\"\n\
             [[registry.mirror]]\nprefix = \"hub\"\nupstream = \"https://{}\"\ndefault = true\n\
             username = \"puller\"\npassword_env = \"UPSTREAM_PASSWORD\"\nca = \"{}\"\n",
            proxy.addr,
            up.berth.addr,
            up.ca.display()
        ),
        &[("UPSTREAM_PASSWORD", "s3cret")],
    );
    let m = cache.addr().to_string();

    // Under the prefix: the image comes whole, through the proxy.
    let pulled = pull(dir.path(), &format!("{m}/hub/library/busybox:v1")).unwrap();
    assert!(
        pulled
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
            .exists(),
        "the pulled image is not the upstream's"
    );
    assert!(
        proxy.requests_to(&up.berth.addr) > 0,
        "no request of the cache crossed the proxy"
    );
    let fetches = cache.metric("upstream_blob_fetches_total", "hub");
    assert_eq!(fetches, 2, "config and layer, each fetched once");

    // containerd's ?ns= and dockerd's root both reach the same cache: no new fetch.
    let (status, resp) = curl(
        &m,
        &format!("/v2/library/busybox/manifests/v1?ns={}", up.berth.addr),
        &[],
    );
    assert_eq!(status, 200, "{resp}");
    assert_eq!(
        header(&resp, "docker-content-digest"),
        Some(digest.as_str())
    );
    let (status, resp) = curl(&m, "/v2/library/busybox/manifests/v1", &[]);
    assert_eq!(status, 200, "{resp}");
    assert_eq!(
        header(&resp, "docker-content-digest"),
        Some(digest.as_str())
    );
    pull(dir.path(), &format!("{m}/library/busybox:v1")).unwrap();
    assert_eq!(cache.metric("upstream_blob_fetches_total", "hub"), fetches);
    assert!(cache.metric("hits_total", "hub") >= 4);

    // Pushes into the mirrored namespace are refused with a reason; local ones work,
    // and a local repository wins over the default mirror at the root.
    let refused = run_fails(&mut skopeo_copy(
        &format!("oci:{}:v1", layout.display()),
        &format!("docker://{m}/hub/mine/busybox:v1"),
        &[],
    ));
    assert!(refused.contains("read-only cache"), "{refused}");
    push_layout(&layout, "v1", &m, "team/busybox");
    assert_eq!(served_digest(&format!("{m}/team/busybox:v1")), digest);
    // An uncached name fails with the upstream's answer.
    let (status, resp) = curl(&m, "/v2/hub/library/nothing/manifests/v1", &[]);
    assert_eq!(status, 404, "{resp}");
    assert!(
        resp.contains(&format!("upstream https://{}", up.berth.addr)),
        "{resp}"
    );
}

/// A dockerd of its own (data root, exec root, socket, and a bridge of its own: with
/// `--bridge=none` dockerd deletes the machine's docker0, which the machine's dockerd
/// uses) on this machine's network, with `registry-mirrors` pointing at the cache;
/// stopped on drop, its bridge removed.
struct Dockerd {
    child: Child,
    socket: PathBuf,
    bridge: String,
}

impl Dockerd {
    fn start(dir: &Path, mirror: &str) -> Dockerd {
        let socket = dir.join("docker.sock");
        let config = dir.join("daemon.json");
        std::fs::write(
            &config,
            format!("{{\"registry-mirrors\": [\"http://{mirror}\"]}}"),
        )
        .unwrap();
        let n = std::process::id() % 250;
        let bridge = format!("bmirror{n}");
        let _ = Command::new("ip")
            .args(["link", "delete", &bridge])
            .output();
        run(Command::new("ip").args(["link", "add", &bridge, "type", "bridge"]));
        run(Command::new("ip").args(["addr", "add", &format!("10.213.{n}.1/24"), "dev", &bridge]));
        let child = Command::new("dockerd")
            .arg("--config-file")
            .arg(&config)
            .arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("docker.pid"))
            .arg("-H")
            .arg(format!("unix://{}", socket.display()))
            .args(["--bridge", &bridge])
            .args(["--iptables=false", "--ip-masq=false", "--ip-forward=false"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("dockerd.log")).unwrap())
            .spawn()
            .expect("start dockerd");
        let d = Dockerd {
            child,
            socket,
            bridge,
        };
        let start = Instant::now();
        while !d.docker(&["version"]).status.success() {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "the test's dockerd did not come up: {}",
                std::fs::read_to_string(dir.join("dockerd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        d
    }

    fn docker(&self, args: &[&str]) -> std::process::Output {
        Command::new(docker())
            .arg("-H")
            .arg(format!("unix://{}", self.socket.display()))
            .args(args)
            .output()
            .unwrap()
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if self.child.try_wait().ok().flatten().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = Command::new("ip")
            .args(["link", "delete", &self.bridge])
            .output();
    }
}

#[test]
fn dockerd_with_registry_mirrors_pulls_library_images_through_the_cache() {
    if !require("skopeo") || !require("htpasswd") || !require("dockerd") || !require_docker() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::start(dir.path());
    let layout = dir.path().join("busybox");
    busybox_layout(&layout, "latest");
    up.push(&layout, "latest", "library/busybox");
    // No user in the mirror's entry: the cache takes the upstream's credentials from
    // Docker's config file ("puller:s3cret").
    let docker_config = dir.path().join("docker-config");
    std::fs::create_dir_all(&docker_config).unwrap();
    std::fs::write(
        docker_config.join("config.json"),
        format!(
            "{{\"auths\":{{\"{}\":{{\"auth\":\"cHVsbGVyOnMzY3JldA==\"}}}}}}",
            up.berth.addr
        ),
    )
    .unwrap();
    let cache = Cache::start(
        dir.path(),
        &format!(
            "[[registry.mirror]]\nprefix = \"hub\"\nupstream = \"https://{}\"\ndefault = true\n\
             ca = \"{}\"\n",
            up.berth.addr,
            up.ca.display()
        ),
        &[("DOCKER_CONFIG", docker_config.to_str().unwrap())],
    );
    let daemon_dir = dir.path().join("dockerd");
    std::fs::create_dir_all(&daemon_dir).unwrap();
    let dockerd = Dockerd::start(&daemon_dir, cache.addr());
    // busybox is docker.io/library/busybox: with no internet, only the mirror can serve it.
    let out = dockerd.docker(&["pull", "busybox:latest"]);
    assert!(
        out.status.success(),
        "docker pull through the mirror failed: {}\ncache log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        cache.log()
    );
    let out = dockerd.docker(&["image", "inspect", "--format", "{{.Os}}", "busybox:latest"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "linux");
    assert!(
        cache.log().contains("/v2/library/busybox/manifests/latest"),
        "dockerd did not ask the cache at the root"
    );
    assert_eq!(cache.metric("upstream_blob_fetches_total", "hub"), 2);
}

#[test]
fn concurrent_clients_share_one_fetch_and_a_dying_upstream_leaves_nothing() {
    if !require("skopeo") || !require("curl") || !require_docker() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let up = Berth::serve(&dir.path().join("upstream"), &[]);
    let layout = dir.path().join("big");
    let layer = random_image(&layout, "1", 7, 24 << 20);
    push_layout(&layout, "1", &up.addr, "big");
    // Answers are held once a connection has carried 1 MiB: mid-layer.
    let relay = Relay::start(&up.addr, 1 << 20);
    let cache = Cache::start(
        dir.path(),
        &format!(
            "[[registry.mirror]]\nprefix = \"up\"\nupstream = \"http://{}\"\n",
            relay.addr
        ),
        &[],
    );
    let m = cache.addr().to_string();
    let image = format!("{m}/up/big:1");
    let _cleanup = DockerImages(vec![image.clone()]);

    // The upstream dies mid-blob: the client gets an error, the store keeps nothing.
    relay.set(Mode::Hold);
    let mut get = Command::new("curl")
        .args(["-sf", "-o"])
        .arg(dir.path().join("cut"))
        .arg(format!("http://{m}/v2/up/big/blobs/{layer}"))
        .spawn()
        .unwrap();
    relay.wait_holding();
    relay.cut();
    let status = get.wait().unwrap();
    assert!(
        !status.success(),
        "the client of a cut fetch got a whole blob"
    );
    let blob = cache.berth.root.join("blobs/sha256").join(layer.hex());
    let start = Instant::now();
    while !ingests(&cache.berth.root).is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the cut fetch's ingest stayed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!blob.exists(), "a partial blob was committed");
    assert!(cache.metric("upstream_errors_total", "up") >= 1);
    let fetches_before = cache.metric("upstream_blob_fetches_total", "up");

    // skopeo and docker pull the image while its layer is held mid-way: one fetch.
    relay.set(Mode::Hold);
    let misses = cache.metric("misses_total", "up");
    let sk = skopeo_copy(
        &format!("docker://{image}"),
        &format!("oci:{}:1", dir.path().join("sk").display()),
        &["--dest-oci-accept-uncompressed-layers"],
    )
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    relay.wait_holding();
    // skopeo asked for the manifest, the config and the layer: all misses.
    let dk = Command::new(docker())
        .args(["pull", &image])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // docker's request for the layer joins the held fetch (a miss; its manifest and
    // config come from the cache).
    let start = Instant::now();
    while cache.metric("misses_total", "up") < misses + 4 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "docker never asked for the layer"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!blob.exists(), "the layer was complete before docker asked");
    relay.set(Mode::Pass);
    let sk = sk.wait_with_output().unwrap();
    assert!(
        sk.status.success(),
        "skopeo: {}",
        String::from_utf8_lossy(&sk.stderr)
    );
    let dk = dk.wait_with_output().unwrap();
    assert!(
        dk.status.success(),
        "docker: {}",
        String::from_utf8_lossy(&dk.stderr)
    );
    assert!(
        dir.path()
            .join("sk/blobs/sha256")
            .join(layer.hex())
            .exists()
    );
    // Config and layer, one fetch each, for both clients.
    assert_eq!(
        cache.metric("upstream_blob_fetches_total", "up"),
        fetches_before + 2
    );
    assert!(blob.exists());
    check_store(&cache.berth.root);
}

#[test]
fn tags_revalidate_after_the_ttl_and_are_served_stale_when_the_upstream_fails() {
    if !require("skopeo") || !require("curl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let up = Berth::serve(&dir.path().join("upstream"), &[]);
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    random_image(&a, "t", 1, 4096);
    random_image(&b, "t", 2, 4096);
    push_layout(&a, "t", &up.addr, "app");
    let relay = Relay::start(&up.addr, u64::MAX);
    let cache = Cache::start(
        dir.path(),
        &format!(
            "[[registry.mirror]]\nprefix = \"up\"\nupstream = \"http://{}\"\ntag_ttl = \"1s\"\n",
            relay.addr
        ),
        &[],
    );
    let m = cache.addr().to_string();
    let digest_of = |path: &str| {
        let (status, resp) = curl(&m, path, &[]);
        assert_eq!(status, 200, "{resp}");
        header(&resp, "docker-content-digest").unwrap().to_string()
    };
    let first = digest_of("/v2/up/app/manifests/t");
    assert_eq!(first, layout_digest(&a));
    // Within the TTL: from the cache, no question upstream.
    digest_of("/v2/up/app/manifests/t");
    assert_eq!(cache.metric("revalidations_total", "up"), 0);
    let ttl = Duration::from_millis(1100);
    std::thread::sleep(ttl);
    assert_eq!(digest_of("/v2/up/app/manifests/t"), first);
    assert_eq!(cache.metric("revalidations_total", "up"), 1);
    assert_eq!(cache.metric("upstream_manifest_fetches_total", "up"), 1);

    // The tag moves upstream: the next check after the TTL brings the new manifest.
    push_layout(&b, "t", &up.addr, "app");
    std::thread::sleep(ttl);
    let second = digest_of("/v2/up/app/manifests/t");
    assert_eq!(second, layout_digest(&b));
    assert_eq!(cache.metric("revalidations_total", "up"), 2);

    // Upstream down: the cached tag is served, the log says so.
    relay.set(Mode::Down);
    relay.cut();
    std::thread::sleep(ttl);
    assert_eq!(digest_of("/v2/up/app/manifests/t"), second);
    assert_eq!(cache.metric("stale_served_total", "up"), 1);

    // 429: stale again, and what is not cached fails naming the upstream and its answer.
    relay.set(Mode::TooMany);
    std::thread::sleep(ttl);
    assert_eq!(digest_of("/v2/up/app/manifests/t"), second);
    assert_eq!(cache.metric("stale_served_total", "up"), 2);
    assert_eq!(cache.metric("rate_limit_remaining", "up"), 0);
    assert!(
        cache.log().contains("serving the cached tag stale"),
        "{}",
        cache.log()
    );
    let (status, resp) = curl(&m, "/v2/up/other/manifests/t", &[]);
    assert_eq!(status, 429, "{resp}");
    assert!(
        resp.contains(&format!("upstream http://{}", relay.addr)) && resp.contains("429"),
        "{resp}"
    );
    // A manifest by digest is never asked again, whatever the upstream does.
    let revalidations = cache.metric("revalidations_total", "up");
    digest_of(&format!("/v2/up/app/manifests/{second}"));
    assert_eq!(cache.metric("revalidations_total", "up"), revalidations);
}

#[test]
fn eviction_under_a_small_cap_keeps_the_most_recently_pulled() {
    if !require("skopeo") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut up = Berth::serve(&dir.path().join("upstream"), &[]);
    let mut layers = Vec::new();
    for (i, name) in ["a", "b", "c"].iter().enumerate() {
        let layout = dir.path().join(name);
        layers.push(random_image(&layout, "1", 10 + i as u64, 1 << 20));
        push_layout(&layout, "1", &up.addr, name);
    }
    // Room for two of the three images.
    let cache = Cache::start(
        dir.path(),
        &format!(
            "[registry]\nmirror_max_size = \"2500KB\"\n\
             [[registry.mirror]]\nprefix = \"up\"\nupstream = \"http://{}\"\n",
            up.addr
        ),
        &[],
    );
    let m = cache.addr().to_string();
    // Pulled a, b, c, then a again: b is the least recently pulled. (Stamps move at
    // most every 0.5 s, so the pulls are spaced.)
    for name in ["a", "b", "c", "a"] {
        pull(dir.path(), &format!("{m}/up/{name}:1")).unwrap();
        std::thread::sleep(Duration::from_millis(600));
    }
    // gc leaves blobs used in the last 2 s alone.
    std::thread::sleep(Duration::from_secs(2));
    let out = run(Command::new(berth_bin())
        .arg("--root")
        .arg(&cache.berth.root)
        .arg("--config")
        .arg(&cache.config)
        .args(["registry", "gc"]));
    // (The server may have evicted on its own already, when a fetch took it over the cap.)
    assert!(out.contains("pull-through cache:"), "{out}");
    let blob = |i: usize| cache.berth.root.join("blobs/sha256").join(layers[i].hex());
    assert!(!blob(1).exists(), "b was pulled least recently:\n{out}");
    assert!(blob(0).exists() && blob(2).exists(), "{out}");

    // b again, from the upstream: over the cap, the server evicts on its own, and c is
    // now the least recently pulled.
    std::thread::sleep(Duration::from_secs(2));
    pull(dir.path(), &format!("{m}/up/b:1")).unwrap();
    let start = Instant::now();
    while blob(2).exists() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the server did not evict c:\n{}",
            cache.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(blob(0).exists() && blob(1).exists());
    assert!(cache.log().contains("least recently pulled blobs evicted"));
    let metrics = run(Command::new("curl").args(["-sf", &format!("http://{m}/metrics")]));
    assert!(
        metrics
            .lines()
            .any(|l| l == "berth_mirror_cache_max_bytes 2500000"),
        "the cap (2500KB) is not a gauge:\n{metrics}"
    );

    // With the upstream gone, a and b still pull; c does not.
    up.kill9();
    pull(dir.path(), &format!("{m}/up/a:1")).unwrap();
    pull(dir.path(), &format!("{m}/up/b:1")).unwrap();
    pull(dir.path(), &format!("{m}/up/c:1")).unwrap_err();
    let (status, resp) = curl(&m, "/v2/up/c/manifests/1", &[]);
    assert_eq!(status, 502, "{resp}");
    assert!(
        resp.contains(&format!("upstream http://{}", up.addr)),
        "{resp}"
    );
    check_store(&cache.berth.root);
}

#[test]
fn berth_builds_use_the_cache_as_their_registry_mirror_and_say_so() {
    if !require_build() || !require("skopeo") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut up = Berth::serve(&dir.path().join("upstream"), &[]);
    let layout = dir.path().join("busybox");
    let digest = busybox_layout(&layout, "v1");
    push_layout(&layout, "v1", &up.addr, "base/busybox");
    let cache = Cache::start(
        dir.path(),
        &format!(
            "[[registry.mirror]]\nprefix = \"up\"\nupstream = \"http://{}\"\ndefault = true\n",
            up.addr
        ),
        &[],
    );
    // berth's own pulls: [registries."UPSTREAM"] mirrors = ["CACHE"]; the image's path is
    // kept, so the cache answers at its root, from its default mirror.
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[registries.\"{}\"]\nmirrors = [\"{}\"]\n",
            up.addr,
            cache.addr()
        ),
    )
    .unwrap();
    let ctx = context(
        dir.path(),
        "ctx",
        &format!("FROM {}/base/busybox:v1\nRUN echo built > /out\n", up.addr),
    );
    let build = |root: &str| {
        output_ok(
            berth_build(&dir.path().join(root))
                .env("BERTH_LOG", "info")
                .arg("--config")
                .arg(&config)
                .arg(&ctx),
        )
    };
    let out = build("first");
    assert!(
        out.stderr.contains("pulled from mirror") && out.stderr.contains(cache.addr()),
        "{}",
        out.stderr
    );
    assert_eq!(cache.metric("upstream_blob_fetches_total", "up"), 2);
    assert!(
        cache.log().contains("/v2/base/busybox/manifests/"),
        "{}",
        cache.log()
    );
    // The upstream gone, a fresh root still gets the base image, from the cache alone;
    // `berth pull` too, and it says so.
    up.kill9();
    let out = build("second");
    assert!(out.stderr.contains("pulled from mirror"), "{}", out.stderr);
    let pulled = output_ok(
        Command::new(berth_bin())
            .arg("--root")
            .arg(dir.path().join("third"))
            .arg("--config")
            .arg(&config)
            .args(["pull", &format!("{}/base/busybox:v1", up.addr)])
            .env("BERTH_LOG", "info"),
    );
    assert!(
        pulled.stderr.contains("pulled from mirror") && pulled.stderr.contains(cache.addr()),
        "{}",
        pulled.stderr
    );
    assert!(
        cache
            .berth
            .root
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
            .exists()
    );
}
