//! COPY and friends, on real directories: resolving sources (globs, `.dockerignore`),
//! checksumming them for cache keys, and copying them into a mounted root file system.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use berth_oci::{Algorithm, Digest};

use crate::error::{BuildError, Result};
use crate::mode::ModeSet;
use crate::pattern::{Ignore, Pattern, match_component};

/// One matched source: its path relative to the source root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matched {
    /// Relative path (empty for the root itself).
    pub rel: String,
}

fn io_err(op: &str, path: &Path, e: io::Error) -> BuildError {
    BuildError::Io(format!("{op} {}: {e}", path.display()))
}

/// Resolve COPY sources (paths or globs) under `root`, as BuildKit does: a plain path
/// that does not exist, or is excluded, is an error naming it; a glob that matches
/// nothing is skipped (so a COPY whose every source is such a glob copies nothing), but
/// the folders before its first wildcard must exist.
pub fn resolve_sources(root: &Path, sources: &[String], ignore: &Ignore) -> Result<Vec<Matched>> {
    resolve_sources_with(root, sources, ignore, false)
}

/// [`resolve_sources`]; with `no_follow` (Earthly's `--symlink-no-follow`) a plain path
/// that is a symbolic link is the link itself, so a dangling one is found too.
pub fn resolve_sources_with(
    root: &Path,
    sources: &[String],
    ignore: &Ignore,
    no_follow: bool,
) -> Result<Vec<Matched>> {
    let mut out = Vec::new();
    for src in sources {
        let pat = Pattern::new(src);
        if !pat.has_wildcards() {
            let rel = pat.path();
            let path = if no_follow {
                resolve_link_in_root(root, &rel)?
            } else {
                resolve_in_root(root, &rel)?
            };
            if fs::symlink_metadata(&path).is_err() || (!rel.is_empty() && ignore.excludes(&rel)) {
                return Err(BuildError::SourceNotFound(src.clone()));
            }
            out.push(Matched { rel });
            continue;
        }
        let parts: Vec<String> = pat.path().split('/').map(str::to_string).collect();
        let fixed = parts
            .iter()
            .take_while(|p| !Pattern::new(p).has_wildcards())
            .count();
        // The folders before the first wildcard are followed through links (inside the
        // root), as BuildKit resolves them; below, links are not descended.
        let prefix = parts[..fixed].join("/");
        let base = resolve_in_root(root, &prefix)?;
        if fs::symlink_metadata(&base).is_err() {
            return Err(BuildError::SourceNotFound(src.clone()));
        }
        let mut found = Vec::new();
        glob_walk(&base, &prefix, &parts[fixed..], ignore, &mut found)?;
        found.sort();
        out.extend(found.into_iter().map(|rel| Matched { rel }));
    }
    Ok(out)
}

/// The paths below the real folder `dir` (`rel` in the source) that `parts` match.
fn glob_walk(
    dir: &Path,
    rel: &str,
    parts: &[String],
    ignore: &Ignore,
    out: &mut Vec<String>,
) -> Result<()> {
    let Some((first, rest)) = parts.split_first() else {
        out.push(rel.to_string());
        return Ok(());
    };
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(());
    };
    for e in entries {
        let e = e.map_err(|e| io_err("read directory", dir, e))?;
        let name = e.file_name().to_string_lossy().into_owned();
        let child = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        if ignore.excludes(&child) {
            continue;
        }
        if match_component(first.as_bytes(), name.as_bytes()) {
            if rest.is_empty() {
                out.push(child);
            } else if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                glob_walk(&e.path(), &child, rest, ignore, out)?;
            }
        }
    }
    Ok(())
}

/// Every path under the matched sources, in order, with ignore rules applied. A
/// top-level source that is a symlink is walked as what it points to (inside `root`),
/// since that is what COPY copies.
fn walk_matched(
    root: &Path,
    matched: &[Matched],
    ignore: &Ignore,
    f: &mut dyn FnMut(&str, &Path, &fs::Metadata) -> Result<()>,
) -> Result<()> {
    fn rec(
        path: &Path,
        rel: &str,
        ignore: &Ignore,
        f: &mut dyn FnMut(&str, &Path, &fs::Metadata) -> Result<()>,
    ) -> Result<()> {
        let meta = fs::symlink_metadata(path).map_err(|e| io_err("stat", path, e))?;
        let excluded = !rel.is_empty() && ignore.excludes(rel);
        if !excluded {
            f(rel, path, &meta)?;
        }
        if meta.is_dir() && (!excluded || ignore.may_reinclude_below(rel)) {
            let mut names: Vec<String> = fs::read_dir(path)
                .map_err(|e| io_err("read directory", path, e))?
                .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
                .collect();
            names.sort();
            for n in names {
                let child = if rel.is_empty() {
                    n.clone()
                } else {
                    format!("{rel}/{n}")
                };
                rec(&path.join(&n), &child, ignore, f)?;
            }
        }
        Ok(())
    }
    for m in matched {
        let top = resolve_in_root(root, &m.rel)?;
        rec(&top, &m.rel, ignore, f)?;
    }
    Ok(())
}

/// For each path below `dir` (which is `rel` in the context) that `ignore` excludes,
/// put an overlayfs whiteout at the same place below `upper`, so an overlay of `dir`
/// with that upper directory shows the context as the build sees it.
pub fn whiteout_ignored(dir: &Path, rel: &str, ignore: &Ignore, upper: &Path) -> Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => return Err(io_err("read directory", dir, e)),
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let child_rel = if rel.is_empty() {
            name.to_string_lossy().into_owned()
        } else {
            format!("{rel}/{}", name.to_string_lossy())
        };
        let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
        let none = Ignore::default();
        if ignore.excludes(&child_rel)
            && !(is_dir && any_included(&e.path(), &child_rel, "", ignore, &none)?)
        {
            fs::create_dir_all(upper).map_err(|err| io_err("create directory", upper, err))?;
            let w = upper.join(&name);
            rustix::fs::mknodat(
                rustix::fs::CWD,
                &w,
                rustix::fs::FileType::CharacterDevice,
                rustix::fs::Mode::empty(),
                0,
            )
            .map_err(|err| io_err("create whiteout", &w, err.into()))?;
        } else if is_dir {
            whiteout_ignored(&e.path(), &child_rel, ignore, &upper.join(&name))?;
        }
    }
    Ok(())
}

