//! The solve loop: each vertex is solved once (a shared future per vertex digest),
//! its inputs first and independent vertices at once; a step goes from its cache key
//! to a cache hit or a run, and reports progress on the way.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Instant;

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared, try_join_all};

use super::{Event, Output, Solved, Solver};
use crate::error::{BuildError, Result};
use crate::ir::{Op, State};

/// A vertex being solved, awaited by every vertex that needs it.
pub(super) type SharedSolve = Shared<BoxFuture<'static, Result<Arc<Solved>, Arc<BuildError>>>>;

/// A solve error shared by every vertex that waited on it, back as an owned error of
/// the same kind where the kind matters to callers (a cancel stays [`BuildError::Canceled`],
/// a failed command keeps its exit code and output).
fn unshare(e: Arc<BuildError>) -> BuildError {
    match Arc::try_unwrap(e) {
        Ok(e) => e,
        Err(e) => match &*e {
            BuildError::Canceled => BuildError::Canceled,
            BuildError::StepFailed {
                step,
                command,
                code,
                output,
            } => BuildError::StepFailed {
                step: step.clone(),
                command: command.clone(),
                code: *code,
                output: output.clone(),
            },
            BuildError::SourceNotFound(s) => BuildError::SourceNotFound(s.clone()),
            BuildError::MissingSecret(s) => BuildError::MissingSecret(s.clone()),
            BuildError::Image(s) => BuildError::Image(s.clone()),
            BuildError::Io(s) => BuildError::Io(s.clone()),
            other => BuildError::Invalid(other.to_string()),
        },
    }
}

impl Solver {
    /// Solve `state` and everything it needs.
    pub async fn solve(self: &Arc<Self>, state: &State) -> Result<Arc<Solved>> {
        self.targets.lock().expect("targets").push(state.clone());
        self.solve_shared(state).await.map_err(unshare)
    }

    /// The one solve of `state` in this build, started on first request.
    fn solve_shared(self: &Arc<Self>, state: &State) -> SharedSolve {
        let mut memo = self.memo.lock().expect("memo");
        if let Some(f) = memo.get(state.digest()) {
            return f.clone();
        }
        // The future holds the solver weakly. The memo, which the solver owns, keeps
        // futures that never finish when a build fails in one branch while another
        // still runs, or when its caller stops waiting; a strong handle in them made a
        // cycle that kept the solver, its memo and its prune lock alive for the rest of
        // the process.
        let this = Arc::downgrade(self);
        let st = state.clone();
        let fut = async move { Self::solve_vertex(this, st).await.map_err(Arc::new) }
            .boxed()
            .shared();
        memo.insert(state.digest().clone(), fut.clone());
        fut
    }

