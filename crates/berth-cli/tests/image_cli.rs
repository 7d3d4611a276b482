//! Image management a Docker user expects (issue 17): `berth images` output for a fixed
//! store (formats, filters), `pull`/`tag`/`rmi` and `registry gc` freeing exactly what
//! no other image references, `rmi` refused while a build uses the image, `inspect`
//! equal to `docker image inspect` of the same image (and RepoDigests after a push),
//! `history`, `system df`/`prune`, completions and man pages.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;

fn berth(root: &Path) -> Command {
    let mut c = Command::new(berth_bin());
    c.arg("--root").arg(root).env("BERTH_LOG", "warn");
    c
}

fn sha256(path: &Path) -> String {
    let out = run(Command::new("sha256sum").arg(path));
    format!("sha256:{}", out.split_whitespace().next().unwrap())
}

/// A one-layer image written as an OCI layout tar by hand (GNU tar for the layer and
/// the archive): `files` in its layer, `created` in its config, `name` as its
/// `io.containerd.image.name`. Returns the archive, the config digest (image ID), the
/// manifest digest and the layer's size.
struct Made {
    archive: PathBuf,
    id: String,
    manifest: String,
    layer_size: u64,
}

fn make_image(dir: &Path, name: &str, created: &str, files: &[(&str, &str)]) -> Made {
    let work = dir.join(format!("img-{}-{created}", name.replace(['/', ':'], "-")));
    let (tree, layout) = (work.join("tree"), work.join("layout"));
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    for (path, text) in files {
        std::fs::write(tree.join(path), text).unwrap();
    }
    let layer = work.join("layer.tar");
    run(Command::new("tar")
        .args([
            "--sort=name",
            "--mtime=@0",
            "--owner=0",
            "--group=0",
            "--numeric-owner",
            "-C",
        ])
        .arg(&tree)
        .arg("-cf")
        .arg(&layer)
        .arg("."));
    let layer_digest = sha256(&layer);
    let layer_size = std::fs::metadata(&layer).unwrap().len();
    let blob = |d: &str| {
        layout
            .join("blobs/sha256")
            .join(d.strip_prefix("sha256:").unwrap())
    };
    std::fs::copy(&layer, blob(&layer_digest)).unwrap();
    let config = serde_json::json!({
        "created": created,
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"], "Labels": {"made": name}},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        "history": [
            {"created": created, "created_by": "/bin/sh -c #(nop) ADD file:0123456789abcdef0123456789abcdef in / "},
            {"created": created, "created_by": "/bin/sh -c #(nop)  CMD [\"sh\"]", "empty_layer": true},
        ],
    })
    .to_string();
    let config_path = work.join("config.json");
    std::fs::write(&config_path, &config).unwrap();
    let id = sha256(&config_path);
    std::fs::write(blob(&id), &config).unwrap();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": id, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer_size}],
    })
    .to_string();
    let manifest_path = work.join("manifest.json");
    std::fs::write(&manifest_path, &manifest).unwrap();
    let digest = sha256(&manifest_path);
    std::fs::write(blob(&digest), &manifest).unwrap();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest, "size": manifest.len(),
            "annotations": {"io.containerd.image.name": name},
        }],
    });
    std::fs::write(layout.join("index.json"), index.to_string()).unwrap();
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let archive = work.join("image.tar");
    run(Command::new("tar")
        .arg("-C")
        .arg(&layout)
        .arg("-cf")
        .arg(&archive)
        .arg("."));
    Made {
        archive,
        id,
        manifest: digest,
        layer_size,
    }
}

/// Every blob and repository link of the root an hour old, so gc's grace (and its
/// clock margin) cannot be what keeps a blob.
fn backdate(root: &Path) {
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    let mut todo = vec![root.join("blobs"), root.join("repositories")];
    while let Some(dir) = todo.pop() {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else if let Ok(f) = std::fs::File::options().write(true).open(&p) {
                f.set_modified(old).unwrap();
            } else {
                // Blobs are read-only: open for times as their owner (root in tests).
                let _ = Command::new("touch")
                    .arg("-d")
                    .arg("1 hour ago")
                    .arg(&p)
                    .status();
            }
        }
    }
}

