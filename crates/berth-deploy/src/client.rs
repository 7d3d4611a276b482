//! The deploying machine's side: the hosts it enrolled with (kept in berth's config
//! directory) and the calls to their agents.
//!
//! Under `<config>/hosts/`:
//!
//! ```text
//! <name>/host.json        the agent's address and name
//! <name>/ca.crt           the agent's CA (its pin was in the token)
//! <name>/client.{crt,key} this machine's certificate and key (key 0600, made here)
//! ```

use std::path::PathBuf;
use std::sync::Arc;

use berth_pki::{ClientKey, EnrollRequest, EnrollResponse, PeerStore, Token};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};

use crate::api::{
    DeployReport, DeployRequest, ExecRequest, ExecResult, Release, ServiceState, Status,
};
use crate::error::DeployError;

/// A host this machine deploys to.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostRecord {
    /// Its name here (`berth host add NAME`), as deploy files name it.
    pub name: String,
    /// The agent's `host:port`.
    pub address: String,
    /// The agent's own name.
    pub agent: String,
}

/// The hosts this machine enrolled with.
#[derive(Debug, Clone)]
pub struct Hosts {
    dir: PathBuf,
}

impl Hosts {
    /// Kept in `dir` (normally `$XDG_CONFIG_HOME/berth/hosts`).
    pub fn new(dir: PathBuf) -> Hosts {
        Hosts { dir }
    }

    fn peers(&self) -> PeerStore {
        PeerStore::new(&self.dir, "host.json")
    }

    fn check_name(name: &str) -> Result<(), DeployError> {
        if PeerStore::valid_name(name) {
            Ok(())
        } else {
            Err(DeployError::BadRequest(format!(
                "host name {name:?}: use 1 to 64 letters, digits, `.`, `-` or `_`"
            )))
        }
    }

    /// Enrolls with the agent a token names and keeps it as host `name`.
    pub async fn add(
        &self,
        name: &str,
        token: &Token,
        client: &str,
    ) -> Result<HostRecord, DeployError> {
        Self::check_name(name)?;
        if self.peers().read::<HostRecord>(name)?.is_some() {
            return Err(DeployError::BadRequest(format!(
                "a host named {name} is already enrolled; `berth host rm {name}` first"
            )));
        }
        let (config, verifier) = berth_pki::first_contact(token.pin)?;
        let key = ClientKey::generate()?;
        let req = EnrollRequest::new(token, &key, client)?;
        let resp: EnrollResponse = call(
            &token.addr,
            &Transport::Tls(Box::new(config)),
            "POST",
            "/v1/enroll",
            Some(&req),
        )
        .await?;
        berth_pki::check_enrollment(token, &verifier, &resp.ca_pem)
            .map_err(|e| DeployError::Denied(format!("agent {}: {e}", token.addr)))?;
        self.peers()
            .trust(name)
            .save(&resp.ca_pem, &key.into_identity(resp.cert_pem))?;
        let rec = HostRecord {
            name: name.to_owned(),
            address: token.addr.clone(),
            agent: resp.server,
        };
        self.peers().write(name, &rec)?;
        Ok(rec)
    }

    /// Host `name`'s record.
    pub fn get(&self, name: &str) -> Result<HostRecord, DeployError> {
        Self::check_name(name)?;
        self.peers().read(name)?.ok_or_else(|| {
            DeployError::BadRequest(format!(
                "no host named {name}: enroll it with `berth host add {name} --token T` \
                 (a token from `berth agent token create` on that host)"
            ))
        })
    }

    /// Every enrolled host, by name.
    pub fn list(&self) -> Result<Vec<HostRecord>, DeployError> {
        self.peers().names().iter().map(|n| self.get(n)).collect()
    }

    /// Forgets host `name` (this machine's certificate and key for it are deleted).
    pub fn remove(&self, name: &str) -> Result<(), DeployError> {
        self.get(name)?;
        Ok(self.peers().remove(name)?)
    }

    /// A client for host `name`'s agent.
    pub fn connect(&self, name: &str) -> Result<AgentClient, DeployError> {
        let rec = self.get(name)?;
        let config = self.peers().trust(name).client_config()?;
        Ok(AgentClient {
            rec,
            transport: Transport::Tls(Box::new(config)),
        })
    }
}

