//! `fuchun view`: a small local HTTP server for kiosks. It follows `<prefix>/<camera>/stylized` over MQTT and
//! serves a full-screen page per camera that swaps in each new result as it arrives (Server-Sent Events).
//!
//! Routes: `/` (camera list, or the page of `--camera`), `/camera/<name>` (the kiosk page),
//! `/frame/<name>.jpg` (latest result), `/events/<name>` (SSE: one event per new result), `/healthz`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;

use super::config::{valid_name, Config};
use super::mqtt::{self, Event};

#[derive(Debug, Clone, clap::Args)]
pub struct ViewArgs {
    /// Daemon configuration (broker and topic prefix).
    #[arg(long, short = 'c', default_value = "/etc/fuchun/fuchun.toml", env = "FUCHUN_CONFIG")]
    pub config: PathBuf,
    /// Address to serve on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Camera shown at `/` (default: a list of cameras).
    #[arg(long)]
    pub camera: Option<String>,
}

#[derive(Default)]
struct Latest {
    frames: HashMap<String, (u64, Bytes)>,
}

struct State {
    latest: Mutex<Latest>,
    updates: broadcast::Sender<(String, u64)>,
    default_camera: Option<String>,
}

pub fn run(args: &ViewArgs) -> Result<()> {
    let cfg = Config::load(&args.config)?;
    if let Some(c) = &args.camera {
        if !valid_name(c) {
            anyhow::bail!("--camera {c:?} must be letters, digits, '_' or '-'");
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(serve(cfg, args.listen, args.camera.clone()))
}

async fn serve(cfg: Config, listen: SocketAddr, camera: Option<String>) -> Result<()> {
    let (tx, _) = broadcast::channel(64);
    let state = Arc::new(State { latest: Mutex::new(Latest::default()), updates: tx, default_camera: camera });
    let listener = TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    tracing::info!(%listen, "kiosk view listening");
    let id = format!("{}-view-{}", cfg.mqtt.client_id, std::process::id());
    let (client, mut events) =
        mqtt::connect(&cfg.mqtt, &id, &format!("{}/view/{}/will", cfg.mqtt.prefix, std::process::id()), 64 << 20)?;
    let filter = format!("{}/+/stylized", cfg.mqtt.prefix);
    let prefix = cfg.mqtt.prefix.clone();
    let st = state.clone();
    tokio::spawn(async move {
        let mut version = 0u64;
        loop {
            match events.poll().await {
                Ok(Event::Connected { .. }) => {
                    let _ = client.subscribe(&filter, 0).await;
                }
                Ok(Event::Message(m)) => {
                    let cam = m
                        .topic
                        .strip_prefix(&prefix)
                        .and_then(|r| r.strip_prefix('/'))
                        .and_then(|r| r.strip_suffix("/stylized"));
                    if let Some(cam) = cam.filter(|c| valid_name(c)) {
                        if m.payload.is_empty() {
                            continue;
                        }
                        version += 1;
                        st.latest.lock().unwrap().frames.insert(cam.to_string(), (version, m.payload));
                        let _ = st.updates.send((cam.to_string(), version));
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "broker connection lost");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    });
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            acc = listener.accept() => {
                let (sock, _) = acc?;
                let st = state.clone();
                tokio::spawn(async move {
                    if let Err(e) = handle(sock, st).await {
                        tracing::debug!(error = %e, "http connection");
                    }
                });
            }
            _ = sigterm.recv() => return Ok(()),
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

async fn respond(sock: &mut TcpStream, status: &str, ctype: &str, body: &[u8]) -> Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    );
    sock.write_all(head.as_bytes()).await?;
    sock.write_all(body).await?;
    Ok(())
}

/// The kiosk page. The latest frame, if any, is in the HTML itself (so the page's load event includes it); each
/// new one is swapped in when its event arrives.
fn page(camera: &str, current: Option<u64>) -> String {
    let (src, wait) = match current {
        Some(v) => (format!("/frame/{camera}.jpg?v={v}"), "none"),
        None => (String::new(), "block"),
    };
    format!(
        r#"<!doctype html>
<html><head><meta charset="utf-8"><title>fuchun · {camera}</title>
<style>html,body{{margin:0;height:100%;background:#000}}img{{width:100vw;height:100vh;object-fit:contain;display:block}}
#wait{{color:#bbb;font:24px sans-serif;position:fixed;top:45%;width:100%;text-align:center;display:{wait}}}</style></head>
<body><div id="wait">waiting for {camera}…</div><img id="frame" alt="" src="{src}">
<script>
const img = document.getElementById('frame'), wait = document.getElementById('wait');
function show(v) {{ const next = new Image(); next.onload = () => {{ img.src = next.src; wait.style.display = 'none'; }};
  next.src = '/frame/{camera}.jpg?v=' + v; }}
const es = new EventSource('/events/{camera}');
es.onmessage = (e) => show(e.data);
</script></body></html>"#
    )
}

async fn handle(mut sock: TcpStream, st: Arc<State>) -> Result<()> {
    let mut buf = vec![0u8; 8192];
    let mut n = 0;
    loop {
        let r = tokio::time::timeout(Duration::from_secs(10), sock.read(&mut buf[n..])).await??;
        if r == 0 {
            return Ok(());
        }
        n += r;
        if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") || n == buf.len() {
            break;
        }
    }
    let req = String::from_utf8_lossy(&buf[..n]);
    let mut parts = req.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or("/"));
    let path = target.split('?').next().unwrap_or("/");
    if method != "GET" {
        return respond(&mut sock, "405 Method Not Allowed", "text/plain", b"GET only\n").await;
    }
    if path == "/healthz" {
        return respond(&mut sock, "200 OK", "text/plain", b"ok\n").await;
    }
    if path == "/" {
        if let Some(c) = &st.default_camera {
            let current = st.latest.lock().unwrap().frames.get(c).map(|f| f.0);
            return respond(&mut sock, "200 OK", "text/html; charset=utf-8", page(c, current).as_bytes()).await;
        }
        let mut cams: Vec<String> = st.latest.lock().unwrap().frames.keys().cloned().collect();
        cams.sort();
        let items: String = cams.iter().map(|c| format!("<li><a href=\"/camera/{c}\">{c}</a></li>")).collect();
        let body = format!("<!doctype html><html><body><h1>fuchun cameras</h1><ul>{items}</ul></body></html>");
        return respond(&mut sock, "200 OK", "text/html; charset=utf-8", body.as_bytes()).await;
    }
    if let Some(cam) = path.strip_prefix("/camera/").filter(|c| valid_name(c)) {
        let current = st.latest.lock().unwrap().frames.get(cam).map(|f| f.0);
        return respond(&mut sock, "200 OK", "text/html; charset=utf-8", page(cam, current).as_bytes()).await;
    }
    if let Some(cam) = path.strip_prefix("/frame/").and_then(|p| p.strip_suffix(".jpg")).filter(|c| valid_name(c)) {
        let frame = st.latest.lock().unwrap().frames.get(cam).map(|f| f.1.clone());
        return match frame {
            Some(b) => respond(&mut sock, "200 OK", "image/jpeg", &b).await,
            None => {
                respond(&mut sock, "404 Not Found", "text/plain", format!("no result for {cam} yet\n").as_bytes()).await
            }
        };
    }
    if let Some(cam) = path.strip_prefix("/events/").filter(|c| valid_name(c)) {
        let mut rx = st.updates.subscribe();
        sock.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\nConnection: keep-alive\r\n\r\n")
            .await?;
        let current = st.latest.lock().unwrap().frames.get(cam).map(|f| f.0);
        if let Some(v) = current {
            sock.write_all(format!("data: {v}\n\n").as_bytes()).await?;
        }
        loop {
            match tokio::time::timeout(Duration::from_secs(15), rx.recv()).await {
                Ok(Ok((c, v))) if c == cam => sock.write_all(format!("data: {v}\n\n").as_bytes()).await?,
                Ok(Ok(_)) => {}
                Ok(Err(broadcast::error::RecvError::Lagged(_))) => {}
                Ok(Err(_)) => return Ok(()),
                Err(_) => sock.write_all(b": keep-alive\n\n").await?, // also detects closed connections
            }
        }
    }
    respond(&mut sock, "404 Not Found", "text/plain", b"not found\n").await
}
