//! Builds for another platform than the host's (`berth build --platform`, `FROM
//! --platform`): base images resolved to that platform's child of an index, the image
//! config naming the platform, BuildKit's TARGET*/BUILD* ARGs, RUN steps under the
//! kernel's binfmt_misc emulation or a clear error without it, and the image loaded into
//! dockerd. The base is an OCI layout made offline by scripts/make-platform-layout: an
//! index of the busybox image (linux/amd64) and a tiny linux/arm64 tree whose `/hello` is
//! an aarch64 program.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// The two-platform layout and its children's manifest digests.
struct Fixture {
    _dir: tempfile::TempDir,
    layout: PathBuf,
    amd64: String,
    arm64: String,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let layout = dir.path().join("multi");
        let (amd64, arm64) = platform_layout(&layout, "t");
        Fixture {
            _dir: dir,
            layout,
            amd64,
            arm64,
        }
    }

    /// `oci-layout://…:t`.
    fn reference(&self) -> String {
        format!("oci-layout://{}:t", self.layout.display())
    }

    /// A build context on the layout: `ARG TARGETARCH`, `LABEL arch=$TARGETARCH`, a COPY.
    fn labelled_context(&self, dir: &Path) -> PathBuf {
        let ctx = context(
            dir,
            "ctx",
            &format!(
                "FROM {}\nARG TARGETARCH\nLABEL arch=$TARGETARCH\nCOPY note /note\n",
                self.reference()
            ),
        );
        std::fs::write(ctx.join("note"), "n\n").unwrap();
        ctx
    }

    /// The diff IDs of a child manifest of the layout.
    fn diff_ids(&self, manifest: &str) -> Vec<String> {
        let blob = |d: &str| {
            let path = self.layout.join("blobs/sha256").join(&d["sha256:".len()..]);
            serde_json::from_slice::<serde_json::Value>(&std::fs::read(path).unwrap()).unwrap()
        };
        let m = blob(manifest);
        let config = blob(m["config"]["digest"].as_str().unwrap());
        config["rootfs"]["diff_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_str().unwrap().to_string())
            .collect()
    }
}

/// Builds run here, on an amd64 host (the fixture's foreign child is arm64).
fn ready() -> bool {
    if std::env::consts::ARCH != "x86_64" {
        return berth_testutil::skip("these tests build linux/arm64 images on an amd64 host");
    }
    require_build()
}

/// The `berth inspect` document of `name` in `root`.
fn inspect(root: &Path, name: &str) -> serde_json::Value {
    let out = output_ok(
        Command::new(berth_bin())
            .arg("--root")
            .arg(root)
            .args(["inspect", name]),
    );
    let docs: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    docs[0].clone()
}

