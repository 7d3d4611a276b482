//! Satellites (issue 8), through the `berth` binary as users run it: a satellite and its
//! clients in network namespaces of their own joined by a veth pair (real runc and
//! overlayfs on the satellite), or on loopback where the network does not matter
//! (tokens, certificates). Every client has its own config directory (XDG_CONFIG_HOME),
//! where its enrolments live.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berth_testutil::netns::{Host, Lab};
use common::satellite::{Client, Sat};
use common::*;

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// The bytes uploaded, as the closing line of a remote build says.
fn uploaded(stderr: &str) -> (u64, u64) {
    let tail = stderr
        .split("entries, ")
        .nth(1)
        .unwrap_or_else(|| panic!("no upload summary in:\n{stderr}"));
    let nums: Vec<u64> = tail
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .take(2)
        .map(|s| s.parse().unwrap())
        .collect();
    (nums[0], nums[1])
}

/// `busybox httpd` answering `sat says hi` on 127.0.0.1:8999 inside `host`.
fn loopback_httpd(host: &Host, dir: &Path) -> Child {
    let www = dir.join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("index.html"), "sat says hi\n").unwrap();
    let child = host
        .command("busybox")
        .args(["httpd", "-f", "-p", "127.0.0.1:8999", "-h"])
        .arg(&www)
        .spawn()
        .expect("busybox httpd");
    // It answers inside its namespace (so the fence test below is not vacuous).
    let start = Instant::now();
    loop {
        let got = output(host.command("sh").args([
            "-c",
            "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | busybox nc -w 2 127.0.0.1 8999",
        ]));
        if got.stdout.contains("sat says hi") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "httpd in {} does not answer: {}",
            host.ns,
            got.stderr
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

fn fetch(host: &str, port: &str) -> String {
    format!(
        "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | busybox timeout 5 busybox nc -w 3 {host} {port} > /got 2>&1; true"
    )
}

#[test]
fn remote_build_across_hosts_matches_local_and_uploads_only_changes() {
    if !require_build() || !require("ip") {
        return;
    }
    let base = BuildBase::new();
    let dir = tempfile::tempdir().unwrap();
    let mut lab = Lab::new("sat");
    let (client_ns, sat_ns) = (lab.host("client"), lab.host("sat"));
    lab.link(&client_ns, "10.77.0.1/24", &sat_ns, "10.77.0.2/24");
    let mut httpd = loopback_httpd(&sat_ns, dir.path());

    let sat = Sat::start(
        Some(&sat_ns),
        &dir.path().join("sat-root"),
        "10.77.0.2:8372",
        &["--advertise", "10.77.0.2"],
    );
    assert_eq!(sat.addr, "10.77.0.2:8372");
    let client = Client::new(dir.path(), "laptop", Some(client_ns));
    let add = client.add("sat", &sat.token(&[]));
    assert!(add.success, "{}", add.stderr);
    assert!(add.stdout.contains("as laptop"), "{}", add.stdout);

    // Keys stay private, and the CA key never leaves the satellite.
    let ca_key = dir.path().join("sat-root/satellite/pki/ca.key");
    assert_eq!(mode(&ca_key), 0o600);
    assert_eq!(mode(&client.satellite_dir("sat").join("client.key")), 0o600);
    let ca_key_text = std::fs::read_to_string(&ca_key).unwrap();
    for e in std::fs::read_dir(client.satellite_dir("sat")).unwrap() {
        let text = std::fs::read_to_string(e.unwrap().path()).unwrap();
        assert!(
            !text.contains(ca_key_text.trim()),
            "the CA key reached the client"
        );
        assert!(!text.contains("PRIVATE KEY") || text.contains("BEGIN PRIVATE KEY"));
    }

    let ctx = dir.path().join("ctx");
    std::fs::create_dir_all(ctx.join("src")).unwrap();
    std::fs::write(ctx.join("src/a.txt"), "alpha\n").unwrap();
    std::fs::write(ctx.join("big.bin"), vec![7u8; 300_000]).unwrap();
    std::os::unix::fs::symlink("src/a.txt", ctx.join("link")).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        format!(
            "FROM {}\nCOPY . /app\nRUN cat /app/src/a.txt /app/link > /out && ls -l /app >> /out\n",
            base.reference()
        ),
    )
    .unwrap();

    let first = output_ok(&mut client.build(&ctx, &["-t", "app:1"]));
    assert_eq!(
        uploaded(&first.stderr).0,
        3,
        "three distinct contents (a.txt, big.bin, the Dockerfile): {}",
        first.stderr
    );
    // The same build here gives the same image, byte for byte.
    let local_root = dir.path().join("local-root");
    let local = output_ok(
        berth_build(&local_root)
            .args(["--no-satellite", "-t", "app:1"])
            .arg(&ctx)
            .env("XDG_CONFIG_HOME", dir.path().join("none")),
    );
    assert_eq!(
        first.manifest(),
        local.manifest(),
        "remote and local builds differ"
    );

    let again = output_ok(&mut client.build(&ctx, &["-t", "app:1"]));
    assert_eq!(uploaded(&again.stderr), (0, 0), "{}", again.stderr);
    assert!(again.stderr.contains("CACHED"), "{}", again.stderr);
    assert_eq!(again.manifest(), first.manifest());

    std::fs::write(ctx.join("src/a.txt"), "alpha, changed\n").unwrap();
    let changed = output_ok(&mut client.build(&ctx, &["-t", "app:2", "--explain"]));
    assert_eq!(
        uploaded(&changed.stderr),
        (1, "alpha, changed\n".len() as u64),
        "only the changed file goes up: {}",
        changed.stderr
    );
    assert!(
        changed.stderr.contains("src/a.txt"),
        "the cache-miss reason names the file: {}",
        changed.stderr
    );
    assert_ne!(changed.manifest(), first.manifest());

    // A RUN on the satellite reaches neither its loopback nor its own address.
    let fence = dir.path().join("fence");
    std::fs::create_dir_all(&fence).unwrap();
    std::fs::write(
        fence.join("Dockerfile"),
        format!(
            "FROM {}\nRUN {}\nRUN ! grep -q 'sat says hi' /got\nRUN {}\nRUN ! grep -q HTTP /got\n\
             RUN grep -q '^192.0.2.9.sat.test$' /etc/hosts\n",
            base.reference(),
            fetch("127.0.0.1", "8999"),
            fetch("10.77.0.2", "8372"),
        ),
    )
    .unwrap();
    // --add-host goes with the build.
    output_ok(&mut client.build(&fence, &["--add-host", "sat.test:192.0.2.9"]));
    let _ = httpd.kill();
    let _ = httpd.wait();
}

