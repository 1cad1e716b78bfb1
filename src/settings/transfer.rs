//! The transfer knobs (objective, layers, schedule, colours, optimiser): `fuchun stylize`'s flags and a configured
//! style's `[styles.NAME]` keys, declared once.

use std::path::Path;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Deserialize;

use super::Door;
use crate::engine::Manifest;
use crate::imageio::{self, Limits};
use crate::transfer::schedule::{check_taper, DEFAULT_HIST_EVERY};
use crate::transfer::temporal::{DEFAULT_TEMPORAL_WEIGHT, STREAM_PALETTE};
use crate::transfer::{Init, Optimizer, Palette, StylizeOptions, Weights};

/// The defaults that differ between uses, as data: a kiosk camera's frames are smaller and get fewer iterations than
/// a single image; streams take their palette from `temporal::STREAM_PALETTE`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Profile {
    pub image_size: usize,
    pub iterations: usize,
    pub palette: Palette,
    /// `--palette-finish`.
    pub palette_finish: f32,
}

/// `fuchun stylize` on one image.
pub const SINGLE_IMAGE: Profile =
    Profile { image_size: 512, iterations: 200, palette: Palette::Style, palette_finish: DEFAULT_PALETTE_FINISH };
/// `fuchun stylize` on a frame sequence.
pub const FRAME_SEQUENCE: Profile = Profile { palette: STREAM_PALETTE, ..SINGLE_IMAGE };
/// A configured style of `fuchun serve` (camera frames).
pub const CAMERA: Profile =
    Profile { image_size: 256, iterations: 100, palette: STREAM_PALETTE, palette_finish: DEFAULT_PALETTE_FINISH };

/// How far a result is finished in the painting's colours (`--palette-finish`; a stream's frames by their cold
/// frame's map, `temporal::Previous::finish`): the chroma all the way, the luminance `color::FINISH_LUMA_SHARE` of
/// it. On the 12 bench pairs: at 256 px mean palette distance 1.08 → 0.55 (the two Starry Night pairs 2.01 / 1.63
/// → 0.82 / 0.70, inside the 1.5 target), texture 0.462 → 0.444, structure 0.825 → 0.819; at 512 px 0.93 → 0.50
/// (1.79 / 1.29 → 0.72 / 0.63), 0.363 → 0.343, 0.830 → 0.824 (docs/quality.md, where the other amounts and
/// luminance shares tried are).
pub const DEFAULT_PALETTE_FINISH: f32 = 1.0;

