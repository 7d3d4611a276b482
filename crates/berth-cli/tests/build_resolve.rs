//! Base images resolved from berth's store (issue 16, item 1): a no-op rebuild sends no
//! request to the registry, as `docker build` takes a tag from its image store; `--pull`
//! and a resolve TTL ask again; the scheme a loopback registry speaks is remembered; a
//! satellite behaves the same. The registry sits behind a relay on 127.0.0.1 that counts
//! what reaches it.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::satellite::{Client, Sat};
use common::*;

/// What reached the registry through the relay.
#[derive(Default)]
struct Counts {
    connections: AtomicUsize,
    /// Connections that opened with a TLS handshake (an HTTPS attempt).
    tls: AtomicUsize,
    /// HTTP request lines sent.
    requests: AtomicUsize,
}

/// A TCP relay on 127.0.0.1 in front of `upstream` that counts connections, TLS
/// attempts and HTTP requests.
struct Counting {
    addr: String,
    counts: Arc<Counts>,
}

impl Counting {
    fn start(upstream: &str) -> Counting {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let counts = Arc::new(Counts::default());
        let (c, upstream) = (counts.clone(), upstream.to_string());
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (c, upstream) = (c.clone(), upstream.clone());
                std::thread::spawn(move || relay(conn, &upstream, &c));
            }
        });
        Counting { addr, counts }
    }

    /// (connections, TLS attempts, requests) so far, and zero them.
    fn take(&self) -> (usize, usize, usize) {
        (
            self.counts.connections.swap(0, Ordering::SeqCst),
            self.counts.tls.swap(0, Ordering::SeqCst),
            self.counts.requests.swap(0, Ordering::SeqCst),
        )
    }
}

fn relay(mut client: TcpStream, upstream: &str, c: &Counts) {
    c.connections.fetch_add(1, Ordering::SeqCst);
    let Ok(up) = TcpStream::connect(upstream) else {
        return;
    };
    let (mut up_r, mut client_w) = (up.try_clone().unwrap(), client.try_clone().unwrap());
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut up_r, &mut client_w);
        let _ = client_w.shutdown(Shutdown::Write);
    });
    let mut up_w = up;
    let (mut buf, mut first, mut tail) = (vec![0u8; 16 << 10], true, Vec::new());
    loop {
        let n = match client.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if first && buf[0] == 0x16 {
            c.tls.fetch_add(1, Ordering::SeqCst);
        }
        first = false;
        // Request lines end in ` HTTP/1.1\r\n`; keep a tail so one split across reads counts.
        tail.extend_from_slice(&buf[..n]);
        let needle = b" HTTP/1.1\r\n";
        let found = tail.windows(needle.len()).filter(|w| w == needle).count();
        c.requests.fetch_add(found, Ordering::SeqCst);
        let keep = tail.len().min(needle.len() - 1);
        tail.drain(..tail.len() - keep);
        if up_w.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = up_w.shutdown(Shutdown::Write);
}

/// A busybox base pushed to a fresh berth registry, and the relay in front of it.
fn registry(dir: &Path) -> (Berth, Counting) {
    let reg = Berth::serve(&dir.join("registry"), &[]);
    let layout = dir.join("layout");
    busybox_layout(&layout, "v1");
    run(&mut skopeo_copy(
        &format!("oci:{}:v1", layout.display()),
        &format!("docker://{}/base/busybox:v1", reg.addr),
        &[],
    ));
    let relay = Counting::start(&reg.addr);
    (reg, relay)
}

fn ctx(dir: &Path, from: &str) -> std::path::PathBuf {
    context(
        dir,
        "ctx",
        &format!("FROM {from}\nRUN echo the-base-runs > /marker\n"),
    )
}

