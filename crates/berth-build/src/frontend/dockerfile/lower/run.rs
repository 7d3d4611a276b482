//! RUN: the command (shell or exec form, heredocs), the environment (ARGs, proxy
//! variables), the network, and the mounts.

use super::{DEFAULT_PATH, HEREDOC_DIR, Lowerer, PROXY_ARGS, StageState, src_err};
use crate::error::{BuildError, Result};
use crate::frontend::dockerfile::expand::expand;
use crate::frontend::dockerfile::instructions::{
    CacheSharing, CommandLine, MountType, NetworkMode, Run, RunMount, SecurityMode,
};
use crate::frontend::source::Pos;
use crate::ir::{self, ExecMount, ExecOp, MountSource, Sharing, State};

impl Lowerer<'_> {
    /// RUN on top of `st`, labelled `name`.
    pub(super) fn run(
        &mut self,
        st: &StageState,
        run: &Run,
        line: usize,
        name: &str,
    ) -> Result<State> {
        let privileged = run.security == Some(SecurityMode::Insecure);
        if privileged {
            self.entitled(
                ir::Entitlement::SecurityInsecure,
                line,
                "RUN --security=insecure",
            )?;
        }
        let (args, heredoc_script) = command(run, &st.config.config.shell);
        let (mut env, proxy_env) = self.run_env(st);
        if !env.iter().any(|e| e.starts_with("PATH=")) {
            env.insert(0, DEFAULT_PATH.to_string());
        }
        let mut extra = Vec::new();
        let mut mounts = Vec::new();
        if heredoc_script {
            mounts.push(ExecMount {
                target: HEREDOC_DIR.into(),
                source: MountSource::Tmpfs { size: None },
            });
        }
        for m in &run.mounts {
            let mut mount = self.run_mount(st, m, &mut extra, line)?;
            if let MountSource::Ssh { .. } = mount.source {
                // As BuildKit: the n-th agent socket defaults to
                // /run/buildkit/ssh_agent.<n>, and the first is SSH_AUTH_SOCK unless set.
                let n = mounts
                    .iter()
                    .filter(|m: &&ExecMount| matches!(m.source, MountSource::Ssh { .. }))
                    .count();
                if mount.target.is_empty() {
                    mount.target = format!("/run/buildkit/ssh_agent.{n}");
                }
                if n == 0 && !env.iter().any(|e| e.starts_with("SSH_AUTH_SOCK=")) {
                    env.push(format!("SSH_AUTH_SOCK={}", mount.target));
                }
            }
            mounts.push(mount);
        }
        let network = match run.network {
            Some(NetworkMode::None) => ir::NetworkMode::None,
            Some(NetworkMode::Host) => {
                self.entitled(ir::Entitlement::NetworkHost, line, "RUN --network=host")?;
                ir::NetworkMode::Host
            }
            Some(NetworkMode::Default) | None => ir::NetworkMode::Isolated,
        };
        let exec = ExecOp {
            args,
            env,
            cwd: st.cwd(),
            user: st.config.config.user.clone(),
            network,
            mounts,
            proxy_env,
            privileged,
            extra_hosts: self.opts.extra_hosts.clone(),
            docker: None,
            on_failure: Vec::new(),
            platform: (!st.platform.is_host()).then(|| Box::new(st.platform.clone())),
        };
        Ok(st
            .state
            .run(exec, extra, name.to_string())
            .with_ignore_cache(self.opts.no_cache))
    }

    /// The environment of a RUN in `st`: the variables in scope (ENV and ARG, in the
    /// order they were last set); and apart, the proxy variables set by ARG or given as
    /// build arguments (those win over berth's own), which reach the process but no
    /// cache key.
    fn run_env(&self, st: &StageState) -> (Vec<String>, Vec<String>) {
        let mut env = Vec::with_capacity(st.vars.len());
        let mut proxy_env: Vec<String> = self
            .opts
            .proxy_env
            .iter()
            .filter(|kv| {
                let k = kv.split('=').next().unwrap_or("");
                !self.opts.build_args.contains_key(k)
            })
            .cloned()
            .collect();
        for v in &st.vars {
            let kv = format!("{}={}", v.name, v.value);
            if v.arg && PROXY_ARGS.contains(&v.name.as_str()) {
                proxy_env.push(kv);
            } else {
                env.push(kv);
            }
        }
        for (k, v) in &self.opts.build_args {
            if PROXY_ARGS.contains(&k.as_str())
                && !proxy_env.iter().any(|p| p.starts_with(&format!("{k}=")))
            {
                proxy_env.push(format!("{k}={v}"));
            }
        }
        (env, proxy_env)
    }

    /// One `--mount` of a RUN in `st`; a bind mount's source state, or the state a
    /// cache starts from, is added to `extra` (the step's inputs after the first). Every
    /// option is expanded first, as BuildKit does.
    fn run_mount(
        &mut self,
        st: &StageState,
        m: &RunMount,
        extra: &mut Vec<State>,
        line: usize,
    ) -> Result<ExecMount> {
        let escape = self.df.directives.escape;
        let m = RunMount::parse(&m.raw, &mut |w| {
            expand(w, |k| st.lookup(k), escape).map_err(|e| e.to_string())
        })
        .map_err(|(message, hint)| {
            BuildError::Source(
                self.df
                    .source
                    .error(Pos { line, column: 1 }, message)
                    .with_hint(hint),
            )
        })?;
        let df = self.df;
        let err = move |msg: String| src_err(df, line, 1, &msg);
        let idx = st.idx;
        let platform = st.platform.clone();
        let context = self.context.clone();
        exec_mount(
            &m,
            &MountEnv {
                cwd: st.cwd(),
                context: &context,
                err: &err,
            },
            &mut |f| self.state_named(f, idx, &platform),
            extra,
        )
    }
}

