//! AST → typed instructions grouped into stages (BuildKit's `instructions` package).
//!
//! Here each keyword gets its meaning: which flags it takes, whether its arguments are a
//! JSON array (exec form) or a shell command, which `key=value` pairs it sets. Everything
//! the author could have gotten wrong is checked here, against the node's positions, so
//! the error points at the flag or word at fault and the lowering step can trust the data.
//!
//! Words stay raw (quotes, escapes and `$VAR` as written): expanding them needs the ARG
//! and ENV scope at each instruction and the build arguments, which lowering has and we
//! do not. [`super::expand`] is the tool lowering uses for that.

use std::time::Duration;

use super::expand::{Word, split_words};
use super::parse::{self, Ast, Directives, Flag, Heredoc, Node};
use crate::error::BuildError;
use crate::frontend::source::{LineRange, Pos, Source, SourceError, Warning};
use crate::solver::Cancel;

/// A parsed Dockerfile: directives, global ARGs and build stages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dockerfile {
    /// The file, so later stages (lowering) can point errors at its lines.
    pub source: Source,
    /// The parser directives at the top.
    pub directives: Directives,
    /// ARGs before the first FROM: usable in FROM lines (and, re-declared, in stages).
    pub meta_args: Vec<MetaArg>,
    /// The build stages in file order; there is at least one.
    pub stages: Vec<Stage>,
    /// Things accepted but worth telling the author, in line order.
    pub warnings: Vec<Warning>,
}

impl Dockerfile {
    /// Parses and interprets `text`; `file` is the name errors show (e.g. `Dockerfile`).
    pub fn parse(file: &str, text: &str) -> Result<Dockerfile, SourceError> {
        from_ast(parse::parse(file, text)?)
    }

    /// [`Dockerfile::parse`] that stops within an instruction once `cancel` is canceled,
    /// with [`BuildError::Canceled`]: a million-line Dockerfile takes seconds.
    pub fn parse_cancelable(
        file: &str,
        text: &str,
        cancel: &Cancel,
    ) -> Result<Dockerfile, BuildError> {
        let canceled = || cancel.is_canceled();
        match parse::parse_until(file, text, &canceled).and_then(|a| from_ast_until(a, &canceled)) {
            Err(_) if cancel.is_canceled() => Err(BuildError::Canceled),
            r => Ok(r?),
        }
    }

    /// The warnings `# check=` leaves to report; an error when it says `error=true` and
    /// some are left (BuildKit's "lint violation"), pointing at the first.
    pub fn checked_warnings(&self) -> Result<Vec<&Warning>, SourceError> {
        let checks = &self.directives.checks;
        let left: Vec<&Warning> = self
            .warnings
            .iter()
            .filter(|w| checks.reports(w.rule))
            .filter(|w| {
                self.comment_checks(w.line)
                    .is_none_or(|c| !c.skip_all && !c.skip.iter().any(|r| r == w.rule))
            })
            .collect();
        if let (true, Some(first)) = (checks.error, left.first()) {
            let mut rules: Vec<&str> = left.iter().map(|w| w.rule).collect();
            rules.sort_unstable();
            rules.dedup();
            return Err(self
                .source
                .error(
                    Pos {
                        line: first.line,
                        column: 1,
                    },
                    format!(
                        "build check violations, and # check= says error=true: {} ({})",
                        rules.join(", "),
                        first.message
                    ),
                )
                .with_hint(format!(
                    "fix them, or skip them with # check=skip={};error=true",
                    rules.join(",")
                )));
        }
        Ok(left)
    }

    /// The `# check=` comment among those right above the instruction starting at
    /// `line`, if there is one. As BuildKit (dockerfile 1.20), it can only skip more
    /// checks for that instruction: the caller reads `skip` alone. Blank lines do not
    /// end the comments above an instruction; an empty `#` does.
    fn comment_checks(&self, line: usize) -> Option<parse::CheckOptions> {
        let mut comments = Vec::new();
        for n in (1..line).rev() {
            let text = self.source.line(n)?.trim();
            if text.is_empty() {
                continue;
            }
            match text.strip_prefix('#') {
                Some(c) if !c.trim().is_empty() => comments.push(text),
                _ => break,
            }
        }
        let check = comments.iter().rev().find_map(|c| {
            parse::directive(c).filter(|(name, _, _)| name.eq_ignore_ascii_case("check"))
        })?;
        // As BuildKit: the options end at the first space; invalid ones are ignored.
        parse::CheckOptions::parse(check.1.split(' ').next().unwrap_or_default()).ok()
    }

    /// The stage named `name` (stage names are lowercase).
    pub fn stage(&self, name: &str) -> Option<&Stage> {
        self.stages.iter().find(|s| s.name.as_deref() == Some(name))
    }
}

/// A global ARG: declared before the first FROM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaArg {
    /// The variable and its default.
    pub arg: ArgDecl,
    /// Lines of the ARG instruction declaring it.
    pub lines: LineRange,
}

/// A build stage: a FROM and the instructions up to the next FROM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stage {
    /// `AS name`, lowercased, if given.
    pub name: Option<String>,
    /// The FROM that starts the stage.
    pub from: From,
    /// Lines of that FROM.
    pub lines: LineRange,
    /// The rest of the stage, FROM excluded.
    pub instructions: Vec<Instruction>,
}

/// One instruction with where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instruction {
    /// Lines spanned, continuation and heredoc bodies included.
    pub lines: LineRange,
    /// The instruction as written (continuations joined, heredoc bodies left out): the
    /// label progress output shows.
    pub original: String,
    /// What it says.
    pub kind: InstructionKind,
}

impl Instruction {
    /// The keyword, upper case (`RUN`).
    pub fn keyword(&self) -> &'static str {
        self.kind.keyword()
    }
}

/// What an instruction says. FROM is not here: it starts a [`Stage`] instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstructionKind {
    /// `ARG name[=default] ...`
    Arg {
        /// The variables declared, in order.
        args: Vec<ArgDecl>,
    },
    /// `ENV k=v ...` or the legacy `ENV k v`.
    Env {
        /// The variables set, in order.
        vars: Vec<KeyValue>,
    },
    /// `LABEL k=v ...` or the legacy `LABEL k v`.
    Label {
        /// The labels set, in order.
        labels: Vec<KeyValue>,
    },
    /// `RUN [--mount=...] [--network=...] [--security=...] command`
    Run(Run),
    /// `CMD command` or `CMD ["exe", "arg"]`
    Cmd {
        /// The default command.
        command: CommandLine,
    },
    /// `ENTRYPOINT command` or `ENTRYPOINT ["exe", "arg"]`
    Entrypoint {
        /// The entrypoint.
        command: CommandLine,
    },
    /// `SHELL ["exe", "arg"]`: the shell later shell-form commands run with.
    Shell {
        /// The shell and its arguments (e.g. `/bin/sh -c`).
        shell: Vec<String>,
    },
    /// `COPY [--from=...] src... dest`
    Copy(Copy),
    /// `ADD src... dest`
    Add(Add),
    /// `WORKDIR path`
    Workdir {
        /// The directory, raw.
        path: String,
    },
    /// `USER user[:group]`
    User {
        /// The user, raw.
        user: String,
    },
    /// `EXPOSE 80 443/tcp 53/udp`
    Expose {
        /// The ports, raw; see [`PortSpec::parse`] for their form once expanded.
        ports: Vec<String>,
    },
    /// `VOLUME /data` or `VOLUME ["/data"]`
    Volume {
        /// The mount points, raw.
        paths: Vec<String>,
    },
    /// `STOPSIGNAL SIGTERM`
    StopSignal {
        /// The signal, raw (a name like `SIGTERM` or a number).
        signal: String,
    },
    /// `HEALTHCHECK [options] CMD command` or `HEALTHCHECK NONE`
    Healthcheck(Healthcheck),
    /// `ONBUILD instruction`: recorded in the image, run by builds that use it as a base.
    OnBuild {
        /// The instruction to run later.
        trigger: Box<Instruction>,
    },
    /// `MAINTAINER name`: deprecated (use a label), kept for old Dockerfiles.
    Maintainer {
        /// The maintainer, raw.
        name: String,
    },
}

