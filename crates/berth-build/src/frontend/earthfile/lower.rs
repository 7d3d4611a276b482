//! Earthfile recipes → build graph: an interpreter over the statements of the invoked
//! target and of every target it reaches.
//!
//! Each target is lowered once per set of ARG overrides (`+t --X=1` twice is one
//! target; `+t --X=2` is another). Lowering a target walks its base recipe, then its
//! own statements, keeping beside the graph what Earthly keeps: the image config, the
//! variables in scope (ENV, ARG, LET), the artifact state (`SAVE ARTIFACT` copies out
//! of the target's file system into it), the images and local artifacts it saves, the
//! targets it `BUILD`s, and its `CACHE` mounts. Nothing runs here: the result is a
//! [`Plan`] of states, which the solver runs together, so independent targets run in
//! parallel and a state reached twice runs once.
//!
//! What Earthly evaluates by running a command in the container (`IF`, `FOR`, `ARG
//! X=$(cmd)`) is answered by the solver while lowering. What needs privileges
//! (`WITH DOCKER`, `RUN --privileged`) is lowered only when the build was granted
//! `security.insecure`. What berth does not run yet is refused with an error at its
//! line.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::ast::{Command, Earthfile, Stmt, Word};
use crate::docker::{DockerImage, docker_compose_run};
use crate::error::{BuildError, Result};
use crate::frontend::dockerfile::expand::expand;
use crate::frontend::dockerfile::instructions::{
    CommandLine, InstructionKind, MountType, RunMount,
};
use crate::frontend::dockerfile::lower::run::{MountEnv, base_name, clean_abs, exec_mount};
use crate::frontend::dockerfile::lower::{
    DEFAULT_PATH, ImageMemo, ResolveFn, command_list, exposed_ports, healthcheck, memo_image,
};
use crate::frontend::source::Pos;
use crate::image::{History, ImageConfig, host_platform};
use crate::ir::{
    self, DockerCompose, ExecMount, ExecOp, FileAction, FileOp, GitSource, LocalSource,
    MountSource, Op, Sharing, State,
};
use crate::pattern::{Ignore, Pattern};
use crate::platform::Platform;
use crate::solver::Cancel;

/// What lowering needs besides the Earthfiles.
#[derive(Debug, Clone, Default)]
pub struct EarthOptions {
    /// `--NAME=value` overrides of the invoked target's ARGs.
    pub args: BTreeMap<String, String>,
    /// Proxy variables, given to RUN steps but no cache key.
    pub proxy_env: Vec<String>,
    /// Run every step.
    pub no_cache: bool,
    /// `created` timestamps (RFC 3339).
    pub created: Option<String>,
    /// Entitlements granted (`--allow`).
    pub allow: Vec<ir::Entitlement>,
    /// Stops lowering between commands.
    pub cancel: Cancel,
    /// `--push`: the value of `EARTHLY_PUSH`.
    pub push: bool,
    /// `--ci`: the value of `EARTHLY_CI`.
    pub ci: bool,
    /// Where remote Earthfiles are checked out, one folder per commit (`None`: remote
    /// references are refused).
    pub git_cache: Option<PathBuf>,
    /// `--strict` (and `--ci`): refuse `LOCALLY`, as Earthly does.
    pub strict: bool,
    /// `--no-output` (and `--ci`): a failed `TRY` saves nothing on the host either.
    pub no_output: bool,
    /// Lowering on a satellite, over the folder its client sent: references to folders
    /// outside it, `LOCALLY` (it would run on the satellite's host) and `TRY` without
    /// `--no-output` (its saves would land there too) are refused.
    pub satellite: bool,
    /// The platform the invoked target is for (`--platform`; `None`: this host's).
    pub platform: Option<Platform>,
}

/// The lowered build: every target reached, and which one was invoked.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Local sources by name: the folder of each Earthfile used.
    pub contexts: HashMap<String, PathBuf>,
    /// Targets, each once per set of ARG values; a target comes after those it needs.
    pub targets: Vec<TargetOut>,
    /// The invoked target.
    pub invoked: usize,
    /// For each path a COPY or SAVE ARTIFACT copies, the error to give if the solver
    /// finds it missing (it only knows the path; this says where it was written).
    pub sources: Vec<(String, crate::SourceError)>,
    /// For each RUN step's name, where it is written (a failed step's error names it).
    pub steps: Vec<(String, crate::SourceError)>,
}

impl Plan {
    /// Where the RUN named `step` is written; `None` when no RUN has that name or when
    /// RUNs on different lines share it (the same command twice in a target).
    pub fn step_at(&self, step: &str) -> Option<&crate::SourceError> {
        let mut found = self
            .steps
            .iter()
            .filter(|(s, _)| s == step)
            .map(|(_, at)| at);
        let first = found.next()?;
        found
            .all(|at| (&at.file, at.line, at.column) == (&first.file, first.line, first.column))
            .then_some(first)
    }

    /// The invoked target and those connected to it through `BUILD` chains: Earthly's
    /// output rule saves images and artifacts of these only.
    pub fn connected(&self) -> Vec<usize> {
        let mut seen = vec![self.invoked];
        let mut i = 0;
        while i < seen.len() {
            for &b in &self.targets[seen[i]].builds {
                if !seen.contains(&b) {
                    seen.push(b);
                }
            }
            i += 1;
        }
        seen
    }
}

/// A lowered target.
#[derive(Debug, Clone)]
pub struct TargetOut {
    /// `+name` or `./dir+name`, with ARG overrides if any.
    pub label: String,
    /// Its final state (before any `RUN --push`).
    pub state: State,
    /// Its image config.
    pub config: ImageConfig,
    /// The state each history entry made (`None`: metadata, or the base image's).
    pub history_states: Vec<Option<State>>,
    /// Its artifacts (`SAVE ARTIFACT`), as a file system.
    pub artifact: State,
    /// `SAVE IMAGE`s.
    pub images: Vec<SavedImage>,
    /// `SAVE ARTIFACT … AS LOCAL`s.
    pub locals: Vec<SavedLocal>,
    /// Targets it `BUILD`s.
    pub builds: Vec<usize>,
    /// The state after its `RUN --push` steps, run only with `--push`.
    pub push_state: Option<State>,
    /// What each `SAVE ARTIFACT` put where in [`Self::artifact`].
    pub saved: Vec<SavedPath>,
    /// Its `HOST` lines, which `FROM` of it inherits with its state.
    pub hosts: Vec<(String, std::net::IpAddr)>,
    /// The platform its image is for.
    pub platform: Platform,
}

impl TargetOut {
    /// Where `COPY +t/path` can read `path` from directly, skipping the copy into the
    /// artifacts: the one `SAVE ARTIFACT` that wrote exactly `path`, when no other
    /// wrote beside, above or below it (nor a wildcard anywhere).
    fn direct(&self, path: &str) -> Option<&SavedPath> {
        let p = clean_abs(&format!("/{path}"));
        let near = |a: &str| {
            a == p || a == "/" || a.starts_with(&format!("{p}/")) || p.starts_with(&format!("{a}/"))
        };
        let mut hits = self
            .saved
            .iter()
            .filter(|s| s.from.is_none() || near(&s.at));
        let only = hits.next()?;
        if hits.next().is_some() || only.at != p {
            return None;
        }
        only.from.as_ref().map(|_| only)
    }
}

/// Where a `SAVE ARTIFACT` put a path in its target's artifacts, and from where.
#[derive(Debug, Clone)]
pub struct SavedPath {
    /// Its path in the artifacts (absolute).
    pub at: String,
    /// The file system and the path it was copied from; `None` when a COPY must read
    /// the artifacts (a wildcard, `--if-exists`, a `LOCALLY` save).
    pub from: Option<(State, String)>,
    /// `--keep-ts`.
    pub keep_ts: bool,
    /// Owners kept (`--keep-own`, or VERSION 0.7+).
    pub keep_own: bool,
}

/// A `SAVE IMAGE`.
#[derive(Debug, Clone)]
pub struct SavedImage {
    /// Names (none: the target's image, used by `FROM +t` only).
    pub names: Vec<String>,
    /// `--push`.
    pub push: bool,
    /// Saved after a `RUN --push`: made only with `--push`.
    pub push_only: bool,
    /// The file system.
    pub state: State,
    /// The config.
    pub config: ImageConfig,
    /// The state each history entry made.
    pub history_states: Vec<Option<State>>,
}

/// A `SAVE ARTIFACT … AS LOCAL`.
#[derive(Debug, Clone)]
pub struct SavedLocal {
    /// A file system holding the artifact under `/out/`: `/out/<name>` for one path,
    /// every match in `/out/` for a wildcard.
    pub state: State,
    /// The source had wildcards.
    pub glob: bool,
    /// The artifact's name under `/out/` (one path).
    pub name: String,
    /// Where on the host (absolute); a trailing `/` means "into this folder".
    pub dest: String,
    /// Where it was written, for errors (`Earthfile:12`).
    pub origin: String,
    /// Already written on the host, at the end of a `WAIT` block: not again.
    pub early: bool,
}

/// A variable in scope.
#[derive(Debug, Clone)]
struct Var {
    name: String,
    value: String,
    kind: VarKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum VarKind {
    Env,
    Arg,
    Let,
}

/// An Earthfile and what was read with it.
struct Project {
    ef: Earthfile,
    dir: PathBuf,
    /// `""` for the invoked Earthfile's folder, else `./rel` from it.
    reference: String,
    context: State,
    /// `IMPORT` aliases → what they stand for: an absolute folder, or a remote
    /// reference (`host/org/repo[/path][:ref]`).
    imports: HashMap<String, String>,
    /// What the builtin git ARGs give, asked of git when one is first declared.
    git: std::sync::OnceLock<HashMap<&'static str, String>>,
}

impl Project {
    fn git(&self) -> &HashMap<&'static str, String> {
        self.git.get_or_init(|| git_info(&self.dir))
    }
}

/// A target being lowered.
struct Ts {
    label: String,
    name: String,
    proj: Arc<Project>,
    state: State,
    config: ImageConfig,
    hist: Vec<Option<State>>,
    vars: Vec<Var>,
    globals: Vec<Var>,
    overrides: BTreeMap<String, String>,
    artifact: State,
    saved: Vec<SavedPath>,
    images: Vec<SavedImage>,
    locals: Vec<SavedLocal>,
    builds: Vec<usize>,
    caches: Vec<ExecMount>,
    /// The `CACHE` folders whose contents go into the image (`--persist`, or every
    /// `CACHE` before Earthly 0.8).
    persist: Vec<String>,
    /// The state before the first `RUN --push`.
    pre_push: Option<State>,
    is_base: bool,
    /// After `LOCALLY` (until a `FROM`): commands run on the host.
    locally: bool,
    /// `HOST` lines for the `/etc/hosts` of its RUNs (until a `FROM`).
    hosts: Vec<(String, std::net::IpAddr)>,
    /// The names ARG declared in this recipe (or function), for Earthly's errors on
    /// declaring one twice.
    declared: Vec<String>,
    /// The platform the target is for: the one it was referenced for, or its `FROM
    /// --platform`'s.
    platform: Platform,
    /// The `IMPORT`s run so far, by the folder of their Earthfile and alias: those with
    /// variables, which [`Project::imports`] leaves out.
    imports: HashMap<(PathBuf, String), String>,
}

impl Ts {
    /// `$HOME` where the image sets none: the user's home, as Earthly expands it in
    /// a RUN's `--mount`.
    fn home(&self, key: &str) -> Option<String> {
        if key != "HOME" {
            return None;
        }
        let user = self.config.config.user.split(':').next().unwrap_or("");
        Some(match user {
            "" | "root" | "0" => "/root".into(),
            u => format!("/home/{u}"),
        })
    }

    /// `+t --A=1 --B=`: the target and the ARGs it declared (builtins left out), for
    /// an error's stack, as Earthly shows it; no other variable is shown, so what the
    /// `.arg` or `.secret` files hold beyond that stays out of logs.
    fn frame(&self) -> String {
        let mut names: Vec<&String> = self
            .declared
            .iter()
            .filter(|n| !is_builtin_arg(n))
            .collect();
        names.sort();
        names.dedup();
        let mut out = self.label.clone();
        for n in names {
            out.push_str(&format!(" --{n}={}", self.lookup(n).unwrap_or_default()));
        }
        out
    }

    fn lookup(&self, key: &str) -> Option<String> {
        self.vars
            .iter()
            .rev()
            .find(|v| v.name == key)
            .map(|v| v.value.clone())
    }

    fn set_var(&mut self, name: &str, value: String, kind: VarKind) {
        self.vars.retain(|v| v.name != name);
        self.vars.push(Var {
            name: name.to_string(),
            value,
            kind,
        });
    }

    /// Start over from a new base (`FROM`): its state, config and history; the
    /// environment becomes the base's (with a PATH), ARG and LET variables stay.
    fn rebase(&mut self, state: State, mut config: ImageConfig, hist: Vec<Option<State>>) {
        if config.config.env_get("PATH").is_none() {
            config.config.env.push(DEFAULT_PATH.to_string());
        }
        let mut vars: Vec<Var> = config
            .config
            .env
            .iter()
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                Var {
                    name: k.to_string(),
                    value: v.to_string(),
                    kind: VarKind::Env,
                }
            })
            .collect();
        vars.extend(self.vars.drain(..).filter(|v| v.kind != VarKind::Env));
        self.vars = vars;
        self.state = state;
        self.config = config;
        self.hist = hist;
        self.locally = false;
        self.hosts.clear();
    }

    fn cwd(&self) -> String {
        if self.config.config.working_dir.is_empty() {
            "/".into()
        } else {
            self.config.config.working_dir.clone()
        }
    }

    /// `path` made absolute against the working directory.
    fn abs(&self, path: &str) -> String {
        let trailing = path.ends_with('/') && path.len() > 1;
        let p = if path.starts_with('/') {
            clean_abs(path)
        } else {
            clean_abs(&format!("{}/{path}", self.cwd()))
        };
        if trailing && p != "/" {
            format!("{p}/")
        } else {
            p
        }
    }

    fn arg_overrides(&self) -> BTreeMap<String, String> {
        self.vars
            .iter()
            .filter(|v| v.kind == VarKind::Arg && !is_builtin_arg(&v.name))
            .map(|v| (v.name.clone(), v.value.clone()))
            .collect()
    }

    /// What a reference passes on before its own `--NAME=value`s, as Earthly's
    /// `prepOverridingVars`: with `--pass-args`, the values this target was given and
    /// its ARGs (given values first); else, to a target of the same Earthfile
    /// (`internal`), the values it was given: they follow BUILD, FROM and COPY chains
    /// inside an Earthfile, never across into another.
    fn passed_args(&self, pass_args: bool, internal: bool) -> BTreeMap<String, String> {
        let given = self
            .overrides
            .iter()
            .filter(|(k, _)| !is_builtin_arg(k))
            .map(|(k, v)| (k.clone(), v.clone()));
        if pass_args {
            let mut all = self.arg_overrides();
            all.extend(given);
            all
        } else if internal {
            given.collect()
        } else {
            BTreeMap::new()
        }
    }
}

/// Earthly's builtin ARGs: declared with `ARG NAME`, never given a value.
pub const BUILTIN_ARGS: &[&str] = &[
    "EARTHLY_TARGET",
    "EARTHLY_TARGET_NAME",
    "EARTHLY_TARGET_PROJECT",
    "EARTHLY_TARGET_PROJECT_NO_TAG",
    "EARTHLY_TARGET_TAG",
    "EARTHLY_TARGET_TAG_DOCKER",
    "EARTHLY_GIT_HASH",
    "EARTHLY_GIT_SHORT_HASH",
    "EARTHLY_GIT_BRANCH",
    "EARTHLY_GIT_ORIGIN_URL",
    "EARTHLY_GIT_PROJECT_NAME",
    "EARTHLY_GIT_COMMIT_TIMESTAMP",
    "EARTHLY_GIT_COMMIT_AUTHOR_TIMESTAMP",
    "EARTHLY_GIT_REFS",
    "EARTHLY_GIT_TAG",
    "EARTHLY_SOURCE_DATE_EPOCH",
    "EARTHLY_VERSION",
    "EARTHLY_BUILD_SHA",
    "EARTHLY_CI",
    "EARTHLY_CI_RUNNER",
    "EARTHLY_PUSH",
    "EARTHLY_LOCALLY",
    "TARGETPLATFORM",
    "TARGETOS",
    "TARGETARCH",
    "TARGETVARIANT",
    "NATIVEPLATFORM",
    "NATIVEOS",
    "NATIVEARCH",
    "NATIVEVARIANT",
    "USERPLATFORM",
    "USEROS",
    "USERARCH",
    "USERVARIANT",
];

/// Whether `name` is one of [`BUILTIN_ARGS`].
pub fn is_builtin_arg(name: &str) -> bool {
    BUILTIN_ARGS.contains(&name)
}

/// Lowers targets of Earthfiles.
pub struct Lowerer<'a> {
    opts: &'a EarthOptions,
    resolve: &'a mut ResolveFn<'a>,
    root: PathBuf,
    projects: HashMap<PathBuf, Arc<Project>>,
    memo: HashMap<String, usize>,
    active: Vec<(String, String)>,
    targets: Vec<TargetOut>,
    images: ImageMemo,
    contexts: HashMap<String, PathBuf>,
    sources: Vec<(String, crate::SourceError)>,
    steps: Vec<(String, crate::SourceError)>,
    host: &'a mut dyn Host,
    /// What the RUN of the `TRY` being lowered saves if it fails.
    try_saves: Vec<ir::FailureSave>,
    /// The host paths written at the end of a `WAIT` block, and the SAVE ARTIFACT that
    /// wrote each: a later COPY of one from a build context is refused, as in Earthly.
    written: HashMap<PathBuf, String>,
    /// Whether the target being lowered is BUILD-connected to the invoked one (its
    /// outputs are written; its EARTHLY_PUSH is `--push`'s value).
    connected: bool,
    /// Checkouts of remote references → the reference, for labels.
    remote_names: HashMap<PathBuf, String>,
    /// The platform of the command being lowered: its `--platform`, else its target's.
    /// A target it references (`FROM +t`, `COPY +t/a`, `BUILD +t`) is lowered for it,
    /// and an image it names is resolved for it.
    platform: Platform,
}

/// What lowering asks of the machine it runs on. Earthly runs some commands while it
/// converts a target: `IF`, `FOR … IN` and `$( … )` answers, and everything of a
/// `LOCALLY` target, in order. Lowering stops for them and asks here.
pub trait Host {
    /// A new empty folder that lives until the build ends.
    fn scratch(&mut self) -> Result<PathBuf>;
    /// Solve `state`, given the local sources known so far, and write its file system
    /// into the empty folder `dest`.
    fn export(
        &mut self,
        contexts: &HashMap<String, PathBuf>,
        state: &State,
        dest: &Path,
    ) -> Result<()>;
    /// Run a `LOCALLY` command on this host: its exit code, and its standard output
    /// when [`LocalRun::capture`] asks for it.
    fn run_local(&mut self, run: &LocalRun) -> Result<(i32, String)>;
    /// The end of a `WAIT` block: solve `states` (the targets its BUILDs reached) and
    /// write `locals` on the host now, as the build's end would; `false` when this host
    /// leaves the outputs to the build's end.
    fn wait(
        &mut self,
        _contexts: &HashMap<String, PathBuf>,
        _states: &[State],
        _locals: &[SavedLocal],
    ) -> Result<bool> {
        Ok(false)
    }
}

/// A command of a `LOCALLY` target, run on the host.
#[derive(Debug, Clone)]
pub struct LocalRun {
    /// The program and its arguments (`/bin/sh -c …` for a shell command).
    pub args: Vec<String>,
    /// Variables added to berth's own environment (the ARGs and LETs in scope).
    pub env: Vec<(String, String)>,
    /// The folder to run in: the Earthfile's, or one a `WORKDIR` named (made if missing).
    pub cwd: PathBuf,
    /// A label for progress.
    pub name: String,
    /// Keep the standard output (IF, FOR, `$( … )`).
    pub capture: bool,
}

/// The variable each `$( … )` of a word is replaced by before expansion.
const SHELL_OUT: &str = "__BERTH_SHELL_OUT_";

/// `text` with each `$( … )` outside single quotes replaced by `${SHELL_OUT<n>}`, and
/// the commands. A command's `\\` is one backslash, as Earthly reads the word before
/// the shell does (its `$(echo \\(\\))` prints `()`, quoted or not).
fn shell_outs(text: &str) -> std::result::Result<(String, Vec<String>), String> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::new();
    let mut cmds = Vec::new();
    let mut single = false;
    let mut double = false;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\\' && !single && i + 1 < chars.len() {
            out.push(c);
            out.push(chars[i + 1]);
            i += 2;
            continue;
        }
        if c == '\'' && !double {
            single = !single;
        }
        if c == '"' && !single {
            double = !double;
        }
        if !single && c == '$' && chars.get(i + 1) == Some(&'(') {
            let mut depth = 1;
            let mut j = i + 2;
            while j < chars.len() && depth > 0 {
                match chars[j] {
                    '(' => depth += 1,
                    ')' => depth -= 1,
                    _ => {}
                }
                j += 1;
            }
            if depth > 0 {
                return Err("unterminated $( … )".into());
            }
            let cmd: String = chars[i + 2..j - 1].iter().collect();
            cmds.push(cmd.replace("\\\\", "\\"));
            out.push_str(&format!("${{{SHELL_OUT}{}}}", cmds.len() - 1));
            i = j;
            continue;
        }
        out.push(c);
        i += 1;
    }
    Ok((out, cmds))
}

/// Where a captured command's answer is written in its probe step.
const EVAL_DIR: &str = "/.berth-eval";

/// Lower `reference` (`+target`, `./dir+target`, `../dir+target`) relative to the
/// folder `dir`, whose Earthfile holds `+target`.
pub fn lower<'a>(
    dir: &Path,
    reference: &str,
    opts: &'a EarthOptions,
    resolve: &'a mut ResolveFn<'a>,
    host: &'a mut dyn Host,
) -> Result<Plan> {
    let root = std::fs::canonicalize(dir)
        .map_err(|e| BuildError::Invalid(format!("folder {}: {e}", dir.display())))?;
    let mut l = Lowerer {
        opts,
        resolve,
        root: root.clone(),
        projects: HashMap::new(),
        memo: HashMap::new(),
        active: Vec::new(),
        targets: Vec::new(),
        images: HashMap::new(),
        contexts: HashMap::new(),
        sources: Vec::new(),
        steps: Vec::new(),
        host,
        try_saves: Vec::new(),
        connected: true,
        written: HashMap::new(),
        remote_names: HashMap::new(),
        platform: opts.platform.clone().unwrap_or_else(Platform::host),
    };
    let (proj_part, name) = reference.split_once('+').ok_or_else(|| {
        BuildError::Invalid(format!(
            "{reference:?} is not a target reference; write +target or ./dir+target"
        ))
    })?;
    if name.is_empty() || name.contains('/') {
        return Err(BuildError::Invalid(format!(
            "{reference:?} names no target; write +target or ./dir+target"
        )));
    }
    let tdir = if proj_part.is_empty() {
        root.clone()
    } else if is_local_ref(proj_part) {
        root.join(proj_part)
    } else if is_remote_ref(proj_part) {
        l.fetch_remote(proj_part).map_err(BuildError::Remote)?
    } else {
        return Err(BuildError::Invalid(format!(
            "{reference:?}: write +target, ./dir+target or host/org/repo[/path][:ref]+target"
        )));
    };
    let proj = l.project(&tdir)?;
    let invoked = l.target(&proj, name, opts.args.clone(), None, true)?;
    Ok(Plan {
        contexts: l.contexts,
        targets: l.targets,
        invoked,
        sources: l.sources,
        steps: l.steps,
    })
}

/// `host/org/repo[/path][:ref]`: a host (with a dot or a port) and two more parts.
fn is_remote_ref(p: &str) -> bool {
    let mut parts = p.split('/');
    let host = parts.next().unwrap_or("");
    (host.contains('.') || host.contains(':')) && parts.count() >= 2
}

/// Where the `+` of reference `text` is: the first one not escaped as `\+` (Earthly's
/// escape for a `+` in a folder or file name: `COPY ./dir-with-\++t/f`).
fn ref_plus(text: &str) -> Option<usize> {
    let b = text.as_bytes();
    (0..b.len()).find(|&i| b[i] == b'+' && (i == 0 || b[i - 1] != b'\\'))
}

/// `text` with each `\+` made a `+` (Earthly's unescapeSlashPlus).
fn unescape_plus(text: &str) -> String {
    text.replace("\\+", "+")
}

fn is_local_ref(p: &str) -> bool {
    p == "." || p == ".." || p.starts_with("./") || p.starts_with("../") || p.starts_with('/')
}

/// Whether `state` is made from the local source called `name`.
fn reads_local(state: &State, name: &str) -> bool {
    let mut seen = HashSet::new();
    let mut todo = vec![state];
    while let Some(s) = todo.pop() {
        if !seen.insert(s.digest().clone()) {
            continue;
        }
        if matches!(&s.vertex().op, Op::Local(l) if l.name == name) {
            return true;
        }
        todo.extend(&s.vertex().inputs);
    }
    false
}

