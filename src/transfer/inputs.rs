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
use crate::engine::{FeatureMap, Manifest, ObjectiveInputs};
use crate::imageio::Planar;

/// Term weights and per-layer weights, by the manifest's term names (its `terms` and `layer_groups`).
#[derive(Debug, Clone, PartialEq)]
pub struct Weights {
    /// Each term's weight, in the manifest's term order (the `term_weights` input).
    pub terms: Vec<(String, f32)>,
    /// Each layer group's per-layer weights (the `<term>_layer_weights` inputs), in the group's layer order.
    pub layers: Vec<(String, Vec<f32>)>,
    /// The terms `set_strength` multiplies (the manifest's `style_side_terms`).
    pub style_side: Vec<String>,
    /// Divide each layer's loss by the mean square of its target (see the module's documentation).
    pub normalize: bool,
}

impl Weights {
    /// The defaults: per-layer normalisation with the model's `normalized_term_weights` and layer weights.
    pub fn defaults(m: &Manifest) -> Weights {
        let mut w = Weights::raw_defaults(m);
        w.terms = m.terms.iter().map(|t| (t.clone(), m.normalized_term_weights[t])).collect();
        w.normalize = true;
        w
    }

    /// Raw activations, as before the normalisation: the model's `default_term_weights`.
    pub fn raw_defaults(m: &Manifest) -> Weights {
        Weights {
            terms: m.terms.iter().map(|t| (t.clone(), m.default_term_weights[t])).collect(),
            layers: m.layer_groups.iter().map(|g| (g.term.clone(), m.default_layer_weights[&g.term].clone())).collect(),
            style_side: m.style_side_terms.clone(),
            normalize: false,
        }
    }

    /// The weight of the term `name` (0 for a term the model does not have).
    pub fn term(&self, name: &str) -> f32 {
        self.terms.iter().find(|(t, _)| t == name).map(|(_, v)| *v).unwrap_or(0.0)
    }

    /// Set the weight of the term `name` (one of the manifest's terms).
    pub fn set_term(&mut self, name: &str, v: f32) -> Result<()> {
        if !(v.is_finite() && v >= 0.0) {
            bail!("the weight of the {name} term must be a non-negative number, got {v}");
        }
        let names: Vec<String> = self.terms.iter().map(|(t, _)| t.clone()).collect();
        let Some((_, w)) = self.terms.iter_mut().find(|(t, _)| t == name) else {
            bail!("{name} is not a term of this model (it has {})", names.join(", "));
        };
        *w = v;
        Ok(())
    }

    /// Only the `given` terms, at the given weights; every other term off (experiments and tests of one term).
    pub fn only(&mut self, given: &[(&str, f32)]) -> Result<()> {
        self.terms.iter_mut().for_each(|(_, w)| *w = 0.0);
        given.iter().try_for_each(|(t, v)| self.set_term(t, *v))
    }

    /// The one knob: multiply the style side (by default the style, long-range and histogram terms) by `strength`
    /// against the content — 2 paints twice as hard, 0.5 keeps more of the photo. Applied after any explicit term
    /// weights.
    pub fn set_strength(&mut self, strength: f32) -> Result<()> {
        if !(strength.is_finite() && strength > 0.0) {
            bail!("the style strength must be a positive number, got {strength}");
        }
        for (t, w) in &mut self.terms {
            if self.style_side.contains(t) {
                *w *= strength;
            }
        }
        Ok(())
    }

    /// These weights (for the model `from`) for `to`, a model with some of `from`'s layers (the finest scale's
    /// refinement, `Manifest::refine`): the term weights as they are; each group's weights of the layers `to` keeps,
    /// found by name and scaled so that the group sums to what it sums to here (as `select_layers` normalises a
    /// choice of layers). None when a term that acts here would keep no layer with a weight: the refinement could
    /// not follow these settings (e.g. `--style-layers relu5_1`).
    pub fn restricted(&self, from: &Manifest, to: &Manifest) -> Option<Weights> {
        if to.terms != from.terms {
            return None;
        }
        let mut layers = Vec::new();
        for g in &to.layer_groups {
            let names = from.group_layers(&g.term)?;
            let here = self.layers(&g.term);
            let kept: Vec<f32> =
                g.layers.iter().map(|l| names.iter().position(|n| n == l).map_or(0.0, |i| here[i])).collect();
            let (sum_here, sum_kept) = (here.iter().sum::<f32>(), kept.iter().sum::<f32>());
            if sum_kept <= 0.0 {
                if sum_here > 0.0 && self.term(&g.term) != 0.0 {
                    return None;
                }
                layers.push((g.term.clone(), kept));
                continue;
            }
            layers.push((g.term.clone(), kept.iter().map(|w| w * sum_here / sum_kept).collect()));
        }
        Some(Weights {
            terms: self.terms.clone(),
            layers,
            style_side: self.style_side.clone(),
            normalize: self.normalize,
        })
    }