impl InstructionKind {
    /// The keyword, upper case (`RUN`).
    pub fn keyword(&self) -> &'static str {
        match self {
            InstructionKind::Arg { .. } => "ARG",
            InstructionKind::Env { .. } => "ENV",
            InstructionKind::Label { .. } => "LABEL",
            InstructionKind::Run(_) => "RUN",
            InstructionKind::Cmd { .. } => "CMD",
            InstructionKind::Entrypoint { .. } => "ENTRYPOINT",
            InstructionKind::Shell { .. } => "SHELL",
            InstructionKind::Copy(_) => "COPY",
            InstructionKind::Add(_) => "ADD",
            InstructionKind::Workdir { .. } => "WORKDIR",
            InstructionKind::User { .. } => "USER",
            InstructionKind::Expose { .. } => "EXPOSE",
            InstructionKind::Volume { .. } => "VOLUME",
            InstructionKind::StopSignal { .. } => "STOPSIGNAL",
            InstructionKind::Healthcheck(_) => "HEALTHCHECK",
            InstructionKind::OnBuild { .. } => "ONBUILD",
            InstructionKind::Maintainer { .. } => "MAINTAINER",
        }
    }
}

/// `FROM [--platform=...] image [AS name]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct From {
    /// The base: an image reference, a previous stage's name, or `scratch`. Raw: it may
    /// use global ARGs (`FROM $BASE`).
    pub image: String,
    /// `AS name`, lowercased.
    pub name: Option<String>,
    /// `--platform=`, raw (often `$BUILDPLATFORM`).
    pub platform: Option<String>,
}

/// One variable of an ARG.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgDecl {
    /// The name.
    pub name: String,
    /// The default after `=`, raw; `None` for a bare `ARG NAME`.
    pub default: Option<String>,
}

/// A `key=value` of ENV or LABEL. Both sides are raw: `k="a b"` has value `"a b"` with its
/// quotes, which expansion removes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key, raw.
    pub key: String,
    /// The value, raw.
    pub value: String,
}

/// The two ways to write a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandLine {
    /// JSON array form, run directly: `["nginx", "-g", "daemon off;"]`.
    Exec(Vec<String>),
    /// Shell form, run by the stage's SHELL (`/bin/sh -c` by default), raw.
    Shell(String),
}

impl CommandLine {
    /// Exec form if `args` is a JSON array of strings, else shell form. Text that starts
    /// with `[` but is not valid JSON is a shell command, as in Docker.
    pub fn parse(args: &str) -> CommandLine {
        match json_array(args) {
            Some(Ok(list)) => CommandLine::Exec(list),
            _ => CommandLine::Shell(args.to_owned()),
        }
    }
}

/// `RUN`: a command to run in the stage's filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    /// The command. With heredocs it names them, e.g. shell form `<<EOF` or
    /// `python3 <<EOF`; lowering decides whether a heredoc is the script or stdin.
    pub command: CommandLine,
    /// The heredoc bodies, in order.
    pub heredocs: Vec<Heredoc>,
    /// `--mount=` options, in order.
    pub mounts: Vec<RunMount>,
    /// `--network=`, if given.
    pub network: Option<NetworkMode>,
    /// `--security=`, if given. Recorded; running insecure needs an entitlement.
    pub security: Option<SecurityMode>,
}

/// `RUN --network=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetworkMode {
    /// The builder's default network.
    Default,
    /// No network at all.
    None,
    /// The host's network namespace.
    Host,
}

/// `RUN --security=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecurityMode {
    /// The default sandbox.
    Sandbox,
    /// Privileged, like `docker run --privileged`.
    Insecure,
}

/// One `RUN --mount=type=...,...` option.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunMount {
    /// `type=` (bind if not given).
    pub kind: MountType,
    /// `target=` / `dst=` / `destination=`: where it appears in the container. Required
    /// for bind, cache and tmpfs; a secret defaults to `/run/secrets/<id>` when lowered.
    pub target: Option<String>,
    /// `source=` / `src=`: the path in `from` (bind, cache) or the secret's id.
    pub source: Option<String>,
    /// `from=`: the stage or image the source comes from (bind, cache).
    pub from: Option<String>,
    /// `ro`/`rw`, or the type's default (read-only for bind, secret and ssh).
    pub readonly: bool,
    /// `id=`: cache id, secret id or ssh agent id.
    pub id: Option<String>,
    /// `sharing=` (cache only); `None` means the default, shared.
    pub sharing: Option<CacheSharing>,
    /// `mode=` in octal (cache, secret, ssh).
    pub mode: Option<u32>,
    /// `uid=` (cache, secret, ssh).
    pub uid: Option<u32>,
    /// `gid=` (cache, secret, ssh).
    pub gid: Option<u32>,
    /// `required`: fail if the secret or ssh agent is not provided.
    pub required: bool,
    /// `env=` (secret only): expose the secret as this environment variable.
    pub env: Option<String>,
    /// `size=` in bytes (tmpfs only).
    pub size: Option<u64>,
    /// The `--mount=` value as written. One that refers to variables is only parsed
    /// when lowering knows them: until then the fields above are defaults.
    pub raw: String,
}

impl RunMount {
    /// A bind mount with nothing set, for `raw`.
    fn new(raw: &str) -> RunMount {
        RunMount {
            kind: MountType::Bind,
            target: None,
            source: None,
            from: None,
            readonly: true,
            id: None,
            sharing: None,
            mode: None,
            uid: None,
            gid: None,
            required: false,
            env: None,
            size: None,
            raw: raw.to_owned(),
        }
    }

