//! Golden-file tests for the Dockerfile frontend, laid out as BuildKit's parser tests are:
//!
//! - `testfiles/<case>/Dockerfile` must parse, and `Dockerfile::dump()` must equal
//!   `testfiles/<case>/result`;
//! - `testfiles-negative/<case>/Dockerfile` must fail, and the error's first line
//!   (`Dockerfile:3:1: message`) must equal `testfiles-negative/<case>/error`.
//!
//! The Earthfile frontend has the same pair, `earthfiles/<case>/{Earthfile,result}` and
//! `earthfiles-negative/<case>/{Earthfile,error}`, compared with `Earthfile::dump()`.
//!
//! `BERTH_BLESS=1 cargo test -p berth-build --test golden` rewrites the expected files
//! from the current output. Read the diff before committing it: a blessed file is only
//! right if the output was.

use std::fs;
use std::path::{Path, PathBuf};

use berth_build::frontend::earthfile::Command;
use berth_build::{Dockerfile, Earthfile};

fn cases(dir: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(dir);
    let mut cases: Vec<PathBuf> = fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("read {}: {e}", root.display()))
        .map(|entry| entry.expect("read test case").path())
        .filter(|path| path.is_dir())
        .collect();
    cases.sort();
    assert!(!cases.is_empty(), "no test cases in {}", root.display());
    cases
}

fn bless() -> bool {
    std::env::var_os("BERTH_BLESS").is_some_and(|v| v == "1")
}

fn name(case: &Path) -> String {
    case.file_name().unwrap().to_string_lossy().into_owned()
}

fn read_dockerfile(case: &Path) -> String {
    let path = case.join("Dockerfile");
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Compares `got` with the file `expected` (or rewrites it when blessing); a failure
/// message, showing both as blocks, if they differ.
fn compare(case: &Path, expected: &str, got: &str) -> Option<String> {
    let path = case.join(expected);
    if bless() {
        fs::write(&path, got).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        return None;
    }
    let want = fs::read_to_string(&path).unwrap_or_default();
    (want != got).then(|| {
        format!(
            "{}: {expected} differs\n--- expected\n{want}\n--- got\n{got}\n---",
            name(case)
        )
    })
}

#[test]
fn testfiles_parse_to_their_result() {
    let mut failures = Vec::new();
    for case in cases("testfiles") {
        match Dockerfile::parse("Dockerfile", &read_dockerfile(&case)) {
            Ok(dockerfile) => failures.extend(compare(&case, "result", &dockerfile.dump())),
            Err(err) => failures.push(format!("{}: unexpected error\n{err}", name(&case))),
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n\n"));
}

#[test]
fn negative_testfiles_fail_with_their_error() {
    let mut failures = Vec::new();
    for case in cases("testfiles-negative") {
        match Dockerfile::parse("Dockerfile", &read_dockerfile(&case)) {
            Ok(dockerfile) => failures.push(format!(
                "{}: parsed, but should fail\n{}",
                name(&case),
                dockerfile.dump()
            )),
            Err(err) => {
                let text = err.to_string();
                let first = text.lines().next().unwrap_or_default();
                failures.extend(compare(&case, "error", &format!("{first}\n")));
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n\n"));
}

fn read_earthfile(case: &Path) -> String {
    let path = case.join("Earthfile");
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

#[test]
fn earthfiles_parse_to_their_result() {
    let mut failures = Vec::new();
    for case in cases("earthfiles") {
        match Earthfile::parse("Earthfile", &read_earthfile(&case)) {
            Ok(ef) => failures.extend(compare(&case, "result", &ef.dump())),
            Err(err) => failures.push(format!("{}: unexpected error\n{err}", name(&case))),
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n\n"));
}

#[test]
fn negative_earthfiles_fail_with_their_error() {
    let mut failures = Vec::new();
    for case in cases("earthfiles-negative") {
        // A bad command is raised when its target runs (as Earthly): the first one of
        // the file stands for the error here.
        let parsed = Earthfile::parse("Earthfile", &read_earthfile(&case)).and_then(|ef| {
            let deferred = ef
                .base
                .iter()
                .chain(ef.targets.iter().chain(&ef.functions).flat_map(|r| &r.body))
                .find_map(|s| Command::of(s).invalid.as_deref().cloned());
            deferred.map_or(Ok(ef), Err)
        });
        match parsed {
            Ok(ef) => failures.push(format!(
                "{}: parsed, but should fail\n{}",
                name(&case),
                ef.dump()
            )),
            Err(err) => {
                let first = format!("{}\n", err.to_string().lines().next().unwrap_or(""));
                failures.extend(compare(&case, "error", &first));
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n\n"));
}
