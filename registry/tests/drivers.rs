//! One test suite every storage driver passes, as Distribution's driver
//! suite does: the filesystem (a temporary directory), object storage in
//! memory, and S3 against a real server (versitygw) when `BERTH_TEST_S3=1`
//! and the environment names it (`eval "$(e2e/tools/versitygw start DIR)"`
//! exports BERTH_S3_ENDPOINT, BERTH_S3_BUCKET, AWS_ACCESS_KEY_ID, ...).
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use berth_registry::storage::driver::{Driver, Durability};
use berth_registry::storage::fs::FsDriver;
use berth_registry::storage::s3::{ObjectStoreDriver, S3Config};
use bytes::Bytes;
use futures_util::StreamExt as _;

const MIB: usize = 1 << 20;

struct Backend {
    driver: Arc<dyn Driver>,
    /// A second driver on the same storage, as another process has.
    twin: Arc<dyn Driver>,
    _dir: Option<tempfile::TempDir>,
}

fn fs() -> Option<Backend> {
    let dir = tempfile::tempdir().unwrap();
    Some(Backend {
        driver: Arc::new(FsDriver::new(dir.path()).unwrap()),
        twin: Arc::new(FsDriver::new(dir.path()).unwrap()),
        _dir: Some(dir),
    })
}

fn memory() -> Option<Backend> {
    let store: Arc<dyn object_store::ObjectStore> = Arc::new(object_store::memory::InMemory::new());
    Some(Backend {
        driver: Arc::new(ObjectStoreDriver::new(store.clone(), "")),
        twin: Arc::new(ObjectStoreDriver::new(store, "")),
        _dir: None,
    })
}

/// The S3 server from the environment, each test under its own prefix;
/// `None` (the test skipped) unless `BERTH_TEST_S3=1`.
fn s3_config() -> Option<S3Config> {
    if std::env::var("BERTH_TEST_S3").ok().as_deref() != Some("1") {
        eprintln!(
            "skipped: set BERTH_TEST_S3=1 and start versitygw (e2e/tools/versitygw start DIR)"
        );
        return None;
    }
    let var = |k: &str| {
        std::env::var(k).unwrap_or_else(|_| {
            panic!("BERTH_TEST_S3=1 needs {k}: eval \"$(e2e/tools/versitygw start DIR)\"")
        })
    };
    Some(S3Config {
        bucket: var("BERTH_S3_BUCKET"),
        prefix: format!("driver-suite/{}", uuid::Uuid::new_v4().simple()),
        endpoint: Some(var("BERTH_S3_ENDPOINT")),
        region: std::env::var("BERTH_S3_REGION").ok(),
        redirect: None,
    })
}

fn s3() -> Option<Backend> {
    let config = s3_config()?;
    Some(Backend {
        driver: Arc::new(ObjectStoreDriver::s3(&config).unwrap()),
        twin: Arc::new(ObjectStoreDriver::s3(&config).unwrap()),
        _dir: None,
    })
}

macro_rules! suite {
    ($backend:ident: $($test:ident),* $(,)?) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let Some(backend) = super::$backend() else { return };
                    super::$test(backend.driver.clone(), backend.twin.clone()).await;
                }
            )*
        }
    };
}

macro_rules! every_backend {
    ($($test:ident),* $(,)?) => {
        suite!(fs: $($test),*);
        suite!(memory: $($test),*);
        suite!(s3: $($test),*);
    };
}

every_backend!(
    put_then_get_returns_the_bytes,
    absent_objects_are_none,
    put_replaces_an_object,
    stream_returns_exactly_the_range,
    a_large_object_reads_back_identical_whole_and_by_ranges_across_piece_boundaries,
    a_large_object_deleted_mid_read_yields_a_prefix_of_its_bytes_or_an_error,
    list_names_direct_children_once,
    delete_removes_an_object_or_everything_under_a_prefix,
    commit_moves_an_object_and_replaces_the_target,
    commit_of_an_absent_object_is_not_found,
    appends_accumulate_across_appenders,
    an_appender_creates_an_absent_object_empty,
    abort_leaves_the_object_as_it_was,
    large_odd_sized_appends_stream_and_commit_whole,
    tiny_chunks_across_many_appenders_commit_whole,
    kept_and_copied_chunks_interleaved_land_in_order,
    an_aborted_appender_drops_kept_chunks_too,
    modified_is_the_last_write_time,
    delete_of_an_appended_object_removes_it_whole,
    appends_alternating_between_two_drivers_continue_one_object,
    a_dropped_appender_leaves_a_correct_prefix,
    conditional_writes_compare_and_swap,
    conditional_delete_removes_only_the_version_read,
    racing_conditional_writers_on_two_drivers_lose_no_update,
);

/// Deterministic bytes that differ at every offset a bug could confuse.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1] ^ seed)
        .collect()
}

async fn read(d: &Arc<dyn Driver>, key: &str, range: std::ops::Range<u64>) -> Vec<u8> {
    let mut stream = d.stream(key, range).await.unwrap().expect("object present");
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    out
}

async fn append(d: &Arc<dyn Driver>, key: &str, chunks: &[&[u8]]) {
    let mut a = d.appender(key).await.unwrap();
    for c in chunks {
        a.write(c).await.unwrap();
    }
    a.finish().await.unwrap();
}

