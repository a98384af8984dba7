#![allow(clippy::unwrap_used)]
//! The pull-through cache against a real upstream: a second berth registry
//! on loopback, over TLS with token auth (htpasswd users; anonymous tokens
//! for `library/*`), whose every request is logged so a test can tell
//! whether the mirror went upstream.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::http::{Method, StatusCode};
use bytes::Bytes;
use common::{OCI_MANIFEST, Reply, send, sha256};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json";
const PUSHER: &str = "Basic cHVzaGVyOnB1c2hlci1wYXNz"; // pusher:pusher-pass
const READER_PASSWORD: &str = "reader-pass";

/// The upstream registry: TLS, htpasswd token auth; `pusher` may do
/// anything, `reader` may pull `team/*`, anyone may pull `library/*`.
struct Upstream {
    /// In process, for pushes.
    app: Router,
    url: String,
    ca_file: PathBuf,
    /// "METHOD path" of every request that reached it over the network.
    log: Arc<Mutex<Vec<String>>>,
    /// Non-zero: every `/v2/` request is answered with this status.
    fail: Arc<AtomicU16>,
    /// Set: blob bodies are served with their last byte changed (same
    /// length, so only the digest can tell).
    corrupt: Arc<AtomicBool>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    dir: tempfile::TempDir,
}

impl Upstream {
    async fn start() -> Upstream {
        use berth_access::config::{HtpasswdAuth, Policy, Rule};
        use berth_access::{Action, AuthConfig, Mode};
        let dir = tempfile::tempdir().unwrap();
        // PKI: a CA and a certificate for 127.0.0.1.
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let mut leaf_params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        leaf_params
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        let leaf = leaf_params
            .signed_by(&leaf_key, &Issuer::from_params(&ca_params, &ca_key))
            .unwrap();
        let ca_file = dir.path().join("ca.crt");
        std::fs::write(&ca_file, ca.pem()).unwrap();
        std::fs::write(dir.path().join("tls.crt"), leaf.pem()).unwrap();
        std::fs::write(dir.path().join("tls.key"), leaf_key.serialize_pem()).unwrap();
        // Auth.
        let keys = dir.path().join("keys");
        std::fs::create_dir(&keys).unwrap();
        let (private, public) = berth_access::keys::generate().unwrap();
        std::fs::write(keys.join(berth_access::keys::SIGNING_KEY_FILE), &private).unwrap();
        std::fs::write(keys.join(berth_access::keys::VERIFY_KEYS_FILE), &public).unwrap();
        let htpasswd = dir.path().join("htpasswd");
        std::fs::write(
            &htpasswd,
            format!(
                "pusher:{}\nreader:{}\n",
                bcrypt::hash("pusher-pass", 4).unwrap(),
                bcrypt::hash(READER_PASSWORD, 4).unwrap()
            ),
        )
        .unwrap();
        let rule = |repositories: &str, user: &str, actions: Vec<Action>| Rule {
            repositories: repositories.into(),
            users: vec![user.into()],
            groups: vec![],
            actions,
        };
        let config = AuthConfig {
            mode: Mode::Htpasswd,
            service: "upstream.test".into(),
            keys_dir: keys,
            token_ttl_seconds: 300,
            refresh_ttl_seconds: 3600,
            kubernetes: None,
            htpasswd: Some(HtpasswdAuth { file: htpasswd }),
            policy: Policy {
                groups: Default::default(),
                rules: vec![
                    rule(
                        "*",
                        "pusher",
                        vec![Action::Pull, Action::Push, Action::Delete],
                    ),
                    rule(
                        "team/*",
                        "pusher",
                        vec![Action::Pull, Action::Push, Action::Delete],
                    ),
                    rule("team/*", "reader", vec![Action::Pull]),
                ],
                authenticated: vec![],
            },
            anonymous_pull: vec!["library/*".into()],
        };
        let auth = berth_registry::auth::Auth::start(config)
            .await
            .unwrap()
            .unwrap();
        let store = berth_registry::filesystem_store(&dir.path().join("data")).unwrap();
        let app = berth_registry::router_with_auth(store, Some(auth));

        let log: Arc<Mutex<Vec<String>>> = Arc::default();
        let fail = Arc::new(AtomicU16::new(0));
        let corrupt = Arc::new(AtomicBool::new(false));
        let (l, f, c) = (log.clone(), fail.clone(), corrupt.clone());
        let served = app.clone().layer(axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| {
                let (l, f, c) = (l.clone(), f.clone(), c.clone());
                async move {
                    let blob_get =
                        req.method() == Method::GET && req.uri().path().contains("/blobs/");
                    l.lock()
                        .unwrap()
                        .push(format!("{} {}", req.method(), req.uri().path()));
                    let status = f.load(Ordering::SeqCst);
                    if status != 0 && req.uri().path().starts_with("/v2/") {
                        return axum::response::IntoResponse::into_response((
                            StatusCode::from_u16(status).unwrap(),
                            r#"{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}"#,
                        ));
                    }
                    let resp = next.run(req).await;
                    if !(blob_get && c.load(Ordering::SeqCst) && resp.status() == StatusCode::OK) {
                        return resp;
                    }
                    let (parts, body) = resp.into_parts();
                    let mut bytes = axum::body::to_bytes(body, usize::MAX)
                        .await
                        .unwrap()
                        .to_vec();
                    if let Some(last) = bytes.last_mut() {
                        *last ^= 0xff;
                    }
                    axum::response::Response::from_parts(parts, axum::body::Body::from(bytes))
                }
            },
        ));
        let tls = berth_registry::tls::server_config(
            dir.path().join("tls.crt"),
            dir.path().join("tls.key"),
        )
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(berth_registry::server::serve(
            listener,
            served,
            Some(tls),
            async {
                let _ = stopped.await;
            },
        ));
        Upstream {
            app,
            url: format!("https://{addr}"),
            ca_file,
            log,
            fail,
            corrupt,
            stop: Some(stop),
            server: Some(server),
            dir,
        }
    }

    async fn push(&self, method: Method, uri: &str, ct: &str, body: impl Into<Bytes>) -> Reply {
        let headers: Vec<(&str, &str)> = if ct.is_empty() {
            vec![]
        } else {
            vec![("content-type", ct)]
        };
        let r = send(
            &self.app,
            Some(PUSHER.into()),
            "127.0.0.1:1",
            method,
            uri,
            &headers,
            body,
        )
        .await;
        assert!(
            r.status.is_success(),
            "{uri}: {} {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        );
        r
    }

    async fn push_blob(&self, repo: &str, data: &[u8]) -> String {
        let digest = sha256(data);
        self.push(
            Method::POST,
            &format!("/v2/{repo}/blobs/uploads/?digest={digest}"),
            "",
            data.to_vec(),
        )
        .await;
        digest
    }

    async fn push_manifest(&self, repo: &str, reference: &str, ct: &str, body: &str) -> String {
        self.push(
            Method::PUT,
            &format!("/v2/{repo}/manifests/{reference}"),
            ct,
            body.to_owned(),
        )
        .await;
        sha256(body.as_bytes())
    }

    /// Pushes a two-platform image (an index of two image manifests, each
    /// with its own config and layer) tagged `tag`; returns the index's
    /// digest.
    async fn push_multi_arch(&self, repo: &str, tag: &str, seed: &str) -> String {
        let mut entries = Vec::new();
        for arch in ["amd64", "arm64"] {
            let config = format!(r#"{{"architecture":"{arch}","os":"linux","seed":"{seed}"}}"#);
            let config_digest = self.push_blob(repo, config.as_bytes()).await;
            let layer: Vec<u8> = format!("{seed}-{arch}-")
                .bytes()
                .cycle()
                .take(300_000)
                .collect();
            let layer_digest = self.push_blob(repo, &layer).await;
            let manifest = format!(
                r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{layer_digest}","size":{}}}]}}"#,
                config.len(),
                layer.len()
            );
            let digest = self
                .push_manifest(repo, &sha256(manifest.as_bytes()), OCI_MANIFEST, &manifest)
                .await;
            entries.push(format!(
                r#"{{"mediaType":"{OCI_MANIFEST}","digest":"{digest}","size":{},"platform":{{"architecture":"{arch}","os":"linux"}}}}"#,
                manifest.len()
            ));
        }
        let index = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{}]}}"#,
            entries.join(",")
        );
        self.push_manifest(repo, tag, OCI_INDEX, &index).await
    }

    /// Requests for `what` ("/blobs/", "/manifests/") that reached it.
    fn requests(&self, what: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(what))
            .count()
    }

    async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            tokio::time::timeout(Duration::from_secs(30), server)
                .await
                .unwrap()
                .unwrap()
                .unwrap();
        }
    }
}

