//! `[deploy]` services rendered into Kubernetes objects: a Deployment (its pods through
//! [`crate::pod`]), a Service for its ports, a ConfigMap for its environment and a Secret
//! for its secrets. ConfigMap and Secret names carry a hash of their content, so a new
//! version never changes what an older ReplicaSet's pods read, and a rollback gets the
//! environment it had.

use std::collections::BTreeMap;

use berth_deploy::config::{Check, Service};
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapEnvSource, Container, ContainerPort, EnvFromSource, ExecAction,
    HTTPGetAction, Probe, Secret, SecretEnvSource, Service as KService, ServicePort, ServiceSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use sha2::{Digest, Sha256};

use crate::config::K8sConfig;
use crate::pod::{PodIdentity, PodParts, pod_template};

/// The label every object of a service carries; Deployments select on it.
pub const NAME_LABEL: &str = "app.kubernetes.io/name";
/// `managed-by: berth` on every object.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// The version deployed, on the Deployment and its pod template.
pub const VERSION_ANNOTATION: &str = "berth.dev/version";

/// One service's objects, in apply order.
#[derive(Debug, Clone)]
pub struct Rendered {
    /// The service's name (also the Deployment's and Service's).
    pub service: String,
    /// Its environment (absent when it has none).
    pub config_map: Option<ConfigMap>,
    /// Its secrets (absent when it has none).
    pub secret: Option<Secret>,
    /// The Deployment.
    pub deployment: Deployment,
    /// The Service (absent when it publishes no port).
    pub kservice: Option<KService>,
}

/// What [`render`] needs beyond the service.
pub struct RenderInput<'a> {
    /// The service.
    pub service: &'a Service,
    /// The pinned image (`registry/repo@sha256:…`).
    pub image: &'a str,
    /// The version deployed.
    pub version: &'a str,
    /// The secrets' values, read on this machine.
    pub secrets: &'a BTreeMap<String, String>,
    /// The `[k8s]` table.
    pub config: &'a K8sConfig,
    /// Service account and pull secrets.
    pub identity: &'a PodIdentity,
}

fn labels(service: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (NAME_LABEL.to_owned(), service.to_owned()),
        (MANAGED_BY_LABEL.to_owned(), "berth".to_owned()),
    ])
}

/// The labels of one of berth's own components (`berth-registry`, `berth-satellite`)
/// named `name`: what its Service selects and its pods carry.
pub(crate) fn component_labels(component: &str, name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), component.to_owned()),
        ("app.kubernetes.io/instance".to_owned(), name.to_owned()),
    ])
}

