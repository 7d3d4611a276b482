//! The build graph: vertices (an op and its inputs) that frontends build and the solver
//! runs.
//!
//! As in BuildKit's LLB, a [`State`] is immutable: every method returns a new state and
//! nothing runs until the graph is solved, so a frontend can branch a stage without
//! aliasing bugs. A vertex's [`State::digest`] covers its op definition and its inputs'
//! digests; what must not change it (progress names, secrets' values, proxy variables)
//! lives outside the op or is skipped when serialising.
//!
//! Outputs are file-system states: a chain of layers for images, or a plain directory
//! for local sources (a build context). The Earthfile frontend uses the same graph:
//! several targets are several states, artifacts are paths in a state, and `BUILD +x`
//! or `COPY +x/file` are edges to another target's state.

use std::sync::Arc;

use berth_oci::Digest;
use serde::Serialize;

/// Where a base image comes from, resolved to a manifest digest before solving so that
/// the digest is part of the cache key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageSource {
    /// The reference as the user wrote it (`busybox`, `oci-layout://dir:tag`).
    pub reference: String,
    /// The manifest the reference resolved to.
    pub manifest: Digest,
}

/// Network mode of an exec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub enum NetworkMode {
    /// A network namespace of the step's own with outbound access (default).
    #[default]
    Isolated,
    /// The host's network (needs the `network.host` entitlement).
    Host,
    /// Loopback only.
    None,
}

/// A privilege a build must be granted before a Dockerfile may use it (buildx's
/// `--allow`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Entitlement {
    /// `RUN --network=host`.
    NetworkHost,
    /// Privileged steps (`RUN --security=insecure`, Earthly's `RUN --privileged` and
    /// `WITH DOCKER`): every capability, no seccomp, devices, writable `/sys` and
    /// cgroups, as `docker run --privileged`.
    SecurityInsecure,
}

impl Entitlement {
    /// Every entitlement, by name.
    pub const ALL: [(&'static str, Entitlement); 2] = [
        ("network.host", Entitlement::NetworkHost),
        ("security.insecure", Entitlement::SecurityInsecure),
    ];

    /// Its name, as given to `--allow`.
    pub fn name(self) -> &'static str {
        match self {
            Entitlement::NetworkHost => "network.host",
            Entitlement::SecurityInsecure => "security.insecure",
        }
    }
}

impl std::str::FromStr for Entitlement {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Entitlement::ALL
            .iter()
            .find(|(n, _)| *n == s)
            .map(|(_, e)| *e)
            .ok_or_else(|| {
                let known = Entitlement::ALL.map(|(n, _)| n).join(", ");
                format!("unknown entitlement {s:?}; berth knows {known}")
            })
    }
}

/// An extra `/etc/hosts` line for RUN steps: `NAME:ADDRESS` or `NAME=ADDRESS`, as
/// `docker build --add-host` takes it (an IPv6 address after the first `:` or `=`).
pub fn parse_extra_host(s: &str) -> Result<(String, std::net::IpAddr), String> {
    let (name, addr) = s
        .split_once('=')
        .or_else(|| s.split_once(':'))
        .ok_or_else(|| format!("extra host {s:?}: expected NAME:ADDRESS"))?;
    let ok_name = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
    if !ok_name {
        return Err(format!(
            "extra host {s:?}: {name:?} is not a host name (letters, digits, '-', '.', '_')"
        ));
    }
    if addr == "host-gateway" {
        return Err(format!(
            "extra host {s:?}: host-gateway is not available: build steps are fenced off the host"
        ));
    }
    let ip = addr
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .map_err(|_| format!("extra host {s:?}: {addr:?} is not an IP address"))?;
    Ok((name.to_string(), ip))
}

/// How concurrent builds share a cache mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub enum Sharing {
    /// Everyone uses the same directory at once.
    #[default]
    Shared,
    /// One user at a time; others wait.
    Locked,
    /// Each concurrent user gets a directory of its own.
    Private,
}

