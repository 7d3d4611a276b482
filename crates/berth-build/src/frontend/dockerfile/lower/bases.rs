//! The images a build's target needs, found before lowering, so they can be resolved
//! at once (in parallel) instead of one after the other as lowering meets them.
//!
//! Only what can be told without lowering counts: each FROM (expanded with the global
//! ARGs, as lowering expands it) of the stages the target reaches through FROM,
//! `COPY --from` and `RUN --mount=from=` with literal names. What this misses (a
//! `--from=$VAR`, an ONBUILD trigger's) lowering still resolves when it meets it; what
//! it lists is exactly what lowering would resolve, so nothing unneeded is pulled.

use std::collections::BTreeSet;

use super::{LowerOptions, meta_args, target_stage};
use crate::error::Result;
use crate::frontend::dockerfile::expand::expand;
use crate::frontend::dockerfile::instructions::{Dockerfile, InstructionKind};

/// The image references (as written after ARG expansion, layouts included) the target
/// stage of `df` reaches, each once, in the order met.
pub(crate) fn base_references(df: &Dockerfile, opts: &LowerOptions) -> Result<Vec<String>> {
    let meta = meta_args(df, opts)?;
    let target = target_stage(df, opts)?;
    let stage_before = |name: &str, before: usize| {
        df.stages[..before]
            .iter()
            .position(|s| {
                s.name
                    .as_deref()
                    .is_some_and(|n| n.eq_ignore_ascii_case(name))
            })
            .or_else(|| name.parse::<usize>().ok().filter(|&i| i < before))
    };
    let mut refs: Vec<String> = Vec::new();
    let mut seen = BTreeSet::new();
    let mut todo = vec![target];
    let add = |r: String, refs: &mut Vec<String>| {
        if !r.eq_ignore_ascii_case("scratch") && !refs.contains(&r) {
            refs.push(r);
        }
    };
    while let Some(idx) = todo.pop() {
        if !seen.insert(idx) {
            continue;
        }
        let stage = &df.stages[idx];
        let Ok(from) = expand(
            &stage.from.image,
            |k| meta.get(k).cloned().flatten(),
            df.directives.escape,
        ) else {
            // Lowering reports it, with the line.
            continue;
        };
        match stage_before(&from, idx) {
            Some(i) => todo.push(i),
            None => add(from, &mut refs),
        }
        let mut named = |name: &str, refs: &mut Vec<String>| {
            if name.contains('$') {
                return;
            }
            match stage_before(name, idx) {
                Some(i) => todo.push(i),
                None => add(name.to_string(), refs),
            }
        };
        for ins in &stage.instructions {
            match &ins.kind {
                InstructionKind::Copy(c) => {
                    if let Some(f) = &c.from {
                        named(f, &mut refs);
                    }
                }
                InstructionKind::Run(r) => {
                    for m in &r.mounts {
                        if let Some(f) = &m.from {
                            named(f, &mut refs);
                        }
                    }
                }
                _ => {}
            }
        }
    }
    Ok(refs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs(text: &str, opts: &LowerOptions) -> Vec<String> {
        let df = Dockerfile::parse("Dockerfile", text).unwrap();
        base_references(&df, opts).unwrap()
    }

    #[test]
    fn only_what_the_target_reaches() {
        let text = "ARG BASE=debian:12\n\
            FROM $BASE AS build\nRUN make\n\
            FROM alpine:3 AS unused\n\
            FROM build AS test\nCOPY --from=tools:1 /t /t\n\
            RUN --mount=from=cache-img:2,target=/c true\n\
            FROM scratch\nCOPY --from=test /out /out\nCOPY --from=$X /a /a\n";
        let all = refs(text, &LowerOptions::default());
        assert_eq!(all, ["tools:1", "cache-img:2", "debian:12"]);
        let opts = LowerOptions {
            target: Some("unused".into()),
            ..Default::default()
        };
        assert_eq!(refs(text, &opts), ["alpine:3"]);
        let opts = LowerOptions {
            build_args: [("BASE".to_string(), "ubuntu:24.04".to_string())].into(),
            target: Some("build".into()),
            ..Default::default()
        };
        assert_eq!(refs(text, &opts), ["ubuntu:24.04"]);
    }
}
