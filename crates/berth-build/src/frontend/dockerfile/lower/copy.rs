//! COPY and ADD: sources from the context, a stage or an image, heredoc files, and the
//! flags that shape the file op.

use super::{Lowerer, StageState, src_err};
use crate::error::Result;
use crate::frontend::dockerfile::expand::{ExpandError, MAX_WORD, push_within};
use crate::frontend::dockerfile::instructions::{Add, Copy, CopySource, Dockerfile};
use crate::ir::{FileAction, FileOp, GitSource, HttpSource, Op, State};
use crate::mode::ModeSet;

/// What COPY and ADD share.
struct CopySpec<'a> {
    sources: &'a [CopySource],
    /// Downloads and git checkouts (ADD), each copied from its own input: the state,
    /// the path copied from it, whether to unpack it, and how many local paths come
    /// before it among the sources (sources are copied in the order written).
    remote: Vec<(State, String, bool, usize)>,
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
            remote: Vec::new(),
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
    /// `--unpack=false`), and adds URLs (a download vertex each, never unpacked unless
    /// `--unpack=true`) and git repositories (a checkout vertex each).
    pub(super) fn add(
        &mut self,
        st: &StageState,
        a: &Add,
        line: usize,
        name: &str,
    ) -> Result<State> {
        let checksum = match &a.checksum {
            None => None,
            Some(c) => {
                let c = self.expand(st, c, line)?;
                Some(c.parse::<berth_oci::Digest>().map_err(|e| {
                    src_err(
                        self.df,
                        line,
                        1,
                        &format!("--checksum={c} is not a digest (sha256:<64 hex digits>): {e}"),
                    )
                })?)
            }
        };
        let mut remote = Vec::new();
        let mut local = Vec::new();
        let paths_before = |local: &Vec<CopySource>| {
            local
                .iter()
                .filter(|s| matches!(s, CopySource::Path(_)))
                .count()
        };
        for s in &a.sources {
            match s {
                CopySource::Path(p) if is_git_source(p) => {
                    let url = self.expand(st, p, line)?;
                    let source = git_source(&url, a.keep_git_dir, self.df.source.name(), line);
                    let name = format!("git {url}");
                    remote.push((
                        State::new(Op::Git(source), vec![], name),
                        ".".to_string(),
                        false,
                        paths_before(&local),
                    ));
                }
                CopySource::Path(p) if p.starts_with("http://") || p.starts_with("https://") => {
                    let url = self.expand(st, p, line)?;
                    let source = HttpSource {
                        filename: url_filename(&url),
                        url,
                        checksum: checksum.clone(),
                        origin: format!("{}:{line}", self.df.source.name()),
                    };
                    let name = format!("download {}", source.url);
                    let file = source.filename.clone();
                    remote.push((
                        State::new(Op::Http(source), vec![], name),
                        file,
                        a.unpack == Some(true),
                        paths_before(&local),
                    ));
                }
                other => local.push(other.clone()),
            }
        }
        let one_url = match remote.as_slice() {
            [(st, _, _, _)] => matches!(st.vertex().op, Op::Http(_)),
            _ => false,
        };
        if checksum.is_some() && (!one_url || !local.is_empty()) {
            return Err(src_err(
                self.df,
                line,
                1,
                "--checksum needs exactly one source, an http:// or https:// URL",
            ));
        }
        let spec = CopySpec {
            sources: &local,
            remote,
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
        let mut inputs: Vec<State> = sources.from.clone().into_iter().collect();
        let first_remote = inputs.len() + 1;
        inputs.extend(spec.remote.iter().map(|(s, _, _, _)| s.clone()));
        let op = copy_op(&dest, sources, &spec, first_remote, chown, chmod, st.cwd());
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
                    self.state_named(&f, st.idx, &st.platform.clone())?
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
/// paths copied from input 1 and the downloads and checkouts from theirs, in the order
/// written, then heredoc files written (BuildKit's order: with a file destination, the
/// last source wins).
fn copy_op(
    dest: &str,
    sources: Sources,
    spec: &CopySpec<'_>,
    first_remote: usize,
    chown: Option<String>,
    chmod: Option<ChmodFlag>,
    cwd: String,
) -> FileOp {
    let mut actions = Vec::new();
    // In the order written, local paths in a row sharing one copy action (each source
    // is copied on its own in it). A download is the one file of its input; a checkout
    // is copied whole.
    let mut copies: Vec<(usize, Vec<String>, bool)> = Vec::new();
    let mut next = 0;
    for (i, (_, path, unpack, before)) in spec.remote.iter().enumerate() {
        let before = (*before).min(sources.paths.len());
        if before > next {
            copies.push((1, sources.paths[next..before].to_vec(), spec.extract));
            next = before;
        }
        copies.push((first_remote + i, vec![path.clone()], *unpack));
    }
    if next < sources.paths.len() {
        copies.push((1, sources.paths[next..].to_vec(), spec.extract));
    }
    for (from, paths, extract) in copies {
        actions.push(FileAction::Copy {
            from,
            sources: paths,
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
            extract_archives: extract,
            exclude: spec.exclude.to_vec(),
            parents: spec.parents,
            mtime: None,
            keep_owner: false,
            dirs: false,
            no_follow: false,
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

/// Whether an ADD source is a git repository, as BuildKit tells them apart: `git@…`,
/// `git://…`, `ssh://…`, or an http(s) URL whose path ends in `.git` (before a `#ref`).
pub(super) fn is_git_source(s: &str) -> bool {
    if s.starts_with("git@") || s.starts_with("git://") || s.starts_with("ssh://") {
        return true;
    }
    let Some(rest) = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
    else {
        return false;
    };
    let before_ref = rest.split('#').next().unwrap_or(rest);
    before_ref
        .split('?')
        .next()
        .unwrap_or(before_ref)
        .ends_with(".git")
}

/// A git source as BuildKit reads one: `remote#ref:subdir`, both parts optional.
fn git_source(url: &str, keep_git_dir: bool, file: &str, line: usize) -> GitSource {
    let (remote, fragment) = url.split_once('#').unwrap_or((url, ""));
    let (reference, subdir) = fragment.split_once(':').unwrap_or((fragment, ""));
    let some = |s: &str| (!s.is_empty()).then(|| s.to_string());
    GitSource {
        remote: remote.to_string(),
        reference: some(reference),
        subdir: some(subdir.trim_matches('/')),
        keep_git_dir,
        origin: format!("{file}:{line}"),
    }
}

/// The name a downloaded file gets (BuildKit's): the last segment of the URL's path,
/// percent-decoded, `__unnamed__` when the path has none.
pub(super) fn url_filename(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.split(['?', '#']).next().unwrap_or(rest);
    let path = rest.find('/').map_or("", |i| &rest[i..]);
    let last = path.rsplit('/').next().unwrap_or("");
    let decoded = percent_decode(last);
    if decoded.is_empty() || decoded == "." || decoded == ".." {
        "__unnamed__".to_string()
    } else {
        decoded
    }
}

/// `%xx` escapes replaced by their bytes (invalid escapes kept as written).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
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
    fn downloads_are_named_by_the_url_path_and_git_sources_are_told_apart() {
        use super::{is_git_source, url_filename};
        assert_eq!(
            url_filename("https://h:8/a/b/file.tar.gz?x=1#y"),
            "file.tar.gz"
        );
        assert_eq!(url_filename("http://h/dir/a%20b"), "a b");
        assert_eq!(url_filename("http://h/"), "__unnamed__");
        assert_eq!(url_filename("http://h"), "__unnamed__");
        assert!(is_git_source("git@github.com:o/r.git#main"));
        assert!(is_git_source("https://h/o/r.git#v1:sub"));
        assert!(!is_git_source("https://h/o/r.tar.gz"));
        assert!(!is_git_source("https://h/git.html"));
        let g = super::git_source("git://h:9/r.git#v1:a/b/", true, "Dockerfile", 3);
        assert_eq!(g.remote, "git://h:9/r.git");
        assert_eq!(g.reference.as_deref(), Some("v1"));
        assert_eq!(g.subdir.as_deref(), Some("a/b"));
        assert_eq!(g.origin, "Dockerfile:3");
        let g = super::git_source("git@h:o/r.git", false, "Dockerfile", 1);
        assert_eq!((g.reference, g.subdir), (None, None));
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