/// `IMPORT r [AS alias]` of the Earthfile in `dir`: the alias (by default the last
/// part of the path, without its `:ref`) and what it stands for (an absolute folder,
/// or the remote reference).
fn import_entry(dir: &Path, r: &str, alias: Option<&str>) -> (String, String) {
    let alias = alias.map(str::to_string).unwrap_or_else(|| {
        let last = r.trim_end_matches('/').rsplit('/').next().unwrap_or(r);
        last.split(':').next().unwrap_or(last).to_string()
    });
    let target = if is_local_ref(r) {
        dir.join(r).display().to_string()
    } else {
        r.to_string()
    };
    (alias, target)
}

/// What IMPORT alias `alias` of `proj` stands for, with those `ts` ran.
fn import_of<'a>(ts: &'a Ts, proj: &'a Project, alias: &str) -> Option<&'a str> {
    proj.imports
        .get(alias)
        .or_else(|| ts.imports.get(&(proj.dir.clone(), alias.to_string())))
        .map(String::as_str)
}

/// Earthly's `--shell-out-anywhere` (on from VERSION 0.7): `$( … )` anywhere in a value.
fn shell_out_anywhere(proj: &Project) -> bool {
    proj.ef.feature("shell-out-anywhere")
}

/// The command of `text` when it is one `$( … )` and nothing else (quotes around it
/// allowed), as Earthly before 0.7 runs them.
fn whole_shell_out(text: &str) -> Option<String> {
    let t = text.trim();
    let t = t
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(t);
    let (rewritten, cmds) = shell_outs(t).ok()?;
    (cmds.len() == 1 && rewritten == format!("${{{SHELL_OUT}0}}")).then(|| cmds[0].clone())
}

/// The folders under `base` that the relative path `pattern` (wildcards in any
/// component but `**`) matches, relative to `base`, sorted: Earthly's `GlobDirs`.
fn glob_dirs(base: &Path, pattern: &str) -> Vec<PathBuf> {
    let mut found = vec![PathBuf::new()];
    for comp in pattern.split('/').filter(|c| !c.is_empty() && *c != ".") {
        let mut next = Vec::new();
        for rel in &found {
            if comp == ".." || !Pattern::new(comp).has_wildcards() {
                let p = rel.join(comp);
                if base.join(&p).is_dir() {
                    next.push(p);
                }
                continue;
            }
            let Ok(entries) = std::fs::read_dir(base.join(rel)) else {
                continue;
            };
            let mut names: Vec<String> = entries
                .flatten()
                .filter(|e| e.path().is_dir())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| crate::pattern::match_component(comp.as_bytes(), n.as_bytes()))
                .collect();
            names.sort();
            next.extend(names.into_iter().map(|n| rel.join(n)));
        }
        found = next;
    }
    found
}

/// `p` with `.` and `..` taken out without asking the file system.
fn lexical_clean(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            c => out.push(c),
        }
    }
    out
}

/// A satellite's refusal of a folder outside the one its client sent.
fn outside_error() -> BuildError {
    BuildError::Invalid(
        "on a satellite, targets are built from the folder berth sent (the one it ran in) \
         and this one is outside it; run berth from a folder that holds both Earthfiles \
         (`berth ./dir+target`), or build without --satellite"
            .into(),
    )
}

fn src_err(proj: &Project, pos: Pos, msg: impl Into<String>) -> BuildError {
    BuildError::Source(proj.ef.source.error(pos, msg))
}

/// [`src_err`] with a hint: what to write or do instead.
fn hint_err(
    proj: &Project,
    pos: Pos,
    msg: impl Into<String>,
    hint: impl Into<String>,
) -> BuildError {
    BuildError::Source(proj.ef.source.error(pos, msg).with_hint(hint))
}

/// Earthly's `require-force-for-unsafe-saves` (on from VERSION 0.6; berth keeps it on
/// for a file without VERSION, which Earthly takes as 0.5, rather than let an old
/// Earthfile overwrite a folder outside its own unasked): `AS LOCAL path` must stay
/// under the Earthfile's folder unless `SAVE ARTIFACT --force`. Lexical, as Earthly's `canSave`: the folder
/// itself only as `.` or `dir/`, a path into which the artifact goes.
fn check_local_save(proj: &Project, dir: &Path, c: &Command, local: &str) -> Result<()> {
    if c.flag("force") {
        return Ok(());
    }
    let dest = lexical_clean(&dir.join(local));
    let base = lexical_clean(dir);
    let into = local == "." || local.ends_with('/') || local.ends_with("/.");
    if (dest != base && dest.starts_with(&base)) || (dest == base && into) {
        return Ok(());
    }
    Err(hint_err(
        proj,
        c.pos,
        format!(
            "SAVE ARTIFACT … AS LOCAL {local}: unable to save to {local}; path must be \
             located under {}",
            base.display()
        ),
        "SAVE ARTIFACT --force writes outside the Earthfile's folder",
    ))
}

fn not_supported(proj: &Project, pos: Pos, what: &str) -> BuildError {
    hint_err(
        proj,
        pos,
        format!("{what} is not supported by berth yet"),
        "see README.md, section Earthfiles, for what berth runs today",
    )
}

/// What a `LOCALLY` target may hold, for errors.
const LOCALLY_HINT: &str = "a LOCALLY target runs RUN, COPY +target/artifact and SAVE ARTIFACT on this host (and ARG, LET, SET, ENV, BUILD, DO, IF, FOR, WORKDIR); put the rest in a target with a FROM";

/// Where `CACHE --persist` mounts the cache while its contents are copied in.
const PERSIST_MOUNT: &str = "/.berth-cache-persist";

/// The modification time Earthly gives what COPY and SAVE ARTIFACT copy without
/// `--keep-ts`: 2020-04-16T12:00:00Z.
const EARTHLY_MTIME: i64 = 1_587_038_400;

/// Files Earthly never sends as context (its implicit ignore).
const IMPLICIT_IGNORE: &[&str] = &[
    ".tmp-earthly-out/",
    "build.earth",
    "Earthfile",
    ".earthignore",
    ".earthlyignore",
];

