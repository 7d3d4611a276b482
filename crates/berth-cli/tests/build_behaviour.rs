//! `berth build` on its own, judged by its plain progress output and its results:
//! caching and what invalidates it, reproducible digests, cache and secret mounts,
//! parallel stages, error messages, and the OCI tar output.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// One step of the plain progress output (`#N <elapsed> <text>` lines).
#[derive(Debug, Default)]
struct Step {
    name: String,
    cached: bool,
    /// The `cache miss: <reason>` of a step that ran.
    miss: Option<String>,
    output: Vec<String>,
    /// Where the step's first line and its DONE are among all progress lines.
    started_at: usize,
    done_at: Option<usize>,
}

/// `(id, text)` of a progress line.
fn progress_line(line: &str) -> Option<(usize, &str)> {
    let (id, rest) = line.strip_prefix('#')?.split_once(' ')?;
    let (_elapsed, text) = rest.trim_start().split_once(' ')?;
    Some((id.parse().ok()?, text))
}

fn steps(stderr: &str) -> Vec<Step> {
    let mut steps: Vec<(usize, Step)> = Vec::new();
    for (n, (id, text)) in stderr.lines().filter_map(progress_line).enumerate() {
        let Some((_, step)) = steps.iter_mut().find(|(i, _)| *i == id) else {
            let (name, cached) = match text.strip_suffix(" CACHED") {
                Some(name) => (name, true),
                None => (text, false),
            };
            steps.push((
                id,
                Step {
                    name: name.to_string(),
                    cached,
                    started_at: n,
                    ..Step::default()
                },
            ));
            continue;
        };
        if let Some(reason) = text.strip_prefix("cache miss: ") {
            step.miss = Some(reason.to_string());
        } else if text.starts_with("DONE ") {
            step.done_at = Some(n);
        } else if text != "ERROR" {
            step.output.push(text.to_string());
        }
    }
    steps.into_iter().map(|(_, s)| s).collect()
}

/// The step whose name contains `part` (exactly one must).
fn step<'a>(steps: &'a [Step], part: &str) -> &'a Step {
    let found: Vec<_> = steps.iter().filter(|s| s.name.contains(part)).collect();
    assert_eq!(found.len(), 1, "one step named like {part:?} in {steps:#?}");
    found[0]
}

/// Steps that may come from the cache: the Dockerfile's own, not FROM or the context.
fn cacheable(steps: &[Step]) -> Vec<&Step> {
    steps
        .iter()
        .filter(|s| s.name.starts_with('[') && !s.name.starts_with("[internal]"))
        .collect()
}

/// The part of stderr after the progress: berth's error message.
fn error_message(stderr: &str) -> &str {
    let at = stderr
        .find("berth: error")
        .unwrap_or_else(|| panic!("no error message in:\n{stderr}"));
    &stderr[at..]
}

/// A build context with its own berth root, on the busybox base.
struct Project {
    base: BuildBase,
    dir: tempfile::TempDir,
}

/// A project for `dockerfile`, if `berth build` can run here (else skip or fail).
fn project(dockerfile: &str) -> Option<Project> {
    require_build().then(|| Project::new(dockerfile))
}

impl Project {
    /// A project whose Dockerfile is `dockerfile`, `{base}` standing for the base image.
    fn new(dockerfile: &str) -> Project {
        let p = Project {
            base: BuildBase::new(),
            dir: tempfile::tempdir().unwrap(),
        };
        std::fs::create_dir(p.context()).unwrap();
        p.file(
            "Dockerfile",
            &dockerfile.replace("{base}", &p.base.reference()),
        );
        p
    }

