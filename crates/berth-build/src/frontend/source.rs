//! Source text, positions in it, and the errors that point into it.
//!
//! A build definition is written by a person, so when it is wrong the answer must say
//! where and what to do, the way BuildKit's `parser/errors.go` does: `Dockerfile:12:5:
//! message`, the offending line with a caret under the column, then a hint. [`Source`]
//! keeps the file's lines so that any later stage (typed instructions today, lowering
//! tomorrow) can build such an error from a [`Pos`] without going back to the file.

use std::fmt;

/// A named text split into lines: what errors point into.
///
/// A byte-order mark at the start is dropped and lines may end in `\n` or `\r\n`; after
/// [`Source::new`] nothing else needs to care about either.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    name: String,
    lines: Vec<String>,
}

impl Source {
    /// Splits `text` into lines, naming it `name` in errors (e.g. `Dockerfile`).
    pub fn new(name: impl Into<String>, text: &str) -> Source {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let lines = text
            .lines()
            .map(|line| line.strip_suffix('\r').unwrap_or(line).to_owned())
            .collect();
        Source {
            name: name.into(),
            lines,
        }
    }

    /// The name errors show, e.g. `Dockerfile` or `docker/Dockerfile.dev`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// All lines, without their line endings; line `n` is at index `n - 1`.
    pub fn lines(&self) -> &[String] {
        &self.lines
    }

    /// Line `number` (1-based), if the text has it.
    pub fn line(&self, number: usize) -> Option<&str> {
        number
            .checked_sub(1)
            .and_then(|i| self.lines.get(i))
            .map(String::as_str)
    }

    /// An error at `pos`, showing the line `pos` is on.
    pub fn error(&self, pos: Pos, message: impl Into<String>) -> SourceError {
        SourceError {
            file: self.name.clone(),
            line: pos.line,
            column: pos.column,
            message: message.into(),
            hint: None,
            source_line: self.line(pos.line).map(str::to_owned),
            stack: None,
        }
    }
}

/// A position in a [`Source`]: 1-based line and 1-based column (in characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pos {
    /// Line number, from 1.
    pub line: usize,
    /// Column in characters, from 1.
    pub column: usize,
}

/// The lines an instruction spans, both ends included (1-based).
///
/// An instruction continued over several lines, or followed by heredoc bodies, spans
/// all of them; progress output and errors use the range to point back at the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct LineRange {
    /// First line.
    pub start: usize,
    /// Last line (equal to `start` for a one-line instruction).
    pub end: usize,
}

impl fmt::Display for LineRange {
    /// `3` for one line, `3-5` for several.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.start == self.end {
            write!(f, "{}", self.start)
        } else {
            write!(f, "{}-{}", self.start, self.end)
        }
    }
}

/// Something accepted but worth telling the author about (an empty continuation line, a
/// deprecated instruction), like BuildKit's build checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// The BuildKit build check it corresponds to (`MaintainerDeprecated`), which the
    /// `# check=skip=` directive names.
    pub rule: &'static str,
    /// The line it is about.
    pub line: usize,
    /// What is wrong and what to write instead.
    pub message: String,
}

/// An error in a source file: where, what, and what to do about it.
///
/// Displays as
///
/// ```text
/// Dockerfile:3:1: unknown instruction COPPY
///  3 | COPPY . /app
///    | ^
/// hint: did you mean COPY?
/// ```
///
/// The first line alone is stable and is what tests compare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceError {
    /// File name as given to [`Source::new`].
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// What is wrong, without position.
    pub message: String,
    /// What to do about it, if we can say.
    pub hint: Option<String>,
    /// The text of `line`, shown with a caret under `column`.
    pub source_line: Option<String>,
    /// Where it was reached from, innermost first (Earthfile targets with their ARG
    /// values, shown as `in +t --A=1`); boxed, as most errors have none and every
    /// `Result` of the crate carries this type.
    pub stack: Option<Box<Stack>>,
}

/// The frames of a [`SourceError::stack`], innermost first.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Stack(pub Vec<String>);

impl SourceError {
    /// Adds a hint (shown as `hint: ...` after the source line).
    pub fn with_hint(mut self, hint: impl Into<String>) -> SourceError {
        self.hint = Some(hint.into());
        self
    }

    /// Adds the next outer frame of [`Self::stack`].
    pub fn push_frame(&mut self, frame: String) {
        self.stack.get_or_insert_with(Box::default).0.push(frame);
    }

    /// Where the error is.
    pub fn pos(&self) -> Pos {
        Pos {
            line: self.line,
            column: self.column,
        }
    }
}

impl fmt::Display for SourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.column, self.message
        )?;
        if let Some(text) = &self.source_line {
            let number = self.line.to_string();
            let gutter = " ".repeat(number.len());
            // Keep tabs in the padding so the caret lines up however tabs are shown.
            let pad: String = text
                .chars()
                .chain(std::iter::repeat(' '))
                .take(self.column.saturating_sub(1))
                .map(|c| if c == '\t' { '\t' } else { ' ' })
                .collect();
            write!(f, "\n {number} | {text}\n {gutter} | {pad}^")?;
        }
        if let Some(hint) = &self.hint {
            write!(f, "\nhint: {hint}")?;
        }
        for frame in self.stack.iter().flat_map(|s| &s.0) {
            write!(f, "\nin {frame}")?;
        }
        Ok(())
    }
}

impl std::error::Error for SourceError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_bom_and_crlf() {
        let source = Source::new("Dockerfile", "\u{feff}FROM a\r\nRUN b\r\n");
        assert_eq!(source.lines(), ["FROM a", "RUN b"]);
        assert_eq!(source.line(2), Some("RUN b"));
        assert_eq!(source.line(0), None);
        assert_eq!(source.line(3), None);
    }

    #[test]
    fn display_shows_line_caret_and_hint() {
        let source = Source::new("Dockerfile", "FROM a\n\tCOPPY . /app\n");
        let err = source
            .error(Pos { line: 2, column: 2 }, "unknown instruction COPPY")
            .with_hint("did you mean COPY?");
        assert_eq!(
            err.to_string(),
            "Dockerfile:2:2: unknown instruction COPPY\n 2 | \tCOPPY . /app\n   | \t^\nhint: did you mean COPY?"
        );
    }

    #[test]
    fn line_range_display() {
        assert_eq!(LineRange { start: 3, end: 3 }.to_string(), "3");
        assert_eq!(LineRange { start: 3, end: 5 }.to_string(), "3-5");
    }
}