/// How calls reach an agent.
#[derive(Clone)]
enum Transport {
    /// An enrolled agent: mutual TLS over TCP.
    Tls(Box<rustls::ClientConfig>),
    /// An agent's unix socket on this machine (an SSH forward, kept open by `keep`);
    /// `client` names this machine in lock messages.
    Unix {
        socket: PathBuf,
        client: String,
        _keep: Arc<dyn std::any::Any + Send + Sync>,
    },
}

/// Calls to one agent: an enrolled one over mutual TLS, or an SSH-driven host's agent
/// container through a forwarded unix socket ([`crate::ssh`]).
#[derive(Clone)]
pub struct AgentClient {
    /// The host.
    pub rec: HostRecord,
    transport: Transport,
}

impl AgentClient {
    /// A client of the agent listening on the unix socket `socket` of this machine;
    /// `keep` lives as long as the client (the SSH process forwarding the socket).
    pub fn unix(
        rec: HostRecord,
        socket: PathBuf,
        client: String,
        keep: Arc<dyn std::any::Any + Send + Sync>,
    ) -> AgentClient {
        AgentClient {
            rec,
            transport: Transport::Unix {
                socket,
                client,
                _keep: keep,
            },
        }
    }

    /// The agent's status.
    pub async fn status(&self) -> Result<Status, DeployError> {
        self.call("GET", "/v1/status", None::<&()>).await
    }

    /// Runs a deploy on the host and waits for its report.
    pub async fn deploy(&self, req: &DeployRequest) -> Result<DeployReport, DeployError> {
        self.call("POST", "/v1/deploy", Some(req)).await
    }

    /// The versions of `service` the host ran, newest first.
    pub async fn history(&self, service: &str) -> Result<Vec<Release>, DeployError> {
        self.call(
            "GET",
            &format!("/v1/services/{service}/history"),
            None::<&()>,
        )
        .await
    }

    /// The services on the host: serving version, container, state.
    pub async fn ps(&self) -> Result<Vec<ServiceState>, DeployError> {
        self.call("GET", "/v1/services", None::<&()>).await
    }

    /// Runs `cmd` in a serving container of `service`: replica `replica` (from 1), or
    /// the first.
    pub async fn exec(
        &self,
        service: &str,
        cmd: &[String],
        replica: Option<u32>,
    ) -> Result<ExecResult, DeployError> {
        let req = ExecRequest {
            cmd: cmd.to_vec(),
            replica,
        };
        self.call("POST", &format!("/v1/services/{service}/exec"), Some(&req))
            .await
    }

    /// The serving container's output of `service` (the last `tail` lines, all when
    /// `None`), handed to `sink` as it comes; with `follow`, until the container stops.
    pub async fn logs(
        &self,
        service: &str,
        tail: Option<u64>,
        follow: bool,
        sink: &mut (dyn FnMut(&[u8]) + Send),
    ) -> Result<(), DeployError> {
        let mut path = format!("/v1/services/{service}/logs?follow={follow}");
        if let Some(n) = tail {
            path.push_str(&format!("&tail={n}"));
        }
        let addr = &self.rec.address;
        let mut body = request(addr, &self.transport, "GET", &path, None::<&()>)
            .await
            .map_err(|e| self.named(e))?;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                DeployError::Remote(format!("host {}: reading logs: {e}", self.rec.name))
            })?;
            if let Some(data) = frame.data_ref() {
                sink(data);
            }
        }
        Ok(())
    }

    fn named(&self, e: DeployError) -> DeployError {
        match e {
            DeployError::Remote(m) => DeployError::Remote(format!("host {}: {m}", self.rec.name)),
            e => e,
        }
    }

    async fn call<B: Serialize, T: for<'de> Deserialize<'de>>(
        &self,
        method: &str,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, DeployError> {
        call(&self.rec.address, &self.transport, method, path, body)
            .await
            .map_err(|e| self.named(e))
    }
}

fn host_of(addr: &str) -> &str {
    if let Some(rest) = addr.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    addr.rsplit_once(':').map_or(addr, |(h, _)| h)
}

/// One JSON call over TLS (HTTP/1.1, a connection of its own).
async fn call<B: Serialize, T: for<'de> Deserialize<'de>>(
    addr: &str,
    transport: &Transport,
    method: &str,
    path: &str,
    body: Option<&B>,
) -> Result<T, DeployError> {
    let body = request(addr, transport, method, path, body)
        .await?
        .collect()
        .await
        .map_err(|e| DeployError::Remote(format!("agent {addr}: reading the answer: {e}")))?
        .to_bytes();
    serde_json::from_slice(&body)
        .map_err(|e| DeployError::Remote(format!("agent {addr}: unexpected answer: {e}")))
}