/// The mirror: plain HTTP on loopback (and in process), no auth.
struct Mirror {
    app: Router,
    addr: SocketAddr,
    store: Arc<berth_registry::storage::Store>,
    mirror: Arc<berth_registry::mirror::Mirror>,
    _dir: tempfile::TempDir,
    /// The mirror's own auth keys and users, when it has logins.
    _keys: Option<tempfile::TempDir>,
}

impl Mirror {
    /// `upstreams`: (prefix, freshness seconds, with reader's credentials).
    async fn start(upstream: &Upstream, upstreams: &[(&str, u64, bool)]) -> Mirror {
        Self::start_with(upstream, upstreams, None).await
    }

    /// Likewise, each upstream with the cache cap `max_age_seconds`.
    async fn start_with(
        upstream: &Upstream,
        upstreams: &[(&str, u64, bool)],
        max_age_seconds: Option<u64>,
    ) -> Mirror {
        Self::start_full(upstream, upstreams, max_age_seconds, None, None).await
    }

    /// Likewise, with logins: htpasswd users of `common::USERS`, `alice`
    /// may pull `private.test/*`, anyone `docker.io/library/*`.
    async fn start_secured(upstream: &Upstream, upstreams: &[(&str, u64, bool)]) -> Mirror {
        use berth_access::config::{HtpasswdAuth, Policy, Rule};
        use berth_access::{Action, AuthConfig, Mode};
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        std::fs::create_dir(&keys).unwrap();
        let (private, public) = berth_access::keys::generate().unwrap();
        std::fs::write(keys.join(berth_access::keys::SIGNING_KEY_FILE), &private).unwrap();
        std::fs::write(keys.join(berth_access::keys::VERIFY_KEYS_FILE), &public).unwrap();
        let htpasswd = dir.path().join("htpasswd");
        let text: String = common::USERS
            .iter()
            .map(|(u, p)| format!("{u}:{}\n", bcrypt::hash(p, 4).unwrap()))
            .collect();
        std::fs::write(&htpasswd, text).unwrap();
        let config = AuthConfig {
            mode: Mode::Htpasswd,
            service: "mirror.test".into(),
            keys_dir: keys,
            token_ttl_seconds: 300,
            refresh_ttl_seconds: 3600,
            kubernetes: None,
            htpasswd: Some(HtpasswdAuth { file: htpasswd }),
            policy: Policy {
                groups: Default::default(),
                rules: vec![Rule {
                    repositories: "private.test/*".into(),
                    users: vec!["alice".into()],
                    groups: vec![],
                    actions: vec![Action::Pull],
                }],
                authenticated: vec![],
            },
            anonymous_pull: vec!["docker.io/library/*".into()],
        };
        let mut m = Self::start_full(upstream, upstreams, None, None, Some(config)).await;
        m._keys = Some(dir);
        m
    }

