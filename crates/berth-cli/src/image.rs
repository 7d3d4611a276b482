//! Image management: `berth import` and `berth save` (image archives in and out of
//! berth's store), `pull`, `tag`, `rmi`, `inspect`, `history` and `images`.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};

use crate::settings::Settings;

#[derive(Args)]
pub struct ImportArgs {
    /// The archive: `docker save` output or an OCI layout tar, possibly gzip'ed or
    /// zstd'ed; `-` reads standard input.
    file: PathBuf,
    /// Name the image (repeatable) instead of by the names the archive records; the
    /// archive must then hold one image.
    #[arg(short = 't', long = "tag")]
    tags: Vec<String>,
}

pub fn import(settings: &Settings, args: ImportArgs) -> Result<()> {
    let store = crate::open_store(settings)?;
    let opts = berth_docker::ImportOptions { names: args.tags };
    let shown = args.file.display().to_string();
    let imported = if shown == "-" {
        berth_docker::import(&store, std::io::stdin(), &opts)
    } else {
        let f = std::fs::File::open(&args.file).with_context(|| format!("open {shown}"))?;
        berth_docker::import(&store, f, &opts)
    }
    .map_err(|e| {
        anyhow::anyhow!(
            "import {shown}: {e}\nnothing was named; blobs written before the failure stay \
             unreferenced until `berth registry gc` collects them"
        )
    })?;
    for img in &imported.images {
        let id = img.config.as_ref().unwrap_or(&img.manifest);
        if img.names.is_empty() {
            eprintln!("berth: image {id} in the archive has no name; it was not kept");
        }
        for n in &img.names {
            println!("imported {n} (image ID {id})");
        }
    }
    eprintln!("read {shown} as a {}", imported.format);
    Ok(())
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    /// `docker save`'s format, which `docker load` reads (Docker 20.10 and later).
    Docker,
    /// An OCI image layout in a tar.
    Oci,
}

#[derive(Args)]
pub struct SaveArgs {
    /// The images in berth's store (NAME[:TAG]).
    #[arg(required = true)]
    names: Vec<String>,
    /// The file to write [default: standard output, unless it is a terminal].
    #[arg(short = 'o', long)]
    output: Option<PathBuf>,
    /// The archive's format.
    #[arg(long, value_enum, default_value = "docker")]
    format: Format,
}

pub fn save(settings: &Settings, args: SaveArgs) -> Result<()> {
    let store = berth_store::Store::open(&settings.root)?;
    let mut images = Vec::new();
    for name in &args.names {
        let manifest = berth_build::image::local_manifest(&store, name)
            .with_context(|| format!("berth save {name}"))?;
        images.push(berth_docker::SaveImage {
            name: name.clone(),
            manifest,
        });
    }
    let format = match args.format {
        Format::Docker => berth_docker::ArchiveFormat::Docker,
        Format::Oci => berth_docker::ArchiveFormat::Oci,
    };
    match &args.output {
        Some(path) => berth_docker::save_to_file(&store, &images, format, path)
            .with_context(|| format!("save to {}", path.display()))?,
        None => {
            let stdout = std::io::stdout();
            if stdout.is_terminal() {
                bail!(
                    "refusing to write an image archive to a terminal: give -o FILE or redirect the output"
                );
            }
            let mut out = std::io::BufWriter::new(stdout.lock());
            berth_docker::save(&store, &images, format, &mut out)
                .context("save to standard output")?;
            std::io::Write::flush(&mut out)?;
        }
    }
    Ok(())
}

/// An image the user named: where it is in the store.
struct Found {
    /// (repository, tag) rows of the store that name it; a name with a digest gives a
    /// row without tag.
    rows: Vec<berth_store::ImageEntry>,
    /// Whether the user named it by ID (not by name).
    by_id: bool,
}

