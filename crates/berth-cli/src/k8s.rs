//! `berth deploy --k8s` and `berth rollback --k8s`: the services of `[deploy]` to a
//! Kubernetes cluster (the file's `[k8s]` table). The image goes through the hosts
//! deploy's push path (deploy.rs); the rest is berth-kube's.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use berth_deploy::DeployFile;
use berth_kube::pull::PullCredentials;
use berth_kube::render::{RenderInput, render};
use berth_kube::{K8sConfig, Kube, KubeOptions, rollout};
use clap::Args;

use crate::satellite::runtime;
use crate::settings::Settings;

/// The options of `--k8s` (on `berth deploy` and `berth rollback`).
#[derive(Args, Debug, Default)]
pub struct K8sArgs {
    /// Deploy to Kubernetes (the file's [k8s] table) instead of the hosts.
    #[arg(long)]
    pub k8s: bool,
    /// The kubeconfig file [default: [k8s] kubeconfig, else KUBECONFIG, else ~/.kube/config].
    #[arg(long, requires = "k8s", value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context [default: [k8s] context, else the current one].
    #[arg(long, requires = "k8s")]
    pub context: Option<String>,
    /// The namespace [default: [k8s] namespace, else the context's, else "default"].
    #[arg(long, short = 'n', requires = "k8s")]
    pub namespace: Option<String>,
    /// Take over fields another field manager owns (server-side apply conflicts).
    #[arg(long, requires = "k8s")]
    pub force_conflicts: bool,
    /// Wait for each service's rollout; on failure, show the failing pod's events and logs.
    #[arg(long, requires = "k8s")]
    pub wait: bool,
    /// How long --wait waits for one service.
    #[arg(long, requires = "wait", default_value = "5m", value_parser = crate::parse_duration)]
    pub timeout: Duration,
}

/// Relative paths of the `[k8s]` table are relative to the deploy file.
fn beside(file: &Path, p: &Path) -> PathBuf {
    if let Ok(rest) = p.strip_prefix("~")
        && let Some(home) = std::env::var_os("HOME")
    {
        return PathBuf::from(home).join(rest);
    }
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        file.parent().unwrap_or(Path::new(".")).join(p)
    }
}

async fn connect(
    settings: &Settings,
    file: &DeployFile,
    config: &K8sConfig,
    args: &K8sArgs,
) -> Result<Kube> {
    let kube = Kube::connect(&KubeOptions {
        kubeconfig: args
            .kubeconfig
            .clone()
            .or_else(|| config.kubeconfig.as_deref().map(|p| beside(&file.path, p))),
        context: args.context.clone().or_else(|| config.context.clone()),
        namespace: args.namespace.clone().or_else(|| config.namespace.clone()),
        force_conflicts: args.force_conflicts,
        network: settings.network(),
    })
    .await?;
    eprintln!(
        "cluster: Kubernetes {}, namespace {}",
        kube.server.git_version, kube.namespace
    );
    Ok(kube)
}

