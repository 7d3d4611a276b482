//! Checking one registry step by step, for `berth doctor`: each step says what it found
//! and, when it failed, what to change.

use std::time::Duration;

use berth_oci::Reference;
use reqwest::header;

use crate::client::{Client, Error, speaks_registry_api, transport};

/// How long each network step may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// How a step went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// As it should be.
    Ok,
    /// Works, but worth a look (no credentials, a rate limit nearly used up).
    Warn,
    /// Broken: pulls and pushes fail.
    Fail,
}

/// One step of [`Client::probe`].
#[derive(Debug, Clone)]
pub struct ProbeStep {
    /// `proxy`, `dns`, `tcp`, `tls`, `api`, `credentials` or `rate-limit`.
    pub step: &'static str,
    /// How it went.
    pub outcome: Outcome,
    /// What was found.
    pub detail: String,
    /// What to change, for a warning or a failure.
    pub fix: Option<String>,
}

impl ProbeStep {
    fn ok(step: &'static str, detail: impl Into<String>) -> ProbeStep {
        ProbeStep {
            step,
            outcome: Outcome::Ok,
            detail: detail.into(),
            fix: None,
        }
    }

    fn bad(
        step: &'static str,
        outcome: Outcome,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> ProbeStep {
        ProbeStep {
            step,
            outcome,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

/// Docker Hub's `ratelimit-limit` and `ratelimit-remaining` headers (`100;w=21600`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Pulls allowed per window.
    pub limit: Option<u64>,
    /// Pulls left in this window.
    pub remaining: u64,
    /// The window, in seconds.
    pub window_secs: Option<u64>,
}

impl RateLimit {
    /// From a response's headers; `None` when it carries no `ratelimit-remaining`.
    pub fn from_headers(h: &header::HeaderMap) -> Option<RateLimit> {
        let parse = |name: &str| {
            let v = h.get(name)?.to_str().ok()?;
            let mut parts = v.split(';');
            let n = parts.next()?.trim().parse::<u64>().ok()?;
            let w = parts
                .find_map(|p| p.trim().strip_prefix("w="))
                .and_then(|w| w.parse().ok());
            Some((n, w))
        };
        let (remaining, w) = parse("ratelimit-remaining")?;
        let limit = parse("ratelimit-limit");
        Some(RateLimit {
            limit: limit.map(|l| l.0),
            remaining,
            window_secs: w.or(limit.and_then(|l| l.1)),
        })
    }
}

/// `host` and `port` of an `api_host` (`h`, `h:5000`, `[::1]:5000`).
fn host_port(api: &str, default_port: u16) -> (String, u16) {
    if let Some(rest) = api.strip_prefix('[')
        && let Some((h, tail)) = rest.split_once(']')
    {
        let port = tail.strip_prefix(':').and_then(|p| p.parse().ok());
        return (h.to_owned(), port.unwrap_or(default_port));
    }
    match api.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() => (h.to_owned(), p.parse().unwrap_or(0)),
        _ => (api.to_owned(), default_port),
    }
}

impl Client {
    /// Checks `registry` (`host[:port]` as configured) the way a pull meets it: the proxy
    /// the network configuration picks, or else the name (DNS) and a TCP connection; TLS
    /// with the configured CAs; `GET /v2/` answering like a registry; the credentials
    /// berth has for it; and the rate limit it reports (Docker Hub's `ratelimit-*`
    /// headers). Stops at the first failure.
    pub async fn probe(&self, registry: &str) -> Vec<ProbeStep> {
        let mut steps = Vec::new();
        let r = Reference {
            registry: registry.to_owned(),
            repository: "berth/doctor".into(),
            tag: None,
            digest: None,
        };
        let schemes = self.schemes(&r);
        let api = r.api_host().to_owned();
        let default_port = if schemes[0] == "https" { 443 } else { 80 };
        let (host, port) = host_port(&api, default_port);
        let proxied = self
            .network()
            .proxies
            .proxy_for(schemes[0], &host, port)
            .map(str::to_owned);
        let unreachable_fix = match &proxied {
            Some(p) => format!(
                "the request went through the proxy {p}: check that it runs and may reach \
                 {host} (see the network checks), or add {host} to no_proxy if it is reached \
                 directly"
            ),
            None => "check the registry's address and port".to_owned(),
        };
        if let Some(proxy) = &proxied {
            steps.push(ProbeStep::ok(
                "proxy",
                format!("reached through {proxy} ([network] or HTTPS_PROXY; NO_PROXY does not match {host})"),
            ));
        } else {
            let lookup =
                tokio::time::timeout(STEP_TIMEOUT, tokio::net::lookup_host((host.as_str(), port)))
                    .await;
            let addrs: Vec<_> = match lookup {
                Ok(Ok(a)) => a.collect(),
                Ok(Err(e)) => {
                    steps.push(ProbeStep::bad(
                        "dns",
                        Outcome::Fail,
                        format!("{host} does not resolve: {e}"),
                        "check the registry's name in the image or config.toml; if this network \
                         resolves outside names only through a proxy, set https_proxy in [network]",
                    ));
                    return steps;
                }
                Err(_) => {
                    steps.push(ProbeStep::bad(
                        "dns",
                        Outcome::Fail,
                        format!("resolving {host} took over {}s", STEP_TIMEOUT.as_secs()),
                        "check /etc/resolv.conf and that the DNS server answers",
                    ));
                    return steps;
                }
            };
            let first = addrs.first().copied();
            steps.push(ProbeStep::ok(
                "dns",
                format!(
                    "{host} is {}",
                    addrs
                        .iter()
                        .map(|a| a.ip().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
            let Some(addr) = first else {
                return steps;
            };
            match tokio::time::timeout(STEP_TIMEOUT, tokio::net::TcpStream::connect(addr)).await {
                Ok(Ok(_)) => {
                    steps.push(ProbeStep::ok("tcp", format!("{addr} accepts connections")))
                }
                Ok(Err(e)) => {
                    steps.push(ProbeStep::bad(
                        "tcp",
                        Outcome::Fail,
                        format!("connect to {addr}: {e}"),
                        format!(
                            "is the registry running and listening on port {port}? behind a \
                             firewall, set https_proxy in [network] (and keep {host} out of no_proxy)"
                        ),
                    ));
                    return steps;
                }
                Err(_) => {
                    steps.push(ProbeStep::bad(
                        "tcp",
                        Outcome::Fail,
                        format!("connect to {addr}: no answer in {}s", STEP_TIMEOUT.as_secs()),
                        "a firewall drops the connection: set https_proxy in [network], or open the port",
                    ));
                    return steps;
                }
            }
        }
        let http = match self.http_client(registry) {
            Ok(h) => h,
            Err(e) => {
                steps.push(ProbeStep::bad(
                    "tls",
                    Outcome::Fail,
                    e.to_string(),
                    format!("fix the `ca` files of [network] and [registries.\"{registry}\"]"),
                ));
                return steps;
            }
        };
        let mut answer = None;
        for (i, scheme) in schemes.iter().enumerate() {
            let url = format!("{scheme}://{api}/v2/");
            let sent = tokio::time::timeout(STEP_TIMEOUT, http.get(&url).send()).await;
            match sent {
                Ok(Ok(resp)) => {
                    steps.push(ProbeStep::ok(
                        "tls",
                        if *scheme == "https" {
                            "certificate verified".to_owned()
                        } else if schemes.len() > 1 {
                            "plain HTTP (HTTPS refused; a registry on loopback may)".to_owned()
                        } else {
                            "plain HTTP, as configured (http = true)".to_owned()
                        },
                    ));
                    answer = Some(resp);
                    break;
                }
                Ok(Err(e)) => {
                    let message = transport(&url, e).to_string();
                    let cert = message.contains("certificate") || message.contains("UnknownIssuer");
                    if cert {
                        steps.push(ProbeStep::bad(
                            "tls",
                            Outcome::Fail,
                            message,
                            format!(
                                "trust the CA that signed its certificate: ca = \"/path/ca.pem\" \
                                 under [registries.\"{registry}\"] (or in [network] ca); \
                                 insecure = true skips verification"
                            ),
                        ));
                        return steps;
                    }
                    if i + 1 == schemes.len() {
                        steps.push(ProbeStep::bad(
                            "api",
                            Outcome::Fail,
                            message,
                            unreachable_fix,
                        ));
                        return steps;
                    }
                }
                Err(_) => {
                    steps.push(ProbeStep::bad(
                        "api",
                        Outcome::Fail,
                        format!("GET {url}: no answer in {}s", STEP_TIMEOUT.as_secs()),
                        "the registry (or the proxy before it) hangs: check its logs",
                    ));
                    return steps;
                }
            }
        }
        let Some(resp) = answer else {
            return steps;
        };
        let status = resp.status();
        if !speaks_registry_api(&resp) {
            steps.push(ProbeStep::bad(
                "api",
                Outcome::Fail,
                format!("GET {} answered {status}: not a registry", resp.url()),
                "check the registry's address and port: something else answers there",
            ));
            return steps;
        }
        steps.push(ProbeStep::ok(
            "api",
            format!("GET /v2/ answered {}", status.as_u16()),
        ));
        let mut rate = RateLimit::from_headers(resp.headers());
        let user = self.credentials(registry).map(|c| c.username);
        if status.is_success() {
            steps.push(ProbeStep::ok("credentials", "none needed"));
        } else {
            match self.login(registry).await {
                Ok(()) => steps.push(ProbeStep::ok(
                    "credentials",
                    match &user {
                        Some(u) => format!("accepted for {u}"),
                        None => "anonymous access granted".to_owned(),
                    },
                )),
                Err(Error::Unauthorized { status, .. }) => {
                    let (outcome, detail) = match &user {
                        Some(u) => (Outcome::Fail, format!("refused for {u} ({status})")),
                        None => (
                            Outcome::Warn,
                            format!("none configured; the registry asks for them ({status})"),
                        ),
                    };
                    steps.push(ProbeStep::bad(
                        "credentials",
                        outcome,
                        detail,
                        format!(
                            "berth login {registry} (credentials live in Docker's config.json)"
                        ),
                    ));
                }
                Err(e) => steps.push(ProbeStep::bad(
                    "credentials",
                    Outcome::Fail,
                    e.to_string(),
                    "see the message; check the registry's token service",
                )),
            }
        }
        // Docker Hub reports its limit on manifest requests only; this test repository
        // is the one Docker documents for the purpose, and a HEAD does not count.
        if rate.is_none() && r.registry == berth_oci::DOCKER_HUB {
            let probe = Reference {
                registry: r.registry.clone(),
                repository: "ratelimitpreview/test".into(),
                tag: Some("latest".into()),
                digest: None,
            };
            if let Ok(h) = self.manifest_headers(&probe).await {
                rate = RateLimit::from_headers(&h);
            }
        }
        if let Some(rl) = rate {
            let of = rl.limit.map(|l| format!(" of {l}")).unwrap_or_default();
            let window = rl
                .window_secs
                .map(|w| format!(" per {}h", w / 3600))
                .unwrap_or_default();
            let detail = format!("{}{of} pulls left{window}", rl.remaining);
            steps.push(if rl.remaining == 0 {
                ProbeStep::bad(
                    "rate-limit",
                    Outcome::Warn,
                    detail,
                    "pulls are refused until the window ends: log in (higher limit) or pull \
                     through berth's registry as a cache ([[registry.mirror]])",
                )
            } else {
                ProbeStep::ok("rate-limit", detail)
            });
        }
        steps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_headers() {
        let mut h = header::HeaderMap::new();
        assert_eq!(RateLimit::from_headers(&h), None);
        h.insert("ratelimit-limit", "100;w=21600".parse().unwrap());
        h.insert("ratelimit-remaining", "76;w=21600".parse().unwrap());
        assert_eq!(
            RateLimit::from_headers(&h),
            Some(RateLimit {
                limit: Some(100),
                remaining: 76,
                window_secs: Some(21600)
            })
        );
    }

    #[test]
    fn host_and_port() {
        assert_eq!(host_port("r.corp:5000", 443), ("r.corp".into(), 5000));
        assert_eq!(host_port("r.corp", 443), ("r.corp".into(), 443));
        assert_eq!(host_port("[::1]:5000", 443), ("::1".into(), 5000));
        assert_eq!(host_port("[::1]", 80), ("::1".into(), 80));
    }
}
