//! berth-kube against a real control plane (etcd, kube-apiserver and
//! kube-controller-manager 1.20, tests/common/k8s.rs): apply and re-apply, conflicts,
//! pull secrets on the pods the controller-manager makes, credentials changing, the
//! user's pull secrets kept, a field too new for the server refused before sending,
//! rollout failures explained, rollback.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use berth_deploy::DeployFile;
use berth_kube::pull::PullCredentials;
use berth_kube::render::{RenderInput, Rendered, render};
use berth_kube::rollout;
use berth_kube::{K8sConfig, Kube, KubeError, KubeOptions};
use common::k8s::{ControlPlane, control_plane};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, ServiceAccount};
use kube::api::{ListParams, Patch, PatchParams, PostParams};

const FILE: &str = r#"
[deploy.registry]
address = "127.0.0.1:5000"
[deploy.roles.web]
hosts = ["h"]
[deploy.services.web]
image = "web:v1"
roles = ["web"]
command = ["httpd", "-f", "-p", "80"]
env = { GREETING = "hello" }
ports = ["8080:80"]
health = { path = "/" }
"#;

/// A fresh namespace name per test.
fn namespace(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "t{}-{tag}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

async fn connect(cp: &ControlPlane, ns: &str, force: bool) -> Kube {
    let kube = Kube::connect(&KubeOptions {
        kubeconfig: Some(cp.kubeconfig.clone()),
        context: None,
        namespace: Some(ns.to_owned()),
        force_conflicts: force,
        network: Default::default(),
    })
    .await
    .unwrap();
    kube.ensure_namespace().await.unwrap();
    kube
}

fn creds(password: &str) -> PullCredentials {
    PullCredentials {
        registry: "127.0.0.1:5000".into(),
        username: "deploy".into(),
        password: password.into(),
    }
}

/// Pull identity, then the rendered `web` service of FILE (plus `extra` TOML) with `image`.
async fn rendered(
    kube: &Kube,
    extra: &str,
    image: &str,
    version: &str,
    creds: Option<&PullCredentials>,
) -> Vec<Rendered> {
    let text = format!("{FILE}{extra}");
    let file = DeployFile::parse(&text, Path::new("berth.toml")).unwrap();
    let config = K8sConfig::parse(&text, Path::new("berth.toml")).unwrap();
    let identity = berth_kube::pull::ensure(kube, &config, creds)
        .await
        .unwrap();
    let none = BTreeMap::new();
    vec![
        render(&RenderInput {
            service: &file.services["web"],
            image,
            version,
            secrets: &none,
            config: &config,
            identity: &identity,
        })
        .unwrap(),
    ]
}

const IMAGE_A: &str =
    "127.0.0.1:5000/web@sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const IMAGE_B: &str =
    "127.0.0.1:5000/web@sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

fn quiet(_: &str) {}

/// Polls `f` until it gives something; the control plane's controllers work in their own
/// time, so there is no deadline short of a hang guard.
async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "gave up waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn pull_names(spec: &k8s_openapi::api::core::v1::PodSpec) -> Vec<String> {
    spec.image_pull_secrets
        .iter()
        .flatten()
        .map(|r| r.name.clone())
        .collect()
}

