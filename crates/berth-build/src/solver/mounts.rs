//! The mounts of a RUN step: cache directories (with their sharing modes), secrets,
//! bind mounts of the context or another stage, tmpfs; and [`Holds`], what they keep
//! until the step ends.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use berth_oci::{Digest, Mount};

use super::snapshot::View;
use super::{SecretSource, Solved, Solver, io_err, unique};
use crate::error::{BuildError, Result};
use crate::fileops;
use crate::ir::{ExecOp, MountSource, Sharing};

impl Solver {
    /// The runtime mounts for `op.mounts`, in their order. A secret asked for as a
    /// variable is added to `env`; what the mounts need until the step ends (locks,
    /// views, scratch directories) goes into `holds`.
    pub(super) fn exec_mounts(
        &self,
        op: &ExecOp,
        inputs: &[Arc<Solved>],
        env: &mut Vec<String>,
        holds: &mut Holds,
    ) -> Result<Vec<Mount>> {
        let bind = |source: PathBuf, access: &str| {
            let options = vec!["rbind".to_string(), access.to_string()];
            ("bind", source, options)
        };
        let mut mounts = Vec::new();
        for m in &op.mounts {
            let (typ, source, options) = match &m.source {
                MountSource::Cache {
                    id,
                    sharing,
                    owner,
                    seed,
                    readonly,
                } => {
                    let start = match seed {
                        Some((input, path)) => CacheStart::Copy(
                            inputs.get(*input).ok_or_else(|| {
                                BuildError::Invalid(format!("cache seed of missing input {input}"))
                            })?,
                            path,
                        ),
                        None => CacheStart::Empty(*owner),
                    };
                    bind(
                        self.cache_mount_dir(id, *sharing, holds, start)?,
                        if *readonly { "ro" } else { "rw" },
                    )
                }
                MountSource::Secret {
                    id,
                    env: as_env,
                    file,
                    required,
                    uid,
                    gid,
                    mode,
                } => {
                    let Some(value) = self.secret_value(id, *required)? else {
                        continue;
                    };
                    if let Some(var) = as_env {
                        env.push(format!("{var}={}", String::from_utf8_lossy(&value)));
                    }
                    if !*file {
                        continue;
                    }
                    bind(self.secret_file(&value, (*uid, *gid, *mode), holds)?, "ro")
                }
                MountSource::Input { input, path, rw } => bind(
                    self.input_mount(inputs, *input, path, *rw, holds)?,
                    if *rw { "rw" } else { "ro" },
                ),
                MountSource::Ssh {
                    id,
                    required,
                    uid,
                    gid,
                    mode,
                } => match self.opts.ssh.get(id) {
                    Some(agent) => bind(self.ssh_socket(agent, (*uid, *gid, *mode), holds)?, "rw"),
                    None if *required => return Err(BuildError::MissingSsh(id.clone())),
                    // As BuildKit: an optional agent that was not given is left out.
                    None => continue,
                },
                MountSource::Tmpfs { size } => {
                    let mut opts = vec!["nosuid".into(), "nodev".into(), "mode=1777".into()];
                    if let Some(n) = size {
                        opts.push(format!("size={n}"));
                    }
                    ("tmpfs", PathBuf::from("tmpfs"), opts)
                }
            };
            let mut mount = Mount::default();
            mount.set_destination(PathBuf::from(&m.target));
            mount.set_typ(Some(typ.into()));
            mount.set_source(Some(source));
            mount.set_options(Some(options));
            mounts.push(mount);
        }
        Ok(mounts)
    }

    /// The value of secret `id`; `None` if it is optional and not given.
    fn secret_value(&self, id: &str, required: bool) -> Result<Option<Vec<u8>>> {
        Ok(Some(match self.opts.secrets.get(id) {
            Some(SecretSource::File(p)) => fs::read(p).map_err(|e| io_err("read secret", p, e))?,
            Some(SecretSource::Value(v)) => v.to_vec(),
            Some(SecretSource::Env(var)) => std::env::var(var)
                .map_err(|_| {
                    BuildError::Invalid(format!(
                        "secret {id:?}: environment variable {var} is not set"
                    ))
                })?
                .into_bytes(),
            None if required => return Err(BuildError::MissingSecret(id.to_string())),
            None => return Ok(None),
        }))
    }

