//! Build contexts travel content-addressed. The client lists its context (names, modes,
//! sizes, times and the SHA-256 of each file, from a cache keyed by inode, size and times so
//! an unchanged file is not read again) and the satellite answers which contents it lacks.
//! The satellite keeps one tree per client and context name, and a later build changes only
//! the entries that changed: a one-file edit uploads one file.
//!
//! On the satellite, under `contexts/<client>/`:
//!
//! ```text
//! blobs/<hex>                    uploaded contents not yet placed in a tree
//! <context>/tree/                the context as the last build saw it
//! <context>/manifest.json        the entries of tree/
//! <context>/snapshots/<hex>.json entries a client announced, by their digest
//! ```

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::error::SatError;

const S_IFMT: u32 = 0o170_000;
const S_IFREG: u32 = 0o100_000;
const S_IFDIR: u32 = 0o040_000;
const S_IFLNK: u32 = 0o120_000;

/// One entry of a context, as listed by the client and kept by the satellite.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Relative, `/`-separated.
    pub path: String,
    /// st_mode (type and permission bits).
    pub mode: u32,
    /// Bytes (regular files).
    pub size: u64,
    /// `sha256:<hex>` of a regular file's contents, else empty.
    pub digest: String,
    /// A symlink's target.
    pub link: String,
    /// Modification time, ns since the epoch.
    pub mtime_ns: i64,
}

impl Entry {
    fn kind(&self) -> u32 {
        self.mode & S_IFMT
    }

    fn is_file(&self) -> bool {
        self.kind() == S_IFREG
    }

    fn hex(&self) -> &str {
        self.digest.strip_prefix("sha256:").unwrap_or("")
    }
}

impl From<crate::proto::FileEntry> for Entry {
    fn from(e: crate::proto::FileEntry) -> Entry {
        Entry {
            path: e.path,
            mode: e.mode,
            size: e.size,
            digest: e.digest,
            link: e.link_target,
            mtime_ns: e.mtime_ns,
        }
    }
}

impl From<Entry> for crate::proto::FileEntry {
    fn from(e: Entry) -> crate::proto::FileEntry {
        crate::proto::FileEntry {
            path: e.path,
            mode: e.mode,
            size: e.size,
            digest: e.digest,
            link_target: e.link,
            mtime_ns: e.mtime_ns,
        }
    }
}

/// Checks what a client sent: relative clean paths, known types, well-formed digests,
/// parents listed before children, no duplicates.
pub fn validate(entries: &[Entry]) -> Result<(), SatError> {
    let bad =
        |path: &str, why: &str| SatError::BadRequest(format!("context entry {path:?}: {why}"));
    let mut seen = HashSet::new();
    let mut dirs: HashSet<&str> = HashSet::new();
    for e in entries {
        let p = e.path.as_str();
        if p.is_empty()
            || p.starts_with('/')
            || p.contains('\0')
            || p.split('/').any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(bad(p, "not a clean relative path"));
        }
        if !seen.insert(p) {
            return Err(bad(p, "listed twice"));
        }
        if let Some((parent, _)) = p.rsplit_once('/')
            && !dirs.contains(parent)
        {
            return Err(bad(p, "its directory is not listed before it"));
        }
        match e.kind() {
            S_IFREG => {
                let hex = e.hex();
                if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(bad(p, "a file needs a sha256 digest"));
                }
            }
            S_IFDIR => {
                dirs.insert(p);
            }
            S_IFLNK if !e.link.is_empty() && !e.link.contains('\0') => {}
            _ => return Err(bad(p, "not a file, directory or symlink")),
        }
    }
    Ok(())
}