#[tokio::test]
async fn apply_then_reapply_changes_nothing() {
    let Some(cp) = control_plane() else { return };
    let ns = namespace("idem");
    let kube = connect(cp, &ns, false).await;
    assert_eq!(kube.server.minor, 20, "{}", kube.server.git_version);
    let objs = rendered(&kube, "", IMAGE_A, "v1", Some(&creds("pw"))).await;
    rollout::apply_all(&kube, &objs, &quiet).await.unwrap();
    let d1 = kube.api::<Deployment>().get("web").await.unwrap();
    let svc = kube
        .api::<k8s_openapi::api::core::v1::Service>()
        .get("web")
        .await
        .unwrap();
    assert_eq!(svc.spec.unwrap().ports.unwrap()[0].port, 8080);
    let cm_name = objs[0]
        .config_map
        .as_ref()
        .unwrap()
        .metadata
        .name
        .clone()
        .unwrap();
    let cm = kube.api::<ConfigMap>().get(&cm_name).await.unwrap();
    assert_eq!(cm.data.unwrap()["GREETING"], "hello");
    // Managed by the one field manager.
    let managers: Vec<String> = d1
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|m| m.operation.as_deref() == Some("Apply"))
        .filter_map(|m| m.manager.clone())
        .collect();
    assert_eq!(managers, ["berth"]);

    // The controller-manager writes the Deployment's status meanwhile: the objects
    // nothing else writes keep their resourceVersion, the Deployment its generation.
    let versions = || async {
        (
            kube.api::<ConfigMap>()
                .get(&cm_name)
                .await
                .unwrap()
                .metadata
                .resource_version,
            kube.api::<k8s_openapi::api::core::v1::Service>()
                .get("web")
                .await
                .unwrap()
                .metadata
                .resource_version,
            kube.api::<Secret>()
                .get("berth-pull")
                .await
                .unwrap()
                .metadata
                .resource_version,
            kube.api::<ServiceAccount>()
                .get("berth")
                .await
                .unwrap()
                .metadata
                .resource_version,
        )
    };
    let before = versions().await;
    let objs = rendered(&kube, "", IMAGE_A, "v1", Some(&creds("pw"))).await;
    rollout::apply_all(&kube, &objs, &quiet).await.unwrap();
    let d2 = kube.api::<Deployment>().get("web").await.unwrap();
    assert_eq!(d1.metadata.generation, d2.metadata.generation);
    assert_eq!(before, versions().await);
}

#[tokio::test]
async fn a_conflict_names_manager_and_field_and_force_takes_over() {
    let Some(cp) = control_plane() else { return };
    let ns = namespace("conflict");
    let kube = connect(cp, &ns, false).await;
    let objs = rendered(&kube, "", IMAGE_A, "v1", None).await;
    rollout::apply_all(&kube, &objs, &quiet).await.unwrap();
    // Someone scales it with kubectl's manager.
    let patch = serde_json::json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web"}, "spec": {"replicas": 3}});
    kube.api::<Deployment>()
        .patch(
            "web",
            &PatchParams::apply("kubectl").force(),
            &Patch::Apply(&patch),
        )
        .await
        .unwrap();
    let err = rollout::apply_all(&kube, &objs, &quiet).await.unwrap_err();
    match &err {
        KubeError::Conflict {
            kind,
            name,
            conflicts,
        } => {
            assert_eq!((kind.as_str(), name.as_str()), ("Deployment", "web"));
            assert!(
                conflicts.contains(&("kubectl".to_owned(), ".spec.replicas".to_owned())),
                "{conflicts:?}"
            );
        }
        other => panic!("not a conflict: {other}"),
    }
    assert!(err.to_string().contains("--force-conflicts"), "{err}");
    let d = kube.api::<Deployment>().get("web").await.unwrap();
    assert_eq!(d.spec.unwrap().replicas, Some(3));

    let forced = connect(cp, &ns, true).await;
    rollout::apply_all(&forced, &objs, &quiet).await.unwrap();
    let d = kube.api::<Deployment>().get("web").await.unwrap();
    assert_eq!(d.spec.unwrap().replicas, Some(1));
}

#[tokio::test]
async fn pods_the_controller_manager_makes_carry_the_pull_secrets() {
    let Some(cp) = control_plane() else { return };
    let ns = namespace("pods");
    let kube = connect(cp, &ns, false).await;
    let extra = "[k8s]\nimage_pull_secrets = [\"regcred\"]\n[k8s.services.web]\nreplicas = 2\n";
    let objs = rendered(&kube, extra, IMAGE_A, "v1", Some(&creds("pw"))).await;
    rollout::apply_all(&kube, &objs, &quiet).await.unwrap();
    let pods = eventually("the controller-manager's pods", || async {
        let l = kube
            .api::<Pod>()
            .list(&ListParams::default())
            .await
            .unwrap();
        (l.items.len() == 2).then_some(l.items)
    })
    .await;
    for p in pods {
        let spec = p.spec.unwrap();
        assert_eq!(spec.service_account_name.as_deref(), Some("berth"));
        assert_eq!(pull_names(&spec), ["regcred", "berth-pull"]);
        assert_eq!(spec.containers[0].image.as_deref(), Some(IMAGE_A));
    }
    let sa = kube.api::<ServiceAccount>().get("berth").await.unwrap();
    assert_eq!(sa.automount_service_account_token, Some(false));
    let names: Vec<String> = sa
        .image_pull_secrets
        .unwrap()
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(names, ["berth-pull"]);
}

