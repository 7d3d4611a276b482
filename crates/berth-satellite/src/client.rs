//! The client side: enrollment, the enrolled satellites kept in berth's config directory,
//! connections over mutual TLS, and remote builds.
//!
//! Under the client's `<config>/satellites/`:
//!
//! ```text
//! <name>/satellite.json   address, the satellite's and this client's names
//! <name>/ca.crt           the satellite's CA (its pin was in the token)
//! <name>/client.{crt,key} this client's certificate and key (key 0600, made here)
//! default                 the name `berth satellite use` chose
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use berth_pki::{ClientKey, Identity, PeerStore, ServerTrust, Token, TrustDir};
use futures_util::StreamExt;
use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use tonic::transport::{Channel, Endpoint};

use crate::context::{Entry, SumCache, write_atomic};
use crate::error::SatError;
use crate::proto::{self, build_event::Event as Ev, satellite_client::SatelliteClient};

/// What the client keeps of one satellite.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Enrolled {
    /// The name the user gave it (`berth satellite add NAME`).
    pub name: String,
    /// `host:port`.
    pub address: String,
    /// The satellite's own name.
    pub satellite: String,
    /// This client's name on the satellite.
    pub client: String,
}

/// The satellites this client has enrolled with.
#[derive(Debug, Clone)]
pub struct Enrollments {
    dir: PathBuf,
}

impl Enrollments {
    /// Kept in `dir` (normally `$XDG_CONFIG_HOME/berth/satellites`).
    pub fn new(dir: PathBuf) -> Enrollments {
        Enrollments { dir }
    }

    fn peers(&self) -> PeerStore {
        PeerStore::new(&self.dir, "satellite.json")
    }

    fn check_name(name: &str) -> Result<(), SatError> {
        if PeerStore::valid_name(name) {
            Ok(())
        } else {
            Err(SatError::BadRequest(format!(
                "satellite name {name:?}: use 1 to 64 letters, digits, `.`, `-` or `_`"
            )))
        }
    }

    /// Enrolls with the satellite a token names: pinned first contact, a key made here,
    /// its CSR and the token's secret sent, the certificate stored. Returns the record.
    pub async fn add(&self, name: &str, token: &Token, client: &str) -> Result<Enrolled, SatError> {
        Self::check_name(name)?;
        if self.peers().read::<Enrolled>(name)?.is_some() {
            return Err(SatError::BadRequest(format!(
                "a satellite named {name} is already enrolled; `berth satellite rm {name}` first"
            )));
        }
        let (config, verifier) = berth_pki::first_contact(token.pin)?;
        let (mut grpc, refusal) = connect_watched(&token.addr, config).await?;
        let key = ClientKey::generate()?;
        let resp = grpc
            .enroll({
                let r = berth_pki::EnrollRequest::new(token, &key, client)?;
                proto::EnrollRequest {
                    token_id: r.token_id,
                    token_secret: r.token_secret,
                    client_name: r.client_name,
                    csr_pem: r.csr_pem,
                }
            })
            .await
            .map_err(|s| remote_error(&token.addr, s, &refusal))?
            .into_inner();
        berth_pki::check_enrollment(token, &verifier, &resp.ca_pem)
            .map_err(|e| SatError::Denied(e.to_string()))?;
        let identity = key.into_identity(resp.cert_pem);
        self.peers().trust(name).save(&resp.ca_pem, &identity)?;
        let rec = Enrolled {
            name: name.to_owned(),
            address: token.addr.clone(),
            satellite: resp.satellite,
            client: client.to_owned(),
        };
        self.peers().write(name, &rec)?;
        if self.default_name()?.is_none() {
            self.set_default(name)?;
        }
        Ok(rec)
    }

    /// The record of satellite `name`.
    pub fn get(&self, name: &str) -> Result<Enrolled, SatError> {
        Self::check_name(name)?;
        self.peers().read(name)?.ok_or_else(|| {
            SatError::BadRequest(format!(
                "no satellite named {name}: enroll it with `berth satellite add {name} --token T` \
                 (see `berth satellite ls`)"
            ))
        })
    }

    /// Every enrolled satellite, by name.
    pub fn list(&self) -> Result<Vec<Enrolled>, SatError> {
        self.peers().names().iter().map(|n| self.get(n)).collect()
    }

    /// Forgets satellite `name` (its certificate and key are deleted).
    pub fn remove(&self, name: &str) -> Result<(), SatError> {
        self.get(name)?;
        self.peers().remove(name)?;
        if self.default_name()?.as_deref() == Some(name) {
            let _ = std::fs::remove_file(self.dir.join("default"));
        }
        Ok(())
    }

