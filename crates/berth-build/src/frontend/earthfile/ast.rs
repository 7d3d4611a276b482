//! The Earthfile syntax tree: recipes of statements, each command with its validated
//! flags and raw arguments and the place it was written.
//!
//! Arguments stay raw (quotes and `$VAR` as written), as in the Dockerfile frontend:
//! which variables are in scope is only known while a target is lowered.

use crate::frontend::source::{LineRange, Pos, Source};

/// A parsed Earthfile.
#[derive(Debug, Clone)]
pub struct Earthfile {
    /// The text, for errors.
    pub source: Source,
    /// `VERSION` (required by Earthly 0.7+; a file without it is Earthly 0.5, see
    /// [`Earthfile::feature`]).
    pub version: Option<Version>,
    /// The base recipe: the commands before the first target.
    pub base: Vec<Stmt>,
    /// Targets (`name:`), in file order.
    pub targets: Vec<Recipe>,
    /// Functions (`NAME:` whose first command is `FUNCTION` or `COMMAND`), in file order.
    pub functions: Vec<Recipe>,
}

impl Earthfile {
    /// The target called `name`.
    pub fn target(&self, name: &str) -> Option<&Recipe> {
        self.targets.iter().find(|t| t.name == name)
    }

    /// The function called `name`.
    pub fn function(&self, name: &str) -> Option<&Recipe> {
        self.functions.iter().find(|t| t.name == name)
    }

    /// Whether Earthly's feature flag `name` is on for this file. A file without
    /// `VERSION` is Earthly 0.5 (features.Get: "the Earthly version before the VERSION
    /// command was introduced"), so none of 0.6's and later flags are.
    pub fn feature(&self, name: &str) -> bool {
        match &self.version {
            Some(v) => v.feature(name),
            None => FEATURES
                .iter()
                .any(|(n, since)| *n == name && since.is_some_and(|m| m <= 5)),
        }
    }
}

/// `VERSION [--feature…] 0.N`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    /// The minor version (5 to 8; 5 is also a file without VERSION).
    pub minor: u32,
    /// Feature flags, without their `--`.
    pub features: Vec<String>,
    /// Where it is.
    pub pos: Pos,
}

impl Version {
    /// Whether Earthly's feature flag `name` is on: named in `VERSION`, or on from
    /// this version.
    pub fn feature(&self, name: &str) -> bool {
        self.features.iter().any(|f| f == name)
            || FEATURES
                .iter()
                .any(|(n, since)| *n == name && since.is_some_and(|m| m <= self.minor))
    }
}

/// A target or a function.
#[derive(Debug, Clone)]
pub struct Recipe {
    /// Its name, without the colon.
    pub name: String,
    /// Where the `name:` line is.
    pub pos: Pos,
    /// Its statements (a function's `FUNCTION` line left out).
    pub body: Vec<Stmt>,
}

/// A statement of a recipe.
#[derive(Debug, Clone)]
pub enum Stmt {
    /// One command.
    Command(Command),
    /// `IF cond … [ELSE IF cond …]… [ELSE …] END`: each branch's condition command (an
    /// `IF` or `ELSE IF`, flags and condition as its args) and body.
    If {
        /// Conditions and bodies in order.
        branches: Vec<(Command, Vec<Stmt>)>,
        /// The `ELSE` body.
        otherwise: Option<Vec<Stmt>>,
    },
    /// `FOR [flags] var IN expr … END`.
    For {
        /// The `FOR` command (args: var, `IN`, the list words).
        head: Command,
        /// The body.
        body: Vec<Stmt>,
    },
    /// `WAIT … END`.
    Wait {
        /// The `WAIT` command.
        head: Command,
        /// The body.
        body: Vec<Stmt>,
    },
    /// `WITH DOCKER [flags] … END` (its body is one RUN).
    WithDocker {
        /// The `WITH DOCKER` command.
        head: Command,
        /// The body.
        body: Vec<Stmt>,
    },
    /// `TRY … [FINALLY …] END`.
    Try {
        /// The `TRY` command.
        head: Command,
        /// The body.
        body: Vec<Stmt>,
        /// The `CATCH` body: parsed as Earthly parses it, refused when lowered, as
        /// Earthly refuses it.
        catch: Option<Vec<Stmt>>,
        /// The `FINALLY` body.
        finally: Option<Vec<Stmt>>,
    },
}

