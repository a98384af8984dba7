//! How many storage calls a manifest PUT makes before its first write: on
//! object storage each is a network round trip. A driver that counts the
//! calls it is asked for (and how many are in flight at once) wraps a real
//! one (object storage in memory).
#![allow(clippy::unwrap_used)]

mod common;

use std::io;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use axum::http::StatusCode;
use berth_registry::Store;
use berth_registry::storage::driver::{Appender, ByteStream, Driver, Durability, Version};
use berth_registry::storage::gc::GcOptions;
use berth_registry::storage::s3::ObjectStoreDriver;
use bytes::Bytes;
use common::{OCI_MANIFEST, Registry};

/// Records every call (its kind) and the most calls in flight at once.
struct Counting {
    inner: Arc<dyn Driver>,
    calls: Mutex<Vec<&'static str>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

/// Counts one call while it runs.
struct Call<'a>(&'a Counting);

impl<'a> Call<'a> {
    fn start(c: &'a Counting, kind: &'static str) -> Self {
        c.calls.lock().unwrap().push(kind);
        let now = c.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        c.max_in_flight.fetch_max(now, Ordering::SeqCst);
        Call(c)
    }

    /// A call to memory finishes at its first poll; over a network it
    /// waits. Waiting once lets calls issued together overlap, as there.
    async fn wait(&self) {
        tokio::task::yield_now().await;
    }
}

impl Drop for Call<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Counting {
    fn new(inner: Arc<dyn Driver>) -> Arc<Self> {
        Arc::new(Counting {
            inner,
            calls: Mutex::default(),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
        })
    }

    fn reset(&self) {
        self.calls.lock().unwrap().clear();
        self.max_in_flight.store(0, Ordering::SeqCst);
    }

    /// Calls made before the first one that writes.
    fn before_first_write(&self) -> usize {
        let calls = self.calls.lock().unwrap();
        calls
            .iter()
            .position(|k| k.starts_with("write"))
            .unwrap_or(calls.len())
    }
}

#[async_trait]
impl Driver for Counting {
    async fn get(&self, key: &str) -> io::Result<Option<Bytes>> {
        let _c = Call::start(self, "get");
        _c.wait().await;
        self.inner.get(key).await
    }
    async fn put(&self, key: &str, data: Bytes, d: Durability) -> io::Result<()> {
        let _c = Call::start(self, "write:put");
        _c.wait().await;
        self.inner.put(key, data, d).await
    }
    async fn get_versioned(&self, key: &str) -> io::Result<Option<(Bytes, Version)>> {
        let _c = Call::start(self, "get");
        _c.wait().await;
        self.inner.get_versioned(key).await
    }
    async fn put_if(&self, key: &str, data: Bytes, expected: Option<&Version>) -> io::Result<bool> {
        let _c = Call::start(self, "write:put_if");
        _c.wait().await;
        self.inner.put_if(key, data, expected).await
    }
    async fn delete_if(&self, key: &str, expected: &Version) -> io::Result<bool> {
        let _c = Call::start(self, "write:delete_if");
        _c.wait().await;
        self.inner.delete_if(key, expected).await
    }
    async fn size(&self, key: &str) -> io::Result<Option<u64>> {
        let _c = Call::start(self, "size");
        _c.wait().await;
        self.inner.size(key).await
    }
    async fn stream(&self, key: &str, range: Range<u64>) -> io::Result<Option<ByteStream>> {
        let _c = Call::start(self, "stream");
        _c.wait().await;
        self.inner.stream(key, range).await
    }
    async fn appender(&self, key: &str) -> io::Result<Box<dyn Appender>> {
        let _c = Call::start(self, "write:appender");
        _c.wait().await;
        self.inner.appender(key).await
    }
    async fn commit(&self, from: &str, to: &str) -> io::Result<()> {
        let _c = Call::start(self, "write:commit");
        _c.wait().await;
        self.inner.commit(from, to).await
    }
    async fn list(&self, prefix: &str) -> io::Result<Vec<String>> {
        let _c = Call::start(self, "list");
        _c.wait().await;
        self.inner.list(prefix).await
    }
    async fn delete(&self, key: &str) -> io::Result<()> {
        let _c = Call::start(self, "write:delete");
        _c.wait().await;
        self.inner.delete(key).await
    }
    async fn modified(&self, key: &str) -> io::Result<Option<std::time::SystemTime>> {
        let _c = Call::start(self, "modified");
        _c.wait().await;
        self.inner.modified(key).await
    }
}

