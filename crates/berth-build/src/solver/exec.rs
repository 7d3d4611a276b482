//! Running a RUN step: the process (user, environment, network), its output, and the
//! stub files the runtime leaves for file mounts.

use std::fs;
use std::path::PathBuf;
use std::sync::Arc;

use berth_exec::{Meta, Network};
use berth_snapshot::Active;

use super::mounts::Holds;
use super::{Event, Output, Solved, Solver, io_err};
use crate::error::{BuildError, Result};
use crate::ir::{ExecOp, NetworkMode, State};

impl Solver {
    /// Run a RUN step on its first input's file system; its changes become a layer.
    pub(super) fn run_exec(
        &self,
        state: &State,
        id: usize,
        op: &ExecOp,
        inputs: &[Arc<Solved>],
    ) -> Result<Output> {
        let Output::Layers(below) = &inputs[0].output else {
            return Err(BuildError::Invalid(
                "RUN needs a file system, not a directory".into(),
            ));
        };
        // A foreign platform's step runs through the kernel's binfmt_misc emulation;
        // without it, the step's first exec would fail with a bare "exec format error".
        if let Some(p) = &op.platform {
            p.check_emulation()
                .map_err(|m| BuildError::Invalid(format!("{}: {m}", state.vertex().name)))?;
        }
        let active = self.prepare(below)?;
        let mut holds = Holds::default();
        let result = self.exec_in(state, id, op, inputs, &active, &mut holds);
        drop(holds);
        match result {
            Ok(()) => self.commit(active, below),
            Err(e) => {
                let saved = match &e {
                    BuildError::StepFailed { .. } if !op.on_failure.is_empty() => {
                        self.save_on_failure(op, &active)
                    }
                    _ => Ok(()),
                };
                let _ = self.snapshots.remove(active);
                saved.and(Err(e))
            }
        }
    }

    /// Copy `op`'s [`ExecOp::on_failure`] paths out of the failed command's file system
    /// (mounted read-only for the purpose) to the host.
    fn save_on_failure(&self, op: &ExecOp, active: &Active) -> Result<()> {
        let target = self.root.join("tmp").join(super::unique("failed"));
        fs::create_dir_all(&target).map_err(|e| io_err("create directory", &target, e))?;
        let result = (|| {
            let guard = berth_exec::mount_rootfs(&active.mounts(), &target)?;
            let copied = op.on_failure.iter().try_for_each(|s| {
                let src = crate::fileops::resolve_in_root(&target, &s.src)?;
                if fs::symlink_metadata(&src).is_err() {
                    if s.if_exists {
                        return Ok(());
                    }
                    return Err(BuildError::SourceNotFound(s.src.clone()));
                }
                crate::fileops::copy_out(&src, &s.dest)
                    .map_err(|e| io_err(&format!("save {} to", s.src), &s.dest, e))
            });
            guard.unmount()?;
            copied
        })();
        let _ = fs::remove_dir(&target);
        result
    }

