//! The objective evaluated block by block, exactly (issue 19; Galerne et al., "Scaling Painting Style Transfer",
//! EGSR 2024, extended to the long-range, histogram, tv and temporal terms). Memory follows the block, not the
//! image: only the image-sized inputs (targets, the histogram layers' global maps) and the gradient are whole.
//!
//! 1. First pass (tile_stats.onnx, forward only), every block: the Gram and shifted-Gram sums over its inner
//!    region are added up (f64), and the histogram layers' inner activations are copied into the layers' global
//!    maps — the `hist_target_<layer>` inputs' buffers, which are then matched in place (`histmatch`): the ranks are
//!    the whole image's, so the targets are bit for bit the untiled ones.
//! 2. The style and long-range losses and their adjoints from the global sums (`stats`).
//! 3. Second pass (tile_grad.onnx), every block: its crops of the targets, the adjoints and the per-term factors
//!    in, the block's inner sums of the additive terms and its gradient (margin included) out; the gradients are
//!    added into the image's. models/fuchun_export/tile.py says why this is exact; its float64 test checks it.
//!
//! Unlike the untiled path, every histogram layer is matched to the image being evaluated (the first pass computes
//! them anyway), not only the full-resolution ones.

pub mod budget;
pub mod features;
pub mod plan;
pub mod stats;
pub mod style;

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{anyhow, bail, Result};

use self::plan::{crop, plan, Block};
use self::stats::{channels_stride, global, input, Sums};
use super::histmatch;
use super::targets::StyleTargets;
use crate::engine::{Losses, Manifest, Model, ObjectiveInputs, TileGraph};

/// One tiled evaluation of `x` (`height × width`, RGB planar) with tiles of side `inner` (rounded down to the
/// manifest's `align`): the losses (as `Model::evaluate`'s) and the seconds spent matching histograms; `grad`
/// receives d total / d x. With `rematch`, the histogram targets are matched to `x`; otherwise the inputs' are
/// used as they are.
#[allow(clippy::too_many_arguments)]
pub fn evaluate(
    model: &mut Model,
    x: &[f32],
    size: (usize, usize),
    inputs: &mut ObjectiveInputs,
    grad: &mut [f32],
    style: &StyleTargets,
    rematch: bool,
    inner: usize,
) -> Result<(Losses, f64)> {
    evaluate_with(model, x, size, inputs, grad, style, rematch, inner, &mut || Ok(()))
}

