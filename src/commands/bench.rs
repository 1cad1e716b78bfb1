//! `fuchun bench`: seconds per loss+gradient evaluation, achieved GFLOP/s against the CPU's measured FP32 peak,
//! peak memory, and the coarse-to-fine schedule against the classic single-scale recipe.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;

use super::common::ModelArgs;
use crate::imageio::{self, Limits};
use crate::imageio::fit_size as fit;
use crate::transfer::targets::{objective_inputs, StyleTargets, Weights};
use crate::transfer::{stylize, NoHooks, StylizeOptions};

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Longest sides to time one evaluation at.
    #[arg(long, value_delimiter = ',', default_values_t = [128usize, 256, 512])]
    pub sizes: Vec<usize>,
    /// Timed evaluations per size (after one warm-up); the median is reported.
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// Size for the schedule comparison (0 skips it).
    #[arg(long, default_value_t = 256)]
    pub schedule_size: usize,
    /// Iterations of the single-scale reference run (the classic recipe: 500 L-BFGS iterations at the target size).
    #[arg(long, default_value_t = 500)]
    pub schedule_iterations: usize,
    #[arg(long, default_value = "examples/tubingen.jpg")]
    pub content: PathBuf,
    #[arg(long, default_value = "examples/fuchun.jpg")]
    pub style: PathBuf,
    /// Print the figures as one JSON object as well.
    #[arg(long)]
    pub json: bool,
}

/// Peak resident memory of this process so far (VmHWM), bytes.
pub fn peak_rss() -> Option<u64> {
    read_status("VmHWM:")
}

/// Current resident memory (VmRSS), bytes.
pub fn current_rss() -> Option<u64> {
    read_status("VmRSS:")
}

