//! Hosts for multi-host tests: network namespaces joined by veth pairs, made with
//! iproute2 and removed on drop. Each namespace is a "host" with its own loopback and
//! addresses the test chooses. Only [`Lab::link_root`] touches the machine's own network
//! namespace (for a host that must reach the machine's dockerd, or be reached by it): it
//! adds one veth end there, with the address the test chooses, and removes it on drop.

use std::process::Command;

/// A set of namespaces made by one test; all are deleted when it drops.
pub struct Lab {
    tag: String,
    hosts: Vec<String>,
    /// veth ends this lab left in the machine's root network namespace.
    root_ends: Vec<String>,
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
            root_ends: Vec::new(),
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
        let (ea, eb) = self.veth_names();
        ip(&["link", "add", &ea, "type", "veth", "peer", "name", &eb]);
        ip(&["link", "set", &ea, "netns", &a.ns]);
        ip(&["link", "set", &eb, "netns", &b.ns]);
        for (host, dev, addr) in [(a, &ea, a_addr), (b, &eb, b_addr)] {
            ip(&["-n", &host.ns, "addr", "add", addr, "dev", dev]);
            ip(&["-n", &host.ns, "link", "set", dev, "up"]);
        }
    }

    /// Joins `host` to the machine's own (root) network namespace with a veth pair, the
    /// root end getting `root_addr` and `host`'s end `host_addr` (CIDR notation, e.g.
    /// `10.78.0.1/24` and `10.78.0.2/24`); processes of the machine (its dockerd) then
    /// reach `host` at `host_addr`. Returns the root end's interface name. Choose a
    /// subnet the machine does not use: its routes gain one for it until the lab drops.
    pub fn link_root(&mut self, host: &Host, root_addr: &str, host_addr: &str) -> String {
        let (root_end, host_end) = self.veth_names();
        ip(&[
            "link", "add", &root_end, "type", "veth", "peer", "name", &host_end,
        ]);
        self.root_ends.push(root_end.clone());
        ip(&["link", "set", &host_end, "netns", &host.ns]);
        ip(&["addr", "add", root_addr, "dev", &root_end]);
        ip(&["link", "set", &root_end, "up"]);
        ip(&["-n", &host.ns, "addr", "add", host_addr, "dev", &host_end]);
        ip(&["-n", &host.ns, "link", "set", &host_end, "up"]);
        root_end
    }

    /// Names for the two ends of a new veth pair, unique in this process (tests of one
    /// binary run in parallel, each with its lab).
    fn veth_names(&self) -> (String, String) {
        static PAIRS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = PAIRS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        // Interface names are at most 15 bytes.
        let base = format!("bv{}x{n}", std::process::id() % 100_000);
        (format!("{base}a"), format!("{base}b"))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Deleting one end of a veth pair deletes both.
        for dev in &self.root_ends {
            let _ = Command::new("ip").args(["link", "delete", dev]).output();
        }
        // Deleting a namespace deletes its veth ends (and their peers).
        for ns in &self.hosts {
            let _ = Command::new("ip").args(["netns", "delete", ns]).output();
        }
    }
}
