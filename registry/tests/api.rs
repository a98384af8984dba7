#![allow(clippy::unwrap_used)]
//! The registry API driven in process, on a real filesystem store: the
//! behaviours a client relies on and the bad input it must refuse cleanly.
//! (The conformance suite and real clients run against the binary in e2e.)

mod common;

use axum::http::{Method, StatusCode};
use bytes::Bytes;
use common::{OCI_MANIFEST, Registry, sha256};

#[tokio::test]
async fn base_endpoint_announces_the_api_version() {
    let reg = Registry::new();
    let r = reg.get("/v2/").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("docker-distribution-api-version"), "registry/2.0");
    assert_eq!(reg.get("/healthz").await.status, StatusCode::OK);
}

#[tokio::test]
async fn monolithic_push_pulls_back_byte_identical_with_ranges() {
    let reg = Registry::new();
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let digest = reg.push_blob("a/b/c", &data).await;
    let r = reg.get(&format!("/v2/a/b/c/blobs/{digest}")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body.as_ref(), data.as_slice());
    assert_eq!(r.header("docker-content-digest"), digest);

    let r = reg
        .send(
            Method::GET,
            &format!("/v2/a/b/c/blobs/{digest}"),
            &[("range", "bytes=10-19")],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.body.as_ref(), &data[10..20]);
    assert_eq!(r.header("content-range"), "bytes 10-19/100000");

    let r = reg
        .send(
            Method::GET,
            &format!("/v2/a/b/c/blobs/{digest}"),
            &[("range", "bytes=100000-")],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, StatusCode::RANGE_NOT_SATISFIABLE);

    let r = reg
        .send(
            Method::HEAD,
            &format!("/v2/a/b/c/blobs/{digest}"),
            &[],
            Bytes::new(),
        )
        .await;
    assert_eq!(
        (r.status, r.header("content-length"), r.body.len()),
        (StatusCode::OK, "100000", 0)
    );
}

