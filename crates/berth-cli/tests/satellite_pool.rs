//! Pools of satellites (issue 14, item 4), through the `berth` binary: `berth satellite
//! pool add/ls/rm`, and `berth build --satellite pool:NAME` (and `berth --satellite
//! pool:NAME +target`) choosing a member by the
//! cache it holds and by its load, and going to the next member when one fails before
//! the build starts. Satellites run on loopback addresses (free ports of 127.0.0.1),
//! each with its own root; one client enrolls with all of them.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

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

    // An Earthfile target through the pool: its probe counts the steps of the target's
    // last build there (none yet), the stopped member still goes last, and the artifact
    // comes back here.
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
        out.stderr.contains("pool p: s2: never built this target"),
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

/// An Earthfile whose `+all` BUILDs two independent targets (one with an argument), each
/// writing an artifact, `+a` saving an image; `+fails` BUILDs `+a` and a failing one.
fn fan_project(dir: &Path, base: &BuildBase) -> PathBuf {
    let proj = dir.join("fan");
    std::fs::create_dir_all(&proj).unwrap();
    std::fs::write(
        proj.join("Earthfile"),
        format!(
            "VERSION 0.8\n\
             all:\n    BUILD +a\n    BUILD +b --WHO=bee\n\
             fails:\n    BUILD +a\n    BUILD +broken\n\
             a:\n    FROM {base}\n    RUN echo from-a > /a.txt\n    \
             SAVE ARTIFACT /a.txt AS LOCAL out/a.txt\n    SAVE IMAGE berth-test/pool-fan-a:1\n\
             b:\n    FROM {base}\n    ARG WHO\n    RUN echo from-$WHO > /b.txt\n    \
             SAVE ARTIFACT /b.txt AS LOCAL out/b.txt\n\
             broken:\n    FROM {base}\n    RUN echo broken-on-purpose && exit 3\n",
            base = base.reference()
        ),
    )
    .unwrap();
    proj
}

/// The members of a fanned-out build, by target, from its closing line (`built 2
/// targets on pool p (+a on s1, +b --WHO=bee on s2): …`).
fn fanned_over(out: &Output) -> Vec<(String, String)> {
    let line = out
        .stderr
        .lines()
        .find(|l| l.starts_with("built ") && l.contains(" on pool p ("))
        .unwrap_or_else(|| panic!("no closing line of a fanned-out build in:\n{}", out.stderr));
    let inside = line.split_once(" (").unwrap().1.split_once("):").unwrap().0;
    inside
        .split(", ")
        .map(|r| {
            let (t, m) = r.rsplit_once(" on ").unwrap();
            (t.to_string(), m.to_string())
        })
        .collect()
}

