//! Reading one large object with several ranged GETs in flight: one
//! S3 GET stream is limited by the server's and the connection's pace,
//! so a blob larger than one [`PIECE`] is read as its first piece,
//! streamed as it arrives, while up to [`IN_FLIGHT`] later pieces are
//! fetched whole alongside (each on its own connection). Pieces are
//! yielded strictly in order; an error in any piece ends the stream (the
//! client sees a cut-off response, never wrong bytes); dropping the
//! stream aborts the GETs in flight. The pieces held in memory (those in
//! flight and the one being yielded, [`Reservation::take`]) come out of
//! the shared [`super::buffer_budget`], up to half of it (uploads keep the
//! rest); past that, the caller reads with one GET. Each piece keeps the
//! HTTP body's own buffers: no copy.

use std::collections::VecDeque;
use std::io;
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{StreamExt as _, TryStreamExt as _};
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectStore};
use tokio::task::JoinHandle;

use super::buffer_budget;
use super::driver::ByteStream;

/// The bytes one ranged GET reads.
pub const PIECE: u64 = 8 << 20;

/// Pieces fetched ahead of the one being streamed.
pub const IN_FLIGHT: usize = 3;

/// Memory reserved for a read's pieces in flight, held until it ends.
pub struct Reservation(usize);

impl Reservation {
    /// The budget for one parallel read, if the shared budget has it.
    pub fn take() -> Option<Self> {
        // The pieces in flight and the one being yielded.
        let want = (IN_FLIGHT + 1) * PIECE as usize;
        (buffer_budget::reserve_spare(want) == want).then_some(Reservation(want))
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        buffer_budget::release(self.0);
    }
}

/// The GETs in flight; dropping them (the stream dropped, or ended by an
/// error) aborts them.
struct Pending(VecDeque<JoinHandle<io::Result<Vec<Bytes>>>>);

impl Drop for Pending {
    fn drop(&mut self) {
        for h in &self.0 {
            h.abort();
        }
    }
}

struct State {
    store: Arc<dyn ObjectStore>,
    path: Path,
    /// The object's entity tag when the first GET gave one: later pieces
    /// must come from the same object (`If-Match`).
    e_tag: Option<String>,
    /// The first piece's bytes as they arrive; `None` once read.
    first: Option<ByteStream>,
    /// The rest of the piece being yielded.
    ready: VecDeque<Bytes>,
    pending: Pending,
    /// Where the next piece to fetch starts, and where the read ends.
    next: u64,
    end: u64,
    failed: bool,
    _budget: Reservation,
}

impl State {
    fn top_up(&mut self) {
        while self.pending.0.len() < IN_FLIGHT && self.next < self.end {
            let range = self.next..self.end.min(self.next + PIECE);
            self.next = range.end;
            let (store, path) = (self.store.clone(), self.path.clone());
            let opts = GetOptions {
                range: Some(GetRange::Bounded(range.clone())),
                if_match: self.e_tag.clone(),
                ..GetOptions::default()
            };
            self.pending.0.push_back(tokio::spawn(async move {
                let got = store.get_opts(&path, opts).await.map_err(super::s3::io_err)?;
                // The body's own buffers, kept as they came: no copy.
                let chunks: Vec<Bytes> = got
                    .into_stream()
                    .try_collect()
                    .await
                    .map_err(super::s3::io_err)?;
                let len: usize = chunks.iter().map(Bytes::len).sum();
                // A short answer would shift every byte after it.
                if len as u64 != range.end - range.start {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "{path}: asked for bytes {range:?}, got {len} bytes; the object changed while being read"
                        ),
                    ));
                }
                Ok(chunks)
            }));
        }
    }

    async fn next_chunk(&mut self) -> Option<io::Result<Bytes>> {
        loop {
            if self.failed {
                return None;
            }
            if let Some(chunk) = self.ready.pop_front() {
                return Some(Ok(chunk));
            }
            self.top_up();
            if let Some(first) = &mut self.first {
                match first.next().await {
                    Some(got) => {
                        self.failed = got.is_err();
                        return Some(got);
                    }
                    None => self.first = None,
                }
                continue;
            }
            let head = self.pending.0.pop_front()?;
            match head.await {
                Ok(Ok(chunks)) => {
                    self.ready = chunks.into();
                    self.top_up();
                }
                Ok(Err(e)) => {
                    self.failed = true;
                    return Some(Err(e));
                }
                Err(e) => {
                    self.failed = true;
                    return Some(Err(io::Error::other(e)));
                }
            }
        }
    }
}

/// Streams `range` of the object at `path`, whose bytes
/// `range.start..first_end` are `first` (its first ranged GET, answered
/// with `e_tag`), fetching the rest a [`PIECE`] at a time.
pub fn stream(
    store: Arc<dyn ObjectStore>,
    path: Path,
    first: ByteStream,
    first_end: u64,
    e_tag: Option<String>,
    end: u64,
    budget: Reservation,
) -> ByteStream {
    let state = State {
        store,
        path,
        e_tag,
        first: Some(first),
        ready: VecDeque::new(),
        pending: Pending(VecDeque::new()),
        next: first_end,
        end,
        failed: false,
        _budget: budget,
    };
    Box::pin(futures_util::stream::unfold(state, |mut st| async move {
        let got = st.next_chunk().await?;
        Some((got, st))
    }))
}

/// The first piece of `range`: where a parallel read's first GET stops.
pub fn first_piece(range: &Range<u64>) -> Range<u64> {
    range.start..range.end.min(range.start + PIECE)
}
