//! `berth deploy` to hosts (issue 11): each host a network namespace joined by veth to the
//! deploying side's namespace, with its own dockerd (data root, exec root, pidfile,
//! socket and bridge inside the namespace) and `berth agent serve`; the deploying side
//! runs `berth registry serve` and the `berth` commands. Images are busybox httpd
//! services built by `berth build`.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berth_testutil::netns::{Host, Lab};
use common::sshd::Sshd;
use common::*;

/// The deploying side's address every host routes to (on its loopback).
const REGISTRY_IP: &str = "10.91.0.1";
const REGISTRY: &str = "10.91.0.1:5000";

fn kill(child: &mut Child) {
    if child.try_wait().ok().flatten().is_some() {
        return;
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .stderr(Stdio::null())
        .status();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        if child.try_wait().ok().flatten().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A dockerd inside `host`'s namespace, stopped on drop (its containers with it).
struct Dockerd {
    child: Child,
    socket: PathBuf,
}

impl Dockerd {
    /// With `own_mac` false, the bridge has no MAC of its own (see
    /// `a_bridge_without_a_mac_of_its_own_is_pinned`).
    fn start(host: &Host, dir: &Path, n: u8, own_mac: bool) -> Dockerd {
        std::fs::create_dir_all(dir).unwrap();
        let socket = dir.join("docker.sock");
        // The bridge lives in the namespace: the machine's docker0 is never touched. It
        // gets a MAC of its own, as dockerd gives the bridges it makes: a bridge without
        // one takes the lowest MAC of its ports, so removing the old container's port can
        // move it, and the new container, which learned the old MAC for the bridge's
        // address, sends its answers to the proxy into the void until its neighbour entry
        // expires (an answer in flight then took 14 s: a failed request under load).
        // berth's agent pins such a bridge's MAC (berth-deploy `bridge`).
        let ip = |args: &[&str]| run(Command::new("ip").arg("-n").arg(&host.ns).args(args));
        let mac = format!("02:42:ac:1f:{n:02x}:01");
        if own_mac {
            ip(&["link", "add", "bdeploy", "address", &mac, "type", "bridge"]);
        } else {
            ip(&["link", "add", "bdeploy", "type", "bridge"]);
        }
        ip(&["addr", "add", &format!("172.31.{n}.1/24"), "dev", "bdeploy"]);
        ip(&["link", "set", "bdeploy", "up"]);
        let child = host
            .command("dockerd")
            .arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("docker.pid"))
            .arg("-H")
            .arg(format!("unix://{}", socket.display()))
            .args(["--bridge", "bdeploy"])
            .args(["--iptables=false", "--ip-masq=false", "--ip-forward=false"])
            .args(["--insecure-registry", REGISTRY])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("dockerd.log")).unwrap())
            .spawn()
            .expect("start dockerd");
        let d = Dockerd { child, socket };
        let start = Instant::now();
        while !d.docker(&["version"]).success {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "the host's dockerd did not come up: {}",
                std::fs::read_to_string(dir.join("dockerd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        d
    }

    fn docker(&self, args: &[&str]) -> Output {
        output(
            Command::new(docker())
                .arg("-H")
                .arg(format!("unix://{}", self.socket.display()))
                .args(args),
        )
    }

    /// Names of the containers berth runs for `service`.
    fn containers(&self, service: &str) -> Vec<String> {
        let out = self.docker(&[
            "ps",
            "-a",
            "--filter",
            &format!("label=berth.service={service}"),
            "--format",
            "{{.Names}} {{.Status}}",
        ]);
        assert!(out.success, "{}", out.stderr);
        out.stdout.lines().map(str::to_owned).collect()
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        let out = self.docker(&["ps", "-aq"]);
        for id in out.stdout.split_whitespace() {
            let _ = self.docker(&["rm", "-f", id]);
        }
        kill(&mut self.child);
    }
}

/// `berth agent serve` in a host's namespace, killed on drop.
struct Agent {
    child: Child,
    root: PathBuf,
}

impl Agent {
    fn start(host: &Host, root: &Path, addr: &str, docker_sock: &Path, name: &str) -> Agent {
        let mut child = host
            .command(berth_bin())
            .arg("--root")
            .arg(root)
            .args(["agent", "serve", "--addr", addr, "--name", name])
            .env("DOCKER_HOST", format!("unix://{}", docker_sock.display()))
            .env("BERTH_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(root.with_extension("log")).unwrap())
            .spawn()
            .expect("spawn berth agent serve");
        let mut reader = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        assert!(
            line.contains("listening on"),
            "agent did not start: {line:?}\n{}",
            std::fs::read_to_string(root.with_extension("log")).unwrap_or_default()
        );
        std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
        Agent {
            child,
            root: root.to_path_buf(),
        }
    }

    fn token(&self) -> String {
        let out = output_ok(
            Command::new(berth_bin())
                .arg("--root")
                .arg(&self.root)
                .args(["agent", "token", "create"]),
        );
        out.stdout.trim().to_owned()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

struct DeployHost {
    host: Host,
    /// The agent before the dockerd: the agent goes first on drop. None on an
    /// SSH-driven host.
    agent: Option<Agent>,
    /// The sshd of an SSH-driven host.
    sshd: Option<Sshd>,
    dockerd: Dockerd,
    /// `ip` of the host as the deploying side reaches it.
    ip: String,
    /// The host's directory (dockerd's, the agent's).
    dir: PathBuf,
}

impl DeployHost {
    fn agent(&self) -> &Agent {
        self.agent.as_ref().expect("a host with an installed agent")
    }

    /// Takes the host off the network (its link to the deploying side) or back.
    fn set_link(&self, up: bool) {
        let out = run(Command::new("ip").args([
            "-n",
            &self.host.ns,
            "-o",
            "link",
            "show",
            "type",
            "veth",
        ]));
        // The lab's veth (`bv…`), not those of dockerd's containers.
        let dev = out
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .filter_map(|d| d.split('@').next())
            .find(|d| d.starts_with("bv"))
            .unwrap_or_else(|| panic!("no link to the deploying side in {}: {out}", self.host.ns))
            .to_owned();
        run(Command::new("ip").args([
            "-n",
            &self.host.ns,
            "link",
            "set",
            &dev,
            if up { "up" } else { "down" },
        ]));
        if up {
            // The route to the registry went with the link.
            let n = self.ip.split('.').nth(2).unwrap();
            let _ = output(Command::new("ip").args([
                "-n",
                &self.host.ns,
                "route",
                "replace",
                &format!("{REGISTRY_IP}/32"),
                "via",
                &format!("10.91.{n}.1"),
            ]));
        }
    }

    /// Waits until the deploying side `dep` reaches the host again after
    /// [`DeployHost::set_link`], through a port that is not the proxy's (sshd's or the
    /// agent's): right after the link comes up, the deploying side's neighbour entry of
    /// the host may still be failed, and a connection is refused at once.
    fn wait_reachable(&self, dep: &Host) {
        let port = if self.sshd.is_some() { 22 } else { 8373 };
        let start = Instant::now();
        while !output(
            dep.command("bash")
                .args(["-c", &format!("exec 3<>/dev/tcp/{}/{port}", self.ip)]),
        )
        .success
        {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{} unreachable after its link came up",
                self.ip
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The container of `version` of service web, if one runs.
    fn new_container(&self, version: &str) -> Option<String> {
        self.dockerd
            .containers("web")
            .into_iter()
            .find(|c| c.contains(&format!("-{version}-")))
            .map(|c| c.split(' ').next().unwrap().to_owned())
    }

    /// Where the SSH-driven host's agent container keeps its state (its volume).
    fn agent_volume(&self) -> PathBuf {
        let out = self.dockerd.docker(&[
            "volume",
            "inspect",
            "--format",
            "{{.Mountpoint}}",
            "berth-agent",
        ]);
        assert!(out.success, "{}", out.stderr);
        PathBuf::from(out.stdout.trim())
    }

    /// The files an agent keeps (its root, or the agent container's volume).
    fn agent_files(&self) -> PathBuf {
        match &self.agent {
            Some(a) => a.root.clone(),
            None => self.agent_volume(),
        }
    }
}

/// The deploying side (a namespace with the registry) and `n` hosts.
struct World {
    dir: tempfile::TempDir,
    /// `BERTH_SSH_COMMAND` for the SSH-driven hosts.
    ssh_command: String,
    dep: Host,
    hosts: Vec<DeployHost>,
    registry: Child,
    base: BuildBase,
    _lab: Lab,
}

impl Drop for World {
    fn drop(&mut self) {
        self.hosts.clear();
        kill(&mut self.registry);
    }
}

impl World {
    /// `tag` names the namespaces: tests of this file run in parallel.
    fn new(tag: &str, n: u8) -> World {
        World::with(tag, n, &[])
    }

    /// Hosts numbered in `ssh` (from 1) run no agent but an sshd that lets `deploy` (uid
    /// 0) in with the test's key: the deploy file names them `[deploy.hosts.hN] ssh`.
    fn with(tag: &str, n: u8, ssh: &[u8]) -> World {
        World::with_bridges(tag, n, ssh, true)
    }

    /// [`World::with`]; the hosts' bridges without a MAC of their own unless `own_mac`.
    fn with_bridges(tag: &str, n: u8, ssh: &[u8], own_mac: bool) -> World {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("ssh-key");
        let known_hosts = dir.path().join("known_hosts");
        if !ssh.is_empty() {
            run(Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(&key));
        }
        let ssh_command = format!(
            "ssh -F none -i {} -o IdentitiesOnly=yes -o UserKnownHostsFile={} \
             -o StrictHostKeyChecking=yes",
            key.display(),
            known_hosts.display()
        );
        let mut lab = Lab::new(tag);
        let dep = lab.host("dep");
        run(Command::new("ip").args([
            "-n",
            &dep.ns,
            "addr",
            "add",
            &format!("{REGISTRY_IP}/32"),
            "dev",
            "lo",
        ]));
        let mut hosts = Vec::new();
        for i in 1..=n {
            let host = lab.host(&format!("h{i}"));
            let ip = format!("10.91.{i}.2");
            lab.link(&dep, &format!("10.91.{i}.1/24"), &host, &format!("{ip}/24"));
            run(Command::new("ip").args([
                "-n",
                &host.ns,
                "route",
                "add",
                &format!("{REGISTRY_IP}/32"),
                "via",
                &format!("10.91.{i}.1"),
            ]));
            let hdir = dir.path().join(format!("h{i}"));
            let dockerd = Dockerd::start(&host, &hdir.join("docker"), i, own_mac);
            let (agent, sshd) = if ssh.contains(&i) {
                let sdir = hdir.join("sshd");
                std::fs::create_dir_all(&sdir).unwrap();
                let sshd = Sshd::start_at(
                    &sdir,
                    &key.with_extension("pub"),
                    "deploy",
                    &ip,
                    22,
                    Some(&host.ns),
                );
                let mut kh = std::fs::read_to_string(&known_hosts).unwrap_or_default();
                kh.push_str(&std::fs::read_to_string(&sshd.known_hosts).unwrap());
                std::fs::write(&known_hosts, kh).unwrap();
                (None, Some(sshd))
            } else {
                let agent = Agent::start(
                    &host,
                    &hdir.join("agent-root"),
                    &format!("{ip}:8373"),
                    &dockerd.socket,
                    &format!("h{i}"),
                );
                (Some(agent), None)
            };
            hosts.push(DeployHost {
                host,
                agent,
                sshd,
                dockerd,
                ip,
                dir: hdir,
            });
        }
        // Basic auth: anonymous pulls are refused, so the hosts' pulls prove that the
        // credentials reached their dockerd.
        let htpasswd = dir.path().join("htpasswd");
        run(Command::new("htpasswd")
            .args(["-Bbc"])
            .arg(&htpasswd)
            .args(["deployer", "pull-s3cret"]));
        let mut registry = dep
            .command(berth_bin())
            .arg("--root")
            .arg(dir.path().join("registry"))
            .args(["registry", "serve", "--addr", REGISTRY, "--htpasswd"])
            .arg(&htpasswd)
            .env("BERTH_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn berth registry serve");
        let mut line = String::new();
        BufReader::new(registry.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.contains("listening"), "{line:?}");
        let config = dir.path().join("dep-config/berth");
        std::fs::create_dir_all(&config).unwrap();
        std::fs::write(
            config.join("config.toml"),
            format!("[registries.\"{REGISTRY}\"]\nhttp = true\n"),
        )
        .unwrap();
        World {
            dir,
            ssh_command,
            dep,
            hosts,
            registry,
            base: BuildBase::new(),
            _lab: lab,
        }
    }

    /// `berth` on the deploying side (its namespace, root and config directory).
    fn berth(&self) -> Command {
        let mut c = self.dep.command(berth_bin());
        c.arg("--root")
            .arg(self.dir.path().join("dep-root"))
            .env("XDG_CONFIG_HOME", self.dir.path().join("dep-config"))
            .env("BERTH_LOG", "warn")
            .env("TEST_API_KEY", "s3cret-value")
            .env("TEST_REGISTRY_PASSWORD", "pull-s3cret")
            .env("BERTH_SSH_COMMAND", &self.ssh_command)
            .current_dir(self.dir.path());
        c
    }

    fn enroll_all(&self) {
        for (i, h) in self.hosts.iter().enumerate() {
            let Some(agent) = &h.agent else { continue };
            let token = agent.token();
            let out = output_ok(self.berth().args([
                "host",
                "add",
                &format!("h{}", i + 1),
                "--token",
                &token,
            ]));
            assert!(out.stdout.contains("enrolled with agent"), "{}", out.stdout);
        }
    }

    /// Builds `app:TAG` whose `/` answers `body`; with `healthy`, `/health` answers too.
    fn build(&self, tag: &str, body: &str, healthy: bool) {
        let ctx = self.dir.path().join(format!("ctx-{tag}"));
        std::fs::create_dir_all(ctx.join("www")).unwrap();
        std::fs::write(ctx.join("www/index.html"), format!("{body}\n")).unwrap();
        if healthy {
            std::fs::write(ctx.join("www/health"), "ok\n").unwrap();
        }
        std::fs::write(
            ctx.join("Dockerfile"),
            format!(
                "FROM {}\nCOPY www /www\n\
                 CMD [\"/bin/busybox\", \"httpd\", \"-f\", \"-vv\", \"-p\", \"80\", \"-h\", \"/www\"]\n",
                self.base.reference()
            ),
        )
        .unwrap();
        output_ok(
            berth_build(&self.dir.path().join("dep-root"))
                .args(["-t", &format!("app:{tag}")])
                .arg(&ctx),
        );
    }

    /// The deploy file, with the HTTP health check on `/health`.
    fn write_deploy_file(&self, extra: &str) {
        self.write_deploy_file_with(
            "health = { path = \"/health\", interval = \"200ms\", retries = 10 }",
            extra,
        );
    }

    fn write_deploy_file_with(&self, health: &str, extra: &str) {
        let hosts: Vec<String> = (1..=self.hosts.len())
            .map(|i| format!("\"h{i}\""))
            .collect();
        let mut ssh_hosts = String::new();
        for (i, h) in self.hosts.iter().enumerate() {
            if h.sshd.is_some() {
                ssh_hosts.push_str(&format!(
                    "[deploy.hosts.h{}]\nssh = \"deploy@{}\"\ndocker_socket = \"{}\"\n\
                     agent_socket = \"{}\"\n",
                    i + 1,
                    h.ip,
                    h.dockerd.socket.display(),
                    h.dir.join("run/agent.sock").display()
                ));
            }
        }
        std::fs::write(
            self.dir.path().join("berth.toml"),
            format!(
                "[deploy.registry]\naddress = \"{REGISTRY}\"\nusername = \"deployer\"\n\
                 password_env = \"TEST_REGISTRY_PASSWORD\"\n\
                 [deploy.roles.web]\nhosts = [{}]\n\
                 [deploy.services.web]\nimage = \"app:v1\"\nroles = [\"web\"]\n\
                 ports = [\"8080:80\"]\nstop_timeout = \"2s\"\nenv = {{ GREETING = \"hi\" }}\n\
                 secrets = {{ API_KEY = {{ env = \"TEST_API_KEY\" }} }}\n\
                 {health}\n{extra}\n{ssh_hosts}",
                hosts.join(", ")
            ),
        )
        .unwrap();
    }

    /// Starts `berth deploy --version VERSION` whose health check (a command) passes only
    /// once [`World::let_pass`] says so, and returns when every host started its
    /// container.
    fn deploy_held(&self, version: &str) -> Child {
        self.write_deploy_file_with(
            "health = { cmd = [\"/bin/busybox\", \"test\", \"-e\", \"/tmp/ready\"], \
             interval = \"100ms\", retries = 3000 }",
            "",
        );
        let child = self
            .berth()
            .args(["deploy", "--version", version])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let start = Instant::now();
        while !self
            .hosts
            .iter()
            .all(|h| h.new_container(version).is_some())
        {
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "the deploy of {version} started no container on some host"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        child
    }

    /// Lets the held health checks of [`World::deploy_held`] pass (through each host's
    /// own dockerd socket, which needs no network).
    fn let_pass(&self, version: &str) {
        for h in &self.hosts {
            let name = h.new_container(version).unwrap();
            let touch = h
                .dockerd
                .docker(&["exec", &name, "/bin/busybox", "touch", "/tmp/ready"]);
            assert!(touch.success, "{}", touch.stderr);
        }
    }

    /// `GET /` of the service on host `i` (0-based), from the deploying side.
    fn get(&self, i: usize) -> Output {
        output(self.dep.command("curl").args([
            "-sS",
            "--fail",
            "--max-time",
            "10",
            &format!("http://{}:8080/", self.hosts[i].ip),
        ]))
    }

    fn deploy(&self, args: &[&str]) -> Output {
        output(self.berth().arg("deploy").args(args))
    }

    /// Waits (two minutes at most) until no agent removes old containers any more: a
    /// deploy reports before it stops and removes them, and `deploy ps` says
    /// `(removing the old …)` until then.
    fn settle(&self) {
        let start = Instant::now();
        loop {
            let ps = output_ok(self.berth().args(["deploy", "ps"]));
            if !ps.stdout.contains("(removing the old ") {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "old containers still being removed: {}",
                ps.stdout
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn require_deploy_world() -> bool {
    require_build() && require("dockerd") && require("nsenter") && require("ip") && require("curl")
}

/// A bounded HTTP load from the deploying side on one host's published port, from start
/// to [`Load::stop`]: counts of answers and failures, and the bodies seen.
struct Load {
    child: Child,
    stop: PathBuf,
    bodies: PathBuf,
    errors: PathBuf,
}

impl Load {
    fn start(world: &World, host: usize, tag: &str) -> Load {
        let d = world.dir.path();
        let stop = d.join(format!("stop-{tag}"));
        let bodies = d.join(format!("bodies-{tag}"));
        let errors = d.join(format!("errors-{tag}"));
        let script = format!(
            "ok=0; fail=0; n=0\n\
             while [ ! -e {stop} ] && [ $n -lt 20000 ]; do\n\
               n=$((n+1))\n\
               if out=$(curl -sS --fail --max-time 10 http://{ip}:8080/ 2>&1); then\n\
                 ok=$((ok+1)); echo \"$out\" >> {bodies}\n\
               else\n\
                 fail=$((fail+1)); echo \"$out\" >> {errors}\n\
               fi\n\
             done\n\
             echo \"$ok $fail\"\n",
            stop = stop.display(),
            ip = world.hosts[host].ip,
            bodies = bodies.display(),
            errors = errors.display(),
        );
        let child = world
            .dep
            .command("sh")
            .args(["-c", &script])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        Load {
            child,
            stop,
            bodies,
            errors,
        }
    }

    /// Waits (30 s at most) until the load got `body`.
    fn wait_seen(&self, body: &str) {
        let start = Instant::now();
        while !self.seen(body) {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the load never got {body:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn seen(&self, body: &str) -> bool {
        std::fs::read_to_string(&self.bodies)
            .unwrap_or_default()
            .lines()
            .any(|l| l == body)
    }

    /// (answered, failed, the failures' messages).
    fn stop(self) -> (u64, u64, String) {
        std::fs::write(&self.stop, "").unwrap();
        let out = self.child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let mut it = text.split_whitespace().map(|n| n.parse::<u64>().unwrap());
        let (ok, fail) = (it.next().unwrap(), it.next().unwrap());
        (
            ok,
            fail,
            std::fs::read_to_string(&self.errors).unwrap_or_default(),
        )
    }
}

/// The MAC of bridge `dev` in namespace `ns`.
fn link_mac(ns: &str, dev: &str) -> String {
    let out = run(Command::new("ip").args(["-n", ns, "-br", "link", "show", "dev", dev]));
    out.split_whitespace()
        .nth(2)
        .unwrap_or_else(|| panic!("no MAC in {out:?}"))
        .to_owned()
}

/// A bridge made without a MAC of its own (as `ip link add … type bridge`, brctl or
/// ifupdown make them) takes its ports' lowest one and moves when that port goes. Here the
/// old container's port is given the lowest MAC on purpose, as it happens by chance (the
/// bench's lost requests: a request of the load hung until curl gave up): the new
/// container learns it for the bridge's address, and once the old container is removed
/// its answers to the proxy go to a MAC nobody has, until its neighbour entry expires
/// (15 to 45 s). The agent pins the bridge's MAC at a deploy, so nothing moves: zero
/// failed requests, and the bridge keeps its MAC when a port's changes.
#[test]
fn a_bridge_without_a_mac_of_its_own_is_pinned() {
    if !require_deploy_world() {
        return;
    }
    let w = World::with_bridges("dbridge", 1, &[], false);
    w.enroll_all();
    w.build("v1", "version-1", true);
    w.build("v2", "version-2", true);
    w.write_deploy_file("");
    let h = &w.hosts[0];
    let out = w.deploy(&[]);
    assert!(out.success, "{}\n{}", out.stdout, out.stderr);
    assert!(!out.stderr.contains("could not pin"), "{}", out.stderr);
    // The first deploy pinned the bridge's MAC.
    let pinned = link_mac(&h.host.ns, "bdeploy");

    // The old container's port takes the lowest MAC there can be.
    let old = h.new_container("v1").expect("v1 runs");
    let iflink = h.dockerd.docker(&[
        "exec",
        &old,
        "/bin/busybox",
        "cat",
        "/sys/class/net/eth0/iflink",
    ]);
    assert!(iflink.success, "{}", iflink.stderr);
    let links = run(Command::new("ip").args(["-n", &h.host.ns, "-o", "link"]));
    let port = links
        .lines()
        .find_map(|l| {
            let (index, rest) = l.split_once(": ")?;
            (index == iflink.stdout.trim())
                .then(|| rest.split(['@', ':']).next().unwrap().to_owned())
        })
        .unwrap_or_else(|| panic!("no link {} in {links}", iflink.stdout.trim()));
    run(Command::new("ip").args([
        "-n",
        &h.host.ns,
        "link",
        "set",
        "dev",
        &port,
        "address",
        "02:00:00:00:00:01",
    ]));
    assert_eq!(
        link_mac(&h.host.ns, "bdeploy"),
        pinned,
        "the bridge took its port's MAC: it was not pinned"
    );

    let load = Load::start(&w, 0, "bridge");
    load.wait_seen("version-1");
    let out = w.deploy(&["--version", "v2"]);
    assert!(out.success, "{}\n{}", out.stdout, out.stderr);
    load.wait_seen("version-2");
    // A few more requests to the new container alone, after the old one went.
    let start = Instant::now();
    while std::fs::read_to_string(&load.bodies)
        .unwrap_or_default()
        .lines()
        .rev()
        .take_while(|l| *l == "version-2")
        .count()
        < 20
    {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the load got no more answers from v2"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (ok, failed, errors) = load.stop();
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed:\n{errors}",
        ok + failed
    );
    assert_eq!(w.get(0).stdout.trim(), "version-2");
}

#[test]
fn two_hosts_deploy_under_load_health_gate_rollback_lock_and_failed_pull() {
    if !require_deploy_world() {
        return;
    }
    let mut w = World::new("deploy", 2);
    w.enroll_all();
    w.build("v1", "version-1", true);
    w.build("v2", "version-2", true);
    w.build("v3", "version-3", false);
    w.build("v4", "version-4", true);
    w.write_deploy_file("");

    // First deploy: both hosts serve v1 through berth's proxy, one container each.
    let out = w.deploy(&[]);
    assert!(
        out.success,
        "first deploy failed:\n{}\n{}",
        out.stdout, out.stderr
    );
    assert!(
        out.stdout.contains("h1: web v1") && out.stdout.contains("h2: web v1"),
        "{}",
        out.stdout
    );
    for (i, h) in w.hosts.iter().enumerate() {
        let got = w.get(i);
        assert_eq!(
            got.stdout.trim(),
            "version-1",
            "host h{}: {:?} {}\ndeploy said:\n{}\n{}\nagent log:\n{}",
            i + 1,
            got.code,
            got.stderr,
            out.stdout,
            out.stderr,
            std::fs::read_to_string(h.agent().root.with_extension("log")).unwrap_or_default()
        );
        assert_eq!(
            h.dockerd.containers("web").len(),
            1,
            "{:?}",
            h.dockerd.containers("web")
        );
        // The secret reached the container's environment, and the agent's state holds
        // no copy of it.
        let env = h.dockerd.docker(&[
            "exec",
            h.dockerd.containers("web")[0].split(' ').next().unwrap(),
            "/bin/busybox",
            "env",
        ]);
        assert!(
            env.stdout.contains("API_KEY=s3cret-value"),
            "{}",
            env.stdout
        );
        assert!(env.stdout.contains("GREETING=hi"), "{}", env.stdout);
        let tree = output(
            Command::new("grep")
                .args(["-rl", "s3cret-value"])
                .arg(h.agent_files()),
        );
        assert!(
            tree.stdout.trim().is_empty(),
            "secret found in agent files: {}",
            tree.stdout
        );
    }

    // The registry refuses anonymous pulls: the hosts pulled with the credentials the
    // deploy handed their dockerd, which kept none of them.
    let image = out
        .stderr
        .lines()
        .find_map(|l| l.strip_prefix("pushed app:v1 as "))
        .unwrap_or_else(|| panic!("{}", out.stderr))
        .to_owned();
    assert!(
        image.starts_with(&format!("{REGISTRY}/app@sha256:")),
        "{image}"
    );
    // By tag: dockerd answers a pull by digest it holds without asking the registry.
    let tagged = format!("{REGISTRY}/app:v1");
    let pull = w.hosts[0].dockerd.docker(&["pull", &tagged]);
    assert!(
        !pull.success,
        "an anonymous pull of {tagged} worked: {}",
        pull.stdout
    );
    assert!(
        pull.stderr.contains("auth") || pull.stderr.contains("denied"),
        "{}",
        pull.stderr
    );

    // v2 under load on h1: zero failed requests, and the load saw both versions.
    let load = Load::start(&w, 0, "v2");
    let start = Instant::now();
    while !load.seen("version-1") {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the load got no answer"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = w.deploy(&["--version", "v2"]);
    assert!(
        out.success,
        "deploy v2 failed:\n{}\n{}",
        out.stdout, out.stderr
    );
    let start = Instant::now();
    while !load.seen("version-2") {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the load never saw v2"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (ok, failed, errors) = load.stop();
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed during the switch:\n{errors}",
        ok + failed
    );
    assert!(ok > 0);
    w.settle();
    for (i, h) in w.hosts.iter().enumerate() {
        assert_eq!(w.get(i).stdout.trim(), "version-2");
        let names = h.dockerd.containers("web");
        assert_eq!(names.len(), 1, "the old container is removed: {names:?}");
        assert!(names[0].contains("-v2-"), "{names:?}");
    }

    // v3 has no /health: the deploy fails with the check's output, v2 keeps serving,
    // and v3's container is gone.
    let out = w.deploy(&["--version", "v3"]);
    assert!(!out.success, "{}", out.stdout);
    assert!(
        out.stderr.contains("did not become healthy"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("GET http://") && out.stderr.contains("404"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("its last log lines"), "{}", out.stderr);
    assert!(out.stderr.contains("v2 still serves"), "{}", out.stderr);
    for (i, h) in w.hosts.iter().enumerate() {
        assert_eq!(w.get(i).stdout.trim(), "version-2");
        let names = h.dockerd.containers("web");
        assert_eq!(names.len(), 1, "{names:?}");
        assert!(names[0].contains("-v2-"), "{names:?}");
    }

    // History: v2 serving, v1 before it; the failed v3 is not in it.
    let out = output_ok(w.berth().args(["rollback", "--list"]));
    let h1: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("h1\t"))
        .collect();
    assert_eq!(h1.len(), 2, "{}", out.stdout);
    assert!(
        h1[0].contains("\tv2\t") && h1[0].contains("(serving)"),
        "{}",
        out.stdout
    );
    assert!(
        h1[1].contains("\tv1\t") && h1[1].contains("@sha256:"),
        "{}",
        out.stdout
    );

    // Rollback without a version: the previous one (v1).
    let out = output(
        w.berth()
            .arg("rollback")
            .env("TEST_API_KEY", "s3cret-value"),
    );
    assert!(out.success, "{}\n{}", out.stdout, out.stderr);
    for i in 0..w.hosts.len() {
        assert_eq!(w.get(i).stdout.trim(), "version-1");
    }
    // Rollback to a named version.
    let out = output(
        w.berth()
            .args(["rollback", "v2"])
            .env("TEST_API_KEY", "s3cret-value"),
    );
    assert!(out.success, "{}\n{}", out.stdout, out.stderr);
    w.settle();
    for (i, h) in w.hosts.iter().enumerate() {
        assert_eq!(w.get(i).stdout.trim(), "version-2");
        assert_eq!(h.dockerd.containers("web").len(), 1);
    }
    // A version no host has.
    let out = output(
        w.berth()
            .args(["rollback", "v9"])
            .env("TEST_API_KEY", "s3cret-value"),
    );
    assert!(!out.success);
    assert!(
        out.stderr.contains("version v9 is not in its history"),
        "{}",
        out.stderr
    );

    // A second deploy of the service while one runs on the same hosts is refused. The
    // first one's health check (a command) passes only once the test says so.
    let first = w.deploy_held("v1");
    let second = w.deploy(&["--version", "v1"]);
    assert!(!second.success);
    // Who holds the lock: the host, since when, which client (the first deploy's, the
    // same machine's name as `berth host add` gave it).
    for host in ["h1", "h2"] {
        assert!(
            second.stderr.contains(&format!(
                "another deploy of service web is running on host {host} (locked since "
            )),
            "{}",
            second.stderr
        );
    }
    assert!(second.stderr.contains(" by client "), "{}", second.stderr);
    let ps = output_ok(w.berth().args(["deploy", "ps"]));
    assert!(ps.stdout.contains("(deploy by "), "{}", ps.stdout);
    w.let_pass("v1");
    let first = first.wait_with_output().unwrap();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    w.settle();
    for (i, h) in w.hosts.iter().enumerate() {
        assert_eq!(w.get(i).stdout.trim(), "version-1");
        assert_eq!(h.dockerd.containers("web").len(), 1);
    }
    w.write_deploy_file("");

    // h2 loses its route to the registry: its pull fails with dockerd's error and stops
    // that host only; h1 goes to v4, h2 keeps serving v1.
    run(Command::new("ip").args([
        "-n",
        &w.hosts[1].host.ns,
        "route",
        "del",
        &format!("{REGISTRY_IP}/32"),
    ]));
    let out = w.deploy(&["--version", "v4"]);
    assert!(!out.success, "{}", out.stdout);
    assert!(out.stdout.contains("h1: web v4"), "{}", out.stdout);
    assert!(
        out.stderr
            .contains(&format!("h2: web failed: pull {REGISTRY}/app@sha256:")),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("h2: web v1 still serves"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("deploy failed on h2"), "{}", out.stderr);
    assert_eq!(w.get(0).stdout.trim(), "version-4");
    assert_eq!(w.get(1).stdout.trim(), "version-1");

    // An agent restarted points its proxy at the serving container again.
    kill(&mut w.hosts[0].agent.as_mut().unwrap().child);
    let restarted = Agent::start(
        &w.hosts[0].host,
        &w.hosts[0].agent().root,
        &format!("{}:8373", w.hosts[0].ip),
        &w.hosts[0].dockerd.socket,
        "h1",
    );
    w.hosts[0].agent = Some(restarted);
    assert_eq!(w.get(0).stdout.trim(), "version-4");

    // `berth deploy ps|exec|logs|history` over the agents' API: h1 serves v4, h2 v1.
    w.settle();
    let ps = output_ok(w.berth().args(["deploy", "ps"]));
    let row = |host: &str| {
        ps.stdout
            .lines()
            .find(|l| l.starts_with(&format!("{host}\tweb\t")))
            .unwrap_or_else(|| panic!("no row of {host}: {}", ps.stdout))
            .to_owned()
    };
    assert!(
        row("h1").contains("\tv4\trunning\t8080:80\tberth-web-v4-"),
        "{}",
        ps.stdout
    );
    assert!(
        row("h1").contains(&format!("{REGISTRY}/app@sha256:")),
        "{}",
        ps.stdout
    );
    assert!(row("h2").contains("\tv1\trunning\t"), "{}", ps.stdout);
    let exec = output_ok(w.berth().args([
        "deploy",
        "exec",
        "web",
        "--",
        "/bin/busybox",
        "cat",
        "/www/index.html",
    ]));
    assert!(exec.stdout.contains("h1 | version-4"), "{}", exec.stdout);
    assert!(exec.stdout.contains("h2 | version-1"), "{}", exec.stdout);
    let exec = output(w.berth().args([
        "deploy",
        "exec",
        "web",
        "--host",
        "h2",
        "--",
        "/bin/busybox",
        "sh",
        "-c",
        "echo $API_KEY; exit 3",
    ]));
    assert!(!exec.success);
    assert_eq!(exec.stdout.trim(), "s3cret-value");
    assert!(exec.stderr.contains("exited 3"), "{}", exec.stderr);
    assert!(exec.stderr.contains("exec failed on h2"), "{}", exec.stderr);
    let bad = output(w.berth().args(["deploy", "logs", "web", "--host", "h9"]));
    assert!(!bad.success);
    assert!(
        bad.stderr.contains("host h9 does not run service web"),
        "{}",
        bad.stderr
    );
    let bad = output(w.berth().args(["deploy", "exec", "nope", "--", "true"]));
    assert!(!bad.success);
    assert!(bad.stderr.contains("nope"), "{}", bad.stderr);
    // Logs: what the container wrote (busybox httpd -vv logs each request's URL), and
    // with -f what it writes afterwards.
    assert!(
        output(
            w.dep
                .command("curl")
                .args(["-s", &format!("http://{}:8080/before-logs", w.hosts[0].ip)])
        )
        .success
    );
    let logs = output_ok(w.berth().args(["deploy", "logs", "web", "--host", "h1"]));
    assert!(logs.stdout.contains("/before-logs"), "{}", logs.stdout);
    let follow_out = w.dir.path().join("logs-follow");
    let mut follow = w
        .berth()
        .args(["deploy", "logs", "-f", "-n", "0", "web"])
        .stdout(std::fs::File::create(&follow_out).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        assert!(
            output(w.dep.command("curl").args([
                "-s",
                &format!("http://{}:8080/while-following", w.hosts[0].ip)
            ]))
            .success
        );
        let text = std::fs::read_to_string(&follow_out).unwrap_or_default();
        if text
            .lines()
            .any(|l| l.starts_with("h1 | ") && l.contains("/while-following"))
        {
            assert!(
                !text.contains("/before-logs"),
                "-n 0 printed old lines: {text}"
            );
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "logs -f printed no new line: {text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    kill(&mut follow);
    let history = output_ok(w.berth().args(["deploy", "history"]));
    let first = |host: &str| {
        history
            .stdout
            .lines()
            .find(|l| l.starts_with(&format!("{host}\t")))
            .unwrap_or_else(|| panic!("no history of {host}: {}", history.stdout))
            .to_owned()
    };
    assert!(
        first("h1").starts_with(&format!("h1\tv4\t{REGISTRY}/app@sha256:")),
        "{}",
        history.stdout
    );
    assert!(first("h1").ends_with("(serving)"), "{}", history.stdout);
    assert!(first("h2").starts_with("h2\tv1\t"), "{}", history.stdout);
    assert_eq!(
        history.stdout.matches("(serving)").count(),
        2,
        "{}",
        history.stdout
    );

    // Batches: one host at a time, 3s between. h2 reaches the registry again. The order
    // and the pause show in the agents' own history timestamps (seconds).
    run(Command::new("ip").args([
        "-n",
        &w.hosts[1].host.ns,
        "route",
        "add",
        &format!("{REGISTRY_IP}/32"),
        "via",
        "10.91.2.1",
    ]));
    w.write_deploy_file("[deploy.batch]\nlimit = 1\nwait = \"3s\"\n");
    let out = w.deploy(&["--version", "v2"]);
    assert!(out.success, "{}\n{}", out.stdout, out.stderr);
    assert_eq!(
        out.stderr
            .matches("waiting 3s before the next batch")
            .count(),
        1,
        "{}",
        out.stderr
    );
    let live = |h: &DeployHost| {
        let path = h.agent().root.join("agent/services/web/history.json");
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        (
            v[0]["version"].as_str().unwrap().to_owned(),
            v[0]["deployed_unix"].as_u64().unwrap(),
        )
    };
    let (v1, t1) = live(&w.hosts[0]);
    let (v2, t2) = live(&w.hosts[1]);
    assert_eq!((v1.as_str(), v2.as_str()), ("v2", "v2"));
    // h2 went live at least the wait (less a second of rounding) after h1.
    assert!(
        t2 >= t1 + 2,
        "h1 live at {t1}, h2 at {t2}: no wait between batches"
    );
    for i in 0..2 {
        assert_eq!(w.get(i).stdout.trim(), "version-2");
    }

    // Only some hosts: --hosts h2 puts v1 on h2 alone, --role web on both.
    w.write_deploy_file("");
    let out = w.deploy(&["--version", "v1", "--hosts", "h2"]);
    assert!(out.success, "{}\n{}", out.stdout, out.stderr);
    assert!(!out.stdout.contains("h1: "), "{}", out.stdout);
    assert_eq!(w.get(0).stdout.trim(), "version-2");
    assert_eq!(w.get(1).stdout.trim(), "version-1");
    let out = w.deploy(&["--version", "v1", "--role", "web"]);
    assert!(out.success, "{}\n{}", out.stdout, out.stderr);
    assert_eq!(w.get(0).stdout.trim(), "version-1");
    let out = w.deploy(&["--hosts", "h9"]);
    assert!(!out.success);
    assert!(
        out.stderr.contains("--hosts h9: no role lists this host"),
        "{}",
        out.stderr
    );
    // The same filters for a rollback: v2 again on h2 alone.
    let out = output(w.berth().args(["rollback", "v2", "--hosts", "h2"]));
    assert!(out.success, "{}\n{}", out.stdout, out.stderr);
    assert!(
        !out.stderr.contains("h1: ") && !out.stdout.contains("h1: "),
        "{}\n{}",
        out.stdout,
        out.stderr
    );
    assert_eq!(w.get(0).stdout.trim(), "version-1");
    assert_eq!(w.get(1).stdout.trim(), "version-2");
    let out = output(w.berth().args(["rollback", "--role", "db"]));
    assert!(!out.success);
    assert!(
        out.stderr
            .contains("--role db: no such role (the file has web)"),
        "{}",
        out.stderr
    );

    // A secret the deploying machine lacks: refused before any host is touched.
    let out = output(w.berth().arg("deploy").env_remove("TEST_API_KEY"));
    assert!(!out.success);
    assert!(
        out.stderr.contains("deploy.services.web.secrets.API_KEY")
            && out.stderr.contains("TEST_API_KEY is not set"),
        "{}",
        out.stderr
    );
}

/// Three hosts, the third driven over SSH (Debian's openssh-server in its namespace, no
/// agent installed): berth starts its agent container there through dockerd over the
/// SSH connection and deploys through it like on the others; then two hosts (one of each
/// kind) lose their network in the middle of a deploy: each gets a clear result of its
/// own, and each host ends the deploy by itself (the new version serving, the old
/// container gone), never half-switched.
#[test]
fn three_hosts_one_over_ssh_and_hosts_losing_their_network() {
    if !require_deploy_world() || !require("sshd") || !require("ssh") || !require("unshare") {
        return;
    }
    let w = World::with("deployssh", 3, &[3]);
    w.enroll_all();
    w.build("v1", "version-1", true);
    w.build("v2", "version-2", true);
    w.build("v3", "version-3", true);
    w.write_deploy_file("");

    let out = w.deploy(&[]);
    assert!(
        out.success,
        "first deploy failed:\n{}\n{}",
        out.stdout, out.stderr
    );
    for (i, h) in w.hosts.iter().enumerate() {
        assert_eq!(w.get(i).stdout.trim(), "version-1", "host h{}", i + 1);
        assert_eq!(h.dockerd.containers("web").len(), 1);
    }
    // h3 runs berth's agent as a container (host network: its proxy answered above),
    // made from this berth binary.
    let h3 = &w.hosts[2];
    let agent = h3.dockerd.docker(&[
        "inspect",
        "--format",
        "{{.Config.Image}} {{.HostConfig.NetworkMode}} {{.State.Running}}",
        "berth-agent",
    ]);
    assert!(agent.success, "{}", agent.stderr);
    assert!(
        agent.stdout.starts_with("berth-agent:") && agent.stdout.trim().ends_with(" host true"),
        "{}",
        agent.stdout
    );
    // The secret reached the container, not the agent's files, not the agent container.
    let name = h3.dockerd.containers("web")[0]
        .split(' ')
        .next()
        .unwrap()
        .to_owned();
    let env = h3.dockerd.docker(&["exec", &name, "/bin/busybox", "env"]);
    assert!(
        env.stdout.contains("API_KEY=s3cret-value"),
        "{}",
        env.stdout
    );
    let tree = output(
        Command::new("grep")
            .args(["-rl", "s3cret-value"])
            .arg(h3.agent_files()),
    );
    assert!(tree.stdout.trim().is_empty(), "{}", tree.stdout);
    let inspect = h3.dockerd.docker(&["inspect", "berth-agent"]);
    assert!(!inspect.stdout.contains("s3cret-value"));
    assert!(!inspect.stdout.contains("pull-s3cret"));

    // v2 under load on the SSH host: zero failed requests.
    let load = Load::start(&w, 2, "ssh-v2");
    let start = Instant::now();
    while !load.seen("version-1") {
        assert!(start.elapsed() < Duration::from_secs(30), "no answer");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = w.deploy(&["--version", "v2"]);
    assert!(out.success, "{}\n{}", out.stdout, out.stderr);
    while !load.seen("version-2") {
        assert!(start.elapsed() < Duration::from_secs(60), "never saw v2");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (ok, failed, errors) = load.stop();
    assert_eq!(failed, 0, "{failed} of {} failed:\n{errors}", ok + failed);
    // The agent container was not restarted by the second deploy (same binary).
    let again = h3
        .dockerd
        .docker(&["ps", "--filter", "name=berth-agent", "--format", "{{.ID}}"]);
    assert_eq!(again.stdout.lines().count(), 1, "{}", again.stdout);

    // ps, history and exec reach the SSH host too.
    w.settle();
    let ps = output_ok(w.berth().args(["deploy", "ps"]));
    assert!(
        ps.stdout
            .lines()
            .any(|l| l.starts_with("h3\tweb\tv2\trunning\t8080:80\t")),
        "{}",
        ps.stdout
    );
    let exec = output_ok(w.berth().args([
        "deploy",
        "exec",
        "web",
        "--host",
        "h3",
        "--",
        "/bin/busybox",
        "cat",
        "/www/index.html",
    ]));
    assert_eq!(exec.stdout.trim(), "version-2");

    // A rollback over SSH: health-gated, from h3's own history.
    let out = output(w.berth().args(["rollback", "v1"]));
    assert!(out.success, "{}\n{}", out.stdout, out.stderr);
    assert_eq!(w.get(2).stdout.trim(), "version-1");

    // An SSH host that refuses the login: its own clear result, the others deploy.
    let bad = w.dir.path().join("bad-key");
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&bad));
    let out = output(w.berth().args(["deploy", "--version", "v2"]).env(
        "BERTH_SSH_COMMAND",
        w.ssh_command.replace(
            &w.dir.path().join("ssh-key").display().to_string(),
            &bad.display().to_string(),
        ),
    ));
    assert!(!out.success);
    assert!(
        out.stderr
            .contains("h3: web failed: host h3: ssh deploy@10.91.3.2 exit")
            && out.stderr.contains("Permission denied"),
        "{}",
        out.stderr
    );
    assert!(out.stdout.contains("h1: web v2"), "{}", out.stdout);
    assert_eq!(w.get(2).stdout.trim(), "version-1");

    // Hosts losing their network mid-deploy. The health check (a command) passes only
    // once the test says so; h2 and h3 drop off the network while it waits.
    let deploy = w.deploy_held("v3");
    w.hosts[1].set_link(false);
    w.hosts[2].set_link(false);
    w.let_pass("v3");
    let out = deploy.wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(!out.status.success(), "{stdout}");
    assert!(stdout.contains("h1: web v3"), "{stdout}\n{stderr}");
    for host in ["h2", "h3"] {
        assert!(
            stderr.contains(&format!("{host}: web failed: ")),
            "{stderr}"
        );
    }
    assert!(
        stderr.matches("goes on to its end on the host").count() >= 2,
        "{stderr}"
    );
    assert!(stderr.contains("deploy failed on h2, h3"), "{stderr}");
    // Back on the network: both hosts finished the deploy by themselves, whole.
    w.hosts[1].set_link(true);
    w.hosts[2].set_link(true);
    w.hosts[1].wait_reachable(&w.dep);
    w.hosts[2].wait_reachable(&w.dep);
    for (i, h) in w.hosts.iter().enumerate() {
        let start = Instant::now();
        loop {
            let names = h.dockerd.containers("web");
            if names.len() == 1 && names[0].contains("-v3-") {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "host h{} is half-switched: {names:?}",
                i + 1
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let got = w.get(i);
        assert_eq!(
            got.stdout.trim(),
            "version-3",
            "host h{}: {}",
            i + 1,
            got.stderr
        );
    }
    w.settle();
    let ps = output_ok(w.berth().args(["deploy", "ps"]));
    for host in ["h1", "h2", "h3"] {
        assert!(
            ps.stdout
                .lines()
                .any(|l| l.starts_with(&format!("{host}\tweb\tv3\trunning\t"))),
            "{}",
            ps.stdout
        );
    }
}

/// Services whose image is a build: `berth deploy` builds them first (a Dockerfile at the
/// version deployed, an Earthfile target naming its image), pushes once and deploys.
#[test]
fn deploy_builds_dockerfile_and_earthfile_services() {
    if !require_deploy_world() {
        return;
    }
    let w = World::new("deploybuild", 1);
    w.enroll_all();
    let d = w.dir.path();
    let ctx = d.join("app");
    std::fs::create_dir_all(ctx.join("www")).unwrap();
    let write_app = |body: &str| {
        std::fs::write(ctx.join("www/index.html"), format!("{body}\n")).unwrap();
        std::fs::write(ctx.join("www/health"), "ok\n").unwrap();
    };
    write_app("built-1");
    std::fs::write(
        ctx.join("Dockerfile.web"),
        format!(
            "FROM {} AS base\nFROM base AS prod\nARG GREETING\nCOPY www /www\n\
             RUN echo \"$GREETING\" > /www/greeting\n\
             CMD [\"/bin/busybox\", \"httpd\", \"-f\", \"-p\", \"80\", \"-h\", \"/www\"]\n\
             FROM base AS other\nCMD [\"/bin/false\"]\n",
            w.base.reference()
        ),
    )
    .unwrap();
    let earth = d.join("api");
    std::fs::create_dir_all(earth.join("www")).unwrap();
    std::fs::write(earth.join("www/index.html"), "earth-1\n").unwrap();
    std::fs::write(
        earth.join("Earthfile"),
        format!(
            "VERSION 0.8\ndocker:\n    FROM {}\n    COPY www /www\n    \
             CMD [\"/bin/busybox\", \"httpd\", \"-f\", \"-p\", \"80\", \"-h\", \"/www\"]\n    \
             SAVE IMAGE api:e1\n",
            w.base.reference()
        ),
    )
    .unwrap();
    w.write_deploy_file(
        "build = { context = \"app\", dockerfile = \"app/Dockerfile.web\", target = \"prod\", \
         args = { GREETING = \"hello-build\" } }\n\
         [deploy.services.api]\nimage = \"api:e1\"\nroles = [\"web\"]\nports = [\"8081:80\"]\n\
         build = { earthfile = \"./api+docker\" }\n",
    );
    let api = || {
        output(w.dep.command("curl").args([
            "-sS",
            "--fail",
            "--max-time",
            "10",
            &format!("http://{}:8081/", w.hosts[0].ip),
        ]))
    };
    let out = w.deploy(&[]);
    assert!(out.success, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("building app:v1 for service web"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("building api:e1 for service api"),
        "{}",
        out.stderr
    );
    assert_eq!(w.get(0).stdout.trim(), "built-1");
    assert_eq!(api().stdout.trim(), "earth-1");
    // The build's ARG and stage reached the image.
    let greeting = output(
        w.dep
            .command("curl")
            .args(["-sS", &format!("http://{}:8080/greeting", w.hosts[0].ip)]),
    );
    assert_eq!(greeting.stdout.trim(), "hello-build");
    // A new version: built again from the changed context, under its own tag.
    write_app("built-2");
    let out = w.deploy(&["web", "--version", "v2"]);
    assert!(out.success, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("building app:v2 for service web"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("for service api"), "{}", out.stderr);
    assert_eq!(w.get(0).stdout.trim(), "built-2");
    assert!(
        out.stderr
            .contains(&format!("pushed app:v2 as {REGISTRY}/app@sha256:")),
        "{}",
        out.stderr
    );
    // A build that fails stops the deploy before any push or host; v2 keeps serving.
    std::fs::write(ctx.join("Dockerfile.web"), "FROM scratch\nRUN false\n").unwrap();
    let out = w.deploy(&["web", "--version", "v3"]);
    assert!(!out.success);
    assert!(
        out.stderr.contains("build of service web (app:v3)"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("pushed"), "{}", out.stderr);
    assert_eq!(w.get(0).stdout.trim(), "built-2");
}

#[test]
fn wrong_tokens_are_refused() {
    if !require_deploy_world() {
        return;
    }
    let w = World::new("deploytok", 1);
    let good = w.hosts[0].agent().token();
    // Same id and address, another secret.
    let (head, tail) = good.split_once('.').unwrap();
    let secret_end = tail.find('@').unwrap();
    let flip = if tail.starts_with('0') { "1" } else { "0" };
    let wrong_secret = format!("{head}.{flip}{}", &tail[1..]);
    let _ = secret_end;
    let out = output(
        w.berth()
            .args(["host", "add", "h1", "--token", &wrong_secret]),
    );
    assert!(!out.success);
    assert!(
        out.stderr.contains("secret does not match"),
        "{}",
        out.stderr
    );
    // A pin that is not the agent's CA: refused at the handshake.
    let pin_at = good.find("#sha256:").unwrap() + "#sha256:".len();
    let mut wrong_pin = good.clone();
    let flipped = if &good[pin_at..pin_at + 1] == "0" {
        "1"
    } else {
        "0"
    };
    wrong_pin.replace_range(pin_at..pin_at + 1, flipped);
    let out = output(w.berth().args(["host", "add", "h1", "--token", &wrong_pin]));
    assert!(!out.success);
    assert!(
        out.stderr
            .contains("the server's CA does not match the token"),
        "{}",
        out.stderr
    );
    // Calls without enrollment: the deploy names the host to enroll.
    w.write_deploy_file("");
    let out = w.deploy(&[]);
    assert!(!out.success);
    assert!(out.stderr.contains("no host named h1"), "{}", out.stderr);
    // The good token works once, then is used up.
    output_ok(w.berth().args(["host", "add", "h1", "--token", &good]));
    let out = output(w.berth().args(["host", "add", "h1b", "--token", &good]));
    assert!(!out.success);
    assert!(out.stderr.contains("already used"), "{}", out.stderr);
    let st = output_ok(w.berth().args(["host", "status", "h1"]));
    assert!(st.stdout.contains("agent h1"), "{}", st.stdout);
}

#[test]
fn deploy_file_errors_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("berth.toml");
    std::fs::write(
        &f,
        "[deploy.registry]\naddress = \"r:5000\"\n[deploy.roles.web]\nhosts = [\"h1\"]\n\
         [deploy.services.web]\nimage = \"app:v1\"\nroles = [\"web\"]\nports = [\"80:http\"]\n",
    )
    .unwrap();
    let out = output(
        Command::new(berth_bin())
            .arg("--root")
            .arg(dir.path().join("root"))
            .env("XDG_CONFIG_HOME", dir.path().join("config"))
            .args(["deploy", "-f"])
            .arg(&f),
    );
    assert!(!out.success);
    assert!(
        out.stderr
            .contains("berth.toml: deploy.services.web.ports[0]"),
        "{}",
        out.stderr
    );
    let out = output(
        Command::new(berth_bin())
            .arg("--root")
            .arg(dir.path().join("root"))
            .args(["deploy", "-f"])
            .arg(dir.path().join("missing.toml")),
    );
    assert!(!out.success);
    assert!(
        out.stderr.contains("missing.toml: deploy: cannot read it"),
        "{}",
        out.stderr
    );
}

/// `GET path` of port 8080 on host `i` with curl and `extra` arguments.
fn curl(w: &World, i: usize, path: &str, extra: &[&str]) -> Output {
    output(
        w.dep
            .command("curl")
            .args(["-sS", "--fail", "--max-time", "10"])
            .args(extra)
            .arg(format!("http://{}:8080{path}", w.hosts[i].ip)),
    )
}

/// Three replicas per host: requests in turn (HTTP/1.1 and h2c), all health-gated and
/// all replaced; then the lock of a deploy whose agent is killed mid-deploy: kept in the
/// agent's `lock.json` and enforced while that deploy lives, cleaned (with the
/// containers that deploy started) when the agent starts again, after which a deploy
/// goes through.
#[test]
fn replicas_and_the_lock_of_a_killed_agent() {
    if !require_deploy_world() {
        return;
    }
    let mut w = World::new("deployrep", 1);
    w.enroll_all();
    w.build("v1", "version-1", true);
    w.build("v2", "version-2", true);
    w.build("v3", "version-3", false);
    w.write_deploy_file("replicas = 3");
    let out = w.deploy(&[]);
    assert!(out.success, "{}\n{}", out.stdout, out.stderr);
    let names = |w: &World| -> Vec<String> {
        let mut v: Vec<String> = w.hosts[0]
            .dockerd
            .containers("web")
            .iter()
            .map(|c| c.split(' ').next().unwrap().to_owned())
            .collect();
        v.sort();
        v
    };
    let v1 = names(&w);
    assert_eq!(v1.len(), 3, "{v1:?}");
    assert!(v1.iter().all(|c| c.contains("-v1-")), "{v1:?}");
    // Six requests, two to each replica (busybox httpd -vv logs each URL).
    for i in 0..6 {
        let got = curl(&w, 0, &format!("/rr-{i}"), &[]);
        assert!(got.stderr.contains("404"), "{}", got.stderr);
    }
    for c in &v1 {
        let logs = w.hosts[0].dockerd.docker(&["logs", c]);
        let n = format!("{}{}", logs.stdout, logs.stderr)
            .matches("/rr-")
            .count();
        assert_eq!(n, 2, "replica {c} got {n} of the 6 requests");
    }
    // `deploy logs` reads every replica, each line after its container's name.
    let logs = output_ok(w.berth().args(["deploy", "logs", "web"]));
    for c in &v1 {
        let lines = logs
            .stdout
            .lines()
            .filter(|l| l.starts_with(&format!("{c} | ")) && l.contains("/rr-"))
            .count();
        assert_eq!(lines, 2, "{c}: {}", logs.stdout);
    }
    // An h2c client (prior knowledge) gets the answer over HTTP/2.
    let h2 = curl(
        &w,
        0,
        "/",
        &["--http2-prior-knowledge", "-w", "http/%{http_version}"],
    );
    assert!(h2.success, "{}", h2.stderr);
    assert_eq!(h2.stdout, "version-1\nhttp/2", "{}", h2.stdout);
    // h2c by Upgrade is not offered: the answer comes in HTTP/1.1.
    let up = curl(&w, 0, "/", &["--http2", "-w", "http/%{http_version}"]);
    assert!(up.success, "{}", up.stderr);
    assert_eq!(up.stdout, "version-1\nhttp/1.1", "{}", up.stdout);
    let ps = output_ok(w.berth().args(["deploy", "ps"]));
    assert!(ps.stdout.contains(&v1.join(",")), "{}", ps.stdout);
    // `deploy exec --replica N` runs in the Nth (its hostname is the container's ID).
    for (i, c) in v1.iter().enumerate() {
        let want = w.hosts[0]
            .dockerd
            .docker(&["inspect", "--format", "{{.Config.Hostname}}", c]);
        let n = (i + 1).to_string();
        let got = output_ok(w.berth().args([
            "deploy",
            "exec",
            "--replica",
            &n,
            "web",
            "--",
            "/bin/busybox",
            "hostname",
        ]));
        assert_eq!(got.stdout.trim(), want.stdout.trim(), "replica {n} ({c})");
    }
    let out = output(
        w.berth()
            .args(["deploy", "exec", "--replica", "4", "web", "--", "true"]),
    );
    assert!(!out.success);
    assert!(
        out.stderr.contains(
            "service web runs 3 replicas on host h1: replica 4 is not one of them (they count from 1)"
        ),
        "{}",
        out.stderr
    );

    // v3 has no /health: no replica passes, all three go, v1's three serve on.
    let out = w.deploy(&["--version", "v3"]);
    assert!(!out.success, "{}", out.stdout);
    assert!(
        out.stderr.contains("did not become healthy (replica "),
        "{}",
        out.stderr
    );
    assert_eq!(names(&w), v1);
    assert_eq!(curl(&w, 0, "/", &[]).stdout.trim(), "version-1");

    // A deploy of v2 whose health check waits for the test; a second one is refused
    // with who holds the lock, which the host keeps in its agent's lock.json.
    w.write_deploy_file_with(
        "health = { cmd = [\"/bin/busybox\", \"test\", \"-e\", \"/tmp/ready\"], \
         interval = \"100ms\", retries = 3000 }",
        "replicas = 3",
    );
    let mut held = w
        .berth()
        .args(["deploy", "--version", "v2"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while names(&w).iter().filter(|c| c.contains("-v2-")).count() < 3 {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the deploy of v2 did not start its replicas: {:?}",
            names(&w)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let lock_file = w.hosts[0].agent().root.join("agent/lock.json");
    let lock = || -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(&lock_file).unwrap()).unwrap()
    };
    assert_eq!(lock()["web"]["version"], "v2", "{}", lock());
    let client = lock()["web"]["client"].as_str().unwrap().to_owned();
    let second = w.deploy(&["--version", "v1"]);
    assert!(!second.success);
    assert!(
        second
            .stderr
            .contains("another deploy of service web is running on host h1 (locked since ")
            && second
                .stderr
                .contains(&format!("by client {client}, version v2")),
        "{}",
        second.stderr
    );

    // The agent dies mid-deploy: the deploy fails, the lock stays in the file.
    let agent = w.hosts[0].agent.as_mut().unwrap();
    agent.child.kill().unwrap();
    agent.child.wait().unwrap();
    assert!(!held.wait().unwrap().success());
    assert_eq!(lock()["web"]["version"], "v2", "{}", lock());
    // Started again, the agent finds the lock's process gone: it drops the lock and
    // removes the containers that deploy started; v1 serves on.
    let restarted = Agent::start(
        &w.hosts[0].host,
        &w.hosts[0].agent().root,
        &format!("{}:8373", w.hosts[0].ip),
        &w.hosts[0].dockerd.socket,
        "h1",
    );
    w.hosts[0].agent = Some(restarted);
    assert!(lock().get("web").is_none(), "{}", lock());
    assert_eq!(names(&w), v1);
    let log = std::fs::read_to_string(w.hosts[0].agent().root.with_extension("log")).unwrap();
    assert!(
        log.contains("dropping the lock of a deploy whose agent process is gone"),
        "{log}"
    );
    assert_eq!(curl(&w, 0, "/", &[]).stdout.trim(), "version-1");

    // Now v2 goes through: three new replicas, v1's three removed.
    w.write_deploy_file("replicas = 3");
    let out = w.deploy(&["--version", "v2"]);
    assert!(out.success, "{}\n{}", out.stdout, out.stderr);
    w.settle();
    let v2 = names(&w);
    assert_eq!(v2.len(), 3, "{v2:?}");
    assert!(v2.iter().all(|c| c.contains("-v2-")), "{v2:?}");
    assert_eq!(curl(&w, 0, "/", &[]).stdout.trim(), "version-2");
}

/// Debian's nginx in host `i`'s namespace, listening on the host's address, port 8080,
/// with its upstreams in an included file berth writes. Stopped on drop.
struct Nginx {
    child: Child,
    dir: PathBuf,
    /// The arguments that name its files (for `-s reload`).
    args: Vec<String>,
}

impl Nginx {
    fn start(w: &World, i: usize) -> Nginx {
        let dir = w.dir.path().join(format!("nginx-h{}", i + 1));
        std::fs::create_dir_all(dir.join("tmp")).unwrap();
        let d = dir.display();
        // Before the first deploy nothing listens there: nginx answers 502.
        std::fs::write(dir.join("upstream.conf"), "server 127.0.0.1:9;\n").unwrap();
        std::fs::write(
            dir.join("nginx.conf"),
            format!(
                "user root;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
                 events {{ worker_connections 512; }}\n\
                 http {{\n  access_log off;\n  client_body_temp_path {d}/tmp/body;\n\
                 proxy_temp_path {d}/tmp/proxy;\n  fastcgi_temp_path {d}/tmp/fastcgi;\n\
                 uwsgi_temp_path {d}/tmp/uwsgi;\n  scgi_temp_path {d}/tmp/scgi;\n\
                 upstream web {{ include {d}/upstream.conf; }}\n\
                 server {{ listen {}:8080; location / {{ proxy_pass http://web; }} }}\n}}\n",
                w.hosts[i].ip
            ),
        )
        .unwrap();
        let args: Vec<String> = vec![
            "-p".into(),
            format!("{d}/"),
            "-e".into(),
            format!("{d}/error.log"),
            "-c".into(),
            format!("{d}/nginx.conf"),
        ];
        let child = w.hosts[i]
            .host
            .command("nginx")
            .args(&args)
            .args(["-g", "daemon off;"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx");
        let mut n = Nginx { child, dir, args };
        let start = Instant::now();
        loop {
            let out = output(w.dep.command("curl").args([
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                &format!("http://{}:8080/", w.hosts[i].ip),
            ]));
            if out.stdout == "502" {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30) && n.child.try_wait().unwrap().is_none(),
                "nginx did not come up: {}",
                std::fs::read_to_string(n.dir.join("error.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        n
    }

    /// Waits until the master has one worker again: after a reload the old worker
    /// keeps accepting connections (on the old upstreams) until it has taken its signal.
    fn wait_one_worker(&self) {
        let start = Instant::now();
        loop {
            let out = output(Command::new("pgrep").args(["-P", &self.child.id().to_string()]));
            if out.stdout.lines().count() == 1 {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "nginx's old workers did not go: {}",
                out.stdout
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn upstreams(&self) -> String {
        std::fs::read_to_string(self.dir.join("upstream.conf")).unwrap()
    }

    /// The deploy file's `[…proxy.external]` table for this nginx, with `template`.
    fn external(&self, template: &str) -> String {
        let reload: Vec<String> = ["nginx"]
            .into_iter()
            .map(str::to_owned)
            .chain(self.args.iter().cloned())
            .chain(["-s".to_owned(), "reload".to_owned()])
            .map(|a| format!("{a:?}"))
            .collect();
        format!(
            "[deploy.services.web.proxy.external]\nupstream_file = \"{}\"\n\
             template = {template:?}\nreload = [{}]\ndrain = \"5s\"\n",
            self.dir.join("upstream.conf").display(),
            reload.join(", ")
        )
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

/// A host that runs its own nginx: berth writes the upstream file and reloads nginx once
/// the new version is healthy, and removes the old container after the drain; no request
/// fails under load during the switch. A reload that fails (nginx refuses the file) puts
/// the old file back and keeps the old version serving; a rollback goes the same way.
#[test]
fn an_existing_nginx_is_handed_the_new_version() {
    if !require_deploy_world() || !require("nginx") {
        return;
    }
    let w = World::new("deployngx", 1);
    w.enroll_all();
    w.build("v1", "version-1", true);
    w.build("v2", "version-2", true);
    let nginx = Nginx::start(&w, 0);
    let good = nginx.external("# {service} {version}\nserver {addr};");
    w.write_deploy_file(&good);
    let out = w.deploy(&[]);
    assert!(out.success, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("reloaded (nginx "), "{}", out.stderr);
    // The result table at the end: host, service, version serving, replicas, result.
    let rows = |out: &Output| -> Vec<Vec<String>> {
        let table = out.stdout.split("\n\n").last().unwrap_or_default();
        table
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| {
                let cells: Vec<&str> = l.split_whitespace().collect();
                let mut row: Vec<String> = cells.iter().take(4).map(|c| (*c).to_owned()).collect();
                row.push(cells.get(4..).unwrap_or_default().join(" "));
                row
            })
            .collect()
    };
    assert_eq!(
        rows(&out),
        [
            ["HOST", "SERVICE", "VERSION", "REPLICAS", "RESULT"],
            ["h1", "web", "v1", "1", "ok"]
        ],
        "{}",
        out.stdout
    );
    let v1 = nginx.upstreams();
    assert!(v1.starts_with("# web v1\nserver 172.31.1."), "{v1}");
    assert_eq!(v1.lines().count(), 2, "{v1}");
    // `nginx -s reload` returns before the new workers take over: the old ones answer a
    // moment longer (502 here, from the placeholder before the first deploy).
    let answers = |w: &World, body: &str| {
        let start = Instant::now();
        loop {
            let got = w.get(0);
            if got.stdout.trim() == body {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "nginx never answered {body}: {} {}",
                got.stdout,
                got.stderr
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    answers(&w, "version-1");
    // The load starts on v1 alone (the placeholder's worker would answer 502).
    nginx.wait_one_worker();

    let load = Load::start(&w, 0, "ngx");
    load.wait_seen("version-1");
    let out = w.deploy(&["--version", "v2"]);
    assert!(out.success, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("waited 5s for the proxy's requests"),
        "{}",
        out.stderr
    );
    load.wait_seen("version-2");
    let (ok, fail, errors) = load.stop();
    assert_eq!(
        fail,
        0,
        "{fail} of {} requests failed: {errors}\n{}\nnginx's log:\n{}",
        ok + fail,
        out.stderr,
        std::fs::read_to_string(nginx.dir.join("error.log")).unwrap_or_default()
    );
    let v2 = nginx.upstreams();
    assert!(v2.starts_with("# web v2\nserver 172.31.1."), "{v2}");
    w.settle();
    let running = w.hosts[0].dockerd.containers("web");
    assert_eq!(running.len(), 1, "{running:?}");
    assert!(running[0].contains("-v2-"), "{running:?}");

    // nginx refuses a file it cannot parse: the reload fails, the old file comes back,
    // the new container goes and v2 serves on.
    w.write_deploy_file(&nginx.external("server {addr} bogus;"));
    let out = w.deploy(&["--version", "v1"]);
    assert!(!out.success, "{}", out.stdout);
    assert!(
        out.stderr
            .contains("the host's proxy was not switched to version v1 of web: reload command")
            && out.stderr.contains("exited 1")
            && out.stderr.contains("bogus")
            && out.stderr.contains("has its previous text again")
            && out.stderr.contains("the previous version keeps serving"),
        "{}",
        out.stderr
    );
    let table = rows(&out);
    assert_eq!(table.len(), 2, "{}", out.stdout);
    assert_eq!(table[1][..4], ["h1", "web", "v2", "1"], "{}", out.stdout);
    assert!(
        table[1][4].starts_with("failed: the host's proxy was not switched to version v1"),
        "{}",
        out.stdout
    );
    assert_eq!(nginx.upstreams(), v2);
    assert_eq!(w.hosts[0].dockerd.containers("web").len(), 1);
    assert_eq!(w.get(0).stdout.trim(), "version-2");

    // A rollback (v1, from the host's history, with the good template it was deployed
    // with) hands nginx v1 again.
    w.write_deploy_file(&good);
    let out = output(w.berth().arg("rollback"));
    assert!(out.success, "{}\n{}", out.stdout, out.stderr);
    assert!(
        nginx.upstreams().starts_with("# web v1\n"),
        "{}",
        nginx.upstreams()
    );
    answers(&w, "version-1");

    // Back to berth's proxy (nginx gone): it listens on the port again.
    drop(nginx);
    w.write_deploy_file("");
    let out = w.deploy(&["--version", "v1"]);
    assert!(out.success, "{}\n{}", out.stdout, out.stderr);
    assert_eq!(w.get(0).stdout.trim(), "version-1");

    // A proxy in a container (a busybox one standing in): the file goes into it through
    // dockerd and the reload runs in it; a reload that fails puts its old file back.
    // berth's proxy stops listening at that switch.
    let serving = w.hosts[0].new_container("v1").unwrap();
    let image = w.hosts[0]
        .dockerd
        .docker(&["inspect", "--format", "{{.Config.Image}}", &serving]);
    let edge = w.hosts[0].dockerd.docker(&[
        "run",
        "-d",
        "--name",
        "edge",
        image.stdout.trim(),
        "/bin/busybox",
        "sleep",
        "3600",
    ]);
    assert!(edge.success, "{}", edge.stderr);
    let in_edge = |reload: &str| {
        format!(
            "[deploy.services.web.proxy.external]\nupstream_file = \"/etc/berth/up.conf\"\n\
             container = \"edge\"\ndrain = \"1s\"\nreload = {reload}\n"
        )
    };
    let cat = |f: &str| {
        w.hosts[0]
            .dockerd
            .docker(&["exec", "edge", "/bin/busybox", "cat", f])
    };
    w.hosts[0]
        .dockerd
        .docker(&["exec", "edge", "/bin/busybox", "mkdir", "-p", "/etc/berth"]);
    w.write_deploy_file(&in_edge(
        "[\"/bin/busybox\", \"cp\", \"/etc/berth/up.conf\", \"/tmp/reloaded\"]",
    ));
    let out = w.deploy(&["--version", "v2"]);
    assert!(out.success, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stderr
            .contains("h1: berth's proxy stopped listening on port 8080"),
        "{}",
        out.stderr
    );
    let refused = w.get(0);
    assert!(
        !refused.success && refused.stderr.contains("Failed to connect"),
        "{}",
        refused.stderr
    );
    let v2 = w.hosts[0].new_container("v2").unwrap();
    let ip = w.hosts[0].dockerd.docker(&[
        "inspect",
        "--format",
        "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
        &v2,
    ]);
    let want = format!("server {}:80;\n", ip.stdout.trim());
    assert_eq!(cat("/tmp/reloaded").stdout, want);
    w.write_deploy_file(&in_edge("[\"/bin/busybox\", \"false\"]"));
    let out = w.deploy(&["--version", "v1"]);
    assert!(!out.success, "{}", out.stdout);
    assert!(
        out.stderr
            .contains("reload command [\"/bin/busybox\", \"false\"] (in container edge) exited 1")
            && out
                .stderr
                .contains("/etc/berth/up.conf has its previous text again"),
        "{}",
        out.stderr
    );
    assert_eq!(cat("/etc/berth/up.conf").stdout, want);
    let running = w.hosts[0].dockerd.containers("web");
    assert_eq!(running.len(), 1, "{running:?}");
    assert!(running[0].starts_with(&v2), "{running:?}");
}

/// `chattr +i` on a file, undone on drop (before the test's dockerd and directory go).
struct Immutable(PathBuf);

impl Immutable {
    fn set(path: PathBuf) -> Immutable {
        run(Command::new("chattr").arg("+i").arg(&path));
        Immutable(path)
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = output(Command::new("chattr").arg("-i").arg(&self.0));
    }
}

/// A deploy reports once traffic is switched and drained, then stops and removes the old
/// container while it still holds the service's lock. The service's process here holds
/// its stop (SIGTERM) until `/tmp/may-stop` exists in its container, so the test decides
/// when a removal can end: the report of v2 comes while v1's container is still there
/// and `deploy ps` says it is being removed; a deploy of v3 arriving then waits (the
/// agent says so, and starts nothing) instead of being refused, and goes on once v1 is
/// gone. A removal that fails (a file of the old container made immutable: dockerd
/// cannot delete its layer) is logged and shown by `deploy ps`, and the next deploy
/// removes it.
#[test]
fn old_containers_go_after_the_report_and_a_deploy_meanwhile_waits() {
    if !require_deploy_world() || !require("chattr") {
        return;
    }
    let w = World::new("deploylate", 1);
    w.enroll_all();
    for v in 1..=4 {
        w.build(&format!("v{v}"), &format!("version-{v}"), true);
    }
    w.write_deploy_file(
        "command = [\"/bin/busybox\", \"sh\", \"-c\", \"trap 'until [ -e /tmp/may-stop ]; \
         do /bin/busybox sleep 0.2; done; exit 0' TERM; \
         /bin/busybox httpd -f -p 80 -h /www & wait\"]",
    );
    // Long enough for the test to let each stop end itself (the template's 2 s would
    // have dockerd kill the process).
    let file = w.dir.path().join("berth.toml");
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(
        &file,
        text.replace("stop_timeout = \"2s\"", "stop_timeout = \"600s\""),
    )
    .unwrap();
    let h = &w.hosts[0];
    let log = || std::fs::read_to_string(h.agent().root.with_extension("log")).unwrap_or_default();
    let ps = || output_ok(w.berth().args(["deploy", "ps"])).stdout;
    let let_stop = |c: &str| {
        let out = h
            .dockerd
            .docker(&["exec", c, "/bin/busybox", "touch", "/tmp/may-stop"]);
        assert!(out.success, "{}", out.stderr);
    };

    let out = w.deploy(&["--version", "v1"]);
    assert!(out.success, "{}\n{}", out.stdout, out.stderr);
    let v1 = h.new_container("v1").unwrap();

    // v2's report comes before v1's container is removed.
    let out = w.deploy(&["--version", "v2"]);
    assert!(out.success, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stderr
            .contains(&format!("stopping and removing {v1} (after this report)")),
        "{}",
        out.stderr
    );
    assert_eq!(w.get(0).stdout.trim(), "version-2");
    let v2 = h.new_container("v2").unwrap();
    assert!(h.new_container("v1").is_some(), "v1 went before the report");
    let p = ps();
    assert!(p.contains(&format!("(removing the old {v1})")), "{p}");
    assert!(!p.contains("(deploy by "), "{p}");

    // v3 arrives meanwhile: it waits for the lock, and starts nothing until v1 is gone.
    let v3_deploy = w
        .berth()
        .args(["deploy", "--version", "v3"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !log().contains("deploy waits for the removal of the previous version's containers") {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the deploy of v3 did not wait:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        h.new_container("v3").is_none(),
        "v3 started while v1 was being removed"
    );
    assert!(ps().contains(&format!("(removing the old {v1})")));
    let_stop(&v1);
    let out = v3_deploy.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("waited for the removal of {v1}")),
        "{stderr}"
    );
    assert!(h.new_container("v1").is_none(), "v1 is still there");
    assert_eq!(w.get(0).stdout.trim(), "version-3");
    let v3 = h.new_container("v3").unwrap();

    // v2's removal fails: a file in its layer that no one may delete.
    let pin = h
        .dockerd
        .docker(&["exec", &v2, "/bin/busybox", "touch", "/tmp/pin"]);
    assert!(pin.success, "{}", pin.stderr);
    let upper = h
        .dockerd
        .docker(&["inspect", "--format", "{{.GraphDriver.Data.UpperDir}}", &v2]);
    assert!(upper.success, "{}", upper.stderr);
    let pinned = Immutable::set(Path::new(upper.stdout.trim()).join("tmp/pin"));
    let_stop(&v2);
    let start = Instant::now();
    let mut p = ps();
    while !p.contains(&format!("(old {v2} not removed: ")) {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the failed removal is not shown: {p}\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(100));
        p = ps();
    }
    assert!(!p.contains("(removing the old "), "{p}");
    assert!(
        log().contains("old container not removed after the deploy"),
        "{}",
        log()
    );
    assert!(h.new_container("v2").is_some());

    // The next deploy removes it with v3's container.
    drop(pinned);
    let out = w.deploy(&["--version", "v4"]);
    assert!(out.success, "{}\n{}", out.stdout, out.stderr);
    for c in [&v2, &v3] {
        assert!(
            out.stderr
                .contains(&format!("stopping and removing {c} (after this report)")),
            "{}",
            out.stderr
        );
    }
    let_stop(&v3);
    w.settle();
    let names = h.dockerd.containers("web");
    assert_eq!(names.len(), 1, "{names:?}");
    assert!(names[0].contains("-v4-"), "{names:?}");
    let p = ps();
    assert!(!p.contains("not removed"), "{p}");
}
