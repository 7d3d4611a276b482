//! The satellite's Prometheus metrics, served as text (exposition format 0.0.4) at
//! `/metrics` on the satellite's listener. They carry counts and sizes only, no names
//! and no secrets, so a scraper needs no client certificate.
//!
//! Counters live in atomics the service bumps as builds and uploads happen. The cache
//! size and the enrolled clients come from disk: walking the store on every scrape would
//! cost a big cache dearly, so they are measured at most every [`DISK_TTL`], and again
//! after a build ends or a client enrolls.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use crate::server::{Satellite, unix};

/// How long a measured cache size and client count are served before measuring again.
pub(crate) const DISK_TTL: Duration = Duration::from_secs(30);

/// How a build ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Ok,
    Failed,
    Canceled,
}

impl Outcome {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Failed => "failed",
            Outcome::Canceled => "canceled",
        }
    }
}

/// What the disk holds, as last measured.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct DiskStats {
    /// Bytes of the store's blobs and unpacked layers.
    pub(crate) cache_bytes: u64,
    /// Client names holding a certificate that is neither expired nor revoked.
    pub(crate) enrolled_clients: u32,
    /// Client certificates ever issued (renewals included).
    pub(crate) certificates: u32,
}

/// The satellite's counters.
#[derive(Default)]
pub(crate) struct Metrics {
    builds_ok: AtomicU64,
    builds_failed: AtomicU64,
    builds_canceled: AtomicU64,
    steps_running: AtomicI64,
    steps_run: AtomicU64,
    steps_cached: AtomicU64,
    steps_failed: AtomicU64,
    context_bytes: AtomicU64,
    context_files: AtomicU64,
    disk: Mutex<Option<(Instant, DiskStats)>>,
    stale: AtomicBool,
}

impl Metrics {
    pub(crate) fn build_ended(&self, outcome: Outcome) {
        match outcome {
            Outcome::Ok => &self.builds_ok,
            Outcome::Failed => &self.builds_failed,
            Outcome::Canceled => &self.builds_canceled,
        }
        .fetch_add(1, Ordering::Relaxed);
        self.invalidate();
    }

    /// A step began running (not taken from cache).
    pub(crate) fn step_started(&self) {
        self.steps_running.fetch_add(1, Ordering::Relaxed);
    }

    /// A started step ended; `failed` tells how.
    pub(crate) fn step_ended(&self, failed: bool) {
        self.steps_running.fetch_sub(1, Ordering::Relaxed);
        if failed {
            &self.steps_failed
        } else {
            &self.steps_run
        }
        .fetch_add(1, Ordering::Relaxed);
    }

    /// Steps a build left running when it ended (canceled): no longer running.
    pub(crate) fn steps_abandoned(&self, n: usize) {
        self.steps_running.fetch_sub(n as i64, Ordering::Relaxed);
    }

    pub(crate) fn step_cached(&self) {
        self.steps_cached.fetch_add(1, Ordering::Relaxed);
    }

