//! Shell-like word expansion, as Dockerfiles use it (BuildKit's `frontend/dockerfile/shell`).
//!
//! Parsing keeps every word raw: which variables are visible at an instruction depends on
//! the ARG and ENV instructions before it and on the build arguments, which only the
//! lowering step knows. Lowering then calls [`expand`] with a lookup for that scope.
//!
//! The rules, which follow the POSIX shell closely enough for Dockerfiles:
//!
//! - `$NAME` and `${NAME}` expand to the variable's value, or to nothing if it is unset.
//! - `${NAME:-word}`: `word` if NAME is unset or empty; `${NAME-word}`: only if unset.
//! - `${NAME:+word}`: `word` if NAME is set and not empty; `${NAME+word}`: if set.
//! - `${NAME:?message}` / `${NAME?message}`: an error if NAME is unset (or empty).
//! - `word` is itself expanded and may be quoted.
//! - `'single quotes'` keep everything literal; `"double quotes"` still expand `$`.
//!   Both kinds of quote are removed from the result.
//! - The escape character (`\`, or `` ` `` after `# escape=``) makes the next character
//!   literal; inside double quotes only before `"`, `$` and itself.
//! - A `$` not followed by a name or `{` is a literal `$`.
//!
//! - `${NAME#pat}` / `${NAME##pat}` remove the shortest / longest prefix matching `pat`,
//!   `${NAME%pat}` / `${NAME%%pat}` the shortest / longest suffix; `${NAME/pat/repl}`
//!   replaces the first (longest) match, `${NAME//pat/repl}` every match. In `pat`, `*`
//!   is any string, `?` one character, `\*`, `\?` and `\\` are literal (BuildKit's
//!   patterns: no bracket expressions). `${NAME:#…}` and the like are errors.
//!
//! An expanded word is at most [`MAX_WORD`] bytes: `ARG A=$A$A` repeated doubles a
//! value each time, and forty of them would ask for a terabyte. Going beyond it is an
//! error naming the variable, before the memory is taken.

/// The most bytes one expanded word may hold (1 MiB; Linux takes at most 128 KiB for
/// one argument or environment string of a process anyway).
pub const MAX_WORD: usize = 1 << 20;

/// Why a word could not be expanded or split. Offsets are byte offsets into the word.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExpandError {
    /// `${` without its closing `}`.
    #[error("unterminated ${{...}}: missing '}}'")]
    UnterminatedBrace {
        /// Where the `$` is.
        offset: usize,
    },
    /// A quote without its closing quote.
    #[error("unterminated {quote} quote")]
    UnterminatedQuote {
        /// `'` or `"`.
        quote: char,
        /// Where the opening quote is.
        offset: usize,
    },
    /// `${}` or an operator we do not know, such as `${A%b}`.
    #[error("bad substitution {text}")]
    BadSubstitution {
        /// The substitution as written (up to the closing brace if there is one).
        text: String,
        /// Where the `$` is.
        offset: usize,
    },
    /// Substituting `name` would make the word longer than [`MAX_WORD`].
    #[error(
        "expanding ${name} makes the word longer than {limit} bytes ({size} or more), the limit for one expanded word"
    )]
    TooLong {
        /// The variable whose value did not fit.
        name: String,
        /// Bytes the word would have held at least.
        size: usize,
        /// [`MAX_WORD`].
        limit: usize,
        /// Where the `$` is.
        offset: usize,
    },
    /// `${NAME?message}` with NAME unset (or, for `:?`, empty).
    #[error("{name}: {message}")]
    Unset {
        /// The variable.
        name: String,
        /// The word after `?`, or a default message.
        message: String,
        /// Where the `$` is.
        offset: usize,
    },
}

impl ExpandError {
    /// Byte offset in the word where the problem starts.
    pub fn offset(&self) -> usize {
        match self {
            ExpandError::UnterminatedBrace { offset }
            | ExpandError::UnterminatedQuote { offset, .. }
            | ExpandError::BadSubstitution { offset, .. }
            | ExpandError::TooLong { offset, .. }
            | ExpandError::Unset { offset, .. } => *offset,
        }
    }

