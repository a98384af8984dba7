#![allow(clippy::unwrap_used)]
//! Webhooks against a real HTTP receiver on loopback: each push, pull and
//! delete arrives once in Distribution's envelope, despite a failed first
//! delivery; a receiver that hangs never slows a push, and its full queue
//! drops (and counts) what does not fit.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::routing::post;
use berth_access::notify::{Endpoint, Header, NotifyConfig};
use berth_registry::notify::envelope::{Envelope, MEDIA_TYPE};
use berth_registry::notify::{Notifier, config};
use common::{OCI_MANIFEST, Secured, sha256};

/// What the receiver saw: every request (accepted or not), and the
/// envelopes it accepted (answered 2xx).
#[derive(Default)]
struct Seen {
    requests: AtomicUsize,
    accepted: Mutex<Vec<Envelope>>,
    headers: Mutex<Vec<HeaderMap>>,
}

/// A receiver on 127.0.0.1 answering 500 to its first `fail_first`
/// requests, then 200; or never answering when `hang`.
async fn receiver(fail_first: usize, hang: bool) -> (String, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let app = axum::Router::new()
        .route(
            "/hook",
            post(
                move |State(seen): State<Arc<Seen>>, headers: HeaderMap, body: Bytes| async move {
                    let n = seen.requests.fetch_add(1, Ordering::SeqCst);
                    if hang {
                        std::future::pending::<()>().await;
                    }
                    seen.headers.lock().unwrap().push(headers);
                    if n < fail_first {
                        return StatusCode::INTERNAL_SERVER_ERROR;
                    }
                    let envelope: Envelope = serde_json::from_slice(&body).unwrap();
                    seen.accepted.lock().unwrap().push(envelope);
                    StatusCode::OK
                },
            ),
        )
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/hook"), seen)
}

fn endpoint(name: &str, url: &str) -> Endpoint {
    serde_json::from_value(serde_json::json!({ "name": name, "url": url })).unwrap()
}

fn notifier(endpoints: Vec<Endpoint>) -> Arc<Notifier> {
    let targets = config::targets(NotifyConfig { endpoints }).unwrap();
    Notifier::start(targets, "registry-0:5000".into())
}

/// A manifest push as a real client sends it (with its length).
async fn push(reg: &Secured, user: &str, repo: &str, tag: &str) -> String {
    let mut layers = Vec::new();
    for data in [&b"{}"[..], format!("layer of {repo}").as_bytes()] {
        let digest = sha256(data);
        let r = reg
            .send_as(
                Some(user),
                Method::POST,
                &format!("/v2/{repo}/blobs/uploads/?digest={digest}"),
                &[],
                data.to_vec(),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED);
        layers.push((digest, data.len()));
    }
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":2}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{}","size":{}}}],"annotations":{{"tag":"{tag}"}}}}"#,
        layers[0].0, layers[1].0, layers[1].1
    );
    let len = manifest.len().to_string();
    let r = reg
        .send_as(
            Some(user),
            Method::PUT,
            &format!("/v2/{repo}/manifests/{tag}"),
            &[
                ("content-type", OCI_MANIFEST),
                ("content-length", &len),
                ("host", "reg.test:5000"),
                ("user-agent", "test-client/1"),
            ],
            manifest.clone(),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    sha256(manifest.as_bytes())
}