/// Where an `--mount` of a RUN is lowered: the step's working directory, the build
/// context (a bind mount's default source) and how errors point at the file. The
/// Dockerfile and the Earthfile frontends share it.
pub(crate) struct MountEnv<'a> {
    /// The working directory of the step.
    pub cwd: String,
    /// The build context.
    pub context: &'a State,
    /// An error at the step.
    pub err: &'a dyn Fn(String) -> BuildError,
}

/// One parsed `--mount` → the exec mount; a bind mount's source state, or the state a
/// cache starts from (`from=`, found by `from`), is added to `extra` (the step's inputs
/// after the first).
pub(crate) fn exec_mount(
    m: &RunMount,
    env: &MountEnv<'_>,
    from: &mut dyn FnMut(&str) -> Result<State>,
    extra: &mut Vec<State>,
) -> Result<ExecMount> {
    // As BuildKit: bind, cache and tmpfs targets are relative to the working
    // directory (a missing one is the working directory itself), and never `/`.
    let dir_target = || -> Result<String> {
        let t = m.target.as_deref().unwrap_or_default();
        let target = if t.starts_with('/') {
            clean_abs(t)
        } else {
            clean_abs(&format!("{}/{t}", env.cwd))
        };
        if target == "/" {
            return Err((env.err)(format!(
                "--mount=type={}: invalid mount target {target:?}; mount somewhere below /",
                m.kind.as_str()
            )));
        }
        Ok(target)
    };
    let source_path = || {
        let s = m.source.as_deref().unwrap_or_default();
        clean_abs(&format!("/{s}"))
    };
    let mut target = m.target.clone();
    let source = match m.kind {
        MountType::Cache => {
            target = Some(dir_target()?);
            // As BuildKit: a cache starts as a copy of `source=` (default `/`) of
            // `from=`, or else as an empty directory, owned and moded as `uid=`,
            // `gid=`, `mode=` say.
            let seed = match &m.from {
                Some(f) => {
                    extra.push(from(f)?);
                    Some((extra.len(), source_path()))
                }
                None => None,
            };
            MountSource::Cache {
                // As BuildKit: the id defaults to the target as written, cleaned.
                id: m
                    .id
                    .clone()
                    .unwrap_or_else(|| clean_path(m.target.as_deref().unwrap_or_default())),
                sharing: match m.sharing {
                    Some(CacheSharing::Locked) => Sharing::Locked,
                    Some(CacheSharing::Private) => Sharing::Private,
                    _ => Sharing::Shared,
                },
                owner: (m.uid.is_some() || m.gid.is_some() || m.mode.is_some()).then(|| {
                    (
                        m.uid.unwrap_or(0),
                        m.gid.unwrap_or(0),
                        m.mode.unwrap_or(0o755),
                    )
                }),
                seed,
                readonly: m.readonly,
            }
        }
        MountType::Secret => {
            // As BuildKit: the id is id= or source=, else the target's file name;
            // the file goes to the target, else to /run/secrets/<id>, unless env=
            // asks for a variable and no target is given.
            let id = m
                .id
                .clone()
                .or(m.source.clone())
                .or_else(|| target.as_deref().map(|t| base_name(t).to_string()))
                .ok_or_else(|| (env.err)("--mount=type=secret needs an id or a target".into()))?;
            let file = m.env.is_none() || target.is_some();
            if file && target.is_none() {
                target = Some(format!("/run/secrets/{}", base_name(&id)));
            }
            MountSource::Secret {
                id,
                env: m.env.clone(),
                file,
                required: m.required,
                uid: m.uid.unwrap_or(0),
                gid: m.gid.unwrap_or(0),
                mode: m.mode.unwrap_or(0o400),
            }
        }
        MountType::Bind => {
            target = Some(dir_target()?);
            let from = match &m.from {
                Some(f) => from(f)?,
                None => env.context.clone(),
            };
            extra.push(from);
            MountSource::Input {
                input: extra.len(),
                path: source_path(),
                rw: !m.readonly,
            }
        }
        MountType::Tmpfs => {
            target = Some(dir_target()?);
            MountSource::Tmpfs { size: m.size }
        }
        MountType::Ssh => {
            if m.source.is_some() {
                return Err((env.err)(
                    "--mount=type=ssh takes no source=; name the agent with id=".into(),
                ));
            }
            MountSource::Ssh {
                id: m.id.clone().unwrap_or_else(|| "default".into()),
                required: m.required,
                uid: m.uid.unwrap_or(0),
                gid: m.gid.unwrap_or(0),
                mode: m.mode.unwrap_or(0o600),
            }
        }
    };
    // A secret only given as a variable; an agent socket at its default place.
    let target = target.unwrap_or_default();
    Ok(ExecMount { target, source })
}

