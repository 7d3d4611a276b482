//! Build fidelity and bounds (issue 13, item 5): images Docker made are good bases,
//! COPY through symlinks as Docker and BuildKit do it, runaway variable expansion is an
//! error, SIGTERM is honoured while parsing and unpacking, and a killed build's secrets
//! do not stay in /dev/shm.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// The image config berth recorded for `name:tag` in `root`.
fn stored_config(root: &Path, name: &str, tag: &str) -> serde_json::Value {
    let blob = |d: &str| {
        let hex = d.trim().strip_prefix("sha256:").unwrap();
        std::fs::read(root.join("blobs/sha256").join(hex)).unwrap()
    };
    let manifest = std::fs::read_to_string(root.join(format!("repositories/{name}/_tags/{tag}")))
        .unwrap_or_else(|e| panic!("{name}:{tag} is not in the store: {e}"));
    let m: serde_json::Value = serde_json::from_slice(&blob(&manifest)).unwrap();
    serde_json::from_slice(&blob(m["config"]["digest"].as_str().unwrap())).unwrap()
}

#[test]
fn images_docker_made_are_bases() {
    if !require_build() || !require_docker() {
        return;
    }
    let d = docker();
    let dir = tempfile::tempdir().unwrap();
    let made = DockerMadeImages::new(dir.path(), &format!("berth-fid-{}", std::process::id()));
    let mut cleanup = DockerImages(Vec::new());
    let (imported, committed, classic) = (
        made.imported.clone(),
        made.committed.clone(),
        made.classic.clone(),
    );

    // Each reaches berth through a registry: berth's own, and Debian's for one.
    let reg_root = dir.path().join("registry");
    let reg = Berth::serve(&reg_root, &[]);
    let peer = Distribution::start();
    let layers_of = |image: &str| -> usize {
        run(Command::new(d).args([
            "image",
            "inspect",
            "--format",
            "{{len .RootFS.Layers}}",
            image,
        ]))
        .trim()
        .parse()
        .unwrap()
    };
    let mut bases = Vec::new();
    for (variant, image) in [
        ("imported", &imported),
        ("committed", &committed),
        ("classic", &classic),
    ] {
        let pushed = format!("{}/fid/{variant}:1", reg.addr);
        run(Command::new(d).args(["tag", image, &pushed]));
        run(Command::new(d).args(["push", &pushed]));
        cleanup.0.push(pushed.clone());
        bases.push((variant, pushed, layers_of(image)));
    }
    if let Some(peer) = &peer {
        let pushed = format!("{}/fid/imported:1", peer.addr);
        run(Command::new(d).args(["tag", &imported, &pushed]));
        run(Command::new(d).args(["push", &pushed]));
        cleanup.0.push(pushed.clone());
        bases.push(("distribution", pushed, layers_of(&imported)));
    }

    let root = dir.path().join("root");
    for (variant, base, base_layers) in &bases {
        let ctx = context(
            dir.path(),
            &format!("ctx-{variant}"),
            &format!("FROM {base}\nRUN echo berth-ran-on-{variant} > /ran\nENV ADDED=1\n"),
        );
        let out_dir = dir.path().join(format!("out-{variant}"));
        let tag = format!("fid-{variant}:1");
        let out = output(
            berth_build(&root)
                .args(["-t", &tag, "-o"])
                .arg(format!("type=local,dest={}", out_dir.display()))
                .arg(&ctx),
        );
        assert!(out.success, "FROM {variant} ({base}):\n{}", out.stderr);
        assert_eq!(
            std::fs::read_to_string(out_dir.join("ran")).unwrap(),
            format!("berth-ran-on-{variant}\n")
        );
        let config = stored_config(&root, &format!("fid-{variant}"), "1");
        let text = config.to_string();
        assert!(!text.contains("null"), "{variant}: {text}");
        let env = config["config"]["Env"].as_array().unwrap();
        assert_eq!(env.last().unwrap(), "ADDED=1", "{variant}: {text}");
        assert_eq!(
            config["rootfs"]["diff_ids"].as_array().unwrap().len(),
            base_layers + 1,
            "{variant}: the base's layers and the RUN's"
        );
        let cmd = &config["config"]["Cmd"];
        match *variant {
            // docker commit keeps the container's command.
            "committed" => assert_eq!(cmd, &serde_json::json!(["true"])),
            _ => assert!(cmd.is_null(), "{variant}: no Cmd: {cmd}"),
        }
    }
    assert!(
        dir.path().join("out-classic/classic").is_file(),
        "the classic builder's own RUN is in the result"
    );
}

