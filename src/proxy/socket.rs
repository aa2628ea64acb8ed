//! The client's TCP connection, with the one setting a streaming upload
//! changes on it: the receive low-water mark.
//!
//! A layer arrives in TCP segments of a few KiB, and by default the kernel
//! wakes regproxy for each small batch of them. While a large request body
//! streams in, regproxy asks the kernel (`SO_RCVLOWAT`) to wake it only once
//! [`UPLOAD_BATCH`] bytes are waiting: the same bytes in far fewer wake-ups,
//! reads and TLS calls. Near the end of the body the mark drops back to one
//! byte, so the last bytes never sit in the socket unread, and a sender too
//! slow to fill a batch within [`BATCH_PATIENCE`] has its bytes read as they
//! come, so no timeout downstream ever sees a stall that is not there.
//!
//! Only loopback clients batch, the case regproxy is built for: a raised
//! mark also caps the client's TCP window for a while, which a long link
//! would feel.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::wait::WaitClock;

/// Bytes the kernel gathers before it wakes regproxy during an upload.
pub const UPLOAD_BATCH: u32 = 256 << 10;

/// What regproxy may already have read from the socket but not yet passed
/// on: hyper's read buffer (256 KiB), one chunk in its body channel, bytes
/// read before the tunnel opened, the TLS layer's buffers; under 1 MiB. The
/// mark stays raised only while more than this and a batch are still to
/// come, so a raised mark always has a full batch on its way to wake it.
const READ_AHEAD_BOUND: u64 = 2 << 20;

/// How long one wait may hold out for a full batch before the bytes
/// already there are read anyway.
pub const BATCH_PATIENCE: Duration = Duration::from_millis(50);

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
    /// The mark the socket has now.
    applied: u32,
    /// Batching is off for this connection: a remote client, or a kernel
    /// that refused the option or made no room for a batch.
    batching_off: bool,
    /// How long a read has waited with a raised mark.
    patience: WaitClock,
}

impl ClientStream {
    pub fn new(stream: TcpStream, client: SocketAddr) -> Self {
        Self {
            stream,
            mark: LowWater::new(),
            applied: ANY_BYTE,
            batching_off: !client.ip().to_canonical().is_loopback(),
            patience: WaitClock::new(BATCH_PATIENCE),
        }
    }

    pub fn low_water(&self) -> LowWater {
        self.mark.clone()
    }

    fn apply_low_water(&mut self) {
        let wanted = if self.batching_off {
            ANY_BYTE
        } else {
            self.mark.wanted()
        };
        if wanted == self.applied {
            return;
        }
        self.applied = wanted;
        match set_receive_low_water(&self.stream, wanted) {
            Ok(()) if wanted == ANY_BYTE || room_for_batch(&self.stream) => {}
            // Old kernels set the mark without growing the buffer to hold
            // it: a batch could never gather there.
            _ => self.stop_batching(),
        }
    }

    fn stop_batching(&mut self) {
        self.batching_off = true;
        self.applied = ANY_BYTE;
        let _ = set_receive_low_water(&self.stream, ANY_BYTE);
    }

    /// Lowers the mark for this wait only; the next read raises it again
    /// if the body still wants batches. Lowering it makes the kernel signal
    /// bytes already waiting, which wakes this read.
    fn read_what_is_there(&mut self) {
        self.applied = ANY_BYTE;
        if set_receive_low_water(&self.stream, ANY_BYTE).is_err() {
            self.stop_batching();
        }
    }
}

/// Whether the kernel made room for the mark it accepted. The buffer also
/// pays for the kernel's own bookkeeping, so room for the mark is all a
/// kernel that grows the buffer promises: how much more varies with the
/// traffic.
fn room_for_batch(stream: &TcpStream) -> bool {
    let mark = socket_option(stream, libc::SO_RCVLOWAT);
    let buffer = socket_option(stream, libc::SO_RCVBUF);
    matches!((mark, buffer), (Ok(mark), Ok(buffer)) if buffer >= mark)
}