#[tokio::test]
async fn chunked_upload_refuses_out_of_order_chunks_and_recovers() {
    let reg = Registry::new();
    let data = b"0123456789abcdefghij".to_vec();
    let loc = reg.start_upload("x").await;
    let r = reg
        .send(
            Method::PATCH,
            &loc,
            &[("content-range", "0-9")],
            data[..10].to_vec(),
        )
        .await;
    assert_eq!((r.status, r.header("range")), (StatusCode::ACCEPTED, "0-9"));
    let loc = r.header("location").to_owned();

    // A gap: bytes 15.. before 10..15.
    let r = reg
        .send(
            Method::PATCH,
            &loc,
            &[("content-range", "15-19")],
            data[15..].to_vec(),
        )
        .await;
    assert_eq!(r.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(r.code(), "RANGE_INVALID");
    assert_eq!(r.header("range"), "0-9");

    let r = reg.get(&loc).await;
    assert_eq!(
        (r.status, r.header("range")),
        (StatusCode::NO_CONTENT, "0-9")
    );

    let r = reg
        .send(
            Method::PATCH,
            &loc,
            &[("content-range", "10-19")],
            data[10..].to_vec(),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let r = reg
        .send(
            Method::PUT,
            &format!("{loc}?digest={}", sha256(&data)),
            &[],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(
        reg.get(&format!("/v2/x/blobs/{}", sha256(&data)))
            .await
            .body
            .as_ref(),
        data.as_slice()
    );
}

#[tokio::test]
async fn a_chunk_whose_length_disagrees_with_its_range_is_refused_and_rolled_back() {
    let reg = Registry::new();
    let loc = reg.start_upload("x").await;
    let r = reg
        .send(
            Method::PATCH,
            &loc,
            &[("content-range", "0-99")],
            vec![7u8; 10],
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.code(), "SIZE_INVALID");
    assert_eq!(reg.get(&loc).await.header("range"), "0-0");
    let r = reg
        .send(
            Method::PATCH,
            &loc,
            &[("content-range", "zero-ten")],
            vec![7u8; 10],
        )
        .await;
    assert_eq!(r.code(), "RANGE_INVALID");
}

#[tokio::test]
async fn an_upload_in_progress_survives_a_restart() {
    let reg = Registry::new();
    let data = vec![42u8; 3 << 20];
    let loc = reg.start_upload("team/app").await;
    let r = reg
        .send(
            Method::PATCH,
            &loc,
            &[("content-range", &format!("0-{}", (1 << 20) - 1))],
            data[..1 << 20].to_vec(),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);

    let reg = reg.restarted();
    let r = reg.get(&loc).await;
    assert_eq!(r.header("range"), format!("0-{}", (1 << 20) - 1));
    let r = reg
        .send(Method::PATCH, &loc, &[], data[1 << 20..].to_vec())
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let r = reg
        .send(
            Method::PUT,
            &format!("{loc}?digest={}", sha256(&data)),
            &[],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
}

#[tokio::test]
async fn an_unfinished_upload_is_never_visible_as_a_blob() {
    let reg = Registry::new();
    let data = b"half of a blob".to_vec();
    let loc = reg.start_upload("x").await;
    reg.send(Method::PATCH, &loc, &[], data.clone()).await;
    let r = reg
        .send(
            Method::HEAD,
            &format!("/v2/x/blobs/{}", sha256(&data)),
            &[],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_wrong_digest_discards_the_upload_and_stores_nothing() {
    let reg = Registry::new();
    let claimed = sha256(b"something else");
    let r = reg
        .send(
            Method::POST,
            &format!("/v2/x/blobs/uploads/?digest={claimed}"),
            &[],
            b"actual".to_vec(),
        )
        .await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::BAD_REQUEST, "DIGEST_INVALID")
    );
    assert!(
        reg.files().iter().all(|f| !f.contains("/blobs/sha256/")),
        "{:?}",
        reg.files()
    );
    assert!(
        reg.files().iter().all(|f| !f.contains("_uploads")),
        "{:?}",
        reg.files()
    );
    assert_eq!(
        reg.get(&format!("/v2/x/blobs/{claimed}")).await.code(),
        "BLOB_UNKNOWN"
    );
}

#[tokio::test]
async fn unknown_and_forged_upload_sessions_are_refused() {
    let reg = Registry::new();
    for loc in [
        "/v2/x/blobs/uploads/7c6f1a2e-0000-4000-8000-000000000000",
        "/v2/x/blobs/uploads/..%2F..%2Fetc",
        "/v2/x/blobs/uploads/not-a-uuid",
    ] {
        let r = reg.send(Method::PATCH, loc, &[], b"data".to_vec()).await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN"),
            "{loc}"
        );
        let r = reg.get(loc).await;
        assert_eq!(r.code(), "BLOB_UPLOAD_UNKNOWN", "{loc}");
    }
    let loc = reg.start_upload("x").await;
    assert_eq!(
        reg.send(Method::DELETE, &loc, &[], Bytes::new())
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(reg.get(&loc).await.code(), "BLOB_UPLOAD_UNKNOWN");
}

#[tokio::test]
async fn bad_names_and_digests_get_their_codes_and_touch_nothing() {
    let reg = Registry::new();
    let before = reg.files();
    let cases = [
        ("/v2/UPPER/tags/list", "NAME_INVALID"),
        ("/v2/a/../b/tags/list", "NAME_INVALID"),
        ("/v2/a%2F..%2Fb/manifests/latest", "NAME_INVALID"),
        ("/v2/-a/blobs/uploads/", "NAME_INVALID"),
        ("/v2/x/blobs/sha256:short", "DIGEST_INVALID"),
        (
            "/v2/x/blobs/md5:d41d8cd98f00b204e9800998ecf8427e",
            "DIGEST_INVALID",
        ),
        (
            "/v2/x/blobs/uploads/?digest=sha256:nothex",
            "DIGEST_INVALID",
        ),
        ("/v2/x/manifests/sha256:baddigeststring", "DIGEST_INVALID"),
    ];
    for (uri, code) in cases {
        for method in [Method::GET, Method::POST, Method::PUT, Method::DELETE] {
            let r = reg.send(method.clone(), uri, &[], b"x".to_vec()).await;
            assert!(r.status.is_client_error(), "{method} {uri}: {}", r.status);
            if r.status != StatusCode::METHOD_NOT_ALLOWED {
                assert_eq!(r.code(), code, "{method} {uri}");
            }
        }
    }
    let long = format!("/v2/{}/tags/list", "a".repeat(300));
    assert_eq!(reg.get(&long).await.code(), "NAME_INVALID");
    assert_eq!(reg.files(), before);
}

#[tokio::test]
async fn no_request_makes_the_server_fail() {
    let reg = Registry::new();
    let paths = [
        "/",
        "/v2",
        "/v2/",
        "/v2/_catalog?n=abc",
        "/v2/x/tags/list?n=-1",
        "/v2/x",
        "/v2/x/blobs",
        "/v2/x/blobs/",
        "/v2/x/manifests/",
        "/v2/x/referrers/",
        "/v2/x/referrers/sha256:zz",
        "/v2/x/blobs/uploads/%00",
        "/v2/%ff%fe/manifests/a",
        "/v2/x/manifests/a?tag=%%",
        "/v2/x/blobs/uploads/?mount=bad&from=..",
        "/v3/",
        "/metrics",
    ];
    for p in paths {
        for method in [
            Method::GET,
            Method::HEAD,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
            Method::OPTIONS,
        ] {
            let r = reg
                .send(
                    method.clone(),
                    p,
                    &[("content-range", "5-1"), ("range", "bytes=9-1")],
                    b"{".to_vec(),
                )
                .await;
            assert!(!r.status.is_server_error(), "{method} {p}: {}", r.status);
        }
    }
}

#[tokio::test]
async fn manifests_refuse_bad_bodies_and_leave_the_old_tag_in_place() {
    let reg = Registry::new();
    let good = reg.image_manifest("x", b"layer", "").await;
    assert_eq!(
        reg.put_manifest("x", "v1", &good).await.status,
        StatusCode::CREATED
    );
    let before = reg.files();

    let r = reg.put_manifest("x", "v1", "this is not json").await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::BAD_REQUEST, "MANIFEST_INVALID")
    );

    let odd = good.replace(OCI_MANIFEST, "application/vnd.example.unknown+json");
    let r = reg
        .send(
            Method::PUT,
            "/v2/x/manifests/v1",
            &[("content-type", "application/vnd.example.unknown+json")],
            odd,
        )
        .await;
    assert_eq!(r.code(), "MANIFEST_INVALID");

    let missing = good.replace(&sha256(b"layer"), &sha256(b"never pushed"));
    let r = reg.put_manifest("x", "v1", &missing).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN")
    );

    let padding = "a".repeat(5 << 20);
    let huge = format!(
        "{},\"annotations\":{{\"x\":\"{padding}\"}}}}",
        &good[..good.len() - 1]
    );
    let r = reg.put_manifest("x", "v1", &huge).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);

    let r = reg
        .put_manifest("x", &sha256(b"not this manifest"), &good)
        .await;
    assert_eq!(r.code(), "DIGEST_INVALID");

    assert_eq!(reg.files(), before);
    let r = reg.get("/v2/x/manifests/v1").await;
    assert_eq!(r.body.as_ref(), good.as_bytes());
    assert_eq!(r.header("content-type"), OCI_MANIFEST);
    assert_eq!(r.header("docker-content-digest"), sha256(good.as_bytes()));
}

