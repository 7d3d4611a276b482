//! A real Kubernetes control plane for the tests: etcd, kube-apiserver and
//! kube-controller-manager 1.20 (built by scripts/k8s-envtest into
//! /var/cache/berth-k8s/current/bin, or BERTH_K8S_BIN), started once per test binary on
//! 127.0.0.1 with free ports, token auth for `system:masters` and RBAC. A supervising
//! shell stops them (apiserver and controller-manager before etcd) and removes their
//! directory when the test binary exits. Each test works in its own namespace.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The running control plane.
pub struct ControlPlane {
    /// Its directory (logs, certificates, etcd data).
    pub dir: PathBuf,
    /// A kubeconfig for it (context `envtest`).
    pub kubeconfig: PathBuf,
    /// `https://127.0.0.1:PORT`.
    pub url: String,
}

pub const TOKEN: &str = "envtest-admin-token";

fn bin_dir() -> PathBuf {
    std::env::var_os("BERTH_K8S_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/berth-k8s/current/bin"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn tail(path: &Path) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// The control plane, started on first use; `None` (after [`berth_testutil::skip`]) when
/// its binaries are not built.
pub fn control_plane() -> Option<&'static ControlPlane> {
    static CP: OnceLock<Result<ControlPlane, String>> = OnceLock::new();
    let cp = CP.get_or_init(|| {
        let bins = bin_dir();
        for b in ["etcd", "kube-apiserver", "kube-controller-manager"] {
            if !bins.join(b).exists() {
                return Err(format!(
                    "{} is missing: run scripts/k8s-envtest (or set BERTH_K8S_BIN)",
                    bins.join(b).display()
                ));
            }
        }
        Ok(start(&bins))
    });
    // Every test that needs it skips (and is recorded) on its own.
    cp.as_ref().map_err(|why| berth_testutil::skip(why)).ok()
}

fn start(bins: &Path) -> ControlPlane {
    let dir = tempfile::Builder::new()
        .prefix("berth-k8s-")
        .tempdir()
        .unwrap()
        .keep();
    let d = |p: &str| dir.join(p);
    let run = |cmd: &mut Command| {
        let out = cmd.output().expect("run openssl");
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(Command::new("openssl")
        .args(["genrsa", "-out"])
        .arg(d("sa.key"))
        .arg("2048"));
    run(Command::new("openssl")
        .args(["rsa", "-pubout", "-in"])
        .arg(d("sa.key"))
        .arg("-out")
        .arg(d("sa.pub")));
    std::fs::write(
        d("tokens.csv"),
        format!("{TOKEN},envtest-admin,uid-admin,system:masters\n"),
    )
    .unwrap();
    let (etcd_client, etcd_peer, api) = (free_port(), free_port(), free_port());
    let url = format!("https://127.0.0.1:{api}");
    let kubeconfig = d("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: envtest\n  cluster:\n    server: {url}\n    \
             certificate-authority: {}\nusers:\n- name: admin\n  user:\n    token: {TOKEN}\n\
             contexts:\n- name: envtest\n  context:\n    cluster: envtest\n    user: admin\n\
             current-context: envtest\n",
            d("certs/apiserver.crt").display()
        ),
    )
    .unwrap();
    let b = |n: &str| bins.join(n).display().to_string();
    let p = |n: &str| d(n).display().to_string();
    let script = format!(
        r#"
set -u
{etcd} --data-dir {data} --listen-client-urls http://127.0.0.1:{etcd_client} \
  --advertise-client-urls http://127.0.0.1:{etcd_client} \
  --listen-peer-urls http://127.0.0.1:{etcd_peer} --initial-advertise-peer-urls http://127.0.0.1:{etcd_peer} \
  --initial-cluster default=http://127.0.0.1:{etcd_peer} >{dir}/etcd.log 2>&1 &
etcd=$!
{apiserver} --etcd-servers=http://127.0.0.1:{etcd_client} --bind-address=127.0.0.1 --advertise-address=127.0.0.1 \
  --secure-port={api} --cert-dir={dir}/certs --service-cluster-ip-range=10.0.0.0/16 \
  --service-account-issuer=https://kubernetes.default.svc.cluster.local \
  --service-account-key-file={dir}/sa.pub --service-account-signing-key-file={dir}/sa.key \
  --token-auth-file={dir}/tokens.csv --authorization-mode=RBAC --allow-privileged=true --endpoint-reconciler-type=none \
  --kubelet-preferred-address-types=InternalIP \
  >{dir}/apiserver.log 2>&1 &
api=$!
for i in $(seq 1 600); do [ -s {dir}/certs/apiserver.crt ] && break; sleep 0.1; done
{kcm} --kubeconfig={dir}/kubeconfig --leader-elect=false \
  --controllers=serviceaccount-token,serviceaccount,root-ca-cert-publisher,deployment,replicaset,statefulset,namespace,garbagecollector,persistentvolume-binder,endpoint \
  --service-account-private-key-file={dir}/sa.key --root-ca-file={dir}/certs/apiserver.crt \
  --bind-address=127.0.0.1 --secure-port=0 --port=0 >{dir}/kcm.log 2>&1 &
kcm=$!
while kill -0 {parent} 2>/dev/null; do sleep 1; done
kill $kcm $api 2>/dev/null
for i in $(seq 1 50); do kill -0 $api 2>/dev/null || break; sleep 0.2; done
kill -9 $kcm $api 2>/dev/null
kill $etcd 2>/dev/null; wait
rm -rf {dir}
"#,
        etcd = b("etcd"),
        apiserver = b("kube-apiserver"),
        kcm = b("kube-controller-manager"),
        data = p("etcd"),
        dir = dir.display(),
        parent = std::process::id(),
    );
    // Never waited for: the supervisor outlives the test process on purpose.
    #[allow(clippy::zombie_processes)]
    Command::new("setsid")
        .args(["bash", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(d("supervisor.log")).unwrap())
        .spawn()
        .expect("start the control plane");
    // Ready: the apiserver answers /readyz and the controller-manager has made the
    // `default` ServiceAccount of `default` (its controllers run).
    let start = Instant::now();
    let curl = |path: &str| {
        Command::new("curl")
            .args(["-sf", "--max-time", "5", "--cacert"])
            .arg(d("certs/apiserver.crt"))
            .args(["-H", &format!("Authorization: Bearer {TOKEN}")])
            .arg(format!("{url}{path}"))
            .output()
            .is_ok_and(|o| o.status.success())
    };
    while !(curl("/readyz") && curl("/api/v1/namespaces/default/serviceaccounts/default")) {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the control plane did not come up in 120 s\netcd:\n{}\napiserver:\n{}\nkcm:\n{}",
            tail(&d("etcd.log")),
            tail(&d("apiserver.log")),
            tail(&d("kcm.log"))
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    ControlPlane {
        dir,
        kubeconfig,
        url,
    }
}
