//! Earthfile text → [`Earthfile`]: lines (continuations, comments), recipes, commands
//! with validated flags, and block statements.
//!
//! The lexical rules are Earthly's: a recipe is a `name:` line at the start of a line
//! and the indented lines under it; the commands before the first recipe are the base
//! recipe; `#` starts a comment at the start of a line or after whitespace, outside
//! quotes; a line ending in `\` goes on on the next line. Words are split at
//! whitespace outside quotes, `$( … )` and `( … )` (COPY's artifact-with-args form).

use std::iter::Peekable;

use super::ast::{
    COMMANDS, Command, Earthfile, FEATURES, Flag, FlagKind, Recipe, Stmt, UNSUPPORTED, Version,
    Word, spec,
};
use crate::frontend::source::{LineRange, Pos, Source, SourceError};

/// A logical line: continuations joined, comment removed.
struct Logical {
    text: String,
    /// The position of each byte of `text`.
    pos: Vec<Pos>,
    indented: bool,
    lines: LineRange,
}

impl Logical {
    fn pos_at(&self, offset: usize) -> Pos {
        self.pos
            .get(offset)
            .or(self.pos.last())
            .copied()
            .unwrap_or(Pos {
                line: self.lines.start,
                column: 1,
            })
    }
}

/// Parse an Earthfile named `file` (for errors).
pub fn parse(file: &str, text: &str) -> Result<Earthfile, SourceError> {
    let source = Source::new(file, text);
    let logical = logical_lines(&source)?;
    // Group the lines into the base recipe and named recipes.
    let mut base: Vec<Command> = Vec::new();
    let mut recipes: Vec<(String, Pos, Vec<Command>)> = Vec::new();
    // Blocks open in the base recipe: their commands may be indented.
    let mut base_depth = 0usize;
    for l in &logical {
        if let Some(name) = header(l) {
            if let Some(prev) = recipes.iter().find(|r| r.0 == name) {
                return Err(source
                    .error(l.pos_at(0), format!("recipe {name} is defined twice"))
                    .with_hint(format!("the first one is on line {}", prev.1.line)));
            }
            if name == "base" {
                return Err(source
                    .error(l.pos_at(0), "base is a reserved target name")
                    .with_hint("+base names the base recipe (the commands before the first target); rename this target"));
            }
            recipes.push((name, l.pos_at(0), Vec::new()));
            continue;
        }
        let cmd = command(&source, l)?;
        match recipes.last_mut() {
            None => {
                if l.indented && base_depth == 0 {
                    return Err(source
                        .error(
                            cmd.pos,
                            format!(
                                "syntax error: {} is indented, but no recipe or block is open",
                                cmd.name
                            ),
                        )
                        .with_hint("the base recipe's commands start at the left margin, as Earthly requires"));
                }
                match cmd.name.as_str() {
                    "IF" | "FOR" | "WAIT" | "TRY" | "WITH DOCKER" => base_depth += 1,
                    "END" => base_depth = base_depth.saturating_sub(1),
                    _ => {}
                }
                base.push(cmd)
            }
            Some(r) => {
                if !l.indented {
                    return Err(source
                        .error(cmd.pos, format!("{} is not indented under a recipe", cmd.name))
                        .with_hint(format!(
                            "indent it to belong to {}:, or move it before the first recipe (the base recipe)",
                            r.0
                        )));
                }
                r.2.push(cmd)
            }
        }
    }
    // VERSION first, once.
    let mut version = None;
    if base.first().is_some_and(|c| c.name == "VERSION") {
        version = Some(parse_version(&source, &base.remove(0))?);
    }
    let stray = base
        .iter()
        .chain(recipes.iter().flat_map(|r| &r.2))
        .find(|c| c.name == "VERSION");
    if let Some(c) = stray {
        return Err(source.error(c.pos, "VERSION must be the first command of the Earthfile"));
    }
    let base = statements(&source, base)?;
    let mut targets = Vec::new();
    let mut functions = Vec::new();
    // Earthly 0.8 (or 0.7 with --use-function-keyword) writes FUNCTION, earlier versions
    // and a file without VERSION (0.5) COMMAND; Earthly refuses the other one when the
    // function is called (interpreter.go handleDoFunction).
    let keyword = if version
        .as_ref()
        .is_some_and(|v| v.feature("use-function-keyword"))
    {
        "FUNCTION"
    } else {
        "COMMAND"
    };
    for (name, pos, mut cmds) in recipes {
        let is_function = cmds.first().is_some_and(|c| c.name == keyword);
        if is_function {
            cmds.remove(0);
        } else if let Some(first) = cmds.first_mut()
            && (first.name == "FUNCTION" || first.name == "COMMAND")
        {
            // Fails when the recipe is used, as in Earthly, at its name.
            first.invalid = Some(Box::new(function_keyword_error(
                &source,
                version.as_ref(),
                pos,
            )));
        }
        let body = statements(&source, cmds)?;
        let recipe = Recipe { name, pos, body };
        if is_function {
            functions.push(recipe);
        } else {
            targets.push(recipe);
        }
    }
    Ok(Earthfile {
        source,
        version,
        base,
        targets,
        functions,
    })
}

