//! A deploy host pulls what a satellite built straight from the satellite (issue 8, item 5):
//! with `docker login` credentials from `berth satellite token create --pull`, or with an
//! enrolled client's certificate (Docker's `certs.d`, skopeo's `--cert-dir`).
//!
//! The satellite runs in a network namespace joined by a veth pair to the machine's own
//! namespace, where the real dockerd runs: the machine is the deploy host (and, with a
//! config directory of its own, the client that asks for the build). Docker trusts the
//! satellite's CA through `/etc/docker/certs.d/<host:port>/ca.crt`, a directory this test
//! adds and removes; credentials go to a temporary DOCKER_CONFIG.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use berth_testutil::netns::{Host, Lab};
use common::*;

const SAT_IP: &str = "10.78.0.2";
const PORT: &str = "8372";

/// `berth satellite serve` inside `host`, killed on drop.
struct Sat {
    child: Child,
    root: PathBuf,
}

impl Sat {
    fn start(host: &Host, root: &Path) -> Sat {
        let mut child = host
            .command(berth_bin())
            .arg("--root")
            .arg(root)
            .args([
                "satellite",
                "serve",
                "--name",
                "sat1",
                "--advertise",
                SAT_IP,
            ])
            .arg("--addr")
            .arg(format!("{SAT_IP}:{PORT}"))
            .env("BERTH_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn berth satellite serve");
        let mut reader = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        reader.read_line(&mut line).expect("read the first line");
        assert!(
            line.contains(&format!("tokens name {SAT_IP}:{PORT}")),
            "the satellite did not start as expected: {line:?}"
        );
        std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
        Sat {
            child,
            root: root.to_path_buf(),
        }
    }

    /// `berth satellite ARGS` on the satellite's root (its operator, on its host).
    fn admin(&self, args: &[&str]) -> Output {
        output(
            Command::new(berth_bin())
                .arg("--root")
                .arg(&self.root)
                .arg("satellite")
                .args(args),
        )
    }
}

impl Drop for Sat {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `/etc/docker/certs.d/<host:port>/` holding the satellite's CA, removed on drop (and
/// `certs.d` itself when this test made it and it is empty again).
struct CertsD {
    dir: PathBuf,
    made_parent: bool,
}

impl CertsD {
    fn install(addr: &str, ca_pem: &str) -> CertsD {
        let parent = Path::new("/etc/docker/certs.d");
        let dir = parent.join(addr);
        assert!(
            !dir.exists(),
            "{} exists already: another test run uses it, or a killed run left it \
             (remove it if so)",
            dir.display()
        );
        let made_parent = !parent.exists();
        std::fs::create_dir_all(&dir).unwrap();
        let guard = CertsD { dir, made_parent };
        std::fs::write(guard.dir.join("ca.crt"), ca_pem).unwrap();
        guard
    }
}

impl Drop for CertsD {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        if self.made_parent {
            let _ = std::fs::remove_dir(self.dir.parent().unwrap());
        }
    }
}

/// The docker client with its own credentials store.
fn docker_cmd(config: &Path) -> Command {
    let mut c = Command::new(docker());
    c.env("DOCKER_CONFIG", config);
    c
}