    /// What the author can do about it.
    pub fn hint(&self) -> &'static str {
        match self {
            ExpandError::UnterminatedBrace { .. } => "close the substitution with '}'",
            ExpandError::UnterminatedQuote { .. } => {
                "close the quote, or escape it to mean a literal quote"
            }
            ExpandError::BadSubstitution { .. } => {
                "supported forms are $NAME, ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:+alt}, ${NAME+alt}, ${NAME:?message}, ${NAME#pat}, ${NAME##pat}, ${NAME%pat}, ${NAME%%pat}, ${NAME/pat/repl} and ${NAME//pat/repl}"
            }
            ExpandError::Unset { .. } => "set the variable with ARG, ENV or a build argument",
            ExpandError::TooLong { .. } => {
                "keep large values in files (COPY them, or RUN --mount=type=secret) instead of variables"
            }
        }
    }
}

/// Expands `word`: substitutes variables through `lookup`, removes quotes and escapes.
///
/// `lookup` returns `None` for an unset variable (which expands to nothing, as in a shell).
/// `escape` is the Dockerfile's escape character (`\` unless `# escape=` says otherwise).
///
/// ```
/// use berth_build::frontend::dockerfile::expand::expand;
///
/// let lookup = |name: &str| (name == "V").then(|| "1.2".to_string());
/// assert_eq!(expand("app-${V}-'$V'", lookup, '\\').unwrap(), "app-1.2-$V");
/// assert_eq!(expand("${MISSING:-none}", lookup, '\\').unwrap(), "none");
/// ```
pub fn expand(
    word: &str,
    lookup: impl Fn(&str) -> Option<String>,
    escape: char,
) -> Result<String, ExpandError> {
    let mut expander = Expander::new(word, escape, lookup, true);
    expander.word(None, false)
}

/// The names of the variables `word` refers to, in order of first appearance, including
/// those only reached through an operator (`B` in `${A:-$B}`).
///
/// Lowering uses this to say *why* a cache key changed ("ARG VERSION changed"), and to
/// know which build arguments an instruction depends on.
///
/// ```
/// use berth_build::frontend::dockerfile::expand::referenced_vars;
///
/// let names = referenced_vars("$A-${B:-$C}-'$D'-\\$E", '\\').unwrap();
/// assert_eq!(names, ["A", "B", "C"]);
/// ```
pub fn referenced_vars(word: &str, escape: char) -> Result<Vec<String>, ExpandError> {
    let mut expander = Expander::new(word, escape, |_: &str| None, false);
    expander.word(None, false)?;
    Ok(expander.referenced)
}

/// A raw word of an instruction's arguments, as [`split_words`] returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Word {
    /// The word as written: quotes and escapes are kept, for [`expand`] to process.
    pub text: String,
    /// Byte offset of the word's first character in the split text.
    pub offset: usize,
}

/// Splits `text` at whitespace that is neither quoted nor escaped, keeping each word raw.
///
/// This is how ENV, ARG and LABEL find their `key=value` pairs: `k="a b" k2=c` is two
/// words, `k="a b"` and `k2=c`. A trailing lone escape character is dropped; an
/// unterminated quote is an error.
///
/// ```
/// use berth_build::frontend::dockerfile::expand::split_words;
///
/// let words = split_words(r#"a="b c" d\ e"#, '\\').unwrap();
/// let texts: Vec<_> = words.iter().map(|w| w.text.as_str()).collect();
/// assert_eq!(texts, [r#"a="b c""#, r"d\ e"]);
/// assert_eq!(words[1].offset, 8);
/// ```
pub fn split_words(text: &str, escape: char) -> Result<Vec<Word>, ExpandError> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut start = None;
    let mut chars = text.char_indices();
    while let Some((i, c)) = chars.next() {
        if c.is_whitespace() {
            if let Some(offset) = start.take() {
                words.push(Word {
                    text: std::mem::take(&mut current),
                    offset,
                });
            }
            continue;
        }
        start.get_or_insert(i);
        if c == escape {
            if let Some((_, next)) = chars.next() {
                current.push(c);
                current.push(next);
            }
            continue;
        }
        current.push(c);
        if c == '\'' || c == '"' {
            loop {
                match chars.next() {
                    None => {
                        return Err(ExpandError::UnterminatedQuote {
                            quote: c,
                            offset: i,
                        });
                    }
                    Some((_, q)) if q == c => {
                        current.push(q);
                        break;
                    }
                    // Single quotes keep everything literal, even the escape character.
                    Some((_, e)) if e == escape && c == '"' => {
                        current.push(e);
                        if let Some((_, next)) = chars.next() {
                            current.push(next);
                        }
                    }
                    Some((_, other)) => current.push(other),
                }
            }
        }
    }
    if let Some(offset) = start {
        words.push(Word {
            text: current,
            offset,
        });
    }
    Ok(words)
}

