//! Operating satellites (issue 8, items 7 and 8), through the `berth` binary: `/metrics`
//! and `/healthz` without a client certificate, build logs, drain on SIGTERM and
//! restarts, `berth satellite manifests`, entitlements, several clients at once and a
//! client killed mid-upload.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use berth_testutil::netns::Lab;
use common::satellite::{Client, Sat, open_gate, wait_at_gate, wait_for};
use common::*;

/// A context folder `name` under `dir` holding `Dockerfile` and `files`.
fn ctx(dir: &Path, name: &str, dockerfile: &str, files: &[(&str, &str)]) -> PathBuf {
    let c = dir.join(name);
    std::fs::create_dir_all(&c).unwrap();
    std::fs::write(c.join("Dockerfile"), dockerfile).unwrap();
    for (f, text) in files {
        std::fs::write(c.join(f), text).unwrap();
    }
    c
}

/// A loopback satellite `sat1` on a free port with extra `args`.
fn loopback_sat(root: &Path, args: &[&str]) -> Sat {
    let port = free_port();
    let mut all = vec!["--advertise", "127.0.0.1"];
    all.extend_from_slice(args);
    Sat::start(None, root, &format!("127.0.0.1:{port}"), &all)
}

#[test]
fn metrics_and_health_answer_without_a_client_certificate_and_count_builds() {
    if !require_build() || !require("curl") {
        return;
    }
    let base = BuildBase::new();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("sat.log");
    let port = free_port();
    let sat = Sat::start_with(
        None,
        &dir.path().join("sat-root"),
        &format!("127.0.0.1:{port}"),
        &["--advertise", "127.0.0.1"],
        &[("BERTH_LOG_FORMAT", "json")],
        Stdio::from(std::fs::File::create(&log).unwrap()),
    );
    assert_eq!(sat.get("/healthz"), (200, "ok\n".into()));
    assert_eq!(sat.metric("berth_satellite_enrolled_clients"), 0.0);
    // Only these two are open: the registry API still wants a client certificate.
    let (code, _) = sat.get("/v2/");
    assert_eq!(code, 401, "/v2/ without a client certificate");

    let client = Client::new(dir.path(), "laptop", None);
    let add = client.add("s1", &sat.token(&[]));
    assert!(add.success, "{}", add.stderr);
    assert_eq!(sat.metric("berth_satellite_enrolled_clients"), 1.0);
    assert_eq!(sat.metric("berth_satellite_cache_bytes"), 0.0);

    let ok = ctx(
        dir.path(),
        "ok",
        &format!(
            "FROM {}\nCOPY a.txt /a.txt\nRUN cat /a.txt > /b.txt\n",
            base.reference()
        ),
        &[("a.txt", "hello metrics\n")],
    );
    output_ok(&mut client.build(&ok, &[]));
    let failing = ctx(
        dir.path(),
        "failing",
        &format!("FROM {}\nRUN exit 3\n", base.reference()),
        &[],
    );
    let out = output(&mut client.build(&failing, &[]));
    assert!(!out.success, "{}", out.stderr);

    assert_eq!(sat.metric("berth_satellite_builds_running"), 0.0);
    assert_eq!(
        sat.metric("berth_satellite_builds_total{result=\"ok\"}"),
        1.0
    );
    assert_eq!(
        sat.metric("berth_satellite_builds_total{result=\"failed\"}"),
        1.0
    );
    assert_eq!(
        sat.metric("berth_satellite_builds_total{result=\"canceled\"}"),
        0.0
    );
    assert!(sat.metric("berth_satellite_steps_total{result=\"ran\"}") >= 1.0);
    assert_eq!(
        sat.metric("berth_satellite_steps_total{result=\"failed\"}"),
        1.0
    );
    assert_eq!(sat.metric("berth_satellite_steps_running"), 0.0);
    // a.txt and two Dockerfiles went up.
    let received = sat.metric("berth_satellite_context_received_bytes_total");
    assert!(
        received >= "hello metrics\n".len() as f64,
        "context bytes: {received}"
    );
    assert!(
        sat.metric("berth_satellite_cache_bytes") > 0.0,
        "a finished build refreshes the cache size"
    );
    let (_, text) = sat.get("/metrics");
    assert!(
        text.contains("# TYPE berth_satellite_builds_total counter"),
        "{text}"
    );

    // One JSON line per build start and end, with client, build id, duration and result.
    let logs = std::fs::read_to_string(&log).unwrap();
    let ended: Vec<serde_json::Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["fields"]["message"] == "build ended")
        .collect();
    assert_eq!(ended.len(), 2, "two builds ended:\n{logs}");
    let results: Vec<&str> = ended
        .iter()
        .map(|v| v["fields"]["result"].as_str().unwrap())
        .collect();
    assert_eq!(results, ["ok", "failed"], "{logs}");
    for v in &ended {
        let f = &v["fields"];
        assert_eq!(f["client"], "laptop", "{v}");
        assert!(f["duration_ms"].is_u64(), "{v}");
        let id = f["build"].as_str().unwrap();
        assert!(
            logs.lines()
                .any(|l| l.contains("build started") && l.contains(id)),
            "no start line for build {id}:\n{logs}"
        );
    }
}

