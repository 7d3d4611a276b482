//! berth-net owns the one network configuration every part of berth applies the same way:
//! HTTP and HTTPS proxies, the NO_PROXY list (host names, domain suffixes, IP CIDRs,
//! `host:port` and `*`), and extra CA bundles. The registry client, build steps and
//! satellites take their settings from a [`Network`], so a company network is described
//! once.
//!
//! Lists merge instead of overwriting: `NO_PROXY` from the environment (either case) and
//! `no_proxy` from berth's config become one list, duplicates removed, so a second entry
//! never silently replaces the first (as repeated `NO_PROXY=` lines did for Kamal users).
//!
//! ```
//! use berth_net::{NoProxy, Proxies};
//!
//! let no_proxy = NoProxy::parse("localhost,.corp.example,10.0.0.0/8,registry:5000");
//! assert!(no_proxy.matches("git.corp.example", 443));
//! assert!(no_proxy.matches("10.1.2.3", 80));
//! assert!(no_proxy.matches("registry", 5000));
//! assert!(!no_proxy.matches("registry", 443));
//! assert!(!no_proxy.matches("example.com", 443));
//!
//! let p = Proxies {
//!     http: Some("http://proxy:3128".into()),
//!     https: Some("http://proxy:3128".into()),
//!     no_proxy,
//! };
//! assert_eq!(p.proxy_for("https", "index.docker.io", 443), Some("http://proxy:3128"));
//! assert_eq!(p.proxy_for("https", "git.corp.example", 443), None);
//! ```
#![warn(missing_docs)]

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;

/// One NO_PROXY entry.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Rule {
    /// `*`: no proxy for anything.
    Any,
    /// A host name: itself and every name below it (`example.com` covers
    /// `www.example.com`), as curl and Go do; with a leading dot only the names below.
    Domain {
        name: String,
        subdomains_only: bool,
        port: Option<u16>,
    },
    /// An IP address or network.
    Net {
        addr: IpAddr,
        prefix: u8,
        port: Option<u16>,
    },
}

/// A NO_PROXY list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NoProxy {
    rules: Vec<Rule>,
    /// The entries as given (normalised), in order, without duplicates.
    entries: Vec<String>,
}

impl NoProxy {
    /// Parses a comma- (or space-) separated list. Entries that are not understood are
    /// kept as host names, which then match nothing surprising.
    pub fn parse(list: &str) -> NoProxy {
        let mut n = NoProxy::default();
        n.extend(list);
        n
    }

    /// Adds the entries of `list` that are not there yet.
    pub fn extend(&mut self, list: &str) {
        for raw in list.split([',', ' ', '\t', '\n']) {
            let e = raw.trim().to_ascii_lowercase();
            if e.is_empty() || self.entries.contains(&e) {
                continue;
            }
            self.rules.push(parse_rule(&e));
            self.entries.push(e);
        }
    }

    /// Whether `host` (a name, or an IP address, IPv6 with or without brackets) on `port`
    /// goes without the proxy.
    pub fn matches(&self, host: &str, port: u16) -> bool {
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .trim_end_matches('.')
            .to_ascii_lowercase();
        let ip: Option<IpAddr> = host.parse().ok();
        self.rules.iter().any(|r| match r {
            Rule::Any => true,
            Rule::Domain {
                name,
                subdomains_only,
                port: p,
            } => {
                p.is_none_or(|p| p == port)
                    && ((!subdomains_only && host == *name)
                        || host
                            .strip_suffix(name.as_str())
                            .is_some_and(|rest| rest.ends_with('.')))
            }
            Rule::Net {
                addr,
                prefix,
                port: p,
            } => p.is_none_or(|p| p == port) && ip.is_some_and(|ip| in_net(ip, *addr, *prefix)),
        })
    }

    /// The entries, normalised, in the order given.
    pub fn entries(&self) -> &[String] {
        &self.entries
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl fmt::Display for NoProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.entries.join(","))
    }
}

