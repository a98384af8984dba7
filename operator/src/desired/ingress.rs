//! The Ingress, only when `spec.ingress` asks for one. TLS at the ingress
//! uses the registry's own serving Secret (its certificate names the ingress
//! host); the backend is the Service's HTTPS port.

use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule,
    IngressServiceBackend, IngressSpec, IngressTLS, ServiceBackendPort,
};

use crate::crd::Registry;
use crate::desired::deployment::PORT_NAME;
use crate::desired::owner;
use crate::names::Names;

pub fn ingress(registry: &Registry, names: &Names) -> Option<Ingress> {
    let wanted = registry.spec.ingress.as_ref()?;
    let mut metadata = owner::child_meta(registry, names, names.ingress(), true);
    if !wanted.annotations.is_empty() {
        metadata.annotations = Some(wanted.annotations.clone());
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::IngressSpec as WantedIngress;
    use crate::fixtures;

    #[test]
    fn no_ingress_unless_asked() {
        assert_eq!(ingress(&fixtures::registry(), &fixtures::names()), None);
    }

    #[test]
    fn an_ingress_routes_its_host_to_the_service_with_the_registry_certificate() {
        let registry = fixtures::registry_with(|s| {
            s.ingress = Some(WantedIngress {
                host: "registry.example.com".into(),
                class_name: Some("nginx".into()),
                annotations: [(
                    "nginx.ingress.kubernetes.io/backend-protocol".to_owned(),
                    "HTTPS".to_owned(),
                )]
                .into(),
            })
        });
        let ing = ingress(&registry, &fixtures::names()).expect("ingress");
        assert!(
            ing.metadata
                .annotations
                .expect("annotations")
                .contains_key("nginx.ingress.kubernetes.io/backend-protocol")
        );
        let spec = ing.spec.expect("spec");
        assert_eq!(spec.ingress_class_name.as_deref(), Some("nginx"));
        let tls = &spec.tls.expect("tls")[0];
        assert_eq!(tls.secret_name.as_deref(), Some("hub-tls"));
        assert_eq!(tls.hosts, Some(vec!["registry.example.com".to_owned()]));
        let rule = &spec.rules.expect("rules")[0];
        assert_eq!(rule.host.as_deref(), Some("registry.example.com"));
        let backend = rule.http.as_ref().expect("http").paths[0]
            .backend
            .service
            .clone()
            .expect("service");
        assert_eq!(backend.name, "hub");
    }
}
