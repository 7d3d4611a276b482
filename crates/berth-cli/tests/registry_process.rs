//! The registry as a process: killed with -9 mid-upload and mid-push, stopped with
//! SIGTERM mid-request, two processes on one root, and `berth registry gc`.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use common::*;

fn sha256_hex(data: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("d");
    std::fs::write(&f, data).unwrap();
    let out = run(Command::new("sha256sum").arg(&f));
    out.split_whitespace().next().unwrap().to_string()
}

/// Open an upload session; returns its Location path.
fn start_upload(addr: &str, repo: &str) -> String {
    let resp = raw_request(
        addr,
        &format!(
            "POST /v2/{repo}/blobs/uploads/ HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        ),
        &[],
    );
    assert!(resp.starts_with("HTTP/1.1 202"), "{resp}");
    header_of(&resp, "location")
}

fn raw_request(addr: &str, head: &str, body: &[u8]) -> String {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    c.write_all(head.as_bytes()).unwrap();
    c.write_all(body).unwrap();
    let mut s = String::new();
    let _ = c.read_to_string(&mut s);
    s
}

fn header_of(resp: &str, name: &str) -> String {
    resp.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
        .unwrap_or_else(|| panic!("no {name} in {resp}"))
}

#[test]
fn kill_9_mid_upload_then_resume_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let mut berth = Berth::serve(&root, &[]);
    let data: Vec<u8> = (0..4_000_000u32).map(|i| (i % 241) as u8).collect();
    let digest = format!("sha256:{}", sha256_hex(&data));
    let loc = start_upload(&berth.addr, "crash/app");
    // Send half of a PATCH that announces the whole body, then kill the server.
    let mut c = TcpStream::connect(&berth.addr).unwrap();
    c.write_all(
        format!(
            "PATCH {loc} HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n",
            data.len()
        )
        .as_bytes(),
    )
    .unwrap();
    c.write_all(&data[..2_000_000]).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    berth.kill9();
    drop(c);

    // Nothing corrupt or half-written is visible, and the store opens.
    let report = check_store(&root);
    assert!(report.contains("0 blobs checked"), "{report}");
    let berth = Berth::serve(&root, &[]);
    let status = raw_request(
        &berth.addr,
        &format!("GET {loc} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"),
        &[],
    );
    assert!(status.starts_with("HTTP/1.1 204"), "{status}");
    let range = header_of(&status, "range");
    let have: usize = range.trim_start_matches("0-").parse::<usize>().unwrap() + 1;
    assert!(
        have > 0 && have <= 2_000_000,
        "received {have} bytes before the kill"
    );
    // Resume from where the server says it is, after the restart.
    let resp = raw_request(
        &berth.addr,
        &format!(
            "PUT {loc}?digest={digest} HTTP/1.1\r\nhost: x\r\ncontent-range: {have}-{}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            data.len() - 1,
            data.len() - have
        ),
        &data[have..],
    );
    assert!(resp.starts_with("HTTP/1.1 201"), "{resp}");
    let blob = reqwest::blocking_get(&format!(
        "http://{}/v2/crash/app/blobs/{digest}",
        berth.addr
    ));
    assert_eq!(blob, data);
    check_store(&root);
}

mod reqwest {
    /// A tiny blocking GET over a runtime of its own (tests here are synchronous).
    pub fn blocking_get(url: &str) -> Vec<u8> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let r = ::reqwest::get(url).await.unwrap();
            assert!(r.status().is_success(), "GET {url}: {}", r.status());
            r.bytes().await.unwrap().to_vec()
        })
    }
}

#[test]
fn kill_9_during_pushes_leaves_a_consistent_store() {
    if !require("skopeo") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let src = dir.path().join("src");
    let want = busybox_layout(&src, "v1");
    let oci = format!("oci:{}:v1", src.display());
    for delay_ms in [5u64, 40, 120] {
        let mut berth = Berth::serve(&root, &[]);
        let pushes: Vec<_> = (0..4)
            .map(|i| {
                skopeo_copy(&oci, &format!("docker://{}/crash/p{i}:v1", berth.addr), &[])
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .unwrap()
            })
            .collect();
        std::thread::sleep(Duration::from_millis(delay_ms));
        berth.kill9();
        for mut p in pushes {
            let _ = p.wait();
        }
        check_store(&root);
    }
    // After the crashes the registry works and serves what was pushed, intact.
    let berth = Berth::serve(&root, &[]);
    let dest = format!("docker://{}/crash/final:v1", berth.addr);
    run(&mut skopeo_copy(&oci, &dest, &[]));
    let out = dir.path().join("out");
    run(&mut skopeo_copy(
        &dest,
        &format!("oci:{}:v1", out.display()),
        &[],
    ));
    assert_eq!(layout_digest(&out), want);
    check_store(&root);
}