/// Whether anything below the folder `dir` (`rel` from the context root, `src_rel` from
/// the copied source) is kept by both `ignore` (matched on `rel`) and `exclude` (on
/// `src_rel`): an excluded folder holds something an exception re-includes. Folders
/// no exception can reach are not walked.
fn any_included(
    dir: &Path,
    rel: &str,
    src_rel: &str,
    ignore: &Ignore,
    exclude: &Ignore,
) -> Result<bool> {
    let reachable = |ig: &Ignore, r: &str| !ig.excludes(r) || ig.may_reinclude_below(r);
    if !(rel.is_empty() || reachable(ignore, rel))
        || !(src_rel.is_empty() || reachable(exclude, src_rel))
    {
        return Ok(false);
    }
    let entries = fs::read_dir(dir).map_err(|e| io_err("read directory", dir, e))?;
    for e in entries {
        let e = e.map_err(|e| io_err("read directory", dir, e))?;
        let name = e.file_name().to_string_lossy().into_owned();
        let join = |base: &str| {
            if base.is_empty() {
                name.clone()
            } else {
                format!("{base}/{name}")
            }
        };
        let (child_rel, child_src) = (join(rel), join(src_rel));
        if !ignore.excludes(&child_rel) && !exclude.excludes(&child_src) {
            return Ok(true);
        }
        if e.file_type().is_ok_and(|t| t.is_dir())
            && any_included(&e.path(), &child_rel, &child_src, ignore, exclude)?
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// A file's content hash, remembered with what identifies that version of the file:
/// size, modification and change times (nanoseconds) and inode. Any write changes the
/// change time, so a hit means the same content without reading it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CachedSum {
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    ino: u64,
    sum: String,
}

impl CachedSum {
    /// The hash `sum` (`f <hex>`) of the file whose metadata is `meta`.
    pub fn new(meta: &fs::Metadata, sum: String) -> CachedSum {
        CachedSum {
            size: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
            ino: meta.ino(),
            sum,
        }
    }
}

/// Content hashes of one context directory, by relative path.
pub type SumMap = HashMap<String, CachedSum>;

/// [`SumMap`] shared by the steps of a build.
pub type SumCache = std::sync::Mutex<SumMap>;

/// Content checksum of the matched sources: names, types, modes, link targets and file
/// contents — never timestamps — so a touched but unchanged file keeps the cache. Also
/// returns each file's own hash, for cache-miss reasons. Content hashes come from
/// `cache` for files whose metadata says they did not change; new ones are recorded.
pub fn checksum_cached(
    root: &Path,
    matched: &[Matched],
    ignore: &Ignore,
    cache: Option<&SumCache>,
) -> Result<(Digest, Vec<(String, String)>)> {
    let mut total = Algorithm::Sha256.hasher();
    let mut files = Vec::new();
    let mut buf = vec![0u8; 256 << 10];
    walk_matched(root, matched, ignore, &mut |rel, path, meta| {
        let ft = meta.file_type();
        let summary = if ft.is_symlink() {
            format!(
                "l {}",
                fs::read_link(path)
                    .map_err(|e| io_err("read link", path, e))?
                    .display()
            )
        } else if ft.is_dir() {
            "d".to_string()
        } else if ft.is_file() {
            let id = |sum: String| CachedSum {
                size: meta.len(),
                mtime: (meta.mtime(), meta.mtime_nsec()),
                ctime: (meta.ctime(), meta.ctime_nsec()),
                ino: meta.ino(),
                sum,
            };
            let known = cache.and_then(|c| c.lock().expect("sums").get(rel).cloned());
            match known {
                Some(k) if k == id(k.sum.clone()) => k.sum,
                _ => {
                    let mut h = Algorithm::Sha256.hasher();
                    let mut f = fs::File::open(path).map_err(|e| io_err("open", path, e))?;
                    loop {
                        let n = f.read(&mut buf).map_err(|e| io_err("read", path, e))?;
                        if n == 0 {
                            break;
                        }
                        h.update(&buf[..n]);
                    }
                    let sum = format!("f {}", h.finish().hex());
                    if let Some(c) = cache {
                        c.lock()
                            .expect("sums")
                            .insert(rel.to_string(), id(sum.clone()));
                    }
                    sum
                }
            }
        } else {
            "o".to_string()
        };
        let line = format!("{rel}\0{:o}\0{summary}\n", meta.mode() & 0o7777);
        total.update(line.as_bytes());
        files.push((rel.to_string(), summary));
        Ok(())
    })?;
    Ok((total.finish(), files))
}

/// `--chmod`: an octal mode, or a symbolic one applied to each entry's own mode.
#[derive(Debug, Clone, Copy)]
pub enum Chmod {
    /// `--chmod=0755`.
    Octal(u32),
    /// `--chmod=u+x,go-w`.
    Symbolic(ModeSet),
}

/// How a copy sets ownership and modes.
#[derive(Debug, Clone, Copy, Default)]
pub struct CopyOptions {
    /// Owner for everything written; `None` keeps the source's owner if `keep_owner`,
    /// else root.
    pub chown: Option<(u32, u32)>,
    /// Mode for everything written.
    pub chmod: Option<Chmod>,
    /// The source is a stage's file system (COPY --from), not a build context: keep
    /// its owners instead of root, and copy its devices, fifos and sockets.
    pub keep_owner: bool,
    /// Unpack tar and tar.gz sources into the destination (ADD).
    pub extract_archives: bool,
    /// The modification time of everything written (seconds since the epoch); `None`
    /// keeps the source's.
    pub mtime: Option<i64>,
    /// A top-level source that is a symbolic link is copied as the link (Earthly's
    /// `--symlink-no-follow`), not as what it points to.
    pub no_follow: bool,
}

/// Copy `src` (a file, a link or a folder) from a build's file system to `dest` on the
/// host, replacing what is there: modes, links and modification times kept.
pub fn copy_out(src: &Path, dest: &Path) -> std::io::Result<()> {
    if let Ok(m) = fs::symlink_metadata(dest) {
        if m.is_dir() {
            fs::remove_dir_all(dest)?;
        } else {
            fs::remove_file(dest)?;
        }
    }
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent)?;
    }
    copy_tree(src, dest)
}

/// Copy `src` (a file, a link or a folder) to `dest`, which must not exist: modes,
/// links and modification times kept.
pub fn copy_tree(src: &Path, dest: &Path) -> std::io::Result<()> {
    let meta = fs::symlink_metadata(src)?;
    if meta.file_type().is_symlink() {
        return std::os::unix::fs::symlink(fs::read_link(src)?, dest);
    }
    if meta.is_dir() {
        fs::create_dir(dest)?;
        for e in fs::read_dir(src)? {
            let e = e?;
            copy_tree(&e.path(), &dest.join(e.file_name()))?;
        }
        fs::set_permissions(dest, meta.permissions())?;
    } else {
        fs::copy(src, dest)?;
    }
    let times = fs::FileTimes::new().set_modified(meta.modified()?);
    fs::File::open(dest)?.set_times(times)
}

/// [`resolve_in_root`] of the folders of `path`, its last component left as it is: a
/// symbolic link there is the link, not what it points to.
pub fn resolve_link_in_root(root: &Path, path: &str) -> Result<PathBuf> {
    let trimmed = path.trim_end_matches('/');
    let (dir, name) = trimmed.rsplit_once('/').unwrap_or(("", trimmed));
    if name.is_empty() || name == "." || name == ".." {
        return resolve_in_root(root, path);
    }
    Ok(resolve_in_root(root, dir)?.join(name))
}

/// Resolve `path` (absolute, inside the container) against `root`, following symlinks as
/// the container would see them, so nothing is read or written outside `root`. The
/// result holds no symlink but perhaps the last component, when that one does not
/// exist. More than 40 links is an error (as ELOOP), never a path left unresolved.
pub fn resolve_in_root(root: &Path, path: &str) -> Result<PathBuf> {
    let mut out = PathBuf::new();
    let mut pending: Vec<String> = path
        .split('/')
        .filter(|c| !c.is_empty())
        .rev()
        .map(str::to_string)
        .collect();
    let mut hops = 0;
    while let Some(c) = pending.pop() {
        match c.as_str() {
            "." => continue,
            ".." => {
                out.pop();
                continue;
            }
            _ => {}
        }
        let candidate = root.join(&out).join(&c);
        match fs::read_link(&candidate) {
            Ok(_) if hops >= 40 => {
                return Err(BuildError::Invalid(format!(
                    "{path}: too many levels of symbolic links inside the image"
                )));
            }
            Ok(target) => {
                hops += 1;
                if target.is_absolute() {
                    out = PathBuf::new();
                }
                let comps: Vec<String> = target
                    .components()
                    .filter_map(|c| match c {
                        Component::Normal(n) => Some(n.to_string_lossy().into_owned()),
                        Component::ParentDir => Some("..".into()),
                        _ => None,
                    })
                    .collect();
                pending.extend(comps.into_iter().rev());
            }
            Err(_) => out.push(&c),
        }
    }
    Ok(root.join(out))
}

/// Create `dir` and missing parents inside `root` (0755, owned as `chown` or root).
/// A symlink on the way is followed inside `root`, and the directories its target
/// lacks are made too, as Docker does: with `/app -> /opt/app` and no `/opt`,
/// `mkdir_all(root, "/app/x")` makes `/opt`, `/opt/app` and `/opt/app/x`.
pub fn mkdir_all(root: &Path, dir: &str, chown: Option<(u32, u32)>) -> Result<PathBuf> {
    let mut cur = String::new();
    for c in dir.split('/').filter(|c| !c.is_empty()) {
        cur.push('/');
        cur.push_str(c);
        let p = resolve_in_root(root, &cur)?;
        if fs::symlink_metadata(&p).is_err() {
            // `p` holds no symlink (resolve_in_root), but a link's target may name
            // several directories that do not exist yet: make each, outermost first.
            let rel = p.strip_prefix(root).unwrap_or(&p).to_path_buf();
            let mut at = root.to_path_buf();
            for part in rel.components() {
                at.push(part);
                if fs::symlink_metadata(&at).is_ok() {
                    continue;
                }
                fs::create_dir(&at).map_err(|e| io_err("create directory", &at, e))?;
                let (u, g) = chown.unwrap_or((0, 0));
                std::os::unix::fs::lchown(&at, Some(u), Some(g))
                    .map_err(|e| io_err("chown", &at, e))?;
            }
        }
    }
    resolve_in_root(root, dir)
}

