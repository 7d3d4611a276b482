//! berth's registry in the cluster (`berth registry manifests`, `berth registry deploy
//! --k8s`; issue 14, item 5): a Deployment of N stateless `berth registry serve`
//! replicas on one S3 bucket, a Service in front of them and a PodDisruptionBudget
//! (at most one replica down at a time). The replicas read what a registry on a host
//! reads: a `config.toml` (`[registry]`, `[registry.storage] kind = "s3"`) and the files
//! it names (an AWS credentials file, htpasswd, access rules), here all from one Secret
//! mounted at [`POD_CONFIG_DIR`]. A hash of the Secret's content is on the pod template,
//! so new settings or credentials roll the replicas. The pods come from
//! [`crate::pod::pod_template`]; the PodDisruptionBudget's apiVersion from
//! [`crate::version::APIS`] (`policy/v1beta1` before Kubernetes 1.21).

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EmptyDirVolumeSource, Pod, Probe, Secret, SecretVolumeSource,
    Service, TCPSocketAction, Volume, VolumeMount,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::KubeError;
use crate::pod::{PodIdentity, PodParts, pod_template};

/// Where the Secret's files are mounted in each replica.
pub const POD_CONFIG_DIR: &str = "/etc/berth/registry";
/// The Secret's key holding the replicas' config.toml.
pub const CONFIG_KEY: &str = "config.toml";
/// The replicas' root (an emptyDir: content lives in the bucket).
pub const POD_ROOT: &str = "/var/lib/berth";
/// The annotation on the pod template with the hash of the Secret's content.
pub const CONFIG_HASH_ANNOTATION: &str = "berth.dev/config-hash";
const PORT_NAME: &str = "registry";

/// What the registry's objects are rendered from.
#[derive(Debug, Clone)]
pub struct RegistryInput {
    /// The Deployment's, Service's and PodDisruptionBudget's name; the Secret is
    /// `<name>-config`.
    pub name: String,
    /// `metadata.namespace` of every object (printed manifests only).
    pub namespace: Option<String>,
    /// The image holding the berth binary.
    pub image: String,
    /// Replicas.
    pub replicas: i32,
    /// The port the replicas and the Service listen on.
    pub port: u16,
    /// The Secret's files (name → content); [`CONFIG_KEY`] must be among them and name
    /// the others under [`POD_CONFIG_DIR`].
    pub files: BTreeMap<String, String>,
    /// Service account and pull secrets of the pods.
    pub identity: PodIdentity,
    /// `policy/v1` or `policy/v1beta1` ([`crate::version::api_version_for`]).
    pub pdb_api_version: String,
}

/// The registry's objects, in apply order.
#[derive(Debug, Clone)]
pub struct RegistryObjects {
    /// `<name>-config`: config.toml and the files it names.
    pub secret: Secret,
    /// The replicas.
    pub deployment: Deployment,
    /// The Service.
    pub service: Service,
    /// The PodDisruptionBudget, as sent (its apiVersion depends on the server).
    pub pdb: Value,
}

fn labels(name: &str) -> BTreeMap<String, String> {
    crate::render::component_labels("berth-registry", name)
}

