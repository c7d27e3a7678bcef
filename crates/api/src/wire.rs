//! The connection as actix-http sees it, with one change: the answers actix-http writes itself,
//! before the application sees a request, get an OperationOutcome body.
//!
//! actix-http refuses a request it cannot parse (a URL over 64 KiB, a head over 128 KiB, more than
//! 96 headers, a NUL or other control byte in a header) with a bodyless 400 or 431 and closes the
//! connection; no middleware runs. Such a response is recognised on its way out, the only thing
//! in its write (a bare `400`/`431` head with `content-length: 0`: the application never sends
//! one, every error of its own carries an OperationOutcome), and replaced by the same status with
//! an OperationOutcome, or 414 when the connection's request line was over
//! [`crate::MAX_URI_BYTES`]. Everything else passes through untouched; the cost on the hot path
//! is a prefix comparison per write and a scan of the first line of each connection.

use crate::ApiError;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub struct OutcomeIo<T> {
    io: T,
    /// Length of the connection's first line read so far; None once it has ended.
    first_line: Option<usize>,
    long_target: bool,
    /// A replacement response still to be written, and how much of it has been.
    pending: Vec<u8>,
    written: usize,
}

impl<T> OutcomeIo<T> {
    pub fn new(io: T) -> Self {
        OutcomeIo {
            io,
            first_line: Some(0),
            long_target: false,
            pending: Vec::new(),
            written: 0,
        }
    }
}

/// The OperationOutcome response replacing actix-http's own bodyless refusal in `buf`, if it is
/// one.
fn replacement(buf: &[u8], long_target: bool) -> Option<Vec<u8>> {
    const PREFIXES: [&[u8]; 4] = [
        b"HTTP/1.1 400 ",
        b"HTTP/1.0 400 ",
        b"HTTP/1.1 431 ",
        b"HTTP/1.0 431 ",
    ];
    if !PREFIXES.iter().any(|p| buf.starts_with(p)) || !buf.ends_with(b"\r\n\r\n") {
        return None;
    }
    let head = std::str::from_utf8(buf).ok()?.to_ascii_lowercase();
    // Only a bare head with an empty body, nothing after it.
    if !head.contains("\r\ncontent-length: 0\r\n") || head.matches("\r\n\r\n").count() != 1 {
        return None;
    }
    let (status, err) = if long_target {
        (
            "414 URI Too Long",
            ApiError::UriTooLong(format!(
                "the request URL is longer than {} bytes; use POST [type]/_search for long searches",
                crate::MAX_URI_BYTES
            )),
        )
    } else if head.as_bytes()[9..12] == *b"431" {
        (
            "431 Request Header Fields Too Large",
            ApiError::HeadersTooLarge("the request head is too large to read".into()),
        )
    } else {
        (
            "400 Bad Request",
            ApiError::BadRequest(
                "the request could not be read as HTTP/1.1: a malformed request line or header, \
                 a control character (such as NUL) in a header, or too many headers"
                    .into(),
            ),
        )
    };
    let body = err.outcome().to_string();
    Some(
        format!(
            "HTTP/1.1 {status}\r\ncontent-type: {}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            crate::respond::FHIR_JSON_UTF8,
            body.len()
        )
        .into_bytes(),
    )
}

impl<T: AsyncWrite + Unpin> OutcomeIo<T> {
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.pending.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.pending[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.pending.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for OutcomeIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Some(seen) = this.first_line {
            let new = &buf.filled()[before..];
            let (len, ended) = match new.iter().position(|&b| b == b'\n') {
                Some(i) => (seen + i, true),
                None => (seen + new.len(), false),
            };
            this.long_target = len > crate::MAX_URI_BYTES;
            this.first_line = (!ended).then_some(len);
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for OutcomeIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.drain(cx))?;
        if let Some(r) = replacement(buf, this.long_target) {
            this.pending = r;
            this.written = 0;
            // The original bytes count as written; what is left of the replacement goes out on
            // the next write, flush or shutdown.
            if let Poll::Ready(Err(e)) = this.drain(cx) {
                return Poll::Ready(Err(e));
            }
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.drain(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.drain(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::replacement;

    #[test]
    fn only_actix_http_bare_refusals_are_replaced() {
        let bare = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\ndate: x\r\n\r\n";
        let r = String::from_utf8(replacement(bare, false).expect("replaced")).expect("utf8");
        assert!(r.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{r}");
        assert!(r.contains("OperationOutcome"));
        let r = String::from_utf8(replacement(bare, true).expect("replaced")).expect("utf8");
        assert!(r.starts_with("HTTP/1.1 414 "), "{r}");
        let big = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\r\n";
        let r = String::from_utf8(replacement(big, false).expect("replaced")).expect("utf8");
        assert!(r.starts_with("HTTP/1.1 431 "), "{r}");
        for kept in [
            &b"HTTP/1.1 400 Bad Request\r\ncontent-length: 12\r\n\r\n{\"a\":\"b\"}xx"[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n",
        ] {
            assert!(replacement(kept, false).is_none());
        }
    }
}
