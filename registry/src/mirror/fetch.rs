//! Blob misses: one upstream fetch per (repository, blob) at a time. Its
//! bytes go through the upload path, which verifies size and digest before
//! the blob becomes visible, while they stream to the client that asked
//! first. Requests for the same blob meanwhile wait for the commit and are
//! then served from storage like any other.
//!
//! The first client's last chunk is held back until the digest checks out:
//! on a mismatch its connection is cut short, so it never holds a whole
//! body that storage refused. It goes out as soon as the digest checks,
//! while the blob is made durable and linked: the client holds the right
//! bytes either way, and the fsyncs (tens of ms per blob on a busy disk)
//! stay off its pull. Waiters still wait for the commit.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::Method;
use tokio::sync::{mpsc, oneshot, watch};

use super::upstream::{Client, UpstreamError};
use crate::oci::{Digest, Name};
use crate::storage::{Store, UploadError};

/// Chunks buffered for a client slower than the upstream; past this the
/// fetch waits for it (the waiters wait a little longer too).
const TEE_CHUNKS: usize = 64;

/// Why a fetch did not store the blob.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("the upstream's bytes for {digest} did not verify ({reason}); nothing was stored")]
    Verify { digest: Digest, reason: String },
    #[error("the blob could not be stored: {0}")]
    Storage(String),
}

/// A fetch's progress, for those waiting on it.
#[derive(Debug, Clone)]
pub enum State {
    Running,
    Stored,
    Failed(FetchError),
}

type Key = (String, Digest);

/// The fetches in flight.
#[derive(Default, Clone)]
pub struct Flights {
    map: Arc<Mutex<HashMap<Key, watch::Receiver<State>>>>,
}

/// What a request for a blob does.
pub enum Joined {
    /// No fetch in flight: this request runs one.
    Lead(Lead),
    /// Another request's fetch: wait for it.
    Wait(watch::Receiver<State>),
}

/// The right (and duty) to run the one fetch of a key; dropped, it ends
/// the flight (as failed, if nothing better was said).
pub struct Lead {
    flights: Flights,
    key: Key,
    tx: watch::Sender<State>,
}

impl Flights {
    /// Joins the fetch of `digest` into `name`, or leads a new one.
    pub fn join(&self, name: &Name, digest: &Digest) -> Joined {
        let key = (name.as_str().to_owned(), digest.clone());
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(rx) = map.get(&key) {
            return Joined::Wait(rx.clone());
        }
        let (tx, rx) = watch::channel(State::Running);
        map.insert(key.clone(), rx);
        Joined::Lead(Lead {
            flights: self.clone(),
            key,
            tx,
        })
    }

    /// How many fetches are in flight.
    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Lead {
    /// Ends the flight: later requests find the blob in storage (or fetch
    /// again), waiters learn the outcome.
    pub fn finish(self, state: State) {
        self.flights
            .map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.key);
        self.tx.send_replace(state);
    }
}

impl Drop for Lead {
    fn drop(&mut self) {
        // Not finished (a panic, or the task was cancelled): waiters must
        // not wait forever, and the next request fetches again.
        if matches!(*self.tx.borrow(), State::Running) {
            self.flights
                .map
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&self.key);
            self.tx.send_replace(State::Failed(FetchError::Storage(
                "the fetch was abandoned".into(),
            )));
        }
    }
}

/// Waits for another request's fetch to end.
pub async fn wait(mut rx: watch::Receiver<State>) -> Result<(), FetchError> {
    let state = match rx.wait_for(|s| !matches!(s, State::Running)).await {
        Ok(s) => s.clone(),
        Err(_) => State::Failed(FetchError::Storage("the fetch was abandoned".into())),
    };
    match state {
        State::Stored => Ok(()),
        State::Failed(e) => Err(e),
        State::Running => Err(FetchError::Storage("the fetch was abandoned".into())),
    }
}

/// What the leading request serves.
pub enum Begun {
    /// The blob is in storage now (it was already there under another
    /// repository; the upstream confirmed this repository holds it).
    Stored,
    /// The bytes as they arrive; the stream ends in an error if they do
    /// not verify.
    Streaming {
        size: Option<u64>,
        body: mpsc::Receiver<std::io::Result<Bytes>>,
    },
}

/// One fetch from the upstream.
pub struct Fetch {
    pub store: Arc<Store>,
    pub client: Arc<Client>,
    /// The upstream's name for the repository.
    pub remote: String,
    /// The local (mirror) repository.
    pub name: Name,
    pub digest: Digest,
}

/// Runs the fetch (in a task of its own, so it finishes for the waiters
/// even if the leading client goes away). With `tee`, the bytes also
/// stream back; without, the caller waits for the commit.
pub async fn lead(fetch: Fetch, lead: Lead, tee: bool) -> Result<Begun, FetchError> {
    let (ready_tx, ready_rx) = oneshot::channel();
    let done = lead.tx.subscribe();
    tokio::spawn(run(fetch, lead, tee, ready_tx));
    match ready_rx.await {
        Ok(r) => r,
        // The task ended without a word: it says why to the waiters.
        Err(_) => wait(done).await.map(|()| Begun::Stored),
    }
}

