//! Typed instructions → build graph, with ARG and ENV scoping (BuildKit's
//! `dockerfile2llb`).
//!
//! Each stage becomes a chain of [`State`]s; the image config (ENV, WORKDIR, USER, CMD…)
//! is tracked beside it, as BuildKit does, because it is metadata, not file-system
//! work. Only the stages the target needs are lowered, and stages that do not depend on
//! each other become independent branches of the graph, which the solver runs in
//! parallel.
//!
//! Build arguments reach RUN steps as environment variables and so are part of their
//! cache key — except the predefined proxy variables (`HTTP_PROXY`, `NO_PROXY`, …),
//! which go to the process but never into a key or the image.

use std::collections::{BTreeMap, HashMap};

use crate::error::{BuildError, Result};
use crate::frontend::dockerfile::expand::{ExpandError, MAX_WORD, expand, push_within};
use crate::frontend::dockerfile::instructions::{
    CommandLine, CopySource, Dockerfile, Healthcheck, InstructionKind, MountType, NetworkMode,
    RunMount, SecurityMode, Stage,
};
use crate::frontend::source::Pos;
use crate::image::{ContainerConfig, History, ImageConfig, ResolvedImage, host_platform};
use crate::ir::{
    self, ExecMount, ExecOp, FileAction, FileOp, ImageSource, LocalSource, MountSource, Sharing,
    State,
};
use crate::solver::Cancel;

/// Where a `RUN <<EOF` script with a `#!` line is written for its interpreter: a tmpfs
/// mounted for that step only.
pub const HEREDOC_DIR: &str = "/run/berth-heredoc";

/// Proxy variables: given to RUN, never in a cache key or the image.
pub const PROXY_ARGS: [&str; 10] = [
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "FTP_PROXY",
    "ftp_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
];

/// What lowering needs besides the Dockerfile.
#[derive(Debug, Clone, Default)]
pub struct LowerOptions {
    /// `--build-arg` values.
    pub build_args: BTreeMap<String, String>,
    /// `--target` stage.
    pub target: Option<String>,
    /// `.dockerignore` patterns of the context.
    pub dockerignore: Vec<String>,
    /// Proxy variables from berth's configuration or environment.
    pub proxy_env: Vec<String>,
    /// Run every step.
    pub no_cache: bool,
    /// `created` timestamps (RFC 3339); `None` leaves them out.
    pub created: Option<String>,
    /// Entitlements granted (`--allow`).
    pub allow: Vec<ir::Entitlement>,
    /// Stops lowering between instructions with [`BuildError::Canceled`].
    pub cancel: Cancel,
}

/// The lowered target.
#[derive(Debug, Clone)]
pub struct Lowered {
    /// The target's final state.
    pub state: State,
    /// Its image config (history entries for every instruction; layers are filled in by
    /// the exporter).
    pub config: ImageConfig,
    /// For each history entry added by this build, the state it made (`None` for
    /// metadata-only instructions), so the caller can mark steps that made no layer.
    pub steps: Vec<Option<State>>,
    /// Number of history entries inherited from the base image.
    pub base_history: usize,
}

struct StageOut {
    state: State,
    config: ImageConfig,
    steps: Vec<Option<State>>,
    base_history: usize,
}

struct Lowerer<'a> {
    df: &'a Dockerfile,
    opts: &'a LowerOptions,
    resolve: &'a mut dyn FnMut(&str) -> Result<ResolvedImage>,
    meta: HashMap<String, Option<String>>,
    done: HashMap<usize, StageOut>,
    context: State,
    images: HashMap<String, (State, ImageConfig)>,
}

