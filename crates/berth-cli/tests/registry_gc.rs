//! `berth registry gc --grace 0s` in a loop beside concurrent pushers (issue 13, item 2):
//! no manifest the registry answered 201 may lose a blob, and `registry check` must find
//! nothing missing afterwards.
//!
//! The pushers speak plain HTTP to a `berth registry serve` process on 127.0.0.1: unique
//! and shared layers, mounts, indexes, and docker-style re-pushes that HEAD each blob,
//! skip the ones found, and PUT the manifest. The run lasts `BERTH_GC_STRESS_SECS`
//! seconds (30 by default; fewer for a quick local run).

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_oci::Digest;
use common::*;
use reqwest::StatusCode;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const PUSHERS: usize = 5;
const REPOS: usize = 3;

/// A manifest the registry answered 201 for, with what a pull of it must return.
#[derive(Clone)]
struct Pushed {
    repo: String,
    digest: Digest,
    bytes: Vec<u8>,
    media_type: &'static str,
    /// (digest, content) of each config and layer; empty for an index.
    blobs: Vec<(Digest, Vec<u8>)>,
}

#[derive(Default)]
struct Counts {
    created: AtomicUsize,
    refused: AtomicUsize,
    skipped_by_head: AtomicUsize,
    mounted: AtomicUsize,
    gc_runs: AtomicUsize,
}

struct Pusher {
    http: reqwest::Client,
    base: String,
    counts: Arc<Counts>,
}

impl Pusher {
    async fn head_blob(&self, repo: &str, d: &Digest) -> bool {
        let r = self
            .http
            .head(format!("{}/v2/{repo}/blobs/{d}", self.base))
            .send()
            .await
            .unwrap();
        assert!(
            r.status() == StatusCode::OK || r.status() == StatusCode::NOT_FOUND,
            "HEAD {repo} {d}: {}",
            r.status()
        );
        r.status() == StatusCode::OK
    }

    async fn upload(&self, repo: &str, data: &[u8]) {
        let d = Digest::sha256(data);
        let r = self
            .http
            .post(format!("{}/v2/{repo}/blobs/uploads/?digest={d}", self.base))
            .body(data.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED, "upload {d} to {repo}");
    }

    async fn delete_manifest(&self, m: &Pushed) {
        let r = self
            .http
            .delete(format!(
                "{}/v2/{}/manifests/{}",
                self.base, m.repo, m.digest
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::ACCEPTED, "DELETE {}", m.digest);
    }

    async fn mount(&self, repo: &str, from: &str, d: &Digest) -> bool {
        let r = self
            .http
            .post(format!(
                "{}/v2/{repo}/blobs/uploads/?mount={d}&from={from}",
                self.base
            ))
            .send()
            .await
            .unwrap();
        match r.status() {
            StatusCode::CREATED => true,
            StatusCode::ACCEPTED => false,
            s => panic!("mount {d} into {repo}: {s}"),
        }
    }

    /// Docker's way: HEAD each blob, upload what is missing (or mount it), PUT the
    /// manifest. Returns the manifest if the registry answered 201.
    async fn push(
        &self,
        repo: &str,
        tag: &str,
        blobs: &[(Digest, Vec<u8>)],
        mount_from: Option<&str>,
    ) -> Option<Pushed> {
        for (d, data) in blobs {
            if self.head_blob(repo, d).await {
                self.counts.skipped_by_head.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if let Some(from) = mount_from
                && self.mount(repo, from, d).await
            {
                self.counts.mounted.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            self.upload(repo, data).await;
        }
        let (config, layers) = blobs.split_first().unwrap();
        let layers: Vec<String> = layers
            .iter()
            .map(|(d, data)| {
                format!(
                    r#"{{"mediaType":"{LAYER}","digest":"{d}","size":{}}}"#,
                    data.len()
                )
            })
            .collect();
        let bytes = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"{OCI_CONFIG}","digest":"{}","size":{}}},"layers":[{}]}}"#,
            config.0,
            config.1.len(),
            layers.join(",")
        )
        .into_bytes();
        self.put_manifest(repo, tag, bytes, OCI_MANIFEST, blobs.to_vec())
            .await
    }

    async fn put_manifest(
        &self,
        repo: &str,
        tag: &str,
        bytes: Vec<u8>,
        media_type: &'static str,
        blobs: Vec<(Digest, Vec<u8>)>,
    ) -> Option<Pushed> {
        let r = self
            .http
            .put(format!("{}/v2/{repo}/manifests/{tag}", self.base))
            .header("content-type", media_type)
            .body(bytes.clone())
            .send()
            .await
            .unwrap();
        let status = r.status();
        if status == StatusCode::CREATED {
            self.counts.created.fetch_add(1, Ordering::Relaxed);
            return Some(Pushed {
                repo: repo.to_string(),
                digest: Digest::sha256(&bytes),
                bytes,
                media_type,
                blobs,
            });
        }
        // gc may remove a blob that was HEADed or uploaded before its mark and not yet
        // referenced (grace 0): the registry must then refuse the manifest, never 5xx.
        let body = r.text().await.unwrap_or_default();
        assert_eq!(status, StatusCode::BAD_REQUEST, "PUT {repo}:{tag}: {body}");
        assert!(body.contains("MANIFEST_BLOB_UNKNOWN"), "{body}");
        self.counts.refused.fetch_add(1, Ordering::Relaxed);
        None
    }
}

