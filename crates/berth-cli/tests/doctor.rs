//! `berth doctor` against broken setups made of real parts on loopback (berth's registry
//! with TLS and basic auth, Debian's tinyproxy, the machine's dockerd seen from another
//! network namespace, a satellite enrollment whose certificate expired): each failure is
//! named with its fix, and a healthy setup passes with exit status 0. And `berth config
//! show` naming where each value came from.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::tinyproxy::Proxy;
use common::*;
use serde_json::Value;

/// A machine of its own for berth: config file, HOME (Docker's config.json) and
/// XDG_CONFIG_HOME (enrolled satellites) under `dir`.
struct Machine {
    dir: PathBuf,
}

impl Machine {
    fn new(dir: &Path, config: &str) -> Machine {
        std::fs::create_dir_all(dir.join("xdg/berth")).unwrap();
        std::fs::write(dir.join("config.toml"), config).unwrap();
        Machine {
            dir: dir.to_path_buf(),
        }
    }

    fn berth(&self, program: Option<Command>) -> Command {
        let mut c = program.unwrap_or_else(|| Command::new(berth_bin()));
        c.arg("--config")
            .arg(self.dir.join("config.toml"))
            .arg("--root")
            .arg(self.dir.join("root"))
            .env("HOME", &self.dir)
            .env("XDG_CONFIG_HOME", self.dir.join("xdg"))
            .env_remove("DOCKER_CONFIG");
        for v in ["HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY"] {
            c.env_remove(v).env_remove(v.to_ascii_lowercase());
        }
        c
    }

    /// `berth doctor --json --only AREAS`: whether it passed, and its checks.
    fn doctor(&self, only: &str) -> (bool, Vec<Value>) {
        self.doctor_in(None, only)
    }

    fn doctor_in(&self, program: Option<Command>, only: &str) -> (bool, Vec<Value>) {
        let out = self
            .berth(program)
            .args(["doctor", "--json", "--only", only])
            .output()
            .expect("run berth doctor");
        let text = String::from_utf8_lossy(&out.stdout);
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| {
            panic!(
                "doctor printed no JSON ({e}): {text}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        let checks = v["checks"].as_array().unwrap().clone();
        let failures = checks.iter().filter(|c| c["status"] == "fail").count();
        assert_eq!(v["failures"], failures, "{v:#}");
        // Exit status follows the failures; warnings do not fail.
        assert_eq!(out.status.success(), failures == 0, "{v:#}");
        (out.status.success(), checks)
    }
}

/// The check whose name ends with `suffix`.
fn check<'a>(checks: &'a [Value], suffix: &str) -> &'a Value {
    checks
        .iter()
        .find(|c| c["check"].as_str().unwrap().ends_with(suffix))
        .unwrap_or_else(|| panic!("no check {suffix:?} in {checks:#?}"))
}

fn text(v: &Value, field: &str) -> String {
    v[field].as_str().unwrap_or_default().to_owned()
}