impl Lowerer<'_> {
    /// The Earthfile of folder `dir`, read once.
    fn project(&mut self, dir: &Path) -> Result<Arc<Project>> {
        // Checked before the file system is asked, so that a satellite's refusal
        // names no path of its own.
        if self.outside_sent(&lexical_clean(dir)) {
            return Err(outside_error());
        }
        let dir = std::fs::canonicalize(dir).map_err(|e| {
            BuildError::Invalid(format!("folder {}: {e}", self.shown(&lexical_clean(dir))))
        })?;
        if let Some(p) = self.projects.get(&dir) {
            return Ok(p.clone());
        }
        if self.outside_sent(&dir) {
            return Err(outside_error());
        }
        let file = dir.join("Earthfile");
        let text = std::fs::read_to_string(&file).map_err(|e| {
            BuildError::Invalid(format!(
                "read {}: {e}; a target reference names a folder with an Earthfile",
                self.shown(&file)
            ))
        })?;
        let reference = match (self.remote_names.get(&dir), dir.strip_prefix(&self.root)) {
            (Some(r), _) => r.clone(),
            (None, Ok(rel)) if rel.as_os_str().is_empty() => String::new(),
            (None, Ok(rel)) => format!("./{}", rel.display()),
            (None, Err(_)) => dir.display().to_string(),
        };
        let name = if reference.is_empty() {
            "Earthfile".to_string()
        } else {
            format!("{}/Earthfile", reference.trim_start_matches("./"))
        };
        let ef = Earthfile::parse(&name, &text)?;
        let mut exclude: Vec<String> = Vec::new();
        for f in [".earthlyignore", ".earthignore"] {
            if let Ok(t) = std::fs::read_to_string(dir.join(f)) {
                exclude.extend(Ignore::parse(&t).patterns());
            }
        }
        // Earthly ignores these only in an Earthfile without VERSION (0.5 and
        // before); --no-implicit-ignore is on from VERSION 0.6.
        let implicit = !ef.feature("no-implicit-ignore");
        if implicit {
            exclude.extend(IMPLICIT_IGNORE.iter().map(|s| s.to_string()));
        }
        let ctx_name = if reference.is_empty() {
            "context".to_string()
        } else {
            format!("earthfile:{reference}")
        };
        self.contexts.insert(ctx_name.clone(), dir.clone());
        let context = State::local(LocalSource {
            name: ctx_name,
            exclude,
        });
        let mut imports = HashMap::new();
        let mut all: Vec<&Command> = Vec::new();
        collect_commands(&ef.base, &mut all);
        for t in &ef.targets {
            collect_commands(&t.body, &mut all);
        }
        for c in all.into_iter().filter(|c| c.name == "IMPORT") {
            let alias = match (c.args.get(1), c.args.get(2)) {
                (Some(a), Some(alias)) if a.text == "AS" => Some(alias.text.as_str()),
                (None, None) => None,
                _ => {
                    return Err(src_err(
                        &Project {
                            ef: ef.clone(),
                            dir: dir.clone(),
                            reference: reference.clone(),
                            context: context.clone(),
                            imports: HashMap::new(),
                            git: std::sync::OnceLock::new(),
                        },
                        c.pos,
                        "IMPORT takes a reference and optionally AS <alias>",
                    ));
                }
            };
            // One with variables is added when it runs (Earthly expands them).
            if c.args.iter().any(|a| a.text.contains('$')) {
                continue;
            }
            let (alias, target) = import_entry(&dir, &c.args[0].text, alias);
            imports.insert(alias, target);
        }
        let p = Arc::new(Project {
            ef,
            dir: dir.clone(),
            reference,
            context,
            imports,
            git: std::sync::OnceLock::new(),
        });
        self.projects.insert(dir, p.clone());
        Ok(p)
    }

    /// `p` for messages: on a satellite, relative to the folder its client sent (its
    /// own paths mean nothing to the client).
    fn shown(&self, p: &Path) -> String {
        match p.strip_prefix(&self.root) {
            Ok(rel) if self.opts.satellite => format!("./{}", rel.display()),
            _ => p.display().to_string(),
        }
    }

    /// On a satellite, whether canonical path `p` is outside what the client sent (and
    /// outside remote checkouts): the satellite's own files are not the build's.
    fn outside_sent(&self, p: &Path) -> bool {
        self.opts.satellite
            && !p.starts_with(&self.root)
            && !self.remote_names.keys().any(|d| p.starts_with(d))
            && !(self.opts.git_cache.as_ref()).is_some_and(|g| p.starts_with(g))
    }

    /// The folder of remote project `r` (`host/org/repo[/path][:ref]`), checked out
    /// once per commit under [`EarthOptions::git_cache`]. The repository is
    /// `https://host/org/repo.git`; git's `url.<base>.insteadOf` points it elsewhere
    /// (ssh, a mirror), as for any git client.
    fn fetch_remote(&mut self, r: &str) -> std::result::Result<PathBuf, String> {
        let cache = self
            .opts
            .git_cache
            .clone()
            .ok_or_else(|| format!("{r}: remote references need a git cache"))?;
        let slash = r.find('/').unwrap_or(0);
        let (path, gitref) = match r.rfind(':') {
            Some(i) if i > slash => (&r[..i], Some(&r[i + 1..])),
            _ => (r, None),
        };
        let parts: Vec<&str> = path.split('/').collect();
        let url = format!("https://{}/{}/{}.git", parts[0], parts[1], parts[2]);
        let sub = parts[3..].join("/");
        let wanted = gitref.unwrap_or("HEAD");
        let commit = if wanted.len() == 40 && wanted.chars().all(|c| c.is_ascii_hexdigit()) {
            wanted.to_string()
        } else {
            let listed =
                run_git(&["ls-remote", &url, wanted], None).map_err(|e| format!("{r}: {e}"))?;
            listed
                .lines()
                .find(|l| {
                    let name = l.split_whitespace().nth(1).unwrap_or("");
                    name == wanted
                        || name == format!("refs/heads/{wanted}")
                        || name == format!("refs/tags/{wanted}")
                })
                .and_then(|l| l.split_whitespace().next())
                .map(str::to_string)
                .ok_or_else(|| format!("{r}: {url} has no branch or tag {wanted}"))?
        };
        let checkout = cache.join(&commit);
        if !checkout.join(".git").is_dir() {
            std::fs::create_dir_all(&cache)
                .map_err(|e| format!("create {}: {e}", cache.display()))?;
            let tmp = cache.join(format!(".{commit}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&tmp);
            let tmp_s = tmp.display().to_string();
            run_git(&["clone", "--quiet", "--no-checkout", &url, &tmp_s], None)
                .and_then(|_| run_git(&["checkout", "--quiet", &commit], Some(&tmp)))
                .map_err(|e| {
                    let _ = std::fs::remove_dir_all(&tmp);
                    format!("{r}: {e}")
                })?;
            if std::fs::rename(&tmp, &checkout).is_err() {
                // Another build checked it out meanwhile.
                let _ = std::fs::remove_dir_all(&tmp);
            }
        }
        let dir = std::fs::canonicalize(checkout.join(&sub))
            .map_err(|e| format!("{r}: folder {sub:?} of {url} at {commit}: {e}"))?;
        let label = match gitref {
            Some(g) => format!("{path}:{g}"),
            None => path.to_string(),
        };
        self.remote_names.insert(dir.clone(), label);
        Ok(dir)
    }

    /// The folder and name of a reference `text` (`+t`, `./d+t`, `alias+t`) written in
    /// `proj` at `pos`.
    fn resolve_ref(
        &mut self,
        ts: &Ts,
        proj: &Arc<Project>,
        text: &str,
        pos: Pos,
    ) -> Result<(Arc<Project>, String)> {
        let (p, name) = ref_plus(text)
            .map(|i| (unescape_plus(&text[..i]), &text[i + 1..]))
            .ok_or_else(|| {
                src_err(
                    proj,
                    pos,
                    format!(
                        "{text:?} is not a target reference (+target, ./dir+target, alias+target)"
                    ),
                )
            })?;
        let p = p.as_str();
        if p.is_empty() {
            return Ok((proj.clone(), name.to_string()));
        }
        let p = import_of(ts, proj, p).unwrap_or(p);
        let dir = if is_local_ref(p) {
            proj.dir.join(p)
        } else if is_remote_ref(p) {
            self.fetch_remote(p).map_err(|m| src_err(proj, pos, m))?
        } else {
            return Err(src_err(
                proj,
                pos,
                format!("{p} is not an IMPORT alias of this Earthfile"),
            ));
        };
        let target = self
            .project(&dir)
            .map_err(|e| src_err(proj, pos, format!("{text}: {e}")))?;
        Ok((target, name.to_string()))
    }

    /// Lower target `name` of `proj` with ARG `overrides` (once per set of values);
    /// `at` is the command that asked for it, for errors. `via_build`: asked for by
    /// BUILD (or invoked), so connected to the invoked target when the asking one is:
    /// its EARTHLY_PUSH is `--push`'s value, as in Earthly (false through FROM and COPY).
    fn target(
        &mut self,
        proj: &Arc<Project>,
        name: &str,
        overrides: BTreeMap<String, String>,
        at: Option<(&Arc<Project>, Pos)>,
        via_build: bool,
    ) -> Result<usize> {
        let label = format!("{}+{name}", proj.reference);
        let connected = self.connected && via_build;
        let pushing = self.opts.push && connected;
        let key = format!(
            "{}+{name} {overrides:?} {}{}",
            proj.dir.display(),
            self.platform,
            if pushing { " pushing" } else { "" }
        );
        if let Some(&i) = self.memo.get(&key) {
            return Ok(i);
        }
        if self.active.iter().any(|(k, _)| *k == key) {
            let chain: Vec<&str> = self
                .active
                .iter()
                .skip_while(|(k, _)| *k != key)
                .map(|(_, l)| l.as_str())
                .chain(std::iter::once(label.as_str()))
                .collect();
            let msg = format!("cycle: {}", chain.join(" -> "));
            return Err(match at {
                Some((p, pos)) => src_err(p, pos, msg),
                None => BuildError::Invalid(msg),
            });
        }
        // `+base` is the base recipe, unless a target has that name.
        let body = match proj.ef.target(name) {
            Some(recipe) => recipe.body.clone(),
            None if name == "base" => Vec::new(),
            None => {
                let names: Vec<&str> = proj.ef.targets.iter().map(|t| t.name.as_str()).collect();
                let msg = format!(
                    "target {label} not found in {}; its targets are: {}",
                    proj.ef.source.name(),
                    names.join(", ")
                );
                return Err(match at {
                    Some((p, pos)) => src_err(p, pos, msg),
                    None => BuildError::Invalid(msg),
                });
            }
        };
        self.active.push((key.clone(), label.clone()));
        // The target's commands set the command platform as they go; the command that
        // referenced it gets its own back.
        let outer = self.platform.clone();
        let outer_connected = std::mem::replace(&mut self.connected, connected);
        let result = (|| -> Result<Ts> {
            let mut ts = self.base(proj, &overrides)?;
            ts.label = label.clone();
            ts.name = name.to_string();
            ts.is_base = false;
            self.platform = ts.platform.clone();
            match self.stmts(&mut ts, proj, &body) {
                Ok(()) => Ok(ts),
                // Earthly's error names each target it was in, with its ARGs.
                Err(BuildError::Source(mut e)) => {
                    e.push_frame(ts.frame());
                    Err(BuildError::Source(e))
                }
                Err(e) => Err(e),
            }
        })();
        self.platform = outer;
        self.connected = outer_connected;
        self.active.pop();
        let mut ts = result?;
        if ts.pre_push.is_none() {
            // The CACHE --persist folders go into what FROM +t and SAVE IMAGE see.
            (ts.state, ts.config, ts.hist) = self.persisted(&ts);
        }
        let (state, push_state) = match &ts.pre_push {
            Some(pre) => (pre.clone(), Some(ts.state.clone())),
            None => (ts.state.clone(), None),
        };
        let shown = if overrides.is_empty() {
            label
        } else {
            let args: Vec<String> = overrides
                .iter()
                .map(|(k, v)| format!("--{k}={v}"))
                .collect();
            format!("{label} {}", args.join(" "))
        };
        self.targets.push(TargetOut {
            label: shown,
            state,
            config: ts.config,
            history_states: ts.hist,
            artifact: ts.artifact,
            images: ts.images,
            locals: ts.locals,
            builds: ts.builds,
            push_state,
            saved: ts.saved,
            hosts: ts.hosts,
            platform: ts.platform,
        });
        let idx = self.targets.len() - 1;
        self.memo.insert(key, idx);
        Ok(idx)
    }

    /// The base recipe of `proj` lowered with `overrides`: where every target starts.
    fn base(&mut self, proj: &Arc<Project>, overrides: &BTreeMap<String, String>) -> Result<Ts> {
        let config = scratch_config(&self.platform);
        let mut ts = Ts {
            label: format!("{}+base", proj.reference),
            name: "base".into(),
            proj: proj.clone(),
            state: State::scratch(),
            config,
            hist: Vec::new(),
            vars: Vec::new(),
            globals: Vec::new(),
            overrides: overrides.clone(),
            artifact: State::scratch(),
            saved: Vec::new(),
            images: Vec::new(),
            locals: Vec::new(),
            builds: Vec::new(),
            caches: Vec::new(),
            persist: Vec::new(),
            pre_push: None,
            is_base: true,
            locally: false,
            hosts: Vec::new(),
            declared: Vec::new(),
            platform: self.platform.clone(),
            imports: HashMap::new(),
        };
        let base = proj.ef.base.clone();
        self.stmts(&mut ts, proj, &base)?;
        if !ts.images.is_empty() || !ts.locals.is_empty() {
            // Earthly allows them, but they belong to no target's output.
            ts.images.clear();
            ts.locals.clear();
        }
        // A target sees the base's image and environment and its global ARGs only.
        let mut vars: Vec<Var> = ts
            .vars
            .iter()
            .filter(|v| v.kind == VarKind::Env)
            .cloned()
            .collect();
        vars.extend(ts.globals.iter().cloned());
        ts.vars = vars;
        ts.artifact = State::scratch();
        ts.saved.clear();
        ts.declared.clear();
        Ok(ts)
    }

    /// Run `body` (written in `proj`) on `ts`.
    fn stmts(&mut self, ts: &mut Ts, proj: &Arc<Project>, body: &[Stmt]) -> Result<()> {
        for s in body {
            if self.opts.cancel.is_canceled() {
                return Err(BuildError::Canceled);
            }
            if let Some(e) = &Command::of(s).invalid {
                return Err(BuildError::Source((**e).clone()));
            }
            match s {
                Stmt::Command(c)
                    if c.flags
                        .iter()
                        .any(|f| f.value.as_ref().is_some_and(|v| v.contains('$'))) =>
                {
                    let c = self.expand_flags(ts, proj, c)?;
                    self.command(ts, proj, &c)?
                }
                Stmt::Command(c) => self.command(ts, proj, c)?,
                Stmt::Wait { body, .. } => {
                    let (builds, locals) = (ts.builds.len(), ts.locals.len());
                    self.stmts(ts, proj, body)?;
                    self.wait_end(ts, builds, locals)?;
                }
                Stmt::If {
                    branches,
                    otherwise,
                } => {
                    let mut taken = None;
                    for (head, body) in branches {
                        if let Some(e) = &head.invalid {
                            return Err(BuildError::Source((**e).clone()));
                        }
                        // The condition is a shell command, run with the variables
                        // in scope; exit code 0 is true.
                        let (code, _) = self.capture(ts, proj, head, &head.rest)?;
                        if code == 0 {
                            taken = Some(body);
                            break;
                        }
                    }
                    if let Some(body) = taken.or(otherwise.as_ref()) {
                        self.stmts(ts, proj, body)?;
                    }
                }
                Stmt::For { head, body } => {
                    let var = head.args[0].text.clone();
                    let expr = head.rest[head.rest.find(" IN ").map_or(0, |i| i + 4)..].trim();
                    let list = self.x_text(ts, proj, expr, head.args[2].pos)?;
                    let seps: Vec<char> = match head.value("sep") {
                        Some(s) => s.chars().collect(),
                        None => vec![' ', '\t', '\n'],
                    };
                    for item in list.split(|c| seps.contains(&c)).filter(|i| !i.is_empty()) {
                        ts.set_var(&var, item.to_string(), VarKind::Arg);
                        self.stmts(ts, proj, body)?;
                    }
                }
                Stmt::WithDocker { head, .. } if ts.locally => {
                    return Err(not_supported(
                        proj,
                        head.pos,
                        "WITH DOCKER in a LOCALLY target",
                    ));
                }
                Stmt::WithDocker { head, body } => self.with_docker(ts, proj, head, body)?,
                Stmt::Try {
                    head,
                    body,
                    catch,
                    finally,
                } => {
                    let catch = catch.is_some();
                    self.try_finally(ts, proj, head, body, catch, finally.as_deref())?
                }
            }
        }
        Ok(())
    }

    /// The end of a `WAIT` block whose BUILDs are `ts.builds[builds..]` and whose
    /// `SAVE ARTIFACT … AS LOCAL`s are `ts.locals[locals..]`: in a target connected to
    /// the invoked one, the targets the BUILDs reach are built now, and those artifacts
    /// (and those of the targets the BUILDs connect) written on the host, before the
    /// next command (a `LOCALLY` RUN may read them), as Earthly does.
    fn wait_end(&mut self, ts: &mut Ts, builds: usize, locals: usize) -> Result<()> {
        if !self.connected {
            return Ok(());
        }
        let no_output = self.opts.no_output;
        let mut list: Vec<SavedLocal> = ts.locals[locals..]
            .iter()
            .filter(|l| !l.early && !no_output)
            .cloned()
            .collect();
        let mut states = Vec::new();
        let mut marks = Vec::new();
        let mut seen = HashSet::new();
        let mut stack: Vec<usize> = ts.builds[builds..].to_vec();
        while let Some(i) = stack.pop() {
            if !seen.insert(i) {
                continue;
            }
            states.push(self.targets[i].state.clone());
            for (j, l) in self.targets[i].locals.iter().enumerate() {
                if !l.early && !no_output {
                    list.push(l.clone());
                    marks.push((i, j));
                }
            }
            stack.extend(self.targets[i].builds.iter().copied());
        }
        if (states.is_empty() && list.is_empty())
            || !self.host.wait(&self.contexts, &states, &list)?
            || list.is_empty()
        {
            return Ok(());
        }
        for l in &list {
            let dest = PathBuf::from(&l.dest);
            if l.dest.ends_with('/') && !l.glob {
                self.written.insert(dest.join(&l.name), l.origin.clone());
            }
            self.written.insert(lexical_clean(&dest), l.origin.clone());
        }
        for l in &mut ts.locals[locals..] {
            l.early = true;
        }
        for (i, j) in marks {
            self.targets[i].locals[j].early = true;
        }
        Ok(())
    }

    /// Expand `w` with the variables of `ts`.
    fn x(&mut self, ts: &Ts, proj: &Project, w: &Word) -> Result<String> {
        self.x_text(ts, proj, &w.text, w.pos)
    }

    /// Expand `text` (written at `pos`) with the variables of `ts`; each `$( … )` is
    /// run in the container, and its output taken as it is.
    fn x_text(&mut self, ts: &Ts, proj: &Project, text: &str, pos: Pos) -> Result<String> {
        let mut outs: Vec<String> = Vec::new();
        let literal;
        let text = if text.contains("$(") && !shell_out_anywhere(proj) {
            // Earthly before 0.7 (no --shell-out-anywhere): only a value that is one
            // `$( … )` is run, and its failure is ignored; elsewhere `$(` is text.
            if let Some(cmd) = whole_shell_out(text) {
                let c = Command::synthetic("$( … )", pos, text);
                return Ok(self.capture(ts, proj, &c, &cmd)?.1);
            }
            literal = text.replace("$(", "\\$(");
            &literal
        } else {
            text
        };
        let text = if text.contains("$(") {
            let (rewritten, cmds) = shell_outs(text).map_err(|m| src_err(proj, pos, m))?;
            let c = Command::synthetic("$( … )", pos, text);
            for cmd in cmds {
                let (code, out) = self.capture(ts, proj, &c, &cmd)?;
                if code != 0 {
                    return Err(src_err(
                        proj,
                        pos,
                        format!("$({cmd}) exited with code {code}"),
                    ));
                }
                outs.push(out);
            }
            rewritten
        } else {
            text.to_string()
        };
        expand(
            &text,
            |k| match k.strip_prefix(SHELL_OUT) {
                Some(n) => n.parse::<usize>().ok().and_then(|n| outs.get(n).cloned()),
                None => ts.lookup(k),
            },
            '\\',
        )
        .map_err(|e| src_err(proj, pos, e.to_string()))
    }

    /// `w` expanded keeping its `\+` escapes (Earthly's keepPlusEscape), for words that
    /// may be references: a `\+` is no reference's `+`.
    fn x_ref(&mut self, ts: &Ts, proj: &Project, text: &str, pos: Pos) -> Result<String> {
        self.x_text(ts, proj, &text.replace("\\+", "\\\\+"), pos)
    }

    /// `--NAME=value` words after a reference, expanded.
    fn ref_args(
        &mut self,
        ts: &Ts,
        proj: &Project,
        words: &[Word],
    ) -> Result<BTreeMap<String, String>> {
        Ok(self.ref_arg_list(ts, proj, words)?.into_iter().collect())
    }

    /// `--NAME=value` words after a reference, expanded, in order (a name may repeat).
    fn ref_arg_list(
        &mut self,
        ts: &Ts,
        proj: &Project,
        words: &[Word],
    ) -> Result<Vec<(String, String)>> {
        let mut out = Vec::new();
        let mut it = words.iter().peekable();
        while let Some(w) = it.next() {
            // Before 0.7 the value of `--NAME=$(cmd)` is a whole shell-out: expanded
            // on its own.
            if !shell_out_anywhere(proj)
                && let Some((k, v)) = w.text.strip_prefix("--").and_then(|kv| kv.split_once('='))
                && k.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '$' | '{' | '}'))
            {
                let k = self.x_text(ts, proj, k, w.pos)?;
                if !k.contains('=') {
                    out.push((k, self.x_text(ts, proj, v, w.pos)?));
                    continue;
                }
            }
            let text = self.x(ts, proj, w)?;
            // Earthly also takes `--NAME value`.
            if let Some(k) = text.strip_prefix("--").filter(|k| !k.contains('='))
                && !k.is_empty()
                && let Some(v) = it.next_if(|n| !n.text.starts_with("--"))
            {
                out.push((k.to_string(), self.x(ts, proj, v)?));
                continue;
            }
            let Some((k, v)) = text.strip_prefix("--").and_then(|kv| kv.split_once('=')) else {
                return Err(src_err(
                    proj,
                    w.pos,
                    format!("{text:?}: arguments after a target reference are --NAME=value"),
                ));
            };
            out.push((k.to_string(), v.to_string()));
        }
        Ok(out)
    }

    /// Record a history entry for `c` that made `made` (or only changed the config).
    fn history(&self, ts: &mut Ts, c: &Command, made: Option<State>) {
        ts.config.history.push(History {
            created: self.opts.created.clone(),
            created_by: c.text.clone(),
            empty_layer: made.is_none(),
            comment: "berth earthfile".into(),
        });
        if let Some(s) = &made {
            ts.state = s.clone();
        }
        ts.hist.push(made);
    }

    fn step_name(ts: &Ts, c: &Command) -> String {
        format!("[{}] {}", ts.label, c.text.lines().next().unwrap_or(""))
    }

    /// `c` with its flags' values expanded (`--privileged=$P`, `--chmod=$MODE`), as
    /// Earthly does; a boolean flag's must then be true or false.
    fn expand_flags(&mut self, ts: &Ts, proj: &Arc<Project>, c: &Command) -> Result<Command> {
        let mut c = c.clone();
        let spec = super::ast::spec(&c.name);
        for f in &mut c.flags {
            let Some(v) = &f.value else { continue };
            // A mount's words are expanded by its own parser.
            if !v.contains('$') || f.name == "mount" {
                continue;
            }
            let x = self.x_text(ts, proj, v, f.pos)?;
            // Go's strconv.ParseBool, which Earthly's flags use.
            let x = match x.as_str() {
                "1" | "t" | "T" | "TRUE" | "True" => "true".to_string(),
                "0" | "f" | "F" | "FALSE" | "False" => "false".to_string(),
                _ => x,
            };
            let boolean = spec.is_some_and(|s| {
                s.flags
                    .iter()
                    .any(|(k, kind)| *k == f.name && *kind == super::ast::FlagKind::Bool)
            });
            if boolean && x != "true" && x != "false" {
                return Err(src_err(
                    proj,
                    f.pos,
                    format!(
                        "--{}={v}: invalid argument for flag --{}: expected bool, got {x:?}",
                        f.name, f.name
                    ),
                ));
            }
            f.value = Some(x);
        }
        Ok(c)
    }

    fn command(&mut self, ts: &mut Ts, proj: &Arc<Project>, c: &Command) -> Result<()> {
        self.platform = self.platform_of(ts, proj, c)?;
        if ts.pre_push.is_some()
            && !matches!(
                c.name.as_str(),
                "RUN" | "SAVE IMAGE" | "ARG" | "LET" | "SET"
            )
        {
            return Err(src_err(
                proj,
                c.pos,
                format!("{} after RUN --push is not supported by berth yet", c.name),
            ));
        }
        if ts.locally
            && !matches!(
                c.name.as_str(),
                "RUN"
                    | "COPY"
                    | "SAVE ARTIFACT"
                    | "ARG"
                    | "LET"
                    | "SET"
                    | "BUILD"
                    | "DO"
                    | "IMPORT"
                    | "PROJECT"
                    | "FROM"
                    | "FROM DOCKERFILE"
                    | "LOCALLY"
                    | "WORKDIR"
                    | "ENV"
                    // Earthly takes these too; they change no host command.
                    | "LABEL"
                    | "EXPOSE"
                    | "CMD"
                    | "ENTRYPOINT"
                    | "VOLUME"
            )
        {
            return Err(hint_err(
                proj,
                c.pos,
                format!("{} is not allowed in a LOCALLY target", c.name),
                LOCALLY_HINT,
            ));
        }
        match c.name.as_str() {
            "FROM" => self.from(ts, proj, c),
            "RUN" => self.run_step(ts, proj, c, None),
            "COPY" => self.copy(ts, proj, c),
            "ARG" => self.arg(ts, proj, c),
            "LET" | "SET" => {
                let text = self.x(ts, proj, &c.args[0])?;
                let (k, v) = text.split_once('=').ok_or_else(|| {
                    src_err(proj, c.args[0].pos, format!("{} needs NAME=value", c.name))
                })?;
                let existing = ts.vars.iter().rev().find(|v| v.name == k).map(|v| v.kind);
                // As Earthly: LET may shadow an ARG; SET changes a LET only.
                match (c.name.as_str(), existing) {
                    ("SET", Some(VarKind::Let))
                    | ("LET", None | Some(VarKind::Env | VarKind::Arg)) => {}
                    ("SET", Some(VarKind::Arg)) => {
                        return Err(hint_err(
                            proj,
                            c.args[0].pos,
                            format!("SET {k}: {k} is an ARG"),
                            format!(
                                "'{k}' is an ARG and cannot be used with SET - try declaring 'LET {k} = ${k}' first"
                            ),
                        ));
                    }
                    ("SET", _) => {
                        return Err(hint_err(
                            proj,
                            c.args[0].pos,
                            format!("SET {k}: {k} was not declared with LET"),
                            format!(
                                "'{k}' needs to be declared with 'LET {k} = someValue' before it can be used with SET"
                            ),
                        ));
                    }
                    _ => {
                        return Err(src_err(
                            proj,
                            c.args[0].pos,
                            format!("LET {k}: {k} is already declared; change it with SET"),
                        ));
                    }
                }
                ts.set_var(k, v.to_string(), VarKind::Let);
                Ok(())
            }
            "ENV" => {
                let pairs: Vec<(String, String)> = match c.args.as_slice() {
                    [k, ..] if !k.text.contains('=') => {
                        let rest = c.rest[k.text.len()..].trim();
                        vec![(
                            self.x(ts, proj, k)?,
                            self.x_text(ts, proj, rest, c.args[1.min(c.args.len() - 1)].pos)?,
                        )]
                    }
                    words => {
                        let mut out = Vec::new();
                        for w in words {
                            let t = self.x(ts, proj, w)?;
                            let (k, v) = t.split_once('=').unwrap_or((&t, ""));
                            out.push((k.to_string(), v.to_string()));
                        }
                        out
                    }
                };
                for (k, v) in pairs {
                    ts.config.config.env_set(&k, &v);
                    ts.set_var(&k, v, VarKind::Env);
                }
                self.history(ts, c, None);
                Ok(())
            }
            "WORKDIR" => {
                let p = self.x(ts, proj, &c.args[0])?;
                let abs = ts.abs(&p).trim_end_matches('/').to_string();
                let abs = if abs.is_empty() { "/".to_string() } else { abs };
                ts.config.config.working_dir = abs.clone();
                if ts.locally {
                    // The host folder the next commands run in (made when one runs).
                    return Ok(());
                }
                let user = ts.config.config.user.clone();
                let op = FileOp {
                    actions: vec![FileAction::Mkdir {
                        path: abs,
                        chown: (!user.is_empty()).then_some(user),
                    }],
                    cwd: "/".into(),
                };
                let made = ts
                    .state
                    .file(op, vec![], Self::step_name(ts, c))
                    .with_ignore_cache(self.opts.no_cache);
                self.history(ts, c, Some(made));
                Ok(())
            }
            "USER" => {
                ts.config.config.user = self.x(ts, proj, &c.args[0])?;
                self.history(ts, c, None);
                Ok(())
            }
            "EXPOSE" => {
                for w in &c.args {
                    let p = self.x(ts, proj, w)?;
                    for p in p.split_whitespace() {
                        for key in exposed_ports(p).map_err(|m| src_err(proj, w.pos, m))? {
                            ts.config
                                .config
                                .exposed_ports
                                .insert(key, serde_json::json!({}));
                        }
                    }
                }
                self.history(ts, c, None);
                Ok(())
            }
            "VOLUME" => {
                let words: Vec<String> = match CommandLine::parse(&c.rest) {
                    CommandLine::Exec(l) => l,
                    CommandLine::Shell(_) => c
                        .args
                        .iter()
                        .map(|w| self.x(ts, proj, w))
                        .collect::<Result<_>>()?,
                };
                for p in words {
                    ts.config.config.volumes.insert(p, serde_json::json!({}));
                }
                self.history(ts, c, None);
                Ok(())
            }
            "LABEL" => {
                for w in &c.args {
                    let t = self.x(ts, proj, w)?;
                    let (k, v) = t.split_once('=').ok_or_else(|| {
                        src_err(proj, w.pos, format!("LABEL {t:?}: write key=value"))
                    })?;
                    if k.starts_with("dev.earthly.") {
                        return Err(src_err(
                            proj,
                            w.pos,
                            format!(
                                "LABEL {k}: LABEL keys starting with \"dev.earthly.\" are reserved"
                            ),
                        ));
                    }
                    ts.config.config.labels.insert(k.to_string(), v.to_string());
                }
                self.history(ts, c, None);
                Ok(())
            }
            "CMD" | "ENTRYPOINT" => {
                let list = command_list(&CommandLine::parse(&c.rest), &ts.config.config);
                if c.name == "CMD" {
                    ts.config.config.cmd = Some(list);
                } else {
                    ts.config.config.entrypoint = Some(list);
                    ts.config.config.cmd = None;
                }
                self.history(ts, c, None);
                Ok(())
            }
            "HEALTHCHECK" => {
                // Earthly also takes `--interval 15s`; the Dockerfile parser wants `=`.
                let flags: String = c
                    .flags
                    .iter()
                    .map(|f| format!("--{}={} ", f.name, f.value.as_deref().unwrap_or("")))
                    .collect();
                let df = crate::Dockerfile::parse(
                    proj.ef.source.name(),
                    &format!("FROM scratch\nHEALTHCHECK {flags}{}\n", c.rest),
                )
                .map_err(|e| src_err(proj, c.pos, e.message))?;
                if let Some(InstructionKind::Healthcheck(h)) =
                    df.stages[0].instructions.first().map(|i| &i.kind)
                {
                    ts.config.config.healthcheck = Some(healthcheck(h));
                }
                self.history(ts, c, None);
                Ok(())
            }
            "SAVE ARTIFACT" => self.save_artifact(ts, proj, c),
            "SAVE IMAGE" => {
                // berth labels no image dev.earthly.*, so the flag only has to be allowed.
                if let Some(pos) = c.flag_pos("without-earthly-labels")
                    && !proj.ef.feature("allow-without-earthly-labels")
                {
                    return Err(src_err(
                        proj,
                        pos,
                        "the SAVE IMAGE --without-earthly-labels flag must be enabled with the \
                         VERSION --allow-without-earthly-labels feature flag",
                    ));
                }
                let mut names = Vec::new();
                for w in &c.args {
                    names.push(self.x(ts, proj, w)?);
                }
                let (state, config, history_states) = self.persisted(ts);
                ts.images.push(SavedImage {
                    names,
                    push: c.flag("push"),
                    push_only: ts.pre_push.is_some(),
                    state,
                    config,
                    history_states,
                });
                Ok(())
            }
            "BUILD" => {
                let r = self.x_ref(ts, proj, &c.args[0].text, c.args[0].pos)?;
                for r in self.wildcard_targets(proj, &r, c.args[0].pos)? {
                    for idx in self.referenced_targets(ts, proj, c, &r, true)? {
                        if !ts.builds.contains(&idx) {
                            ts.builds.push(idx);
                        }
                    }
                }
                Ok(())
            }
            "DO" => self.call(ts, proj, c),
            "IMPORT" => {
                // The ones without variables are known from the start (Project::imports).
                if c.args.iter().any(|a| a.text.contains('$')) {
                    let r = self.x(ts, proj, &c.args[0])?;
                    let alias = c.args.get(2).map(|a| self.x(ts, proj, a)).transpose()?;
                    let (alias, target) = import_entry(&proj.dir, &r, alias.as_deref());
                    ts.imports.insert((proj.dir.clone(), alias), target);
                }
                Ok(())
            }
            "PROJECT" => Ok(()),
            "CACHE" => {
                let p = self.x(ts, proj, &c.args[0])?;
                let target = ts.abs(&p);
                // Earthly 0.8 (`--cache-persist-option`) keeps a CACHE folder's contents
                // in the image only with --persist; before, always.
                let persist_option = proj.ef.feature("cache-persist-option");
                let persist = if persist_option {
                    c.flag("persist")
                } else if let Some(pos) = c.flag_pos("persist") {
                    return Err(src_err(
                        proj,
                        pos,
                        "CACHE --persist needs VERSION 0.8 (or VERSION --cache-persist-option)",
                    ));
                } else {
                    true
                };
                ts.persist.retain(|t| *t != target);
                if persist {
                    ts.persist.push(target.clone());
                }
                let sharing = match c.value("sharing") {
                    None | Some("locked") => Sharing::Locked,
                    Some("shared") => Sharing::Shared,
                    Some("private") => Sharing::Private,
                    Some(o) => {
                        return Err(src_err(
                            proj,
                            c.flag_pos("sharing").unwrap_or(c.pos),
                            format!("--sharing={o}: use locked, shared or private"),
                        ));
                    }
                };
                // Earthly makes a new CACHE folder 0644.
                let mode = match c.value("chmod") {
                    None => Some(0o644),
                    Some(m) => Some(u32::from_str_radix(m, 8).map_err(|_| {
                        src_err(proj, c.pos, format!("--chmod={m} is not an octal mode"))
                    })?),
                };
                let id = match c.value("id") {
                    Some(id) => id.to_string(),
                    None => format!("earthly:{}+{}:{target}", proj.dir.display(), ts.name),
                };
                ts.caches.retain(|m| m.target != target);
                ts.caches.push(ExecMount {
                    target,
                    source: MountSource::Cache {
                        id,
                        sharing,
                        owner: mode.map(|m| (0, 0, m)),
                        seed: None,
                        readonly: false,
                    },
                });
                Ok(())
            }
            "GIT CLONE" => {
                let url = self.x(ts, proj, &c.args[0])?;
                let dest = ts.abs(&self.x(ts, proj, &c.args[1])?);
                let branch = c
                    .value("branch")
                    .map(|b| self.x_text(ts, proj, b, c.pos))
                    .transpose()?;
                let git = State::new(
                    Op::Git(GitSource {
                        remote: url.clone(),
                        reference: branch,
                        subdir: None,
                        keep_git_dir: true,
                        origin: format!("{}:{}", proj.ef.source.name(), c.pos.line),
                    }),
                    vec![],
                    format!("git {url}"),
                );
                let op = FileOp {
                    actions: vec![copy_action(1, vec![".".into()], format!("{dest}/"), None)],
                    cwd: ts.cwd(),
                };
                let made = ts
                    .state
                    .file(op, vec![git], Self::step_name(ts, c))
                    .with_ignore_cache(self.opts.no_cache);
                self.history(ts, c, Some(made));
                Ok(())
            }
            "FROM DOCKERFILE" => self.dockerfile_base(ts, proj, c),
            "LOCALLY" => self.locally(ts, proj, c),
            "HOST" => {
                // As Earthly: a line in /etc/hosts for this target's later RUNs (and
                // of targets built FROM it), never in the image.
                let [name, addr] = &c.args[..] else {
                    return Err(hint_err(
                        proj,
                        c.pos,
                        "invalid number of arguments for HOST",
                        "usage: HOST <hostname> <ip>",
                    ));
                };
                let name = self.x(ts, proj, name)?;
                let addr = self.x(ts, proj, addr)?;
                let host = ir::parse_extra_host(&format!("{name}={addr}")).map_err(|m| {
                    let why = m.split_once(": ").map_or(m.as_str(), |(_, why)| why);
                    src_err(
                        proj,
                        c.pos,
                        format!("HOST {name} {addr}: invalid HOST ip: {why}"),
                    )
                })?;
                ts.hosts.retain(|(n, _)| *n != host.0);
                ts.hosts.push(host);
                Ok(())
            }
            // Earthly's words: only a function's first command may be one.
            "FUNCTION" | "COMMAND" => Err(src_err(
                proj,
                c.pos,
                format!("command {} not allowed in a target definition", c.name),
            )),
            other => Err(src_err(proj, c.pos, format!("{other} is not allowed here"))),
        }
    }

    /// The target `r` names in `FROM`/`BUILD` command `c` (its first argument), lowered
    /// with the `--ARG=v` words after it, `--build-arg`s and, with `--pass-args`, the
    /// caller's ARGs.
    fn referenced_target(
        &mut self,
        ts: &Ts,
        proj: &Arc<Project>,
        c: &Command,
        r: &str,
    ) -> Result<usize> {
        let all = self.referenced_targets(ts, proj, c, r, false)?;
        Ok(all[0])
    }

    /// As [`Self::referenced_target`]; with `matrix`, an ARG given several values
    /// (`BUILD +t --X=a --X=b`) builds the target once per value, every combination
    /// of such ARGs, as Earthly's BUILD does. Without, the last value counts.
    fn referenced_targets(
        &mut self,
        ts: &Ts,
        proj: &Arc<Project>,
        c: &Command,
        r: &str,
        matrix: bool,
    ) -> Result<Vec<usize>> {
        let base = ts.passed_args(c.flag("pass-args"), ref_plus(r) == Some(0));
        let mut grouped: Vec<(String, Vec<String>)> = Vec::new();
        // The `--NAME=value`s after the reference, then the `--build-arg`s: one
        // matrix in BUILD (Earthly's BuildArgMatrix), the last value elsewhere.
        let mut given = self.ref_arg_list(ts, proj, &c.args[1..])?;
        given.extend(self.build_arg_list(ts, proj, c)?);
        for (k, v) in given {
            match grouped.iter_mut().find(|(n, _)| *n == k) {
                Some((_, vals)) if matrix => vals.push(v),
                Some((_, vals)) => *vals = vec![v],
                None => grouped.push((k, vec![v])),
            }
        }
        let mut combos = vec![base];
        for (k, vals) in grouped {
            let mut next = Vec::with_capacity(combos.len() * vals.len());
            for m in &combos {
                for v in &vals {
                    let mut m = m.clone();
                    m.insert(k.clone(), v.clone());
                    next.push(m);
                }
            }
            combos = next;
        }
        let (tp, name) = self.resolve_ref(ts, proj, r, c.args[0].pos)?;
        let mut out = Vec::new();
        for args in combos {
            // BUILD passes --push on (EARTHLY_PUSH); FROM does not.
            out.push(self.target(&tp, &name, args, Some((proj, c.args[0].pos)), matrix)?);
        }
        Ok(out)
    }

    /// Earthly's wildcard BUILD (`BUILD ./dir/*+t`): one reference per folder the
    /// local path's wildcards match whose Earthfile has target `t` (folders without an
    /// Earthfile, or without that target, are skipped, as Earthly's
    /// `expandWildcardTargets`); `r` itself when its path has no wildcard.
    fn wildcard_targets(&mut self, proj: &Arc<Project>, r: &str, pos: Pos) -> Result<Vec<String>> {
        let Some((path, name)) = ref_plus(r).map(|i| (&r[..i], &r[i + 1..])) else {
            return Ok(vec![r.to_string()]);
        };
        if !is_local_ref(path) || !Pattern::new(path).has_wildcards() {
            return Ok(vec![r.to_string()]);
        }
        if path.contains("**") {
            return Err(src_err(
                proj,
                pos,
                format!("{r}: globstar (**) pattern not yet supported, as in Earthly"),
            ));
        }
        let mut out = Vec::new();
        for rel in glob_dirs(&proj.dir, path) {
            let dir = proj.dir.join(&rel);
            if !dir.join("Earthfile").is_file() {
                continue;
            }
            let found = self
                .project(&dir)
                .map_err(|e| src_err(proj, pos, format!("{r}: {e}")))?;
            if found.ef.target(name).is_some() {
                out.push(format!("./{}+{name}", rel.display()));
            }
        }
        Ok(out)
    }

    /// The platform of command `c` of `ts`: its `--platform`, else the target's.
    fn platform_of(&mut self, ts: &Ts, proj: &Project, c: &Command) -> Result<Platform> {
        let Some(p) = c.value("platform") else {
            return Ok(ts.platform.clone());
        };
        let p = self.x_text(ts, proj, p, c.pos)?;
        Platform::parse(&p).map_err(|m| {
            src_err(
                proj,
                c.flag_pos("platform").unwrap_or(c.pos),
                format!("--platform: {m}"),
            )
        })
    }

    /// The deprecated `--build-arg K=V` flags.
    fn build_args(
        &mut self,
        ts: &Ts,
        proj: &Project,
        c: &Command,
    ) -> Result<BTreeMap<String, String>> {
        Ok(self.build_arg_list(ts, proj, c)?.into_iter().collect())
    }

    /// `--build-arg NAME=value`s, expanded, in order (a name may repeat). The value is
    /// expanded on its own, so that before VERSION 0.7 a value that is one `$( … )`
    /// runs, as `--NAME=$( … )` does.
    fn build_arg_list(
        &mut self,
        ts: &Ts,
        proj: &Project,
        c: &Command,
    ) -> Result<Vec<(String, String)>> {
        let mut out = Vec::new();
        for v in c.values("build-arg") {
            let (k, v) = match v.split_once('=') {
                Some((k, v)) if !k.contains('$') => {
                    (k.to_string(), self.x_ref(ts, proj, v, c.pos)?)
                }
                _ => {
                    let t = self.x_ref(ts, proj, v, c.pos)?;
                    match t.split_once('=') {
                        Some((k, v)) => (k.to_string(), v.to_string()),
                        // `--build-arg NAME`: its value here, as Earthly's parseArg.
                        None => {
                            let v = ts.lookup(&t).ok_or_else(|| {
                                src_err(
                                    proj,
                                    c.flag_pos("build-arg").unwrap_or(c.pos),
                                    format!(
                                        "value not specified for build arg {t} and no value \
                                         can be inferred"
                                    ),
                                )
                            })?;
                            (t, v)
                        }
                    }
                }
            };
            out.push((k, v));
        }
        Ok(out)
    }

    fn from(&mut self, ts: &mut Ts, proj: &Arc<Project>, c: &Command) -> Result<()> {
        let r = self.x_ref(ts, proj, &c.args[0].text, c.args[0].pos)?;
        let mut hosts = Vec::new();
        // The target is for the platform of what it starts from from here on.
        let mut platform = self.platform.clone();
        let (state, mut config, hist) = if ref_plus(&r).is_some() {
            let idx = self.referenced_target(ts, proj, c, &r)?;
            let t = &self.targets[idx];
            hosts = t.hosts.clone();
            platform = t.platform.clone();
            (t.state.clone(), t.config.clone(), t.history_states.clone())
        } else {
            if c.args.len() > 1 {
                return Err(src_err(
                    proj,
                    c.args[1].pos,
                    "FROM <image> takes one argument; --ARG=value goes with a target reference",
                ));
            }
            if r == "scratch" {
                (State::scratch(), scratch_config(&platform), Vec::new())
            } else {
                let (state, mut config) = self.image(proj, &r, c.args[0].pos)?;
                config.created = self.opts.created.clone();
                let n = config.history.len();
                (state, config, vec![None; n])
            }
        };
        config.os = platform.os.clone();
        config.architecture = platform.architecture.clone();
        config.variant = platform.variant.clone();
        ts.platform = platform;
        ts.rebase(state, config, hist);
        ts.hosts = hosts;
        Ok(())
    }

    /// Image `r` (written at `pos`) resolved as `FROM` resolves it (the store, then
    /// the registry), once per build.
    fn image(&mut self, proj: &Project, r: &str, pos: Pos) -> Result<(State, ImageConfig)> {
        let platform = self.platform.clone();
        memo_image(&mut self.images, &mut *self.resolve, r, &platform).map_err(|e| match e {
            BuildError::Image(m) => src_err(proj, pos, m),
            e => e,
        })
    }

    /// `WITH DOCKER [--pull img] [--load [name=]+target] … RUN … END`: the one RUN as a
    /// step with a dockerd of its own that has the images loaded
    /// ([`crate::docker::docker_run`]). `--load` targets are lowered like `FROM +t`, so
    /// they build in parallel with the rest; `--pull` images are resolved as `FROM`'s.
    fn with_docker(
        &mut self,
        ts: &mut Ts,
        proj: &Arc<Project>,
        head: &Command,
        body: &[Stmt],
    ) -> Result<()> {
        self.entitled_privileged(proj, head.pos, "WITH DOCKER")?;
        let run = match body {
            [Stmt::Command(c)] if c.name == "RUN" => c,
            _ => {
                return Err(src_err(
                    proj,
                    head.pos,
                    "WITH DOCKER takes exactly one RUN before its END",
                ));
            }
        };
        let mut images = Vec::new();
        for raw in head.values("load") {
            let pos = head.flag_pos("load").unwrap_or(head.pos);
            let text = self.x_text(ts, proj, raw, pos)?;
            images.push(self.docker_load(ts, proj, &text, pos)?);
        }
        for raw in head.values("pull") {
            let pos = head.flag_pos("pull").unwrap_or(head.pos);
            let r = self.x_text(ts, proj, raw, pos)?;
            let (state, config) = self.image(proj, &r, pos)?;
            images.push(DockerImage {
                tag: r,
                state,
                config,
            });
        }
        let compose = self.docker_compose(ts, proj, head)?;
        self.run_step(ts, proj, run, Some((images, compose)))
    }

    /// `--compose FILE … [--service S …]` of `WITH DOCKER`: the files (relative to the
    /// Earthfile's folder) read now, so their contents are in the step's key.
    fn docker_compose(
        &mut self,
        ts: &mut Ts,
        proj: &Arc<Project>,
        head: &Command,
    ) -> Result<Option<DockerCompose>> {
        let mut services = Vec::new();
        for raw in head.values("service") {
            let pos = head.flag_pos("service").unwrap_or(head.pos);
            services.push(self.x_text(ts, proj, raw, pos)?);
        }
        let raws = head.values("compose");
        if raws.is_empty() {
            return match head.flag_pos("service") {
                Some(p) => Err(src_err(proj, p, "WITH DOCKER --service needs --compose")),
                None => Ok(None),
            };
        }
        let pos = head.flag_pos("compose").unwrap_or(head.pos);
        let mut files = Vec::new();
        for raw in raws {
            let f = self.x_text(ts, proj, raw, pos)?;
            let path = proj.dir.join(&f);
            let text = std::fs::read_to_string(&path).map_err(|e| {
                src_err(
                    proj,
                    pos,
                    format!("--compose {f}: read {}: {e}", path.display()),
                )
            })?;
            files.push((f, text));
        }
        Ok(Some(DockerCompose { files, services }))
    }

    /// One `--load` of `WITH DOCKER`: `name=+target`, `+target` (named by the target's
    /// `SAVE IMAGE`), or either with the target in parentheses with its ARGs,
    /// `name=(+target --X=1)`.
    fn docker_load(
        &mut self,
        ts: &Ts,
        proj: &Arc<Project>,
        text: &str,
        pos: Pos,
    ) -> Result<DockerImage> {
        let reference_at = text.find(['+', '(']).unwrap_or(0);
        // `name=+t`; with no name (`+t`, or `=+t` as an unset `$NAME=` leaves it) the
        // name is the one the target's SAVE IMAGE gives, as in Earthly's ParseLoad.
        let (name, reference) = match text[..reference_at].split_once('=') {
            Some((n, _)) => (Some(n.to_string()), &text[n.len() + 1..]),
            None => (None, text),
        };
        let name = name.filter(|n| !n.is_empty());
        let inner = match reference.strip_prefix('(') {
            Some(r) => r
                .strip_suffix(')')
                .ok_or_else(|| src_err(proj, pos, format!("--load {text}: a ( without its )")))?,
            None => reference,
        };
        let mut words = inner.split_whitespace().peekable();
        let r = words.next().unwrap_or_default();
        let mut args = BTreeMap::new();
        while let Some(w) = words.next() {
            // `--NAME=value`, or `--NAME value` as Earthly's ParseFlagArgs also takes.
            let kv = w.strip_prefix("--").filter(|kv| !kv.is_empty());
            let (k, v) = match kv.map(|kv| (kv, kv.split_once('='))) {
                Some((_, Some((k, v)))) => (k, v),
                Some((k, None)) => match words.next_if(|n| !n.starts_with("--")) {
                    Some(v) => (k, v),
                    None => {
                        return Err(src_err(
                            proj,
                            pos,
                            format!("--load {text}: no value provided for --{k}"),
                        ));
                    }
                },
                None => {
                    return Err(src_err(
                        proj,
                        pos,
                        format!("--load {text}: {w:?} is not a build argument (--NAME=value)"),
                    ));
                }
            };
            args.insert(k.to_string(), v.to_string());
        }
        let (tp, tname) = self.resolve_ref(ts, proj, r, pos)?;
        let idx = self.target(&tp, &tname, args, Some((proj, pos)), false)?;
        let t = &self.targets[idx];
        let tag = match name {
            Some(n) => n,
            None => t
                .images
                .iter()
                .rev()
                .find_map(|i| i.names.first().cloned())
                .ok_or_else(|| {
                    src_err(
                        proj,
                        pos,
                        format!(
                            "--load {text}: {} saves no named image; name it: --load name={r}",
                            t.label
                        ),
                    )
                })?,
        };
        Ok(DockerImage {
            tag,
            state: t.state.clone(),
            config: t.config.clone(),
        })
    }

    /// `FROM DOCKERFILE [-f file] [--target t] [--build-arg k=v] <context>`: the
    /// Dockerfile frontend lowers it into the same graph; its image is where the target
    /// goes on.
    fn dockerfile_base(&mut self, ts: &mut Ts, proj: &Arc<Project>, c: &Command) -> Result<()> {
        let ctx = self.x(ts, proj, &c.args[0])?;
        // An artifact (`+t/dir`, or `-f +t/Dockerfile`) is built now and written into a
        // folder of the build, which is then a context like a local one.
        let ctx_dir = if self.is_artifact_ref(ts, proj, &ctx) {
            self.artifact_folder(ts, proj, &ctx, c.args[0].pos, "/")?
        } else {
            proj.dir.join(&ctx)
        };
        let mut local_file = false;
        let file = match c.value("f") {
            Some(f) => {
                let f = self.x_text(ts, proj, f, c.pos)?;
                local_file = !self.is_artifact_ref(ts, proj, &f);
                if !local_file {
                    let pos = c.flag_pos("f").unwrap_or(c.pos);
                    self.artifact_folder(ts, proj, &f, pos, "/Dockerfile")?
                        .join("Dockerfile")
                } else {
                    proj.dir.join(f)
                }
            }
            None => ctx_dir.join("Dockerfile"),
        };
        let outside = |p: &Path| {
            self.outside_sent(&lexical_clean(p))
                || std::fs::canonicalize(p).is_ok_and(|p| self.outside_sent(&p))
        };
        if (!self.is_artifact_ref(ts, proj, &ctx) && outside(&ctx_dir))
            || (local_file && outside(&file))
        {
            return Err(src_err(
                proj,
                c.args[0].pos,
                "on a satellite, FROM DOCKERFILE takes its context and Dockerfile from the \
                 folder berth sent (the one it ran in); this one is outside it",
            ));
        }
        let text = std::fs::read_to_string(&file)
            .map_err(|e| src_err(proj, c.args[0].pos, format!("read {}: {e}", file.display())))?;
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "Dockerfile".into());
        let df = crate::Dockerfile::parse(&name, &text)?;
        let dockerignore = std::fs::read_to_string(ctx_dir.join(".dockerignore"))
            .map(|t| Ignore::parse(&t).patterns())
            .unwrap_or_default();
        let target = c
            .value("target")
            .map(|t| self.x_text(ts, proj, t, c.pos))
            .transpose()?;
        let build_args = self.build_args(ts, proj, c)?;
        // A context folder that is not there (`-`, say) fails in Earthly only when the
        // Dockerfile copies from it: BuildKit reads a context lazily.
        let (ctx_dir, missing) = match std::fs::canonicalize(&ctx_dir) {
            Ok(d) => (d, None),
            Err(e) => (lexical_clean(&ctx_dir), Some(e)),
        };
        // Named by what was written, so an artifact's context keeps its name (and its
        // steps their keys) from build to build.
        let ctx_name = if self.is_artifact_ref(ts, proj, &ctx) {
            format!("dockerfile:{}/{ctx}", proj.dir.display())
        } else {
            format!("dockerfile:{}", ctx_dir.display())
        };
        let opts = crate::LowerOptions {
            build_args,
            target,
            dockerignore,
            proxy_env: self.opts.proxy_env.clone(),
            no_cache: self.opts.no_cache,
            extra_hosts: Vec::new(),
            created: self.opts.created.clone(),
            allow: self.opts.allow.clone(),
            cancel: self.opts.cancel.clone(),
            platform: Some(self.platform.clone()),
        };
        let lowered = crate::frontend::dockerfile::lower::lower_in(
            &df,
            &opts,
            &ctx_name,
            &mut *self.resolve,
        )?;
        match missing {
            Some(e) if reads_local(&lowered.state, &ctx_name) => {
                return Err(src_err(
                    proj,
                    c.args[0].pos,
                    format!("context {}: {e}", ctx_dir.display()),
                ));
            }
            Some(_) => {}
            None => {
                self.contexts.insert(ctx_name, ctx_dir);
            }
        }
        let mut hist = vec![None; lowered.base_history];
        hist.extend(lowered.steps);
        hist.resize(lowered.config.history.len(), None);
        ts.rebase(lowered.state, lowered.config, hist);
        Ok(())
    }

    /// `TRY RUN … FINALLY SAVE ARTIFACT … AS LOCAL … END` (Earthly 0.8 with `VERSION
    /// --try`, and its limits: one RUN, then `AS LOCAL` saves of single paths). When
    /// the RUN succeeds the saves are ordinary ones; when it fails, the solver copies
    /// their paths out of the failed command's file system before the build stops.
    fn try_finally(
        &mut self,
        ts: &mut Ts,
        proj: &Arc<Project>,
        head: &Command,
        body: &[Stmt],
        catch: bool,
        finally: Option<&[Stmt]>,
    ) -> Result<()> {
        let enabled = proj.ef.feature("try");
        if !enabled {
            return Err(src_err(
                proj,
                head.pos,
                "TRY needs VERSION --try 0.8 (it is experimental in Earthly)",
            ));
        }
        if self.opts.satellite && !self.opts.no_output {
            return Err(hint_err(
                proj,
                head.pos,
                "TRY on a satellite needs --no-output (or --ci): the files a failed \
                 RUN saves would be written on the satellite",
                "add --no-output, or build without --satellite",
            ));
        }
        if ts.locally {
            return Err(hint_err(
                proj,
                head.pos,
                "TRY is not allowed in a LOCALLY target",
                LOCALLY_HINT,
            ));
        }
        // Earthly's words (its try-catch tests grep for them), at the TRY.
        if catch && body.len() == 1 {
            return Err(src_err(
                proj,
                head.pos,
                "TRY/FINALLY doesn't (currently) support CATCH statements",
            ));
        }
        let run = match body {
            [Stmt::Command(c)] if c.name == "RUN" => c,
            _ => return Err(src_err(proj, head.pos, "TRY holds one RUN, as in Earthly")),
        };
        let mut saves = Vec::new();
        for s in finally.unwrap_or_default() {
            let c = match s {
                Stmt::Command(c) if c.name == "SAVE ARTIFACT" => c,
                Stmt::Command(c) => {
                    return Err(src_err(
                        proj,
                        c.pos,
                        "FINALLY holds SAVE ARTIFACT … AS LOCAL commands only, as in Earthly",
                    ));
                }
                _ => {
                    return Err(src_err(
                        proj,
                        head.pos,
                        "FINALLY holds SAVE ARTIFACT … AS LOCAL commands only, as in Earthly",
                    ));
                }
            };
            let words: Vec<String> = c
                .args
                .iter()
                .map(|w| self.x(ts, proj, w))
                .collect::<Result<_>>()?;
            let (src, local) = match words.as_slice() {
                [s, a, l, p] | [s, _, a, l, p] if a == "AS" && l == "LOCAL" => (s, p),
                _ => {
                    return Err(src_err(
                        proj,
                        c.pos,
                        "a SAVE ARTIFACT in FINALLY needs AS LOCAL <path>",
                    ));
                }
            };
            if src.contains(['*', '?', '[']) {
                return Err(src_err(
                    proj,
                    c.args[0].pos,
                    "a SAVE ARTIFACT in FINALLY saves one path, no wildcards",
                ));
            }
            check_local_save(proj, &proj.dir, c, local)?;
            if self.remote_names.contains_key(&proj.dir) || self.opts.no_output {
                continue;
            }
            let mut dest = if local.starts_with('/') {
                PathBuf::from(local)
            } else {
                proj.dir.join(local)
            };
            if local.ends_with('/') || local == "." {
                dest = dest.join(base_name(src));
            }
            saves.push(ir::FailureSave {
                src: ts.abs(src),
                dest,
                if_exists: c.flag("if-exists"),
            });
        }
        self.try_saves = saves;
        let ran = self.command(ts, proj, run);
        self.try_saves.clear();
        ran?;
        match finally {
            Some(f) => self.stmts(ts, proj, f),
            None => Ok(()),
        }
    }

    /// `LOCALLY`: from here on the target's commands run on this host, in the
    /// Earthfile's folder, never cached. Earthly refuses it under `--strict`, and in a
    /// remote Earthfile without `--allow-privileged` (berth: `security.insecure`).
    fn locally(&mut self, ts: &mut Ts, proj: &Arc<Project>, c: &Command) -> Result<()> {
        if self.opts.strict {
            return Err(hint_err(
                proj,
                c.pos,
                "LOCALLY cannot be used with --strict (or --ci)",
                "run this target without --strict, or give it a FROM",
            ));
        }
        if self.opts.satellite {
            return Err(hint_err(
                proj,
                c.pos,
                "LOCALLY cannot run on a satellite: its commands would run on the \
                 satellite's host, not on this machine",
                "build this target without --satellite, or give it a FROM",
            ));
        }
        if self.remote_names.contains_key(&proj.dir) {
            self.entitled_privileged(proj, c.pos, "LOCALLY in a remote Earthfile")?;
        }
        // Its commands run on this host, so it is for this host's platform.
        ts.platform = Platform::host();
        let mut config = scratch_config(&ts.platform);
        // The target's folder, also in a function of another Earthfile (Earthly's
        // localWorkingDir is the calling target's).
        config.config.working_dir = ts.proj.dir.display().to_string();
        ts.rebase(State::scratch(), config, Vec::new());
        // As Earthly's LOCALLY (a FROM scratch): no image environment, not even the
        // PATH rebase gives; the ENVs after it are the host commands'.
        ts.vars.retain(|v| v.kind != VarKind::Env);
        ts.locally = true;
        Ok(())
    }

    /// The variables a `LOCALLY` command gets on top of berth's environment: the ARGs
    /// and LETs in scope and the target's ENVs after `LOCALLY`.
    fn local_env(ts: &Ts) -> Vec<(String, String)> {
        ts.vars
            .iter()
            .map(|v| (v.name.clone(), v.value.clone()))
            .collect()
    }

    /// The RUN (IF, FOR) flags a `LOCALLY` target refuses, as Earthly does.
    fn refuse_local_run_flags(&self, proj: &Project, c: &Command) -> Result<()> {
        for flag in [
            "mount",
            "secret",
            "ssh",
            "privileged",
            "interactive",
            "interactive-keep",
            "aws",
            "oidc",
        ] {
            if let Some(pos) = c.flag_pos(flag) {
                return Err(hint_err(
                    proj,
                    pos,
                    format!("{} --{flag} is not allowed in a LOCALLY target", c.name),
                    LOCALLY_HINT,
                ));
            }
        }
        if c.value("network") == Some("none") {
            return Err(src_err(
                proj,
                c.flag_pos("network").unwrap_or(c.pos),
                format!(
                    "{} --network=none is not allowed in a LOCALLY target",
                    c.name
                ),
            ));
        }
        Ok(())
    }

    /// A RUN of a `LOCALLY` target: run now, on this host, in the Earthfile's folder.
    /// `RUN --push` runs only with `--push`, in its place (Earthly 0.8's WAIT blocks).
    fn local_run(&mut self, ts: &mut Ts, proj: &Arc<Project>, c: &Command) -> Result<()> {
        self.refuse_local_run_flags(proj, c)?;
        if c.flag("push") && !self.opts.push {
            return Ok(());
        }
        let args = match CommandLine::parse(&c.rest) {
            CommandLine::Exec(list) => list,
            CommandLine::Shell(s) => vec!["/bin/sh".into(), "-c".into(), s],
        };
        let (code, _) = self.host.run_local(&LocalRun {
            args,
            env: Self::local_env(ts),
            cwd: PathBuf::from(&ts.config.config.working_dir),
            name: format!("{} (LOCALLY)", Self::step_name(ts, c)),
            capture: false,
        })?;
        if code != 0 {
            return Err(src_err(
                proj,
                c.pos,
                format!("the command exited with code {code} (LOCALLY, on this host)"),
            ));
        }
        Ok(())
    }

    /// A COPY of a `LOCALLY` target: each artifact is built now and copied into the
    /// Earthfile's folder on this host (folders merged into what is there).
    fn local_copy(&mut self, ts: &mut Ts, proj: &Arc<Project>, c: &Command) -> Result<()> {
        let (srcs, dest_w) = c.args.split_at(c.args.len() - 1);
        let dest_raw = self.x(ts, proj, &dest_w[0])?;
        warn_tilde(proj, c, &dest_raw);
        let dest = PathBuf::from(ts.abs(&dest_raw));
        let into = dest_raw.ends_with('/') || srcs.len() > 1 || dest.is_dir();
        let sources: Vec<(&Word, (String, Option<usize>))> = srcs
            .iter()
            .map(|w| {
                Ok(self
                    .copy_source(ts, proj, c, w)?
                    .into_iter()
                    .map(move |s| (w, s)))
            })
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .flatten()
            .collect();
        let into = into || sources.len() > 1;
        for (w, (text, artifact)) in sources {
            let Some(artifact) = artifact.map(|i| self.targets[i].artifact.clone()) else {
                return Err(hint_err(
                    proj,
                    w.pos,
                    format!("COPY {text}: a LOCALLY target copies artifacts (+target/path) only"),
                    "the files of the Earthfile's folder are already on this host",
                ));
            };
            let (_, path) = split_artifact(&text).expect("checked by copy_source");
            let glob = path.contains(['*', '?', '[']);
            let name = base_name(path.trim_end_matches('/')).to_string();
            let out = if glob {
                "/out/".to_string()
            } else {
                format!("/out/{name}")
            };
            let path = if c.flag("if-exists") {
                optional_glob(path)
            } else {
                path.to_string()
            };
            let state = State::scratch().file(
                FileOp {
                    actions: vec![copy_action(1, vec![path], out, None)],
                    cwd: "/".into(),
                },
                vec![artifact],
                format!("[{}] {} (LOCALLY)", ts.label, c.text),
            );
            let dir = self.host.scratch()?;
            let missing = || {
                src_err(
                    proj,
                    w.pos,
                    format!("COPY {text}: {}", artifact_not_found(&text)),
                )
            };
            match self.host.export(&self.contexts, &state, &dir) {
                Err(BuildError::SourceNotFound(_)) => return Err(missing()),
                r => r?,
            }
            let out = dir.join("out");
            let placed = if glob {
                let entries: Vec<_> = std::fs::read_dir(&out)
                    .map(|rd| rd.flatten().collect())
                    .unwrap_or_default();
                entries
                    .iter()
                    .try_for_each(|e| merge_into(&e.path(), &dest.join(e.file_name())))
            } else {
                let src = out.join(&name);
                match std::fs::symlink_metadata(&src) {
                    Err(_) if c.flag("if-exists") => Ok(()),
                    Err(_) => return Err(missing()),
                    Ok(m) if into && (!m.is_dir() || c.flag("dir")) => {
                        merge_into(&src, &dest.join(&name))
                    }
                    Ok(_) => merge_into(&src, &dest),
                }
            };
            let _ = std::fs::remove_dir_all(&dir);
            placed.map_err(|e| {
                src_err(
                    proj,
                    c.pos,
                    format!("COPY {text} to {}: {e}", dest.display()),
                )
            })?;
        }
        Ok(())
    }

    /// `ts`'s state, config and history with the contents of each `CACHE --persist`
    /// folder copied in, as Earthly does at the end of a target and for `SAVE
    /// ARTIFACT` and `SAVE IMAGE`. The copy runs `cp` in the image, with the cache
    /// mounted beside the folder.
    fn persisted(&self, ts: &Ts) -> (State, ImageConfig, Vec<Option<State>>) {
        let (mut state, mut config, mut hist) =
            (ts.state.clone(), ts.config.clone(), ts.hist.clone());
        if ts.locally {
            return (state, config, hist);
        }
        for dir in &ts.persist {
            let Some(m) = ts.caches.iter().find(|m| m.target == *dir) else {
                continue;
            };
            let quoted = format!("'{}'", dir.replace('\'', "'\\''"));
            let exec = ExecOp {
                args: vec![
                    "/bin/sh".into(),
                    "-c".into(),
                    format!("mkdir -p {quoted} && cp -a {PERSIST_MOUNT}/. {quoted}/"),
                ],
                env: vec![DEFAULT_PATH.to_string()],
                cwd: "/".into(),
                network: ir::NetworkMode::None,
                mounts: vec![ExecMount {
                    target: PERSIST_MOUNT.into(),
                    source: m.source.clone(),
                }],
                platform: (!ts.platform.is_host()).then(|| Box::new(ts.platform.clone())),
                ..ExecOp::default()
            };
            state = state
                .run(
                    exec,
                    vec![],
                    format!("[{}] CACHE --persist {dir}", ts.label),
                )
                .with_ignore_cache(self.opts.no_cache);
            config.history.push(History {
                created: self.opts.created.clone(),
                created_by: format!("CACHE --persist {dir}"),
                empty_layer: false,
                comment: "berth earthfile".into(),
            });
            hist.push(Some(state.clone()));
        }
        (state, config, hist)
    }

    /// Artifact `text` (`+t/path`, written at `pos`) built now and copied to `to` in a
    /// new folder of the build (a folder's contents go into `to`).
    fn artifact_folder(
        &mut self,
        ts: &Ts,
        proj: &Arc<Project>,
        text: &str,
        pos: Pos,
        to: &str,
    ) -> Result<PathBuf> {
        let (r, path) = split_artifact(text).ok_or_else(|| {
            src_err(
                proj,
                pos,
                format!("{text:?}: an artifact reference is +target/path"),
            )
        })?;
        let (tp, name) = self.resolve_ref(ts, proj, r, pos)?;
        let idx = self.target(&tp, &name, BTreeMap::new(), Some((proj, pos)), false)?;
        let state = State::scratch().file(
            FileOp {
                actions: vec![copy_action(1, vec![path.to_string()], to.into(), None)],
                cwd: "/".into(),
            },
            vec![self.targets[idx].artifact.clone()],
            format!("[{}] {text}", self.targets[idx].label),
        );
        let dir = self.host.scratch()?;
        match self.host.export(&self.contexts, &state, &dir) {
            Err(BuildError::SourceNotFound(_)) => Err(src_err(
                proj,
                pos,
                format!("{text}: {}", artifact_not_found(text)),
            )),
            r => r.map(|_| dir),
        }
    }

    fn arg(&mut self, ts: &mut Ts, proj: &Arc<Project>, c: &Command) -> Result<()> {
        let w = &c.args[0];
        let (name, default) = match w.text.split_once('=') {
            Some((k, v)) => (k.to_string(), Some(v.to_string())),
            None => (w.text.clone(), None),
        };
        if name.is_empty()
            || !name
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
        {
            return Err(src_err(
                proj,
                w.pos,
                format!("ARG {name:?}: not a valid name"),
            ));
        }
        // Earthly refuses a builtin's default when it is not empty once expanded;
        // before --shell-out-anywhere (0.7) that expansion runs no `$( … )`, so any
        // such default is refused without running it (a shell-out: see below).
        let builtin_default = format!("arg default value supplied for built-in ARG {name}");
        let unexpanded = default.as_deref().is_some_and(|d| !d.is_empty());
        if unexpanded && is_builtin_arg(&name) && !shell_out_anywhere(proj) {
            return Err(src_err(proj, w.pos, builtin_default));
        }
        if ts.overrides.contains_key(&name) && is_builtin_arg(&name) {
            return Err(src_err(
                proj,
                w.pos,
                format!("value cannot be specified for built-in build arg {name}"),
            ));
        }
        if c.flag("required") && default.is_some() {
            return Err(src_err(
                proj,
                w.pos,
                format!("ARG --required {name} cannot have a default value"),
            ));
        }
        // Before --explicit-global (0.7) every ARG of the base recipe is global, and
        // --global is no flag of ARG.
        let explicit_global = proj.ef.feature("explicit-global");
        if c.flag("global") && !explicit_global {
            return Err(hint_err(
                proj,
                c.flag_pos("global").unwrap_or(c.pos),
                "unknown flag --global",
                "ARG --global needs VERSION 0.7 (or VERSION --explicit-global); \
                 before it, every ARG of the base recipe is global",
            ));
        }
        let global = c.flag("global") || (ts.is_base && !explicit_global);
        if global && !ts.is_base {
            return Err(src_err(
                proj,
                c.flag_pos("global").unwrap_or(c.pos),
                "ARG --global: a global ARG can only be set in the base target (the recipe before the first target)",
            ));
        }
        let existing = ts
            .vars
            .iter()
            .rev()
            .find(|v| v.name == name)
            .map(|v| v.kind);
        if existing == Some(VarKind::Let) {
            return Err(hint_err(
                proj,
                w.pos,
                format!("ARG {name}: {name} is declared with LET"),
                format!(
                    "'{name}' was already declared with LET and cannot be redeclared as an ARG"
                ),
            ));
        }
        if ts.declared.contains(&name) {
            if global && !ts.globals.iter().any(|g| g.name == name) {
                return Err(hint_err(
                    proj,
                    w.pos,
                    format!("ARG --global {name}: {name} is already an ARG"),
                    format!(
                        "'{name}' was already declared as a non-global ARG in this scope - did you mean to add '--global' to the original declaration?"
                    ),
                ));
            }
            // Earthly 0.8 (`--arg-scope-and-set`) forbids declaring one twice.
            let scoped = proj.ef.feature("arg-scope-and-set");
            if !ts.is_base && scoped {
                return Err(src_err(
                    proj,
                    w.pos,
                    format!("ARG {name} is declared twice in this recipe"),
                ));
            }
        }
        ts.declared.push(name.clone());
        let value = if let Some(v) = ts.overrides.get(&name) {
            v.clone()
        } else if c.flag("required") {
            return Err(hint_err(
                proj,
                w.pos,
                format!("ARG {name} is required but was not given"),
                format!(
                    "pass it: berth +{} --{name}=value, or BUILD +{} --{name}=value",
                    ts.name, ts.name
                ),
            ));
        } else if is_builtin_arg(&name) {
            // `ARG EARTHLY_VERSION=$(…)` whose command prints nothing is the builtin.
            if let Some(d) = &default
                && !self.x_text(ts, proj, d, w.pos)?.is_empty()
            {
                return Err(src_err(proj, w.pos, builtin_default));
            }
            match self.builtin(ts, &name) {
                Some(b) => b,
                None => ts
                    .globals
                    .iter()
                    .find(|g| g.name == name)
                    .map(|g| g.value.clone())
                    .unwrap_or_default(),
            }
        } else if let Some(d) = &default {
            self.x_text(ts, proj, d, w.pos)?
        } else if let Some(g) = ts.globals.iter().find(|g| g.name == name) {
            g.value.clone()
        } else {
            String::new()
        };
        if global {
            ts.globals.retain(|g| g.name != name);
            ts.globals.push(Var {
                name: name.clone(),
                value: value.clone(),
                kind: VarKind::Arg,
            });
        }
        ts.set_var(&name, value, VarKind::Arg);
        Ok(())
    }

    /// Earthly's builtin ARGs, declared with `ARG NAME`.
    fn builtin(&self, ts: &Ts, name: &str) -> Option<String> {
        // Earthly gives these only from the version whose feature flag they come with
        // (variables.BuiltinArgs); before it, `ARG NAME` is an ordinary ARG.
        let since = match name {
            "EARTHLY_VERSION" | "EARTHLY_BUILD_SHA" => Some("earthly-version-arg"),
            "EARTHLY_CI" => Some("ci-arg"),
            "EARTHLY_LOCALLY" => Some("earthly-locally-arg"),
            "EARTHLY_PUSH" => Some("wait-block"),
            "NATIVEPLATFORM" | "NATIVEOS" | "NATIVEARCH" | "NATIVEVARIANT" => Some("new-platform"),
            "EARTHLY_GIT_REFS" => Some("git-refs"),
            "EARTHLY_GIT_COMMIT_AUTHOR_TIMESTAMP" => Some("git-commit-author-timestamp"),
            _ => None,
        };
        if since.is_some_and(|f| !ts.proj.ef.feature(f)) {
            return None;
        }
        let (os, arch) = host_platform();
        let target = &ts.platform;
        // Git is asked only for a git ARG.
        let git = || ts.proj.git();
        let remote = self.remote_names.contains_key(&ts.proj.dir);
        // Earthly names a local target by its repository's origin when there is one
        // (`github.com/org/repo/sub:branch+t`, gitutil.ReferenceWithGitMeta): the
        // project path, tagged with HEAD's tag, else its branch, else its commit.
        let named = || {
            let g = git();
            let url = g.get("git_url").filter(|_| !remote)?.replace('+', "\\+");
            let tag = ["tag", "branch", "hash"]
                .iter()
                .find_map(|k| g.get(k))
                .cloned()
                .unwrap_or_default()
                .replace('+', "\\+");
            Some((url, tag))
        };
        let project = || match named() {
            Some((url, tag)) if tag.is_empty() => url,
            Some((url, tag)) => format!("{url}:{tag}"),
            None => ts.proj.reference.clone(),
        };
        // A remote target's tag is the ref it was fetched at; a local one without an
        // origin has none.
        let tag = || match named() {
            Some((_, tag)) => tag,
            None if remote => git().get("branch").cloned().unwrap_or_default(),
            None => String::new(),
        };
        Some(match name {
            "EARTHLY_TARGET" => match named() {
                Some(_) => format!("{}+{}", project(), ts.name),
                None => ts.label.clone(),
            },
            "EARTHLY_TARGET_NAME" => ts.name.clone(),
            "EARTHLY_TARGET_PROJECT" => project(),
            "EARTHLY_TARGET_PROJECT_NO_TAG" => match named() {
                Some((url, _)) => url,
                None => ts.proj.reference.clone(),
            },
            "EARTHLY_TARGET_TAG" => tag(),
            "EARTHLY_TARGET_TAG_DOCKER" => docker_tag_safe(&tag()),
            "EARTHLY_GIT_TAG" => git().get("tag").cloned().unwrap_or_default(),
            "EARTHLY_GIT_HASH" => git().get("hash").cloned().unwrap_or_default(),
            "EARTHLY_GIT_SHORT_HASH" => git()
                .get("hash")
                .map(|h| h.chars().take(8).collect())
                .unwrap_or_default(),
            "EARTHLY_GIT_BRANCH" => git().get("branch").cloned().unwrap_or_default(),
            "EARTHLY_GIT_ORIGIN_URL" => git().get("origin").cloned().unwrap_or_default(),
            "EARTHLY_GIT_PROJECT_NAME" => git().get("project").cloned().unwrap_or_default(),
            "EARTHLY_GIT_COMMIT_TIMESTAMP" => git().get("timestamp").cloned().unwrap_or_default(),
            "EARTHLY_GIT_COMMIT_AUTHOR_TIMESTAMP" => {
                git().get("author_timestamp").cloned().unwrap_or_default()
            }
            "EARTHLY_GIT_REFS" => git().get("refs").cloned().unwrap_or_default(),
            "EARTHLY_SOURCE_DATE_EPOCH" => git()
                .get("timestamp")
                .cloned()
                .unwrap_or_else(|| "0".into()),
            "EARTHLY_VERSION" => format!("berth-{}", env!("CARGO_PKG_VERSION")),
            // Earthly's is its own commit; berth's version stands in for it.
            "EARTHLY_BUILD_SHA" => format!("berth-{}", env!("CARGO_PKG_VERSION")),
            // Not on Earthly's CI runner; empty unless the feature flag asks for it.
            "EARTHLY_CI_RUNNER" => {
                if ts.proj.ef.feature("earthly-ci-runner-arg") {
                    "false".into()
                } else {
                    String::new()
                }
            }
            "EARTHLY_CI" => self.opts.ci.to_string(),
            "EARTHLY_PUSH" => (self.opts.push && self.connected).to_string(),
            "EARTHLY_LOCALLY" => ts.locally.to_string(),
            "TARGETPLATFORM" => target.to_string(),
            "TARGETOS" => target.os.clone(),
            "TARGETARCH" => target.architecture.clone(),
            "TARGETVARIANT" => target.variant.clone(),
            "NATIVEPLATFORM" | "USERPLATFORM" => format!("{os}/{arch}"),
            "NATIVEOS" | "USEROS" => os.into(),
            "NATIVEARCH" | "USERARCH" => arch.into(),
            "NATIVEVARIANT" | "USERVARIANT" => String::new(),
            _ => return None,
        })
    }

    /// Refuse `what` (written at `pos`) unless the build was granted
    /// `security.insecure`, which Earthly's `RUN --privileged` and `WITH DOCKER` need.
    fn entitled_privileged(&self, proj: &Project, pos: Pos, what: &str) -> Result<()> {
        if self.opts.allow.contains(&ir::Entitlement::SecurityInsecure) {
            return Ok(());
        }
        Err(hint_err(
            proj,
            pos,
            format!(
                "{what} needs the entitlement security.insecure, which this build was not granted"
            ),
            "grant it with --allow security.insecure (or Earthly's -P, --allow-privileged)",
        ))
    }

    /// What RUN (IF, FOR) flags berth cannot run.
    fn refuse_run_flags(&self, proj: &Project, c: &Command) -> Result<()> {
        for (flag, what) in [
            ("interactive", "RUN --interactive is not supported by berth"),
            (
                "interactive-keep",
                "RUN --interactive-keep is not supported by berth",
            ),
            ("aws", "RUN --aws is not supported by berth"),
        ] {
            if c.flag(flag) {
                return Err(src_err(proj, c.flag_pos(flag).unwrap_or(c.pos), what));
            }
        }
        if let Some(p) = c.flag_pos("oidc") {
            return Err(src_err(proj, p, "RUN --oidc is not supported by berth"));
        }
        Ok(())
    }

    /// A RUN; with `docker`, inside `WITH DOCKER` with those images loaded.
    fn run_step(
        &mut self,
        ts: &mut Ts,
        proj: &Arc<Project>,
        c: &Command,
        docker: Option<(Vec<DockerImage>, Option<DockerCompose>)>,
    ) -> Result<()> {
        let entrypoint = c.flag("entrypoint");
        if c.rest.is_empty() && !entrypoint {
            return Err(src_err(proj, c.pos, "RUN needs a command"));
        }
        if ts.locally {
            return self.local_run(ts, proj, c);
        }
        let mut args = match CommandLine::parse(&c.rest) {
            CommandLine::Exec(list) => list,
            // The entrypoint's arguments: words, not a shell command (as Earthly).
            CommandLine::Shell(s) if entrypoint => super::parse::group_words(&s),
            CommandLine::Shell(s) => vec!["/bin/sh".into(), "-c".into(), s],
        };
        if entrypoint {
            let mut full = ts.config.config.entrypoint.clone().unwrap_or_default();
            full.extend(args);
            args = full;
        }
        let (mut exec, extra) = self.exec_op(ts, proj, c, args)?;
        exec.on_failure = std::mem::take(&mut self.try_saves);
        if c.flag("push") && ts.pre_push.is_none() {
            ts.pre_push = Some(ts.state.clone());
        }
        let name = Self::step_name(ts, c);
        self.steps
            .push((name.clone(), proj.ef.source.error(c.pos, String::new())));
        let made = match docker {
            None => ts.state.run(exec, extra, name),
            Some((images, compose)) => {
                // dockerd needs root, whatever the target's USER.
                exec.user = String::new();
                docker_compose_run(&ts.state, exec, extra, images, compose, name)
                    .map_err(|e| src_err(proj, c.pos, e.to_string()))?
            }
        }
        .with_ignore_cache(self.opts.no_cache || c.flag("no-cache") || c.flag("push"));
        self.history(ts, c, Some(made));
        Ok(())
    }

    /// The process of a RUN (or of an IF, FOR or `$( … )` evaluated in the container):
    /// the variables in scope, CACHE mounts, `--mount`s, `--secret`s and the network of
    /// command `c`; and the extra inputs its mounts read.
    fn exec_op(
        &mut self,
        ts: &Ts,
        proj: &Project,
        c: &Command,
        args: Vec<String>,
    ) -> Result<(ExecOp, Vec<State>)> {
        self.refuse_run_flags(proj, c)?;
        let privileged = c.flag("privileged");
        if privileged {
            self.entitled_privileged(
                proj,
                c.flag_pos("privileged").unwrap_or(c.pos),
                "RUN --privileged",
            )?;
        }
        let mut env: Vec<String> = ts
            .vars
            .iter()
            .map(|v| format!("{}={}", v.name, v.value))
            .collect();
        if !env.iter().any(|e| e.starts_with("PATH=")) {
            env.insert(0, DEFAULT_PATH.to_string());
        }
        let mut mounts = ts.caches.clone();
        let mut extra = Vec::new();
        for raw in c.values("mount") {
            // Expanded whole, then split at its commas, as Earthly does: one variable may
            // hold several options (`--mount $CACHE_OPTS`).
            let raw = expand(raw, |k| ts.lookup(k).or_else(|| ts.home(k)), '\\')
                .map_err(|e| src_err(proj, c.pos, format!("--mount {raw}: {e}")))?;
            // Earthly's spellings: chmod= for mode=, id=+secrets/ID.
            let raw = raw
                .split(',')
                .map(|kv| match kv.strip_prefix("chmod=") {
                    Some(v) => format!("mode={v}"),
                    None => kv.replacen("id=+secrets/", "id=", 1),
                })
                .collect::<Vec<_>>()
                .join(",");
            let mut m = RunMount::parse(&raw, &mut |w| Ok(w.to_string()))
                .map_err(|(message, hint)| hint_err(proj, c.pos, message, hint))?;
            // Earthly makes a new cache folder 0644.
            if m.kind == MountType::Cache && m.mode.is_none() {
                m.mode = Some(0o644);
            }
            let err = |msg: String| src_err(proj, c.pos, msg);
            let mut from = |f: &str| -> Result<State> {
                Err(src_err(
                    proj,
                    c.pos,
                    format!("--mount from={f}: Earthfile mounts take no from= yet"),
                ))
            };
            let mount = exec_mount(
                &m,
                &MountEnv {
                    cwd: ts.cwd(),
                    // The target's, also in a function (Earthly: the caller's context).
                    context: &ts.proj.context,
                    err: &err,
                },
                &mut from,
                &mut extra,
            )?;
            mounts.push(mount);
        }
        for s in c.values("secret") {
            let s = self.x_text(ts, proj, s, c.pos)?;
            let (var, id) = match s.split_once('=') {
                Some((v, id)) => (
                    v.to_string(),
                    id.trim_start_matches("+secrets/").to_string(),
                ),
                None => (s.clone(), s.clone()),
            };
            if id.is_empty() {
                // `--secret X=` leaves X unset, as Earthly.
                continue;
            }
            mounts.push(ExecMount {
                target: String::new(),
                source: MountSource::Secret {
                    id,
                    env: Some(var),
                    file: false,
                    required: true,
                    uid: 0,
                    gid: 0,
                    mode: 0o400,
                },
            });
        }
        if c.flag("ssh") {
            // Earthly's RUN --ssh (BuildKit's AddSSHSocket): the client's agent, as
            // `--mount=type=ssh` gives it, at the first agent socket.
            let target = "/run/buildkit/ssh_agent.0".to_string();
            if !env.iter().any(|e| e.starts_with("SSH_AUTH_SOCK=")) {
                env.push(format!("SSH_AUTH_SOCK={target}"));
            }
            mounts.push(ExecMount {
                target,
                source: MountSource::Ssh {
                    id: "default".into(),
                    required: true,
                    uid: 0,
                    gid: 0,
                    mode: 0o600,
                },
            });
        }
        let network = match c.value("network") {
            None | Some("default") => ir::NetworkMode::Isolated,
            Some("none") => ir::NetworkMode::None,
            Some("host") => {
                if !self.opts.allow.contains(&ir::Entitlement::NetworkHost) {
                    return Err(hint_err(
                        proj,
                        c.flag_pos("network").unwrap_or(c.pos),
                        "RUN --network=host needs the entitlement network.host, which this build was not granted",
                        "grant it with --allow network.host",
                    ));
                }
                ir::NetworkMode::Host
            }
            Some(o) => {
                return Err(src_err(
                    proj,
                    c.flag_pos("network").unwrap_or(c.pos),
                    format!("--network={o}: use none, default or host"),
                ));
            }
        };
        let exec = ExecOp {
            args,
            env,
            cwd: ts.cwd(),
            user: ts.config.config.user.clone(),
            network,
            mounts,
            proxy_env: self.opts.proxy_env.clone(),
            privileged,
            extra_hosts: ts.hosts.clone(),
            platform: (!ts.platform.is_host()).then(|| Box::new(ts.platform.clone())),
            ..ExecOp::default()
        };
        Ok((exec, extra))
    }

    /// Run `script` with `/bin/sh -c` on the state of `ts`, as the process of `c`
    /// would run, for its exit code and standard output; its changes are dropped.
    ///
    /// The solver answers through a probe: the script's output and exit code are
    /// written to files of a step of their own, and those files alone are exported, so
    /// the answer is cached like any step (same state, same script, same answer).
    fn capture(
        &mut self,
        ts: &Ts,
        proj: &Project,
        c: &Command,
        script: &str,
    ) -> Result<(i32, String)> {
        if ts.locally {
            self.refuse_local_run_flags(proj, c)?;
            let (code, out) = self.host.run_local(&LocalRun {
                args: vec!["/bin/sh".into(), "-c".into(), script.to_string()],
                env: Self::local_env(ts),
                cwd: PathBuf::from(&ts.config.config.working_dir),
                name: format!("[{}] {} (evaluate {script}, LOCALLY)", ts.label, c.name),
                capture: true,
            })?;
            return Ok((code, out.trim_end_matches('\n').to_string()));
        }
        let wrapped = format!(
            "mkdir -p {EVAL_DIR} && ( {script}\n) > {EVAL_DIR}/out; echo $? > {EVAL_DIR}/code"
        );
        let args = vec!["/bin/sh".into(), "-c".into(), wrapped];
        let (exec, extra) = self.exec_op(ts, proj, c, args)?;
        let name = format!("[{}] {} (evaluate {script})", ts.label, c.name);
        let state = ts
            .state
            .run(exec, extra, name.clone())
            .with_ignore_cache(self.opts.no_cache || c.flag("no-cache"));
        let probe = State::scratch().file(
            FileOp {
                actions: vec![copy_action(
                    1,
                    vec![format!("{EVAL_DIR}/")],
                    "/".into(),
                    None,
                )],
                cwd: "/".into(),
            },
            vec![state],
            format!("{name} answer"),
        );
        let dir = self.host.scratch()?;
        self.host.export(&self.contexts, &probe, &dir)?;
        let read = |name: &str| {
            let p = dir.join(name);
            std::fs::read_to_string(&p)
                .map_err(|e| BuildError::Io(format!("read the answer {}: {e}", p.display())))
        };
        let answer = read("code").and_then(|code| Ok((code, read("out")?)));
        let _ = std::fs::remove_dir_all(&dir);
        let (code, out) = answer?;
        let code = code.trim().parse::<i32>().map_err(|_| {
            src_err(
                proj,
                c.pos,
                format!("{}: the evaluation gave no exit code", c.name),
            )
        })?;
        Ok((code, out.trim_end_matches('\n').to_string()))
    }

    fn copy(&mut self, ts: &mut Ts, proj: &Arc<Project>, c: &Command) -> Result<()> {
        if let Some(p) = c.flag_pos("from") {
            return Err(src_err(
                proj,
                p,
                "COPY --from is not supported in Earthfiles; copy an artifact: COPY +target/path dest",
            ));
        }
        if ts.locally {
            return self.local_copy(ts, proj, c);
        }
        let (srcs, dest_w) = c.args.split_at(c.args.len() - 1);
        let dest_raw = self.x(ts, proj, &dest_w[0])?;
        warn_tilde(proj, c, &dest_raw);
        let dir = c.flag("dir");
        let many = srcs.len() > 1;
        let dest = ts.abs(&dest_raw);
        let into_dir = dest.ends_with('/') || many;
        let chmod = match c.value("chmod") {
            None => None,
            Some(m) => Some(
                u32::from_str_radix(m, 8)
                    .ok()
                    .filter(|m| *m <= 0o7777)
                    .ok_or_else(|| {
                        src_err(
                            proj,
                            c.flag_pos("chmod").unwrap_or(c.pos),
                            format!("--chmod={m} is not an octal mode up to 7777"),
                        )
                    })?,
            ),
        };
        let if_exists = c.flag("if-exists");
        // Earthly's COPY: owned by the image's USER (root without one) unless
        // --keep-own, dated 2020-04-16T12:00:00Z unless --keep-ts.
        let keep_own = c.flag("keep-own");
        let user = &ts.config.config.user;
        let owner = match c.value("chown") {
            Some(o) => Some(o.to_string()),
            None => (!keep_own).then(|| {
                if user.is_empty() {
                    "0:0".to_string()
                } else {
                    user.clone()
                }
            }),
        };
        let keep_own = keep_own && c.value("chown").is_none();
        let mut inputs: Vec<State> = Vec::new();
        let mut actions = Vec::new();
        let mut sources = Vec::new();
        for w in srcs {
            sources.extend(
                self.copy_source(ts, proj, c, w)?
                    .into_iter()
                    .map(|s| (w, s)),
            );
        }
        // A wildcard reference (`./dir/*+t/path`) that matched several targets.
        let into_dir = into_dir || sources.len() > 1;
        // Local files come from the target's folder, also in a function of another
        // Earthfile: functions inherit their caller's build context (Earthly's guide).
        let cx = ts.proj.clone();
        for (w, (text, from_target)) in sources {
            if from_target.is_none()
                && let Some(origin) = self.written.get(&lexical_clean(&cx.dir.join(&text)))
            {
                // Earthly's words (sic; its wait-block tests grep for them).
                return Err(hint_err(
                    proj,
                    w.pos,
                    format!(
                        "unable to copy file {text}, which has is outputted elsewhere \
                         by SAVE ARTIFACT AS LOCAL"
                    ),
                    format!(
                        "the SAVE ARTIFACT … AS LOCAL at {origin} wrote it at a WAIT's \
                         END, earlier in this build; copy it from that target's artifact \
                         instead"
                    ),
                ));
            }
            let artifact = from_target.is_some();
            // The source, its path there, and how the copy dates and owns entries.
            let (from_state, path, keep_ts, chown, keep) = match from_target {
                Some(i) => {
                    let (_, path) = split_artifact(&text).expect("checked by copy_source");
                    match self.targets[i].direct(path) {
                        // One copy instead of SAVE ARTIFACT's and COPY's: what the two
                        // would give, dates and owners included (and names: a file
                        // copied into a folder is named by its source).
                        Some(SavedPath {
                            from: Some((state, src)),
                            keep_ts: saved_ts,
                            keep_own: saved_own,
                            ..
                        }) if base_name(src) == base_name(path.trim_end_matches('/')) => {
                            let (chown, keep) = match (keep_own, saved_own) {
                                (true, true) => (None, true),
                                (true, false) => (Some("0:0".to_string()), false),
                                (false, _) => (owner.clone(), false),
                            };
                            (
                                state.clone(),
                                src.clone(),
                                c.flag("keep-ts") && *saved_ts,
                                chown,
                                keep,
                            )
                        }
                        _ => (
                            self.targets[i].artifact.clone(),
                            path.to_string(),
                            c.flag("keep-ts"),
                            owner.clone(),
                            keep_own,
                        ),
                    }
                }
                None => {
                    // --if-exists: a missing path, or a wildcard under a missing folder,
                    // copies nothing (Earthly's AllowNotFound); a wildcard that matches
                    // nothing copies nothing anyway.
                    let fixed: PathBuf = Path::new(&text)
                        .components()
                        .take_while(|c| !c.as_os_str().to_string_lossy().contains(['*', '?', '[']))
                        .collect();
                    if if_exists && !cx.dir.join(&fixed).exists() {
                        continue;
                    }
                    (
                        cx.context.clone(),
                        text.clone(),
                        c.flag("keep-ts"),
                        owner.clone(),
                        keep_own,
                    )
                }
            };
            let input = match inputs
                .iter()
                .position(|s| s.digest() == from_state.digest())
            {
                Some(i) => i + 1,
                None => {
                    inputs.push(from_state);
                    inputs.len()
                }
            };
            self.sources.push((
                path.clone(),
                proj.ef.source.error(
                    w.pos,
                    if artifact {
                        format!("COPY {text}: {}", artifact_not_found(&text))
                    } else {
                        format!(
                            "COPY {text}: not found in {} (or excluded by .earthlyignore)",
                            cx.dir.display()
                        )
                    },
                ),
            ));
            // --dir: a folder is copied as itself, into `dest` or as it (when `dest`
            // is not a folder yet), as BuildKit's copy decides when it runs.
            let target = if into_dir {
                format!("{}/", dest.trim_end_matches('/'))
            } else {
                dest.clone()
            };
            let path = if if_exists && artifact {
                optional_glob(&path)
            } else {
                path
            };
            let mut action = with_meta(
                copy_action(input, vec![path], target, chmod),
                keep_ts,
                chown,
                keep,
            );
            if let FileAction::Copy {
                dirs, no_follow, ..
            } = &mut action
            {
                *dirs = dir;
                *no_follow = c.flag("symlink-no-follow");
            }
            actions.push(action);
        }
        if actions.is_empty() {
            return Ok(());
        }
        let op = FileOp {
            actions,
            cwd: ts.cwd(),
        };
        let made = ts
            .state
            .file(op, inputs, Self::step_name(ts, c))
            .with_ignore_cache(self.opts.no_cache);
        self.history(ts, c, Some(made));
        Ok(())
    }

    /// A COPY source word: its expanded text and, for an artifact (`+t/path`, `(+t/path
    /// --ARG=v)`), the target's artifact state, lowered with the word's ARGs, the
    /// `--build-arg`s and, with `--pass-args`, the caller's ARGs.
    fn copy_source(
        &mut self,
        ts: &Ts,
        proj: &Arc<Project>,
        c: &Command,
        w: &Word,
    ) -> Result<Vec<(String, Option<usize>)>> {
        // The artifact form, with or without ( … --ARG=v ).
        let (text, args) = if w.group {
            let inner = super::parse::group_words(&w.text);
            let first = inner.first().cloned().unwrap_or_default();
            let rest: Vec<Word> = inner[1.min(inner.len())..]
                .iter()
                .map(|t| Word {
                    text: t.clone(),
                    pos: w.pos,
                    offset: 0,
                    group: false,
                })
                .collect();
            (
                self.x_ref(ts, proj, &first, w.pos)?,
                self.ref_args(ts, proj, &rest)?,
            )
        } else {
            (self.x_ref(ts, proj, &w.text, w.pos)?, BTreeMap::new())
        };
        if !(w.group || self.is_artifact_ref(ts, proj, &text)) {
            return Ok(vec![(unescape_plus(&text), None)]);
        }
        let (r, path) = split_artifact(&text).ok_or_else(|| {
            src_err(
                proj,
                w.pos,
                format!("{text:?}: an artifact reference is +target/path"),
            )
        })?;
        // The path's escapes go; the reference keeps its own for resolve_ref.
        let text = format!("{r}/{}", unescape_plus(path));
        let r = &text[..r.len()];
        let path = &text[r.len() + 1..];
        let mut all = ts.passed_args(c.flag("pass-args"), ref_plus(r) == Some(0));
        all.extend(args);
        all.extend(self.build_args(ts, proj, c)?);
        // `./dir/*+t/path`: Earthly's wildcard COPY, one source per matched target.
        let mut out = Vec::new();
        for r in self.wildcard_targets(proj, r, w.pos)? {
            let (tp, name) = self.resolve_ref(ts, proj, &r, w.pos)?;
            let idx = self.target(&tp, &name, all.clone(), Some((proj, w.pos)), false)?;
            out.push((format!("{r}/{path}"), Some(idx)));
        }
        Ok(out)
    }

    /// Whether a COPY source names an artifact (`+t/p`, `./d+t/p`, `alias+t/p`).
    fn is_artifact_ref(&self, ts: &Ts, proj: &Project, text: &str) -> bool {
        match ref_plus(text).map(|i| text.split_at(i)) {
            Some(("", _)) => true,
            Some((p, _)) => is_local_ref(p) || import_of(ts, proj, p).is_some() || is_remote_ref(p),
            None => false,
        }
    }

    fn save_artifact(&mut self, ts: &mut Ts, proj: &Arc<Project>, c: &Command) -> Result<()> {
        let words: Vec<String> = c
            .args
            .iter()
            .map(|w| self.x(ts, proj, w))
            .collect::<Result<_>>()?;
        let (src, dest, local) = match words.as_slice() {
            [s] => (s, None, None),
            [s, d] => (s, Some(d), None),
            [s, a, l, p] if a == "AS" && l == "LOCAL" => (s, None, Some(p)),
            [s, d, a, l, p] if a == "AS" && l == "LOCAL" => (s, Some(d), Some(p)),
            _ => {
                return Err(hint_err(
                    proj,
                    c.pos,
                    "SAVE ARTIFACT: unexpected arguments",
                    "usage: SAVE ARTIFACT [flags] <src> [<dest>] [AS LOCAL <path>]",
                ));
            }
        };
        let glob = src.contains(['*', '?', '[']);
        if ts.locally {
            return self.local_save_artifact(ts, proj, c, src, dest, local.is_some());
        }
        let mut abs_src = ts.abs(src);
        self.sources.push((
            abs_src.clone(),
            proj.ef.source.error(
                c.args[0].pos,
                format!(
                    "SAVE ARTIFACT {src}: {abs_src} does not exist in {}",
                    ts.label
                ),
            ),
        ));
        // Named by the absolute path (`.` in WORKDIR /base is `base`), as in Earthly.
        let cleaned = clean_abs(&abs_src);
        let name = base_name(&cleaned).to_string();
        if cleaned == "/" && !glob {
            return Err(src_err(
                proj,
                c.args[0].pos,
                format!("SAVE ARTIFACT {src}: the root folder cannot be saved as an artifact"),
            ));
        }
        if c.flag("if-exists") {
            abs_src = optional_glob(&abs_src);
        }
        let target = match dest {
            None if glob => "/".to_string(),
            None => format!("/{name}"),
            Some(d) if d.ends_with('/') && !glob => {
                format!("{}/{name}", clean_abs(d).trim_end_matches('/'))
            }
            Some(d) if glob => format!("{}/", clean_abs(d).trim_end_matches('/')),
            Some(d) => clean_abs(d),
        };
        // Earthly 0.7+ keeps the owners (save-artifact-keep-own); 0.6 gives root
        // unless --keep-own.
        let keep_own = c.flag("keep-own") || proj.ef.feature("save-artifact-keep-own");
        let owner = (!keep_own).then(|| "0:0".to_string());
        let keep_ts = c.flag("keep-ts");
        // A wildcard's folders are saved as themselves (Earthly's copy of a folder).
        let save_copy = |src: String, to: String| {
            let mut a = with_meta(
                copy_action(1, vec![src], to, None),
                keep_ts,
                owner.clone(),
                keep_own,
            );
            if let FileAction::Copy {
                dirs, no_follow, ..
            } = &mut a
            {
                *dirs = glob;
                *no_follow = c.flag("symlink-no-follow");
            }
            a
        };
        let op = FileOp {
            actions: vec![save_copy(abs_src.clone(), target.clone())],
            cwd: "/".into(),
        };
        // The CACHE --persist folders are in what SAVE ARTIFACT copies from.
        let (from, _, _) = self.persisted(ts);
        ts.saved.push(SavedPath {
            at: clean_abs(&target),
            from: (!glob && !c.flag("if-exists")).then(|| (from.clone(), abs_src.clone())),
            keep_ts,
            keep_own,
        });
        ts.artifact =
            ts.artifact
                .file(op, vec![from.clone()], format!("[{}] {}", ts.label, c.text));
        // AS LOCAL is relative to the target's folder, also in a function of another
        // Earthfile (Earthly's c.target.LocalPath: the caller's). A remote Earthfile's
        // would write into berth's checkout of it: its artifacts are for COPY and
        // --artifact only.
        let cx = ts.proj.clone();
        let local = local.filter(|_| !self.remote_names.contains_key(&cx.dir));
        if let Some(p) = local {
            check_local_save(proj, &cx.dir, c, p)?;
            // AS LOCAL writes the artifact, named as it is (`SAVE ARTIFACT a b AS
            // LOCAL d/` writes d/b).
            let name = match base_name(&clean_abs(&target)) {
                // `SAVE ARTIFACT x .`: x, in the artifact's root.
                "/" => name,
                n => n.to_string(),
            };
            let out_dest = if glob {
                "/out/".to_string()
            } else {
                format!("/out/{name}")
            };
            let op = FileOp {
                actions: vec![save_copy(abs_src, out_dest)],
                cwd: "/".into(),
            };
            let state =
                State::scratch().file(op, vec![from], format!("[{}] {} (local)", ts.label, c.text));
            let dest = if p.starts_with('/') {
                p.clone()
            } else {
                format!("{}/{p}", cx.dir.display())
            };
            ts.locals.push(SavedLocal {
                state,
                glob,
                name,
                dest,
                origin: format!("{}:{}", proj.ef.source.name(), c.pos.line),
                early: false,
            });
        }
        Ok(())
    }

    /// `SAVE ARTIFACT src [dest]` of a `LOCALLY` target: the host's `src` (in the
    /// Earthfile's folder) as it is now, copied into a folder of the build, becomes the
    /// artifact.
    fn local_save_artifact(
        &mut self,
        ts: &mut Ts,
        proj: &Arc<Project>,
        c: &Command,
        src: &str,
        dest: Option<&String>,
        as_local: bool,
    ) -> Result<()> {
        if as_local {
            return Err(hint_err(
                proj,
                c.pos,
                "SAVE ARTIFACT … AS LOCAL is not allowed in a LOCALLY target",
                "the file is on this host already; copy it with RUN cp",
            ));
        }
        if src.contains(['*', '?', '[']) {
            return Err(src_err(
                proj,
                c.args[0].pos,
                format!("SAVE ARTIFACT {src}: a LOCALLY target saves one path, no wildcards"),
            ));
        }
        let host_src = PathBuf::from(ts.abs(src));
        if std::fs::symlink_metadata(&host_src).is_err() {
            if c.flag("if-exists") {
                return Ok(());
            }
            return Err(src_err(
                proj,
                c.args[0].pos,
                format!(
                    "SAVE ARTIFACT {src}: {} does not exist on this host",
                    host_src.display()
                ),
            ));
        }
        let name = base_name(src.trim_end_matches('/')).to_string();
        let dir = self.host.scratch()?;
        crate::fileops::copy_tree(&host_src, &dir.join(&name)).map_err(|e| {
            src_err(
                proj,
                c.pos,
                format!("SAVE ARTIFACT {src}: copy {}: {e}", host_src.display()),
            )
        })?;
        // A name of its own per snapshot, the same from build to build.
        let ctx = format!("locally:{}", self.contexts.len());
        self.contexts.insert(ctx.clone(), dir);
        let target = match dest {
            None => format!("/{name}"),
            Some(d) if d.ends_with('/') => format!("{}/{name}", clean_abs(d).trim_end_matches('/')),
            Some(d) => clean_abs(d),
        };
        let keep_own = c.flag("keep-own");
        let op = FileOp {
            actions: vec![with_meta(
                copy_action(1, vec![name], target.clone(), None),
                c.flag("keep-ts"),
                (!keep_own).then(|| "0:0".to_string()),
                keep_own,
            )],
            cwd: "/".into(),
        };
        let source = State::local(LocalSource {
            name: ctx,
            exclude: Vec::new(),
        });
        ts.saved.push(SavedPath {
            at: clean_abs(&target),
            from: None,
            keep_ts: c.flag("keep-ts"),
            keep_own,
        });
        ts.artifact = ts
            .artifact
            .file(op, vec![source], format!("[{}] {}", ts.label, c.text));
        Ok(())
    }

    /// `DO +FN --X=v`: the function's statements on the caller's state, with an ARG
    /// scope of their own.
    fn call(&mut self, ts: &mut Ts, proj: &Arc<Project>, c: &Command) -> Result<()> {
        let r = self.x(ts, proj, &c.args[0])?;
        let (fp, name) = self.resolve_ref(ts, proj, &r, c.args[0].pos)?;
        let Some(f) = fp.ef.function(&name) else {
            // A function's name (Earthly's lexer: upper case) whose recipe does not
            // start with its VERSION's keyword.
            if let Some(t) = fp
                .ef
                .target(&name)
                .filter(|_| name.starts_with(|c: char| c.is_ascii_uppercase()))
            {
                return Err(BuildError::Source(super::parse::function_keyword_error(
                    &fp.ef.source,
                    fp.ef.version.as_ref(),
                    t.pos,
                )));
            }
            return Err(src_err(
                proj,
                c.args[0].pos,
                format!("function {r} not found in {}", fp.ef.source.name()),
            ));
        };
        let body = f.body.clone();
        // A function gets no ARGs of its caller but with --pass-args.
        let mut args = ts.passed_args(c.flag("pass-args"), false);
        args.extend(self.ref_args(ts, proj, &c.args[1..])?);
        let key = format!("{}+{name}", fp.dir.display());
        if self.active.iter().any(|(k, _)| *k == key) {
            return Err(src_err(
                proj,
                c.args[0].pos,
                format!("function {r} calls itself"),
            ));
        }
        let saved_vars = ts.vars.clone();
        let saved_declared = std::mem::take(&mut ts.declared);
        let saved_overrides = std::mem::replace(&mut ts.overrides, args);
        ts.vars.retain(|v| v.kind == VarKind::Env);
        // A function of the same Earthfile sees its global ARGs, which the DO's
        // `--NAME=value`s override, as in Earthly.
        if fp.dir == proj.dir {
            let globals = ts.globals.clone();
            for g in globals {
                let value = ts.overrides.get(&g.name).cloned().unwrap_or(g.value);
                ts.set_var(&g.name, value, VarKind::Arg);
            }
        } else {
            // One of another Earthfile sees that file's global ARGs (and IMPORTs): its
            // base recipe lowered with the DO's arguments, as Earthly's EnterScopeDo.
            let outer = self.platform.clone();
            let base = self.base(&fp, &ts.overrides);
            self.platform = outer;
            let base = base.map_err(|e| match e {
                BuildError::Source(mut e) => {
                    e.push_frame(format!("{}+base", fp.reference));
                    BuildError::Source(e)
                }
                e => e,
            })?;
            for g in base.globals {
                ts.set_var(&g.name, g.value, VarKind::Arg);
            }
            ts.imports.extend(base.imports);
        }
        self.active.push((key, r));
        let result = self.stmts(ts, &fp, &body);
        self.active.pop();
        ts.overrides = saved_overrides;
        ts.declared = saved_declared;
        let env: Vec<Var> = ts
            .vars
            .iter()
            .filter(|v| v.kind == VarKind::Env)
            .cloned()
            .collect();
        ts.vars = saved_vars
            .into_iter()
            .filter(|v| v.kind != VarKind::Env)
            .collect();
        for v in env {
            ts.set_var(&v.name, v.value, VarKind::Env);
        }
        result
    }
}