fn parse_rule(e: &str) -> Rule {
    if e == "*" {
        return Rule::Any;
    }
    // host:port, [v6]:port, v6 alone, a.b.c.d/n, v6/n.
    let (host, port) = split_port(e);
    if let Some((a, n)) = host.split_once('/')
        && let (Ok(addr), Ok(prefix)) = (a.parse::<IpAddr>(), n.parse::<u8>())
    {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        return Rule::Net {
            addr,
            prefix: prefix.min(max),
            port,
        };
    }
    if let Ok(addr) = host.parse::<IpAddr>() {
        let prefix = if addr.is_ipv4() { 32 } else { 128 };
        return Rule::Net { addr, prefix, port };
    }
    let subdomains_only = host.starts_with('.') && !host.starts_with("*.");
    let name = host
        .trim_start_matches("*.")
        .trim_start_matches('.')
        .trim_end_matches('.')
        .to_owned();
    Rule::Domain {
        name,
        subdomains_only: subdomains_only || host.starts_with("*."),
        port,
    }
}

fn split_port(e: &str) -> (&str, Option<u16>) {
    if let Some(rest) = e.strip_prefix('[') {
        if let Some((h, after)) = rest.split_once(']') {
            return (h, after.strip_prefix(':').and_then(|p| p.parse().ok()));
        }
        return (rest, None);
    }
    // A bare IPv6 address has several colons: no port.
    if e.matches(':').count() == 1
        && let Some((h, p)) = e.rsplit_once(':')
        && let Ok(port) = p.parse()
    {
        return (h, Some(port));
    }
    (e, None)
}

fn in_net(ip: IpAddr, net: IpAddr, prefix: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(prefix))
            };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(prefix))
            };
            u128::from(a) & mask == u128::from(n) & mask
        }
        // An IPv4-mapped IPv6 address matches IPv4 rules.
        (IpAddr::V6(a), IpAddr::V4(_)) => a
            .to_ipv4_mapped()
            .is_some_and(|a4| in_net(IpAddr::V4(a4), net, prefix)),
        _ => false,
    }
}

/// Proxies and their exceptions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Proxies {
    /// For `http://` URLs.
    pub http: Option<String>,
    /// For `https://` URLs.
    pub https: Option<String>,
    /// Hosts reached directly.
    pub no_proxy: NoProxy,
}

/// Reads an environment variable in either case, upper case first (as curl and Docker).
fn env_either(upper: &str, env: &dyn Fn(&str) -> Option<String>) -> Option<String> {
    env(upper)
        .or_else(|| env(&upper.to_ascii_lowercase()))
        .filter(|v| !v.trim().is_empty())
}

impl Proxies {
    /// From the process environment.
    pub fn from_env() -> Proxies {
        Proxies::from_env_with(&|k| std::env::var(k).ok())
    }

    /// From an environment given as a lookup function. `NO_PROXY` and `no_proxy` are
    /// both read and merged.
    pub fn from_env_with(env: &dyn Fn(&str) -> Option<String>) -> Proxies {
        let mut no_proxy = NoProxy::default();
        for k in ["NO_PROXY", "no_proxy"] {
            if let Some(v) = env(k) {
                no_proxy.extend(&v);
            }
        }
        Proxies {
            http: env_either("HTTP_PROXY", env),
            https: env_either("HTTPS_PROXY", env),
            no_proxy,
        }
    }

    /// Settings from berth's config on top of these: a proxy set there wins; NO_PROXY
    /// lists are merged.
    pub fn merge(
        mut self,
        http: Option<&str>,
        https: Option<&str>,
        no_proxy: &[String],
    ) -> Proxies {
        if let Some(h) = http.filter(|h| !h.is_empty()) {
            self.http = Some(h.to_owned());
        }
        if let Some(h) = https.filter(|h| !h.is_empty()) {
            self.https = Some(h.to_owned());
        }
        for n in no_proxy {
            self.no_proxy.extend(n);
        }
        self
    }

    /// The proxy URL for a request to `scheme://host:port`, or `None` to go direct.
    pub fn proxy_for(&self, scheme: &str, host: &str, port: u16) -> Option<&str> {
        let proxy = match scheme {
            "https" => self.https.as_deref(),
            "http" => self.http.as_deref(),
            _ => None,
        }?;
        (!self.no_proxy.matches(host, port)).then_some(proxy)
    }

    /// The variables a build step gets, in both cases as Docker passes them
    /// (`HTTP_PROXY=…`, `http_proxy=…`, …); nothing for what is unset.
    pub fn step_env(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut both = |k: &str, v: &str| {
            out.push(format!("{k}={v}"));
            out.push(format!("{}={v}", k.to_ascii_lowercase()));
        };
        if let Some(v) = &self.http {
            both("HTTP_PROXY", v);
        }
        if let Some(v) = &self.https {
            both("HTTPS_PROXY", v);
        }
        if !self.no_proxy.is_empty() {
            both("NO_PROXY", &self.no_proxy.to_string());
        }
        out
    }
}

