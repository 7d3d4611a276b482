//! `berth config show`: every setting [`Settings`] resolves, its effective value and
//! where it came from (a flag, an environment variable, config.toml, or the default).
//!
//! A child module of `settings`, so it reads the parsed file as it is; the precedence it
//! reports is the one the resolving functions apply (flag, then env, then file, then
//! default; NO_PROXY entries merged from all).

use std::path::Path;

use super::Settings;

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Built in.
    Default,
    /// config.toml.
    File(String),
    /// An environment variable.
    Env(String),
    /// A command-line flag.
    Flag(String),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Default => f.write_str("default"),
            Source::File(p) => write!(f, "file {p}"),
            Source::Env(v) => write!(f, "env {v}"),
            Source::Flag(n) => write!(f, "flag {n}"),
        }
    }
}

/// One effective setting.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Dotted key as in config.toml (`network.https_proxy`).
    pub key: String,
    /// The value (JSON: strings, numbers, booleans, null when unset).
    pub value: serde_json::Value,
    /// Where it came from.
    pub source: Source,
}

fn entry(key: impl Into<String>, value: impl Into<serde_json::Value>, source: Source) -> Entry {
    Entry {
        key: key.into(),
        value: value.into(),
        source,
    }
}

fn path_value(p: &Path) -> serde_json::Value {
    p.display().to_string().into()
}

