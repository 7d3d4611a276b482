//! A build's life as a process: canceled by SIGTERM, killed with -9, two builds on one
//! root at once, and `berth prune`. Nothing may be left behind: no mount, no container,
//! no half-made snapshot.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn ready() -> bool {
    require_build()
}

/// A context whose Dockerfile is `body` on top of the busybox fixture.
fn project(dir: &Path, body: &str) -> std::path::PathBuf {
    let layout = dir.join("busybox");
    if !layout.exists() {
        busybox_layout(&layout, "v1");
    }
    let ctx = dir.join(format!("ctx-{}", body.len()));
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        format!("FROM oci-layout://{}:v1\n{body}", layout.display()),
    )
    .unwrap();
    ctx
}

/// Build `ctx` on `root`, which must succeed; returns the progress output.
fn build_ok(root: &Path, ctx: &Path) -> String {
    let out = build_cmd(root, ctx).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{err}");
    err
}

fn build_cmd(root: &Path, ctx: &Path) -> Command {
    let mut c = Command::new(berth_bin());
    c.arg("--root")
        .arg(root)
        .args(["build", "--progress", "plain"])
        .arg(ctx);
    c
}

/// Start a build and wait until its output shows `marker`.
fn start_until(root: &Path, ctx: &Path, marker: &str) -> (Child, std::path::PathBuf) {
    let log = ctx.join("build.log");
    let child = build_cmd(root, ctx)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains(marker)
    {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "build never printed {marker:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (child, log)
}

fn entries(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

fn processes_running(pattern: &str) -> bool {
    Command::new("pgrep")
        .args(["-f", pattern])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn sigterm_cancels_cleanly() {
    if !ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    // The marker is the step's output, not its name: `ready-$((1+1))` prints ready-2.
    let ctx = project(dir.path(), "RUN echo ready-$((1+1)) && sleep 4321\n");
    let (mut child, log) = start_until(&root, &ctx, "ready-2");
    run(Command::new("kill").args(["-TERM", &child.id().to_string()]));
    let status = child.wait().unwrap();
    let out = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(130), "{out}");
    assert!(out.contains("canceled"), "{out}");
    assert_eq!(mounts_under(&root), 0, "no mount left");
    assert_eq!(
        entries(&root.join("snapshots/active")),
        0,
        "no active snapshot left"
    );
    assert_eq!(entries(&root.join("exec/bundles")), 0, "no bundle left");
    assert!(
        !processes_running("sleep 4321"),
        "the step's process was killed"
    );
    // The root is usable right away.
    let quick = project(dir.path(), "RUN echo fine\n");
    run(&mut build_cmd(&root, &quick));
}

#[test]
fn sigterm_before_the_container_starts_still_cancels() {
    if !ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let ctx = project(dir.path(), "RUN sleep 4323\n");
    // The step's label is printed before runc has created the container.
    let (mut child, log) = start_until(&root, &ctx, "RUN sleep 4323");
    run(Command::new("kill").args(["-TERM", &child.id().to_string()]));
    let status = child.wait().unwrap();
    let out = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(130), "{out}");
    assert!(
        !processes_running("sleep 4323"),
        "the container was killed once it existed"
    );
    assert_eq!(mounts_under(&root), 0, "no mount left");
}

#[test]
fn after_kill_9_the_next_build_cleans_up() {
    if !ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let ctx = project(dir.path(), "RUN echo ready-$((1+1)) && sleep 4322\n");
    let (mut child, _log) = start_until(&root, &ctx, "ready-2");
    child.kill().unwrap();
    child.wait().unwrap();
    // runc and the container outlive a SIGKILL'd berth; their mount stays too.
    assert!(
        mounts_under(&root) > 0,
        "the killed build left its mount (the case under test)"
    );
    let quick = project(dir.path(), "RUN echo after-the-crash\n");
    let out = Command::new(berth_bin())
        .arg("--root")
        .arg(&root)
        .args(["build", "--progress", "plain", "-t", "after:1"])
        .arg(&quick)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("after-the-crash"), "{err}");
    assert_eq!(mounts_under(&root), 0, "stale mounts removed");
    assert_eq!(entries(&root.join("snapshots/active")), 0);
    assert_eq!(entries(&root.join("exec/bundles")), 0);
    assert!(
        !processes_running("sleep 4322"),
        "the orphaned container was deleted"
    );
}