    /// The step number of `state` in this build's progress.
    pub(super) fn step_id(&self, state: &State) -> usize {
        let mut ids = self.ids.lock().expect("ids");
        *ids.entry(state.digest().clone())
            .or_insert_with(|| self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    /// Solve the inputs of `state`, then `state`. The solver is upgraded only to start
    /// work, never held across an await (see `solve_shared`). It is always there: a
    /// caller of [`Solver::solve`] holds it while anything polls these futures.
    async fn solve_vertex(this: Weak<Self>, state: State) -> Result<Arc<Solved>> {
        let gone = || BuildError::Invalid("the solver was dropped during its build".into());
        let inputs = {
            let solver = this.upgrade().ok_or_else(gone)?;
            try_join_all(state.vertex().inputs.iter().map(|i| solver.solve_shared(i)))
        };
        let inputs: Vec<Arc<Solved>> = inputs.await.map_err(unshare)?;
        let solver = this.upgrade().ok_or_else(gone)?;
        tokio::task::spawn_blocking(move || solver.solve_blocking(&state, &inputs))
            .await
            .map_err(|e| BuildError::Invalid(format!("build step panicked: {e}")))?
            .map(Arc::new)
    }

    /// Whether `state` is shown in progress (scratch is not).
    fn visible(state: &State) -> bool {
        !matches!(state.vertex().op, Op::Scratch | Op::Merge)
    }

    /// Solve `state` once its inputs are: from cache if its key has a record, else by
    /// running it and recording the result.
    fn solve_blocking(&self, state: &State, inputs: &[Arc<Solved>]) -> Result<Solved> {
        if self.opts.cancel.is_canceled() {
            return Err(BuildError::Canceled);
        }
        let v = state.vertex();
        if matches!(v.op, Op::Http(_) | Op::Git(_)) {
            return self.solve_remote(state);
        }
        let (key, ingredients) = self.cache_key(state, inputs)?;
        let visible = Self::visible(state);
        let id = if visible { self.step_id(state) } else { 0 };
        let progress = &self.opts.progress;
        // Sources are not cached results; they are cheap to (re)load.
        let cacheable = matches!(v.op, Op::Exec(_) | Op::File(_));
        if cacheable
            && !v.ignore_cache
            && !self.opts.no_cache
            && let Some(layers) = self.lookup(&key)?
        {
            progress.event(Event::Cached {
                id,
                name: v.name.clone(),
            });
            self.remember(&v.name, &key, &ingredients);
            return Ok(Solved {
                key,
                output: Output::Layers(layers),
            });
        }
        // The first miss: whatever runs next may need the executor's step network,
        // made meanwhile (an all-cached build never makes one).
        if cacheable {
            self.executor.prepare();
        }
        // Steps that run a process or copy files wait for a slot when slots are limited.
        let _slot = match (&self.opts.step_slots, cacheable) {
            (Some(slots), true) => Some(
                slots
                    .acquire(&self.opts.cancel)
                    .ok_or(BuildError::Canceled)?,
            ),
            _ => None,
        };
        if visible {
            progress.event(Event::Started {
                id,
                name: v.name.clone(),
            });
        }
        if cacheable {
            let reason = if v.ignore_cache || self.opts.no_cache {
                "--no-cache".to_string()
            } else {
                self.explain(&v.name, &ingredients)
            };
            progress.event(Event::Reason {
                id,
                name: v.name.clone(),
                reason,
            });
        }
        let start = Instant::now();
        let result = match &v.op {
            Op::Scratch => Ok(Output::Layers(Vec::new())),
            Op::Image(src) => self.load_image(&src.manifest),
            Op::Local(l) => {
                let path = self.opts.contexts.get(&l.name).cloned().ok_or_else(|| {
                    BuildError::Invalid(format!(
                        "the build uses local source {:?}, which was not given",
                        l.name
                    ))
                })?;
                Ok(Output::Dir {
                    path,
                    exclude: l.exclude.clone(),
                })
            }
            Op::Exec(e) => self.run_exec(state, id, e, inputs),
            // The step names the instruction whose files clashed or could not be read.
            Op::File(f) => self.run_file(f, inputs).map_err(|e| match e {
                BuildError::Conflict(m) => BuildError::Conflict(format!("{}: {m}", v.name)),
                BuildError::Io(m) => BuildError::Io(format!("{}: {m}", v.name)),
                e => e,
            }),
            Op::Merge => merge(inputs),
            Op::Http(_) | Op::Git(_) => unreachable!("remote sources are solved by solve_remote"),
        };
        let output = match result {
            Ok(o) => o,
            Err(e) => {
                if visible {
                    progress.event(Event::Failed {
                        id,
                        name: v.name.clone(),
                    });
                }
                return Err(e);
            }
        };
        if cacheable && let Output::Layers(layers) = &output {
            self.record(&key, layers)?;
            self.remember(&v.name, &key, &ingredients);
        }
        if visible {
            progress.event(Event::Done {
                id,
                name: v.name.clone(),
                elapsed: start.elapsed(),
            });
        }
        // A step marked to always run (Earthfile `RUN --no-cache`; not the whole build
        // under --no-cache, whose keys stay as they are) may give something new
        // each time: the steps after it are keyed by what it gave, not by its
        // definition, or they would be taken from cache over a changed input.
        let key = match (&output, v.ignore_cache && cacheable && !self.opts.no_cache) {
            (Output::Layers(layers), true) => {
                let mut doc = key.to_string();
                for l in layers {
                    doc.push_str(&l.diff_id.to_string());
                }
                berth_oci::Digest::sha256(doc.as_bytes())
            }
            _ => key,
        };
        Ok(Solved { key, output })
    }

    /// Whether the step that made `state` added a layer (`None` if it was not solved).
    pub fn added_layer(&self, state: &State) -> Option<bool> {
        let memo = self.memo.lock().expect("memo");
        let own = memo.get(state.digest())?.peek()?.as_ref().ok()?.clone();
        let input = memo
            .get(state.vertex().inputs.first()?.digest())?
            .peek()?
            .as_ref()
            .ok()?
            .clone();
        match (&own.output, &input.output) {
            (Output::Layers(a), Output::Layers(b)) => Some(a.len() > b.len()),
            _ => None,
        }
    }
}

/// The layers of `inputs`, one input after the other (nothing runs: a merge is cheap,
/// and its layers are cached in the inputs' records).
fn merge(inputs: &[Arc<Solved>]) -> Result<Output> {
    let mut layers = Vec::new();
    for i in inputs {
        match &i.output {
            Output::Layers(l) => layers.extend(l.iter().cloned()),
            Output::Dir { path, .. } => {
                return Err(BuildError::Invalid(format!(
                    "cannot merge the directory {} as layers",
                    path.display()
                )));
            }
        }
    }
    Ok(Output::Layers(layers))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::solver::Cancel;
    use crate::solver::testkit::*;

    #[tokio::test]
    async fn each_vertex_is_solved_once_however_many_paths_reach_it() {
        let f = Fixture::new();
        let base = run(&State::scratch(), "base", "base");
        let left = run(&base, "left", "left");
        let right = run(&base, "right", "right");
        // `top` reads both branches, which both read `base`.
        let top = left.run(exec("top", &[]), vec![right.clone()], "top");
        // The same vertex built again from scratch, and solved alongside.
        let left_again = run(&run(&State::scratch(), "base", "base"), "left", "left");
        assert_eq!(left_again.digest(), left.digest());
        let (results, events) = f
            .build(&[&top, &left_again, &left, &right], Run::default())
            .await;
        for r in &results {
            assert!(r.is_ok(), "{r:?}");
        }
        assert_eq!(sorted(f.exec.runs()), ["base", "left", "right", "top"]);
        assert_eq!(sorted(events.started()), ["base", "left", "right", "top"]);
        assert_eq!(results[1].as_ref().unwrap(), results[2].as_ref().unwrap());
    }

    #[tokio::test]
    async fn a_cancel_stops_new_steps_and_returns_canceled() {
        let f = Fixture::new();
        let a = run(&State::scratch(), "a", "a");
        let b = run(&a, "b", "b");
        let c = run(&b, "c", "c");
        let d = run(&c, "d", "d");
        let cancel = Cancel::default();
        *f.exec.cancel_on.lock().unwrap() = Some(("b".into(), cancel.clone()));
        let events = f.build_canceled(&d, cancel).await;
        // The step that ran finished; nothing started after the cancel.
        assert_eq!(f.exec.runs(), ["a", "b"]);
        assert_eq!(events.started(), ["a", "b"]);
    }

    #[tokio::test]
    async fn a_canceled_build_runs_nothing() {
        let f = Fixture::new();
        let cancel = Cancel::default();
        cancel.cancel();
        let step = run(&run(&State::scratch(), "a", "a"), "b", "b");
        f.build_canceled(&step, cancel).await;
        assert!(f.exec.runs().is_empty());
    }

    /// A satellite runs many builds in one process: a build that failed while another
    /// branch was still running must not leave its solver (memo, prune lock) behind.
    #[test]
    fn a_failed_build_drops_its_solver() {
        let f = Fixture::new();
        let failing = run(&State::scratch(), "fail", "fail");
        let gated = run(&State::scratch(), "gated", "gated");
        let top = failing.run(exec("top", &[]), vec![gated], "top");
        let rt = tokio::runtime::Runtime::new().unwrap();
        let solver = f.solver();
        let weak = Arc::downgrade(&solver);
        let result = rt.block_on(solver.solve(&top));
        assert!(
            matches!(result, Err(BuildError::StepFailed { code: 1, .. })),
            "{result:?}"
        );
        drop(solver);
        // `gated` still runs; once it ends (the runtime waits for it), nothing of the
        // build is left.
        f.exec.open();
        drop(rt);
        assert_eq!(sorted(f.exec.runs()), ["fail", "gated"]);
        assert!(weak.upgrade().is_none(), "the solver outlived its build");
        assert!(
            f.prune_lock_free(),
            "the failed build still holds the prune lock"
        );
    }

    /// A build whose caller stops waiting (an aborted task) drops its solver too.
    #[test]
    fn an_abandoned_build_drops_its_solver() {
        let f = Fixture::new();
        let step = run(&run(&State::scratch(), "a", "a"), "b", "b");
        let rt = tokio::runtime::Runtime::new().unwrap();
        let solver = f.solver();
        let weak = Arc::downgrade(&solver);
        let polled_once = rt.block_on(async { solver.solve(&step).now_or_never() });
        assert!(
            polled_once.is_none(),
            "the build cannot be done at its first poll"
        );
        drop(solver);
        drop(rt);
        assert!(weak.upgrade().is_none(), "the solver outlived its build");
        assert!(
            f.prune_lock_free(),
            "the abandoned build still holds the prune lock"
        );
    }

    #[test]
    fn a_shared_error_keeps_its_kind() {
        let shared = Arc::new(BuildError::Canceled);
        let _other_waiter = shared.clone();
        assert!(matches!(unshare(shared), BuildError::Canceled));
        let failed = Arc::new(BuildError::StepFailed {
            step: "s".into(),
            command: "c".into(),
            code: 3,
            output: "o".into(),
        });
        let _other_waiter = failed.clone();
        assert!(matches!(
            unshare(failed),
            BuildError::StepFailed { code: 3, .. }
        ));
    }
}