    async fn start_full(
        upstream: &Upstream,
        upstreams: &[(&str, u64, bool)],
        max_age_seconds: Option<u64>,
        max_size_bytes: Option<u64>,
        auth: Option<berth_access::AuthConfig>,
    ) -> Mirror {
        let dir = tempfile::tempdir().unwrap();
        let entries: Vec<serde_json::Value> = upstreams
            .iter()
            .map(|(prefix, fresh, creds)| {
                let mut u = serde_json::json!({
                    "prefix": prefix,
                    "url": upstream.url,
                    "tagFreshnessSeconds": fresh,
                    "caFile": upstream.ca_file,
                });
                if *creds {
                    let (user, pass) = (dir.path().join("user"), dir.path().join("pass"));
                    std::fs::write(&user, "reader\n").unwrap();
                    std::fs::write(&pass, format!("{READER_PASSWORD}\n")).unwrap();
                    u["usernameFile"] = serde_json::json!(user);
                    u["passwordFile"] = serde_json::json!(pass);
                }
                if let Some(age) = max_age_seconds {
                    u["maxAgeSeconds"] = serde_json::json!(age);
                }
                if let Some(bytes) = max_size_bytes {
                    u["maxSizeBytes"] = serde_json::json!(bytes);
                }
                u
            })
            .collect();
        let file = dir.path().join("mirror.json");
        std::fs::write(
            &file,
            serde_json::json!({ "upstreams": entries }).to_string(),
        )
        .unwrap();
        let mirror = berth_registry::mirror::Mirror::from_file(&file).unwrap();
        let store = berth_registry::filesystem_store(&dir.path().join("data")).unwrap();
        let auth = match auth {
            Some(config) => Some(
                berth_registry::auth::Auth::start(config)
                    .await
                    .unwrap()
                    .unwrap(),
            ),
            None => None,
        };
        let app = berth_registry::router_features(
            store.clone(),
            auth,
            &berth_registry::limits::Limits::default(),
            berth_registry::Features {
                mirror: Some(mirror.clone()),
                ..Default::default()
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(berth_registry::server::serve(
            listener,
            app.clone(),
            None,
            std::future::pending(),
        ));
        Mirror {
            app,
            addr,
            store,
            mirror,
            _dir: dir,
            _keys: None,
        }
    }

    async fn get(&self, uri: &str) -> Reply {
        send(
            &self.app,
            None,
            "127.0.0.1:2",
            Method::GET,
            uri,
            &[("accept", ACCEPT)],
            Bytes::new(),
        )
        .await
    }

    /// Pulls `reference` whole, checking every digest; returns the
    /// digests of the manifests and blobs it is made of.
    async fn pull(&self, repo: &str, reference: &str) -> Vec<String> {
        let mut seen = Vec::new();
        let mut manifests = vec![reference.to_owned()];
        while let Some(r) = manifests.pop() {
            let m = self.get(&format!("/v2/{repo}/manifests/{r}")).await;
            assert_eq!(
                m.status,
                StatusCode::OK,
                "manifest {r}: {}",
                String::from_utf8_lossy(&m.body)
            );
            let digest = sha256(&m.body);
            assert_eq!(m.header("docker-content-digest"), digest);
            if r.starts_with("sha256:") {
                assert_eq!(r, digest);
            }
            seen.push(digest);
            let v: serde_json::Value = serde_json::from_slice(&m.body).unwrap();
            if let Some(children) = v["manifests"].as_array() {
                for c in children {
                    manifests.push(c["digest"].as_str().unwrap().to_owned());
                }
                continue;
            }
            let mut blobs = vec![v["config"]["digest"].as_str().unwrap().to_owned()];
            for l in v["layers"].as_array().unwrap() {
                blobs.push(l["digest"].as_str().unwrap().to_owned());
            }
            for b in blobs {
                let r = self.get(&format!("/v2/{repo}/blobs/{b}")).await;
                assert_eq!(
                    r.status,
                    StatusCode::OK,
                    "blob {b}: {}",
                    String::from_utf8_lossy(&r.body)
                );
                assert_eq!(sha256(&r.body), b, "blob bytes do not match their digest");
                seen.push(b);
            }
        }
        seen.sort();
        seen
    }
}

fn metric(prefix: &str, event: &str) -> u64 {
    let text = berth_registry::metrics::render();
    let needle =
        format!("berth_registry_mirror_events_total{{upstream=\"{prefix}\",event=\"{event}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&needle))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_multi_arch_image_is_served_by_tag_and_digest_and_then_from_the_cache() {
    let upstream = Upstream::start().await;
    // Anonymous tokens for library/*; docker.io's single names gain library/.
    let index = upstream.push_multi_arch("library/app", "v1", "one").await;
    let mirror = Mirror::start(&upstream, &[("docker.io", 300, false)]).await;

    let by_tag = mirror.pull("docker.io/app", "v1").await;
    assert_eq!(
        by_tag.len(),
        7,
        "index, two manifests, two configs, two layers"
    );
    assert!(by_tag.contains(&index));
    let blob_fetches = upstream.requests("/blobs/");
    let manifest_fetches = upstream.requests("/manifests/");
    assert!(blob_fetches >= 4, "{:?}", upstream.log.lock().unwrap());

    // Again, by tag (within its freshness window), by digest, under the
    // long name and in containerd's mirror form: nothing reaches upstream.
    assert_eq!(mirror.pull("docker.io/app", "v1").await, by_tag);
    assert_eq!(mirror.pull("docker.io/library/app", &index).await, by_tag);
    let r = mirror
        .get("/v2/library/app/manifests/v1?ns=docker.io")
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("docker-content-digest"), index);
    assert_eq!(upstream.requests("/blobs/"), blob_fetches);
    assert_eq!(upstream.requests("/manifests/"), manifest_fetches);
    assert!(metric("docker.io", "hit") >= 7);

    // HEAD of a cached blob answers from the cache too; a Range works.
    let blob = by_tag.iter().find(|d| **d != index).unwrap();
    let r = send(
        &mirror.app,
        None,
        "127.0.0.1:2",
        Method::GET,
        &format!("/v2/docker.io/library/app/blobs/{blob}"),
        &[("range", "bytes=0-0")],
        Bytes::new(),
    )
    .await;
    assert!(r.status == StatusCode::PARTIAL_CONTENT || r.status == StatusCode::OK);
}

#[tokio::test]
async fn credentials_reach_the_upstream_and_never_the_client() {
    let upstream = Upstream::start().await;
    let index = upstream.push_multi_arch("team/app", "v1", "private").await;
    // Without credentials the upstream refuses; with reader's it serves.
    let mirror = Mirror::start(
        &upstream,
        &[("anon.test", 300, false), ("private.test", 300, true)],
    )
    .await;
    let r = mirror.get("/v2/anon.test/team/app/manifests/v1").await;
    assert_eq!(
        r.status,
        StatusCode::FORBIDDEN,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let text = String::from_utf8_lossy(&r.body);
    assert!(
        text.contains(&upstream.url) && text.contains("401"),
        "{text}"
    );
    let all = mirror.pull("private.test/team/app", "v1").await;
    assert!(all.contains(&index));
    let t = format!("{:?}{}", r.headers, String::from_utf8_lossy(&r.body));
    assert!(
        !t.contains(READER_PASSWORD) && !t.contains("Bearer "),
        "{t}"
    );
}

#[tokio::test]
async fn pushes_to_a_mirror_prefix_are_refused() {
    let upstream = Upstream::start().await;
    let mirror = Mirror::start(&upstream, &[("docker.io", 300, false)]).await;
    for (method, uri) in [
        (Method::POST, "/v2/docker.io/library/app/blobs/uploads/"),
        (Method::PUT, "/v2/docker.io/library/app/manifests/v1"),
    ] {
        let r = send(
            &mirror.app,
            None,
            "127.0.0.1:2",
            method,
            uri,
            &[],
            Bytes::new(),
        )
        .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN);
        assert_eq!(r.code(), "DENIED");
        assert!(String::from_utf8_lossy(&r.body).contains("read-only"));
    }
    // Outside the prefixes the mirror is an ordinary registry.
    let r = send(
        &mirror.app,
        None,
        "127.0.0.1:2",
        Method::POST,
        "/v2/team/app/blobs/uploads/",
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn when_the_upstream_fails_cached_images_still_pull_and_uncached_ones_fail_clearly() {
    let mut upstream = Upstream::start().await;
    let index = upstream
        .push_multi_arch("library/app", "v1", "cached")
        .await;
    upstream
        .push_multi_arch("library/other", "v1", "never")
        .await;
    // Freshness 0: every tag request asks the upstream first.
    let mirror = Mirror::start(&upstream, &[("stale.test", 0, false)]).await;
    let cached = mirror.pull("stale.test/library/app", "v1").await;
    let stale_before = metric("stale.test", "stale");

    // Rate limited: the cached tag is served, with a Warning.
    upstream.fail.store(429, Ordering::SeqCst);
    let r = mirror.get("/v2/stale.test/library/app/manifests/v1").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("warning"), "110 - \"response is stale\"");
    assert_eq!(r.header("docker-content-digest"), index);
    let r = mirror
        .get("/v2/stale.test/library/other/manifests/v1")
        .await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(String::from_utf8_lossy(&r.body).contains("429"));
    upstream.fail.store(0, Ordering::SeqCst);

    // Stopped: everything cached still pulls; the rest fails naming it.
    upstream.stop().await;
    assert_eq!(mirror.pull("stale.test/library/app", "v1").await, cached);
    assert!(metric("stale.test", "stale") >= stale_before + 2);
    let r = mirror
        .get("/v2/stale.test/library/other/manifests/v1")
        .await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    let text = String::from_utf8_lossy(&r.body);
    assert!(
        text.contains("not cached") && text.contains(&upstream.url) && text.contains("reached"),
        "{text}"
    );
    assert!(metric("stale.test", "upstream_error") >= 2);
    drop(upstream.dir);
}

#[tokio::test]
async fn a_moved_tag_is_seen_after_its_freshness_window_and_not_before() {
    let upstream = Upstream::start().await;
    let first = upstream.push_multi_arch("library/app", "v1", "first").await;
    let mirror = Mirror::start(&upstream, &[("fresh.test", 2, false)]).await;
    let tag = "/v2/fresh.test/library/app/manifests/v1";
    assert_eq!(mirror.get(tag).await.header("docker-content-digest"), first);
    let second = upstream
        .push_multi_arch("library/app", "v1", "second")
        .await;
    assert_ne!(first, second);
    assert_eq!(mirror.get(tag).await.header("docker-content-digest"), first);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(
        mirror.get(tag).await.header("docker-content-digest"),
        second
    );
    assert!(
        mirror
            .pull("fresh.test/library/app", "v1")
            .await
            .contains(&second)
    );
    // An unchanged tag costs a HEAD after the window, not a GET.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let gets = upstream
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.starts_with("GET") && l.contains("/manifests/v1"))
        .count();
    assert_eq!(
        mirror.get(tag).await.header("docker-content-digest"),
        second
    );
    let after = upstream
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.starts_with("GET") && l.contains("/manifests/v1"))
        .count();
    assert_eq!(gets, after);
}

#[tokio::test]
async fn concurrent_pulls_of_one_uncached_blob_share_one_upstream_fetch() {
    let upstream = Upstream::start().await;
    // 64 MiB of bytes that do not repeat in any short period.
    let mut big = vec![0u8; 64 << 20];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for chunk in big.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    let digest = upstream.push_blob("library/big", &big).await;
    let big = Arc::new(big);
    let mirror = Mirror::start(&upstream, &[("docker.io", 300, false)]).await;
    let client = reqwest::Client::new();
    let url = format!(
        "http://{}/v2/docker.io/library/big/blobs/{digest}",
        mirror.addr
    );
    let started = std::time::Instant::now();
    let pulls: Vec<_> = (0..20)
        .map(|_| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move {
                let r = client.get(&url).send().await.unwrap();
                assert_eq!(r.status(), 200);
                r.bytes().await.unwrap()
            })
        })
        .collect();
    for p in pulls {
        let body = p.await.unwrap();
        assert_eq!(body.len(), big.len());
        assert!(body[..] == big[..], "a client got different bytes");
    }
    eprintln!(
        "20 concurrent pulls of a 64 MiB uncached blob: {:.2} s",
        started.elapsed().as_secs_f64()
    );
    let fetches = upstream
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.starts_with("GET") && l.contains(&digest))
        .count();
    assert_eq!(fetches, 1, "{:?}", upstream.log.lock().unwrap());
}

