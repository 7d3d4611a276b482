//! How much of a Dockerfile build this root's cache holds, without running it: the build
//! is lowered as [`crate::build`] lowers it (base images from the store only, never
//! pulled) and each step's cache key is computed and looked up. The context need not be
//! here: a directory of stand-ins with the right names, modes and sizes, and the content
//! digests of its files, give the keys the real files would.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use berth_store::Store;

use crate::bases::{Bases, ResolvePolicy};
use crate::error::{BuildError, Result};
use crate::frontend::dockerfile::Dockerfile;
use crate::frontend::dockerfile::lower::{LowerOptions, lower};
use crate::pattern::Ignore;
use crate::solver::{CacheProbe, Cancel, NoProgress, SolveOptions, Solver, build_id};

/// A build to probe, as [`crate::BuildOptions`] gives it, with the Dockerfile as text.
#[derive(Debug, Clone, Default)]
pub struct ProbeOptions {
    /// The Dockerfile's text and file name.
    pub dockerfile: String,
    /// Its name (for `<name>.dockerignore` and messages).
    pub dockerfile_name: String,
    /// The ignore file's text, if the build has one.
    pub dockerignore: Option<String>,
    /// The context: a directory with the context's names, modes and sizes.
    pub context: PathBuf,
    /// `sha256:<hex>` of each regular file's contents, by path relative to `context`;
    /// the files themselves are not read.
    pub sums: HashMap<String, String>,
    /// Stage to build.
    pub target: Option<String>,
    /// `--build-arg` values.
    pub build_args: BTreeMap<String, String>,
    /// Reuse nothing (then nothing counts as cached).
    pub no_cache: bool,
    /// `SOURCE_DATE_EPOCH`, part of the keys of steps that make layers.
    pub source_date_epoch: Option<u64>,
    /// Proxy variables RUN steps would get.
    pub proxy_env: Vec<String>,
    /// Entitlements granted.
    pub allow: Vec<crate::ir::Entitlement>,
    /// Extra `/etc/hosts` lines of RUN steps (`--add-host`), part of their keys.
    pub extra_hosts: Vec<(String, std::net::IpAddr)>,
}

/// Counts the steps of the build `opts` describes and those the cache of `root`
/// answers. Fails when the build cannot be lowered here (a syntax error, or a base
/// image the store lacks: a build would pull it, and its steps are not cached).
pub async fn probe_cache(root: &Path, store: Store, opts: ProbeOptions) -> Result<CacheProbe> {
    let dockerignore = Ignore::parse(opts.dockerignore.as_deref().unwrap_or("")).patterns();
    let lower_opts = LowerOptions {
        build_args: opts.build_args.clone(),
        target: opts.target.clone(),
        dockerignore,
        proxy_env: opts.proxy_env.clone(),
        no_cache: opts.no_cache,
        created: None,
        allow: opts.allow.clone(),
        extra_hosts: opts.extra_hosts.clone(),
        cancel: Cancel::default(),
        platform: None,
    };
    let handle = tokio::runtime::Handle::current();
    let bases = Bases::new(
        store.clone(),
        None,
        ResolvePolicy::default(),
        Arc::new(NoProgress),
        lower_opts.target_platform(),
    );
    let (name, text) = (opts.dockerfile_name.clone(), opts.dockerfile.clone());
    let lowered = tokio::task::spawn_blocking(move || {
        let df = Dockerfile::parse(&name, &text)?;
        lower(&df, &lower_opts, &mut |r, platform| {
            bases.resolve_blocking(&handle, r, platform)
        })
    })
    .await
    .map_err(|e| BuildError::Invalid(format!("lowering panicked: {e}")))??;
    // Opening a solver takes the root's shared lock and sweeps what killed builds left:
    // blocking work, off the async workers with the walk.
    let root = root.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let executor: Arc<dyn berth_exec::Executor> =
            Arc::new(berth_exec::Runc::new(&root.join("exec"))?);
        let solver = Solver::new(
            &root,
            store,
            executor,
            SolveOptions {
                contexts: HashMap::from([("context".to_string(), opts.context.clone())]),
                secrets: HashMap::new(),
                ssh: HashMap::new(),
                no_cache: opts.no_cache,
                source_date_epoch: opts.source_date_epoch,
                compression: berth_snapshot::Compression::Gzip,
                progress: Arc::new(NoProgress),
                cancel: Cancel::default(),
                build_id: build_id(&opts.context, Path::new(&opts.dockerfile_name), None),
                ca_bundle: None,
                step_slots: None,
                client: None,
            },
        )?;
        solver.assume_sums(&opts.context, &opts.sums);
        Ok(solver.probe(&lowered.state))
    })
    .await
    .map_err(|e| BuildError::Invalid(format!("probe panicked: {e}")))?
}