/// Find `name` in the store: `NAME[:TAG]`, `NAME@DIGEST` (Docker Hub's full forms
/// included), or an image ID (`sha256:HEX` or a unique prefix of the hex).
fn find(store: &berth_store::Store, name: &str) -> Result<Option<Found>> {
    let images = store.images()?;
    if let Ok(w) = berth_oci::WrittenReference::parse(name) {
        let familiar = w.clone().familiar();
        let mut repos = vec![w.local_repository(), familiar.local_repository()];
        if !familiar.path.contains('/') && familiar.domain.is_none() {
            repos.push(format!("library/{}", familiar.path));
        }
        for repo in &repos {
            let hit: Vec<_> = match &w.digest {
                Some(d) => {
                    if store.repos().manifest(repo, d).ok().flatten().is_none() {
                        continue;
                    }
                    vec![berth_store::ImageEntry {
                        repository: repo.clone(),
                        tag: None,
                        id: store.image_id(d)?,
                        manifest: d.clone(),
                    }]
                }
                None => images
                    .iter()
                    .filter(|e| {
                        e.repository == *repo && e.tag.as_deref() == Some(w.tag_or_latest())
                    })
                    .cloned()
                    .collect(),
            };
            if !hit.is_empty() {
                return Ok(Some(Found {
                    rows: hit,
                    by_id: false,
                }));
            }
        }
    }
    let hex = name.strip_prefix("sha256:").unwrap_or(name);
    if hex.is_empty()
        || !hex
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    {
        return Ok(None);
    }
    let rows: Vec<_> = images
        .into_iter()
        .filter(|e| e.id.hex().starts_with(hex))
        .collect();
    let ids: std::collections::BTreeSet<_> = rows.iter().map(|e| e.id.clone()).collect();
    if ids.len() > 1 {
        bail!(
            "image ID {name} is ambiguous: it starts {} images; give more of it",
            ids.len()
        );
    }
    Ok((!rows.is_empty()).then_some(Found { rows, by_id: true }))
}

fn no_such(name: &str) -> anyhow::Error {
    anyhow::anyhow!("no such image: {name} (`berth images` lists what the store holds)")
}

/// How a store row is shown: `repo:tag`, or `repo@digest` without a tag.
fn shown(e: &berth_store::ImageEntry) -> String {
    let repo = display_repository(&e.repository);
    match &e.tag {
        Some(t) => format!("{repo}:{t}"),
        None => format!("{repo}@{}", e.manifest),
    }
}

/// A store repository as an image name: the store writes a registry's port `-PORT`
/// (repository names cannot hold `:`), so `127.0.0.1-5000/app` is shown
/// `127.0.0.1:5000/app`. Only a first component that is a domain (a `.` in it, or
/// `localhost`) ending in `-DIGITS` is read so.
pub(crate) fn display_repository(repo: &str) -> String {
    if let Some((first, rest)) = repo.split_once('/')
        && let Some((host, port)) = first.rsplit_once('-')
        && !port.is_empty()
        && port.bytes().all(|b| b.is_ascii_digit())
        && (host.contains('.') || host == "localhost")
    {
        return format!("{host}:{port}/{rest}");
    }
    repo.to_string()
}

#[derive(Args)]
pub struct PullArgs {
    /// The image: NAME[:TAG|@DIGEST] (Docker Hub's short names as docker reads them).
    name: String,
    /// Only this platform of a multi-platform image (os/arch, e.g. linux/arm64), unpacked
    /// for builds with `--platform` [default: every platform, this host's unpacked].
    #[arg(long)]
    platform: Option<String>,
    /// Only fetch the blobs: do not unpack the layers into berth's snapshots (for
    /// mirroring images; a build unpacks what it needs).
    #[arg(long)]
    no_unpack: bool,
}