#[test]
fn tokens_and_client_certificates_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let sat = Sat::on_loopback(&dir.path().join("sat-root"), &[]);
    let client = Client::new(dir.path(), "laptop", None);

    // A wrong secret, then the right token, then the same token again.
    let token = sat.token(&[]);
    let (head, tail) = token.split_once('.').unwrap();
    let forged = format!("{head}.{}{}", "0".repeat(32), &tail[32..]);
    let bad = client.add("s1", &forged);
    assert!(!bad.success);
    assert!(
        bad.stderr.contains("secret does not match"),
        "{}",
        bad.stderr
    );
    assert!(client.add("s1", &token).success);
    let reused = client.add("s2", &token);
    assert!(!reused.success);
    assert!(reused.stderr.contains("used"), "{}", reused.stderr);

    let short = sat.token(&["--ttl", "1s"]);
    std::thread::sleep(Duration::from_millis(1500));
    let expired = client.add("s3", &short);
    assert!(!expired.success);
    assert!(expired.stderr.contains("expired"), "{}", expired.stderr);

    let revoked = sat.token(&[]);
    let id = revoked
        .split('.')
        .next()
        .unwrap()
        .trim_start_matches("berth-");
    assert!(sat.admin(&["token", "revoke", id]).success);
    let out = client.add("s4", &revoked);
    assert!(!out.success);
    assert!(out.stderr.contains("revoked"), "{}", out.stderr);
    let ls = sat.admin(&["token", "ls"]);
    assert!(
        ls.stdout.contains("revoked") && ls.stdout.contains("expired"),
        "{}",
        ls.stdout
    );

    // Another satellite answering at the token's address: its CA is not the pinned one.
    let other = Sat::on_loopback(&dir.path().join("other-root"), &[]);
    let aimed = sat
        .token(&[])
        .replace(&format!("@{}#", sat.addr), &format!("@{}#", other.addr));
    assert!(aimed.contains(&format!("@{}#", other.addr)), "{aimed}");
    let out = client.add("s5", &aimed);
    assert!(!out.success);
    assert!(out.stderr.to_lowercase().contains("pin"), "{}", out.stderr);
    drop(other);

    // The enrolled client works until the operator revokes it.
    let inspect = output(client.berth().args(["satellite", "inspect", "s1"]));
    assert!(inspect.success, "{}", inspect.stderr);
    assert!(
        inspect.stdout.contains("this client:     laptop"),
        "{}",
        inspect.stdout
    );
    let clients = sat.admin(&["clients", "ls"]);
    assert!(
        clients.stdout.contains("laptop") && clients.stdout.contains("valid"),
        "{}",
        clients.stdout
    );
    assert!(sat.admin(&["clients", "revoke", "laptop"]).success);
    let refused = output(client.berth().args(["satellite", "inspect", "s1"]));
    assert!(!refused.success);
    assert!(refused.stderr.contains("revoked"), "{}", refused.stderr);
}