/// Append `value` (what `$name` at `offset` gave) to `out`, unless the word would then
/// be longer than [`MAX_WORD`].
fn push_bounded(
    out: &mut String,
    value: &str,
    name: &str,
    offset: usize,
) -> Result<(), ExpandError> {
    push_within(out, value, name, offset, MAX_WORD)
}

/// Append `value` (what `$name` at `offset` gave) to `out`, unless `out` would then be
/// longer than `limit` bytes.
pub(crate) fn push_within(
    out: &mut String,
    value: &str,
    name: &str,
    offset: usize,
    limit: usize,
) -> Result<(), ExpandError> {
    let size = out.len() + value.len();
    if size > limit {
        return Err(ExpandError::TooLong {
            name: name.to_owned(),
            size,
            limit,
            offset,
        });
    }
    out.push_str(value);
    Ok(())
}

/// A cursor over one word doing the expansion; also records which names it looked up.
struct Expander<'a, F> {
    src: &'a str,
    pos: usize,
    escape: char,
    lookup: F,
    /// Whether `${A?msg}` with A unset is an error (off when only collecting names).
    check_unset: bool,
    referenced: Vec<String>,
}

impl<'a, F: Fn(&str) -> Option<String>> Expander<'a, F> {
    fn new(src: &'a str, escape: char, lookup: F, check_unset: bool) -> Self {
        Expander {
            src,
            pos: 0,
            escape,
            lookup,
            check_unset,
            referenced: Vec::new(),
        }
    }

