#![allow(dead_code, clippy::unwrap_used)]
//! A registry driven in process on a real filesystem store, shared by the
//! test files that need one.

use std::path::Path;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use bytes::Bytes;
use http_body_util::BodyExt;
use sha2::{Digest as _, Sha256};
use tower::ServiceExt;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

pub struct Registry {
    pub app: Router,
    pub dir: tempfile::TempDir,
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// The OCI error code of an error reply.
    pub fn code(&self) -> String {
        let v: serde_json::Value = serde_json::from_slice(&self.body).unwrap_or_default();
        v["errors"][0]["code"].as_str().unwrap_or("").to_owned()
    }
}

pub fn sha256(data: &[u8]) -> String {
    let h = Sha256::digest(data);
    format!(
        "sha256:{}",
        h.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

impl Registry {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        Registry {
            app: berth_registry::router(berth_registry::filesystem_store(dir.path()).unwrap()),
            dir,
        }
    }

    /// A second server process on the same data (as after a restart).
    pub fn restarted(self) -> Self {
        Registry {
            app: berth_registry::router(berth_registry::filesystem_store(self.dir.path()).unwrap()),
            dir: self.dir,
        }
    }

    pub async fn send(
        &self,
        method: Method,
        uri: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Reply {
        let mut req = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = self
            .app
            .clone()
            .oneshot(req.body(Body::from(body.into())).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        Reply {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&self, uri: &str) -> Reply {
        self.send(Method::GET, uri, &[], Bytes::new()).await
    }

    pub async fn push_blob(&self, repo: &str, data: &[u8]) -> String {
        let digest = sha256(data);
        let r = self
            .send(
                Method::POST,
                &format!("/v2/{repo}/blobs/uploads/?digest={digest}"),
                &[],
                data.to_vec(),
            )
            .await;
        assert_eq!(
            r.status,
            StatusCode::CREATED,
            "{}",
            String::from_utf8_lossy(&r.body)
        );
        digest
    }

    /// Pushes config + one layer and returns the manifest body.
    pub async fn image_manifest(&self, repo: &str, layer: &[u8], extra: &str) -> String {
        let config = self.push_blob(repo, b"{}").await;
        let layer_digest = self.push_blob(repo, layer).await;
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":2}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{layer_digest}","size":{}}}]{extra}}}"#,
            layer.len()
        )
    }

    pub async fn put_manifest(&self, repo: &str, reference: &str, body: &str) -> Reply {
        self.send(
            Method::PUT,
            &format!("/v2/{repo}/manifests/{reference}"),
            &[("content-type", OCI_MANIFEST)],
            body.to_owned(),
        )
        .await
    }

    pub async fn start_upload(&self, repo: &str) -> String {
        let r = self
            .send(
                Method::POST,
                &format!("/v2/{repo}/blobs/uploads/"),
                &[],
                Bytes::new(),
            )
            .await;
        assert_eq!(r.status, StatusCode::ACCEPTED);
        r.header("location").to_owned()
    }

    /// Every file under `dir`.
    pub fn files_under(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        walk(dir, &mut out);
        out.sort();
        out
    }

    /// Every file under the data directory, for "nothing was touched" checks.
    pub fn files(&self) -> Vec<String> {
        let mut out = Vec::new();
        walk(self.dir.path(), &mut out);
        out.sort();
        out
    }
}

fn walk(p: &Path, out: &mut Vec<String>) {
    for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
        if e.path().is_dir() {
            walk(&e.path(), out);
        } else {
            out.push(e.path().display().to_string());
        }
    }
}

/// Users of [`Secured`], each with their password.
pub const USERS: [(&str, &str); 3] = [
    ("alice", "alice-Pa55word"),
    ("bob", "bob-Pa55word"),
    ("root", "root-Pa55word"),
];

/// A registry with htpasswd auth and (optionally) an audit trail, driven
/// in process: alice may pull, push and delete `team/*`; bob may pull
/// `team/*`; root (group admins) may do anything anywhere (`*`); anyone may
/// pull `public/*`.
pub struct Secured {
    pub app: Router,
    pub dir: tempfile::TempDir,
    pub audit: Option<std::sync::Arc<berth_registry::audit::Audit>>,
    /// What `app` serves, for building more routers over it (another
    /// replica, a restart).
    pub store: std::sync::Arc<berth_registry::Store>,
    pub auth: std::sync::Arc<berth_registry::auth::Auth>,
}

impl Secured {
    pub async fn new(audit: bool) -> Secured {
        Secured::notifying(audit, None).await
    }

