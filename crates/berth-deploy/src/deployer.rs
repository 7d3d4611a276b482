//! The deploying machine's run: a service's hosts in batches, each host's agent asked to
//! deploy (or roll back) and its report kept. The image is pushed before (by the caller,
//! which owns the store); here it is a pinned reference the hosts pull.

use std::time::Duration;

use crate::api::{DeployReport, DeployRequest, RegistryAuth, Release};
use crate::client::{AgentClient, Hosts};
use crate::config::{DeployFile, Service};
use crate::error::DeployError;

/// What one host did with one service.
#[derive(Debug)]
pub struct HostResult {
    /// The host's name.
    pub host: String,
    /// The service.
    pub service: String,
    /// The agent's report, or why there was none.
    pub report: Result<DeployReport, DeployError>,
}

impl HostResult {
    /// The deploy failed on this host (no report, or a report with an error).
    pub fn failed(&self) -> bool {
        self.report.as_ref().map_or(true, |r| r.error.is_some())
    }
}

/// A version of a service to put on its hosts.
#[derive(Debug, Clone)]
pub struct Planned {
    /// The service (from the deploy file, or from a host's history for a rollback).
    pub service: Service,
    /// The pinned image (`registry/repository@sha256:…`).
    pub image: String,
    /// The version's name.
    pub version: String,
}

/// The registry credentials of the deploy file, read now (`None`: anonymous).
pub fn registry_auth(file: &DeployFile) -> Result<Option<RegistryAuth>, DeployError> {
    let r = &file.registry;
    match (&r.username, &r.password) {
        (Some(u), Some(p)) => Ok(Some(RegistryAuth {
            server: r.address.clone(),
            username: u.clone(),
            password: file.read_secret("deploy.registry", p)?,
        })),
        _ => Ok(None),
    }
}

/// The hosts of a service, each with its agent's client or why there is none: SSH hosts
/// are logged in to (and their agent container started) here, so this can run while the
/// image is pushed.
pub struct Connected {
    names: Vec<String>,
    clients: Vec<Option<Result<AgentClient, DeployError>>>,
}

/// Connects to `service`'s hosts ([`Connected`]). Every enrolled host must be known
/// before any is touched; an SSH host that cannot be reached fails alone.
pub async fn connect_hosts(
    file: &DeployFile,
    hosts: &Hosts,
    service: &Service,
) -> Result<Connected, DeployError> {
    let names = file.hosts_of(service);
    for n in &names {
        if !file.ssh_hosts.contains_key(n) {
            hosts.get(n)?;
        }
    }
    let clients = futures_util::future::join_all(names.iter().map(|n| connect(file, hosts, n)))
        .await
        .into_iter()
        .map(Some)
        .collect();
    Ok(Connected { names, clients })
}

