//! The HTTP server under `fuchun view` and the daemon's `/metrics`: axum routes on hyper's HTTP/1 connections,
//! with limits for hostile clients — a cap on the request head (431 beyond it), a deadline for reading it (slow
//! clients are dropped), and one request per connection (no idle keep-alive connections).

use std::future::Future;
use std::time::Duration;

use anyhow::Result;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The request line and headers must arrive within this time of the connection opening.
    pub header_timeout: Duration,
    /// Largest request head (request line + headers), bytes; larger ones are answered 431.
    pub max_header_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { header_timeout: Duration::from_secs(10), max_header_bytes: 16 << 10 }
    }
}

/// Serve `app` on `listener` until `shutdown` completes; open connections are then dropped.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_header_size(limits.max_header_bytes)
        // the read buffer bounds a head that is still incomplete (hyper's minimum is 8 KiB)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .keep_alive(false);
    let mut conns = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            acc = listener.accept() => match acc {
                Ok((sock, _)) => {
                    let conn = http.serve_connection(TokioIo::new(sock), TowerToHyperService::new(app.clone()));
                    conns.spawn(async move {
                        if let Err(e) = conn.await {
                            tracing::debug!(error = %e, "http connection");
                        }
                    });
                }
                Err(e) => {
                    // e.g. out of file descriptors: wait rather than spin
                    tracing::warn!(error = %e, "accepting an HTTP connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            _ = &mut shutdown => break,
        }
    }
    Ok(())
}
