//! A dry walk of a graph: each step's cache key, computed as a build would, and whether
//! a record answers it, without running, pulling or downloading anything. A satellite
//! pool asks each member this before a build (`berth build --satellite pool:NAME`) and
//! sends the build to the one holding most of it.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use berth_oci::Digest;

use super::{Output, Solved, Solver};
use crate::fileops;
use crate::ir::{Op, State};

/// How much of a build the cache holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheProbe {
    /// Steps that run a process or copy files (RUN, COPY, ADD, WORKDIR…).
    pub steps: usize,
    /// Of those, the ones whose cache key has a record with all its layers here.
    pub cached: usize,
}

impl Solver {
    /// Seeds the content-hash cache of the context directory `dir` with `sums` (path
    /// relative to `dir` → `sha256:<hex>` of its contents), so that keys over `dir`
    /// take those contents without reading the files (which may be empty stand-ins of
    /// the right size: the cache entries are keyed by what the files are here).
    pub(crate) fn assume_sums(&self, dir: &Path, sums: &HashMap<String, String>) {
        let mut map = fileops::SumMap::new();
        for (rel, digest) in sums {
            let Ok(meta) = std::fs::symlink_metadata(dir.join(rel)) else {
                continue;
            };
            let Some(hex) = digest.strip_prefix("sha256:") else {
                continue;
            };
            map.insert(
                rel.clone(),
                fileops::CachedSum::new(&meta, format!("f {hex}")),
            );
        }
        // Marked as read already, so `save_sums` never writes it.
        self.sums.lock().expect("sums").insert(
            dir.to_path_buf(),
            (Arc::new(std::sync::Mutex::new(map.clone())), map),
        );
    }

    /// Counts the steps of `state` (and what it needs) and those the cache answers.
    /// Steps after a download or a checkout (`ADD https://…`, git) are counted as not
    /// cached: their keys depend on content fetched at build time.
    pub(crate) fn probe(&self, state: &State) -> CacheProbe {
        let mut memo: HashMap<Digest, Option<Arc<Solved>>> = HashMap::new();
        let mut count = CacheProbe::default();
        self.probe_vertex(state, &mut memo, &mut count);
        count
    }

    fn probe_vertex(
        &self,
        state: &State,
        memo: &mut HashMap<Digest, Option<Arc<Solved>>>,
        count: &mut CacheProbe,
    ) -> Option<Arc<Solved>> {
        if let Some(done) = memo.get(state.digest()) {
            return done.clone();
        }
        let v = state.vertex();
        let inputs: Vec<Option<Arc<Solved>>> = v
            .inputs
            .iter()
            .map(|i| self.probe_vertex(i, memo, count))
            .collect();
        let cacheable = matches!(v.op, Op::Exec(_) | Op::File(_));
        if cacheable {
            count.steps += 1;
        }
        let known: Option<Vec<Arc<Solved>>> = inputs.into_iter().collect();
        let solved = match (known, &v.op) {
            (None, _) | (_, Op::Http(_) | Op::Git(_)) => None,
            (Some(inputs), op) => self.cache_key(state, &inputs).ok().map(|(key, _)| {
                let output = match op {
                    Op::Local(l) => self.opts.contexts.get(&l.name).map(|p| Output::Dir {
                        path: p.clone(),
                        exclude: l.exclude.clone(),
                    }),
                    _ => None,
                };
                if cacheable && !v.ignore_cache && !self.opts.no_cache && self.has_record(&key) {
                    count.cached += 1;
                }
                Arc::new(Solved {
                    key,
                    output: output.unwrap_or(Output::Layers(Vec::new())),
                })
            }),
        };
        memo.insert(state.digest().clone(), solved.clone());
        solved
    }

    /// Whether `key` has a record whose layers are all stored, as [`Solver::lookup`]
    /// asks, without marking the record used.
    fn has_record(&self, key: &Digest) -> bool {
        has_record(&self.root, &self.store, key)
    }
}

/// Whether `key` has a record under `root` whose layers are all in `store`, without
/// marking the record used.
fn has_record(root: &Path, store: &berth_store::Store, key: &Digest) -> bool {
    #[derive(serde::Deserialize)]
    struct Record {
        layers: Vec<super::Layer>,
    }
    let Ok(bytes) = std::fs::read(root.join("cache/records").join(key.hex())) else {
        return false;
    };
    let Ok(rec) = serde_json::from_slice::<Record>(&bytes) else {
        return false;
    };
    rec.layers
        .iter()
        .all(|l| matches!(store.blob_size(&l.blob.digest), Ok(Some(_))))
}

