//! Pools of satellites (issue 14, item 4), through the `berth` binary: `berth satellite
//! pool add/ls/rm`, and `berth build --satellite pool:NAME` (and `berth --satellite
//! pool:NAME +target`) choosing a member by the
//! cache it holds and by its load, and going to the next member when one fails before
//! the build starts. Satellites run on loopback addresses (free ports of 127.0.0.1),
//! each with its own root; one client enrolls with all of them.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;

use common::satellite::{Client, Sat, open_gate, wait_at_gate, wait_for};
use common::*;

/// A context folder `name` under `dir` holding `Dockerfile` and `files`.
fn ctx(dir: &Path, name: &str, dockerfile: &str, files: &[(&str, &str)]) -> PathBuf {
    let c = dir.join(name);
    std::fs::create_dir_all(&c).unwrap();
    std::fs::write(c.join("Dockerfile"), dockerfile).unwrap();
    for (f, text) in files {
        std::fs::write(c.join(f), text).unwrap();
    }
    c
}

/// `n` loopback satellites, and a client enrolled with each as `s1`, `s2`, ….
fn pool_of(dir: &Path, n: usize) -> (Vec<Sat>, Client) {
    let client = Client::new(dir, "laptop", None);
    let sats: Vec<Sat> = (1..=n)
        .map(|i| Sat::on_loopback(&dir.join(format!("sat{i}-root")), &[]))
        .collect();
    for (i, sat) in sats.iter().enumerate() {
        let add = client.add(&format!("s{}", i + 1), &sat.token(&[]));
        assert!(add.success, "{}", add.stderr);
    }
    (sats, client)
}

fn pool(client: &Client, args: &[&str]) -> Output {
    output(client.berth().args(["satellite", "pool"]).args(args))
}

/// The member a build ran on, as its closing line says (`… on satellite NAME of pool P`).
fn ran_on(out: &Output) -> String {
    out.stderr
        .lines()
        .find(|l| l.starts_with("built image "))
        .and_then(|l| l.split(" on satellite ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no `on satellite` in:\n{}", out.stderr))
        .to_string()
}

#[test]
fn pools_are_added_listed_and_removed_and_bad_ones_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_sats, client) = pool_of(dir.path(), 2);

    let unknown = pool(&client, &["add", "p", "s1", "ghost"]);
    assert!(!unknown.success);
    assert!(
        unknown
            .stderr
            .contains("no satellite named ghost is enrolled"),
        "{}",
        unknown.stderr
    );
    let empty = pool(&client, &["add", "p"]);
    assert!(!empty.success);
    assert!(empty.stderr.contains("SATELLITES"), "{}", empty.stderr);
    let bad_name = pool(&client, &["add", "../p", "s1"]);
    assert!(!bad_name.success);
    assert!(bad_name.stderr.contains("pool name"), "{}", bad_name.stderr);
    // Nothing was kept by the refused commands.
    let ls = pool(&client, &["ls"]);
    assert!(ls.success, "{}", ls.stderr);
    assert_eq!(ls.stdout.lines().count(), 1, "{}", ls.stdout);

    let add = pool(&client, &["add", "p", "s1"]);
    assert!(add.success, "{}", add.stderr);
    let add = pool(&client, &["add", "p", "s2", "s1"]);
    assert!(add.success, "{}", add.stderr);
    assert!(add.stderr.contains("2 member(s): s1, s2"), "{}", add.stderr);
    let ls = pool(&client, &["ls"]);
    assert!(
        ls.stdout.contains("p  ") && ls.stdout.contains("s1, s2"),
        "{}",
        ls.stdout
    );
    // The pool sits beside the enrolments and is not taken for one.
    let sat_ls = output_ok(client.berth().args(["satellite", "ls"]));
    assert_eq!(sat_ls.stdout.lines().count(), 3, "{}", sat_ls.stdout);

    // A member forgotten since is shown as such.
    output_ok(client.berth().args(["satellite", "rm", "s2"]));
    let ls = pool(&client, &["ls"]);
    assert!(ls.stdout.contains("s2 (not enrolled)"), "{}", ls.stdout);

    let ctx = ctx(dir.path(), "c", "FROM scratch\n", &[]);
    let missing = output(&mut client.build(&ctx, &["--satellite", "pool:nope"]));
    assert!(!missing.success);
    assert!(
        missing.stderr.contains("no satellite pool named nope"),
        "{}",
        missing.stderr
    );

    let unknown_default = output(client.berth().args(["satellite", "use", "pool:nope"]));
    assert!(!unknown_default.success);
    assert!(
        unknown_default
            .stderr
            .contains("no satellite pool named nope"),
        "{}",
        unknown_default.stderr
    );
    output_ok(client.berth().args(["satellite", "use", "pool:p"]));
    let rm = pool(&client, &["rm", "p"]);
    assert!(rm.success, "{}", rm.stderr);
    // Forgetting the pool in use forgets the choice too.
    let none = output(client.berth().args(["satellite", "inspect"]));
    assert!(
        none.stderr.contains("no satellite in use"),
        "{}",
        none.stderr
    );
    let again = pool(&client, &["rm", "p"]);
    assert!(!again.success);
    assert!(
        again.stderr.contains("no satellite pool named p"),
        "{}",
        again.stderr
    );
    // Its members stay enrolled.
    let sat_ls = output_ok(client.berth().args(["satellite", "ls"]));
    assert!(sat_ls.stdout.contains("s1"), "{}", sat_ls.stdout);
}

