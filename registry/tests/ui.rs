#![allow(clippy::unwrap_used)]
//! The web UI in process: pages render, each user sees only what they may
//! pull, delete is offered (and done) only with the right, forms need
//! their CSRF token, and every page carries the security headers.

mod common;

use axum::Router;
use axum::http::{Method, StatusCode};
use common::{Registry, Reply, Secured, USERS};

/// A browser: one cookie jar, talking to `app`.
struct Browser<'a> {
    app: &'a Router,
    cookie: Option<String>,
}

impl<'a> Browser<'a> {
    fn new(app: &'a Router) -> Self {
        Browser { app, cookie: None }
    }

    async fn send(&mut self, method: Method, uri: &str, form: Option<String>) -> Reply {
        let mut headers: Vec<(&str, String)> = Vec::new();
        if let Some(c) = &self.cookie {
            headers.push(("cookie", c.clone()));
        }
        if form.is_some() {
            headers.push((
                "content-type",
                "application/x-www-form-urlencoded".to_owned(),
            ));
        }
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = common::send(
            self.app,
            None,
            "127.0.0.1:40000",
            method,
            uri,
            &h,
            form.unwrap_or_default(),
        )
        .await;
        if let Some(set) = r.headers.get("set-cookie").and_then(|v| v.to_str().ok()) {
            let pair = set.split(';').next().unwrap().to_owned();
            self.cookie = if pair.ends_with('=') {
                None
            } else {
                Some(pair)
            };
        }
        r
    }

    async fn get(&mut self, uri: &str) -> Reply {
        self.send(Method::GET, uri, None).await
    }

    async fn post(&mut self, uri: &str, fields: &[(&str, &str)]) -> Reply {
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(fields)
            .finish();
        self.send(Method::POST, uri, Some(body)).await
    }

    /// Logs in through the login form.
    async fn log_in(&mut self, user: &str) -> Reply {
        let page = self.get("/ui/login").await;
        assert_eq!(page.status, StatusCode::OK);
        let csrf = csrf(&page);
        let password = USERS
            .iter()
            .find(|(u, _)| *u == user)
            .map(|(_, p)| *p)
            .unwrap_or("wrong");
        self.post(
            "/ui/login",
            &[
                ("csrf", &csrf),
                ("user", user),
                ("password", password),
                ("next", "/ui/"),
            ],
        )
        .await
    }
}

fn text(r: &Reply) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