#[tokio::test]
async fn the_containerd_mirror_form_and_a_blob_head_reach_the_upstream_once() {
    let upstream = Upstream::start().await;
    let index = upstream.push_multi_arch("library/app", "v1", "ctr").await;
    let mirror = Mirror::start(&upstream, &[("docker.io", 300, false)]).await;
    let r = mirror
        .get("/v2/library/app/manifests/v1?ns=docker.io")
        .await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(r.header("docker-content-digest"), index);
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let child = v["manifests"][0]["digest"].as_str().unwrap();
    let r = mirror
        .get(&format!("/v2/library/app/manifests/{child}?ns=docker.io"))
        .await;
    let m: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let layer = m["layers"][0]["digest"].as_str().unwrap();
    let size = m["layers"][0]["size"].as_u64().unwrap();
    let head = send(
        &mirror.app,
        None,
        "127.0.0.1:2",
        Method::HEAD,
        &format!("/v2/library/app/blobs/{layer}?ns=docker.io"),
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(head.header("content-length"), size.to_string());
    let r = mirror
        .get(&format!("/v2/library/app/blobs/{layer}?ns=docker.io"))
        .await;
    assert_eq!(sha256(&r.body), layer);
    // The same image under the short name is the same cache entry.
    let before = upstream.requests("/blobs/");
    let r = mirror
        .get(&format!("/v2/docker.io/app/blobs/{layer}"))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(upstream.requests("/blobs/"), before);
}

#[tokio::test]
async fn the_age_cap_removes_the_least_recently_pulled_cached_tags_but_never_one_in_use() {
    use berth_access::gc::{InUse, InUseImage};
    use berth_registry::storage::gc::GcOptions;
    let upstream = Upstream::start().await;
    for name in ["old", "fresh", "used"] {
        upstream
            .push_multi_arch(&format!("library/{name}"), "v1", name)
            .await;
    }
    // Freshness 0: every pull of a tag re-checks it, which records the pull.
    let mirror = Mirror::start_with(&upstream, &[("docker.io", 0, false)], Some(6)).await;
    let rules = mirror.mirror.cache_rules();
    assert_eq!(rules.len(), 1);
    for name in ["old", "fresh", "used"] {
        mirror
            .pull(&format!("docker.io/library/{name}"), "v1")
            .await;
    }
    tokio::time::sleep(Duration::from_millis(6500)).await;
    // Pulled again: younger than the cap. `used` is as old as `old`, but a
    // running pod uses it.
    mirror.pull("docker.io/library/fresh", "v1").await;
    let opts = GcOptions {
        grace: Duration::ZERO,
        cache_rules: rules,
        in_use: InUse {
            images: vec![InUseImage {
                repository: "docker.io/library/used".into(),
                digest: None,
                tag: Some("v1".into()),
            }],
        },
        ..GcOptions::default()
    };
    let report = mirror.store.gc(&opts).await.unwrap();
    assert_eq!(report.tags_removed, 1, "{report:?}");
    assert_eq!(report.tags_kept_in_use, 1, "{report:?}");
    let tag = |name: &str| {
        let store = mirror.store.clone();
        let name: berth_registry::oci::Name = format!("docker.io/library/{name}").parse().unwrap();
        async move {
            store
                .tag_target(&name, &"v1".parse().unwrap())
                .await
                .unwrap()
        }
    };
    assert!(tag("old").await.is_none(), "the least recently pulled went");
    assert!(tag("fresh").await.is_some());
    assert!(tag("used").await.is_some());
    // Gone from the cache only: the next pull fetches it again.
    let manifests = upstream.requests("/manifests/");
    mirror.pull("docker.io/library/old", "v1").await;
    assert!(upstream.requests("/manifests/") > manifests);
}

#[tokio::test]
async fn the_age_cap_counts_pulls_served_from_the_cache_not_only_upstream_re_checks() {
    use berth_registry::storage::gc::GcOptions;
    let upstream = Upstream::start().await;
    for name in ["pulled", "idle"] {
        upstream
            .push_multi_arch(&format!("library/{name}"), "v1", name)
            .await;
    }
    // A long freshness: pulls are served from the cache and never re-check
    // (nor rewrite) the tag upstream.
    let mirror = Mirror::start_with(&upstream, &[("docker.io", 3600, false)], Some(3600)).await;
    for name in ["pulled", "idle"] {
        mirror
            .pull(&format!("docker.io/library/{name}"), "v1")
            .await;
    }
    // Both were cached two hours ago and their fetches' pulls recorded
    // then; `pulled` is pulled again now, by digest, from the cache.
    mirror.store.flush_pulls().await.unwrap();
    for name in ["pulled", "idle"] {
        mirror.age_cached(name, Duration::from_secs(7200));
    }
    let index = mirror.cached_tag("pulled").await.unwrap();
    let manifests = upstream.requests("/manifests/");
    mirror
        .pull("docker.io/library/pulled", &index.to_string())
        .await;
    assert_eq!(
        upstream.requests("/manifests/"),
        manifests,
        "served from the cache"
    );
    let opts = GcOptions {
        grace: Duration::ZERO,
        cache_rules: mirror.mirror.cache_rules(),
        ..GcOptions::default()
    };
    let report = mirror.store.gc(&opts).await.unwrap();
    assert_eq!(report.tags_removed, 1, "{report:?}");
    assert!(mirror.cached_tag("idle").await.is_none());
    assert!(mirror.cached_tag("pulled").await.is_some());
}

#[tokio::test]
async fn over_its_size_cap_the_cache_loses_its_least_recently_pulled_image_and_keeps_the_one_in_use()
 {
    use berth_access::gc::{InUse, InUseImage};
    use berth_registry::storage::gc::{GcAction, GcOptions};
    let upstream = Upstream::start().await;
    for name in ["used", "old", "pulled"] {
        upstream
            .push_multi_arch(&format!("library/{name}"), "v1", name)
            .await;
    }
    let mirror = Mirror::start_full(
        &upstream,
        &[("docker.io", 3600, false)],
        None,
        Some(1),
        None,
    )
    .await;
    mirror.cache_used_old_pulled().await;

    // Every blob on disk is cached content: one byte less than all of it
    // makes the cap remove one image.
    let total: u64 = walk(&mirror._dir.path().join("data/blobs"))
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    let mut caps = mirror.mirror.cache_size_caps();
    assert_eq!(caps.len(), 1);
    assert_eq!(caps[0].repositories, "docker.io/*");
    caps[0].max_bytes = total - 1;
    let in_use = InUse {
        images: vec![InUseImage {
            repository: "docker.io/library/used".into(),
            digest: None,
            tag: Some("v1".into()),
        }],
    };
    let opts = GcOptions {
        grace: Duration::ZERO,
        quarantine: Duration::ZERO,
        cache_size_caps: caps,
        in_use,
        list: true,
        ..GcOptions::default()
    };

    // The dry run says which goes and which stays because a pod runs it.
    let before = walk(mirror._dir.path());
    let dry = mirror
        .store
        .gc(&GcOptions {
            dry_run: true,
            ..opts.clone()
        })
        .await
        .unwrap();
    assert_eq!(
        walk(mirror._dir.path()),
        before,
        "a dry run changes nothing"
    );
    assert_eq!((dry.tags_removed, dry.tags_kept_in_use), (1, 1), "{dry:?}");
    let listed: Vec<(GcAction, String)> = dry
        .items
        .iter()
        .filter(|i| i.key.contains("/_manifests/tags/"))
        .map(|i| (i.action, i.key.clone()))
        .collect();
    assert_eq!(
        listed,
        vec![
            (
                GcAction::Untag,
                "repositories/docker.io/library/old/_manifests/tags/v1".to_owned()
            ),
            (
                GcAction::KeepInUse,
                "repositories/docker.io/library/used/_manifests/tags/v1".to_owned()
            ),
        ]
    );

    let report = mirror.store.gc(&opts).await.unwrap();
    assert_eq!((report.tags_removed, report.tags_kept_in_use), (1, 1));
    assert!(
        mirror.cached_tag("old").await.is_none(),
        "least recently pulled"
    );
    assert!(mirror.cached_tag("used").await.is_some(), "in use");
    assert!(mirror.cached_tag("pulled").await.is_some(), "pulled lately");
    // Its content is reclaimed (quarantine 0: the second run deletes), and
    // the cache is under its cap; the next run removes nothing more.
    let again = mirror.store.gc(&opts).await.unwrap();
    assert_eq!(again.tags_removed, 0, "{again:?}");
    assert!(again.blobs_deleted > 0, "{again:?}");
    let after: u64 = walk(&mirror._dir.path().join("data/blobs"))
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    assert!(after < total, "{after} of {total}");
    // Gone from the cache only: the next pull fetches it again.
    let manifests = upstream.requests("/manifests/");
    mirror.pull("docker.io/library/old", "v1").await;
    assert!(upstream.requests("/manifests/") > manifests);
}

/// Runs `berth-registry gc` (the offline subcommand) on the mirror's data
/// directory with `args`; its stdout.
fn offline_gc(mirror: &Mirror, args: &[&std::ffi::OsStr]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_berth-registry"))
        .arg("gc")
        .arg("--data")
        .arg(mirror._dir.path().join("data"))
        .args(["--grace", "0", "--quarantine", "0"])
        .args(args)
        .env_remove("BERTH_DATA")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn offline_gc_with_the_mirror_config_applies_its_size_cap_least_recently_pulled_first_and_keeps_the_image_in_use()
 {
    let upstream = Upstream::start().await;
    for name in ["used", "old", "pulled"] {
        upstream
            .push_multi_arch(&format!("library/{name}"), "v1", name)
            .await;
    }
    let mirror = Mirror::start(&upstream, &[("docker.io", 3600, false)]).await;
    mirror.cache_used_old_pulled().await;
    mirror.store.flush_pulls().await.unwrap();

    let total: u64 = walk(&mirror._dir.path().join("data/blobs"))
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    let dir = mirror._dir.path();
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("mirror.json")).unwrap()).unwrap();
    config["upstreams"][0]["maxSizeBytes"] = serde_json::json!(total - 1);
    let capped = dir.join("capped-mirror.json");
    std::fs::write(&capped, config.to_string()).unwrap();
    let in_use = dir.join("in-use.json");
    std::fs::write(
        &in_use,
        r#"{"images":[{"repository":"docker.io/library/used","tag":"v1"}]}"#,
    )
    .unwrap();

    // Without --mirror-config, as before: the cache is not capped.
    let out = offline_gc(&mirror, &["--in-use".as_ref(), in_use.as_os_str()]);
    assert!(out.contains("gc: 0 tags removed by retention"), "{out}");
    for name in ["used", "old", "pulled"] {
        assert!(mirror.cached_tag(name).await.is_some(), "{name}: {out}");
    }

    // The dry run lists what the cap takes and what stays because in use.
    let with_cap = [
        "--mirror-config".as_ref(),
        capped.as_os_str(),
        "--in-use".as_ref(),
        in_use.as_os_str(),
    ];
    let mut dry_args: Vec<&std::ffi::OsStr> = vec!["--dry-run".as_ref()];
    dry_args.extend(with_cap);
    let out = offline_gc(&mirror, &dry_args);
    assert!(
        out.contains("would untag repositories/docker.io/library/old/_manifests/tags/v1"),
        "{out}"
    );
    assert!(out.contains("library/used/_manifests/tags/v1"), "{out}");
    assert!(!out.contains("library/pulled/"), "{out}");
    assert!(
        mirror.cached_tag("old").await.is_some(),
        "a dry run changes nothing"
    );

    let out = offline_gc(&mirror, &with_cap);
    assert!(
        out.contains("gc: 1 tags removed by retention (1 kept because in use)"),
        "{out}"
    );
    assert!(
        mirror.cached_tag("old").await.is_none(),
        "least recently pulled: {out}"
    );
    assert!(mirror.cached_tag("used").await.is_some(), "in use");
    assert!(mirror.cached_tag("pulled").await.is_some(), "pulled lately");
    let after: u64 = walk(&mirror._dir.path().join("data/blobs"))
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    assert!(
        after < total,
        "its content is reclaimed: {after} of {total}"
    );
}