/// Writes stand-ins of `entries` under `dir` (which must not exist): directories and
/// symlinks as listed, regular files empty but of the listed size (sparse), every mode
/// as listed. Returns the content digest of each file by path: with it, a build's cache
/// keys over `dir` are those over the real context (`berth_build::probe_cache`).
pub fn stand_ins(dir: &Path, entries: &[Entry]) -> Result<HashMap<String, String>, SatError> {
    validate(entries)?;
    fs::create_dir_all(dir).map_err(SatError::io("create", dir))?;
    let mut sums = HashMap::new();
    for e in entries {
        let path = dir.join(&e.path);
        match e.kind() {
            S_IFDIR => fs::create_dir(&path).map_err(SatError::io("create", &path))?,
            S_IFLNK => std::os::unix::fs::symlink(&e.link, &path)
                .map_err(SatError::io("create symlink", &path))?,
            _ => {
                let f = fs::File::create(&path).map_err(SatError::io("create", &path))?;
                f.set_len(e.size).map_err(SatError::io("size", &path))?;
                sums.insert(e.path.clone(), e.digest.clone());
            }
        }
    }
    // Modes last, deepest first, so a read-only directory is filled before it closes.
    for e in entries.iter().rev().filter(|e| e.kind() != S_IFLNK) {
        let path = dir.join(&e.path);
        fs::set_permissions(&path, fs::Permissions::from_mode(e.mode & 0o7777))
            .map_err(SatError::io("chmod", &path))?;
    }
    Ok(sums)
}

