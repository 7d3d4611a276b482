//! Pods really running (issue 12): kubelet 1.20 with its built-in dockershim (built by
//! scripts/k8s-envtest) joins the test control plane (berth-kube's tests/common/k8s.rs)
//! as a node, over a dockerd of its own; berth's registry with basic auth holds the
//! image. A Deployment rendered by berth's pod path into a namespace without berth's pull
//! secret fails to pull (the registry's refusal in the pod's status and events); the same
//! service into a namespace with it rolls out and its container runs.
//!
//! Nothing of the machine changes, though kubelet sets kernel tunables and cgroups:
//! - kubelet and the node's dockerd run in a mount namespace of their own, in which the
//!   `/proc/sys` files kubelet checks are bind-mounted over by regular files already
//!   holding the values it wants (and `--protect-kernel-defaults` makes it refuse, never
//!   write, should one differ), tmpfs hides /var/lib and /var/log (kubelet's fixed
//!   paths), and the node dockerd's socket and pid file cover /var/run/docker.{sock,pid}
//!   (kubelet's cAdvisor and its oom-score tuning of "the docker daemon" find that one);
//! - the node dockerd, its bridge, its containers and berth's registry live in a network
//!   namespace of the test; kubelet stays in the machine's (the API server listens on its
//!   127.0.0.1) with `--make-iptables-util-chains=false`, listening on 127.0.0.1 only;
//! - `--cgroups-per-qos=false --enforce-node-allocatable=`: no kubepods cgroups, the
//!   containers' cgroups are dockerd's own as for any container;
//! - `modprobe` on kubelet's PATH is a stub (its network plugin loads br_netfilter).
//!
//! There is no scheduler: the test binds the Deployment's pods to the node as
//! kube-scheduler would (the pods/binding subresource).

mod common;
#[path = "../../berth-kube/tests/common/k8s.rs"]
mod k8s_cp;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use berth_deploy::DeployFile;
use berth_kube::pull::PullCredentials;
use berth_kube::render::{RenderInput, render};
use berth_kube::{K8sConfig, Kube, KubeOptions};
use berth_testutil::netns::{Host, Lab};
use common::*;
use k8s_cp::{ControlPlane, TOKEN, control_plane};

