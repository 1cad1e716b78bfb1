//! `fuchun stylize`: one image, end to end, from the command line.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use super::common::ModelArgs;
use crate::engine::model::LAYER_GROUPS;
use crate::engine::Model;
use crate::imageio::{self, Limits, Planar};
use crate::transfer::temporal;
use crate::transfer::{stylize, EvalRecord, Hooks, Init, LayerGroup, Optimizer, StylizeOptions, Weights};

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
    pub model: ModelArgs,
    #[command(flatten)]
    pub opts: TransferArgs,
    /// Save the current image every N iterations (beside the output, as NAME_<scale>_<iteration>.EXT).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub save_every: usize,
    /// Write one JSON line per evaluation (scale, iteration, each term's loss, elapsed ms) to PATH.
    #[arg(long, value_name = "PATH")]
    pub trace: Option<PathBuf>,
    /// No progress bar.
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// Frame sequences (--content a directory or 'dir/*.jpg', --output a directory): weight of the temporal term
    /// that holds the parts of a frame where the scene did not change to the previous result (0: none).
    #[arg(long, default_value_t = temporal::DEFAULT_TEMPORAL_WEIGHT, value_name = "W")]
    pub temporal_weight: f32,
    /// Frame sequences: every frame a cold run (no warm start, no temporal term).
    #[arg(long)]
    pub no_temporal: bool,
    /// Frame sequences: a pixel changed when its blurred luminance differs by more than this (0–1).
    #[arg(long, value_name = "T")]
    pub change_threshold: Option<f32>,
    /// Frame sequences: width (pixels) of the soft border between held and repainted parts.
    #[arg(long, value_name = "PX")]
    pub feather_px: Option<usize>,
    /// Frame sequences: above this changed fraction a frame is a new scene (cold run).
    #[arg(long, value_name = "F")]
    pub scene_change: Option<f32>,
    /// Frame sequences: search radius (pixels) of the motion search that carries the previous result along with
    /// what moved (0: none).
    #[arg(long, default_value_t = temporal::DEFAULT_MOTION_PX, value_name = "PX")]
    pub motion_px: usize,
    /// Frame sequences: evaluation budget of a frame started from the previous one.
    #[arg(long, default_value_t = temporal::DEFAULT_MAX_EVALUATIONS, value_name = "N")]
    pub frame_evaluations: usize,
}

impl StylizeArgs {
    /// The per-frame settings of a frame sequence.
    pub fn stream_settings(&self) -> Result<temporal::StreamSettings> {
        let mut s = temporal::StreamSettings::new(self.temporal_weight);
        if !(self.temporal_weight.is_finite() && self.temporal_weight >= 0.0) {
            bail!("--temporal-weight must be a non-negative number, got {}", self.temporal_weight);
        }
        if self.frame_evaluations == 0 {
            bail!("--frame-evaluations must be at least 1");
        }
        s.enabled = !self.no_temporal;
        s.max_evaluations = self.frame_evaluations;
        if self.motion_px > 64 {
            bail!("--motion-px must be at most 64, got {}", self.motion_px);
        }
        s.motion_px = self.motion_px;
        if let Some(t) = self.change_threshold {
            s.change.threshold = t;
        }
        if let Some(f) = self.scene_change {
            s.change.scene_change = f;
        }
        if let Some(f) = self.feather_px {
            s.change.feather_px = f;
        }
        s.change.validate().map_err(|e| anyhow::anyhow!("--change-threshold/--scene-change/--feather-px: {e}"))?;
        Ok(s)
    }
}

