//! `berth deploy --k8s` and `berth rollback --k8s` (issue 12) end to end: the image pushed
//! through the hosts deploy's push path to berth's registry with basic auth, the objects
//! applied to a real control plane (etcd, kube-apiserver and kube-controller-manager 1.20
//! from scripts/k8s-envtest; berth-kube's tests/common/k8s.rs), the rollout waited on
//! (pods stay Pending: no scheduler or kubelet here), and rolled back.

mod common;
#[path = "../../berth-kube/tests/common/k8s.rs"]
mod k8s_cp;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use k8s_cp::{ControlPlane, TOKEN, control_plane};

fn berth(root: &Path) -> Command {
    let mut c = Command::new(berth_bin());
    c.arg("--root").arg(root).env("BERTH_LOG", "warn");
    c
}

/// GET `path` of the API server, as JSON (`None` on 404).
fn get(cp: &ControlPlane, path: &str) -> Option<serde_json::Value> {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "10", "-w", "\n%{http_code}", "--cacert"])
        .arg(cp.dir.join("certs/apiserver.crt"))
        .args(["-H", &format!("Authorization: Bearer {TOKEN}")])
        .arg(format!("{}{path}", cp.url))
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, code) = text.rsplit_once('\n').unwrap();
    match code {
        "200" => Some(serde_json::from_str(body).unwrap()),
        "404" => None,
        c => panic!("GET {path}: {c} {body}"),
    }
}

fn revision(cp: &ControlPlane, ns: &str) -> Option<String> {
    get(
        cp,
        &format!("/apis/apps/v1/namespaces/{ns}/deployments/web"),
    )?["metadata"]["annotations"]["deployment.kubernetes.io/revision"]
        .as_str()
        .map(str::to_owned)
}