async fn put_then_get_returns_the_bytes(d: Arc<dyn Driver>, _twin: Arc<dyn Driver>) {
    d.put("a/b/c", Bytes::from_static(b"hello"), Durability::Durable)
        .await
        .unwrap();
    assert_eq!(d.get("a/b/c").await.unwrap().unwrap(), "hello");
    assert_eq!(d.size("a/b/c").await.unwrap(), Some(5));
    d.put("a/empty", Bytes::new(), Durability::Scratch)
        .await
        .unwrap();
    assert_eq!(d.size("a/empty").await.unwrap(), Some(0));
    assert_eq!(d.get("a/empty").await.unwrap().unwrap(), "");
}

async fn absent_objects_are_none(d: Arc<dyn Driver>, _twin: Arc<dyn Driver>) {
    assert!(d.get("no/such").await.unwrap().is_none());
    assert!(d.size("no/such").await.unwrap().is_none());
    assert!(d.stream("no/such", 0..1).await.unwrap().is_none());
    assert!(d.modified("no/such").await.unwrap().is_none());
    assert!(d.list("no/such").await.unwrap().is_empty());
}

async fn put_replaces_an_object(d: Arc<dyn Driver>, _twin: Arc<dyn Driver>) {
    d.put("k", Bytes::from_static(b"old value"), Durability::Durable)
        .await
        .unwrap();
    d.put("k", Bytes::from_static(b"new"), Durability::Durable)
        .await
        .unwrap();
    assert_eq!(d.get("k").await.unwrap().unwrap(), "new");
    assert_eq!(d.size("k").await.unwrap(), Some(3));
}

async fn stream_returns_exactly_the_range(d: Arc<dyn Driver>, _twin: Arc<dyn Driver>) {
    let data = pattern(100_000, 1);
    d.put("blob", data.clone().into(), Durability::Durable)
        .await
        .unwrap();
    assert_eq!(read(&d, "blob", 0..100_000).await, data);
    assert_eq!(read(&d, "blob", 10..20).await, &data[10..20]);
    assert_eq!(read(&d, "blob", 99_999..100_000).await, &data[99_999..]);
    assert!(read(&d, "blob", 5..5).await.is_empty());
}

async fn a_large_object_reads_back_identical_whole_and_by_ranges_across_piece_boundaries(
    d: Arc<dyn Driver>,
    _twin: Arc<dyn Driver>,
) {
    // Past one S3 segment, across its boundaries.
    let piece = berth_registry::storage::s3::SEGMENT as u64;
    let total = 3 * piece + 12_345;
    let data = pattern(total as usize, 7);
    d.put("large/blob", data.clone().into(), Durability::Durable)
        .await
        .unwrap();
    for range in [
        0..total,
        0..piece,
        0..piece + 1,
        piece - 1..piece + 1,
        1..total - 1,
        piece - 3..3 * piece + 3,
        5..2 * piece + 7,
        2 * piece..total,
        3 * piece - 1..total,
    ] {
        let want = &data[range.start as usize..range.end as usize];
        let got = read(&d, "large/blob", range.clone()).await;
        assert_eq!(got.len(), want.len(), "range {range:?}");
        assert!(got == want, "range {range:?}: bytes differ");
    }
    // A read dropped half way leaves nothing behind that breaks the next.
    let mut stream = d.stream("large/blob", 0..total).await.unwrap().unwrap();
    stream.next().await.unwrap().unwrap();
    drop(stream);
    assert!(read(&d, "large/blob", 0..total).await == data);
}

async fn a_large_object_deleted_mid_read_yields_a_prefix_of_its_bytes_or_an_error(
    d: Arc<dyn Driver>,
    _twin: Arc<dyn Driver>,
) {
    let piece = berth_registry::storage::s3::SEGMENT as u64;
    let total = 4 * piece;
    let data = pattern(total as usize, 9);
    d.put("going/blob", data.clone().into(), Durability::Durable)
        .await
        .unwrap();
    let mut stream = d.stream("going/blob", 0..total).await.unwrap().unwrap();
    let mut got = stream.next().await.unwrap().unwrap().to_vec();
    d.delete("going/blob").await.unwrap();
    let mut failed = false;
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(c) => got.extend_from_slice(&c),
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    // Never wrong bytes: what came is the object's start, and all of it
    // unless the read failed (a filesystem keeps reading an open file).
    assert!(got.len() <= data.len());
    assert!(got == data[..got.len()], "bytes differ");
    assert!(
        failed || got.len() == data.len(),
        "{} bytes and no error",
        got.len()
    );
}

async fn list_names_direct_children_once(d: Arc<dyn Driver>, _twin: Arc<dyn Driver>) {
    for key in [
        "r/x/one",
        "r/x/two",
        "r/x/sub/three",
        "r/x/sub/deeper/four",
        "r/y",
    ] {
        d.put(key, Bytes::from_static(b"."), Durability::Durable)
            .await
            .unwrap();
    }
    // An object written by appends is one child too, under its own name.
    d.put("r/x/appended", Bytes::new(), Durability::Scratch)
        .await
        .unwrap();
    append(&d, "r/x/appended", &[b"abc"]).await;
    let mut names = d.list("r/x").await.unwrap();
    names.sort();
    assert_eq!(names, ["appended", "one", "sub", "two"]);
    let mut top = d.list("r").await.unwrap();
    top.sort();
    assert_eq!(top, ["x", "y"]);
}

async fn delete_removes_an_object_or_everything_under_a_prefix(
    d: Arc<dyn Driver>,
    _twin: Arc<dyn Driver>,
) {
    for key in ["p/q/a", "p/q/b/c", "p/keep"] {
        d.put(key, Bytes::from_static(b"."), Durability::Durable)
            .await
            .unwrap();
    }
    d.delete("p/keep").await.unwrap();
    assert!(d.size("p/keep").await.unwrap().is_none());
    d.delete("p/q").await.unwrap();
    assert!(d.size("p/q/a").await.unwrap().is_none());
    assert!(d.size("p/q/b/c").await.unwrap().is_none());
    assert!(d.list("p").await.unwrap().is_empty());
    // Absent is not an error.
    d.delete("p/q").await.unwrap();
    d.delete("never/was").await.unwrap();
}

