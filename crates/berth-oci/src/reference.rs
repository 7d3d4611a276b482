//! Image references, `[domain/]path[:tag][@digest]`: the one parser of them in berth.
//!
//! The grammar is Docker's (distribution/reference): the first `/`-separated component
//! is a domain only when it holds a `.` or a `:` or is `localhost` (so `team/app` is a
//! Docker Hub path, `registry.internal/app` and `localhost/app` are not); a domain is
//! host names joined by `.`, or a bracketed IPv6 address, with an optional numeric
//! port; the path follows the distribution spec's repository grammar (lowercase); the
//! tag comes after the last `:` of the last component, the digest after `@`.
//!
//! Two views of one parse: [`Reference`] applies Docker Hub's defaults (`busybox` is
//! `docker.io/library/busybox:latest`) and is what a registry client needs;
//! [`WrittenReference`] keeps the name as written, which is how berth's own store names
//! the images it builds (`app:1.0` is the repository `app`, tag `1.0`).

use std::fmt;
use std::str::FromStr;

use crate::{Digest, validate_repository, validate_tag};

/// Docker Hub's registry name in normalised references.
pub const DOCKER_HUB: &str = "docker.io";

/// A parsed image reference with Docker Hub's defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// Registry host (with port), `docker.io` when none is written.
    pub registry: String,
    /// Repository path (`library/busybox` for Docker Hub's short names).
    pub repository: String,
    /// Tag, if any (`latest` when neither tag nor digest is written).
    pub tag: Option<String>,
    /// Digest, if any.
    pub digest: Option<Digest>,
}

/// An image reference as written, before Docker Hub's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenReference {
    /// The domain (`host`, `host:port`, `[::1]:5000`), if one is written.
    pub domain: Option<String>,
    /// The repository path as written (`app`, `team/app`).
    pub path: String,
    /// The tag, if written.
    pub tag: Option<String>,
    /// The digest, if written.
    pub digest: Option<Digest>,
}

/// Why a string is not an image reference.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid image reference {input:?}: {reason}")]
pub struct ReferenceError {
    input: String,
    reason: String,
}

impl WrittenReference {
    /// Parse `s` by Docker's reference grammar.
    pub fn parse(s: &str) -> Result<WrittenReference, ReferenceError> {
        let err = |reason: String| ReferenceError {
            input: s.to_string(),
            reason,
        };
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => (
                r,
                Some(d.parse::<Digest>().map_err(|e| err(e.to_string()))?),
            ),
            None => (s, None),
        };
        let (domain, path) = match rest.split_once('/') {
            Some((first, tail)) if first.contains(['.', ':']) || first == "localhost" => {
                validate_domain(first).map_err(err)?;
                (Some(first.to_string()), tail)
            }
            _ => (None, rest),
        };
        let slash = path.rfind('/').map_or(0, |i| i + 1);
        let (path, tag) = match path[slash..].split_once(':') {
            Some((name, tag)) => (&path[..slash + name.len()], Some(tag.to_string())),
            None => (path, None),
        };
        validate_repository(path).map_err(|e| err(e.to_string()))?;
        if let Some(t) = &tag {
            validate_tag(t).map_err(|e| err(e.to_string()))?;
        }
        Ok(WrittenReference {
            domain,
            path: path.to_string(),
            tag,
            digest,
        })
    }

    /// The name as written, without tag and digest (`host:5000/app`).
    pub fn name(&self) -> String {
        match &self.domain {
            Some(d) => format!("{d}/{}", self.path),
            None => self.path.clone(),
        }
    }

    /// The tag, `latest` when none is written.
    pub fn tag_or_latest(&self) -> &str {
        self.tag.as_deref().unwrap_or("latest")
    }

    /// The repository this name has in berth's store: the name as written, with the
    /// domain lowercased and a `:port` written `-port` (`127.0.0.1:5000/app` is stored as
    /// `127.0.0.1-5000/app`), since repository names cannot hold `:`.
    pub fn local_repository(&self) -> String {
        match &self.domain {
            Some(d) => format!("{}/{}", d.replace(':', "-").to_ascii_lowercase(), self.path),
            None => self.path.clone(),
        }
    }

    /// The name as Docker shows it: Docker Hub's full forms lose their domain, and
    /// `library/` when one component follows (`docker.io/library/busybox:1` is
    /// `busybox:1`, `index.docker.io/team/app` is `team/app`). berth's store files
    /// Docker Hub images under these names, where `FROM busybox:1` looks first.
    pub fn familiar(mut self) -> WrittenReference {
        if matches!(self.domain.as_deref(), Some(DOCKER_HUB | "index.docker.io")) {
            self.domain = None;
            if let Some(short) = self.path.strip_prefix("library/")
                && !short.contains('/')
            {
                self.path = short.to_string();
            }
        }
        self
    }

    /// Apply Docker Hub's defaults: no domain means `docker.io`, a one-component path
    /// there means `library/…`, and no tag or digest means `latest`.
    pub fn into_reference(self) -> Reference {
        let registry = match self.domain.as_deref() {
            None | Some("index.docker.io") => DOCKER_HUB.to_string(),
            Some(d) => d.to_string(),
        };
        let repository = if registry == DOCKER_HUB && !self.path.contains('/') {
            format!("library/{}", self.path)
        } else {
            self.path
        };
        let tag = match (self.tag, &self.digest) {
            (None, None) => Some("latest".to_string()),
            (tag, _) => tag,
        };
        Reference {
            registry,
            repository,
            tag,
            digest: self.digest,
        }
    }
}

