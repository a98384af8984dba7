//! OCI error bodies for the responses hyper writes by itself.
//!
//! When a request head cannot be parsed at all (not HTTP, more than 100
//! headers, a head beyond the read buffer, a target hyper cannot hold),
//! hyper answers 400, 431 or 414 without ever calling the router, with an
//! empty body. Clients print the body of an error, so an empty one leaves a
//! user guessing. hyper offers no hook for those responses; this wrapper
//! around the connection recognises them as they are written and adds the
//! JSON body every other error has.
//!
//! A response is rewritten only if it is exactly what hyper writes for a
//! parse error: status 400, 414 or 431, and no header but `connection:
//! close`, `content-length: 0` and `date`. The router's responses always
//! carry a body and more headers, so they are never touched.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A connection whose hyper-written parse-error responses get OCI bodies.
pub struct ErrorBodies<T> {
    inner: T,
    /// A rewritten response not yet fully written, and how much of it was.
    pending: Option<(Vec<u8>, usize)>,
}

impl<T> ErrorBodies<T> {
    pub fn new(inner: T) -> Self {
        ErrorBodies {
            inner,
            pending: None,
        }
    }
}

impl<T: AsyncWrite + Unpin> ErrorBodies<T> {
    /// Writes out what is left of a rewritten response.
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((bytes, written)) = &mut self.pending {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &bytes[*written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *written += n;
            if *written == bytes.len() {
                self.pending = None;
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Takes `buf` as written if it is a parse-error response to rewrite.
    fn intercept(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Option<Poll<io::Result<usize>>> {
        let rewritten = rewrite(buf)?;
        self.pending = Some((rewritten, 0));
        // The caller's bytes count as written; the rest goes out on the
        // next write, flush or shutdown (hyper flushes after this one).
        Some(match self.drain(cx) {
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            _ => Poll::Ready(Ok(buf.len())),
        })
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ErrorBodies<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ErrorBodies<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.drain(cx))?;
        if let Some(done) = self.intercept(cx, buf) {
            return done;
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        ready!(self.drain(cx))?;
        // A parse-error response is a head alone: one non-empty slice.
        let mut nonempty = bufs.iter().filter(|b| !b.is_empty());
        if let (Some(only), None) = (nonempty.next(), nonempty.next())
            && let Some(done) = self.intercept(cx, only)
        {
            return done;
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.drain(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The response with an OCI error body, if `head` is one of hyper's own
/// parse-error responses; `None` for anything else.
fn rewrite(head: &[u8]) -> Option<Vec<u8>> {
    let (kind, message) = match head.get(..13)? {
        b"HTTP/1.1 400 " => (
            "malformed_request",
            "the request could not be parsed as HTTP/1.1 (request line, header syntax or more than 100 headers)",
        ),
        b"HTTP/1.1 414 " => (
            "uri_too_long",
            "the request target is too long; repository names, tags and query strings must be shorter",
        ),
        b"HTTP/1.1 431 " => (
            "headers_too_large",
            "the request headers are too large or too many; send fewer or shorter headers",
        ),
        _ => return None,
    };
    let text = std::str::from_utf8(head).ok()?;
    let lines = text.strip_suffix("\r\n\r\n")?;
    let mut lines = lines.split("\r\n");
    let status_line = lines.next()?;
    let (mut close, mut empty) = (false, false);
    for line in lines {
        match line {
            "connection: close" => close = true,
            "content-length: 0" => empty = true,
            _ if line.starts_with("date: ") => {}
            _ => return None,
        }
    }
    if !(close && empty) {
        return None;
    }
    crate::metrics::refusal(kind);
    let body = format!(r#"{{"errors":[{{"code":"UNSUPPORTED","message":"{message}"}}]}}"#);
    let date = text
        .split("\r\n")
        .find(|l| l.starts_with("date: "))
        .map(|l| format!("{l}\r\n"))
        .unwrap_or_default();
    Some(
        format!(
            "{status_line}\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{date}\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const HYPER_431: &[u8] = b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\ndate: Mon, 30 Nov 2026 09:44:58 GMT\r\n\r\n";

    #[test]
    fn hypers_own_error_gets_an_oci_body() {
        let out = String::from_utf8(rewrite(HYPER_431).unwrap()).unwrap();
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
        assert!(head.contains("\r\ncontent-type: application/json"));
        assert!(head.contains(&format!("\r\ncontent-length: {}", body.len())));
        assert!(head.contains("\r\ndate: Mon, 30 Nov 2026"));
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["errors"][0]["code"], "UNSUPPORTED");
    }

    #[test]
    fn the_routers_responses_are_left_alone() {
        for head in [
            // A router error: a body and more headers.
            &b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 70\r\ndate: x\r\n\r\n"[..],
            // Empty but kept alive.
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\ndate: x\r\n\r\n",
            // Another status.
            b"HTTP/1.1 404 Not Found\r\nconnection: close\r\ncontent-length: 0\r\ndate: x\r\n\r\n",
            // A head and a body in one buffer.
            b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n\r\n{}",
            b"HTTP/1.1 2",
        ] {
            assert!(rewrite(head).is_none(), "{}", String::from_utf8_lossy(head));
        }
    }
}