/// A word of a command, raw: quotes and escapes as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Word {
    /// The text (for a parenthesised group, what is inside the parentheses).
    pub text: String,
    /// Where it starts.
    pub pos: Pos,
    /// Byte offset in the command's logical line.
    pub offset: usize,
    /// Written as `( … )` (`COPY (+t/a --X=1) dest`).
    pub group: bool,
}

/// A `--flag` of a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flag {
    /// Its name, without `--`.
    pub name: String,
    /// Its value, raw (`None` for a boolean flag given without `=`).
    pub value: Option<String>,
    /// Where it is.
    pub pos: Pos,
}

/// One command: its keyword, flags and arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// The keyword, upper case, two words for `SAVE ARTIFACT`, `SAVE IMAGE`, `WITH
    /// DOCKER`, `ELSE IF`, `GIT CLONE` and `FROM DOCKERFILE`.
    pub name: String,
    /// Where the keyword is.
    pub pos: Pos,
    /// The lines it spans (continuations included).
    pub lines: LineRange,
    /// Flags, validated against the command's known flags.
    pub flags: Vec<Flag>,
    /// Arguments after the flags, raw.
    pub args: Vec<Word>,
    /// The text after the flags, raw (RUN's command line).
    pub rest: String,
    /// The command as written, continuations joined (for progress labels).
    pub text: String,
    /// Its flags or argument count are wrong: raised when the command runs, as Earthly
    /// does (a bad line in a target that is not built fails nothing).
    pub invalid: Option<Box<crate::SourceError>>,
}

impl Command {
    /// A command that stands for `text` at `pos` in errors and progress (a `$( … )`
    /// evaluated on its own).
    pub fn synthetic(name: &str, pos: Pos, text: &str) -> Command {
        Command {
            name: name.into(),
            pos,
            lines: LineRange {
                start: pos.line,
                end: pos.line,
            },
            flags: Vec::new(),
            args: Vec::new(),
            rest: String::new(),
            text: text.to_string(),
            invalid: None,
        }
    }

    /// The command of statement `s` (an IF's first condition, a block's head).
    pub fn of(s: &Stmt) -> &Command {
        match s {
            Stmt::Command(c) => c,
            Stmt::If { branches, .. } => &branches[0].0,
            Stmt::For { head, .. }
            | Stmt::Wait { head, .. }
            | Stmt::WithDocker { head, .. }
            | Stmt::Try { head, .. } => head,
        }
    }

    /// Whether boolean flag `name` is set (`--name` or `--name=true`).
    pub fn flag(&self, name: &str) -> bool {
        self.flags
            .iter()
            .rev()
            .find(|f| f.name == name)
            .is_some_and(|f| f.value.as_deref().is_none_or(|v| v != "false"))
    }

    /// The last value of flag `name`.
    pub fn value(&self, name: &str) -> Option<&str> {
        self.flags
            .iter()
            .rev()
            .find(|f| f.name == name)
            .and_then(|f| f.value.as_deref())
    }

    /// Every value of repeatable flag `name`, in order.
    pub fn values(&self, name: &str) -> Vec<&str> {
        self.flags
            .iter()
            .filter(|f| f.name == name)
            .filter_map(|f| f.value.as_deref())
            .collect()
    }

    /// The flag called `name`, if given.
    pub fn flag_pos(&self, name: &str) -> Option<Pos> {
        self.flags.iter().find(|f| f.name == name).map(|f| f.pos)
    }
}

/// How a flag takes its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagKind {
    /// `--x` or `--x=true|false`.
    Bool,
    /// `--x=v` or `--x v`.
    Value,
}

use FlagKind::{Bool, Value};

/// The commands berth knows, with their flags, and the argument counts they take
/// (`max` `None`: any number).
pub struct CommandSpec {
    /// The keyword.
    pub name: &'static str,
    /// Known flags.
    pub flags: &'static [(&'static str, FlagKind)],
    /// Fewest arguments.
    pub min: usize,
    /// Most arguments.
    pub max: Option<usize>,
    /// What the arguments look like, for errors.
    pub usage: &'static str,
}