#[test]
fn sigterm_lets_a_running_upload_finish() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let mut berth = Berth::serve(&root, &[]);
    let data = vec![42u8; 1_000_000];
    let digest = format!("sha256:{}", sha256_hex(&data));
    let mut c = TcpStream::connect(&berth.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    c.write_all(
        format!(
            "POST /v2/term/app/blobs/uploads/?digest={digest} HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            data.len()
        )
        .as_bytes(),
    )
    .unwrap();
    c.write_all(&data[..500_000]).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    berth.sigterm();
    std::thread::sleep(Duration::from_millis(300));
    // The server no longer accepts new connections…
    assert!(
        berth.child.try_wait().unwrap().is_none(),
        "server waits for the running request"
    );
    assert!(
        TcpStream::connect(&berth.addr).is_err(),
        "listener closed after SIGTERM"
    );
    // …but the request in flight completes.
    c.write_all(&data[500_000..]).unwrap();
    let mut resp = String::new();
    let _ = c.read_to_string(&mut resp);
    assert!(resp.starts_with("HTTP/1.1 201"), "{resp}");
    let status = berth
        .wait_exit(Duration::from_secs(10))
        .expect("server exits after draining");
    assert!(status.success(), "{status}");
    let report = check_store(&root);
    assert!(report.contains("1 blobs checked"), "{report}");
}

#[test]
fn two_processes_share_one_root() {
    if !require("skopeo") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let a = Berth::serve(&root, &[]);
    let b = Berth::serve(&root, &[]);
    let src = dir.path().join("src");
    let want = busybox_layout(&src, "v1");
    let oci = format!("oci:{}:v1", src.display());
    // The same image pushed through both at once.
    let pushes: Vec<_> = [&a, &b]
        .iter()
        .map(|s| {
            skopeo_copy(&oci, &format!("docker://{}/shared/app:v1", s.addr), &[])
                .spawn()
                .unwrap()
        })
        .collect();
    for mut p in pushes {
        assert!(p.wait().unwrap().success());
    }
    // Pushed through one, pulled through the other.
    run(&mut skopeo_copy(
        &oci,
        &format!("docker://{}/only-a/app:v1", a.addr),
        &[],
    ));
    let out = dir.path().join("out");
    run(&mut skopeo_copy(
        &format!("docker://{}/only-a/app:v1", b.addr),
        &format!("oci:{}:v1", out.display()),
        &[],
    ));
    assert_eq!(layout_digest(&out), want);
    check_store(&root);
}

#[test]
fn gc_removes_what_no_manifest_references() {
    if !require("skopeo") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let berth = Berth::serve(&root, &[]);
    let src = dir.path().join("src");
    let digest = busybox_layout(&src, "v1");
    let oci = format!("oci:{}:v1", src.display());
    run(&mut skopeo_copy(
        &oci,
        &format!("docker://{}/gc/keep:v1", berth.addr),
        &[],
    ));
    run(&mut skopeo_copy(
        &oci,
        &format!("docker://{}/gc/drop:v1", berth.addr),
        &[],
    ));
    // An orphan blob: uploaded, never referenced.
    let orphan = b"orphan blob".to_vec();
    let od = format!("sha256:{}", sha256_hex(&orphan));
    let resp = raw_request(
        &berth.addr,
        &format!(
            "POST /v2/gc/drop/blobs/uploads/?digest={od} HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            orphan.len()
        ),
        &orphan,
    );
    assert!(resp.starts_with("HTTP/1.1 201"), "{resp}");
    let berth_gc = |args: &[&str]| {
        run(Command::new(berth_bin())
            .arg("--root")
            .arg(&root)
            .args(["registry", "gc"])
            .args(args))
    };
    // Within the default grace period nothing goes.
    let out = berth_gc(&[]);
    assert!(out.contains("removed 0 blobs"), "{out}");
    // Nor within the clock margin (berth_store::CLOCK_MARGIN) of a grace of 0s: the
    // upload stamped it a moment ago.
    let out = berth_gc(&["--grace", "0s"]);
    assert!(out.contains("removed 0 blobs"), "{out}");
    let hour_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
    let blob = root
        .join("blobs/sha256")
        .join(od.trim_start_matches("sha256:"));
    let link = root
        .join("repositories/gc/drop/_blobs/sha256")
        .join(od.trim_start_matches("sha256:"));
    for f in [&blob, &link] {
        std::fs::File::open(f)
            .unwrap()
            .set_modified(hour_ago)
            .unwrap();
    }
    let out = berth_gc(&[]);
    assert!(out.contains("removed 0 blobs"), "{out}");
    let dry = berth_gc(&["--dry-run", "--grace", "0s"]);
    assert!(dry.contains(&format!("would remove blob {od}")), "{dry}");
    assert!(dry.contains("would remove 1 blobs"), "{dry}");
    assert!(
        root.join("blobs/sha256")
            .join(od.trim_start_matches("sha256:"))
            .exists(),
        "dry run removes nothing"
    );
    let out = berth_gc(&["--grace", "0s"]);
    assert!(out.contains("removed 1 blobs"), "{out}");
    assert!(
        !root
            .join("blobs/sha256")
            .join(od.trim_start_matches("sha256:"))
            .exists()
    );
    // Deleting one repository's manifest keeps the blobs the other still references.
    let resp = raw_request(
        &berth.addr,
        &format!(
            "DELETE /v2/gc/drop/manifests/{digest} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
        ),
        &[],
    );
    assert!(resp.starts_with("HTTP/1.1 202"), "{resp}");
    let out = berth_gc(&["--grace", "0s"]);
    assert!(out.contains("removed 0 blobs"), "{out}");
    let out = dir.path().join("out");
    run(&mut skopeo_copy(
        &format!("docker://{}/gc/keep:v1", berth.addr),
        &format!("oci:{}:v1", out.display()),
        &[],
    ));
    assert_eq!(layout_digest(&out), digest);
    check_store(&root);
}
