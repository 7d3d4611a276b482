//! The satellite's own configuration: `berth satellite serve --config FILE`, or the same
//! TOML inline in `BERTH_SATELLITE_CONFIG` (for containers, where a file is one more
//! mount to arrange).
//!
//! ```toml
//! [builder]
//! allow = ["network.host"]            # entitlements builds may ask for (with --allow);
//!                                     # "security.insecure" lets them run privileged steps
//!
//! [network]                           # the satellite's own pulls and pushes, and RUN
//! http_proxy = "http://proxy.corp:3128"   # steps' proxy variables (never cache keys)
//! https_proxy = "http://proxy.corp:3128"
//! no_proxy = ["10.0.0.0/8", ".corp.example", "registry.corp:5000"]
//! ca = ["/etc/ssl/corp-root.pem"]
//!
//! [registries."docker.io"]
//! mirrors = ["mirror.corp:5000"]      # FROM pulls try these in order, then docker.io
//!
//! [registries."mirror.corp:5000"]
//! ca = "/etc/ssl/mirror-ca.pem"       # or insecure = true, or http = true
//! ```
//!
//! The keys of `[network]` and `[registries]` are those of berth's config.toml, so one
//! company network is described the same way on laptops and satellites. Unknown keys are
//! errors naming the key, where it is and the file (or the variable): a misspelt
//! `mirors` must not silently leave a satellite pulling from Docker Hub.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::{Path, PathBuf};

use berth_build::Entitlement;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::SatError;

/// The variable holding the configuration inline.
pub const CONFIG_ENV: &str = "BERTH_SATELLITE_CONFIG";

/// A satellite's configuration, as read.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SatelliteConfig {
    /// `[builder]`: what builds may do.
    #[serde(default, skip_serializing_if = "BuilderConfig::is_empty")]
    pub builder: BuilderConfig,
    /// `[network]`: proxies and CAs.
    #[serde(default, skip_serializing_if = "NetworkConfig::is_empty")]
    pub network: NetworkConfig,
    /// `[registries."host:port"]`: how to reach each registry, and its mirrors.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub registries: BTreeMap<String, RegistryConfig>,
}

/// `[builder]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuilderConfig {
    /// Entitlements builds may ask for (`network.host`), besides `--allow`.
    #[serde(
        default,
        deserialize_with = "entitlements",
        serialize_with = "entitlement_names",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub allow: Vec<Entitlement>,
    /// Steps (RUN, COPY, ADD) running at once across all builds; none: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_parallel_steps: Option<usize>,
    /// Build cache kept (bytes); after a build, when no build runs, the least recently
    /// used cache goes until it fits. None: no cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_max_bytes: Option<u64>,
    /// Cache unused for longer than this goes after builds (`12h`, `7d`; s, m, h, d).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_keep: Option<String>,
}

impl BuilderConfig {
    /// `cache_keep` as a duration (checked when the config is read).
    pub fn cache_keep(&self) -> Option<std::time::Duration> {
        self.cache_keep
            .as_deref()
            .and_then(|s| parse_duration(s).ok())
    }
}

/// `30s`, `15m`, `12h`, `7d`.
fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 12h or 7d"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        _ => return Err(format!("{s:?}: the unit must be s, m, h or d")),
    };
    Ok(std::time::Duration::from_secs(secs))
}

impl BuilderConfig {
    fn is_empty(&self) -> bool {
        *self == BuilderConfig::default()
    }
}

/// `[network]`, as in berth's config.toml: proxies set here win over the satellite's
/// environment; `no_proxy` adds to the environment's NO_PROXY.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    /// Proxy for http:// URLs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_proxy: Option<String>,
    /// Proxy for https:// URLs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub https_proxy: Option<String>,
    /// Hosts, `.suffixes`, CIDRs, `host:port` or `*` reached directly.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub no_proxy: Vec<String>,
    /// PEM bundles trusted besides the system's roots, for every registry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ca: Vec<PathBuf>,
    /// RUN steps see the host's roots and `ca` (mounted read-only, never in a layer).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ca_to_steps: bool,
}

impl NetworkConfig {
    fn is_empty(&self) -> bool {
        *self == NetworkConfig::default()
    }
}