/// The CSRF token of the page's first form.
fn csrf(r: &Reply) -> String {
    let t = text(r);
    let at = t
        .find(r#"name="csrf" value=""#)
        .expect("a form with a CSRF token")
        + 19;
    t[at..].split('"').next().unwrap().to_owned()
}

async fn secured_with_images() -> (Secured, String) {
    let reg = Secured::new(true).await;
    let digest = reg.push_image("alice", "team/app", "1", "").await;
    reg.push_image("root", "other/secret", "1", "").await;
    reg.push_image("root", "public/base", "1", "").await;
    (reg, digest)
}

#[tokio::test]
async fn pages_render_for_a_user_who_may_pull() {
    let (reg, digest) = secured_with_images().await;
    let mut b = Browser::new(&reg.app);
    let login = b.log_in("bob").await;
    assert_eq!(login.status, StatusCode::SEE_OTHER, "{}", text(&login));
    assert_eq!(login.header("location"), "/ui/");

    let list = b.get("/ui/").await;
    assert_eq!(list.status, StatusCode::OK);
    let t = text(&list);
    assert!(t.contains("Logged in as"), "{t}");
    assert!(t.contains(r#"href="/ui/r/team/app""#), "{t}");

    let repo = b.get("/ui/r/team/app").await;
    assert_eq!(repo.status, StatusCode::OK);
    assert!(text(&repo).contains(&format!("/ui/r/team/app/-/m/{digest}")));

    let image = b.get("/ui/r/team/app/-/m/1").await;
    assert_eq!(image.status, StatusCode::OK);
    let t = text(&image);
    assert!(t.contains("application/vnd.oci.image.layer.v1.tar"), "{t}");
    assert!(t.contains("docker pull "), "{t}");
    assert!(t.contains("Referrers"), "{t}");

    let raw = b.get(&format!("/ui/r/team/app/-/raw/{digest}")).await;
    assert_eq!(raw.status, StatusCode::OK);
    assert!(raw.header("content-type").starts_with("application/json"));
    let v: serde_json::Value = serde_json::from_slice(&raw.body).unwrap();
    assert_eq!(v["schemaVersion"], 2);

    // Server-side search.
    let found = text(&b.get("/ui/?q=app").await);
    assert!(found.contains("team/app"));
    let none = text(&b.get("/ui/?q=nothing-like-it").await);
    assert!(!none.contains(r#"href="/ui/r/team/app""#));
}

#[tokio::test]
async fn each_user_sees_only_what_they_may_pull() {
    let (reg, _) = secured_with_images().await;
    let mut anonymous = Browser::new(&reg.app);
    let t = text(&anonymous.get("/ui/").await);
    assert!(t.contains("public/base"), "{t}");
    assert!(
        !t.contains("team/app") && !t.contains("other/secret"),
        "{t}"
    );
    let hidden = anonymous.get("/ui/r/team/app").await;
    assert_eq!(hidden.status, StatusCode::NOT_FOUND);
    assert_eq!(
        anonymous.get("/ui/r/team/app/-/m/1").await.status,
        StatusCode::NOT_FOUND
    );

    let mut bob = Browser::new(&reg.app);
    bob.log_in("bob").await;
    let t = text(&bob.get("/ui/").await);
    assert!(t.contains("team/app") && t.contains("public/base"), "{t}");
    assert!(!t.contains("other/secret"), "{t}");
    for uri in [
        "/ui/r/other/secret",
        "/ui/r/other/secret/-/m/1",
        "/ui/r/other/secret/-/delete?tag=1",
    ] {
        let r = bob.get(uri).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{uri}");
        assert!(!text(&r).contains("layer"), "{uri}");
    }

    let mut root = Browser::new(&reg.app);
    root.log_in("root").await;
    assert!(text(&root.get("/ui/").await).contains("other/secret"));
}

#[tokio::test]
async fn a_wrong_password_is_refused_and_audited() {
    let (reg, _) = secured_with_images().await;
    let mut b = Browser::new(&reg.app);
    let page = b.get("/ui/login").await;
    let r = b
        .post(
            "/ui/login",
            &[
                ("csrf", &csrf(&page)),
                ("user", "bob"),
                ("password", "nope"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(!text(&r).contains("nope"));
    assert!(!text(&b.get("/ui/").await).contains("Logged in as"));
    let audit = reg.audit.as_ref().unwrap();
    audit.flush().await;
    let events = audit
        .query(&berth_registry::audit::Filter {
            subject: Some("bob".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.action == "login" && e.result == "login_failed")
    );
}

#[tokio::test]
async fn delete_is_offered_and_done_only_with_the_right() {
    let (reg, _) = secured_with_images().await;
    let mut bob = Browser::new(&reg.app);
    bob.log_in("bob").await;
    assert!(!text(&bob.get("/ui/r/team/app").await).contains("Delete"));
    assert!(!text(&bob.get("/ui/r/team/app/-/m/1").await).contains("Delete"));
    assert_eq!(
        bob.get("/ui/r/team/app/-/delete?tag=1").await.status,
        StatusCode::FORBIDDEN
    );
    // Even with a valid CSRF token (from his own session), the POST is refused.
    let page = bob.get("/ui/login").await;
    let r = bob
        .post(
            "/ui/r/team/app/-/delete",
            &[("csrf", &csrf(&page)), ("tag", "1")],
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", text(&r));
    assert_eq!(
        reg.send_as(
            Some("bob"),
            Method::GET,
            "/v2/team/app/manifests/1",
            &[],
            ""
        )
        .await
        .status,
        StatusCode::OK
    );

    let mut alice = Browser::new(&reg.app);
    alice.log_in("alice").await;
    assert!(text(&alice.get("/ui/r/team/app").await).contains("Delete"));
    let confirm = alice.get("/ui/r/team/app/-/delete?tag=1").await;
    assert_eq!(confirm.status, StatusCode::OK);
    assert!(text(&confirm).contains("Only the tag goes"));
    let done = alice
        .post(
            "/ui/r/team/app/-/delete",
            &[("csrf", &csrf(&confirm)), ("tag", "1")],
        )
        .await;
    assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", text(&done));
    assert_eq!(
        reg.send_as(
            Some("alice"),
            Method::GET,
            "/v2/team/app/manifests/1",
            &[],
            ""
        )
        .await
        .status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn a_post_without_the_csrf_token_is_refused() {
    let (reg, _) = secured_with_images().await;
    let mut alice = Browser::new(&reg.app);
    alice.log_in("alice").await;
    for fields in [vec![("tag", "1")], vec![("tag", "1"), ("csrf", "0000")]] {
        let r = alice.post("/ui/r/team/app/-/delete", &fields).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN);
    }
    let r = alice.post("/ui/logout", &[]).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(
        reg.send_as(
            Some("alice"),
            Method::GET,
            "/v2/team/app/manifests/1",
            &[],
            ""
        )
        .await
        .status,
        StatusCode::OK
    );
    // A login form posted without its token logs nobody in.
    let mut other = Browser::new(&reg.app);
    let r = other
        .post("/ui/login", &[("user", "alice"), ("password", USERS[0].1)])
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn every_page_carries_a_strict_csp_and_a_locked_cookie() {
    let (reg, _) = secured_with_images().await;
    let mut b = Browser::new(&reg.app);
    let login = b.get("/ui/login").await;
    let cookie = login.header("set-cookie").to_owned();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/ui"] {
        assert!(cookie.contains(attr), "{cookie}");
    }
    b.log_in("alice").await;
    for uri in [
        "/ui/",
        "/ui/login",
        "/ui/r/team/app",
        "/ui/r/team/app/-/m/1",
        "/ui/audit",
        "/ui/no-such-page",
    ] {
        let r = b.get(uri).await;
        let csp = r.header("content-security-policy");
        assert!(csp.contains("default-src 'self'"), "{uri}: {csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{uri}: {csp}");
        assert!(!csp.contains("unsafe-inline"), "{uri}: {csp}");
        assert_eq!(r.header("x-content-type-options"), "nosniff", "{uri}");
        assert!(!text(&r).contains("<script>"), "{uri}: inline script");
    }
}

#[tokio::test]
async fn the_audit_page_shows_what_the_user_may_audit() {
    let (reg, _) = secured_with_images().await;
    let mut alice = Browser::new(&reg.app);
    alice.log_in("alice").await;
    let t = text(&alice.get("/ui/audit").await);
    assert!(t.contains("team/app"), "{t}");
    assert!(!t.contains("other/secret"), "{t}");
    let mut anonymous = Browser::new(&reg.app);
    assert_eq!(
        anonymous.get("/ui/audit").await.status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn without_auth_the_ui_is_open_and_deletes_with_a_token() {
    let reg = Registry::new();
    let body = reg.image_manifest("lib/tool", b"layer", "").await;
    assert_eq!(
        reg.put_manifest("lib/tool", "v1", &body).await.status,
        StatusCode::CREATED
    );
    let mut b = Browser::new(&reg.app);
    assert!(text(&b.get("/ui/").await).contains("lib/tool"));
    let confirm = b
        .get(&format!(
            "/ui/r/lib/tool/-/delete?digest={}",
            common::sha256(body.as_bytes())
        ))
        .await;
    assert_eq!(confirm.status, StatusCode::OK, "{}", text(&confirm));
    assert!(text(&confirm).contains("v1"));
    let r = b
        .post(
            "/ui/r/lib/tool/-/delete",
            &[
                ("csrf", &csrf(&confirm)),
                ("digest", &common::sha256(body.as_bytes())),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", text(&r));
    assert_eq!(
        reg.get("/v2/lib/tool/manifests/v1").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn ui_off_serves_no_pages() {
    let store = berth_registry::memory_store();
    let app = berth_registry::router_features(
        store,
        None,
        &berth_registry::limits::Limits::default(),
        berth_registry::Features {
            ui: false,
            ..Default::default()
        },
    );
    let mut b = Browser::new(&app);
    assert_eq!(b.get("/ui/").await.status, StatusCode::NOT_FOUND);
    assert!(
        b.get("/ui/")
            .await
            .header("content-security-policy")
            .is_empty()
    );
}

#[tokio::test]
async fn the_repository_list_shows_the_last_gc_run() {
    let store = berth_registry::memory_store();
    let app = berth_registry::router(store.clone());
    let mut b = Browser::new(&app);
    assert!(!text(&b.get("/ui/").await).contains("Last garbage collection"));
    store
        .record_gc_run(&berth_access::gc::GcRun {
            finished: "2026-11-30T15:00:00Z".into(),
            duration_millis: 420,
            error: None,
            tags_removed: 3,
            tags_kept_in_use: 1,
            manifests_quarantined: 2,
            blobs_quarantined: 5,
            bytes_quarantined: 5 << 20,
            manifests_deleted: 4,
            blobs_deleted: 7,
            bytes_reclaimed: 3 << 20,
        })
        .await
        .unwrap();
    let page = text(&b.get("/ui/").await);
    assert!(page.contains("Last garbage collection"), "{page}");
    assert!(page.contains("2026-11-30T15:00:00Z"), "{page}");
    assert!(page.contains("7 blobs and 4 manifests deleted"), "{page}");
    assert!(
        page.contains("3 tags removed by retention, 1 kept for running pods"),
        "{page}"
    );
}

/// Another router over the same store and auth: a second replica, or the
/// registry after a restart.
fn replica(reg: &Secured, features: berth_registry::Features) -> Router {
    berth_registry::router_features(
        reg.store.clone(),
        Some(reg.auth.clone()),
        &berth_registry::limits::Limits::default(),
        features,
    )
}

fn with_key(key: &[u8]) -> berth_registry::Features {
    berth_registry::Features {
        ui_session_key: Some(berth_registry::ui::session::Key::from_bytes(key)),
        ..Default::default()
    }
}

#[tokio::test]
async fn the_tag_table_shows_when_each_tag_was_last_pulled() {
    let (reg, digest) = secured_with_images().await;
    reg.push_image("alice", "team/app", "2", r#","annotations":{"v":"2"}"#)
        .await;
    let mut b = Browser::new(&reg.app);
    b.log_in("bob").await;
    let before = text(&b.get("/ui/r/team/app").await);
    assert!(before.contains("Last pulled"), "{before}");
    let today = jiff::Timestamp::now().strftime("%Y-%m-%d").to_string();

    // A pull by tag is noted for the digest the tag points at.
    let pulled = reg
        .send_as(
            Some("bob"),
            Method::GET,
            "/v2/team/app/manifests/1",
            &[],
            "",
        )
        .await;
    assert_eq!(pulled.status, StatusCode::OK);
    // A HEAD is not a pull.
    reg.send_as(
        Some("bob"),
        Method::HEAD,
        "/v2/team/app/manifests/2",
        &[],
        "",
    )
    .await;
    let name: berth_registry::oci::Name = "team/app".parse().unwrap();
    let d: berth_registry::oci::Digest = digest.parse().unwrap();
    let at = reg.store.last_pulled(&name, &d).await.unwrap();
    assert!(at.is_some());

    let page = text(&b.get("/ui/r/team/app?sort=pulled&dir=desc").await);
    let row = |tag: &str| {
        let start = page.find(&format!(r#"data-name="{tag}""#)).unwrap();
        page[start..start + page[start..].find("</tr>").unwrap()].to_owned()
    };
    let last_pulled_cell = |row: &str| {
        let label = r#"data-label="Last pulled">"#;
        let at = row.find(label).unwrap() + label.len();
        row[at..at + row[at..].find("</td>").unwrap()].to_owned()
    };
    assert!(last_pulled_cell(&row("1")).starts_with(&today), "{page}");
    assert_eq!(last_pulled_cell(&row("2")), "—", "{page}");
    // Sorted by last pull, newest first.
    assert!(page.find(r#"data-name="1""#) < page.find(r#"data-name="2""#));

    // Durable: flushed through the driver, read by a new process.
    assert_eq!(reg.store.flush_pulls().await.unwrap(), 1);
    let restarted = berth_registry::filesystem_store(&reg.dir.path().join("data")).unwrap();
    assert_eq!(restarted.last_pulled(&name, &d).await.unwrap(), at);
}

#[tokio::test]
async fn image_pages_show_the_pod_pull_reference_with_the_node_endpoint() {
    let (reg, digest) = secured_with_images().await;
    let app = replica(
        &reg,
        berth_registry::Features {
            node_endpoint: Some("hub.berth.internal:5000".into()),
            ..Default::default()
        },
    );
    let mut b = Browser::new(&app);
    b.log_in("bob").await;
    let page = text(&b.get("/ui/r/team/app/-/m/1").await);
    assert!(page.contains("Pods on this cluster"), "{page}");
    assert!(
        page.contains("image: hub.berth.internal:5000/team/app:1"),
        "{page}"
    );
    assert!(page.contains(&format!("image: hub.berth.internal:5000/team/app@{digest}")));
    // Without the flag, no such section.
    let mut plain = Browser::new(&reg.app);
    plain.log_in("bob").await;
    assert!(!text(&plain.get("/ui/r/team/app/-/m/1").await).contains("Pods on this cluster"));
}

#[tokio::test]
async fn namespace_usage_covers_every_repository_and_counts_shared_layers_once() {
    let (reg, _) = secured_with_images().await;
    reg.push_image("alice", "team/other", "1", "").await;
    let mut b = Browser::new(&reg.app);
    b.log_in("bob").await;
    // Only team/other on this page (search), yet the namespace's total is
    // over both repositories: config "{}" (2 B, shared) + layers of 17 B
    // and 19 B + two manifests of 393 B.
    let page = text(&b.get("/ui/?q=other").await);
    assert!(
        page.contains(r#"data-namespace="team"> · 2 repositories · 824 B"#),
        "{page}"
    );
    assert!(page.contains("Storage by namespace"), "{page}");
    // bob may not pull other/secret: nothing of its namespace shows.
    let all = text(&b.get("/ui/").await);
    assert!(!all.contains(r#"data-namespace="other""#), "{all}");
    assert!(
        !all.contains("(no namespace)") && !all.contains("<td>other</td>"),
        "{all}"
    );
    // root may pull everything.
    let mut root = Browser::new(&reg.app);
    root.log_in("root").await;
    assert!(text(&root.get("/ui/").await).contains(r#"data-namespace="other""#));
}

#[tokio::test]
async fn a_login_survives_a_restart_and_works_on_another_replica_with_the_key() {
    let (reg, _) = secured_with_images().await;
    let key = [42u8; 32];
    let one = replica(&reg, with_key(&key));
    let two = replica(&reg, with_key(&key));
    let mut b = Browser::new(&one);
    let login = b.log_in("bob").await;
    assert_eq!(login.status, StatusCode::SEE_OTHER);
    let cookie = b.cookie.clone();
    assert!(text(&b.get("/ui/").await).contains("Logged in as"));

    // The same cookie on another replica (or after a restart).
    let mut elsewhere = Browser {
        app: &two,
        cookie: cookie.clone(),
    };
    let page = elsewhere.get("/ui/r/team/app").await;
    assert_eq!(page.status, StatusCode::OK, "{}", text(&page));
    assert!(text(&page).contains("Logged in as"));

    // A process with another key (no key file) does not accept it.
    let mut stranger = Browser {
        app: &reg.app,
        cookie: cookie.clone(),
    };
    assert!(!text(&stranger.get("/ui/").await).contains("Logged in as"));

    // Logging out ends it on the replica that was asked.
    let list = b.get("/ui/").await;
    let out = b.post("/ui/logout", &[("csrf", &csrf(&list))]).await;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    assert!(b.cookie.is_none());
    let mut replay = Browser {
        app: &one,
        cookie: cookie.clone(),
    };
    assert!(!text(&replay.get("/ui/").await).contains("Logged in as"));
}

#[tokio::test]
async fn a_forged_session_cookie_is_ignored() {
    let (reg, _) = secured_with_images().await;
    let mut b = Browser::new(&reg.app);
    b.log_in("bob").await;
    let cookie = b.cookie.clone().unwrap();
    // Claim to be root with bob's signature.
    let (name, value) = cookie.split_once('=').unwrap();
    let mut parts: Vec<&str> = value.split('.').collect();
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let payload = String::from_utf8(b64.decode(parts[1]).unwrap()).unwrap();
    assert!(payload.contains(r#""name":"bob""#), "{payload}");
    let forged = b64.encode(payload.replace(r#""name":"bob""#, r#""name":"root""#));
    parts[1] = &forged;
    let mut mallory = Browser {
        app: &reg.app,
        cookie: Some(format!("{name}={}", parts.join("."))),
    };
    let page = text(&mallory.get("/ui/").await);
    assert!(!page.contains("Logged in as"), "{page}");
    assert!(!page.contains("other/secret"));
}
