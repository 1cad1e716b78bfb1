//! The HTTP server under `fuchun view` and the daemon's `/metrics`: axum routes on hyper's HTTP/1 connections,
//! with limits for hostile clients — a cap on the request head (431 beyond it), a deadline for reading it (slow
//! clients are dropped), one request per connection (no idle keep-alive connections), and a cap on open
//! connections (the oldest still waiting for its head is closed first), so a flood of idle connections cannot
//! use up the file descriptors and lock out health checks.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use axum::http::Request;
use axum::Router;
use hyper::body::Incoming;
use hyper::service::Service as _;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::task::{AbortHandle, JoinSet};

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The request line and headers must arrive within this time of the connection opening.
    pub header_timeout: Duration,
    /// Largest request head (request line + headers), bytes; larger ones are answered 431.
    pub max_header_bytes: usize,
    /// Connections open at once. Each holds a file descriptor, and a service under systemd has 1024: beyond this
    /// many, the oldest connection still waiting for its request head is closed to make room (a client that
    /// opens connections and sends nothing cannot lock others out); when every one is busy (event streams,
    /// responses), the new connection is closed instead.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { header_timeout: Duration::from_secs(10), max_header_bytes: 16 << 10, max_connections: 256 }
    }
}

/// An open connection (kept in the order accepted): its task, whether its request head has arrived, how to close it.
struct Open {
    task: tokio::task::Id,
    started: Arc<AtomicBool>,
    abort: AbortHandle,
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
    let max = limits.max_connections.max(1);
    let mut conns = JoinSet::new();
    // oldest first
    let mut open: VecDeque<Open> = VecDeque::new();
    let (mut shed, mut refused) = (0u64, 0u64);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            acc = listener.accept() => match acc {
                Ok((sock, _)) => {
                    if open.len() >= max {
                        match open.iter().position(|c| !c.started.load(Ordering::Relaxed)) {
                            Some(i) => {
                                let idle = open.remove(i).expect("a position of open");
                                idle.abort.abort();
                                shed += 1;
                                // a flood would log a line per connection: the first and then every 1000th
                                if shed % 1000 == 1 {
                                    tracing::warn!(max, shed, "HTTP connections at their limit: the oldest idle one closed");
                                }
                            }
                            None => {
                                drop(sock);
                                refused += 1;
                                if refused % 1000 == 1 {
                                    tracing::warn!(max, refused, "HTTP connections at their limit, all busy: a new one refused");
                                }
                                continue;
                            }
                        }
                    }
                    let started = Arc::new(AtomicBool::new(false));
                    let (flag, app) = (started.clone(), TowerToHyperService::new(app.clone()));
                    // the head has arrived once hyper calls the service
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        flag.store(true, Ordering::Relaxed);
                        app.call(req)
                    });
                    let conn = http.serve_connection(TokioIo::new(sock), service);
                    let abort = conns.spawn(async move {
                        if let Err(e) = conn.await {
                            tracing::debug!(error = %e, "http connection");
                        }
                    });
                    open.push_back(Open { task: abort.id(), started, abort });
                }
                Err(e) => {
                    // e.g. out of file descriptors: wait rather than spin
                    tracing::warn!(error = %e, "accepting an HTTP connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(done) = conns.join_next_with_id(), if !conns.is_empty() => {
                let id = match done {
                    Ok((id, ())) => id,
                    Err(e) => e.id(),
                };
                open.retain(|c| c.task != id);
            }
            _ = &mut shutdown => break,
        }
    }
    Ok(())
}