/// The config of the empty image (`FROM scratch`, and a base recipe without FROM) for
/// `platform`, working in `/` as BuildKit's empty image does.
fn scratch_config(platform: &Platform) -> ImageConfig {
    let mut config = ImageConfig {
        architecture: platform.architecture.clone(),
        os: platform.os.clone(),
        variant: platform.variant.clone(),
        ..Default::default()
    };
    config.config.working_dir = "/".into();
    config
}

/// A copy of `sources` of input `from` to `dest`.
/// Earthly's warning for a COPY destination with a `~` word (`~/x`, `/a/~/b`, `~u/x`):
/// no shell expands it, so it names a folder called `~`.
fn warn_tilde(proj: &Project, c: &Command, dest: &str) {
    if dest.split('/').any(|s| s.starts_with('~')) {
        tracing::warn!(
            "{}:{}:{}: destination path {dest:?} contains a \"~\" which does not expand to a home directory",
            proj.ef.source.name(),
            c.pos.line,
            c.pos.column
        );
    }
}

fn copy_action(from: usize, sources: Vec<String>, dest: String, chmod: Option<u32>) -> FileAction {
    FileAction::Copy {
        from,
        sources,
        dest,
        chown: None,
        chmod,
        extract_archives: false,
        exclude: Vec::new(),
        parents: false,
        chmod_symbolic: None,
        mtime: None,
        keep_owner: false,
        dirs: false,
        no_follow: false,
    }
}

