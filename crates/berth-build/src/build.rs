//! One build, end to end: read the Dockerfile and `.dockerignore`, lower, solve, export.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use berth_oci::Digest;
use berth_snapshot::Snapshotter;
use berth_store::Store;

use crate::bases::{Bases, ResolvePolicy};
use crate::error::{BuildError, Result};
use crate::export::{self, Exported};
use crate::frontend::dockerfile::Dockerfile;
use crate::frontend::dockerfile::lower::{LowerOptions, base_references, lower};
use crate::pattern::Ignore;
use crate::solver::{Cancel, Output, Progress, SecretSource, SolveOptions, Solver, build_id};

/// Where a build's result goes besides the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputSpec {
    /// An OCI image layout, as a tar file.
    OciTar(PathBuf),
    /// The final file system, copied into a directory.
    Local(PathBuf),
}

/// A build request.
#[derive(Clone)]
pub struct BuildOptions {
    /// The Dockerfile (default: `CONTEXT/Dockerfile`).
    pub dockerfile: PathBuf,
    /// The build context directory.
    pub context: PathBuf,
    /// Names for the image in the store.
    pub tags: Vec<String>,
    /// Stage to build.
    pub target: Option<String>,
    /// `--build-arg` values.
    pub build_args: BTreeMap<String, String>,
    /// Secrets by id.
    pub secrets: HashMap<String, SecretSource>,
    /// SSH agent sockets by id (`--ssh default`), for `RUN --mount=type=ssh`.
    pub ssh: HashMap<String, PathBuf>,
    /// Reuse nothing.
    pub no_cache: bool,
    /// `SOURCE_DATE_EPOCH`: reproducible timestamps.
    pub source_date_epoch: Option<u64>,
    /// Proxy variables for RUN steps (never in a key or the image).
    pub proxy_env: Vec<String>,
    /// Extra outputs.
    pub outputs: Vec<OutputSpec>,
    /// Progress sink.
    pub progress: Arc<dyn Progress>,
    /// Cancellation.
    pub cancel: Cancel,
    /// Registry client for base images not in the store (`None`: no pulls).
    pub client: Option<Arc<berth_client::Client>>,
    /// When a base image tag the store has is resolved against its registry again
    /// (default: never, as `docker build`; `--pull`: always).
    pub resolve: ResolvePolicy,
    /// How the image's own layers are compressed (new ones, and cached ones made
    /// another way, which are converted).
    pub compression: berth_snapshot::Compression,
    /// Convert the base image's layers too.
    pub force_compression: bool,
    /// Entitlements granted (`--allow network.host`).
    pub allow: Vec<crate::ir::Entitlement>,
    /// Extra `/etc/hosts` lines for every RUN (`--add-host`).
    pub extra_hosts: Vec<(String, std::net::IpAddr)>,
    /// A CA bundle RUN steps see read-only (never in a layer or a cache key).
    pub ca_bundle: Option<PathBuf>,
    /// Limits steps running at once, shared with other builds (`None`: no limit).
    pub step_slots: Option<Arc<crate::solver::StepSlots>>,
    /// The platform the image is for (`--platform`; `None`: this host's).
    pub platform: Option<crate::Platform>,
}

/// What a build made.
#[derive(Debug, Clone)]
pub struct BuildResult {
    /// The image manifest's digest.
    pub manifest: Digest,
    /// The image ID (config digest).
    pub image_id: Digest,
    /// Number of layers.
    pub layers: usize,
}