    /// Makes `name` the satellite `berth build --satellite` uses without a name
    /// (`pool:NAME`: a pool of them).
    pub fn set_default(&self, name: &str) -> Result<(), SatError> {
        match name.strip_prefix(crate::pool::POOL_PREFIX) {
            Some(pool) => drop(crate::pool::Pools::new(self.dir.clone()).get(pool)?),
            None => drop(self.get(name)?),
        }
        write_atomic(&self.dir.join("default"), name.as_bytes())
    }

    /// The default satellite's name, if one is set.
    pub fn default_name(&self) -> Result<Option<String>, SatError> {
        match std::fs::read_to_string(self.dir.join("default")) {
            Ok(s) if !s.trim().is_empty() => Ok(Some(s.trim().to_owned())),
            _ => Ok(None),
        }
    }

    /// This client's identity with satellite `name`.
    pub fn identity(&self, name: &str) -> Result<Identity, SatError> {
        Ok(TrustDir::new(&self.dir.join(name)).identity()?)
    }

    /// A mutual-TLS connection to satellite `name`. A certificate past half its life is
    /// renewed first (while it still works).
    pub async fn connect(&self, name: &str) -> Result<Connection, SatError> {
        let rec = self.get(name)?;
        let dir = self.dir.join(name);
        let ca = TrustDir::new(&dir).ca()?;
        let mut identity = self.identity(name)?;
        let config =
            |id: &Identity| berth_pki::client_config(ServerTrust::Ca(ca.clone()), Some(id));
        let (mut grpc, mut refusal) = connect_watched(&rec.address, config(&identity)?).await?;
        let leaf = identity.chain()?.remove(0);
        if berth_pki::needs_renewal(&leaf, SystemTime::now())? {
            let key = ClientKey::generate()?;
            let resp = grpc
                .renew(proto::RenewRequest {
                    csr_pem: key.csr_pem(&rec.client)?,
                })
                .await
                .map_err(|s| remote_error(&rec.address, s, &refusal))?
                .into_inner();
            identity = key.into_identity(resp.cert_pem);
            identity.save(&dir, "client")?;
            (grpc, refusal) = connect_watched(&rec.address, config(&identity)?).await?;
        }
        Ok(Connection {
            grpc,
            refusal,
            address: rec.address,
            ca,
            identity,
        })
    }
}

/// What `berth doctor` learns of one enrolled satellite.
#[derive(Debug, Clone)]
pub struct SatelliteProbe {
    /// The record.
    pub enrolled: Enrolled,
    /// When this client's certificate stops being valid (`None`: it could not be read).
    pub cert_expires: Option<SystemTime>,
    /// Past half its life: the next connection renews it.
    pub renewal_due: bool,
    /// The satellite's status answer (`name version`), or why there was none.
    pub reachable: Result<String, String>,
}

impl Enrollments {
    /// Checks satellite `name` without changing anything (no renewal): this client's
    /// certificate, and a status call over mutual TLS.
    pub async fn probe(&self, name: &str) -> Result<SatelliteProbe, SatError> {
        let enrolled = self.get(name)?;
        let dir = self.dir.join(name);
        let identity = self.identity(name);
        let leaf = identity
            .as_ref()
            .ok()
            .and_then(|i| i.chain().ok())
            .and_then(|mut c| (!c.is_empty()).then(|| c.remove(0)));
        let info = leaf
            .as_ref()
            .and_then(|l| berth_pki::CertInfo::from_der(l).ok());
        let renewal_due = leaf
            .as_ref()
            .and_then(|l| berth_pki::needs_renewal(l, SystemTime::now()).ok())
            .unwrap_or(false);
        let reachable = async {
            let identity = identity.map_err(|e| e.to_string())?;
            let ca = TrustDir::new(&dir).ca().map_err(|e| e.to_string())?;
            let config = berth_pki::client_config(ServerTrust::Ca(ca), Some(&identity))
                .map_err(|e| e.to_string())?;
            let call = async {
                let (mut grpc, refusal) = connect_watched(&enrolled.address, config).await?;
                grpc.status(proto::StatusRequest {})
                    .await
                    .map(tonic::Response::into_inner)
                    .map_err(|s| remote_error(&enrolled.address, s, &refusal))
            };
            match tokio::time::timeout(std::time::Duration::from_secs(15), call).await {
                Ok(Ok(st)) => Ok(format!("satellite {} {} answers", st.name, st.version)),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("{}: no answer in 15s", enrolled.address)),
            }
        }
        .await;
        Ok(SatelliteProbe {
            enrolled,
            cert_expires: info.map(|i| i.validity.not_after),
            renewal_due,
            reachable,
        })
    }
}