    /// Run `op` in `active`; what its mounts need stays in `holds` until the caller
    /// drops it.
    fn exec_in(
        &self,
        state: &State,
        id: usize,
        op: &ExecOp,
        inputs: &[Arc<Solved>],
        active: &Active,
        holds: &mut Holds,
    ) -> Result<()> {
        let mut tail = Tail::default();
        let progress = &self.opts.progress;
        let (code, stubs, own) =
            self.exec_process(op, inputs, active, holds, &mut |stream, data| {
                tail.push(data);
                progress.event(Event::Log {
                    id,
                    stream,
                    data: data.to_vec(),
                });
            })?;
        if code != 0 {
            return Err(BuildError::StepFailed {
                step: state.vertex().name.clone(),
                command: format!("{:?}", op.args),
                code,
                output: tail.text(),
            });
        }
        for t in stubs {
            let p = active.upper.join(t.trim_start_matches('/'));
            let meta = fs::symlink_metadata(&p);
            if meta.as_ref().is_ok_and(|m| m.is_file() && m.len() == 0) {
                fs::remove_file(&p).map_err(|e| io_err("remove mount stub", &p, e))?;
                if own.contains(&t) {
                    // Directories made only for berth's mount go too (empty, and not in
                    // the image).
                    let mut dir = std::path::Path::new(&t).parent();
                    while let Some(d) = dir.filter(|d| d != &std::path::Path::new("/")) {
                        let ds = d.to_string_lossy();
                        if exists_in(&active.lowers, &ds)
                            || fs::remove_dir(active.upper.join(ds.trim_start_matches('/')))
                                .is_err()
                        {
                            break;
                        }
                        dir = d.parent();
                    }
                }
            } else if t == crate::frontend::dockerfile::lower::HEREDOC_DIR
                && meta.is_ok_and(|m| m.is_dir())
            {
                // berth's own mount point, not the user's: it leaves no trace, nor does
                // a /run that only it made.
                let _ = fs::remove_dir(&p);
                if !exists_in(&active.lowers, "/run") {
                    let _ = fs::remove_dir(active.upper.join("run"));
                }
            }
        }
        if op.docker.is_some() {
            self.docker_clean(active);
        }
        Ok(())
    }

    /// Run `op`'s process in `active`, its output to `output`; its exit code, the mount
    /// stubs the runtime may have left in the upper directory, and which of those are
    /// berth's own mounts.
    pub(super) fn exec_process(
        &self,
        op: &ExecOp,
        inputs: &[Arc<Solved>],
        active: &Active,
        holds: &mut Holds,
        output: &mut dyn FnMut(berth_exec::Stream, &[u8]),
    ) -> Result<(i32, Vec<String>, Vec<String>)> {
        let user = exec_user(&active.lowers, &op.user)?;
        let mut env = op.env.clone();
        env.extend(op.proxy_env.iter().cloned());
        let mut mounts = self.exec_mounts(op, inputs, &mut env, holds)?;
        // The company CA bundle, where the image keeps its roots (berth's own mounts:
        // their stubs and the directories made for them leave no trace).
        let mut own: Vec<String> = Vec::new();
        if let Some(bundle) = &self.opts.ca_bundle {
            let mut targets: Vec<&str> = CA_PATHS
                .iter()
                .copied()
                .filter(|t| exists_in(&active.lowers, t))
                .collect();
            if targets.is_empty() {
                targets.push(CA_PATHS[0]);
            }
            for t in targets {
                let mut m = berth_oci::Mount::default();
                m.set_destination(PathBuf::from(t));
                m.set_typ(Some("bind".into()));
                m.set_source(Some(bundle.clone()));
                m.set_options(Some(vec!["rbind".into(), "ro".into()]));
                mounts.push(m);
                own.push(t.to_string());
            }
        }
        let mut args = op.args.clone();
        if let Some(spec) = &op.docker {
            let (mount, wrapped) = self.docker_prepare(op, spec, inputs, &mut holds.dirs)?;
            mounts.push(mount);
            args = wrapped;
        }
        let meta = Meta {
            args,
            env,
            cwd: op.cwd.clone(),
            uid: user.uid,
            gid: user.gid,
            additional_gids: user.groups,
            hostname: String::new(),
            network: match op.network {
                NetworkMode::Isolated => Network::Isolated,
                NetworkMode::Host => Network::Host,
                NetworkMode::None => Network::None,
            },
            extra_hosts: op.extra_hosts.clone(),
            privileged: op.privileged || op.docker.is_some(),
        };
        // The runtime creates a file for each file mount whose target the image lacks;
        // those stubs must not end up in the layer (directories stay, as in Docker).
        let mut stubs: Vec<String> = op.mounts.iter().map(|m| m.target.clone()).collect();
        if op.network != NetworkMode::None || !op.extra_hosts.is_empty() {
            stubs.extend(["/etc/hosts".to_string(), "/etc/resolv.conf".to_string()]);
        }
        stubs.extend(own.iter().cloned());
        stubs.retain(|t| !exists_in(&active.lowers, t));
        let code = self
            .executor
            .run(&active.mounts(), &mounts, &meta, output)?;
        Ok((code, stubs, own))
    }
}

