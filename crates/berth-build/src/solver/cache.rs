//! Cache keys and cache records. A step's key is a digest of its op, the keys of its
//! inputs, the content of the context files it reads and, for steps that make layers,
//! `SOURCE_DATE_EPOCH`; the record under a key lists the layers it made
//! (`cache/records/<key>`). The content checksums of a context's files are kept between
//! builds (`cache/sums/<context>`), so unchanged files are not read again.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use berth_oci::Digest;
use serde::{Deserialize, Serialize};

use super::{Layer, Output, Solved, Solver, write_atomic};
use crate::error::Result;
use crate::fileops;
use crate::ir::{FileAction, MountSource, Op, State};
use crate::pattern::Ignore;

/// The record kept for each cache key.
#[derive(Serialize, Deserialize)]
struct Record {
    layers: Vec<Layer>,
}

/// What a step's key was made of, kept per build and step label to explain the next
/// miss.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub(super) struct Ingredients {
    pub(super) op: String,
    /// `(label, cache key)` of each input, in the op's order.
    pub(super) inputs: Vec<(String, String)>,
    pub(super) files: BTreeMap<String, String>,
    #[serde(default)]
    pub(super) source_date_epoch: Option<u64>,
}

impl Solver {
    /// The cache key of `state` given its solved `inputs`, and what it is made of.
    pub(super) fn cache_key(
        &self,
        state: &State,
        inputs: &[Arc<Solved>],
    ) -> Result<(Digest, Ingredients)> {
        let v = state.vertex();
        let op = serde_json::to_string(&v.op).expect("ops serialise");
        let mut ing = Ingredients {
            op,
            inputs: v
                .inputs
                .iter()
                .zip(inputs)
                .map(|(s, r)| (s.vertex().name.clone(), r.key.to_string()))
                .collect(),
            files: BTreeMap::new(),
            // Only what a step makes has timestamps to clamp. A source's key without
            // it keeps "input FROM … changed" out of the explanation of a new epoch.
            source_date_epoch: self
                .opts
                .source_date_epoch
                .filter(|_| matches!(v.op, Op::Exec(_) | Op::File(_))),
        };
        // Content of the context files a step reads.
        let mut content = Vec::new();
        for (input, srcs) in context_reads(&v.op) {
            if let Some(Output::Dir { path, exclude }) = inputs.get(input).map(|s| &s.output) {
                let (sum, files) = self.context_sum(path, exclude, &srcs)?;
                content.push(sum.to_string());
                ing.files.extend(files);
            }
        }
        #[derive(Serialize)]
        struct KeyDoc<'a> {
            op: &'a str,
            inputs: Vec<&'a str>,
            content: &'a [String],
            /// Layer timestamps depend on it, so results made under another do not fit.
            source_date_epoch: Option<u64>,
        }
        let doc = KeyDoc {
            op: &ing.op,
            inputs: ing.inputs.iter().map(|(_, k)| k.as_str()).collect(),
            content: &content,
            source_date_epoch: ing.source_date_epoch,
        };
        let key = Digest::sha256(&serde_json::to_vec(&doc).expect("json"));
        Ok((key, ing))
    }

    /// The content checksum of `srcs` in the directory `path` (with the ignore rules
    /// `exclude`) and the sum of each file, computed once per build: the first caller
    /// walks, one that comes while it walks waits for its result (the background walk
    /// of [`Solver::prefetch_context_sums`] and the step's key).
    fn context_sum(
        &self,
        path: &Path,
        exclude: &[String],
        srcs: &[String],
    ) -> Result<(Digest, Vec<(String, String)>)> {
        let slot = self
            .context_sums
            .lock()
            .expect("context sums")
            .entry((path.to_path_buf(), exclude.to_vec(), srcs.to_vec()))
            .or_default()
            .clone();
        let mut slot = slot.lock().expect("context sum");
        if let Some(done) = &*slot {
            return Ok(done.clone());
        }
        let ignore = Ignore::new(exclude.iter().map(String::as_str));
        let matched = fileops::resolve_sources(path, srcs, &ignore)?;
        let cache = self.sum_cache(path);
        let done = fileops::checksum_cached(path, &matched, &ignore, Some(&cache))?;
        *slot = Some(done.clone());
        Ok(done)
    }

    /// Checksum every context file the builds solved so far will read (COPY and
    /// `RUN --mount` sources of a local context), as a step's key would: run beside a
    /// base image's unpack, so the walk (a read of every new or changed file) is off the
    /// way of the steps after it. Errors are left for the step's own key to report.
    pub(super) fn prefetch_context_sums(&self) {
        let mut todo: Vec<State> = self.targets.lock().expect("targets").clone();
        let mut seen = std::collections::HashSet::new();
        while let Some(state) = todo.pop() {
            if !seen.insert(state.digest().clone()) {
                continue;
            }
            let v = state.vertex();
            for (input, srcs) in context_reads(&v.op) {
                if let Some(Op::Local(l)) = v.inputs.get(input).map(|s| &s.vertex().op)
                    && let Some(path) = self.opts.contexts.get(&l.name)
                {
                    let _ = self.context_sum(path, &l.exclude, &srcs);
                }
            }
            todo.extend(v.inputs.iter().cloned());
        }
    }

    fn sums_path(&self, context: &Path) -> PathBuf {
        let id = Digest::sha256(context.to_string_lossy().as_bytes());
        self.root.join("cache/sums").join(id.hex())
    }

    /// The content-hash cache of a context directory, loaded on first use.
    fn sum_cache(&self, context: &Path) -> Arc<fileops::SumCache> {
        let mut all = self.sums.lock().expect("sums");
        all.entry(context.to_path_buf())
            .or_insert_with(|| {
                let map: fileops::SumMap = fs::read(self.sums_path(context))
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok())
                    .unwrap_or_default();
                (Arc::new(std::sync::Mutex::new(map.clone())), map)
            })
            .0
            .clone()
    }

    /// Keep the content hashes computed in this build for the next one, so unchanged
    /// context files are not read again. A cache this build did not change (a no-op
    /// rebuild) is not written again: that write was two fsyncs of a file that grows
    /// with the context.
    pub fn save_sums(&self) {
        let all = self.sums.lock().expect("sums");
        for (context, (cache, read)) in all.iter() {
            let map = cache.lock().expect("sums");
            if *map == *read {
                continue;
            }
            let path = self.sums_path(context);
            if let Some(dir) = path.parent() {
                let _ = fs::create_dir_all(dir);
            }
            if let Ok(bytes) = serde_json::to_vec(&*map) {
                let _ = write_atomic(&path, &bytes);
            }
        }
    }

    fn record_path(&self, key: &Digest) -> PathBuf {
        self.root.join("cache/records").join(key.hex())
    }

    /// Record that `key` made `layers`.
    pub(super) fn record(&self, key: &Digest, layers: &[Layer]) -> Result<()> {
        let rec = serde_json::to_vec(&Record {
            layers: layers.to_vec(),
        })
        .expect("json");
        write_atomic(&self.record_path(key), &rec)
    }

    /// The layers recorded under `key`, if the record and all its blobs are there.
    pub(super) fn lookup(&self, key: &Digest) -> Result<Option<Vec<Layer>>> {
        let path = self.record_path(key);
        let Ok(bytes) = fs::read(&path) else {
            return Ok(None);
        };
        let Ok(rec) = serde_json::from_slice::<Record>(&bytes) else {
            return Ok(None);
        };
        // The record's mtime is its last use, for `berth prune`.
        if let Ok(f) = fs::File::options().write(true).open(&path) {
            let _ = f.set_modified(std::time::SystemTime::now());
        }
        for l in &rec.layers {
            if self.store.blob_size(&l.blob.digest)?.is_none() {
                return Ok(None);
            }
        }
        Ok(Some(rec.layers))
    }
}

