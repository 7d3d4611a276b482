//! `berth registry check` on object storage: every blob hashes to its name, and every
//! manifest a repository links would pull (the same problems as the local check).

use std::collections::{HashMap, HashSet};

use berth_oci::{Descriptor, Digest, Manifest, media_type};
use berth_store::{CheckReport, Problem, ProblemKind};
use futures_util::StreamExt;
use object_store::ObjectStoreExt;

use super::{ObjectStorage, failure};
use crate::error::RegistryError;

/// What the bucket's listing says about one repository.
#[derive(Default)]
struct Repo {
    manifests: Vec<Digest>,
    blobs: HashSet<Digest>,
    linked_manifests: HashSet<Digest>,
    /// (subject, referrer) records.
    referrers: HashSet<(String, String)>,
}

fn parse_digest(alg: &str, hex: &str) -> Option<Digest> {
    format!("{alg}:{hex}").parse().ok()
}

impl ObjectStorage {
    /// Hash every blob and check every linked manifest as a pull would.
    pub async fn verify(&self) -> Result<CheckReport, RegistryError> {
        let mut report = CheckReport::default();
        let mut sizes: HashMap<Digest, u64> = HashMap::new();
        for m in self.list("blobs").await? {
            let rel = self.relative(&m.location).to_string();
            let mut parts = rel.split('/').skip(1);
            let Some(d) = parts
                .next()
                .zip(parts.next())
                .and_then(|(a, h)| parse_digest(a, h))
            else {
                continue;
            };
            report.blobs += 1;
            let mut h = d.algorithm().hasher();
            let mut stream = self
                .inner
                .get(&m.location)
                .await
                .map_err(failure)?
                .into_stream();
            while let Some(c) = stream.next().await {
                h.update(&c.map_err(failure)?);
            }
            if h.finish() != d {
                report.corrupt.push(d.clone());
            }
            sizes.insert(d, m.size);
        }

        let mut repos: HashMap<String, Repo> = HashMap::new();
        for m in self.list("repositories").await? {
            let rel = self.relative(&m.location).to_string();
            let Some((name, rest)) = rel
                .strip_prefix("repositories/")
                .and_then(|r| r.split_once("/_"))
            else {
                continue;
            };
            let repo = repos.entry(name.to_string()).or_default();
            let parts: Vec<&str> = rest.split('/').collect();
            match parts.as_slice() {
                ["manifests", alg, hex] => {
                    if let Some(d) = parse_digest(alg, hex) {
                        repo.manifests.push(d.clone());
                        repo.linked_manifests.insert(d);
                    }
                }
                ["blobs", alg, hex] => {
                    if let Some(d) = parse_digest(alg, hex) {
                        repo.blobs.insert(d);
                    }
                }
                ["referrers", subject, referrer] => {
                    repo.referrers
                        .insert((subject.to_string(), referrer.to_string()));
                }
                _ => {}
            }
        }
        let mut names: Vec<&String> = repos.keys().collect();
        names.sort();
        for name in names {
            let repo = &repos[name];
            for m in &repo.manifests {
                report.manifests += 1;
                let problem = |kind| Problem {
                    repository: name.clone(),
                    manifest: m.clone(),
                    kind,
                };
                let Some(bytes) = self.read_blob(m).await? else {
                    report.problems.push(problem(ProblemKind::ManifestMissing));
                    continue;
                };
                let manifest = match Manifest::parse(&bytes, None) {
                    Ok((manifest, _)) => manifest,
                    Err(e) => {
                        report
                            .problems
                            .push(problem(ProblemKind::Unreadable(e.to_string())));
                        continue;
                    }
                };
                let refs = manifest
                    .config
                    .iter()
                    .map(|r| ("config", r, repo.blobs.contains(&r.digest)))
                    .chain(
                        manifest
                            .layers
                            .iter()
                            .filter(|r| !media_type::is_non_distributable(&r.media_type))
                            .map(|r| ("layer", r, repo.blobs.contains(&r.digest))),
                    )
                    .chain(
                        manifest
                            .manifests
                            .iter()
                            .map(|r| ("manifest", r, repo.linked_manifests.contains(&r.digest))),
                    );
                for (role, r, linked) in refs {
                    if let Some(kind) = reference_problem(role, r, linked, sizes.get(&r.digest)) {
                        report.problems.push(problem(kind));
                    }
                }
                if let Some(subject) = &manifest.subject {
                    let key = |d: &Digest| format!("{}-{}", d.algorithm().as_str(), d.hex());
                    if !repo.referrers.contains(&(key(&subject.digest), key(m))) {
                        report
                            .problems
                            .push(problem(ProblemKind::ReferrerNotRecorded {
                                subject: subject.digest.clone(),
                            }));
                    }
                }
            }
        }
        Ok(report)
    }
}

fn reference_problem(
    role: &'static str,
    r: &Descriptor,
    linked: bool,
    size: Option<&u64>,
) -> Option<ProblemKind> {
    let digest = r.digest.clone();
    match size {
        None => Some(ProblemKind::BlobMissing { role, digest }),
        Some(_) if !linked => Some(ProblemKind::NotInRepository { role, digest }),
        Some(&got) if got != r.size => Some(ProblemKind::SizeMismatch {
            role,
            digest,
            expected: r.size,
            got,
        }),
        Some(_) => None,
    }
}
