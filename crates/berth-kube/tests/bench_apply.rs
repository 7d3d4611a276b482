//! Benchmark (issue 12): server-side apply of N rendered services (ConfigMap, Deployment,
//! Service each; N = 50), and a no-op re-apply, by berth-kube (the apply of `berth deploy
//! --k8s`: `rollout::apply_all`) against `kubectl apply --server-side` of the same objects
//! as one List, on the test control plane. Ignored by default; `bench/k8s.sh` runs it
//! (or `cargo test -p berth-kube --test bench_apply -- --ignored --nocapture`).
//! Env: BENCH_N (services, 50), BENCH_REPS (fresh namespaces per rep, 3; the order of
//! the two tools alternates), KUBECTL (the kubectl binary, `kubectl`).
//! Prints min and median per case and berth/kubectl; asserts only that both sides applied
//! everything.

mod common;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use berth_deploy::DeployFile;
use berth_kube::render::{RenderInput, render};
use berth_kube::{K8sConfig, Kube, KubeOptions, rollout};
use common::k8s::control_plane;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::ListParams;

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}={v:?} is not a number"))
        })
        .unwrap_or(default)
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn min_median(v: &[Duration]) -> (f64, f64) {
    let mut s: Vec<f64> = v.iter().copied().map(secs).collect();
    s.sort_by(f64::total_cmp);
    (s[0], s[s.len() / 2])
}

#[tokio::test]
#[ignore = "benchmark: run by hand"]
async fn apply_50_services_against_kubectl() {
    let Some(cp) = control_plane() else { return };
    let n = env_num("BENCH_N", 50);
    let reps = env_num("BENCH_REPS", 3).max(1);
    let kubectl_bin = std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into());
    let mut text = String::from(
        "[deploy.registry]\naddress = \"127.0.0.1:5000\"\n[deploy.roles.web]\nhosts = [\"h\"]\n",
    );
    for i in 0..n {
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
    let dir = tempfile::tempdir().unwrap();
    let version = Command::new(&kubectl_bin)
        .args(["version", "--client"])
        .output()
        .expect("run kubectl (set KUBECTL)");
    let version = String::from_utf8_lossy(&version.stdout);
    let version = version.lines().next().unwrap_or("").to_owned();
    let pid = std::process::id();
    let (mut b1, mut b2, mut k1, mut k2) = (vec![], vec![], vec![], vec![]);
    for rep in 0..reps {
        let kb = connect(format!("bench-berth-{pid}-{rep}")).await;
        let kk = connect(format!("bench-kubectl-{pid}-{rep}")).await;
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
        // The same objects for kubectl, as one List.
        let mut items = Vec::new();
        for r in &rendered {
            items.push(serde_json::to_value(r.config_map.as_ref().unwrap()).unwrap());
            items.push(serde_json::to_value(&r.deployment).unwrap());
            items.push(serde_json::to_value(r.kservice.as_ref().unwrap()).unwrap());
        }
        let list = dir.path().join(format!("list-{rep}.json"));
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
            let out = Command::new(&kubectl_bin)
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
        let quiet = |_: &str| {};
        let berth = || async {
            let t = Instant::now();
            rollout::apply_all(&kb, &rendered, &quiet).await.unwrap();
            t.elapsed()
        };
        if rep % 2 == 0 {
            b1.push(berth().await);
            b2.push(berth().await);
            k1.push(kubectl());
            k2.push(kubectl());
        } else {
            k1.push(kubectl());
            k2.push(kubectl());
            b1.push(berth().await);
            b2.push(berth().await);
        }
        for k in [&kb, &kk] {
            let got = k
                .api::<Deployment>()
                .list(&ListParams::default())
                .await
                .unwrap()
                .items
                .len();
            assert_eq!(got, n, "{}", k.namespace);
        }
        // Untimed: the namespaces go (their Services' addresses with them).
        let namespaces: kube::Api<k8s_openapi::api::core::v1::Namespace> =
            kube::Api::all(kb.client.clone());
        for k in [&kb, &kk] {
            namespaces
                .delete(&k.namespace, &Default::default())
                .await
                .unwrap();
        }
    }
    println!(
        "apply of {n} services (ConfigMap + Deployment + Service each), Kubernetes 1.20 \
         control plane, {reps} reps, kubectl: {version}"
    );
    println!(
        "{:<12} {:>14} {:>14} {:>14} {:>14} {:>8}",
        "case", "berth min s", "berth med s", "kubectl min s", "kubectl med s", "ratio"
    );
    for (case, b, k) in [("first apply", &b1, &k1), ("no-op apply", &b2, &k2)] {
        let (bmin, bmed) = min_median(b);
        let (kmin, kmed) = min_median(k);
        println!(
            "{case:<12} {bmin:>14.3} {bmed:>14.3} {kmin:>14.3} {kmed:>14.3} {:>7.2}x",
            bmed / kmed
        );
    }
    println!("ratio: berth median / kubectl median (the issue's target: <= 0.5x for both)");
}