#[test]
fn a_registry_with_a_wrong_ca_is_named_with_its_fix() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, crt, key) = make_tls(&dir.path().join("tls"));
    let (other_ca, _, _) = make_tls(&dir.path().join("other"));
    let reg = Berth::serve(
        &dir.path().join("registry"),
        &[
            "--tls-cert",
            crt.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    let config = |ca: &Path| format!("[registries.\"{}\"]\nca = \"{}\"\n", reg.addr, ca.display());
    let m = Machine::new(&dir.path().join("wrong"), &config(&other_ca));
    let (ok, checks) = m.doctor("registries");
    assert!(!ok);
    let tls = check(&checks, " tls");
    assert_eq!(tls["status"], "fail", "{tls:#}");
    assert!(text(tls, "detail").contains("certificate"), "{tls:#}");
    assert!(
        text(tls, "fix").contains(&format!(
            "ca = \"/path/ca.pem\" under [registries.\"{}\"]",
            reg.addr
        )),
        "{tls:#}"
    );
    // DNS and TCP went well: the table points at TLS, not at the network.
    assert_eq!(check(&checks, " tcp")["status"], "ok");

    let m = Machine::new(&dir.path().join("right"), &config(&ca));
    let (ok, checks) = m.doctor("registries");
    assert!(ok, "{checks:#?}");
    assert_eq!(
        text(check(&checks, " tls"), "detail"),
        "certificate verified"
    );
    assert_eq!(
        text(check(&checks, " api"), "detail"),
        "GET /v2/ answered 200"
    );

    // The CA as a bundle of [network] serves as well; a bundle that is missing is named.
    let missing = dir.path().join("no-such-ca.pem");
    let m = Machine::new(
        &dir.path().join("bundle"),
        &format!(
            "[network]\nca = [\"{}\", \"{}\"]\n[registries.\"{}\"]\n",
            ca.display(),
            missing.display(),
            reg.addr
        ),
    );
    let (ok, checks) = m.doctor("network");
    assert!(!ok);
    let bundle = check(&checks, &format!("CA bundle {}", missing.display()));
    assert_eq!(bundle["status"], "fail", "{bundle:#}");
    assert!(text(bundle, "fix").contains("[network] ca"), "{bundle:#}");
    let good = check(&checks, &format!("CA bundle {}", ca.display()));
    assert_eq!(text(good, "detail"), "1 certificates");
    std::fs::copy(&ca, &missing).unwrap();
    let (ok, checks) = m.doctor("network,registries");
    assert!(ok, "{checks:#?}");
    assert_eq!(
        text(check(&checks, " tls"), "detail"),
        "certificate verified"
    );
}

#[test]
fn wrong_credentials_are_named_and_right_ones_accepted() {
    if !require("htpasswd") || !require("base64") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let reg = serve_with_user(dir.path(), "alice", "s3cret");
    let config = format!("[registries.\"{}\"]\nhttp = true\n", reg.addr);
    let with_password = |name: &str, password: &str| {
        let m = Machine::new(&dir.path().join(name), &config);
        let auth =
            run(Command::new("sh")
                .args(["-c", &format!("printf %s 'alice:{password}' | base64 -w0")]));
        std::fs::create_dir_all(m.dir.join(".docker")).unwrap();
        std::fs::write(
            m.dir.join(".docker/config.json"),
            format!(
                "{{\"auths\":{{\"{}\":{{\"auth\":\"{}\"}}}}}}",
                reg.addr,
                auth.trim()
            ),
        )
        .unwrap();
        m.doctor("registries")
    };
    let (ok, checks) = with_password("wrong", "guess");
    assert!(!ok);
    let creds = check(&checks, " credentials");
    assert_eq!(creds["status"], "fail", "{creds:#}");
    assert!(
        text(creds, "detail").contains("refused for alice"),
        "{creds:#}"
    );
    assert!(
        text(creds, "fix").contains(&format!("berth login {}", reg.addr)),
        "{creds:#}"
    );
    assert_eq!(check(&checks, " api")["status"], "ok");

    let (ok, checks) = with_password("right", "s3cret");
    assert!(ok, "{checks:#?}");
    assert_eq!(
        text(check(&checks, " credentials"), "detail"),
        "accepted for alice"
    );

    // None at all: a warning that says how to log in, not a failure.
    let m = Machine::new(&dir.path().join("none"), &config);
    let (ok, checks) = m.doctor("registries");
    assert!(ok, "{checks:#?}");
    assert_eq!(check(&checks, " credentials")["status"], "warn");
}

/// The check of mirror `prefix` whose step is `step`.
fn mirror_check<'a>(checks: &'a [Value], prefix: &str, step: &str) -> &'a Value {
    checks
        .iter()
        .find(|c| {
            let name = c["check"].as_str().unwrap();
            name.starts_with(&format!("mirror {prefix} (")) && name.ends_with(&format!(" {step}"))
        })
        .unwrap_or_else(|| panic!("no check {step} of mirror {prefix} in {checks:#?}"))
}