/// The transfer settings. Optional knobs without a default here take the profile's (image size, iterations,
/// palette) or the model's (term weights, layers; manifest.json).
#[derive(Debug, Clone, PartialEq, Args, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Transfer {
    /// Longest side of the output in pixels (default: 512; a configured style 256).
    #[arg(long, value_name = "PX")]
    pub image_size: Option<usize>,
    /// Coarse-to-fine scales (longest side), e.g. 128,256; scales at or over the output size are left out and the
    /// output size is always the last. Default: 128 doubling up to the output size.
    #[arg(long, value_delimiter = ',', value_name = "PX,…")]
    pub scales: Vec<usize>,
    /// Iterations at the coarsest scale (each finer scale: --taper times the previous one's). Default: 200; a
    /// configured style 100.
    #[arg(long, value_name = "N")]
    pub iterations: Option<usize>,
    /// Iterations of each scale over the next coarser one's (1: every scale --iterations). Default: 1, unless the
    /// memory budget runs the last scale in tiles: then a third, each scale keeping at least a twentieth of the
    /// coarsest's iterations (--iterations 600 gives 600/200/67/30): most evaluations where they are cheap.
    #[arg(long, value_name = "F")]
    pub taper: Option<f32>,
    /// The finest scale refines the picture the coarser scales laid out with the model's shallow layers only (its
    /// `refine/` objective: down to relu3_1), at about 60 % of an evaluation's time; false: the whole objective at
    /// every scale.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1,
          default_missing_value = "true", value_name = "BOOL")]
    pub refine: bool,
    /// Early stop: relative loss decrease over --tol-window iterations below this (0 disables).
    #[arg(long, default_value_t = 1e-2)]
    pub tol: f64,
    /// Window of the early stop, in iterations.
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub tol_window: usize,
    /// Re-match the histogram loss's targets to the current image every N evaluations (0: once per scale).
    #[arg(long, default_value_t = DEFAULT_HIST_EVERY, value_name = "N")]
    pub hist_every: usize,
    /// Content term weight (default: the model's, see manifest.json).
    #[arg(long, value_name = "W")]
    pub content_weight: Option<f32>,
    /// Style (Gram) term weight.
    #[arg(long, value_name = "W")]
    pub style_weight: Option<f32>,
    /// Long-range consistency (shifted Gram) term weight.
    #[arg(long, value_name = "W")]
    pub shift_weight: Option<f32>,
    /// Histogram term weight.
    #[arg(long, value_name = "W")]
    pub hist_weight: Option<f32>,
    /// Total-variation weight.
    #[arg(long, value_name = "W")]
    pub tv_weight: Option<f32>,
    /// Camera streams and frame sequences: weight of the temporal term that holds the parts of a frame where the
    /// scene did not change to the previous result (0: frames still start from the previous result, but nothing
    /// holds them to it). Default: 200.
    #[arg(long, value_name = "W")]
    pub temporal_weight: Option<f32>,
    /// Any term of the model by its name in manifest.json, NAME=W (repeatable; TOML: a list of "NAME=W"), for terms
    /// that have no flag of their own.
    #[arg(long, value_name = "NAME=W")]
    pub term_weight: Vec<String>,
    /// How strongly the style paints over the content: multiplies the style side's term weights (2: twice as
    /// stylised; 0.5: more of the photo).
    #[arg(long, default_value_t = 1.0, value_name = "F")]
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
    /// Each layer's loss divided by its target's mean square, so that every layer acts (false: raw losses; the
    /// model's raw term weights then apply).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1,
          default_missing_value = "true", value_name = "BOOL")]
    pub layer_norm: bool,
    /// Deprecated spelling of `--layer-norm false`.
    #[arg(long, hide = true)]
    #[serde(skip)]
    pub no_layer_norm: bool,
    /// Weights of the style images, comma-separated (normalised to sum 1). Default: equal. (TOML: `blend_weights`
    /// is the deprecated spelling.)
    #[arg(long, value_delimiter = ',', value_name = "W,…")]
    #[serde(alias = "blend_weights")]
    pub style_blend_weights: Vec<f32>,
    /// Style images are resized so that their longest side is this factor × the longest side of the scale being
    /// optimised (each coarse-to-fine scale gets its own style targets).
    #[arg(long, default_value_t = 1.0, value_name = "F")]
    pub style_scale: f32,
    /// Initial image: content, noise, or a PATH.
    #[arg(long, default_value = "content", value_name = "content|noise|PATH")]
    pub init: String,
    /// lbfgs or adam.
    #[arg(long, default_value = "lbfgs", value_parser = ["lbfgs", "adam"])]
    pub optimizer: String,
    /// L-BFGS history size (memory: 2 × N × 3 × pixels floats).
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub lbfgs_history: usize,
    /// Adam learning rate (image in [0,1]).
    #[arg(long, default_value_t = 0.02, value_name = "LR")]
    pub learning_rate: f32,
    /// Keep the content's colours: the stylised luminance with the content's chroma (YCbCr), after the transfer.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1,
          default_missing_value = "true", value_name = "BOOL")]
    pub original_colors: bool,
    /// The content's colours during the transfer: style (carried into the painting's colours first, so that
    /// the scene is kept in the painting's palette) or content (the photo's own; the style must repaint them).
    /// Default: style (frame sequences and camera streams carry each frame by their last cold frame's colour map).
    #[arg(long, value_name = "style|content")]
    #[serde(deserialize_with = "super::opt_from_str")]
    pub palette: Option<Palette>,
    /// With --palette style: after the transfer, carry the result's colours this far (0–1) towards the painting's by
    /// a colour map fitted to it — the style terms pull colours apart where the painting's are far from each other;
    /// the chroma all of it, the luminance (the scene's light and dark) a third.
    /// Frame sequences and camera streams publish every frame through their last cold frame's finish and go on
    /// from the unfinished result. Default: 1.
    #[arg(long, value_name = "F")]
    pub palette_finish: Option<f32>,
    /// Luminance-only transfer (Gatys et al. 2017): the style's luminance, matched to the content's mean and
    /// variance, is transferred onto the content's luminance; the result keeps the content's colours.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1,
          default_missing_value = "true", value_name = "BOOL")]
    pub luminance_only: bool,
    /// Seed for noise initialisation.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl Default for Transfer {
    fn default() -> Self {
        super::clap_defaults()
    }
}

