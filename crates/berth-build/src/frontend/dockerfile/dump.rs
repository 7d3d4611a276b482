//! The stable, human-readable text form of a parsed Dockerfile.
//!
//! Golden tests compare it (`tests/testfiles/<case>/result`), so it must only change when
//! the parse result does: no `Debug` output of whole structs (field order and type names
//! are not a format), one line per instruction, every value printed so that its edges
//! are visible. A value is printed bare when it is one plain token, and quoted with
//! Rust string escapes otherwise, so `"a b"` (value with quotes) and `a b` differ.
//!
//! ```text
//! directives escape=\
//! 1 ARG VERSION=1.2
//! stage 0 build
//!   2 FROM golang:1.22 AS build
//!   3-5 RUN shell "go build ./..." mounts=[cache target=/root/.cache sharing=locked]
//! warning 4: ...
//! ```

use std::fmt::Write;

use super::instructions::{
    Add, CommandLine, Copy, CopySource, Dockerfile, From, Healthcheck, InstructionKind, KeyValue,
    NetworkMode, Run, RunMount, SecurityMode,
};
use super::parse::Heredoc;

impl Dockerfile {
    /// The parse result, one line per instruction, as the golden tests compare it.
    ///
    /// ```
    /// let df = berth_build::Dockerfile::parse("Dockerfile", "FROM alpine\nRUN [\"ls\", \"-l\"]\n").unwrap();
    /// assert_eq!(df.dump(), "directives escape=\\\nstage 0\n  1 FROM alpine\n  2 RUN exec [\"ls\", \"-l\"]\n");
    /// ```
    pub fn dump(&self) -> String {
        let mut out = String::new();
        let d = &self.directives;
        let _ = write!(out, "directives escape={}", d.escape);
        if let Some(syntax) = &d.syntax {
            let _ = write!(out, " syntax={}", q(syntax));
        }
        if let Some(check) = &d.check {
            let _ = write!(out, " check={}", q(check));
        }
        out.push('\n');
        for meta in &self.meta_args {
            let _ = writeln!(
                out,
                "{} ARG {}",
                meta.lines,
                arg(&meta.arg.name, meta.arg.default.as_deref())
            );
        }
        for (i, stage) in self.stages.iter().enumerate() {
            let _ = write!(out, "stage {i}");
            if let Some(name) = &stage.name {
                let _ = write!(out, " {name}");
            }
            let _ = writeln!(out, "\n  {} FROM {}", stage.lines, from(&stage.from));
            for instruction in &stage.instructions {
                let _ = writeln!(out, "  {} {}", instruction.lines, kind(&instruction.kind));
            }
        }
        for warning in &self.warnings {
            let _ = writeln!(out, "warning {}: {}", warning.line, warning.message);
        }
        out
    }
}

/// A value: bare if it is one plain token, else quoted with Rust escapes. `<` counts as
/// special so that a path `"<<EOF"` and a heredoc source `<<EOF` look different.
fn q(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars().all(|c| {
            !c.is_whitespace()
                && !c.is_control()
                && !matches!(c, ',' | '[' | ']' | '"' | '\'' | '\\' | '`' | '<')
        });
    if plain {
        s.to_owned()
    } else {
        format!("{s:?}")
    }
}

/// Appends ` name=value` for each option that is set.
fn push_options(out: &mut String, options: &[(&str, &Option<String>)]) {
    for (name, value) in options {
        if let Some(value) = value {
            let _ = write!(out, " {name}={}", q(value));
        }
    }
}

fn list<T>(items: &[T], one: impl Fn(&T) -> String) -> String {
    let items: Vec<String> = items.iter().map(one).collect();
    format!("[{}]", items.join(", "))
}

fn arg(name: &str, default: Option<&str>) -> String {
    match default {
        Some(default) => format!("{}={}", q(name), q(default)),
        None => q(name),
    }
}

fn key_values(pairs: &[KeyValue]) -> String {
    let pairs: Vec<String> = pairs
        .iter()
        .map(|kv| format!("{}={}", q(&kv.key), q(&kv.value)))
        .collect();
    pairs.join(" ")
}

fn from(f: &From) -> String {
    let mut out = q(&f.image);
    if let Some(name) = &f.name {
        let _ = write!(out, " AS {name}");
    }
    if let Some(platform) = &f.platform {
        let _ = write!(out, " platform={}", q(platform));
    }
    out
}

fn command(c: &CommandLine) -> String {
    match c {
        CommandLine::Exec(args) => format!("exec {args:?}"),
        CommandLine::Shell(line) => format!("shell {line:?}"),
    }
}

fn kind(k: &InstructionKind) -> String {
    let keyword = k.keyword();
    let rest = match k {
        InstructionKind::Arg { args } => {
            let args: Vec<String> = args
                .iter()
                .map(|a| arg(&a.name, a.default.as_deref()))
                .collect();
            args.join(" ")
        }
        InstructionKind::Env { vars } => key_values(vars),
        InstructionKind::Label { labels } => key_values(labels),
        InstructionKind::Run(run) => self::run(run),
        InstructionKind::Cmd { command } | InstructionKind::Entrypoint { command } => {
            self::command(command)
        }
        InstructionKind::Shell { shell } => format!("{shell:?}"),
        InstructionKind::Copy(c) => copy(c),
        InstructionKind::Add(a) => add(a),
        InstructionKind::Workdir { path: value }
        | InstructionKind::User { user: value }
        | InstructionKind::StopSignal { signal: value }
        | InstructionKind::Maintainer { name: value } => q(value),
        InstructionKind::Expose { ports } => {
            let ports: Vec<String> = ports.iter().map(|p| q(p)).collect();
            ports.join(" ")
        }
        InstructionKind::Volume { paths } => list(paths, |p| q(p)),
        InstructionKind::Healthcheck(h) => healthcheck(h),
        InstructionKind::OnBuild { trigger } => kind(&trigger.kind),
    };
    format!("{keyword} {rest}")
}

