//! Step network namespaces: each RUN with the default network gets a namespace of its
//! own whose only way out is slirp4netns, a user-mode TCP/IP stack on the host side.
//!
//! Why slirp4netns: it gives a namespace outbound access with no global host state (no
//! bridge, no iptables rule, no `ip_forward`), so a killed berth leaves nothing behind,
//! and it runs from Debian's package. In the namespace it configures `tap0` =
//! 10.0.2.100/24, a default route through 10.0.2.2 and brings `lo` up;
//! `--disable-host-loopback` keeps 10.0.2.2 from reaching the host's 127.0.0.1, and its
//! DNS forwarder at 10.0.2.3 asks the host's resolvers (loopback ones included, since
//! slirp runs on the host). What slirp would still reach are host services bound to
//! 0.0.0.0 through the host's *own* addresses: each namespace gets a `prohibit` route for
//! every address the host has when the namespace is made. The step has no
//! `CAP_NET_ADMIN` and cannot remove them.
//!
//! Namespaces leave no file behind: a short-lived thread unshares its network namespace
//! and opens `/proc/thread-self/ns/net`; berth keeps that descriptor, and runc and slirp
//! enter the namespace through `/proc/<berth pid>/fd/<n>`. slirp gets an `--exit-fd`
//! pipe whose other end only berth holds, so it exits with berth, however berth dies.
//!
//! Namespaces are pooled: a RUN takes one and gives it back when its container is gone.
//! That is safe because every process of a step lives in the step's pid namespace and
//! dies with it, and the step cannot change the namespace's addresses, routes or
//! sysctls (no `CAP_NET_ADMIN`, `/proc/sys` read-only); what stays are at most sockets in
//! `TIME_WAIT`. One namespace is made in the background when the executor opens, so the
//! first RUN does not wait for slirp.

use std::io::{Read, Write};
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::{Error, Result};

/// The step's address on `tap0`.
pub const STEP_ADDR: &str = "10.0.2.100";
/// slirp's DNS forwarder, the step's only nameserver.
pub const DNS_ADDR: &str = "10.0.2.3";

/// How long slirp may take to configure a namespace.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// A network namespace with its slirp4netns process.
#[derive(Debug)]
struct StepNet {
    ns: OwnedFd,
    slirp: Child,
    /// Closing this makes slirp exit.
    exit: Option<OwnedFd>,
}

impl StepNet {
    /// `/proc/<pid>/fd/<n>`: how runc and slirp enter the namespace.
    fn path(&self) -> PathBuf {
        PathBuf::from(format!(
            "/proc/{}/fd/{}",
            std::process::id(),
            self.ns.as_raw_fd()
        ))
    }

    fn alive(&mut self) -> bool {
        matches!(self.slirp.try_wait(), Ok(None))
    }
}

impl Drop for StepNet {
    fn drop(&mut self) {
        self.exit.take();
        let _ = self.slirp.kill();
        let _ = self.slirp.wait();
    }
}

#[derive(Debug, Default)]
struct State {
    idle: Vec<StepNet>,
    warming: bool,
}

#[derive(Debug, Default)]
struct Inner {
    state: Mutex<State>,
    changed: Condvar,
}

/// The pool of step namespaces of one executor.
#[derive(Debug, Clone, Default)]
pub(crate) struct NetPool {
    inner: Arc<Inner>,
}

/// A namespace lent to one step; back to the pool when dropped.
#[derive(Debug)]
pub(crate) struct Lease {
    net: Option<StepNet>,
    pool: Arc<Inner>,
    discard: bool,
}

impl Lease {
    /// The path runc joins.
    pub(crate) fn path(&self) -> PathBuf {
        self.net.as_ref().expect("leased").path()
    }

    /// Do not give the namespace back: a privileged step (with `CAP_NET_ADMIN`) may have
    /// changed its routes, addresses or firewall, so nothing else may use it.
    pub(crate) fn discard(mut self) -> Self {
        self.discard = true;
        self
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(mut net) = self.net.take()
            && !self.discard
            && net.alive()
        {
            self.pool.state.lock().expect("pool").idle.push(net);
        }
    }
}

