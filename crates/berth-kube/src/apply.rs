//! The connection to a cluster and server-side apply under the one field manager
//! ([`crate::FIELD_MANAGER`]): every object is checked against what the server has
//! ([`crate::version`]) before the first one is sent; conflicts with other managers are
//! reported with the manager and the field, and taken over only when asked
//! (`--force-conflicts`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::path::PathBuf;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::version::{ServerInfo, parse_minor};
use crate::{FIELD_MANAGER, KubeError};

/// Where to connect and how to apply.
#[derive(Debug, Clone, Default)]
pub struct KubeOptions {
    /// The kubeconfig file (default: KUBECONFIG, else ~/.kube/config).
    pub kubeconfig: Option<PathBuf>,
    /// The context (default: the kubeconfig's current one).
    pub context: Option<String>,
    /// The namespace (default: the context's, else `default`).
    pub namespace: Option<String>,
    /// Take over fields other managers own.
    pub force_conflicts: bool,
    /// berth's network settings: the proxy (unless the kubeconfig's cluster names its
    /// own `proxy-url`), NO_PROXY, and extra CAs trusted beside the kubeconfig's.
    pub network: berth_net::Network,
}

/// A connected cluster, its server known.
#[derive(Clone)]
pub struct Kube {
    /// The client.
    pub client: Client,
    /// The namespace berth works in.
    pub namespace: String,
    /// What the server has.
    pub server: ServerInfo,
    force: bool,
}

/// The apiVersions whose kinds berth discovers (everything it applies).
const API_VERSIONS: &[&str] = &["v1", "apps/v1", "policy/v1", "policy/v1beta1"];

impl Kube {
    /// Loads the kubeconfig, connects, and learns the server's version and APIs.
    pub async fn connect(opts: &KubeOptions) -> Result<Kube, KubeError> {
        let kopts = KubeConfigOptions {
            context: opts.context.clone(),
            ..Default::default()
        };
        let kc = match &opts.kubeconfig {
            Some(path) => Kubeconfig::read_from(path)
                .map_err(|e| KubeError::Connect(format!("kubeconfig {}: {e}", path.display())))?,
            None => {
                Kubeconfig::read().map_err(|e| KubeError::Connect(format!("kubeconfig: {e}")))?
            }
        };
        let own_proxy = cluster_proxy(&kc, opts.context.as_deref());
        let mut config = Config::from_custom_kubeconfig(kc, &kopts)
            .await
            .map_err(|e| {
                KubeError::Connect(format!(
                    "kubeconfig{}: {e}",
                    opts.context
                        .as_deref()
                        .map(|c| format!(" context {c}"))
                        .unwrap_or_default()
                ))
            })?;
        with_network(&mut config, own_proxy, &opts.network)?;
        let namespace = opts
            .namespace
            .clone()
            .unwrap_or_else(|| config.default_namespace.clone());
        if !crate::config::valid_label(&namespace) {
            return Err(KubeError::Connect(format!(
                "{namespace:?} is not a namespace name"
            )));
        }
        let url = config.cluster_url.to_string();
        let client = Client::try_from(config)
            .map_err(|e| KubeError::Connect(format!("client for {url}: {e}")))?;
        let server = discover(&client)
            .await
            .map_err(|e| KubeError::Connect(format!("{url}: {}", with_causes(&e))))?;
        Ok(Kube {
            client,
            namespace,
            server,
            force: opts.force_conflicts,
        })
    }

    /// An Api for namespaced kind `K` in berth's namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Refuses the objects (as they would be sent) if the server lacks an API or field.
    pub fn check<K: Serialize>(&self, objects: &[&K]) -> Result<(), KubeError> {
        for o in objects {
            let v = serde_json::to_value(o).expect("k8s objects serialize");
            self.server.check(&v)?;
        }
        Ok(())
    }