    /// Parses a `--mount=` value, `raw`: comma-separated `key=value` fields (CSV, so a
    /// field may be double-quoted to hold a comma), each value passed through `expand`
    /// first, as BuildKit's `parseMount`. An error is (message, hint).
    pub fn parse(
        raw: &str,
        expand: &mut dyn FnMut(&str) -> Result<String, String>,
    ) -> Result<RunMount, (String, &'static str)> {
        let mut readonly = None;
        let mut m = RunMount::new(raw);
        for field in csv_fields(raw) {
            let (key, value) = match field.split_once('=') {
                Some((key, value)) => (key.trim().to_ascii_lowercase(), Some(value.trim())),
                None => (field.trim().to_ascii_lowercase(), None),
            };
            if key.is_empty() {
                continue;
            }
            let value = match value {
                Some(v) => Some(expand(v).map_err(|e| {
                    (
                        format!("mount option {key}: {e}"),
                        "check the variables the option refers to",
                    )
                })?),
                None => None,
            };
            let value = value.as_deref();
            let text = |value: Option<&str>| match value {
                Some(v) if !v.is_empty() => Ok(v.to_owned()),
                _ => Err((
                    format!("mount option {key} needs a value"),
                    "write key=value, e.g. target=/root/.cache",
                )),
            };
            let flag_bool = |value: Option<&str>| match value {
                None => Ok(true),
                Some(v) => parse_bool(v).ok_or_else(|| {
                    (
                        format!("mount option {key} takes true or false, not {v:?}"),
                        "write the option alone, or with =true or =false",
                    )
                }),
            };
            let number = |value: Option<&str>, radix: u32| {
                let v = text(value)?;
                u32::from_str_radix(&v, radix).map_err(|_| {
                    (
                        format!("mount option {key} is not a number: {v:?}"),
                        "mode is octal (mode=0755); uid and gid are decimal",
                    )
                })
            };
            // As BuildKit, `required` and `size` are checked against the type given
            // before them.
            let only_for = |kinds: &[MountType], hint: &'static str| {
                if kinds.contains(&m.kind) {
                    Ok(())
                } else {
                    Err((
                        format!(
                            "mount option {key} does not apply to type={} mounts",
                            m.kind.as_str()
                        ),
                        hint,
                    ))
                }
            };
            match key.as_str() {
                "type" => {
                    m.kind = match value.unwrap_or_default().to_ascii_lowercase().as_str() {
                        "bind" => MountType::Bind,
                        "cache" => MountType::Cache,
                        "tmpfs" => MountType::Tmpfs,
                        "secret" => MountType::Secret,
                        "ssh" => MountType::Ssh,
                        other => {
                            return Err((
                                format!("unknown mount type {other:?}"),
                                "type is one of bind, cache, tmpfs, secret, ssh",
                            ));
                        }
                    };
                }
                "from" => m.from = Some(text(value)?),
                "source" | "src" => m.source = Some(text(value)?),
                "target" | "dst" | "destination" => m.target = Some(text(value)?),
                "readonly" | "ro" => readonly = Some(flag_bool(value)?),
                "readwrite" | "rw" => readonly = Some(!flag_bool(value)?),
                "id" => m.id = Some(text(value)?),
                "sharing" => {
                    m.sharing = Some(
                        match value.unwrap_or_default().to_ascii_lowercase().as_str() {
                            "shared" => CacheSharing::Shared,
                            "private" => CacheSharing::Private,
                            "locked" => CacheSharing::Locked,
                            other => {
                                return Err((
                                    format!("unknown cache sharing {other:?}"),
                                    "sharing is one of shared, private, locked",
                                ));
                            }
                        },
                    );
                }
                "mode" => m.mode = Some(number(value, 8)?),
                "uid" => m.uid = Some(number(value, 10)?),
                "gid" => m.gid = Some(number(value, 10)?),
                "required" => {
                    only_for(
                        &[MountType::Secret, MountType::Ssh],
                        "required applies to type=secret and type=ssh, written after type=",
                    )?;
                    m.required = flag_bool(value)?;
                }
                "env" => m.env = Some(text(value)?),
                "size" => {
                    only_for(
                        &[MountType::Tmpfs],
                        "size applies to type=tmpfs, written after type=",
                    )?;
                    let v = text(value)?;
                    m.size = Some(parse_size(&v).ok_or_else(|| {
                        (
                            format!("invalid tmpfs size {v:?}"),
                            "write a size in bytes, or with a unit: size=64m, size=1.5g, size=64MiB",
                        )
                    })?);
                }
                _ => {
                    return Err((
                        format!("unknown mount option {key}"),
                        "mount options are type, from, source, target, ro, rw, id, sharing, \
                         mode, uid, gid, required, env and size",
                    ));
                }
            }
        }
        m.readonly = readonly.unwrap_or(RunMount::default_readonly(m.kind));
        check_mount(&m)?;
        Ok(m)
    }
}

impl RunMount {
    /// Whether a mount of `kind` is read-only unless `ro`/`rw` says otherwise.
    pub fn default_readonly(kind: MountType) -> bool {
        !matches!(kind, MountType::Cache | MountType::Tmpfs)
    }
}

/// `--mount=type=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountType {
    /// A directory of the build context, a stage or an image.
    Bind,
    /// A persistent cache directory shared between builds.
    Cache,
    /// An empty in-memory filesystem.
    Tmpfs,
    /// A secret file (or environment variable) provided to the build.
    Secret,
    /// The client's SSH agent socket.
    Ssh,
}

impl MountType {
    /// The name as written after `type=`.
    pub fn as_str(self) -> &'static str {
        match self {
            MountType::Bind => "bind",
            MountType::Cache => "cache",
            MountType::Tmpfs => "tmpfs",
            MountType::Secret => "secret",
            MountType::Ssh => "ssh",
        }
    }
}

/// How concurrent builds share a cache mount (`sharing=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheSharing {
    /// Concurrent writers use the same directory.
    Shared,
    /// Each concurrent writer gets its own copy.
    Private,
    /// Writers wait for each other.
    Locked,
}

impl CacheSharing {
    /// The name as written after `sharing=`.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheSharing::Shared => "shared",
            CacheSharing::Private => "private",
            CacheSharing::Locked => "locked",
        }
    }
}

/// A COPY or ADD source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopySource {
    /// A path (or pattern, or for ADD a URL), raw.
    Path(String),
    /// An inline file: `COPY <<EOF /dst` (the heredoc's name is the file name).
    Heredoc(Heredoc),
}

/// `COPY`: files from the context, a stage or an image, or heredocs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copy {
    /// The sources, in order.
    pub sources: Vec<CopySource>,
    /// The destination, raw.
    pub dest: String,
    /// `--from=`: a stage name or index, or an image.
    pub from: Option<String>,
    /// `--chown=user[:group]`.
    pub chown: Option<String>,
    /// `--chmod=`.
    pub chmod: Option<String>,
    /// `--link`: copy into an independent layer.
    pub link: bool,
    /// `--parents`: keep the sources' parent directories.
    pub parents: bool,
    /// `--exclude=` patterns, in order.
    pub exclude: Vec<String>,
}

/// `ADD`: like COPY, and also URLs, git repositories and archive unpacking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Add {
    /// The sources, in order.
    pub sources: Vec<CopySource>,
    /// The destination, raw.
    pub dest: String,
    /// `--chown=user[:group]`.
    pub chown: Option<String>,
    /// `--chmod=`.
    pub chmod: Option<String>,
    /// `--link`.
    pub link: bool,
    /// `--exclude=` patterns, in order.
    pub exclude: Vec<String>,
    /// `--checksum=`: expected digest of a remote source.
    pub checksum: Option<String>,
    /// `--keep-git-dir`: keep `.git` when adding a git repository.
    pub keep_git_dir: bool,
    /// `--unpack=`: whether to unpack archives; `None` means the default (local archives
    /// unpacked, remote ones not).
    pub unpack: Option<bool>,
}

/// `HEALTHCHECK`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Healthcheck {
    /// `HEALTHCHECK NONE`: disable any check inherited from the base image.
    Disable,
    /// `HEALTHCHECK [options] CMD command`.
    Cmd(HealthcheckCmd),
}

/// `HEALTHCHECK [options] CMD command`; unset options take the runtime's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthcheckCmd {
    /// The check.
    pub command: CommandLine,
    /// `--interval=`.
    pub interval: Option<Duration>,
    /// `--timeout=`.
    pub timeout: Option<Duration>,
    /// `--start-period=`.
    pub start_period: Option<Duration>,
    /// `--start-interval=`.
    pub start_interval: Option<Duration>,
    /// `--retries=`.
    pub retries: Option<u32>,
}

/// An exposed port or range, as EXPOSE writes it: `80`, `80/tcp`, `53/udp`, `8000-8010`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortSpec {
    /// First port.
    pub start: u16,
    /// Last port (equal to `start` for one port).
    pub end: u16,
    /// The protocol (TCP if not given).
    pub protocol: Protocol,
}

/// A port's protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl PortSpec {
    /// Parses one expanded EXPOSE word; `None` if it is not a port or range.
    ///
    /// ```
    /// use berth_build::frontend::dockerfile::instructions::{PortSpec, Protocol};
    ///
    /// let p = PortSpec::parse("53/udp").unwrap();
    /// assert_eq!((p.start, p.end, p.protocol), (53, 53, Protocol::Udp));
    /// assert_eq!(PortSpec::parse("8000-8010").unwrap().end, 8010);
    /// assert!(PortSpec::parse("80:80").is_none());
    /// ```
    pub fn parse(word: &str) -> Option<PortSpec> {
        let (ports, protocol) = match word.split_once('/') {
            Some((ports, proto)) => (ports, proto),
            None => (word, "tcp"),
        };
        let protocol = match protocol.to_ascii_lowercase().as_str() {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            "sctp" => Protocol::Sctp,
            _ => return None,
        };
        let port = |s: &str| -> Option<u16> {
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            s.parse().ok()
        };
        let (start, end) = match ports.split_once('-') {
            Some((a, b)) => (port(a)?, port(b)?),
            None => (port(ports)?, port(ports)?),
        };
        (start <= end).then_some(PortSpec {
            start,
            end,
            protocol,
        })
    }
}