    fn context(&self) -> PathBuf {
        self.dir.path().join("context")
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Write a context file.
    fn file(&self, name: &str, content: &str) {
        std::fs::write(self.context().join(name), content).unwrap();
    }

    /// `berth build` into this project's root; extra args before the context.
    fn build(&self, args: &[&str]) -> Output {
        output(
            berth_build(&self.root())
                .args(["-t", "behaviour/test:latest"])
                .args(args)
                .arg(self.context()),
        )
    }

    fn build_ok(&self, args: &[&str]) -> Output {
        let out = self.build(args);
        assert!(out.success, "berth build {args:?} failed:\n{}", out.stderr);
        out
    }
}

#[test]
fn noop_rebuild_is_fully_cached() {
    let Some(p) = project(
        "FROM {base} AS helper\n\
         RUN echo helper > /helper\n\
         FROM {base}\n\
         WORKDIR /app\n\
         COPY a.txt .\n\
         RUN echo built > /built && echo ran\n\
         COPY --from=helper /helper /helper\n\
         ENV X=1\n\
         CMD [\"cat\", \"/built\"]\n",
    ) else {
        return;
    };
    p.file("a.txt", "a\n");
    let first = p.build_ok(&[]);
    let second = p.build_ok(&[]);
    let steps = steps(&second.stderr);
    let cacheable = cacheable(&steps);
    assert!(cacheable.len() >= 4, "{steps:#?}");
    for s in &cacheable {
        assert!(s.cached, "step ran again: {s:?}\n{}", second.stderr);
    }
    assert!(steps.iter().all(|s| s.miss.is_none()), "{}", second.stderr);
    assert!(
        step(&steps, "echo ran").output.is_empty(),
        "{}",
        second.stderr
    );
    assert_eq!(first.manifest(), second.manifest());
    assert_eq!(first.stdout, second.stdout, "same tag and image id");
}

#[test]
fn quiet_prints_only_the_image_id_and_still_tells_errors() {
    let Some(p) = project("FROM {base}\nRUN echo loud\n") else {
        return;
    };
    let out = p.build_ok(&["-q"]);
    let id = out.stdout.trim();
    assert!(
        id.starts_with("sha256:") && id.len() == 71 && !id.contains('\n'),
        "{:?}",
        out.stdout
    );
    assert!(out.stderr.is_empty(), "progress with -q:\n{}", out.stderr);
    // The same image as a build that talks.
    assert!(p.build_ok(&[]).stdout.contains(id));

    p.file(
        "Dockerfile",
        &format!("FROM {}\nRUN exit 3\n", p.base.reference()),
    );
    let failed = p.build(&["-q"]);
    assert!(!failed.success);
    assert!(
        failed.stderr.contains("RUN exit 3") && failed.stderr.contains("exited with code 3"),
        "{}",
        failed.stderr
    );
}

#[test]
fn changed_context_file_reruns_its_copy_and_what_follows() {
    let Some(p) = project(
        "FROM {base}\n\
         RUN echo first > /first\n\
         COPY a.txt /a.txt\n\
         RUN cat /a.txt > /a-seen\n\
         COPY b.txt /b.txt\n\
         RUN cat /a.txt /b.txt > /both && echo ran-last\n",
    ) else {
        return;
    };
    p.file("a.txt", "a\n");
    p.file("b.txt", "b\n");
    let first = p.build_ok(&[]);
    p.file("b.txt", "b changed\n");
    let second = p.build_ok(&[]);
    let steps = steps(&second.stderr);
    for before in ["RUN echo first", "COPY a.txt", "RUN cat /a.txt > /a-seen"] {
        let s = step(&steps, before);
        assert!(s.cached, "{s:?}\n{}", second.stderr);
    }
    let copy = step(&steps, "COPY b.txt");
    assert!(!copy.cached, "{}", second.stderr);
    let reason = copy.miss.as_deref().unwrap_or_default();
    assert!(
        reason.contains("b.txt") && !reason.contains("a.txt"),
        "the miss names the changed file only: {reason:?}"
    );
    let last = step(&steps, "ran-last");
    assert!(!last.cached && last.miss.is_some(), "{}", second.stderr);
    assert_eq!(last.output, ["ran-last"]);
    assert_ne!(first.manifest(), second.manifest());
}

/// `COPY --link` (issue 15): its layer is made on scratch, so a change below it keeps
/// it cached (BuildKit's MergeOp), while a plain COPY after the change runs again; the
/// image still has both the new lower layer and the linked files.
#[test]
fn copy_link_is_reused_when_what_is_below_changes() {
    let Some(p) = project(
        "FROM {base}\n\
         ARG V\n\
         RUN echo $V > /v\n\
         COPY --link a.txt /app/\n\
         COPY b.txt /b.txt\n",
    ) else {
        return;
    };
    p.file("a.txt", "a\n");
    p.file("b.txt", "b\n");
    let local = p.dir.path().join("out");
    let out = format!("type=local,dest={}", local.display());
    p.build_ok(&["--build-arg", "V=1", "--output", &out]);
    let second = p.build_ok(&["--build-arg", "V=2", "--output", &out]);
    let steps = steps(&second.stderr);
    assert!(!step(&steps, "RUN echo $V").cached, "{}", second.stderr);
    assert!(
        step(&steps, "COPY --link a.txt").cached,
        "{}",
        second.stderr
    );
    assert!(!step(&steps, "COPY b.txt").cached, "{}", second.stderr);
    assert_eq!(std::fs::read_to_string(local.join("v")).unwrap(), "2\n");
    assert_eq!(
        std::fs::read_to_string(local.join("app/a.txt")).unwrap(),
        "a\n"
    );
}

#[test]
fn changed_build_arg_is_named() {
    let Some(p) = project(
        "FROM {base}\n\
         RUN echo before-arg > /before\n\
         ARG FLAVOR=plain\n\
         RUN echo \"flavor=$FLAVOR\"\n",
    ) else {
        return;
    };
    let plain = p.build_ok(&[]);
    assert_eq!(
        step(&steps(&plain.stderr), "flavor=").output,
        ["flavor=plain"]
    );
    let spicy = p.build_ok(&["--build-arg", "FLAVOR=spicy"]);
    let steps = steps(&spicy.stderr);
    assert!(step(&steps, "before-arg").cached, "{}", spicy.stderr);
    let used = step(&steps, "flavor=");
    assert!(!used.cached, "{}", spicy.stderr);
    assert!(
        used.miss.as_deref().unwrap_or_default().contains("FLAVOR"),
        "the miss names the ARG: {used:?}"
    );
    assert_eq!(used.output, ["flavor=spicy"]);
    // The same value again is a cache hit.
    let again = p.build_ok(&["--build-arg", "FLAVOR=spicy"]);
    assert!(
        step(&steps_of(&again), "flavor=").cached,
        "{}",
        again.stderr
    );
    assert_eq!(again.manifest(), spicy.manifest());
}

fn steps_of(out: &Output) -> Vec<Step> {
    steps(&out.stderr)
}

/// Issue 13: the history that explains a miss is the build's (context, Dockerfile,
/// target), not every step of the root with the same label.
#[test]
fn two_projects_in_one_root_are_not_compared() {
    let dockerfile = "FROM {base}\n\
         ARG MODE=a\n\
         RUN echo \"mode=$MODE\"\n";
    let Some(a) = project(dockerfile) else {
        return;
    };
    let b = Project::new(dockerfile);
    b.file(
        "Dockerfile",
        &dockerfile.replace("{base}", &a.base.reference()),
    );
    let root = a.root();
    let build = |p: &Project, args: &[&str]| {
        let out = output(
            berth_build(&root)
                .args(["-t", "behaviour/shared:latest"])
                .args(args)
                .arg(p.context()),
        );
        assert!(out.success, "berth build {args:?} failed:\n{}", out.stderr);
        out
    };
    let miss = |out: &Output| {
        step(&steps_of(out), "mode=")
            .miss
            .clone()
            .unwrap_or_else(|| panic!("the step ran:\n{}", out.stderr))
    };
    assert_eq!(miss(&build(&a, &[])), "first build of this step");
    // Same label, other project, other value: its own first build, not "MODE changed".
    assert_eq!(
        miss(&build(&b, &["--build-arg", "MODE=b"])),
        "first build of this step"
    );
    // Each project is compared with its own last build.
    assert_eq!(
        miss(&build(&a, &["--build-arg", "MODE=a2"])),
        r#"MODE changed from "a" to "a2""#
    );
    assert_eq!(
        miss(&build(&b, &["--build-arg", "MODE=b2"])),
        r#"MODE changed from "b" to "b2""#
    );
}

#[test]
fn changed_source_date_epoch_is_named() {
    let Some(p) = project(
        "FROM {base}\n\
         RUN echo first > /first\n",
    ) else {
        return;
    };
    p.build_ok(&[]);
    let out = output_ok(
        berth_build(&p.root())
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .args(["-t", "behaviour/test:latest"])
            .arg(p.context()),
    );
    let steps = steps(&out.stderr);
    let first = step(&steps, "echo first");
    assert_eq!(
        first.miss.as_deref(),
        Some("SOURCE_DATE_EPOCH changed from 0 to 1700000000"),
        "{}",
        out.stderr
    );
}

#[test]
fn no_cache_reruns_everything() {
    let Some(p) = project(
        "FROM {base}\n\
         COPY a.txt /a.txt\n\
         RUN echo ran-one\n\
         RUN echo ran-two\n",
    ) else {
        return;
    };
    p.file("a.txt", "a\n");
    let first = p.build_ok(&[]);
    let again = p.build_ok(&["--no-cache"]);
    let steps = steps(&again.stderr);
    let cacheable = cacheable(&steps);
    assert_eq!(cacheable.len(), 3, "{steps:#?}");
    for s in cacheable {
        assert!(!s.cached && s.miss.is_some(), "{s:?}");
    }
    assert_eq!(step(&steps, "ran-one").output, ["ran-one"]);
    assert_eq!(step(&steps, "ran-two").output, ["ran-two"]);
    // SOURCE_DATE_EPOCH=0: running it all again makes the same image.
    assert_eq!(first.manifest(), again.manifest());
}

#[test]
fn same_inputs_in_fresh_roots_give_identical_digests() {
    if !require_build() {
        return;
    }
    let dockerfile = "FROM {base} AS side\n\
         RUN mkdir -p /out && echo side > /out/side && ln -s side /out/link\n\
         FROM {base}\n\
         COPY . /ctx\n\
         RUN echo made > /made && mkdir /dir\n\
         COPY --from=side /out /side\n\
         ENV A=1\n\
         CMD [\"cat\", \"/made\"]\n";
    let one = Project::new(dockerfile);
    let two = Project::new(dockerfile);
    for p in [&one, &two] {
        p.file("a.txt", "a\n");
        std::fs::create_dir(p.context().join("sub")).unwrap();
        p.file("sub/b.txt", "b\n");
    }
    // Different file times in the second context.
    run(Command::new("touch")
        .args(["-d", "2001-02-03 04:05:06"])
        .arg(two.context().join("a.txt"))
        .arg(two.context().join("sub"))
        .arg(two.context().join("sub/b.txt")));
    // Both use the first project's base (the same image at the same reference).
    two.file(
        "Dockerfile",
        &dockerfile.replace("{base}", &one.base.reference()),
    );
    let tar_one = one.path("image.tar");
    let tar_two = two.path("image.tar");
    let a = one.build_ok(&["--output", &format!("type=oci,dest={}", tar_one.display())]);
    let b = two.build_ok(&["--output", &format!("type=oci,dest={}", tar_two.display())]);
    assert_eq!(a.manifest(), b.manifest(), "reproducible manifest");
    assert_eq!(a.stdout, b.stdout, "same image id");
    assert!(
        std::fs::read(&tar_one).unwrap() == std::fs::read(&tar_two).unwrap(),
        "the OCI tars are byte-identical"
    );
}

#[test]
fn cache_mount_persists_across_builds_and_stays_out_of_the_image() {
    let Some(p) = project(
        "FROM {base}\n\
         RUN --mount=type=cache,target=/cache \
         n=$(cat /cache/count 2>/dev/null || echo 0); n=$((n+1)); \
         echo $n > /cache/count; echo count=$n\n",
    ) else {
        return;
    };
    let counted = |out: &Output| {
        step(&steps_of(out), "RUN --mount=type=cache")
            .output
            .clone()
    };
    assert_eq!(counted(&p.build_ok(&[])), ["count=1"]);
    assert_eq!(counted(&p.build_ok(&["--no-cache"])), ["count=2"]);
    let local = p.path("local");
    let third = p.build_ok(&[
        "--no-cache",
        "--output",
        &format!("type=local,dest={}", local.display()),
    ]);
    assert_eq!(counted(&third), ["count=3"]);
    let tree = file_tree(&local);
    assert!(tree.contains_key("/bin/busybox"), "the output is the image");
    let in_cache: Vec<_> = tree.keys().filter(|k| k.starts_with("/cache/")).collect();
    assert!(
        in_cache.is_empty(),
        "cache contents in the image: {in_cache:?}"
    );
}

/// Whether `needle` occurs in `hay`.
fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Every blob of an OCI tar, gzip layers decompressed.
fn oci_tar_contents(tar: &Path, work: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    std::fs::create_dir_all(work).unwrap();
    run(Command::new("tar").arg("-xf").arg(tar).arg("-C").arg(work));
    let mut out = Vec::new();
    for entry in std::fs::read_dir(work.join("blobs/sha256")).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        let bytes = if bytes.starts_with(&[0x1f, 0x8b]) {
            let gz = Command::new("gzip")
                .arg("-dc")
                .stdin(std::fs::File::open(&path).unwrap())
                .output()
                .unwrap();
            assert!(gz.status.success(), "gunzip {}", path.display());
            gz.stdout
        } else {
            bytes
        };
        out.push((path, bytes));
    }
    out
}

