#![allow(clippy::unwrap_used)]
//! What a crash or a full disk leaves, and how the registry recovers:
//! stale sessions by idle time, temporaries and orphaned one-request pushes
//! after a crash, and a full volume (a real, small tmpfs).

mod common;

use std::fs::{File, FileTimes};
use std::path::Path;
use std::time::{Duration, SystemTime};

use axum::http::{Method, StatusCode};
use bytes::Bytes;
use common::{Registry, sha256};

fn age(path: &Path, secs: u64) {
    let t = SystemTime::now() - Duration::from_secs(secs);
    File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_times(FileTimes::new().set_modified(t).set_accessed(t))
        .unwrap();
}

#[tokio::test]
async fn stale_sessions_are_purged_by_idle_time_not_start_time() {
    let dir = tempfile::tempdir().unwrap();
    let store = berth_registry::filesystem_store(dir.path()).unwrap();
    let name = "team/app".parse().unwrap();
    let id = store.upload_start(&name, None).await.unwrap();
    let session = dir
        .path()
        .join(format!("repositories/team/app/_uploads/{id}"));
    // Started long ago but written to just now: still in use.
    std::fs::write(session.join("startedat"), "1000").unwrap();
    let hour = Duration::from_secs(3600);
    assert_eq!(store.purge_stale_uploads(hour).await.unwrap(), 0);
    age(&session.join("data"), 7200);
    assert_eq!(store.purge_stale_uploads(hour).await.unwrap(), 1);
    assert!(store.upload_size(&name, &id).await.is_err());
}

#[tokio::test]
async fn crash_leftovers_are_reclaimed_and_live_data_kept() {
    let reg = Registry::new();
    let root = reg.dir.path().to_owned();
    let blob = reg.push_blob("crash/app", b"kept").await;
    let blob_dir = root.join(format!("blobs/sha256/{}", &blob[7..9]));
    let old_tmp = blob_dir.join(".tmp-0123abcd");
    std::fs::write(&old_tmp, b"partial").unwrap();
    age(&old_tmp, 600);
    let loc = reg.start_upload("crash/app").await;
    let resumable = loc.rsplit('/').next().unwrap().to_owned();
    // A one-request push whose process died: no client knows its id.
    let orphan = root.join("repositories/crash/app/_uploads/7c6f1a2e-0000-4000-8000-00000000dead");
    std::fs::create_dir_all(&orphan).unwrap();
    std::fs::write(orphan.join("startedat"), "1000 monolithic").unwrap();
    std::fs::write(orphan.join("data"), vec![0u8; 4096]).unwrap();
    age(&orphan.join("data"), 120);
    let started = SystemTime::now() - Duration::from_secs(60);
    let fresh_tmp = blob_dir.join(".tmp-fresh");
    std::fs::write(&fresh_tmp, b"in use").unwrap();

    let reg = reg.restarted();
    let store = berth_registry::filesystem_store(reg.dir.path()).unwrap();
    let (tmp, sessions) = store.reclaim_after_crash(started).await.unwrap();
    assert_eq!((tmp, sessions), (1, 1));
    assert!(!old_tmp.exists() && fresh_tmp.exists() && !orphan.exists());
    assert!(
        root.join(format!("repositories/crash/app/_uploads/{resumable}"))
            .exists()
    );
    assert_eq!(
        reg.get(&format!("/v2/crash/app/blobs/{blob}")).await.body,
        Bytes::from_static(b"kept")
    );
}

/// A tmpfs of `mib` MiB mounted on a fresh directory; `None` where mounting
/// is not allowed (the test then says so and passes).
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(mib: u32) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("cannot mount a tmpfs here (not root?): skipping the disk-full test");
            return None;
        }
        Some(Tmpfs(dir))
    }

    /// Fills the volume with one file; returns it.
    fn fill(&self) -> std::path::PathBuf {
        let path = self.0.path().join("filler");
        let mut f = File::create(&path).unwrap();
        let chunk = vec![1u8; 64 << 10];
        while std::io::Write::write_all(&mut f, &chunk).is_ok() {}
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.0.path())
            .status();
    }
}

#[tokio::test]
async fn a_full_disk_refuses_writes_clearly_rolls_back_and_recovers() {
    let Some(vol) = Tmpfs::mount(4) else { return };
    let data = vol.0.path().join("data");
    let store = berth_registry::filesystem_store(&data).unwrap();
    let reg = Registry {
        app: berth_registry::router(store.clone()),
        dir: tempfile::tempdir().unwrap(),
    };
    let loc = reg.start_upload("full/app").await;
    let first = vec![3u8; 1 << 20];
    let r = reg.send(Method::PATCH, &loc, &[], first.clone()).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert_eq!(r.header("range"), "0-1048575");

    // A chunk larger than the space left: refused with a clear error, and
    // the session keeps exactly what was acknowledged.
    let r = reg.send(Method::PATCH, &loc, &[], vec![4u8; 8 << 20]).await;
    assert_eq!(r.status, StatusCode::INSUFFICIENT_STORAGE, "{:?}", r.body);
    assert!(String::from_utf8_lossy(&r.body).contains("storage is full"));
    assert_eq!(reg.get(&loc).await.header("range"), "0-1048575");

    let filler = vol.fill();
    assert!(!store.probe_storage().await);
    assert_eq!(
        reg.get("/readyz").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let blob = vec![9u8; 256 << 10];
    let r = reg
        .send(
            Method::POST,
            &format!("/v2/full/app/blobs/uploads/?digest={}", sha256(&blob)),
            &[],
            blob.clone(),
        )
        .await;
    assert_eq!(r.status, StatusCode::INSUFFICIENT_STORAGE);

    std::fs::remove_file(filler).unwrap();
    assert!(store.probe_storage().await);
    assert_eq!(reg.get("/readyz").await.status, StatusCode::OK);
    let rest = vec![5u8; 1000];
    let mut whole = first;
    whole.extend_from_slice(&rest);
    let r = reg
        .send(
            Method::PUT,
            &format!("{loc}?digest={}", sha256(&whole)),
            &[],
            rest,
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(
        reg.get(&format!("/v2/full/app/blobs/{}", sha256(&whole)))
            .await
            .body
            .len(),
        whole.len()
    );
    let _ = Bytes::new();
}
