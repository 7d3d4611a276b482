//! Real-world Earthfiles, parsed and lowered without running anything: one case a
//! directory under `BERTH_LOWER_CASES`, holding a project's Earthfiles where the
//! project has them. Every target of every Earthfile in it is lowered on its own, and
//! what each gives (the targets it reaches, the images it saves, its `AS LOCAL` paths,
//! or the first line of its error) is compared with the case's `lowered` file when it
//! has one, else written there.
//!
//! Other projects' Earthfiles are third-party code and are not committed: the test is
//! ignored unless run as `BERTH_LOWER_CASES=/dir cargo test -p berth-cli --test
//! earthfile_lower -- --ignored` (`BERTH_BLESS=1` rewrites every `lowered`). What it
//! found is in tests/earthfiles/README.md.
//!
//! Nothing runs: base images resolve to a stub config, `IF`/`FOR`/`$( … )` answers are
//! "exit 0, no output", and `LOCALLY` commands are answered the same way without being
//! run (foreign Earthfiles must never run on the host). Remote references are refused,
//! as they would need the network.

use std::collections::HashMap;
use std::fmt::Write;
use std::fs;
use std::path::{Path, PathBuf};

use berth_build::frontend::earthfile::lower::{EarthOptions, Host, LocalRun, lower};
use berth_build::image::{ContainerConfig, ImageConfig, ResolvedImage};
use berth_build::ir::State;
use berth_build::{Earthfile, Entitlement, Platform, Result};
use berth_oci::Digest;

/// Answers without running: an empty scratch folder, "exit 0, no output" for every
/// evaluation and `LOCALLY` command.
struct DryHost {
    scratch: tempfile::TempDir,
}

impl Host for DryHost {
    fn scratch(&mut self) -> Result<PathBuf> {
        Ok(tempfile::tempdir_in(self.scratch.path()).unwrap().keep())
    }

    fn export(&mut self, _: &HashMap<String, PathBuf>, _: &State, dest: &Path) -> Result<()> {
        fs::write(dest.join("code"), "0\n").unwrap();
        fs::write(dest.join("out"), "").unwrap();
        Ok(())
    }

    fn run_local(&mut self, _: &LocalRun) -> Result<(i32, String)> {
        Ok((0, String::new()))
    }
}

/// Any reference is an image with a PATH and a shell.
fn resolve(reference: &str, platform: &Platform) -> Result<ResolvedImage> {
    let mut config = ImageConfig {
        architecture: platform.architecture.clone(),
        os: "linux".into(),
        config: ContainerConfig {
            env: vec!["PATH=/usr/local/bin:/usr/bin:/bin".into()],
            cmd: Some(vec!["/bin/sh".into()]),
            ..Default::default()
        },
        ..Default::default()
    };
    config.history.push(Default::default());
    Ok(ResolvedImage {
        reference: reference.to_string(),
        manifest: Digest::sha256(format!("{reference} {platform}").as_bytes()),
        config,
    })
}

/// The Earthfiles under `dir`, as paths relative to it, sorted.
fn earthfiles(dir: &Path, rel: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = fs::read_dir(dir.join(rel))
        .unwrap()
        .map(|e| e.unwrap())
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = rel.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            earthfiles(dir, &name, out);
        } else if e.file_name() == "Earthfile" {
            out.push(name);
        }
    }
}

/// One line per target of each Earthfile of the case.
fn lower_all(case: &Path) -> String {
    let case = fs::canonicalize(case).unwrap();
    let mut files = Vec::new();
    earthfiles(&case, Path::new(""), &mut files);
    let opts = EarthOptions {
        allow: vec![Entitlement::NetworkHost, Entitlement::SecurityInsecure],
        ..EarthOptions::default()
    };
    let mut out = String::new();
    for file in files {
        let dir = case.join(file.parent().unwrap());
        let prefix = match file.parent().unwrap().display().to_string() {
            p if p.is_empty() => String::new(),
            p => format!("./{p}"),
        };
        let text = fs::read_to_string(case.join(&file)).unwrap();
        let ef = match Earthfile::parse("Earthfile", &text) {
            Ok(ef) => ef,
            Err(e) => {
                let e = e.to_string();
                let _ = writeln!(out, "{}: {}", file.display(), first_line(&e));
                continue;
            }
        };
        for t in &ef.targets {
            let mut host = DryHost {
                scratch: tempfile::tempdir().unwrap(),
            };
            let mut res = resolve;
            let reference = format!("+{}", t.name);
            let result = match lower(&dir, &reference, &opts, &mut res, &mut host) {
                Ok(plan) => {
                    let mut images = Vec::new();
                    let mut locals = Vec::new();
                    for i in plan.connected() {
                        let target = &plan.targets[i];
                        images.extend(target.images.iter().flat_map(|s| s.names.clone()));
                        locals.extend(target.locals.iter().map(|l| {
                            Path::new(&l.dest)
                                .strip_prefix(&case)
                                .map(|p| p.display().to_string())
                                .unwrap_or_else(|_| l.dest.clone())
                        }));
                    }
                    format!(
                        "{} targets, images {images:?}, local {locals:?}",
                        plan.targets.len()
                    )
                }
                Err(e) => first_line(&e.to_string()).to_string(),
            };
            let _ = writeln!(out, "{prefix}{reference}: {result}");
        }
    }
    out
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

#[test]
#[ignore = "lowers other projects' Earthfiles (not committed): set BERTH_LOWER_CASES=DIR"]
fn real_world_earthfiles_lower() {
    let root = std::env::var_os("BERTH_LOWER_CASES")
        .map(PathBuf::from)
        .expect("BERTH_LOWER_CASES: a folder of cases, one project's Earthfiles each");
    let mut cases: Vec<PathBuf> = fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    assert!(!cases.is_empty(), "no cases in {}", root.display());
    let bless = std::env::var_os("BERTH_BLESS").is_some_and(|v| v == "1");
    let mut failed = Vec::new();
    for case in &cases {
        let got = lower_all(case);
        let want_path = case.join("lowered");
        if bless || !want_path.exists() {
            fs::write(&want_path, &got).unwrap();
            continue;
        }
        let want = fs::read_to_string(&want_path).unwrap();
        if want != got {
            failed.push(format!(
                "{}:\n--- expected\n{want}--- got\n{got}",
                case.file_name().unwrap().to_string_lossy()
            ));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}
