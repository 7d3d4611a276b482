//! Mounting a root file system from a mount plan.

use std::path::{Path, PathBuf};

use berth_oci::Mount;
use rustix::mount::{
    FsMountFlags, FsOpenFlags, MountAttrFlags, MountFlags, MoveMountFlags, UnmountFlags,
    fsconfig_create, fsconfig_set_string, fsmount, fsopen, move_mount,
};

use crate::{Error, Result};

/// Unmounts (lazily) when dropped.
#[derive(Debug)]
pub struct MountGuard {
    target: Option<PathBuf>,
}

impl MountGuard {
    /// Unmount now.
    pub fn unmount(mut self) -> Result<()> {
        if let Some(t) = self.target.take() {
            rustix::mount::unmount(&t, UnmountFlags::DETACH).map_err(|e| Error::Mount {
                what: "unmount".into(),
                target: t.clone(),
                source: e.into(),
            })?;
        }
        Ok(())
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        if let Some(t) = self.target.take()
            && let Err(e) = rustix::mount::unmount(&t, UnmountFlags::DETACH)
        {
            tracing::warn!(target = %t.display(), error = %e, "unmount failed");
        }
    }
}

/// Mount a root file system plan (one overlay or bind mount) on `target`.
pub fn mount_rootfs(plan: &[Mount], target: &Path) -> Result<MountGuard> {
    let [m] = plan else {
        return Err(Error::Invalid(format!(
            "a root file system is one mount, got {}",
            plan.len()
        )));
    };
    let options = m.options().clone().unwrap_or_default();
    let err = |what: &str, e: rustix::io::Errno| Error::Mount {
        what: what.to_string(),
        target: target.to_path_buf(),
        source: e.into(),
    };
    match m.typ().as_deref() {
        Some("overlay") => {
            if let Err(e) = mount_overlay_new_api(&options, target) {
                // Kernels before 6.8 lack `lowerdir+`: fall back to one option string,
                // which the kernel caps at a page (about 50 layers with our paths).
                tracing::debug!(error = %e, "new mount API unavailable, using mount(2)");
                let data = std::ffi::CString::new(options.join(","))
                    .map_err(|_| Error::Invalid("mount options hold a NUL byte".into()))?;
                rustix::mount::mount(
                    "overlay",
                    target,
                    "overlay",
                    MountFlags::empty(),
                    data.as_c_str(),
                )
                .map_err(|e| err("overlay", e))?;
            }
        }
        Some("bind") | None => {
            let source = m
                .source()
                .clone()
                .ok_or_else(|| Error::Invalid("bind mount without source".into()))?;
            rustix::mount::mount_bind(&source, target).map_err(|e| err("bind", e))?;
        }
        Some(other) => {
            return Err(Error::Invalid(format!(
                "root file system of type {other} is not supported"
            )));
        }
    }
    Ok(MountGuard {
        target: Some(target.to_path_buf()),
    })
}

fn mount_overlay_new_api(options: &[String], target: &Path) -> rustix::io::Result<()> {
    let fs = fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC)?;
    for opt in options {
        let (key, value) = opt.split_once('=').unwrap_or((opt.as_str(), ""));
        if key == "lowerdir" {
            for lower in value.split(':') {
                fsconfig_set_string(&fs, "lowerdir+", lower)?;
            }
        } else {
            fsconfig_set_string(&fs, key, value)?;
        }
    }
    fsconfig_create(&fs)?;
    let mnt = fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, MountAttrFlags::empty())?;
    move_mount(
        &mnt,
        "",
        rustix::fs::CWD,
        target,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
}

/// Unmount what processes that are gone left mounted below `under`: mount points whose
/// first path component below `under` is named by an owner (see
/// [`berth_snapshot::owner`]) that `owners` shows gone. Returns the mount points removed.
pub fn cleanup_stale_mounts(under: &Path, owners: &Path) -> Vec<PathBuf> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut stale: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mountinfo)
        .filter_map(|p| {
            let rel = p.strip_prefix(under).ok()?.to_path_buf();
            let first = rel
                .components()
                .next()?
                .as_os_str()
                .to_string_lossy()
                .into_owned();
            berth_snapshot::owner::is_gone(owners, &first).then_some(p)
        })
        .collect();
    // Deepest first, so nested mounts go before their parents.
    stale.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    stale.dedup();
    for p in &stale {
        if let Err(e) = rustix::mount::unmount(p, UnmountFlags::DETACH) {
            tracing::warn!(mount = %p.display(), error = %e, "stale mount not removed");
        }
    }
    stale
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape_mountinfo(s: &str) -> PathBuf {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    PathBuf::from(<std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(out))
}