/// `[registries."host:port"]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// Extra CA certificate (PEM) trusted for this registry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// Do not verify its TLS certificate.
    #[serde(default, skip_serializing_if = "is_false")]
    pub insecure: bool,
    /// Speak plain HTTP to it.
    #[serde(default, skip_serializing_if = "is_false")]
    pub http: bool,
    /// Registries (`host[:port]`) holding copies of its images, tried in order before it.
    #[serde(
        default,
        deserialize_with = "mirrors",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub mirrors: Vec<String>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn entitlements<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Entitlement>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|s| s.parse().map_err(serde::de::Error::custom))
        .collect()
}

fn entitlement_names<S: Serializer>(v: &[Entitlement], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(|e| e.name()))
}

fn mirrors<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|m| berth_client::check_mirror(m).map_err(serde::de::Error::custom))
        .collect()
}

impl SatelliteConfig {
    /// Parses `text`; `source` names where it came from in errors (a path, or
    /// [`CONFIG_ENV`]). An error names the dotted key and its line.
    pub fn parse(text: &str, source: &str) -> Result<SatelliteConfig, SatError> {
        let e = match toml::from_str::<SatelliteConfig>(text) {
            Ok(c) => {
                c.check(source)?;
                return Ok(c);
            }
            Err(e) => e,
        };
        let message = e.message().trim_end().to_owned();
        let Some(span) = e.span() else {
            return Err(SatError::BadRequest(format!(
                "satellite config {source} is not valid: {message}"
            )));
        };
        let before = text.get(..span.start).unwrap_or(text);
        let line = before.matches('\n').count() + 1;
        let key = toml::de::DeTable::parse(text)
            .ok()
            .and_then(|doc| key_path(doc.get_ref(), &span));
        let at = match key {
            Some(k) => format!("{k} (line {line})"),
            None => format!("line {line}"),
        };
        Err(SatError::BadRequest(format!(
            "satellite config {source} is not valid: {at}: {message}"
        )))
    }

    /// Reads the configuration from `file` (`--config`) or `inline` (the value of
    /// [`CONFIG_ENV`]); neither gives the defaults. Both at once is refused: which one
    /// wins would be a guess.
    pub fn load(file: Option<&Path>, inline: Option<&str>) -> Result<SatelliteConfig, SatError> {
        match (file, inline.filter(|s| !s.trim().is_empty())) {
            (Some(p), Some(_)) => Err(SatError::BadRequest(format!(
                "both --config {} and {CONFIG_ENV} are set; give the configuration one way",
                p.display()
            ))),
            (Some(p), None) => {
                let text = std::fs::read_to_string(p).map_err(|e| {
                    SatError::BadRequest(format!("read satellite config {}: {e}", p.display()))
                })?;
                SatelliteConfig::parse(&text, &p.display().to_string())
            }
            (None, Some(text)) => SatelliteConfig::parse(text, CONFIG_ENV),
            (None, None) => Ok(SatelliteConfig::default()),
        }
    }

    /// Checks what serde cannot: registry names.
    fn check(&self, source: &str) -> Result<(), SatError> {
        if let Some(keep) = &self.builder.cache_keep {
            parse_duration(keep).map_err(|e| {
                SatError::BadRequest(format!(
                    "satellite config {source} is not valid: builder.cache_keep: {e}"
                ))
            })?;
        }
        for host in self.registries.keys() {
            berth_client::check_mirror(host).map_err(|_| {
                SatError::BadRequest(format!(
                    "satellite config {source} is not valid: registries.{host:?}: a registry \
                     is named host[:port] (e.g. \"docker.io\", \"registry.corp:5000\")"
                ))
            })?;
        }
        Ok(())
    }

    /// The satellite's network settings: `env`'s proxies (`HTTP_PROXY`, `NO_PROXY`, either
    /// case) with `[network]` on top (proxies win, NO_PROXY lists merge).
    pub fn network_with(&self, env: &dyn Fn(&str) -> Option<String>) -> berth_net::Network {
        let n = &self.network;
        berth_net::Network {
            proxies: berth_net::Proxies::from_env_with(env).merge(
                n.http_proxy.as_deref(),
                n.https_proxy.as_deref(),
                &n.no_proxy,
            ),
            ca_bundles: n.ca.clone(),
            ca_to_steps: n.ca_to_steps,
        }
    }