fn layers(doc: &serde_json::Value) -> Vec<String> {
    doc["RootFS"]["Layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap().to_string())
        .collect()
}

/// Whether this kernel runs aarch64 binaries inside containers: a qemu-aarch64
/// binfmt_misc handler, enabled, with the F flag.
fn arm64_emulation() -> bool {
    std::fs::read_to_string("/proc/sys/fs/binfmt_misc/qemu-aarch64").is_ok_and(|t| {
        t.starts_with("enabled")
            && t.lines()
                .any(|l| l.strip_prefix("flags:").is_some_and(|f| f.contains('F')))
    })
}

#[test]
fn arm64_build_takes_the_arm64_child_and_names_its_platform() {
    if !ready() {
        return;
    }
    let fx = Fixture::new();
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(
        dir.path(),
        "ctx",
        &format!(
            "FROM {}\nARG TARGETARCH\nARG TARGETPLATFORM\nARG BUILDARCH\n\
             LABEL arch=$TARGETARCH platform=$TARGETPLATFORM build=$BUILDARCH\n\
             COPY note /note\nENV AT=/note\n",
            fx.reference()
        ),
    );
    std::fs::write(ctx.join("note"), "a note\n").unwrap();
    let root = dir.path().join("root");
    let arm = output_ok(
        berth_build(&root)
            .args(["--platform", "linux/arm64", "-t", "plat:arm64"])
            .arg(&ctx),
    );
    let doc = inspect(&root, "plat:arm64");
    assert_eq!(doc["Architecture"], "arm64", "{doc:#}");
    assert_eq!(doc["Os"], "linux");
    assert_eq!(
        doc["Config"]["Labels"],
        serde_json::json!({"arch": "arm64", "platform": "linux/arm64", "build": "amd64"})
    );
    let got = layers(&doc);
    let base = fx.diff_ids(&fx.arm64);
    assert_eq!(got.len(), base.len() + 1, "{got:?}");
    assert_eq!(
        got[..base.len()],
        base[..],
        "the base layers are the arm64 child's"
    );

    // The same Dockerfile for the host: the amd64 child, amd64 in the config; the COPY
    // on it is another step (its input differs), not the arm64 one from cache.
    let host = output_ok(berth_build(&root).args(["-t", "plat:host"]).arg(&ctx));
    let doc = inspect(&root, "plat:host");
    assert_eq!(doc["Architecture"], "amd64");
    assert_eq!(doc["Config"]["Labels"]["arch"], "amd64");
    let got = layers(&doc);
    let base = fx.diff_ids(&fx.amd64);
    assert_eq!(
        got[..base.len()],
        base[..],
        "the base layers are the amd64 child's"
    );
    assert_ne!(arm.manifest(), host.manifest());

    // Again for arm64: every step from cache, the same image.
    let again = output_ok(
        berth_build(&root)
            .args(["--platform", "linux/aarch64", "-t", "plat:arm64"])
            .arg(&ctx),
    );
    assert_eq!(again.manifest(), arm.manifest(), "{}", again.stderr);
    assert!(again.stderr.contains("CACHED"), "{}", again.stderr);
}

#[test]
fn build_platform_stage_cross_builds_for_the_target() {
    if !ready() {
        return;
    }
    let fx = Fixture::new();
    let dir = tempfile::tempdir().unwrap();
    // The cross-compiling pattern: a stage on the build platform (runs natively) that
    // knows the target from TARGETARCH, its result copied into the target's image.
    let ctx = context(
        dir.path(),
        "ctx",
        &format!(
            "FROM --platform=$BUILDPLATFORM {base} AS build\n\
             ARG TARGETPLATFORM TARGETOS TARGETARCH TARGETVARIANT BUILDPLATFORM BUILDARCH\n\
             RUN echo \"$TARGETPLATFORM $TARGETOS $TARGETARCH [$TARGETVARIANT] on $BUILDPLATFORM $BUILDARCH $(uname -m)\" > /out\n\
             FROM {base}\nCOPY --from=build /out /out\n",
            base = fx.reference()
        ),
    );
    let root = dir.path().join("root");
    let dest = dir.path().join("fs");
    output_ok(
        berth_build(&root)
            .args(["--platform", "linux/arm64/v8", "-t", "cross:arm64"])
            .arg("-o")
            .arg(format!("type=local,dest={}", dest.display()))
            .arg(&ctx),
    );
    assert_eq!(
        std::fs::read_to_string(dest.join("out")).unwrap(),
        "linux/arm64 linux arm64 [] on linux/amd64 amd64 x86_64\n"
    );
    assert_eq!(
        std::fs::read_to_string(dest.join("etc/platform")).unwrap(),
        "linux/arm64\n",
        "the final stage is the arm64 child"
    );
    assert!(!dest.join("bin/busybox").exists());
    assert_eq!(inspect(&root, "cross:arm64")["Architecture"], "arm64");
}

#[test]
fn foreign_run_uses_emulation_or_says_how_to_get_it() {
    if !ready() {
        return;
    }
    let fx = Fixture::new();
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(
        dir.path(),
        "ctx",
        &format!("FROM {}\nRUN [\"/hello\"]\n", fx.reference()),
    );
    let root = dir.path().join("root");
    // A platform no handler is registered for (install-test-deps registers aarch64
    // only): the step is refused before runc, saying how to get emulation.
    if !Path::new("/proc/sys/fs/binfmt_misc/qemu-riscv64").exists() {
        let ctx = context(dir.path(), "riscv", "FROM scratch\nRUN [\"/nothing\"]\n");
        let out = output(
            berth_build(&root)
                .args(["--platform", "linux/riscv64"])
                .arg(&ctx),
        );
        assert!(
            !out.success
                && out
                    .stderr
                    .contains("[stage-0 2/2] RUN [\"/nothing\"]: running linux/riscv64 binaries")
                && out.stderr.contains("binfmt_misc")
                && out.stderr.contains("apt-get install qemu-user-static"),
            "{}",
            out.stderr
        );
    }
    let out = output(
        berth_build(&root)
            .args(["--platform", "linux/arm64", "-t", "hello:arm64"])
            .arg(&ctx),
    );
    if arm64_emulation() {
        assert!(out.success, "{}", out.stderr);
        assert!(out.stderr.contains("hello from arm64"), "{}", out.stderr);
        return;
    }
    if berth_testutil::strict() {
        // scripts/install-test-deps installs qemu-user-static, which registers it.
        panic!("no qemu-aarch64 binfmt_misc handler with the F flag under BERTH_TEST_STRICT=1");
    }
    assert!(!out.success);
    assert!(
        out.stderr.contains("[stage-0 2/2] RUN [\"/hello\"]")
            && out.stderr.contains("linux/arm64")
            && out.stderr.contains("binfmt_misc")
            && out.stderr.contains("apt-get install qemu-user-static"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("exec format error"), "{}", out.stderr);
}

#[test]
fn platforms_that_cannot_be_built_are_refused_clearly() {
    if !ready() {
        return;
    }
    let fx = Fixture::new();
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(dir.path(), "ctx", &format!("FROM {}\n", fx.reference()));
    let root = dir.path().join("root");
    let bad = |args: &[&str]| {
        let out = output(berth_build(&root).args(args).arg(&ctx));
        assert!(!out.success, "{args:?} built");
        out.stderr
    };
    let e = bad(&["--platform", "linux/"]);
    assert!(e.contains("is not os/arch[/variant]"), "{e}");
    let e = bad(&["--platform", "linux/amd64,linux/arm64", "--load", "-t", "x"]);
    assert!(e.contains("--load with several platforms"), "{e}");
    let e = bad(&["--platform", "linux/s390x"]);
    assert!(
        e.contains("Dockerfile:1:1")
            && e.contains("has no image for linux/s390x; it has: linux/amd64, linux/arm64"),
        "{e}"
    );
    let ctx = context(
        dir.path(),
        "ctx2",
        &format!("FROM --platform=linux/arm/v9/x {}\n", fx.reference()),
    );
    let out = output(berth_build(&root).arg(&ctx));
    assert!(
        !out.success
            && out
                .stderr
                .contains("Dockerfile:1:1: FROM --platform: platform \"linux/arm/v9/x\""),
        "{}",
        out.stderr
    );
}

#[test]
fn arm64_image_loads_into_docker_as_arm64() {
    if !ready() || !require_docker() {
        return;
    }
    let fx = Fixture::new();
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(
        dir.path(),
        "ctx",
        &format!("FROM {}\nCOPY note /note\n", fx.reference()),
    );
    std::fs::write(ctx.join("note"), "loaded\n").unwrap();
    let root = dir.path().join("root");
    let name = format!("berth-test/platform:{}", std::process::id());
    output_ok(
        berth_build(&root)
            .args(["--platform", "linux/arm64", "--load", "-t", &name])
            .arg(&ctx),
    );
    let d = docker();
    let out = run(Command::new(d).args([
        "image",
        "inspect",
        "-f",
        "{{.Architecture}} {{.Os}} {{len .RootFS.Layers}}",
        &name,
    ]));
    let _ = Command::new(d).args(["rmi", "-f", &name]).output();
    assert_eq!(out.trim(), "arm64 linux 2");
}

/// `berth --root ROOT ARGS…` in the folder `cwd` (Earthfile builds).
fn earth(root: &Path, cwd: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(berth_bin());
    c.arg("--root")
        .arg(root)
        .args(args)
        .current_dir(cwd)
        .env("SOURCE_DATE_EPOCH", "0")
        .env("BERTH_LOG", "warn");
    c
}

#[test]
fn earthfile_targets_build_for_the_platform_asked() {
    if !ready() {
        return;
    }
    let fx = Fixture::new();
    let dir = tempfile::tempdir().unwrap();
    let proj = dir.path().join("proj");
    std::fs::create_dir_all(&proj).unwrap();
    std::fs::write(proj.join("note"), "a note\n").unwrap();
    std::fs::write(
        proj.join("Earthfile"),
        format!(
            "VERSION 0.8\n\
             img:\n    FROM {base}\n    ARG TARGETARCH\n    ARG NATIVEARCH\n    \
             LABEL arch=$TARGETARCH native=$NATIVEARCH\n    COPY note /note\n    \
             SAVE IMAGE earth-plat:$TARGETARCH\n\
             both:\n    BUILD --platform=linux/arm64 +img\n    BUILD +img\n\
             pinned:\n    FROM --platform=linux/arm64 {base}\n    ARG TARGETPLATFORM\n    \
             LABEL platform=$TARGETPLATFORM\n    SAVE IMAGE earth-plat:pinned\n\
             tool:\n    ARG NATIVEPLATFORM\n    FROM --platform=$NATIVEPLATFORM {base}\n    ARG TARGETARCH\n    \
             RUN echo \"for $TARGETARCH on $(uname -m)\" > /out\n    SAVE ARTIFACT /out\n\
             cross:\n    FROM {base}\n    COPY --platform=linux/amd64 +tool/out /out\n    \
             SAVE IMAGE earth-plat:cross\n\
             runs:\n    FROM {base}\n    RUN [\"/hello\"]\n\
             bad:\n    FROM --platform=linux/ {base}\n",
            base = fx.reference()
        ),
    )
    .unwrap();
    let root = dir.path().join("root");
    // BUILD --platform and the target's own default (the host's).
    output_ok(&mut earth(&root, &proj, &["+both"]));
    let arm = inspect(&root, "earth-plat:arm64");
    assert_eq!(arm["Architecture"], "arm64", "{arm:#}");
    assert_eq!(
        arm["Config"]["Labels"],
        serde_json::json!({"arch": "arm64", "native": "amd64"})
    );
    let base = fx.diff_ids(&fx.arm64);
    assert_eq!(layers(&arm)[..base.len()], base[..]);
    let host = inspect(&root, "earth-plat:amd64");
    assert_eq!(host["Architecture"], "amd64");
    let base = fx.diff_ids(&fx.amd64);
    assert_eq!(layers(&host)[..base.len()], base[..]);

    // `berth --platform` for the invoked target; FROM --platform in the target itself.
    let dir2 = tempfile::tempdir().unwrap();
    let root2 = dir2.path().join("root");
    output_ok(&mut earth(
        &root2,
        &proj,
        &["--platform", "linux/arm64", "+img"],
    ));
    assert_eq!(inspect(&root2, "earth-plat:arm64")["Architecture"], "arm64");
    output_ok(&mut earth(&root, &proj, &["+pinned"]));
    let pinned = inspect(&root, "earth-plat:pinned");
    assert_eq!(pinned["Architecture"], "arm64");
    assert_eq!(pinned["Config"]["Labels"]["platform"], "linux/arm64");

    // A native tool target copied into an arm64 image: the tool runs on this host.
    output_ok(&mut earth(
        &root,
        &proj,
        &["--platform", "linux/arm64", "+cross"],
    ));
    let cross = inspect(&root, "earth-plat:cross");
    assert_eq!(cross["Architecture"], "arm64");

    // RUN for arm64 without emulation names the step and the fix.
    let out = output(&mut earth(
        &root,
        &proj,
        &["--platform", "linux/arm64", "+runs"],
    ));
    if arm64_emulation() {
        assert!(
            out.success && out.stderr.contains("hello from arm64"),
            "{}",
            out.stderr
        );
    } else {
        assert!(
            !out.success
                && out.stderr.contains("RUN [\"/hello\"]")
                && out.stderr.contains("apt-get install qemu-user-static"),
            "{}",
            out.stderr
        );
    }
    let out = output(&mut earth(&root, &proj, &["+bad"]));
    assert!(
        !out.success
            && out.stderr.contains("Earthfile:31:10")
            && out.stderr.contains("--platform: platform \"linux/\""),
        "{}",
        out.stderr
    );
}

#[test]
fn registry_bases_are_pulled_for_the_platform_without_moving_the_hosts_tag() {
    if !ready() || !require("skopeo") {
        return;
    }
    let fx = Fixture::new();
    let dir = tempfile::tempdir().unwrap();
    let reg = Berth::serve(&dir.path().join("registry"), &[]);
    run(&mut skopeo_copy(
        &format!("oci:{}:t", fx.layout.display()),
        &format!("docker://{}/multi/base:t", reg.addr),
        &["--all"],
    ));
    let base = format!("{}/multi/base:t", reg.addr);
    let ctx = context(
        dir.path(),
        "ctx",
        &format!("FROM {base}\nCOPY note /note\n"),
    );
    std::fs::write(ctx.join("note"), "n\n").unwrap();
    let root = dir.path().join("root");
    let layers_of = |name: &str| layers(&inspect(&root, name));

    // The host's build names the tag in the store (the amd64 child).
    output_ok(berth_build(&root).args(["-t", "r:host"]).arg(&ctx));
    let host_base = fx.diff_ids(&fx.amd64);
    assert_eq!(layers_of("r:host")[..host_base.len()], host_base[..]);
    // arm64: the stored tag does not serve it, so its child is pulled, and the tag
    // still names the host's image afterwards.
    let arm = output_ok(
        berth_build(&root)
            .args(["--platform", "linux/arm64", "-t", "r:arm64"])
            .arg(&ctx),
    );
    assert!(
        arm.stderr
            .contains(&format!("load metadata for {base} (linux/arm64)")),
        "{}",
        arm.stderr
    );
    let doc = inspect(&root, "r:arm64");
    assert_eq!(doc["Architecture"], "arm64");
    let arm_base = fx.diff_ids(&fx.arm64);
    assert_eq!(layers(&doc)[..arm_base.len()], arm_base[..]);
    let stored = inspect(&root, &base);
    assert_eq!(stored["Architecture"], "amd64", "{stored:#}");
    // And the host's build again: from the store and cache, the same image.
    let again = output_ok(berth_build(&root).args(["-t", "r:host2"]).arg(&ctx));
    assert!(again.stderr.contains("berth's store"), "{}", again.stderr);
    assert_eq!(layers_of("r:host2"), layers_of("r:host"));
}

#[test]
fn satellites_build_for_the_platform_the_client_asks() {
    if !ready() {
        return;
    }
    use common::satellite::{Client, Sat};
    let fx = Fixture::new();
    let dir = tempfile::tempdir().unwrap();
    let ctx = fx.labelled_context(dir.path());
    let sat = Sat::on_loopback(&dir.path().join("sat-root"), &[]);
    let client = Client::new(dir.path(), "client", None);
    assert!(client.add("s", &sat.token(&[])).success);
    output_ok(&mut client.build(&ctx, &["--platform", "linux/arm64", "-t", "sat:arm64"]));
    let doc = inspect(&sat.root, "sat:arm64");
    assert_eq!(doc["Architecture"], "arm64", "{doc:#}");
    assert_eq!(doc["Config"]["Labels"]["arch"], "arm64");
    let base = fx.diff_ids(&fx.arm64);
    assert_eq!(layers(&doc)[..base.len()], base[..]);
    let out = output(&mut client.build(&ctx, &["--platform", "linux/", "-t", "sat:bad"]));
    assert!(
        !out.success && out.stderr.contains("is not os/arch[/variant]"),
        "{}",
        out.stderr
    );
}

#[test]
fn several_platforms_make_an_index_that_is_pushed_whole() {
    if !ready() || !require("skopeo") {
        return;
    }
    let fx = Fixture::new();
    let dir = tempfile::tempdir().unwrap();
    let ctx = fx.labelled_context(dir.path());
    let root = dir.path().join("root");
    let reg = Berth::serve(&dir.path().join("registry"), &[]);
    let name = format!("{}/multi/app:1", reg.addr);
    let out = output_ok(
        berth_build(&root)
            .args([
                "--platform",
                "linux/amd64,linux/arm64",
                "--push",
                "-t",
                &name,
            ])
            .arg(&ctx),
    );
    assert!(
        out.stderr.contains("built a multi-platform image"),
        "{}",
        out.stderr
    );
    // The store's tag names an index of the two, each with its platform's config.
    let index_digest = out.stdout.lines().nth(1).unwrap().trim().to_string();
    let blob = |d: &str| -> serde_json::Value {
        let path = root.join("blobs/sha256").join(&d["sha256:".len()..]);
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    };
    let index = blob(&index_digest);
    let children = index["manifests"].as_array().unwrap();
    let platforms: Vec<String> = children
        .iter()
        .map(|c| c["platform"]["architecture"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(platforms, ["amd64", "arm64"], "{index:#}");
    for (c, (arch, base)) in children
        .iter()
        .zip([("amd64", &fx.amd64), ("arm64", &fx.arm64)])
    {
        let m = blob(c["digest"].as_str().unwrap());
        let config = blob(m["config"]["digest"].as_str().unwrap());
        assert_eq!(config["architecture"], arch);
        assert_eq!(config["config"]["Labels"]["arch"], arch);
        let diff_ids = fx.diff_ids(base);
        let got: Vec<String> = config["rootfs"]["diff_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_str().unwrap().to_string())
            .collect();
        assert_eq!(got[..diff_ids.len()], diff_ids[..]);
    }
    // The registry has the index byte for byte, and each platform's image.
    let raw = run(Command::new("skopeo").args([
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{name}"),
    ]));
    let pushed: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(pushed, index);
    let arm = run(Command::new("skopeo").args([
        "inspect",
        "--config",
        "--tls-verify=false",
        "--override-arch",
        "arm64",
        &format!("docker://{name}"),
    ]));
    let arm: serde_json::Value = serde_json::from_str(&arm).unwrap();
    assert_eq!(arm["architecture"], "arm64");
}
