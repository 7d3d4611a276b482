//! `berth import` and `berth save`: image archives in and out of berth's store.

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
    let store = berth_store::Store::open(&settings.root)?;
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