/// Copy matched sources from `src_root` to `dest` (absolute inside `dst_root`), with
/// BuildKit's rules, each source on its own: a directory source copies its contents; a
/// file source goes into `dest` if `dest` ends in `/` or is a directory, else to `dest`
/// itself (so with several sources and such a destination the last one wins). `dest` is
/// resolved inside `dst_root` with its links, the last one included: a file copied onto
/// a link replaces the link's target. Files hard-linked to each other within one source
/// stay hard-linked. With `opts.extract_archives` (ADD), a file source that is a tar,
/// plain or compressed (gzip, bzip2, xz), is unpacked into `dest`.
pub fn copy(
    src_root: &Path,
    matched: &[Matched],
    ignore: &Ignore,
    exclude: &Ignore,
    dst_root: &Path,
    dest: &str,
    opts: CopyOptions,
) -> Result<()> {
    let mut copier = Copier::new(ignore, exclude, opts, dst_root);
    for m in matched {
        // Hard links are kept within one source, as BuildKit copies each source on its
        // own: `COPY a b /dst/` with `b -> a` gives two files, never two names of one.
        copier.links.clear();
        // The top-level source is followed if it is a symlink, as Docker does — but
        // inside the source's own root, never the host's.
        let src = if opts.no_follow {
            resolve_link_in_root(src_root, &m.rel)?
        } else {
            resolve_in_root(src_root, &m.rel)?
        };
        let meta = fs::symlink_metadata(&src).map_err(|e| io_err("stat", &src, e))?;
        if meta.is_dir() {
            let dir = mkdir_all(dst_root, dest, opts.chown)?;
            copier.dir_at(&dir)?;
            copier.tree(&src, &m.rel, "", &dir)?;
            continue;
        }
        if opts.extract_archives
            && meta.is_file()
            && let Some(kind) = archive_kind(&src)?
        {
            let dir = mkdir_all(dst_root, dest, opts.chown)?;
            extract(&src, kind, &dir, opts.chown)?;
            continue;
        }
        let base = Path::new(&m.rel)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let file = file_dest(dst_root, dest, &base, opts.chown)?;
        copier.entry(&src, &meta, &file)?;
    }
    Ok(())
}

/// `COPY --parents`: each source keeps its path, from the context root or from its
/// pivot `/./` (`x/./y/*.txt` copies `x/y/a.txt` to `dest/y/a.txt`), as BuildKit turns
/// the source into an include pattern over its pivot folder. A source without
/// wildcards must exist; `*` stays within one level, `**` crosses levels.
pub fn copy_parents(
    src_root: &Path,
    sources: &[String],
    ignore: &Ignore,
    exclude: &Ignore,
    dst_root: &Path,
    dest: &str,
    opts: CopyOptions,
) -> Result<()> {
    let dir = mkdir_all(dst_root, dest, opts.chown)?;
    for src in sources {
        let (pivot, pattern) = parents_pivot(src);
        let pattern = Pattern::new(pattern);
        if !pattern.has_wildcards() {
            let rel = Pattern::new(&format!("{pivot}/{}", pattern.path())).path();
            if fs::symlink_metadata(resolve_in_root(src_root, &rel)?).is_err()
                || ignore.excludes(&rel)
            {
                return Err(BuildError::SourceNotFound(src.clone()));
            }
        }
        let pivot = Pattern::new(pivot).path();
        let base = resolve_in_root(src_root, &pivot)?;
        if !fs::symlink_metadata(&base).is_ok_and(|m| m.is_dir()) {
            return Err(BuildError::SourceNotFound(src.clone()));
        }
        let mut copier = Copier::new(ignore, exclude, opts, dst_root);
        copier.parents(&base, &pivot, "", &pattern, &dir)?;
    }
    Ok(())
}

/// The pivot folder of a `COPY --parents` source and the pattern below it: what comes
/// before `/./`, or the context root.
pub fn parents_pivot(src: &str) -> (&str, &str) {
    src.split_once("/./").unwrap_or(("", src))
}

/// Where a file named `name` copied to `dest` (absolute inside `root`) goes, its
/// missing parent folders made (owned as `chown`): into `dest` if it ends in `/` (the
/// caller adds one where BuildKit sees a folder: `.`, `dir/`) or is a folder in the
/// image, else to `dest` itself, resolved with its links, the last one included (a file
/// copied onto a link replaces the link's target), inside `root`.
pub fn file_dest(
    root: &Path,
    dest: &str,
    name: &str,
    chown: Option<(u32, u32)>,
) -> Result<PathBuf> {
    let dir_hint = dest.ends_with('/');
    let resolved = resolve_in_root(root, dest)?;
    if dir_hint || fs::symlink_metadata(&resolved).is_ok_and(|m| m.is_dir()) {
        return Ok(mkdir_all(root, dest, chown)?.join(name));
    }
    let inside = Path::new("/").join(resolved.strip_prefix(root).unwrap_or(&resolved));
    let parent = inside.parent().unwrap_or(Path::new("/"));
    let file = inside
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or(name.into());
    Ok(mkdir_all(root, &parent.to_string_lossy(), chown)?.join(file))
}

/// How an archive ADD unpacks is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compression {
    None,
    Gzip,
    Bzip2,
    Xz,
    Zstd,
}

impl Compression {
    /// The compression `head` (a file's first bytes) starts with, by magic number, as
    /// Docker's archive package detects it.
    fn detect(head: &[u8]) -> Compression {
        if head.starts_with(&[0x1f, 0x8b, 0x08]) {
            Compression::Gzip
        } else if head.starts_with(b"BZh") {
            Compression::Bzip2
        } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
            Compression::Xz
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }

    /// `file`, decompressed.
    fn reader(self, file: fs::File) -> Result<Box<dyn Read>> {
        let file = io::BufReader::new(file);
        Ok(match self {
            Compression::None => Box::new(file),
            Compression::Gzip => Box::new(flate2::read::GzDecoder::new(file)),
            Compression::Bzip2 => Box::new(bzip2::read::MultiBzDecoder::new(file)),
            Compression::Xz => Box::new(lzma_rust2::XzReader::new(file, true)),
            Compression::Zstd => Box::new(
                zstd::stream::read::Decoder::with_buffer(file)
                    .map_err(|e| BuildError::Io(format!("read zstd stream: {e}")))?,
            ),
        })
    }
}

/// What ADD unpacks: a file whose content, decompressed if it is gzip, bzip2, xz or zstd,
/// starts with a valid tar header (BuildKit's test: the first entry reads). Anything
/// else, a gzip file that is not a tar or an empty file included, is copied as it is.
fn archive_kind(path: &Path) -> Result<Option<Compression>> {
    let mut f = fs::File::open(path).map_err(|e| io_err("open", path, e))?;
    let mut head = [0u8; 6];
    let mut n = 0;
    while n < head.len() {
        match f
            .read(&mut head[n..])
            .map_err(|e| io_err("read", path, e))?
        {
            0 => break,
            k => n += k,
        }
    }
    let kind = Compression::detect(&head[..n]);
    let f = fs::File::open(path).map_err(|e| io_err("open", path, e))?;
    let mut archive = tar::Archive::new(kind.reader(f)?);
    let is_tar = archive
        .entries()
        .ok()
        .and_then(|mut e| e.next())
        .is_some_and(|e| e.is_ok());
    Ok(is_tar.then_some(kind))
}