    fn peek(&self) -> Option<char> {
        self.src[self.pos..].chars().next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    fn lookup(&mut self, name: &str) -> Option<String> {
        if !self.referenced.iter().any(|n| n == name) {
            self.referenced.push(name.to_owned());
        }
        (self.lookup)(name)
    }

    /// Expands up to the end, or up to (not including) an unquoted `stop` (`}` inside
    /// `${...}`). With `raw_escapes` (a pattern operand) an escape is kept with the
    /// character it escapes, for the pattern to read.
    fn word(&mut self, stop: Option<char>, raw_escapes: bool) -> Result<String, ExpandError> {
        let mut out = String::new();
        while let Some(c) = self.peek() {
            if Some(c) == stop {
                break;
            }
            let start = self.pos;
            self.bump();
            match c {
                '\'' => self.single_quoted(start, &mut out)?,
                '"' => self.double_quoted(start, &mut out)?,
                '$' => self.dollar(start, &mut out)?,
                c if c == self.escape && raw_escapes => {
                    out.push('\\');
                    out.extend(self.bump());
                }
                c if c == self.escape => out.extend(self.bump()),
                c => out.push(c),
            }
        }
        Ok(out)
    }

    fn single_quoted(&mut self, start: usize, out: &mut String) -> Result<(), ExpandError> {
        loop {
            match self.bump() {
                None => {
                    return Err(ExpandError::UnterminatedQuote {
                        quote: '\'',
                        offset: start,
                    });
                }
                Some('\'') => return Ok(()),
                Some(c) => out.push(c),
            }
        }
    }

    fn double_quoted(&mut self, start: usize, out: &mut String) -> Result<(), ExpandError> {
        loop {
            let at = self.pos;
            match self.bump() {
                None => {
                    return Err(ExpandError::UnterminatedQuote {
                        quote: '"',
                        offset: start,
                    });
                }
                Some('"') => return Ok(()),
                Some('$') => self.dollar(at, out)?,
                Some(c) if c == self.escape => match self.peek() {
                    Some(next) if next == '"' || next == '$' || next == self.escape => {
                        self.bump();
                        out.push(next);
                    }
                    // Elsewhere inside double quotes the escape character is literal.
                    _ => out.push(c),
                },
                Some(c) => out.push(c),
            }
        }
    }

    /// After a `$` at `start`.
    fn dollar(&mut self, start: usize, out: &mut String) -> Result<(), ExpandError> {
        match self.peek() {
            Some('{') => {
                self.bump();
                self.braced(start, out)
            }
            Some(c) if c.is_alphanumeric() || c == '_' => {
                let name = self.name();
                let value = self.lookup(&name).unwrap_or_default();
                push_bounded(out, &value, &name, start)
            }
            _ => {
                out.push('$');
                Ok(())
            }
        }
    }

    /// A name: letters, digits and `_`; or, as in a shell, only digits if it starts with one.
    fn name(&mut self) -> String {
        let digits_only = self.peek().is_some_and(|c| c.is_ascii_digit());
        let mut name = String::new();
        while let Some(c) = self.peek() {
            let ok = if digits_only {
                c.is_ascii_digit()
            } else {
                c.is_alphanumeric() || c == '_'
            };
            if !ok {
                break;
            }
            self.bump();
            name.push(c);
        }
        name
    }

    /// After `${`, with the `$` at `start`.
    fn braced(&mut self, start: usize, out: &mut String) -> Result<(), ExpandError> {
        let name = self.name();
        if name.is_empty() {
            return Err(self.bad_substitution(start));
        }
        let (colon, op) = match self.bump() {
            None => return Err(ExpandError::UnterminatedBrace { offset: start }),
            Some('}') => {
                let value = self.lookup(&name).unwrap_or_default();
                return push_bounded(out, &value, &name, start);
            }
            Some(':') => match self.bump() {
                Some(op @ ('-' | '+' | '?')) => (true, op),
                _ => return Err(self.bad_substitution(start)),
            },
            Some(op @ ('-' | '+' | '?')) => (false, op),
            Some(op @ ('#' | '%' | '/')) => return self.pattern_op(start, &name, op, out),
            Some(_) => return Err(self.bad_substitution(start)),
        };
        let value = self.lookup(&name);
        // The operand is always expanded, even when unused, so that `referenced_vars`
        // sees every name a word mentions.
        let operand = self.word(Some('}'), false)?;
        if self.bump() != Some('}') {
            return Err(ExpandError::UnterminatedBrace { offset: start });
        }
        let present = match &value {
            Some(v) => !colon || !v.is_empty(),
            None => false,
        };
        match op {
            '-' if present => push_bounded(out, &value.unwrap_or_default(), &name, start)?,
            '-' => push_bounded(out, &operand, &name, start)?,
            '+' if present => push_bounded(out, &operand, &name, start)?,
            '+' => {}
            _ if present => push_bounded(out, &value.unwrap_or_default(), &name, start)?,
            _ if self.check_unset => {
                // BuildKit's messages.
                let message = if !operand.is_empty() {
                    operand
                } else if value.is_some() {
                    "is not allowed to be empty".to_owned()
                } else {
                    "is not allowed to be unset".to_owned()
                };
                return Err(ExpandError::Unset {
                    name,
                    message,
                    offset: start,
                });
            }
            _ => {}
        }
        Ok(())
    }

    /// `${NAME#pat}`, `${NAME%pat}` (doubled: longest) or `${NAME/pat/repl}` (`//`:
    /// every match), after the operator `op`; the `$` is at `start`.
    fn pattern_op(
        &mut self,
        start: usize,
        name: &str,
        op: char,
        out: &mut String,
    ) -> Result<(), ExpandError> {
        let value: Vec<char> = self.lookup(name).unwrap_or_default().chars().collect();
        let doubled = self.peek() == Some(op);
        if doubled {
            self.bump();
        }
        let stop = if op == '/' { '/' } else { '}' };
        let pattern = self.word(Some(stop), true)?;
        if self.bump() != Some(stop) {
            return Err(ExpandError::UnterminatedBrace { offset: start });
        }
        let replacement = if op == '/' {
            let r = self.word(Some('}'), true)?;
            if self.bump() != Some('}') {
                return Err(ExpandError::UnterminatedBrace { offset: start });
            }
            // As BuildKit: escapes of `}` and `/` are dropped from the replacement
            // (which is not a pattern); others stay.
            r.replace("\\}", "}").replace("\\/", "/")
        } else {
            String::new()
        };
        let pat = Pattern::parse(&pattern);
        let result: String = match op {
            '#' => match pat.match_at(&value, 0, doubled) {
                Some(end) => value[end..].iter().collect(),
                None => value.iter().collect(),
            },
            '%' => {
                // The shortest (longest) suffix is the shortest (longest) prefix of the
                // reversed value matching the reversed pattern.
                let rev_value: Vec<char> = value.iter().rev().copied().collect();
                let rev_pat = Pattern(pat.0.iter().rev().cloned().collect());
                match rev_pat.match_at(&rev_value, 0, doubled) {
                    Some(end) => value[..value.len() - end].iter().collect(),
                    None => value.iter().collect(),
                }
            }
            _ => pat.replace(&value, &replacement, doubled),
        };
        push_bounded(out, &result, name, start)
    }

    /// A bad substitution starting at `start`, showing the text up to its `}`.
    fn bad_substitution(&self, start: usize) -> ExpandError {
        match self.src[start..].find('}') {
            Some(end) => ExpandError::BadSubstitution {
                text: self.src[start..=start + end].to_owned(),
                offset: start,
            },
            None => ExpandError::UnterminatedBrace { offset: start },
        }
    }
}

/// One element of a `${NAME#pattern}` pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PatternPart {
    /// `*`: any string.
    Any,
    /// `?`: one character.
    One,
    /// A literal character.
    Char(char),
}

