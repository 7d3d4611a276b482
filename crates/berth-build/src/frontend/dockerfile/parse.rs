//! Text → AST: the lexical layer of the Dockerfile frontend (BuildKit's `parser` package).
//!
//! This layer knows the rules every instruction shares and nothing about what any one
//! instruction means:
//!
//! - Parser directives (`# escape=`, `# syntax=`, `# check=`) are only directives in the
//!   comment block at the very top; the first other line (even a blank one) ends it.
//! - A line ending in the escape character continues on the next. Inside a continuation,
//!   comment lines and blank lines are skipped without ending it, as Docker does (a blank
//!   one draws a [`Warning`], as Docker's does).
//! - Each logical line starts with a keyword (any case), then `--name[=value]` flags up to
//!   the first word that is not one (or a lone `--`), then the arguments, kept raw.
//! - For RUN, COPY and ADD, words like `<<EOF`, `<<-EOF`, `<<'EOF'` or `3<<EOF` in the
//!   arguments start heredocs, whose bodies are the lines after the instruction, in
//!   order, each up to a line holding only its name.
//!
//! Every [`Node`] keeps the logical line it was joined from and a map back to the file,
//! so the typed layer can point an error at a flag or word on a continued line.

use super::expand::split_words;
use crate::frontend::source::{LineRange, Pos, Source, SourceError, Warning};

/// A parsed Dockerfile before instructions are interpreted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ast {
    /// The file, for building errors.
    pub source: Source,
    /// The parser directives at the top of the file.
    pub directives: Directives,
    /// One node per instruction, in file order.
    pub nodes: Vec<Node>,
    /// Things accepted but worth reporting.
    pub warnings: Vec<Warning>,
}

/// Parser directives: comments of the form `# name=value` at the very top of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directives {
    /// The escape and line-continuation character: `\` (default) or `` ` ``.
    pub escape: char,
    /// `# syntax=`: which frontend image Docker would use. Recorded; berth always uses
    /// its own parser.
    pub syntax: Option<String>,
    /// `# check=`: build-check configuration, as written.
    pub check: Option<String>,
    /// The same, read: which warnings are skipped, and whether the rest fail the build.
    pub checks: CheckOptions,
}

/// `# check=` options, as BuildKit reads them: `skip=Rule,Other` (or `skip=all`),
/// `error=true`, `experimental=...`, joined by `;`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckOptions {
    /// `skip=all`.
    pub skip_all: bool,
    /// `skip=` rule names.
    pub skip: Vec<String>,
    /// `error=true`: a warning that is not skipped fails the build.
    pub error: bool,
}

impl CheckOptions {
    /// Reads a `# check=` value; the error names the option at fault.
    ///
    /// ```
    /// use berth_build::frontend::dockerfile::parse::CheckOptions;
    ///
    /// let c = CheckOptions::parse("skip=JSONArgsRecommended, StageNameCasing;error=true").unwrap();
    /// assert_eq!(c.skip, ["JSONArgsRecommended", "StageNameCasing"]);
    /// assert!(c.error && !c.skip_all);
    /// assert!(CheckOptions::parse("skip").is_err());
    /// ```
    pub fn parse(value: &str) -> Result<CheckOptions, String> {
        let mut c = CheckOptions::default();
        let value = value.trim();
        if value.is_empty() {
            return Ok(c);
        }
        let list =
            |v: &str| -> Vec<String> { v.split(',').map(|r| r.trim().to_string()).collect() };
        for part in value.splitn(3, ';') {
            let Some((key, v)) = part.split_once('=') else {
                return Err(format!("invalid check option {part:?}"));
            };
            let v = v.trim();
            match key.trim() {
                "skip" if v == "all" => c.skip_all = true,
                "skip" => c.skip = list(v),
                // Experimental checks: berth has none, so there is nothing to turn on.
                "experimental" => {}
                "error" => {
                    c.error = super::instructions::parse_bool(v).ok_or_else(|| {
                        format!("invalid check option {part:?}: error takes true or false")
                    })?;
                }
                other => return Err(format!("invalid check option {other:?}")),
            }
        }
        Ok(c)
    }

