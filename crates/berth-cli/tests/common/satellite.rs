//! Satellites as tests run them: a `berth satellite serve` process ([`Sat`]) and client
//! machines with their own config directory and root ([`Client`]), on loopback or in
//! network namespaces of their own (berth-testutil's `netns::Lab`).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use berth_testutil::netns::Host;

use super::{Output, berth_bin, free_port, output, output_ok, run};

/// A running `berth satellite serve`, killed on drop.
pub struct Sat {
    pub child: Child,
    pub root: PathBuf,
    /// `host:port` tokens carry.
    pub addr: String,
    /// The namespace it runs in, if any.
    pub host: Option<Host>,
}

impl Sat {
    /// Serves `root` on `addr` (inside `host` if given) with extra `args`.
    pub fn start(host: Option<&Host>, root: &Path, addr: &str, args: &[&str]) -> Sat {
        Sat::start_with(host, root, addr, args, &[], Stdio::inherit())
    }

    /// Like [`Sat::start`], with extra environment and the log going to `stderr`.
    pub fn start_with(
        host: Option<&Host>,
        root: &Path,
        addr: &str,
        args: &[&str],
        env: &[(&str, &str)],
        stderr: Stdio,
    ) -> Sat {
        let mut c = match host {
            Some(h) => h.command(berth_bin()),
            None => Command::new(berth_bin()),
        };
        c.arg("--root")
            .arg(root)
            .args(["satellite", "serve", "--addr", addr, "--name", "sat1"])
            .args(args)
            .env("BERTH_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(stderr);
        let mut child = c.spawn().expect("spawn berth satellite serve");
        let mut line = String::new();
        let mut reader = BufReader::new(child.stdout.take().unwrap());
        reader
            .read_line(&mut line)
            .expect("read the satellite's first line");
        // Keep reading what else it prints (the first-start token).
        std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
        let addr = line
            .split("tokens name ")
            .nth(1)
            .and_then(|r| r.split(')').next())
            .unwrap_or_else(|| panic!("the satellite did not say its address: {line:?}"))
            .to_string();
        Sat {
            child,
            root: root.to_path_buf(),
            addr,
            host: host.cloned(),
        }
    }

    /// A satellite on a free port of 127.0.0.1 (advertised as 127.0.0.1), with `args`.
    pub fn on_loopback(root: &Path, args: &[&str]) -> Sat {
        let addr = format!("127.0.0.1:{}", free_port());
        let mut all = vec!["--advertise", "127.0.0.1"];
        all.extend_from_slice(args);
        Sat::start(None, root, &addr, &all)
    }

    /// `berth satellite token create ARGS` on the satellite's root: the token.
    pub fn token(&self, args: &[&str]) -> String {
        let out = output_ok(
            Command::new(berth_bin())
                .arg("--root")
                .arg(&self.root)
                .args(["satellite", "token", "create"])
                .args(args),
        );
        let token = out.stdout.trim().to_string();
        assert_eq!(
            token.lines().count(),
            1,
            "the token alone on stdout: {token}"
        );
        token
    }

    /// `berth satellite ARGS` on the satellite's root.
    pub fn admin(&self, args: &[&str]) -> Output {
        output(
            Command::new(berth_bin())
                .arg("--root")
                .arg(&self.root)
                .arg("satellite")
                .args(args),
        )
    }

    /// Containers runc runs for the satellite's builds.
    pub fn containers(&self) -> usize {
        let state = self.root.join("exec/runc");
        let out = Command::new("runc")
            .arg("--root")
            .arg(&state)
            .args(["list", "-q"])
            .output()
            .expect("runc list");
        String::from_utf8_lossy(&out.stdout).lines().count()
    }

    /// `GET https://ADDR/PATH` without a client certificate (curl, trusting the
    /// satellite's CA, from the satellite's own host): status code and body.
    pub fn get(&self, path: &str) -> (u16, String) {
        let mut c = match &self.host {
            Some(h) => h.command("curl"),
            None => Command::new("curl"),
        };
        let out = output(
            c.args([
                "-sS",
                "--max-time",
                "20",
                "-w",
                "\n%{http_code}",
                "--cacert",
            ])
            .arg(self.root.join("satellite/pki/ca.crt"))
            .arg(format!("https://{}{path}", self.addr)),
        );
        assert!(out.success, "curl {path}: {}", out.stderr);
        let (body, code) = out.stdout.rsplit_once('\n').unwrap();
        (code.trim().parse().unwrap(), body.to_string())
    }

    /// The value of one sample of `/metrics`, e.g. `berth_satellite_builds_total{result="ok"}`.
    pub fn metric(&self, sample: &str) -> f64 {
        let (code, text) = self.get("/metrics");
        assert_eq!(code, 200, "{text}");
        text.lines()
            .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no sample {sample} in /metrics:\n{text}"))
            .trim()
            .parse()
            .unwrap()
    }

    /// Send SIGTERM.
    pub fn sigterm(&self) {
        run(Command::new("kill").args(["-TERM", &self.child.id().to_string()]));
    }

    /// Wait until it exits.
    pub fn wait(&mut self) -> ExitStatus {
        self.child.wait().expect("wait for the satellite")
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Sat {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A client machine: its own config directory and berth root, maybe in a namespace.
pub struct Client {
    pub host: Option<Host>,
    pub cfg: PathBuf,
    pub root: PathBuf,
    /// Its name on satellites.
    pub name: String,
}

impl Client {
    pub fn new(dir: &Path, name: &str, host: Option<Host>) -> Client {
        Client {
            host,
            cfg: dir.join(format!("{name}-config")),
            root: dir.join(format!("{name}-root")),
            name: name.to_string(),
        }
    }

    pub fn berth(&self) -> Command {
        let mut c = match &self.host {
            Some(h) => h.command(berth_bin()),
            None => Command::new(berth_bin()),
        };
        c.env("XDG_CONFIG_HOME", &self.cfg)
            .env("BERTH_LOG", "warn")
            .env("SOURCE_DATE_EPOCH", "0")
            .arg("--root")
            .arg(&self.root);
        c
    }

    /// `berth satellite add NAME --token T --client-name <its name>`.
    pub fn add(&self, name: &str, token: &str) -> Output {
        output(self.berth().args([
            "satellite",
            "add",
            name,
            "--token",
            token,
            "--client-name",
            &self.name,
        ]))
    }

    /// `berth login -u USER --password-stdin ADDR` into the Docker config `docker_cfg`.
    pub fn login(&self, docker_cfg: &Path, addr: &str, user: &str, password: &str) {
        let mut login = self.berth();
        login
            .args(["login", "-u", user, "--password-stdin", addr])
            .env("DOCKER_CONFIG", docker_cfg)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = login.spawn().unwrap();
        std::io::Write::write_all(
            child.stdin.as_mut().unwrap(),
            format!("{password}\n").as_bytes(),
        )
        .unwrap();
        drop(child.stdin.take());
        assert!(child.wait().unwrap().success(), "berth login {addr}");
    }

    /// The SHA-256 of `bytes` in hex (sha256sum).
    pub fn sha256_hex(bytes: &[u8]) -> String {
        let out = Command::new("sha256sum")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                std::io::Write::write_all(c.stdin.as_mut().unwrap(), bytes)?;
                drop(c.stdin.take());
                c.wait_with_output()
            })
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    }

    pub fn build(&self, ctx: &Path, args: &[&str]) -> Command {
        let mut c = self.berth();
        c.args(["build", "--progress", "plain"]).args(args).arg(ctx);
        c
    }

    pub fn satellite_dir(&self, name: &str) -> PathBuf {
        self.cfg.join("berth/satellites").join(name)
    }
}

/// Polls `cond` until it holds; panics with `what` after a minute.
pub fn wait_for(what: &str, cond: &dyn Fn() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < Duration::from_secs(60), "{what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A RUN that waits (at most 5 minutes) for `file` to appear in the cache mount `gate`,
/// which other builds on the satellite, or the test through the satellite's root, create.
pub fn wait_at_gate(file: &str) -> String {
    format!(
        "RUN --mount=type=cache,target=/gate,id=gate sh -c \
         'for i in $(seq 3000); do [ -f /gate/{file} ] && exit 0; sleep 0.1; done; exit 1'"
    )
}

/// Opens the gate of [`wait_at_gate`] from outside: the cache mount lives in the root.
pub fn open_gate(root: &Path, file: &str) {
    let mounts = root.join("cache/mounts");
    let dirs: Vec<_> = std::fs::read_dir(&mounts)
        .unwrap_or_else(|e| panic!("{}: {e}", mounts.display()))
        .flatten()
        .filter(|e| e.path().is_dir())
        .collect();
    assert_eq!(dirs.len(), 1, "one cache mount (the gate) in {mounts:?}");
    std::fs::write(dirs[0].path().join(file), "").unwrap();
}