async fn commit_moves_an_object_and_replaces_the_target(
    d: Arc<dyn Driver>,
    _twin: Arc<dyn Driver>,
) {
    d.put(
        "up/data",
        Bytes::from_static(b"content"),
        Durability::Scratch,
    )
    .await
    .unwrap();
    d.put("blobs/x", Bytes::from_static(b"stale"), Durability::Durable)
        .await
        .unwrap();
    d.commit("up/data", "blobs/x").await.unwrap();
    assert_eq!(d.get("blobs/x").await.unwrap().unwrap(), "content");
    assert!(d.size("up/data").await.unwrap().is_none());
}

async fn commit_of_an_absent_object_is_not_found(d: Arc<dyn Driver>, _twin: Arc<dyn Driver>) {
    let err = d.commit("up/none", "blobs/none").await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound, "{err}");
    assert!(d.size("blobs/none").await.unwrap().is_none());
}

async fn appends_accumulate_across_appenders(d: Arc<dyn Driver>, _twin: Arc<dyn Driver>) {
    d.put("s/data", Bytes::new(), Durability::Scratch)
        .await
        .unwrap();
    append(&d, "s/data", &[b"abc", b"def"]).await;
    assert_eq!(d.size("s/data").await.unwrap(), Some(6));
    let mut a = d.appender("s/data").await.unwrap();
    assert_eq!(a.offset(), 6);
    a.write(b"gh").await.unwrap();
    assert_eq!(a.offset(), 8);
    a.finish().await.unwrap();
    assert_eq!(d.get("s/data").await.unwrap().unwrap(), "abcdefgh");
    assert_eq!(read(&d, "s/data", 2..7).await, b"cdefg");
    // Appending to an object written whole keeps its bytes in front.
    d.put("s/whole", Bytes::from_static(b"123"), Durability::Scratch)
        .await
        .unwrap();
    append(&d, "s/whole", &[b"45"]).await;
    assert_eq!(d.get("s/whole").await.unwrap().unwrap(), "12345");
}

async fn an_appender_creates_an_absent_object_empty(d: Arc<dyn Driver>, _twin: Arc<dyn Driver>) {
    let a = d.appender("fresh/data").await.unwrap();
    assert_eq!(a.offset(), 0);
    a.finish().await.unwrap();
    assert_eq!(d.size("fresh/data").await.unwrap(), Some(0));
}

async fn abort_leaves_the_object_as_it_was(d: Arc<dyn Driver>, _twin: Arc<dyn Driver>) {
    d.put("ab/data", Bytes::from_static(b"xyz"), Durability::Scratch)
        .await
        .unwrap();
    let big = pattern(9 * MIB + 3, 2);
    let mut a = d.appender("ab/data").await.unwrap();
    a.write(&big).await.unwrap();
    a.abort().await.unwrap();
    assert_eq!(d.get("ab/data").await.unwrap().unwrap(), "xyz");
    // Once appended to, an abort still goes back to the last finish.
    append(&d, "ab/data", &[b"123"]).await;
    let mut a = d.appender("ab/data").await.unwrap();
    a.write(&big).await.unwrap();
    a.write(b"tail").await.unwrap();
    a.abort().await.unwrap();
    assert_eq!(d.get("ab/data").await.unwrap().unwrap(), "xyz123");
    assert_eq!(d.size("ab/data").await.unwrap(), Some(6));
    // And the next appender starts from there.
    append(&d, "ab/data", &[b"!"]).await;
    assert_eq!(d.get("ab/data").await.unwrap().unwrap(), "xyz123!");
}

async fn large_odd_sized_appends_stream_and_commit_whole(
    d: Arc<dyn Driver>,
    _twin: Arc<dyn Driver>,
) {
    d.put("big/data", Bytes::new(), Durability::Scratch)
        .await
        .unwrap();
    // Over 5 MiB (S3's part minimum) and over the 8 MiB segment, in odd
    // network-sized pieces, then two more chunks as further requests.
    let total = 13 * MIB + 12_345;
    let data = pattern(total, 3);
    let mut a = d.appender("big/data").await.unwrap();
    for piece in data[..11 * MIB + 7].chunks(MIB + 7) {
        a.write(piece).await.unwrap();
    }
    a.finish().await.unwrap();
    append(&d, "big/data", &[&data[11 * MIB + 7..12 * MIB]]).await;
    append(&d, "big/data", &[&data[12 * MIB..]]).await;
    assert_eq!(d.size("big/data").await.unwrap(), Some(total as u64));
    let seg = 8 * MIB as u64;
    for range in [
        0..10,
        seg - 5..seg + 5,
        11 * MIB as u64..total as u64,
        0..total as u64,
    ] {
        let want = &data[range.start as usize..range.end as usize];
        assert!(
            read(&d, "big/data", range.clone()).await == want,
            "range {range:?}"
        );
    }
    d.commit("big/data", "blobs/big").await.unwrap();
    assert_eq!(d.size("blobs/big").await.unwrap(), Some(total as u64));
    assert!(read(&d, "blobs/big", 0..total as u64).await == data);
    assert!(d.size("big/data").await.unwrap().is_none());
}

