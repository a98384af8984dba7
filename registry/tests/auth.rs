#![allow(clippy::unwrap_used)]
//! Login and permissions, driven in process against a real filesystem
//! store, real keys and a real htpasswd file (bcrypt at a low cost): the
//! token flow, every kind of bad credentials, denials, the filtered
//! catalog, anonymous pull, refresh tokens, throttling and key rotation.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use berth_access::config::{HtpasswdAuth, Policy, Rule};
use berth_access::keys::{SIGNING_KEY_FILE, VERIFY_KEYS_FILE};
use berth_access::{Action, Actions, AuthConfig, Claims, Grant, Mode, Signer, TokenKind};
use berth_registry::auth::Auth;
use berth_registry::auth::rate_limit::Limits;
use berth_registry::server::Connection;
use bytes::Bytes;
use http_body_util::BodyExt;
use sha2::{Digest as _, Sha256};
use tower::ServiceExt;

const SERVICE: &str = "hub.test";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const PASSWORDS: [(&str, &str); 4] = [
    ("alice", "alice-Pa55word"),
    ("bob", "bob-Pa55word"),
    ("root", "root-Pa55word"),
    ("carol", "carol-Pa55word"),
];

fn password(user: &str) -> &'static str {
    PASSWORDS.iter().find(|(u, _)| *u == user).unwrap().1
}

