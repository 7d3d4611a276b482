//! The satellite: its identity and trust on disk, and one TLS listener serving the gRPC
//! control API and the registry API over the satellite's store.
//!
//! Under `<root>/satellite/`:
//!
//! ```text
//! pki/ca.{crt,key}      the satellite's own CA (key 0600, never sent)
//! server.{crt,key}      the listener's certificate, issued again at each start
//! address               host:port that tokens carry
//! name                  the satellite's name
//! tokens/               enrollment and pull tokens (secrets hashed)
//! revoked.json          revoked client certificates
//! clients/<serial>.json the client certificates issued
//! contexts/<client>/    build contexts kept between builds (see `context`)
//! builds/<id>/          a running build's Dockerfile (removed after)
//! ```

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use berth_build::Entitlement;
pub use berth_pki::ClientRecord;
use berth_pki::{
    Authority, Ca, ClientAuth, Identity, RevocationList, Token, TokenOptions, TokenStore, Validity,
};

use crate::context::write_atomic;
use crate::error::SatError;

/// The default port of `berth satellite serve`.
pub const DEFAULT_PORT: u16 = 8372;

/// A satellite's state directory.
#[derive(Debug, Clone)]
pub struct SatelliteRoot {
    /// The berth data root (store, build cache); the satellite's own files are in
    /// `satellite/` under it.
    pub root: PathBuf,
}

impl SatelliteRoot {
    /// The satellite directory of data root `root`.
    pub fn new(root: &Path) -> SatelliteRoot {
        SatelliteRoot {
            root: root.to_path_buf(),
        }
    }

    fn dir(&self) -> PathBuf {
        self.root.join("satellite")
    }

    fn pki(&self) -> PathBuf {
        self.authority().ca_dir()
    }

    /// The satellite's trust (berth-pki's [`Authority`]): CA, tokens, revocations, clients.
    pub fn authority(&self) -> Authority {
        Authority::new(&self.dir())
    }

    /// The token store.
    pub fn tokens(&self) -> Result<TokenStore, SatError> {
        Ok(self.authority().tokens()?)
    }

    /// The revocation list.
    pub fn revocations(&self) -> Result<RevocationList, SatError> {
        Ok(self.authority().revocations()?)
    }

    /// The CA, which must exist (the satellite has been started once).
    pub fn ca(&self) -> Result<Ca, SatError> {
        if !self.authority().has_ca() {
            return Err(SatError::BadRequest(format!(
                "no satellite in {}: start it once with `berth satellite serve --root {}`",
                self.root.display(),
                self.root.display()
            )));
        }
        Ok(self.authority().ca()?)
    }

    /// The address tokens carry, as recorded by the last `serve`.
    pub fn address(&self) -> Result<String, SatError> {
        self.authority().address().ok_or_else(|| {
            SatError::BadRequest(format!(
                "{} is missing: start the satellite once with `berth satellite serve`",
                self.dir().join("address").display()
            ))
        })
    }

    /// Creates a token for this satellite.
    pub fn create_token(&self, options: TokenOptions) -> Result<Token, SatError> {
        self.ca()?;
        Ok(self.authority().create_token(options, &self.address()?)?)
    }

    /// Every client certificate issued, oldest first.
    pub fn clients(&self) -> Result<Vec<ClientRecord>, SatError> {
        Ok(self.authority().clients()?)
    }

    /// Revokes every certificate of client `who` (a name or a serial); returns how many.
    pub fn revoke_client(&self, who: &str, reason: &str) -> Result<usize, SatError> {
        let n = self.authority().revoke_client(who, reason)?;
        if n == 0 {
            return Err(SatError::BadRequest(format!(
                "no client named or with serial {who:?}; see `berth satellite clients ls`"
            )));
        }
        Ok(n)
    }
}

pub(crate) fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// How `berth satellite serve` runs.
#[derive(Debug, Clone)]
pub struct SatelliteOptions {
    /// The berth data root.
    pub root: PathBuf,
    /// The satellite's name (default: the host name).
    pub name: String,
    /// Names and addresses clients use to reach it; the first goes into tokens. Every
    /// address of the host is added to the certificate as well.
    pub advertise: Vec<String>,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Entitlements the operator lets builds ask for.
    pub allow: Vec<Entitlement>,
    /// How long client certificates are valid (clients renew at half).
    pub client_validity: Duration,
    /// On SIGTERM, how long running builds may take to finish before they are canceled.
    pub drain_timeout: Duration,
    /// Bytes of build contexts kept per client between builds (least recently built
    /// go first).
    pub context_cache: u64,
    /// A directory that may hold the CA (`ca.crt`, `ca.key`), e.g. a mounted Kubernetes
    /// Secret: when it does, that CA is installed into the root and used; when it is
    /// empty or absent, the root's own CA is (made on the first start).
    pub ca_dir: Option<PathBuf>,
    /// The satellite's configuration (`--config`, `BERTH_SATELLITE_CONFIG`): its
    /// `[builder] allow` adds to `allow`; `[network]` and `[registries]` serve the
    /// satellite's own pulls and pushes, and RUN steps get its proxy variables.
    pub config: crate::config::SatelliteConfig,
}

