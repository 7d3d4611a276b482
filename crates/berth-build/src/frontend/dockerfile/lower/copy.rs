//! COPY and ADD: sources from the context, a stage or an image, heredoc files, and the
//! flags that shape the file op.

use super::{Lowerer, StageState, src_err};
use crate::error::Result;
use crate::frontend::dockerfile::expand::{ExpandError, MAX_WORD, push_within};
use crate::frontend::dockerfile::instructions::{Add, Copy, CopySource, Dockerfile};
use crate::ir::{FileAction, FileOp, State};
use crate::mode::ModeSet;

/// What COPY and ADD share.
struct CopySpec<'a> {
    sources: &'a [CopySource],
    from: Option<&'a str>,
    dest: &'a str,
    chown: Option<&'a str>,
    chmod: Option<&'a str>,
    exclude: &'a [String],
    extract: bool,
    parents: bool,
    link: bool,
}

/// The sources of a COPY/ADD, resolved: the state they come from (the context unless
/// `--from`; none if all are heredocs), the expanded paths, and the heredoc files.
struct Sources {
    from: Option<State>,
    paths: Vec<String>,
    writes: Vec<(String, Vec<u8>)>,
}

impl Lowerer<'_> {
    /// COPY on top of `st`, labelled `name`.
    pub(super) fn copy(
        &mut self,
        st: &StageState,
        c: &Copy,
        line: usize,
        name: &str,
    ) -> Result<State> {
        let spec = CopySpec {
            sources: &c.sources,
            from: c.from.as_deref(),
            dest: &c.dest,
            chown: c.chown.as_deref(),
            chmod: c.chmod.as_deref(),
            exclude: &c.exclude,
            extract: false,
            parents: c.parents,
            link: c.link,
        };
        self.copy_step(st, spec, line, name)
    }

    /// ADD on top of `st`, labelled `name`: COPY that unpacks local archives (unless
    /// `--unpack=false`); remote sources are refused.
    pub(super) fn add(
        &mut self,
        st: &StageState,
        a: &Add,
        line: usize,
        name: &str,
    ) -> Result<State> {
        if let Some(url) = a.sources.iter().find_map(|s| match s {
            CopySource::Path(p) if p.contains("://") || p.starts_with("git@") => Some(p.clone()),
            _ => None,
        }) {
            return Err(src_err(
                self.df,
                line,
                1,
                &format!(
                    "ADD {url}: remote sources are not supported yet; download in a RUN step instead"
                ),
            ));
        }
        let spec = CopySpec {
            sources: &a.sources,
            from: None,
            dest: &a.dest,
            chown: a.chown.as_deref(),
            chmod: a.chmod.as_deref(),
            exclude: &a.exclude,
            extract: a.unpack.unwrap_or(true),
            parents: false,
            link: a.link,
        };
        self.copy_step(st, spec, line, name)
    }

    /// COPY and ADD: resolve the sources, expand the flags, add the file op.
    fn copy_step(
        &mut self,
        st: &StageState,
        spec: CopySpec<'_>,
        line: usize,
        name: &str,
    ) -> Result<State> {
        let sources = self.copy_sources(st, spec.sources, spec.from, line)?;
        let dest = self.expand(st, spec.dest, line)?;
        let chown = spec.chown.map(|c| self.expand(st, c, line)).transpose()?;
        let chmod = parse_chmod(spec.chmod, self.df, line)?;
        let inputs = sources.from.clone().into_iter().collect();
        let op = copy_op(&dest, sources, &spec, chown, chmod, st.cwd());
        // --link, as BuildKit: the copy is made on scratch, as a layer of its own put on
        // top of the stage, so it does not depend on the stage (its cache survives a new
        // base; links in the stage's destination are not followed, and user names are
        // looked up in the empty scratch). BuildKit does not link with --chmod.
        if spec.link && spec.chmod.is_none() {
            let layer = State::scratch()
                .file(op, inputs, name.to_string())
                .with_ignore_cache(self.opts.no_cache);
            return Ok(State::merge(
                vec![st.state.clone(), layer],
                format!("LINK {name}"),
            ));
        }
        Ok(st
            .state
            .file(op, inputs, name.to_string())
            .with_ignore_cache(self.opts.no_cache))
    }

    /// Sources of COPY/ADD in `st`.
    fn copy_sources(
        &mut self,
        st: &StageState,
        sources: &[CopySource],
        from: Option<&str>,
        line: usize,
    ) -> Result<Sources> {
        let mut paths = Vec::new();
        let mut writes = Vec::new();
        for s in sources {
            match s {
                CopySource::Path(p) => paths.push(self.expand(st, p, line)?),
                CopySource::Heredoc(h) => {
                    // Only `$VAR`/`${VAR}` are replaced in a heredoc's body: its quotes
                    // and backslashes are file content (BuildKit's SkipProcessQuotes).
                    let content = if h.expand {
                        expand_vars(&h.content, |k| st.lookup(k))
                            .map_err(|e| src_err(self.df, line, 1, &e.to_string()))?
                    } else {
                        h.content.clone()
                    };
                    writes.push((h.name.clone(), content.into_bytes()));
                }
            }
        }
        let from = if paths.is_empty() {
            None
        } else {
            Some(match from {
                Some(f) => {
                    let f = self.expand(st, f, line)?;
                    self.state_named(&f, st.idx)?
                }
                None => self.context.clone(),
            })
        };
        Ok(Sources {
            from,
            paths,
            writes,
        })
    }
}

