//! Style and content targets from VGG activations: Gram matrices, shifted Grams (long-range consistency),
//! per-channel quantile tables (histogram loss), blending several styles, and the objective's input tensors.

use std::collections::BTreeMap;

use anyhow::{bail, Result};

use crate::engine::{FeatureMap, Manifest};

/// G = F Fᵀ / n for F = [C, n] (row-major): sgemm (matrixmultiply) over chunks of positions, summed in f64.
pub fn gram(f: &FeatureMap) -> Vec<f32> {
    let (c, n) = (f.channels, f.positions());
    let mut acc = vec![0.0f64; c * c];
    let mut part = vec![0.0f32; c * c];
    const CHUNK: usize = 16384;
    let mut start = 0;
    while start < n {
        let len = CHUNK.min(n - start);
        // SAFETY: the pointers address [C, len] windows inside f.data (channel stride n) and the C×C buffer.
        unsafe {
            matrixmultiply::sgemm(
                c,
                len,
                c,
                1.0,
                f.data.as_ptr().add(start),
                n as isize,
                1,
                f.data.as_ptr().add(start),
                1,
                n as isize,
                0.0,
                part.as_mut_ptr(),
                c as isize,
                1,
            );
        }
        for (s, p) in acc.iter_mut().zip(&part) {
            *s += *p as f64;
        }
        start += len;
    }
    let inv = 1.0 / n.max(1) as f64;
    acc.iter().map(|s| (*s * inv) as f32).collect()
}

/// (horizontal, vertical) Grams between F and F shifted by `d` positions: F[:, :, :-d] · F[:, :, d:]ᵀ / n.
pub fn shifted_grams(f: &FeatureMap, d: usize) -> (Vec<f32>, Vec<f32>) {
    let (c, h, w) = (f.channels, f.height, f.width);
    // horizontal: a = F[:, :, :w-d] (window at col 0), b = F[:, :, d:] (window at col d)
    let gh = if w > d { cross_gram_windows(&f.data, c, h, w, (0, 0), (0, d), h, w - d) } else { vec![0.0; c * c] };
    let gv = if h > d { cross_gram_windows(&f.data, c, h, w, (0, 0), (d, 0), h - d, w) } else { vec![0.0; c * c] };
    (gh, gv)
}

/// Σ over a rows×cols window: A[:, i, j] · B[:, i, j]ᵀ with A at offset `oa`, B at offset `ob`, / (rows·cols).
#[allow(clippy::too_many_arguments)]
fn cross_gram_windows(
    data: &[f32],
    c: usize,
    h: usize,
    w: usize,
    oa: (usize, usize),
    ob: (usize, usize),
    rows: usize,
    cols: usize,
) -> Vec<f32> {
    let hw = h * w;
    let mut acc = vec![0.0f64; c * c];
    let mut part = vec![0.0f32; c * c];
    for r in 0..rows {
        let ra = (oa.0 + r) * w + oa.1;
        let rb = (ob.0 + r) * w + ob.1;
        // SAFETY: windows of `rows`×`cols` positions at the given offsets lie inside data ([C, h, w]).
        unsafe {
            matrixmultiply::sgemm(
                c,
                cols,
                c,
                1.0,
                data.as_ptr().add(ra),
                hw as isize,
                1,
                data.as_ptr().add(rb),
                1,
                hw as isize,
                0.0,
                part.as_mut_ptr(),
                c as isize,
                1,
            );
        }
        for (s, p) in acc.iter_mut().zip(&part) {
            *s += *p as f64;
        }
    }
    let inv = 1.0 / (rows * cols) as f64;
    acc.iter().map(|s| (*s * inv) as f32).collect()
}

/// Resample a sorted row of n values to k values: p_j = (j + ½)·n/k − ½ clipped to [0, n−1], linear.
pub fn resample_sorted(sorted: &[f32], k: usize, out: &mut [f32]) {
    let n = sorted.len();
    for (j, o) in out.iter_mut().enumerate().take(k) {
        let p = ((j as f64 + 0.5) * n as f64 / k as f64 - 0.5).clamp(0.0, (n - 1) as f64);
        let lo = p.floor() as usize;
        let hi = (lo + 1).min(n - 1);
        let frac = p - lo as f64;
        *o = (sorted[lo] as f64 + (sorted[hi] as f64 - sorted[lo] as f64) * frac) as f32;
    }
}

