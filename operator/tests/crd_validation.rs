//! What the apiserver will accept and refuse, checked by evaluating the CRD's
//! CEL rules (`x-kubernetes-validations`) with kube's client-side CEL
//! evaluator, after applying the schema's defaults as the apiserver does.
//!
//! This checks rules and messages without a cluster; the OpenAPI part
//! (types, enums, patterns, bounds) is pinned by `crd_schema_shape` below and
//! enforced by a real apiserver in the integration tests.

use berth_operator::crdgen::schema;
use kube::core::cel::{ErrorKind, Validator, compile_schema};
use serde_json::{Value, json};

fn object(spec: Value) -> Value {
    json!({"apiVersion": "berth.dev/v1alpha1", "kind": "Registry", "metadata": {"name": "hub", "namespace": "team"}, "spec": spec})
}

/// The messages of every rule the object breaks; empty when it is accepted.
fn refusals(spec: Value) -> Vec<String> {
    refusals_on_update(spec, None)
}

fn refusals_on_update(spec: Value, old: Option<Value>) -> Vec<String> {
    let schema = schema().expect("schema");
    let old = old.map(object);
    match Validator::new().validate(&schema, &object(spec), old.as_ref()) {
        Ok(()) => Vec::new(),
        Err(errors) => errors
            .as_slice()
            .iter()
            .map(|e| {
                assert_eq!(
                    e.kind,
                    ErrorKind::ValidationFailure,
                    "rule `{}` did not evaluate: {}",
                    e.rule,
                    e.message
                );
                e.message.clone()
            })
            .collect(),
    }
}

fn assert_refused(spec: Value, message_part: &str) {
    let messages = refusals(spec.clone());
    assert!(
        messages.iter().any(|m| m.contains(message_part)),
        "expected `{message_part}` refusing {spec}, got {messages:?}"
    );
}

#[test]
fn every_cel_rule_compiles() {
    fn walk(node: &kube::core::cel::CompiledSchema, path: &str, errors: &mut Vec<String>) {
        errors.extend(
            node.compilation_errors()
                .iter()
                .map(|e| format!("{path}: {e}")),
        );
        for (name, child) in &node.properties {
            walk(child, &format!("{path}.{name}"), errors);
        }
        if let Some(items) = &node.items {
            walk(items, &format!("{path}[]"), errors);
        }
    }
    let compiled = compile_schema(&schema().expect("schema"));
    let mut errors = Vec::new();
    walk(&compiled, "", &mut errors);
    assert!(errors.is_empty(), "{errors:#?}");
}

#[test]
fn an_empty_spec_is_accepted() {
    assert_eq!(refusals(json!({})), Vec::<String>::new());
}

#[test]
fn storage_without_a_backend_is_refused() {
    assert_refused(json!({"storage": {}}), "exactly one backend");
}

#[test]
fn storage_with_two_backends_is_refused() {
    let spec = json!({"storage": {
        "filesystem": {"size": "1Gi"},
        "s3": {"bucket": "images", "region": "us-east-1", "credentialsSecret": {"name": "s3"}}
    }});
    assert_refused(spec, "exactly one backend");
}

#[test]
fn more_than_one_replica_on_a_filesystem_volume_is_refused() {
    assert_refused(json!({"replicas": 2}), "ReadWriteOnce");
}

#[test]
fn several_replicas_share_a_read_write_many_volume() {
    let spec = json!({"replicas": 3, "storage": {"filesystem": {"accessMode": "ReadWriteMany"}}});
    assert_eq!(refusals(spec), Vec::<String>::new());
}

#[test]
fn the_volume_access_mode_cannot_change() {
    let old = json!({"storage": {"filesystem": {"accessMode": "ReadWriteOnce"}}});
    let new = json!({"storage": {"filesystem": {"accessMode": "ReadWriteMany"}}});
    let got = refusals_on_update(new, Some(old));
    assert!(
        got.iter().any(|m| m.contains("accessMode cannot change")),
        "{got:?}"
    );
}

#[test]
fn several_replicas_on_object_storage_are_accepted() {
    let spec = json!({"replicas": 3, "storage": {"s3": {"bucket": "images", "region": "us-east-1", "credentialsSecret": {"name": "s3"}}}});
    assert_eq!(refusals(spec), Vec::<String>::new());
}

