//! `fuchun stylize` on one image, end to end: progress bar, trace, intermediate images, the result.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

use super::args::StylizeArgs;
use crate::imageio::{self, Limits, Planar};
use crate::transfer::{stylize, EvalRecord, Hooks};

struct CliHooks {
    bar: Option<ProgressBar>,
    trace: Option<std::io::BufWriter<std::fs::File>>,
    trace_error: Option<std::io::Error>,
    save_every: usize,
    output: PathBuf,
    saved: Vec<PathBuf>,
}

impl Hooks for CliHooks {
    fn scale_start(&mut self, scale: usize, width: usize, height: usize, iterations: usize) {
        if let Some(b) = &self.bar {
            b.set_length(iterations as u64);
            b.set_position(0);
            b.set_prefix(format!("scale {} {width}x{height}", scale + 1));
        }
    }

    fn evaluation(&mut self, r: &EvalRecord) {
        if let Some(b) = &self.bar {
            let l = &r.losses;
            b.set_position(r.iteration as u64);
            b.set_message(format!("total {:.4e}  {}", l.total, l.summary()));
        }
        if let Some(t) = &mut self.trace {
            let l = &r.losses;
            // each layer's weighted loss (summing to its term), in the manifest's layer order
            let layers: serde_json::Map<String, serde_json::Value> =
                l.layers.iter().map(|(g, v)| (g.clone(), serde_json::json!(v))).collect();
            let mut line = serde_json::json!({
                "scale": r.scale, "width": r.width, "height": r.height, "iteration": r.iteration,
                "evaluation": r.evaluation, "total": l.total, "layers": layers, "elapsed_ms": r.elapsed_ms,
            });
            // each term's loss under its own name, as the manifest names it
            for (t, v) in &l.terms {
                line[t.as_str()] = serde_json::json!(v);
            }
            if let Err(e) = writeln!(t, "{line}") {
                self.trace_error.get_or_insert(e);
            }
        }
    }

    fn wants_image(&self, _scale: usize, iteration: usize) -> bool {
        self.save_every > 0 && iteration > 0 && iteration.is_multiple_of(self.save_every)
    }

    fn iteration(&mut self, scale: usize, iteration: usize, image: &Planar) -> Result<()> {
        let stem = self.output.file_stem().and_then(|s| s.to_str()).unwrap_or("out");
        let ext = self.output.extension().and_then(|s| s.to_str()).unwrap_or("png");
        let path = self.output.with_file_name(format!("{stem}_{}_{iteration:04}.{ext}", scale + 1));
        let mut img = image.clone();
        img.data.iter_mut().for_each(|v| *v = v.clamp(0.0, 1.0));
        imageio::save_path(&img, &path).with_context(|| format!("saving {}", path.display()))?;
        self.saved.push(path);
        Ok(())
    }
}

pub fn run(args: &StylizeArgs) -> Result<()> {
    let t0 = Instant::now();
    imageio::OutputFormat::from_path(&args.output)?;
    let limits = Limits::default();
    let content = imageio::load_path(&args.content, &limits)
        .with_context(|| format!("content image {}", args.content.display()))?;
    let (styles, mut model) = super::args::load_styles_and_model(args, (content.width, content.height))?;
    let opts = args.options(&model.manifest, &limits)?;
    let show_bar = !args.quiet && std::io::stderr().is_terminal();
    let bar = show_bar.then(|| {
        let b = ProgressBar::new(opts.iterations as u64);
        b.set_style(
            ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {elapsed} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        b
    });
    let trace = match &args.trace {
        Some(p) => Some(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("creating the trace file {}", p.display()))?,
        )),
        None => None,
    };
    if let Some(parent) = args.output.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    let mut hooks = CliHooks {
        bar,
        trace,
        trace_error: None,
        save_every: args.save_every,
        output: args.output.clone(),
        saved: Vec::new(),
    };
    let outcome = stylize(&mut model, &content, &styles, &opts, &mut hooks)?;
    if let Some(b) = &hooks.bar {
        b.finish_and_clear();
    }
    if let Some(mut t) = hooks.trace.take() {
        t.flush().context("writing the trace file")?;
    }
    if let Some(e) = hooks.trace_error {
        bail!("writing the trace file: {e}");
    }
    imageio::save_path(&outcome.image, &args.output).with_context(|| format!("saving {}", args.output.display()))?;
    let l = outcome.final_losses();
    println!(
        "wrote {} ({}x{}) in {:.1} s: {} evaluations over {} scale(s), provider {}, final loss {:.4e} ({})",
        args.output.display(),
        outcome.image.width,
        outcome.image.height,
        t0.elapsed().as_secs_f64(),
        outcome.evaluations(),
        outcome.scales.len(),
        model.provider,
        l.total,
        l.summary()
    );
    Ok(())
}
