//! The body of a zero-copy blob response: placeholders for what the page
//! cache holds, ordinary chunks read on a blocking thread for the rest.

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt as _;
use std::sync::Arc;

use bytes::Bytes;

use super::{CHUNK, COLD_CHUNK, PLACEHOLDER, Region, Regions};
use crate::page_cache::Residency;
use crate::storage::ByteStream;

/// Streams `range` of `file` for a response written on the connection that
/// owns `regions`. `range` must lie within the file.
pub fn body(file: File, range: Range<u64>, regions: Regions) -> io::Result<ByteStream> {
    let file = Arc::new(file);
    let residency = if range.is_empty() {
        None
    } else {
        Some(Arc::new(Residency::new(&file, range.clone())?))
    };
    let chunks = futures_util::stream::try_unfold(range, move |r| {
        let (file, residency, regions) = (file.clone(), residency.clone(), regions.clone());
        async move {
            if r.start >= r.end {
                return Ok(None);
            }
            let len = (r.end - r.start).min(CHUNK as u64) as usize;
            if residency.is_some_and(|m| m.resident(r.start..r.start + len as u64)) {
                regions.push(Region {
                    file,
                    offset: r.start,
                    len,
                });
                return Ok(Some((
                    Bytes::from_static(&PLACEHOLDER[..len]),
                    r.start + len as u64..r.end,
                )));
            }
            let len = len.min(COLD_CHUNK);
            let here = r.start..r.start + len as u64;
            let rest = here.end..r.end;
            let chunk = tokio::task::spawn_blocking(move || {
                let mut buf = vec![0; len];
                file.read_exact_at(&mut buf, here.start)?;
                Ok::<_, io::Error>(Bytes::from(buf))
            })
            .await
            .map_err(io::Error::other)??;
            Ok(Some((chunk, rest)))
        }
    });
    Ok(Box::pin(chunks))
}