fn read_status(key: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with(key))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// FP32 matrix-multiply throughput of this machine: one large sgemm per core, all cores at once (GFLOP/s).
pub fn sgemm_peak_gflops() -> f64 {
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let n = 1024usize;
    let run = |reps: usize| -> f64 {
        let t = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| {
                    let a = vec![1.0f32; n * n];
                    let b = vec![0.5f32; n * n];
                    let mut c = vec![0.0f32; n * n];
                    for _ in 0..reps {
                        // SAFETY: a, b, c are n×n row-major buffers.
                        unsafe {
                            matrixmultiply::sgemm(n, n, n, 1.0, a.as_ptr(), n as isize, 1, b.as_ptr(), n as isize, 1,
                                0.0, c.as_mut_ptr(), n as isize, 1);
                        }
                    }
                    std::hint::black_box(&c);
                });
            }
        });
        (2.0 * (n * n * n) as f64 * reps as f64 * threads as f64) / t.elapsed().as_secs_f64() / 1e9
    };
    run(1);
    run(4).max(run(4))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn run(args: &BenchArgs) -> Result<()> {
    let limits = Limits::default();
    let content = imageio::load_path(&args.content, &limits).with_context(|| format!("{}", args.content.display()))?;
    let style = imageio::load_path(&args.style, &limits).with_context(|| format!("{}", args.style.display()))?;
    let peak = sgemm_peak_gflops();
    let mut model = args.model.load()?;
    let m = model.manifest.clone();
    let weights = Weights::defaults(&m);
    println!("fuchun bench — model {} ({} {}, {} weights), provider {}, ONNX Runtime {}",
        m.dir.display(), m.architecture, m.pooling, m.weights.kind, model.provider, crate::engine::runtime::version());
    println!("FP32 sgemm peak (all cores): {peak:.1} GFLOP/s");
    println!("{:>6} {:>10} {:>12} {:>10} {:>9} {:>12}", "size", "pixels", "s/eval", "GFLOP/s", "% peak", "peak RSS MB");
    let mut rows = Vec::new();
    for &size in &args.sizes {
        let (w, h) = fit(content.width, content.height, size);
        let c = content.resize(w, h);
        let (sw, sh) = fit(style.width, style.height, size);
        let cf = model.features(&c.data, h, w)?;
        let sf = model.features(&style.resize(sw, sh).data, sh, sw)?;
        let st = StyleTargets::from_features(&m, &sf)?;
        let inputs = objective_inputs(&m, &cf, &st, &weights, &cf)?;
        let mut grad = vec![0.0f32; c.data.len()];
        model.evaluate(&c.data, h, w, &inputs, &mut grad, None)?;
        let mut times = Vec::new();
        for _ in 0..args.repeats.max(1) {
            let t = Instant::now();
            model.evaluate(&c.data, h, w, &inputs, &mut grad, None)?;
            times.push(t.elapsed().as_secs_f64());
        }
        let s = median(times);
        let gflops = m.objective_flops_per_pixel * (w * h) as f64 / s / 1e9;
        let rss = peak_rss().unwrap_or(0) as f64 / 1e6;
        println!("{:>6} {:>10} {:>12.3} {:>10.1} {:>8.1}% {:>12.0}", format!("{w}x{h}"), w * h, s, gflops, 100.0 * gflops / peak, rss);
        rows.push(serde_json::json!({"width": w, "height": h, "seconds_per_eval": s, "gflops": gflops,
            "percent_of_peak": 100.0 * gflops / peak, "peak_rss_bytes": peak_rss()}));
    }
    let mut schedule = serde_json::Value::Null;
    if args.schedule_size > 0 {
        let mut single = StylizeOptions::new(weights.clone());
        single.image_size = args.schedule_size;
        single.scales = vec![args.schedule_size];
        single.iterations = args.schedule_iterations;
        single.tol = 0.0;
        let t = Instant::now();
        let a = stylize(&mut model, &content, std::slice::from_ref(&style), &single, &mut NoHooks)?;
        let t_single = t.elapsed().as_secs_f64();
        let target = a.final_losses().total;
        // the default schedule (coarse-to-fine, default iterations and early stop at the coarse scales), its last
        // scale running until it reaches the classic recipe's loss (within the same iteration budget)
        let mut c2f = StylizeOptions::new(weights.clone());
        c2f.image_size = args.schedule_size;
        c2f.target_loss = Some(target);
        c2f.last_scale_early_stop = false;
        // coarse scales still end by early stop; the budget only bounds the last scale
        c2f.iterations = c2f.iterations.max(args.schedule_iterations);
        let t = Instant::now();
        let b = stylize(&mut model, &content, std::slice::from_ref(&style), &c2f, &mut NoHooks)?;
        let t_c2f = t.elapsed().as_secs_f64();
        let reached = b.final_losses().total <= target;
        println!(
            "schedule at {} px: single scale {} iterations → loss {:.4e} in {:.1} s ({} evaluations); \
             coarse-to-fine {:?} {} loss {:.4e} in {:.1} s ({} evaluations): {:.0}% of the single-scale time",
            args.schedule_size, args.schedule_iterations, target, t_single, a.evaluations(),
            c2f.resolved_scales()?, if reached { "reached" } else { "did NOT reach" }, b.final_losses().total,
            t_c2f, b.evaluations(), 100.0 * t_c2f / t_single
        );
        schedule = serde_json::json!({"size": args.schedule_size, "single_iterations": args.schedule_iterations,
            "single_seconds": t_single, "single_loss": target, "single_evaluations": a.evaluations(),
            "c2f_seconds": t_c2f, "c2f_loss": b.final_losses().total, "c2f_evaluations": b.evaluations(),
            "c2f_reached": reached, "ratio": t_c2f / t_single});
    }
    println!("peak RSS: {:.0} MB", peak_rss().unwrap_or(0) as f64 / 1e6);
    if args.json {
        println!("{}", serde_json::json!({"sgemm_peak_gflops": peak, "evaluations": rows, "schedule": schedule,
            "peak_rss_bytes": peak_rss(), "provider": model.provider.to_string()}));
    }
    Ok(())
}
