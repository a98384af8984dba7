#![allow(clippy::unwrap_used)]
//! Storage quotas per namespace over a real socket: a push under the
//! quota is stored, one past it is refused with DENIED and a message that
//! names the namespace, its quota and its usage (monolithic, chunked, a
//! mount, a manifest), nothing stored is touched by a refusal, a re-push
//! of what the namespace holds is never refused, a burst of concurrent
//! pushes cannot overshoot, and deleting images then collecting garbage
//! makes room again. Usage and quota show in `/berth/v1/usage` and the
//! metrics.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use berth_access::quota::{QuotaConfig, UsageReport};
use berth_registry::Store;
use berth_registry::quota::Quotas;
use berth_registry::storage::gc::GcOptions;
use berth_registry::usage::Usage;
use sha2::{Digest as _, Sha256};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

struct Server {
    base: String,
    client: reqwest::Client,
    store: Arc<Store>,
    quotas: Arc<Quotas>,
    _dir: tempfile::TempDir,
}

fn sha256(data: &[u8]) -> String {
    let h = Sha256::digest(data);
    format!(
        "sha256:{}",
        h.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

/// `n` bytes that differ for each `seed`.
fn bytes(seed: u8, n: usize) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect()
}

fn limits(default: Option<u64>, namespaces: &[(&str, u64)]) -> QuotaConfig {
    QuotaConfig {
        default_bytes: default,
        namespaces: namespaces
            .iter()
            .map(|(n, b)| ((*n).to_owned(), *b))
            .collect::<BTreeMap<_, _>>(),
    }
}

async fn start(config: QuotaConfig) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let store = berth_registry::filesystem_store(dir.path()).unwrap();
    let quotas = Quotas::new(Usage::new(store.clone()), config);
    let limits = berth_registry::limits::Limits::default();
    let app = berth_registry::router_features(
        store.clone(),
        None,
        &limits,
        berth_registry::Features {
            quota: Some(quotas.clone()),
            ..Default::default()
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        berth_registry::server::serve_with(listener, app, None, &limits, std::future::pending())
            .await
    });
    Server {
        base: format!("http://{addr}"),
        client: reqwest::Client::new(),
        store,
        quotas,
        _dir: dir,
    }
}

/// Status, OCI error code (if any) and message of a reply.
struct Answer {
    status: u16,
    code: String,
    message: String,
}

async fn answer(r: reqwest::Response) -> Answer {
    let status = r.status().as_u16();
    let body: serde_json::Value =
        serde_json::from_slice(&r.bytes().await.unwrap_or_default()).unwrap_or_default();
    Answer {
        status,
        code: body["errors"][0]["code"].as_str().unwrap_or("").to_owned(),
        message: body["errors"][0]["message"]
            .as_str()
            .unwrap_or("")
            .to_owned(),
    }
}

impl Server {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A one-request (monolithic) blob push.
    async fn push_blob(&self, repo: &str, data: &[u8]) -> Answer {
        let r = self
            .client
            .post(self.url(&format!(
                "/v2/{repo}/blobs/uploads/?digest={}",
                sha256(data)
            )))
            .body(data.to_vec())
            .send()
            .await
            .unwrap();
        answer(r).await
    }

    /// A session: POST, one PATCH, then the PUT that commits.
    async fn push_blob_chunked(&self, repo: &str, data: &[u8]) -> (Answer, String) {
        let r = self
            .client
            .post(self.url(&format!("/v2/{repo}/blobs/uploads/")))
            .send()
            .await
            .unwrap();
        if r.status() != 202 {
            return (answer(r).await, String::new());
        }
        let location = r.headers()["location"].to_str().unwrap().to_owned();
        let r = self
            .client
            .patch(self.url(&location))
            .header("content-type", "application/octet-stream")
            .body(data.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        let r = self
            .client
            .put(self.url(&format!("{location}?digest={}", sha256(data))))
            .send()
            .await
            .unwrap();
        (answer(r).await, location)
    }

    async fn put_manifest(&self, repo: &str, reference: &str, body: &str) -> Answer {
        let r = self
            .client
            .put(self.url(&format!("/v2/{repo}/manifests/{reference}")))
            .header("content-type", OCI_MANIFEST)
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        answer(r).await
    }

    /// Config `{}` and `layer` pushed, then the manifest; its body.
    async fn push_image(&self, repo: &str, tag: &str, layer: &[u8]) -> String {
        assert_eq!(self.push_blob(repo, b"{}").await.status, 201);
        assert_eq!(self.push_blob(repo, layer).await.status, 201);
        let manifest = manifest(layer);
        let a = self.put_manifest(repo, tag, &manifest).await;
        assert_eq!(a.status, 201, "{}", a.message);
        manifest
    }

    async fn get(&self, path: &str) -> (u16, Vec<u8>) {
        let r = self
            .client
            .get(self.url(path))
            .header("accept", OCI_MANIFEST)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.bytes().await.unwrap().to_vec())
    }

