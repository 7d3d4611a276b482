//! What the server has, learned before anything is sent: its version and the APIs it
//! serves (discovery of the API groups berth uses), and a table of object fields with the
//! first Kubernetes version that has them. A rendered object that uses an API or a field
//! the server lacks is refused, naming it; nothing is applied. (Servers silently drop an
//! unknown field on create and refuse it only in server-side apply, after other objects
//! may have gone out.)

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::KubeError;

/// A field and the first minor version of Kubernetes 1.x that has it.
pub struct FieldSince {
    /// The kind it is checked on.
    pub kind: &'static str,
    /// Its path; `[]` walks every item of a list.
    pub path: &'static str,
    /// The first minor version (of 1.x) with the field.
    pub minor: u32,
}

/// Fields newer than Kubernetes 1.20 that berth renders or may render.
pub const FIELDS: &[FieldSince] = &[
    FieldSince {
        kind: "Deployment",
        path: "spec.template.spec.hostUsers",
        minor: 25,
    },
    FieldSince {
        kind: "Deployment",
        path: "spec.template.spec.os",
        minor: 25,
    },
    FieldSince {
        kind: "Deployment",
        path: "spec.template.spec.schedulingGates",
        minor: 26,
    },
    FieldSince {
        kind: "Deployment",
        path: "spec.template.spec.resourceClaims",
        minor: 26,
    },
    FieldSince {
        kind: "Deployment",
        path: "spec.template.spec.containers[].resizePolicy",
        minor: 27,
    },
    FieldSince {
        kind: "Deployment",
        path: "spec.template.spec.containers[].readinessProbe.grpc",
        minor: 24,
    },
    FieldSince {
        kind: "Deployment",
        path: "spec.template.spec.containers[].livenessProbe.grpc",
        minor: 24,
    },
    FieldSince {
        kind: "Deployment",
        path: "spec.template.spec.containers[].lifecycle.stopSignal",
        minor: 33,
    },
    FieldSince {
        kind: "Deployment",
        path: "spec.template.spec.initContainers[].restartPolicy",
        minor: 28,
    },
    FieldSince {
        kind: "Service",
        path: "spec.internalTrafficPolicy",
        minor: 21,
    },
    FieldSince {
        kind: "Service",
        path: "spec.trafficDistribution",
        minor: 30,
    },
];

/// An apiVersion of a kind and the Kubernetes 1.x minor versions that serve it.
pub struct ApiSince {
    /// The kind.
    pub kind: &'static str,
    /// Its apiVersion (`policy/v1`).
    pub api_version: &'static str,
    /// The first minor version serving it.
    pub minor: u32,
    /// The first minor version no longer serving it.
    pub removed: Option<u32>,
}

/// Kinds whose apiVersion berth picks by the server's version, newest first.
pub const APIS: &[ApiSince] = &[
    ApiSince {
        kind: "PodDisruptionBudget",
        api_version: "policy/v1",
        minor: 21,
        removed: None,
    },
    ApiSince {
        kind: "PodDisruptionBudget",
        api_version: "policy/v1beta1",
        minor: 5,
        removed: Some(25),
    },
];

/// The apiVersion of `kind` for Kubernetes 1.`minor` by [`APIS`] (the newest it serves).
pub fn api_version_for(kind: &str, minor: u32) -> Option<&'static str> {
    APIS.iter()
        .find(|a| a.kind == kind && a.minor <= minor && a.removed.is_none_or(|r| minor < r))
        .map(|a| a.api_version)
}

/// The server: its version and the kinds it serves per apiVersion.
#[derive(Debug, Clone)]
pub struct ServerInfo {
    /// `v1.20.2`.
    pub git_version: String,
    /// 1.x's minor version.
    pub minor: u32,
    /// apiVersion → kinds served (only the apiVersions asked for).
    pub kinds: BTreeMap<String, BTreeSet<String>>,
}

/// `"20"`, `"20+"` (some vendors) → 20.
pub fn parse_minor(s: &str) -> Option<u32> {
    s.trim_end_matches(|c: char| !c.is_ascii_digit())
        .parse()
        .ok()
}

/// Whether `v` has something at `path` (segments split at `.`, `[]` over lists).
fn has_path(v: &Value, path: &str) -> bool {
    let (head, rest) = match path.split_once('.') {
        Some((h, r)) => (h, Some(r)),
        None => (path, None),
    };
    let (key, list) = match head.strip_suffix("[]") {
        Some(k) => (k, true),
        None => (head, false),
    };
    let Some(child) = v.get(key) else {
        return false;
    };
    if child.is_null() {
        return false;
    }
    match (list, rest) {
        (false, None) => true,
        (false, Some(r)) => has_path(child, r),
        (true, None) => child.as_array().is_some_and(|a| !a.is_empty()),
        (true, Some(r)) => child
            .as_array()
            .is_some_and(|a| a.iter().any(|item| has_path(item, r))),
    }
}

