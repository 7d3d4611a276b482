//! `berth doctor`: checks what berth needs and prints a table with a fix for every
//! problem. The checks themselves are library functions (berth-net, berth-client,
//! berth-docker, berth-exec, berth-satellite); this module runs them and prints.

use std::time::{Duration, SystemTime};

use anyhow::{Result, bail};
use clap::{Args, ValueEnum};
use serde::Serialize;

use crate::settings::Settings;

/// `berth doctor`'s flags.
#[derive(Args)]
pub struct DoctorArgs {
    /// Print JSON (`{"checks": [...], "failures": N, "warnings": N}`).
    #[arg(long)]
    json: bool,
    /// Check only these areas (repeat, or separate with commas) [default: all].
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Area>,
}

/// A group of checks.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum Area {
    /// Proxies and CA bundles.
    Network,
    /// Configured registries and their mirrors.
    Registries,
    /// The Docker daemon.
    Docker,
    /// runc, overlayfs, user namespaces, cgroups, disk space.
    Host,
    /// Enrolled satellites.
    Satellites,
}

#[derive(Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Status {
    Ok,
    Warn,
    Fail,
}

/// One line of the report.
#[derive(Serialize)]
struct Check {
    area: Area,
    check: String,
    status: Status,
    detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    fix: Option<String>,
}

struct Report(Vec<Check>);

impl Report {
    fn ok(&mut self, area: Area, check: impl Into<String>, detail: impl Into<String>) {
        self.push(area, check, Status::Ok, detail, None);
    }

    fn fail(
        &mut self,
        area: Area,
        check: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.push(area, check, Status::Fail, detail, Some(fix.into()));
    }

    fn push(
        &mut self,
        area: Area,
        check: impl Into<String>,
        status: Status,
        detail: impl Into<String>,
        fix: Option<String>,
    ) {
        self.0.push(Check {
            area,
            check: check.into(),
            status,
            detail: detail.into(),
            fix,
        });
    }
}

/// Runs the checks, prints them, and fails when one failed (warnings do not).
pub fn run(settings: &Settings, args: DoctorArgs) -> Result<()> {
    let wanted = |a: Area| args.only.is_empty() || args.only.contains(&a);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut r = Report(Vec::new());
    if wanted(Area::Network) {
        network(settings, &mut r);
    }
    if wanted(Area::Registries) {
        rt.block_on(registries(settings, &mut r));
    }
    if wanted(Area::Docker) {
        rt.block_on(docker(&mut r));
    }
    if wanted(Area::Host) {
        for c in berth_exec::host_checks(&settings.root) {
            let status = match (&c.fix, c.warning) {
                (None, _) => Status::Ok,
                (Some(_), true) => Status::Warn,
                (Some(_), false) => Status::Fail,
            };
            r.push(Area::Host, c.name, status, c.detail, c.fix);
        }
    }
    if wanted(Area::Satellites) {
        rt.block_on(satellites(settings, &mut r));
    }
    let failures = r.0.iter().filter(|c| c.status == Status::Fail).count();
    let warnings = r.0.iter().filter(|c| c.status == Status::Warn).count();
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "checks": r.0,
                "failures": failures,
                "warnings": warnings,
            }))?
        );
    } else {
        print!("{}", table(&r.0));
        println!(
            "{failures} failed, {warnings} warnings, {} checks",
            r.0.len()
        );
    }
    if failures > 0 {
        bail!("{failures} check(s) failed; each FIX line above says what to change");
    }
    Ok(())
}

fn table(checks: &[Check]) -> String {
    let area = |a: Area| {
        a.to_possible_value()
            .map(|v| v.get_name().to_owned())
            .unwrap_or_default()
    };
    let cw = checks
        .iter()
        .map(|c| c.check.len())
        .max()
        .unwrap_or(5)
        .max(5);
    let mut out = format!(
        "{:<10}  {:<cw$}  {:<6}  DETAIL\n",
        "AREA", "CHECK", "STATUS"
    );
    for c in checks {
        let status = match c.status {
            Status::Ok => "ok",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        };
        out.push_str(&format!(
            "{:<10}  {:<cw$}  {status:<6}  {}\n",
            area(c.area),
            c.check,
            c.detail
        ));
        if let Some(fix) = &c.fix {
            out.push_str(&format!("{:<10}  {:<cw$}  {:<6}  FIX: {fix}\n", "", "", ""));
        }
    }
    out
}