/// Per-channel table of k quantiles, [C, k].
pub fn quantiles(f: &FeatureMap, k: usize) -> Vec<f32> {
    let n = f.positions();
    let mut out = vec![0.0f32; f.channels * k];
    let mut buf = vec![0.0f32; n];
    for ch in 0..f.channels {
        buf.copy_from_slice(&f.data[ch * n..(ch + 1) * n]);
        buf.sort_unstable_by(|a, b| a.total_cmp(b));
        resample_sorted(&buf, k, &mut out[ch * k..(ch + 1) * k]);
    }
    out
}

/// Everything the objective needs from the style image(s), at one scale.
#[derive(Debug, Clone, PartialEq)]
pub struct StyleTargets {
    /// layer -> [C, C]
    pub grams: BTreeMap<String, Vec<f32>>,
    /// layer -> ([C, C] horizontal, [C, C] vertical)
    pub shifts: BTreeMap<String, (Vec<f32>, Vec<f32>)>,
    /// layer -> [C, K]
    pub hists: BTreeMap<String, Vec<f32>>,
}

impl StyleTargets {
    pub fn from_features(m: &Manifest, feats: &BTreeMap<String, FeatureMap>) -> Result<StyleTargets> {
        let get = |l: &str| -> Result<&FeatureMap> {
            feats.get(l).ok_or_else(|| anyhow::anyhow!("features of layer {l} missing"))
        };
        let mut t = StyleTargets { grams: BTreeMap::new(), shifts: BTreeMap::new(), hists: BTreeMap::new() };
        for l in &m.style_layers {
            t.grams.insert(l.clone(), gram(get(l)?));
        }
        for s in &m.shift_layers {
            let f = get(&s.layer)?;
            if f.height <= s.delta || f.width <= s.delta {
                bail!(
                    "style image too small for the long-range term at {} ({}x{} positions, shift {}): use a larger \
                     style image or --style-scale",
                    s.layer,
                    f.width,
                    f.height,
                    s.delta
                );
            }
            t.shifts.insert(s.layer.clone(), shifted_grams(f, s.delta));
        }
        for l in &m.hist_layers {
            t.hists.insert(l.clone(), quantiles(get(l)?, m.quantiles));
        }
        Ok(t)
    }

    /// Weighted blend: Grams linearly, quantile tables by averaging quantiles (the 1-D Wasserstein barycentre).
    /// Weights are normalised to sum to 1.
    pub fn blend(styles: &[StyleTargets], weights: &[f32]) -> Result<StyleTargets> {
        if styles.is_empty() {
            bail!("at least one style image is needed");
        }
        if weights.len() != styles.len() {
            bail!("--style-blend-weights has {} values for {} style images", weights.len(), styles.len());
        }
        if weights.iter().any(|w| !w.is_finite() || *w < 0.0) {
            bail!("--style-blend-weights must be non-negative numbers, got {weights:?}");
        }
        let sum: f32 = weights.iter().sum();
        if sum <= 0.0 {
            bail!("--style-blend-weights sum to 0: give at least one positive weight");
        }
        let w: Vec<f32> = weights.iter().map(|v| v / sum).collect();
        let mix = |pick: &dyn Fn(&StyleTargets) -> &Vec<f32>| -> Vec<f32> {
            let mut out = vec![0.0f32; pick(&styles[0]).len()];
            for (s, wi) in styles.iter().zip(&w) {
                for (o, v) in out.iter_mut().zip(pick(s)) {
                    *o += wi * v;
                }
            }
            out
        };
        let first = &styles[0];
        Ok(StyleTargets {
            grams: first.grams.keys().map(|k| (k.clone(), mix(&|s| &s.grams[k]))).collect(),
            shifts: first
                .shifts
                .keys()
                .map(|k| (k.clone(), (mix(&|s| &s.shifts[k].0), mix(&|s| &s.shifts[k].1))))
                .collect(),
            hists: first.hists.keys().map(|k| (k.clone(), mix(&|s| &s.hists[k]))).collect(),
        })
    }
}
