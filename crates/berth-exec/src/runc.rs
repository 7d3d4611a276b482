//! The runc executor: an OCI bundle (`config.json` + the mounted rootfs) per process.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

use berth_oci::Mount;
use serde_json::Value;

use crate::bundle::{BundleBuilder, hostname};
use crate::{Error, Executor, Meta, Network, Result, Stream, mount_rootfs};

/// Runs processes with Debian's `runc`.
#[derive(Debug)]
pub struct Runc {
    binary: PathBuf,
    bundles: PathBuf,
    /// Where `config.json` goes: memory (/run), since it holds the process's
    /// environment, which may carry secrets (`RUN --mount=type=secret,env=`).
    configs: PathBuf,
    state: PathBuf,
    canceled: std::sync::Arc<std::sync::atomic::AtomicBool>,
    nets: crate::net::NetPool,
    /// Whether [`Meta::privileged`] processes may run (see [`Runc::with_privileged`]).
    privileged: bool,
    /// A step network was made in advance ([`Executor::prepare`]).
    prepared: std::sync::Once,
}

static NEXT: AtomicU64 = AtomicU64::new(0);

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error + use<> {
    let path = path.to_path_buf();
    move |source| Error::Io { op, path, source }
}

impl Runc {
    /// An executor keeping bundles and runc state under `root`, using `runc` from PATH.
    /// Containers, mounts and bundles left by dead processes are removed first.
    pub fn new(root: &Path) -> Result<Runc> {
        let binary = find_runc().ok_or_else(|| {
            Error::Runtime(
                "runc is not installed or not on PATH; install it (apt-get install runc)".into(),
            )
        })?;
        let r = Runc {
            binary,
            bundles: root.join("bundles"),
            configs: config_dir(root),
            state: root.join("runc"),
            canceled: Default::default(),
            nets: Default::default(),
            privileged: false,
            prepared: std::sync::Once::new(),
        };
        for d in [&r.bundles, &r.state] {
            fs::create_dir_all(d).map_err(io("create directory", d))?;
        }
        private_dir(&r.configs)?;
        berth_snapshot::owner::register(&r.owners()).map_err(io("register in", &r.owners()))?;
        r.clean_leftovers();
        // The step network made in advance waits for `prepare`: a no-op rebuild needs
        // none, and making one costs a namespace, `ip` and a slirp4netns process.
        Ok(r)
    }

    /// Let privileged processes ([`Meta::privileged`]) run; an executor refuses them
    /// unless told so. Whoever makes the executor for a build grants this only when the
    /// build was granted `security.insecure` (a satellite: only when its operator allows
    /// it), so a frontend that forgot to check cannot run a privileged step anyway.
    pub fn with_privileged(mut self, allowed: bool) -> Runc {
        self.privileged = allowed;
        self
    }

    /// Create the private directory `config` of one container, inside `self.configs`
    /// (made again, privately, if another berth removed it when it was empty).
    fn config_dir_for(&self, config: &Path) -> Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        let make = || fs::DirBuilder::new().mode(0o700).create(config);
        match make() {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                private_dir(&self.configs)?;
                make().map_err(io("create bundle", config))
            }
            other => other.map_err(io("create bundle", config)),
        }
    }

    /// Where processes using this executor hold their owner locks.
    fn owners(&self) -> PathBuf {
        self.bundles.with_file_name("owners")
    }

    fn clean_leftovers(&self) {
        crate::cleanup_stale_mounts(&self.bundles, &self.owners());
        let Ok(entries) = fs::read_dir(&self.bundles) else {
            return;
        };
        for e in entries.flatten() {
            let id = e.file_name().to_string_lossy().into_owned();
            if !berth_snapshot::owner::is_gone(&self.owners(), &id) {
                continue;
            }
            tracing::info!(id, "removing a container left by a process that is gone");
            let _ = Command::new(&self.binary)
                .arg("--root")
                .arg(&self.state)
                .args(["delete", "--force", &id])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let _ = rustix::mount::unmount(
                e.path().join("rootfs"),
                rustix::mount::UnmountFlags::DETACH,
            );
            let _ = fs::remove_dir_all(self.configs.join(&id));
            let _ = fs::remove_dir_all(e.path());
        }
        // Configs whose bundle went first (a kill between the two removals).
        for e in fs::read_dir(&self.configs).into_iter().flatten().flatten() {
            let id = e.file_name().to_string_lossy().into_owned();
            if berth_snapshot::owner::is_gone(&self.owners(), &id) {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
}

/// `config.json`s live in memory, in /run (a tmpfs only root writes to, so nobody can
/// plant a directory or a link there first), one directory per data root, named by a
/// hash of its path; elsewhere (not root, no /run) under the data root.
fn config_dir(root: &Path) -> PathBuf {
    let run = Path::new("/run");
    if !rustix::process::geteuid().is_root() || !run.is_dir() {
        return root.join("bundle-configs");
    }
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    root.hash(&mut h);
    run.join(format!("berth-runc-{:016x}", h.finish()))
}

/// Create `dir` (mode 0700), or accept it only if it is a real directory of ours that
/// nobody else may enter.
fn private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    if let Some(parent) = dir.parent() {
        fs::create_dir_all(parent).map_err(io("create directory", parent))?;
    }
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io("create directory", dir)(e)),
    }
    let m = fs::symlink_metadata(dir).map_err(io("inspect", dir))?;
    if !m.is_dir() || m.uid() != rustix::process::geteuid().as_raw() || m.mode() & 0o077 != 0 {
        return Err(Error::Runtime(format!(
            "{} is not a private directory of this user (a link, someone else's, or open to others); remove it",
            dir.display()
        )));
    }
    Ok(())
}

