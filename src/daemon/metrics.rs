//! Prometheus text exposition (format 0.0.4) of the daemon's stats (the JSON of `Stats::snapshot`, also published
//! on `<prefix>/stats`), served on `/metrics` by `fuchun serve` (`daemon.metrics_listen`) and by `fuchun view`.
//!
//! Every series carries a `daemon_id` label (the stats' `daemon_id`, else "default"). Known counters become
//! `fuchun_<field>_total`; other numbers become gauges `fuchun_<field>` (an unknown field already ending in `_total`
//! is taken for a counter), so new stats fields appear without changes here. An object of numbers such as
//! `duration_ms` becomes `fuchun_duration_ms{quantile="0.5"}` for its `p50`-style keys and `fuchun_duration_ms_<key>`
//! for the others (`max`). `provider` and `version` are labels of `fuchun_info`.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::Value;
use tokio::net::TcpListener;

/// Where `/metrics` gets the current stats: one object per daemon.
pub type Source = Arc<dyn Fn() -> Vec<Value> + Send + Sync>;

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Monotonic counters of `Stats::snapshot`, exposed with a `_total` suffix.
const COUNTERS: &[(&str, &str)] = &[
    ("received", "Frames received"),
    ("processed", "Jobs completed"),
    (
        "dropped",
        "Frames dropped: replaced by a newer frame of the same camera, inside its minimum interval, or evicted",
    ),
    ("errors", "Frames refused (payload, shutting down) or whose job failed"),
    ("evicted_frames", "Frames evicted to keep the queue within its global bound (part of dropped)"),
    ("evicted_cameras", "Camera states forgotten to keep within daemon.max_cameras"),
    ("internal_errors", "Jobs that panicked (answered internal_error; the worker went on) (part of errors)"),
    ("control_errors", "Messages that are not frames and could not be used (bad topics, bad control payloads)"),
    ("outbox_dropped", "Outgoing messages dropped because the outbox was full while the broker was unreachable"),
    ("outbox_resent", "Unacknowledged outgoing messages sent again after the broker came back without the session"),
    ("warm_starts", "Jobs started from the previous result of the camera"),
    ("partial_frames", "Jobs whose scene changed in part (started from the previous result where it did not)"),
];

const GAUGES: &[(&str, &str)] = &[
    ("queue_depth", "Frames waiting for a worker"),
    ("queue_bytes", "Payload bytes waiting for a worker"),
    ("in_progress", "Frames being processed"),
    ("cameras", "Cameras whose state is kept"),
    ("peers", "Other daemons of this prefix kept as online (at most daemon.max_peers)"),
    ("connected", "1 while connected to the broker"),
    ("duration_ms", "Job duration over the last 1000 jobs, milliseconds"),
    ("mean_evaluations", "Mean objective evaluations per job over the last 1000 jobs"),
    ("rss_bytes", "Resident set size, bytes"),
    ("peak_rss_bytes", "Peak resident set size, bytes"),
    ("uptime_s", "Seconds since the daemon started"),
];

/// Fields that are labels (of `fuchun_info`), not series.
const LABEL_FIELDS: &[&str] = &["daemon_id", "provider", "version"];

struct Family {
    help: String,
    kind: &'static str,
    samples: Vec<(String, String)>,
}

#[derive(Default)]
struct Families {
    order: Vec<String>,
    by_name: HashMap<String, Family>,
    seen: HashSet<(String, String)>,
}

impl Families {
    fn add(&mut self, name: String, help: &str, kind: &'static str, labels: String, value: String) {
        if !self.seen.insert((name.clone(), labels.clone())) {
            return; // the same series twice (e.g. two snapshots of one daemon): keep the first
        }
        let f = self.by_name.entry(name.clone()).or_insert_with(|| {
            self.order.push(name);
            Family { help: help.to_string(), kind, samples: Vec::new() }
        });
        if f.kind == kind {
            f.samples.push((labels, value));
        }
    }
}

