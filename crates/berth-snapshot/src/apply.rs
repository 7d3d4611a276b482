//! Unpacking an OCI layer (an uncompressed tar stream) into a directory, converting OCI
//! whiteouts into overlayfs ones.

use std::collections::BTreeSet;
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
///
/// The work is linear in the layer: each directory on the way to an entry is checked
/// (no symlink) or created once, then remembered, so entries below a deep path cost a
/// lookup, not a walk of every component (nor tar-rs's `canonicalize` of the parent,
/// which is a `readlink` per component, as `unpack_in` does).
pub fn apply_layer(dir: &Path, layer: impl Read) -> Result<()> {
    Unpacker::new(dir).run(layer).map(|_| ())
}

/// Unpack the tar stream `layer` into `dir` on top of the layers unpacked there before,
/// as a flattened file system (an image's root as files, for `--output type=local`):
/// `.wh.<name>` removes `<name>`, and `.wh..wh..opq` empties its directory of what
/// earlier layers put there. The same checks as [`apply_layer`] apply.
pub fn apply_layer_flat(dir: &Path, layer: impl Read) -> Result<()> {
    let mut u = Unpacker::new(dir);
    u.flat = Some(BTreeSet::new());
    u.run(layer).map(|_| ())
}

/// A reader that fails once `canceled()` says so. A layer unpacked from it stops at its
/// next read (every few hundred kilobytes at most, and between entries), and the
/// snapshotter removes what it had staged.
pub struct Cancelable<R, F> {
    inner: R,
    canceled: F,
}

impl<R: Read, F: Fn() -> bool> Cancelable<R, F> {
    /// Wrap `inner`; `canceled` is asked before each read.
    pub fn new(inner: R, canceled: F) -> Self {
        Cancelable { inner, canceled }
    }
}

impl<R: Read, F: Fn() -> bool> Read for Cancelable<R, F> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if (self.canceled)() {
            // Not `Interrupted`: readers retry that one.
            return Err(std::io::Error::other("canceled"));
        }
        self.inner.read(buf)
    }
}

/// How much of a file's contents [`write_file`] moves per `write`.
const CHUNK: u64 = 1 << 20;

/// Whether the entry carries extended attributes (PAX `SCHILY.xattr.*`), which tar-rs's
/// own unpack sets.
fn has_xattrs<R: Read>(entry: &mut tar::Entry<'_, R>) -> bool {
    match entry.pax_extensions() {
        Ok(Some(exts)) => exts
            .flatten()
            .any(|e| e.key_bytes().starts_with(b"SCHILY.xattr.")),
        _ => false,
    }
}

/// A regular file's entry written to `target` as tar-rs's unpack would (owner, mode,
/// times from the header; a file in the way replaced), but through 1 MiB writes where
/// tar-rs copies 8 KiB at a time, and with the metadata set on the open descriptor.
fn write_file<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    target: &Path,
    buf: &mut Vec<u8>,
) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let open = || {
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(target)
    };
    let mut f = match open() {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            fs::remove_file(target).map_err(|e| io_err("replace", target, e))?;
            open()
        }
        r => r,
    }
    .map_err(|e| io_err("create", target, e))?;
    let mut left = entry.size();
    while left > 0 {
        let n = left.min(CHUNK) as usize;
        buf.resize(n, 0);
        entry
            .read_exact(&mut buf[..n])
            .map_err(|e| io_err("read layer entry", target, e))?;
        f.write_all(&buf[..n])
            .map_err(|e| io_err("write", target, e))?;
        left -= n as u64;
    }
    let h = entry.header();
    let field =
        |r: std::io::Result<u64>| r.map_err(|e| io_err("read layer entry header", target, e));
    let (uid, gid) = (field(h.uid())?, field(h.gid())?);
    let (mode, mtime) = (field(h.mode().map(u64::from))?, field(h.mtime())?);
    rustix::fs::fchown(
        &f,
        Some(rustix::fs::Uid::from_raw(uid as u32)),
        Some(rustix::fs::Gid::from_raw(gid as u32)),
    )
    .map_err(|e| io_err("chown", target, e.into()))?;
    rustix::fs::fchmod(&f, Mode::from_raw_mode(mode as u32 & 0o7777))
        .map_err(|e| io_err("chmod", target, e.into()))?;
    let t = rustix::fs::Timespec {
        tv_sec: mtime as i64,
        tv_nsec: 0,
    };
    rustix::fs::futimens(
        &f,
        &rustix::fs::Timestamps {
            last_access: t,
            last_modification: t,
        },
    )
    .map_err(|e| io_err("set times", target, e.into()))
}