const LAYERS: usize = 10;

/// Two registries (as two replicas) over one in-memory bucket, each store
/// behind a counting driver, remembering blobs as a serving registry does.
fn replicas() -> [(Registry, Arc<Counting>, Arc<Store>); 2] {
    let bucket: Arc<dyn object_store::ObjectStore> =
        Arc::new(object_store::memory::InMemory::new());
    let one = || {
        let counting = Counting::new(Arc::new(ObjectStoreDriver::new(bucket.clone(), "")));
        let store = Arc::new(Store::new(counting.clone()));
        store.remember_blobs_for(Duration::from_secs(30));
        let reg = Registry {
            app: berth_registry::router(store.clone()),
            dir: tempfile::tempdir().unwrap(),
        };
        (reg, counting, store)
    };
    [one(), one()]
}

/// Pushes a config and [`LAYERS`] layers; returns the manifest referencing them.
async fn push_blobs(reg: &Registry, repo: &str) -> String {
    let config = reg.push_blob(repo, b"{}").await;
    let mut layers = Vec::new();
    for i in 0..LAYERS {
        let data = format!("layer {i}");
        let d = reg.push_blob(repo, data.as_bytes()).await;
        layers.push(format!(
            r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{d}","size":{}}}"#,
            data.len()
        ));
    }
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":2}},"layers":[{}]}}"#,
        layers.join(",")
    )
}

#[tokio::test]
async fn a_manifest_put_checks_blobs_this_process_just_stored_in_one_call() {
    let [(a, counting, _), _] = replicas();
    let manifest = push_blobs(&a, "team/app").await;
    counting.reset();
    assert_eq!(
        a.put_manifest("team/app", "v1", &manifest).await.status,
        StatusCode::CREATED
    );
    // The quarantine's listing, then the manifest's own bytes (size) before writing them.
    assert_eq!(
        counting.before_first_write(),
        2,
        "{:?}",
        counting.calls.lock().unwrap()
    );
}

#[tokio::test]
async fn a_manifest_put_checks_blobs_another_replica_stored_concurrently() {
    let [(a, _, _), (b, counting, _)] = replicas();
    let manifest = push_blobs(&a, "team/app").await;
    counting.reset();
    assert_eq!(
        b.put_manifest("team/app", "v1", &manifest).await.status,
        StatusCode::CREATED
    );
    // Per blob a link and a size (11 blobs), the quarantine's listing, the
    // manifest's own size: as many calls as before, but in flight together.
    assert_eq!(
        counting.before_first_write(),
        2 * (LAYERS + 1) + 2,
        "{:?}",
        counting.calls.lock().unwrap()
    );
    assert!(
        counting.max_in_flight.load(Ordering::SeqCst) >= 2 * (LAYERS + 1),
        "the checks ran one at a time: {}",
        counting.max_in_flight.load(Ordering::SeqCst)
    );
}

#[tokio::test]
async fn with_anything_in_gc_quarantine_every_reference_is_checked_again() {
    let [(a, counting, store), _] = replicas();
    // Something unreferenced, quarantined by GC: the quarantine is not empty.
    a.push_blob("team/other", b"orphan").await;
    let r = store
        .gc(&GcOptions {
            grace: Duration::ZERO,
            quarantine: Duration::from_secs(3600),
            ..GcOptions::default()
        })
        .await
        .unwrap();
    assert_eq!(r.blobs_quarantined, 1);
    let manifest = push_blobs(&a, "team/app").await;
    counting.reset();
    assert_eq!(
        a.put_manifest("team/app", "v1", &manifest).await.status,
        StatusCode::CREATED
    );
    assert_eq!(
        counting.before_first_write(),
        2 * (LAYERS + 1) + 2,
        "{:?}",
        counting.calls.lock().unwrap()
    );
}