    /// The per-layer weights of the group `term` (empty for a term without layers).
    pub fn layers(&self, term: &str) -> &[f32] {
        self.layers.iter().find(|(t, _)| t == term).map(|(_, v)| v.as_slice()).unwrap_or(&[])
    }

    /// Select the layers of a group and their weights, as neural-style's `-style_layers`: `relu1_1,relu2_1:0.5`
    /// (a layer without a weight gets 1; the weights are normalised to sum 1; layers not named get 0).
    pub fn select_layers(&mut self, m: &Manifest, group: &str, spec: &str) -> Result<()> {
        let Some(available) = m.group_layers(group) else {
            bail!("the model has no {group} term with layers");
        };
        let mut w = vec![0.0f32; available.len()];
        let mut any = false;
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (name, weight) = match item.split_once(':') {
                Some((n, v)) => match v.trim().parse::<f32>() {
                    Ok(x) if x.is_finite() && x >= 0.0 => (n.trim(), x),
                    _ => bail!("{group} layer weight {v:?} in {item:?} must be a non-negative number"),
                },
                None => (item, 1.0),
            };
            let Some(i) = available.iter().position(|l| l == name) else {
                bail!(
                    "{name} is not a {group} layer of this model (it has {}): choose among them, or export a model \
                     with other layers (models/README.md)",
                    available.join(", ")
                );
            };
            w[i] = weight;
            any |= weight > 0.0;
        }
        if !any {
            bail!("no {group} layer selected in {spec:?}: name at least one of {}", available.join(", "));
        }
        let sum: f32 = w.iter().sum();
        w.iter_mut().for_each(|v| *v /= sum);
        match self.layers.iter_mut().find(|(t, _)| t == group) {
            Some((_, v)) => *v = w,
            None => self.layers.push((group.to_string(), w)),
        }
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
) -> Result<BTreeMap<String, Vec<f32>>> {
    let mut out = BTreeMap::new();
    for g in &m.layer_groups {
        let mut norms = Vec::new();
        for l in &g.layers {
            // the content term's target is the content's activation; a style term's, its statistics' tensors
            let ms = if g.term == "content" {
                let f = content.get(l).ok_or_else(|| anyhow::anyhow!("the targets lack the content of layer {l}"))?;
                mean_square(&f.data)
            } else {
                let names = StyleTargets::names(m, &g.term, l);
                if names.is_empty() {
                    break; // a term without a style statistic keeps its weights as given
                }
                let mut sum = 0.0;
                for n in &names {
                    sum += mean_square(style.get(n)?);
                }
                sum / names.len() as f64
            };
            norms.push((1.0 / ms) as f32);
        }
        if norms.len() == g.layers.len() {
            out.insert(g.term.clone(), norms);
        }
    }
    Ok(out)
}

/// The temporal term's inputs for one frame of a camera stream (Ruder et al. 2016): the previous stylised frame and
/// a weight per pixel (row-major `height × width`; 0 where the scene changed).
#[derive(Debug, Clone)]
pub struct TemporalInputs {
    pub previous: Planar,
    pub weights: Vec<f32>,
}

impl TemporalInputs {
    /// Whether these are inputs for a `width × height` image.
    pub fn check(&self, width: usize, height: usize) -> Result<()> {
        if (self.previous.width, self.previous.height) != (width, height) || self.weights.len() != width * height {
            bail!(
                "temporal inputs of {}x{} ({} weights) for a {width}x{height} image",
                self.previous.width,
                self.previous.height,
                self.weights.len()
            );
        }
        Ok(())
    }
}

/// Set the temporal term's inputs for a `width × height` image: `t`'s, or zeros (the term then has neither value
/// nor gradient).
pub fn set_temporal(inp: &mut ObjectiveInputs, width: usize, height: usize, t: Option<&TemporalInputs>) -> Result<()> {
    let (prev, weights) = match t {
        Some(t) => {
            t.check(width, height)?;
            (t.previous.data.clone(), t.weights.clone())
        }
        None => (vec![0.0; 3 * width * height], vec![0.0; width * height]),
    };
    inp.set("temporal_prev", &[1, 3, height, width], prev)?;
    inp.set("temporal_weights", &[1, 1, height, width], weights)
}