/// Unpack a tar compressed as `kind` into `dir` as Docker's archive package does for
/// ADD: entries keep their modes, owners (unless `chown`, ADD --chown, names others,
/// applied before the xattrs so a `security.capability` stays) and xattrs (those the
/// file system refuses are left out, as Docker ignores ENOTSUP and EPERM); an entry
/// replaces what is at its path unless both are folders (folders merge); missing
/// parents are made 0755; a hard link is made to its target inside `dir`; names like
/// `.wh.x` are plain files here (whiteouts mean something in layers only); paths and
/// links resolve inside `dir`, and an entry climbing out of it is an error. Folder times
/// are set last, once their contents are in.
fn extract(archive: &Path, kind: Compression, dir: &Path, chown: Option<(u32, u32)>) -> Result<()> {
    let unpack_err = |e| io_err("unpack archive", archive, e);
    let f = fs::File::open(archive).map_err(|e| io_err("open", archive, e))?;
    let mut a = tar::Archive::new(kind.reader(f)?);
    a.set_preserve_permissions(true);
    a.set_preserve_ownerships(chown.is_none());
    // xattrs are set below, failures ignored as Docker's unpack ignores ENOTSUP and
    // EPERM (an archive made on an SELinux host carries security.selinux).
    let mut dir_times = Vec::new();
    for entry in a.entries().map_err(unpack_err)? {
        let mut entry = entry.map_err(unpack_err)?;
        let name = entry.path().map_err(unpack_err)?.into_owned();
        let parts = archive_path(archive, &name)?;
        let at = match parts.split_last() {
            None => dir.to_path_buf(),
            Some((last, parents)) => {
                let parent = resolve_in_root(dir, &parents.join("/"))?;
                if fs::symlink_metadata(&parent).is_err() {
                    fs::create_dir_all(&parent)
                        .map_err(|e| io_err("create directory", &parent, e))?;
                }
                parent.join(last)
            }
        };
        let kind = entry.header().entry_type();
        if let Ok(old) = fs::symlink_metadata(&at)
            && !(old.is_dir() && kind.is_dir())
        {
            let removed = if old.is_dir() {
                fs::remove_dir_all(&at)
            } else {
                fs::remove_file(&at)
            };
            removed.map_err(|e| io_err("replace", &at, e))?;
        }
        let header = entry.header();
        let mode = header.mode().map_err(unpack_err)? & 0o7777;
        let owner = match chown {
            Some(ids) => ids,
            None => (
                header.uid().map_err(unpack_err)? as u32,
                header.gid().map_err(unpack_err)? as u32,
            ),
        };
        // Hard links, fifos and devices are made here (tar-rs writes a fifo as a file),
        // and take the entry's owner and mode, as Docker's unpack gives them: for a hard
        // link, to the inode it shares.
        let special = if kind.is_hard_link() {
            let target = entry.link_name().map_err(unpack_err)?.ok_or_else(|| {
                BuildError::Io(format!("{}: a hard link without target", name.display()))
            })?;
            let target = resolve_in_root(dir, &archive_path(archive, &target)?.join("/"))?;
            fs::hard_link(&target, &at).map_err(|e| io_err("hard link", &at, e))?;
            true
        } else if kind.is_fifo() || kind.is_character_special() || kind.is_block_special() {
            let (file_type, dev) = if kind.is_fifo() {
                (rustix::fs::FileType::Fifo, 0)
            } else {
                let major = header.device_major().ok().flatten().unwrap_or(0);
                let minor = header.device_minor().ok().flatten().unwrap_or(0);
                let t = if kind.is_character_special() {
                    rustix::fs::FileType::CharacterDevice
                } else {
                    rustix::fs::FileType::BlockDevice
                };
                (t, rustix::fs::makedev(major, minor))
            };
            rustix::fs::mknodat(
                rustix::fs::CWD,
                &at,
                file_type,
                rustix::fs::Mode::from_raw_mode(mode),
                dev,
            )
            .map_err(|e| io_err("create special file", &at, e.into()))?;
            true
        } else {
            false
        };
        if special {
            std::os::unix::fs::lchown(&at, Some(owner.0), Some(owner.1))
                .map_err(|e| io_err("chown", &at, e))?;
            fs::set_permissions(&at, fs::Permissions::from_mode(mode))
                .map_err(|e| io_err("chmod", &at, e))?;
            continue;
        }
        // After the owner: a chown clears security.capability.
        let xattrs: Vec<(String, Vec<u8>)> = match entry.pax_extensions() {
            Ok(Some(pax)) => pax
                .filter_map(|e| e.ok())
                .filter_map(|e| {
                    let key = e.key().ok()?.strip_prefix("SCHILY.xattr.")?.to_string();
                    Some((key, e.value_bytes().to_vec()))
                })
                .collect(),
            _ => Vec::new(),
        };
        entry.unpack(&at).map_err(unpack_err)?;
        if kind.is_dir() {
            dir_times.push((at.clone(), entry.header().mtime().unwrap_or(0)));
        }
        if let Some((uid, gid)) = chown {
            std::os::unix::fs::lchown(&at, Some(uid), Some(gid))
                .map_err(|e| io_err("chown", &at, e))?;
            if !kind.is_symlink() {
                fs::set_permissions(&at, fs::Permissions::from_mode(mode))
                    .map_err(|e| io_err("chmod", &at, e))?;
            }
        }
        for (key, value) in &xattrs {
            let _ = rustix::fs::lsetxattr(&at, key, value, rustix::fs::XattrFlags::empty());
        }
    }
    for (at, mtime) in dir_times.into_iter().rev() {
        let t = rustix::fs::Timespec {
            tv_sec: mtime as i64,
            tv_nsec: 0,
        };
        let times = rustix::fs::Timestamps {
            last_access: t,
            last_modification: t,
        };
        let _ = rustix::fs::utimensat(rustix::fs::CWD, &at, &times, rustix::fs::AtFlags::empty());
    }
    Ok(())
}

/// The components of an archive entry's `name`, cleaned as Go's `filepath.Clean` (`./`
/// and `a/../` gone); one that climbs above the archive's root is an error.
fn archive_path(archive: &Path, name: &Path) -> Result<Vec<String>> {
    let mut parts: Vec<String> = Vec::new();
    for c in name.components() {
        match c {
            Component::Normal(n) => parts.push(n.to_string_lossy().into_owned()),
            // `..` pops the folder before it; with none left, it climbs out.
            Component::ParentDir if parts.pop().is_none() => {
                return Err(BuildError::Invalid(format!(
                    "unpack archive {}: entry {} points outside the destination",
                    archive.display(),
                    name.display()
                )));
            }
            _ => {}
        }
    }
    Ok(parts)
}

/// One copy: remembers the first copy of each multiply-linked file, so later links to
/// it become hard links again.
struct Copier<'a> {
    /// .dockerignore: paths relative to the context root.
    ignore: &'a Ignore,
    /// `COPY --exclude`: paths relative to each source (as BuildKit matches them; the
    /// source itself is never excluded).
    exclude: &'a Ignore,
    opts: CopyOptions,
    links: HashMap<(u64, u64), PathBuf>,
    /// The destination root: symlinks met in the destination resolve inside it.
    root: &'a Path,
}

impl<'a> Copier<'a> {
    fn new(ignore: &'a Ignore, exclude: &'a Ignore, opts: CopyOptions, root: &'a Path) -> Self {
        Copier {
            ignore,
            exclude,
            opts,
            links: HashMap::new(),
            root,
        }
    }

    fn tree(&mut self, src: &Path, rel: &str, src_rel: &str, dst: &Path) -> Result<()> {
        self.tree_into(src, rel, src_rel, dst, false)
    }

    /// [`Copier::tree`] into `dst`, which this copy made (`fresh`: empty, so nothing in
    /// it needs replacing; a COPY of thousands of files saves a stat each through the
    /// overlay).
    fn tree_into(
        &mut self,
        src: &Path,
        rel: &str,
        src_rel: &str,
        dst: &Path,
        fresh: bool,
    ) -> Result<()> {
        let mut names: Vec<_> = fs::read_dir(src)
            .map_err(|e| io_err("read directory", src, e))?
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .collect();
        names.sort();
        for n in names {
            let s = src.join(&n);
            let child_rel = if rel.is_empty() {
                n.to_string_lossy().into_owned()
            } else {
                format!("{rel}/{}", n.to_string_lossy())
            };
            let child_src = if src_rel.is_empty() {
                n.to_string_lossy().into_owned()
            } else {
                format!("{src_rel}/{}", n.to_string_lossy())
            };
            let ignored = self.ignore.excludes(&child_rel);
            let excluded_here = self.exclude.excludes(&child_src);
            let excluded = ignored || excluded_here;
            let meta = fs::symlink_metadata(&s).map_err(|e| io_err("stat", &s, e))?;
            let d = dst.join(&n);
            if meta.is_dir() {
                // An excluded folder is copied only for what an exception re-includes
                // below it, and never as an empty folder (BuildKit makes such parents
                // only when something below them is copied).
                if excluded && !any_included(&s, &child_rel, &child_src, self.ignore, self.exclude)?
                {
                    continue;
                }
                let (d, made) = if fresh {
                    fs::create_dir(&d).map_err(|e| io_err("create directory", &d, e))?;
                    (d, true)
                } else {
                    self.dir_at(&d)?
                };
                self.tree_into(&s, &child_rel, &child_src, &d, made)?;
                finish(&s, &d, &meta, self.opts)?;
            } else if !excluded {
                self.entry_at(&s, &meta, &d, !fresh)?;
            }
        }
        Ok(())
    }

