//! The stylisation driver: coarse-to-fine scales, per-scale targets, the optimiser loop with early stopping,
//! and hooks for progress, traces and intermediate saves.

use std::cell::{Cell, RefCell};
use std::time::Instant;

use anyhow::{bail, Result};
use rand::{Rng, SeedableRng};

use super::canvas;
use super::color;
use super::histmatch;
use super::inputs::{objective_inputs, objective_inputs_owned, set_temporal, TemporalInputs, Weights};
use super::optim::{Adam, Bounds, Control, EarlyStop, IterInfo, Lbfgs, Objective, StopReason, Summary};
use super::targets::StyleTargets;
use super::tiled;
use crate::engine::{Losses, Model, ObjectiveInputs};
use crate::imageio::{fit_size as fit, Planar};

/// Where the optimisation starts.
#[derive(Debug, Clone)]
pub enum Init {
    Content,
    /// Uniform noise in [0,1] from the seed.
    Noise,
    /// A given image (resized to the first scale); also used for warm starts.
    Image(Planar),
}

/// Which colours the content is taken in: its own, or carried into the style's first (`color::carry`): then the
/// content term holds the scene's structure in the painting's colours instead of pulling it back to the photo's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Palette {
    Content,
    Style,
}

impl std::str::FromStr for Palette {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "style" => Ok(Palette::Style),
            "content" | "photo" => Ok(Palette::Content),
            _ => Err(format!("palette must be style or content, got {s:?}")),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Optimizer {
    Lbfgs { history: usize },
    Adam { learning_rate: f32 },
}

#[derive(Debug, Clone)]
pub struct StylizeOptions {
    /// Longest side of the output.
    pub image_size: usize,
    /// Longest side at each scale, increasing, the last = image_size. Empty: automatic (128, 256, … doubling).
    pub scales: Vec<usize>,
    /// Iterations at the coarsest scale; each finer scale gets `taper` times the previous one's.
    pub iterations: usize,
    /// Iterations of a scale over those of the next coarser one (1: every scale the same). Below 1 the work goes
    /// where it is cheap: the coarse scales form the picture, the fine ones only refine it (published large-image
    /// schedules run ≈ 600/200/66/30 from coarse to fine, a taper of 1/3). None: automatic — 1, unless the memory
    /// budget runs the last scale in tiles, then the large-image schedule (`LARGE_TAPER`, `LARGE_FLOOR`).
    pub taper: Option<f32>,
    /// Early stop when the loss fell by less than `tol` (relative) over `tol_window` iterations; 0 disables.
    pub tol: f64,
    pub tol_window: usize,
    pub weights: Weights,
    pub style_blend: Vec<f32>,
    /// Style images are resized to style_scale × the current scale's longest side.
    pub style_scale: f32,
    pub init: Init,
    pub optimizer: Optimizer,
    pub original_colors: bool,
    /// The content's colours for the transfer (ignored with `original_colors`, which keeps the content's).
    pub palette: Palette,
    /// With `Palette::Style`: a colour map fitted before, used instead of fitting one to this content (a camera
    /// stream's frames are carried by their cold frame's map, so that what did not change keeps its colour).
    pub colour_map: Option<color::ColourMap>,
    /// With `Palette::Style`: after the last scale, the result is carried this far (0–1) towards the painting's
    /// colours by a colour map fitted to it (`color::Finish`, `fit_finish`). A stream's frames are optimised unfinished (the next
    /// frame starts from them) and finished by `temporal::stylize_frame` with the cold frame's map.
    pub palette_finish: f32,
    /// Luminance-only transfer (Gatys et al. 2017): style and content as luminance, the style's matched to the
    /// content's mean and variance; the result keeps the content's colours. Applies to `stylize` (style images).
    pub luminance_only: bool,
    pub seed: u64,
    /// Stop the last scale as soon as the total loss is at or below this (warm starts; benchmarks).
    pub target_loss: Option<f64>,
    /// At the last scale, neither `target_loss` nor the early stop ends the run before this many evaluations (a
    /// camera frame's new content: `transfer::temporal`); the evaluation budget still does.
    pub min_evaluations: Option<usize>,
    /// Apply the early stop at the last scale too (default). The bench turns it off to measure the time to reach a
    /// loss.
    pub last_scale_early_stop: bool,
    /// Re-match the histogram targets every this many evaluations: full-resolution layers to the image about to
    /// be evaluated (prelude.onnx), deeper ones from the activations of the evaluation just made; 0: only once per
    /// scale, from the starting image.
    pub hist_every: usize,
    /// After each scale, evaluate the result once more with histogram targets matched to the result itself: the
    /// exact loss, independent of `hist_every` (costs two evaluations per scale; for comparisons).
    pub exact_losses: bool,
    /// Evaluation budget per scale (L-BFGS); default: 1.25 × iterations + 5.
    pub max_evaluations: Option<usize>,
    /// The temporal term's inputs at the last scale (a camera stream's frame; `transfer::temporal`), whose weight
    /// is the `temporal` term's weight. None: the term is zero.
    pub temporal: Option<TemporalInputs>,
    /// Tiles of this side at every scale whatever the memory budget (tests and measurements); None: the budget
    /// decides (`tiled::budget`).
    pub tile: Option<usize>,
    /// The finest scale runs the model's refinement (`Manifest::refine`: its layers down to relu3_1 only) when the
    /// run has coarser scales before it or starts from an image (a stream's frame): the picture is laid out by then,
    /// and what is left is fine strokes, which the shallow layers carry, at about 60 % of an evaluation's time
    /// (docs/quality.md). False, or a model without one: every scale runs the whole objective.
    pub refine: bool,
    /// The last scale's canvas from an earlier run of the same size (`Outcome::canvas`: a stream's previous frame):
    /// the last scale starts with its margin instead of a reflection of the image (`canvas`). Another size, or
    /// None: reflected.
    pub margin: Option<Planar>,
}

impl StylizeOptions {
    pub fn new(weights: Weights) -> Self {
        StylizeOptions {
            image_size: 512,
            scales: Vec::new(),
            iterations: 200,
            taper: None,
            tol: 1e-2,
            tol_window: 10,
            weights,
            style_blend: Vec::new(),
            style_scale: 1.0,
            init: Init::Content,
            optimizer: Optimizer::Lbfgs { history: 10 },
            original_colors: false,
            palette: Palette::Style,
            colour_map: None,
            palette_finish: 0.0,
            luminance_only: false,
            seed: 0,
            target_loss: None,
            min_evaluations: None,
            last_scale_early_stop: true,
            hist_every: DEFAULT_HIST_EVERY,
            exact_losses: false,
            max_evaluations: None,
            temporal: None,
            tile: None,
            margin: None,
            refine: true,
        }
    }

