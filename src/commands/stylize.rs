//! `fuchun stylize`: one image, end to end, from the command line.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use crate::engine::model::LAYER_GROUPS;
use crate::engine::Model;
use crate::imageio::{self, Limits, Planar};
use crate::settings::transfer::{Profile, FRAME_SEQUENCE, SINGLE_IMAGE};
use crate::settings::Runtime;
use crate::settings::{Door, Stream, Transfer};
use crate::transfer::temporal;
use crate::transfer::{stylize, EvalRecord, Hooks, StylizeOptions};

#[derive(Debug, Clone, Args)]
pub struct StylizeArgs {
    /// Content image (JPEG, PNG or WebP), or a frame sequence: a directory or a pattern such as 'frames/*.jpg'
    /// (then --output is a directory; see --temporal-weight).
    #[arg(long, short = 'c', value_name = "PATH")]
    pub content: PathBuf,
    /// Style image(s), comma-separated.
    #[arg(long, short = 's', value_name = "PATH[,PATH…]", value_delimiter = ',', required = true)]
    pub style: Vec<PathBuf>,
    /// Output image (.png or .jpg); for a frame sequence, a directory (one PNG per frame and frames.jsonl).
    #[arg(long, short = 'o', value_name = "PATH")]
    pub output: PathBuf,
    #[command(flatten)]
    pub model: Runtime,
    #[command(flatten)]
    pub opts: Transfer,
    /// Save the current image every N iterations (beside the output, as NAME_<scale>_<iteration>.EXT).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub save_every: usize,
    /// Write one JSON line per evaluation (scale, iteration, each term's loss, elapsed ms) to PATH.
    #[arg(long, value_name = "PATH")]
    pub trace: Option<PathBuf>,
    /// No progress bar.
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// Frame sequences: how consecutive frames are compared and used.
    #[command(flatten)]
    pub stream: Stream,
}

impl StylizeArgs {
    /// The profile of the run: a single image, or a frame sequence (which keeps the photo's palette).
    pub fn profile(&self) -> &'static Profile {
        if super::frames::is_sequence(&self.content) {
            &FRAME_SEQUENCE
        } else {
            &SINGLE_IMAGE
        }
    }

    /// The per-frame settings of a frame sequence.
    pub fn stream_settings(&self) -> Result<temporal::StreamSettings> {
        self.opts.validate(&Door::Cli)?;
        self.stream.settings(self.opts.temporal_weight(), &Door::Cli)
    }

    /// The transfer options of this run.
    pub fn options(&self, manifest: &crate::engine::Manifest, limits: &Limits) -> Result<StylizeOptions> {
        self.opts.options(manifest, self.profile(), limits, &Door::Cli)
    }
}

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
            b.set_message(format!(
                "total {:.4e}  content {:.3e} style {:.3e} shift {:.3e} hist {:.3e} tv {:.3e}",
                l.total, l.terms[0], l.terms[1], l.terms[2], l.terms[3], l.terms[4],
            ));
        }
        if let Some(t) = &mut self.trace {
            let l = &r.losses;
            // each layer's weighted loss (summing to its term), in the manifest's layer order
            let layers: serde_json::Map<String, serde_json::Value> =
                LAYER_GROUPS.iter().map(|g| (g.to_string(), serde_json::json!(l.layer_losses(g)))).collect();
            let line = serde_json::json!({
                "scale": r.scale, "width": r.width, "height": r.height, "iteration": r.iteration,
                "evaluation": r.evaluation, "total": l.total, "content": l.terms[0], "style": l.terms[1],
                "shift": l.terms[2], "hist": l.terms[3], "tv": l.terms[4], "temporal": l.terms[5], "layers": layers,
                "elapsed_ms": r.elapsed_ms,
            });
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

/// The style images and the model, loaded for contents of `content` size (its width, height): the sizes the run
/// will use are the TensorRT profile's and the warm-up's.
pub fn load_styles_and_model(args: &StylizeArgs, content: (usize, usize)) -> Result<(Vec<Planar>, Model)> {
    let limits = Limits::default();
    let mut styles = Vec::new();
    for s in &args.style {
        styles.push(imageio::load_path(s, &limits).with_context(|| format!("style image {}", s.display()))?);
    }
    let size = args.opts.image_size(args.profile());
    let scales = crate::transfer::schedule::scales_for(size, &args.opts.scales_at(size))?;
    let sizes = crate::transfer::schedule::expected_shapes(
        &scales,
        args.opts.style_scale,
        content,
        &styles.iter().map(|s| (s.width, s.height)).collect::<Vec<_>>(),
    );
    let model = args.model.load(&sizes)?;
    Ok((styles, model))
}

pub fn run(args: &StylizeArgs) -> Result<()> {
    if super::frames::is_sequence(&args.content) {
        return super::frames::run(args);
    }
    let t0 = Instant::now();
    imageio::OutputFormat::from_path(&args.output)?;
    let limits = Limits::default();
    let content = imageio::load_path(&args.content, &limits)
        .with_context(|| format!("content image {}", args.content.display()))?;
    let (styles, mut model) = load_styles_and_model(args, (content.width, content.height))?;
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
        "wrote {} ({}x{}) in {:.1} s: {} evaluations over {} scale(s), provider {}, final loss {:.4e} \
         (content {:.3e}, style {:.3e}, shift {:.3e}, hist {:.3e}, tv {:.3e})",
        args.output.display(),
        outcome.image.width,
        outcome.image.height,
        t0.elapsed().as_secs_f64(),
        outcome.evaluations(),
        outcome.scales.len(),
        model.provider,
        l.total,
        l.terms[0],
        l.terms[1],
        l.terms[2],
        l.terms[3],
        l.terms[4]
    );
    Ok(())
}
