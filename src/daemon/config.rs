//! `fuchun serve` configuration: TOML (documented field by field in deploy/fuchun.example.toml), secrets from the
//! environment.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::engine::runtime::Shape;
use crate::engine::{Manifest, RuntimeOptions};
use crate::settings::transfer::CAMERA;
use crate::settings::{Door, Runtime, Stream, Transfer};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub mqtt: MqttConfig,
    /// `[model]`: the runtime settings, as the commands' flags (`settings::Runtime`).
    #[serde(default)]
    pub model: Runtime,
    #[serde(default)]
    pub daemon: DaemonConfig,
    /// Named styles.
    #[serde(default)]
    pub styles: BTreeMap<String, StyleConfig>,
    /// Per-camera settings; cameras not listed use `daemon.default_*`.
    #[serde(default)]
    pub cameras: BTreeMap<String, CameraConfig>,
    /// Extra input topics (e.g. Frigate snapshots) mapped to cameras.
    #[serde(default)]
    pub inputs: Vec<InputMapping>,
    #[serde(skip)]
    pub base_dir: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    V5,
    #[serde(alias = "v3.1.1", alias = "v311", alias = "3.1.1", alias = "v4")]
    V311,
}

impl Protocol {
    /// The largest packet MQTT can carry, either version (the remaining length is at most 268,435,455 bytes); here
    /// beside the protocol, so that the configuration's checks and the client read it from one place.
    pub const MAX_PACKET: usize = 268_435_455;
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    pub host: String,
    pub port: u16,
    pub client_id: String,
    pub username: Option<String>,
    /// Prefer the environment variable FUCHUN_MQTT_PASSWORD; a password here is used only when it is unset.
    pub password: Option<String>,
    pub keep_alive_s: u64,
    /// Seconds the broker keeps our session (subscriptions and the QoS 1/2 frames that arrive) while we are
    /// disconnected, so frames accepted during a reconnect are not lost; 0: a clean session on every connect.
    /// Default: 300, or 0 with a `shared_group` (a dead member's kept session would go on taking its share of
    /// the group's frames until it expires).
    pub session_expiry_s: Option<u64>,
    pub qos: u8,
    pub protocol: Protocol,
    /// Topic prefix: `<prefix>/<camera>/frame` etc.
    pub prefix: String,
    /// Subscribe to the frame topics through `$share/<group>/…` so several daemons split one stream.
    pub shared_group: Option<String>,
    /// Reconnect back-off: first and largest delay.
    pub reconnect_min_ms: u64,
    pub reconnect_max_ms: u64,
    pub tls: Option<TlsConfig>,
}

