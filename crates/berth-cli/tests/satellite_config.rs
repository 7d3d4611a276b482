//! Builder configuration for company networks (issue 8, item 6): the satellite's own
//! config (`--config FILE`, `BERTH_SATELLITE_CONFIG`) and registry mirrors for FROM
//! pulls, in local builds (config.toml) and on a satellite.
//!
//! Mirrors are tested with two berth registries on 127.0.0.1, an "upstream" and a
//! "mirror", both given a copy of the busybox fixture by skopeo; which one served a pull
//! shows in which one is running, and in the log line berth writes.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::satellite::{Client, Sat};
use common::*;

/// Upstream and mirror registries holding `base/busybox:v1`.
struct Registries {
    upstream: Berth,
    mirror: Berth,
    upstream_root: PathBuf,
}

impl Registries {
    fn start(dir: &Path) -> Registries {
        let layout = dir.join("layout");
        busybox_layout(&layout, "v1");
        let upstream_root = dir.join("upstream");
        let upstream = Berth::serve(&upstream_root, &[]);
        let mirror = Berth::serve(&dir.join("mirror"), &[]);
        for reg in [&upstream, &mirror] {
            run(&mut skopeo_copy(
                &format!("oci:{}:v1", layout.display()),
                &format!("docker://{}/base/busybox:v1", reg.addr),
                &[],
            ));
        }
        Registries {
            upstream,
            mirror,
            upstream_root,
        }
    }

    /// `FROM` of the tests: the image on the upstream.
    fn from(&self) -> String {
        format!("{}/base/busybox:v1", self.upstream.addr)
    }
}

fn context(dir: &Path, name: &str, dockerfile: &str) -> PathBuf {
    let ctx = dir.join(name);
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(ctx.join("Dockerfile"), dockerfile).unwrap();
    ctx
}

fn local_build(root: &Path, config: &Path, ctx: &Path) -> Output {
    output(
        Command::new(berth_bin())
            .arg("--root")
            .arg(root)
            .arg("--config")
            .arg(config)
            .args(["build", "--progress", "plain"])
            .arg(ctx)
            .env("BERTH_LOG", "info"),
    )
}

#[test]
fn local_builds_pull_from_the_mirror_first_then_the_upstream() {
    if !require_build() || !require("skopeo") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut regs = Registries::start(dir.path());
    let (up, mirror) = (regs.upstream.addr.clone(), regs.mirror.addr.clone());
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!("[registries.\"{up}\"]\nmirrors = [\"{mirror}\"]\n"),
    )
    .unwrap();
    let ctx = context(
        dir.path(),
        "ctx",
        &format!("FROM {}\nRUN ls /bin/busybox\n", regs.from()),
    );

    // Upstream stopped: the mirror serves, and the log says so.
    regs.upstream.kill9();
    let out = local_build(&dir.path().join("root1"), &config, &ctx);
    assert!(out.success, "{}", out.stderr);
    assert!(
        out.stderr.contains("pulled from mirror") && out.stderr.contains(&mirror),
        "{}",
        out.stderr
    );

    // Mirror stopped, upstream back: the pull falls back to the upstream.
    regs.mirror.kill9();
    let mut upstream = Berth::serve_at(&regs.upstream_root, &up, &[]);
    let out = local_build(&dir.path().join("root2"), &config, &ctx);
    assert!(out.success, "{}", out.stderr);
    assert!(
        out.stderr.contains("mirror failed") && out.stderr.contains("pulled from the upstream"),
        "{}",
        out.stderr
    );

    // Neither: the error names each attempt.
    upstream.kill9();
    let out = local_build(&dir.path().join("root3"), &config, &ctx);
    assert!(!out.success);
    for says in [
        "no source served it",
        &format!("mirror {mirror}: "),
        &format!("upstream {up}: "),
    ] {
        assert!(out.stderr.contains(says), "{says:?} in:\n{}", out.stderr);
    }

    // A mirror given as a URL is refused with the file, the key and the fix.
    std::fs::write(
        &config,
        format!("[registries.\"{up}\"]\nmirrors = [\"http://{mirror}\"]\n"),
    )
    .unwrap();
    let out = local_build(&dir.path().join("root3"), &config, &ctx);
    assert!(!out.success);
    assert!(
        out.stderr.contains("config.toml is not valid: registries.")
            && out.stderr.contains("mirrors (line 2")
            && out.stderr.contains("http = true"),
        "{}",
        out.stderr
    );
}

