//! Every name the operator derives from a `Registry`: its child objects, the
//! DNS names of its Service, and the endpoints clients use.
//!
//! Kept in one place because the same names appear in the certificate's
//! SANs, the child objects, the node agent's files and the status; if two
//! modules spelled them separately, a client would eventually meet a
//! certificate that does not name the host it dialled.

use crate::crd::{Registry, RegistrySpec};

/// Names for one `Registry` (`name` in `namespace`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Names {
    pub name: String,
    pub namespace: String,
    /// The cluster's DNS domain (`cluster.local` unless the cluster says
    /// otherwise); the operator is told it by a flag.
    pub cluster_domain: String,
}

impl Names {
    pub fn new(
        name: impl Into<String>,
        namespace: impl Into<String>,
        cluster_domain: impl Into<String>,
    ) -> Self {
        Self {
            name: name.into(),
            namespace: namespace.into(),
            cluster_domain: cluster_domain.into(),
        }
    }

    /// Names for a Registry object read from the cluster, which always has a
    /// name and a namespace (the resource is namespaced).
    pub fn of(registry: &Registry, cluster_domain: &str) -> Option<Self> {
        Some(Self::new(
            registry.metadata.name.clone()?,
            registry.metadata.namespace.clone()?,
            cluster_domain,
        ))
    }

    /// The Deployment and the Service share the Registry's name.
    pub fn deployment(&self) -> String {
        self.name.clone()
    }

    pub fn service(&self) -> String {
        self.name.clone()
    }

    /// The kubernetes.io/tls Secret the registry serves from.
    pub fn tls_secret(&self) -> String {
        format!("{}-tls", self.name)
    }

    /// The Secret holding the per-Registry CA's certificate and private key
    /// (SelfSigned mode). Never mounted into the registry pod.
    pub fn ca_secret(&self) -> String {
        format!("{}-ca-key", self.name)
    }

    /// The ConfigMap with the CA bundle (`ca.crt`) clients and nodes trust.
    pub fn ca_config_map(&self) -> String {
        format!("{}-ca", self.name)
    }

    pub fn data_claim(&self) -> String {
        format!("{}-data", self.name)
    }

    pub fn ingress(&self) -> String {
        self.name.clone()
    }

    /// The ServiceAccount the registry pods run as (Kubernetes mode: the
    /// identity that calls TokenReview and SubjectAccessReview).
    pub fn service_account(&self) -> String {
        format!("{}-registry", self.name)
    }

    /// The ClusterRoleBinding that lets the registry's ServiceAccount call
    /// TokenReview and SubjectAccessReview. Cluster-scoped, so it carries
    /// the namespace; `:` cannot occur in either name, so no two Registries
    /// share one.
    pub fn auth_delegator_binding(&self) -> String {
        format!("berth-registry:{}:{}", self.namespace, self.name)
    }

    /// The ConfigMap holding the registry's auth config file.
    pub fn auth_config_map(&self) -> String {
        format!("{}-auth", self.name)
    }

    /// The ConfigMap handing GC its retention rules and the images in use.
    pub fn gc_config_map(&self) -> String {
        format!("{}-gc", self.name)
    }

    /// The ConfigMap holding the registry's notification config file.
    pub fn notify_config_map(&self) -> String {
        format!("{}-notify", self.name)
    }

    /// The ConfigMap holding the registry's quota config file.
    pub fn quota_config_map(&self) -> String {
        format!("{}-quota", self.name)
    }

    /// The ConfigMap holding the registry's mirror (pull-through cache)
    /// config file.
    pub fn mirror_config_map(&self) -> String {
        format!("{}-mirror", self.name)
    }

    /// The Secret holding the token signing key and the accepted public
    /// keys.
    pub fn token_keys_secret(&self) -> String {
        format!("{}-token-keys", self.name)
    }

    /// The Secret holding the key that signs web UI session cookies.
    pub fn ui_session_secret(&self) -> String {
        format!("{}-ui-session", self.name)
    }

    /// The cert-manager Certificate (CertManager mode).
    pub fn certificate(&self) -> String {
        self.name.clone()
    }

    /// Every DNS name the Service answers to inside the cluster, shortest
    /// first: `<svc>`, `<svc>.<ns>`, `<svc>.<ns>.svc`,
    /// `<svc>.<ns>.svc.<cluster domain>`.
    pub fn service_dns_names(&self) -> Vec<String> {
        let svc = self.service();
        let ns = &self.namespace;
        vec![
            svc.clone(),
            format!("{svc}.{ns}"),
            format!("{svc}.{ns}.svc"),
            format!("{svc}.{ns}.svc.{}", self.cluster_domain),
        ]
    }