const RUN_FLAGS: &[(&str, FlagKind)] = &[
    ("push", Bool),
    ("no-cache", Bool),
    ("entrypoint", Bool),
    ("privileged", Bool),
    ("secret", Value),
    ("network", Value),
    ("ssh", Bool),
    ("mount", Value),
    ("interactive", Bool),
    ("interactive-keep", Bool),
    ("aws", Bool),
    ("oidc", Value),
    ("raw-output", Bool),
];

const COND_FLAGS: &[(&str, FlagKind)] = &[
    ("privileged", Bool),
    ("ssh", Bool),
    ("no-cache", Bool),
    ("mount", Value),
    ("secret", Value),
];

/// Every command of Earthly 0.8.
pub const COMMANDS: &[CommandSpec] = &[
    CommandSpec {
        name: "VERSION",
        flags: &[],
        min: 1,
        max: Some(1),
        usage: "VERSION [--feature…] 0.8",
    },
    CommandSpec {
        name: "FROM",
        flags: &[
            ("platform", Value),
            ("allow-privileged", Bool),
            ("pass-args", Bool),
            ("build-arg", Value),
        ],
        min: 1,
        max: None,
        usage: "FROM <image> | FROM <target-ref> [--ARG=value…]",
    },
    CommandSpec {
        name: "FROM DOCKERFILE",
        flags: &[
            ("f", Value),
            ("target", Value),
            ("build-arg", Value),
            ("platform", Value),
            ("allow-privileged", Bool),
        ],
        min: 1,
        max: Some(1),
        usage: "FROM DOCKERFILE [-f file] [--target t] [--build-arg k=v] <context>",
    },
    CommandSpec {
        name: "RUN",
        flags: RUN_FLAGS,
        min: 0,
        max: None,
        usage: "RUN [flags] <command>",
    },
    CommandSpec {
        name: "COPY",
        flags: &[
            ("dir", Bool),
            ("keep-ts", Bool),
            ("keep-own", Bool),
            ("chmod", Value),
            ("if-exists", Bool),
            ("symlink-no-follow", Bool),
            ("from", Value),
            ("platform", Value),
            ("allow-privileged", Bool),
            ("pass-args", Bool),
            ("build-arg", Value),
            ("chown", Value),
        ],
        min: 2,
        max: None,
        usage: "COPY [flags] <src>… <dest>",
    },
    CommandSpec {
        name: "ARG",
        flags: &[("required", Bool), ("global", Bool)],
        min: 1,
        max: Some(1),
        usage: "ARG [--required] [--global] <name>[=<default>]",
    },
    CommandSpec {
        name: "LET",
        flags: &[],
        min: 1,
        max: Some(1),
        usage: "LET <name>=<value>",
    },
    CommandSpec {
        name: "SET",
        flags: &[],
        min: 1,
        max: Some(1),
        usage: "SET <name>=<value>",
    },
    CommandSpec {
        name: "SAVE ARTIFACT",
        flags: &[
            ("keep-ts", Bool),
            ("keep-own", Bool),
            ("if-exists", Bool),
            ("force", Bool),
            ("symlink-no-follow", Bool),
        ],
        min: 1,
        max: Some(5),
        usage: "SAVE ARTIFACT [flags] <src> [<dest>] [AS LOCAL <path>]",
    },
    CommandSpec {
        name: "SAVE IMAGE",
        flags: &[
            ("push", Bool),
            ("cache-from", Value),
            ("cache-hint", Bool),
            ("no-manifest-list", Bool),
            ("insecure", Bool),
            ("without-earthly-labels", Bool),
        ],
        min: 0,
        max: None,
        usage: "SAVE IMAGE [--push] <name>…",
    },
    CommandSpec {
        name: "BUILD",
        flags: &[
            ("platform", Value),
            ("allow-privileged", Bool),
            ("pass-args", Bool),
            ("auto-skip", Bool),
            ("build-arg", Value),
        ],
        min: 1,
        max: None,
        usage: "BUILD [flags] <target-ref> [--ARG=value…]",
    },
    CommandSpec {
        name: "PROJECT",
        flags: &[],
        min: 1,
        max: Some(1),
        usage: "PROJECT <org>/<project>",
    },
    CommandSpec {
        name: "GIT CLONE",
        flags: &[("branch", Value), ("keep-ts", Bool)],
        min: 2,
        max: Some(2),
        usage: "GIT CLONE [--branch ref] [--keep-ts] <url> <dest>",
    },
    CommandSpec {
        name: "WITH DOCKER",
        flags: &[
            ("pull", Value),
            ("load", Value),
            ("compose", Value),
            ("service", Value),
            ("platform", Value),
            ("allow-privileged", Bool),
            ("build-arg", Value),
            ("cache-id", Value),
        ],
        min: 0,
        max: Some(0),
        usage: "WITH DOCKER [flags]",
    },
    CommandSpec {
        name: "IF",
        flags: COND_FLAGS,
        min: 1,
        max: None,
        usage: "IF [flags] <condition>",
    },
    CommandSpec {
        name: "ELSE IF",
        flags: COND_FLAGS,
        min: 1,
        max: None,
        usage: "ELSE IF [flags] <condition>",
    },
    CommandSpec {
        name: "ELSE",
        flags: &[],
        min: 0,
        max: Some(0),
        usage: "ELSE",
    },
    CommandSpec {
        name: "FOR",
        flags: &[
            ("sep", Value),
            ("privileged", Bool),
            ("ssh", Bool),
            ("no-cache", Bool),
            ("mount", Value),
            ("secret", Value),
        ],
        min: 3,
        max: None,
        usage: "FOR [flags] <variable> IN <expression>",
    },
    CommandSpec {
        name: "WAIT",
        flags: &[],
        min: 0,
        max: Some(0),
        usage: "WAIT",
    },
    CommandSpec {
        name: "TRY",
        flags: &[],
        min: 0,
        max: Some(0),
        usage: "TRY",
    },
    CommandSpec {
        name: "CATCH",
        flags: &[],
        min: 0,
        max: Some(0),
        usage: "CATCH",
    },
    CommandSpec {
        name: "FINALLY",
        flags: &[],
        min: 0,
        max: Some(0),
        usage: "FINALLY",
    },
    CommandSpec {
        name: "END",
        flags: &[],
        min: 0,
        max: Some(0),
        usage: "END",
    },
    CommandSpec {
        name: "CACHE",
        flags: &[
            ("sharing", Value),
            ("chmod", Value),
            ("id", Value),
            ("persist", Bool),
        ],
        min: 1,
        max: Some(1),
        usage: "CACHE [flags] <path>",
    },
    CommandSpec {
        name: "LOCALLY",
        flags: &[],
        min: 0,
        max: Some(0),
        usage: "LOCALLY",
    },
    CommandSpec {
        name: "FUNCTION",
        flags: &[],
        min: 0,
        max: Some(0),
        usage: "FUNCTION",
    },
    CommandSpec {
        name: "COMMAND",
        flags: &[],
        min: 0,
        max: Some(0),
        usage: "COMMAND",
    },
    CommandSpec {
        name: "DO",
        flags: &[("allow-privileged", Bool), ("pass-args", Bool)],
        min: 1,
        max: None,
        usage: "DO <function-ref> [--ARG=value…]",
    },
    CommandSpec {
        name: "IMPORT",
        flags: &[("allow-privileged", Bool)],
        min: 1,
        max: Some(3),
        usage: "IMPORT <project-ref> [AS <alias>]",
    },
    CommandSpec {
        name: "CMD",
        flags: &[],
        min: 0,
        max: None,
        usage: "CMD <command> | CMD [\"exec\", …]",
    },
    CommandSpec {
        name: "ENTRYPOINT",
        flags: &[],
        min: 0,
        max: None,
        usage: "ENTRYPOINT <command> | ENTRYPOINT [\"exec\", …]",
    },
    CommandSpec {
        name: "LABEL",
        flags: &[],
        min: 1,
        max: None,
        usage: "LABEL <key>=<value>…",
    },
    CommandSpec {
        name: "EXPOSE",
        flags: &[],
        min: 1,
        max: None,
        usage: "EXPOSE <port>[/<protocol>]…",
    },
    CommandSpec {
        name: "ENV",
        flags: &[],
        min: 1,
        max: None,
        usage: "ENV <key>=<value>… | ENV <key> <value>",
    },
    CommandSpec {
        name: "VOLUME",
        flags: &[],
        min: 1,
        max: None,
        usage: "VOLUME <path>…",
    },
    CommandSpec {
        name: "USER",
        flags: &[],
        min: 1,
        max: Some(1),
        usage: "USER <user>[:<group>]",
    },
    CommandSpec {
        name: "WORKDIR",
        flags: &[],
        min: 1,
        max: Some(1),
        usage: "WORKDIR <path>",
    },
    CommandSpec {
        name: "HEALTHCHECK",
        flags: &[
            ("interval", Value),
            ("timeout", Value),
            ("start-period", Value),
            ("start-interval", Value),
            ("retries", Value),
        ],
        min: 1,
        max: None,
        usage: "HEALTHCHECK NONE | HEALTHCHECK [flags] CMD <command>",
    },
    CommandSpec {
        name: "HOST",
        flags: &[],
        // Counted when it runs, with Earthly's message.
        min: 0,
        max: None,
        usage: "HOST <hostname> <ip>",
    },
];