#[test]
fn bad_satellite_config_is_refused_naming_the_key_and_its_source() {
    let dir = tempfile::tempdir().unwrap();
    let serve = |args: &[&str], env: &[(&str, &str)]| {
        output(
            Command::new(berth_bin())
                .arg("--root")
                .arg(dir.path().join("root"))
                .args(["satellite", "serve", "--addr", "127.0.0.1:0"])
                .args(args)
                .envs(env.iter().copied()),
        )
    };
    let file = dir.path().join("satellite.toml");
    std::fs::write(
        &file,
        "[builder]\nallow = [\"network.host\"]\n\n[network]\nno_prxy = [\"10.0.0.0/8\"]\n",
    )
    .unwrap();
    let out = serve(&["--config", file.to_str().unwrap()], &[]);
    assert!(!out.success);
    assert!(
        out.stderr.contains(&format!(
            "satellite config {} is not valid: network.no_prxy (line 5)",
            file.display()
        )),
        "{}",
        out.stderr
    );

    let out = serve(
        &[],
        &[(
            "BERTH_SATELLITE_CONFIG",
            "[registries.\"docker.io\"]\nmirrors = 5\n",
        )],
    );
    assert!(!out.success);
    assert!(
        out.stderr.contains(
            "satellite config BERTH_SATELLITE_CONFIG is not valid: registries.\"docker.io\".mirrors (line 2)"
        ),
        "{}",
        out.stderr
    );

    let out = serve(
        &["--config", file.to_str().unwrap()],
        &[("BERTH_SATELLITE_CONFIG", "[builder]\n")],
    );
    assert!(!out.success);
    assert!(out.stderr.contains("both --config"), "{}", out.stderr);
}

/// The satellite's config grants `network.host`, gives RUN steps its proxies (the
/// satellite's own pulls skip them through `no_proxy`) and pulls FROM through a mirror
/// while the upstream is down; inline in `BERTH_SATELLITE_CONFIG`, as in a container.
/// Restarted with other proxies (from `--config FILE`), the same build is all cache
/// hits: proxies are not part of cache keys.
#[test]
fn a_satellite_configured_inline_grants_entitlements_passes_proxies_and_uses_mirrors() {
    if !require_build() || !require("skopeo") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut regs = Registries::start(dir.path());
    let (up, mirror) = (regs.upstream.addr.clone(), regs.mirror.addr.clone());
    regs.upstream.kill9();
    let config = |proxy: &str| {
        format!(
            "[builder]\nallow = [\"network.host\"]\n\n\
             [network]\nhttp_proxy = \"{proxy}\"\nhttps_proxy = \"{proxy}\"\n\
             no_proxy = [\"127.0.0.1\"]\n\n\
             [registries.\"{up}\"]\nmirrors = [\"{mirror}\"]\n"
        )
    };
    let addr = format!("127.0.0.1:{}", free_port());
    let sat_root = dir.path().join("sat-root");
    let log_path = dir.path().join("sat.log");
    let mut sat = Sat::start_with(
        None,
        &sat_root,
        &addr,
        &["--advertise", "127.0.0.1"],
        &[(
            "BERTH_SATELLITE_CONFIG",
            &config("http://proxy.invalid:3128"),
        )],
        std::fs::File::create(&log_path).unwrap().into(),
    );
    let client = Client::new(dir.path(), "laptop", None);
    assert!(client.add("s1", &sat.token(&[])).success);
    let ctx = context(
        dir.path(),
        "ctx",
        &format!(
            "FROM {}\n\
             RUN test \"$HTTPS_PROXY\" = http://proxy.invalid:3128 && \
             test \"$http_proxy\" = http://proxy.invalid:3128 && \
             echo \"$NO_PROXY\" | grep -q 127.0.0.1\n\
             RUN --network=host true\n",
            regs.from()
        ),
    );
    let first = output_ok(&mut client.build(&ctx, &["--allow", "network.host"]));
    sat.kill9();
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        log.contains("pulled from mirror") && log.contains(&mirror),
        "{log}"
    );

    // Other proxies, from a file: the first RUN would fail if it ran again.
    let file = dir.path().join("satellite.toml");
    std::fs::write(&file, config("http://other.invalid:8080")).unwrap();
    let _sat = Sat::start(
        None,
        &sat_root,
        &addr,
        &[
            "--advertise",
            "127.0.0.1",
            "--config",
            file.to_str().unwrap(),
        ],
    );
    let again = output_ok(&mut client.build(&ctx, &["--allow", "network.host"]));
    assert_eq!(again.manifest(), first.manifest());
}

#[test]
fn import_buildkitd_toml_prints_the_config_and_lists_what_it_cannot_map() {
    let dir = tempfile::tempdir().unwrap();
    let bk = dir.path().join("buildkitd.toml");
    std::fs::write(
        &bk,
        "insecure-entitlements = [\"network.host\"]\n\
         [worker.oci]\n  max-parallelism = 4\n  gckeepstorage = 10000000000\n\
         [registry.\"docker.io\"]\n  mirrors = [\"mirror.corp.example:5000\"]\n\
         [registry.\"mirror.corp.example:5000\"]\n  http = true\n",
    )
    .unwrap();
    let out = output_ok(
        Command::new(berth_bin())
            .arg("--root")
            .arg(dir.path().join("root"))
            .args(["satellite", "serve", "--import-buildkitd-toml"])
            .arg(&bk),
    );
    // Both worker keys map now: nothing is listed as unmapped.
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines, Vec::<&str>::new(), "{}", out.stderr);
    // The unit tests check that what is printed parses back to the same config.
    assert!(
        out.stdout.contains("allow = [\"network.host\"]")
            && out.stdout.contains("max_parallel_steps = 4")
            && out.stdout.contains("cache_max_bytes = 10000000000")
            && out
                .stdout
                .contains("[registries.\"docker.io\"]\nmirrors = [\"mirror.corp.example:5000\"]")
            && out
                .stdout
                .contains("[registries.\"mirror.corp.example:5000\"]\nhttp = true"),
        "{}",
        out.stdout
    );
}