/// Earthly's error for a function whose recipe does not start with the keyword of its
/// file's VERSION, at the function's name.
pub(super) fn function_keyword_error(
    source: &Source,
    version: Option<&Version>,
    pos: Pos,
) -> SourceError {
    let (keyword, hint) = match version {
        Some(v) if v.feature("use-function-keyword") => (
            "FUNCTION",
            format!("VERSION 0.{} writes FUNCTION (COMMAND is 0.7's)", v.minor),
        ),
        Some(v) => (
            "COMMAND",
            format!(
                "VERSION 0.{} writes COMMAND; FUNCTION needs VERSION 0.8 or --use-function-keyword",
                v.minor
            ),
        ),
        None => (
            "COMMAND",
            "a file without VERSION is Earthly 0.5, which writes COMMAND; FUNCTION needs VERSION 0.8"
                .to_string(),
        ),
    };
    source
        .error(
            pos,
            format!(
                "{} recipes must start with {keyword}",
                keyword.to_lowercase()
            ),
        )
        .with_hint(hint)
}

/// Lines → logical lines: blank and comment lines dropped, continuations joined.
///
/// As in Earthly: a continued line's next lines lose their leading whitespace, comment
/// and blank lines inside a continuation are skipped, `\\` at the end is an escaped backslash (no
/// continuation), and a quoted string may span lines (the newline is kept in it).
fn logical_lines(source: &Source) -> Result<Vec<Logical>, SourceError> {
    let mut out = Vec::new();
    let mut cur: Option<Logical> = None;
    // Open quote at the end of the previous line (the logical line goes on).
    let mut open: Option<char> = None;
    // The previous line ended in a continuation `\`.
    let mut continued = false;
    for (i, raw) in source.lines().iter().enumerate() {
        let number = i + 1;
        let in_quote = open.is_some();
        if cur.is_none() && raw.trim().is_empty() {
            continue;
        }
        // A comment or blank line inside a continuation is skipped, the line goes on
        // (Earthly's lexer takes the newlines after `\` as one continuation).
        if continued && !in_quote && (raw.trim_start().starts_with('#') || raw.trim().is_empty()) {
            continue;
        }
        let (stripped, quote) = strip_comment(raw, open);
        open = quote;
        let body = if open.is_some() {
            stripped
        } else {
            stripped.trim_end()
        };
        if cur.is_none() && body.trim().is_empty() {
            continue;
        }
        let trailing = body.len() - body.trim_end_matches('\\').len();
        let (body, continues) = if open.is_none() && trailing % 2 == 1 {
            (&body[..body.len() - 1], true)
        } else {
            (body, false)
        };
        // A continued line's leading whitespace goes (not inside a quote).
        let skip = if continued && !in_quote {
            body.len() - body.trim_start().len()
        } else {
            0
        };
        let l = cur.get_or_insert_with(|| Logical {
            text: String::new(),
            pos: Vec::new(),
            indented: raw.starts_with([' ', '\t']),
            lines: LineRange {
                start: number,
                end: number,
            },
        });
        l.lines.end = number;
        for (col, (at, c)) in body.char_indices().enumerate() {
            if at < skip {
                continue;
            }
            let before = l.text.len();
            l.text.push(c);
            for _ in before..l.text.len() {
                l.pos.push(Pos {
                    line: number,
                    column: col + 1,
                });
            }
        }
        if open.is_some() {
            l.text.push('\n');
            l.pos.push(Pos {
                line: number,
                column: body.chars().count() + 1,
            });
        }
        continued = continues;
        if !continues && open.is_none() {
            let done = cur.take().expect("current line");
            if !done.text.trim().is_empty() {
                out.push(done);
            }
        }
    }
    if let Some(l) = cur
        && !l.text.trim().is_empty()
    {
        out.push(l);
    }
    Ok(out)
}

/// `line` without its comment: `#` at the start or after whitespace, outside quotes;
/// `\ #…` and `\#…` are a continuation then a comment. `quote` is the quote open at the
/// start of the line; returned with the quote open at its end.
fn strip_comment(line: &str, quote: Option<char>) -> (&str, Option<char>) {
    let mut quote = quote;
    let mut prev_space = true;
    let mut escaped = false;
    for (i, c) in line.char_indices() {
        if escaped {
            escaped = false;
            prev_space = c.is_whitespace();
            continue;
        }
        match (quote, c) {
            (None, '\\') if line[i + 1..].trim_start().starts_with('#') => {
                return (&line[..=i], None);
            }
            (_, '\\') if quote != Some('\'') => escaped = true,
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '#') if prev_space => return (&line[..i], None),
            _ => {}
        }
        prev_space = c.is_whitespace();
    }
    (line, quote)
}

