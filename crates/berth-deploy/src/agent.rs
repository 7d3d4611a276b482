//! `berth agent serve`: the service on each host. One mutual-TLS listener (JSON calls of
//! [`crate::api`]) in front of an [`Engine`]; trust is berth-pki's [`Authority`], as for
//! satellites: the first start makes the agent's CA, a one-time token carries its pin,
//! and the deploying machine enrolls with it (`berth host add NAME --token T`).
//!
//! Under `<root>/agent/`:
//!
//! ```text
//! pki/, tokens/, revoked.json, clients/, address   berth-pki's Authority
//! server.{crt,key}   the listener's certificate, issued again at each start
//! services/<name>/   history.json, current.json (see engine)
//! ```

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use berth_pki::{Authority, ClientAuth, EnrollRequest, Identity, Token, TokenOptions, Validity};

use crate::api::{DeployRequest, Status};
use crate::engine::Engine;
use crate::error::DeployError;

/// The default port of `berth agent serve`.
pub const DEFAULT_PORT: u16 = 8373;

/// An agent's state directory.
#[derive(Debug, Clone)]
pub struct AgentRoot {
    dir: PathBuf,
}

impl AgentRoot {
    /// The agent directory of data root `root`.
    pub fn new(root: &Path) -> AgentRoot {
        AgentRoot {
            dir: root.join("agent"),
        }
    }

    /// The agent's trust.
    pub fn authority(&self) -> Authority {
        Authority::new(&self.dir)
    }

    /// A token for this agent (`berth agent token create`).
    pub fn create_token(&self, options: TokenOptions) -> Result<Token, DeployError> {
        let a = self.authority();
        let addr = a.address().filter(|_| a.has_ca()).ok_or_else(|| {
            DeployError::BadRequest(format!(
                "no agent in {}: start it once with `berth agent serve`",
                self.dir.display()
            ))
        })?;
        Ok(a.create_token(options, &addr)?)
    }
}

/// How `berth agent serve` runs.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// The berth data root.
    pub root: PathBuf,
    /// The agent's name.
    pub name: String,
    /// The address the deploying machine dials; the first goes into tokens.
    pub advertise: Vec<String>,
    /// Where it listens.
    pub addr: SocketAddr,
    /// How long client certificates are valid.
    pub client_validity: Duration,
}

/// A running agent.
#[derive(Clone)]
pub struct Agent {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    authority: Authority,
    ca: berth_pki::Ca,
    tokens: berth_pki::TokenStore,
    revocations: Arc<berth_pki::RevocationList>,
    server: Identity,
    client_validity: Duration,
    engine: Engine,
}

impl Agent {
    /// Loads or makes the agent's CA, issues the listener's certificate, records the
    /// address tokens carry, connects to dockerd and restores the proxies. Returns the
    /// agent, whether this is its first start, and the address.
    pub async fn open(opts: &AgentOptions) -> Result<(Agent, bool, String), DeployError> {
        let advertised =
            berth_pki::Advertised::parse(&opts.advertise).map_err(DeployError::BadRequest)?;
        let root = AgentRoot::new(&opts.root);
        let authority = root.authority();
        let (ca, first) = authority.load_or_create_ca(&opts.name)?;
        let mut ips: Vec<IpAddr> = vec![IpAddr::from([127, 0, 0, 1])];
        ips.extend(&advertised.ips);
        if !opts.addr.ip().is_unspecified() {
            ips.push(opts.addr.ip());
        }
        let mut names = advertised.names.clone();
        if names.is_empty() {
            names.push("localhost".into());
        }
        let server = ca.issue_server_cert(
            &names,
            &ips,
            Validity::from_now(berth_pki::DEFAULT_SERVER_VALIDITY),
        )?;
        server.save(&root.dir, "server")?;
        let address = advertised.token_address(&opts.addr.ip().to_string(), opts.addr.port());
        authority.set_address(&address)?;
        let engine = Engine::new(&root.dir, &opts.name).await?;
        engine.restore().await;
        let agent = Agent {
            inner: Arc::new(Inner {
                name: opts.name.clone(),
                tokens: authority.tokens()?,
                revocations: Arc::new(authority.revocations()?),
                authority,
                ca,
                server,
                client_validity: opts.client_validity,
                engine,
            }),
        };
        Ok((agent, first, address))
    }