/// `evaluate`, calling `on_block` before each block of both passes: one tiled evaluation of a kiosk frame on a CPU
/// takes minutes (1920×1080 in small tiles: 9 minutes and more), so the daemon's watchdog is told of progress and a
/// shutdown is seen per block, not per evaluation. An error from `on_block` (cancelled) ends the evaluation.
#[allow(clippy::too_many_arguments)]
pub fn evaluate_with(
    model: &mut Model,
    x: &[f32],
    (height, width): (usize, usize),
    inputs: &mut ObjectiveInputs,
    grad: &mut [f32],
    style: &StyleTargets,
    rematch: bool,
    inner: usize,
    on_block: &mut dyn FnMut() -> Result<()>,
) -> Result<(Losses, f64)> {
    if x.len() != 3 * height * width || grad.len() != x.len() {
        bail!("image buffer of {} values does not match {width}x{height}", x.len());
    }
    model.check_size(height, width)?;
    let m = model.manifest.clone();
    let tiling = m
        .tiling
        .ok_or_else(|| anyhow!("the model has no tile graphs (manifest `tiling`): re-export it with `make models`"))?;
    let blocks = plan(height, width, inner, tiling.margin, tiling.align);
    let image = [3, height, width];

    // 1. statistics over the inner regions; the histogram layers' activations into their global maps
    let mut sums = Sums::default();
    for b in &blocks {
        on_block()?;
        let o = b.outer;
        let xb = crop(x, image, (o.y0, o.height(), o.x0, o.width()));
        let mask = b.mask();
        let feed = [
            ("x", vec![1, 3, o.height(), o.width()], &xb[..]),
            ("inner", vec![1, 1, o.height(), o.width()], &mask[..]),
        ];
        let out = model.run_tile(TileGraph::Stats, &feed, &|n| rematch || !n.starts_with("feat_"))?;
        for (name, (shape, data)) in out {
            match name.strip_prefix("feat_") {
                Some(layer) => gather(&m, inputs, layer, b, (height, width), &shape, &data)?,
                None => sums.add(&name, &data),
            }
        }
    }
    let t = Instant::now();
    if rematch {
        match_in_place(&m, inputs, (height, width), style)?;
    }
    let match_seconds = t.elapsed().as_secs_f64();

    // 2. global losses and adjoints
    let term_weights = input(inputs, "term_weights")?.to_vec();
    let tw = |t: &str| m.terms.iter().position(|n| n == t).map_or(0.0, |i| term_weights[i] as f64);
    let g = global(&m, &sums, inputs, (height, width), &tw)?;
    let count = |l: &str| -> Result<f64> {
        let (c, s) = channels_stride(&m, l)?;
        Ok((c * (height / s) * (width / s)) as f64)
    };
    let (hw, h, w) = ((height * width) as f64, height as f64, width as f64);
    let tv_counts = [3.0 * h * (w - 1.0), 3.0 * (h - 1.0) * w];
    let mut factors: Vec<(String, Vec<f32>)> = Vec::new();
    for (term, layers) in [("content", &m.content_layers), ("hist", &m.hist_layers)] {
        if layers.is_empty() {
            continue;
        }
        let lw = input(inputs, &format!("{term}_layer_weights"))?;
        let f: Result<Vec<f32>> =
            layers.iter().zip(lw).map(|(l, w)| Ok((tw(term) * *w as f64 / count(l)?) as f32)).collect();
        factors.push((format!("{term}_factors"), f?));
    }
    factors.push(("tv_factors".into(), tv_counts.iter().map(|n| (tw("tv") / n) as f32).collect()));
    factors.push(("temporal_factor".into(), vec![(tw("temporal") / (3.0 * hw)) as f32]));

    // 3. each block's gradient and inner sums
    grad.fill(0.0);
    let mut additive: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let declared: Vec<String> = m
        .graphs
        .tile_grad
        .as_ref()
        .ok_or_else(|| anyhow!("the manifest lists no tile_grad graph"))?
        .inputs
        .iter()
        .map(|t| t.name.clone())
        .collect();
    for b in &blocks {
        on_block()?;
        let o = b.outer;
        let mut owned: Vec<(String, Vec<usize>, Vec<f32>)> = vec![
            ("x".into(), vec![1, 3, o.height(), o.width()], crop(x, image, (o.y0, o.height(), o.x0, o.width()))),
            ("inner".into(), vec![1, 1, o.height(), o.width()], b.mask()),
        ];
        for name in &declared {
            let layer = name
                .strip_prefix("content_")
                .filter(|l| m.content_layers.iter().any(|c| c == l))
                .or_else(|| name.strip_prefix("hist_target_"));
            if let Some(layer) = layer {
                let (c, s) = channels_stride(&m, layer)?;
                let (r0, rows, c0, cols) = b.at_stride(s);
                let full = input(inputs, name)?;
                let data = crop(full, [c, height / s, width / s], (r0, rows, c0, cols));
                owned.push((name.clone(), vec![1, c, rows, cols], data));
            } else if let Some(c) = match name.as_str() {
                "temporal_prev" => Some(3),
                "temporal_weights" => Some(1),
                _ => None,
            } {
                let data = crop(input(inputs, name)?, [c, height, width], (o.y0, o.height(), o.x0, o.width()));
                owned.push((name.clone(), vec![1, c, o.height(), o.width()], data));
            }
        }
        let mut feed: Vec<(&str, Vec<usize>, &[f32])> =
            owned.iter().map(|(n, s, d)| (n.as_str(), s.clone(), d.as_slice())).collect();
        for (n, s, d) in &g.adjoints {
            feed.push((n.as_str(), s.clone(), d.as_slice()));
        }
        for (n, d) in &factors {
            feed.push((n.as_str(), vec![d.len()], d.as_slice()));
        }
        if let Some(missing) = declared.iter().find(|n| !feed.iter().any(|(f, _, _)| f == n)) {
            bail!("tile_grad.onnx needs an input {missing} this runtime does not make: a newer export? rebuild fuchun");
        }
        let out = model.run_tile(TileGraph::Grad, &feed, &|_| true)?;
        for (name, (shape, data)) in out {
            if name == "grad" {
                if shape != [1, 3, o.height(), o.width()] {
                    bail!("tile_grad.onnx returned a gradient of shape {shape:?} for a block of {o:?}");
                }
                add_block(grad, image, b, &data);
            } else {
                let acc = additive.entry(name).or_insert_with(|| vec![0.0; data.len()]);
                acc.iter_mut().zip(&data).for_each(|(a, v)| *a += *v as f64);
            }
        }
    }

    // the losses, as the objective's outputs
    let sums_of = |t: &str| additive.get(&format!("sums_{t}")).cloned().unwrap_or_default();
    let mut layers: Vec<(String, Vec<f64>)> = Vec::new();
    for (term, names) in [("content", &m.content_layers), ("hist", &m.hist_layers)] {
        if names.is_empty() {
            continue;
        }
        let lw = input(inputs, &format!("{term}_layer_weights"))?;
        let s = sums_of(term);
        let v: Result<Vec<f64>> = names.iter().enumerate().map(|(i, l)| Ok(lw[i] as f64 * s[i] / count(l)?)).collect();
        layers.push((term.to_string(), v?));
    }
    layers.push(("style".into(), g.style_layers));
    layers.push(("shift".into(), g.shift_layers));
    let tv = sums_of("tv");
    let temporal = sums_of("temporal");
    let mut losses = Losses::default();
    for t in &m.terms {
        let v = match t.as_str() {
            "tv" => tv.iter().zip(tv_counts).map(|(s, n)| s / n).sum(),
            "temporal" => temporal.first().copied().unwrap_or(0.0) / (3.0 * hw),
            _ => layers.iter().find(|(g, _)| g == t).map(|(_, v)| v.iter().sum()).unwrap_or(0.0),
        };
        losses.total += tw(t) * v;
        losses.terms.push((t.clone(), v));
    }
    losses.layers = m
        .layer_groups
        .iter()
        .filter_map(|g| layers.iter().find(|(t, _)| *t == g.term).cloned())
        .filter(|(_, v)| !v.is_empty())
        .collect();
    Ok((losses, match_seconds))
}