/// The digest naming a list of entries (a snapshot).
pub fn snapshot_id(entries: &[Entry]) -> String {
    let json = serde_json::to_vec(entries).expect("entries serialise");
    hex(&Sha256::digest(&json))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A client's context store on the satellite.
#[derive(Debug, Clone)]
pub struct ClientContexts {
    dir: PathBuf,
}

impl ClientContexts {
    /// `dir` is `contexts/<client>`.
    pub fn new(dir: PathBuf) -> ClientContexts {
        ClientContexts { dir }
    }

    fn context_dir(&self, name: &str) -> PathBuf {
        // Names come from clients: hash them into file names.
        self.dir.join(&hex(&Sha256::digest(name.as_bytes()))[..32])
    }

    /// The tree of context `name` if it holds exactly `entries` now (the last build's
    /// context, unchanged since): a probe can read it instead of stand-ins, and the
    /// content hashes its builds kept make that a walk of `stat`s.
    pub fn tree_if_current(&self, name: &str, entries: &[Entry]) -> Option<PathBuf> {
        let dir = self.context_dir(name);
        let current: Vec<Entry> =
            serde_json::from_slice(&fs::read(dir.join("manifest.json")).ok()?).ok()?;
        (!current.is_empty() && snapshot_id(&current) == snapshot_id(entries))
            .then(|| dir.join("tree"))
    }

    fn blob(&self, hex: &str) -> PathBuf {
        self.dir.join("blobs").join(hex)
    }

    /// Records `entries` as a snapshot of context `name`; returns its id and the digests
    /// whose contents the satellite lacks.
    pub fn prepare(
        &self,
        name: &str,
        entries: &[Entry],
    ) -> Result<(String, Vec<String>), SatError> {
        validate(entries)?;
        let dir = self.context_dir(name);
        fs::create_dir_all(dir.join("snapshots")).map_err(SatError::io("create", &dir))?;
        fs::create_dir_all(self.dir.join("blobs")).map_err(SatError::io("create", &self.dir))?;
        let id = snapshot_id(entries);
        let current = read_manifest(&dir)?;
        if !current.is_empty() && snapshot_id(&current) == id {
            // Nothing changed since the last build: no snapshot to write, nothing to send.
            return Ok((id, Vec::new()));
        }
        let json = serde_json::to_vec(entries).expect("entries serialise");
        write_atomic(&dir.join("snapshots").join(format!("{id}.json")), &json)?;
        let have: HashSet<String> = current
            .into_iter()
            .filter(|e| e.is_file())
            .map(|e| e.digest)
            .collect();
        let mut missing = Vec::new();
        let mut asked = HashSet::new();
        for e in entries.iter().filter(|e| e.is_file()) {
            if !have.contains(&e.digest) && !self.blob(e.hex()).exists() && asked.insert(&e.digest)
            {
                missing.push(e.digest.clone());
            }
        }
        Ok((id, missing))
    }

    /// Starts receiving the contents of `digest`.
    pub fn receive(&self, digest: &str) -> Result<Incoming, SatError> {
        let hex = digest
            .strip_prefix("sha256:")
            .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| {
                SatError::BadRequest(format!("upload of {digest:?}: not a sha256 digest"))
            })?;
        let blobs = self.dir.join("blobs");
        let tmp = blobs.join(format!(".{hex}.{}", uuid_like()));
        let file = match fs::File::create(&tmp) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Only before the first prepare of this client (which makes blobs/).
                fs::create_dir_all(&blobs).map_err(SatError::io("create", &blobs))?;
                fs::File::create(&tmp)
            }
            r => r,
        }
        .map_err(SatError::io("create", &tmp))?;
        Ok(Incoming {
            file,
            committed: false,
            tmp,
            dest: blobs.join(hex),
            expect: hex.to_owned(),
            hasher: Sha256::new(),
            bytes: 0,
        })
    }

    /// Brings `context`'s tree to the snapshot `id` and returns the tree's path. Entries
    /// that did not change are left alone; contents come from uploads or from the tree.
    pub fn materialize(&self, name: &str, id: &str) -> Result<PathBuf, SatError> {
        if id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(SatError::BadRequest(format!(
                "context snapshot {id:?} is malformed"
            )));
        }
        let dir = self.context_dir(name);
        let snap = dir.join("snapshots").join(format!("{id}.json"));
        let wanted: Vec<Entry> = match fs::read(&snap) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| SatError::Internal(format!("{}: {e}", snap.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // The tree is the snapshot already (prepare found nothing changed).
                let manifest = dir.join("manifest.json");
                let current = read_manifest(&dir)?;
                if !current.is_empty() && snapshot_id(&current) == id {
                    // Used now: the least recently built context is evicted first.
                    if let Ok(f) = fs::File::options().write(true).open(&manifest) {
                        let _ = f.set_modified(SystemTime::now());
                    }
                    return Ok(dir.join("tree"));
                }
                return Err(SatError::BadRequest(format!(
                    "context {name:?} has no snapshot {id}: prepare it first"
                )));
            }
            Err(e) => return Err(SatError::io("read", &snap)(e)),
        };
        let tree = dir.join("tree");
        fs::create_dir_all(&tree).map_err(SatError::io("create", &tree))?;
        let old: BTreeMap<String, Entry> = read_manifest(&dir)?
            .into_iter()
            .map(|e| (e.path.clone(), e))
            .collect();
        let new: BTreeMap<&str, &Entry> = wanted.iter().map(|e| (e.path.as_str(), e)).collect();

        // 1. Every content the new tree needs must be in blobs/ before the tree changes:
        //    take it from the old tree where it is there.
        let mut in_tree: HashMap<&str, &str> = HashMap::new();
        for e in old.values().filter(|e| e.is_file()) {
            in_tree.entry(e.digest.as_str()).or_insert(e.path.as_str());
        }
        // How many new places in the tree take each content: the last one takes the file.
        let mut remaining: HashMap<String, usize> = HashMap::new();
        for e in wanted.iter().filter(|e| e.is_file()) {
            if old
                .get(&e.path)
                .is_some_and(|o| o.is_file() && o.digest == e.digest)
            {
                continue;
            }
            let blob = self.blob(e.hex());
            if !blob.exists() {
                let Some(src) = in_tree.get(e.digest.as_str()) else {
                    return Err(SatError::BadRequest(format!(
                        "context file {} ({}) was not uploaded; send the build again",
                        e.path, e.digest
                    )));
                };
                copy_verified(&tree.join(src), &blob, e.hex())?;
            }
            *remaining.entry(e.hex().to_owned()).or_insert(0usize) += 1;
        }

        // 2. Remove what went away or changed type, deepest first.
        for (path, o) in old.iter().rev() {
            let keep = new.get(path.as_str()).is_some_and(|n| n.kind() == o.kind());
            if !keep {
                remove_any(&tree.join(path))?;
            }
        }
        // Anything in the tree that no manifest knows (an interrupted earlier run).
        // Cheap enough: only the top level is checked; deeper strays are overwritten.

        // 3. Create and update, parents first.
        for e in &wanted {
            let at = tree.join(&e.path);
            let o = old.get(&e.path).filter(|o| o.kind() == e.kind());
            match e.kind() {
                S_IFDIR => {
                    if o.is_none() {
                        match fs::create_dir(&at) {
                            Ok(()) => {}
                            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
                                if !at.is_dir() {
                                    remove_any(&at)?;
                                    fs::create_dir(&at).map_err(SatError::io("create", &at))?;
                                }
                            }
                            Err(err) => return Err(SatError::io("create", &at)(err)),
                        }
                    }
                }
                S_IFLNK => {
                    if o.is_none_or(|o| o.link != e.link) {
                        remove_any(&at)?;
                        std::os::unix::fs::symlink(&e.link, &at)
                            .map_err(SatError::io("create symlink", &at))?;
                    }
                    set_mtime(&at, e.mtime_ns, false)?;
                }
                _ => {
                    if o.is_none_or(|o| o.digest != e.digest) {
                        let blob = self.blob(e.hex());
                        let last_use = match remaining.get_mut(e.hex()) {
                            Some(n) => {
                                *n -= 1;
                                *n == 0
                            }
                            None => false,
                        };
                        if last_use {
                            // Its last place in the tree: moved, not copied.
                            fs::rename(&blob, &at).map_err(SatError::io("place", &at))?;
                        } else {
                            let tmp = at.with_file_name(format!(".berth-new.{}", uuid_like()));
                            fs::copy(&blob, &tmp).map_err(SatError::io("write", &tmp))?;
                            fs::rename(&tmp, &at).map_err(SatError::io("replace", &at))?;
                        }
                    }
                    if o.is_none_or(|o| o.digest != e.digest || o.mode != e.mode) {
                        fs::set_permissions(&at, fs::Permissions::from_mode(e.mode & 0o7777))
                            .map_err(SatError::io("chmod", &at))?;
                    }
                    if o.is_none_or(|o| o.digest != e.digest || o.mtime_ns != e.mtime_ns) {
                        set_mtime(&at, e.mtime_ns, true)?;
                    }
                }
            }
        }
        // Directory modes and times last, deepest first: creating children moved them.
        for e in wanted.iter().rev().filter(|e| e.kind() == S_IFDIR) {
            let at = tree.join(&e.path);
            fs::set_permissions(&at, fs::Permissions::from_mode(e.mode & 0o7777))
                .map_err(SatError::io("chmod", &at))?;
            set_mtime(&at, e.mtime_ns, true)?;
        }
        // Every content placed took its upload along on its last use (a rename): blobs/
        // holds no upload of this snapshot any more.
        let json = serde_json::to_vec(&wanted).expect("entries serialise");
        write_atomic(&dir.join("manifest.json"), &json)?;
        let _ = fs::remove_file(&snap);
        Ok(tree)
    }
}

