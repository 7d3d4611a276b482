//! The Dockerfile frontend, as a pipeline of modules (after BuildKit's
//! `frontend/dockerfile/{parser,instructions}`):
//!
//! - [`parse`]: text → [`parse::Ast`]: parser directives, comments, line continuations,
//!   keywords, `--flags` and heredoc bodies, each node with its line range. It knows the
//!   lexical rules every instruction shares and nothing about what instructions mean.
//! - [`instructions`]: AST → [`Dockerfile`]: typed instructions, validated flags and
//!   arguments, grouped into stages. Words stay raw (quotes and `$VAR` as written).
//! - [`expand`]: shell-like word expansion, applied later by lowering, which knows which
//!   ARG and ENV values are in scope at each instruction.
//!
//! [`Dockerfile::parse`] runs the first two; [`Dockerfile::dump`] prints the result in
//! the stable one-line-per-instruction form the golden tests compare.

mod dump;
pub mod expand;
pub mod instructions;
pub mod lower;
pub mod parse;

pub use instructions::{Dockerfile, Instruction, InstructionKind, Stage};