    /// Context bytes received, counted as they arrive (a cut upload counts too).
    pub(crate) fn context_received(&self, bytes: u64) {
        self.context_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(crate) fn context_file_received(&self) {
        self.context_files.fetch_add(1, Ordering::Relaxed);
    }

    /// The disk changed (a build ended, a client enrolled): measure at the next read.
    pub(crate) fn invalidate(&self) {
        self.stale.store(true, Ordering::Relaxed);
    }

    /// The disk stats, measured again if older than [`DISK_TTL`] or invalidated. Blocking.
    pub(crate) fn disk(&self, sat: &Satellite) -> DiskStats {
        let mut slot = self.disk.lock().expect("metrics lock");
        let stale = self.stale.swap(false, Ordering::Relaxed);
        if let Some((at, stats)) = *slot
            && !stale
            && at.elapsed() < DISK_TTL
        {
            return stats;
        }
        let stats = measure(sat);
        *slot = Some((Instant::now(), stats));
        stats
    }
}

fn measure(sat: &Satellite) -> DiskStats {
    let root = &sat.inner.dirs.root;
    let cache_bytes = dir_bytes(&root.join("blobs")) + dir_bytes(&root.join("layers"));
    let clients = sat.inner.dirs.clients().unwrap_or_default();
    let revoked: Vec<String> = sat
        .inner
        .revocations
        .list()
        .map(|l| l.into_iter().map(|r| r.serial).collect())
        .unwrap_or_default();
    let now = unix(SystemTime::now());
    let mut names: Vec<&str> = clients
        .iter()
        .filter(|c| c.not_after_unix > now && !revoked.contains(&c.serial))
        .map(|c| c.name.as_str())
        .collect();
    names.sort_unstable();
    names.dedup();
    DiskStats {
        cache_bytes,
        enrolled_clients: names.len() as u32,
        certificates: clients.len() as u32,
    }
}

/// The bytes of the files under `dir` (0 if it does not exist).
pub(crate) fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// The exposition text of `sat`'s metrics. Blocking (it may measure the disk).
pub(crate) fn render(sat: &Satellite) -> String {
    let m = &sat.inner.metrics;
    let disk = m.disk(sat);
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, String)]| {
        let _ = writeln!(out, "# HELP berth_satellite_{name} {help}");
        let _ = writeln!(out, "# TYPE berth_satellite_{name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "berth_satellite_{name}{labels} {value}");
        }
    };
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed).to_string();
    metric(
        "info",
        "gauge",
        "The satellite's name and berth version.",
        &[(
            &format!(
                "{{name=\"{}\",version=\"{}\"}}",
                escape(&sat.inner.name),
                env!("CARGO_PKG_VERSION")
            ),
            "1".into(),
        )],
    );
    metric(
        "draining",
        "gauge",
        "1 while the satellite drains (SIGTERM): new builds are refused.",
        &[(
            "",
            u8::from(sat.inner.draining.load(Ordering::SeqCst)).to_string(),
        )],
    );
    metric(
        "builds_running",
        "gauge",
        "Builds running now.",
        &[("", sat.running_builds().to_string())],
    );
    metric(
        "builds_total",
        "counter",
        "Builds ended since the satellite started, by result.",
        &[
            ("{result=\"ok\"}", load(&m.builds_ok)),
            ("{result=\"failed\"}", load(&m.builds_failed)),
            ("{result=\"canceled\"}", load(&m.builds_canceled)),
        ],
    );
    metric(
        "steps_running",
        "gauge",
        "Build steps running now (cache hits never run).",
        &[(
            "",
            m.steps_running.load(Ordering::Relaxed).max(0).to_string(),
        )],
    );
    metric(
        "steps_queued",
        "gauge",
        "Build steps waiting for a slot ([builder] max_parallel_steps).",
        &[(
            "",
            sat.inner
                .step_slots
                .as_ref()
                .map_or(0, |s| s.queued())
                .to_string(),
        )],
    );
    metric(
        "steps_total",
        "counter",
        "Build steps ended since the satellite started, by how.",
        &[
            ("{result=\"ran\"}", load(&m.steps_run)),
            ("{result=\"cached\"}", load(&m.steps_cached)),
            ("{result=\"failed\"}", load(&m.steps_failed)),
        ],
    );
    metric(
        "cache_bytes",
        "gauge",
        "Bytes of the satellite's store: blobs and unpacked layers (measured at most every 30 s).",
        &[("", disk.cache_bytes.to_string())],
    );
    metric(
        "enrolled_clients",
        "gauge",
        "Clients holding a certificate that is neither expired nor revoked.",
        &[("", disk.enrolled_clients.to_string())],
    );
    metric(
        "client_certificates",
        "gauge",
        "Client certificates issued (renewals included).",
        &[("", disk.certificates.to_string())],
    );
    metric(
        "context_received_bytes_total",
        "counter",
        "Build context bytes received from clients (cut uploads included).",
        &[("", load(&m.context_bytes))],
    );
    metric(
        "context_received_files_total",
        "counter",
        "Build context files received and verified.",
        &[("", load(&m.context_files))],
    );
    out
}

/// A label value escaped for the text format.
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn disk_stats_are_kept_until_invalidated() {
        let m = Metrics::default();
        *m.disk.lock().unwrap() = Some((
            Instant::now(),
            DiskStats {
                cache_bytes: 7,
                ..Default::default()
            },
        ));
        assert!(!m.stale.load(Ordering::Relaxed));
        m.build_ended(Outcome::Ok);
        assert!(m.stale.load(Ordering::Relaxed), "a build end marks stale");
        assert_eq!(m.builds_ok.load(Ordering::Relaxed), 1);
    }
}