fn metric(name_and_labels: &str) -> f64 {
    berth_registry::metrics::render()
        .lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn push_pull_and_delete_each_arrive_once_in_the_envelope_despite_a_failed_first_delivery() {
    let (url, seen) = receiver(1, false).await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "Bearer hook-s3cret\n").unwrap();
    let mut ep = endpoint("once", &url);
    ep.header = Some(Header {
        name: "Authorization".into(),
        value_file: token,
    });
    ep.repositories = vec!["team/*".into()];
    let reg = Secured::notifying(true, Some(notifier(vec![ep]))).await;

    let digest = push(&reg, "alice", "team/app", "v1").await;
    // Not in the endpoint's repositories: never sent.
    push(&reg, "root", "other/app", "v1").await;
    let pull = reg
        .send_as(
            Some("bob"),
            Method::GET,
            "/v2/team/app/manifests/v1",
            &[],
            "",
        )
        .await;
    assert_eq!(pull.status, StatusCode::OK);
    let size: u64 = pull.header("content-length").parse().unwrap();
    // A refused push is no event for receivers.
    let denied = reg
        .send_as(
            Some("bob"),
            Method::PUT,
            "/v2/team/app/manifests/v2",
            &[("content-type", OCI_MANIFEST)],
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

    let deadline = Instant::now() + Duration::from_secs(20);
    let accepted = loop {
        let events: Vec<_> = seen
            .accepted
            .lock()
            .unwrap()
            .iter()
            .flat_map(|e| e.events.clone())
            .collect();
        if events.len() >= 3 || Instant::now() > deadline {
            break events;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Anything sent twice would arrive within this.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let all: Vec<_> = seen
        .accepted
        .lock()
        .unwrap()
        .iter()
        .flat_map(|e| e.events.clone())
        .collect();
    assert_eq!(all, accepted, "an accepted event was sent again");
    let actions: Vec<&str> = all.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["push", "pull", "delete"]);
    let mut ids: Vec<&str> = all.iter().map(|e| e.id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 3, "event ids are unique");
    assert!(
        seen.requests.load(Ordering::SeqCst) >= 2,
        "the first delivery failed and was retried"
    );

    let (p, g, d) = (&all[0], &all[1], &all[2]);
    assert_eq!(p.target.repository, "team/app");
    assert_eq!(p.target.tag, "v1");
    assert_eq!(p.target.digest, digest);
    assert_eq!(p.target.media_type, OCI_MANIFEST);
    assert_eq!(p.target.size, size);
    assert_eq!(p.target.length, size);
    assert_eq!(
        p.target.url,
        format!("http://reg.test:5000/v2/team/app/manifests/{digest}")
    );
    assert_eq!(p.actor.name, "alice");
    assert_eq!(p.request.method, "PUT");
    assert_eq!(p.request.addr, "192.0.2.7:40000");
    assert_eq!(p.request.useragent, "test-client/1");
    assert_eq!(p.source.addr, "registry-0:5000");
    assert!(!p.source.instance_id.is_empty());

    assert_eq!(g.actor.name, "bob");
    assert_eq!(g.target.tag, "v1");
    assert_eq!(g.target.digest, digest);
    assert_eq!(g.target.media_type, OCI_MANIFEST);
    assert_eq!(g.target.size, size);
    assert_eq!(g.request.method, "GET");

    assert_eq!(d.actor.name, "alice");
    assert_eq!(d.target.digest, digest);
    assert_eq!(d.target.tag, "");
    assert_eq!(d.request.method, "DELETE");

    for h in seen.headers.lock().unwrap().iter() {
        assert_eq!(h["authorization"], "Bearer hook-s3cret");
        assert_eq!(h["content-type"], MEDIA_TYPE);
    }
    assert_eq!(
        metric(r#"berth_registry_notify_events_total{endpoint="once",kind="delivered"}"#),
        3.0
    );
    assert!(metric(r#"berth_registry_notify_failed_attempts_total{endpoint="once"}"#) >= 1.0);
    // The audit trail still has them (one event, two consumers).
    let reg_audit = reg.audit.as_ref().unwrap();
    assert!(reg_audit.flush().await);
}

#[tokio::test]
async fn a_hanging_receiver_does_not_slow_pushes_and_its_full_queue_drops_and_counts() {
    let (url, seen) = receiver(0, true).await;
    let mut ep = endpoint("hang", &url);
    ep.queue = 2;
    ep.timeout_seconds = 30;
    let reg = Secured::notifying(false, Some(notifier(vec![ep]))).await;

    let started = Instant::now();
    let pushes = 20;
    for i in 0..pushes {
        push(&reg, "alice", "team/app", &format!("t{i}")).await;
    }
    let took = started.elapsed();
    // The receiver holds the first delivery for 30 s; every push finished
    // long before that.
    assert!(took < Duration::from_secs(10), "pushes took {took:?}");
    assert!(seen.requests.load(Ordering::SeqCst) <= 1);
    // At most one batch in flight (≤ 2 events) and 2 queued.
    let dropped = metric(r#"berth_registry_notify_events_total{endpoint="hang",kind="dropped"}"#);
    assert!(dropped >= f64::from(pushes - 4), "dropped {dropped}");
    assert_eq!(
        metric(r#"berth_registry_notify_queue_length{endpoint="hang"}"#),
        2.0
    );
}

#[tokio::test]
async fn an_endpoint_only_gets_the_events_it_asked_for() {
    let (url, seen) = receiver(0, false).await;
    let mut ep = endpoint("pushes-only", &url);
    ep.events = vec![berth_access::Action::Push];
    let reg = Secured::notifying(false, Some(notifier(vec![ep]))).await;
    push(&reg, "alice", "team/app", "v1").await;
    let pull = reg
        .send_as(
            Some("bob"),
            Method::GET,
            "/v2/team/app/manifests/v1",
            &[],
            "",
        )
        .await;
    assert_eq!(pull.status, StatusCode::OK);
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(r#"berth_registry_notify_events_total{endpoint="pushes-only",kind="delivered"}"#)
        < 1.0
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let actions: Vec<String> = seen
        .accepted
        .lock()
        .unwrap()
        .iter()
        .flat_map(|e| e.events.iter().map(|e| e.action.clone()))
        .collect();
    assert_eq!(actions, ["push"]);
}