fn run(r: &Run) -> String {
    let mut out = command(&r.command);
    if !r.mounts.is_empty() {
        let _ = write!(out, " mounts={}", list(&r.mounts, mount));
    }
    if let Some(network) = r.network {
        let network = match network {
            NetworkMode::Default => "default",
            NetworkMode::None => "none",
            NetworkMode::Host => "host",
        };
        let _ = write!(out, " network={network}");
    }
    if let Some(security) = r.security {
        let security = match security {
            SecurityMode::Sandbox => "sandbox",
            SecurityMode::Insecure => "insecure",
        };
        let _ = write!(out, " security={security}");
    }
    if !r.heredocs.is_empty() {
        let _ = write!(out, " heredocs={}", list(&r.heredocs, heredoc));
    }
    out
}

fn mount(m: &RunMount) -> String {
    if m.raw.contains('$') {
        // Parsed only when lowering knows the variables.
        return format!("{:?}", m.raw);
    }
    let mut out = m.kind.as_str().to_owned();
    let text = [
        ("target", &m.target),
        ("id", &m.id),
        ("from", &m.from),
        ("source", &m.source),
        ("env", &m.env),
    ];
    push_options(&mut out, &text);
    if let Some(sharing) = m.sharing {
        let _ = write!(out, " sharing={}", sharing.as_str());
    }
    if let Some(mode) = m.mode {
        let _ = write!(out, " mode={mode:04o}");
    }
    if let Some(uid) = m.uid {
        let _ = write!(out, " uid={uid}");
    }
    if let Some(gid) = m.gid {
        let _ = write!(out, " gid={gid}");
    }
    if let Some(size) = m.size {
        let _ = write!(out, " size={size}");
    }
    if m.required {
        out.push_str(" required");
    }
    if m.readonly != RunMount::default_readonly(m.kind) {
        out.push_str(if m.readonly { " ro" } else { " rw" });
    }
    out
}

fn heredoc(h: &Heredoc) -> String {
    let mut out = q(&h.name);
    if let Some(fd) = h.fd {
        let _ = write!(out, " fd={fd}");
    }
    if h.chomp {
        out.push_str(" chomp");
    }
    if !h.expand {
        out.push_str(" noexpand");
    }
    let _ = write!(out, " {:?}", h.content);
    out
}

fn sources(sources: &[CopySource], dest: &str) -> String {
    let sources = list(sources, |s| match s {
        CopySource::Path(path) => q(path),
        CopySource::Heredoc(h) => format!("<<{}", q(&h.name)),
    });
    format!("{sources} {}", q(dest))
}

fn heredoc_sources(sources: &[CopySource]) -> String {
    let heredocs: Vec<String> = sources
        .iter()
        .filter_map(|s| match s {
            CopySource::Heredoc(h) => Some(heredoc(h)),
            CopySource::Path(_) => None,
        })
        .collect();
    if heredocs.is_empty() {
        String::new()
    } else {
        format!(" heredocs=[{}]", heredocs.join(", "))
    }
}

fn copy(c: &Copy) -> String {
    let mut out = sources(&c.sources, &c.dest);
    let options = [("from", &c.from), ("chown", &c.chown), ("chmod", &c.chmod)];
    push_options(&mut out, &options);
    if c.link {
        out.push_str(" link");
    }
    if c.parents {
        out.push_str(" parents");
    }
    if !c.exclude.is_empty() {
        let _ = write!(out, " exclude={}", list(&c.exclude, |p| q(p)));
    }
    out + &heredoc_sources(&c.sources)
}

fn add(a: &Add) -> String {
    let mut out = sources(&a.sources, &a.dest);
    let options = [
        ("chown", &a.chown),
        ("chmod", &a.chmod),
        ("checksum", &a.checksum),
    ];
    push_options(&mut out, &options);
    if a.link {
        out.push_str(" link");
    }
    if !a.exclude.is_empty() {
        let _ = write!(out, " exclude={}", list(&a.exclude, |p| q(p)));
    }
    if a.keep_git_dir {
        out.push_str(" keep-git-dir");
    }
    if let Some(unpack) = a.unpack {
        let _ = write!(out, " unpack={unpack}");
    }
    out + &heredoc_sources(&a.sources)
}

fn healthcheck(h: &Healthcheck) -> String {
    let Healthcheck::Cmd(check) = h else {
        return "NONE".to_owned();
    };
    let mut out = format!("CMD {}", command(&check.command));
    let durations = [
        ("interval", check.interval),
        ("timeout", check.timeout),
        ("start-period", check.start_period),
        ("start-interval", check.start_interval),
    ];
    for (name, value) in durations {
        if let Some(value) = value {
            let _ = write!(out, " {name}={value:?}");
        }
    }
    if let Some(retries) = check.retries {
        let _ = write!(out, " retries={retries}");
    }
    out
}