#[test]
fn sigterm_drains_refuses_new_builds_and_a_restart_keeps_identity_cache_and_enrolment() {
    if !require_build() || !require("curl") {
        return;
    }
    let base = BuildBase::new();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("sat-root");
    let port = free_port().to_string();
    let addr = format!("127.0.0.1:{port}");
    let mut sat = Sat::start(None, &root, &addr, &["--advertise", "127.0.0.1"]);
    let client = Client::new(dir.path(), "laptop", None);
    assert!(client.add("s1", &sat.token(&[])).success);
    let ca = std::fs::read(root.join("satellite/pki/ca.crt")).unwrap();

    let plain = ctx(
        dir.path(),
        "plain",
        &format!(
            "FROM {}\nCOPY a.txt /a\nRUN cat /a > /b\n",
            base.reference()
        ),
        &[("a.txt", "kept\n")],
    );
    let first = output_ok(&mut client.build(&plain, &[]));

    // A build waits at a gate the test opens; meanwhile SIGTERM arrives.
    let gated = ctx(
        dir.path(),
        "gated",
        &format!("FROM {}\n{}\n", base.reference(), wait_at_gate("go")),
        &[],
    );
    let running = client
        .build(&gated, &[])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the gated step never started", &|| sat.containers() == 1);
    sat.sigterm();
    wait_for("the satellite does not say it drains", &|| {
        sat.get("/healthz").0 == 503
    });
    assert_eq!(sat.metric("berth_satellite_draining"), 1.0);
    let refused = output(&mut client.build(&plain, &[]));
    assert!(!refused.success);
    assert!(
        refused.stderr.contains("satellite sat1 is shutting down"),
        "{}",
        refused.stderr
    );
    // The running build goes on, and the satellite exits 0 once it is done.
    open_gate(&root, "go");
    let out = running.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the running build was cut by the drain: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sat.wait().code(), Some(0));

    // Same root, same port: same CA, the client needs no new enrolment, the cache hits.
    let sat = Sat::start(None, &root, &addr, &["--advertise", "127.0.0.1"]);
    assert_eq!(
        std::fs::read(root.join("satellite/pki/ca.crt")).unwrap(),
        ca
    );
    let again = output_ok(&mut client.build(&plain, &[]));
    assert!(again.stderr.contains("CACHED"), "{}", again.stderr);
    assert_eq!(again.manifest(), first.manifest());
    assert_eq!(sat.metric("berth_satellite_enrolled_clients"), 1.0);
}

#[test]
fn a_drain_timeout_cancels_running_builds_and_removes_their_containers() {
    if !require_build() {
        return;
    }
    let base = BuildBase::new();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("sat-root");
    let mut sat = loopback_sat(&root, &["--drain-timeout", "2s"]);
    let client = Client::new(dir.path(), "laptop", None);
    assert!(client.add("s1", &sat.token(&[])).success);
    let gated = ctx(
        dir.path(),
        "gated",
        &format!("FROM {}\n{}\n", base.reference(), wait_at_gate("never")),
        &[],
    );
    let running = client
        .build(&gated, &[])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the gated step never started", &|| sat.containers() == 1);
    sat.sigterm();
    assert_eq!(sat.wait().code(), Some(0), "a drained satellite exits 0");
    assert_eq!(sat.containers(), 0, "a canceled build left its container");
    assert_eq!(mounts_under(&root), 0, "a canceled build left mounts");
    let out = running.wait_with_output().unwrap();
    assert!(!out.status.success());
}

