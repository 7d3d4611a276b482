//! SSH agent forwarding over the satellite session (`berth build --satellite … --ssh`).
//!
//! The client opens an `SshAgent` stream before its build; the satellite answers with a
//! session id, which the build request names. For each agent id the build forwards, the
//! satellite listens on a socket in the build's folder and gives that path to the
//! solver as the agent (the solver relays each step's socket to it, as for a local
//! agent). Each connection to it is announced to the client (`open`, with a number),
//! its bytes travel as `data` frames both ways, and `close` ends it; the client
//! connects each announced connection to its own agent. The keys never leave the
//! client's agent: the step can only ask it to sign, as with `ssh -A`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tonic::Status;

use crate::proto::SshFrame;

/// One client's SshAgent stream, as the satellite holds it.
pub(crate) struct Session {
    /// The client it belongs to: only its builds may use it.
    pub(crate) client: String,
    out: mpsc::Sender<Result<SshFrame, Status>>,
    /// The write halves of the step connections, by number.
    conns: tokio::sync::Mutex<HashMap<u64, OwnedWriteHalf>>,
    next: AtomicU64,
}

/// A task that ends when this is dropped.
pub(crate) struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl AbortOnDrop {
    pub(crate) fn new(task: tokio::task::JoinHandle<()>) -> AbortOnDrop {
        AbortOnDrop(task)
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Session {
    pub(crate) fn new(client: String, out: mpsc::Sender<Result<SshFrame, Status>>) -> Session {
        Session {
            client,
            out,
            conns: tokio::sync::Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
        }
    }

    /// Listen at `socket` for the agent `agent`: each connection is announced to the
    /// client and relayed, until the returned guard is dropped (the build's end).
    pub(crate) fn listen(
        self: &std::sync::Arc<Self>,
        agent: String,
        socket: &Path,
    ) -> std::io::Result<AbortOnDrop> {
        let listener = UnixListener::bind(socket)?;
        let session = self.clone();
        Ok(AbortOnDrop::new(tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                session.relay(&agent, stream).await;
            }
        })))
    }

    /// Announce `stream` (a step's connection to `agent`) and pump its bytes to the
    /// client; the client's bytes come back through [`Session::incoming`].
    async fn relay(self: &std::sync::Arc<Self>, agent: &str, stream: UnixStream) {
        let conn = self.next.fetch_add(1, Ordering::Relaxed);
        let (read, write) = stream.into_split();
        self.conns.lock().await.insert(conn, write);
        let open = SshFrame {
            conn,
            open: agent.to_string(),
            ..Default::default()
        };
        if self.out.send(Ok(open)).await.is_err() {
            self.conns.lock().await.remove(&conn);
            return;
        }
        tokio::spawn(pump(read, conn, self.out.clone(), Ok));
    }

    /// A frame from the client: bytes for a step connection, or its end.
    pub(crate) async fn incoming(&self, frame: SshFrame) {
        deliver(&mut *self.conns.lock().await, &frame).await;
    }
}

/// The client's side: connect each connection the satellite announces on `inbound` to
/// the local agent of its id (`agents`), and relay bytes both ways through `out`,
/// until the stream ends.
pub(crate) async fn serve_agents(
    mut inbound: tonic::Streaming<SshFrame>,
    out: mpsc::Sender<SshFrame>,
    agents: HashMap<String, std::path::PathBuf>,
) {
    let mut conns: HashMap<u64, OwnedWriteHalf> = HashMap::new();
    while let Ok(Some(frame)) = inbound.message().await {
        let conn = frame.conn;
        if !frame.open.is_empty() {
            let stream = match agents.get(&frame.open) {
                Some(path) => UnixStream::connect(path).await.map_err(|e| {
                    tracing::warn!("connect to the ssh agent at {}: {e}", path.display())
                }),
                None => Err(()),
            };
            let Ok(stream) = stream else {
                let close = SshFrame {
                    conn,
                    close: true,
                    ..Default::default()
                };
                let _ = out.send(close).await;
                continue;
            };
            let (read, write) = stream.into_split();
            conns.insert(conn, write);
            tokio::spawn(pump(read, conn, out.clone(), |f| f));
        } else {
            deliver(&mut conns, &frame).await;
        }
    }
}

/// A `data` or `close` frame for one of `conns`: its bytes written, or its end.
async fn deliver(conns: &mut HashMap<u64, OwnedWriteHalf>, frame: &SshFrame) {
    if frame.close {
        if let Some(mut w) = conns.remove(&frame.conn) {
            let _ = w.shutdown().await;
        }
    } else if let Some(w) = conns.get_mut(&frame.conn)
        && w.write_all(&frame.data).await.is_err()
    {
        conns.remove(&frame.conn);
    }
}

/// Send what comes on `read` as `data` frames of connection `conn`, then a `close`.
async fn pump<T>(
    mut read: tokio::net::unix::OwnedReadHalf,
    conn: u64,
    out: mpsc::Sender<T>,
    wrap: fn(SshFrame) -> T,
) {
    let mut buf = vec![0u8; 16 << 10];
    loop {
        match read.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let data = SshFrame {
                    conn,
                    data: buf[..n].to_vec(),
                    ..Default::default()
                };
                if out.send(wrap(data)).await.is_err() {
                    return;
                }
            }
        }
    }
    let close = SshFrame {
        conn,
        close: true,
        ..Default::default()
    };
    let _ = out.send(wrap(close)).await;
}
