//! A berth satellite in the cluster (`berth satellite manifests`, `berth satellite deploy
//! --k8s`): a Service on the satellite port and a StatefulSet of one privileged pod (it
//! runs build steps with runc and overlayfs) whose root is on a PersistentVolumeClaim
//! from the StatefulSet's claim template, so restarts and rescheduling keep the CA, the
//! cache and the enrolments. The CA may also come from the optional Secret `<name>-ca`,
//! mounted at `--ca-dir`. The pod comes from [`crate::pod::pod_template`].

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction, ObjectFieldSelector,
    PersistentVolumeClaim, PersistentVolumeClaimSpec, Probe, Secret, SecretKeySelector,
    SecretVolumeSource, SecurityContext, Service, TCPSocketAction, Volume, VolumeMount,
    VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::KubeError;
use crate::pod::{PodIdentity, PodParts, pod_template};

/// Where the satellite's root lives in its pod.
pub const POD_ROOT: &str = "/var/lib/berth";
/// Where the optional CA Secret is mounted.
pub const POD_CA_DIR: &str = "/etc/berth/ca";
/// The name of the port, on the container and the Service.
const PORT_NAME: &str = "satellite";
/// The ConfigMap key holding the configuration.
const CONFIG_KEY: &str = "satellite.toml";
/// The environment variable `berth satellite serve` reads an inline configuration from.
const CONFIG_ENV: &str = "BERTH_SATELLITE_CONFIG";
/// The pod template's annotation carrying the configuration's hash.
const CONFIG_HASH_ANNOTATION: &str = "berth.dev/satellite-config-sha256";

/// What a satellite is rendered from.
#[derive(Debug, Clone)]
pub struct SatelliteInput {
    /// The StatefulSet's, the Service's and (with `-ca`) the CA Secret's name.
    pub name: String,
    /// The image holding the berth binary and runc.
    pub image: String,
    /// The size of the root's claim (`50Gi`).
    pub storage: String,
    /// The satellite's port.
    pub port: u16,
    /// Service account and pull secrets of the pod.
    pub identity: PodIdentity,
    /// Names and addresses (each with an optional `:PORT`) clients outside the cluster
    /// reach it by; the first goes into tokens. The in-cluster names follow them.
    pub advertise: Vec<String>,
    /// How the Service exposes the satellite.
    pub exposure: Exposure,
    /// The satellite's configuration (TOML: `[network]`, `[registries]`, …), kept in the
    /// Secret `<name>-config` (proxy URLs may carry passwords) and given to `berth
    /// satellite serve` as BERTH_SATELLITE_CONFIG; a change rolls the pod.
    pub config: Option<String>,
}

/// The satellite Service's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Exposure {
    /// Inside the cluster only (`<name>.<namespace>.svc`).
    #[default]
    ClusterIp,
    /// On this port of every node (30000–32767 by default).
    NodePort(u16),
    /// On a load balancer's address, port `SatelliteInput::port`.
    LoadBalancer,
}

impl Exposure {
    /// The Service's `type`.
    fn service_type(self) -> &'static str {
        match self {
            Exposure::ClusterIp => "ClusterIP",
            Exposure::NodePort(_) => "NodePort",
            Exposure::LoadBalancer => "LoadBalancer",
        }
    }
}

/// The `--advertise` entries the satellite serves with: the given ones (a NodePort's
/// added to those without a port, as clients reach it there), then its in-cluster names.
fn advertised(input: &SatelliteInput) -> Vec<String> {
    let mut out: Vec<String> = input
        .advertise
        .iter()
        .map(|a| match (input.exposure, berth_pki::split_advertised(a)) {
            (Exposure::NodePort(port), Some((host, None))) => {
                match host.parse::<std::net::Ipv6Addr>() {
                    Ok(v6) => format!("[{v6}]:{port}"),
                    Err(_) => format!("{host}:{port}"),
                }
            }
            _ => a.trim().to_owned(),
        })
        .collect();
    let name = &input.name;
    out.extend([
        format!("{name}.$(POD_NAMESPACE).svc"),
        format!("{name}.$(POD_NAMESPACE).svc.cluster.local"),
        name.clone(),
    ]);
    out
}

/// A satellite's objects, in apply order.
#[derive(Debug, Clone)]
pub struct Satellite {
    /// The Secret holding its configuration, when it has one.
    pub config: Option<Secret>,
    /// The Service.
    pub service: Service,
    /// The StatefulSet.
    pub stateful_set: StatefulSet,
}

