//! `ADD` of HTTP(S) URLs (issue 15, item 3): downloaded from a loopback server written
//! here, which counts requests and answers conditional ones with 304, so the tests see
//! what berth asked for: a download is a file (not unpacked, mode 0600, dated by
//! Last-Modified), `--checksum` is verified and spares the request when the content is
//! cached, a rebuild revalidates (304 keeps the cache hit), a changed file re-runs the
//! step, errors name the Dockerfile line and the URL, and downloads cross the proxy.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use common::git::GitDaemon;
use common::sshd::Sshd;
use common::tinyproxy::Proxy;
use common::*;

/// A file the server serves.
#[derive(Clone)]
struct Served {
    body: Vec<u8>,
    etag: Option<String>,
    last_modified: Option<String>,
}

/// A request the server saw: its path and whether it was conditional.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    path: String,
    conditional: bool,
}

/// An HTTP/1.1 server on 127.0.0.1 serving `files`, one request per connection.
#[derive(Clone)]
struct FileServer {
    addr: String,
    files: Arc<Mutex<HashMap<String, Served>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl FileServer {
    fn start() -> FileServer {
        let files: Arc<Mutex<HashMap<String, Served>>> = Arc::default();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let (f, s) = (files.clone(), seen.clone());
        let addr = loopback_server(move |conn| {
            let (f, s) = (f.clone(), s.clone());
            std::thread::spawn(move || answer(conn, &f, &s));
        });
        FileServer { addr, files, seen }
    }

    fn put(&self, path: &str, body: &[u8], etag: Option<&str>, last_modified: Option<&str>) {
        self.files.lock().unwrap().insert(
            path.to_string(),
            Served {
                body: body.to_vec(),
                etag: etag.map(str::to_owned),
                last_modified: last_modified.map(str::to_owned),
            },
        );
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The requests for `path` so far.
    fn requests(&self, path: &str) -> Vec<Seen> {
        let seen = self.seen.lock().unwrap();
        seen.iter().filter(|s| s.path == path).cloned().collect()
    }
}

/// The method, target (path and query; a proxied request's URL is cut to them) and
/// headers (names in lower case) of the request on `reader`.
fn read_request(
    reader: &mut BufReader<std::net::TcpStream>,
) -> Option<(String, String, HashMap<String, String>)> {
    let mut first = String::new();
    reader.read_line(&mut first).ok()?;
    let mut parts = first.split(' ');
    let method = parts.next()?.to_string();
    let target = parts.next().unwrap_or("/").to_string();
    let target = match target.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("/".into(), |i| rest[i..].to_string()),
        None => target,
    };
    let mut headers = HashMap::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    Some((method, target, headers))
}

fn answer(
    conn: std::net::TcpStream,
    files: &Mutex<HashMap<String, Served>>,
    seen: &Mutex<Vec<Seen>>,
) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let Some((_, path, headers)) = read_request(&mut reader) else {
        return;
    };
    let file = files.lock().unwrap().get(&path).cloned();
    let conditional =
        headers.contains_key("if-none-match") || headers.contains_key("if-modified-since");
    seen.lock().unwrap().push(Seen {
        path: path.clone(),
        conditional,
    });
    let mut out = conn;
    let Some(file) = file else {
        let _ = out.write_all(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\nConnection: close\r\n\r\nnot found",
        );
        return;
    };
    let fresh = match (headers.get("if-none-match"), &file.etag) {
        (Some(sent), Some(etag)) => sent == etag,
        _ => match (headers.get("if-modified-since"), &file.last_modified) {
            (Some(sent), Some(lm)) => sent == lm,
            _ => false,
        },
    };
    let mut head = String::new();
    if let Some(e) = &file.etag {
        head.push_str(&format!("ETag: {e}\r\n"));
    }
    if let Some(lm) = &file.last_modified {
        head.push_str(&format!("Last-Modified: {lm}\r\n"));
    }
    if fresh {
        let _ = write!(
            out,
            "HTTP/1.1 304 Not Modified\r\n{head}Connection: close\r\n\r\n"
        );
        return;
    }
    let _ = write!(
        out,
        "HTTP/1.1 200 OK\r\n{head}Content-Length: {}\r\nConnection: close\r\n\r\n",
        file.body.len()
    );
    let _ = out.write_all(&file.body);
    let mut rest = Vec::new();
    let _ = reader.read_to_end(&mut rest);
}

