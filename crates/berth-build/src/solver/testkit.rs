//! The solver driven with in-memory vertices and an executor that counts its calls
//! instead of running containers (after BuildKit's `solver/scheduler_test.go`): what is
//! asserted is how often each step ran, what came from cache and why the rest ran.
//! Snapshots and layers are real (plain directories and the content store), so no root,
//! runc or overlayfs is needed. The tests themselves sit beside the code they test.

use std::collections::HashMap;
use std::fs;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use berth_exec::{Executor, Meta, Stream};
use berth_oci::{Digest, Mount};
use berth_store::Store;

use super::{Cancel, Event, NoProgress, Progress, SolveOptions, Solver};
use crate::error::{BuildError, Result};
use crate::ir::{ExecMount, ExecOp, LocalSource, MountSource, NetworkMode, State};

/// Runs nothing: records each command and writes `/<command>.out` (holding the
/// step's environment) into the step's upper directory, so every step makes a layer.
///
/// The command `gated` waits until [`Counting::open`]; the command `fail` waits
/// until `gated` runs, then exits 1.
#[derive(Default)]
pub(super) struct Counting {
    runs: Mutex<Vec<String>>,
    /// Cancel this build while running the command named.
    pub(super) cancel_on: Mutex<Option<(String, Cancel)>>,
    /// Whether `gated` runs, and whether it may finish.
    gate: (Mutex<(bool, bool)>, std::sync::Condvar),
}

impl Counting {
    pub(super) fn runs(&self) -> Vec<String> {
        self.runs.lock().unwrap().clone()
    }

    pub(super) fn clear(&self) {
        self.runs.lock().unwrap().clear();
    }

    /// Let `gated` finish.
    pub(super) fn open(&self) {
        self.gate.0.lock().unwrap().1 = true;
        self.gate.1.notify_all();
    }
}

impl Executor for Counting {
    fn run(
        &self,
        rootfs: &[Mount],
        _mounts: &[Mount],
        meta: &Meta,
        output: &mut dyn FnMut(Stream, &[u8]),
    ) -> berth_exec::Result<i32> {
        let command = meta.args.last().cloned().unwrap_or_default();
        self.runs.lock().unwrap().push(command.clone());
        let upper = rootfs[0]
            .options()
            .iter()
            .flatten()
            .find_map(|o| o.strip_prefix("upperdir="))
            .map(PathBuf::from)
            .expect("an overlay root with an upper directory");
        fs::write(upper.join(format!("{command}.out")), meta.env.join("\n")).unwrap();
        if let Some((on, cancel)) = &*self.cancel_on.lock().unwrap()
            && *on == command
        {
            cancel.cancel();
        }
        let (gate, changed) = &self.gate;
        if command == "gated" {
            gate.lock().unwrap().0 = true;
            changed.notify_all();
            let _open = changed.wait_while(gate.lock().unwrap(), |g| !g.1).unwrap();
        }
        if command == "fail" {
            let _running = changed.wait_while(gate.lock().unwrap(), |g| !g.0).unwrap();
        }
        output(Stream::Stdout, b"ran\n");
        Ok(if command == "fail" { 1 } else { 0 })
    }
}

/// Keeps every event.
#[derive(Default)]
pub(super) struct Events(Mutex<Vec<Event>>);

impl Progress for Events {
    fn event(&self, event: Event) {
        self.0.lock().unwrap().push(event);
    }
}

impl Events {
    /// What `pick` takes from each event it matches, in order.
    pub(super) fn pick<T>(&self, pick: impl Fn(&Event) -> Option<T>) -> Vec<T> {
        self.0.lock().unwrap().iter().filter_map(pick).collect()
    }

    /// Labels of the steps that came from cache.
    pub(super) fn cached(&self) -> Vec<String> {
        self.pick(|e| match e {
            Event::Cached { name, .. } => Some(name.clone()),
            _ => None,
        })
    }

    /// Labels of the steps that started, in order, with repeats.
    pub(super) fn started(&self) -> Vec<String> {
        self.pick(|e| match e {
            Event::Started { name, .. } => Some(name.clone()),
            _ => None,
        })
    }

    /// Why the step labelled `step` ran (it must have, once).
    pub(super) fn reason(&self, step: &str) -> String {
        let found = self.pick(|e| match e {
            Event::Reason { name, reason, .. } if name == step => Some(reason.clone()),
            _ => None,
        });
        assert_eq!(
            found.len(),
            1,
            "one reason for {step:?} in {:#?}",
            self.0.lock().unwrap()
        );
        found[0].clone()
    }
}

/// A data root, a build context and the counting executor.
pub(super) struct Fixture {
    dir: tempfile::TempDir,
    pub(super) exec: Arc<Counting>,
}

/// How one build is run.
pub(super) struct Run<'a> {
    pub(super) build_id: &'a str,
    pub(super) source_date_epoch: Option<u64>,
    pub(super) no_cache: bool,
    pub(super) cancel: Cancel,
    /// Walk the context in the background first (as a cold build's unpack starts
    /// it), then call this before solving.
    pub(super) after_prefetch: Option<&'a dyn Fn()>,
}

