//! Unpacking an OCI layer (an uncompressed tar stream) into a directory, converting OCI
//! whiteouts into overlayfs ones.

use std::ffi::OsStr;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{FileType, Mode, XattrFlags};

use crate::snapshotter::{Error, Result, io_err};

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

/// Unpack the tar stream `layer` into `dir` (which should be empty): files keep owners,
/// modes, times and xattrs; `.wh.<name>` becomes a whiteout device and `.wh..wh..opq`
/// marks its directory opaque. Entries that would escape `dir` are refused.
pub fn apply_layer(dir: &Path, layer: impl Read) -> Result<()> {
    let mut archive = tar::Archive::new(layer);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(true);
    archive.set_overwrite(true);
    let entries = archive
        .entries()
        .map_err(|e| io_err("read layer", dir, e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| io_err("read layer entry", dir, e))?;
        let path = entry
            .path()
            .map_err(|e| io_err("read layer entry path", dir, e))?
            .into_owned();
        let rel = clean(&path).ok_or_else(|| {
            Error::Layer(format!("entry {} escapes the layer root", path.display()))
        })?;
        let Some(name) = rel.file_name() else {
            // The root itself ("./"): apply its metadata below via unpack_in.
            entry.unpack_in(dir).map_err(|e| io_err("unpack", dir, e))?;
            continue;
        };
        let name_bytes = name.as_bytes();
        // Whiteouts and replacements below act on paths themselves, before tar-rs's
        // checks: a parent that is a symlink (planted by an earlier entry) would point
        // them outside the layer, so no parent component may be one.
        let parent_rel = rel.parent().unwrap_or(Path::new(""));
        check_no_symlinks(dir, parent_rel)?;
        let parent = dir.join(parent_rel);
        if name_bytes == OPAQUE.as_bytes() {
            fs::create_dir_all(&parent).map_err(|e| io_err("create directory", &parent, e))?;
            rustix::fs::setxattr(&parent, "trusted.overlay.opaque", b"y", XattrFlags::empty())
                .map_err(|e| io_err("mark opaque", &parent, e.into()))?;
            continue;
        }
        if let Some(hidden) = name_bytes.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
            if hidden.is_empty() || hidden == b"." || hidden == b".." || hidden.contains(&b'/') {
                return Err(Error::Layer(format!(
                    "whiteout {} names no file",
                    path.display()
                )));
            }
            fs::create_dir_all(&parent).map_err(|e| io_err("create directory", &parent, e))?;
            let target = parent.join(OsStr::from_bytes(hidden));
            remove_any(&target)?;
            rustix::fs::mknodat(
                rustix::fs::CWD,
                &target,
                FileType::CharacterDevice,
                Mode::empty(),
                0,
            )
            .map_err(|e| io_err("create whiteout", &target, e.into()))?;
            continue;
        }
        // A file replacing a directory (or the reverse) in the same layer.
        let target = dir.join(&rel);
        if let Ok(meta) = fs::symlink_metadata(&target)
            && meta.is_dir() != entry.header().entry_type().is_dir()
        {
            remove_any(&target)?;
        }
        entry
            .unpack_in(dir)
            .map_err(|e| io_err("unpack", &target, e))?;
    }
    Ok(())
}

/// Refuse `rel` (below `dir`) if any existing component of it is a symlink.
fn check_no_symlinks(dir: &Path, rel: &Path) -> Result<()> {
    let mut cur = dir.to_path_buf();
    for c in rel.components() {
        cur.push(c);
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(Error::Layer(format!(
                    "entry below {} goes through a symlink; refusing to follow it out of the layer",
                    rel.display()
                )));
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    Ok(())
}

/// A tar path made relative and free of `..`; `None` if it would leave the root.
fn clean(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

fn remove_any(path: &Path) -> Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path).map_err(|e| io_err("remove", path, e)),
        Ok(_) => fs::remove_file(path).map_err(|e| io_err("remove", path, e)),
        Err(_) => Ok(()),
    }
}