async fn tiny_chunks_across_many_appenders_commit_whole(
    d: Arc<dyn Driver>,
    _twin: Arc<dyn Driver>,
) {
    d.put("tiny/data", Bytes::new(), Durability::Scratch)
        .await
        .unwrap();
    let data = pattern(40 * 7 * 3, 4);
    let mut at = 0;
    for _ in 0..40 {
        let mut a = d.appender("tiny/data").await.unwrap();
        for len in [1, 2, 4] {
            a.write(&data[at..at + len]).await.unwrap();
            at += len;
            a.write(&data[at..at + len]).await.unwrap();
            at += len;
        }
        a.finish().await.unwrap();
    }
    while at < data.len() {
        append(&d, "tiny/data", &[&data[at..at + 1]]).await;
        at += 1;
    }
    assert_eq!(d.size("tiny/data").await.unwrap(), Some(data.len() as u64));
    assert_eq!(read(&d, "tiny/data", 3..300).await, &data[3..300]);
    d.commit("tiny/data", "blobs/tiny").await.unwrap();
    assert_eq!(d.get("blobs/tiny").await.unwrap().unwrap(), data);
}

/// Owned chunks (kept and written with `pwritev` when large, copied when
/// small) mixed with borrowed ones, across several buffer-fulls and
/// appenders: the object is the bytes in the order they were handed over.
async fn kept_and_copied_chunks_interleaved_land_in_order(
    d: Arc<dyn Driver>,
    _twin: Arc<dyn Driver>,
) {
    d.put("mixed/data", Bytes::new(), Durability::Scratch)
        .await
        .unwrap();
    let data = Bytes::from(pattern(5 * MIB + 12_345, 9));
    // Sizes around the keep threshold (32 KiB) and the buffer (1 MiB).
    let sizes = [
        400 << 10,
        1,
        (32 << 10) - 1,
        32 << 10,
        16 << 10,
        MIB + 3,
        700 << 10,
        300 << 10,
        7,
    ];
    let (mut at, mut i, mut appenders) = (0, 0, 0);
    while at < data.len() {
        let mut a = d.appender("mixed/data").await.unwrap();
        appenders += 1;
        for _ in 0..6 {
            let len = sizes[i % sizes.len()].min(data.len() - at);
            if i % 4 == 3 {
                a.write(&data[at..at + len]).await.unwrap();
            } else {
                a.write_bytes(data.slice(at..at + len)).await.unwrap();
            }
            at += len;
            i += 1;
            assert_eq!(a.offset(), at as u64);
            if at == data.len() {
                break;
            }
        }
        a.finish().await.unwrap();
    }
    assert!(appenders > 1);
    assert_eq!(d.size("mixed/data").await.unwrap(), Some(data.len() as u64));
    assert!(read(&d, "mixed/data", 0..data.len() as u64).await == data[..]);
    d.commit("mixed/data", "blobs/mixed").await.unwrap();
    assert!(d.get("blobs/mixed").await.unwrap().unwrap() == data);
}

/// An abort after owned chunks were handed over (some written out, some
/// still kept) leaves the object as it was before that appender.
async fn an_aborted_appender_drops_kept_chunks_too(d: Arc<dyn Driver>, _twin: Arc<dyn Driver>) {
    let first = pattern(100_000, 1);
    append(&d, "kab/data", &[&first]).await;
    let more = Bytes::from(pattern(3 * MIB, 2));
    let mut a = d.appender("kab/data").await.unwrap();
    for piece in more.chunks(400 << 10) {
        a.write_bytes(more.slice_ref(piece)).await.unwrap();
    }
    a.abort().await.unwrap();
    assert_eq!(d.size("kab/data").await.unwrap(), Some(first.len() as u64));
    assert_eq!(read(&d, "kab/data", 0..first.len() as u64).await, first);
}

async fn modified_is_the_last_write_time(d: Arc<dyn Driver>, _twin: Arc<dyn Driver>) {
    let before = std::time::SystemTime::now() - std::time::Duration::from_secs(5);
    d.put("m/data", Bytes::new(), Durability::Scratch)
        .await
        .unwrap();
    append(&d, "m/data", &[b"x"]).await;
    let t = d.modified("m/data").await.unwrap().expect("a time");
    let after = std::time::SystemTime::now() + std::time::Duration::from_secs(5);
    assert!(before <= t && t <= after, "{t:?}");
}

async fn delete_of_an_appended_object_removes_it_whole(d: Arc<dyn Driver>, _twin: Arc<dyn Driver>) {
    d.put("u/id/data", Bytes::new(), Durability::Scratch)
        .await
        .unwrap();
    append(&d, "u/id/data", &[b"abc"]).await;
    append(&d, "u/id/data", &[b"def"]).await;
    d.delete("u/id/data").await.unwrap();
    assert!(d.size("u/id/data").await.unwrap().is_none());
    d.put("u/id/data", Bytes::new(), Durability::Scratch)
        .await
        .unwrap();
    append(&d, "u/id/data", &[b"abc"]).await;
    d.delete("u/id").await.unwrap();
    assert!(d.size("u/id/data").await.unwrap().is_none());
    assert!(d.list("u").await.unwrap().is_empty());
}

async fn appends_alternating_between_two_drivers_continue_one_object(
    d: Arc<dyn Driver>,
    twin: Arc<dyn Driver>,
) {
    d.put("alt/data", Bytes::new(), Durability::Scratch)
        .await
        .unwrap();
    let data = pattern(9 * MIB + 5_000, 5);
    let cuts = [0, 1_000, 2_000, 9 * MIB + 2_000, data.len()];
    for (i, w) in cuts.windows(2).enumerate() {
        let driver = if i % 2 == 0 { &twin } else { &d };
        assert_eq!(driver.size("alt/data").await.unwrap(), Some(w[0] as u64));
        append(driver, "alt/data", &[&data[w[0]..w[1]]]).await;
    }
    assert!(read(&d, "alt/data", 0..data.len() as u64).await == data);
    twin.commit("alt/data", "blobs/alt").await.unwrap();
    assert!(read(&d, "blobs/alt", 0..data.len() as u64).await == data);
}

