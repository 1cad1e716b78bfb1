//! Stylisation workers: plain threads, each with its own ONNX Runtime sessions, taking frames from the queue,
//! stylising them (from the camera's previous result where the scene did not change: `transfer::temporal`) and
//! handing the results to the MQTT task. The async reactor never runs a stylisation.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use bytes::Bytes;
use tokio::sync::mpsc;

use super::config::{CameraSettings, Config};
use super::mqtt::Outgoing;
use super::queue::{Frame, FrameQueue, Reply};
use super::stats::Stats;
use super::styles::Style;
use super::topics::Topics;
use crate::engine::runtime::Shape;
use crate::engine::{Model, Provider, ProviderReport, RuntimeOptions};
use crate::imageio::fit_size as fit;
use crate::imageio::{self, Limits, OutputFormat};
use crate::transfer::schedule::Cancelled;
use crate::transfer::temporal::{self, Previous, Start};
use crate::transfer::tiled::budget;
use crate::transfer::{EvalRecord, Hooks};

pub struct Shared {
    pub config: Config,
    pub topics: Topics,
    pub queue: FrameQueue,
    pub stats: Stats,
    /// To the MQTT event loop. Unbounded on purpose: nothing that sends may ever wait on the broker; the event
    /// loop drains it at once into its own bounded outbox (outbox.rs).
    pub out: mpsc::UnboundedSender<Outgoing>,
    /// Names this daemon's availability topic and its stats.
    pub daemon_id: String,
    /// Styles chosen through `<camera>/style/set`.
    pub camera_styles: Mutex<HashMap<String, String>>,
    /// Per worker: milliseconds since `started` of the last sign of life.
    pub heartbeats: Vec<AtomicU64>,
    /// Set on shutdown once the grace period is over: running jobs stop at their next evaluation.
    pub abandon: AtomicBool,
    /// Set until the state of earlier runs (the cameras' chosen styles) is read back: frames wait in the queue.
    held: AtomicBool,
    pub started: Instant,
    pub provider: Mutex<String>,
    /// Cameras whose state is kept (the router's count, for stats).
    pub cameras: std::sync::atomic::AtomicUsize,
    /// The first worker's `ProviderReport` as JSON (for the stats).
    pub provider_report: Mutex<serde_json::Value>,
    /// Per camera, the last frame and its result (`transfer::temporal`).
    previous: Mutex<HashMap<String, Previous>>,
}

impl Shared {
    pub fn new(config: Config, topics: Topics, out: mpsc::UnboundedSender<Outgoing>) -> Shared {
        let workers = config.daemon.workers;
        Shared {
            daemon_id: config.mqtt.client_id.clone(),
            queue: FrameQueue::new(config.daemon.max_queued_frames, config.daemon.max_queued_bytes as usize),
            config,
            topics,
            stats: Stats::default(),
            out,
            camera_styles: Mutex::new(HashMap::new()),
            heartbeats: (0..workers).map(|_| AtomicU64::new(0)).collect(),
            abandon: AtomicBool::new(false),
            held: AtomicBool::new(true),
            started: Instant::now(),
            provider: Mutex::new("unknown".into()),
            cameras: Default::default(),
            provider_report: Mutex::new(serde_json::Value::Null),
            previous: Mutex::new(HashMap::new()),
        }
    }

    /// Let the workers take frames (see `held`).
    pub fn release_frames(&self) {
        self.held.store(false, Ordering::Relaxed);
    }

    pub fn style_of(&self, camera: &str) -> String {
        self.camera_styles.lock().unwrap().get(camera).cloned().unwrap_or_else(|| self.config.camera(camera).style)
    }