/// A connection to an enrolled satellite.
pub struct Connection {
    /// The gRPC client.
    pub grpc: SatelliteClient<Channel>,
    /// A trust refusal seen on the connection.
    pub refusal: Refusal,
    /// `host:port`.
    pub address: String,
    ca: CertificateDer<'static>,
    identity: Identity,
}

impl Connection {
    /// A rustls client configuration for other connections to this satellite (its
    /// registry API), with this client's certificate.
    pub fn tls_config(&self) -> Result<rustls::ClientConfig, SatError> {
        Ok(berth_pki::client_config(
            ServerTrust::Ca(self.ca.clone()),
            Some(&self.identity),
        )?)
    }

    /// The satellite's status.
    pub async fn status(&mut self) -> Result<proto::StatusResponse, SatError> {
        self.grpc
            .status(proto::StatusRequest {})
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| remote_error(&self.address, s, &self.refusal))
    }
}

/// Connects over TLS (`config` decides the trust and the client certificate) and speaks
/// gRPC over HTTP/2 on it.
pub async fn connect(
    addr: &str,
    config: rustls::ClientConfig,
) -> Result<SatelliteClient<Channel>, SatError> {
    Ok(connect_watched(addr, config).await?.0)
}

/// Why the satellite refused this client at the TLS level, seen on the connection after
/// the handshake (TLS 1.3 sends a refused certificate's alert on the first read, and the
/// gRPC channel reports only "transport error" to the call).
#[derive(Debug, Clone, Default)]
pub struct Refusal(
    Arc<std::sync::Mutex<Option<String>>>,
    /// Where and how to look again: a refusal can also end the connection on the write
    /// side first (the satellite closed it after its alert), before anything reads it.
    Option<Arc<(String, rustls::ClientConfig)>>,
);

impl Refusal {
    fn get(&self) -> Option<String> {
        self.0.lock().expect("refusal lock").clone()
    }

    /// After a transport failure: the refusal seen, or one a fresh handshake and read
    /// get (at most a second; only on this error path).
    fn diagnose(&self) -> Option<String> {
        if let Some(why) = self.get() {
            return Some(why);
        }
        let (addr, config) = self.1.as_deref()?;
        let probe = || -> Option<String> {
            use std::io::Read;
            let host = rustls_pki_types::ServerName::try_from(host_of(addr).to_owned()).ok()?;
            let conn = rustls::ClientConnection::new(Arc::new(config.clone()), host).ok()?;
            let tcp = std::net::TcpStream::connect(addr).ok()?;
            tcp.set_read_timeout(Some(std::time::Duration::from_secs(1)))
                .ok()?;
            let mut tls = rustls::StreamOwned::new(conn, tcp);
            let mut byte = [0u8; 1];
            tls.read_exact(&mut byte)
                .err()
                .and_then(|e| berth_pki::explain_refusal(&e))
        };
        let multi = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        if multi {
            tokio::task::block_in_place(probe)
        } else {
            probe()
        }
    }
}

/// A connection's socket that notes a trust refusal it reads.
struct Watched<S> {
    inner: S,
    refusal: Refusal,
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Watched<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if let std::task::Poll::Ready(Err(e)) = &r
            && let Some(why) = berth_pki::explain_refusal(e)
        {
            *self.refusal.0.lock().expect("refusal lock") = Some(why);
        }
        r
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// [`connect`], also returning where a trust refusal seen later is kept.
pub async fn connect_watched(
    addr: &str,
    mut config: rustls::ClientConfig,
) -> Result<(SatelliteClient<Channel>, Refusal), SatError> {
    let refusal = Refusal(
        Default::default(),
        Some(Arc::new((addr.to_owned(), config.clone()))),
    );
    let seen = refusal.clone();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let host = host_of(addr).to_owned();
    let server_name = rustls_pki_types::ServerName::try_from(host.clone())
        .map_err(|e| SatError::BadRequest(format!("satellite address {addr}: {e}")))?;
    let target = addr.to_owned();
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| SatError::BadRequest(format!("satellite address {addr}: {e}")))?
        .connect_timeout(std::time::Duration::from_secs(10))
        .http2_keep_alive_interval(std::time::Duration::from_secs(30))
        .keep_alive_while_idle(true);
    let channel = endpoint
        .connect_with_connector(tower::service_fn(move |_uri| {
            let (connector, server_name, target, seen) = (
                connector.clone(),
                server_name.clone(),
                target.clone(),
                seen.clone(),
            );
            async move {
                let tcp = tokio::net::TcpStream::connect(&target).await?;
                tcp.set_nodelay(true)?;
                let tls = connector.connect(server_name, tcp).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(Watched {
                    inner: tls,
                    refusal: seen,
                }))
            }
        }))
        .await
        .map_err(|e| connect_error(addr, &e))?;
    Ok((
        SatelliteClient::new(channel).max_decoding_message_size(64 << 20),
        refusal,
    ))
}

