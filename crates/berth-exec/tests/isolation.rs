//! A step with the default network is fenced off the host as a Docker container is: it
//! cannot reach the host's loopback, its own addresses, its interfaces or its abstract
//! unix sockets, but reaches the outside world (here a network namespace the test makes,
//! standing in for the internet); seccomp and masked `/proc` paths are Docker's.
//!
//! All traffic stays on this machine: the host's 127.0.0.1 and own addresses, and a
//! namespace made (and removed) by the test. Every connect has a timeout of seconds.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use berth_exec::{Meta, Network};
use common::*;

/// The host's first IPv4 address that is not loopback.
fn host_address() -> Option<String> {
    let out = Command::new("ip")
        .args(["-o", "-4", "addr", "show", "scope", "global"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
        l.split_whitespace()
            .nth(3)?
            .split('/')
            .next()
            .map(String::from)
    })
}

/// Whether a connection is waiting on `l` (never accepted here: a step must not reach it).
fn was_reached(l: &TcpListener) -> bool {
    l.set_nonblocking(true).unwrap();
    l.accept().is_ok()
}

/// A network namespace standing in for the internet: a veth pair to the host with
/// addresses the test chooses, and busybox's httpd inside serving `hello`. Everything is
/// removed on drop.
struct Internet {
    ns: String,
    addr: String,
    server: Child,
    _www: tempfile::TempDir,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Internet {
    fn new(tag: &str) -> Internet {
        let pid = std::process::id();
        let ns = format!("berth-test-{pid}-{tag}");
        // Interface names have at most 15 characters.
        let (outer, inner) = (format!("bt{pid}{tag}a"), format!("bt{pid}{tag}b"));
        let net = format!("10.203.{}", pid % 250);
        let addr = format!("{net}.2");
        ip(&["netns", "add", &ns]);
        ip(&[
            "link", "add", &outer, "type", "veth", "peer", "name", &inner, "netns", &ns,
        ]);
        ip(&["addr", "add", &format!("{net}.1/30"), "dev", &outer]);
        ip(&["link", "set", &outer, "up"]);
        let in_ns = |args: &[&str]| {
            let mut all = vec!["-n", ns.as_str()];
            all.extend_from_slice(args);
            ip(&all);
        };
        in_ns(&["addr", "add", &format!("{addr}/30"), "dev", &inner]);
        in_ns(&["link", "set", &inner, "up"]);
        in_ns(&["link", "set", "lo", "up"]);
        let www = tempfile::tempdir().unwrap();
        std::fs::write(www.path().join("hello"), "hello from the internet\n").unwrap();
        let server = Command::new("ip")
            .args(["netns", "exec", &ns, "/bin/busybox", "httpd", "-f", "-p"])
            .arg(format!("{addr}:8080"))
            .arg("-h")
            .arg(www.path())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let target = format!("{addr}:8080").parse().unwrap();
        let up = (0..50).any(|_| {
            let ok = TcpStream::connect_timeout(&target, Duration::from_secs(1)).is_ok();
            if !ok {
                std::thread::sleep(Duration::from_millis(100));
            }
            ok
        });
        let net = Internet {
            ns,
            addr,
            server,
            _www: www,
        };
        assert!(up, "httpd in {} did not listen", net.ns);
        net
    }
}

impl Drop for Internet {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        // Deleting the namespace deletes the veth pair with it.
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

fn isolated(script: &str) -> Meta {
    Meta {
        network: Network::Isolated,
        ..meta(script)
    }
}

#[test]
fn a_step_cannot_reach_the_hosts_loopback_nor_its_addresses() {
    if !ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_snaps, exec, active) = setup(dir.path(), "loop");
    let on_loopback = TcpListener::bind("127.0.0.1:0").unwrap();
    let on_any = TcpListener::bind("0.0.0.0:0").unwrap();
    let (p1, p2) = (
        on_loopback.local_addr().unwrap().port(),
        on_any.local_addr().unwrap().port(),
    );
    let mut targets = vec![
        format!("127.0.0.1 {p1}"),
        format!("10.0.2.2 {p1}"),
        format!("10.0.2.2 {p2}"),
    ];
    if let Some(a) = host_address() {
        targets.push(format!("{a} {p2}"));
    }
    let script = format!(
        "for t in {}; do \
           if echo x | busybox timeout 4 busybox nc -w 2 $t; then echo \"reached $t\"; \
           else echo \"refused $t\"; fi; \
         done",
        targets
            .iter()
            .map(|t| format!("'{t}'"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let (code, out, err) = run(&exec, &active.mounts(), &[], &isolated(&script));
    assert_eq!(code, 0, "{out}{err}");
    assert!(!out.contains("reached"), "{out}");
    assert_eq!(out.matches("refused").count(), targets.len(), "{out}{err}");
    assert!(!was_reached(&on_loopback), "a step reached 127.0.0.1:{p1}");
    assert!(!was_reached(&on_any), "a step reached 0.0.0.0:{p2}");
}

#[test]
fn a_step_sees_neither_the_hosts_interfaces_nor_its_loopback_traffic_nor_its_sockets() {
    if !ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_snaps, exec, active) = setup(dir.path(), "sniff");
    let sync = dir.path().join("sync");
    std::fs::create_dir(&sync).unwrap();
    let name = format!("berth-test-abstract-{}", std::process::id());
    let addr =
        <std::os::unix::net::SocketAddr as std::os::linux::net::SocketAddrExt>::from_abstract_name(
            name.as_bytes(),
        )
        .unwrap();
    let _abstract = std::os::unix::net::UnixListener::bind_addr(&addr).unwrap();
    // The step reads its loopback's counter, lets the host send a MiB over the host's
    // loopback, and reads the counter again: a step on the host's loopback would see it.
    let script = format!(
        "ls /sys/class/net; echo \"unix: $(grep -c {name} /proc/net/unix)\"; \
         a=$(cat /sys/class/net/lo/statistics/rx_bytes); : > /sync/ready; \
         i=0; while [ ! -e /sync/go ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done; \
         b=$(cat /sys/class/net/lo/statistics/rx_bytes); echo \"lo grew by $((b-a))\""
    );
    let step = std::thread::scope(|s| {
        let step = s.spawn(|| {
            run(
                &exec,
                &active.mounts(),
                &[bind(&sync, "/sync")],
                &isolated(&script),
            )
        });
        for _ in 0..200 {
            if sync.join("ready").exists() || step.is_finished() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut server, _) = l.accept().unwrap();
        let sink = std::thread::spawn(move || {
            let mut all = Vec::new();
            server.read_to_end(&mut all).map(|_| all.len())
        });
        c.write_all(&vec![7u8; 1 << 20]).unwrap();
        drop(c);
        assert_eq!(sink.join().unwrap().unwrap(), 1 << 20);
        std::fs::write(sync.join("go"), "").unwrap();
        step.join().unwrap()
    });
    let (code, out, err) = step;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("lo\ntap0\nunix: 0\n"), "{out}{err}");
    let grew: u64 = out
        .rsplit("lo grew by ")
        .next()
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        grew < 64 << 10,
        "the step's loopback saw the host's traffic ({grew} bytes)"
    );
}

#[test]
fn a_step_reaches_the_outside_through_a_pooled_namespace_with_slirps_resolver() {
    if !ready() {
        return;
    }
    let internet = Internet::new("i");
    let dir = tempfile::tempdir().unwrap();
    let (_snaps, exec, active) = setup(dir.path(), "out");
    let script = format!(
        "printf 'GET /hello HTTP/1.0\\r\\n\\r\\n' | busybox timeout 5 busybox nc -w 3 {} 8080 \
           | grep hello; cat /etc/resolv.conf /etc/hosts; \
         echo \"ns=$(readlink /proc/self/ns/net)\"",
        internet.addr
    );
    let (code, out, err) = run(&exec, &active.mounts(), &[], &isolated(&script));
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.starts_with("hello from the internet\nnameserver 10.0.2.3\n"),
        "{out}{err}"
    );
    assert!(
        !out.lines()
            .any(|l| l.starts_with("nameserver") && l != "nameserver 10.0.2.3"),
        "{out}"
    );
    assert!(out.contains("127.0.0.1\tlocalhost\n"), "{out}");
    assert!(out.contains("10.0.2.100\tberth\n"), "{out}");
    // The second step gets the first one's namespace back from the pool.
    let (code, again, err) = run(&exec, &active.mounts(), &[], &isolated(&script));
    assert_eq!(code, 0, "{again}{err}");
    let ns = |o: &str| {
        o.lines()
            .find(|l| l.starts_with("ns="))
            .unwrap()
            .to_string()
    };
    assert_eq!(ns(&out), ns(&again));
    let host_ns = std::fs::read_link("/proc/self/ns/net").unwrap();
    assert_ne!(ns(&out), format!("ns={}", host_ns.display()));
}

