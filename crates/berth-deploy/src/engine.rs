//! The host side of a deploy: the host's dockerd (bollard), the proxy switch and the
//! history. One deploy of a service on a host:
//!
//! 1. pull the pinned image (credentials go with this pull only);
//! 2. create and start the new containers (`replicas` of them) beside the old ones (no
//!    port published: the proxy reaches them on their bridge addresses);
//! 3. run the health check of each until it passes, or give up after `retries`: then
//!    every new container is removed, and the error has the failing one's last log lines
//!    and the check's last output; the old ones serve on;
//! 4. switch the proxy's ports to them (requests go to the replicas in turn); let
//!    requests and upgraded connections in flight to the old ones finish (at most
//!    `stop_timeout`, then the connections still open are closed);
//! 5. record the version in the history (the last N, newest first);
//! 6. report, then stop and remove the old containers (still under the lock: a deploy
//!    of the service arriving meanwhile waits for the end instead of being refused; a
//!    failed removal is logged, kept in `leftovers.json`, shown by `ps` and tried again
//!    by the next deploy).
//!
//! The whole deploy holds the service's lock ([`crate::lock`], the agent's `lock.json`).
//! A lock left by a deploy whose agent process died is stale: the next deploy of the
//! service, or the agent's next start, drops it and removes the containers of the
//! service that do not serve (what the dead deploy had started).
//!
//! Under the agent's `services/<name>/`: `history.json` ([`Release`]s; no secret values),
//! `current.json` (the serving containers), read again at start to restore the proxy,
//! and `leftovers.json` (old containers whose removal failed).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use bollard::Docker;
use bollard::auth::DockerCredentials;
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::{ContainerCreateBody, HostConfig, RestartPolicy, RestartPolicyNameEnum};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, ListContainersOptions, LogsOptions,
    RemoveContainerOptions, StopContainerOptions,
};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::api::{DeployReport, DeployRequest, ExecResult, Release, ServiceState};
use crate::config::{Check, ExternalProxy, Health, Service};
use crate::error::DeployError;
use crate::lock::{Acquired, Held, Holder, Locks};
use crate::proxy::{Proxies, Target};

/// Times the steps of one deploy, in the agent's log (`deploy step`, at debug; the whole
/// deploy at info), so that a slow deploy says where its time went.
struct Clock {
    service: String,
    version: String,
    start: std::time::Instant,
    lap: std::time::Instant,
}

impl Clock {
    fn new(service: &str, version: &str) -> Clock {
        let now = std::time::Instant::now();
        Clock {
            service: service.to_owned(),
            version: version.to_owned(),
            start: now,
            lap: now,
        }
    }

    fn lap(&mut self, step: &str) {
        let now = std::time::Instant::now();
        tracing::debug!(
            service = %self.service,
            version = %self.version,
            step,
            ms = now.duration_since(self.lap).as_millis() as u64,
            "deploy step"
        );
        self.lap = now;
    }
}

impl Drop for Clock {
    fn drop(&mut self) {
        tracing::info!(
            service = %self.service,
            version = %self.version,
            ms = self.start.elapsed().as_millis() as u64,
            "deploy steps took"
        );
    }
}

/// The first pause between the quick health checks of a container just started.
const QUICK_CHECKS: std::time::Duration = std::time::Duration::from_millis(10);

/// Log lines of a failed container shown in the error.
const LOG_LINES: &str = "20";

/// What one health check found.
enum Probe {
    /// It passed; the container's address, if it has one.
    Passed(Option<IpAddr>),
    /// What the check said.
    Failed(String),
}

/// The address of an inspected container on its (first) network.
fn ip_of(info: &bollard::models::ContainerInspectResponse) -> Option<IpAddr> {
    info.network_settings
        .as_ref()
        .and_then(|n| n.networks.as_ref())
        .into_iter()
        .flat_map(|m| m.values())
        .filter_map(|e| e.ip_address.as_deref())
        .find_map(|ip| ip.parse().ok())
}

/// The serving containers of a service.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Current {
    /// The first replica (the only container before replicas).
    container: String,
    /// Every replica (empty in files written before replicas: `container` alone).
    #[serde(default)]
    containers: Vec<String>,
    version: String,
    ports: Vec<crate::config::Port>,
}

impl Current {
    fn all(&self) -> Vec<String> {
        if self.containers.is_empty() {
            vec![self.container.clone()]
        } else {
            self.containers.clone()
        }
    }
}

/// Drives one host's dockerd and proxy.
pub struct Engine {
    docker: Docker,
    dir: PathBuf,
    proxies: Proxies,
    /// The agent's name, for messages about this host.
    host: String,
    locks: Locks,
    /// The removals of old containers running after a deploy's report, by service.
    removals: std::sync::Mutex<HashMap<String, Running>>,
}

/// A removal of old containers after a deploy's report (see [`Engine::deploy`]).
struct Running {
    containers: Vec<String>,
    /// Closed when the removal ends, after the service's lock is released.
    done: tokio::sync::watch::Receiver<()>,
}

/// Holds the service's lock while its old containers are removed; on drop releases the
/// lock, then wakes the deploys waiting for it.
struct Removal<'a> {
    engine: &'a Engine,
    service: String,
    held: Option<Held<'a>>,
    _done: tokio::sync::watch::Sender<()>,
}

impl Drop for Removal<'_> {
    fn drop(&mut self) {
        drop(self.held.take());
        self.engine
            .removals
            .lock()
            .expect("removals")
            .remove(&self.service);
        // `_done` drops after this: the waiters wake.
    }
}

/// The service's file of old containers whose removal failed ([`Leftover`]s).
const LEFTOVERS: &str = "leftovers.json";

/// An old container whose removal after a deploy failed.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Leftover {
    container: String,
    /// dockerd's error.
    error: String,
    since_unix: u64,
}

fn derr(what: &str) -> impl FnOnce(bollard::errors::Error) -> DeployError + '_ {
    move |e| DeployError::Docker(format!("{what}: {}", docker_message(&e)))
}

