//! The build corpus: each folder of `tests/builds/` is a context with its Dockerfile,
//! built by berth and by docker (BuildKit in Debian's dockerd) from the same busybox
//! base. berth's image is pulled from `berth registry serve` and run; its file tree
//! (both the pulled image and `--output type=local`) and its config must equal docker's.
//! Heredocs, which docker 20.10 lacks, are checked by their content alone.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::*;

/// Paths that docker's container adds (`docker create` + `docker export`), or that are
/// mountpoints of a running container: left out of every comparison.
fn docker_added(path: &str) -> bool {
    const EXACT: [&str; 5] = [
        "/.dockerenv",
        "/etc/hosts",
        "/etc/hostname",
        "/etc/resolv.conf",
        // docker's init layer links it to /proc/mounts.
        "/etc/mtab",
    ];
    EXACT.contains(&path)
        || ["/dev", "/proc", "/sys"]
            .iter()
            .any(|m| path == *m || path.starts_with(&format!("{m}/")))
}

fn comparable(tree: Tree) -> Tree {
    tree.into_iter().filter(|(p, _)| !docker_added(p)).collect()
}

/// One corpus case: its folder name, arguments for both builders beside
/// `--build-arg BASE=`, and `docker run` checks of berth's image (`docker run` options,
/// then `--` and the command; the expected stdout).
struct Case {
    name: &'static str,
    args: &'static [&'static str],
    runs: &'static [(&'static [&'static str], &'static str)],
}

/// Everything a case produced.
struct Built {
    _work: tempfile::TempDir,
    _images: DockerImages,
    _server: Berth,
    /// berth's image, pulled into dockerd.
    berth_image: String,
    /// docker's build of the same Dockerfile.
    docker_image: String,
    /// berth's `--output type=local`.
    local: PathBuf,
    work: PathBuf,
    docker_tree: std::cell::OnceCell<Tree>,
}

fn ready() -> bool {
    require_build() && require_docker() && require("skopeo")
}

/// Build `case` with berth and with docker, pull berth's image and run the checks.
fn build_both(case: &Case) -> Built {
    build_both_in(case, &builds_dir().join(case.name), &[])
}

/// [`build_both`] from a copy of the case's folder that `prepare` changes first: for
/// what git cannot hold (hard links, special mode bits, empty folders).
fn build_prepared(case: &Case, prepare: impl FnOnce(&std::path::Path)) -> Built {
    let copy = tempfile::tempdir().unwrap();
    let context = copy.path().join("context");
    run(Command::new("cp")
        .arg("-a")
        .arg(builds_dir().join(case.name))
        .arg(&context));
    prepare(&context);
    build_both_in(case, &context, &[])
}

/// [`build_both`] of the context `context`, both builders run with `envs` set.
fn build_both_in(case: &Case, context: &std::path::Path, envs: &[(&str, &str)]) -> Built {
    build_both_with(case, context, envs, &[], &[])
}

/// [`build_both_in`], berth also given `berth_args` and docker `docker_args` (a base
/// image each reaches by its own reference).
fn build_both_with(
    case: &Case,
    context: &std::path::Path,
    envs: &[(&str, &str)],
    berth_args: &[String],
    docker_args: &[String],
) -> Built {
    let base = BuildBase::new();
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("root");
    let local = work.path().join("local");
    let tag = format!("corpus/{}:latest", case.name);

    let mut berth = berth_build(&root);
    berth.envs(envs.iter().copied());
    berth
        .args(["-t", &tag])
        .arg("--build-arg")
        .arg(format!("BASE={}", base.reference()))
        .arg("--output")
        .arg(format!("type=local,dest={}", local.display()));
    berth.args(case.args).args(berth_args);
    output_ok(berth.arg(context));

    let mut images = DockerImages::default();
    let server = Berth::serve(&root, &[]);
    let berth_image = format!("{}/{tag}", server.addr);
    images.0.push(berth_image.clone());
    run(Command::new(docker()).args(["pull", "-q", &berth_image]));

    // Unique per build: two tests may build one case at once.
    static BUILDS: AtomicUsize = AtomicUsize::new(0);
    let docker_image = format!(
        "berth-test/corpus-{}:{}-{}",
        case.name,
        std::process::id(),
        BUILDS.fetch_add(1, Ordering::Relaxed)
    );
    images.0.push(docker_image.clone());
    let mut build = Command::new(docker());
    build
        .envs(envs.iter().copied())
        .env("DOCKER_BUILDKIT", "1")
        .args(["build", "-q", "-t", &docker_image])
        .arg("--build-arg")
        .arg(format!("BASE={}", base.docker_reference()));
    build.args(case.args).args(docker_args);
    output_ok(build.arg(context));

    for (args, want) in case.runs {
        let got = run(Command::new(docker())
            .args(["run", "--rm"])
            .args(args.iter().take_while(|a| **a != "--"))
            .arg(&berth_image)
            .args(args.iter().skip_while(|a| **a != "--").skip(1)));
        assert_eq!(got, *want, "docker run {args:?} of berth's image");
    }
    Built {
        berth_image,
        docker_image,
        local,
        work: work.path().to_path_buf(),
        docker_tree: std::cell::OnceCell::new(),
        _work: work,
        _images: images,
        _server: server,
    }
}

impl Built {
    fn docker_tree(&self) -> &Tree {
        self.docker_tree.get_or_init(|| {
            comparable(docker_image_tree(
                &self.docker_image,
                &self.work.join("docker-tree"),
            ))
        })
    }

    /// berth's image as docker unpacks it (layers, whiteouts and all) equals docker's.
    fn assert_image_tree(&self) {
        let berth = comparable(docker_image_tree(
            &self.berth_image,
            &self.work.join("berth-tree"),
        ));
        let diff = tree_diff("berth image", &berth, "docker", self.docker_tree());
        assert!(diff.is_empty(), "file trees differ:\n{}", diff.join("\n"));
    }

    /// berth's `--output type=local` equals docker's image.
    fn assert_local_tree(&self) {
        let local = comparable(file_tree(&self.local));
        let diff = tree_diff("berth local", &local, "docker", self.docker_tree());
        assert!(diff.is_empty(), "file trees differ:\n{}", diff.join("\n"));
    }

    /// The image configs agree, but for `ArgsEscaped`, which docker's builder sets and
    /// the image spec reserves for Windows.
    fn assert_same_config(&self) {
        let berth = inspect_config(&self.berth_image);
        let docker = inspect_config(&self.docker_image);
        assert_eq!(
            berth, docker,
            "docker inspect .Config: berth's image (left) vs docker's (right)"
        );
    }
}