pub fn pull(settings: &Settings, args: PullArgs) -> Result<()> {
    let written = berth_oci::WrittenReference::parse(&args.name)?;
    let reference = written.clone().into_reference();
    let store = crate::open_store(settings)?;
    let (host_os, host_arch) = berth_build::image::host_platform();
    let mut opts = match &args.platform {
        Some(p) => {
            let (os, arch) = p
                .split_once('/')
                .with_context(|| format!("--platform {p:?}: write it os/arch, e.g. linux/amd64"))?;
            berth_client::PullOptions::new(berth_client::Platform::new(os, arch))
        }
        None => berth_client::PullOptions {
            all_platforms: true,
            // Of an index pulled whole, the manifest a build here takes is unpacked.
            ..berth_client::PullOptions::new(berth_client::Platform::new(host_os, host_arch))
        },
    };
    // As `docker pull`, the image is left ready to run a build on: the layers of the
    // platform pulled (of an index pulled whole, the host's) are unpacked as they arrive.
    let unpack = if !args.no_unpack {
        Some(berth_build::PullUnpack::open(
            store.clone(),
            &settings.root,
        )?)
    } else {
        None
    };
    opts.layers = unpack.as_ref().map(|u| u.sink());
    opts.progress = Some(std::sync::Arc::new(|e: &berth_client::PullEvent| {
        use berth_client::PullEvent::*;
        let short = |d: &berth_oci::Digest| d.hex()[..12].to_string();
        let line = match e {
            Exists { digest, .. } => format!("{}: Already exists", short(digest)),
            Started { digest, size } => format!(
                "{}: Pulling fs layer ({})",
                short(digest),
                crate::format::human_size(*size)
            ),
            Progress { digest, done, size } => format!(
                "{}: Downloading {}/{}",
                short(digest),
                crate::format::human_size(*done),
                crate::format::human_size(*size)
            ),
            Done { digest, .. } => format!("{}: Pull complete", short(digest)),
        };
        eprintln!("{line}");
    }));
    let client = settings.remembering_registry_client();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    eprintln!("pulling {reference}");
    // Held shared (as builds hold it) until the image is named: gc takes it exclusively.
    let _lock = store.lock_root(false)?;
    let pulled = rt.block_on(berth_client::pull_image(&client, &store, &reference, &opts));
    if let Some(u) = &unpack {
        if pulled.is_err() {
            u.stop();
        }
        // The pull is whole without it: a build unpacks what is missing.
        match u.wait() {
            Ok(Some(chain)) => eprintln!("Unpacked: {chain}"),
            Ok(None) => {}
            Err(e) if pulled.is_ok() => eprintln!("berth: warning: {e}"),
            Err(_) => {}
        }
    }
    let pulled = pulled?;
    let familiar = written.familiar();
    let repository = familiar.local_repository();
    let tag = match (&familiar.tag, &familiar.digest) {
        (None, Some(_)) => None,
        _ => Some(familiar.tag_or_latest()),
    };
    store
        .name_image(&repository, tag, &pulled.manifest)
        .with_context(|| format!("name the pulled image {}", args.name))?;
    // A build then takes this tag from the store, and knows how old it is; `prune`
    // keeps the image unpacked (a tag while it names this image, a digest until rmi).
    let recorded = match tag {
        Some(tag) => store.record_resolution(&repository, tag, &pulled.manifest),
        None => store.record_pin(&repository, &pulled.manifest),
    };
    if let Err(e) = recorded {
        tracing::debug!(error = %e, "resolution not recorded");
    }
    let remote = pulled.index.clone().unwrap_or(pulled.manifest.clone());
    store.add_repo_digest(&pulled.manifest, &familiar.name(), &remote);
    eprintln!("Digest: {remote}");
    eprintln!("Status: Downloaded image for {}", args.name);
    println!("{reference}");
    Ok(())
}

#[derive(Args)]
pub struct TagArgs {
    /// The image: NAME[:TAG|@DIGEST] or an image ID.
    source: String,
    /// Its new name: NAME[:TAG].
    target: String,
}

pub fn tag(settings: &Settings, args: TagArgs) -> Result<()> {
    let store = crate::open_store(settings)?;
    let found = find(&store, &args.source)?.ok_or_else(|| no_such(&args.source))?;
    let target = berth_oci::WrittenReference::parse(&args.target)?.familiar();
    if target.digest.is_some() {
        bail!(
            "berth tag {}: refusing to create a tag with a digest reference; name it NAME[:TAG]",
            args.target
        );
    }
    let manifest = &found.rows[0].manifest;
    store
        .name_image(
            &target.local_repository(),
            Some(target.tag_or_latest()),
            manifest,
        )
        .with_context(|| format!("berth tag {} {}", args.source, args.target))?;
    Ok(())
}

