//! The gRPC control API (see `proto/satellite.proto`).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use berth_build::{BuildOptions, Entitlement, Event, Progress, SecretSource};
use berth_pki::{CertInfo, Validity};
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::context::{ClientContexts, Entry};
use crate::error::SatError;
use crate::metrics::Outcome;
use crate::proto::{self, build_event::Event as Ev};
use crate::server::{RunningBuild, Satellite, unix};

pub(crate) struct Service {
    pub(crate) sat: Satellite,
}

/// The enrolled client behind a request: its verified certificate.
fn caller<T>(req: &Request<T>) -> Result<CertInfo, Status> {
    let certs = req
        .extensions()
        .get::<berth_registry::PeerCertificates>()
        .ok_or_else(|| {
            Status::unauthenticated(
                "this call needs an enrolled client: run `berth satellite add NAME --token T` first",
            )
        })?;
    let leaf = certs
        .0
        .first()
        .ok_or_else(|| Status::unauthenticated("no client certificate"))?;
    CertInfo::from_der(leaf).map_err(|e| Status::unauthenticated(e.to_string()))
}

/// The directory name of a client's contexts: its certificate's name, kept plain.
fn client_dir(info: &CertInfo) -> String {
    info.display_name()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl Service {
    /// Refuses work for a new build while the satellite drains.
    fn refuse_if_draining(&self) -> Result<(), Status> {
        if self.sat.inner.draining.load(Ordering::SeqCst) {
            return Err(Status::unavailable(format!(
                "satellite {} is shutting down (draining its running builds) and takes no new \
                 builds; retry after its restart or build on another satellite",
                self.sat.inner.name
            )));
        }
        Ok(())
    }

    fn contexts(&self, info: &CertInfo) -> ClientContexts {
        ClientContexts::new(
            self.sat
                .inner
                .dirs
                .root
                .join("satellite/contexts")
                .join(client_dir(info)),
        )
    }

    fn issue(&self, csr_pem: &str, client: &str) -> Result<proto::EnrollResponse, SatError> {
        let inner = &self.sat.inner;
        let resp = inner.dirs.authority().issue(
            &inner.ca,
            csr_pem,
            client,
            Validity::from_now(inner.client_validity),
            &inner.name,
        )?;
        Ok(into_proto(resp))
    }
}

fn into_proto(resp: berth_pki::EnrollResponse) -> proto::EnrollResponse {
    proto::EnrollResponse {
        cert_pem: resp.cert_pem,
        ca_pem: resp.ca_pem,
        satellite: resp.server,
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, SatError> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("worker panicked: {e}")))?
        .map_err(Status::from)
}

#[tonic::async_trait]
impl proto::satellite_server::Satellite for Service {
    async fn enroll(
        &self,
        req: Request<proto::EnrollRequest>,
    ) -> Result<Response<proto::EnrollResponse>, Status> {
        let r = req.into_inner();
        let svc = Service {
            sat: self.sat.clone(),
        };
        let resp = blocking(move || {
            let inner = &svc.sat.inner;
            let resp = inner.dirs.authority().enroll(
                &inner.ca,
                &inner.tokens,
                &berth_pki::EnrollRequest {
                    token_id: r.token_id,
                    token_secret: r.token_secret,
                    client_name: r.client_name,
                    csr_pem: r.csr_pem,
                },
                Validity::from_now(inner.client_validity),
                &inner.name,
            )?;
            inner.metrics.invalidate();
            Ok(into_proto(resp))
        })
        .await?;
        Ok(Response::new(resp))
    }

    async fn renew(
        &self,
        req: Request<proto::RenewRequest>,
    ) -> Result<Response<proto::EnrollResponse>, Status> {
        let who = caller(&req)?;
        let name = who.common_name.clone().unwrap_or_default();
        let csr = req.into_inner().csr_pem;
        let svc = Service {
            sat: self.sat.clone(),
        };
        let resp = blocking(move || svc.issue(&csr, &name)).await?;
        tracing::info!(client = %who.display_name(), "client certificate renewed");
        Ok(Response::new(resp))
    }

    async fn status(
        &self,
        req: Request<proto::StatusRequest>,
    ) -> Result<Response<proto::StatusResponse>, Status> {
        let who = caller(&req)?;
        let sat = self.sat.clone();
        let disk = blocking(move || Ok(sat.inner.metrics.disk(&sat))).await?;
        let load1 = load1();
        Ok(Response::new(proto::StatusResponse {
            name: self.sat.inner.name.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            running_builds: self.sat.running_builds(),
            cache_bytes: disk.cache_bytes,
            cache_cap_bytes: self.sat.inner.config.builder.cache_max_bytes.unwrap_or(0),
            load1,
            cpus: cpus(),
            client: who.display_name(),
            client_cert_expires: unix(who.validity.not_after) as i64,
            enrolled_clients: disk.enrolled_clients,
        }))
    }

    async fn prepare_context(
        &self,
        req: Request<proto::PrepareContextRequest>,
    ) -> Result<Response<proto::PrepareContextResponse>, Status> {
        let who = caller(&req)?;
        self.refuse_if_draining()?;
        let r = req.into_inner();
        let contexts = self.contexts(&who);
        let entries: Vec<Entry> = r.entries.into_iter().map(Entry::from).collect();
        let (snapshot, missing) = blocking(move || contexts.prepare(&r.context, &entries)).await?;
        Ok(Response::new(proto::PrepareContextResponse {
            missing,
            snapshot,
        }))
    }

