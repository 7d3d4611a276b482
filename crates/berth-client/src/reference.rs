//! Image references: `[registry/]repository[:tag][@digest]`.

use std::fmt;
use std::str::FromStr;

use berth_oci::Digest;

/// A parsed image reference.
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

/// Why a string is not an image reference.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid image reference {input:?}: {reason}")]
pub struct ReferenceError {
    input: String,
    reason: String,
}

impl Reference {
    /// The host to send API requests to (Docker Hub's API lives elsewhere).
    pub fn api_host(&self) -> &str {
        if self.registry == "docker.io" {
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
        let host = self
            .registry
            .rsplit_once(':')
            .map_or(self.registry.as_str(), |(h, p)| {
                if p.chars().all(|c| c.is_ascii_digit()) {
                    h
                } else {
                    self.registry.as_str()
                }
            });
        let host = host.trim_start_matches('[').trim_end_matches(']');
        host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;
    fn from_str(s: &str) -> Result<Reference, ReferenceError> {
        let err = |reason: &str| ReferenceError {
            input: s.to_string(),
            reason: reason.to_string(),
        };
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => (
                r,
                Some(d.parse::<Digest>().map_err(|e| err(&e.to_string()))?),
            ),
            None => (s, None),
        };
        let (registry, path) = match rest.split_once('/') {
            Some((first, tail)) if first.contains(['.', ':']) || first == "localhost" => {
                (first.to_string(), tail)
            }
            _ => ("docker.io".to_string(), rest),
        };
        let slash = path.rfind('/').map_or(0, |i| i + 1);
        let (repository, tag) = match path[slash..].split_once(':') {
            Some((name, tag)) => (format!("{}{name}", &path[..slash]), Some(tag.to_string())),
            None => (path.to_string(), None),
        };
        let repository = if registry == "docker.io" && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        berth_oci::validate_repository(&repository).map_err(|e| err(&e.to_string()))?;
        if let Some(t) = &tag {
            berth_oci::validate_tag(t).map_err(|e| err(&e.to_string()))?;
        }
        let tag = if tag.is_none() && digest.is_none() {
            Some("latest".to_string())
        } else {
            tag
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
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

    #[test]
    fn parses_docker_style_references() {
        let r: Reference = "busybox".parse().unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()),
            ("docker.io", "library/busybox", Some("latest"))
        );
        assert_eq!(r.api_host(), "registry-1.docker.io");
        let r: Reference = "127.0.0.1:5000/team/app:v1".parse().unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()),
            ("127.0.0.1:5000", "team/app", Some("v1"))
        );
        assert!(r.is_loopback());
        let d = "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        let r: Reference = format!("registry.internal/app@{d}").parse().unwrap();
        assert_eq!(r.tag, None);
        assert_eq!(r.manifest_ref(), d);
        assert!(!r.is_loopback());
        assert_eq!(r.to_string(), format!("registry.internal/app@{d}"));
        let r: Reference = "localhost/x:1".parse().unwrap();
        assert_eq!(r.registry, "localhost");
        assert!("UPPER/x".parse::<Reference>().is_err());
        assert!("app:bad tag".parse::<Reference>().is_err());
        assert!("app@sha256:xyz".parse::<Reference>().is_err());
    }
}