fn host_of(addr: &str) -> &str {
    if let Some(rest) = addr.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    addr.rsplit_once(':').map_or(addr, |(h, _)| h)
}

/// Finds the I/O error under a transport error and explains trust failures.
fn connect_error(addr: &str, e: &(dyn std::error::Error + 'static)) -> SatError {
    use std::io::ErrorKind;
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    let mut last = e.to_string();
    let mut refused = false;
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if let Some(why) = berth_pki::explain_refusal(io) {
                return SatError::Denied(format!("satellite {addr}: {why}"));
            }
            last = io.to_string();
            refused = matches!(
                io.kind(),
                ErrorKind::ConnectionRefused
                    | ErrorKind::ConnectionReset
                    | ErrorKind::ConnectionAborted
                    | ErrorKind::UnexpectedEof
            );
        }
        cur = err.source();
    }
    let message = format!("cannot reach satellite {addr}: {last}");
    if refused {
        SatError::Unreachable(message)
    } else {
        SatError::Remote(message)
    }
}

/// An error status from the satellite, with trust failures explained.
pub fn remote_error(addr: &str, s: tonic::Status, refusal: &Refusal) -> SatError {
    use std::error::Error;
    let transport = s.source().is_some();
    let why = if transport {
        refusal.diagnose()
    } else {
        refusal.get()
    };
    if let Some(why) = why {
        return SatError::Denied(format!("satellite {addr}: {why}"));
    }
    if let Some(src) = s.source() {
        let e = connect_error(addr, src);
        if matches!(e, SatError::Denied(_)) {
            return e;
        }
    }
    let msg = s.message().to_owned();
    if transport {
        // Not an answer of the satellite: the connection failed under the call.
        return SatError::Remote(format!(
            "lost the connection to satellite {addr} ({msg}); is it running? \
             `berth satellite inspect` checks"
        ));
    }
    match s.code() {
        tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => SatError::Denied(msg),
        tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition => SatError::BadRequest(msg),
        tonic::Code::Unavailable => SatError::Unavailable(msg),
        _ if msg.is_empty() => SatError::Remote(format!("satellite {addr}: {s}")),
        _ => SatError::Remote(msg),
    }
}

impl Connection {
    /// Brings image `name` (as tagged by a build on the satellite, whose manifest is
    /// `manifest`) from the satellite's registry into `store` under the same name. Blobs
    /// the store has are not fetched.
    pub async fn fetch_image(
        &self,
        store: &berth_store::Store,
        name: &str,
        manifest: &berth_oci::Digest,
    ) -> Result<(), SatError> {
        let written = berth_oci::WrittenReference::parse(name)
            .map_err(|e| SatError::BadRequest(e.to_string()))?;
        let (repo, tag) = (
            written.local_repository(),
            written.tag_or_latest().to_owned(),
        );
        let remote: berth_oci::Reference = format!("{}/{repo}@{manifest}", self.address)
            .parse()
            .map_err(|e: berth_oci::ReferenceError| SatError::Internal(e.to_string()))?;
        let client = berth_client::Client::new(berth_client::ClientConfig {
            hosts: HashMap::from([(
                self.address.clone(),
                berth_client::HostOptions {
                    tls: Some(Arc::new(self.tls_config()?)),
                    ..Default::default()
                },
            )]),
            ..Default::default()
        });
        let (os, arch) = berth_build::image::host_platform();
        let pulled = berth_client::transfer::pull_image(
            &client,
            store,
            &remote,
            &berth_client::transfer::PullOptions::new(berth_client::transfer::Platform::new(
                os, arch,
            )),
        )
        .await
        .map_err(|e| {
            SatError::Remote(format!("fetch {name} from satellite {}: {e}", self.address))
        })?;
        let bytes = store
            .read_blob(&pulled.manifest)
            .map_err(|e| SatError::Internal(e.to_string()))?
            .ok_or_else(|| {
                SatError::Internal(format!("manifest {} not stored", pulled.manifest))
            })?;
        let (m, media_type) = berth_oci::Manifest::parse(&bytes, None)
            .map_err(|e| SatError::Remote(format!("manifest of {name}: {e}")))?;
        let repos = store.repos();
        let link =
            |r: Result<(), berth_store::Error>| r.map_err(|e| SatError::Internal(e.to_string()));
        for d in m.config.iter().chain(m.layers.iter()) {
            link(repos.link_blob(&repo, &d.digest))?;
        }
        link(repos.link_manifest(&repo, &pulled.manifest, &media_type))?;
        link(repos.set_tag(&repo, &tag, &pulled.manifest))?;
        Ok(())
    }
}

