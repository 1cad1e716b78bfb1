//! Counters and duration percentiles for the `<prefix>/stats` messages.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

#[derive(Default)]
pub struct Stats {
    pub received: AtomicU64,
    pub processed: AtomicU64,
    /// Replaced by a newer frame of the same camera, or inside the camera's minimum interval.
    pub dropped: AtomicU64,
    /// Rejected payloads, failed jobs, bad control messages.
    pub errors: AtomicU64,
    pub warm_starts: AtomicU64,
    durations: Mutex<VecDeque<f64>>,
    evaluations: Mutex<VecDeque<u64>>,
}

const WINDOW: usize = 1000;

impl Stats {
    pub fn record_job(&self, ms: f64, evaluations: u64, warm: bool) {
        self.processed.fetch_add(1, Ordering::Relaxed);
        if warm {
            self.warm_starts.fetch_add(1, Ordering::Relaxed);
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
        e.push_back(evaluations);
    }

    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
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

    /// `provider_report`: the model's `ProviderReport::to_json` (null before the model is loaded).
    pub fn snapshot(
        &self,
        queue_depth: usize,
        provider: &str,
        provider_report: &serde_json::Value,
        started: Instant,
    ) -> serde_json::Value {
        let p = self.percentiles();
        let evals: Vec<u64> = self.evaluations.lock().unwrap().iter().copied().collect();
        let mean_evals = if evals.is_empty() { 0.0 } else { evals.iter().sum::<u64>() as f64 / evals.len() as f64 };
        serde_json::json!({
            "received": self.received.load(Ordering::Relaxed),
            "processed": self.processed.load(Ordering::Relaxed),
            "dropped": self.dropped.load(Ordering::Relaxed),
            "errors": self.errors.load(Ordering::Relaxed),
            "warm_starts": self.warm_starts.load(Ordering::Relaxed),
            "queue_depth": queue_depth,
            "duration_ms": p.map(|p| serde_json::json!({"p50": p[0], "p90": p[1], "p99": p[2], "max": p[3]})),
            "mean_evaluations": mean_evals,
            "provider": provider,
            "provider_report": provider_report,
            "rss_bytes": crate::commands::bench::current_rss(),
            "peak_rss_bytes": crate::commands::bench::peak_rss(),
            "uptime_s": started.elapsed().as_secs(),
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
            s.record_job(i as f64, 10, i % 2 == 0);
        }
        let p = s.percentiles().unwrap();
        assert_eq!(p, [51.0, 90.0, 99.0, 100.0]);
        let report = serde_json::json!({"provider": "cpu", "nodes_outside": 0});
        let snap = s.snapshot(3, "cpu", &report, Instant::now());
        assert_eq!(snap["processed"], 100);
        assert_eq!(snap["warm_starts"], 50);
        assert_eq!(snap["queue_depth"], 3);
        assert_eq!(snap["provider_report"]["nodes_outside"], 0);
    }
}
