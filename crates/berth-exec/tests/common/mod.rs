//! Shared by the executor's tests: prerequisites (skip, or fail under
//! BERTH_TEST_STRICT=1), the busybox fixture unpacked into a snapshot, and running a
//! script in a runc container.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use berth_exec::{Executor, Meta, Runc, Stream};
use berth_oci::{Digest, Mount};
use berth_snapshot::Snapshotter;

/// Root, runc, slirp4netns, ip and busybox are here (else skip, or fail when strict).
pub fn ready() -> bool {
    let on_path = |tool: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let missing = if !rustix::process::geteuid().is_root() {
        Some("root")
    } else if !Path::new("/bin/busybox").exists() {
        Some("busybox-static")
    } else {
        // slirp4netns: the default network of a step.
        ["runc", "slirp4netns", "ip"]
            .into_iter()
            .find(|t| !on_path(t))
    };
    match missing {
        Some(m) => berth_testutil::skip(&format!("needs {m}")),
        None => true,
    }
}

/// Unpack the busybox fixture layer; returns the snapshotter and the chain.
pub fn busybox(dir: &Path) -> (Snapshotter, Digest) {
    let layout = dir.join("layout");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/make-busybox-layout");
    let out = Command::new(script).arg(&layout).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            layout.join("blobs/sha256").join(
                String::from_utf8_lossy(&out.stdout)
                    .trim()
                    .trim_start_matches("sha256:"),
            ),
        )
        .unwrap(),
    )
    .unwrap();
    let layer = manifest["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_string();
    let data = std::fs::read(layout.join("blobs/sha256").join(layer)).unwrap();
    let mut raw = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(data.as_slice()), &mut raw)
        .unwrap();
    let diff_id = Digest::sha256(&raw);
    let snaps = Snapshotter::open(dir.join("snapshots")).unwrap();
    let chain = snaps.apply(None, &diff_id, raw.as_slice()).unwrap();
    (snaps, chain)
}

/// The busybox layer unpacked, a runc executor, and an active snapshot on the layer.
pub fn setup(dir: &Path, key: &str) -> (Snapshotter, Runc, berth_snapshot::Active) {
    let (snaps, chain) = busybox(dir);
    let exec = Runc::new(&dir.join("exec")).unwrap();
    let active = snaps
        .prepare(&format!("{}-{key}", std::process::id()), Some(&chain))
        .unwrap();
    (snaps, exec, active)
}

/// A read-write bind mount of `source` at `target`.
pub fn bind(source: &Path, target: &str) -> Mount {
    let mut m = Mount::default();
    m.set_destination(PathBuf::from(target));
    m.set_typ(Some("bind".into()));
    m.set_source(Some(source.to_path_buf()));
    m.set_options(Some(vec!["rbind".into(), "rw".into()]));
    m
}

pub fn meta(script: &str) -> Meta {
    Meta {
        args: vec!["/bin/sh".into(), "-c".into(), script.into()],
        env: vec!["PATH=/bin".into(), "GREETING=hello".into()],
        cwd: "/".into(),
        ..Meta::default()
    }
}

pub fn run(exec: &Runc, rootfs: &[Mount], mounts: &[Mount], meta: &Meta) -> (i32, String, String) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = exec
        .run(rootfs, mounts, meta, &mut |s, b| match s {
            Stream::Stdout => out.extend_from_slice(b),
            Stream::Stderr => err.extend_from_slice(b),
        })
        .unwrap();
    (
        code,
        String::from_utf8_lossy(&out).into_owned(),
        String::from_utf8_lossy(&err).into_owned(),
    )
}