#[test]
fn secret_tls_mode_without_a_secret_name_is_refused() {
    assert_refused(json!({"tls": {"mode": "Secret"}}), "needs tls.secretName");
}

#[test]
fn secret_tls_mode_with_a_secret_name_is_accepted() {
    assert_eq!(
        refusals(json!({"tls": {"mode": "Secret", "secretName": "hub-cert"}})),
        Vec::<String>::new()
    );
}

#[test]
fn a_secret_name_outside_secret_mode_is_refused() {
    assert_refused(
        json!({"tls": {"secretName": "hub-cert"}}),
        "only used when tls.mode is Secret",
    );
}

#[test]
fn cert_manager_mode_without_an_issuer_is_refused() {
    assert_refused(
        json!({"tls": {"mode": "CertManager"}}),
        "needs tls.issuerRef",
    );
}

#[test]
fn cert_manager_mode_with_an_issuer_is_accepted() {
    let spec = json!({"tls": {"mode": "CertManager", "issuerRef": {"name": "corp-ca", "kind": "ClusterIssuer"}}});
    assert_eq!(refusals(spec), Vec::<String>::new());
}

#[test]
fn renew_before_not_shorter_than_duration_is_refused() {
    assert_refused(
        json!({"tls": {"duration": "24h", "renewBefore": "24h"}}),
        "renewBefore must be shorter",
    );
    assert_refused(
        json!({"tls": {"duration": "24h", "renewBefore": "48h"}}),
        "renewBefore must be shorter",
    );
}

#[test]
fn a_default_renew_before_longer_than_a_short_duration_is_refused() {
    // 720h (the default renewBefore) does not fit in a 48h certificate.
    assert_refused(
        json!({"tls": {"duration": "48h"}}),
        "renewBefore must be shorter",
    );
}

#[test]
fn a_certificate_shorter_than_two_minutes_is_refused() {
    assert_refused(
        json!({"tls": {"duration": "90s", "renewBefore": "30s"}}),
        "at least 2m",
    );
}

#[test]
fn a_node_port_on_a_cluster_ip_service_is_refused() {
    assert_refused(
        json!({"service": {"nodePort": 30443}}),
        "needs service.type NodePort",
    );
    assert_eq!(
        refusals(json!({"service": {"type": "NodePort", "nodePort": 30443}})),
        Vec::<String>::new()
    );
}

#[test]
fn htpasswd_auth_without_a_secret_is_refused() {
    assert_refused(
        json!({"auth": {"mode": "Htpasswd"}}),
        "needs auth.htpasswd.secretName",
    );
}

#[test]
fn a_full_htpasswd_spec_is_accepted() {
    let spec = json!({"auth": {
        "mode": "Htpasswd",
        "htpasswd": {"secretName": "users"},
        "policy": {
            "groups": {"devs": ["bob"]},
            "rules": [{"repositories": "team/*", "users": ["alice"], "groups": ["devs"], "actions": ["pull", "push"]}],
            "authenticated": ["pull"]
        },
        "anonymousPull": ["public/*"],
        "tokenTTL": "10m",
        "pullSecrets": {"namespaceSelector": {"matchLabels": {"berth.dev/pull": "true"}}}
    }});
    assert_eq!(refusals(spec), Vec::<String>::new());
}

#[test]
fn a_kubernetes_spec_with_pull_secrets_is_accepted() {
    let spec = json!({"auth": {
        "kubernetes": {"sameNamespacePull": false},
        "anonymousPull": ["public/*"],
        "pullSecrets": {"namespaceSelector": {}, "addToDefaultServiceAccount": true}
    }});
    assert_eq!(refusals(spec), Vec::<String>::new());
}

#[test]
fn settings_of_another_auth_mode_are_refused() {
    assert_refused(
        json!({"auth": {"mode": "Kubernetes", "htpasswd": {"secretName": "users"}}}),
        "auth.htpasswd is only used when auth.mode is Htpasswd",
    );
    assert_refused(
        json!({"auth": {"policy": {"authenticated": ["pull"]}}}),
        "auth.policy is only used when auth.mode is Htpasswd",
    );
    assert_refused(
        json!({"auth": {"mode": "Htpasswd", "htpasswd": {"secretName": "u"}, "kubernetes": {}}}),
        "auth.kubernetes is only used when auth.mode is Kubernetes",
    );
}