#[test]
fn network_host_needs_the_operators_grant() {
    if !require_build() {
        return;
    }
    let base = BuildBase::new();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("sat-root");
    let hello = loopback_server(|mut conn| {
        use std::io::{Read, Write};
        let mut buf = [0u8; 512];
        let _ = conn.read(&mut buf);
        let _ = conn.write_all(b"HTTP/1.0 200 OK\r\n\r\nthe host says hi\n");
    });
    let hostnet = ctx(
        dir.path(),
        "hostnet",
        &format!(
            "FROM {}\nRUN --network=host sh -c \"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | \
             busybox timeout 10 busybox nc {} > /got; grep -q 'the host says hi' /got\"\n",
            base.reference(),
            hello.replace(':', " ")
        ),
        &[],
    );
    refused_until_the_operator_grants(dir.path(), &root, &hostnet, "network.host");
}

/// A build of `context` asking for `entitlement` on a satellite in `root`: refused,
/// saying how the operator allows it, then built once the same satellite (same
/// address) grants it.
fn refused_until_the_operator_grants(dir: &Path, root: &Path, context: &Path, entitlement: &str) {
    let client = Client::new(dir, "laptop", None);
    let addr = format!("127.0.0.1:{}", free_port());
    let mut sat = Sat::start(None, root, &addr, &["--advertise", "127.0.0.1"]);
    assert!(client.add("s1", &sat.token(&[])).success);
    let refused = output(&mut client.build(context, &["--allow", entitlement]));
    assert!(!refused.success);
    for needed in [
        format!("entitlement {entitlement}, which this satellite does not grant"),
        format!("berth satellite serve --allow {entitlement}"),
    ] {
        assert!(
            refused.stderr.contains(&needed),
            "the refusal does not say {needed:?}: {}",
            refused.stderr
        );
    }
    sat.kill9();
    let _sat = Sat::start(
        None,
        root,
        &addr,
        &["--advertise", "127.0.0.1", "--allow", entitlement],
    );
    output_ok(&mut client.build(context, &["--allow", entitlement]));
}

/// A satellite runs privileged steps only when its operator allows `security.insecure`;
/// by default the build is refused, saying how to allow it.
#[test]
fn privileged_steps_need_the_operators_grant() {
    if !require_build() {
        return;
    }
    let base = BuildBase::new();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("sat-root");
    let privileged = ctx(
        dir.path(),
        "privileged",
        &format!(
            "FROM {}\nRUN --security=insecure mkdir -p /mnt && busybox mount -t tmpfs none /mnt \
             && busybox umount /mnt && echo mounted > /privileged\n",
            base.reference()
        ),
        &[],
    );
    refused_until_the_operator_grants(dir.path(), &root, &privileged, "security.insecure");
}

#[test]
fn two_clients_build_at_once_and_share_the_cache() {
    if !require_build() || !require("curl") {
        return;
    }
    let base = BuildBase::new();
    let dir = tempfile::tempdir().unwrap();
    let sat = loopback_sat(&dir.path().join("sat-root"), &[]);
    let (laptop, desk) = (
        Client::new(dir.path(), "laptop", None),
        Client::new(dir.path(), "desk", None),
    );
    let token = sat.token(&["--uses", "2"]);
    assert!(laptop.add("s1", &token).success);
    assert!(desk.add("s1", &token).success);
    assert_eq!(sat.metric("berth_satellite_enrolled_clients"), 2.0);

    let shared = "RUN echo shared > /shared";
    // The laptop's build waits until the desk's build has run a step: both are running.
    let a = ctx(
        dir.path(),
        "a",
        &format!(
            "FROM {}\n{shared}\n{}\nCOPY a.txt /a\n",
            base.reference(),
            wait_at_gate("desk-was-here")
        ),
        &[("a.txt", "from the laptop\n")],
    );
    let b = ctx(
        dir.path(),
        "b",
        &format!(
            "FROM {}\n{shared}\nRUN --mount=type=cache,target=/gate,id=gate touch /gate/desk-was-here\nCOPY b.txt /b\n",
            base.reference(),
        ),
        &[("b.txt", "from the desk\n")],
    );
    let mut first = laptop
        .build(&a, &[])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let progress = Arc::new(Mutex::new(String::new()));
    let reader = {
        let (progress, stderr) = (progress.clone(), first.stderr.take().unwrap());
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut p = progress.lock().unwrap();
                p.push_str(&line);
                p.push('\n');
            }
        })
    };
    // The shared step is done (its cache record written) before the second build starts.
    wait_for("the laptop's shared step never finished", &|| {
        let p = progress.lock().unwrap();
        let Some(id) = p
            .lines()
            .find(|l| l.contains("echo shared"))
            .and_then(|l| l.split_whitespace().next())
        else {
            return false;
        };
        p.lines()
            .any(|l| l.starts_with(&format!("{id} ")) && l.contains("DONE"))
    });
    let second = output_ok(&mut desk.build(&b, &[]));
    assert!(
        second
            .stderr
            .lines()
            .any(|l| l.contains("echo shared") && l.contains("CACHED")),
        "the shared step ran again for the second client:\n{}",
        second.stderr
    );
    let status = first.wait().unwrap();
    reader.join().unwrap();
    assert!(status.success(), "{}", progress.lock().unwrap());
    assert_eq!(
        sat.metric("berth_satellite_builds_total{result=\"ok\"}"),
        2.0
    );
}

