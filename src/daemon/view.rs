//! `fuchun view`: a small local HTTP server for kiosks. It follows `<prefix>/<camera>/stylized` over MQTT and
//! serves a full-screen page per camera that swaps in each new result as it arrives (Server-Sent Events), and the
//! daemons' stats (`<prefix>/stats`, `<prefix>/+/stats`) as Prometheus metrics.
//!
//! Routes (GET only): `/` (camera list, or the page of `--camera`), `/camera/<name>` (the kiosk page),
//! `/frame/<name>.jpg` (latest result), `/events/<name>` (SSE: one event per new result, keep-alive comments in
//! between; at most `--max-event-streams` at once, 503 beyond), `/metrics` (the latest stats of each daemon_id;
//! one silent for `--forget-after-s` is dropped), `/healthz`.
//!
//! What it keeps from MQTT is bounded in count and in bytes, as anyone who can publish under the prefix can send
//! it: the latest result of `--max-results` cameras and `--max-result-bytes` in all (the least recently updated
//! camera forgotten first), the stats of `--max-daemons` daemons (the least recently heard forgotten first), each
//! at most `--max-stats-bytes` as sent and `--max-stats-fields` series, and only what `/metrics` shows of it.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use axum::extract::{Path, State as Extract};
use axum::http::{header, Method, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, OwnedSemaphorePermit, Semaphore};

use super::config::{valid_name, Config};
use super::http::Limits;
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
    /// Open event streams (`/events/<camera>`) at most; more are answered 503.
    #[arg(long, default_value_t = 64)]
    pub max_event_streams: usize,
    /// A request's headers must arrive within this time (milliseconds).
    #[arg(long, default_value_t = 10_000, hide = true)]
    pub header_timeout_ms: u64,
    /// Connections open at once; beyond it the oldest still waiting for its request is closed (keep it well
    /// under the file-descriptor limit, 1024 under systemd, and above --max-event-streams).
    #[arg(long, default_value_t = 256)]
    pub max_connections: usize,
    /// Keep-alive comment interval of idle event streams (milliseconds); a closed client is noticed at the next.
    #[arg(long, default_value_t = 15_000, hide = true)]
    pub keep_alive_ms: u64,
    /// `/metrics` forgets a daemon that sent no stats for this long (seconds; default: three of the
    /// configuration's `daemon.stats_interval_s`), so a daemon that was removed or died stops being reported.
    #[arg(long)]
    pub forget_after_s: Option<u64>,
    /// Cameras whose latest result is kept (for `/frame`, the pages and `/`); beyond it the camera updated least
    /// recently is forgotten.
    #[arg(long, default_value_t = 64)]
    pub max_results: usize,
    /// Bytes of results kept, all cameras together; beyond it the camera updated least recently is forgotten (a
    /// single larger result is not kept).
    #[arg(long, default_value_t = 32 << 20)]
    pub max_result_bytes: usize,
    /// Daemons whose stats are kept for `/metrics`; beyond it the one heard from least recently is forgotten.
    #[arg(long, default_value_t = 64)]
    pub max_daemons: usize,
    /// A stats message larger than this (bytes) is ignored.
    #[arg(long, default_value_t = 64 << 10)]
    pub max_stats_bytes: usize,
    /// A stats message with more series than this (numbers, at the top or in an object such as `duration_ms`)
    /// is ignored.
    #[arg(long, default_value_t = 256)]
    pub max_stats_fields: usize,
}

/// The bounds of what the view keeps (`ViewArgs`).
#[derive(Debug, Clone, Copy)]
struct Bounds {
    max_results: usize,
    max_result_bytes: usize,
    max_daemons: usize,
    max_stats_bytes: usize,
    max_stats_fields: usize,
}

/// Longest text label (`provider`, `version`) kept from a stats message.
const MAX_LABEL_CHARS: usize = 128;

#[derive(Default)]
struct Latest {
    /// The latest result of each camera, with its version (a count over all cameras: the lowest is the least
    /// recently updated).
    frames: HashMap<String, (u64, Bytes)>,
    /// The bytes of `frames`.
    frame_bytes: usize,
    /// The latest stats message of each daemon_id (reduced to what `/metrics` shows), and when it came.
    stats: BTreeMap<String, (Instant, serde_json::Value)>,
    /// Messages not kept for a bound (results too large, stats too large or with too many series).
    refused: u64,
}

