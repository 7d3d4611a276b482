//! Earthfiles on satellites (issue 9 with issue 8): `berth --satellite NAME +target` sends
//! the folder it runs in, the satellite runs the target, `SAVE ARTIFACT … AS LOCAL`
//! outputs come back as a local build writes them, saved images come down into this
//! machine's store and dockerd, `--push` pushes from the satellite. The satellite runs on
//! loopback with real runc and overlayfs; its store and the local one get the busybox
//! fixture under the name the Earthfiles use.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::satellite::{Client, Sat};
use common::*;

const EARTHFILE: &str = r#"VERSION 0.8
FROM busybox:1.36
WORKDIR /src

deps:
    RUN mkdir -p lib && echo "lib v1" > lib/core.txt && chmod 640 lib/core.txt
    SAVE ARTIFACT lib

build:
    COPY +deps/lib ./lib
    COPY hello.txt .
    RUN cat hello.txt lib/core.txt > app.txt && echo "ran the" "build step"
    SAVE ARTIFACT app.txt AS LOCAL dist/app.txt
    SAVE ARTIFACT lib AS LOCAL dist/lib
    SAVE ARTIFACT lib/* AS LOCAL dist/glob/

image:
    ARG TAG=local
    COPY +build/app.txt /app.txt
    CMD ["cat", "/app.txt"]
    SAVE IMAGE berth-test/earthsat-$TAG:1

all:
    ARG TAG=local
    BUILD +build
    BUILD +image --TAG=$TAG
    BUILD ./sub+docs

locally:
    LOCALLY
    RUN echo on the host

outside:
    BUILD ../elsewhere+x
"#;

const SUB_EARTHFILE: &str = r#"VERSION 0.8
FROM busybox:1.36

docs:
    RUN mkdir /docs && echo docs > /docs/index.txt && ln -s index.txt /docs/link
    SAVE ARTIFACT --force /docs AS LOCAL ../dist/docs
"#;

const TRY_EARTHFILE: &str = r#"VERSION --try 0.8
FROM busybox:1.36

report:
    TRY
        RUN echo fine > /report.txt
    FINALLY
        SAVE ARTIFACT /report.txt AS LOCAL ok.txt
    END
"#;

/// A project folder: the Earthfiles above and a context file.
fn project(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::create_dir_all(dir.join("tryit")).unwrap();
    std::fs::write(dir.join("Earthfile"), EARTHFILE).unwrap();
    std::fs::write(dir.join("hello.txt"), "hello\n").unwrap();
    // What the builds write is not sent back up.
    std::fs::write(dir.join(".earthlyignore"), "dist/\n").unwrap();
    std::fs::write(dir.join("sub/Earthfile"), SUB_EARTHFILE).unwrap();
    std::fs::write(dir.join("tryit/Earthfile"), TRY_EARTHFILE).unwrap();
    dir.to_path_buf()
}

/// `berth --root ROOT import -t busybox:1.36` of the busybox fixture.
fn import_busybox(base: &BuildBase, root: &Path, scratch: &Path) {
    let tar = scratch.join("busybox.tar");
    if !tar.exists() {
        run(Command::new("tar")
            .arg("-C")
            .arg(base.layout())
            .arg("-cf")
            .arg(&tar)
            .arg("."));
    }
    run(Command::new(berth_bin())
        .arg("--root")
        .arg(root)
        .args(["import", "-t", "busybox:1.36"])
        .arg(&tar));
}

/// Modification times (seconds) of every file under `dir`, relative (folders made to
/// hold outputs are dated when they were made, links when they were written).
fn mtimes(dir: &Path) -> Vec<(String, i64)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let m = std::fs::symlink_metadata(e.path()).unwrap();
            let rel = e.path().strip_prefix(dir).unwrap().display().to_string();
            if m.is_dir() {
                stack.push(e.path());
            } else if m.is_file() {
                out.push((rel, m.mtime()));
            }
        }
    }
    out.sort();
    out
}

/// Asserts that `name` holds the same tree under `local` and `remote`.
fn same_tree(local: &Path, remote: &Path, name: &str) {
    let diff = tree_diff(
        "local",
        &file_tree(&local.join(name)),
        "remote",
        &file_tree(&remote.join(name)),
    );
    assert!(
        diff.is_empty(),
        "{name}: local and remote differ: {diff:#?}"
    );
}

/// The `NAME sha256:…` line berth prints for a saved image: its image id.
fn image_id(stdout: &str, name: &str) -> String {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no line for {name} in:\n{stdout}"))
        .trim()
        .to_string()
}

struct Setup {
    dir: tempfile::TempDir,
    _base: BuildBase,
    sat: Sat,
    client: Client,
}

impl Setup {
    fn new() -> Option<Setup> {
        if !require_build() {
            return None;
        }
        let base = BuildBase::new();
        let dir = tempfile::tempdir().unwrap();
        let sat_root = dir.path().join("sat-root");
        import_busybox(&base, &sat_root, dir.path());
        let sat = Sat::on_loopback(&sat_root, &[]);
        let client = Client::new(dir.path(), "laptop", None);
        import_busybox(&base, &client.root, dir.path());
        let added = client.add("s1", &sat.token(&[]));
        assert!(added.success, "{}", added.stderr);
        Some(Setup {
            dir,
            _base: base,
            sat,
            client,
        })
    }

    /// `berth ARGS` as the client, in `cwd`.
    fn berth(&self, cwd: &Path, args: &[&str]) -> Command {
        let mut c = self.client.berth();
        c.args(args).current_dir(cwd);
        c
    }
}

#[test]
fn earthfile_on_a_satellite_writes_what_a_local_build_writes() {
    let Some(s) = Setup::new() else { return };
    if !require_docker() {
        return;
    }
    let _images = DockerImages(vec![
        "berth-test/earthsat-local:1".into(),
        "berth-test/earthsat-remote:1".into(),
    ]);
    let local = project(&s.dir.path().join("local"));
    let remote = project(&s.dir.path().join("remote"));

    let here = output_ok(&mut s.berth(
        &local,
        &[
            "--no-satellite",
            "--progress",
            "plain",
            "+all",
            "--TAG=local",
        ],
    ));
    let there = output_ok(&mut s.berth(
        &remote,
        &[
            "--satellite",
            "s1",
            "--progress",
            "plain",
            "+all",
            "--TAG=remote",
        ],
    ));
    assert!(there.stderr.contains("on satellite s1"), "{}", there.stderr);
    assert!(
        there.stderr.contains("ran the build step"),
        "the step's output is shown: {}",
        there.stderr
    );

    // The same files, modes, owners, links and dates, written where a local build
    // writes them (../dist/docs of ./sub lands in the project's dist/).
    assert_eq!(
        std::fs::read_to_string(remote.join("dist/app.txt")).unwrap(),
        "hello\nlib v1\n"
    );
    assert_eq!(
        std::fs::read_link(remote.join("dist/docs/link")).unwrap(),
        Path::new("index.txt")
    );
    assert!(remote.join("dist/glob/core.txt").is_file());
    same_tree(&local, &remote, "dist");
    assert_eq!(mtimes(&local.join("dist")), mtimes(&remote.join("dist")));
    let artifacts = there
        .stdout
        .lines()
        .filter(|l| l.contains("/dist/"))
        .count();
    assert_eq!(artifacts, 4, "{}", there.stdout);

    // The same image, fetched into this machine's store and loaded into dockerd.
    assert_eq!(
        image_id(&here.stdout, "berth-test/earthsat-local:1"),
        image_id(&there.stdout, "berth-test/earthsat-remote:1")
    );
    let ran = run(Command::new(docker()).args(["run", "--rm", "berth-test/earthsat-remote:1"]));
    assert_eq!(ran.trim(), "hello\nlib v1");
    let images = output_ok(s.client.berth().arg("images"));
    assert!(
        images.stdout.contains("berth-test/earthsat-remote"),
        "{}",
        images.stdout
    );

    // A second run is served from the satellite's cache and sends nothing new.
    std::fs::remove_dir_all(remote.join("dist")).unwrap();
    let again = output_ok(&mut s.berth(
        &remote,
        &[
            "--satellite",
            "s1",
            "--progress",
            "plain",
            "+all",
            "--TAG=remote",
        ],
    ));
    assert!(
        !again.stderr.contains("ran the build step"),
        "the RUN came from cache: {}",
        again.stderr
    );
    assert!(again.stderr.contains("CACHED"), "{}", again.stderr);
    assert!(
        again.stderr.contains(", 0 files uploaded"),
        "{}",
        again.stderr
    );
    same_tree(&local, &remote, "dist");

    // A changed context file goes up alone and the step runs again.
    std::fs::write(remote.join("hello.txt"), "hello again\n").unwrap();
    let changed = output_ok(&mut s.berth(
        &remote,
        &[
            "--satellite",
            "s1",
            "--progress",
            "plain",
            "--no-output",
            "+build",
        ],
    ));
    assert!(
        changed.stderr.contains("ran the build step"),
        "{}",
        changed.stderr
    );
    assert!(
        changed.stderr.contains(", 1 files uploaded"),
        "{}",
        changed.stderr
    );
    assert_eq!(
        std::fs::read_to_string(remote.join("dist/app.txt")).unwrap(),
        "hello\nlib v1\n",
        "--no-output writes nothing here"
    );

    // --artifact: that artifact only, placed here as a local build places it.
    output_ok(&mut s.berth(
        &remote,
        &[
            "--satellite",
            "s1",
            "--artifact",
            "+build/app.txt",
            "./got/",
        ],
    ));
    assert_eq!(
        std::fs::read_to_string(remote.join("got/app.txt")).unwrap(),
        "hello again\nlib v1\n"
    );
    for (cwd, sat) in [(&local, "--no-satellite"), (&remote, "--satellite=s1")] {
        output_ok(&mut s.berth(cwd, &[sat, "--artifact", "+deps/lib/*", "./libs"]));
    }
    same_tree(&local, &remote, "libs");
    assert!(remote.join("libs/core.txt").is_file());
}

#[test]
fn earthfile_on_a_satellite_refuses_what_would_touch_the_satellites_host() {
    let Some(s) = Setup::new() else { return };
    let proj = project(&s.dir.path().join("proj"));
    std::fs::create_dir_all(s.dir.path().join("elsewhere")).unwrap();
    std::fs::write(
        s.dir.path().join("elsewhere/Earthfile"),
        "VERSION 0.8\nFROM busybox:1.36\nx:\n    RUN true\n",
    )
    .unwrap();
    let refused = |cwd: &Path, args: &[&str], wants: &[&str]| {
        let out = output(&mut s.berth(cwd, args));
        assert!(!out.success, "{args:?} succeeded:\n{}", out.stderr);
        for w in wants {
            assert!(
                out.stderr.contains(w),
                "{args:?}: no {w:?} in:\n{}",
                out.stderr
            );
        }
        assert!(
            !out.stderr.contains("sat-root"),
            "a path of the satellite's: {}",
            out.stderr
        );
    };
    // A reference outside the folder sent: on the command line (refused here) and in
    // an Earthfile (refused by the satellite, at its line).
    refused(
        &proj,
        &["--satellite", "s1", "../elsewhere+x"],
        &["on a satellite", "--no-satellite"],
    );
    refused(
        &proj,
        &["--satellite", "s1", "+outside"],
        &["Earthfile:", "../elsewhere+x", "outside"],
    );
    // A link out of the folder is followed as the satellite sees it: outside.
    std::os::unix::fs::symlink("../elsewhere", proj.join("out-link")).unwrap();
    refused(
        &proj,
        &["--satellite", "s1", "./out-link+x"],
        &["./out-link", "No such file"],
    );
    std::fs::remove_file(proj.join("out-link")).unwrap();
    // … and a link to a folder that exists on the satellite's host (the same machine
    // here) is refused before anything there is read.
    std::os::unix::fs::symlink(s.dir.path().join("elsewhere"), proj.join("out-link")).unwrap();
    refused(
        &proj,
        &["--satellite", "s1", "./out-link+x"],
        &["outside it"],
    );
    std::fs::remove_file(proj.join("out-link")).unwrap();
    // LOCALLY would run on the satellite's host.
    refused(
        &proj,
        &["--satellite", "s1", "+locally"],
        &["Earthfile:", "LOCALLY cannot run on a satellite"],
    );
    // TRY's saves would land on the satellite: only with --no-output.
    refused(
        &proj.join("tryit"),
        &["--satellite", "s1", "+report"],
        &["Earthfile:", "--no-output"],
    );
    output_ok(&mut s.berth(
        &proj.join("tryit"),
        &["--satellite", "s1", "--no-output", "+report"],
    ));
    assert!(!proj.join("tryit/ok.txt").exists());
    // `berth build --satellite NAME ./dir+target` is the same build; `../` inside the
    // folder sent is fine.
    output_ok(&mut s.berth(
        &proj,
        &[
            "build",
            "--satellite",
            "s1",
            "--progress",
            "plain",
            "./sub+docs",
        ],
    ));
    assert_eq!(
        std::fs::read_to_string(proj.join("dist/docs/index.txt")).unwrap(),
        "docs\n"
    );
    // Nothing above wrote on the satellite's host outside its root.
    assert!(!s.dir.path().join("elsewhere/dist").exists());
}

#[test]
fn earthfile_save_image_push_goes_out_from_the_satellite_with_the_clients_credentials() {
    let Some(s) = Setup::new() else { return };
    if !require("htpasswd") || !require("skopeo") {
        return;
    }
    let reg = serve_with_user(s.dir.path(), "deployer", "s3cret-for-earth");
    let docker_cfg = s.dir.path().join("docker-config");
    s.client
        .login(&docker_cfg, &reg.addr, "deployer", "s3cret-for-earth");

    let proj = s.dir.path().join("pushproj");
    std::fs::create_dir_all(&proj).unwrap();
    std::fs::write(
        proj.join("Earthfile"),
        "VERSION 0.8\nFROM busybox:1.36\n\nimage:\n    ARG REGISTRY\n    RUN echo pushed > /msg\n    SAVE IMAGE --push $REGISTRY/earth/pushed:1\n",
    )
    .unwrap();
    let reference = format!("{}/earth/pushed:1", reg.addr);
    let arg = format!("--REGISTRY={}", reg.addr);
    let out = output_ok(
        s.berth(
            &proj,
            &["--satellite", "s1", "--no-output", "--push", "+image", &arg],
        )
        .env("DOCKER_CONFIG", &docker_cfg),
    );
    let inspect = run(Command::new("skopeo").args([
        "inspect",
        "--raw",
        "--tls-verify=false",
        "--creds",
        "deployer:s3cret-for-earth",
        &format!("docker://{reference}"),
    ]));
    let digest = format!("sha256:{}", Client::sha256_hex(inspect.as_bytes()));
    assert!(
        out.stdout
            .contains(&format!("{}/earth/pushed@{digest}", reg.addr)),
        "{}",
        out.stdout
    );
    let leaked = Command::new("grep")
        .args(["-rl", "s3cret-for-earth"])
        .arg(&s.sat.root)
        .output()
        .unwrap();
    assert!(
        leaked.stdout.is_empty(),
        "the satellite kept the password: {}",
        String::from_utf8_lossy(&leaked.stdout)
    );
    // Without credentials here, the push from the satellite is refused and says so.
    let refused = output(
        s.berth(
            &proj,
            &["--satellite", "s1", "--no-output", "--push", "+image", &arg],
        )
        .env("DOCKER_CONFIG", s.dir.path().join("no-docker-config")),
    );
    assert!(!refused.success);
    assert!(
        refused.stderr.to_lowercase().contains("auth"),
        "{}",
        refused.stderr
    );
}

#[test]
fn earthfile_on_a_satellite_takes_builtin_args_from_the_git_repository_sent() {
    let Some(s) = Setup::new() else { return };
    if !require("git") {
        return;
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/earthfiles/builtins");
    let [local, remote] = ["local", "remote"].map(|n| {
        let dst = s.dir.path().join(n);
        run(Command::new("cp").arg("-a").arg(&src).arg(&dst));
        let git = |args: &[&str]| {
            run(Command::new("git")
                .arg("-C")
                .arg(&dst)
                .args(["-c", "user.name=t", "-c", "user.email=t@example.invalid"])
                .env("GIT_COMMITTER_DATE", "@1700000000 +0000")
                .args(args));
        };
        git(&["init", "-q", "-b", "feature/x"]);
        git(&[
            "remote",
            "add",
            "origin",
            "https://git.example.invalid/org/repo.git",
        ]);
        git(&["add", "-A"]);
        git(&["commit", "-qm", "one", "--date=@1700000000"]);
        dst
    });
    output_ok(&mut s.berth(&local, &["--no-satellite", "+builtins"]));
    output_ok(&mut s.berth(&remote, &["--satellite", "s1", "+builtins"]));
    let read = |d: &Path| std::fs::read_to_string(d.join("builtins.txt")).unwrap();
    let hash = run(Command::new("git")
        .arg("-C")
        .arg(&remote)
        .args(["rev-parse", "HEAD"]));
    assert!(read(&remote).starts_with(hash.trim()), "{}", read(&remote));
    // The same commit (same tree, author, dates) in both folders: the same values.
    assert_eq!(read(&local), read(&remote));
}
