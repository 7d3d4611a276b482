//! Running a command for its answer (Earthly's `IF`, `FOR … IN` and `$(cmd)`): the exit
//! code and standard output of an exec state, where a non-zero exit is an answer, not
//! a failed build. Nothing of the file system is kept.
//!
//! An answer is cached like a RUN's layers: under the key the same state would have as
//! a step (op, inputs' keys, context files it mounts), in `cache/captures/<key>`. The
//! same inputs give the same answer without running again; `--no-cache` (or the
//! state's `ignore_cache`) runs it anew. Standard error goes to progress as the step's
//! log, as a RUN's does.

use std::fs;
use std::sync::Arc;
use std::time::Instant;

use futures_util::future::try_join_all;
use serde::{Deserialize, Serialize};

use super::mounts::Holds;
use super::{Event, Output, Solved, Solver, io_err, write_atomic};
use crate::error::{BuildError, Result};
use crate::ir::{Op, State};

/// What a captured command gave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Captured {
    /// Its exit code (128+n for a signal n).
    pub code: i32,
    /// Its standard output.
    pub stdout: Vec<u8>,
}

impl Captured {
    /// Standard output as text, without the trailing newlines (`$(cmd)`'s value).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.stdout)
            .trim_end_matches('\n')
            .to_string()
    }
}

impl Solver {
    /// Run the exec `state` (made with [`State::run`], as for a RUN) on its solved
    /// inputs and return its exit code and standard output, from cache when a run with
    /// the same key answered before. The build does not fail on a non-zero exit; it
    /// does on what keeps the command from running (a missing secret, runc failing).
    pub async fn capture(self: &Arc<Self>, state: &State) -> Result<Captured> {
        let Op::Exec(_) = &state.vertex().op else {
            return Err(BuildError::Invalid(format!(
                "only a command can be captured, not {:?} ({})",
                state.vertex().name,
                state.digest()
            )));
        };
        let inputs: Vec<Arc<Solved>> =
            try_join_all(state.vertex().inputs.iter().map(|i| self.solve(i))).await?;
        let this = self.clone();
        let state = state.clone();
        tokio::task::spawn_blocking(move || this.capture_blocking(&state, &inputs))
            .await
            .map_err(|e| BuildError::Invalid(format!("captured command panicked: {e}")))?
    }

    fn capture_blocking(&self, state: &State, inputs: &[Arc<Solved>]) -> Result<Captured> {
        if self.opts.cancel.is_canceled() {
            return Err(BuildError::Canceled);
        }
        let v = state.vertex();
        let Op::Exec(op) = &v.op else {
            unreachable!("checked by capture")
        };
        let (key, _) = self.cache_key(state, inputs)?;
        let dir = self.root.join("cache/captures");
        let record = dir.join(key.hex());
        let id = self.step_id(state);
        let progress = &self.opts.progress;
        if !v.ignore_cache
            && !self.opts.no_cache
            && let Some(c) = fs::read(&record)
                .ok()
                .and_then(|b| serde_json::from_slice::<Captured>(&b).ok())
        {
            progress.event(Event::Cached {
                id,
                name: v.name.clone(),
            });
            return Ok(c);
        }
        let Output::Layers(below) = &inputs[0].output else {
            return Err(BuildError::Invalid(
                "a command needs a file system, not a directory".into(),
            ));
        };
        let _slot = match &self.opts.step_slots {
            Some(slots) => Some(
                slots
                    .acquire(&self.opts.cancel)
                    .ok_or(BuildError::Canceled)?,
            ),
            None => None,
        };
        progress.event(Event::Started {
            id,
            name: v.name.clone(),
        });
        let start = Instant::now();
        let active = self.prepare(below)?;
        let mut holds = Holds::default();
        let mut stdout = Vec::new();
        let ran = self.exec_process(op, inputs, &active, &mut holds, &mut |stream, data| {
            if stream == berth_exec::Stream::Stdout {
                stdout.extend_from_slice(data);
            }
            progress.event(Event::Log {
                id,
                stream,
                data: data.to_vec(),
            });
        });
        drop(holds);
        let _ = self.snapshots.remove(active);
        let code = match ran {
            Ok((code, _, _)) => code,
            Err(e) => {
                progress.event(Event::Failed {
                    id,
                    name: v.name.clone(),
                });
                return Err(e);
            }
        };
        let captured = Captured { code, stdout };
        fs::create_dir_all(&dir).map_err(|e| io_err("create directory", &dir, e))?;
        write_atomic(
            &record,
            &serde_json::to_vec(&captured).expect("captures serialise"),
        )?;
        progress.event(Event::Done {
            id,
            name: v.name.clone(),
            elapsed: start.elapsed(),
        });
        Ok(captured)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::solver::testkit::*;

    #[tokio::test]
    async fn answers_are_cached_by_key_and_a_failure_is_an_answer() {
        let f = Fixture::new();
        let base = run(&State::scratch(), "base", "base");
        let probe = base.run(exec("probe", &[]), vec![], "probe");
        let failing = base.run(exec("fail", &[]), vec![], "IF fail");
        let solver = f.solver();
        let got = solver.capture(&probe).await.unwrap();
        assert_eq!(
            got,
            Captured {
                code: 0,
                stdout: b"ran\n".to_vec()
            }
        );
        assert_eq!(got.text(), "ran");
        // `fail` exits 1 once `gated` ran: open it from another step first.
        f.exec.open();
        let gated = run(&State::scratch(), "gated", "gated");
        solver.solve(&gated).await.unwrap();
        let failed = solver.capture(&failing).await.unwrap();
        assert_eq!(failed.code, 1, "a non-zero exit is an answer");
        assert_eq!(sorted(f.exec.runs()), ["base", "fail", "gated", "probe"]);

        // Another build with the same inputs: answers from cache, nothing runs.
        f.exec.clear();
        let again = f.solver();
        assert_eq!(again.capture(&probe).await.unwrap(), got);
        assert_eq!(again.capture(&failing).await.unwrap(), failed);
        assert!(f.exec.runs().is_empty(), "{:?}", f.exec.runs());

        // Other inputs: run again.
        let other = run(&State::scratch(), "other", "other");
        let probe2 = other.run(exec("probe", &[]), vec![], "probe");
        again.capture(&probe2).await.unwrap();
        assert_eq!(sorted(f.exec.runs()), ["other", "probe"]);

        // A capture asks for a command.
        let err = again
            .capture(&base.file(
                crate::ir::FileOp {
                    actions: vec![],
                    cwd: "/".into(),
                },
                vec![],
                "COPY",
            ))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("only a command"), "{err}");
    }
}