    /// Whether a warning of `rule` is reported.
    pub fn reports(&self, rule: &str) -> bool {
        !self.skip_all && !self.skip.iter().any(|r| r == rule)
    }
}

impl Default for Directives {
    fn default() -> Self {
        Directives {
            escape: '\\',
            syntax: None,
            check: None,
            checks: CheckOptions::default(),
        }
    }
}

/// One instruction as written: keyword, flags, raw arguments, heredocs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// The keyword as written (`run`, `RUN`, `Run` all mean RUN).
    pub keyword: String,
    /// The `--name[=value]` flags between keyword and arguments.
    pub flags: Vec<Flag>,
    /// Everything after the flags, trailing whitespace removed, otherwise as written.
    pub args: String,
    /// Heredoc bodies the arguments introduce (RUN, COPY and ADD only).
    pub heredocs: Vec<Heredoc>,
    /// Lines spanned, continuation and heredoc bodies included.
    pub lines: LineRange,
    /// The logical line: continued lines joined with the escape characters removed,
    /// comment and blank lines inside the continuation dropped.
    pub text: String,
    /// Byte offset of the keyword in `text`.
    pub keyword_offset: usize,
    /// Byte offset of `args` in `text`.
    pub args_offset: usize,
    map: LineMap,
}

/// A `--name=value` (or bare `--name`) flag before an instruction's arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flag {
    /// The name, without the leading `--`.
    pub name: String,
    /// What follows `=`, quotes removed; `None` for a bare `--name`.
    pub value: Option<String>,
    /// Byte offset of the leading `--` in the node's `text`.
    pub offset: usize,
}

/// A heredoc: an inline file or script following the instruction that names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heredoc {
    /// The delimiter word with quotes removed (`EOF`, or `a.txt` for `COPY <<a.txt`).
    pub name: String,
    /// The body: every line up to the delimiter, each ending in `\n`. For `<<-`, leading
    /// tabs are already removed from each line.
    pub content: String,
    /// False when the delimiter was quoted (`<<'EOF'`, `<<"EOF"`): the body is then used
    /// as is, without variable expansion.
    pub expand: bool,
    /// Written `<<-`: leading tabs were stripped from the body and the delimiter line.
    pub chomp: bool,
    /// The file descriptor written before `<<` (`3<<EOF`), if any.
    pub fd: Option<u32>,
}

/// Parses `text` (named `file` in errors) into nodes, without interpreting instructions.
pub fn parse(file: &str, text: &str) -> Result<Ast, SourceError> {
    parse_until(file, text, &|| false)
}

/// [`parse`], asking `canceled` before each instruction and stopping with an error once
/// it says so (a Ctrl-C during a Dockerfile of a million lines); the caller tells that
/// error from a real one by asking `canceled` again.
pub fn parse_until(
    file: &str,
    text: &str,
    canceled: &dyn Fn() -> bool,
) -> Result<Ast, SourceError> {
    let source = Source::new(file, text);
    let directives = parse_directives(&source)?;
    let escape = directives.escape;
    let lines = source.lines();
    let mut nodes = Vec::new();
    let mut warnings = Vec::new();
    // Index of the next line to read; line numbers are indices + 1.
    let mut next = 0;
    while next < lines.len() {
        if canceled() {
            return Err(source.error(
                Pos {
                    line: next + 1,
                    column: 1,
                },
                "canceled",
            ));
        }
        let first = &lines[next];
        next += 1;
        let start = next;
        let trimmed = first.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }

        let mut text = String::new();
        let mut map = LineMap::default();
        let indent = first[..first.len() - trimmed.len()].chars().count();
        let (content, mut continued) = strip_continuation(trimmed, escape);
        map.push(start, indent, text.len());
        text.push_str(content);
        let mut empty_continuation = None;
        while continued && next < lines.len() {
            let line = &lines[next];
            next += 1;
            let trimmed = line.trim_start();
            if trimmed.starts_with('#') {
                continue;
            }
            if trimmed.is_empty() {
                empty_continuation.get_or_insert(next);
                continue;
            }
            let (content, more) = strip_continuation(line, escape);
            continued = more;
            map.push(next, 0, text.len());
            text.push_str(content);
        }
        if let Some(line) = empty_continuation {
            warnings.push(Warning {
                rule: "NoEmptyContinuation",
                line,
                message: "empty continuation line: the instruction goes on after it; remove the \
                          blank line, or end the previous line without the escape character"
                    .into(),
            });
        }

        let lines_spanned = LineRange { start, end: next };
        let Some(mut node) = Node::from_text(text, map, lines_spanned, 0, escape)
            .map_err(|e| e.into_error(&source))?
        else {
            continue;
        };
        if node.can_contain_heredocs() {
            for (head, offset) in heredoc_heads(&node.args, escape) {
                let mut content = String::new();
                let mut terminated = false;
                while next < lines.len() {
                    let line = lines[next].as_str();
                    next += 1;
                    let line = if head.chomp {
                        line.trim_start_matches('\t')
                    } else {
                        line
                    };
                    if line == head.name {
                        terminated = true;
                        break;
                    }
                    content.push_str(line);
                    content.push('\n');
                }
                if !terminated {
                    let pos = node.pos(node.args_offset + offset);
                    return Err(source
                        .error(pos, format!("unterminated heredoc {}", head.name))
                        .with_hint(format!(
                            "end the heredoc with a line holding only {}{}",
                            head.name,
                            if head.chomp {
                                " (leading tabs allowed)"
                            } else {
                                ", with nothing before or after it"
                            }
                        )));
                }
                node.heredocs.push(Heredoc {
                    name: head.name,
                    content,
                    expand: head.expand,
                    chomp: head.chomp,
                    fd: head.fd,
                });
            }
            node.lines.end = next;
        }
        nodes.push(node);
    }
    Ok(Ast {
        source,
        directives,
        nodes,
        warnings,
    })
}