impl ClientContexts {
    /// Keeps this client's contexts within `cap` bytes (their files' sizes, as listed),
    /// removing the least recently built first. `busy(dir)` says a context is in use by a
    /// build (it stays); uploads nobody placed for an hour go too. Returns the removed
    /// contexts' directories.
    pub fn evict(&self, cap: u64, busy: &dyn Fn(&Path) -> bool) -> Vec<PathBuf> {
        let Ok(rd) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut contexts = Vec::new();
        for e in rd.flatten() {
            let dir = e.path();
            let Ok(meta) = fs::metadata(dir.join("manifest.json")) else {
                continue;
            };
            let bytes: u64 = read_manifest(&dir)
                .unwrap_or_default()
                .iter()
                .map(|e| e.size)
                .sum();
            let used = meta.modified().unwrap_or(UNIX_EPOCH);
            contexts.push((used, bytes, dir));
        }
        contexts.sort();
        let mut total: u64 = contexts.iter().map(|c| c.1).sum();
        let mut removed = Vec::new();
        for (_, bytes, dir) in contexts {
            if total <= cap {
                break;
            }
            if busy(&dir) {
                continue;
            }
            // The manifest goes first: a half-removed tree is then a context to rebuild.
            let _ = fs::remove_file(dir.join("manifest.json"));
            if fs::remove_dir_all(&dir).is_ok() {
                total = total.saturating_sub(bytes);
                removed.push(dir);
            }
        }
        if let Ok(rd) = fs::read_dir(self.dir.join("blobs")) {
            let hour_ago = SystemTime::now() - Duration::from_secs(3600);
            for e in rd.flatten() {
                let stale = e
                    .metadata()
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t < hour_ago);
                if stale {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        removed
    }

    /// The directory of context `name` (what [`ClientContexts::evict`]'s `busy` is asked).
    pub fn context_path(&self, name: &str) -> PathBuf {
        self.context_dir(name)
    }
}

/// An upload being written: hashed as it arrives, committed only under its digest.
pub struct Incoming {
    file: fs::File,
    /// Renamed to its digest's name: nothing to clean up.
    committed: bool,
    tmp: PathBuf,
    dest: PathBuf,
    expect: String,
    hasher: Sha256,
    bytes: u64,
}

impl Incoming {
    /// Appends a chunk.
    pub fn write(&mut self, data: &[u8]) -> Result<(), SatError> {
        self.hasher.update(data);
        self.bytes += data.len() as u64;
        self.file
            .write_all(data)
            .map_err(SatError::io("write", &self.tmp))
    }

    /// Checks the digest and makes the content available; returns its size.
    pub fn finish(mut self) -> Result<u64, SatError> {
        let got = hex(&self.hasher.clone().finalize());
        if got != self.expect {
            let _ = fs::remove_file(&self.tmp);
            return Err(SatError::BadRequest(format!(
                "uploaded content for sha256:{} hashes to sha256:{got}",
                self.expect
            )));
        }
        fs::rename(&self.tmp, &self.dest).map_err(SatError::io("commit", &self.dest))?;
        self.committed = true;
        Ok(self.bytes)
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        // Unless finish() committed it, the upload was cut short.
        if !self.committed {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

fn read_manifest(dir: &Path) -> Result<Vec<Entry>, SatError> {
    let path = dir.join("manifest.json");
    match fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b).or_else(|_| {
            // A damaged manifest only costs a full upload: start over.
            let _ = fs::remove_dir_all(dir.join("tree"));
            Ok(Vec::new())
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(SatError::io("read", &path)(e)),
    }
}

fn copy_verified(src: &Path, dest: &Path, hex_want: &str) -> Result<(), SatError> {
    let tmp = dest.with_file_name(format!(".{hex_want}.{}", uuid_like()));
    let mut input = fs::File::open(src).map_err(SatError::io("open", src))?;
    let mut out = fs::File::create(&tmp).map_err(SatError::io("create", &tmp))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = input.read(&mut buf).map_err(SatError::io("read", src))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])
            .map_err(SatError::io("write", &tmp))?;
    }
    if hex(&hasher.finalize()) != hex_want {
        let _ = fs::remove_file(&tmp);
        return Err(SatError::BadRequest(format!(
            "{} changed on the satellite; send the build again",
            src.display()
        )));
    }
    fs::rename(&tmp, dest).map_err(SatError::io("commit", dest))
}

fn remove_any(path: &Path) -> Result<(), SatError> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path).map_err(SatError::io("remove", path)),
        Ok(_) => fs::remove_file(path).map_err(SatError::io("remove", path)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(SatError::io("inspect", path)(e)),
    }
}