    /// Creates the namespace (by server-side apply) unless it is there.
    pub async fn ensure_namespace(&self) -> Result<(), KubeError> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        if api
            .get_opt(&self.namespace)
            .await
            .map_err(|e| KubeError::api(format!("get namespace {}", self.namespace), e))?
            .is_some()
        {
            return Ok(());
        }
        let ns = Namespace {
            metadata: kube::api::ObjectMeta {
                name: Some(self.namespace.clone()),
                ..Default::default()
            },
            ..Default::default()
        };
        api.patch(
            &self.namespace,
            &PatchParams::apply(FIELD_MANAGER),
            &Patch::Apply(&ns),
        )
        .await
        .map_err(|e| KubeError::api(format!("create namespace {}", self.namespace), e))?;
        Ok(())
    }

    /// Server-side applies `obj` in berth's namespace (checked against the server first).
    pub async fn apply<K>(&self, obj: &K) -> Result<K, KubeError>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
            + Clone
            + Debug
            + Serialize
            + DeserializeOwned,
    {
        self.apply_forced(obj, self.force).await
    }

    /// [`Kube::apply`], forcing conflicts or not regardless of the options.
    pub async fn apply_forced<K>(&self, obj: &K, force: bool) -> Result<K, KubeError>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
            + Clone
            + Debug
            + Serialize
            + DeserializeOwned,
    {
        self.check(&[obj])?;
        let kind = K::kind(&()).to_string();
        let name = obj.meta().name.clone().unwrap_or_default();
        let mut pp = PatchParams::apply(FIELD_MANAGER);
        if force {
            pp = pp.force();
        }
        self.api::<K>()
            .patch(&name, &pp, &Patch::Apply(obj))
            .await
            .map_err(|e| conflict_or(e, &kind, &name))
    }
}

impl Kube {
    /// Server-side applies `obj` (JSON with `apiVersion`, `kind` and `metadata.name`) in
    /// berth's namespace as a resource named `plural`: for kinds whose apiVersion is
    /// chosen by the server's version ([`crate::version::APIS`]), which k8s-openapi has
    /// only in its newest form. Checked against the server first.
    pub async fn apply_value(
        &self,
        obj: &serde_json::Value,
        plural: &str,
    ) -> Result<serde_json::Value, KubeError> {
        use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
        self.server.check(obj)?;
        let av = obj["apiVersion"].as_str().unwrap_or_default();
        let kind = obj["kind"].as_str().unwrap_or_default();
        let name = obj["metadata"]["name"].as_str().unwrap_or_default();
        let (group, version) = av.rsplit_once('/').unwrap_or(("", av));
        let ar =
            ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural);
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), &self.namespace, &ar);
        let mut pp = PatchParams::apply(FIELD_MANAGER);
        if self.force {
            pp = pp.force();
        }
        let out = api
            .patch(name, &pp, &Patch::Apply(obj))
            .await
            .map_err(|e| conflict_or(e, kind, name))?;
        Ok(serde_json::to_value(out).expect("objects serialize"))
    }
}

/// `e` and its causes (a TLS refusal is several levels down a connect error).
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let s = c.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = c.source();
    }
    out
}

/// The `proxy-url` of the cluster the context (or the current one) names.
fn cluster_proxy(kc: &Kubeconfig, context: Option<&str>) -> Option<String> {
    let context = context.or(kc.current_context.as_deref())?;
    let cluster = kc
        .contexts
        .iter()
        .find(|c| c.name == context)?
        .context
        .as_ref()?
        .cluster
        .clone();
    kc.clusters
        .iter()
        .find(|c| c.name == cluster)?
        .cluster
        .as_ref()?
        .proxy_url
        .clone()
        .filter(|p| !p.is_empty())
}

/// berth's network settings on the client's config, as every other client of berth has
/// them: the kubeconfig's own `proxy-url` wins; else berth's proxy for the server's
/// address, unless berth's NO_PROXY (hosts, suffixes, CIDRs, ports) excludes it. (kube's
/// loader reads HTTPS_PROXY and NO_PROXY by its own rules; they are replaced here.)
/// Extra CAs are trusted beside the kubeconfig's CA, or beside the host's roots when the
/// kubeconfig names none.
fn with_network(
    config: &mut Config,
    own_proxy: Option<String>,
    network: &berth_net::Network,
) -> Result<(), KubeError> {
    let url = config.cluster_url.clone();
    let https = url.scheme_str() != Some("http");
    let host = url.host().unwrap_or_default().trim_matches(['[', ']']);
    let port = url.port_u16().unwrap_or(if https { 443 } else { 80 });
    let proxy = match own_proxy {
        Some(p) => Some(p),
        None => network
            .proxies
            .proxy_for(if https { "https" } else { "http" }, host, port)
            .map(str::to_owned),
    };
    config.proxy_url =
        match proxy {
            None => None,
            Some(p) => Some(p.parse().map_err(|e| {
                KubeError::Connect(format!("proxy {p:?} for {url} is not a URL: {e}"))
            })?),
        };
    let extra = network.extra_roots().map_err(KubeError::Connect)?;
    if extra.is_empty() {
        return Ok(());
    }
    // kube refuses the whole set for one root webpki cannot read: the host's bundle is
    // filtered, berth's own bundles must be good.
    let usable = |der: &Vec<u8>| {
        rustls::RootCertStore::empty()
            .add(rustls_pki_types::CertificateDer::from(der.as_slice()))
            .is_ok()
    };
    let mut roots = match config.root_cert.take() {
        Some(r) => r,
        None => ders(
            &berth_net::system_roots().unwrap_or_default(),
            "the host's CA roots",
        )?
        .into_iter()
        .filter(usable)
        .collect(),
    };
    for (pem, path) in extra.iter().zip(&network.ca_bundles) {
        let found = ders(pem, &path.display().to_string())?;
        if found.is_empty() || !found.iter().all(usable) {
            return Err(KubeError::Connect(format!(
                "CA bundle {}: no PEM certificate, or one that cannot be a root",
                path.display()
            )));
        }
        roots.extend(found);
    }
    config.root_cert = Some(roots);
    Ok(())
}

