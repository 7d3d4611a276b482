//! SSH-driven hosts (`[deploy.hosts.NAME] ssh = "user@host"`): no agent installed by
//! hand, no enrollment. The system `ssh` (the user's config, keys, agent and known
//! hosts; `BERTH_SSH_COMMAND` replaces the `ssh` word, as `GIT_SSH_COMMAND` does for git)
//! forwards two unix sockets of the host to a private directory of this machine: its
//! dockerd's and the agent's. Through dockerd's API berth makes sure the host runs its
//! agent as a container:
//!
//! - image `berth-agent:<id>`, imported (`docker import` of a tar made here) from this
//!   very `berth` binary and the shared libraries `ldd` lists, so both sides run the same
//!   code; a deploy from another berth build replaces the container (its proxy stops for
//!   the restart: a moment without the proxy listening);
//! - container `berth-agent`: host network (its reverse proxy listens on the host's
//!   ports and reaches containers on their bridge addresses, as an installed agent does),
//!   the host's dockerd socket mounted, state in the volume `berth-agent`, restarted by
//!   dockerd (`unless-stopped`), serving the agent API on `agent_socket` (plain HTTP: the
//!   socket is reachable only to those who reach dockerd's).
//!
//! Deploys then run the agent's steps, in that container, through the forwarded socket:
//! pull with per-pull credentials, start beside, health gate, switch, drain, history and
//! locks are the installed agent's.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig, RestartPolicy, RestartPolicyNameEnum};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, RemoveContainerOptions,
};
use futures_util::StreamExt;

use crate::client::{AgentClient, HostRecord};
use crate::config::SshHost;
use crate::error::DeployError;

/// The agent container's name on an SSH-driven host.
pub const AGENT_CONTAINER: &str = "berth-agent";
/// The volume that keeps its state (history, current containers).
pub const AGENT_VOLUME: &str = "berth-agent";
/// How long ssh may take to log in, and the agent to answer after a (re)start.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// An `ssh -N -L …` process and its private directory; killed and removed on drop.
struct Tunnel {
    child: Mutex<Child>,
    dir: PathBuf,
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        if let Ok(mut c) = self.child.lock() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The words that start ssh: `BERTH_SSH_COMMAND` split at white space, else `ssh`.
fn ssh_command() -> Vec<String> {
    std::env::var("BERTH_SSH_COMMAND")
        .ok()
        .map(|s| s.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
        .filter(|w| !w.is_empty())
        .unwrap_or_else(|| vec!["ssh".to_owned()])
}

/// This machine's name in lock messages: `user@hostname`.
fn local_name() -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| "user".into());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".into());
    format!("{user}@{host}")
}