/// What is mounted at an exec mount's target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum MountSource {
    /// A path of input `n` of the vertex (`RUN --mount=type=bind,from=…`).
    Input {
        /// Input index.
        input: usize,
        /// Path inside that input.
        path: String,
        /// Writable (changes are thrown away).
        rw: bool,
    },
    /// A persistent cache directory (`--mount=type=cache`). As in BuildKit, caches of
    /// one id but different starts (`seed`, `owner`) are different caches.
    Cache {
        /// Cache id (defaults to the target as written, cleaned).
        id: String,
        /// Sharing mode.
        sharing: Sharing,
        /// Owner and mode (uid, gid, mode) of the cache directory when it is first
        /// made, if `uid=`, `gid=` or `mode=` gave one (else root and 0755).
        owner: Option<(u32, u32, u32)>,
        /// What the cache holds when first made (`from=`, `source=`): a path of input
        /// `n` of the vertex, copied. Without it, an empty directory.
        seed: Option<(usize, String)>,
        /// Mounted read-only (`ro`).
        readonly: bool,
    },
    /// A secret (`--mount=type=secret`); its value is no part of the key.
    Secret {
        /// Secret id.
        id: String,
        /// Also (or only) expose it as this environment variable (`env=`).
        env: Option<String>,
        /// Mount it as a file at the mount's target (without `env=`, or with a target).
        file: bool,
        /// Fail if the secret is not provided.
        required: bool,
        /// Owner of the file (`uid=`, `gid=`; default root).
        uid: u32,
        /// Group.
        gid: u32,
        /// Mode of the file (`mode=`; default 0400).
        mode: u32,
    },
    /// The client's SSH agent (`--mount=type=ssh`): a socket at the target that
    /// forwards to the agent given as `--ssh ID`.
    Ssh {
        /// Agent id (`default` unless `id=` says otherwise).
        id: String,
        /// Fail if no agent of that id is given (else the step runs without it).
        required: bool,
        /// Owner of the socket (`uid=`, `gid=`; default root).
        uid: u32,
        /// Group.
        gid: u32,
        /// Mode of the socket (`mode=`; default 0600).
        mode: u32,
    },
    /// An empty tmpfs.
    Tmpfs {
        /// Size limit in bytes (`size=`).
        size: Option<u64>,
    },
}

/// A mount of an exec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExecMount {
    /// Where, inside the container.
    pub target: String,
    /// What.
    pub source: MountSource,
}

/// An image loaded into the dockerd of a [`DockerSpec`] step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DockerLoad {
    /// The name it is tagged with in that dockerd (`app:test`; `:latest` if no tag).
    pub tag: String,
    /// The input of the step whose layers are the image.
    pub input: usize,
    /// Its image config (JSON of [`crate::image::ImageConfig`]; `rootfs` is filled in
    /// from the layers).
    pub config: String,
}

/// A dockerd of the step's own (Earthly's `WITH DOCKER`): started before the command
/// with its data on a fresh directory of the host, given the `loads`, stopped after.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct DockerSpec {
    /// Images loaded before the command runs.
    pub loads: Vec<DockerLoad>,
    /// Services brought up after the loads and down after the command (Earthly's
    /// `--compose`). Left out of the digest when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compose: Option<DockerCompose>,
}

/// Compose files whose services run beside a docker step's command: `docker compose`
/// (or `docker-compose`, whichever the image has) `up -d` before it, `down` after.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct DockerCompose {
    /// The files, in order (each one `-f`): the name as written, for messages, and the
    /// contents, which are part of the key.
    pub files: Vec<(String, String)>,
    /// The services to bring up; all of them when empty.
    pub services: Vec<String>,
}