fn set_mtime(path: &Path, mtime_ns: i64, follow: bool) -> Result<(), SatError> {
    let ts = rustix::fs::Timespec {
        tv_sec: mtime_ns.div_euclid(1_000_000_000),
        tv_nsec: mtime_ns.rem_euclid(1_000_000_000) as _,
    };
    let times = rustix::fs::Timestamps {
        last_access: ts,
        last_modification: ts,
    };
    let flags = if follow {
        rustix::fs::AtFlags::empty()
    } else {
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW
    };
    rustix::fs::utimensat(rustix::fs::CWD, path, &times, flags)
        .map_err(|e| SatError::io("set times of", path)(e.into()))
}

pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> Result<(), SatError> {
    let tmp = path.with_file_name(format!(
        ".{}.{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("tmp"),
        uuid_like()
    ));
    fs::write(&tmp, data).map_err(SatError::io("write", &tmp))?;
    fs::rename(&tmp, path).map_err(SatError::io("replace", path))
}

pub(crate) fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// The client's side: lists a context directory, skipping what `.dockerignore` excludes,
/// and hashes files, reusing the hashes of unchanged files from `cache`.
pub fn scan(
    root: &Path,
    ignore: &berth_build::Ignore,
    cache: &mut SumCache,
) -> Result<Vec<Entry>, SatError> {
    let mut out = Vec::new();
    scan_dir(root, "", ignore, cache, &mut out)?;
    Ok(out)
}

