#![allow(clippy::unwrap_used)]
//! Garbage collection while the registry serves: what goes, what stays,
//! and the push-versus-GC race that loses layers in other registries.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use axum::http::{Method, StatusCode};
use berth_registry::Store;
use berth_registry::storage::gc::{GcAction, GcOptions, GcReport, GcSources};
use berth_registry::storage::retention::{InUse, RetentionConfig, RetentionRule};
use berth_registry::storage::s3::{ObjectStoreDriver, S3Config};
use bytes::Bytes;
use common::{OCI_MANIFEST, Registry, sha256};

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

fn registry() -> (Registry, Arc<Store>) {
    let dir = tempfile::tempdir().unwrap();
    let store = berth_registry::filesystem_store(dir.path()).unwrap();
    (
        Registry {
            app: berth_registry::router(store.clone()),
            dir,
        },
        store,
    )
}

fn opts(grace: Duration, quarantine: Duration) -> GcOptions {
    GcOptions {
        grace,
        quarantine,
        dry_run: false,
        list: true,
        ..GcOptions::default()
    }
}

/// Quarantine then delete: two runs with no grace and no quarantine.
async fn collect(store: &Store) -> GcReport {
    let o = opts(Duration::ZERO, Duration::ZERO);
    store.gc(&o).await.unwrap();
    store.gc(&o).await.unwrap()
}

struct Image {
    digest: String,
    body: String,
    blobs: Vec<(String, Vec<u8>)>,
}

/// An image manifest's JSON over `config` and `layers` (already pushed).
fn image_json(config: &[u8], layers: &[Vec<u8>], extra: &str) -> String {
    let layers: Vec<String> = layers
        .iter()
        .map(|l| {
            format!(
                r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{}","size":{}}}"#,
                sha256(l),
                l.len()
            )
        })
        .collect();
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{}}},"layers":[{}]{extra}}}"#,
        sha256(config),
        config.len(),
        layers.join(",")
    )
}

/// Pushes config and layers, then the manifest under `reference` (a tag,
/// or None: by digest).
async fn push_image(
    reg: &Registry,
    repo: &str,
    reference: Option<&str>,
    config: &[u8],
    layers: &[Vec<u8>],
    extra: &str,
) -> Image {
    let mut blobs = vec![(reg.push_blob(repo, config).await, config.to_vec())];
    for l in layers {
        blobs.push((reg.push_blob(repo, l).await, l.clone()));
    }
    let body = image_json(config, layers, extra);
    let digest = sha256(body.as_bytes());
    let r = reg
        .put_manifest(repo, reference.unwrap_or(&digest), &body)
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    Image {
        digest,
        body,
        blobs,
    }
}

fn subject(image: &Image) -> String {
    format!(
        r#","subject":{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":{}}}"#,
        image.digest,
        image.body.len()
    )
}

async fn head(reg: &Registry, uri: &str) -> StatusCode {
    reg.send(Method::HEAD, uri, &[], Bytes::new()).await.status
}

/// The image pulls whole, byte for byte: manifest by digest and every blob.
async fn assert_pullable(reg: &Registry, repo: &str, image: &Image) {
    let m = reg
        .get(&format!("/v2/{repo}/manifests/{}", image.digest))
        .await;
    assert_eq!(m.status, StatusCode::OK, "manifest {}", image.digest);
    assert_eq!(m.body, image.body.as_bytes());
    for (d, bytes) in &image.blobs {
        let b = reg.get(&format!("/v2/{repo}/blobs/{d}")).await;
        assert_eq!(b.status, StatusCode::OK, "blob {d} of {}", image.digest);
        assert_eq!(&b.body[..], &bytes[..]);
    }
}

fn files_under(p: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
        if e.path().is_dir() {
            out.extend(files_under(&e.path()));
        } else {
            out.push(e.path().display().to_string());
        }
    }
    out
}

fn hex(d: &str) -> &str {
    d.split_once(':').unwrap().1
}