/// Where images keep their CA roots: Debian and Alpine, Fedora and RHEL, others.
const CA_PATHS: [&str; 3] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// The last lines of a step's output, for its error message.
#[derive(Default)]
struct Tail {
    buf: Vec<u8>,
}

impl Tail {
    const KEEP: usize = 8 << 10;

    fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
        if self.buf.len() > 2 * Self::KEEP {
            self.buf.drain(..self.buf.len() - Self::KEEP);
        }
    }

    fn text(&self) -> String {
        let s = String::from_utf8_lossy(&self.buf);
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
}

/// Who a step's process runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ExecUser {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
}

/// Resolve `user[:group]` for a process as BuildKit does (runc's `GetExecUser`):
///
/// - empty is root; `UID:GID` in numbers (or `root`) is taken as is, with no lookup;
/// - otherwise the user is found in /etc/passwd by name or uid (a uid it lacks runs
///   with gid 0), its primary group from there;
/// - `user:group` runs with that group only (by name or gid in /etc/group, or any
///   number); a bare `user` also gets the groups that list it in /etc/group.
pub(super) fn exec_user(lowers: &[PathBuf], user: &str) -> Result<ExecUser> {
    let id = |s: &str| {
        if s == "root" {
            Some(0)
        } else {
            s.parse::<u32>().ok()
        }
    };
    if user.is_empty() {
        return Ok(ExecUser {
            uid: 0,
            gid: 0,
            groups: Vec::new(),
        });
    }
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    if let (Some(uid), Some(gid)) = (id(u), g.and_then(id)) {
        return Ok(ExecUser {
            uid,
            gid,
            groups: Vec::new(),
        });
    }
    let entries = |name: &str| etc_entries(lowers, name);
    let passwd = entries("passwd");
    let numeric = u.parse::<u32>().ok();
    // By name first, then by uid, as runc does.
    let entry = passwd.iter().find(|e| e[0] == u).or_else(|| {
        passwd
            .iter()
            .find(|e| numeric.is_some() && number(e, 2) == numeric)
    });
    let (uid, mut gid, name) = match (entry, numeric) {
        (Some(e), _) => (
            number(e, 2).unwrap_or(0),
            number(e, 3).unwrap_or(0),
            Some(e[0].clone()),
        ),
        (None, Some(n)) => (n, 0, None),
        (None, None) => {
            return Err(BuildError::Invalid(format!(
                "user {u:?} is not in the image's /etc/passwd; add it (e.g. RUN adduser), \
                 or give a numeric uid"
            )));
        }
    };
    let group = entries("group");
    let mut groups = Vec::new();
    match g {
        Some(g) => {
            gid = match group
                .iter()
                .find(|e| e[0] == g || e.get(2).is_some_and(|x| x == g))
                .and_then(|e| number(e, 2))
            {
                Some(n) => n,
                None => g.parse().map_err(|_| {
                    BuildError::Invalid(format!(
                        "group {g:?} is not in the image's /etc/group; add it (e.g. RUN \
                         addgroup), or give a numeric gid"
                    ))
                })?,
            };
        }
        None => {
            if let Some(name) = name {
                for e in &group {
                    let member = e.get(3).is_some_and(|m| m.split(',').any(|m| m == name));
                    if let (true, Some(n)) = (member, number(e, 2)) {
                        groups.push(n);
                    }
                }
            }
        }
    }
    Ok(ExecUser { uid, gid, groups })
}

/// The entries of the image's `/etc/<name>`, split into their `:` fields: the topmost
/// layer with an entry at that path decides; a whiteout means the file was deleted.
fn etc_entries(lowers: &[PathBuf], name: &str) -> Vec<Vec<String>> {
    let text = lowers
        .iter()
        .map(|l| l.join("etc").join(name))
        .find(|p| fs::symlink_metadata(p).is_ok())
        .filter(|p| fs::symlink_metadata(p).is_ok_and(|m| m.is_file()))
        .and_then(|p| fs::read_to_string(p).ok())
        .unwrap_or_default();
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| l.split(':').map(str::to_string).collect())
        .collect()
}

