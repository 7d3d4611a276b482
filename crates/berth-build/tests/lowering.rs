//! Golden files for lowering (Dockerfile → build graph and image config), one case a
//! directory as in `golden.rs`: `lowering/<case>/Dockerfile` is lowered with the options
//! of [`options`] and base images from [`resolve`], and the result (every vertex of the
//! graph, the history steps and the image config) or the error must equal
//! `lowering/<case>/lowered`.
//!
//! `BERTH_BLESS=1 cargo test -p berth-build --test lowering` rewrites the expected files.
//! Read the diff before committing it: a blessed file is only right if the output was.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::fs;
use std::path::{Path, PathBuf};

use berth_build::Platform;
use berth_build::image::{ContainerConfig, ImageConfig, ResolvedImage, host_platform};
use berth_build::ir::{Entitlement, Op, State};
use berth_build::{Dockerfile, LowerOptions, Lowered, Result, lower};
use berth_oci::Digest;

fn cases() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/lowering");
    let mut cases: Vec<PathBuf> = fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("read {}: {e}", root.display()))
        .map(|entry| entry.expect("read test case").path())
        .filter(|path| path.is_dir())
        .collect();
    cases.sort();
    assert!(!cases.is_empty(), "no test cases in {}", root.display());
    cases
}

/// The options every case is lowered with; a case named `target-…` builds the stage
/// `wanted`.
fn options(case: &str) -> LowerOptions {
    LowerOptions {
        build_args: BTreeMap::from([
            ("NAME".to_string(), "berth".to_string()),
            ("V".to_string(), "2".to_string()),
            (
                "HTTP_PROXY".to_string(),
                "http://proxy.invalid:3128".to_string(),
            ),
        ]),
        target: case.starts_with("target-").then(|| "wanted".to_string()),
        dockerignore: vec!["*.log".into()],
        proxy_env: vec![
            "NO_PROXY=localhost".into(),
            "HTTP_PROXY=http://host-proxy.invalid".into(),
        ],
        no_cache: false,
        extra_hosts: Vec::new(),
        created: Some("2024-01-02T03:04:05Z".into()),
        allow: if case.starts_with("errors-") {
            Vec::new()
        } else {
            vec![Entitlement::NetworkHost]
        },
        cancel: Default::default(),
        // `platform-*` cases build for another platform than the host's.
        platform: case.starts_with("platform-").then(foreign_platform),
    }
}

/// A platform that is not this host's.
fn foreign_platform() -> Platform {
    let arch = if host_platform().1 == "arm64" {
        "amd64"
    } else {
        "arm64"
    };
    Platform::new("linux", arch, "")
}

/// Base images: any reference resolves to a manifest named after it and a config with
/// a PATH, a user and a history entry; `onbuild-image` also has ONBUILD triggers.
fn resolve(reference: &str, platform: &Platform) -> Result<ResolvedImage> {
    let mut config = ImageConfig {
        architecture: "amd64".into(),
        os: "linux".into(),
        config: ContainerConfig {
            env: vec!["PATH=/usr/bin:/bin".into(), "BASE=1".into()],
            cmd: Some(vec!["/bin/sh".into()]),
            ..Default::default()
        },
        ..Default::default()
    };
    config.history.push(Default::default());
    if reference == "onbuild-image" {
        config.config.on_build = vec![
            "ENV FROM_TRIGGER=1".into(),
            "COPY trigger.txt /t/".into(),
            "RUN echo trigger $FROM_TRIGGER".into(),
        ];
    }
    Ok(ResolvedImage {
        reference: reference.to_string(),
        // Another platform's manifest is another image.
        manifest: if platform.is_host() {
            Digest::sha256(reference.as_bytes())
        } else {
            Digest::sha256(format!("{reference} {platform}").as_bytes())
        },
        config,
    })
}

/// The lowered graph, vertex by vertex (inputs first), the steps of the history and
/// the image config, with the host's architecture written as `<arch>`.
fn dump(lowered: &Lowered) -> String {
    fn walk(state: &State, ids: &mut HashMap<Digest, usize>, out: &mut String) -> usize {
        if let Some(&n) = ids.get(state.digest()) {
            return n;
        }
        let v = state.vertex();
        let inputs: Vec<String> = v
            .inputs
            .iter()
            .map(|i| format!("v{}", walk(i, ids, out)))
            .collect();
        let n = ids.len() + 1;
        ids.insert(state.digest().clone(), n);
        let op = serde_json::to_string(&v.op).expect("ops serialise");
        writeln!(
            out,
            "v{n} {:?} <- [{}]{}\n    {op}",
            v.name,
            inputs.join(", "),
            if v.ignore_cache { " no-cache" } else { "" }
        )
        .unwrap();
        // Proxy variables are not part of the op's key, so not of its JSON.
        if let Op::Exec(e) = &v.op
            && !e.proxy_env.is_empty()
        {
            writeln!(out, "    proxy: {:?}", e.proxy_env).unwrap();
        }
        n
    }
    let mut ids = HashMap::new();
    let mut out = String::from("graph:\n");
    let top = walk(&lowered.state, &mut ids, &mut out);
    writeln!(
        out,
        "target: v{top}\nsteps (after {}):",
        lowered.base_history
    )
    .unwrap();
    let added = lowered.config.history.iter().skip(lowered.base_history);
    for (h, step) in added.zip(&lowered.steps) {
        let made = match step {
            Some(s) => format!("v{}", walk(s, &mut ids, &mut String::new())),
            None => "-".into(),
        };
        writeln!(out, "  {made} {}", h.created_by).unwrap();
    }
    let config = serde_json::to_string_pretty(&lowered.config).expect("config serialises");
    writeln!(out, "config:\n{config}").unwrap();
    let (os, arch) = host_platform();
    out.replace(&format!("{os}/{arch}"), &format!("{os}/<arch>"))
        .replace(&format!("={arch}"), "=<arch>")
}

#[test]
fn dockerfiles_lower_to_their_graph_and_config() {
    let bless = std::env::var_os("BERTH_BLESS").is_some_and(|v| v == "1");
    let mut failures = Vec::new();
    for case in cases() {
        let name = case.file_name().unwrap().to_string_lossy().into_owned();
        let path = case.join("Dockerfile");
        let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let df = Dockerfile::parse("Dockerfile", &text).expect("the case parses");
        let got = match lower(&df, &options(&name), &mut |r, p| resolve(r, p)) {
            Ok(lowered) => dump(&lowered),
            Err(e) => format!("error: {e}\n"),
        };
        let expected = case.join("lowered");
        if bless {
            fs::write(&expected, &got).unwrap();
            continue;
        }
        let want = fs::read_to_string(&expected).unwrap_or_default();
        if want != got {
            failures.push(format!(
                "{name}: lowered differs\n--- expected\n{want}\n--- got\n{got}\n---"
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n\n"));
}
