#![allow(clippy::unwrap_used)]
//! The audit trail in process: what it records and for whom, who may read
//! it, retention, and that a stalled store never holds a request up.

mod common;

use std::io;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::http::{Method, StatusCode};
use berth_registry::audit::{Audit, Config, Event};
use berth_registry::storage::driver::{Appender, ByteStream, Driver, Durability};
use berth_registry::storage::fs::FsDriver;
use bytes::Bytes;
use common::{Registry, Secured, USERS};

fn events(r: &common::Reply) -> Vec<Event> {
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    serde_json::from_slice(&r.body).unwrap()
}

/// (action, subject, result) of each event, oldest first.
fn summary(events: &[Event]) -> Vec<(String, String, String)> {
    events
        .iter()
        .rev()
        .map(|e| (e.action.clone(), e.subject.clone(), e.result.clone()))
        .collect()
}

fn t(action: &str, subject: &str, result: &str) -> (String, String, String) {
    (action.into(), subject.into(), result.into())
}

#[tokio::test]
async fn trail_records_push_pull_delete_and_a_denied_push_with_their_subjects() {
    let reg = Secured::new(true).await;
    let digest = reg.push_image("alice", "team/app", "1", "").await;
    let pull = reg
        .send_as(
            Some("bob"),
            Method::GET,
            "/v2/team/app/manifests/1",
            &[],
            "",
        )
        .await;
    assert_eq!(pull.status, StatusCode::OK);
    // HEAD is not a pull worth recording.
    reg.send_as(
        Some("bob"),
        Method::HEAD,
        "/v2/team/app/manifests/1",
        &[],
        "",
    )
    .await;
    let denied = reg
        .send_as(
            Some("bob"),
            Method::PUT,
            "/v2/team/app/manifests/2",
            &[("content-type", common::OCI_MANIFEST)],
            "{}",
        )
        .await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    let del = reg
        .send_as(
            Some("alice"),
            Method::DELETE,
            &format!("/v2/team/app/manifests/{digest}"),
            &[],
            "",
        )
        .await;
    assert_eq!(del.status, StatusCode::ACCEPTED);
    // A failed login at the token endpoint and with Basic on /v2/.
    reg.send_as(
        Some("mallory"),
        Method::GET,
        "/token?service=hub.test",
        &[],
        "",
    )
    .await;
    reg.send_as(
        Some("mallory"),
        Method::GET,
        "/v2/team/app/tags/list",
        &[],
        "",
    )
    .await;

    let all = events(
        &reg.send_as(Some("root"), Method::GET, "/berth/v1/audit", &[], "")
            .await,
    );
    assert_eq!(
        summary(&all),
        [
            t("push_blob", "alice", "ok"),
            t("push_blob", "alice", "ok"),
            t("push", "alice", "ok"),
            t("pull", "bob", "ok"),
            t("push", "bob", "denied"),
            t("delete", "alice", "ok"),
            t("login", "mallory", "login_failed"),
            t("login", "mallory", "login_failed"),
        ]
    );
    let push = &all[all.len() - 3];
    assert_eq!(push.repository.as_deref(), Some("team/app"));
    assert_eq!(push.reference.as_deref(), Some("1"));
    assert_eq!(push.digest.as_deref(), Some(digest.as_str()));
    assert_eq!(push.client.as_deref(), Some("192.0.2.7"));
    assert_eq!(push.status, 201);
    let pulled = &all[all.len() - 4];
    assert_eq!(pulled.digest.as_deref(), Some(digest.as_str()));
    assert!(all[0].time > all[all.len() - 1].time, "newest first");

    // Filters: by repository, subject, time and limit.
    let bob = events(
        &reg.send_as(
            Some("root"),
            Method::GET,
            "/berth/v1/audit?subject=bob",
            &[],
            "",
        )
        .await,
    );
    assert_eq!(
        summary(&bob),
        [t("pull", "bob", "ok"), t("push", "bob", "denied")]
    );
    let one = events(
        &reg.send_as(
            Some("root"),
            Method::GET,
            "/berth/v1/audit?limit=1",
            &[],
            "",
        )
        .await,
    );
    assert_eq!(summary(&one), [t("login", "mallory", "login_failed")]);
    let future = events(
        &reg.send_as(
            Some("root"),
            Method::GET,
            "/berth/v1/audit?since=2999-01-01T00:00:00Z",
            &[],
            "",
        )
        .await,
    );
    assert!(future.is_empty());

    // Nothing secret reached storage.
    let mut stored = String::new();
    for f in Registry::files_under(&reg.dir.path().join("data/_audit")) {
        stored.push_str(&std::fs::read_to_string(f).unwrap());
    }
    assert_eq!(stored.lines().count(), 8, "{stored}");
    for (_, password) in USERS {
        assert!(!stored.contains(password));
    }
    assert!(!stored.contains("Basic"));
}

