//! Kubernetes auth mode against a real kube-apiserver (the e2e cluster):
//! tokens of service accounts bound to Roles on `repositories.berth.dev`,
//! with the apiserver's own audience and with berth's, checked by
//! TokenReview and SubjectAccessReview; and an apiserver that cannot be
//! reached grants nothing.
//!
//! Opt in with a cluster up (see e2e/cluster.md):
//!   eval "$(e2e/cluster env)"; BERTH_TEST_CLUSTER=1 cargo test -p berth-registry --test kubernetes_auth
//! Without `BERTH_TEST_CLUSTER=1` the cluster test says it was skipped and
//! passes. It works in namespaces of its own and removes them afterwards.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use base64::Engine as _;
use berth_access::config::{CREDENTIAL_PROVIDER_AUDIENCE, KubernetesAuth};
use berth_access::{Action, Actions};
use berth_registry::auth::kubernetes::{KubeUser, Kubernetes, KubernetesError};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, DeleteParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::json;

const NS: &str = "reg-kube-test";
const OTHER: &str = "reg-kube-other";
const WAIT: Duration = Duration::from_secs(60);

fn auth(same_namespace_pull: bool) -> KubernetesAuth {
    KubernetesAuth {
        audiences: vec![CREDENTIAL_PROVIDER_AUDIENCE.to_owned()],
        same_namespace_pull,
    }
}

fn pull() -> Actions {
    Actions::NONE.with(Action::Pull)
}

async fn eventually<F, Fut>(what: &str, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    while !probe().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn remove_namespaces(client: &Client) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for ns in [NS, OTHER] {
        let _ = namespaces.delete(ns, &DeleteParams::background()).await;
    }
    eventually("the test namespaces to be gone", || async {
        let mut gone = true;
        for ns in [NS, OTHER] {
            gone &= namespaces.get_opt(ns).await.unwrap().is_none();
        }
        gone
    })
    .await;
}

async fn create<K>(api: &Api<K>, object: serde_json::Value)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let object: K = serde_json::from_value(object).unwrap();
    api.create(&PostParams::default(), &object).await.unwrap();
}

async fn token(client: &Client, ns: &str, sa: &str, audiences: &[&str]) -> String {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: audiences.iter().map(|a| a.to_string()).collect(),
            expiration_seconds: Some(600),
            bound_object_ref: None,
        },
        ..Default::default()
    };
    accounts
        .create_token_request(sa, &PostParams::default(), &request)
        .await
        .unwrap()
        .status
        .unwrap()
        .token
}

fn jwt_audiences(token: &str) -> Vec<String> {
    let payload = token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    let claims: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    match &claims["aud"] {
        serde_json::Value::String(a) => vec![a.clone()],
        serde_json::Value::Array(list) => list
            .iter()
            .map(|a| a.as_str().unwrap().to_owned())
            .collect(),
        other => panic!("aud {other}"),
    }
}

/// Roles granting on repositories.berth.dev what the chart's push and pull
/// ClusterRoles grant, bound to `editor` and `viewer`.
async fn set_up(client: &Client) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for ns in [NS, OTHER] {
        create(&namespaces, json!({"metadata": {"name": ns}})).await;
    }
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), NS);
    for sa in ["editor", "viewer", "doomed"] {
        create(&accounts, json!({"metadata": {"name": sa}})).await;
    }
    let others: Api<ServiceAccount> = Api::namespaced(client.clone(), OTHER);
    create(&others, json!({"metadata": {"name": "builder"}})).await;
    let roles: Api<Role> = Api::namespaced(client.clone(), NS);
    let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), NS);
    for (role, verbs) in [
        ("editor", json!(["get", "create", "update", "delete"])),
        ("viewer", json!(["get"])),
    ] {
        create(
            &roles,
            json!({
                "metadata": {"name": format!("repositories-{role}")},
                "rules": [{"apiGroups": ["berth.dev"], "resources": ["repositories"], "verbs": verbs}],
            }),
        )
        .await;
        create(
            &bindings,
            json!({
                "metadata": {"name": format!("repositories-{role}")},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": format!("repositories-{role}")},
                "subjects": [{"kind": "ServiceAccount", "name": role, "namespace": NS}],
            }),
        )
        .await;
    }
}

async fn user(k: &Kubernetes, token: &str) -> KubeUser {
    k.authenticate(token)
        .await
        .unwrap()
        .expect("a valid token names its user")
}