/// `docker inspect`'s `.Config` of `image`, with its `.Author` (which MAINTAINER sets) as
/// `Author` beside the config's own fields.
fn inspect_config(image: &str) -> serde_json::Value {
    let out = run(Command::new(docker()).args([
        "inspect",
        "--format",
        "{{json .Config}}\n{{json .Author}}",
        image,
    ]));
    let (config, author) = out.trim().split_once('\n').unwrap();
    let mut config: serde_json::Value = serde_json::from_str(config).unwrap();
    if let Some(c) = config.as_object_mut() {
        c.remove("ArgsEscaped");
        c.insert("Author".into(), serde_json::from_str(author).unwrap());
    }
    config
}

/// Build, run, and compare trees and config.
fn check(case: &Case) {
    check_prepared(case, |_| {});
}

/// [`check`] of a context that `prepare` changes first (see [`build_prepared`]).
fn check_prepared(case: &Case, prepare: impl FnOnce(&std::path::Path)) {
    if !ready() {
        return;
    }
    let built = build_prepared(case, prepare);
    built.assert_image_tree();
    built.assert_local_tree();
    built.assert_same_config();
}

#[test]
fn multi_stage() {
    check(&Case {
        name: "multi_stage",
        args: &[],
        runs: &[(&[], "left\nright\ndeep\n")],
    });
}

#[test]
fn deletions_opaque() {
    check(&Case {
        name: "deletions_opaque",
        args: &[],
        runs: &[
            (&[], "new\ngone-ok\nuname-ok\nfresh\n"),
            (&["--", "cat", "/data/keep/k"], "k\n"),
        ],
    });
}

#[test]
fn permissions() {
    check(&Case {
        name: "permissions",
        args: &[],
        runs: &[
            (&[], "65534\nwritten by 65534:65534\n"),
            (
                &["--user", "1000", "--", "/opt/script.sh"],
                "script ran as 1000\n",
            ),
        ],
    });
}

#[test]
fn links() {
    check(&Case {
        name: "links",
        args: &[],
        runs: &[(&[], "target\ntarget\ntarget\ntarget\nin-tree\n")],
    });
}

const HARDLINKS: Case = Case {
    name: "hardlinks",
    args: &[],
    runs: &[(&[], "target\nsame-layer\nsame-layer\n")],
};

#[test]
fn hardlinks() {
    if !ready() {
        return;
    }
    let built = build_both(&HARDLINKS);
    built.assert_image_tree();
    built.assert_same_config();
}

#[test]
fn hardlinks_in_local_output() {
    if !ready() {
        return;
    }
    build_both(&HARDLINKS).assert_local_tree();
}

#[test]
fn dockerignore() {
    check(&Case {
        name: "dockerignore",
        args: &[],
        runs: &[(
            &[],
            "/ctx\n/ctx/build\n/ctx/build/important.txt\n/ctx/docs\n/ctx/docs/readme.md\n\
             /ctx/keep.txt\n/ctx/logs\n/ctx/logs/keep.log\n/ctx/logs/notes.txt\n/ctx/nested\n\
             /ctx/nested/deep\n/ctx/nested/y.txt\n",
        )],
    });
}

#[test]
fn arg_scoping() {
    if !ready() {
        return;
    }
    let case = Case {
        name: "arg_scoping",
        args: &["--build-arg", "WHO=berth"],
        runs: &[(
            &[],
            "hello berth\n\
             hello berth global=unset not_kept=build-time-only\n\
             greeting=unset global=unset\n\
             not_kept=absent\n",
        )],
    };
    let built = build_both(&case);
    built.assert_image_tree();
    built.assert_local_tree();
    built.assert_same_config();
    let env = inspect_config(&built.berth_image)["Env"].clone();
    assert_eq!(
        env,
        serde_json::json!([
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "MESSAGE=hello berth"
        ]),
        "only ENV is kept in the image, no ARG"
    );
}

#[test]
fn image_config() {
    if !ready() {
        return;
    }
    let case = Case {
        name: "image_config",
        args: &[],
        runs: &[(&[], "entry arg1\n/app/sub\n1000\na b c\n")],
    };
    let built = build_both(&case);
    built.assert_same_config();
    built.assert_image_tree();
    built.assert_local_tree();
    let config = inspect_config(&built.berth_image);
    assert_eq!(config["User"], "1000:1000");
    assert_eq!(config["WorkingDir"], "/app/sub");
    assert_eq!(config["StopSignal"], "SIGTERM");
    assert_eq!(
        config["ExposedPorts"],
        serde_json::json!({"8080/tcp": {}, "9090/udp": {}})
    );
    assert_eq!(
        config["Volumes"],
        serde_json::json!({"/data": {}, "/cache": {}})
    );
    assert_eq!(
        config["Labels"],
        serde_json::json!({"org.example.name": "corpus", "org.example.multi": "a b"})
    );
    assert_eq!(config["Cmd"], serde_json::json!(["arg1"]));
}

#[test]
fn workdir_user() {
    check(&Case {
        name: "workdir_user",
        args: &[],
        runs: &[(&[], "/tmp\n/home/nobody/work\n")],
    });
}

#[test]
fn copy_semantics() {
    check(&Case {
        name: "copy_semantics",
        args: &[],
        runs: &[(&[], "a\na\nb\n")],
    });
}

#[test]
fn add_archive() {
    check(&Case {
        name: "add_archive",
        args: &[],
        runs: &[(&[], "inside\n")],
    });
}

#[test]
fn shell_healthcheck() {
    check(&Case {
        name: "shell_healthcheck",
        args: &[],
        runs: &[(&[], "shell form\nshell=/bin/sh opts=ce\n")],
    });
}

#[test]
fn type_changes() {
    check(&Case {
        name: "type_changes",
        args: &[],
        runs: &[(&[], "now-a-file\nnow-inside\nnow-inside\nregular\n")],
    });
}

#[test]
fn target_stage() {
    check(&Case {
        name: "target_stage",
        args: &["--target", "second"],
        runs: &[(&[], "first\nsecond\nfirst\n")],
    });
}

#[test]
fn env_expansion() {
    check(&Case {
        name: "env_expansion",
        args: &[],
        runs: &[(&[], "two one two-one fallback set $A\n/w/two\none\n")],
    });
}