#[derive(Args)]
pub struct RmiArgs {
    /// Images: NAME[:TAG], NAME@DIGEST or image IDs.
    #[arg(required = true)]
    names: Vec<String>,
    /// Remove every name of an image given by ID, and ignore images that do not exist.
    #[arg(short, long)]
    force: bool,
}

pub fn rmi(settings: &Settings, args: RmiArgs) -> Result<()> {
    let store = crate::open_store(settings)?;
    let mut failed = 0;
    for name in &args.names {
        if let Err(e) = rmi_one(&store, name, args.force) {
            eprintln!("berth: error: {e:#}");
            failed += 1;
        }
    }
    if failed > 0 {
        bail!("{failed} of {} images were not removed", args.names.len());
    }
    Ok(())
}

fn rmi_one(store: &berth_store::Store, name: &str, force: bool) -> Result<()> {
    let Some(found) = find(store, name)? else {
        if force {
            return Ok(());
        }
        return Err(no_such(name));
    };
    let id = found.rows[0].id.clone();
    let short = &id.hex()[..12];
    let tags = found.rows.iter().filter(|e| e.tag.is_some()).count();
    let repos: std::collections::BTreeSet<_> = found.rows.iter().map(|e| &e.repository).collect();
    if found.by_id && !force && (tags > 1 || repos.len() > 1) {
        bail!(
            "conflict: unable to delete {short} (must be forced) - image is referenced in \
             multiple repositories; remove its names one by one, or use -f"
        );
    }
    if !remove(store, &found.rows)? {
        bail!(
            "unable to remove {name}: a running build uses image {short} (it holds it until it \
             ends, -f or not); wait for the build, then remove it"
        );
    }
    // Gone when no repository holds a manifest of it any more; gc frees its blobs.
    if !store.images()?.iter().any(|o| o.id == id) {
        println!("Deleted: {id}");
    }
    Ok(())
}

/// Untag (or unlink, for rows without a tag) `rows`, printing `Untagged: NAME` for each;
/// `false`, with nothing changed, when a running build holds one of their images.
pub(crate) fn remove(store: &berth_store::Store, rows: &[berth_store::ImageEntry]) -> Result<bool> {
    let mut manifests = Vec::new();
    for e in rows {
        manifests.extend(
            store
                .image_tree(&e.manifest)?
                .manifests
                .into_iter()
                .map(|(d, _)| d),
        );
    }
    let Some(_claim) = store.claim_image(&manifests)? else {
        return Ok(false);
    };
    for e in rows {
        match &e.tag {
            Some(t) => {
                store.untag(&e.repository, t)?;
            }
            None => {
                store.unlink_image(&e.repository, &e.manifest)?;
            }
        }
        println!("Untagged: {}", shown(e));
    }
    Ok(true)
}

#[derive(Args)]
pub struct InspectArgs {
    /// Images: NAME[:TAG], NAME@DIGEST or image IDs.
    #[arg(required = true)]
    names: Vec<String>,
    /// A template over the document, e.g. '{{.Id}}' or '{{json .Config.Env}}'.
    #[arg(short, long)]
    format: Option<String>,
}

pub fn inspect(settings: &Settings, args: InspectArgs) -> Result<()> {
    let store = crate::open_store(settings)?;
    let all = store.images()?;
    let mut docs = Vec::new();
    for name in &args.names {
        let found = find(&store, name)?.ok_or_else(|| no_such(name))?;
        let e = &found.rows[0];
        let same: Vec<_> = all.iter().filter(|o| o.id == e.id).collect();
        let tags: Vec<String> = same
            .iter()
            .filter(|o| o.tag.is_some())
            .map(|o| shown(o))
            .collect();
        let mut digests = std::collections::BTreeSet::new();
        for o in same.iter().map(|o| &o.manifest).chain([&e.manifest]) {
            digests.extend(store.repo_digests(o)?);
        }
        let digests: Vec<String> = digests.into_iter().collect();
        docs.push(berth_docker::inspect(
            &store,
            &e.manifest,
            name,
            &tags,
            &digests,
        )?);
    }
    match &args.format {
        Some(f) => {
            for d in &docs {
                println!(
                    "{}",
                    crate::format::render_value(f, &serde_json::to_value(d)?)?
                );
            }
        }
        None => {
            let mut out = Vec::new();
            let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
            let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
            serde::Serialize::serialize(&docs, &mut ser)?;
            println!("{}", String::from_utf8(out)?);
        }
    }
    Ok(())
}