impl Latest {
    /// Drops the daemons whose latest stats are older than `forget_after`.
    fn forget_silent(&mut self, forget_after: Duration) {
        self.stats.retain(|_, (at, _)| at.elapsed() <= forget_after);
    }

    /// Keep `payload` as the latest result of `camera`; then forget the least recently updated cameras until
    /// the bounds hold. False when the result alone is over the byte bound (it is not kept).
    fn keep_frame(&mut self, camera: &str, version: u64, payload: &[u8], b: &Bounds) -> bool {
        if payload.len() > b.max_result_bytes {
            return false;
        }
        // a copy: the payload may share the allocation of the MQTT client's read buffer, which would stay
        // alive (and unaccounted for) as long as the result is kept
        let kept = Bytes::copy_from_slice(payload);
        self.frame_bytes += kept.len();
        if let Some((_, old)) = self.frames.insert(camera.to_string(), (version, kept)) {
            self.frame_bytes -= old.len();
        }
        while self.frames.len() > b.max_results.max(1) || self.frame_bytes > b.max_result_bytes {
            let Some(oldest) = self.frames.iter().min_by_key(|(_, f)| f.0).map(|(c, _)| c.clone()) else { break };
            if let Some((_, old)) = self.frames.remove(&oldest) {
                self.frame_bytes -= old.len();
            }
        }
        true
    }

    /// Keep a daemon's stats; then forget the least recently heard daemons beyond the bound.
    fn keep_stats(&mut self, id: String, body: serde_json::Value, b: &Bounds) {
        self.stats.insert(id.clone(), (Instant::now(), body));
        while self.stats.len() > b.max_daemons.max(1) {
            let Some(oldest) = self.stats.iter().min_by_key(|(_, s)| s.0).map(|(d, _)| d.clone()) else { break };
            self.stats.remove(&oldest);
        }
    }
}

/// A stats message reduced to what `/metrics` renders (numbers and booleans, objects of them, and the text
/// labels `provider` and `version`, cut to `MAX_LABEL_CHARS`), if it has at most `max_fields` series.
fn reduce_stats(body: serde_json::Map<String, serde_json::Value>, max_fields: usize) -> Option<serde_json::Value> {
    use serde_json::Value;
    let series = |v: &Value| matches!(v, Value::Number(_) | Value::Bool(_));
    let mut out = serde_json::Map::new();
    let mut n = 0usize;
    for (k, v) in body {
        let kept = match v {
            Value::String(s) if k == "provider" || k == "version" => {
                Value::String(s.chars().take(MAX_LABEL_CHARS).collect())
            }
            v if series(&v) => {
                n += 1;
                v
            }
            Value::Object(o) => {
                let o: serde_json::Map<String, Value> = o.into_iter().filter(|(_, v)| series(v)).collect();
                if o.is_empty() {
                    continue;
                }
                n += o.len();
                Value::Object(o)
            }
            _ => continue,
        };
        if n > max_fields {
            return None;
        }
        out.insert(k, kept);
    }
    Some(Value::Object(out))
}

struct State {
    latest: Mutex<Latest>,
    updates: broadcast::Sender<(String, u64)>,
    default_camera: Option<String>,
    streams: Arc<Semaphore>,
    keep_alive: Duration,
    forget_after: Duration,
}

impl State {
    fn version(&self, camera: &str) -> Option<u64> {
        self.latest.lock().unwrap().frames.get(camera).map(|f| f.0)
    }
}