/// Copy `a` with Earthly's metadata: every entry dated [`EARTHLY_MTIME`] unless
/// `keep_ts`, owned by `chown` (`None`: as the source's kind decides) or, with
/// `keep_owner`, by the sources' owners.
fn with_meta(
    mut a: FileAction,
    keep_ts: bool,
    chown: Option<String>,
    keep_owner: bool,
) -> FileAction {
    if let FileAction::Copy {
        mtime,
        chown: owner,
        keep_owner: keep,
        ..
    } = &mut a
    {
        *mtime = (!keep_ts).then_some(EARTHLY_MTIME);
        *owner = chown;
        *keep = keep_owner;
    }
    a
}

/// Move (or copy, across file systems) `src` to `dest` on the host: a folder is merged
/// into the folder there, a file replaces what is there.
fn merge_into(src: &Path, dest: &Path) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(src)?;
    let existing = std::fs::symlink_metadata(dest).ok();
    if meta.is_dir() {
        match existing {
            Some(d) if d.is_dir() => {}
            Some(_) => std::fs::remove_file(dest)?,
            None => std::fs::create_dir_all(dest)?,
        }
        for e in std::fs::read_dir(src)? {
            let e = e?;
            merge_into(&e.path(), &dest.join(e.file_name()))?;
        }
        return std::fs::set_permissions(dest, meta.permissions());
    }
    match existing {
        Some(d) if d.is_dir() => std::fs::remove_dir_all(dest)?,
        Some(_) => std::fs::remove_file(dest)?,
        None => {
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent)?;
            }
        }
    }
    if std::fs::rename(src, dest).is_ok() {
        return Ok(());
    }
    crate::fileops::copy_tree(src, dest)
}