impl MqttConfig {
    /// `session_expiry_s` as configured, or its default.
    pub fn session_expiry(&self) -> u64 {
        self.session_expiry_s.unwrap_or(if self.shared_group.is_some() { 0 } else { 300 })
    }
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            host: "127.0.0.1".into(),
            port: 1883,
            client_id: "fuchun".into(),
            username: None,
            password: None,
            keep_alive_s: 30,
            session_expiry_s: None,
            qos: 1,
            protocol: Protocol::V5,
            prefix: "fuchun".into(),
            shared_group: None,
            reconnect_min_ms: 250,
            reconnect_max_ms: 30_000,
            tls: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// CA certificate(s) (PEM) that signed the broker's certificate.
    pub ca: PathBuf,
    /// Client certificate and key (PEM) for mutual TLS.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonConfig {
    /// Stylisation workers (each holds its own model sessions). 1 per accelerator.
    pub workers: usize,
    /// Style-target cache; empty disables the on-disk cache.
    pub cache_dir: Option<PathBuf>,
    pub stats_interval_s: u64,
    /// Payload limit, checked before decoding.
    pub max_payload_bytes: u64,
    pub max_pixels: u64,
    pub max_dimension: u32,
    /// Style for cameras with no `style` of their own.
    pub default_style: Option<String>,
    /// Defaults for cameras not listed under [cameras].
    pub default_max_size: Option<usize>,
    pub default_min_interval_ms: u64,
    pub default_retain: bool,
    pub home_assistant_discovery: bool,
    pub discovery_prefix: String,
    /// Replaced by the per-pixel comparison of [daemon.temporal]; accepted (with a warning) so that older
    /// configuration files still load.
    pub warm_start_threshold: Option<f32>,
    /// Camera streams: how consecutive frames of a camera are compared and used (see `transfer::temporal`).
    /// (`settings::Stream`, as `fuchun stylize`'s frame-sequence flags.)
    pub temporal: Stream,
    /// On SIGTERM/SIGINT: how long the current job may continue before it is abandoned.
    pub shutdown_grace_ms: u64,
    /// A job running longer than this stops the systemd watchdog pings (so systemd restarts a stuck worker).
    pub max_job_seconds: u64,
    /// JPEG quality of published results.
    pub jpeg_quality: u8,
    /// Frames waiting for a worker, all cameras together (one per camera at most); over it the camera waiting
    /// longest loses its frame (counted as dropped and evicted_frames).
    pub max_queued_frames: usize,
    /// Payload bytes waiting for a worker, all cameras together.
    pub max_queued_bytes: u64,
    /// Cameras whose state (rate limit, warm start, chosen style) is kept; over it the camera seen least recently
    /// is forgotten (cameras listed under [cameras] never are).
    pub max_cameras: usize,
    /// Other daemons of this prefix whose availability (`<prefix>/<id>/available`) is kept, to tell whether one
    /// still serves when this one stops; over it the one heard from least recently is forgotten.
    pub max_peers: usize,
    /// Memory one frame's decoding may take, in bytes, estimated from the image's header (width × height × bytes
    /// per pixel of the decoder's output, the conversion to 8-bit RGB, a progressive JPEG's coefficients) before
    /// anything is decoded; a frame over it is refused with image_too_large.
    pub max_decode_bytes: u64,
    /// Outgoing messages held while the broker is unreachable, in bytes; over it the oldest are dropped
    /// (counted as outbox_dropped). Stats and retained states keep only their newest message.
    pub max_outbox_bytes: u64,
    /// Stop the systemd watchdog pings after the broker has been unreachable this long, so that systemd restarts
    /// the service (0: never; the daemon keeps reconnecting on its own).
    pub watchdog_outage_s: u64,
    /// Serve Prometheus metrics (`/metrics`) on this address, e.g. "127.0.0.1:9108"; unset: no HTTP server.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Connections to `metrics_listen` open at once; beyond it the oldest still waiting for its request is closed,
    /// so that idle connections cannot use up the file descriptors (1024 under systemd) and lock out scrapes.
    pub metrics_max_connections: usize,
    /// Run every configured size once before READY=1 (TensorRT engines, cuDNN choices, arenas). Unset: on the GPU
    /// providers only.
    pub warmup: Option<bool>,
    /// Aspect ratio (W:H) of the cameras' frames: the warm-up shapes and the TensorRT profile's opt shape.
    pub frame_aspect: String,
    /// Loading the model and the warm-up (TensorRT engine builds take minutes on a Jetson) may take this long:
    /// meanwhile systemd's start timeout is extended (EXTEND_TIMEOUT_USEC); after it, no longer.
    pub max_startup_seconds: u64,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            workers: 1,
            cache_dir: None,
            stats_interval_s: 60,
            max_payload_bytes: 16 << 20,
            max_pixels: 40_000_000,
            max_dimension: 12_000,
            default_style: None,
            default_max_size: None,
            default_min_interval_ms: 0,
            default_retain: false,
            home_assistant_discovery: false,
            discovery_prefix: "homeassistant".into(),
            warm_start_threshold: None,
            temporal: Stream::default(),
            shutdown_grace_ms: 2000,
            max_job_seconds: 600,
            jpeg_quality: 90,
            max_queued_frames: 32,
            max_queued_bytes: 64 << 20,
            max_cameras: 256,
            max_peers: 64,
            max_decode_bytes: 96 << 20,
            max_outbox_bytes: 32 << 20,
            watchdog_outage_s: 0,
            metrics_listen: None,
            metrics_max_connections: 256,
            warmup: None,
            frame_aspect: "16:9".into(),
            max_startup_seconds: 1800,
        }
    }
}

/// `[styles.NAME]`: the style images and the transfer settings, as `fuchun stylize`'s flags (`settings::Transfer`;
/// defaults: `settings::transfer::CAMERA`).
#[derive(Debug, Clone, PartialEq)]
pub struct StyleConfig {
    /// Style image paths (relative to the config file).
    pub images: Vec<PathBuf>,
    pub transfer: Transfer,
}

