//! Pruning what berth made and nothing needs any more, after a deploy.
//!
//! - **A service's content-named ConfigMaps and Secrets** (`<service>-env-<hash>`,
//!   `<service>-secrets-<hash>`, labelled as berth's and the service's) are deleted when
//!   neither the Deployment's pod template nor the pod template of any ReplicaSet the
//!   Deployment controller still keeps names them. The controller keeps
//!   `revisionHistoryLimit` old ReplicaSets (`[k8s.services.NAME]
//!   revision_history_limit`, default 10), and those are exactly the revisions `berth
//!   rollback --k8s` can go back to ([`crate::rollout::history`]), so a rollback always
//!   finds the objects its revision names.
//! - **Entries of the namespace's `berth-pull`** are dropped for registries no workload in
//!   the namespace pulls from: an entry stays while a pod template of a Deployment, a
//!   ReplicaSet (old revisions included, so a rollback can still pull) or a StatefulSet
//!   that uses `berth-pull` (naming it, or running as a ServiceAccount listing it) names
//!   an image of that registry. The Secret itself stays, even empty: pods name it.

use std::collections::BTreeSet;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, PodSpec, PodTemplateSpec, Secret, ServiceAccount};
use kube::api::{DeleteParams, ListParams};

use crate::config::PULL_SECRET;
use crate::render::{MANAGED_BY_LABEL, NAME_LABEL};
use crate::{Kube, KubeError};

/// A ConfigMap or Secret a pod template reads.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Ref {
    /// A ConfigMap by name.
    ConfigMap(String),
    /// A Secret by name.
    Secret(String),
}

/// Every ConfigMap and Secret `spec` reads: `envFrom`, `env[].valueFrom` of every
/// container and init container, and volumes (projected ones too). Pull secrets are not
/// counted (berth's are not content-named).
pub fn references(spec: &PodSpec) -> BTreeSet<Ref> {
    let mut out = BTreeSet::new();
    for c in spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
    {
        for e in c.env_from.iter().flatten() {
            if let Some(r) = &e.config_map_ref {
                out.insert(Ref::ConfigMap(r.name.clone()));
            }
            if let Some(r) = &e.secret_ref {
                out.insert(Ref::Secret(r.name.clone()));
            }
        }
        for e in c.env.iter().flatten() {
            let Some(from) = &e.value_from else { continue };
            if let Some(r) = &from.config_map_key_ref {
                out.insert(Ref::ConfigMap(r.name.clone()));
            }
            if let Some(r) = &from.secret_key_ref {
                out.insert(Ref::Secret(r.name.clone()));
            }
        }
    }
    for v in spec.volumes.iter().flatten() {
        if let Some(c) = &v.config_map {
            out.insert(Ref::ConfigMap(c.name.clone()));
        }
        if let Some(s) = v.secret.as_ref().and_then(|s| s.secret_name.clone()) {
            out.insert(Ref::Secret(s));
        }
        for src in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
            if let Some(c) = &src.config_map {
                out.insert(Ref::ConfigMap(c.name.clone()));
            }
            if let Some(s) = &src.secret {
                out.insert(Ref::Secret(s.name.clone()));
            }
        }
    }
    out
}

fn template_spec(t: Option<&PodTemplateSpec>) -> Option<&PodSpec> {
    t?.spec.as_ref()
}

/// Deletes `service`'s content-named ConfigMaps and Secrets that neither its Deployment
/// nor a ReplicaSet the controller keeps for it names; returns what was deleted
/// (`configmap/NAME`, `secret/NAME`). Nothing is deleted when the Deployment is not there.
pub async fn prune_service(kube: &Kube, service: &str) -> Result<Vec<String>, KubeError> {
    let selector = format!("{NAME_LABEL}={service},{MANAGED_BY_LABEL}=berth");
    let lp = ListParams::default().labels(&format!("{NAME_LABEL}={service}"));
    // ReplicaSets first, then the Deployment: a ReplicaSet made after the list is made
    // from the template read after it.
    let sets = kube
        .api::<ReplicaSet>()
        .list(&lp)
        .await
        .map_err(|e| KubeError::api(format!("list replicasets of {service}"), e))?;
    let Some(deployment) = kube
        .api::<Deployment>()
        .get_opt(service)
        .await
        .map_err(|e| KubeError::api(format!("get deployment {service}"), e))?
    else {
        return Ok(Vec::new());
    };
    let mut keep = BTreeSet::new();
    if let Some(spec) = template_spec(deployment.spec.as_ref().map(|s| &s.template)) {
        keep.extend(references(spec));
    }
    for rs in &sets.items {
        if let Some(spec) = template_spec(rs.spec.as_ref().and_then(|s| s.template.as_ref())) {
            keep.extend(references(spec));
        }
    }
    let mut deleted = Vec::new();
    let lp = ListParams::default().labels(&selector);
    let env_prefix = format!("{service}-env-");
    let cms = kube
        .api::<ConfigMap>()
        .list(&lp)
        .await
        .map_err(|e| KubeError::api(format!("list configmaps of {service}"), e))?;
    for cm in cms.items {
        let name = cm.metadata.name.unwrap_or_default();
        if name.starts_with(&env_prefix) && !keep.contains(&Ref::ConfigMap(name.clone())) {
            delete::<ConfigMap>(kube, &name).await?;
            deleted.push(format!("configmap/{name}"));
        }
    }
    let secrets_prefix = format!("{service}-secrets-");
    let secrets = kube
        .api::<Secret>()
        .list(&lp)
        .await
        .map_err(|e| KubeError::api(format!("list secrets of {service}"), e))?;
    for s in secrets.items {
        let name = s.metadata.name.unwrap_or_default();
        if name.starts_with(&secrets_prefix) && !keep.contains(&Ref::Secret(name.clone())) {
            delete::<Secret>(kube, &name).await?;
            deleted.push(format!("secret/{name}"));
        }
    }
    Ok(deleted)
}

