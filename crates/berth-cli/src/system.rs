//! `berth system df` and `berth system prune` (disk use, and freeing it as `docker
//! system prune` does), `berth completions` and `berth man`.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use berth_oci::Digest;
use berth_store::GcRoots;
use clap::{Args, Subcommand};
use serde_json::json;

use crate::format::{Row, human_size};
use crate::settings::Settings;

#[derive(Subcommand)]
pub enum SystemCommand {
    /// Show what images, build cache, cache mounts and the registry's data take on
    /// disk, and what prune would free.
    Df(DfArgs),
    /// Remove dangling images (every image with --all), the build cache, and the blobs
    /// nothing references any more.
    Prune(PruneArgs),
}

#[derive(Args)]
pub struct DfArgs {
    /// Also list each image and cache mount.
    #[arg(short, long)]
    verbose: bool,
    /// `table`, `json` or a template over .Type .TotalCount .Active .Size .Reclaimable.
    #[arg(long)]
    format: Option<String>,
}

#[derive(Args)]
pub struct PruneArgs {
    /// Remove every image a running build does not use (not only dangling ones), and
    /// the cache mounts.
    #[arg(short, long)]
    all: bool,
    /// Do not ask for confirmation.
    #[arg(short, long)]
    force: bool,
    /// Keep unreferenced blobs younger than this: give `1h` when a registry serves this
    /// root and pushes may be in progress [e.g. 0s, 30m].
    #[arg(long, default_value = "0s", value_parser = crate::parse_duration)]
    grace: Duration,
}

pub fn run(settings: &Settings, command: SystemCommand) -> Result<()> {
    match command {
        SystemCommand::Df(args) => df(settings, args),
        SystemCommand::Prune(args) => prune(settings, args),
    }
}

/// `n (p%)` of `total`, as docker shows reclaimable space.
fn share(n: u64, total: u64) -> String {
    let pct = (n * 100).checked_div(total).unwrap_or(0);
    format!("{} ({pct}%)", human_size(n))
}

