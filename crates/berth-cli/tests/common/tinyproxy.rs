//! Debian's tinyproxy as the forward proxy of tests: its log proves which requests
//! crossed it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::{free_port, wait_listening};

/// tinyproxy on a free port of 127.0.0.1, logging each request; killed on drop.
pub struct Proxy {
    child: Child,
    pub addr: String,
    pub log: PathBuf,
}

impl Proxy {
    pub fn start(dir: &Path) -> Proxy {
        let port = free_port();
        let log = dir.join("tinyproxy.log");
        let conf = dir.join("tinyproxy.conf");
        std::fs::write(
            &conf,
            format!(
                "Port {port}\nListen 127.0.0.1\nTimeout 60\nLogFile \"{}\"\nLogLevel Info\n\
                 MaxClients 20\nAllow 127.0.0.1\nDisableViaHeader Yes\n",
                log.display()
            ),
        )
        .unwrap();
        let child = Command::new("tinyproxy")
            .args(["-d", "-c"])
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tinyproxy");
        let addr = format!("127.0.0.1:{port}");
        wait_listening(&addr);
        Proxy { child, addr, log }
    }

    /// Log lines of requests that went to `target` (host:port).
    pub fn requests_to(&self, target: &str) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("Request") && l.contains(target))
            .count()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