    /// The listener's routes.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/v1/enroll", axum::routing::post(enroll))
            .route("/v1/status", axum::routing::get(status))
            .route("/v1/deploy", axum::routing::post(deploy))
            .route("/v1/services/{name}/history", axum::routing::get(history))
            .route("/v1/services", axum::routing::get(ps))
            .route("/v1/services/{name}/logs", axum::routing::get(logs))
            .route("/v1/services/{name}/exec", axum::routing::post(exec))
            .with_state(self.clone())
    }

    /// Serves on `listener` until `shutdown` resolves.
    pub async fn serve(
        &self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), DeployError> {
        let mut config = berth_pki::server_config(
            self.inner.ca.cert_der(),
            &self.inner.server,
            self.inner.revocations.clone(),
            ClientAuth::Optional,
        )?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let tls = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let options = berth_registry::ServeOptions {
            // A deploy waits for health checks and drains: minutes without a byte.
            stall_timeout: Duration::from_secs(3600),
            ..Default::default()
        };
        berth_registry::serve_with(listener, self.router(), Some(tls), options, shutdown)
            .await
            .map_err(|e| DeployError::Internal(format!("serve: {e}")))
    }

    /// Serves plain HTTP on the unix socket `listener` until `shutdown` resolves: the
    /// agent container of an SSH-driven host, reached through an SSH forward of the
    /// socket (see [`crate::ssh`]). No certificate: reaching the socket takes the same
    /// rights on the host as reaching its dockerd.
    pub async fn serve_unix(
        &self,
        listener: tokio::net::UnixListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), DeployError> {
        let app = self.router().layer(axum::Extension(Local));
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(|e| DeployError::Internal(format!("serve: {e}")))
    }
}