#[test]
fn no_op_rebuild_sends_no_request_unless_pull_or_ttl() {
    if !require_build() || !require("skopeo") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (reg, relay) = registry(dir.path());
    let from = format!("{}/base/busybox:v1", relay.addr);
    let ctx = ctx(dir.path(), &from);
    let root = dir.path().join("root");

    // Cold: resolved against the registry, HTTPS tried first (a loopback registry with
    // no settings), then HTTP.
    let cold = output_ok(berth_build(&root).arg(&ctx));
    let (conns, tls, requests) = relay.take();
    assert!(conns > 0 && requests > 0, "the cold build asked nothing?");
    assert!(tls > 0, "no HTTPS attempt on a cold loopback registry");
    assert!(cold.stderr.contains("load metadata for"), "{}", cold.stderr);
    let remembered = root.join("resolved/_schemes").join(&relay.addr);
    assert_eq!(std::fs::read_to_string(&remembered).unwrap(), "http");

    // No-op: nothing reaches the registry, and the progress says where the tag came from.
    let noop = output_ok(berth_build(&root).arg(&ctx));
    assert_eq!(relay.take(), (0, 0, 0), "{}", noop.stderr);
    assert!(
        noop.stderr.contains(&format!(
            "load metadata for {from}: berth's store, resolved"
        )),
        "{}",
        noop.stderr
    );
    assert_eq!(noop.manifest(), cold.manifest());
    // The base is an image of the store now, as `docker build` leaves it in dockerd.
    let images = output_ok(
        Command::new(berth_bin())
            .arg("--root")
            .arg(&root)
            .arg("images"),
    );
    assert!(
        images
            .stdout
            .contains(&format!("{}/base/busybox", relay.addr)),
        "{}",
        images.stdout
    );

    // --pull asks, over the remembered scheme alone.
    let pulled = output_ok(berth_build(&root).arg("--pull").arg(&ctx));
    let (_, tls, requests) = relay.take();
    assert!(requests >= 1, "--pull sent no request: {}", pulled.stderr);
    assert_eq!(tls, 0, "the remembered scheme was not used");

    // A resolve TTL asks once the stored answer is older: make it an hour old.
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "[build]\nresolve_ttl = \"10m\"\n").unwrap();
    let record = root
        .join("resolved")
        .join(format!("{}/base/busybox", relay.addr.replace(':', "-")))
        .join("v1");
    let text = std::fs::read_to_string(&record).unwrap();
    let (digest, secs) = text.trim().split_once(' ').unwrap();
    let old = secs.parse::<u64>().unwrap() - 3600;
    std::fs::write(&record, format!("{digest} {old}\n")).unwrap();
    let with_ttl = || {
        let mut c = Command::new(berth_bin());
        c.arg("--root")
            .arg(&root)
            .arg("--config")
            .arg(&config)
            .args(["build", "--progress", "plain"])
            .env("SOURCE_DATE_EPOCH", "0")
            .env("BERTH_LOG", "warn")
            .arg(&ctx);
        output_ok(&mut c)
    };
    let stale = with_ttl();
    assert!(
        relay.take().2 >= 1,
        "an hour-old answer was not re-resolved with a 10m TTL: {}",
        stale.stderr
    );
    let fresh = with_ttl();
    assert_eq!(relay.take(), (0, 0, 0), "{}", fresh.stderr);

    // A tag pushed anew: a plain build keeps the stored answer (as docker build does),
    // --pull picks the new image up.
    output_ok(
        berth_build(&root)
            .args(["-t", &format!("{}/base/busybox:v1", reg.addr), "--push"])
            .arg(&ctx),
    );
    relay.take();
    let kept = output_ok(berth_build(&root).arg(&ctx));
    assert_eq!(kept.manifest(), cold.manifest());
    let moved = output_ok(berth_build(&root).arg("--pull").arg(&ctx));
    assert_ne!(
        moved.manifest(),
        cold.manifest(),
        "--pull kept the old base"
    );
    check_store(&root);
}

/// The chain ID (bare hex) of the busybox fixture in `dir/layout`: it has one layer, so
/// its chain is its diff ID.
fn base_chain(dir: &Path) -> String {
    let layout = dir.join("layout");
    let blob = |d: &str| {
        let hex = d.trim_start_matches("sha256:");
        serde_json::from_slice::<serde_json::Value>(
            &std::fs::read(layout.join("blobs/sha256").join(hex)).unwrap(),
        )
        .unwrap()
    };
    let manifest = blob(&layout_digest(&layout));
    let config = blob(manifest["config"]["digest"].as_str().unwrap());
    config["rootfs"]["diff_ids"][0]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_string()
}

