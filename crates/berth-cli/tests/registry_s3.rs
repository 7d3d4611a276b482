//! `berth registry serve` on S3-compatible object storage (moto's server on 127.0.0.1):
//! two replicas on one bucket serve each other's pushes, and a bucket that cannot be
//! used stops the registry at start-up with an error that says why.

mod common;

use std::process::{Command, Stdio};

use berth_testutil::moto::Moto;
use common::*;

const BUCKET: &str = "berth-registry";

/// A config.toml keeping the registry in `bucket` at `endpoint`.
fn s3_config(dir: &std::path::Path, endpoint: &str, extra: &str) -> std::path::PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = dir.join(format!("config-{n}.toml"));
    std::fs::write(
        &path,
        format!(
            "[registry.storage]\nkind = \"s3\"\nbucket = \"{BUCKET}\"\nprefix = \"team\"\nendpoint = \"{endpoint}\"\n{extra}"
        ),
    )
    .unwrap();
    path
}

/// `berth registry serve` with `config`, and `keys` (if any) in the environment.
fn serve(
    root: &std::path::Path,
    config: &std::path::Path,
    keys: Option<(&str, &str)>,
) -> std::process::Child {
    let mut cmd = Command::new(berth_bin());
    cmd.arg("--root")
        .arg(root)
        .arg("--config")
        .arg(config)
        .args(["registry", "serve", "--addr", "127.0.0.1:0"])
        .env("BERTH_LOG", "warn")
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_SESSION_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some((key, secret)) = keys {
        cmd.env("AWS_ACCESS_KEY_ID", key)
            .env("AWS_SECRET_ACCESS_KEY", secret);
    }
    cmd.spawn().expect("spawn berth")
}