impl Node {
    /// Where byte `offset` of [`Node::text`] is in the file.
    pub fn pos(&self, offset: usize) -> Pos {
        self.map.pos(&self.text, offset)
    }

    /// Where the keyword is in the file.
    pub fn keyword_pos(&self) -> Pos {
        self.pos(self.keyword_offset)
    }

    /// Where the arguments start in the file (just past the keyword if there are none).
    pub fn args_pos(&self) -> Pos {
        self.pos(self.args_offset)
    }

    /// Whether this instruction may introduce heredocs (RUN, COPY and ADD).
    pub fn can_contain_heredocs(&self) -> bool {
        ["RUN", "COPY", "ADD"]
            .iter()
            .any(|k| self.keyword.eq_ignore_ascii_case(k))
    }

    /// Parses this node's arguments as an instruction of their own, for ONBUILD, whose
    /// argument is another instruction. `None` if there are no arguments.
    pub fn sub_node(&self, source: &Source, escape: char) -> Result<Option<Node>, SourceError> {
        Node::from_text(
            self.text.clone(),
            self.map.clone(),
            self.lines,
            self.args_offset,
            escape,
        )
        .map_err(|e| e.into_error(source))
    }

    /// Splits the logical line `text` from byte `from` on into keyword, flags and
    /// arguments; `None` if there is nothing but whitespace.
    fn from_text(
        text: String,
        map: LineMap,
        lines: LineRange,
        from: usize,
        escape: char,
    ) -> Result<Option<Node>, LexError> {
        let keyword_offset = skip_whitespace(&text, from);
        if keyword_offset == text.len() {
            return Ok(None);
        }
        let keyword_end = text[keyword_offset..]
            .find(char::is_whitespace)
            .map_or(text.len(), |i| keyword_offset + i);
        let (flags, args_offset) = match extract_flags(&text, keyword_end, escape) {
            Ok(found) => found,
            Err((offset, message)) => {
                return Err(LexError {
                    pos: map.pos(&text, offset),
                    message,
                });
            }
        };
        Ok(Some(Node {
            keyword: text[keyword_offset..keyword_end].to_owned(),
            flags,
            args: text[args_offset..].trim_end().to_owned(),
            heredocs: Vec::new(),
            lines,
            keyword_offset,
            args_offset,
            text,
            map,
        }))
    }
}

/// An error found while splitting a line, before a [`Source`] is at hand.
struct LexError {
    pos: Pos,
    message: String,
}

impl LexError {
    fn into_error(self, source: &Source) -> SourceError {
        source
            .error(self.pos, self.message)
            .with_hint("close the quote, or escape it to mean a literal quote")
    }
}