impl FromStr for WrittenReference {
    type Err = ReferenceError;
    fn from_str(s: &str) -> Result<WrittenReference, ReferenceError> {
        WrittenReference::parse(s)
    }
}

/// Check a reference's domain: host names of `[A-Za-z0-9-]` joined by `.`, or a
/// bracketed IPv6 address, then an optional `:port` of digits.
fn validate_domain(domain: &str) -> Result<(), String> {
    let (host, port) =
        if let Some(v6) = domain.strip_prefix('[') {
            let (addr, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("domain {domain:?} opens '[' without closing it"))?;
            if addr.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(format!("{addr:?} in brackets is not an IPv6 address"));
            }
            match after {
                "" => (None, None),
                p => (
                    None,
                    Some(p.strip_prefix(':').ok_or_else(|| {
                        format!("domain {domain:?}: write a port as [address]:port")
                    })?),
                ),
            }
        } else {
            match domain.split_once(':') {
                Some((h, p)) => (Some(h), Some(p)),
                None => (Some(domain), None),
            }
        };
    if let Some(host) = host {
        let label_ok = |l: &str| {
            !l.is_empty()
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        };
        if !host.split('.').all(label_ok) {
            return Err(format!(
                "domain {domain:?}: use host names of letters, digits and '-' joined by '.'"
            ));
        }
    }
    if let Some(port) = port
        && (port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(format!("domain {domain:?}: the port must be a number"));
    }
    Ok(())
}

/// The prefix of a reference to an image in an OCI image layout directory.
pub const LAYOUT_SCHEME: &str = "oci-layout://";

/// An image in an OCI image layout, as `FROM oci-layout://DIR[:TAG|@DIGEST]` names it
/// (BuildKit's syntax): the directory and what picks the image from its `index.json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayoutReference {
    /// The layout's directory.
    pub dir: String,
    /// `DIR:TAG`: the image whose `org.opencontainers.image.ref.name` is the tag.
    pub tag: Option<String>,
    /// `DIR@DIGEST`: the image with this manifest digest.
    pub digest: Option<Digest>,
}

impl LayoutReference {
    /// Parse what follows [`LAYOUT_SCHEME`]. A `:` or `@` only selects when no `/`
    /// follows it, so directories may hold either.
    pub fn parse(spec: &str) -> Result<LayoutReference, ReferenceError> {
        let err = |reason: String| ReferenceError {
            input: format!("{LAYOUT_SCHEME}{spec}"),
            reason,
        };
        let selector = |sep: char| spec.rsplit_once(sep).filter(|(_, t)| !t.contains('/'));
        let (dir, tag, digest) = if let Some((dir, d)) = selector('@') {
            let d = d
                .parse::<Digest>()
                .map_err(|e| err(format!("after '@' write the image's digest: {e}")))?;
            (dir, None, Some(d))
        } else if let Some((dir, t)) = selector(':') {
            validate_tag(t).map_err(|e| err(e.to_string()))?;
            (dir, Some(t.to_string()), None)
        } else {
            (spec, None, None)
        };
        if dir.is_empty() {
            return Err(err("name the layout's directory".into()));
        }
        Ok(LayoutReference {
            dir: dir.to_string(),
            tag,
            digest,
        })
    }
}