    /// The fully qualified Service name.
    pub fn service_fqdn(&self) -> String {
        format!(
            "{}.{}.svc.{}",
            self.service(),
            self.namespace,
            self.cluster_domain
        )
    }

    /// The host name nodes and pods use in image references: the one the
    /// spec names, or else the Service's fully qualified name.
    pub fn node_host(&self, spec: &RegistrySpec) -> String {
        spec.node_trust
            .host_name
            .clone()
            .unwrap_or_else(|| self.service_fqdn())
    }

    /// The Secret the registry serves from: the user's in Secret mode, the
    /// operator's `<name>-tls` otherwise (SelfSigned, or cert-manager writing
    /// into it).
    pub fn serving_secret(&self, spec: &RegistrySpec) -> String {
        match (&spec.tls.mode, &spec.tls.secret_name) {
            (crate::crd::TlsMode::Secret, Some(user)) => user.clone(),
            _ => self.tls_secret(),
        }
    }

    /// Every name the serving certificate must carry, without repeats: the
    /// Service's DNS forms, its ClusterIP (what nodes dial), the node host
    /// name, the ingress host and the spec's extra names.
    pub fn certificate_names(&self, spec: &RegistrySpec, cluster_ip: Option<&str>) -> Vec<String> {
        let mut names = self.service_dns_names();
        names.extend(
            cluster_ip
                .filter(|ip| ip.parse::<std::net::IpAddr>().is_ok())
                .map(str::to_owned),
        );
        names.push(self.node_host(spec));
        names.extend(spec.ingress.as_ref().map(|i| i.host.clone()));
        names.extend(spec.tls.extra_names.iter().cloned());
        let mut seen = std::collections::BTreeSet::new();
        names.retain(|n| seen.insert(n.to_ascii_lowercase()));
        names
    }