/// The network settings every component applies.
#[derive(Debug, Clone, Default)]
pub struct Network {
    /// Proxies and exceptions.
    pub proxies: Proxies,
    /// PEM bundles trusted in addition to the system's roots.
    pub ca_bundles: Vec<PathBuf>,
    /// Build steps see the system's roots and `ca_bundles` too (mounted read-only, never
    /// stored in a layer).
    pub ca_to_steps: bool,
}

/// Where this host keeps its CA roots (the first that exists is used).
const SYSTEM_BUNDLES: [&str; 3] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// This host's CA roots (PEM), from the first of the usual bundle files that exists.
pub fn system_roots() -> Option<Vec<u8>> {
    SYSTEM_BUNDLES.iter().find_map(|p| std::fs::read(p).ok())
}

/// A CA bundle written for a build's steps; removed on drop.
#[derive(Debug)]
pub struct StepBundle {
    path: PathBuf,
}

impl StepBundle {
    /// The file.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}

impl Drop for StepBundle {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Network {
    /// The environment's proxies, no extra CAs.
    pub fn from_env() -> Network {
        Network {
            proxies: Proxies::from_env(),
            ca_bundles: Vec::new(),
            ca_to_steps: false,
        }
    }

    /// With `ca_to_steps`, writes the bundle build steps see into `dir` (the host's roots,
    /// then every extra bundle) and returns it; `None` otherwise.
    pub fn step_bundle(&self, dir: &std::path::Path) -> Result<Option<StepBundle>, String> {
        if !self.ca_to_steps {
            return Ok(None);
        }
        let mut pem = system_roots().unwrap_or_default();
        for extra in self.extra_roots()? {
            if !pem.is_empty() && !pem.ends_with(b"\n") {
                pem.push(b'\n');
            }
            pem.extend_from_slice(&extra);
        }
        std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let path = dir.join(format!(
            "{}-{}-ca-bundle.pem",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, &pem).map_err(|e| format!("write {}: {e}", path.display()))?;
        Ok(Some(StepBundle { path }))
    }

    /// Reads every extra CA bundle: the PEM certificates, for an HTTP client's roots.
    pub fn extra_roots(&self) -> Result<Vec<Vec<u8>>, String> {
        self.ca_bundles
            .iter()
            .map(|p| std::fs::read(p).map_err(|e| format!("read CA bundle {}: {e}", p.display())))
            .collect()
    }
}

/// Whether the proxy at `url` (`http://host:port`) answers: a TCP connection and a
/// `CONNECT` to a name that cannot resolve, whose answer (any HTTP status line) shows a
/// proxy is listening. Returns that status line, or what failed. For `berth doctor`.
pub fn probe_proxy(url: &str, timeout: std::time::Duration) -> Result<String, String> {
    use std::io::{Read, Write};
    use std::net::ToSocketAddrs;
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or(rest);
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let with_port = if authority.rsplit_once(':').is_some_and(|(h, p)| {
        !h.is_empty() && !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())
    }) && (!authority.contains('[') || authority.contains("]:"))
    {
        authority.to_owned()
    } else if url.starts_with("https://") {
        format!("{authority}:443")
    } else {
        format!("{authority}:80")
    };
    let addrs: Vec<_> = with_port
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {with_port}: {e}"))?
        .collect();
    let mut last = format!("{with_port} has no address");
    for addr in addrs {
        let mut conn = match std::net::TcpStream::connect_timeout(&addr, timeout) {
            Ok(c) => c,
            Err(e) => {
                last = format!("connect to {addr}: {e}");
                continue;
            }
        };
        let _ = conn.set_read_timeout(Some(timeout));
        let _ = conn.set_write_timeout(Some(timeout));
        conn.write_all(
            b"CONNECT berth-doctor.invalid:443 HTTP/1.1\r\nHost: berth-doctor.invalid:443\r\n\r\n",
        )
        .map_err(|e| format!("send to {addr}: {e}"))?;
        let mut buf = [0u8; 256];
        let n = conn
            .read(&mut buf)
            .map_err(|e| format!("{addr} accepted the connection but did not answer: {e}"))?;
        let text = String::from_utf8_lossy(&buf[..n]);
        let line = text.lines().next().unwrap_or("").trim().to_owned();
        return if line.starts_with("HTTP/") {
            Ok(line)
        } else if n == 0 {
            Err(format!("{addr} closed the connection without answering"))
        } else {
            Err(format!(
                "{addr} does not answer as an HTTP proxy ({line:?})"
            ))
        };
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_probe_tells_a_proxy_from_a_closed_port() {
        use std::io::{Read, Write};
        let t = std::time::Duration::from_secs(5);
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            let mut buf = [0u8; 512];
            let n = c.read(&mut buf).unwrap();
            c.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").unwrap();
            String::from_utf8_lossy(&buf[..n]).into_owned()
        });
        let answer = probe_proxy(&format!("http://user:pw@{addr}/"), t).unwrap();
        assert_eq!(answer, "HTTP/1.1 502 Bad Gateway");
        assert!(
            server
                .join()
                .unwrap()
                .starts_with("CONNECT berth-doctor.invalid:443 ")
        );
        // The same port, closed now.
        let err = probe_proxy(&format!("http://{addr}"), t).unwrap_err();
        assert!(
            err.contains(&addr.to_string()) && err.contains("refused"),
            "{err}"
        );
    }

