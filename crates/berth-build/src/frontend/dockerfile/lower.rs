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
//!
//! Each instruction is lowered by a function of its own over `StageState`, the stage so
//! far; RUN and COPY/ADD, the two that build graph nodes with inputs, live in `run`
//! and `copy`.

use std::collections::{BTreeMap, HashMap};

use crate::error::{BuildError, Result};
use crate::frontend::dockerfile::expand::expand;
use crate::frontend::dockerfile::instructions::{
    ArgDecl, CommandLine, CopySource, Dockerfile, Healthcheck, Instruction, InstructionKind,
    PortSpec, Protocol, Stage,
};
use crate::frontend::source::Pos;
use crate::image::{ContainerConfig, History, ImageConfig, ResolvedImage};
use crate::ir::{self, FileAction, FileOp, ImageSource, LocalSource, State};
use crate::platform::Platform;
use crate::solver::Cancel;

mod bases;
mod copy;
pub(crate) mod run;

pub(crate) use bases::base_references;

/// Where a `RUN <<EOF` script with a `#!` line is written for its interpreter: a tmpfs
/// mounted for that step only.
pub const HEREDOC_DIR: &str = "/run/berth-heredoc";

/// PATH of an image that sets none, as in Docker.
pub(crate) const DEFAULT_PATH: &str =
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

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
    /// Extra `/etc/hosts` lines for every RUN (`--add-host`).
    pub extra_hosts: Vec<(String, std::net::IpAddr)>,
    /// `created` timestamps (RFC 3339); `None` leaves them out.
    pub created: Option<String>,
    /// Entitlements granted (`--allow`).
    pub allow: Vec<ir::Entitlement>,
    /// Stops lowering between instructions with [`BuildError::Canceled`].
    pub cancel: Cancel,
    /// The platform the image is for (`--platform`; `None`: this host's).
    pub platform: Option<Platform>,
}

impl LowerOptions {
    /// The build's target platform.
    pub fn target_platform(&self) -> Platform {
        self.platform.clone().unwrap_or_else(Platform::host)
    }
}

/// Resolves an image reference as written for a platform (see [`lower`]).
pub type ResolveFn<'a> = dyn FnMut(&str, &Platform) -> Result<ResolvedImage> + 'a;

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
    /// The variables in scope at the end of the stage: a stage built on this one starts
    /// with them, ARGs included.
    vars: Vec<Var>,
    /// The ARGs declared, in order (see [`StageState::arg_names`]).
    arg_names: Vec<String>,
    /// The platform the stage is for.
    platform: Platform,
}

struct Lowerer<'a> {
    df: &'a Dockerfile,
    opts: &'a LowerOptions,
    resolve: &'a mut ResolveFn<'a>,
    meta: HashMap<String, Option<String>>,
    done: HashMap<usize, StageOut>,
    context: State,
    images: ImageMemo,
}

/// Lower `df` for the target stage; `resolve` gives an image reference's manifest for a
/// platform (the stage's: `FROM --platform`, else the target's).
pub fn lower(df: &Dockerfile, opts: &LowerOptions, resolve: &mut ResolveFn<'_>) -> Result<Lowered> {
    lower_in(df, opts, "context", resolve)
}