/// `berth deploy --k8s [SERVICES]`.
pub fn deploy(
    settings: &Settings,
    path: &Path,
    names: &[String],
    version: Option<&str>,
    args: &K8sArgs,
) -> Result<()> {
    let file = DeployFile::load(path)?;
    let config = K8sConfig::load(path)?;
    let services = file.select(names)?;
    // Everything the file says is checked before anything is built or pushed.
    let mut secrets = Vec::new();
    for svc in &services {
        secrets.push(file.secrets_of(svc)?);
    }
    let mut built = Vec::new();
    for svc in &services {
        built.push(crate::deploy::build_service(settings, &file, svc, version)?);
    }
    let store = crate::open_store(settings)?;
    let client = crate::deploy::push_client(settings, &file)?;
    let cluster_registry = config
        .registry
        .clone()
        .unwrap_or_else(|| file.registry.address.clone());
    let creds = berth_deploy::deployer::registry_auth(&file)?.map(|a| PullCredentials {
        registry: cluster_registry.clone(),
        username: a.username,
        password: a.password,
    });
    let progress = |line: &str| eprintln!("{line}");
    runtime()?.block_on(async {
        let kube = connect(settings, &file, &config, args).await?;
        kube.ensure_namespace().await?;
        let identity = berth_kube::pull::ensure(&kube, &config, creds.as_ref()).await?;
        let mut rendered = Vec::new();
        for ((svc, secrets), built) in services.iter().zip(&secrets).zip(built) {
            let pushed =
                crate::deploy::push_unless_pushed(built, &store, &client, &file, svc, version)
                    .await?;
            let image = format!("{cluster_registry}/{}@{}", pushed.repository, pushed.digest);
            if image != pushed.image {
                progress(&format!("the cluster pulls {} as {image}", pushed.local));
            }
            rendered.push(
                render(&RenderInput {
                    service: svc,
                    image: &image,
                    version: &pushed.version,
                    secrets,
                    config: &config,
                    identity: &identity,
                })
                .map_err(|m| anyhow::anyhow!("{}: {m}", file.path.display()))?,
            );
        }
        rollout::apply_all(&kube, &rendered, &progress).await?;
        if args.wait {
            let mut failed = Vec::new();
            for r in &rendered {
                if let Err(e) = rollout::wait(&kube, &r.service, args.timeout, &progress).await {
                    eprintln!("{e}");
                    failed.push(r.service.clone());
                }
            }
            if !failed.is_empty() {
                bail!(
                    "rollout failed for {} (see above; nothing was pruned)",
                    failed.join(", ")
                );
            }
        }
        prune(&kube, &rendered, &progress).await;
        for r in &rendered {
            println!("{}\tdeployed\tnamespace {}", r.service, kube.namespace);
        }
        Ok(())
    })
}

/// After a deploy (its rollouts done, with --wait): each service's ConfigMaps and Secrets
/// that no kept revision names, and `berth-pull` entries of registries nothing in the
/// namespace pulls from (berth_kube::prune has the rules). A failure to prune is told,
/// not fatal: the deploy itself went through.
async fn prune(kube: &Kube, rendered: &[berth_kube::render::Rendered], progress: &dyn Fn(&str)) {
    for r in rendered {
        match berth_kube::prune::prune_service(kube, &r.service).await {
            Ok(gone) => {
                for g in gone {
                    progress(&format!(
                        "{}: deleted {g} (no kept revision names it)",
                        r.service
                    ));
                }
            }
            Err(e) => progress(&format!("{}: warning: pruning failed: {e}", r.service)),
        }
    }
    match berth_kube::prune::prune_pull_secret(kube).await {
        Ok(gone) => {
            for g in gone {
                progress(&format!(
                    "{}: dropped the entry of {g} (nothing in namespace {} pulls from it)",
                    berth_kube::config::PULL_SECRET,
                    kube.namespace
                ));
            }
        }
        Err(e) => progress(&format!(
            "{}: warning: pruning failed: {e}",
            berth_kube::config::PULL_SECRET
        )),
    }
}