#[tokio::test]
async fn only_those_who_may_delete_read_the_trail() {
    let reg = Secured::new(true).await;
    reg.push_image("alice", "team/app", "1", "").await;
    reg.push_image("root", "private/x", "1", "").await;
    let get = |user: Option<&'static str>, q: &'static str| {
        let reg = &reg;
        async move {
            reg.send_as(user, Method::GET, &format!("/berth/v1/audit{q}"), &[], "")
                .await
        }
    };
    // alice may delete team/app: its trail, and without a repository only
    // what she may delete (not private/x, not failed logins).
    assert_eq!(
        events(&get(Some("alice"), "?repository=team/app").await).len(),
        3
    );
    let mine = events(&get(Some("alice"), "").await);
    assert!(
        mine.iter()
            .all(|e| e.repository.as_deref() == Some("team/app")),
        "{mine:?}"
    );
    assert_eq!(mine.len(), 3);
    // bob may only pull.
    assert_eq!(
        get(Some("bob"), "?repository=team/app").await.status,
        StatusCode::FORBIDDEN
    );
    assert!(events(&get(Some("bob"), "").await).is_empty());
    // No credentials, wrong ones.
    assert_eq!(get(None, "").await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        get(Some("mallory"), "").await.status,
        StatusCode::UNAUTHORIZED
    );
    // Bad parameters say what is wrong.
    assert_eq!(
        get(Some("root"), "?since=yesterday").await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        get(Some("root"), "?limit=0").await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        get(Some("root"), "?repository=..").await.status,
        StatusCode::BAD_REQUEST
    );
    // root sees everything, the denial of bob's audit query included.
    let all = events(&get(Some("root"), "").await);
    assert!(
        all.iter()
            .any(|e| e.action == "audit" && e.subject == "bob" && e.result == "denied")
    );
    assert!(
        all.iter()
            .any(|e| e.repository.as_deref() == Some("private/x"))
    );
}

#[tokio::test]
async fn with_auth_off_the_trail_is_for_loopback_clients_only() {
    let dir = tempfile::tempdir().unwrap();
    let store = berth_registry::filesystem_store(dir.path()).unwrap();
    let audit = Audit::start(
        Arc::new(FsDriver::new(dir.path()).unwrap()),
        Config::new(30),
    );
    let app = berth_registry::router_audited(
        store,
        None,
        &berth_registry::limits::Limits::default(),
        Some(audit),
    );
    let from = |peer: &'static str| {
        let app = &app;
        async move { common::send(app, None, peer, Method::GET, "/berth/v1/audit", &[], "").await }
    };
    assert_eq!(from("127.0.0.1:5000").await.status, StatusCode::OK);
    assert_eq!(from("[::1]:5000").await.status, StatusCode::OK);
    assert_eq!(from("192.0.2.1:5000").await.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn the_audit_api_says_when_the_trail_is_off() {
    let reg = Secured::new(false).await;
    let r = reg
        .send_as(Some("root"), Method::GET, "/berth/v1/audit", &[], "")
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(String::from_utf8_lossy(&r.body).contains("--audit off"));
}

#[tokio::test]
async fn retention_removes_whole_days_past_it_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let driver = Arc::new(FsDriver::new(dir.path()).unwrap());
    let now = jiff::Timestamp::now();
    let day = |ago: i64| {
        now.checked_sub(jiff::SignedDuration::from_hours(24 * ago))
            .unwrap()
            .to_string()[..10]
            .to_owned()
    };
    let days: Vec<String> = [61, 31, 29, 0].into_iter().map(day).collect();
    for d in &days {
        let line = format!(
            "{{\"time\":\"{d}T00:00:00Z\",\"subject\":\"a\",\"action\":\"push\",\"status\":201,\"result\":\"ok\"}}\n"
        );
        driver
            .put(
                &format!("_audit/{d}/00-x.jsonl"),
                Bytes::from(line),
                Durability::Durable,
            )
            .await
            .unwrap();
    }
    driver
        .put(
            "_audit/not-a-day/keep",
            Bytes::from_static(b"x"),
            Durability::Durable,
        )
        .await
        .unwrap();
    // The retention task purges at start too: whichever runs first
    // removes the two old days.
    let audit = Audit::start(driver.clone(), Config::new(30));
    audit.purge(now).await.unwrap();
    assert_eq!(audit.purge(now).await.unwrap(), 0);
    let mut left = driver.list("_audit").await.unwrap();
    left.sort();
    let mut want = vec![days[2].clone(), days[3].clone(), "not-a-day".to_owned()];
    want.sort();
    assert_eq!(left, want);
    let kept = audit.query(&Default::default()).await.unwrap();
    assert_eq!(kept.len(), 2);
    assert!(kept[0].time > kept[1].time, "newest first");
}