fn df(settings: &Settings, args: DfArgs) -> Result<()> {
    let store = crate::open_store(settings)?;
    let images = store.images()?;
    let cache_roots = berth_build::BuildCache::new(&settings.root).roots(&store)?;
    let size_of = |d: &Digest| store.blob_size(d).ok().flatten().unwrap_or(0);
    // Each image's blobs (manifests, configs, layers), and how many images hold each.
    let mut trees: Vec<(usize, HashSet<Digest>)> = Vec::new();
    let mut holders: HashMap<Digest, usize> = HashMap::new();
    let mut active = HashSet::new();
    for (i, e) in images.iter().enumerate() {
        let tree = store.image_tree(&e.manifest)?;
        let manifests: Vec<Digest> = tree.manifests.iter().map(|(d, _)| d.clone()).collect();
        if store.claim_image(&manifests)?.is_none() {
            active.insert(e.id.clone());
        }
        let blobs: HashSet<Digest> = manifests.into_iter().chain(tree.blobs).collect();
        for b in &blobs {
            *holders.entry(b.clone()).or_default() += 1;
        }
        trees.push((i, blobs));
    }
    let held_by_active: HashSet<&Digest> = trees
        .iter()
        .filter(|(i, _)| active.contains(&images[*i].id))
        .flat_map(|(_, b)| b)
        .collect();
    let image_bytes: u64 = holders.keys().map(size_of).sum();
    let image_free: u64 = holders
        .keys()
        .filter(|d| !held_by_active.contains(d) && !cache_roots.contains(d))
        .map(size_of)
        .sum();
    let ids: HashSet<&Digest> = images.iter().map(|e| &e.id).collect();

    let cache = berth_build::cache_usage(&settings.root, &store)?;
    let cache_bytes = cache.layer_bytes + cache.snapshot_bytes + cache.history_bytes;
    let mount_bytes: u64 = cache.mounts.iter().map(|(_, n)| n).sum();

    let garbage = store.unreferenced(&berth_build::BuildCache::new(&settings.root))?;
    let uploads = store.ingests()?;
    let upload_bytes: u64 = uploads.iter().map(|u| u.offset).sum();
    let garbage_bytes: u64 = garbage.iter().map(|(_, n)| n).sum::<u64>() + upload_bytes;
    let mut all_blobs = 0u64;
    for b in store.blobs()? {
        all_blobs += size_of(&b);
    }

    let row = |kind: &str, total: usize, active: usize, size: u64, free: u64| {
        Row::from([
            ("Type", json!(kind)),
            ("TotalCount", json!(total.to_string())),
            ("Active", json!(active.to_string())),
            ("Size", json!(human_size(size))),
            ("Reclaimable", json!(share(free, size))),
        ])
    };
    let rows = [
        row("Images", ids.len(), active.len(), image_bytes, image_free),
        row(
            "Build Cache",
            cache.records,
            0,
            cache_bytes,
            cache_bytes - cache.shared_bytes,
        ),
        row(
            "Cache Mounts",
            cache.mounts.len(),
            0,
            mount_bytes,
            mount_bytes,
        ),
        row(
            "Registry Data",
            garbage.len() + uploads.len(),
            uploads.len(),
            all_blobs + upload_bytes,
            garbage_bytes,
        ),
    ];
    let titles = [
        ("Type", "TYPE"),
        ("TotalCount", "TOTAL"),
        ("Reclaimable", "RECLAIMABLE"),
    ];
    let default = "table {{.Type}}\t{{.TotalCount}}\t{{.Active}}\t{{.Size}}\t{{.Reclaimable}}";
    if !args.verbose || args.format.is_some() {
        print!(
            "{}",
            crate::format::render(args.format.as_deref(), default, &titles, &rows)?
        );
        return Ok(());
    }
    println!("Images space usage:\n");
    let mut image_rows = Vec::new();
    for (i, blobs) in &trees {
        let e = &images[*i];
        let size: u64 = blobs.iter().map(size_of).sum();
        let unique: u64 = blobs
            .iter()
            .filter(|b| holders.get(*b) == Some(&1))
            .map(size_of)
            .sum();
        image_rows.push(Row::from([
            (
                "Repository",
                json!(crate::image::display_repository(&e.repository)),
            ),
            ("Tag", json!(e.tag.clone().unwrap_or("<none>".into()))),
            ("ID", json!(e.id.hex()[..12])),
            ("Size", json!(human_size(size))),
            ("SharedSize", json!(human_size(size - unique))),
            ("UniqueSize", json!(human_size(unique))),
            (
                "Active",
                json!(if active.contains(&e.id) { "1" } else { "0" }),
            ),
        ]));
    }
    print!(
        "{}",
        crate::format::render(
            None,
            "table {{.Repository}}\t{{.Tag}}\t{{.ID}}\t{{.Size}}\t{{.SharedSize}}\t{{.UniqueSize}}\t{{.Active}}",
            &[
                ("ID", "IMAGE ID"),
                ("SharedSize", "SHARED SIZE"),
                ("UniqueSize", "UNIQUE SIZE"),
                ("Active", "BUILDS"),
            ],
            &image_rows,
        )?
    );
    println!(
        "\nBuild cache usage: {} ({} records, {} unpacked layers)\n",
        human_size(cache_bytes),
        cache.records,
        cache.snapshots
    );
    let mount_rows: Vec<Row> = cache
        .mounts
        .iter()
        .map(|(id, n)| Row::from([("ID", json!(id)), ("Size", json!(human_size(*n)))]))
        .collect();
    print!(
        "{}",
        crate::format::render(
            None,
            "table {{.ID}}\t{{.Size}}",
            &[("ID", "CACHE MOUNT")],
            &mount_rows
        )?
    );
    println!(
        "\nRegistry data: {} in blobs; {} blobs and {} uploads ({}) nothing references",
        human_size(all_blobs),
        garbage.len(),
        uploads.len(),
        human_size(garbage_bytes)
    );
    Ok(())
}