/// Build `ctx` of `p` in the root `root` into the folder `out`.
fn build(p: &Project, root: &str, ctx: &Path, out: &str) -> Output {
    let _ = std::fs::remove_dir_all(p.path(out));
    output(
        berth_build(&p.path(root))
            .arg("--output")
            .arg(format!("type=local,dest={}", p.path(out).display()))
            .arg(ctx),
    )
}

/// The labels of the steps a build took from cache.
fn cached(out: &Output) -> Vec<String> {
    out.stderr
        .lines()
        .filter_map(|l| l.strip_suffix(" CACHED"))
        .map(str::to_owned)
        .collect()
}

fn sha256_of(data: &[u8]) -> String {
    let out = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(data)?;
            c.wait_with_output()
        })
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    format!("sha256:{}", text.split(' ').next().unwrap())
}

/// A gzip-compressed tar holding `inner.txt`, made with the system's tar.
fn tar_gz(dir: &Path) -> Vec<u8> {
    let src = dir.join("tar-src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("inner.txt"), "inside\n").unwrap();
    let tgz = dir.join("data.tar.gz");
    run(Command::new("tar")
        .arg("-czf")
        .arg(&tgz)
        .arg("-C")
        .arg(&src)
        .arg("inner.txt"));
    std::fs::read(tgz).unwrap()
}

const LAST_MODIFIED: &str = "Tue, 15 Nov 1994 08:12:31 GMT";
const LAST_MODIFIED_UNIX: i64 = 784_887_151;

#[test]
fn downloads_are_files_checked_and_revalidated() {
    if !require_build() {
        return;
    }
    let p = Project::new();
    let srv = FileServer::start();
    let archive = tar_gz(p.dir.path());
    srv.put(
        "/dl/data.tar.gz",
        &archive,
        Some("\"v1\""),
        Some(LAST_MODIFIED),
    );
    // No ETag: revalidated by date alone.
    srv.put("/x.txt", b"x content\n", None, Some(LAST_MODIFIED));
    let sum = sha256_of(b"x content\n");
    let ctx = p.context(
        "ctx",
        &format!(
            "ADD {} /d/\nADD --chmod=644 --chown=7:8 {} /named.txt\nADD --checksum={sum} {} /sum/\n",
            srv.url("/dl/data.tar.gz"),
            srv.url("/x.txt"),
            srv.url("/x.txt"),
        ),
    );
    let first = build(&p, "root", &ctx, "out1");
    assert!(first.success, "{}", first.stderr);
    let out = p.path("out1");
    // Not unpacked, 0600, dated by Last-Modified, owned by root.
    let tgz = out.join("d/data.tar.gz");
    assert_eq!(std::fs::read(&tgz).unwrap(), archive);
    assert!(
        !out.join("d/inner.txt").exists(),
        "a download is never unpacked"
    );
    let meta = std::fs::metadata(&tgz).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
    assert_eq!(meta.mtime(), LAST_MODIFIED_UNIX);
    assert_eq!((meta.uid(), meta.gid()), (0, 0));
    // A file destination names the file; --chmod and --chown as for local files.
    let named = std::fs::metadata(out.join("named.txt")).unwrap();
    assert_eq!(named.permissions().mode() & 0o7777, 0o644);
    assert_eq!((named.uid(), named.gid()), (7, 8));
    assert_eq!(
        std::fs::read(out.join("sum/x.txt")).unwrap(),
        b"x content\n"
    );
    assert_eq!(srv.requests("/dl/data.tar.gz").len(), 1);
    let x_first = srv.requests("/x.txt").len();
    assert!(x_first >= 1);

    // A rebuild revalidates: 304s keep every step cached; the --checksum source, whose
    // content is cached, asks nothing.
    let second = build(&p, "root", &ctx, "out2");
    assert!(second.success, "{}", second.stderr);
    let steps = cached(&second);
    assert_eq!(
        steps.iter().filter(|s| s.contains(" ADD ")).count(),
        3,
        "{}",
        second.stderr
    );
    let dl = srv.requests("/dl/data.tar.gz");
    assert_eq!(dl.len(), 2, "{dl:?}");
    assert!(
        dl[1].conditional,
        "the rebuild's request was not conditional"
    );
    let x = srv.requests("/x.txt");
    assert_eq!(
        x.len(),
        x_first + 1,
        "the --checksum source was requested again: {x:?}"
    );
    assert!(x.last().unwrap().conditional);

    // A changed file re-runs its step (and only the steps after it).
    srv.put("/dl/data.tar.gz", b"new content\n", Some("\"v2\""), None);
    let third = build(&p, "root", &ctx, "out3");
    assert!(third.success, "{}", third.stderr);
    let steps = cached(&third);
    assert!(
        !steps.iter().any(|s| s.contains("ADD http")),
        "the changed download stayed cached: {}",
        third.stderr
    );
    assert_eq!(
        std::fs::read(p.path("out3/d/data.tar.gz")).unwrap(),
        b"new content\n"
    );
}

#[test]
fn checksum_mismatches_and_missing_files_name_the_line_and_the_url() {
    if !require_build() {
        return;
    }
    let p = Project::new();
    let srv = FileServer::start();
    srv.put("/a.txt", b"a\n", None, None);
    let wrong = sha256_of(b"something else\n");
    let ctx = p.context(
        "mismatch",
        &format!("ADD --checksum={wrong} {} /a.txt\n", srv.url("/a.txt")),
    );
    let out = build(&p, "root", &ctx, "out");
    assert!(!out.success);
    let got = sha256_of(b"a\n");
    for part in [
        "Dockerfile:2",
        &srv.url("/a.txt"),
        &format!("expected {wrong}"),
        &format!("got {got}"),
    ] {
        assert!(out.stderr.contains(part), "no {part:?} in:\n{}", out.stderr);
    }

    let ctx = p.context("missing", &format!("\nADD {} /\n", srv.url("/nope.bin")));
    let out = build(&p, "root", &ctx, "out");
    assert!(!out.success);
    for part in ["Dockerfile:3", &srv.url("/nope.bin"), "404"] {
        assert!(out.stderr.contains(part), "no {part:?} in:\n{}", out.stderr);
    }

    // Nothing listens on a port just freed: connection refused, named.
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/f");
    let ctx = p.context("refused", &format!("ADD {url} /\n"));
    let out = build(&p, "root", &ctx, "out");
    assert!(!out.success);
    assert!(
        out.stderr.contains("Dockerfile:2") && out.stderr.contains(&url),
        "{}",
        out.stderr
    );
}

#[test]
fn downloads_go_through_the_proxy() {
    if !require_build() || !require("tinyproxy") {
        return;
    }
    let p = Project::new();
    let srv = FileServer::start();
    srv.put("/p.txt", b"proxied\n", None, None);
    let proxy = Proxy::start(p.dir.path());
    let ctx = p.context("ctx", &format!("ADD {} /\n", srv.url("/p.txt")));
    let out = output(
        berth_build(&p.path("root"))
            .env_remove("NO_PROXY")
            .env_remove("no_proxy")
            .env("HTTP_PROXY", format!("http://{}", proxy.addr))
            .arg("--output")
            .arg(format!("type=local,dest={}", p.path("out").display()))
            .arg(&ctx),
    );
    assert!(out.success, "{}", out.stderr);
    assert_eq!(std::fs::read(p.path("out/p.txt")).unwrap(), b"proxied\n");
    assert_eq!(
        proxy.requests_to(&srv.addr),
        1,
        "the download did not cross the proxy"
    );
    assert_eq!(srv.requests("/p.txt").len(), 1);
}

/// Docker 20.10's BuildKit fetches from the same loopback server (its HTTP source runs
/// in dockerd, on the host's network): the files it adds equal berth's, times included.
#[test]
fn downloads_match_docker_buildkit() {
    if !require_build() || !require_docker() {
        return;
    }
    let p = Project::new();
    let srv = FileServer::start();
    let archive = tar_gz(p.dir.path());
    // dockerd's BuildKit keeps what it fetched by URL and ETag: a tag of this run only.
    let etag = format!(
        "\"{}-{:?}\"",
        std::process::id(),
        std::time::SystemTime::now()
    );
    srv.put(
        "/dl/data.tar.gz",
        &archive,
        Some(&etag),
        Some(LAST_MODIFIED),
    );
    srv.put("/plain", b"no date\n", None, None);
    // (--chmod is left out: docker 20.10 ignores it on URLs; today's BuildKit applies
    // it, as berth does, tested above.)
    // Sources are copied in the order written, URLs and local files mixed: the last
    // `plain` wins.
    let body = format!(
        "ADD {a} /d/\nADD {a} /named.tgz\nADD {b} /e/\nADD --chown=5:6 {b} /f/g\n\
         ADD plain {b} /order1/\nADD {b} plain /order2/\n",
        a = srv.url("/dl/data.tar.gz"),
        b = srv.url("/plain"),
    );
    let ctx = p.context("berth", &body);
    std::fs::write(ctx.join("plain"), "local\n").unwrap();
    let built = build(&p, "root", &ctx, "out");
    assert!(built.success, "{}", built.stderr);
    let docker_ctx = context(
        p.dir.path(),
        "docker",
        &format!("FROM {}\n{body}", p.base.docker_reference()),
    );
    std::fs::write(docker_ctx.join("plain"), "local\n").unwrap();
    let mut images = DockerImages::default();
    let image = format!("berth-test/add-remote:{}", std::process::id());
    images.0.push(image.clone());
    output_ok(
        Command::new(docker())
            .env("DOCKER_BUILDKIT", "1")
            .args(["build", "-q", "--network", "host", "-t", &image])
            .arg(&docker_ctx),
    );
    let work = p.path("docker-tree");
    let docker_tree = docker_image_tree(&image, &work);
    let added = ["/d", "/named.tgz", "/e", "/f", "/order1", "/order2"];
    let pick = |t: &Tree| -> Tree {
        t.iter()
            .filter(|(k, _)| {
                added
                    .iter()
                    .any(|a| k == a || k.starts_with(&format!("{a}/")))
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    let ours = pick(&file_tree(&p.path("out")));
    let theirs = pick(&docker_tree);
    assert!(ours.len() >= 10, "{ours:?}");
    let read = |rel: &str| std::fs::read_to_string(p.path("out").join(rel)).unwrap();
    assert_eq!(read("order1/plain"), "no date\n", "the URL came last");
    assert_eq!(read("order2/plain"), "local\n", "the local file came last");
    let diff = tree_diff("berth", &ours, "docker", &theirs);
    assert!(diff.is_empty(), "file trees differ:\n{}", diff.join("\n"));
    let mtime = |root: &Path, rel: &str| std::fs::metadata(root.join(rel)).unwrap().mtime();
    assert_eq!(
        mtime(&p.path("out"), "d/data.tar.gz"),
        mtime(&work.join("rootfs"), "d/data.tar.gz")
    );
    assert_eq!(mtime(&p.path("out"), "named.tgz"), LAST_MODIFIED_UNIX);
}

/// Git's smart HTTP on 127.0.0.1: each request is handed to `git http-backend` (CGI)
/// serving the repositories below `base`. Returns the address.
fn git_http(base: &Path) -> String {
    let base = base.to_path_buf();
    loopback_server(move |conn| {
        let base = base.clone();
        std::thread::spawn(move || git_http_answer(conn, &base));
    })
}

fn git_http_answer(conn: std::net::TcpStream, base: &Path) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let Some((method, target, headers)) = read_request(&mut reader) else {
        return;
    };
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let len: usize = headers
        .get("content-length")
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    reader.read_exact(&mut body).unwrap();
    let mut cgi = Command::new("git");
    cgi.arg("http-backend")
        .env("GIT_PROJECT_ROOT", base)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("REQUEST_METHOD", &method)
        .env("PATH_INFO", path)
        .env("QUERY_STRING", query)
        .env("CONTENT_LENGTH", len.to_string())
        .env("REMOTE_ADDR", "127.0.0.1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    for (h, var) in [
        ("content-type", "CONTENT_TYPE"),
        ("content-encoding", "HTTP_CONTENT_ENCODING"),
        ("git-protocol", "GIT_PROTOCOL"),
    ] {
        if let Some(v) = headers.get(h) {
            cgi.env(var, v);
        }
    }
    let mut child = cgi.spawn().unwrap();
    child.stdin.take().unwrap().write_all(&body).unwrap();
    let out = child.wait_with_output().unwrap().stdout;
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4))
        .or_else(|| out.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2)));
    let Some((end, sep)) = split else { return };
    let head = String::from_utf8_lossy(&out[..end]).into_owned();
    let content = &out[end + sep..];
    let mut status = "200 OK".to_string();
    let mut extra = String::new();
    for line in head.lines() {
        match line.split_once(':') {
            Some((k, v)) if k.eq_ignore_ascii_case("status") => status = v.trim().to_string(),
            Some(_) => extra.push_str(&format!("{}\r\n", line.trim())),
            None => {}
        }
    }
    let mut conn = conn;
    let _ = write!(
        conn,
        "HTTP/1.1 {status}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n",
        content.len()
    );
    let _ = conn.write_all(content);
}