/// The fixed store: `app:1` and `app:2` (two images), `team/tool:latest` naming
/// app:1's image, and a dangling image (app:1's name moved to another image).
struct Fixed {
    _dir: tempfile::TempDir,
    root: PathBuf,
    a: Made,
    b: Made,
    old: Made,
}

fn fixed_store() -> Fixed {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let old = make_image(dir.path(), "app:1", "2001-02-03T04:05:06Z", &[("v", "old")]);
    let a = make_image(dir.path(), "app:1", "2020-01-02T03:04:05Z", &[("v", "one")]);
    let b = make_image(
        dir.path(),
        "app:2",
        "2021-06-07T08:09:10.5+02:00",
        &[("v", "two!")],
    );
    for m in [&old, &a, &b] {
        run(berth(&root).arg("import").arg(&m.archive));
    }
    run(berth(&root).args(["tag", "app:1", "team/tool"]));
    Fixed {
        _dir: dir,
        root,
        a,
        b,
        old,
    }
}

fn short(id: &str) -> &str {
    &id["sha256:".len().."sha256:".len() + 12]
}

#[test]
fn images_formats_and_filters_for_a_fixed_store() {
    if !require("tar") || !require("sha256sum") {
        return;
    }
    let f = fixed_store();
    let (a, b, old) = (short(&f.a.id), short(&f.b.id), short(&f.old.id));
    // Docker's three significant digits; GNU tar writes at least 10 kB.
    let size = |m: &Made| {
        let kb = m.layer_size as f64 / 1000.0;
        assert!((10.0..100.0).contains(&kb), "{kb}");
        format!("{kb:.1}kB")
    };
    let table = run(berth(&f.root).args([
        "images",
        "--format",
        r"table {{.Repository}}\t{{.Tag}}\t{{.ID}}\t{{.CreatedAt}}\t{{.Size}}",
    ]));
    let want = format!(
        "REPOSITORY   TAG       IMAGE ID       CREATED AT                      SIZE\n\
         app          1         {a}   2020-01-02 03:04:05 +0000 UTC   {}\n\
         app          2         {b}   2021-06-07 06:09:10 +0000 UTC   {}\n\
         app          <none>    {old}   2001-02-03 04:05:06 +0000 UTC   {}\n\
         team/tool    latest    {a}   2020-01-02 03:04:05 +0000 UTC   {}\n",
        size(&f.a),
        size(&f.b),
        size(&f.old),
        size(&f.a),
    );
    assert_eq!(table, want);

    // The default table: docker's columns, with the manifest digest by --digests.
    let plain = run(berth(&f.root).arg("images"));
    assert!(
        plain.starts_with("REPOSITORY   TAG       IMAGE ID       CREATED        SIZE\n"),
        "{plain}"
    );
    let digests = run(berth(&f.root).args(["images", "--digests"]));
    assert!(
        digests.lines().next().unwrap().contains("   DIGEST   "),
        "{digests}"
    );
    assert!(digests.contains(&f.b.manifest), "{digests}");

    let template = |args: &[&str]| {
        run(berth(&f.root)
            .arg("images")
            .args(args)
            .args(["--format", "{{.Repository}}:{{.Tag}}"]))
    };
    assert_eq!(template(&["--filter", "dangling=true"]), "app:<none>\n");
    assert_eq!(
        template(&["--filter", "dangling=false", "--filter", "reference=app"]),
        "app:1\napp:2\n"
    );
    assert_eq!(
        template(&["--filter", "reference=*/t*", "--filter", "reference=app:2"]),
        "app:2\nteam/tool:latest\n"
    );
    assert_eq!(template(&["app:1"]), "app:1\n");
    let err = run_fails(berth(&f.root).args(["images", "--filter", "label=x"]));
    assert!(err.contains("reference=PATTERN"), "{err}");

    let quiet = run(berth(&f.root).args(["images", "-q"]));
    assert_eq!(quiet, format!("{a}\n{b}\n{old}\n"));
    let full = run(berth(&f.root).args(["images", "-q", "--no-trunc", "app:2"]));
    assert_eq!(full.trim(), f.b.id);

    let json = run(berth(&f.root).args(["images", "--format", "json", "app:2"]));
    let row: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(row["Repository"], "app");
    assert_eq!(row["Tag"], "2");
    assert_eq!(row["ID"], b);
    assert_eq!(row["Digest"], f.b.manifest.as_str());
    assert_eq!(row["Size"], size(&f.b));
    let err = run_fails(berth(&f.root).args(["images", "--format", "{{.Nope}}"]));
    assert!(err.contains("no field .Nope"), "{err}");

    // history: newest first, the layer's size on the step that made it.
    let history = run(berth(&f.root).args([
        "history",
        "app:2",
        "--format",
        r"{{.ID}}|{{.CreatedAt}}|{{.CreatedBy}}|{{.Size}}",
    ]));
    assert_eq!(
        history,
        format!(
            "{b}|2021-06-07 06:09:10 +0000 UTC|/bin/sh -c #(nop)  CMD [\"sh\"]|0B\n\
             <missing>|2021-06-07 06:09:10 +0000 UTC|/bin/sh -c #(nop) ADD file:0123456789abcdef0…|{}\n",
            size(&f.b)
        )
    );
    let long = run(berth(&f.root).args(["history", "--no-trunc", "app:2"]));
    assert!(
        long.contains("ADD file:0123456789abcdef0123456789abcdef in /"),
        "{long}"
    );
    assert!(long.contains(&f.b.id), "{long}");
    assert!(long.starts_with("IMAGE"), "{long}");
}

