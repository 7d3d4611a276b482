//! One-off benchmark (issue 12): server-side apply of 50 rendered services, and a no-op
//! re-apply, by berth-kube against `kubectl apply --server-side` of the same objects, on
//! the test control plane. Ignored by default; run with
//! `cargo test -p berth-kube --test bench_apply -- --ignored --nocapture`.
//! Prints the times; asserts only that both sides applied everything.

mod common;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use berth_deploy::DeployFile;
use berth_kube::render::{RenderInput, render};
use berth_kube::{K8sConfig, Kube, KubeOptions, rollout};
use common::k8s::control_plane;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::ListParams;

const N: usize = 50;

#[tokio::test]
#[ignore = "benchmark: run by hand"]
async fn apply_50_services_against_kubectl() {
    let Some(cp) = control_plane() else { return };
    let mut text = String::from(
        "[deploy.registry]\naddress = \"127.0.0.1:5000\"\n[deploy.roles.web]\nhosts = [\"h\"]\n",
    );
    for i in 0..N {
        write!(
            text,
            "[deploy.services.svc{i}]\nimage = \"svc{i}:v1\"\nroles = [\"web\"]\n\
             env = {{ N = \"{i}\" }}\nports = [\"{}:80\"]\n",
            8000 + i
        )
        .unwrap();
    }
    let file = DeployFile::parse(&text, Path::new("berth.toml")).unwrap();
    let config = K8sConfig::default();
    let connect = |ns: String| async move {
        let k = Kube::connect(&KubeOptions {
            kubeconfig: Some(cp.kubeconfig.clone()),
            namespace: Some(ns),
            ..Default::default()
        })
        .await
        .unwrap();
        k.ensure_namespace().await.unwrap();
        k
    };
    let pid = std::process::id();
    let kb = connect(format!("bench-berth-{pid}")).await;
    let kk = connect(format!("bench-kubectl-{pid}")).await;
    let identity = berth_kube::pull::ensure(&kb, &config, None).await.unwrap();
    berth_kube::pull::ensure(&kk, &config, None).await.unwrap();
    let none = BTreeMap::new();
    let rendered: Vec<_> = file
        .services
        .values()
        .map(|s| {
            render(&RenderInput {
                service: s,
                image: "127.0.0.1:5000/x@sha256:0000000000000000000000000000000000000000000000000000000000000000",
                version: "v1",
                secrets: &none,
                config: &config,
                identity: &identity,
            })
            .unwrap()
        })
        .collect();
    let quiet = |_: &str| {};
    let t = Instant::now();
    rollout::apply_all(&kb, &rendered, &quiet).await.unwrap();
    let berth_first = t.elapsed();
    let t = Instant::now();
    rollout::apply_all(&kb, &rendered, &quiet).await.unwrap();
    let berth_again = t.elapsed();

    // The same objects for kubectl, as one List.
    let mut items = Vec::new();
    for r in &rendered {
        items.push(serde_json::to_value(r.config_map.as_ref().unwrap()).unwrap());
        items.push(serde_json::to_value(&r.deployment).unwrap());
        items.push(serde_json::to_value(r.kservice.as_ref().unwrap()).unwrap());
    }
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("list.json");
    std::fs::write(
        &list,
        serde_json::to_vec(
            &serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items}),
        )
        .unwrap(),
    )
    .unwrap();
    let kubectl = || {
        let t = Instant::now();
        let out = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&cp.kubeconfig)
            .args(["-n", &kk.namespace, "apply", "--server-side", "-f"])
            .arg(&list)
            .env("KUBECACHEDIR", dir.path().join("cache"))
            .env("HOME", dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        t.elapsed()
    };
    let kubectl_first = kubectl();
    let kubectl_again = kubectl();
    for k in [&kb, &kk] {
        let n = k
            .api::<Deployment>()
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len();
        assert_eq!(n, N, "{}", k.namespace);
    }
    eprintln!("apply of {N} services (ConfigMap + Deployment + Service each), 1.20 control plane:");
    eprintln!("  first apply: berth-kube {berth_first:?}, kubectl --server-side {kubectl_first:?}");
    eprintln!("  no-op apply: berth-kube {berth_again:?}, kubectl --server-side {kubectl_again:?}");
}