fn network(settings: &Settings, r: &mut Report) {
    let net = settings.network();
    let p = &net.proxies;
    let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "(none)".into());
    r.ok(
        Area::Network,
        "proxy settings",
        format!(
            "http_proxy={} https_proxy={} no_proxy={} (`berth config show` says where each comes from)",
            show(&p.http),
            show(&p.https),
            if p.no_proxy.is_empty() {
                "(none)".to_owned()
            } else {
                p.no_proxy.to_string()
            }
        ),
    );
    let mut proxies: Vec<(&str, &String)> = Vec::new();
    for (name, url) in [("https_proxy", &p.https), ("http_proxy", &p.http)] {
        if let Some(u) = url
            && !proxies.iter().any(|(_, seen)| *seen == u)
        {
            proxies.push((name, u));
        }
    }
    for (name, url) in proxies {
        match berth_net::probe_proxy(url, Duration::from_secs(5)) {
            Ok(line) => r.ok(Area::Network, format!("proxy {url}"), format!("answers ({line})")),
            Err(e) => r.fail(Area::Network, format!("proxy {url}"), e, format!(
                    "start the proxy, or correct {name} ([network] in config.toml, or {} in the environment)",
                    name.to_ascii_uppercase()
                )),
        }
    }
    for ca in &net.ca_bundles {
        let check = format!("CA bundle {}", ca.display());
        match std::fs::read_to_string(ca) {
            Ok(t) if t.contains("-----BEGIN CERTIFICATE-----") => r.ok(
                Area::Network,
                check,
                format!(
                    "{} certificates",
                    t.matches("-----BEGIN CERTIFICATE-----").count()
                ),
            ),
            Ok(_) => r.fail(
                Area::Network,
                check,
                "holds no PEM certificate",
                "point [network] ca at a PEM bundle (-----BEGIN CERTIFICATE-----)",
            ),
            Err(e) => r.fail(
                Area::Network,
                check,
                e.to_string(),
                "fix the path in [network] ca, or make the file readable",
            ),
        }
    }
}

async fn registries(settings: &Settings, r: &mut Report) {
    let config = settings.registry_config();
    let mut names: Vec<(String, Option<String>)> = Vec::new();
    let mut hosts: Vec<&String> = config.hosts.keys().collect();
    hosts.sort();
    for h in &hosts {
        if !names.iter().any(|(n, _)| n == *h) {
            names.push(((*h).clone(), None));
        }
        for m in &config.hosts[*h].mirrors {
            match names.iter_mut().find(|(n, _)| n == m) {
                Some((_, of)) => *of = Some((*h).clone()),
                None => names.push((m.clone(), Some((*h).clone()))),
            }
        }
    }
    let mirrors = settings.mirror_checks(&|k| std::env::var(k).ok());
    if names.is_empty() && mirrors.is_empty() {
        r.ok(
            Area::Registries,
            "registries",
            "none configured ([registries.\"host:port\"] or [[registry.mirror]] in config.toml)",
        );
        return;
    }
    let client = berth_client::Client::new(config);
    for (name, mirror_of) in names {
        let label = match &mirror_of {
            Some(of) => format!("{name} (mirror of {of})"),
            None => name.clone(),
        };
        for step in client.probe(&name).await {
            let status = match step.outcome {
                berth_client::Outcome::Ok => Status::Ok,
                berth_client::Outcome::Warn => Status::Warn,
                berth_client::Outcome::Fail => Status::Fail,
            };
            r.push(
                Area::Registries,
                format!("{label} {}", step.step),
                status,
                step.detail,
                step.fix,
            );
        }
    }
    for m in mirrors {
        pull_through_upstream(m, r).await;
    }
}

/// Probes one `[[registry.mirror]]` upstream the way `registry serve` reaches it; the
/// fixes name the entry's own keys.
async fn pull_through_upstream(m: crate::settings::MirrorCheck, r: &mut Report) {
    let label = format!("mirror {} ({})", m.prefix, m.upstream);
    let entry = format!(
        "the [[registry.mirror]] entry with prefix = \"{}\"",
        m.prefix
    );
    let mut config_problem = match (&m.username, &m.password_env) {
        (_, Some(var)) if m.password_unset => Some((
            format!("password_env names {var}, which is not set"),
            format!(
                "export {var}=<password or token> where `berth registry serve` (and this doctor) \
                 runs; {entry} reads its password from it"
            ),
        )),
        (Some(user), None) => Some((
            format!("username = \"{user}\" without password_env"),
            format!(
                "add password_env = \"VARIABLE\" to {entry}, or remove username to use \
                 Docker's credentials for {}",
                m.registry
            ),
        )),
        (None, Some(var)) => Some((
            format!("password_env = \"{var}\" without username"),
            format!("add username = \"...\" to {entry}"),
        )),
        _ => None,
    };
    let client = berth_client::Client::new(m.client);
    for step in client.probe(&m.registry).await {
        let check = format!("{label} {}", step.step);
        if step.step == "credentials"
            && let Some((detail, fix)) = config_problem.take()
        {
            r.fail(Area::Registries, check, detail, fix);
            continue;
        }
        let status = match step.outcome {
            berth_client::Outcome::Ok => Status::Ok,
            berth_client::Outcome::Warn => Status::Warn,
            berth_client::Outcome::Fail => Status::Fail,
        };
        let fix = match (step.step, status) {
            (_, Status::Ok) => None,
            ("tls", _) => Some(format!(
                "trust the CA that signed {}'s certificate: ca = \"/path/ca.pem\" in {entry}{}; \
                 insecure = true there skips verification",
                m.registry,
                m.ca.as_ref()
                    .map(|c| format!(" (its ca = \"{}\" does not verify it)", c.display()))
                    .unwrap_or_default()
            )),
            ("credentials", _) => Some(match (&m.username, &m.password_env) {
                (Some(user), Some(var)) => {
                    format!("check username = \"{user}\" in {entry} and the password in ${var}")
                }
                _ => format!(
                    "set username and password_env in {entry}, or `berth login {}` \
                     (Docker's credentials)",
                    m.registry
                ),
            }),
            _ => step.fix,
        };
        r.push(Area::Registries, check, status, step.detail, fix);
    }
    // The probe stopped before credentials: the entry is still incomplete.
    if let Some((detail, fix)) = config_problem {
        r.fail(
            Area::Registries,
            format!("{label} credentials"),
            detail,
            fix,
        );
    }
}

