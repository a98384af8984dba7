//! The Ingress, only when `spec.ingress` asks for one. TLS at the ingress
//! uses the registry's own serving Secret (its certificate names the ingress
//! host); the backend is the Service's HTTPS port, so the controller
//! re-encrypts.
//!
//! The Ingress carries, unless the spec sets the same key, the annotations
//! that ingress-nginx and Traefik need to carry a registry's traffic
//! ([`default_annotations`]). Both sets go on every Ingress whatever its
//! class: a class name is the cluster's choice and says nothing certain
//! about the controller behind it, and a controller ignores annotations
//! that are not its own.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule,
    IngressServiceBackend, IngressSpec, IngressTLS, ServiceBackendPort,
};

use crate::crd::{Registry, TlsMode};
use crate::desired::deployment::PORT_NAME;
use crate::desired::owner;
use crate::names::Names;

const NGINX: &str = "nginx.ingress.kubernetes.io/";
const TRAEFIK: &str = "traefik.ingress.kubernetes.io/";

/// Seconds ingress-nginx waits between two reads or writes on the backend
/// connection: long enough for the registry to check the digest of a large
/// upload after its last byte (nginx's default, 60 s, is not).
const NGINX_PROXY_TIMEOUT_SECONDS: &str = "900";

pub fn ingress(registry: &Registry, names: &Names) -> Option<Ingress> {
    let wanted = registry.spec.ingress.as_ref()?;
    let mut metadata = owner::child_meta(registry, names, names.ingress(), true);
    let mut annotations = default_annotations(registry, names);
    // The spec's own values win, key by key.
    annotations.extend(
        wanted
            .annotations
            .iter()
            .map(|(k, v)| (k.clone(), v.clone())),
    );
    metadata.annotations = Some(annotations);
    let backend = IngressBackend {
        service: Some(IngressServiceBackend {
            name: names.service(),
            port: Some(ServiceBackendPort {
                name: Some(PORT_NAME.to_owned()),
                number: None,
            }),
        }),
        resource: None,
    };
    Some(Ingress {
        metadata,
        spec: Some(IngressSpec {
            ingress_class_name: wanted.class_name.clone(),
            tls: Some(vec![IngressTLS {
                hosts: Some(vec![wanted.host.clone()]),
                secret_name: Some(names.serving_secret(&registry.spec)),
            }]),
            rules: Some(vec![IngressRule {
                host: Some(wanted.host.clone()),
                http: Some(HTTPIngressRuleValue {
                    paths: vec![HTTPIngressPath {
                        path: Some("/".to_owned()),
                        path_type: "Prefix".to_owned(),
                        backend,
                    }],
                }),
            }]),
            default_backend: None,
        }),
        status: None,
    })
}

