#![allow(clippy::unwrap_used)]
//! Concurrent requests that once left the registry inconsistent or stuck:
//! a manifest PUT racing a DELETE, a stalled chunk holding its session, and
//! requests to sessions that do not exist.

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use bytes::Bytes;
use common::{OCI_MANIFEST, Registry, sha256};
use tower::ServiceExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_manifest_put_racing_a_delete_never_leaves_a_dangling_tag() {
    let reg = Arc::new(Registry::new());
    let manifest = reg.image_manifest("race/app", b"layer", "").await;
    let digest = sha256(manifest.as_bytes());
    for round in 0..60 {
        let mut tasks = Vec::new();
        for i in 0..5 {
            let (reg, manifest, digest) = (reg.clone(), manifest.clone(), digest.clone());
            tasks.push(tokio::spawn(async move {
                reg.put_manifest("race/app", &format!("t{round}-{i}"), &manifest)
                    .await;
                reg.send(
                    Method::DELETE,
                    &format!("/v2/race/app/manifests/{digest}"),
                    &[],
                    Bytes::new(),
                )
                .await;
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    }
    let tags = reg.get("/v2/race/app/tags/list").await;
    let tags: serde_json::Value = serde_json::from_slice(&tags.body).unwrap();
    let mut dangling = Vec::new();
    for tag in tags["tags"].as_array().cloned().unwrap_or_default() {
        let tag = tag.as_str().unwrap();
        let r = reg.get(&format!("/v2/race/app/manifests/{tag}")).await;
        if r.status != StatusCode::OK {
            dangling.push(tag.to_owned());
        }
    }
    assert!(
        dangling.is_empty(),
        "tags listed but not resolvable: {dangling:?}"
    );
}

#[tokio::test]
async fn requests_to_unknown_upload_sessions_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let store = berth_registry::filesystem_store(dir.path()).unwrap();
    let app = berth_registry::router(store.clone());
    for _ in 0..200 {
        let loc = format!("/v2/x/blobs/uploads/{}", uuid_like());
        for method in [Method::PATCH, Method::PUT, Method::DELETE, Method::GET] {
            let uri = if method == Method::PUT {
                format!("{loc}?digest={}", sha256(b""))
            } else {
                loc.clone()
            };
            let req = Request::builder()
                .method(method)
                .uri(uri)
                .body(Body::from("x"))
                .unwrap();
            let resp = app.clone().oneshot(req).await.unwrap();
            assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        }
    }
    assert_eq!(store.tracked_upload_sessions(), 0);
}

fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(1);
    format!(
        "7c6f1a2e-0000-4000-8000-{:012x}",
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Starts a PATCH whose body sends `first` bytes and then stalls until the
/// returned sender is dropped.
fn stalled_patch(
    reg: &Registry,
    loc: &str,
    first: usize,
) -> (
    tokio::task::JoinHandle<StatusCode>,
    tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let body = Body::from_stream(tokio_stream(rx));
    let req = Request::builder()
        .method(Method::PATCH)
        .uri(loc)
        .body(body)
        .unwrap();
    let app = reg.app.clone();
    let tx2 = tx.clone();
    let task = tokio::spawn(async move { app.oneshot(req).await.map(|r| r.status()).unwrap() });
    let chunk = Bytes::from(vec![7u8; first]);
    tokio::spawn(async move {
        let _ = tx2.send(Ok(chunk)).await;
    });
    (task, tx)
}

fn tokio_stream(
    mut rx: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_patch_does_not_hold_its_session_against_put_or_delete() {
    let reg = Registry::new();
    let loc = reg.start_upload("stall/app").await;
    let (patch, _keep) = stalled_patch(&reg, &loc, 64 * 1024);
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Another writer is refused at once rather than queued behind the staller.
    let put = tokio::time::timeout(
        Duration::from_secs(3),
        reg.send(
            Method::PUT,
            &format!("{loc}?digest={}", sha256(b"")),
            &[],
            Bytes::new(),
        ),
    )
    .await
    .expect("a PUT to a busy session must answer promptly");
    assert_eq!(put.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(put.code(), "BLOB_UPLOAD_INVALID");

    // DELETE cancels the stalled writer and removes the session.
    let del = tokio::time::timeout(
        Duration::from_secs(3),
        reg.send(Method::DELETE, &loc, &[], Bytes::new()),
    )
    .await
    .expect("a DELETE of a busy session must answer promptly");
    assert_eq!(del.status, StatusCode::NO_CONTENT);
    let stalled = tokio::time::timeout(Duration::from_secs(3), patch)
        .await
        .expect("the stalled PATCH must be cancelled")
        .unwrap();
    assert!(stalled.is_client_error(), "{stalled}");
    assert_eq!(reg.get(&loc).await.code(), "BLOB_UPLOAD_UNKNOWN");
}

#[tokio::test]
async fn a_content_range_whose_length_wraps_is_refused() {
    let reg = Registry::new();
    let loc = reg.start_upload("wrap/app").await;
    let r = reg
        .send(
            Method::PATCH,
            &loc,
            &[("content-range", "0-18446744073709551615")],
            Bytes::new(),
        )
        .await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::RANGE_NOT_SATISFIABLE, "RANGE_INVALID")
    );
    assert_eq!(reg.get(&loc).await.header("range"), "0-0");
}

#[tokio::test]
async fn a_descriptor_whose_size_disagrees_with_the_stored_blob_is_refused() {
    let reg = Registry::new();
    let layer = vec![1u8; 300_000];
    let good = reg.image_manifest("size/app", &layer, "").await;
    let bad = good.replace(
        &format!("\"size\":{}", layer.len()),
        "\"size\":18446744073709551615",
    );
    assert_ne!(good, bad);
    let r = reg.put_manifest("size/app", "v1", &bad).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{:?}", r.body);
    assert_eq!(r.code(), "MANIFEST_INVALID");
    assert!(
        String::from_utf8_lossy(&r.body).contains("300000"),
        "the message names the stored size: {:?}",
        r.body
    );
    let config_wrong = good.replace("\"size\":2", "\"size\":3");
    let r = reg.put_manifest("size/app", "v1", &config_wrong).await;
    assert_eq!(r.code(), "MANIFEST_INVALID");
    assert_eq!(
        reg.put_manifest("size/app", "v1", &good).await.status,
        StatusCode::CREATED
    );
    let _ = OCI_MANIFEST;
}