impl Transfer {
    /// The output size under `profile`.
    pub fn image_size(&self, profile: &Profile) -> usize {
        self.image_size.unwrap_or(profile.image_size)
    }

    /// The stream's temporal weight (default `DEFAULT_TEMPORAL_WEIGHT`).
    pub fn temporal_weight(&self) -> f32 {
        self.temporal_weight.unwrap_or(DEFAULT_TEMPORAL_WEIGHT)
    }

    /// The coarse-to-fine scales for an output whose longest side is `size`: the configured ones below it, then
    /// `size`; none configured: 128 doubling up to it.
    pub fn scales_at(&self, size: usize) -> Vec<usize> {
        if self.scales.is_empty() {
            return Vec::new();
        }
        self.scales.iter().copied().filter(|v| *v < size).chain(std::iter::once(size)).collect()
    }

    /// Check every knob that needs no model (`door` names them in errors): the configuration is refused at start-up
    /// and the command line before loading anything.
    pub fn validate(&self, door: &Door) -> Result<()> {
        let n = |k: &str| door.name(k);
        if let Some(s) = self.image_size {
            if s < 16 {
                bail!(
                    "{} {s} is too small: give at least 16 (pixels; the model's own minimum may be larger)",
                    n("image_size")
                );
            }
        }
        if self.scales.windows(2).any(|w| w[1] <= w[0]) || self.scales.contains(&0) {
            bail!("{} must increase (positive sizes), got {:?}", n("scales"), self.scales);
        }
        if self.iterations == Some(0) {
            bail!("{} must be at least 1", n("iterations"));
        }
        if let Some(t) = self.taper {
            check_taper(t).with_context(|| n("taper"))?;
        }
        if !(self.tol.is_finite() && self.tol >= 0.0) {
            bail!("{} must be a non-negative number, got {}", n("tol"), self.tol);
        }
        for (t, v) in self.named_weights() {
            if let Some(v) = v {
                if !(v.is_finite() && v >= 0.0) {
                    bail!("{} must be a non-negative number, got {v}", n(&format!("{t}_weight")));
                }
            }
        }
        self.extra_weights(door)?;
        if !(self.strength.is_finite() && self.strength > 0.0) {
            bail!("{} must be a positive number, got {}", n("strength"), self.strength);
        }
        if self.style_blend_weights.iter().any(|w| !(w.is_finite() && *w >= 0.0)) {
            bail!("{} must be non-negative numbers, got {:?}", n("style_blend_weights"), self.style_blend_weights);
        }
        if let Some(f) = self.palette_finish {
            if !(0.0..=1.0).contains(&f) {
                bail!(
                    "{} must be between 0 and 1 (the share of the way to the painting's colours), got {f}",
                    n("palette_finish")
                );
            }
        }
        if !(self.style_scale > 0.0 && self.style_scale.is_finite()) {
            bail!("{} must be positive, got {}", n("style_scale"), self.style_scale);
        }
        if self.optimizer != "lbfgs" && self.optimizer != "adam" {
            bail!("{} must be lbfgs or adam, got {:?}", n("optimizer"), self.optimizer);
        }
        if self.lbfgs_history == 0 {
            bail!("{} must be at least 1", n("lbfgs_history"));
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            bail!("{} must be a positive number, got {}", n("learning_rate"), self.learning_rate);
        }
        Ok(())
    }

    /// `validate`, for camera streams and frame sequences, which cannot do a luminance-only transfer (its style
    /// targets follow each frame's luminance).
    pub fn validate_stream(&self, door: &Door) -> Result<()> {
        self.validate(door)?;
        if self.luminance_only {
            bail!(
                "{} is not available for frame sequences and camera streams: use {}",
                door.name("luminance_only"),
                door.name("original_colors")
            );
        }
        Ok(())
    }