/// Bytes of a layer: `len` bytes derived from `seed`, different for every seed.
fn layer(seed: &str, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut block = Digest::sha256(seed.as_bytes()).to_string().into_bytes();
    while out.len() < len {
        out.extend_from_slice(&block);
        block = Digest::sha256(&block).to_string().into_bytes();
    }
    out.truncate(len);
    out
}

fn stress_duration() -> Duration {
    let secs = std::env::var("BERTH_GC_STRESS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30u64);
    Duration::from_secs(secs.clamp(1, 120))
}

#[test]
fn gc_beside_pushers_never_breaks_a_committed_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let berth = Berth::serve(&root, &[]);
    let base = format!("http://{}", berth.addr);
    let until = Instant::now() + stress_duration();
    let counts = Arc::new(Counts::default());
    let stop = Arc::new(AtomicBool::new(false));

    // gc with no grace, in a loop, as its own process (as an operator would run it).
    let gc = {
        let (root, counts, stop) = (root.clone(), counts.clone(), stop.clone());
        std::thread::spawn(move || gc_loop(&root, &counts, &stop))
    };

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    let pushed: Arc<Mutex<Vec<Pushed>>> = Arc::default();
    rt.block_on(async {
        let shared: Vec<(Digest, Vec<u8>)> = (0..3)
            .map(|i| {
                let data = layer(&format!("shared-{i}"), 48 * 1024);
                (Digest::sha256(&data), data)
            })
            .collect();
        let tasks: Vec<_> = (0..PUSHERS)
            .map(|p| {
                let pusher = Pusher {
                    http: reqwest::Client::new(),
                    base: base.clone(),
                    counts: counts.clone(),
                };
                let (shared, pushed) = (shared.clone(), pushed.clone());
                tokio::spawn(async move {
                    let mut mine: Vec<Pushed> = Vec::new();
                    let mut images: Vec<Pushed> = Vec::new();
                    let mut k = 0usize;
                    while Instant::now() < until {
                        k += 1;
                        let repo = format!("stress/r{}", (p + k) % REPOS);
                        let from = format!("stress/r{}", (p + k + 1) % REPOS);
                        let repush = k.is_multiple_of(3) && !images.is_empty();
                        let done = if repush {
                            // Re-push an image pushed earlier, to another repository and
                            // tag: its blobs are mostly found by HEAD and skipped.
                            let old = images[k % images.len()].clone();
                            pusher
                                .push(&repo, &format!("re-{p}-{k}"), &old.blobs, Some(&old.repo))
                                .await
                        } else {
                            let config = format!(r#"{{"pusher":{p},"n":{k}}}"#).into_bytes();
                            let unique = layer(&format!("unique-{p}-{k}"), 2048 + 97 * k % 8192);
                            let blobs = vec![
                                (Digest::sha256(&config), config),
                                (Digest::sha256(&unique), unique),
                                shared[k % shared.len()].clone(),
                            ];
                            pusher
                                .push(&repo, &format!("v-{p}-{k}"), &blobs, Some(&from))
                                .await
                        };
                        let Some(done) = done else { continue };
                        if k.is_multiple_of(4) {
                            // An index over the manifest just pushed.
                            let bytes = format!(
                                r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":{}}}]}}"#,
                                done.digest,
                                done.bytes.len()
                            )
                            .into_bytes();
                            if let Some(index) = pusher
                                .put_manifest(&done.repo, &format!("i-{p}-{k}"), bytes, OCI_INDEX, Vec::new())
                                .await
                            {
                                mine.push(index);
                            }
                        }
                        images.push(done.clone());
                        if k % 5 == 1 && !k.is_multiple_of(4) && !repush {
                            // Deleted: its blobs become garbage, which gc removes while
                            // later re-pushes of the image HEAD them. Only a fresh image
                            // (a digest of its own) with no index over it: deleting a
                            // manifest an index names breaks that index, as `check` says.
                            pusher.delete_manifest(&done).await;
                            continue;
                        }
                        mine.push(done);
                    }
                    pushed.lock().unwrap().extend(mine);
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
    stop.store(true, Ordering::Relaxed);
    gc.join().unwrap();
    // One more collection after the pushes stop, then the deep check.
    run_gc(&root);
    let report = check_store(&root);
    assert!(report.contains(", 0 problems"), "{report}");

    let pushed = pushed.lock().unwrap().clone();
    eprintln!(
        "{} manifests answered 201, {} refused, {} blobs skipped after HEAD, {} mounted, {} gc runs",
        counts.created.load(Ordering::Relaxed),
        counts.refused.load(Ordering::Relaxed),
        counts.skipped_by_head.load(Ordering::Relaxed),
        counts.mounted.load(Ordering::Relaxed),
        counts.gc_runs.load(Ordering::Relaxed),
    );
    assert!(counts.gc_runs.load(Ordering::Relaxed) >= 2, "gc ran");
    assert!(pushed.len() >= PUSHERS, "pushes went through");
    assert!(counts.skipped_by_head.load(Ordering::Relaxed) > 0);
    // Every manifest answered 201 pulls whole: manifest, config and layers by digest.
    rt.block_on(async {
        let http = reqwest::Client::new();
        let mut broken: Vec<String> = Vec::new();
        for m in &pushed {
            let r = http
                .get(format!("{base}/v2/{}/manifests/{}", m.repo, m.digest))
                .header("accept", m.media_type)
                .send()
                .await
                .unwrap();
            if r.status() != StatusCode::OK {
                broken.push(format!("{} manifest {}: {}", m.repo, m.digest, r.status()));
                continue;
            }
            assert_eq!(r.bytes().await.unwrap().as_ref(), m.bytes.as_slice());
            for (d, data) in &m.blobs {
                let r = http
                    .get(format!("{base}/v2/{}/blobs/{d}", m.repo))
                    .send()
                    .await
                    .unwrap();
                if r.status() != StatusCode::OK {
                    broken.push(format!(
                        "{} manifest {}: blob {d}: {}",
                        m.repo,
                        m.digest,
                        r.status()
                    ));
                    continue;
                }
                assert_eq!(r.bytes().await.unwrap().as_ref(), data.as_slice());
            }
        }
        assert!(
            broken.is_empty(),
            "{} of {} manifests answered 201 do not pull whole:\n{}",
            broken.len(),
            pushed.len(),
            broken[..broken.len().min(20)].join("\n")
        );
    });
    drop(berth);
}

fn run_gc(root: &PathBuf) -> String {
    run(Command::new(berth_bin()).arg("--root").arg(root).args([
        "registry",
        "gc",
        "--grace",
        "0s",
        "--upload-expiry",
        "1h",
    ]))
}

fn gc_loop(root: &PathBuf, counts: &Counts, stop: &AtomicBool) {
    let mut removed: HashMap<String, usize> = HashMap::new();
    while !stop.load(Ordering::Relaxed) {
        let out = run_gc(root);
        counts.gc_runs.fetch_add(1, Ordering::Relaxed);
        for line in out.lines().filter(|l| l.starts_with("removed blob")) {
            *removed.entry(line.to_string()).or_default() += 1;
        }
    }
    eprintln!("gc removed {} blobs over the run", removed.len());
    assert!(
        !removed.is_empty(),
        "gc found garbage to remove beside the pushes"
    );
}