    /// Make `d` a folder, or keep the one there, and say whether it was made now. A
    /// file or a symlink (even to a folder) in its place is an error, as in BuildKit:
    /// below the destination, links are not followed and nothing is replaced by a folder.
    fn dir_at(&self, d: &Path) -> Result<(PathBuf, bool)> {
        match fs::symlink_metadata(d) {
            Ok(m) if m.is_dir() => Ok((d.to_path_buf(), false)),
            Ok(m) => Err(BuildError::Conflict(format!(
                "cannot copy a folder onto {}: it is a {} in the image",
                self.inside(d),
                if m.file_type().is_symlink() {
                    "symlink"
                } else {
                    "file"
                }
            ))),
            Err(_) => {
                fs::create_dir(d).map_err(|e| io_err("create directory", d, e))?;
                Ok((d.to_path_buf(), true))
            }
        }
    }

    /// `path` as the image names it (absolute, below the destination root).
    fn inside(&self, path: &Path) -> String {
        Path::new("/")
            .join(path.strip_prefix(self.root).unwrap_or(path))
            .display()
            .to_string()
    }

    /// `COPY --parents`: below the folder `src` (`ctx_rel` from the context root, `rel`
    /// from the pivot), copy what `pattern` matches, with its path, to `dst`. A folder
    /// on the way is made only if something below it is copied, with the metadata of
    /// its source, as BuildKit's include patterns do.
    fn parents(
        &mut self,
        src: &Path,
        ctx_rel: &str,
        rel: &str,
        pattern: &Pattern,
        dst: &Path,
    ) -> Result<()> {
        let mut names: Vec<_> = fs::read_dir(src)
            .map_err(|e| io_err("read directory", src, e))?
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .collect();
        names.sort();
        let join = |base: &str, n: &str| {
            if base.is_empty() {
                n.to_string()
            } else {
                format!("{base}/{n}")
            }
        };
        for n in names {
            let name = n.to_string_lossy();
            let (child_ctx, child_rel) = (join(ctx_rel, &name), join(rel, &name));
            let s = src.join(&n);
            let meta = fs::symlink_metadata(&s).map_err(|e| io_err("stat", &s, e))?;
            let excluded = self.ignore.excludes(&child_ctx) || self.exclude.excludes(&child_rel);
            if excluded
                && !(meta.is_dir()
                    && any_included(&s, &child_ctx, &child_rel, self.ignore, self.exclude)?)
            {
                continue;
            }
            let d = dst.join(&n);
            if pattern.matches_or_parent(&child_rel) {
                if meta.is_dir() {
                    let (d, _) = self.dir_at(&d)?;
                    self.tree(&s, &child_ctx, &child_rel, &d)?;
                    finish(&s, &d, &meta, self.opts)?;
                } else {
                    self.entry(&s, &meta, &d)?;
                }
            } else if meta.is_dir() && pattern.may_match_below(&child_rel) {
                let (d, made) = self.dir_at(&d)?;
                self.parents(&s, &child_ctx, &child_rel, pattern, &d)?;
                let empty = fs::read_dir(&d)
                    .map_err(|e| io_err("read directory", &d, e))?
                    .next()
                    .is_none();
                if made && empty {
                    fs::remove_dir(&d).map_err(|e| io_err("remove", &d, e))?;
                } else {
                    finish(&s, &d, &meta, self.opts)?;
                }
            }
        }
        Ok(())
    }

    fn entry(&mut self, src: &Path, meta: &fs::Metadata, dst: &Path) -> Result<()> {
        self.entry_at(src, meta, dst, true)
    }

    /// [`Copier::entry`]; `may_exist: false` when `dst`'s folder was made by this copy.
    fn entry_at(
        &mut self,
        src: &Path,
        meta: &fs::Metadata,
        dst: &Path,
        may_exist: bool,
    ) -> Result<()> {
        if may_exist && let Ok(old) = fs::symlink_metadata(dst) {
            if old.is_dir() {
                return Err(BuildError::Conflict(format!(
                    "cannot replace the folder {} with a file",
                    self.inside(dst)
                )));
            }
            fs::remove_file(dst).map_err(|e| io_err("replace", dst, e))?;
        }
        let ft = meta.file_type();
        if ft.is_symlink() {
            let target = fs::read_link(src).map_err(|e| io_err("read link", src, e))?;
            std::os::unix::fs::symlink(&target, dst).map_err(|e| io_err("symlink", dst, e))?;
        } else if ft.is_file() {
            if meta.nlink() > 1 {
                let key = (meta.dev(), meta.ino());
                if let Some(first) = self.links.get(&key) {
                    return fs::hard_link(first, dst).map_err(|e| io_err("hard link", dst, e));
                }
                self.links.insert(key, dst.to_path_buf());
            }
            copy_file(src, meta, dst, self.opts)?;
            return copy_xattrs(src, dst, self.opts);
        } else if !self.opts.keep_owner {
            // A build context holds no devices, fifos or sockets: Docker's context
            // transfer leaves them out.
            return Ok(());
        } else {
            // From a stage they are made anew, as BuildKit's copy does.
            use std::os::unix::fs::FileTypeExt;
            let kind = if ft.is_char_device() {
                rustix::fs::FileType::CharacterDevice
            } else if ft.is_block_device() {
                rustix::fs::FileType::BlockDevice
            } else if ft.is_fifo() {
                rustix::fs::FileType::Fifo
            } else {
                rustix::fs::FileType::Socket
            };
            rustix::fs::mknodat(
                rustix::fs::CWD,
                dst,
                kind,
                rustix::fs::Mode::from_raw_mode(meta.mode() & 0o7777),
                meta.rdev(),
            )
            .map_err(|e| io_err("create special file", dst, e.into()))?;
        }
        finish(src, dst, meta, self.opts)
    }
}

/// Give the copy `dst` of `src` its owner, mode and times ([`set_meta`]), then the
/// source's xattrs, as BuildKit's copy does: after the chown, which would clear a
/// `security.capability`. An xattr the destination refuses is left out (BuildKit logs
/// and goes on), and so are overlayfs' own and a context file's capability.
fn finish(src: &Path, dst: &Path, meta: &fs::Metadata, opts: CopyOptions) -> Result<()> {
    set_meta(dst, meta, opts)?;
    copy_xattrs(src, dst, opts)
}

/// The xattrs of `src` onto `dst` (see [`finish`]).
fn copy_xattrs(src: &Path, dst: &Path, opts: CopyOptions) -> Result<()> {
    // Names first in 1 KiB; on ERANGE again in the kernel's most (XATTR_LIST_MAX).
    let mut names = vec![0u8; 1024];
    let n = match rustix::fs::llistxattr(src, &mut names) {
        Ok(n) => n,
        Err(rustix::io::Errno::RANGE) => {
            names.resize(64 << 10, 0);
            rustix::fs::llistxattr(src, &mut names).unwrap_or(0)
        }
        Err(_) => 0,
    };
    if n == 0 {
        return Ok(());
    }
    let mut value = vec![0u8; 64 << 10];
    for name in names[..n].split(|&b| b == 0).filter(|s| !s.is_empty()) {
        // A build context's files reach BuildKit's copy without their capability:
        // its context transfer sets xattrs before the chown that clears it.
        if name.starts_with(b"trusted.overlay.")
            || (!opts.keep_owner && name == b"security.capability")
        {
            continue;
        }
        if let Ok(len) = rustix::fs::lgetxattr(src, name, &mut value) {
            let _ =
                rustix::fs::lsetxattr(dst, name, &value[..len], rustix::fs::XattrFlags::empty());
        }
    }
    Ok(())
}

/// The owner a copy of a file with `meta` gets.
fn owner_of(meta: &fs::Metadata, opts: CopyOptions) -> (u32, u32) {
    opts.chown.unwrap_or(if opts.keep_owner {
        (meta.uid(), meta.gid())
    } else {
        (0, 0)
    })
}

/// The permission bits a copy of a file with `meta` gets.
fn mode_of(meta: &fs::Metadata, opts: CopyOptions) -> u32 {
    match opts.chmod {
        None => meta.mode() & 0o7777,
        Some(Chmod::Octal(m)) => m,
        Some(Chmod::Symbolic(set)) => set.apply(meta.mode(), meta.is_dir()),
    }
}