#[derive(Args)]
pub struct HistoryArgs {
    /// The image: NAME[:TAG], NAME@DIGEST or an image ID.
    name: String,
    /// Do not cut the output (IDs, commands).
    #[arg(long)]
    no_trunc: bool,
    /// Only the image IDs.
    #[arg(short, long)]
    quiet: bool,
    /// `table`, `json` or a template over .ID .CreatedSince .CreatedAt .CreatedBy .Size
    /// .Comment.
    #[arg(long)]
    format: Option<String>,
}

pub fn history(settings: &Settings, args: HistoryArgs) -> Result<()> {
    use crate::format::{Row, human_duration, human_size, now, parse_time, show_time};
    let store = crate::open_store(settings)?;
    let found = find(&store, &args.name)?.ok_or_else(|| no_such(&args.name))?;
    let rows = berth_docker::history(&store, &found.rows[0].manifest, &args.name)?;
    let id = |d: &Option<berth_oci::Digest>| match d {
        Some(d) if args.no_trunc => d.to_string(),
        Some(d) => d.hex()[..12].to_string(),
        None => "<missing>".into(),
    };
    if args.quiet {
        for r in &rows {
            println!("{}", id(&r.id));
        }
        return Ok(());
    }
    let now = now();
    let out: Vec<Row> = rows
        .iter()
        .map(|r| {
            let at = r.created.as_deref().and_then(parse_time);
            let by = r.created_by.replace('\t', " ");
            Row::from([
                ("ID", id(&r.id).into()),
                (
                    "CreatedSince",
                    at.map_or("N/A".into(), |t| format!("{} ago", human_duration(now - t)))
                        .into(),
                ),
                ("CreatedAt", at.map_or("N/A".into(), show_time).into()),
                (
                    "CreatedBy",
                    if args.no_trunc {
                        by
                    } else {
                        crate::format::ellipsis(&by, 45)
                    }
                    .into(),
                ),
                ("Size", human_size(r.size).into()),
                ("Comment", r.comment.clone().into()),
            ])
        })
        .collect();
    print!(
        "{}",
        crate::format::render(
            args.format.as_deref(),
            "table {{.ID}}\t{{.CreatedSince}}\t{{.CreatedBy}}\t{{.Size}}\t{{.Comment}}",
            &[
                ("ID", "IMAGE"),
                ("CreatedSince", "CREATED"),
                ("CreatedAt", "CREATED AT"),
                ("CreatedBy", "CREATED BY"),
            ],
            &out,
        )?
    );
    Ok(())
}

#[derive(Args)]
pub struct ImagesArgs {
    /// Only images of this repository (NAME[:TAG]; `*` matches within a path component).
    reference: Option<String>,
    /// Only the image IDs.
    #[arg(short, long)]
    quiet: bool,
    /// Accepted for docker's sake: berth keeps no intermediate images, so all are shown.
    #[arg(short, long)]
    all: bool,
    /// Show the manifest digests.
    #[arg(long)]
    digests: bool,
    /// Do not cut the IDs.
    #[arg(long)]
    no_trunc: bool,
    /// `reference=PATTERN` (repeatable: any matches) or `dangling=true|false`.
    #[arg(short, long = "filter")]
    filters: Vec<String>,
    /// `table`, `json` or a template over .Repository .Tag .ID .Digest .CreatedSince
    /// .CreatedAt .Size.
    #[arg(long)]
    format: Option<String>,
}