fn docker_config(s: &Secret) -> serde_json::Value {
    serde_json::from_slice(&s.data.as_ref().unwrap()[".dockerconfigjson"].0).unwrap()
}

/// The pods of `web`, once the controller has made `n` of them.
async fn web_pods(kube: &Kube, n: usize) -> Vec<Pod> {
    eventually("the controller-manager's pods", || async {
        let l = kube
            .api::<Pod>()
            .list(&ListParams::default().labels("app.kubernetes.io/name=web"))
            .await
            .unwrap();
        (l.items.len() == n).then_some(l.items)
    })
    .await
}

#[tokio::test]
async fn the_pull_secret_follows_the_credentials() {
    let Some(cp) = control_plane() else { return };
    let ns = namespace("creds");
    let kube = connect(cp, &ns, false).await;
    let extra = "[k8s]\nimage_pull_secrets = [\"regcred\"]\n[k8s.services.web]\nreplicas = 2\n";
    let objs = rendered(&kube, extra, IMAGE_A, "v1", Some(&creds("first"))).await;
    rollout::apply_all(&kube, &objs, &quiet).await.unwrap();
    let s = kube.api::<Secret>().get("berth-pull").await.unwrap();
    assert_eq!(s.type_.as_deref(), Some("kubernetes.io/dockerconfigjson"));
    assert_eq!(
        docker_config(&s)["auths"]["127.0.0.1:5000"]["password"],
        "first"
    );
    let before = web_pods(&kube, 2).await;
    let d1 = kube.api::<Deployment>().get("web").await.unwrap();

    // Deployed again with other credentials: the Secret changes, nothing else does.
    let objs = rendered(&kube, extra, IMAGE_A, "v1", Some(&creds("second"))).await;
    rollout::apply_all(&kube, &objs, &quiet).await.unwrap();
    let s2 = kube.api::<Secret>().get("berth-pull").await.unwrap();
    let cfg = docker_config(&s2);
    assert_eq!(cfg["auths"]["127.0.0.1:5000"]["password"], "second");
    assert_eq!(cfg["auths"].as_object().unwrap().len(), 1);
    assert_ne!(s.metadata.resource_version, s2.metadata.resource_version);
    let d2 = kube.api::<Deployment>().get("web").await.unwrap();
    assert_eq!(
        d1.metadata.generation, d2.metadata.generation,
        "no new rollout"
    );
    let tpl = d2.spec.unwrap().template.spec.unwrap();
    assert_eq!(pull_names(&tpl), ["regcred", "berth-pull"]);
    let after = web_pods(&kube, 2).await;
    let names = |ps: &[Pod]| {
        let mut v: Vec<String> = ps
            .iter()
            .map(|p| p.metadata.name.clone().unwrap())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(&before), names(&after), "the same pods");
    for p in after {
        assert_eq!(
            pull_names(p.spec.as_ref().unwrap()),
            ["regcred", "berth-pull"]
        );
    }
    let sa = kube.api::<ServiceAccount>().get("berth").await.unwrap();
    assert_eq!(sa.image_pull_secrets.unwrap().len(), 1);

    // Credentials for another registry (a satellite's image, say) join the Secret.
    berth_kube::pull::ensure(
        &kube,
        &K8sConfig::default(),
        Some(&PullCredentials {
            registry: "other.invalid:5000".into(),
            username: "sat".into(),
            password: "third".into(),
        }),
    )
    .await
    .unwrap();
    let cfg = docker_config(&kube.api::<Secret>().get("berth-pull").await.unwrap());
    assert_eq!(cfg["auths"]["127.0.0.1:5000"]["password"], "second");
    assert_eq!(cfg["auths"]["other.invalid:5000"]["password"], "third");
}