/// `path` cleaned as Go's `path.Clean`: no empty, `.` or resolvable `..` components;
/// `.` for an empty path.
fn clean_path(path: &str) -> String {
    let abs = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." if parts.last().is_some_and(|p| *p != "..") => {
                parts.pop();
            }
            ".." if abs => {}
            c => parts.push(c),
        }
    }
    let joined = parts.join("/");
    match (abs, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".into(),
        (false, false) => joined,
    }
}

/// An absolute path, cleaned (`/a/./b/../c/` is `/a/c`).
pub(crate) fn clean_abs(path: &str) -> String {
    clean_path(&format!("/{path}"))
}

/// The last component of `path` (`path.Base` in Go).
pub(crate) fn base_name(path: &str) -> &str {
    let p = path.trim_end_matches('/');
    p.rsplit('/')
        .next()
        .filter(|b| !b.is_empty())
        .unwrap_or("/")
}

/// The process arguments of `run` under `shell` (`/bin/sh -c` if unset), and whether
/// its script is a heredoc with its own interpreter, which needs [`HEREDOC_DIR`].
fn command(run: &Run, shell: &Option<Vec<String>>) -> (Vec<String>, bool) {
    let cmd = match &run.command {
        CommandLine::Exec(list) => return (list.clone(), false),
        CommandLine::Shell(cmd) => cmd,
    };
    let mut heredoc_script = false;
    let mut script = cmd.clone();
    let only_heredoc =
        run.heredocs.len() == 1 && cmd.trim_start().starts_with("<<") && !cmd.trim().contains(' ');
    let body = &run
        .heredocs
        .first()
        .map(|h| h.content.clone())
        .unwrap_or_default();
    if only_heredoc && body.starts_with("#!") {
        // A script with its own interpreter: written to a tmpfs mounted for the step,
        // then run by that interpreter.
        heredoc_script = true;
        let interp = body.lines().next().unwrap_or("#!/bin/sh")[2..]
            .trim()
            .to_string();
        script = format!(
            "cat > {HEREDOC_DIR}/script <<'BERTH_HEREDOC_EOF'\n{body}{}BERTH_HEREDOC_EOF\nexec {interp} {HEREDOC_DIR}/script",
            if body.ends_with('\n') { "" } else { "\n" }
        );
    } else if only_heredoc {
        script = body.clone();
    } else {
        for h in &run.heredocs {
            script.push('\n');
            script.push_str(&h.content);
            if !h.content.ends_with('\n') {
                script.push('\n');
            }
            script.push_str(&h.name);
        }
    }
    let mut args = shell
        .clone()
        .unwrap_or_else(|| vec!["/bin/sh".into(), "-c".into()]);
    args.push(script);
    (args, heredoc_script)
}

#[cfg(test)]
mod tests {
    use crate::frontend::dockerfile::lower::{LowerOptions, lower};
    use crate::ir::{ExecOp, Op};
    use crate::{Dockerfile, image::ResolvedImage};

    /// The exec op of the last step of `text`, lowered with `opts`.
    fn last_exec(text: &str, opts: &LowerOptions) -> ExecOp {
        let df = Dockerfile::parse("Dockerfile", text).unwrap();
        let mut resolve = |r: &str, _: &crate::Platform| -> crate::Result<ResolvedImage> {
            panic!("nothing to resolve, asked {r}")
        };
        let lowered = lower(&df, opts, &mut resolve).unwrap();
        match &lowered.state.vertex().op {
            Op::Exec(e) => e.clone(),
            op => panic!("the last step is not a RUN: {op:?}"),
        }
    }

    /// Programs disagree on which of two `X=` entries counts (C's getenv and Go take the
    /// first, shells and Python the last), so a variable reaches a step once: with the
    /// value its last ARG gave it, as BuildKit's AddEnv does. An ARG without a value
    /// keeps the earlier one, for the step and for expansion.
    #[test]
    fn a_redeclared_arg_reaches_run_once_with_its_last_value() {
        let exec = last_exec(
            "FROM scratch\nARG X=1 Y=y\nARG X=2\nARG HTTP_PROXY=a\nARG HTTP_PROXY=b\nARG X\nENV SEEN=$X\nRUN echo $X\n",
            &LowerOptions::default(),
        );
        assert_eq!(
            exec.env,
            [
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "Y=y",
                "X=2",
                "SEEN=2"
            ]
        );
        assert_eq!(exec.proxy_env, ["HTTP_PROXY=b"]);
    }
}
