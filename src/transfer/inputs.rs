//! The objective's inputs: term and per-layer weights — with the per-layer normalisation that keeps every layer
//! acting — and the tensors for one image size, from the content's activations and the style targets.
//!
//! Normalisation: on raw VGG activations the shallow layers' Gram and histogram differences are orders of magnitude
//! larger than the deep layers' (relu1_1 + relu2_1 were ~97 % of the style term at 128 px), so with equal layer
//! weights the deep layers, which carry a style's larger forms, hardly act. With `normalize` each layer's loss is
//! divided by the mean square of its own target (the loss of an all-zero activation), which makes every layer's
//! loss a relative error of the same order; the per-layer and term weights then mean what they say.

use std::collections::BTreeMap;

use anyhow::{bail, Result};

use super::targets::StyleTargets;
use crate::engine::{FeatureMap, Manifest, ObjectiveInputs, TERMS};
use crate::imageio::Planar;

/// Term weights ([content, style, shift, hist, tv, temporal]) with per-layer normalisation, chosen by the quality
/// bench (docs/quality.md): with the content carried into the painting's colours and held at relu2_1/relu3_1/relu4_2,
/// the style side at 3× the earlier 2.5 / 1.25 / 1.25 paints the strokes without losing the scene. The temporal term
/// acts only on camera streams (`transfer::temporal`), which set its weight per frame.
pub const NORMALIZED_TERM_WEIGHTS: [f32; 6] = [1.0, 7.5, 3.75, 3.75, 30.0, 0.0];

/// Index of the temporal term in `Weights::terms` (and `TERMS`).
pub const TEMPORAL: usize = 5;

/// The layer groups of the objective.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerGroup {
    Content,
    Style,
    Shift,
    Hist,
}

impl LayerGroup {
    fn name(self) -> &'static str {
        match self {
            LayerGroup::Content => "content",
            LayerGroup::Style => "style",
            LayerGroup::Shift => "shift",
            LayerGroup::Hist => "hist",
        }
    }

    /// The layers this model's objective has for the group.
    pub fn layers(self, m: &Manifest) -> Vec<String> {
        match self {
            LayerGroup::Content => m.content_layers.clone(),
            LayerGroup::Style => m.style_layers.clone(),
            LayerGroup::Shift => m.shift_layers.iter().map(|s| s.layer.clone()).collect(),
            LayerGroup::Hist => m.hist_layers.clone(),
        }
    }
}

/// Term weights ([content, style, shift, hist, tv, temporal]) and per-layer weights.
#[derive(Debug, Clone, PartialEq)]
pub struct Weights {
    pub terms: [f32; 6],
    pub content_layers: Vec<f32>,
    pub style_layers: Vec<f32>,
    pub shift_layers: Vec<f32>,
    pub hist_layers: Vec<f32>,
    /// Divide each layer's loss by the mean square of its target (see the module's documentation).
    pub normalize: bool,
}

impl Weights {
    /// The defaults: per-layer normalisation with `NORMALIZED_TERM_WEIGHTS`, the model's layer weights.
    pub fn defaults(m: &Manifest) -> Weights {
        Weights { terms: NORMALIZED_TERM_WEIGHTS, normalize: true, ..Weights::raw_defaults(m) }
    }

    /// Raw activations, as before the normalisation: the model's own default term weights.
    pub fn raw_defaults(m: &Manifest) -> Weights {
        Weights {
            terms: m.default_term_weights(),
            content_layers: m.default_layer_weights["content"].clone(),
            style_layers: m.default_layer_weights["style"].clone(),
            shift_layers: m.default_layer_weights["shift"].clone(),
            hist_layers: m.default_layer_weights["hist"].clone(),
            normalize: false,
        }
    }

    /// Term weights given by the user (None: keep). `what` names where they came from, for errors.
    pub fn set_terms(&mut self, given: [Option<f32>; 6], what: &dyn Fn(&str) -> String) -> Result<()> {
        for (i, v) in given.into_iter().enumerate() {
            if let Some(v) = v {
                if !(v.is_finite() && v >= 0.0) {
                    bail!("{} must be a non-negative number, got {v}", what(TERMS[i]));
                }
                self.terms[i] = v;
            }
        }
        Ok(())
    }