#[test]
fn secret_mounts_are_readable_but_not_kept() {
    if !require_build() {
        return;
    }
    const FILE_SECRET: &str = "tok-9f2c-value";
    const ENV_SECRET: &str = "env-77ab-token";
    // Steps print the secrets with '-' turned to '+', so no output holds them verbatim.
    let p = Project::new(
        "FROM {base}\n\
         RUN --mount=type=secret,id=tok sed 's/-/+/g' /run/secrets/tok\n\
         RUN --mount=type=secret,id=tok,target=/etc/tok.conf,required=true \
         sed 's/-/+/g' /etc/tok.conf > /derived.txt\n\
         RUN --mount=type=secret,id=envtok,env=TOKEN echo \"$TOKEN\" | sed 's/-/+/g'\n",
    );
    let secret_file = p.path("tok.txt");
    std::fs::write(&secret_file, format!("{FILE_SECRET}\n")).unwrap();
    let file_arg = format!("id=tok,src={}", secret_file.display());
    let local = p.path("local");
    let tar = p.path("image.tar");
    let build = |token: &str, outputs: bool| {
        let mut args = vec![
            "--secret".to_string(),
            file_arg.clone(),
            "--secret".to_string(),
            "id=envtok,env=BERTH_TEST_TOKEN".to_string(),
        ];
        if outputs {
            args.push("--output".into());
            args.push(format!("type=local,dest={}", local.display()));
            args.push("--output".into());
            args.push(format!("type=oci,dest={}", tar.display()));
        }
        let out = output(
            berth_build(&p.root())
                .args(["-t", "behaviour/test:latest"])
                .args(&args)
                .env("BERTH_TEST_TOKEN", token)
                .arg(p.context()),
        );
        assert!(out.success, "{}", out.stderr);
        out
    };
    let first = build(ENV_SECRET, true);
    let steps = steps(&first.stderr);
    assert_eq!(step(&steps, "/run/secrets/tok").output, ["tok+9f2c+value"]);
    assert_eq!(step(&steps, "env=TOKEN").output, ["env+77ab+token"]);
    assert_eq!(
        std::fs::read_to_string(local.join("derived.txt")).unwrap(),
        "tok+9f2c+value\n"
    );

    for (path, entry) in file_tree(&local) {
        if entry.kind == "file" {
            let bytes = std::fs::read(local.join(path.trim_start_matches('/'))).unwrap();
            for secret in [FILE_SECRET, ENV_SECRET] {
                assert!(
                    !contains(&bytes, secret.as_bytes()),
                    "{path} holds {secret}"
                );
            }
            if path == "/run/secrets/tok" || path == "/etc/tok.conf" {
                assert_eq!(entry.size, 0, "{path} in the image");
            }
        }
    }
    for (blob, bytes) in oci_tar_contents(&tar, &p.path("oci")) {
        for secret in [FILE_SECRET, ENV_SECRET] {
            assert!(
                !contains(&bytes, secret.as_bytes()),
                "{} holds {secret}",
                blob.display()
            );
        }
    }

    // Secrets are not part of the cache key: new values reuse every step.
    std::fs::write(&secret_file, "tok-changed-value\n").unwrap();
    let second = build("env-changed-token", false);
    for s in cacheable(&steps_of(&second)) {
        assert!(s.cached, "{s:?}\n{}", second.stderr);
    }
    assert_eq!(first.manifest(), second.manifest());
}

