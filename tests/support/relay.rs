//! A TCP relay between regproxy and the registry that can break the
//! connection on purpose, to test what clients see when the network fails.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;

/// Relays every connection to `127.0.0.1:upstream_port`, but resets the
/// client side once `cut_after` bytes of the response have passed.
pub struct CuttingRelay {
    pub port: u16,
    stop: Arc<AtomicBool>,
}

impl CuttingRelay {
    pub fn start(upstream_port: u16, cut_after: usize) -> CuttingRelay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        thread::spawn(move || {
            for client in listener.incoming() {
                if stopping.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(client) = client else { continue };
                thread::spawn(move || relay(client, upstream_port, cut_after));
            }
        });
        CuttingRelay { port, stop }
    }
}

impl Drop for CuttingRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn relay(client: TcpStream, upstream_port: u16, cut_after: usize) {
    let Ok(upstream) = TcpStream::connect(("127.0.0.1", upstream_port)) else {
        return;
    };
    let (mut client_in, mut upstream_out) =
        (client.try_clone().unwrap(), upstream.try_clone().unwrap());
    thread::spawn(move || {
        let _ = std::io::copy(&mut client_in, &mut upstream_out);
        let _ = upstream_out.shutdown(Shutdown::Write);
    });
    let (mut upstream_in, mut client_out) = (upstream, client);
    let mut passed = 0;
    let mut buffer = [0u8; 16 << 10];
    loop {
        let n = match upstream_in.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let allowed = n.min(cut_after - passed);
        if client_out.write_all(&buffer[..allowed]).is_err() {
            break;
        }
        passed += allowed;
        if passed >= cut_after {
            // A reset, not a clean close: the response simply breaks off.
            reset(&client_out);
            break;
        }
    }
}

fn reset(stream: &TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt reads the linger struct we pass, on a socket we own.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    let _ = stream.shutdown(Shutdown::Both);
}