/// A running satellite's shared state.
#[derive(Clone)]
pub struct Satellite {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) dirs: SatelliteRoot,
    pub(crate) name: String,
    pub(crate) ca: Ca,
    pub(crate) server: Identity,
    pub(crate) tokens: TokenStore,
    pub(crate) revocations: Arc<RevocationList>,
    pub(crate) store: berth_store::Store,
    pub(crate) allow: Vec<Entitlement>,
    pub(crate) config: crate::config::SatelliteConfig,
    /// `[builder] max_parallel_steps`, shared by every build.
    pub(crate) step_slots: Option<Arc<berth_build::StepSlots>>,
    pub(crate) client_validity: Duration,
    /// Builds running now; drain waits for it to reach 0.
    pub(crate) running: tokio::sync::watch::Sender<u32>,
    pub(crate) draining: AtomicBool,
    pub(crate) drain_timeout: Duration,
    pub(crate) context_cache: u64,
    /// The running builds by id, to cancel them when the drain times out.
    pub(crate) builds: Mutex<HashMap<String, RunningBuild>>,
    pub(crate) metrics: crate::metrics::Metrics,
    /// One lock per client context: a context's tree must not change under a build.
    pub(crate) contexts: Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>,
    /// Open SshAgent sessions by id (`--ssh` forwarded by clients).
    pub(crate) ssh_sessions: Mutex<HashMap<String, Arc<crate::ssh::Session>>>,
}

/// A build in progress, as drain needs it.
pub(crate) struct RunningBuild {
    pub(crate) client: String,
    pub(crate) cancel: berth_build::Cancel,
    pub(crate) executor: Arc<dyn berth_exec::Executor>,
}

/// What [`Satellite::open`] found or made.
#[derive(Debug)]
pub struct Opened {
    /// The CA was made now: this is the satellite's first start.
    pub first_start: bool,
    /// The address tokens carry.
    pub address: String,
}

impl Satellite {
    /// Loads the satellite's identity (making its CA on the first start) and issues the
    /// listener's certificate for the advertised names and the host's addresses.
    pub fn open(opts: &SatelliteOptions) -> Result<(Satellite, Opened), SatError> {
        let advertised =
            berth_pki::Advertised::parse(&opts.advertise).map_err(SatError::BadRequest)?;
        let dirs = SatelliteRoot::new(&opts.root);
        let dir = dirs.dir();
        std::fs::create_dir_all(&dir).map_err(SatError::io("create", &dir))?;
        check_overlay_upper(&opts.root, &dir)?;
        let (ca, first_start) = match opts.ca_dir.as_deref() {
            Some(given) if given.join("ca.crt").exists() => {
                (install_ca(given, &dirs.pki())?, false)
            }
            _ => Ca::load_or_create(&dirs.pki(), &opts.name)?,
        };
        let mut ips = advertised.ips.clone();
        if !opts.addr.ip().is_unspecified() {
            ips.push(opts.addr.ip());
        } else {
            ips.extend(berth_exec::host_addresses().into_iter().map(|(ip, _)| ip));
        }
        ips.push(IpAddr::from([127, 0, 0, 1]));
        ips.push(IpAddr::from(std::net::Ipv6Addr::LOCALHOST));
        ips.sort();
        ips.dedup();
        let mut names = advertised.names.clone();
        if names.is_empty() {
            names.push("localhost".into());
        }
        let server = ca.issue_server_cert(
            &names,
            &ips,
            Validity::from_now(berth_pki::DEFAULT_SERVER_VALIDITY),
        )?;
        server.save(&dir, "server")?;
        let fallback = match opts.addr.ip() {
            ip if ip.is_unspecified() => ips
                .iter()
                .find(|i| !i.is_loopback() && i.is_ipv4())
                .map_or("127.0.0.1".into(), ToString::to_string),
            ip => ip.to_string(),
        };
        let address = advertised.token_address(&fallback, opts.addr.port());
        dirs.authority().set_address(&address)?;
        write_atomic(&dir.join("name"), opts.name.as_bytes())?;
        let store = berth_store::Store::open(&opts.root).map_err(|e| {
            SatError::Internal(format!("open store at {}: {e}", opts.root.display()))
        })?;
        let sat = Satellite {
            inner: Arc::new(Inner {
                tokens: dirs.tokens()?,
                revocations: Arc::new(dirs.revocations()?),
                dirs,
                name: opts.name.clone(),
                ca,
                server,
                store,
                allow: {
                    let mut allow = opts.allow.clone();
                    allow.extend(&opts.config.builder.allow);
                    allow.sort();
                    allow.dedup();
                    allow
                },
                config: opts.config.clone(),
                step_slots: opts
                    .config
                    .builder
                    .max_parallel_steps
                    .map(|n| Arc::new(berth_build::StepSlots::new(n))),
                client_validity: opts.client_validity,
                running: tokio::sync::watch::Sender::new(0),
                draining: AtomicBool::new(false),
                drain_timeout: opts.drain_timeout,
                context_cache: opts.context_cache,
                builds: Mutex::new(HashMap::new()),
                metrics: crate::metrics::Metrics::default(),
                contexts: Mutex::new(HashMap::new()),
                ssh_sessions: Mutex::new(HashMap::new()),
            }),
        };
        Ok((
            sat,
            Opened {
                first_start,
                address,
            },
        ))
    }