#[tokio::test]
async fn unreferenced_blobs_and_untagged_manifests_go_after_the_grace_and_not_before() {
    let (reg, store) = registry();
    let kept = push_image(
        &reg,
        "team/app",
        Some("v1"),
        b"{\"a\":1}",
        &[b"layer A".to_vec()],
        "",
    )
    .await;
    let untagged = push_image(
        &reg,
        "team/app",
        None,
        b"{\"u\":1}",
        &[b"layer U".to_vec()],
        "",
    )
    .await;
    let orphan = reg.push_blob("team/app", b"pushed, never used").await;

    // Within the grace nothing goes, however often GC runs.
    for _ in 0..2 {
        let r = store
            .gc(&opts(Duration::from_secs(3600), Duration::ZERO))
            .await
            .unwrap();
        assert_eq!((r.blobs_quarantined, r.manifests_quarantined), (0, 0));
        assert_eq!(r.objects_reclaimed(), 0);
    }
    assert_pullable(&reg, "team/app", &untagged).await;
    assert_eq!(
        head(&reg, &format!("/v2/team/app/blobs/{orphan}")).await,
        StatusCode::OK
    );

    let first = store
        .gc(&opts(Duration::ZERO, Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(first.manifests_quarantined, 1);
    // The untagged manifest's bytes, config and layer, and the orphan.
    assert_eq!(first.blobs_quarantined, 4, "{:?}", first.items);
    let second = store
        .gc(&opts(Duration::ZERO, Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(second.manifests_deleted, 1);
    assert_eq!(second.blobs_deleted, 4);
    assert!(second.bytes_reclaimed > 0);

    assert_eq!(
        reg.get(&format!("/v2/team/app/manifests/{}", untagged.digest))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        head(&reg, &format!("/v2/team/app/blobs/{orphan}")).await,
        StatusCode::NOT_FOUND
    );
    let files = reg.files().join("\n");
    assert!(
        !files.contains(hex(&orphan)),
        "orphan or its link left: {files}"
    );
    assert!(!files.contains(hex(&untagged.digest)), "{files}");
    assert!(!files.contains("_gc/trash"), "{files}");
    assert_pullable(&reg, "team/app", &kept).await;
}

#[tokio::test]
async fn an_index_s_children_and_a_live_subject_s_referrers_stay_and_a_referrer_goes_with_its_subject()
 {
    let (reg, store) = registry();
    let repo = "team/multi";
    let tagged = push_image(
        &reg,
        repo,
        Some("v1"),
        b"{\"t\":1}",
        &[b"tagged layer".to_vec()],
        "",
    )
    .await;
    let amd = push_image(
        &reg,
        repo,
        None,
        b"{\"arch\":\"amd64\"}",
        &[b"amd".to_vec()],
        "",
    )
    .await;
    let arm = push_image(
        &reg,
        repo,
        None,
        b"{\"arch\":\"arm64\"}",
        &[b"arm".to_vec()],
        "",
    )
    .await;
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":{}}},{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":{}}}]}}"#,
        amd.digest,
        amd.body.len(),
        arm.digest,
        arm.body.len()
    );
    let r = reg
        .send(
            Method::PUT,
            &format!("/v2/{repo}/manifests/multi"),
            &[("content-type", OCI_INDEX)],
            index.clone(),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let signature = push_image(
        &reg,
        repo,
        None,
        b"{\"sig\":1}",
        &[b"signature".to_vec()],
        &subject(&tagged),
    )
    .await;
    let doomed = push_image(
        &reg,
        repo,
        Some("old"),
        b"{\"old\":1}",
        &[b"old layer".to_vec()],
        "",
    )
    .await;
    let sbom = push_image(
        &reg,
        repo,
        None,
        b"{\"sbom\":1}",
        &[b"sbom".to_vec()],
        &subject(&doomed),
    )
    .await;
    let r = reg
        .send(
            Method::DELETE,
            &format!("/v2/{repo}/manifests/old"),
            &[],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);

    // The subject and its referrer are quarantined in the same run: never the referrer first.
    let first = store
        .gc(&opts(Duration::ZERO, Duration::from_secs(3600)))
        .await
        .unwrap();
    let quarantined: Vec<&str> = first
        .items
        .iter()
        .filter(|i| i.action == GcAction::Quarantine && i.key.contains("/_manifests/"))
        .map(|i| i.key.as_str())
        .collect();
    assert_eq!(quarantined.len(), 2, "{quarantined:?}");
    assert!(quarantined.iter().any(|k| k.ends_with(hex(&doomed.digest))));
    assert!(quarantined.iter().any(|k| k.ends_with(hex(&sbom.digest))));
    let report = store
        .gc(&opts(Duration::ZERO, Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(report.manifests_deleted, 2, "{:?}", report.items);
    collect(&store).await;

    for image in [&tagged, &amd, &arm, &signature] {
        assert_pullable(&reg, repo, image).await;
    }
    let got = reg.get(&format!("/v2/{repo}/manifests/multi")).await;
    assert_eq!(got.body, index.as_bytes());
    let referrers = reg
        .get(&format!("/v2/{repo}/referrers/{}", tagged.digest))
        .await;
    assert!(String::from_utf8_lossy(&referrers.body).contains(&signature.digest));
    for gone in [&doomed, &sbom] {
        let r = reg
            .get(&format!("/v2/{repo}/manifests/{}", gone.digest))
            .await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
        for (d, _) in &gone.blobs {
            assert_eq!(
                head(&reg, &format!("/v2/{repo}/blobs/{d}")).await,
                StatusCode::NOT_FOUND
            );
        }
    }
    let referrers = reg
        .get(&format!("/v2/{repo}/referrers/{}", doomed.digest))
        .await;
    assert!(!String::from_utf8_lossy(&referrers.body).contains(&sbom.digest));
}

#[tokio::test]
async fn uploads_in_progress_are_never_touched() {
    let (reg, store) = registry();
    let loc = reg.start_upload("team/up").await;
    let r = reg.send(Method::PATCH, &loc, &[], vec![9u8; 5000]).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let uploads = |reg: &Registry| -> Vec<String> {
        reg.files()
            .into_iter()
            .filter(|f| f.contains("/_uploads/"))
            .collect()
    };
    let before = uploads(&reg);
    assert!(!before.is_empty());
    collect(&store).await;
    assert_eq!(uploads(&reg), before);
    let data = vec![9u8; 5000];
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
        head(&reg, &format!("/v2/team/up/blobs/{}", sha256(&data))).await,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_dry_run_deletes_nothing_and_lists_what_would_go() {
    let (reg, store) = registry();
    push_image(
        &reg,
        "team/dry",
        Some("v1"),
        b"{\"k\":1}",
        &[b"keep".to_vec()],
        "",
    )
    .await;
    let untagged = push_image(
        &reg,
        "team/dry",
        None,
        b"{\"u\":2}",
        &[b"drop".to_vec()],
        "",
    )
    .await;
    let orphan = reg.push_blob("team/dry", b"orphan").await;
    let before = reg.files();
    let dry = GcOptions {
        dry_run: true,
        ..opts(Duration::ZERO, Duration::ZERO)
    };
    let r = store.gc(&dry).await.unwrap();
    assert_eq!(reg.files(), before);
    assert!(r.dry_run);
    assert_eq!((r.manifests_quarantined, r.blobs_quarantined), (1, 4));
    let listed: Vec<String> = r.items.iter().map(|i| i.to_string()).collect();
    for d in [&orphan, &untagged.digest] {
        assert!(
            listed
                .iter()
                .any(|l| l.starts_with("quarantine") && l.contains(hex(d))),
            "{d} not listed: {listed:?}"
        );
    }
    // Quarantined for real, then a dry run lists the deletions it would make.
    store
        .gc(&opts(Duration::ZERO, Duration::from_secs(3600)))
        .await
        .unwrap();
    let before = reg.files();
    let r = store.gc(&dry).await.unwrap();
    assert_eq!(reg.files(), before);
    assert_eq!((r.manifests_deleted, r.blobs_deleted), (1, 4));
    assert!(r.items.iter().any(|i| i.action == GcAction::Delete));
}

#[tokio::test]
async fn layers_gc_quarantined_come_back_for_a_head_and_for_a_manifest_push() {
    let (reg, store) = registry();
    let config = b"{\"late\":1}".to_vec();
    let layer = b"uploaded long before its manifest".to_vec();
    let config_d = reg.push_blob("team/late", &config).await;
    let layer_d = reg.push_blob("team/late", &layer).await;
    let quarantine_all = opts(Duration::ZERO, Duration::from_secs(3600));
    let r = store.gc(&quarantine_all).await.unwrap();
    assert_eq!(r.blobs_quarantined, 2);
    assert!(
        !reg.files()
            .iter()
            .any(|f| f.contains("/blobs/") && !f.contains("_gc") && f.contains(hex(&layer_d)))
    );
    // A client checking whether to upload puts it back.
    assert_eq!(
        head(&reg, &format!("/v2/team/late/blobs/{layer_d}")).await,
        StatusCode::OK
    );
    store.gc(&quarantine_all).await.unwrap();
    // The manifest push that follows a skipped upload puts both back.
    let body = image_json(&config, std::slice::from_ref(&layer), "");
    let r = reg.put_manifest("team/late", "v1", &body).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let report = collect(&store).await;
    assert_eq!(report.blobs_deleted, 0, "{:?}", report.items);
    let image = Image {
        digest: sha256(body.as_bytes()),
        body,
        blobs: vec![(config_d, config), (layer_d, layer)],
    };
    assert_pullable(&reg, "team/late", &image).await;
}

/// A tiny deterministic generator (no dependency for the test's dice).
struct Dice(u64);

impl Dice {
    fn roll(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

struct Pushed {
    repo: String,
    tag: String,
    image: Image,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pushes_racing_gc_on_two_processes_never_lose_a_blob() {
    // A failure below names its cause in the registry's log.
    let _ = tracing_subscriber::fmt()
        .with_env_filter("warn")
        .with_test_writer()
        .try_init();
    let dir = tempfile::tempdir().unwrap();
    // Two registry processes serving one store, and two GC loops (as two
    // replicas would run), with no lock shared between any of them.
    let apps: Vec<Registry> = (0..2)
        .map(|_| Registry {
            app: berth_registry::router(berth_registry::filesystem_store(dir.path()).unwrap()),
            dir: tempfile::tempdir().unwrap(),
        })
        .collect();
    let apps = Arc::new(apps);
    let quarantine = Duration::from_millis(1500);
    let stop = Arc::new(AtomicBool::new(false));
    let stop_gc = Arc::new(AtomicBool::new(false));
    // Layers no manifest references (abandoned pushes, deleted images):
    // later pushes reuse them while GC is busy collecting them.
    let pool: Arc<std::sync::Mutex<Vec<Vec<u8>>>> = Arc::default();
    let (refused, deleted, passes) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let (quarantined, reclaimed, restored) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );

    let mut gcs = Vec::new();
    for g in 0..2u64 {
        let store = berth_registry::filesystem_store(dir.path()).unwrap();
        let (stop_gc, passes, quarantined, reclaimed, restored) = (
            stop_gc.clone(),
            passes.clone(),
            quarantined.clone(),
            reclaimed.clone(),
            restored.clone(),
        );
        gcs.push(tokio::spawn(async move {
            let mut dice = Dice(0x9e37_79b9 + g);
            let o = GcOptions {
                list: false,
                ..opts(Duration::ZERO, quarantine)
            };
            while !stop_gc.load(Ordering::Relaxed) {
                let r = store.gc(&o).await.unwrap();
                passes.fetch_add(1, Ordering::Relaxed);
                quarantined.fetch_add(r.blobs_quarantined as u64, Ordering::Relaxed);
                reclaimed.fetch_add(r.blobs_deleted as u64, Ordering::Relaxed);
                restored.fetch_add(r.restored as u64, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(dice.roll(40))).await;
            }
        }));
    }

    let mut pushers = Vec::new();
    for t in 0..4u64 {
        let (apps, stop, pool, refused, deleted) = (
            apps.clone(),
            stop.clone(),
            pool.clone(),
            refused.clone(),
            deleted.clone(),
        );
        pushers.push(tokio::spawn(async move {
            let mut dice = Dice(0x2545_f491 + t * 7919);
            let mut pushed: Vec<Pushed> = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let repo = format!("race/r{}", dice.roll(2));
                let (blobs_app, manifest_app) = if dice.roll(2) == 0 {
                    (&apps[0], &apps[1])
                } else {
                    (&apps[1], &apps[0])
                };
                let fresh = |n: u64| {
                    let mut l = format!("layer {t}-{i}-{n} ").into_bytes();
                    l.resize(1000 + (n as usize * 37) % 3000, b'x');
                    l
                };
                let mut layers = vec![fresh(0)];
                let reused = {
                    let pool = pool.lock().unwrap();
                    (!pool.is_empty()).then(|| pool[dice.roll(pool.len() as u64) as usize].clone())
                };
                layers.extend(reused);
                let config = format!("{{\"push\":\"{t}-{i}\"}}").into_bytes();
                let mut blobs = Vec::new();
                for b in std::iter::once(&config).chain(&layers) {
                    let d = sha256(b);
                    // HEAD, and skip the upload when the registry has it.
                    if head(blobs_app, &format!("/v2/{repo}/blobs/{d}")).await != StatusCode::OK {
                        blobs_app.push_blob(&repo, b).await;
                    }
                    blobs.push((d, b.clone()));
                }
                if dice.roll(5) == 0 {
                    // Abandoned: the blobs were pushed, the manifest never is.
                    pool.lock().unwrap().extend(layers);
                    continue;
                }
                // The manifest comes a moment after the blobs.
                tokio::time::sleep(Duration::from_millis(dice.roll(25))).await;
                let body = image_json(&config, &layers, "");
                let tag = format!("p{t}-{i}");
                let r = manifest_app.put_manifest(&repo, &tag, &body).await;
                if r.status != StatusCode::CREATED {
                    assert_eq!(r.code(), "MANIFEST_BLOB_UNKNOWN", "{:?}", r.body);
                    refused.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                pushed.push(Pushed {
                    repo: repo.clone(),
                    tag,
                    image: Image {
                        digest: sha256(body.as_bytes()),
                        body,
                        blobs,
                    },
                });
                if dice.roll(4) == 0 && pushed.len() > 3 {
                    // An older image deleted: its layers become garbage.
                    let old = pushed.remove(dice.roll(pushed.len() as u64 - 1) as usize);
                    let r = manifest_app
                        .send(
                            Method::DELETE,
                            &format!("/v2/{}/manifests/{}", old.repo, old.image.digest),
                            &[],
                            Bytes::new(),
                        )
                        .await;
                    assert_eq!(r.status, StatusCode::ACCEPTED);
                    deleted.fetch_add(1, Ordering::Relaxed);
                    pool.lock()
                        .unwrap()
                        .extend(old.image.blobs.into_iter().skip(1).map(|(_, b)| b));
                }
            }
            pushed
        }));
    }

    tokio::time::sleep(Duration::from_secs(8)).await;
    stop.store(true, Ordering::Relaxed);
    let mut pushed = Vec::new();
    for p in pushers {
        pushed.extend(p.await.unwrap());
    }
    // GC goes on past a quarantine, so what it took during the pushes is
    // settled (deleted for good or moved back) before anything is pulled.
    tokio::time::sleep(quarantine * 2).await;
    stop_gc.store(true, Ordering::Relaxed);
    for g in gcs {
        g.await.unwrap();
    }

    // Every blob of every 201 push is in place, without a reader's help...
    let files = files_under(dir.path());
    let mut not_in_place = 0;
    for p in &pushed {
        for (d, _) in &p.image.blobs {
            let h = hex(d);
            let key = format!("/blobs/sha256/{}/{h}", &h[..2]);
            if !files
                .iter()
                .any(|f| f.ends_with(&key) && !f.contains("_gc"))
            {
                not_in_place += 1;
            }
        }
    }
    // ...and pulls byte for byte.
    let mut lost = 0;
    for p in &pushed {
        let reg = &apps[0];
        let m = reg
            .get(&format!("/v2/{}/manifests/{}", p.repo, p.tag))
            .await;
        if m.status != StatusCode::OK || m.body != p.image.body.as_bytes() {
            lost += 1;
        }
        for (d, bytes) in &p.image.blobs {
            let b = reg.get(&format!("/v2/{}/blobs/{d}", p.repo)).await;
            if b.status != StatusCode::OK || b.body[..] != bytes[..] {
                lost += 1;
            }
        }
    }
    println!(
        "push-vs-GC race: {} pushes answered 201 and kept, {} deleted by the test, {} refused (MANIFEST_BLOB_UNKNOWN), {} GC passes, {} blobs quarantined, {} moved back by GC, {} deleted for good; blobs not in place: {not_in_place}; blobs lost: {lost}",
        pushed.len(),
        deleted.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed),
        passes.load(Ordering::Relaxed),
        quarantined.load(Ordering::Relaxed),
        restored.load(Ordering::Relaxed),
        reclaimed.load(Ordering::Relaxed),
    );
    assert_eq!(lost, 0);
    assert_eq!(not_in_place, 0);
    assert!(pushed.len() > 20, "too few pushes to mean anything");
    assert!(passes.load(Ordering::Relaxed) > 10);
    assert!(
        reclaimed.load(Ordering::Relaxed) > 0,
        "GC deleted nothing: the race was not exercised"
    );
}

/// A driver that fails its `n`-th write, move or delete (a GC killed there).
struct Failing {
    inner: Arc<dyn berth_registry::storage::Driver>,
    left: AtomicUsize,
}

impl Failing {
    fn tick(&self) -> std::io::Result<()> {
        if self.left.fetch_sub(1, Ordering::SeqCst) == 1 {
            return Err(std::io::Error::other("injected failure"));
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl berth_registry::storage::Driver for Failing {
    async fn get(&self, key: &str) -> std::io::Result<Option<Bytes>> {
        self.inner.get(key).await
    }
    async fn put(
        &self,
        key: &str,
        data: Bytes,
        d: berth_registry::storage::Durability,
    ) -> std::io::Result<()> {
        self.tick()?;
        self.inner.put(key, data, d).await
    }
    async fn get_versioned(
        &self,
        key: &str,
    ) -> std::io::Result<Option<(Bytes, berth_registry::storage::driver::Version)>> {
        self.inner.get_versioned(key).await
    }
    async fn put_if(
        &self,
        key: &str,
        data: Bytes,
        expected: Option<&berth_registry::storage::driver::Version>,
    ) -> std::io::Result<bool> {
        self.tick()?;
        self.inner.put_if(key, data, expected).await
    }
    async fn delete_if(
        &self,
        key: &str,
        expected: &berth_registry::storage::driver::Version,
    ) -> std::io::Result<bool> {
        self.tick()?;
        self.inner.delete_if(key, expected).await
    }
    async fn size(&self, key: &str) -> std::io::Result<Option<u64>> {
        self.inner.size(key).await
    }
    async fn stream(
        &self,
        key: &str,
        range: std::ops::Range<u64>,
    ) -> std::io::Result<Option<berth_registry::storage::ByteStream>> {
        self.inner.stream(key, range).await
    }
    async fn appender(
        &self,
        key: &str,
    ) -> std::io::Result<Box<dyn berth_registry::storage::driver::Appender>> {
        self.inner.appender(key).await
    }
    async fn commit(&self, from: &str, to: &str) -> std::io::Result<()> {
        self.tick()?;
        self.inner.commit(from, to).await
    }
    async fn list(&self, prefix: &str) -> std::io::Result<Vec<String>> {
        self.inner.list(prefix).await
    }
    async fn delete(&self, key: &str) -> std::io::Result<()> {
        self.tick()?;
        self.inner.delete(key).await
    }
    async fn modified(&self, key: &str) -> std::io::Result<Option<std::time::SystemTime>> {
        self.inner.modified(key).await
    }
}

/// A GC run killed at each of its writes, moves and deletes in turn (a
/// fresh store over the same storage each time, as a restarted process):
/// live images pull whole after every one, and a clean run then finishes
/// the work and leaves nothing behind. `storage` gives a driver over the
/// same storage each time it is called.
async fn gc_killed_at_any_step(storage: impl Fn() -> Arc<dyn berth_registry::storage::Driver>) {
    let store = Arc::new(Store::new(storage()));
    let reg = Registry {
        app: berth_registry::router(store.clone()),
        dir: tempfile::tempdir().unwrap(),
    };
    let repo = "team/crash";
    let kept = push_image(
        &reg,
        repo,
        Some("v1"),
        b"{\"c\":1}",
        &[b"kept".to_vec()],
        "",
    )
    .await;
    let signature = push_image(
        &reg,
        repo,
        None,
        b"{\"s\":1}",
        &[b"sig".to_vec()],
        &subject(&kept),
    )
    .await;
    let doomed = push_image(
        &reg,
        repo,
        Some("gone"),
        b"{\"g\":1}",
        &[b"gone".to_vec()],
        "",
    )
    .await;
    push_image(
        &reg,
        repo,
        None,
        b"{\"r\":1}",
        &[b"ref".to_vec()],
        &subject(&doomed),
    )
    .await;
    push_image(&reg, repo, None, b"{\"u\":1}", &[b"untagged".to_vec()], "").await;
    reg.push_blob(repo, b"orphan").await;
    reg.send(
        Method::DELETE,
        &format!("/v2/{repo}/manifests/gone"),
        &[],
        Bytes::new(),
    )
    .await;
    // Something already in quarantine, so deletions are interrupted too.
    store
        .gc(&opts(Duration::ZERO, Duration::from_secs(3600)))
        .await
        .unwrap();
    reg.push_blob(repo, b"orphan 2").await;

    let mut failures = 0;
    for n in 1.. {
        let failing = Store::new(Arc::new(Failing {
            inner: storage(),
            left: AtomicUsize::new(n),
        }));
        match failing.gc(&opts(Duration::ZERO, Duration::ZERO)).await {
            Ok(_) => break,
            Err(_) => failures += 1,
        }
        // Whatever step it died at, the live images pull whole.
        assert_pullable(&reg, repo, &kept).await;
        assert_pullable(&reg, repo, &signature).await;
        assert!(n < 500, "GC never completed");
    }
    assert!(failures > 5, "only {failures} injection points");
    collect(&store).await;
    let r = collect(&store).await;
    assert_eq!(r.objects_reclaimed(), 0, "left over: {:?}", r.items);
    assert_pullable(&reg, repo, &kept).await;
    assert_pullable(&reg, repo, &signature).await;
    let driver = storage();
    assert!(driver.list("_gc/trash").await.unwrap().is_empty());
    for gone in [doomed.digest.clone(), sha256(b"orphan 2")] {
        let h = hex(&gone);
        let key = format!("blobs/sha256/{}/{h}", &h[..2]);
        assert_eq!(driver.size(&key).await.unwrap(), None, "{key} left");
    }
}

#[tokio::test]
async fn a_gc_killed_at_any_step_leaves_a_store_the_next_gc_completes() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_owned();
    gc_killed_at_any_step(move || {
        Arc::new(berth_registry::storage::fs::FsDriver::new(&root).unwrap())
    })
    .await;
}

#[tokio::test]
async fn a_gc_killed_at_any_step_on_object_storage_leaves_a_store_the_next_gc_completes() {
    let bucket: Arc<dyn object_store::ObjectStore> =
        Arc::new(object_store::memory::InMemory::new());
    gc_killed_at_any_step(move || Arc::new(ObjectStoreDriver::new(bucket.clone(), "registry")))
        .await;
}

/// The same against a real S3 server (versitygw): `BERTH_TEST_S3=1` and
/// the environment of `e2e/tools/versitygw run` (skipped otherwise).
#[tokio::test]
async fn a_gc_killed_at_any_step_on_s3_leaves_a_store_the_next_gc_completes() {
    if std::env::var("BERTH_TEST_S3").ok().as_deref() != Some("1") {
        eprintln!("skipped: run under e2e/tools/versitygw run (BERTH_TEST_S3=1)");
        return;
    }
    let var = |k: &str| std::env::var(k).unwrap();
    let config = S3Config {
        bucket: var("BERTH_S3_BUCKET"),
        prefix: format!("gc-killed/{}", uuid::Uuid::new_v4().simple()),
        endpoint: Some(var("BERTH_S3_ENDPOINT")),
        region: std::env::var("BERTH_S3_REGION").ok(),
        redirect: None,
    };
    gc_killed_at_any_step(move || Arc::new(ObjectStoreDriver::s3(&config).unwrap())).await;
}

/// Sets when `repo`'s tag was last pushed, `age` ago.
fn push_time(reg: &Registry, repo: &str, tag: &str, age: Duration) {
    let path = reg
        .dir
        .path()
        .join(format!("repositories/{repo}/_manifests/tags/{tag}"));
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(std::time::SystemTime::now() - age)
        .unwrap();
}

fn in_use(images: &[(&str, Option<&str>, Option<&str>)]) -> InUse {
    serde_json::from_value(serde_json::json!({
        "images": images
            .iter()
            .map(|(r, d, t)| serde_json::json!({"repository": r, "digest": d, "tag": t}))
            .collect::<Vec<_>>()
    }))
    .unwrap()
}

fn rules(json: serde_json::Value) -> RetentionConfig {
    serde_json::from_value(serde_json::json!({ "rules": json })).unwrap()
}

/// Four builds tagged b1 (oldest) .. b4, `latest` on b1's image, each
/// image with a layer of its own.
async fn builds(reg: &Registry, repo: &str) -> Vec<Image> {
    let mut images = Vec::new();
    for i in 1..=4u64 {
        let tag = format!("b{i}");
        let image = push_image(
            reg,
            repo,
            Some(&tag),
            format!("{{\"build\":{i}}}").as_bytes(),
            &[format!("{repo} layer {i}").into_bytes()],
            "",
        )
        .await;
        push_time(reg, repo, &tag, Duration::from_secs(3600 * (10 - i)));
        images.push(image);
    }
    let r = reg.put_manifest(repo, "latest", &images[0].body).await;
    assert_eq!(r.status, StatusCode::CREATED);
    push_time(reg, repo, "latest", Duration::from_secs(3600 * 20));
    images
}

async fn tags(reg: &Registry, repo: &str) -> Vec<String> {
    let r = reg.get(&format!("/v2/{repo}/tags/list")).await;
    assert_eq!(r.status, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let mut t: Vec<String> = v["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_owned())
        .collect();
    t.sort();
    t
}

#[tokio::test]
async fn retention_removes_the_tags_it_does_not_keep_and_their_images_go_through_the_quarantine() {
    let (reg, store) = registry();
    let team = builds(&reg, "team/app").await;
    builds(&reg, "other/app").await;
    let retention = rules(serde_json::json!([
        {"repositories": "team/*", "keepLast": 2, "protect": ["latest"]}
    ]));

    // The dry run lists the tags and what would follow them; nothing changes.
    let before = reg.files();
    let dry = GcOptions {
        dry_run: true,
        retention: retention.clone(),
        ..opts(Duration::ZERO, Duration::ZERO)
    };
    let r = store.gc(&dry).await.unwrap();
    assert_eq!(reg.files(), before);
    assert_eq!(r.tags_removed, 2);
    let listed: Vec<String> = r.items.iter().map(|i| i.to_string()).collect();
    for t in ["b1", "b2"] {
        assert!(
            listed
                .iter()
                .any(|l| l == &format!("untag repositories/team/app/_manifests/tags/{t}")),
            "{t}: {listed:?}"
        );
    }
    // b2's image is reachable from no kept tag: the dry run quarantines it.
    assert!(
        listed
            .iter()
            .any(|l| l.starts_with("quarantine") && l.contains(hex(&team[1].digest))),
        "{listed:?}"
    );
    assert!(
        !listed.iter().any(|l| l.contains(hex(&team[0].digest))),
        "b1's image is still tagged latest: {listed:?}"
    );

    let o = GcOptions {
        retention,
        ..opts(Duration::ZERO, Duration::ZERO)
    };
    let first = store.gc(&o).await.unwrap();
    assert_eq!(first.tags_removed, 2);
    assert_eq!(first.manifests_quarantined, 1, "{:?}", first.items);
    let second = store.gc(&o).await.unwrap();
    assert_eq!(second.tags_removed, 0);
    assert_eq!(second.manifests_deleted, 1);
    assert_eq!(tags(&reg, "team/app").await, ["b3", "b4", "latest"]);
    assert_eq!(
        tags(&reg, "other/app").await,
        ["b1", "b2", "b3", "b4", "latest"],
        "a repository no rule matches keeps every tag"
    );
    assert_eq!(
        reg.get(&format!("/v2/team/app/manifests/{}", team[1].digest))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    for i in [0, 2, 3] {
        assert_pullable(&reg, "team/app", &team[i]).await;
    }
}

#[tokio::test]
async fn keep_pulled_within_keeps_tags_pulled_lately_however_old_and_removes_unpulled_ones() {
    let (reg, store) = registry();
    let team = builds(&reg, "team/app").await;
    // b4 was pulled two hours ago (as a replica recorded it), before the
    // window; nothing else was pulled before now.
    let pulls = reg.dir.path().join("repositories/team/app/_pulls");
    std::fs::create_dir_all(&pulls).unwrap();
    let two_hours_ago = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 7200;
    std::fs::write(
        pulls.join("last.json"),
        serde_json::json!({ team[3].digest.clone(): two_hours_ago }).to_string(),
    )
    .unwrap();
    // Now: b2 by its tag, b3's image by digest. Both were pushed hours ago.
    assert_eq!(
        reg.get("/v2/team/app/manifests/b2").await.status,
        StatusCode::OK
    );
    assert_eq!(
        reg.get(&format!("/v2/team/app/manifests/{}", team[2].digest))
            .await
            .status,
        StatusCode::OK
    );
    // The record reaches storage, where every replica's GC reads it.
    store.flush_pulls().await.unwrap();
    let retention = rules(serde_json::json!([
        {"repositories": "team/*", "keepPulledWithinSeconds": 3600}
    ]));

    let dry = GcOptions {
        dry_run: true,
        retention: retention.clone(),
        ..opts(Duration::ZERO, Duration::ZERO)
    };
    let r = store.gc(&dry).await.unwrap();
    let untagged: Vec<String> = r
        .items
        .iter()
        .filter(|i| i.action == GcAction::Untag)
        .map(|i| i.key.rsplit('/').next().unwrap().to_owned())
        .collect();
    assert_eq!(untagged, ["b4", "b1", "latest"], "{:?}", r.items);

    let o = GcOptions {
        retention,
        ..opts(Duration::ZERO, Duration::ZERO)
    };
    let first = store.gc(&o).await.unwrap();
    assert_eq!(first.tags_removed, 3);
    // b1's and latest's image, and b4's: reachable from no kept tag.
    assert_eq!(first.manifests_quarantined, 2, "{:?}", first.items);
    store.gc(&o).await.unwrap();
    assert_eq!(tags(&reg, "team/app").await, ["b2", "b3"]);
    for i in [1, 2] {
        assert_pullable(&reg, "team/app", &team[i]).await;
    }
    for i in [0, 3] {
        assert_eq!(
            reg.get(&format!("/v2/team/app/manifests/{}", team[i].digest))
                .await
                .status,
            StatusCode::NOT_FOUND
        );
    }
}

#[tokio::test]
async fn images_pods_run_are_kept_by_gc_and_retention_and_the_dry_run_says_why() {
    let (reg, store) = registry();
    let team = builds(&reg, "team/app").await;
    // Pushed by digest only, and a pod runs it.
    let running = push_image(
        &reg,
        "team/app",
        None,
        b"{\"running\":1}",
        &[b"running layer".to_vec()],
        "",
    )
    .await;
    // b2 by digest (from a pod's imageID, through another host name), b3
    // by the tag its `image:` names.
    let in_use = in_use(&[
        ("team/app", Some(&team[1].digest), None),
        ("team/app", None, Some("b3")),
        ("team/app", Some(&running.digest), None),
    ]);
    let retention = rules(serde_json::json!([{"repositories": "*", "keepLast": 1}]));

    let dry = GcOptions {
        dry_run: true,
        retention: retention.clone(),
        in_use: in_use.clone(),
        ..opts(Duration::ZERO, Duration::ZERO)
    };
    let r = store.gc(&dry).await.unwrap();
    assert_eq!(
        (r.tags_removed, r.tags_kept_in_use),
        (2, 2),
        "{:?}",
        r.items
    );
    assert_eq!(r.manifests_kept_in_use, 1);
    let listed: Vec<String> = r.items.iter().map(|i| i.to_string()).collect();
    for kept in [
        "keep (in use) repositories/team/app/_manifests/tags/b2".to_owned(),
        "keep (in use) repositories/team/app/_manifests/tags/b3".to_owned(),
        format!(
            "keep (in use) repositories/team/app/_manifests/revisions/sha256/{}",
            hex(&running.digest)
        ),
    ] {
        assert!(listed.contains(&kept), "{kept}: {listed:?}");
    }

    let o = GcOptions {
        retention: retention.clone(),
        in_use: in_use.clone(),
        ..opts(Duration::ZERO, Duration::ZERO)
    };
    store.gc(&o).await.unwrap();
    store.gc(&o).await.unwrap();
    assert_eq!(tags(&reg, "team/app").await, ["b2", "b3", "b4"]);
    for image in &team[1..4] {
        assert_pullable(&reg, "team/app", image).await;
    }
    assert_pullable(&reg, "team/app", &running).await;

    // The pod is gone: the next runs reclaim its image.
    let o = GcOptions {
        retention,
        ..opts(Duration::ZERO, Duration::ZERO)
    };
    store.gc(&o).await.unwrap();
    store.gc(&o).await.unwrap();
    assert_eq!(tags(&reg, "team/app").await, ["b4"]);
    assert_eq!(
        reg.get(&format!("/v2/team/app/manifests/{}", running.digest))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn an_image_a_pod_runs_comes_back_from_the_quarantine() {
    let (reg, store) = registry();
    let image = push_image(
        &reg,
        "team/app",
        None,
        b"{\"late\":1}",
        &[b"late layer".to_vec()],
        "",
    )
    .await;
    // Quarantined before the operator saw the pod...
    let r = store
        .gc(&opts(Duration::ZERO, Duration::from_secs(3600)))
        .await
        .unwrap();
    assert_eq!(r.manifests_quarantined, 1);
    // ...and kept, with its blobs, by the next run that does.
    let o = GcOptions {
        in_use: in_use(&[("team/app", Some(&image.digest), None)]),
        ..opts(Duration::ZERO, Duration::ZERO)
    };
    store.gc(&o).await.unwrap();
    store.gc(&o).await.unwrap();
    let files = reg.files().join("\n");
    assert!(!files.contains("_gc/trash"), "{files}");
    assert_pullable(&reg, "team/app", &image).await;
}

#[tokio::test]
async fn untagged_after_sets_the_grace_of_untagged_manifests_per_repository() {
    let (reg, store) = registry();
    let ci = push_image(&reg, "ci/app", None, b"{\"ci\":1}", &[b"ci".to_vec()], "").await;
    let team = push_image(&reg, "team/app", None, b"{\"t\":1}", &[b"t".to_vec()], "").await;
    let o = GcOptions {
        retention: rules(serde_json::json!([{"repositories": "ci/*", "untaggedAfterSeconds": 0}])),
        ..opts(Duration::from_secs(3600), Duration::ZERO)
    };
    let r = store.gc(&o).await.unwrap();
    assert_eq!(r.manifests_quarantined, 1);
    store.gc(&o).await.unwrap();
    assert_eq!(
        reg.get(&format!("/v2/ci/app/manifests/{}", ci.digest))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_pullable(&reg, "team/app", &team).await;
}

#[tokio::test]
async fn gc_inputs_are_read_from_files_and_an_unreadable_in_use_list_stops_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let retention = dir.path().join("retention.json");
    let used = dir.path().join("in-use.json");
    std::fs::write(
        &retention,
        r#"{"rules":[{"repositories":"*","keepLast":3,"protect":["v*"]}]}"#,
    )
    .unwrap();
    std::fs::write(
        &used,
        r#"{"images":[{"repository":"a/b","digest":"sha256:00"}]}"#,
    )
    .unwrap();
    let mirror = dir.path().join("mirror.json");
    std::fs::write(
        &mirror,
        r#"{"upstreams":[{"prefix":"docker.io","url":"https://registry-1.docker.io","maxAgeSeconds":60,"maxSizeBytes":1000},{"prefix":"ghcr.io","url":"https://ghcr.io"}]}"#,
    )
    .unwrap();
    let sources = GcSources {
        retention: Some(retention),
        in_use: Some(used.clone()),
        mirror: Some(mirror.clone()),
    };
    let o = sources.load(&GcOptions::default()).unwrap();
    assert_eq!(o.retention.rules[0].keep_last, Some(3));
    assert_eq!(o.in_use.images.len(), 1);
    let _: &RetentionRule = &o.retention.rules[0];
    // The mirror's caps, one per capped prefix (ghcr.io has none).
    assert_eq!(o.cache_rules.len(), 1);
    assert_eq!(o.cache_rules[0].repositories, "docker.io/*");
    assert_eq!(o.cache_size_caps.len(), 1);
    assert_eq!(o.cache_size_caps[0].repositories, "docker.io/*");
    assert_eq!(o.cache_size_caps[0].max_bytes, 1000);
    std::fs::write(&mirror, r#"{"upstreams":[{"prefix":"docker.io"}]}"#).unwrap();
    let e = sources.load(&GcOptions::default()).unwrap_err();
    assert!(e.to_string().contains("mirror.json"), "{e}");
    std::fs::remove_file(&mirror).unwrap();

    std::fs::remove_file(&used).unwrap();
    let e = sources.load(&GcOptions::default()).unwrap_err();
    assert!(e.to_string().contains("in-use.json"), "{e}");
    std::fs::write(&used, "not json").unwrap();
    assert!(sources.load(&GcOptions::default()).is_err());
}

#[tokio::test]
async fn the_last_run_is_recorded_in_storage_and_served() {
    let (reg, store) = registry();
    assert_eq!(reg.get("/berth/v1/gc").await.status, StatusCode::NOT_FOUND);
    builds(&reg, "team/app").await;
    let o = GcOptions {
        retention: rules(serde_json::json!([{"repositories": "*", "keepLast": 3}])),
        ..opts(Duration::ZERO, Duration::ZERO)
    };
    let r = store.gc(&o).await.unwrap();
    store.record_gc_run(&r.record(None)).await.unwrap();
    let got = reg.get("/berth/v1/gc").await;
    assert_eq!(got.status, StatusCode::OK);
    let run: berth_access::gc::GcRun = serde_json::from_slice(&got.body).unwrap();
    assert_eq!(run.tags_removed, 2);
    assert_eq!(run.manifests_quarantined, 1);
    assert!(run.error.is_none());
    assert!(
        run.finished.parse::<jiff::Timestamp>().is_ok(),
        "{}",
        run.finished
    );
    assert_eq!(store.last_gc_run().await.unwrap(), Some(run));
}

#[tokio::test]
async fn the_gc_record_is_served_to_any_login_and_to_the_operator_s_robot_token_only() {
    use base64::Engine as _;
    let reg = common::Secured::new(false).await;
    let anonymous = reg
        .send_as(None, Method::GET, "/berth/v1/gc", &[], Bytes::new())
        .await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    // bob may only pull team/*: any login reads the counts (no names in them).
    let bob = reg
        .send_as(Some("bob"), Method::GET, "/berth/v1/gc", &[], Bytes::new())
        .await;
    assert_eq!(bob.status, StatusCode::NOT_FOUND, "no run recorded yet");
    let store = berth_registry::filesystem_store(&reg.dir.path().join("data")).unwrap();
    store
        .record_gc_run(&GcReport::default().record(None))
        .await
        .unwrap();
    // The operator's token: a robot with no grants, signed with the registry's key.
    let private = std::fs::read(
        reg.dir
            .path()
            .join("keys")
            .join(berth_access::keys::SIGNING_KEY_FILE),
    )
    .unwrap();
    let signer = berth_access::Signer::from_pem(&private).unwrap();
    let now = jiff::Timestamp::now().as_second();
    let token = signer
        .sign(&berth_access::Claims {
            iss: "hub.test".into(),
            sub: berth_access::Claims::robot_subject("berth-operator"),
            aud: "hub.test".into(),
            exp: now + 300,
            nbf: now,
            iat: now,
            jti: "j".into(),
            access: Vec::new(),
            kind: berth_access::TokenKind::Robot,
            groups: Vec::new(),
            uid: None,
        })
        .unwrap();
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("berth-robot:{token}"))
    );
    let got = common::send(
        &reg.app,
        Some(basic),
        "192.0.2.7:40000",
        Method::GET,
        "/berth/v1/gc",
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(got.status, StatusCode::OK, "{:?}", got.body);
    let run: berth_access::gc::GcRun = serde_json::from_slice(&got.body).unwrap();
    assert_eq!(run.tags_removed, 0);
}