/// An OCI layout at `dir` with tag `v1`: `layers` uncompressed layers of `files` empty
/// files each (`/l<N>/<dir>/<file>`), slow enough to unpack for a build to be caught at
/// it.
fn many_layer_layout(dir: &Path, layers: usize, files: usize) {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| {
        let d = berth_oci::Digest::sha256(bytes);
        std::fs::write(blobs.join(d.hex()), bytes).unwrap();
        (d.to_string(), bytes.len())
    };
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    for l in 0..layers {
        let mut tar = tar::Builder::new(Vec::new());
        for f in 0..files {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(0);
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            let path = format!("l{l}/d{}/f{f}", f / 500);
            tar.append_data(&mut h, path, std::io::empty()).unwrap();
        }
        let (digest, size) = put(&tar.into_inner().unwrap());
        descs.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest, "size": size,
        }));
        diff_ids.push(digest);
    }
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let (cd, cs) = put(config.to_string().as_bytes());
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
        "layers": descs,
    });
    let (md, ms) = put(manifest.to_string().as_bytes());
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": ms,
            "annotations": {"org.opencontainers.image.ref.name": "v1"},
        }],
    });
    std::fs::write(dir.join("index.json"), index.to_string()).unwrap();
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
}

/// Every unpacked chain of the snapshotter at `snapshots` stands on an unpacked parent.
fn chains_are_whole(snapshots: &Path) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(snapshots.join("layers")).unwrap() {
        let dir = e.unwrap().path();
        assert!(dir.join("fs").is_dir(), "{} has no fs/", dir.display());
        if let Ok(p) = std::fs::read_to_string(dir.join("parent")) {
            let hex = p.trim().strip_prefix("sha256:").unwrap().to_string();
            assert!(
                snapshots.join("layers").join(hex).join("fs").is_dir(),
                "{} stands on a parent that is not unpacked",
                dir.display()
            );
        }
        n += 1;
    }
    n
}

#[test]
fn a_build_killed_while_unpacking_layers_leaves_whole_chains() {
    if !ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let layout = dir.path().join("layers");
    many_layer_layout(&layout, 4, 20_000);
    let ctx = dir.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        format!(
            "FROM oci-layout://{}:v1\nCOPY Dockerfile /copied\n",
            layout.display()
        ),
    )
    .unwrap();
    let snapshots = root.join("snapshots");
    let staging = || {
        std::fs::read_dir(snapshots.join("tmp"))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| entries(&e.path().join("fs")) > 0)
            .count()
    };
    let mut child = build_cmd(&root, &ctx)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Killed once layers are being staged (the case under test).
    let start = Instant::now();
    while staging() == 0 {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the build ended before it was seen unpacking"
        );
        assert!(start.elapsed() < Duration::from_secs(120), "never unpacked");
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    chains_are_whole(&snapshots);
    assert!(
        entries(&snapshots.join("tmp")) > 0,
        "the kill left staged layers"
    );
    // The next build removes the dead build's staging and unpacks what is missing.
    build_ok(&root, &ctx);
    assert_eq!(entries(&snapshots.join("tmp")), 0, "staging left behind");
    assert_eq!(
        chains_are_whole(&snapshots),
        5,
        "four layers and the COPY's"
    );
    check_store(&root);
}