impl Settings {
    /// Every setting with its source; `env` is the process environment (the flags'
    /// own `BERTH_*` variables are read from it, as clap reads them).
    pub fn provenance(&self, env: &dyn Fn(&str) -> Option<String>) -> Vec<Entry> {
        let file_src = || {
            Source::File(
                self.config_file
                    .as_deref()
                    .map_or_else(|| "config.toml".into(), |p| p.display().to_string()),
            )
        };
        let mut out = Vec::new();
        out.push(match &self.config_file {
            Some(p) => entry(
                "config",
                path_value(p),
                match (self.config_from_flag, env("BERTH_CONFIG")) {
                    (true, Some(v)) if Path::new(&v) == p => Source::Env("BERTH_CONFIG".into()),
                    (true, _) => Source::Flag("--config".into()),
                    (false, _) => Source::Default,
                },
            ),
            None => entry("config", serde_json::Value::Null, Source::Default),
        });
        let root = path_value(&self.root);
        out.push(if self.root_from_flag {
            let by_env = env("BERTH_ROOT").is_some_and(|v| Path::new(&v) == self.root);
            entry(
                "root",
                root,
                if by_env {
                    Source::Env("BERTH_ROOT".into())
                } else {
                    Source::Flag("--root".into())
                },
            )
        } else if self.file.root.is_some() {
            entry("root", root, file_src())
        } else {
            entry("root", root, Source::Default)
        });

        // [network]: a proxy of the file wins; NO_PROXY lists are merged.
        let n = &self.file.network;
        let stored = |k: &str| self.env.get(k).filter(|v| !v.trim().is_empty()).cloned();
        for (key, file_value, var) in [
            ("network.http_proxy", &n.http_proxy, "HTTP_PROXY"),
            ("network.https_proxy", &n.https_proxy, "HTTPS_PROXY"),
        ] {
            let lower = var.to_ascii_lowercase();
            out.push(match file_value.as_deref().filter(|v| !v.is_empty()) {
                Some(v) => entry(key, v, file_src()),
                None => match (stored(var), stored(&lower)) {
                    (Some(v), _) => entry(key, v, Source::Env(var.into())),
                    (None, Some(v)) => entry(key, v, Source::Env(lower)),
                    (None, None) => entry(key, serde_json::Value::Null, Source::Default),
                },
            });
        }
        let from_env = |var: &str| {
            stored(var)
                .map(|v| berth_net::NoProxy::parse(&v).entries().to_vec())
                .unwrap_or_default()
        };
        let (upper, lower) = (from_env("NO_PROXY"), from_env("no_proxy"));
        for e in self.network().proxies.no_proxy.entries() {
            let source = if upper.contains(e) {
                Source::Env("NO_PROXY".into())
            } else if lower.contains(e) {
                Source::Env("no_proxy".into())
            } else {
                file_src()
            };
            out.push(entry("network.no_proxy", e.as_str(), source));
        }
        for ca in &n.ca {
            out.push(entry("network.ca", path_value(ca), file_src()));
        }
        out.push(entry(
            "network.ca_to_steps",
            n.ca_to_steps,
            if n.ca_to_steps {
                file_src()
            } else {
                Source::Default
            },
        ));

        for (host, r) in &self.file.registries {
            let key = |k: &str| format!("registries.{}.{k}", super::key_name(host));
            if let Some(ca) = &r.ca {
                out.push(entry(key("ca"), path_value(ca), file_src()));
            }
            for (k, on) in [("insecure", r.insecure), ("http", r.http)] {
                if on {
                    out.push(entry(key(k), true, file_src()));
                }
            }
            for m in &r.mirrors {
                out.push(entry(key("mirrors"), m.as_str(), file_src()));
            }
        }

        // [registry]: `berth registry serve`; its flags belong to that command, but
        // their variables are seen here.
        let reg = &self.file.registry;
        let var_or_file =
            |key: &str, var: &str, file: Option<serde_json::Value>, default| match env(var) {
                Some(v) => entry(key, v, Source::Env(var.into())),
                None => match file {
                    Some(v) => entry(key, v, file_src()),
                    None => entry(key, default, Source::Default),
                },
            };
        let path_opt = |p: &Option<std::path::PathBuf>| p.as_deref().map(path_value);
        out.push(var_or_file(
            "registry.addr",
            "BERTH_REGISTRY_ADDR",
            reg.addr.map(|a| a.to_string().into()),
            "127.0.0.1:5000".into(),
        ));
        for (k, var, v) in [
            ("tls_cert", "BERTH_REGISTRY_TLS_CERT", &reg.tls_cert),
            ("tls_key", "BERTH_REGISTRY_TLS_KEY", &reg.tls_key),
            ("htpasswd", "BERTH_REGISTRY_HTPASSWD", &reg.htpasswd),
            ("access", "BERTH_REGISTRY_ACCESS", &reg.access),
        ] {
            out.push(var_or_file(
                &format!("registry.{k}"),
                var,
                path_opt(v),
                serde_json::Value::Null,
            ));
        }
        out.push(match reg.mirror_max_size {
            Some(v) => entry("registry.mirror_max_size", v, file_src()),
            None => entry(
                "registry.mirror_max_size",
                serde_json::Value::Null,
                Source::Default,
            ),
        });
        // [[registry.mirror]]: keyed as the file's errors name them; a password is
        // shown by the variable that holds it, never by its value.
        for (i, m) in reg.mirror.iter().enumerate() {
            let key = |k: &str| format!("registry.mirror[{i}].{k}");
            let set_or_default = |k: &str, v: Option<serde_json::Value>, default| match v {
                Some(v) => entry(key(k), v, file_src()),
                None => entry(key(k), default, Source::Default),
            };
            out.push(entry(key("prefix"), m.prefix.as_str(), file_src()));
            out.push(entry(key("upstream"), m.upstream.url.as_str(), file_src()));
            for (k, on) in [("default", m.default), ("insecure", m.insecure)] {
                out.push(set_or_default(k, on.then_some(true.into()), false.into()));
            }
            out.push(set_or_default(
                "username",
                m.username.as_deref().map(Into::into),
                serde_json::Value::Null,
            ));
            out.push(set_or_default(
                "password_env",
                m.password_env.as_deref().map(Into::into),
                serde_json::Value::Null,
            ));
            out.push(set_or_default(
                "ca",
                m.ca.as_deref().map(path_value),
                serde_json::Value::Null,
            ));
            out.push(set_or_default(
                "tag_ttl",
                m.tag_ttl.map(|t| duration_value(t).into()),
                duration_value(berth_registry::DEFAULT_TAG_TTL).into(),
            ));
        }
        out.push(var_or_file(
            "registry.max_connections",
            "BERTH_REGISTRY_MAX_CONNECTIONS",
            reg.max_connections.map(Into::into),
            berth_registry::ServeOptions::default()
                .max_connections
                .into(),
        ));
        for (k, v, default) in [
            ("read_only", reg.read_only, false),
            ("delete", reg.delete, true),
            ("allow_anonymous_push", reg.allow_anonymous_push, false),
        ] {
            out.push(match v {
                Some(v) => entry(format!("registry.{k}"), v, file_src()),
                None => entry(format!("registry.{k}"), default, Source::Default),
            });
        }
        // [registry.storage]: the local root unless a bucket is configured.
        match &reg.storage {
            Some(crate::settings::StorageFile::S3(s3)) => {
                out.push(entry("registry.storage.kind", "s3", file_src()));
                let opt = |v: Option<&str>| v.map_or(serde_json::Value::Null, Into::into);
                for (k, v) in [
                    ("bucket", Some(s3.bucket.as_str())),
                    ("prefix", Some(s3.prefix.as_str())),
                    ("endpoint", s3.endpoint.as_deref()),
                    ("region", s3.region.as_deref()),
                    ("profile", s3.profile.as_deref()),
                ] {
                    out.push(entry(format!("registry.storage.{k}"), opt(v), file_src()));
                }
                out.push(entry(
                    "registry.storage.credentials_file",
                    s3.credentials_file
                        .as_deref()
                        .map_or(serde_json::Value::Null, path_value),
                    file_src(),
                ));
                out.push(entry(
                    "registry.storage.path_style",
                    s3.path_style.unwrap_or(s3.endpoint.is_some()),
                    file_src(),
                ));
                out.push(entry("registry.storage.redirect", s3.redirect, file_src()));
            }
            Some(crate::settings::StorageFile::Filesystem) => {
                out.push(entry("registry.storage.kind", "filesystem", file_src()))
            }
            None => out.push(entry(
                "registry.storage.kind",
                "filesystem",
                Source::Default,
            )),
        }

        let d = &self.file.docker;
        out.push(match d.registry_proxy {
            Some(v) => entry("docker.registry_proxy", v, file_src()),
            None => entry("docker.registry_proxy", true, Source::Default),
        });
        out.push(match d.registry_proxy_port {
            Some(v) => entry("docker.registry_proxy_port", v, file_src()),
            None => entry("docker.registry_proxy_port", 0, Source::Default),
        });

        for a in &self.file.build.allow {
            out.push(entry("build.allow", a.name(), file_src()));
        }
        out.push(match self.file.build.resolve_ttl {
            Some(t) => entry("build.resolve_ttl", duration_value(t), file_src()),
            // Stored base image tags are never re-resolved unless `--pull`.
            None => entry("build.resolve_ttl", "never", Source::Default),
        });
        if let Some(v) = self.env.get("SOURCE_DATE_EPOCH") {
            out.push(entry(
                "build.source_date_epoch",
                v.trim(),
                Source::Env("SOURCE_DATE_EPOCH".into()),
            ));
        }
        out
    }
}