#[test]
fn client_certificates_renew_at_half_life_and_expire() {
    let dir = tempfile::tempdir().unwrap();
    let sat = Sat::on_loopback(&dir.path().join("sat-root"), &["--client-validity", "6s"]);
    let client = Client::new(dir.path(), "laptop", None);
    assert!(client.add("s1", &sat.token(&[])).success);
    let cert = client.satellite_dir("s1").join("client.crt");
    let before = std::fs::read(&cert).unwrap();
    let inspect = || output(client.berth().args(["satellite", "inspect", "s1"]));
    assert!(inspect().success);
    assert_eq!(
        std::fs::read(&cert).unwrap(),
        before,
        "not renewed before half its life"
    );
    // Times come from the certificates themselves: a loaded machine may take seconds
    // between two commands.
    let validity = |pem: &[u8]| {
        berth_pki::CertInfo::from_pem(std::str::from_utf8(pem).unwrap())
            .unwrap()
            .validity
    };
    let sleep_until = |t: std::time::SystemTime| {
        if let Ok(d) = t.duration_since(std::time::SystemTime::now()) {
            std::thread::sleep(d);
        }
    };
    let v = validity(&before);
    let issued = v.not_before + berth_pki::Validity::BACKDATE;
    let life = v.not_after.duration_since(issued).unwrap();
    sleep_until(issued + life / 2 + Duration::from_millis(500));
    let out = inspect();
    assert!(out.success, "{}", out.stderr);
    let renewed = std::fs::read(&cert).unwrap();
    assert_ne!(renewed, before, "renewed once half-used");
    // Left alone past its end, the certificate is refused, and the message says so.
    // Certificates hold whole seconds, and the check compares seconds: wait more than
    // a second beyond the end.
    sleep_until(validity(&renewed).not_after + Duration::from_millis(1500));
    let out = inspect();
    assert!(
        !out.success,
        "an expired certificate was accepted: {}",
        out.stdout
    );
    assert!(out.stderr.contains("expired"), "{}", out.stderr);
}

#[test]
fn ctrl_c_cancels_the_remote_build_and_a_killed_satellite_is_reported() {
    if !require_build() {
        return;
    }
    let base = BuildBase::new();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().to_string();
    let root = dir.path().join("sat-root");
    let mut sat = Sat::start(
        None,
        &root,
        &format!("127.0.0.1:{port}"),
        &["--advertise", "127.0.0.1"],
    );
    let client = Client::new(dir.path(), "laptop", None);
    assert!(client.add("s1", &sat.token(&[])).success);
    let ctx = dir.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        format!("FROM {}\nRUN echo started && sleep 120\n", base.reference()),
    )
    .unwrap();
    let wait_for = |what: &str, cond: &dyn Fn() -> bool| {
        let start = Instant::now();
        while !cond() {
            assert!(start.elapsed() < Duration::from_secs(60), "{what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };

    let mut running = client
        .build(&ctx, &[])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the step never started on the satellite", &|| {
        sat.containers() == 1
    });
    run(Command::new("kill").args(["-INT", &running.id().to_string()]));
    let status = running.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    wait_for(
        "the satellite kept the container after the client left",
        &|| sat.containers() == 0,
    );

    // Killed mid-build: the client says so, and a restarted satellite builds again.
    let running = client
        .build(&ctx, &[])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the step never started", &|| sat.containers() == 1);
    sat.kill9();
    let out = running.wait_with_output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("satellite"), "{err}");
    let sat = Sat::start(
        None,
        &root,
        &format!("127.0.0.1:{port}"),
        &["--advertise", "127.0.0.1"],
    );
    std::fs::write(
        ctx.join("Dockerfile"),
        format!("FROM {}\nRUN echo fine\n", base.reference()),
    )
    .unwrap();
    output_ok(&mut client.build(&ctx, &[]));
    wait_for("a container of the killed satellite was left", &|| {
        sat.containers() == 0
    });
}