#[test]
fn pull_secrets_and_anonymous_pull_make_no_sense_without_auth() {
    assert_refused(
        json!({"auth": {"mode": "None", "pullSecrets": {"namespaceSelector": {}}}}),
        "auth.pullSecrets needs auth.mode Kubernetes or Htpasswd",
    );
    assert_refused(
        json!({"auth": {"mode": "None", "anonymousPull": ["*"]}}),
        "auth.anonymousPull needs auth.mode Kubernetes or Htpasswd",
    );
    assert_eq!(
        refusals(json!({"auth": {"mode": "None"}})),
        Vec::<String>::new()
    );
}

#[test]
fn a_policy_rule_must_name_someone() {
    assert_refused(
        json!({"auth": {"mode": "Htpasswd", "htpasswd": {"secretName": "u"}, "policy": {"rules": [{"repositories": "team/*", "actions": ["pull"]}]}}}),
        "names at least one user or group",
    );
}

#[test]
fn the_token_ttl_is_bounded() {
    assert_refused(json!({"auth": {"tokenTTL": "10s"}}), "between 1m and 24h");
    assert_refused(json!({"auth": {"tokenTTL": "48h"}}), "between 1m and 24h");
    assert_eq!(
        refusals(json!({"auth": {"tokenTTL": "1h"}})),
        Vec::<String>::new()
    );
}

#[test]
fn extra_names_accept_dns_names_and_ip_addresses_only() {
    let ok = json!({"tls": {"extraNames": ["registry.corp.example", "*.hub.example", "10.0.0.7", "fd00::7"]}});
    assert_eq!(refusals(ok), Vec::<String>::new());
    assert_refused(json!({"tls": {"extraNames": ["Not A Name"]}}), "extraNames");
}

#[test]
fn a_tiny_volume_is_refused() {
    assert_refused(
        json!({"storage": {"filesystem": {"size": "1Mi"}}}),
        "at least 64Mi",
    );
}

#[test]
fn the_volume_can_grow_but_not_shrink() {
    let old = json!({"storage": {"filesystem": {"size": "20Gi"}}});
    let shrunk = refusals_on_update(
        json!({"storage": {"filesystem": {"size": "10Gi"}}}),
        Some(old.clone()),
    );
    assert!(
        shrunk.iter().any(|m| m.contains("cannot shrink")),
        "{shrunk:?}"
    );
    let grown = refusals_on_update(
        json!({"storage": {"filesystem": {"size": "50Gi"}}}),
        Some(old),
    );
    assert_eq!(grown, Vec::<String>::new());
}

#[test]
fn the_storage_class_cannot_change() {
    let old = json!({"storage": {"filesystem": {"storageClassName": "fast"}}});
    let changed = refusals_on_update(
        json!({"storage": {"filesystem": {"storageClassName": "slow"}}}),
        Some(old),
    );
    assert!(
        changed.iter().any(|m| m.contains("cannot change")),
        "{changed:?}"
    );
}

/// The OpenAPI constraints the CEL evaluator does not check.
#[test]
fn crd_schema_shape() {
    let schema = schema().expect("schema");
    let spec = &schema["properties"]["spec"]["properties"];
    assert_eq!(spec["replicas"]["minimum"], json!(0.0));
    assert_eq!(spec["replicas"]["default"], json!(1));
    assert_eq!(
        spec["tls"]["properties"]["mode"]["enum"],
        json!(["SelfSigned", "Secret", "CertManager"])
    );
    assert_eq!(
        spec["tls"]["default"],
        json!({"mode": "SelfSigned", "duration": "2160h", "renewBefore": "720h"})
    );
    assert_eq!(
        spec["storage"]["default"],
        json!({"filesystem": {"size": "20Gi", "accessMode": "ReadWriteOnce", "reclaimPolicy": "Retain"}})
    );
    assert_eq!(
        spec["service"]["default"],
        json!({"type": "ClusterIP", "port": 443})
    );
    assert_eq!(
        spec["service"]["properties"]["port"]["maximum"],
        json!(65535.0)
    );
    assert_eq!(spec["nodeTrust"]["default"], json!({"enabled": true}));
    assert_eq!(spec["auth"]["default"], json!({"mode": "Kubernetes"}));
    assert_eq!(
        spec["auth"]["properties"]["mode"]["enum"],
        json!(["Kubernetes", "Htpasswd", "None"])
    );
    assert_eq!(
        spec["auth"]["properties"]["policy"]["properties"]["authenticated"]["items"]["enum"],
        json!(["pull", "push", "delete"])
    );
    assert!(spec["tls"]["properties"]["duration"]["pattern"].is_string());
    assert!(spec["ingress"]["properties"]["host"]["pattern"].is_string());
    assert!(spec["mirrors"]["items"]["properties"]["maxSize"]["pattern"].is_string());
    assert!(
        spec["gc"]["properties"]["retention"]["items"]["properties"]["keepPulledWithin"]["pattern"]
            .is_string()
    );
    let conditions = &schema["properties"]["status"]["properties"]["conditions"];
    assert_eq!(conditions["x-kubernetes-list-type"], json!("map"));
    assert_eq!(conditions["x-kubernetes-list-map-keys"], json!(["type"]));
    assert!(
        !serde_json::to_string(&schema)
            .expect("json")
            .contains("nullable")
    );
}

