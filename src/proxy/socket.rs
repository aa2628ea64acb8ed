//! The client's TCP connection, with the one setting a streaming upload
//! changes on it: the receive low-water mark.
//!
//! A layer arrives in TCP segments of a few KiB, and by default the kernel
//! wakes regproxy for each small batch of them. While a large request body
//! streams in, regproxy asks the kernel (`SO_RCVLOWAT`) to wake it only once
//! [`UPLOAD_BATCH`] bytes are waiting: the same bytes in far fewer wake-ups,
//! reads and TLS calls. Near the end of the body the mark drops back to one
//! byte, so the last bytes never sit in the socket unread.
//!
//! Known shortcoming: a sender slower than one batch per body idle timeout
//! (under 1 KB/s) is given up on as stalled, since regproxy sees none of
//! its bytes until a batch has gathered.

use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Bytes the kernel gathers before it wakes regproxy during an upload.
pub const UPLOAD_BATCH: u32 = 256 << 10;

/// What regproxy may already have read from the socket but not yet passed
/// on: hyper's read buffer (at most about 400 KiB), one chunk in its body
/// channel, the TLS layer's buffers. The mark drops while more than this is
/// still to come, so the bytes the kernel gathers always include at least
/// one full batch still on its way.
const READ_AHEAD_BOUND: u64 = 2 << 20;

/// The kernel's default: wake on any byte.
const ANY_BYTE: u32 = 1;

/// The low-water mark a client connection should have. Bodies set it; the
/// connection applies it on its next read, so only the socket's owner ever
/// touches the socket.
#[derive(Debug, Clone)]
pub struct LowWater(Arc<AtomicU32>);

impl LowWater {
    fn new() -> Self {
        Self(Arc::new(AtomicU32::new(ANY_BYTE)))
    }

    fn set(&self, bytes: u32) {
        self.0.store(bytes, Ordering::Relaxed);
    }

    fn wanted(&self) -> u32 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A request body of known length, streaming in over a client connection
/// that carries nothing else meanwhile (HTTP/1.1: an HTTP/2 connection
/// multiplexes other streams, whose frames must not wait for a batch).
pub struct UploadBatching {
    mark: LowWater,
    /// Bytes of the body not yet passed on.
    remaining: u64,
}

impl UploadBatching {
    pub fn new(mark: LowWater, content_length: u64) -> Self {
        Self {
            mark,
            remaining: content_length,
        }
    }

    /// Called for every chunk passed on: batch while plenty is still to
    /// come, go back to waking on any byte for the tail.
    pub fn passed(&mut self, bytes: usize) {
        self.remaining = self.remaining.saturating_sub(bytes as u64);
        let plenty = u64::from(UPLOAD_BATCH) + READ_AHEAD_BOUND;
        self.mark.set(if self.remaining > plenty {
            UPLOAD_BATCH
        } else {
            ANY_BYTE
        });
    }
}

/// A body dropped early (the registry answered, or either side failed)
/// leaves the connection waking on any byte again.
impl Drop for UploadBatching {
    fn drop(&mut self) {
        self.mark.set(ANY_BYTE);
    }
}

/// An accepted client connection whose low-water mark follows [`LowWater`].
pub struct ClientStream {
    stream: TcpStream,
    mark: LowWater,
    applied: u32,
}

impl ClientStream {
    pub fn new(stream: TcpStream) -> Self {
        Self {
            stream,
            mark: LowWater::new(),
            applied: ANY_BYTE,
        }
    }

    pub fn low_water(&self) -> LowWater {
        self.mark.clone()
    }

    fn apply_low_water(&mut self) {
        let wanted = self.mark.wanted();
        if wanted == self.applied {
            return;
        }
        // A socket that refuses the option just wakes regproxy more often.
        if set_receive_low_water(&self.stream, wanted).is_ok() {
            self.applied = wanted;
        }
    }
}

fn set_receive_low_water(stream: &TcpStream, bytes: u32) -> io::Result<()> {
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: the descriptor belongs to `stream`, which outlives the call,
    // and the option value is a c_int whose size is passed with it.
    let result = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

impl AsyncRead for ClientStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.apply_low_water();
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receive_low_water(stream: &TcpStream) -> libc::c_int {
        let mut value: libc::c_int = 0;
        let mut size = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: reads one c_int option into `value`, whose size is given.
        let result = unsafe {
            libc::getsockopt(
                stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVLOWAT,
                (&mut value as *mut libc::c_int).cast(),
                &mut size,
            )
        };
        assert_eq!(result, 0);
        value
    }

    #[test]
    fn batching_holds_while_plenty_remains_and_ends_before_the_tail() {
        let mark = LowWater::new();
        let mut body = UploadBatching::new(mark.clone(), 64 << 20);
        body.passed(16 << 10);
        assert_eq!(mark.wanted(), UPLOAD_BATCH);
        body.passed((64 << 20) - (16 << 10) - (2 << 20));
        assert_eq!(mark.wanted(), ANY_BYTE, "2 MiB left: the tail");
    }

    #[test]
    fn a_small_body_never_batches_and_a_dropped_one_resets() {
        let mark = LowWater::new();
        let mut small = UploadBatching::new(mark.clone(), 1 << 20);
        small.passed(1024);
        assert_eq!(mark.wanted(), ANY_BYTE);
        let mut large = UploadBatching::new(mark.clone(), 1 << 30);
        large.passed(1024);
        assert_eq!(mark.wanted(), UPLOAD_BATCH);
        drop(large);
        assert_eq!(mark.wanted(), ANY_BYTE);
    }

    #[tokio::test]
    async fn the_connection_applies_the_mark_on_its_next_read() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut sender = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let mut client = ClientStream::new(listener.accept().await.unwrap().0);
        let batch = UPLOAD_BATCH as usize;
        client.low_water().set(UPLOAD_BATCH);
        let upload = tokio::spawn(async move {
            // Waits until the reader has polled, so the mark is in place.
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            sender.write_all(&vec![7u8; batch + 1]).await.unwrap();
            sender
        });
        let mut buf = vec![0u8; batch + 1];
        client.read_exact(&mut buf[..batch]).await.unwrap();
        assert_eq!(receive_low_water(&client.stream), UPLOAD_BATCH as i32);
        let _sender = upload.await.unwrap();
        // The tail: one byte is read once the mark is back to any byte.
        client.low_water().set(ANY_BYTE);
        client.read_exact(&mut buf[batch..]).await.unwrap();
        assert_eq!(receive_low_water(&client.stream), 1);
        assert!(buf.iter().all(|&b| b == 7));
    }
}