/// Lower `df` for the target stage.
pub fn lower(
    df: &Dockerfile,
    opts: &LowerOptions,
    resolve: &mut dyn FnMut(&str) -> Result<ResolvedImage>,
) -> Result<Lowered> {
    let escape = df.directives.escape;
    // BuildKit's automatic platform ARGs: global, and visible in a stage once declared.
    let (os, arch) = host_platform();
    let mut meta: HashMap<String, Option<String>> = [
        ("TARGETPLATFORM", format!("{os}/{arch}")),
        ("TARGETOS", os.to_string()),
        ("TARGETARCH", arch.to_string()),
        ("TARGETVARIANT", String::new()),
        ("BUILDPLATFORM", format!("{os}/{arch}")),
        ("BUILDOS", os.to_string()),
        ("BUILDARCH", arch.to_string()),
        ("BUILDVARIANT", String::new()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), Some(v)))
    .collect();
    for m in &df.meta_args {
        if opts.cancel.is_canceled() {
            return Err(BuildError::Canceled);
        }
        let value = match opts.build_args.get(&m.arg.name) {
            Some(v) => Some(v.clone()),
            None => match &m.arg.default {
                Some(d) => Some(
                    expand(d, |k| meta.get(k).cloned().flatten(), escape)
                        .map_err(|e| src_err(df, m.lines.start, 1, &e.to_string()))?,
                ),
                None => None,
            },
        };
        meta.insert(m.arg.name.clone(), value);
    }
    let target = match &opts.target {
        None => df
            .stages
            .len()
            .checked_sub(1)
            .ok_or_else(|| BuildError::Invalid("the Dockerfile has no FROM".into()))?,
        Some(t) => df
            .stages
            .iter()
            .position(|s| s.name.as_deref().is_some_and(|n| n.eq_ignore_ascii_case(t)))
            .ok_or_else(|| {
                let names: Vec<&str> = df.stages.iter().filter_map(|s| s.name.as_deref()).collect();
                BuildError::Invalid(format!(
                    "target stage {t:?} is not in {}; its named stages are: {}",
                    df.source.name(),
                    if names.is_empty() {
                        "(none)".to_string()
                    } else {
                        names.join(", ")
                    }
                ))
            })?,
    };
    let context = State::local(LocalSource {
        name: "context".into(),
        exclude: opts.dockerignore.clone(),
    });
    let mut l = Lowerer {
        df,
        opts,
        resolve,
        meta,
        done: HashMap::new(),
        context,
        images: HashMap::new(),
    };
    l.stage(target)?;
    let out = l.done.remove(&target).expect("lowered");
    Ok(Lowered {
        state: out.state,
        config: out.config,
        steps: out.steps,
        base_history: out.base_history,
    })
}

impl Lowerer<'_> {
    /// `RUN --security=insecure` at `line`: BuildKit runs it privileged once the build is
    /// granted `security.insecure`; berth has no privileged steps, and running it in the
    /// sandbox instead would fail later with a confusing EPERM, so it stops here.
    fn insecure_refused(&self, line: usize) -> BuildError {
        BuildError::Source(
            self.df
                .source
                .error(
                    Pos { line, column: 1 },
                    "RUN --security=insecure needs the entitlement security.insecure, which berth does not offer: its steps always run in the sandbox".to_string(),
                )
                .with_hint(
                    "remove --security=insecure if the step does not need privileges (devices, mounts, all capabilities)",
                ),
        )
    }

    /// Refuse `what` at `line` unless the build was granted `e`.
    fn entitled(&self, e: ir::Entitlement, line: usize, what: &str) -> Result<()> {
        if self.opts.allow.contains(&e) {
            return Ok(());
        }
        let name = e.name();
        Err(BuildError::Source(
            self.df
                .source
                .error(
                    Pos { line, column: 1 },
                    format!("{what} needs the entitlement {name}, which this build was not granted"),
                )
                .with_hint(format!(
                    "grant it with `berth build --allow {name}`, or with `[build] allow = [\"{name}\"]` in berth's config.toml"
                )),
        ))
    }
}

fn src_err(df: &Dockerfile, line: usize, column: usize, msg: &str) -> BuildError {
    BuildError::Source(df.source.error(Pos { line, column }, msg.to_string()))
}

/// What COPY and ADD share.
struct CopySpec<'a> {
    sources: &'a [CopySource],
    from: Option<&'a str>,
    dest: &'a str,
    chown: Option<&'a str>,
    chmod: Option<&'a str>,
    exclude: &'a [String],
    extract: bool,
}

/// Variables visible to an instruction: ENV of the image, then the stage's ARGs.
struct Scope {
    args: Vec<(String, Option<String>)>,
}

impl Scope {
    fn lookup(&self, config: &ContainerConfig, key: &str) -> Option<String> {
        // ENV wins over ARG of the same name, as in Docker.
        if let Some(v) = config.env_get(key) {
            return Some(v.to_string());
        }
        self.args
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| v.clone())
    }
}