/// The recipe name if `l` is a `name:` line.
fn header(l: &Logical) -> Option<String> {
    if l.indented {
        return None;
    }
    let name = l.text.trim().strip_suffix(':')?;
    let mut chars = name.chars();
    let first = chars.next()?;
    (first.is_ascii_alphabetic()
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    .then(|| name.to_string())
}

/// Split `l` into raw words.
fn words(source: &Source, l: &Logical) -> Result<Vec<Word>, SourceError> {
    let text = &l.text;
    let bytes: Vec<(usize, char)> = text.char_indices().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let (start, c) = bytes[i];
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        let mut group = c == '(';
        let mut depth = 0usize;
        let mut quote: Option<char> = None;
        let mut j = i;
        while j < bytes.len() {
            let (_, c) = bytes[j];
            match (quote, c) {
                (Some('\''), '\'') => quote = None,
                (Some('\''), _) => {}
                (_, '\\') => j += 1,
                (Some('"'), '"') => quote = None,
                (Some(_), _) => {}
                (None, '\'' | '"') => quote = Some(c),
                (None, '(') => depth += 1,
                (None, ')') => depth = depth.saturating_sub(1),
                (None, c) if c.is_whitespace() && depth == 0 => break,
                _ => {}
            }
            j += 1;
        }
        if let Some(q) = quote {
            return Err(source.error(l.pos_at(start), format!("unterminated {q} quote")));
        }
        let end = bytes.get(j).map(|b| b.0).unwrap_or(text.len());
        let mut word = text[start..end].to_string();
        if group {
            match word.strip_prefix('(').and_then(|w| w.strip_suffix(')')) {
                Some(inner) => word = inner.trim().to_string(),
                // `if (find … | grep x); then` in a RUN: a shell word, no group.
                None if depth == 0 => group = false,
                None => {
                    return Err(source.error(l.pos_at(start), "unterminated ( … ) group"));
                }
            }
        } else if depth > 0 {
            return Err(source.error(l.pos_at(start), "unterminated $( … )"));
        }
        out.push(Word {
            text: word,
            pos: l.pos_at(start),
            offset: start,
            group,
        });
        i = j;
    }
    Ok(out)
}

/// Two-word keywords: the first word and the second words that complete it.
const COMPOUND: &[(&str, &str)] = &[
    ("SAVE", "ARTIFACT"),
    ("SAVE", "IMAGE"),
    ("WITH", "DOCKER"),
    ("ELSE", "IF"),
    ("GIT", "CLONE"),
    ("FROM", "DOCKERFILE"),
];

/// One logical line → a command with validated flags.
fn command(source: &Source, l: &Logical) -> Result<Command, SourceError> {
    let words = words(source, l)?;
    let first = &words[0];
    let mut name = first.text.clone();
    let mut n = 1;
    if let Some(second) = words.get(1)
        && COMPOUND.contains(&(name.as_str(), second.text.as_str()))
    {
        name = format!("{name} {}", second.text);
        n = 2;
    }
    let Some(spec) = spec(&name) else {
        let err = match UNSUPPORTED.iter().find(|(k, _)| *k == name) {
            // Earthly's grammar has these (not MAINTAINER): it refuses them only when
            // they run, so other targets of the file still build.
            Some((_, hint)) if name != "MAINTAINER" => {
                let e = source
                    .error(first.pos, format!("{name} is not an Earthfile command"))
                    .with_hint(*hint);
                return Ok(deferred(l, &words, name, n, e));
            }
            Some((_, hint)) => source
                .error(first.pos, format!("{name} is not an Earthfile command"))
                .with_hint(*hint),
            None if name == "SAVE" || name == "WITH" || name == "GIT" => source
                .error(first.pos, format!("unknown command {name}"))
                .with_hint(match name.as_str() {
                    "SAVE" => "write SAVE ARTIFACT or SAVE IMAGE",
                    "WITH" => "write WITH DOCKER",
                    _ => "write GIT CLONE",
                }),
            None => {
                let err = source.error(first.pos, format!("unknown command {name}"));
                match did_you_mean(&name) {
                    Some(s) => err.with_hint(format!("did you mean {s}?")),
                    None => err,
                }
            }
        };
        return Err(err);
    };
    match validated(source, l, &words, &name, n, spec) {
        Ok(c) => Ok(c),
        // VERSION's flags decide how the file reads: wrong ones fail it at once.
        Err(e) if name == "VERSION" => Err(e),
        // Others fail when the command runs, as in Earthly.
        Err(e) => Ok(deferred(l, &words, name, n, e)),
    }
}

/// Command `name` (the first `n` of `words`) that fails with `e` when it runs.
fn deferred(l: &Logical, words: &[Word], name: String, n: usize, e: SourceError) -> Command {
    Command {
        pos: words[0].pos,
        lines: l.lines,
        flags: Vec::new(),
        args: words[n..].to_vec(),
        rest: words
            .get(n)
            .map(|w| l.text[w.offset..].trim().to_string())
            .unwrap_or_default(),
        text: l.text.trim().to_string(),
        name,
        invalid: Some(Box::new(e)),
    }
}

