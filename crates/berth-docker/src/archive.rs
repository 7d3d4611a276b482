//! Image archives: `docker save` output (docker-archive) and OCI image layout tars, read
//! into berth's store (`berth import`) and written from it (`berth save`).
//!
//! **Reading** streams the tar once, front to back, so a `docker save` of gigabytes is
//! never held in memory and may come from a pipe. Where the index lives is only known at
//! the end (`docker save` writes `manifest.json` after the layers, in the lexical order
//! of its temporary directory), so every entry is taken as it comes:
//!
//! - small files (configs, manifests, `manifest.json`, `index.json`, Docker's legacy
//!   `<id>/json`) stay in memory, up to [`SMALL_FILE`] each and [`SMALL_TOTAL`] in all;
//! - larger ones (layers) stream into the store through an ingest, hashed as they are
//!   written; an entry named `blobs/<alg>/<hex>` must hash to that name, or it is refused;
//! - links (Docker's legacy format links a layer saved twice to its first copy) are
//!   remembered and resolved at the end.
//!
//! Then the format is decided: `manifest.json` means docker-archive, in Docker's legacy
//! layout (`<id>/layer.tar`, `<id>.json`) or the one Docker 25+ writes (everything under
//! `blobs/sha256/`, with an `index.json` beside it that is not used: Docker's own loader
//! reads `manifest.json`, and some of Docker's indexes list manifests without layers).
//! Each layer's diff_id (its digest, or that of its inflated content when it is gzip or
//! zstd) must be the config's `rootfs.diff_ids` entry, and berth writes an OCI manifest
//! for it. Otherwise `index.json` means an OCI layout: every manifest, index, config and
//! layer it reaches must be in the archive (or already in the store), of the size its
//! descriptor says, and is kept byte for byte.
//!
//! Only when every image of the archive checked out are names recorded. A failure before
//! that leaves no name and no half-written blob (ingests are removed); blobs committed
//! before the failure stay, unreferenced, until `berth registry gc` collects them.
//!
//! **Writing** a docker-archive uses the layout Docker 20.10 loads (`<digest>/layer.tar`,
//! `<config hex>.json`, `manifest.json`), with layers inflated as `docker save` writes
//! them; the same writer streams `berth load`'s tar fallback. An OCI archive holds the
//! stored manifests, indexes and blobs as they are.

use std::collections::{HashMap, HashSet};
use std::io::{self, BufRead, Read, Write};
use std::path::{Component, Path, PathBuf};

use berth_oci::{Algorithm, Descriptor, Digest, Manifest, WrittenReference, media_type};
use berth_snapshot::Compression;
use berth_store::{BlobGuard, Store};
use serde::Deserialize;

use crate::layers::{self, Inflate};
use crate::{Error, Result};

/// Entries up to this size are held in memory while the archive is read.
pub(crate) const SMALL_FILE: u64 = 1 << 20;
/// At most this much of small entries is held in memory; later ones go to the store.
pub(crate) const SMALL_TOTAL: u64 = 64 << 20;
/// The containerd annotation with an image's full name (Docker 25+, BuildKit, berth).
const IMAGE_NAME: &str = "io.containerd.image.name";
/// The OCI annotation with a tag (BuildKit, Docker) or a full name (skopeo).
const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// The two archive formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveFormat {
    /// `docker save`'s format (`manifest.json`), which every Docker loads.
    Docker,
    /// An OCI image layout (`oci-layout`, `index.json`, `blobs/`) in a tar.
    Oci,
}

impl std::fmt::Display for ArchiveFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ArchiveFormat::Docker => "docker-archive",
            ArchiveFormat::Oci => "OCI layout",
        })
    }
}

/// How to import.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// Names for the image instead of those the archive records (`app:1`); the archive
    /// must then hold one image.
    pub names: Vec<String>,
}

/// An image read from an archive.
#[derive(Debug, Clone)]
pub struct ImportedImage {
    /// Its manifest (or index) digest in the store.
    pub manifest: Digest,
    /// Its config digest (the image ID), for an image manifest.
    pub config: Option<Digest>,
    /// The names it was recorded under (`app:1`), none if the archive gave none.
    pub names: Vec<String>,
}

/// What an import did.
#[derive(Debug, Clone)]
pub struct Imported {
    /// The archive's format.
    pub format: ArchiveFormat,
    /// Its images, in the archive's order.
    pub images: Vec<ImportedImage>,
}

fn bad(entry: &str, message: impl std::fmt::Display) -> Error {
    Error::Archive(format!("entry {entry}: {message}"))
}

fn store_err(e: impl std::fmt::Display) -> Error {
    Error::Store(e.to_string())
}

/// Read an image archive from `input` (a tar, or a gzip- or zstd-compressed tar) into
/// the store, and record its images under their names (see the module docs).
pub fn import(store: &Store, input: impl Read + Send, opts: &ImportOptions) -> Result<Imported> {
    // Builds hold this lock shared too; `berth prune` and `registry gc` take it
    // exclusively, so nothing this import commits is collected before it is named.
    let _lock = store.lock_root(false).map_err(store_err)?;
    let mut input = io::BufReader::with_capacity(1 << 20, input);
    let head = input
        .fill_buf()
        .map_err(|e| Error::Archive(format!("read the archive: {e}")))?;
    let compression = sniff(head);
    let tar = compression
        .reader(input)
        .map_err(|e| Error::Archive(format!("read the {compression} archive: {e}")))?;
    let mut entries = read_entries(store, tar)?;
    let (format, mut plans) = if entries.get("manifest.json").is_some() {
        (ArchiveFormat::Docker, entries.docker_plans(store)?)
    } else if entries.get("index.json").is_some() {
        (ArchiveFormat::Oci, entries.oci_plans(store)?)
    } else {
        return Err(Error::Archive(
            "the archive has neither manifest.json (docker save) nor index.json (OCI layout): \
             it is not an image archive, or it was cut short"
                .into(),
        ));
    };
    if !opts.names.is_empty() {
        if plans.len() != 1 {
            return Err(Error::Archive(format!(
                "the archive holds {} images, and -t names one: import without -t (the \
                 archive's own names are used), or save a single image",
                plans.len()
            )));
        }
        plans[0].names = opts.names.clone();
    }
    // Every name is checked before the first is recorded.
    let mut named = Vec::new();
    for plan in &plans {
        let mut names = Vec::new();
        for n in &plan.names {
            names.push(store_name(n)?);
        }
        named.push(names);
    }
    if named.iter().all(|n| n.is_empty()) {
        return Err(Error::Archive(
            "the archive names no image (saved by ID, or an OCI layout whose ref.name is only \
             a tag); name it with -t NAME"
                .into(),
        ));
    }
    let repos = store.repos();
    let mut images = Vec::new();
    for (plan, names) in plans.into_iter().zip(named) {
        for n in &names {
            for b in &plan.blobs {
                repos.link_blob(&n.repository, b).map_err(store_err)?;
            }
            for (m, t) in &plan.manifests {
                repos
                    .link_manifest(&n.repository, m, t)
                    .map_err(store_err)?;
            }
            repos
                .set_tag(&n.repository, &n.tag, &plan.top)
                .map_err(store_err)?;
        }
        images.push(ImportedImage {
            manifest: plan.top,
            config: plan.config,
            names: names.into_iter().map(|n| n.shown).collect(),
        });
    }
    // The guards in `entries` kept every blob from gc until the names were written.
    drop(entries);
    Ok(Imported { format, images })
}

