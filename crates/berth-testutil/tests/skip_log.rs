//! A skipping test, run as cargo test runs it (its own process, output captured), leaves
//! its line in the skip log, and `scripts/skip-summary` counts it; under
//! BERTH_TEST_STRICT=1 the same test fails.

use std::path::Path;
use std::process::Command;

#[test]
#[ignore = "run by the other tests of this file, in a child process"]
fn a_test_that_skips() {
    assert!(!berth_testutil::skip(
        "needs a prerequisite this machine lacks"
    ));
}

/// Run `a_test_that_skips` in a child test process with `log` as the skip log.
fn run_skipping_test(log: &Path, strict: bool) -> std::process::Output {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--ignored", "--exact", "a_test_that_skips"])
        .env("BERTH_SKIP_LOG", log)
        .env_remove("BERTH_TEST_STRICT");
    if strict {
        cmd.env("BERTH_TEST_STRICT", "1");
    }
    cmd.output().unwrap()
}

fn summary(log: &Path) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/skip-summary");
    let out = Command::new(script).arg(log).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn skips_are_logged_and_summarised() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("skips");
    std::fs::write(&log, "").unwrap();
    assert_eq!(summary(&log), "0 tests skipped\n");

    let out = run_skipping_test(&log, false);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "skip_log::a_test_that_skips\tneeds a prerequisite this machine lacks\n"
    );
    // Two more skips of other tests, one for the same reason.
    berth_testutil::record_skip(&log, "x::other", "needs a prerequisite this machine lacks")
        .unwrap();
    berth_testutil::record_skip(&log, "y::third", "needs runc").unwrap();
    assert_eq!(
        summary(&log),
        "3 tests skipped:\n      \
         2  needs a prerequisite this machine lacks (skip_log::a_test_that_skips, x::other)\n      \
         1  needs runc (y::third)\n"
    );
}

#[test]
fn a_skip_fails_under_strict() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("skips");
    let out = run_skipping_test(&log, true);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("BERTH_TEST_STRICT=1"),
        "{out:?}"
    );
}