/// The transfer settings (shared by `stylize`, `bench` and the daemon's named styles).
#[derive(Debug, Clone, Args)]
pub struct TransferArgs {
    /// Longest side of the output in pixels.
    #[arg(long, default_value_t = 512)]
    pub image_size: usize,
    /// Coarse-to-fine scales (longest side), e.g. 128,256,512; default: 128 doubling up to --image-size.
    #[arg(long, value_delimiter = ',')]
    pub scales: Vec<usize>,
    /// Iterations at the coarsest scale (each finer scale: --taper times the previous one's).
    #[arg(long, default_value_t = 200)]
    pub iterations: usize,
    /// Iterations of each scale over the next coarser one's (1: every scale --iterations).
    #[arg(long, default_value_t = 1.0)]
    pub taper: f32,
    /// Early stop: relative loss decrease over --tol-window iterations below this (0 disables).
    #[arg(long, default_value_t = 1e-2)]
    pub tol: f64,
    /// Window of the early stop, in iterations.
    #[arg(long, default_value_t = 10)]
    pub tol_window: usize,
    /// Re-match the histogram loss's targets to the current image every N evaluations (0: once per scale).
    #[arg(long, default_value_t = crate::transfer::schedule::DEFAULT_HIST_EVERY)]
    pub hist_every: usize,
    /// Content term weight (default: the model's, see manifest.json).
    #[arg(long)]
    pub content_weight: Option<f32>,
    /// Style (Gram) term weight.
    #[arg(long)]
    pub style_weight: Option<f32>,
    /// Long-range consistency (shifted Gram) term weight.
    #[arg(long)]
    pub shift_weight: Option<f32>,
    /// Histogram term weight.
    #[arg(long)]
    pub hist_weight: Option<f32>,
    /// Total-variation weight.
    #[arg(long)]
    pub tv_weight: Option<f32>,
    /// How strongly the style paints over the content: multiplies the style, long-range and histogram weights
    /// (2: twice as stylised; 0.5: more of the photo).
    #[arg(long, default_value_t = 1.0)]
    pub strength: f32,
    /// Content layers and their weights, e.g. `relu4_2` or `relu3_2:0.3,relu4_2` (default: the model's).
    #[arg(long, value_name = "LAYER[:W],…")]
    pub content_layers: Option<String>,
    /// Style (Gram) layers and weights, e.g. `relu1_1,relu2_1:0.5,relu3_1` (weights normalised to sum 1;
    /// layers not named are off). Default: the model's, equal weights.
    #[arg(long, value_name = "LAYER[:W],…")]
    pub style_layers: Option<String>,
    /// Long-range (shifted Gram) layers and weights.
    #[arg(long, value_name = "LAYER[:W],…")]
    pub shift_layers: Option<String>,
    /// Histogram layers and weights.
    #[arg(long, value_name = "LAYER[:W],…")]
    pub hist_layers: Option<String>,
    /// Raw per-layer losses instead of each divided by its target's mean square (the model's old default
    /// term weights then apply).
    #[arg(long)]
    pub no_layer_norm: bool,
    /// Weights of the style images, comma-separated (normalised to sum 1). Default: equal.
    #[arg(long, value_delimiter = ',')]
    pub style_blend_weights: Vec<f32>,
    /// Style images are resized so that their longest side is this factor × the longest side of the scale being
    /// optimised (each coarse-to-fine scale gets its own style targets).
    #[arg(long, default_value_t = 1.0)]
    pub style_scale: f32,
    /// Initial image: content, noise, or a PATH.
    #[arg(long, default_value = "content")]
    pub init: String,
    /// lbfgs or adam.
    #[arg(long, default_value = "lbfgs", value_parser = ["lbfgs", "adam"])]
    pub optimizer: String,
    /// L-BFGS history size (memory: 2 × N × 3 × pixels floats).
    #[arg(long, default_value_t = 10)]
    pub lbfgs_history: usize,
    /// Adam learning rate (image in [0,1]).
    #[arg(long, default_value_t = 0.02)]
    pub learning_rate: f32,
    /// Keep the content's colours: the stylised luminance with the content's chroma (YCbCr), after the transfer.
    #[arg(long)]
    pub original_colors: bool,
    /// The content's colours during the transfer: style (carried into the painting's colours first, so that
    /// the scene is kept in the painting's palette) or content (the photo's own; the style must repaint them).
    /// Default: style for a single image, content for a frame sequence (see `temporal::STREAM_PALETTE`).
    #[arg(long, value_name = "style|content")]
    pub palette: Option<crate::transfer::Palette>,
    /// Luminance-only transfer (Gatys et al. 2017): the style's luminance, matched to the content's mean and
    /// variance, is transferred onto the content's luminance; the result keeps the content's colours.
    #[arg(long)]
    pub luminance_only: bool,
    /// Seed for noise initialisation.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl TransferArgs {
    pub fn options(&self, manifest: &crate::engine::Manifest, limits: &Limits) -> Result<StylizeOptions> {
        let mut w = if self.no_layer_norm { Weights::raw_defaults(manifest) } else { Weights::defaults(manifest) };
        let given = [self.content_weight, self.style_weight, self.shift_weight, self.hist_weight, self.tv_weight, None];
        w.set_terms(given, &|t| format!("--{t}-weight"))?;
        w.set_strength(self.strength).context("--strength")?;
        for (g, spec, flag) in [
            (LayerGroup::Content, &self.content_layers, "--content-layers"),
            (LayerGroup::Style, &self.style_layers, "--style-layers"),
            (LayerGroup::Shift, &self.shift_layers, "--shift-layers"),
            (LayerGroup::Hist, &self.hist_layers, "--hist-layers"),
        ] {
            if let Some(spec) = spec {
                w.select_layers(manifest, g, spec).with_context(|| flag.to_string())?;
            }
        }
        let mut o = StylizeOptions::new(w);
        o.image_size = self.image_size;
        o.scales = self.scales.clone();
        o.iterations = self.iterations;
        o.taper = crate::transfer::schedule::check_taper(self.taper).context("--taper")?;
        o.tol = self.tol;
        o.tol_window = self.tol_window;
        o.hist_every = self.hist_every;
        o.style_blend = self.style_blend_weights.clone();
        if !(self.style_scale > 0.0 && self.style_scale.is_finite()) {
            bail!("--style-scale must be positive, got {}", self.style_scale);
        }
        o.style_scale = self.style_scale;
        o.init = match self.init.as_str() {
            "content" => Init::Content,
            "noise" | "random" => Init::Noise,
            path => Init::Image(imageio::load_path(Path::new(path), limits).with_context(|| format!("--init {path}"))?),
        };
        o.optimizer = match self.optimizer.as_str() {
            "adam" => Optimizer::Adam { learning_rate: self.learning_rate },
            _ => Optimizer::Lbfgs { history: self.lbfgs_history },
        };
        o.original_colors = self.original_colors;
        o.palette = self.palette.unwrap_or(crate::transfer::Palette::Style);
        o.luminance_only = self.luminance_only;
        o.seed = self.seed;
        o.resolved_scales()?;
        Ok(o)
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
    let scales = crate::transfer::schedule::scales_for(args.opts.image_size, &args.opts.scales)?;
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
    let opts = args.opts.options(&model.manifest, &limits)?;
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
