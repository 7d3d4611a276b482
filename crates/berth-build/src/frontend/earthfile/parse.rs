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
    for l in &logical {
        if let Some(name) = header(l) {
            if let Some(prev) = recipes.iter().find(|r| r.0 == name) {
                return Err(source
                    .error(l.pos_at(0), format!("recipe {name} is defined twice"))
                    .with_hint(format!("the first one is on line {}", prev.1.line)));
            }
            recipes.push((name, l.pos_at(0), Vec::new()));
            continue;
        }
        let cmd = command(&source, l)?;
        match recipes.last_mut() {
            None => base.push(cmd),
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
    for (name, pos, mut cmds) in recipes {
        let is_function = cmds
            .first()
            .is_some_and(|c| c.name == "FUNCTION" || c.name == "COMMAND");
        if is_function {
            cmds.remove(0);
        }
        if let Some(c) = cmds
            .iter()
            .find(|c| c.name == "FUNCTION" || c.name == "COMMAND")
        {
            return Err(source.error(
                c.pos,
                format!("{} must be the first command of its recipe", c.name),
            ));
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

/// Lines → logical lines: blank and comment lines dropped, continuations joined.
fn logical_lines(source: &Source) -> Result<Vec<Logical>, SourceError> {
    let mut out = Vec::new();
    let mut cur: Option<Logical> = None;
    for (i, raw) in source.lines().iter().enumerate() {
        let number = i + 1;
        let stripped = strip_comment(raw);
        let body = stripped.trim_end();
        if cur.is_none() && body.trim().is_empty() {
            continue;
        }
        let (body, continues) = match body.strip_suffix('\\') {
            Some(b) => (b, true),
            None => (body, false),
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
        for (col, (_, c)) in body.char_indices().enumerate() {
            let before = l.text.len();
            l.text.push(c);
            for _ in before..l.text.len() {
                l.pos.push(Pos {
                    line: number,
                    column: col + 1,
                });
            }
        }
        if !continues {
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

/// `line` without its comment: `#` at the start or after whitespace, outside quotes.
fn strip_comment(line: &str) -> &str {
    let mut quote: Option<char> = None;
    let mut prev_space = true;
    let mut escaped = false;
    for (i, c) in line.char_indices() {
        if escaped {
            escaped = false;
            prev_space = false;
            continue;
        }
        match (quote, c) {
            (_, '\\') if quote != Some('\'') => escaped = true,
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '#') if prev_space => return &line[..i],
            _ => {}
        }
        prev_space = c.is_whitespace();
    }
    line
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
        let group = c == '(';
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
            if !FEATURES.contains(&fname) {
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
            (FlagKind::Bool, Some(v)) if v != "true" && v != "false" => {
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
    let args: Vec<Word> = words[arg_start.min(words.len())..].to_vec();
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
        .filter(|m| (6..=8).contains(m))
        .ok_or_else(|| {
            source
                .error(v.pos, format!("unsupported VERSION {}", v.text))
                .with_hint("berth runs Earthfiles of VERSION 0.6, 0.7 and 0.8")
        })?;
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
            "END" | "ELSE" | "ELSE IF" | "FINALLY" => {
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
                let (body, end) = block(source, it, Some(&c))?;
                let end = closed(source, &c, end)?;
                let finally = match end.name.as_str() {
                    "END" => None,
                    "FINALLY" => {
                        let (f, end2) = block(source, it, Some(&end))?;
                        let end2 = closed(source, &end, end2)?;
                        if end2.name != "END" {
                            return Err(misplaced(source, &end2, "TRY"));
                        }
                        Some(f)
                    }
                    _ => return Err(misplaced(source, &end, "TRY")),
                };
                out.push(Stmt::Try {
                    head: c,
                    body,
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