/// A replica that listens: its address.
struct Replica {
    child: std::process::Child,
    addr: String,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn replica(
    root: &std::path::Path,
    config: &std::path::Path,
    keys: Option<(&str, &str)>,
) -> Replica {
    use std::io::BufRead;
    let mut child = serve(root, config, keys);
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let Some(addr) = line
        .split("://")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .map(str::to_string)
    else {
        let out = child.wait_with_output().unwrap();
        panic!(
            "replica did not start: {line:?} {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    assert!(line.contains(&format!("bucket {BUCKET}")), "{line}");
    Replica { child, addr }
}

/// moto and two replicas on its bucket (keys `test`): (moto, work dir, config, A, B).
fn two_replicas() -> Option<(
    Moto,
    tempfile::TempDir,
    std::path::PathBuf,
    Replica,
    Replica,
)> {
    let moto = Moto::start(BUCKET)?;
    let dir = tempfile::tempdir().unwrap();
    let config = s3_config(dir.path(), &moto.endpoint, "");
    let keys = Some(("test", "test"));
    // Each replica has a root of its own: nothing but the bucket is shared.
    let a = replica(&dir.path().join("a"), &config, keys);
    let b = replica(&dir.path().join("b"), &config, keys);
    Some((moto, dir, config, a, b))
}

/// Run `serve` expecting it to stop at start-up; its stderr.
fn fails_at_start(
    root: &std::path::Path,
    config: &std::path::Path,
    keys: Option<(&str, &str)>,
) -> String {
    let out = serve(root, config, keys).wait_with_output().unwrap();
    assert!(
        !out.status.success(),
        "serve should have failed; stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        out.stdout.is_empty(),
        "nothing may listen: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn skopeo_pushes_through_one_replica_and_pulls_through_another() {
    if !require("skopeo") {
        return;
    }
    // moto without auth: with auth on, it refuses every signed listing whose query has
    // a '/' (prefix=team%2F) as a signature mismatch, which boto3 hits too.
    let Some((moto, dir, config, a, b)) = two_replicas() else {
        return;
    };

    let src = dir.path().join("src");
    let want = busybox_layout(&src, "v1");
    run(&mut skopeo_copy(
        &format!("oci:{}:v1", src.display()),
        &format!("docker://{}/team/busybox:v1", a.addr),
        &[],
    ));
    let out = dir.path().join("out");
    run(&mut skopeo_copy(
        &format!("docker://{}/team/busybox:v1", b.addr),
        &format!("oci:{}:v1", out.display()),
        &[],
    ));
    assert_eq!(layout_digest(&out), want, "B serves what A took");
    let tags = run(Command::new("skopeo").args([
        "list-tags",
        "--tls-verify=false",
        &format!("docker://{}/team/busybox", b.addr),
    ]));
    assert!(tags.contains("\"v1\""), "{tags}");
    // The bytes are in the bucket, not in either replica's root.
    let keys_in = moto.keys_in(BUCKET);
    assert!(
        keys_in.iter().any(|k| k.starts_with("team/blobs/sha256/")),
        "{keys_in:?}"
    );
    assert!(
        !keys_in.iter().any(|k| k.starts_with("team/uploads/")),
        "no upload session left: {keys_in:?}"
    );
    // gc on the bucket from a third process: a blob nothing references goes, the
    // image stays whole.
    let stray = b"a blob no manifest references".to_vec();
    let stray_file = dir.path().join("stray");
    std::fs::write(&stray_file, &stray).unwrap();
    let stray_digest = berth_oci::Digest::sha256(&stray).to_string();
    let (status, head) = curl(&[
        "-X",
        "POST",
        "--data-binary",
        &format!("@{}", stray_file.display()),
        &format!(
            "http://{}/v2/team/busybox/blobs/uploads/?digest={stray_digest}",
            a.addr
        ),
    ]);
    assert_eq!(status, 201, "{head}");
    // Older than gc's slack on the bucket's whole-second times.
    std::thread::sleep(std::time::Duration::from_secs(3));
    let gc = run(Command::new(berth_bin())
        .arg("--root")
        .arg(dir.path().join("c"))
        .arg("--config")
        .arg(&config)
        .args(["registry", "gc", "--grace", "0s"])
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test"));
    assert!(gc.contains(&format!("removed blob {stray_digest}")), "{gc}");
    assert!(gc.contains("removed 1 blobs"), "{gc}");
    let (status, _) = curl(&[&format!(
        "http://{}/v2/team/busybox/blobs/{stray_digest}",
        b.addr
    )]);
    assert_eq!(status, 404);
    let again = dir.path().join("again");
    run(&mut skopeo_copy(
        &format!("docker://{}/team/busybox:v1", b.addr),
        &format!("oci:{}:v1", again.display()),
        &[],
    ));
    assert_eq!(layout_digest(&again), want, "the image survives gc");
    // registry check reads the bucket: all is well, then a blob is overwritten behind
    // the registry's back and the check names it.
    let check = |expect_ok: bool| {
        let mut cmd = Command::new(berth_bin());
        cmd.arg("--root")
            .arg(dir.path().join("c"))
            .arg("--config")
            .arg(&config)
            .args(["registry", "check"])
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test");
        let out = cmd.output().unwrap();
        assert_eq!(out.status.success(), expect_ok, "{out:?}");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let ok = check(true);
    assert!(
        ok.contains("0 corrupt") && ok.contains("0 problems"),
        "{ok}"
    );
    let victim = moto
        .keys_in(BUCKET)
        .into_iter()
        .find(|k| k.starts_with("team/blobs/sha256/"))
        .expect("a blob");
    moto.put_object(BUCKET, &victim, b"not what it was");
    let bad = check(false);
    let hex = victim.rsplit('/').next().unwrap();
    assert!(bad.contains(&format!("corrupt blob sha256:{hex}")), "{bad}");
    assert!(
        bad.contains(&format!("bucket {BUCKET} is inconsistent")),
        "{bad}"
    );
    for root in ["a", "b"] {
        let blobs = dir.path().join(root).join("blobs");
        let n = std::fs::read_dir(&blobs)
            .map(|d| d.count())
            .unwrap_or_default();
        let inner = std::fs::read_dir(blobs.join("sha256"))
            .map(|d| d.count())
            .unwrap_or_default();
        assert_eq!(inner, 0, "replica {root} keeps no blob ({n} entries)");
    }
}

#[test]
fn wrong_credentials_stop_the_registry_at_start_up() {
    let Some(moto) = Moto::start_with_auth(BUCKET) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = s3_config(dir.path(), &moto.endpoint, "");
    let err = fails_at_start(
        &dir.path().join("root"),
        &config,
        Some(("AKIAWRONGWRONGWRONG", "nope")),
    );
    assert!(err.contains(&format!("S3 bucket \"{BUCKET}\"")), "{err}");
    assert!(err.contains(&moto.endpoint), "{err}");
    assert!(err.contains("InvalidAccessKeyId"), "{err}");
    assert!(err.contains("credentials"), "{err}");
    // The right key with a wrong secret: the signature does not match.
    let err = fails_at_start(
        &dir.path().join("root"),
        &config,
        Some((&moto.keys.0, "nope")),
    );
    assert!(err.contains("SignatureDoesNotMatch"), "{err}");
    // A credentials file naming a profile it lacks.
    let creds = dir.path().join("credentials");
    std::fs::write(
        &creds,
        format!(
            "[default]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            moto.keys.0, moto.keys.1
        ),
    )
    .unwrap();
    let with_file = s3_config(
        dir.path(),
        &moto.endpoint,
        &format!(
            "credentials_file = \"{}\"\nprofile = \"ci\"\n",
            creds.display()
        ),
    );
    let err = fails_at_start(&dir.path().join("root"), &with_file, None);
    assert!(
        err.contains(&creds.display().to_string()) && err.contains("[ci]"),
        "{err}"
    );
    // Without the file's keys (none in the environment) nothing would start: a registry
    // that listens read them. moto without auth, as above.
    drop(moto);
    let Some(open) = Moto::start(BUCKET) else {
        return;
    };
    let with_file = s3_config(
        dir.path(),
        &open.endpoint,
        &format!("credentials_file = \"{}\"\n", creds.display()),
    );
    let err = fails_at_start(
        &dir.path().join("root"),
        &s3_config(dir.path(), &open.endpoint, ""),
        None,
    );
    assert!(err.contains("no S3 credentials"), "{err}");
    let r = replica(&dir.path().join("root"), &with_file, None);
    let body = run(Command::new("curl").args(["-fsS", &format!("http://{}/v2/_catalog", r.addr)]));
    assert!(body.contains("repositories"), "{body}");
}

#[test]
fn an_unreachable_endpoint_or_a_missing_bucket_stops_the_registry_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens there: the port was free a moment ago.
    let endpoint = format!("http://127.0.0.1:{}", free_port());
    let config = s3_config(dir.path(), &endpoint, "");
    let err = fails_at_start(&dir.path().join("root"), &config, Some(("AK", "SK")));
    assert!(err.contains(&endpoint), "{err}");
    assert!(err.contains("listing failed"), "{err}");
    assert!(
        err.to_lowercase().contains("connect") || err.contains("refused"),
        "{err}"
    );

    let Some(moto) = Moto::start("other-bucket") else {
        return;
    };
    let config = s3_config(dir.path(), &moto.endpoint, "");
    let err = fails_at_start(&dir.path().join("root"), &config, Some(("AK", "SK")));
    assert!(err.contains("NoSuchBucket"), "{err}");
}

/// `curl` a request; (status, response headers lowercased).
fn curl(args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "-H", "Expect:", "-o", "/dev/null", "-D", "-"])
        .args(args)
        .output()
        .expect("run curl");
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let head = String::from_utf8_lossy(&out.stdout).to_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head)
}

fn header_of(head: &str, name: &str) -> String {
    head.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .map(|v| v.trim().to_string())
        .unwrap_or_default()
}

/// Replica A is killed with -9 while a PATCH is on its way; the client asks replica B
/// where the upload stands and finishes it there.
#[test]
fn a_push_cut_by_killing_one_replica_resumes_on_another() {
    use std::io::Write;
    let Some((_moto, dir, _config, mut a, b)) = two_replicas() else {
        return;
    };
    let data: Vec<u8> = (0..12usize << 20)
        .map(|i| (i % 253) as u8 ^ (i >> 16) as u8)
        .collect();
    let first = 9usize << 20;
    let part1 = dir.path().join("part1");
    let part2 = dir.path().join("part2");
    std::fs::write(&part1, &data[..first]).unwrap();
    std::fs::write(&part2, &data[first..]).unwrap();
    let want = berth_oci::Digest::sha256(&data).to_string();

    let (status, head) = curl(&[
        "-X",
        "POST",
        &format!("http://{}/v2/team/app/blobs/uploads/", a.addr),
    ]);
    assert_eq!(status, 202, "{head}");
    let loc = header_of(&head, "location");
    let (status, head) = curl(&[
        "-X",
        "PATCH",
        "-H",
        &format!("content-range: 0-{}", first - 1),
        "--data-binary",
        &format!("@{}", part1.display()),
        &format!("http://{}{loc}", a.addr),
    ]);
    assert_eq!(status, 202, "{head}");
    assert_eq!(header_of(&head, "range"), format!("0-{}", first - 1));

    // The next chunk: a third of it sent, then A dies.
    let mut s = std::net::TcpStream::connect(&a.addr).unwrap();
    write!(
        s,
        "PATCH {loc} HTTP/1.1\r\nhost: x\r\ncontent-range: {first}-{}\r\ncontent-length: {}\r\n\r\n",
        data.len() - 1,
        data.len() - first
    )
    .unwrap();
    s.write_all(&data[first..first + (1 << 20)]).unwrap();
    s.flush().unwrap();
    let _ = a.child.kill();
    let _ = a.child.wait();
    drop(s);

    let (status, head) = curl(&[&format!("http://{}{loc}", b.addr)]);
    assert_eq!(status, 204, "{head}");
    assert_eq!(
        header_of(&head, "range"),
        format!("0-{}", first - 1),
        "B knows what A kept"
    );
    let (status, head) = curl(&[
        "-X",
        "PATCH",
        "-H",
        &format!("content-range: {first}-{}", data.len() - 1),
        "--data-binary",
        &format!("@{}", part2.display()),
        &format!("http://{}{loc}", b.addr),
    ]);
    assert_eq!(status, 202, "{head}");
    let (status, head) = curl(&[
        "-X",
        "PUT",
        &format!("http://{}{loc}?digest={want}", b.addr),
    ]);
    assert_eq!(status, 201, "{head}");
    let out = dir.path().join("blob");
    run(Command::new("curl")
        .arg("-fsSo")
        .arg(&out)
        .arg(format!("http://{}/v2/team/app/blobs/{want}", b.addr)));
    assert!(
        std::fs::read(&out).unwrap() == data,
        "the blob is the bytes sent"
    );
}

/// docker pulls through replica B what skopeo pushed through A, pushes it back through B
/// to another repository, and A serves that push by the digest docker printed.
#[test]
fn docker_pulls_and_pushes_across_replicas() {
    if !require("skopeo") || !require_docker() {
        return;
    }
    let Some((_moto, dir, _config, a, b)) = two_replicas() else {
        return;
    };
    let src = dir.path().join("src");
    busybox_layout(&src, "v1");
    run(&mut skopeo_copy(
        &format!("oci:{}:v1", src.display()),
        &format!("docker://{}/team/busybox:v1", a.addr),
        &[],
    ));
    let d = docker();
    let from_b = format!("{}/team/busybox:v1", b.addr);
    run(Command::new(d).args(["pull", &from_b]));
    let out = run(Command::new(d).args([
        "run",
        "--rm",
        "--network=none",
        &from_b,
        "echo",
        "pulled through B",
    ]));
    assert_eq!(out.trim(), "pulled through B");
    let pushed = format!("{}/team/pushed:latest", b.addr);
    run(Command::new(d).args(["tag", &from_b, &pushed]));
    let out = run(Command::new(d).args(["push", &pushed]));
    let digest = out
        .split_whitespace()
        .skip_while(|w| *w != "digest:")
        .nth(1)
        .unwrap_or_else(|| panic!("docker push printed no digest: {out}"))
        .to_string();
    run(Command::new(d).args(["rmi", "-f", &pushed, &from_b]));
    let raw = run(Command::new("skopeo").args([
        "inspect",
        "--tls-verify=false",
        "--format",
        "{{.Digest}}",
        &format!("docker://{}/team/pushed:latest", a.addr),
    ]));
    assert_eq!(raw.trim(), digest, "A serves what docker pushed through B");
    let by_digest = format!("{}/team/pushed@{digest}", a.addr);
    run(Command::new(d).args(["pull", &by_digest]));
    run(Command::new(d).args(["rmi", "-f", &by_digest]));
}
