//! An image's activations computed block by block (features.onnx on each block, the inner cells gathered into the
//! layers' maps): the content targets and the first histogram targets of an image too large to run whole. Exact
//! for the same reason as the tiled objective (the margin covers the deepest layer's reach).

use std::collections::BTreeMap;

use anyhow::{anyhow, bail, Result};

use super::plan::{crop, plan};
use super::stats::channels_stride;
use crate::engine::{FeatureMap, Model, ObjectiveInputs};
use crate::transfer::targets::StyleTargets;

/// The activations of `wanted` layers of `image` (`height × width`, RGB planar), in tiles of side `inner`.
pub fn features(
    model: &mut Model,
    image: &[f32],
    (height, width): (usize, usize),
    inner: usize,
    wanted: &[String],
) -> Result<BTreeMap<String, FeatureMap>> {
    let mut out: BTreeMap<String, FeatureMap> = BTreeMap::new();
    for l in wanted {
        let (c, s) = channels_stride(&model.manifest, l)?;
        let (h, w) = (height / s, width / s);
        out.insert(l.clone(), FeatureMap { channels: c, height: h, width: w, data: vec![0.0; c * h * w] });
    }
    let mut dst: Vec<(&str, &mut [f32])> = out.iter_mut().map(|(l, f)| (l.as_str(), &mut f.data[..])).collect();
    fill(model, image, (height, width), inner, &mut dst)?;
    Ok(out)
}

/// The first histogram targets of a tiled scale: the starting image's activations of every histogram layer
/// gathered block by block into the `hist_target_<layer>` inputs' own buffers, then matched there to the style
/// (`histmatch`, the whole image's ranks). A separate map of each layer beside the targets would be the scale's
/// peak: at 1920×1080 the refinement's relu1_1 alone is 543 MB (measured: 1923 MiB during the setup under a
/// 2000-MiB budget, whose evaluations then peaked at 1905).
pub fn match_start(
    model: &mut Model,
    image: &[f32],
    (height, width): (usize, usize),
    inner: usize,
    style: &StyleTargets,
    inputs: &mut ObjectiveInputs,
) -> Result<()> {
    let layers = model.manifest.hist_layers.clone();
    let names: Vec<String> = layers.iter().map(|l| format!("hist_target_{l}")).collect();
    {
        let buffers =
            inputs.get_many_mut(&names).ok_or_else(|| anyhow!("the objective's inputs lack a histogram target"))?;
        let mut dst: Vec<(&str, &mut [f32])> = layers.iter().map(String::as_str).zip(buffers).collect();
        fill(model, image, (height, width), inner, &mut dst)?;
    }
    super::match_in_place(&model.manifest, inputs, (height, width), style)
}

/// Fill each `(layer, map)` of `dst` (`[C, height / stride, width / stride]`) with `image`'s activations, block by
/// block: every block's inner cells, which the margin makes exactly the whole image's.
fn fill(
    model: &mut Model,
    image: &[f32],
    (height, width): (usize, usize),
    inner: usize,
    dst: &mut [(&str, &mut [f32])],
) -> Result<()> {
    let tiling = model.manifest.tiling.ok_or_else(|| anyhow!("the model has no tiling geometry: re-export it"))?;
    let mut shapes = Vec::with_capacity(dst.len());
    for (l, d) in dst.iter() {
        let (c, s) = channels_stride(&model.manifest, l)?;
        let (h, w) = (height / s, width / s);
        if d.len() != c * h * w {
            bail!("a map of {} values for {l}'s activations of a {width}x{height} image ({c}x{h}x{w})", d.len());
        }
        shapes.push((c, h, w, s));
    }
    for b in plan(height, width, inner, tiling.margin, tiling.align) {
        let o = b.outer;
        let block = crop(image, [3, height, width], (o.y0, o.height(), o.x0, o.width()));
        let feats = model.features(&block, o.height(), o.width())?;
        for ((l, d), &(channels, dh, dw, s)) in dst.iter_mut().zip(&shapes) {
            let f = feats.get(*l).ok_or_else(|| anyhow!("features.onnx gave no {l}"))?;
            let (br0, _, bc0, _) = b.at_stride(s);
            let (r0, r1, c0, c1) = b.inner_at_stride(s, height, width);
            for ch in 0..channels {
                for y in r0..r1 {
                    let src = (ch * f.height + y - br0) * f.width + c0 - bc0;
                    let at = (ch * dh + y) * dw + c0;
                    d[at..at + c1 - c0].copy_from_slice(&f.data[src..src + c1 - c0]);
                }
            }
        }
    }
    Ok(())
}