/// Go's `path.Match` for one pattern of `*`, `?` and literal characters; `*` does not
/// cross `/`.
fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    fn go(p: &[char], t: &[char]) -> bool {
        match p.first() {
            None => t.is_empty(),
            Some('*') => (0..=t.len())
                .take_while(|&i| i == 0 || t[i - 1] != '/')
                .any(|i| go(&p[1..], &t[i..])),
            Some('?') => t.first().is_some_and(|c| *c != '/') && go(&p[1..], &t[1..]),
            Some(c) => t.first() == Some(c) && go(&p[1..], &t[1..]),
        }
    }
    go(&p, &t)
}

pub fn images(settings: &Settings, args: ImagesArgs) -> Result<()> {
    use crate::format::{Row, human_duration, human_size, now, parse_time, show_time};
    let _ = args.all;
    let store = crate::open_store(settings)?;
    let mut references = Vec::new();
    let mut dangling = None;
    for f in &args.filters {
        match f.split_once('=') {
            Some(("reference", p)) => references.push(p.to_string()),
            Some(("dangling", v)) => {
                dangling = Some(match v {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    _ => bail!("--filter {f}: dangling takes true or false"),
                })
            }
            _ => bail!(
                "--filter {f}: berth filters images by reference=PATTERN or dangling=true|false"
            ),
        }
    }
    if let Some(r) = &args.reference {
        references.push(r.clone());
    }
    let now = now();
    let mut rows: Vec<Row> = Vec::new();
    for e in store.images()? {
        if dangling.is_some_and(|d| d != e.tag.is_none()) {
            continue;
        }
        if !references.is_empty() {
            let repo = display_repository(&e.repository);
            let tagged = e.tag.as_ref().map(|t| format!("{repo}:{t}"));
            let hit = references.iter().any(|p| {
                // Docker Hub's full forms match as docker shows them; patterns stay as written.
                let p = berth_oci::WrittenReference::parse(p)
                    .map(|w| w.familiar())
                    .map(|w| match &w.tag {
                        Some(t) => format!("{}:{t}", w.name()),
                        None => w.name(),
                    })
                    .unwrap_or_else(|_| p.clone());
                glob(&p, &repo) || tagged.as_ref().is_some_and(|t| glob(&p, t))
            });
            if !hit {
                continue;
            }
        }
        let facts = berth_docker::image_facts(&store, &e.manifest, &shown(&e)).ok();
        let at = facts
            .as_ref()
            .and_then(|f| f.created.as_deref())
            .and_then(parse_time);
        let id = if args.no_trunc {
            e.id.to_string()
        } else {
            e.id.hex()[..12].to_string()
        };
        let size = human_size(facts.as_ref().map_or(0, |f| f.size));
        rows.push(Row::from([
            ("Repository", display_repository(&e.repository).into()),
            ("Tag", e.tag.clone().unwrap_or("<none>".into()).into()),
            ("ID", id.into()),
            ("Digest", e.manifest.to_string().into()),
            (
                "CreatedSince",
                at.map_or("N/A".into(), |t| format!("{} ago", human_duration(now - t)))
                    .into(),
            ),
            ("CreatedAt", at.map_or("N/A".into(), show_time).into()),
            ("Size", size.clone().into()),
            ("VirtualSize", size.into()),
            ("Containers", "N/A".into()),
            ("SharedSize", "N/A".into()),
            ("UniqueSize", "N/A".into()),
        ]));
    }
    if args.quiet {
        let mut seen = std::collections::HashSet::new();
        for r in &rows {
            let id = r["ID"].as_str().unwrap_or_default().to_string();
            if seen.insert(id.clone()) {
                println!("{id}");
            }
        }
        return Ok(());
    }
    let default = if args.digests {
        "table {{.Repository}}\t{{.Tag}}\t{{.Digest}}\t{{.ID}}\t{{.CreatedSince}}\t{{.Size}}"
    } else {
        "table {{.Repository}}\t{{.Tag}}\t{{.ID}}\t{{.CreatedSince}}\t{{.Size}}"
    };
    print!(
        "{}",
        crate::format::render(
            args.format.as_deref(),
            default,
            &[
                ("ID", "IMAGE ID"),
                ("CreatedSince", "CREATED"),
                ("CreatedAt", "CREATED AT"),
            ],
            &rows,
        )?
    );
    Ok(())
}