    /// Set the weight of the term `name` (one of the manifest's terms).
    pub fn set_term(&mut self, name: &str, v: f32) -> Result<()> {
        if !(v.is_finite() && v >= 0.0) {
            bail!("the weight of the {name} term must be a non-negative number, got {v}");
        }
        let Some(i) = TERMS.iter().position(|t| *t == name) else {
            bail!("{name} is not a term of this model (it has {})", TERMS.join(", "));
        };
        self.terms[i] = v;
        Ok(())
    }

    /// The one knob: multiply the style side (style, long-range and histogram terms) by `strength` against the
    /// content — 2 paints twice as hard, 0.5 keeps more of the photo. Applied after any explicit term weights.
    pub fn set_strength(&mut self, strength: f32) -> Result<()> {
        if !(strength.is_finite() && strength > 0.0) {
            bail!("the style strength must be a positive number, got {strength}");
        }
        for i in 1..4 {
            self.terms[i] *= strength;
        }
        Ok(())
    }

    pub fn layers_mut(&mut self, g: LayerGroup) -> &mut Vec<f32> {
        match g {
            LayerGroup::Content => &mut self.content_layers,
            LayerGroup::Style => &mut self.style_layers,
            LayerGroup::Shift => &mut self.shift_layers,
            LayerGroup::Hist => &mut self.hist_layers,
        }
    }

    /// Select the layers of a group and their weights, as neural-style's `-style_layers`: `relu1_1,relu2_1:0.5`
    /// (a layer without a weight gets 1; the weights are normalised to sum 1; layers not named get 0).
    pub fn select_layers(&mut self, m: &Manifest, g: LayerGroup, spec: &str) -> Result<()> {
        let available = g.layers(m);
        let mut w = vec![0.0f32; available.len()];
        let mut any = false;
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (name, weight) = match item.split_once(':') {
                Some((n, v)) => match v.trim().parse::<f32>() {
                    Ok(x) if x.is_finite() && x >= 0.0 => (n.trim(), x),
                    _ => bail!("{} layer weight {v:?} in {item:?} must be a non-negative number", g.name()),
                },
                None => (item, 1.0),
            };
            let Some(i) = available.iter().position(|l| l == name) else {
                bail!(
                    "{name} is not a {} layer of this model (it has {}): choose among them, or export a model with \
                     other layers (models/README.md)",
                    g.name(),
                    available.join(", ")
                );
            };
            w[i] = weight;
            any |= weight > 0.0;
        }
        if !any {
            bail!("no {} layer selected in {spec:?}: name at least one of {}", g.name(), available.join(", "));
        }
        let sum: f32 = w.iter().sum();
        w.iter_mut().for_each(|v| *v /= sum);
        *self.layers_mut(g) = w;
        Ok(())
    }
}

/// Mean square of a target (at least a tiny positive number).
fn mean_square(v: &[f32]) -> f64 {
    let s: f64 = v.iter().map(|x| (*x as f64) * (*x as f64)).sum();
    (s / v.len().max(1) as f64).max(1e-30)
}

/// The per-layer factors of the normalisation at this scale: 1 / mean square of each layer's target, by group.
pub fn layer_norms(
    m: &Manifest,
    content: &BTreeMap<String, FeatureMap>,
    style: &StyleTargets,
) -> Result<BTreeMap<&'static str, Vec<f32>>> {
    let missing = |what: &str, l: &str| anyhow::anyhow!("the targets lack the {what} of layer {l}");
    let mut out = BTreeMap::new();
    let mut c = Vec::new();
    for l in &m.content_layers {
        c.push((1.0 / mean_square(&content.get(l).ok_or_else(|| missing("content", l))?.data)) as f32);
    }
    out.insert("content", c);
    let mut s = Vec::new();
    for l in &m.style_layers {
        s.push((1.0 / mean_square(style.grams.get(l).ok_or_else(|| missing("Gram", l))?)) as f32);
    }
    out.insert("style", s);
    let mut sh = Vec::new();
    for x in &m.shift_layers {
        let (h, v) = style.shifts.get(&x.layer).ok_or_else(|| missing("shifted Grams", &x.layer))?;
        sh.push((1.0 / (0.5 * (mean_square(h) + mean_square(v)))) as f32);
    }
    out.insert("shift", sh);
    let mut hi = Vec::new();
    for l in &m.hist_layers {
        hi.push((1.0 / mean_square(style.hists.get(l).ok_or_else(|| missing("quantile table", l))?)) as f32);
    }
    out.insert("hist", hi);
    Ok(out)
}