impl Lowerer<'_> {
    fn label(&self, idx: usize) -> String {
        self.df.stages[idx]
            .name
            .clone()
            .unwrap_or_else(|| format!("stage-{idx}"))
    }

    fn image(&mut self, reference: &str) -> Result<(State, ImageConfig)> {
        if let Some(x) = self.images.get(reference) {
            return Ok(x.clone());
        }
        let r = (self.resolve)(reference)?;
        let st = State::image(ImageSource {
            reference: reference.to_string(),
            manifest: r.manifest.clone(),
        });
        self.images
            .insert(reference.to_string(), (st.clone(), r.config.clone()));
        Ok((st, r.config))
    }

    /// A stage by name or index (for `--from`), lowering it if needed.
    fn stage_ref(&mut self, name: &str, before: usize) -> Result<Option<usize>> {
        let idx = self.df.stages[..before]
            .iter()
            .position(|s| {
                s.name
                    .as_deref()
                    .is_some_and(|n| n.eq_ignore_ascii_case(name))
            })
            .or_else(|| name.parse::<usize>().ok().filter(|&i| i < before));
        if let Some(i) = idx {
            self.stage(i)?;
        }
        Ok(idx)
    }

    /// The state named by `--from` (a stage or an image).
    fn state_named(&mut self, name: &str, before: usize) -> Result<State> {
        match self.stage_ref(name, before)? {
            Some(i) => Ok(self.done[&i].state.clone()),
            None => Ok(self.image(name)?.0),
        }
    }

    fn stage(&mut self, idx: usize) -> Result<()> {
        if self.done.contains_key(&idx) {
            return Ok(());
        }
        let df = self.df;
        let stage: &Stage = &df.stages[idx];
        let escape = df.directives.escape;
        let meta = self.meta.clone();
        let from = expand(
            &stage.from.image,
            |k| meta.get(k).cloned().flatten(),
            escape,
        )
        .map_err(|e| src_err(df, stage.lines.start, 1, &e.to_string()))?;
        if let Some(p) = &stage.from.platform {
            let p = expand(p, |k| meta.get(k).cloned().flatten(), escape).unwrap_or_default();
            let (os, arch) = host_platform();
            if !p.is_empty() && p != format!("{os}/{arch}") && !p.contains("BUILDPLATFORM") {
                return Err(src_err(
                    df,
                    stage.lines.start,
                    1,
                    &format!("--platform={p}: berth builds for the host platform {os}/{arch} only"),
                ));
            }
        }
        let (mut state, mut config) = if from.eq_ignore_ascii_case("scratch") {
            let (os, arch) = host_platform();
            (
                State::scratch(),
                ImageConfig {
                    architecture: arch.into(),
                    os: os.into(),
                    ..Default::default()
                },
            )
        } else if let Some(i) = self.stage_ref(&from, idx)? {
            let o = &self.done[&i];
            (o.state.clone(), o.config.clone())
        } else {
            self.image(&from).map_err(|e| match e {
                BuildError::Image(m) => src_err(df, stage.lines.start, 1, &m),
                e => e,
            })?
        };
        config.created = self.opts.created.clone();
        // The base's ONBUILD triggers run first, as if written right after FROM, and are
        // not passed on to this image (Docker's rule). Errors in them point at FROM.
        let mut instructions = Vec::new();
        if !config.config.on_build.is_empty() {
            let text = format!("FROM scratch\n{}\n", config.config.on_build.join("\n"));
            let triggers = Dockerfile::parse("ONBUILD", &text).map_err(|e| {
                src_err(
                    df,
                    stage.lines.start,
                    1,
                    &format!("{from}'s ONBUILD triggers: {e}"),
                )
            })?;
            for mut t in triggers.stages.into_iter().flat_map(|s| s.instructions) {
                t.lines = stage.lines;
                instructions.push(t);
            }
            config.config.on_build.clear();
        }
        instructions.extend(stage.instructions.iter().cloned());
        let base_history = config.history.len();
        let mut steps: Vec<Option<State>> = Vec::new();
        let mut scope = Scope { args: Vec::new() };
        let n = instructions.len();
        let label = self.label(idx);
        let mut cmd_set_here = false;
        for (i, ins) in instructions.iter().enumerate() {
            if self.opts.cancel.is_canceled() {
                return Err(BuildError::Canceled);
            }
            // Numbered as BuildKit does: FROM is step 1 of the stage.
            let name = format!(
                "[{label} {}/{}] {}",
                i + 2,
                n + 1,
                ins.original.lines().next().unwrap_or("")
            );
            let line = ins.lines.start;
            let cfg_snapshot = config.config.clone();
            let ex = |w: &str, scope: &Scope| -> Result<String> {
                expand(w, |k| scope.lookup(&cfg_snapshot, k), escape)
                    .map_err(|e| src_err(df, line, 1, &e.to_string()))
            };
            let mut made: Option<State> = None;
            match &ins.kind {
                InstructionKind::Arg { args } => {
                    for a in args {
                        let value = match self.opts.build_args.get(&a.name) {
                            Some(v) => Some(v.clone()),
                            None => match &a.default {
                                Some(d) => Some(ex(d, &scope)?),
                                None => self.meta.get(&a.name).cloned().flatten(),
                            },
                        };
                        scope.args.push((a.name.clone(), value));
                    }
                }
                InstructionKind::Env { vars } => {
                    // Every value of one ENV sees the variables as they were before it
                    // (`ENV A=two B=$A` gives B the old A), as Docker does.
                    for kv in vars {
                        let v = ex(&kv.value, &scope)?;
                        let k = ex(&kv.key, &scope)?;
                        config.config.env_set(&k, &v);
                    }
                }
                InstructionKind::Label { labels } => {
                    for kv in labels {
                        config
                            .config
                            .labels
                            .insert(ex(&kv.key, &scope)?, ex(&kv.value, &scope)?);
                    }
                }
                InstructionKind::Run(run) => {
                    if run.security == Some(SecurityMode::Insecure) {
                        return Err(self.insecure_refused(line));
                    }
                    let shell = config
                        .config
                        .shell
                        .clone()
                        .unwrap_or_else(|| vec!["/bin/sh".into(), "-c".into()]);
                    let mut heredoc_script = false;
                    let args = match &run.command {
                        CommandLine::Exec(list) => list.clone(),
                        CommandLine::Shell(cmd) => {
                            let mut script = cmd.clone();
                            let only_heredoc = run.heredocs.len() == 1
                                && cmd.trim_start().starts_with("<<")
                                && !cmd.trim().contains(' ');
                            let body = &run
                                .heredocs
                                .first()
                                .map(|h| h.content.clone())
                                .unwrap_or_default();
                            if only_heredoc && body.starts_with("#!") {
                                // A script with its own interpreter: written to a tmpfs
                                // mounted for the step, then run by that interpreter.
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
                            let mut a = shell.clone();
                            a.push(script);
                            a
                        }
                    };
                    let mut env = config.config.env.clone();
                    // Proxy variables given as build arguments win over the host's.
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
                    for (k, v) in &scope.args {
                        let Some(v) = v else { continue };
                        if config.config.env_get(k).is_some() {
                            continue;
                        }
                        if PROXY_ARGS.contains(&k.as_str()) {
                            proxy_env.push(format!("{k}={v}"));
                        } else {
                            env.push(format!("{k}={v}"));
                        }
                    }
                    for (k, v) in &self.opts.build_args {
                        if PROXY_ARGS.contains(&k.as_str())
                            && !proxy_env.iter().any(|p| p.starts_with(&format!("{k}=")))
                        {
                            proxy_env.push(format!("{k}={v}"));
                        }
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
                        mounts.push(self.run_mount(
                            m,
                            idx,
                            &mut extra,
                            line,
                            &scope,
                            &config.config,
                        )?);
                    }
                    let exec = ExecOp {
                        args,
                        env: if env.iter().any(|e| e.starts_with("PATH=")) {
                            env
                        } else {
                            let mut e = vec![
                                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
                                    .to_string(),
                            ];
                            e.extend(env);
                            e
                        },
                        cwd: if config.config.working_dir.is_empty() {
                            "/".into()
                        } else {
                            config.config.working_dir.clone()
                        },
                        user: config.config.user.clone(),
                        network: match run.network {
                            Some(NetworkMode::None) => ir::NetworkMode::None,
                            Some(NetworkMode::Host) => {
                                self.entitled(
                                    ir::Entitlement::NetworkHost,
                                    line,
                                    "RUN --network=host",
                                )?;
                                ir::NetworkMode::Host
                            }
                            Some(NetworkMode::Default) | None => ir::NetworkMode::Isolated,
                        },
                        mounts,
                        proxy_env,
                    };
                    state = state
                        .run(exec, extra, name.clone())
                        .with_ignore_cache(self.opts.no_cache);
                    made = Some(state.clone());
                }
                InstructionKind::Copy(c) => {
                    if c.parents {
                        return Err(src_err(df, line, 1, "COPY --parents is not supported yet"));
                    }
                    let spec = CopySpec {
                        sources: &c.sources,
                        from: c.from.as_deref(),
                        dest: &c.dest,
                        chown: c.chown.as_deref(),
                        chmod: c.chmod.as_deref(),
                        exclude: &c.exclude,
                        extract: false,
                    };
                    state =
                        self.copy_step(&state, spec, idx, &scope, &config.config, line, &name)?;
                    made = Some(state.clone());
                }
                InstructionKind::Add(a) => {
                    if let Some(url) = a.sources.iter().find_map(|s| match s {
                        CopySource::Path(p) if p.contains("://") || p.starts_with("git@") => {
                            Some(p.clone())
                        }
                        _ => None,
                    }) {
                        return Err(src_err(
                            df,
                            line,
                            1,
                            &format!(
                                "ADD {url}: remote sources are not supported yet; download in a RUN step instead"
                            ),
                        ));
                    }
                    let spec = CopySpec {
                        sources: &a.sources,
                        from: None,
                        dest: &a.dest,
                        chown: a.chown.as_deref(),
                        chmod: a.chmod.as_deref(),
                        exclude: &a.exclude,
                        extract: a.unpack.unwrap_or(true),
                    };
                    state =
                        self.copy_step(&state, spec, idx, &scope, &config.config, line, &name)?;
                    made = Some(state.clone());
                }
                InstructionKind::Workdir { path } => {
                    let p = ex(path, &scope)?;
                    let abs = if p.starts_with('/') {
                        p
                    } else {
                        let base = if config.config.working_dir.is_empty() {
                            "/"
                        } else {
                            config.config.working_dir.as_str()
                        };
                        format!("{}/{p}", base.trim_end_matches('/'))
                    };
                    config.config.working_dir = abs.clone();
                    let op = FileOp {
                        // New directories belong to the current USER, as in Docker.
                        actions: vec![FileAction::Mkdir {
                            path: abs,
                            chown: (!config.config.user.is_empty())
                                .then(|| config.config.user.clone()),
                        }],
                        cwd: "/".into(),
                    };
                    state = state
                        .file(op, vec![], name.clone())
                        .with_ignore_cache(self.opts.no_cache);
                    made = Some(state.clone());
                }
                InstructionKind::User { user } => config.config.user = ex(user, &scope)?,
                InstructionKind::Cmd { command } => {
                    config.config.cmd = Some(command_list(command, &config.config));
                    cmd_set_here = true;
                }
                InstructionKind::Entrypoint { command } => {
                    config.config.entrypoint = Some(command_list(command, &config.config));
                    if !cmd_set_here {
                        config.config.cmd = None;
                    }
                }
                InstructionKind::Shell { shell } => config.config.shell = Some(shell.clone()),
                InstructionKind::Expose { ports } => {
                    for p in ports {
                        let p = ex(p, &scope)?;
                        let p = if p.contains('/') {
                            p
                        } else {
                            format!("{p}/tcp")
                        };
                        config.config.exposed_ports.insert(p, serde_json::json!({}));
                    }
                }
                InstructionKind::Volume { paths } => {
                    for p in paths {
                        config
                            .config
                            .volumes
                            .insert(ex(p, &scope)?, serde_json::json!({}));
                    }
                }
                InstructionKind::StopSignal { signal } => {
                    config.config.stop_signal = ex(signal, &scope)?
                }
                InstructionKind::Healthcheck(h) => {
                    config.config.healthcheck = Some(match h {
                        Healthcheck::Disable => serde_json::json!({"Test": ["NONE"]}),
                        Healthcheck::Cmd(c) => {
                            let test = match &c.command {
                                CommandLine::Exec(l) => std::iter::once("CMD".to_string())
                                    .chain(l.iter().cloned())
                                    .collect::<Vec<_>>(),
                                CommandLine::Shell(s) => vec!["CMD-SHELL".to_string(), s.clone()],
                            };
                            let mut v = serde_json::json!({"Test": test});
                            let ns =
                                |d: &Option<std::time::Duration>| d.map(|d| d.as_nanos() as u64);
                            for (k, d) in [
                                ("Interval", ns(&c.interval)),
                                ("Timeout", ns(&c.timeout)),
                                ("StartPeriod", ns(&c.start_period)),
                                ("StartInterval", ns(&c.start_interval)),
                            ] {
                                if let Some(d) = d {
                                    v[k] = serde_json::json!(d);
                                }
                            }
                            if let Some(r) = c.retries {
                                v["Retries"] = serde_json::json!(r);
                            }
                            v
                        }
                    });
                }
                InstructionKind::OnBuild { trigger } => {
                    config.config.on_build.push(trigger.original.clone())
                }
                InstructionKind::Maintainer { .. } => {}
            }
            if !matches!(ins.kind, InstructionKind::Arg { .. }) || made.is_some() {
                config.history.push(History {
                    created: self.opts.created.clone(),
                    created_by: history_text(&ins.original, ins.keyword()),
                    empty_layer: made.is_none(),
                    comment: "berth".into(),
                });
                steps.push(made);
            }
        }
        self.done.insert(
            idx,
            StageOut {
                state,
                config,
                steps,
                base_history,
            },
        );
        Ok(())
    }

    /// COPY and ADD: resolve the sources, expand the flags, add the file op.
    #[allow(clippy::too_many_arguments)]
    fn copy_step(
        &mut self,
        state: &State,
        spec: CopySpec<'_>,
        idx: usize,
        scope: &Scope,
        config: &ContainerConfig,
        line: usize,
        name: &str,
    ) -> Result<State> {
        let df = self.df;
        let escape = df.directives.escape;
        let ex = |w: &str| {
            expand(w, |k| scope.lookup(config, k), escape)
                .map_err(|e| src_err(df, line, 1, &e.to_string()))
        };
        let (src_state, sources, writes) =
            self.copy_sources(spec.sources, spec.from, idx, scope, config, line)?;
        let dest = ex(spec.dest)?;
        let chown = spec.chown.map(ex).transpose()?;
        let chmod = parse_chmod(spec.chmod, df, line)?;
        let op = self.copy_op(
            &dest,
            sources,
            writes,
            chown,
            chmod,
            spec.extract,
            spec.exclude.to_vec(),
            config,
            src_state.is_some(),
        );
        Ok(state
            .file(op, src_state.into_iter().collect(), name.to_string())
            .with_ignore_cache(self.opts.no_cache))
    }

    #[allow(clippy::too_many_arguments)]
    fn copy_op(
        &self,
        dest: &str,
        sources: Vec<String>,
        writes: Vec<(String, Vec<u8>)>,
        chown: Option<String>,
        chmod: Option<u32>,
        extract: bool,
        exclude: Vec<String>,
        config: &ContainerConfig,
        _from_stage: bool,
    ) -> FileOp {
        let mut actions = Vec::new();
        let many = sources.len() + writes.len() > 1;
        for (name, data) in writes {
            let path = if dest.ends_with('/') || many {
                format!("{}/{name}", dest.trim_end_matches('/'))
            } else {
                dest.to_string()
            };
            actions.push(FileAction::Write {
                path,
                data,
                mode: chmod.unwrap_or(0o644),
                chown: chown.clone(),
            });
        }
        if !sources.is_empty() {
            actions.push(FileAction::Copy {
                from: 1,
                sources,
                dest: dest.to_string(),
                chown,
                chmod,
                extract_archives: extract,
                exclude,
            });
        }
        FileOp {
            actions,
            cwd: if config.working_dir.is_empty() {
                "/".into()
            } else {
                config.working_dir.clone()
            },
        }
    }

    /// Sources of COPY/ADD: the state they come from (the context unless `--from`),
    /// the expanded paths, and heredocs to write.
    #[allow(clippy::type_complexity)]
    fn copy_sources(
        &mut self,
        sources: &[CopySource],
        from: Option<&str>,
        idx: usize,
        scope: &Scope,
        config: &ContainerConfig,
        line: usize,
    ) -> Result<(Option<State>, Vec<String>, Vec<(String, Vec<u8>)>)> {
        let escape = self.df.directives.escape;
        let ex = |w: &str| {
            expand(w, |k| scope.lookup(config, k), escape)
                .map_err(|e| src_err(self.df, line, 1, &e.to_string()))
        };
        let mut paths = Vec::new();
        let mut writes = Vec::new();
        for s in sources {
            match s {
                CopySource::Path(p) => paths.push(ex(p)?),
                CopySource::Heredoc(h) => {
                    // Only `$VAR`/`${VAR}` are replaced in a heredoc's body: its quotes
                    // and backslashes are file content (BuildKit's SkipProcessQuotes).
                    let content = if h.expand {
                        expand_vars(&h.content, |k| scope.lookup(config, k))
                            .map_err(|e| src_err(self.df, line, 1, &e.to_string()))?
                    } else {
                        h.content.clone()
                    };
                    writes.push((h.name.clone(), content.into_bytes()));
                }
            }
        }
        let state = if paths.is_empty() {
            None
        } else {
            Some(match from {
                Some(f) => {
                    let f = ex(f)?;
                    self.state_named(&f, idx)?
                }
                None => self.context.clone(),
            })
        };
        Ok((state, paths, writes))
    }

    fn run_mount(
        &mut self,
        m: &RunMount,
        idx: usize,
        extra: &mut Vec<State>,
        line: usize,
        scope: &Scope,
        config: &ContainerConfig,
    ) -> Result<ExecMount> {
        let escape = self.df.directives.escape;
        let ex = |w: &str| {
            expand(w, |k| scope.lookup(config, k), escape)
                .map_err(|e| src_err(self.df, line, 1, &e.to_string()))
        };
        let target = m.target.as_deref().map(ex).transpose()?;
        let source = match m.kind {
            MountType::Cache => {
                let target = target.clone().ok_or_else(|| {
                    src_err(self.df, line, 1, "--mount=type=cache needs a target")
                })?;
                MountSource::Cache {
                    id: m.id.clone().unwrap_or(target),
                    sharing: match m.sharing {
                        Some(crate::frontend::dockerfile::instructions::CacheSharing::Locked) => {
                            Sharing::Locked
                        }
                        Some(crate::frontend::dockerfile::instructions::CacheSharing::Private) => {
                            Sharing::Private
                        }
                        _ => Sharing::Shared,
                    },
                    uid: m.uid.unwrap_or(0),
                    gid: m.gid.unwrap_or(0),
                    mode: m.mode.unwrap_or(0o755),
                }
            }
            MountType::Secret => {
                let id =
                    m.id.clone()
                        .or_else(|| {
                            target
                                .as_deref()
                                .and_then(|t| t.rsplit('/').next())
                                .map(str::to_string)
                        })
                        .ok_or_else(|| {
                            src_err(
                                self.df,
                                line,
                                1,
                                "--mount=type=secret needs an id or a target",
                            )
                        })?;
                MountSource::Secret {
                    id,
                    env: m.env.clone(),
                    required: m.required,
                }
            }
            MountType::Bind => {
                let st = match &m.from {
                    Some(f) => self.state_named(&ex(f)?, idx)?,
                    None => self.context.clone(),
                };
                extra.push(st);
                MountSource::Input {
                    input: extra.len(),
                    path: m
                        .source
                        .as_deref()
                        .map(ex)
                        .transpose()?
                        .unwrap_or_else(|| "/".into()),
                    rw: !m.readonly,
                }
            }
            MountType::Tmpfs => MountSource::Tmpfs { size: m.size },
            MountType::Ssh => {
                return Err(src_err(
                    self.df,
                    line,
                    1,
                    "--mount=type=ssh is not supported yet",
                ));
            }
        };
        let target = match (&source, target) {
            (_, Some(t)) => t,
            (MountSource::Secret { id, .. }, None) => format!("/run/secrets/{id}"),
            _ => {
                return Err(src_err(
                    self.df,
                    line,
                    1,
                    &format!("--mount=type={} needs a target", m.kind.as_str()),
                ));
            }
        };
        Ok(ExecMount { target, source })
    }
}