impl IntoResponse for DeployError {
    fn into_response(self) -> Response {
        let code = match &self {
            DeployError::BadRequest(_) | DeployError::Config { .. } => StatusCode::BAD_REQUEST,
            DeployError::Denied(_) => StatusCode::FORBIDDEN,
            DeployError::Pki(p) if p.as_token().is_some() => StatusCode::FORBIDDEN,
            DeployError::Pki(berth_pki::PkiError::Csr { .. }) => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let msg = match &self {
            DeployError::Pki(p) if p.as_token().is_some() => token_message(p),
            e => e.to_string(),
        };
        (code, Json(serde_json::json!({ "error": msg }))).into_response()
    }
}

/// Token refusals in the agent's terms (berth-pki's name the satellite's commands).
fn token_message(p: &berth_pki::PkiError) -> String {
    use berth_pki::TokenError as T;
    let new = "create a new one with `berth agent token create` on the host";
    match p.as_token() {
        Some(T::Unknown { id }) => format!("token {id} is not known to this agent; {new}"),
        Some(T::WrongSecret { id }) => {
            format!("token {id}: the secret does not match; copy the whole token again")
        }
        Some(T::Expired { id, at }) => format!("token {id} expired on {at}; {new}"),
        Some(T::Revoked { id, at }) => format!("token {id} was revoked on {at}; {new}"),
        Some(T::UsedUp { id, .. }) => format!("token {id} was already used; {new}"),
        _ => p.to_string(),
    }
}

/// Marks requests that came through the agent's unix socket ([`Agent::serve_unix`]):
/// whoever reached it holds the host's dockerd already (SSH access to its socket), so
/// no certificate is asked; the caller names itself in [`CLIENT_HEADER`].
#[derive(Clone, Copy)]
struct Local;

/// The header a caller on the unix socket names itself in (for lock messages).
pub const CLIENT_HEADER: &str = "x-berth-client";

/// The client behind a request: an enrolled machine's certificate name, or on the unix
/// socket the name it gives.
struct Caller(String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Caller {
    type Rejection = DeployError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Caller, DeployError> {
        let certs = parts.extensions.get::<berth_registry::PeerCertificates>();
        if let Some(leaf) = certs.and_then(|c| c.0.first()) {
            return Ok(Caller(
                berth_pki::CertInfo::from_der(leaf)
                    .map(|i| i.display_name())
                    .unwrap_or_else(|_| "?".into()),
            ));
        }
        if parts.extensions.get::<Local>().is_some() {
            let name = parts
                .headers
                .get(CLIENT_HEADER)
                .and_then(|v| v.to_str().ok())
                .filter(|v| !v.is_empty())
                .unwrap_or("ssh");
            return Ok(Caller(format!("{name} (ssh)")));
        }
        Err(DeployError::Denied(
            "this call needs an enrolled machine: run `berth host add NAME --token T` first".into(),
        ))
    }
}

async fn enroll(
    State(agent): State<Agent>,
    Json(req): Json<EnrollRequest>,
) -> Result<Json<berth_pki::EnrollResponse>, DeployError> {
    let a = agent.clone();
    tokio::task::spawn_blocking(move || {
        let i = &a.inner;
        i.authority.enroll(
            &i.ca,
            &i.tokens,
            &req,
            Validity::from_now(i.client_validity),
            &i.name,
        )
    })
    .await
    .map_err(|e| DeployError::Internal(format!("worker panicked: {e}")))?
    .map(Json)
    .map_err(DeployError::from)
}

async fn status(State(agent): State<Agent>, _: Caller) -> Result<Json<Status>, DeployError> {
    let docker = match agent.inner.engine.docker_version().await {
        Ok(v) => v,
        Err(e) => format!("unreachable: {e}"),
    };
    Ok(Json(Status {
        name: agent.inner.name.clone(),
        version: env!("CARGO_PKG_VERSION").into(),
        docker,
    }))
}

async fn deploy(
    State(agent): State<Agent>,
    Caller(client): Caller,
    Json(req): Json<DeployRequest>,
) -> Result<Json<crate::api::DeployReport>, DeployError> {
    tracing::info!(service = %req.service.name, version = %req.version, image = %req.image, %client, "deploy");
    // On a task of its own: a caller that goes away (a host losing its network) does not
    // cancel a deploy halfway (a new container started, or ports switched and the old
    // container left running); it ends as it would have. The report comes before the
    // task ends: once traffic is switched and drained, the old containers are stopped
    // and removed after the answer (see [`Engine::deploy`]).
    let a = agent.clone();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move { a.inner.engine.deploy(req, &client, tx).await });
    let report = rx.await.map_err(|_| {
        DeployError::Internal("the deploy panicked (the agent's log says where)".into())
    })?;
    match &report.error {
        Some(e) => tracing::warn!(error = %e, "deploy failed"),
        None => tracing::info!(serving = ?report.serving, "deploy done"),
    }
    Ok(Json(report))
}

async fn history(
    State(agent): State<Agent>,
    _: Caller,
    UrlPath(name): UrlPath<String>,
) -> Result<Json<Vec<crate::api::Release>>, DeployError> {
    Ok(Json(agent.inner.engine.history(&name)?))
}

async fn ps(
    State(agent): State<Agent>,
    _: Caller,
) -> Result<Json<Vec<crate::api::ServiceState>>, DeployError> {
    Ok(Json(agent.inner.engine.ps().await?))
}

/// `?tail=N&follow=true`.
#[derive(serde::Deserialize)]
struct LogsQuery {
    tail: Option<u64>,
    #[serde(default)]
    follow: bool,
}

async fn logs(
    State(agent): State<Agent>,
    _: Caller,
    UrlPath(name): UrlPath<String>,
    axum::extract::Query(q): axum::extract::Query<LogsQuery>,
) -> Result<Response, DeployError> {
    let stream = agent.inner.engine.logs(&name, q.tail, q.follow)?;
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; charset=utf-8",
        )],
        axum::body::Body::from_stream(stream),
    )
        .into_response())
}

async fn exec(
    State(agent): State<Agent>,
    Caller(client): Caller,
    UrlPath(name): UrlPath<String>,
    Json(req): Json<crate::api::ExecRequest>,
) -> Result<Json<crate::api::ExecResult>, DeployError> {
    tracing::info!(service = %name, cmd = ?req.cmd, replica = ?req.replica, %client, "exec");
    Ok(Json(
        agent
            .inner
            .engine
            .exec(&name, &req.cmd, req.replica)
            .await?,
    ))
}