/// The listing (`tar -tv`) of each layer of the image in an OCI tar export.
fn layer_listings(oci_tar: &Path, work: &Path) -> Vec<String> {
    std::fs::create_dir_all(work).unwrap();
    run(Command::new("tar")
        .arg("-C")
        .arg(work)
        .arg("-xf")
        .arg(oci_tar));
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(work.join("index.json")).unwrap()).unwrap();
    let blob = |d: &str| {
        work.join("blobs/sha256")
            .join(d.strip_prefix("sha256:").unwrap())
    };
    let m: serde_json::Value = serde_json::from_slice(
        &std::fs::read(blob(index["manifests"][0]["digest"].as_str().unwrap())).unwrap(),
    )
    .unwrap();
    m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            run(Command::new("tar")
                .arg("-tvzf")
                .arg(blob(l["digest"].as_str().unwrap())))
        })
        .collect()
}

#[test]
fn copy_of_a_source_and_a_link_to_it_gives_two_files() {
    if !require_build() {
        return;
    }
    let p = Project::new();
    let ctx = p.context("ctx", "COPY a b /dst/\nRUN stat -c '%h %F' /dst/a /dst/b\n");
    std::fs::write(ctx.join("a"), "content\n").unwrap();
    // `a` has a second name in the context (as checkouts and caches make), `b` links to it.
    std::fs::hard_link(ctx.join("a"), ctx.join("a-again")).unwrap();
    std::os::unix::fs::symlink("a", ctx.join("b")).unwrap();
    let root = p.path("root");
    let oci = p.path("image.tar");
    let out = output_ok(
        berth_build(&root)
            .arg("-o")
            .arg(format!("type=oci,dest={}", oci.display()))
            .arg(&ctx),
    );
    assert!(
        out.stderr.matches("1 regular file").count() >= 2,
        "two files, one link each:\n{}",
        out.stderr
    );
    let listings = layer_listings(&oci, &p.path("oci"));
    let listing = listings
        .iter()
        .find(|l| l.contains("dst/"))
        .expect("the COPY's layer");
    assert!(
        listing.contains("dst/a") && listing.contains("dst/b"),
        "{listing}"
    );
    assert!(
        !listing
            .lines()
            .any(|l| l.starts_with('h') || l.contains(" link to ")),
        "no hard link in the layer:\n{listing}"
    );
}

#[test]
fn copy_through_a_dangling_absolute_link_makes_its_target() {
    if !require_build() {
        return;
    }
    let p = Project::new();
    let ctx = p.context(
        "ctx",
        "RUN ln -s /opt/app /app\nCOPY x /app/\nCOPY x /app/sub/y\n\
         RUN cat /opt/app/x /opt/app/sub/y && ls -l /app\n",
    );
    std::fs::write(ctx.join("x"), "copied-through-the-link\n").unwrap();
    let out = output_ok(berth_build(&p.path("root")).arg(&ctx));
    assert!(
        out.stderr.matches("copied-through-the-link").count() >= 2,
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("/app -> /opt/app"),
        "the link stays a link:\n{}",
        out.stderr
    );
}

#[test]
fn runaway_expansion_is_an_error_naming_the_variable() {
    if !require_build() {
        return;
    }
    let p = Project::new();
    // 1 KiB, then doubled 40 times: a terabyte if nothing stops it.
    let mut body = format!("ARG A={}\n", "x".repeat(1024));
    for _ in 0..40 {
        body.push_str("ARG A=$A$A\n");
    }
    body.push_str("RUN echo never\n");
    let ctx = p.context("ctx", &body);
    let out = output(berth_build(&p.path("root")).arg(&ctx));
    assert!(!out.success);
    // 1 KiB doubles past 1 MiB at the eleventh doubling, line 13.
    assert!(out.stderr.contains("Dockerfile:13"), "{}", out.stderr);
    assert!(out.stderr.contains("$A"), "{}", out.stderr);
    assert!(out.stderr.contains("1048576"), "{}", out.stderr);
    assert!(!out.stderr.contains("never"), "{}", out.stderr);
}

/// Wait for `child` to exit, at most `limit` (killing it after); its exit code.
fn wait_at_most(child: &mut Child, limit: Duration) -> Option<i32> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(s) = child.try_wait().unwrap() {
            return s.code();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("berth had not exited {limit:?} after SIGTERM");
}