/// Dockerfile instructions Earthly does not have, with what to write instead.
pub const UNSUPPORTED: &[(&str, &str)] = &[
    (
        "SHELL",
        "Earthfiles have no SHELL; run the shell you need in RUN",
    ),
    (
        "ADD",
        "Earthfiles have no ADD; use COPY, or GIT CLONE for repositories",
    ),
    ("ONBUILD", "Earthfiles have no ONBUILD"),
    ("STOPSIGNAL", "Earthfiles have no STOPSIGNAL"),
    ("MAINTAINER", "use LABEL maintainer=…"),
];

/// The spec of command `name`.
pub fn spec(name: &str) -> Option<&'static CommandSpec> {
    COMMANDS.iter().find(|c| c.name == name)
}

/// The VERSION feature flags of Earthly 0.6–0.8 (features/features.go), each with the
/// minor version that turns it on (`enabled_in_version`; `None`: only when named).
pub const FEATURES: &[(&str, Option<u32>)] = &[
    ("no-use-registry-for-with-docker", None),
    ("earthly-ci-runner-arg", None),
    ("exec-after-parallel", Some(5)),
    ("parallel-load", Some(5)),
    ("use-registry-for-with-docker", Some(5)),
    ("for-in", Some(6)),
    ("no-implicit-ignore", Some(6)),
    ("referenced-save-only", Some(6)),
    ("require-force-for-unsafe-saves", Some(6)),
    ("use-copy-include-patterns", Some(6)),
    ("check-duplicate-images", Some(7)),
    ("ci-arg", Some(7)),
    ("earthly-git-author-args", Some(7)),
    ("earthly-locally-arg", Some(7)),
    ("earthly-version-arg", Some(7)),
    ("explicit-global", Some(7)),
    ("git-commit-author-timestamp", Some(7)),
    ("new-platform", Some(7)),
    ("no-tar-build-output", Some(7)),
    ("save-artifact-keep-own", Some(7)),
    ("shell-out-anywhere", Some(7)),
    ("use-cache-command", Some(7)),
    ("use-chmod", Some(7)),
    ("use-copy-link", Some(7)),
    ("use-host-command", Some(7)),
    ("use-no-manifest-list", Some(7)),
    ("use-project-secrets", Some(7)),
    ("wait-block", Some(7)),
    ("no-network", Some(8)),
    ("arg-scope-and-set", Some(8)),
    ("use-docker-ignore", Some(8)),
    ("pass-args", Some(8)),
    ("global-cache", Some(8)),
    ("cache-persist-option", Some(8)),
    ("git-refs", Some(8)),
    ("use-visited-upfront-hash-collection", Some(8)),
    ("use-function-keyword", Some(8)),
    ("try", None),
    ("wildcard-builds", None),
    ("build-auto-skip", None),
    ("allow-privileged-from-dockerfile", None),
    ("run-with-aws", None),
    ("wildcard-copy", None),
    ("raw-output", None),
    ("git-author-email-name-args", None),
    ("allow-without-earthly-labels", None),
    ("docker-cache", None),
    ("run-with-aws-oidc", None),
];