    /// The satellite's state directory.
    pub fn root(&self) -> &SatelliteRoot {
        &self.inner.dirs
    }

    /// Builds running now.
    pub fn running_builds(&self) -> u32 {
        *self.inner.running.borrow()
    }

    /// Refuse new builds from now on (running ones go on).
    pub fn drain(&self) {
        self.inner.draining.store(true, Ordering::SeqCst);
    }

    /// Drains: refuses new builds, waits up to `timeout` for the running ones to end, then
    /// cancels those still running (their containers are killed and removed) and waits
    /// for them to wind down.
    pub async fn drain_builds(&self, timeout: Duration) {
        self.drain();
        let mut running = self.inner.running.subscribe();
        let n = *running.borrow();
        if n == 0 {
            tracing::info!("draining: no build running");
            return;
        }
        tracing::info!(
            builds = n,
            timeout_s = timeout.as_secs(),
            "draining: new builds are refused; waiting for the running ones"
        );
        if tokio::time::timeout(timeout, running.wait_for(|n| *n == 0))
            .await
            .is_ok()
        {
            tracing::info!("draining: every build ended");
            return;
        }
        for (id, b) in self.inner.builds.lock().expect("builds lock").iter() {
            tracing::warn!(build = %id, client = %b.client, "drain timeout: canceling the build");
            b.cancel.cancel();
            b.executor.cancel();
        }
        // Canceled steps kill their containers within a second or two; a build stuck
        // beyond this is left to the process exit.
        if tokio::time::timeout(Duration::from_secs(60), running.wait_for(|n| *n == 0))
            .await
            .is_err()
        {
            tracing::error!(
                builds = *running.borrow(),
                "canceled builds did not end within 60 s; exiting anyway"
            );
        }
    }

    /// The TLS acceptor: the satellite's server certificate, client certificates of its
    /// own CA checked against the revocation list, optional (enrollment comes without
    /// one; the service refuses every other call then). ALPN offers h2 (gRPC) and
    /// HTTP/1.1 (registry clients such as Docker).
    pub fn tls_acceptor(&self) -> Result<tokio_rustls::TlsAcceptor, SatError> {
        let mut config = berth_pki::server_config(
            self.inner.ca.cert_der(),
            &self.inner.server,
            self.inner.revocations.clone(),
            ClientAuth::Optional,
        )?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
    }

    /// Everything the listener serves: the gRPC control API, `/healthz`, and the registry
    /// API (`/v2/`) over the satellite's store for enrolled clients (everything) and
    /// holders of a pull token (basic auth, pull only).
    pub fn router(&self) -> axum::Router {
        let mut config = berth_registry::Config::new(self.inner.store.clone());
        config.client_certificates = true;
        // Without a client certificate, only pull tokens are users.
        let tokens = crate::pull::PullTokens {
            tokens: self.inner.tokens.clone(),
        };
        config.auth = Some(berth_registry::Auth::with_credentials(
            tokens,
            berth_registry::LoginLimits::default(),
        ));
        let registry = berth_registry::Registry::new(config);
        let grpc = crate::proto::satellite_server::SatelliteServer::new(crate::service::Service {
            sat: self.clone(),
        })
        .max_decoding_message_size(64 << 20);
        registry
            .router()
            .route_service("/berth.satellite.v1.Satellite/{*method}", grpc)
            .route(
                "/healthz",
                axum::routing::get(healthz).with_state(self.clone()),
            )
            .route(
                "/metrics",
                axum::routing::get(metrics).with_state(self.clone()),
            )
    }