/// Every file under `dir`, sorted.
fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

impl Mirror {
    /// Caches `docker.io/library/{used,old,pulled}:v1` as long ago, in
    /// this order of last pull: `used` the least recently pulled (a test
    /// marks it in use), `old` next, and `pulled` pulled again just now
    /// (served from the cache).
    async fn cache_used_old_pulled(&self) {
        for name in ["used", "old", "pulled"] {
            self.pull(&format!("docker.io/library/{name}"), "v1").await;
        }
        self.store.flush_pulls().await.unwrap();
        self.age_cached("used", Duration::from_secs(8 * 3600));
        self.age_cached("pulled", Duration::from_secs(7 * 3600));
        self.age_cached("old", Duration::from_secs(6 * 3600));
        self.pull("docker.io/library/pulled", "v1").await;
    }

    /// Makes `docker.io/library/<name>:v1` look cached `age` ago and
    /// never pulled since: the tag's time set back, its flushed pulls
    /// forgotten.
    fn age_cached(&self, name: &str, age: Duration) {
        let repo = self
            ._dir
            .path()
            .join(format!("data/repositories/docker.io/library/{name}"));
        std::fs::File::options()
            .write(true)
            .open(repo.join("_manifests/tags/v1"))
            .unwrap()
            .set_modified(std::time::SystemTime::now() - age)
            .unwrap();
        std::fs::remove_file(repo.join("_pulls/last.json")).unwrap();
    }