/// Mount targets that did not exist before a RUN are made for the mount only: BuildKit
/// (docker 20.10 too) removes them, so no empty /etc/hosts, /etc/resolv.conf or
/// secret target is left in the image.
#[test]
fn run_mounts_leave_no_stub_files() {
    let Some(p) = project(
        "FROM {base}\n\
         RUN --mount=type=secret,id=tok cat /run/secrets/tok > /dev/null\n\
         RUN --mount=type=secret,id=tok,target=/tok.txt cat /tok.txt > /dev/null\n\
         RUN echo done > /done\n",
    ) else {
        return;
    };
    let secret_file = p.path("tok.txt");
    std::fs::write(&secret_file, "value\n").unwrap();
    let local = p.path("local");
    p.build_ok(&[
        "--secret",
        &format!("id=tok,src={}", secret_file.display()),
        "--output",
        &format!("type=local,dest={}", local.display()),
    ]);
    let tree = file_tree(&local);
    assert!(tree.contains_key("/done"));
    let stubs: Vec<_> = [
        "/etc/hosts",
        "/etc/resolv.conf",
        "/run/secrets/tok",
        "/tok.txt",
    ]
    .into_iter()
    .filter(|p| tree.contains_key(*p))
    .collect();
    assert!(stubs.is_empty(), "mount stubs left in the image: {stubs:?}");
}