    async fn usage(&self) -> UsageReport {
        let (status, body) = self.get("/berth/v1/usage").await;
        assert_eq!(status, 200);
        serde_json::from_slice(&body).unwrap()
    }

    async fn used(&self, namespace: &str) -> u64 {
        self.usage()
            .await
            .namespaces
            .iter()
            .find(|n| n.namespace == namespace)
            .map_or(0, |n| n.bytes)
    }
}

fn manifest(layer: &[u8]) -> String {
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":2}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{}","size":{}}}]}}"#,
        sha256(b"{}"),
        sha256(layer),
        layer.len()
    )
}

#[tokio::test]
async fn quota_refusal_is_denied_naming_the_quota_and_leaves_stored_images_whole() {
    let s = start(limits(Some(2000), &[("roomy", 1 << 20)])).await;
    let layer = bytes(1, 600);
    let body = manifest(&layer);
    let v1 = s.push_image("team/app", "v1", &layer).await;
    let used = s.used("team").await;
    // Config, layer and manifest, each once.
    assert_eq!(used, 2 + 600 + body.len() as u64);
    let before: Vec<String> = walk(s._dir.path());

    // One request: 1200 more do not fit in 2000.
    let big = bytes(2, 1200);
    let refused = s.push_blob("team/other", &big).await;
    assert_eq!((refused.status, refused.code.as_str()), (403, "DENIED"));
    for part in [
        "namespace team",
        "2000 bytes",
        &format!("({used} bytes) stored"),
        "adds 1.2 KiB",
        "delete images from team",
        "spec.quotas",
    ] {
        assert!(
            refused.message.contains(part),
            "{part:?} not in {:?}",
            refused.message
        );
    }
    // A session: refused at the PUT that would commit it, and discarded.
    let (refused, location) = s.push_blob_chunked("team/app", &big).await;
    assert_eq!((refused.status, refused.code.as_str()), (403, "DENIED"));
    assert_eq!(s.get(&location).await.0, 404, "the refused session is gone");
    // Another namespace has room of its own.
    assert_eq!(s.push_blob("roomy/app", &big).await.status, 201);
    // Nothing of team's was touched, nothing refused was stored.
    let after: Vec<String> = walk(s._dir.path())
        .into_iter()
        .filter(|f| !f.contains("/roomy/") && !f.contains(&sha256(&big)[7..]))
        .collect();
    assert_eq!(after, before);
    assert_eq!(
        s.get(&format!("/v2/team/other/blobs/{}", sha256(&big)))
            .await
            .0,
        404
    );
    assert_eq!(s.used("team").await, used);

    // The stored image pulls byte for byte.
    let (status, got) = s.get("/v2/team/app/manifests/v1").await;
    assert_eq!((status, got), (200, v1.into_bytes()));
    let (status, got) = s
        .get(&format!("/v2/team/app/blobs/{}", sha256(&layer)))
        .await;
    assert_eq!((status, got), (200, layer.clone()));
}

