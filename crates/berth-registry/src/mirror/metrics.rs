//! The pull-through cache's counters, in Prometheus' text format (0.0.4) at `/metrics`
//! of the registry: counts only, labelled with the mirror's prefix and upstream URL.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use super::Mirrors;

/// One mirror's counters.
pub(crate) struct Counters {
    /// Requests answered from the cache (stale ones included).
    pub(crate) hits: AtomicU64,
    /// Requests that needed the upstream.
    pub(crate) misses: AtomicU64,
    /// Blob GETs sent upstream (one per flight, whatever the number of clients).
    pub(crate) blob_fetches: AtomicU64,
    /// Manifest GETs sent upstream.
    pub(crate) manifest_fetches: AtomicU64,
    /// Tag HEADs sent upstream after the TTL.
    pub(crate) revalidations: AtomicU64,
    /// Tags served stale because the upstream failed or rate-limited.
    pub(crate) stale: AtomicU64,
    /// Upstream failures (transport, 4xx/5xx, bad content).
    pub(crate) upstream_errors: AtomicU64,
    /// Bytes received from the upstream.
    pub(crate) upstream_bytes: AtomicU64,
    /// Bytes of blobs sent to clients while fetched.
    pub(crate) served_bytes: AtomicU64,
    /// The upstream's `ratelimit-remaining`, `u64::MAX` until it says.
    pub(crate) rate_limit_remaining: AtomicU64,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            blob_fetches: AtomicU64::new(0),
            manifest_fetches: AtomicU64::new(0),
            revalidations: AtomicU64::new(0),
            stale: AtomicU64::new(0),
            upstream_errors: AtomicU64::new(0),
            upstream_bytes: AtomicU64::new(0),
            served_bytes: AtomicU64::new(0),
            rate_limit_remaining: AtomicU64::new(u64::MAX),
        }
    }
}

/// The metrics text.
pub(crate) fn render(mirrors: Option<&Mirrors>) -> String {
    let mut out = String::new();
    let Some(mirrors) = mirrors else {
        return out;
    };
    type Pick = fn(&Counters) -> &AtomicU64;
    let counters: [(&str, &str, Pick); 9] = [
        ("hits_total", "requests answered from the cache", |c| {
            &c.hits
        }),
        ("misses_total", "requests that needed the upstream", |c| {
            &c.misses
        }),
        (
            "upstream_blob_fetches_total",
            "blob GETs sent upstream (one per blob for any number of concurrent clients)",
            |c| &c.blob_fetches,
        ),
        (
            "upstream_manifest_fetches_total",
            "manifest GETs sent upstream",
            |c| &c.manifest_fetches,
        ),
        (
            "revalidations_total",
            "tag HEADs sent upstream after the tag TTL",
            |c| &c.revalidations,
        ),
        (
            "stale_served_total",
            "cached tags served stale while the upstream failed or rate-limited",
            |c| &c.stale,
        ),
        ("upstream_errors_total", "upstream failures", |c| {
            &c.upstream_errors
        }),
        (
            "upstream_bytes_total",
            "bytes received from the upstream",
            |c| &c.upstream_bytes,
        ),
        (
            "streamed_bytes_total",
            "blob bytes sent to clients while being fetched",
            |c| &c.served_bytes,
        ),
    ];
    for (name, help, pick) in counters {
        let _ = writeln!(out, "# HELP berth_mirror_{name} {help}");
        let _ = writeln!(out, "# TYPE berth_mirror_{name} counter");
        for m in &mirrors.list {
            let _ = writeln!(
                out,
                "berth_mirror_{name}{{mirror=\"{}\",upstream=\"{}\"}} {}",
                m.config.prefix,
                m.config.upstream.url,
                pick(&m.counters).load(Ordering::Relaxed)
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP berth_mirror_rate_limit_remaining requests the upstream's rate limit has left (Docker Hub's ratelimit-remaining), when it said"
    );
    let _ = writeln!(out, "# TYPE berth_mirror_rate_limit_remaining gauge");
    for m in &mirrors.list {
        let r = m.counters.rate_limit_remaining.load(Ordering::Relaxed);
        if r != u64::MAX {
            let _ = writeln!(
                out,
                "berth_mirror_rate_limit_remaining{{mirror=\"{}\",upstream=\"{}\"}} {r}",
                m.config.prefix, m.config.upstream.url
            );
        }
    }
    if let Some(cache) = mirrors.cache_bytes() {
        let _ = writeln!(
            out,
            "# HELP berth_mirror_cache_bytes size of the pull-through cache as last measured, plus blobs fetched since"
        );
        let _ = writeln!(out, "# TYPE berth_mirror_cache_bytes gauge");
        let _ = writeln!(out, "berth_mirror_cache_bytes {cache}");
    }
    if let Some(max) = mirrors.max_bytes {
        let _ = writeln!(
            out,
            "# HELP berth_mirror_cache_max_bytes the cache's size cap (mirror_max_size)"
        );
        let _ = writeln!(out, "# TYPE berth_mirror_cache_max_bytes gauge");
        let _ = writeln!(out, "berth_mirror_cache_max_bytes {max}");
    }
    let _ = writeln!(
        out,
        "# HELP berth_mirror_evicted_blobs_total blobs evicted to keep the cache under its cap"
    );
    let _ = writeln!(out, "# TYPE berth_mirror_evicted_blobs_total counter");
    let _ = writeln!(
        out,
        "berth_mirror_evicted_blobs_total {}",
        mirrors.evicted_blobs.load(Ordering::Relaxed)
    );
    out
}