/// A Service of one TCP port `port` named `port_name`, sent to the pods' port of that
/// name, selecting `selector`.
pub(crate) fn one_port_service(
    metadata: ObjectMeta,
    selector: BTreeMap<String, String>,
    port_name: &str,
    port: i32,
) -> KService {
    KService {
        metadata,
        spec: Some(ServiceSpec {
            selector: Some(selector),
            ports: Some(vec![ServicePort {
                name: Some(port_name.to_owned()),
                port,
                target_port: Some(IntOrString::String(port_name.to_owned())),
                protocol: Some("TCP".to_owned()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn content_hash<'a>(items: impl Iterator<Item = (&'a String, &'a [u8])>) -> String {
    let mut h = Sha256::new();
    for (k, v) in items {
        h.update((k.len() as u64).to_be_bytes());
        h.update(k.as_bytes());
        h.update((v.len() as u64).to_be_bytes());
        h.update(v);
    }
    h.finalize()
        .iter()
        .take(5)
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn meta(name: String, service: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        labels: Some(labels(service)),
        ..Default::default()
    }
}

fn seconds(d: std::time::Duration) -> i32 {
    d.as_secs_f64().ceil().clamp(1.0, i32::MAX as f64) as i32
}

/// The readiness probe for a service's health check (none for `Running`).
fn probe(svc: &Service) -> Option<Probe> {
    let h = &svc.health;
    let mut p = Probe {
        period_seconds: Some(seconds(h.interval)),
        timeout_seconds: Some(seconds(h.timeout)),
        failure_threshold: Some(h.retries.clamp(1, i32::MAX as u32) as i32),
        ..Default::default()
    };
    match &h.check {
        Check::Http { path, port } => {
            p.http_get = Some(HTTPGetAction {
                path: Some(path.clone()),
                port: IntOrString::Int(i32::from(*port)),
                ..Default::default()
            })
        }
        Check::Command(cmd) => {
            p.exec = Some(ExecAction {
                command: Some(cmd.clone()),
            })
        }
        Check::Running => return None,
    }
    Some(p)
}

/// Renders one service. Volumes are refused (hosts only for now).
pub fn render(input: &RenderInput<'_>) -> Result<Rendered, String> {
    let svc = input.service;
    let name = &svc.name;
    if !svc.volumes.is_empty() {
        return Err(format!(
            "deploy.services.{name}.volumes: volumes are not deployed to Kubernetes yet; \
             remove them or deploy this service to hosts"
        ));
    }
    if !crate::config::valid_label(name) {
        return Err(format!(
            "deploy.services.{name}: {name:?} is not a Kubernetes object name \
             (lower-case letters, digits and `-` only)"
        ));
    }
    let k = input.config.services.get(name).cloned().unwrap_or_default();
    let mut env_from = Vec::new();
    let config_map = (!svc.env.is_empty()).then(|| {
        let hash = content_hash(svc.env.iter().map(|(k, v)| (k, v.as_bytes())));
        let cm_name = format!("{name}-env-{hash}");
        env_from.push(EnvFromSource {
            config_map_ref: Some(ConfigMapEnvSource {
                name: cm_name.clone(),
                optional: None,
            }),
            ..Default::default()
        });
        ConfigMap {
            metadata: meta(cm_name, name),
            data: Some(svc.env.clone()),
            ..Default::default()
        }
    });
    let secret = (!input.secrets.is_empty()).then(|| {
        let hash = content_hash(input.secrets.iter().map(|(k, v)| (k, v.as_bytes())));
        let s_name = format!("{name}-secrets-{hash}");
        env_from.push(EnvFromSource {
            secret_ref: Some(SecretEnvSource {
                name: s_name.clone(),
                optional: None,
            }),
            ..Default::default()
        });
        Secret {
            metadata: meta(s_name, name),
            type_: Some("Opaque".into()),
            data: Some(
                input
                    .secrets
                    .iter()
                    .map(|(k, v)| (k.clone(), ByteString(v.as_bytes().to_vec())))
                    .collect(),
            ),
            ..Default::default()
        }
    });
    let container = Container {
        name: name.clone(),
        image: Some(input.image.to_owned()),
        args: svc.command.clone(),
        env_from: (!env_from.is_empty()).then_some(env_from),
        ports: (!svc.ports.is_empty()).then(|| {
            svc.ports
                .iter()
                .map(|p| ContainerPort {
                    container_port: i32::from(p.container),
                    ..Default::default()
                })
                .collect()
        }),
        readiness_probe: probe(svc),
        ..Default::default()
    };
    let annotations = BTreeMap::from([(VERSION_ANNOTATION.to_owned(), input.version.to_owned())]);
    let template = pod_template(
        labels(name),
        annotations.clone(),
        PodParts {
            containers: vec![container],
            image_pull_secrets: input.config.image_pull_secrets.clone(),
            termination_grace_period_seconds: Some(svc.stop_timeout.as_secs() as i64),
            host_users: k.host_users,
            ..Default::default()
        },
        input.identity,
    );
    let mut dmeta = meta(name.clone(), name);
    dmeta.annotations = Some(annotations);
    let deployment = Deployment {
        metadata: dmeta,
        spec: Some(DeploymentSpec {
            replicas: Some(k.replicas.unwrap_or(1)),
            revision_history_limit: Some(k.revision_history_limit.unwrap_or(10)),
            selector: LabelSelector {
                match_labels: Some(BTreeMap::from([(NAME_LABEL.to_owned(), name.clone())])),
                ..Default::default()
            },
            template,
            ..Default::default()
        }),
        ..Default::default()
    };
    let kservice = (!svc.ports.is_empty()).then(|| KService {
        metadata: meta(name.clone(), name),
        spec: Some(ServiceSpec {
            selector: Some(BTreeMap::from([(NAME_LABEL.to_owned(), name.clone())])),
            ports: Some(
                svc.ports
                    .iter()
                    .map(|p| ServicePort {
                        name: Some(format!("p{}", p.host)),
                        port: i32::from(p.host),
                        target_port: Some(IntOrString::Int(i32::from(p.container))),
                        protocol: Some("TCP".into()),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }),
        ..Default::default()
    });
    Ok(Rendered {
        service: name.clone(),
        config_map,
        secret,
        deployment,
        kservice,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn file() -> berth_deploy::DeployFile {
        berth_deploy::DeployFile::parse(
            "[deploy.registry]\naddress = \"r:5000\"\n[deploy.roles.web]\nhosts = [\"h\"]\n\
             [deploy.services.web]\nimage = \"web:v1\"\nroles = [\"web\"]\nports = [\"8080:80\"]\n\
             env = { A = \"1\" }\nhealth = { path = \"/up\" }\n",
            Path::new("berth.toml"),
        )
        .unwrap()
    }

    fn id() -> PodIdentity {
        PodIdentity {
            service_account: "berth".into(),
            pull_secrets: vec!["berth-pull".into()],
        }
    }

    #[test]
    fn a_service_renders_all_its_objects() {
        let f = file();
        let secrets = BTreeMap::from([("KEY".to_owned(), "s3cret".to_owned())]);
        let cfg = K8sConfig::default();
        let r = render(&RenderInput {
            service: &f.services["web"],
            image: "r:5000/web@sha256:00",
            version: "v1",
            secrets: &secrets,
            config: &cfg,
            identity: &id(),
        })
        .unwrap();
        let d = serde_json::to_value(&r.deployment).unwrap();
        let pod = &d["spec"]["template"]["spec"];
        assert_eq!(pod["serviceAccountName"], "berth");
        assert_eq!(pod["imagePullSecrets"][0]["name"], "berth-pull");
        assert_eq!(
            pod["containers"][0]["readinessProbe"]["httpGet"]["path"],
            "/up"
        );
        assert_eq!(
            pod["containers"][0]["readinessProbe"]["httpGet"]["port"],
            80
        );
        let cm = r.config_map.unwrap();
        assert!(cm.metadata.name.unwrap().starts_with("web-env-"));
        let s = serde_json::to_value(r.kservice.unwrap()).unwrap();
        assert_eq!(s["spec"]["ports"][0]["port"], 8080);
        assert_eq!(s["spec"]["ports"][0]["targetPort"], 80);
        assert!(
            r.secret
                .unwrap()
                .metadata
                .name
                .unwrap()
                .starts_with("web-secrets-")
        );
    }

    #[test]
    fn a_change_of_environment_renames_the_configmap() {
        let f = file();
        let mut svc = f.services["web"].clone();
        let cfg = K8sConfig::default();
        let none = BTreeMap::new();
        let name = |svc: &Service| {
            render(&RenderInput {
                service: svc,
                image: "i",
                version: "v",
                secrets: &none,
                config: &cfg,
                identity: &id(),
            })
            .unwrap()
            .config_map
            .unwrap()
            .metadata
            .name
            .unwrap()
        };
        let a = name(&svc);
        svc.env.insert("A".into(), "2".into());
        assert_ne!(a, name(&svc));
    }
}