/// The steps of the last run of build `build_id` (see [`super::build_id`]) under `root`,
/// as its step history keeps them (`cache/history/<build>/<step>`, each with its key),
/// and those whose key still has a record with its layers in `store`. Zero steps when
/// the build never ran here.
///
/// This is what a satellite pool asks of an Earthfile target, whose keys a dry walk
/// cannot compute (they come from several Earthfiles, imports and `IF`/`FOR` over
/// command output): the keys its last build here made, not those the request would
/// make, so a changed file still counts as cached until the target is built again.
pub fn probe_history(root: &Path, store: &berth_store::Store, build_id: &str) -> CacheProbe {
    #[derive(serde::Deserialize)]
    struct Entry {
        key: Digest,
    }
    let dir = root
        .join("cache/history")
        .join(Digest::sha256(build_id.as_bytes()).hex());
    let mut count = CacheProbe::default();
    let Ok(steps) = std::fs::read_dir(&dir) else {
        return count;
    };
    for step in steps.flatten() {
        let Some(entry) = std::fs::read(step.path())
            .ok()
            .and_then(|b| serde_json::from_slice::<Entry>(&b).ok())
        else {
            continue;
        };
        count.steps += 1;
        if has_record(root, store, &entry.key) {
            count.cached += 1;
        }
    }
    count
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::solver::testkit::*;

    /// A solver whose context is `dir`, for probes.
    fn probing(f: &Fixture, dir: &Path) -> Arc<Solver> {
        f.solver_on(HashMap::from([("context".to_string(), dir.to_path_buf())]))
    }

    /// Stand-ins of the context `a.txt` holding `text`: an empty file of its size, and
    /// its digest.
    fn stand_in(dir: &Path, text: &str) -> HashMap<String, String> {
        fs::create_dir_all(dir).unwrap();
        let f = fs::File::create(dir.join("a.txt")).unwrap();
        f.set_len(text.len() as u64).unwrap();
        HashMap::from([(
            "a.txt".to_string(),
            Digest::sha256(text.as_bytes()).to_string(),
        )])
    }

    #[tokio::test]
    async fn a_probe_over_stand_ins_counts_what_a_build_would_take_from_cache() {
        let f = Fixture::new();
        fs::write(f.context().join("a.txt"), "a\n").unwrap();
        let a = run(&State::scratch(), "a", "a");
        let c = run(&run_on_context(&a, "b", "b"), "c", "c");

        let cold = f.root().join("cold");
        let solver = probing(&f, &cold);
        solver.assume_sums(&cold, &stand_in(&cold, "a\n"));
        assert_eq!(
            solver.probe(&c),
            CacheProbe {
                steps: 3,
                cached: 0
            }
        );
        drop(solver);

        f.build_ok(&c, Run::default()).await;
        f.exec.clear();
        let same = f.root().join("same");
        let solver = probing(&f, &same);
        solver.assume_sums(&same, &stand_in(&same, "a\n"));
        assert_eq!(
            solver.probe(&c),
            CacheProbe {
                steps: 3,
                cached: 3
            }
        );
        drop(solver);

        // Another content of the same size: the step reading it and the one after miss.
        let changed = f.root().join("changed");
        let solver = probing(&f, &changed);
        solver.assume_sums(&changed, &stand_in(&changed, "b\n"));
        assert_eq!(
            solver.probe(&c),
            CacheProbe {
                steps: 3,
                cached: 1
            }
        );
        // Probing ran nothing.
        assert!(f.exec.runs().is_empty(), "ran: {:?}", f.exec.runs());
    }

    #[tokio::test]
    async fn the_history_probe_counts_the_last_builds_keys_that_still_have_records() {
        let f = Fixture::new();
        let store = berth_store::Store::open(f.root().join("store")).unwrap();
        // Run::default()'s build.
        let id = "project-a";
        assert_eq!(
            probe_history(&f.root(), &store, id),
            CacheProbe::default(),
            "never built"
        );
        let b = run(&run(&State::scratch(), "a", "a"), "b", "b");
        f.build_ok(&b, Run::default()).await;
        assert_eq!(
            probe_history(&f.root(), &store, id),
            CacheProbe {
                steps: 2,
                cached: 2
            }
        );
        // Another build's history is not this one's.
        assert_eq!(
            probe_history(&f.root(), &store, "other build"),
            CacheProbe::default()
        );
        // A record pruned since: its step is no longer cached.
        let records = f.root().join("cache/records");
        let first = fs::read_dir(&records).unwrap().next().unwrap().unwrap();
        fs::remove_file(first.path()).unwrap();
        assert_eq!(
            probe_history(&f.root(), &store, id),
            CacheProbe {
                steps: 2,
                cached: 1
            }
        );
    }
}