#[test]
fn a_client_killed_mid_upload_leaves_the_satellite_fine() {
    if !require_build() || !require("ip") || !require("tc") || !require("curl") {
        return;
    }
    let base = BuildBase::new();
    let dir = tempfile::tempdir().unwrap();
    let mut lab = Lab::new("satops");
    let (client_ns, sat_ns) = (lab.host("client"), lab.host("sat"));
    lab.link(&client_ns, "10.78.0.1/24", &sat_ns, "10.78.0.2/24");
    let sat = Sat::start(
        Some(&sat_ns),
        &dir.path().join("sat-root"),
        "10.78.0.2:8372",
        &["--advertise", "10.78.0.2"],
    );
    let client = Client::new(dir.path(), "laptop", Some(client_ns.clone()));
    assert!(client.add("sat", &sat.token(&[])).success);

    // 32 MiB that do not compress, through a link slowed to 8 Mbit/s: half a minute of
    // upload, so the kill lands in the middle.
    const BIG: usize = 32 << 20;
    let c = ctx(
        dir.path(),
        "big",
        &format!(
            "FROM {}\nCOPY big.bin /big.bin\nRUN test $(wc -c < /big.bin) -eq {BIG}\n",
            base.reference()
        ),
        &[],
    );
    let mut data = vec![0u8; BIG];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for b in data.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    std::fs::write(c.join("big.bin"), &data).unwrap();
    let dev =
        run(Command::new("ip").args(["-n", &client_ns.ns, "-o", "link", "show", "type", "veth"]))
            .split(':')
            .nth(1)
            .unwrap()
            .trim()
            .split('@')
            .next()
            .unwrap()
            .to_string();
    let tc = |args: &[&str]| run(Command::new("tc").args(["-n", &client_ns.ns]).args(args));
    tc(&[
        "qdisc", "add", "dev", &dev, "root", "tbf", "rate", "8mbit", "burst", "32kbit", "latency",
        "400ms",
    ]);

    let mut uploading = client
        .build(&c, &[])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let received = "berth_satellite_context_received_bytes_total";
    wait_for("no context bytes reached the satellite", &|| {
        sat.metric(received) > 0.0
    });
    let _ = uploading.kill(); // SIGKILL
    let _ = uploading.wait();
    tc(&["qdisc", "del", "dev", &dev, "root"]);
    let got = sat.metric(received);
    assert!(
        got < BIG as f64,
        "the upload finished before the kill ({got} bytes): the test proves nothing"
    );

    assert_eq!(sat.get("/healthz"), (200, "ok\n".into()));
    assert_eq!(sat.metric("berth_satellite_builds_running"), 0.0);
    // The cut file was not kept as if complete: it goes up again, whole, and the build works.
    output_ok(&mut client.build(&c, &[]));
    assert!(
        sat.metric(received) >= got + BIG as f64,
        "the second upload did not send the whole file"
    );
    assert_eq!(
        sat.metric("berth_satellite_builds_total{result=\"ok\"}"),
        1.0
    );
}

