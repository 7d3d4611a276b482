//! The one place berth builds pods: every PodSpec and PodTemplateSpec berth renders —
//! workloads now, jobs, in-cluster satellites and helper pods later — comes from
//! [`pod_spec`] and [`pod_template`], which set the service account and merge the image
//! pull secrets. A test (tests/one_pod_path.rs) fails if any other source file of the
//! workspace builds one.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, LocalObjectReference, PodSpec, PodTemplateSpec, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// Who pods run as and which pull secrets they carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodIdentity {
    /// `serviceAccountName`.
    pub service_account: String,
    /// berth's own pull secrets (the namespace's `berth-pull`), added after the user's.
    pub pull_secrets: Vec<String>,
}

/// What a renderer asks for: the containers and the user's own settings, which are kept.
#[derive(Debug, Clone, Default)]
pub struct PodParts {
    /// The containers.
    pub containers: Vec<Container>,
    /// Pull secrets the user named; kept, first, never duplicated.
    pub image_pull_secrets: Vec<String>,
    /// `terminationGracePeriodSeconds`.
    pub termination_grace_period_seconds: Option<i64>,
    /// `hostUsers`.
    pub host_users: Option<bool>,
    /// The pod's volumes (absent when empty).
    pub volumes: Vec<Volume>,
}

/// The PodSpec for `parts`, with `identity`'s service account and pull secrets: the
/// user's pull secrets first in their order, then berth's, each name once.
pub fn pod_spec(parts: PodParts, identity: &PodIdentity) -> PodSpec {
    let mut names: Vec<String> = Vec::new();
    for n in parts
        .image_pull_secrets
        .into_iter()
        .chain(identity.pull_secrets.iter().cloned())
    {
        if !names.contains(&n) {
            names.push(n);
        }
    }
    PodSpec {
        containers: parts.containers,
        service_account_name: Some(identity.service_account.clone()),
        image_pull_secrets: (!names.is_empty()).then(|| {
            names
                .into_iter()
                .map(|name| LocalObjectReference { name })
                .collect()
        }),
        termination_grace_period_seconds: parts.termination_grace_period_seconds,
        host_users: parts.host_users,
        volumes: (!parts.volumes.is_empty()).then_some(parts.volumes),
        ..Default::default()
    }
}

/// A pod template (Deployments, later StatefulSets and Jobs) around [`pod_spec`].
pub fn pod_template(
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    parts: PodParts,
    identity: &PodIdentity,
) -> PodTemplateSpec {
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels),
            annotations: (!annotations.is_empty()).then_some(annotations),
            ..Default::default()
        }),
        spec: Some(pod_spec(parts, identity)),
    }
}

/// Checks that a pod (as the server has it) runs as `identity`'s service account and
/// names each of its pull secrets exactly once; the error says what it has instead.
pub fn check_carries(
    name: &str,
    spec: Option<&PodSpec>,
    identity: &PodIdentity,
) -> Result<(), String> {
    let sa = spec.and_then(|s| s.service_account_name.as_deref());
    let has: Vec<&str> = spec
        .and_then(|s| s.image_pull_secrets.as_ref())
        .into_iter()
        .flatten()
        .map(|r| r.name.as_str())
        .collect();
    let counts_ok = identity
        .pull_secrets
        .iter()
        .all(|n| has.iter().filter(|h| **h == n.as_str()).count() == 1);
    if sa != Some(identity.service_account.as_str()) || !counts_ok {
        return Err(format!(
            "pod {name} runs as {sa:?} with pull secrets {has:?}; expected {} with {:?} each once \
             (an older revision's pod? delete it)",
            identity.service_account, identity.pull_secrets
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(spec: &PodSpec) -> Vec<&str> {
        spec.image_pull_secrets
            .iter()
            .flatten()
            .map(|r| r.name.as_str())
            .collect()
    }

    #[test]
    fn user_secrets_are_kept_first_and_not_duplicated() {
        let id = PodIdentity {
            service_account: "berth".into(),
            pull_secrets: vec!["berth-pull".into()],
        };
        let spec = pod_spec(
            PodParts {
                image_pull_secrets: vec!["regcred".into(), "berth-pull".into(), "regcred".into()],
                ..Default::default()
            },
            &id,
        );
        assert_eq!(names(&spec), ["regcred", "berth-pull"]);
        assert_eq!(spec.service_account_name.as_deref(), Some("berth"));
    }

    #[test]
    fn no_secrets_leaves_the_field_out() {
        let id = PodIdentity {
            service_account: "sa".into(),
            pull_secrets: vec![],
        };
        let spec = pod_spec(PodParts::default(), &id);
        assert!(spec.image_pull_secrets.is_none());
    }
}