/// The command `name` (its first `n` words) of `words` with its flags and argument
/// count checked against `spec`.
fn validated(
    source: &Source,
    l: &Logical,
    words: &[Word],
    name: &str,
    n: usize,
    spec: &super::ast::CommandSpec,
) -> Result<Command, SourceError> {
    let first = &words[0];
    let name = name.to_string();
    let mut flags = Vec::new();
    let mut rest_at = None;
    let mut idx = n;
    while idx < words.len() {
        let w = &words[idx];
        let t = w.text.as_str();
        if t == "--" && name == "RUN" {
            rest_at = Some(idx + 1);
            break;
        }
        let flag_name = if let Some(f) = t.strip_prefix("--") {
            f
        } else if name == "FROM DOCKERFILE" && t.starts_with("-f") {
            &t[1..]
        } else {
            break;
        };
        if w.group {
            break;
        }
        let (fname, inline) = match flag_name.split_once('=') {
            Some((k, v)) => (k, Some(v.to_string())),
            None => (flag_name, None),
        };
        let kind = if name == "VERSION" {
            if !FEATURES.iter().any(|(n, _)| *n == fname) {
                return Err(source
                    .error(w.pos, format!("unknown VERSION feature flag --{fname}"))
                    .with_hint("berth knows the feature flags of Earthly 0.6 to 0.8"));
            }
            FlagKind::Bool
        } else {
            match spec.flags.iter().find(|(k, _)| *k == fname) {
                Some((_, kind)) => *kind,
                None => {
                    let known: Vec<String> =
                        spec.flags.iter().map(|(k, _)| format!("--{k}")).collect();
                    let err = source.error(w.pos, format!("unknown flag --{fname} for {name}"));
                    return Err(if known.is_empty() {
                        err.with_hint(format!("{name} takes no flags"))
                    } else {
                        err.with_hint(format!("{name} takes {}", known.join(", ")))
                    });
                }
            }
        };
        let value = match (kind, inline) {
            // A variable is expanded (and checked) when the command runs.
            (FlagKind::Bool, Some(v)) if v != "true" && v != "false" && !v.contains('$') => {
                return Err(source.error(
                    w.pos,
                    format!("--{fname} takes no value, or =true or =false; got {v:?}"),
                ));
            }
            (FlagKind::Bool, v) => v,
            (FlagKind::Value, Some(v)) => Some(v),
            (FlagKind::Value, None) => {
                idx += 1;
                match words.get(idx) {
                    Some(v) => Some(v.text.clone()),
                    None => {
                        return Err(source.error(w.pos, format!("--{fname} needs a value")));
                    }
                }
            }
        };
        flags.push(Flag {
            name: fname.to_string(),
            value,
            pos: w.pos,
        });
        idx += 1;
    }
    let arg_start = rest_at.unwrap_or(idx);
    let mut args: Vec<Word> = words[arg_start.min(words.len())..].to_vec();
    if matches!(name.as_str(), "ARG" | "LET" | "SET")
        && args.len() > 1
        && let Some(merged) = assignment(&l.text, &args[0])
    {
        args = vec![merged];
    }
    let rest = args
        .first()
        .map(|w| l.text[w.offset..].trim().to_string())
        .unwrap_or_default();
    if args.len() < spec.min || spec.max.is_some_and(|m| args.len() > m) {
        let at = args.get(spec.max.unwrap_or(0)).map_or(first.pos, |w| w.pos);
        let what = if args.len() < spec.min {
            format!(
                "{name} needs at least {} argument{}",
                spec.min,
                if spec.min == 1 { "" } else { "s" }
            )
        } else {
            format!("too many arguments for {name}")
        };
        return Err(source
            .error(if args.len() < spec.min { first.pos } else { at }, what)
            .with_hint(format!("usage: {}", spec.usage)));
    }
    Ok(Command {
        name,
        pos: first.pos,
        lines: l.lines,
        flags,
        args,
        rest,
        text: l.text.trim().to_string(),
        invalid: None,
    })
}

/// `NAME = value…`, `NAME =value…`, `NAME= value…` or `NAME=value with spaces` (the
/// forms ARG, LET and SET take, as in Earthly) starting at `first`, as one `NAME=value`
/// word whose value is the rest of the line; `None` without an `=` after the name.
fn assignment(line: &str, first: &Word) -> Option<Word> {
    let raw = line[first.offset..].trim_end();
    let key_len = raw
        .find(|c: char| c == '=' || c.is_whitespace())
        .unwrap_or(raw.len());
    let (key, after) = raw.split_at(key_len);
    let value = after.trim_start().strip_prefix('=')?.trim_start();
    Some(Word {
        text: format!("{key}={value}"),
        pos: first.pos,
        offset: first.offset,
        group: false,
    })
}

/// A known command whose name is close to `name`.
fn did_you_mean(name: &str) -> Option<&'static str> {
    let upper = name.to_ascii_uppercase();
    if let Some(c) = COMMANDS.iter().find(|c| c.name == upper) {
        return Some(c.name);
    }
    COMMANDS
        .iter()
        .map(|c| (distance(&upper, c.name), c.name))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, n)| n)
}

fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut row = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            row.push(sub.min(prev[j + 1] + 1).min(row[j] + 1));
        }
        prev = row;
    }
    prev[b.len()]
}