#[test]
fn rmi_untags_and_gc_frees_exactly_the_blobs_no_other_image_references() {
    if !require("tar") || !require("sha256sum") {
        return;
    }
    let f = fixed_store();
    let root = &f.root;
    // By ID while two names hold it: refused without -f.
    let err = run_fails(berth(root).args(["rmi", short(&f.a.id)]));
    assert!(err.contains("must be forced"), "{err}");
    // A name among several: only untagged.
    let out = run(berth(root).args(["rmi", "team/tool"]));
    assert_eq!(out, "Untagged: team/tool:latest\n");
    let err = run_fails(berth(root).args(["rmi", "nosuch:1"]));
    assert!(err.contains("no such image: nosuch:1"), "{err}");
    run(berth(root).args(["rmi", "-f", "nosuch:1"]));

    // app:2's image goes with its last name; app:1's and the dangling one stay.
    let blobs_of = |m: &Made| -> BTreeSet<String> {
        let manifest: serde_json::Value =
            serde_json::from_str(&run(Command::new("cat").arg(blob_path(root, &m.manifest))))
                .unwrap();
        let mut out = BTreeSet::from([m.manifest.clone(), m.id.clone()]);
        out.insert(
            manifest["layers"][0]["digest"]
                .as_str()
                .unwrap()
                .to_string(),
        );
        out
    };
    let b_blobs = blobs_of(&f.b);
    let out = run(berth(root).args(["rmi", "app:2"]));
    assert_eq!(out, format!("Untagged: app:2\nDeleted: {}\n", f.b.id));
    backdate(root);
    let gc = run(berth(root).args(["registry", "gc", "--grace", "0s"]));
    let removed: BTreeSet<String> = gc
        .lines()
        .filter_map(|l| l.strip_prefix("removed blob "))
        .map(str::to_string)
        .collect();
    assert_eq!(removed, b_blobs, "{gc}");
    check_store(root);
    for m in [&f.a, &f.old] {
        for d in blobs_of(m) {
            assert!(blob_path(root, &d).exists(), "{d} kept");
        }
    }

    // The dangling image by ID: no name holds it, so it goes without -f.
    let out = run(berth(root).args(["rmi", short(&f.old.id)]));
    assert_eq!(
        out,
        format!("Untagged: app@{}\nDeleted: {}\n", f.old.manifest, f.old.id)
    );
    let left = run(berth(root).args(["images", "--format", "{{.Repository}}:{{.Tag}}"]));
    assert_eq!(left, "app:1\n");
}