/// Interprets the nodes of `ast`: typed instructions, grouped into stages.
pub fn from_ast(ast: Ast) -> Result<Dockerfile, SourceError> {
    from_ast_until(ast, &|| false)
}

/// [`from_ast`], asking `canceled` before each node (see [`parse::parse_until`]).
fn from_ast_until(ast: Ast, canceled: &dyn Fn() -> bool) -> Result<Dockerfile, SourceError> {
    let Ast {
        source,
        directives,
        nodes,
        mut warnings,
    } = ast;
    let mut cx = Cx {
        source: &source,
        escape: directives.escape,
        warnings: Vec::new(),
    };
    let mut meta_args = Vec::new();
    let mut stages: Vec<Stage> = Vec::new();
    for node in &nodes {
        if canceled() {
            return Err(cx.err(node.keyword_pos(), "canceled"));
        }
        if node.keyword.eq_ignore_ascii_case("FROM") {
            let (from, name_pos) = cx.from(node)?;
            if let (Some(name), Some(pos)) = (&from.name, name_pos)
                && let Some(first) = stages.iter().find(|s| s.name.as_ref() == Some(name))
            {
                return Err(cx
                    .err(pos, format!("duplicate stage name {name}"))
                    .with_hint(format!(
                        "a stage named {name} starts on line {}; give this one another name",
                        first.lines.start
                    )));
            }
            stages.push(Stage {
                name: from.name.clone(),
                from,
                lines: node.lines,
                instructions: Vec::new(),
            });
            continue;
        }
        let instruction = cx.instruction(node)?;
        if let Some(stage) = stages.last_mut() {
            stage.instructions.push(instruction);
            continue;
        }
        match instruction.kind {
            InstructionKind::Arg { args } => {
                meta_args.extend(args.into_iter().map(|arg| MetaArg {
                    arg,
                    lines: node.lines,
                }));
            }
            kind => {
                return Err(cx
                    .err(
                        node.keyword_pos(),
                        format!("{} before the first FROM", kind.keyword()),
                    )
                    .with_hint(
                        "a build stage starts with FROM; only ARG may come before the first FROM",
                    ));
            }
        }
    }
    if stages.is_empty() {
        let line = nodes.last().map_or(1, |n| n.lines.start);
        return Err(cx
            .err(
                Pos { line, column: 1 },
                "no FROM instruction: nothing to build",
            )
            .with_hint("start a build stage with FROM <image>, e.g. FROM alpine:3.20"));
    }
    warnings.append(&mut cx.warnings);
    warnings.sort_by_key(|w| w.line);
    Ok(Dockerfile {
        source,
        directives,
        meta_args,
        stages,
        warnings,
    })
}

/// Every keyword, for unknown-instruction hints.
const KEYWORDS: &[&str] = &[
    "ADD",
    "ARG",
    "CMD",
    "COPY",
    "ENTRYPOINT",
    "ENV",
    "EXPOSE",
    "FROM",
    "HEALTHCHECK",
    "LABEL",
    "MAINTAINER",
    "ONBUILD",
    "RUN",
    "SHELL",
    "STOPSIGNAL",
    "USER",
    "VOLUME",
    "WORKDIR",
];

/// How a flag takes its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FlagKind {
    /// `--name=value`, at most once.
    Value,
    /// `--name` or `--name=true|false`, at most once.
    Bool,
    /// `--name=value`, any number of times.
    Repeated,
}

const COPY_FLAGS: &[(&str, FlagKind)] = &[
    ("from", FlagKind::Value),
    ("chown", FlagKind::Value),
    ("chmod", FlagKind::Value),
    ("link", FlagKind::Bool),
    ("parents", FlagKind::Bool),
    ("exclude", FlagKind::Repeated),
];

const ADD_FLAGS: &[(&str, FlagKind)] = &[
    ("chown", FlagKind::Value),
    ("chmod", FlagKind::Value),
    ("link", FlagKind::Bool),
    ("exclude", FlagKind::Repeated),
    ("checksum", FlagKind::Value),
    ("keep-git-dir", FlagKind::Bool),
    ("unpack", FlagKind::Bool),
];

const RUN_FLAGS: &[(&str, FlagKind)] = &[
    ("mount", FlagKind::Repeated),
    ("network", FlagKind::Value),
    ("security", FlagKind::Value),
];

const HEALTHCHECK_FLAGS: &[(&str, FlagKind)] = &[
    ("interval", FlagKind::Value),
    ("timeout", FlagKind::Value),
    ("start-period", FlagKind::Value),
    ("start-interval", FlagKind::Value),
    ("retries", FlagKind::Value),
];

/// A node's flags after [`Cx::flags`] checked them against the instruction's flag set.
struct Flags<'n> {
    flags: &'n [Flag],
}

impl<'n> Flags<'n> {
    fn get(&self, name: &str) -> Option<&'n Flag> {
        self.flags.iter().find(|f| f.name == name)
    }

    fn value(&self, name: &str) -> Option<String> {
        self.get(name).and_then(|f| f.value.clone())
    }

    fn bool(&self, name: &str) -> Option<bool> {
        self.get(name)
            .map(|f| f.value.as_deref().map_or(Some(true), parse_bool) == Some(true))
    }

    fn all(&self, name: &'n str) -> impl Iterator<Item = &'n Flag> {
        self.flags.iter().filter(move |f| f.name == name)
    }
}

/// What interpreting needs besides the node: the file for errors, the escape character,
/// and the warnings found so far.
struct Cx<'a> {
    source: &'a Source,
    escape: char,
    warnings: Vec<Warning>,
}

