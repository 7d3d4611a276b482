//! Steps with a dockerd of their own (`berth_build::docker::docker_run`, Earthly's
//! `WITH DOCKER`) and captured commands (`Solver::capture`), run for real: runc, overlayfs,
//! and the Docker daemon of Debian's docker.io copied from this machine into a busybox
//! image (scripts/make-dind-layout), so nothing is fetched.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use berth_build::docker::{DockerImage, docker_run};
use berth_build::image::{self, ImageConfig};
use berth_build::ir::{ExecOp, ImageSource, NetworkMode, State};
use berth_build::{BuildError, Cancel, Layer, NoProgress, Output, SolveOptions, Solver};
use berth_store::Store;

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../scripts")
        .join(name)
}

/// Root, runc, slirp4netns, busybox and Debian's docker.io binaries (else skip, or fail
/// under BERTH_TEST_STRICT=1).
fn ready() -> bool {
    if !rustix::process::geteuid().is_root() {
        return berth_testutil::skip("steps with their own dockerd need root (runc, overlayfs)");
    }
    let missing = ["/usr/sbin/runc", "/usr/bin/slirp4netns"]
        .into_iter()
        .find(|p| !Path::new(p).exists());
    match missing {
        Some(p) => berth_testutil::skip(&format!(
            "{p} is missing (scripts/install-test-deps installs runc and slirp4netns)"
        )),
        None => berth_testutil::require_dind_tools(),
    }
}

/// An OCI layout made by `script` in `dir`, resolved into the store.
fn layout(store: &Store, script_name: &str, dir: &Path) -> image::ResolvedImage {
    let out = Command::new(script(script_name))
        .arg(dir)
        .arg("t")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script_name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    image::resolve(store, &format!("oci-layout://{}:t", dir.display()), None).unwrap()
}

fn from(image: &image::ResolvedImage) -> State {
    State::image(ImageSource {
        reference: image.reference.clone(),
        manifest: image.manifest.clone(),
    })
}

fn sh(command: &str) -> ExecOp {
    ExecOp {
        args: vec!["/bin/sh".into(), "-c".into(), command.into()],
        env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
        cwd: "/".into(),
        network: NetworkMode::Isolated,
        ..ExecOp::default()
    }
}

fn solver(root: &Path, store: &Store, no_cache: bool) -> Arc<Solver> {
    let executor = Arc::new(
        berth_exec::Runc::new(&root.join("exec"))
            .unwrap()
            .with_privileged(true),
    );
    Solver::new(
        root,
        store.clone(),
        executor,
        SolveOptions {
            contexts: HashMap::new(),
            secrets: HashMap::new(),
            ssh: HashMap::new(),
            no_cache,
            source_date_epoch: None,
            compression: berth_build::Compression::Gzip,
            progress: Arc::new(NoProgress),
            cancel: Cancel::default(),
            build_id: "docker-step-test".into(),
            ca_bundle: None,
            step_slots: None,
            client: None,
        },
    )
    .unwrap()
}

/// The paths in the last layer of `layers` (the step's own changes).
fn last_layer_paths(store: &Store, layers: &[Layer]) -> Vec<String> {
    let last = layers.last().unwrap();
    let (file, _) = store.open_blob(&last.blob.digest).unwrap().unwrap();
    let reader: Box<dyn Read> = if last.blob.media_type.ends_with("gzip") {
        Box::new(flate2::read::GzDecoder::new(file))
    } else {
        Box::new(file)
    };
    let mut tar = tar::Archive::new(reader);
    let mut paths: Vec<String> = tar
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect();
    paths.sort();
    paths
}

