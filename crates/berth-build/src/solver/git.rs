//! `ADD <git repository>`: the system's `git` resolves the ref with `git ls-remote` on
//! every build (a full commit is taken as it is), and the checkout of that commit is
//! kept under `cache/git/<key>/`, so the key, and the steps after, move only when the
//! ref moves. git gets berth's proxy variables and, when steps get one, the CA bundle.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

use berth_oci::Digest;

use super::{Output, Solved, Solver, io_err, unique};
use crate::error::{BuildError, Result};
use crate::ir::GitSource;

impl Solver {
    /// Resolve and check out a git source.
    pub(super) fn fetch_git(&self, src: &GitSource) -> Result<Solved> {
        let fail = |what: String| {
            BuildError::Remote(format!("{}: ADD {}: {what}", src.origin, src.remote))
        };
        let commit = self.resolve_git(src).map_err(fail)?;
        let key = Digest::sha256(
            &serde_json::to_vec(&serde_json::json!({
                "git": commit,
                "subdir": src.subdir,
                "keep_git_dir": src.keep_git_dir,
            }))
            .expect("json"),
        );
        let base = self.root.join("cache/git");
        fs::create_dir_all(&base).map_err(|e| io_err("create directory", &base, e))?;
        let dir = base.join(key.hex());
        if !dir.is_dir() {
            let tmp = base.join(unique("clone"));
            let made = self.checkout(src, &commit, &tmp);
            if let Err(e) = made {
                let _ = fs::remove_dir_all(&tmp);
                return Err(fail(e));
            }
            if fs::rename(&tmp, &dir).is_err() {
                // Another build made it first: theirs is the same.
                let _ = fs::remove_dir_all(&tmp);
            }
        }
        let path = match &src.subdir {
            Some(sub) => {
                let p = dir.join(sub);
                if !p.is_dir() {
                    return Err(fail(format!(
                        "the folder {sub:?} is not in commit {commit}; check the path after ':'"
                    )));
                }
                p
            }
            None => dir,
        };
        Ok(Solved {
            key,
            output: Output::Dir {
                path,
                exclude: Vec::new(),
            },
        })
    }

    /// `git` with berth's proxies and CA bundle, never asking on a terminal.
    fn git(&self) -> Command {
        let mut c = Command::new("git");
        c.env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .stdin(Stdio::null());
        if let Some(client) = &self.opts.client {
            for kv in client.network().proxies.step_env() {
                if let Some((k, v)) = kv.split_once('=') {
                    c.env(k, v);
                }
            }
        }
        if let Some(ca) = &self.opts.ca_bundle {
            c.env("GIT_SSL_CAINFO", ca);
        }
        c
    }

    /// The commit `src`'s ref names now.
    fn resolve_git(&self, src: &GitSource) -> std::result::Result<String, String> {
        if let Some(r) = &src.reference
            && r.len() == 40
            && r.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Ok(r.to_ascii_lowercase());
        }
        let out = run(self.git().args(["ls-remote", "--", &src.remote]))?;
        let refs: Vec<(&str, &str)> = out.lines().filter_map(|l| l.split_once('\t')).collect();
        let want = src.reference.as_deref().unwrap_or("HEAD");
        // A tag's peeled commit first (an annotated tag names a tag object).
        let names = [
            format!("refs/tags/{want}^{{}}"),
            format!("refs/tags/{want}"),
            format!("refs/heads/{want}"),
            format!("{want}^{{}}"),
            want.to_string(),
        ];
        names
            .iter()
            .find_map(|n| refs.iter().find(|(_, name)| name == n))
            .map(|(sha, _)| sha.to_string())
            .ok_or_else(|| {
                format!(
                    "no branch or tag {want:?} in the repository; give a branch, a tag or a full commit after '#'"
                )
            })
    }

    /// Check `commit` of `src` out into `dir` (made here).
    fn checkout(
        &self,
        src: &GitSource,
        commit: &str,
        dir: &Path,
    ) -> std::result::Result<(), String> {
        let d = dir.to_string_lossy().into_owned();
        run(self.git().args(["init", "-q", &d]))?;
        run(self
            .git()
            .args(["-C", &d, "remote", "add", "origin", &src.remote]))?;
        // A shallow fetch of the commit; servers that refuse a commit by id get a full
        // fetch.
        if run(self
            .git()
            .args(["-C", &d, "fetch", "-q", "--depth", "1", "origin", commit]))
        .is_err()
        {
            run(self.git().args([
                "-C",
                &d,
                "fetch",
                "-q",
                "origin",
                "+refs/heads/*:refs/remotes/origin/*",
                "+refs/tags/*:refs/tags/*",
            ]))?;
        }
        run(self
            .git()
            .args(["-C", &d, "checkout", "-q", "--detach", commit]))?;
        if src.keep_git_dir {
            return Ok(());
        }
        let git_dir = dir.join(".git");
        fs::remove_dir_all(&git_dir).map_err(|e| format!("remove {}: {e}", git_dir.display()))
    }
}

/// Run `cmd`; its stdout, or an error with its stderr.
fn run(cmd: &mut Command) -> std::result::Result<String, String> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run git ({e}); install git (Debian: apt-get install git)"))?;
    if !out.status.success() {
        let args: Vec<_> = cmd.get_args().map(|a| a.to_string_lossy()).collect();
        return Err(format!(
            "git {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
