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
        let active = self.prepare(below)?;
        let mut holds = Holds::default();
        let result = self.exec_in(state, id, op, inputs, &active, &mut holds);
        drop(holds);
        match result {
            Ok(()) => self.commit(active, below),
            Err(e) => {
                let _ = self.snapshots.remove(active);
                Err(e)
            }
        }
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
        let (uid, gid) = lookup_user(&active.lowers, &op.user)?;
        let mut env = op.env.clone();
        env.extend(op.proxy_env.iter().cloned());
        let mut mounts = self.exec_mounts(op, inputs, (uid, gid), &mut env, holds)?;
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
        let meta = Meta {
            args: op.args.clone(),
            env,
            cwd: op.cwd.clone(),
            uid,
            gid,
            additional_gids: Vec::new(),
            hostname: String::new(),
            network: match op.network {
                NetworkMode::Isolated => Network::Isolated,
                NetworkMode::Host => Network::Host,
                NetworkMode::None => Network::None,
            },
        };
        // The runtime creates a file for each file mount whose target the image lacks;
        // those stubs must not end up in the layer (directories stay, as in Docker).
        let mut stubs: Vec<String> = op.mounts.iter().map(|m| m.target.clone()).collect();
        if op.network != NetworkMode::None {
            stubs.extend(["/etc/hosts".to_string(), "/etc/resolv.conf".to_string()]);
        }
        stubs.extend(own.iter().cloned());
        stubs.retain(|t| !exists_in(&active.lowers, t));
        let mut tail = Tail::default();
        let progress = &self.opts.progress;
        let code = self
            .executor
            .run(&active.mounts(), &mounts, &meta, &mut |stream, data| {
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
        Ok(())
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

/// Resolve `user[:group]` against the image's /etc/passwd and /etc/group (numeric ids
/// pass through; an empty user is root).
pub(super) fn lookup_user(lowers: &[PathBuf], user: &str) -> Result<(u32, u32)> {
    if user.is_empty() {
        return Ok((0, 0));
    }
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let read = |name: &str| etc_file(lowers, name);
    let field = |file: &str, name: &str, idx: usize| etc_field(lowers, file, name, idx);
    let (uid, primary) = match u.parse::<u32>() {
        // A numeric user takes the group of the passwd entry with that uid, or 0, as
        // runc and Docker do.
        Ok(n) => {
            let gid = read("passwd").and_then(|text| {
                text.lines().find_map(|l| {
                    let f: Vec<&str> = l.split(':').collect();
                    (f.get(2).and_then(|x| x.parse::<u32>().ok()) == Some(n))
                        .then(|| f.get(3)?.parse().ok())
                        .flatten()
                })
            });
            (n, gid.unwrap_or(0))
        }
        Err(_) => {
            let uid = field("passwd", u, 2).ok_or_else(|| {
                BuildError::Invalid(format!("user {u:?} is not in the image's /etc/passwd"))
            })?;
            (uid, field("passwd", u, 3).unwrap_or(0))
        }
    };
    let gid = match g {
        None => primary,
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => field("group", g, 2).ok_or_else(|| {
                BuildError::Invalid(format!("group {g:?} is not in the image's /etc/group"))
            })?,
        },
    };
    Ok((uid, gid))
}

/// The text of the image's `/etc/<name>`: the topmost layer with an entry there decides;
/// a whiteout (or anything but a file) means there is none.
fn etc_file(lowers: &[PathBuf], name: &str) -> Option<String> {
    let p = lowers
        .iter()
        .map(|l| l.join("etc").join(name))
        .find(|p| fs::symlink_metadata(p).is_ok())?;
    let m = fs::symlink_metadata(&p).ok()?;
    m.is_file().then(|| fs::read_to_string(&p).ok()).flatten()
}

/// Field `idx` (a number) of the entry `name` of the image's `/etc/<file>`.
fn etc_field(lowers: &[PathBuf], file: &str, name: &str, idx: usize) -> Option<u32> {
    etc_file(lowers, file)?.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.first() == Some(&name))
            .then(|| f.get(idx)?.parse().ok())
            .flatten()
    })
}

/// The owner `--chown=user[:group]` gives in a file op (COPY, ADD, and the folders
/// WORKDIR makes for USER), resolved as BuildKit's file ops do, which differs from a
/// RUN's user: a numeric user alone is also the group (`4321` is 4321:4321), a name
/// takes its uid and primary group from the image's /etc/passwd, a group name its gid
/// from /etc/group; an empty user is root. A name the image lacks leaves root (user)
/// or the user's group (group), with a warning, where BuildKit is silent.
pub(super) fn chown_ids(lowers: &[PathBuf], spec: &str) -> (u32, u32) {
    let (u, g) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let mut ids = (0, 0);
    if let Ok(n) = u.parse::<u32>() {
        ids = (n, n);
    } else if !u.is_empty() {
        match (
            etc_field(lowers, "passwd", u, 2),
            etc_field(lowers, "passwd", u, 3),
        ) {
            (Some(uid), gid) => ids = (uid, gid.unwrap_or(0)),
            (None, _) => tracing::warn!(
                "--chown={spec}: user {u:?} is not in the image's /etc/passwd; owner is root, as in BuildKit"
            ),
        }
    }
    match g.filter(|g| !g.is_empty()).map(|g| (g, g.parse::<u32>())) {
        Some((_, Ok(n))) => ids.1 = n,
        Some((g, Err(_))) => match etc_field(lowers, "group", g, 2) {
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
fn exists_in(lowers: &[PathBuf], path: &str) -> bool {
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
        assert_eq!(lookup_user(&lowers, "1000").unwrap(), (1000, 100));
    }
}