/// A case docker 20.10 cannot build, built by berth alone: its `--output type=local`
/// and its image, pulled into dockerd from `berth registry serve`.
struct BerthOnly {
    _work: tempfile::TempDir,
    _server: Berth,
    _images: DockerImages,
    local: PathBuf,
    image: String,
}

impl BerthOnly {
    fn build(name: &str) -> BerthOnly {
        let base = BuildBase::new();
        let work = tempfile::tempdir().unwrap();
        let root = work.path().join("root");
        let local = work.path().join("local");
        let tag = format!("corpus/{name}:latest");
        output_ok(
            berth_build(&root)
                .args(["-t", &tag, "--build-arg"])
                .arg(format!("BASE={}", base.reference()))
                .arg("--output")
                .arg(format!("type=local,dest={}", local.display()))
                .arg(builds_dir().join(name)),
        );
        let server = Berth::serve(&root, &[]);
        let image = format!("{}/{tag}", server.addr);
        let images = DockerImages(vec![image.clone()]);
        run(Command::new(docker()).args(["pull", "-q", &image]));
        BerthOnly {
            _work: work,
            _server: server,
            _images: images,
            local,
            image,
        }
    }

    fn read(&self, path: &str) -> String {
        std::fs::read_to_string(self.local.join(path)).unwrap()
    }

    /// `docker run` of the image with its own command: the output.
    fn run(&self) -> String {
        run(Command::new(docker()).args(["run", "--rm", &self.image]))
    }
}

/// Heredocs: berth only (docker 20.10's builder has none), checked by content.
#[test]
fn heredocs() {
    if !ready() {
        return;
    }
    let built = BerthOnly::build("heredocs");
    assert_eq!(built.read("run-heredoc.txt"), "line1\nhi berth\n");
    assert_eq!(built.read("run-sh.txt"), "via sh\n");
    assert_eq!(
        built.read("copied.txt"),
        "name=berth\n",
        "unquoted delimiter expands"
    );
    assert_eq!(
        built.read("raw.txt"),
        "name=$NAME\n",
        "quoted delimiter keeps $NAME"
    );
    assert_eq!(
        built.run(),
        "line1\nhi berth\nvia sh\nname=berth\nname=$NAME\n"
    );
}

// ---- COPY/ADD and context (issue 15)