#[test]
fn pull_through_upstreams_are_probed_with_their_own_ca_and_credentials() {
    if !require("htpasswd") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (up, ca) = serve_tls_with_user(&dir.path().join("up"), "puller", "s3cret");
    let (other_ca, _, _) = make_tls(&dir.path().join("other"));
    let mirror = |prefix: &str, ca: &Path, var: &str| {
        format!(
            "[[registry.mirror]]\nprefix = \"{prefix}\"\nupstream = \"https://{}\"\n\
             username = \"puller\"\npassword_env = \"{var}\"\nca = \"{}\"\n",
            up.addr,
            ca.display()
        )
    };
    let doctor = |m: &Machine| {
        let mut c = Command::new(berth_bin());
        c.env("GOOD_PASSWORD", "s3cret")
            .env_remove("UNSET_PASSWORD");
        m.doctor_in(Some(c), "registries")
    };

    // One healthy mirror: every step passes, with the entry's CA and credentials.
    let m = Machine::new(
        &dir.path().join("good"),
        &mirror("good", &ca, "GOOD_PASSWORD"),
    );
    let (ok, checks) = doctor(&m);
    assert!(ok, "{checks:#?}");
    assert_eq!(
        text(mirror_check(&checks, "good", "tls"), "detail"),
        "certificate verified"
    );
    assert_eq!(
        text(mirror_check(&checks, "good", "credentials"), "detail"),
        "accepted for puller"
    );

    // Beside it, one whose CA did not sign the upstream's certificate and one whose
    // password variable is unset: each named with the fix in its own entry.
    let config = format!(
        "{}{}{}",
        mirror("good", &ca, "GOOD_PASSWORD"),
        mirror("wrongca", &other_ca, "GOOD_PASSWORD"),
        mirror("nopass", &ca, "UNSET_PASSWORD")
    );
    let m = Machine::new(&dir.path().join("broken"), &config);
    let (ok, checks) = doctor(&m);
    assert!(!ok);
    assert_eq!(mirror_check(&checks, "good", "credentials")["status"], "ok");

    let tls = mirror_check(&checks, "wrongca", "tls");
    assert_eq!(tls["status"], "fail", "{tls:#}");
    assert!(text(tls, "detail").contains("certificate"), "{tls:#}");
    let fix = text(tls, "fix");
    assert!(
        fix.contains("[[registry.mirror]] entry with prefix = \"wrongca\"")
            && fix.contains(&format!("its ca = \"{}\"", other_ca.display())),
        "{tls:#}"
    );
    assert_eq!(mirror_check(&checks, "wrongca", "tcp")["status"], "ok");

    let creds = mirror_check(&checks, "nopass", "credentials");
    assert_eq!(creds["status"], "fail", "{creds:#}");
    assert!(
        text(creds, "detail").contains("UNSET_PASSWORD"),
        "{creds:#}"
    );
    assert!(
        text(creds, "fix").contains("export UNSET_PASSWORD="),
        "{creds:#}"
    );
    // Its upstream itself answers: only the credentials are named.
    assert_eq!(mirror_check(&checks, "nopass", "tls")["status"], "ok");
    let failed: Vec<&str> = checks
        .iter()
        .filter(|c| c["status"] == "fail")
        .map(|c| c["check"].as_str().unwrap())
        .collect();
    assert_eq!(failed.len(), 2, "{failed:?}");
}