/// Maps byte offsets in a logical line back to lines and columns of the file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct LineMap {
    /// One per physical line that contributed text, in order.
    segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Segment {
    /// 1-based line number.
    line: usize,
    /// 0-based column (in characters) where the contributed text starts on that line.
    column: usize,
    /// Byte offset in the logical line where the contributed text starts.
    start: usize,
}

impl LineMap {
    fn push(&mut self, line: usize, column: usize, start: usize) {
        self.segments.push(Segment {
            line,
            column,
            start,
        });
    }

    fn pos(&self, text: &str, offset: usize) -> Pos {
        let offset = offset.min(text.len());
        match self.segments.iter().rev().find(|s| s.start <= offset) {
            Some(segment) => Pos {
                line: segment.line,
                column: segment.column + text[segment.start..offset].chars().count() + 1,
            },
            None => Pos { line: 1, column: 1 },
        }
    }
}

/// Removes a trailing escape character (and whitespace after it) from `line`; the bool
/// says whether there was one, i.e. whether the instruction continues on the next line.
fn strip_continuation(line: &str, escape: char) -> (&str, bool) {
    match line.trim_end_matches([' ', '\t']).strip_suffix(escape) {
        Some(content) => (content, true),
        None => (line, false),
    }
}

fn skip_whitespace(text: &str, from: usize) -> usize {
    text[from..]
        .find(|c: char| !c.is_whitespace())
        .map_or(text.len(), |i| from + i)
}

/// Reads `--flags` from byte `from` of `text`. Returns them and where the arguments start.
///
/// Quotes group (`--label="a b"`) and are removed; the escape character makes the next
/// character literal. A lone `--` ends the flags. Errors are (offset, message).
fn extract_flags(
    text: &str,
    from: usize,
    escape: char,
) -> Result<(Vec<Flag>, usize), (usize, String)> {
    let mut flags = Vec::new();
    let mut pos = skip_whitespace(text, from);
    while text[pos..].starts_with("--") {
        let start = pos;
        let mut word = String::new();
        let mut chars = text[start..].char_indices().map(|(i, c)| (start + i, c));
        pos = text.len();
        while let Some((i, c)) = chars.next() {
            if c.is_whitespace() {
                pos = i;
                break;
            }
            if c == '"' || c == '\'' {
                loop {
                    match chars.next() {
                        None => return Err((i, format!("unterminated {c} quote in flag"))),
                        Some((_, q)) if q == c => break,
                        Some((_, e)) if e == escape && c == '"' => {
                            word.extend(chars.next().map(|(_, n)| n))
                        }
                        Some((_, other)) => word.push(other),
                    }
                }
            } else if c == escape {
                word.extend(chars.next().map(|(_, n)| n));
            } else {
                word.push(c);
            }
        }
        pos = skip_whitespace(text, pos);
        if word == "--" {
            break;
        }
        let body = &word[2..];
        let (name, value) = match body.split_once('=') {
            Some((name, value)) => (name, Some(value.to_owned())),
            None => (body, None),
        };
        flags.push(Flag {
            name: name.to_owned(),
            value,
            offset: start,
        });
    }
    Ok((flags, pos))
}

/// The `<<NAME` part of a heredoc, before its body is read.
#[derive(Debug, PartialEq, Eq)]
struct HeredocHead {
    name: String,
    expand: bool,
    chomp: bool,
    fd: Option<u32>,
}

/// The heredocs that `args` introduces, with each one's byte offset in `args`.
///
/// Words are split as a shell would (quoted `"<<EOF"` is not a heredoc). If the
/// arguments do not split (an unterminated quote), there are none, as in BuildKit: the
/// shell will complain about the quote later.
fn heredoc_heads(args: &str, escape: char) -> Vec<(HeredocHead, usize)> {
    let Ok(words) = split_words(args, escape) else {
        return Vec::new();
    };
    words
        .iter()
        .filter_map(|w| heredoc_head(&w.text, escape).map(|head| (head, w.offset)))
        .collect()
}