/// Start `cmd` with its standard error going to `log`.
fn spawn_logged(cmd: &mut Command, log: &Path) -> Child {
    cmd.stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

fn sigterm(child: &Child) {
    run(Command::new("kill").args(["-TERM", &child.id().to_string()]));
}

fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn sigterm_during_parsing_stops_the_build() {
    if !require_build() {
        return;
    }
    let p = Project::new();
    // Two million instructions: parsing and lowering them takes a minute here.
    let mut body = String::new();
    for i in 0..2_000_000 {
        body.push_str(&format!("ENV V{}={i} \\\n  W=1\n", i % 7));
    }
    let ctx = p.context("ctx", &body);
    drop(body);
    let (root, log) = (p.path("root"), p.path("build.log"));
    let mut child = spawn_logged(berth_build(&root).arg(&ctx), &log);
    // Berth reads the file at once; a moment later it is parsing.
    std::thread::sleep(Duration::from_secs(2));
    sigterm(&child);
    let code = wait_at_most(&mut child, Duration::from_secs(20));
    let err = std::fs::read_to_string(&log).unwrap();
    assert_eq!(code, Some(130), "{err}");
    assert!(err.contains("canceled"), "{err}");
}

#[test]
fn sigterm_during_unpacking_stops_it_and_leaves_nothing() {
    if !require_build() {
        return;
    }
    let p = Project::new();
    // The fixture: an image whose top layer holds 60000 files, made by berth itself
    // and exported as an OCI layout.
    let maker = p.context(
        "maker",
        "RUN mkdir /many && cd /many && busybox seq 1 60000 | busybox xargs busybox touch\n",
    );
    let oci = p.path("big.tar");
    output_ok(
        berth_build(&p.path("maker-root"))
            .args(["-t", "big:v1", "-o"])
            .arg(format!("type=oci,dest={}", oci.display()))
            .arg(&maker),
    );
    let layout = p.path("big");
    std::fs::create_dir_all(&layout).unwrap();
    run(Command::new("tar")
        .arg("-C")
        .arg(&layout)
        .arg("-xf")
        .arg(&oci));
    std::fs::remove_dir_all(p.path("maker-root")).unwrap();

    let ctx = context(
        p.dir.path(),
        "ctx",
        &format!(
            "FROM oci-layout://{}:v1\nRUN echo never-$((1+1))\n",
            layout.display()
        ),
    );
    let (root, log) = (p.path("root"), p.path("build.log"));
    let mut child = spawn_logged(berth_build(&root).arg(&ctx), &log);
    // Wait until the big layer is being unpacked: its staging directory has /many.
    let staging = root.join("snapshots/tmp");
    let start = Instant::now();
    loop {
        let unpacking = entries(&staging)
            .iter()
            .any(|e| staging.join(e).join("fs/many").is_dir());
        if unpacking {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the build ended before it unpacked: {}",
            std::fs::read_to_string(&log).unwrap()
        );
        assert!(start.elapsed() < Duration::from_secs(120), "never unpacked");
        std::thread::sleep(Duration::from_millis(10));
    }
    sigterm(&child);
    let code = wait_at_most(&mut child, Duration::from_secs(20));
    let err = std::fs::read_to_string(&log).unwrap();
    assert_eq!(code, Some(130), "{err}");
    assert!(!err.contains("never-2"), "the step did not run: {err}");
    // Stopped, not finished: the big layer was not installed, nothing staged or mounted
    // is left. The layers of an image unpack at once, so the busybox layer below is
    // installed if it was whole when the stop came, and abandoned too if not.
    assert_eq!(entries(&root.join("snapshots/tmp")), Vec::<String>::new());
    let layers = entries(&root.join("snapshots/layers"));
    assert!(
        layers.len() <= 1
            && layers.iter().all(|l| !root
                .join("snapshots/layers")
                .join(l)
                .join("fs/many")
                .exists()),
        "at most the busybox layer below; the big one was abandoned: {layers:?}"
    );
    assert_eq!(mounts_under(&root), 0);
}

/// The /dev/shm secret directories whose value is `secret`.
fn secret_dirs_holding(secret: &str) -> Vec<PathBuf> {
    std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("berth-secret-"))
                        && std::fs::read_to_string(p.join("value")).is_ok_and(|v| v == secret)
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn secrets_of_a_killed_build_are_removed_by_the_next() {
    if !require_build() || !Path::new("/dev/shm").is_dir() {
        return;
    }
    let p = Project::new();
    let secret = format!("fid-secret-{}-{:?}", std::process::id(), Instant::now());
    let file = p.path("secret.txt");
    std::fs::write(&file, &secret).unwrap();
    let ctx = p.context(
        "ctx",
        "RUN --mount=type=secret,id=tok echo ready-$((1+1)) && sleep 4325\n",
    );
    let (root, log) = (p.path("root"), p.path("build.log"));
    let mut child = spawn_logged(
        berth_build(&root)
            .args(["--secret"])
            .arg(format!("id=tok,src={}", file.display()))
            .arg(&ctx),
        &log,
    );
    let start = Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("ready-2")
    {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the step never ran"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let left = secret_dirs_holding(&secret);
    assert_eq!(
        left.len(),
        1,
        "the killed build left its secret (the case under test)"
    );

    let quick = p.context("quick", "RUN echo after-the-kill\n");
    output_ok(berth_build(&root).arg(&quick));
    assert!(!left[0].exists(), "{} was not removed", left[0].display());
    assert!(secret_dirs_holding(&secret).is_empty());
}