/// Both times of a copy: the copy's fixed time if it has one, else the source's mtime.
fn times_of(meta: &fs::Metadata, opts: CopyOptions) -> rustix::fs::Timestamps {
    let mtime = match opts.mtime {
        Some(secs) => rustix::fs::Timespec {
            tv_sec: secs,
            tv_nsec: 0,
        },
        None => rustix::fs::Timespec {
            tv_sec: meta.mtime(),
            tv_nsec: meta.mtime_nsec(),
        },
    };
    rustix::fs::Timestamps {
        last_access: mtime,
        last_modification: mtime,
    }
}

fn set_meta(dst: &Path, meta: &fs::Metadata, opts: CopyOptions) -> Result<()> {
    let (uid, gid) = owner_of(meta, opts);
    std::os::unix::fs::lchown(dst, Some(uid), Some(gid)).map_err(|e| io_err("chown", dst, e))?;
    if !meta.file_type().is_symlink() {
        fs::set_permissions(dst, fs::Permissions::from_mode(mode_of(meta, opts)))
            .map_err(|e| io_err("chmod", dst, e))?;
        rustix::fs::utimensat(
            rustix::fs::CWD,
            dst,
            &times_of(meta, opts),
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| io_err("set times", dst, e.into()))?;
    }
    Ok(())
}

