//! `ADD <git repository>`: the system's `git` resolves the ref with `git ls-remote` on
//! every build (a full commit is taken as it is), and the checkout of that commit is
//! kept under `cache/git/<key>/`, so the key, and the steps after, move only when the
//! ref moves. git gets berth's proxy variables and, when steps get one, the CA bundle.
//! A git that hangs never holds the build: each git runs in a process group of its own
//! that is killed when the build is canceled or when git has written nothing for
//! [`STALL`] (fetches report progress, so a slow transfer is not a stall).

use std::fs;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use berth_oci::Digest;

use super::{Cancel, Output, Solved, Solver, io_err, unique};
use crate::error::{BuildError, Result};
use crate::ir::GitSource;

impl Solver {
    /// Resolve and check out a git source.
    pub(super) fn fetch_git(&self, src: &GitSource) -> Result<Solved> {
        let cancel = &self.opts.cancel;
        let fail = |what: String| {
            if cancel.is_canceled() {
                return BuildError::Canceled;
            }
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
        let out = self.run(self.git().args(["ls-remote", "--", &src.remote]))?;
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
        self.run(self.git().args(["init", "-q", &d]))?;
        self.run(
            self.git()
                .args(["-C", &d, "remote", "add", "origin", &src.remote]),
        )?;
        // A shallow fetch of the commit; servers that refuse a commit by id get a full
        // fetch.
        // (`--progress` keeps git talking while data comes, so it is not taken for a stall.)
        if self
            .run(self.git().args([
                "-C",
                &d,
                "fetch",
                "--progress",
                "--depth",
                "1",
                "origin",
                commit,
            ]))
            .is_err()
        {
            if self.opts.cancel.is_canceled() {
                return Err("canceled".into());
            }
            self.run(self.git().args([
                "-C",
                &d,
                "fetch",
                "--progress",
                "origin",
                "+refs/heads/*:refs/remotes/origin/*",
                "+refs/tags/*:refs/tags/*",
            ]))?;
        }
        self.run(
            self.git()
                .args(["-C", &d, "checkout", "-q", "--detach", commit]),
        )?;
        if src.keep_git_dir {
            return Ok(());
        }
        let git_dir = dir.join(".git");
        fs::remove_dir_all(&git_dir).map_err(|e| format!("remove {}: {e}", git_dir.display()))
    }
}

/// How long a git may write nothing before it is taken as hung and killed.
pub const STALL: Duration = Duration::from_secs(300);

impl Solver {
    /// Run `cmd` ([`run_git`] with this build's cancel).
    fn run(&self, cmd: &mut Command) -> std::result::Result<String, String> {
        run_git(cmd, &self.opts.cancel, STALL)
    }
}

/// Run the git `cmd`: its stdout, or an error with the end of its stderr. It runs in a
/// process group of its own (git starts ssh, `git-remote-http`, …), killed whole when
/// `cancel` fires or when nothing came on stdout or stderr for `stall`.
pub(super) fn run_git(
    cmd: &mut Command,
    cancel: &Cancel,
    stall: Duration,
) -> std::result::Result<String, String> {
    let args: Vec<_> = cmd
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot run git ({e}); install git (Debian: apt-get install git)"))?;
    let start = Instant::now();
    // Milliseconds after `start` of the last output.
    let last = Arc::new(AtomicU64::new(0));
    let reader = |mut r: Box<dyn Read + Send>| {
        let last = last.clone();
        std::thread::spawn(move || {
            let mut all = Vec::new();
            let mut buf = [0u8; 8192];
            while let Ok(n) = r.read(&mut buf) {
                if n == 0 {
                    break;
                }
                all.extend_from_slice(&buf[..n]);
                last.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
            }
            all
        })
    };
    let out = reader(Box::new(child.stdout.take().expect("piped")));
    let err = reader(Box::new(child.stderr.take().expect("piped")));
    let stop = |child: &mut std::process::Child| {
        if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
        let _ = child.wait();
    };
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(e) => return Err(format!("wait for git {}: {e}", args.join(" "))),
        }
        if cancel.is_canceled() {
            stop(&mut child);
            return Err("canceled".into());
        }
        let quiet = start
            .elapsed()
            .saturating_sub(Duration::from_millis(last.load(Ordering::Relaxed)));
        if quiet >= stall {
            stop(&mut child);
            return Err(format!(
                "git {} wrote nothing for {stall:?} and was stopped; check that the server answers",
                args.join(" "),
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    if !status.success() {
        return Err(format!(
            "git {} failed: {}",
            args.join(" "),
            last_lines(&String::from_utf8_lossy(&stderr))
        ));
    }
    Ok(String::from_utf8_lossy(&stdout).into_owned())
}

/// The last few lines of git's stderr, progress updates (`\r`) reduced to their last.
fn last_lines(stderr: &str) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .filter_map(|l| l.rsplit('\r').find(|p| !p.trim().is_empty()))
        .map(str::trim)
        .collect();
    lines[lines.len().saturating_sub(4)..].join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A git that hangs (a server that accepts and never answers) stops when the build
    /// is canceled, with the processes it started.
    #[test]
    fn a_hanging_git_stops_on_cancel() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("git://{}/repo", listener.local_addr().unwrap());
        let cancel = Cancel::default();
        let c = cancel.clone();
        let waiter = std::thread::spawn(move || {
            let mut cmd = Command::new("git");
            cmd.args(["ls-remote", "--", &url]);
            run_git(&mut cmd, &c, STALL)
        });
        // Cancel once git is connected and waiting for an answer.
        let (_conn, _) = listener.accept().unwrap();
        cancel.cancel();
        assert_eq!(waiter.join().unwrap(), Err("canceled".to_string()));
    }

    /// A git silent for longer than `stall` is stopped, saying so.
    #[test]
    fn a_silent_git_is_a_stall() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("git://{}/repo", listener.local_addr().unwrap());
        let accept = std::thread::spawn(move || listener.accept().map(|(c, _)| c));
        let mut cmd = Command::new("git");
        cmd.args(["ls-remote", "--", &url]);
        let got = run_git(&mut cmd, &Cancel::default(), Duration::from_millis(300));
        let err = got.unwrap_err();
        assert!(err.contains("wrote nothing for 300ms"), "{err}");
        drop(accept.join());
    }

    #[test]
    fn failures_keep_the_last_lines_of_progress() {
        assert_eq!(
            last_lines("Receiving objects: 1%\rReceiving objects: 100%\nfatal: x\n"),
            "Receiving objects: 100%; fatal: x"
        );
    }
}