/// A shell pattern of a substitution, as BuildKit reads it: `*`, `?`, literals, and
/// `\` making `*`, `?` or `\` literal (an escaped `}` or `/` is that character).
#[derive(Debug, Clone)]
struct Pattern(Vec<PatternPart>);

impl Pattern {
    fn parse(raw: &str) -> Pattern {
        let mut parts = Vec::new();
        let mut chars = raw.chars();
        while let Some(c) = chars.next() {
            parts.push(match c {
                '*' => PatternPart::Any,
                '?' => PatternPart::One,
                '\\' => PatternPart::Char(chars.next().unwrap_or('\\')),
                c => PatternPart::Char(c),
            });
        }
        Pattern(parts)
    }

    /// Where a match of the pattern starting at `from` in `value` ends, if there is one:
    /// the stars take as much as they can (`greedy`) or as little, the first star first,
    /// as Go's regexp does with `.*` and `.*?`.
    fn match_at(&self, value: &[char], from: usize, greedy: bool) -> Option<usize> {
        // Positions (part, at) known not to lead to a match: the search stays
        // polynomial however many stars the pattern has.
        let mut dead = std::collections::HashSet::new();
        self.match_from(0, from, value, greedy, &mut dead)
    }

    fn match_from(
        &self,
        part: usize,
        at: usize,
        value: &[char],
        greedy: bool,
        dead: &mut std::collections::HashSet<(usize, usize)>,
    ) -> Option<usize> {
        if dead.contains(&(part, at)) {
            return None;
        }
        let found = match self.0.get(part) {
            None => Some(at),
            Some(PatternPart::Any) => {
                let ends = at..=value.len();
                if greedy {
                    ends.rev()
                        .find_map(|e| self.match_from(part + 1, e, value, greedy, dead))
                } else {
                    ends.into_iter()
                        .find_map(|e| self.match_from(part + 1, e, value, greedy, dead))
                }
            }
            Some(PatternPart::One) if at < value.len() => {
                self.match_from(part + 1, at + 1, value, greedy, dead)
            }
            Some(PatternPart::Char(c)) if value.get(at) == Some(c) => {
                self.match_from(part + 1, at + 1, value, greedy, dead)
            }
            Some(_) => None,
        };
        if found.is_none() {
            dead.insert((part, at));
        }
        found
    }