#[tokio::test]
async fn the_users_pull_secrets_are_kept() {
    let Some(cp) = control_plane() else { return };
    let ns = namespace("theirs");
    let kube = connect(cp, &ns, false).await;
    // The user's own ServiceAccount with their pull secret, made as kubectl create would.
    let theirs: ServiceAccount = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "shop"},
        "imagePullSecrets": [{"name": "theirs"}]
    }))
    .unwrap();
    kube.api::<ServiceAccount>()
        .create(&PostParams::default(), &theirs)
        .await
        .unwrap();
    let extra = "[k8s]\nservice_account = \"shop\"\n";
    let objs = rendered(&kube, extra, IMAGE_A, "v1", Some(&creds("pw"))).await;
    let sa = kube.api::<ServiceAccount>().get("shop").await.unwrap();
    let names: Vec<String> = sa
        .image_pull_secrets
        .unwrap()
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(names, ["theirs", "berth-pull"]);
    assert_eq!(sa.automount_service_account_token, None, "theirs untouched");
    // Twice: still each once.
    let objs2 = rendered(&kube, extra, IMAGE_A, "v1", Some(&creds("pw"))).await;
    let sa = kube.api::<ServiceAccount>().get("shop").await.unwrap();
    assert_eq!(sa.image_pull_secrets.unwrap().len(), 2);
    let spec = objs2[0]
        .deployment
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .clone()
        .unwrap();
    assert_eq!(pull_names(&spec), ["theirs", "berth-pull"]);
    assert_eq!(spec.service_account_name.as_deref(), Some("shop"));
    rollout::apply_all(&kube, &objs, &quiet).await.unwrap();
    let pod = eventually("a pod", || async {
        kube.api::<Pod>()
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .next()
    })
    .await;
    assert_eq!(pull_names(&pod.spec.unwrap()), ["theirs", "berth-pull"]);
}

#[tokio::test]
async fn a_service_account_that_is_not_there_is_an_error() {
    let Some(cp) = control_plane() else { return };
    let ns = namespace("nosa");
    let kube = connect(cp, &ns, false).await;
    let config =
        K8sConfig::parse("[k8s]\nservice_account = \"ghost\"\n", Path::new("b.toml")).unwrap();
    let e = berth_kube::pull::ensure(&kube, &config, None)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("ServiceAccount ghost does not exist"), "{e}");
}

#[tokio::test]
async fn a_field_too_new_for_the_server_is_refused_before_anything_is_sent() {
    let Some(cp) = control_plane() else { return };
    let ns = namespace("new");
    let kube = connect(cp, &ns, false).await;
    let extra = "[k8s.services.web]\nhost_users = false\n";
    let objs = rendered(&kube, extra, IMAGE_A, "v1", None).await;
    let err = rollout::apply_all(&kube, &objs, &quiet).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, KubeError::FieldTooNew { .. }), "{text}");
    assert!(text.contains("spec.template.spec.hostUsers"), "{text}");
    assert!(text.contains("1.25") && text.contains("v1.20.2"), "{text}");
    // Not even the ConfigMap, which comes first, went out.
    assert!(
        kube.api::<ConfigMap>()
            .list(&ListParams::default().labels("app.kubernetes.io/name=web"))
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert!(
        kube.api::<Deployment>()
            .get_opt("web")
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn a_rollout_that_cannot_finish_names_its_pods() {
    let Some(cp) = control_plane() else { return };
    let ns = namespace("wait");
    let kube = connect(cp, &ns, false).await;
    let objs = rendered(&kube, "", IMAGE_A, "v1", None).await;
    rollout::apply_all(&kube, &objs, &quiet).await.unwrap();
    // No scheduler or kubelet here: the pods stay Pending.
    eventually("a pod", || async {
        let l = kube
            .api::<Pod>()
            .list(&ListParams::default())
            .await
            .unwrap();
        (!l.items.is_empty()).then_some(())
    })
    .await;
    let lines = std::sync::Mutex::new(Vec::new());
    let err = rollout::wait(&kube, "web", Duration::from_secs(1), &|l: &str| {
        lines.lock().unwrap().push(l.to_owned())
    })
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("rollout of web failed"), "{err}");
    assert!(err.contains("pod web-") && err.contains("Pending"), "{err}");
    assert!(
        lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("0/1 available")),
        "{:?}",
        lines.lock().unwrap()
    );
}