/// `objective_inputs` with the content's activations (which must hold the content and histogram layers) taken by
/// value and used as the starting image's: each content layer's map is moved into the inputs and each histogram
/// layer's matched in place, so no image-sized buffer exists twice — at 1920×1080 the copies took the process from
/// 1.5 to 2.5 GB (a tiled scale's image-sized buffers are what its memory budget is made of).
pub fn objective_inputs_owned(
    m: &Manifest,
    (width, height): (usize, usize),
    mut content: BTreeMap<String, FeatureMap>,
    style: &StyleTargets,
    weights: &Weights,
) -> Result<ObjectiveInputs> {
    let norms = if weights.normalize { Some(layer_norms(m, &content, style)?) } else { None };
    let mut inp = ObjectiveInputs::new();
    set_temporal(&mut inp, width, height, None)?;
    for l in &m.hist_layers {
        let f = content.get(l).ok_or_else(|| anyhow::anyhow!("activations of histogram layer {l} missing"))?;
        // a layer that is a content layer too keeps its activations for the content target
        let mut data = if m.content_layers.contains(l) { f.data.clone() } else { content.remove(l).unwrap().data };
        let (c, h, w) = layer_dims(m, l, (width, height))?;
        super::histmatch::match_layer_in_place(m.quantiles, l, [c, h, w], &mut data, style)?;
        inp.set(&format!("hist_target_{l}"), &[1, c, h, w], data)?;
    }
    for l in &m.content_layers {
        let f = content.remove(l).ok_or_else(|| anyhow::anyhow!("content features of {l} missing"))?;
        inp.set(&format!("content_{l}"), &[1, f.channels, f.height, f.width], f.data)?;
    }
    drop(content);
    for name in StyleTargets::inputs(m) {
        let t = style.tensors.get(&name).ok_or_else(|| anyhow::anyhow!("style targets lack {name}"))?;
        inp.set(&name, &t.shape, t.data.clone())?;
    }
    finish_inputs(m, weights, norms, &mut inp)?;
    Ok(inp)
}

/// (channels, height, width) of a layer's map in a `width × height` image.
fn layer_dims(m: &Manifest, layer: &str, (width, height): (usize, usize)) -> Result<(usize, usize, usize)> {
    let l = m.layer(layer).ok_or_else(|| anyhow::anyhow!("layer {layer} is not in the manifest"))?;
    let s = l.stride.max(1);
    Ok((l.channels, height / s, width / s))
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
    // the style statistics that are the objective's inputs, by name (the histogram term's tables are matched to
    // the image first: `histmatch`)
    for name in StyleTargets::inputs(m) {
        let t = style.tensors.get(&name).ok_or_else(|| anyhow::anyhow!("style targets lack {name}"))?;
        inp.set(&name, &t.shape, t.data.clone())?;
    }
    super::histmatch::update_targets(m, start, style, &mut inp)?;
    let norms = if weights.normalize { Some(layer_norms(m, content, style)?) } else { None };
    finish_inputs(m, weights, norms, &mut inp)?;
    Ok(inp)
}

/// The term weights and per-layer weights (normalised by `norms`) of the objective's inputs.
fn finish_inputs(
    m: &Manifest,
    weights: &Weights,
    norms: Option<BTreeMap<String, Vec<f32>>>,
    inp: &mut ObjectiveInputs,
) -> Result<()> {
    if weights.terms.iter().map(|(t, _)| t).ne(m.terms.iter()) {
        bail!("the term weights name {:?}, the model's terms are {:?}", weights.terms, m.terms);
    }
    inp.set("term_weights", &[m.terms.len()], weights.terms.iter().map(|(_, v)| *v).collect())?;
    for g in m.layer_groups.iter().filter(|g| !g.layers.is_empty()) {
        let (name, n, v) = (format!("{}_layer_weights", g.term), g.layers.len(), weights.layers(&g.term));
        if v.len() != n {
            bail!("{name} has {} values for {n} layers", v.len());
        }
        // a group without a normalisation (a term whose targets have none) keeps its weights as given
        let effective: Vec<f32> = match norms.as_ref().and_then(|f| f.get(&g.term)) {
            Some(f) => v.iter().zip(f).map(|(w, k)| w * k).collect(),
            None => v.to_vec(),
        };
        inp.set(&name, &[n], effective)?;
    }
    Ok(())
}