/// The temporal term's inputs for one frame of a camera stream (Ruder et al. 2016): the previous stylised frame and
/// a weight per pixel (row-major `height × width`; 0 where the scene changed).
#[derive(Debug, Clone)]
pub struct TemporalInputs {
    pub previous: Planar,
    pub weights: Vec<f32>,
}

/// Set the temporal term's inputs for a `width × height` image: `t`'s, or zeros (the term then has neither value
/// nor gradient).
pub fn set_temporal(inp: &mut ObjectiveInputs, width: usize, height: usize, t: Option<&TemporalInputs>) -> Result<()> {
    let (prev, weights) = match t {
        Some(t) => {
            if (t.previous.width, t.previous.height) != (width, height) || t.weights.len() != width * height {
                bail!(
                    "temporal inputs of {}x{} ({} weights) for a {width}x{height} image",
                    t.previous.width,
                    t.previous.height,
                    t.weights.len()
                );
            }
            (t.previous.data.clone(), t.weights.clone())
        }
        None => (vec![0.0; 3 * width * height], vec![0.0; width * height]),
    };
    inp.set("temporal_prev", &[1, 3, height, width], prev)?;
    inp.set("temporal_weights", &[1, 1, height, width], weights)
}

/// The objective's inputs (all but x) for a `width × height` image. `start` holds the activations of the image the
/// optimisation starts from, whose histogram matching is the first histogram target. The temporal term's inputs
/// are zeros (`set_temporal` replaces them for a camera stream's frame).
pub fn objective_inputs(
    m: &Manifest,
    (width, height): (usize, usize),
    content: &BTreeMap<String, FeatureMap>,
    style: &StyleTargets,
    weights: &Weights,
    start: &BTreeMap<String, FeatureMap>,
) -> Result<ObjectiveInputs> {
    let mut inp = ObjectiveInputs::new();
    set_temporal(&mut inp, width, height, None)?;
    for l in &m.content_layers {
        let f = content.get(l).ok_or_else(|| anyhow::anyhow!("content features of {l} missing"))?;
        inp.set(&format!("content_{l}"), &[1, f.channels, f.height, f.width], f.data.clone())?;
    }
    let channels = |l: &str| m.layer(l).map(|x| x.channels).unwrap_or(0);
    let missing = |what: &str, l: &str| anyhow::anyhow!("style targets lack the {what} of layer {l}");
    for l in &m.style_layers {
        let c = channels(l);
        let g = style.grams.get(l).ok_or_else(|| missing("Gram", l))?;
        inp.set(&format!("gram_{l}"), &[c, c], g.clone())?;
    }
    for s in &m.shift_layers {
        let c = channels(&s.layer);
        let (h, v) = style.shifts.get(&s.layer).ok_or_else(|| missing("shifted Grams", &s.layer))?;
        inp.set(&format!("shift_h_{}", s.layer), &[c, c], h.clone())?;
        inp.set(&format!("shift_v_{}", s.layer), &[c, c], v.clone())?;
    }
    super::histmatch::update_targets(m, start, style, &mut inp)?;
    inp.set("term_weights", &[TERMS.len()], weights.terms.to_vec())?;

    let norms = if weights.normalize { Some(layer_norms(m, content, style)?) } else { None };
    for (group, name, v, n) in [
        ("content", "content_layer_weights", &weights.content_layers, m.content_layers.len()),
        ("style", "style_layer_weights", &weights.style_layers, m.style_layers.len()),
        ("shift", "shift_layer_weights", &weights.shift_layers, m.shift_layers.len()),
        ("hist", "hist_layer_weights", &weights.hist_layers, m.hist_layers.len()),
    ] {
        if n == 0 {
            continue;
        }
        if v.len() != n {
            bail!("{name} has {} values for {n} layers", v.len());
        }
        let effective: Vec<f32> = match &norms {
            Some(f) => v.iter().zip(&f[group]).map(|(w, k)| w * k).collect(),
            None => v.clone(),
        };
        inp.set(name, &[n], effective)?;
    }
    Ok(inp)
}