    /// What `docker.io/library/<name>:v1` points at in the cache.
    async fn cached_tag(&self, name: &str) -> Option<berth_registry::oci::Digest> {
        let repo: berth_registry::oci::Name = format!("docker.io/library/{name}").parse().unwrap();
        self.store
            .tag_target(&repo, &"v1".parse().unwrap())
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn upstream_bytes_that_miss_their_digest_cut_the_client_off_and_are_not_kept() {
    let upstream = Upstream::start().await;
    upstream.push_multi_arch("library/app", "v1", "bad").await;
    let mirror = Mirror::start(&upstream, &[("docker.io", 300, false)]).await;
    // The manifests are fine; a layer is what the upstream gets wrong.
    let index: serde_json::Value = serde_json::from_slice(
        &mirror
            .get("/v2/docker.io/library/app/manifests/v1")
            .await
            .body,
    )
    .unwrap();
    let child = index["manifests"][0]["digest"].as_str().unwrap();
    let m: serde_json::Value = serde_json::from_slice(
        &mirror
            .get(&format!("/v2/docker.io/library/app/manifests/{child}"))
            .await
            .body,
    )
    .unwrap();
    let layer = m["layers"][0]["digest"].as_str().unwrap().to_owned();
    let size = m["layers"][0]["size"].as_u64().unwrap();
    upstream.corrupt.store(true, Ordering::SeqCst);
    let url = format!(
        "http://{}/v2/docker.io/library/app/blobs/{layer}",
        mirror.addr
    );
    let client = reqwest::Client::new();
    // The first request leads the fetch (streamed); it must not end with a
    // whole body.
    if let Ok(resp) = client.get(&url).send().await
        && resp.status().is_success()
    {
        let body = resp.bytes().await;
        assert!(
            body.is_err(),
            "{:?} bytes (of {size}) were delivered whole from bytes that do not match {layer}",
            body.map(|b| b.len())
        );
    }
    let digest: berth_registry::oci::Digest = layer.parse().unwrap();
    let name: berth_registry::oci::Name = "docker.io/library/app".parse().unwrap();
    assert!(
        mirror
            .store
            .blob_size(&name, &digest)
            .await
            .unwrap()
            .is_none(),
        "nothing of the bad fetch is stored"
    );
    // Asked again while the upstream still lies: a new fetch, cut off again.
    if let Ok(resp) = client.get(&url).send().await
        && resp.status().is_success()
    {
        assert!(resp.bytes().await.is_err(), "a whole body from bad bytes");
    }
    assert!(
        mirror
            .store
            .blob_size(&name, &digest)
            .await
            .unwrap()
            .is_none(),
        "still nothing stored"
    );
    // The upstream mends: the next pull fetches good bytes and keeps them.
    upstream.corrupt.store(false, Ordering::SeqCst);
    let body = client
        .get(&url)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(sha256(&body), layer);
    // The fetch links the blob once its last bytes are out: a moment later.
    let mut stored = false;
    for _ in 0..50 {
        stored = mirror
            .store
            .blob_size(&name, &digest)
            .await
            .unwrap()
            .is_some();
        if stored {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(stored, "the good bytes are kept");
    let fetches = upstream.requests("/blobs/");
    let again = client
        .get(&url)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(sha256(&again), layer);
    assert_eq!(
        upstream.requests("/blobs/"),
        fetches,
        "served from the cache"
    );
}

#[tokio::test]
async fn a_mirror_with_logins_serves_anonymously_only_what_it_is_told_and_never_leaks_upstream_credentials()
 {
    let upstream = Upstream::start().await;
    let public = upstream.push_multi_arch("library/app", "v1", "open").await;
    let private = upstream.push_multi_arch("team/app", "v1", "closed").await;
    let mirror = Mirror::start_secured(
        &upstream,
        &[("docker.io", 300, false), ("private.test", 300, true)],
    )
    .await;
    let as_user = |user: Option<&'static str>, uri: String| {
        let app = mirror.app.clone();
        async move {
            send(
                &app,
                user.map(common::basic),
                "127.0.0.1:3",
                Method::GET,
                &uri,
                &[("accept", ACCEPT)],
                Bytes::new(),
            )
            .await
        }
    };
    // Anonymous pull of docker.io/library/* is configured.
    let r = as_user(None, "/v2/docker.io/library/app/manifests/v1".into()).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(r.header("docker-content-digest"), public);
    // The other prefix is not: no anonymous pull, and the upstream is not
    // even asked (a miss must not be a way around the mirror's auth).
    let before = upstream.requests("/manifests/");
    let r = as_user(None, "/v2/private.test/team/app/manifests/v1".into()).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = as_user(Some("bob"), "/v2/private.test/team/app/manifests/v1".into()).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(upstream.requests("/manifests/"), before);
    // A user with the right pulls it, fetched with the mirror's upstream
    // credentials, which appear nowhere in what the client gets.
    let r = as_user(
        Some("alice"),
        "/v2/private.test/team/app/manifests/v1".into(),
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(r.header("docker-content-digest"), private);
    assert!(upstream.requests("/manifests/") > before);
    let index: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let child = index["manifests"][0]["digest"].as_str().unwrap();
    let m = as_user(
        Some("alice"),
        format!("/v2/private.test/team/app/manifests/{child}"),
    )
    .await;
    let m: serde_json::Value = serde_json::from_slice(&m.body).unwrap();
    let layer = m["layers"][0]["digest"].as_str().unwrap();
    let b = as_user(
        Some("alice"),
        format!("/v2/private.test/team/app/blobs/{layer}"),
    )
    .await;
    assert_eq!(b.status, StatusCode::OK);
    assert_eq!(sha256(&b.body), layer);
    for reply in [&r, &b] {
        let text = format!("{:?}", reply.headers);
        assert!(
            !text.contains(READER_PASSWORD) && !text.contains("reader"),
            "{text}"
        );
    }
    assert!(!String::from_utf8_lossy(&r.body).contains(READER_PASSWORD));
    // An error from the mirror names no upstream secret either.
    let r = as_user(
        Some("alice"),
        "/v2/private.test/team/none/manifests/v1".into(),
    )
    .await;
    assert!(!r.status.is_success());
    let text = format!("{:?}{}", r.headers, String::from_utf8_lossy(&r.body));
    assert!(!text.contains(READER_PASSWORD), "{text}");
}

/// A mirror fetch releases its client's last bytes from the hook the upload
/// calls once size and digest check out: before the blob is durable and
/// visible (the client does not wait for the fsyncs), and never for bytes
/// that miss their digest or their declared size.
#[tokio::test]
async fn the_verified_hook_runs_once_the_digest_checks_and_before_the_blob_is_visible() {
    use berth_registry::storage::UploadError;
    let dir = tempfile::tempdir().unwrap();
    let store = berth_registry::filesystem_store(dir.path()).unwrap();
    let name: berth_registry::oci::Name = "docker.io/library/hook".parse().unwrap();
    let data: Vec<u8> = (0..3u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let digest: berth_registry::oci::Digest = sha256(&data).parse().unwrap();
    let hex = digest.to_string().trim_start_matches("sha256:").to_owned();
    let blob = dir.path().join(format!("blobs/sha256/{}/{hex}", &hex[..2]));
    let body = |bytes: Vec<u8>| {
        let bytes = Bytes::from(bytes);
        let chunks: Vec<Result<Bytes, String>> = bytes
            .chunks(400 << 10)
            .map(|c| Ok(bytes.slice_ref(c)))
            .collect();
        futures_util::stream::iter(chunks)
    };
    let len = data.len() as u64;

    let mut bad = data.clone();
    bad[len as usize - 1] ^= 0xff;
    let called = AtomicBool::new(false);
    let id = store.upload_start_monolithic(&name, None).await.unwrap();
    let result = store
        .upload_complete_then(&name, &id, &digest, None, Some(len), body(bad), || {
            called.store(true, Ordering::SeqCst)
        })
        .await;
    assert!(matches!(result, Err(UploadError::DigestMismatch { .. })));
    assert!(!called.load(Ordering::SeqCst), "called for bytes that miss");

    let id = store.upload_start_monolithic(&name, None).await.unwrap();
    let result = store
        .upload_complete_then(
            &name,
            &id,
            &digest,
            None,
            Some(len + 1),
            body(data.clone()),
            || called.store(true, Ordering::SeqCst),
        )
        .await;
    assert!(matches!(result, Err(UploadError::SizeMismatch { .. })));
    assert!(!called.load(Ordering::SeqCst), "called for a short body");

    let visible_then: Mutex<Option<bool>> = Mutex::new(None);
    let id = store.upload_start_monolithic(&name, None).await.unwrap();
    let size = store
        .upload_complete_then(&name, &id, &digest, None, Some(len), body(data), || {
            *visible_then.lock().unwrap() = Some(blob.exists())
        })
        .await
        .unwrap();
    assert_eq!(size, len);
    assert_eq!(
        *visible_then.lock().unwrap(),
        Some(false),
        "called once, before the blob was committed"
    );
    assert!(blob.exists());
    assert_eq!(store.blob_size(&name, &digest).await.unwrap(), Some(len));
}