/// Reads `[fd]<<[-]NAME` from one raw word; `None` if the word is not a heredoc.
fn heredoc_head(word: &str, escape: char) -> Option<HeredocHead> {
    let digits = word
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(word.len());
    let rest = word[digits..].strip_prefix("<<")?;
    let (chomp, rest) = match rest.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, rest),
    };
    if rest.is_empty() || rest.contains('<') {
        return None;
    }
    // Only quotes turn expansion off, as in BuildKit (`<<\EOF` still expands there).
    let mut name = String::new();
    let mut quoted = false;
    let mut chars = rest.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' | '"' => {
                quoted = true;
                loop {
                    match chars.next()? {
                        q if q == c => break,
                        e if e == escape && c == '"' => name.push(chars.next()?),
                        other => name.push(other),
                    }
                }
            }
            c if c == escape => name.push(chars.next()?),
            c => name.push(c),
        }
    }
    if name.is_empty() {
        return None;
    }
    Some(HeredocHead {
        name,
        expand: !quoted,
        chomp,
        fd: word[..digits].parse().ok(),
    })
}

/// Whether a raw argument word introduces a heredoc (`<<EOF`, `<<-'EOF'`, `3<<EOF`).
///
/// The typed layer uses it to tell which COPY and ADD sources are heredocs: they appear in
/// [`Node::heredocs`] in the same order as their words in the arguments.
pub fn is_heredoc_word(word: &str, escape: char) -> bool {
    heredoc_head(word, escape).is_some()
}

/// Reads the directive block at the top of the file.
fn parse_directives(source: &Source) -> Result<Directives, SourceError> {
    let mut directives = Directives::default();
    let mut seen: Vec<String> = Vec::new();
    for (index, line) in source.lines().iter().enumerate() {
        let Some((name, value, value_offset)) = directive(line) else {
            break;
        };
        let name = name.to_ascii_lowercase();
        if !matches!(name.as_str(), "escape" | "syntax" | "check") {
            // An unknown directive is an ordinary comment, and ends the block.
            break;
        }
        let pos = |offset: usize| Pos {
            line: index + 1,
            column: line[..offset].chars().count() + 1,
        };
        let indent = line.len() - line.trim_start().len();
        if seen.contains(&name) {
            return Err(source
                .error(
                    pos(indent),
                    format!("only one {name} parser directive can be used"),
                )
                .with_hint(format!("remove all but one `# {name}=` line")));
        }
        match name.as_str() {
            "escape" => {
                directives.escape = match value {
                    "\\" => '\\',
                    "`" => '`',
                    _ => {
                        return Err(source
                            .error(
                                pos(value_offset),
                                format!("invalid escape character {value}"),
                            )
                            .with_hint("the escape character is \\ (the default) or `"));
                    }
                }
            }
            "syntax" => directives.syntax = Some(value.to_owned()),
            _ => {
                // BuildKit reads the options up to the first space.
                let options = value.split(' ').next().unwrap_or_default();
                directives.checks = CheckOptions::parse(options).map_err(|e| {
                    source
                        .error(pos(value_offset), format!("# check= directive: {e}"))
                        .with_hint(
                            "write e.g. # check=skip=JSONArgsRecommended,StageNameCasing;error=true",
                        )
                })?;
                directives.check = Some(value.to_owned());
            }
        }
        seen.push(name);
    }
    Ok(directives)
}