async fn a_dropped_appender_leaves_a_correct_prefix(d: Arc<dyn Driver>, _twin: Arc<dyn Driver>) {
    // Dropped (a request cut off, a process killed) without finish or
    // abort, what remains is some prefix of what was sent, and appends
    // continue from there.
    let data = pattern(20 * MIB, 6);
    d.put("drop/data", data[..3].to_vec().into(), Durability::Scratch)
        .await
        .unwrap();
    for end in [9 * MIB, 18 * MIB + 1] {
        let have = d.size("drop/data").await.unwrap().unwrap() as usize;
        let mut a = d.appender("drop/data").await.unwrap();
        a.write(&data[have..end]).await.unwrap();
        drop(a);
        // A write the dropped appender had in flight may still land (on a
        // blocking thread): look once the object stops growing.
        let mut size = d.size("drop/data").await.unwrap().unwrap() as usize;
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            let now = d.size("drop/data").await.unwrap().unwrap() as usize;
            if now == size {
                break;
            }
            size = now;
        }
        assert!(size >= have && size <= end, "{have} <= {size} <= {end}");
        assert!(read(&d, "drop/data", 0..size as u64).await == data[..size]);
    }
    let have = d.size("drop/data").await.unwrap().unwrap() as usize;
    append(&d, "drop/data", &[&data[have..]]).await;
    assert!(read(&d, "drop/data", 0..data.len() as u64).await == data);
}

/// `--s3-redirect`: blob GETs answered with a signed URL of the object,
/// fetched from the bucket (versitygw) without the registry.
mod s3_redirect {
    use std::io::{Read as _, Write as _};
    use std::sync::Arc;
    use std::time::Duration;

    use axum::http::{Method, StatusCode};
    use berth_registry::Store;
    use berth_registry::storage::driver::{Driver, Durability};
    use berth_registry::storage::s3::ObjectStoreDriver;

    use super::common::{Registry, sha256};

    fn driver(redirect: Option<Duration>) -> Option<ObjectStoreDriver> {
        let mut config = super::s3_config()?;
        config.redirect = redirect;
        Some(ObjectStoreDriver::s3(&config).unwrap())
    }

    /// A plain HTTP/1.1 GET of `url` (the test server speaks http), as a
    /// client that follows the redirect does: status and body.
    fn fetch(url: &str, range: Option<&str>) -> (u16, Vec<u8>) {
        let rest = url.strip_prefix("http://").expect("a plain http endpoint");
        let (host, path) = rest.split_once('/').unwrap();
        let mut conn = std::net::TcpStream::connect(host).unwrap();
        let range = range.map(|r| format!("Range: {r}\r\n")).unwrap_or_default();
        write!(
            conn,
            "GET /{path} HTTP/1.1\r\nHost: {host}\r\n{range}Connection: close\r\n\r\n"
        )
        .unwrap();
        let mut reply = Vec::new();
        conn.read_to_end(&mut reply).unwrap();
        let end = reply.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let head = String::from_utf8_lossy(&reply[..end]).to_string();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        let chunked = head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked");
        let mut body = reply[end + 4..].to_vec();
        if chunked {
            let mut out = Vec::new();
            let mut rest = &body[..];
            loop {
                let line = rest.windows(2).position(|w| w == b"\r\n").unwrap();
                let n =
                    usize::from_str_radix(std::str::from_utf8(&rest[..line]).unwrap().trim(), 16)
                        .unwrap();
                if n == 0 {
                    break;
                }
                out.extend_from_slice(&rest[line + 2..line + 2 + n]);
                rest = &rest[line + 2 + n + 2..];
            }
            body = out;
        }
        (status, body)
    }

    #[tokio::test]
    async fn a_signed_url_serves_the_object_and_its_ranges() {
        let Some(d) = driver(Some(Duration::from_secs(60))) else {
            return;
        };
        let data = super::pattern(3 * super::MIB + 5, 9);
        d.put("blobs/signed", data.clone().into(), Durability::Durable)
            .await
            .unwrap();
        let url = d.presigned_get("blobs/signed").await.unwrap().unwrap();
        let (status, body) = fetch(&url, None);
        assert_eq!(status, 200);
        assert!(body == data);
        let (status, body) = fetch(&url, Some("bytes=10-19"));
        assert_eq!(status, 206);
        assert_eq!(body, &data[10..20]);
        // Nothing to sign for an absent object (the client would get the
        // bucket's 404, not the registry's error).
        assert_eq!(d.presigned_get("blobs/absent").await.unwrap(), None);
        // Without --s3-redirect, never.
        let plain = driver(None).unwrap();
        assert_eq!(plain.presigned_get("blobs/signed").await.unwrap(), None);
    }

