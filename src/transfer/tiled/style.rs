//! Style targets of a style image too large to run whole (a 1920-pixel output's style image at style scale 1):
//! the first pass of the tiled objective (tile_stats.onnx) over the style's blocks gives the Gram and shifted-Gram
//! sums and the histogram layers' global maps, from which the Grams and quantile tables are the whole image's.

use std::collections::BTreeMap;

use anyhow::{anyhow, bail, Result};

use super::plan::{crop, plan};
use super::stats::{channels_stride, Sums};
use crate::engine::{FeatureMap, Model, TileGraph};
use crate::transfer::targets::{quantiles, StyleTargets, Target};

/// The style targets of `image` (`height × width`) computed in tiles of side `inner`.
pub fn style_targets(
    model: &mut Model,
    image: &[f32],
    (height, width): (usize, usize),
    inner: usize,
) -> Result<StyleTargets> {
    model.check_size(height, width)?;
    let m = model.manifest.clone();
    let tiling = m.tiling.ok_or_else(|| anyhow!("the model has no tile graphs: re-export it with `make models`"))?;
    let mut sums = Sums::default();
    let mut maps: BTreeMap<String, FeatureMap> = BTreeMap::new();
    for l in &m.hist_layers {
        let (c, s) = channels_stride(&m, l)?;
        let (h, w) = (height / s, width / s);
        maps.insert(l.clone(), FeatureMap { channels: c, height: h, width: w, data: vec![0.0; c * h * w] });
    }
    for b in plan(height, width, inner, tiling.margin, tiling.align) {
        let o = b.outer;
        let xb = crop(image, [3, height, width], (o.y0, o.height(), o.x0, o.width()));
        let mask = b.mask();
        let feed = [
            ("x", vec![1, 3, o.height(), o.width()], &xb[..]),
            ("inner", vec![1, 1, o.height(), o.width()], &mask[..]),
        ];
        for (name, (shape, data)) in model.run_tile(TileGraph::Stats, &feed, &|_| true)? {
            let Some(layer) = name.strip_prefix("feat_") else {
                sums.add(&name, &data);
                continue;
            };
            let dst = maps.get_mut(layer).ok_or_else(|| anyhow!("tile_stats.onnx gave {name}, not a hist layer"))?;
            let s = channels_stride(&m, layer)?.1;
            let (br0, _, bc0, _) = b.at_stride(s);
            let (r0, r1, c0, c1) = b.inner_at_stride(s, height, width);
            let (bh, bw) = (shape[2], shape[3]);
            for ch in 0..dst.channels {
                for y in r0..r1 {
                    let src = (ch * bh + y - br0) * bw + c0 - bc0;
                    let at = (ch * dst.height + y) * dst.width + c0;
                    dst.data[at..at + c1 - c0].copy_from_slice(&data[src..src + c1 - c0]);
                }
            }
        }
    }
    let mut t = StyleTargets::default();
    let mut put = |name: String, shape: Vec<usize>, data: Vec<f32>| {
        t.tensors.insert(name, Target { shape, data });
    };
    let mean = |sum: &[f64], n: usize| sum.iter().map(|v| (v / n as f64) as f32).collect::<Vec<f32>>();
    for l in &m.style_layers {
        let (c, s) = channels_stride(&m, l)?;
        let sum = sums.0.get(&format!("gram_sum_{l}")).ok_or_else(|| anyhow!("no gram_sum_{l}"))?;
        put(format!("gram_{l}"), vec![c, c], mean(sum, (height / s) * (width / s)));
    }
    for sl in &m.shift_layers {
        let (c, s) = channels_stride(&m, &sl.layer)?;
        let (h, w, d) = (height / s, width / s, sl.delta);
        for (side, n) in [("h", h * w.saturating_sub(d)), ("v", h.saturating_sub(d) * w)] {
            let name = format!("shift_{side}_sum_{}", sl.layer);
            let sum = sums.0.get(&name).ok_or_else(|| anyhow!("no {name}"))?;
            put(format!("shift_{side}_{}", sl.layer), vec![c, c], mean(sum, n.max(1)));
        }
    }
    for (l, f) in &maps {
        put(format!("quantiles_{l}"), vec![f.channels, m.quantiles], quantiles(f, m.quantiles));
    }
    // the same tensors as StyleTargets::from_features makes (its table is the one place that names them)
    let want = StyleTargets::layout(&m);
    let got: BTreeMap<String, Vec<usize>> = t.tensors.iter().map(|(k, v)| (k.clone(), v.shape.clone())).collect();
    if want != got {
        bail!("tiled style targets {:?} do not match the model's statistics {:?}", got.keys(), want.keys());
    }
    Ok(t)
}
