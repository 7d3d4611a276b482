//! berth-build owns turning build definitions into images. Today that is the front of the
//! Dockerfile frontend: reading a Dockerfile into typed, stage-grouped instructions that
//! keep their source lines, plus the shell-like word expansion the next step needs. The
//! build IR, the solver and the Earthfile frontend will join it here, and both frontends
//! will lower into the same IR.
//!
//! The frontend is a pipeline of stages, each a module of its own, after BuildKit's
//! `frontend/dockerfile/{parser,instructions}`:
//!
//! 1. [`frontend::dockerfile::parse`]: text → AST nodes (directives, continuations,
//!    comments, flags, heredocs), each with its line range.
//! 2. [`frontend::dockerfile::instructions`]: AST → typed instructions grouped into stages.
//! 3. [`frontend::dockerfile::expand`]: `$VAR`/`${VAR:-default}` expansion. Parsing keeps
//!    words raw, because which variables are in scope depends on ARG and ENV order, which
//!    only lowering knows.
//! 4. [`frontend::dockerfile::lower`]: instructions → build graph ([`ir::State`]) and
//!    image config, one function per instruction over the stage lowered so far.
//!
//! [`docker::docker_run`] makes a step that runs beside a dockerd of its own, and
//! [`Solver::capture`] answers with a command's exit code and output: the engine side
//! of Earthly's `WITH DOCKER` and `IF`/`FOR`/`$(cmd)`.
//!
//! The [`Solver`] runs the graph for one build. Its module is cut by concern: the solve
//! loop (`schedule`), cache keys and records (`cache`), why a step missed the cache
//! (`history`), RUN steps (`exec`) and their mounts (`mounts`), file operations
//! (`file`), and layers and snapshots (`snapshot`).
//!
//! ```
//! use berth_build::Dockerfile;
//!
//! let text = "ARG BASE=alpine:3.20\nFROM $BASE AS base\nRUN echo hi\n";
//! let df = Dockerfile::parse("Dockerfile", text).unwrap();
//! assert_eq!(df.meta_args.len(), 1);
//! assert_eq!(df.stages[0].name.as_deref(), Some("base"));
//! assert_eq!(df.stages[0].instructions[0].original, "RUN echo hi");
//!
//! let err = Dockerfile::parse("Dockerfile", "FROM alpine\nCOPPY . /app\n").unwrap_err();
//! assert_eq!(err.to_string().lines().next().unwrap(), "Dockerfile:2:1: unknown instruction COPPY");
//! ```
//!
//! Errors are [`SourceError`]s: `Dockerfile:12:5: message`, the offending line with a
//! caret under the column, and a hint saying what to do.

#![warn(missing_docs)]

mod bases;
mod build;
pub mod docker;
mod earthbuild;
mod error;
mod export;
mod fileops;
pub mod frontend;
pub mod image;
pub mod ir;
mod mode;
mod pattern;
pub mod platform;
mod probe;
mod prune;
mod secrets;
mod solver;
mod ssh;
mod unpack;

pub use bases::ResolvePolicy;
pub use berth_exec::Stream;
pub use berth_snapshot::Compression;
pub use build::{BuildOptions, BuildResult, OutputSpec, build, rfc3339};
pub use earthbuild::{
    EarthBuildOptions, EarthImage, EarthOutput, EarthResult, LocalOutput, LocalSink, Staging,
    earth_build, local_staging, place_local_output,
};
pub use error::{BuildError, Result};
pub use export::{Exported, export_image, export_index, export_oci_tar, export_rootfs, push_image};
pub use frontend::dockerfile::Dockerfile;
pub use frontend::dockerfile::lower::{LowerOptions, Lowered, PROXY_ARGS, lower};
pub use frontend::earthfile::Earthfile;
pub use frontend::source::{LineRange, Pos, Source, SourceError, Warning};
pub use ir::Entitlement;
pub use ir::parse_extra_host;
pub use pattern::{Ignore, Pattern};
pub use platform::Platform;
pub use probe::{ProbeOptions, probe_cache};
pub use prune::{BuildCache, CacheUsage, PruneOptions, PruneReport, cache_usage, prune};
pub use solver::{
    CacheProbe, Cancel, Captured, Event, Layer, NoProgress, Output, Progress, SecretSource,
    SolveOptions, Solved, Solver, StepSlots, build_id, probe_history,
};
pub use unpack::PullUnpack;