/// The context files an op reads: `(input, sources)` for each COPY source list and
/// each `RUN --mount` of an input.
fn context_reads(op: &Op) -> Vec<(usize, Vec<String>)> {
    match op {
        Op::File(f) => f
            .actions
            .iter()
            .filter_map(|a| match a {
                // --parents reads below each source's pivot: all of it is keyed
                // (more than the pattern matches, never less).
                FileAction::Copy {
                    from,
                    sources,
                    parents: true,
                    ..
                } => Some((
                    *from,
                    sources
                        .iter()
                        .map(|s| format!("{}/.", fileops::parents_pivot(s).0))
                        .collect(),
                )),
                FileAction::Copy { from, sources, .. } => Some((*from, sources.clone())),
                _ => None,
            })
            .collect(),
        Op::Exec(e) => e
            .mounts
            .iter()
            .filter_map(|m| match &m.source {
                MountSource::Input { input, path, .. } => Some((*input, vec![path.clone()])),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::solver::testkit::*;

    #[tokio::test]
    async fn a_second_build_takes_every_step_from_cache() {
        let f = Fixture::new();
        fs::write(f.context().join("a.txt"), "a\n").unwrap();
        let a = run(&State::scratch(), "a", "a");
        let b = run_on_context(&a, "b", "b");
        let c = run(&b, "c", "c");
        let first = f.build_ok(&c, Run::default()).await;
        assert_eq!(f.exec.runs(), ["a", "b", "c"]);
        assert!(first.cached().is_empty());
        assert_eq!(first.reason("a"), "first build of this step");

        let second = f.build_ok(&c, Run::default()).await;
        assert!(f.exec.runs().is_empty(), "ran again: {:?}", f.exec.runs());
        assert_eq!(second.cached(), ["a", "b", "c"]);
        assert_eq!(second.started(), ["[internal] load context"]);
    }

    /// The background walk checksums what the step's key reads (the same sources), and
    /// the key takes its result: a file changed after the walk is not seen in this
    /// build, as the step finds its checksum made. Without the walk (or with other
    /// sources) the change would show as a miss.
    #[tokio::test]
    async fn a_prefetched_context_sum_is_the_one_the_key_uses() {
        let f = Fixture::new();
        fs::write(f.context().join("a.txt"), "a\n").unwrap();
        let b = run_on_context(&run(&State::scratch(), "a", "a"), "b", "b");
        f.build_ok(&b, Run::default()).await;
        let change = || fs::write(f.context().join("a.txt"), "changed\n").unwrap();
        let events = f
            .build_ok(
                &b,
                Run {
                    after_prefetch: Some(&change),
                    ..Run::default()
                },
            )
            .await;
        assert!(f.exec.runs().is_empty(), "ran: {:?}", f.exec.runs());
        assert_eq!(events.cached(), ["a", "b"]);
        // The next build reads the file again.
        f.build_ok(&b, Run::default()).await;
        assert_eq!(f.exec.runs(), ["b"]);
    }

    #[tokio::test]
    async fn a_miss_reruns_that_step_and_what_follows_only() {
        let f = Fixture::new();
        let a = run(&State::scratch(), "a", "a");
        f.build_ok(&run(&run(&a, "b", "b"), "c", "c"), Run::default())
            .await;
        let events = f
            .build_ok(&run(&run(&a, "b2", "b"), "c", "c"), Run::default())
            .await;
        assert_eq!(f.exec.runs(), ["b2", "c"]);
        assert_eq!(events.cached(), ["a"]);
        assert_eq!(events.reason("b"), "the instruction changed");
        assert_eq!(events.reason("c"), r#"input "b" changed"#);
    }
}