/// One unpack: the directories below `dir` known to be real directories (checked or
/// made during this unpack), and how many file-system lookups that took.
struct Unpacker<'a> {
    dir: &'a Path,
    /// Relative paths as bytes with a `/` appended ([`key`]): a directory's descendants
    /// are exactly the keys that start with its own, and sort right after it.
    known: BTreeSet<Vec<u8>>,
    /// `lstat`s made to check or create parent directories (the work that used to grow
    /// with depth for every entry).
    lookups: u64,
    /// Flattening ([`apply_layer_flat`]): the keys of the paths this layer wrote, which
    /// an opaque marker keeps.
    flat: Option<BTreeSet<Vec<u8>>>,
    /// The buffer file contents go through ([`write_file`]).
    buf: Vec<u8>,
}

impl<'a> Unpacker<'a> {
    fn new(dir: &'a Path) -> Self {
        Unpacker {
            dir,
            known: BTreeSet::new(),
            lookups: 0,
            flat: None,
            buf: Vec::new(),
        }
    }

    fn run(mut self, layer: impl Read) -> Result<u64> {
        let dir = self.dir;
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
                // The root itself ("./"): left as it is, as tar-rs's unpack_in does.
                continue;
            };
            let name_bytes = name.as_bytes();
            // Whiteouts, replacements and new files act on paths themselves: a parent
            // that is a symlink (planted by an earlier entry) would point them outside
            // the layer, so no parent component may be one.
            let parent_rel = rel.parent().unwrap_or(Path::new("")).to_path_buf();
            self.directory(&parent_rel)?;
            let parent = dir.join(&parent_rel);
            if name_bytes == OPAQUE.as_bytes() && self.flat.is_some() {
                let children = fs::read_dir(&parent).map_err(|e| io_err("list", &parent, e))?;
                for child in children.flatten() {
                    let child_rel = parent_rel.join(child.file_name());
                    let written = self
                        .flat
                        .as_ref()
                        .is_some_and(|w| w.contains(&key(&child_rel)));
                    if !written {
                        self.remove(&child_rel, &child.path())?;
                    }
                }
                continue;
            }
            if name_bytes == OPAQUE.as_bytes() {
                rustix::fs::setxattr(&parent, "trusted.overlay.opaque", b"y", XattrFlags::empty())
                    .map_err(|e| io_err("mark opaque", &parent, e.into()))?;
                continue;
            }
            if let Some(hidden) = name_bytes.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
                if hidden.is_empty() || hidden == b"." || hidden == b".." || hidden.contains(&b'/')
                {
                    return Err(Error::Layer(format!(
                        "whiteout {} names no file",
                        path.display()
                    )));
                }
                let hidden = OsStr::from_bytes(hidden);
                let target = parent.join(hidden);
                self.remove(&parent_rel.join(hidden), &target)?;
                if self.flat.is_some() {
                    continue;
                }
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
            let target = dir.join(&rel);
            let kind = entry.header().entry_type();
            // A directory stays (and takes the entry's metadata); anything else in the
            // way goes: a symlink where a directory comes, a directory where a file
            // comes, and a file a hard link replaces.
            if let Ok(meta) = fs::symlink_metadata(&target)
                && !(meta.is_dir() && kind.is_dir())
                && (meta.is_dir() || kind.is_dir() || kind.is_hard_link())
            {
                self.remove(&rel, &target)?;
            }
            if kind.is_hard_link() {
                let link = entry
                    .link_name()
                    .map_err(|e| io_err("read layer entry link", &target, e))?
                    .ok_or_else(|| {
                        Error::Layer(format!("hard link {} names no file", path.display()))
                    })?;
                let link_rel = clean(&link).ok_or_else(|| {
                    Error::Layer(format!(
                        "hard link {} to {} escapes the layer root",
                        path.display(),
                        link.display()
                    ))
                })?;
                self.check_no_symlinks(link_rel.parent().unwrap_or(Path::new("")))?;
                let src = dir.join(&link_rel);
                fs::hard_link(&src, &target).map_err(|e| io_err("hard link", &target, e))?;
                if let Some(w) = &mut self.flat {
                    w.insert(key(&rel));
                }
                continue;
            }
            if matches!(kind, tar::EntryType::Regular | tar::EntryType::Continuous)
                && !has_xattrs(&mut entry)
            {
                write_file(&mut entry, &target, &mut self.buf)?;
            } else {
                entry
                    .unpack(&target)
                    .map_err(|e| io_err("unpack", &target, e))?;
            }
            if kind.is_dir() {
                self.known.insert(key(&rel));
            }
            if let Some(w) = &mut self.flat {
                w.insert(key(&rel));
            }
        }
        Ok(self.lookups)
    }

    /// Make sure `rel` (below `dir`) is a directory reached through directories only:
    /// check (or create) each component not known yet, refusing a symlink.
    fn directory(&mut self, rel: &Path) -> Result<()> {
        if rel.as_os_str().is_empty() || self.known.contains(&key(rel)) {
            return Ok(());
        }
        // The deepest ancestor known already; below it, each component once.
        let mut from = rel;
        while let Some(p) = from.parent() {
            from = p;
            if p.as_os_str().is_empty() || self.known.contains(&key(p)) {
                break;
            }
        }
        let mut cur = from.to_path_buf();
        for c in rel.strip_prefix(from).unwrap_or(rel).components() {
            cur.push(c);
            let path = self.dir.join(&cur);
            self.lookups += 1;
            match fs::symlink_metadata(&path) {
                Ok(m) if m.is_dir() => {}
                Ok(m) if m.file_type().is_symlink() => return Err(through_symlink(&cur)),
                Ok(_) => {
                    return Err(Error::Layer(format!(
                        "entry below {} needs it to be a directory, but it is a file",
                        cur.display()
                    )));
                }
                Err(_) => {
                    fs::create_dir(&path).map_err(|e| io_err("create directory", &path, e))?
                }
            }
            self.known.insert(key(&cur));
        }
        Ok(())
    }

    /// Refuse `rel` (below `dir`) if any existing component of it is a symlink; unlike
    /// [`Self::directory`], nothing is created.
    fn check_no_symlinks(&mut self, rel: &Path) -> Result<()> {
        let mut cur = PathBuf::new();
        for c in rel.components() {
            cur.push(c);
            if self.known.contains(&key(&cur)) {
                continue;
            }
            self.lookups += 1;
            match fs::symlink_metadata(self.dir.join(&cur)) {
                Ok(m) if m.file_type().is_symlink() => return Err(through_symlink(&cur)),
                Ok(m) if m.is_dir() => {
                    self.known.insert(key(&cur));
                }
                _ => break,
            }
        }
        Ok(())
    }

    /// Remove whatever is at `path` (`rel` below `dir`), forgetting the directories that
    /// were there.
    fn remove(&mut self, rel: &Path, path: &Path) -> Result<()> {
        remove_any(path)?;
        let prefix = key(rel);
        let gone: Vec<Vec<u8>> = self
            .known
            .range(prefix.clone()..)
            .take_while(|k| k.starts_with(&prefix))
            .cloned()
            .collect();
        for k in gone {
            self.known.remove(&k);
        }
        Ok(())
    }
}