/// A duration as config.toml writes it (`10m`, `90s`, `2h`).
fn duration_value(d: std::time::Duration) -> String {
    match d.as_secs() {
        s if s > 0 && s % 86400 == 0 => format!("{}d", s / 86400),
        s if s > 0 && s % 3600 == 0 => format!("{}h", s / 3600),
        s if s > 0 && s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// The entries as a table (`KEY  VALUE  SOURCE`).
pub fn table(entries: &[Entry]) -> String {
    let shown: Vec<(String, String, String)> = entries
        .iter()
        .map(|e| {
            let v = match &e.value {
                serde_json::Value::Null => "(unset)".to_owned(),
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (e.key.clone(), v, e.source.to_string())
        })
        .collect();
    let kw = shown.iter().map(|r| r.0.len()).max().unwrap_or(3).max(3);
    let vw = shown.iter().map(|r| r.1.len()).max().unwrap_or(5).max(5);
    let mut out = format!("{:<kw$}  {:<vw$}  SOURCE\n", "KEY", "VALUE");
    for (k, v, s) in shown {
        out.push_str(&format!("{k:<kw$}  {v:<vw$}  {s}\n"));
    }
    out
}

/// The entries as JSON: `[{"key", "value", "source": {"kind", "name"}}]`.
pub fn json(entries: &[Entry]) -> serde_json::Value {
    entries
        .iter()
        .map(|e| {
            let (kind, name) = match &e.source {
                Source::Default => ("default", None),
                Source::File(p) => ("file", Some(p.as_str())),
                Source::Env(v) => ("env", Some(v.as_str())),
                Source::Flag(f) => ("flag", Some(f.as_str())),
            };
            serde_json::json!({
                "key": e.key,
                "value": e.value,
                "source": { "kind": kind, "name": name },
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn find<'a>(entries: &'a [Entry], key: &str) -> Vec<&'a Entry> {
        entries.iter().filter(|e| e.key == key).collect()
    }

    #[test]
    fn registry_storage_in_a_bucket() {
        let path = Path::new("/etc/berth/config.toml");
        let text = "[registry.storage]\nkind = \"s3\"\nbucket = \"b\"\n\
                    endpoint = \"http://127.0.0.1:9000\"\ncredentials_file = \"/etc/c\"\n";
        let file = super::super::parse_file(path, text).unwrap();
        let s = Settings::resolve(None, file, BTreeMap::new());
        let s3 = s.registry_s3().expect("s3 storage");
        assert_eq!(s3.bucket, "b");
        assert_eq!(s3.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        let e = s.provenance(&|_| None);
        assert_eq!(find(&e, "registry.storage.kind")[0].value, "s3");
        assert_eq!(find(&e, "registry.storage.path_style")[0].value, true);
        assert_eq!(
            find(&e, "registry.storage.credentials_file")[0].value,
            "/etc/c"
        );
        // The default, and mistakes named with their place.
        let file = super::super::parse_file(path, "").unwrap();
        let s = Settings::resolve(None, file, BTreeMap::new());
        assert!(s.registry_s3().is_none());
        let e = s.provenance(&|_| None);
        assert_eq!(find(&e, "registry.storage.kind")[0].value, "filesystem");
        for bad in [
            "[registry.storage]\nkind = \"gcs\"\n",
            "[registry.storage]\nkind = \"s3\"\nbucket = \"b\"\nbukket = \"c\"\n",
            "[registry.storage]\nkind = \"s3\"\n",
        ] {
            let err = format!("{:#}", super::super::parse_file(path, bad).unwrap_err());
            assert!(
                err.contains("registry.storage") || err.contains("storage"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn every_source_is_named() {
        let path = Path::new("/etc/berth/config.toml");
        let file = super::super::parse_file(
            path,
            "root = \"/file/root\"\n[network]\nhttp_proxy = \"http://file:3128\"\n\
             no_proxy = [\".corp\", \"localhost\"]\n[registry]\naddr = \"127.0.0.1:7000\"\n\
             mirror_max_size = \"2GB\"\n\
             [[registry.mirror]]\nprefix = \"hub\"\nupstream = \"https://registry-1.docker.io/\"\n\
             default = true\nusername = \"ci\"\npassword_env = \"HUB_TOKEN\"\ntag_ttl = \"90m\"\n\
             [[registry.mirror]]\nprefix = \"corp\"\nupstream = \"http://10.0.0.5:5000\"\n\
             [registries.\"r.corp:5000\"]\nhttp = true\n",
        )
        .unwrap();
        let env: BTreeMap<String, String> = [
            ("HTTPS_PROXY", "http://env:8080"),
            ("http_proxy", "http://env-lower:1"),
            ("no_proxy", "localhost,10.0.0.0/8"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let mut s = Settings::resolve(None, file, env);
        s.config_file = Some(path.into());
        let process_env = |k: &str| (k == "BERTH_REGISTRY_MAX_CONNECTIONS").then(|| "9".into());
        let e = s.provenance(&process_env);
        let file = Source::File(path.display().to_string());
        assert_eq!(find(&e, "root")[0].source, file);
        assert_eq!(find(&e, "root")[0].value, "/file/root");
        assert_eq!(find(&e, "network.http_proxy")[0].value, "http://file:3128");
        assert_eq!(find(&e, "network.http_proxy")[0].source, file);
        assert_eq!(
            find(&e, "network.https_proxy")[0].source,
            Source::Env("HTTPS_PROXY".into())
        );
        let np: Vec<_> = find(&e, "network.no_proxy")
            .iter()
            .map(|e| (e.value.as_str().unwrap().to_owned(), e.source.clone()))
            .collect();
        assert_eq!(
            np,
            [
                ("localhost".into(), Source::Env("no_proxy".into())),
                ("10.0.0.0/8".into(), Source::Env("no_proxy".into())),
                (".corp".into(), file.clone()),
            ]
        );
        assert_eq!(find(&e, "registry.addr")[0].source, file);
        assert_eq!(
            find(&e, "registry.max_connections")[0].source,
            Source::Env("BERTH_REGISTRY_MAX_CONNECTIONS".into())
        );
        assert_eq!(find(&e, "registry.delete")[0].source, Source::Default);
        assert_eq!(find(&e, "registries.\"r.corp:5000\".http")[0].value, true);
        assert_eq!(
            find(&e, "registry.mirror_max_size")[0].value,
            2_000_000_000u64
        );
        assert_eq!(find(&e, "registry.mirror_max_size")[0].source, file);
        let mirror = |i: usize, k: &str| {
            let found = find(&e, &format!("registry.mirror[{i}].{k}"));
            assert_eq!(found.len(), 1, "registry.mirror[{i}].{k}");
            (found[0].value.clone(), found[0].source.clone())
        };
        assert_eq!(mirror(0, "prefix"), ("hub".into(), file.clone()));
        assert_eq!(
            mirror(0, "upstream"),
            ("https://registry-1.docker.io".into(), file.clone())
        );
        assert_eq!(mirror(0, "default"), (true.into(), file.clone()));
        assert_eq!(
            mirror(0, "password_env"),
            ("HUB_TOKEN".into(), file.clone())
        );
        assert_eq!(mirror(0, "tag_ttl"), ("90m".into(), file.clone()));
        assert_eq!(
            mirror(1, "upstream"),
            ("http://10.0.0.5:5000".into(), file.clone())
        );
        assert_eq!(mirror(1, "default"), (false.into(), Source::Default));
        assert_eq!(
            mirror(1, "username"),
            (serde_json::Value::Null, Source::Default)
        );
        assert_eq!(mirror(1, "insecure"), (false.into(), Source::Default));
        assert_eq!(mirror(1, "tag_ttl").1, Source::Default);

        // A root from the flag, and from BERTH_ROOT (clap merges the two).
        s.root_from_flag = true;
        s.root = "/flag".into();
        assert_eq!(
            find(&s.provenance(&|_| None), "root")[0].source,
            Source::Flag("--root".into())
        );
        let by_env = |k: &str| (k == "BERTH_ROOT").then(|| "/flag".into());
        assert_eq!(
            find(&s.provenance(&by_env), "root")[0].source,
            Source::Env("BERTH_ROOT".into())
        );
        let j = json(&e);
        assert_eq!(j[1]["source"]["kind"], "file");
        assert!(table(&e).contains("env HTTPS_PROXY"));
    }
}