    async fn upload_files(
        &self,
        req: Request<Streaming<proto::FileBatch>>,
    ) -> Result<Response<proto::UploadFilesResponse>, Status> {
        let who = caller(&req)?;
        let contexts = self.contexts(&who);
        let sat = self.sat.clone();
        let mut stream = req.into_inner();
        // File writes happen on a blocking thread fed through a small channel, so a slow
        // disk slows the upload instead of a runtime worker.
        let (tx, mut rx) = mpsc::channel::<proto::FileBatch>(4);
        let writer = tokio::task::spawn_blocking(move || -> Result<(u64, u64), SatError> {
            let (mut files, mut bytes) = (0u64, 0u64);
            let mut current: Option<(String, crate::context::Incoming)> = None;
            let mut finish = |inc: crate::context::Incoming| -> Result<(), SatError> {
                bytes += inc.finish()?;
                files += 1;
                sat.inner.metrics.context_file_received();
                Ok(())
            };
            while let Some(batch) = rx.blocking_recv() {
                for chunk in batch.chunks {
                    if current.as_ref().is_none_or(|(d, _)| *d != chunk.digest) {
                        if let Some((_, inc)) = current.take() {
                            finish(inc)?;
                        }
                        current = Some((chunk.digest.clone(), contexts.receive(&chunk.digest)?));
                    }
                    if let Some((_, inc)) = current.as_mut() {
                        inc.write(&chunk.data)?;
                    }
                }
            }
            if let Some((_, inc)) = current.take() {
                finish(inc)?;
            }
            Ok((files, bytes))
        });
        while let Some(batch) = stream.next().await {
            let batch = batch.inspect_err(|e| {
                tracing::info!(client = %who.display_name(), error = %e, "context upload cut short");
            })?;
            let size = batch.chunks.iter().map(|c| c.data.len() as u64).sum();
            self.sat.inner.metrics.context_received(size);
            if tx.send(batch).await.is_err() {
                break; // the writer failed: its error is below
            }
        }
        drop(tx);
        let (files, bytes) = writer
            .await
            .map_err(|e| Status::internal(format!("upload writer panicked: {e}")))?
            .map_err(Status::from)?;
        tracing::info!(client = %who.display_name(), files, bytes, "context files received");
        Ok(Response::new(proto::UploadFilesResponse { files, bytes }))
    }

    type SshAgentStream = ReceiverStream<Result<proto::SshFrame, Status>>;