    /// [`SatelliteConfig::network_with`] the process environment.
    pub fn network(&self) -> berth_net::Network {
        self.network_with(&|k| std::env::var(k).ok())
    }

    /// Per-registry client settings from `[registries]`.
    pub fn hosts(&self) -> HashMap<String, berth_client::HostOptions> {
        self.registries
            .iter()
            .map(|(host, r)| {
                (
                    host.clone(),
                    berth_client::HostOptions {
                        ca: r.ca.clone(),
                        insecure: r.insecure,
                        http: r.http,
                        tls: None,
                        mirrors: r.mirrors.clone(),
                    },
                )
            })
            .collect()
    }

    /// As TOML, for `--import-buildkitd-toml`.
    pub fn to_toml(&self) -> String {
        let mut text = toml::to_string(self).expect("a satellite config serialises");
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text
    }
}

/// What [`import_buildkitd`] made of a buildkitd.toml.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Imported {
    /// The equivalent satellite configuration.
    pub config: SatelliteConfig,
    /// Every key with no equivalent: its dotted name and why (sections in key order).
    pub unmapped: Vec<(String, String)>,
}

const NO_GC: &str = "set `cache_max_bytes` under [builder] (the cache is trimmed to it \
                     after builds), or run `berth prune --keep-storage SIZE`";

/// Reads a BuildKit `buildkitd.toml` and maps what has a satellite equivalent:
/// `insecure-entitlements` to `[builder] allow`, and `[registry."host"]` (`mirrors`,
/// `http`, `insecure`, `ca`) to `[registries."host"]`. A mirror's own `http` or `ca` is
/// in its own entry, in BuildKit as in berth. Everything else is listed in
/// [`Imported::unmapped`] with the reason, one leaf key a line, so nothing is dropped
/// silently.
pub fn import_buildkitd(text: &str, source: &str) -> Result<Imported, SatError> {
    let doc: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        SatError::BadRequest(format!(
            "buildkitd config {source} is not TOML: {}",
            e.to_string().trim_end()
        ))
    })?;
    let mut out = Imported::default();
    for (key, value) in &doc {
        match key.as_str() {
            "insecure-entitlements" => import_entitlements(value, &mut out),
            "registry" => match value {
                toml::Value::Table(hosts) => {
                    for (host, v) in hosts {
                        import_registry(host, v, &mut out);
                    }
                }
                v => unmapped(&mut out, "registry", v, "expected a table of registries"),
            },
            "worker" => match value {
                toml::Value::Table(workers) => {
                    for (name, v) in workers {
                        let path = format!("worker.{}", quoted(name));
                        if name == "oci" {
                            import_oci_worker(&path, v, &mut out);
                        } else {
                            unmapped(
                                &mut out,
                                &path,
                                v,
                                "berth runs build steps with runc itself: there is no \
                                 containerd or other worker",
                            );
                        }
                    }
                }
                v => unmapped(&mut out, "worker", v, "expected a table of workers"),
            },
            other => {
                let why = match other {
                    "root" => "the satellite's data root is --root (or BERTH_ROOT)",
                    "debug" | "trace" | "log" => {
                        "logging is set with BERTH_LOG (a level filter such as `debug`) and \
                         BERTH_LOG_FORMAT=json"
                    }
                    "grpc" => {
                        "a satellite listens on --addr with mutual TLS it sets up itself \
                         (its own CA; clients enroll with a token)"
                    }
                    "dns" => "RUN steps use the satellite's own resolver configuration",
                    _ => "berth has no equivalent",
                };
                unmapped(&mut out, &quoted(other), value, why);
            }
        }
    }
    Ok(out)
}

fn import_entitlements(value: &toml::Value, out: &mut Imported) {
    let Some(items) = value.as_array() else {
        return unmapped(out, "insecure-entitlements", value, "expected a list");
    };
    for (i, item) in items.iter().enumerate() {
        match item.as_str().map(str::parse::<Entitlement>) {
            Some(Ok(e)) if !out.config.builder.allow.contains(&e) => {
                out.config.builder.allow.push(e)
            }
            Some(Ok(_)) => {}
            Some(Err(_)) => out.unmapped.push((
                format!("insecure-entitlements[{i}]"),
                format!(
                    "{item}: berth grants only {}",
                    Entitlement::ALL.map(|(n, _)| n).join(", ")
                ),
            )),
            None => unmapped(
                out,
                &format!("insecure-entitlements[{i}]"),
                item,
                "expected a string",
            ),
        }
    }
}