impl Cx<'_> {
    fn err(&self, pos: Pos, message: impl Into<String>) -> SourceError {
        self.source.error(pos, message)
    }

    /// An instruction missing its arguments (error at the keyword).
    fn missing(&self, node: &Node, message: &str, hint: &str) -> SourceError {
        self.err(node.keyword_pos(), message).with_hint(hint)
    }

    fn instruction(&mut self, node: &Node) -> Result<Instruction, SourceError> {
        let keyword = node.keyword.to_ascii_uppercase();
        let kind = match keyword.as_str() {
            "ARG" => self.arg(node)?,
            "ENV" => InstructionKind::Env {
                vars: self.key_values(node, "ENV")?,
            },
            "LABEL" => InstructionKind::Label {
                labels: self.key_values(node, "LABEL")?,
            },
            "RUN" => InstructionKind::Run(self.run(node)?),
            "CMD" => InstructionKind::Cmd {
                command: self.command(node, "CMD")?,
            },
            "ENTRYPOINT" => InstructionKind::Entrypoint {
                command: self.command(node, "ENTRYPOINT")?,
            },
            "SHELL" => self.shell(node)?,
            "COPY" => InstructionKind::Copy(self.copy(node)?),
            "ADD" => InstructionKind::Add(self.add(node)?),
            "WORKDIR" => InstructionKind::Workdir {
                path: self.single(node, "WORKDIR", "a directory", "WORKDIR /app")?,
            },
            "USER" => InstructionKind::User {
                user: self.single(node, "USER", "a user", "USER app or USER 1000:1000")?,
            },
            "EXPOSE" => self.expose(node)?,
            "VOLUME" => self.volume(node)?,
            "STOPSIGNAL" => InstructionKind::StopSignal {
                signal: self.single(node, "STOPSIGNAL", "a signal", "STOPSIGNAL SIGTERM")?,
            },
            "HEALTHCHECK" => InstructionKind::Healthcheck(self.healthcheck(node)?),
            "ONBUILD" => self.onbuild(node)?,
            "MAINTAINER" => {
                let name = self.single(node, "MAINTAINER", "a name", "MAINTAINER Jane Doe")?;
                self.warnings.push(Warning {
                    rule: "MaintainerDeprecated",
                    line: node.lines.start,
                    message: "MAINTAINER is deprecated; use LABEL \
                              org.opencontainers.image.authors=\"...\" instead"
                        .into(),
                });
                InstructionKind::Maintainer { name }
            }
            "FROM" => {
                return Err(self
                    .err(node.keyword_pos(), "FROM is not allowed here")
                    .with_hint("FROM starts a build stage and cannot be nested"));
            }
            _ => return Err(self.unknown_instruction(node)),
        };
        Ok(Instruction {
            lines: node.lines,
            original: node.text[node.keyword_offset..].trim_end().to_owned(),
            kind,
        })
    }

    fn unknown_instruction(&self, node: &Node) -> SourceError {
        let err = self.err(
            node.keyword_pos(),
            format!("unknown instruction {}", node.keyword),
        );
        match nearest(&node.keyword.to_ascii_uppercase(), KEYWORDS.iter().copied()) {
            Some(known) => err.with_hint(format!("did you mean {known}?")),
            None => err.with_hint(format!(
                "instructions are {}; if this line continues the previous instruction, end \
                 that line with {}",
                KEYWORDS.join(", "),
                self.escape
            )),
        }
    }

    /// Checks `node`'s flags against `spec`: known names, values where needed, no repeats.
    fn flags<'n>(
        &self,
        node: &'n Node,
        keyword: &str,
        spec: &[(&str, FlagKind)],
    ) -> Result<Flags<'n>, SourceError> {
        for (i, flag) in node.flags.iter().enumerate() {
            let pos = node.pos(flag.offset);
            let name = &flag.name;
            let Some(&(_, kind)) = spec.iter().find(|(n, _)| n == name) else {
                let hint = if spec.is_empty() {
                    format!("{keyword} takes no flags")
                } else {
                    let list: Vec<String> = spec.iter().map(|(n, _)| format!("--{n}")).collect();
                    let nearest = nearest(name, spec.iter().map(|(n, _)| *n))
                        .map(|n| format!("did you mean --{n}? "))
                        .unwrap_or_default();
                    format!("{nearest}{keyword} accepts {}", list.join(", "))
                };
                return Err(self
                    .err(pos, format!("unknown flag --{name} for {keyword}"))
                    .with_hint(hint));
            };
            match (kind, flag.value.as_deref()) {
                (FlagKind::Value | FlagKind::Repeated, None) => {
                    return Err(self
                        .err(pos, format!("flag --{name} needs a value"))
                        .with_hint(format!("write --{name}=<value>")));
                }
                (FlagKind::Bool, Some(v)) if parse_bool(v).is_none() => {
                    return Err(self
                        .err(pos, format!("flag --{name} takes true or false, not {v:?}"))
                        .with_hint(format!("write --{name} or --{name}=false")));
                }
                _ => {}
            }
            if kind != FlagKind::Repeated && node.flags[..i].iter().any(|f| f.name == *name) {
                return Err(self
                    .err(pos, format!("duplicate flag --{name}"))
                    .with_hint(format!("give --{name} only once")));
            }
        }
        Ok(Flags { flags: &node.flags })
    }

    /// The arguments split into raw words.
    fn words(&self, node: &Node) -> Result<Vec<Word>, SourceError> {
        split_words(&node.args, self.escape).map_err(|e| {
            self.err(node.pos(node.args_offset + e.offset()), e.to_string())
                .with_hint(e.hint())
        })
    }

    fn word_pos(&self, node: &Node, word: &Word) -> Pos {
        node.pos(node.args_offset + word.offset)
    }

    /// Returns the stage's FROM and where its `AS` name is.
    fn from(&self, node: &Node) -> Result<(From, Option<Pos>), SourceError> {
        let flags = self.flags(node, "FROM", &[("platform", FlagKind::Value)])?;
        let words = self.words(node)?;
        let is_as = |w: &Word| w.text.eq_ignore_ascii_case("AS");
        let syntax = "write FROM <image> [AS <name>], e.g. FROM golang:1.22 AS build";
        let name = match words.as_slice() {
            [] => {
                return Err(self.missing(
                    node,
                    "FROM needs a base image",
                    "write FROM <image> [AS <name>], e.g. FROM alpine:3.20, or FROM scratch \
                     to start from an empty filesystem",
                ));
            }
            [_] => None,
            [_, second, rest @ ..] => {
                if !is_as(second) {
                    return Err(self
                        .err(
                            self.word_pos(node, second),
                            format!("unexpected {} after the image", second.text),
                        )
                        .with_hint(syntax));
                }
                match rest {
                    [] => {
                        return Err(self
                            .err(
                                self.word_pos(node, second),
                                "AS needs a stage name after it",
                            )
                            .with_hint(syntax));
                    }
                    [name] => Some(name),
                    [_, extra, ..] => {
                        return Err(self
                            .err(
                                self.word_pos(node, extra),
                                format!("unexpected {} after the stage name", extra.text),
                            )
                            .with_hint(syntax));
                    }
                }
            }
        };
        let name = match name {
            None => None,
            Some(word) => {
                let lower = word.text.to_ascii_lowercase();
                if !is_stage_name(&lower) {
                    return Err(self
                        .err(
                            self.word_pos(node, word),
                            format!("invalid stage name {}", word.text),
                        )
                        .with_hint(
                            "a stage name starts with a letter and has only letters, digits, \
                             '-', '_' and '.'",
                        ));
                }
                Some((lower, self.word_pos(node, word)))
            }
        };
        let from = From {
            image: words[0].text.clone(),
            name: name.as_ref().map(|(n, _)| n.clone()),
            platform: flags.value("platform"),
        };
        Ok((from, name.map(|(_, pos)| pos)))
    }

    fn arg(&self, node: &Node) -> Result<InstructionKind, SourceError> {
        self.flags(node, "ARG", &[])?;
        let words = self.words(node)?;
        if words.is_empty() {
            return Err(self.missing(
                node,
                "ARG needs a name",
                "write ARG NAME or ARG NAME=default",
            ));
        }
        let mut args = Vec::new();
        for word in &words {
            let (name, default) = match word.text.split_once('=') {
                Some((name, default)) => (name, Some(default.to_owned())),
                None => (word.text.as_str(), None),
            };
            if name.is_empty() {
                return Err(self
                    .err(self.word_pos(node, word), "ARG name is empty")
                    .with_hint("write ARG NAME or ARG NAME=default"));
            }
            args.push(ArgDecl {
                name: name.to_owned(),
                default,
            });
        }
        Ok(InstructionKind::Arg { args })
    }

    /// ENV and LABEL: `k=v k2="v 2"`, or the legacy single `k v...`.
    fn key_values(&mut self, node: &Node, keyword: &str) -> Result<Vec<KeyValue>, SourceError> {
        self.flags(node, keyword, &[])?;
        let words = self.words(node)?;
        let form = format!("write {keyword} NAME=value; quote values with spaces: NAME=\"a b\"");
        let Some(first) = words.first() else {
            return Err(self.missing(
                node,
                &format!("{keyword} needs at least one NAME=value"),
                &form,
            ));
        };
        if !first.text.contains('=') {
            // The legacy form: one name, then everything else is the value.
            let Some(second) = words.get(1) else {
                return Err(self
                    .err(
                        self.word_pos(node, first),
                        format!("{keyword} {} needs a value", first.text),
                    )
                    .with_hint(form));
            };
            self.warnings.push(Warning {
                rule: "LegacyKeyValueFormat",
                line: node.lines.start,
                message: format!(
                    "legacy \"{keyword} name value\" form; write \"{keyword} name=value\""
                ),
            });
            return Ok(vec![KeyValue {
                key: first.text.clone(),
                value: node.args[second.offset..].to_owned(),
            }]);
        }
        let mut pairs = Vec::new();
        for word in &words {
            let pos = self.word_pos(node, word);
            let Some((key, value)) = word.text.split_once('=') else {
                return Err(self
                    .err(pos, format!("{} is not of the form NAME=value", word.text))
                    .with_hint(form));
            };
            if key.is_empty() {
                return Err(self
                    .err(pos, format!("{keyword} name is empty"))
                    .with_hint(form));
            }
            pairs.push(KeyValue {
                key: key.to_owned(),
                value: value.to_owned(),
            });
        }
        Ok(pairs)
    }

    fn run(&self, node: &Node) -> Result<Run, SourceError> {
        let flags = self.flags(node, "RUN", RUN_FLAGS)?;
        if node.args.is_empty() {
            return Err(self.missing(
                node,
                "RUN needs a command",
                "write RUN <command> or RUN [\"executable\", \"arg\"]",
            ));
        }
        let mounts = flags
            .all("mount")
            .map(|flag| self.mount(node, flag))
            .collect::<Result<_, _>>()?;
        let network = match flags.get("network") {
            None => None,
            Some(flag) => Some(match flag.value.as_deref().unwrap_or_default() {
                "default" => NetworkMode::Default,
                "none" => NetworkMode::None,
                "host" => NetworkMode::Host,
                other => {
                    return Err(self
                        .err(
                            node.pos(flag.offset),
                            format!("unknown network mode {other:?}"),
                        )
                        .with_hint("--network is one of default, none, host"));
                }
            }),
        };
        let security = match flags.get("security") {
            None => None,
            Some(flag) => Some(match flag.value.as_deref().unwrap_or_default() {
                "sandbox" => SecurityMode::Sandbox,
                "insecure" => SecurityMode::Insecure,
                other => {
                    return Err(self
                        .err(
                            node.pos(flag.offset),
                            format!("unknown security mode {other:?}"),
                        )
                        .with_hint("--security is sandbox or insecure"));
                }
            }),
        };
        Ok(Run {
            command: CommandLine::parse(&node.args),
            heredocs: node.heredocs.clone(),
            mounts,
            network,
            security,
        })
    }

    /// One `--mount=` value. As BuildKit, a value that refers to variables is only
    /// checked for what needs none here (`from=` takes none); lowering parses it again
    /// with its variables expanded ([`RunMount::parse`]).
    fn mount(&self, node: &Node, flag: &Flag) -> Result<RunMount, SourceError> {
        let raw = flag.value.as_deref().unwrap_or_default();
        let err = |(message, hint): (String, &str)| {
            self.err(node.pos(flag.offset), message).with_hint(hint)
        };
        if raw.contains('$') {
            for field in csv_fields(raw) {
                let (key, value) = field.split_once('=').unwrap_or((&field, ""));
                let dollar = value.find('$');
                if key.trim().eq_ignore_ascii_case("from")
                    && dollar.is_some_and(|i| i + 1 != value.len())
                {
                    return Err(err((
                        "from= of a mount doesn't support variable expansion".into(),
                        "define an alias stage (FROM ${IMAGE} AS src) and mount from=src",
                    )));
                }
            }
            return Ok(RunMount::new(raw));
        }
        RunMount::parse(raw, &mut |v| Ok(v.to_owned())).map_err(err)
    }

    fn command(&self, node: &Node, keyword: &str) -> Result<CommandLine, SourceError> {
        self.flags(node, keyword, &[])?;
        if node.args.is_empty() {
            return Err(self.missing(
                node,
                &format!("{keyword} needs a command"),
                &format!("write {keyword} [\"executable\", \"arg\"] or {keyword} command"),
            ));
        }
        Ok(CommandLine::parse(&node.args))
    }

    fn shell(&self, node: &Node) -> Result<InstructionKind, SourceError> {
        self.flags(node, "SHELL", &[])?;
        let hint =
            "write SHELL [\"executable\", \"parameters\"], e.g. SHELL [\"/bin/bash\", \"-c\"]";
        match json_array(&node.args) {
            Some(Ok(shell)) if !shell.is_empty() => Ok(InstructionKind::Shell { shell }),
            Some(Ok(_)) => Err(self
                .err(node.args_pos(), "SHELL needs at least the shell executable")
                .with_hint(hint)),
            Some(Err(e)) => {
                // serde's position is within the arguments; ours points at the file.
                let reason = e.to_string();
                let reason = reason.split(" at line ").next().unwrap_or_default();
                Err(self
                    .err(
                        node.args_pos(),
                        format!("SHELL arguments are not a JSON array of strings: {reason}"),
                    )
                    .with_hint(hint))
            }
            None if node.args.is_empty() => Err(self.missing(node, "SHELL needs a shell", hint)),
            None => Err(self
                .err(node.args_pos(), "SHELL needs its arguments in JSON form")
                .with_hint(hint)),
        }
    }

    /// COPY and ADD arguments: sources (paths or heredocs) and the destination.
    fn sources_and_dest(
        &self,
        node: &Node,
        keyword: &str,
    ) -> Result<(Vec<CopySource>, String), SourceError> {
        let usage = format!("write {keyword} [flags] <src>... <dest>, e.g. {keyword} . /app");
        let (words, json) = match json_array(&node.args) {
            Some(Ok(list)) => (list, true),
            _ => {
                let words = self.words(node)?;
                if let Some(last) = words.last()
                    && words.len() >= 2
                    && parse::is_heredoc_word(&last.text, self.escape)
                {
                    return Err(self
                        .err(
                            self.word_pos(node, last),
                            format!("the destination of {keyword} can't be a heredoc"),
                        )
                        .with_hint(usage));
                }
                (words.into_iter().map(|w| w.text).collect(), false)
            }
        };
        let Some((dest, sources)) = words.split_last().filter(|(_, s)| !s.is_empty()) else {
            let message = if words.is_empty() {
                format!("{keyword} needs a source and a destination")
            } else {
                format!("{keyword} needs a destination after the source")
            };
            return Err(self.missing(node, &message, &usage));
        };
        // Heredocs were found in the same words, in the same order.
        let mut heredocs = node.heredocs.iter().peekable();
        let sources = sources
            .iter()
            .map(|word| {
                match heredocs.next_if(|_| !json && parse::is_heredoc_word(word, self.escape)) {
                    Some(heredoc) => CopySource::Heredoc(heredoc.clone()),
                    None => CopySource::Path(word.clone()),
                }
            })
            .collect();
        Ok((sources, dest.clone()))
    }

    fn copy(&self, node: &Node) -> Result<Copy, SourceError> {
        let flags = self.flags(node, "COPY", COPY_FLAGS)?;
        let (sources, dest) = self.sources_and_dest(node, "COPY")?;
        Ok(Copy {
            sources,
            dest,
            from: flags.value("from"),
            chown: flags.value("chown"),
            chmod: flags.value("chmod"),
            link: flags.bool("link").unwrap_or(false),
            parents: flags.bool("parents").unwrap_or(false),
            exclude: flags
                .all("exclude")
                .filter_map(|f| f.value.clone())
                .collect(),
        })
    }

    fn add(&self, node: &Node) -> Result<Add, SourceError> {
        let flags = self.flags(node, "ADD", ADD_FLAGS)?;
        let (sources, dest) = self.sources_and_dest(node, "ADD")?;
        Ok(Add {
            sources,
            dest,
            chown: flags.value("chown"),
            chmod: flags.value("chmod"),
            link: flags.bool("link").unwrap_or(false),
            exclude: flags
                .all("exclude")
                .filter_map(|f| f.value.clone())
                .collect(),
            checksum: flags.value("checksum"),
            keep_git_dir: flags.bool("keep-git-dir").unwrap_or(false),
            unpack: flags.bool("unpack"),
        })
    }

    /// Instructions whose whole argument is one raw value (WORKDIR, USER, ...).
    fn single(
        &self,
        node: &Node,
        keyword: &str,
        what: &str,
        example: &str,
    ) -> Result<String, SourceError> {
        self.flags(node, keyword, &[])?;
        if node.args.is_empty() {
            return Err(self.missing(
                node,
                &format!("{keyword} needs {what}"),
                &format!("e.g. {example}"),
            ));
        }
        Ok(node.args.clone())
    }

    fn expose(&mut self, node: &Node) -> Result<InstructionKind, SourceError> {
        self.flags(node, "EXPOSE", &[])?;
        let words = self.words(node)?;
        let hint = "a port looks like 80, 80/tcp, 53/udp or 8000-8010/tcp";
        if words.is_empty() {
            return Err(self.missing(node, "EXPOSE needs at least one port", hint));
        }
        for word in &words {
            // Words with variables or quotes can only be checked once expanded.
            let literal = !word.text.contains(['$', '"', '\'', self.escape]);
            if !literal {
                continue;
            }
            // `[ip:]host:port` is accepted with a warning, as BuildKit does; only the
            // container port counts.
            let container = word.text.rsplit(':').next().unwrap_or_default();
            if PortSpec::parse(container).is_none() {
                return Err(self
                    .err(
                        self.word_pos(node, word),
                        format!("invalid port {}", word.text),
                    )
                    .with_hint(hint));
            }
            let (rule, message) = if container != word.text {
                (
                    "ExposeInvalidFormat",
                    format!(
                        "EXPOSE {} names a host port, which EXPOSE ignores; write EXPOSE \
                         {container} and publish when running (docker run -p)",
                        word.text
                    ),
                )
            } else if container.contains(|c: char| c.is_ascii_uppercase()) {
                (
                    "ExposeProtoCasing",
                    format!("write the protocol of EXPOSE {container} in lower case"),
                )
            } else {
                continue;
            };
            self.warnings.push(Warning {
                rule,
                line: node.lines.start,
                message,
            });
        }
        Ok(InstructionKind::Expose {
            ports: words.into_iter().map(|w| w.text).collect(),
        })
    }

    fn volume(&self, node: &Node) -> Result<InstructionKind, SourceError> {
        self.flags(node, "VOLUME", &[])?;
        let paths = match json_array(&node.args) {
            Some(Ok(paths)) => paths,
            _ => self.words(node)?.into_iter().map(|w| w.text).collect(),
        };
        let hint = "write VOLUME /data or VOLUME [\"/data\", \"/logs\"]";
        if paths.is_empty() {
            return Err(self.missing(node, "VOLUME needs at least one path", hint));
        }
        if paths.iter().any(|p| p.trim().is_empty()) {
            return Err(self
                .err(node.args_pos(), "VOLUME path is empty")
                .with_hint(hint));
        }
        Ok(InstructionKind::Volume { paths })
    }

    fn healthcheck(&self, node: &Node) -> Result<Healthcheck, SourceError> {
        let flags = self.flags(node, "HEALTHCHECK", HEALTHCHECK_FLAGS)?;
        let usage = "write HEALTHCHECK [--interval=30s ...] CMD <command>, or HEALTHCHECK NONE";
        let (kind, rest) = match node.args.split_once(char::is_whitespace) {
            Some((kind, rest)) => (kind, rest.trim_start()),
            None => (node.args.as_str(), ""),
        };
        match kind.to_ascii_uppercase().as_str() {
            "" => Err(self.missing(node, "HEALTHCHECK needs CMD <command> or NONE", usage)),
            "NONE" => {
                if !rest.is_empty() || !node.flags.is_empty() {
                    return Err(self
                        .err(
                            node.args_pos(),
                            "HEALTHCHECK NONE takes no flags or arguments",
                        )
                        .with_hint(usage));
                }
                Ok(Healthcheck::Disable)
            }
            "CMD" => {
                if rest.is_empty() {
                    return Err(self
                        .err(node.args_pos(), "HEALTHCHECK CMD needs a command")
                        .with_hint(usage));
                }
                let duration = |name: &str| self.duration(node, &flags, name);
                let retries = match flags.get("retries") {
                    None => None,
                    Some(flag) => {
                        let v = flag.value.as_deref().unwrap_or_default();
                        Some(v.parse().map_err(|_| {
                            self.err(
                                node.pos(flag.offset),
                                format!("--retries must be a whole number, not {v:?}"),
                            )
                            .with_hint("e.g. --retries=3")
                        })?)
                    }
                };
                Ok(Healthcheck::Cmd(HealthcheckCmd {
                    command: CommandLine::parse(rest),
                    interval: duration("interval")?,
                    timeout: duration("timeout")?,
                    start_period: duration("start-period")?,
                    start_interval: duration("start-interval")?,
                    retries,
                }))
            }
            _ => Err(self
                .err(node.args_pos(), format!("unknown HEALTHCHECK type {kind}"))
                .with_hint(usage)),
        }
    }

    /// A duration flag: Go syntax (`30s`, `1m30s`, `500ms`), zero (the default) or ≥ 1ms.
    fn duration(
        &self,
        node: &Node,
        flags: &Flags<'_>,
        name: &str,
    ) -> Result<Option<Duration>, SourceError> {
        let Some(flag) = flags.get(name) else {
            return Ok(None);
        };
        let v = flag.value.as_deref().unwrap_or_default();
        match parse_duration(v) {
            Some(d) if d.is_zero() || d >= Duration::from_millis(1) => Ok(Some(d)),
            Some(_) => Err(self
                .err(
                    node.pos(flag.offset),
                    format!("--{name} must be at least 1ms"),
                )
                .with_hint("use 0s for the default")),
            None => Err(self
                .err(
                    node.pos(flag.offset),
                    format!("invalid duration {v:?} for --{name}"),
                )
                .with_hint("a duration looks like 30s, 1m30s or 500ms")),
        }
    }

    fn onbuild(&mut self, node: &Node) -> Result<InstructionKind, SourceError> {
        self.flags(node, "ONBUILD", &[])?;
        let Some(trigger) = node.sub_node(self.source, self.escape)? else {
            return Err(self.missing(
                node,
                "ONBUILD needs an instruction",
                "e.g. ONBUILD COPY . /app",
            ));
        };
        let keyword = trigger.keyword.to_ascii_uppercase();
        if matches!(keyword.as_str(), "ONBUILD" | "FROM" | "MAINTAINER") {
            return Err(self
                .err(
                    trigger.keyword_pos(),
                    format!("{keyword} isn't allowed as an ONBUILD trigger"),
                )
                .with_hint(
                    "ONBUILD can wrap any instruction except ONBUILD, FROM and MAINTAINER",
                ));
        }
        Ok(InstructionKind::OnBuild {
            trigger: Box::new(self.instruction(&trigger)?),
        })
    }
}

