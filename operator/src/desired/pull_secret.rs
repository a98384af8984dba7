//! Provisioned pull secrets: in each namespace `spec.auth.pullSecrets`
//! selects, a `kubernetes.io/dockerconfigjson` Secret holding a pull-only
//! robot token for that namespace's repositories (`<ns>/*`), for every host
//! a client may write in an image reference.
//!
//! The robot token is a JWT signed with the registry's current signing key
//! ([`crate::desired::token_keys`]); the registry verifies it like its own
//! access tokens. It is re-issued when two thirds of its life have passed
//! or the signing key changed, so it is replaced well before it expires.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use berth_access::claims::{Claims, Grant, TokenKind};
use berth_access::config::service_name;
use berth_access::{Action, Actions};
use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{LocalObjectReference, Secret, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::{Value, json};

use crate::crd::RegistrySpec;
use crate::desired::labels;
use crate::names::{self, Names};

/// The user name in the pull secret; the registry ignores it (the token
/// says who it is).
pub const ROBOT_USER: &str = "berth-robot";
/// How long a robot token lives.
pub const ROBOT_TOKEN_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);
pub const DOCKER_CONFIG_KEY: &str = ".dockerconfigjson";
pub const DOCKER_CONFIG_TYPE: &str = "kubernetes.io/dockerconfigjson";

/// Every `host` or `host:port` a client in the cluster may put before the
/// repository: the node host and the Service's DNS forms (as nodes trust
/// them), the ingress host, and the ClusterIP; on port 443 each also with
/// `:443`.
pub fn registry_hosts(names: &Names, spec: &RegistrySpec, cluster_ip: Option<&str>) -> Vec<String> {
    let mut hosts = names.node_trust_hosts(spec);
    hosts.extend(names.endpoints(spec).external);
    if let Some(ip) = cluster_ip.and_then(|ip| ip.parse::<std::net::IpAddr>().ok()) {
        let host = match ip {
            std::net::IpAddr::V6(v6) => format!("[{v6}]"),
            std::net::IpAddr::V4(v4) => v4.to_string(),
        };
        hosts.push(names::host_port(&host, spec.service.port));
    }
    // On 443 a client may write the port or not, and clients look a
    // host up in a docker config by the exact `host[:port]` they were
    // given (crane: `10.96.0.9:443` does not find `10.96.0.9`).
    if spec.service.port == 443 {
        let with_port: Vec<String> = hosts.iter().map(|h| format!("{h}:443")).collect();
        hosts.extend(with_port);
    }
    let mut seen = std::collections::BTreeSet::new();
    hosts.retain(|h| seen.insert(h.to_ascii_lowercase()));
    hosts
}

fn unix(t: Timestamp) -> i64 {
    t.as_second()
}

/// The claims of the robot token for `namespace`: pull on `<namespace>/*`
/// of this Registry only.
pub fn robot_claims(names: &Names, namespace: &str, now: Timestamp, jti: String) -> Claims {
    let service = service_name(&names.namespace, &names.name);
    let lifetime = i64::try_from(ROBOT_TOKEN_LIFETIME.as_secs()).unwrap_or(i64::MAX);
    Claims {
        iss: service.clone(),
        sub: Claims::robot_subject(namespace),
        aud: service,
        exp: unix(now).saturating_add(lifetime),
        nbf: unix(now),
        iat: unix(now),
        jti,
        access: vec![Grant::repository(
            &format!("{namespace}/*"),
            Actions::of(&[Action::Pull]),
        )],
        kind: TokenKind::Robot,
        groups: Vec::new(),
        uid: None,
    }
}

/// Whether the robot token in a pull secret can stay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenVerdict {
    /// Keep it until `renew_at`.
    Keep { token: String, renew_at: Timestamp },
    /// Sign a new one.
    Issue,
}