async fn exercise(client: Client) {
    set_up(&client).await;

    let editor_token = token(&client, NS, "editor", &[]).await;
    let viewer_token = token(&client, NS, "viewer", &[]).await;
    let builder_token = token(&client, OTHER, "builder", &[]).await;
    let berth_token = token(&client, NS, "viewer", &[CREDENTIAL_PROVIDER_AUDIENCE]).await;
    let elsewhere_token = token(&client, NS, "editor", &["vault.example.com"]).await;
    // `kubectl create token` with no audience gets the apiserver's own.
    let apiserver_audiences = jwt_audiences(&editor_token);

    // As the registry runs with KUBECONFIG set: apiserver audiences unknown
    // at first, learned from the first review that needs them.
    let k = Kubernetes::connect(&auth(true)).await.unwrap();
    // Audiences known up front (as in a pod), same-namespace pull off, so
    // every pull is an RBAC decision.
    let strict = Kubernetes::with_config(
        &auth(false),
        Config::infer().await.unwrap(),
        Some(apiserver_audiences.clone()),
    )
    .unwrap();

    // Identity, both audiences, on both paths.
    let editor = user(&k, &editor_token).await;
    assert_eq!(editor.name, format!("system:serviceaccount:{NS}:editor"));
    assert!(editor.uid.is_some());
    assert!(
        editor
            .groups
            .contains(&format!("system:serviceaccounts:{NS}"))
    );
    assert_eq!(
        k.apiserver_calls(),
        2,
        "unknown apiserver audience: berth's first, then the apiserver's"
    );
    let viewer = user(&k, &viewer_token).await;
    assert_eq!(
        k.apiserver_calls(),
        3,
        "the apiserver's audience is learned: one review"
    );
    let builder = user(&k, &builder_token).await;
    assert_eq!(
        builder.name,
        format!("system:serviceaccount:{OTHER}:builder")
    );
    let from_kubelet = user(&k, &berth_token).await;
    assert_eq!(from_kubelet.name, viewer.name);
    assert_eq!(user(&strict, &berth_token).await.name, viewer.name);
    let before = strict.apiserver_calls();
    assert_eq!(user(&strict, &editor_token).await, editor);
    assert_eq!(
        strict.apiserver_calls(),
        before + 1,
        "known apiserver audience: one review"
    );

    // Refused tokens: none is an error, each is no user.
    for (what, t) in [
        ("an audience neither accepted", elsewhere_token.as_str()),
        ("garbage", "not-a-token"),
        (
            "a JWT-shaped forgery",
            "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.",
        ),
        ("empty", ""),
    ] {
        assert_eq!(k.authenticate(t).await.unwrap(), None, "{what}");
        assert_eq!(strict.authenticate(t).await.unwrap(), None, "{what}");
    }

    // Permissions.
    let app = format!("{NS}/app");
    let other_app = format!("{OTHER}/app");
    assert_eq!(
        k.allowed(&editor, &app, Actions::ALL).await.unwrap(),
        Actions::ALL
    );
    assert_eq!(
        strict
            .allowed(&editor, &format!("{NS}/team/deep/app"), Actions::ALL)
            .await
            .unwrap(),
        Actions::ALL
    );
    assert_eq!(
        k.allowed(&viewer, &app, Actions::ALL).await.unwrap(),
        pull()
    );
    assert_eq!(
        strict.allowed(&viewer, &app, Actions::ALL).await.unwrap(),
        pull()
    );
    assert_eq!(
        strict
            .allowed(&from_kubelet, &app, Actions::ALL)
            .await
            .unwrap(),
        pull(),
        "a credential-provider token is the same service account"
    );
    // Another namespace's service account: nothing here, same-namespace pull
    // in its own (only when that is on).
    assert_eq!(
        k.allowed(&builder, &app, Actions::ALL).await.unwrap(),
        Actions::NONE
    );
    assert_eq!(
        k.allowed(&builder, &other_app, Actions::ALL).await.unwrap(),
        pull()
    );
    assert_eq!(
        strict
            .allowed(&builder, &other_app, Actions::ALL)
            .await
            .unwrap(),
        Actions::NONE
    );
    // Only what is asked for is checked and granted.
    assert_eq!(
        k.allowed(&editor, &app, Actions::NONE.with(Action::Delete))
            .await
            .unwrap(),
        Actions::NONE.with(Action::Delete)
    );

    // The catalog's question.
    assert!(strict.may_pull_namespace(&viewer, NS).await.unwrap());
    assert!(!strict.may_pull_namespace(&builder, NS).await.unwrap());
    assert!(k.may_pull_namespace(&builder, OTHER).await.unwrap());
    assert!(!strict.may_pull_namespace(&builder, OTHER).await.unwrap());
    assert!(
        !k.may_pull_namespace(&editor, "Not_A_Namespace")
            .await
            .unwrap()
    );

    // A repository outside any namespace is refused, saying why.
    for bad in ["app", "Team/app", "my_team/app"] {
        let e = k.allowed(&editor, bad, Actions::ALL).await.unwrap_err();
        assert!(matches!(e, KubernetesError::Repository(_)), "{bad}: {e}");
        assert!(e.to_string().contains("<namespace>/<name>"), "{e}");
    }

    // A 20-layer pull: the answers come from the cache.
    let before = k.apiserver_calls();
    for _ in 0..20 {
        let again = user(&k, &editor_token).await;
        assert_eq!(k.allowed(&again, &app, pull()).await.unwrap(), pull());
        assert_eq!(
            k.allowed(&again, &app, Actions::ALL).await.unwrap(),
            Actions::ALL
        );
    }
    assert_eq!(
        k.apiserver_calls(),
        before,
        "repeats are served from the cache"
    );

    // Concurrent identical lookups share one review.
    let fresh = Kubernetes::with_config(
        &auth(false),
        Config::infer().await.unwrap(),
        Some(apiserver_audiences.clone()),
    )
    .unwrap();
    let lookups = (0..10).map(|_| fresh.authenticate(&viewer_token));
    for found in futures_util::future::join_all(lookups).await {
        assert_eq!(found.unwrap().unwrap().name, viewer.name);
    }
    let pulls = (0..10).map(|_| fresh.allowed(&viewer, &app, pull()));
    for granted in futures_util::future::join_all(pulls).await {
        assert_eq!(granted.unwrap(), pull());
    }
    assert_eq!(
        fresh.apiserver_calls(),
        2,
        "one TokenReview, one SubjectAccessReview"
    );

    // A deleted service account's token stops working (fresh instances, so
    // no cached answer stands in for the apiserver's).
    let doomed_token = token(&client, NS, "doomed", &[]).await;
    let valid = Kubernetes::connect(&auth(true)).await.unwrap();
    assert!(valid.authenticate(&doomed_token).await.unwrap().is_some());
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), NS);
    accounts
        .delete("doomed", &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        "the deleted service account's token to be refused",
        || async {
            let k = Kubernetes::connect(&auth(true)).await.unwrap();
            k.authenticate(&doomed_token).await.unwrap().is_none()
        },
    )
    .await;
}