/// `Some(result)` if `args` looks like a JSON array (starts with `[`), else `None`.
fn json_array(args: &str) -> Option<Result<Vec<String>, serde_json::Error>> {
    args.starts_with('[').then(|| serde_json::from_str(args))
}

fn is_stage_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c))
}

/// Go's `strconv.ParseBool`, which Docker uses for flag values.
pub(super) fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// Go's `time.ParseDuration`: `0`, or numbers with units (`1h30m`, `1.5s`, `500ms`).
fn parse_duration(s: &str) -> Option<Duration> {
    if s == "0" {
        return Some(Duration::ZERO);
    }
    if s.is_empty() {
        return None;
    }
    let mut rest = s;
    let mut nanos = 0f64;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..number_len].parse().ok()?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        nanos += number * unit;
        rest = &rest[unit_len..];
    }
    Some(Duration::from_nanos(nanos.round() as u64))
}

/// A tmpfs size as BuildKit reads it (go-units `RAMInBytes`): a decimal number (a
/// fraction allowed), an optional space, and an optional binary unit `k`, `m`, `g`,
/// `t` or `p`, with an optional `i` and `b` after it: `1048576`, `64m`, `1.5g`,
/// `64 MiB`, `100b`.
fn parse_size(s: &str) -> Option<u64> {
    let digits = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let number = &s[..digits];
    if number.is_empty() || number.starts_with('.') || number.ends_with('.') {
        return None;
    }
    let number: f64 = number.parse().ok()?;
    let rest = s[digits..].strip_prefix(' ').unwrap_or(&s[digits..]);
    let rest = rest.to_ascii_lowercase();
    let mut chars = rest.chars().peekable();
    let shift = match chars.peek() {
        Some('k') => 10,
        Some('m') => 20,
        Some('g') => 30,
        Some('t') => 40,
        Some('p') => 50,
        _ => 0,
    };
    if shift > 0 {
        chars.next();
    }
    if chars.peek() == Some(&'i') {
        chars.next();
    }
    if chars.peek() == Some(&'b') {
        chars.next();
    }
    if chars.next().is_some() {
        return None;
    }
    let bytes = number * (1u64 << shift) as f64;
    (bytes < u64::MAX as f64).then_some(bytes as u64)
}