/// Field `i` of an entry, as a number.
fn number(e: &[String], i: usize) -> Option<u32> {
    e.get(i).and_then(|f| f.parse::<u32>().ok())
}

/// The owner `--chown=user[:group]` gives in a file op (COPY, ADD, and the folders
/// WORKDIR makes for USER), resolved as BuildKit's file ops do (its `readUser`), which
/// differs from a RUN's user: a numeric user alone is also the group (`4321` is
/// 4321:4321), a name takes its uid and primary group from the image's /etc/passwd, a
/// group name its gid from /etc/group; an empty user is root. A name the image lacks
/// leaves root (user) or the user's group (group), with a warning, where BuildKit is
/// silent.
pub(super) fn chown_ids(lowers: &[PathBuf], spec: &str) -> (u32, u32) {
    let (u, g) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let by_name =
        |file: &str, name: &str| etc_entries(lowers, file).into_iter().find(|e| e[0] == name);
    let mut ids = (0, 0);
    if let Ok(n) = u.parse::<u32>() {
        ids = (n, n);
    } else if !u.is_empty() {
        match by_name("passwd", u) {
            Some(e) => ids = (number(&e, 2).unwrap_or(0), number(&e, 3).unwrap_or(0)),
            None => tracing::warn!(
                "--chown={spec}: user {u:?} is not in the image's /etc/passwd; owner is root, as in BuildKit"
            ),
        }
    }
    match g.filter(|g| !g.is_empty()).map(|g| (g, g.parse::<u32>())) {
        Some((_, Ok(n))) => ids.1 = n,
        Some((g, Err(_))) => match by_name("group", g).and_then(|e| number(&e, 2)) {
            Some(gid) => ids.1 = gid,
            None => tracing::warn!(
                "--chown={spec}: group {g:?} is not in the image's /etc/group; group is {}, as in BuildKit",
                ids.1
            ),
        },
        None => {}
    }
    ids
}

/// Whether `path` exists in the file system made of `lowers` (topmost first): the
/// topmost layer that has an entry there decides, and a whiteout means "deleted".
pub(super) fn exists_in(lowers: &[PathBuf], path: &str) -> bool {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let rel = path.trim_start_matches('/');
    for l in lowers {
        if let Ok(m) = fs::symlink_metadata(l.join(rel)) {
            return !(m.file_type().is_char_device() && m.rdev() == 0);
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chown_resolves_as_buildkit_file_ops() {
        let d = tempfile::tempdir().unwrap();
        let etc = d.path().join("etc");
        fs::create_dir(&etc).unwrap();
        fs::write(
            etc.join("passwd"),
            "root:x:0:0::/root:/bin/sh\napp:x:1500:1600::/:/bin/sh\nu1000:x:1000:100::/:/bin/sh\n",
        )
        .unwrap();
        fs::write(etc.join("group"), "root:x:0:\nother:x:1700:\n").unwrap();
        let lowers = [d.path().to_path_buf()];
        let ids = |s: &str| chown_ids(&lowers, s);
        assert_eq!(ids("4321"), (4321, 4321), "a numeric user is its group too");
        assert_eq!(ids("1000"), (1000, 1000), "even when passwd says otherwise");
        assert_eq!(ids("app"), (1500, 1600), "a name takes its primary group");
        assert_eq!(ids("app:other"), (1500, 1700));
        assert_eq!(ids("4321:other"), (4321, 1700));
        assert_eq!(ids("app:77"), (1500, 77));
        assert_eq!(ids(":other"), (0, 1700), "an empty user is root");
        assert_eq!(ids("nobody-here"), (0, 0), "unknown names leave root");
        assert_eq!(ids("1000:nogroup"), (1000, 1000));
        // A RUN's numeric user still takes its group from passwd.
        let run = exec_user(&lowers, "1000").unwrap();
        assert_eq!((run.uid, run.gid), (1000, 100));
    }
}