async fn revision_of(kube: &Kube) -> Option<u64> {
    kube.api::<Deployment>()
        .get("web")
        .await
        .ok()?
        .metadata
        .annotations?
        .get(rollout::REVISION_ANNOTATION)?
        .parse()
        .ok()
}

#[tokio::test]
async fn rollback_reapplies_the_previous_revision() {
    let Some(cp) = control_plane() else { return };
    let ns = namespace("rollback");
    let kube = connect(cp, &ns, false).await;
    let objs = rendered(&kube, "", IMAGE_A, "v1", None).await;
    rollout::apply_all(&kube, &objs, &quiet).await.unwrap();
    eventually("revision 1", || async {
        (revision_of(&kube).await == Some(1)).then_some(())
    })
    .await;
    let e = rollout::rollback(&kube, "web", None)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("nothing to go back to"), "{e}");

    let objs = rendered(&kube, "", IMAGE_B, "v2", None).await;
    rollout::apply_all(&kube, &objs, &quiet).await.unwrap();
    eventually("revision 2", || async {
        (revision_of(&kube).await == Some(2)).then_some(())
    })
    .await;
    let hist = rollout::history(&kube, "web").await.unwrap();
    let versions: Vec<(u64, &str)> = hist
        .iter()
        .map(|(r, _)| (r.number, r.version.as_str()))
        .collect();
    assert_eq!(versions, [(2, "v2"), (1, "v1")]);

    let back = rollout::rollback(&kube, "web", None).await.unwrap();
    assert_eq!(
        (back.number, back.version.as_str(), back.image.as_str()),
        (1, "v1", IMAGE_A)
    );
    let d = kube.api::<Deployment>().get("web").await.unwrap();
    let tpl = d.spec.unwrap().template;
    assert_eq!(
        tpl.spec.as_ref().unwrap().containers[0].image.as_deref(),
        Some(IMAGE_A)
    );
    assert_eq!(
        tpl.metadata.unwrap().annotations.unwrap()["berth.dev/version"],
        "v1"
    );
    // The controller reuses revision 1's ReplicaSet, renumbered 3.
    eventually("revision 3", || async {
        (revision_of(&kube).await == Some(3)).then_some(())
    })
    .await;
    let rs = kube
        .api::<ReplicaSet>()
        .list(&ListParams::default())
        .await
        .unwrap();
    assert_eq!(rs.items.len(), 2, "no third ReplicaSet");
}

/// The `web` service of FILE with its environment and secret set to `tag`, `image`, and
/// `extra` TOML, rendered with the namespace's identity.
async fn rendered_with(
    kube: &Kube,
    extra: &str,
    image: &str,
    tag: &str,
    creds: Option<&PullCredentials>,
) -> Vec<Rendered> {
    let text = format!(
        "{}{extra}",
        FILE.replace("\"hello\"", &format!("\"{tag}\""))
    );
    let file = DeployFile::parse(&text, Path::new("berth.toml")).unwrap();
    let config = K8sConfig::parse(&text, Path::new("berth.toml")).unwrap();
    let identity = berth_kube::pull::ensure(kube, &config, creds)
        .await
        .unwrap();
    let secrets = BTreeMap::from([("TOKEN".to_owned(), format!("secret-{tag}"))]);
    vec![
        render(&RenderInput {
            service: &file.services["web"],
            image,
            version: tag,
            secrets: &secrets,
            config: &config,
            identity: &identity,
        })
        .unwrap(),
    ]
}