fn blob_path(root: &Path, digest: &str) -> PathBuf {
    root.join("blobs/sha256")
        .join(digest.trim().strip_prefix("sha256:").unwrap())
}

#[test]
fn system_df_and_prune() {
    if !require("tar") || !require("sha256sum") {
        return;
    }
    let f = fixed_store();
    let root = &f.root;
    let df = run(berth(root).args(["system", "df", "--format", "json"]));
    let rows: Vec<serde_json::Value> = df
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds: Vec<&str> = rows.iter().map(|r| r["Type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["Images", "Build Cache", "Cache Mounts", "Registry Data"]
    );
    assert_eq!(rows[0]["TotalCount"], "3", "three image IDs: {df}");
    let verbose = run(berth(root).args(["system", "df", "-v"]));
    assert!(verbose.contains("UNIQUE SIZE"), "{verbose}");

    // Asked, and refused: nothing goes.
    let mut c = berth(root);
    c.args(["system", "prune"]).stdin(Stdio::piped());
    let mut child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"n\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Are you sure"));
    assert!(run(berth(root).args(["images", "-q"])).contains(short(&f.old.id)));

    // Dangling images go, named ones stay; their blobs are freed at once.
    backdate(root);
    let out = run(berth(root).args(["system", "prune", "--force"]));
    assert!(out.contains(&format!("Deleted: {}", f.old.id)), "{out}");
    assert!(out.contains("Deleted blobs: 3 "), "{out}");
    assert!(!blob_path(root, &f.old.manifest).exists());
    let left = run(berth(root).args(["images", "--format", "{{.Repository}}:{{.Tag}}"]));
    assert_eq!(left, "app:1\napp:2\nteam/tool:latest\n");

    // --all: every image.
    let out = run(berth(root).args(["system", "prune", "--all", "--force"]));
    assert!(out.contains(&format!("Deleted: {}", f.a.id)), "{out}");
    assert_eq!(run(berth(root).args(["images", "-q"])), "");
    assert!(!blob_path(root, &f.a.manifest).exists());
    check_store(root);
}

#[test]
fn pull_tag_and_rmi_refused_while_a_build_uses_the_image() {
    if !require_build() || !require("skopeo") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let base = BuildBase::new();
    let reg = Berth::serve(&dir.path().join("reg"), &[]);
    let remote = format!("{}/team/base:1", reg.addr);
    run(&mut skopeo_copy(
        &format!("oci:{}:base", base.layout().display()),
        &format!("docker://{remote}"),
        &["--dest-tls-verify=false"],
    ));
    let root = dir.path().join("root");
    let pulled = output_ok(berth(&root).args(["pull", &remote]));
    assert!(pulled.stderr.contains("Pull complete"), "{}", pulled.stderr);
    let manifest = layout_digest(&base.layout());
    assert!(
        pulled.stderr.contains(&format!("Digest: {manifest}")),
        "{}",
        pulled.stderr
    );
    // Pulled again: every blob is there.
    let again = output_ok(berth(&root).args(["pull", "--platform", "linux/amd64", &remote]));
    assert!(again.stderr.contains("Already exists"), "{}", again.stderr);
    run(berth(&root).args(["tag", &remote, "base:1"]));
    let inspected =
        run(berth(&root).args(["inspect", "--format", "{{json .RepoDigests}}", "base:1"]));
    assert_eq!(
        inspected.trim(),
        format!("[\"{}/team/base@{manifest}\"]", reg.addr)
    );

    // A build waits in a RUN on a gate; meanwhile its base cannot be removed.
    let ctx = context(
        dir.path(),
        "ctx",
        "FROM base:1\nRUN --mount=type=cache,target=/gate,id=gate sh -c \
         'touch /gate/started; for i in $(seq 3000); do [ -f /gate/go ] && exit 0; sleep 0.1; done; exit 1'\n",
    );
    let mut build = berth_build(&root)
        .args(["-t", "built:1"])
        .arg(&ctx)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let gate = |file: &str| -> Option<PathBuf> {
        std::fs::read_dir(root.join("cache/mounts"))
            .ok()?
            .flatten()
            .map(|e| e.path().join(file))
            .next()
    };
    let mut waited = 0;
    while !gate("started").is_some_and(|p| p.exists()) {
        assert!(build.try_wait().unwrap().is_none(), "the build ended early");
        std::thread::sleep(std::time::Duration::from_millis(100));
        waited += 1;
        assert!(waited < 3000, "the build never reached its RUN");
    }
    for args in [&["rmi", "base:1"][..], &["rmi", "-f", "base:1"]] {
        let err = run_fails(berth(&root).args(args));
        assert!(err.contains("a running build uses image"), "{err}");
    }
    std::fs::write(gate("go").unwrap(), "").unwrap();
    let out = build.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(berth(&root).args(["rmi", "base:1"]));
    assert_eq!(out, "Untagged: base:1\n", "the pulled name still holds it");
}