#[tokio::test]
async fn a_namespace_over_its_quota_still_takes_a_re_push_of_what_it_holds() {
    let s = start(limits(Some(1 << 20), &[])).await;
    let layer = bytes(3, 700);
    let body = s.push_image("full/app", "v1", &layer).await;
    let other = bytes(4, 300);
    assert_eq!(s.push_blob("elsewhere/base", &other).await.status, 201);
    // The quota is lowered below what team holds.
    s.quotas.set(limits(Some(500), &[]));

    // The same blob again (another repository of the namespace too), the
    // same manifest under another tag: nothing new, all accepted.
    assert_eq!(s.push_blob("full/app", &layer).await.status, 201);
    assert_eq!(s.push_blob("full/copy", &layer).await.status, 201);
    let retag = s.put_manifest("full/app", "v1-again", &body).await;
    assert_eq!(retag.status, 201, "{}", retag.message);

    // Anything new is refused: a new session at its POST already, a mount
    // of another namespace's blob before it is linked, a new manifest.
    let (early, _) = s.push_blob_chunked("full/app", &bytes(5, 10)).await;
    assert_eq!((early.status, early.code.as_str()), (403, "DENIED"));
    assert!(
        early
            .message
            .starts_with("namespace full has used its storage quota"),
        "{}",
        early.message
    );
    let mount = s
        .client
        .post(s.url(&format!(
            "/v2/full/app/blobs/uploads/?mount={}&from=elsewhere/base",
            sha256(&other)
        )))
        .send()
        .await
        .unwrap();
    let mount = answer(mount).await;
    assert_eq!((mount.status, mount.code.as_str()), (403, "DENIED"));
    assert_eq!(
        s.get(&format!("/v2/full/app/blobs/{}", sha256(&other)))
            .await
            .0,
        404
    );
    let tagged = body.replace(
        r#""schemaVersion":2,"#,
        r#""schemaVersion":2,"annotations":{"a":"b"},"#,
    );
    let m = s.put_manifest("full/app", "v2", &tagged).await;
    assert_eq!((m.status, m.code.as_str()), (403, "DENIED"));
    assert_eq!(s.get("/v2/full/app/manifests/v2").await.0, 404);

    // Usage and quota in the report and the metrics.
    let report = s.usage().await;
    let team = report
        .namespaces
        .iter()
        .find(|n| n.namespace == "full")
        .unwrap();
    assert_eq!(team.quota_bytes, Some(500));
    assert_eq!(team.repositories, 2);
    assert_eq!(team.bytes, 2 + 700 + body.len() as u64);
    let (_, metrics) = s.get("/metrics").await;
    let metrics = String::from_utf8(metrics).unwrap();
    assert!(
        metrics.contains(r#"berth_registry_namespace_quota_bytes{namespace="full"} 500"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"berth_registry_namespace_bytes{namespace="elsewhere"} 300"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"berth_registry_refusals_total{kind="quota"}"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn concurrent_pushes_cannot_take_the_same_room_twice() {
    let s = Arc::new(start(limits(Some(10_000), &[])).await);
    let pushes: Vec<_> = (0..20u8)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                s.push_blob("burst/burst", &bytes(100 + i, 1000))
                    .await
                    .status
            })
        })
        .collect();
    let mut stored = 0;
    for p in pushes {
        match p.await.unwrap() {
            201 => stored += 1,
            403 => {}
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(stored, 10);
    s.quotas.usage().refresh().await.unwrap();
    assert_eq!(s.used("burst").await, 10_000);
}

#[tokio::test]
async fn deleting_an_image_and_collecting_garbage_makes_room_again() {
    let s = start(limits(Some(2000), &[])).await;
    let layer = bytes(6, 1200);
    let body = s.push_image("freed/app", "v1", &layer).await;
    let next = bytes(7, 1200);
    assert_eq!(s.push_blob("freed/app", &next).await.status, 403);

    let digest = sha256(body.as_bytes());
    let r = s
        .client
        .delete(s.url(&format!("/v2/freed/app/manifests/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    // Deleted, not yet reclaimed: still counted.
    s.quotas.usage().refresh().await.unwrap();
    assert_eq!(s.push_blob("freed/app", &next).await.status, 403);
    // Quarantine, then delete for good.
    let o = GcOptions {
        grace: Duration::ZERO,
        quarantine: Duration::ZERO,
        ..GcOptions::default()
    };
    s.store.gc(&o).await.unwrap();
    s.store.gc(&o).await.unwrap();
    s.quotas.usage().refresh().await.unwrap();
    assert_eq!(s.used("freed").await, 0);
    let again = s.push_blob("freed/app", &next).await;
    assert_eq!(again.status, 201, "{}", again.message);
}

/// Every file under `dir`.
fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path().display().to_string());
            }
        }
    }
    out.sort();
    out
}