    #[test]
    fn domains_suffixes_and_wildcards() {
        let n = NoProxy::parse("example.com, .corp.example,*.svc.cluster.local");
        assert!(n.matches("example.com", 443));
        assert!(n.matches("www.example.com", 443));
        assert!(
            !n.matches("badexample.com", 443),
            "a suffix matches at a dot only"
        );
        assert!(
            !n.matches("corp.example", 443),
            "a leading dot: names below only"
        );
        assert!(n.matches("git.corp.example", 80));
        assert!(n.matches("api.svc.cluster.local", 443));
        assert!(
            n.matches("EXAMPLE.COM.", 443),
            "case and a final dot do not matter"
        );
        assert!(NoProxy::parse("*").matches("anything", 1));
    }

    #[test]
    fn cidrs_addresses_and_ports() {
        let n = NoProxy::parse(
            "10.0.0.0/8,192.168.1.7,::1,fd00::/8,registry.local:5000,127.0.0.1:8080",
        );
        assert!(n.matches("10.200.3.4", 443));
        assert!(!n.matches("11.0.0.1", 443));
        assert!(n.matches("192.168.1.7", 1));
        assert!(!n.matches("192.168.1.8", 1));
        assert!(n.matches("::1", 80) && n.matches("[::1]", 80));
        assert!(
            n.matches("::ffff:10.1.1.1", 80),
            "IPv4-mapped addresses match IPv4 rules"
        );
        assert!(n.matches("registry.local", 5000));
        assert!(!n.matches("registry.local", 443));
        assert!(n.matches("127.0.0.1", 8080) && !n.matches("127.0.0.1", 8081));
        assert!(
            !n.matches("host.10.0.0.1.nip.io", 80),
            "names are not matched against CIDRs"
        );
        assert!(n.matches("fd00::1", 5000) && !n.matches("fe80::1", 5000));
    }

    #[test]
    fn lists_merge_without_overwriting() {
        let env = |k: &str| match k {
            "NO_PROXY" => Some("a.example,10.0.0.0/8".to_string()),
            "no_proxy" => Some("b.example,a.example".to_string()),
            "https_proxy" => Some("http://lower:3128".to_string()),
            _ => None,
        };
        let p = Proxies::from_env_with(&env).merge(None, None, &["c.example,10.0.0.0/8".into()]);
        assert_eq!(
            p.no_proxy.entries(),
            ["a.example", "10.0.0.0/8", "b.example", "c.example"]
        );
        assert_eq!(
            p.https.as_deref(),
            Some("http://lower:3128"),
            "either case is read"
        );
        assert_eq!(p.http, None);
        let p = p.merge(Some("http://file:8080"), None, &[]);
        assert_eq!(p.proxy_for("http", "x", 80), Some("http://file:8080"));
        assert_eq!(p.proxy_for("https", "c.example", 443), None);
        let env = p.step_env();
        assert!(env.contains(&"HTTP_PROXY=http://file:8080".to_string()));
        assert!(env.contains(&"http_proxy=http://file:8080".to_string()));
        assert!(env.contains(&"no_proxy=a.example,10.0.0.0/8,b.example,c.example".to_string()));
    }
}