/// Which options BuildKit refuses for which mount type; (message, hint) if one is.
/// What it ignores (`env=` on a bind mount, `from=` on a tmpfs) is ignored here too.
fn check_mount(m: &RunMount) -> Result<(), (String, &'static str)> {
    use MountType::{Cache, Secret, Ssh};
    let kind = m.kind.as_str();
    let misplaced = |option: &str| format!("{option}= does not apply to type={kind} mounts");
    if m.sharing.is_some() && m.kind != Cache {
        return Err((misplaced("sharing"), "sharing= only applies to type=cache"));
    }
    if m.from.is_some() && m.kind == Secret {
        return Err((
            misplaced("from"),
            "a secret comes from --secret, not from a stage",
        ));
    }
    if (m.mode.is_some() || m.uid.is_some() || m.gid.is_some())
        && !matches!(m.kind, Cache | Secret | Ssh)
    {
        return Err((
            misplaced("mode/uid/gid"),
            "mode, uid and gid apply to cache, secret and ssh mounts",
        ));
    }
    if m.kind == Secret {
        if m.id.is_none() && m.source.is_none() && m.target.is_none() {
            return Err((
                "secret mount needs an id".into(),
                "add id=<secret id>, and target=<path> or env=<NAME> to choose where it appears",
            ));
        }
        if m.id.is_some() && m.source.is_some() {
            return Err((
                "secret mount has both id= and source=".into(),
                "source= is another name for id=; give only one",
            ));
        }
    }
    Ok(())
}

