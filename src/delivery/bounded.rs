//! A bound on what the upstream may send between two of our writes.
//!
//! lettre reads a reply with `read_line` and checks the line's length only afterwards, so an
//! upstream that never ends its greeting line would grow that line without limit. Under
//! lettre, this wrapper fails the read once more than [`MAX_UNANSWERED`] bytes arrived since
//! our last write: the attempt is deferred and the connection dropped. Replies are at most a
//! few kilobytes (a long EHLO list), so the bound costs nothing.
//!
//! With implicit TLS the wrapper sits over the TLS stream and counts plaintext. With STARTTLS
//! lettre layers TLS over this stream, so it counts ciphertext since our last write (the TLS
//! handshake's own writes reset it): still a bound, a little looser.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use lettre::transport::smtp::client::AsyncTokioStream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Most bytes accepted from the upstream between two of our writes.
pub const MAX_UNANSWERED: usize = 64 * 1024;

/// A stream whose reads fail after [`MAX_UNANSWERED`] bytes without a write of ours.
#[derive(Debug)]
pub struct Bounded<S> {
    inner: S,
    unanswered: usize,
    written: Arc<AtomicU64>,
}

impl<S> Bounded<S> {
    /// Wrap `inner`; `written` counts the bytes we write (shared, so the caller can tell
    /// whether a failure came before our first command).
    pub fn new(inner: S, written: Arc<AtomicU64>) -> Bounded<S> {
        Bounded { inner, unanswered: 0, written }
    }
}

/// The error a read gets once the bound is passed.
fn too_much() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("the upstream sent more than {MAX_UNANSWERED} bytes without a complete reply"),
    )
}

impl<S: AsyncTokioStream> AsyncTokioStream for Bounded<S> {
    fn peer_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.inner.peer_addr()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Bounded<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        if self.unanswered > MAX_UNANSWERED {
            return Poll::Ready(Err(too_much()));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            self.unanswered += buf.filled().len() - before;
            if self.unanswered > MAX_UNANSWERED {
                buf.set_filled(before);
                return Poll::Ready(Err(too_much()));
            }
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Bounded<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled
            && n > 0
        {
            self.unanswered = 0;
            self.written.fetch_add(n as u64, Ordering::Relaxed);
        }
        polled
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn reads_fail_past_the_bound_and_a_write_resets_it() {
        let (ours, mut theirs) = tokio::io::duplex(1 << 20);
        let mut bounded = Bounded::new(ours, Arc::new(AtomicU64::new(0)));
        theirs.write_all(&vec![b'x'; MAX_UNANSWERED]).await.unwrap();
        let mut got = vec![0; MAX_UNANSWERED];
        bounded.read_exact(&mut got).await.unwrap();
        bounded.write_all(b"EHLO x\r\n").await.unwrap();
        theirs.write_all(&vec![b'y'; MAX_UNANSWERED + 1]).await.unwrap();
        let mut sink = Vec::new();
        let err = bounded.read_to_end(&mut sink).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
        assert!(sink.len() <= MAX_UNANSWERED, "{}", sink.len());
    }
}
