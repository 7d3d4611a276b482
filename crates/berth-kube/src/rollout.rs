//! Applying rendered services, waiting for their rollouts, and rolling back.
//!
//! A rollout is done when the Deployment's controller has seen the newest generation and
//! every replica is updated and available. When it fails (the progress deadline passes,
//! or berth's own wait runs out) the error carries the failing pod's phase, its events
//! and, when a container has run, its last log lines.
//!
//! A rollback re-applies the pod template of the ReplicaSet with the revision before the
//! Deployment's current one (the revisions the Deployment controller keeps in
//! `deployment.kubernetes.io/revision`): its image, and its ConfigMap/Secret, which are
//! named by content and therefore still the ones it ran with.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, ReplicaSet};
use k8s_openapi::api::core::v1::{Event, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{ListParams, LogParams};

use crate::render::{NAME_LABEL, Rendered, VERSION_ANNOTATION};
use crate::{Kube, KubeError};

/// The annotation the Deployment controller numbers revisions with.
pub const REVISION_ANNOTATION: &str = "deployment.kubernetes.io/revision";

/// Checks every object of every service against the server, then applies them in order
/// (ConfigMap, Secret, Deployment, Service per service; [`APPLY_CONCURRENCY`] services at
/// once). Nothing is sent if any check fails; an error of one service does not stop the
/// others, and the first is returned.
pub async fn apply_all(
    kube: &Kube,
    services: &[Rendered],
    progress: &(dyn Fn(&str) + Sync),
) -> Result<(), KubeError> {
    for r in services {
        if let Some(c) = &r.config_map {
            kube.check(&[c])?;
        }
        if let Some(s) = &r.secret {
            kube.check(&[s])?;
        }
        kube.check(&[&r.deployment])?;
        if let Some(s) = &r.kservice {
            kube.check(&[s])?;
        }
    }
    // Services go out side by side (their objects in order), a few at a time.
    let results: Vec<Result<(), KubeError>> = futures_util::stream::iter(services)
        .map(|r| apply_one(kube, r, progress))
        .buffer_unordered(APPLY_CONCURRENCY)
        .collect()
        .await;
    results.into_iter().collect()
}

/// Services applied at once by [`apply_all`].
pub const APPLY_CONCURRENCY: usize = 8;

async fn apply_one(
    kube: &Kube,
    r: &Rendered,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<(), KubeError> {
    if let Some(c) = &r.config_map {
        kube.apply(c).await?;
    }
    if let Some(s) = &r.secret {
        kube.apply(s).await?;
    }
    let d = kube.apply(&r.deployment).await?;
    if let Some(s) = &r.kservice {
        kube.apply(s).await?;
    }
    progress(&format!(
        "{}: applied deployment {} (generation {}) in namespace {}",
        r.service,
        r.service,
        d.metadata.generation.unwrap_or(0),
        kube.namespace
    ));
    Ok(())
}

/// Waits until the controller of `owner` (a `kind` such as StatefulSet or Deployment) has
/// made `count` pods matching `selector` that are not being deleted, each running as
/// `identity`'s ServiceAccount with its pull secrets ([`crate::pod::check_carries`]), and
/// returns them. Pods of an older revision may be there for a while: they are waited out.
/// After `timeout` the error names the last Warning event of the owner (or its
/// ReplicaSets), where admission refusals are told, or the pod that lacks the identity.
pub async fn wait_for_pods(
    kube: &Kube,
    kind: &str,
    owner: &str,
    selector: &str,
    count: usize,
    identity: &crate::pod::PodIdentity,
    timeout: Duration,
) -> Result<Vec<Pod>, KubeError> {
    let pods = kube.api::<Pod>();
    let start = Instant::now();
    loop {
        let live: Vec<Pod> = pods
            .list(&ListParams::default().labels(selector))
            .await
            .map_err(|e| KubeError::api(format!("list pods of {kind} {owner}"), e))?
            .items
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect();
        let wrong = live.iter().find_map(|p| {
            crate::pod::check_carries(
                p.metadata.name.as_deref().unwrap_or_default(),
                p.spec.as_ref(),
                identity,
            )
            .err()
        });
        if live.len() >= count && wrong.is_none() {
            return Ok(live);
        }
        if start.elapsed() > timeout {
            let why = match wrong {
                Some(w) => w,
                None => {
                    let event = last_warning(kube, kind, owner).await;
                    format!(
                        "the {kind} made {} of {count} pods in {}s: {}",
                        live.len(),
                        timeout.as_secs(),
                        event.unwrap_or_else(|| format!(
                            "no warning events; see `kubectl describe {} {owner}`",
                            kind.to_ascii_lowercase()
                        ))
                    )
                }
            };
            return Err(KubeError::Rollout {
                service: owner.into(),
                detail: why,
            });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The message of the newest Warning event about `owner` of `kind` or its ReplicaSets.
async fn last_warning(kube: &Kube, kind: &str, owner: &str) -> Option<String> {
    let prefix = format!("{owner}-");
    let mut events: Vec<Event> = kube
        .api::<Event>()
        .list(&ListParams::default().fields("type=Warning"))
        .await
        .ok()?
        .items
        .into_iter()
        .filter(|e| {
            let o = &e.involved_object;
            let name = o.name.as_deref().unwrap_or_default();
            (o.kind.as_deref() == Some(kind) && name == owner)
                || (o.kind.as_deref() == Some("ReplicaSet") && name.starts_with(&prefix))
        })
        .collect();
    events.sort_by_key(|e| e.last_timestamp.as_ref().map(|t| t.0));
    events.pop()?.message
}

/// Waits for `service`'s rollout, printing progress when it changes; fails after `timeout`
/// or when the controller reports the progress deadline exceeded.
pub async fn wait(
    kube: &Kube,
    service: &str,
    timeout: Duration,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<(), KubeError> {
    let api = kube.api::<Deployment>();
    let start = Instant::now();
    let mut last = String::new();
    loop {
        let d = api
            .get(service)
            .await
            .map_err(|e| KubeError::api(format!("get deployment {service}"), e))?;
        let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let st = d.status.clone().unwrap_or_default();
        let seen = st.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0);
        let updated = st.updated_replicas.unwrap_or(0);
        let available = st.available_replicas.unwrap_or(0);
        let total = st.replicas.unwrap_or(0);
        let line = format!(
            "{service}: {updated}/{want} updated, {available}/{want} available{}",
            if total > want {
                format!(", {} old pending termination", total - want)
            } else {
                String::new()
            }
        );
        if line != last {
            progress(&line);
            last = line;
        }
        if seen && updated >= want && available >= want && total <= want {
            progress(&format!("{service}: rolled out"));
            return Ok(());
        }
        let deadline = st.conditions.iter().flatten().find(|c| {
            c.type_ == "Progressing" && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
        });
        if deadline.is_some() || start.elapsed() >= timeout {
            let why = match deadline {
                Some(c) => format!(
                    "progress deadline exceeded ({})",
                    c.message.as_deref().unwrap_or("")
                ),
                None => format!("not rolled out after {} s", timeout.as_secs()),
            };
            let pods = failing_pods(kube, service).await;
            return Err(KubeError::Rollout {
                service: service.into(),
                detail: format!("{why}; {last}{pods}"),
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The service's pods that are not ready: phase, container states, events, last log lines.
async fn failing_pods(kube: &Kube, service: &str) -> String {
    let lp = ListParams::default().labels(&format!("{NAME_LABEL}={service}"));
    let pods = match kube.api::<Pod>().list(&lp).await {
        Ok(p) => p.items,
        Err(e) => return format!("\n  (pods could not be listed: {e})"),
    };
    let mut out = String::new();
    if pods.is_empty() {
        out.push_str("\n  no pod was created (see the ReplicaSet's events)");
    }
    for p in pods.iter().filter(|p| !ready(p)).take(3) {
        let name = p.metadata.name.clone().unwrap_or_default();
        let status = p.status.clone().unwrap_or_default();
        out.push_str(&format!(
            "\n  pod {name}: {}",
            status.phase.as_deref().unwrap_or("Unknown")
        ));
        for c in status.container_statuses.iter().flatten() {
            let state = c.state.clone().unwrap_or_default();
            if let Some(w) = &state.waiting {
                out.push_str(&format!(
                    "\n    container {}: waiting: {} {}",
                    c.name,
                    w.reason.as_deref().unwrap_or(""),
                    w.message.as_deref().unwrap_or("")
                ));
            }
            // A container waiting to restart (CrashLoopBackOff) exited before: say how.
            let last = c.last_state.as_ref().and_then(|s| s.terminated.as_ref());
            if let Some((t, when)) = state
                .terminated
                .as_ref()
                .map(|t| (t, "exited"))
                .or(last.map(|t| (t, "last exited")))
            {
                out.push_str(&format!(
                    "\n    container {}: {when} {} {}",
                    c.name,
                    t.exit_code,
                    t.reason.as_deref().unwrap_or("")
                ));
            }
        }
        let ev = ListParams::default().fields(&format!("involvedObject.name={name}"));
        match kube.api::<Event>().list(&ev).await {
            Ok(list) if list.items.is_empty() => out.push_str("\n    no events"),
            Ok(list) => {
                for e in list.items.iter().rev().take(10).rev() {
                    out.push_str(&format!(
                        "\n    event {} {}: {}",
                        e.type_.as_deref().unwrap_or(""),
                        e.reason.as_deref().unwrap_or(""),
                        e.message.as_deref().unwrap_or("")
                    ));
                }
            }
            Err(e) => out.push_str(&format!("\n    (events could not be read: {e})")),
        }
        let has_run =
            status.container_statuses.iter().flatten().any(|c| {
                c.restart_count > 0 || c.state.as_ref().is_some_and(|s| s.waiting.is_none())
            });
        if has_run {
            // A container that restarted and runs again: the log of the run that ended
            // says why (as `kubectl logs --previous`); one waiting to restart
            // (CrashLoopBackOff) is served its last run's log anyway.
            let restarted_and_running = status.container_statuses.iter().flatten().any(|c| {
                c.restart_count > 0 && c.state.as_ref().is_some_and(|s| s.running.is_some())
            });
            let lp = LogParams {
                tail_lines: Some(20),
                previous: restarted_and_running,
                ..Default::default()
            };
            match kube.api::<Pod>().logs(&name, &lp).await {
                Ok(log) => {
                    for line in log.lines() {
                        out.push_str(&format!("\n    log: {line}"));
                    }
                }
                Err(e) => out.push_str(&format!("\n    (its log could not be read: {e})")),
            }
        }
    }
    out
}

fn ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn revision(meta: &ObjectMeta) -> Option<u64> {
    meta.annotations
        .as_ref()?
        .get(REVISION_ANNOTATION)?
        .parse()
        .ok()
}

/// A revision of a service: its number, version and image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revision {
    /// The Deployment controller's number.
    pub number: u64,
    /// berth's version (from the pod template's annotation).
    pub version: String,
    /// The first container's image.
    pub image: String,
}

/// The service's ReplicaSets by revision, newest first.
pub async fn history(kube: &Kube, service: &str) -> Result<Vec<(Revision, ReplicaSet)>, KubeError> {
    let lp = ListParams::default().labels(&format!("{NAME_LABEL}={service}"));
    let list = kube
        .api::<ReplicaSet>()
        .list(&lp)
        .await
        .map_err(|e| KubeError::api(format!("list replicasets of {service}"), e))?;
    let mut out: Vec<(Revision, ReplicaSet)> = list
        .items
        .into_iter()
        .filter(|rs| {
            rs.metadata
                .owner_references
                .iter()
                .flatten()
                .any(|o| o.kind == "Deployment" && o.name == service)
        })
        .filter_map(|rs| {
            let number = revision(&rs.metadata)?;
            let tpl = rs.spec.as_ref()?.template.as_ref()?;
            let version = tpl
                .metadata
                .as_ref()
                .and_then(|m| m.annotations.as_ref())
                .and_then(|a| a.get(VERSION_ANNOTATION))
                .cloned()
                .unwrap_or_default();
            let image = tpl
                .spec
                .as_ref()
                .and_then(|s| s.containers.first())
                .and_then(|c| c.image.clone())
                .unwrap_or_default();
            Some((
                Revision {
                    number,
                    version,
                    image,
                },
                rs,
            ))
        })
        .collect();
    out.sort_by_key(|(r, _)| std::cmp::Reverse(r.number));
    Ok(out)
}

/// Re-applies the pod template of the revision before the current one (or revision `to`).
/// Returns the revision rolled back to.
pub async fn rollback(kube: &Kube, service: &str, to: Option<u64>) -> Result<Revision, KubeError> {
    let err = |message: String| KubeError::Rollback {
        service: service.into(),
        message,
    };
    let current = kube
        .api::<Deployment>()
        .get_opt(service)
        .await
        .map_err(|e| KubeError::api(format!("get deployment {service}"), e))?
        .ok_or_else(|| {
            err(format!(
                "no deployment {service} in namespace {}",
                kube.namespace
            ))
        })?;
    let cur_rev = revision(&current.metadata).ok_or_else(|| {
        err("the deployment has no revision yet (is the controller-manager running?)".into())
    })?;
    let hist = history(kube, service).await?;
    let (rev, rs) = match to {
        Some(n) if n == cur_rev => return Err(err(format!("revision {n} is the current one"))),
        Some(n) => hist
            .into_iter()
            .find(|(r, _)| r.number == n)
            .ok_or_else(|| {
                err(format!(
                    "no revision {n} (the Deployment keeps its last 10)"
                ))
            })?,
        None => hist
            .into_iter()
            .find(|(r, _)| r.number < cur_rev)
            .ok_or_else(|| {
                err(format!(
                    "revision {cur_rev} is the first one kept; nothing to go back to"
                ))
            })?,
    };
    let mut template = rs
        .spec
        .and_then(|s| s.template)
        .ok_or_else(|| err("its ReplicaSet has no pod template".into()))?;
    if let Some(labels) = template.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        labels.remove("pod-template-hash");
    }
    let spec = current.spec.clone().unwrap_or_default();
    let mut annotations = BTreeMap::new();
    annotations.insert(VERSION_ANNOTATION.to_owned(), rev.version.clone());
    let d = Deployment {
        metadata: ObjectMeta {
            name: Some(service.into()),
            labels: current.metadata.labels.clone(),
            annotations: Some(annotations),
            ..Default::default()
        },
        spec: Some(DeploymentSpec {
            replicas: spec.replicas,
            revision_history_limit: spec.revision_history_limit,
            selector: spec.selector,
            template,
            ..Default::default()
        }),
        ..Default::default()
    };
    kube.apply(&d).await?;
    Ok(rev)
}