/// `path` as a wildcard that matches only itself, so a missing path copies nothing
/// (`--if-exists`): the first letter of its last component in brackets. The folders
/// before it must still exist.
fn optional_glob(path: &str) -> String {
    if path.contains(['*', '?', '[']) {
        return path.to_string();
    }
    let trimmed = path.trim_end_matches('/');
    let (dir, last) = match trimmed.rsplit_once('/') {
        Some((d, l)) => (format!("{d}/"), l),
        None => (String::new(), trimmed),
    };
    let mut chars = last.chars();
    match chars.next() {
        Some(ch) if ch != '\\' => format!("{dir}[{ch}]{}", chars.as_str()),
        _ => path.to_string(),
    }
}

/// `+t/path` → (`+t`, `path`).
/// Why artifact `text` (`+t/path`) cannot be copied: `path` is not among the
/// artifacts of `+t` (Earthly's words: "not found").
fn artifact_not_found(text: &str) -> String {
    match split_artifact(text) {
        Some((r, path)) => format!("{path} not found in the artifacts of {r}"),
        None => "not found".into(),
    }
}

fn split_artifact(text: &str) -> Option<(&str, &str)> {
    let plus = ref_plus(text)?;
    let slash = text[plus..].find('/')? + plus;
    let path = &text[slash + 1..];
    // `+t/` is the whole artifact folder (FROM DOCKERFILE +t/).
    Some((&text[..slash], if path.is_empty() { "." } else { path }))
}

fn collect_commands<'a>(body: &'a [Stmt], out: &mut Vec<&'a Command>) {
    for s in body {
        match s {
            Stmt::Command(c) => out.push(c),
            Stmt::If {
                branches,
                otherwise,
            } => {
                for (_, b) in branches {
                    collect_commands(b, out);
                }
                if let Some(b) = otherwise {
                    collect_commands(b, out);
                }
            }
            Stmt::For { body, .. } | Stmt::Wait { body, .. } | Stmt::WithDocker { body, .. } => {
                collect_commands(body, out)
            }
            Stmt::Try {
                body,
                catch,
                finally,
                ..
            } => {
                collect_commands(body, out);
                for b in [catch, finally].into_iter().flatten() {
                    collect_commands(b, out);
                }
            }
        }
    }
}

