//! berth-testutil owns what every crate's tests share about prerequisites: a test whose
//! prerequisite (root, runc, overlayfs, a tool) is missing calls [`skip`], which fails the
//! test under `BERTH_TEST_STRICT=1` (as CI runs) and otherwise returns `false` after
//! recording the skip where it can be seen.
//!
//! cargo test swallows the output of passing tests, and a skipped test passes, so a
//! printed "SKIP" is never read. [`skip`] therefore also appends one line,
//! `<test binary>::<test name>` TAB `<reason>`, to the file named by
//! [`SKIP_LOG_ENV`]; `scripts/test` sets it to a fresh file and, after cargo test, prints
//! how many tests were skipped and why (`scripts/skip-summary`).
//!
//! ```
//! fn needs_runc() -> bool {
//!     std::path::Path::new("/usr/sbin/runc").exists()
//!         || berth_testutil::skip("runc is not installed (scripts/install-test-deps)")
//! }
//! ```
//!
//! A dev-dependency only: nothing here is part of berth.

#![warn(missing_docs)]

use std::io::Write;
use std::path::Path;

pub mod moto;
pub mod netns;

/// The environment variable naming the file skips are appended to.
pub const SKIP_LOG_ENV: &str = "BERTH_SKIP_LOG";

/// Whether missing prerequisites must fail the test (CI sets `BERTH_TEST_STRICT=1`).
pub fn strict() -> bool {
    std::env::var("BERTH_TEST_STRICT").is_ok_and(|v| v == "1")
}

/// Skip the running test because `why`: returns `false` (so `ready() || skip(..)` reads
/// naturally), after printing the reason and appending it to the skip log; panics under
/// `BERTH_TEST_STRICT=1`.
pub fn skip(why: &str) -> bool {
    if strict() {
        panic!("prerequisite missing under BERTH_TEST_STRICT=1: {why}");
    }
    let test = current_test();
    eprintln!("SKIP {test}: {why}");
    if let Some(log) = std::env::var_os(SKIP_LOG_ENV).filter(|v| !v.is_empty())
        && let Err(e) = record_skip(Path::new(&log), &test, why)
    {
        // The test still skips; the summary will miss it, so say so loudly.
        eprintln!(
            "berth-testutil: could not record the skip in {}: {e}",
            Path::new(&log).display()
        );
    }
    false
}

/// What scripts/make-dind-layout copies from this machine (Debian's docker.io and
/// iptables): whether all of it is here, else skip (or fail under
/// `BERTH_TEST_STRICT=1`).
pub fn require_dind_tools() -> bool {
    let missing = [
        "/bin/busybox",
        "/usr/sbin/dockerd",
        "/usr/bin/containerd",
        "/usr/bin/containerd-shim-runc-v2",
        "/usr/bin/docker",
        "/usr/sbin/xtables-nft-multi",
    ]
    .into_iter()
    .find(|p| !Path::new(p).exists());
    match missing {
        Some(p) => skip(&format!(
            "{p} is missing (scripts/install-test-deps installs docker.io, iptables and \
             busybox-static)"
        )),
        None => true,
    }
}

/// Append the line `test` TAB `why` to the skip log at `log` (tabs and line breaks in
/// either become spaces, so every skip is exactly one line).
pub fn record_skip(log: &Path, test: &str, why: &str) -> std::io::Result<()> {
    let clean = |s: &str| s.replace(['\t', '\n', '\r'], " ");
    let line = format!("{}\t{}\n", clean(test), clean(why));
    // One write of a short line to a file opened for appending: lines of tests running
    // in parallel (threads and processes) never interleave.
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?
        .write_all(line.as_bytes())
}

/// The running test as `<test binary>::<test name>`: libtest names each test's thread
/// after the test; the binary's name loses cargo's `-<hash>` suffix.
pub fn current_test() -> String {
    let binary = std::env::current_exe()
        .ok()
        .and_then(|p| Some(p.file_stem()?.to_string_lossy().into_owned()))
        .map(|stem| match stem.rsplit_once('-') {
            Some((name, hash))
                if hash.len() == 16 && hash.chars().all(|c| c.is_ascii_hexdigit()) =>
            {
                name.to_string()
            }
            _ => stem,
        })
        .unwrap_or_else(|| "?".into());
    match std::thread::current().name() {
        Some(name) if name != "main" => format!("{binary}::{name}"),
        _ => binary,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_are_appended_one_line_each() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("skips");
        record_skip(&log, "a::one", "needs root").unwrap();
        record_skip(&log, "b::two", "needs runc\n(install it)\twith\tapt").unwrap();
        assert_eq!(
            std::fs::read_to_string(&log).unwrap(),
            "a::one\tneeds root\nb::two\tneeds runc (install it) with apt\n"
        );
    }

    #[test]
    fn the_test_is_named_by_binary_and_thread() {
        let name = current_test();
        assert!(
            name.ends_with("::tests::the_test_is_named_by_binary_and_thread"),
            "{name}"
        );
        assert!(name.starts_with("berth_testutil::"), "{name}");
    }
}