fn prune(settings: &Settings, args: PruneArgs) -> Result<()> {
    if !args.force {
        let mut warning = String::from("WARNING! This will remove:\n");
        warning += if args.all {
            "  - all images no running build uses\n  - all build cache, cache mounts included\n"
        } else {
            "  - all dangling images\n  - all build cache\n"
        };
        warning += "  - every blob no image or cache references\n\nAre you sure you want to continue? [y/N] ";
        eprint!("{warning}");
        std::io::stderr().flush()?;
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            bail!("nothing was removed (give --force to skip the question)");
        }
    }
    let store = crate::open_store(settings)?;
    let images = store.images()?;
    let mut gone_ids = HashSet::new();
    let mut busy = 0;
    let mut first = true;
    for e in images.iter().filter(|e| args.all || e.tag.is_none()) {
        if first {
            println!("Deleted Images:");
            first = false;
        }
        if crate::image::remove(&store, std::slice::from_ref(e))? {
            gone_ids.insert(e.id.clone());
        } else {
            busy += 1;
        }
    }
    let left: HashSet<Digest> = store.images()?.into_iter().map(|e| e.id).collect();
    for id in gone_ids.difference(&left) {
        println!("Deleted: {id}");
    }
    if busy > 0 {
        eprintln!("berth: {busy} images were kept: running builds use them");
    }
    let report = berth_build::prune(
        &settings.root,
        &store,
        &berth_build::PruneOptions {
            keep_storage: 0,
            keep_duration: None,
            all: args.all,
        },
    )?;
    let gc = store.gc(
        &berth_store::GcOptions {
            grace: args.grace,
            ..Default::default()
        },
        &berth_build::BuildCache::new(&settings.root),
    )?;
    println!(
        "\nDeleted build cache objects: {} records, {} unpacked layers, {} cache mounts",
        report.records, report.snapshots, report.cache_mounts
    );
    println!(
        "Deleted blobs: {} ({} bytes)",
        gc.removed_blobs.len(),
        gc.removed_bytes
    );
    println!(
        "\nTotal reclaimed space: {}",
        human_size(report.bytes + gc.removed_bytes)
    );
    Ok(())
}

#[derive(Args)]
pub struct CompletionsArgs {
    /// The shell: bash, zsh, fish, elvish or powershell.
    shell: clap_complete::Shell,
}

/// Print the completion script of `cmd` for a shell.
pub fn completions(mut cmd: clap::Command, args: CompletionsArgs) -> Result<()> {
    let mut out = std::io::stdout().lock();
    clap_complete::generate(args.shell, &mut cmd, "berth", &mut out);
    Ok(())
}

#[derive(Args)]
pub struct ManArgs {
    /// Where to write the pages (berth.1, berth-build.1, …), e.g. /usr/local/share/man/man1.
    dir: PathBuf,
}

/// Write a man page for `cmd` and each of its subcommands into a directory.
pub fn man(mut cmd: clap::Command, args: ManArgs) -> Result<()> {
    std::fs::create_dir_all(&args.dir).with_context(|| format!("create {}", args.dir.display()))?;
    cmd.build();
    let mut written = 0;
    let mut todo = vec![("berth".to_string(), cmd)];
    while let Some((name, cmd)) = todo.pop() {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            if sub.get_name() != "help" {
                todo.push((format!("{name}-{}", sub.get_name()), sub.clone()));
            }
        }
        let path = args.dir.join(format!("{name}.1"));
        let mut page = Vec::new();
        clap_mangen::Man::new(cmd)
            .render(&mut page)
            .with_context(|| format!("render {}", path.display()))?;
        std::fs::write(&path, page).with_context(|| format!("write {}", path.display()))?;
        written += 1;
    }
    eprintln!(
        "wrote {written} man pages to {}; `man -M {} berth` reads them",
        args.dir.display(),
        args.dir.parent().unwrap_or(&args.dir).display()
    );
    Ok(())
}