/// The file op of a COPY/ADD to `dest` (expanded) in working directory `cwd`: the
/// paths copied from input 1, then heredoc files written (BuildKit's order: with a
/// file destination, the last source wins).
fn copy_op(
    dest: &str,
    sources: Sources,
    spec: &CopySpec<'_>,
    chown: Option<String>,
    chmod: Option<ChmodFlag>,
    cwd: String,
) -> FileOp {
    let mut actions = Vec::new();
    if !sources.paths.is_empty() {
        actions.push(FileAction::Copy {
            from: 1,
            sources: sources.paths,
            dest: dest.to_string(),
            chown: chown.clone(),
            chmod: match &chmod {
                Some(ChmodFlag::Octal(m)) => Some(*m),
                _ => None,
            },
            chmod_symbolic: match &chmod {
                Some(ChmodFlag::Symbolic(text, _)) => Some(text.clone()),
                _ => None,
            },
            extract_archives: spec.extract,
            exclude: spec.exclude.to_vec(),
            parents: spec.parents,
        });
    }
    for (name, data) in sources.writes {
        // Each heredoc is copied to `dest` on its own, as BuildKit does.
        actions.push(FileAction::Write {
            path: dest.to_string(),
            name,
            data,
            // As BuildKit: the file is made 0644, then copied with the mode.
            mode: match &chmod {
                None => 0o644,
                Some(ChmodFlag::Octal(m)) => *m,
                Some(ChmodFlag::Symbolic(_, set)) => set.apply(0o644, false),
            },
            chown: chown.clone(),
        });
    }
    FileOp { actions, cwd }
}

/// `--chmod`: octal (at most 07777), or symbolic as chmod(1) (Dockerfile 1.14); a value
/// that starts with a digit must be octal, as in BuildKit.
fn parse_chmod(s: Option<&str>, df: &Dockerfile, line: usize) -> Result<Option<ChmodFlag>> {
    let Some(s) = s else {
        return Ok(None);
    };
    if let Some(m) = u32::from_str_radix(s, 8).ok().filter(|m| *m <= 0o7777) {
        return Ok(Some(ChmodFlag::Octal(m)));
    }
    if let Some(set) = ModeSet::parse(s) {
        return Ok(Some(ChmodFlag::Symbolic(s.to_string(), set)));
    }
    Err(src_err(
        df,
        line,
        1,
        &format!(
            "--chmod={s} is neither an octal mode up to 7777 (755) nor a symbolic one (u+x,go-w)"
        ),
    ))
}

/// A parsed `--chmod`.
enum ChmodFlag {
    Octal(u32),
    /// The text (kept in the op) and its parse.
    Symbolic(String, ModeSet),
}

/// Replace `$NAME`, `${NAME}`, `${NAME:-default}` and `${NAME-default}` in `text`,
/// leaving everything else (quotes, backslashes, a lone `$`) as it is. Substitutions may
/// add at most [`MAX_WORD`] bytes to the text.
fn expand_vars(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> std::result::Result<String, ExpandError> {
    let limit = text.len() + MAX_WORD;
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let name_char = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    while i < b.len() {
        if b[i] == b'$' && i + 1 < b.len() {
            if b[i + 1] == b'{'
                && let Some(end) = text[i + 2..].find('}')
            {
                let inner = &text[i + 2..i + 2 + end];
                let (name, default) = match inner.find(":-").or_else(|| inner.find('-')) {
                    Some(p) => {
                        let skip = if inner[p..].starts_with(":-") { 2 } else { 1 };
                        (&inner[..p], Some(&inner[p + skip..]))
                    }
                    None => (inner, None),
                };
                if !name.is_empty() && name.bytes().all(name_char) {
                    let v = lookup(name).filter(|v| !(v.is_empty() && inner.contains(":-")));
                    let v = v.unwrap_or_else(|| default.unwrap_or("").to_string());
                    push_within(&mut out, &v, name, i, limit)?;
                    i += 3 + end;
                    continue;
                }
            } else if name_char(b[i + 1]) && !b[i + 1].is_ascii_digit() {
                let start = i + 1;
                let mut j = start;
                while j < b.len() && name_char(b[j]) {
                    j += 1;
                }
                let name = &text[start..j];
                push_within(&mut out, &lookup(name).unwrap_or_default(), name, i, limit)?;
                i = j;
                continue;
            }
        }
        let ch = text[i..].chars().next().expect("in bounds");
        out.push(ch);
        i += ch.len_utf8();
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::expand_vars;
    use crate::frontend::dockerfile::expand::MAX_WORD;

    #[test]
    fn heredoc_bodies_keep_quotes_and_backslashes() {
        let look = |k: &str| match k {
            "X" => Some("value".to_string()),
            "EMPTY" => Some(String::new()),
            _ => None,
        };
        assert_eq!(
            expand_vars(r#"{"a": "$X", "b": "${X}"}"#, look).unwrap(),
            r#"{"a": "value", "b": "value"}"#
        );
        assert_eq!(
            expand_vars("Don't \\n $ ${UNSET:-dflt} ${EMPTY:-e} ${EMPTY-e}", look).unwrap(),
            "Don't \\n $ dflt e "
        );
        assert_eq!(
            expand_vars("price: $5 and $X.", look).unwrap(),
            "price: $5 and value."
        );
    }

    #[test]
    fn heredoc_expansion_is_bounded() {
        // A heredoc naming a 512 KiB variable three times: 1.5 MiB of substitutions.
        let big = "b".repeat(MAX_WORD / 2);
        let look = |k: &str| (k == "BIG").then(|| big.clone());
        assert_eq!(expand_vars("$BIG${BIG}", look).unwrap().len(), MAX_WORD);
        let err = expand_vars("$BIG\n${BIG}\n$BIG", look).unwrap_err();
        assert!(err.to_string().contains("$BIG"), "{err}");
        assert_eq!(err.offset(), 12, "the third one");
    }
}