/// The unpacked layers (chain IDs) of `root`, sorted.
fn snapshots(root: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(root.join("snapshots/layers"))
        .map(|it| {
            it.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// `berth` in `root` with `args`, which must succeed.
fn berth_ok(root: &Path, args: &[&str]) -> Output {
    output_ok(Command::new(berth_bin()).arg("--root").arg(root).args(args))
}

/// The unpacked base survives `berth prune` (as Docker keeps its images extracted), and
/// `prune --all` frees it too.
#[test]
fn unpacked_bases_survive_prune_unless_all() {
    if !require_build() || !require("skopeo") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_reg, relay) = registry(dir.path());
    let ctx = ctx(dir.path(), &format!("{}/base/busybox:v1", relay.addr));
    let root = dir.path().join("root");
    output_ok(berth_build(&root).arg(&ctx));
    let base_chain = base_chain(dir.path());
    assert!(
        snapshots(&root).contains(&base_chain),
        "{:?}",
        snapshots(&root)
    );
    berth_ok(&root, &["prune"]);
    assert_eq!(
        snapshots(&root),
        std::slice::from_ref(&base_chain),
        "prune kept more or less than the base"
    );
    berth_ok(&root, &["prune", "--all"]);
    assert_eq!(
        snapshots(&root),
        Vec::<String>::new(),
        "prune --all kept the base"
    );
    // The base is still an image of the store; a build unpacks it again.
    output_ok(berth_build(&root).arg(&ctx));
    assert!(snapshots(&root).contains(&base_chain));
}

/// A base named by digest (`FROM name@sha256:…`, `berth pull name@sha256:…`) stays
/// unpacked through `prune` as a tagged one does (Docker's `builder prune` leaves images
/// pulled by digest alone too), and the build after the prune takes it from the store
/// with no request and unpacks nothing; `prune --all`, or `rmi` of the image, lets its
/// snapshots go.
#[test]
fn bases_pulled_by_digest_survive_prune_unless_all() {
    if !require_build() || !require("skopeo") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_reg, relay) = registry(dir.path());
    let digest = layout_digest(&dir.path().join("layout"));
    let from = format!("{}/base/busybox@{digest}", relay.addr);
    let ctx = ctx(dir.path(), &from);
    let base_chain = base_chain(dir.path());
    let inode = |root: &Path| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(root.join("snapshots/layers").join(&base_chain))
            .unwrap()
            .ino()
    };

    // A build pulls it: the base is kept, the step's layer goes.
    let root = dir.path().join("root");
    output_ok(berth_build(&root).arg(&ctx));
    assert!(snapshots(&root).len() > 1, "{:?}", snapshots(&root));
    let unpacked = inode(&root);
    berth_ok(&root, &["prune"]);
    assert_eq!(snapshots(&root), std::slice::from_ref(&base_chain));
    relay.take();
    let again = output_ok(berth_build(&root).arg(&ctx));
    assert_eq!(relay.take(), (0, 0, 0), "{}", again.stderr);
    assert!(
        again.stderr.contains(&format!(
            "load metadata for {from}: berth's store, pinned by digest"
        )),
        "{}",
        again.stderr
    );
    assert_eq!(inode(&root), unpacked, "the base was unpacked again");
    berth_ok(&root, &["prune", "--all"]);
    assert_eq!(snapshots(&root), Vec::<String>::new());

    // `berth pull` by digest: kept through prune until the image is removed.
    let root2 = dir.path().join("root2");
    berth_ok(&root2, &["pull", &from]);
    assert_eq!(snapshots(&root2), std::slice::from_ref(&base_chain));
    berth_ok(&root2, &["prune"]);
    assert_eq!(snapshots(&root2), std::slice::from_ref(&base_chain));
    berth_ok(&root2, &["rmi", &from]);
    berth_ok(&root2, &["prune"]);
    assert_eq!(snapshots(&root2), Vec::<String>::new());
    check_store(&root);
    check_store(&root2);
}