#[test]
fn garbage_collection_more_often_than_a_minute_is_refused() {
    assert_refused(
        json!({"gc": {"interval": "30s"}}),
        "gc.interval must be at least 1m",
    );
    assert!(refusals(json!({"gc": {"interval": "6h", "grace": "30m"}})).is_empty());
}

#[test]
fn a_retention_rule_that_keeps_nothing_or_runs_without_gc_is_refused() {
    assert_refused(
        json!({"gc": {"interval": "6h", "retention": [{"repositories": "team/*", "protect": ["latest"]}]}}),
        "a gc.retention rule needs keepLast, keepWithin, keepPulledWithin or untaggedAfter",
    );
    assert_refused(
        json!({"gc": {"retention": [{"repositories": "*", "keepLast": 3}]}}),
        "gc.retention is applied by GC runs: set gc.interval too",
    );
    assert!(
        refusals(json!({"gc": {"interval": "6h", "retention": [
            {"repositories": "team/*", "keepLast": 10, "keepWithin": "720h", "protect": ["latest", "v*"], "untaggedAfter": "24h"},
            {"repositories": "*", "untaggedAfter": "1h"}
        ]}}))
        .is_empty()
    );
}

#[test]
fn a_pulled_within_window_alone_makes_a_rule_and_must_be_at_least_a_minute() {
    assert!(
        refusals(json!({"gc": {"interval": "6h", "retention": [
            {"repositories": "team/*", "keepPulledWithin": "720h", "protect": ["latest"]}
        ]}}))
        .is_empty()
    );
    assert_refused(
        json!({"gc": {"interval": "6h", "retention": [{"repositories": "*", "keepPulledWithin": "30s"}]}}),
        "gc.retention[].keepPulledWithin must be at least 1m",
    );
}

#[test]
fn a_mirror_prefix_must_be_a_host_name_without_port_or_path() {
    for prefix in [
        "team",
        "Docker.io",
        "docker.io:443",
        "docker.io/library",
        "-a.io",
    ] {
        assert_refused(
            json!({"mirrors": [{"prefix": prefix, "url": "https://registry-1.docker.io"}]}),
            "mirrors[].prefix is a registry host name",
        );
    }
    assert!(
        refusals(json!({"mirrors": [
            {"prefix": "docker.io", "url": "https://registry-1.docker.io", "credentialsSecret": "hub-login",
             "repositories": ["library/*"], "tagFreshness": "5m"},
            {"prefix": "registry.corp.example", "url": "https://registry.corp.example:8443/",
             "caSecret": {"name": "corp-ca", "key": "ca.crt"}},
            {"prefix": "localhost", "url": "http://127.0.0.1:5000"}
        ]}))
        .is_empty()
    );
}

#[test]
fn a_mirror_url_must_be_http_or_https_and_its_freshness_bounded() {
    for url in [
        "ftp://x.example",
        "registry-1.docker.io",
        "https:///v2",
        "https://a b",
    ] {
        assert_refused(
            json!({"mirrors": [{"prefix": "docker.io", "url": url}]}),
            "mirrors[].url is the upstream's base URL",
        );
    }
    assert_refused(
        json!({"mirrors": [{"prefix": "docker.io", "url": "https://registry-1.docker.io", "tagFreshness": "1000h"}]}),
        "mirrors[].tagFreshness must be at most 720h",
    );
}