    fn beat(&self, worker: usize) {
        self.heartbeats[worker].store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Seconds since the least recent heartbeat of all workers.
    pub fn stalest_heartbeat_s(&self) -> f64 {
        let now = self.started.elapsed().as_millis() as u64;
        self.heartbeats.iter().map(|h| now.saturating_sub(h.load(Ordering::Relaxed))).max().unwrap_or(0) as f64 / 1e3
    }

    pub fn send(&self, m: Outgoing) {
        if self.out.send(m).is_err() {
            tracing::warn!("the MQTT event loop has stopped; dropping a message");
        }
    }

    /// Forget what is kept per camera (previous frame and result, style choice): the camera is evicted by the
    /// bound on cameras (`daemon.max_cameras`).
    pub fn forget_camera(&self, camera: &str) {
        self.previous.lock().unwrap().remove(camera);
        self.camera_styles.lock().unwrap().remove(camera);
    }

    /// An error about a message that is not a frame (bad topic, bad control payload): counted apart from frames.
    pub fn control_error(&self, camera: &str, code: &str, message: &str) -> Vec<Outgoing> {
        Stats::inc(&self.stats.control_errors);
        self.error_outgoing(camera, code, message, None, None)
    }

    /// An error for a frame of a camera (and for the requester, if the frame asked for a reply).
    pub fn error_message(
        &self,
        camera: &str,
        code: &str,
        message: &str,
        seq: Option<u64>,
        reply: Option<&Reply>,
    ) -> Vec<Outgoing> {
        Stats::inc(&self.stats.errors);
        self.error_outgoing(camera, code, message, seq, reply)
    }

    /// The error message on the camera's error topic (and the requester's response topic, if any).
    fn error_outgoing(
        &self,
        camera: &str,
        code: &str,
        message: &str,
        seq: Option<u64>,
        reply: Option<&Reply>,
    ) -> Vec<Outgoing> {
        let body = serde_json::json!({"camera": camera, "code": code, "message": message, "seq": seq});
        let mut v = vec![Outgoing::json(self.topics.error(camera), &body)];
        if let Some(r) = reply {
            v.push(Outgoing::json(r.topic.clone(), &body).answering(r));
        }
        v
    }
}

struct JobHooks<'a> {
    shared: &'a Shared,
    worker: usize,
}

impl Hooks for JobHooks<'_> {
    fn evaluation(&mut self, _rec: &EvalRecord) {
        self.shared.beat(self.worker);
    }
    fn progress(&mut self) {
        self.shared.beat(self.worker);
    }
    fn cancelled(&self) -> bool {
        self.shared.abandon.load(Ordering::Relaxed)
    }
}

pub struct WorkerSetup {
    pub model_dir: PathBuf,
    pub runtime: RuntimeOptions,
    /// Frame shapes to run once before reporting ready; `warmup` None: only on a GPU provider.
    pub warmup_shapes: Vec<Shape>,
    pub warmup: Option<bool>,
}

/// Workers load one after the other, so that the second finds the TensorRT engines the first built in the cache.
static LOADING: Mutex<()> = Mutex::new(());

fn load(worker: usize, setup: &WorkerSetup, cfg: &Config) -> Result<Model> {
    let _turn = LOADING.lock().unwrap_or_else(|e| e.into_inner());
    // the TensorRT profile covers the sizes that run whole; those the budget tiles never reach the whole graphs
    let mut runtime = setup.runtime.clone();
    let manifest = crate::engine::Manifest::load(&setup.model_dir)?;
    runtime.sizes = budget::whole_sizes(&manifest, &runtime.sizes, runtime.memory_budget_mb);
    let mut model = Model::load(&setup.model_dir, &runtime)?;
    // every camera's result size planned under the budget now: one it cannot hold stops the start with the camera
    // named, instead of failing each of its frames
    let plans = cfg.plan_frame_sizes(&model.manifest, model.memory_budget_mb)?;
    if let Some((who, [h, w], plan)) = plans.first() {
        tracing::info!(worker, largest = %format!("{w}x{h}"), who, tile = ?plan.tile, history = plan.history,
            estimate_mb = plan.estimate_mb, budget_mb = ?model.memory_budget_mb, "largest result planned");
    }
    // a shape the memory budget runs in tiles is not warmed up whole: that alone would pass the budget
    let (m, budget) = (&model.manifest, model.memory_budget_mb);
    let shapes: Vec<Shape> = budget::whole_sizes(m, &setup.warmup_shapes, budget);
    if setup.warmup.unwrap_or(model.provider != Provider::Cpu) && !shapes.is_empty() {
        let t = Instant::now();
        let n = shapes.len();
        model.warm_up(
            &shapes,
            &mut |i, s| tracing::info!(worker, shape = %format!("{}x{}", s[1], s[0]), "warm-up {}/{n}", i + 1),
        )?;
        tracing::info!(worker, shapes = n, seconds = t.elapsed().as_secs_f64(), "warm-up done");
    }
    Ok(model)
}