/// Copy the regular file `src` (of `meta`) to `dst` with its owner, mode and times, all
/// through the two open files: `std::fs::copy` first tries `copy_file_range` (refused
/// across file systems, as from a context into an overlay: a wasted call per file),
/// sends until a read of 0, and sets the mode, and [`set_meta`] then looks `dst` up three
/// more times through the overlay. Here a small file is one `sendfile` of the size its
/// stat gave (what the context checksum read), and its metadata three calls on the
/// descriptor; the order is [`set_meta`]'s (chown clears set-id bits).
fn copy_file(src: &Path, meta: &fs::Metadata, dst: &Path, opts: CopyOptions) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let from = fs::File::open(src).map_err(|e| io_err("open", src, e))?;
    let to = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(dst)
        .map_err(|e| io_err("create", dst, e))?;
    let mut left = meta.len();
    while left > 0 {
        let n = rustix::fs::sendfile(&to, &from, None, left.min(1 << 30) as usize)
            .map_err(|e| io_err("copy", dst, e.into()))?;
        if n == 0 {
            break; // the file shrank since its stat: its end is where it ends now
        }
        left -= n as u64;
    }
    let (uid, gid) = owner_of(meta, opts);
    rustix::fs::fchown(
        &to,
        Some(rustix::fs::Uid::from_raw(uid)),
        Some(rustix::fs::Gid::from_raw(gid)),
    )
    .map_err(|e| io_err("chown", dst, e.into()))?;
    rustix::fs::fchmod(&to, rustix::fs::Mode::from_raw_mode(mode_of(meta, opts)))
        .map_err(|e| io_err("chmod", dst, e.into()))?;
    rustix::fs::futimens(&to, &times_of(meta, opts)).map_err(|e| io_err("set times", dst, e.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every xattr is copied, however many names there are (more than the first
    /// buffer holds).
    #[test]
    fn copies_take_every_xattr() {
        let d = tempfile::tempdir().unwrap();
        let (src, dst) = (d.path().join("src"), d.path().join("dst"));
        fs::write(&src, "x").unwrap();
        fs::write(&dst, "x").unwrap();
        // 30 names of 40 bytes: beyond the first 1 KiB buffer, within what ext4 keeps
        // in one inode.
        let names: Vec<String> = (0..30)
            .map(|i| format!("user.a-rather-long-attribute-name-{i:05}"))
            .collect();
        for n in &names {
            rustix::fs::lsetxattr(
                &src,
                n.as_str(),
                n.as_bytes(),
                rustix::fs::XattrFlags::empty(),
            )
            .unwrap();
        }
        let opts = CopyOptions {
            keep_owner: true,
            ..CopyOptions::default()
        };
        finish(&src, &dst, &fs::symlink_metadata(&src).unwrap(), opts).unwrap();
        let mut buf = [0u8; 64];
        for n in &names {
            let len = rustix::fs::lgetxattr(&dst, n.as_str(), &mut buf).unwrap();
            assert_eq!(&buf[..len], n.as_bytes());
        }
    }

    #[test]
    fn resolves_symlinks_inside_the_root() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        fs::create_dir_all(root.join("usr/lib")).unwrap();
        std::os::unix::fs::symlink("/usr/lib", root.join("lib")).unwrap();
        std::os::unix::fs::symlink("../../../../etc", root.join("usr/escape")).unwrap();
        assert_eq!(
            resolve_in_root(root, "/lib/x").unwrap(),
            root.join("usr/lib/x")
        );
        assert_eq!(
            resolve_in_root(root, "/usr/escape/passwd").unwrap(),
            root.join("etc/passwd")
        );
        assert_eq!(resolve_in_root(root, "/../../x").unwrap(), root.join("x"));
        // A link loop is an error, not a path the kernel would follow outside.
        std::os::unix::fs::symlink("/loop", root.join("loop")).unwrap();
        assert!(resolve_in_root(root, "/loop/x").is_err());
    }

    #[test]
    fn checksums_ignore_timestamps_but_not_content_or_mode() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir(d.path().join("src")).unwrap();
        fs::write(d.path().join("src/a"), "a").unwrap();
        fs::write(d.path().join("src/ignored.log"), "x").unwrap();
        let ig = Ignore::parse("src/*.log");
        let m = resolve_sources(d.path(), &["src".into()], &ig).unwrap();
        let (c1, files) = checksum_cached(d.path(), &m, &ig, None).unwrap();
        assert_eq!(
            files.iter().map(|f| f.0.as_str()).collect::<Vec<_>>(),
            ["src", "src/a"]
        );
        fs::write(d.path().join("src/ignored.log"), "changed").unwrap();
        let f = fs::File::options()
            .write(true)
            .open(d.path().join("src/a"))
            .unwrap();
        f.set_modified(std::time::SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(checksum_cached(d.path(), &m, &ig, None).unwrap().0, c1);
        fs::write(d.path().join("src/a"), "b").unwrap();
        assert_ne!(checksum_cached(d.path(), &m, &ig, None).unwrap().0, c1);
        // With a cache: an unchanged file is not read again, a rewritten one is, even
        // when its mtime is put back.
        let cache = SumCache::default();
        let (c2, _) = checksum_cached(d.path(), &m, &ig, Some(&cache)).unwrap();
        assert_eq!(cache.lock().unwrap().len(), 1);
        assert_eq!(
            checksum_cached(d.path(), &m, &ig, Some(&cache)).unwrap().0,
            c2
        );
        let before = fs::metadata(d.path().join("src/a"))
            .unwrap()
            .modified()
            .unwrap();
        fs::write(d.path().join("src/a"), "c").unwrap();
        fs::File::options()
            .write(true)
            .open(d.path().join("src/a"))
            .unwrap()
            .set_modified(before)
            .unwrap();
        assert_ne!(
            checksum_cached(d.path(), &m, &ig, Some(&cache)).unwrap().0,
            c2
        );
        assert!(matches!(
            resolve_sources(d.path(), &["nope".into()], &ig),
            Err(BuildError::SourceNotFound(_))
        ));
        assert!(matches!(
            resolve_sources(d.path(), &["src/ignored.log".into()], &ig),
            Err(BuildError::SourceNotFound(_))
        ));
        assert_eq!(
            resolve_sources(d.path(), &["src/*".into()], &ig).unwrap(),
            [Matched {
                rel: "src/a".into()
            }]
        );
    }

    /// A context `src` holding the file `name` with `content`, and an empty destination root, in a new temporary directory.
    fn src_and_root(name: &str, content: &str) -> (tempfile::TempDir, PathBuf, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let (src, root) = (d.path().join("src"), d.path().join("root"));
        fs::create_dir_all(&src).unwrap();
        fs::create_dir_all(&root).unwrap();
        fs::write(src.join(name), content).unwrap();
        (d, src, root)
    }

    #[test]
    fn a_source_linked_to_another_is_copied_on_its_own() {
        let (_d, src, dst) = src_and_root("a", "content");
        // `a` has a second name in the context, and `b` points to it.
        fs::hard_link(src.join("a"), src.join("a2")).unwrap();
        std::os::unix::fs::symlink("a", src.join("b")).unwrap();
        let none = Ignore::default();
        let matched = resolve_sources(&src, &["a".into(), "b".into()], &none).unwrap();
        copy(
            &src,
            &matched,
            &none,
            &none,
            &dst,
            "/out/",
            CopyOptions::default(),
        )
        .unwrap();
        let (a, b) = (
            fs::symlink_metadata(dst.join("out/a")).unwrap(),
            fs::symlink_metadata(dst.join("out/b")).unwrap(),
        );
        assert!(a.is_file() && b.is_file());
        assert_eq!(
            (a.nlink(), b.nlink()),
            (1, 1),
            "two files, not two names of one"
        );
        assert_ne!(a.ino(), b.ino());
        assert_eq!(fs::read(dst.join("out/b")).unwrap(), b"content");
        // Within one source, hard links stay.
        fs::create_dir(src.join("dir")).unwrap();
        fs::write(src.join("dir/x"), "x").unwrap();
        fs::hard_link(src.join("dir/x"), src.join("dir/y")).unwrap();
        let matched = resolve_sources(&src, &["dir".into()], &none).unwrap();
        copy(
            &src,
            &matched,
            &none,
            &none,
            &dst,
            "/tree/",
            CopyOptions::default(),
        )
        .unwrap();
        assert_eq!(
            fs::metadata(dst.join("tree/x")).unwrap().ino(),
            fs::metadata(dst.join("tree/y")).unwrap().ino()
        );
    }

    #[test]
    fn no_follow_copies_a_link_as_the_link_even_dangling() {
        let (_d, src, dst) = src_and_root("a", "content");
        std::os::unix::fs::symlink("nonexistenttarget", src.join("dangling")).unwrap();
        std::os::unix::fs::symlink("a", src.join("b")).unwrap();
        fs::create_dir(src.join("dir")).unwrap();
        std::os::unix::fs::symlink("../a", src.join("dir/up")).unwrap();
        let none = Ignore::default();
        // Followed, the dangling link is not found.
        assert!(matches!(
            resolve_sources(&src, &["dangling".into()], &none),
            Err(BuildError::SourceNotFound(_))
        ));
        let sources = ["dangling".to_string(), "b".into(), "dir/up".into()];
        let matched = resolve_sources_with(&src, &sources, &none, true).unwrap();
        let opts = CopyOptions {
            no_follow: true,
            ..CopyOptions::default()
        };
        copy(&src, &matched, &none, &none, &dst, "/out/", opts).unwrap();
        for (name, target) in [
            ("dangling", "nonexistenttarget"),
            ("b", "a"),
            ("up", "../a"),
        ] {
            let p = dst.join("out").join(name);
            assert!(fs::symlink_metadata(&p).unwrap().is_symlink(), "{name}");
            assert_eq!(fs::read_link(&p).unwrap(), Path::new(target));
        }
    }

    #[test]
    fn a_copy_through_a_dangling_link_makes_its_target() {
        let (d, src, root) = src_and_root("x", "x");
        // `/app -> /opt/app`, and neither /opt nor /opt/app exists.
        std::os::unix::fs::symlink("/opt/app", root.join("app")).unwrap();
        // A relative one, two levels deep, and one that tries to climb out of the root.
        std::os::unix::fs::symlink("../srv/data/here", root.join("rel")).unwrap();
        std::os::unix::fs::symlink("/../../../outside", root.join("esc")).unwrap();
        let none = Ignore::default();
        let matched = resolve_sources(&src, &["x".into()], &none).unwrap();
        for dest in ["/app/", "/rel/", "/esc/sub/"] {
            copy(
                &src,
                &matched,
                &none,
                &none,
                &root,
                dest,
                CopyOptions::default(),
            )
            .unwrap();
        }
        assert_eq!(fs::read(root.join("opt/app/x")).unwrap(), b"x");
        assert!(fs::symlink_metadata(root.join("app")).unwrap().is_symlink());
        assert_eq!(fs::read(root.join("srv/data/here/x")).unwrap(), b"x");
        assert_eq!(fs::read(root.join("outside/sub/x")).unwrap(), b"x");
        assert!(
            !d.path().join("outside").exists(),
            "nothing outside the root"
        );
    }

    /// Copy `sources` of `src` to `dest` in `root` with `opts` and no ignore rules.
    fn copy_plain(src: &Path, sources: &[&str], root: &Path, dest: &str, opts: CopyOptions) {
        let none = Ignore::default();
        let sources: Vec<String> = sources.iter().map(|s| s.to_string()).collect();
        let matched = resolve_sources(src, &sources, &none).unwrap();
        copy(src, &matched, &none, &none, root, dest, opts).unwrap();
    }

    /// Files at `paths` below `dir`, each holding its path, with their folders.
    fn write_files(dir: &Path, paths: &[&str]) {
        for f in paths {
            fs::create_dir_all(dir.join(f).parent().unwrap()).unwrap();
            fs::write(dir.join(f), f).unwrap();
        }
    }

    fn archives() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/archives")
    }

    #[test]
    fn add_unpacks_a_tar_in_every_format_by_content() {
        let (_d, src, root) = src_and_root("unused", "");
        let add = CopyOptions {
            extract_archives: true,
            ..CopyOptions::default()
        };
        for name in ["pkg.tar", "pkg.tgz", "pkg.tar.bz2", "pkg.tar.xz"] {
            // Named without an extension: the content decides.
            fs::copy(archives().join(name), src.join("blob")).unwrap();
            let dest = format!("/{name}/");
            copy_plain(&src, &["blob"], &root, &dest, add);
            let at = root.join(name).join("pkg");
            assert_eq!(fs::read(at.join("sub/f")).unwrap(), b"inside\n", "{name}");
            assert_eq!(fs::read_link(at.join("link")).unwrap(), Path::new("sub/f"));
            let run = fs::metadata(at.join("run.sh")).unwrap();
            assert_eq!(run.mode() & 0o7777, 0o4755, "{name}: setuid kept");
            assert_eq!((run.uid(), run.gid()), (1234, 5678), "{name}: owner kept");
            let sub = fs::metadata(at.join("sub")).unwrap();
            assert_eq!(sub.mode() & 0o7777, 0o750);
        }
        // ADD --chown owns the unpacked entries too, and keeps their modes.
        let chown = CopyOptions {
            chown: Some((42, 43)),
            ..add
        };
        copy_plain(&src, &["blob"], &root, "/owned/", chown);
        for p in ["owned", "owned/pkg", "owned/pkg/run.sh", "owned/pkg/link"] {
            let m = fs::symlink_metadata(root.join(p)).unwrap();
            assert_eq!((m.uid(), m.gid()), (42, 43), "{p}");
        }
        let run = fs::metadata(root.join("owned/pkg/run.sh")).unwrap();
        assert_eq!(run.mode() & 0o7777, 0o4755, "setuid kept after the chown");
    }

    #[test]
    fn add_copies_what_is_not_a_tar_as_it_is() {
        let (_d, src, root) = src_and_root("empty.tar", "");
        fs::write(src.join("fake.tar"), "not a tar").unwrap();
        for name in ["data.json.gz", "note.txt.xz"] {
            fs::copy(archives().join(name), src.join(name)).unwrap();
        }
        let add = CopyOptions {
            extract_archives: true,
            ..CopyOptions::default()
        };
        let names = ["empty.tar", "fake.tar", "data.json.gz", "note.txt.xz"];
        copy_plain(&src, &names, &root, "/out/", add);
        for name in names {
            assert_eq!(
                fs::read(root.join("out").join(name)).unwrap(),
                fs::read(src.join(name)).unwrap(),
                "{name} copied as it is"
            );
        }
    }

    #[test]
    fn a_glob_matching_nothing_is_skipped() {
        let (_d, src, _root) = src_and_root("a.txt", "a");
        let none = Ignore::default();
        let resolve = |s: &[&str]| {
            let s: Vec<String> = s.iter().map(|s| s.to_string()).collect();
            resolve_sources(&src, &s, &none)
        };
        let rels = |m: Vec<Matched>| m.into_iter().map(|m| m.rel).collect::<Vec<_>>();
        assert_eq!(rels(resolve(&["*.none", "a.txt"]).unwrap()), ["a.txt"]);
        assert!(resolve(&["*.none"]).unwrap().is_empty());
        // The folder before the wildcard must exist, and a plain path too.
        assert!(matches!(
            resolve(&["missing/*.txt"]),
            Err(BuildError::SourceNotFound(s)) if s == "missing/*.txt"
        ));
        assert!(matches!(
            resolve(&["*.none", "missing"]),
            Err(BuildError::SourceNotFound(s)) if s == "missing"
        ));
        // Folders before the wildcard are followed through links; links below are not.
        fs::create_dir_all(src.join("real/sub")).unwrap();
        fs::write(src.join("real/b.txt"), "b").unwrap();
        fs::write(src.join("real/sub/c.txt"), "c").unwrap();
        std::os::unix::fs::symlink("real", src.join("link")).unwrap();
        std::os::unix::fs::symlink("../real", src.join("real/back")).unwrap();
        assert_eq!(rels(resolve(&["link/*.txt"]).unwrap()), ["link/b.txt"]);
        assert_eq!(
            rels(resolve(&["link/*/c.txt"]).unwrap()),
            ["link/sub/c.txt"]
        );
        assert_eq!(
            rels(resolve(&["real/*/b.txt"]).unwrap()),
            Vec::<String>::new()
        );
    }

    #[test]
    fn several_sources_onto_a_file_path_leave_the_last() {
        let (_d, src, root) = src_and_root("a", "a");
        fs::write(src.join("b"), "b").unwrap();
        copy_plain(&src, &["a", "b"], &root, "/out", CopyOptions::default());
        assert_eq!(fs::read(root.join("out")).unwrap(), b"b");
        // An existing folder receives them both.
        fs::create_dir(root.join("dir")).unwrap();
        copy_plain(&src, &["a", "b"], &root, "/dir", CopyOptions::default());
        assert_eq!(fs::read(root.join("dir/a")).unwrap(), b"a");
        assert_eq!(fs::read(root.join("dir/b")).unwrap(), b"b");
    }

    #[test]
    fn a_file_copied_onto_a_link_replaces_its_target() {
        let (d, src, root) = src_and_root("conf", "new");
        fs::create_dir(root.join("etc")).unwrap();
        fs::write(root.join("etc/real.conf"), "old").unwrap();
        std::os::unix::fs::symlink("/etc/real.conf", root.join("etc/app.conf")).unwrap();
        std::os::unix::fs::symlink("rel.conf", root.join("etc/to-rel")).unwrap();
        std::os::unix::fs::symlink("/nowhere/new.conf", root.join("etc/dangling")).unwrap();
        std::os::unix::fs::symlink("/../../outside", root.join("etc/escape")).unwrap();
        for dest in [
            "/etc/app.conf",
            "/etc/to-rel",
            "/etc/dangling",
            "/etc/escape",
        ] {
            copy_plain(&src, &["conf"], &root, dest, CopyOptions::default());
        }
        assert_eq!(fs::read(root.join("etc/real.conf")).unwrap(), b"new");
        assert!(
            fs::symlink_metadata(root.join("etc/app.conf"))
                .unwrap()
                .is_symlink()
        );
        assert_eq!(fs::read(root.join("etc/rel.conf")).unwrap(), b"new");
        assert_eq!(fs::read(root.join("nowhere/new.conf")).unwrap(), b"new");
        assert_eq!(fs::read(root.join("outside")).unwrap(), b"new");
        assert!(
            !d.path().join("outside").exists(),
            "nothing outside the root"
        );
    }

    #[test]
    fn excluded_folders_are_not_left_empty() {
        let (_d, src, root) = src_and_root("main.rs", "m");
        write_files(
            &src,
            &[
                "src/debug/important.log",
                "src/debug/noise.log",
                "build/deep/out.o",
            ],
        );
        fs::create_dir_all(src.join("logs/empty")).unwrap();
        let ig = Ignore::parse("**/*.log\n!**/important.log\nbuild\nlogs\n");
        let none = Ignore::default();
        let matched = resolve_sources(&src, &[".".into()], &ig).unwrap();
        copy(
            &src,
            &matched,
            &ig,
            &none,
            &root,
            "/ctx/",
            CopyOptions::default(),
        )
        .unwrap();
        assert!(root.join("ctx/src/debug/important.log").is_file());
        assert!(!root.join("ctx/src/debug/noise.log").exists());
        assert!(!root.join("ctx/build").exists(), "no empty excluded folder");
        assert!(!root.join("ctx/logs").exists());
        // The context as a RUN mount sees it: the same folders are whited out.
        let upper = root.join("upper");
        whiteout_ignored(&src, "", &ig, &upper).unwrap();
        let kind = |p: &str| fs::symlink_metadata(upper.join(p)).map(|m| m.file_type());
        use std::os::unix::fs::FileTypeExt;
        assert!(kind("build").unwrap().is_char_device());
        assert!(kind("logs").unwrap().is_char_device());
        assert!(kind("src/debug/noise.log").unwrap().is_char_device());
        assert!(kind("src/debug/important.log").is_err());
    }

    #[test]
    fn copy_parents_keeps_paths_from_the_root_or_the_pivot() {
        let (_d, src, root) = src_and_root("top.txt", "t");
        write_files(
            &src,
            &[
                "x/a.txt",
                "y/a.txt",
                "pkgs/one/package.json",
                "pkgs/one/index.js",
                "pkgs/two/package.json",
                "deep/x/y/z.txt",
                "deep/x/w.md",
            ],
        );
        fs::create_dir_all(src.join("pkgs/empty")).unwrap();
        let none = Ignore::default();
        let srcs = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let opts = CopyOptions::default();
        copy_parents(
            &src,
            &srcs(&["./x/a.txt", "y/a.txt"]),
            &none,
            &none,
            &root,
            "/p/",
            opts,
        )
        .unwrap();
        copy_parents(
            &src,
            &srcs(&["pkgs/*/package.json"]),
            &none,
            &none,
            &root,
            "/g/",
            opts,
        )
        .unwrap();
        copy_parents(
            &src,
            &srcs(&["deep/./x/**/*.txt"]),
            &none,
            &none,
            &root,
            "/v/",
            opts,
        )
        .unwrap();
        let tree = |dir: &str| {
            let mut out = Vec::new();
            let mut stack = vec![root.join(dir)];
            while let Some(d) = stack.pop() {
                for e in fs::read_dir(&d).unwrap() {
                    let p = e.unwrap().path();
                    out.push(p.strip_prefix(&root).unwrap().display().to_string());
                    if p.is_dir() {
                        stack.push(p);
                    }
                }
            }
            out.sort();
            out
        };
        assert_eq!(tree("p"), ["p/x", "p/x/a.txt", "p/y", "p/y/a.txt"]);
        assert_eq!(
            tree("g"),
            [
                "g/pkgs",
                "g/pkgs/one",
                "g/pkgs/one/package.json",
                "g/pkgs/two",
                "g/pkgs/two/package.json"
            ],
            "no index.js, no empty folder"
        );
        assert_eq!(tree("v"), ["v/x", "v/x/y", "v/x/y/z.txt"], "from the pivot");
        // A path without wildcards must exist.
        assert!(matches!(
            copy_parents(&src, &srcs(&["nope.txt"]), &none, &none, &root, "/n/", opts),
            Err(BuildError::SourceNotFound(_))
        ));
    }

    #[test]
    fn special_files_are_copied_from_stages_only() {
        let (_d, src, root) = src_and_root("f", "f");
        let mknod = |name: &str, kind, dev| {
            rustix::fs::mknodat(
                rustix::fs::CWD,
                src.join(name),
                kind,
                rustix::fs::Mode::from_raw_mode(0o640),
                dev,
            )
            .unwrap();
        };
        mknod("pipe", rustix::fs::FileType::Fifo, 0);
        mknod(
            "null",
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::makedev(1, 3),
        );
        // From a context they are left out.
        copy_plain(&src, &["."], &root, "/ctx/", CopyOptions::default());
        assert!(fs::symlink_metadata(root.join("ctx/pipe")).is_err());
        assert!(root.join("ctx/f").is_file());
        // From a stage (owners kept) they are made anew.
        let stage = CopyOptions {
            keep_owner: true,
            ..CopyOptions::default()
        };
        copy_plain(&src, &["."], &root, "/out/", stage);
        use std::os::unix::fs::FileTypeExt;
        let pipe = fs::symlink_metadata(root.join("out/pipe")).unwrap();
        assert!(pipe.file_type().is_fifo());
        assert_eq!(pipe.mode() & 0o7777, 0o640);
        let null = fs::symlink_metadata(root.join("out/null")).unwrap();
        assert!(null.file_type().is_char_device());
        assert_eq!(null.rdev(), rustix::fs::makedev(1, 3));
    }
}