/// A build to run on a satellite.
#[derive(Clone)]
pub struct RemoteBuild {
    /// The context directory on this machine.
    pub context: PathBuf,
    /// The Dockerfile on this machine; `None` for an Earthfile build (the request's
    /// `frontend` is `earthfile`), whose context is the folder berth runs in and whose
    /// ignore file is that folder's `.earthlyignore` (or `.earthignore`).
    pub dockerfile: Option<PathBuf>,
    /// Where the client keeps its file hashes between builds.
    pub sums: PathBuf,
    /// The request (context, snapshot and Dockerfile fields are filled in here).
    pub request: proto::BuildRequest,
    /// SSH agents to forward to `RUN --mount=type=ssh` steps, by id (`--ssh`): their
    /// sockets on this machine.
    pub ssh: HashMap<String, PathBuf>,
}

/// What a remote build sent and made.
#[derive(Debug, Clone)]
pub struct RemoteResult {
    /// The image.
    pub result: proto::BuildResult,
    /// Entries in the context.
    pub entries: usize,
    /// Files and bytes uploaded.
    pub uploaded_files: u64,
    /// Bytes uploaded.
    pub uploaded_bytes: u64,
    /// Earthfile builds: the `SAVE ARTIFACT … AS LOCAL` outputs written on this machine.
    pub artifacts: Vec<PathBuf>,
}

/// The `SAVE ARTIFACT … AS LOCAL` outputs of an Earthfile build as they arrive: each
/// one's tar stream goes into a staging folder beside its place, is unpacked there when
/// complete and then moved into place as a local build moves it.
struct Locals {
    /// The folder the build was run in; outputs are relative to it.
    base: PathBuf,
    open: HashMap<
        u32,
        (
            berth_build::Staging,
            std::fs::File,
            berth_build::LocalOutput,
        ),
    >,
    written: Vec<PathBuf>,
}

impl Locals {
    async fn piece(&mut self, p: proto::LocalArtifact) -> Result<(), SatError> {
        use std::io::Write;
        let bad = |e: berth_build::BuildError| SatError::Internal(e.to_string());
        if !self.open.contains_key(&p.index) {
            let dest = if p.dest.starts_with('/') {
                p.dest.clone()
            } else {
                let mut d = self.base.join(&p.dest).display().to_string();
                if p.dest.ends_with('/') && !d.ends_with('/') {
                    d.push('/');
                }
                d
            };
            let staging = berth_build::local_staging(Path::new(&dest)).map_err(bad)?;
            let tar = staging.path().join("artifact.tar");
            let file = std::fs::File::create(&tar).map_err(SatError::io("create", &tar))?;
            let output = berth_build::LocalOutput {
                dest,
                glob: p.glob,
                name: p.name.clone(),
            };
            self.open.insert(p.index, (staging, file, output));
        }
        let (staging, file, _) = self.open.get_mut(&p.index).expect("inserted above");
        let tar = staging.path().join("artifact.tar");
        file.write_all(&p.data)
            .map_err(SatError::io("write", &tar))?;
        if !p.last {
            return Ok(());
        }
        let (staging, file, output) = self.open.remove(&p.index).expect("inserted above");
        drop(file);
        let dest = PathBuf::from(&output.dest);
        tokio::task::spawn_blocking(move || -> Result<(), SatError> {
            let tar = staging.path().join("artifact.tar");
            let f = std::fs::File::open(&tar).map_err(SatError::io("open", &tar))?;
            let mut archive = tar::Archive::new(std::io::BufReader::new(f));
            archive.set_preserve_permissions(true);
            archive.set_preserve_mtime(true);
            archive.set_preserve_ownerships(rustix::process::geteuid().is_root());
            archive
                .unpack(staging.path())
                .map_err(SatError::io("unpack an artifact into", staging.path()))?;
            std::fs::remove_file(&tar).map_err(SatError::io("remove", &tar))?;
            berth_build::place_local_output(staging.path(), &output).map_err(bad)
        })
        .await
        .map_err(|e| SatError::Internal(e.to_string()))??;
        self.written.push(dest);
        Ok(())
    }
}