#[test]
fn independent_stages_run_in_parallel() {
    let Some(p) = project(
        "FROM {base} AS a\n\
         RUN sleep 1 && echo a-done > /a\n\
         FROM {base} AS b\n\
         RUN sleep 1 && echo b-done > /b\n\
         FROM {base}\n\
         COPY --from=a /a /a\n\
         COPY --from=b /b /b\n",
    ) else {
        return;
    };
    let out = p.build_ok(&[]);
    let steps = steps(&out.stderr);
    let a = step(&steps, "echo a-done");
    let b = step(&steps, "echo b-done");
    let (first, second) = if a.started_at < b.started_at {
        (a, b)
    } else {
        (b, a)
    };
    let first_done = first.done_at.expect("the first stage's step finished");
    assert!(
        second.started_at < first_done,
        "the stages overlap: {:?} started after {:?} was DONE:\n{}",
        second.name,
        first.name,
        out.stderr
    );
}

/// Build `dockerfile`, which must fail; berth's error message (None: skipped here).
fn failed_build(dockerfile: &str) -> Option<String> {
    let out = project(dockerfile)?.build(&[]);
    assert!(!out.success, "the build should fail:\n{}", out.stderr);
    Some(error_message(&out.stderr).to_string())
}

#[test]
fn failing_run_names_command_exit_code_and_last_output() {
    let Some(message) = failed_build(
        "FROM {base}\n\
         RUN echo fine\n\
         RUN echo starting && echo last-words && exit 3\n",
    ) else {
        return;
    };
    assert!(
        message.contains("echo starting && echo last-words && exit 3"),
        "{message}"
    );
    assert!(message.contains("code 3"), "{message}");
    assert!(message.contains("last-words"), "{message}");
}

