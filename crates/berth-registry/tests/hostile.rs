//! Clients that try to stall the registry, against an in-process registry on 127.0.0.1:
//! storms of failed logins, silent and slow connections, more connections than the
//! limit, refused requests with bodies, anonymous writes beyond loopback. Every loop is
//! bounded in count and time; nothing asserts a duration.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use berth_registry::{Auth, Config, LoginLimits, Registry, ServeOptions};
use berth_store::Store;
use reqwest::{Client, StatusCode};

struct Server {
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

async fn start(f: impl FnOnce(&mut Config), options: ServeOptions) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("root")).unwrap();
    let mut config = Config::new(store);
    f(&mut config);
    let registry = Registry::new(config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(berth_registry::serve_with(
        listener,
        registry.router(),
        None,
        options,
        std::future::pending(),
    ));
    Server { addr, _dir: dir }
}

fn users() -> HashMap<String, String> {
    HashMap::from([
        ("ci".to_string(), bcrypt::hash("ci-pass", 6).unwrap()),
        ("dev".to_string(), bcrypt::hash("dev-pass", 6).unwrap()),
    ])
}

/// GET /v2/ with Basic credentials.
async fn get_v2(http: &Client, base: &str, user: &str, pass: &str) -> reqwest::Response {
    http.get(format!("{base}/v2/"))
        .basic_auth(user, Some(pass))
        .send()
        .await
        .unwrap()
}

async fn error_code(r: reqwest::Response) -> String {
    let v: serde_json::Value = r.json().await.expect("error body is JSON");
    v["errors"][0]["code"].as_str().unwrap_or("").to_string()
}

/// Write `head` then `body` on a fresh connection and read until the server closes it
/// (at most 20 s); returns what was read and whether every write went through.
fn exchange(addr: SocketAddr, head: &str, body: &[&[u8]], pause: Duration) -> (String, bool) {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut written = c.write_all(head.as_bytes()).is_ok();
    for part in body {
        std::thread::sleep(pause);
        written &= c.write_all(part).is_ok();
    }
    let mut out = Vec::new();
    let _ = c.read_to_end(&mut out);
    (String::from_utf8_lossy(&out).into_owned(), written)
}

/// One keep-alive GET on `c`; returns the status line. Reads exactly one response.
fn get_on(c: &mut TcpStream, path: &str) -> String {
    c.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
        .unwrap();
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        assert_eq!(
            c.read(&mut byte).unwrap(),
            1,
            "connection closed mid-response"
        );
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0; len];
    c.read_exact(&mut body).unwrap();
    head.lines().next().unwrap_or("").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn normal_requests_succeed_during_a_storm_of_failed_logins() {
    // No refill during the test, so the counts below are exact.
    let limits = LoginLimits {
        refill: Duration::from_secs(3600),
        ..LoginLimits::default()
    };
    let burst = limits.burst as usize;
    let s = start(
        |c| c.auth = Some(Auth::with_limits(users(), None, limits)),
        ServeOptions::default(),
    )
    .await;
    let base = format!("http://{}", s.addr);
    let http = Client::new();
    // A client that logged in before the storm, from the storm's own address.
    let r = get_v2(&http, &base, "ci", "ci-pass").await;
    assert_eq!(r.status(), StatusCode::OK);

    let storm: Vec<_> = (0..200)
        .map(|i| {
            let (http, base) = (http.clone(), base.clone());
            tokio::spawn(async move {
                let r = get_v2(&http, &base, "ci", &format!("wrong-{i}")).await;
                let status = r.status();
                let retry = r.headers().get("retry-after").cloned();
                (status, retry, error_code(r).await)
            })
        })
        .collect();
    // During the storm: the logged-in client, and a first login from another address.
    for _ in 0..5 {
        let r = get_v2(&http, &base, "ci", "ci-pass").await;
        assert_eq!(r.status(), StatusCode::OK);
    }
    let elsewhere = Client::builder()
        .local_address(Some("127.0.0.2".parse::<IpAddr>().unwrap()))
        .build()
        .unwrap();
    let r = get_v2(&elsewhere, &base, "dev", "dev-pass").await;
    assert_eq!(
        r.status(),
        StatusCode::OK,
        "another address is not throttled"
    );

    let (mut refused, mut throttled) = (0, 0);
    for t in storm {
        let (status, retry, code) = t.await.unwrap();
        match status {
            StatusCode::UNAUTHORIZED => {
                assert_eq!(code, "UNAUTHORIZED");
                refused += 1;
            }
            StatusCode::TOO_MANY_REQUESTS => {
                assert_eq!(code, "TOOMANYREQUESTS");
                let secs: u64 = retry
                    .expect("429 has Retry-After")
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!(secs >= 1);
                throttled += 1;
            }
            other => panic!("storm request answered {other}"),
        }
    }
    // Only the burst was checked with bcrypt; the rest were refused before any check.
    assert_eq!(refused, burst);
    assert_eq!(throttled, 200 - burst);
}

