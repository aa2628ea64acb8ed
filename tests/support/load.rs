//! A small load generator: many tunnels through regproxy at once, each
//! sending keep-alive requests, counting answers that are not 200.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Barrier;

pub struct Outcome {
    pub tunnels: usize,
    pub heads: u64,
    pub errors: Vec<String>,
}

/// Opens `tunnels` CONNECT tunnels to `target` through the proxy at once,
/// trusting `ca`, and sends HEAD `path` on each over keep-alive for
/// `duration` once all are open.
pub fn keep_alive_heads(
    proxy: SocketAddr,
    ca: &Path,
    target: &str,
    path: &str,
    tunnels: usize,
    duration: Duration,
) -> Outcome {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let connector = tls_connector(ca);
    runtime.block_on(async move {
        let barrier = Arc::new(Barrier::new(tunnels));
        let tasks: Vec<_> = (0..tunnels)
            .map(|_| {
                let (connector, barrier) = (connector.clone(), barrier.clone());
                let (target, path) = (target.to_owned(), path.to_owned());
                tokio::spawn(async move {
                    one_tunnel(proxy, connector, &target, &path, barrier, duration).await
                })
            })
            .collect();
        let mut outcome = Outcome {
            tunnels: 0,
            heads: 0,
            errors: Vec::new(),
        };
        for task in tasks {
            match task.await.unwrap() {
                Ok(heads) => {
                    outcome.tunnels += 1;
                    outcome.heads += heads;
                }
                Err(error) => outcome.errors.push(error),
            }
        }
        outcome
    })
}

async fn one_tunnel(
    proxy: SocketAddr,
    connector: tokio_rustls::TlsConnector,
    target: &str,
    path: &str,
    barrier: Arc<Barrier>,
    duration: Duration,
) -> Result<u64, String> {
    let opened = open_tunnel(proxy, connector, target).await;
    // Every tunnel waits for all the others, so all are open at once.
    barrier.wait().await;
    let mut sender = opened?;
    let deadline = tokio::time::Instant::now() + duration;
    let mut heads = 0;
    while tokio::time::Instant::now() < deadline {
        let request = http::Request::head(path)
            .header("host", target)
            .body(Empty::<bytes::Bytes>::new())
            .unwrap();
        sender.ready().await.map_err(|e| e.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        if response.status() != 200 {
            return Err(format!("HEAD answered {}", response.status()));
        }
        heads += 1;
    }
    Ok(heads)
}

/// A TLS client trusting only the CA certificate in `ca` (PEM).
pub fn tls_connector(ca: &Path) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(ca).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(tls))
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<bytes::Bytes>>;

async fn open_tunnel(
    proxy: SocketAddr,
    connector: tokio_rustls::TlsConnector,
    target: &str,
) -> Result<Sender, String> {
    let mut tcp = TcpStream::connect(proxy).await.map_err(|e| e.to_string())?;
    tcp.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let byte = tcp.read_u8().await.map_err(|e| e.to_string())?;
        head.push(byte);
    }
    if !head.starts_with(b"HTTP/1.1 200") {
        return Err(String::from_utf8_lossy(&head).into_owned());
    }
    let host = target
        .rsplit_once(':')
        .map_or(target, |(h, _)| h)
        .to_owned();
    let name = ServerName::try_from(host).map_err(|e| e.to_string())?;
    let tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    Ok(sender)
}
