//! The `[k8s]` table of `berth.toml`, beside `[deploy]` (whose services it deploys):
//!
//! ```toml
//! [k8s]
//! context = "staging"               # kubeconfig context (default: the current one)
//! namespace = "shop"                # default: the context's, else "default"
//! kubeconfig = "~/.kube/staging"    # default: KUBECONFIG, else ~/.kube/config
//! registry = "registry.internal:5000" # where the cluster pulls (default: deploy.registry.address)
//! service_account = "shop"          # an existing ServiceAccount to use (default: berth makes "berth")
//! image_pull_secrets = ["regcred"]  # the user's own pull secrets, kept on every pod
//!
//! [k8s.services.app]
//! replicas = 3
//! host_users = false                # user namespaces (Kubernetes 1.25+)
//! revision_history_limit = 10       # old ReplicaSets kept for rollback (default 10)
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::KubeError;

/// The ServiceAccount berth makes when `[k8s] service_account` is not set.
pub const DEFAULT_SERVICE_ACCOUNT: &str = "berth";
/// The dockerconfigjson Secret berth keeps in each namespace.
pub const PULL_SECRET: &str = "berth-pull";

/// The checked `[k8s]` table (all defaults when the file has none).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct K8sConfig {
    /// kubeconfig context.
    pub context: Option<String>,
    /// Target namespace.
    pub namespace: Option<String>,
    /// kubeconfig file.
    pub kubeconfig: Option<PathBuf>,
    /// The registry address the cluster pulls from.
    pub registry: Option<String>,
    /// An existing ServiceAccount to use instead of berth's own.
    pub service_account: Option<String>,
    /// The user's pull secrets, put on every pod beside berth's.
    pub image_pull_secrets: Vec<String>,
    /// Per-service settings.
    pub services: BTreeMap<String, ServiceK8s>,
}

/// `[k8s.services.NAME]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceK8s {
    /// Pods of the Deployment (default 1).
    pub replicas: Option<i32>,
    /// `hostUsers` of its pods.
    pub host_users: Option<bool>,
    /// The Deployment's `revisionHistoryLimit`: old ReplicaSets kept for rollback
    /// (default 10); the ConfigMaps and Secrets they name are kept with them.
    pub revision_history_limit: Option<i32>,
}