impl<'de> Deserialize<'de> for StyleConfig {
    /// `images` beside the transfer settings in one table; the rest must be transfer settings (unknown keys are
    /// refused by `Transfer`, which serde's `flatten` would not do).
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut t = toml::Table::deserialize(d)?;
        let images = t.remove("images").ok_or_else(|| D::Error::missing_field("images"))?;
        let images: Vec<PathBuf> = images.try_into().map_err(|e: toml::de::Error| D::Error::custom(e.message()))?;
        let transfer = toml::Value::Table(t).try_into().map_err(|e: toml::de::Error| D::Error::custom(e.message()))?;
        Ok(StyleConfig { images, transfer })
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CameraConfig {
    pub style: Option<String>,
    /// Results are at most this long (default: the style's image_size).
    pub max_size: Option<usize>,
    /// Frames arriving sooner than this after the last processed one are dropped (counted).
    #[serde(default)]
    pub min_interval_ms: Option<u64>,
    /// Publish results retained.
    pub retain: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputMapping {
    /// MQTT topic filter, e.g. `frigate/+/+/snapshot`.
    pub topic: String,
    /// Index (0-based) of the topic level holding the camera name, e.g. 1 for frigate/<camera>/<label>/snapshot.
    pub camera_level: Option<usize>,
    /// Or a fixed camera name for every message of this topic.
    pub camera: Option<String>,
}

/// Resolved settings of one camera.
#[derive(Debug, Clone, PartialEq)]
pub struct CameraSettings {
    pub style: String,
    pub max_size: Option<usize>,
    pub min_interval_ms: u64,
    pub retain: bool,
}

/// The longest result side a camera may ask for (`max_size`, `default_max_size`): 4K UHD's long side. The exact
/// tiled objective keeps the image-sized inputs whole (content targets, the histogram layers' global maps), so the
/// memory grows with the result whatever the tiles: the budget's estimate is about 5,900 MiB at 3840×2160 and four
/// times that at 8K (docs/performance.md); a larger value is a typo more likely than a kiosk.
pub const MAX_RESULT_SIDE: usize = 3840;

/// The smallest result side: the smallest style `image_size`.
pub const MIN_RESULT_SIDE: usize = 16;

/// Without a memory budget, a result whose whole evaluation is estimated above this (MiB) is warned about at start.
pub const WHOLE_WARN_MB: u64 = 4096;

/// A camera's `max_size` within [`MIN_RESULT_SIDE`, `MAX_RESULT_SIDE`].
fn check_max_size(m: usize) -> Result<()> {
    if !(MIN_RESULT_SIDE..=MAX_RESULT_SIDE).contains(&m) {
        bail!(
            "{m} is not a result size this daemon can produce: give {MIN_RESULT_SIDE} to {MAX_RESULT_SIDE} pixels \
             (the result's longest side; 3840 is 4K UHD, whose tiled evaluation needs a [model] memory_budget_mb \
             of about 6000 MiB)"
        );
    }
    Ok(())
}

/// The largest configuration file read: a real one is a few KiB; a path to a device or a huge file fails fast.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Why `f` is not a valid MQTT topic filter to subscribe to, if it is not (empty, `#` not alone as the last
/// level, `+` not alone in its level, NUL): the broker would refuse the subscription, and the daemon would
/// never be online.
pub fn topic_filter_error(f: &str) -> Option<String> {
    if f.is_empty() {
        return Some("the topic filter is empty".into());
    }
    if f.contains('\0') {
        return Some("the topic filter contains a NUL character".into());
    }
    let levels: Vec<&str> = f.split('/').collect();
    for (i, l) in levels.iter().enumerate() {
        if l.contains('#') && (*l != "#" || i + 1 != levels.len()) {
            return Some("'#' must be a level of its own, and the last one".into());
        }
        if l.contains('+') && *l != "+" {
            return Some("'+' must be a level of its own".into());
        }
    }
    None
}

pub fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// The file's text, refused beyond `MAX_CONFIG_BYTES` (read no further than that).
fn read_bounded(path: &Path) -> Result<String> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?.take(MAX_CONFIG_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        bail!("it is larger than {} KiB: not a configuration file", MAX_CONFIG_BYTES >> 10);
    }
    Ok(String::from_utf8(bytes)?)
}

/// A password in a file that anyone on the machine may change (and so point the daemon at another broker, or
/// read): say so; it is not refused, as a container or a test may have reasons.
fn warn_if_world_writable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(m) = std::fs::metadata(path) {
        if m.permissions().mode() & 0o002 != 0 {
            tracing::warn!(
                "{} holds the MQTT password and is world-writable: chmod o-w it (better: 0600 or 0640), or set \
                 FUCHUN_MQTT_PASSWORD instead",
                path.display()
            );
        }
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config> {
        let text = read_bounded(path).with_context(|| {
            format!(
                "cannot read the configuration {}: pass --config PATH (see deploy/fuchun.example.toml)",
                path.display()
            )
        })?;
        let mut c: Config =
            toml::from_str(&text).with_context(|| format!("{} is not a valid fuchun configuration", path.display()))?;
        c.base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        if c.mqtt.password.is_some() {
            warn_if_world_writable(path);
        }
        c.apply_env();
        c.validate().with_context(|| format!("invalid configuration {}", path.display()))?;
        if c.daemon.warm_start_threshold.is_some() {
            tracing::warn!(
                "{}: daemon.warm_start_threshold is no longer used (frames are compared pixel by pixel): remove it, \
                 and see [daemon.temporal] (change_threshold) instead",
                path.display()
            );
        }
        Ok(c)
    }

    fn apply_env(&mut self) {
        if let Ok(p) = std::env::var("FUCHUN_MQTT_PASSWORD") {
            self.mqtt.password = Some(p);
        }
        if let Ok(u) = std::env::var("FUCHUN_MQTT_USERNAME") {
            self.mqtt.username = Some(u);
        }
    }

    pub fn validate(&self) -> Result<()> {
        if self.mqtt.qos > 2 {
            bail!("mqtt.qos must be 0, 1 or 2, got {}", self.mqtt.qos);
        }
        if self.mqtt.prefix.is_empty() || self.mqtt.prefix.contains(['+', '#']) {
            bail!("mqtt.prefix {:?} must be a non-empty topic without wildcards", self.mqtt.prefix);
        }
        if let Some(g) = &self.mqtt.shared_group {
            if !valid_name(g) {
                bail!("mqtt.shared_group {g:?} must be letters, digits, '_' or '-'");
            }
        }
        if self.mqtt.password.is_some() && self.mqtt.username.is_none() {
            bail!("an MQTT password is set but no mqtt.username");
        }
        if !valid_name(&self.mqtt.client_id) {
            bail!(
                "mqtt.client_id {:?} must be 1-64 letters, digits, '_' or '-': it names this daemon's availability \
                 topic <prefix>/<client_id>/available",
                self.mqtt.client_id
            );
        }
        if self.daemon.max_queued_frames == 0 || self.daemon.max_cameras == 0 || self.daemon.max_peers == 0 {
            bail!("daemon.max_queued_frames, daemon.max_cameras and daemon.max_peers must be at least 1");
        }
        if self.daemon.workers == 0 {
            bail!("daemon.workers must be at least 1");
        }
        if self.daemon.max_payload_bytes > Protocol::MAX_PACKET as u64 {
            bail!(
                "daemon.max_payload_bytes = {} is more than MQTT can carry (268435455 bytes); keep it at or below \
                 the broker's own limit (Mosquitto: message_size_limit)",
                self.daemon.max_payload_bytes
            );
        }
        if let Some(tls) = &self.mqtt.tls {
            let readable = |what: &str, p: &Path| -> Result<()> {
                let p = self.resolve(p);
                std::fs::File::open(&p).with_context(|| format!("mqtt.tls.{what}: cannot read {}", p.display()))?;
                Ok(())
            };
            readable("ca", &tls.ca)?;
            match (&tls.client_cert, &tls.client_key) {
                (Some(c), Some(k)) => {
                    readable("client_cert", c)?;
                    readable("client_key", k)?;
                }
                (None, None) => {}
                _ => bail!("mqtt.tls: give both client_cert and client_key, or neither"),
            }
        }
        self.daemon.temporal.validate(&Door::Toml("daemon.temporal".into()))?;
        if self.styles.is_empty() {
            bail!("no [styles.NAME] defined: add at least one style with its images");
        }
        self.validate_styles()?;
        let default = self.default_style_name();
        if !self.styles.contains_key(&default) {
            bail!(
                "daemon.default_style {default:?} is not one of the styles {:?}",
                self.styles.keys().collect::<Vec<_>>()
            );
        }
        if let Some(m) = self.daemon.default_max_size {
            check_max_size(m).context("daemon.default_max_size")?;
        }
        for (cam, c) in &self.cameras {
            if !valid_name(cam) {
                bail!("camera name {cam:?} must be letters, digits, '_' or '-'");
            }
            if let Some(m) = c.max_size {
                check_max_size(m).with_context(|| format!("cameras.{cam}.max_size"))?;
            }
            if let Some(s) = &c.style {
                if !self.styles.contains_key(s) {
                    bail!("camera {cam}: style {s:?} is not defined under [styles]");
                }
            }
        }
        self.runtime().context("[model]")?;
        self.frame_aspect().context("[daemon]")?;
        for m in &self.inputs {
            if let Some(why) = topic_filter_error(&m.topic) {
                bail!("[[inputs]] topic {:?}: {why}", m.topic);
            }
            if m.camera_level.is_none() == m.camera.is_none() {
                bail!("input {}: give exactly one of camera_level or camera", m.topic);
            }
            if let Some(l) = m.camera_level {
                let level = m.topic.split('/').nth(l);
                if level != Some("+") {
                    bail!("input {}: level {l} must be a '+' wildcard to carry the camera name", m.topic);
                }
            }
        }
        Ok(())
    }

    /// Each style: a valid name, images that exist and decode, transfer settings as a stream takes them.
    fn validate_styles(&self) -> Result<()> {
        for (name, s) in &self.styles {
            if !valid_name(name) {
                bail!("style name {name:?} must be letters, digits, '_' or '-'");
            }
            if s.images.is_empty() {
                bail!("style {name}: `images` is empty");
            }
            for img in &s.images {
                let p = self.resolve(img);
                if !p.is_file() {
                    bail!("style {name}: image {} does not exist", p.display());
                }
                // decoded now, so a file that is not an image stops the start instead of failing every frame
                if let Err(e) = crate::imageio::load_path(&p, &crate::imageio::Limits::default()) {
                    bail!("style {name}: {} is not a usable style image: {e}", p.display());
                }
            }
            let door = Door::Toml(format!("styles.{name}"));
            s.transfer.validate_stream(&door)?;
            let blend = &s.transfer.style_blend_weights;
            if !blend.is_empty() && blend.len() != s.images.len() {
                bail!("{}: {} weights for {} images", door.name("style_blend_weights"), blend.len(), s.images.len());
            }
        }
        Ok(())
    }

    /// The runtime settings of [model] (without the sizes, see `expected_shapes`), validated.
    pub fn runtime(&self) -> Result<RuntimeOptions> {
        self.model.options(&Door::Toml("model".into()), &|p| self.resolve(p))
    }

    /// `daemon.frame_aspect` as (width, height).
    pub fn frame_aspect(&self) -> Result<(usize, usize)> {
        let s = &self.daemon.frame_aspect;
        let bad = || anyhow::anyhow!("frame_aspect {s:?} must be WIDTH:HEIGHT, e.g. \"16:9\"");
        let (w, h) = s.split_once(':').ok_or_else(bad)?;
        let (w, h): (usize, usize) = (w.trim().parse().map_err(|_| bad())?, h.trim().parse().map_err(|_| bad())?);
        if w == 0 || h == 0 {
            return Err(bad());
        }
        Ok((w, h))
    }

    /// The frame shapes `[height, width]` the daemon stylises at (every scale of every style, capped by every
    /// camera's max_size, at frame_aspect) — the warm-up — and, for the TensorRT profile, also squares of the style
    /// images' sizes (their aspect is not known before they are loaded; a square of the longest side covers any).
    pub fn expected_shapes(&self) -> (Vec<Shape>, Vec<Shape>) {
        let (aw, ah) = self.frame_aspect().unwrap_or((16, 9));
        let mut caps: Vec<Option<usize>> = vec![self.daemon.default_max_size];
        caps.extend(self.cameras.values().map(|c| c.max_size.or(self.daemon.default_max_size)));
        let (mut frames, mut profile) = (Vec::new(), Vec::new());
        for s in self.styles.values().map(|s| &s.transfer) {
            for cap in &caps {
                let size = cap.map_or(s.image_size(&CAMERA), |c| c.min(s.image_size(&CAMERA)));
                let scales =
                    crate::transfer::schedule::scales_for(size, &s.scales_at(size)).unwrap_or_else(|_| vec![size]);
                for sc in scales {
                    let (w, h) = crate::imageio::fit_size(aw, ah, sc);
                    frames.push([h, w]);
                    let t = ((sc as f32 * s.style_scale).round() as usize).max(1);
                    profile.push([t, t]);
                }
            }
        }
        frames.sort_unstable();
        frames.dedup();
        profile.extend(frames.iter().copied());
        profile.sort_unstable();
        profile.dedup();
        (frames, profile)
    }

    /// Every camera's largest result (its max_size, or daemon.default_max_size, under each style's image_size, at
    /// frame_aspect) planned under the memory budget before the daemon says it is ready: a size the budget cannot
    /// hold even in the smallest tiles is refused here, naming the camera and what to change, instead of failing
    /// every frame. Without a budget a size whose whole evaluation needs more than `WHOLE_WARN_MB` is only warned
    /// about (a GPU host may have the memory). Returns the plans, largest first: (camera, [height, width], plan).
    pub fn plan_frame_sizes(
        &self,
        manifest: &Manifest,
        budget_mb: Option<u64>,
    ) -> Result<Vec<(String, Shape, crate::transfer::tiled::budget::Choice)>> {
        let (aw, ah) = self.frame_aspect()?;
        let mut caps: Vec<(String, Option<usize>)> =
            vec![("cameras not listed (daemon.default_max_size)".into(), self.daemon.default_max_size)];
        caps.extend(
            self.cameras.iter().map(|(n, c)| (format!("camera {n}"), c.max_size.or(self.daemon.default_max_size))),
        );
        let mut out = Vec::new();
        for (style, s) in &self.styles {
            let t = &s.transfer;
            for (who, cap) in &caps {
                let size = cap.map_or(t.image_size(&CAMERA), |c| c.min(t.image_size(&CAMERA)));
                let (w, h) = crate::imageio::fit_size(aw, ah, size);
                let plan = crate::transfer::tiled::budget::choose(manifest, h, w, t.lbfgs_history, budget_mb)
                    .with_context(|| {
                        format!(
                            "{who} with style {style}: results of {w}x{h} (the style's image_size {}{}) cannot run \
                             under [model] memory_budget_mb; raise memory_budget_mb, or lower max_size or the style's \
                             image_size",
                            t.image_size(&CAMERA),
                            cap.map_or(String::new(), |c| format!(", max_size {c}"))
                        )
                    })?;
                if budget_mb.is_none() && plan.estimate_mb > WHOLE_WARN_MB {
                    tracing::warn!(
                        "{who} with style {style}: results of {w}x{h} run whole, about {} MiB (no [model] \
                         memory_budget_mb): set memory_budget_mb to run them in tiles within it",
                        plan.estimate_mb
                    );
                }
                out.push((format!("{who}, style {style}"), [h, w], plan));
            }
        }
        out.sort_by_key(|(_, s, _)| std::cmp::Reverse(s[0] * s[1]));
        Ok(out)
    }

    /// The runtime settings `fuchun serve` (and `doctor`) use: [model] with the TensorRT profile over the
    /// expected shapes (opt: the largest frame, unless configured), and the warm-up shapes.
    pub fn serve_runtime(&self) -> Result<(RuntimeOptions, Vec<Shape>)> {
        let mut o = self.runtime()?;
        let (frames, profile) = self.expected_shapes();
        o.sizes = profile;
        if o.tensorrt.profile.opt.is_none() {
            o.tensorrt.profile.opt = frames.iter().copied().max_by_key(|s| s[0] * s[1]);
        }
        Ok((o, frames))
    }

    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }

    pub fn default_style_name(&self) -> String {
        self.daemon.default_style.clone().unwrap_or_else(|| self.styles.keys().next().cloned().unwrap_or_default())
    }

    pub fn camera(&self, name: &str) -> CameraSettings {
        let c = self.cameras.get(name).cloned().unwrap_or_default();
        CameraSettings {
            style: c.style.unwrap_or_else(|| self.default_style_name()),
            max_size: c.max_size.or(self.daemon.default_max_size),
            min_interval_ms: c.min_interval_ms.unwrap_or(self.daemon.default_min_interval_ms),
            retain: c.retain.unwrap_or(self.daemon.default_retain),
        }
    }
}
