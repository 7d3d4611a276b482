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