/// Deploys `plan` to the service's hosts, batch after batch (`[deploy.batch]`); a host
/// that fails does not stop the others. `progress` gets a line per host and step.
pub async fn deploy(
    file: &DeployFile,
    hosts: &Hosts,
    plan: &Planned,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<Vec<HostResult>, DeployError> {
    let connected = connect_hosts(file, hosts, &plan.service).await?;
    deploy_connected(file, connected, plan, progress).await
}

/// [`deploy`] to hosts connected before ([`connect_hosts`] of `plan`'s service).
pub async fn deploy_connected(
    file: &DeployFile,
    connected: Connected,
    plan: &Planned,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<Vec<HostResult>, DeployError> {
    let req = DeployRequest {
        service: plan.service.clone(),
        image: plan.image.clone(),
        version: plan.version.clone(),
        secrets: file.secrets_of(&plan.service)?,
        registry_auth: registry_auth(file)?,
        history: file.history,
    };
    let Connected { names, mut clients } = connected;
    let mut out = Vec::new();
    let order: Vec<usize> = (0..names.len()).collect();
    let batches = file.batch.split(&order);
    let n = batches.len();
    for (i, batch) in batches.into_iter().enumerate() {
        let runs = batch.iter().map(|&h| {
            let req = &req;
            let name = names[h].clone();
            let client = clients[h].take().expect("each host once").and_then(|c| {
                external_on_ssh(file, &name, &req.service)?;
                Ok(c)
            });
            async move {
                let report = match client {
                    Ok(c) => {
                        progress(&format!(
                            "{name}: deploying {} {}",
                            req.service.name, req.version
                        ));
                        c.deploy(req).await
                    }
                    Err(e) => Err(e),
                };
                HostResult {
                    host: name,
                    service: req.service.name.clone(),
                    report,
                }
            }
        });
        for r in futures_util::future::join_all(runs).await {
            match &r.report {
                Ok(rep) => {
                    for s in &rep.steps {
                        progress(&format!("{}: {s}", r.host));
                    }
                }
                Err(e) => progress(&format!("{}: {e}", r.host)),
            }
            out.push(r);
        }
        if i + 1 < n && file.batch.wait > Duration::ZERO {
            progress(&format!(
                "waiting {:?} before the next batch",
                file.batch.wait
            ));
            tokio::time::sleep(file.batch.wait).await;
        }
    }
    Ok(out)
}

/// An SSH host's agent runs in a container of its own: it can neither write a file of
/// the host nor run the host's reload command, so a host's own proxy must be named by
/// its container there.
fn external_on_ssh(file: &DeployFile, host: &str, service: &Service) -> Result<(), DeployError> {
    match &service.proxy {
        Some(p) if p.container.is_none() && file.ssh_hosts.contains_key(host) => {
            Err(DeployError::Config {
                file: file.path.display().to_string(),
                key: format!("deploy.services.{}.proxy.external", service.name),
                message: format!(
                    "host {host} is driven over SSH, where berth's agent runs in a container: \
                     name the proxy's container (container = \"…\"), or install the agent \
                     on the host (`berth agent serve`)"
                ),
            })
        }
        _ => Ok(()),
    }
}

/// A client of host `name`'s agent: an SSH host of the file (logged in to now, its agent
/// container started if needed), else an enrolled one.
pub async fn connect(
    file: &DeployFile,
    hosts: &Hosts,
    name: &str,
) -> Result<AgentClient, DeployError> {
    match file.ssh_hosts.get(name) {
        Some(h) => crate::ssh::connect(name, h).await,
        None => hosts.connect(name),
    }
}

/// The history of `service` on each of its hosts.
pub async fn history(
    file: &DeployFile,
    hosts: &Hosts,
    service: &Service,
) -> Vec<(String, Result<Vec<Release>, DeployError>)> {
    let mut out = Vec::new();
    for name in file.hosts_of(service) {
        let h = match connect(file, hosts, &name).await {
            Ok(c) => c.history(&service.name).await,
            Err(e) => Err(e),
        };
        out.push((name, h));
    }
    out
}

/// Chooses what a rollback puts back from one host's history (newest first): `version`,
/// or the one before the serving one.
pub fn pick_release<'a>(
    history: &'a [Release],
    version: Option<&str>,
) -> Result<&'a Release, String> {
    match version {
        Some(v) => history.iter().find(|r| r.version == v).ok_or_else(|| {
            format!(
                "version {v} is not in its history (it has {})",
                history
                    .iter()
                    .map(|r| r.version.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }),
        None => history
            .get(1)
            .ok_or_else(|| "no previous version in its history to go back to".to_owned()),
    }
}

/// Rolls `service` back on each of its hosts to `version` (default: the previous one in
/// that host's history): the same health-gated switch, with no build and no push.
/// Secrets are read again from this machine (hosts keep none).
pub async fn rollback(
    file: &DeployFile,
    hosts: &Hosts,
    service: &Service,
    version: Option<&str>,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<Vec<HostResult>, DeployError> {
    let mut out = Vec::new();
    for (host, h) in history(file, hosts, service).await {
        let release = h.and_then(|h| {
            pick_release(&h, version)
                .cloned()
                .map_err(|m| DeployError::BadRequest(format!("host {host}: {m}")))
        });
        // An SSH host that cannot be reached fails alone; an unknown host stops all.
        let ready = match release {
            Ok(r) => match connect(file, hosts, &host).await {
                Ok(c) => Ok((r, c)),
                Err(e) if file.ssh_hosts.contains_key(&host) => Err(e),
                Err(e) => return Err(e),
            },
            Err(e) => Err(e),
        };
        let ready = ready.and_then(|(r, c)| {
            external_on_ssh(file, &host, &r.service)?;
            Ok((r, c))
        });
        let (release, client) = match ready {
            Ok(x) => x,
            Err(e) => {
                progress(&format!("{host}: {e}"));
                out.push(HostResult {
                    host,
                    service: service.name.clone(),
                    report: Err(e),
                });
                continue;
            }
        };
        progress(&format!(
            "{host}: rolling {} back to {}",
            service.name, release.version
        ));
        let req = DeployRequest {
            secrets: file.secrets_of(&release.service)?,
            service: release.service,
            image: release.image,
            version: release.version,
            registry_auth: registry_auth(file)?,
            history: file.history,
        };
        let report = client.deploy(&req).await;
        if let Ok(rep) = &report {
            for s in &rep.steps {
                progress(&format!("{host}: {s}"));
            }
        }
        out.push(HostResult {
            host,
            service: service.name.clone(),
            report,
        });
    }
    Ok(out)
}