/// The registry hosts an Earthfile build may push to, as the client guesses them to
/// send its credentials along (`--push` from a satellite): every word of the invoked
/// Earthfile's `text` and every `--ARG` value that reads as an image reference with an
/// explicit registry host (`host.domain/…`, `host:port/…`, `localhost/…`), or as such a
/// host alone (`--ARG` values, and `host:port` in the Earthfile). Names built
/// from variables the Earthfile assembles from parts are not seen; pass such a host as
/// an ARG value, or log in on the satellite.
pub fn earthfile_registry_hosts<'a>(
    text: &'a str,
    args: impl IntoIterator<Item = &'a str>,
) -> std::collections::BTreeSet<String> {
    let mut hosts = std::collections::BTreeSet::new();
    let words = text
        .split(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '=' | ',' | '[' | ']'))
        .map(|w| (w, false))
        .chain(args.into_iter().map(|w| (w, true)));
    for (w, is_arg) in words {
        let (host, rest) = match w.split_once('/') {
            Some(split) => split,
            // `--REGISTRY=host:5000` and `ARG REGISTRY=host:5000`: a host alone, as
            // ARGs that name one are written; in the Earthfile only with a port.
            None if is_arg
                || w.rsplit_once(':')
                    .is_some_and(|(_, p)| p.parse::<u16>().is_ok()) =>
            {
                (w, "x")
            }
            None => continue,
        };
        let explicit = host.contains('.') || host.contains(':') || host == "localhost";
        if !explicit || rest.is_empty() || host.contains('$') {
            continue;
        }
        if let Ok(r) = format!("{host}/{rest}").parse::<berth_oci::Reference>() {
            hosts.insert(r.registry);
        }
    }
    hosts
}

/// What a build sends besides file contents, read on this machine once: the context's
/// entries (hashed through the client's sum cache), the Dockerfile and its ignore file
/// (an Earthfile build: no Dockerfile, the folder's `.earthlyignore`).
/// Pool members are probed with it, and the build on the chosen one reuses it.
#[derive(Debug, Clone)]
pub struct Described {
    /// The context's entries.
    pub entries: Vec<Entry>,
    /// The name this client gives the context on satellites (its absolute path).
    pub context_name: String,
    /// The Dockerfile's text; empty for an Earthfile build.
    pub dockerfile_text: String,
    /// The Dockerfile's file name; empty for an Earthfile build.
    pub dockerfile_name: String,
    /// The ignore file's text, if there is one.
    pub ignore_text: Option<String>,
}

/// Reads and lists what `b` sends: the Dockerfile, its ignore file, the context's
/// entries.
pub async fn describe(b: &RemoteBuild) -> Result<Described, SatError> {
    let (dockerfile_name, ignore_files, dockerfile_text) = match &b.dockerfile {
        Some(dockerfile) => {
            let name = dockerfile
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "Dockerfile".into());
            let own_ignore = dockerfile.with_file_name(format!("{name}.dockerignore"));
            let text = std::fs::read_to_string(dockerfile).map_err(|e| {
                SatError::BadRequest(format!(
                    "read {}: {e}; pass the Dockerfile with -f",
                    dockerfile.display()
                ))
            })?;
            (
                name,
                vec![own_ignore, b.context.join(".dockerignore")],
                text,
            )
        }
        // An Earthfile build sends the folder as its root Earthfile sees it; folders
        // of other Earthfiles in it keep their own ignore files, applied on the
        // satellite.
        None => (
            String::new(),
            vec![
                b.context.join(".earthlyignore"),
                b.context.join(".earthignore"),
            ],
            String::new(),
        ),
    };
    let ignore_text = ignore_files
        .into_iter()
        .find(|p| p.is_file())
        .map(|p| std::fs::read_to_string(&p).map_err(SatError::io("read", &p)))
        .transpose()?;
    let (context, sums, ignore) = (
        b.context.clone(),
        b.sums.clone(),
        berth_build::Ignore::parse(ignore_text.as_deref().unwrap_or("")),
    );
    let entries = tokio::task::spawn_blocking(move || {
        let mut cache = SumCache::load(&sums);
        let entries = crate::context::scan(&context, &ignore, &mut cache)?;
        cache.save(&sums)?;
        Ok::<_, SatError>(entries)
    })
    .await
    .map_err(|e| SatError::Internal(e.to_string()))??;
    let context_name = b
        .context
        .canonicalize()
        .unwrap_or(b.context.clone())
        .display()
        .to_string();
    Ok(Described {
        entries,
        context_name,
        dockerfile_text,
        dockerfile_name,
        ignore_text,
    })
}