/// Match every histogram layer's global map (the `hist_target_<layer>` input of a `height × width` image, holding
/// that layer's activations) to the style, in place: the whole image's ranks.
pub fn match_in_place(
    m: &Manifest,
    inputs: &mut ObjectiveInputs,
    (height, width): (usize, usize),
    style: &StyleTargets,
) -> Result<()> {
    for l in &m.hist_layers {
        let (c, s) = channels_stride(m, l)?;
        let target = inputs.get_mut(&format!("hist_target_{l}")).ok_or_else(|| anyhow!("no hist_target_{l}"))?;
        histmatch::match_layer_in_place(m.quantiles, l, [c, height / s, width / s], target, style)?;
    }
    Ok(())
}

/// Copy a block's inner activations of a histogram layer (`feat_<layer>` of tile_stats.onnx, `[1, C, h, w]`)
/// into the layer's global map, the `hist_target_<layer>` input.
fn gather(
    m: &crate::engine::Manifest,
    inputs: &mut ObjectiveInputs,
    layer: &str,
    b: &Block,
    (height, width): (usize, usize),
    shape: &[usize],
    data: &[f32],
) -> Result<()> {
    let (c, s) = channels_stride(m, layer)?;
    let (hl, wl) = (height / s, width / s);
    let name = format!("hist_target_{layer}");
    let dst = inputs.get_mut(&name).ok_or_else(|| anyhow!("the objective's inputs lack {name}"))?;
    if dst.len() != c * hl * wl || shape.len() != 4 || shape[1] != c {
        bail!("{name} holds {} values for {c}x{hl}x{wl}; the block gave {shape:?}", dst.len());
    }
    let (bh, bw) = (shape[2], shape[3]);
    let (br0, _, bc0, _) = b.at_stride(s);
    let (r0, r1, c0, c1) = b.inner_at_stride(s, height, width);
    for ch in 0..c {
        for y in r0..r1 {
            let src = (ch * bh + y - br0) * bw + c0 - bc0;
            let at = (ch * hl + y) * wl + c0;
            dst[at..at + c1 - c0].copy_from_slice(&data[src..src + c1 - c0]);
        }
    }
    Ok(())
}

/// Add a block's gradient (`[3, h, w]` of its outer rectangle) into the image's.
fn add_block(grad: &mut [f32], [c, height, width]: [usize; 3], b: &Block, data: &[f32]) {
    let o = b.outer;
    let (bh, bw) = (o.height(), o.width());
    for ch in 0..c {
        for y in 0..bh {
            let at = (ch * height + o.y0 + y) * width + o.x0;
            let row = &data[(ch * bh + y) * bw..(ch * bh + y + 1) * bw];
            grad[at..at + bw].iter_mut().zip(row).for_each(|(g, v)| *g += v);
        }
    }
}