/// The header `kid` and the claims of a JWT, unverified: enough to decide
/// whether the operator's own token is due for renewal (the registry does
/// the verifying).
fn peek(token: &str) -> Option<(String, Claims)> {
    let mut parts = token.split('.');
    let header: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts.next()?).ok()?).ok()?;
    let claims: Claims =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts.next()?).ok()?).ok()?;
    Some((header.get("kid")?.as_str()?.to_owned(), claims))
}

/// The robot token a pull secret holds (the password of its first host).
pub fn token_of(secret: &Secret) -> Option<String> {
    let config = secret.data.as_ref()?.get(DOCKER_CONFIG_KEY)?;
    let config: Value = serde_json::from_slice(&config.0).ok()?;
    config["auths"]
        .as_object()?
        .values()
        .find_map(|a| a["password"].as_str().map(str::to_owned))
}

/// Keep the token in `existing` while it is for this registry and
/// namespace, signed by the current key (`signing_kid`), and less than two
/// thirds through its life; otherwise issue a new one.
pub fn token_verdict(
    existing: Option<&Secret>,
    names: &Names,
    namespace: &str,
    signing_kid: &str,
    now: Timestamp,
) -> TokenVerdict {
    let Some(token) = existing.and_then(token_of) else {
        return TokenVerdict::Issue;
    };
    let Some((kid, claims)) = peek(&token) else {
        return TokenVerdict::Issue;
    };
    let service = service_name(&names.namespace, &names.name);
    let ours = kid == signing_kid
        && claims.kind == TokenKind::Robot
        && claims.aud == service
        && claims.sub == Claims::robot_subject(namespace);
    match renewal_time(&claims) {
        Some(renew_at) if ours && now < renew_at => TokenVerdict::Keep { token, renew_at },
        _ => TokenVerdict::Issue,
    }
}

/// Two thirds into a token's life: when the operator replaces it.
pub fn renewal_time(claims: &Claims) -> Option<Timestamp> {
    let at = claims.iat + (claims.exp - claims.iat) * 2 / 3;
    Timestamp::from_second(at).ok()
}

/// `{"auths": {host: {username, password, auth}}}` for every host.
pub fn docker_config(hosts: &[String], token: &str) -> String {
    let auth = STANDARD.encode(format!("{ROBOT_USER}:{token}"));
    let auths: serde_json::Map<String, Value> = hosts
        .iter()
        .map(|h| {
            (
                h.clone(),
                json!({"username": ROBOT_USER, "password": token, "auth": auth}),
            )
        })
        .collect();
    json!({ "auths": auths }).to_string()
}

/// The pull secret `secret_name` in `namespace`. No owner reference (the
/// Registry lives in another namespace): the labels name the Registry, and
/// the operator removes it when the Registry goes or the namespace is no
/// longer selected.
pub fn pull_secret(names: &Names, namespace: &str, secret_name: &str, config: &str) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(secret_name.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(labels::cross_namespace_labels(names)),
            ..ObjectMeta::default()
        },
        type_: Some(DOCKER_CONFIG_TYPE.to_owned()),
        data: Some(BTreeMap::from([(
            DOCKER_CONFIG_KEY.to_owned(),
            ByteString(config.as_bytes().to_vec()),
        )])),
        ..Secret::default()
    }
}

/// Whether a pull secret found in a namespace was made for this Registry.
pub fn is_ours(secret: &Secret, names: &Names) -> bool {
    let labels = secret.metadata.labels.clone().unwrap_or_default();
    labels.get(labels::REGISTRY_LABEL) == Some(&names.name)
        && labels.get(labels::REGISTRY_NAMESPACE_LABEL) == Some(&names.namespace)
}

/// A merge patch adding `secret_name` to a ServiceAccount's
/// `imagePullSecrets`, or `None` when it is listed already. The list is
/// atomic (server-side apply would replace it whole), so the patch carries
/// the whole list with the others kept, and the resourceVersion it was
/// computed from: if someone changed the account meanwhile the apiserver
/// refuses it (409) and the next reconcile tries again.
pub fn add_to_service_account(sa: &ServiceAccount, secret_name: &str) -> Option<Value> {
    let mut list = sa.image_pull_secrets.clone().unwrap_or_default();
    if list.iter().any(|r| r.name == secret_name) {
        return None;
    }
    list.push(LocalObjectReference {
        name: secret_name.to_owned(),
    });
    Some(json!({
        "metadata": {"resourceVersion": sa.metadata.resource_version},
        "imagePullSecrets": list,
    }))
}