/// `rel` as the key of [`Unpacker::known`]: its bytes and a `/`. Paths from [`clean`]
/// have no empty or `.` components, so each directory has one key.
fn key(rel: &Path) -> Vec<u8> {
    let mut k = Vec::with_capacity(rel.as_os_str().len() + 1);
    k.extend_from_slice(rel.as_os_str().as_bytes());
    k.push(b'/');
    k
}

fn through_symlink(rel: &Path) -> Error {
    Error::Layer(format!(
        "entry below {} goes through a symlink; refusing to follow it out of the layer",
        rel.display()
    ))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn header(kind: tar::EntryType, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(if kind.is_dir() { 0o755 } else { 0o644 });
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h
    }

    #[test]
    fn flattening_applies_whiteouts_and_opaque_directories() {
        let layer = |entries: &[(&str, Option<&str>)]| {
            let mut b = tar::Builder::new(Vec::new());
            for (path, data) in entries {
                match data {
                    Some(d) => {
                        let mut h = header(tar::EntryType::Regular, d.len() as u64);
                        b.append_data(&mut h, path, d.as_bytes()).unwrap();
                    }
                    None => {
                        let mut h = header(tar::EntryType::Directory, 0);
                        b.append_data(&mut h, path, &b""[..]).unwrap();
                    }
                }
            }
            b.into_inner().unwrap()
        };
        let dir = tempfile::tempdir().unwrap();
        let lower = layer(&[
            ("etc/", None),
            ("etc/keep", Some("k")),
            ("etc/gone", Some("g")),
            ("opt/", None),
            ("opt/old", Some("o")),
        ]);
        // The marker comes after a file of its own layer, which must stay.
        let upper = layer(&[
            ("etc/.wh.gone", Some("")),
            ("opt/new", Some("n")),
            ("opt/.wh..wh..opq", Some("")),
        ]);
        apply_layer_flat(dir.path(), &lower[..]).unwrap();
        apply_layer_flat(dir.path(), &upper[..]).unwrap();
        let d = dir.path();
        assert_eq!(fs::read_to_string(d.join("etc/keep")).unwrap(), "k");
        assert!(!d.join("etc/gone").exists() && !d.join("etc/.wh.gone").exists());
        assert!(
            !d.join("opt/old").exists(),
            "the opaque marker hides lower files"
        );
        assert_eq!(fs::read_to_string(d.join("opt/new")).unwrap(), "n");
        assert!(!d.join("opt/.wh..wh..opq").exists());
        // Nothing of overlay's format is left: no whiteout devices.
        let mut stack = vec![d.to_path_buf()];
        while let Some(p) = stack.pop() {
            for e in fs::read_dir(&p).unwrap().flatten() {
                let ft = e.file_type().unwrap();
                assert!(ft.is_dir() || ft.is_file(), "{:?}", e.path());
                if ft.is_dir() {
                    stack.push(e.path());
                }
            }
        }
    }

    #[test]
    fn deep_paths_unpack_in_linear_work() {
        // 1000 nested directories, then 1000 files at the bottom: each directory is
        // looked up once, not once per entry below it. (Deeper only costs the kernel's
        // walk of each path, which grows with its length, as reading it does.)
        const DEPTH: usize = 1000;
        const FILES: usize = 1000;
        let mut b = tar::Builder::new(Vec::new());
        let mut path = String::new();
        for _ in 0..DEPTH {
            path.push_str("d/");
            b.append_data(&mut header(tar::EntryType::Directory, 0), &path, &b""[..])
                .unwrap();
        }
        for i in 0..FILES {
            let data = format!("file {i}");
            let mut h = header(tar::EntryType::Regular, data.len() as u64);
            b.append_data(&mut h, format!("{path}f{i}"), data.as_bytes())
                .unwrap();
        }
        // A hard link from the top to the bottom, and a file whose parents are not in
        // the layer (made on the way).
        let mut h = header(tar::EntryType::Link, 0);
        b.append_link(&mut h, "top", format!("{path}f7")).unwrap();
        let mut h = header(tar::EntryType::Regular, 1);
        b.append_data(&mut h, format!("e/{path}x"), &b"x"[..])
            .unwrap();
        let data = b.into_inner().unwrap();
        // In memory where there is a tmpfs: creating inodes on a busy ext4 is slow.
        let dst = tempfile::tempdir_in("/dev/shm")
            .or_else(|_| tempfile::tempdir())
            .unwrap();
        let lookups = Unpacker::new(dst.path()).run(data.as_slice()).unwrap();
        let bottom = dst.path().join(&path);
        assert_eq!(fs::read(bottom.join("f999")).unwrap(), b"file 999");
        assert_eq!(fs::read(dst.path().join("top")).unwrap(), b"file 7");
        assert_eq!(
            fs::read(dst.path().join("e").join(&path).join("x")).unwrap(),
            b"x"
        );
        // One lookup per directory of the layer (DEPTH + 1 + DEPTH of `e/...`), one
        // per component of the link's target; nothing per file. The old walk made
        // DEPTH lookups for each of the FILES entries (a million), and tar-rs's
        // canonicalize as many again.
        assert!(
            lookups <= (3 * DEPTH + 2) as u64,
            "{lookups} lookups for {DEPTH} levels and {FILES} files"
        );
    }

    #[test]
    fn a_directory_replaced_by_a_symlink_is_forgotten() {
        // d/ is made and remembered; then d becomes a symlink out of the layer; an
        // entry below d must be refused, not written through the link.
        let outside = tempfile::tempdir().unwrap();
        let mut b = tar::Builder::new(Vec::new());
        b.append_data(
            &mut header(tar::EntryType::Directory, 0),
            "d/sub/",
            &b""[..],
        )
        .unwrap();
        let mut h = header(tar::EntryType::Symlink, 0);
        b.append_link(&mut h, "d", outside.path()).unwrap();
        let mut h = header(tar::EntryType::Regular, 1);
        b.append_data(&mut h, "d/sub/x", &b"x"[..]).unwrap();
        let data = b.into_inner().unwrap();
        let dst = tempfile::tempdir().unwrap();
        let err = apply_layer(dst.path(), data.as_slice()).unwrap_err();
        assert!(err.to_string().contains("symlink"), "{err}");
        assert!(!outside.path().join("sub").exists());
    }

    #[test]
    fn a_canceled_reader_stops_the_unpack() {
        let mut b = tar::Builder::new(Vec::new());
        for i in 0..100 {
            let mut h = header(tar::EntryType::Regular, 4096);
            b.append_data(&mut h, format!("f{i}"), &[0u8; 4096][..])
                .unwrap();
        }
        let data = b.into_inner().unwrap();
        let dst = tempfile::tempdir().unwrap();
        let reads = std::cell::Cell::new(0);
        // Small reads, canceled after the tenth.
        let reader = Cancelable::new(
            std::io::BufReader::with_capacity(512, data.as_slice()),
            || {
                reads.set(reads.get() + 1);
                reads.get() > 10
            },
        );
        let err = apply_layer(dst.path(), reader).unwrap_err();
        assert!(err.to_string().contains("canceled"), "{err}");
        assert!(fs::read_dir(dst.path()).unwrap().count() < 100);
    }

    /// A regular file comes out with the header's contents, owner, mode (setuid
    /// included) and time, replacing a file in the way; a layer cut inside a file's
    /// contents is an error naming that file.
    #[test]
    fn regular_files_take_contents_owner_mode_and_time() {
        let big: Vec<u8> = (0..(3 << 20) + 17).map(|i| (i % 251) as u8).collect();
        let mut b = tar::Builder::new(Vec::new());
        let mut h = header(tar::EntryType::Regular, big.len() as u64);
        h.set_uid(1234);
        h.set_gid(5678);
        h.set_mode(0o4755);
        h.set_mtime(1_000_000);
        b.append_data(&mut h, "bin/tool", big.as_slice()).unwrap();
        let mut h = header(tar::EntryType::Regular, 3);
        b.append_data(&mut h, "old", &b"new"[..]).unwrap();
        let data = b.into_inner().unwrap();
        let dst = tempfile::tempdir().unwrap();
        fs::write(dst.path().join("old"), "old contents").unwrap();
        apply_layer(dst.path(), data.as_slice()).unwrap();
        use std::os::unix::fs::MetadataExt;
        let tool = dst.path().join("bin/tool");
        // (before reading it: a read moves the access time)
        let m = fs::metadata(&tool).unwrap();
        assert_eq!((m.uid(), m.gid()), (1234, 5678));
        assert_eq!(m.mode() & 0o7777, 0o4755);
        assert_eq!((m.mtime(), m.atime()), (1_000_000, 1_000_000));
        assert_eq!(fs::read(&tool).unwrap(), big);
        assert_eq!(fs::read(dst.path().join("old")).unwrap(), b"new");

        let cut = &data[..512 + (2 << 20)];
        let dst = tempfile::tempdir().unwrap();
        let err = apply_layer(dst.path(), cut).unwrap_err().to_string();
        assert!(err.contains("bin/tool"), "{err}");
    }
}