fn parse_version(source: &Source, c: &Command) -> Result<Version, SourceError> {
    let v = &c.args[0];
    let minor = v
        .text
        .strip_prefix("0.")
        .and_then(|m| m.parse::<u32>().ok())
        // 0.5 as Earthly 0.5 to 0.7 took it (0.8 dropped it): what a file without
        // VERSION is.
        .filter(|m| (5..=8).contains(m))
        .ok_or_else(|| {
            source
                .error(v.pos, format!("unsupported VERSION {}", v.text))
                .with_hint("berth runs Earthfiles of VERSION 0.5 to 0.8")
        })?;
    // Feature flags are booleans: Earthly refuses `--flag=value` there.
    if let Some(f) = c.flags.iter().find(|f| f.value.is_some()) {
        return Err(source
            .error(
                f.pos,
                format!("VERSION: bool flag --{} cannot have an argument", f.name),
            )
            .with_hint(format!("write --{} to turn it on, or leave it out", f.name)));
    }
    let has = |f: &str| c.flags.iter().any(|x| x.name == f);
    if minor < 7 && has("arg-scope-and-set") && !has("shell-out-anywhere") {
        return Err(source
            .error(
                c.pos,
                "VERSION: --arg-scope-and-set requires --shell-out-anywhere",
            )
            .with_hint("add --shell-out-anywhere to the VERSION line, as Earthly requires"));
    }
    Ok(Version {
        minor,
        features: c.flags.iter().map(|f| f.name.clone()).collect(),
        pos: c.pos,
    })
}

/// Commands → statements, blocks nested.
fn statements(source: &Source, cmds: Vec<Command>) -> Result<Vec<Stmt>, SourceError> {
    let mut it = cmds.into_iter().peekable();
    let (body, end) = block(source, &mut it, None)?;
    if let Some(end) = end {
        return Err(source.error(end.pos, format!("{} without a block to close", end.name)));
    }
    Ok(body)
}

/// Statements until a block keyword that closes or continues `opener`'s block (returned).
fn block(
    source: &Source,
    it: &mut Peekable<std::vec::IntoIter<Command>>,
    opener: Option<&Command>,
) -> Result<(Vec<Stmt>, Option<Command>), SourceError> {
    let mut out = Vec::new();
    while let Some(c) = it.next() {
        match c.name.as_str() {
            "END" | "ELSE" | "ELSE IF" | "CATCH" | "FINALLY" => {
                if opener.is_none() {
                    return Err(source.error(c.pos, format!("{} without a block to close", c.name)));
                }
                return Ok((out, Some(c)));
            }
            "IF" => {
                let mut branches = Vec::new();
                let mut otherwise = None;
                let mut head = c;
                loop {
                    let (body, end) = block(source, it, Some(&head))?;
                    let end = closed(source, &head, end)?;
                    match end.name.as_str() {
                        "END" => {
                            branches.push((head, body));
                            break;
                        }
                        "ELSE IF" => {
                            branches.push((head, body));
                            head = end;
                        }
                        "ELSE" => {
                            branches.push((head, body));
                            let (body, last) = block(source, it, Some(&end))?;
                            let last = closed(source, &end, last)?;
                            if last.name != "END" {
                                return Err(misplaced(source, &last, "ELSE"));
                            }
                            otherwise = Some(body);
                            break;
                        }
                        _ => return Err(misplaced(source, &end, "IF")),
                    }
                }
                out.push(Stmt::If {
                    branches,
                    otherwise,
                });
            }
            "FOR" | "WAIT" | "WITH DOCKER" => {
                let (body, end) = block(source, it, Some(&c))?;
                let end = closed(source, &c, end)?;
                if end.name != "END" {
                    return Err(misplaced(source, &end, &c.name));
                }
                if c.name == "FOR" && c.args.get(1).is_none_or(|w| w.text != "IN") {
                    return Err(source
                        .error(c.pos, "FOR needs IN after the variable")
                        .with_hint("usage: FOR [flags] <variable> IN <expression>"));
                }
                out.push(match c.name.as_str() {
                    "FOR" => Stmt::For { head: c, body },
                    "WAIT" => Stmt::Wait { head: c, body },
                    _ => Stmt::WithDocker { head: c, body },
                });
            }
            "TRY" => {
                // TRY … [CATCH …] [FINALLY …] END, Earthly's grammar.
                let (body, end) = block(source, it, Some(&c))?;
                let mut end = closed(source, &c, end)?;
                let mut catch = None;
                if end.name == "CATCH" {
                    let (b, next) = block(source, it, Some(&end))?;
                    end = closed(source, &end, next)?;
                    catch = Some(b);
                }
                let mut finally = None;
                if end.name == "FINALLY" {
                    let (b, next) = block(source, it, Some(&end))?;
                    end = closed(source, &end, next)?;
                    finally = Some(b);
                }
                if end.name != "END" {
                    return Err(misplaced(source, &end, "TRY"));
                }
                out.push(Stmt::Try {
                    head: c,
                    body,
                    catch,
                    finally,
                });
            }
            _ => out.push(Stmt::Command(c)),
        }
    }
    Ok((out, None))
}

/// The keyword that ended `opener`'s block, or an error if the recipe ended first.
fn closed(source: &Source, opener: &Command, end: Option<Command>) -> Result<Command, SourceError> {
    end.ok_or_else(|| {
        source
            .error(opener.pos, format!("{} without END", opener.name))
            .with_hint("close the block with END at the end of the recipe at the latest")
    })
}

fn misplaced(source: &Source, c: &Command, block: &str) -> SourceError {
    source.error(c.pos, format!("{} cannot close a {block} block", c.name))
}

