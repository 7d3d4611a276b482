//! A runc bundle's `config.json`, built as oci-spec's runtime [`Spec`]: Docker's default
//! isolation for a build step (namespaces, capabilities, seccomp, masked and read-only
//! `/proc` paths) around the process a [`Meta`] describes.
//!
//! oci-spec's builders fill every field left unset from the type's `Default`, which
//! describes a different container (a shell with an `RLIMIT_NOFILE` of 1024, empty
//! annotations and cgroup resources, inheritable and ambient capabilities). What berth
//! does not set is therefore cleared explicitly after each build, and the unit tests
//! compare the whole document with the one berth wrote before it used these types
//! (`tests/fixtures/runc-config-*.json`).

use std::fs;
use std::path::{Path, PathBuf};

use berth_oci::Mount;
use oci_spec::OciSpecError;
use oci_spec::runtime::{
    Capabilities, Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxNamespace,
    LinuxNamespaceBuilder, LinuxNamespaceType, MountBuilder, ProcessBuilder, RootBuilder, Spec,
    SpecBuilder, UserBuilder,
};

use crate::{Error, Meta, Network, Result};

/// The capabilities Docker gives a container by default (bounding, effective and
/// permitted; none inheritable or ambient).
const CAPS: &[Capability] = &[
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// Docker's default masked paths: over each, runc mounts an empty read-only tmpfs (a
/// directory) or binds `/dev/null` (a file).
const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/sys/devices/virtual/powercap",
    "/sys/firmware",
];

