//! A target whose recipe only `BUILD`s other targets (`all: BUILD +a; BUILD +b`) stands
//! for those builds, which share nothing but the folder: a satellite pool runs each on a
//! member of its own ([`fan_out`]).
//!
//! Only what is certain from the text is split: every statement of the recipe is a
//! `BUILD` of a target in the same folder tree (`+t`, `./dir+t`), with literal
//! `--NAME=value` words (no `$`, quotes or groups, which need the recipe's ARGs to
//! read) and no flags but `--pass-args` and `--build-arg`. Anything else is built whole.

use std::collections::BTreeMap;

use super::ast::{Earthfile, Stmt};

/// One build a fanned-out target stands for: a target reference as the command line
/// takes it (relative to the folder berth runs in) and its `--NAME=value` arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FannedTarget {
    /// `+t` or `./dir+t`.
    pub target: String,
    /// The target's ARG values.
    pub args: BTreeMap<String, String>,
}

/// The builds that target `target` of the command line (`+all` or `./dir+all`, whose
/// Earthfile is `ef`) with command-line arguments `args` stands for, when its recipe
/// is only `BUILD`s as the module says and they are at least two distinct builds;
/// `None` when it must be built whole. `BUILD +t --X=a --X=b` is one build per value,
/// as Earthly's BUILD does; `--pass-args` passes `args` on.
pub fn fan_out(
    ef: &Earthfile,
    target: &str,
    args: &BTreeMap<String, String>,
) -> Option<Vec<FannedTarget>> {
    let (project, name) = target.split_once('+')?;
    let project = match project {
        "" | "." | "./" => "",
        p => p.strip_prefix("./")?.trim_end_matches('/'),
    };
    if project.split('/').any(|c| c == ".." || c.is_empty()) && !project.is_empty() {
        return None;
    }
    let recipe = ef.target(name)?;
    let literal = |s: &str| !s.contains(['$', '"', '\'', '\\', '(', ')']);
    let mut out: Vec<FannedTarget> = Vec::new();
    for stmt in &recipe.body {
        let Stmt::Command(c) = stmt else {
            return None;
        };
        if c.name != "BUILD" || c.args.is_empty() {
            return None;
        }
        if c.flags
            .iter()
            .any(|f| !matches!(f.name.as_str(), "pass-args" | "build-arg"))
        {
            return None;
        }
        let reference = &c.args[0];
        if reference.group || !literal(&reference.text) {
            return None;
        }
        let (dir, t) = reference.text.split_once('+')?;
        let dir = match dir {
            "" => String::new(),
            d => {
                let d = d.strip_prefix("./")?.trim_end_matches('/');
                if d.is_empty() || d.split('/').any(|c| c == ".." || c == "." || c.is_empty()) {
                    return None;
                }
                d.to_owned()
            }
        };
        let folder = match (project, dir.as_str()) {
            ("", "") => String::new(),
            (p, "") => p.to_owned(),
            ("", d) => d.to_owned(),
            (p, d) => format!("{p}/{d}"),
        };
        let target = if folder.is_empty() {
            format!("+{t}")
        } else {
            format!("./{folder}+{t}")
        };
        let mut grouped: Vec<(String, Vec<String>)> = Vec::new();
        for w in &c.args[1..] {
            if w.group || !literal(&w.text) {
                return None;
            }
            let (k, v) = w.text.strip_prefix("--")?.split_once('=')?;
            match grouped.iter_mut().find(|(n, _)| n == k) {
                Some((_, vals)) => vals.push(v.to_owned()),
                None => grouped.push((k.to_owned(), vec![v.to_owned()])),
            }
        }
        let mut build_args = BTreeMap::new();
        for v in c.values("build-arg") {
            if !literal(v) {
                return None;
            }
            let (k, v) = v.split_once('=').unwrap_or((v, ""));
            build_args.insert(k.to_owned(), v.to_owned());
        }
        let base = if c.flag("pass-args") {
            args.clone()
        } else {
            BTreeMap::new()
        };
        let mut combos = vec![base];
        for (k, vals) in grouped {
            combos = combos
                .iter()
                .flat_map(|m| {
                    vals.iter().map(|v| {
                        let mut m = m.clone();
                        m.insert(k.clone(), v.clone());
                        m
                    })
                })
                .collect();
        }
        for mut a in combos {
            a.extend(build_args.clone());
            let one = FannedTarget {
                target: target.clone(),
                args: a,
            };
            if !out.contains(&one) {
                out.push(one);
            }
        }
    }
    (out.len() >= 2).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fan(text: &str, target: &str, args: &[(&str, &str)]) -> Option<Vec<(String, String)>> {
        let ef = Earthfile::parse("Earthfile", text).unwrap();
        let args = args
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        fan_out(&ef, target, &args).map(|v| {
            v.into_iter()
                .map(|f| {
                    let args: Vec<String> =
                        f.args.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    (f.target, args.join(","))
                })
                .collect()
        })
    }

    fn pairs(p: &[(&str, &str)]) -> Option<Vec<(String, String)>> {
        Some(
            p.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
        )
    }

    const TARGETS: &str = "a:\n    FROM scratch\nb:\n    FROM scratch\n";

    #[test]
    fn a_recipe_of_builds_is_split_with_its_literal_args() {
        let text = format!(
            "VERSION 0.8\nall:\n    BUILD +a\n    # a comment\n    BUILD ./sub+b --X=1 --Y=2\n    \
             BUILD +a\n{TARGETS}"
        );
        assert_eq!(
            fan(&text, "+all", &[("IGNORED", "1")]),
            pairs(&[("+a", ""), ("./sub+b", "X=1,Y=2")])
        );
        // From a folder: references are made relative to where berth runs.
        assert_eq!(
            fan(&text, "./proj+all", &[]),
            pairs(&[("./proj+a", ""), ("./proj/sub+b", "X=1,Y=2")])
        );
    }

    #[test]
    fn matrix_pass_args_and_build_arg_are_read_as_build_reads_them() {
        let text = format!(
            "VERSION 0.8\nall:\n    BUILD +a --V=1 --V=2\n    BUILD --pass-args \
             --build-arg=Z=9 +b --W=w\n{TARGETS}"
        );
        assert_eq!(
            fan(&text, "+all", &[("P", "p")]),
            pairs(&[("+a", "V=1"), ("+a", "V=2"), ("+b", "P=p,W=w,Z=9")])
        );
    }

    #[test]
    fn anything_else_is_built_whole() {
        for (body, why) in [
            ("    BUILD +a\n", "one build"),
            ("    BUILD +a\n    BUILD +a\n", "the same build twice"),
            (
                "    FROM scratch\n    BUILD +a\n    BUILD +b\n",
                "other commands",
            ),
            (
                "    ARG X=1\n    BUILD +a --X=$X\n    BUILD +b\n",
                "args to expand",
            ),
            ("    BUILD +a --X=\"q\"\n    BUILD +b\n", "quotes"),
            ("    BUILD ../up+a\n    BUILD +b\n", "outside the folder"),
            ("    BUILD github.com/o/r+a\n    BUILD +b\n", "remote"),
            (
                "    BUILD --platform=linux/arm64 +a\n    BUILD +b\n",
                "flags",
            ),
            (
                "    IF true\n        BUILD +a\n    END\n    BUILD +b\n",
                "blocks",
            ),
        ] {
            let text = format!("VERSION 0.8\nall:\n{body}{TARGETS}");
            assert_eq!(fan(&text, "+all", &[]), None, "{why}");
        }
        let text = format!("VERSION 0.8\nall:\n    BUILD +a\n    BUILD +b\n{TARGETS}");
        assert_eq!(fan(&text, "+nope", &[]), None, "no such target");
        assert_eq!(fan(&text, "../x+all", &[]), None, "outside the folder");
    }
}