/// Run a process on input 0 (the root file system). Its changes are the output.
///
/// New fields are left out of the digest when unset, so existing keys stay; build one
/// with `..ExecOp::default()` so later fields need no change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct ExecOp {
    /// argv.
    pub args: Vec<String>,
    /// `KEY=value`, build ARGs included.
    pub env: Vec<String>,
    /// Working directory.
    pub cwd: String,
    /// `user[:group]` as written; resolved against the root file system's /etc/passwd.
    pub user: String,
    /// Network.
    pub network: NetworkMode,
    /// Extra mounts.
    pub mounts: Vec<ExecMount>,
    /// Proxy variables (`HTTP_PROXY`, …): given to the process, never part of the key or
    /// the image.
    #[serde(skip)]
    pub proxy_env: Vec<String>,
    /// A privileged step (`docker run --privileged`): needs the `security.insecure`
    /// entitlement. Left out of the digest when false.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub privileged: bool,
    /// Lines added to the step's `/etc/hosts`, name then address (Earthly's `HOST`,
    /// `--add-host`). Left out of the digest when empty.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub extra_hosts: Vec<(String, std::net::IpAddr)>,
    /// Run the command beside a dockerd of its own (implies `privileged`). Left out of
    /// the digest when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub docker: Option<DockerSpec>,
    /// Paths copied out to the host when the command fails (Earthly's `TRY … FINALLY
    /// SAVE ARTIFACT … AS LOCAL`), before its file system is dropped. What happens on
    /// failure is no part of the key.
    #[serde(skip)]
    pub on_failure: Vec<FailureSave>,
    /// The platform whose binaries the step runs, when it is not this host's: the
    /// solver checks that the kernel can emulate it. Left out of the digest when absent
    /// (the inputs' keys already differ by platform). Boxed: `Op` stays small.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platform: Option<Box<crate::platform::Platform>>,
}

/// A path of a failed command's file system written to the host.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FailureSave {
    /// The path in the container (absolute).
    pub src: String,
    /// Where on the host (absolute); replaced if there.
    pub dest: std::path::PathBuf,
    /// A missing `src` is no error.
    pub if_exists: bool,
}

/// One file operation on input 0.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum FileAction {
    /// Copy `sources` (paths or globs relative to input `from`'s root) to `dest`.
    Copy {
        /// Input index to copy from.
        from: usize,
        /// Source paths, may hold globs.
        sources: Vec<String>,
        /// Destination; a trailing `/` (or several sources) means "into this directory".
        dest: String,
        /// `user[:group]` for everything copied (names resolved in the destination).
        chown: Option<String>,
        /// Mode for everything copied.
        chmod: Option<u32>,
        /// Unpack local tar archives (ADD).
        extract_archives: bool,
        /// Patterns excluded from the copy (`--exclude`).
        exclude: Vec<String>,
        /// `COPY --parents`: sources keep their paths (from the context root or a
        /// `/./` pivot). Left out of the digest when false, so older keys stay.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        parents: bool,
        /// A symbolic `--chmod` (`u+x,go-w`), applied to each entry's mode; `chmod` is
        /// then `None`. Left out of the digest when absent.
        #[serde(skip_serializing_if = "Option::is_none")]
        chmod_symbolic: Option<String>,
        /// The modification time (seconds since the epoch) of everything copied
        /// (Earthly's COPY and SAVE ARTIFACT without `--keep-ts`); `None` keeps the
        /// sources'. Left out of the digest when absent.
        #[serde(skip_serializing_if = "Option::is_none")]
        mtime: Option<i64>,
        /// Keep the sources' owners even from a build context (Earthly's
        /// `--keep-own`); `chown` must be `None`. Left out of the digest when false.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        keep_owner: bool,
        /// A matched folder is copied as itself, not its contents, as BuildKit's copy
        /// without `CopyDirContentsOnly` (Earthly's `COPY --dir` and `SAVE ARTIFACT`):
        /// into `dest` when it ends in `/`, there are several sources or `dest` is a
        /// folder already, else as `dest`. Left out of the digest when false.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        dirs: bool,
        /// A source that is a symbolic link is copied as the link, even a dangling one
        /// (Earthly's `--symlink-no-follow`). Left out of the digest when false.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        no_follow: bool,
    },
    /// Write a file (heredocs, `COPY <<EOF`).
    Write {
        /// Destination, as COPY's: a folder if it ends in `/` or is one in the image
        /// (the file is then `name` in it), else the file itself.
        path: String,
        /// The file's name in a folder destination (a heredoc's name).
        name: String,
        /// Content.
        data: Vec<u8>,
        /// Mode.
        mode: u32,
        /// Owner, `user[:group]`.
        chown: Option<String>,
    },
    /// Create a directory and its parents (WORKDIR).
    Mkdir {
        /// Path.
        path: String,
        /// Owner, `user[:group]`.
        chown: Option<String>,
    },
}

/// File operations, applied in order to input 0; other inputs are copy sources.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileOp {
    /// The actions.
    pub actions: Vec<FileAction>,
    /// Working directory for relative destinations.
    pub cwd: String,
}

