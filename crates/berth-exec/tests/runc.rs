//! Processes in real runc containers over real overlay snapshots of a busybox layer
//! made from Debian's busybox-static.

mod common;

use berth_exec::{BundleBuilder, Executor, Meta, Network, Runc};
use berth_snapshot::{DiffOptions, diff};
use common::*;

#[test]
fn a_step_runs_and_its_changes_become_a_layer() {
    if !ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_snaps, exec, active) = setup(dir.path(), "a");
    let (code, out, err) = run(
        &exec,
        &active.mounts(),
        &[],
        &meta(
            "echo $GREETING from $(pwd); echo oops >&2; echo new > /created; rm /bin/true; exit 3",
        ),
    );
    assert_eq!(code, 3, "{out} {err}");
    assert_eq!(out, "hello from /\n");
    assert_eq!(err, "oops\n");
    let mut layer = Vec::new();
    let info = diff(&active.upper, &mut layer, &DiffOptions::default()).unwrap();
    let mut names = Vec::new();
    let mut a = tar::Archive::new(flate2::read::GzDecoder::new(layer.as_slice()));
    for e in a.entries().unwrap() {
        names.push(e.unwrap().path().unwrap().display().to_string());
    }
    assert!(names.contains(&"created".to_string()), "{names:?}");
    assert!(names.contains(&"bin/.wh.true".to_string()), "{names:?}");
    assert!(!info.empty);
    // No mount and no bundle is left behind.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(dir.path().to_str().unwrap()),
        "a mount was left behind"
    );
    assert_eq!(
        std::fs::read_dir(dir.path().join("exec/bundles"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn user_network_and_bind_mounts() {
    if !ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_snaps, exec, active) = setup(dir.path(), "b");
    let cache = dir.path().join("cache");
    std::fs::create_dir(&cache).unwrap();
    let mut m = meta("id -u; id -g; ls /sys/class/net; echo kept > /cache/f && cd /tmp && pwd");
    m.uid = 65534;
    m.gid = 65534;
    m.network = Network::None;
    let (code, out, err) = run(&exec, &active.mounts(), &[bind(&cache, "/cache")], &m);
    assert_eq!(
        code, 1,
        "nobody may not write the cache dir owned by root: {out} {err}"
    );
    assert!(out.starts_with("65534\n65534\nlo\n"), "{out}");
    m.uid = 0;
    m.gid = 0;
    let (code, out, _) = run(&exec, &active.mounts(), &[bind(&cache, "/cache")], &m);
    assert_eq!(code, 0);
    assert!(out.ends_with("/tmp\n"), "{out}");
    assert_eq!(std::fs::read_to_string(cache.join("f")).unwrap(), "kept\n");
    // Host network sees more than loopback.
    let (_, out, _) = run(
        &exec,
        &active.mounts(),
        &[],
        &meta("ls /sys/class/net | wc -l"),
    );
    assert!(out.trim().parse::<u32>().unwrap() >= 1);
}

#[test]
fn leftovers_of_dead_processes_are_removed() {
    if !ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let stale = dir.path().join("exec/bundles/999999999-0/rootfs");
    std::fs::create_dir_all(&stale).unwrap();
    let _exec = Runc::new(&dir.path().join("exec")).unwrap();
    assert!(!stale.exists());
}

#[test]
fn bundle_ids_are_checked() {
    assert!(BundleBuilder::new("ok-1.a_b").is_ok());
    for bad in ["", ".x", "a/b", "a b", &"x".repeat(129)] {
        assert!(BundleBuilder::new(bad).is_err(), "{bad:?}");
    }
    let cfg = BundleBuilder::new("x")
        .unwrap()
        .with_meta(&Meta {
            network: Network::None,
            ..Meta::default()
        })
        .spec()
        .unwrap();
    let cfg = serde_json::to_value(cfg).unwrap();
    assert!(
        cfg["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["type"] == "network")
    );
    assert_eq!(cfg["process"]["cwd"], "/");
}

#[test]
fn a_runtime_failure_is_an_error_not_an_exit_code() {
    if !ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_snaps, exec, active) = setup(dir.path(), "c");
    let m = Meta {
        args: vec!["/no/such/binary".into()],
        ..meta("")
    };
    let err = exec
        .run(&active.mounts(), &[], &m, &mut |_, _| {})
        .unwrap_err();
    assert!(err.to_string().contains("/no/such/binary"), "{err}");
}

/// A privileged process runs only on an executor told to allow it; there it has what
/// `docker run --privileged` gives (mounting needs CAP_SYS_ADMIN and no seccomp), and
/// the same script in the sandbox is refused by the kernel.
#[test]
fn privileged_processes_need_the_executors_consent() {
    if !ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_snaps, exec, active) = setup(dir.path(), "p");
    let script = "mkdir -p /mnt && busybox mount -t tmpfs none /mnt && echo mounted";
    let privileged = Meta {
        privileged: true,
        ..meta(script)
    };
    let err = exec
        .run(&active.mounts(), &[], &privileged, &mut |_, _| {})
        .unwrap_err();
    assert!(
        err.to_string().contains("entitlement security.insecure"),
        "{err}"
    );
    let (code, _, _) = run(&exec, &active.mounts(), &[], &meta(script));
    assert_ne!(code, 0, "the sandbox cannot mount");
    let exec = exec.with_privileged(true);
    let (code, out, err) = run(&exec, &active.mounts(), &[], &privileged);
    assert_eq!((code, out.as_str()), (0, "mounted\n"), "{err}");
}

/// Extra hosts reach `/etc/hosts` in every network mode: after berth's own lines in a
/// namespace of the step's own, after the host's lines with the host's network.
#[test]
fn extra_hosts_are_in_etc_hosts_in_every_network_mode() {
    if !ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_snaps, exec, active) = setup(dir.path(), "h");
    let extra = vec![
        ("db.internal".to_string(), "192.0.2.7".parse().unwrap()),
        ("v6.internal".to_string(), "2001:db8::7".parse().unwrap()),
    ];
    let host_file = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
    for network in [Network::Isolated, Network::None, Network::Host] {
        let m = Meta {
            network,
            extra_hosts: extra.clone(),
            ..meta("cat /etc/hosts")
        };
        let (code, out, err) = run(&exec, &active.mounts(), &[], &m);
        assert_eq!(code, 0, "{network:?}: {err}");
        assert!(
            out.ends_with("192.0.2.7\tdb.internal\n2001:db8::7\tv6.internal\n"),
            "{network:?}: {out}"
        );
        assert!(out.contains("localhost"), "{network:?}: {out}");
        if network == Network::Host {
            assert!(out.starts_with(host_file.trim_end()), "{out}");
        }
    }
    // Without extras, the host's network keeps the host's file as it is.
    let m = Meta {
        network: Network::Host,
        ..meta("cat /etc/hosts")
    };
    let (_, out, _) = run(&exec, &active.mounts(), &[], &m);
    assert_eq!(out, host_file);
}
