//! Path patterns: `.dockerignore` and COPY sources.
//!
//! A pattern is matched against a slash-separated path relative to the context root,
//! component by component: `*` matches within one component, `?` one character,
//! `[a-z]`/`[^a-z]` a class, and a `**` component any number of components. As in
//! Docker, an ignore pattern that matches a directory excludes all below it, and a
//! pattern starting with `!` re-includes what an earlier one excluded.

/// A cleaned pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    parts: Vec<String>,
    /// `!pattern`: re-include.
    pub negated: bool,
}

impl Pattern {
    /// Parse one pattern (leading `/` and `./` ignored, `..` collapsed).
    pub fn new(text: &str) -> Pattern {
        let (negated, text) = match text.trim().strip_prefix('!') {
            Some(rest) => (true, rest.trim()),
            None => (false, text.trim()),
        };
        Pattern {
            parts: clean(text),
            negated,
        }
    }

    /// Whether the pattern matches `path` exactly (all components).
    pub fn matches(&self, path: &str) -> bool {
        let comps: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
        match_parts(&self.parts, &comps)
    }

    /// Whether the pattern matches `path` or one of its ancestors (ignore semantics).
    pub fn matches_or_parent(&self, path: &str) -> bool {
        let comps: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
        (1..=comps.len()).any(|n| match_parts(&self.parts, &comps[..n]))
    }

    /// Whether something below the folder `dir` may match: the pattern crosses levels
    /// (`**`) or its first components match `dir`'s.
    pub fn may_match_below(&self, dir: &str) -> bool {
        let comps: Vec<&str> = dir.split('/').filter(|c| !c.is_empty()).collect();
        self.parts.iter().any(|p| p == "**")
            || (self.parts.len() > comps.len() && match_parts(&self.parts[..comps.len()], &comps))
    }

    /// Whether the pattern holds wildcards.
    pub fn has_wildcards(&self) -> bool {
        self.parts.iter().any(|p| p.contains(['*', '?', '[']))
    }

    /// The pattern as a cleaned relative path.
    pub fn path(&self) -> String {
        self.parts.join("/")
    }
}

fn clean(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for c in text.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            c => out.push(c.to_string()),
        }
    }
    out
}

/// `.dockerignore` rules, applied in order; the last matching rule decides.
#[derive(Debug, Clone, Default)]
pub struct Ignore {
    rules: Vec<Pattern>,
}

impl Ignore {
    /// Parse `.dockerignore` text (comments and blank lines skipped).
    pub fn parse(text: &str) -> Ignore {
        Ignore::new(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#')),
        )
    }

    /// Rules from patterns.
    pub fn new<'a>(patterns: impl IntoIterator<Item = &'a str>) -> Ignore {
        Ignore {
            rules: patterns
                .into_iter()
                .map(Pattern::new)
                .filter(|p| !p.parts.is_empty())
                .collect(),
        }
    }

    /// Whether `path` (relative, slash-separated) is excluded.
    pub fn excludes(&self, path: &str) -> bool {
        let mut excluded = false;
        for r in &self.rules {
            if r.negated {
                // `!src` re-includes src and everything below it, as in Docker.
                if excluded && r.matches_or_parent(path) {
                    excluded = false;
                }
            } else if r.matches_or_parent(path) {
                excluded = true;
            }
        }
        excluded
    }

    /// Whether a directory may hold re-included paths (so it must be walked even when
    /// excluded).
    pub fn may_reinclude_below(&self, dir: &str) -> bool {
        self.rules
            .iter()
            .any(|r| r.negated && r.may_match_below(dir))
    }

    /// The patterns, for cache keys.
    pub fn patterns(&self) -> Vec<String> {
        self.rules
            .iter()
            .map(|r| format!("{}{}", if r.negated { "!" } else { "" }, r.path()))
            .collect()
    }
}

fn match_parts(pat: &[String], path: &[&str]) -> bool {
    match pat.split_first() {
        None => path.is_empty(),
        Some((p, rest)) if p == "**" => (0..=path.len()).any(|i| match_parts(rest, &path[i..])),
        Some((p, rest)) => match path.split_first() {
            Some((c, crest)) => {
                match_component(p.as_bytes(), c.as_bytes()) && match_parts(rest, crest)
            }
            None => false,
        },
    }
}

/// Match one component against a glob (`*`, `?`, `[...]`, `\` escapes).
pub fn match_component(p: &[u8], s: &[u8]) -> bool {
    match p.split_first() {
        None => s.is_empty(),
        Some((b'*', rest)) => (0..=s.len()).any(|i| match_component(rest, &s[i..])),
        Some((b'?', rest)) => !s.is_empty() && match_component(rest, &s[1..]),
        Some((b'[', rest)) => {
            let Some((&c, srest)) = s.split_first() else {
                return false;
            };
            // Only `^` negates a class, as in Go's filepath.Match and the regular
            // expressions Docker's pattern matcher builds: `[!a]` is `!` or `a`.
            let (negate, body) = match rest.first() {
                Some(b'^') => (true, &rest[1..]),
                _ => (false, rest),
            };
            let Some(end) = body.iter().skip(1).position(|&b| b == b']').map(|i| i + 1) else {
                return false;
            };
            let class = &body[..end];
            let mut hit = false;
            let mut i = 0;
            while i < class.len() {
                if i + 2 < class.len() && class[i + 1] == b'-' {
                    hit |= class[i] <= c && c <= class[i + 2];
                    i += 3;
                } else {
                    hit |= class[i] == c;
                    i += 1;
                }
            }
            hit != negate && match_component(&body[end + 1..], srest)
        }
        Some((b'\\', rest)) if !rest.is_empty() => {
            !s.is_empty() && s[0] == rest[0] && match_component(&rest[1..], &s[1..])
        }
        Some((&b, rest)) => !s.is_empty() && s[0] == b && match_component(rest, &s[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components() {
        assert!(match_component(b"*.rs", b"main.rs"));
        assert!(!match_component(b"*.rs", b"main.rc"));
        assert!(match_component(b"f?o", b"foo"));
        assert!(match_component(b"[a-c]x", b"bx"));
        assert!(!match_component(b"[^a-c]x", b"bx"));
        assert!(
            match_component(b"[!a-c]x", b"bx"),
            "`!` is a member, not a negation"
        );
        assert!(match_component(b"[!a-c]x", b"!x"));
        assert!(!match_component(b"[!a-c]x", b"dx"));
        assert!(match_component(b"\\*", b"*"));
    }

    #[test]
    fn dockerignore_semantics() {
        let ig = Ignore::parse("# comment\n*.log\nbuild\n**/*.tmp\n!build/keep.txt\n/secret\n");
        assert!(ig.excludes("a.log"));
        assert!(!ig.excludes("dir/a.log"), "*.log is anchored at the root");
        assert!(ig.excludes("build/out.o"));
        assert!(!ig.excludes("build/keep.txt"));
        assert!(ig.excludes("x/y/z.tmp"));
        assert!(ig.excludes("secret"));
        assert!(!ig.excludes("src/main.rs"));
        assert!(ig.may_reinclude_below("build"));
        assert!(!ig.may_reinclude_below("src"));
        // The allow-list idiom: ignore everything, then re-include a directory.
        let allow = Ignore::parse("*\n!src\n");
        assert!(allow.excludes("README.md"));
        assert!(!allow.excludes("src"));
        assert!(!allow.excludes("src/main.rs"));
        assert!(!allow.excludes("src/deep/mod.rs"));
    }
}