/// The compression of an archive or layer, by its first bytes.
fn sniff(head: &[u8]) -> Compression {
    if head.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::Uncompressed
    }
}

/// A name to record: the store's repository and tag, and the name as shown.
struct StoreName {
    repository: String,
    tag: String,
    shown: String,
}

/// Where image name `name` goes in the store. Docker Hub's full forms
/// (`docker.io/library/busybox:1`, as Docker 25 and containerd write them) are stored as
/// Docker shows them (`busybox:1`), which is how `FROM busybox:1` finds them.
fn store_name(name: &str) -> Result<StoreName> {
    let w = WrittenReference::parse(name)
        .map_err(|e| Error::Archive(format!("image name {name:?}: {e}")))?
        .familiar();
    if w.tag.is_none() && w.digest.is_some() {
        return Err(Error::Archive(format!(
            "image name {name:?} has a digest and no tag; name the image with -t NAME:TAG"
        )));
    }
    let repository = w.local_repository();
    berth_oci::validate_repository(&repository)
        .map_err(|e| Error::Archive(format!("image name {name:?}: {e}")))?;
    let tag = w.tag_or_latest().to_string();
    Ok(StoreName {
        shown: format!("{}:{tag}", w.name()),
        repository,
        tag,
    })
}

/// An entry's content, as read.
enum Content {
    /// Held in memory.
    Small(Vec<u8>),
    /// Committed to the store, held from gc.
    Stored {
        digest: Digest,
        size: u64,
        _guard: BlobGuard,
    },
}

/// The archive's entries, by normalised path.
struct Entries {
    files: HashMap<String, Content>,
    /// Link path -> the path it names (archive-relative).
    links: HashMap<String, String>,
    /// Guards of small entries committed while planning.
    guards: Vec<BlobGuard>,
}

/// An image to record.
struct Plan {
    /// The manifest or index to tag.
    top: Digest,
    config: Option<Digest>,
    /// Every manifest of the image (an index's children too), with its media type.
    manifests: Vec<(Digest, String)>,
    /// Every config and layer blob.
    blobs: Vec<Digest>,
    /// Names as the archive (or -t) gives them.
    names: Vec<String>,
}

/// `a/./b/../c` -> `a/c`; leading `./` and `/` dropped.
fn normalize(path: &Path) -> String {
    let mut parts: Vec<String> = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(s) => parts.push(s.to_string_lossy().into_owned()),
            Component::ParentDir => {
                parts.pop();
            }
            _ => {}
        }
    }
    parts.join("/")
}

/// The digest an entry's name claims: `blobs/<alg>/<hex>`.
fn named_digest(path: &str) -> Option<Digest> {
    let rest = path.strip_prefix("blobs/")?;
    let (alg, hex) = rest.split_once('/')?;
    format!("{alg}:{hex}").parse().ok()
}

/// The config digest a docker-archive's config path claims: `blobs/<alg>/<hex>`,
/// `<hex>.json` (Docker 20.10) or `sha256:<hex>` (go-containerregistry).
fn config_name_digest(path: &str) -> Option<Digest> {
    named_digest(path).or_else(|| {
        if path.contains('/') {
            return None;
        }
        let base = path.strip_suffix(".json").unwrap_or(path);
        let hex = base.strip_prefix("sha256:").unwrap_or(base);
        format!("sha256:{hex}").parse().ok()
    })
}

/// A unique ingest ref for this process.
fn ingest_ref() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "import-{}-{nanos}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Removes an ingest when dropped, unless committed.
struct Ingest<'a> {
    store: &'a Store,
    reference: String,
    committed: bool,
}

impl Drop for Ingest<'_> {
    fn drop(&mut self) {
        if !self.committed
            && let Err(e) = self.store.abort(&self.reference)
        {
            tracing::warn!(ingest = %self.reference, error = %e, "ingest of a failed import not removed");
        }
    }
}

/// Stream one entry of `size` bytes into the store; `expected` is the digest its name
/// claims.
fn ingest_entry(
    store: &Store,
    r: &mut dyn Read,
    path: &str,
    size: u64,
    expected: Option<&Digest>,
) -> Result<Content> {
    let algorithm = expected.map_or(Algorithm::Sha256, |d| d.algorithm());
    let mut ingest = Ingest {
        store,
        reference: ingest_ref(),
        committed: false,
    };
    let mut w = store
        .writer(&ingest.reference, algorithm)
        .map_err(store_err)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let got = r.read(&mut buf).map_err(|e| {
            bad(
                path,
                format!("{e} after {n} of {size} bytes; the archive is truncated or corrupt"),
            )
        })?;
        if got == 0 {
            break;
        }
        w.write_all(&buf[..got]).map_err(store_err)?;
        n += got as u64;
    }
    if n != size {
        return Err(bad(
            path,
            format!("ends after {n} of {size} bytes; the archive is truncated"),
        ));
    }
    let got = w.digest();
    if let Some(want) = expected
        && *want != got
    {
        return Err(bad(
            path,
            format!(
                "its content is {got} ({n} bytes), not the {want} its name says; the archive is corrupt"
            ),
        ));
    }
    let (c, guard) = w.commit_protected(Some(&got), Some(n)).map_err(store_err)?;
    ingest.committed = true;
    Ok(Content::Stored {
        digest: c.digest,
        size: c.size,
        _guard: guard,
    })
}