fn wait_revision(cp: &ControlPlane, ns: &str, want: &str) {
    let start = Instant::now();
    while revision(cp, ns).as_deref() != Some(want) {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no revision {want}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn deploy_wait_and_rollback_on_kubernetes() {
    let Some(cp) = control_plane() else { return };
    if !require("skopeo") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // The image: busybox from a plain source registry into berth's store as web:v1, web:v2.
    let layout = dir.path().join("layout");
    busybox_layout(&layout, "v1");
    let src = Berth::serve(&dir.path().join("src"), &[]);
    run(&mut skopeo_copy(
        &format!("oci:{}:v1", layout.display()),
        &format!("docker://{}/web:v1", src.addr),
        &["--dest-tls-verify=false"],
    ));
    let root = dir.path().join("root");
    run(berth(&root).args(["pull", &format!("{}/web:v1", src.addr)]));
    run(berth(&root).args(["tag", &format!("{}/web:v1", src.addr), "web:v1"]));
    run(berth(&root).args(["tag", "web:v1", "web:v2"]));
    // The registry the cluster pulls from, with basic auth.
    let reg = serve_with_user(dir.path(), "deploy", "s3cret");
    let ns = format!("cli{}", std::process::id());
    let file = dir.path().join("berth.toml");
    std::fs::write(
        &file,
        format!(
            r#"
[deploy.registry]
address = "{reg}"
username = "deploy"
password_env = "REG_PASSWORD"
[deploy.roles.web]
hosts = ["unused"]
[deploy.services.web]
image = "web:v1"
roles = ["web"]
command = ["httpd", "-f", "-p", "80"]
env = {{ GREETING = "hello" }}
secrets = {{ TOKEN = {{ env = "APP_TOKEN" }} }}
ports = ["8080:80"]
[k8s]
kubeconfig = "{kc}"
namespace = "{ns}"
image_pull_secrets = ["regcred"]
"#,
            reg = reg.addr,
            kc = cp.kubeconfig.display(),
        ),
    )
    .unwrap();
    let deploy = |args: &[&str]| {
        let mut c = berth(&root);
        c.arg("deploy")
            .arg("-f")
            .arg(&file)
            .arg("--k8s")
            .args(args)
            .env("REG_PASSWORD", "s3cret")
            .env("APP_TOKEN", "t0ken");
        c
    };
    let out = output_ok(&mut deploy(&[]));
    assert!(out.stderr.contains("Kubernetes v1.20.2"), "{}", out.stderr);
    assert!(out.stdout.contains("web\tdeployed"), "{}", out.stdout);
    let d = get(
        cp,
        &format!("/apis/apps/v1/namespaces/{ns}/deployments/web"),
    )
    .unwrap();
    let pod = &d["spec"]["template"]["spec"];
    let image = pod["containers"][0]["image"].as_str().unwrap();
    assert!(
        image.starts_with(&format!("{}/web@sha256:", reg.addr)),
        "{image}"
    );
    assert_eq!(pod["serviceAccountName"], "berth");
    let pulls: Vec<&str> = pod["imagePullSecrets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(pulls, ["regcred", "berth-pull"]);
    // The pull secret holds the credentials berth pushed with, for that registry.
    let s = get(cp, &format!("/api/v1/namespaces/{ns}/secrets/berth-pull")).unwrap();
    assert_eq!(s["type"], "kubernetes.io/dockerconfigjson");
    let b64 = s["data"][".dockerconfigjson"].as_str().unwrap();
    let json = run(Command::new("sh").args(["-c", &format!("echo {b64} | base64 -d")]));
    let cfg: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(cfg["auths"][&reg.addr]["username"], "deploy");
    assert_eq!(cfg["auths"][&reg.addr]["password"], "s3cret");
    // The pushed image is in the registry under that digest.
    let digest = image.split('@').nth(1).unwrap();
    let served = run(Command::new("skopeo").args([
        "inspect",
        "--tls-verify=false",
        "--creds",
        "deploy:s3cret",
        "--format",
        "{{.Digest}}",
        &format!("docker://{}/web:v1", reg.addr),
    ]));
    assert_eq!(served.trim(), digest);
    // The app's secret went into a Secret, not the Deployment.
    assert!(!d.to_string().contains("t0ken"));

    // Pods stay Pending here: --wait fails naming them.
    let out = deploy(&["--wait", "--timeout", "2s"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("rollout of web failed"), "{err}");
    assert!(err.contains("Pending"), "{err}");
    assert!(
        err.contains("web: 0/1 updated") || err.contains("/1 available"),
        "{err}"
    );
    assert!(err.contains("nothing was pruned"), "{err}");

    wait_revision(cp, &ns, "1");
    run(&mut deploy(&["--version", "v2"]));
    wait_revision(cp, &ns, "2");
    let list = run(berth(&root)
        .args(["rollback", "-f"])
        .arg(&file)
        .args(["--k8s", "--list"]));
    let versions: Vec<&str> = list
        .lines()
        .map(|l| l.split('\t').nth(1).unwrap())
        .collect();
    assert_eq!(versions, ["v2", "v1"], "{list}");
    let back = run(berth(&root)
        .args(["rollback", "-f"])
        .arg(&file)
        .arg("--k8s"));
    assert_eq!(back.trim(), "web\tv1");
    let d = get(
        cp,
        &format!("/apis/apps/v1/namespaces/{ns}/deployments/web"),
    )
    .unwrap();
    assert_eq!(
        d["spec"]["template"]["metadata"]["annotations"]["berth.dev/version"],
        "v1"
    );
    let out = berth(&root)
        .args(["rollback", "-f"])
        .arg(&file)
        .args(["--k8s", "v9"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no revision of version v9"), "{err}");

    // A new environment with no old revision kept (replicas 0: the rollout completes
    // without a kubelet, and the controller then drops the old ReplicaSets): the old
    // ConfigMap goes after the rollout, the Secret (same content, same name) stays.
    let text = std::fs::read_to_string(&file)
        .unwrap()
        .replace("\"hello\"", "\"bye\"");
    std::fs::write(
        &file,
        format!("{text}[k8s.services.web]\nreplicas = 0\nrevision_history_limit = 0\n"),
    )
    .unwrap();
    let before = names(cp, &ns, "configmaps", "web-env-");
    assert_eq!(before.len(), 1, "{before:?}");
    let out = output_ok(&mut deploy(&["--wait", "--timeout", "2m"]));
    assert!(
        out.stderr
            .contains(&format!("web: deleted configmap/{}", before[0])),
        "{}",
        out.stderr
    );
    let after = names(cp, &ns, "configmaps", "web-env-");
    assert_eq!(after.len(), 1, "{after:?}");
    assert_ne!(after, before);
    assert_eq!(names(cp, &ns, "secrets", "web-secrets-").len(), 1);
}

/// Names of the namespace's objects of `plural` (core API) starting with `prefix`.
fn names(cp: &ControlPlane, ns: &str, plural: &str, prefix: &str) -> Vec<String> {
    let list = get(cp, &format!("/api/v1/namespaces/{ns}/{plural}")).unwrap();
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o["metadata"]["name"].as_str())
        .filter(|n| n.starts_with(prefix))
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_bad_context_or_table_is_reported_before_anything_happens() {
    let Some(cp) = control_plane() else { return };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("berth.toml");
    let base = "[deploy.registry]\naddress = \"127.0.0.1:1\"\n[deploy.roles.web]\nhosts = [\"h\"]\n\
                [deploy.services.web]\nimage = \"web:v1\"\nroles = [\"web\"]\n";
    std::fs::write(
        &file,
        format!(
            "{base}[k8s]\nkubeconfig = \"{}\"\n",
            cp.kubeconfig.display()
        ),
    )
    .unwrap();
    let root = dir.path().join("root");
    let out = berth(&root)
        .args(["deploy", "-f"])
        .arg(&file)
        .args(["--k8s", "--context", "nope"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("nope"), "{err}");
    std::fs::write(&file, format!("{base}[k8s]\nnamespace = \"Bad_NS\"\n")).unwrap();
    let out = berth(&root)
        .args(["deploy", "-f"])
        .arg(&file)
        .arg("--k8s")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("k8s.namespace"), "{err}");
    // --wait belongs to --k8s.
    let out = berth(&root)
        .args(["deploy", "-f"])
        .arg(&file)
        .arg("--wait")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--k8s"), "{err}");
}

/// POST `body` to `path` of the API server; panics unless 201.
fn post(cp: &ControlPlane, path: &str, body: &serde_json::Value) {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "10", "-w", "\n%{http_code}", "--cacert"])
        .arg(cp.dir.join("certs/apiserver.crt"))
        .args(["-H", &format!("Authorization: Bearer {TOKEN}")])
        .args(["-H", "Content-Type: application/json", "-X", "POST", "-d"])
        .arg(body.to_string())
        .arg(format!("{}{path}", cp.url))
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.ends_with("\n201"), "POST {path}: {text}");
}

#[test]
fn satellite_deploy_puts_the_pod_through_berths_identity() {
    let Some(cp) = control_plane() else { return };
    let dir = tempfile::tempdir().unwrap();
    let ns = "sat";
    // berth's ServiceAccount as `berth deploy --k8s` leaves it: listing berth-pull.
    post(
        cp,
        "/api/v1/namespaces",
        &serde_json::json!({"metadata": {"name": ns}}),
    );
    post(
        cp,
        &format!("/api/v1/namespaces/{ns}/serviceaccounts"),
        &serde_json::json!({"metadata": {"name": "berth"}, "imagePullSecrets": [{"name": "berth-pull"}]}),
    );
    let deploy = || {
        let mut c = berth(&dir.path().join("root"));
        c.env("KUBECONFIG", &cp.kubeconfig)
            .env("DOCKER_CONFIG", dir.path().join("no-docker"))
            .args([
                "satellite",
                "deploy",
                "--k8s",
                "--context",
                "envtest",
                "-n",
                ns,
                "--name",
                "builder",
                "--image",
                "127.0.0.1:5000/berth:1",
                "--storage",
                "1Gi",
                "--image-pull-secret",
                "regcred",
            ]);
        output_ok(&mut c)
    };
    let out = deploy();
    assert!(
        out.stdout
            .contains("pod builder-0 as berth with pull secrets regcred,berth-pull"),
        "{}",
        out.stdout
    );
    // What the StatefulSet controller made, read back from the server.
    let pod = get(cp, &format!("/api/v1/namespaces/{ns}/pods/builder-0")).expect("pod builder-0");
    assert_eq!(pod["spec"]["serviceAccountName"], "berth");
    assert_eq!(
        pod["spec"]["imagePullSecrets"],
        serde_json::json!([{"name": "regcred"}, {"name": "berth-pull"}])
    );
    assert_eq!(
        pod["spec"]["containers"][0]["securityContext"]["privileged"],
        true
    );
    let sts_path = format!("/apis/apps/v1/namespaces/{ns}/statefulsets/builder");
    let sts = get(cp, &sts_path).unwrap();
    assert!(
        sts["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["manager"] == "berth" && f["operation"] == "Apply"),
        "{sts}"
    );
    // Again: nothing changes: the spec (generation) and the fields berth owns. (The
    // resourceVersion may: the controller writes the StatefulSet's status meanwhile;
    // and 1.20 stamps berth's managedFields entry with the time of every apply.)
    let berths = |v: &serde_json::Value| {
        v["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["manager"] == "berth" && f["operation"] == "Apply")
            .map(|f| f["fieldsV1"].clone())
            .unwrap()
    };
    deploy();
    let again = get(cp, &sts_path).unwrap();
    assert_eq!(
        again["metadata"]["generation"],
        sts["metadata"]["generation"]
    );
    assert_eq!(berths(&again), berths(&sts));
    // How to enroll, exactly (the pod cannot run here: no node).
    let out = deploy();
    assert!(
        out.stderr
            .contains("kubectl -n sat logs builder-0 -c satellite | grep 'satellite add'"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains(
            "kubectl -n sat exec builder-0 -c satellite -- berth --root /var/lib/berth satellite token create"
        ),
        "{}",
        out.stderr
    );
    // --enroll waits for the pod to run, then says why it could not and how.
    let mut c = berth(&dir.path().join("root"));
    c.env("KUBECONFIG", &cp.kubeconfig)
        .env("DOCKER_CONFIG", dir.path().join("no-docker"))
        .args([
            "satellite",
            "deploy",
            "--k8s",
            "-n",
            ns,
            "--name",
            "builder",
            "--image",
            "127.0.0.1:5000/berth:1",
            "--storage",
            "1Gi",
            "--image-pull-secret",
            "regcred",
            "--enroll",
            "--timeout",
            "2s",
        ]);
    let enroll = output(&mut c);
    assert!(!enroll.success);
    assert!(
        enroll.stderr.contains(
            "satellite builder: not enrolled: pod builder-0 is Pending, not scheduled to a node after 2s"
        ),
        "{}",
        enroll.stderr
    );
    assert!(
        enroll
            .stderr
            .contains("berth satellite add builder --token <token>"),
        "{}",
        enroll.stderr
    );
    // Bad input is refused before anything is sent.
    let mut c = berth(&dir.path().join("root"));
    c.env("KUBECONFIG", &cp.kubeconfig).args([
        "satellite",
        "deploy",
        "--k8s",
        "-n",
        ns,
        "--storage",
        "lots",
    ]);
    let bad = output(&mut c);
    assert!(!bad.success);
    assert!(bad.stderr.contains("--storage"), "{}", bad.stderr);
}

/// `s` base64-decoded.
fn b64d(s: &str) -> String {
    run(Command::new("sh").args(["-c", &format!("echo {s} | base64 -d")]))
}

/// A Docker config directory holding `user`/`password` for `registry` (what `berth
/// login` writes).
fn docker_config(dir: &Path, registry: &str, user: &str, password: &str) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("config.json"),
        serde_json::json!({"auths": {registry: {"username": user, "password": password}}})
            .to_string(),
    )
    .unwrap();
    dir.to_path_buf()
}

fn pull_secrets_of(pod: &serde_json::Value) -> Vec<String> {
    pod["spec"]["imagePullSecrets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn satellite_deploy_makes_the_pull_secret_from_berths_login() {
    let Some(cp) = control_plane() else { return };
    let dir = tempfile::tempdir().unwrap();
    let ns = "satpull";
    let deploy = |password: &str| {
        let conf = docker_config(
            &dir.path().join(password),
            "127.0.0.1:5000",
            "sat",
            password,
        );
        let mut c = berth(&dir.path().join("root"));
        c.env("DOCKER_CONFIG", conf).args([
            "satellite",
            "deploy",
            "--k8s",
            "--kubeconfig",
            cp.kubeconfig.to_str().unwrap(),
            "-n",
            ns,
            "--name",
            "builder",
            "--image",
            "127.0.0.1:5000/berth:1",
            "--storage",
            "1Gi",
        ]);
        output_ok(&mut c)
    };
    let out = deploy("first");
    assert!(
        out.stdout
            .contains("pod builder-0 as berth with pull secrets berth-pull"),
        "{}",
        out.stdout
    );
    let secret = || {
        let s = get(cp, &format!("/api/v1/namespaces/{ns}/secrets/berth-pull")).unwrap();
        assert_eq!(s["type"], "kubernetes.io/dockerconfigjson");
        let cfg: serde_json::Value =
            serde_json::from_str(&b64d(s["data"][".dockerconfigjson"].as_str().unwrap())).unwrap();
        cfg["auths"]["127.0.0.1:5000"].clone()
    };
    assert_eq!(secret()["username"], "sat");
    assert_eq!(secret()["password"], "first");
    let sa = get(
        cp,
        &format!("/api/v1/namespaces/{ns}/serviceaccounts/berth"),
    )
    .unwrap();
    assert_eq!(
        sa["imagePullSecrets"],
        serde_json::json!([{"name": "berth-pull"}])
    );
    let pod = get(cp, &format!("/api/v1/namespaces/{ns}/pods/builder-0")).unwrap();
    assert_eq!(pull_secrets_of(&pod), ["berth-pull"]);
    // Logged in again with another password: the Secret follows, the pod and the
    // ServiceAccount keep one reference to it.
    deploy("second");
    assert_eq!(secret()["password"], "second");
    let again = get(cp, &format!("/api/v1/namespaces/{ns}/pods/builder-0")).unwrap();
    assert_eq!(again["metadata"]["uid"], pod["metadata"]["uid"]);
    assert_eq!(pull_secrets_of(&again), ["berth-pull"]);
    let sa = get(
        cp,
        &format!("/api/v1/namespaces/{ns}/serviceaccounts/berth"),
    )
    .unwrap();
    assert_eq!(
        sa["imagePullSecrets"],
        serde_json::json!([{"name": "berth-pull"}])
    );
}

/// A kubeconfig for the control plane without its CA: the server's certificate is
/// trusted only through berth's `[network] ca`.
fn kubeconfig_without_ca(cp: &ControlPlane, dir: &Path) -> std::path::PathBuf {
    let path = dir.join("kubeconfig-no-ca");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: envtest\n  cluster:\n    server: {}\n\
             users:\n- name: admin\n  user:\n    token: {TOKEN}\n\
             contexts:\n- name: envtest\n  context:\n    cluster: envtest\n    user: admin\n\
             current-context: envtest\n",
            cp.url
        ),
    )
    .unwrap();
    path
}

#[test]
fn the_kube_client_takes_berths_network_settings() {
    let Some(cp) = control_plane() else { return };
    if !require("tinyproxy") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let proxy = common::tinyproxy::Proxy::start(dir.path());
    let kc = kubeconfig_without_ca(cp, dir.path());
    let api = cp.url.trim_start_matches("https://").to_owned();
    let config = dir.path().join("config.toml");
    let deploy = |network: &str| {
        std::fs::write(&config, format!("[network]\n{network}")).unwrap();
        let mut c = berth(&dir.path().join("root"));
        c.env("DOCKER_CONFIG", dir.path().join("no-docker"))
            .env_remove("HTTPS_PROXY")
            .env_remove("https_proxy")
            .env_remove("NO_PROXY")
            .env_remove("no_proxy")
            .arg("--config")
            .arg(&config)
            .args(["satellite", "deploy", "--k8s", "--kubeconfig"])
            .arg(&kc)
            .args(["-n", "satnet", "--name", "builder", "--storage", "1Gi"]);
        output(&mut c)
    };
    let ca = format!(
        "ca = [\"{}\"]\n",
        cp.dir.join("certs/apiserver.crt").display()
    );
    // Without the CA the server's certificate is not trusted.
    let out = deploy("");
    assert!(!out.success);
    assert!(
        out.stderr.to_lowercase().contains("certificate"),
        "{}",
        out.stderr
    );
    // With it, through the proxy of [network].
    let out = deploy(&format!("{ca}https_proxy = \"http://{}\"\n", proxy.addr));
    assert!(out.success, "{}", out.stderr);
    let through = proxy.requests_to(&api);
    assert!(through > 0, "no CONNECT to {api} in the proxy's log");
    // NO_PROXY of [network] (berth-net's rules: here a CIDR) sends it direct.
    let out = deploy(&format!(
        "{ca}https_proxy = \"http://{}\"\nno_proxy = [\"127.0.0.0/8\"]\n",
        proxy.addr
    ));
    assert!(out.success, "{}", out.stderr);
    assert_eq!(proxy.requests_to(&api), through, "went through the proxy");
    // A CA file that is not PEM is named.
    let bad = dir.path().join("bad.pem");
    std::fs::write(&bad, "not a certificate\n").unwrap();
    let out = deploy(&format!("ca = [\"{}\"]\n", bad.display()));
    assert!(!out.success);
    assert!(out.stderr.contains("bad.pem"), "{}", out.stderr);
}

/// The documents of a YAML stream, as JSON (PyYAML reads them).
fn yaml_docs(text: &str) -> Vec<serde_json::Value> {
    use std::io::Write;
    let mut child = Command::new("python3")
        .args([
            "-c",
            "import sys, json, yaml; print(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d is not None]))",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "PyYAML could not read:\n{text}");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The pods of the registry `name` in `ns`, once the controller has made `n`.
fn registry_pods(cp: &ControlPlane, ns: &str, n: usize) -> Vec<serde_json::Value> {
    let start = Instant::now();
    loop {
        let l = get(
            cp,
            &format!(
                "/api/v1/namespaces/{ns}/pods?labelSelector=app.kubernetes.io/name%3Dberth-registry"
            ),
        )
        .unwrap();
        let items = l["items"].as_array().unwrap().clone();
        if items.len() == n {
            return items;
        }
        assert!(start.elapsed() < Duration::from_secs(120), "{n} pods: {l}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn registry_manifests_and_deploy_on_kubernetes() {
    let Some(cp) = control_plane() else { return };
    if !require("python3") || !require("kubectl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = dir.path().join("htpasswd");
    std::fs::write(&htpasswd, "deploy:$2y$05$abcdefghijklmnopqrstuv\n").unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[registry]\nhtpasswd = \"{}\"\n[registry.storage]\nkind = \"s3\"\nbucket = \"images\"\n\
             endpoint = \"http://127.0.0.1:9\"\nprefix = \"team\"\n",
            htpasswd.display()
        ),
    )
    .unwrap();
    let berth_c = || {
        let mut c = berth(&dir.path().join("root"));
        c.arg("--config")
            .arg(&config)
            .env("DOCKER_CONFIG", dir.path().join("no-docker"))
            .env("AWS_ACCESS_KEY_ID", "AKID")
            .env("AWS_SECRET_ACCESS_KEY", "SECRETKEY")
            .env_remove("AWS_SESSION_TOKEN");
        c
    };
    let ns = "regyaml";
    post(
        cp,
        "/api/v1/namespaces",
        &serde_json::json!({"metadata": {"name": ns}}),
    );
    let out = output_ok(berth_c().args([
        "registry",
        "manifests",
        "--replicas",
        "3",
        "-n",
        ns,
        "--image",
        "127.0.0.1:5000/berth:1",
        "--image-pull-secret",
        "regcred",
        "--kube-version",
        "1.20",
    ]));
    let docs = yaml_docs(&out.stdout);
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["Secret", "Deployment", "Service", "PodDisruptionBudget"]
    );
    assert_eq!(docs[3]["apiVersion"], "policy/v1beta1");
    assert!(docs.iter().all(|d| d["metadata"]["namespace"] == ns));
    let data = &docs[0]["data"];
    let toml = b64d(data["config.toml"].as_str().unwrap());
    assert!(toml.contains("bucket = \"images\""), "{toml}");
    assert!(
        toml.contains("credentials_file = \"/etc/berth/registry/credentials\""),
        "{toml}"
    );
    assert!(
        toml.contains("htpasswd = \"/etc/berth/registry/htpasswd\""),
        "{toml}"
    );
    assert!(b64d(data["credentials"].as_str().unwrap()).contains("aws_access_key_id = AKID"));
    assert!(b64d(data["htpasswd"].as_str().unwrap()).starts_with("deploy:"));
    assert_eq!(docs[1]["spec"]["replicas"], 3);
    // Newer clusters get policy/v1.
    let v1 = output_ok(berth_c().args(["registry", "manifests"]));
    assert_eq!(yaml_docs(&v1.stdout)[3]["apiVersion"], "policy/v1");

    // kubectl applies the printed YAML; the controller's pods carry the ServiceAccount
    // and pull secret it names.
    let file = dir.path().join("registry.yaml");
    std::fs::write(&file, &out.stdout).unwrap();
    run(Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&cp.kubeconfig)
        .args(["apply", "--server-side", "-f"])
        .arg(&file));
    for p in registry_pods(cp, ns, 3) {
        assert_eq!(p["spec"]["serviceAccountName"], "default");
        assert_eq!(pull_secrets_of(&p), ["regcred"]);
        assert_eq!(
            p["spec"]["volumes"][0]["secret"]["secretName"],
            "berth-registry-config"
        );
    }

    // berth registry deploy --k8s: berth's ServiceAccount, the pull Secret from berth's
    // login for the image's registry, the PDB in the API the 1.20 server has.
    let ns = "regdeploy";
    let conf = docker_config(&dir.path().join("docker"), "127.0.0.1:5000", "puller", "pw");
    let deploy = |replicas: &str| {
        let mut c = berth_c();
        c.env("DOCKER_CONFIG", &conf).args([
            "registry",
            "deploy",
            "--k8s",
            "--kubeconfig",
            cp.kubeconfig.to_str().unwrap(),
            "-n",
            ns,
            "--replicas",
            replicas,
            "--image",
            "127.0.0.1:5000/berth:1",
            "--image-pull-secret",
            "regcred",
        ]);
        output_ok(&mut c)
    };
    let out = deploy("2");
    assert_eq!(
        out.stdout
            .matches("as berth with pull secrets regcred,berth-pull")
            .count(),
        2,
        "{}",
        out.stdout
    );
    for p in registry_pods(cp, ns, 2) {
        assert_eq!(p["spec"]["serviceAccountName"], "berth");
        assert_eq!(pull_secrets_of(&p), ["regcred", "berth-pull"]);
    }
    let pdb_path =
        format!("/apis/policy/v1beta1/namespaces/{ns}/poddisruptionbudgets/berth-registry");
    let pdb = get(cp, &pdb_path).expect("the PDB");
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
    assert!(
        pdb["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["manager"] == "berth" && f["operation"] == "Apply"),
        "{pdb}"
    );
    let s = get(cp, &format!("/api/v1/namespaces/{ns}/secrets/berth-pull")).unwrap();
    let cfg: serde_json::Value =
        serde_json::from_str(&b64d(s["data"][".dockerconfigjson"].as_str().unwrap())).unwrap();
    assert_eq!(cfg["auths"]["127.0.0.1:5000"]["username"], "puller");
    // Again with three replicas: the same objects, one more pod, same identity.
    let d1 = get(
        cp,
        &format!("/apis/apps/v1/namespaces/{ns}/deployments/berth-registry"),
    )
    .unwrap();
    deploy("3");
    let d2 = get(
        cp,
        &format!("/apis/apps/v1/namespaces/{ns}/deployments/berth-registry"),
    )
    .unwrap();
    assert_eq!(d2["spec"]["replicas"], 3);
    assert_eq!(
        d1["spec"]["template"], d2["spec"]["template"],
        "the pod template did not change"
    );
    assert_eq!(registry_pods(cp, ns, 3).len(), 3);

    // Bad input and a missing bucket: clear errors before anything is sent.
    let bad = output(berth_c().args(["registry", "manifests", "--replicas", "0"]));
    assert!(!bad.success);
    assert!(bad.stderr.contains("--replicas 0"), "{}", bad.stderr);
    std::fs::write(&config, "[registry]\n").unwrap();
    let bad = output(berth_c().args(["registry", "manifests"]));
    assert!(!bad.success);
    assert!(
        bad.stderr.contains("[registry.storage] kind = \"s3\""),
        "{}",
        bad.stderr
    );
}

/// The text a satellite's first start prints (its pod's log in a cluster) holds the token
/// `satellite deploy --k8s --enroll` reads, and that token enrolls a client: the real
/// `berth satellite serve` on 127.0.0.1, its stdout read as berth-kube reads a pod's log.
#[test]
fn the_first_start_token_in_the_log_enrolls_a_client() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let mut sat = Command::new(berth_bin())
        .arg("--root")
        .arg(dir.path().join("sat"))
        .args(["satellite", "serve", "--addr", &addr, "--name", "builder"])
        .args(["--advertise", "127.0.0.1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut log = String::new();
    let mut reader = BufReader::new(sat.stdout.take().unwrap());
    for _ in 0..4 {
        if reader.read_line(&mut log).unwrap() == 0 || log.contains("valid 24 h") {
            break;
        }
    }
    let token = berth_kube::satellite::token_in_log(&log, "builder");
    let Some(token) = token else {
        let _ = sat.kill();
        panic!("no token in the first start's text: {log}");
    };
    assert!(token.contains(&format!("@{addr}#sha256:")), "{token}");
    let cfg = dir.path().join("client");
    let add = output(
        Command::new(berth_bin())
            .env("XDG_CONFIG_HOME", &cfg)
            .arg("--root")
            .arg(dir.path().join("client-root"))
            .args([
                "satellite",
                "add",
                "builder",
                "--token",
                &token,
                "--client-name",
                "ci",
            ]),
    );
    let _ = sat.kill();
    let _ = sat.wait();
    assert!(add.success, "{}", add.stderr);
    assert!(
        add.stdout.contains("enrolled with satellite builder") && add.stdout.contains(" as ci"),
        "{}",
        add.stdout
    );
}

/// A project deployed through a satellite: a Dockerfile service `web` and an Earthfile
/// service `api` (`./api+docker` saves `api:v1`), both `FROM scratch`, in `dir/proj`
/// (the folder `berth deploy` runs in, sent whole for the Earthfile), to berth's registry
/// with basic auth (user deploy, password s3cret from REG_PASSWORD) and namespace `ns`.
/// Returns the project folder and the deploy file.
fn satellite_project(
    cp: &ControlPlane,
    dir: &Path,
    registry: &str,
    ns: &str,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let proj = dir.join("proj");
    for (path, text) in [
        ("app/Dockerfile", "FROM scratch\nCOPY hello /hello\n"),
        ("app/hello", "web, built on the satellite\n"),
        (
            "api/Earthfile",
            "VERSION 0.8\ndocker:\n    FROM scratch\n    COPY hello /hello\n    SAVE IMAGE api:v1\n",
        ),
        ("api/hello", "api, built on the satellite\n"),
    ] {
        let path = proj.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    let file = proj.join("berth.toml");
    std::fs::write(
        &file,
        format!(
            r#"
[deploy.registry]
address = "{registry}"
username = "deploy"
password_env = "REG_PASSWORD"
[deploy.roles.web]
hosts = ["unused"]
[deploy.services.web]
image = "web:v1"
roles = ["web"]
command = ["/hello"]
build = {{ context = "app" }}
[deploy.services.api]
image = "api:v1"
roles = ["web"]
command = ["/hello"]
build = {{ earthfile = "./api+docker" }}
[k8s]
kubeconfig = "{kc}"
namespace = "{ns}"
"#,
            kc = cp.kubeconfig.display(),
        ),
    )
    .unwrap();
    (proj, file)
}

/// Enrolls a client with `sat` as `s`, serves berth's registry (user deploy), writes
/// [`satellite_project`] for namespace `ns` and runs `berth deploy --k8s` there with
/// BERTH_SATELLITE=s, which must succeed: the client, the registry and what it printed.
fn deploy_through(
    cp: &ControlPlane,
    dir: &Path,
    sat: &common::satellite::Sat,
    ns: &str,
) -> (common::satellite::Client, Berth, Output) {
    let client = common::satellite::Client::new(dir, "client", None);
    let add = client.add("s", &sat.token(&[]));
    assert!(add.success, "{}", add.stderr);
    let reg = serve_with_user(dir, "deploy", "s3cret");
    let (proj, file) = satellite_project(cp, dir, &reg.addr, ns);
    let out = output(
        client
            .berth()
            .current_dir(&proj)
            .args(["deploy", "-f"])
            .arg(&file)
            .arg("--k8s")
            .env("BERTH_SATELLITE", "s")
            .env("REG_PASSWORD", "s3cret"),
    );
    assert!(out.success, "{}\n{}", out.stdout, out.stderr);
    eprintln!("{}", out.stderr);
    (client, reg, out)
}

/// The image of Deployment `name` in `ns`, and the digest it names in `registry`.
fn deployed_digest(cp: &ControlPlane, ns: &str, name: &str, registry: &str) -> String {
    let d = get(
        cp,
        &format!("/apis/apps/v1/namespaces/{ns}/deployments/{name}"),
    )
    .unwrap_or_else(|| panic!("no Deployment {name} in {ns}"));
    let image = d["spec"]["template"]["spec"]["containers"][0]["image"]
        .as_str()
        .unwrap()
        .to_owned();
    image
        .strip_prefix(&format!("{registry}/{name}@"))
        .unwrap_or_else(|| panic!("{image}"))
        .to_owned()
}

/// The digest `registry/repo:tag` has, asked of the registry with the deploy's credentials.
fn registry_digest(registry: &str, reference: &str) -> String {
    run(Command::new("skopeo").args([
        "inspect",
        "--tls-verify=false",
        "--creds",
        "deploy:s3cret",
        "--format",
        "{{.Digest}}",
        &format!("docker://{registry}/{reference}"),
    ]))
    .trim()
    .to_owned()
}

/// Issue 12 item 3's sentence, as far as this machine allows: `berth deploy --k8s` of
/// services with a `build` (a Dockerfile and an Earthfile target), the chosen satellite
/// building them, is one command: the satellite builds, pushes to the registry the deploy
/// targets with berth's credentials for it, and the Deployments name the digests it
/// reported. Nothing comes to this machine: its store never holds the images. (The
/// satellite runs on 127.0.0.1, not in the cluster: the test control plane has no node
/// to run its pod; the client's path is the same.)
#[test]
fn a_build_on_a_satellite_is_pushed_from_there_and_deployed_in_one_command() {
    use common::satellite::Sat;
    let Some(cp) = control_plane() else { return };
    if !require("skopeo") || !require("htpasswd") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sat = Sat::on_loopback(&dir.path().join("sat-root"), &[]);
    let ns = format!("satbuild{}", std::process::id());
    let (client, reg, out) = deploy_through(cp, dir.path(), &sat, &ns);
    for (svc, kind) in [("web", "image"), ("api", "target")] {
        assert!(
            out.stderr
                .contains(&format!("building {svc}:v1 for service {svc}")),
            "{}",
            out.stderr
        );
        assert!(
            out.stdout.contains(&format!("{svc}\tdeployed")),
            "{}",
            out.stdout
        );
        let digest = deployed_digest(cp, &ns, svc, &reg.addr);
        assert_eq!(registry_digest(&reg.addr, &format!("{svc}:v1")), digest);
        // The satellite said it pushed that digest, to the deploy's registry.
        assert!(
            out.stderr.contains(&format!(
                "push: satellite s pushed {svc}:v1 to {r}/{svc}:v1 ({r}/{svc}@{digest}); \
                 nothing came to this machine",
                r = reg.addr
            )),
            "{kind}: {}",
            out.stderr
        );
        // This machine's store never held it (by name or by digest).
        let inspect = output(client.berth().args(["inspect", &format!("{svc}:v1")]));
        assert!(!inspect.success, "{}", inspect.stdout);
        let inspect = output(
            client
                .berth()
                .args(["inspect", &format!("{}/{svc}@{digest}", reg.addr)]),
        );
        assert!(!inspect.success, "{}", inspect.stdout);
    }
    assert!(!out.stderr.contains("could not push"), "{}", out.stderr);
    let images = output(client.berth().args(["images"]));
    assert!(images.success, "{}", images.stderr);
    assert!(
        !images.stdout.contains("web") && !images.stdout.contains("api"),
        "{}",
        images.stdout
    );
    // The Dockerfile build's closing line names the manifest the registry serves.
    let web = registry_digest(&reg.addr, "web:v1");
    assert!(
        out.stderr.contains(&format!("(manifest {web},")),
        "{}",
        out.stderr
    );
}

/// A satellite that cannot reach the deploy's registry (its proxy is a closed port of
/// 127.0.0.1: no route) builds, says why it could not push, and the deploy fetches the
/// images into this machine's store and pushes them from here, saying so; the
/// Deployments name what this machine pushed.
#[test]
fn a_satellite_that_cannot_push_hands_the_images_to_this_machine() {
    use common::satellite::Sat;
    let Some(cp) = control_plane() else { return };
    if !require("skopeo") || !require("htpasswd") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let dead = format!("http://127.0.0.1:{}", free_port());
    let sat = Sat::start_with(
        None,
        &dir.path().join("sat-root"),
        &format!("127.0.0.1:{}", free_port()),
        &["--advertise", "127.0.0.1"],
        &[
            ("HTTP_PROXY", &dead),
            ("HTTPS_PROXY", &dead),
            ("http_proxy", &dead),
            ("https_proxy", &dead),
            ("NO_PROXY", ""),
            ("no_proxy", ""),
        ],
        std::process::Stdio::inherit(),
    );
    let ns = format!("satfall{}", std::process::id());
    let (client, reg, out) = deploy_through(cp, dir.path(), &sat, &ns);
    for svc in ["web", "api"] {
        let said = format!(
            "push: satellite s could not push {svc}:v1 to {}/{svc}:v1: ",
            reg.addr
        );
        assert!(out.stderr.contains(&said), "{said}\n{}", out.stderr);
        assert!(
            out.stderr.contains(&format!(
                "push: fetching {svc}:v1 from satellite s and pushing it from this machine instead"
            )),
            "{}",
            out.stderr
        );
        let digest = deployed_digest(cp, &ns, svc, &reg.addr);
        assert_eq!(registry_digest(&reg.addr, &format!("{svc}:v1")), digest);
        assert!(
            out.stderr
                .contains(&format!("pushed {svc}:v1 as {}/{svc}@{digest}", reg.addr)),
            "{}",
            out.stderr
        );
        // The image came here, under its name, as the manifest the satellite built.
        let inspect = output(client.berth().args(["inspect", &format!("{svc}:v1")]));
        assert!(inspect.success, "{}", inspect.stderr);
    }
    assert!(
        !out.stderr.contains("nothing came to this machine"),
        "{}",
        out.stderr
    );
}

/// `berth registry manifests --tls-cert --tls-key` (or `[registry] tls_cert/tls_key`): the
/// Secret carries the pair and the replicas' config.toml names it; a replica started from
/// exactly the Secret's files (paths moved from /etc/berth/registry to a directory here,
/// S3 on moto) serves HTTPS with that certificate and the Secret's htpasswd.
#[test]
fn registry_replicas_serve_tls_from_their_secret() {
    use std::io::BufRead;
    if !require("htpasswd") || !require("curl") {
        return;
    }
    let Some(moto) = berth_testutil::moto::Moto::start("images") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (ca, crt, key) = make_tls(dir.path());
    let htpasswd = dir.path().join("htpasswd");
    run(Command::new("htpasswd")
        .args(["-Bbc"])
        .arg(&htpasswd)
        .args(["deploy", "s3cret"]));
    let config = dir.path().join("config.toml");
    let write_config = |extra: &str| {
        std::fs::write(
            &config,
            format!(
                "[registry]\nhtpasswd = \"{}\"\n{extra}[registry.storage]\nkind = \"s3\"\n\
                 bucket = \"images\"\nendpoint = \"{}\"\n",
                htpasswd.display(),
                moto.endpoint
            ),
        )
        .unwrap()
    };
    write_config("");
    let manifests = |args: &[&str]| {
        let mut c = berth(&dir.path().join("root"));
        c.arg("--config")
            .arg(&config)
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env_remove("AWS_SESSION_TOKEN")
            .args(["registry", "manifests"])
            .args(args);
        output(&mut c)
    };
    let out = manifests(&[
        "--tls-cert",
        crt.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    assert!(out.success, "{}", out.stderr);
    let docs = yaml_docs(&out.stdout);
    let data = docs[0]["data"].as_object().unwrap();
    let keys: Vec<&str> = data.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "config.toml",
            "credentials",
            "htpasswd",
            "tls.crt",
            "tls.key"
        ]
    );
    // The Secret's files, as the pod mounts them, here.
    let mounted = dir.path().join("mounted");
    std::fs::create_dir_all(&mounted).unwrap();
    for (k, v) in data {
        let text =
            b64d(v.as_str().unwrap()).replace("/etc/berth/registry", mounted.to_str().unwrap());
        std::fs::write(mounted.join(k), text).unwrap();
    }
    let toml = std::fs::read_to_string(mounted.join("config.toml")).unwrap();
    assert!(
        toml.contains(&format!("tls_cert = \"{}/tls.crt\"", mounted.display())),
        "{toml}"
    );
    let mut replica = Command::new(berth_bin())
        .arg("--root")
        .arg(dir.path().join("replica"))
        .arg("--config")
        .arg(mounted.join("config.toml"))
        .args(["registry", "serve", "--addr", "127.0.0.1:0"])
        .env("BERTH_LOG", "warn")
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(replica.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("https://"))
        .map(str::to_owned);
    let curl = |user: Option<&str>| {
        let mut c = Command::new("curl");
        c.args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "10",
        ])
        .arg("--cacert")
        .arg(&ca);
        if let Some(u) = user {
            c.args(["-u", u]);
        }
        c.arg(format!(
            "{}/v2/",
            url.as_deref().unwrap_or("https://127.0.0.1:1")
        ));
        String::from_utf8_lossy(&c.output().unwrap().stdout).into_owned()
    };
    let (anonymous, with_user) = (curl(None), curl(Some("deploy:s3cret")));
    let _ = replica.kill();
    let _ = replica.wait();
    assert!(url.is_some(), "the replica does not serve HTTPS: {line:?}");
    assert_eq!((anonymous.as_str(), with_user.as_str()), ("401", "200"));

    // Without flags, this machine's [registry] TLS settings are carried.
    write_config(&format!(
        "tls_cert = \"{}\"\ntls_key = \"{}\"\n",
        crt.display(),
        key.display()
    ));
    let out = manifests(&[]);
    assert!(out.success, "{}", out.stderr);
    let docs = yaml_docs(&out.stdout);
    assert_eq!(
        b64d(docs[0]["data"]["tls.crt"].as_str().unwrap()).trim(),
        std::fs::read_to_string(&crt).unwrap().trim()
    );
    // Bad input names what is wrong.
    let out = manifests(&[
        "--tls-cert",
        htpasswd.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    assert!(!out.success);
    assert!(
        out.stderr.contains("holds no PEM CERTIFICATE"),
        "{}",
        out.stderr
    );
    write_config(&format!("tls_cert = \"{}\"\n", crt.display()));
    let out = manifests(&[]);
    assert!(!out.success);
    assert!(
        out.stderr.contains("TLS needs both tls_cert and tls_key"),
        "{}",
        out.stderr
    );
}
