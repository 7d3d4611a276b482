//! An sshd of the test's own that lets one user in with one key, in a mount namespace
//! where /etc/passwd has that user (uid 0, home under the test's directory): the
//! machine's files are not touched. Optionally in a network namespace (a deploy host).
//! Killed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::run;

pub struct Sshd {
    child: Child,
    pub port: u16,
    pub known_hosts: PathBuf,
}

impl Sshd {
    /// User `git` on 127.0.0.1 and a free port.
    pub fn start(dir: &Path, client_pub: &Path) -> Sshd {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        Sshd::start_at(dir, client_pub, "git", "127.0.0.1", port, None)
    }

    /// User `user` on `ip:port`, inside network namespace `netns` when given.
    pub fn start_at(
        dir: &Path,
        client_pub: &Path,
        user: &str,
        ip: &str,
        port: u16,
        netns: Option<&str>,
    ) -> Sshd {
        let home = dir.join("home");
        std::fs::create_dir_all(home.join(".ssh")).unwrap();
        std::fs::copy(client_pub, home.join(".ssh/authorized_keys")).unwrap();
        let host_key = dir.join("host_key");
        run(Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&host_key));
        let mut passwd = std::fs::read_to_string("/etc/passwd").unwrap();
        passwd.push_str(&format!("{user}:x:0:0:{user}:{}:/bin/sh\n", home.display()));
        std::fs::write(dir.join("passwd"), passwd).unwrap();
        let config = dir.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "ListenAddress {ip}:{port}\nHostKey {}\nAuthorizedKeysFile {}/.ssh/authorized_keys\n\
                 PidFile none\nStrictModes no\nUsePAM no\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nAllowUsers {user}\n",
                host_key.display(),
                home.display()
            ),
        )
        .unwrap();
        std::fs::create_dir_all("/run/sshd").unwrap();
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/run/netns/{ns}"))
                    .args(["--", "unshare"]);
                c
            }
            None => Command::new("unshare"),
        };
        let child = cmd
            .args(["-m", "--propagation", "private", "sh", "-c"])
            .arg(r#"mount --bind "$1" /etc/passwd && exec /usr/sbin/sshd -D -e -f "$2""#)
            .arg("sh")
            .arg(dir.join("passwd"))
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("sshd.log")).unwrap())
            .spawn()
            .unwrap();
        let host_pub = std::fs::read_to_string(host_key.with_extension("pub")).unwrap();
        let known_hosts = dir.join("known_hosts");
        let name = if port == 22 {
            ip.to_owned()
        } else {
            format!("[{ip}]:{port}")
        };
        std::fs::write(&known_hosts, format!("{name} {host_pub}")).unwrap();
        let mut sshd = Sshd {
            child,
            port,
            known_hosts,
        };
        // Up when it has written "Server listening" to its log.
        let start = std::time::Instant::now();
        while !std::fs::read_to_string(dir.join("sshd.log"))
            .unwrap_or_default()
            .contains("Server listening")
        {
            if let Ok(Some(status)) = sshd.child.try_wait() {
                panic!(
                    "sshd exited {status}: {}",
                    std::fs::read_to_string(dir.join("sshd.log")).unwrap_or_default()
                );
            }
            assert!(start.elapsed().as_secs() < 30, "sshd did not start");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        sshd
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