/// Read every entry of the tar (see the module docs).
fn read_entries(store: &Store, tar: impl Read) -> Result<Entries> {
    let mut entries = Entries {
        files: HashMap::new(),
        links: HashMap::new(),
        guards: Vec::new(),
    };
    let mut small_total = 0u64;
    let mut archive = tar::Archive::new(tar);
    let mut last = String::from("(the first entry)");
    let iter = archive
        .entries()
        .map_err(|e| Error::Archive(format!("read the archive: {e}")))?;
    for entry in iter {
        let mut entry = entry.map_err(|e| {
            Error::Archive(format!(
                "reading the entry after {last}: {e}; the archive is truncated or corrupt"
            ))
        })?;
        let raw_path = entry
            .path()
            .map_err(|e| Error::Archive(format!("an entry after {last} has a bad name: {e}")))?
            .into_owned();
        let path = normalize(&raw_path);
        last.clone_from(&path);
        let kind = entry.header().entry_type();
        if kind.is_symlink() || kind.is_hard_link() {
            let target = entry
                .link_name()
                .map_err(|e| bad(&path, format!("bad link target: {e}")))?
                .unwrap_or_default()
                .into_owned();
            // A symlink is relative to its directory, a hard link to the archive's root.
            let target = if kind.is_symlink() && !target.is_absolute() {
                normalize(
                    &PathBuf::from(&path)
                        .parent()
                        .unwrap_or(Path::new(""))
                        .join(target),
                )
            } else {
                normalize(&target)
            };
            entries.links.insert(path, target);
            continue;
        }
        if !kind.is_file() && kind != tar::EntryType::Continuous {
            continue; // directories, and Docker's nothing else
        }
        let size = entry.size();
        let expected = named_digest(&path);
        if size <= SMALL_FILE && small_total + size <= SMALL_TOTAL {
            let mut bytes = Vec::with_capacity(size as usize);
            entry
                .read_to_end(&mut bytes)
                .map_err(|e| bad(&path, format!("{e}; the archive is truncated or corrupt")))?;
            if bytes.len() as u64 != size {
                return Err(bad(
                    &path,
                    format!(
                        "ends after {} of {size} bytes; the archive is truncated",
                        bytes.len()
                    ),
                ));
            }
            if let Some(want) = &expected {
                let got = Digest::of(want.algorithm(), &bytes);
                if got != *want {
                    return Err(bad(
                        &path,
                        format!(
                            "its content is {got} ({size} bytes), not the {want} its name says; the archive is corrupt"
                        ),
                    ));
                }
            }
            small_total += size;
            entries.files.insert(path, Content::Small(bytes));
        } else {
            let content = ingest_entry(store, &mut entry, &path, size, expected.as_ref())?;
            entries.files.insert(path, content);
        }
    }
    Ok(entries)
}

/// One image of a docker-archive's `manifest.json`.
#[derive(Deserialize)]
struct DockerItem {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers", default)]
    layers: Option<Vec<String>>,
}

impl Entries {
    /// The path `path` resolves to through links, if it is a file of the archive.
    fn resolve(&self, path: &str) -> Option<String> {
        let mut p = normalize(Path::new(path));
        for _ in 0..16 {
            if self.files.contains_key(&p) {
                return Some(p);
            }
            p = self.links.get(&p)?.clone();
        }
        None
    }

    fn get(&self, path: &str) -> Option<&Content> {
        self.files.get(&self.resolve(path)?)
    }

    /// The bytes of a (small) entry.
    fn read(&self, store: &Store, path: &str) -> Result<Option<Vec<u8>>> {
        match self.get(path) {
            None => Ok(None),
            Some(Content::Small(b)) => Ok(Some(b.clone())),
            Some(Content::Stored { digest, .. }) => store.read_blob(digest).map_err(store_err),
        }
    }

    /// Commit entry `path` to the store (if it is not yet) and hold it; its digest and
    /// size. `None` if the archive has no such file.
    fn commit(&mut self, store: &Store, path: &str) -> Result<Option<(Digest, u64)>> {
        let Some(p) = self.resolve(path) else {
            return Ok(None);
        };
        let content = self.files.get(&p).expect("resolved");
        let (digest, size) = match content {
            Content::Stored { digest, size, .. } => (digest.clone(), *size),
            Content::Small(bytes) => {
                let algorithm = named_digest(&p).map_or(Algorithm::Sha256, |d| d.algorithm());
                let (c, guard) = store
                    .put_blob_protected(algorithm, bytes)
                    .map_err(store_err)?;
                self.guards.push(guard);
                (c.digest, c.size)
            }
        };
        Ok(Some((digest, size)))
    }

    /// The images of a docker-archive, checked and their blobs committed.
    fn docker_plans(&mut self, store: &Store) -> Result<Vec<Plan>> {
        let bytes = self.read(store, "manifest.json")?.unwrap_or_default();
        let items: Vec<DockerItem> = serde_json::from_slice(&bytes)
            .map_err(|e| bad("manifest.json", format!("not a docker save manifest: {e}")))?;
        if items.is_empty() {
            return Err(bad("manifest.json", "lists no image"));
        }
        let mut plans = Vec::new();
        for item in items {
            plans.push(self.docker_plan(store, item)?);
        }
        Ok(plans)
    }