    /// Every `host` or `host:port` a pod may write before the repository in
    /// `image:`, for which nodes are told to trust the CA: the node host
    /// first (`status.endpoints.node`), then the Service's DNS forms that an
    /// image reference reads as a registry host. A bare `hub` on port 443
    /// is left out: `hub/app:v1` means `docker.io/hub/app:v1`.
    pub fn node_trust_hosts(&self, spec: &RegistrySpec) -> Vec<String> {
        let port = spec.service.port;
        let mut hosts = vec![host_port(&self.node_host(spec), port)];
        for name in self.service_dns_names() {
            let host = host_port(&name, port);
            if host.contains(['.', ':']) {
                hosts.push(host);
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        hosts.retain(|h| seen.insert(h.to_ascii_lowercase()));
        hosts
    }

    /// Where clients reach the registry, as `host` or `host:port` (no scheme),
    /// the form an image reference starts with.
    pub fn endpoints(&self, spec: &RegistrySpec) -> crate::crd::Endpoints {
        let port = spec.service.port;
        let external = spec.ingress.as_ref().map(|ingress| ingress.host.clone());
        let node = host_port(&self.node_host(spec), port);
        crate::crd::Endpoints {
            internal: Some(host_port(&self.service_fqdn(), port)),
            ui: spec
                .ui
                .enabled
                .then(|| format!("https://{}/ui/", external.as_deref().unwrap_or(&node))),
            external,
            node: Some(node),
        }
    }
}

/// `https://<ip>:<port>` (IPv6 in brackets): where a node's runtime
/// connects for the registry. `None` when `cluster_ip` is not an address
/// (`None` for a headless Service, or not assigned yet).
pub fn upstream(cluster_ip: &str, port: i32) -> Option<String> {
    let ip: std::net::IpAddr = cluster_ip.parse().ok()?;
    let port = u16::try_from(port).ok()?;
    Some(format!("https://{}", std::net::SocketAddr::new(ip, port)))
}

/// `host` alone on the HTTPS port, `host:port` otherwise: what a client
/// writes before the repository in an image reference.
pub fn host_port(host: &str, port: i32) -> String {
    if port == 443 {
        host.to_owned()
    } else {
        format!("{host}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::IngressSpec;

    fn names() -> Names {
        Names::new("hub", "team", "cluster.local")
    }

    #[test]
    fn service_dns_names_cover_every_form_a_pod_may_use() {
        assert_eq!(
            names().service_dns_names(),
            [
                "hub",
                "hub.team",
                "hub.team.svc",
                "hub.team.svc.cluster.local"
            ]
        );
    }

    #[test]
    fn endpoints_omit_the_default_https_port() {
        let endpoints = names().endpoints(&RegistrySpec::default());
        assert_eq!(
            endpoints.internal.as_deref(),
            Some("hub.team.svc.cluster.local")
        );
        assert_eq!(
            endpoints.node.as_deref(),
            Some("hub.team.svc.cluster.local")
        );
        assert_eq!(endpoints.external, None);
    }

    #[test]
    fn endpoints_carry_a_non_default_port_and_the_chosen_node_host() {
        let mut spec = RegistrySpec::default();
        spec.service.port = 5000;
        spec.node_trust.host_name = Some("hub.berth.internal".into());
        spec.ingress = Some(IngressSpec {
            host: "registry.example.com".into(),
            class_name: None,
            annotations: Default::default(),
        });
        let endpoints = names().endpoints(&spec);
        assert_eq!(
            endpoints.internal.as_deref(),
            Some("hub.team.svc.cluster.local:5000")
        );
        assert_eq!(endpoints.node.as_deref(), Some("hub.berth.internal:5000"));
        assert_eq!(endpoints.external.as_deref(), Some("registry.example.com"));
    }

    #[test]
    fn the_certificate_names_every_way_in_once() {
        let mut spec = RegistrySpec::default();
        spec.node_trust.host_name = Some("hub.berth.internal".into());
        spec.ingress = Some(IngressSpec {
            host: "registry.example.com".into(),
            class_name: None,
            annotations: Default::default(),
        });
        spec.tls.extra_names = vec!["hub.team".into(), "192.0.2.7".into()];
        assert_eq!(
            names().certificate_names(&spec, Some("10.96.0.42")),
            [
                "hub",
                "hub.team",
                "hub.team.svc",
                "hub.team.svc.cluster.local",
                "10.96.0.42",
                "hub.berth.internal",
                "registry.example.com",
                "192.0.2.7"
            ]
        );
    }

    #[test]
    fn a_headless_or_unassigned_cluster_ip_is_left_out() {
        let spec = RegistrySpec::default();
        assert_eq!(names().certificate_names(&spec, Some("None")).len(), 4);
        assert_eq!(names().certificate_names(&spec, None).len(), 4);
    }

    #[test]
    fn nodes_trust_every_host_form_an_image_reference_can_carry() {
        assert_eq!(
            names().node_trust_hosts(&RegistrySpec::default()),
            ["hub.team.svc.cluster.local", "hub.team", "hub.team.svc"]
        );
        let mut spec = RegistrySpec::default();
        spec.service.port = 5000;
        spec.node_trust.host_name = Some("hub.berth.internal".into());
        assert_eq!(
            names().node_trust_hosts(&spec),
            [
                "hub.berth.internal:5000",
                "hub:5000",
                "hub.team:5000",
                "hub.team.svc:5000",
                "hub.team.svc.cluster.local:5000"
            ]
        );
    }

    #[test]
    fn the_upstream_is_the_cluster_ip_with_its_port() {
        assert_eq!(
            upstream("10.96.0.42", 443).as_deref(),
            Some("https://10.96.0.42:443")
        );
        assert_eq!(
            upstream("fd00::2a", 5000).as_deref(),
            Some("https://[fd00::2a]:5000")
        );
        assert_eq!(upstream("None", 443), None);
        assert_eq!(upstream("", 443), None);
    }

    #[test]
    fn secret_mode_serves_from_the_users_secret() {
        let mut spec = RegistrySpec::default();
        assert_eq!(names().serving_secret(&spec), "hub-tls");
        spec.tls.mode = crate::crd::TlsMode::Secret;
        spec.tls.secret_name = Some("corp-cert".into());
        assert_eq!(names().serving_secret(&spec), "corp-cert");
    }

    #[test]
    fn child_object_names_are_derived_from_the_registry_name() {
        let n = names();
        assert_eq!(n.tls_secret(), "hub-tls");
        assert_eq!(n.ca_config_map(), "hub-ca");
        assert_eq!(n.ca_secret(), "hub-ca-key");
        assert_eq!(n.data_claim(), "hub-data");
    }
}