impl NetPool {
    /// Make one namespace in the background, if this process can (root, slirp4netns
    /// installed); a failure here is only logged: the first RUN that needs a namespace
    /// says what is wrong.
    pub(crate) fn prewarm(&self) {
        if !rustix::process::geteuid().is_root() || find_slirp().is_none() {
            return;
        }
        self.inner.state.lock().expect("pool").warming = true;
        let inner = self.inner.clone();
        std::thread::spawn(move || {
            let made = StepNet::create();
            let mut s = inner.state.lock().expect("pool");
            match made {
                Ok(net) => s.idle.push(net),
                Err(e) => tracing::debug!(error = %e, "no step network made in advance"),
            }
            s.warming = false;
            inner.changed.notify_all();
        });
    }

    /// A namespace for one step: an idle one, the one being made in advance, or a new one.
    pub(crate) fn acquire(&self) -> Result<Lease> {
        let mut s = self.inner.state.lock().expect("pool");
        loop {
            while let Some(mut net) = s.idle.pop() {
                if net.alive() {
                    return Ok(self.lease(net));
                }
            }
            if !s.warming {
                break;
            }
            s = self.inner.changed.wait(s).expect("pool");
        }
        drop(s);
        Ok(self.lease(StepNet::create()?))
    }

    fn lease(&self, net: StepNet) -> Lease {
        Lease {
            net: Some(net),
            pool: self.inner.clone(),
            discard: false,
        }
    }
}

fn find_slirp() -> Option<PathBuf> {
    crate::runc::find_binary("slirp4netns")
}

fn net_err(msg: String) -> Error {
    Error::Network(msg)
}