#[test]
fn a_proxy_that_is_down_is_named_and_a_healthy_setup_passes() {
    if !require("tinyproxy") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let reg = Berth::serve(&dir.path().join("registry"), &[]);
    // A port nothing listens on: the proxy is down.
    let down = format!("http://127.0.0.1:{}", free_port());
    let m = Machine::new(
        &dir.path().join("down"),
        &format!(
            "[network]\nhttps_proxy = \"{down}\"\nhttp_proxy = \"{down}\"\n\
             [registries.\"{}\"]\nhttp = true\n",
            reg.addr
        ),
    );
    let (ok, checks) = m.doctor("network,registries");
    assert!(!ok);
    let p = check(&checks, &format!("proxy {down}"));
    assert_eq!(p["status"], "fail", "{p:#}");
    assert!(text(p, "detail").contains("refused"), "{p:#}");
    assert!(text(p, "fix").contains("correct https_proxy"), "{p:#}");
    // The registry behind it fails too, and its fix points at the proxy.
    let api = check(&checks, &format!("{} api", reg.addr));
    assert_eq!(api["status"], "fail", "{api:#}");
    assert!(
        text(api, "fix").contains(&format!("went through the proxy {down}")),
        "{api:#}"
    );

    // tinyproxy up, and the registry reached through it (its log proves it): every
    // check of every area passes.
    let proxy = Proxy::start(dir.path());
    let url = format!("http://{}", proxy.addr);
    let m = Machine::new(
        &dir.path().join("healthy"),
        &format!(
            "[network]\nhttp_proxy = \"{url}\"\nhttps_proxy = \"{url}\"\n\
             [registries.\"{}\"]\nhttp = true\n",
            reg.addr
        ),
    );
    let docker = require_docker();
    let areas = if docker {
        "network,registries,docker,host,satellites"
    } else {
        "network,registries,host,satellites"
    };
    let (ok, checks) = m.doctor(areas);
    assert!(ok, "{checks:#?}");
    assert!(
        text(check(&checks, &format!("proxy {url}")), "detail").starts_with("answers (HTTP/1."),
        "{checks:#?}"
    );
    assert!(text(check(&checks, " proxy"), "detail").contains(&url));
    assert_eq!(check(&checks, " api")["status"], "ok");
    assert!(
        proxy.requests_to(&reg.addr) > 0,
        "the probe did not cross the proxy"
    );
    for name in ["runc", "overlayfs", "user namespaces", "cgroups"] {
        assert_eq!(check(&checks, name)["status"], "ok", "{name}");
    }
    if docker {
        assert_eq!(check(&checks, "reaches berth's 127.0.0.1")["status"], "ok");
    }
    assert_eq!(
        text(check(&checks, "satellites"), "detail"),
        "none enrolled"
    );
    // The table, for people, carries the same verdicts.
    let out = m
        .berth(None)
        .args(["doctor", "--only", "network"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains(&format!("proxy {url}")) && table.contains("0 failed"),
        "{table}"
    );
}

#[test]
fn a_daemon_that_cannot_reach_berths_loopback_is_named() {
    if !require_docker() || !require("nsenter") || !require("ip") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let m = Machine::new(dir.path(), "");
    // berth in a network namespace of its own, dockerd in the machine's: their
    // 127.0.0.1 differ, as for berth in a container or dockerd elsewhere (Earthly's
    // "connection refused" on its registry mirror).
    let mut lab = berth_testutil::netns::Lab::new("doctor");
    let host = lab.host("berth");
    let (ok, checks) = m.doctor_in(Some(host.command(berth_bin())), "docker");
    assert!(!ok);
    assert_eq!(check(&checks, "daemon")["status"], "ok", "{checks:#?}");
    let reach = check(&checks, "reaches berth's 127.0.0.1");
    assert_eq!(reach["status"], "fail", "{reach:#}");
    assert!(
        text(reach, "detail").contains("never connected"),
        "{reach:#}"
    );
    assert!(
        text(reach, "fix").contains("registry_proxy = false"),
        "{reach:#}"
    );

    // The same daemon from the machine's own namespace passes.
    let (ok, checks) = m.doctor("docker");
    assert!(ok, "{checks:#?}");
}

/// A client identity (key 0600, certificate) valid from `from` to `to` days from now,
/// signed by a fresh CA, kept as an enrollment would keep it.
fn enroll_by_hand(m: &Machine, name: &str, address: &str, from: i64, to: i64) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    use std::os::unix::fs::PermissionsExt;
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let day = |d: i64| {
        rcgen::date_time_ymd(1970, 1, 1)
            + std::time::Duration::from_secs(((now / 86400 + d) * 86400) as u64)
    };
    params.not_before = day(from);
    params.not_after = day(to);
    let cert = params.signed_by(&key, &issuer).unwrap();
    let d = m.dir.join("xdg/berth/satellites").join(name);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(
        d.join("satellite.json"),
        format!(
            "{{\"name\":\"{name}\",\"address\":\"{address}\",\"satellite\":\"sat\",\"client\":\"me\"}}"
        ),
    )
    .unwrap();
    std::fs::write(d.join("ca.crt"), ca.pem()).unwrap();
    std::fs::write(d.join("client.crt"), cert.pem()).unwrap();
    std::fs::write(d.join("client.key"), key.serialize_pem()).unwrap();
    std::fs::set_permissions(d.join("client.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
}

#[test]
fn an_expired_and_unreachable_satellite_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let m = Machine::new(dir.path(), "");
    let closed = format!("127.0.0.1:{}", free_port());
    enroll_by_hand(&m, "old", &closed, -40, -10);
    enroll_by_hand(&m, "young", &closed, -1, 29);
    let (ok, checks) = m.doctor("satellites");
    assert!(!ok);
    let cert = check(&checks, "old certificate");
    assert_eq!(cert["status"], "fail", "{cert:#}");
    assert!(
        text(cert, "detail").starts_with("expired 10 days ago")
            || text(cert, "detail").starts_with("expired 9 days ago"),
        "{cert:#}"
    );
    assert!(
        text(cert, "fix").contains("berth satellite add old --token"),
        "{cert:#}"
    );
    let young = check(&checks, "young certificate");
    assert_eq!(young["status"], "ok", "{young:#}");
    assert!(
        text(young, "detail").starts_with("expires in 2"),
        "{young:#}"
    );
    for name in ["old", "young"] {
        let reach = check(&checks, &format!("{name} reachable"));
        assert_eq!(reach["status"], "fail", "{reach:#}");
        assert!(text(reach, "detail").contains(&closed), "{reach:#}");
        assert!(
            text(reach, "fix").contains(&format!("is the satellite running at {closed}")),
            "{reach:#}"
        );
    }
}

#[test]
fn config_show_names_file_env_and_flag() {
    let dir = tempfile::tempdir().unwrap();
    let m = Machine::new(
        dir.path(),
        "[network]\nhttp_proxy = \"http://file-proxy:3128\"\nno_proxy = [\".corp\"]\n\
         [registry]\naddr = \"127.0.0.1:7000\"\nmirror_max_size = \"3MB\"\n\
         [[registry.mirror]]\nprefix = \"hub\"\nupstream = \"https://registry-1.docker.io\"\n\
         default = true\nusername = \"ci\"\npassword_env = \"HUB_TOKEN\"\n\
         ca = \"/etc/berth/hub-ca.pem\"\ntag_ttl = \"10m\"\n",
    );
    let out = m
        .berth(None)
        .args(["config", "show", "--format", "json"])
        .env("HTTPS_PROXY", "http://env-proxy:8080")
        .env("NO_PROXY", "localhost")
        .env("HUB_TOKEN", "never-shown-token")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let entries: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let source = |key: &str, value: &str| {
        let e = entries
            .iter()
            .find(|e| e["key"] == key && e["value"] == value)
            .unwrap_or_else(|| panic!("no {key} = {value} in {entries:#?}"));
        format!(
            "{} {}",
            e["source"]["kind"].as_str().unwrap(),
            e["source"]["name"].as_str().unwrap_or("")
        )
    };
    let file = format!("file {}", m.dir.join("config.toml").display());
    let root = m.dir.join("root").display().to_string();
    assert_eq!(source("root", &root), "flag --root");
    assert_eq!(source("config", &file[5..]), "flag --config");
    assert_eq!(source("network.http_proxy", "http://file-proxy:3128"), file);
    assert_eq!(
        source("network.https_proxy", "http://env-proxy:8080"),
        "env HTTPS_PROXY"
    );
    assert_eq!(source("network.no_proxy", "localhost"), "env NO_PROXY");
    assert_eq!(source("network.no_proxy", ".corp"), file);
    assert_eq!(source("registry.addr", "127.0.0.1:7000"), file);
    let delete = entries
        .iter()
        .find(|e| e["key"] == "registry.delete")
        .unwrap();
    assert_eq!(delete["source"]["kind"], "default");

    // Every [[registry.mirror]] field and the cache's cap, a password by its variable only.
    for (key, value) in [
        ("registry.mirror[0].prefix", "hub"),
        (
            "registry.mirror[0].upstream",
            "https://registry-1.docker.io",
        ),
        ("registry.mirror[0].username", "ci"),
        ("registry.mirror[0].password_env", "HUB_TOKEN"),
        ("registry.mirror[0].ca", "/etc/berth/hub-ca.pem"),
        ("registry.mirror[0].tag_ttl", "10m"),
    ] {
        assert_eq!(source(key, value), file, "{key}");
    }
    let value = |key: &str| {
        let e = entries.iter().find(|e| e["key"] == key);
        e.unwrap_or_else(|| panic!("no {key} in {entries:#?}"))
            .clone()
    };
    assert_eq!(value("registry.mirror[0].default")["value"], true);
    assert_eq!(
        value("registry.mirror[0].insecure")["source"]["kind"],
        "default"
    );
    assert_eq!(value("registry.mirror_max_size")["value"], 3_000_000);
    assert_eq!(value("registry.mirror_max_size")["source"]["kind"], "file");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("never-shown-token"),
        "config show printed a password"
    );

    // The root from BERTH_ROOT, and the table for people.
    let out = Command::new(berth_bin())
        .args(["config", "show"])
        .env("BERTH_ROOT", &root)
        .env("XDG_CONFIG_HOME", m.dir.join("xdg"))
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    let line = table.lines().find(|l| l.starts_with("root ")).unwrap();
    assert!(
        line.contains(&root) && line.ends_with("env BERTH_ROOT"),
        "{table}"
    );
    let out = m.berth(None).args(["config", "show"]).output().unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    let line = table
        .lines()
        .find(|l| l.starts_with("registry.mirror[0].upstream "))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(line.contains("https://registry-1.docker.io"), "{table}");
}

#[test]
fn an_enrolled_satellite_answers_and_is_reported_when_it_stops() {
    if !require_build() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let m = Machine::new(&dir.path().join("client"), "");
    let mut sat = common::satellite::Sat::on_loopback(&dir.path().join("sat-root"), &[]);
    let client = common::satellite::Client {
        host: None,
        cfg: m.dir.join("xdg"),
        root: m.dir.join("root"),
        name: "laptop".into(),
    };
    let added = client.add("s1", &sat.token(&[]));
    assert!(added.success, "{}", added.stderr);
    let (ok, checks) = m.doctor("satellites");
    assert!(ok, "{checks:#?}");
    let reach = check(&checks, "s1 reachable");
    assert!(
        text(reach, "detail").contains("satellite sat1"),
        "{reach:#}"
    );
    assert!(
        text(check(&checks, "s1 certificate"), "detail").starts_with("expires in "),
        "{checks:#?}"
    );

    sat.kill9();
    let (ok, checks) = m.doctor("satellites");
    assert!(!ok);
    let reach = check(&checks, "s1 reachable");
    assert_eq!(reach["status"], "fail", "{reach:#}");
    assert!(text(reach, "fix").contains(&sat.addr), "{reach:#}");
}