/// Splits a `--mount` value at commas outside double quotes, removing the quotes.
fn csv_fields(value: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut quoted = false;
    for c in value.chars() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => fields.push(String::new()),
            c => fields.last_mut().expect("never empty").push(c),
        }
    }
    fields
}

/// The candidate closest to `word` by edit distance, if it is close enough to be a typo.
fn nearest<'a>(word: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .map(|c| (edit_distance(word, c), c))
        .filter(|&(d, _)| d <= 2 && d < word.chars().count())
        .min_by_key(|&(d, _)| d)
        .map(|(_, c)| c)
}

/// Levenshtein distance, in characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distances() {
        assert_eq!(edit_distance("COPPY", "COPY"), 1);
        assert_eq!(edit_distance("RUN", "RUN"), 0);
        assert_eq!(edit_distance("", "ADD"), 3);
        assert_eq!(nearest("COPPY", KEYWORDS.iter().copied()), Some("COPY"));
        assert_eq!(
            nearest("ENTRYPONT", KEYWORDS.iter().copied()),
            Some("ENTRYPOINT")
        );
        assert_eq!(nearest("APT-GET", KEYWORDS.iter().copied()), None);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("2h"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_duration("30"), None);
        assert_eq!(parse_duration("s"), None);
        assert_eq!(parse_duration("-1s"), None);
        assert_eq!(parse_duration(""), None);
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("100"), Some(100));
        assert_eq!(parse_size("64k"), Some(64 << 10));
        assert_eq!(parse_size("64M"), Some(64 << 20));
        assert_eq!(parse_size("1gb"), Some(1 << 30));
        assert_eq!(parse_size("1GiB"), Some(1 << 30));
        assert_eq!(parse_size("m"), None);
        assert_eq!(parse_size("5x"), None);
        assert_eq!(parse_size("1.5g"), Some(3 << 29));
        assert_eq!(parse_size("64 MiB"), Some(64 << 20));
        assert_eq!(parse_size("100b"), Some(100));
        assert_eq!(parse_size("1p"), Some(1 << 50));
        assert_eq!(parse_size("1.2.3"), None);
    }

    #[test]
    fn ports() {
        let p = PortSpec::parse("80").unwrap();
        assert_eq!((p.start, p.end, p.protocol), (80, 80, Protocol::Tcp));
        assert_eq!(PortSpec::parse("80/TCP").unwrap().protocol, Protocol::Tcp);
        assert_eq!(
            PortSpec::parse("5000/sctp").unwrap().protocol,
            Protocol::Sctp
        );
        assert!(PortSpec::parse("80/xyz").is_none());
        assert!(PortSpec::parse("70000").is_none());
        assert!(PortSpec::parse("10-5").is_none());
        assert!(PortSpec::parse("+80").is_none());
        assert!(PortSpec::parse("").is_none());
    }

    #[test]
    fn mount_csv() {
        assert_eq!(
            csv_fields("type=bind,\"source=a,b\",rw"),
            ["type=bind", "source=a,b", "rw"]
        );
    }

    /// A `# check=skip=` comment above one instruction skips its checks there only;
    /// an empty `#` cuts it off; it cannot skip what the file reports elsewhere.
    #[test]
    fn check_comments_skip_one_instruction() {
        let rules = |text: &str| -> Vec<usize> {
            let df = Dockerfile::parse("Dockerfile", text).unwrap();
            df.checked_warnings()
                .unwrap()
                .iter()
                .map(|w| w.line)
                .collect()
        };
        let text = "# check=error=true\nFROM a\n# why: old image\n# check=skip=MaintainerDeprecated\n\nMAINTAINER x\n";
        assert!(rules(text).is_empty());
        assert_eq!(
            rules("FROM a\n# check=skip=MaintainerDeprecated\nMAINTAINER x\nMAINTAINER y\n"),
            [4]
        );
        assert_eq!(
            rules("FROM a\n# check=skip=MaintainerDeprecated\n#\nMAINTAINER x\n"),
            [4]
        );
        assert_eq!(rules("FROM a\n# check=skip=Other\nMAINTAINER x\n"), [3]);
    }

    #[test]
    fn stage_names() {
        assert!(is_stage_name("build-env_1.x"));
        assert!(!is_stage_name("1st"));
        assert!(!is_stage_name("a/b"));
        assert!(!is_stage_name(""));
    }

    #[test]
    fn original_text_and_keyword() {
        let df = Dockerfile::parse("Dockerfile", "from a\nrun echo \\\n  hi\n").unwrap();
        let run = &df.stages[0].instructions[0];
        assert_eq!(run.keyword(), "RUN");
        assert_eq!(run.original, "run echo   hi");
        assert_eq!(run.lines, LineRange { start: 2, end: 3 });
    }

    #[test]
    fn error_points_at_flag_on_continued_line() {
        let text = "FROM a\nCOPY --from=x \\\n     --frm=y a b\n";
        let err = Dockerfile::parse("Dockerfile", text).unwrap_err();
        assert_eq!((err.line, err.column), (3, 6));
        assert_eq!(err.message, "unknown flag --frm for COPY");
        assert_eq!(
            err.hint.as_deref(),
            Some(
                "did you mean --from? COPY accepts --from, --chown, --chmod, --link, --parents, --exclude"
            )
        );
    }
}
