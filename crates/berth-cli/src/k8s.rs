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

async fn connect(file: &DeployFile, config: &K8sConfig, args: &K8sArgs) -> Result<Kube> {
    let kube = Kube::connect(&KubeOptions {
        kubeconfig: config.kubeconfig.as_deref().map(|p| beside(&file.path, p)),
        context: args.context.clone().or_else(|| config.context.clone()),
        namespace: args.namespace.clone().or_else(|| config.namespace.clone()),
        force_conflicts: args.force_conflicts,
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
    for svc in &services {
        crate::deploy::build_service(settings, &file, svc, version)?;
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
        let kube = connect(&file, &config, args).await?;
        kube.ensure_namespace().await?;
        let identity = berth_kube::pull::ensure(&kube, &config, creds.as_ref()).await?;
        let mut rendered = Vec::new();
        for (svc, secrets) in services.iter().zip(&secrets) {
            let pushed = crate::deploy::push_service(&store, &client, &file, svc, version).await?;
            let image = format!("{cluster_registry}/{}@{}", pushed.repository, pushed.digest);
            progress(&format!("pushed {} as {image}", pushed.local));
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
                bail!("rollout failed for {} (see above)", failed.join(", "));
            }
        }
        for r in &rendered {
            println!("{}\tdeployed\tnamespace {}", r.service, kube.namespace);
        }
        Ok(())
    })
}

/// `berth rollback --k8s [VERSION] [--service S] [--list]`.
pub fn rollback(
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
        let kube = connect(&file, &config, args).await?;
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