/// Run `git ARGS` (in `dir`); its standard output, or an error with its standard error.
fn run_git(args: &[&str], dir: Option<&Path>) -> std::result::Result<String, String> {
    let mut cmd = std::process::Command::new("git");
    if let Some(d) = dir {
        cmd.arg("-C").arg(d);
    }
    let out = cmd
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .map_err(|e| format!("run git: {e}; install git to use remote references"))?;
    if !out.status.success() {
        return Err(format!(
            "git {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The git facts builtin ARGs give, for the repository `dir` is in (none outside one),
/// read as Earthly's `gitutil.Metadata` reads them: each fact on its own, so a
/// repository without commits still gives its origin.
fn git_info(dir: &Path) -> HashMap<&'static str, String> {
    let git = |args: &[&str]| -> Option<String> {
        let s = run_git(args, Some(dir)).ok()?;
        let first = s.lines().next().unwrap_or("").trim().to_string();
        (!first.is_empty()).then_some(first)
    };
    let mut m = HashMap::new();
    let Some(top) = git(&["rev-parse", "--show-toplevel"]) else {
        return m;
    };
    if let Some(o) = git(&["config", "--get", "remote.origin.url"]) {
        let rel = std::fs::canonicalize(dir)
            .ok()
            .and_then(|d| {
                let top = std::fs::canonicalize(&top).ok()?;
                Some(d.strip_prefix(top).ok()?.to_path_buf())
            })
            .unwrap_or_default();
        let mut url = origin_project(&o);
        if !rel.as_os_str().is_empty() {
            url = format!("{url}/{}", rel.display());
        }
        m.insert("git_url", url);
        m.insert("project", git_project_name(&o));
        m.insert("origin", o);
    }
    if let Some(hash) = git(&["rev-parse", "HEAD"]) {
        m.insert("hash", hash);
    }
    if let Some(b) = git(&["rev-parse", "--abbrev-ref", "HEAD"]) {
        m.insert("branch", b);
    }
    if let Some(t) = git(&["describe", "--exact-match", "--tags"]) {
        m.insert("tag", t);
    }
    if let Some(t) = git(&["log", "-1", "--format=%ct"]) {
        m.insert("timestamp", t);
    }
    if let Some(t) = git(&["log", "-1", "--format=%at"]) {
        m.insert("author_timestamp", t);
    }
    // The branches and tags at HEAD, as Earthly's EARTHLY_GIT_REFS.
    if let Ok(r) = run_git(
        &[
            "for-each-ref",
            "--points-at",
            "HEAD",
            "--format=%(refname:short)",
        ],
        Some(dir),
    ) && !r.trim().is_empty()
    {
        m.insert("refs", r.lines().collect::<Vec<_>>().join(" "));
    }
    m
}

/// `tag` as a Docker tag, as Earthly's `llbutil.DockerTagSafe` makes it: `latest` for
/// none, at most 128 characters, a first one that is not a word character and later
/// ones that are not word characters, `.` or `-` made `_`.
fn docker_tag_safe(tag: &str) -> String {
    if tag.is_empty() {
        return "latest".into();
    }
    tag.chars()
        .take(128)
        .enumerate()
        .map(|(i, c)| {
            let word = c.is_ascii_alphanumeric() || c == '_';
            if word || (i > 0 && (c == '.' || c == '-')) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The project path Earthly names a repository by, from its origin URL (its
/// `ParseGitRemoteURL`): without the scheme, the `user@` and a `.git` suffix, the
/// first `:` (of `git@host:org/repo`) made a `/`. `https://github.com/earthly/earthly.git`
/// and `git@github.com:earthly/earthly.git` give `github.com/earthly/earthly`.
fn origin_project(origin: &str) -> String {
    let s = origin.split_once("://").map_or(origin, |(_, rest)| rest);
    let s = s.split_once('@').map_or(s, |(_, rest)| rest);
    let s = s.replacen(':', "/", 1);
    s.strip_suffix(".git").unwrap_or(&s).to_string()
}

/// EARTHLY_GIT_PROJECT_NAME, as Earthly's `getProjectName` makes it from the origin
/// URL: the path after the host (`earthly/earthly`, or `group/sub/repo`).
fn git_project_name(origin: &str) -> String {
    let (scheme, s) = match origin.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, origin),
    };
    let s = s.split_once('@').map_or(s, |(_, rest)| rest);
    let s = if scheme.is_none() {
        s.replacen(':', "/", 1)
    } else {
        s.to_string()
    };
    let s = s.strip_suffix(".git").unwrap_or(&s);
    s.split_once('/').map_or(s, |(_, path)| path).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lower `reference` of an Earthfile `text` (plus `files`: path, Earthfile text)
    /// with `args`; nothing may need a base image.
    fn plan(
        text: &str,
        files: &[(&str, &str)],
        reference: &str,
        args: &[(&str, &str)],
    ) -> Result<Plan> {
        plan_allowed(text, files, reference, args, &[])
    }

    /// As [`plan`], with entitlements `allow` granted.
    fn plan_allowed(
        text: &str,
        files: &[(&str, &str)],
        reference: &str,
        args: &[(&str, &str)],
        allow: &[ir::Entitlement],
    ) -> Result<Plan> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("Earthfile"), text).unwrap();
        for (p, t) in files {
            let f = dir.path().join(p).join("Earthfile");
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::fs::write(f, t).unwrap();
        }
        let opts = EarthOptions {
            args: args
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            allow: allow.to_vec(),
            ..EarthOptions::default()
        };
        plan_in(dir.path(), reference, &opts)
    }

    /// Lower `reference` of the Earthfiles already written under `dir`.
    fn plan_in(dir: &Path, reference: &str, opts: &EarthOptions) -> Result<Plan> {
        let mut host = Fake {
            scratch: tempfile::tempdir().unwrap(),
            runs: Vec::new(),
        };
        let mut resolve = |r: &str, _: &Platform| panic!("nothing to resolve, asked {r}");
        let plan = lower(dir, reference, opts, &mut resolve, &mut host);
        RUNS.with(|r| *r.borrow_mut() = host.runs.clone());
        plan
    }

    thread_local! {
        /// The LOCALLY commands the last [`plan`] ran.
        static RUNS: std::cell::RefCell<Vec<LocalRun>> = const { std::cell::RefCell::new(Vec::new()) };
    }

    /// A host that answers as if the container ran the script (`true` exits 0, `false`
    /// 1, `echo W` prints W), and records LOCALLY commands instead of running them.
    struct Fake {
        scratch: tempfile::TempDir,
        runs: Vec<LocalRun>,
    }

    impl Host for Fake {
        fn scratch(&mut self) -> Result<PathBuf> {
            Ok(tempfile::tempdir_in(self.scratch.path()).unwrap().keep())
        }

        fn export(
            &mut self,
            _: &HashMap<String, PathBuf>,
            probe: &State,
            dest: &Path,
        ) -> Result<()> {
            let exec = &probe.vertex().inputs[1];
            let Op::Exec(e) = &exec.vertex().op else {
                panic!("a probe reads an exec")
            };
            let script = e.args[2].clone();
            let cmd = script
                .split("( ")
                .nth(1)
                .unwrap()
                .split('\n')
                .next()
                .unwrap();
            let code = if cmd.starts_with("false") { "1" } else { "0" };
            let out = cmd.strip_prefix("echo ").unwrap_or("").to_string();
            std::fs::write(dest.join("code"), format!("{code}\n")).unwrap();
            std::fs::write(dest.join("out"), format!("{out}\n")).unwrap();
            Ok(())
        }

        fn run_local(&mut self, run: &LocalRun) -> Result<(i32, String)> {
            self.runs.push(run.clone());
            let script = run.args.last().cloned().unwrap_or_default();
            let code = i32::from(script.starts_with("false"));
            Ok((code, script.strip_prefix("echo ").unwrap_or("").to_string()))
        }
    }

    fn err(text: &str, reference: &str) -> String {
        let e = plan(text, &[], reference, &[]).unwrap_err().to_string();
        e.lines().next().unwrap().to_string()
    }

    fn exec_env(s: &State) -> Vec<String> {
        match &s.vertex().op {
            Op::Exec(e) => e.env.clone(),
            op => panic!("not a RUN: {op:?}"),
        }
    }

    #[test]
    fn a_target_with_the_same_args_is_lowered_once() {
        let text = "VERSION 0.8\nFROM scratch\na:\n    BUILD +b --X=1\n    BUILD +b --X=1\n    BUILD +b --X=2\n    BUILD +c\nb:\n    ARG X\n    RUN echo $X\nc:\n    COPY +b/nothing /x\n    COPY (+b/nothing --X=2) /y\n";
        let p = plan(text, &[], "+a", &[]).unwrap();
        let labels: Vec<&str> = p.targets.iter().map(|t| t.label.as_str()).collect();
        assert_eq!(labels, ["+b --X=1", "+b --X=2", "+b", "+c", "+a"]);
        assert_eq!(p.targets[p.invoked].builds, [0, 1, 3]);
        // The output rule: BUILD chains only; +c's COPY of +b does not connect +b.
        let mut connected = p.connected();
        connected.sort();
        assert_eq!(connected, [0, 1, 3, 4]);
        assert!(exec_env(&p.targets[0].state).contains(&"X=1".to_string()));
    }

    #[test]
    fn build_with_several_values_of_an_arg_builds_each_combination() {
        let text = "VERSION 0.8\nFROM scratch\na:\n    BUILD +b --X=1 --Y=p --X=2 --Y=q\nb:\n    ARG X\n    ARG Y\n    RUN echo $X$Y\n";
        let p = plan(text, &[], "+a", &[]).unwrap();
        let mut labels: Vec<&str> = p.targets.iter().map(|t| t.label.as_str()).collect();
        labels.sort();
        assert_eq!(
            labels,
            [
                "+a",
                "+b --X=1 --Y=p",
                "+b --X=1 --Y=q",
                "+b --X=2 --Y=p",
                "+b --X=2 --Y=q"
            ]
        );
        assert_eq!(p.targets[p.invoked].builds.len(), 4);
        // `--build-arg`s join the matrix (Earthly's BuildArgMatrix), and before VERSION
        // 0.7 a value that is one `$( … )` runs in the caller, as `--X=$( … )` does.
        let text = "VERSION 0.6\nFROM scratch\na:\n    BUILD --build-arg X=1 --build-arg X=\"$(echo 2)\" +b\n\
                    b:\n    ARG X\n    RUN echo $X\n";
        let p = plan(text, &[], "+a", &[]).unwrap();
        let mut labels: Vec<&str> = p.targets.iter().map(|t| t.label.as_str()).collect();
        labels.sort();
        assert_eq!(labels, ["+a", "+b --X=1", "+b --X=2"]);
        // `--build-arg X` passes this target's X, as Earthly infers it; none is an error.
        let text = "VERSION 0.8\nFROM scratch\na:\n    ARG X=mine\n    BUILD --build-arg X +b\n\
                    b:\n    ARG X\n    RUN echo $X\nc:\n    BUILD --build-arg Y +b\n";
        let p = plan(text, &[], "+a", &[]).unwrap();
        assert!(p.targets.iter().any(|t| t.label == "+b --X=mine"));
        assert_eq!(
            err(text, "+c"),
            "Earthfile:10:11: value not specified for build arg Y and no value can be inferred"
        );
    }

    #[test]
    fn cycles_are_reported_with_the_chain() {
        let text = "VERSION 0.8\na:\n    FROM +b\nb:\n    FROM scratch\n    COPY +c/x /\nc:\n    BUILD +a\n";
        assert_eq!(
            err(text, "+a"),
            "Earthfile:8:11: cycle: +a -> +b -> +c -> +a"
        );
    }

    /// Earthly names the targets of a repository with an origin by that origin
    /// (`gitutil.ReferenceWithGitMeta`), in a folder of it by the folder too, and tags
    /// them with HEAD's tag, branch or commit; without commits, untagged.
    #[test]
    fn builtin_target_names_come_from_the_git_origin() {
        let git_found = std::process::Command::new("git")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !git_found && !berth_testutil::skip("git is not installed") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let text = "VERSION 0.8\nFROM scratch\nt:\n    ARG EARTHLY_TARGET\n    \
                    ARG EARTHLY_TARGET_PROJECT\n    ARG EARTHLY_TARGET_PROJECT_NO_TAG\n    \
                    ARG EARTHLY_TARGET_TAG\n    ARG EARTHLY_TARGET_TAG_DOCKER\n    \
                    ARG EARTHLY_GIT_PROJECT_NAME\n    ARG EARTHLY_GIT_HASH\n    RUN true\n";
        std::fs::write(dir.path().join("Earthfile"), text).unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/Earthfile"), text).unwrap();
        let git = |args: &[&str]| {
            let out = std::process::Command::new("git")
                .arg("-C")
                .arg(dir.path())
                .args(["-c", "user.name=t", "-c", "user.email=t@example.invalid"])
                .args(args)
                .output()
                .unwrap();
            assert!(out.status.success(), "git {args:?}: {out:?}");
        };
        let builtins = |reference: &str| -> Vec<String> {
            let p = plan_in(dir.path(), reference, &EarthOptions::default()).unwrap();
            let mut env = exec_env(&p.targets[p.invoked].state);
            env.retain(|e| e.starts_with("EARTHLY_"));
            env.sort();
            env
        };
        // A repository, no origin: the target keeps its plain name, untagged.
        git(&["init", "-q", "-b", "main"]);
        assert_eq!(
            builtins("+t"),
            [
                "EARTHLY_GIT_HASH=",
                "EARTHLY_GIT_PROJECT_NAME=",
                "EARTHLY_TARGET=+t",
                "EARTHLY_TARGET_PROJECT=",
                "EARTHLY_TARGET_PROJECT_NO_TAG=",
                "EARTHLY_TARGET_TAG=",
                "EARTHLY_TARGET_TAG_DOCKER=latest",
            ]
        );
        // An origin, no commit yet (Earthly's empty-git.earth +test-origin-no-hash).
        git(&[
            "remote",
            "add",
            "origin",
            "https://github.com/earthly/earthly.git",
        ]);
        assert_eq!(
            builtins("+t"),
            [
                "EARTHLY_GIT_HASH=",
                "EARTHLY_GIT_PROJECT_NAME=earthly/earthly",
                "EARTHLY_TARGET=github.com/earthly/earthly+t",
                "EARTHLY_TARGET_PROJECT=github.com/earthly/earthly",
                "EARTHLY_TARGET_PROJECT_NO_TAG=github.com/earthly/earthly",
                "EARTHLY_TARGET_TAG=",
                "EARTHLY_TARGET_TAG_DOCKER=latest",
            ]
        );
        // A commit on a branch: tagged with the branch; a folder of the repository
        // is part of the project path.
        git(&["add", "-A"]);
        git(&["commit", "-qm", "one"]);
        git(&["checkout", "-qb", "feature/x"]);
        git(&[
            "remote",
            "set-url",
            "origin",
            "git@gitlab.com:group/sub/repo.git",
        ]);
        let sub = builtins("./sub+t");
        let hash = sub[0].clone();
        assert!(hash.len() == "EARTHLY_GIT_HASH=".len() + 40, "{hash}");
        assert_eq!(
            sub[1..],
            [
                "EARTHLY_GIT_PROJECT_NAME=group/sub/repo",
                "EARTHLY_TARGET=gitlab.com/group/sub/repo/sub:feature/x+t",
                "EARTHLY_TARGET_PROJECT=gitlab.com/group/sub/repo/sub:feature/x",
                "EARTHLY_TARGET_PROJECT_NO_TAG=gitlab.com/group/sub/repo/sub",
                "EARTHLY_TARGET_TAG=feature/x",
                "EARTHLY_TARGET_TAG_DOCKER=feature_x",
            ]
        );
        // A tag at HEAD goes before the branch.
        git(&["tag", "v1.0"]);
        assert!(builtins("+t").contains(&"EARTHLY_TARGET=gitlab.com/group/sub/repo:v1.0+t".into()));
    }

    #[test]
    fn origin_urls_become_project_paths_as_in_earthly() {
        for (origin, project, name) in [
            (
                "https://github.com/earthly/earthly.git",
                "github.com/earthly/earthly",
                "earthly/earthly",
            ),
            (
                "git@github.com:earthly/earthly.git",
                "github.com/earthly/earthly",
                "earthly/earthly",
            ),
            // Earthly makes the first `:` a `/` whatever the form, a port's too.
            (
                "ssh://git@host.example:2222/org/repo",
                "host.example/2222/org/repo",
                "org/repo",
            ),
            (
                "https://user:token@git.example/a/b/c.git",
                "git.example/a/b/c",
                "a/b/c",
            ),
        ] {
            assert_eq!(origin_project(origin), project, "{origin}");
            assert_eq!(git_project_name(origin), name, "{origin}");
        }
        assert_eq!(docker_tag_safe(""), "latest");
        assert_eq!(docker_tag_safe("-feature/x.1"), "_feature_x.1");
    }

    /// A file without VERSION is Earthly 0.5: the builtins of later versions are
    /// ordinary ARGs, every ARG of the base recipe is global, and a builtin's default
    /// is refused unless empty, without running its `$( … )`.
    #[test]
    fn a_file_without_version_is_earthly_0_5() {
        let text = "FROM scratch\nARG G=g\nt:\n    ARG EARTHLY_VERSION\n    ARG EARTHLY_CI\n    \
                    ARG EARTHLY_TARGET_NAME\n    ARG NATIVEARCH\n    ARG EARTHLY_PUSH\n    \
                    BUILD +u\n    RUN true\nu:\n    ARG G\n    RUN u\n";
        let p = plan(text, &[], "+t", &[]).unwrap();
        let env = exec_env(&p.targets[p.invoked].state);
        for want in [
            "EARTHLY_VERSION=",
            "EARTHLY_CI=",
            "EARTHLY_TARGET_NAME=t",
            "NATIVEARCH=",
            "EARTHLY_PUSH=",
        ] {
            assert!(env.contains(&want.to_string()), "{want} not in {env:?}");
        }
        // The base recipe's ARG is global: +u, built with no ARGs, sees its value.
        let u = p.targets.iter().find(|t| t.label == "+u").unwrap();
        assert!(exec_env(&u.state).contains(&"G=g".to_string()));
        // `VERSION 0.5`, which Earthly 0.5 to 0.7 took, is the same.
        let p = plan(&format!("VERSION 0.5\n{text}"), &[], "+t", &[]).unwrap();
        assert!(exec_env(&p.targets[p.invoked].state).contains(&"EARTHLY_CI=".to_string()));
        let u = p.targets.iter().find(|t| t.label == "+u").unwrap();
        assert!(exec_env(&u.state).contains(&"G=g".to_string()));
        // The same file at VERSION 0.8: builtins, and G only where declared global.
        let p = plan(&format!("VERSION 0.8\n{text}"), &[], "+t", &[]).unwrap();
        let env = exec_env(&p.targets[p.invoked].state);
        assert!(env.contains(&"EARTHLY_CI=false".to_string()), "{env:?}");
        assert!(env.iter().any(|e| e.starts_with("EARTHLY_VERSION=berth-")));
        let u = p.targets.iter().find(|t| t.label == "+u").unwrap();
        assert!(exec_env(&u.state).contains(&"G=".to_string()));

        for (text, want) in [
            // Refused as in Earthly (its static list of builtins), the command not run.
            (
                "FROM scratch\nt:\n    ARG EARTHLY_VERSION=$(echo \"$TAG\" | cut -c 2-)\n",
                "Earthfile:3:9: arg default value supplied for built-in ARG EARTHLY_VERSION",
            ),
            (
                "FROM scratch\nARG --global G=g\nt:\n    RUN true\n",
                "Earthfile:2:5: unknown flag --global",
            ),
            // From 0.7 the default is expanded first: refused when not empty.
            (
                "VERSION 0.8\nFROM scratch\nt:\n    ARG EARTHLY_VERSION=$(echo v1)\n",
                "Earthfile:4:9: arg default value supplied for built-in ARG EARTHLY_VERSION",
            ),
        ] {
            assert_eq!(err(text, "+t"), want, "{text:?}");
        }
        // An empty default is no default; one that expands to nothing gives the builtin.
        let p = plan(
            "FROM scratch\nt:\n    ARG EARTHLY_VERSION=\n    RUN true\n",
            &[],
            "+t",
            &[],
        );
        let p = p.unwrap();
        let env = exec_env(&p.targets[p.invoked].state);
        assert!(env.contains(&"EARTHLY_VERSION=".to_string()), "{env:?}");
        let text = "VERSION 0.8\nFROM scratch\nt:\n    ARG EARTHLY_VERSION=$(echo)\n    RUN true\n";
        let p = plan(text, &[], "+t", &[]).unwrap();
        let env = exec_env(&p.targets[p.invoked].state);
        assert!(
            env.iter().any(|e| e.starts_with("EARTHLY_VERSION=berth-")),
            "{env:?}"
        );
    }

    #[test]
    fn function_keywords_follow_the_version_as_in_earthly() {
        // A file without VERSION is Earthly 0.5: COMMAND, as in 0.6 and 0.7.
        let call = "FROM scratch\nt:\n    DO +FN\nFN:\n";
        assert!(
            plan(
                &format!("{call}    COMMAND\n    RUN true\n"),
                &[],
                "+t",
                &[]
            )
            .is_ok()
        );
        for (text, want) in [
            (
                format!("{call}    FUNCTION\n    RUN true\n"),
                "Earthfile:4:1: command recipes must start with COMMAND",
            ),
            (
                format!("VERSION 0.8\n{call}    COMMAND\n    RUN true\n"),
                "Earthfile:5:1: function recipes must start with FUNCTION",
            ),
            // A function's name whose recipe starts with neither.
            (
                format!("VERSION 0.7\n{call}    RUN true\n"),
                "Earthfile:5:1: command recipes must start with COMMAND",
            ),
            (
                format!("VERSION 0.8\n{call}    FUNCTION\n    RUN a\n    FUNCTION\n"),
                "Earthfile:8:5: command FUNCTION not allowed in a target definition",
            ),
            (
                "VERSION 0.8\nFROM scratch\nt:\n    DO +NONE\n".to_string(),
                "Earthfile:4:8: function +NONE not found in Earthfile",
            ),
        ] {
            assert_eq!(err(&text, "+t"), want, "{text:?}");
        }
    }

    #[test]
    fn imports_expand_their_variables_when_they_run() {
        // Earthly expands an IMPORT's reference and alias with the ARGs in scope: the
        // base recipe's for a global one, the target's for one in a recipe.
        let text = "VERSION 0.8\nARG --global lib=./one\nIMPORT $lib AS l\nt:\n    BUILD l+u\n\
                    r:\n    ARG name=two\n    IMPORT ./$name AS $name\n    BUILD two+u\n";
        let files = [
            (
                "one",
                "VERSION 0.8\nu:\n    FROM scratch\n    SAVE IMAGE one\n",
            ),
            (
                "two",
                "VERSION 0.8\nu:\n    FROM scratch\n    SAVE IMAGE two\n",
            ),
        ];
        let images = |reference: &str, args: &[(&str, &str)]| {
            let p = plan(text, &files, reference, args).unwrap();
            let mut names: Vec<String> = p
                .connected()
                .iter()
                .flat_map(|&i| p.targets[i].images.iter().flat_map(|s| s.names.clone()))
                .collect();
            names.sort();
            names
        };
        assert_eq!(images("+t", &[]), ["one"]);
        assert_eq!(images("+t", &[("lib", "./two")]), ["two"]);
        assert_eq!(images("+r", &[]), ["two"]);
        // An alias is known only once its IMPORT ran.
        let text =
            "VERSION 0.8\nFROM scratch\nt:\n    ARG d=./one\n    BUILD l+u\n    IMPORT $d AS l\n";
        let got = plan(text, &files, "+t", &[]).unwrap_err().to_string();
        assert!(got.contains("l is not an IMPORT alias"), "{got}");
    }

    #[test]
    fn run_mounts_are_expanded_before_they_are_split() {
        // One variable may hold a whole mount spec, as Earthly expands the flag first.
        let text = "VERSION 0.8\nFROM scratch\nt:\n    ENV M=\"type=cache,id=c1,sharing=shared,target=/c\"\n    RUN --mount $M x\n";
        let p = plan(text, &[], "+t", &[]).unwrap();
        let Op::Exec(e) = &p.targets[p.invoked].state.vertex().op else {
            panic!("a RUN step")
        };
        assert_eq!(e.mounts.len(), 1);
        assert_eq!(e.mounts[0].target, "/c");
        assert!(matches!(&e.mounts[0].source, MountSource::Cache { id, .. } if id == "c1"));
    }

    #[test]
    fn with_docker_load_names_as_earthly_parses_them() {
        let insecure = [ir::Entitlement::SecurityInsecure];
        let loads = |load: &str| {
            let text = format!(
                "VERSION 0.8\nFROM scratch\nimg:\n    ARG var=none\n    FROM scratch\n    \
                 SAVE IMAGE saved:$var\nt:\n    WITH DOCKER --load {load}\n        RUN x\n    END\n"
            );
            let p = plan_allowed(&text, &[], "+t", &[], &insecure)?;
            let Op::Exec(e) = &p.targets[p.invoked].state.vertex().op else {
                panic!("a RUN step")
            };
            Ok::<_, BuildError>(e.docker.clone().unwrap().loads[0].tag.clone())
        };
        // `$NAME=` of an unset NAME leaves `=`: the name SAVE IMAGE gives, as none.
        assert_eq!(loads("$UNSET=+img").unwrap(), "saved:none");
        assert_eq!(loads("n=(+img --var a)").unwrap(), "n");
        // `--NAME value` too, as Earthly's flag parser takes it.
        assert_eq!(loads("(+img --var b)").unwrap(), "saved:b");
        let e = loads("(+img --var)").unwrap_err().to_string();
        assert!(e.contains("no value provided for --var"), "{e}");
    }

    #[test]
    fn a_missing_dockerfile_context_fails_only_when_it_is_read() {
        // `FROM DOCKERFILE -f d/Earthfile -`: Earthly's context `-` is a folder that is
        // not there, which BuildKit reads only if the Dockerfile copies from it.
        let text = "VERSION 0.8\nt:\n    FROM DOCKERFILE -f d/Earthfile -\n    RUN x\n";
        let p = plan(text, &[("d", "FROM scratch\nENV A=1\n")], "+t", &[]).unwrap();
        assert!(
            !p.contexts.keys().any(|k| k.starts_with("dockerfile:")),
            "{:?}",
            p.contexts
        );
        let got = plan(text, &[("d", "FROM scratch\nCOPY a /a\n")], "+t", &[])
            .unwrap_err()
            .to_string();
        assert!(got.starts_with("Earthfile:3:36: context "), "{got}");
        assert!(got.contains("/-: No such file"), "{got}");
    }

    #[test]
    fn save_image_without_earthly_labels_needs_its_feature_flag() {
        let body = "FROM scratch\nt:\n    SAVE IMAGE --without-earthly-labels app\n";
        let p = plan(
            &format!("VERSION --allow-without-earthly-labels 0.8\n{body}"),
            &[],
            "+t",
            &[],
        );
        assert_eq!(p.unwrap().targets[0].images[0].names, ["app"]);
        assert_eq!(
            err(&format!("VERSION 0.8\n{body}"), "+t"),
            "Earthfile:4:16: the SAVE IMAGE --without-earthly-labels flag must be enabled with \
             the VERSION --allow-without-earthly-labels feature flag"
        );
    }

    #[test]
    fn a_function_of_another_earthfile_works_in_its_callers_folder() {
        // Earthly's guide: a function inherits its caller's build context (COPY reads
        // the caller's folder, AS LOCAL writes there), and sees the global ARGs of its
        // own Earthfile's base recipe.
        let text = "VERSION 0.8\nFROM scratch\nt:\n    DO ./lib+CP\n";
        let lib = "VERSION 0.8\nARG --global G=lib-global\nCP:\n    FUNCTION\n    \
                   COPY a.txt /a.txt\n    RUN echo $G\n    SAVE ARTIFACT /a.txt AS LOCAL out/a.txt\n";
        let p = plan(text, &[("lib", lib)], "+t", &[]).unwrap();
        let t = &p.targets[p.invoked];
        assert!(reads_local(&t.state, "context"));
        assert!(!reads_local(&t.state, "earthfile:./lib"));
        assert!(exec_env(&t.state).contains(&"G=lib-global".to_string()));
        let root = p.contexts["context"].display().to_string();
        assert_eq!(t.locals[0].dest, format!("{root}/out/a.txt"));
        // The DO's arguments override that file's global ARGs.
        let text = "VERSION 0.8\nFROM scratch\nt:\n    DO ./lib+CP --G=given\n";
        let p = plan(text, &[("lib", lib)], "+t", &[]).unwrap();
        assert!(exec_env(&p.targets[p.invoked].state).contains(&"G=given".to_string()));
        // Its LOCALLY runs in the caller's folder too.
        let lib = "VERSION 0.8\nHERE:\n    FUNCTION\n    LOCALLY\n    RUN pwd\n";
        let text = "VERSION 0.8\nt:\n    DO ./lib+HERE\n";
        let p = plan(text, &[("lib", lib)], "+t", &[]).unwrap();
        let runs = RUNS.with(|r| r.borrow().clone());
        assert_eq!(runs[0].cwd, p.contexts["context"]);
    }

    #[test]
    fn run_ssh_mounts_the_default_agent() {
        // Earthly's RUN --ssh: BuildKit's first agent socket, with SSH_AUTH_SOCK.
        let text = "VERSION 0.8\nFROM scratch\nt:\n    RUN --ssh git ls-remote git@host:r\n";
        let p = plan(text, &[], "+t", &[]).unwrap();
        let Op::Exec(e) = &p.targets[p.invoked].state.vertex().op else {
            panic!("a RUN step")
        };
        assert_eq!(e.mounts.len(), 1);
        assert_eq!(e.mounts[0].target, "/run/buildkit/ssh_agent.0");
        assert!(matches!(
            &e.mounts[0].source,
            MountSource::Ssh { id, required: true, .. } if id == "default"
        ));
        assert!(
            e.env
                .contains(&"SSH_AUTH_SOCK=/run/buildkit/ssh_agent.0".to_string())
        );
    }

    #[test]
    fn arg_rules() {
        let text = "VERSION 0.8\nFROM scratch\nARG --global G=g\nARG LOCAL=l\nt:\n    ARG --required NEED\n    ARG D=$G-d\n    ARG EARTHLY_TARGET_NAME\n    ARG TARGETARCH\n    ARG LOCAL\n    LET v=1\n    SET v=2\n    RUN true\n";
        assert_eq!(
            err(text, "+t"),
            "Earthfile:6:20: ARG NEED is required but was not given"
        );
        let p = plan(text, &[], "+t", &[("NEED", "n")]).unwrap();
        let env = exec_env(&p.targets[p.invoked].state);
        let (_, arch) = host_platform();
        for want in [
            "G=g".to_string(),
            "NEED=n".into(),
            "D=g-d".into(),
            "EARTHLY_TARGET_NAME=t".into(),
            format!("TARGETARCH={arch}"),
            "LOCAL=".into(),
            "v=2".into(),
        ] {
            assert!(env.contains(&want), "{want} not in {env:?}");
        }
        assert_eq!(
            err("VERSION 0.8\nt:\n    SET x=1\n", "+t"),
            "Earthfile:3:9: SET x: x was not declared with LET"
        );
        assert_eq!(
            err("VERSION 0.8\nt:\n    ARG --global x\n", "+t"),
            "Earthfile:3:9: ARG --global: a global ARG can only be set in the base target (the recipe before the first target)"
        );
    }

    #[test]
    fn functions_have_their_own_arg_scope_and_share_env_and_state() {
        let text =
            "VERSION 0.8\nFROM scratch\nt:\n    ARG A=caller\n    DO ./lib+F --P=p\n    RUN true\n";
        let lib = "VERSION 0.8\nF:\n    FUNCTION\n    ARG P\n    ARG A\n    ENV FROM_F=$P-$A\n    RUN echo in-function\n";
        let p = plan(text, &[("lib", lib)], "+t", &[]).unwrap();
        let last = &p.targets[p.invoked].state;
        let env = exec_env(last);
        assert!(env.contains(&"A=caller".to_string()), "{env:?}");
        assert!(env.contains(&"FROM_F=p-".to_string()), "{env:?}");
        assert!(!env.iter().any(|e| e.starts_with("P=")), "{env:?}");
        // The function's RUN is in the caller's chain.
        let below = &last.vertex().inputs[0];
        assert!(matches!(&below.vertex().op, Op::Exec(e) if e.args[2] == "echo in-function"));
    }

    #[test]
    fn cache_mounts_every_later_run() {
        let text = "VERSION 0.8\nFROM scratch\nt:\n    RUN a\n    CACHE --id=c1 /cache\n    RUN b\n    RUN c\n";
        let p = plan(text, &[], "+t", &[]).unwrap();
        let mut s = p.targets[p.invoked].state.clone();
        let mut counts = Vec::new();
        while let Op::Exec(e) = &s.vertex().op {
            counts.push(e.mounts.len());
            s = s.vertex().inputs[0].clone();
        }
        assert_eq!(counts, [1, 1, 0]);
    }

    #[test]
    fn cache_persist_copies_the_cache_into_the_image_as_earthly_0_8_does() {
        // 0.8: only with --persist, after the target's last command.
        let text =
            "VERSION 0.8\nFROM scratch\nt:\n    CACHE --persist /p\n    CACHE /q\n    RUN a\n";
        let p = plan(text, &[], "+t", &[]).unwrap();
        let t = &p.targets[p.invoked];
        let Op::Exec(e) = &t.state.vertex().op else {
            panic!("the persist step is last")
        };
        assert_eq!(
            e.args[2],
            "mkdir -p '/p' && cp -a /.berth-cache-persist/. '/p'/"
        );
        assert_eq!(e.mounts[0].target, PERSIST_MOUNT);
        assert_eq!(
            t.config.history.last().unwrap().created_by,
            "CACHE --persist /p"
        );
        assert_eq!(t.config.history.len(), t.history_states.len());
        // 0.7 persists every CACHE and has no --persist.
        let text = "VERSION 0.7\nFROM scratch\nt:\n    CACHE /q\n    RUN a\n";
        let p = plan(text, &[], "+t", &[]).unwrap();
        let Op::Exec(e) = &p.targets[p.invoked].state.vertex().op else {
            panic!("an exec")
        };
        assert!(e.args[2].contains("'/q'"), "{:?}", e.args);
        let text = "VERSION 0.7\nt:\n    FROM scratch\n    CACHE --persist /q\n";
        assert_eq!(
            err(text, "+t"),
            "Earthfile:4:11: CACHE --persist needs VERSION 0.8 (or VERSION --cache-persist-option)"
        );
    }

    #[test]
    fn locally_runs_on_the_host_in_the_earthfile_folder() {
        let text = "VERSION 0.8\nFROM scratch\nENV IMAGE=x\nt:\n    LOCALLY\n    ARG NAME=earth\n    RUN echo hi $NAME\n    ENV GREETING=hello\n    IF true\n        RUN echo yes\n    END\n    RUN --push echo pushed\n    FROM scratch\n    RUN inside\n";
        let p = plan(text, &[], "+t", &[]).unwrap();
        let runs = RUNS.with(|r| r.borrow().clone());
        let scripts: Vec<&str> = runs.iter().map(|r| r.args[2].as_str()).collect();
        // IF is answered on the host too; RUN --push waits for --push.
        assert_eq!(scripts, ["echo hi $NAME", "true", "echo yes"]);
        assert!(runs[0].env.contains(&("NAME".into(), "earth".into())));
        assert_eq!(runs[0].cwd, p.contexts["context"]);
        // No image environment (LOCALLY starts from scratch, as Earthly's), but the
        // ENVs after LOCALLY, as in Earthly.
        for run in &runs {
            assert!(
                !run.env.iter().any(|(k, _)| k == "PATH" || k == "IMAGE"),
                "{run:?}"
            );
        }
        assert!(!runs[0].env.iter().any(|(k, _)| k == "GREETING"));
        assert!(runs[2].env.contains(&("GREETING".into(), "hello".into())));
        // FROM ends LOCALLY: the next RUN is a step in the container.
        let Op::Exec(e) = &p.targets[p.invoked].state.vertex().op else {
            panic!("a RUN step")
        };
        assert_eq!(e.args[2], "inside");
        // A failing command stops the build at its line.
        let text = "VERSION 0.8\nt:\n    LOCALLY\n    RUN false\n";
        assert_eq!(
            err(text, "+t"),
            "Earthfile:4:5: the command exited with code 1 (LOCALLY, on this host)"
        );
    }

    #[test]
    fn copies_are_dated_and_owned_as_in_earthly() {
        let text = "VERSION 0.8\nFROM scratch\nt:\n    USER app\n    COPY a /a\n    COPY --keep-ts --keep-own b /b\n    SAVE ARTIFACT /a\n    SAVE ARTIFACT --keep-ts /b\n";
        let p = plan(text, &[], "+t", &[]).unwrap();
        let t = &p.targets[p.invoked];
        let copy = |s: &State| match &s.vertex().op {
            Op::File(f) => f.actions[0].clone(),
            op => panic!("not a copy: {op:?}"),
        };
        let meta = |a: FileAction| match a {
            FileAction::Copy {
                mtime,
                chown,
                keep_owner,
                ..
            } => (mtime, chown, keep_owner),
            a => panic!("{a:?}"),
        };
        assert_eq!(meta(copy(&t.state)), (None, None, true));
        let a = t.state.vertex().inputs[0].clone();
        assert_eq!(
            meta(copy(&a)),
            (Some(EARTHLY_MTIME), Some("app".into()), false)
        );
        assert_eq!(meta(copy(&t.artifact)), (None, None, true));
        let first = t.artifact.vertex().inputs[0].clone();
        assert_eq!(meta(copy(&first)), (Some(EARTHLY_MTIME), None, true));
    }

    #[test]
    fn copy_of_one_saved_path_reads_the_target_directly() {
        let text = "VERSION 0.8\nFROM scratch\na:\n    RUN make\n    SAVE ARTIFACT /out\n    SAVE ARTIFACT /bin/app app2\n    SAVE ARTIFACT /out/x sub/\nb:\n    SAVE ARTIFACT /one\n    SAVE ARTIFACT /two /one/two\nt:\n    COPY +a/out /o\n    COPY +a/app2 /dir/\n    COPY +a/sub/x /x\n    COPY +b/one /one\n";
        let p = plan(text, &[], "+t", &[]).unwrap();
        let a = p.targets.iter().find(|t| t.label == "+a").unwrap();
        // Newest first: +b/one (another save below it), +a/sub/x (alone), +a/app2
        // (renamed, into a folder), +a/out (alone).
        let mut s = p.targets[p.invoked].state.clone();
        let mut froms = Vec::new();
        while let Op::File(f) = &s.vertex().op {
            let FileAction::Copy { sources, .. } = &f.actions[0] else {
                panic!("a copy")
            };
            froms.push((
                sources[0].clone(),
                s.vertex().inputs[1].digest() == a.state.digest(),
            ));
            s = s.vertex().inputs[0].clone();
        }
        assert_eq!(
            froms,
            [
                ("one".to_string(), false),
                ("/out/x".to_string(), true),
                ("app2".to_string(), false),
                ("/out".to_string(), true),
            ]
        );
    }

    #[test]
    fn errors_name_the_targets_they_were_reached_from() {
        // Earthly's tests/multi-stack-failure.earth, shaped for lowering alone.
        let text = "VERSION 0.8\nFROM scratch\nARG GLOBAL_ARG\nmybase:\n    ARG MYBASE_ARG\nfail:\n    FROM +mybase\n    ARG FOO=foo\n    ARG EMPTY\n    RUN --cause-interpreter-failure true\nfrom-fail:\n    ARG ANOTHER_ARG=another-value\n    FROM +fail\n";
        let e = plan(text, &[], "+from-fail", &[]).unwrap_err().to_string();
        let lines: Vec<&str> = e.lines().collect();
        assert!(lines[0].starts_with("Earthfile:10:9: unknown flag"), "{e}");
        assert_eq!(
            lines[lines.len() - 2..],
            [
                "in +fail --EMPTY= --FOO=foo",
                "in +from-fail --ANOTHER_ARG=another-value"
            ],
            "{e}"
        );
    }

    #[test]
    fn as_local_outside_the_earthfile_folder_needs_force() {
        // Earthly's tests/save-artifact-dont-overwrite.earth paths.
        for dest in [
            "/test",
            "../test",
            "/",
            "/.",
            "/tmp/..",
            "sub/../../x",
            "..",
        ] {
            let text =
                format!("VERSION 0.8\nFROM scratch\nt:\n    SAVE ARTIFACT /data AS LOCAL {dest}\n");
            let e = err(&text, "+t");
            assert!(
                e.starts_with("Earthfile:4:5: SAVE ARTIFACT … AS LOCAL ")
                    && e.contains("path must be located under"),
                "{dest}: {e}"
            );
            let forced = text.replace("ARTIFACT /data", "ARTIFACT --force /data");
            assert!(plan(&forced, &[], "+t", &[]).is_ok(), "{dest} with --force");
        }
        for dest in ["out", "./out/", ".", "./", "a/b/../c", "sub/."] {
            let text =
                format!("VERSION 0.8\nFROM scratch\nt:\n    SAVE ARTIFACT /data AS LOCAL {dest}\n");
            assert!(plan(&text, &[], "+t", &[]).is_ok(), "{dest}");
        }
        // TRY … FINALLY saves follow the same rule.
        let text = "VERSION --try 0.8\nFROM scratch\nt:\n    TRY\n        RUN x\n    FINALLY\n        SAVE ARTIFACT /r AS LOCAL ../r\n    END\n";
        assert!(err(text, "+t").contains("path must be located under"));
    }

    #[test]
    fn try_saves_its_finally_paths_when_the_run_fails() {
        let text = "VERSION --try 0.8\nFROM scratch\nt:\n    WORKDIR /w\n    TRY\n        RUN make test\n    FINALLY\n        SAVE ARTIFACT out.xml AS LOCAL reports/\n        SAVE ARTIFACT --if-exists --force /cov AS LOCAL /tmp/cov\n    END\n";
        let p = plan(text, &[], "+t", &[]).unwrap();
        let t = &p.targets[p.invoked];
        let Op::Exec(e) = &t.state.vertex().op else {
            panic!("the RUN is last")
        };
        let dir = &p.contexts["context"];
        assert_eq!(
            e.on_failure,
            [
                ir::FailureSave {
                    src: "/w/out.xml".into(),
                    dest: dir.join("reports/out.xml"),
                    if_exists: false,
                },
                ir::FailureSave {
                    src: "/cov".into(),
                    dest: "/tmp/cov".into(),
                    if_exists: true,
                },
            ]
        );
        // On success they are ordinary saves.
        assert_eq!(t.locals.len(), 2);
        for (body, want) in [
            (
                "VERSION 0.8\nt:\n    TRY\n        RUN x\n    END\n",
                "Earthfile:3:5: TRY needs VERSION --try 0.8",
            ),
            (
                "VERSION --try 0.8\nt:\n    TRY\n        RUN x\n        RUN y\n    END\n",
                "Earthfile:3:5: TRY holds one RUN, as in Earthly",
            ),
            (
                "VERSION --try 0.8\nt:\n    TRY\n        RUN x\n    FINALLY\n        RUN y\n    END\n",
                "Earthfile:6:9: FINALLY holds SAVE ARTIFACT … AS LOCAL commands only",
            ),
            // Earthly parses CATCH and refuses it, at the TRY, in its own words.
            (
                "VERSION --try 0.8\nt:\n    TRY\n        RUN x\n    CATCH\n        RUN y\n    FINALLY\n        SAVE ARTIFACT z AS LOCAL z\n    END\n",
                "Earthfile:3:5: TRY/FINALLY doesn't (currently) support CATCH statements",
            ),
            (
                "VERSION --try 0.8\nt:\n    TRY\n        RUN x\n    FINALLY\n        SAVE ARTIFACT z AS LOCAL z\n    CATCH\n    END\n",
                "Earthfile:7:5: CATCH",
            ),
        ] {
            let got = err(body, "+t");
            assert!(got.starts_with(want), "{body:?}: {got}");
        }
    }

    #[test]
    fn with_docker_compose_files_and_services_go_into_the_step() {
        let insecure = [ir::Entitlement::SecurityInsecure];
        let compose = |yml: &str| {
            // The helper writes `<dir>/Earthfile`s: the compose file is one of those.
            let text = "VERSION 0.8\nFROM scratch\nt:\n    WITH DOCKER --compose c/Earthfile --service web --service db\n        RUN x\n    END\n";
            let p = plan_allowed(text, &[("c", yml)], "+t", &[], &insecure).unwrap();
            let step = p.targets[p.invoked].state.clone();
            let Op::Exec(e) = &step.vertex().op else {
                panic!("not a RUN")
            };
            (
                e.docker.clone().unwrap().compose.unwrap(),
                step.digest().clone(),
            )
        };
        let (c, a) = compose("services: {web: {image: app}}\n");
        assert_eq!(
            c.files,
            [(
                "c/Earthfile".to_string(),
                "services: {web: {image: app}}\n".to_string()
            )]
        );
        assert_eq!(c.services, ["web", "db"]);
        let (_, b) = compose("services: {web: {image: other}}\n");
        assert_ne!(a, b, "the compose file's contents are in the key");

        let text = "VERSION 0.8\nFROM scratch\nt:\n    WITH DOCKER --compose c/Earthfile --service 'a b'\n        RUN x\n    END\n";
        let got = plan_allowed(text, &[("c", "services: {}\n")], "+t", &[], &insecure)
            .unwrap_err()
            .to_string();
        assert!(
            got.contains("compose service name \"a b\": use letters"),
            "{got}"
        );
    }

    #[test]
    fn unsupported_commands_say_so_at_their_line() {
        for (body, want) in [
            (
                "    RUN --privileged x\n",
                "Earthfile:3:9: RUN --privileged needs the entitlement security.insecure, which this build was not granted",
            ),
            (
                "    WITH DOCKER\n        RUN x\n    END\n",
                "Earthfile:3:5: WITH DOCKER needs the entitlement security.insecure, which this build was not granted",
            ),
            (
                "    LOCALLY\n    USER app\n",
                "Earthfile:4:5: USER is not allowed in a LOCALLY target",
            ),
            (
                "    LOCALLY\n    RUN --mount=type=cache,target=/c x\n",
                "Earthfile:4:9: RUN --mount is not allowed in a LOCALLY target",
            ),
            (
                "    LOCALLY\n    COPY file .\n",
                "Earthfile:4:10: COPY file: a LOCALLY target copies artifacts (+target/path) only",
            ),
            (
                "    LOCALLY\n    SAVE ARTIFACT x AS LOCAL y\n",
                "Earthfile:4:5: SAVE ARTIFACT … AS LOCAL is not allowed in a LOCALLY target",
            ),
            (
                "    LOCALLY\n    WITH DOCKER\n        RUN x\n    END\n",
                "Earthfile:4:5: WITH DOCKER in a LOCALLY target is not supported by berth yet",
            ),
            (
                "    RUN --network=host x\n",
                "Earthfile:3:9: RUN --network=host needs the entitlement network.host",
            ),
            (
                "    BUILD +nope\n",
                "Earthfile:3:11: target +nope not found in Earthfile; its targets are: t",
            ),
            (
                "    COPY github.com/a/b+t/x .\n",
                "Earthfile:3:10: github.com/a/b: remote references need a git cache",
            ),
        ] {
            let text = format!("VERSION 0.8\nt:\n{body}");
            let got = err(&text, "+t");
            assert!(got.starts_with(want), "{body:?}: {got}");
        }
    }

    #[test]
    fn privileged_runs_and_with_docker_lower_when_granted() {
        let insecure = [ir::Entitlement::SecurityInsecure];
        let text = "VERSION 0.8\nFROM scratch\nt:\n    RUN --privileged a\n    RUN b\n";
        let p = plan_allowed(text, &[], "+t", &[], &insecure).unwrap();
        let last = p.targets[p.invoked].state.vertex();
        let Op::Exec(b) = &last.op else {
            panic!("not a RUN")
        };
        assert!(!b.privileged);
        let Op::Exec(a) = &last.inputs[0].vertex().op else {
            panic!("not a RUN")
        };
        assert!(a.privileged);

        let text = "VERSION 0.8\nFROM scratch\nt:\n    USER nobody\n    WITH DOCKER --load app:1=(+app --V=2) --load +named\n        RUN docker run app:1\n    END\napp:\n    ARG V\n    RUN echo $V\nnamed:\n    RUN n\n    SAVE IMAGE other:latest\n";
        let p = plan_allowed(text, &[], "+t", &[], &insecure).unwrap();
        let labels: Vec<&str> = p.targets.iter().map(|t| t.label.as_str()).collect();
        assert_eq!(labels, ["+app --V=2", "+named", "+t"]);
        let step = p.targets[p.invoked].state.vertex();
        let Op::Exec(e) = &step.op else {
            panic!("not a RUN")
        };
        assert!(e.privileged);
        assert!(e.user.is_empty(), "dockerd runs as root: {:?}", e.user);
        let loads = &e.docker.as_ref().unwrap().loads;
        let tags: Vec<&str> = loads.iter().map(|l| l.tag.as_str()).collect();
        assert_eq!(tags, ["app:1", "other:latest"]);
        assert_eq!(
            step.inputs[loads[0].input].digest(),
            p.targets[0].state.digest()
        );

        for (body, want) in [
            (
                "    WITH DOCKER --compose c.yml\n        RUN x\n    END\n",
                "Earthfile:3:17: --compose c.yml: read ",
            ),
            (
                "    WITH DOCKER --service web\n        RUN x\n    END\n",
                "Earthfile:3:17: WITH DOCKER --service needs --compose",
            ),
            (
                "    WITH DOCKER\n        RUN x\n        RUN y\n    END\n",
                "Earthfile:3:5: WITH DOCKER takes exactly one RUN before its END",
            ),
            (
                "    WITH DOCKER --load +t\n        RUN x\n    END\n",
                "Earthfile:3:17: cycle",
            ),
            (
                "    WITH DOCKER --load +u\n        RUN x\n    END\nu:\n    FROM scratch\n",
                "Earthfile:3:17: --load +u: +u saves no named image; name it: --load name=+u",
            ),
        ] {
            let text = format!("VERSION 0.8\nt:\n{body}");
            let got = plan_allowed(&text, &[], "+t", &[], &insecure)
                .unwrap_err()
                .to_string();
            assert!(got.starts_with(want), "{body:?}: {got}");
        }
    }

    #[test]
    fn if_for_and_shell_outs_follow_the_container_answers() {
        let text = "VERSION 0.8\nFROM scratch\nt:\n    ARG V=$(echo computed)\n    IF false\n        RUN branch-if\n    ELSE IF true\n        RUN branch-else-if\n    ELSE\n        RUN branch-else\n    END\n    FOR x IN a $(echo b c)\n        RUN loop-$x\n    END\n    FOR --sep=, y IN 1,2\n        RUN sep-$y\n    END\n    RUN last $V\n";
        let p = plan(text, &[], "+t", &[]).unwrap();
        let mut s = p.targets[p.invoked].state.clone();
        let mut cmds = Vec::new();
        while let Op::Exec(e) = &s.vertex().op {
            cmds.push(e.args[2].clone());
            s = s.vertex().inputs[0].clone();
        }
        cmds.reverse();
        assert_eq!(
            cmds,
            [
                "branch-else-if",
                "loop-$x",
                "loop-$x",
                "loop-$x",
                "sep-$y",
                "sep-$y",
                "last $V"
            ]
        );
        let env = exec_env(&p.targets[p.invoked].state);
        assert!(env.contains(&"V=computed".to_string()), "{env:?}");
        assert!(env.contains(&"x=c".to_string()), "{env:?}");
    }

    #[test]
    fn shell_outs_are_found_outside_single_quotes() {
        let (text, cmds) = shell_outs("a-$(echo (x))-'$(no)'-\\$(no)").unwrap();
        assert_eq!(cmds, ["echo (x)"]);
        assert_eq!(text, "a-${__BERTH_SHELL_OUT_0}-'$(no)'-\\$(no)");
        assert!(shell_outs("$(open").is_err());
        // Earthly's shell-out/new.earth test9 and test10.
        for text in [r#""$(echo \\(\\))""#, r"$(echo \\(\\))"] {
            let (_, cmds) = shell_outs(text).unwrap();
            assert_eq!(cmds, [r"echo \(\)"], "{text}");
        }
        let (_, cmds) = shell_outs(r#""it's $(echo x)""#).unwrap();
        assert_eq!(cmds, ["echo x"]);
    }

    #[test]
    fn artifact_references_split_at_the_first_slash_after_the_target() {
        assert_eq!(
            split_artifact("+build/bin/app"),
            Some(("+build", "bin/app"))
        );
        assert_eq!(split_artifact("./sub+t/f"), Some(("./sub+t", "f")));
        assert_eq!(split_artifact("../a/b+t/x/*"), Some(("../a/b+t", "x/*")));
        assert_eq!(split_artifact("+build"), None);
        assert_eq!(split_artifact("+build/"), Some(("+build", ".")));
        // Earthly's \+: a plus in a folder or file name, not the reference's.
        assert_eq!(
            split_artifact(r"./dir-\+x+t/f\+g"),
            Some((r"./dir-\+x+t", r"f\+g"))
        );
        assert_eq!(split_artifact(r"file-\+x/y"), None);
        assert_eq!(ref_plus(r"a\+b+c"), Some(4));
        assert_eq!(unescape_plus(r"a\+b+c"), "a+b+c");
    }

    #[test]
    fn optional_globs_match_only_their_path() {
        assert_eq!(optional_glob("/a/b/file.txt"), "/a/b/[f]ile.txt");
        assert_eq!(optional_glob("x"), "[x]");
        assert_eq!(optional_glob("/a/*.txt"), "/a/*.txt");
        let p = crate::pattern::Pattern::new("a/[f]ile.txt");
        assert!(p.has_wildcards());
    }
}