#[test]
fn outputs_of_a_remote_build_reach_this_machine_and_registries() {
    if !require_build() || !require_docker() || !require("htpasswd") || !require("skopeo") {
        return;
    }
    let base = BuildBase::new();
    let dir = tempfile::tempdir().unwrap();
    let sat = Sat::on_loopback(&dir.path().join("sat-root"), &[]);
    let client = Client::new(dir.path(), "laptop", None);
    assert!(client.add("s1", &sat.token(&[])).success);
    let ctx = dir.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        format!(
            "FROM {}\nRUN echo made on the satellite > /msg\nCMD [\"cat\", \"/msg\"]\n",
            base.reference()
        ),
    )
    .unwrap();

    // --load: the image comes down into this machine's store and into dockerd.
    let name = format!("berth-test/satload-{}:1", std::process::id());
    let built = output_ok(&mut client.build(&ctx, &["-t", &name, "--load"]));
    let ran = run(Command::new(docker()).args(["run", "--rm", &name]));
    assert_eq!(ran.trim(), "made on the satellite");
    let local = output_ok(client.berth().arg("images"));
    assert!(
        local
            .stdout
            .contains(&format!("berth-test/satload-{}", std::process::id())),
        "{}",
        local.stdout
    );
    let _ = Command::new(docker()).args(["rmi", "-f", &name]).output();

    // --output type=oci: an OCI archive on this machine, of the same manifest.
    let tar = dir.path().join("out.tar");
    output_ok(&mut client.build(
        &ctx,
        &[
            "-t",
            &name,
            "--output",
            &format!("type=oci,dest={}", tar.display()),
        ],
    ));
    let inspected = run(Command::new("skopeo").args([
        "inspect",
        "--raw",
        &format!("oci-archive:{}", tar.display()),
    ]));
    let digest = format!("sha256:{}", Client::sha256_hex(inspected.as_bytes()));
    assert_eq!(
        digest,
        built.manifest(),
        "the archive holds the built manifest"
    );

    // --output type=local: the image's file system here, as a local build writes it
    // (whiteouts carried out: the Dockerfile below removes a base file).
    std::fs::write(
        ctx.join("Dockerfile"),
        format!(
            "FROM {}\nRUN echo made on the satellite > /msg && rm /bin/sed\nCMD [\"cat\", \"/msg\"]\n",
            base.reference()
        ),
    )
    .unwrap();
    let remote_dir = dir.path().join("remote-rootfs");
    output_ok(&mut client.build(
        &ctx,
        &[
            "-t",
            &name,
            "--output",
            &format!("type=local,dest={}", remote_dir.display()),
        ],
    ));
    let local_dir = dir.path().join("local-rootfs");
    output_ok(
        berth_build(&dir.path().join("local-root"))
            .args(["--no-satellite", "--output"])
            .arg(format!("type=local,dest={}", local_dir.display()))
            .arg(&ctx)
            .env("XDG_CONFIG_HOME", dir.path().join("none")),
    );
    assert!(
        !remote_dir.join("bin/sed").exists(),
        "a removed file came back"
    );
    let diff = tree_diff(
        "remote",
        &file_tree(&remote_dir),
        "local",
        &file_tree(&local_dir),
    );
    assert!(diff.is_empty(), "remote and local rootfs differ: {diff:#?}");
    std::fs::write(
        ctx.join("Dockerfile"),
        format!(
            "FROM {}\nRUN echo made on the satellite > /msg\nCMD [\"cat\", \"/msg\"]\n",
            base.reference()
        ),
    )
    .unwrap();

    // --push: from the satellite, with this client's credentials for that build only.
    let reg = serve_with_user(dir.path(), "deployer", "s3cret-for-sat");
    let docker_cfg = dir.path().join("docker-config");
    client.login(&docker_cfg, &reg.addr, "deployer", "s3cret-for-sat");
    let dest = format!("{}/deploy/app:1", reg.addr);
    let pushed = output_ok(
        client
            .build(&ctx, &["-t", &dest, "--push"])
            .env("DOCKER_CONFIG", &docker_cfg),
    );
    assert!(
        pushed
            .stdout
            .contains(&format!("{}/deploy/app@{}", reg.addr, built.manifest())),
        "{}",
        pushed.stdout
    );
    let remote = run(Command::new("skopeo").args([
        "inspect",
        "--raw",
        "--tls-verify=false",
        "--creds",
        "deployer:s3cret-for-sat",
        &format!("docker://{dest}"),
    ]));
    assert_eq!(
        format!("sha256:{}", Client::sha256_hex(remote.as_bytes())),
        built.manifest()
    );
    let leaked = Command::new("grep")
        .args(["-rl", "s3cret-for-sat"])
        .arg(dir.path().join("sat-root"))
        .output()
        .unwrap();
    assert!(
        leaked.stdout.is_empty(),
        "the satellite kept the password: {}",
        String::from_utf8_lossy(&leaked.stdout)
    );
    // Without credentials the push from the satellite is refused, and says so.
    let refused = output(
        client
            .build(&ctx, &["-t", &dest, "--push"])
            .env("DOCKER_CONFIG", dir.path().join("empty-docker-config")),
    );
    assert!(!refused.success);
    assert!(
        refused.stderr.to_lowercase().contains("auth"),
        "{}",
        refused.stderr
    );
}