pub(crate) fn docker_message(e: &bollard::errors::Error) -> String {
    match e {
        bollard::errors::Error::DockerResponseServerError { message, .. } => message.clone(),
        bollard::errors::Error::DockerStreamError { error } => error.clone(),
        e => e.to_string(),
    }
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), DeployError> {
    let dir = path.parent().expect("a file in a directory");
    std::fs::create_dir_all(dir).map_err(DeployError::io("create", dir))?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(value).expect("serialises"))
        .map_err(DeployError::io("write", &tmp))?;
    std::fs::rename(&tmp, path).map_err(DeployError::io("rename", path))
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>, DeployError> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| DeployError::Internal(format!("{} is damaged: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(DeployError::io("read", path)(e)),
    }
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Engine {
    /// An engine of host `host` keeping its state in `dir`, on the dockerd of
    /// `DOCKER_HOST`.
    pub async fn new(dir: &Path, host: &str) -> Result<Engine, DeployError> {
        let docker = berth_docker::connect()
            .await
            .map_err(|e| DeployError::Docker(e.to_string()))?;
        Ok(Engine {
            docker,
            dir: dir.to_path_buf(),
            proxies: Proxies::default(),
            host: host.to_owned(),
            locks: Locks::new(dir),
            removals: std::sync::Mutex::default(),
        })
    }

    /// The daemon's version.
    pub async fn docker_version(&self) -> Result<String, DeployError> {
        let v = self
            .docker
            .version()
            .await
            .map_err(derr("docker version"))?;
        Ok(v.version.unwrap_or_default())
    }

    fn service_dir(&self, service: &str) -> PathBuf {
        self.dir.join("services").join(service)
    }

    /// The versions of `service` this host ran, newest (the serving one) first.
    pub fn history(&self, service: &str) -> Result<Vec<Release>, DeployError> {
        check_service_name(service)?;
        Ok(read_json(&self.service_dir(service).join("history.json"))?.unwrap_or_default())
    }

    /// Points the proxy at every service's serving containers again (after a restart of
    /// the agent; containers restart with dockerd and may have new addresses), and
    /// cleans after deploys that died with an earlier agent process (stale locks).
    pub async fn restore(&self) {
        match self.locks.take_stale() {
            Ok(stale) => {
                for (service, h) in stale {
                    self.clean_stale(&service, &h).await;
                }
            }
            Err(e) => tracing::error!(error = %e, "deploy locks not read"),
        }
        let Ok(rd) = std::fs::read_dir(self.dir.join("services")) else {
            return;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let cur: Option<Current> = read_json(&e.path().join("current.json")).ok().flatten();
            let Some(cur) = cur else { continue };
            let external = self
                .history(&name)
                .ok()
                .and_then(|h| h.into_iter().find(|r| r.version == cur.version))
                .and_then(|r| r.service.proxy);
            match self.addresses(&cur.all()).await {
                Ok(ips) if external.is_some() => {
                    let ext = external.as_ref().expect("checked");
                    match self.hand_over(ext, &name, &cur.version, &ips).await {
                        Ok(()) => {
                            tracing::info!(service = %name, file = %ext.upstream_file, "host's proxy handed the serving containers")
                        }
                        Err(e) => {
                            tracing::error!(service = %name, error = %e, "host's proxy not updated")
                        }
                    }
                }
                Ok(ips) => {
                    for p in &cur.ports {
                        let t = Target::pool(
                            ips.iter()
                                .map(|ip| SocketAddr::new(*ip, p.container))
                                .collect(),
                        );
                        if let Err(e) = self.proxies.switch(p.host, t).await {
                            tracing::error!(service = %name, error = %e, "proxy not restored");
                        }
                    }
                    tracing::info!(service = %name, version = %cur.version, "proxy restored");
                }
                Err(e) => tracing::error!(service = %name, error = %e, "serving container lost"),
            }
        }
    }

    async fn addresses(&self, containers: &[String]) -> Result<Vec<IpAddr>, DeployError> {
        let mut out = Vec::new();
        for c in containers {
            out.push(self.address(c).await?);
        }
        Ok(out)
    }

    /// Removes what a deploy that died with its agent process left: the containers of
    /// `service` that do not serve. Runs under the service's lock (or before the agent
    /// serves), so no other deploy of it is starting containers.
    async fn clean_stale(&self, service: &str, h: &Holder) {
        tracing::warn!(
            service,
            client = %h.client,
            version = %h.version,
            since = %berth_pki::format_utc(std::time::UNIX_EPOCH + std::time::Duration::from_secs(h.since_unix)),
            pid = h.agent.pid,
            "dropping the lock of a deploy whose agent process is gone"
        );
        let serving = self.current(service).map(|c| c.all()).unwrap_or_default();
        let opts = ListContainersOptions {
            all: true,
            filters: Some(HashMap::from([(
                "label".to_owned(),
                vec![format!("berth.service={service}")],
            )])),
            ..Default::default()
        };
        let list = match self.docker.list_containers(Some(opts)).await {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(service, error = %docker_message(&e), "containers not listed");
                return;
            }
        };
        for c in list {
            let Some(name) = c
                .names
                .and_then(|n| n.into_iter().next())
                .map(|n| n.trim_start_matches('/').to_owned())
            else {
                continue;
            };
            if !serving.contains(&name) {
                tracing::warn!(service, container = %name, "removing a container of the dead deploy");
                let rm = RemoveContainerOptions {
                    force: true,
                    ..Default::default()
                };
                if let Err(e) = self.docker.remove_container(&name, Some(rm)).await {
                    tracing::warn!(container = %name, error = %docker_message(&e), "remove failed");
                }
            }
        }
    }

    async fn address(&self, container: &str) -> Result<IpAddr, DeployError> {
        let info = self
            .docker
            .inspect_container(container, None)
            .await
            .map_err(derr(&format!("inspect container {container}")))?;
        ip_of(&info).ok_or_else(|| {
            DeployError::Docker(format!(
                "container {container} has no network address (is it running?)"
            ))
        })
    }

    /// Runs one deploy for `client` (see the module's steps) and sends its report to
    /// `reply`. A failure leaves the previous version serving; the report says what
    /// happened either way. A second deploy of the same service while one runs is
    /// refused, naming who holds it.
    ///
    /// The old containers are stopped and removed after the report is sent (traffic is
    /// switched and drained by then), still under the service's lock: a deploy of the
    /// service that arrives meanwhile waits for the removal to end instead of being
    /// refused, and `ps` shows the containers being removed. A removal that fails is
    /// logged and kept in `leftovers.json`: `ps` shows it while the container exists,
    /// and the next deploy of the service tries again.
    pub async fn deploy(
        &self,
        req: DeployRequest,
        client: &str,
        reply: tokio::sync::oneshot::Sender<DeployReport>,
    ) {
        let mut steps = Vec::new();
        if let Err(e) = check_service_name(&req.service.name) {
            let _ = reply.send(DeployReport {
                serving: None,
                steps,
                error: Some(e.to_string()),
            });
            return;
        }
        let svc = &req.service;
        let held = loop {
            self.wait_removal(&svc.name, &mut steps).await;
            match self.locks.acquire(&svc.name, client, &req.version) {
                Ok(Acquired::Busy(_)) if self.is_removing(&svc.name) => continue,
                other => break other,
            }
        };
        let result = match held {
            Ok(Acquired::Taken { held, stale }) => {
                if let Some(h) = stale {
                    self.clean_stale(&svc.name, &h).await;
                    steps.push(format!(
                        "dropped the stale lock of {}'s deploy of {} (its agent process is gone) \
                         and removed its containers",
                        h.client, h.version
                    ));
                }
                let mut clock = Clock::new(&svc.name, &req.version);
                match self.deploy_locked(&req, &mut steps, &mut clock).await {
                    Ok(old) => {
                        let old = self.with_leftovers(&svc.name, old);
                        if old.is_empty() {
                            drop(held);
                            Ok(())
                        } else {
                            for c in &old {
                                steps
                                    .push(format!("stopping and removing {c} (after this report)"));
                            }
                            let removal = self.begin_removal(&svc.name, &old, held);
                            let _ = reply.send(self.report(&svc.name, steps, Ok(())));
                            self.remove_late(svc, &old).await;
                            clock.lap("stop and remove (after the report)");
                            drop(removal);
                            return;
                        }
                    }
                    Err(e) => {
                        drop(held);
                        Err(e)
                    }
                }
            }
            Ok(Acquired::Busy(h)) => {
                let process = if h.agent.pid == std::process::id() {
                    String::new()
                } else {
                    format!(", in agent process {}", h.agent.pid)
                };
                Err(DeployError::BadRequest(format!(
                    "another deploy of service {} is running on host {} (locked since {} by \
                     client {}, version {}{process}); wait for it to end",
                    svc.name,
                    self.host,
                    berth_pki::format_utc(
                        std::time::UNIX_EPOCH + std::time::Duration::from_secs(h.since_unix)
                    ),
                    h.client,
                    h.version,
                )))
            }
            Err(e) => Err(e),
        };
        let _ = reply.send(self.report(&svc.name, steps, result));
    }

    /// The report of a deploy of `service` that ended with `result`.
    fn report(
        &self,
        service: &str,
        steps: Vec<String>,
        result: Result<(), DeployError>,
    ) -> DeployReport {
        let current: Option<Current> = read_json(&self.service_dir(service).join("current.json"))
            .ok()
            .flatten();
        DeployReport {
            serving: current.map(|c| c.version),
            steps,
            error: result.err().map(|e| e.to_string()),
        }
    }

    /// Whether old containers of `service` are being removed after a deploy's report.
    fn is_removing(&self, service: &str) -> bool {
        self.removals
            .lock()
            .expect("removals")
            .contains_key(service)
    }

    /// Waits until the removal of old containers of `service` after a deploy's report
    /// (if one runs) ends, and says so in `steps`.
    async fn wait_removal(&self, service: &str, steps: &mut Vec<String>) {
        let running = self
            .removals
            .lock()
            .expect("removals")
            .get(service)
            .map(|r| (r.containers.clone(), r.done.clone()));
        let Some((containers, mut done)) = running else {
            return;
        };
        tracing::info!(
            service,
            containers = %containers.join(", "),
            "deploy waits for the removal of the previous version's containers"
        );
        // Err once the sender is gone: the removal ended and its lock is released.
        while done.changed().await.is_ok() {}
        steps.push(format!(
            "waited for the removal of {} (the previous deploy's old containers)",
            containers.join(", ")
        ));
    }

    /// Registers the removal of `containers` of `service`, which keeps `held` (the
    /// service's lock) until the returned guard drops.
    fn begin_removal<'a>(
        &'a self,
        service: &str,
        containers: &[String],
        held: Held<'a>,
    ) -> Removal<'a> {
        let (tx, rx) = tokio::sync::watch::channel(());
        self.removals.lock().expect("removals").insert(
            service.to_owned(),
            Running {
                containers: containers.to_vec(),
                done: rx,
            },
        );
        Removal {
            engine: self,
            service: service.to_owned(),
            held: Some(held),
            _done: tx,
        }
    }

    /// `old` and the containers of `service` whose removal failed before (and that
    /// still exist: the next removal tries them again).
    fn with_leftovers(&self, service: &str, mut old: Vec<String>) -> Vec<String> {
        let path = self.service_dir(service).join(LEFTOVERS);
        let before: Vec<Leftover> = read_json(&path).ok().flatten().unwrap_or_default();
        for l in before {
            if !old.contains(&l.container) {
                old.push(l.container);
            }
        }
        old
    }

    /// Stops and removes `old` (containers of `svc` that no longer serve). Failures are
    /// logged and written to the service's `leftovers.json` (for `ps`); the file holds
    /// exactly this removal's failures afterwards.
    async fn remove_late(&self, svc: &Service, old: &[String]) {
        let mut failed = Vec::new();
        for c in old {
            if let Err(e) = self.remove(c, svc).await {
                tracing::error!(
                    service = %svc.name,
                    container = %c,
                    error = %e,
                    "old container not removed after the deploy; `berth deploy ps` shows it"
                );
                failed.push(Leftover {
                    container: c.clone(),
                    error: e,
                    since_unix: unix_now(),
                });
            }
        }
        let path = self.service_dir(&svc.name).join(LEFTOVERS);
        let saved = if failed.is_empty() {
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(DeployError::io("remove", &path)(e))
                }
                _ => Ok(()),
            }
        } else {
            write_json(&path, &failed)
        };
        if let Err(e) = saved {
            tracing::error!(service = %svc.name, error = %e, "leftover containers not recorded");
        }
    }

    /// Steps 1 to 4 of the module's up to the drain: the old containers to stop and
    /// remove.
    async fn deploy_locked(
        &self,
        req: &DeployRequest,
        steps: &mut Vec<String>,
        clock: &mut Clock,
    ) -> Result<Vec<String>, DeployError> {
        let svc = &req.service;
        // The bridge's MAC only has to be pinned before a container starts.
        let ((), pulled) = tokio::join!(self.pin_bridge(steps), self.pull(req));
        pulled?;
        clock.lap("pull");
        steps.push(format!("pulled {}", req.image));
        let base = container_name(&svc.name, &req.version);
        let n = svc.replicas.max(1);
        let names: Vec<String> = if n == 1 {
            vec![base]
        } else {
            (1..=n).map(|i| format!("{base}-{i}")).collect()
        };
        // The replicas side by side: dockerd starts them in parallel.
        let created =
            futures_util::future::join_all(names.iter().map(|name| self.create(req, name))).await;
        if created.iter().any(Result::is_err) {
            let mut first = None;
            for (name, c) in names.iter().zip(created) {
                match c {
                    Ok(_) => self.discard(name, svc).await,
                    Err(e) => {
                        first.get_or_insert(e);
                    }
                }
            }
            return Err(first.expect("an error"));
        }
        let ids: Vec<String> = created.into_iter().map(Result::unwrap).collect();
        for name in &names {
            steps.push(format!("started container {name}"));
        }
        clock.lap("create and start");
        let checks = futures_util::future::join_all(
            names
                .iter()
                .map(|name| self.wait_healthy(name, &svc.health)),
        )
        .await;
        if let Some((i, e)) = checks
            .iter()
            .enumerate()
            .find_map(|(i, r)| r.as_ref().err().map(|e| (i, e)))
        {
            let name = &names[i];
            let logs = self.last_logs(name).await;
            for c in &names {
                self.discard(c, svc).await;
            }
            steps.push(format!(
                "removed unhealthy version's containers {}",
                names.join(", ")
            ));
            let which = if n == 1 {
                String::new()
            } else {
                format!(" (replica {} of {n}, {name})", i + 1)
            };
            return Err(DeployError::Unhealthy(format!(
                "version {} of {} did not become healthy{which}: {e}\nits last log lines:\n{logs}\
                 the previous version keeps serving",
                req.version, svc.name
            )));
        }
        clock.lap("health");
        steps.push(format!("{} healthy", names.join(", ")));
        let seen: Option<Vec<IpAddr>> = checks.into_iter().map(|r| r.ok().flatten()).collect();
        let ips = match seen {
            Some(ips) => ips,
            None => self.addresses(&ids).await?,
        };
        let mut old_targets = Vec::new();
        if let Some(ext) = &svc.proxy {
            if let Err(e) = self.hand_over(ext, &svc.name, &req.version, &ips).await {
                for c in &names {
                    self.discard(c, svc).await;
                }
                steps.push(format!(
                    "removed the new containers {} (the proxy was not switched)",
                    names.join(", ")
                ));
                return Err(e);
            }
            // A service that berth's proxy served before: its listeners stop now (the
            // host's proxy may want the ports), and their requests drain as usual.
            let before: Option<Current> =
                read_json(&self.service_dir(&svc.name).join("current.json"))?;
            for p in before.map(|c| c.ports).unwrap_or_default() {
                if let Some(t) = self.proxies.stop(p.host) {
                    steps.push(format!(
                        "berth's proxy stopped listening on port {}",
                        p.host
                    ));
                    old_targets.push(t);
                }
            }
            steps.push(format!(
                "{} now names {} for the host's proxy{}",
                ext.upstream_file,
                names.join(", "),
                ext.reload
                    .as_ref()
                    .map_or(String::new(), |r| format!(", reloaded ({})", r.join(" ")))
            ));
        }
        for p in svc.ports.iter().filter(|_| svc.proxy.is_none()) {
            let target = Target::pool(
                ips.iter()
                    .map(|ip| SocketAddr::new(*ip, p.container))
                    .collect(),
            );
            match self.proxies.switch(p.host, target).await {
                Ok(old) => old_targets.extend(old),
                Err(e) => {
                    for c in &names {
                        self.discard(c, svc).await;
                    }
                    return Err(e);
                }
            }
            steps.push(format!("port {} now goes to {}", p.host, names.join(", ")));
        }
        clock.lap("switch");
        let dir = self.service_dir(&svc.name);
        let previous: Option<Current> = read_json(&dir.join("current.json"))?;
        write_json(
            &dir.join("current.json"),
            &Current {
                container: names[0].clone(),
                containers: names.clone(),
                version: req.version.clone(),
                ports: svc.ports.clone(),
            },
        )?;
        let mut history = self.history(&svc.name)?;
        history.insert(
            0,
            Release {
                version: req.version.clone(),
                image: req.image.clone(),
                deployed_unix: unix_now(),
                service: svc.clone(),
            },
        );
        history.truncate(req.history.max(1));
        write_json(&dir.join("history.json"), &history)?;
        if let Some(ext) = &svc.proxy
            && previous.is_some()
        {
            tokio::time::sleep(ext.drain).await;
            steps.push(format!(
                "waited {:?} for the proxy's requests to the old containers",
                ext.drain
            ));
        }
        clock.lap("history");
        for t in old_targets {
            if !t.drained(svc.stop_timeout).await {
                steps.push(format!(
                    "{} requests to the old containers still ran after {:?} ({} of them \
                     upgraded connections, now closed)",
                    t.inflight(),
                    svc.stop_timeout,
                    t.upgraded()
                ));
                t.close();
            }
        }
        clock.lap("drain");
        Ok(previous
            .map(|p| p.all())
            .unwrap_or_default()
            .into_iter()
            .filter(|c| !names.contains(c))
            .collect())
    }

    /// Pins the MAC of the bridge of dockerd's default network (where berth starts
    /// containers), in case it has none of its own ([`crate::bridge`]); warns in `steps`
    /// when it cannot.
    async fn pin_bridge(&self, steps: &mut Vec<String>) {
        let net = match self.docker.inspect_network("bridge", None).await {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!(error = %docker_message(&e), "no default bridge network");
                return;
            }
        };
        let Some(name) = net
            .options
            .and_then(|o| o.get("com.docker.network.bridge.name").cloned())
        else {
            return;
        };
        match crate::bridge::pin_mac(&name) {
            Ok(mac) => tracing::debug!(bridge = %name, %mac, "bridge MAC pinned"),
            Err(e) => {
                tracing::warn!(bridge = %name, error = %e, "bridge MAC not pinned");
                steps.push(format!(
                    "warning: berth could not pin the MAC of bridge {name} ({e}): if it has \
                     none of its own, containers may lose their answers for seconds when \
                     another goes; `ip link set {name} address …` fixes it"
                ));
            }
        }
    }

    /// Hands the replicas at `ips` to the host's own proxy: writes its upstream file and
    /// reloads it. When the reload fails the file's old text is put back (the proxy
    /// still runs on it) and the error has the command's output.
    async fn hand_over(
        &self,
        ext: &ExternalProxy,
        service: &str,
        version: &str,
        ips: &[IpAddr],
    ) -> Result<(), DeployError> {
        let text = ext.render(service, version, ips);
        let file = Path::new(&ext.upstream_file);
        let previous = self.read_upstream(ext).await?;
        self.write_upstream(ext, text.as_bytes()).await?;
        let Some(cmd) = &ext.reload else {
            return Ok(());
        };
        let (code, out) = match &ext.container {
            Some(c) => self.run_exec(c, cmd).await.map_err(|e| {
                DeployError::Docker(format!("reload of the proxy in container {c}: {e}"))
            }),
            None => run_local(cmd).await,
        }
        .map(|(code, out)| (Some(code), out))
        .or_else(|e| Ok::<_, DeployError>((None, e.to_string())))?;
        if code == Some(0) {
            return Ok(());
        }
        let restored = match &previous {
            Some(old) => self.write_upstream(ext, old).await,
            None => self.remove_upstream(ext).await,
        };
        let restored = match restored {
            Ok(()) => format!("{} has its previous text again", file.display()),
            Err(e) => format!("putting {} back failed too: {e}", file.display()),
        };
        let what = match code {
            Some(c) => format!("exited {c}"),
            None => "could not run".into(),
        };
        Err(DeployError::Docker(format!(
            "the host's proxy was not switched to version {version} of {service}: reload \
             command {cmd:?}{} {what}: {}\n{restored}; the previous version keeps serving",
            ext.container
                .as_ref()
                .map_or(String::new(), |c| format!(" (in container {c})")),
            out.trim()
        )))
    }

    /// The upstream file's text, `None` when there is none yet.
    async fn read_upstream(&self, ext: &ExternalProxy) -> Result<Option<Vec<u8>>, DeployError> {
        let path = Path::new(&ext.upstream_file);
        let Some(c) = &ext.container else {
            return match std::fs::read(path) {
                Ok(b) => Ok(Some(b)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(DeployError::io("read", path)(e)),
            };
        };
        let opts = bollard::query_parameters::DownloadFromContainerOptions {
            path: ext.upstream_file.clone(),
        };
        let mut stream = self.docker.download_from_container(c, Some(opts));
        let mut tar_bytes = Vec::new();
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(b) => tar_bytes.extend_from_slice(&b),
                Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 404,
                    message,
                }) if !message.contains("No such container") => return Ok(None),
                Err(e) => {
                    return Err(derr(&format!(
                        "read {} in the proxy's container {c}",
                        ext.upstream_file
                    ))(e));
                }
            }
        }
        let mut archive = tar::Archive::new(&tar_bytes[..]);
        let mut entries = archive
            .entries()
            .map_err(DeployError::io("read the archive of", path))?;
        let mut out = Vec::new();
        if let Some(e) = entries.next() {
            let mut e = e.map_err(DeployError::io("read the archive of", path))?;
            std::io::Read::read_to_end(&mut e, &mut out)
                .map_err(DeployError::io("read the archive of", path))?;
        }
        Ok(Some(out))
    }

    /// Writes the upstream file: on this file system by rename of a file beside it, or
    /// into the proxy's container through dockerd (an archive unpacked in its folder).
    async fn write_upstream(&self, ext: &ExternalProxy, text: &[u8]) -> Result<(), DeployError> {
        let path = Path::new(&ext.upstream_file);
        let dir = path.parent().unwrap_or(Path::new("/"));
        let name = path.file_name().unwrap_or_default();
        let Some(c) = &ext.container else {
            let mut tmp_name = std::ffi::OsString::from(".");
            tmp_name.push(name);
            tmp_name.push(".berth-tmp");
            let tmp = dir.join(tmp_name);
            std::fs::write(&tmp, text).map_err(DeployError::io("write", &tmp))?;
            return std::fs::rename(&tmp, path).map_err(DeployError::io("rename", path));
        };
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(text.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(unix_now());
        b.append_data(&mut h, name, text)
            .map_err(DeployError::io("archive", path))?;
        let tar_bytes = b.into_inner().map_err(DeployError::io("archive", path))?;
        let opts = bollard::query_parameters::UploadToContainerOptions {
            path: dir.display().to_string(),
            ..Default::default()
        };
        self.docker
            .upload_to_container(c, Some(opts), bollard::body_full(tar_bytes.into()))
            .await
            .map_err(derr(&format!(
                "write {} into the proxy's container {c}",
                ext.upstream_file
            )))
    }

    /// Removes the upstream file (a failed first hand-over leaves none).
    async fn remove_upstream(&self, ext: &ExternalProxy) -> Result<(), DeployError> {
        let path = Path::new(&ext.upstream_file);
        match &ext.container {
            None => match std::fs::remove_file(path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(DeployError::io("remove", path)(e))
                }
                _ => Ok(()),
            },
            Some(c) => {
                let cmd = ["rm".to_owned(), "-f".to_owned(), ext.upstream_file.clone()];
                self.run_exec(c, &cmd)
                    .await
                    .map(drop)
                    .map_err(|e| DeployError::Docker(format!("rm {} in {c}: {e}", path.display())))
            }
        }
    }

    async fn pull(&self, req: &DeployRequest) -> Result<(), DeployError> {
        let opts = CreateImageOptions {
            from_image: Some(req.image.clone()),
            ..Default::default()
        };
        let creds = req.registry_auth.as_ref().map(|a| DockerCredentials {
            username: Some(a.username.clone()),
            password: Some(a.password.clone()),
            serveraddress: Some(a.server.clone()),
            ..Default::default()
        });
        let mut stream = self.docker.create_image(Some(opts), None, creds);
        while let Some(item) = stream.next().await {
            let fail = |m: String| {
                DeployError::Docker(format!(
                    "pull {}: {m}; this host's deploy stops here (check that the host reaches \
                     the registry and trusts it)",
                    req.image
                ))
            };
            match item {
                Ok(info) => {
                    if let Some(m) = info.error_detail.and_then(|d| d.message) {
                        return Err(fail(m));
                    }
                }
                Err(e) => return Err(fail(docker_message(&e))),
            }
        }
        Ok(())
    }

    async fn create(&self, req: &DeployRequest, name: &str) -> Result<String, DeployError> {
        let svc = &req.service;
        let mut env: Vec<String> = svc.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        env.extend(req.secrets.iter().map(|(k, v)| format!("{k}={v}")));
        let labels = BTreeMap::from([
            ("berth.service".to_owned(), svc.name.clone()),
            ("berth.version".to_owned(), req.version.clone()),
        ]);
        let binds: Vec<String> = svc
            .volumes
            .iter()
            .map(|v| {
                let ro = if v.read_only { ":ro" } else { "" };
                format!("{}:{}{ro}", v.source, v.target)
            })
            .collect();
        let body = ContainerCreateBody {
            image: Some(req.image.clone()),
            cmd: svc.command.clone(),
            env: Some(env),
            labels: Some(labels.into_iter().collect()),
            stop_signal: Some(svc.stop_signal.clone()),
            stop_timeout: Some(svc.stop_timeout.as_secs() as i64),
            host_config: Some(HostConfig {
                binds: (!binds.is_empty()).then_some(binds),
                restart_policy: Some(RestartPolicy {
                    name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let opts = CreateContainerOptions {
            name: Some(name.to_owned()),
            ..Default::default()
        };
        let t = std::time::Instant::now();
        let created = self
            .docker
            .create_container(Some(opts), body)
            .await
            .map_err(derr(&format!("create container {name}")))?;
        let create_ms = t.elapsed().as_millis() as u64;
        let started = self.docker.start_container(name, None).await;
        tracing::debug!(
            container = name,
            create_ms,
            start_ms = t.elapsed().as_millis() as u64 - create_ms,
            "container created and started"
        );
        if let Err(e) = started {
            let logs = self.last_logs(name).await;
            self.discard(name, svc).await;
            return Err(DeployError::Docker(format!(
                "start container {name}: {}\n{logs}",
                docker_message(&e)
            )));
        }
        Ok(created.id)
    }

    /// Runs the check every interval until it passes; after `retries` failures, the last
    /// failure's output. A container just started usually listens within milliseconds:
    /// until the first interval is over, checks also run at [`QUICK_CHECKS`] pauses that
    /// double up to the interval, and their failures do not count against `retries`.
    ///
    /// Passed, it gives the container's address as the passing check's inspect saw it
    /// (the switch needs it: no second inspect).
    async fn wait_healthy(&self, name: &str, health: &Health) -> Result<Option<IpAddr>, String> {
        let start = tokio::time::Instant::now();
        let mut last = String::new();
        let mut probes = 0;
        let passed = |probes: u32, ip: Option<IpAddr>| {
            tracing::debug!(
                container = name,
                probes,
                ms = start.elapsed().as_millis() as u64,
                "healthy"
            );
            Ok(ip)
        };
        for attempt in 1..=health.retries {
            if attempt == 2 {
                // The quick checks took the first interval.
                tokio::time::sleep_until(start + health.interval).await;
            } else if attempt > 2 {
                tokio::time::sleep(health.interval).await;
            }
            probes += 1;
            match self.probe(name, health).await? {
                Probe::Passed(ip) => return passed(probes, ip),
                Probe::Failed(out) => last = out,
            }
            if attempt == 1 {
                let mut pause = QUICK_CHECKS;
                loop {
                    let at = tokio::time::Instant::now() + pause;
                    if at + pause / 2 >= start + health.interval {
                        break;
                    }
                    tokio::time::sleep_until(at).await;
                    probes += 1;
                    match self.probe(name, health).await? {
                        Probe::Passed(ip) => return passed(probes, ip),
                        Probe::Failed(out) => last = out,
                    }
                    pause *= 2;
                }
            }
        }
        Err(format!(
            "{} health checks failed; the last said: {last}",
            health.retries
        ))
    }

    /// One health check of container `name`; `Err` when the container is not running
    /// (no check can pass). One inspect gives its state and its address.
    async fn probe(&self, name: &str, health: &Health) -> Result<Probe, String> {
        let info = self
            .docker
            .inspect_container(name, None)
            .await
            .map_err(|e| docker_message(&e))?;
        let state = info.state.clone().unwrap_or_default();
        if state.running != Some(true) {
            return Err(format!(
                "the container exited (code {})",
                state.exit_code.unwrap_or(-1)
            ));
        }
        let ip = ip_of(&info);
        let check = tokio::time::timeout(health.timeout, self.check_once(name, &health.check, ip));
        Ok(match check.await {
            Ok(Ok(())) => Probe::Passed(ip),
            Ok(Err(out)) => Probe::Failed(out),
            Err(_) => Probe::Failed(format!("the check took longer than {:?}", health.timeout)),
        })
    }

    async fn check_once(
        &self,
        name: &str,
        check: &Check,
        ip: Option<IpAddr>,
    ) -> Result<(), String> {
        match check {
            Check::Running => Ok(()),
            Check::Http { path, port } => {
                let ip = ip.ok_or_else(|| format!("container {name} has no network address"))?;
                http_check(SocketAddr::new(ip, *port), path).await
            }
            Check::Command(cmd) => {
                let (code, out) = self.run_exec(name, cmd).await?;
                if code == 0 {
                    Ok(())
                } else {
                    Err(format!("{cmd:?} exited {code}: {}", out.trim()))
                }
            }
        }
    }

    /// Runs `cmd` in container `name`: its exit code and output.
    async fn run_exec(&self, name: &str, cmd: &[String]) -> Result<(i64, String), String> {
        let exec = self
            .docker
            .create_exec(
                name,
                CreateExecOptions {
                    cmd: Some(cmd.to_vec()),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| docker_message(&e))?;
        let mut out = String::new();
        if let StartExecResults::Attached { mut output, .. } = self
            .docker
            .start_exec(&exec.id, None)
            .await
            .map_err(|e| docker_message(&e))?
        {
            while let Some(Ok(chunk)) = output.next().await {
                out.push_str(&chunk.to_string());
            }
        }
        let code = self
            .docker
            .inspect_exec(&exec.id)
            .await
            .map_err(|e| docker_message(&e))?
            .exit_code
            .unwrap_or(-1);
        Ok((code, out))
    }

    /// The serving container of `service`, or an error naming the host.
    fn current(&self, service: &str) -> Result<Current, DeployError> {
        check_service_name(service)?;
        read_json(&self.service_dir(service).join("current.json"))?.ok_or_else(|| {
            DeployError::BadRequest(format!(
                "service {service} has no serving container on host {}: deploy it first",
                self.host
            ))
        })
    }

    /// The services of this host: serving version, containers and their state.
    pub async fn ps(&self) -> Result<Vec<ServiceState>, DeployError> {
        let holders = self.locks.holders()?;
        let dir = self.dir.join("services");
        let mut names: Vec<String> = match std::fs::read_dir(&dir) {
            Ok(rd) => rd
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(DeployError::io("read", &dir)(e)),
        };
        names.sort();
        let mut out = Vec::new();
        for name in names {
            let Ok(cur) = self.current(&name) else {
                continue;
            };
            let mut states = Vec::new();
            for c in cur.all() {
                let state = match self.docker.inspect_container(&c, None).await {
                    Ok(i) => i
                        .state
                        .and_then(|s| s.status)
                        .map_or_else(|| "unknown".into(), |s| s.to_string()),
                    Err(e) => format!("missing: {}", docker_message(&e)),
                };
                if !states.contains(&state) {
                    states.push(state);
                }
            }
            let image = self
                .history(&name)?
                .into_iter()
                .find(|r| r.version == cur.version)
                .map(|r| r.image);
            let removing = self
                .removals
                .lock()
                .expect("removals")
                .get(&name)
                .map(|r| r.containers.clone())
                .unwrap_or_default();
            let deploying = holders
                .get(&name)
                .filter(|_| removing.is_empty())
                .map(|h| (h.client.clone(), h.since_unix));
            let mut leftovers = Vec::new();
            let found: Vec<Leftover> = read_json(&self.service_dir(&name).join(LEFTOVERS))
                .ok()
                .flatten()
                .unwrap_or_default();
            for l in found {
                // Removed since (by hand, or by a removal running now): not a leftover.
                let gone = matches!(
                    self.docker.inspect_container(&l.container, None).await,
                    Err(bollard::errors::Error::DockerResponseServerError {
                        status_code: 404,
                        ..
                    })
                );
                if !gone && !removing.contains(&l.container) {
                    leftovers.push((l.container, l.error));
                }
            }
            let containers = cur.all();
            out.push(ServiceState {
                ports: cur
                    .ports
                    .iter()
                    .map(|p| format!("{}:{}", p.host, p.container))
                    .collect(),
                name,
                version: cur.version,
                image,
                containers,
                container: cur.container,
                state: states.join(","),
                deploying,
                removing,
                leftovers,
            });
        }
        Ok(out)
    }

    /// Runs `cmd` in a serving container of `service`: replica `replica` (from 1), or
    /// the first.
    pub async fn exec(
        &self,
        service: &str,
        cmd: &[String],
        replica: Option<u32>,
    ) -> Result<ExecResult, DeployError> {
        if cmd.is_empty() {
            return Err(DeployError::BadRequest("exec: no command given".into()));
        }
        let all = self.current(service)?.all();
        let container = match replica {
            None => &all[0],
            Some(n) => all.get((n as usize).wrapping_sub(1)).ok_or_else(|| {
                DeployError::BadRequest(format!(
                    "service {service} runs {} replica{} on host {}: replica {n} is not one \
                         of them (they count from 1)",
                    all.len(),
                    if all.len() == 1 { "" } else { "s" },
                    self.host
                ))
            })?,
        };
        let (exit_code, output) = self
            .run_exec(container, cmd)
            .await
            .map_err(|e| DeployError::Docker(format!("exec in {container} ({service}): {e}")))?;
        Ok(ExecResult { exit_code, output })
    }

    /// The output of the serving containers of `service`: the last `tail` lines of each
    /// (all when `None`), then, with `follow`, what they write until they stop or the
    /// reader goes. With several replicas, each line starts with its container's name
    /// and ` | `.
    pub fn logs(
        &self,
        service: &str,
        tail: Option<u64>,
        follow: bool,
    ) -> Result<
        impl futures_util::Stream<Item = Result<bytes::Bytes, DeployError>> + use<>,
        DeployError,
    > {
        let all = self.current(service)?.all();
        let prefix = all.len() > 1;
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        for container in all {
            let docker = self.docker.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let opts = LogsOptions {
                    stdout: true,
                    stderr: true,
                    follow,
                    tail: tail.map_or_else(|| "all".into(), |n| n.to_string()),
                    ..Default::default()
                };
                let mut s = docker.logs(&container, Some(opts));
                let mut partial = Vec::new();
                while let Some(item) = s.next().await {
                    let item = match item {
                        Ok(c) if prefix => {
                            partial.extend_from_slice(&c.into_bytes());
                            Ok(prefixed_lines(&container, &mut partial, false))
                        }
                        Ok(c) => Ok(c.into_bytes()),
                        Err(e) => Err(derr(&format!("logs of {container}"))(e)),
                    };
                    let stop = item.is_err();
                    if tx.send(item).await.is_err() || stop {
                        return;
                    }
                }
                if !partial.is_empty() {
                    let _ = tx
                        .send(Ok(prefixed_lines(&container, &mut partial, true)))
                        .await;
                }
            });
        }
        Ok(futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|x| (x, rx))
        }))
    }

    async fn last_logs(&self, name: &str) -> String {
        container_logs(&self.docker, name).await
    }

    /// Stops (the service's signal, then its timeout) and removes a container; a
    /// container that is gone already counts as removed. The error is dockerd's.
    async fn remove(&self, name: &str, svc: &Service) -> Result<(), String> {
        let stop = StopContainerOptions {
            t: Some(svc.stop_timeout.as_secs() as i32),
            signal: None,
        };
        if let Err(e) = self.docker.stop_container(name, Some(stop)).await {
            tracing::debug!(container = name, error = %e, "stop");
        }
        let rm = RemoveContainerOptions {
            force: true,
            ..Default::default()
        };
        match self.docker.remove_container(name, Some(rm)).await {
            Ok(()) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(e) => Err(docker_message(&e)),
        }
    }

    /// [`Engine::remove`] of a container that never served; a failure is logged.
    async fn discard(&self, name: &str, svc: &Service) {
        if let Err(e) = self.remove(name, svc).await {
            tracing::warn!(container = name, error = %e, "remove failed");
        }
    }
}

