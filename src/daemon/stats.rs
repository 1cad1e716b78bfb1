//! Counters and duration percentiles for the `<prefix>/stats` messages.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use crate::transfer::temporal::Start;

/// Counters. Every received frame ends as exactly one of processed, dropped or errors (or is still waiting or
/// being processed): received = processed + dropped + errors + queue_depth + in_progress.
#[derive(Default)]
pub struct Stats {
    pub received: AtomicU64,
    pub processed: AtomicU64,
    /// Replaced by a newer frame of the same camera, inside the camera's minimum interval, or evicted by the
    /// global queue bound.
    pub dropped: AtomicU64,
    /// Frames refused (payload, shutting down) or whose job failed.
    pub errors: AtomicU64,
    /// Of `dropped`: frames evicted to keep the queue within its global bound.
    pub evicted_frames: AtomicU64,
    /// Camera state (rate limit, warm start, style choice) dropped to keep within `daemon.max_cameras`.
    pub evicted_cameras: AtomicU64,
    /// Of `errors`: jobs that panicked (answered `internal_error`; the worker went on).
    pub internal_errors: AtomicU64,
    /// Messages that are not frames and could not be used: bad topics, bad control payloads, unknown styles.
    pub control_errors: AtomicU64,
    /// Outgoing messages dropped because the outbox was full while the broker was unreachable.
    pub outbox_dropped: AtomicU64,
    /// Outgoing messages handed to the MQTT client again because the broker came back without the session that
    /// held them (they had not been acknowledged).
    pub outbox_resent: AtomicU64,
    pub in_progress: AtomicU64,
    /// Other daemons of this prefix kept as online (at most `daemon.max_peers`): a gauge.
    pub peers: AtomicU64,
    /// Frames started from the camera's previous result (unchanged or partly changed scene).
    pub warm_starts: AtomicU64,
    /// Of `warm_starts`: frames where part of the scene changed.
    pub partial_frames: AtomicU64,
    durations: Mutex<VecDeque<f64>>,
    /// Evaluations of the last jobs, with how each started.
    evaluations: Mutex<VecDeque<(Start, u64)>>,
}

const WINDOW: usize = 1000;

/// Values of the moment that go into a stats message beside the counters.
pub struct Gauges<'a> {
    pub daemon_id: &'a str,
    pub provider: &'a str,
    /// The model's `ProviderReport::to_json` (null before the model is loaded).
    pub provider_report: &'a serde_json::Value,
    pub queue_depth: usize,
    pub queue_bytes: usize,
    pub cameras: usize,
    pub connected: bool,
    pub started: Instant,
}

impl Stats {
    pub fn record_job(&self, ms: f64, evaluations: u64, start: Start) {
        self.processed.fetch_add(1, Ordering::Relaxed);
        if start != Start::Cold {
            self.warm_starts.fetch_add(1, Ordering::Relaxed);
        }
        if start == Start::Partial {
            self.partial_frames.fetch_add(1, Ordering::Relaxed);
        }
        let mut d = self.durations.lock().unwrap();
        if d.len() == WINDOW {
            d.pop_front();
        }
        d.push_back(ms);
        let mut e = self.evaluations.lock().unwrap();
        if e.len() == WINDOW {
            e.pop_front();
        }
        e.push_back((start, evaluations));
    }

    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// p50/p90/p99/max of the last 1000 job durations (ms).
    pub fn percentiles(&self) -> Option<[f64; 4]> {
        let mut v: Vec<f64> = self.durations.lock().unwrap().iter().copied().collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
        Some([at(0.5), at(0.9), at(0.99), *v.last().unwrap()])
    }

    pub fn snapshot(&self, g: &Gauges) -> serde_json::Value {
        let c = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let p = self.percentiles();
        let evals: Vec<(Start, u64)> = self.evaluations.lock().unwrap().iter().copied().collect();
        // mean evaluations of the last jobs, all and by how they started (null when there were none)
        let mean = |which: Option<Start>| -> Option<f64> {
            let v: Vec<u64> = evals.iter().filter(|(s, _)| which.is_none_or(|w| w == *s)).map(|(_, e)| *e).collect();
            (!v.is_empty()).then(|| v.iter().sum::<u64>() as f64 / v.len() as f64)
        };
        serde_json::json!({
            "daemon_id": g.daemon_id,
            "version": env!("CARGO_PKG_VERSION"),
            "received": c(&self.received),
            "processed": c(&self.processed),
            "dropped": c(&self.dropped),
            "errors": c(&self.errors),
            "evicted_frames": c(&self.evicted_frames),
            "evicted_cameras": c(&self.evicted_cameras),
            "internal_errors": c(&self.internal_errors),
            "control_errors": c(&self.control_errors),
            "outbox_dropped": c(&self.outbox_dropped),
            "outbox_resent": c(&self.outbox_resent),
            "in_progress": c(&self.in_progress),
            "warm_starts": c(&self.warm_starts),
            "queue_depth": g.queue_depth,
            "queue_bytes": g.queue_bytes,
            "cameras": g.cameras,
            "peers": c(&self.peers),
            "connected": g.connected,
            "duration_ms": p.map(|p| serde_json::json!({"p50": p[0], "p90": p[1], "p99": p[2], "max": p[3]})),
            "mean_evaluations": mean(None).unwrap_or(0.0),
            "mean_evaluations_by_start": {
                "cold": mean(Some(Start::Cold)),
                "previous": mean(Some(Start::Previous)),
                "partial": mean(Some(Start::Partial)),
            },
            "partial_frames": c(&self.partial_frames),
            "provider": g.provider,
            "provider_report": g.provider_report,
            "rss_bytes": crate::memory::current_rss(),
            "peak_rss_bytes": crate::memory::peak_rss(),
            "uptime_s": g.started.elapsed().as_secs(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_over_recorded_jobs() {
        let s = Stats::default();
        assert!(s.percentiles().is_none());
        for i in 1..=100 {
            let start = [Start::Cold, Start::Previous, Start::Partial, Start::Partial][i % 4];
            s.record_job(i as f64, [100, 5, 20, 30][i % 4], start);
        }
        let p = s.percentiles().unwrap();
        assert_eq!(p, [51.0, 90.0, 99.0, 100.0]);
        let g = Gauges {
            daemon_id: "d1",
            provider: "cpu",
            provider_report: &serde_json::json!({"provider": "cpu", "nodes_outside": 0}),
            queue_depth: 3,
            queue_bytes: 30,
            cameras: 4,
            connected: true,
            started: Instant::now(),
        };
        let snap = s.snapshot(&g);
        assert_eq!(snap["daemon_id"], "d1");
        assert_eq!(snap["processed"], 100);
        assert_eq!(snap["warm_starts"], 75);
        assert_eq!(snap["partial_frames"], 50);
        assert_eq!(snap["mean_evaluations_by_start"]["partial"], 25.0);
        assert_eq!(snap["mean_evaluations_by_start"]["cold"], 100.0);
        assert_eq!(snap["mean_evaluations"], 38.75);
        assert_eq!(snap["queue_depth"], 3);
        assert_eq!(snap["provider_report"]["nodes_outside"], 0);
    }
}