#[test]
fn unknown_instruction_names_line_and_column() {
    let Some(message) = failed_build("FROM {base}\nRUN echo fine\n\n  FROBNICATE foo\n") else {
        return;
    };
    assert!(
        message.contains("Dockerfile:4:3: unknown instruction FROBNICATE"),
        "{message}"
    );
}

#[test]
fn copy_of_missing_file_names_it() {
    let Some(message) = failed_build("FROM {base}\nCOPY missing-file.txt /x\n") else {
        return;
    };
    assert!(message.contains("missing-file.txt"), "{message}");
}

#[test]
fn missing_required_secret_is_named() {
    let Some(message) = failed_build(
        "FROM {base}\nRUN --mount=type=secret,id=needed,required=true cat /run/secrets/needed\n",
    ) else {
        return;
    };
    assert!(
        message.contains("secret") && message.contains("\"needed\""),
        "{message}"
    );
}

#[test]
fn oci_tar_output_is_accepted_by_skopeo() {
    if !require_build() || !require("skopeo") {
        return;
    }
    let p = Project::new(
        "FROM {base}\n\
         RUN echo hi > /hi\n\
         CMD [\"cat\", \"/hi\"]\n",
    );
    let tar = p.path("x.tar");
    let out = p.build_ok(&["--output", &format!("type=oci,dest={}", tar.display())]);
    let inspect = run(Command::new("skopeo")
        .arg("inspect")
        .arg(format!("oci-archive:{}", tar.display())));
    let inspect: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    assert_eq!(inspect["Digest"], out.manifest(), "{inspect:#}");
    assert_eq!(
        inspect["Layers"].as_array().map(Vec::len),
        Some(2),
        "{inspect:#}"
    );
    let config = run(Command::new("skopeo")
        .args(["inspect", "--config"])
        .arg(format!("oci-archive:{}", tar.display())));
    let config: serde_json::Value = serde_json::from_str(&config).unwrap();
    assert_eq!(config["config"]["Cmd"], serde_json::json!(["cat", "/hi"]));
}