/// Applies, waits for the rollout (replicas 0: done once the controller saw it).
async fn deploy_and_wait(kube: &Kube, objs: &[Rendered]) {
    rollout::apply_all(kube, objs, &quiet).await.unwrap();
    rollout::wait(kube, "web", Duration::from_secs(120), &quiet)
        .await
        .unwrap();
}

async fn replica_sets(kube: &Kube) -> usize {
    kube.api::<ReplicaSet>()
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .len()
}

fn names_of(objs: &[Rendered]) -> (String, String) {
    (
        objs[0]
            .config_map
            .as_ref()
            .unwrap()
            .metadata
            .name
            .clone()
            .unwrap(),
        objs[0]
            .secret
            .as_ref()
            .unwrap()
            .metadata
            .name
            .clone()
            .unwrap(),
    )
}

async fn sorted_names<K>(kube: &Kube, prefix: &str) -> Vec<String>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned,
{
    let mut v: Vec<String> = kube
        .api::<K>()
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|o| o.meta().name.clone())
        .filter(|n| n.starts_with(prefix))
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn pruning_keeps_what_the_kept_revisions_name() {
    let Some(cp) = control_plane() else { return };
    let ns = namespace("prune");
    let kube = connect(cp, &ns, false).await;
    // replicas 0: a rollout completes without a scheduler, and the controller then
    // deletes ReplicaSets beyond the limit (it does only for complete rollouts).
    let extra = "[k8s.services.web]\nreplicas = 0\nrevision_history_limit = 1\n";
    // A ConfigMap of the user's whose name looks like berth's: not berth's, kept.
    let mine = ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some("web-env-mine".into()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/name".to_owned(),
                "web".to_owned(),
            )])),
            ..Default::default()
        },
        ..Default::default()
    };
    kube.api::<ConfigMap>()
        .create(&PostParams::default(), &mine)
        .await
        .unwrap();

    let v1 = rendered_with(&kube, extra, IMAGE_A, "v1", None).await;
    deploy_and_wait(&kube, &v1).await;
    assert!(
        berth_kube::prune::prune_service(&kube, "web")
            .await
            .unwrap()
            .is_empty()
    );
    let v2 = rendered_with(&kube, extra, IMAGE_B, "v2", None).await;
    deploy_and_wait(&kube, &v2).await;
    // Revision 1 is kept (limit 1): so are its objects.
    assert_eq!(replica_sets(&kube).await, 2);
    assert!(
        berth_kube::prune::prune_service(&kube, "web")
            .await
            .unwrap()
            .is_empty()
    );
    let v3 = rendered_with(&kube, extra, IMAGE_A, "v3", None).await;
    deploy_and_wait(&kube, &v3).await;
    eventually(
        "revision 1's ReplicaSet deleted by the controller",
        || async { (replica_sets(&kube).await == 2).then_some(()) },
    )
    .await;
    // The controller keeps one old ReplicaSet; which one is its choice (it sorts by
    // creation time, in whole seconds, then by name): v1's or v2's.
    let hist = rollout::history(&kube, "web").await.unwrap();
    let kept: Vec<&str> = hist.iter().map(|(r, _)| r.version.as_str()).collect();
    assert_eq!(kept.len(), 2, "{kept:?}");
    assert_eq!(kept[0], "v3");
    let (old_kept, old_gone) = if kept[1] == "v1" {
        (&v1, &v2)
    } else {
        (&v2, &v1)
    };
    let (cm_kept, s_kept) = names_of(old_kept);
    let (cm_gone, s_gone) = names_of(old_gone);
    let (cm3, s3) = names_of(&v3);
    let mut deleted = berth_kube::prune::prune_service(&kube, "web")
        .await
        .unwrap();
    deleted.sort();
    assert_eq!(
        deleted,
        [format!("configmap/{cm_gone}"), format!("secret/{s_gone}")]
    );
    let mut want = vec![cm_kept.clone(), cm3.clone(), "web-env-mine".to_owned()];
    want.sort();
    assert_eq!(sorted_names::<ConfigMap>(&kube, "web-").await, want);
    let mut want = vec![s_kept.clone(), s3.clone()];
    want.sort();
    assert_eq!(sorted_names::<Secret>(&kube, "web-").await, want);

    // What the kept revision needs is there: rolling back to it rolls out.
    let back = rollout::rollback(&kube, "web", None).await.unwrap();
    assert_eq!(back.version, kept[1]);
    rollout::wait(&kube, "web", Duration::from_secs(120), &quiet)
        .await
        .unwrap();
    eventually("v3's ReplicaSet kept, the old one current", || async {
        (replica_sets(&kube).await == 2).then_some(())
    })
    .await;
    // Now v3 is the kept old revision, the other the current one: nothing to delete.
    assert!(
        berth_kube::prune::prune_service(&kube, "web")
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(sorted_names::<ConfigMap>(&kube, "web-").await.len(), 3);
}