    #[tokio::test]
    async fn blob_gets_redirect_to_the_bucket_and_heads_do_not() {
        let Some(d) = driver(Some(Duration::from_secs(60))) else {
            return;
        };
        let r = Registry {
            app: berth_registry::router(Arc::new(Store::new(Arc::new(d)))),
            dir: tempfile::tempdir().unwrap(),
        };
        let data = super::pattern(super::MIB + 7, 4);
        let digest = r.push_blob("team/app", &data).await;
        assert_eq!(digest, sha256(&data));
        let uri = format!("/v2/team/app/blobs/{digest}");
        let head = r.send(Method::HEAD, &uri, &[], Vec::new()).await;
        assert_eq!(head.status, StatusCode::OK);
        assert_eq!(head.header("content-length"), data.len().to_string());
        let got = r.get(&uri).await;
        assert_eq!(got.status, StatusCode::TEMPORARY_REDIRECT);
        assert_eq!(got.header("docker-content-digest"), digest);
        let (status, body) = fetch(got.header("location"), None);
        assert_eq!(status, 200);
        assert!(body == data);
        // A blob not in the repository is the registry's own error, not a
        // redirect to nothing.
        let other = r.get(&format!("/v2/team/other/blobs/{digest}")).await;
        assert_eq!(other.status, StatusCode::NOT_FOUND);
    }
}

async fn conditional_writes_compare_and_swap(d: Arc<dyn Driver>, twin: Arc<dyn Driver>) {
    let key = "cas/tags/latest";
    assert!(d.get_versioned(key).await.unwrap().is_none());
    // Create-only: the first wins, the second is told it lost.
    assert!(
        d.put_if(key, Bytes::from_static(b"one"), None)
            .await
            .unwrap()
    );
    assert!(
        !twin
            .put_if(key, Bytes::from_static(b"two"), None)
            .await
            .unwrap()
    );
    let (data, v1) = d.get_versioned(key).await.unwrap().unwrap();
    assert_eq!(&data[..], b"one");
    // The twin (another process) reads the same version.
    assert_eq!(twin.get_versioned(key).await.unwrap().unwrap().1, v1);
    assert!(
        twin.put_if(key, Bytes::from_static(b"two"), Some(&v1))
            .await
            .unwrap()
    );
    // A writer still holding the old version loses, and changes nothing.
    assert!(
        !d.put_if(key, Bytes::from_static(b"three"), Some(&v1))
            .await
            .unwrap()
    );
    let (data, v2) = d.get_versioned(key).await.unwrap().unwrap();
    assert_eq!(&data[..], b"two");
    assert_ne!(v1, v2);
    assert_eq!(&d.get(key).await.unwrap().unwrap()[..], b"two");
    assert!(
        d.put_if(key, Bytes::from_static(b"three"), Some(&v2))
            .await
            .unwrap()
    );
    assert_eq!(&twin.get(key).await.unwrap().unwrap()[..], b"three");
}

async fn conditional_delete_removes_only_the_version_read(
    d: Arc<dyn Driver>,
    twin: Arc<dyn Driver>,
) {
    let key = "cas/tags/v1";
    d.put(key, Bytes::from_static(b"old"), Durability::Durable)
        .await
        .unwrap();
    let (_, old) = d.get_versioned(key).await.unwrap().unwrap();
    // Another process moves it: the removal that read the old one loses.
    let (_, seen) = twin.get_versioned(key).await.unwrap().unwrap();
    assert!(
        twin.put_if(key, Bytes::from_static(b"new"), Some(&seen))
            .await
            .unwrap()
    );
    assert!(!d.delete_if(key, &old).await.unwrap());
    assert_eq!(&d.get(key).await.unwrap().unwrap()[..], b"new");
    let (_, now) = d.get_versioned(key).await.unwrap().unwrap();
    assert!(d.delete_if(key, &now).await.unwrap());
    assert!(twin.get_versioned(key).await.unwrap().is_none());
    assert!(d.get(key).await.unwrap().is_none());
    // Gone: a create-only write succeeds again, a removal finds nothing.
    assert!(!d.delete_if(key, &now).await.unwrap());
    assert!(
        twin.put_if(key, Bytes::from_static(b"again"), None)
            .await
            .unwrap()
    );
}

/// Counters incremented by read-modify-write through two drivers (two
/// processes) at once: with compare-and-swap and retry, no increment is lost.
async fn racing_conditional_writers_on_two_drivers_lose_no_update(
    d: Arc<dyn Driver>,
    twin: Arc<dyn Driver>,
) {
    const EACH: usize = 15;
    let key = "cas/counter";
    let bump = |drv: Arc<dyn Driver>| async move {
        for _ in 0..EACH {
            loop {
                let current = drv.get_versioned(key).await.unwrap();
                let n: usize = current
                    .as_ref()
                    .map(|(b, _)| std::str::from_utf8(b).unwrap().parse().unwrap())
                    .unwrap_or(0);
                let next = Bytes::from((n + 1).to_string());
                if drv
                    .put_if(key, next, current.as_ref().map(|(_, v)| v))
                    .await
                    .unwrap()
                {
                    break;
                }
            }
        }
    };
    let tasks: Vec<_> = [d.clone(), twin.clone(), d.clone(), twin]
        .into_iter()
        .map(|drv| tokio::spawn(bump(drv)))
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let total = d.get(key).await.unwrap().unwrap();
    assert_eq!(std::str::from_utf8(&total).unwrap(), (4 * EACH).to_string());
}

/// Multipart uploads a killed commit left behind: the commit (assembling a
/// segmented object of several parts) is cut off mid-copy, leaving an
/// upload nobody completes; GC's sweep aborts it (once old enough) and
/// removes its record.
mod abandoned_multipart {
    use std::sync::Arc;
    use std::time::{Duration, SystemTime};

    use berth_registry::storage::driver::Driver;
    use berth_registry::storage::s3::{MULTIPART_RECORDS, ObjectStoreDriver};
    use object_store::multipart::MultipartStore;
    use object_store::path::Path;