/// `COPY --exclude` patterns match paths relative to each source, as BuildKit matches
/// them: `*` stays within one level, `**` goes deeper, `!` re-includes, and a source
/// named on the command line is copied even when a pattern would match its name.
#[test]
fn copy_exclude_matches_below_each_source() {
    let Some(p) = project(
        "FROM scratch\n\
         COPY --exclude=*.md docs/ /one/\n\
         COPY --exclude=**/*.md --exclude=!keep/** docs/ /deep/\n\
         COPY --exclude=docs/*.md . /all/\n\
         COPY --exclude=*.txt a.txt /single/\n\
         COPY --exclude=sub docs /nosub/\n",
    ) else {
        return;
    };
    for d in ["docs/sub", "docs/keep"] {
        std::fs::create_dir_all(p.context().join(d)).unwrap();
    }
    for f in [
        "docs/README.md",
        "docs/a.txt",
        "docs/sub/x.md",
        "docs/sub/y.txt",
        "docs/keep/k.md",
        "a.txt",
    ] {
        p.file(f, f);
    }
    let local = p.path("out");
    p.build_ok(&["--output", &format!("type=local,dest={}", local.display())]);
    let mut files: Vec<String> = walk(&local);
    files.sort();
    let want = [
        "all/Dockerfile",
        "all/a.txt",
        "all/docs/a.txt",
        "all/docs/keep/k.md",
        "all/docs/sub/x.md",
        "all/docs/sub/y.txt",
        "deep/a.txt",
        "deep/keep/k.md",
        "deep/sub/y.txt",
        "nosub/README.md",
        "nosub/a.txt",
        "nosub/keep/k.md",
        "one/a.txt",
        "one/keep/k.md",
        "one/sub/x.md",
        "one/sub/y.txt",
        "single/a.txt",
    ];
    assert_eq!(files, want);
}

/// Regular files below `dir`, relative, slash-separated.
fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        if e.file_type().unwrap().is_dir() {
            out.extend(walk(&e.path()).into_iter().map(|f| format!("{name}/{f}")));
        } else {
            out.push(name);
        }
    }
    out
}

/// Media types of the layers of the manifest `digest` in `root`'s store.
fn layer_types(root: &std::path::Path, digest: &str) -> Vec<String> {
    let bytes = std::fs::read(
        root.join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:")),
    )
    .unwrap();
    let m: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            l["mediaType"]
                .as_str()
                .unwrap()
                .rsplit('.')
                .next()
                .unwrap()
                .to_string()
        })
        .collect()
}