    /// The term weights with a knob of their own, by the manifest's term names.
    fn named_weights(&self) -> [(&'static str, Option<f32>); 6] {
        [
            ("content", self.content_weight),
            ("style", self.style_weight),
            ("shift", self.shift_weight),
            ("hist", self.hist_weight),
            ("tv", self.tv_weight),
            ("temporal", self.temporal_weight),
        ]
    }

    /// `term_weight`'s NAME=W entries, parsed.
    fn extra_weights(&self, door: &Door) -> Result<Vec<(String, f32)>> {
        let mut out = Vec::new();
        for item in &self.term_weight {
            let parsed = item.split_once('=').and_then(|(k, v)| Some((k.trim(), v.trim().parse::<f32>().ok()?)));
            match parsed {
                Some((k, v)) if !k.is_empty() && v.is_finite() && v >= 0.0 => out.push((k.to_string(), v)),
                _ => bail!("{} takes NAME=W with a non-negative W, got {item:?}", door.name("term_weight")),
            }
        }
        Ok(out)
    }

    /// The term and layer weights for `manifest`.
    pub fn weights(&self, manifest: &Manifest, door: &Door) -> Result<Weights> {
        let n = |k: &str| door.name(k);
        let layer_norm = self.layer_norm && !self.no_layer_norm;
        let mut w = if layer_norm { Weights::defaults(manifest) } else { Weights::raw_defaults(manifest) };
        for (t, v) in self.named_weights() {
            // the stream's temporal weight is set per frame (`temporal::plan`), not as a default
            if let (Some(v), false) = (v, t == crate::transfer::temporal::TEMPORAL_TERM) {
                w.set_term(t, v).with_context(|| n(&format!("{t}_weight")))?;
            }
        }
        for (t, v) in self.extra_weights(door)? {
            w.set_term(&t, v).with_context(|| n("term_weight"))?;
        }
        w.set_strength(self.strength).with_context(|| n("strength"))?;
        for (g, spec, key) in [
            ("content", &self.content_layers, "content_layers"),
            ("style", &self.style_layers, "style_layers"),
            ("shift", &self.shift_layers, "shift_layers"),
            ("hist", &self.hist_layers, "hist_layers"),
        ] {
            if let Some(spec) = spec {
                w.select_layers(manifest, g, spec).with_context(|| n(key))?;
            }
        }
        Ok(w)
    }

    /// The options of a run under `profile` for `manifest`; an `--init` image is read with `limits`.
    pub fn options(
        &self,
        manifest: &Manifest,
        profile: &Profile,
        limits: &Limits,
        door: &Door,
    ) -> Result<StylizeOptions> {
        self.options_at(manifest, profile, self.image_size(profile), limits, door)
    }

    /// As `options`, for an output whose longest side is `size` (a camera's `max_size` under the style's size).
    pub fn options_at(
        &self,
        manifest: &Manifest,
        profile: &Profile,
        size: usize,
        limits: &Limits,
        door: &Door,
    ) -> Result<StylizeOptions> {
        self.validate(door)?;
        let n = |k: &str| door.name(k);
        let mut o = StylizeOptions::new(self.weights(manifest, door)?);
        o.image_size = size;
        o.scales = self.scales_at(size);
        o.iterations = self.iterations.unwrap_or(profile.iterations);
        o.taper = self.taper;
        o.tol = self.tol;
        o.tol_window = self.tol_window;
        o.hist_every = self.hist_every;
        o.refine = self.refine;
        o.style_blend = self.style_blend_weights.clone();
        o.style_scale = self.style_scale;
        o.init = match self.init.as_str() {
            "content" => Init::Content,
            "noise" | "random" => Init::Noise,
            path => Init::Image(
                imageio::load_path(Path::new(path), limits).with_context(|| format!("{} {path}", n("init")))?,
            ),
        };
        o.optimizer = match self.optimizer.as_str() {
            "adam" => Optimizer::Adam { learning_rate: self.learning_rate },
            _ => Optimizer::Lbfgs { history: self.lbfgs_history },
        };
        o.original_colors = self.original_colors;
        o.palette = self.palette.unwrap_or(profile.palette);
        o.palette_finish = self.palette_finish.unwrap_or(profile.palette_finish);
        o.luminance_only = self.luminance_only;
        o.seed = self.seed;
        o.resolved_scales().with_context(|| n("scales"))?;
        Ok(o)
    }
}