    /// A file holding `value`, owned by `uid:gid` with `mode` (BuildKit's defaults are
    /// root and 0400, whoever the step runs as), to mount for one step.
    fn secret_file(
        &self,
        value: &[u8],
        (uid, gid, mode): (u32, u32, u32),
        holds: &mut Holds,
    ) -> Result<PathBuf> {
        // Secrets live in memory (/dev/shm is a tmpfs), in a directory only root can
        // enter, and only for the step.
        let dir = crate::secrets::stage_dir(&self.root, &unique("s"))?;
        holds.dirs.push(dir.clone());
        let file = dir.join("value");
        fs::write(&file, value).map_err(|e| io_err("write secret", &file, e))?;
        set_owner_mode(&file, (uid, gid, mode), "secret")?;
        Ok(file)
    }

    /// A socket, owned by `uid:gid` with `mode`, that forwards each connection to the
    /// SSH agent listening at `agent`, for one step (BuildKit's ssh mount: the step
    /// talks to the client's agent, never sees its keys).
    fn ssh_socket(
        &self,
        agent: &Path,
        (uid, gid, mode): (u32, u32, u32),
        holds: &mut Holds,
    ) -> Result<PathBuf> {
        let dir = crate::secrets::stage_dir(&self.root, &unique("ssh"))?;
        holds.dirs.push(dir.clone());
        let socket = dir.join("agent.sock");
        holds
            .forwards
            .push(crate::ssh::Forward::start(&socket, agent.to_path_buf())?);
        set_owner_mode(&socket, (uid, gid, mode), "ssh agent socket")?;
        Ok(socket)
    }

    /// What to bind-mount for `path` of input `input` (`--mount=type=bind`).
    fn input_mount(
        &self,
        inputs: &[Arc<Solved>],
        input: usize,
        path: &str,
        rw: bool,
        holds: &mut Holds,
    ) -> Result<PathBuf> {
        let solved = inputs
            .get(input)
            .ok_or_else(|| BuildError::Invalid(format!("mount of missing input {input}")))?;
        let (root, ignore, view, _) = self.source_root(solved)?;
        let src = fileops::resolve_in_root(&root, path)?;
        let from_context = view.is_none();
        if let Some(v) = view {
            holds.views.push(v);
        }
        // A mount of the build context is an overlay: files .dockerignore excludes are
        // hidden by whiteouts in its upper directory (the step must not read what its
        // cache key does not cover), and writes to a writable mount are thrown away,
        // never reaching the user's files.
        let hide = from_context && !ignore.patterns().is_empty();
        if from_context && rw && !src.is_dir() {
            // A writable mount of one context file gets a copy to write to.
            let scratch = self.root.join("tmp").join(unique("ctxfile"));
            fs::create_dir_all(&scratch).map_err(|e| io_err("create directory", &scratch, e))?;
            holds.dirs.push(scratch.clone());
            let copy = scratch.join("file");
            fs::copy(&src, &copy).map_err(|e| io_err("copy", &src, e))?;
            return Ok(copy);
        }
        if !(from_context && src.is_dir() && (rw || hide)) {
            return Ok(src);
        }
        let scratch = self.root.join("tmp").join(unique("ctxmnt"));
        let (upper, work, at) = (
            scratch.join("upper"),
            scratch.join("work"),
            scratch.join("mnt"),
        );
        for d in [&upper, &work, &at] {
            fs::create_dir_all(d).map_err(|e| io_err("create directory", d, e))?;
        }
        holds.dirs.push(scratch.clone());
        let rel = src
            .strip_prefix(&root)
            .unwrap_or(Path::new(""))
            .to_string_lossy()
            .into_owned();
        fileops::whiteout_ignored(&src, &rel, &ignore, &upper)?;
        let plan = berth_snapshot::overlay_mount(std::slice::from_ref(&src), &upper, &work);
        holds.mounts.push(berth_exec::mount_rootfs(&[plan], &at)?);
        Ok(at)
    }