#[tokio::test]
async fn kubernetes_mode_against_the_apiserver() {
    if std::env::var("BERTH_TEST_CLUSTER").ok().as_deref() != Some("1") {
        eprintln!(
            "skipped: set BERTH_TEST_CLUSTER=1 with a cluster up (eval \"$(e2e/cluster env)\")"
        );
        return;
    }
    let client = Client::try_default().await.expect("kubeconfig");
    remove_namespaces(&client).await;
    // Run apart so the namespaces are removed whatever happens.
    let outcome = tokio::spawn(exercise(client.clone())).await;
    remove_namespaces(&client).await;
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

#[tokio::test]
async fn an_unreachable_apiserver_grants_nothing_promptly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    std::fs::write(
        &path,
        r#"apiVersion: v1
kind: Config
clusters:
- name: nowhere
  cluster: {server: "https://127.0.0.1:1", insecure-skip-tls-verify: true}
users:
- name: someone
  user: {token: not-a-real-token}
contexts:
- name: nowhere
  context: {cluster: nowhere, user: someone}
current-context: nowhere
"#,
    )
    .unwrap();
    let config = Config::from_custom_kubeconfig(
        Kubeconfig::read_from(&path).unwrap(),
        &KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    let k = Kubernetes::with_config(&auth(false), config, None).unwrap();
    let someone = KubeUser {
        name: "alice".into(),
        uid: None,
        groups: vec!["system:authenticated".into()],
    };
    let started = Instant::now();
    let e = k.authenticate("some-token").await.unwrap_err();
    assert!(matches!(e, KubernetesError::Unreachable { .. }), "{e}");
    assert!(!e.to_string().contains("some-token"), "{e}");
    let e = k
        .allowed(&someone, "team/app", Actions::ALL)
        .await
        .unwrap_err();
    assert!(matches!(e, KubernetesError::Unreachable { .. }), "{e}");
    let e = k.may_pull_namespace(&someone, "team").await.unwrap_err();
    assert!(matches!(e, KubernetesError::Unreachable { .. }), "{e}");
    // A refused connection fails at once; the deadline is a few seconds.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    // Nothing was cached: the next attempt asks again.
    let before = k.apiserver_calls();
    assert!(k.authenticate("some-token").await.is_err());
    assert_eq!(k.apiserver_calls(), before + 1);
}