/// `--compression zstd` writes the build's own layers as zstd and leaves the base's
/// alone; a later build asking for gzip converts the cached layers instead of re-running
/// their steps; `--force-compression` converts the base layers too; zstd builds are
/// reproducible across fresh roots.
#[test]
fn compression_applies_to_new_and_cached_layers() {
    let dockerfile = "FROM {base}\nRUN echo z > /z\nCOPY a.txt /a.txt\n";
    let Some(p) = project(dockerfile) else {
        return;
    };
    p.file("a.txt", "a\n");
    let z = p.build_ok(&["--compression", "zstd"]);
    assert_eq!(
        layer_types(&p.root(), &z.manifest()),
        ["tar+gzip", "tar+zstd", "tar+zstd"],
        "the base layer keeps its compression"
    );
    let g = p.build_ok(&[]);
    assert_eq!(
        layer_types(&p.root(), &g.manifest()),
        ["tar+gzip", "tar+gzip", "tar+gzip"]
    );
    assert!(
        cacheable(&steps(&g.stderr)).iter().all(|s| s.cached),
        "converting re-runs nothing: {}",
        g.stderr
    );
    assert_eq!(g.stdout, z.stdout, "the same image ID (config)");
    let f = p.build_ok(&["--compression", "zstd", "--force-compression"]);
    assert_eq!(
        layer_types(&p.root(), &f.manifest()),
        ["tar+zstd", "tar+zstd", "tar+zstd"]
    );
    // A fresh root unpacks the zstd layers (base included) when it builds on them.
    let tar = p.path("zstd.tar");
    p.build_ok(&[
        "--compression",
        "zstd",
        "--force-compression",
        "--output",
        &format!("type=oci,dest={}", tar.display()),
    ]);
    let layout = p.path("zstd-layout");
    std::fs::create_dir(&layout).unwrap();
    run(Command::new("tar")
        .arg("-xf")
        .arg(&tar)
        .arg("-C")
        .arg(&layout));
    let child = Project::new(&format!(
        "FROM oci-layout://{}:latest\nRUN cat /z /a.txt > /both\n",
        layout.display()
    ));
    let c = child.build_ok(&[
        "--output",
        &format!("type=local,dest={}", child.path("fs").display()),
    ]);
    assert!(c.success);
    assert_eq!(
        std::fs::read_to_string(child.path("fs/both")).unwrap(),
        "z\na\n"
    );
    let u = p.build_ok(&["--compression", "uncompressed"]);
    assert_eq!(
        layer_types(&p.root(), &u.manifest()),
        ["tar+gzip", "tar", "tar"]
    );
    check_store(&p.root());

    let fresh = Project::new(dockerfile);
    fresh.file(
        "Dockerfile",
        &dockerfile.replace("{base}", &p.base.reference()),
    );
    fresh.file("a.txt", "a\n");
    let again = fresh.build_ok(&["--compression", "zstd"]);
    assert_eq!(
        again.manifest(),
        z.manifest(),
        "zstd layers are reproducible"
    );

    let out = p.build(&["--compression", "lz4"]);
    assert!(!out.success);
    assert!(
        out.stderr.contains("gzip, zstd or uncompressed"),
        "{}",
        out.stderr
    );
}

/// `--add-host` lines reach every RUN's `/etc/hosts` (a step's own network or none),
/// never the image, and are part of the steps' keys; bad values are refused up front.
#[test]
fn add_host_reaches_run_steps_and_their_keys() {
    let Some(p) = project(
        "FROM {base}\n\
         RUN cat /etc/hosts > /hosts.txt\n\
         RUN --network=none cat /etc/hosts > /hosts-none.txt || true\n",
    ) else {
        return;
    };
    let local = p.path("local");
    let dest = format!("type=local,dest={}", local.display());
    p.build_ok(&[
        "--add-host",
        "db.internal:192.0.2.7",
        "--add-host",
        "v6.internal=2001:db8::7",
        "--output",
        &dest,
    ]);
    for f in ["hosts.txt", "hosts-none.txt"] {
        let text = std::fs::read_to_string(local.join(f)).unwrap();
        assert!(
            text.contains("192.0.2.7\tdb.internal\n2001:db8::7\tv6.internal\n"),
            "{f}: {text}"
        );
    }
    assert!(!file_tree(&local).contains_key("/etc/hosts"));
    // Without them the steps run again, and their files say so.
    let plain = p.build_ok(&["--output", &dest]);
    let steps = steps(&plain.stderr);
    assert!(!step(&steps, "hosts.txt").cached, "{}", plain.stderr);
    let text = std::fs::read_to_string(local.join("hosts.txt")).unwrap();
    assert!(!text.contains("db.internal"), "{text}");
    for (bad, says) in [
        ("db.internal", "expected NAME:ADDRESS"),
        ("db:192.0.2.300", "is not an IP address"),
        ("db:host-gateway", "host-gateway is not available"),
        ("a b:192.0.2.1", "is not a host name"),
    ] {
        let out = p.build(&["--add-host", bad]);
        assert!(!out.success, "{bad}");
        assert!(out.stderr.contains(says), "{bad}: {}", out.stderr);
    }
}