async fn docker(r: &mut Report) {
    let d = match berth_docker::connect().await {
        Ok(d) => d,
        Err(e) => {
            r.fail(
                Area::Docker,
                "daemon",
                e.to_string(),
                "start dockerd, or point DOCKER_HOST at it; without it `--load` and \
                     `berth load` cannot deliver (other commands work)",
            );
            return;
        }
    };
    match berth_docker::daemon_version(&d).await {
        Ok(v) => r.ok(Area::Docker, "daemon", format!("reachable, version {v}")),
        Err(e) => {
            r.fail(
                Area::Docker,
                "daemon",
                e.to_string(),
                "check that dockerd answers: docker version",
            );
            return;
        }
    }
    match berth_docker::daemon_reaches_loopback(&d).await {
        Ok(detail) => r.ok(Area::Docker, "reaches berth's 127.0.0.1", detail),
        Err(e) => r.fail(
            Area::Docker,
            "reaches berth's 127.0.0.1",
            e,
            "run berth in the daemon's network namespace (same host, not in another \
                 container), or set `[docker] registry_proxy = false` so images go as a tar \
                 stream; registries or mirrors on 127.0.0.1 are not reachable for that daemon",
        ),
    }
}

async fn satellites(settings: &Settings, r: &mut Report) {
    let e = crate::satellite::enrollments(settings);
    let list = match e.list() {
        Ok(l) => l,
        Err(err) => {
            r.fail(
                Area::Satellites,
                "enrollments",
                err.to_string(),
                "fix or remove the damaged record (`berth satellite rm NAME`)",
            );
            return;
        }
    };
    if list.is_empty() {
        r.ok(Area::Satellites, "satellites", "none enrolled");
        return;
    }
    for s in list {
        let name = s.name.clone();
        let p =
            match e.probe(&name).await {
                Ok(p) => p,
                Err(err) => {
                    r.fail(Area::Satellites, name.clone(), err.to_string(), format!(
                        "re-enroll: berth satellite rm {name}; berth satellite add {name} --token T"
                    ));
                    continue;
                }
            };
        let now = SystemTime::now();
        let check = format!("{name} certificate");
        match p.cert_expires {
            None => r.fail(Area::Satellites, check, "this client's certificate cannot be read", format!("re-enroll: berth satellite rm {name}; berth satellite add {name} --token T")),
            Some(t) if t <= now => r.fail(Area::Satellites, check, format!("expired {} ago", days(now.duration_since(t).unwrap_or_default())), format!(
                    "an expired certificate cannot renew itself: get a new token from the satellite's \
                     admin (`berth satellite token create`), then berth satellite rm {name}; \
                     berth satellite add {name} --token T"
                )),
            Some(t) => {
                let left = days(t.duration_since(now).unwrap_or_default());
                if p.renewal_due {
                    r.ok(
                        Area::Satellites,
                        check,
                        format!("expires in {left}; renewal due (the next connection renews it)"),
                    );
                } else {
                    r.ok(Area::Satellites, check, format!("expires in {left}"));
                }
            }
        }
        match p.reachable {
            Ok(d) => r.ok(
                Area::Satellites,
                format!("{name} reachable"),
                format!("{}: {d}", p.enrolled.address),
            ),
            Err(err) => r.fail(
                Area::Satellites,
                format!("{name} reachable"),
                err,
                format!(
                    "is the satellite running at {}? check the address, firewalls and \
                     `berth satellite inspect {name}`",
                    p.enrolled.address
                ),
            ),
        }
    }
}

fn days(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 86400 {
        format!("{} days", s / 86400)
    } else {
        format!("{} hours", s / 3600)
    }
}