/// Replace `$NAME`, `${NAME}`, `${NAME:-default}` and `${NAME-default}` in `text`,
/// leaving everything else (quotes, backslashes, a lone `$`) as it is. Substitutions may
/// add at most [`MAX_WORD`] bytes to the text.
fn expand_vars(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> std::result::Result<String, ExpandError> {
    let limit = text.len() + MAX_WORD;
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let name_char = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    while i < b.len() {
        if b[i] == b'$' && i + 1 < b.len() {
            if b[i + 1] == b'{'
                && let Some(end) = text[i + 2..].find('}')
            {
                let inner = &text[i + 2..i + 2 + end];
                let (name, default) = match inner.find(":-").or_else(|| inner.find('-')) {
                    Some(p) => {
                        let skip = if inner[p..].starts_with(":-") { 2 } else { 1 };
                        (&inner[..p], Some(&inner[p + skip..]))
                    }
                    None => (inner, None),
                };
                if !name.is_empty() && name.bytes().all(name_char) {
                    let v = lookup(name).filter(|v| !(v.is_empty() && inner.contains(":-")));
                    let v = v.unwrap_or_else(|| default.unwrap_or("").to_string());
                    push_within(&mut out, &v, name, i, limit)?;
                    i += 3 + end;
                    continue;
                }
            } else if name_char(b[i + 1]) && !b[i + 1].is_ascii_digit() {
                let start = i + 1;
                let mut j = start;
                while j < b.len() && name_char(b[j]) {
                    j += 1;
                }
                let name = &text[start..j];
                push_within(&mut out, &lookup(name).unwrap_or_default(), name, i, limit)?;
                i = j;
                continue;
            }
        }
        let ch = text[i..].chars().next().expect("in bounds");
        out.push(ch);
        i += ch.len_utf8();
    }
    Ok(out)
}

fn command_list(c: &CommandLine, config: &ContainerConfig) -> Vec<String> {
    match c {
        CommandLine::Exec(l) => l.clone(),
        CommandLine::Shell(s) => {
            let mut v = config
                .shell
                .clone()
                .unwrap_or_else(|| vec!["/bin/sh".into(), "-c".into()]);
            v.push(s.clone());
            v
        }
    }
}

fn parse_chmod(s: Option<&str>, df: &Dockerfile, line: usize) -> Result<Option<u32>> {
    match s {
        None => Ok(None),
        Some(s) => u32::from_str_radix(s, 8)
            .ok()
            .filter(|m| *m <= 0o7777)
            .map(Some)
            .ok_or_else(|| {
                src_err(
                    df,
                    line,
                    1,
                    &format!("--chmod={s} is not an octal mode like 755"),
                )
            }),
    }
}

fn history_text(original: &str, keyword: &str) -> String {
    let rest = original.get(keyword.len()..).unwrap_or("").trim();
    match keyword {
        "RUN" => format!("RUN /bin/sh -c {rest} # buildkit"),
        _ => format!("{keyword} {rest}"),
    }
}

#[cfg(test)]
mod tests {
    use super::{LowerOptions, expand_vars, lower};
    use crate::Dockerfile;
    use crate::ir::{Entitlement, NetworkMode, Op};

    #[test]
    fn run_networks_and_the_network_host_entitlement() {
        let df = Dockerfile::parse(
            "Dockerfile",
            "FROM scratch\nRUN a\nRUN --network=none b\nRUN --network=default c\nRUN --network=host d\n",
        )
        .unwrap();
        let mut resolve = |r: &str| panic!("FROM scratch resolves nothing, asked for {r}");
        let err = lower(&df, &LowerOptions::default(), &mut resolve).unwrap_err();
        assert!(
            err.to_string().starts_with(
                "Dockerfile:5:1: RUN --network=host needs the entitlement network.host"
            ),
            "{err}"
        );
        let opts = LowerOptions {
            allow: vec![Entitlement::NetworkHost],
            ..LowerOptions::default()
        };
        let lowered = lower(&df, &opts, &mut resolve).unwrap();
        let networks: Vec<NetworkMode> = lowered
            .steps
            .iter()
            .flatten()
            .filter_map(|s| match &s.vertex().op {
                Op::Exec(e) => Some(e.network),
                _ => None,
            })
            .collect();
        assert_eq!(
            networks,
            [
                NetworkMode::Isolated,
                NetworkMode::None,
                NetworkMode::Isolated,
                NetworkMode::Host
            ]
        );
    }

    #[test]
    fn insecure_steps_are_refused_by_name() {
        let df = Dockerfile::parse(
            "Dockerfile",
            "FROM scratch\nRUN --security=sandbox a\nRUN --security=insecure b\n",
        )
        .unwrap();
        let mut resolve = |r: &str| panic!("FROM scratch resolves nothing, asked for {r}");
        let opts = LowerOptions {
            allow: vec![Entitlement::NetworkHost],
            ..LowerOptions::default()
        };
        let err = lower(&df, &opts, &mut resolve).unwrap_err().to_string();
        assert!(
            err.starts_with(
                "Dockerfile:3:1: RUN --security=insecure needs the entitlement security.insecure"
            ),
            "{err}"
        );
        let sandboxed =
            Dockerfile::parse("Dockerfile", "FROM scratch\nRUN --security=sandbox a\n").unwrap();
        assert!(lower(&sandboxed, &opts, &mut resolve).is_ok());
    }

    #[test]
    fn heredoc_bodies_keep_quotes_and_backslashes() {
        let look = |k: &str| match k {
            "X" => Some("value".to_string()),
            "EMPTY" => Some(String::new()),
            _ => None,
        };
        assert_eq!(
            expand_vars(r#"{"a": "$X", "b": "${X}"}"#, look).unwrap(),
            r#"{"a": "value", "b": "value"}"#
        );
        assert_eq!(
            expand_vars("Don't \\n $ ${UNSET:-dflt} ${EMPTY:-e} ${EMPTY-e}", look).unwrap(),
            "Don't \\n $ dflt e "
        );
        assert_eq!(
            expand_vars("price: $5 and $X.", look).unwrap(),
            "price: $5 and value."
        );
    }

    #[test]
    fn heredoc_expansion_is_bounded() {
        // A heredoc naming a 512 KiB variable three times: 1.5 MiB of substitutions.
        let big = "b".repeat(super::MAX_WORD / 2);
        let look = |k: &str| (k == "BIG").then(|| big.clone());
        assert_eq!(
            expand_vars("$BIG${BIG}", look).unwrap().len(),
            super::MAX_WORD
        );
        let err = expand_vars("$BIG\n${BIG}\n$BIG", look).unwrap_err();
        assert!(err.to_string().contains("$BIG"), "{err}");
        assert_eq!(err.offset(), 12, "the third one");
    }
}
