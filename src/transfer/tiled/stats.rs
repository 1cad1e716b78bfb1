//! The global statistics of the tiled objective: the Gram and shifted-Gram sums added over the blocks' inner
//! regions (in f64), and from them the style and long-range losses and their adjoints, the derivatives of the
//! whole objective with respect to each sum (the second pass's inputs).
//!
//! For a style layer with C channels and n positions, loss = mean_{C×C}((G − A)²), G = S / n, so
//! d(tw · w · loss) / dS = tw · w · 2 (G − A) / (C² n); for a long-range layer, loss = ½ (mean((Gh − Ah)²) +
//! mean((Gv − Av)²)) with Gh = Sh / nh, nh = h (w − δ) (Gv likewise), so d / dSh = tw · w · (Gh − Ah) / (C² nh).

use std::collections::BTreeMap;

use anyhow::{anyhow, bail, Result};

use crate::engine::{Manifest, ObjectiveInputs};

/// Sums of `[C, C]` statistics by the tile graph's output name, accumulated in f64.
#[derive(Default)]
pub struct Sums(pub BTreeMap<String, Vec<f64>>);

impl Sums {
    pub fn add(&mut self, name: &str, values: &[f32]) {
        let acc = self.0.entry(name.to_string()).or_insert_with(|| vec![0.0; values.len()]);
        for (a, v) in acc.iter_mut().zip(values) {
            *a += *v as f64;
        }
    }

    fn get(&self, name: &str) -> Result<&[f64]> {
        self.0.get(name).map(|v| v.as_slice()).ok_or_else(|| anyhow!("tile_stats.onnx gave no {name}"))
    }
}

/// The losses (per layer, weighted by the layer weights) and the adjoints (graph input name → values).
pub struct Global {
    pub style_layers: Vec<f64>,
    pub shift_layers: Vec<f64>,
    pub adjoints: Vec<(String, Vec<usize>, Vec<f32>)>,
}

/// A graph input of the objective by name, or an error naming it.
pub fn input<'a>(inputs: &'a ObjectiveInputs, name: &str) -> Result<&'a [f32]> {
    inputs.view(name).map(|(_, d)| d).ok_or_else(|| anyhow!("the objective's inputs lack {name}"))
}

/// Losses and adjoints from the summed statistics of a `height × width` image. `term_weight(t)` is the term's
/// weight (the adjoints carry it; the losses do not, as the objective's `loss_<term>` outputs).
pub fn global(
    m: &Manifest,
    sums: &Sums,
    inputs: &ObjectiveInputs,
    (height, width): (usize, usize),
    term_weight: &dyn Fn(&str) -> f64,
) -> Result<Global> {
    let mut g = Global { style_layers: Vec::new(), shift_layers: Vec::new(), adjoints: Vec::new() };
    let weights = input(inputs, "style_layer_weights")?;
    let tw = term_weight("style");
    for (i, l) in m.style_layers.iter().enumerate() {
        let (c, s) = channels_stride(m, l)?;
        let n = (height / s) * (width / s);
        let (loss, adj) = layer(sums.get(&format!("gram_sum_{l}"))?, input(inputs, &format!("gram_{l}"))?, c, n)?;
        g.style_layers.push(weights[i] as f64 * loss);
        let k = tw * weights[i] as f64 * 2.0;
        g.adjoints.push((format!("style_adjoint_{l}"), vec![c, c], adj.iter().map(|v| (v * k) as f32).collect()));
    }
    let tw = term_weight("shift");
    let weights = if m.shift_layers.is_empty() { &[][..] } else { input(inputs, "shift_layer_weights")? };
    for (i, sl) in m.shift_layers.iter().enumerate() {
        let (l, d) = (&sl.layer, sl.delta);
        let (c, s) = channels_stride(m, l)?;
        let (h, w) = (height / s, width / s);
        let mut loss = 0.0;
        for (side, n) in [("h", h * w.saturating_sub(d)), ("v", h.saturating_sub(d) * w)] {
            let target = input(inputs, &format!("shift_{side}_{l}"))?;
            let (ls, adj) = layer(sums.get(&format!("shift_{side}_sum_{l}"))?, target, c, n)?;
            loss += 0.5 * ls;
            let k = tw * weights[i] as f64;
            g.adjoints.push((
                format!("shift_{side}_adjoint_{l}"),
                vec![c, c],
                adj.iter().map(|v| (v * k) as f32).collect(),
            ));
        }
        g.shift_layers.push(weights[i] as f64 * loss);
    }
    Ok(g)
}

/// mean((S/n − A)²) and (S/n − A) / (C² n) of one `[C, C]` statistic.
fn layer(sum: &[f64], target: &[f32], c: usize, n: usize) -> Result<(f64, Vec<f64>)> {
    if sum.len() != c * c || target.len() != c * c {
        bail!("a {c}x{c} statistic has {} summed values and a target of {}", sum.len(), target.len());
    }
    if n == 0 {
        bail!("a statistic over no positions: the image is below the model's minimum size");
    }
    let inv = 1.0 / n as f64;
    let diff: Vec<f64> = sum.iter().zip(target).map(|(s, a)| s * inv - *a as f64).collect();
    let loss = diff.iter().map(|d| d * d).sum::<f64>() / (c * c) as f64;
    let scale = 1.0 / ((c * c) as f64 * n as f64);
    Ok((loss, diff.iter().map(|d| d * scale).collect()))
}

/// A layer's channels and stride from the manifest.
pub fn channels_stride(m: &Manifest, layer: &str) -> Result<(usize, usize)> {
    let l = m.layer(layer).ok_or_else(|| anyhow!("layer {layer} is not in the manifest's layer list"))?;
    Ok((l.channels, l.stride.max(1)))
}