#[test]
fn builds_go_where_their_cache_is_and_new_ones_avoid_busy_members() {
    if !require_build() {
        return;
    }
    let base = BuildBase::new();
    let dir = tempfile::tempdir().unwrap();
    let (sats, client) = pool_of(dir.path(), 3);
    output_ok(
        client
            .berth()
            .args(["satellite", "pool", "add", "p", "s1", "s2", "s3"]),
    );
    let root_of = |member: &str| -> &Sat {
        let i: usize = member.trim_start_matches('s').parse().unwrap();
        &sats[i - 1]
    };

    let app = ctx(
        dir.path(),
        "app",
        &format!(
            "FROM {}\nCOPY a.txt /a\nRUN cat /a > /b\n",
            base.reference()
        ),
        &[("a.txt", "alpha\n")],
    );
    let first = output_ok(&mut client.build(&app, &["--satellite", "pool:p"]));
    let home = ran_on(&first);
    assert!(first.stderr.contains("of pool p"), "{}", first.stderr);
    assert!(
        first
            .stderr
            .contains(&format!("pool p: {home}: 0/2 steps cached")),
        "every member was asked and none had the cache: {}",
        first.stderr
    );

    // The rebuild goes back to the member with the cache, and finds it there.
    let again = output_ok(&mut client.build(&app, &["--satellite", "pool:p"]));
    assert_eq!(ran_on(&again), home, "{}", again.stderr);
    assert!(
        again
            .stderr
            .contains(&format!("pool p: {home}: 2/2 steps cached")),
        "{}",
        again.stderr
    );
    assert!(again.stderr.contains("CACHED"), "{}", again.stderr);
    assert_eq!(again.manifest(), first.manifest());

    // The same project in another folder: no member has a tree of it, so the keys come
    // from stand-ins of its files, and they are the keys its build has.
    let copy = ctx(
        dir.path(),
        "app-copy",
        &std::fs::read_to_string(app.join("Dockerfile")).unwrap(),
        &[("a.txt", "alpha\n")],
    );
    let copied = output_ok(&mut client.build(&copy, &["--satellite", "pool:p"]));
    assert_eq!(ran_on(&copied), home, "{}", copied.stderr);
    assert!(
        copied
            .stderr
            .contains(&format!("pool p: {home}: 2/2 steps cached")),
        "{}",
        copied.stderr
    );
    assert!(copied.stderr.contains("CACHED"), "{}", copied.stderr);

    // That member gets busy: a build of another project waits at a gate there.
    let gated = ctx(
        dir.path(),
        "gated",
        &format!("FROM {}\n{}\n", base.reference(), wait_at_gate("go")),
        &[],
    );
    let busy = client
        .build(&gated, &["--satellite", &home])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let home_sat = root_of(&home);
    wait_for("the gated step never started", &|| {
        home_sat.containers() == 1
    });

    // The cache still wins over load: the rebuild goes to the busy member.
    let cached = output_ok(&mut client.build(&app, &["--satellite", "pool:p"]));
    assert_eq!(ran_on(&cached), home, "{}", cached.stderr);
    assert!(
        cached.stderr.contains(&format!(
            "pool p: {home}: 2/2 steps cached, 1 builds running"
        )),
        "{}",
        cached.stderr
    );
    assert!(cached.stderr.contains("CACHED"), "{}", cached.stderr);

    // A build none holds goes to an idle member.
    let other = ctx(
        dir.path(),
        "other",
        &format!("FROM {}\nRUN echo other > /o\n", base.reference()),
        &[],
    );
    let fresh = output_ok(&mut client.build(&other, &["--satellite", "pool:p"]));
    assert_ne!(ran_on(&fresh), home, "{}", fresh.stderr);

    // A build that is wrong fails once: no member is tried after the first.
    let broken = ctx(
        dir.path(),
        "broken",
        &format!("FROM {}\nCOPPY a /a\n", base.reference()),
        &[],
    );
    let out = output(&mut client.build(&broken, &["--satellite", "pool:p"]));
    assert!(!out.success);
    assert!(
        out.stderr.contains("unknown instruction COPPY"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("trying"), "{}", out.stderr);
    assert_eq!(
        out.stderr.matches("building on satellite").count(),
        1,
        "{}",
        out.stderr
    );

    open_gate(&home_sat.root, "go");
    let out = busy.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_stopped_member_is_passed_over_and_the_build_runs_on_another() {
    if !require_build() {
        return;
    }
    let base = BuildBase::new();
    let dir = tempfile::tempdir().unwrap();
    let (mut sats, client) = pool_of(dir.path(), 2);
    output_ok(
        client
            .berth()
            .args(["satellite", "pool", "add", "p", "s1", "s2"]),
    );
    let app = ctx(
        dir.path(),
        "app",
        &format!("FROM {}\nCOPY a.txt /a\n", base.reference()),
        &[("a.txt", "alpha\n")],
    );
    sats[0].kill9();

    // Probed: s1 does not answer and goes last; s2 builds.
    let out = output_ok(&mut client.build(&app, &["--satellite", "pool:p"]));
    assert_eq!(ran_on(&out), "s2", "{}", out.stderr);
    assert!(
        out.stderr.contains("pool p: s1: no answer"),
        "{}",
        out.stderr
    );

    // An Earthfile target through the pool: its probe is answered but not counted, the
    // stopped member still goes last, and the artifact comes back here.
    let earth = dir.path().join("earth");
    std::fs::create_dir_all(&earth).unwrap();
    std::fs::write(
        earth.join("Earthfile"),
        format!(
            "VERSION 0.8\nart:\n    FROM {}\n    RUN echo from-pool > /out.txt\n    \
             SAVE ARTIFACT /out.txt AS LOCAL out.txt\n",
            base.reference()
        ),
    )
    .unwrap();
    let out = output_ok(client.berth().current_dir(&earth).args([
        "--satellite",
        "pool:p",
        "--progress",
        "plain",
        "+art",
    ]));
    assert!(
        out.stderr
            .contains("pool p: s2: cache not counted (Earthfile builds are not counted)"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("pool p: s1: no answer"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("target on satellite s2 of pool p"),
        "{}",
        out.stderr
    );
    assert_eq!(
        std::fs::read_to_string(earth.join("out.txt")).unwrap(),
        "from-pool\n"
    );

    // The pool as the default: builds without --satellite go to it.
    output_ok(client.berth().args(["satellite", "use", "pool:p"]));
    let out = output_ok(&mut client.build(&app, &[]));
    assert_eq!(ran_on(&out), "s2", "{}", out.stderr);
    assert!(out.stderr.contains("of pool p"), "{}", out.stderr);

    // Not probed (members in the pool's order): s1 fails before the build starts and
    // the build goes on to s2.
    let out = output_ok(
        client
            .build(&app, &["--satellite", "pool:p"])
            .env("BERTH_POOL_PROBE_TIMEOUT", "0"),
    );
    assert!(
        out.stderr
            .contains("satellite s1 failed before the build started"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("trying s2"), "{}", out.stderr);
    assert_eq!(ran_on(&out), "s2", "{}", out.stderr);

    // With every member down the error names each attempt.
    sats[1].kill9();
    let out = output(
        client
            .build(&app, &["--satellite", "pool:p"])
            .env("BERTH_POOL_PROBE_TIMEOUT", "0"),
    );
    assert!(!out.success);
    assert!(
        out.stderr
            .contains("no member of pool p could run the build")
            && out.stderr.contains("s1: ")
            && out.stderr.contains("s2: "),
        "{}",
        out.stderr
    );
}
