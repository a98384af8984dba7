//! The body of a zero-copy blob response. Chunk by chunk: a placeholder
//! when the CPUs are busy and the page cache holds the bytes, else an
//! ordinary chunk read from the file.

use std::fs::File;
use std::io;
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;

use super::{CHUNK, PLACEHOLDER, Region, Regions, busy};
use crate::page_cache::Residency;
use crate::storage::ByteStream;
use crate::storage::file_chunks::{self, FileChunks};

/// Streams `range` of `file` for a response written on the connection that
/// owns `regions`. `range` must lie within the file.
///
/// The choice is made per chunk, not per response: a long download that
/// began on an idle server switches to sendfile when others arrive.
pub fn body(file: File, range: Range<u64>, regions: Regions) -> io::Result<ByteStream> {
    let file = Arc::new(file);
    let residency = if range.is_empty() {
        None
    } else {
        Some(Arc::new(Residency::new(file.clone(), range.clone())?))
    };
    let reader = FileChunks::new(file.clone());
    let chunks = futures_util::stream::try_unfold((range, reader), move |(r, mut reader)| {
        let (file, residency, regions) = (file.clone(), residency.clone(), regions.clone());
        async move {
            if r.start >= r.end {
                return Ok(None);
            }
            let len = (r.end - r.start).min(CHUNK as u64) as usize;
            if busy() && residency.is_some_and(|m| m.resident(r.start..r.start + len as u64)) {
                regions.push(Region {
                    file,
                    offset: r.start,
                    len,
                });
                let chunk = Bytes::from_static(&PLACEHOLDER[..len]);
                return Ok(Some((chunk, (r.start + len as u64..r.end, reader))));
            }
            let len = len.min(file_chunks::CHUNK);
            let chunk = reader.read(r.start, len).await?;
            Ok(Some((chunk, (r.start + len as u64..r.end, reader))))
        }
    });
    Ok(Box::pin(chunks))
}