#[test]
fn independent_targets_spread_over_the_pool_and_go_back_to_their_cache() {
    if !require_build() || !require_docker() {
        return;
    }
    let _images = DockerImages(vec!["berth-test/pool-fan-a:1".into()]);
    let base = BuildBase::new();
    let dir = tempfile::tempdir().unwrap();
    let (_sats, client) = pool_of(dir.path(), 2);
    output_ok(
        client
            .berth()
            .args(["satellite", "pool", "add", "p", "s1", "s2"]),
    );
    let proj = fan_project(dir.path(), &base);
    let fan = |target: &str| {
        output(client.berth().current_dir(&proj).args([
            "--satellite",
            "pool:p",
            "--progress",
            "plain",
            target,
        ]))
    };

    // Nothing cached anywhere: one target on each member, both outputs here.
    let first = fan("+all");
    assert!(first.success, "{}", first.stderr);
    assert!(
        first
            .stderr
            .contains("+all: 2 independent builds over pool p"),
        "{}",
        first.stderr
    );
    let placed = fanned_over(&first);
    assert_eq!(placed.len(), 2, "{placed:?}");
    assert_eq!(placed[0].0, "+a");
    assert_eq!(placed[1].0, "+b --WHO=bee");
    assert_ne!(placed[0].1, placed[1].1, "{}", first.stderr);
    for (target, member) in &placed {
        assert!(
            first.stderr.contains(&format!(
                "pool p: {target} {member}: never built this target"
            )),
            "{}",
            first.stderr
        );
        assert!(
            first
                .stderr
                .contains(&format!("building {target} on satellite {member} (pool p)")),
            "{}",
            first.stderr
        );
    }
    // Each target's steps are shown under the member that ran them.
    let (a_on, b_on) = (&placed[0].1, &placed[1].1);
    assert!(
        first
            .stderr
            .lines()
            .any(|l| l.contains(&format!("{b_on}: ")) && l.contains("RUN echo from-$WHO")),
        "{}",
        first.stderr
    );
    assert_eq!(
        std::fs::read_to_string(proj.join("out/a.txt")).unwrap(),
        "from-a\n"
    );
    assert_eq!(
        std::fs::read_to_string(proj.join("out/b.txt")).unwrap(),
        "from-bee\n"
    );
    assert!(
        first.stdout.contains("berth-test/pool-fan-a:1 sha256:"),
        "{}",
        first.stdout
    );
    let inspect = Command::new(docker())
        .args(["image", "inspect", "berth-test/pool-fan-a:1"])
        .output()
        .unwrap();
    assert!(
        inspect.status.success(),
        "the image of +a is not in docker: {}",
        String::from_utf8_lossy(&inspect.stderr)
    );

    // The rebuild: each target goes back to the member that has its cache.
    std::fs::remove_dir_all(proj.join("out")).unwrap();
    let again = fan("+all");
    assert!(again.success, "{}", again.stderr);
    assert_eq!(fanned_over(&again), placed, "{}", again.stderr);
    for (target, member, other) in [("+a", a_on, b_on), ("+b --WHO=bee", b_on, a_on)] {
        assert!(
            again.stderr.contains(&format!(
                "pool p: {target} {member}: 2/2 steps of its last build of this target cached"
            )),
            "{}",
            again.stderr
        );
        assert!(
            again.stderr.contains(&format!(
                "pool p: {target} {other}: never built this target"
            )),
            "{}",
            again.stderr
        );
    }
    assert!(again.stderr.contains("CACHED"), "{}", again.stderr);
    assert_eq!(
        std::fs::read_to_string(proj.join("out/b.txt")).unwrap(),
        "from-bee\n"
    );

    // One target fails: the command fails and names the member it failed on.
    let failed = fan("+fails");
    assert!(!failed.success, "{}", failed.stderr);
    let broken_on = failed
        .stderr
        .lines()
        .find_map(|l| l.strip_prefix("building +broken on satellite "))
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("{}", failed.stderr))
        .to_string();
    assert!(
        failed
            .stderr
            .contains(&format!("+broken on satellite {broken_on} (pool p): ")),
        "{}",
        failed.stderr
    );
    // Only the failed target is named in the error: +a succeeded.
    let error = failed
        .stderr
        .lines()
        .find(|l| l.starts_with("berth: error:"))
        .unwrap_or_else(|| panic!("{}", failed.stderr));
    assert!(!error.contains("+a "), "{}", failed.stderr);
}

#[test]
fn independent_targets_all_go_to_the_member_that_is_up() {
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
    let proj = fan_project(dir.path(), &base);
    sats[0].kill9();
    let out = output_ok(client.berth().current_dir(&proj).args([
        "--satellite",
        "pool:p",
        "--no-output",
        "--progress",
        "plain",
        "+all",
    ]));
    assert_eq!(
        fanned_over(&out),
        [
            ("+a".to_string(), "s2".to_string()),
            ("+b --WHO=bee".to_string(), "s2".to_string())
        ],
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("pool p: +a s1: no answer"),
        "{}",
        out.stderr
    );

    // Not probed (the pool's order): s1 fails before each build starts, both go on to s2.
    let out = output_ok(
        client
            .berth()
            .current_dir(&proj)
            .args([
                "--satellite",
                "pool:p",
                "--no-output",
                "--progress",
                "plain",
                "+all",
            ])
            .env("BERTH_POOL_PROBE_TIMEOUT", "0"),
    );
    assert_eq!(
        out.stderr
            .matches("satellite s1 failed before the build")
            .count(),
        2,
        "{}",
        out.stderr
    );
    assert_eq!(
        fanned_over(&out).iter().filter(|(_, m)| m == "s2").count(),
        2,
        "{}",
        out.stderr
    );
}