    /// Serve on `listener` until `shutdown` resolves; then drain ([`Satellite::drain_builds`]
    /// with the options' drain timeout) while still answering, so that new builds get a
    /// clear refusal instead of a closed port; then close the listener.
    pub async fn serve(
        &self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), SatError> {
        let options = berth_registry::ServeOptions {
            // A build step may print nothing for a long time; callers are authenticated.
            stall_timeout: Duration::from_secs(24 * 3600),
            idle_timeout: Duration::from_secs(600),
            ..Default::default()
        };
        let sat = self.clone();
        let shutdown = async move {
            shutdown.await;
            sat.drain_builds(sat.inner.drain_timeout).await;
        };
        berth_registry::serve_with(
            listener,
            self.router(),
            Some(self.tls_acceptor()?),
            options,
            shutdown,
        )
        .await
        .map_err(|e| SatError::Internal(format!("serve: {e}")))
    }
}

async fn healthz(
    axum::extract::State(sat): axum::extract::State<Satellite>,
) -> (axum::http::StatusCode, String) {
    if sat.inner.draining.load(Ordering::SeqCst) {
        (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "draining\n".into(),
        )
    } else {
        (axum::http::StatusCode::OK, "ok\n".into())
    }
}

/// `/metrics`: Prometheus text, no client certificate needed (counts only).
async fn metrics(
    axum::extract::State(sat): axum::extract::State<Satellite>,
) -> impl axum::response::IntoResponse {
    let text = tokio::task::spawn_blocking(move || crate::metrics::render(&sat))
        .await
        .unwrap_or_else(|e| format!("# metrics failed: {e}\n"));
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
}

/// Installs the CA in `given` (a mounted Secret) into the root's `pki` directory, so every
/// command on the root (`token create` pins it) sees the CA the listener uses.
fn install_ca(given: &Path, pki: &Path) -> Result<Ca, SatError> {
    let ca = Ca::load(given)?;
    match Ca::load(pki) {
        Ok(own) if own.pin() == ca.pin() => return Ok(own),
        Ok(own) => tracing::warn!(
            given = %given.display(),
            replaced = %own.pin(),
            "the CA in --ca-dir differs from the root's: the root's is replaced"
        ),
        Err(_) => {}
    }
    ca.save(pki)?;
    Ok(ca)
}

/// Checks that overlayfs can keep upper directories under the data root `root` (in
/// `scratch`, a directory on the same file system), as every build step needs.
///
/// Why at start: a root that cannot fails only at the first RUN or COPY, with the
/// kernel's bare `EINVAL` from the overlay mount. That is the case of a root on overlayfs,
/// such as a container's own root file system: a satellite in Docker must keep its root
/// on a volume or a bind mount. Without the right to mount (not root), nothing can be
/// checked and builds say so themselves.
fn check_overlay_upper(root: &Path, scratch: &Path) -> Result<(), SatError> {
    let probe = scratch.join(format!("overlay-check-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&probe);
    for d in ["lower", "upper", "work", "merged"] {
        let p = probe.join(d);
        std::fs::create_dir_all(&p).map_err(SatError::io("create", &p))?;
    }
    let mut plan = berth_oci::Mount::default();
    plan.set_destination(PathBuf::from("/"));
    plan.set_typ(Some("overlay".into()));
    plan.set_source(Some(PathBuf::from("overlay")));
    plan.set_options(Some(vec![
        format!("lowerdir={}", probe.join("lower").display()),
        format!("upperdir={}", probe.join("upper").display()),
        format!("workdir={}", probe.join("work").display()),
    ]));
    let mounted = berth_exec::mount_rootfs(&[plan], &probe.join("merged")).map(|g| g.unmount());
    let _ = std::fs::remove_dir_all(&probe);
    let error = match mounted {
        Ok(_) => return Ok(()),
        Err(berth_exec::Error::Mount { source, .. })
            if source.raw_os_error() == Some(rustix::io::Errno::PERM.raw_os_error()) =>
        {
            tracing::debug!(
                "not allowed to mount: overlayfs in {} not checked",
                root.display()
            );
            return Ok(());
        }
        Err(e) => e,
    };
    // Magic numbers are 32 bits; f_type's width differs between architectures.
    const OVERLAYFS_SUPER_MAGIC: u32 = 0x794c_7630;
    let on_overlay =
        rustix::fs::statfs(root).is_ok_and(|s| s.f_type as u32 == OVERLAYFS_SUPER_MAGIC);
    let why = if on_overlay {
        " (it is on overlayfs, as a container's own root file system is)"
    } else {
        ""
    };
    Err(SatError::Unavailable(format!(
        "the data root {} cannot hold overlayfs upper directories{why}, which every build \
         step needs: a test overlay failed: {error}. Put the root on a local disk file \
         system (ext4, xfs) with --root; in a container, on a volume or a bind mount \
         (docker run -v berth-satellite:/var/lib/berth …)",
        root.display()
    )))
}