/// Checks `input`, naming the flag that is wrong.
pub fn validate(input: &SatelliteInput) -> Result<(), String> {
    let name = &input.name;
    // 52: the pod is `<name>-0` and the claim `root-<name>-0`, and the StatefulSet's
    // controller-revision label adds a hash to the name.
    let dns_label = (1..=52).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if !dns_label {
        return Err(format!(
            "--name {name:?}: Kubernetes names are 1 to 52 lowercase letters, digits and `-`, \
             starting and ending with a letter or digit"
        ));
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
    let digits = input
        .storage
        .trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &input.storage[digits.len()..];
    berth_pki::Advertised::parse(&input.advertise)?;
    if input.exposure == Exposure::NodePort(0) {
        return Err(
            "--node-port: give the node port clients reach (30000-32767 by default)".into(),
        );
    }
    if digits.is_empty()
        || !digits.chars().all(|c| c.is_ascii_digit())
        || !["", "Ki", "Mi", "Gi", "Ti", "Pi", "k", "M", "G", "T", "P"].contains(&unit)
    {
        return Err(format!(
            "--storage {:?}: give a size such as 50Gi or 500G",
            input.storage
        ));
    }
    Ok(())
}

fn labels(name: &str) -> BTreeMap<String, String> {
    crate::render::component_labels("berth-satellite", name)
}

/// The satellite's Service and StatefulSet.
pub fn render(input: &SatelliteInput) -> Result<Satellite, String> {
    validate(input)?;
    let name = &input.name;
    let port = i32::from(input.port);
    let meta = ObjectMeta {
        name: Some(name.clone()),
        labels: Some(labels(name)),
        ..Default::default()
    };
    let mut service = crate::render::one_port_service(meta.clone(), labels(name), PORT_NAME, port);
    if let Some(spec) = service.spec.as_mut() {
        if input.exposure != Exposure::ClusterIp {
            spec.type_ = Some(input.exposure.service_type().to_owned());
        }
        if let (Exposure::NodePort(node_port), Some(p)) = (
            input.exposure,
            spec.ports.as_mut().and_then(|p| p.first_mut()),
        ) {
            p.node_port = Some(i32::from(node_port));
        }
    }
    let named_port = || IntOrString::String(PORT_NAME.to_owned());
    let mut env = vec![EnvVar {
        name: "POD_NAMESPACE".to_owned(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: "metadata.namespace".to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }];
    let config = input.config.as_ref().map(|text| Secret {
        metadata: ObjectMeta {
            name: Some(format!("{name}-config")),
            labels: Some(labels(name)),
            ..Default::default()
        },
        type_: Some("Opaque".to_owned()),
        data: Some(BTreeMap::from([(
            CONFIG_KEY.to_owned(),
            ByteString(text.as_bytes().to_vec()),
        )])),
        ..Default::default()
    });
    if config.is_some() {
        env.push(EnvVar {
            name: CONFIG_ENV.to_owned(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: format!("{name}-config"),
                    key: CONFIG_KEY.to_owned(),
                    optional: Some(false),
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    let container = Container {
        name: PORT_NAME.to_owned(),
        image: Some(input.image.clone()),
        // Not the image's entrypoint: scripts/satellite-image's is `berth satellite serve`,
        // and a root option comes before the command.
        command: Some(vec!["berth".to_owned()]),
        args: Some(vec![
            format!("--root={POD_ROOT}"),
            "satellite".to_owned(),
            "serve".to_owned(),
            format!("--addr=0.0.0.0:{port}"),
            format!("--name={name}"),
            format!("--advertise={}", advertised(input).join(",")),
            format!("--ca-dir={POD_CA_DIR}"),
            "--drain-timeout=10m".to_owned(),
        ]),
        env: Some(env),
        ports: Some(vec![ContainerPort {
            name: Some(PORT_NAME.to_owned()),
            container_port: port,
            protocol: Some("TCP".to_owned()),
            ..Default::default()
        }]),
        security_context: Some(SecurityContext {
            privileged: Some(true),
            ..Default::default()
        }),
        readiness_probe: Some(Probe {
            http_get: Some(HTTPGetAction {
                path: Some("/healthz".to_owned()),
                port: named_port(),
                scheme: Some("HTTPS".to_owned()),
                ..Default::default()
            }),
            period_seconds: Some(10),
            ..Default::default()
        }),
        liveness_probe: Some(Probe {
            tcp_socket: Some(TCPSocketAction {
                port: named_port(),
                ..Default::default()
            }),
            period_seconds: Some(30),
            ..Default::default()
        }),
        volume_mounts: Some(vec![
            VolumeMount {
                name: "root".to_owned(),
                mount_path: POD_ROOT.to_owned(),
                ..Default::default()
            },
            VolumeMount {
                name: "ca".to_owned(),
                mount_path: POD_CA_DIR.to_owned(),
                read_only: Some(true),
                ..Default::default()
            },
        ]),
        ..Default::default()
    };
    let mut annotations = BTreeMap::from([
        ("prometheus.io/scrape".to_owned(), "true".to_owned()),
        ("prometheus.io/scheme".to_owned(), "https".to_owned()),
        ("prometheus.io/port".to_owned(), port.to_string()),
        ("prometheus.io/path".to_owned(), "/metrics".to_owned()),
    ]);
    if let Some(text) = &input.config {
        // An environment variable from a Secret is read when the container starts: a
        // new configuration must change the template for the StatefulSet to roll.
        use sha2::Digest;
        let hash = sha2::Sha256::digest(text.as_bytes());
        let hex: String = hash.iter().take(16).map(|b| format!("{b:02x}")).collect();
        annotations.insert(CONFIG_HASH_ANNOTATION.to_owned(), hex);
    }
    let template = pod_template(
        labels(name),
        annotations,
        PodParts {
            containers: vec![container],
            // Longer than --drain-timeout: running builds may finish after SIGTERM.
            termination_grace_period_seconds: Some(660),
            volumes: vec![Volume {
                name: "ca".to_owned(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(format!("{name}-ca")),
                    optional: Some(true),
                    default_mode: Some(0o400),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        },
        &input.identity,
    );
    let claim = PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some("root".to_owned()),
            ..Default::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".to_owned()]),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_owned(),
                    Quantity(input.storage.clone()),
                )])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let stateful_set = StatefulSet {
        metadata: meta,
        spec: Some(StatefulSetSpec {
            service_name: Some(name.clone()),
            replicas: Some(1),
            selector: LabelSelector {
                match_labels: Some(labels(name)),
                ..Default::default()
            },
            template,
            volume_claim_templates: Some(vec![claim]),
            ..Default::default()
        }),
        ..Default::default()
    };
    Ok(Satellite {
        config,
        service,
        stateful_set,
    })
}

/// The comment block `berth satellite manifests` starts with.
pub fn header(name: &str, identity: &PodIdentity) -> String {
    let sa = &identity.service_account;
    format!(
        r#"# berth satellite {name}: `kubectl apply -f` this file (or `berth satellite deploy --k8s`).
#
# Its root ({POD_ROOT}: CA, cache, tokens, enrolled clients) is on the PersistentVolumeClaim
# root-{name}-0, so restarts and rescheduling keep identity, cache and enrolments.
# The pod is privileged: it runs build steps with runc and overlayfs. It runs as the
# ServiceAccount {sa}, which must exist in the namespace; the termination grace period
# (660s) is longer than --drain-timeout, so running builds may finish after SIGTERM.
#
# Enroll a client:
#   kubectl exec {name}-0 -- berth --root {POD_ROOT} satellite token create
#   berth satellite add {name} --token <token>
# Tokens carry the first --advertise name, else {name}.<namespace>.svc (inside the
# cluster only). For clients outside the cluster: --service-type NodePort --node-port PORT
# --advertise NODE (a node's name or address), or --service-type LoadBalancer --advertise
# the balancer's name.
#
# Optional: keep the CA in the Secret {name}-ca, so that it outlives the volume (then a
# fresh volume still serves the CA every client trusts). After the first start:
#   kubectl exec {name}-0 -- cat {POD_ROOT}/satellite/pki/ca.crt > ca.crt
#   kubectl exec {name}-0 -- cat {POD_ROOT}/satellite/pki/ca.key > ca.key
#   kubectl create secret generic {name}-ca --from-file=ca.crt --from-file=ca.key
#   rm ca.key
# Without the Secret, the mount is empty and the CA in the root is used.
#
# /healthz and /metrics (Prometheus) answer on the same TLS port without a client
# certificate; /healthz says 503 while the satellite drains on SIGTERM.
"#
    )
}

/// The whole `berth satellite manifests` text: the header, then the Service and the
/// StatefulSet as YAML documents.
pub fn manifests(input: &SatelliteInput) -> Result<String, String> {
    let sat = render(input)?;
    let docs = sat
        .config
        .iter()
        .map(serde_json::to_value)
        .chain([
            serde_json::to_value(&sat.service),
            serde_json::to_value(&sat.stateful_set),
        ])
        .map(|v| v.map(|v| crate::yaml::to_yaml(&v)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("serialize the satellite's objects: {e}"))?;
    Ok(format!(
        "{}{}",
        header(&input.name, &input.identity),
        docs.join("---\n")
    ))
}

/// `berth satellite deploy --k8s`: makes the namespace, berth's pull Secret from `creds`
/// (when given; other registries' entries kept) and berth's ServiceAccount (with the pull
/// secrets it already lists; see [`crate::pull::ensure_for`]), applies the Service and
/// the StatefulSet under berth's field manager, and waits until the StatefulSet's
/// controller has made the pod `<name>-0`, which it returns. The pod is checked to carry
/// the ServiceAccount and every pull secret of the identity once. `input.identity` gives
/// the user's own pull secrets (kept first); its service account is replaced by berth's.
pub async fn deploy(
    kube: &crate::Kube,
    input: &SatelliteInput,
    creds: Option<&crate::pull::PullCredentials>,
    timeout: std::time::Duration,
) -> Result<k8s_openapi::api::core::v1::Pod, KubeError> {
    let bad = |message: String| KubeError::Rollout {
        service: input.name.clone(),
        detail: message,
    };
    validate(input).map_err(bad)?;
    kube.ensure_namespace().await?;
    let mut input = input.clone();
    input.identity = crate::pull::ensure_for(kube, creds, &input.identity).await?;
    let sat = render(&input).map_err(bad)?;
    if let Some(secret) = &sat.config {
        kube.check(&[secret])?;
        kube.apply(secret).await?;
    }
    kube.check(&[&sat.service])?;
    kube.check(&[&sat.stateful_set])?;
    kube.apply(&sat.service).await?;
    kube.apply(&sat.stateful_set).await?;
    let pod_name = format!("{}-0", input.name);
    let pods = crate::rollout::wait_for_pods(
        kube,
        "StatefulSet",
        &input.name,
        &format!("statefulset.kubernetes.io/pod-name={pod_name}"),
        1,
        &input.identity,
        timeout,
    )
    .await?;
    Ok(pods.into_iter().next().expect("one pod"))
}

/// What the satellite's pod says about enrolling a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enrollment {
    /// The token its first start printed (valid 24 h, once).
    Token(String),
    /// Its container is not running yet: why (phase, waiting reason, no node).
    NotRunning(String),
    /// It runs, but its log holds no first-start token: the root was there before (a
    /// restart on the same claim, or the token scrolled away).
    NoToken,
}

/// The token in `berth satellite serve`'s first-start text: the word after
/// `berth satellite add <name> --token`.
pub fn token_in_log(log: &str, name: &str) -> Option<String> {
    let prefix = format!("berth satellite add {name} --token ");
    log.lines().find_map(|l| {
        let rest = l.trim().strip_prefix(&prefix)?;
        rest.split_whitespace().next().map(str::to_owned)
    })
}

/// Reads the first-start token of satellite `name` from its pod's log (`<name>-0`,
/// container `satellite`), through the API server (which asks the node's kubelet).
pub async fn first_start_token(kube: &crate::Kube, name: &str) -> Result<Enrollment, KubeError> {
    use k8s_openapi::api::core::v1::Pod;
    let pod_name = format!("{name}-0");
    let Some(pod) = kube
        .api::<Pod>()
        .get_opt(&pod_name)
        .await
        .map_err(|e| KubeError::api(format!("get pod {pod_name}"), e))?
    else {
        return Ok(Enrollment::NotRunning(format!(
            "there is no pod {pod_name} (yet)"
        )));
    };
    let status = pod.status.clone().unwrap_or_default();
    let running = status
        .container_statuses
        .iter()
        .flatten()
        .any(|c| c.name == PORT_NAME && c.state.as_ref().is_some_and(|s| s.running.is_some()));
    if !running {
        let phase = status.phase.as_deref().unwrap_or("Unknown");
        let mut why = format!("pod {pod_name} is {phase}");
        if pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_ref())
            .is_none()
        {
            why.push_str(", not scheduled to a node");
        }
        for c in status.container_statuses.iter().flatten() {
            if let Some(w) = c.state.as_ref().and_then(|s| s.waiting.as_ref()) {
                why.push_str(&format!(
                    ", container {}: {} {}",
                    c.name,
                    w.reason.as_deref().unwrap_or(""),
                    w.message.as_deref().unwrap_or("")
                ));
            }
        }
        return Ok(Enrollment::NotRunning(why.trim_end().to_owned()));
    }
    let log = kube
        .api::<Pod>()
        .logs(
            &pod_name,
            &kube::api::LogParams {
                container: Some(PORT_NAME.to_owned()),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| KubeError::api(format!("read the log of pod {pod_name}"), e))?;
    Ok(match token_in_log(&log, name) {
        Some(t) => Enrollment::Token(t),
        None => Enrollment::NoToken,
    })
}

/// Whether the satellite's pod is Ready: its readiness probe (`/healthz`) passes, so its
/// Service sends connections to it.
pub async fn pod_ready(kube: &crate::Kube, name: &str) -> Result<bool, KubeError> {
    use k8s_openapi::api::core::v1::Pod;
    let pod_name = format!("{name}-0");
    let pod = kube
        .api::<Pod>()
        .get_opt(&pod_name)
        .await
        .map_err(|e| KubeError::api(format!("get pod {pod_name}"), e))?;
    Ok(pod
        .and_then(|p| p.status)
        .and_then(|s| s.conditions)
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// How to enroll a client with satellite `name` in namespace `ns` by hand.
pub fn enroll_instructions(name: &str, ns: &str) -> String {
    format!(
        "enroll a client with satellite {name} (namespace {ns}):\n  \
         token: its first start prints one: kubectl -n {ns} logs {name}-0 -c {PORT_NAME} | grep 'satellite add'\n  \
         or make one: kubectl -n {ns} exec {name}-0 -c {PORT_NAME} -- berth --root {POD_ROOT} satellite token create\n  \
         then, where {name}.{ns}.svc resolves (inside the cluster): berth satellite add {name} --token <token>\n  \
         from outside the cluster, the token's address must reach the Service: deploy with --service-type \
         NodePort --node-port PORT --advertise NODE (or LoadBalancer and its name)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input() -> SatelliteInput {
        SatelliteInput {
            name: "builder".into(),
            image: "registry.internal:5000/berth:1".into(),
            storage: "80Gi".into(),
            port: 8372,
            identity: PodIdentity {
                service_account: "berth".into(),
                pull_secrets: vec!["berth-pull".into()],
            },
            advertise: vec![],
            exposure: Exposure::ClusterIp,
            config: None,
        }
    }

    fn args(s: &Satellite) -> Vec<String> {
        let pod = s.stateful_set.spec.clone().unwrap().template.spec.unwrap();
        pod.containers[0].args.clone().unwrap()
    }

    #[test]
    fn a_configuration_is_a_secret_whose_change_rolls_the_pod() {
        let mut i = input();
        let plain = render(&i).unwrap();
        assert!(plain.config.is_none());
        let pod = plain.stateful_set.spec.unwrap().template;
        let env = pod.spec.unwrap().containers[0].env.clone().unwrap();
        assert!(env.iter().all(|e| e.name != "BERTH_SATELLITE_CONFIG"));
        let hash = |s: &Satellite| {
            s.stateful_set
                .spec
                .clone()
                .unwrap()
                .template
                .metadata
                .unwrap()
                .annotations
                .unwrap()[CONFIG_HASH_ANNOTATION]
                .clone()
        };
        i.config = Some("[registries.\"10.0.0.1:5000\"]\nhttp = true\n".into());
        let a = render(&i).unwrap();
        let secret = a.config.clone().unwrap();
        assert_eq!(secret.metadata.name.as_deref(), Some("builder-config"));
        assert_eq!(
            secret.data.unwrap()["satellite.toml"].0,
            i.config.clone().unwrap().into_bytes()
        );
        let env = a
            .stateful_set
            .spec
            .clone()
            .unwrap()
            .template
            .spec
            .unwrap()
            .containers[0]
            .env
            .clone()
            .unwrap();
        let from = env
            .iter()
            .find(|e| e.name == "BERTH_SATELLITE_CONFIG")
            .and_then(|e| e.value_from.clone())
            .and_then(|v| v.secret_key_ref)
            .unwrap();
        assert_eq!(
            (from.name.as_str(), from.key.as_str()),
            ("builder-config", "satellite.toml")
        );
        i.config = Some("[registries.\"10.0.0.1:5000\"]\nhttp = false\n".into());
        assert_ne!(hash(&a), hash(&render(&i).unwrap()));
        assert!(manifests(&i).unwrap().contains("name: builder-config"));
    }

    #[test]
    fn a_node_port_goes_into_the_service_and_the_advertised_names() {
        let mut i = input();
        let s = render(&i).unwrap();
        let spec = s.service.spec.clone().unwrap();
        assert_eq!(spec.type_, None);
        assert!(args(&s).contains(
            &"--advertise=builder.$(POD_NAMESPACE).svc,builder.$(POD_NAMESPACE).svc.cluster.local,builder"
                .to_owned()
        ));
        i.exposure = Exposure::NodePort(30372);
        i.advertise = vec![
            "build.example.com".into(),
            "10.0.0.7:31000".into(),
            " fd00::7".into(),
        ];
        let s = render(&i).unwrap();
        let spec = s.service.spec.clone().unwrap();
        assert_eq!(spec.type_.as_deref(), Some("NodePort"));
        let port = &spec.ports.unwrap()[0];
        assert_eq!((port.port, port.node_port), (8372, Some(30372)));
        let advertise = args(&s)
            .into_iter()
            .find_map(|a| a.strip_prefix("--advertise=").map(str::to_owned))
            .unwrap();
        assert!(
            advertise.starts_with("build.example.com:30372,10.0.0.7:31000,[fd00::7]:30372,builder.$(POD_NAMESPACE).svc,"),
            "{advertise}"
        );
        i.exposure = Exposure::LoadBalancer;
        let s = render(&i).unwrap();
        assert_eq!(
            s.service.spec.clone().unwrap().type_.as_deref(),
            Some("LoadBalancer")
        );
        assert!(
            args(&s)
                .iter()
                .any(|a| a.starts_with("--advertise=build.example.com,"))
        );
    }

    #[test]
    fn the_pod_carries_identity_volumes_and_claim() {
        let s = render(&input()).unwrap();
        let spec = s.stateful_set.spec.unwrap();
        let pod = spec.template.spec.unwrap();
        assert_eq!(pod.service_account_name.as_deref(), Some("berth"));
        assert_eq!(
            pod.containers[0].command.as_deref(),
            Some(&["berth".to_owned()][..])
        );
        assert_eq!(pod.image_pull_secrets.unwrap()[0].name, "berth-pull");
        assert_eq!(
            pod.volumes.unwrap()[0]
                .secret
                .as_ref()
                .unwrap()
                .secret_name
                .as_deref(),
            Some("builder-ca")
        );
        let claim = &spec.volume_claim_templates.unwrap()[0];
        assert_eq!(
            claim
                .spec
                .as_ref()
                .unwrap()
                .resources
                .as_ref()
                .unwrap()
                .requests
                .as_ref()
                .unwrap()["storage"]
                .0,
            "80Gi"
        );
    }

    #[test]
    fn the_token_is_read_from_the_first_start_text() {
        let log = "berth satellite builder listening on 0.0.0.0:8372 (root /var/lib/berth, tokens name builder.ns.svc:8372)\n\
                   first start: enroll a client with\n  berth satellite add builder --token berth-0123abcd.00112233445566778899aabbccddeeff@builder.ns.svc:8372#sha256:ab\n\
                   (valid 24 h, once; more with `berth satellite token create`)\n";
        assert_eq!(
            token_in_log(log, "builder").as_deref(),
            Some("berth-0123abcd.00112233445566778899aabbccddeeff@builder.ns.svc:8372#sha256:ab")
        );
        assert_eq!(token_in_log(log, "other"), None);
        assert_eq!(token_in_log("listening\n", "builder"), None);
    }

    #[test]
    fn bad_input_names_the_flag() {
        for (f, e) in [
            (
                (|i: &mut SatelliteInput| i.name = "Bad_Name".into()) as fn(&mut SatelliteInput),
                "--name",
            ),
            (|i| i.image = "a b".into(), "--image"),
            (|i| i.storage = "lots".into(), "--storage"),
            (|i| i.storage = "5Xi".into(), "--storage"),
            (|i| i.advertise = vec!["a b".into()], "--advertise"),
            (|i| i.advertise = vec!["x:0".into()], "--advertise"),
            (|i| i.exposure = Exposure::NodePort(0), "--node-port"),
        ] {
            let mut i = input();
            f(&mut i);
            let err = render(&i).unwrap_err();
            assert!(err.starts_with(e), "{err}");
        }
    }
}
