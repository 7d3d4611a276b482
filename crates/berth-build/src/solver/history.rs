//! Why a step missed the cache: the ingredients of each step's key are kept per build
//! and step (`cache/history/<build>/<step>`), and the next run that misses names what
//! changed against them.

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;

use berth_oci::Digest;
use serde::Serialize;

use super::cache::Ingredients;
use super::{Solver, write_atomic};

impl Solver {
    /// Where the ingredients of step `name` of this build are kept:
    /// `cache/history/<build>/<step>`, both hashed.
    fn history_path(&self, name: &str) -> PathBuf {
        self.root
            .join("cache/history")
            .join(Digest::sha256(self.opts.build_id.as_bytes()).hex())
            .join(Digest::sha256(name.as_bytes()).hex())
    }

    /// Keep `ing` as step `name`'s history, with the cache key it made (`key`), which
    /// `berth prune` reads to drop the history of the records it removes.
    pub(super) fn remember(&self, name: &str, key: &Digest, ing: &Ingredients) {
        #[derive(Serialize)]
        struct Entry<'a> {
            key: &'a Digest,
            #[serde(flatten)]
            ingredients: &'a Ingredients,
        }
        let path = self.history_path(name);
        if let Some(dir) = path.parent() {
            let _ = fs::create_dir_all(dir);
        }
        let entry = Entry {
            key,
            ingredients: ing,
        };
        // A cache hit remembers what its last run did: the same bytes, which need no
        // write (a COPY of thousands of files makes an entry of hundreds of KiB).
        if let Ok(bytes) = serde_json::to_vec(&entry)
            && fs::read(&path).ok().as_deref() != Some(bytes.as_slice())
        {
            let _ = write_atomic(&path, &bytes);
        }
    }

    /// Why a step runs: compare with what its key was made of in this build's last run.
    pub(super) fn explain(&self, name: &str, now: &Ingredients) -> String {
        match fs::read(self.history_path(name))
            .ok()
            .and_then(|b| serde_json::from_slice::<Ingredients>(&b).ok())
        {
            Some(before) => explain_change(&before, now),
            None => "first build of this step".into(),
        }
    }
}

/// Why a step whose key was made of `before` last time and of `now` this time runs.
fn explain_change(before: &Ingredients, now: &Ingredients) -> String {
    let mut why = Vec::new();
    if before.op != now.op {
        why.push(describe_op_change(&before.op, &now.op));
    }
    why.extend(describe_input_changes(&before.inputs, &now.inputs));
    let mut changed = Vec::new();
    for (path, sum) in &now.files {
        match before.files.get(path) {
            None => changed.push(format!("{path} (new)")),
            Some(b) if b != sum => changed.push(path.clone()),
            _ => {}
        }
    }
    for path in before.files.keys() {
        if !now.files.contains_key(path) {
            changed.push(format!("{path} (removed)"));
        }
    }
    if !changed.is_empty() {
        let shown: Vec<_> = changed.iter().take(5).cloned().collect();
        let more = if changed.len() > 5 {
            format!(" and {} more", changed.len() - 5)
        } else {
            String::new()
        };
        why.push(format!("files changed: {}{more}", shown.join(", ")));
    }
    if before.source_date_epoch != now.source_date_epoch {
        let show = |v: Option<u64>| v.map_or_else(|| "unset".to_string(), |v| v.to_string());
        why.push(format!(
            "SOURCE_DATE_EPOCH changed from {} to {}",
            show(before.source_date_epoch),
            show(now.source_date_epoch)
        ));
    }
    if why.is_empty() {
        "its cached result is gone (pruned)".into()
    } else {
        why.join("; ")
    }
}