/// Asks the satellite how much of the build `d` with `request`'s options its cache
/// holds, and how busy it is. Nothing is uploaded or run.
pub async fn probe(
    conn: &mut Connection,
    d: &Described,
    request: &proto::BuildRequest,
) -> Result<proto::ProbeResponse, SatError> {
    conn.grpc
        .probe(proto::ProbeRequest {
            entries: d.entries.iter().cloned().map(Into::into).collect(),
            dockerfile: d.dockerfile_text.clone(),
            dockerfile_name: d.dockerfile_name.clone(),
            dockerignore: d.ignore_text.clone(),
            target: request.target.clone(),
            build_args: request.build_args.clone(),
            no_cache: request.no_cache,
            source_date_epoch: request.source_date_epoch,
            allow: request.allow.clone(),
            context: d.context_name.clone(),
            frontend: request.frontend.clone(),
            extra_hosts: request.extra_hosts.clone(),
        })
        .await
        .map(tonic::Response::into_inner)
        .map_err(|s| remote_error(&conn.address, s, &conn.refusal))
}

/// Syncs the context, runs the build and hands every event to `on_event` as it arrives.
/// Dropping the returned future (Ctrl-C) drops the stream, and the satellite cancels.
pub async fn build(
    conn: &mut Connection,
    b: RemoteBuild,
    on_event: &mut (dyn FnMut(berth_build::Event) + Send),
) -> Result<RemoteResult, SatError> {
    let d = describe(&b).await?;
    build_described(conn, b, d, on_event).await
}