/// A store whose appends never finish (an object store that hangs).
struct Stalled(FsDriver);

#[async_trait]
impl Driver for Stalled {
    async fn get(&self, key: &str) -> io::Result<Option<Bytes>> {
        self.0.get(key).await
    }
    async fn put(&self, key: &str, data: Bytes, d: Durability) -> io::Result<()> {
        self.0.put(key, data, d).await
    }
    async fn get_versioned(
        &self,
        key: &str,
    ) -> io::Result<Option<(Bytes, berth_registry::storage::driver::Version)>> {
        self.0.get_versioned(key).await
    }
    async fn put_if(
        &self,
        key: &str,
        data: Bytes,
        expected: Option<&berth_registry::storage::driver::Version>,
    ) -> io::Result<bool> {
        self.0.put_if(key, data, expected).await
    }
    async fn delete_if(
        &self,
        key: &str,
        expected: &berth_registry::storage::driver::Version,
    ) -> io::Result<bool> {
        self.0.delete_if(key, expected).await
    }
    async fn size(&self, key: &str) -> io::Result<Option<u64>> {
        self.0.size(key).await
    }
    async fn stream(&self, key: &str, range: Range<u64>) -> io::Result<Option<ByteStream>> {
        self.0.stream(key, range).await
    }
    async fn appender(&self, _key: &str) -> io::Result<Box<dyn Appender>> {
        std::future::pending().await
    }
    async fn commit(&self, from: &str, to: &str) -> io::Result<()> {
        self.0.commit(from, to).await
    }
    async fn list(&self, prefix: &str) -> io::Result<Vec<String>> {
        self.0.list(prefix).await
    }
    async fn delete(&self, key: &str) -> io::Result<()> {
        self.0.delete(key).await
    }
}

#[tokio::test]
async fn a_full_queue_drops_events_and_never_blocks_requests() {
    let dir = tempfile::tempdir().unwrap();
    let store = berth_registry::filesystem_store(dir.path()).unwrap();
    let audit = Audit::start(
        Arc::new(Stalled(FsDriver::new(dir.path()).unwrap())),
        Config {
            queue: 4,
            ..Config::new(30)
        },
    );
    let app = berth_registry::router_audited(
        store,
        None,
        &berth_registry::limits::Limits::default(),
        Some(audit.clone()),
    );
    let reg = Registry { app, dir };
    let m = reg.image_manifest("team/app", b"layer", "").await;
    assert_eq!(
        reg.put_manifest("team/app", "1", &m).await.status,
        StatusCode::CREATED
    );
    let dropped_before = dropped();
    tokio::time::timeout(Duration::from_secs(20), async {
        for _ in 0..500 {
            assert_eq!(
                reg.get("/v2/team/app/manifests/1").await.status,
                StatusCode::OK
            );
        }
    })
    .await
    .expect("requests were held up by a stalled audit store");
    assert!(
        dropped() >= dropped_before + 400.0,
        "dropped events are counted"
    );
    // A flush on a stalled store gives up instead of hanging.
    assert!(!audit.flush().await);
}

fn dropped() -> f64 {
    berth_registry::metrics::render()
        .lines()
        .find(|l| l.starts_with("berth_registry_audit_events_total{kind=\"dropped\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}