impl Drop for Runc {
    fn drop(&mut self) {
        // The per-root directory in /run goes when its last container did (rmdir
        // fails, harmlessly, while another berth on the root has one there).
        let _ = fs::remove_dir(&self.configs);
    }
}

fn find_runc() -> Option<PathBuf> {
    find_binary("runc")
}

/// `name` on PATH, or in /usr/sbin or /usr/bin.
pub(crate) fn find_binary(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

impl Executor for Runc {
    fn run(
        &self,
        rootfs: &[Mount],
        mounts: &[Mount],
        meta: &Meta,
        output: &mut dyn FnMut(Stream, &[u8]),
    ) -> Result<i32> {
        if self.canceled.load(Ordering::SeqCst) {
            return Err(Error::Runtime("the build was canceled".into()));
        }
        if meta.privileged && !self.privileged {
            return Err(Error::Invalid(
                "a privileged step needs the entitlement security.insecure, which this build \
                 was not granted (berth build --allow security.insecure; on a satellite, its \
                 operator's --allow security.insecure)"
                    .into(),
            ));
        }
        let id = format!(
            "{}-{}",
            berth_snapshot::owner::token(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let bundle = self.bundles.join(&id);
        let root_dir = bundle.join("rootfs");
        let config = self.configs.join(&id);
        fs::create_dir_all(&root_dir).map_err(io("create bundle", &bundle))?;
        let result = (|| {
            self.config_dir_for(&config)?;
            // Held until the container is gone, then back to the pool.
            let lease = match meta.network {
                Network::Isolated if meta.privileged => Some(self.nets.acquire()?.discard()),
                Network::Isolated => Some(self.nets.acquire()?),
                Network::None | Network::Host => None,
            };
            let guard = mount_rootfs(rootfs, &root_dir)?;
            let mut bundle = BundleBuilder::new(&id)?
                .with_meta(meta)
                .with_mounts(mounts)
                .with_rootfs(&root_dir);
            if let Some(lease) = &lease {
                let etc = crate::net::write_etc(&config, hostname(meta), &meta.extra_hosts)?;
                bundle = bundle.with_network_namespace(&lease.path(), etc);
            } else if !meta.extra_hosts.is_empty() {
                // The host's hosts file (host network) or berth's own, plus the extras.
                let base = match meta.network {
                    Network::Host => fs::read_to_string("/etc/hosts").unwrap_or_default(),
                    _ => crate::net::hosts(hostname(meta), &[]),
                };
                let text = crate::net::with_extra_hosts(base, &meta.extra_hosts);
                let file = crate::net::write_etc_file(&config, "/etc/hosts", text)?;
                bundle = bundle.with_etc_file(file);
            }
            bundle.build(&config)?;
            let code = self.run_bundle(&id, &config, output);
            guard.unmount()?;
            code
        })();
        for dir in [&config, &bundle] {
            if let Err(e) = fs::remove_dir_all(dir) {
                tracing::warn!(bundle = %dir.display(), error = %e, "bundle not removed");
            }
        }
        result
    }

    fn cancel(&self) {
        // Each running container has a watcher that sees this and kills it.
        self.canceled.store(true, Ordering::SeqCst);
    }

    fn prepare(&self) {
        self.prepared.call_once(|| self.nets.prewarm());
    }
}

impl Runc {
    fn run_bundle(
        &self,
        id: &str,
        bundle: &Path,
        output: &mut dyn FnMut(Stream, &[u8]),
    ) -> Result<i32> {
        // runc's own messages go to a log of their own, so a failure of the runtime is
        // told apart from the process exiting non-zero.
        let log = bundle.join("runc.log");
        let mut child = Command::new(&self.binary)
            .arg("--root")
            .arg(&self.state)
            .arg("--log")
            .arg(&log)
            .args(["--log-format", "json", "run", "--bundle"])
            .arg(bundle)
            .arg(id)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Error::Runtime(format!("start {}: {e}", self.binary.display())))?;
        let (tx, rx) = mpsc::channel::<(Stream, Vec<u8>)>();
        let readers: Vec<_> = [
            (
                Stream::Stdout,
                Box::new(child.stdout.take().expect("piped")) as Box<dyn Read + Send>,
            ),
            (
                Stream::Stderr,
                Box::new(child.stderr.take().expect("piped")),
            ),
        ]
        .into_iter()
        .map(|(stream, mut r)| {
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 32 << 10];
                while let Ok(n) = r.read(&mut buf) {
                    if n == 0 || tx.send((stream, buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
            })
        })
        .collect();
        drop(tx);
        // Kill the container if the build is canceled while it runs. Polling the flag
        // (rather than killing from `cancel`) covers a cancel that lands while runc is
        // still creating the container, when `runc kill` would find nothing to kill.
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let watcher = {
            let (done, canceled) = (done.clone(), self.canceled.clone());
            let (binary, state, id) = (self.binary.clone(), self.state.clone(), id.to_string());
            std::thread::spawn(move || {
                while !done.load(Ordering::SeqCst) {
                    if canceled.load(Ordering::SeqCst) {
                        let _ = Command::new(&binary)
                            .arg("--root")
                            .arg(&state)
                            .args(["kill", "--all", &id, "KILL"])
                            .stdout(Stdio::null())
                            .stderr(Stdio::null())
                            .status();
                    }
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
            })
        };
        for (stream, chunk) in rx {
            output(stream, &chunk);
        }
        for r in readers {
            let _ = r.join();
        }
        let status = child.wait();
        done.store(true, Ordering::SeqCst);
        let _ = watcher.join();
        let status = status.map_err(|e| Error::Runtime(format!("wait for runc: {e}")))?;
        if let Some(msg) = runtime_error(&log) {
            return Err(Error::Runtime(msg));
        }
        use std::os::unix::process::ExitStatusExt;
        Ok(status
            .code()
            .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
    }
}

/// The first error runc logged, if any.
fn runtime_error(log: &Path) -> Option<String> {
    let text = fs::read_to_string(log).ok()?;
    text.lines().find_map(|l| {
        let v: Value = serde_json::from_str(l).ok()?;
        (v["level"] == "error").then(|| v["msg"].as_str().unwrap_or(l).to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_stay_in_memory_and_name_their_rootfs() {
        let dir = config_dir(Path::new("/var/lib/berth"));
        if rustix::process::geteuid().is_root() {
            assert!(dir.starts_with("/run"), "{}", dir.display());
        }
        assert_ne!(dir, config_dir(Path::new("/other/root")));
        let rootfs = Path::new("/var/lib/berth/bundles/x/rootfs");
        let meta = Meta {
            env: vec!["TOKEN=s3cret".into()],
            ..Meta::default()
        };
        let spec = BundleBuilder::new("x")
            .unwrap()
            .with_meta(&meta)
            .with_rootfs(rootfs)
            .spec()
            .unwrap();
        assert_eq!(spec.root().as_ref().unwrap().path(), rootfs);
        assert_eq!(
            spec.process().as_ref().unwrap().env().as_deref(),
            Some(&["TOKEN=s3cret".to_string()][..])
        );
    }
}
