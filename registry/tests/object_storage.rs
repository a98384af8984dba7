//! The registry on object storage, in process: two registries sharing one
//! store (as two replicas share a bucket) serve one client's requests
//! alternately, and every push completes and reads back byte for byte.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use axum::http::{Method, StatusCode};
use berth_registry::Store;
use berth_registry::storage::s3::ObjectStoreDriver;
use bytes::Bytes;
use common::{Registry, sha256};

/// Two registries (separate session tables and locks, as separate
/// processes have) over one object store.
fn replicas() -> (Registry, Registry) {
    let shared: Arc<dyn object_store::ObjectStore> =
        Arc::new(object_store::memory::InMemory::new());
    let one = || Registry {
        app: berth_registry::router(Arc::new(Store::new(Arc::new(ObjectStoreDriver::new(
            shared.clone(),
            "registry",
        ))))),
        dir: tempfile::tempdir().unwrap(),
    };
    (one(), one())
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

#[tokio::test]
async fn a_chunked_push_alternating_between_replicas_completes() {
    let (a, b) = replicas();
    let replicas = [&a, &b];
    // Chunks below S3's 5 MiB part minimum, one above the 8 MiB segment,
    // and odd sizes: each PATCH goes to the other replica.
    let data = pattern(9 * (1 << 20) + 3 * 1000 + 17);
    let sizes = [1000, 1000, 9 << 20, 1000, 17];
    let mut location = a.start_upload("team/app").await;
    let mut at = 0;
    for (i, len) in sizes.into_iter().enumerate() {
        let r = replicas[(i + 1) % 2]
            .send(
                Method::PATCH,
                &location,
                &[
                    ("content-type", "application/octet-stream"),
                    ("content-range", &format!("{at}-{}", at + len - 1)),
                ],
                Bytes::copy_from_slice(&data[at..at + len]),
            )
            .await;
        assert_eq!(
            r.status,
            StatusCode::ACCEPTED,
            "{}",
            String::from_utf8_lossy(&r.body)
        );
        at += len;
        assert_eq!(r.header("range"), format!("0-{}", at - 1));
        location = r.header("location").to_owned();
    }
    // The status of the session is known to both.
    for r in replicas {
        let status = r.get(&location).await;
        assert_eq!(status.status, StatusCode::NO_CONTENT);
        assert_eq!(status.header("range"), format!("0-{}", data.len() - 1));
    }
    let digest = sha256(&data);
    let sep = if location.contains('?') { '&' } else { '?' };
    let r = a
        .send(
            Method::PUT,
            &format!("{location}{sep}digest={digest}"),
            &[],
            Bytes::new(),
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    for r in replicas {
        let got = r.get(&format!("/v2/team/app/blobs/{digest}")).await;
        assert_eq!(got.status, StatusCode::OK);
        assert!(got.body == data, "blob bytes differ");
    }
}

#[tokio::test]
async fn an_image_pushed_to_one_replica_is_pulled_from_the_other() {
    let (a, b) = replicas();
    let manifest = a.image_manifest("team/app", b"layer bytes", "").await;
    let r = b.put_manifest("team/app", "v1", &manifest).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let pulled = a.get("/v2/team/app/manifests/v1").await;
    assert_eq!(pulled.status, StatusCode::OK);
    assert_eq!(pulled.body, manifest.as_bytes());
    let tags = b.get("/v2/team/app/tags/list").await;
    assert_eq!(tags.status, StatusCode::OK);
    assert!(String::from_utf8_lossy(&tags.body).contains("\"v1\""));
}

#[tokio::test]
async fn a_session_cancelled_on_one_replica_is_gone_on_the_other() {
    let (a, b) = replicas();
    let location = a.start_upload("team/app").await;
    let r = b
        .send(
            Method::PATCH,
            &location,
            &[("content-type", "application/octet-stream")],
            Bytes::from_static(b"abc"),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let r = a.send(Method::DELETE, &location, &[], Bytes::new()).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(b.get(&location).await.status, StatusCode::NOT_FOUND);
}

/// Two registries over one filesystem directory (a ReadWriteMany volume).
fn fs_replicas() -> (Registry, Registry) {
    let dir = tempfile::tempdir().unwrap();
    let a = Registry {
        app: berth_registry::router(berth_registry::filesystem_store(dir.path()).unwrap()),
        dir: tempfile::tempdir().unwrap(),
    };
    let b = Registry {
        app: berth_registry::router(berth_registry::filesystem_store(dir.path()).unwrap()),
        dir,
    };
    (a, b)
}

/// One replica deletes the manifest a tag points at while the other moves
/// the tag to a new manifest: the DELETE read the old target, and must not
/// remove the tag the other push (201) just wrote. Two pushes of one tag
/// at once leave it pointing at one of them, both pullable by digest.
async fn tag_updates_racing_across_replicas_leave_a_consistent_tag(a: Registry, b: Registry) {
    let (a, b) = (Arc::new(a), Arc::new(b));
    for round in 0..40 {
        let old = a
            .image_manifest("race/app", format!("old {round}").as_bytes(), "")
            .await;
        let new = b
            .image_manifest("race/app", format!("new {round}").as_bytes(), "")
            .await;
        let tag = format!("t{round}");
        assert_eq!(
            a.put_manifest("race/app", &tag, &old).await.status,
            StatusCode::CREATED
        );
        let old_digest = sha256(old.as_bytes());
        let deleting = {
            let a = a.clone();
            tokio::spawn(async move {
                a.send(
                    Method::DELETE,
                    &format!("/v2/race/app/manifests/{old_digest}"),
                    &[],
                    Bytes::new(),
                )
                .await
                .status
            })
        };
        let pushing = {
            let (b, tag, new) = (b.clone(), tag.clone(), new.clone());
            tokio::spawn(async move { b.put_manifest("race/app", &tag, &new).await.status })
        };
        assert_eq!(deleting.await.unwrap(), StatusCode::ACCEPTED);
        assert_eq!(pushing.await.unwrap(), StatusCode::CREATED);
        for reader in [&a, &b] {
            let got = reader.get(&format!("/v2/race/app/manifests/{tag}")).await;
            assert_eq!(
                got.status,
                StatusCode::OK,
                "round {round}: the pushed tag was lost"
            );
            assert_eq!(got.body, new.as_bytes(), "round {round}");
        }

        // Both replicas push the same new tag at once.
        let both = format!("both{round}");
        let (ra, rb) = tokio::join!(
            a.put_manifest("race/app", &both, &old),
            b.put_manifest("race/app", &both, &new)
        );
        assert_eq!(
            (ra.status, rb.status),
            (StatusCode::CREATED, StatusCode::CREATED)
        );
        let got = a.get(&format!("/v2/race/app/manifests/{both}")).await;
        assert_eq!(got.status, StatusCode::OK);
        assert!(got.body == old.as_bytes() || got.body == new.as_bytes());
        for m in [&old, &new] {
            let by_digest = b
                .get(&format!("/v2/race/app/manifests/{}", sha256(m.as_bytes())))
                .await;
            assert_eq!(by_digest.status, StatusCode::OK);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tag_updates_racing_across_replicas_on_one_bucket_leave_a_consistent_tag() {
    let (a, b) = replicas();
    tag_updates_racing_across_replicas_leave_a_consistent_tag(a, b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tag_updates_racing_across_replicas_on_one_volume_leave_a_consistent_tag() {
    let (a, b) = fs_replicas();
    tag_updates_racing_across_replicas_leave_a_consistent_tag(a, b).await;
}