/// The worker thread: load the model, report readiness, then process frames until the queue closes.
pub fn run(
    worker: usize,
    shared: Arc<Shared>,
    setup: WorkerSetup,
    ready: std::sync::mpsc::Sender<Result<ProviderReport, String>>,
) {
    let mut model = match load(worker, &setup, &shared.config) {
        Ok(m) => {
            let _ = ready.send(Ok(m.provider_report().clone()));
            m
        }
        Err(e) => {
            let _ = ready.send(Err(format!("{e:#}")));
            return;
        }
    };
    drop(ready);
    let mut styles: HashMap<String, Style> = HashMap::new();
    loop {
        shared.beat(worker);
        if shared.held.load(Ordering::Relaxed) && !shared.queue.is_closed() {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        let Some(frame) = shared.queue.pop(Duration::from_millis(500)) else {
            if shared.queue.is_closed() {
                break;
            }
            continue;
        };
        let camera = frame.camera.clone();
        shared.stats.in_progress.fetch_add(1, Ordering::Relaxed);
        // a panic anywhere in a job (a decoder, a cache file, the model) is that frame's failure, not the worker's:
        // the frame is answered `internal_error`, and the worker goes on with its model and a fresh style cache
        let job = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            process(worker, &shared, &mut model, &mut styles, &frame)
        }));
        let messages = match job {
            Ok(Ok(m)) => m,
            Err(panic) => {
                styles.clear();
                let text = format!("the job panicked: {}", panic_message(&*panic));
                Stats::inc(&shared.stats.internal_errors);
                tracing::error!(camera, seq = frame.seq, error = %text, "frame failed: internal error");
                shared.error_message(&camera, "internal_error", &text, Some(frame.seq), frame.reply.as_ref())
            }
            Ok(Err(e)) => {
                let (code, text) = if e.downcast_ref::<Cancelled>().is_some() {
                    ("shutting_down", "the daemon is stopping; the frame was not processed".to_string())
                } else if let Some(ie) = e.downcast_ref::<imageio::ImageError>() {
                    (ie.code(), ie.to_string())
                } else {
                    ("stylize_failed", format!("{e:#}"))
                };
                tracing::warn!(camera, code, error = %text, "frame failed");
                shared.error_message(&camera, code, &text, Some(frame.seq), frame.reply.as_ref())
            }
        };
        for m in messages {
            shared.send(m);
        }
        shared.stats.in_progress.fetch_sub(1, Ordering::Relaxed);
        shared.queue.done(&camera);
        if shared.abandon.load(Ordering::Relaxed) {
            break;
        }
    }
}