/// Read until the server closes `c` and return what came; fails if the read timeout
/// set on `c` comes first.
fn read_until_closed(c: &mut TcpStream, what: &str) -> Vec<u8> {
    let mut got = Vec::new();
    let r = c.read_to_end(&mut got);
    assert!(
        r.is_ok()
            || r.as_ref()
                .is_err_and(|e| e.kind() != std::io::ErrorKind::WouldBlock),
        "{what} stays open: {r:?}"
    );
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_slow_and_idle_connections_are_closed() {
    let s = start(
        |_| {},
        ServeOptions {
            header_read_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
            ..ServeOptions::default()
        },
    )
    .await;
    let addr = s.addr;
    tokio::task::spawn_blocking(move || {
        // Connects and sends nothing: closed by the server, not by our 20 s read timeout.
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        read_until_closed(&mut c, "a silent connection");

        // A keep-alive connection after its request, and an HTTP/2 connection (preface
        // and empty SETTINGS, no stream): both closed once idle.
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        assert!(get_on(&mut c, "/v2/").contains(" 200 "));
        read_until_closed(&mut c, "an idle keep-alive connection");
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        c.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
            .unwrap();
        read_until_closed(&mut c, "an idle HTTP/2 connection");

        // Sends a header a byte every 100 ms, for up to 20 s: the server hangs up first.
        let c = TcpStream::connect(addr).unwrap();
        let mut w = c.try_clone().unwrap();
        let writer = std::thread::spawn(move || {
            let start = Instant::now();
            let head = b"GET /v2/ HTTP/1.1\r\nhost: x\r\nx-slow: ";
            if w.write_all(head).is_err() {
                return false;
            }
            while start.elapsed() < Duration::from_secs(20) {
                std::thread::sleep(Duration::from_millis(100));
                if w.write_all(b"a").is_err() {
                    return false;
                }
            }
            true
        });
        let mut c = c;
        c.set_read_timeout(Some(Duration::from_secs(25))).unwrap();
        let out = read_until_closed(&mut c, "the slow connection");
        let _ = c.shutdown(std::net::Shutdown::Both);
        let finished = writer.join().unwrap();
        assert!(
            !finished,
            "the slow client sent for 20 s without being cut off"
        );
        assert!(
            !String::from_utf8_lossy(&out).contains(" 200 "),
            "a request whose headers never ended was answered"
        );
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_get_503() {
    let s = start(
        |_| {},
        ServeOptions {
            max_connections: 4,
            ..ServeOptions::default()
        },
    )
    .await;
    let addr = s.addr;
    tokio::task::spawn_blocking(move || {
        let mut held: Vec<TcpStream> = (0..4)
            .map(|_| {
                let mut c = TcpStream::connect(addr).unwrap();
                c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                assert!(get_on(&mut c, "/v2/").contains(" 200 "));
                c
            })
            .collect();
        let (resp, _) = exchange(
            addr,
            "GET /v2/ HTTP/1.1\r\nhost: x\r\n\r\n",
            &[],
            Duration::ZERO,
        );
        assert!(resp.starts_with("HTTP/1.1 503"), "{resp}");
        assert!(resp.to_lowercase().contains("retry-after: 1"), "{resp}");
        assert!(resp.contains("UNAVAILABLE"), "{resp}");
        // A slot frees when a held connection closes.
        drop(held.pop());
        let mut answered = String::new();
        for _ in 0..100 {
            let (resp, _) = exchange(
                addr,
                "GET /v2/ HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
                &[],
                Duration::ZERO,
            );
            answered = resp;
            if answered.starts_with("HTTP/1.1 200") {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(answered.starts_with("HTTP/1.1 200"), "{answered}");
        // The held connections still work.
        for c in &mut held {
            assert!(get_on(c, "/v2/").contains(" 200 "));
        }
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_request_with_a_body_reads_the_challenge() {
    let s = start(
        |c| c.auth = Some(Auth::new(users(), None)),
        ServeOptions::default(),
    )
    .await;
    let addr = s.addr;
    tokio::task::spawn_blocking(move || {
        // A body sent in pieces after the headers, as a client streaming a layer does.
        let piece = vec![7u8; 64 * 1024];
        let parts: Vec<&[u8]> = vec![&piece; 8];
        let head = format!(
            "POST /v2/app/blobs/uploads/?digest=sha256:{} HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n",
            "0".repeat(64),
            piece.len() * parts.len()
        );
        let (resp, written) = exchange(addr, &head, &parts, Duration::from_millis(20));
        assert!(written, "the client could not send its body: {resp}");
        assert!(resp.starts_with("HTTP/1.1 401"), "{resp}");
        let lower = resp.to_lowercase();
        assert!(lower.contains("connection: close"), "{resp}");
        assert!(lower.contains("www-authenticate: basic"), "{resp}");

        // A client waiting for 100-continue is answered before it sends anything.
        let head = "PUT /v2/app/manifests/v1 HTTP/1.1\r\nhost: x\r\ncontent-length: 5000000\r\nexpect: 100-continue\r\n\r\n";
        let (resp, _) = exchange(addr, head, &[], Duration::ZERO);
        assert!(resp.starts_with("HTTP/1.1 401"), "{resp}");
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn anonymous_writes_are_refused_beyond_loopback() {
    let exposed = start(
        |c| c.listen_on("0.0.0.0:5000".parse().unwrap()),
        ServeOptions::default(),
    )
    .await;
    let http = Client::new();
    let upload = |s: &Server| format!("http://{}/v2/app/blobs/uploads/", s.addr);
    let r = http.post(upload(&exposed)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "DENIED");
    let message = body["errors"][0]["message"].as_str().unwrap();
    assert!(
        message.contains("--htpasswd") && message.contains("--allow-anonymous-push"),
        "{message}"
    );
    let r = http
        .delete(format!("http://{}/v2/app/manifests/v1", exposed.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // Reads stay open.
    let r = http
        .get(format!("http://{}/v2/", exposed.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    let allowed = start(
        |c| {
            c.listen_on("0.0.0.0:5000".parse().unwrap());
            c.allow_anonymous_push = true;
        },
        ServeOptions::default(),
    )
    .await;
    let r = http.post(upload(&allowed)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let loopback = start(
        |c| c.listen_on("127.0.0.1:5000".parse().unwrap()),
        ServeOptions::default(),
    )
    .await;
    let r = http.post(upload(&loopback)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_nobody_reads_is_cut_off() {
    let s = start(
        |_| {},
        ServeOptions {
            stall_timeout: Duration::from_secs(1),
            ..ServeOptions::default()
        },
    )
    .await;
    // Larger than what loopback's socket buffers absorb.
    let blob: Vec<u8> = (0..32u32 << 20).map(|i| (i % 251) as u8).collect();
    let digest = berth_oci::Digest::sha256(&blob);
    let r = Client::new()
        .post(format!(
            "http://{}/v2/app/blobs/uploads/?digest={digest}",
            s.addr
        ))
        .body(blob.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let addr = s.addr;
    tokio::task::spawn_blocking(move || {
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        c.write_all(format!("GET /v2/app/blobs/{digest} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
            .unwrap();
        // Read nothing for a while, then everything that comes.
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(4) {
            std::thread::sleep(Duration::from_millis(200));
        }
        let got = read_until_closed(&mut c, "the stalled download");
        assert!(
            got.len() < blob.len(),
            "the whole blob came through after a stall: {} bytes",
            got.len()
        );
    })
    .await
    .unwrap();
}
