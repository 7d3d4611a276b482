//! [`Earthfile::dump`]: the parse in a stable one-line-per-command form, which the golden
//! tests (`tests/golden.rs`, `tests/earthfiles/`) compare.

use std::fmt::Write;

use super::ast::{Command, Earthfile, Stmt};

impl Earthfile {
    /// One line per command, blocks indented: `LINE NAME --flag=value… | arg | arg`.
    pub fn dump(&self) -> String {
        let mut out = String::new();
        if let Some(v) = &self.version {
            let _ = write!(out, "VERSION 0.{}", v.minor);
            for f in &v.features {
                let _ = write!(out, " --{f}");
            }
            out.push('\n');
        }
        out.push_str("base:\n");
        stmts(&mut out, &self.base, 1);
        for t in &self.targets {
            let _ = writeln!(out, "target {}:", t.name);
            stmts(&mut out, &t.body, 1);
        }
        for f in &self.functions {
            let _ = writeln!(out, "function {}:", f.name);
            stmts(&mut out, &f.body, 1);
        }
        out
    }
}

fn command(out: &mut String, c: &Command, depth: usize) {
    let _ = write!(out, "{}{} {}", "  ".repeat(depth), c.lines, c.name);
    for f in &c.flags {
        match &f.value {
            Some(v) => {
                let _ = write!(out, " --{}={v}", f.name);
            }
            None => {
                let _ = write!(out, " --{}", f.name);
            }
        }
    }
    for a in &c.args {
        if a.group {
            let _ = write!(out, " | ({})", a.text);
        } else {
            let _ = write!(out, " | {}", a.text);
        }
    }
    // A bad command is an error when it runs (Earthly's rule): the dump shows it.
    if let Some(err) = &c.invalid {
        let first = err.to_string();
        let _ = write!(out, "  ! {}", first.lines().next().unwrap_or(""));
    }
    out.push('\n');
}

fn stmts(out: &mut String, body: &[Stmt], depth: usize) {
    let pad = "  ".repeat(depth);
    for s in body {
        match s {
            Stmt::Command(c) => command(out, c, depth),
            Stmt::If {
                branches,
                otherwise,
            } => {
                for (head, body) in branches {
                    command(out, head, depth);
                    stmts(out, body, depth + 1);
                }
                if let Some(b) = otherwise {
                    let _ = writeln!(out, "{pad}ELSE");
                    stmts(out, b, depth + 1);
                }
                let _ = writeln!(out, "{pad}END");
            }
            Stmt::For { head, body }
            | Stmt::Wait { head, body }
            | Stmt::WithDocker { head, body } => {
                command(out, head, depth);
                stmts(out, body, depth + 1);
                let _ = writeln!(out, "{pad}END");
            }
            Stmt::Try {
                head,
                body,
                catch,
                finally,
            } => {
                command(out, head, depth);
                stmts(out, body, depth + 1);
                if let Some(b) = catch {
                    let _ = writeln!(out, "{pad}CATCH");
                    stmts(out, b, depth + 1);
                }
                if let Some(b) = finally {
                    let _ = writeln!(out, "{pad}FINALLY");
                    stmts(out, b, depth + 1);
                }
                let _ = writeln!(out, "{pad}END");
            }
        }
    }
}
