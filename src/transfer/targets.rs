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

/// One target tensor: its shape and values (row-major).
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// Everything the objective needs from the style image(s), at one scale: each target tensor by name — the
/// objective's input name where it is one (`gram_<layer>`, `shift_h_<layer>`, `shift_v_<layer>`), `quantiles_<layer>`
/// for the histogram term's tables (matched to the image by the runtime, `histmatch`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StyleTargets {
    pub tensors: BTreeMap<String, Target>,
}

/// A style term's statistics of one layer: the tensors' names and shapes, and how they are computed from the style's
/// activations. This table is the one place of the runtime that knows the style terms' statistics: a new layered
/// style term adds its entry here (and its loss in the exporter); feeding the objective, the per-layer
/// normalisation, blending and the daemon's cache follow the names.
/// Names and shapes of a statistic's tensors at a layer (given the layer's channels).
type Names = fn(&Manifest, &str, usize) -> Vec<(String, Vec<usize>)>;
/// A statistic's tensors' values from a layer's activations.
type Compute = fn(&Manifest, &str, &FeatureMap) -> Result<Vec<Vec<f32>>>;

struct StyleStatistic {
    /// The manifest's term (its `layer_groups` entry gives the layers).
    term: &'static str,
    /// The tensors of `layer`: names and shapes.
    tensors: Names,
    /// They are the objective's inputs as they are (false: matched to the image first, as the histogram term's
    /// quantile tables are by `histmatch`).
    input: bool,
    /// Their values from the layer's activations, in the order of `tensors`.
    compute: Compute,
}

const STATISTICS: [StyleStatistic; 3] = [
    StyleStatistic {
        term: "style",
        input: true,
        tensors: |_, l, c| vec![(format!("gram_{l}"), vec![c, c])],
        compute: |_, _, f| Ok(vec![gram(f)]),
    },
    StyleStatistic {
        term: "shift",
        input: true,
        tensors: |_, l, c| vec![(format!("shift_h_{l}"), vec![c, c]), (format!("shift_v_{l}"), vec![c, c])],
        compute: |m, l, f| {
            let delta = m.shift_layers.iter().find(|s| s.layer == l).map_or(1, |s| s.delta);
            if f.height <= delta || f.width <= delta {
                bail!(
                    "style image too small for the long-range term at {l} ({}x{} positions, shift {delta}): use a \
                     larger style image or --style-scale",
                    f.width,
                    f.height
                );
            }
            let (h, v) = shifted_grams(f, delta);
            Ok(vec![h, v])
        },
    },
    StyleStatistic {
        term: "hist",
        input: false,
        tensors: |m, l, c| vec![(format!("quantiles_{l}"), vec![c, m.quantiles])],
        compute: |m, _, f| Ok(vec![quantiles(f, m.quantiles)]),
    },
];

/// The style statistics' (term, layer) pairs of this model, with their tensors' names and shapes.
fn statistics(m: &Manifest) -> impl Iterator<Item = (&StyleStatistic, &String, Vec<(String, Vec<usize>)>)> {
    STATISTICS.iter().flat_map(move |s| {
        m.group_layers(s.term).unwrap_or_default().iter().map(move |l| {
            let c = m.layer(l).map_or(0, |x| x.channels);
            (s, l, (s.tensors)(m, l, c))
        })
    })
}

impl StyleTargets {
    pub fn from_features(m: &Manifest, feats: &BTreeMap<String, FeatureMap>) -> Result<StyleTargets> {
        let mut t = StyleTargets::default();
        for (s, l, names) in statistics(m) {
            let f = feats.get(l).ok_or_else(|| anyhow::anyhow!("features of layer {l} missing"))?;
            for ((name, shape), data) in names.into_iter().zip((s.compute)(m, l, f)?) {
                t.tensors.insert(name, Target { shape, data });
            }
        }
        Ok(t)
    }

    /// The tensors `from_features` makes for this model: names and shapes (what the daemon's cache must hold).
    pub fn layout(m: &Manifest) -> BTreeMap<String, Vec<usize>> {
        statistics(m).flat_map(|(_, _, names)| names).collect()
    }

    /// The names of the tensors that are the objective's inputs as they are (fed by `inputs::objective_inputs`).
    pub fn inputs(m: &Manifest) -> Vec<String> {
        statistics(m).filter(|(s, _, _)| s.input).flat_map(|(_, _, n)| n).map(|n| n.0).collect()
    }

    /// The names of the tensors of `term`'s statistic at `layer` (none for a term without one, e.g. content).
    pub fn names(m: &Manifest, term: &str, layer: &str) -> Vec<String> {
        statistics(m).filter(|(s, l, _)| s.term == term && *l == layer).flat_map(|(_, _, n)| n).map(|n| n.0).collect()
    }

    /// The values of the tensor `name`.
    pub fn get(&self, name: &str) -> Result<&[f32]> {
        self.tensors.get(name).map(|t| t.data.as_slice()).ok_or_else(|| anyhow::anyhow!("style targets lack {name}"))
    }

    /// Weighted blend of every tensor (Grams linearly, quantile tables by averaging quantiles: the 1-D Wasserstein
    /// barycentre). Weights are normalised to sum to 1.
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
        let mix = |name: &str| -> Vec<f32> {
            let mut out = vec![0.0f32; styles[0].tensors[name].data.len()];
            for (s, wi) in styles.iter().zip(&w) {
                for (o, v) in out.iter_mut().zip(&s.tensors[name].data) {
                    *o += wi * v;
                }
            }
            out
        };
        let tensors = styles[0]
            .tensors
            .iter()
            .map(|(k, t)| (k.clone(), Target { shape: t.shape.clone(), data: mix(k) }))
            .collect();
        Ok(StyleTargets { tensors })
    }
}
