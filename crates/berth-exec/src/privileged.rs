//! What a privileged step gets beyond the sandbox, as `docker run --privileged` gives
//! it: every capability berth itself holds, the host's devices (and the device cgroup
//! opened to all), `/sys` and the cgroup hierarchies writable; no seccomp profile and
//! no masked or read-only `/proc` paths (the bundle leaves those out). The step keeps
//! its own namespaces (pid, mount, ipc, uts, network) and its mounts.

use std::path::Path;

use oci_spec::OciSpecError;
use oci_spec::runtime::{
    Capabilities, Capability, LinuxDevice, LinuxDeviceBuilder, LinuxDeviceCgroupBuilder,
    LinuxDeviceType, LinuxResources, LinuxResourcesBuilder,
};

/// Capability names by number (`linux/capability.h`, up to Linux 5.9's last).
const CAP_NAMES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// Every capability in `bounding` (a `CapBnd` mask). runc refuses to start a container
/// asking for one its own process lacks ("unable to apply caps"), and berth may itself
/// run without some (in a container, or a VM that drops `CAP_SYS_RESOURCE`): so
/// "all" means all that berth has, as it would for Docker run from the same place.
pub(crate) fn capabilities(bounding: u64) -> Capabilities {
    CAP_NAMES
        .iter()
        .enumerate()
        .filter(|(bit, _)| bounding & (1 << bit) != 0)
        .filter_map(|(_, name)| serde_json::from_value::<Capability>((*name).into()).ok())
        .collect()
}

/// The bounding set of this process (`CapBnd` of `/proc/self/status`); every
/// capability if it cannot be read.
pub(crate) fn own_bounding_set() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapBnd:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(u64::MAX)
}

/// The device cgroup open to every device (`a *:* rwm`).
pub(crate) fn all_devices_allowed() -> Result<LinuxResources, OciSpecError> {
    LinuxResourcesBuilder::default()
        .devices(vec![
            LinuxDeviceCgroupBuilder::default()
                .allow(true)
                .typ(LinuxDeviceType::A)
                .access("rwm")
                .build()?,
        ])
        .build()
}

/// The host's character and block devices under `/dev`, for runc to create in the
/// container's `/dev` (Docker's `DevicesFromPath` over `/dev` for `--privileged`).
/// `/dev/pts`, `/dev/shm` and `/dev/mqueue` are the container's own.
pub(crate) fn host_devices(dev: &Path) -> Vec<LinuxDevice> {
    let mut out = Vec::new();
    walk(dev, dev, &mut out, 0);
    out.sort_by(|a, b| a.path().cmp(b.path()));
    out
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<LinuxDevice>, depth: usize) {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        let Ok(m) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let ft = m.file_type();
        if ft.is_dir() {
            let skip = dir == root
                && matches!(
                    e.file_name().to_str(),
                    Some("pts" | "shm" | "mqueue" | "hugepages")
                );
            if !skip && depth < 4 {
                walk(root, &path, out, depth + 1);
            }
            continue;
        }
        let typ = if ft.is_char_device() {
            LinuxDeviceType::C
        } else if ft.is_block_device() {
            LinuxDeviceType::B
        } else {
            continue;
        };
        let rdev = m.rdev();
        let dest = Path::new("/dev").join(path.strip_prefix(root).unwrap_or(&path));
        let built = LinuxDeviceBuilder::default()
            .path(dest)
            .typ(typ)
            .major(rustix::fs::major(rdev) as i64)
            .minor(rustix::fs::minor(rdev) as i64)
            .file_mode(m.mode() & 0o7777)
            .uid(m.uid())
            .gid(m.gid())
            .build();
        if let Ok(d) = built {
            out.push(d);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_follow_the_bounding_set() {
        let all = capabilities(u64::MAX);
        assert_eq!(all.len(), CAP_NAMES.len(), "every name parses");
        assert!(all.contains(&Capability::SysAdmin));
        // This VM's set: everything but CAP_SYS_RESOURCE (bit 24).
        let some = capabilities(0x1fffeffffff);
        assert_eq!(some.len(), CAP_NAMES.len() - 1);
        assert!(!some.contains(&Capability::SysResource));
        assert!(some.contains(&Capability::NetAdmin));
        assert!(capabilities(0).is_empty());
        assert_ne!(own_bounding_set(), 0);
    }

    #[test]
    fn devices_are_read_from_dev() {
        let devices = host_devices(Path::new("/dev"));
        let null = devices
            .iter()
            .find(|d| d.path() == Path::new("/dev/null"))
            .expect("/dev/null is a device");
        assert_eq!(
            (null.typ(), null.major(), null.minor()),
            (LinuxDeviceType::C, 1, 3)
        );
        assert!(
            devices
                .iter()
                .all(|d| !d.path().starts_with("/dev/pts") && !d.path().starts_with("/dev/shm"))
        );
    }
}