#[test]
fn context_caches_are_bounded_per_client() {
    if !require_build() {
        return;
    }
    let base = BuildBase::new();
    let dir = tempfile::tempdir().unwrap();
    // Room for one of the two contexts below.
    let sat = Sat::on_loopback(&dir.path().join("sat-root"), &["--context-cache", "150K"]);
    let client = Client::new(dir.path(), "laptop", None);
    assert!(client.add("s1", &sat.token(&[])).success);
    let project = |name: &str| {
        let ctx = dir.path().join(name);
        std::fs::create_dir_all(&ctx).unwrap();
        std::fs::write(ctx.join("data"), vec![name.as_bytes()[0]; 100_000]).unwrap();
        std::fs::write(
            ctx.join("Dockerfile"),
            format!("FROM {}\nCOPY data /data\n", base.reference()),
        )
        .unwrap();
        ctx
    };
    let (a, b) = (project("a"), project("b"));
    let sent = |ctx: &Path| uploaded(&output_ok(&mut client.build(ctx, &[])).stderr).0;
    assert_eq!(sent(&a), 2);
    assert_eq!(sent(&a), 0, "a context within the cap stays");
    assert_eq!(sent(&b), 2);
    // Building b pushed a (least recently built) out: a goes up again, whole.
    assert_eq!(sent(&a), 2, "an evicted context is sent again");
    assert_eq!(sent(&a), 0);
}

