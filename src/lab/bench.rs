//! `fuchun bench`: the four performance figures with their targets — [1] seconds per loss+gradient evaluation and
//! GFLOP/s against the CPU's measured FP32 sgemm peak, [2] peak memory at the largest size with the L-BFGS history
//! (and the optimiser's own cost per step), [3] time to the classic recipe's loss with the default schedule, [4]
//! evaluations of a warm-started repeated frame against a cold one — and optionally the histogram re-matching
//! interval's effect on time and exact loss.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};

pub use super::bench_args::BenchArgs;
use super::child::child_stylize_peak_rss;
use super::clip::Motion;
use super::report::verdict;
use crate::engine::Model;
use crate::imageio::fit_size as fit;
use crate::imageio::{self, Limits, Planar};
use crate::memory::{current_rss, peak_rss};
use crate::transfer::histmatch;
use crate::transfer::inputs::{objective_inputs, Weights};
use crate::transfer::targets::StyleTargets;
use crate::transfer::{stylize, EvalRecord, Hooks, Init, NoHooks, StylizeOptions};

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
                            matrixmultiply::sgemm(
                                n,
                                n,
                                n,
                                1.0,
                                a.as_ptr(),
                                n as isize,
                                1,
                                b.as_ptr(),
                                n as isize,
                                1,
                                0.0,
                                c.as_mut_ptr(),
                                n as isize,
                                1,
                            );
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

/// A target line: the figure, the target and whether it is met.
/// What every figure of the bench works on.
struct Run<'a> {
    args: &'a BenchArgs,
    model: Model,
    content: Planar,
    style: Planar,
    weights: Weights,
    figures: serde_json::Map<String, serde_json::Value>,
}

