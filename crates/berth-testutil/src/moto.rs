//! moto's S3-compatible server on 127.0.0.1, one per test (`pip install "moto[server]"`,
//! which scripts/install-test-deps does).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `moto_server`, killed when dropped.
pub struct Moto {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    /// Its port.
    pub port: u16,
    /// Keys of an IAM user allowed everything, when started with [`Moto::start_with_auth`]
    /// (without auth moto accepts any key).
    pub keys: (String, String),
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// Whether `moto_server` and python's boto3 are installed; skips (or panics under
/// `BERTH_TEST_STRICT=1`) when not.
pub fn available() -> bool {
    let moto = Command::new("moto_server")
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !moto {
        return crate::skip("moto_server not installed (scripts/install-test-deps)");
    }
    true
}

/// A python with boto3: the one `moto_server` runs on (scripts/install-test-deps puts
/// moto in a venv), else `python3`.
fn python() -> String {
    static PYTHON: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PYTHON
        .get_or_init(|| {
            let path = std::env::var_os("PATH").unwrap_or_default();
            let shebang = std::env::split_paths(&path)
                .map(|d| d.join("moto_server"))
                .find(|p| p.is_file())
                .and_then(|p| std::fs::read_to_string(p).ok())
                .and_then(|t| {
                    let first = t.lines().next()?.strip_prefix("#!")?.trim().to_string();
                    (!first.contains(' ')).then_some(first)
                });
            shebang
                .into_iter()
                .chain(["python3".to_string()])
                .find(|py| {
                    Command::new(py)
                        .args(["-c", "import boto3"])
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status()
                        .is_ok_and(|s| s.success())
                })
                .unwrap_or_else(|| "python3".into())
        })
        .clone()
}

impl Moto {
    /// Start moto with a bucket `bucket`, accepting any credentials. `None` when moto is
    /// not installed (see [`available`]).
    pub fn start(bucket: &str) -> Option<Moto> {
        if !available() {
            return None;
        }
        let m = Moto::spawn(&[]);
        m.create_bucket(bucket);
        Some(m)
    }

    /// Start moto checking signatures: a bucket `bucket` and an IAM user with every right
    /// are made first (with boto3), and only that user's keys ([`Moto::keys`]) work.
    pub fn start_with_auth(bucket: &str) -> Option<Moto> {
        if !available() {
            return None;
        }
        // Requests before auth applies: the bucket, the user, its key and its policy.
        let mut m = Moto::spawn(&[("INITIAL_NO_AUTH_ACTION_COUNT", "4")]);
        let script = r#"
import boto3, json, sys
kw = dict(endpoint_url=sys.argv[1], region_name="us-east-1",
          aws_access_key_id="setup", aws_secret_access_key="setup")
boto3.client("s3", **kw).create_bucket(Bucket=sys.argv[2])
iam = boto3.client("iam", **kw)
iam.create_user(UserName="berth")
k = iam.create_access_key(UserName="berth")["AccessKey"]
iam.put_user_policy(UserName="berth", PolicyName="all", PolicyDocument=json.dumps(
    {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
print(k["AccessKeyId"], k["SecretAccessKey"])
"#;
        let out = Command::new(python())
            .args(["-c", script, &m.endpoint, bucket])
            .output()
            .expect("run python");
        assert!(
            out.status.success(),
            "making moto's IAM user failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let mut words = text.split_whitespace();
        let key = words.next().expect("access key").to_string();
        let secret = words.next().expect("secret key").to_string();
        m.keys = (key, secret);
        Some(m)
    }

    fn spawn(env: &[(&str, &str)]) -> Moto {
        let port = free_port();
        let mut cmd = Command::new("moto_server");
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("start moto_server");
        let mut m = Moto {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            port,
            keys: ("test".into(), "test".into()),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if m.request("GET", "/moto-api/").is_some() {
                break;
            }
            if let Ok(Some(status)) = m.child.try_wait() {
                panic!("moto_server exited at start-up: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "moto_server did not answer on {} within 60 s",
                m.endpoint
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        m
    }

    /// Send a bare request; the status code, if moto answered.
    fn request(&self, method: &str, path: &str) -> Option<u16> {
        let body = b"";
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.port,
            body.len()
        )
        .ok()?;
        s.write_all(body).ok()?;
        let mut head = [0u8; 12];
        s.read_exact(&mut head).ok()?;
        std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
    }

    /// Create bucket `name` (moto accepts unsigned requests without auth).
    pub fn create_bucket(&self, name: &str) {
        let status = self.request("PUT", &format!("/{name}"));
        assert_eq!(status, Some(200), "creating bucket {name} on moto");
    }

    /// Write object `key` of `bucket` behind the registry's back (through boto3).
    pub fn put_object(&self, bucket: &str, key: &str, body: &[u8]) {
        let script = r#"
import boto3, sys
c = boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-east-1",
                 aws_access_key_id=sys.argv[4], aws_secret_access_key=sys.argv[5])
c.put_object(Bucket=sys.argv[2], Key=sys.argv[3], Body=sys.stdin.buffer.read())
"#;
        let mut child = Command::new(python())
            .args([
                "-c",
                script,
                &self.endpoint,
                bucket,
                key,
                &self.keys.0,
                &self.keys.1,
            ])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run python");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(body)
            .expect("write body");
        let out = child.wait_with_output().expect("wait for python");
        assert!(
            out.status.success(),
            "writing {key} on moto: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Every key in `bucket` (through boto3), sorted.
    pub fn keys_in(&self, bucket: &str) -> Vec<String> {
        let script = r#"
import boto3, sys
c = boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-east-1",
                 aws_access_key_id=sys.argv[3], aws_secret_access_key=sys.argv[4])
for page in c.get_paginator("list_objects_v2").paginate(Bucket=sys.argv[2]):
    for o in page.get("Contents", []):
        print(o["Key"])
"#;
        let out = Command::new(python())
            .args([
                "-c",
                script,
                &self.endpoint,
                bucket,
                &self.keys.0,
                &self.keys.1,
            ])
            .output()
            .expect("run python");
        assert!(
            out.status.success(),
            "listing bucket {bucket}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut keys: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect();
        keys.sort();
        keys
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