fn import_registry(host: &str, value: &toml::Value, out: &mut Imported) {
    let path = format!("registry.{}", quoted(host));
    let Some(table) = value.as_table() else {
        return unmapped(out, &path, value, "expected a table");
    };
    if berth_client::check_mirror(host).is_err() {
        return unmapped(
            out,
            &path,
            value,
            "not a registry host[:port] as berth names registries",
        );
    }
    let mut reg = RegistryConfig::default();
    for (key, v) in table {
        let at = format!("{path}.{}", quoted(key));
        match (key.as_str(), v) {
            ("http", toml::Value::Boolean(b)) => reg.http = *b,
            ("insecure", toml::Value::Boolean(b)) => reg.insecure = *b,
            ("mirrors", toml::Value::Array(items)) => {
                for (i, m) in items.iter().enumerate() {
                    match m.as_str().map(berth_client::check_mirror) {
                        Some(Ok(m)) => reg.mirrors.push(m),
                        Some(Err(why)) => out.unmapped.push((format!("{at}[{i}]"), why)),
                        None => unmapped(out, &format!("{at}[{i}]"), m, "expected a string"),
                    }
                }
            }
            ("ca", toml::Value::Array(items)) => {
                for (i, c) in items.iter().enumerate() {
                    match c.as_str() {
                        Some(c) if reg.ca.is_none() => reg.ca = Some(PathBuf::from(c)),
                        Some(_) => out.unmapped.push((
                            format!("{at}[{i}]"),
                            "berth takes one CA file per registry: concatenate the PEM files \
                             into the first one"
                                .into(),
                        )),
                        None => unmapped(out, &format!("{at}[{i}]"), c, "expected a path"),
                    }
                }
            }
            ("ca", toml::Value::String(c)) => reg.ca = Some(PathBuf::from(c)),
            ("keypair", v) => unmapped(
                out,
                &at,
                v,
                "berth does not present client certificates to registries",
            ),
            (_, v) => unmapped(out, &at, v, "berth has no equivalent"),
        }
    }
    if reg != RegistryConfig::default() {
        out.config.registries.insert(host.to_owned(), reg);
    }
}

fn import_oci_worker(path: &str, value: &toml::Value, out: &mut Imported) {
    let Some(table) = value.as_table() else {
        return unmapped(out, path, value, "expected a table");
    };
    for (key, v) in table {
        let at = format!("{path}.{}", quoted(key));
        let why = match key.as_str() {
            // Steps run on the satellite's runc worker in any case: nothing to carry.
            "enabled" if v.as_bool() == Some(true) => continue,
            "enabled" => "a satellite always builds with runc",
            // BuildKit's keep-storage: bytes, or a size with a unit ("512MB", "10GB").
            "gckeepstorage" => match disk_bytes(v) {
                Some(n) => {
                    out.config.builder.cache_max_bytes = Some(n);
                    continue;
                }
                None => {
                    "only a number of bytes or a size such as \"10GB\" maps to \
                         [builder] cache_max_bytes (not a percentage)"
                }
            },
            "gcpolicy" => {
                import_gc_policies(&at, v, out);
                continue;
            }
            "gc" | "reservedSpace" | "maxUsedSpace" | "minFreeSpace" => NO_GC,
            "max-parallelism" => match v.as_integer().filter(|n| *n > 0) {
                Some(n) => {
                    out.config.builder.max_parallel_steps = Some(n as usize);
                    continue;
                }
                None => "expected a positive number",
            },
            "platforms" => "berth builds for the satellite's own platform only",
            "snapshotter" => "berth always uses overlayfs",
            "binary" => "berth runs runc (found on PATH)",
            "rootless" | "noProcessSandbox" => "a satellite runs as root",
            _ => "berth has no equivalent",
        };
        unmapped(out, &at, v, why);
    }
}