/// How a step's inputs differ between two runs. With as many inputs as before, each
/// slot is compared with the same slot (the op names its inputs by position); otherwise
/// the first input (the file system the step runs on) is compared by position and the
/// others are matched by label, so an extra `COPY --from` or bind mount reads as
/// "input added", not as every later slot changing.
fn describe_input_changes(before: &[(String, String)], now: &[(String, String)]) -> Vec<String> {
    let changed = |label: &str| format!("input {label:?} changed");
    if before.len() == now.len() {
        return now
            .iter()
            .zip(before)
            .filter(|((_, k_now), (_, k_before))| k_now != k_before)
            .map(|((label, _), _)| changed(label))
            .collect();
    }
    let mut why = Vec::new();
    if let (Some((label, k_now)), Some((_, k_before))) = (now.first(), before.first())
        && k_now != k_before
    {
        why.push(changed(label));
    }
    let (before, now) = (before.get(1..).unwrap_or(&[]), now.get(1..).unwrap_or(&[]));
    let mut unmatched: Vec<&(String, String)> = before.iter().collect();
    for (label, key) in now {
        match unmatched.iter().position(|(l, _)| l == label) {
            Some(i) => {
                if unmatched.remove(i).1 != *key {
                    why.push(changed(label));
                }
            }
            None => why.push(format!("input added: {label}")),
        }
    }
    why.extend(
        unmatched
            .into_iter()
            .map(|(label, _)| format!("input removed: {label}")),
    );
    why
}

