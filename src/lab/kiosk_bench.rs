//! `fuchun bench --kiosk 1024x1024,1920x1080,…`, figure [6]: peak RSS and seconds per evaluation of `fuchun
//! stylize` at kiosk sizes in a child process (one scale at the full size, a few iterations), under a memory budget
//! (tiled wherever the whole image does not fit: `transfer::tiled`) and, with `--kiosk-whole`, without one, side
//! by side. Slow on a CPU (minutes per evaluation at 1920×1080 on two cores): not part of the default run.

use anyhow::{bail, Context, Result};

use super::bench_args::BenchArgs;
use super::child::child_stylize_peak_rss;
use crate::engine::runtime::parse_shape;
use crate::imageio::Planar;
use crate::transfer::tiled::budget;

/// One row of [6].
struct Row {
    label: String,
    rss_mb: f64,
    seconds_per_eval: f64,
    evaluations: usize,
}

/// Seconds per evaluation from a `--trace` file: the time between the first evaluation's end and the last's over
/// the evaluations between (the setup — model, style targets, content activations — left out).
fn per_evaluation(trace: &str) -> Result<(f64, usize)> {
    let times: Vec<f64> = trace
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| -> Result<f64> {
            let v: serde_json::Value = serde_json::from_str(l)?;
            v["elapsed_ms"].as_f64().context("a trace line without elapsed_ms")
        })
        .collect::<Result<_>>()?;
    if times.len() < 2 {
        bail!("the run made {} evaluation(s): at least two are needed to time one", times.len());
    }
    Ok(((times[times.len() - 1] - times[0]) / 1e3 / (times.len() - 1) as f64, times.len()))
}

/// [6]: the sizes of `--kiosk`, tiled under `--kiosk-budget` and (with `--kiosk-whole`) whole.
pub fn run(args: &BenchArgs, content: &Planar, figures: &mut serde_json::Map<String, serde_json::Value>) -> Result<()> {
    if args.kiosk.is_empty() {
        return Ok(());
    }
    let m = crate::engine::Manifest::load(&args.model.cli_model_dir()?)?;
    let mut rows = Vec::new();
    for spec in &args.kiosk {
        let [h, w] = parse_shape(spec).with_context(|| format!("--kiosk {spec}"))?;
        let img = content.resize(w, h);
        let longest = w.max(h);
        let mut runs = vec![(format!("{w}x{h} tiled, --max-memory {}", args.kiosk_budget), Some(args.kiosk_budget))];
        if args.kiosk_whole {
            runs.push((format!("{w}x{h} whole"), None));
        }
        for (label, budget) in runs {
            let plan = budget::choose(&m, h, w, 10, budget)?;
            let trace = std::env::temp_dir().join(format!("fuchun-kiosk-{}.jsonl", std::process::id()));
            let mut extra: Vec<String> = ["--scales", &longest.to_string(), "--iterations"]
                .iter()
                .map(|s| s.to_string())
                .chain([args.kiosk_iterations.to_string(), "--trace".into(), trace.display().to_string()])
                .collect();
            if let Some(b) = budget {
                extra.extend(["--max-memory".to_string(), b.to_string()]);
            }
            let (rss, _) = child_stylize_peak_rss(args, &img, longest, &extra)?;
            let (spe, n) = per_evaluation(&std::fs::read_to_string(&trace).context("reading the run's trace")?)?;
            let _ = std::fs::remove_file(&trace);
            let label = match plan.tile {
                Some(t) => format!("{label} (tile {t}, history {})", plan.history),
                None => format!("{label} (whole, history {})", plan.history),
            };
            println!("[6] {label}: peak RSS {:.0} MB, {spe:.1} s per evaluation ({n} evaluations)", rss / 1e6);
            rows.push(Row { label, rss_mb: rss / 1e6, seconds_per_eval: spe, evaluations: n });
        }
    }
    figures.insert(
        "kiosk".into(),
        rows.iter()
            .map(|r| {
                serde_json::json!({"run": r.label, "peak_rss_mb": r.rss_mb, "seconds_per_evaluation": r.seconds_per_eval,
                    "evaluations": r.evaluations})
            })
            .collect::<Vec<_>>()
            .into(),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_per_evaluation_leave_the_setup_out() {
        let t = "{\"elapsed_ms\": 5000}\n{\"elapsed_ms\": 7000}\n{\"elapsed_ms\": 9000}\n";
        assert_eq!(per_evaluation(t).unwrap(), (2.0, 3));
        assert!(per_evaluation("{\"elapsed_ms\": 5000}\n").is_err());
    }
}