#[test]
fn two_builds_share_one_root() {
    if !ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let a = project(
        dir.path(),
        "RUN echo shared > /shared && sleep 1\nRUN echo a > /a\n",
    );
    let b = project(
        dir.path(),
        "RUN echo shared > /shared && sleep 1\nRUN echo bb > /b\nCOPY Dockerfile /\n",
    );
    let ca = build_cmd(&root, &a)
        .args(["-t", "a:1"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let cb = build_cmd(&root, &b)
        .args(["-t", "b:1"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    for c in [ca, cb] {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let images = run(Command::new(berth_bin())
        .arg("--root")
        .arg(&root)
        .arg("images"));
    assert!(images.contains("a ") && images.contains("b "), "{images}");
    // Both results are usable: rebuilding either is fully cached.
    let out = build_cmd(&root, &a).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.matches("CACHED").count(), 2, "{err}");
    check_store(&root);
}

#[test]
fn prune_frees_cache_but_keeps_images() {
    if !ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let ctx = project(
        dir.path(),
        "RUN echo one > /one\nRUN --mount=type=cache,target=/c echo x >> /c/log\n",
    );
    run(build_cmd(&root, &ctx).args(["-t", "kept:1"]));
    let report = run(Command::new(berth_bin()).arg("--root").arg(&root).args([
        "prune",
        "--keep-storage",
        "1GB",
    ]));
    assert!(report.contains("removed 0 cache records"), "{report}");
    // An age limit alone keeps whatever was used within it (no size limit then).
    let report = run(Command::new(berth_bin()).arg("--root").arg(&root).args([
        "prune",
        "--keep-duration",
        "1h",
    ]));
    assert!(report.contains("removed 0 cache records"), "{report}");
    // The history of steps whose records stay is kept (each entry names its key).
    assert!(report.contains("0 step histories"), "{report}");
    assert_eq!(
        entries(&root.join("cache/history")),
        1,
        "one build's history"
    );
    let out = build_cmd(&root, &ctx).output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stderr)
            .matches("CACHED")
            .count(),
        2
    );
    let report = run(Command::new(berth_bin())
        .arg("--root")
        .arg(&root)
        .args(["prune", "--all"]));
    assert!(report.contains("removed 2 cache records"), "{report}");
    assert!(report.contains("1 cache mounts"), "{report}");
    assert!(report.contains("2 step histories"), "{report}");
    assert_eq!(entries(&root.join("cache/history")), 0, "history gone");
    assert_eq!(
        entries(&root.join("snapshots/layers")),
        0,
        "unpacked layers gone"
    );
    let images = run(Command::new(berth_bin())
        .arg("--root")
        .arg(&root)
        .arg("images"));
    assert!(images.contains("kept"), "{images}");
    check_store(&root);
    let err = build_ok(&root, &ctx);
    assert_eq!(err.matches("CACHED").count(), 0, "{err}");
}

#[test]
fn registry_gc_keeps_the_build_cache() {
    if !ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    // Untagged: nothing but the cache refers to these layers.
    let ctx = project(dir.path(), "RUN echo cached-layer > /c\n");
    run(&mut build_cmd(&root, &ctx));
    // Every blob looks an hour old, so neither the grace period nor the clock margin
    // keeps it: only the cache's roots do.
    let old = std::time::SystemTime::now() - Duration::from_secs(3600);
    let blobs = root.join("blobs/sha256");
    for e in std::fs::read_dir(&blobs).unwrap() {
        let f = std::fs::File::open(e.unwrap().path()).unwrap();
        f.set_modified(old).unwrap();
    }
    let before = entries(&blobs);
    // gc may drop unnamed manifests and configs, but not the layers the cache lists.
    let out = run(Command::new(berth_bin())
        .arg("--root")
        .arg(&root)
        .args(["registry", "gc", "--grace", "0s"]));
    assert!(
        entries(&blobs) < before,
        "gc removed the unnamed image: {out}"
    );
    let mut layers = 0;
    for e in std::fs::read_dir(root.join("cache/records")).unwrap() {
        let record: serde_json::Value =
            serde_json::from_slice(&std::fs::read(e.unwrap().path()).unwrap()).unwrap();
        for l in record["layers"].as_array().unwrap() {
            let digest = l["blob"]["digest"].as_str().unwrap();
            let hex = digest.strip_prefix("sha256:").unwrap();
            assert!(
                blobs.join(hex).exists(),
                "cached layer {digest} removed: {out}"
            );
            layers += 1;
        }
    }
    assert!(layers > 0, "the build recorded its layers");
    let err = build_ok(&root, &ctx);
    assert_eq!(err.matches("CACHED").count(), 1, "{err}");
}

#[test]
fn platform_args_are_predefined() {
    if !ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let ctx = project(
        dir.path(),
        "ARG TARGETARCH\nARG TARGETPLATFORM\nRUN echo arch=$TARGETARCH platform=$TARGETPLATFORM\n",
    );
    let err = build_ok(&root, &ctx);
    assert!(
        err.contains("arch=amd64 platform=linux/amd64")
            || err.contains("arch=arm64 platform=linux/arm64"),
        "{err}"
    );
}

#[test]
fn a_writable_context_mount_leaves_the_context_alone() {
    if !ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let ctx = project(
        dir.path(),
        "RUN --mount=type=bind,rw,target=/ctx echo scribble > /ctx/written-by-run && ls /ctx\n",
    );
    let err = build_ok(&root, &ctx);
    assert!(
        err.contains("written-by-run"),
        "the step saw its own write: {err}"
    );
    assert!(
        !ctx.join("written-by-run").exists(),
        "the user's context was written to"
    );
}

#[test]
fn a_context_mount_hides_what_dockerignore_excludes() {
    if !ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let ctx = project(
        dir.path(),
        "RUN --mount=type=bind,target=/ctx ls -a /ctx /ctx/sub && cat /ctx/sub/kept\n",
    );
    std::fs::write(ctx.join(".dockerignore"), "*.secret\nsub/drop\n").unwrap();
    std::fs::write(ctx.join("token.secret"), "hidden").unwrap();
    std::fs::create_dir_all(ctx.join("sub")).unwrap();
    std::fs::write(ctx.join("sub/drop"), "hidden").unwrap();
    std::fs::write(ctx.join("sub/kept"), "visible-content").unwrap();
    let err = build_ok(&root, &ctx);
    assert!(err.contains("visible-content"), "{err}");
    assert!(
        !err.contains("token.secret") && !err.contains(" drop"),
        "ignored files were visible: {err}"
    );
    assert!(
        ctx.join("token.secret").exists(),
        "the context itself is untouched"
    );
}

#[test]
fn cache_mounts_take_their_owner_and_mode() {
    if !ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let ctx = project(
        dir.path(),
        "USER 65534\nRUN --mount=type=cache,target=/home/c,uid=65534,gid=65534,mode=0700 echo ok > /home/c/f && stat -c '%u:%g %a' /home/c\n",
    );
    let err = build_ok(&root, &ctx);
    assert!(err.contains("65534:65534 700"), "{err}");
}

#[test]
fn tmpfs_mounts_take_their_size() {
    if !ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let ctx = project(
        dir.path(),
        "RUN --mount=type=tmpfs,target=/scratch,size=1048576 df -k /scratch | tail -1\n",
    );
    let err = build_ok(&root, &ctx);
    // df -k: the size column of a 1 MiB tmpfs is 1024.
    assert!(
        err.lines()
            .any(|l| l.contains("tmpfs") && l.split_whitespace().any(|w| w == "1024")),
        "{err}"
    );
}

#[test]
fn onbuild_triggers_run_in_the_child_only() {
    if !ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let base = project(
        dir.path(),
        "ONBUILD RUN echo triggered-$((40+2)) > /onbuild\nONBUILD COPY marker /marker\n",
    );
    run(build_cmd(&root, &base).args(["-t", "onbase:1"]));
    let child = dir.path().join("child");
    std::fs::create_dir_all(&child).unwrap();
    std::fs::write(
        child.join("Dockerfile"),
        "FROM onbase:1\nRUN cat /onbuild /marker\n",
    )
    .unwrap();
    std::fs::write(child.join("marker"), "from-the-child-context\n").unwrap();
    let err = build_ok(&root, &child);
    assert!(
        err.contains("triggered-42") && err.contains("from-the-child-context"),
        "{err}"
    );
    run(build_cmd(&root, &child).args(["-t", "onchild:1"]));
    // The triggers are not inherited by the child's image.
    let grandchild = dir.path().join("grandchild");
    std::fs::create_dir_all(&grandchild).unwrap();
    std::fs::write(
        grandchild.join("Dockerfile"),
        "FROM onchild:1\nRUN echo grandchild\n",
    )
    .unwrap();
    let err = build_ok(&root, &grandchild);
    assert!(!err.contains("COPY marker"), "{err}");
}

#[test]
fn heredoc_scripts_run_with_their_shebang() {
    if !ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    // /bin/cat as the interpreter prints the script: proof it was not run by sh.
    let ctx = project(
        dir.path(),
        "RUN <<EOF\n#!/bin/cat\nhello-from-a-cat-script\nEOF\n",
    );
    let out_dir = dir.path().join("out");
    let out = build_cmd(&root, &ctx)
        .arg("--output")
        .arg(format!("type=local,dest={}", out_dir.display()))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("hello-from-a-cat-script"), "{err}");
    assert!(
        !out_dir.join("run").exists(),
        "the script's mount point left no trace"
    );
}