    /// `value` with its leftmost match (every match if `all`) replaced by
    /// `replacement`; stars are greedy. As Go's `ReplaceAllString`, an empty match
    /// right after a match is skipped.
    fn replace(&self, value: &[char], replacement: &str, all: bool) -> String {
        let mut out = String::new();
        let (mut copied, mut search, mut last_end) = (0, 0, None);
        while search <= value.len() {
            let Some((s, e)) =
                (search..=value.len()).find_map(|s| self.match_at(value, s, true).map(|e| (s, e)))
            else {
                break;
            };
            if e == s && last_end == Some(s) {
                search = s + 1;
                continue;
            }
            out.extend(&value[copied..s]);
            out.push_str(replacement);
            copied = e;
            last_end = Some(e);
            search = if e > s { e } else { s + 1 };
            if !all {
                break;
            }
        }
        out.extend(&value[copied..]);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "SET" => Some("value".into()),
            "EMPTY" => Some(String::new()),
            "SPACED" => Some("a b".into()),
            "1" => Some("first".into()),
            _ => None,
        }
    }

    fn x(word: &str) -> String {
        expand(word, env, '\\').unwrap()
    }

    #[test]
    fn plain_and_braced_names() {
        assert_eq!(x("$SET"), "value");
        assert_eq!(x("${SET}"), "value");
        assert_eq!(x("pre-${SET}-post"), "pre-value-post");
        assert_eq!(x("$SET.txt"), "value.txt");
        assert_eq!(x("$SET_x"), "", "the name runs over letters, digits and _");
        assert_eq!(x("${SET}_x"), "value_x");
        assert_eq!(x("$1"), "first");
        assert_eq!(x("$12"), "", "digit names are all digits");
    }

    #[test]
    fn missing_vars_expand_to_nothing() {
        assert_eq!(x("$UNSET"), "");
        assert_eq!(x("a${UNSET}b"), "ab");
        assert_eq!(x("$EMPTY"), "");
    }

    #[test]
    fn lone_dollar_is_literal() {
        assert_eq!(x("$"), "$");
        assert_eq!(x("a$ b"), "a$ b");
        assert_eq!(x("$-x"), "$-x");
        assert_eq!(x("cost: 5$"), "cost: 5$");
    }

    #[test]
    fn default_operators() {
        assert_eq!(x("${SET:-d}"), "value");
        assert_eq!(x("${EMPTY:-d}"), "d");
        assert_eq!(x("${UNSET:-d}"), "d");
        assert_eq!(x("${SET-d}"), "value");
        assert_eq!(x("${EMPTY-d}"), "", "without ':' only unset counts");
        assert_eq!(x("${UNSET-d}"), "d");
        assert_eq!(x("${UNSET:-}"), "");
    }

    #[test]
    fn alternative_operators() {
        assert_eq!(x("${SET:+alt}"), "alt");
        assert_eq!(x("${EMPTY:+alt}"), "");
        assert_eq!(x("${UNSET:+alt}"), "");
        assert_eq!(x("${SET+alt}"), "alt");
        assert_eq!(x("${EMPTY+alt}"), "alt", "without ':' empty counts as set");
        assert_eq!(x("${UNSET+alt}"), "");
    }

    #[test]
    fn error_operators() {
        assert_eq!(x("${SET:?boom}"), "value");
        assert_eq!(x("${EMPTY?boom}"), "");
        let err = expand("x${EMPTY:?must be set}", env, '\\').unwrap_err();
        assert_eq!(
            err,
            ExpandError::Unset {
                name: "EMPTY".into(),
                message: "must be set".into(),
                offset: 1
            }
        );
        assert_eq!(err.to_string(), "EMPTY: must be set");
        let err = expand("${UNSET?}", env, '\\').unwrap_err();
        assert_eq!(err.to_string(), "UNSET: is not allowed to be unset");
        let err = expand("${EMPTY:?}", env, '\\').unwrap_err();
        assert_eq!(err.to_string(), "EMPTY: is not allowed to be empty");
    }

    #[test]
    fn operands_are_expanded_and_may_be_quoted() {
        assert_eq!(x("${UNSET:-$SET}"), "value");
        assert_eq!(x("${UNSET:-${EMPTY:-deep}}"), "deep");
        assert_eq!(x("${UNSET:-\"a } b\"}"), "a } b");
        assert_eq!(x("${UNSET:-'$SET'}"), "$SET");
        assert_eq!(x("${UNSET:-a\\}b}"), "a}b");
        assert_eq!(x("${SET:+[$SET]}"), "[value]");
    }

    #[test]
    fn quotes() {
        assert_eq!(x("'$SET'"), "$SET", "single quotes suppress expansion");
        assert_eq!(x("\"$SET\""), "value", "double quotes do not");
        assert_eq!(x("\"a  b\""), "a  b");
        assert_eq!(x("'a'\"b\"c"), "abc");
        assert_eq!(x("\"it's\""), "it's");
        assert_eq!(x("'say \"hi\"'"), "say \"hi\"");
        assert_eq!(x("\"$SPACED\""), "a b");
        assert_eq!(x("''"), "");
        assert_eq!(x("'\\n'"), "\\n", "nothing is special in single quotes");
    }

    #[test]
    fn escapes() {
        assert_eq!(x("\\$SET"), "$SET");
        assert_eq!(x("\\${SET}"), "${SET}");
        assert_eq!(x("a\\ b"), "a b");
        assert_eq!(x("\\\\"), "\\");
        assert_eq!(x("\\'$SET\\'"), "'value'");
        assert_eq!(
            x("trailing\\"),
            "trailing",
            "a lone escape at the end is dropped"
        );
        // Inside double quotes only ", $ and the escape itself are escapable.
        assert_eq!(x("\"\\$SET\""), "$SET");
        assert_eq!(x("\"\\\"\""), "\"");
        assert_eq!(x("\"C:\\dir\""), "C:\\dir");
    }

    #[test]
    fn backtick_escape() {
        let e = |w: &str| expand(w, env, '`').unwrap();
        assert_eq!(e("`$SET"), "$SET");
        assert_eq!(e("C:\\Windows\\$SET"), "C:\\Windows\\value");
        assert_eq!(e("\"a`\"b\""), "a\"b");
    }

    #[test]
    fn unterminated_brace() {
        let err = expand("abc${SET", env, '\\').unwrap_err();
        assert_eq!(err, ExpandError::UnterminatedBrace { offset: 3 });
        assert_eq!(err.to_string(), "unterminated ${...}: missing '}'");
        assert_eq!(
            expand("${SET:-default", env, '\\').unwrap_err(),
            ExpandError::UnterminatedBrace { offset: 0 }
        );
        assert_eq!(
            expand("${", env, '\\').unwrap_err(),
            ExpandError::UnterminatedBrace { offset: 0 }
        );
    }

    /// The Dockerfile reference's examples, and BuildKit's pattern rules.
    #[test]
    fn pattern_operators() {
        let env = |name: &str| match name {
            "S" => Some("foobarbaz".to_string()),
            "P" => Some("/usr/local/bin/app.tar.gz".to_string()),
            "T" => Some("a*b".to_string()),
            "R" => Some("aaa".to_string()),
            _ => None,
        };
        let x = |w: &str| expand(w, env, '\\').unwrap();
        assert_eq!(x("${S#foo}"), "barbaz");
        assert_eq!(x("${S#*a}"), "rbaz");
        assert_eq!(x("${S##*a}"), "z");
        assert_eq!(x("${S#nope}"), "foobarbaz");
        assert_eq!(x("${S%baz}"), "foobar");
        assert_eq!(x("${S%a*}"), "foobarb");
        assert_eq!(x("${S%%a*}"), "foob");
        assert_eq!(x("${P##*/}"), "app.tar.gz");
        assert_eq!(x("${P%/*}"), "/usr/local/bin");
        assert_eq!(x("${P%%.*}"), "/usr/local/bin/app");
        assert_eq!(x("${P#/usr/???}"), "al/bin/app.tar.gz");
        assert_eq!(x("${S/a/_}"), "foob_rbaz");
        assert_eq!(x("${S//a/_}"), "foob_rb_z");
        assert_eq!(x("${S/b*a/X}"), "fooXz", "stars in replacements are greedy");
        assert_eq!(x("${S//o/}"), "fbarbaz", "an empty replacement removes");
        assert_eq!(x("${T#a\\*}"), "b", "an escaped star is literal");
        assert_eq!(x("${T/\\*/-}"), "a-b");
        assert_eq!(x("${R//a*/b}"), "b");
        assert_eq!(x("${UNSET#x}-${UNSET/a/b}"), "-");
        assert_eq!(x("${S/o/${R}}"), "faaaobarbaz", "operands are expanded");
        assert_eq!(
            referenced_vars("${S/$R/${T}}", '\\').unwrap(),
            ["S", "R", "T"]
        );
        assert!(expand("${S/a}", env, '\\').is_err(), "missing second /");
        assert!(
            expand("${S//a}", env, '\\').is_err(),
            "as BuildKit, // needs its second /"
        );
    }

    #[test]
    fn bad_substitutions() {
        for (word, text) in [
            ("${}", "${}"),
            ("${SET:#v}", "${SET:#v}"),
            ("${SET:3}", "${SET:3}"),
            ("x${-a}", "${-a}"),
        ] {
            match expand(word, env, '\\') {
                Err(ExpandError::BadSubstitution { text: got, .. }) => assert_eq!(got, text),
                other => panic!("{word}: {other:?}"),
            }
        }
    }

    #[test]
    fn unterminated_quotes() {
        assert_eq!(
            expand("a'b", env, '\\').unwrap_err(),
            ExpandError::UnterminatedQuote {
                quote: '\'',
                offset: 1
            }
        );
        assert_eq!(
            expand("\"ab", env, '\\').unwrap_err().to_string(),
            "unterminated \" quote"
        );
    }

    #[test]
    fn referenced_vars_lists_every_name_once() {
        assert_eq!(
            referenced_vars("$A ${B} ${C:-$D} ${E:+${F}} $A '$G' \"$H\" \\$I", '\\').unwrap(),
            ["A", "B", "C", "D", "E", "F", "H"]
        );
        assert!(referenced_vars("${A?}", '\\').is_ok(), "no unset errors");
        assert!(referenced_vars("plain", '\\').unwrap().is_empty());
        assert!(referenced_vars("${A", '\\').is_err());
    }

    #[test]
    fn split_words_keeps_quotes_and_escapes() {
        let texts = |s: &str| -> Vec<String> {
            split_words(s, '\\')
                .unwrap()
                .into_iter()
                .map(|w| w.text)
                .collect()
        };
        assert_eq!(texts("  a  b\tc "), ["a", "b", "c"]);
        assert_eq!(texts(r#"k="a b" k2='c d'"#), [r#"k="a b""#, "k2='c d'"]);
        assert_eq!(texts(r"a\ b c"), [r"a\ b", "c"]);
        assert_eq!(texts(r#"k="say \"hi\"" x"#), [r#"k="say \"hi\"""#, "x"]);
        assert_eq!(texts(r"k='\' x"), [r"k='\'", "x"]);
        assert_eq!(texts("a b\\"), ["a", "b"]);
        assert_eq!(texts(r#""""#), [r#""""#]);
        assert!(texts("").is_empty());
        let words = split_words("a  bb", '\\').unwrap();
        assert_eq!(words[1].offset, 3);
        assert_eq!(
            split_words("k=\"open", '\\').unwrap_err(),
            ExpandError::UnterminatedQuote {
                quote: '"',
                offset: 2
            }
        );
    }

    #[test]
    fn expansion_is_bounded() {
        // `ARG A=$A$A` forty times: the doubling stops with an error naming A once a
        // word would pass MAX_WORD, long before it could take the memory.
        let mut value = "x".to_string();
        let mut err = None;
        for _ in 0..40 {
            let v = value.clone();
            match expand("$A${A}", |n: &str| (n == "A").then(|| v.clone()), '\\') {
                Ok(next) => value = next,
                Err(e) => {
                    err = Some(e);
                    break;
                }
            }
        }
        assert!(value.len() <= MAX_WORD);
        let err = err.expect("the doubling was stopped");
        assert!(
            matches!(&err, ExpandError::TooLong { name, .. } if name == "A"),
            "{err:?}"
        );
        assert_eq!(err.offset(), 2, "the substitution that did not fit");
        assert!(err.to_string().contains("$A"), "{err}");
        // Operands are bounded too, and a word just under the limit is fine.
        let big = "y".repeat(MAX_WORD);
        let look = |n: &str| (n == "BIG").then(|| big.clone());
        assert!(expand("${UNSET:-$BIG}", look, '\\').is_ok());
        assert!(matches!(
            expand("a${UNSET:-$BIG}", look, '\\'),
            Err(ExpandError::TooLong { .. })
        ));
    }
}
