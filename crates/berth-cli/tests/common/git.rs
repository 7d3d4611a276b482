//! A `git daemon` for tests: repositories below a folder, served on 127.0.0.1.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use super::{free_port, run, wait_listening};

/// `git-daemon` over the repositories below `base`; killed on drop.
pub struct GitDaemon {
    child: Child,
    /// `127.0.0.1:port`.
    pub addr: String,
}

impl GitDaemon {
    pub fn start(base: &Path) -> GitDaemon {
        let port = free_port();
        // git-daemon itself, not `git daemon`, whose git parent would leave it running
        // (with the test's output pipe) when killed.
        let exec_path = run(Command::new("git").arg("--exec-path"));
        let child = Command::new(Path::new(exec_path.trim()).join("git-daemon"))
            .args(["--reuseaddr", "--export-all", "--listen=127.0.0.1"])
            .arg(format!("--base-path={}", base.display()))
            .arg(format!("--port={port}"))
            .arg(base)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start git daemon");
        let addr = format!("127.0.0.1:{port}");
        wait_listening(&addr);
        GitDaemon { child, addr }
    }
}

impl Drop for GitDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