/// `[[worker.oci.gcpolicy]]`: a policy without `filters` applies to the whole cache, as
/// berth's limits do: its `keepBytes` maps to `cache_max_bytes` and its `keepDuration` to
/// `cache_keep` (the strictest wins when several do). A filtered policy has no equivalent.
fn import_gc_policies(path: &str, value: &toml::Value, out: &mut Imported) {
    let Some(policies) = value.as_array() else {
        return unmapped(out, path, value, "expected a list of tables");
    };
    for (i, policy) in policies.iter().enumerate() {
        let at = format!("{path}[{i}]");
        let Some(table) = policy.as_table() else {
            unmapped(out, &at, policy, "expected a table");
            continue;
        };
        if table
            .get("filters")
            .is_some_and(|f| f.as_array().is_none_or(|a| !a.is_empty()))
        {
            unmapped(
                out,
                &at,
                policy,
                "berth's cache limits apply to the whole cache, not to filtered records; \
                 an unfiltered policy (or [builder] cache_max_bytes / cache_keep) sets them",
            );
            continue;
        }
        for (key, v) in table {
            let key_at = format!("{at}.{}", quoted(key));
            match key.as_str() {
                "all" | "filters" => {}
                "keepBytes" => match disk_bytes(v) {
                    Some(n) => {
                        let cap = &mut out.config.builder.cache_max_bytes;
                        *cap = Some(cap.map_or(n, |c| c.min(n)));
                    }
                    None => unmapped(out, &key_at, v, "expected bytes or a size such as \"10GB\""),
                },
                "keepDuration" => match go_duration_secs(v) {
                    Some(secs) => {
                        let keep = &mut out.config.builder.cache_keep;
                        let old = keep.as_deref().and_then(|k| parse_duration(k).ok());
                        if old.is_none_or(|o| secs < o.as_secs()) {
                            *keep = Some(format!("{secs}s"));
                        }
                    }
                    None => unmapped(
                        out,
                        &key_at,
                        v,
                        "expected seconds or a duration such as \"48h\" or \"1h30m\"",
                    ),
                },
                _ => unmapped(out, &key_at, v, NO_GC),
            }
        }
    }
}

/// BuildKit's keepDuration: an integer of seconds, or a Go duration of h, m and s parts
/// (`48h`, `1h30m`, `90s`).
fn go_duration_secs(v: &toml::Value) -> Option<u64> {
    if let Some(n) = v.as_integer() {
        return u64::try_from(n).ok();
    }
    let mut rest = v.as_str()?.trim();
    let mut total = 0u64;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        let n: u64 = rest[..digits].parse().ok()?;
        let unit = match &rest[digits..digits + 1] {
            "h" => 3600,
            "m" => 60,
            "s" => 1,
            _ => return None,
        };
        total = total.checked_add(n.checked_mul(unit)?)?;
        rest = &rest[digits + 1..];
    }
    Some(total)
}

