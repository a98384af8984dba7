//! A plain TCP connection that turns placeholder chunks into `sendfile`.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::PoisonError;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

use super::{Regions, is_placeholder};

/// What hyper reads from and writes to for one plain connection.
pub struct Conn {
    tcp: TcpStream,
    regions: Regions,
}

impl Conn {
    /// Wraps an accepted connection; responses on it queue their file
    /// regions in the returned [`Regions`].
    pub fn new(tcp: TcpStream) -> (Conn, Regions) {
        let regions = Regions::default();
        (
            Conn {
                tcp,
                regions: regions.clone(),
            },
            regions,
        )
    }

    /// Sends (part of) the region at the head of the queue, standing for a
    /// placeholder of `len` bytes. Returns how many bytes went out.
    fn poll_sendfile(&mut self, cx: &mut Context<'_>, len: usize) -> Poll<io::Result<usize>> {
        let mut queue = self
            .regions
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let Some(region) = queue.front_mut() else {
            return Poll::Ready(Err(out_of_step("a placeholder with no file region queued")));
        };
        if region.len != len {
            return Poll::Ready(Err(out_of_step(
                "a placeholder whose length differs from its file region",
            )));
        }
        loop {
            ready!(self.tcp.poll_write_ready(cx))?;
            let sent = self.tcp.try_io(Interest::WRITABLE, || {
                rustix::fs::sendfile(
                    &self.tcp,
                    &*region.file,
                    Some(&mut region.offset),
                    region.len,
                )
                .map_err(io::Error::from)
            });
            match sent {
                Ok(0) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "blob file is shorter than its recorded size",
                    )));
                }
                Ok(n) => {
                    crate::metrics::sendfile_bytes(n as u64);
                    region.len -= n;
                    if region.len == 0 {
                        queue.pop_front();
                    }
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

fn out_of_step(what: &str) -> io::Error {
    io::Error::other(format!(
        "zero-copy body out of step: {what}; closing the connection"
    ))
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if is_placeholder(buf) {
            return this.poll_sendfile(cx, buf.len());
        }
        Pin::new(&mut this.tcp).poll_write(cx, buf)
    }

    /// Writes the ordinary slices before the first placeholder, or, when a
    /// placeholder comes first, sendfiles its region. Either way a short
    /// count: hyper calls again with the rest.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match bufs.iter().position(|b| is_placeholder(b)) {
            Some(0) => this.poll_sendfile(cx, bufs[0].len()),
            Some(i) => Pin::new(&mut this.tcp).poll_write_vectored(cx, &bufs[..i]),
            None => Pin::new(&mut this.tcp).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}