/// The message a panic was raised with (`panic!` with a literal or with formatting), if it has one.
fn panic_message(p: &(dyn std::any::Any + Send)) -> &str {
    p.downcast_ref::<&str>()
        .copied()
        .or_else(|| p.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

/// A frame decoded no larger than this camera's results can be (JPEG: DCT-domain scaling), so a huge frame never
/// exists at full size in memory, within the configured limits.
fn decode(cfg: &Config, settings: &CameraSettings, style_name: &str, payload: &[u8]) -> Result<imageio::Fitted> {
    let limits = Limits {
        max_bytes: cfg.daemon.max_payload_bytes,
        max_width: cfg.daemon.max_dimension,
        max_height: cfg.daemon.max_dimension,
        max_pixels: cfg.daemon.max_pixels,
        max_decode_bytes: cfg.daemon.max_decode_bytes,
    };
    let want =
        cfg.styles.get(style_name).map_or(usize::MAX, |s| s.transfer.image_size(&crate::settings::transfer::CAMERA));
    let want = settings.max_size.map_or(want, |m| want.min(m));
    Ok(imageio::decode_fitted(payload, &limits, want)?)
}

fn process(
    worker: usize,
    shared: &Shared,
    model: &mut Model,
    styles: &mut HashMap<String, Style>,
    frame: &Frame,
) -> Result<Vec<Outgoing>> {
    let t0 = Instant::now();
    let queued_ms = frame.received.elapsed().as_secs_f64() * 1e3;
    let cfg = &shared.config;
    let cam = &frame.camera;
    // test hook: every job of this camera panics (tests/daemon_reliability.rs, job isolation)
    if std::env::var_os("FUCHUN_TEST_PANIC_CAMERA").is_some_and(|c| c == cam.as_str()) {
        panic!("a job of camera {cam} panicked on purpose (FUCHUN_TEST_PANIC_CAMERA)");
    }
    let settings = cfg.camera(cam);
    let style_name = shared.style_of(cam);
    let fitted = decode(cfg, &settings, &style_name, &frame.payload)?;
    let (input_width, input_height) = (fitted.width, fitted.height);
    let content = fitted.image;
    let decode_ms = t0.elapsed().as_secs_f64() * 1e3;
    if !styles.contains_key(&style_name) {
        styles.insert(style_name.clone(), Style::load(&style_name, cfg, &model.manifest)?);
    }
    let style = styles.get_mut(&style_name).unwrap();
    // output size: the style's size, capped by the camera's and by the frame itself (no upscaling)
    let mut size =
        style.config.transfer.image_size(&crate::settings::transfer::CAMERA).min(content.width.max(content.height));
    if let Some(m) = settings.max_size {
        size = size.min(m);
    }
    let (w, h) = fit(content.width, content.height, size);
    let min = model.manifest.min_size;
    if w < min || h < min {
        return Err(imageio::too_small(input_width, input_height, w, h, min).into());
    }
    let opts = style.options(&model.manifest, size)?;
    // the previous frame of this camera is used only with the same style (its settings included) and size
    let key = format!("{style_name}/{}/{w}x{h}", style.key());
    let content_s = content.resize(w, h);
    let stream = cfg
        .daemon
        .temporal
        .settings(style.config.transfer.temporal_weight(), &crate::settings::Door::Toml("daemon.temporal".into()))?;
    let prev = shared.previous.lock().unwrap().get(cam).cloned();
    let t1 = Instant::now();
    let (outcome, plan, kept) = temporal::stylize_frame(
        model,
        prev.as_ref(),
        &key,
        &content_s,
        &stream,
        &opts,
        style,
        &mut JobHooks { shared, worker },
    )?;
    drop(prev);
    let stylize_ms = t1.elapsed().as_secs_f64() * 1e3;
    let t2 = Instant::now();
    let jpeg = imageio::encode(&outcome.image, OutputFormat::Jpeg { quality: cfg.daemon.jpeg_quality })?;
    let encode_ms = t2.elapsed().as_secs_f64() * 1e3;
    shared.previous.lock().unwrap().insert(cam.clone(), kept);
    let evaluations = outcome.evaluations();
    let total_ms = queued_ms + t0.elapsed().as_secs_f64() * 1e3;
    shared.stats.record_job(total_ms, evaluations as u64, plan.start);
    let l = outcome.final_losses();
    let losses: serde_json::Map<String, serde_json::Value> = std::iter::once(("total".to_string(), l.total.into()))
        .chain(l.terms.iter().map(|(t, v)| (t.clone(), (*v).into())))
        .collect();
    let meta = serde_json::json!({
        "camera": cam,
        "daemon": shared.daemon_id,
        "seq": frame.seq,
        "topic": frame.topic,
        "style": style_name,
        "style_targets": style.last_source,
        "input_width": input_width,
        "input_height": input_height,
        "width": outcome.image.width,
        "height": outcome.image.height,
        "scales": outcome.scales.iter().map(|s| serde_json::json!({
            "width": s.width, "height": s.height, "iterations": s.iterations, "evaluations": s.evaluations,
            "stop": format!("{:?}", s.stop), "seconds": s.seconds, "tile": s.tile,
        })).collect::<Vec<_>>(),
        "evaluations": evaluations,
        "warm_start": plan.start != Start::Cold,
        "start": plan.start.as_str(),
        "changed_fraction": plan.changed_fraction,
        "pan": plan.pan.map(|(dx, dy)| [dx, dy]),
        "uncovered": plan.uncovered,
        "trail": plan.trail.map(|t| 255.0 * t),
        "young": plan.young,
        "losses": losses,
        "durations_ms": {"queue": queued_ms, "decode": decode_ms, "stylize": stylize_ms, "encode": encode_ms, "total": total_ms},
        "provider": model.provider.to_string(),
        "provider_report": model.provider_report().to_json(),
        "input_bytes": frame.payload.len(),
        "output_bytes": jpeg.len(),
    });
    let jpeg = Bytes::from(jpeg);
    let mut out = vec![
        Outgoing::new(shared.topics.stylized(cam), jpeg.clone()).retained(settings.retain).content_type("image/jpeg"),
        Outgoing::json(shared.topics.meta(cam), &meta).retained(settings.retain),
    ];
    if let Some(r) = &frame.reply {
        out.push(Outgoing::new(r.topic.clone(), jpeg).content_type("image/jpeg").answering(r));
    }
    tracing::info!(camera = %cam, seq = frame.seq, evaluations, start = plan.start.as_str(),
        changed = plan.changed_fraction, pan = ?plan.pan, ms = total_ms as u64, "frame stylised");
    Ok(out)
}