#[test]
fn a_mirror_size_cap_needs_gc_and_at_least_64_mebibytes() {
    let capped = |max_size: &str| json!({"prefix": "docker.io", "url": "https://registry-1.docker.io", "maxSize": max_size});
    assert_refused(
        json!({"mirrors": [capped("20Gi")]}),
        "mirrors[].maxAge and maxSize are applied by garbage collection: set gc.interval",
    );
    for small in ["10Mi", "1000000", "60M"] {
        assert_refused(
            json!({"gc": {"interval": "6h"}, "mirrors": [capped(small)]}),
            "mirrors[].maxSize must be at least 64Mi",
        );
    }
    for fine in ["20Gi", "64Mi", "1.5Ti", "100G"] {
        assert_eq!(
            refusals(json!({"gc": {"interval": "6h"}, "mirrors": [capped(fine)]})),
            Vec::<String>::new(),
            "{fine}"
        );
    }
}

#[test]
fn a_mirror_age_cap_needs_gc_and_at_least_a_minute() {
    let capped = |max_age: &str| json!({"prefix": "docker.io", "url": "https://registry-1.docker.io", "maxAge": max_age});
    assert_refused(
        json!({"mirrors": [capped("168h")]}),
        "mirrors[].maxAge and maxSize are applied by garbage collection: set gc.interval",
    );
    assert_refused(
        json!({"gc": {"interval": "6h"}, "mirrors": [capped("30s")]}),
        "mirrors[].maxAge must be at least 1m",
    );
    assert!(refusals(json!({"gc": {"interval": "6h"}, "mirrors": [capped("168h")]})).is_empty());
    // Without a cap, mirrors need no GC.
    assert!(
        refusals(
            json!({"mirrors": [{"prefix": "docker.io", "url": "https://registry-1.docker.io"}]})
        )
        .is_empty()
    );
}

#[test]
fn mirrors_are_a_list_map_keyed_by_prefix() {
    let schema = schema().expect("schema");
    let mirrors = &schema["properties"]["spec"]["properties"]["mirrors"];
    assert_eq!(mirrors["x-kubernetes-list-type"], json!("map"));
    assert_eq!(mirrors["x-kubernetes-list-map-keys"], json!(["prefix"]));
    assert_eq!(mirrors["items"]["required"], json!(["prefix", "url"]));
}

#[test]
fn quotas_take_byte_quantities_per_namespace() {
    let ok = json!({"gc": {"interval": "6h"}, "quotas": {"default": "10Gi", "namespaces": {"team-a": "50Gi", "frozen": "0", "big": "1.5Ti"}}});
    assert_eq!(refusals(ok), Vec::<String>::new());
    assert_refused(
        json!({"gc": {"interval": "6h"}, "quotas": {"default": "ten gigs"}}),
        "quotas.default is a byte quantity",
    );
    assert_refused(
        json!({"gc": {"interval": "6h"}, "quotas": {"default": "-1Gi"}}),
        "quotas.default is a byte quantity",
    );
    assert_refused(
        json!({"gc": {"interval": "6h"}, "quotas": {"namespaces": {"team-a": "lots"}}}),
        "each quotas.namespaces value is a byte quantity",
    );
    assert_refused(
        json!({"gc": {"interval": "6h"}, "quotas": {"namespaces": {"Team_A": "1Gi"}}}),
        "quotas.namespaces is keyed by Kubernetes namespace names",
    );
    let long = "a".repeat(64);
    assert_refused(
        json!({"gc": {"interval": "6h"}, "quotas": {"namespaces": {long: "1Gi"}}}),
        "quotas.namespaces is keyed by Kubernetes namespace names",
    );
}

#[test]
fn quotas_without_garbage_collection_are_refused() {
    assert_refused(
        json!({"quotas": {"default": "10Gi"}}),
        "deleting images frees it only when garbage collection runs: set gc.interval",
    );
}

#[test]
fn quota_values_are_patterned_quantities_in_the_schema() {
    let schema = schema().expect("schema");
    let quotas = &schema["properties"]["spec"]["properties"]["quotas"]["properties"];
    assert!(quotas["default"]["pattern"].is_string());
    assert!(quotas["namespaces"]["additionalProperties"]["pattern"].is_string());
    assert_eq!(quotas["namespaces"]["maxProperties"], json!(256));
}