struct Fixture {
    app: Router,
    auth: Arc<Auth>,
    dir: tempfile::TempDir,
    signer: Signer,
    /// Every secret handed out or used, to check no response echoes one.
    secrets: std::sync::Mutex<Vec<String>>,
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_default()
    }

    fn code(&self) -> String {
        self.json()["errors"][0]["code"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    }

    fn message(&self) -> String {
        self.json()["errors"][0]["message"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn policy() -> Policy {
    Policy {
        groups: BTreeMap::from([("admins".into(), vec!["root".into()])]),
        rules: vec![
            Rule {
                repositories: "team/*".into(),
                users: vec!["alice".into()],
                groups: vec![],
                actions: vec![Action::Pull, Action::Push, Action::Delete],
            },
            Rule {
                repositories: "team/*".into(),
                users: vec!["bob".into()],
                groups: vec![],
                actions: vec![Action::Pull],
            },
            // The longest matching pattern decides, so admins are named
            // under team/* too.
            Rule {
                repositories: "team/*".into(),
                users: vec![],
                groups: vec!["admins".into()],
                actions: vec![Action::Pull, Action::Push, Action::Delete],
            },
            Rule {
                repositories: "*".into(),
                users: vec![],
                groups: vec!["admins".into()],
                actions: vec![Action::Pull, Action::Push, Action::Delete],
            },
        ],
        authenticated: vec![],
    }
}

fn htpasswd_text(users: &[&str]) -> String {
    users
        .iter()
        .map(|u| format!("{u}:{}\n", bcrypt::hash(password(u), 4).unwrap()))
        .collect()
}

impl Fixture {
    async fn new() -> Fixture {
        Self::with_limits(Limits {
            failures: 100,
            window: Duration::from_secs(60),
            max_clients: 1000,
        })
        .await
    }

    async fn with_limits(limits: Limits) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        std::fs::create_dir(&keys).unwrap();
        let (private, public) = berth_access::keys::generate().unwrap();
        std::fs::write(keys.join(SIGNING_KEY_FILE), &private).unwrap();
        std::fs::write(keys.join(VERIFY_KEYS_FILE), &public).unwrap();
        let htpasswd = dir.path().join("htpasswd");
        std::fs::write(&htpasswd, htpasswd_text(&["alice", "bob", "root"])).unwrap();
        let config = AuthConfig {
            mode: Mode::Htpasswd,
            service: SERVICE.into(),
            keys_dir: keys,
            token_ttl_seconds: 300,
            refresh_ttl_seconds: 3600,
            kubernetes: None,
            htpasswd: Some(HtpasswdAuth { file: htpasswd }),
            policy: policy(),
            anonymous_pull: vec!["public/*".into()],
        };
        let auth = Auth::start_with(config, limits).await.unwrap().unwrap();
        let store = berth_registry::filesystem_store(&dir.path().join("data")).unwrap();
        Fixture {
            app: berth_registry::router_with_auth(store, Some(auth.clone())),
            auth,
            dir,
            signer: Signer::from_pem(private.as_bytes()).unwrap(),
            secrets: std::sync::Mutex::new(PASSWORDS.iter().map(|(_, p)| p.to_string()).collect()),
        }
    }

    fn keys_dir(&self) -> PathBuf {
        self.dir.path().join("keys")
    }

    async fn send_from(
        &self,
        peer: &str,
        tls: bool,
        method: Method,
        uri: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Reply {
        let mut req = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let mut req = req.body(Body::from(body.into())).unwrap();
        req.extensions_mut().insert(Connection {
            peer: peer.parse::<SocketAddr>().unwrap(),
            tls,
        });
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let reply = Reply {
            status,
            headers,
            body,
        };
        // No response body ever holds a password or a token we know of,
        // other than the token endpoint's own answer.
        if !uri.starts_with("/token") || status != StatusCode::OK {
            let text = reply.text();
            for s in self.secrets.lock().unwrap().iter() {
                assert!(
                    !text.contains(s.as_str()),
                    "a secret in the body of {uri}: {text}"
                );
            }
        }
        reply
    }

    async fn send(
        &self,
        method: Method,
        uri: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Reply {
        self.send_from("192.0.2.1:40000", false, method, uri, headers, body)
            .await
    }

    /// A token from `GET /token` for `user` (None: anonymous).
    async fn token(&self, user: Option<&str>, scopes: &[&str]) -> String {
        let r = self.token_reply(user, scopes, false).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        r.json()["token"].as_str().unwrap().to_owned()
    }

    async fn token_reply(&self, user: Option<&str>, scopes: &[&str], offline: bool) -> Reply {
        let mut uri = format!("/token?service={SERVICE}");
        for s in scopes {
            uri.push_str(&format!("&scope={}", urlencode(s)));
        }
        if offline {
            uri.push_str("&offline_token=true");
        }
        let auth = user.map(|u| basic(u, password(u)));
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| vec![("authorization", a)])
            .unwrap_or_default();
        let r = self.send(Method::GET, &uri, &headers, Bytes::new()).await;
        self.remember(&r);
        r
    }

    fn remember(&self, r: &Reply) {
        let v = r.json();
        for k in ["token", "refresh_token"] {
            if let Some(t) = v[k].as_str() {
                self.secrets.lock().unwrap().push(t.to_owned());
            }
        }
    }

    fn sign(&self, claims: &Claims) -> String {
        let t = self.signer.sign(claims).unwrap();
        self.secrets.lock().unwrap().push(t.clone());
        t
    }

    async fn push_blob(&self, repo: &str, auth: &str, data: &[u8]) -> String {
        let digest = sha256(data);
        let r = self
            .send(
                Method::POST,
                &format!("/v2/{repo}/blobs/uploads/?digest={digest}"),
                &[("authorization", auth)],
                data.to_vec(),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
        digest
    }

    /// Pushes a small image to `repo:tag` with `auth`; returns the manifest.
    async fn push_image(&self, repo: &str, tag: &str, auth: &str) -> String {
        let config = self.push_blob(repo, auth, b"{}").await;
        let layer = format!("layer of {repo}");
        let layer_digest = self.push_blob(repo, auth, layer.as_bytes()).await;
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":2}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{layer_digest}","size":{}}}]}}"#,
            layer.len()
        );
        let r = self
            .send(
                Method::PUT,
                &format!("/v2/{repo}/manifests/{tag}"),
                &[("authorization", auth), ("content-type", OCI_MANIFEST)],
                manifest.clone(),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
        manifest
    }

    async fn get_manifest(&self, repo: &str, tag: &str, auth: Option<&str>) -> Reply {
        let headers: Vec<(&str, &str)> =
            auth.map(|a| vec![("authorization", a)]).unwrap_or_default();
        self.send(
            Method::GET,
            &format!("/v2/{repo}/manifests/{tag}"),
            &headers,
            Bytes::new(),
        )
        .await
    }

    fn claims(&self, sub: &str, access: Vec<Grant>, exp_in: i64) -> Claims {
        let now = now();
        Claims {
            iss: SERVICE.into(),
            sub: sub.into(),
            aud: SERVICE.into(),
            exp: now + exp_in,
            nbf: now - 1,
            iat: now,
            jti: berth_access::keys::random_id(),
            access,
            kind: TokenKind::Access,
            groups: vec![],
            uid: None,
        }
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn sha256(data: &[u8]) -> String {
    let h = Sha256::digest(data);
    format!(
        "sha256:{}",
        h.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

fn urlencode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{user}:{password}")))
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// The claims of a token, read without checking it (to see what was granted).
fn payload(token: &str) -> serde_json::Value {
    let part = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

fn all() -> Actions {
    Actions::ALL
}

#[tokio::test]
async fn a_request_without_credentials_gets_the_challenge_for_the_scope_it_needs() {
    let f = Fixture::new().await;
    let cases = [
        (
            Method::POST,
            "/v2/team/app/blobs/uploads/",
            ",scope=\"repository:team/app:pull,push\"",
        ),
        (
            Method::GET,
            "/v2/team/app/manifests/v1",
            ",scope=\"repository:team/app:pull\"",
        ),
        (
            Method::DELETE,
            "/v2/team/app/manifests/v1",
            ",scope=\"repository:team/app:delete\"",
        ),
        (Method::GET, "/v2/_catalog", ",scope=\"registry:catalog:*\""),
        (Method::GET, "/v2/", ""),
    ];
    for (method, uri, scope) in cases {
        let r = f
            .send(
                method.clone(),
                uri,
                &[("host", "reg.example:5000")],
                Bytes::new(),
            )
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{method} {uri}");
        assert_eq!(r.code(), "UNAUTHORIZED");
        assert_eq!(
            r.header("www-authenticate"),
            format!("Bearer realm=\"http://reg.example:5000/token\",service=\"{SERVICE}\"{scope}")
        );
    }
    // Over TLS, and behind an Ingress that forwards the host it was asked for.
    let r = f
        .send_from(
            "192.0.2.1:1",
            true,
            Method::GET,
            "/v2/",
            &[("host", "hub:5443")],
            Bytes::new(),
        )
        .await;
    assert!(
        r.header("www-authenticate")
            .starts_with("Bearer realm=\"https://hub:5443/token\"")
    );
    let r = f
        .send(
            Method::GET,
            "/v2/",
            &[
                ("host", "10.1.2.3"),
                ("x-forwarded-host", "registry.example.com"),
                ("x-forwarded-proto", "https"),
            ],
            Bytes::new(),
        )
        .await;
    assert!(
        r.header("www-authenticate")
            .starts_with("Bearer realm=\"https://registry.example.com/token\"")
    );
}

#[tokio::test]
async fn the_token_flow_pushes_and_pulls_with_htpasswd_users() {
    let f = Fixture::new().await;
    let token = f
        .token(Some("alice"), &["repository:team/app:pull,push"])
        .await;
    let claims = payload(&token);
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["iss"], SERVICE);
    assert_eq!(claims["aud"], SERVICE);
    assert_eq!(
        claims["access"],
        serde_json::json!([{"type": "repository", "name": "team/app", "actions": ["pull", "push"]}])
    );
    let auth = bearer(&token);
    let manifest = f.push_image("team/app", "v1", &auth).await;
    let r = f.get_manifest("team/app", "v1", Some(&auth)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.text(), manifest);
    // The base endpoint accepts any valid token.
    let r = f
        .send(
            Method::GET,
            "/v2/",
            &[("authorization", &auth)],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    // The answer has the fields clients read.
    let r = f
        .token_reply(Some("alice"), &["repository:team/app:pull"], false)
        .await;
    let v = r.json();
    assert_eq!(v["token"], v["access_token"]);
    assert_eq!(v["expires_in"], 300);
    assert!(v["issued_at"].as_str().unwrap().ends_with('Z'));
    assert!(v.get("refresh_token").is_none());
}

#[tokio::test]
async fn granted_actions_are_what_was_asked_and_allowed() {
    let f = Fixture::new().await;
    let t = f
        .token(
            Some("bob"),
            &[
                "repository:team/app:pull,push,delete",
                "repository:other/x:pull",
                "registry:catalog:*",
            ],
        )
        .await;
    let access = &payload(&t)["access"];
    assert_eq!(
        access,
        &serde_json::json!([
            {"type": "repository", "name": "team/app", "actions": ["pull"]},
            {"type": "registry", "name": "catalog", "actions": ["*"]},
        ])
    );
    let t = f.token(Some("alice"), &["repository:team/app:*"]).await;
    assert_eq!(
        payload(&t)["access"][0]["actions"],
        serde_json::json!(["pull", "push", "delete"])
    );
}

#[tokio::test]
async fn credentials_that_lack_the_right_get_denied_naming_repository_and_action() {
    let f = Fixture::new().await;
    let alice = bearer(
        &f.token(Some("alice"), &["repository:team/app:pull,push"])
            .await,
    );
    f.push_image("team/app", "v1", &alice).await;
    // bob asks for push, gets pull only, and is told why he cannot push.
    let bob = bearer(
        &f.token(Some("bob"), &["repository:team/app:pull,push"])
            .await,
    );
    let r = f
        .send(
            Method::POST,
            "/v2/team/app/blobs/uploads/",
            &[("authorization", &bob)],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.code(), "DENIED");
    assert!(
        r.message().contains("bob may not push to team/app"),
        "{}",
        r.message()
    );
    // The same with Basic credentials sent straight to /v2.
    let r = f
        .send(
            Method::DELETE,
            "/v2/team/app/manifests/v1",
            &[("authorization", &basic("bob", password("bob")))],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(
        r.message().contains("bob may not delete from team/app"),
        "{}",
        r.message()
    );
    // bob may still pull.
    assert_eq!(
        f.get_manifest("team/app", "v1", Some(&bob)).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn basic_credentials_sent_straight_to_v2_work() {
    let f = Fixture::new().await;
    let alice = basic("alice", password("alice"));
    let manifest = f.push_image("team/app", "v1", &alice).await;
    let r = f.get_manifest("team/app", "v1", Some(&alice)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.text(), manifest);
    let r = f
        .get_manifest("team/app", "v1", Some(&basic("alice", "wrong")))
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.header("www-authenticate").starts_with("Bearer realm="));
}

#[tokio::test]
async fn bad_credentials_of_every_kind_get_401_and_nothing() {
    let f = Fixture::new().await;
    let root = bearer(
        &f.token(Some("root"), &["repository:team/a:pull,push"])
            .await,
    );
    f.push_image("team/a", "v1", &root).await;
    f.push_image("team/b", "v1", &basic("root", password("root")))
        .await;
    let team_a = vec![Grant::repository("team/a", all())];
    let team_b = vec![Grant::repository("team/b", all())];

    let expired = f.sign(&f.claims("alice", team_a.clone(), -3600));
    let (other_private, _) = berth_access::keys::generate().unwrap();
    let wrong_key = Signer::from_pem(other_private.as_bytes())
        .unwrap()
        .sign(&f.claims("alice", team_a.clone(), 300))
        .unwrap();
    // Signed by our key, then the payload changed: the signature breaks.
    let good = f.sign(&f.claims("alice", team_a.clone(), 300));
    let mut parts: Vec<&str> = good.split('.').collect();
    let forged_payload = URL_SAFE_NO_PAD
        .encode(serde_json::to_vec(&f.claims("alice", team_b.clone(), 300)).unwrap());
    parts[1] = &forged_payload;
    let tampered = parts.join(".");
    let none_header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
    let alg_none = format!("{none_header}.{forged_payload}.");
    let hs_header = URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","typ":"JWT"}"#);
    let alg_hs = format!("{hs_header}.{forged_payload}.c2ln");
    let mut other_registry = f.claims("alice", team_b.clone(), 300);
    other_registry.aud = "elsewhere.registry".into();
    let other_registry = f.sign(&other_registry);
    let mut other_issuer = f.claims("alice", team_b.clone(), 300);
    other_issuer.iss = "elsewhere.registry".into();
    let other_issuer = f.sign(&other_issuer);
    let mut refresh = f.claims("alice", team_b.clone(), 300);
    refresh.kind = TokenKind::Refresh;
    let refresh = f.sign(&refresh);
    let mut robot = f.claims("berth:robot:team", team_b.clone(), 300);
    robot.kind = TokenKind::Robot;
    let robot = f.sign(&robot);
    // A valid token for team/a, used on team/b (which alice may pull).
    let for_a = f.sign(&f.claims(
        "alice",
        vec![Grant::repository("team/a", Actions::of(&[Action::Pull]))],
        300,
    ));
    let huge = format!("Bearer {}", "a".repeat(64 * 1024));

    let cases: Vec<(&str, String)> = vec![
        ("expired", bearer(&expired)),
        ("wrong signature (another key)", bearer(&wrong_key)),
        ("tampered payload", bearer(&tampered)),
        ("alg none", bearer(&alg_none)),
        ("alg HS256", bearer(&alg_hs)),
        ("another registry (aud)", bearer(&other_registry)),
        ("another issuer", bearer(&other_issuer)),
        ("a refresh token as bearer", bearer(&refresh)),
        ("a robot token as bearer", bearer(&robot)),
        ("a token for team/a used on team/b", bearer(&for_a)),
        ("garbage bearer", "Bearer not-a-jwt".into()),
        ("garbage scheme", "Negotiate abcdef".into()),
        ("garbage basic", "Basic %%%".into()),
        (
            "basic without colon",
            format!("Basic {}", STANDARD.encode("alice")),
        ),
        ("wrong password", basic("alice", "not-her-password")),
        ("unknown user", basic("mallory", password("alice"))),
        ("expired token as password", basic("alice", &expired)),
        ("huge header", huge),
    ];
    for (what, auth) in &cases {
        for (method, uri) in [
            (Method::GET, "/v2/team/b/manifests/v1"),
            (Method::PUT, "/v2/team/b/manifests/v2"),
        ] {
            let r = f
                .send(
                    method.clone(),
                    uri,
                    &[("authorization", auth)],
                    Bytes::new(),
                )
                .await;
            assert_eq!(
                r.status,
                StatusCode::UNAUTHORIZED,
                "{what}: {method} {uri}: {}",
                r.text()
            );
            assert_eq!(r.code(), "UNAUTHORIZED", "{what}");
            assert!(
                r.header("www-authenticate").starts_with("Bearer realm="),
                "{what}: {}",
                r.header("www-authenticate")
            );
            assert!(!r.text().contains(&auth[7.min(auth.len())..]), "{what}");
        }
    }
    // Nothing was written: team/b still has only v1.
    let r = f
        .send(
            Method::GET,
            "/v2/team/b/tags/list",
            &[("authorization", &basic("root", password("root")))],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.json()["tags"], serde_json::json!(["v1"]));
    // At the token endpoint too: 401, the OCI error body, no token.
    for (what, auth) in &cases[11..17] {
        let r = f
            .send(
                Method::GET,
                "/token?scope=repository:team/b:pull",
                &[("authorization", auth)],
                Bytes::new(),
            )
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{what}: {}", r.text());
        assert_eq!(r.code(), "UNAUTHORIZED");
        assert!(r.json().get("token").is_none());
    }
}

#[tokio::test]
async fn the_catalog_lists_only_what_the_caller_may_pull() {
    let f = Fixture::new().await;
    let root = basic("root", password("root"));
    for repo in ["team/app", "other/secret", "public/nginx"] {
        f.push_image(repo, "v1", &root).await;
    }
    let catalog = |auth: String| {
        let f = &f;
        async move {
            let r = f
                .send(
                    Method::GET,
                    "/v2/_catalog",
                    &[("authorization", &auth)],
                    Bytes::new(),
                )
                .await;
            (r.status, r.json()["repositories"].clone())
        }
    };
    let (s, repos) = catalog(root.clone()).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        repos,
        serde_json::json!(["other/secret", "public/nginx", "team/app"])
    );
    let (_, repos) = catalog(basic("bob", password("bob"))).await;
    assert_eq!(repos, serde_json::json!(["public/nginx", "team/app"]));
    // With a token: registry:catalog:* is needed, and then filtered the same.
    let t = f.token(Some("bob"), &["registry:catalog:*"]).await;
    let (_, repos) = catalog(bearer(&t)).await;
    assert_eq!(repos, serde_json::json!(["public/nginx", "team/app"]));
    let t = f.token(Some("bob"), &["repository:team/app:pull"]).await;
    let (s, _) = catalog(bearer(&t)).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // Anonymous callers get no catalog grant.
    let t = f.token(None, &["registry:catalog:*"]).await;
    assert_eq!(payload(&t)["access"], serde_json::json!([]));
}

#[tokio::test]
async fn anonymous_pull_works_for_an_opted_in_glob_and_no_other() {
    let f = Fixture::new().await;
    let root = basic("root", password("root"));
    let manifest = f.push_image("public/nginx", "v1", &root).await;
    f.push_image("team/app", "v1", &root).await;
    let r = f.get_manifest("public/nginx", "v1", None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.text(), manifest);
    let r = f.get_manifest("team/app", "v1", None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // Anonymous push to the public repository is challenged, not allowed.
    let r = f
        .send(
            Method::POST,
            "/v2/public/nginx/blobs/uploads/",
            &[],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // The anonymous token flow (docker, containerd): pull on public only.
    let t = f
        .token(
            None,
            &[
                "repository:public/nginx:pull,push",
                "repository:team/app:pull",
            ],
        )
        .await;
    assert_eq!(
        payload(&t)["access"],
        serde_json::json!([{"type": "repository", "name": "public/nginx", "actions": ["pull"]}])
    );
    let r = f
        .get_manifest("public/nginx", "v1", Some(&bearer(&t)))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = f.get_manifest("team/app", "v1", Some(&bearer(&t))).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.code(), "UNAUTHORIZED");
    // Any logged-in user may pull it too.
    let r = f
        .get_manifest("public/nginx", "v1", Some(&basic("bob", password("bob"))))
        .await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn refresh_tokens_carry_identity_and_are_authorised_afresh() {
    let f = Fixture::new().await;
    let r = f
        .token_reply(Some("alice"), &["repository:team/app:pull"], true)
        .await;
    let refresh = r.json()["refresh_token"].as_str().unwrap().to_owned();
    let claims = payload(&refresh);
    assert_eq!(claims["kind"], "refresh");
    assert_eq!(claims["access"], serde_json::json!([]));
    // OAuth2 refresh grant.
    let form = format!(
        "grant_type=refresh_token&refresh_token={refresh}&service={SERVICE}&scope={}&client_id=test",
        urlencode("repository:team/app:pull,push")
    );
    let r = f
        .send(
            Method::POST,
            "/token",
            &[("content-type", "application/x-www-form-urlencoded")],
            form.clone(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    f.remember(&r);
    let t = r.json()["access_token"].as_str().unwrap().to_owned();
    assert_eq!(
        payload(&t)["access"][0]["actions"],
        serde_json::json!(["pull", "push"])
    );
    f.push_image("team/app", "v1", &bearer(&t)).await;
    // A refresh grant gives no new refresh token: the first bounds them all.
    assert!(r.json().get("refresh_token").is_none());
    // As a Basic password, too (docker's credential store may hold it).
    let r = f
        .get_manifest("team/app", "v1", Some(&basic("alice", &refresh)))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    // A user removed from the htpasswd file can no longer refresh.
    std::fs::write(
        f.dir.path().join("htpasswd"),
        htpasswd_text(&["bob", "root"]),
    )
    .unwrap();
    f.auth.reload();
    let r = f
        .send(
            Method::POST,
            "/token",
            &[("content-type", "application/x-www-form-urlencoded")],
            form,
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.code(), "UNAUTHORIZED");
    // Nor log in with the password.
    let r = f.token_reply(Some("alice"), &[], false).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn post_token_grants_with_a_password() {
    let f = Fixture::new().await;
    let form = format!(
        "grant_type=password&username=alice&password={}&service={SERVICE}&client_id=docker&access_type=offline&scope={}",
        password("alice"),
        urlencode("repository:team/app:pull,push repository:other/x:pull")
    );
    let r = f
        .send(
            Method::POST,
            "/token",
            &[("content-type", "application/x-www-form-urlencoded")],
            form,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    f.remember(&r);
    let v = r.json();
    assert!(v["refresh_token"].is_string());
    assert_eq!(
        payload(v["access_token"].as_str().unwrap())["access"],
        serde_json::json!([{"type": "repository", "name": "team/app", "actions": ["pull", "push"]}])
    );
    let form = "grant_type=password&username=alice&password=wrong-guess&service=x";
    let r = f.send(Method::POST, "/token", &[], form).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.code(), "UNAUTHORIZED");
    assert!(!r.text().contains("wrong-guess"));
    let r = f
        .send(Method::POST, "/token", &[], "grant_type=client_credentials")
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn repeated_failed_logins_from_one_address_get_429() {
    let f = Fixture::with_limits(Limits {
        failures: 3,
        window: Duration::from_secs(60),
        max_clients: 100,
    })
    .await;
    let bad = basic("alice", "guess");
    for _ in 0..3 {
        let r = f
            .send_from(
                "198.51.100.7:1234",
                false,
                Method::GET,
                "/token",
                &[("authorization", &bad)],
                Bytes::new(),
            )
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }
    let good = basic("alice", password("alice"));
    for (uri, auth) in [
        ("/token", &bad),
        ("/token", &good),
        ("/v2/team/app/tags/list", &good),
    ] {
        let r = f
            .send_from(
                "198.51.100.7:1235",
                false,
                Method::GET,
                uri,
                &[("authorization", auth)],
                Bytes::new(),
            )
            .await;
        assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{uri}");
        assert_eq!(r.code(), "TOOMANYREQUESTS");
        let retry: u64 = r.header("retry-after").parse().unwrap();
        assert!((1..=60).contains(&retry));
    }
    // Another address is not slowed.
    let r = f
        .send_from(
            "198.51.100.8:1",
            false,
            Method::GET,
            "/token",
            &[("authorization", &good)],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn a_rotated_key_is_accepted_while_listed_and_refused_after() {
    let f = Fixture::new().await;
    let root = basic("root", password("root"));
    f.push_image("team/app", "v1", &root).await;
    let old_token = f.token(Some("alice"), &["repository:team/app:pull"]).await;
    let keys = f.keys_dir();
    let old_public = std::fs::read_to_string(keys.join(VERIFY_KEYS_FILE)).unwrap();
    let (new_private, new_public) = berth_access::keys::generate().unwrap();
    // The operator's rotation: both public keys, then the new signing key.
    std::fs::write(
        keys.join(VERIFY_KEYS_FILE),
        format!("{old_public}{new_public}"),
    )
    .unwrap();
    std::fs::write(keys.join(SIGNING_KEY_FILE), &new_private).unwrap();
    f.auth.reload();
    let new_token = f.token(Some("alice"), &["repository:team/app:pull"]).await;
    let new_kid = Signer::from_pem(new_private.as_bytes())
        .unwrap()
        .kid()
        .to_owned();
    let header: serde_json::Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(new_token.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(header["kid"], new_kid);
    for t in [&old_token, &new_token] {
        let r = f.get_manifest("team/app", "v1", Some(&bearer(t))).await;
        assert_eq!(r.status, StatusCode::OK);
    }
    // The old key is dropped: its tokens are refused, the new ones are not.
    std::fs::write(keys.join(VERIFY_KEYS_FILE), &new_public).unwrap();
    f.auth.reload();
    let r = f
        .get_manifest("team/app", "v1", Some(&bearer(&old_token)))
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = f
        .get_manifest("team/app", "v1", Some(&bearer(&new_token)))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    // A broken file keeps the keys loaded before.
    std::fs::write(keys.join(VERIFY_KEYS_FILE), "not a key").unwrap();
    f.auth.reload();
    let r = f
        .get_manifest("team/app", "v1", Some(&bearer(&new_token)))
        .await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn a_robot_token_pulls_its_namespace_and_nothing_else() {
    let f = Fixture::new().await;
    let root = basic("root", password("root"));
    f.push_image("team/app", "v1", &root).await;
    f.push_image("other/app", "v1", &root).await;
    let mut robot = f.claims(
        &Claims::robot_subject("team"),
        vec![Grant::repository("team/*", Actions::of(&[Action::Pull]))],
        3600,
    );
    robot.kind = TokenKind::Robot;
    let robot = f.sign(&robot);
    let auth = basic("berth-robot", &robot);
    assert_eq!(
        f.get_manifest("team/app", "v1", Some(&auth)).await.status,
        StatusCode::OK
    );
    let r = f.get_manifest("other/app", "v1", Some(&auth)).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = f
        .send(
            Method::POST,
            "/v2/team/app/blobs/uploads/",
            &[("authorization", &auth)],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(
        r.message()
            .contains("berth:robot:team may not push to team/app"),
        "{}",
        r.message()
    );
    // Through the token flow, the same rights.
    let r = f
        .send(
            Method::GET,
            "/token?scope=repository:team/app:pull,push&scope=repository:other/app:pull",
            &[("authorization", &auth)],
            Bytes::new(),
        )
        .await;
    f.remember(&r);
    assert_eq!(
        payload(r.json()["token"].as_str().unwrap())["access"],
        serde_json::json!([{"type": "repository", "name": "team/app", "actions": ["pull"]}])
    );
}

#[tokio::test]
async fn a_mount_from_a_repository_the_caller_cannot_pull_starts_a_plain_upload() {
    let f = Fixture::new().await;
    let root = basic("root", password("root"));
    let digest = f.push_blob("other/secret", &root, b"secret layer").await;
    // The challenge asks for pull on the source too, so one token does both.
    let r = f
        .send(
            Method::POST,
            &format!("/v2/team/app/blobs/uploads/?mount={digest}&from=other/secret"),
            &[("host", "hub")],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(
        r.header("www-authenticate")
            .ends_with(",scope=\"repository:team/app:pull,push repository:other/secret:pull\""),
        "{}",
        r.header("www-authenticate")
    );
    let alice = basic("alice", password("alice"));
    let r = f
        .send(
            Method::POST,
            &format!("/v2/team/app/blobs/uploads/?mount={digest}&from=other/secret"),
            &[("authorization", &alice)],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    let r = f
        .send(
            Method::GET,
            &format!("/v2/team/app/blobs/{digest}"),
            &[("authorization", &alice)],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // A token for the target alone, held by someone who may pull the
    // source: asked to come back with a token for both.
    let t = f
        .token(Some("root"), &["repository:team/app:pull,push"])
        .await;
    let r = f
        .send(
            Method::POST,
            &format!("/v2/team/app/blobs/uploads/?mount={digest}&from=other/secret"),
            &[("authorization", &bearer(&t))],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.header("www-authenticate").contains("insufficient_scope"));
    let t = f
        .token(
            Some("root"),
            &[
                "repository:team/app:pull,push",
                "repository:other/secret:pull",
            ],
        )
        .await;
    let r = f
        .send(
            Method::POST,
            &format!("/v2/team/app/blobs/uploads/?mount={digest}&from=other/secret"),
            &[("authorization", &bearer(&t))],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    // With Basic credentials, root may pull the source: the mount happens.
    let r = f
        .send(
            Method::POST,
            &format!("/v2/team/app/blobs/uploads/?mount={digest}&from=other/secret"),
            &[("authorization", &root)],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
}

#[tokio::test]
async fn a_non_bcrypt_htpasswd_entry_stops_the_start_naming_user_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let (private, public) = berth_access::keys::generate().unwrap();
    std::fs::write(dir.path().join(SIGNING_KEY_FILE), &private).unwrap();
    std::fs::write(dir.path().join(VERIFY_KEYS_FILE), &public).unwrap();
    let htpasswd = dir.path().join("htpasswd");
    std::fs::write(
        &htpasswd,
        format!(
            "{}legacy:$apr1$Vh0v6x0Q$2Kq0Hdnk0vS1QwVxrqP1n/\n",
            htpasswd_text(&["alice"])
        ),
    )
    .unwrap();
    let config = AuthConfig {
        mode: Mode::Htpasswd,
        service: SERVICE.into(),
        keys_dir: dir.path().into(),
        token_ttl_seconds: 300,
        refresh_ttl_seconds: 3600,
        kubernetes: None,
        htpasswd: Some(HtpasswdAuth { file: htpasswd }),
        policy: Policy::default(),
        anonymous_pull: vec![],
    };
    let e = Auth::start(config).await.unwrap_err().to_string();
    assert!(e.contains("line 2"), "{e}");
    assert!(e.contains("\"legacy\""), "{e}");
    assert!(e.contains("htpasswd -B"), "{e}");
}

#[tokio::test]
async fn auth_outcomes_are_counted_without_user_labels() {
    let f = Fixture::new().await;
    f.send(Method::GET, "/v2/", &[], Bytes::new()).await;
    f.send(
        Method::GET,
        "/v2/",
        &[("authorization", &basic("alice", password("alice")))],
        Bytes::new(),
    )
    .await;
    let m = f
        .send(Method::GET, "/metrics", &[], Bytes::new())
        .await
        .text();
    assert!(
        m.contains("berth_registry_auth_decisions_total{mode=\"htpasswd\",outcome=\"granted\"}"),
        "{m}"
    );
    assert!(m.contains("outcome=\"unauthorized\""), "{m}");
    assert!(!m.contains("alice"));
}

/// Kubernetes mode through HTTP against the e2e cluster's apiserver:
/// editors push, viewers are denied push, another namespace is denied,
/// names without a namespace are refused, the catalog shows one's own
/// namespaces. Opt in with a cluster up:
///   eval "$(e2e/cluster env)"; BERTH_TEST_CLUSTER=1 cargo test -p berth-registry --test auth kubernetes
#[tokio::test]
async fn kubernetes_mode_decides_by_rbac_through_the_token_flow() {
    if std::env::var("BERTH_TEST_CLUSTER").as_deref() != Ok("1") {
        eprintln!("skipped: set BERTH_TEST_CLUSTER=1 with KUBECONFIG for the e2e cluster");
        return;
    }
    let (a, b) = ("reg-auth-k8s-a", "reg-auth-k8s-b");
    let kubectl = |args: &[&str], stdin: Option<&str>| -> String {
        use std::io::Write as _;
        let mut child = std::process::Command::new("kubectl")
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        if let Some(s) = stdin {
            child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
        } else {
            drop(child.stdin.take());
        }
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "kubectl {args:?} failed");
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let role = |ns: &str, name: &str, verbs: &str, sa: &str| {
        format!(
            "apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: {sa}, namespace: {ns}}}\n---\n\
             apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {{name: {name}, namespace: {ns}}}\n\
             rules: [{{apiGroups: [berth.dev], resources: [repositories], verbs: [{verbs}]}}]\n---\n\
             apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: {name}-{sa}, namespace: {ns}}}\n\
             roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: {name}}}\n\
             subjects: [{{kind: ServiceAccount, name: {sa}, namespace: {ns}}}]\n"
        )
    };
    let mut yaml = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {a}}}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {b}}}\n---\n"
    );
    yaml.push_str(&role(a, "push", "get, create, update, delete", "editor"));
    yaml.push_str("---\n");
    yaml.push_str(&role(a, "pull", "get", "viewer"));
    yaml.push_str("---\n");
    yaml.push_str(&role(b, "push", "get, create, update, delete", "other"));
    yaml.push_str(&format!(
        "---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: plain, namespace: {a}}}\n"
    ));
    kubectl(&["apply", "-f", "-"], Some(&yaml));
    let token = |ns: &str, sa: &str| {
        kubectl(
            &["create", "token", sa, "-n", ns, "--duration", "10m"],
            None,
        )
    };
    let (editor, viewer, other, plain) = (
        token(a, "editor"),
        token(a, "viewer"),
        token(b, "other"),
        token(a, "plain"),
    );

    let dir = tempfile::tempdir().unwrap();
    let (private, public) = berth_access::keys::generate().unwrap();
    std::fs::write(dir.path().join(SIGNING_KEY_FILE), &private).unwrap();
    std::fs::write(dir.path().join(VERIFY_KEYS_FILE), &public).unwrap();
    let config = AuthConfig {
        mode: Mode::Kubernetes,
        service: SERVICE.into(),
        keys_dir: dir.path().into(),
        token_ttl_seconds: 300,
        refresh_ttl_seconds: 3600,
        kubernetes: Some(berth_access::config::KubernetesAuth {
            audiences: vec![],
            same_namespace_pull: true,
        }),
        htpasswd: None,
        policy: Policy::default(),
        anonymous_pull: vec![],
    };
    let auth = Auth::start(config).await.unwrap().unwrap();
    let store = berth_registry::filesystem_store(&dir.path().join("data")).unwrap();
    let f = Fixture {
        app: berth_registry::router_with_auth(store, Some(auth.clone())),
        auth,
        dir,
        signer: Signer::from_pem(private.as_bytes()).unwrap(),
        secrets: std::sync::Mutex::new(vec![editor.clone(), viewer.clone(), other.clone()]),
    };
    let get_token = |who: &str, scope: String| {
        let f = &f;
        let auth = basic("any", who);
        async move {
            let r = f
                .send(
                    Method::GET,
                    &format!("/token?scope={}", urlencode(&scope)),
                    &[("authorization", &auth)],
                    Bytes::new(),
                )
                .await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.text());
            f.remember(&r);
            r.json()["token"].as_str().unwrap().to_owned()
        }
    };
    let app = format!("{a}/app");
    // A refresh token lives no longer than the Kubernetes token (10 min).
    let r = f
        .send(
            Method::GET,
            "/token?offline_token=true",
            &[("authorization", &basic("any", &editor))],
            Bytes::new(),
        )
        .await;
    f.remember(&r);
    let exp = payload(r.json()["refresh_token"].as_str().unwrap())["exp"]
        .as_i64()
        .unwrap();
    assert!(
        exp <= now() + 600 + 5,
        "refresh exp {exp} outlives the token"
    );
    // The editor pushes through the token flow.
    let t = get_token(&editor, format!("repository:{app}:pull,push")).await;
    f.push_image(&app, "v1", &bearer(&t)).await;
    // The viewer gets pull only, and is denied push by name.
    let t = get_token(&viewer, format!("repository:{app}:pull,push")).await;
    assert_eq!(
        payload(&t)["access"][0]["actions"],
        serde_json::json!(["pull"])
    );
    assert_eq!(
        f.get_manifest(&app, "v1", Some(&bearer(&t))).await.status,
        StatusCode::OK
    );
    let r = f
        .send(
            Method::POST,
            &format!("/v2/{app}/blobs/uploads/"),
            &[("authorization", &bearer(&t))],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(
        r.message().contains(&format!(
            "system:serviceaccount:{a}:viewer may not push to {app}"
        )),
        "{}",
        r.message()
    );
    // Another namespace's account: nothing in a.
    let t = get_token(&other, format!("repository:{app}:pull")).await;
    assert_eq!(payload(&t)["access"], serde_json::json!([]));
    let r = f.get_manifest(&app, "v1", Some(&bearer(&t))).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = f
        .get_manifest(&app, "v1", Some(&basic("any", &other)))
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // A namespace's own account with no role pulls (sameNamespacePull).
    assert_eq!(
        f.get_manifest(&app, "v1", Some(&basic("any", &plain)))
            .await
            .status,
        StatusCode::OK
    );
    // A name whose first component cannot be a namespace.
    let r = f
        .get_manifest("my.team/app", "v1", Some(&basic("any", &editor)))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.code(), "NAME_INVALID");
    // Not a token at all.
    let r = f
        .get_manifest(&app, "v1", Some(&basic("any", "not-a-token")))
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // The catalog: each sees their namespaces only.
    f.push_image(&format!("{b}/tool"), "v1", &basic("any", &other))
        .await;
    for (who, want) in [
        (&viewer, vec![app.clone()]),
        (&other, vec![format!("{b}/tool")]),
    ] {
        let r = f
            .send(
                Method::GET,
                "/v2/_catalog",
                &[("authorization", &basic("any", who))],
                Bytes::new(),
            )
            .await;
        assert_eq!(r.json()["repositories"], serde_json::json!(want));
    }
    kubectl(&["delete", "namespace", a, b, "--wait=false"], None);
}