#[test]
fn seccomp_and_masked_paths_are_dockers() {
    if !ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_snaps, exec, active) = setup(dir.path(), "sec");
    let script = "busybox unshare -U true; echo \"unshare=$?\"; \
                  echo \"interrupts=$(cat /proc/interrupts | busybox wc -c)\"; \
                  echo \"kcore=$(cat /proc/kcore | busybox wc -c)\"; \
                  echo \"firmware=$(ls /sys/firmware | busybox wc -l)\"; \
                  (echo 1 > /proc/sysrq-trigger) 2>/dev/null; echo \"sysrq=$?\"";
    let (code, out, err) = run(&exec, &active.mounts(), &[], &isolated(script));
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        !out.contains("unshare=0"),
        "unshare of a user namespace worked: {out}"
    );
    assert!(err.contains("Operation not permitted"), "{err}");
    for masked in ["interrupts=0", "kcore=0", "firmware=0"] {
        assert!(out.contains(masked), "{masked}: {out}");
    }
    assert!(!out.contains("sysrq=0"), "{out}");
    // The filter holds for a step that runs as another user too (runc loads it before
    // switching users, since noNewPrivileges stays false as in Docker).
    let nobody = Meta {
        uid: 65534,
        gid: 65534,
        ..isolated("busybox unshare -U true; echo \"unshare=$?\"")
    };
    let (code, out, err) = run(&exec, &active.mounts(), &[], &nobody);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("unshare=1"), "{out}{err}");
    assert!(err.contains("Operation not permitted"), "{err}");
}