/// One request (a connection of its own): the body of a successful answer, still to be
/// read; an error answer's message as the error.
async fn request<B: Serialize>(
    addr: &str,
    transport: &Transport,
    method: &str,
    path: &str,
    body: Option<&B>,
) -> Result<hyper::body::Incoming, DeployError> {
    let bytes = body
        .map(|b| serde_json::to_vec(b).expect("serialises"))
        .unwrap_or_default();
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr)
        .header("content-type", "application/json");
    let unreachable =
        |e: &dyn std::fmt::Display| DeployError::Remote(format!("cannot reach agent {addr}: {e}"));
    let resp = match transport {
        Transport::Tls(config) => {
            let req = req
                .body(Full::new(Bytes::from(bytes)))
                .map_err(|e| DeployError::Internal(e.to_string()))?;
            let tls = connect_tls(addr, (**config).clone()).await?;
            send(addr, tls, req).await?
        }
        Transport::Unix {
            socket,
            client,
            _keep: _,
        } => {
            req = req.header(crate::agent::CLIENT_HEADER, client.as_str());
            let req = req
                .body(Full::new(Bytes::from(bytes)))
                .map_err(|e| DeployError::Internal(e.to_string()))?;
            let s = tokio::net::UnixStream::connect(socket)
                .await
                .map_err(|e| unreachable(&format!("{}: {e}", socket.display())))?;
            send(addr, s, req).await?
        }
    };
    let status = resp.status();
    if status.is_success() {
        return Ok(resp.into_body());
    }
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| DeployError::Remote(format!("agent {addr}: reading the answer: {e}")))?
        .to_bytes();
    let msg = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
    Err(match status.as_u16() {
        401 | 403 => DeployError::Denied(format!("agent {addr}: {msg}")),
        400 => DeployError::BadRequest(format!("agent {addr}: {msg}")),
        _ => DeployError::Remote(format!("agent {addr}: {msg}")),
    })
}

async fn connect_tls(
    addr: &str,
    mut config: rustls::ClientConfig,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, DeployError> {
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let server_name = rustls_pki_types::ServerName::try_from(host_of(addr).to_owned())
        .map_err(|e| DeployError::BadRequest(format!("agent address {addr}: {e}")))?;
    let unreachable =
        |e: &dyn std::fmt::Display| DeployError::Remote(format!("cannot reach agent {addr}: {e}"));
    let tcp = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tokio::net::TcpStream::connect(addr),
    )
    .await
    .map_err(|_| unreachable(&"no answer in 10s"))?
    .map_err(|e| unreachable(&e))?;
    // A deploy is one long request: keepalive probes notice a host that drops off the
    // network while it runs (about 20 s), where the connection would otherwise wait
    // forever for an answer.
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(std::time::Duration::from_secs(10))
        .with_interval(std::time::Duration::from_secs(3))
        .with_retries(3);
    let _ = socket2::SockRef::from(&tcp).set_tcp_keepalive(&keepalive);
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(server_name, tcp)
        .await
        .map_err(|e| match berth_pki::explain_refusal(&e) {
            Some(why) => DeployError::Denied(format!("agent {addr}: {why}")),
            None => unreachable(&e),
        })
}

/// Sends `req` over `io` (HTTP/1.1).
async fn send<IO>(
    addr: &str,
    io: IO,
    req: Request<Full<Bytes>>,
) -> Result<hyper::Response<hyper::body::Incoming>, DeployError>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| DeployError::Remote(format!("cannot reach agent {addr}: {e}")))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender.send_request(req).await.map_err(|e| {
        // TLS 1.3 reports a refused client certificate on the first read.
        let mut src: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(s) = src {
            if let Some(io) = s.downcast_ref::<std::io::Error>()
                && let Some(why) = berth_pki::explain_refusal(io)
            {
                return DeployError::Denied(format!("agent {addr}: {why}"));
            }
            src = s.source();
        }
        DeployError::Remote(format!(
            "agent {addr}: the connection failed: {e}; a deploy under way goes on to its end \
             on the host (or leaves the old version serving): see `berth deploy ps`"
        ))
    })
}