#[test]
fn builder_limits_steps_at_once_and_trims_its_cache() {
    if !require_build() {
        return;
    }
    let base = BuildBase::new();
    let dir = tempfile::tempdir().unwrap();
    // Two independent stages whose RUNs each fail if the other runs at the same time
    // (they meet in a shared cache mount), joined in a last stage.
    let ctx = dir.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    let step = |me: &str| {
        format!(
            "RUN --mount=type=cache,id=overlap,target=/c,sharing=shared \
             sh -c 'touch /c/{me}; sleep 2; n=$(ls /c | wc -l); rm /c/{me}; test $n -eq 1' && echo {me} > /seen"
        )
    };
    std::fs::write(
        ctx.join("Dockerfile"),
        format!(
            "FROM {b} AS a\n{}\nFROM {b} AS b\n{}\nFROM {b}\nCOPY --from=a /seen /a\nCOPY --from=b /seen /b\n",
            step("a"),
            step("b"),
            b = base.reference()
        ),
    )
    .unwrap();
    let run_on = |name: &str, config: &str| {
        let port = free_port().to_string();
        let sat = Sat::start_with(
            None,
            &dir.path().join(format!("{name}-root")),
            &format!("127.0.0.1:{port}"),
            &["--advertise", "127.0.0.1"],
            &[("BERTH_SATELLITE_CONFIG", config)],
            Stdio::inherit(),
        );
        let client = Client::new(dir.path(), name, None);
        assert!(client.add("s", &sat.token(&[])).success);
        let out = output(&mut client.build(&ctx, &[]));
        (sat, client, out)
    };
    // Without a limit the two steps overlap (the stages run in parallel)…
    let (_sat, _client, free) = run_on("free", "");
    assert!(
        !free.success,
        "the two RUNs never overlapped, so the limit below proves nothing"
    );
    // … with one slot they take turns, and a cap of 1 byte empties the cache after.
    let (sat, client, limited) = run_on(
        "limited",
        "[builder]\nmax_parallel_steps = 1\ncache_max_bytes = 1\n",
    );
    assert!(limited.success, "{}", limited.stderr);
    common::satellite::wait_for("the build cache was not trimmed", &|| {
        std::fs::read_dir(sat.root.join("cache/records"))
            .map(|rd| rd.count() == 0)
            .unwrap_or(true)
    });
    let again = output_ok(&mut client.build(&ctx, &[]));
    assert!(!again.stderr.contains("CACHED"), "{}", again.stderr);
    let inspect = output_ok(client.berth().args(["satellite", "inspect", "s"]));
    assert!(
        inspect.stdout.contains(" of 1 B"),
        "the cap is reported: {}",
        inspect.stdout
    );
}

/// `--ssh default` with a satellite: the steps' agent connections travel over the
/// satellite session to the agent on the client, as `tests/builds/run_ssh` shows for a
/// local build (the same Dockerfile and the same answers: the socket's place, owner and
/// mode, a custom target, a user step, an optional agent not forwarded).
#[test]
fn ssh_agent_is_forwarded_over_the_session() {
    if !require_build() || !require("ssh-agent") || !require("ssh-keygen") || !require("gcc") {
        return;
    }
    let base = BuildBase::new();
    let dir = tempfile::tempdir().unwrap();
    let ctx = run_ssh_context(dir.path());
    let agent = Agent::start(dir.path());
    let sat = Sat::on_loopback(&dir.path().join("sat-root"), &[]);
    let client = Client::new(dir.path(), "laptop", None);
    assert!(client.add("s1", &sat.token(&[])).success);
    let out = dir.path().join("out");
    let built = output(
        client
            .build(
                &ctx,
                &[
                    "--ssh",
                    "default",
                    "-t",
                    "ssh:1",
                    "--output",
                    &format!("type=local,dest={}", out.display()),
                    "--build-arg",
                    &format!("BASE={}", base.reference()),
                ],
            )
            .env("SSH_AUTH_SOCK", &agent.socket),
    );
    assert!(built.success, "{}", built.stderr);
    let read = |f: &str| std::fs::read_to_string(out.join(f)).unwrap();
    assert_eq!(
        read("default.txt"),
        "agent answered: 1 key(s)\nsock=/run/buildkit/ssh_agent.0\nsocket 600 0:0\n"
    );
    assert_eq!(
        read("custom.txt"),
        "agent answered: 1 key(s)\n/tmp/agent.sock socket 660 1000:1000\n"
    );
    assert_eq!(read("tmp/as-user.txt"), "agent answered: 1 key(s)\n");
    assert_eq!(read("optional.txt"), "absent\n");
    // An agent the step requires and the client did not forward: the satellite's
    // build fails, saying how to give it.
    std::fs::write(
        ctx.join("Dockerfile"),
        format!(
            "FROM {}\nRUN --mount=type=ssh,id=other,required true\n",
            base.reference()
        ),
    )
    .unwrap();
    let missing = output(
        client
            .build(&ctx, &["--ssh", "default"])
            .env("SSH_AUTH_SOCK", &agent.socket),
    );
    assert!(!missing.success, "built without the agent it requires");
    assert!(
        missing.stderr.contains("pass --ssh other"),
        "{}",
        missing.stderr
    );
}