/// The whole lines of `partial` (all of it when `end`), each after `name | `; what is
/// left is the start of a line still being written.
fn prefixed_lines(name: &str, partial: &mut Vec<u8>, end: bool) -> bytes::Bytes {
    let cut = if end {
        partial.len()
    } else {
        partial
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(0, |i| i + 1)
    };
    let mut out = Vec::new();
    for line in partial
        .drain(..cut)
        .collect::<Vec<u8>>()
        .split_inclusive(|b| *b == b'\n')
    {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b" | ");
        out.extend_from_slice(line);
    }
    if end && !out.ends_with(b"\n") {
        out.push(b'\n');
    }
    bytes::Bytes::from(out)
}

/// The last log lines of container `name`, each indented with `  | `.
pub(crate) async fn container_logs(docker: &Docker, name: &str) -> String {
    let opts = LogsOptions {
        stdout: true,
        stderr: true,
        tail: LOG_LINES.into(),
        ..Default::default()
    };
    let mut s = docker.logs(name, Some(opts));
    let mut out = String::new();
    while let Some(Ok(chunk)) = s.next().await {
        out.push_str("  | ");
        out.push_str(chunk.to_string().trim_end());
        out.push('\n');
    }
    if out.is_empty() {
        out.push_str("  (no output)\n");
    }
    out
}