/// Set `mode` (with special bits) on `path` below `dir`.
fn chmod(dir: &std::path::Path, path: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.join(path), std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn add_compressed() {
    check(&Case {
        name: "add_compressed",
        args: &[],
        runs: &[(&[], "inside\ninside\ninside\n")],
    });
}

#[test]
fn add_not_archive() {
    check(&Case {
        name: "add_not_archive",
        args: &[],
        runs: &[(&[], "{\"a\":1}\nnote\nnot a tar\n")],
    });
}

#[test]
fn copy_empty_glob() {
    check(&Case {
        name: "copy_empty_glob",
        args: &[],
        runs: &[(&[], "a.txt\nb.md\nno-none\n")],
    });
}

#[test]
fn copy_several_to_file() {
    check(&Case {
        name: "copy_several_to_file",
        args: &[],
        runs: &[(&[], "b\n2\n")],
    });
}

#[test]
fn copy_chown_id() {
    check(&Case {
        name: "copy_chown_id",
        args: &[],
        runs: &[(
            &[],
            "4321:4321 /out/id/f\n1500:1600 /out/name/f\n0:1700 /out/group-only/f\n",
        )],
    });
}

#[test]
fn copy_dest_symlink() {
    check(&Case {
        name: "copy_dest_symlink",
        args: &[],
        runs: &[(&[], "new\nnew\nnew\nnew\nt\n")],
    });
}

#[test]
fn dockerignore_exception() {
    check(&Case {
        name: "dockerignore_exception",
        args: &[],
        runs: &[(
            &[],
            "/ctx\n/ctx/.dockerignore\n/ctx/Dockerfile\n/ctx/docs\n/ctx/src\n\
             /ctx/src/debug\n/ctx/src/debug/important.log\n/ctx/src/main.rs\n",
        )],
    });
}

#[test]
fn copy_links_independent() {
    check_prepared(
        &Case {
            name: "copy_links_independent",
            args: &[],
            runs: &[(&[], "content\ncontent\n")],
        },
        |ctx| {
            std::fs::hard_link(ctx.join("a"), ctx.join("a2")).unwrap();
            std::os::unix::fs::symlink("a", ctx.join("b")).unwrap();
            std::fs::hard_link(ctx.join("dir/x"), ctx.join("dir/y")).unwrap();
        },
    );
}

#[test]
fn copy_globs() {
    check(&Case {
        name: "copy_globs",
        args: &[],
        runs: &[(
            &[],
            "/g\n/g/class\n/g/class/a1.txt\n/g/class/a2.txt\n/g/dirs\n/g/dirs/deep\n\
             /g/dirs/deep/x.txt\n/g/dirs/x.txt\n/g/doublestar\n/g/doublestar/x.txt\n\
             /g/middle\n/g/middle/x.txt\n/g/negclass\n/g/negclass/a1.txt\n/g/question\n\
             /g/question/a1.txt\n/g/question/a2.txt\n/g/question/ab.txt\n/g/space\n\
             /g/space/sp ace.txt\n/g/star\n/g/star/.hidden.txt\n/g/star/a1.txt\n\
             /g/star/a2.txt\n/g/star/ab.txt\n/g/star/lit[1].txt\n/g/star/sp ace.txt\n",
        )],
    });
}

#[test]
fn copy_source_symlinks() {
    if !ready() {
        return;
    }
    let built = build_both(&Case {
        name: "copy_source_symlinks",
        args: &[],
        runs: &[],
    });
    built.assert_image_tree();
    built.assert_local_tree();
    built.assert_same_config();
    let tree = built.docker_tree();
    assert_eq!(
        tree["/s/file-link"].kind, "file",
        "a top-level link is followed"
    );
    assert_eq!(
        tree["/s/real/dangling"].kind, "symlink",
        "links inside are kept"
    );
    assert!(
        tree.contains_key("/s/dir/r"),
        "a folder link copies its contents"
    );
}

#[test]
fn copy_modes() {
    check_prepared(
        &Case {
            name: "copy_modes",
            args: &[],
            runs: &[(
                &[],
                "4755 0:0 /m/plain/suid\n1770 1234:5678 /m/from/d\n4711 1234:5678 /m/from/d/f\n",
            )],
        },
        |ctx| {
            chmod(ctx, "suid", 0o4755);
            chmod(ctx, "sgid", 0o2711);
            chmod(ctx, "exec.sh", 0o555);
            chmod(ctx, "ro", 0o400);
            chmod(ctx, "tree/sub", 0o1777);
            chmod(ctx, "tree", 0o700);
            // Docker's context transfer leaves fifos out.
            run(Command::new("mkfifo").arg(ctx.join("tree/pipe")));
        },
    );
}

#[test]
fn dockerignore_patterns() {
    check(&Case {
        name: "dockerignore_patterns",
        args: &[],
        runs: &[(
            &[],
            "/ctx\n/ctx/a\n/ctx/a/a.md\n/ctx/a/b\n/ctx/a/b/b.md\n/ctx/a/b/c\n/ctx/a/b/c/c.md\n\
             /ctx/keep\n/ctx/keep/k.tmp\n/ctx/keep/k.txt\n/ctx/q22.cfg\n/ctx/xa\n/ctx/xa/f\n",
        )],
    });
}

#[test]
fn copy_dest_rules() {
    check(&Case {
        name: "copy_dest_rules",
        args: &[],
        runs: &[(
            &[],
            "/deep\n/deep/new\n/deep/new/parents\n/deep/new/parents/d\n/deep/new/parents/sub\n\
             /deep/new/parents/sub/s\n/exists\n/exists/d\n/exists/f.txt\n/exists/keep\n\
             /exists/keep/k\n/exists/sub\n/exists/sub/s\n/to\n/to/dir\n/to/dir/f.txt\n\
             /to/renamed\n/work\n/work/f.txt\n/work/rel\n/work/rel/d\n/work/rel/sub\n\
             /work/rel/sub/s\n/work/sub\n/work/sub/f.txt\n/work/two\n/work/up.txt\nd\n",
        )],
    });
}

#[test]
fn copy_from_whiteouts() {
    check(&Case {
        name: "copy_from_whiteouts",
        args: &[],
        runs: &[(
            &[],
            "/copied-old\n/copied-old/new\n/data\n/data/keep\n/data/keep/base\n/data/old\n\
             /data/old/new\n",
        )],
    });
}

/// `COPY --parents`, `--exclude` and `--link`: berth only (docker 20.10's builder has
/// none of them), checked against BuildKit's documented behaviour.
#[test]
fn copy_new_flags() {
    if !ready() {
        return;
    }
    let built = BerthOnly::build("copy_new_flags");
    assert_eq!(
        built.run(),
        "/added\n/added/app\n/added/app/main.rs\n/added/app/sub\n/added/app/sub/mod.rs\n\
         /added/lib\n/added/lib/lib.rs\n/assets\n/assets/logo.png\n/glob\n/glob/src\n\
         /glob/src/app\n/glob/src/app/main.rs\n/glob/src/lib\n/glob/src/lib/lib.rs\n\
         /linkdir\n/linkdir/a.txt\n/no-parents\n/no-parents/a.txt\n/parents\n/parents/x\n\
         /parents/x/a.txt\n/parents/y\n/parents/y/a.txt\n/pivot\n/pivot/app\n\
         /pivot/app/main.rs\n/pivot/app/sub\n/pivot/app/sub/mod.rs\n/real\n/sym\n/sym/lib\n\
         /sym/lib/x\n/sym/run.sh\n"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &str| {
        std::fs::metadata(built.local.join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    // 0644 files: u+x 0744, g=u 0774, o-r 0770; the 0755 folder: 0771.
    assert_eq!(mode("sym/run.sh"), 0o770);
    assert_eq!(mode("sym/lib/x"), 0o770);
    assert_eq!(mode("sym/lib"), 0o771);
    assert_eq!(
        built.read("no-parents/a.txt"),
        "ya\n",
        "the last source wins"
    );
    assert_eq!(built.read("parents/x/a.txt"), "xa\n");
    let linkdir = std::fs::symlink_metadata(built.local.join("linkdir")).unwrap();
    assert!(
        linkdir.is_dir(),
        "--link does not follow the stage's symlink"
    );
}

/// Heredocs copied as COPY copies: berth only, checked by content.
#[test]
fn copy_heredoc_dest() {
    if !ready() {
        return;
    }
    let built = BerthOnly::build("copy_heredoc_dest");
    assert_eq!(built.run(), "keep\ninto the folder\nthrough the link\nb\n");
    let link = std::fs::symlink_metadata(built.local.join("etc/app.conf")).unwrap();
    assert!(link.is_symlink(), "the link stays");
}

/// Every folder of the corpus has a test here.
#[test]
fn every_case_has_a_test() {
    let source = include_str!("build_corpus.rs");
    for entry in std::fs::read_dir(builds_dir()).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        assert!(
            source.contains(&format!("\"{name}\"")),
            "tests/builds/{name} has no test in build_corpus.rs"
        );
    }
}

// ---- variables, config, RUN (issue 15)

#[test]
fn vars_parent_stage_args() {
    check(&Case {
        name: "vars_parent_stage_args",
        args: &[],
        runs: &[(
            &[],
            "arg=inherited global=global-default env=penv\n\
             redeclared=inherited\n\
             grandchild=inherited\n",
        )],
    });
}

#[test]
fn vars_arg_after_env() {
    if !ready() {
        return;
    }
    let built = build_both(&Case {
        name: "vars_arg_after_env",
        args: &[],
        runs: &[(
            &[],
            "run mode=from-arg keep=env-keep\n\
             later=env-again copied=from-arg\n\
             PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n\
             KEEP=env-keep\nMODE=from-arg\nCOPIED=from-arg\nLATER=env-again\nHOME=/root\n\
             image mode=from-env\n",
        )],
    });
    built.assert_image_tree();
    built.assert_local_tree();
    built.assert_same_config();
    assert_eq!(
        inspect_config(&built.berth_image)["Env"],
        serde_json::json!([
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "MODE=from-env",
            "KEEP=env-keep",
            "LATER=env-again",
            "COPIED=from-arg"
        ]),
        "the image keeps the ENV values"
    );
}

#[test]
fn vars_env_order() {
    if !ready() {
        return;
    }
    let built = build_both(&Case {
        name: "vars_env_order",
        args: &[],
        // A step's variables are ordered by when each was last set; the image's Env
        // keeps each where it was first set.
        runs: &[(
            &[],
            "THIRD=3\nFIRST=one\n\
             PATH=/opt/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n\
             SECOND=two\nFOURTH=4\nHOME=/root\n",
        )],
    });
    built.assert_image_tree();
    built.assert_same_config();
    assert_eq!(
        inspect_config(&built.berth_image)["Env"],
        serde_json::json!([
            "PATH=/opt/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "FIRST=one",
            "SECOND=two",
            "THIRD=3",
            "FOURTH=4"
        ])
    );
}

#[test]
fn config_maintainer() {
    if !ready() {
        return;
    }
    let built = build_both(&Case {
        name: "config_maintainer",
        args: &[],
        runs: &[],
    });
    built.assert_same_config();
    assert_eq!(
        inspect_config(&built.berth_image)["Author"],
        "Jane Doe <jane@example.com>"
    );
}

/// `docker history`'s CREATED BY column, newest first, down to the base's entries.
fn history(image: &str, ours: usize) -> Vec<String> {
    let out = run(Command::new(docker()).args([
        "history",
        "--no-trunc",
        "--format",
        "{{.CreatedBy}}",
        image,
    ]));
    out.lines().take(ours).map(str::to_string).collect()
}

#[test]
fn history_created_by() {
    if !ready() {
        return;
    }
    let built = build_both(&Case {
        name: "history_created_by",
        args: &[],
        runs: &[],
    });
    built.assert_same_config();
    // The Dockerfile's 14 instructions after FROM: RUN with the stage's ARGs and argv,
    // COPY and ADD without flags, SHELL as a Go list, ARGs themselves.
    let berth = history(&built.berth_image, 14);
    assert_eq!(berth, history(&built.docker_image, 14));
    assert_eq!(
        berth[3],
        "RUN |2 A=9 B= /bin/sh -e -c echo three # buildkit"
    );
}

#[test]
fn config_expose_ranges() {
    if !ready() {
        return;
    }
    let built = build_both(&Case {
        name: "config_expose_ranges",
        args: &[],
        runs: &[],
    });
    built.assert_same_config();
    let ports = inspect_config(&built.berth_image)["ExposedPorts"].clone();
    let keys: Vec<&String> = ports.as_object().unwrap().keys().collect();
    assert_eq!(
        keys,
        [
            "443/tcp", "53/udp", "7000/udp", "7001/udp", "8000/tcp", "8001/tcp", "8002/tcp",
            "9000/tcp", "9001/tcp"
        ]
    );
}

#[test]
fn run_user_groups() {
    check(&Case {
        name: "run_user_groups",
        args: &[],
        // Docker 20.10's BuildKit gives a step no supplementary group for its primary
        // group (newer BuildKit adds it, as `docker run` does on the last line).
        runs: &[(
            &[],
            "id-app: uid=1000(app) gid=1000(app) groups=50(staff),63(audio)\n\
             id-app-staff: uid=1000(app) gid=50(staff)\n\
             id-1000: uid=1000(app) gid=1000(app) groups=50(staff),63(audio)\n\
             id-1000-1000: uid=1000(app) gid=1000(app)\n\
             id-app-64: uid=1000(app) gid=64(video)\n\
             uid=1000(app) gid=1000(app) groups=50(staff),63(audio),1000(app)\n",
        )],
    });
}

#[test]
fn run_secret_options() {
    check(&Case {
        name: "run_secret_options",
        args: &[
            "--secret",
            "id=tok,src=tests/builds/run_secret_options/token.txt",
        ],
        runs: &[(
            &[],
            "/run/secrets/tok 400 0:0\n\
             /run/secrets/tok 440 1234:2345\n\
             s3cr3t\n\
             /tok 400 0:0\n\
             absent\n",
        )],
    });
}

fn ssh_ready() -> bool {
    ready() && require("ssh-agent") && require("ssh-keygen") && require("gcc")
}

/// `RUN --mount=type=ssh` with `--ssh default`, against a real agent: the step asks it
/// for its keys through the forwarded socket (agent-ask, a static helper: busybox has no
/// unix-socket client).
#[test]
fn run_ssh() {
    if !ssh_ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let context = run_ssh_context(dir.path());
    let agent = Agent::start(dir.path());
    let sock = agent.socket.to_str().unwrap();
    let case = Case {
        name: "run_ssh",
        args: &["--ssh", "default"],
        runs: &[(
            &["--network", "none"],
            "agent answered: 1 key(s)\n\
             sock=/run/buildkit/ssh_agent.0\n\
             socket 600 0:0\n\
             agent answered: 1 key(s)\n\
             /tmp/agent.sock socket 660 1000:1000\n\
             agent answered: 1 key(s)\n\
             absent\n",
        )],
    };
    let built = build_both_in(&case, &context, &[("SSH_AUTH_SOCK", sock)]);
    built.assert_image_tree();
    built.assert_local_tree();
    built.assert_same_config();
}

/// A step that requires an agent fails, saying how to give one, when none was given.
#[test]
fn run_ssh_required_without_agent() {
    if !ready() {
        return;
    }
    let base = BuildBase::new();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("Dockerfile"),
        "ARG BASE\nFROM $BASE\nRUN --mount=type=ssh,required true\n",
    )
    .unwrap();
    let out = output(
        berth_build(&dir.path().join("root"))
            .arg("--build-arg")
            .arg(format!("BASE={}", base.reference()))
            .arg(dir.path()),
    );
    assert!(!out.success, "built without the agent it requires");
    assert!(
        out.stderr
            .contains("no SSH agent \"default\" was forwarded")
            && out.stderr.contains("pass --ssh default"),
        "{}",
        out.stderr
    );
}

#[test]
fn config_scratch() {
    if !ready() {
        return;
    }
    let built = build_both(&Case {
        name: "config_scratch",
        args: &[],
        runs: &[],
    });
    built.assert_image_tree();
    built.assert_same_config();
}

/// `# check=`: documented behaviour (docker 20.10 has no build checks). error=true fails
/// on a check left, naming it; skip= leaves it out (also in a `# check=` comment right
/// above the instruction); an unknown option is an error.
#[test]
fn parser_check() {
    if !ready() {
        return;
    }
    let base = BuildBase::new();
    let work = tempfile::tempdir().unwrap();
    let context = builds_dir().join("parser_check");
    let build = |file: &str| {
        output(
            berth_build(&work.path().join("root"))
                .arg("--build-arg")
                .arg(format!("BASE={}", base.reference()))
                .arg("-f")
                .arg(context.join(file))
                .arg(&context),
        )
    };
    let failed = build("Dockerfile");
    assert!(!failed.success, "error=true let a MAINTAINER through");
    assert!(
        failed
            .stderr
            .contains("Dockerfile:6:1: build check violations")
            && failed.stderr.contains("MaintainerDeprecated"),
        "{}",
        failed.stderr
    );
    let skipped = build("Dockerfile.skip");
    assert!(skipped.success, "{}", skipped.stderr);
    let commented = build("Dockerfile.comment");
    assert!(commented.success, "{}", commented.stderr);
    let bad = build("Dockerfile.bad");
    assert!(!bad.success, "an invalid # check= was accepted");
    assert!(
        bad.stderr.contains("invalid check option \"skip\""),
        "{}",
        bad.stderr
    );
}

// ---- RUN mounts, modifiers, ONBUILD (issue 15)

/// RUN mounts as BuildKit has them: a cache id defaults to the cleaned target; bind and
/// tmpfs targets are relative to WORKDIR; a cache seeded `from=` a stage keeps owners
/// and modes; `ro` caches; one id with `uid=` is another cache; writable binds of a
/// stage or a context file write to a copy. Built from a copy of the case, so a write
/// through to the context would show in `/out/data-after` without harming the repo.
#[test]
fn run_mounts() {
    if !ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for f in ["Dockerfile", "data.txt"] {
        std::fs::copy(builds_dir().join("run_mounts").join(f), dir.path().join(f)).unwrap();
    }
    let case = Case {
        name: "run_mounts",
        args: &[],
        runs: &[(
            &[],
            "one\ncontext file\n1\nseeded\n750 1234:2345\nread-only\n700 1234:2345\n\
             changed\nseeded\ncontext file\n",
        )],
    };
    let built = build_both_in(&case, dir.path(), &[]);
    built.assert_image_tree();
    built.assert_local_tree();
    built.assert_same_config();
    assert_eq!(
        std::fs::read_to_string(dir.path().join("data.txt")).unwrap(),
        "context file\n",
        "a writable bind mount wrote to the context"
    );
}

/// A berth-only build of `tests/builds/<name>/<file>` (for what docker 20.10 cannot
/// build), its `--output type=local` in the returned directory's `local`.
fn berth_only(name: &str, file: &str) -> (tempfile::TempDir, Output) {
    let base = BuildBase::new();
    let work = tempfile::tempdir().unwrap();
    let context = builds_dir().join(name);
    let out = output(
        berth_build(&work.path().join("root"))
            .arg("--build-arg")
            .arg(format!("BASE={}", base.reference()))
            .arg("--output")
            .arg(format!(
                "type=local,dest={}",
                work.path().join("local").display()
            ))
            .arg("-f")
            .arg(context.join(file))
            .arg(&context),
    );
    (work, out)
}

/// `${v#pat}`, `${v##pat}`, `${v%pat}`, `${v%%pat}`, `${v/pat/repl}`, `${v//pat/repl}`
/// and `${v:?msg}`: documented behaviour (docker 20.10 lacks them).
#[test]
fn vars_modifiers() {
    if !ready() {
        return;
    }
    let (work, out) = berth_only("vars_modifiers", "Dockerfile");
    assert!(out.success, "{}", out.stderr);
    let read = |p: &str| std::fs::read_to_string(work.path().join("local").join(p)).unwrap();
    assert_eq!(
        read("env.txt"),
        "ALL=foob_rb_z\nBASE_NAME=app.tar.gz\nDIR=/usr/local/bin\nLONG=z\nLSUF=foob\n\
         NONE=foobarbaz\nONE=foob_rbaz\nREL=local/bin/app.tar.gz\nSHORT=rbaz\nSTAR=fooXz\n\
         STEM=/usr/local/bin/app\nSUF=foobarb\n"
    );
    assert_eq!(read("pwd.txt"), "/w/foo\n");
    let (_work, unset) = berth_only("vars_modifiers", "Dockerfile.unset");
    assert!(!unset.success, "${{NAME:?}} of an unset NAME was accepted");
    assert!(
        unset.stderr.contains("NAME: must be set"),
        "{}",
        unset.stderr
    );
}

/// Variables in every mount option (`id=`, `target=`, `uid=`, `gid=`, `mode=`, `type=`,
/// `size=`), as BuildKit expands them; `from=` refuses them and `required` is only
/// for secret and ssh mounts, as in BuildKit. Documented behaviour: docker 20.10
/// expands no mount option.
#[test]
fn run_mount_vars() {
    if !ready() {
        return;
    }
    let (work, out) = berth_only("run_mount_vars", "Dockerfile");
    assert!(out.success, "{}", out.stderr);
    let read = |p: &str| std::fs::read_to_string(work.path().join("local").join(p)).unwrap();
    assert_eq!(read("cache-meta"), "750 1234:1234\n");
    assert_eq!(read("same-id"), "mark\n");
    assert_eq!(read("tmpfs-size"), "1024\n");
    let (_w, from) = berth_only("run_mount_vars", "Dockerfile.from");
    assert!(!from.success, "from=$STAGE was accepted");
    assert!(
        from.stderr.contains("doesn't support variable expansion"),
        "{}",
        from.stderr
    );
    let (_w, required) = berth_only("run_mount_vars", "Dockerfile.required");
    assert!(!required.success, "required on a cache mount was accepted");
    assert!(
        required
            .stderr
            .contains("required does not apply to type=cache"),
        "{}",
        required.stderr
    );
}

#[test]
fn onbuild_stage() {
    check(&Case {
        name: "onbuild_stage",
        args: &[],
        runs: &[(&[], "parent\ntrigger saw parent-arg\n/from-trigger\nyes\n")],
    });
}

/// ONBUILD triggers of an image (built by docker, handed to berth through a registry):
/// ARG, RUN and COPY from the child's context run first in the child.
#[test]
fn onbuild_image() {
    if !ready() {
        return;
    }
    let base = BuildBase::new();
    let work = tempfile::tempdir().unwrap();
    let context = builds_dir().join("onbuild_image");
    let parent = format!("berth-test/corpus-onbuild-parent:{}", std::process::id());
    let _images = DockerImages(vec![parent.clone()]);
    run(Command::new(docker())
        .env("DOCKER_BUILDKIT", "1")
        .args(["build", "-q", "-t", &parent, "--build-arg"])
        .arg(format!("BASE={}", base.docker_reference()))
        .arg("-f")
        .arg(context.join("Dockerfile.parent"))
        .arg(&context));
    // Through a registry: an OCI layout would lose the triggers (skopeo turns the
    // config into an OCI one, which has no OnBuild).
    let registry = Berth::serve(&work.path().join("registry"), &[]);
    let pushed = format!("{}/corpus/onbuild-parent:1", registry.addr);
    run(&mut skopeo_copy(
        &format!("docker-daemon:{parent}"),
        &format!("docker://{pushed}"),
        &[],
    ));
    let case = Case {
        name: "onbuild_image",
        args: &[],
        runs: &[(&[], "trigger for child\nfrom the context\n")],
    };
    let built = build_both_with(
        &case,
        &context,
        &[],
        &["--build-arg".into(), format!("PARENT={pushed}")],
        &["--build-arg".into(), format!("PARENT={parent}")],
    );
    built.assert_image_tree();
    built.assert_local_tree();
    built.assert_same_config();
}

#[test]
fn cmd_entrypoint() {
    check(&Case {
        name: "cmd_entrypoint",
        args: &[],
        runs: &[(&[], "final /bin/sh -c echo shell \"$HOME\"\n")],
    });
}

/// ENTRYPOINT resets the CMD its stage inherited.
#[test]
fn cmd_entrypoint_reset() {
    check(&Case {
        name: "cmd_entrypoint",
        args: &["--target", "reset"],
        runs: &[(&[], "entry shell form\n")],
    });
}

/// ENTRYPOINT keeps a CMD set in its own stage.
#[test]
fn cmd_entrypoint_kept() {
    check(&Case {
        name: "cmd_entrypoint",
        args: &["--target", "kept"],
        runs: &[(&[], "entry own cmd\n")],
    });
}

#[test]
fn healthcheck_none() {
    check(&Case {
        name: "healthcheck_none",
        args: &[],
        runs: &[],
    });
}

/// Every HEALTHCHECK option, exec form.
#[test]
fn healthcheck_options() {
    check(&Case {
        name: "healthcheck_none",
        args: &["--target", "checked"],
        runs: &[],
    });
}

/// A HEALTHCHECK inherited from the stage below.
#[test]
fn healthcheck_inherited() {
    check(&Case {
        name: "healthcheck_none",
        args: &["--target", "inherited"],
        runs: &[],
    });
}

/// Shell form, replacing an inherited one.
#[test]
fn healthcheck_shell_form() {
    check(&Case {
        name: "healthcheck_none",
        args: &["--target", "shellform"],
        runs: &[],
    });
}

#[test]
fn config_volume_signal() {
    check(&Case {
        name: "config_volume_signal",
        args: &[],
        runs: &[],
    });
}

/// `STOPSIGNAL 9`: a number is kept as written.
#[test]
fn config_stopsignal_number() {
    check(&Case {
        name: "config_volume_signal",
        args: &["--target", "numbered"],
        runs: &[],
    });
}

#[test]
fn escape_backtick() {
    check(&Case {
        name: "escape_backtick",
        args: &[],
        runs: &[(
            &[],
            "win=C:\\path\\to next=twowords\ncontinued line\njson \\ backslash\n",
        )],
    });
}

// ---- the rest of the reference, section by section (issue 15, corpus widening)

#[test]
fn parser_continuations() {
    check(&Case {
        name: "parser_continuations",
        args: &[],
        runs: &[],
    });
}

#[test]
fn shell_json() {
    check(&Case {
        name: "shell_json",
        args: &[],
        runs: &[],
    });
}

#[test]
fn label_quoting() {
    check(&Case {
        name: "label_quoting",
        args: &[],
        runs: &[],
    });
}

#[test]
fn user_workdir_vars() {
    check(&Case {
        name: "user_workdir_vars",
        args: &[],
        runs: &[],
    });
}

#[test]
fn copy_tree_corners() {
    check_prepared(
        &Case {
            name: "copy_tree_corners",
            args: &[],
            runs: &[],
        },
        |ctx| {
            for d in ["empty", "dir/nested-empty", "modes/sgid", "modes/sticky"] {
                std::fs::create_dir_all(ctx.join(d)).unwrap();
            }
            std::fs::write(ctx.join("modes/sgid/f"), "g\n").unwrap();
            chmod(ctx, "modes/sgid", 0o2775);
            chmod(ctx, "modes/sticky", 0o1777);
        },
    );
}

#[test]
fn add_tar_entries() {
    check(&Case {
        name: "add_tar_entries",
        args: &[],
        runs: &[],
    });
}

/// ADD unpacks zstd tars, by name and by content: documented behaviour (today's
/// BuildKit detects zstd as moby's archive package does; docker 20.10 copies the file).
#[test]
fn add_zstd() {
    if !ready() {
        return;
    }
    let built = BerthOnly::build("add_zstd");
    assert_eq!(built.run(), "inside\norig\n");
    assert_eq!(built.read("z/t/late/f"), "late\n");
    assert!(
        !built.local.join("c/by-content.bin").exists(),
        "the zstd tar was copied, not unpacked"
    );
}

/// COPY never puts a folder where the image has a file or a symlink, nor a file where
/// it has a folder: both builders refuse each such target, berth naming the path.
#[test]
fn copy_replace_type() {
    if !ready() {
        return;
    }
    let base = BuildBase::new();
    let work = tempfile::tempdir().unwrap();
    let context = builds_dir().join("copy_replace_type");
    for (target, docker_says, berth_says) in [
        (
            "dir-over-file",
            "cannot copy to non-directory",
            "[dir-over-file 2/2] COPY dir-over-file/ /r/: cannot copy a folder onto /r/file-here: it is a file",
        ),
        (
            "dir-over-link",
            "cannot copy to non-directory",
            "[dir-over-link 2/2] COPY dir-over-link/ /r/: cannot copy a folder onto /r/link-dir: it is a symlink",
        ),
        (
            "file-over-dir",
            "cannot replace to directory",
            "[file-over-dir 2/2] COPY file-over-dir/ /r/: cannot replace the folder /r/dir-here with a file",
        ),
    ] {
        let docker = output(
            Command::new(docker())
                .env("DOCKER_BUILDKIT", "1")
                .args(["build", "-q", "--target", target, "--build-arg"])
                .arg(format!("BASE={}", base.docker_reference()))
                .arg(&context),
        );
        assert!(!docker.success, "docker built {target}");
        assert!(docker.stderr.contains(docker_says), "{}", docker.stderr);
        let berth = output(
            berth_build(&work.path().join("root"))
                .args(["--target", target, "--build-arg"])
                .arg(format!("BASE={}", base.reference()))
                .arg(&context),
        );
        assert!(!berth.success, "berth built {target}");
        assert!(
            berth.stderr.contains(berth_says),
            "{target}: {}",
            berth.stderr
        );
    }
    check(&Case {
        name: "copy_replace_type",
        args: &[],
        runs: &[],
    });
}

/// File capabilities: the `security.capability` xattr goes through ADD of a tar, COPY
/// --from (also with --chown and --chmod) and a RUN's copy-up, but not from the build
/// context, as in BuildKit.
#[test]
fn xattr_capability() {
    if !ready() || !require("setcap") {
        return;
    }
    let built = build_prepared(
        &Case {
            name: "xattr_capability",
            args: &[],
            runs: &[],
        },
        |ctx| {
            run(Command::new("setcap")
                .arg("cap_net_raw+ep")
                .arg(ctx.join("capfile")));
        },
    );
    built.assert_image_tree();
    built.assert_local_tree();
    built.assert_same_config();
    let tree = built.docker_tree();
    for kept in ["/c/plain", "/c/chowned", "/c/tar/tarcap", "/c/touched"] {
        assert!(
            tree[kept].capability.is_some(),
            "{kept} lost its capability"
        );
    }
    assert_eq!(tree["/c/context"].capability, None);
}

#[test]
fn vars_precedence() {
    check(&Case {
        name: "vars_precedence",
        args: &[
            "--build-arg",
            "FROMCLI=cli",
            "--build-arg",
            "GIVEN=given",
            "--build-arg",
            "DEFAULTED=cli-default",
            "--build-arg",
            "UNDECLARED=x",
        ],
        runs: &[],
    });
}

#[test]
fn dockerignore_corners() {
    check(&Case {
        name: "dockerignore_corners",
        args: &[],
        runs: &[(
            &[],
            "/ctx\n/ctx/.dockerignore\n/ctx/Dockerfile\n/ctx/build\n/ctx/build/README\n\
             /ctx/esc\n/ctx/esc/plain\n/ctx/logs\n/ctx/sub\n/ctx/sub/keep.log\n",
        )],
    });
}

#[test]
fn onbuild_chain() {
    check(&Case {
        name: "onbuild_chain",
        args: &[],
        runs: &[],
    });
}

#[test]
fn run_mount_options() {
    check(&Case {
        name: "run_mount_options",
        args: &[],
        runs: &[],
    });
}

#[test]
fn stage_names() {
    check(&Case {
        name: "stage_names",
        args: &[],
        runs: &[(&[], "built\nbuilt\nbuilt\nbuilt\n")],
    });
}

/// `FROM BUILDER` after `AS builder` is no stage but an image reference, invalid in
/// upper case: both builders refuse it.
#[test]
fn stage_names_from_is_exact() {
    if !ready() {
        return;
    }
    let base = BuildBase::new();
    let context = builds_dir().join("stage_names");
    let docker = output(
        Command::new(docker())
            .env("DOCKER_BUILDKIT", "1")
            .args(["build", "-q", "-f"])
            .arg(context.join("Dockerfile.upper"))
            .arg("--build-arg")
            .arg(format!("BASE={}", base.docker_reference()))
            .arg(&context),
    );
    assert!(!docker.success, "docker took FROM BUILDER as the stage");
    assert!(
        docker.stderr.contains("must be lowercase"),
        "{}",
        docker.stderr
    );
    let (_work, berth) = berth_only("stage_names", "Dockerfile.upper");
    assert!(!berth.success, "berth took FROM BUILDER as the stage");
    assert!(
        berth.stderr.contains("Dockerfile.upper:5") && berth.stderr.contains("BUILDER"),
        "{}",
        berth.stderr
    );
}

#[test]
fn env_arg_quoting() {
    check(&Case {
        name: "env_arg_quoting",
        args: &[],
        runs: &[],
    });
}

#[test]
fn add_local_forms() {
    check(&Case {
        name: "add_local_forms",
        args: &[],
        runs: &[],
    });
}

/// `ENTRYPOINT []` and `CMD []`: configs only (docker cannot create a container of an
/// image without a command, so there is no tree to compare).
#[test]
fn config_empty_forms() {
    if !ready() {
        return;
    }
    let targets: [&'static [&'static str]; 3] = [
        &["--target", "emptied"],
        &["--target", "cmd-emptied"],
        &["--target", "final"],
    ];
    for args in targets {
        let built = build_both(&Case {
            name: "config_empty_forms",
            args,
            runs: &[],
        });
        built.assert_same_config();
    }
}

#[test]
fn dockerignore_per_file() {
    check(&Case {
        name: "dockerignore_per_file",
        args: &[
            "-f",
            "tests/builds/dockerignore_per_file/sub/app.Dockerfile",
        ],
        runs: &[(
            &[],
            "/ctx\n/ctx/.dockerignore\n/ctx/a.txt\n/ctx/sub\n/ctx/sub/app.Dockerfile\n\
             /ctx/sub/app.Dockerfile.dockerignore\n",
        )],
    });
}

/// A heredoc copied where the image has a folder of its name is refused, as a file
/// would be (documented behaviour: docker 20.10 has no heredocs).
#[test]
fn copy_heredoc_onto_folder() {
    if !ready() {
        return;
    }
    let (_work, out) = berth_only("copy_heredoc_dest", "Dockerfile.folder");
    assert!(!out.success, "the heredoc replaced a folder");
    assert!(
        out.stderr
            .contains("cannot replace the folder /etc/app.d/EOF with a file"),
        "{}",
        out.stderr
    );
}

/// `COPY --from=$IMAGE`: berth only (docker 20.10 does not expand --from).
#[test]
fn copy_from_image() {
    if !ready() {
        return;
    }
    let built = BerthOnly::build("copy_from_image");
    let local = file_tree(&built.local);
    assert_eq!(local["/x/busybox"].kind, "file");
    assert_eq!(local["/x/busybox"].mode, "755");
    assert_eq!(
        built.read("x/etc/passwd"),
        built.read("etc/passwd"),
        "the image's /etc/ was copied"
    );
}

#[test]
fn workdir_symlink() {
    check(&Case {
        name: "workdir_symlink",
        args: &[],
        runs: &[],
    });
}

#[test]
fn copy_flag_vars() {
    check(&Case {
        name: "copy_flag_vars",
        args: &[],
        runs: &[],
    });
}

#[test]
fn parser_values() {
    check(&Case {
        name: "parser_values",
        args: &[],
        runs: &[(&[], "b=c|x=y||q\"uote\n")],
    });
}