fn socket_option(stream: &TcpStream, name: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut size = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: the descriptor belongs to `stream`, which outlives the call;
    // one c_int is read into `value`, whose size is passed with it.
    let result = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            name,
            (&mut value as *mut libc::c_int).cast(),
            &mut size,
        )
    };
    if result == 0 {
        Ok(value)
    } else {
        Err(io::Error::last_os_error())
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
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.apply_low_water();
        let polled = Pin::new(&mut this.stream).poll_read(cx, buf);
        if polled.is_ready() {
            this.patience.stop();
            return polled;
        }
        if this.applied != ANY_BYTE && this.patience.run_out(cx) {
            this.read_what_is_there();
        }
        Poll::Pending
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
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

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

    /// A sender and the client connection regproxy accepted from it.
    async fn connection(client: Option<SocketAddr>) -> (TcpStream, ClientStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sender = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, peer) = listener.accept().await.unwrap();
        (sender, ClientStream::new(accepted, client.unwrap_or(peer)))
    }

    #[tokio::test]
    async fn a_batch_arrives_whole_under_a_raised_mark() {
        let (mut sender, mut client) = connection(None).await;
        let batch = UPLOAD_BATCH as usize;
        client.low_water().set(UPLOAD_BATCH);
        let upload = tokio::spawn(async move {
            sender.write_all(&vec![7u8; batch]).await.unwrap();
            sender
        });
        let mut buf = vec![0u8; batch];
        client.read_exact(&mut buf).await.unwrap();
        assert!(buf.iter().all(|&b| b == 7));
        let kernel_mark = socket_option(&client.stream, libc::SO_RCVLOWAT).unwrap();
        assert_eq!(kernel_mark as u32, client.applied, "what the socket has");
        assert!(client.batching_off || client.applied > ANY_BYTE);
        drop(upload.await.unwrap());
    }

    /// The running kernel's major and minor version.
    fn kernel_version() -> (u32, u32) {
        // SAFETY: uname fills the zeroed struct; its fields are C strings.
        let release = unsafe {
            let mut name: libc::utsname = std::mem::zeroed();
            assert_eq!(libc::uname(&mut name), 0);
            std::ffi::CStr::from_ptr(name.release.as_ptr())
                .to_string_lossy()
                .into_owned()
        };
        let mut numbers = release.split(['.', '-']).map(|n| n.parse().unwrap_or(0));
        (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0))
    }

    #[tokio::test]
    async fn batching_stays_on_once_traffic_has_flowed() {
        // Linux grows the receive buffer for a raised mark since 4.18.
        if kernel_version() < (4, 18) {
            eprintln!("skipped: kernel older than 4.18 never batches");
            return;
        }
        let (mut sender, mut client) = connection(None).await;
        let traffic = 256 << 10;
        let upload = tokio::spawn(async move {
            sender.write_all(&vec![7u8; traffic]).await.unwrap();
            sender
        });
        let mut buf = vec![0u8; traffic];
        client.read_exact(&mut buf).await.unwrap();
        let mut sender = upload.await.unwrap();
        // A little traffic first, as when an upload starts: the kernel then
        // sizes the buffer from real segments, whose bookkeeping is a smaller
        // share than it assumes at first, and grows it less for the mark.
        client.low_water().set(UPLOAD_BATCH);
        let batch = UPLOAD_BATCH as usize;
        let upload = tokio::spawn(async move {
            sender.write_all(&vec![8u8; batch]).await.unwrap();
            sender
        });
        client.read_exact(&mut buf[..batch]).await.unwrap();
        assert!(!client.batching_off, "the kernel made room for the mark");
        assert_eq!(client.applied, UPLOAD_BATCH);
        assert!(socket_option(&client.stream, libc::SO_RCVLOWAT).unwrap() > 1);
        drop(upload.await.unwrap());
    }

    #[tokio::test]
    async fn a_slow_sender_is_read_as_it_comes_under_a_raised_mark() {
        let (mut sender, mut client) = connection(None).await;
        client.low_water().set(UPLOAD_BATCH);
        let mut buf = [0u8; 5];
        for chunk in [b"layer", b"bytes"] {
            // The read waits under the raised mark before the bytes come.
            let read = tokio::time::timeout(Duration::from_secs(5), client.read_exact(&mut buf));
            let send = async {
                tokio::time::sleep(Duration::from_millis(20)).await;
                sender.write_all(chunk).await.unwrap();
            };
            let (read, ()) = tokio::join!(read, send);
            read.expect("bytes below the mark are read within its patience")
                .unwrap();
            assert_eq!(&buf, chunk);
        }
    }

    #[tokio::test]
    async fn a_remote_client_never_batches() {
        let remote = Some("192.0.2.7:40000".parse().unwrap());
        let (mut sender, mut client) = connection(remote).await;
        client.low_water().set(UPLOAD_BATCH);
        sender.write_all(b"PATCH").await.unwrap();
        let mut buf = [0u8; 5];
        client.read_exact(&mut buf).await.unwrap();
        assert_eq!(socket_option(&client.stream, libc::SO_RCVLOWAT).unwrap(), 1);
    }
}
