//! Hosts for multi-host tests: network namespaces joined by veth pairs, made with
//! iproute2 and removed on drop. Each namespace is a "host" with its own loopback and
//! addresses the test chooses; nothing touches the machine's own network.

use std::process::Command;

/// A set of namespaces made by one test; all are deleted when it drops.
pub struct Lab {
    tag: String,
    hosts: Vec<String>,
    links: usize,
}

/// One namespace ("host").
#[derive(Debug, Clone)]
pub struct Host {
    /// The namespace's name (`ip netns exec NAME …`).
    pub ns: String,
}

impl Host {
    /// A command run inside this host: `nsenter --net=/run/netns/NS program`. Only the
    /// network namespace changes: `ip netns exec` also makes a mount namespace with a
    /// fresh /sys, which hides the cgroup mounts runc needs.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.ns))
            .arg("--")
            .arg(program);
        c
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run ip {args:?}: {e}"));
    assert!(
        out.status.success(),
        "ip {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Lab {
    /// A lab whose namespaces are named after `tag` and this process.
    pub fn new(tag: &str) -> Lab {
        Lab {
            tag: format!("berth-{tag}-{}", std::process::id()),
            hosts: Vec::new(),
            links: 0,
        }
    }

    /// A new namespace with its loopback up.
    pub fn host(&mut self, name: &str) -> Host {
        let ns = format!("{}-{name}", self.tag);
        let _ = Command::new("ip").args(["netns", "delete", &ns]).output();
        ip(&["netns", "add", &ns]);
        self.hosts.push(ns.clone());
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        Host { ns }
    }

    /// Joins `a` and `b` with a veth pair, `a` getting `a_addr` and `b` `b_addr`
    /// (CIDR notation, e.g. `10.77.0.1/24`).
    pub fn link(&mut self, a: &Host, a_addr: &str, b: &Host, b_addr: &str) {
        self.links += 1;
        // Interface names are at most 15 bytes; the ends are renamed inside.
        let base = format!("bv{}x{}", std::process::id() % 100_000, self.links);
        let (ea, eb) = (format!("{base}a"), format!("{base}b"));
        ip(&["link", "add", &ea, "type", "veth", "peer", "name", &eb]);
        ip(&["link", "set", &ea, "netns", &a.ns]);
        ip(&["link", "set", &eb, "netns", &b.ns]);
        for (host, dev, addr) in [(a, &ea, a_addr), (b, &eb, b_addr)] {
            ip(&["-n", &host.ns, "addr", "add", addr, "dev", dev]);
            ip(&["-n", &host.ns, "link", "set", dev, "up"]);
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Deleting a namespace deletes its veth ends (and their peers).
        for ns in &self.hosts {
            let _ = Command::new("ip").args(["netns", "delete", ns]).output();
        }
    }
}