fn docker_login(config: &Path, addr: &str, user: &str, password: &str) -> Output {
    let mut child = docker_cmd(config)
        .args(["login", addr, "--username", user, "--password-stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn docker login");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(password.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    Output {
        success: out.status.success(),
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `skopeo inspect --raw` of `image` with `user`/`password`, trusting `cert_dir`.
fn skopeo_inspect(image: &str, cert_dir: &Path, user: &str, password: &str) -> Output {
    output(
        Command::new("skopeo")
            .args(["inspect", "--raw", "--cert-dir"])
            .arg(cert_dir)
            .args(["--creds", &format!("{user}:{password}")])
            .arg(format!("docker://{image}")),
    )
}

#[test]
fn deploy_host_pulls_from_the_satellite_with_a_pull_token_or_a_client_certificate() {
    if !require_build() || !require("ip") || !require("skopeo") || !require_docker() {
        return;
    }
    let base = BuildBase::new();
    let dir = tempfile::tempdir().unwrap();
    let mut lab = Lab::new("pull");
    let sat_ns = lab.host("sat");
    lab.link_root(&sat_ns, "10.78.0.1/24", &format!("{SAT_IP}/24"));
    let sat = Sat::start(&sat_ns, &dir.path().join("sat-root"));
    let addr = format!("{SAT_IP}:{PORT}");

    // A client enrolls and builds app:1 on the satellite.
    let client_cfg = dir.path().join("client-config");
    let client = |args: &[&str]| {
        let mut c = Command::new(berth_bin());
        c.env("XDG_CONFIG_HOME", &client_cfg)
            .env("BERTH_LOG", "warn")
            .env("SOURCE_DATE_EPOCH", "0")
            .arg("--root")
            .arg(dir.path().join("client-root"))
            .args(args);
        c
    };
    let enroll = sat.admin(&["token", "create"]);
    assert!(enroll.success, "{}", enroll.stderr);
    let enroll_token = enroll.stdout.trim().to_string();
    output_ok(&mut client(&[
        "satellite",
        "add",
        "sat",
        "--token",
        &enroll_token,
        "--client-name",
        "laptop",
    ]));
    let ctx = dir.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        format!(
            "FROM {}\nRUN echo built on the satellite > /msg\nCMD [\"cat\", \"/msg\"]\n",
            base.reference()
        ),
    )
    .unwrap();
    let built = output_ok(client(&["build", "--progress", "plain", "-t", "app:1"]).arg(&ctx));
    let manifest = built.manifest();

    // The operator makes a pull token and hands out the CA certificate.
    let pull = sat.admin(&[
        "token", "create", "--pull", "--ttl", "30d", "--format", "json",
    ]);
    assert!(pull.success, "{}", pull.stderr);
    let creds: serde_json::Value = serde_json::from_str(pull.stdout.trim())
        .unwrap_or_else(|e| panic!("token create --format json: {e}: {}", pull.stdout));
    assert_eq!(creds["registry"], addr.as_str(), "{creds}");
    let user = creds["username"].as_str().unwrap().to_string();
    let password = creds["password"].as_str().unwrap().to_string();
    let id = user
        .strip_prefix("berth-")
        .expect("user berth-<id>")
        .to_string();
    // The text form, for shell scripts: three `name: value` lines.
    let text = sat.admin(&["token", "create", "--pull"]);
    let lines: Vec<&str> = text.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", text.stdout);
    assert_eq!(lines[0], format!("registry: {addr}"));
    assert!(lines[1].starts_with("username: berth-") && lines[2].starts_with("password: "));
    let refused = sat.admin(&["token", "create", "--pull", "--uses", "2"]);
    assert!(!refused.success && refused.stderr.contains("--uses does not apply"));
    let ls = sat.admin(&["token", "ls"]);
    assert!(
        ls.stdout
            .lines()
            .any(|l| l.starts_with(&id) && l.contains("pull") && l.contains("usable")),
        "{}",
        ls.stdout
    );
    let ca = sat.admin(&["ca"]);
    assert!(ca.success && ca.stdout.starts_with("-----BEGIN CERTIFICATE-----"));
    let _certs = CertsD::install(&addr, &ca.stdout);
    // The same for skopeo: a --cert-dir with the CA alone.
    let ca_only = dir.path().join("ca-only");
    std::fs::create_dir_all(&ca_only).unwrap();
    std::fs::write(ca_only.join("ca.crt"), &ca.stdout).unwrap();

    // The deploy host: docker login, pull, run.
    let docker_cfg = dir.path().join("docker-config");
    std::fs::create_dir_all(&docker_cfg).unwrap();
    let image = format!("{addr}/app:1");
    let _images = DockerImages(vec![image.clone(), format!("{addr}/pushed:1")]);
    let login = docker_login(&docker_cfg, &addr, &user, &password);
    assert!(login.success, "docker login: {}", login.stderr);
    let pulled = output_ok(docker_cmd(&docker_cfg).args(["pull", &image]));
    assert!(
        pulled.stdout.contains(&manifest),
        "docker pulled another manifest than the build made ({manifest}):\n{}",
        pulled.stdout
    );
    let ran = output_ok(docker_cmd(&docker_cfg).args(["run", "--rm", &image]));
    assert_eq!(ran.stdout.trim(), "built on the satellite");

    // A pull token never pushes; the refusal names the token kind.
    output_ok(docker_cmd(&docker_cfg).args(["tag", &image, &format!("{addr}/pushed:1")]));
    let push = output(docker_cmd(&docker_cfg).args(["push", &format!("{addr}/pushed:1")]));
    assert!(!push.success, "a pull token pushed: {}", push.stdout);
    let said = format!("{}{}", push.stdout, push.stderr);
    assert!(
        said.contains("denied") && said.contains("pull token"),
        "the refusal does not say why: {said}"
    );

    // An enrollment token is not a pull token. (docker login shows only the status;
    // skopeo shows the registry's message.)
    let (enroll_id, rest) = enroll_token
        .trim_start_matches("berth-")
        .split_once('.')
        .unwrap();
    let enroll_user = format!("berth-{enroll_id}");
    let enroll_secret = rest.split('@').next().unwrap();
    let other_cfg = dir.path().join("other-config");
    let wrong_kind = docker_login(&other_cfg, &addr, &enroll_user, enroll_secret);
    assert!(!wrong_kind.success, "docker login with an enrollment token");
    assert!(wrong_kind.stderr.contains("401"), "{}", wrong_kind.stderr);
    let wrong_kind = skopeo_inspect(&image, &ca_only, &enroll_user, enroll_secret);
    assert!(!wrong_kind.success);
    assert!(
        wrong_kind.stderr.contains("docker login` cannot use"),
        "{}",
        wrong_kind.stderr
    );

    // skopeo with the enrolled client's certificate (Docker's certs.d layout) pulls too.
    let cert_dir = dir.path().join("cert-dir");
    std::fs::create_dir_all(&cert_dir).unwrap();
    let enrolled = client_cfg.join("berth/satellites/sat");
    std::fs::copy(enrolled.join("ca.crt"), cert_dir.join("ca.crt")).unwrap();
    std::fs::copy(enrolled.join("client.crt"), cert_dir.join("client.cert")).unwrap();
    std::fs::copy(enrolled.join("client.key"), cert_dir.join("client.key")).unwrap();
    let layout = dir.path().join("copied");
    output_ok(
        Command::new("skopeo")
            .args(["copy", "--src-cert-dir"])
            .arg(&cert_dir)
            .arg(format!("docker://{image}"))
            .arg(format!("oci:{}:1", layout.display())),
    );
    assert_eq!(layout_digest(&layout), manifest);
    // Trusting the CA but without a certificate or credentials, skopeo is refused.
    let anonymous = output(
        Command::new("skopeo")
            .args(["inspect", "--raw", "--cert-dir"])
            .arg(&ca_only)
            .arg(format!("docker://{image}"))
            .env("REGISTRY_AUTH_FILE", dir.path().join("no-auth.json")),
    );
    assert!(!anonymous.success, "skopeo pulled anonymously");
    // containers/image shows the spec's default message ("authentication required")
    // as the bare code.
    assert!(
        anonymous.stderr.contains("unauthorized")
            && !anonymous.stderr.contains("authentication failed"),
        "{}",
        anonymous.stderr
    );

    // Revoked: refused at once, and the message says so.
    let revoke = sat.admin(&["token", "revoke", &id]);
    assert!(revoke.success, "{}", revoke.stderr);
    let refused = output(docker_cmd(&docker_cfg).args(["pull", &image]));
    assert!(!refused.success, "a revoked token pulled");
    assert!(refused.stderr.contains("revoked"), "{}", refused.stderr);
    let relogin = docker_login(&docker_cfg, &addr, &user, &password);
    assert!(!relogin.success, "docker login with a revoked token");
    let revoked = skopeo_inspect(&image, &ca_only, &user, &password);
    assert!(!revoked.success);
    assert!(
        revoked
            .stderr
            .contains(&format!("pull token {id} was revoked")),
        "{}",
        revoked.stderr
    );

    // No credentials at all: refused.
    output_ok(docker_cmd(&docker_cfg).args(["logout", &addr]));
    let anonymous = output(docker_cmd(&docker_cfg).args(["pull", &image]));
    assert!(!anonymous.success, "an anonymous pull succeeded");
    assert!(
        anonymous.stderr.contains("authentication required")
            || anonymous.stderr.contains("no basic auth credentials"),
        "{}",
        anonymous.stderr
    );

    // Docker with the client certificate in certs.d pulls without logging in.
    let certs_d = Path::new("/etc/docker/certs.d").join(&addr);
    std::fs::copy(cert_dir.join("client.cert"), certs_d.join("client.cert")).unwrap();
    std::fs::copy(cert_dir.join("client.key"), certs_d.join("client.key")).unwrap();
    output_ok(docker_cmd(&docker_cfg).args(["rmi", &image, &format!("{addr}/pushed:1")]));
    let pulled = output_ok(docker_cmd(&docker_cfg).args(["pull", &image]));
    assert!(pulled.stdout.contains(&manifest), "{}", pulled.stdout);
    drop(sat);
}