/// A label value per the exposition format: backslash, double quote and line feed escaped.
pub fn escape_label(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

/// `fuchun_` + the field with anything outside `[A-Za-z0-9_]` replaced by `_`.
fn metric_name(field: &str) -> String {
    let clean: String = field.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect();
    format!("fuchun_{clean}")
}

fn number(v: &Value) -> Option<String> {
    match v {
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(if *b { "1" } else { "0" }.to_string()),
        _ => None,
    }
}

/// `p50` → 0.5, `p99` → 0.99, `p999` → 0.999.
fn quantile(key: &str) -> Option<String> {
    let digits = key.strip_prefix('p')?;
    if digits.is_empty() || digits.len() > 6 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let q = digits.parse::<f64>().ok()? / 10f64.powi(digits.len() as i32);
    Some(q.to_string())
}

fn field(out: &mut Families, id: &str, key: &str, v: &Value) {
    let labels = format!("daemon_id=\"{}\"", escape_label(id));
    if let Some(&(_, help)) = COUNTERS.iter().find(|(k, _)| *k == key) {
        if let Some(n) = number(v) {
            out.add(format!("{}_total", metric_name(key)), help, "counter", labels, n);
        }
        return;
    }
    let known = GAUGES.iter().find(|(k, _)| *k == key).map(|(_, h)| *h);
    let help = known.map(str::to_string).unwrap_or_else(|| format!("Stats field {key}"));
    let name = metric_name(key);
    match v {
        Value::Object(o) => {
            let mut keys: Vec<&String> = o.keys().collect();
            keys.sort_by(|a, b| {
                let q = |k: &str| quantile(k).and_then(|q| q.parse::<f64>().ok());
                q(a).partial_cmp(&q(b)).unwrap_or(std::cmp::Ordering::Equal).then(a.cmp(b))
            });
            for k in keys {
                let Some(n) = number(&o[k]) else { continue };
                match quantile(k) {
                    Some(q) => out.add(name.clone(), &help, "gauge", format!("{labels},quantile=\"{q}\""), n),
                    None => out.add(
                        metric_name(&format!("{key}_{k}")),
                        &format!("{help} ({k})"),
                        "gauge",
                        labels.clone(),
                        n,
                    ),
                }
            }
        }
        _ => {
            if let Some(n) = number(v) {
                let kind = if known.is_none() && key.ends_with("_total") { "counter" } else { "gauge" };
                out.add(name, &help, kind, labels, n);
            }
        }
    }
}

/// The Prometheus text exposition of stats snapshots, one per daemon.
pub fn render(snapshots: &[Value]) -> String {
    let mut fams = Families::default();
    for snap in snapshots {
        let Some(obj) = snap.as_object() else { continue };
        let text = |k: &str| obj.get(k).and_then(Value::as_str);
        let id = text("daemon_id").unwrap_or("default");
        let info = format!(
            "daemon_id=\"{}\",provider=\"{}\",version=\"{}\"",
            escape_label(id),
            escape_label(text("provider").unwrap_or("")),
            escape_label(text("version").unwrap_or(env!("CARGO_PKG_VERSION"))),
        );
        fams.add("fuchun_info".into(), "Daemon identity: execution provider and version", "gauge", info, "1".into());
        // known fields first, in their documented order; then the rest by name
        let mut keys: Vec<&str> =
            COUNTERS.iter().chain(GAUGES).map(|(k, _)| *k).filter(|k| obj.contains_key(*k)).collect();
        let mut rest: Vec<&str> =
            obj.keys().map(String::as_str).filter(|k| !keys.contains(k) && !LABEL_FIELDS.contains(k)).collect();
        rest.sort_unstable();
        keys.extend(rest);
        for k in keys {
            field(&mut fams, id, k, &obj[k]);
        }
    }
    let mut s = String::new();
    for name in &fams.order {
        let f = &fams.by_name[name];
        s.push_str(&format!("# HELP {name} {}\n# TYPE {name} {}\n", escape_help(&f.help), f.kind));
        for (labels, value) in &f.samples {
            s.push_str(&format!("{name}{{{labels}}} {value}\n"));
        }
    }
    s
}

/// The response of a `/metrics` route.
pub fn response(snapshots: &[Value]) -> Response {
    ([(header::CONTENT_TYPE, CONTENT_TYPE), (header::CACHE_CONTROL, "no-store")], render(snapshots)).into_response()
}

/// `/metrics` and `/healthz`.
pub fn router(source: Source) -> Router {
    Router::new()
        .route("/metrics", get(move || async move { response(&source()) }))
        .route("/healthz", get(|| async { "ok\n" }))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
}

/// Serve `/metrics` (and `/healthz`) on `listener`, at most `max_connections` at once, until `shutdown` completes.
pub async fn serve_metrics(
    listener: TcpListener,
    max_connections: usize,
    source: Source,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    let limits = super::http::Limits { max_connections, ..super::http::Limits::default() };
    super::http::serve(listener, router(source), limits, shutdown).await
}

/// Bind `addr` (an error when it cannot be) and serve `/metrics` from `source` in the background, for the life of
/// the runtime.
pub async fn spawn(addr: SocketAddr, max_connections: usize, source: Source) -> Result<()> {
    let listener =
        TcpListener::bind(addr).await.with_context(|| format!("daemon.metrics_listen: cannot listen on {addr}"))?;
    tracing::info!(%addr, "metrics listening");
    tokio::spawn(async move {
        if let Err(e) = serve_metrics(listener, max_connections, source, std::future::pending()).await {
            tracing::warn!(error = %e, "metrics server stopped");
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// (name, labels, value)
    type Sample = (String, Vec<(String, String)>, f64);

    /// A small checker of the text format: every non-comment line is `name{labels} value`, with a valid metric
    /// name, well-formed (escaped) labels and a float value; every family has one TYPE line, before its samples.
    /// Returns the samples as (name, labels, value).
    fn parse(text: &str) -> Vec<Sample> {
        let valid_name = |n: &str| {
            let mut c = n.chars();
            matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_' || ch == ':')
                && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':')
        };
        let mut typed = HashSet::new();
        let mut samples = Vec::new();
        assert!(text.ends_with('\n'), "the exposition ends with a line feed");
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# ") {
                let mut parts = rest.splitn(3, ' ');
                let (kw, name) = (parts.next().unwrap(), parts.next().expect("name"));
                assert!(valid_name(name), "{line}");
                if kw == "TYPE" {
                    let t = parts.next().unwrap();
                    assert!(["counter", "gauge", "summary", "histogram", "untyped"].contains(&t), "{line}");
                    assert!(typed.insert(name.to_string()), "second TYPE line for {name}");
                }
                continue;
            }
            assert!(!line.starts_with('#') && !line.is_empty(), "{line:?}");
            let name_end = line.find(['{', ' ']).expect(line);
            let name = &line[..name_end];
            assert!(valid_name(name), "bad metric name in {line}");
            let family = name.strip_suffix("_total").filter(|f| typed.contains(*f)).unwrap_or(name);
            assert!(typed.contains(name) || typed.contains(family), "{name} has no TYPE line before it");
            let mut rest = &line[name_end..];
            let mut labels = Vec::new();
            if let Some(body) = rest.strip_prefix('{') {
                let mut chars = body.char_indices().peekable();
                loop {
                    let (i, c) = chars.next().expect("unterminated labels");
                    if c == '}' {
                        rest = &body[i + 1..];
                        break;
                    }
                    let eq = body[i..].find('=').expect("label without =") + i;
                    let lname = &body[i..eq];
                    assert!(valid_name(lname) && !lname.contains(':'), "bad label name {lname:?} in {line}");
                    while chars.peek().is_some_and(|&(j, _)| j <= eq) {
                        chars.next();
                    }
                    assert_eq!(chars.next().map(|x| x.1), Some('"'), "{line}");
                    let mut value = String::new();
                    loop {
                        match chars.next().expect("unterminated label value").1 {
                            '\\' => match chars.next().unwrap().1 {
                                '\\' => value.push('\\'),
                                '"' => value.push('"'),
                                'n' => value.push('\n'),
                                o => panic!("bad escape \\{o} in {line}"),
                            },
                            '"' => break,
                            '\n' => panic!("raw line feed in {line}"),
                            c => value.push(c),
                        }
                    }
                    labels.push((lname.to_string(), value));
                    match chars.peek() {
                        Some(&(_, ',')) => {
                            chars.next();
                        }
                        Some(&(_, '}')) => {}
                        _ => panic!("expected , or }} in {line}"),
                    }
                }
            }
            let value = rest.strip_prefix(' ').expect("a space before the value");
            let v: f64 = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                "NaN" => f64::NAN,
                v => v.parse().unwrap_or_else(|_| panic!("bad value {v:?} in {line}")),
            };
            samples.push((name.to_string(), labels, v));
        }
        samples
    }

    fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        samples
            .iter()
            .find(|(n, l, _)| n == name && labels.iter().all(|(k, v)| l.iter().any(|(a, b)| a == k && b == v)))
            .map(|s| s.2)
    }

    fn snapshot() -> Value {
        let s = crate::daemon::stats::Stats::default();
        for i in 1..=10 {
            use crate::transfer::temporal::Start;
            s.record_job(i as f64 * 100.0, 40, if i % 2 == 0 { Start::Partial } else { Start::Cold });
        }
        s.snapshot(&gauges(2))
    }

    fn gauges(queue_depth: usize) -> crate::daemon::stats::Gauges<'static> {
        crate::daemon::stats::Gauges {
            daemon_id: "d0",
            provider: "CPU",
            provider_report: &serde_json::Value::Null,
            queue_depth,
            queue_bytes: 0,
            cameras: 0,
            connected: true,
            started: std::time::Instant::now(),
        }
    }

    #[test]
    fn renders_a_snapshot() {
        let text = render(&[snapshot()]);
        let m = parse(&text);
        let d = [("daemon_id", "d0")];
        assert_eq!(value(&m, "fuchun_processed_total", &d), Some(10.0));
        assert_eq!(value(&m, "fuchun_warm_starts_total", &d), Some(5.0));
        assert_eq!(value(&m, "fuchun_received_total", &d), Some(0.0));
        assert_eq!(value(&m, "fuchun_queue_depth", &d), Some(2.0));
        assert_eq!(value(&m, "fuchun_mean_evaluations", &d), Some(40.0));
        assert_eq!(value(&m, "fuchun_duration_ms", &[("quantile", "0.5")]), Some(600.0));
        assert_eq!(value(&m, "fuchun_duration_ms", &[("quantile", "0.99")]), Some(1000.0));
        assert_eq!(value(&m, "fuchun_duration_ms_max", &d), Some(1000.0));
        assert!(value(&m, "fuchun_rss_bytes", &d).unwrap() > 0.0);
        assert!(value(&m, "fuchun_uptime_s", &d).is_some());
        let info = [("provider", "CPU"), ("daemon_id", "d0"), ("version", env!("CARGO_PKG_VERSION"))];
        assert_eq!(value(&m, "fuchun_info", &info), Some(1.0));
        // every series has the daemon_id label; types as documented
        assert!(m.iter().all(|(_, l, _)| l.iter().any(|(k, _)| k == "daemon_id")));
        for t in [
            "# TYPE fuchun_processed_total counter",
            "# TYPE fuchun_queue_depth gauge",
            "# TYPE fuchun_duration_ms gauge",
        ] {
            assert!(text.contains(t), "{t}: {text}");
        }
        assert!(text.contains("# HELP fuchun_errors_total "));
        // quantiles in order
        let q: Vec<&str> = text.lines().filter(|l| l.starts_with("fuchun_duration_ms{")).collect();
        assert!(q[0].contains("\"0.5\"") && q[1].contains("\"0.9\"") && q[2].contains("\"0.99\""), "{q:?}");
    }

    #[test]
    fn no_jobs_yet_has_no_duration_series() {
        let s = crate::daemon::stats::Stats::default();
        let text = render(&[s.snapshot(&gauges(0))]);
        parse(&text);
        assert!(!text.contains("fuchun_duration_ms"), "{text}");
        assert!(text.contains("fuchun_processed_total{daemon_id=\"d0\"} 0\n"), "{text}");
    }

    #[test]
    fn several_daemons_share_families() {
        let mut a = snapshot();
        a["daemon_id"] = json!("jetson-1");
        let mut b = snapshot();
        b["daemon_id"] = json!("jetson-2");
        b["provider"] = json!("TensorRT");
        b["version"] = json!("9.9.9");
        let text = render(&[a, b]);
        let m = parse(&text);
        assert_eq!(text.matches("# TYPE fuchun_processed_total ").count(), 1);
        assert_eq!(m.iter().filter(|s| s.0 == "fuchun_processed_total").count(), 2);
        assert_eq!(
            value(&m, "fuchun_info", &[("daemon_id", "jetson-2"), ("provider", "TensorRT"), ("version", "9.9.9")]),
            Some(1.0)
        );
        assert_eq!(value(&m, "fuchun_queue_depth", &[("daemon_id", "jetson-1")]), Some(2.0));
        // the samples of one family are contiguous
        let names: Vec<&str> =
            text.lines().filter(|l| !l.starts_with('#')).map(|l| &l[..l.find('{').unwrap()]).collect();
        let mut seen = Vec::new();
        for n in names {
            if seen.last() != Some(&n) {
                assert!(!seen.contains(&n), "{n} split: {text}");
                seen.push(n);
            }
        }
    }

    #[test]
    fn unknown_fields_and_hostile_labels() {
        let snap = json!({
            "daemon_id": "a\"b\\c\nd",
            "provider": "CUDA \"x\"",
            "processed": 3,
            "gpu_temperature_c": 61.5,
            "cache-hits": 7,
            "frames_published_total": 12,
            "throttled": true,
            "per_stage_ms": {"p50": 1.5, "p99": 9, "mean": 2.25, "label": "text"},
            "note": "a string is not a series",
            "list": [1, 2],
            "nothing": null,
            "big": 1e300,
            "negative": -4,
        });
        let text = render(&[snap]);
        let m = parse(&text);
        let d = [("daemon_id", "a\"b\\c\nd")];
        assert!(text.contains(r#"daemon_id="a\"b\\c\nd""#), "{text}");
        assert_eq!(value(&m, "fuchun_info", &[("provider", "CUDA \"x\"")]), Some(1.0));
        assert_eq!(value(&m, "fuchun_processed_total", &d), Some(3.0));
        assert_eq!(value(&m, "fuchun_gpu_temperature_c", &d), Some(61.5));
        assert!(text.contains("# TYPE fuchun_gpu_temperature_c gauge"));
        assert_eq!(value(&m, "fuchun_cache_hits", &d), Some(7.0));
        assert_eq!(value(&m, "fuchun_frames_published_total", &d), Some(12.0));
        assert!(text.contains("# TYPE fuchun_frames_published_total counter"));
        assert_eq!(value(&m, "fuchun_throttled", &d), Some(1.0));
        assert_eq!(value(&m, "fuchun_per_stage_ms", &[("quantile", "0.99")]), Some(9.0));
        assert_eq!(value(&m, "fuchun_per_stage_ms_mean", &d), Some(2.25));
        assert_eq!(value(&m, "fuchun_big", &d), Some(1e300));
        assert_eq!(value(&m, "fuchun_negative", &d), Some(-4.0));
        for absent in ["fuchun_note", "fuchun_list", "fuchun_nothing", "fuchun_per_stage_ms_label", "fuchun_daemon_id"]
        {
            assert!(!text.contains(&format!("{absent}{{")), "{absent}: {text}");
        }
        // not objects: nothing
        assert_eq!(render(&[json!(3), json!("x")]), "");
    }

    #[test]
    fn quantile_keys() {
        assert_eq!(quantile("p50").as_deref(), Some("0.5"));
        assert_eq!(quantile("p90").as_deref(), Some("0.9"));
        assert_eq!(quantile("p99").as_deref(), Some("0.99"));
        assert_eq!(quantile("p999").as_deref(), Some("0.999"));
        assert_eq!(quantile("max"), None);
        assert_eq!(quantile("p"), None);
        assert_eq!(quantile("pfoo"), None);
    }

    #[test]
    fn the_checker_rejects_bad_lines() {
        for bad in [
            "# TYPE x gauge\nx{a=\"b} 1\n",
            "# TYPE x gauge\nx 1 2 3\n",
            "# TYPE x gauge\nx{a=\"b\"} one\n",
            "# TYPE 1x gauge\n1x 1\n",
            "x 1\n",
            "# TYPE x gauge\nx{a=\"\\q\"} 1\n",
        ] {
            assert!(std::panic::catch_unwind(|| parse(bad)).is_err(), "accepted {bad:?}");
        }
        assert_eq!(parse("# TYPE x gauge\nx{a=\"b\",c=\"\\\"\"} +Inf\n").len(), 1);
    }
}