/// A build context directory (`COPY . /app` reads from it), filtered by `.dockerignore`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LocalSource {
    /// Name of the context (`context` for the main one).
    pub name: String,
    /// Exclusion patterns (`.dockerignore`).
    pub exclude: Vec<String>,
}

/// A file downloaded over HTTP(S) (`ADD https://…`): its output is a directory holding
/// the one file `filename`, mode 0600, dated by `Last-Modified` when the server gives one.
/// Its cache key is the content's digest, found by downloading or revalidating (see the
/// solver's `http` module), not the URL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HttpSource {
    /// The URL.
    pub url: String,
    /// The file's name (the last segment of the URL's path, `__unnamed__` if none).
    pub filename: String,
    /// `--checksum`: the digest the content must have.
    pub checksum: Option<Digest>,
    /// Where it was asked for (`Dockerfile:3`), for errors; not part of the digest.
    #[serde(skip)]
    pub origin: String,
}

/// A git repository at a ref (`ADD https://host/repo.git#ref:subdir`, `ADD
/// git@host:repo.git`): its output is the checkout (of `subdir`), without `.git` unless
/// `keep_git_dir`. Its cache key is the commit the ref resolves to (`git ls-remote`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GitSource {
    /// The repository, as git takes it.
    pub remote: String,
    /// A branch, tag or full commit (`None`: the remote's HEAD).
    pub reference: Option<String>,
    /// A folder of the repository to add instead of all of it.
    pub subdir: Option<String>,
    /// Keep `.git` (`--keep-git-dir`).
    pub keep_git_dir: bool,
    /// Where it was asked for (`Dockerfile:3`), for errors; not part of the digest.
    #[serde(skip)]
    pub origin: String,
}

/// An operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Op {
    /// The empty file system.
    Scratch,
    /// A base image.
    Image(ImageSource),
    /// Files from the client.
    Local(LocalSource),
    /// A file from a URL.
    Http(HttpSource),
    /// A git checkout.
    Git(GitSource),
    /// A process.
    Exec(ExecOp),
    /// File operations.
    File(FileOp),
    /// The inputs' layers one after the other (`COPY --link`: a layer made on scratch
    /// put on top of the stage, so its key does not depend on what is below).
    Merge,
}

/// A node of the graph. Only `op` and the inputs' digests make its digest.
#[derive(Debug)]
pub struct Vertex {
    /// What it does.
    pub op: Op,
    /// What it reads.
    pub inputs: Vec<State>,
    /// Label for progress and cache-miss reasons (`[build 2/5] RUN make`).
    pub name: String,
    /// Always run, never reuse a cached result (`--no-cache`).
    pub ignore_cache: bool,
    digest: Digest,
}

impl Vertex {
    /// The vertex digest: op definition plus input digests.
    pub fn digest(&self) -> &Digest {
        &self.digest
    }
}

/// An immutable handle on a vertex: the state of a file system after it.
#[derive(Debug, Clone)]
pub struct State(Arc<Vertex>);

#[derive(Serialize)]
struct KeyDoc<'a> {
    op: &'a Op,
    inputs: Vec<&'a Digest>,
}

impl State {
    /// A state made by `op` over `inputs`.
    pub fn new(op: Op, inputs: Vec<State>, name: impl Into<String>) -> State {
        let doc = KeyDoc {
            op: &op,
            inputs: inputs.iter().map(|i| i.digest()).collect(),
        };
        let digest = Digest::sha256(&serde_json::to_vec(&doc).expect("ops serialise"));
        State(Arc::new(Vertex {
            op,
            inputs,
            name: name.into(),
            ignore_cache: false,
            digest,
        }))
    }

    /// The empty file system.
    pub fn scratch() -> State {
        State::new(Op::Scratch, vec![], "scratch")
    }

    /// A base image.
    pub fn image(source: ImageSource) -> State {
        let name = format!("FROM {}", source.reference);
        State::new(Op::Image(source), vec![], name)
    }

    /// A local directory.
    pub fn local(source: LocalSource) -> State {
        let name = format!("[internal] load {}", source.name);
        State::new(Op::Local(source), vec![], name)
    }