/// Run a build over the data root `root`.
pub async fn build(
    root: &Path,
    store: Store,
    executor: Arc<dyn berth_exec::Executor>,
    opts: BuildOptions,
) -> Result<BuildResult> {
    // Held from before base images are pulled until the image is recorded, so prune
    // and gc cannot remove what this build fetched or reused in between.
    let _lock = store.lock_root(false)?;
    let text = std::fs::read_to_string(&opts.dockerfile).map_err(|e| {
        BuildError::Invalid(format!(
            "read {}: {e}; pass the Dockerfile with -f",
            opts.dockerfile.display()
        ))
    })?;
    let name = opts
        .dockerfile
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "Dockerfile".into());
    let ignore_file = [
        opts.dockerfile
            .with_file_name(format!("{name}.dockerignore")),
        opts.context.join(".dockerignore"),
    ]
    .into_iter()
    .find(|p| p.is_file());
    let dockerignore = match ignore_file {
        Some(p) => Ignore::parse(
            &std::fs::read_to_string(&p)
                .map_err(|e| BuildError::Io(format!("read {}: {e}", p.display())))?,
        )
        .patterns(),
        None => Vec::new(),
    };
    let created = opts.source_date_epoch.map(rfc3339).or_else(|| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_secs();
        Some(rfc3339(now))
    });
    let lower_opts = LowerOptions {
        build_args: opts.build_args.clone(),
        target: opts.target.clone(),
        dockerignore,
        proxy_env: opts.proxy_env.clone(),
        no_cache: opts.no_cache,
        extra_hosts: opts.extra_hosts.clone(),
        created,
        allow: opts.allow.clone(),
        cancel: opts.cancel.clone(),
        platform: opts.platform.clone(),
    };
    // Parsing a big Dockerfile takes seconds, and lowering resolves base images, which
    // may mean pulling them: both run on a blocking thread (which waits for the async
    // pulls), so a cancel is seen while they run; each checks it as it goes.
    let handle = tokio::runtime::Handle::current();
    // A base pulled now is unpacked while it downloads, and on while the build goes on.
    let snapshots = Snapshotter::open(root.join("snapshots"))?;
    let bases = Arc::new(
        Bases::new(
            store.clone(),
            opts.client.clone(),
            opts.resolve,
            opts.progress.clone(),
            lower_opts.target_platform(),
        )
        .with_unpack(snapshots),
    );
    let bases2 = bases.clone();
    let (store2, cancel) = (store.clone(), opts.cancel.clone());
    // `berth rmi` refuses the base images this build holds until it ends.
    let holds = Arc::new(std::sync::Mutex::new(Vec::new()));
    let holds2 = holds.clone();
    let lowered = tokio::task::spawn_blocking(move || {
        let df = Dockerfile::parse_cancelable(&name, &text, &cancel)?;
        for w in df.checked_warnings()? {
            tracing::warn!("{name}:{}: {} [{}]", w.line, w.message, w.rule);
        }
        // Every base the target needs at once, rather than one at a time as met.
        let needed = base_references(&df, &lower_opts)?;
        handle.block_on(bases.prefetch(&needed));
        lower(&df, &lower_opts, &mut |r, platform| {
            let resolved = bases.resolve_blocking(&handle, r, platform)?;
            let hold = store2.hold_image(&resolved.manifest)?;
            holds2.lock().expect("image holds").push(hold);
            Ok(resolved)
        })
    })
    .await
    .map_err(|e| BuildError::Invalid(format!("lowering panicked: {e}")))??;
    let solver = Solver::new(
        root,
        store.clone(),
        executor,
        SolveOptions {
            contexts: HashMap::from([("context".to_string(), opts.context.clone())]),
            secrets: opts.secrets.clone(),
            ssh: opts.ssh.clone(),
            no_cache: opts.no_cache,
            source_date_epoch: opts.source_date_epoch,
            compression: opts.compression,
            progress: opts.progress.clone(),
            cancel: opts.cancel.clone(),
            build_id: build_id(&opts.context, &opts.dockerfile, opts.target.as_deref()),
            ca_bundle: opts.ca_bundle.clone(),
            step_slots: opts.step_slots.clone(),
            client: opts.client.clone(),
        },
    )?;
    solver.await_unpacks(bases2.take_unpacks());
    let solved = solver.solve(&lowered.state).await;
    solver.save_sums();
    let solved = solved?;
    let Output::Layers(layers) = &solved.output else {
        return Err(BuildError::Invalid(
            "the build's result is not a file system".into(),
        ));
    };
    let mut config = lowered.config.clone();
    // The base image's layers keep their compression unless forced, as in BuildKit.
    let keep = if opts.force_compression {
        0
    } else {
        config.rootfs.diff_ids.len().min(layers.len())
    };
    let converted = {
        let (store, layers, to) = (store.clone(), layers.clone(), opts.compression);
        tokio::task::spawn_blocking(move || export::convert_layers(&store, &layers, to, keep))
            .await
            .map_err(|e| BuildError::Invalid(e.to_string()))??
    };
    let layers = &converted;
    // Steps whose change was empty made no layer; the history must say so.
    for (step, h) in config
        .history
        .iter_mut()
        .skip(lowered.base_history)
        .enumerate()
    {
        if let Some(Some(state)) = lowered.steps.get(step)
            && solver.added_layer(state) == Some(false)
        {
            h.empty_layer = true;
        }
    }
    // A rebuild that changed nothing keeps its image (and writes nothing), as BuildKit's.
    let exported: Exported = match export::unchanged_image(&store, layers, &config, &opts.tags) {
        Some(same) => same,
        None => export::export_image(&store, layers, config, &opts.tags)?,
    };
    for out in &opts.outputs {
        match out {
            OutputSpec::OciTar(dest) => export::export_oci_tar(
                &store,
                &exported,
                layers,
                opts.tags.first().map(String::as_str),
                dest,
            )?,
            OutputSpec::Local(dest) => {
                let solver = solver.clone();
                let (layers, dest) = (layers.clone(), dest.clone());
                tokio::task::spawn_blocking(move || solver.export_dir(&layers, &dest))
                    .await
                    .map_err(|e| BuildError::Invalid(e.to_string()))??;
            }
        }
    }
    Ok(BuildResult {
        manifest: exported.manifest,
        image_id: exported.config,
        layers: layers.len(),
    })
}

/// Seconds since the epoch as RFC 3339 UTC.
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(super::rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }
}