/// Matches `# name = value` (BuildKit's `^#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$`
/// after leading whitespace): the name, the value and the value's byte offset in `line`.
pub(super) fn directive(line: &str) -> Option<(&str, &str, usize)> {
    let rest = line.trim_start().strip_prefix('#')?.trim_start();
    let name_len = rest
        .find(|c: char| !c.is_ascii_alphanumeric())
        .unwrap_or(rest.len());
    let name = &rest[..name_len];
    if !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return None;
    }
    let value = rest[name_len..]
        .trim_start()
        .strip_prefix('=')?
        .trim_start();
    let offset = line.len() - value.len();
    let value = value.trim_end();
    (!value.is_empty()).then_some((name, value, offset))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(text: &str) -> Vec<Node> {
        parse("Dockerfile", text).unwrap().nodes
    }

    #[test]
    fn positions_follow_continuations() {
        let text = "FROM a\n  RUN echo one \\\n# comment\n\n    --two \\\n  three\n";
        let ast = parse("Dockerfile", text).unwrap();
        let run = &ast.nodes[1];
        assert_eq!(run.keyword, "RUN");
        assert_eq!(run.lines, LineRange { start: 2, end: 6 });
        assert_eq!(run.text, "RUN echo one     --two   three");
        assert_eq!(run.keyword_pos(), Pos { line: 2, column: 3 });
        assert_eq!(run.args_pos(), Pos { line: 2, column: 7 });
        let two = run.text.find("--two").unwrap();
        assert_eq!(run.pos(two), Pos { line: 5, column: 5 });
        let three = run.text.find("three").unwrap();
        assert_eq!(run.pos(three), Pos { line: 6, column: 3 });
        assert_eq!(ast.warnings.len(), 1);
        assert_eq!(ast.warnings[0].line, 4);
    }

    #[test]
    fn flags_stop_at_first_argument_or_double_dash() {
        let node = &nodes("COPY --from=build --link  \"--chown=a b\" x y\n")[0];
        let names: Vec<_> = node.flags.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["from", "link"]);
        assert_eq!(node.flags[0].value.as_deref(), Some("build"));
        assert_eq!(node.flags[1].value, None);
        assert_eq!(node.flags[1].offset, 18);
        assert_eq!(node.args, "\"--chown=a b\" x y");

        let node = &nodes("RUN --mount=\"type=cache,target=/a b\" -- --version\n")[0];
        assert_eq!(
            node.flags[0].value.as_deref(),
            Some("type=cache,target=/a b")
        );
        assert_eq!(node.args, "--version");
    }

    #[test]
    fn heredoc_heads_from_words() {
        let head = |w: &str| heredoc_head(w, '\\');
        assert_eq!(
            head("<<EOF"),
            Some(HeredocHead {
                name: "EOF".into(),
                expand: true,
                chomp: false,
                fd: None
            })
        );
        assert_eq!(
            head("3<<-'END'"),
            Some(HeredocHead {
                name: "END".into(),
                expand: false,
                chomp: true,
                fd: Some(3)
            })
        );
        assert!(!head("<<\"E\"OF").unwrap().expand);
        assert_eq!(head("<<E\\OF").unwrap().name, "EOF");
        assert_eq!(head("<<"), None);
        assert_eq!(head("<<-"), None);
        assert_eq!(head("<<<EOF"), None);
        assert_eq!(head("cat<<EOF"), None);
        assert_eq!(head("<<''"), None);
        assert_eq!(head("<<'EOF"), None);
    }

    #[test]
    fn quoted_heredoc_words_are_not_heredocs() {
        let node = &nodes("FROM a\nRUN echo \"<<EOF\" '<<X'\n")[1];
        assert!(node.heredocs.is_empty());
    }

    #[test]
    fn directive_lines() {
        assert_eq!(directive("# escape=`"), Some(("escape", "`", 9)));
        assert_eq!(
            directive("  #syntax = a/b:1  "),
            Some(("syntax", "a/b:1", 12))
        );
        assert_eq!(directive("# escape="), None);
        assert_eq!(directive("# 1x=a"), None);
        assert_eq!(directive("# just a comment"), None);
        assert_eq!(directive("FROM a"), None);
    }

    #[test]
    fn directives_end_at_first_other_line() {
        let ast = parse("Dockerfile", "# syntax=x\n\n# escape=`\nFROM a\n").unwrap();
        assert_eq!(ast.directives.syntax.as_deref(), Some("x"));
        assert_eq!(ast.directives.escape, '\\');
        let ast = parse("Dockerfile", "# hello\n# escape=`\nFROM a\n").unwrap();
        assert_eq!(ast.directives.escape, '\\');
    }

    #[test]
    fn sub_node_for_onbuild() {
        let ast = parse("Dockerfile", "ONBUILD RUN --network=none make\n").unwrap();
        let sub = ast.nodes[0].sub_node(&ast.source, '\\').unwrap().unwrap();
        assert_eq!(sub.keyword, "RUN");
        assert_eq!(sub.flags[0].name, "network");
        assert_eq!(sub.args, "make");
        assert_eq!(sub.keyword_pos(), Pos { line: 1, column: 9 });
    }
}