    fn docker_plan(&mut self, store: &Store, item: DockerItem) -> Result<Plan> {
        let cfg_path = &item.config;
        let config = self.read(store, cfg_path)?.ok_or_else(|| {
            bad(
                "manifest.json",
                format!("names config {cfg_path}, which is not in the archive; the archive is truncated or incomplete"),
            )
        })?;
        let config_digest = Digest::sha256(&config);
        if let Some(named) = config_name_digest(cfg_path)
            && named != config_digest
        {
            return Err(bad(
                cfg_path,
                format!(
                    "its content is {config_digest}, not the {named} its name says; the archive is corrupt"
                ),
            ));
        }
        let doc: serde_json::Value = serde_json::from_slice(&config)
            .map_err(|e| bad(cfg_path, format!("the image config is not JSON: {e}")))?;
        let diff_ids: Vec<Digest> = match &doc["rootfs"]["diff_ids"] {
            serde_json::Value::Null => Vec::new(),
            serde_json::Value::Array(a) => a
                .iter()
                .map(|d| d.as_str().and_then(|s| s.parse().ok()))
                .collect::<Option<_>>()
                .ok_or_else(|| bad(cfg_path, "rootfs.diff_ids holds something not a digest"))?,
            other => return Err(bad(cfg_path, format!("rootfs.diff_ids is {other}"))),
        };
        let layers = item.layers.unwrap_or_default();
        if layers.len() != diff_ids.len() {
            return Err(bad(
                "manifest.json",
                format!(
                    "lists {} layers for config {cfg_path}, whose rootfs.diff_ids has {}",
                    layers.len(),
                    diff_ids.len()
                ),
            ));
        }
        let mut descriptors = Vec::new();
        let mut blobs = Vec::new();
        for (i, (path, diff_id)) in layers.iter().zip(&diff_ids).enumerate() {
            let (digest, size) = self.commit(store, path)?.ok_or_else(|| {
                bad(
                    "manifest.json",
                    format!("names layer {path}, which is not in the archive; the archive is truncated or incomplete"),
                )
            })?;
            let compression = blob_compression(store, &digest)?;
            let got = diff_id_of(store, &digest, compression)
                .map_err(|e| bad(path, format!("cannot read the {compression} layer: {e}")))?;
            if got != *diff_id {
                return Err(bad(
                    path,
                    format!(
                        "layer {} of {cfg_path} has diff_id {got}, but the config lists {diff_id}; the archive is corrupt",
                        i + 1
                    ),
                ));
            }
            descriptors.push(serde_json::json!({
                "mediaType": compression.media_type(),
                "digest": digest,
                "size": size,
            }));
            blobs.push(digest);
        }
        let (config_c, guard) = store
            .put_blob_protected(Algorithm::Sha256, &config)
            .map_err(store_err)?;
        self.guards.push(guard);
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media_type::OCI_MANIFEST,
            "config": {"mediaType": media_type::OCI_CONFIG, "digest": config_c.digest, "size": config_c.size},
            "layers": descriptors,
        });
        let manifest = serde_json::to_vec(&manifest).expect("json");
        let (m, guard) = store
            .put_blob_protected(Algorithm::Sha256, &manifest)
            .map_err(store_err)?;
        self.guards.push(guard);
        blobs.insert(0, config_c.digest.clone());
        Ok(Plan {
            top: m.digest.clone(),
            config: Some(config_c.digest),
            manifests: vec![(m.digest, media_type::OCI_MANIFEST.to_string())],
            blobs,
            names: item.repo_tags.unwrap_or_default(),
        })
    }

    /// The images of an OCI layout, checked and their blobs committed.
    fn oci_plans(&mut self, store: &Store) -> Result<Vec<Plan>> {
        let bytes = self.read(store, "index.json")?.unwrap_or_default();
        let index: Manifest = serde_json::from_slice(&bytes)
            .map_err(|e| bad("index.json", format!("not an OCI image index: {e}")))?;
        if index.manifests.is_empty() {
            return Err(bad("index.json", "lists no image"));
        }
        let mut plans: Vec<Plan> = Vec::new();
        for d in &index.manifests {
            let a = d.annotations.as_ref();
            let full = a.and_then(|a| a.get(IMAGE_NAME)).or_else(|| {
                // ref.name is a tag (BuildKit, Docker) or a full name (skopeo).
                a.and_then(|a| a.get(REF_NAME))
                    .filter(|n| n.contains([':', '/']))
            });
            // One image under several names has a descriptor per name.
            if let Some(p) = plans.iter_mut().find(|p| p.top == d.digest) {
                p.names.extend(full.cloned());
                continue;
            }
            let mut plan = Plan {
                top: d.digest.clone(),
                config: None,
                manifests: Vec::new(),
                blobs: Vec::new(),
                names: Vec::new(),
            };
            self.oci_tree(store, d, &mut plan, 0)?;
            plan.names.extend(full.cloned());
            plans.push(plan);
        }
        Ok(plans)
    }

    /// Check and commit the blob `d` describes: from the archive, or already in the store.
    fn oci_blob(&mut self, store: &Store, d: &Descriptor, what: &str) -> Result<()> {
        let path = format!("blobs/{}/{}", d.digest.algorithm().as_str(), d.digest.hex());
        let size = match self.commit(store, &path)? {
            Some((digest, size)) if digest == d.digest => size,
            // A file there whose content hashes otherwise was refused while reading, unless
            // it is a link to another blob.
            Some((digest, _)) => {
                return Err(bad(
                    &path,
                    format!(
                        "links to {digest}, not to the {what} it names; the archive is corrupt"
                    ),
                ));
            }
            None => match store.protect_blob(&d.digest).map_err(store_err)? {
                Some(guard) => {
                    let size = guard.size();
                    self.guards.push(guard);
                    size
                }
                None => {
                    return Err(bad(
                        &path,
                        format!(
                            "the {what} {} is not in the archive; the archive is truncated or incomplete",
                            d.digest
                        ),
                    ));
                }
            },
        };
        if size != d.size {
            return Err(bad(
                &path,
                format!(
                    "{size} bytes, but the descriptor of this {what} says {}; the archive is corrupt",
                    d.size
                ),
            ));
        }
        Ok(())
    }

    fn oci_tree(
        &mut self,
        store: &Store,
        d: &Descriptor,
        plan: &mut Plan,
        depth: u32,
    ) -> Result<()> {
        let path = format!("blobs/{}/{}", d.digest.algorithm().as_str(), d.digest.hex());
        if depth > 8 {
            return Err(bad(&path, "indexes nested deeper than 8"));
        }
        self.oci_blob(store, d, "manifest")?;
        let bytes = store
            .read_blob(&d.digest)
            .map_err(store_err)?
            .unwrap_or_default();
        let (m, mt) =
            Manifest::parse(&bytes, Some(&d.media_type)).map_err(|e| bad(&path, format!("{e}")))?;
        plan.manifests.push((d.digest.clone(), mt.clone()));
        if media_type::is_index(&mt) {
            for child in &m.manifests {
                self.oci_tree(store, child, plan, depth + 1)?;
            }
            return Ok(());
        }
        if depth == 0 {
            plan.config = m.config.as_ref().map(|c| c.digest.clone());
        }
        for b in m.blobs() {
            if media_type::is_non_distributable(&b.media_type) {
                continue; // its bytes live at its URLs
            }
            let what = if Some(b) == m.config.as_ref() {
                "config"
            } else {
                "layer"
            };
            self.oci_blob(store, b, what)?;
            plan.blobs.push(b.digest.clone());
        }
        Ok(())
    }
}