/// How long a reload command of the host's proxy may take.
const RELOAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Runs `cmd` as a child of the agent: its exit code and output (stdout, then stderr);
/// killed after [`RELOAD_TIMEOUT`]. (std's process on a blocking thread: tokio's
/// `process` feature is not in the workspace.)
async fn run_local(cmd: &[String]) -> Result<(i64, String), DeployError> {
    let cmd = cmd.to_vec();
    tokio::task::spawn_blocking(move || {
        let fail = |e: std::io::Error| DeployError::Docker(format!("{cmd:?}: {e}"));
        let mut child = std::process::Command::new(&cmd[0])
            .args(&cmd[1..])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(fail)?;
        let start = std::time::Instant::now();
        loop {
            if child.try_wait().map_err(fail)?.is_some() {
                break;
            }
            if start.elapsed() > RELOAD_TIMEOUT {
                let _ = child.kill();
                let _ = child.wait();
                return Err(DeployError::Docker(format!(
                    "{cmd:?} took longer than {RELOAD_TIMEOUT:?}"
                )));
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let out = child.wait_with_output().map_err(fail)?;
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        Ok((i64::from(out.status.code().unwrap_or(-1)), text))
    })
    .await
    .map_err(|e| DeployError::Internal(format!("reload command: {e}")))?
}

/// Service names become directory and container names: the deploy file's rule, checked
/// again on the host.
fn check_service_name(name: &str) -> Result<(), DeployError> {
    let ok = (1..=63).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(DeployError::BadRequest(format!(
            "{name:?} is not a service name"
        )))
    }
}

fn container_name(service: &str, version: &str) -> String {
    let v: String = version
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("berth-{service}-{v}-{:06x}", nanos & 0xff_ffff)
}

/// `GET path` over HTTP/1.0; 2xx passes. The failure says the status line and the start
/// of the body, or why nothing answered.
async fn http_check(addr: SocketAddr, path: &str) -> Result<(), String> {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("GET http://{addr}{path}: {e}"))?;
    let req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nUser-Agent: berth-health\r\n\r\n");
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("GET http://{addr}{path}: {e}"))?;
    let mut buf = Vec::new();
    let _ = s.take(4096).read_to_end(&mut buf).await;
    let text = String::from_utf8_lossy(&buf);
    let status_line = text.lines().next().unwrap_or("");
    let code: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    if (200..300).contains(&code) {
        return Ok(());
    }
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").trim();
    let body: String = body.chars().take(300).collect();
    Err(format!(
        "GET http://{addr}{path}: {}{}",
        if status_line.is_empty() {
            "no answer"
        } else {
            status_line
        },
        if body.is_empty() {
            String::new()
        } else {
            format!(": {body}")
        }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_of_replicas_are_prefixed_whole() {
        let mut partial = b"one\ntw".to_vec();
        assert_eq!(
            &prefixed_lines("r1", &mut partial, false)[..],
            b"r1 | one\n"
        );
        assert_eq!(partial, b"tw");
        partial.extend_from_slice(b"o\nthree\nfou");
        assert_eq!(
            &prefixed_lines("r1", &mut partial, false)[..],
            b"r1 | two\nr1 | three\n"
        );
        assert_eq!(&prefixed_lines("r1", &mut partial, true)[..], b"r1 | fou\n");
        assert!(partial.is_empty());
        assert!(prefixed_lines("r1", &mut partial, false).is_empty());
    }
}
