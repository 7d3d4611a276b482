//! Every PodSpec berth renders goes through `berth_kube::pod` (issue 12): this reads the
//! source of every crate of the workspace and fails when a file other than
//! crates/berth-kube/src/pod.rs builds a PodSpec or PodTemplateSpec (a struct literal,
//! `Default::default()` of one, JSON with a pod's `containers` key, or YAML text with a
//! `containers:` block, as hand-written manifests had).

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// What building a pod looks like in Rust source.
const PATTERNS: &[&str] = &[
    "PodSpec {",
    "PodTemplateSpec {",
    "PodSpec::default",
    "PodTemplateSpec::default",
    "\"containers\":",
    "\"imagePullSecrets\":",
];

fn offenders(crates: &Path) -> Vec<String> {
    let mut files = Vec::new();
    for c in std::fs::read_dir(crates).unwrap() {
        let src = c.unwrap().path().join("src");
        if src.is_dir() {
            rust_files(&src, &mut files);
        }
    }
    assert!(
        files.len() > 50,
        "found only {} source files under {}",
        files.len(),
        crates.display()
    );
    let pod_rs = crates.join("berth-kube/src/pod.rs");
    let mut bad = Vec::new();
    for f in files {
        if f == pod_rs {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap();
        // Unit tests may look at pods; they do not render them for a cluster.
        let code = text.split("#[cfg(test)]").next().unwrap_or("");
        for (i, line) in code.lines().enumerate() {
            let l = line.trim_start();
            if l.starts_with("//") {
                continue;
            }
            // A function returning one is not building one.
            let l = l
                .replace("-> PodSpec {", "")
                .replace("-> PodTemplateSpec {", "");
            // YAML: `containers:` ending a line (a block follows) or before an escaped
            // newline in a one-line string. A Rust field (`containers: vec![…]`) has a
            // value after it.
            let yaml = l.trim_end().ends_with("containers:")
                || l.contains("containers:\\n")
                || l.contains("containers: [");
            if yaml || PATTERNS.iter().any(|p| l.contains(p)) {
                bad.push(format!("{}:{}: {}", f.display(), i + 1, l));
            }
        }
    }
    bad
}

#[test]
fn only_pod_rs_builds_pods() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let bad = offenders(crates);
    assert!(
        bad.is_empty(),
        "PodSpecs built outside berth_kube::pod (use pod::pod_spec / pod::pod_template):\n{}",
        bad.join("\n")
    );
    // pod.rs itself is where they are built: the scan would see it.
    let pod = std::fs::read_to_string(crates.join("berth-kube/src/pod.rs")).unwrap();
    assert!(PATTERNS.iter().any(|p| pod.contains(p)));
}

#[test]
fn a_bypass_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..51 {
        let src = dir.path().join(format!("c{i}/src"));
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("lib.rs"), "pub fn f() {}\n").unwrap();
    }
    std::fs::write(
        dir.path().join("c7/src/helper.rs"),
        "fn helper() -> PodSpec {\n    PodSpec { containers: vec![], ..Default::default() }\n}\n",
    )
    .unwrap();
    // Hand-written YAML, as `berth satellite manifests` once printed.
    std::fs::write(
        dir.path().join("c9/src/yaml.rs"),
        "fn m() -> String {\n    r#\"spec:\n  template:\n    spec:\n      containers:\n        - name: x\n\"#.into()\n}\nconst ONE: &str = \"spec:\\n  containers:\\n  - name: x\";\n",
    )
    .unwrap();
    let mut bad = offenders(dir.path());
    bad.sort();
    assert_eq!(bad.len(), 3, "{bad:?}");
    assert!(bad[0].contains("c7/src/helper.rs:2"), "{bad:?}");
    assert!(bad[1].contains("c9/src/yaml.rs:5"), "{bad:?}");
    assert!(bad[2].contains("c9/src/yaml.rs:9"), "{bad:?}");
}