/// The compression of a stored layer, by its first bytes.
fn blob_compression(store: &Store, digest: &Digest) -> Result<Compression> {
    let (mut f, _) = store
        .open_blob(digest)
        .map_err(store_err)?
        .ok_or_else(|| Error::Store(format!("blob {digest} vanished from the store")))?;
    let mut head = [0u8; 4];
    let mut n = 0;
    while n < head.len() {
        match f.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) => return Err(store_err(e)),
        }
    }
    Ok(sniff(&head[..n]))
}

/// The diff_id of a stored layer: its digest, or that of its inflated content (from the
/// store's record, else measured and recorded).
fn diff_id_of(store: &Store, digest: &Digest, compression: Compression) -> io::Result<Digest> {
    if compression == Compression::Uncompressed {
        return Ok(digest.clone());
    }
    if let Ok(Some(u)) = store.uncompressed(digest) {
        return Ok(u.diff_id);
    }
    let f = std::fs::File::open(store.blob_path(digest))?;
    let mut r = compression.reader(f)?;
    let mut hasher = Algorithm::Sha256.hasher();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    let u = berth_store::Uncompressed {
        diff_id: hasher.finish(),
        size,
    };
    store.set_uncompressed(digest, &u);
    Ok(u.diff_id)
}

/// An image to save: its name and its manifest (or index) in the store.
#[derive(Debug, Clone)]
pub struct SaveImage {
    /// The name it gets in the archive (`app:1`).
    pub name: String,
    /// Its manifest or index.
    pub manifest: Digest,
}

/// Write `images` as an archive of `format` into `out`.
pub fn save(
    store: &Store,
    images: &[SaveImage],
    format: ArchiveFormat,
    out: impl Write,
) -> Result<()> {
    let written = match format {
        ArchiveFormat::Docker => {
            let mut resolved: Vec<(layers::Image, Vec<String>)> = Vec::new();
            for img in images {
                let manifest = platform_manifest(store, &img.manifest, &img.name)?;
                let image = layers::image(store, &manifest, Inflate::Always)?;
                let name = docker_name(&img.name)?;
                match resolved
                    .iter_mut()
                    .find(|(i, _)| i.config_digest == image.config_digest)
                {
                    Some((_, names)) => names.push(name),
                    None => resolved.push((image, vec![name])),
                }
            }
            let refs: Vec<(&layers::Image, &[String])> =
                resolved.iter().map(|(i, n)| (i, n.as_slice())).collect();
            write_docker_archive(&refs, out).map(|_| ())
        }
        ArchiveFormat::Oci => write_oci_archive(store, images, out),
    };
    written.map_err(|e| Error::Store(format!("writing the archive: {e}")))
}