fn scan_dir(
    root: &Path,
    rel: &str,
    ignore: &berth_build::Ignore,
    cache: &mut SumCache,
    out: &mut Vec<Entry>,
) -> Result<(), SatError> {
    let dir = if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel)
    };
    let mut names: Vec<_> = fs::read_dir(&dir)
        .map_err(SatError::io("list", &dir))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .map_err(SatError::io("list", &dir))?;
    names.sort();
    for name in names {
        let Some(name) = name.to_str() else {
            return Err(SatError::BadRequest(format!(
                "{}: a file name in the context is not UTF-8",
                dir.join(&name).display()
            )));
        };
        let path = if rel.is_empty() {
            name.to_owned()
        } else {
            format!("{rel}/{name}")
        };
        let full = root.join(&path);
        let meta = fs::symlink_metadata(&full).map_err(SatError::io("inspect", &full))?;
        let excluded = ignore.excludes(&path);
        if excluded && !(meta.is_dir() && ignore.may_reinclude_below(&path)) {
            continue;
        }
        let mtime_ns = meta.mtime() * 1_000_000_000 + meta.mtime_nsec();
        let mut entry = Entry {
            path: path.clone(),
            mode: meta.mode(),
            size: 0,
            digest: String::new(),
            link: String::new(),
            mtime_ns,
        };
        let ft = meta.file_type();
        if ft.is_dir() {
            out.push(entry);
            scan_dir(root, &path, ignore, cache, out)?;
        } else if ft.is_symlink() {
            let target = fs::read_link(&full).map_err(SatError::io("read link", &full))?;
            entry.link = target.to_string_lossy().into_owned();
            out.push(entry);
        } else if ft.is_file() {
            entry.size = meta.len();
            entry.digest = cache.digest(&full, &path, &meta)?;
            out.push(entry);
        }
        // Sockets, fifos and devices are not build inputs; Docker skips them too.
    }
    Ok(())
}

/// The client's file hashes, kept between builds: a file whose inode, size, mtime and
/// ctime did not change is not read again.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct SumCache {
    entries: HashMap<String, CachedSum>,
    #[serde(skip)]
    used: HashSet<String>,
    #[serde(skip)]
    pub(crate) hashed_bytes: u64,
    /// Something to write back: a file hashed, or one gone.
    #[serde(skip)]
    dirty: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct CachedSum {
    ino: u64,
    size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
    digest: String,
}

impl SumCache {
    /// Loads the cache kept at `path` (empty if absent or unreadable).
    pub fn load(path: &Path) -> SumCache {
        fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Saves the entries used since loading (files gone from the context are dropped).
    pub fn save(&mut self, path: &Path) -> Result<(), SatError> {
        let used = std::mem::take(&mut self.used);
        let before = self.entries.len();
        self.entries.retain(|k, _| used.contains(k));
        if !self.dirty && self.entries.len() == before && path.exists() {
            // Nothing changed: a no-op build writes nothing.
            return Ok(());
        }
        self.dirty = false;
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(SatError::io("create", parent))?;
        }
        write_atomic(path, &serde_json::to_vec(self).expect("sums serialise"))
    }

    /// Bytes read to hash files this time.
    pub fn hashed_bytes(&self) -> u64 {
        self.hashed_bytes
    }