    async fn abandoned_uploads_are_aborted<S>(store: Arc<S>, prefix: &str)
    where
        S: object_store::ObjectStore + MultipartStore,
    {
        let driver = ObjectStoreDriver::new(store.clone(), prefix).with_multipart(store.clone());
        let d: Arc<dyn Driver> = Arc::new(driver.clone());
        let mut cut = None;
        for attempt in 0..20 {
            let (from, to) = (format!("up/{attempt}/data"), format!("blobs/{attempt}"));
            // Two requests' worth: two segments, assembled by a multipart
            // upload (a lone segment would be copied server-side).
            let data = super::pattern(20 * super::MIB + 7, attempt as u8);
            for half in data.chunks(10 * super::MIB) {
                let mut a = d.appender(&from).await.unwrap();
                a.write(half).await.unwrap();
                a.finish().await.unwrap();
            }
            let committing = {
                let d = d.clone();
                tokio::spawn(async move { d.commit(&from, &to).await })
            };
            // Cut off (a killed process) once its upload is recorded.
            loop {
                if !d.list(MULTIPART_RECORDS).await.unwrap().is_empty() {
                    committing.abort();
                    cut = Some(attempt);
                    break;
                }
                if committing.is_finished() {
                    break;
                }
                tokio::task::yield_now().await;
            }
            if cut.is_some() {
                break;
            }
        }
        assert!(
            cut.is_some(),
            "every commit finished before it could be cut off"
        );
        let records = d.list(MULTIPART_RECORDS).await.unwrap();
        assert_eq!(records.len(), 1);
        let raw = d
            .get(&format!("{MULTIPART_RECORDS}/{}", records[0]))
            .await
            .unwrap()
            .unwrap();
        let text = String::from_utf8(raw.to_vec()).unwrap();
        let (to, id) = text.split_once('\n').unwrap();
        // Young: a commit that may still be running elsewhere is left alone.
        let hour_ago = SystemTime::now() - Duration::from_secs(3600);
        assert_eq!(d.abort_abandoned_writes(hour_ago).await.unwrap(), 0);
        let later = SystemTime::now() + Duration::from_secs(5);
        assert_eq!(d.abort_abandoned_writes(later).await.unwrap(), 1);
        assert!(d.list(MULTIPART_RECORDS).await.unwrap().is_empty());
        // The upload is gone: no part can be added to it.
        let part = store
            .put_part(
                &Path::from(to),
                &id.to_owned(),
                9,
                bytes::Bytes::from_static(b"x").into(),
            )
            .await;
        assert!(part.is_err(), "the abandoned upload is still open");
        assert_eq!(d.abort_abandoned_writes(later).await.unwrap(), 0);
    }

    /// A request's bytes stream into a multipart upload that becomes one
    /// segment when the request ends. A process killed mid-request (no
    /// drop, no finish) leaves parts nobody completes: nothing of them is
    /// visible, and GC aborts the upload through its record.
    async fn a_killed_streaming_append_is_invisible_and_aborted<S>(store: Arc<S>, prefix: &str)
    where
        S: object_store::ObjectStore + MultipartStore,
    {
        let driver = ObjectStoreDriver::new(store.clone(), prefix).with_multipart(store.clone());
        let d: Arc<dyn Driver> = Arc::new(driver);
        d.put(
            "kill/data",
            bytes::Bytes::from_static(b"abc"),
            berth_registry::storage::driver::Durability::Scratch,
        )
        .await
        .unwrap();
        let mut a = d.appender("kill/data").await.unwrap();
        a.write(&super::pattern(17 * super::MIB, 9)).await.unwrap();
        // Killed: neither Drop nor finish runs.
        std::mem::forget(a);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(d.get("kill/data").await.unwrap().unwrap(), "abc");
        assert_eq!(d.list(MULTIPART_RECORDS).await.unwrap().len(), 1);
        let hour_ago = SystemTime::now() - Duration::from_secs(3600);
        assert_eq!(d.abort_abandoned_writes(hour_ago).await.unwrap(), 0);
        let later = SystemTime::now() + Duration::from_secs(5);
        assert_eq!(d.abort_abandoned_writes(later).await.unwrap(), 1);
        assert!(d.list(MULTIPART_RECORDS).await.unwrap().is_empty());
        // The upload goes on from what was there.
        let mut a = d.appender("kill/data").await.unwrap();
        a.write(b"def").await.unwrap();
        a.finish().await.unwrap();
        assert_eq!(d.get("kill/data").await.unwrap().unwrap(), "abcdef");
    }