/// The label selector of the replicas, as `kubectl -l` takes it.
pub fn selector(name: &str) -> String {
    labels(name)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Checks `input`, naming the flag that is wrong.
pub fn validate(input: &RegistryInput) -> Result<(), String> {
    let name = &input.name;
    // 47: the Secret adds `-config` and pod names add two hashes.
    if !((1..=47).contains(&name.len()) && crate::config::valid_label(name)) {
        return Err(format!(
            "--name {name:?}: Kubernetes names are 1 to 47 lowercase letters, digits and `-`, \
             starting and ending with a letter or digit"
        ));
    }
    if let Some(ns) = &input.namespace
        && !crate::config::valid_label(ns)
    {
        return Err(format!("--namespace {ns:?} is not a namespace name"));
    }
    if input.image.is_empty()
        || input
            .image
            .chars()
            .any(|c| c.is_whitespace() || c == '"' || c == '\\')
    {
        return Err(format!(
            "--image {:?}: an image reference has no spaces, quotes or backslashes",
            input.image
        ));
    }
    if !(1..=100).contains(&input.replicas) {
        return Err(format!("--replicas {}: give 1 to 100", input.replicas));
    }
    if input.port == 0 {
        return Err("--port 0: give the port the replicas listen on".into());
    }
    if !input.files.contains_key(CONFIG_KEY) {
        return Err(format!("the registry's Secret needs {CONFIG_KEY}"));
    }
    if !["policy/v1", "policy/v1beta1"].contains(&input.pdb_api_version.as_str()) {
        return Err(format!(
            "PodDisruptionBudget apiVersion {:?}: policy/v1 or policy/v1beta1",
            input.pdb_api_version
        ));
    }
    Ok(())
}

/// A short hash of the Secret's files.
fn files_hash(files: &BTreeMap<String, String>) -> String {
    let mut h = Sha256::new();
    for (k, v) in files {
        h.update((k.len() as u64).to_be_bytes());
        h.update(k.as_bytes());
        h.update((v.len() as u64).to_be_bytes());
        h.update(v.as_bytes());
    }
    h.finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The registry's Secret, Deployment, Service and PodDisruptionBudget.
pub fn render(input: &RegistryInput) -> Result<RegistryObjects, String> {
    validate(input)?;
    let name = &input.name;
    let port = i32::from(input.port);
    let meta = |n: String| ObjectMeta {
        name: Some(n),
        namespace: input.namespace.clone(),
        labels: Some(labels(name)),
        ..Default::default()
    };
    let secret_name = format!("{name}-config");
    let secret = Secret {
        metadata: meta(secret_name.clone()),
        type_: Some("Opaque".to_owned()),
        data: Some(
            input
                .files
                .iter()
                .map(|(k, v)| (k.clone(), ByteString(v.as_bytes().to_vec())))
                .collect(),
        ),
        ..Default::default()
    };
    let container = Container {
        name: PORT_NAME.to_owned(),
        image: Some(input.image.clone()),
        args: Some(vec![
            format!("--root={POD_ROOT}"),
            format!("--config={POD_CONFIG_DIR}/{CONFIG_KEY}"),
            "registry".to_owned(),
            "serve".to_owned(),
            format!("--addr=0.0.0.0:{port}"),
        ]),
        ports: Some(vec![ContainerPort {
            name: Some(PORT_NAME.to_owned()),
            container_port: port,
            protocol: Some("TCP".to_owned()),
            ..Default::default()
        }]),
        // A replica checks the bucket before it listens, so an open port is a working
        // replica; `/v2/` would answer 401 with htpasswd.
        readiness_probe: Some(Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::String(PORT_NAME.to_owned()),
                ..Default::default()
            }),
            period_seconds: Some(5),
            ..Default::default()
        }),
        volume_mounts: Some(vec![
            VolumeMount {
                name: "config".to_owned(),
                mount_path: POD_CONFIG_DIR.to_owned(),
                read_only: Some(true),
                ..Default::default()
            },
            VolumeMount {
                name: "root".to_owned(),
                mount_path: POD_ROOT.to_owned(),
                ..Default::default()
            },
        ]),
        ..Default::default()
    };
    let template = pod_template(
        labels(name),
        BTreeMap::from([(CONFIG_HASH_ANNOTATION.to_owned(), files_hash(&input.files))]),
        PodParts {
            containers: vec![container],
            volumes: vec![
                Volume {
                    name: "config".to_owned(),
                    secret: Some(SecretVolumeSource {
                        secret_name: Some(secret_name),
                        default_mode: Some(0o400),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                Volume {
                    name: "root".to_owned(),
                    empty_dir: Some(EmptyDirVolumeSource::default()),
                    ..Default::default()
                },
            ],
            ..Default::default()
        },
        &input.identity,
    );
    let selector = LabelSelector {
        match_labels: Some(labels(name)),
        ..Default::default()
    };
    let deployment = Deployment {
        metadata: meta(name.clone()),
        spec: Some(DeploymentSpec {
            replicas: Some(input.replicas),
            selector: selector.clone(),
            template,
            ..Default::default()
        }),
        ..Default::default()
    };
    let service =
        crate::render::one_port_service(meta(name.clone()), labels(name), PORT_NAME, port);
    // policy/v1beta1 has the same fields berth sets: the typed policy/v1 object with the
    // apiVersion the server takes.
    let pdb = PodDisruptionBudget {
        metadata: meta(name.clone()),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(selector),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut pdb = serde_json::to_value(&pdb).map_err(|e| format!("serialize the PDB: {e}"))?;
    pdb["apiVersion"] = Value::String(input.pdb_api_version.clone());
    Ok(RegistryObjects {
        secret,
        deployment,
        service,
        pdb,
    })
}

/// The comment block `berth registry manifests` starts with.
pub fn header(input: &RegistryInput) -> String {
    let name = &input.name;
    let sa = &input.identity.service_account;
    let n = input.replicas;
    format!(
        r#"# berth registry {name}: {n} replicas of `berth registry serve` on one S3 bucket.
# `kubectl apply -f` this file (or `berth registry deploy --k8s`).
#
# The Secret {name}-config holds the replicas' config.toml ([registry.storage] from this
# machine's config) and the files it names (S3 credentials, htpasswd): it holds keys, so
# keep this file as you keep them. A change of it rolls the replicas (the pod template
# carries its hash). Content lives in the bucket; each replica's root is an emptyDir.
# The pods run as the ServiceAccount {sa}, which must exist in the namespace.
# The PodDisruptionBudget ({pdb}) lets one replica go at a time.
# Pushes need [registry] htpasswd (or allow_anonymous_push) in the config: without
# them a replica accepts writes from loopback only.
"#,
        pdb = input.pdb_api_version,
    )
}

/// The whole `berth registry manifests` text: the header and the four objects as YAML
/// documents.
pub fn manifests(input: &RegistryInput) -> Result<String, String> {
    let r = render(input)?;
    let docs = [
        serde_json::to_value(&r.secret),
        serde_json::to_value(&r.deployment),
        serde_json::to_value(&r.service),
        Ok(r.pdb),
    ]
    .into_iter()
    .map(|v| v.map(|v| crate::yaml::to_yaml(&v)))
    .collect::<Result<Vec<_>, _>>()
    .map_err(|e| format!("serialize the registry's objects: {e}"))?;
    Ok(format!("{}{}", header(input), docs.join("---\n")))
}

/// `berth registry deploy --k8s`: the namespace, berth's pull Secret from `creds` (when
/// given) and ServiceAccount ([`crate::pull::ensure_for`]; `input.identity`'s pull
/// secrets kept first, its service account replaced by berth's), the PodDisruptionBudget
/// in the apiVersion the server's version calls for, every object checked against the
/// server before the first is applied under berth's field manager; then waits until the
/// Deployment's controller has made the replicas' pods, each carrying that identity, and
/// returns them. (Pods are not waited to run: that is the cluster's scheduling.)
pub async fn deploy(
    kube: &crate::Kube,
    input: &RegistryInput,
    creds: Option<&crate::pull::PullCredentials>,
    timeout: std::time::Duration,
) -> Result<Vec<Pod>, KubeError> {
    let bad = |message: String| KubeError::Rollout {
        service: input.name.clone(),
        detail: message,
    };
    let mut input = input.clone();
    input.namespace = None;
    input.pdb_api_version = kube
        .server
        .api_version_for("PodDisruptionBudget")?
        .to_owned();
    validate(&input).map_err(bad)?;
    kube.ensure_namespace().await?;
    input.identity = crate::pull::ensure_for(kube, creds, &input.identity).await?;
    let r = render(&input).map_err(bad)?;
    kube.check(&[&r.secret])?;
    kube.check(&[&r.deployment])?;
    kube.check(&[&r.service])?;
    kube.server.check(&r.pdb)?;
    kube.apply(&r.secret).await?;
    kube.apply(&r.deployment).await?;
    kube.apply(&r.service).await?;
    kube.apply_value(&r.pdb, "poddisruptionbudgets").await?;
    crate::rollout::wait_for_pods(
        kube,
        "Deployment",
        &input.name,
        &selector(&input.name),
        input.replicas as usize,
        &input.identity,
        timeout,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input() -> RegistryInput {
        RegistryInput {
            name: "berth-registry".into(),
            namespace: Some("infra".into()),
            image: "registry.internal:5000/berth:1".into(),
            replicas: 3,
            port: 5000,
            files: BTreeMap::from([(
                CONFIG_KEY.to_owned(),
                "[registry.storage]\nkind = \"s3\"\nbucket = \"b\"\n".to_owned(),
            )]),
            identity: PodIdentity {
                service_account: "berth".into(),
                pull_secrets: vec!["berth-pull".into()],
            },
            pdb_api_version: "policy/v1beta1".into(),
        }
    }

    #[test]
    fn replicas_read_the_secret_and_carry_the_identity() {
        let r = render(&input()).unwrap();
        let d = serde_json::to_value(&r.deployment).unwrap();
        assert_eq!(d["spec"]["replicas"], 3);
        assert_eq!(d["metadata"]["namespace"], "infra");
        let pod = &d["spec"]["template"]["spec"];
        assert_eq!(pod["serviceAccountName"], "berth");
        assert_eq!(pod["imagePullSecrets"][0]["name"], "berth-pull");
        assert_eq!(
            pod["volumes"][0]["secret"]["secretName"],
            "berth-registry-config"
        );
        let args = pod["containers"][0]["args"].to_string();
        assert!(
            args.contains("--config=/etc/berth/registry/config.toml"),
            "{args}"
        );
        assert_eq!(r.pdb["apiVersion"], "policy/v1beta1");
        assert_eq!(r.pdb["kind"], "PodDisruptionBudget");
        assert_eq!(r.pdb["spec"]["maxUnavailable"], 1);
        // Other content, another hash on the template.
        let mut other = input();
        other
            .files
            .insert("credentials".into(), "[default]\n".into());
        let h = |r: &RegistryObjects| {
            serde_json::to_value(&r.deployment).unwrap()["spec"]["template"]["metadata"]
                ["annotations"][CONFIG_HASH_ANNOTATION]
                .clone()
        };
        assert_ne!(h(&r), h(&render(&other).unwrap()));
    }

    #[test]
    fn bad_input_names_the_flag() {
        for (f, e) in [
            (
                (|i: &mut RegistryInput| i.name = "Bad".into()) as fn(&mut RegistryInput),
                "--name",
            ),
            (|i| i.replicas = 0, "--replicas"),
            (|i| i.image = "a b".into(), "--image"),
            (|i| i.namespace = Some("N_S".into()), "--namespace"),
        ] {
            let mut i = input();
            f(&mut i);
            let err = render(&i).unwrap_err();
            assert!(err.starts_with(e), "{err}");
        }
    }
}
