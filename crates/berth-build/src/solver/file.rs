//! File operations (COPY, ADD, WORKDIR, heredoc files) on a step's snapshot.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::exec::chown_ids;
use super::snapshot::View;
use super::{Output, Solved, Solver, io_err, unique};
use crate::error::{BuildError, Result};
use crate::fileops::{self, Chmod, CopyOptions};
use crate::ir::{FileAction, FileOp};
use crate::mode::ModeSet;
use crate::pattern::{Ignore, Pattern};

impl Solver {
    /// Where the files of `input` are read from: the directory, its ignore rules, the
    /// view that keeps it mounted (a stage's file system), and whether it is a stage.
    pub(super) fn source_root(
        &self,
        input: &Solved,
    ) -> Result<(PathBuf, Ignore, Option<View>, bool)> {
        match &input.output {
            Output::Dir { path, exclude } => Ok((
                path.clone(),
                Ignore::new(exclude.iter().map(String::as_str)),
                None,
                false,
            )),
            Output::Layers(layers) => {
                let view = self.view(layers)?;
                Ok((view.dir.clone(), Ignore::default(), Some(view), true))
            }
        }
    }

    /// Apply a file op on its first input's file system; its changes become a layer.
    pub(super) fn run_file(&self, op: &FileOp, inputs: &[Arc<Solved>]) -> Result<Output> {
        let Output::Layers(below) = &inputs[0].output else {
            return Err(BuildError::Invalid(
                "file operations need a file system, not a directory".into(),
            ));
        };
        let active = self.prepare(below)?;
        let target = self.root.join("tmp").join(unique("mnt"));
        fs::create_dir_all(&target).map_err(|e| io_err("create directory", &target, e))?;
        let result = (|| {
            let guard = berth_exec::mount_rootfs(&active.mounts(), &target)?;
            for action in &op.actions {
                self.file_action(action, &op.cwd, &target, &active.lowers, inputs)?;
            }
            guard.unmount()?;
            Ok::<_, BuildError>(())
        })();
        let _ = fs::remove_dir(&target);
        if let Err(e) = result {
            let _ = self.snapshots.remove(active);
            return Err(e);
        }
        self.commit(active, below)
    }

    /// One action of a file op on the file system mounted at `target`.
    fn file_action(
        &self,
        action: &FileAction,
        cwd: &str,
        target: &Path,
        lowers: &[PathBuf],
        inputs: &[Arc<Solved>],
    ) -> Result<()> {
        let abs = |p: &str| {
            if p.starts_with('/') {
                p.to_string()
            } else {
                format!("{}/{p}", cwd.trim_end_matches('/'))
            }
        };
        let owner = |c: &Option<String>| -> Result<Option<(u32, u32)>> {
            Ok(c.as_deref().map(|u| chown_ids(lowers, u)))
        };
        match action {
            FileAction::Copy {
                from,
                sources,
                dest,
                chown,
                chmod,
                extract_archives,
                exclude,
                parents,
                chmod_symbolic,
                mtime,
                keep_owner,
                dirs,
                no_follow,
            } => {
                let input = inputs.get(*from).ok_or_else(|| {
                    BuildError::Invalid(format!("copy from missing input {from}"))
                })?;
                let (root, ignore, _view, from_stage) = self.source_root(input)?;
                let exclude = Ignore::new(exclude.iter().map(String::as_str));
                let dest = dest_path(dest, abs(dest));
                let opts = CopyOptions {
                    chown: owner(chown)?,
                    chmod: match (chmod, chmod_symbolic) {
                        (Some(m), _) => Some(Chmod::Octal(*m)),
                        (None, Some(s)) => {
                            Some(Chmod::Symbolic(ModeSet::parse(s).ok_or_else(|| {
                                BuildError::Invalid(format!("--chmod={s}: not a mode"))
                            })?))
                        }
                        (None, None) => None,
                    },
                    keep_owner: from_stage || *keep_owner,
                    mtime: *mtime,
                    // Only archives from the build context are unpacked, as in Docker.
                    extract_archives: *extract_archives && !from_stage,
                    no_follow: *no_follow,
                };
                if *parents {
                    return fileops::copy_parents(
                        &root, sources, &ignore, &exclude, target, &dest, opts,
                    );
                }
                let matched = fileops::resolve_sources_with(&root, sources, &ignore, *no_follow)?;
                if *dirs {
                    // Each matched folder as itself (BuildKit's copy of a folder).
                    let into = dest.ends_with('/')
                        || matched.len() > 1
                        || sources.iter().any(|s| Pattern::new(s).has_wildcards())
                        || fileops::resolve_in_root(target, &dest).is_ok_and(|p| p.is_dir());
                    let dest = if into {
                        format!("{}/", dest.trim_end_matches('/'))
                    } else {
                        dest
                    };
                    for m in matched {
                        let at = if *no_follow {
                            fileops::resolve_link_in_root(&root, &m.rel)
                        } else {
                            fileops::resolve_in_root(&root, &m.rel)
                        };
                        let is_dir =
                            at.is_ok_and(|p| fs::symlink_metadata(&p).is_ok_and(|md| md.is_dir()));
                        let to = match Path::new(&m.rel).file_name() {
                            Some(name) if is_dir && into => {
                                format!("{dest}{}", name.to_string_lossy())
                            }
                            _ => dest.clone(),
                        };
                        fileops::copy(&root, &[m], &ignore, &exclude, target, &to, opts)?;
                    }
                    return Ok(());
                }
                fileops::copy(&root, &matched, &ignore, &exclude, target, &dest, opts)
            }
            FileAction::Mkdir { path, chown } => {
                fileops::mkdir_all(target, &abs(path), owner(chown)?).map(|_| ())
            }
            FileAction::Write {
                path,
                name,
                data,
                mode,
                chown,
            } => {
                let chown = owner(chown)?;
                let p = dest_path(path, abs(path));
                let file = fileops::file_dest(target, &p, name, chown)?;
                // A heredoc is copied as a file is: never over a folder (BuildKit's copy
                // refuses it too).
                match fs::symlink_metadata(&file) {
                    Ok(m) if m.is_dir() => {
                        return Err(BuildError::Conflict(format!(
                            "cannot replace the folder {} with a file",
                            Path::new("/")
                                .join(file.strip_prefix(target).unwrap_or(&file))
                                .display()
                        )));
                    }
                    Ok(_) => fs::remove_file(&file).map_err(|e| io_err("replace", &file, e))?,
                    Err(_) => {}
                }
                fs::write(&file, data).map_err(|e| io_err("write", &file, e))?;
                use std::os::unix::fs::PermissionsExt;
                fs::set_permissions(&file, fs::Permissions::from_mode(*mode))
                    .map_err(|e| io_err("chmod", &file, e))?;
                let (u, g) = chown.unwrap_or((0, 0));
                std::os::unix::fs::lchown(&file, Some(u), Some(g))
                    .map_err(|e| io_err("chown", &file, e))
            }
        }
    }
}

/// A COPY destination as written (`dest`) and made absolute (`abs`): a folder, ending
/// in `/`, if it was written `.`, empty or with a trailing `/`, as BuildKit's frontend
/// decides before it cleans the path (so `/x/.` is the path `/x`, not a folder hint).
fn dest_path(dest: &str, abs: String) -> String {
    if dest.ends_with('/') || dest == "." || dest.is_empty() {
        format!("{}/", abs.trim_end_matches('/'))
    } else {
        abs
    }
}