/// The registry, on the loopback of the node's network namespace (dockerd counts
/// 127.0.0.0/8 as insecure, so plain HTTP needs no flag).
const REGISTRY: &str = "127.0.0.1:5000";
/// The same registry (listening on every address of the node's namespace) as pods reach
/// it: the node's end of their bridge.
const POD_SIDE_REGISTRY: &str = "10.94.0.1:5000";
/// The node dockerd's bridge (inside the node's namespace).
const BRIDGE: &str = "bkubelet";
const BRIDGE_ADDR: &str = "10.94.0.1/24";
/// The node dockerd's runtime: runc with a negative `oomScoreAdj` of the bundle made 0,
/// and the capabilities this machine's root lacks (its bounding set) taken out of the
/// bundle. dockershim gives every pod sandbox -998 (and Guaranteed pods' containers
/// too), and lowering a score needs CAP_SYS_RESOURCE, which root here lacks: runc fails
/// with "can't get final child's PID from pipe: EOF"; a privileged container asks for
/// every capability, and runc fails with "unable to apply caps" on the one missing.
fn runc_clamp() -> String {
    let drop: String = capabilities_not_held()
        .iter()
        .map(|c| format!(r#" -e 's/"CAP_{c}",//g' -e 's/,"CAP_{c}"//g' -e 's/\["CAP_{c}"\]/[]/g'"#))
        .collect();
    format!(
        r#"#!/bin/sh
prev=
for a in "$@"; do
  if [ "$prev" = --bundle ] || [ "$prev" = -b ]; then
    [ -f "$a/config.json" ] && sed -i -e 's/"oomScoreAdj":-[0-9]*/"oomScoreAdj":0/'{drop} "$a/config.json"
  fi
  prev=$a
done
exec runc "$@"
"#
    )
}
/// The sandbox ("pause") image kubelet starts each pod with, made locally.
const PAUSE: &str = "berth-test/pause:1";

fn kubelet_bin() -> PathBuf {
    std::env::var_os("BERTH_K8S_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/berth-k8s/current/bin"))
        .join("kubelet")
}

/// The node: its dockerd and kubelet under one supervising shell in a private mount
/// namespace (`unshare --mount`), stopped (containers removed, dockerd stopped) on drop
/// or when the test process dies.
struct Node {
    supervisor: Child,
    dir: PathBuf,
    socket: PathBuf,
}

impl Node {
    /// kubelet listens on `address`, an address of this machine (a test's veth end, not
    /// 127.0.0.1: kubelet refuses a loopback node IP), which is also the node's
    /// InternalIP, where the API server reaches kubelet for pods' logs.
    fn start(cp: &ControlPlane, host: &Host, dir: &Path, name: &str, address: &str) -> Node {
        std::fs::create_dir_all(dir.join("sysctl")).unwrap();
        std::fs::create_dir_all(dir.join("fakebin")).unwrap();
        for (name, text) in [
            ("modprobe", "#!/bin/sh\nexit 0\n"),
            ("runc-clamp", runc_clamp().as_str()),
        ] {
            let path = dir.join("fakebin").join(name);
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .unwrap();
        }
        let ip = |args: &[&str]| run(Command::new("ip").arg("-n").arg(&host.ns).args(args));
        ip(&[
            "link",
            "add",
            BRIDGE,
            "address",
            "02:42:0a:5e:00:01",
            "type",
            "bridge",
        ]);
        ip(&["addr", "add", BRIDGE_ADDR, "dev", BRIDGE]);
        ip(&["link", "set", BRIDGE, "up"]);
        let socket = dir.join("docker/docker.sock");
        let port = || free_port().to_string();
        let script = format!(
            r#"
set -u
D={dir}
fail() {{ echo "node: $*" >&2; exit 1; }}
# The values kubelet wants, in regular files over the kernel's: it reads them, finds
# them right, and never writes (--protect-kernel-defaults would refuse to anyway).
for kv in vm/overcommit_memory=1 vm/panic_on_oom=0 kernel/panic=10 kernel/panic_on_oops=1 \
  kernel/keys/root_maxkeys=1000000 kernel/keys/root_maxbytes=25000000 \
  net/bridge/bridge-nf-call-iptables=1 net/bridge/bridge-nf-call-ip6tables=1; do
  k=${{kv%%=*}}; f=$D/sysctl/$(echo "$k" | tr / .)
  echo "${{kv#*=}}" >"$f"
  [ -e "/proc/sys/$k" ] || continue
  mount --bind "$f" "/proc/sys/$k" || fail "cannot cover /proc/sys/$k"
done
mount -t tmpfs tmpfs /var/lib || fail "cannot cover /var/lib"
mount -t tmpfs tmpfs /var/log || fail "cannot cover /var/log"
mkdir -p $D/docker
nsenter --net=/run/netns/{ns} -- dockerd --data-root $D/docker/data --exec-root $D/docker/exec \
  --pidfile $D/docker/docker.pid -H unix://{socket} --bridge {bridge} \
  --iptables=false --ip-masq=false --ip-forward=false \
  --add-runtime clamp=$D/fakebin/runc-clamp --default-runtime clamp >$D/dockerd.log 2>&1 &
dockerd=$!
for i in $(seq 1 300); do [ -S {socket} ] && [ -s $D/docker/docker.pid ] && break; sleep 0.2; done
[ -S {socket} ] || fail "dockerd did not come up"
# kubelet's cAdvisor and dockershim's oom-score tuning look for "the" docker daemon here.
for f in sock pid; do
  [ -e /var/run/docker.$f ] || fail "/var/run/docker.$f is missing (scripts/start-dockerd)"
done
mount --bind {socket} /var/run/docker.sock || fail "cannot cover /var/run/docker.sock"
mount --bind $D/docker/docker.pid /var/run/docker.pid || fail "cannot cover /var/run/docker.pid"
PATH=$D/fakebin:$PATH {kubelet} --kubeconfig={kubeconfig} --hostname-override={name} --register-node=true \
  --container-runtime=docker --docker-endpoint=unix://{socket} \
  --container-runtime-endpoint=unix://$D/dockershim.sock --experimental-dockershim-root-directory=$D/dockershim \
  --root-dir=$D/kubelet --cert-dir=$D/kubelet/pki --volume-plugin-dir=$D/volume-plugins \
  --pod-infra-container-image={pause} --network-plugin= --hairpin-mode=none \
  --cgroup-driver=cgroupfs --cgroups-per-qos=false --enforce-node-allocatable= \
  --fail-swap-on=false --protect-kernel-defaults=true --make-iptables-util-chains=false \
  --node-ip={address} --address={address} --port={kport} --healthz-bind-address=127.0.0.1 --healthz-port={hport} --read-only-port=0 \
  --eviction-hard='memory.available<1Mi,nodefs.available<1%,imagefs.available<1%,nodefs.inodesFree<1%' \
  --image-gc-high-threshold=100 --image-gc-low-threshold=99 \
  --v=2 >$D/kubelet.log 2>&1 &
kubelet=$!
stop() {{
  kill $kubelet 2>/dev/null; wait $kubelet
  ids=$(docker -H unix://{socket} ps -aq)
  [ -n "$ids" ] && docker -H unix://{socket} rm -f $ids >/dev/null
  kill $dockerd 2>/dev/null; wait $dockerd
  exit 0
}}
trap stop TERM INT
while kill -0 {parent} 2>/dev/null && kill -0 $kubelet 2>/dev/null; do sleep 1 & wait $!; done
stop
"#,
            dir = dir.display(),
            ns = host.ns,
            socket = socket.display(),
            bridge = BRIDGE,
            kubelet = kubelet_bin().display(),
            kubeconfig = cp.kubeconfig.display(),
            pause = PAUSE,
            kport = port(),
            hport = port(),
            parent = std::process::id(),
        );
        let supervisor = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "bash", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("node.log")).unwrap())
            .spawn()
            .expect("start the node");
        let mut node = Node {
            supervisor,
            dir: dir.to_path_buf(),
            socket,
        };
        let start = Instant::now();
        while !node.docker(&["version"]).success {
            if let Some(status) = node.supervisor.try_wait().unwrap() {
                panic!("the node stopped ({status}): {}", node.logs());
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "the node's dockerd did not come up: {}",
                node.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        node
    }

    /// Gives the node its sandbox image and waits until it registers as Ready.
    fn ready(&self, cp: &ControlPlane, dir: &Path, name: &str) {
        let tar = busybox_rootfs_tar(dir);
        let imported = self.docker(&[
            "import",
            "--change",
            r#"CMD ["sleep", "2147483647"]"#,
            tar.to_str().unwrap(),
            PAUSE,
        ]);
        assert!(imported.success, "{}", imported.stderr);
        let start = Instant::now();
        loop {
            let (code, body) = api(cp, "GET", &format!("/api/v1/nodes/{name}"), None);
            if code == 200 {
                let n: serde_json::Value = serde_json::from_str(&body).unwrap();
                let ready = n["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True");
                if ready {
                    return;
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(180),
                "node {name} did not become Ready: {code} {body}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// `docker logs` of the container a pod's container `status` names.
    fn container_logs(&self, status: &serde_json::Value) -> Output {
        let id = status["containerID"]
            .as_str()
            .unwrap()
            .trim_start_matches("docker://");
        self.docker(&["logs", id])
    }

    fn docker(&self, args: &[&str]) -> Output {
        output(
            Command::new(docker())
                .arg("-H")
                .arg(format!("unix://{}", self.socket.display()))
                .args(args),
        )
    }

    /// The last lines of the node's, dockerd's and kubelet's logs.
    fn logs(&self) -> String {
        ["node.log", "dockerd.log", "kubelet.log"]
            .iter()
            .map(|f| {
                let s = std::fs::read_to_string(self.dir.join(f)).unwrap_or_default();
                let lines: Vec<&str> = s.lines().collect();
                format!(
                    "--- {f}:\n{}",
                    lines[lines.len().saturating_sub(25)..].join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.supervisor.id().to_string()])
            .status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(60) {
            if self.supervisor.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.supervisor.kill();
        let _ = self.supervisor.wait();
    }
}

/// `berth registry serve` with basic auth in the node's network namespace, killed on drop.
struct Registry(Child);

impl Registry {
    /// On `addr` of the node's namespace.
    fn start(host: &Host, dir: &Path, addr: &str) -> Registry {
        let htpasswd = dir.join("htpasswd");
        run(Command::new("htpasswd")
            .args(["-Bbc"])
            .arg(&htpasswd)
            .args(["deploy", "s3cret"]));
        let mut child = host
            .command(berth_bin())
            .arg("--root")
            .arg(dir.join("registry"))
            .args(["registry", "serve", "--addr", addr, "--htpasswd"])
            .arg(&htpasswd)
            .env("BERTH_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.join("registry.log")).unwrap())
            .spawn()
            .expect("spawn berth registry serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.contains("listening"), "{line:?}");
        Registry(child)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The API server's answer to `method path` (with a JSON `body`), and its status code.
fn api(cp: &ControlPlane, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let mut c = Command::new("curl");
    c.args([
        "-s",
        "--max-time",
        "10",
        "-w",
        "\n%{http_code}",
        "-X",
        method,
    ])
    .arg("--cacert")
    .arg(cp.dir.join("certs/apiserver.crt"))
    .args(["-H", &format!("Authorization: Bearer {TOKEN}")]);
    if let Some(b) = body {
        c.args(["-H", "Content-Type: application/json", "--data-binary", b]);
    }
    let out = c.arg(format!("{}{path}", cp.url)).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.parse().unwrap_or(0), body.to_owned())
}

fn get(cp: &ControlPlane, path: &str) -> serde_json::Value {
    let (code, body) = api(cp, "GET", path, None);
    assert_eq!(code, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// A thread running `round` over and over until dropped; a panic in it fails the test
/// when it is dropped.
struct Looping {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Looping {
    fn start(mut round: impl FnMut() + Send + 'static) -> Looping {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                round();
            }
        });
        Looping {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Looping {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take()
            && let Err(panic) = t.join()
            && !std::thread::panicking()
        {
            std::panic::resume_unwind(panic);
        }
    }
}

/// What kube-scheduler would do: binds every pod of `namespaces` without a node to
/// `node`, until dropped.
struct Binder {
    _binding: Looping,
}

impl Binder {
    fn start(cp: &'static ControlPlane, namespaces: Vec<String>, node: String) -> Binder {
        let binding = Looping::start(move || {
            for ns in &namespaces {
                let pods = get(
                    cp,
                    &format!("/api/v1/namespaces/{ns}/pods?fieldSelector=spec.nodeName%3D"),
                );
                for p in pods["items"].as_array().into_iter().flatten() {
                    let name = p["metadata"]["name"].as_str().unwrap();
                    let binding = serde_json::json!({
                        "apiVersion": "v1", "kind": "Binding",
                        "metadata": {"name": name},
                        "target": {"apiVersion": "v1", "kind": "Node", "name": node},
                    });
                    let (code, body) = api(
                        cp,
                        "POST",
                        &format!("/api/v1/namespaces/{ns}/pods/{name}/binding"),
                        Some(&binding.to_string()),
                    );
                    // 409: bound meanwhile (or gone).
                    assert!(
                        code == 201 || code == 409 || code == 404,
                        "bind {ns}/{name}: {code} {body}"
                    );
                }
            }
            std::thread::sleep(Duration::from_millis(300));
        });
        Binder { _binding: binding }
    }
}

const FILE: &str = r#"
[deploy.registry]
address = "127.0.0.1:5000"
[deploy.roles.web]
hosts = ["h"]
[deploy.services.web]
image = "web:v1"
roles = ["web"]
command = ["sh", "-c", "echo berth-pod-ran; exec sleep 3600"]
"#;

/// berth's objects for FILE's `web` with `image` into `ns` (pull identity first: with
/// `creds` the namespace gets berth's pull secret), applied.
async fn deploy(cp: &ControlPlane, ns: &str, image: &str, creds: Option<&PullCredentials>) {
    deploy_file(cp, ns, image, creds, FILE).await;
}

/// [`deploy`] of the service `web` of deploy file `file`.
async fn deploy_file(
    cp: &ControlPlane,
    ns: &str,
    image: &str,
    creds: Option<&PullCredentials>,
    file: &str,
) {
    let kube = Kube::connect(&KubeOptions {
        kubeconfig: Some(cp.kubeconfig.clone()),
        context: None,
        namespace: Some(ns.to_owned()),
        force_conflicts: false,
        network: Default::default(),
    })
    .await
    .unwrap();
    kube.ensure_namespace().await.unwrap();
    let config = K8sConfig::parse(file, Path::new("berth.toml")).unwrap();
    let file = DeployFile::parse(file, Path::new("berth.toml")).unwrap();
    let identity = berth_kube::pull::ensure(&kube, &config, creds)
        .await
        .unwrap();
    let none = BTreeMap::new();
    let rendered = render(&RenderInput {
        service: &file.services["web"],
        image,
        version: "v1",
        secrets: &none,
        config: &config,
        identity: &identity,
    })
    .unwrap();
    berth_kube::rollout::apply_all(&kube, &[rendered], &|_| {})
        .await
        .unwrap();
}

/// The error of berth's rollout wait for service `web` of `ns`, which must fail.
async fn failed_rollout(cp: &ControlPlane, ns: &str) -> String {
    let kube = Kube::connect(&KubeOptions {
        kubeconfig: Some(cp.kubeconfig.clone()),
        namespace: Some(ns.to_owned()),
        ..Default::default()
    })
    .await
    .unwrap();
    berth_kube::rollout::wait(&kube, "web", Duration::from_secs(1), &|_| {})
        .await
        .unwrap_err()
        .to_string()
}

/// Polls the pods of `ns` until `f` finds what it looks for in one.
fn wait_pod<T>(
    cp: &ControlPlane,
    node: &Node,
    ns: &str,
    what: &str,
    f: impl Fn(&serde_json::Value) -> Option<T>,
) -> T {
    let start = Instant::now();
    loop {
        let pods = get(cp, &format!("/api/v1/namespaces/{ns}/pods"));
        if let Some(v) = pods["items"].as_array().into_iter().flatten().find_map(&f) {
            return v;
        }
        // A hang guard, not a timing assertion: pulls here take seconds.
        assert!(
            start.elapsed() < Duration::from_secs(180),
            "gave up waiting for {what} in {ns}; pods: {}\n{}",
            serde_json::to_string_pretty(&pods["items"]).unwrap(),
            node.logs()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// One node at a time: each test runs a kubelet and a dockerd of its own.
static ONE_NODE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The control plane, when kubelet and the node's tools are here (else a skip).
fn prerequisites() -> Option<&'static ControlPlane> {
    if !kubelet_bin().exists() {
        berth_testutil::skip(&format!(
            "{} is missing: run scripts/k8s-envtest (or set BERTH_K8S_BIN)",
            kubelet_bin().display()
        ));
        return None;
    }
    let cp = control_plane()?;
    if !(require("skopeo") && require("htpasswd") && require("unshare") && require("dockerd")) {
        return None;
    }
    if !std::path::Path::new("/var/run/docker.pid").exists() {
        berth_testutil::skip("/var/run/docker.pid is missing (scripts/start-dockerd)");
        return None;
    }
    Some(cp)
}

#[tokio::test(flavor = "multi_thread")]
async fn pods_pull_from_berths_registry_only_with_the_pull_secret() {
    let Some(cp) = prerequisites() else { return };
    let _one = ONE_NODE.lock().await;
    let dir = tempfile::Builder::new()
        .prefix("berth-kubelet-")
        .tempdir()
        .unwrap();
    let mut lab = Lab::new("kubelet");
    let host = lab.host("node");
    // kubelet's address: a veth end on this machine.
    lab.link_root(&host, "10.94.2.1/30", "10.94.2.2/30");
    let node_name = format!("berth-node-{}", std::process::id());
    let node = Node::start(cp, &host, &dir.path().join("node"), &node_name, "10.94.2.1");
    let _registry = Registry::start(&host, dir.path(), REGISTRY);

    // The image in berth's registry (pushed with the credentials), and the sandbox image
    // in the node's dockerd.
    let layout = dir.path().join("layout");
    busybox_layout(&layout, "v1");
    let digest_file = dir.path().join("digest");
    run(host
        .command("skopeo")
        .args([
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            "--dest-creds",
            "deploy:s3cret",
            "--digestfile",
        ])
        .arg(&digest_file)
        .arg(format!("oci:{}:v1", layout.display()))
        .arg(format!("docker://{REGISTRY}/web:v1")));
    let digest = std::fs::read_to_string(&digest_file).unwrap();
    let image = format!("{REGISTRY}/web@{}", digest.trim());
    // What the node's dockerd gets without credentials: 401 with a Basic challenge.
    let anonymous = run(host.command("curl").args([
        "-s",
        "-o",
        "/dev/null",
        "-D",
        "-",
        &format!("http://{REGISTRY}/v2/web/manifests/{}", digest.trim()),
    ]));
    assert!(
        anonymous.starts_with("HTTP/1.1 401") && anonymous.contains("Basic realm"),
        "{anonymous}"
    );
    node.ready(cp, dir.path(), &node_name);

    let pid = std::process::id();
    let (without, with) = (format!("kl{pid}-nosecret"), format!("kl{pid}-secret"));
    let crash = format!("kl{pid}-crash");
    let _binder = Binder::start(
        cp,
        vec![without.clone(), with.clone(), crash.clone()],
        node_name.clone(),
    );

    // Without berth's pull secret first: once the node holds the image, kubelet would
    // start it for any pod naming it (IfNotPresent), secret or not.
    deploy(cp, &without, &image, None).await;
    let (reason, message) = wait_pod(cp, &node, &without, "a failed pull", |p| {
        let w = &p["status"]["containerStatuses"][0]["state"]["waiting"];
        let reason = w["reason"].as_str()?;
        (reason == "ErrImagePull" || reason == "ImagePullBackOff").then(|| {
            (
                reason.to_owned(),
                w["message"].as_str().unwrap_or("").to_owned(),
            )
        })
    });
    let spec = &get(cp, &format!("/api/v1/namespaces/{without}/pods"))["items"][0]["spec"];
    assert_eq!(spec["serviceAccountName"], "berth");
    assert!(spec["imagePullSecrets"].is_null(), "{spec}");
    let events = get(cp, &format!("/api/v1/namespaces/{without}/events"));
    let failed: Vec<String> = events["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["reason"] == "Failed")
        .filter_map(|e| e["message"].as_str().map(str::to_owned))
        .collect();
    // dockerd's words for the registry's 401 with a Basic challenge (checked above).
    assert!(
        failed
            .iter()
            .any(|m| m.contains(&image) && m.contains("no basic auth credentials")),
        "{reason}: {message}; events: {failed:?}"
    );
    eprintln!("without the pull secret: {reason}: {message}; events: {failed:?}");
    // berth's own rollout wait says the same: it names the pod, its container's waiting
    // reason and the pod's events, where the registry's refusal is.
    let err = failed_rollout(cp, &without).await;
    let pod_name =
        get(cp, &format!("/api/v1/namespaces/{without}/pods"))["items"][0]["metadata"]["name"]
            .as_str()
            .unwrap()
            .to_owned();
    assert!(err.contains("rollout of web failed"), "{err}");
    assert!(err.contains(&format!("pod {pod_name}: Pending")), "{err}");
    assert!(
        err.contains("container web: waiting: ErrImagePull")
            || err.contains("container web: waiting: ImagePullBackOff"),
        "{err}"
    );
    assert!(
        err.lines()
            .any(|l| l.contains("event Warning Failed") && l.contains("no basic auth credentials")),
        "{err}"
    );
    let pulled = node.docker(&["image", "ls", "--format", "{{.Repository}}"]);
    assert!(!pulled.stdout.contains(REGISTRY), "{}", pulled.stdout);

    // With it: the pod runs, its container is the registry's image.
    let creds = PullCredentials {
        registry: REGISTRY.into(),
        username: "deploy".into(),
        password: "s3cret".into(),
    };
    deploy(cp, &with, &image, Some(&creds)).await;
    let pod = wait_pod(cp, &node, &with, "a running pod", |p| {
        (p["status"]["phase"] == "Running" && p["status"]["containerStatuses"][0]["ready"] == true)
            .then(|| p.clone())
    });
    let pulls: Vec<&str> = pod["spec"]["imagePullSecrets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(pulls, ["berth-pull"]);
    assert_eq!(pod["spec"]["nodeName"], node_name.as_str());
    let status = &pod["status"]["containerStatuses"][0];
    assert!(
        status["imageID"].as_str().unwrap().ends_with(digest.trim()),
        "{status}"
    );
    let logs = node.container_logs(status);
    assert!(logs.success, "{}", logs.stderr);
    assert_eq!(logs.stdout.trim(), "berth-pod-ran");

    // A container that exits: once it has, the rollout's error carries its last log
    // lines, which the API server reads from kubelet at the node's address.
    let crashing = FILE.replace(
        "echo berth-pod-ran; exec sleep 3600",
        "echo berth-pod-crashed-here; exit 3",
    );
    deploy_file(cp, &crash, &image, Some(&creds), &crashing).await;
    wait_pod(cp, &node, &crash, "a container that exited", |p| {
        let s = &p["status"]["containerStatuses"][0];
        (s["restartCount"].as_u64().unwrap_or(0) > 0 || !s["state"]["terminated"].is_null())
            .then_some(())
    });
    let err = failed_rollout(cp, &crash).await;
    assert!(
        err.lines()
            .any(|l| l.trim() == "log: berth-pod-crashed-here"),
        "{err}"
    );
    assert!(err.contains("exited 3"), "{err}");

    // The node leaves the cluster with the test.
    let _ = api(cp, "DELETE", &format!("/api/v1/nodes/{node_name}"), None);
}

/// What kube-proxy does for a NodePort, on this machine's 127.0.0.1 (the node's address
/// here, kubelet's `--node-ip`): a connection to the port goes to a ready address of the
/// Service's Endpoints, which the controller-manager's endpoint controller keeps from the
/// pod's readiness (kubelet probes it). Stops when dropped.
struct NodePortProxy {
    port: u16,
    _forwarding: Looping,
}

impl NodePortProxy {
    /// Listens on a free port of the default NodePort range (30000-32767).
    fn start(cp: &'static ControlPlane, ns: String, service: String) -> NodePortProxy {
        let listener = (30000 + std::process::id() % 2000..32768)
            .find_map(|p| std::net::TcpListener::bind(("127.0.0.1", p as u16)).ok())
            .expect("a free port in the NodePort range");
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let forwarding = Looping::start(move || {
            let client = match listener.accept() {
                Ok((c, _)) => c,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(20));
                    return;
                }
                Err(e) => panic!("node port {port}: accept: {e}"),
            };
            // No ready endpoint: the connection is closed, as kube-proxy rejects it.
            let Some(backend) = ready_endpoint(cp, &ns, &service) else {
                return;
            };
            client.set_nonblocking(false).unwrap();
            std::thread::spawn(move || {
                if let Ok(server) = std::net::TcpStream::connect(&backend) {
                    splice(client, server);
                }
            });
        });
        NodePortProxy {
            port,
            _forwarding: forwarding,
        }
    }
}

/// `ip:port` of the first ready address of Endpoints `ns/name`.
fn ready_endpoint(cp: &ControlPlane, ns: &str, name: &str) -> Option<String> {
    let (code, body) = api(
        cp,
        "GET",
        &format!("/api/v1/namespaces/{ns}/endpoints/{name}"),
        None,
    );
    (code == 200).then_some(())?;
    let e: serde_json::Value = serde_json::from_str(&body).ok()?;
    let subset = &e["subsets"][0];
    let ip = subset["addresses"][0]["ip"].as_str()?;
    let port = subset["ports"][0]["port"].as_u64()?;
    Some(format!("{ip}:{port}"))
}

/// Copies both ways between `a` and `b` until each side has closed.
fn splice(a: std::net::TcpStream, b: std::net::TcpStream) {
    let (mut a_read, mut b_write) = (a.try_clone().unwrap(), b.try_clone().unwrap());
    let up = std::thread::spawn(move || {
        let _ = std::io::copy(&mut a_read, &mut b_write);
        let _ = b_write.shutdown(std::net::Shutdown::Write);
    });
    let (mut b_read, mut a_write) = (b, a);
    let _ = std::io::copy(&mut b_read, &mut a_write);
    let _ = a_write.shutdown(std::net::Shutdown::Write);
    let _ = up.join();
}

/// Issue 12's satellite in the cluster, end to end: `berth satellite deploy --k8s` with
/// a NodePort applies the StatefulSet; the controller-manager makes its pod and binds its
/// claim to a hostPath volume on the node; kubelet runs the image scripts/satellite-image
/// made (privileged: runc and overlayfs nested in the pod); berth reads the first-start
/// token from the pod's log and enrolls through the node port, which the token names. A
/// build with a RUN step runs on that satellite. The pod is deleted, the StatefulSet makes
/// a new one on the same volume: the client's certificate is still accepted (the CA is the
/// volume's) and the build is a cache hit.
#[tokio::test(flavor = "multi_thread")]
async fn a_satellite_pod_builds_for_a_client_outside_the_cluster_and_survives_a_restart() {
    let Some(cp) = prerequisites() else { return };
    let _one = ONE_NODE.lock().await;
    let pid = std::process::id();
    let dir = tempfile::Builder::new()
        .prefix("berth-kubesat-")
        .tempdir()
        .unwrap();
    let mut lab = Lab::new("kubesat");
    let host = lab.host("node");
    // kubelet (on this machine's network) reaches the pods' bridge, as its probes must:
    // a veth to the node's namespace, which forwards to the bridge.
    let root_end = lab.link_root(&host, "10.94.1.1/30", "10.94.1.2/30");
    run(Command::new("ip").args([
        "route",
        "add",
        "10.94.0.0/24",
        "via",
        "10.94.1.2",
        "dev",
        &root_end,
    ]));
    run(host
        .command("sh")
        .args(["-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"]));
    let node_name = format!("berth-satnode-{pid}");
    // kubelet on the veth's end here: the node's address, where the API server asks
    // kubelet for the satellite's log.
    let node = Node::start(cp, &host, &dir.path().join("node"), &node_name, "10.94.1.1");
    node.ready(cp, dir.path(), &node_name);

    // The satellite's image, made by scripts/satellite-image with the berth under test and
    // loaded into the node's dockerd (which cannot reach berth's registry proxy on this
    // machine's loopback, so berth streams a tar instead).
    let image = format!("berth-test/satellite:k{pid}");
    let made = output_ok(
        Command::new(repo_root().join("scripts/satellite-image"))
            .arg(&image)
            .env("BERTH", berth_bin())
            .env("BERTH_ROOT", dir.path().join("image-root"))
            .env("XDG_CONFIG_HOME", dir.path().join("image-config"))
            .env("DOCKER_HOST", format!("unix://{}", node.socket.display()))
            .env("BERTH_LOG", "warn"),
    );
    assert!(made.stderr.contains("loaded"), "{}", made.stderr);

    // No provisioner here: the claim the StatefulSet makes (root-sat-0) gets a hostPath
    // volume on the node, bound by the controller-manager.
    let ns = format!("ks{pid}");
    let pv_name = format!("berth-sat-{pid}");
    let sat_root = dir.path().join("satellite-root");
    let pv = serde_json::json!({
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": pv_name},
        "spec": {
            "capacity": {"storage": "1Gi"},
            "accessModes": ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Retain",
            "hostPath": {"path": sat_root, "type": "DirectoryOrCreate"},
            "claimRef": {"namespace": ns, "name": "root-sat-0"},
        },
    });
    let (code, body) = api(
        cp,
        "POST",
        "/api/v1/persistentvolumes",
        Some(&pv.to_string()),
    );
    assert_eq!(code, 201, "{body}");
    let _binder = Binder::start(cp, vec![ns.clone()], node_name.clone());
    let proxy = NodePortProxy::start(cp, ns.clone(), "sat".into());
    let port = proxy.port.to_string();

    let client = || {
        let mut c = Command::new(berth_bin());
        c.env("XDG_CONFIG_HOME", dir.path().join("client-config"))
            .env("BERTH_LOG", "warn")
            .arg("--root")
            .arg(dir.path().join("client-root"));
        c
    };
    // The satellite reaches the node's registry through the pods' bridge, over HTTP.
    let sat_config = dir.path().join("satellite.toml");
    std::fs::write(
        &sat_config,
        format!("[registries.\"{POD_SIDE_REGISTRY}\"]\nhttp = true\n"),
    )
    .unwrap();
    let deployed = output(
        client()
            .args(["satellite", "deploy", "--k8s", "--kubeconfig"])
            .arg(&cp.kubeconfig)
            .arg("--satellite-config")
            .arg(&sat_config)
            .args(["--namespace", &ns, "--name", "sat", "--image", &image])
            .args([
                "--storage",
                "1Gi",
                "--service-type",
                "NodePort",
                "--node-port",
                &port,
            ])
            .args([
                "--advertise",
                "127.0.0.1",
                "--enroll",
                "--client-name",
                "outside",
            ])
            .args(["--timeout", "300s"]),
    );
    assert!(
        deployed.success,
        "{}\n{}\n{}",
        deployed.stdout,
        deployed.stderr,
        node.logs()
    );
    assert!(
        deployed.stdout.contains(&format!(
            "enrolled with satellite sat (127.0.0.1:{port}) as outside"
        )),
        "{}",
        deployed.stdout
    );
    let svc = get(cp, &format!("/api/v1/namespaces/{ns}/services/sat"));
    assert_eq!(svc["spec"]["type"], "NodePort");
    assert_eq!(
        svc["spec"]["ports"][0]["nodePort"].as_u64(),
        Some(proxy.port.into())
    );
    let claim = get(
        cp,
        &format!("/api/v1/namespaces/{ns}/persistentvolumeclaims/root-sat-0"),
    );
    assert_eq!(claim["status"]["phase"], "Bound");
    assert_eq!(claim["spec"]["volumeName"], pv_name.as_str());
    let pod = get(cp, &format!("/api/v1/namespaces/{ns}/pods/sat-0"));
    assert_eq!(pod["spec"]["serviceAccountName"], "berth");
    assert_eq!(
        pod["spec"]["containers"][0]["securityContext"]["privileged"],
        true
    );
    // The satellite's root is the volume: its CA is on the node's disk.
    assert!(sat_root.join("satellite/pki/ca.crt").is_file());

    // A build with a RUN step, on the satellite in the pod.
    let ctx = dir.path().join("ctx");
    std::fs::create_dir(&ctx).unwrap();
    std::fs::copy("/bin/busybox", ctx.join("busybox")).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM scratch\nCOPY busybox /bin/busybox\n\
         RUN [\"/bin/busybox\", \"sh\", \"-c\", \"/bin/busybox echo built in the pod > /out\"]\n",
    )
    .unwrap();
    let build = |dest: &str| {
        output(
            client()
                .args(["build", "--progress", "plain", "--satellite", "sat"])
                .args(["-t", "from-the-pod:1", "-o"])
                .arg(format!(
                    "type=local,dest={}",
                    dir.path().join(dest).display()
                ))
                .arg(&ctx),
        )
    };
    let first = build("out1");
    assert!(first.success, "{}\n{}", first.stderr, node.logs());
    assert!(
        first.stderr.contains("on satellite sat"),
        "{}",
        first.stderr
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("out1/out")).unwrap(),
        "built in the pod\n"
    );

    // The pod goes; the StatefulSet makes another on the same claim.
    let old_uid = pod["metadata"]["uid"].as_str().unwrap().to_owned();
    let (code, body) = api(
        cp,
        "DELETE",
        &format!("/api/v1/namespaces/{ns}/pods/sat-0"),
        None,
    );
    assert_eq!(code, 200, "{body}");
    let new_ip = wait_pod(cp, &node, &ns, "the satellite's new pod, ready", |p| {
        (p["metadata"]["uid"] != old_uid.as_str()
            && p["status"]["containerStatuses"][0]["ready"] == true)
            .then(|| p["status"]["podIP"].as_str().map(str::to_owned))
            .flatten()
    });
    // The Service follows the new pod once the endpoint controller has seen it Ready
    // (kube-proxy would lag the same way).
    let start = Instant::now();
    while ready_endpoint(cp, &ns, "sat") != Some(format!("{new_ip}:8372")) {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the Service never pointed at the new pod {new_ip}: {:?}",
            ready_endpoint(cp, &ns, "sat")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let log = api(
        cp,
        "GET",
        &format!("/api/v1/namespaces/{ns}/pods/sat-0/log"),
        None,
    );
    assert_eq!(log.0, 200, "{}", log.1);
    assert!(!log.1.contains("first start"), "{}", log.1);
    let again = build("out2");
    assert!(again.success, "{}\n{}", again.stderr, node.logs());
    let run_cached = |stderr: &str| {
        stderr
            .lines()
            .any(|l| l.contains("built in the pod") && l.contains("CACHED"))
    };
    assert!(!run_cached(&first.stderr), "{}", first.stderr);
    assert!(run_cached(&again.stderr), "{}", again.stderr);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("out2/out")).unwrap(),
        "built in the pod\n"
    );

    // One command: the satellite in the pod builds the service, pushes it to the node's
    // registry by the name it reaches it by, and the cluster runs the digest it reported,
    // pulled by the node from its own name for that registry.
    let _registry = Registry::start(&host, dir.path(), "0.0.0.0:5000");
    let proj = dir.path().join("proj");
    std::fs::create_dir_all(proj.join("app")).unwrap();
    std::fs::copy("/bin/busybox", proj.join("app/busybox")).unwrap();
    std::fs::write(
        proj.join("app/Dockerfile"),
        "FROM scratch\nCOPY busybox /bin/busybox\n\
         RUN [\"/bin/busybox\", \"sh\", \"-c\", \"/bin/busybox echo served from the pod-built image > /msg\"]\n",
    )
    .unwrap();
    std::fs::write(
        proj.join("berth.toml"),
        format!(
            r#"
[deploy.registry]
address = "{REGISTRY}"
satellite_address = "{POD_SIDE_REGISTRY}"
username = "deploy"
password_env = "REG_PASSWORD"
[deploy.roles.web]
hosts = ["unused"]
[deploy.services.web]
image = "web:v1"
roles = ["web"]
command = ["/bin/busybox", "sh", "-c", "/bin/busybox cat /msg; exec /bin/busybox sleep 3600"]
build = {{ context = "app" }}
[k8s]
kubeconfig = "{kc}"
namespace = "{ns}"
"#,
            kc = cp.kubeconfig.display(),
        ),
    )
    .unwrap();
    let out = output(
        client()
            .current_dir(&proj)
            .args(["deploy", "--k8s", "--wait", "--timeout", "240s"])
            .env("BERTH_SATELLITE", "sat")
            .env("REG_PASSWORD", "s3cret"),
    );
    assert!(
        out.success,
        "{}\n{}\n{}",
        out.stdout,
        out.stderr,
        node.logs()
    );
    assert!(out.stdout.contains("web\tdeployed"), "{}", out.stdout);
    let said = format!(
        "push: satellite sat pushed web:v1 to {POD_SIDE_REGISTRY}/web:v1 ({POD_SIDE_REGISTRY}/web@sha256:"
    );
    assert!(out.stderr.contains(&said), "{said}\n{}", out.stderr);
    let d = get(
        cp,
        &format!("/apis/apps/v1/namespaces/{ns}/deployments/web"),
    );
    let image = d["spec"]["template"]["spec"]["containers"][0]["image"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        image.starts_with(&format!("{REGISTRY}/web@sha256:")),
        "{image}"
    );
    let pod = wait_pod(cp, &node, &ns, "the service's pod, running", |p| {
        (p["metadata"]["labels"]["app.kubernetes.io/name"] == "web"
            && p["status"]["containerStatuses"][0]["ready"] == true)
            .then(|| p.clone())
    });
    let status = &pod["status"]["containerStatuses"][0];
    let digest = image.rsplit_once('@').unwrap().1;
    assert!(
        status["imageID"].as_str().unwrap().ends_with(digest),
        "{status}"
    );
    let logs = node.container_logs(status);
    assert_eq!(logs.stdout.trim(), "served from the pod-built image");

    let _ = api(cp, "DELETE", &format!("/api/v1/namespaces/{ns}"), None);
    let _ = api(
        cp,
        "DELETE",
        &format!("/api/v1/persistentvolumes/{pv_name}"),
        None,
    );
    let _ = api(cp, "DELETE", &format!("/api/v1/nodes/{node_name}"), None);
}