    /// Iterations of the `index`-th scale actually run (0: the coarsest); at least 1. `last_tiled`: the memory
    /// budget runs the last scale in tiles (with `taper` None, the large-image schedule).
    pub fn iterations_at(&self, index: usize, last_tiled: bool) -> usize {
        let tapered = |t: f32| (self.iterations as f64 * (t as f64).powi(index as i32)).round() as usize;
        match self.taper {
            Some(t) => tapered(t).max(1),
            None if last_tiled => tapered(LARGE_TAPER).max(self.iterations / LARGE_FLOOR).max(1),
            None => self.iterations.max(1),
        }
    }

    /// The scales actually used: explicit ones, or 128 doubling up to image_size (one scale when image_size ≤ 128).
    pub fn resolved_scales(&self) -> Result<Vec<usize>> {
        scales_for(self.image_size, &self.scales)
    }
}

/// The large-image schedule's taper: each scale a third of the previous one's iterations. A tiled evaluation of
/// the last scale costs hundreds of times one of the coarsest (1920×1080 in tiles: 148.5 s, 240×135 whole: 1.2 s,
/// docs/performance.md), and the coarse scales form the picture while the fine ones refine its detail: so most
/// evaluations go where they are cheap, as in published large-image schedules (≈ 600/200/66/30 coarse to fine).
pub const LARGE_TAPER: f32 = 1.0 / 3.0;
/// The large-image schedule gives every scale at least this fraction (1/20) of the coarsest's iterations, so the
/// finest keep enough to refine (a pure third would leave 200/67/22/7/2 at five scales): from 600, exactly the
/// published 600/200/67/30.
pub const LARGE_FLOOR: usize = 20;

/// The refinement after coarser scales runs at most 1/`REFINE_SHARE` of `--iterations` (200: 50): it adds strokes
/// to a laid-out picture, and on the bench pairs at 512 px its palette, texture and structure were where they ended
/// after 30–50 evaluations of 77–98, while the border glow and, on Tübingen, the loss of structure grew on
/// (docs/quality.md). A stream's frames started from the previous result keep their own budget.
pub const REFINE_SHARE: usize = 4;

/// A taper as given (CLI or configuration): positive and at most 4.
pub fn check_taper(t: f32) -> Result<f32> {
    if !(t.is_finite() && t > 0.0 && t <= 4.0) {
        bail!("the taper must be a number in (0, 4], got {t}");
    }
    Ok(t)
}

/// The scales for a `width`×`height` content, so that no scale's short side falls below the model's `min`: coarse
/// scales that would are skipped (a wide or tall image starts at a finer scale); when even the last is too small
/// the error names the short side.
pub fn fit_scales(scales: &[usize], width: usize, height: usize, min: usize) -> Result<Vec<usize>> {
    let last = *scales.last().expect("at least one scale");
    let (w, h) = fit(width, height, last);
    if w.min(h) < min {
        return Err(crate::imageio::too_small(width, height, w, h, min).into());
    }
    Ok(scales
        .iter()
        .copied()
        .filter(|&s| {
            let (w, h) = fit(width, height, s);
            w.min(h) >= min
        })
        .collect())
}

/// Scales for a longest side: `explicit` (checked), or 128 doubling up to `image_size`.
pub fn scales_for(image_size: usize, explicit: &[usize]) -> Result<Vec<usize>> {
    if image_size == 0 {
        bail!("--image-size must be positive");
    }
    let scales = if explicit.is_empty() {
        let mut s = Vec::new();
        let mut v = 128;
        while v < image_size {
            s.push(v);
            v *= 2;
        }
        s.push(image_size);
        s
    } else {
        explicit.to_vec()
    };
    if scales.windows(2).any(|w| w[1] <= w[0]) {
        bail!("--scales must increase, got {scales:?}");
    }
    if *scales.last().unwrap() != image_size {
        bail!("the last of --scales ({}) must equal --image-size ({})", scales.last().unwrap(), image_size);
    }
    Ok(scales)
}

/// The image shapes `[height, width]` a run evaluates: the content (width, height) fitted to every scale and each
/// style image at `style_scale` × every scale. A hint for the TensorRT optimisation profile and the warm-up.
pub fn expected_shapes(
    scales: &[usize],
    style_scale: f32,
    content: (usize, usize),
    styles: &[(usize, usize)],
) -> Vec<[usize; 2]> {
    let mut out = Vec::new();
    for &s in scales {
        let (w, h) = fit(content.0, content.1, s);
        out.push([h, w]);
        let target = ((s as f32 * style_scale).round() as usize).max(1);
        for &(sw, sh) in styles {
            let (w, h) = fit(sw, sh, target);
            out.push([h, w]);
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// One evaluation, for traces and progress.
#[derive(Debug, Clone)]
pub struct EvalRecord {
    pub scale: usize,
    pub width: usize,
    pub height: usize,
    pub iteration: usize,
    pub evaluation: usize,
    pub losses: Losses,
    pub elapsed_ms: f64,
}

/// What happened at one scale.
#[derive(Debug, Clone)]
pub struct ScaleReport {
    pub width: usize,
    pub height: usize,
    pub iterations: usize,
    pub evaluations: usize,
    pub first: Losses,
    pub last: Losses,
    pub stop: StopReason,
    pub seconds: f64,
    /// The result's loss with histogram targets matched to itself (`StylizeOptions::exact_losses`).
    pub exact: Option<Losses>,
    /// Seconds spent in evaluations (graph runs and histogram matching) and in the optimiser's own steps.
    pub eval_seconds: f64,
    pub match_seconds: f64,
    pub optimizer_seconds: f64,
    /// Some(side): the scale ran in tiles of this side (the memory budget's plan, or `StylizeOptions::tile`).
    pub tile: Option<usize>,
    /// The scale ran the model's refinement (`StylizeOptions::refine`), not the whole objective.
    pub refined: bool,
}

#[derive(Debug, Clone)]
pub struct Outcome {
    pub image: Planar,
    /// The image with the margin it was optimised in at the last scale (`canvas`; `StylizeOptions::margin`).
    pub canvas: Planar,
    pub scales: Vec<ScaleReport>,
    /// The colour map that carried the content into the style's colours (`Palette::Style`).
    pub colour_map: Option<color::ColourMap>,
}

impl Outcome {
    pub fn evaluations(&self) -> usize {
        self.scales.iter().map(|s| s.evaluations).sum()
    }
    pub fn final_losses(&self) -> Losses {
        self.scales.last().map(|s| s.last.clone()).unwrap_or_default()
    }
}

/// Where the style targets of each scale come from.
pub trait StyleSource {
    /// Blended style targets for a scale whose output has longest side `longest`.
    fn targets(&mut self, model: &mut Model, longest: usize) -> Result<StyleTargets>;
    /// The blended styles' colours (`Palette::Style`), each style image seen at most `side` px a side; None: the
    /// source cannot tell (the content keeps its own).
    fn colours(&self, _side: usize) -> Option<color::ColourSample> {
        None
    }
}

/// Side (px) of the style images whose pixels sample their palette: colours need no detail.
pub const PALETTE_SIDE: usize = 128;

/// Style images and their blend weights: targets computed from the images at every scale.
pub struct StyleImages<'a> {
    pub images: &'a [Planar],
    /// Empty: equal weights.
    pub blend: Vec<f32>,
    /// Style images are resized to style_scale × the scale's longest side.
    pub style_scale: f32,
}

impl StyleSource for StyleImages<'_> {
    fn targets(&mut self, model: &mut Model, longest: usize) -> Result<StyleTargets> {
        if self.images.is_empty() {
            bail!("at least one style image is needed (--style)");
        }
        let blend = if self.blend.is_empty() { vec![1.0; self.images.len()] } else { self.blend.clone() };
        let mut per_style = Vec::with_capacity(self.images.len());
        for s in self.images {
            let target = ((longest as f32 * self.style_scale).round() as usize).max(1);
            let (mut sw, mut sh) = fit(s.width, s.height, target);
            let min = model.manifest.min_size;
            if sw.min(sh) < min {
                // a wide or tall style image at a small scale: enlarge until its short side fits the model
                let grow = min as f64 / sw.min(sh) as f64;
                (sw, sh) = ((sw as f64 * grow).ceil() as usize, (sh as f64 * grow).ceil() as usize);
            }
            // a style image whose activations would pass the memory budget: its statistics block by block
            let plan = tiled::budget::choose(&model.manifest, sh, sw, 0, model.memory_budget_mb)?;
            let resized = s.resize(sw, sh);
            per_style.push(match plan.tile {
                Some(side) => tiled::style::style_targets(model, &resized.data, (sh, sw), side)?,
                None => {
                    let sf = model.features(&resized.data, sh, sw)?;
                    StyleTargets::from_features(&model.manifest, &sf)?
                }
            });
        }
        StyleTargets::blend(&per_style, &blend)
    }

    fn colours(&self, side: usize) -> Option<color::ColourSample> {
        color::ColourSample::of(self.images, &self.blend, side)
    }
}

/// Targets of any source, computed once per scale and kept (a sequence of frames with the same style).
pub struct CachedTargets<S> {
    pub inner: S,
    memory: std::collections::HashMap<usize, StyleTargets>,
}

impl<S: StyleSource> CachedTargets<S> {
    pub fn new(inner: S) -> Self {
        CachedTargets { inner, memory: Default::default() }
    }
}

impl<S: StyleSource> StyleSource for CachedTargets<S> {
    fn targets(&mut self, model: &mut Model, longest: usize) -> Result<StyleTargets> {
        if let Some(t) = self.memory.get(&longest) {
            return Ok(t.clone());
        }
        let t = self.inner.targets(model, longest)?;
        self.memory.insert(longest, t.clone());
        Ok(t)
    }

    fn colours(&self, side: usize) -> Option<color::ColourSample> {
        self.inner.colours(side)
    }
}

/// Observers of a run. Every method has a no-op default.
pub trait Hooks {
    fn scale_start(&mut self, _scale: usize, _width: usize, _height: usize, _iterations: usize) {}
    fn evaluation(&mut self, _rec: &EvalRecord) {}
    /// Part of an evaluation done: before each block of a tiled one (a kiosk-size evaluation takes minutes; a
    /// watchdog that waited for whole evaluations would restart the daemon mid-frame).
    fn progress(&mut self) {}
    /// After each accepted iteration; `image` is the current estimate (planar RGB).
    fn iteration(&mut self, _scale: usize, _iteration: usize, _image: &Planar) -> Result<()> {
        Ok(())
    }
    /// Whether the image is needed at this iteration (avoids copying it every time).
    fn wants_image(&self, _scale: usize, _iteration: usize) -> bool {
        false
    }
    /// Checked every evaluation: true stops the run (e.g. a shutdown request).
    fn cancelled(&self) -> bool {
        false
    }
}

pub struct NoHooks;
impl Hooks for NoHooks {}

struct Eval<'a, 'b> {
    model: &'a mut Model,
    inputs: &'a mut ObjectiveInputs,
    style: &'a StyleTargets,
    /// 0: never re-match the histogram targets
    hist_every: usize,
    /// Some(side): the objective runs in tiles of this side (`tiled`, chosen by the memory budget).
    tile: Option<usize>,
    eval_seconds: f64,
    match_seconds: f64,
    /// The canvas evaluated (`canvas`) and the image inside it (what the records name).
    width: usize,
    height: usize,
    image: (usize, usize),
    scale: usize,
    iteration: &'a Cell<usize>,
    evaluations: usize,
    first: Option<Losses>,
    /// The losses of the latest evaluation (read by the iteration callback: the point L-BFGS just accepted).
    latest: &'a RefCell<Losses>,
    /// The lowest evaluated (Adam returns that point).
    best: Option<Losses>,
    start: Instant,
    hooks: &'a RefCell<&'b mut dyn Hooks>,
}

impl Objective for Eval<'_, '_> {
    fn evaluate(&mut self, x: &[f32], grad: &mut [f32]) -> Result<f64> {
        if self.hooks.borrow().cancelled() {
            bail!(Cancelled);
        }
        let rematch = self.hist_every > 0 && (self.evaluations + 1).is_multiple_of(self.hist_every);
        let t = Instant::now();
        let (losses, matching) = match self.tile {
            Some(side) => {
                let size = (self.height, self.width);
                let hooks = self.hooks;
                let mut on_block = || {
                    hooks.borrow_mut().progress();
                    if hooks.borrow().cancelled() {
                        bail!(Cancelled);
                    }
                    Ok(())
                };
                let (model, inputs, style) = (&mut *self.model, &mut *self.inputs, self.style);
                tiled::evaluate_with(model, x, size, inputs, grad, style, rematch, side, &mut on_block)?
            }
            None => {
                histmatch::evaluate(self.model, x, self.height, self.width, self.inputs, grad, self.style, rematch)?
            }
        };
        self.evaluations += 1;
        self.match_seconds += matching;
        self.eval_seconds += t.elapsed().as_secs_f64();
        let total = losses.total;
        self.first.get_or_insert_with(|| losses.clone());
        if total.is_finite() && self.best.as_ref().is_none_or(|b| total < b.total) {
            self.best = Some(losses.clone());
        }
        self.hooks.borrow_mut().evaluation(&EvalRecord {
            scale: self.scale,
            width: self.image.0,
            height: self.image.1,
            iteration: self.iteration.get(),
            evaluation: self.evaluations,
            losses: losses.clone(),
            elapsed_ms: self.start.elapsed().as_secs_f64() * 1e3,
        });
        *self.latest.borrow_mut() = losses;
        Ok(total)
    }
}

/// Default of `StylizeOptions::hist_every` (see docs/performance.md for the measurements behind it).
pub const DEFAULT_HIST_EVERY: usize = 1;

/// The loss of `img` with histogram targets matched to `img` itself (two evaluations).
fn exact_losses(
    model: &mut Model,
    img: &Planar,
    style: &StyleTargets,
    inputs: &mut ObjectiveInputs,
    tile: Option<usize>,
) -> Result<Losses> {
    let mut grad = vec![0.0f32; img.data.len()];
    if let Some(side) = tile {
        // the tiled evaluation matches every histogram layer to the image itself: exact in one
        let size = (img.height, img.width);
        return Ok(tiled::evaluate(model, &img.data, size, inputs, &mut grad, style, true, side)?.0);
    }
    histmatch::evaluate(model, &img.data, img.height, img.width, inputs, &mut grad, style, true)?;
    model.evaluate(&img.data, img.height, img.width, inputs, &mut grad, None)
}

/// The run was stopped by `Hooks::cancelled`.
#[derive(Debug, thiserror::Error)]
#[error("stylisation cancelled")]
pub struct Cancelled;

/// Stylise `content` with the blended `styles` (images, blend weights and style scale from `opts`).
pub fn stylize(
    model: &mut Model,
    content: &Planar,
    styles: &[Planar],
    opts: &StylizeOptions,
    hooks: &mut dyn Hooks,
) -> Result<Outcome> {
    if opts.luminance_only {
        // Gatys et al. 2017: transfer on luminance alone (the style's matched to the content's mean and variance),
        // then the result's luminance with the content's chroma
        let content_y = color::luminance(content);
        let styles_y: Vec<Planar> = styles.iter().map(|s| color::matched_luminance(s, &content_y)).collect();
        let mut source =
            StyleImages { images: &styles_y, blend: opts.style_blend.clone(), style_scale: opts.style_scale };
        let inner =
            StylizeOptions { luminance_only: false, original_colors: false, palette: Palette::Content, ..opts.clone() };
        let mut out = stylize_with(model, &content_y, &mut source, &inner, hooks)?;
        out.image = color::original_colors(&out.image, content);
        return Ok(out);
    }
    let mut source = StyleImages { images: styles, blend: opts.style_blend.clone(), style_scale: opts.style_scale };
    stylize_with(model, content, &mut source, opts, hooks)
}

/// Stylise `content` with style targets from any source (e.g. a cache).
pub fn stylize_with(
    model: &mut Model,
    content: &Planar,
    styles: &mut dyn StyleSource,
    opts: &StylizeOptions,
    hooks: &mut dyn Hooks,
) -> Result<Outcome> {
    let scales = fit_scales(&opts.resolved_scales()?, content.width, content.height, model.manifest.min_size)?;
    let history = match opts.optimizer {
        Optimizer::Lbfgs { history } => history,
        Optimizer::Adam { .. } => 0,
    };
    // the finest scale's objective: the refinement's, with these weights carried over to its layers
    let refine_weights = match &model.refine {
        Some(r) if opts.refine && (scales.len() > 1 || matches!(opts.init, Init::Image(_))) => {
            let w = opts.weights.restricted(&model.manifest, &r.manifest);
            if w.is_none() {
                tracing::info!(
                    "the finest scale runs the whole objective: the chosen layers leave the refinement none"
                );
            }
            w
        }
        _ => None,
    };
    // the one place that says which scale runs the refinement (its plan, its model, its weights, its budget)
    let refines = |si: usize| si + 1 == scales.len() && refine_weights.is_some();
    // the memory budget decides, per scale, whether it runs whole or in tiles, and the L-BFGS history; whether it
    // runs the last scale in tiles decides the automatic schedule (`LARGE_TAPER`) — tiles forced by `opts.tile`
    // (tests, measurements) do not change it
    // planned for the canvas (`canvas::MARGIN` beyond the image on every side), which is what is evaluated, with
    // the manifest of the model that evaluates it
    let plans = scales
        .iter()
        .enumerate()
        .map(|(si, &longest)| {
            let (w, h) = fit(content.width, content.height, longest);
            let (w, h) = (w + 2 * canvas::MARGIN, h + 2 * canvas::MARGIN);
            let m = match &model.refine {
                Some(r) if refines(si) => &r.manifest,
                _ => &model.manifest,
            };
            tiled::budget::choose(m, h, w, history, model.memory_budget_mb)
        })
        .collect::<Result<Vec<_>>>()?;
    let last_tiled = plans.last().expect("at least one scale").tile.is_some();
    if last_tiled && opts.taper.is_none() {
        let its: Vec<usize> = (0..scales.len()).map(|i| opts.iterations_at(i, true)).collect();
        tracing::info!(?scales, iterations = ?its, "the last scale runs in tiles: the large-image schedule");
    }
    let start = Instant::now();
    let original = content;
    let (colour_map, carried) = carry_palette(content, styles, opts);
    let content = carried.as_ref().unwrap_or(content);
    let mut reports = Vec::new();
    let mut x: Option<Planar> = None;
    for (si, &longest) in scales.iter().enumerate() {
        let (iw, ih) = fit(content.width, content.height, longest);
        model.check_size(ih, iw)?;
        let t_scale = Instant::now();
        // from here on the scale works on the canvas: the image and its free margin (`canvas`)
        let content_i = content.resize(iw, ih);
        let content_s = canvas::extend(&content_i);
        let (w, h) = (content_s.width, content_s.height);
        // style first: its activations are gone (only Grams and tables kept) before the content's are computed
        let style = styles.targets(model, longest)?;
        let mut plan = plans[si];
        if opts.tile.is_some() {
            plan.tile = opts.tile;
        }
        if plan.tile.is_some() || plan.history != history {
            tracing::info!(w, h, tile = ?plan.tile, history = plan.history, estimate_mb = plan.estimate_mb,
                budget_mb = ?model.memory_budget_mb, "scale planned under the memory budget");
        }
        let is_last = si + 1 == scales.len();
        // the finest scale may run the refinement (the style targets above are the whole model's: a superset of
        // its layers' by name, and what the daemon's cache holds); the rest of the scale is the evaluating model's
        let refining = refines(si);
        let weights = if refining { refine_weights.as_ref().expect("checked") } else { &opts.weights };
        // the plan is for this scale alone: the arena of the other kind of evaluation (whole scales before a tiled
        // one, or a previous frame's tiles before whole coarse scales) must not stay resident beside it, nor the
        // whole model's while the refinement runs
        if refining {
            model.release_hot();
        }
        let model: &mut Model = match model.refine.as_deref_mut() {
            Some(r) if refining => r,
            _ => &mut *model,
        };
        model.release_idle(plan.tile.is_some());
        let m = &model.manifest;
        // whole-image activations of a tiled scale would alone pass the budget: block by block, only the layers
        // the inputs are made of
        let needed: Vec<String> = m.content_layers.iter().chain(&m.hist_layers).cloned().collect();
        let content_feats = match plan.tile {
            Some(side) => tiled::features::features(model, &content_s.data, (h, w), side, &needed)?,
            None => model.features(&content_s.data, h, w)?,
        };
        let previous = x.as_ref().map(canvas::inner);
        let mut img = canvas::extend(&starting_image(previous.as_ref(), opts, &content_i));
        if let Some(m) = opts.margin.as_ref().filter(|m| is_last && (m.width, m.height) == (w, h)) {
            canvas::take_margin(&mut img, m);
        }
        // Inputs from the content's activations (the histogram targets too, for now); those activations (135 MB
        // at 512x512) are then dropped, before the starting image's are computed: only one set is alive at a time.
        let mut inputs = match plan.tile {
            // moved, not copied: the image-sized buffers are most of a tiled scale's memory
            Some(_) => objective_inputs_owned(&model.manifest, (w, h), content_feats, &style, weights)?,
            None => {
                let inputs =
                    objective_inputs(&model.manifest, (w, h), &content_feats, &style, weights, &content_feats)?;
                drop(content_feats);
                inputs
            }
        };
        if si + 1 == scales.len() {
            if let Some(t) = &opts.temporal {
                set_temporal(&mut inputs, w, h, Some(&canvas::extend_temporal(t, iw, ih)?))?;
            }
        }
        // the first histogram targets: the starting image matched to the style
        let hist_used = !model.manifest.hist_layers.is_empty() && weights.term("hist") != 0.0;
        if hist_used && img.data != content_s.data {
            match plan.tile {
                // in the targets' own buffers: no second image-sized map beside them
                Some(side) => tiled::features::match_start(model, &img.data, (h, w), side, &style, &mut inputs)?,
                None => {
                    let start_feats = model.features(&img.data, h, w)?;
                    histmatch::update_targets(&model.manifest, &start_feats, &style, &mut inputs)?;
                }
            }
        }
        let mut iterations = opts.iterations_at(si, last_tiled);
        if refining && scales.len() > 1 {
            iterations = iterations.min(opts.iterations.div_ceil(REFINE_SHARE).max(1));
        }
        let scale = ScaleRun {
            index: si,
            is_last,
            width: w,
            height: h,
            iterations,
            hist_used,
            start,
            t_scale,
            plan,
            refined: refining,
        };
        let report = optimise_scale(model, &mut img, &mut inputs, &style, opts, hooks, &scale)?;
        let (iterations, evaluations, stop) = (report.iterations, report.evaluations, report.stop);
        reports.push(report);
        tracing::debug!(scale = si, w = iw, h = ih, iterations, evaluations, loss = reports[si].last.total,
            reason = ?stop, "scale done");
        x = Some(img);
    }
    let canvas = x.expect("at least one scale");
    let mut image = canvas::inner(&canvas);
    if let Some(f) = fit_finish(&image, carried.is_some(), styles, opts) {
        image = f.apply(&image);
    }
    if opts.original_colors {
        image = color::original_colors(&image, original);
    }
    Ok(Outcome { image, canvas, scales: reports, colour_map })
}

/// The finish of a result (`StylizeOptions::palette_finish`), fitted to it. Only a run that carried the content into
/// the painting's colours by a map fitted for it (`carried`) is finished in them: not `--palette content`,
/// `--original-colors`, or a stream's frame carried by its cold frame's map. `stylize_with` applies it; a stream
/// (`temporal::stylize_frame`) keeps its cold frame's and publishes every frame through it.
pub fn fit_finish(
    image: &Planar,
    carried: bool,
    styles: &dyn StyleSource,
    opts: &StylizeOptions,
) -> Option<color::Finish> {
    if !(carried && opts.palette_finish > 0.0 && opts.colour_map.is_none()) {
        return None;
    }
    let sample = styles.colours(color::finish_side(image))?;
    Some(color::Finish::fit(image, &sample, opts.palette_finish))
}

/// The chosen optimiser on `x` for `iterations` (L-BFGS: at most `max_evaluations`, by default 1.25 × iterations + 5),
/// kept in [0, 1].
fn run_optimiser(
    opts: &StylizeOptions,
    iterations: usize,
    x: &mut [f32],
    eval: &mut dyn Objective,
    on_iter: &mut dyn FnMut(&IterInfo, &[f32]) -> Control,
) -> Result<Summary> {
    Ok(match opts.optimizer {
        Optimizer::Lbfgs { history } => Lbfgs {
            history: history.max(1),
            max_iterations: iterations,
            max_evaluations: opts.max_evaluations.unwrap_or(iterations + iterations / 4 + 5),
            bounds: Some(Bounds::UNIT),
        }
        .minimize(x, eval, on_iter)?,
        Optimizer::Adam { learning_rate } => Adam {
            learning_rate,
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-8,
            max_iterations: iterations,
            bounds: Some(Bounds::UNIT),
        }
        .minimize(x, eval, on_iter)?,
    })
}

/// One scale of a run, as `optimise_scale` needs it.
struct ScaleRun {
    index: usize,
    is_last: bool,
    /// The canvas (`canvas`: the image and its margin).
    width: usize,
    height: usize,
    /// Iterations of this scale (`StylizeOptions::iterations_at`).
    iterations: usize,
    /// The histogram term acts (its targets are re-matched during the scale).
    hist_used: bool,
    /// When the run started (evaluation records' times) and when the scale did.
    start: Instant,
    t_scale: Instant,
    /// Whole or tiled, and the L-BFGS history, under the memory budget.
    plan: tiled::budget::Choice,
    /// The model's refinement evaluates it (`StylizeOptions::refine`).
    refined: bool,
}

/// The content as the transfer takes it: carried into the painting's colours with `Palette::Style` (the map given,
/// or fitted to the style's colours), and the map; the content itself otherwise.
fn carry_palette(
    content: &Planar,
    styles: &mut dyn StyleSource,
    opts: &StylizeOptions,
) -> (Option<color::ColourMap>, Option<Planar>) {
    match (opts.palette, opts.original_colors, &opts.colour_map) {
        (Palette::Style, false, Some(m)) => (Some(m.clone()), Some(m.apply(content))),
        (Palette::Style, false, None) => match styles.colours(PALETTE_SIDE) {
            Some(sample) => {
                let (m, c) = color::ColourMap::fit(content, &sample);
                (Some(m), Some(c))
            }
            None => (None, None),
        },
        _ => (None, None),
    }
}

/// Where a scale starts: the previous scale's result upsampled, or at the first scale the `init` choice.
fn starting_image(previous: Option<&Planar>, opts: &StylizeOptions, content_s: &Planar) -> Planar {
    let (w, h) = (content_s.width, content_s.height);
    match (previous, &opts.init) {
        (Some(prev), _) => prev.resize(w, h),
        (None, Init::Content) => content_s.clone(),
        (None, Init::Image(p)) => p.resize(w, h),
        (None, Init::Noise) => {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(opts.seed);
            let mut p = Planar::new(w, h);
            for v in p.data.iter_mut() {
                *v = rng.random::<f32>();
            }
            p
        }
    }
}

/// Optimise `img` at one scale with the objective's `inputs`: the optimiser, the early stop, the hooks, and the
/// scale's report.
fn optimise_scale(
    model: &mut Model,
    img: &mut Planar,
    inputs: &mut ObjectiveInputs,
    style: &StyleTargets,
    opts: &StylizeOptions,
    hooks: &mut dyn Hooks,
    scale: &ScaleRun,
) -> Result<ScaleReport> {
    let ScaleRun { index: si, is_last, width: w, height: h, iterations, hist_used, start, t_scale, plan, refined } =
        *scale;
    // what the hooks and the report see is the image, not the canvas it is optimised on
    let (iw, ih) = (w - 2 * canvas::MARGIN, h - 2 * canvas::MARGIN);
    hooks.scale_start(si, iw, ih, iterations);
    let mut early = EarlyStop::new(opts.tol_window.max(1), opts.tol);
    let use_early = opts.tol > 0.0;
    let early_here = use_early && (!is_last || opts.last_scale_early_stop);
    let shared: RefCell<&mut dyn Hooks> = RefCell::new(&mut *hooks);
    let iteration = Cell::new(0usize);
    let latest = RefCell::new(Losses::default());
    let accepted: RefCell<Option<Losses>> = RefCell::new(None);
    let mut eval = Eval {
        model: &mut *model,
        inputs: &mut *inputs,
        style,
        hist_every: if hist_used { opts.hist_every } else { 0 },
        tile: plan.tile,
        eval_seconds: 0.0,
        match_seconds: 0.0,
        width: w,
        height: h,
        image: (iw, ih),
        scale: si,
        iteration: &iteration,
        evaluations: 0,
        first: None,
        latest: &latest,
        best: None,
        start,
        hooks: &shared,
    };
    let mut iter_error: Option<anyhow::Error> = None;
    let mut on_iter = |info: &IterInfo, xs: &[f32]| -> Control {
        iteration.set(info.iteration);
        *accepted.borrow_mut() = Some(latest.borrow().clone());
        let mut hooks = shared.borrow_mut();
        if hooks.wants_image(si, info.iteration) {
            let p = canvas::inner_of(xs, w, h);
            if let Err(e) = hooks.iteration(si, info.iteration, &p) {
                iter_error = Some(e);
                return Control::Stop;
            }
        }
        // new content must have had its evaluations before the run may stop on the whole image's loss
        let may_stop = !is_last || opts.min_evaluations.is_none_or(|m| info.evaluations >= m);
        if is_last && may_stop && opts.target_loss.is_some_and(|t| info.loss <= t) {
            return Control::Stop;
        }
        if early_here && early.update(info.loss) && may_stop {
            return Control::Stop;
        }
        Control::Continue
    };
    let t_opt = Instant::now();
    let summary = match opts.optimizer {
        Optimizer::Lbfgs { history } if history != plan.history => {
            let o = StylizeOptions { optimizer: Optimizer::Lbfgs { history: plan.history }, ..opts.clone() };
            run_optimiser(&o, iterations, &mut img.data, &mut eval, &mut on_iter)?
        }
        _ => run_optimiser(opts, iterations, &mut img.data, &mut eval, &mut on_iter)?,
    };
    if let Some(e) = iter_error {
        return Err(e);
    }
    let stop = if summary.reason == StopReason::Callback { StopReason::Converged } else { summary.reason };
    // the losses of the image returned: L-BFGS's last accepted point (rejected line-search trials never
    // count), Adam's best evaluated point; the starting point when no step was taken
    let first = eval.first.unwrap_or_default();
    let last = match opts.optimizer {
        Optimizer::Lbfgs { .. } => accepted.into_inner().unwrap_or_else(|| first.clone()),
        Optimizer::Adam { .. } => eval.best.unwrap_or_else(|| first.clone()),
    };
    let evaluations = eval.evaluations;
    let (eval_seconds, match_seconds) = (eval.eval_seconds, eval.match_seconds);
    let optimizer_seconds = t_opt.elapsed().as_secs_f64() - eval_seconds;
    // the optimisers kept the image in [0, 1] at every evaluation: what is returned is what was evaluated
    debug_assert!(img.data.iter().all(|v| (0.0..=1.0).contains(v)));
    let exact = if opts.exact_losses { Some(exact_losses(model, img, style, inputs, plan.tile)?) } else { None };
    Ok(ScaleReport {
        width: iw,
        height: ih,
        iterations: summary.iterations,
        evaluations,
        first,
        last,
        stop,
        seconds: t_scale.elapsed().as_secs_f64(),
        exact,
        eval_seconds,
        match_seconds,
        optimizer_seconds,
        tile: plan.tile,
        refined,
    })
}