async fn delete<K>(kube: &Kube, name: &str) -> Result<(), KubeError>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned,
{
    let kind = K::kind(&()).to_ascii_lowercase();
    match kube.api::<K>().delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        // Gone already (another deploy pruned it): what was wanted.
        Err(kube::Error::Api(s)) if s.is_not_found() => Ok(()),
        Err(e) => Err(KubeError::api(format!("delete {kind} {name}"), e)),
    }
}

/// The registry an image reference pulls from, as Docker reads it: the part before the
/// first `/` when it has a `.` or `:` or is `localhost`, else Docker Hub (`docker.io`).
pub fn registry_of(image: &str) -> String {
    match image.split_once('/') {
        Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => {
            canonical_registry(first)
        }
        _ => "docker.io".to_owned(),
    }
}

/// A registry as a docker config's `auths` key names it (`https://index.docker.io/v1/`,
/// `r:5000`), as [`registry_of`] names it.
pub fn canonical_registry(key: &str) -> String {
    let host = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = host.split('/').next().unwrap_or(host).to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "docker.io" => "docker.io".to_owned(),
        _ => host,
    }
}

/// The registries of every image (containers and init containers) of `spec`.
fn registries(spec: &PodSpec, out: &mut BTreeSet<String>) {
    for c in spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
    {
        if let Some(i) = &c.image {
            out.insert(registry_of(i));
        }
    }
}

/// Drops the entries of the namespace's `berth-pull` for registries no workload using it
/// pulls from (see the module's text); returns the registries dropped.
pub async fn prune_pull_secret(kube: &Kube) -> Result<Vec<String>, KubeError> {
    let Some(secret) = kube
        .api::<Secret>()
        .get_opt(PULL_SECRET)
        .await
        .map_err(|e| KubeError::api(format!("get secret {PULL_SECRET}"), e))?
    else {
        return Ok(Vec::new());
    };
    let auths = crate::pull::auths_of(&secret);
    if auths.is_empty() {
        return Ok(Vec::new());
    }
    let lp = ListParams::default();
    let accounts: BTreeSet<String> = kube
        .api::<ServiceAccount>()
        .list(&lp)
        .await
        .map_err(|e| KubeError::api("list serviceaccounts", e))?
        .items
        .into_iter()
        .filter(|sa| {
            sa.image_pull_secrets
                .iter()
                .flatten()
                .any(|r| r.name == PULL_SECRET)
        })
        .filter_map(|sa| sa.metadata.name)
        .collect();
    let mut specs: Vec<PodSpec> = Vec::new();
    let list_err = |what: &str| {
        let what = what.to_owned();
        move |e| KubeError::api(format!("list {what}"), e)
    };
    for d in kube
        .api::<Deployment>()
        .list(&lp)
        .await
        .map_err(list_err("deployments"))?
        .items
    {
        specs.extend(d.spec.and_then(|s| s.template.spec));
    }
    for rs in kube
        .api::<ReplicaSet>()
        .list(&lp)
        .await
        .map_err(list_err("replicasets"))?
        .items
    {
        specs.extend(rs.spec.and_then(|s| s.template?.spec));
    }
    for ss in kube
        .api::<StatefulSet>()
        .list(&lp)
        .await
        .map_err(list_err("statefulsets"))?
        .items
    {
        specs.extend(ss.spec.and_then(|s| s.template.spec));
    }
    let mut used = BTreeSet::new();
    for spec in &specs {
        let names_it = spec
            .image_pull_secrets
            .iter()
            .flatten()
            .any(|r| r.name == PULL_SECRET);
        // Admission adds the ServiceAccount's pull secrets to a pod that names none.
        let through_account = spec
            .image_pull_secrets
            .as_ref()
            .is_none_or(|l| l.is_empty())
            && accounts.contains(spec.service_account_name.as_deref().unwrap_or("default"));
        if names_it || through_account {
            registries(spec, &mut used);
        }
    }
    let (kept, dropped): (Vec<_>, Vec<_>) = auths
        .into_iter()
        .partition(|(k, _)| used.contains(&canonical_registry(k)));
    if dropped.is_empty() {
        return Ok(Vec::new());
    }
    kube.apply_forced(&crate::pull::secret_of(kept.into_iter().collect()), true)
        .await?;
    Ok(dropped.into_iter().map(|(k, _)| k).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registries_are_read_as_docker_reads_them() {
        for (image, want) in [
            ("busybox", "docker.io"),
            ("library/busybox:1", "docker.io"),
            ("docker.io/library/busybox", "docker.io"),
            ("index.docker.io/x/y", "docker.io"),
            ("127.0.0.1:5000/web@sha256:00", "127.0.0.1:5000"),
            ("localhost/web", "localhost"),
            ("Registry.Internal/a/b:c", "registry.internal"),
        ] {
            assert_eq!(registry_of(image), want, "{image}");
        }
        assert_eq!(
            canonical_registry("https://index.docker.io/v1/"),
            "docker.io"
        );
        assert_eq!(canonical_registry("r:5000"), "r:5000");
        assert_eq!(canonical_registry("http://r:5000/v2/"), "r:5000");
    }
}