/// The DER certificates of a PEM bundle.
fn ders(pem: &[u8], what: &str) -> Result<Vec<Vec<u8>>, KubeError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem)
        .map(|c| c.map(|c| c.to_vec()))
        .collect::<Result<_, _>>()
        .map_err(|e| KubeError::Connect(format!("{what}: not PEM certificates: {e}")))
}

/// The server's version and the kinds of [`API_VERSIONS`].
async fn discover(client: &Client) -> Result<ServerInfo, kube::Error> {
    let info = client.apiserver_version().await?;
    let mut kinds = BTreeMap::new();
    for av in API_VERSIONS {
        let list = if av.contains('/') {
            client.list_api_group_resources(av).await
        } else {
            client.list_core_api_resources(av).await
        };
        let list = match list {
            Ok(l) => l,
            Err(kube::Error::Api(s)) if s.is_not_found() => continue,
            Err(e) => return Err(e),
        };
        let set: BTreeSet<String> = list
            .resources
            .into_iter()
            .filter(|r| !r.name.contains('/'))
            .map(|r| r.kind)
            .collect();
        kinds.insert((*av).to_owned(), set);
    }
    Ok(ServerInfo {
        minor: parse_minor(&info.minor).unwrap_or(0),
        git_version: info.git_version,
        kinds,
    })
}

/// A conflict becomes [`KubeError::Conflict`] with each (manager, field); anything else
/// stays an API error.
fn conflict_or(e: kube::Error, kind: &str, name: &str) -> KubeError {
    if let kube::Error::Api(s) = &e
        && s.is_conflict()
    {
        let mut conflicts: Vec<(String, String)> = s
            .details
            .iter()
            .flat_map(|d| d.causes.iter())
            .filter(|c| c.reason == "FieldManagerConflict")
            .map(|c| (manager_of(&c.message), c.field.clone()))
            .collect();
        if conflicts.is_empty() {
            // Older servers put it all in the message: `conflict with "kubectl": .spec.replicas`.
            for part in s.message.split("conflict with ").skip(1) {
                let manager = manager_of(part);
                let field = part
                    .split_once(": ")
                    .map(|(_, f)| f.split([',', '\n']).next().unwrap_or(f).trim().to_owned())
                    .unwrap_or_default();
                conflicts.push((manager, field));
            }
        }
        if !conflicts.is_empty() {
            return KubeError::Conflict {
                kind: kind.into(),
                name: name.into(),
                conflicts,
            };
        }
    }
    KubeError::api(format!("apply {kind} {name}"), e)
}

/// The quoted manager in `conflict with "kubectl" using apps/v1`.
fn manager_of(message: &str) -> String {
    message
        .split('"')
        .nth(1)
        .map(str::to_owned)
        .unwrap_or_else(|| message.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_conflict_only_in_the_message_is_still_named() {
        let status = kube::core::Status::failure(
            "Apply failed with 1 conflict: conflict with \"kubectl\": .spec.replicas",
            "Conflict",
        )
        .with_code(409);
        match conflict_or(kube::Error::Api(status.boxed()), "Deployment", "web") {
            KubeError::Conflict { conflicts, .. } => {
                assert_eq!(
                    conflicts,
                    [("kubectl".to_owned(), ".spec.replicas".to_owned())]
                )
            }
            other => panic!("{other}"),
        }
        let other = kube::core::Status::failure("nope", "Forbidden").with_code(403);
        let e = conflict_or(kube::Error::Api(other.boxed()), "Deployment", "web");
        assert!(e.to_string().starts_with("apply Deployment web:"), "{e}");
    }

    #[test]
    fn managers_are_read_from_causes() {
        assert_eq!(
            manager_of("conflict with \"kubectl\" using apps/v1"),
            "kubectl"
        );
        assert_eq!(manager_of("odd"), "odd");
    }
}