#[derive(Deserialize)]
struct FileRaw {
    k8s: Option<K8sRaw>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct K8sRaw {
    context: Option<String>,
    namespace: Option<String>,
    kubeconfig: Option<PathBuf>,
    registry: Option<String>,
    service_account: Option<String>,
    #[serde(default)]
    image_pull_secrets: Vec<String>,
    #[serde(default)]
    services: BTreeMap<String, ServiceRaw>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceRaw {
    replicas: Option<i64>,
    host_users: Option<bool>,
    revision_history_limit: Option<i64>,
}

/// A DNS-1123 label (namespaces, object names).
pub fn valid_label(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A DNS-1123 subdomain (Secret, ServiceAccount names).
pub fn valid_subdomain(s: &str) -> bool {
    (1..=253).contains(&s.len()) && s.split('.').all(valid_label)
}

impl K8sConfig {
    /// Reads the `[k8s]` table of `path` (all defaults when there is none).
    pub fn load(path: &Path) -> Result<K8sConfig, KubeError> {
        let text = std::fs::read_to_string(path).map_err(|e| KubeError::Config {
            file: path.display().to_string(),
            key: "k8s".into(),
            message: format!("cannot read it ({e})"),
        })?;
        K8sConfig::parse(&text, path)
    }

    /// Checks the `[k8s]` table in `text`, read from `path`.
    pub fn parse(text: &str, path: &Path) -> Result<K8sConfig, KubeError> {
        let err = |key: &str, message: String| KubeError::Config {
            file: path.display().to_string(),
            key: key.to_owned(),
            message,
        };
        let raw: FileRaw = toml::from_str(text).map_err(|e| {
            let key = e
                .span()
                .map(|s| format!("line {}", text[..s.start].matches('\n').count() + 1))
                .unwrap_or_else(|| "k8s".into());
            err(&key, e.message().to_owned())
        })?;
        let Some(k) = raw.k8s else {
            return Ok(K8sConfig::default());
        };
        if let Some(ns) = &k.namespace
            && !valid_label(ns)
        {
            return Err(err(
                "k8s.namespace",
                format!(
                    "{ns:?} is not a namespace name (lower-case letters, digits, `-`; 1 to 63)"
                ),
            ));
        }
        if let Some(r) = &k.registry
            && (r.is_empty() || r.contains('/') || r.contains("://"))
        {
            return Err(err(
                "k8s.registry",
                format!("{r:?} is not host[:port] (no scheme, no path)"),
            ));
        }
        if let Some(sa) = &k.service_account
            && !valid_subdomain(sa)
        {
            return Err(err(
                "k8s.service_account",
                format!("{sa:?} is not a ServiceAccount name"),
            ));
        }
        for (i, s) in k.image_pull_secrets.iter().enumerate() {
            if !valid_subdomain(s) {
                return Err(err(
                    &format!("k8s.image_pull_secrets[{i}]"),
                    format!("{s:?} is not a Secret name"),
                ));
            }
        }
        let mut services = BTreeMap::new();
        for (name, s) in k.services {
            let replicas = match s.replicas {
                None => None,
                Some(n) if (0..=10_000).contains(&n) => Some(n as i32),
                Some(n) => {
                    return Err(err(
                        &format!("k8s.services.{name}.replicas"),
                        format!("{n}: give 0 to 10000"),
                    ));
                }
            };
            let revision_history_limit = match s.revision_history_limit {
                None => None,
                Some(n) if (0..=1000).contains(&n) => Some(n as i32),
                Some(n) => {
                    return Err(err(
                        &format!("k8s.services.{name}.revision_history_limit"),
                        format!("{n}: give 0 to 1000"),
                    ));
                }
            };
            services.insert(
                name,
                ServiceK8s {
                    replicas,
                    host_users: s.host_users,
                    revision_history_limit,
                },
            );
        }
        Ok(K8sConfig {
            context: k.context,
            namespace: k.namespace,
            kubeconfig: k.kubeconfig,
            registry: k.registry,
            service_account: k.service_account,
            image_pull_secrets: k.image_pull_secrets,
            services,
        })
    }

    /// The ServiceAccount pods run as.
    pub fn service_account(&self) -> &str {
        self.service_account
            .as_deref()
            .unwrap_or(DEFAULT_SERVICE_ACCOUNT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_table_is_all_defaults() {
        let c = K8sConfig::parse("[deploy]\n", Path::new("b.toml")).unwrap();
        assert_eq!(c, K8sConfig::default());
        assert_eq!(c.service_account(), "berth");
    }

    #[test]
    fn a_full_table_parses() {
        let c = K8sConfig::parse(
            "[k8s]\nnamespace = \"shop\"\nregistry = \"r:5000\"\nimage_pull_secrets = [\"regcred\"]\n\
             [k8s.services.web]\nreplicas = 3\nhost_users = false\n",
            Path::new("b.toml"),
        )
        .unwrap();
        assert_eq!(c.namespace.as_deref(), Some("shop"));
        assert_eq!(c.services["web"].replicas, Some(3));
        assert_eq!(c.services["web"].host_users, Some(false));
    }

    #[test]
    fn bad_values_name_their_key() {
        for (text, key) in [
            ("[k8s]\nnamespace = \"Shop\"\n", "k8s.namespace"),
            ("[k8s]\nregistry = \"https://r\"\n", "k8s.registry"),
            (
                "[k8s]\nimage_pull_secrets = [\"a b\"]\n",
                "k8s.image_pull_secrets[0]",
            ),
            (
                "[k8s.services.web]\nreplicas = -1\n",
                "k8s.services.web.replicas",
            ),
            (
                "[k8s.services.web]\nrevision_history_limit = 5000\n",
                "k8s.services.web.revision_history_limit",
            ),
            ("[k8s]\nnamespac = \"x\"\n", "line 2"),
        ] {
            let e = K8sConfig::parse(text, Path::new("b.toml"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
    }
}