    /// One request of any size (here 3 parts) is one segment, committed
    /// by a server-side copy: no multipart upload is left recorded, and
    /// a dropped request's upload is aborted at once.
    async fn a_streamed_request_is_one_segment<S>(store: Arc<S>, prefix: &str)
    where
        S: object_store::ObjectStore + MultipartStore,
    {
        let driver = ObjectStoreDriver::new(store.clone(), prefix).with_multipart(store.clone());
        let d: Arc<dyn Driver> = Arc::new(driver);
        d.put(
            "one/data",
            bytes::Bytes::new(),
            berth_registry::storage::driver::Durability::Scratch,
        )
        .await
        .unwrap();
        let data = super::pattern(20 * super::MIB + 3, 7);
        let mut a = d.appender("one/data").await.unwrap();
        for piece in data.chunks(super::MIB + 1) {
            a.write(piece).await.unwrap();
        }
        a.finish().await.unwrap();
        assert!(d.list(MULTIPART_RECORDS).await.unwrap().is_empty());
        let segments = store
            .list_with_delimiter(Some(&Path::from(
                format!("{prefix}/one/.data.segments").trim_start_matches('/'),
            )))
            .await
            .unwrap();
        assert_eq!(segments.objects.len(), 1, "{:?}", segments.objects);
        assert_eq!(segments.objects[0].size, data.len() as u64);
        d.commit("one/data", "blobs/one").await.unwrap();
        assert!(super::read(&d, "blobs/one", 0..data.len() as u64).await == data);
        // Dropped mid-request: aborted, its record removed.
        d.put(
            "drop/data",
            bytes::Bytes::new(),
            berth_registry::storage::driver::Durability::Scratch,
        )
        .await
        .unwrap();
        let mut a = d.appender("drop/data").await.unwrap();
        a.write(&data).await.unwrap();
        drop(a);
        let mut waited = 0;
        while !d.list(MULTIPART_RECORDS).await.unwrap().is_empty() && waited < 100 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            waited += 1;
        }
        assert!(d.list(MULTIPART_RECORDS).await.unwrap().is_empty());
        assert_eq!(d.size("drop/data").await.unwrap(), Some(0));
    }

    /// A creator's object appears only at `finish`, whole; aborted or
    /// dropped, nothing of it stays, and no multipart upload is left open.
    async fn a_created_object_appears_only_when_finished<S>(store: Arc<S>, prefix: &str)
    where
        S: object_store::ObjectStore + MultipartStore,
    {
        let driver = ObjectStoreDriver::new(store.clone(), prefix).with_multipart(store.clone());
        let d: Arc<dyn Driver> = Arc::new(driver);
        for (key, len) in [
            ("c/small", 3 * super::MIB + 1),
            ("c/large", 19 * super::MIB + 5),
        ] {
            let data = super::pattern(len, 3);
            let mut c = d
                .creator(key)
                .await
                .unwrap()
                .expect("object storage creates directly");
            for piece in data.chunks(super::MIB - 3) {
                c.write(bytes::Bytes::copy_from_slice(piece)).await.unwrap();
            }
            assert!(
                d.size(key).await.unwrap().is_none(),
                "{key} visible before finish"
            );
            c.finish().await.unwrap();
            assert!(super::read(&d, key, 0..len as u64).await == data, "{key}");
            assert!(d.list(MULTIPART_RECORDS).await.unwrap().is_empty());
        }
        let data = super::pattern(19 * super::MIB, 4);
        let mut c = d.creator("c/aborted").await.unwrap().unwrap();
        c.write(bytes::Bytes::from(data.clone())).await.unwrap();
        c.abort().await.unwrap();
        let mut c = d.creator("c/dropped").await.unwrap().unwrap();
        c.write(bytes::Bytes::from(data)).await.unwrap();
        drop(c);
        let mut waited = 0;
        while !d.list(MULTIPART_RECORDS).await.unwrap().is_empty() && waited < 100 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            waited += 1;
        }
        assert!(d.list(MULTIPART_RECORDS).await.unwrap().is_empty());
        assert!(d.size("c/aborted").await.unwrap().is_none());
        assert!(d.size("c/dropped").await.unwrap().is_none());
        // The filesystem has nothing cheaper than an appender and a rename.
        let tmp = tempfile::tempdir().unwrap();
        let fs = berth_registry::storage::fs::FsDriver::new(tmp.path()).unwrap();
        assert!(fs.creator("x").await.unwrap().is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn creator_memory() {
        a_created_object_appears_only_when_finished(
            Arc::new(object_store::memory::InMemory::new()),
            "",
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn creator_s3() {
        let Some((store, prefix)) = s3_store() else {
            return;
        };
        a_created_object_appears_only_when_finished(Arc::new(store), &prefix).await;
    }

    fn s3_store() -> Option<(object_store::aws::AmazonS3, String)> {
        let config = super::s3_config()?;
        let store = object_store::aws::AmazonS3Builder::from_env()
            .with_bucket_name(&config.bucket)
            .with_endpoint(config.endpoint.clone().unwrap())
            .with_allow_http(true)
            .with_region(
                config
                    .region
                    .clone()
                    .unwrap_or_else(|| "us-east-1".to_owned()),
            )
            .build()
            .unwrap();
        Some((store, config.prefix))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn killed_streaming_memory() {
        a_killed_streaming_append_is_invisible_and_aborted(
            Arc::new(object_store::memory::InMemory::new()),
            "",
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn killed_streaming_s3() {
        let Some((store, prefix)) = s3_store() else {
            return;
        };
        a_killed_streaming_append_is_invisible_and_aborted(Arc::new(store), &prefix).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_segment_memory() {
        a_streamed_request_is_one_segment(Arc::new(object_store::memory::InMemory::new()), "")
            .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_segment_s3() {
        let Some((store, prefix)) = s3_store() else {
            return;
        };
        a_streamed_request_is_one_segment(Arc::new(store), &format!("{prefix}/one-segment")).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn memory() {
        abandoned_uploads_are_aborted(Arc::new(object_store::memory::InMemory::new()), "").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn s3() {
        let Some(config) = super::s3_config() else {
            return;
        };
        let store = object_store::aws::AmazonS3Builder::from_env()
            .with_bucket_name(&config.bucket)
            .with_endpoint(config.endpoint.clone().unwrap())
            .with_allow_http(true)
            .with_region(
                config
                    .region
                    .clone()
                    .unwrap_or_else(|| "us-east-1".to_owned()),
            )
            .build()
            .unwrap();
        abandoned_uploads_are_aborted(Arc::new(store), &config.prefix).await;
    }
}