/// [`build`] of a build already [`describe`]d.
pub async fn build_described(
    conn: &mut Connection,
    mut b: RemoteBuild,
    d: Described,
    on_event: &mut (dyn FnMut(berth_build::Event) + Send),
) -> Result<RemoteResult, SatError> {
    let addr = conn.address.clone();
    let refusal = conn.refusal.clone();
    let err = |s: tonic::Status| remote_error(&addr, s, &refusal);
    let Described {
        entries,
        context_name,
        dockerfile_text,
        dockerfile_name,
        ignore_text,
    } = d;
    let prepared = conn
        .grpc
        .prepare_context(proto::PrepareContextRequest {
            context: context_name.clone(),
            entries: entries.iter().cloned().map(Into::into).collect(),
        })
        .await
        .map_err(err)?
        .into_inner();
    let (mut uploaded_files, mut uploaded_bytes) = (0, 0);
    if !prepared.missing.is_empty() {
        let by_digest: HashMap<&str, &Entry> =
            entries.iter().map(|e| (e.digest.as_str(), e)).collect();
        let mut files = Vec::new();
        for d in &prepared.missing {
            let e = by_digest.get(d.as_str()).ok_or_else(|| {
                SatError::Remote(format!(
                    "the satellite asked for {d}, which is not in the context"
                ))
            })?;
            files.push((d.clone(), b.context.join(&e.path)));
        }
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let reader = tokio::task::spawn_blocking(move || -> Result<(), SatError> {
            use std::io::Read;
            // Chunks of at most CHUNK bytes, sent in batches of about as much: a batch
            // carries hundreds of small files (one message and one socket write instead
            // of one per file, which is what a cold context of small files cost).
            const CHUNK: u64 = 1 << 20;
            let mut batch = proto::FileBatch::default();
            let mut batched = 0u64;
            for (digest, path) in files {
                let mut f = std::fs::File::open(&path).map_err(SatError::io("open", &path))?;
                // Buffers sized to the file: most context files are small.
                let mut left = f.metadata().map_err(SatError::io("inspect", &path))?.len();
                loop {
                    let want = left.min(CHUNK) as usize;
                    let mut buf = Vec::with_capacity(want);
                    let n = (&mut f)
                        .take(want as u64)
                        .read_to_end(&mut buf)
                        .map_err(SatError::io("read", &path))?;
                    left -= n as u64;
                    // Per chunk, framing costs a few bytes beside the digest.
                    batched += n as u64 + 80;
                    batch.chunks.push(proto::FileChunk {
                        digest: digest.clone(),
                        data: buf,
                    });
                    if batched >= CHUNK {
                        batched = 0;
                        if tx.blocking_send(std::mem::take(&mut batch)).is_err() {
                            return Ok(());
                        }
                    }
                    // An empty file is one empty chunk; a file that shrank ends early
                    // (the satellite then refuses its digest).
                    if left == 0 || n < want {
                        break;
                    }
                }
            }
            if !batch.chunks.is_empty() {
                let _ = tx.blocking_send(batch);
            }
            Ok(())
        });
        let up = conn
            .grpc
            .upload_files(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await;
        reader
            .await
            .map_err(|e| SatError::Internal(e.to_string()))??;
        let up = up.map_err(err)?.into_inner();
        uploaded_files = up.files;
        uploaded_bytes = up.bytes;
    }
    b.request.context = context_name;
    b.request.snapshot = prepared.snapshot;
    b.request.dockerfile = dockerfile_text;
    b.request.dockerfile_name = dockerfile_name;
    if b.dockerfile.is_some() {
        b.request.dockerignore = ignore_text;
    }
    // `--ssh`: an SshAgent session first, its id in the request; it relays the steps'
    // agent connections to the agents here while the build runs.
    let _agents = if b.ssh.is_empty() {
        None
    } else {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let mut inbound = conn
            .grpc
            .ssh_agent(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .map_err(err)?
            .into_inner();
        let first = inbound.message().await.map_err(err)?.ok_or_else(|| {
            SatError::Remote("the satellite ended the SSH agent session at once".into())
        })?;
        b.request.ssh = b.ssh.keys().cloned().collect();
        b.request.ssh_session = first.session;
        Some(crate::ssh::AbortOnDrop::new(tokio::spawn(
            crate::ssh::serve_agents(inbound, tx, b.ssh.clone()),
        )))
    };
    let mut stream = conn.grpc.build(b.request).await.map_err(err)?.into_inner();
    let mut locals = Locals {
        base: b.context.clone(),
        open: HashMap::new(),
        written: Vec::new(),
    };
    while let Some(msg) = stream.next().await {
        let ev = msg.map_err(err)?;
        let Some(ev) = ev.event else { continue };
        let step = |id: u32| id as usize;
        let e = match ev {
            Ev::Result(result) => {
                return Ok(RemoteResult {
                    result,
                    entries: entries.len(),
                    uploaded_files,
                    uploaded_bytes,
                    artifacts: locals.written,
                });
            }
            Ev::Local(piece) => {
                locals.piece(piece).await?;
                continue;
            }
            Ev::Started(s) => berth_build::Event::Started {
                id: step(s.id),
                name: s.name,
            },
            Ev::Cached(s) => berth_build::Event::Cached {
                id: step(s.id),
                name: s.name,
            },
            Ev::Reason(r) => berth_build::Event::Reason {
                id: step(r.id),
                name: r.name,
                reason: r.reason,
            },
            Ev::Log(l) => berth_build::Event::Log {
                id: step(l.id),
                stream: if l.stream == 2 {
                    berth_build::Stream::Stderr
                } else {
                    berth_build::Stream::Stdout
                },
                data: l.data,
            },
            Ev::Done(d) => berth_build::Event::Done {
                id: step(d.id),
                name: d.name,
                elapsed: std::time::Duration::from_millis(d.elapsed_ms),
            },
            Ev::Failed(s) => berth_build::Event::Failed {
                id: step(s.id),
                name: s.name,
            },
        };
        on_event(e);
    }
    Err(SatError::Remote(format!(
        "satellite {} ended the build without a result (did it stop?)",
        conn.address
    )))
}

#[cfg(test)]
mod tests {
    #[test]
    fn push_hosts_are_found_in_the_earthfile_and_args() {
        let text = "VERSION 0.8\nFROM busybox:1.36\nimage:\n  SAVE IMAGE --push registry.example.com/team/app:1 \"localhost:5000/x:y\"\n  ARG REG=other.invalid\n  ARG MIRROR=mirror.invalid:5002\n  SAVE IMAGE --push $REG/app\n";
        let hosts = super::earthfile_registry_hosts(
            text,
            ["127.0.0.1:5001/a/b:c", "plain", "reg.invalid:5003", "1.2"],
        );
        let got: Vec<&str> = hosts.iter().map(String::as_str).collect();
        assert_eq!(
            got,
            [
                "1.2",
                "127.0.0.1:5001",
                "localhost:5000",
                "mirror.invalid:5002",
                "reg.invalid:5003",
                "registry.example.com"
            ]
        );
    }
}
