use thiserror::Error;

/// What can go wrong talking to a cluster.
#[derive(Debug, Error)]
pub enum KubeError {
    /// A bad `[k8s]` table or option.
    #[error("{file}: {key}: {message}")]
    Config {
        /// The file.
        file: String,
        /// The key (`k8s.namespace`).
        key: String,
        /// What is wrong and what to do.
        message: String,
    },
    /// The kubeconfig could not be loaded or the server not reached.
    #[error("{0}")]
    Connect(String),
    /// A rendered object sets a field the server is too old for (nothing was sent).
    #[error(
        "{kind} {name}: field {field} needs Kubernetes {min} or newer, the server is {server}; \
         nothing was applied (remove the setting that adds it)"
    )]
    FieldTooNew {
        /// The object's kind.
        kind: String,
        /// The object's name.
        name: String,
        /// The field's path (`spec.template.spec.hostUsers`).
        field: String,
        /// The first version with it (`1.25`).
        min: String,
        /// The server's version.
        server: String,
    },
    /// The server does not serve an API berth needs (nothing was sent).
    #[error("the server ({server}) does not serve {api_version} {kind}; nothing was applied")]
    ApiMissing {
        /// `apps/v1`.
        api_version: String,
        /// `Deployment`.
        kind: String,
        /// The server's version.
        server: String,
    },
    /// Server-side apply found fields owned by another manager.
    #[error(
        "{kind} {name}: {} (apply with --force-conflicts to take them over)",
        conflicts.iter().map(|(m, f)| format!("field {f} is managed by {m:?}")).collect::<Vec<_>>().join(", ")
    )]
    Conflict {
        /// The object's kind.
        kind: String,
        /// The object's name.
        name: String,
        /// (manager, field) pairs.
        conflicts: Vec<(String, String)>,
    },
    /// A request failed.
    #[error("{what}: {source}")]
    Api {
        /// What was asked.
        what: String,
        /// The error.
        #[source]
        source: kube::Error,
    },
    /// A rollout did not finish.
    #[error("rollout of {service} failed: {detail}")]
    Rollout {
        /// The service.
        service: String,
        /// Why, with the failing pod's events and log lines.
        detail: String,
    },
    /// Nothing to roll back to.
    #[error("rollback of {service}: {message}")]
    Rollback {
        /// The service.
        service: String,
        /// Why.
        message: String,
    },
}

impl KubeError {
    pub(crate) fn api(what: impl Into<String>, source: kube::Error) -> KubeError {
        KubeError::Api {
            what: what.into(),
            source,
        }
    }
}