/// Whether `host` (`name`, `name:port`, `[v6]:port`, `v6`) names this machine:
/// `localhost`, 127.0.0.0/8 or `::1`.
pub fn is_loopback_host(host: &str) -> bool {
    let bare = match host.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
            // `::1` alone splits as ("::", "1"): only strip a port after a name, an
            // IPv4 address or a bracketed IPv6 address.
            if h.contains(':') && !h.ends_with(']') {
                host
            } else {
                h
            }
        }
        _ => host,
    };
    let bare = bare.trim_start_matches('[').trim_end_matches(']');
    bare.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl Reference {
    /// The host to send API requests to (Docker Hub's API lives elsewhere).
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            "registry-1.docker.io"
        } else {
            &self.registry
        }
    }

    /// The tag or digest to ask for in `/manifests/<reference>`.
    pub fn manifest_ref(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".into(),
        }
    }

    /// Whether the registry is on this machine (127.0.0.0/8, ::1, localhost).
    pub fn is_loopback(&self) -> bool {
        is_loopback_host(&self.registry)
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;
    fn from_str(s: &str) -> Result<Reference, ReferenceError> {
        Ok(WrittenReference::parse(s)?.into_reference())
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    fn parts(s: &str) -> (String, String, Option<String>, Option<String>) {
        let r: Reference = s.parse().unwrap_or_else(|e| panic!("{s}: {e}"));
        (
            r.registry,
            r.repository,
            r.tag,
            r.digest.map(|d| d.to_string()),
        )
    }

    fn p(
        r: &str,
        repo: &str,
        tag: Option<&str>,
        digest: Option<&str>,
    ) -> (String, String, Option<String>, Option<String>) {
        (
            r.into(),
            repo.into(),
            tag.map(Into::into),
            digest.map(Into::into),
        )
    }

    #[test]
    fn familiar_names_are_what_docker_shows() {
        let f = |s: &str| {
            let w = WrittenReference::parse(s).unwrap().familiar();
            format!("{}:{}", w.name(), w.tag_or_latest())
        };
        assert_eq!(f("docker.io/library/busybox:1"), "busybox:1");
        assert_eq!(f("index.docker.io/team/app"), "team/app:latest");
        assert_eq!(f("docker.io/library/a/b:2"), "library/a/b:2");
        assert_eq!(
            f("127.0.0.1:5000/library/app:3"),
            "127.0.0.1:5000/library/app:3"
        );
    }

    #[test]
    fn docker_hub_defaults() {
        let hub = |repo, tag| p("docker.io", repo, tag, None);
        assert_eq!(parts("busybox"), hub("library/busybox", Some("latest")));
        assert_eq!(parts("busybox:1.36"), hub("library/busybox", Some("1.36")));
        assert_eq!(parts("team/app"), hub("team/app", Some("latest")));
        assert_eq!(
            parts("docker.io/busybox"),
            hub("library/busybox", Some("latest"))
        );
        assert_eq!(
            parts("index.docker.io/library/busybox:1"),
            hub("library/busybox", Some("1"))
        );
        let r: Reference = "busybox".parse().unwrap();
        assert_eq!(r.api_host(), "registry-1.docker.io");
        assert_eq!(r.to_string(), "docker.io/library/busybox:latest");
    }

    #[test]
    fn domains_are_found_by_dot_colon_or_localhost() {
        assert_eq!(
            parts("127.0.0.1:5000/team/app:v1"),
            p("127.0.0.1:5000", "team/app", Some("v1"), None)
        );
        assert_eq!(parts("localhost/x:1"), p("localhost", "x", Some("1"), None));
        assert_eq!(
            parts("localhost:5000/x"),
            p("localhost:5000", "x", Some("latest"), None)
        );
        assert_eq!(
            parts("registry.internal/app"),
            p("registry.internal", "app", Some("latest"), None)
        );
        assert_eq!(
            parts("host:5000/a/b"),
            p("host:5000", "a/b", Some("latest"), None)
        );
        assert_eq!(
            parts("[::1]:5000/x:2"),
            p("[::1]:5000", "x", Some("2"), None)
        );
        // A first component without '.', ':' or "localhost" is a path.
        assert_eq!(parts("registry/app").0, "docker.io");
        // Uppercase is a domain's right, never a path's.
        assert_eq!(parts("Registry.Internal/app").0, "Registry.Internal");
        for bad in [
            "host:port/x",
            "host:/x",
            "[::1/x",
            "[not-v6]:5000/x",
            "[::1]5000/x",
            "-bad.example/x",
            "a..b/x",
        ] {
            assert!(bad.parse::<Reference>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn tags_and_digests() {
        assert_eq!(
            parts(&format!("registry.internal/app@{D}")),
            p("registry.internal", "app", None, Some(D))
        );
        assert_eq!(
            parts(&format!("host:5000/a:v@{D}")),
            p("host:5000", "a", Some("v"), Some(D))
        );
        let r: Reference = format!("registry.internal/app@{D}").parse().unwrap();
        assert_eq!(r.manifest_ref(), D);
        assert_eq!(r.to_string(), format!("registry.internal/app@{D}"));
        let r: Reference = format!("app:v@{D}").parse().unwrap();
        assert_eq!(r.manifest_ref(), D, "the digest wins over the tag");
        assert_eq!(r.to_string(), format!("docker.io/library/app:v@{D}"));
        for bad in [
            "UPPER/x",
            "app:Bad Tag",
            "app:bad tag",
            "app@sha256:xyz",
            "app@",
            "app:",
            "",
            "/app",
            "app/",
            "a//b",
            "app:.dot",
        ] {
            assert!(bad.parse::<Reference>().is_err(), "{bad:?} accepted");
        }
        let long = format!("app:{}", "t".repeat(129));
        assert!(long.parse::<Reference>().is_err());
    }

    #[test]
    fn written_names_keep_what_was_written() {
        let w = WrittenReference::parse("app:1.0").unwrap();
        assert_eq!((w.name(), w.tag_or_latest()), ("app".into(), "1.0"));
        assert_eq!(w.local_repository(), "app");
        let w = WrittenReference::parse("127.0.0.1:5000/team/app").unwrap();
        assert_eq!(w.name(), "127.0.0.1:5000/team/app");
        assert_eq!(w.tag_or_latest(), "latest");
        assert_eq!(w.local_repository(), "127.0.0.1-5000/team/app");
        let w = WrittenReference::parse("Registry.Internal/app").unwrap();
        assert_eq!(w.local_repository(), "registry.internal/app");
        assert_eq!(
            WrittenReference::parse("team/app")
                .unwrap()
                .local_repository(),
            "team/app"
        );
        let w = WrittenReference::parse(&format!("host:5000/a:v@{D}")).unwrap();
        assert_eq!(
            (w.name(), w.tag.as_deref(), w.digest.map(|d| d.to_string())),
            ("host:5000/a".into(), Some("v"), Some(D.into()))
        );
    }

    #[test]
    fn layout_references() {
        let l = |s: &str| LayoutReference::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        assert_eq!(
            l("/srv/layout:v1"),
            LayoutReference {
                dir: "/srv/layout".into(),
                tag: Some("v1".into()),
                digest: None
            }
        );
        let by_digest = l(&format!("/srv/layout@{D}"));
        assert_eq!(by_digest.dir, "/srv/layout");
        assert_eq!(by_digest.digest.unwrap().to_string(), D);
        // ':' and '@' inside the directory's path are part of it.
        assert_eq!(l("/srv/a:b/layout").dir, "/srv/a:b/layout");
        assert_eq!(l("/srv/a@b/layout:v1").dir, "/srv/a@b/layout");
        assert_eq!(l("layout").tag, None);
        for bad in [
            "/srv/layout@v1",
            "/srv/layout:",
            ":v1",
            "/srv/layout:bad tag",
        ] {
            assert!(LayoutReference::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn loopback_hosts() {
        for host in [
            "localhost",
            "localhost:5000",
            "127.0.0.1",
            "127.1.2.3:80",
            "[::1]:5000",
            "::1",
            "[::1]",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "registry.internal",
            "10.0.0.1:5000",
            "[::2]:5000",
            "localhost.example",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
        let r: Reference = "127.0.0.1:5000/team/app:v1".parse().unwrap();
        assert!(r.is_loopback());
        let r: Reference = "registry.internal/app".parse().unwrap();
        assert!(!r.is_loopback());
    }
}