#[test]
fn manifests_are_kubernetes_yaml_with_the_essentials() {
    let out = output_ok(Command::new(berth_bin()).args([
        "satellite",
        "manifests",
        "--name",
        "builder",
        "--image",
        "registry.internal:5000/berth:1",
        "--storage",
        "80Gi",
        "--image-pull-secret",
        "regcred",
    ]));
    let yaml = out.stdout;
    // Rendered from typed objects, the pod through berth_kube::pod.
    let docs: Vec<&str> = yaml.split("\n---\n").collect();
    assert_eq!(docs.len(), 2, "a Service and a StatefulSet:\n{yaml}");
    for (doc, kind) in docs.iter().zip(["Service", "StatefulSet"]) {
        assert!(doc.contains(&format!("\nkind: {kind}\n")), "{doc}");
        assert!(doc.contains("\n  name: builder\n"), "{doc}");
    }
    for essential in [
        "port: 8372",
        "containerPort: 8372",
        "privileged: true",
        "volumeClaimTemplates:",
        "storage: 80Gi",
        "image: \"registry.internal:5000/berth:1\"",
        "mountPath: /var/lib/berth",
        "- --root=/var/lib/berth",
        "secretName: builder-ca",
        "optional: true",
        "- --ca-dir=/etc/berth/ca",
        "path: /healthz",
        "terminationGracePeriodSeconds: 660",
        "serviceAccountName: default",
        "imagePullSecrets:\n        - name: regcred\n",
        "# berth satellite builder:",
    ] {
        assert!(yaml.contains(essential), "no {essential:?} in:\n{yaml}");
    }
    // Parsed by a YAML parser where one is at hand: kubectl's kustomize needs no cluster.
    if Command::new("kubectl")
        .args(["version", "--client"])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("satellite.yaml"), &yaml).unwrap();
        std::fs::write(
            dir.path().join("kustomization.yaml"),
            "resources:\n- satellite.yaml\n",
        )
        .unwrap();
        let parsed = output_ok(Command::new("kubectl").arg("kustomize").arg(dir.path()));
        for line in [
            "kind: StatefulSet",
            "kind: Service",
            "privileged: true",
            "storage: 80Gi",
        ] {
            assert!(parsed.stdout.contains(line), "{line}: {}", parsed.stdout);
        }
    }
    // Names Kubernetes would refuse are refused here.
    let bad =
        output(Command::new(berth_bin()).args(["satellite", "manifests", "--name", "Bad_Name"]));
    assert!(!bad.success);
    assert!(bad.stderr.contains("--name"), "{}", bad.stderr);
    let bad =
        output(Command::new(berth_bin()).args(["satellite", "manifests", "--storage", "lots"]));
    assert!(!bad.success);
    assert!(bad.stderr.contains("--storage"), "{}", bad.stderr);
}

#[test]
fn a_ca_dir_keeps_clients_trusted_on_a_fresh_root() {
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let first_root = dir.path().join("first-root");
    let mut sat = Sat::start(None, &first_root, &addr, &["--advertise", "127.0.0.1"]);
    let client = Client::new(dir.path(), "laptop", None);
    assert!(client.add("s1", &sat.token(&[])).success);
    sat.kill9();

    // The operator's copy of the CA (a mounted Secret in Kubernetes), 0400 as mounted.
    let secret = dir.path().join("secret");
    std::fs::create_dir_all(&secret).unwrap();
    for f in ["ca.crt", "ca.key"] {
        let to = secret.join(f);
        std::fs::copy(first_root.join("satellite/pki").join(f), &to).unwrap();
        std::fs::set_permissions(&to, std::os::unix::fs::PermissionsExt::from_mode(0o400)).unwrap();
    }
    // The volume is gone: a fresh root, same address, the CA from --ca-dir.
    let fresh = dir.path().join("fresh-root");
    let ca_dir = secret.to_str().unwrap();
    let _sat = Sat::start(
        None,
        &fresh,
        &addr,
        &["--advertise", "127.0.0.1", "--ca-dir", ca_dir],
    );
    assert_eq!(
        std::fs::read(fresh.join("satellite/pki/ca.crt")).unwrap(),
        std::fs::read(secret.join("ca.crt")).unwrap(),
        "the given CA is installed into the root (token create pins it)"
    );
    let inspect = output(client.berth().args(["satellite", "inspect", "s1"]));
    assert!(inspect.success, "{}", inspect.stderr);

    // An empty --ca-dir (the optional Secret not made): the root makes its own CA.
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let own = dir.path().join("own-root");
    let _other = loopback_sat(&own, &["--ca-dir", empty.to_str().unwrap()]);
    assert_ne!(
        std::fs::read(own.join("satellite/pki/ca.crt")).unwrap(),
        std::fs::read(secret.join("ca.crt")).unwrap()
    );
}
