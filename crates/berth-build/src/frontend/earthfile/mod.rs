//! The Earthfile frontend, as a pipeline of modules like the Dockerfile one:
//!
//! - [`parse`]: text → [`Earthfile`]: lines (continuations, comments), recipes (the
//!   base recipe, `target:` and `FUNCTION_NAME:`), commands with their flags validated
//!   against Earthly 0.8's, and block statements (`IF`, `FOR`, `WAIT`, `WITH DOCKER`,
//!   `TRY`). Errors are [`SourceError`](crate::SourceError)s: `Earthfile:LINE:COL`.
//! - [`lower`]: an interpreter that runs the recipes of the invoked target and of every
//!   target it reaches, building the same [`ir::State`](crate::ir::State) graph as
//!   Dockerfiles do: a target's image is a chain of states, its artifacts are a second
//!   state (files copied out of the first), and `FROM +t`, `COPY +t/a` and `BUILD +t`
//!   are edges to other targets' states. The result is a [`lower::Plan`]; the solver
//!   then runs every state the output needs at once.
//! - [`fanout`]: a target whose recipe only `BUILD`s others, split into those builds
//!   (a satellite pool runs each on a member of its own).

pub mod ast;
mod dump;
pub mod fanout;
pub mod lower;
pub mod parse;

pub use ast::{Command, Earthfile, Recipe, Stmt};
pub use fanout::{FannedTarget, fan_out};

impl Earthfile {
    /// Parse `text`, naming it `file` in errors.
    pub fn parse(file: &str, text: &str) -> Result<Earthfile, crate::SourceError> {
        parse::parse(file, text)
    }
}