pub fn run(args: &ViewArgs) -> Result<()> {
    let cfg = Config::load(&args.config).map_err(super::cannot_start)?;
    if let Some(c) = &args.camera {
        if !valid_name(c) {
            return Err(super::cannot_start(anyhow::anyhow!("--camera {c:?} must be letters, digits, '_' or '-'")));
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(serve(cfg, args))
}

/// The daemon_id of a stats message: its `daemon_id` field, else the topic level of `<prefix>/<id>/stats`, else
/// "default".
fn stats_id(prefix: &str, topic: &str, body: &serde_json::Value) -> Option<String> {
    let rest = topic.strip_prefix(prefix)?.strip_prefix('/')?.strip_suffix("stats")?;
    let from_topic = match rest {
        "" => None,
        r => Some(r.strip_suffix('/')?).filter(|r| !r.contains('/')),
    };
    let id = body.get("daemon_id").and_then(|v| v.as_str()).or(from_topic).unwrap_or("default");
    Some(id.to_string())
}

async fn serve(cfg: Config, args: &ViewArgs) -> Result<()> {
    let (tx, _) = broadcast::channel(64);
    let bounds = Bounds {
        max_results: args.max_results,
        max_result_bytes: args.max_result_bytes,
        max_daemons: args.max_daemons,
        max_stats_bytes: args.max_stats_bytes,
        max_stats_fields: args.max_stats_fields,
    };
    let state = Arc::new(State {
        latest: Mutex::new(Latest::default()),
        updates: tx,
        default_camera: args.camera.clone(),
        streams: Arc::new(Semaphore::new(args.max_event_streams)),
        keep_alive: Duration::from_millis(args.keep_alive_ms.max(10)),
        forget_after: Duration::from_secs(args.forget_after_s.unwrap_or(3 * cfg.daemon.stats_interval_s.max(1))),
    });
    let listen = args.listen;
    let listener = TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    tracing::info!(%listen, "kiosk view listening");
    let id = format!("{}-view-{}", cfg.mqtt.client_id, std::process::id());
    let (client, mut events) =
        mqtt::connect(&cfg.mqtt, &id, &format!("{}/view/{}/will", cfg.mqtt.prefix, std::process::id()), 64 << 20)?;
    let prefix = cfg.mqtt.prefix.clone();
    let filters = [format!("{prefix}/+/stylized"), format!("{prefix}/stats"), format!("{prefix}/+/stats")];
    let st = state.clone();
    tokio::spawn(async move {
        let mut version = 0u64;
        loop {
            match events.poll().await {
                Ok(Event::Connected { .. }) => {
                    for f in &filters {
                        let _ = client.subscribe(f, 0).await;
                    }
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
                        let kept = st.latest.lock().unwrap().keep_frame(cam, version, &m.payload, &bounds);
                        if kept {
                            let _ = st.updates.send((cam.to_string(), version));
                        } else {
                            refused(&st, "a result over --max-result-bytes");
                        }
                    } else if m.payload.len() > bounds.max_stats_bytes {
                        // not even parsed: a large JSON document takes many times its size in memory
                        refused(&st, "a stats message over --max-stats-bytes");
                    } else if let Ok(body @ serde_json::Value::Object(_)) = serde_json::from_slice(&m.payload) {
                        // a daemon's id is its client id, a valid name; anything else is not one of ours
                        let Some(id) = stats_id(&prefix, &m.topic, &body).filter(|id| valid_name(id)) else {
                            continue;
                        };
                        let serde_json::Value::Object(body) = body else { continue };
                        match reduce_stats(body, bounds.max_stats_fields) {
                            Some(mut body) => {
                                body["daemon_id"] = id.clone().into();
                                let mut latest = st.latest.lock().unwrap();
                                latest.forget_silent(st.forget_after);
                                latest.keep_stats(id, body, &bounds);
                            }
                            None => refused(&st, "a stats message over --max-stats-fields"),
                        }
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
    let limits = Limits {
        header_timeout: Duration::from_millis(args.header_timeout_ms.max(1)),
        max_connections: args.max_connections,
        ..Limits::default()
    };
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let shutdown = async move {
        tokio::select! {
            _ = sigterm.recv() => {},
            _ = tokio::signal::ctrl_c() => {},
        }
    };
    super::http::serve(listener, router(state), limits, shutdown).await
}

/// Count a message not kept for a bound; say so on the first and then every 1000th (a flood would otherwise
/// write a log line per message).
fn refused(st: &State, what: &str) {
    let n = {
        let mut latest = st.latest.lock().unwrap();
        latest.refused += 1;
        latest.refused
    };
    if n % 1000 == 1 {
        tracing::warn!(refused = n, "not kept: {what} (messages not kept so far: {n})");
    }
}

fn router(state: Arc<State>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/camera/{name}", get(camera))
        .route("/frame/{file}", get(frame))
        .route("/events/{name}", get(events))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { reply(StatusCode::OK, "text/plain", "ok\n") }))
        .fallback(|method: Method| async move {
            if method == Method::GET || method == Method::HEAD {
                reply(StatusCode::NOT_FOUND, "text/plain", "not found\n")
            } else {
                reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET only\n")
            }
        })
        .with_state(state)
}

fn reply(status: StatusCode, ctype: &'static str, body: impl Into<axum::body::Body>) -> Response {
    (status, [(header::CONTENT_TYPE, ctype), (header::CACHE_CONTROL, "no-store")], body.into()).into_response()
}

fn not_found() -> Response {
    reply(StatusCode::NOT_FOUND, "text/plain", "not found\n")
}

/// A camera name from the path: letters, digits, '_' or '-' (anything else, e.g. `..%2F`, is not a camera).
fn camera_name(p: Result<Path<String>, axum::extract::rejection::PathRejection>) -> Option<String> {
    p.ok().map(|Path(n)| n).filter(|n| valid_name(n))
}

async fn index(Extract(st): Extract<Arc<State>>) -> Response {
    if let Some(c) = &st.default_camera {
        return reply(StatusCode::OK, "text/html; charset=utf-8", page(c, st.version(c)));
    }
    let mut cams: Vec<String> = st.latest.lock().unwrap().frames.keys().cloned().collect();
    cams.sort();
    let items: String = cams.iter().map(|c| format!("<li><a href=\"/camera/{c}\">{c}</a></li>")).collect();
    let body = format!("<!doctype html><html><body><h1>fuchun cameras</h1><ul>{items}</ul></body></html>");
    reply(StatusCode::OK, "text/html; charset=utf-8", body)
}

async fn camera(
    Extract(st): Extract<Arc<State>>,
    p: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Response {
    match camera_name(p) {
        Some(cam) => reply(StatusCode::OK, "text/html; charset=utf-8", page(&cam, st.version(&cam))),
        None => not_found(),
    }
}

async fn frame(
    Extract(st): Extract<Arc<State>>,
    p: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Response {
    let Some(cam) = p.ok().and_then(|Path(f)| f.strip_suffix(".jpg").map(str::to_string)).filter(|c| valid_name(c))
    else {
        return not_found();
    };
    let frame = st.latest.lock().unwrap().frames.get(&cam).map(|f| f.1.clone());
    match frame {
        Some(b) => reply(StatusCode::OK, "image/jpeg", b),
        None => reply(StatusCode::NOT_FOUND, "text/plain", format!("no result for {cam} yet\n")),
    }
}

async fn metrics(Extract(st): Extract<Arc<State>>) -> Response {
    let snaps: Vec<serde_json::Value> = {
        let mut latest = st.latest.lock().unwrap();
        latest.forget_silent(st.forget_after);
        latest.stats.values().map(|(_, body)| body.clone()).collect()
    };
    super::metrics::response(&snaps)
}

/// What an event stream carries between events: the permit that counts it, and the version to send first.
struct Stream {
    st: Arc<State>,
    rx: broadcast::Receiver<(String, u64)>,
    camera: String,
    next: Option<u64>,
    _permit: OwnedSemaphorePermit,
}

async fn events(
    Extract(st): Extract<Arc<State>>,
    p: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Response {
    let Some(camera) = camera_name(p) else { return not_found() };
    let Ok(permit) = st.streams.clone().try_acquire_owned() else {
        return reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "too many event streams\n");
    };
    let rx = st.updates.subscribe();
    let next = st.version(&camera);
    let s = Stream { st: st.clone(), rx, camera, next, _permit: permit };
    let stream = futures_util::stream::unfold(s, |mut s| async move {
        loop {
            if let Some(v) = s.next.take() {
                return Some((Ok::<_, Infallible>(SseEvent::default().data(v.to_string())), s));
            }
            match s.rx.recv().await {
                Ok((c, v)) if c == s.camera => s.next = Some(v),
                Ok(_) => {}
                // missed some: send the camera's latest, if newer ones were among those missed
                Err(broadcast::error::RecvError::Lagged(_)) => s.next = s.st.version(&s.camera),
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    // keep-alive comments also find closed connections: the write fails and the stream (and its permit) is dropped
    let mut r =
        Sse::new(stream).keep_alive(KeepAlive::new().interval(st.keep_alive).text("keep-alive")).into_response();
    r.headers_mut().insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
    r
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