impl ServerInfo {
    /// The apiVersion to send `kind` with: the one [`APIS`] gives for the server's
    /// version, if discovery shows the server serves it (else any other of the table
    /// that it serves); an error naming the kind when it serves none.
    pub fn api_version_for(&self, kind: &str) -> Result<&'static str, KubeError> {
        let served = |av: &str| self.kinds.get(av).is_some_and(|k| k.contains(kind));
        api_version_for(kind, self.minor)
            .filter(|av| served(av))
            .or_else(|| {
                APIS.iter()
                    .find(|a| a.kind == kind && served(a.api_version))
                    .map(|a| a.api_version)
            })
            .ok_or_else(|| KubeError::ApiMissing {
                api_version: APIS
                    .iter()
                    .filter(|a| a.kind == kind)
                    .map(|a| a.api_version)
                    .collect::<Vec<_>>()
                    .join(" or "),
                kind: kind.into(),
                server: self.git_version.clone(),
            })
    }

    /// Refuses `object` (as sent) when the server lacks its API or one of its fields.
    pub fn check(&self, object: &Value) -> Result<(), KubeError> {
        let api_version = object["apiVersion"].as_str().unwrap_or_default();
        let kind = object["kind"].as_str().unwrap_or_default();
        let name = object["metadata"]["name"].as_str().unwrap_or_default();
        if !self
            .kinds
            .get(api_version)
            .is_some_and(|k| k.contains(kind))
        {
            return Err(KubeError::ApiMissing {
                api_version: api_version.into(),
                kind: kind.into(),
                server: self.git_version.clone(),
            });
        }
        for f in FIELDS {
            if f.kind == kind && self.minor < f.minor && has_path(object, f.path) {
                return Err(KubeError::FieldTooNew {
                    kind: kind.into(),
                    name: name.into(),
                    field: f.path.into(),
                    min: format!("1.{}", f.minor),
                    server: self.git_version.clone(),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn server(minor: u32) -> ServerInfo {
        ServerInfo {
            git_version: format!("v1.{minor}.0"),
            minor,
            kinds: BTreeMap::from([(
                "apps/v1".to_owned(),
                BTreeSet::from(["Deployment".to_owned()]),
            )]),
        }
    }

    #[test]
    fn minors_parse() {
        assert_eq!(parse_minor("20"), Some(20));
        assert_eq!(parse_minor("27+"), Some(27));
        assert_eq!(parse_minor("x"), None);
    }

    #[test]
    fn a_new_field_is_refused_on_an_old_server_only() {
        let d = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
            "spec": {"template": {"spec": {"hostUsers": false, "containers": [{"name": "a"}]}}}});
        let e = server(20).check(&d).unwrap_err().to_string();
        assert!(e.contains("spec.template.spec.hostUsers"), "{e}");
        assert!(e.contains("1.25"), "{e}");
        server(25).check(&d).unwrap();
    }

    #[test]
    fn fields_inside_lists_are_found() {
        let d = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
            "spec": {"template": {"spec": {"containers": [{"name": "a"},
                {"name": "b", "resizePolicy": [{"resourceName": "cpu"}]}]}}}});
        let e = server(20).check(&d).unwrap_err().to_string();
        assert!(e.contains("containers[].resizePolicy"), "{e}");
    }

    #[test]
    fn the_pdb_api_follows_the_version() {
        assert_eq!(
            api_version_for("PodDisruptionBudget", 20),
            Some("policy/v1beta1")
        );
        assert_eq!(
            api_version_for("PodDisruptionBudget", 21),
            Some("policy/v1")
        );
        assert_eq!(
            api_version_for("PodDisruptionBudget", 30),
            Some("policy/v1")
        );
        let mut s = server(20);
        let e = s.api_version_for("PodDisruptionBudget").unwrap_err();
        assert!(e.to_string().contains("policy/v1 or policy/v1beta1"), "{e}");
        s.kinds.insert(
            "policy/v1beta1".into(),
            BTreeSet::from(["PodDisruptionBudget".to_owned()]),
        );
        assert_eq!(
            s.api_version_for("PodDisruptionBudget").unwrap(),
            "policy/v1beta1"
        );
    }

    #[test]
    fn a_missing_api_is_refused() {
        let j = json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "c"}});
        let e = server(20).check(&j).unwrap_err().to_string();
        assert!(e.contains("batch/v1 CronJob"), "{e}");
    }
}