async fn run(
    fetch: Fetch,
    lead: Lead,
    tee: bool,
    ready: oneshot::Sender<Result<Begun, FetchError>>,
) {
    let Fetch {
        store,
        client,
        remote,
        name,
        digest,
    } = fetch;
    let fail = |lead: Lead, ready: oneshot::Sender<_>, e: FetchError| {
        let _ = ready.send(Err(e.clone()));
        lead.finish(State::Failed(e));
    };
    let resp = match client
        .send(Method::GET, &remote, &format!("blobs/{digest}"), &[], None)
        .await
    {
        Ok(r) => r,
        Err(e) => return fail(lead, ready, e.into()),
    };
    let size = resp.content_length();
    // Already stored for another repository: the upstream just confirmed
    // this one holds it too, so a link will do.
    match store.blob_mount(&name, &digest, None).await {
        Ok(Some(_)) => {
            let _ = ready.send(Ok(Begun::Stored));
            return lead.finish(State::Stored);
        }
        Ok(None) => {}
        Err(e) => return fail(lead, ready, FetchError::Storage(e.to_string())),
    }
    let id = match store
        .upload_start_monolithic(&name, Some(digest.algorithm()))
        .await
    {
        Ok(id) => id,
        Err(e) => return fail(lead, ready, FetchError::Storage(e.to_string())),
    };
    let (tx, rx) = if tee {
        let (tx, rx) = mpsc::channel(TEE_CHUNKS);
        (Some(tx), Some(rx))
    } else {
        (None, None)
    };
    let ready = match rx {
        Some(body) => {
            let _ = ready.send(Ok(Begun::Streaming { size, body }));
            None
        }
        None => Some(ready),
    };
    // The newest chunk waits here until the next one (or the verdict).
    let held: Arc<Mutex<Option<Bytes>>> = Arc::default();
    let chunks = {
        let (tx, held, client) = (tx.clone(), held.clone(), client.clone());
        resp.bytes_stream().then(move |r| {
            let (tx, held, client) = (tx.clone(), held.clone(), client.clone());
            async move {
                match r {
                    Ok(chunk) => {
                        let previous = held
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .replace(chunk.clone());
                        if let (Some(tx), Some(p)) = (&tx, previous) {
                            // A client gone away: the fetch goes on for storage.
                            let _ = tx.send(Ok(p)).await;
                        }
                        Ok(chunk)
                    }
                    Err(e) => Err(client.transport(&e).to_string()),
                }
            }
        })
    };
    // The last chunk goes out once the digest checks, while the blob is
    // made durable and linked: the client need not wait for the fsyncs.
    let (verified_tx, verified_rx) = oneshot::channel::<()>();
    let complete = store.upload_complete_then(
        &name,
        &id,
        &digest,
        None,
        size,
        Box::pin(chunks),
        move || {
            let _ = verified_tx.send(());
        },
    );
    let release = async {
        // An error: the verification failed (or never ran); nothing to release.
        if verified_rx.await.is_ok() {
            let last = held.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let (Some(tx), Some(last)) = (&tx, last) {
                let _ = tx.send(Ok(last)).await;
            }
        }
    };
    let (result, ()) = tokio::join!(complete, release);
    let last = held.lock().unwrap_or_else(|p| p.into_inner()).take();
    match result {
        Ok(_) => {
            if let (Some(tx), Some(last)) = (&tx, last) {
                let _ = tx.send(Ok(last)).await;
            }
            if let Some(ready) = ready {
                let _ = ready.send(Ok(Begun::Stored));
            }
            lead.finish(State::Stored);
        }
        Err(e) => {
            let error = match e {
                UploadError::DigestMismatch { .. } | UploadError::SizeMismatch { .. } => {
                    FetchError::Verify {
                        digest: digest.clone(),
                        reason: e.to_string(),
                    }
                }
                UploadError::Body(reason) => FetchError::Upstream(UpstreamError::Unreachable {
                    upstream: client.url().to_owned(),
                    reason: format!("the blob's body broke off: {reason}"),
                }),
                other => FetchError::Storage(other.to_string()),
            };
            // A verification failure removed the session already.
            if let Err(e) = store.upload_cancel(&name, &id).await
                && !matches!(e, UploadError::Unknown)
            {
                tracing::warn!(error = %e, "could not remove a failed mirror fetch's upload");
            }
            tracing::warn!(repository = %name, %digest, error = %error, "mirror fetch failed");
            if let Some(tx) = &tx {
                let _ = tx.send(Err(std::io::Error::other(error.to_string()))).await;
            }
            match ready {
                Some(ready) => fail(lead, ready, error),
                None => lead.finish(State::Failed(error)),
            }
        }
    }
}