    /// The directory of cache mount `id`, made as `start` says on first use, and
    /// locked in `holds` as its sharing mode asks (`private` takes the first free copy).
    /// As BuildKit's cache keys (`id:ref`), caches of one id with different starts are
    /// different directories.
    fn cache_mount_dir(
        &self,
        id: &str,
        sharing: Sharing,
        holds: &mut Holds,
        start: CacheStart<'_>,
    ) -> Result<PathBuf> {
        let key = match &start {
            CacheStart::Empty(None) => id.to_string(),
            CacheStart::Empty(Some((uid, gid, mode))) => {
                format!("{id}:mkdir {uid}:{gid} {mode:o}")
            }
            CacheStart::Copy(from, path) => format!("{id}:{}{path}", from.key),
        };
        let base = self
            .root
            .join("cache/mounts")
            .join(Digest::sha256(key.as_bytes()).hex());
        let lock_at = |dir: &Path, wait: bool| -> Result<Option<fs::File>> {
            let lock_path = dir.with_extension("lock");
            let f =
                fs::File::create(&lock_path).map_err(|e| io_err("create lock", &lock_path, e))?;
            if wait {
                f.lock().map_err(|e| io_err("lock", &lock_path, e))?;
                Ok(Some(f))
            } else {
                match f.try_lock() {
                    Ok(()) => Ok(Some(f)),
                    Err(_) => Ok(None),
                }
            }
        };
        let dir = match sharing {
            Sharing::Shared => base,
            Sharing::Locked => {
                if let Some(l) = lock_at(&base, true)? {
                    holds.locks.push(l);
                }
                base
            }
            Sharing::Private => {
                let mut n = 0;
                loop {
                    let d = if n == 0 {
                        base.clone()
                    } else {
                        base.with_file_name(format!(
                            "{}-{n}",
                            base.file_name().unwrap().to_string_lossy()
                        ))
                    };
                    if let Some(l) = lock_at(&d, false)? {
                        holds.locks.push(l);
                        break d;
                    }
                    n += 1;
                }
            }
        };
        if !dir.is_dir() {
            // Made aside and renamed into place, so a failed copy leaves no half cache.
            let new = dir.with_extension(unique("new"));
            fs::create_dir_all(&new).map_err(|e| io_err("create cache mount", &new, e))?;
            let made = match start {
                CacheStart::Empty(owner) => {
                    set_owner_mode(&new, owner.unwrap_or((0, 0, 0o755)), "cache mount")
                }
                CacheStart::Copy(from, path) => self.seed_cache(&new, from, path, holds),
            };
            let made = made.and_then(|()| match fs::rename(&new, &dir) {
                // Another step made it meanwhile: theirs is as good.
                Err(_) if dir.is_dir() => Ok(()),
                r => r.map_err(|e| io_err("rename cache mount", &new, e)),
            });
            if made.is_err() || new.exists() {
                let _ = fs::remove_dir_all(&new);
            }
            made?;
        }
        Ok(dir)
    }

    /// Fill the new cache directory `dir` with a copy of `path` of `from`, owners and
    /// modes kept (the directory takes those of `path`).
    fn seed_cache(&self, dir: &Path, from: &Solved, path: &str, holds: &mut Holds) -> Result<()> {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let (root, ignore, view, _) = self.source_root(from)?;
        if let Some(v) = view {
            holds.views.push(v);
        }
        let src = fileops::resolve_in_root(&root, path)?;
        let meta = match fs::metadata(&src) {
            Ok(m) if m.is_dir() => m,
            Ok(_) => {
                return Err(BuildError::Invalid(format!(
                    "--mount=type=cache,source={path}: not a directory; a cache starts from a directory"
                )));
            }
            // As BuildKit, a source that is not there starts the cache empty.
            Err(_) => return set_owner_mode(dir, (0, 0, 0o755), "cache mount"),
        };
        let matched = fileops::resolve_sources(&root, &[path.to_string()], &ignore)?;
        let opts = fileops::CopyOptions {
            keep_owner: true,
            ..Default::default()
        };
        fileops::copy(
            &root,
            &matched,
            &ignore,
            &Default::default(),
            dir,
            "/",
            opts,
        )?;
        set_owner_mode(
            dir,
            (meta.uid(), meta.gid(), meta.permissions().mode() & 0o7777),
            "cache mount",
        )
    }
}

/// How a cache mount's directory starts when first made.
enum CacheStart<'a> {
    /// Empty, with this (uid, gid, mode) if given (else root, 0755).
    Empty(Option<(u32, u32, u32)>),
    /// A copy of a path of a solved input.
    Copy(&'a Solved, &'a str),
}

/// Give `path` (a `what`, for errors) its owner and mode.
fn set_owner_mode(path: &Path, (uid, gid, mode): (u32, u32, u32), what: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .map_err(|e| io_err(&format!("chown {what}"), path, e))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| io_err(&format!("chmod {what}"), path, e))
}

/// Things held for the duration of a step: cache-mount locks, mounted views, secret
/// files. Dropping releases them.
#[derive(Default)]
pub(super) struct Holds {
    locks: Vec<fs::File>,
    views: Vec<View>,
    mounts: Vec<berth_exec::MountGuard>,
    forwards: Vec<crate::ssh::Forward>,
    pub(super) dirs: Vec<PathBuf>,
}

impl Drop for Holds {
    fn drop(&mut self) {
        self.views.clear();
        // Unmount before the scratch directories under them go.
        self.mounts.clear();
        self.forwards.clear();
        for d in &self.dirs {
            let _ = fs::remove_dir_all(d);
        }
    }
}