impl Run<'_> {
    /// [1] seconds per evaluation and GFLOP/s against the measured peak, at each size: the table's rows.
    fn speed(&mut self, peak: f64) -> Result<Vec<serde_json::Value>> {
        let Run { args, model, content, style, weights, figures } = self;
        let m = model.manifest.clone();
        println!(
            "{:>8} {:>8} {:>9} {:>9} {:>9} {:>9} {:>8} {:>12}",
            "size", "pixels", "graph s", "match s", "s/eval", "GFLOP/s", "% peak", "peak RSS MB"
        );
        let mut rows = Vec::new();
        let mut last_percent = 0.0;
        for &size in &args.sizes {
            let (w, h) = if args.content_aspect { fit(content.width, content.height, size) } else { (size, size) };
            let c = content.resize(w, h);
            let (sw, sh) = fit(style.width, style.height, size);
            let cf = model.features(&c.data, h, w)?;
            let sf = model.features(&style.resize(sw, sh).data, sh, sw)?;
            let st = StyleTargets::from_features(&m, &sf)?;
            let mut inputs = objective_inputs(&m, (w, h), &cf, &st, weights, &cf)?;
            drop((cf, sf)); // as stylize does: only the targets stay while optimising
            let mut grad = vec![0.0f32; c.data.len()];
            let (mut graph, mut matching) = (Vec::new(), Vec::new());
            for i in 0..=args.repeats.max(1) {
                // as in a run: prelude + matching before, matching from the outputs after the graph
                let t = Instant::now();
                let (_, secs) = histmatch::evaluate(model, &c.data, h, w, &mut inputs, &mut grad, &st, true)?;
                let total = t.elapsed().as_secs_f64();
                if i > 0 {
                    // the first run is the warm-up
                    graph.push(total - secs);
                    matching.push(secs);
                }
            }
            let (g, mt) = (median(graph), median(matching));
            let s = g + if args.hist_every > 0 { mt / args.hist_every as f64 } else { 0.0 };
            let gflops = m.objective_flops_per_pixel * (w * h) as f64 / s / 1e9;
            let rss = peak_rss().unwrap_or(0) as f64 / 1e6;
            last_percent = 100.0 * gflops / peak;
            println!(
                "{:>8} {:>8} {:>9.3} {:>9.3} {:>9.3} {:>9.1} {:>7.1}% {:>12.0}",
                format!("{w}x{h}"),
                w * h,
                g,
                mt,
                s,
                gflops,
                last_percent,
                rss
            );
            rows.push(serde_json::json!({"width": w, "height": h, "graph_seconds": g, "match_seconds": mt,
                "seconds_per_eval": s, "gflops": gflops, "percent_of_peak": last_percent, "peak_rss_bytes": peak_rss()}));
        }
        if !args.sizes.is_empty() {
            println!(
                "[1] speed: {last_percent:.0}% of the sgemm peak at the largest size (target ≥ 85%): {}",
                verdict(last_percent >= 85.0)
            );
            figures.insert("percent_of_peak".into(), last_percent.into());
        }
        Ok(rows)
    }

    /// [2] peak memory of `fuchun stylize` at the largest size, and the optimiser's own cost per step.
    fn memory(&mut self) -> Result<()> {
        let Run { args, model, content, style, weights, figures } = self;
        // [2] memory: `fuchun stylize` at the largest size (default coarse-to-fine schedule, a few iterations per scale,
        // so the L-BFGS history is full) in a child process, whose peak RSS is what a user's run needs
        let mem_size = args.sizes.iter().copied().max().unwrap_or(512);
        if args.memory_iterations > 0 {
            let (w, h) =
                if args.content_aspect { fit(content.width, content.height, mem_size) } else { (mem_size, mem_size) };
            let (rss, secs) = child_stylize_peak_rss(args, &content.resize(w, h), mem_size, &[])?;
            println!(
                "[2] memory: peak RSS {:.0} MB of `fuchun stylize` at {w}x{h} ({} iterations per scale, {secs:.0} s) \
                      (target ≤ 1200 MB): {}",
                rss / 1e6,
                args.memory_iterations,
                verdict(rss <= 1200e6)
            );
            figures.insert("stylize_peak_rss_bytes".into(), (rss as u64).into());
            // the optimiser's own cost per step, in this process, at the same size
            let mut o = StylizeOptions::new(weights.clone());
            o.image_size = mem_size;
            o.scales = vec![mem_size];
            o.iterations = args.memory_iterations;
            o.tol = 0.0;
            o.hist_every = args.hist_every;
            let r = stylize(model, &content.resize(w, h), std::slice::from_ref(style), &o, &mut NoHooks)?;
            let sc = &r.scales[0];
            let per_eval = sc.eval_seconds / sc.evaluations.max(1) as f64;
            let opt_per_iter = sc.optimizer_seconds / sc.iterations.max(1) as f64;
            println!(
                "    optimiser's own cost: {:.1} ms per iteration = {:.2}% of an evaluation ({:.3} s) (target < 2%): {}",
                opt_per_iter * 1e3,
                100.0 * opt_per_iter / per_eval,
                per_eval,
                verdict(opt_per_iter < 0.02 * per_eval)
            );
            figures.insert("optimizer_percent_of_eval".into(), (100.0 * opt_per_iter / per_eval).into());
        }
        Ok(())
    }

    /// [3] time to the classic recipe's loss with the default schedule.
    fn schedule(&mut self) -> Result<()> {
        let Run { args, model, content, style, weights, figures } = self;
        // [3] time to the classic recipe's loss
        if args.schedule_size > 0 {
            let mut single = StylizeOptions::new(weights.clone());
            single.image_size = args.schedule_size;
            single.scales = vec![args.schedule_size];
            single.iterations = args.schedule_evaluations;
            single.max_evaluations = Some(args.schedule_evaluations);
            single.tol = 0.0;
            single.hist_every = args.hist_every;
            single.exact_losses = true;
            let t = Instant::now();
            let a = stylize(model, content, std::slice::from_ref(style), &single, &mut NoHooks)?;
            let t_single = t.elapsed().as_secs_f64();
            let target = a.final_losses().total;
            // the default schedule (coarse-to-fine, early stop at the coarse scales), its last scale running until it
            // reaches the classic recipe's loss (within the same iteration budget)
            let mut c2f = StylizeOptions::new(weights.clone());
            c2f.image_size = args.schedule_size;
            c2f.target_loss = Some(target);
            c2f.last_scale_early_stop = false;
            c2f.iterations = c2f.iterations.max(args.schedule_evaluations);
            c2f.hist_every = args.hist_every;
            c2f.exact_losses = true;
            let t = Instant::now();
            let b = stylize(model, content, std::slice::from_ref(style), &c2f, &mut NoHooks)?;
            let t_c2f = t.elapsed().as_secs_f64();
            let reached = b.final_losses().total <= target;
            let exact = |o: &crate::transfer::Outcome| {
                o.scales.last().and_then(|s| s.exact.as_ref()).map(|l| l.total).unwrap_or(f64::NAN)
            };
            println!(
                "[3] schedule at {} px: classic (single scale, {} L-BFGS iterations) loss {:.4e} (exact {:.4e}) in {:.1} s, \
                 {} evaluations; default {:?} {} it: loss {:.4e} (exact {:.4e}) in {:.1} s, {} evaluations: {:.2}x faster \
                 (target ≥ 3x): {}",
                args.schedule_size, a.scales[0].iterations, target, exact(&a), t_single, a.evaluations(),
                c2f.resolved_scales()?, if reached { "reached" } else { "did NOT reach" }, b.final_losses().total,
                exact(&b), t_c2f, b.evaluations(), t_single / t_c2f, verdict(reached && t_single / t_c2f >= 3.0)
            );
            figures.insert(
                "schedule".into(),
                serde_json::json!({"size": args.schedule_size,
                "single_iterations": a.scales[0].iterations, "single_seconds": t_single, "single_loss": target,
                "single_exact_loss": exact(&a), "single_evaluations": a.evaluations(), "c2f_seconds": t_c2f,
                "c2f_loss": b.final_losses().total, "c2f_exact_loss": exact(&b), "c2f_evaluations": b.evaluations(),
                "c2f_reached": reached, "speedup": t_single / t_c2f}),
            );
        }
        Ok(())
    }

    /// [4] a repeated camera frame warm-started from the previous result against a cold one.
    fn warm(&mut self) -> Result<()> {
        let Run { args, model, content, style, weights, figures } = self;
        // [4] camera frames: a repeated frame warm-started from the previous result, as the daemon does
        if args.warm_size > 0 {
            let mut cold = StylizeOptions::new(weights.clone());
            cold.image_size = args.warm_size;
            cold.hist_every = args.hist_every;
            let a = stylize(model, content, std::slice::from_ref(style), &cold, &mut NoHooks)?;
            let mut warm = cold.clone();
            warm.init = Init::Image(a.image.clone());
            warm.scales = vec![args.warm_size];
            warm.target_loss = Some(a.final_losses().total);
            let b = stylize(model, content, std::slice::from_ref(style), &warm, &mut NoHooks)?;
            let ratio = b.evaluations() as f64 / a.evaluations().max(1) as f64;
            println!(
                "[4] warm start at {} px: cold frame {} evaluations, repeated frame {} evaluations = {:.2} of cold \
                      (target ≤ 0.33): {}",
                args.warm_size,
                a.evaluations(),
                b.evaluations(),
                ratio,
                verdict(ratio <= 1.0 / 3.0)
            );
            figures.insert(
                "warm".into(),
                serde_json::json!({"size": args.warm_size, "cold_evaluations": a.evaluations(),
                "warm_evaluations": b.evaluations(), "ratio": ratio}),
            );
        }
        Ok(())
    }

    /// [5] camera streams: partly changed frames, flicker, scene changes.
    fn stream(&mut self) -> Result<()> {
        let Run { args, model, style, weights, figures, .. } = self;
        // [5] camera streams: partly changed frames, flicker, scene changes
        if args.stream_size > 0 {
            let mut opts = StylizeOptions::new(weights.clone());
            opts.hist_every = args.hist_every;
            let several = args.stream_clip.len() > 1;
            for &motion in &args.stream_clip {
                // with several clips, each one's strip and frames go beside the named ones, suffixed by the clip
                let suffixed = |p: &Path| -> PathBuf {
                    if !several {
                        return p.to_path_buf();
                    }
                    let stem = p.file_stem().map_or_else(Default::default, |s| s.to_string_lossy().into_owned());
                    let ext = p.extension().map_or_else(String::new, |e| format!(".{}", e.to_string_lossy()));
                    p.with_file_name(format!("{stem}_{}{ext}", motion.as_str()))
                };
                let (strip, clip_dir) =
                    (args.stream_strip.as_deref().map(suffixed), args.stream_clip_dir.as_deref().map(suffixed));
                let a = super::stream_bench::StreamArgs {
                    motion,
                    size: args.stream_size,
                    frames: args.stream_frames,
                    background: &args.content,
                    object: &args.stream_object,
                    strip: strip.as_deref(),
                    clip_dir: clip_dir.as_deref(),
                    cold_frames: args.stream_cold_frames,
                    iterations: args.stream_iterations,
                    compare_motion: args.stream_compare_motion,
                    palette: args.stream_palette.unwrap_or(crate::transfer::temporal::STREAM_PALETTE),
                    palette_finish: args
                        .stream_palette_finish
                        .unwrap_or(crate::settings::transfer::CAMERA.palette_finish),
                };
                let key = if motion == Motion::Crossing {
                    "stream".to_string()
                } else {
                    format!("stream_{}", motion.as_str())
                };
                figures.insert(key, super::stream_bench::figures(model, style, &opts, &a)?);
            }
        }
        Ok(())
    }

    /// Optional: the histogram re-matching interval's effect on time and exact loss.
    fn compare_hist_every(&mut self) -> Result<()> {
        let Run { args, model, content, style, weights, figures } = self;
        // optional: how often the histogram targets need re-matching (quality = exact final loss)
        if !args.compare_hist_every.is_empty() {
            println!(
                "histogram re-matching interval at {} px, single scale, {} iterations, no early stop:",
                args.compare_size, args.compare_iterations
            );
            println!(
                "{:>10} {:>8} {:>12} {:>12} {:>12} {:>10}",
                "hist_every", "evals", "seconds", "s/eval", "loss", "exact loss"
            );
            let mut cmp = Vec::new();
            for &k in &args.compare_hist_every {
                let mut o = StylizeOptions::new(weights.clone());
                o.image_size = args.compare_size;
                o.scales = vec![args.compare_size];
                o.iterations = args.compare_iterations;
                o.tol = 0.0;
                o.hist_every = k;
                o.exact_losses = true;
                let mut curve = Curve::default();
                let t = Instant::now();
                let r = stylize(model, content, std::slice::from_ref(style), &o, &mut curve)?;
                let secs = t.elapsed().as_secs_f64();
                let sc = &r.scales[0];
                let exact = sc.exact.as_ref().map(|l| l.total).unwrap_or(f64::NAN);
                println!(
                    "{:>10} {:>8} {:>12.1} {:>12.3} {:>12.4e} {:>10.4e}",
                    k,
                    sc.evaluations,
                    secs,
                    sc.eval_seconds / sc.evaluations.max(1) as f64,
                    sc.last.total,
                    exact
                );
                if let Some(dir) = &args.curves {
                    std::fs::create_dir_all(dir)?;
                    let path = dir.join(format!("hist_every_{k}.csv"));
                    let mut text = String::from("evaluation,total\n");
                    for (e, l) in &curve.0 {
                        text.push_str(&format!("{e},{l}\n"));
                    }
                    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
                }
                cmp.push(serde_json::json!({"hist_every": k, "evaluations": sc.evaluations, "seconds": secs,
                    "loss": sc.last.total, "exact_loss": exact}));
            }
            figures.insert("hist_every".into(), cmp.into());
        }
        Ok(())
    }
}