/// [`save`] into the file `dest`, written under a temporary name and renamed, so a
/// failed save leaves no partial file.
pub fn save_to_file(
    store: &Store,
    images: &[SaveImage],
    format: ArchiveFormat,
    dest: &Path,
) -> Result<()> {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let tmp = dest.with_file_name(format!(".{name}.partial-{}", std::process::id()));
    let io_err =
        |what: &str, p: &Path, e: io::Error| Error::Store(format!("{what} {}: {e}", p.display()));
    let result = (|| {
        let f = std::fs::File::create(&tmp).map_err(|e| io_err("create", &tmp, e))?;
        let mut w = io::BufWriter::new(f);
        save(store, images, format, &mut w)?;
        let f = w
            .into_inner()
            .map_err(|e| io_err("write", &tmp, e.into_error()))?;
        f.sync_all().map_err(|e| io_err("sync", &tmp, e))?;
        std::fs::rename(&tmp, dest).map_err(|e| io_err("rename to", dest, e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The name Docker gets: `name:tag`, `latest` when none is written.
fn docker_name(name: &str) -> Result<String> {
    let w = WrittenReference::parse(name).map_err(|e| Error::Store(e.to_string()))?;
    Ok(format!("{}:{}", w.name(), w.tag_or_latest()))
}

/// `manifest` itself, or for an index the manifest of this machine's platform (a
/// docker-archive holds one platform).
pub(crate) fn platform_manifest(store: &Store, manifest: &Digest, name: &str) -> Result<Digest> {
    let bytes = store
        .read_blob(manifest)
        .map_err(store_err)?
        .ok_or_else(|| {
            Error::Store(format!(
                "manifest {manifest} of {name} is not in berth's store"
            ))
        })?;
    let (m, mt) =
        Manifest::parse(&bytes, None).map_err(|e| Error::Store(format!("{name}: {e}")))?;
    if !media_type::is_index(&mt) {
        return Ok(manifest.clone());
    }
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    m.manifests
        .iter()
        .find(|d| {
            d.platform
                .as_ref()
                .is_some_and(|p| p["os"] == "linux" && p["architecture"] == arch)
        })
        .map(|d| d.digest.clone())
        .ok_or_else(|| {
            Error::Store(format!(
                "{name} is an index with no image for linux/{arch}; a docker-archive holds one \
                 platform: save it with --format oci"
            ))
        })
}

/// Append a regular file entry.
fn add_file<W: Write>(
    tar: &mut tar::Builder<W>,
    path: &str,
    size: u64,
    data: &mut dyn Read,
) -> io::Result<()> {
    let mut h = tar::Header::new_ustar();
    h.set_size(size);
    h.set_mode(0o644);
    h.set_mtime(0);
    // A short read would shift every later entry: fail instead.
    let mut counted = Counted {
        inner: &mut Read::take(&mut *data, size),
        n: 0,
    };
    tar.append_data(&mut h, path, &mut counted)?;
    if counted.n != size {
        return Err(io::Error::other(format!(
            "{path} ended after {} of {size} bytes",
            counted.n
        )));
    }
    Ok(())
}

/// Write `images` (each under its names) as a docker-archive (`manifest.json`, configs,
/// one `<digest>/layer.tar` per layer, each written once) into `out`; returns `out`.
pub(crate) fn write_docker_archive<W: Write>(
    images: &[(&layers::Image, &[String])],
    out: W,
) -> io::Result<W> {
    let mut tar = tar::Builder::new(out);
    let mut written = HashSet::new();
    let mut manifest = Vec::new();
    for (image, names) in images {
        let cfg_name = format!("{}.json", image.config_digest.hex());
        if written.insert(cfg_name.clone()) {
            add_file(
                &mut tar,
                &cfg_name,
                image.config.len() as u64,
                &mut image.config.as_slice(),
            )?;
        }
        let mut paths = Vec::new();
        for l in &image.layers {
            let p = format!("{}/layer.tar", l.digest.hex());
            if written.insert(p.clone()) {
                add_file(&mut tar, &p, l.size, &mut l.open()?)?;
            }
            paths.push(p);
        }
        manifest.push(serde_json::json!({"Config": cfg_name, "RepoTags": names, "Layers": paths}));
    }
    let mf = serde_json::to_vec(&manifest).expect("json");
    add_file(
        &mut tar,
        "manifest.json",
        mf.len() as u64,
        &mut mf.as_slice(),
    )?;
    tar.into_inner()
}

/// Write `images` as an OCI image layout tar: `index.json` names each image
/// (`io.containerd.image.name`, and its tag as `org.opencontainers.image.ref.name`, as
/// BuildKit's exporter does), and every manifest, index and blob they reach is written
/// once, as stored.
fn write_oci_archive(store: &Store, images: &[SaveImage], out: impl Write) -> io::Result<()> {
    let mut tar = tar::Builder::new(out);
    add_file(
        &mut tar,
        "oci-layout",
        30,
        &mut &br#"{"imageLayoutVersion":"1.0.0"}"#[..],
    )?;
    let mut descriptors = Vec::new();
    let mut blobs: Vec<Digest> = Vec::new();
    for img in images {
        let bytes = store
            .read_blob(&img.manifest)
            .map_err(io::Error::other)?
            .ok_or_else(|| {
                io::Error::other(format!("manifest {} is not in berth's store", img.manifest))
            })?;
        let (_, mt) = Manifest::parse(&bytes, None)
            .map_err(|e| io::Error::other(format!("{}: {e}", img.name)))?;
        let tag = WrittenReference::parse(&img.name)
            .map_err(io::Error::other)?
            .tag_or_latest()
            .to_string();
        descriptors.push(serde_json::json!({
            "mediaType": mt,
            "digest": img.manifest,
            "size": bytes.len(),
            "annotations": {IMAGE_NAME: img.name, REF_NAME: tag},
        }));
        collect_tree(store, &img.manifest, &mut blobs, 0)?;
    }
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media_type::OCI_INDEX,
        "manifests": descriptors,
    });
    let index = serde_json::to_vec(&index).expect("json");
    add_file(
        &mut tar,
        "index.json",
        index.len() as u64,
        &mut index.as_slice(),
    )?;
    let mut seen = HashSet::new();
    for d in blobs {
        if !seen.insert(d.clone()) {
            continue;
        }
        let (mut f, size) = store
            .open_blob(&d)
            .map_err(io::Error::other)?
            .ok_or_else(|| io::Error::other(format!("blob {d} is not in berth's store")))?;
        add_file(
            &mut tar,
            &format!("blobs/{}/{}", d.algorithm().as_str(), d.hex()),
            size,
            &mut f,
        )?;
    }
    tar.into_inner()?.flush()
}

/// `manifest` and every manifest and blob it reaches, in the store.
fn collect_tree(
    store: &Store,
    manifest: &Digest,
    out: &mut Vec<Digest>,
    depth: u32,
) -> io::Result<()> {
    if depth > 8 {
        return Err(io::Error::other(format!(
            "{manifest}: indexes nested deeper than 8"
        )));
    }
    out.push(manifest.clone());
    let bytes = store
        .read_blob(manifest)
        .map_err(io::Error::other)?
        .ok_or_else(|| io::Error::other(format!("manifest {manifest} is not in berth's store")))?;
    let (m, _) = Manifest::parse(&bytes, None)
        .map_err(|e| io::Error::other(format!("manifest {manifest}: {e}")))?;
    for child in &m.manifests {
        collect_tree(store, &child.digest, out, depth + 1)?;
    }
    out.extend(
        m.blobs()
            .filter(|b| !media_type::is_non_distributable(&b.media_type))
            .map(|b| b.digest.clone()),
    );
    Ok(())
}

/// Counts the bytes read through it.
struct Counted<'a> {
    inner: &'a mut dyn Read,
    n: u64,
}

impl Read for Counted<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.n += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a test archive holds at one path.
    enum E {
        File(Vec<u8>),
        Link(&'static str),
    }

    fn tar_of(entries: &[(&str, E)]) -> Vec<u8> {
        let mut tar = tar::Builder::new(Vec::new());
        for (path, e) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            match e {
                E::File(data) => {
                    h.set_size(data.len() as u64);
                    tar.append_data(&mut h, path, data.as_slice()).unwrap();
                }
                E::Link(target) => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_size(0);
                    tar.append_link(&mut h, path, target).unwrap();
                }
            }
        }
        tar.into_inner().unwrap()
    }

    /// A layer: a tar holding `/who` with `text`, padded to `pad` bytes of content.
    fn layer(text: &str, pad: usize) -> Vec<u8> {
        let mut body = text.as_bytes().to_vec();
        body.resize(pad.max(body.len()), b'x');
        tar_of(&[("who", E::File(body))])
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(data).unwrap();
        gz.finish().unwrap()
    }

    /// A Docker-style config (with the nulls Docker writes) over `diff_ids`.
    fn config(diff_ids: &[&Digest]) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "config": {"Env": null, "Cmd": null, "Entrypoint": null},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }))
        .unwrap()
    }

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        (dir, store)
    }

    fn hex(d: &Digest) -> String {
        d.hex().to_string()
    }

    /// Docker 20.10's layout for two images sharing a layer, the second's layer.tar a
    /// link to the first's (as `docker save` writes it); the big layer goes to the store
    /// while reading, the small one stays in memory.
    fn legacy_archive() -> (Vec<u8>, Digest, Digest) {
        let base = layer("base", 2 * SMALL_FILE as usize);
        let top = layer("top", 0);
        let (base_d, top_d) = (Digest::sha256(&base), Digest::sha256(&top));
        let c1 = config(&[&base_d]);
        let c2 = config(&[&base_d, &top_d]);
        let (c1_d, c2_d) = (Digest::sha256(&c1), Digest::sha256(&c2));
        let manifest = serde_json::json!([
            {"Config": format!("{}.json", hex(&c1_d)), "RepoTags": ["one:1"], "Layers": ["aaa/layer.tar"]},
            {"Config": format!("{}.json", hex(&c2_d)), "RepoTags": ["127.0.0.1:5000/two:2", "docker.io/library/two:latest"],
             "Layers": ["bbb/layer.tar", "ccc/layer.tar"]},
        ]);
        let tar = tar_of(&[
            ("aaa/VERSION", E::File(b"1.0".to_vec())),
            ("aaa/json", E::File(b"{}".to_vec())),
            ("aaa/layer.tar", E::File(base)),
            ("bbb/layer.tar", E::Link("../aaa/layer.tar")),
            ("ccc/layer.tar", E::File(top)),
            (&format!("{}.json", hex(&c1_d)), E::File(c1)),
            (&format!("{}.json", hex(&c2_d)), E::File(c2)),
            (
                "manifest.json",
                E::File(serde_json::to_vec(&manifest).unwrap()),
            ),
            ("repositories", E::File(b"{}".to_vec())),
        ]);
        (tar, c1_d, c2_d)
    }

    /// The tags and repositories of a store, and its ingests.
    fn names(store: &Store) -> Vec<String> {
        let repos = store.repos();
        let mut out = Vec::new();
        for r in repos.repositories().unwrap() {
            for t in repos.tags(&r).unwrap() {
                out.push(format!("{r}:{t}"));
            }
        }
        out.sort();
        out
    }

    fn unchanged(store: &Store) {
        assert!(names(store).is_empty(), "nothing named: {:?}", names(store));
        assert!(store.repos().repositories().unwrap().is_empty());
        assert!(store.ingests().unwrap().is_empty(), "no ingest left");
    }

    fn config_of(store: &Store, name: &str) -> Digest {
        let (repo, tag) = name.rsplit_once(':').unwrap();
        let m = store.repos().tag(repo, tag).unwrap().unwrap();
        let bytes = store.read_blob(&m).unwrap().unwrap();
        Manifest::parse(&bytes, None)
            .unwrap()
            .0
            .config
            .unwrap()
            .digest
    }

    #[test]
    fn docker_legacy_layout() {
        let (tar, c1, c2) = legacy_archive();
        let (_d, store) = store();
        let got = import(&store, tar.as_slice(), &ImportOptions::default()).unwrap();
        assert_eq!(got.format, ArchiveFormat::Docker);
        assert_eq!(got.images.len(), 2);
        assert_eq!(got.images[1].names, ["127.0.0.1:5000/two:2", "two:latest"]);
        assert_eq!(
            names(&store),
            ["127.0.0.1-5000/two:2", "one:1", "two:latest"]
        );
        assert_eq!(config_of(&store, "one:1"), c1);
        assert_eq!(config_of(&store, "two:latest"), c2);
        // Layers stored uncompressed, named by their diff_ids; the shared one once.
        let m = store.repos().tag("two", "latest").unwrap().unwrap();
        let (m, _) = Manifest::parse(&store.read_blob(&m).unwrap().unwrap(), None).unwrap();
        assert_eq!(m.layers.len(), 2);
        assert_eq!(m.layers[0].media_type, media_type::OCI_LAYER);
        assert!(store.repos().has_blob("one", &m.layers[0].digest).unwrap());
        assert!(store.check().unwrap().problems.is_empty());
        assert!(store.ingests().unwrap().is_empty());
    }

    /// The layout Docker 25+ writes: blobs under blobs/sha256 named by digest, an
    /// index.json (unused) beside manifest.json; here with a gzip layer, as Docker with
    /// the containerd image store saves pulled layers.
    #[test]
    fn docker_25_layout_with_a_gzip_layer() {
        let plain = layer("gz", 0);
        let gz = gzip(&plain);
        let diff_id = Digest::sha256(&plain);
        let gz_d = Digest::sha256(&gz);
        let cfg = config(&[&diff_id]);
        let cfg_d = Digest::sha256(&cfg);
        let manifest = serde_json::json!([{
            "Config": format!("blobs/sha256/{}", hex(&cfg_d)),
            "RepoTags": ["gz:1"],
            "Layers": [format!("blobs/sha256/{}", hex(&gz_d))],
        }]);
        let tar = tar_of(&[
            (&format!("blobs/sha256/{}", hex(&cfg_d)), E::File(cfg)),
            (&format!("blobs/sha256/{}", hex(&gz_d)), E::File(gz)),
            (
                "index.json",
                E::File(br#"{"schemaVersion":2,"manifests":[]}"#.to_vec()),
            ),
            (
                "manifest.json",
                E::File(serde_json::to_vec(&manifest).unwrap()),
            ),
            (
                "oci-layout",
                E::File(br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec()),
            ),
        ]);
        let (_d, store) = store();
        let got = import(&store, tar.as_slice(), &ImportOptions::default()).unwrap();
        assert_eq!(got.format, ArchiveFormat::Docker);
        assert_eq!(got.images[0].config, Some(cfg_d));
        let m = store.repos().tag("gz", "1").unwrap().unwrap();
        let (m, _) = Manifest::parse(&store.read_blob(&m).unwrap().unwrap(), None).unwrap();
        assert_eq!(m.layers[0].digest, gz_d);
        assert_eq!(m.layers[0].media_type, media_type::OCI_LAYER_GZIP);
        assert_eq!(store.uncompressed(&gz_d).unwrap().unwrap().diff_id, diff_id);
    }

    #[test]
    fn saved_archives_import_back() {
        let (tar, _, c2) = legacy_archive();
        let (_d, a) = store();
        import(&a, tar.as_slice(), &ImportOptions::default()).unwrap();
        let two = a.repos().tag("two", "latest").unwrap().unwrap();
        let images = [
            SaveImage {
                name: "two:latest".into(),
                manifest: two.clone(),
            },
            SaveImage {
                name: "again:2".into(),
                manifest: two.clone(),
            },
        ];
        // OCI: manifests kept byte for byte.
        let mut oci = Vec::new();
        save(&a, &images, ArchiveFormat::Oci, &mut oci).unwrap();
        let (_d, b) = store();
        let got = import(&b, oci.as_slice(), &ImportOptions::default()).unwrap();
        assert_eq!(got.format, ArchiveFormat::Oci);
        assert_eq!(got.images.len(), 1, "one image, two names");
        assert_eq!(names(&b), ["again:2", "two:latest"]);
        assert_eq!(b.repos().tag("again", "2").unwrap(), Some(two.clone()));
        assert!(b.check().unwrap().problems.is_empty());
        // docker-archive, gzip'ed as a whole: one image with both names.
        let mut docker = Vec::new();
        save(&a, &images, ArchiveFormat::Docker, &mut docker).unwrap();
        let (_d, c) = store();
        let got = import(&c, gzip(&docker).as_slice(), &ImportOptions::default()).unwrap();
        assert_eq!(got.images.len(), 1);
        assert_eq!(got.images[0].config, Some(c2));
        assert_eq!(names(&c), ["again:2", "two:latest"]);
    }

    #[test]
    fn names_given_replace_the_archives() {
        let (tar, _, _) = legacy_archive();
        let (_d, store) = store();
        let opts = ImportOptions {
            names: vec!["mine:1".into()],
        };
        let err = import(&store, tar.as_slice(), &opts)
            .unwrap_err()
            .to_string();
        assert!(err.contains("holds 2 images"), "{err}");
        unchanged_names(&store);

        let one = layer("one", 0);
        let cfg = config(&[&Digest::sha256(&one)]);
        let unnamed = tar_of(&[
            ("l/layer.tar", E::File(one)),
            ("c.json", E::File(cfg)),
            (
                "manifest.json",
                E::File(
                    br#"[{"Config":"c.json","RepoTags":null,"Layers":["l/layer.tar"]}]"#.to_vec(),
                ),
            ),
        ]);
        let err = import(&store, unnamed.as_slice(), &ImportOptions::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("-t NAME"), "{err}");
        unchanged_names(&store);
        let got = import(&store, unnamed.as_slice(), &opts).unwrap();
        assert_eq!(got.images[0].names, ["mine:1"]);
        assert_eq!(names(&store), ["mine:1"]);
    }

    fn unchanged_names(store: &Store) {
        assert!(names(store).is_empty(), "{:?}", names(store));
    }

    /// `tar` with each file passed through `f` (`None` drops it).
    fn rewrite(tar: &[u8], f: impl Fn(&str, Vec<u8>) -> Option<Vec<u8>>) -> Vec<u8> {
        let mut out = tar::Builder::new(Vec::new());
        for e in tar::Archive::new(tar).entries().unwrap() {
            let mut e = e.unwrap();
            let path = e.path().unwrap().to_string_lossy().into_owned();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            if let Some(d) = f(&path, data) {
                let mut h = tar::Header::new_gnu();
                h.set_mode(0o644);
                h.set_size(d.len() as u64);
                out.append_data(&mut h, &path, d.as_slice()).unwrap();
            }
        }
        out.into_inner().unwrap()
    }

    #[test]
    fn oci_archives_are_checked_by_digest_and_size() {
        let (tar, _, _) = legacy_archive();
        let (_d, a) = store();
        import(&a, tar.as_slice(), &ImportOptions::default()).unwrap();
        let two = a.repos().tag("two", "latest").unwrap().unwrap();
        let (m, _) = Manifest::parse(&a.read_blob(&two).unwrap().unwrap(), None).unwrap();
        let top = format!("blobs/sha256/{}", hex(&m.layers[1].digest));
        let images = [SaveImage {
            name: "two:latest".into(),
            manifest: two,
        }];
        let mut oci = Vec::new();
        save(&a, &images, ArchiveFormat::Oci, &mut oci).unwrap();
        let fails = |bytes: &[u8], want: &[&str]| {
            let (_d, store) = store();
            let err = import(&store, bytes, &ImportOptions::default())
                .unwrap_err()
                .to_string();
            for w in want {
                assert!(err.contains(w), "{w:?} not in: {err}");
            }
            unchanged(&store);
        };
        let missing = rewrite(&oci, |p, d| (p != top).then_some(d));
        fails(&missing, &[&top, "layer", "not in the archive"]);
        // index.json says the manifest is one byte longer than it is.
        let longer = rewrite(&oci, |p, d| {
            if p != "index.json" {
                return Some(d);
            }
            let mut index: serde_json::Value = serde_json::from_slice(&d).unwrap();
            let size = index["manifests"][0]["size"].as_u64().unwrap();
            index["manifests"][0]["size"] = (size + 1).into();
            Some(serde_json::to_vec(&index).unwrap())
        });
        fails(&longer, &["bytes, but the descriptor", "corrupt"]);
        // Intact, it imports; a layer already in the store need not be in the archive.
        let (_d, b) = store();
        import(&b, oci.as_slice(), &ImportOptions::default()).unwrap();
        let again = import(&b, missing.as_slice(), &ImportOptions::default()).unwrap();
        assert_eq!(again.images.len(), 1);
    }

    /// Every damage gives an error naming the entry, and leaves no name and no ingest.
    #[test]
    fn damaged_archives_change_nothing() {
        let (tar, _, _) = legacy_archive();
        let fails = |bytes: &[u8], want: &[&str]| {
            let (_d, store) = store();
            let err = import(&store, bytes, &ImportOptions::default())
                .unwrap_err()
                .to_string();
            for w in want {
                assert!(err.contains(w), "{w:?} not in: {err}");
            }
            unchanged(&store);
        };
        // Cut inside the big layer (streamed into the store), and inside a header.
        let layer_at = 3 * 512 + 1024;
        fails(&tar[..layer_at + 100_000], &["aaa/layer.tar", "truncated"]);
        fails(
            &tar[..layer_at + 2 * SMALL_FILE as usize + 700],
            &["truncated"],
        );
        // Cut at an entry boundary before manifest.json.
        let pos = tar.windows(13).position(|w| w == b"manifest.json").unwrap();
        fails(&tar[..pos], &["neither manifest.json", "cut short"]);
        // A byte of the shared layer changed: its diff_id is not the config's.
        let mut flipped = tar.clone();
        flipped[layer_at + 600] ^= 1;
        fails(&flipped, &["aaa/layer.tar", "diff_id"]);
        // A layer missing.
        let missing = tar_of(&[
            ("c.json", E::File(config(&[&Digest::sha256(b"x")]))),
            (
                "manifest.json",
                E::File(
                    br#"[{"Config":"c.json","RepoTags":["m:1"],"Layers":["gone/layer.tar"]}]"#
                        .to_vec(),
                ),
            ),
        ]);
        fails(&missing, &["gone/layer.tar", "not in the archive"]);
        // OCI: a blob whose content is not its name.
        let blob = b"not what the name says".to_vec();
        let named = Digest::sha256(b"something else");
        let oci = tar_of(&[
            (&format!("blobs/sha256/{}", hex(&named)), E::File(blob)),
            (
                "index.json",
                E::File(br#"{"schemaVersion":2,"manifests":[]}"#.to_vec()),
            ),
        ]);
        fails(&oci, &[&format!("blobs/sha256/{}", hex(&named)), "corrupt"]);
        // A config whose content is not its name.
        let mut wrong = tar.clone();
        let c = wrong.windows(5).position(|w| w == b"\"arch").unwrap();
        wrong[c + 1] = b'A';
        fails(&wrong, &[".json", "not the"]);
    }
}