impl Default for Run<'_> {
    fn default() -> Self {
        Run {
            build_id: "project-a",
            source_date_epoch: None,
            no_cache: false,
            cancel: Cancel::default(),
            after_prefetch: None,
        }
    }
}

impl Fixture {
    pub(super) fn new() -> Fixture {
        let f = Fixture {
            dir: tempfile::tempdir().unwrap(),
            exec: Arc::default(),
        };
        fs::create_dir(f.context()).unwrap();
        f
    }

    pub(super) fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    pub(super) fn context(&self) -> PathBuf {
        self.dir.path().join("context")
    }

    /// Solve `states` together in a fresh solver (a new build); clears the run count.
    pub(super) async fn build(
        &self,
        states: &[&State],
        run: Run<'_>,
    ) -> (Vec<Result<Digest>>, Arc<Events>) {
        self.exec.clear();
        let events = Arc::new(Events::default());
        let store = Store::open(self.root().join("store")).unwrap();
        let solver = Solver::new(
            &self.root(),
            store,
            self.exec.clone(),
            SolveOptions {
                contexts: HashMap::from([("context".to_string(), self.context())]),
                secrets: HashMap::new(),
                ssh: HashMap::new(),
                no_cache: run.no_cache,
                source_date_epoch: run.source_date_epoch,
                compression: berth_snapshot::Compression::Gzip,
                progress: events.clone(),
                cancel: run.cancel,
                build_id: run.build_id.to_string(),
                ca_bundle: None,
                step_slots: None,
                client: None,
            },
        )
        .unwrap();
        if let Some(after) = run.after_prefetch {
            let targets = states.iter().map(|s| (*s).clone());
            solver.targets.lock().unwrap().extend(targets);
            solver.prefetch_context_sums();
            after();
        }
        let results = futures_util::future::join_all(states.iter().map(|s| solver.solve(s))).await;
        let results = results
            .into_iter()
            .map(|r| r.map(|s| s.key.clone()))
            .collect();
        (results, events)
    }

    /// Solve one state; it must succeed.
    pub(super) async fn build_ok(&self, state: &State, run: Run<'_>) -> Arc<Events> {
        let (mut results, events) = self.build(&[state], run).await;
        results.remove(0).expect("the build succeeds");
        events
    }

    /// Solve one state with `cancel`; it must fail as canceled.
    pub(super) async fn build_canceled(&self, state: &State, cancel: Cancel) -> Arc<Events> {
        let run = Run {
            cancel,
            ..Run::default()
        };
        let (results, events) = self.build(&[state], run).await;
        assert!(
            matches!(results[0], Err(BuildError::Canceled)),
            "{:?}",
            results[0]
        );
        events
    }
}

pub(super) fn exec(command: &str, env: &[&str]) -> ExecOp {
    ExecOp {
        args: vec!["/bin/sh".into(), "-c".into(), command.into()],
        env: env.iter().map(|e| e.to_string()).collect(),
        cwd: "/".into(),
        user: String::new(),
        network: NetworkMode::None,
        mounts: Vec::new(),
        ..ExecOp::default()
    }
}

pub(super) fn run(on: &State, command: &str, label: &str) -> State {
    on.run(exec(command, &[]), Vec::new(), label)
}

pub(super) fn context() -> State {
    State::local(LocalSource {
        name: "context".into(),
        exclude: Vec::new(),
    })
}

/// `RUN --mount=type=bind,target=/src <command>` over the build context.
pub(super) fn run_on_context(on: &State, command: &str, label: &str) -> State {
    let mut op = exec(command, &[]);
    op.mounts.push(ExecMount {
        target: "/src".into(),
        source: MountSource::Input {
            input: 1,
            path: "/".into(),
            rw: false,
        },
    });
    on.run(op, vec![context()], label)
}

pub(super) fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

impl Fixture {
    /// A solver for a build in this fixture.
    pub(super) fn solver(&self) -> Arc<Solver> {
        self.solver_on(HashMap::new())
    }

    /// A solver for a build in this fixture over the local sources `contexts`.
    pub(super) fn solver_on(&self, contexts: HashMap<String, PathBuf>) -> Arc<Solver> {
        let store = Store::open(self.root().join("store")).unwrap();
        let opts = SolveOptions {
            contexts,
            secrets: HashMap::new(),
            ssh: HashMap::new(),
            no_cache: false,
            source_date_epoch: None,
            compression: berth_snapshot::Compression::Gzip,
            progress: Arc::new(NoProgress),
            cancel: Cancel::default(),
            build_id: "project-a".into(),
            ca_bundle: None,
            step_slots: None,
            client: None,
        };
        Solver::new(&self.root(), store, self.exec.clone(), opts).unwrap()
    }

    /// Whether `berth prune` could take the root's lock now (no build holds it).
    pub(super) fn prune_lock_free(&self) -> bool {
        let store = Store::open(self.root().join("store")).unwrap();
        let path = self.root().join("store/cache/prune.lock");
        drop(store);
        let f = fs::File::open(&path).unwrap();
        f.try_lock().is_ok()
    }
}