fn describe_op_change(before: &str, now: &str) -> String {
    let (Ok(b), Ok(n)) = (
        serde_json::from_str::<serde_json::Value>(before),
        serde_json::from_str::<serde_json::Value>(now),
    ) else {
        return "the instruction changed".into();
    };
    let env = |v: &serde_json::Value| -> BTreeMap<String, String> {
        v.pointer("/Exec/env")
            .and_then(|e| e.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|s| {
                        s.as_str()?
                            .split_once('=')
                            .map(|(k, v)| (k.to_string(), v.to_string()))
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let (eb, en) = (env(&b), env(&n));
    let mut changes: Vec<String> = en
        .iter()
        .filter(|(k, v)| eb.get(*k) != Some(*v))
        .map(|(k, v)| match eb.get(k) {
            Some(old) => format!("{k} changed from {old:?} to {v:?}"),
            None => format!("{k}={v:?} is new"),
        })
        .collect();
    changes.extend(
        eb.keys()
            .filter(|k| !en.contains_key(*k))
            .map(|k| format!("{k} was removed")),
    );
    let mut b2 = b.clone();
    let mut n2 = n.clone();
    if let (Some(x), Some(y)) = (b2.pointer_mut("/Exec/env"), n2.pointer_mut("/Exec/env")) {
        *x = serde_json::Value::Null;
        *y = serde_json::Value::Null;
    }
    if b2 != n2 {
        changes.insert(0, "the instruction changed".into());
    }
    if changes.is_empty() {
        "the instruction changed".into()
    } else {
        changes.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::State;
    use crate::solver::testkit::*;

    #[tokio::test]
    async fn a_changed_or_added_or_removed_variable_is_named_old_to_new() {
        let f = Fixture::new();
        let step = |env: &[&str]| State::scratch().run(exec("build", env), Vec::new(), "build");
        f.build_ok(&step(&["FLAVOR=plain", "GONE=1"]), Run::default())
            .await;
        let events = f
            .build_ok(&step(&["FLAVOR=spicy", "NEW=x"]), Run::default())
            .await;
        assert_eq!(
            events.reason("build"),
            r#"FLAVOR changed from "plain" to "spicy", NEW="x" is new, GONE was removed"#
        );
        // A change of both the command and a variable names both.
        let events = f
            .build_ok(
                &State::scratch().run(
                    exec("build2", &["FLAVOR=mild", "NEW=x"]),
                    Vec::new(),
                    "build",
                ),
                Run::default(),
            )
            .await;
        assert_eq!(
            events.reason("build"),
            r#"the instruction changed, FLAVOR changed from "spicy" to "mild""#
        );
    }

    #[tokio::test]
    async fn changed_added_and_removed_context_files_are_named() {
        let f = Fixture::new();
        let write = |name: &str, text: &str| fs::write(f.context().join(name), text).unwrap();
        write("a.txt", "a\n");
        write("b.txt", "b\n");
        let step = run_on_context(&State::scratch(), "use-context", "use");
        f.build_ok(&step, Run::default()).await;
        write("b.txt", "b changed\n");
        write("c.txt", "c\n");
        fs::remove_file(f.context().join("a.txt")).unwrap();
        let events = f.build_ok(&step, Run::default()).await;
        assert_eq!(f.exec.runs(), ["use-context"]);
        assert_eq!(
            events.reason("use"),
            "files changed: b.txt, c.txt (new), a.txt (removed)"
        );
    }

    #[tokio::test]
    async fn added_and_removed_inputs_are_named() {
        let f = Fixture::new();
        let base = run(&State::scratch(), "base", "base");
        let helper = run(&State::scratch(), "helper", "helper");
        let plain = base.run(exec("step", &[]), Vec::new(), "step");
        let with_helper = base.run(exec("step", &[]), vec![helper.clone()], "step");
        f.build_ok(&plain, Run::default()).await;
        let events = f.build_ok(&with_helper, Run::default()).await;
        assert_eq!(events.reason("step"), "input added: helper");
        let events = f.build_ok(&plain, Run::default()).await;
        assert_eq!(events.cached(), ["base", "step"]);
        // Back to the plain step, but through a changed base: the base is compared
        // by position, the helper reported as gone.
        f.build_ok(&with_helper, Run::default()).await;
        let other_base = run(&State::scratch(), "base2", "base");
        let events = f
            .build_ok(
                &other_base.run(exec("step", &[]), Vec::new(), "step"),
                Run::default(),
            )
            .await;
        assert_eq!(
            events.reason("step"),
            r#"input "base" changed; input removed: helper"#
        );
    }

    #[tokio::test]
    async fn a_changed_source_date_epoch_is_named() {
        let f = Fixture::new();
        let step = run(&State::scratch(), "build", "build");
        let at = |epoch| Run {
            source_date_epoch: epoch,
            ..Run::default()
        };
        f.build_ok(&step, at(Some(0))).await;
        assert_eq!(
            f.build_ok(&step, at(Some(100))).await.reason("build"),
            "SOURCE_DATE_EPOCH changed from 0 to 100"
        );
        assert_eq!(
            f.build_ok(&step, at(None)).await.reason("build"),
            "SOURCE_DATE_EPOCH changed from 100 to unset"
        );
        assert_eq!(f.build_ok(&step, at(None)).await.cached(), ["build"]);
    }

    #[tokio::test]
    async fn a_pruned_result_and_no_cache_are_named() {
        let f = Fixture::new();
        let step = run(&State::scratch(), "build", "build");
        f.build_ok(&step, Run::default()).await;
        let records = f.root().join("cache/records");
        for e in fs::read_dir(&records).unwrap() {
            fs::remove_file(e.unwrap().path()).unwrap();
        }
        let events = f.build_ok(&step, Run::default()).await;
        assert_eq!(events.reason("build"), "its cached result is gone (pruned)");
        let no_cache = Run {
            no_cache: true,
            ..Run::default()
        };
        assert_eq!(
            f.build_ok(&step, no_cache).await.reason("build"),
            "--no-cache"
        );
        assert_eq!(f.exec.runs(), ["build"]);
    }

    #[tokio::test]
    async fn history_is_kept_per_build_not_per_label() {
        let f = Fixture::new();
        let project = |id| Run {
            build_id: id,
            ..Run::default()
        };
        // Two projects in one root with a step of the same label.
        let in_a = run(&State::scratch(), "make a", "[build 1/1] RUN make");
        let in_b = run(&State::scratch(), "make b", "[build 1/1] RUN make");
        f.build_ok(&in_a, project("a")).await;
        let events = f.build_ok(&in_b, project("b")).await;
        assert_eq!(
            events.reason("[build 1/1] RUN make"),
            "first build of this step"
        );
        // Project a, changed, is compared with its own last build, not with b's.
        let in_a2 = in_a.vertex().inputs[0].run(
            exec("make a", &["MODE=fast"]),
            Vec::new(),
            "[build 1/1] RUN make",
        );
        let events = f.build_ok(&in_a2, project("a")).await;
        assert_eq!(
            events.reason("[build 1/1] RUN make"),
            r#"MODE="fast" is new"#
        );
    }
}