/// [`lower`] with the build context as the local source `context_name` (an Earthfile's
/// `FROM DOCKERFILE` names each context folder apart).
pub(crate) fn lower_in(
    df: &Dockerfile,
    opts: &LowerOptions,
    context_name: &str,
    resolve: &mut ResolveFn<'_>,
) -> Result<Lowered> {
    let meta = meta_args(df, opts)?;
    let target = target_stage(df, opts)?;
    let context = State::local(LocalSource {
        name: context_name.into(),
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

/// The global ARGs (before the first FROM) with their values for this build, and
/// BuildKit's automatic platform ARGs: what FROM lines expand with.
pub(crate) fn meta_args(
    df: &Dockerfile,
    opts: &LowerOptions,
) -> Result<HashMap<String, Option<String>>> {
    let escape = df.directives.escape;
    // BuildKit's automatic platform ARGs: global, and visible in a stage once declared.
    let mut meta: HashMap<String, Option<String>> = opts
        .target_platform()
        .build_args(&Platform::host())
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
    Ok(meta)
}

/// The index of the stage to build: `--target`, else the last.
pub(crate) fn target_stage(df: &Dockerfile, opts: &LowerOptions) -> Result<usize> {
    Ok(match &opts.target {
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
    })
}

impl Lowerer<'_> {
    /// The image history's `created_by` of `ins`, in BuildKit's words: RUN lists the
    /// stage's ARGs with their values (`RUN |2 A=1 B= /bin/sh -c make # buildkit`, proxy
    /// variables left out) and its argv; COPY and ADD their sources and destination
    /// without flags; SHELL as Go prints a list; steps that make a layer end in
    /// ` # buildkit`.
    fn history_text(&self, st: &StageState, ins: &Instruction) -> Result<String> {
        let line = ins.lines.start;
        let keyword = ins.keyword();
        Ok(match &ins.kind {
            InstructionKind::Run(run) => {
                let args: Vec<String> = st
                    .arg_names
                    .iter()
                    .filter(|n| !PROXY_ARGS.contains(&n.as_str()))
                    .map(|n| format!("{n}={}", st.lookup(n).unwrap_or_default()))
                    .collect();
                let mut words = Vec::new();
                if !args.is_empty() {
                    words.push(format!("|{}", args.len()));
                    words.extend(args);
                }
                words.extend(command_list(&run.command, &st.config.config));
                format!("RUN {} # buildkit", words.join(" "))
            }
            InstructionKind::Copy(c) => self.copy_history(st, "COPY", &c.sources, &c.dest, line)?,
            InstructionKind::Add(a) => self.copy_history(st, "ADD", &a.sources, &a.dest, line)?,
            InstructionKind::Shell { shell } => format!("SHELL [{}]", shell.join(" ")),
            InstructionKind::Arg { args } => {
                let mut items = Vec::new();
                for a in args {
                    items.push(match &a.default {
                        Some(d) => format!("{}={}", a.name, self.expand(st, d, line)?),
                        None => a.name.clone(),
                    });
                }
                format!("ARG {}", items.join(" "))
            }
            _ => {
                let rest = ins.original.get(keyword.len()..).unwrap_or("").trim();
                format!("{keyword} {rest}")
            }
        })
    }

    fn copy_history(
        &self,
        st: &StageState,
        keyword: &str,
        sources: &[CopySource],
        dest: &str,
        line: usize,
    ) -> Result<String> {
        let mut text = keyword.to_string();
        for s in sources {
            match s {
                CopySource::Path(p) => {
                    text.push(' ');
                    text.push_str(&self.expand(st, p, line)?);
                }
                CopySource::Heredoc(h) => {
                    text.push_str(" <<");
                    text.push_str(&h.name);
                }
            }
        }
        text.push(' ');
        text.push_str(&self.expand(st, dest, line)?);
        text.push_str(" # buildkit");
        Ok(text)
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

/// A variable in scope: set by ENV, or by an ARG that has a value.
#[derive(Debug, Clone)]
struct Var {
    name: String,
    value: String,
    /// Set by ARG (a proxy variable set so stays out of cache keys; see [`PROXY_ARGS`]).
    arg: bool,
}

/// One stage being lowered: its graph so far, the image config tracked beside it, the
/// history steps this build added, and the variables in scope.
struct StageState {
    /// Index of the stage in the Dockerfile.
    idx: usize,
    state: State,
    config: ImageConfig,
    /// For each history entry added, the state it made (`None`: metadata only).
    steps: Vec<Option<State>>,
    /// History entries inherited from the base.
    base_history: usize,
    /// The variables RUN steps get and words are expanded with, each name once, in the
    /// order they were last set (BuildKit's one list for ENV and ARG, its llb state's
    /// env): an ARG after an ENV of the same name wins here, though the image keeps the
    /// ENV; a stage built on another starts with that one's list.
    vars: Vec<Var>,
    /// Whether this stage set CMD (an ENTRYPOINT after it leaves it alone).
    cmd_set_here: bool,
    /// The ARGs declared in this stage (and its base stage), each once, in order, with or
    /// without a value: what BuildKit's RUN history lists (`RUN |2 A=1 B= …`).
    arg_names: Vec<String>,
    /// The platform the stage is for: its RUN steps run that platform's binaries.
    platform: Platform,
}

impl StageState {
    /// The value of variable `key` for the next instruction: whichever of ENV and ARG
    /// set it last, as in BuildKit.
    fn lookup(&self, key: &str) -> Option<String> {
        self.vars
            .iter()
            .find(|v| v.name == key)
            .map(|v| v.value.clone())
    }

    /// Set variable `name`, as BuildKit's AddEnv: the value replaces an earlier one of
    /// the same name and moves it last. So a step gets each variable once: with two
    /// `X=` entries, C's getenv and Go would read the first and shells and Python the
    /// last.
    fn set_var(&mut self, name: &str, value: String, arg: bool) {
        self.vars.retain(|v| v.name != name);
        self.vars.push(Var {
            name: name.to_string(),
            value,
            arg,
        });
    }

    /// ARG `name` with `value`; no value leaves an earlier one of the name alone.
    fn declare_arg(&mut self, name: &str, value: Option<String>) {
        if let Some(value) = value {
            self.set_var(name, value, true);
        }
    }

    /// The working directory of the next instruction (`/` if none was set).
    fn cwd(&self) -> String {
        if self.config.config.working_dir.is_empty() {
            "/".into()
        } else {
            self.config.config.working_dir.clone()
        }
    }
}

impl Lowerer<'_> {
    fn stage_label(&self, idx: usize) -> String {
        self.df.stages[idx]
            .name
            .clone()
            .unwrap_or_else(|| format!("stage-{idx}"))
    }

    /// Expand `word` with the variables in scope in `st`; errors point at `line`.
    fn expand(&self, st: &StageState, word: &str, line: usize) -> Result<String> {
        expand(word, |k| st.lookup(k), self.df.directives.escape)
            .map_err(|e| src_err(self.df, line, 1, &e.to_string()))
    }

    fn image(&mut self, reference: &str, platform: &Platform) -> Result<(State, ImageConfig)> {
        memo_image(&mut self.images, &mut *self.resolve, reference, platform)
    }

    /// A stage by name, in any case, or index (for `--from`), lowering it if needed.
    fn stage_ref(&mut self, name: &str, before: usize) -> Result<Option<usize>> {
        self.stage_where(before, |i, n| {
            n.is_some_and(|n| n.eq_ignore_ascii_case(name))
                || name.parse::<usize>().is_ok_and(|x| x == i)
        })
    }

    /// The stage a `FROM` names, lowering it if needed: by its name exactly (stage names
    /// are kept in lower case), never by index, as BuildKit looks a base up (`FROM
    /// Builder` or `FROM 0` is an image reference there).
    fn base_stage(&mut self, name: &str, before: usize) -> Result<Option<usize>> {
        self.stage_where(before, |_, n| n == Some(name))
    }

    /// The first stage before `before` that `is` (index, name) picks, lowered.
    fn stage_where(
        &mut self,
        before: usize,
        is: impl Fn(usize, Option<&str>) -> bool,
    ) -> Result<Option<usize>> {
        let idx = self.df.stages[..before]
            .iter()
            .enumerate()
            .position(|(i, s)| is(i, s.name.as_deref()));
        if let Some(i) = idx {
            self.stage(i)?;
        }
        Ok(idx)
    }

    /// The state named by `--from` (a stage, or an image for `platform`).
    fn state_named(&mut self, name: &str, before: usize, platform: &Platform) -> Result<State> {
        match self.stage_ref(name, before)? {
            Some(i) => Ok(self.done[&i].state.clone()),
            None => Ok(self.image(name, platform)?.0),
        }
    }

    /// Lower stage `idx` (once) into `self.done`.
    fn stage(&mut self, idx: usize) -> Result<()> {
        if self.done.contains_key(&idx) {
            return Ok(());
        }
        let stage: &Stage = &self.df.stages[idx];
        let (mut st, triggers) = self.from(idx)?;
        let instructions: Vec<&Instruction> = triggers.iter().chain(&stage.instructions).collect();
        let n = instructions.len();
        let label = self.stage_label(idx);
        for (i, ins) in instructions.into_iter().enumerate() {
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
            // In the words of the state before it: an ARG's default is expanded with the
            // values it replaces.
            let created_by = self.history_text(&st, ins)?;
            let made = self.instruction(&mut st, ins, &name)?;
            st.config.history.push(History {
                created: self.opts.created.clone(),
                created_by,
                empty_layer: made.is_none(),
                comment: "berth".into(),
            });
            st.steps.push(made);
        }
        self.done.insert(
            idx,
            StageOut {
                state: st.state,
                config: st.config,
                steps: st.steps,
                base_history: st.base_history,
                vars: st.vars,
                arg_names: st.arg_names,
                platform: st.platform,
            },
        );
        Ok(())
    }

    /// FROM of stage `idx`: the base's state and config, and the base's ONBUILD
    /// triggers, which run first, as if written right after FROM, and are not passed on
    /// to this image (Docker's rule). Errors in them point at FROM.
    fn from(&mut self, idx: usize) -> Result<(StageState, Vec<Instruction>)> {
        let df = self.df;
        let stage: &Stage = &df.stages[idx];
        let line = stage.lines.start;
        let escape = df.directives.escape;
        let meta = &self.meta;
        let from = expand(
            &stage.from.image,
            |k| meta.get(k).cloned().flatten(),
            escape,
        )
        .map_err(|e| src_err(df, line, 1, &e.to_string()))?;
        // `FROM --platform=$BUILDPLATFORM` and the like: the stage's own platform.
        let asked = match &stage.from.platform {
            Some(p) => {
                let p = expand(p, |k| meta.get(k).cloned().flatten(), escape)
                    .map_err(|e| src_err(df, line, 1, &e.to_string()))?;
                let p = Platform::parse(&p)
                    .map_err(|m| src_err(df, line, 1, &format!("FROM --platform: {m}")))?;
                Some(p)
            }
            None => None,
        };
        let target = asked.clone().unwrap_or_else(|| self.opts.target_platform());
        let (state, mut config, inherited, platform) = if from.eq_ignore_ascii_case("scratch") {
            let mut config = ImageConfig::default();
            // BuildKit's empty image works in `/`.
            config.config.working_dir = "/".into();
            (State::scratch(), config, None, target)
        } else if let Some(i) = self.base_stage(&from, idx)? {
            let o = &self.done[&i];
            (
                o.state.clone(),
                o.config.clone(),
                Some((o.vars.clone(), o.arg_names.clone())),
                // A stage built on another is for that one's platform unless it says.
                asked.unwrap_or_else(|| o.platform.clone()),
            )
        } else {
            let (state, config) = self.image(&from, &target).map_err(|e| match e {
                BuildError::Image(m) => src_err(df, line, 1, &m),
                e => e,
            })?;
            (state, config, None, target)
        };
        // The image is for the stage's platform, whatever the base's config said.
        config.os = platform.os.clone();
        config.architecture = platform.architecture.clone();
        config.variant = platform.variant.clone();
        // As BuildKit: an image always gets a PATH, and its Env is where a stage's
        // variables start (a stage's base stage hands on its own, ARGs included).
        if config.config.env_get("PATH").is_none() {
            config.config.env.push(DEFAULT_PATH.to_string());
        }
        let (vars, arg_names) = inherited.unwrap_or_else(|| {
            let mut vars: Vec<Var> = Vec::new();
            for kv in &config.config.env {
                let (name, value) = kv.split_once('=').unwrap_or((kv, ""));
                vars.retain(|v| v.name != name);
                vars.push(Var {
                    name: name.to_string(),
                    value: value.to_string(),
                    arg: false,
                });
            }
            (vars, Vec::new())
        });
        config.created = self.opts.created.clone();
        let mut triggers = Vec::new();
        if !config.config.on_build.is_empty() {
            let text = format!("FROM scratch\n{}\n", config.config.on_build.join("\n"));
            let parsed = Dockerfile::parse("ONBUILD", &text)
                .map_err(|e| src_err(df, line, 1, &format!("{from}'s ONBUILD triggers: {e}")))?;
            for mut t in parsed.stages.into_iter().flat_map(|s| s.instructions) {
                t.lines = stage.lines;
                triggers.push(t);
            }
            config.config.on_build.clear();
        }
        let st = StageState {
            idx,
            state,
            base_history: config.history.len(),
            config,
            steps: Vec::new(),
            vars,
            cmd_set_here: false,
            arg_names,
            platform,
        };
        Ok((st, triggers))
    }

    /// Lower one instruction of `st`, labelled `name` for progress; returns the state it
    /// made (and `st` now ends with), or `None` for metadata only.
    fn instruction(
        &mut self,
        st: &mut StageState,
        ins: &Instruction,
        name: &str,
    ) -> Result<Option<State>> {
        let line = ins.lines.start;
        let made = match &ins.kind {
            InstructionKind::Run(run) => Some(self.run(st, run, line, name)?),
            InstructionKind::Copy(c) => Some(self.copy(st, c, line, name)?),
            InstructionKind::Add(a) => Some(self.add(st, a, line, name)?),
            InstructionKind::Workdir { path } => Some(self.workdir(st, path, line, name)?),
            kind => {
                self.metadata(st, kind, line)?;
                None
            }
        };
        if let Some(state) = &made {
            st.state = state.clone();
        }
        Ok(made)
    }

    /// An instruction that changes only the image config or the variables in scope.
    fn metadata(&self, st: &mut StageState, kind: &InstructionKind, line: usize) -> Result<()> {
        match kind {
            InstructionKind::Arg { args } => self.arg(st, args, line)?,
            InstructionKind::Env { vars } => {
                // Every value of one ENV sees the variables as they were before it
                // (`ENV A=two B=$A` gives B the old A), as Docker does: all are expanded
                // before any is set.
                let mut set = Vec::with_capacity(vars.len());
                for kv in vars {
                    let v = self.expand(st, &kv.value, line)?;
                    let k = self.expand(st, &kv.key, line)?;
                    set.push((k, v));
                }
                for (k, v) in set {
                    st.config.config.env_set(&k, &v);
                    st.set_var(&k, v, false);
                }
            }
            InstructionKind::Label { labels } => {
                for kv in labels {
                    let k = self.expand(st, &kv.key, line)?;
                    let v = self.expand(st, &kv.value, line)?;
                    st.config.config.labels.insert(k, v);
                }
            }
            InstructionKind::User { user } => {
                st.config.config.user = self.expand(st, user, line)?;
            }
            // An empty exec form (`CMD []`) is no command at all, null in the config, as
            // BuildKit's parser gives it no arguments.
            InstructionKind::Cmd { command } => {
                st.config.config.cmd =
                    Some(command_list(command, &st.config.config)).filter(|c| !c.is_empty());
                st.cmd_set_here = true;
            }
            InstructionKind::Entrypoint { command } => {
                st.config.config.entrypoint =
                    Some(command_list(command, &st.config.config)).filter(|c| !c.is_empty());
                if !st.cmd_set_here {
                    st.config.config.cmd = None;
                }
            }
            InstructionKind::Shell { shell } => st.config.config.shell = Some(shell.clone()),
            InstructionKind::Expose { ports } => {
                for word in ports {
                    let expanded = self.expand(st, word, line)?;
                    // One word may expand to several ports (`EXPOSE $PORTS`).
                    for p in expanded.split_whitespace() {
                        for key in exposed_ports(p).map_err(|m| src_err(self.df, line, 1, &m))? {
                            st.config
                                .config
                                .exposed_ports
                                .insert(key, serde_json::json!({}));
                        }
                    }
                }
            }
            InstructionKind::Volume { paths } => {
                for p in paths {
                    let p = self.expand(st, p, line)?;
                    st.config.config.volumes.insert(p, serde_json::json!({}));
                }
            }
            InstructionKind::StopSignal { signal } => {
                st.config.config.stop_signal = self.expand(st, signal, line)?;
            }
            InstructionKind::Healthcheck(h) => {
                st.config.config.healthcheck = Some(healthcheck(h));
            }
            InstructionKind::OnBuild { trigger } => {
                st.config.config.on_build.push(trigger.original.clone());
            }
            // As written: BuildKit expands no variables in MAINTAINER.
            InstructionKind::Maintainer { name } => st.config.author = name.clone(),
            InstructionKind::Run(_)
            | InstructionKind::Copy(_)
            | InstructionKind::Add(_)
            | InstructionKind::Workdir { .. } => {
                unreachable!("{} makes a state", kind.keyword())
            }
        }
        Ok(())
    }

    /// ARG: each declaration takes its build argument, else its default (which sees the
    /// ones before it), else a global ARG of the same name.
    fn arg(&self, st: &mut StageState, args: &[ArgDecl], line: usize) -> Result<()> {
        for a in args {
            let value = match self.opts.build_args.get(&a.name) {
                Some(v) => Some(v.clone()),
                None => match &a.default {
                    Some(d) => Some(self.expand(st, d, line)?),
                    None => self.meta.get(&a.name).cloned().flatten(),
                },
            };
            st.declare_arg(&a.name, value);
            if !st.arg_names.contains(&a.name) {
                st.arg_names.push(a.name.clone());
            }
        }
        Ok(())
    }

    /// WORKDIR: sets the working directory and makes it, owned by the current USER as
    /// in Docker.
    fn workdir(&self, st: &mut StageState, path: &str, line: usize, name: &str) -> Result<State> {
        let p = self.expand(st, path, line)?;
        // An absolute path is kept as written, a relative one is joined to the working
        // directory and cleaned (Go's `path.Join`), as docker 20.10's BuildKit does
        // (newer BuildKit cleans both).
        let abs = if p.starts_with('/') {
            p
        } else {
            run::clean_abs(&format!("{}/{p}", st.cwd()))
        };
        st.config.config.working_dir = abs.clone();
        let user = &st.config.config.user;
        let op = FileOp {
            actions: vec![FileAction::Mkdir {
                // The directory made is the cleaned path (`/a/../b` makes `/b` only),
                // though the config keeps the path as written, as docker 20.10 does.
                path: run::clean_abs(&abs),
                chown: (!user.is_empty()).then(|| user.clone()),
            }],
            cwd: "/".into(),
        };
        Ok(st
            .state
            .file(op, vec![], name.to_string())
            .with_ignore_cache(self.opts.no_cache))
    }
}

/// The `ExposedPorts` keys of one EXPOSE port, as BuildKit stores them: one per port of a
/// range, protocol in lower case (`8000-8001/UDP` → `8000/udp`, `8001/udp`). A
/// `[ip:]host:` prefix, which only `docker run -p` means, is dropped.
pub(crate) fn exposed_ports(word: &str) -> std::result::Result<Vec<String>, String> {
    let container = word.rsplit(':').next().unwrap_or(word);
    let spec = PortSpec::parse(container).ok_or_else(|| {
        format!("invalid port {word}: a port looks like 80, 80/tcp, 53/udp or 8000-8010/tcp")
    })?;
    let proto = match spec.protocol {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Sctp => "sctp",
    };
    Ok((spec.start..=spec.end)
        .map(|p| format!("{p}/{proto}"))
        .collect())
}

/// The `Healthcheck` of an image config for HEALTHCHECK.
pub(crate) fn healthcheck(h: &Healthcheck) -> serde_json::Value {
    match h {
        Healthcheck::Disable => serde_json::json!({"Test": ["NONE"]}),
        Healthcheck::Cmd(c) => {
            let test = match &c.command {
                CommandLine::Exec(l) => std::iter::once("CMD".to_string())
                    .chain(l.iter().cloned())
                    .collect::<Vec<_>>(),
                CommandLine::Shell(s) => vec!["CMD-SHELL".to_string(), s.clone()],
            };
            let mut v = serde_json::json!({"Test": test});
            let ns = |d: &Option<std::time::Duration>| d.map(|d| d.as_nanos() as u64);
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
    }
}

pub(crate) fn command_list(c: &CommandLine, config: &ContainerConfig) -> Vec<String> {
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

/// Images resolved in one lowering, by reference and platform.
pub(crate) type ImageMemo = HashMap<(String, Platform), (State, ImageConfig)>;

/// Image `reference` for `platform` as a state and its config, resolved once per build
/// through `resolve` and kept in `images` (both frontends' `FROM`, Earthly's `--pull`).
/// The state names the platform's own manifest, so the cache keys of what is built on
/// it differ by platform.
pub(crate) fn memo_image(
    images: &mut ImageMemo,
    resolve: &mut ResolveFn<'_>,
    reference: &str,
    platform: &Platform,
) -> Result<(State, ImageConfig)> {
    let key = (reference.to_string(), platform.clone());
    if let Some(x) = images.get(&key) {
        return Ok(x.clone());
    }
    let r = resolve(reference, platform)?;
    let st = State::image(ImageSource {
        reference: reference.to_string(),
        manifest: r.manifest.clone(),
    });
    images.insert(key, (st.clone(), r.config.clone()));
    Ok((st, r.config))
}

#[cfg(test)]
mod tests {
    use super::{LowerOptions, lower};
    use crate::Dockerfile;
    use crate::ir::{Entitlement, NetworkMode, Op};

    #[test]
    fn run_networks_and_the_network_host_entitlement() {
        let df = Dockerfile::parse(
            "Dockerfile",
            "FROM scratch\nRUN a\nRUN --network=none b\nRUN --network=default c\nRUN --network=host d\n",
        )
        .unwrap();
        let mut resolve =
            |r: &str, _: &crate::Platform| panic!("FROM scratch resolves nothing, asked for {r}");
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
    fn insecure_steps_need_the_entitlement_and_lower_to_privileged() {
        let df = Dockerfile::parse(
            "Dockerfile",
            "FROM scratch\nRUN --security=sandbox a\nRUN --security=insecure b\n",
        )
        .unwrap();
        let mut resolve =
            |r: &str, _: &crate::Platform| panic!("FROM scratch resolves nothing, asked for {r}");
        let opts = LowerOptions {
            allow: vec![Entitlement::NetworkHost],
            ..LowerOptions::default()
        };
        let err = lower(&df, &opts, &mut resolve).unwrap_err().to_string();
        assert!(
            err.starts_with(
                "Dockerfile:3:1: RUN --security=insecure needs the entitlement security.insecure, which this build was not granted"
            ) && err.contains("--allow security.insecure"),
            "{err}"
        );
        let sandboxed =
            Dockerfile::parse("Dockerfile", "FROM scratch\nRUN --security=sandbox a\n").unwrap();
        assert!(lower(&sandboxed, &opts, &mut resolve).is_ok());
        let opts = LowerOptions {
            allow: vec![Entitlement::SecurityInsecure],
            ..LowerOptions::default()
        };
        let lowered = lower(&df, &opts, &mut resolve).unwrap();
        let privileged: Vec<bool> = lowered
            .steps
            .iter()
            .flatten()
            .filter_map(|s| match &s.vertex().op {
                Op::Exec(e) => Some(e.privileged),
                _ => None,
            })
            .collect();
        assert_eq!(privileged, [false, true]);
    }
}