/// An image built earlier in the same build is loaded into the step's dockerd and run
/// there; what the command writes is the step's result, and dockerd leaves nothing.
#[test]
fn a_step_runs_an_image_of_the_same_build_in_its_own_dockerd() {
    if !ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let store = Store::open(root.join("store")).unwrap();
    let dind = layout(&store, "make-dind-layout", &dir.path().join("dind"));
    let busybox = layout(&store, "make-busybox-layout", &dir.path().join("busybox"));

    // The app: busybox plus a file made by a step of this build, and a CMD.
    let app = from(&busybox).run(
        sh("echo \"made by step $$\" > /msg"),
        vec![],
        "[app] RUN echo",
    );
    let mut config: ImageConfig = busybox.config.clone();
    config.config.cmd = Some(vec!["cat".into(), "/msg".into()]);

    // And an image from the store, as `--pull` gives one (its gzip layer as stored).
    let pulled = DockerImage {
        tag: "pulled/busybox:1".into(),
        ..DockerImage::pulled(&busybox)
    };
    let step = docker_run(
        &from(&dind),
        sh("docker run --rm app:test > /result.txt \
            && docker run --rm pulled/busybox:1 echo pulled > /pulled.txt \
            && docker images --format '{{.Repository}}:{{.Tag}}' | sort > /images.txt"),
        vec![],
        vec![DockerImage::built("app:test", app.clone(), config), pulled],
        "WITH DOCKER RUN docker run app:test",
    )
    .unwrap();
    let failing = docker_run(
        &from(&dind),
        sh("docker run --rm app:test sh -c 'exit 7'"),
        vec![],
        vec![DockerImage::built(
            "app:test",
            app.clone(),
            ImageConfig::default(),
        )],
        "WITH DOCKER RUN exit 7",
    )
    .unwrap();

    let rt = tokio::runtime::Runtime::new().unwrap();
    let s = solver(&root, &store, false);
    let solved = rt.block_on(s.solve(&step)).unwrap();
    let Output::Layers(layers) = &solved.output else {
        panic!("not layers")
    };
    let app_layers = match &rt.block_on(s.solve(&app)).unwrap().output {
        Output::Layers(l) => l.clone(),
        _ => panic!("not layers"),
    };
    let out = dir.path().join("out");
    s.export_dir(layers, &out).unwrap();
    let app_out = dir.path().join("app-out");
    s.export_dir(&app_layers, &app_out).unwrap();
    let made = std::fs::read_to_string(app_out.join("msg")).unwrap();
    assert!(made.starts_with("made by step "), "{made}");
    assert_eq!(
        std::fs::read_to_string(out.join("result.txt")).unwrap(),
        made,
        "the container run in the step's dockerd is the image this build made"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("pulled.txt")).unwrap(),
        "pulled\n"
    );
    let images = std::fs::read_to_string(out.join("images.txt")).unwrap();
    assert_eq!(images, "app:test\npulled/busybox:1\n", "{images}");
    // Folders the image has may show (their times changed); nothing of dockerd's.
    let paths = last_layer_paths(&store, layers);
    for want in ["images.txt", "pulled.txt", "result.txt"] {
        assert!(paths.iter().any(|p| p == want), "{want} not in {paths:?}");
    }
    let traces = [
        "var/lib/docker",
        "etc/docker",
        "run/docker",
        "run/containerd",
        "var/run",
        "opt",
    ];
    assert!(
        paths
            .iter()
            .all(|p| !traces.iter().any(|t| p.starts_with(t))),
        "dockerd's data, key, sockets or the mount point are in the step's layer: {paths:?}"
    );
    assert!(
        std::fs::read_dir(root.join("tmp"))
            .unwrap()
            .flatten()
            .all(|e| !e.file_name().to_string_lossy().contains("docker")),
        "the scratch data root was removed"
    );

    // The step's exit code is the command's.
    let err = rt.block_on(s.solve(&failing)).unwrap_err();
    assert!(
        matches!(err, BuildError::StepFailed { code: 7, .. }),
        "{err}"
    );

    // An image without Docker: the wrapper says so, exit 125.
    let no_docker = docker_run(&from(&busybox), sh("true"), vec![], vec![], "WITH DOCKER").unwrap();
    match rt.block_on(s.solve(&no_docker)).unwrap_err() {
        BuildError::StepFailed { code, output, .. } => {
            assert_eq!(code, 125);
            assert!(output.contains("the image has no docker CLI"), "{output}");
        }
        other => panic!("{other}"),
    }

    // Same inputs in a later build: from cache, nothing runs (no dockerd either).
    drop(s);
    let again = solver(&root, &store, false);
    let cached = rt.block_on(again.solve(&step)).unwrap();
    assert_eq!(cached.key, solved.key);
}

/// A command's exit code and output, with real runc: a non-zero exit is an answer, and
/// the same question is answered from cache in the next build.
#[test]
fn captured_commands_answer_without_failing_the_build() {
    if !ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let store = Store::open(root.join("store")).unwrap();
    let busybox = layout(&store, "make-busybox-layout", &dir.path().join("busybox"));
    let base = from(&busybox).run(sh("echo 42 > /answer"), vec![], "RUN answer");
    let probe = base.run(
        sh("cat /answer; echo to-stderr >&2; cat /proc/sys/kernel/random/uuid; exit 3"),
        vec![],
        "IF cat /answer",
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let s = solver(&root, &store, false);
    let got = rt.block_on(s.capture(&probe)).unwrap();
    assert_eq!(got.code, 3);
    let text = got.text();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "stdout only: {text:?}");
    assert_eq!(lines[0], "42");
    drop(s);
    let again = solver(&root, &store, false);
    assert_eq!(
        rt.block_on(again.capture(&probe)).unwrap(),
        got,
        "the same answer, from cache (the uuid did not change)"
    );
    // --no-cache asks again: a new uuid.
    drop(again);
    let fresh = solver(&root, &store, true);
    let rerun = rt.block_on(fresh.capture(&probe)).unwrap();
    assert_eq!(rerun.code, 3);
    assert_ne!(rerun, got, "run again, not from cache");
}