/// The words inside a `( … )` group, raw.
pub(crate) fn group_words(text: &str) -> Vec<String> {
    crate::frontend::dockerfile::expand::split_words(text, '\\')
        .map(|ws| ws.into_iter().map(|w| w.text).collect())
        .unwrap_or_else(|_| text.split_whitespace().map(str::to_string).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn first_line(text: &str) -> String {
        // Bad flags and argument counts fail when the command runs.
        let e = match parse("Earthfile", text) {
            Ok(ef) => ef
                .targets
                .iter()
                .flat_map(|r| &r.body)
                .find_map(|s| Command::of(s).invalid.as_deref().cloned())
                .unwrap_or_else(|| panic!("{text:?} should not parse")),
            Err(e) => e,
        };
        e.to_string().lines().next().unwrap().to_string()
    }

    fn cmd(stmt: &Stmt) -> &Command {
        match stmt {
            Stmt::Command(c) => c,
            other => panic!("not a command: {other:?}"),
        }
    }

    #[test]
    fn version_feature_flags_take_no_value() {
        // Earthly's tests/version/invalid-feature-flag-override.earth.
        let e = parse("Earthfile", "VERSION --referenced-save-only=false 0.6\n").unwrap_err();
        assert!(
            e.to_string().starts_with(
                "Earthfile:1:9: VERSION: bool flag --referenced-save-only cannot have an argument"
            ),
            "{e}"
        );
    }

    #[test]
    fn an_indented_base_command_outside_a_block_is_a_syntax_error() {
        // Earthly's tests/invalid/leading-whitespace.earth.
        let e = parse("Earthfile", "VERSION 0.8\nFROM alpine:3.18\n\n ARG foo\n").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("Earthfile:4:2: syntax error: ARG is indented"),
            "{e}"
        );
        // Inside a block of the base recipe it is fine.
        parse(
            "Earthfile",
            "VERSION 0.8\nIF true\n    ARG foo=1\nEND\nt:\n    RUN x\n",
        )
        .unwrap();
    }

    #[test]
    fn a_shell_subshell_is_no_artifact_group() {
        // Earthly's release/apt-repo/Earthfile.
        let ef = parse(
            "Earthfile",
            "VERSION 0.8\nt:\n    RUN if (find /repo | grep -i private); then exit 1; fi\n    COPY (+a/x --N=1) ./\n",
        )
        .unwrap();
        let body = &ef.target("t").unwrap().body;
        assert_eq!(
            cmd(&body[0]).rest,
            "if (find /repo | grep -i private); then exit 1; fi"
        );
        let copy = cmd(&body[1]);
        assert!(copy.args[0].group);
        assert_eq!(copy.args[0].text, "+a/x --N=1");
        let e = parse("Earthfile", "VERSION 0.8\nt:\n    COPY (+a/x --N=1 ./\n").unwrap_err();
        assert!(e.to_string().contains("unterminated"), "{e}");
    }

    #[test]
    fn blank_lines_inside_a_continuation_are_skipped() {
        // Earthly's tests/version/multi-line-with-empty-newline.earth.
        let ef = parse(
            "Earthfile",
            "VERSION \\\n\n\n    0.8\n\nFROM alpine:3.18\ntest:\n    RUN echo a \\\n\n        b\n",
        )
        .unwrap();
        assert_eq!(ef.version.as_ref().unwrap().minor, 8);
        let run = cmd(&ef.target("test").unwrap().body[0]);
        assert_eq!(run.rest, "echo a b");
    }

    #[test]
    fn recipes_commands_flags_continuations_and_comments() {
        let text = r##"# leading comment
VERSION --use-cache-command --shell-out-anywhere 0.7
FROM alpine:3.18  # trailing comment
ARG --global NAME="a b"

build:
    # a comment inside a recipe
    COPY --dir --chmod=0755 src \
        other /app/
    RUN --mount type=cache,target=/root/.cache \
        --secret TOKEN=tok echo "#not a comment" '$HOME' a#b
    SAVE ARTIFACT /app/bin AS LOCAL bin
    SAVE IMAGE --push reg.invalid/app:1 reg.invalid/app:latest
    COPY (+dep/file --X="1 2") ./
    RUN ["echo", "exec form"]

PRINT:
    COMMAND
    ARG text
    RUN echo $text
"##;
        let ef = parse("Earthfile", text).unwrap();
        let v = ef.version.as_ref().unwrap();
        assert_eq!(v.minor, 7);
        assert_eq!(v.features, ["use-cache-command", "shell-out-anywhere"]);
        assert_eq!(ef.base.len(), 2);
        let from = cmd(&ef.base[0]);
        assert_eq!((from.name.as_str(), from.args.len()), ("FROM", 1));
        let arg = cmd(&ef.base[1]);
        assert!(arg.flag("global"));
        assert_eq!(arg.args[0].text, r#"NAME="a b""#);
        let build = ef.target("build").unwrap();
        assert_eq!(build.body.len(), 6);
        let copy = cmd(&build.body[0]);
        assert!(copy.flag("dir"));
        assert_eq!(copy.value("chmod"), Some("0755"));
        let args: Vec<&str> = copy.args.iter().map(|w| w.text.as_str()).collect();
        assert_eq!(args, ["src", "other", "/app/"]);
        assert_eq!((copy.lines.start, copy.lines.end), (8, 9));
        assert_eq!(copy.args[1].pos, Pos { line: 9, column: 9 });
        let run = cmd(&build.body[1]);
        assert_eq!(run.values("mount"), ["type=cache,target=/root/.cache"]);
        assert_eq!(run.value("secret"), Some("TOKEN=tok"));
        assert_eq!(run.rest, r##"echo "#not a comment" '$HOME' a#b"##);
        let save = cmd(&build.body[2]);
        assert_eq!(save.name, "SAVE ARTIFACT");
        assert_eq!(save.args.len(), 4);
        let image = cmd(&build.body[3]);
        assert!(image.flag("push"));
        assert_eq!(image.args.len(), 2);
        let group = &cmd(&build.body[4]).args[0];
        assert!(group.group);
        assert_eq!(group.text, r#"+dep/file --X="1 2""#);
        assert_eq!(cmd(&build.body[5]).rest, r#"["echo", "exec form"]"#);
        let f = ef.function("PRINT").unwrap();
        assert_eq!(
            f.body.len(),
            2,
            "COMMAND (0.7's FUNCTION) itself is left out"
        );
        assert!(ef.target("PRINT").is_none());
    }

    #[test]
    fn the_function_keyword_follows_version_and_its_feature_flag() {
        let f = |version: &str, keyword: &str| {
            let text = format!("{version}\nFN:\n    {keyword}\n    RUN true\n");
            parse("Earthfile", &text).unwrap()
        };
        // Earthly 0.5 (no VERSION), 0.6 and 0.7 write COMMAND; 0.8 and the feature flag
        // FUNCTION.
        for (version, keyword) in [
            ("", "COMMAND"),
            ("VERSION 0.5", "COMMAND"),
            ("VERSION 0.6", "COMMAND"),
            ("VERSION 0.7", "COMMAND"),
            ("VERSION --use-function-keyword 0.7", "FUNCTION"),
            ("VERSION 0.8", "FUNCTION"),
        ] {
            let ef = f(version, keyword);
            let func = ef.function("FN").unwrap();
            assert_eq!(
                func.body.len(),
                1,
                "{version}: {keyword} itself is left out"
            );
        }
        // The other keyword makes a recipe that fails when it is used, at its name, with
        // Earthly's message.
        for (version, keyword, want) in [
            (
                "",
                "FUNCTION",
                "Earthfile:2:1: command recipes must start with COMMAND",
            ),
            (
                "VERSION 0.6",
                "FUNCTION",
                "Earthfile:2:1: command recipes must start with COMMAND",
            ),
            (
                "VERSION 0.7",
                "FUNCTION",
                "Earthfile:2:1: command recipes must start with COMMAND",
            ),
            (
                "VERSION --use-function-keyword 0.7",
                "COMMAND",
                "Earthfile:2:1: function recipes must start with FUNCTION",
            ),
            (
                "VERSION 0.8",
                "COMMAND",
                "Earthfile:2:1: function recipes must start with FUNCTION",
            ),
        ] {
            let ef = f(version, keyword);
            assert!(ef.function("FN").is_none(), "{version} {keyword}");
            let t = ef.target("FN").unwrap();
            let err = cmd(&t.body[0]).invalid.as_ref().unwrap().to_string();
            assert!(err.starts_with(want), "{version} {keyword}: {err}");
        }
        // Anywhere else either keyword parses, and fails only if it runs (Earthly's
        // "not allowed in a target definition").
        let ef = parse(
            "Earthfile",
            "VERSION 0.8\nFN:\n    FUNCTION\n    RUN a\n    FUNCTION\nt:\n    RUN b\n    COMMAND\n",
        )
        .unwrap();
        assert_eq!(ef.function("FN").unwrap().body.len(), 2);
        assert_eq!(cmd(&ef.target("t").unwrap().body[1]).name, "COMMAND");
    }

    #[test]
    fn blocks_nest() {
        let text = "VERSION 0.8\nt:\n    IF [ -f x ]\n        RUN a\n    ELSE IF --no-cache false\n        FOR x IN a b\n            RUN echo $x\n        END\n    ELSE\n        WAIT\n            BUILD +u\n        END\n    END\n    TRY\n        RUN b\n    FINALLY\n        SAVE ARTIFACT x\n    END\n    WITH DOCKER --load img=+u\n        RUN docker run img\n    END\nu:\n    FROM scratch\n";
        let ef = parse("Earthfile", text).unwrap();
        let t = ef.target("t").unwrap();
        assert_eq!(t.body.len(), 3);
        let Stmt::If {
            branches,
            otherwise,
        } = &t.body[0]
        else {
            panic!("IF expected")
        };
        assert_eq!(branches.len(), 2);
        assert_eq!(branches[0].0.rest, "[ -f x ]");
        assert!(branches[1].0.flag("no-cache"));
        assert!(matches!(branches[1].1[0], Stmt::For { .. }));
        assert!(matches!(otherwise.as_deref(), Some([Stmt::Wait { .. }])));
        assert!(matches!(&t.body[1], Stmt::Try { finally: Some(f), .. } if f.len() == 1));
        let Stmt::WithDocker { head, body } = &t.body[2] else {
            panic!("WITH DOCKER expected")
        };
        assert_eq!(head.value("load"), Some("img=+u"));
        assert_eq!(body.len(), 1);
    }

    #[test]
    fn errors_point_at_line_and_column() {
        let cases = [
            (
                "VERSION 0.8\nt:\n    COPPY a b\n",
                "Earthfile:3:5: unknown command COPPY",
            ),
            (
                "VERSION 0.8\nt:\n    COPY --bogus a b\n",
                "Earthfile:3:10: unknown flag --bogus for COPY",
            ),
            (
                "VERSION --no-such-feature 0.8\n",
                "Earthfile:1:9: unknown VERSION feature flag --no-such-feature",
            ),
            ("VERSION 0.4\n", "Earthfile:1:9: unsupported VERSION 0.4"),
            (
                "VERSION 0.8\nt:\nRUN x\n",
                "Earthfile:3:1: RUN is not indented under a recipe",
            ),
            (
                "VERSION 0.8\nt:\n    IF true\n    RUN x\n",
                "Earthfile:3:5: IF without END",
            ),
            (
                "VERSION 0.8\nt:\n    END\n",
                "Earthfile:3:5: END without a block to close",
            ),
            (
                "VERSION 0.8\nt:\n    COPY onlyone\n",
                "Earthfile:3:5: COPY needs at least 2 arguments",
            ),
            (
                "VERSION 0.8\nt:\n    RUN --mount\n",
                "Earthfile:3:9: --mount needs a value",
            ),
            (
                "VERSION 0.8\nt:\n  RUN a\nt:\n  RUN b\n",
                "Earthfile:4:1: recipe t is defined twice",
            ),
            (
                "VERSION 0.8\nt:\n    ADD a b\n",
                "Earthfile:3:5: ADD is not an Earthfile command",
            ),
            (
                "VERSION 0.8\nt:\n    RUN echo 'open\n",
                "Earthfile:3:14: unterminated ' quote",
            ),
            (
                "FROM a\nVERSION 0.8\n",
                "Earthfile:2:1: VERSION must be the first command of the Earthfile",
            ),
            (
                "VERSION 0.8\nt:\n    SAVE ARTIFACT --push x\n",
                "Earthfile:3:19: unknown flag --push for SAVE ARTIFACT",
            ),
            (
                "VERSION 0.8\nt:\n    SAVE IMAGE --push=yes x\n",
                "Earthfile:3:16: --push takes no value, or =true or =false; got \"yes\"",
            ),
            (
                "VERSION 0.8\nt:\n    FOR x a b\n    END\n",
                "Earthfile:3:5: FOR needs IN after the variable",
            ),
        ];
        for (text, want) in cases {
            assert_eq!(first_line(text), want, "for {text:?}");
        }
    }

    #[test]
    fn earthly_line_rules_assignments_and_deferred_errors() {
        let text = "VERSION 0.8\nARG --global g = a b\nt:\n    LET x= 1\n    SET x =2 3\n    RUN echo a\\\n        # skipped\n        b \\# comment\n        c\n    RUN echo \"one\ntwo  # kept\n\" \\\\\n    RUN --bogus x\nu:\n    HOST only\n";
        let ef = parse("Earthfile", text).unwrap();
        assert_eq!(cmd(&ef.base[0]).args[0].text, "g=a b");
        let t = ef.target("t").unwrap();
        assert_eq!(cmd(&t.body[0]).args[0].text, "x=1");
        assert_eq!(cmd(&t.body[1]).args[0].text, "x=2 3");
        // Continued lines lose their indentation; comment lines in between go.
        assert_eq!(cmd(&t.body[2]).rest, "echo ab c");
        // A quoted newline is kept, `\\\\` ends nothing.
        assert_eq!(cmd(&t.body[3]).rest, "echo \"one\ntwo  # kept\n\" \\\\");
        // A bad flag fails when the command runs, not when the file is read.
        let bad = cmd(&t.body[4]);
        assert!(
            bad.invalid
                .as_ref()
                .unwrap()
                .to_string()
                .starts_with("Earthfile:13:9: unknown flag --bogus for RUN")
        );
        assert!(ef.target("u").is_some());
        // So do the Dockerfile commands Earthly's grammar knows but refuses (ADD,
        // SHELL, ONBUILD, STOPSIGNAL): the file's other targets still build. A word
        // Earthly's grammar does not know fails the file.
        let ef = parse(
            "Earthfile",
            "VERSION 0.8\nold:\n    ADD a b\n    SHELL [\"bash\"]\n    ONBUILD RUN x\n    STOPSIGNAL 9\nnew:\n    RUN x\n",
        )
        .unwrap();
        let old = &ef.target("old").unwrap().body;
        assert_eq!(old.len(), 4);
        assert!(old.iter().all(|s| Command::of(s).invalid.is_some()));
        assert!(cmd(&ef.target("new").unwrap().body[0]).invalid.is_none());
        let e = parse("Earthfile", "VERSION 0.8\nt:\n    MAINTAINER me\n").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("Earthfile:3:5: MAINTAINER is not an Earthfile command"),
            "{e}"
        );
    }

    #[test]
    fn error_shows_the_line_and_a_hint() {
        let err = parse("Earthfile", "VERSION 0.8\nt:\n    COPPY a b\n").unwrap_err();
        let shown = err.to_string();
        assert!(shown.contains(" 3 |     COPPY a b\n   |     ^"), "{shown}");
        assert!(shown.ends_with("hint: did you mean COPY?"), "{shown}");
    }
}