/// A BuildKit disk size: an integer of bytes, or a string with a decimal or binary unit.
fn disk_bytes(v: &toml::Value) -> Option<u64> {
    if let Some(n) = v.as_integer() {
        return u64::try_from(n).ok();
    }
    let t = v.as_str()?.trim();
    let split = t.find(|c: char| !c.is_ascii_digit())?;
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit.trim().to_ascii_uppercase().as_str() {
        "B" => 1,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        "KIB" => 1 << 10,
        "MIB" => 1 << 20,
        "GIB" => 1 << 30,
        "TIB" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// Records every leaf key under `path` (tables and arrays of tables walked) as unmapped.
fn unmapped(out: &mut Imported, path: &str, value: &toml::Value, why: &str) {
    match value {
        toml::Value::Table(t) if !t.is_empty() => {
            for (k, v) in t {
                unmapped(out, &format!("{path}.{}", quoted(k)), v, why);
            }
        }
        toml::Value::Array(items) if !items.is_empty() && items.iter().all(|i| i.is_table()) => {
            for (i, v) in items.iter().enumerate() {
                unmapped(out, &format!("{path}[{i}]"), v, why);
            }
        }
        _ => out.unmapped.push((path.to_owned(), why.to_owned())),
    }
}

/// The dotted key (`registries."host:5000".mirrors`) whose name or value holds `span`.
fn key_path(table: &toml::de::DeTable, span: &Range<usize>) -> Option<String> {
    let holds = |r: Range<usize>| r.start <= span.start && span.end <= r.end;
    table.iter().find_map(|(k, v)| {
        let name = quoted(k.get_ref());
        if holds(k.span()) {
            return Some(name);
        }
        match v.get_ref() {
            // A `[section]`'s span is its header only: look inside in any case.
            toml::de::DeValue::Table(t) => match key_path(t, span) {
                Some(rest) => Some(format!("{name}.{rest}")),
                None => holds(v.span()).then_some(name),
            },
            _ => holds(v.span()).then_some(name),
        }
    })
}

fn quoted(k: &str) -> String {
    if !k.is_empty()
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        k.to_owned()
    } else {
        format!("{k:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"
[builder]
allow = ["network.host"]

[network]
http_proxy = "http://proxy.corp:3128"
https_proxy = "http://proxy.corp:3128"
no_proxy = ["10.0.0.0/8", ".corp.example"]
ca = ["/etc/ssl/corp.pem"]

[registries."docker.io"]
mirrors = ["mirror.corp:5000", "127.0.0.1:5001"]

[registries."mirror.corp:5000"]
ca = "/etc/ssl/mirror.pem"

[registries."127.0.0.1:5001"]
http = true
insecure = false
"#;

    #[test]
    fn every_section_is_read() {
        let c = SatelliteConfig::parse(FULL, "sat.toml").unwrap();
        assert_eq!(c.builder.allow, [Entitlement::NetworkHost]);
        let hosts = c.hosts();
        assert_eq!(
            hosts["docker.io"].mirrors,
            ["mirror.corp:5000", "127.0.0.1:5001"]
        );
        assert_eq!(
            hosts["mirror.corp:5000"].ca.as_deref(),
            Some(Path::new("/etc/ssl/mirror.pem"))
        );
        assert!(hosts["127.0.0.1:5001"].http && !hosts["127.0.0.1:5001"].insecure);

        // The environment's NO_PROXY merges with the file's; the file's proxy wins.
        let net = c.network_with(&|k| match k {
            "HTTPS_PROXY" => Some("http://env:1".into()),
            "no_proxy" => Some("localhost".into()),
            _ => None,
        });
        assert_eq!(net.proxies.https.as_deref(), Some("http://proxy.corp:3128"));
        assert_eq!(
            net.proxies.no_proxy.entries(),
            ["localhost", "10.0.0.0/8", ".corp.example"]
        );
        assert_eq!(net.ca_bundles, [PathBuf::from("/etc/ssl/corp.pem")]);
        assert!(
            net.proxies
                .step_env()
                .contains(&"http_proxy=http://proxy.corp:3128".to_string())
        );

        // What `to_toml` prints reads back the same.
        let again = SatelliteConfig::parse(&c.to_toml(), "printed").unwrap();
        assert_eq!(again, c);
        assert_eq!(
            SatelliteConfig::parse("", "x").unwrap(),
            SatelliteConfig::default()
        );
    }

    #[test]
    fn errors_name_the_key_the_line_and_the_source() {
        for (text, source, says) in [
            (
                "[builder]\nalow = [\"network.host\"]\n",
                "/etc/berth/satellite.toml",
                "builder.alow (line 2): unknown field `alow`",
            ),
            (
                "[registries.\"docker.io\"]\nmirors = [\"m:5000\"]\n",
                CONFIG_ENV,
                "registries.\"docker.io\".mirors (line 2): unknown field `mirors`",
            ),
            (
                "[registries.\"docker.io\"]\nmirrors = [\"https://m:5000\"]\n",
                "s.toml",
                "registries.\"docker.io\".mirrors (line 2): mirror \"https://m:5000\": give host[:port] without https://",
            ),
            (
                "[network]\nno_proxy = \"a,b\"\n",
                "s.toml",
                "network.no_proxy (line 2): invalid type: string",
            ),
            (
                "\n[builder]\nallow = [\"security.everything\"]\n",
                "s.toml",
                "builder.allow (line 3): unknown entitlement \"security.everything\"",
            ),
            ("[netwrk]\n", "s.toml", "netwrk (line 1): unknown field"),
            (
                "[registries.\"http://r\"]\nhttp = true\n",
                "s.toml",
                "registries.\"http://r\": a registry is named host[:port]",
            ),
        ] {
            let e = SatelliteConfig::parse(text, source)
                .unwrap_err()
                .to_string();
            assert!(
                e.starts_with(&format!("satellite config {source} is not valid: ")),
                "{e}"
            );
            assert!(e.contains(says), "want {says:?} in: {e}");
        }
    }

    #[test]
    fn cache_keep_is_a_duration() {
        let c = SatelliteConfig::parse("[builder]\ncache_keep = \"7d\"\n", "test").unwrap();
        assert_eq!(
            c.builder.cache_keep(),
            Some(std::time::Duration::from_secs(7 * 86400))
        );
        let e = SatelliteConfig::parse("[builder]\ncache_keep = \"7 days\"\n", "test")
            .unwrap_err()
            .to_string();
        assert!(e.contains("builder.cache_keep"), "{e}");
    }

    #[test]
    fn a_file_or_the_variable_not_both() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sat.toml");
        std::fs::write(&file, "[builder]\nallow = [\"network.host\"]\n").unwrap();
        let c = SatelliteConfig::load(Some(&file), None).unwrap();
        assert_eq!(c.builder.allow, [Entitlement::NetworkHost]);
        let c = SatelliteConfig::load(None, Some("[network]\nno_proxy = [\"x\"]")).unwrap();
        assert_eq!(c.network.no_proxy, ["x"]);
        assert_eq!(
            SatelliteConfig::load(None, Some("  ")).unwrap(),
            SatelliteConfig::default()
        );
        let e = SatelliteConfig::load(Some(&file), Some("[builder]"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("both --config") && e.contains(CONFIG_ENV), "{e}");
        let e = SatelliteConfig::load(Some(&dir.path().join("none.toml")), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("none.toml"), "{e}");
    }

    /// A buildkitd.toml as a company runs it: mirrors for Docker Hub, a private registry
    /// with its own CA, GC settings, and the keys people copy from BuildKit's example.
    const BUILDKITD: &str = r#"
root = "/var/lib/buildkit"
debug = true
insecure-entitlements = ["network.host", "security.insecure"]

[log]
  format = "json"

[grpc]
  address = ["tcp://0.0.0.0:1234"]
  [grpc.tls]
    cert = "/etc/buildkit/tls.crt"

[worker.oci]
  enabled = true
  snapshotter = "overlayfs"
  gc = true
  gckeepstorage = "80%"
  max-parallelism = 4

  [[worker.oci.gcpolicy]]
    keepBytes = "10GB"
    keepDuration = "48h"
    filters = ["type==source.local", "type==exec.cachemount"]
  [[worker.oci.gcpolicy]]
    all = true
    keepBytes = "50GB"

[worker.containerd]
  enabled = false

[registry."docker.io"]
  mirrors = ["mirror.corp.example:5000", "harbor.corp.example/proxy.docker.io"]

[registry."mirror.corp.example:5000"]
  http = true

[registry."registry.corp.example"]
  ca = ["/etc/ssl/corp-root.pem", "/etc/ssl/corp-intermediate.pem"]
  insecure = false
  [[registry."registry.corp.example".keypair]]
    key = "/etc/buildkit/client.key"
    cert = "/etc/buildkit/client.crt"
"#;

    #[test]
    fn unfiltered_gc_policies_map_to_the_cache_limits_the_strictest_winning() {
        let toml = "[worker.oci]\n\
                    [[worker.oci.gcpolicy]]\nkeepDuration = \"1h30m\"\nkeepBytes = 2000000\n\
                    [[worker.oci.gcpolicy]]\nall = true\nkeepDuration = 172800\nkeepBytes = \"1GB\"\n\
                    [[worker.oci.gcpolicy]]\nkeepDuration = \"2 days\"\nminFreeSpace = \"5GB\"\n";
        let imported = import_buildkitd(toml, "bk.toml").unwrap();
        let b = &imported.config.builder;
        assert_eq!(b.cache_keep.as_deref(), Some("5400s"));
        assert_eq!(b.cache_keep(), Some(std::time::Duration::from_secs(5400)));
        assert_eq!(b.cache_max_bytes, Some(2_000_000));
        let keys: Vec<&str> = imported.unmapped.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "worker.oci.gcpolicy[2].keepDuration",
                "worker.oci.gcpolicy[2].minFreeSpace"
            ]
        );
        assert_eq!(go_duration_secs(&toml::Value::from("48h")), Some(172_800));
        assert_eq!(go_duration_secs(&toml::Value::from("1h1m1s")), Some(3661));
        assert_eq!(go_duration_secs(&toml::Value::from("10ms")), None);
        assert_eq!(go_duration_secs(&toml::Value::from("")), None);
    }

    #[test]
    fn buildkitd_toml_maps_registries_and_entitlements_and_lists_the_rest() {
        let imported = import_buildkitd(BUILDKITD, "buildkitd.toml").unwrap();
        let c = &imported.config;
        assert_eq!(
            c.builder.allow,
            [Entitlement::NetworkHost, Entitlement::SecurityInsecure]
        );
        assert_eq!(c.builder.max_parallel_steps, Some(4));
        // gckeepstorage's percentage does not map; the unfiltered policy's keepBytes does.
        assert_eq!(c.builder.cache_max_bytes, Some(50_000_000_000));
        assert_eq!(
            c.builder.cache_keep, None,
            "the only keepDuration is filtered"
        );
        assert_eq!(
            c.registries["docker.io"].mirrors,
            ["mirror.corp.example:5000"]
        );
        assert!(c.registries["mirror.corp.example:5000"].http);
        let corp = &c.registries["registry.corp.example"];
        assert_eq!(
            corp.ca.as_deref(),
            Some(Path::new("/etc/ssl/corp-root.pem"))
        );
        assert!(!corp.insecure);
        assert_eq!(c.registries.len(), 3);

        let unmapped: BTreeMap<&str, &str> = imported
            .unmapped
            .iter()
            .map(|(k, w)| (k.as_str(), w.as_str()))
            .collect();
        for (key, why) in [
            ("root", "--root"),
            ("debug", "BERTH_LOG"),
            ("log.format", "BERTH_LOG"),
            ("grpc.address", "mutual TLS"),
            ("grpc.tls.cert", "mutual TLS"),
            ("worker.oci.snapshotter", "overlayfs"),
            ("worker.oci.gc", "cache_max_bytes"),
            ("worker.oci.gcpolicy[0].keepDuration", "filtered records"),
            ("worker.oci.gcpolicy[0].filters", "filtered records"),
            ("worker.containerd.enabled", "runc itself"),
            (
                "registry.\"docker.io\".mirrors[1]",
                "paths on mirrors are not supported",
            ),
            (
                "registry.\"registry.corp.example\".ca[1]",
                "one CA file per registry",
            ),
            (
                "registry.\"registry.corp.example\".keypair[0].key",
                "client certificates",
            ),
        ] {
            let got = unmapped
                .get(key)
                .unwrap_or_else(|| panic!("{key} not listed in {unmapped:#?}"));
            assert!(got.contains(why), "{key}: {got}");
        }
        // Mapped keys are not listed; `enabled = true` of the OCI worker needs nothing.
        for key in [
            "worker.oci.enabled",
            "registry.\"docker.io\".mirrors[0]",
            "registry.\"mirror.corp.example:5000\".http",
            "insecure-entitlements[0]",
            "insecure-entitlements[1]",
            "worker.oci.gcpolicy[1].all",
            "worker.oci.gcpolicy[1].keepBytes",
        ] {
            assert!(!unmapped.contains_key(key), "{key} listed");
        }
        assert_eq!(unmapped.len(), imported.unmapped.len(), "one line a key");

        // What is printed is a configuration `serve` accepts, equal to the import.
        let printed = c.to_toml();
        assert_eq!(SatelliteConfig::parse(&printed, "printed").unwrap(), *c);
        assert!(printed.contains("[registries.\"docker.io\"]"), "{printed}");

        let e = import_buildkitd("[registry\n", "bk.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("buildkitd config bk.toml is not TOML"), "{e}");
    }
}