    /// Run `exec` on this state; `extra` are the inputs bind mounts refer to (index 1…).
    pub fn run(&self, exec: ExecOp, extra: Vec<State>, name: impl Into<String>) -> State {
        let mut inputs = vec![self.clone()];
        inputs.extend(extra);
        State::new(Op::Exec(exec), inputs, name)
    }

    /// Apply file actions to this state; `extra` are copy sources (index 1…).
    pub fn file(&self, op: FileOp, extra: Vec<State>, name: impl Into<String>) -> State {
        let mut inputs = vec![self.clone()];
        inputs.extend(extra);
        State::new(Op::File(op), inputs, name)
    }

    /// `layers` stacked in order, the first at the bottom (BuildKit's MergeOp).
    pub fn merge(layers: Vec<State>, name: impl Into<String>) -> State {
        State::new(Op::Merge, layers, name)
    }

    /// The same state, but never taken from cache.
    pub fn with_ignore_cache(self, ignore: bool) -> State {
        if self.0.ignore_cache == ignore {
            return self;
        }
        let v = &self.0;
        State(Arc::new(Vertex {
            op: v.op.clone(),
            inputs: v.inputs.clone(),
            name: v.name.clone(),
            ignore_cache: ignore,
            digest: v.digest.clone(),
        }))
    }

    /// The vertex behind this state.
    pub fn vertex(&self) -> &Vertex {
        &self.0
    }

    /// Its digest.
    pub fn digest(&self) -> &Digest {
        &self.0.digest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entitlements_parse_by_name() {
        assert_eq!("network.host".parse(), Ok(Entitlement::NetworkHost));
        assert_eq!(
            "security.insecure".parse(),
            Ok(Entitlement::SecurityInsecure)
        );
        for (name, e) in Entitlement::ALL {
            assert_eq!(e.name(), name);
        }
        let err = "net.host".parse::<Entitlement>().unwrap_err();
        assert!(
            err.starts_with("unknown entitlement")
                && err.contains("network.host, security.insecure"),
            "{err}"
        );
    }

    fn exec(cmd: &str) -> ExecOp {
        ExecOp {
            args: vec!["/bin/sh".into(), "-c".into(), cmd.into()],
            env: vec![],
            cwd: "/".into(),
            user: String::new(),
            network: NetworkMode::Host,
            mounts: vec![],
            ..ExecOp::default()
        }
    }

    #[test]
    fn privileged_and_docker_change_the_digest_only_when_set() {
        // A plain step serialises as it did before these fields existed.
        let json = serde_json::to_string(&Op::Exec(exec("make"))).unwrap();
        assert!(
            !json.contains("privileged") && !json.contains("docker"),
            "{json}"
        );
        let plain = State::scratch().run(exec("make"), vec![], "x");
        let privileged = ExecOp {
            privileged: true,
            ..exec("make")
        };
        let p = State::scratch().run(privileged.clone(), vec![], "x");
        assert_ne!(p.digest(), plain.digest());
        let docker = ExecOp {
            docker: Some(DockerSpec::default()),
            ..privileged
        };
        assert_ne!(
            State::scratch().run(docker, vec![], "x").digest(),
            p.digest()
        );
    }

    #[test]
    fn digests_cover_op_and_inputs_but_not_names_or_proxies() {
        let base = State::scratch();
        let a = base.run(exec("make"), vec![], "[a] RUN make");
        let b = base.run(exec("make"), vec![], "[b] RUN make");
        assert_eq!(a.digest(), b.digest(), "names are not part of the digest");
        let mut with_proxy = exec("make");
        with_proxy.proxy_env = vec!["HTTP_PROXY=http://proxy.invalid:3128".into()];
        assert_eq!(base.run(with_proxy, vec![], "x").digest(), a.digest());
        assert_ne!(base.run(exec("make all"), vec![], "x").digest(), a.digest());
        let on_a = a.run(exec("make"), vec![], "x");
        assert_ne!(on_a.digest(), a.digest(), "inputs are part of the digest");
        // Branching leaves the original untouched.
        let branch1 = a.run(exec("x"), vec![], "1");
        let branch2 = a.run(exec("y"), vec![], "2");
        assert_eq!(
            branch1.vertex().inputs[0].digest(),
            branch2.vertex().inputs[0].digest()
        );
    }
}
