//! An image's activations computed block by block (features.onnx on each block, the inner cells gathered into the
//! layers' maps): the content targets and the first histogram targets of an image too large to run whole. Exact
//! for the same reason as the tiled objective (the margin covers the deepest layer's reach).

use std::collections::BTreeMap;

use anyhow::{anyhow, Result};

use super::plan::{crop, plan};
use crate::engine::{FeatureMap, Model};

/// The activations of `wanted` layers of `image` (`height × width`, RGB planar), in tiles of side `inner`.
pub fn features(
    model: &mut Model,
    image: &[f32],
    (height, width): (usize, usize),
    inner: usize,
    wanted: &[String],
) -> Result<BTreeMap<String, FeatureMap>> {
    let tiling = model.manifest.tiling.ok_or_else(|| anyhow!("the model has no tiling geometry: re-export it"))?;
    let mut out: BTreeMap<String, FeatureMap> = BTreeMap::new();
    for l in wanted {
        let info = model.manifest.layer(l).ok_or_else(|| anyhow!("layer {l} is not in the manifest"))?;
        let (c, s) = (info.channels, info.stride.max(1));
        let (h, w) = (height / s, width / s);
        out.insert(l.clone(), FeatureMap { channels: c, height: h, width: w, data: vec![0.0; c * h * w] });
    }
    for b in plan(height, width, inner, tiling.margin, tiling.align) {
        let o = b.outer;
        let block = crop(image, [3, height, width], (o.y0, o.height(), o.x0, o.width()));
        let feats = model.features(&block, o.height(), o.width())?;
        for (l, dst) in out.iter_mut() {
            let f = feats.get(l).ok_or_else(|| anyhow!("features.onnx gave no {l}"))?;
            let s = model.manifest.layer(l).map_or(1, |x| x.stride.max(1));
            let (br0, _, bc0, _) = b.at_stride(s);
            let (r0, r1, c0, c1) = b.inner_at_stride(s, height, width);
            for ch in 0..dst.channels {
                for y in r0..r1 {
                    let src = (ch * f.height + y - br0) * f.width + c0 - bc0;
                    let at = (ch * dst.height + y) * dst.width + c0;
                    dst.data[at..at + c1 - c0].copy_from_slice(&f.data[src..src + c1 - c0]);
                }
            }
        }
    }
    Ok(out)
}