/// `berth rollback --k8s [VERSION] [--service S] [--list]`.
pub fn rollback(
    settings: &Settings,
    path: &Path,
    service: Option<&str>,
    version: Option<&str>,
    list: bool,
    args: &K8sArgs,
) -> Result<()> {
    let file = DeployFile::load(path)?;
    let config = K8sConfig::load(path)?;
    let svc = crate::deploy::one_service(&file, service, "--service")?;
    let progress = |line: &str| eprintln!("{line}");
    runtime()?.block_on(async {
        let kube = connect(settings, &file, &config, args).await?;
        let history = rollout::history(&kube, &svc.name).await?;
        if list {
            for (r, _) in &history {
                println!("{}\t{}\t{}", r.number, r.version, r.image);
            }
            return Ok(());
        }
        let to = match version {
            None => None,
            Some(v) => Some(
                history
                    .iter()
                    .find(|(r, _)| r.version == v)
                    .map(|(r, _)| r.number)
                    .with_context(|| {
                        format!(
                            "service {} has no revision of version {v} in namespace {} (versions kept: {})",
                            svc.name,
                            kube.namespace,
                            history
                                .iter()
                                .map(|(r, _)| r.version.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    })?,
            ),
        };
        let rev = rollout::rollback(&kube, &svc.name, to).await?;
        progress(&format!(
            "{}: rolled back to {} (revision {}, {})",
            svc.name, rev.version, rev.number, rev.image
        ));
        if args.wait {
            rollout::wait(&kube, &svc.name, args.timeout, &progress).await?;
        }
        println!("{}\t{}", svc.name, rev.version);
        Ok(())
    })
}

/// Where `berth satellite deploy --k8s` and `berth registry deploy --k8s` apply.
#[derive(Args, Debug)]
pub struct ClusterArgs {
    /// Deploy to Kubernetes (the only target so far).
    #[arg(long, required = true)]
    pub k8s: bool,
    /// The kubeconfig file [default: KUBECONFIG, else ~/.kube/config].
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context [default: the current one].
    #[arg(long)]
    pub context: Option<String>,
    /// The namespace [default: the context's, else "default"].
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    /// Take over fields another field manager owns (server-side apply conflicts).
    #[arg(long)]
    pub force_conflicts: bool,
    /// How long to wait for the controller to make the pods.
    #[arg(long, default_value = "2m", value_parser = crate::parse_duration)]
    pub timeout: Duration,
}

/// Connects to the cluster of `args` with berth's network settings, and says which.
pub async fn connect_cluster(settings: &Settings, args: &ClusterArgs) -> Result<Kube> {
    debug_assert!(args.k8s);
    let kube = Kube::connect(&KubeOptions {
        kubeconfig: args.kubeconfig.clone(),
        context: args.context.clone(),
        namespace: args.namespace.clone(),
        force_conflicts: args.force_conflicts,
        network: settings.network(),
    })
    .await?;
    eprintln!(
        "cluster: Kubernetes {}, namespace {}",
        kube.server.git_version, kube.namespace
    );
    Ok(kube)
}

/// The credentials berth has (`berth login`, Docker's config and its helpers) for the
/// registry of `image`, for the namespace's pull Secret; `None` when it has none.
pub fn pull_credentials_for(image: &str) -> Result<Option<PullCredentials>> {
    let reference: berth_oci::Reference = image
        .parse()
        .map_err(|e| anyhow::anyhow!("--image {image:?}: {e}"))?;
    let registry = reference.registry;
    // An identity token (`<token>`) is not a password a kubelet can send.
    Ok(berth_client::DockerConfig::load()
        .credentials(&registry)
        .filter(|c| c.username != "<token>")
        .map(|c| PullCredentials {
            registry,
            username: c.username,
            password: c.password,
        }))
}

/// Flags of `berth registry manifests` (and `berth registry deploy --k8s`).
#[derive(Args, Debug)]
pub struct RegistryManifestArgs {
    /// The Deployment's, Service's and PodDisruptionBudget's name (the Secret is
    /// `<name>-config`).
    #[arg(long, default_value = "berth-registry")]
    pub name: String,
    /// Replicas of `berth registry serve`.
    #[arg(long, default_value_t = 2)]
    pub replicas: i32,
    /// The image holding the berth binary.
    #[arg(long, default_value = concat!("berth:", env!("CARGO_PKG_VERSION")))]
    pub image: String,
    /// The port of the replicas and the Service.
    #[arg(long, default_value_t = 5000)]
    pub port: u16,
    /// The ServiceAccount the pods run as (it must exist in the namespace).
    #[arg(long, default_value = "default")]
    pub service_account: String,
    /// An image pull secret for the pods (repeatable).
    #[arg(long = "image-pull-secret")]
    pub image_pull_secrets: Vec<String>,
    /// The Kubernetes version the PodDisruptionBudget is for (policy/v1beta1 before
    /// 1.21) [default: 1.21 and newer].
    #[arg(long, value_name = "1.MINOR")]
    pub kube_version: Option<String>,
    /// The replicas serve TLS with this PEM certificate chain (for the names clients use:
    /// the Service's) and --tls-key, carried in the Secret [default: config.toml's
    /// [registry] tls_cert and tls_key, else plain HTTP].
    #[arg(long, value_name = "PATH", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "PATH", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

/// Flags of `berth registry deploy`.
#[derive(Args, Debug)]
pub struct RegistryDeployArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    #[command(flatten)]
    pub manifest: RegistryManifestArgs,
}

fn registry_input(
    settings: &Settings,
    args: &RegistryManifestArgs,
    namespace: Option<String>,
    pdb_api_version: &str,
) -> Result<berth_kube::registry::RegistryInput> {
    Ok(berth_kube::registry::RegistryInput {
        name: args.name.clone(),
        namespace,
        image: args.image.clone(),
        replicas: args.replicas,
        port: args.port,
        files: settings.registry_replica_files(
            berth_kube::registry::POD_CONFIG_DIR,
            berth_kube::registry::CONFIG_KEY,
            args.tls_cert.as_deref().zip(args.tls_key.as_deref()),
            &|k| std::env::var(k).ok(),
        )?,
        identity: berth_kube::pod::PodIdentity {
            service_account: args.service_account.clone(),
            pull_secrets: args.image_pull_secrets.clone(),
        },
        pdb_api_version: pdb_api_version.to_owned(),
    })
}

/// `berth registry manifests`: prints the registry's objects as YAML.
pub fn registry_manifests(
    settings: &Settings,
    args: &RegistryManifestArgs,
    namespace: Option<String>,
) -> Result<()> {
    let minor = match &args.kube_version {
        None => 21,
        Some(v) => v
            .trim_start_matches('v')
            .strip_prefix("1.")
            .and_then(|m| berth_kube::version::parse_minor(m.split('.').next().unwrap_or(m)))
            .with_context(|| format!("--kube-version {v:?}: give 1.MINOR, such as 1.20"))?,
    };
    let pdb = berth_kube::version::api_version_for("PodDisruptionBudget", minor)
        .with_context(|| format!("--kube-version 1.{minor}: no PodDisruptionBudget API known"))?;
    let input = registry_input(settings, args, namespace, pdb)?;
    print!(
        "{}",
        berth_kube::registry::manifests(&input).map_err(anyhow::Error::msg)?
    );
    Ok(())
}

/// `berth registry deploy --k8s`: applies the registry's objects and waits for its pods.
pub fn registry_deploy(settings: &Settings, args: &RegistryDeployArgs) -> Result<()> {
    let input = registry_input(settings, &args.manifest, None, "policy/v1")?;
    let creds = pull_credentials_for(&input.image)?;
    runtime()?.block_on(async {
        let kube = connect_cluster(settings, &args.cluster).await?;
        let pods =
            berth_kube::registry::deploy(&kube, &input, creds.as_ref(), args.cluster.timeout)
                .await?;
        for p in &pods {
            let spec = p.spec.clone().unwrap_or_default();
            println!(
                "registry {}: pod {} as {} with pull secrets {}",
                input.name,
                p.metadata.name.as_deref().unwrap_or_default(),
                spec.service_account_name.unwrap_or_default(),
                spec.image_pull_secrets
                    .unwrap_or_default()
                    .into_iter()
                    .map(|r| r.name)
                    .collect::<Vec<_>>()
                    .join(",")
            );
        }
        Ok(())
    })
}