/// What ingress-nginx and Traefik need to proxy a registry, as annotations.
///
/// ingress-nginx: the backend speaks HTTPS; no body limit (its default,
/// 1 MiB, refuses almost every layer with 413); uploads and downloads
/// streamed, not spooled to the controller's disk first; backend timeouts
/// that outlast a large upload's digest check. With the operator's own CA
/// (SelfSigned), also verify the backend: the serving Secret holds `ca.crt`
/// (old and new CA during a rotation) and the certificate names
/// `<service>.<namespace>.svc`. In the other modes the Secret may have no
/// `ca.crt`, so verification is left to the spec's annotations.
///
/// Traefik: the router serves HTTPS only. Its backend trust (a
/// ServersTransport) and its entry point's read timeout are set on the
/// Service and on Traefik itself, not here (see the operator's README).
pub fn default_annotations(registry: &Registry, names: &Names) -> BTreeMap<String, String> {
    let mut a = BTreeMap::new();
    let mut put = |prefix: &str, key: &str, value: String| {
        a.insert(format!("{prefix}{key}"), value);
    };
    put(NGINX, "backend-protocol", "HTTPS".to_owned());
    put(NGINX, "proxy-body-size", "0".to_owned());
    put(NGINX, "proxy-request-buffering", "off".to_owned());
    put(NGINX, "proxy-buffering", "off".to_owned());
    put(
        NGINX,
        "proxy-read-timeout",
        NGINX_PROXY_TIMEOUT_SECONDS.to_owned(),
    );
    put(
        NGINX,
        "proxy-send-timeout",
        NGINX_PROXY_TIMEOUT_SECONDS.to_owned(),
    );
    if registry.spec.tls.mode == TlsMode::SelfSigned {
        put(NGINX, "proxy-ssl-verify", "on".to_owned());
        put(
            NGINX,
            "proxy-ssl-secret",
            format!(
                "{}/{}",
                names.namespace,
                names.serving_secret(&registry.spec)
            ),
        );
        put(
            NGINX,
            "proxy-ssl-name",
            format!("{}.{}.svc", names.service(), names.namespace),
        );
        put(NGINX, "proxy-ssl-server-name", "on".to_owned());
    }
    put(TRAEFIK, "router.tls", "true".to_owned());
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::IngressSpec as WantedIngress;
    use crate::fixtures;

    fn with_ingress(edit: impl FnOnce(&mut crate::crd::RegistrySpec)) -> Registry {
        fixtures::registry_with(|s| {
            s.ingress = Some(WantedIngress {
                host: "registry.example.com".into(),
                class_name: Some("nginx".into()),
                annotations: BTreeMap::new(),
            });
            edit(s);
        })
    }

    fn annotations_of(registry: &Registry) -> BTreeMap<String, String> {
        ingress(registry, &fixtures::names())
            .expect("ingress")
            .metadata
            .annotations
            .expect("annotations")
    }

    #[test]
    fn no_ingress_unless_asked() {
        assert_eq!(ingress(&fixtures::registry(), &fixtures::names()), None);
    }

    #[test]
    fn an_ingress_routes_its_host_to_the_service_with_the_registry_certificate() {
        let ing = ingress(&with_ingress(|_| {}), &fixtures::names()).expect("ingress");
        let spec = ing.spec.expect("spec");
        assert_eq!(spec.ingress_class_name.as_deref(), Some("nginx"));
        let tls = &spec.tls.expect("tls")[0];
        assert_eq!(tls.secret_name.as_deref(), Some("hub-tls"));
        assert_eq!(tls.hosts, Some(vec!["registry.example.com".to_owned()]));
        let rule = &spec.rules.expect("rules")[0];
        assert_eq!(rule.host.as_deref(), Some("registry.example.com"));
        let path = &rule.http.as_ref().expect("http").paths[0];
        assert_eq!(
            (path.path.as_deref(), path.path_type.as_str()),
            (Some("/"), "Prefix")
        );
        let backend = path.backend.service.clone().expect("service");
        assert_eq!(backend.name, "hub");
        assert_eq!(
            backend.port.and_then(|p| p.name).as_deref(),
            Some(PORT_NAME)
        );
    }

    #[test]
    fn ingress_nginx_proxies_to_https_with_no_body_limit_and_no_buffering() {
        let a = annotations_of(&with_ingress(|_| {}));
        for (key, value) in [
            ("backend-protocol", "HTTPS"),
            ("proxy-body-size", "0"),
            ("proxy-request-buffering", "off"),
            ("proxy-buffering", "off"),
            ("proxy-read-timeout", "900"),
            ("proxy-send-timeout", "900"),
        ] {
            assert_eq!(
                a.get(&format!("{NGINX}{key}")).map(String::as_str),
                Some(value),
                "{key}"
            );
        }
    }

    #[test]
    fn ingress_nginx_verifies_the_backend_with_the_operators_ca() {
        let a = annotations_of(&with_ingress(|_| {}));
        let get = |key: &str| a.get(&format!("{NGINX}{key}")).map(String::as_str);
        assert_eq!(get("proxy-ssl-verify"), Some("on"));
        assert_eq!(get("proxy-ssl-secret"), Some("team/hub-tls"));
        assert_eq!(get("proxy-ssl-server-name"), Some("on"));
        // A name the serving certificate carries.
        let name = get("proxy-ssl-name").expect("proxy-ssl-name");
        assert_eq!(name, "hub.team.svc");
        assert!(
            fixtures::names()
                .certificate_names(&with_ingress(|_| {}).spec, None)
                .iter()
                .any(|n| n == name)
        );
    }

    #[test]
    fn a_users_secret_may_have_no_ca_so_backend_verification_is_left_to_the_spec() {
        let registry = with_ingress(|s| {
            s.tls.mode = TlsMode::Secret;
            s.tls.secret_name = Some("mine".into());
        });
        let a = annotations_of(&registry);
        assert!(
            !a.keys()
                .any(|k| k.starts_with(&format!("{NGINX}proxy-ssl")))
        );
        assert_eq!(
            a.get(&format!("{NGINX}backend-protocol"))
                .map(String::as_str),
            Some("HTTPS")
        );
    }

    #[test]
    fn traefik_serves_the_registry_over_https_only() {
        let a = annotations_of(&with_ingress(|_| {}));
        assert_eq!(
            a.get(&format!("{TRAEFIK}router.tls")).map(String::as_str),
            Some("true")
        );
    }

    #[test]
    fn the_specs_annotations_override_the_defaults_key_by_key() {
        let registry = with_ingress(|s| {
            let wanted = s.ingress.as_mut().expect("ingress");
            wanted.annotations = [
                (format!("{NGINX}proxy-body-size"), "2g".to_owned()),
                (
                    format!("{TRAEFIK}router.entrypoints"),
                    "websecure".to_owned(),
                ),
            ]
            .into();
        });
        let a = annotations_of(&registry);
        assert_eq!(
            a.get(&format!("{NGINX}proxy-body-size"))
                .map(String::as_str),
            Some("2g")
        );
        assert_eq!(
            a.get(&format!("{TRAEFIK}router.entrypoints"))
                .map(String::as_str),
            Some("websecure")
        );
        assert_eq!(
            a.get(&format!("{NGINX}backend-protocol"))
                .map(String::as_str),
            Some("HTTPS")
        );
    }
}