/// `git -C dir args…` with a fixed identity; its trimmed stdout.
fn git(dir: &Path, args: &[&str]) -> String {
    run(Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=t", "-c", "user.email=t@example.invalid"])
        .args(args))
    .trim()
    .to_string()
}

/// Commit `a.txt` with `text` (and `sub/b.txt`, `run.sh`) in the work tree `work`.
fn commit(work: &Path, text: &str) -> String {
    std::fs::write(work.join("a.txt"), text).unwrap();
    std::fs::create_dir_all(work.join("sub")).unwrap();
    std::fs::write(work.join("sub/b.txt"), format!("b {text}")).unwrap();
    std::fs::write(work.join("run.sh"), "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(work.join("run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    git(work, &["add", "-A"]);
    git(work, &["commit", "-q", "-m", text]);
    git(work, &["rev-parse", "HEAD"])
}

#[test]
fn git_repositories_at_branches_tags_commits_and_folders() {
    if !require_build() || !require("git") {
        return;
    }
    let p = Project::new();
    let work = p.path("work");
    std::fs::create_dir_all(&work).unwrap();
    git(&work, &["init", "-q", "-b", "main"]);
    let first = commit(&work, "one\n");
    git(&work, &["tag", "-a", "v1", "-m", "v1"]);
    let second = commit(&work, "two\n");
    let served = p.path("served");
    std::fs::create_dir_all(&served).unwrap();
    let bare = served.join("repo.git");
    run(Command::new("git")
        .args(["clone", "-q", "--bare"])
        .arg(&work)
        .arg(&bare));
    let daemon = GitDaemon::start(&served);
    let repo = format!("git://{}/repo.git", daemon.addr);
    let ctx = p.context(
        "ctx",
        &format!(
            "ADD {repo}#v1 /tag/\nADD {repo}#{first} /commit/\nADD {repo}#main /main/\n\
             ADD {repo}#main:sub /sub/\nADD --keep-git-dir {repo}#main /kept/\n"
        ),
    );
    let built = build(&p, "root", &ctx, "out1");
    assert!(built.success, "{}", built.stderr);
    let out = p.path("out1");
    let read = |rel: &str| std::fs::read_to_string(out.join(rel)).unwrap();
    assert_eq!(read("main/a.txt"), "two\n");
    assert_eq!(read("tag/a.txt"), "one\n");
    assert_eq!(read("commit/a.txt"), "one\n");
    assert_eq!(read("sub/b.txt"), "b two\n");
    assert!(
        !out.join("sub/a.txt").exists(),
        "the folder's siblings came too"
    );
    assert!(
        !out.join("main/.git").exists(),
        ".git kept without --keep-git-dir"
    );
    let mode = std::fs::metadata(out.join("main/run.sh"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o755);
    assert!(out.join("kept/.git").is_dir());
    assert_eq!(git(&out.join("kept"), &["rev-parse", "HEAD"]), second);

    // Nothing moved: every ADD is cached.
    let again = build(&p, "root", &ctx, "out2");
    assert!(again.success, "{}", again.stderr);
    let adds = |o: &Output| {
        cached(o)
            .into_iter()
            .filter(|s| s.contains(" ADD "))
            .count()
    };
    assert_eq!(adds(&again), 5, "{}", again.stderr);

    // A new commit on the branch re-runs the step that adds it (and those after it),
    // not the ones before.
    let third = commit(&work, "three\n");
    git(&work, &["push", "-q", bare.to_str().unwrap(), "main"]);
    let moved = build(&p, "root", &ctx, "out3");
    assert!(moved.success, "{}", moved.stderr);
    let steps = cached(&moved);
    assert!(
        steps
            .iter()
            .any(|s| s.ends_with(&format!("ADD {repo}#v1 /tag/"))),
        "{}",
        moved.stderr
    );
    assert!(
        !steps
            .iter()
            .any(|s| s.ends_with(&format!("ADD {repo}#main /main/"))),
        "{}",
        moved.stderr
    );
    let out = p.path("out3");
    assert_eq!(
        std::fs::read_to_string(out.join("main/a.txt")).unwrap(),
        "three\n"
    );
    assert_eq!(git(&out.join("kept"), &["rev-parse", "HEAD"]), third);

    // A ref that is not there names the line, the repository and the ref.
    let ctx = p.context("bad", &format!("ADD {repo}#nope /x/\n"));
    let bad = build(&p, "root", &ctx, "out4");
    assert!(!bad.success);
    for part in ["Dockerfile:2", repo.as_str(), "\"nope\""] {
        assert!(bad.stderr.contains(part), "no {part:?} in:\n{}", bad.stderr);
    }
}

/// The form most Dockerfiles use, `http(s)://…/repo.git#ref`, over git's smart HTTP,
/// through the configured proxy (git gets berth's proxy variables). Docker 20.10's
/// BuildKit has no `ADD` of git repositories (it downloads the URL as a file), so the
/// reference here is the documented behaviour.
#[test]
fn git_over_http_goes_through_the_proxy() {
    if !require_build() || !require("git") || !require("tinyproxy") {
        return;
    }
    let p = Project::new();
    let work = p.path("work");
    std::fs::create_dir_all(&work).unwrap();
    git(&work, &["init", "-q", "-b", "main"]);
    commit(&work, "one\n");
    let served = p.path("served");
    std::fs::create_dir_all(&served).unwrap();
    run(Command::new("git")
        .args(["clone", "-q", "--bare"])
        .arg(&work)
        .arg(served.join("repo.git")));
    let addr = git_http(&served);
    let repo = format!("http://{addr}/repo.git");
    let proxy = Proxy::start(p.dir.path());
    let ctx = p.context(
        "ctx",
        &format!("ADD {repo}#main /g/\nADD --chown=3:4 {repo}#main:sub /s\n"),
    );
    // The proxy comes from config.toml only, so git sees it only if berth passes it.
    let config = p.path("config.toml");
    std::fs::write(
        &config,
        format!("[network]\nhttp_proxy = \"http://{}\"\n", proxy.addr),
    )
    .unwrap();
    let mut build = berth_build(&p.path("root"));
    for var in ["NO_PROXY", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"] {
        build.env_remove(var).env_remove(var.to_ascii_lowercase());
    }
    let out = output(
        build
            .arg("--config")
            .arg(&config)
            .arg("--output")
            .arg(format!("type=local,dest={}", p.path("out").display()))
            .arg(&ctx),
    );
    assert!(out.success, "{}", out.stderr);
    let o = p.path("out");
    assert_eq!(std::fs::read_to_string(o.join("g/a.txt")).unwrap(), "one\n");
    let b = std::fs::metadata(o.join("s/b.txt")).unwrap();
    assert_eq!((b.uid(), b.gid()), (3, 4));
    assert!(!o.join("s/a.txt").exists());
    assert!(
        proxy.requests_to(&addr) > 0,
        "git did not go through the proxy"
    );
}

/// A git server that accepts and never answers does not hold the build: SIGTERM ends
/// it as canceled, with the git processes it started (nothing else is left holding the
/// connection).
#[test]
fn a_hanging_git_server_is_left_on_sigterm() {
    if !require_build() || !require("git") {
        return;
    }
    let p = Project::new();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let ctx = p.context("ctx", &format!("ADD git://{addr}/repo.git#main /g/\n"));
    let child = berth_build(&p.path("root"))
        .arg(&ctx)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // git is connected and waits for the server's first words.
    let (mut conn, _) = listener.accept().unwrap();
    run(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .stdout(Stdio::null()));
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the build went on: {stderr}");
    assert!(stderr.contains("canceled"), "{stderr}");
    // git is gone: after its request, its end of the connection is closed (a git left
    // running would hold it open, and this read would not end).
    let mut request = Vec::new();
    let _ = conn.read_to_end(&mut request);
    assert!(
        String::from_utf8_lossy(&request).contains("git-upload-pack /repo.git"),
        "{request:?}"
    );
}

/// `ADD git@host:path#ref` over ssh, against a loopback sshd, the key in an ssh-agent
/// of the test's own: git's ssh finds it through `SSH_AUTH_SOCK`, as the user's would.
/// (The port and the host key come from GIT_SSH_COMMAND, as an ~/.ssh/config would
/// give them.) Docker 20.10 has no ADD of git: documented behaviour.
#[test]
fn git_over_ssh_uses_the_agent() {
    if !require_build()
        || !require("git")
        || !require("sshd")
        || !require("ssh-agent")
        || !require("unshare")
    {
        return;
    }
    let p = Project::new();
    let work = p.path("work");
    std::fs::create_dir_all(&work).unwrap();
    git(&work, &["init", "-q", "-b", "main"]);
    commit(&work, "over ssh\n");
    let served = p.path("served/repo.git");
    run(Command::new("git")
        .args(["clone", "-q", "--bare"])
        .arg(&work)
        .arg(&served));
    let ssh = p.path("ssh");
    std::fs::create_dir_all(&ssh).unwrap();
    let agent = Agent::start(&ssh);
    let sshd = Sshd::start(&ssh, &ssh.join("key.pub"));
    let socket = agent.socket.clone();
    let ctx = p.context(
        "ctx",
        &format!("ADD git@127.0.0.1:{}#main /g/\n", served.display()),
    );
    let out = output(
        berth_build(&p.path("root"))
            .env("SSH_AUTH_SOCK", &socket)
            .env(
                "GIT_SSH_COMMAND",
                format!(
                    "ssh -p {} -o UserKnownHostsFile={} -o StrictHostKeyChecking=yes -o BatchMode=yes -F none",
                    sshd.port,
                    sshd.known_hosts.display()
                ),
            )
            .arg("--output")
            .arg(format!("type=local,dest={}", p.path("out").display()))
            .arg(&ctx),
    );
    drop(agent);
    assert!(
        out.success,
        "{}\nsshd: {}",
        out.stderr,
        std::fs::read_to_string(ssh.join("sshd.log")).unwrap_or_default()
    );
    assert_eq!(
        std::fs::read_to_string(p.path("out/g/a.txt")).unwrap(),
        "over ssh\n"
    );
}