#[tokio::test]
async fn an_index_needs_its_children_pushed_first() {
    let reg = Registry::new();
    let child = reg.image_manifest("x", b"l", "").await;
    let child_digest = sha256(child.as_bytes());
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{child_digest}","size":{}}}]}}"#,
        child.len()
    );
    let put = |body: String| {
        reg.send(
            Method::PUT,
            "/v2/x/manifests/multi",
            &[("content-type", "application/vnd.oci.image.index.v1+json")],
            body,
        )
    };
    assert_eq!(put(index.clone()).await.code(), "MANIFEST_BLOB_UNKNOWN");
    assert_eq!(
        reg.put_manifest("x", &child_digest, &child).await.status,
        StatusCode::CREATED
    );
    assert_eq!(put(index).await.status, StatusCode::CREATED);
}

#[tokio::test]
async fn manifests_are_served_only_in_accepted_media_types() {
    let reg = Registry::new();
    let m = reg.image_manifest("x", b"l", "").await;
    reg.put_manifest("x", "v1", &m).await;
    let reg = &reg;
    let get = |accept: &'static str| async move {
        reg.send(
            Method::GET,
            "/v2/x/manifests/v1",
            &[("accept", accept)],
            Bytes::new(),
        )
        .await
    };
    assert_eq!(get(OCI_MANIFEST).await.status, StatusCode::OK);
    assert_eq!(
        get("application/vnd.docker.distribution.manifest.v2+json, */*")
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(get("application/json").await.status, StatusCode::OK);
    let r = get("application/vnd.docker.distribution.manifest.v2+json").await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN")
    );
}