/// Adds to the busybox layout `layout` an index `multi` of two platforms: the real image
/// as linux/amd64 and a linux/arm64 one (its config says so; the layer is the same).
/// Returns the index digest.
fn add_multi_platform_index(layout: &Path) -> String {
    let blobs = layout.join("blobs/sha256");
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let amd64 = index["manifests"][0].clone();
    let read = |d: &str| std::fs::read(blobs.join(d.strip_prefix("sha256:").unwrap())).unwrap();
    let put = |bytes: &[u8]| {
        let tmp = layout.join("tmp-blob");
        std::fs::write(&tmp, bytes).unwrap();
        let d = sha256(&tmp);
        std::fs::rename(&tmp, blobs.join(d.strip_prefix("sha256:").unwrap())).unwrap();
        d
    };
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&read(amd64["digest"].as_str().unwrap())).unwrap();
    let mut config: serde_json::Value =
        serde_json::from_slice(&read(manifest["config"]["digest"].as_str().unwrap())).unwrap();
    config["architecture"] = "arm64".into();
    let config = config.to_string();
    manifest["config"]["digest"] = put(config.as_bytes()).into();
    manifest["config"]["size"] = config.len().into();
    let manifest = manifest.to_string();
    let child = |d: &serde_json::Value, size: usize, arch: &str| {
        serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": d, "size": size,
            "platform": {"os": "linux", "architecture": arch},
        })
    };
    let multi = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            child(&amd64["digest"], amd64["size"].as_u64().unwrap() as usize, "amd64"),
            child(&put(manifest.as_bytes()).into(), manifest.len(), "arm64"),
        ],
    })
    .to_string();
    let digest = put(multi.as_bytes());
    let mut index = index;
    index["manifests"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": digest, "size": multi.len(),
            "annotations": {"org.opencontainers.image.ref.name": "multi"},
        }));
    std::fs::write(layout.join("index.json"), index.to_string()).unwrap();
    digest
}