pub fn run(args: &BenchArgs) -> Result<()> {
    let peers = super::peers::PeerRun {
        peers: &args.peers,
        model: &args.model,
        sizes: &args.sizes,
        repeats: args.repeats,
        content: &args.content,
        style: &args.style,
    };
    if super::peers::dispatch(&peers)? {
        return Ok(());
    }
    let limits = Limits::default();
    let content = imageio::load_path(&args.content, &limits).with_context(|| format!("{}", args.content.display()))?;
    let style = imageio::load_path(&args.style, &limits).with_context(|| format!("{}", args.style.display()))?;
    let rust_peak = sgemm_peak_gflops();
    let ort_peak = super::peak::onnxruntime_matmul_gflops(&args.model.cli_options()?, 2048, 5)?;
    let peak = rust_peak.max(ort_peak);
    // every run of the bench fits in a square of its largest size (the TensorRT profile's max)
    let sizes: Vec<[usize; 2]> = args
        .sizes
        .iter()
        .chain([&args.schedule_size, &args.warm_size, &args.compare_size, &args.stream_size])
        .filter(|s| **s > 0)
        .map(|&s| [s, s])
        .collect();
    let model = args.model.load(&sizes)?;
    let load_rss = current_rss().unwrap_or(0) as f64 / 1e6;
    let m = &model.manifest;
    println!(
        "fuchun bench — model {} ({} {}, {} weights), provider {}, ONNX Runtime {}",
        m.dir.display(),
        m.architecture,
        m.pooling,
        m.weights.kind,
        model.provider_report().summary(),
        crate::engine::runtime::version()
    );
    println!(
        "FP32 matrix-multiply peak: {peak:.1} GFLOP/s, the best of ONNX Runtime's MatMul (2048³, MLAS, the \
              model's threads) {ort_peak:.1} and a Rust sgemm (1024³ per core, all cores) {rust_peak:.1}"
    );
    println!("RSS after loading the model: {load_rss:.0} MB");
    println!("hist_every = {} (histogram targets re-matched every {} evaluation(s))", args.hist_every, args.hist_every);
    let weights = Weights::defaults(m);
    let mut r = Run { args, model, content, style, weights, figures: serde_json::Map::new() };
    let rows = r.speed(peak)?;
    r.memory()?;
    r.schedule()?;
    r.warm()?;
    r.stream()?;
    r.compare_hist_every()?;
    super::kiosk_bench::run(r.args, &r.content, &mut r.figures)?;
    println!("peak RSS: {:.0} MB", peak_rss().unwrap_or(0) as f64 / 1e6);
    if args.json {
        println!(
            "{}",
            serde_json::json!({"sgemm_peak_gflops": peak, "onnxruntime_matmul_gflops": ort_peak,
            "rust_sgemm_gflops": rust_peak, "evaluations": rows, "figures": r.figures,
            "peak_rss_bytes": peak_rss(), "provider": r.model.provider.to_string(),
            "provider_report": r.model.provider_report().to_json(), "hist_every": args.hist_every})
        );
    }
    Ok(())
}

/// Loss after every evaluation.
#[derive(Default)]
struct Curve(Vec<(usize, f64)>);

impl Hooks for Curve {
    fn evaluation(&mut self, rec: &EvalRecord) {
        self.0.push((rec.evaluation, rec.losses.total));
    }
}