    async fn ssh_agent(
        &self,
        req: Request<Streaming<proto::SshFrame>>,
    ) -> Result<Response<Self::SshAgentStream>, Status> {
        let who = caller(&req)?;
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(64);
        let id = crate::context::uuid_like();
        let session = Arc::new(crate::ssh::Session::new(who.display_name(), tx.clone()));
        self.sat
            .inner
            .ssh_sessions
            .lock()
            .expect("ssh sessions lock")
            .insert(id.clone(), session.clone());
        let first = proto::SshFrame {
            session: id.clone(),
            ..Default::default()
        };
        let _ = tx.send(Ok(first)).await;
        let sat = self.sat.clone();
        tokio::spawn(async move {
            while let Ok(Some(frame)) = inbound.message().await {
                session.incoming(frame).await;
            }
            sat.inner
                .ssh_sessions
                .lock()
                .expect("ssh sessions lock")
                .remove(&id);
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn probe(
        &self,
        req: Request<proto::ProbeRequest>,
    ) -> Result<Response<proto::ProbeResponse>, Status> {
        let who = caller(&req)?;
        self.refuse_if_draining()?;
        let r = req.into_inner();
        let mut answer = proto::ProbeResponse {
            name: self.sat.inner.name.clone(),
            running_builds: self.sat.running_builds(),
            load1: load1(),
            cpus: cpus(),
            ..Default::default()
        };
        let counted = if r.frontend == "earthfile" {
            answer.from_history = true;
            self.count_history(&who, &r).await
        } else {
            self.count_cached(&who, r).await
        };
        match counted {
            Ok(c) => {
                answer.steps = c.steps as u32;
                answer.cached = c.cached as u32;
            }
            Err(why) => answer.uncounted = why,
        }
        tracing::debug!(client = %who.display_name(), steps = answer.steps, cached = answer.cached,
            uncounted = %answer.uncounted, "build probed");
        Ok(Response::new(answer))
    }

    type BuildStream = ReceiverStream<Result<proto::BuildEvent, Status>>;

    async fn build(
        &self,
        req: Request<proto::BuildRequest>,
    ) -> Result<Response<Self::BuildStream>, Status> {
        let who = caller(&req)?;
        self.refuse_if_draining()?;
        let r = req.into_inner();
        let client = who.display_name();
        if !matches!(r.frontend.as_str(), "" | "dockerfile" | "earthfile") {
            return Err(Status::invalid_argument(format!(
                "frontend {:?} is not one this satellite knows (dockerfile, earthfile); \
                 update berth on the satellite",
                r.frontend
            )));
        }
        let allow = entitlements(&r.allow, &self.sat.inner.allow).inspect_err(|e| {
            tracing::info!(%client, error = %e.message(), "build refused");
        })?;
        let (tx, rx) = mpsc::channel(64);
        let sat = self.sat.clone();
        let contexts = self.contexts(&who);
        let id = crate::context::uuid_like();
        // Counted before the task starts, so a drain that begins now waits for it.
        sat.inner.running.send_modify(|n| *n += 1);
        tokio::spawn(async move {
            let started = Instant::now();
            tracing::info!(%client, build = %id, context = %r.context, "build started");
            let cancel = berth_build::Cancel::default();
            let result = if r.frontend == "earthfile" {
                run_earth(&sat, &id, &client, contexts, r, allow, &cancel, tx.clone()).await
            } else {
                run_build(&sat, &id, &client, contexts, r, allow, &cancel, tx.clone()).await
            };
            sat.inner.builds.lock().expect("builds lock").remove(&id);
            let outcome = match &result {
                Ok(_) => Outcome::Ok,
                Err(SatError::Build(berth_build::BuildError::Canceled)) => Outcome::Canceled,
                Err(_) if cancel.is_canceled() => Outcome::Canceled,
                Err(_) => Outcome::Failed,
            };
            sat.inner.metrics.build_ended(outcome);
            let duration_ms = started.elapsed().as_millis() as u64;
            let msg = match result {
                Ok(res) => {
                    let image = match res.images.first() {
                        Some(i) if res.manifest.is_empty() => &i.manifest,
                        _ => &res.manifest,
                    };
                    tracing::info!(%client, build = %id, duration_ms, result = outcome.as_str(), %image, "build ended");
                    Ok(proto::BuildEvent {
                        event: Some(Ev::Result(res)),
                    })
                }
                Err(e) => {
                    tracing::info!(%client, build = %id, duration_ms, result = outcome.as_str(), error = %e, "build ended");
                    Err(Status::from(e))
                }
            };
            // Counted out before the client hears the end, so that what it reads next
            // (`/metrics`, `inspect`) agrees. A drain that ends now still delivers this
            // message: the server lets open streams finish.
            sat.inner.running.send_modify(|n| *n -= 1);
            let _ = tx.send(msg).await;
            trim_cache(&sat).await;
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

impl Service {
    /// The steps of a probed build and those this satellite's cache answers, over the
    /// client's tree of the context when it is unchanged and no build holds it, else
    /// over stand-ins of its entries (removed after); why not, when they cannot be
    /// counted.
    async fn count_cached(
        &self,
        who: &CertInfo,
        r: proto::ProbeRequest,
    ) -> Result<berth_build::CacheProbe, String> {
        match r.frontend.as_str() {
            "" | "dockerfile" => {}
            other => {
                return Err(format!(
                    "frontend {other:?} is not one this satellite knows"
                ));
            }
        }
        let allow =
            entitlements(&r.allow, &self.sat.inner.allow).map_err(|s| s.message().to_owned())?;
        let extra_hosts = r
            .extra_hosts
            .iter()
            .map(|h| berth_build::parse_extra_host(h))
            .collect::<Result<Vec<_>, _>>()?;
        let contexts = self.contexts(who);
        let lock = self
            .sat
            .inner
            .contexts
            .lock()
            .expect("contexts lock")
            .entry(contexts.context_path(&r.context))
            .or_default()
            .clone();
        // Held until the keys are computed, so a build does not change the tree meanwhile.
        let held = lock.try_lock().ok();
        let dir = self
            .sat
            .inner
            .dirs
            .root
            .join("satellite/probes")
            .join(crate::context::uuid_like());
        let _cleanup = RemoveOnDrop(dir.clone());
        let entries: Vec<Entry> = r.entries.into_iter().map(Entry::from).collect();
        let (context, sums) = {
            let (dir, name, use_tree) = (dir.clone(), r.context.clone(), held.is_some());
            tokio::task::spawn_blocking(move || {
                if use_tree && let Some(tree) = contexts.tree_if_current(&name, &entries) {
                    // The builds of the tree kept its content hashes: none is given.
                    return Ok((tree, HashMap::new()));
                }
                crate::context::stand_ins(&dir, &entries).map(|sums| (dir, sums))
            })
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?
        };
        let opts = berth_build::ProbeOptions {
            dockerfile: r.dockerfile,
            dockerfile_name: safe_file_name(&r.dockerfile_name),
            dockerignore: r.dockerignore,
            context,
            sums,
            target: (!r.target.is_empty()).then_some(r.target),
            build_args: r.build_args.into_iter().collect(),
            no_cache: r.no_cache,
            source_date_epoch: r.source_date_epoch,
            proxy_env: self.sat.inner.config.network().proxies.step_env(),
            allow,
            extra_hosts,
        };
        let counted = berth_build::probe_cache(
            &self.sat.inner.dirs.root,
            self.sat.inner.store.clone(),
            opts,
        )
        .await
        .map_err(|e| e.to_string());
        drop(held);
        counted
    }
}

impl Service {
    /// An Earthfile target's steps as its last build on this satellite from the
    /// client's tree of the context made them, and those still cached: its keys come
    /// from several targets and Earthfiles, imports, remote references and `IF`/`FOR`
    /// over command output, which no dry walk computes. Zero steps when this satellite
    /// never built the target from that tree.
    async fn count_history(
        &self,
        who: &CertInfo,
        r: &proto::ProbeRequest,
    ) -> Result<berth_build::CacheProbe, String> {
        if r.target.is_empty() {
            return Err("an Earthfile build names its target (+target)".into());
        }
        // The build's id as `run_earth` makes it: over the canonical tree.
        let tree = self.contexts(who).context_path(&r.context).join("tree");
        let (root, store, target) = (
            self.sat.inner.dirs.root.clone(),
            self.sat.inner.store.clone(),
            r.target.clone(),
        );
        tokio::task::spawn_blocking(move || {
            let Ok(tree) = tree.canonicalize() else {
                return berth_build::CacheProbe::default();
            };
            let id = berth_build::build_id(&tree, &tree.join("Earthfile"), Some(target.as_str()));
            berth_build::probe_history(&root, &store, &id)
        })
        .await
        .map_err(|e| e.to_string())
    }
}

fn load1() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

fn cpus() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

/// `[builder] cache_max_bytes`: once no build runs, the least recently used build cache
/// goes until the rest fits, then the blobs nothing refers to any more (images in the
/// store stay). Skipped while builds run: they hold the root's shared lock, and the
/// next idle moment comes soon enough.
async fn trim_cache(sat: &Satellite) {
    let builder = &sat.inner.config.builder;
    let keep = builder.cache_keep();
    if builder.cache_max_bytes.is_none() && keep.is_none() {
        return;
    }
    let cap = builder.cache_max_bytes.unwrap_or(u64::MAX);
    if sat.running_builds() > 0 {
        return;
    }
    let (root, store) = (sat.inner.dirs.root.clone(), sat.inner.store.clone());
    let done = tokio::task::spawn_blocking(move || -> Result<(usize, usize), String> {
        let pruned = berth_build::prune(
            &root,
            &store,
            &berth_build::PruneOptions {
                keep_storage: cap,
                keep_duration: keep,
                all: false,
            },
        )
        .map_err(|e| e.to_string())?;
        let gc = store
            .gc(
                &berth_store::GcOptions {
                    dry_run: false,
                    // Blobs a push or pull of the last minutes relies on stay.
                    grace: std::time::Duration::from_secs(600),
                    upload_expiry: std::time::Duration::from_secs(24 * 3600),
                },
                &berth_build::BuildCache::new(&root),
            )
            .map_err(|e| e.to_string())?;
        Ok((pruned.records, gc.removed_blobs.len()))
    })
    .await;
    match done {
        Ok(Ok((0, 0))) => {}
        Ok(Ok((records, blobs))) => {
            tracing::info!(
                records,
                blobs,
                cap,
                "build cache trimmed to [builder] cache_max_bytes"
            )
        }
        Ok(Err(e)) => tracing::warn!(error = %e, "trimming the build cache failed"),
        Err(e) => tracing::warn!(error = %e, "trimming the build cache panicked"),
    }
}

/// Checks the entitlements a build asks for against those the operator allows.
fn entitlements(asked: &[String], allowed: &[Entitlement]) -> Result<Vec<Entitlement>, Status> {
    let mut out = Vec::new();
    for a in asked {
        let e: Entitlement = a.parse().map_err(Status::invalid_argument)?;
        if !allowed.contains(&e) {
            return Err(Status::permission_denied(format!(
                "the build asks for entitlement {a}, which this satellite does not grant; its \
                 operator enables it with `allow = [\"{a}\"]` under [builder] in the satellite's \
                 config (or `berth satellite serve --allow {a}`)"
            )));
        }
        out.push(e);
    }
    Ok(out)
}

/// Forwards solver events into the response stream. The solver calls `event` from
/// blocking and async code alike, so events go through an unbounded channel first.
struct Forward(mpsc::UnboundedSender<Event>);

impl Progress for Forward {
    fn event(&self, event: Event) {
        let _ = self.0.send(event);
    }
}

fn to_proto(e: Event) -> proto::BuildEvent {
    let step = |id: usize, name: String| proto::Step {
        id: id as u32,
        name,
    };
    let event = match e {
        Event::Started { id, name } => Ev::Started(step(id, name)),
        Event::Cached { id, name } => Ev::Cached(step(id, name)),
        Event::Reason { id, name, reason } => Ev::Reason(proto::StepReason {
            id: id as u32,
            name,
            reason,
        }),
        Event::Log { id, stream, data } => Ev::Log(proto::StepLog {
            id: id as u32,
            stream: match stream {
                berth_build::Stream::Stdout => 1,
                berth_build::Stream::Stderr => 2,
            },
            data,
        }),
        Event::Done { id, name, elapsed } => Ev::Done(proto::StepDone {
            id: id as u32,
            name,
            elapsed_ms: elapsed.as_millis() as u64,
        }),
        Event::Failed { id, name } => Ev::Failed(step(id, name)),
    };
    proto::BuildEvent { event: Some(event) }
}

/// The context's tree brought to the snapshot the client prepared, and held for this
/// build (a context's tree is locked while a build uses it); the client's other
/// contexts make room, oldest first, unless a build uses them.
async fn checkout(
    sat: &Satellite,
    contexts: &ClientContexts,
    context: &str,
    snapshot: &str,
) -> Result<(tokio::sync::OwnedMutexGuard<()>, PathBuf), SatError> {
    let lock = {
        let key = contexts.context_path(context);
        sat.inner
            .contexts
            .lock()
            .expect("contexts lock")
            .entry(key)
            .or_default()
            .clone()
    };
    let held = lock.lock_owned().await;
    let tree = {
        let (contexts, name, snap) = (contexts.clone(), context.to_owned(), snapshot.to_owned());
        tokio::task::spawn_blocking(move || contexts.materialize(&name, &snap))
            .await
            .map_err(|e| SatError::Internal(e.to_string()))??
    };
    {
        let (contexts, sat2, cap) = (contexts.clone(), sat.clone(), sat.inner.context_cache);
        let removed = tokio::task::spawn_blocking(move || {
            contexts.evict(cap, &|dir| {
                sat2.inner
                    .contexts
                    .lock()
                    .expect("contexts lock")
                    .get(dir)
                    .is_some_and(|m| m.try_lock().is_err())
            })
        })
        .await
        .unwrap_or_default();
        for dir in removed {
            tracing::info!(context = %dir.display(), "context evicted (over the per-client cap)");
        }
    }
    Ok((held, tree))
}

/// A task forwarding the build's events to the client (and counting its steps for
/// /metrics): the sender the build's progress gets, and the task, which ends when every
/// sender is dropped.
fn forward_events(
    sat: &Satellite,
    tx: &mpsc::Sender<Result<proto::BuildEvent, Status>>,
) -> (mpsc::UnboundedSender<Event>, tokio::task::JoinHandle<()>) {
    let (etx, mut erx) = mpsc::unbounded_channel();
    let tx = tx.clone();
    let sat = sat.clone();
    let task = tokio::spawn(async move {
        // Steps started and not yet ended: the running-steps gauge gives them back
        // when the build ends without closing them (canceled).
        let mut open = std::collections::HashSet::new();
        let metrics = &sat.inner.metrics;
        let mut client_gone = false;
        while let Some(e) = erx.recv().await {
            match &e {
                Event::Started { id, .. } if open.insert(*id) => metrics.step_started(),
                Event::Done { id, .. } | Event::Failed { id, .. } if open.remove(id) => {
                    metrics.step_ended(matches!(e, Event::Failed { .. }));
                }
                Event::Cached { .. } => metrics.step_cached(),
                _ => {}
            }
            // Events keep being counted after the client left.
            if !client_gone && tx.send(Ok(to_proto(e))).await.is_err() {
                client_gone = true;
            }
        }
        metrics.steps_abandoned(open.len());
    });
    (etx, task)
}

/// Secrets as the request carries them: values, kept in memory.
fn secret_values(secrets: HashMap<String, Vec<u8>>) -> HashMap<String, SecretSource> {
    secrets
        .into_iter()
        .map(|(k, v)| (k, SecretSource::Value(Arc::from(v))))
        .collect()
}

/// The client a build pulls base images with: mirrors and per-registry TLS of
/// [registries], the satellite's own Docker credentials.
fn pull_client(sat: &Satellite, network: &berth_net::Network) -> berth_client::Client {
    berth_client::Client::new(berth_client::ClientConfig {
        hosts: sat.inner.config.hosts(),
        docker_config: berth_client::DockerConfig::load(),
        credentials: HashMap::new(),
        network: network.clone(),
    })
    .with_scheme_memory(sat.inner.dirs.root.join("resolved").join("_schemes"))
}

/// The client a push from the satellite goes out with: the client's credentials serve
/// this push and go with it; nothing is stored.
fn push_client(
    sat: &Satellite,
    network: berth_net::Network,
    credentials: HashMap<String, proto::Credential>,
) -> berth_client::Client {
    let credentials = credentials
        .into_iter()
        .map(|(host, c)| {
            (
                host,
                berth_client::Credentials {
                    username: c.username,
                    password: c.password,
                },
            )
        })
        .collect();
    berth_client::Client::new(berth_client::ClientConfig {
        credentials,
        hosts: sat.inner.config.hosts(),
        network,
        ..Default::default()
    })
}

fn compression(name: &str) -> berth_build::Compression {
    match name {
        "zstd" => berth_build::Compression::Zstd,
        "none" | "uncompressed" => berth_build::Compression::Uncompressed,
        _ => berth_build::Compression::Gzip,
    }
}

/// A fresh executor for one build, registered as running (so drain and cancel reach
/// its containers). Privileged steps only for a build granted security.insecure
/// (asked for, and allowed by the operator), whatever its frontend checked.
fn build_executor(
    sat: &Satellite,
    id: &str,
    client: &str,
    allow: &[Entitlement],
    cancel: &berth_build::Cancel,
) -> Result<Arc<dyn berth_exec::Executor>, SatError> {
    let privileged = allow.contains(&Entitlement::SecurityInsecure);
    let executor: Arc<dyn berth_exec::Executor> = Arc::new(
        berth_exec::Runc::new(&sat.inner.dirs.root.join("exec"))
            .map_err(berth_build::BuildError::from)?
            .with_privileged(privileged),
    );
    sat.inner.builds.lock().expect("builds lock").insert(
        id.to_owned(),
        RunningBuild {
            client: client.to_owned(),
            cancel: cancel.clone(),
            executor: executor.clone(),
        },
    );
    Ok(executor)
}

/// Runs `build` to its end; a client that goes away (Ctrl-C, lost connection) cancels
/// it first.
async fn until_done<T>(
    build: impl std::future::Future<Output = berth_build::Result<T>>,
    tx: &mpsc::Sender<Result<proto::BuildEvent, Status>>,
    cancel: &berth_build::Cancel,
    executor: &dyn berth_exec::Executor,
    client: &str,
    id: &str,
) -> berth_build::Result<T> {
    let mut build = std::pin::pin!(build);
    tokio::select! {
        r = &mut build => r,
        () = tx.closed() => {
            tracing::info!(%client, build = %id, "client disconnected: canceling its build");
            cancel.cancel();
            executor.cancel();
            build.await
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_build(
    sat: &Satellite,
    id: &str,
    client: &str,
    contexts: ClientContexts,
    r: proto::BuildRequest,
    allow: Vec<Entitlement>,
    cancel: &berth_build::Cancel,
    tx: mpsc::Sender<Result<proto::BuildEvent, Status>>,
) -> Result<proto::BuildResult, SatError> {
    let (_held, tree) = checkout(sat, &contexts, &r.context, &r.snapshot).await?;
    // The Dockerfile (and its own ignore file) live beside the context, for this build.
    let build_dir = sat
        .inner
        .dirs
        .root
        .join("satellite/builds")
        .join(crate::context::uuid_like());
    std::fs::create_dir_all(&build_dir).map_err(SatError::io("create", &build_dir))?;
    let _cleanup = RemoveOnDrop(build_dir.clone());
    let name = safe_file_name(&r.dockerfile_name);
    let dockerfile = build_dir.join(&name);
    std::fs::write(&dockerfile, &r.dockerfile).map_err(SatError::io("write", &dockerfile))?;
    if let Some(ignore) = &r.dockerignore {
        let p = build_dir.join(format!("{name}.dockerignore"));
        std::fs::write(&p, ignore).map_err(SatError::io("write", &p))?;
    }

    // `--ssh`: a socket per agent id in the build's folder, relayed over the client's
    // SshAgent session (which must be this client's).
    let mut ssh = HashMap::new();
    let mut _relays = Vec::new();
    if !r.ssh.is_empty() {
        let session = sat
            .inner
            .ssh_sessions
            .lock()
            .expect("ssh sessions lock")
            .get(&r.ssh_session)
            .filter(|s| s.client == client)
            .cloned()
            .ok_or_else(|| {
                SatError::BadRequest(
                    "--ssh: the build names no open SSH agent session of this client; \
                     update berth on the client"
                        .into(),
                )
            })?;
        for (i, agent) in r.ssh.iter().enumerate() {
            let socket = build_dir.join(format!("ssh-{i}.sock"));
            _relays.push(
                session
                    .listen(agent.clone(), &socket)
                    .map_err(SatError::io("listen", &socket))?,
            );
            ssh.insert(agent.clone(), socket);
        }
    }

    let platform = request_platform(&r.platform)?;
    let (etx, forward) = forward_events(sat, &tx);
    let cancel = cancel.clone();
    let tags = r.tags.clone();
    let extra_hosts = r
        .extra_hosts
        .iter()
        .map(|h| berth_build::parse_extra_host(h))
        .collect::<Result<Vec<_>, _>>()
        .map_err(SatError::BadRequest)?;
    // The satellite's environment with [network] of its config on top.
    let network = sat.inner.config.network();
    let opts = BuildOptions {
        dockerfile,
        context: tree,
        tags: r.tags,
        target: (!r.target.is_empty()).then_some(r.target),
        build_args: r.build_args.into_iter().collect::<BTreeMap<_, _>>(),
        secrets: secret_values(r.secrets),
        ssh,
        no_cache: r.no_cache,
        source_date_epoch: r.source_date_epoch,
        // Steps get the satellite's proxy variables; the solver keeps them out of cache
        // keys, so a satellite behind a proxy shares keys with one that is not.
        proxy_env: network.proxies.step_env(),
        outputs: Vec::new(),
        progress: Arc::new(Forward(etx)),
        cancel: cancel.clone(),
        client: Some(Arc::new(pull_client(sat, &network))),
        // As a local build: stored tags are used as they are unless the client asks.
        resolve: berth_build::ResolvePolicy {
            pull: r.pull,
            ttl: r.resolve_ttl_secs.map(std::time::Duration::from_secs),
        },
        compression: compression(&r.compression),
        force_compression: r.force_compression,
        allow: allow.clone(),
        extra_hosts,
        ca_bundle: None,
        step_slots: None,
        platform,
    };
    let step_ca = network
        .step_bundle(&sat.inner.dirs.root.join("tmp"))
        .map_err(|e| SatError::Internal(format!("[network] ca_to_steps: {e}")))?;
    let opts = BuildOptions {
        ca_bundle: step_ca.as_ref().map(|b| b.path().to_path_buf()),
        step_slots: sat.inner.step_slots.clone(),
        ..opts
    };
    let root = sat.inner.dirs.root.clone();
    let executor = build_executor(sat, id, client, &allow, &cancel)?;
    let result = until_done(
        berth_build::build(&root, sat.inner.store.clone(), executor.clone(), opts),
        &tx,
        &cancel,
        executor.as_ref(),
        client,
        id,
    )
    .await;
    // The build held the event sender: the forwarder has seen the end.
    let _ = forward.await;
    let res = result?;
    let pusher =
        (r.push || !r.push_to.is_empty()).then(|| push_client(sat, network, r.credentials));
    let mut pushed = Vec::new();
    if let Some(client) = pusher.as_ref().filter(|_| r.push) {
        for t in &tags {
            pushed.push(push_one(sat, client, &res.manifest, t).await?);
        }
    }
    let (pushed_to, push_error) = match &pusher {
        Some(client) => {
            push_named(sat, client, r.push_to, |name| {
                tags.iter().any(|t| t == name).then(|| res.manifest.clone())
            })
            .await
        }
        None => Default::default(),
    };
    Ok(proto::BuildResult {
        manifest: res.manifest.to_string(),
        image_id: res.image_id.to_string(),
        layers: res.layers as u32,
        pushed,
        pushed_to,
        push_error,
        ..Default::default()
    })
}

/// `BuildRequest::push_to` (`berth deploy`): each named image to its destination, in the
/// names' order, until one fails. A failure (no route to the registry, refused
/// credentials) is the result's `push_error`, not the build's: the image stays here and
/// the client fetches it to push it itself.
async fn push_named(
    sat: &Satellite,
    client: &berth_client::Client,
    push_to: HashMap<String, String>,
    manifest_of: impl Fn(&str) -> Option<berth_oci::Digest>,
) -> (HashMap<String, String>, String) {
    let mut wanted: Vec<(String, String)> = push_to.into_iter().collect();
    wanted.sort();
    let mut pushed = HashMap::new();
    for (name, dest) in wanted {
        let Some(manifest) = manifest_of(&name) else {
            return (
                pushed,
                format!("the build made no image named {name} to push to {dest}"),
            );
        };
        match push_one(sat, client, &manifest, &dest).await {
            Ok(p) => {
                pushed.insert(name, p);
            }
            Err(e) => {
                tracing::warn!(image = %name, %dest, "push for a deploy failed: {e}");
                return (pushed, e.to_string());
            }
        }
    }
    (pushed, String::new())
}

/// Pushes `manifest` from the satellite's store to `name`: `registry/repository@digest`.
async fn push_one(
    sat: &Satellite,
    client: &berth_client::Client,
    manifest: &berth_oci::Digest,
    name: &str,
) -> Result<String, SatError> {
    let dest: berth_oci::Reference = name
        .parse()
        .map_err(|e| SatError::BadRequest(format!("--push to {name}: {e}")))?;
    let digest = berth_build::push_image(&sat.inner.store, client, manifest, &dest, &|line| {
        tracing::debug!("{line}")
    })
    .await?;
    Ok(format!("{}/{}@{digest}", dest.registry, dest.repository))
}

/// An Earthfile target over the context the client sent (its root is the folder
/// `berth +target` ran in): the same `earth_build` a local build runs, with what
/// would touch the satellite's host refused (`EarthOptions::satellite`) and `SAVE
/// ARTIFACT … AS LOCAL` outputs sent back to the client ([`SendLocals`]). Saved images
/// stay in the satellite's store, where the client fetches them; `SAVE IMAGE --push`
/// images go out from here with `--push`.
#[allow(clippy::too_many_arguments)]
async fn run_earth(
    sat: &Satellite,
    id: &str,
    client: &str,
    contexts: ClientContexts,
    r: proto::BuildRequest,
    allow: Vec<Entitlement>,
    cancel: &berth_build::Cancel,
    tx: mpsc::Sender<Result<proto::BuildEvent, Status>>,
) -> Result<proto::BuildResult, SatError> {
    if r.target.is_empty() {
        return Err(SatError::BadRequest(
            "an Earthfile build names its target (+target)".into(),
        ));
    }
    if !r.artifact.is_empty() && !r.artifact_dest.starts_with('/') {
        return Err(SatError::BadRequest(
            "--artifact: the destination must be absolute (on the client)".into(),
        ));
    }
    let platform = request_platform(&r.platform)?;
    let (_held, tree) = checkout(sat, &contexts, &r.context, &r.snapshot).await?;
    let tree = tree
        .canonicalize()
        .map_err(SatError::io("resolve", &tree))?;
    let (etx, forward) = forward_events(sat, &tx);
    let network = sat.inner.config.network();
    let step_ca = network
        .step_bundle(&sat.inner.dirs.root.join("tmp"))
        .map_err(|e| SatError::Internal(format!("[network] ca_to_steps: {e}")))?;
    let executor = build_executor(sat, id, client, &allow, cancel)?;
    let opts = berth_build::EarthBuildOptions {
        dir: tree.clone(),
        target: r.target.clone(),
        args: r.build_args.into_iter().collect(),
        secrets: secret_values(r.secrets),
        // No agent of the client reaches a satellite: RUN --ssh fails there.
        ssh: HashMap::new(),
        no_cache: r.no_cache,
        push: r.push,
        ci: r.ci,
        strict: r.strict || r.ci,
        no_output: r.no_output || r.ci,
        output: if !r.artifact.is_empty() {
            // Placed on the client, by the sink below: never written here.
            berth_build::EarthOutput::Artifact {
                path: r.artifact.clone(),
                dest: PathBuf::from(&r.artifact_dest),
            }
        } else if r.image_only {
            berth_build::EarthOutput::Image
        } else {
            berth_build::EarthOutput::Normal
        },
        source_date_epoch: r.source_date_epoch,
        proxy_env: network.proxies.step_env(),
        progress: Arc::new(Forward(etx)),
        cancel: cancel.clone(),
        client: Some(Arc::new(pull_client(sat, &network))),
        compression: compression(&r.compression),
        allow,
        ca_bundle: step_ca.as_ref().map(|b| b.path().to_path_buf()),
        resolve: berth_build::ResolvePolicy {
            pull: r.pull,
            ttl: r.resolve_ttl_secs.map(std::time::Duration::from_secs),
        },
        satellite: true,
        local_sink: Some(Arc::new(SendLocals {
            tx: tx.clone(),
            root: tree,
            next: std::sync::atomic::AtomicU32::new(0),
        })),
        step_slots: sat.inner.step_slots.clone(),
        platform,
    };
    let root = sat.inner.dirs.root.clone();
    let result = until_done(
        berth_build::earth_build(&root, sat.inner.store.clone(), executor.clone(), opts),
        &tx,
        cancel,
        executor.as_ref(),
        client,
        id,
    )
    .await;
    let _ = forward.await;
    let res = result?;
    let mut images = Vec::new();
    let pusher =
        (r.push || !r.push_to.is_empty()).then(|| push_client(sat, network, r.credentials));
    let (pushed_to, push_error) = match &pusher {
        Some(client) => {
            push_named(sat, client, r.push_to, |name| {
                res.images
                    .iter()
                    .find(|i| i.name == name)
                    .map(|i| i.manifest.clone())
            })
            .await
        }
        None => Default::default(),
    };
    for img in res.images {
        let pushed = match &pusher {
            Some(p) if img.push && r.push => push_one(sat, p, &img.manifest, &img.name).await?,
            _ => String::new(),
        };
        images.push(proto::SavedImage {
            name: img.name,
            manifest: img.manifest.to_string(),
            image_id: img.image_id.to_string(),
            push: img.push,
            pushed,
        });
    }
    Ok(proto::BuildResult {
        images,
        targets: res.targets as u32,
        pushed_to,
        push_error,
        ..Default::default()
    })
}

/// Sends each `SAVE ARTIFACT … AS LOCAL` output to the client as a tar stream of its
/// staged folder, in [`proto::LocalArtifact`] pieces of about a MiB, with its place
/// relative to the context's root (`root`). Called on a blocking thread.
struct SendLocals {
    tx: mpsc::Sender<Result<proto::BuildEvent, Status>>,
    root: PathBuf,
    next: std::sync::atomic::AtomicU32,
}

impl berth_build::LocalSink for SendLocals {
    fn local(&self, output: &berth_build::LocalOutput, staged: &Path) -> berth_build::Result<()> {
        let dest = client_dest(&self.root, &output.dest);
        let mut pieces = Pieces {
            tx: &self.tx,
            head: proto::LocalArtifact {
                index: self.next.fetch_add(1, Ordering::Relaxed),
                dest,
                glob: output.glob,
                name: output.name.clone(),
                ..Default::default()
            },
            buf: Vec::with_capacity(PIECE),
        };
        let out = staged.join("out");
        let io = |e: std::io::Error| {
            berth_build::BuildError::Io(format!("send {} to the client: {e}", output.dest))
        };
        {
            let mut tar = tar::Builder::new(&mut pieces);
            tar.follow_symlinks(false);
            if std::fs::symlink_metadata(&out).is_ok() {
                tar.append_dir_all("out", &out).map_err(io)?;
            }
            tar.finish().map_err(io)?;
        }
        pieces.send(true).map_err(io)
    }
}

const PIECE: usize = 1 << 20;

/// A writer cutting a tar stream into [`proto::LocalArtifact`] messages.
struct Pieces<'a> {
    tx: &'a mpsc::Sender<Result<proto::BuildEvent, Status>>,
    head: proto::LocalArtifact,
    buf: Vec<u8>,
}

impl Pieces<'_> {
    fn send(&mut self, last: bool) -> std::io::Result<()> {
        let msg = proto::LocalArtifact {
            data: std::mem::replace(&mut self.buf, Vec::with_capacity(PIECE)),
            last,
            ..self.head.clone()
        };
        self.tx
            .blocking_send(Ok(proto::BuildEvent {
                event: Some(Ev::Local(msg)),
            }))
            .map_err(|_| std::io::Error::other("the client went away"))
    }
}

impl std::io::Write for Pieces<'_> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= PIECE {
            self.send(false)?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Where the client writes an output the satellite would have written at `dest`: a
/// place written relative to an Earthfile (under `root` as written, even if it climbs
/// out with `..`) relative to the context's root; an absolute one as it is. A trailing
/// `/` stays.
fn client_dest(root: &Path, dest: &str) -> String {
    let below = dest.starts_with(&format!("{}/", root.display()));
    if !below {
        return dest.to_owned();
    }
    let mut clean = PathBuf::new();
    for c in Path::new(dest).components() {
        match c {
            std::path::Component::ParentDir => {
                clean.pop();
            }
            std::path::Component::CurDir => {}
            c => clean.push(c),
        }
    }
    let mut rel = relative_to(root, &clean);
    if dest.ends_with('/') {
        rel.push('/');
    }
    rel
}

/// `to` relative to `from` (both absolute and clean), `/`-separated, climbing with
/// `..` where `to` is not below `from`; `.` for `from` itself.
fn relative_to(from: &Path, to: &Path) -> String {
    let (f, t): (Vec<_>, Vec<_>) = (from.components().collect(), to.components().collect());
    let common = f.iter().zip(&t).take_while(|(a, b)| a == b).count();
    let parts: Vec<String> = std::iter::repeat_n("..".to_string(), f.len() - common)
        .chain(
            t[common..]
                .iter()
                .map(|c| c.as_os_str().to_string_lossy().into_owned()),
        )
        .collect();
    if parts.is_empty() {
        ".".into()
    } else {
        parts.join("/")
    }
}

fn safe_file_name(name: &str) -> String {
    let n: String = name.chars().filter(|c| !matches!(c, '/' | '\0')).collect();
    if n.is_empty() || n == "." || n == ".." {
        "Dockerfile".into()
    } else {
        n
    }
}

struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `BuildRequest.platform`: `None` for "" (the satellite's own).
fn request_platform(p: &str) -> Result<Option<berth_build::Platform>, SatError> {
    if p.is_empty() {
        return Ok(None);
    }
    berth_build::Platform::parse(p)
        .map(Some)
        .map_err(|m| SatError::BadRequest(format!("--platform: {m}")))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    #[test]
    fn local_outputs_are_placed_relative_to_the_context() {
        let root = Path::new("/sat/ctx/tree");
        assert_eq!(
            super::relative_to(root, Path::new("/sat/ctx/tree/out/a")),
            "out/a"
        );
        assert_eq!(super::relative_to(root, root), ".");
        assert_eq!(super::relative_to(root, Path::new("/sat/x/y")), "../../x/y");
        assert_eq!(super::client_dest(root, "/sat/ctx/tree/./dist/"), "dist/");
        assert_eq!(
            super::client_dest(root, "/sat/ctx/tree/sub/../../up/f"),
            "../up/f"
        );
        assert_eq!(super::client_dest(root, "/tmp/abs"), "/tmp/abs");
    }
}