#[tokio::test]
async fn referrers_list_filter_and_forget_deleted_manifests() {
    let reg = Registry::new();
    let subject = reg.image_manifest("x", b"l", "").await;
    let subject_digest = sha256(subject.as_bytes());
    reg.put_manifest("x", "v1", &subject).await;
    let subject_ref = format!(
        r#","subject":{{"mediaType":"{OCI_MANIFEST}","digest":"{subject_digest}","size":{}}}"#,
        subject.len()
    );

    let sig = reg
        .image_manifest(
            "x",
            b"sig",
            &format!(r#","artifactType":"application/x.sig"{subject_ref}"#),
        )
        .await;
    let sbom = reg
        .image_manifest(
            "x",
            b"sbom",
            &format!(r#","artifactType":"application/x.sbom"{subject_ref}"#),
        )
        .await;
    let sig_digest = sha256(sig.as_bytes());
    let r = reg.put_manifest("x", &sig_digest, &sig).await;
    assert_eq!(r.header("oci-subject"), subject_digest);
    reg.put_manifest("x", &sha256(sbom.as_bytes()), &sbom).await;

    let (reg, subject_digest) = (&reg, &subject_digest);
    let list = |q: &'static str| async move {
        reg.get(&format!("/v2/x/referrers/{subject_digest}{q}"))
            .await
    };
    let r = list("").await;
    assert_eq!(
        r.header("content-type"),
        "application/vnd.oci.image.index.v1+json"
    );
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["manifests"].as_array().unwrap().len(), 2);

    let r = list("?artifactType=application/x.sig").await;
    assert_eq!(r.header("oci-filters-applied"), "artifactType");
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["manifests"][0]["digest"], sig_digest);
    assert_eq!(v["manifests"].as_array().unwrap().len(), 1);

    assert_eq!(
        reg.send(
            Method::DELETE,
            &format!("/v2/x/manifests/{sig_digest}"),
            &[],
            Bytes::new()
        )
        .await
        .status,
        StatusCode::ACCEPTED
    );
    let v: serde_json::Value = serde_json::from_slice(&list("").await.body).unwrap();
    assert_eq!(v["manifests"].as_array().unwrap().len(), 1);

    // A subject nobody refers to: an empty index, not an error.
    let v: serde_json::Value = serde_json::from_slice(
        &reg.get(&format!("/v2/x/referrers/{}", sha256(b"none")))
            .await
            .body,
    )
    .unwrap();
    assert_eq!(v["manifests"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn tags_and_catalog_paginate_with_link_headers() {
    let reg = Registry::new();
    let m = reg.image_manifest("team/app", b"l", "").await;
    for tag in ["c", "a", "b", "d"] {
        assert_eq!(
            reg.put_manifest("team/app", tag, &m).await.status,
            StatusCode::CREATED
        );
    }
    reg.push_blob("other", b"x").await;
    let r = reg.get("/v2/team/app/tags/list?n=2").await;
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["tags"], serde_json::json!(["a", "b"]));
    assert_eq!(
        r.header("link"),
        "</v2/team/app/tags/list?n=2&last=b>; rel=\"next\""
    );
    let v: serde_json::Value =
        serde_json::from_slice(&reg.get("/v2/team/app/tags/list?n=2&last=b").await.body).unwrap();
    assert_eq!(v["tags"], serde_json::json!(["c", "d"]));

    let v: serde_json::Value = serde_json::from_slice(&reg.get("/v2/_catalog").await.body).unwrap();
    assert_eq!(v["repositories"], serde_json::json!(["other", "team/app"]));
    let r = reg.get("/v2/_catalog?n=1").await;
    assert_eq!(
        r.header("link"),
        "</v2/_catalog?n=1&last=other>; rel=\"next\""
    );

    // A repository created after a listing shows up in the next one.
    reg.push_blob("zeta/new", b"y").await;
    let v: serde_json::Value = serde_json::from_slice(&reg.get("/v2/_catalog").await.body).unwrap();
    assert_eq!(
        v["repositories"],
        serde_json::json!(["other", "team/app", "zeta/new"])
    );

    assert_eq!(reg.get("/v2/nope/tags/list").await.code(), "NAME_UNKNOWN");
}

#[tokio::test]
async fn deleting_a_manifest_removes_its_tags_and_deleting_a_tag_keeps_the_manifest() {
    let reg = Registry::new();
    let m = reg.image_manifest("x", b"l", "").await;
    let d = sha256(m.as_bytes());
    reg.put_manifest("x", "keep", &m).await;
    reg.put_manifest("x", "drop", &m).await;
    assert_eq!(
        reg.send(Method::DELETE, "/v2/x/manifests/drop", &[], Bytes::new())
            .await
            .status,
        StatusCode::ACCEPTED
    );
    assert_eq!(
        reg.get("/v2/x/manifests/drop").await.code(),
        "MANIFEST_UNKNOWN"
    );
    assert_eq!(
        reg.get(&format!("/v2/x/manifests/{d}")).await.status,
        StatusCode::OK
    );
    assert_eq!(
        reg.send(
            Method::DELETE,
            &format!("/v2/x/manifests/{d}"),
            &[],
            Bytes::new()
        )
        .await
        .status,
        StatusCode::ACCEPTED
    );
    assert_eq!(
        reg.get("/v2/x/manifests/keep").await.code(),
        "MANIFEST_UNKNOWN"
    );
    assert_eq!(
        reg.send(
            Method::DELETE,
            &format!("/v2/x/manifests/{d}"),
            &[],
            Bytes::new()
        )
        .await
        .code(),
        "MANIFEST_UNKNOWN"
    );
}

#[tokio::test]
async fn cross_repository_mount_links_without_copying_and_falls_back_when_missing() {
    let reg = Registry::new();
    let d = reg.push_blob("src", b"shared layer").await;
    let r = reg
        .send(
            Method::POST,
            &format!("/v2/dst/blobs/uploads/?mount={d}&from=src"),
            &[],
            Bytes::new(),
        )
        .await;
    assert_eq!(
        (r.status, r.header("location")),
        (StatusCode::CREATED, format!("/v2/dst/blobs/{d}").as_str())
    );
    assert_eq!(
        reg.get(&format!("/v2/dst/blobs/{d}")).await.body.as_ref(),
        b"shared layer"
    );

    let missing = sha256(b"nowhere");
    let r = reg
        .send(
            Method::POST,
            &format!("/v2/dst/blobs/uploads/?mount={missing}&from=src"),
            &[],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert!(r.header("location").starts_with("/v2/dst/blobs/uploads/"));
}

#[tokio::test]
async fn unknown_query_parameters_are_ignored() {
    // containerd adds ?ns=<registry host> to requests sent to a mirror host.
    let reg = Registry::new();
    let d = reg.push_blob("x", b"abc").await;
    assert_eq!(
        reg.get(&format!("/v2/x/blobs/{d}?ns=hub.berth.internal"))
            .await
            .status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn blob_delete_unlinks_from_the_repository_only() {
    let reg = Registry::new();
    let d = reg.push_blob("one", b"shared").await;
    reg.push_blob("two", b"shared").await;
    assert_eq!(
        reg.send(
            Method::DELETE,
            &format!("/v2/one/blobs/{d}"),
            &[],
            Bytes::new()
        )
        .await
        .status,
        StatusCode::ACCEPTED
    );
    assert_eq!(
        reg.get(&format!("/v2/one/blobs/{d}")).await.code(),
        "BLOB_UNKNOWN"
    );
    assert_eq!(
        reg.get(&format!("/v2/two/blobs/{d}")).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn abandoned_upload_sessions_are_purged_and_fresh_ones_kept() {
    let dir = tempfile::tempdir().unwrap();
    let store = berth_registry::filesystem_store(dir.path()).unwrap();
    let name = "team/app".parse().unwrap();
    let old = store.upload_start(&name, None).await.unwrap();
    let fresh = store.upload_start(&name, None).await.unwrap();
    let started = dir
        .path()
        .join(format!("repositories/team/app/_uploads/{old}/startedat"));
    std::fs::write(&started, "1000").unwrap();
    // Idle as long as it is old: no bytes since.
    let long_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
    std::fs::File::options()
        .write(true)
        .open(started.with_file_name("data"))
        .unwrap()
        .set_modified(long_ago)
        .unwrap();
    assert_eq!(
        store
            .purge_stale_uploads(std::time::Duration::from_secs(3600))
            .await
            .unwrap(),
        1
    );
    assert!(store.upload_size(&name, &old).await.is_err());
    assert_eq!(store.upload_size(&name, &fresh).await.unwrap(), 0);
}