fn private_dir() -> Result<PathBuf, DeployError> {
    static N: AtomicUsize = AtomicUsize::new(0);
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!(
        "berth-ssh-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).map_err(DeployError::io("create", &dir))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
        .map_err(DeployError::io("chmod", &dir))?;
    Ok(dir)
}

impl Tunnel {
    /// Logs in to `host` and forwards its dockerd and agent sockets into a private
    /// directory (`docker.sock`, `agent.sock`).
    async fn open(name: &str, host: &SshHost) -> Result<Tunnel, DeployError> {
        let dir = private_dir()?;
        let words = ssh_command();
        let log = dir.join("ssh.log");
        let child = Command::new(&words[0])
            .args(&words[1..])
            .args(["-N", "-T"])
            .args(["-o", "BatchMode=yes"])
            .args(["-o", "ExitOnForwardFailure=yes"])
            .args(["-o", "StreamLocalBindUnlink=yes"])
            .args(["-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3"])
            .arg("-L")
            .arg(format!(
                "{}:{}",
                dir.join("docker.sock").display(),
                host.docker_socket
            ))
            .arg("-L")
            .arg(format!(
                "{}:{}",
                dir.join("agent.sock").display(),
                host.agent_socket
            ))
            .arg("--")
            .arg(&host.destination)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).map_err(DeployError::io("create", &log))?)
            .spawn()
            .map_err(|e| {
                DeployError::Remote(format!(
                    "host {name}: cannot run {:?}: {e}; install OpenSSH's client or set \
                     BERTH_SSH_COMMAND",
                    words[0]
                ))
            })?;
        let tunnel = Tunnel {
            child: Mutex::new(child),
            dir,
        };
        let start = Instant::now();
        loop {
            if tunnel.dir.join("docker.sock").exists() && tunnel.dir.join("agent.sock").exists() {
                return Ok(tunnel);
            }
            let exited = tunnel
                .child
                .lock()
                .expect("child")
                .try_wait()
                .ok()
                .flatten();
            if let Some(status) = exited {
                let said = std::fs::read_to_string(&log).unwrap_or_default();
                return Err(DeployError::Remote(format!(
                    "host {name}: ssh {} {status}: {}; check that `ssh {}` logs in without a \
                     prompt and that its user may use {}",
                    host.destination,
                    said.trim(),
                    host.destination,
                    host.docker_socket
                )));
            }
            if start.elapsed() > READY_TIMEOUT {
                return Err(DeployError::Remote(format!(
                    "host {name}: ssh {} did not log in within {READY_TIMEOUT:?}",
                    host.destination
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A client of SSH-driven host `name`'s agent: logs in, starts (or replaces) the agent
/// container when it is missing or from another berth binary, and waits until it
/// answers. The SSH connection lasts as long as the client.
pub async fn connect(name: &str, host: &SshHost) -> Result<AgentClient, DeployError> {
    let tunnel = Tunnel::open(name, host).await?;
    let at = |e: DeployError| match e {
        DeployError::Docker(m) => DeployError::Docker(format!("host {name}: {m}")),
        e => e,
    };
    let docker = Docker::connect_with_unix(
        &tunnel.dir.join("docker.sock").to_string_lossy(),
        600,
        bollard::API_DEFAULT_VERSION,
    )
    .map_err(|e| DeployError::Docker(format!("host {name}: {e}")))?;
    let docker = docker.negotiate_version().await.map_err(|e| {
        DeployError::Docker(format!(
            "host {name}: dockerd at {} over ssh: {}",
            host.docker_socket,
            crate::engine::docker_message(&e)
        ))
    })?;
    let started = ensure_agent(&docker, name, host).await.map_err(at)?;
    let rec = HostRecord {
        name: name.to_owned(),
        address: if host.destination.starts_with("ssh://") {
            host.destination.clone()
        } else {
            format!("ssh://{}", host.destination)
        },
        agent: name.to_owned(),
    };
    let socket = tunnel.dir.join("agent.sock");
    let client = AgentClient::unix(rec, socket, local_name(), Arc::new(tunnel));
    let start = Instant::now();
    loop {
        match client.status().await {
            Ok(_) => return Ok(client),
            Err(e) if start.elapsed() > READY_TIMEOUT || !started => {
                let logs = crate::engine::container_logs(&docker, AGENT_CONTAINER).await;
                return Err(DeployError::Remote(format!(
                    "host {name}: berth's agent container does not answer: {e}\n\
                     its last log lines:\n{logs}"
                )));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// The image of this berth binary: `berth-agent:<version>-<id of the file>`.
fn agent_image(exe: &Path) -> Result<String, DeployError> {
    use sha2::Digest;
    let meta = std::fs::metadata(exe).map_err(DeployError::io("stat", exe))?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let id = sha2::Sha256::digest(format!("{}:{}:{mtime}", exe.display(), meta.len()));
    let hex: String = id.iter().take(6).map(|b| format!("{b:02x}")).collect();
    Ok(format!(
        "berth-agent:{}-{hex}",
        env!("CARGO_PKG_VERSION").replace('+', "-")
    ))
}

/// The files of a root file system that runs `exe`: itself as `/berth`, the shared
/// libraries `ldd` names (at their paths), an empty `/tmp`.
fn agent_rootfs(exe: &Path) -> Result<Vec<u8>, DeployError> {
    let mut libs = Vec::new();
    // A static binary makes ldd fail: it needs nothing more.
    if let Ok(out) = Command::new("ldd").arg(exe).output()
        && out.status.success()
    {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let path = match line.split_once("=> ") {
                Some((_, rest)) => rest,
                None => line.trim(),
            };
            let path = path.split(" (").next().unwrap_or("").trim();
            if path.starts_with('/') {
                libs.push(PathBuf::from(path));
            }
        }
    }
    let mut b = tar::Builder::new(Vec::new());
    let mut dir = tar::Header::new_gnu();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o1777);
    dir.set_size(0);
    let mut add_dir = |b: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32| {
        dir.set_mode(mode);
        b.append_data(&mut dir.clone(), path, std::io::empty())
    };
    let io = |e: std::io::Error| DeployError::Internal(format!("agent image tar: {e}"));
    add_dir(&mut b, "tmp", 0o1777).map_err(io)?;
    add_dir(&mut b, "var/lib/berth", 0o700).map_err(io)?;
    let add_file = |b: &mut tar::Builder<Vec<u8>>, from: &Path, to: &str| {
        let data = std::fs::read(from).map_err(DeployError::io("read", from))?;
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o755);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, to, data.as_slice()).map_err(io)
    };
    add_file(&mut b, exe, "berth")?;
    for lib in &libs {
        let rel = lib.to_string_lossy();
        add_file(&mut b, lib, rel.trim_start_matches('/'))?;
    }
    b.into_inner().map_err(io)
}

/// Makes sure `berth-agent` runs this binary's image; true when it was (re)started.
async fn ensure_agent(docker: &Docker, name: &str, host: &SshHost) -> Result<bool, DeployError> {
    let derr = |what: &'static str| {
        move |e: bollard::errors::Error| {
            DeployError::Docker(format!("{what}: {}", crate::engine::docker_message(&e)))
        }
    };
    let exe = std::env::current_exe().map_err(|e| {
        DeployError::Internal(format!("cannot find berth's own binary to install: {e}"))
    })?;
    let image = agent_image(&exe)?;
    if docker.inspect_image(&image).await.is_err() {
        let tar = tokio::task::spawn_blocking(move || agent_rootfs(&exe))
            .await
            .map_err(|e| DeployError::Internal(format!("worker panicked: {e}")))??;
        let (repo, tag) = image.split_once(':').expect("a tag");
        let opts = CreateImageOptions {
            from_src: Some("-".into()),
            repo: Some(repo.into()),
            tag: Some(tag.into()),
            ..Default::default()
        };
        let mut s = docker.create_image(Some(opts), Some(bollard::body_full(tar.into())), None);
        while let Some(item) = s.next().await {
            item.map_err(derr("import berth's agent image"))?;
        }
        tracing::info!(host = name, %image, "agent image imported");
    }
    let running = docker.inspect_container(AGENT_CONTAINER, None).await.ok();
    if let Some(c) = &running {
        let same = c.config.as_ref().and_then(|c| c.image.as_deref()) == Some(image.as_str());
        let up = c.state.as_ref().and_then(|s| s.running) == Some(true);
        if same && up {
            return Ok(false);
        }
        if same {
            docker
                .start_container(AGENT_CONTAINER, None)
                .await
                .map_err(derr("start berth's agent container"))?;
            return Ok(true);
        }
        let rm = RemoveContainerOptions {
            force: true,
            ..Default::default()
        };
        docker
            .remove_container(AGENT_CONTAINER, Some(rm))
            .await
            .map_err(derr("replace berth's agent container"))?;
    }
    let (socket_dir, _) = host
        .agent_socket
        .rsplit_once('/')
        .expect("checked by the deploy file");
    let body = ContainerCreateBody {
        image: Some(image.clone()),
        cmd: Some(vec![
            "/berth".into(),
            "--root".into(),
            "/var/lib/berth".into(),
            "agent".into(),
            "serve".into(),
            "--name".into(),
            name.into(),
            "--unix".into(),
            host.agent_socket.clone(),
        ]),
        env: Some(vec![
            "DOCKER_HOST=unix:///var/run/docker.sock".into(),
            "HOME=/var/lib/berth".into(),
            "BERTH_LOG=info".into(),
        ]),
        labels: Some([("berth.agent".to_owned(), name.to_owned())].into()),
        host_config: Some(HostConfig {
            network_mode: Some("host".into()),
            // To pin the MAC of the containers' bridge (`crate::bridge`); whoever runs
            // this container has the host's dockerd anyway.
            cap_add: Some(vec!["NET_ADMIN".into()]),
            binds: Some(vec![
                format!("{}:/var/run/docker.sock", host.docker_socket),
                format!("{socket_dir}:{socket_dir}"),
                format!("{AGENT_VOLUME}:/var/lib/berth"),
            ]),
            restart_policy: Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
                maximum_retry_count: None,
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let opts = CreateContainerOptions {
        name: Some(AGENT_CONTAINER.into()),
        ..Default::default()
    };
    match docker.create_container(Some(opts), body).await {
        Ok(_) => {}
        // Another deploying machine made it a moment ago: it starts it too.
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 409, ..
        }) => return Ok(true),
        Err(e) => return Err(derr("create berth's agent container")(e)),
    }
    docker
        .start_container(AGENT_CONTAINER, None)
        .await
        .map_err(derr("start berth's agent container"))?;
    tracing::info!(host = name, %image, "agent container started");
    Ok(true)
}
