//! RUN steps are isolated as Docker isolates them (issue 13): through `berth build`, a
//! step cannot reach a server on the host's 127.0.0.1, sees only its own interfaces and
//! slirp's resolver, and leaves no resolver or hosts file in the image;
//! `RUN --network=host` is refused without the `network.host` entitlement and reaches
//! the host's loopback once `--allow network.host` (or the config switch) grants it.
//!
//! The only server is on 127.0.0.1; every connect has a timeout of seconds.

mod common;

use std::io::{Read, Write};

use common::*;

/// A tiny HTTP server on 127.0.0.1 answering `host says hi`; its address.
fn host_server() -> String {
    loopback_server(|mut c| {
        let mut buf = [0u8; 1024];
        let _ = c.read(&mut buf);
        let _ = c.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 13\r\n\r\nhost says hi\n");
    })
}

/// `RUN` that fetches `http://ADDR/` into /got (`busybox wget` crashes on this
/// machine's busybox-static, so nc speaks HTTP/1.0).
fn fetch(addr: &str) -> String {
    let (host, port) = addr.split_once(':').unwrap();
    format!(
        "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | busybox timeout 5 busybox nc -w 3 {host} {port} > /got"
    )
}

/// A build with a server on the host's 127.0.0.1: the busybox base, a temporary folder
/// and a context whose Dockerfile `dockerfile(base reference, fetch RUN command)` makes.
struct Project {
    _base: BuildBase,
    dir: tempfile::TempDir,
    ctx: std::path::PathBuf,
    addr: String,
}

fn project(dockerfile: impl Fn(&str, &str) -> String) -> Project {
    let base = BuildBase::new();
    let addr = host_server();
    let dir = tempfile::tempdir().unwrap();
    let ctx = dir.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        dockerfile(&base.reference(), &fetch(&addr)),
    )
    .unwrap();
    Project {
        _base: base,
        dir,
        ctx,
        addr,
    }
}

#[test]
fn default_steps_are_fenced_off_the_host() {
    if !require_build() {
        return;
    }
    let p = project(|base, fetch| {
        format!(
            "FROM {base}\n\
             RUN {fetch} ; echo \"exit=$?\" >> /got\n\
             RUN ls /sys/class/net > /ifaces && cp /etc/resolv.conf /resolv-seen\n"
        )
    });
    let (dir, ctx, addr) = (&p.dir, p.ctx.as_path(), &p.addr);
    let out_dir = dir.path().join("out");
    output_ok(
        berth_build(&dir.path().join("root"))
            .arg("--output")
            .arg(format!("type=local,dest={}", out_dir.display()))
            .arg(ctx),
    );
    let got = std::fs::read_to_string(out_dir.join("got")).unwrap();
    assert!(
        !got.contains("host says hi"),
        "a step reached {addr}: {got}"
    );
    assert!(!got.contains("exit=0"), "{got}");
    assert_eq!(
        std::fs::read_to_string(out_dir.join("ifaces")).unwrap(),
        "lo\ntap0\n"
    );
    let resolv = std::fs::read_to_string(out_dir.join("resolv-seen")).unwrap();
    assert!(resolv.starts_with("nameserver 10.0.2.3\n"), "{resolv}");
    // The files berth bound over them stay out of the image (busybox has neither).
    for f in ["etc/resolv.conf", "etc/hosts"] {
        assert!(!out_dir.join(f).exists(), "{f} ended up in the image");
    }
}

#[test]
fn host_network_needs_the_network_host_entitlement() {
    if !require_build() {
        return;
    }
    let p = project(|base, fetch| {
        format!("FROM {base}\nRUN echo first > /first\nRUN --network=host {fetch}\n")
    });
    let (dir, ctx) = (&p.dir, p.ctx.as_path());
    let root = dir.path().join("root");
    let refused = output(berth_build(&root).arg(ctx));
    assert!(!refused.success);
    for said in [
        "Dockerfile:3",
        "network.host",
        "--allow network.host",
        "[build] allow",
    ] {
        assert!(refused.stderr.contains(said), "{said}: {}", refused.stderr);
    }
    // Refused before anything ran.
    assert!(!refused.stderr.contains("echo first"), "{}", refused.stderr);

    let out_dir = dir.path().join("out");
    output_ok(
        berth_build(&root)
            .args(["--allow", "network.host", "--output"])
            .arg(format!("type=local,dest={}", out_dir.display()))
            .arg(ctx),
    );
    let got = std::fs::read_to_string(out_dir.join("got")).unwrap();
    assert!(got.contains("host says hi"), "{got}");

    // The same grant from config.toml.
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "[build]\nallow = [\"network.host\"]\n").unwrap();
    let out_dir = dir.path().join("out2");
    let mut cmd = berth_build(&root);
    cmd.arg("--no-cache")
        .arg("--output")
        .arg(format!("type=local,dest={}", out_dir.display()))
        .arg(ctx);
    let mut with_config = std::process::Command::new(berth_bin());
    with_config.arg("--config").arg(&config);
    with_config.args(cmd.get_args());
    with_config.envs(cmd.get_envs().filter_map(|(k, v)| Some((k, v?))));
    output_ok(&mut with_config);
    let got = std::fs::read_to_string(out_dir.join("got")).unwrap();
    assert!(got.contains("host says hi"), "{got}");

    let bad = output(
        berth_build(&root)
            .args(["--allow", "network.everything"])
            .arg(ctx),
    );
    assert!(!bad.success);
    assert!(bad.stderr.contains("network.host"), "{}", bad.stderr);
}

/// `RUN --security=insecure` is refused without `--allow security.insecure`, before
/// anything runs; granted, the step is privileged (it mounts a tmpfs, which needs
/// `CAP_SYS_ADMIN` and no seccomp) while the steps around it stay in the sandbox.
#[test]
fn insecure_steps_need_the_entitlement_and_run_privileged() {
    if !require_build() {
        return;
    }
    let p = project(|base, _| {
        format!(
            "FROM {base}\nRUN echo first > /first\n\
             RUN --security=insecure mkdir -p /mnt && busybox mount -t tmpfs none /mnt && \
             echo mounted > /mnt/x && cat /mnt/x > /privileged && busybox umount /mnt\n\
             RUN (busybox mount -t tmpfs none /mnt 2>/dev/null && echo mounted || echo refused) > /sandboxed\n"
        )
    });
    let (dir, ctx) = (&p.dir, p.ctx.as_path());
    let root = dir.path().join("root");
    let refused = output(berth_build(&root).arg(ctx));
    assert!(!refused.success);
    for said in [
        "Dockerfile:3",
        "RUN --security=insecure needs the entitlement security.insecure",
        "--allow security.insecure",
    ] {
        assert!(refused.stderr.contains(said), "{said}: {}", refused.stderr);
    }
    assert!(!refused.stderr.contains("echo first"), "{}", refused.stderr);

    let out_dir = dir.path().join("out");
    output_ok(
        berth_build(&root)
            .args(["--allow", "security.insecure", "--output"])
            .arg(format!("type=local,dest={}", out_dir.display()))
            .arg(ctx),
    );
    let read = |f: &str| std::fs::read_to_string(out_dir.join(f)).unwrap();
    assert_eq!(read("privileged"), "mounted\n");
    assert_eq!(
        read("sandboxed"),
        "refused\n",
        "the next step is sandboxed again"
    );
    assert!(
        !out_dir.join("mnt/x").exists(),
        "the tmpfs was the step's, not the layer's"
    );
}