    fn digest(&mut self, full: &Path, rel: &str, meta: &fs::Metadata) -> Result<String, SatError> {
        let key = CachedSum {
            ino: meta.ino(),
            size: meta.len(),
            mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
            ctime_ns: meta.ctime() * 1_000_000_000 + meta.ctime_nsec(),
            digest: String::new(),
        };
        self.used.insert(rel.to_owned());
        // A file changed within the clock's granularity of its listing could change again
        // unseen: only trust entries whose ctime is safely in the past.
        let settled = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .saturating_sub(Duration::from_secs(2))
            .as_nanos() as i64
            > key.ctime_ns;
        if let Some(c) = self.entries.get(rel)
            && (c.ino, c.size, c.mtime_ns, c.ctime_ns)
                == (key.ino, key.size, key.mtime_ns, key.ctime_ns)
            && settled
        {
            return Ok(c.digest.clone());
        }
        let mut f = fs::File::open(full).map_err(SatError::io("open", full))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = f.read(&mut buf).map_err(SatError::io("read", full))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            self.hashed_bytes += n as u64;
        }
        let digest = format!("sha256:{}", hex(&hasher.finalize()));
        self.dirty = true;
        self.entries.insert(
            rel.to_owned(),
            CachedSum {
                digest: digest.clone(),
                ..key
            },
        );
        Ok(digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries_of(dir: &Path) -> Vec<Entry> {
        scan(
            dir,
            &berth_build::Ignore::parse(""),
            &mut SumCache::default(),
        )
        .unwrap()
    }

    #[test]
    fn changed_file_is_the_only_one_missing_and_tree_matches() {
        let client = tempfile::tempdir().unwrap();
        let sat = tempfile::tempdir().unwrap();
        fs::create_dir(client.path().join("src")).unwrap();
        fs::write(client.path().join("src/a.txt"), "a").unwrap();
        fs::write(client.path().join("b.txt"), "b").unwrap();
        std::os::unix::fs::symlink("src/a.txt", client.path().join("link")).unwrap();
        let store = ClientContexts::new(sat.path().join("c1"));

        let first = entries_of(client.path());
        let (id, missing) = store.prepare("proj", &first).unwrap();
        assert_eq!(missing.len(), 2);
        for d in &missing {
            let e = first.iter().find(|e| &e.digest == d).unwrap();
            let mut inc = store.receive(d).unwrap();
            inc.write(&fs::read(client.path().join(&e.path)).unwrap())
                .unwrap();
            inc.finish().unwrap();
        }
        let tree = store.materialize("proj", &id).unwrap();
        assert_eq!(fs::read_to_string(tree.join("src/a.txt")).unwrap(), "a");
        assert_eq!(
            fs::read_link(tree.join("link")).unwrap(),
            Path::new("src/a.txt")
        );
        assert_eq!(
            entries_of(&tree),
            first,
            "same names, modes, times and contents"
        );
        // The same list again: nothing to send, no snapshot written, the tree as it is.
        let (same, missing) = store.prepare("proj", &first).unwrap();
        assert_eq!((same.as_str(), missing.len()), (id.as_str(), 0));
        assert_eq!(store.materialize("proj", &same).unwrap(), tree);
        assert_eq!(entries_of(&tree), first);

        fs::write(client.path().join("b.txt"), "b2").unwrap();
        fs::remove_file(client.path().join("link")).unwrap();
        fs::write(client.path().join("c.txt"), "a").unwrap();
        let second = entries_of(client.path());
        let (id, missing) = store.prepare("proj", &second).unwrap();
        assert_eq!(
            missing,
            vec![
                second
                    .iter()
                    .find(|e| e.path == "b.txt")
                    .unwrap()
                    .digest
                    .clone()
            ],
            "c.txt has content the satellite holds; only b.txt is new"
        );
        let mut inc = store.receive(&missing[0]).unwrap();
        inc.write(b"b2").unwrap();
        inc.finish().unwrap();
        let tree = store.materialize("proj", &id).unwrap();
        assert!(!tree.join("link").exists());
        assert_eq!(entries_of(&tree), second);
    }

    #[test]
    fn contexts_beyond_the_cap_go_least_recently_built_first() {
        let sat = tempfile::tempdir().unwrap();
        let store = ClientContexts::new(sat.path().join("c1"));
        let make = |name: &str, bytes: usize| {
            let src = tempfile::tempdir().unwrap();
            fs::write(src.path().join("f"), vec![name.as_bytes()[0]; bytes]).unwrap();
            let entries = entries_of(src.path());
            let (id, missing) = store.prepare(name, &entries).unwrap();
            for d in missing {
                let mut inc = store.receive(&d).unwrap();
                inc.write(&fs::read(src.path().join("f")).unwrap()).unwrap();
                inc.finish().unwrap();
            }
            store.materialize(name, &id).unwrap();
            // Distinct times of use, oldest first.
            std::thread::sleep(Duration::from_millis(20));
        };
        make("a", 1000);
        make("b", 1000);
        make("c", 1000);
        let (a, b, c) = (
            store.context_path("a"),
            store.context_path("b"),
            store.context_path("c"),
        );
        // Under the cap nothing goes.
        assert!(store.evict(3000, &|_| false).is_empty());
        // Over it, the oldest not in use goes first: a is busy, so b goes.
        let removed = store.evict(2000, &|d| d == a);
        assert_eq!(removed, vec![b.clone()]);
        assert!(a.exists() && !b.exists() && c.exists());
        let removed = store.evict(1000, &|_| false);
        assert_eq!(removed, vec![a]);
        assert!(c.join("tree/f").exists());
    }

    #[test]
    fn wrong_upload_and_unclean_paths_are_refused() {
        let sat = tempfile::tempdir().unwrap();
        let store = ClientContexts::new(sat.path().join("c1"));
        let mut inc = store
            .receive(&format!("sha256:{}", "0".repeat(64)))
            .unwrap();
        inc.write(b"not that").unwrap();
        assert!(inc.finish().unwrap_err().to_string().contains("hashes to"));
        assert_eq!(
            fs::read_dir(sat.path().join("c1/blobs")).unwrap().count(),
            0,
            "nothing left behind"
        );
        for bad in ["../x", "/etc", "a//b", "a/./b"] {
            let e = Entry {
                path: bad.into(),
                mode: S_IFDIR | 0o755,
                size: 0,
                digest: String::new(),
                link: String::new(),
                mtime_ns: 0,
            };
            assert!(store.prepare("p", &[e]).is_err(), "{bad}");
        }
        let orphan = Entry {
            path: "a/b".into(),
            mode: S_IFDIR | 0o755,
            size: 0,
            digest: String::new(),
            link: String::new(),
            mtime_ns: 0,
        };
        assert!(
            store
                .prepare("p", &[orphan])
                .unwrap_err()
                .to_string()
                .contains("not listed before")
        );
    }

    #[test]
    fn sum_cache_skips_unchanged_files() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("f"), vec![7u8; 1000]).unwrap();
        // Make the file look settled (ctime can't be set; wait out the margin instead).
        let mut cache = SumCache::default();
        scan(dir.path(), &berth_build::Ignore::parse(""), &mut cache).unwrap();
        assert_eq!(cache.hashed_bytes(), 1000);
        let keep = tempfile::tempdir().unwrap();
        let path = keep.path().join("sums.json");
        cache.save(&path).unwrap();
        let mut again = SumCache::load(&path);
        std::thread::sleep(Duration::from_millis(2100));
        scan(dir.path(), &berth_build::Ignore::parse(""), &mut again).unwrap();
        assert_eq!(again.hashed_bytes(), 0, "unchanged file not read again");
        // Nothing changed: the cache file is not rewritten.
        let past = SystemTime::now() - Duration::from_secs(60);
        fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(past)
            .unwrap();
        again.save(&path).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().modified().unwrap(), past);
        // A file gone is written out.
        fs::remove_file(dir.path().join("f")).unwrap();
        let mut third = SumCache::load(&path);
        scan(dir.path(), &berth_build::Ignore::parse(""), &mut third).unwrap();
        third.save(&path).unwrap();
        assert!(SumCache::load(&path).entries.is_empty());
    }
}