fn other_creds() -> PullCredentials {
    PullCredentials {
        registry: "other.example:443".into(),
        username: "o".into(),
        password: "q".into(),
    }
}

async fn pull_registries(kube: &Kube) -> Vec<String> {
    let s = kube.api::<Secret>().get("berth-pull").await.unwrap();
    berth_kube::pull::auths_of(&s).keys().cloned().collect()
}

#[tokio::test]
async fn pull_entries_go_when_no_kept_revision_pulls_from_their_registry() {
    let Some(cp) = control_plane() else { return };
    let ns = namespace("prunepull");
    let kube = connect(cp, &ns, false).await;
    let limit =
        |n: u32| format!("[k8s.services.web]\nreplicas = 0\nrevision_history_limit = {n}\n");
    // Credentials for two registries; the service pulls from 127.0.0.1:5000.
    berth_kube::pull::ensure(&kube, &K8sConfig::default(), Some(&other_creds()))
        .await
        .unwrap();
    let a = rendered_with(&kube, &limit(1), IMAGE_A, "v1", Some(&creds("pw"))).await;
    deploy_and_wait(&kube, &a).await;
    assert_eq!(
        pull_registries(&kube).await,
        ["127.0.0.1:5000", "other.example:443"]
    );
    let dropped = berth_kube::prune::prune_pull_secret(&kube).await.unwrap();
    assert_eq!(dropped, ["other.example:443"]);
    assert_eq!(pull_registries(&kube).await, ["127.0.0.1:5000"]);
    assert!(
        berth_kube::prune::prune_pull_secret(&kube)
            .await
            .unwrap()
            .is_empty()
    );

    // The service moves to the other registry: the old revision (kept for rollback)
    // still pulls from the first, so its entry stays.
    let image_other = IMAGE_B.replace("127.0.0.1:5000", "other.example:443");
    let b = rendered_with(&kube, &limit(1), &image_other, "v2", Some(&other_creds())).await;
    deploy_and_wait(&kube, &b).await;
    assert!(
        berth_kube::prune::prune_pull_secret(&kube)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        pull_registries(&kube).await,
        ["127.0.0.1:5000", "other.example:443"]
    );
    // No old revision kept: the first registry's entry goes.
    let b = rendered_with(&kube, &limit(0), &image_other, "v2", None).await;
    deploy_and_wait(&kube, &b).await;
    eventually("the old ReplicaSet deleted by the controller", || async {
        (replica_sets(&kube).await == 1).then_some(())
    })
    .await;
    let dropped = berth_kube::prune::prune_pull_secret(&kube).await.unwrap();
    assert_eq!(dropped, ["127.0.0.1:5000"]);
    assert_eq!(pull_registries(&kube).await, ["other.example:443"]);
    // The pods still name the Secret, and the ServiceAccount lists it once.
    let sa = kube.api::<ServiceAccount>().get("berth").await.unwrap();
    let names: Vec<String> = sa
        .image_pull_secrets
        .unwrap()
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(names, ["berth-pull"]);
}