/// The inverse of [`add_to_service_account`]: `None` when not listed.
pub fn remove_from_service_account(sa: &ServiceAccount, secret_name: &str) -> Option<Value> {
    let list = sa.image_pull_secrets.clone().unwrap_or_default();
    if !list.iter().any(|r| r.name == secret_name) {
        return None;
    }
    let kept: Vec<LocalObjectReference> =
        list.into_iter().filter(|r| r.name != secret_name).collect();
    Some(json!({
        "metadata": {"resourceVersion": sa.metadata.resource_version},
        "imagePullSecrets": kept,
    }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::fixtures;
    use berth_access::Verifier;
    use berth_access::keys::{self, Signer};

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn signed(signer: &Signer, now: Timestamp) -> Secret {
        let names = fixtures::names();
        let token = signer
            .sign(&robot_claims(&names, "app", now, "j".into()))
            .unwrap();
        pull_secret(
            &names,
            "app",
            "berth-pull",
            &docker_config(&["h".into()], &token),
        )
    }

    #[test]
    fn the_hosts_are_the_node_host_the_service_names_and_the_cluster_ip() {
        let names = fixtures::names();
        let spec = RegistrySpec::default();
        assert_eq!(
            registry_hosts(&names, &spec, Some("10.96.0.9")),
            [
                "hub.team.svc.cluster.local",
                "hub.team",
                "hub.team.svc",
                "10.96.0.9",
                "hub.team.svc.cluster.local:443",
                "hub.team:443",
                "hub.team.svc:443",
                "10.96.0.9:443"
            ]
        );
        let mut spec = RegistrySpec::default();
        spec.service.port = 5000;
        let hosts = registry_hosts(&names, &spec, Some("fd00::9"));
        assert!(hosts.contains(&"[fd00::9]:5000".to_owned()), "{hosts:?}");
        assert!(hosts.contains(&"hub:5000".to_owned()), "{hosts:?}");
    }

    #[test]
    fn a_robot_token_pulls_its_namespace_only_and_verifies_with_the_registry_keys() {
        let (private, public) = keys::generate().unwrap();
        let signer = Signer::from_pem(private.as_bytes()).unwrap();
        let now = Timestamp::now();
        let names = fixtures::names();
        let token = signer
            .sign(&robot_claims(&names, "app", now, keys::random_id()))
            .unwrap();
        let service = "hub.team.registry.berth.dev";
        let claims = Verifier::from_pem(public.as_bytes())
            .unwrap()
            .verify(&token, service, service)
            .unwrap();
        assert_eq!(claims.kind, TokenKind::Robot);
        assert_eq!(claims.sub, "berth:robot:app");
        assert!(claims.allows("app/x", Action::Pull));
        assert!(claims.allows("app/a/b", Action::Pull));
        assert!(!claims.allows("app/x", Action::Push));
        assert!(!claims.allows("app/x", Action::Delete));
        assert!(!claims.allows("other/x", Action::Pull));
        assert_eq!(claims.exp - claims.iat, 7 * 24 * 3600);
    }

    #[test]
    fn the_docker_config_names_every_host_with_basic_auth() {
        let config = docker_config(&["a.example".into(), "10.0.0.1".into()], "TOKEN");
        let v: Value = serde_json::from_str(&config).unwrap();
        for host in ["a.example", "10.0.0.1"] {
            let entry = &v["auths"][host];
            assert_eq!(entry["username"], "berth-robot");
            assert_eq!(entry["password"], "TOKEN");
            assert_eq!(
                STANDARD.decode(entry["auth"].as_str().unwrap()).unwrap(),
                b"berth-robot:TOKEN"
            );
        }
        let s = pull_secret(&fixtures::names(), "app", "berth-pull", &config);
        assert_eq!(s.type_.as_deref(), Some(DOCKER_CONFIG_TYPE));
        assert_eq!(s.metadata.namespace.as_deref(), Some("app"));
        assert_eq!(token_of(&s).as_deref(), Some("TOKEN"));
        assert!(is_ours(&s, &fixtures::names()));
        assert!(!is_ours(
            &s,
            &Names::new("hub", "elsewhere", "cluster.local")
        ));
    }

    #[test]
    fn a_token_is_kept_until_two_thirds_of_its_life_then_reissued() {
        let (private, _) = keys::generate().unwrap();
        let signer = Signer::from_pem(private.as_bytes()).unwrap();
        let issued = t("2026-11-30T00:00:00Z");
        let s = signed(&signer, issued);
        let names = fixtures::names();
        let renew_at = t("2026-12-04T16:00:00Z");
        match token_verdict(
            Some(&s),
            &names,
            "app",
            signer.kid(),
            t("2026-12-04T15:59:59Z"),
        ) {
            TokenVerdict::Keep {
                renew_at: at,
                token,
            } => {
                assert_eq!(at, renew_at);
                assert_eq!(Some(token), token_of(&s));
            }
            v => panic!("expected keep, got {v:?}"),
        }
        assert_eq!(
            token_verdict(Some(&s), &names, "app", signer.kid(), renew_at),
            TokenVerdict::Issue
        );
    }

    #[test]
    fn a_new_signing_key_another_namespace_or_garbage_means_a_new_token() {
        let (private, _) = keys::generate().unwrap();
        let (other, _) = keys::generate().unwrap();
        let signer = Signer::from_pem(private.as_bytes()).unwrap();
        let other = Signer::from_pem(other.as_bytes()).unwrap();
        let now = t("2026-11-30T00:00:00Z");
        let s = signed(&signer, now);
        let names = fixtures::names();
        assert_eq!(
            token_verdict(Some(&s), &names, "app", other.kid(), now),
            TokenVerdict::Issue
        );
        assert_eq!(
            token_verdict(Some(&s), &names, "elsewhere", signer.kid(), now),
            TokenVerdict::Issue
        );
        assert_eq!(
            token_verdict(None, &names, "app", signer.kid(), now),
            TokenVerdict::Issue
        );
        let garbage = pull_secret(&names, "app", "p", &docker_config(&["h".into()], "x.y.z"));
        assert_eq!(
            token_verdict(Some(&garbage), &names, "app", signer.kid(), now),
            TokenVerdict::Issue
        );
    }

    #[test]
    fn the_service_account_keeps_its_other_pull_secrets() {
        let mut sa = ServiceAccount::default();
        sa.metadata.resource_version = Some("7".into());
        let patch = add_to_service_account(&sa, "berth-pull").unwrap();
        assert_eq!(patch["imagePullSecrets"], json!([{"name": "berth-pull"}]));
        assert_eq!(patch["metadata"]["resourceVersion"], "7");
        sa.image_pull_secrets = Some(vec![LocalObjectReference {
            name: "theirs".into(),
        }]);
        let patch = add_to_service_account(&sa, "berth-pull").unwrap();
        assert_eq!(
            patch["imagePullSecrets"],
            json!([{"name": "theirs"}, {"name": "berth-pull"}])
        );
        sa.image_pull_secrets
            .as_mut()
            .unwrap()
            .push(LocalObjectReference {
                name: "berth-pull".into(),
            });
        assert_eq!(add_to_service_account(&sa, "berth-pull"), None);
        let patch = remove_from_service_account(&sa, "berth-pull").unwrap();
        assert_eq!(patch["imagePullSecrets"], json!([{"name": "theirs"}]));
        sa.image_pull_secrets = None;
        assert_eq!(remove_from_service_account(&sa, "berth-pull"), None);
    }
}
