//! The one network configuration (berth-net) through `berth build`: base-image pulls go
//! through a real forward proxy (Debian's tinyproxy, whose log proves which requests
//! crossed it) unless NO_PROXY (a CIDR, a host:port, merged from the environment and
//! config.toml) says otherwise, and RUN steps see the proxy variables in both cases.
//! Everything on 127.0.0.1.

mod common;

use std::process::Command;

use common::tinyproxy::Proxy;
use common::*;

/// `berth registry serve` under `dir`, holding busybox as `base/busybox:v1`.
fn registry_with_busybox(dir: &std::path::Path) -> Berth {
    let reg = Berth::serve(&dir.join("registry"), &[]);
    let layout = dir.join("layout");
    busybox_layout(&layout, "v1");
    run(&mut skopeo_copy(
        &format!("oci:{}:v1", layout.display()),
        &format!("docker://{}/base/busybox:v1", reg.addr),
        &["--dest-tls-verify=false"],
    ));
    reg
}

#[test]
fn pulls_go_through_the_proxy_unless_no_proxy_says_otherwise() {
    if !require_build() || !require("skopeo") || !require("tinyproxy") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let reg = registry_with_busybox(dir.path());
    let proxy = Proxy::start(dir.path());
    let proxy_url = format!("http://{}", proxy.addr);

    let ctx = dir.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        format!(
            "FROM {}/base/busybox:v1\nRUN env | grep -i _proxy= | sort > /proxies\n",
            reg.addr
        ),
    )
    .unwrap();
    let build = |name: &str, env: &[(&str, &str)], config: Option<&str>| {
        let root = dir.path().join(name);
        let out_dir = dir.path().join(format!("{name}-out"));
        let mut c = berth_build(&root);
        c.env_remove("NO_PROXY").env_remove("no_proxy");
        for (k, v) in env {
            c.env(k, v);
        }
        if let Some(text) = config {
            let path = dir.path().join(format!("{name}.toml"));
            std::fs::write(&path, text).unwrap();
            c.arg("--config").arg(&path);
        }
        c.arg("--output")
            .arg(format!("type=local,dest={}", out_dir.display()))
            .arg(&ctx);
        output_ok(&mut c);
        std::fs::read_to_string(out_dir.join("proxies")).unwrap()
    };

    // Through the proxy: the pull's requests are in its log; the step sees both cases.
    let seen = build(
        "proxied",
        &[("HTTP_PROXY", &proxy_url), ("HTTPS_PROXY", &proxy_url)],
        None,
    );
    let through = proxy.requests_to(&reg.addr);
    assert!(through > 0, "no request to {} crossed the proxy", reg.addr);
    for line in [
        format!("HTTP_PROXY={proxy_url}"),
        format!("http_proxy={proxy_url}"),
        format!("HTTPS_PROXY={proxy_url}"),
        format!("https_proxy={proxy_url}"),
    ] {
        assert!(
            seen.lines().any(|l| l == line),
            "{line} missing from the step's env:\n{seen}"
        );
    }

    // A NO_PROXY rule for another port of the host does not exempt the registry.
    build(
        "other-port",
        &[
            ("HTTP_PROXY", &proxy_url),
            ("HTTPS_PROXY", &proxy_url),
            ("NO_PROXY", "127.0.0.1:1"),
        ],
        None,
    );
    let after_port = proxy.requests_to(&reg.addr);
    assert!(
        after_port > through,
        "a host:port rule for another port bypassed the proxy"
    );

    // A CIDR in config.toml's [network] no_proxy, merged with the environment's list:
    // the pull goes direct, and the step's NO_PROXY holds both lists.
    let seen = build(
        "cidr",
        &[
            ("HTTP_PROXY", &proxy_url),
            ("HTTPS_PROXY", &proxy_url),
            ("no_proxy", "internal.example"),
        ],
        Some("[network]\nno_proxy = [\"127.0.0.0/8\"]\n"),
    );
    assert_eq!(
        proxy.requests_to(&reg.addr),
        after_port,
        "a pull covered by NO_PROXY went through the proxy"
    );
    assert!(
        seen.lines()
            .any(|l| l == "NO_PROXY=internal.example,127.0.0.0/8"),
        "merged NO_PROXY missing:\n{seen}"
    );
}