    /// [`Secured::new`] telling `notify`'s webhooks of what happens.
    pub async fn notifying(
        audit: bool,
        notify: Option<std::sync::Arc<berth_registry::notify::Notifier>>,
    ) -> Secured {
        use berth_access::config::{HtpasswdAuth, Policy, Rule};
        use berth_access::{Action, AuthConfig, Mode};
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        std::fs::create_dir(&keys).unwrap();
        let (private, public) = berth_access::keys::generate().unwrap();
        std::fs::write(keys.join(berth_access::keys::SIGNING_KEY_FILE), &private).unwrap();
        std::fs::write(keys.join(berth_access::keys::VERIFY_KEYS_FILE), &public).unwrap();
        let htpasswd = dir.path().join("htpasswd");
        let text: String = USERS
            .iter()
            .map(|(u, p)| format!("{u}:{}\n", bcrypt::hash(p, 4).unwrap()))
            .collect();
        std::fs::write(&htpasswd, text).unwrap();
        let all = vec![Action::Pull, Action::Push, Action::Delete];
        let rule =
            |repositories: &str, users: &[&str], groups: &[&str], actions: Vec<Action>| Rule {
                repositories: repositories.into(),
                users: users.iter().map(|s| s.to_string()).collect(),
                groups: groups.iter().map(|s| s.to_string()).collect(),
                actions,
            };
        let config = AuthConfig {
            mode: Mode::Htpasswd,
            service: "hub.test".into(),
            keys_dir: keys,
            token_ttl_seconds: 300,
            refresh_ttl_seconds: 3600,
            kubernetes: None,
            htpasswd: Some(HtpasswdAuth { file: htpasswd }),
            policy: Policy {
                groups: [("admins".to_string(), vec!["root".to_string()])].into(),
                rules: vec![
                    rule("team/*", &["alice"], &[], all.clone()),
                    rule("team/*", &["bob"], &[], vec![Action::Pull]),
                    rule("team/*", &[], &["admins"], all.clone()),
                    rule("*", &[], &["admins"], all),
                ],
                authenticated: vec![],
            },
            anonymous_pull: vec!["public/*".into()],
        };
        let auth = berth_registry::auth::Auth::start(config)
            .await
            .unwrap()
            .unwrap();
        let data = dir.path().join("data");
        let store = berth_registry::filesystem_store(&data).unwrap();
        let audit = audit.then(|| {
            berth_registry::audit::Audit::start(
                std::sync::Arc::new(berth_registry::storage::fs::FsDriver::new(&data).unwrap()),
                berth_registry::audit::Config::new(30),
            )
        });
        Secured {
            store: store.clone(),
            auth: auth.clone(),
            app: berth_registry::router_features(
                store,
                Some(auth),
                &berth_registry::limits::Limits::default(),
                berth_registry::Features {
                    audit: audit.clone(),
                    notify,
                    ..Default::default()
                },
            ),
            dir,
            audit,
        }
    }

    /// Sends as `user` (Basic credentials; None: anonymous) from `peer`.
    pub async fn send_as(
        &self,
        user: Option<&str>,
        method: Method,
        uri: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Reply {
        send(
            &self.app,
            user.map(basic),
            "192.0.2.7:40000",
            method,
            uri,
            headers,
            body,
        )
        .await
    }

    /// Pushes a one-layer image as `user`; returns the manifest's digest.
    pub async fn push_image(&self, user: &str, repo: &str, tag: &str, annotations: &str) -> String {
        let mut digests = Vec::new();
        for data in [&b"{}"[..], format!("layer of {repo}").as_bytes()] {
            let digest = sha256(data);
            let r = self
                .send_as(
                    Some(user),
                    Method::POST,
                    &format!("/v2/{repo}/blobs/uploads/?digest={digest}"),
                    &[],
                    data.to_vec(),
                )
                .await;
            assert_eq!(
                r.status,
                StatusCode::CREATED,
                "{}",
                String::from_utf8_lossy(&r.body)
            );
            digests.push((digest, data.len()));
        }
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":2}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{}","size":{}}}]{annotations}}}"#,
            digests[0].0, digests[1].0, digests[1].1
        );
        let r = self
            .send_as(
                Some(user),
                Method::PUT,
                &format!("/v2/{repo}/manifests/{tag}"),
                &[("content-type", OCI_MANIFEST)],
                manifest.clone(),
            )
            .await;
        assert_eq!(
            r.status,
            StatusCode::CREATED,
            "{}",
            String::from_utf8_lossy(&r.body)
        );
        sha256(manifest.as_bytes())
    }
}

/// `Basic` credentials of one of [`USERS`] (an unknown user gets a wrong
/// password).
pub fn basic(user: &str) -> String {
    use base64::Engine as _;
    let password = USERS
        .iter()
        .find(|(u, _)| *u == user)
        .map(|(_, p)| *p)
        .unwrap_or("wrong");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// Sends a request to `app` as if from `peer`, with `authorization` if any.
pub async fn send(
    app: &Router,
    authorization: Option<String>,
    peer: &str,
    method: Method,
    uri: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Reply {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(a) = &authorization {
        req = req.header("authorization", a.as_str());
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let mut req = req.body(Body::from(body.into())).unwrap();
    req.extensions_mut()
        .insert(berth_registry::server::Connection {
            peer: peer.parse().unwrap(),
            tls: false,
        });
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        headers,
        body,
    }
}
