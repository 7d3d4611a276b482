//! Forwarding an SSH agent into a RUN step (`RUN --mount=type=ssh`).
//!
//! The step gets a socket of its own, made for that step with the owner and mode the
//! mount asks for; each connection to it is relayed, byte for byte, to the agent socket
//! the build was given (`--ssh default` is `$SSH_AUTH_SOCK`). The agent keeps its keys;
//! the step can only ask it to sign, as with `ssh -A`.

use std::io;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use crate::error::{BuildError, Result};

/// A listening socket relaying to an agent; dropping it stops accepting (connections
/// already made end when either side closes).
pub(crate) struct Forward {
    socket: PathBuf,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl Forward {
    /// Listen at `socket` and relay every connection to `agent`.
    pub(crate) fn start(socket: &Path, agent: PathBuf) -> Result<Forward> {
        let listener = UnixListener::bind(socket).map_err(|e| {
            BuildError::Io(format!(
                "listen for the ssh agent at {}: {e}",
                socket.display()
            ))
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let accept = std::thread::Builder::new()
            .name("berth-ssh-agent".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if stopped.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    match UnixStream::connect(&agent) {
                        Ok(up) => relay(conn, up),
                        Err(e) => {
                            tracing::warn!("connect to the ssh agent at {}: {e}", agent.display())
                        }
                    }
                }
            })
            .map_err(|e| BuildError::Io(format!("start the ssh agent relay: {e}")))?;
        Ok(Forward {
            socket: socket.to_path_buf(),
            stop,
            accept: Some(accept),
        })
    }
}

impl Drop for Forward {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accepting thread so it sees the flag.
        let _ = UnixStream::connect(&self.socket);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// Copy both ways between `a` and `b` until either side closes.
fn relay(a: UnixStream, b: UnixStream) {
    let pump = |from: &UnixStream, to: &UnixStream| -> io::Result<()> {
        let (mut from, mut to) = (from.try_clone()?, to.try_clone()?);
        std::thread::spawn(move || {
            let _ = io::copy(&mut from, &mut to);
            let _ = to.shutdown(std::net::Shutdown::Write);
        });
        Ok(())
    };
    if pump(&a, &b).and_then(|()| pump(&b, &a)).is_err() {
        tracing::warn!("relay to the ssh agent: cannot copy the connection");
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    /// A request written to the forwarded socket reaches the agent, and its answer comes
    /// back; after the forward is dropped, nothing listens any more.
    #[test]
    fn relays_both_ways_until_dropped() {
        let d = tempfile::tempdir().unwrap();
        let agent_path = d.path().join("agent");
        let agent = UnixListener::bind(&agent_path).unwrap();
        let server = std::thread::spawn(move || {
            let (mut c, _) = agent.accept().unwrap();
            let mut req = [0u8; 5];
            c.read_exact(&mut req).unwrap();
            c.write_all(&[0, 0, 0, 1, req[4] + 1]).unwrap();
        });
        let socket = d.path().join("fwd");
        let fwd = Forward::start(&socket, agent_path).unwrap();
        let mut c = UnixStream::connect(&socket).unwrap();
        c.write_all(&[0, 0, 0, 1, 11]).unwrap();
        let mut answer = [0u8; 5];
        c.read_exact(&mut answer).unwrap();
        assert_eq!(answer, [0, 0, 0, 1, 12]);
        server.join().unwrap();
        drop(fwd);
        assert!(UnixStream::connect(&socket).is_err(), "no longer listening");
    }
}
