//! What this host must offer to run build steps, checked for `berth doctor`: runc,
//! overlayfs, user namespaces, cgroups and free space under berth's root.

use std::path::Path;

/// One host check.
#[derive(Debug, Clone)]
pub struct HostCheck {
    /// `runc`, `overlayfs`, `user namespaces`, `cgroups` or `disk`.
    pub name: &'static str,
    /// What was found.
    pub detail: String,
    /// `None` when fine; else what to do.
    pub fix: Option<String>,
    /// A problem that does not stop builds (little disk space left).
    pub warning: bool,
}

impl HostCheck {
    fn ok(name: &'static str, detail: String) -> HostCheck {
        HostCheck {
            name,
            detail,
            fix: None,
            warning: false,
        }
    }

    fn bad(name: &'static str, detail: String, fix: &str) -> HostCheck {
        HostCheck {
            name,
            detail,
            fix: Some(fix.to_owned()),
            warning: false,
        }
    }
}

/// Free space below which builds soon fail.
const LOW_DISK: u64 = 2 << 30;
/// Free space below which builds cannot run.
const NO_DISK: u64 = 256 << 20;

/// Runs every check; `root` is berth's data directory (it need not exist yet: the
/// nearest existing parent's file system is measured).
pub fn host_checks(root: &Path) -> Vec<HostCheck> {
    vec![
        runc(),
        overlayfs(),
        user_namespaces(),
        cgroups(),
        disk(root),
    ]
}

fn runc() -> HostCheck {
    match std::process::Command::new("runc").arg("--version").output() {
        Ok(o) if o.status.success() => HostCheck::ok(
            "runc",
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("runc")
                .to_owned(),
        ),
        Ok(o) => HostCheck::bad(
            "runc",
            format!(
                "`runc --version` failed: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            "reinstall runc (apt-get install runc)",
        ),
        Err(e) => HostCheck::bad(
            "runc",
            format!("runc not found on PATH: {e}"),
            "install runc (apt-get install runc)",
        ),
    }
}

fn overlayfs() -> HostCheck {
    let fs = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if fs
        .lines()
        .any(|l| l.split_whitespace().last() == Some("overlay"))
    {
        HostCheck::ok("overlayfs", "the kernel supports overlay".into())
    } else {
        HostCheck::bad(
            "overlayfs",
            "overlay is not in /proc/filesystems".into(),
            "load the module: modprobe overlay (in a container, run it with the host's kernel module loaded)",
        )
    }
}

fn read_number(path: &str) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn user_namespaces() -> HostCheck {
    match read_number("/proc/sys/user/max_user_namespaces") {
        Some(0) => HostCheck::bad(
            "user namespaces",
            "user.max_user_namespaces is 0".into(),
            "sysctl -w user.max_user_namespaces=15000 (and in /etc/sysctl.d to keep it)",
        ),
        Some(n) => {
            if read_number("/proc/sys/kernel/unprivileged_userns_clone") == Some(0)
                && !rustix::process::geteuid().is_root()
            {
                HostCheck::bad(
                    "user namespaces",
                    "kernel.unprivileged_userns_clone is 0 and berth is not root".into(),
                    "sysctl -w kernel.unprivileged_userns_clone=1, or run berth as root",
                )
            } else {
                HostCheck::ok("user namespaces", format!("up to {n}"))
            }
        }
        None => HostCheck::bad(
            "user namespaces",
            "/proc/sys/user/max_user_namespaces is missing".into(),
            "use a kernel built with CONFIG_USER_NS",
        ),
    }
}

fn cgroups() -> HostCheck {
    if let Ok(c) = std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers") {
        return HostCheck::ok("cgroups", format!("v2 ({})", c.trim()));
    }
    if Path::new("/sys/fs/cgroup/memory").is_dir() {
        let v2 = Path::new("/sys/fs/cgroup/unified").is_dir();
        return HostCheck::ok("cgroups", if v2 { "hybrid v1/v2" } else { "v1" }.to_owned());
    }
    HostCheck::bad(
        "cgroups",
        "no cgroup hierarchy at /sys/fs/cgroup".into(),
        "mount one: mount -t cgroup2 none /sys/fs/cgroup",
    )
}

fn disk(root: &Path) -> HostCheck {
    let mut at = root;
    while !at.exists() {
        match at.parent() {
            Some(p) => at = p,
            None => break,
        }
    }
    let st = match rustix::fs::statvfs(at) {
        Ok(s) => s,
        Err(e) => {
            return HostCheck::bad(
                "disk",
                format!("statvfs {}: {e}", at.display()),
                "check that berth's root (--root, BERTH_ROOT) is readable",
            );
        }
    };
    let free = st.f_bavail.saturating_mul(st.f_frsize);
    let detail = format!(
        "{:.1} GiB free under {}",
        free as f64 / (1u64 << 30) as f64,
        at.display()
    );
    if free < NO_DISK {
        HostCheck::bad(
            "disk",
            detail,
            "free space: `berth prune`, `berth registry gc`, or move --root to a bigger disk",
        )
    } else if free < LOW_DISK {
        HostCheck {
            warning: true,
            ..HostCheck::bad(
                "disk",
                detail,
                "builds may run out of space: `berth prune` frees build cache",
            )
        }
    } else {
        HostCheck::ok("disk", detail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_measures_the_nearest_existing_parent() {
        let dir = tempfile::tempdir().unwrap();
        let c = disk(&dir.path().join("not/yet/here"));
        assert!(
            c.detail.contains(&dir.path().display().to_string()),
            "{c:?}"
        );
        let names: Vec<_> = host_checks(dir.path()).iter().map(|c| c.name).collect();
        assert_eq!(
            names,
            ["runc", "overlayfs", "user namespaces", "cgroups", "disk"]
        );
    }
}
