//! What a service that enrolls peers (satellite, deploy agent) advertises: the names and
//! addresses its certificate carries, and the `host:port` its tokens name.
//!
//! An `--advertise` entry is a DNS name or an IP address, optionally with the port clients
//! reach (`builder.example.com:30372`, `[2001:db8::1]:8372`) when something between them
//! and the listener maps another port to it: a Kubernetes NodePort, a NAT, a proxy.
//! Without a port, clients reach the listener's own.

use std::net::{IpAddr, Ipv6Addr};

/// The parsed `--advertise` list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advertised {
    /// DNS names for the certificate.
    pub names: Vec<String>,
    /// IP addresses for the certificate.
    pub ips: Vec<IpAddr>,
    /// The first entry, and its port if it has one: what tokens name.
    first: Option<(String, Option<u16>)>,
}

impl Advertised {
    /// Parses the entries, naming the first that is not a name or an address with an
    /// optional port.
    pub fn parse(entries: &[String]) -> Result<Advertised, String> {
        let mut out = Advertised {
            names: Vec::new(),
            ips: Vec::new(),
            first: None,
        };
        for entry in entries {
            let (host, port) = split_entry(entry).ok_or_else(|| {
                format!(
                    "--advertise {entry:?}: give a DNS name or an IP address, with an \
                     optional :PORT (IPv6 with a port in brackets: [2001:db8::1]:8372)"
                )
            })?;
            match host.parse::<IpAddr>() {
                Ok(ip) => out.ips.push(ip),
                Err(_) => out.names.push(host.clone()),
            }
            if out.first.is_none() {
                out.first = Some((host, port));
            }
        }
        Ok(out)
    }

    /// The `host:port` tokens carry: the first entry's host, with its port or else
    /// `listen_port`; `fallback` when nothing is advertised.
    pub fn token_address(&self, fallback: &str, listen_port: u16) -> String {
        let (host, port) = match &self.first {
            Some((host, port)) => (host.as_str(), port.unwrap_or(listen_port)),
            None => (fallback, listen_port),
        };
        match host.parse::<IpAddr>() {
            Ok(IpAddr::V6(v6)) => format!("[{v6}]:{port}"),
            _ => format!("{host}:{port}"),
        }
    }
}

/// One `--advertise` entry, `host`, `host:port`, `ip`, `[v6]`, `[v6]:port` or a bare
/// IPv6 address, as its host and port; `None` when it is none of those.
pub fn split_entry(entry: &str) -> Option<(String, Option<u16>)> {
    let entry = entry.trim();
    if entry.is_empty() || entry.contains(|c: char| c.is_whitespace() || c == '/') {
        return None;
    }
    if let Ok(v6) = entry.parse::<Ipv6Addr>() {
        return Some((v6.to_string(), None));
    }
    if let Some(rest) = entry.strip_prefix('[') {
        let (v6, tail) = rest.split_once(']')?;
        let v6: Ipv6Addr = v6.parse().ok()?;
        let port = match tail {
            "" => None,
            t => Some(parse_port(t.strip_prefix(':')?)?),
        };
        return Some((v6.to_string(), port));
    }
    let (host, port) = match entry.rsplit_once(':') {
        Some((h, p)) => (h, Some(parse_port(p)?)),
        None => (entry, None),
    };
    // `*` for wildcard names (`*.builders.corp`), as certificates carry them.
    let name_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._*".contains(c));
    name_ok.then(|| (host.to_owned(), port))
}

fn parse_port(s: &str) -> Option<u16> {
    s.parse::<u16>().ok().filter(|p| *p != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(entries: &[&str]) -> Result<Advertised, String> {
        Advertised::parse(&entries.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn names_addresses_and_ports() {
        let a = parse(&[
            "build.example.com:30372",
            "10.0.0.7",
            "[2001:db8::1]:9",
            "fe80::2",
        ])
        .unwrap();
        assert_eq!(a.names, ["build.example.com"]);
        assert_eq!(
            a.ips,
            [
                "10.0.0.7".parse::<IpAddr>().unwrap(),
                "2001:db8::1".parse().unwrap(),
                "fe80::2".parse().unwrap()
            ]
        );
        assert_eq!(a.token_address("x", 8372), "build.example.com:30372");
        let a = parse(&["2001:db8::1"]).unwrap();
        assert_eq!(a.token_address("x", 8372), "[2001:db8::1]:8372");
        let a = parse(&["[2001:db8::1]:30001", "n"]).unwrap();
        assert_eq!(a.token_address("x", 8372), "[2001:db8::1]:30001");
        let a = parse(&["*.builders.corp", " sat.ns.svc:1 "]).unwrap();
        assert_eq!(a.names, ["*.builders.corp", "sat.ns.svc"]);
        let a = parse(&["sat.ns.svc"]).unwrap();
        assert_eq!(a.token_address("x", 8372), "sat.ns.svc:8372");
        assert_eq!(
            parse(&[]).unwrap().token_address("10.1.2.3", 8372),
            "10.1.2.3:8372"
        );
    }

    #[test]
    fn bad_entries_are_named() {
        for bad in [
            "",
            "a b",
            "host:",
            "host:0",
            "host:99999",
            "[::1",
            "[zz]:1",
            "h/x",
            "a:b:c",
        ] {
            let err = parse(&["ok", bad]).unwrap_err();
            assert!(err.contains(&format!("{bad:?}")), "{bad}: {err}");
        }
    }
}