/// `berth build --satellite pool:p --target api --target worker`: one build per stage,
/// at once, one per member while neither has a cache, each back to its member on a
/// rebuild; -t STAGE=NAME names a stage's image; a failing stage is named with its
/// member; several targets without a pool, or a -t without its stage, are refused.
#[test]
fn several_dockerfile_targets_spread_over_the_pool_and_go_back_to_their_cache() {
    if !require_build() {
        return;
    }
    let base = BuildBase::new();
    let dir = tempfile::tempdir().unwrap();
    let (_sats, client) = pool_of(dir.path(), 2);
    output_ok(
        client
            .berth()
            .args(["satellite", "pool", "add", "p", "s1", "s2"]),
    );
    let app = ctx(
        dir.path(),
        "stages",
        &format!(
            "FROM {b} AS api\nCOPY a.txt /a\nRUN cat /a > /api\n\n\
             FROM {b} AS worker\nCOPY w.txt /w\nRUN cat /w > /worker\n\n\
             FROM {b} AS broken\nRUN echo broken-on-purpose && exit 3\n",
            b = base.reference()
        ),
        &[("a.txt", "alpha\n"), ("w.txt", "omega\n")],
    );
    let build = |extra: &[&str]| {
        let mut args = vec!["--satellite", "pool:p"];
        args.extend_from_slice(extra);
        output(&mut client.build(&app, &args))
    };
    let both = [
        "--target",
        "api",
        "--target",
        "worker",
        "-t",
        "worker=berth-test/pool-worker:1",
    ];

    let first = build(&both);
    assert!(first.success, "{}", first.stderr);
    assert!(
        first.stderr.contains("2 targets over pool p: api, worker"),
        "{}",
        first.stderr
    );
    let placed = fanned_over(&first);
    assert_eq!(placed.len(), 2, "{placed:?}");
    assert_eq!(
        (placed[0].0.as_str(), placed[1].0.as_str()),
        ("api", "worker")
    );
    assert_ne!(placed[0].1, placed[1].1, "{}", first.stderr);
    for ((stage, member), file) in placed.iter().zip(["/a > /api", "/w > /worker"]) {
        assert!(
            first
                .stderr
                .contains(&format!("pool p: {stage} {member}: 0/2 steps cached")),
            "{}",
            first.stderr
        );
        assert!(
            first
                .stderr
                .contains(&format!("building {stage} on satellite {member} (pool p)")),
            "{}",
            first.stderr
        );
        assert!(
            first
                .stderr
                .lines()
                .any(|l| l.contains(&format!("{member}: ")) && l.contains(file)),
            "{stage}'s steps shown under {member}: {}",
            first.stderr
        );
    }
    // stdout: api's image ID, then worker's name and image ID.
    let lines: Vec<&str> = first.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", first.stdout);
    assert!(lines[0].starts_with("sha256:"), "{}", first.stdout);
    assert_eq!(lines[1], "berth-test/pool-worker:1");
    assert!(
        lines[2].starts_with("sha256:") && lines[2] != lines[0],
        "{}",
        first.stdout
    );

    // The rebuild: each stage goes back to the member with its cache.
    let again = build(&both);
    assert!(again.success, "{}", again.stderr);
    assert_eq!(fanned_over(&again), placed, "{}", again.stderr);
    let (api_on, worker_on) = (&placed[0].1, &placed[1].1);
    for (stage, member, other) in [("api", api_on, worker_on), ("worker", worker_on, api_on)] {
        assert!(
            again
                .stderr
                .contains(&format!("pool p: {stage} {member}: 2/2 steps cached")),
            "{}",
            again.stderr
        );
        assert!(
            again
                .stderr
                .contains(&format!("pool p: {stage} {other}: 0/2 steps cached")),
            "{}",
            again.stderr
        );
    }
    assert_eq!(again.stdout, first.stdout, "the same images");

    // A failing stage fails the command, named with its member; api still ran.
    let failed = build(&["--target", "api", "--target", "broken"]);
    assert!(!failed.success, "{}", failed.stderr);
    let broken_on = failed
        .stderr
        .lines()
        .find_map(|l| l.strip_prefix("building broken on satellite "))
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("{}", failed.stderr))
        .to_string();
    let error = failed
        .stderr
        .lines()
        .find(|l| l.starts_with("berth: error:"))
        .unwrap_or_else(|| panic!("{}", failed.stderr));
    assert!(
        error.contains(&format!("broken on satellite {broken_on} (pool p): ")),
        "{}",
        failed.stderr
    );
    assert!(!error.contains("api on satellite"), "{}", failed.stderr);

    // Refused before anything is sent.
    let unnamed = build(&["--target", "api", "--target", "worker", "-t", "app:1"]);
    assert!(!unnamed.success);
    assert!(
        unnamed.stderr.contains("-t api=app:1"),
        "{}",
        unnamed.stderr
    );
    let no_pool = output(&mut client.build(
        &app,
        &["--satellite", "s1", "--target", "api", "--target", "worker"],
    ));
    assert!(!no_pool.success);
    assert!(
        no_pool.stderr.contains("over a satellite pool"),
        "{}",
        no_pool.stderr
    );
    let load_unnamed = build(&["--target", "api", "--target", "worker", "--load"]);
    assert!(!load_unnamed.success);
    assert!(
        load_unnamed.stderr.contains("-t api=NAME"),
        "{}",
        load_unnamed.stderr
    );
}