#[test]
fn pull_every_platform_or_one() {
    if !require("skopeo") || !require("busybox") || std::env::consts::ARCH != "x86_64" {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let base = BuildBase::new();
    let index = add_multi_platform_index(&base.layout());
    let reg = Berth::serve(&dir.path().join("reg"), &[]);
    let remote = format!("{}/team/multi:1", reg.addr);
    run(&mut skopeo_copy(
        &format!("oci:{}:multi", base.layout().display()),
        &format!("docker://{remote}"),
        &["--all", "--dest-tls-verify=false"],
    ));

    let root = dir.path().join("all");
    let pulled = output_ok(berth(&root).args(["pull", &remote]));
    assert!(
        pulled.stderr.contains(&format!("Digest: {index}")),
        "{}",
        pulled.stderr
    );
    let shown = run(berth(&root).args([
        "images",
        "--digests",
        "--format",
        "{{.Repository}} {{.Digest}}",
    ]));
    assert_eq!(shown, format!("{}/team/multi {index}\n", reg.addr));
    // Both platforms are in the store: the index pushes whole, and checks clean.
    let copy = format!("{}/team/copy:1", reg.addr);
    run(berth(&root).args(["push", &remote, &copy]));
    let served = run(Command::new("skopeo").args([
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{copy}"),
    ]));
    assert_eq!(served.matches("\"platform\"").count(), 2, "{served}");
    check_store(&root);
    // This machine's platform is what inspect describes.
    let arch = run(berth(&root).args(["inspect", "-f", "{{.Architecture}}", &remote]));
    assert_eq!(arch.trim(), "amd64");

    let one = dir.path().join("one");
    run(berth(&one).args(["pull", "--platform", "linux/arm64", &remote]));
    let arch = run(berth(&one).args([
        "inspect",
        "-f",
        "{{.Architecture}} {{json .RepoDigests}}",
        &remote,
    ]));
    assert_eq!(
        arch.trim(),
        format!("arm64 [\"{}/team/multi@{index}\"]", reg.addr)
    );
    check_store(&one);
}

#[test]
fn inspect_equals_docker_image_inspect() {
    if !require_build() || !require_docker() {
        return;
    }
    let d = docker();
    let dir = tempfile::tempdir().unwrap();
    let base = BuildBase::new();
    let root = dir.path().join("root");
    let name = format!("berth-inspect-{}:1", std::process::id());
    let ctx = context(
        dir.path(),
        "ctx",
        &format!(
            "FROM {}\nRUN echo x > /x\nENV A=1 B=two\nWORKDIR /srv\nUSER 1000:1000\nLABEL org.x=y\n\
             EXPOSE 8080/tcp\nVOLUME /data\nSTOPSIGNAL SIGINT\n\
             HEALTHCHECK --interval=5s CMD true\nENTRYPOINT [\"/bin/sh\", \"-c\"]\n\
             CMD [\"echo hi\"]\n",
            base.reference()
        ),
    );
    output_ok(berth_build(&root).args(["-t", &name]).arg(&ctx));
    let archive = dir.path().join("saved.tar");
    run(berth(&root).args(["save", &name, "-o"]).arg(&archive));
    let _cleanup = DockerImages(vec![name.clone()]);
    run(Command::new(d).args(["load", "-i"]).arg(&archive));
    let theirs: serde_json::Value =
        serde_json::from_str(&run(Command::new(d).args(["image", "inspect", &name]))).unwrap();
    let ours: serde_json::Value =
        serde_json::from_str(&run(berth(&root).args(["inspect", &name]))).unwrap();
    let (theirs, ours) = (&theirs[0], &ours[0]);
    for field in [
        "Id",
        "Config",
        "ContainerConfig",
        "RootFS",
        "Architecture",
        "Os",
        "Created",
        "Author",
        "Comment",
    ] {
        assert_eq!(ours[field], theirs[field], "{field}");
    }
    assert_eq!(ours["Config"]["Healthcheck"]["Interval"], 5_000_000_000u64);
    assert_eq!(ours["RepoTags"], serde_json::json!([name]));

    // Pushed to a registry and pulled by Docker from there: the same RepoDigests.
    let reg = Berth::serve(&dir.path().join("reg"), &[]);
    let remote = format!("{}/inspect/app:1", reg.addr);
    run(berth(&root).args(["push", &name, &remote]));
    let _cleanup2 = DockerImages(vec![remote.clone()]);
    run(Command::new(d).args(["pull", &remote]));
    let docker_digests = run(Command::new(d).args([
        "image",
        "inspect",
        "--format",
        "{{json .RepoDigests}}",
        &remote,
    ]));
    let ours = run(berth(&root).args(["inspect", "--format", "{{json .RepoDigests}}", &name]));
    assert_eq!(ours.trim(), docker_digests.trim());
    assert!(
        ours.contains(&format!("{}/inspect/app@sha256:", reg.addr)),
        "{ours}"
    );
}

#[test]
fn completions_and_man_pages() {
    let dir = tempfile::tempdir().unwrap();
    let bash = run(Command::new(berth_bin()).args(["completions", "bash"]));
    assert!(bash.contains("rmi") && bash.contains("_berth"), "{bash}");
    let script = dir.path().join("berth.bash");
    std::fs::write(&script, &bash).unwrap();
    run(Command::new("bash").arg("-n").arg(&script));
    let zsh = run(Command::new(berth_bin()).args(["completions", "zsh"]));
    assert!(zsh.starts_with("#compdef berth"), "{zsh}");
    let fish = run(Command::new(berth_bin()).args(["completions", "fish"]));
    assert!(fish.contains("complete -c berth"), "{fish}");

    let man = dir.path().join("man1");
    run(Command::new(berth_bin()).arg("man").arg(&man));
    for page in [
        "berth.1",
        "berth-rmi.1",
        "berth-system-prune.1",
        "berth-registry-gc.1",
    ] {
        let text =
            std::fs::read_to_string(man.join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(text.contains(".TH"), "{page}: {text}");
    }
    if require("groff") {
        let out = run(Command::new("groff")
            .args(["-man", "-Tutf8"])
            .arg(man.join("berth-rmi.1")));
        assert!(out.contains("berth-rmi"), "{out}");
    }
}

/// `berth pull` takes what FROM takes: credentials from Docker's config (refused
/// without them, saying what to do), and `[registries."host"] mirrors` tried before an
/// upstream that does not answer.
#[test]
fn pull_uses_registry_credentials_and_mirrors() {
    if !require("skopeo") || !require("busybox") || !require("htpasswd") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let base = BuildBase::new();
    let private_dir = dir.path().join("private");
    std::fs::create_dir_all(&private_dir).unwrap();
    let private = serve_with_user(&private_dir, "ci", "pw");
    let remote = format!("{}/team/app:1", private.addr);
    run(&mut skopeo_copy(
        &format!("oci:{}:base", base.layout().display()),
        &format!("docker://{remote}"),
        &["--dest-creds", "ci:pw"],
    ));
    let none = dir.path().join("no-creds");
    std::fs::create_dir_all(&none).unwrap();
    let root = dir.path().join("root");
    let refused = output(
        berth(&root)
            .env("DOCKER_CONFIG", &none)
            .args(["pull", &remote]),
    );
    assert!(!refused.success, "pulled without credentials");
    assert!(
        refused.stderr.contains("authentication failed") && refused.stderr.contains("log in"),
        "{}",
        refused.stderr
    );
    let creds = dir.path().join("creds");
    std::fs::create_dir_all(&creds).unwrap();
    // "ci:pw" in base64, as `docker login` writes it.
    std::fs::write(
        creds.join("config.json"),
        format!(
            "{{\"auths\":{{\"{}\":{{\"auth\":\"Y2k6cHc=\"}}}}}}",
            private.addr
        ),
    )
    .unwrap();
    output_ok(
        berth(&root)
            .env("DOCKER_CONFIG", &creds)
            .args(["pull", &remote]),
    );
    let id = run(berth(&root).args(["inspect", "-f", "{{.Id}}", &remote]));
    assert!(id.trim().starts_with("sha256:"), "{id}");
    check_store(&root);

    // An upstream nothing answers (a closed port on loopback), mirrored by a registry that
    // holds the same repository: the pull comes from the mirror.
    let mirror = Berth::serve(&dir.path().join("mirror"), &[]);
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream = closed.local_addr().unwrap().to_string();
    drop(closed);
    run(&mut skopeo_copy(
        &format!("oci:{}:base", base.layout().display()),
        &format!("docker://{}/team/app:1", mirror.addr),
        &[],
    ));
    let config = dir.path().join("config");
    std::fs::create_dir_all(config.join("berth")).unwrap();
    std::fs::write(
        config.join("berth/config.toml"),
        format!(
            "[registries.\"{upstream}\"]\nmirrors = [\"{}\"]\n",
            mirror.addr
        ),
    )
    .unwrap();
    let mirrored = dir.path().join("mirrored");
    let via = format!("{upstream}/team/app:1");
    output_ok(
        berth(&mirrored)
            .env("XDG_CONFIG_HOME", &config)
            .env("DOCKER_CONFIG", &none)
            .args(["pull", &via]),
    );
    let pulled = run(berth(&mirrored).args(["inspect", "-f", "{{.Id}}", &via]));
    assert_eq!(pulled, id, "the mirror's image is the same image");
    check_store(&mirrored);
}