#[test]
fn steps_see_the_company_ca_only_when_asked_and_it_stays_out_of_the_image() {
    if !require_build() || !require("openssl") {
        return;
    }
    let base = BuildBase::new();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("corp-ca.pem");
    run(Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args([
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=berth-corp-test-ca",
            "-keyout",
        ])
        .arg(dir.path().join("corp-ca.key"))
        .arg("-out")
        .arg(&ca));
    let ca_text = std::fs::read_to_string(&ca).unwrap();
    let marker = ca_text.lines().nth(1).unwrap().to_string();
    let ctx = dir.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        format!(
            "FROM {}\nRUN (grep -c 'BEGIN CERTIFICATE' /etc/ssl/certs/ca-certificates.crt; \
             grep -c '{marker}' /etc/ssl/certs/ca-certificates.crt) > /seen 2>&1; true\n",
            base.reference()
        ),
    )
    .unwrap();
    let config = dir.path().join("config.toml");
    let root = dir.path().join("root");
    let build = |ca_to_steps: bool, out: &str| {
        std::fs::write(
            &config,
            format!(
                "[network]\nca = [\"{}\"]\nca_to_steps = {ca_to_steps}\n",
                ca.display()
            ),
        )
        .unwrap();
        let out_dir = dir.path().join(out);
        let o = output_ok(
            berth_build(&root)
                .arg("--config")
                .arg(&config)
                .arg("--output")
                .arg(format!("type=local,dest={}", out_dir.display()))
                .arg(&ctx),
        );
        (out_dir, o)
    };
    let (out, _) = build(true, "with-ca");
    let seen = std::fs::read_to_string(out.join("seen")).unwrap();
    let counts: Vec<u64> = seen.lines().filter_map(|l| l.trim().parse().ok()).collect();
    assert_eq!(counts.len(), 2, "{seen}");
    assert_eq!(
        counts[1], 1,
        "the company CA is in the step's bundle: {seen}"
    );
    assert!(counts[0] >= 1, "{seen}");
    let left: Vec<_> = std::fs::read_dir(root.join("tmp"))
        .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        left.is_empty(),
        "the step bundle outlived its build: {left:?}"
    );
    // busybox has no CA bundle: neither the file nor the directories made for it stay.
    assert!(
        !out.join("etc/ssl").exists(),
        "the CA mount left /etc/ssl in the image"
    );
    // The CA is not a cache input: the same build without it reuses the step.
    let (_, again) = build(false, "without-ca");
    assert!(again.stderr.contains("CACHED"), "{}", again.stderr);
    // And a step that runs without it sees no bundle.
    std::fs::write(ctx.join("changed"), "x").unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        format!(
            "FROM {}\nCOPY changed /\nRUN ls /etc/ssl/certs/ca-certificates.crt > /seen 2>&1; true\n",
            base.reference()
        ),
    )
    .unwrap();
    let (out, _) = build(false, "no-ca");
    let seen = std::fs::read_to_string(out.join("seen")).unwrap();
    assert!(seen.contains("No such file"), "{seen}");
}

/// A machine without a system trust store (a container image holding only berth, as the
/// satellite's) still pulls from a plain-HTTP registry: the client trusts only the CAs of
/// berth's configuration then, and says so, instead of failing to make any HTTP client.
#[test]
fn without_a_system_trust_store_plain_http_registries_still_work() {
    if !require("skopeo") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let reg = registry_with_busybox(dir.path());
    let none = dir.path().join("no-such-trust-store");
    let out = output(
        Command::new(berth_bin())
            .arg("--root")
            .arg(dir.path().join("client"))
            .args(["pull", &format!("{}/base/busybox:v1", reg.addr)])
            .env("SSL_CERT_FILE", &none)
            .env("SSL_CERT_DIR", &none)
            .env("BERTH_LOG", "warn"),
    );
    assert!(out.success, "{}", out.stderr);
    assert!(
        out.stderr.contains("no system trust store"),
        "{}",
        out.stderr
    );
}