/// Docker's default read-only paths.
const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// The file systems every container gets: (destination, type, source, options).
const BASE_MOUNTS: &[(&str, &str, &str, &[&str])] = &[
    ("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
    (
        "/dev",
        "tmpfs",
        "tmpfs",
        &["nosuid", "strictatime", "mode=755", "size=65536k"],
    ),
    (
        "/dev/pts",
        "devpts",
        "devpts",
        &[
            "nosuid",
            "noexec",
            "newinstance",
            "ptmxmode=0666",
            "mode=0620",
            "gid=5",
        ],
    ),
    (
        "/dev/shm",
        "tmpfs",
        "shm",
        &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
    ),
    (
        "/dev/mqueue",
        "mqueue",
        "mqueue",
        &["nosuid", "noexec", "nodev"],
    ),
    (
        "/sys",
        "sysfs",
        "sysfs",
        &["nosuid", "noexec", "nodev", "ro"],
    ),
];

/// Writes an OCI runtime bundle's `config.json`.
///
/// `BundleBuilder::new(id)?.with_meta(meta).with_mounts(mounts).build(dir)`; the id is
/// checked up front: 1–128 characters of `[A-Za-z0-9_.-]`, not starting with `.`, which
/// is what runc accepts as a container id and is safe as a directory name.
#[derive(Debug, Clone)]
pub struct BundleBuilder {
    id: String,
    meta: Meta,
    mounts: Vec<Mount>,
    rootfs: Option<PathBuf>,
    netns: Option<PathBuf>,
    etc: Vec<(&'static str, PathBuf)>,
}

impl BundleBuilder {
    /// Start a bundle for container `id`.
    pub fn new(id: &str) -> Result<BundleBuilder> {
        let ok = !id.is_empty()
            && id.len() <= 128
            && !id.starts_with('.')
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        if !ok {
            return Err(Error::Invalid(format!(
                "container id {id:?} must be 1-128 characters of [A-Za-z0-9_.-], not starting with '.'"
            )));
        }
        Ok(BundleBuilder {
            id: id.to_string(),
            meta: Meta::default(),
            mounts: Vec::new(),
            rootfs: None,
            netns: None,
            etc: Vec::new(),
        })
    }

    /// The process to run.
    pub fn with_meta(mut self, meta: &Meta) -> Self {
        self.meta = meta.clone();
        self
    }

    /// Mounts on top of the root file system (cache, secret and bind mounts).
    pub fn with_mounts(mut self, mounts: &[Mount]) -> Self {
        self.mounts = mounts.to_vec();
        self
    }

    /// The root file system at an absolute path (default: `rootfs/` beside
    /// `config.json`).
    pub fn with_rootfs(mut self, rootfs: &Path) -> Self {
        self.rootfs = Some(rootfs.to_path_buf());
        self
    }

    /// For [`Network::Isolated`]: the network namespace to join (without one, the
    /// container gets a new namespace with only loopback) and the files berth wrote for
    /// its `/etc/resolv.conf` and `/etc/hosts` (destination, file), bound read-only.
    pub fn with_network_namespace(
        mut self,
        path: &Path,
        etc: Vec<(&'static str, PathBuf)>,
    ) -> Self {
        self.netns = Some(path.to_path_buf());
        self.etc = etc;
        self
    }

    /// A file berth wrote, bound read-only over `dest` (an `/etc/` file), in any network
    /// mode; with the host's network it replaces the host's file of that name.
    pub fn with_etc_file(mut self, file: (&'static str, PathBuf)) -> Self {
        self.etc.retain(|(dest, _)| *dest != file.0);
        self.etc.push(file);
        self
    }

    /// The `config.json` document.
    pub fn spec(&self) -> Result<Spec> {
        self.try_spec()
            .map_err(|e| Error::Invalid(format!("config.json of container {}: {e}", self.id)))
    }

    fn try_spec(&self) -> Result<Spec, OciSpecError> {
        let m = &self.meta;
        let mut mounts = BASE_MOUNTS
            .iter()
            .map(|(dest, typ, source, options)| mount(dest, typ, source, options))
            .collect::<Result<Vec<_>, _>>()?;
        let mut namespaces = [
            LinuxNamespaceType::Pid,
            LinuxNamespaceType::Ipc,
            LinuxNamespaceType::Uts,
            LinuxNamespaceType::Mount,
        ]
        .into_iter()
        .map(namespace)
        .collect::<Result<Vec<_>, _>>()?;
        match m.network {
            Network::Host => {
                // The host's resolver and hosts file, read-only, as BuildKit does.
                for f in ["/etc/resolv.conf", "/etc/hosts"] {
                    let own = self.etc.iter().any(|(dest, _)| *dest == f);
                    if !own && Path::new(f).exists() {
                        mounts.push(mount(f, "bind", f, &["rbind", "ro"])?);
                    }
                }
            }
            Network::None => namespaces.push(namespace(LinuxNamespaceType::Network)?),
            Network::Isolated => {
                let mut net = LinuxNamespaceBuilder::default().typ(LinuxNamespaceType::Network);
                if let Some(path) = &self.netns {
                    net = net.path(path.clone());
                }
                namespaces.push(net.build()?);
            }
        }
        for (dest, source) in &self.etc {
            mounts.push(mount(dest, "bind", source, &["rbind", "ro"])?);
        }
        if m.privileged {
            for mnt in mounts.iter_mut() {
                if mnt.destination() == Path::new("/sys") {
                    mnt.set_options(Some(strings(&["nosuid", "noexec", "nodev", "rw"])));
                }
            }
            mounts.push(mount(
                "/sys/fs/cgroup",
                "cgroup",
                "cgroup",
                &["nosuid", "noexec", "nodev", "relatime", "rw"],
            )?);
        }
        mounts.extend(self.mounts.iter().cloned());

        let caps: Capabilities = if m.privileged {
            crate::privileged::capabilities(crate::privileged::own_bounding_set())
        } else {
            CAPS.iter().copied().collect()
        };
        let mut capabilities = LinuxCapabilitiesBuilder::default()
            .bounding(caps.clone())
            .effective(caps.clone())
            .permitted(caps)
            .build()?;
        capabilities.set_inheritable(None);
        capabilities.set_ambient(None);
        let user = UserBuilder::default()
            .uid(m.uid)
            .gid(m.gid)
            .additional_gids(m.additional_gids.clone())
            .build()?;
        let cwd = if m.cwd.is_empty() {
            "/"
        } else {
            m.cwd.as_str()
        };
        let mut process = ProcessBuilder::default()
            .terminal(false)
            .user(user)
            .args(m.args.clone())
            .env(m.env.clone())
            .cwd(cwd)
            .capabilities(capabilities)
            // As Docker: set only with `--security-opt no-new-privileges`, so a setuid
            // `sudo` or `su` in a step works as under `docker build`.
            .no_new_privileges(false)
            .build()?;
        // No limits of berth's own: a step inherits berth's through runc.
        process.set_rlimits(None);

        let mut linux = if m.privileged {
            // No seccomp profile, masked or read-only paths; every device.
            LinuxBuilder::default()
                .namespaces(namespaces)
                .devices(crate::privileged::host_devices(Path::new("/dev")))
                .resources(crate::privileged::all_devices_allowed()?)
                .build()?
        } else {
            let mut linux = LinuxBuilder::default()
                .namespaces(namespaces)
                .seccomp(crate::seccomp::profile()?)
                .masked_paths(strings(MASKED_PATHS))
                .readonly_paths(strings(READONLY_PATHS))
                .build()?;
            // No cgroup settings: runc's defaults, as before berth used these types.
            linux.set_resources(None);
            linux
        };
        if m.privileged {
            linux.set_masked_paths(None);
            linux.set_readonly_paths(None);
            linux.set_seccomp(None);
        }

        let root = RootBuilder::default()
            .path(self.rootfs.as_deref().unwrap_or(Path::new("rootfs")))
            .readonly(false)
            .build()?;
        let mut spec = SpecBuilder::default()
            .version("1.0.2")
            .process(process)
            .root(root)
            .hostname(hostname(m))
            .mounts(mounts)
            .linux(linux)
            .build()?;
        spec.set_annotations(None);
        Ok(spec)
    }

    /// Write `config.json` into `dir` (whose `rootfs/` the caller mounts).
    pub fn build(self, dir: &Path) -> Result<PathBuf> {
        let path = dir.join("config.json");
        let text = serde_json::to_vec_pretty(&self.spec()?)
            .map_err(|e| Error::Invalid(format!("serialise {}: {e}", path.display())))?;
        fs::write(&path, text).map_err(|e| Error::Io {
            op: "write bundle config",
            path: path.clone(),
            source: e,
        })?;
        Ok(path)
    }

    /// The container id.
    pub fn id(&self) -> &str {
        &self.id
    }
}

fn mount(
    destination: &str,
    typ: &str,
    source: impl Into<PathBuf>,
    options: &[&str],
) -> Result<Mount, OciSpecError> {
    MountBuilder::default()
        .destination(destination)
        .typ(typ)
        .source(source.into())
        .options(strings(options))
        .build()
}

fn namespace(typ: LinuxNamespaceType) -> Result<LinuxNamespace, OciSpecError> {
    LinuxNamespaceBuilder::default().typ(typ).build()
}

fn strings(s: &[&str]) -> Vec<String> {
    s.iter().map(|s| s.to_string()).collect()
}

/// The container's host name.
pub(crate) fn hostname(m: &Meta) -> &str {
    if m.hostname.is_empty() {
        "berth"
    } else {
        m.hostname.as_str()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{LinuxSeccompAction, PosixRlimit};
    use serde_json::Value;

    fn fixture(name: &str) -> Value {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(format!("runc-config-{name}.json"));
        serde_json::from_slice(&fs::read(&path).unwrap()).unwrap()
    }

    fn bind(dest: &str, source: &str, options: &[&str]) -> Mount {
        mount(dest, "bind", source, options).unwrap()
    }

    /// The extra mounts the fixtures were written with.
    fn extra_mounts() -> Vec<Mount> {
        vec![
            bind(
                "/root/.cache/go-build",
                "/var/lib/berth/cache/mounts/abc",
                &["rbind", "rw"],
            ),
            bind(
                "/run/secrets/token",
                "/dev/shm/berth-secret-1",
                &["rbind", "ro", "nosuid"],
            ),
            MountBuilder::default()
                .destination("/tmp/scratch")
                .typ("tmpfs")
                .source("tmpfs")
                .build()
                .unwrap(),
        ]
    }

    /// The inputs of `runc-config-isolated.json`.
    fn isolated() -> BundleBuilder {
        let meta = Meta {
            args: vec!["/bin/sh".into(), "-c".into(), "echo hi".into()],
            env: vec!["PATH=/usr/bin:/bin".into(), "TOKEN=s3cret".into()],
            cwd: "/work".into(),
            uid: 1000,
            gid: 1001,
            additional_gids: vec![10, 20],
            hostname: "step".into(),
            network: Network::Isolated,
            extra_hosts: vec![],
            privileged: false,
        };
        BundleBuilder::new("b-1")
            .unwrap()
            .with_meta(&meta)
            .with_mounts(&extra_mounts())
            .with_rootfs(Path::new("/var/lib/berth/exec/bundles/b-1/rootfs"))
            .with_network_namespace(
                Path::new("/proc/4242/fd/7"),
                vec![
                    (
                        "/etc/resolv.conf",
                        PathBuf::from("/run/berth-runc-1/b-1/resolv.conf"),
                    ),
                    ("/etc/hosts", PathBuf::from("/run/berth-runc-1/b-1/hosts")),
                ],
            )
    }

    fn json(b: &BundleBuilder) -> Value {
        serde_json::to_value(b.spec().unwrap()).unwrap()
    }

    /// Capabilities are a set in oci-spec (serialised in hash order): sort them. And
    /// the seccomp rules name this machine's architectures: compare them only on the
    /// machine the fixtures were written on.
    fn normalise(mut v: Value) -> Value {
        for set in ["bounding", "effective", "permitted"] {
            if let Some(a) = v["process"]["capabilities"][set].as_array_mut() {
                a.sort_by(|x, y| x.as_str().cmp(&y.as_str()));
            }
        }
        if std::env::consts::ARCH != "x86_64" {
            v["linux"]["seccomp"] = Value::Null;
        }
        v
    }

    #[test]
    fn same_config_as_before_oci_spec_types() {
        assert_eq!(normalise(json(&isolated())), normalise(fixture("isolated")));
        let none = Meta {
            network: Network::None,
            args: vec!["true".into()],
            ..Meta::default()
        };
        let b = BundleBuilder::new("b-2").unwrap().with_meta(&none);
        assert_eq!(normalise(json(&b)), normalise(fixture("none")));

        // With the host's network, the host's resolv.conf and hosts are bound in when
        // they exist (they did where the fixture was written).
        let host = Meta {
            network: Network::Host,
            args: vec!["true".into()],
            ..Meta::default()
        };
        let b = BundleBuilder::new("b-3")
            .unwrap()
            .with_meta(&host)
            .with_mounts(&extra_mounts()[2..]);
        let etc = ["/etc/resolv.conf", "/etc/hosts"];
        let without_etc = |mut v: Value| {
            v["mounts"]
                .as_array_mut()
                .unwrap()
                .retain(|m| !etc.contains(&m["destination"].as_str().unwrap()));
            v
        };
        let got = json(&b);
        for f in etc {
            let bound = got["mounts"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["destination"] == f && m["source"] == f);
            assert_eq!(bound, Path::new(f).exists(), "{f}");
        }
        assert_eq!(
            normalise(without_etc(got)),
            normalise(without_etc(fixture("host")))
        );
    }

    /// A hosts file berth wrote (extra hosts) is bound in every network mode, and with
    /// the host's network it replaces the host's own file rather than stacking on it.
    #[test]
    fn own_hosts_file_is_bound_in_every_mode() {
        for network in [Network::Host, Network::None] {
            let m = Meta {
                network,
                args: vec!["true".into()],
                ..Meta::default()
            };
            let b = BundleBuilder::new("b-4")
                .unwrap()
                .with_meta(&m)
                .with_etc_file(("/etc/hosts", PathBuf::from("/run/b-4/hosts")));
            let got = json(&b);
            let hosts: Vec<&Value> = got["mounts"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|m| m["destination"] == "/etc/hosts")
                .collect();
            assert_eq!(hosts.len(), 1, "{network:?}: {hosts:?}");
            assert_eq!(hosts[0]["source"], "/run/b-4/hosts", "{network:?}");
        }
    }

    /// The fields that make the isolation, read through oci-spec's types.
    #[test]
    fn isolation_fields() {
        let spec = isolated().spec().unwrap();
        let old = fixture("isolated");

        let linux = spec.linux().as_ref().unwrap();
        let namespaces: Vec<_> = linux
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .map(|n| (n.typ(), n.path().clone()))
            .collect();
        assert_eq!(
            namespaces,
            [
                (LinuxNamespaceType::Pid, None),
                (LinuxNamespaceType::Ipc, None),
                (LinuxNamespaceType::Uts, None),
                (LinuxNamespaceType::Mount, None),
                (
                    LinuxNamespaceType::Network,
                    Some(PathBuf::from("/proc/4242/fd/7"))
                ),
            ]
        );
        assert!(
            !namespaces
                .iter()
                .any(|(t, _)| matches!(t, LinuxNamespaceType::User | LinuxNamespaceType::Cgroup))
        );
        let paths = |v: &Value| -> Vec<String> { serde_json::from_value(v.clone()).unwrap() };
        assert_eq!(
            linux.masked_paths().as_ref().unwrap(),
            &paths(&old["linux"]["maskedPaths"])
        );
        assert_eq!(
            linux.readonly_paths().as_ref().unwrap(),
            &paths(&old["linux"]["readonlyPaths"])
        );
        assert!(linux.resources().is_none());

        let seccomp = linux.seccomp().as_ref().unwrap();
        assert_eq!(seccomp.default_action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(seccomp.default_errno_ret(), Some(1));
        let syscalls = seccomp.syscalls().as_ref().unwrap();
        let old_syscalls = old["linux"]["seccomp"]["syscalls"].as_array().unwrap();
        assert_eq!(syscalls.len(), old_syscalls.len());
        if std::env::consts::ARCH == "x86_64" {
            let names: usize = syscalls.iter().map(|s| s.names().len()).sum();
            let old_names: usize = old_syscalls
                .iter()
                .map(|s| s["names"].as_array().unwrap().len())
                .sum();
            assert_eq!(names, old_names);
        }

        let mounts = spec.mounts().as_ref().unwrap();
        let dests: Vec<_> = mounts
            .iter()
            .map(|m| m.destination().to_str().unwrap())
            .collect();
        let old_dests: Vec<_> = old["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["destination"].as_str().unwrap())
            .collect();
        assert_eq!(dests, old_dests);
        let resolv = &mounts[6];
        assert_eq!(
            resolv.source().as_deref(),
            Some(Path::new("/run/berth-runc-1/b-1/resolv.conf"))
        );
        assert_eq!(
            resolv.options().as_deref(),
            Some(&["rbind".to_string(), "ro".to_string()][..])
        );

        let process = spec.process().as_ref().unwrap();
        let caps = process.capabilities().as_ref().unwrap();
        let want: Capabilities = CAPS.iter().copied().collect();
        assert_eq!(caps.bounding().as_ref(), Some(&want));
        assert_eq!(caps.effective().as_ref(), Some(&want));
        assert_eq!(caps.permitted().as_ref(), Some(&want));
        assert_eq!(caps.inheritable(), &None);
        assert_eq!(caps.ambient(), &None);
        assert!(!want.contains(&Capability::SysAdmin));
        assert_eq!(want.len(), 14);
        assert_eq!(process.rlimits(), &None::<Vec<PosixRlimit>>);
        assert_eq!(process.no_new_privileges(), Some(false));
        assert_eq!(process.user().uid(), 1000);
        assert_eq!(process.user().gid(), 1001);
        assert_eq!(
            process.user().additional_gids().as_deref(),
            Some(&[10, 20][..])
        );
        assert_eq!(process.cwd(), Path::new("/work"));
        assert_eq!(
            process.env().as_deref(),
            Some(&["PATH=/usr/bin:/bin".to_string(), "TOKEN=s3cret".to_string()][..])
        );
        assert_eq!(spec.hostname().as_deref(), Some("step"));
        assert!(spec.annotations().is_none());
        let root = spec.root().as_ref().unwrap();
        assert_eq!(root.readonly(), Some(false));
    }

    #[test]
    fn defaults_for_an_empty_meta() {
        let spec = BundleBuilder::new("x").unwrap().spec().unwrap();
        let process = spec.process().as_ref().unwrap();
        assert_eq!(process.cwd(), Path::new("/"));
        assert_eq!(spec.hostname().as_deref(), Some("berth"));
        assert_eq!(spec.root().as_ref().unwrap().path(), Path::new("rootfs"));
        // Isolated without a pooled namespace: a new, empty one.
        let net = spec
            .linux()
            .as_ref()
            .unwrap()
            .namespaces()
            .as_ref()
            .unwrap()[4]
            .clone();
        assert_eq!(net.typ(), LinuxNamespaceType::Network);
        assert_eq!(net.path(), &None);
    }

    /// A privileged step: `docker run --privileged`'s differences, the rest unchanged.
    #[test]
    fn privileged_drops_the_sandbox_but_keeps_namespaces_and_mounts() {
        let sandboxed = isolated().spec().unwrap();
        let mut meta = isolated().meta;
        meta.privileged = true;
        let spec = isolated().with_meta(&meta).spec().unwrap();
        let linux = spec.linux().as_ref().unwrap();
        assert!(linux.seccomp().is_none());
        assert!(linux.masked_paths().is_none());
        assert!(linux.readonly_paths().is_none());
        assert_eq!(
            linux.namespaces(),
            sandboxed.linux().as_ref().unwrap().namespaces(),
            "the same namespaces, the pooled network one included"
        );
        let devices = linux
            .resources()
            .as_ref()
            .unwrap()
            .devices()
            .clone()
            .unwrap();
        assert_eq!(devices.len(), 1);
        assert!(devices[0].allow());
        assert_eq!(devices[0].access().as_deref(), Some("rwm"));
        assert!(
            linux
                .devices()
                .iter()
                .flatten()
                .any(|d| d.path() == Path::new("/dev/null"))
        );
        let caps = spec
            .process()
            .as_ref()
            .unwrap()
            .capabilities()
            .clone()
            .unwrap();
        let bounding = caps.bounding().clone().unwrap();
        assert!(bounding.contains(&Capability::SysAdmin));
        assert!(bounding.contains(&Capability::NetAdmin));
        assert_eq!(caps.effective().as_ref(), Some(&bounding));
        let mounts = spec.mounts().as_ref().unwrap();
        let find = |d: &str| {
            mounts
                .iter()
                .find(|m| m.destination() == Path::new(d))
                .unwrap_or_else(|| panic!("no mount at {d}"))
        };
        assert!(
            find("/sys")
                .options()
                .as_ref()
                .unwrap()
                .contains(&"rw".to_string())
        );
        let cgroup = find("/sys/fs/cgroup");
        assert_eq!(cgroup.typ().as_deref(), Some("cgroup"));
        assert!(
            cgroup
                .options()
                .as_ref()
                .unwrap()
                .contains(&"rw".to_string())
        );
        // The step's own mounts are all still there, in order.
        let dests = |s: &Spec| -> Vec<PathBuf> {
            s.mounts()
                .iter()
                .flatten()
                .map(|m| m.destination().clone())
                .filter(|d| d != Path::new("/sys/fs/cgroup"))
                .collect()
        };
        assert_eq!(dests(&spec), dests(&sandboxed));
    }

    #[test]
    fn written_config_reads_back_as_the_spec() {
        let dir = tempfile::tempdir().unwrap();
        let b = isolated();
        let spec = b.spec().unwrap();
        let path = b.build(dir.path()).unwrap();
        assert_eq!(Spec::load(&path).unwrap(), spec);
    }
}
