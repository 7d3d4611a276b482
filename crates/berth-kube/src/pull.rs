//! The namespace's pull identity: a `kubernetes.io/dockerconfigjson` Secret
//! ([`crate::config::PULL_SECRET`]) made from the credentials berth pushed with, and the
//! ServiceAccount pods run as, carrying it. The ServiceAccount's pull secrets that were
//! there before (the user's) are kept.

use base64::Engine as _;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{LocalObjectReference, Secret, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::config::{K8sConfig, PULL_SECRET};
use crate::pod::PodIdentity;
use crate::{Kube, KubeError};

/// Credentials for the registry the cluster pulls from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullCredentials {
    /// `host[:port]` as the cluster reaches it.
    pub registry: String,
    /// User name.
    pub username: String,
    /// Password.
    pub password: String,
}

/// The dockerconfigjson Secret for `creds`.
pub fn pull_secret(creds: &PullCredentials) -> Secret {
    pull_secret_over(None, creds)
}

/// The dockerconfigjson Secret for `creds`, keeping the other registries' entries of
/// `existing` (the namespace's `berth-pull` as it is): `berth deploy --k8s` and
/// `berth satellite deploy --k8s` may pull from different registries, and each
/// registry's entry is replaced only by new credentials for that registry. Entries no
/// workload pulls from any more go after a deploy ([`crate::prune::prune_pull_secret`]).
pub fn pull_secret_over(existing: Option<&Secret>, creds: &PullCredentials) -> Secret {
    let mut auths = existing.map(auths_of).unwrap_or_default();
    let auth = base64::engine::general_purpose::STANDARD
        .encode(format!("{}:{}", creds.username, creds.password));
    auths.insert(
        creds.registry.clone(),
        serde_json::json!({
            "username": creds.username,
            "password": creds.password,
            "auth": auth,
        }),
    );
    secret_of(auths)
}

/// The `auths` entries of a dockerconfigjson Secret (none when it holds no such JSON).
pub fn auths_of(secret: &Secret) -> serde_json::Map<String, serde_json::Value> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(".dockerconfigjson"))
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b.0).ok())
        .and_then(|v| v.get("auths")?.as_object().cloned())
        .unwrap_or_default()
}

/// berth's pull Secret ([`PULL_SECRET`]) holding `auths`.
pub fn secret_of(auths: serde_json::Map<String, serde_json::Value>) -> Secret {
    let json = serde_json::json!({ "auths": auths });
    Secret {
        metadata: ObjectMeta {
            name: Some(PULL_SECRET.into()),
            labels: Some(
                [(
                    crate::render::MANAGED_BY_LABEL.to_owned(),
                    "berth".to_owned(),
                )]
                .into(),
            ),
            ..Default::default()
        },
        type_: Some("kubernetes.io/dockerconfigjson".into()),
        data: Some(
            [(
                ".dockerconfigjson".to_owned(),
                ByteString(serde_json::to_vec(&json).expect("json")),
            )]
            .into(),
        ),
        ..Default::default()
    }
}

/// Applies the pull secret (when there are credentials) and the ServiceAccount, and
/// returns the identity pods get (the ServiceAccount's pull secrets, theirs and berth's). berth's own ServiceAccount does not automount a token
/// (workloads deployed by berth do not talk to the API server; and on 1.20 a pod of a
/// ServiceAccount whose token is not made yet is refused).
pub async fn ensure(
    kube: &Kube,
    config: &K8sConfig,
    creds: Option<&PullCredentials>,
) -> Result<PodIdentity, KubeError> {
    let sa_name = config.service_account().to_owned();
    let mut ours = Vec::new();
    if let Some(c) = creds {
        let existing = kube
            .api::<Secret>()
            .get_opt(PULL_SECRET)
            .await
            .map_err(|e| KubeError::api(format!("get secret {PULL_SECRET}"), e))?;
        kube.apply(&pull_secret_over(existing.as_ref(), c)).await?;
        ours.push(PULL_SECRET.to_owned());
    }
    let existing = kube
        .api::<ServiceAccount>()
        .get_opt(&sa_name)
        .await
        .map_err(|e| KubeError::api(format!("get serviceaccount {sa_name}"), e))?;
    if config.service_account.is_some() && existing.is_none() {
        return Err(KubeError::Config {
            file: "berth.toml".into(),
            key: "k8s.service_account".into(),
            message: format!(
                "ServiceAccount {sa_name} does not exist in namespace {}; create it, or leave the key out to let berth make one",
                kube.namespace
            ),
        });
    }
    // The list is atomic for server-side apply: berth applies the union (theirs first)
    // and takes the list over, so nothing of theirs is lost.
    let mut names: Vec<String> = existing
        .as_ref()
        .and_then(|sa| sa.image_pull_secrets.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|r| r.name)
        .collect();
    for n in &ours {
        if !names.contains(n) {
            names.push(n.clone());
        }
    }
    let sa = ServiceAccount {
        metadata: ObjectMeta {
            name: Some(sa_name.clone()),
            ..Default::default()
        },
        image_pull_secrets: (!names.is_empty()).then(|| {
            names
                .iter()
                .map(|n| LocalObjectReference { name: n.clone() })
                .collect()
        }),
        automount_service_account_token: config.service_account.is_none().then_some(false),
        ..Default::default()
    };
    if config.service_account.is_none() || !ours.is_empty() {
        kube.apply_forced(&sa, true).await?;
    }
    // Pods name every pull secret of the ServiceAccount themselves: admission adds the
    // ServiceAccount's only to pods that name none.
    Ok(PodIdentity {
        service_account: sa_name,
        pull_secrets: names,
    })
}

/// For berth's own workloads (satellites, registry replicas): [`ensure`] with berth's
/// ServiceAccount and `creds`, then the identity of `user` (its pull secrets first, kept)
/// with berth's ServiceAccount and pull secrets added.
pub async fn ensure_for(
    kube: &Kube,
    creds: Option<&PullCredentials>,
    user: &PodIdentity,
) -> Result<PodIdentity, KubeError> {
    let berths = ensure(kube, &K8sConfig::default(), creds).await?;
    let mut out = user.clone();
    for n in berths.pull_secrets {
        if !out.pull_secrets.contains(&n) {
            out.pull_secrets.push(n);
        }
    }
    out.service_account = berths.service_account;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_secret_is_a_docker_config() {
        let s = pull_secret(&PullCredentials {
            registry: "r:5000".into(),
            username: "u".into(),
            password: "p".into(),
        });
        assert_eq!(s.type_.as_deref(), Some("kubernetes.io/dockerconfigjson"));
        let data = &s.data.clone().unwrap()[".dockerconfigjson"].0;
        let v: serde_json::Value = serde_json::from_slice(data).unwrap();
        assert_eq!(v["auths"]["r:5000"]["auth"], "dTpw");
        // Another registry's credentials join it; new ones for r:5000 replace its entry.
        let two = pull_secret_over(
            Some(&s),
            &PullCredentials {
                registry: "other:443".into(),
                username: "o".into(),
                password: "q".into(),
            },
        );
        let three = pull_secret_over(
            Some(&two),
            &PullCredentials {
                registry: "r:5000".into(),
                username: "u".into(),
                password: "new".into(),
            },
        );
        let v: serde_json::Value =
            serde_json::from_slice(&three.data.unwrap()[".dockerconfigjson"].0).unwrap();
        assert_eq!(v["auths"]["r:5000"]["password"], "new");
        assert_eq!(v["auths"]["other:443"]["password"], "q");
        assert_eq!(v["auths"].as_object().unwrap().len(), 2);
    }
}