impl StepNet {
    fn create() -> Result<StepNet> {
        let slirp = find_slirp().ok_or_else(|| {
            net_err(
                "slirp4netns is not installed: a RUN step's own network needs it; install \
                 slirp4netns (apt-get install slirp4netns), or use RUN --network=none for \
                 steps that need no network"
                    .into(),
            )
        })?;
        let blocked = host_addresses();
        // The namespace is made by a thread of its own, which exits afterwards, so no
        // other thread of berth ever runs in it.
        let ns = std::thread::spawn(move || -> Result<OwnedFd> {
            // SAFETY: only the network namespace is unshared, not the file table.
            unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNET) }
                .map_err(|e| {
                    net_err(format!(
                        "create a network namespace for a step: {e}; berth builds as root"
                    ))
                })?;
            let ns = rustix::fs::open(
                "/proc/thread-self/ns/net",
                rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            )
            .map_err(|e| net_err(format!("open /proc/thread-self/ns/net: {e}")))?;
            // Children of this thread start in its namespace.
            prohibit_routes(&blocked)?;
            Ok(ns)
        })
        .join()
        .map_err(|_| net_err("the thread making a network namespace panicked".into()))??;
        let (ready_r, ready_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
            .map_err(|e| net_err(format!("pipe for slirp4netns: {e}")))?;
        let (exit_r, exit_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
            .map_err(|e| net_err(format!("pipe for slirp4netns: {e}")))?;
        let ns_path = format!("/proc/{}/fd/{}", std::process::id(), ns.as_raw_fd());
        let (ready_fd, exit_fd) = (ready_w.as_raw_fd(), exit_r.as_raw_fd());
        let mut cmd = Command::new(&slirp);
        cmd.args([
            "--configure",
            "--mtu=65520",
            "--disable-host-loopback",
            &format!("--ready-fd={ready_fd}"),
            &format!("--exit-fd={exit_fd}"),
            "--netns-type=path",
            &ns_path,
            "tap0",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        {
            use std::os::unix::process::CommandExt;
            // SAFETY: between fork and exec only fcntl runs, which is async-signal-safe;
            // it lets slirp inherit exactly these two descriptors.
            unsafe {
                cmd.pre_exec(move || {
                    for fd in [ready_fd, exit_fd] {
                        let fd = std::os::fd::BorrowedFd::borrow_raw(fd);
                        rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty())?;
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| net_err(format!("start {}: {e}", slirp.display())))?;
        drop((ready_w, exit_r));
        let mut stderr = child.stderr.take().expect("piped");
        let ready = wait_ready(&ready_r);
        let net = StepNet {
            ns,
            slirp: child,
            exit: Some(exit_w),
        };
        if let Err(why) = ready {
            let mut net = net;
            let _ = net.slirp.kill();
            let mut said = String::new();
            let _ = stderr.read_to_string(&mut said);
            return Err(net_err(format!(
                "slirp4netns did not configure the step's network ({why}): {}",
                said.trim()
            )));
        }
        // slirp's later messages go to the log (and slirp never blocks on a full pipe).
        std::thread::spawn(move || {
            let mut line = String::new();
            let mut r = std::io::BufReader::new(stderr);
            while std::io::BufRead::read_line(&mut r, &mut line).is_ok_and(|n| n > 0) {
                tracing::debug!(target: "slirp4netns", "{}", line.trim_end());
                line.clear();
            }
        });
        Ok(net)
    }
}

/// Wait until slirp writes `1` on its ready descriptor.
fn wait_ready(fd: &OwnedFd) -> std::result::Result<(), String> {
    let mut pfd = [rustix::event::PollFd::new(fd, rustix::event::PollFlags::IN)];
    let timeout = rustix::event::Timespec {
        tv_sec: READY_TIMEOUT.as_secs() as i64,
        tv_nsec: 0,
    };
    loop {
        match rustix::event::poll(&mut pfd, Some(&timeout)) {
            Ok(0) => return Err(format!("not ready after {}s", READY_TIMEOUT.as_secs())),
            Ok(_) => break,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(format!("poll: {e}")),
        }
    }
    let mut b = [0u8; 1];
    match rustix::io::read(fd.as_fd(), &mut b) {
        Ok(1) if b[0] == b'1' => Ok(()),
        Ok(_) => Err("it exited".into()),
        Err(e) => Err(format!("read: {e}")),
    }
}

/// Add a `prohibit` route for each of `addrs` in the calling thread's namespace.
fn prohibit_routes(addrs: &[(IpAddr, u8)]) -> Result<()> {
    if addrs.is_empty() {
        return Ok(());
    }
    let ip = crate::runc::find_binary("ip").ok_or_else(|| {
        net_err("ip is not installed: berth needs it to fence a step's network off the host's addresses; install iproute2 (apt-get install iproute2)".into())
    })?;
    let mut child = Command::new(&ip)
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| net_err(format!("start {}: {e}", ip.display())))?;
    let script: String = addrs
        .iter()
        .map(|(a, len)| format!("route add prohibit {a}/{len}\n"))
        .collect();
    let mut stdin = child.stdin.take().expect("piped");
    let _ = stdin.write_all(script.as_bytes());
    drop(stdin);
    let out = child
        .wait_with_output()
        .map_err(|e| net_err(format!("wait for ip: {e}")))?;
    if !out.status.success() {
        return Err(net_err(format!(
            "fence the step's network off the host's addresses (ip route add prohibit …): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// The host's own addresses (not loopback), with their prefix length: IPv4 from the
/// local routing table (`/proc/net/fib_trie`), IPv6 from `/proc/net/if_inet6`.
pub fn host_addresses() -> Vec<(IpAddr, u8)> {
    let mut out = Vec::new();
    if let Ok(text) = std::fs::read_to_string("/proc/net/fib_trie") {
        out.extend(parse_fib_trie(&text));
    }
    if let Ok(text) = std::fs::read_to_string("/proc/net/if_inet6") {
        out.extend(parse_if_inet6(&text));
    }
    out.sort();
    out.dedup();
    out
}

/// `|-- ADDR` followed by `/LEN host LOCAL`: an address of this host.
fn parse_fib_trie(text: &str) -> Vec<(IpAddr, u8)> {
    let mut out = Vec::new();
    let mut last: Option<std::net::Ipv4Addr> = None;
    for line in text.lines() {
        let t = line.trim();
        if let Some(a) = t.strip_prefix("|-- ") {
            last = a.parse().ok();
        } else if let Some(rest) = t.strip_prefix('/')
            && rest.ends_with("host LOCAL")
            && let Some(a) = last
            && !a.is_loopback()
            && let Some(len) = rest.split(' ').next().and_then(|l| l.parse::<u8>().ok())
        {
            out.push((IpAddr::V4(a), len));
        }
    }
    out
}

/// `ADDR(32 hex) index prefix scope flags name`.
fn parse_if_inet6(text: &str) -> Vec<(IpAddr, u8)> {
    text.lines()
        .filter_map(|l| {
            let hex = l.split_whitespace().next()?;
            let bits = u128::from_str_radix(hex, 16).ok()?;
            let a = std::net::Ipv6Addr::from(bits);
            (!a.is_loopback()).then_some((IpAddr::V6(a), 128))
        })
        .collect()
}

/// The step's `/etc/resolv.conf`: slirp's forwarder, with the host's search domains and
/// options.
pub(crate) fn resolv_conf(host: &str) -> String {
    let mut out = format!("nameserver {DNS_ADDR}\n");
    for l in host.lines() {
        let first = l.split_whitespace().next().unwrap_or("");
        if matches!(first, "search" | "domain" | "options") {
            out.push_str(l.trim());
            out.push('\n');
        }
    }
    out
}

/// The step's `/etc/hosts`, with `extra` lines after berth's own.
pub(crate) fn hosts(hostname: &str, extra: &[(String, IpAddr)]) -> String {
    let own = format!(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{STEP_ADDR}\t{hostname}\n"
    );
    with_extra_hosts(own, extra)
}

/// `base` (a hosts file) followed by one line per extra host.
pub(crate) fn with_extra_hosts(mut base: String, extra: &[(String, IpAddr)]) -> String {
    if !base.is_empty() && !base.ends_with('\n') {
        base.push('\n');
    }
    for (name, addr) in extra {
        base.push_str(&format!("{addr}\t{name}\n"));
    }
    base
}

/// Write the step's resolver and hosts files into `dir`; returns (destination, file).
pub(crate) fn write_etc(
    dir: &Path,
    hostname: &str,
    extra: &[(String, IpAddr)],
) -> Result<Vec<(&'static str, PathBuf)>> {
    let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    Ok(vec![
        write_etc_file(dir, "/etc/resolv.conf", resolv_conf(&host_resolv))?,
        write_etc_file(dir, "/etc/hosts", hosts(hostname, extra))?,
    ])
}

/// Write `text` as the file bound at `dest` (an `/etc/` path) into `dir`, mode 0644.
pub(crate) fn write_etc_file(
    dir: &Path,
    dest: &'static str,
    text: String,
) -> Result<(&'static str, PathBuf)> {
    let path = dir.join(dest.trim_start_matches("/etc/"));
    std::fs::write(&path, text).map_err(|e| Error::Io {
        op: "write",
        path: path.clone(),
        source: e,
    })?;
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644));
    Ok((dest, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_addresses_from_proc() {
        let trie = "Main:\n  +-- 0.0.0.0/0 3 0 4\n     |-- 127.0.0.1\n        /32 host LOCAL\n\
                    |-- 192.0.2.2\n        /32 host LOCAL\n     |-- 192.0.2.255\n        /32 link BROADCAST\n\
                    |-- 192.0.2.0\n        /24 link UNICAST\n";
        assert_eq!(
            parse_fib_trie(trie),
            vec![("192.0.2.2".parse().unwrap(), 32)]
        );
        let v6 = "fe8000000000000000fc00fffe000001 04 40 20 80     eth0\n\
                  00000000000000000000000000000001 01 80 10 80       lo\n";
        assert_eq!(
            parse_if_inet6(v6),
            vec![("fe80::fc:ff:fe00:1".parse().unwrap(), 128)]
        );
    }

    #[test]
    fn resolver_points_at_slirp_and_keeps_search() {
        let r = resolv_conf(
            "# x\nnameserver 127.0.0.53\nsearch corp.example\noptions edns0 trust-ad\n",
        );
        assert_eq!(
            r,
            "nameserver 10.0.2.3\nsearch corp.example\noptions edns0 trust-ad\n"
        );
        assert!(hosts("b", &[]).contains("10.0.2.100\tb\n"));
        let extra = [("db.internal".to_string(), "192.0.2.7".parse().unwrap())];
        assert!(hosts("b", &extra).ends_with("10.0.2.100\tb\n192.0.2.7\tdb.internal\n"));
        assert_eq!(
            with_extra_hosts("127.0.0.1 localhost".into(), &extra),
            "127.0.0.1 localhost\n192.0.2.7\tdb.internal\n"
        );
    }
}