#[test]
fn satellite_no_op_rebuild_sends_no_request_unless_pull() {
    if !require_build() || !require("skopeo") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_reg, relay) = registry(dir.path());
    let from = format!("{}/base/busybox:v1", relay.addr);
    let ctx = ctx(dir.path(), &from);
    let sat = Sat::on_loopback(&dir.path().join("sat-root"), &[]);
    let client = Client::new(dir.path(), "laptop", None);
    assert!(client.add("s1", &sat.token(&[])).success);

    output_ok(&mut client.build(&ctx, &[]));
    assert!(
        relay.take().2 > 0,
        "the satellite's cold build asked nothing?"
    );
    let noop = output_ok(&mut client.build(&ctx, &[]));
    assert_eq!(relay.take(), (0, 0, 0), "{}", noop.stderr);
    assert!(
        noop.stderr.contains("berth's store, resolved"),
        "{}",
        noop.stderr
    );
    let pulled = output_ok(&mut client.build(&ctx, &["--pull"]));
    assert!(
        relay.take().2 >= 1,
        "--pull on a satellite sent no request: {}",
        pulled.stderr
    );
}

#[test]
fn earthfile_no_op_run_sends_no_request_unless_pull() {
    if !require_build() || !require("skopeo") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_reg, relay) = registry(dir.path());
    let project = dir.path().join("earth");
    std::fs::create_dir(&project).unwrap();
    std::fs::write(
        project.join("Earthfile"),
        format!(
            "VERSION 0.8\nFROM {}/base/busybox:v1\nbuild:\n    RUN echo ran > /marker\n    SAVE ARTIFACT /marker AS LOCAL out/marker\n",
            relay.addr
        ),
    )
    .unwrap();
    let root = dir.path().join("root");
    let earthly = |extra: &[&str]| {
        let mut c = Command::new(berth_bin());
        c.arg("--root").arg(&root).current_dir(&project);
        c.arg("+build").args(extra);
        output_ok(&mut c)
    };
    earthly(&[]);
    assert!(relay.take().2 > 0, "the cold run asked nothing?");
    assert_eq!(
        std::fs::read_to_string(project.join("out/marker")).unwrap(),
        "ran\n"
    );
    let noop = earthly(&[]);
    assert_eq!(relay.take(), (0, 0, 0), "{}", noop.stderr);
    let pulled = earthly(&["--pull"]);
    assert!(
        relay.take().2 >= 1,
        "--pull sent no request: {}",
        pulled.stderr
    );
}

/// A rebuild that changed nothing keeps its image (ID and creation time, as BuildKit
/// does) and writes nothing: no blob, no step history, no checksum cache. A change
/// makes a new image.
#[test]
fn a_no_op_rebuild_keeps_its_image_and_writes_nothing() {
    if !require_build() {
        return;
    }
    let p = Project::new();
    let ctx = p.context("ctx", "COPY a.txt /a.txt\nRUN cat /a.txt > /b.txt\n");
    std::fs::write(ctx.join("a.txt"), "one\n").unwrap();
    let root = p.path("root");
    // No SOURCE_DATE_EPOCH: the config's `created` is the build's time.
    let build = || {
        output_ok(
            berth_build(&root)
                .env_remove("SOURCE_DATE_EPOCH")
                .args(["-t", "fast:1"])
                .arg(&ctx),
        )
    };
    let first = build();
    let files = |dir: &str| -> Vec<(String, std::time::SystemTime)> {
        let mut out = Vec::new();
        let mut todo = vec![root.join(dir)];
        while let Some(d) = todo.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                let m = e.metadata().unwrap();
                if m.is_dir() {
                    todo.push(e.path());
                } else {
                    out.push((e.path().display().to_string(), m.modified().unwrap()));
                }
            }
        }
        out.sort();
        out
    };
    let before = (files("blobs"), files("cache/history"), files("cache/sums"));
    // A second later, so a new `created` would differ.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let again = build();
    assert_eq!(again.manifest(), first.manifest(), "{}", again.stderr);
    let after = (files("blobs"), files("cache/history"), files("cache/sums"));
    assert_eq!(after, before, "a no-op wrote blobs, history or checksums");
    std::fs::write(ctx.join("a.txt"), "two\n").unwrap();
    let changed = build();
    assert_ne!(changed.manifest(), first.manifest());
}
