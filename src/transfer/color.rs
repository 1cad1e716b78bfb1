//! Colour handling: `--original-colors` keeps the content's chroma and takes only the luminance from the
//! stylised image (BT.601 full-range YCbCr, as in Gatys et al.'s colour-preservation note); `--palette style`
//! carries the content into the style's colours before the transfer — the linear Monge–Kantorovich map between the
//! two RGB distributions' means and covariances, then iterative distribution transfer (Pitié et al. 2005: 1-D
//! quantile maps along rotated axes) for the rest of the distribution — so that the content term no longer pulls
//! the result back to the photo's colours and the optimisation starts with the painting's palette.

use crate::imageio::Planar;

pub fn rgb_to_ycbcr(r: f32, g: f32, b: f32) -> (f32, f32, f32) {
    let y = 0.299 * r + 0.587 * g + 0.114 * b;
    let cb = 0.5 - 0.168_736 * r - 0.331_264 * g + 0.5 * b;
    let cr = 0.5 + 0.5 * r - 0.418_688 * g - 0.081_312 * b;
    (y, cb, cr)
}

pub fn ycbcr_to_rgb(y: f32, cb: f32, cr: f32) -> (f32, f32, f32) {
    let (cb, cr) = (cb - 0.5, cr - 0.5);
    (y + 1.402 * cr, y - 0.344_136 * cb - 0.714_136 * cr, y + 1.772 * cb)
}

/// Luminance of `stylized` with the chroma of `content` (resized to the stylised size). Clamped to [0,1].
pub fn original_colors(stylized: &Planar, content: &Planar) -> Planar {
    let content = content.resize(stylized.width, stylized.height);
    let n = stylized.width * stylized.height;
    let mut out = Planar::new(stylized.width, stylized.height);
    for i in 0..n {
        let (y, _, _) = rgb_to_ycbcr(stylized.data[i], stylized.data[n + i], stylized.data[2 * n + i]);
        let (_, cb, cr) = rgb_to_ycbcr(content.data[i], content.data[n + i], content.data[2 * n + i]);
        let (r, g, b) = ycbcr_to_rgb(y, cb, cr);
        out.data[i] = r.clamp(0.0, 1.0);
        out.data[n + i] = g.clamp(0.0, 1.0);
        out.data[2 * n + i] = b.clamp(0.0, 1.0);
    }
    out
}

/// The luminance (BT.601 Y) of `img`, one value per pixel.
pub fn luma(img: &Planar) -> Vec<f32> {
    let n = img.width * img.height;
    (0..n).map(|i| rgb_to_ycbcr(img.data[i], img.data[n + i], img.data[2 * n + i]).0).collect()
}

/// The luminance (BT.601 Y) of `img` in all three channels.
pub fn luminance(img: &Planar) -> Planar {
    let n = img.width * img.height;
    let mut out = Planar::new(img.width, img.height);
    for i in 0..n {
        let (y, _, _) = rgb_to_ycbcr(img.data[i], img.data[n + i], img.data[2 * n + i]);
        for c in 0..3 {
            out.data[c * n + i] = y;
        }
    }
    out
}

/// The luminance of `style` shifted and scaled to the mean and standard deviation of `reference`'s (a luminance
/// image), clamped to [0, 1], in all three channels (Gatys et al. 2017, luminance-only transfer).
pub fn matched_luminance(style: &Planar, reference: &Planar) -> Planar {
    let stats = |p: &Planar| {
        let n = p.width * p.height;
        let y = &p.data[..n];
        let mean = y.iter().map(|v| *v as f64).sum::<f64>() / n.max(1) as f64;
        let var = y.iter().map(|v| (*v as f64 - mean).powi(2)).sum::<f64>() / n.max(1) as f64;
        (mean, var.sqrt().max(1e-6))
    };
    let mut out = luminance(style);
    let (ms, ss) = stats(&out);
    let (mr, sr) = stats(reference);
    for v in out.data.iter_mut() {
        *v = ((((*v as f64) - ms) / ss * sr + mr) as f32).clamp(0.0, 1.0);
    }
    out
}

/// Mean and covariance of an image's RGB pixels (or of a blend of style images).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ColourStats {
    pub mean: [f64; 3],
    pub cov: [[f64; 3]; 3],
}

impl ColourStats {
    pub fn of(img: &Planar) -> ColourStats {
        let n = img.width * img.height;
        let px = |i: usize| [img.data[i] as f64, img.data[n + i] as f64, img.data[2 * n + i] as f64];
        let mut mean = [0.0; 3];
        for i in 0..n {
            let p = px(i);
            (0..3).for_each(|c| mean[c] += p[c] / n.max(1) as f64);
        }
        let mut cov = [[0.0; 3]; 3];
        for i in 0..n {
            let p = px(i);
            for a in 0..3 {
                for b in 0..3 {
                    cov[a][b] += (p[a] - mean[a]) * (p[b] - mean[b]) / n.max(1) as f64;
                }
            }
        }
        ColourStats { mean, cov }
    }
}

type M3 = [[f64; 3]; 3];

fn mul(a: &M3, b: &M3) -> M3 {
    std::array::from_fn(|i| std::array::from_fn(|j| (0..3).map(|k| a[i][k] * b[k][j]).sum()))
}

/// Eigen-decomposition of a symmetric 3×3 matrix (cyclic Jacobi): eigenvalues and eigenvectors as columns.
fn eigh(m: &M3) -> ([f64; 3], M3) {
    let mut a = *m;
    let mut v: M3 = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
    for _ in 0..50 {
        let off = a[0][1].powi(2) + a[0][2].powi(2) + a[1][2].powi(2);
        if off < 1e-30 {
            break;
        }
        for (p, q) in [(0, 1), (0, 2), (1, 2)] {
            if a[p][q].abs() < 1e-300 {
                continue;
            }
            let theta = (a[q][q] - a[p][p]) / (2.0 * a[p][q]);
            let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
            let t = if theta == 0.0 { 1.0 } else { t };
            let (c, s) = (1.0 / (t * t + 1.0).sqrt(), t / (t * t + 1.0).sqrt());
            let mut r: M3 = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
            r[p][p] = c;
            r[q][q] = c;
            r[p][q] = s;
            r[q][p] = -s;
            let rt: M3 = std::array::from_fn(|i| std::array::from_fn(|j| r[j][i]));
            a = mul(&mul(&rt, &a), &r);
            v = mul(&v, &r);
        }
    }
    ([a[0][0], a[1][1], a[2][2]], v)
}

/// f(M) for a symmetric positive semi-definite M, applying f to its eigenvalues (floored at `eps`).
fn spectral(m: &M3, eps: f64, f: impl Fn(f64) -> f64) -> M3 {
    let (l, v) = eigh(m);
    std::array::from_fn(|i| std::array::from_fn(|j| (0..3).map(|k| v[i][k] * f(l[k].max(eps)) * v[j][k]).sum()))
}

/// A sample of a palette's colours (RGB in [0, 1]): the pixels of the style images, blended by their weights.
#[derive(Debug, Clone, PartialEq)]
pub struct ColourSample {
    pub pixels: Vec<[f32; 3]>,
}

impl ColourSample {
    /// The pixels of `images` (each at most `side` px a side), image i drawn with weight `blend[i]` (empty: equal):
    /// every image contributes the same number of samples times its weight.
    pub fn of(images: &[Planar], blend: &[f32], side: usize) -> Option<ColourSample> {
        // an image of weight 0 is not in the blend: with it left out, a blend of one image samples exactly that
        // image alone (`--style-blend-weights 1,0` is the first style)
        let (smalls, weights): (Vec<Planar>, Vec<f32>) = images
            .iter()
            .enumerate()
            .map(|(i, s)| (s, blend.get(i).copied().unwrap_or(1.0)))
            .filter(|(_, w)| *w > 0.0)
            .map(|(s, w)| (if s.width.max(s.height) > side { s.fit_longest(side) } else { s.clone() }, w))
            .unzip();
        let per = smalls.iter().map(|s| s.width * s.height).min()?;
        let total: f32 = weights.iter().sum::<f32>().max(1e-12);
        let mut pixels = Vec::new();
        for (s, w) in smalls.iter().zip(&weights) {
            let n = s.width * s.height;
            let take = ((w / total) * (per * smalls.len()) as f32).round() as usize;
            for k in 0..take {
                // an even stride over the image's pixels
                let j = (k * n / take.max(1)).min(n - 1);
                pixels.push([s.data[j], s.data[n + j], s.data[2 * n + j]]);
            }
        }
        (!pixels.is_empty()).then_some(ColourSample { pixels })
    }

    pub fn stats(&self) -> ColourStats {
        let mut p = Planar::new(self.pixels.len(), 1);
        let n = self.pixels.len();
        for (i, v) in self.pixels.iter().enumerate() {
            (0..3).for_each(|c| p.data[c * n + i] = v[c]);
        }
        ColourStats::of(&p)
    }
}

/// Rounds of the iterative distribution transfer after the linear map.
const IDT_ROUNDS: usize = 10;
/// Quantiles of the 1-D maps (piecewise linear between them: a smooth, monotone map of each axis, so that equal
/// colours stay equal and no grain appears).
const IDT_QUANTILES: usize = 64;

/// The 1-D maps of one round of the distribution transfer, one per rotated axis: knots (x, y), x increasing.
type AxisMaps = [Vec<(f64, f64)>; 3];

/// A colour map fitted once and applied to any image: the content carried into a palette (`ColourMap::fit`).
/// Camera streams keep their cold frame's map for the frames after it, so that every frame is carried alike and
/// what did not change stays the same colour.
#[derive(Debug, Clone, PartialEq)]
pub struct ColourMap {
    /// x ↦ a (x − from) + to
    a: M3,
    from: [f64; 3],
    to: [f64; 3],
    /// Each round of the distribution transfer: a rotation (rows: axes) and the 1-D map along each axis.
    rounds: Vec<(M3, AxisMaps)>,
}

impl ColourMap {
    /// The map that carries `content` into the colours of `to`: first the linear map x ↦ A (x − μc) + μs with
    /// A = Σc^−½ (Σc^½ Σs Σc^½)^½ Σc^−½, which moves the pixels least among those that give the content the
    /// target's mean and covariance (Pitié & Kokaram 2007); then `IDT_ROUNDS` rounds of iterative distribution
    /// transfer (Pitié et al. 2005): along three rotated orthonormal axes, each coordinate mapped through the
    /// monotone map that gives it the target's 1-D distribution. Returns the map and `content` carried by it.
    pub fn fit(content: &Planar, to: &ColourSample) -> (ColourMap, Planar) {
        let (a, from, target) = linear_map(&ColourStats::of(content), &to.stats());
        let mut map = ColourMap { a, from, to: target, rounds: Vec::with_capacity(IDT_ROUNDS) };
        let mut out = map.apply_linear(content);
        let n = out.width * out.height;
        let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(17);
        for _ in 0..IDT_ROUNDS {
            let r = random_rotation(&mut rng);
            let knots: AxisMaps = std::array::from_fn(|axis| {
                let proj = |p: [f32; 3]| (0..3).map(|k| r[axis][k] * p[k] as f64).sum::<f64>();
                let mut src: Vec<f64> =
                    (0..n).map(|i| proj([out.data[i], out.data[n + i], out.data[2 * n + i]])).collect();
                let mut dst: Vec<f64> = to.pixels.iter().map(|p| proj(*p)).collect();
                src.sort_unstable_by(f64::total_cmp);
                dst.sort_unstable_by(f64::total_cmp);
                let q = |s: &[f64], t: f64| s[((t * (s.len() - 1) as f64).round() as usize).min(s.len() - 1)];
                (0..=IDT_QUANTILES)
                    .map(|k| {
                        let t = k as f64 / IDT_QUANTILES as f64;
                        (q(&src, t), q(&dst, t))
                    })
                    .collect()
            });
            apply_round(&mut out, &r, &knots);
            map.rounds.push((r, knots));
        }
        (map, out)
    }

    /// `img` carried by the map (clamped to [0, 1]).
    pub fn apply(&self, img: &Planar) -> Planar {
        let mut out = self.apply_linear(img);
        for (r, knots) in &self.rounds {
            apply_round(&mut out, r, knots);
        }
        out
    }

    #[allow(clippy::needless_range_loop)] // 3×3 algebra reads as index loops
    fn apply_linear(&self, img: &Planar) -> Planar {
        let n = img.width * img.height;
        let mut out = Planar::new(img.width, img.height);
        for i in 0..n {
            let d = [0, 1, 2].map(|c| img.data[c * n + i] as f64 - self.from[c]);
            for r in 0..3 {
                let v = self.to[r] + (0..3).map(|k| self.a[r][k] * d[k]).sum::<f64>();
                out.data[r * n + i] = (v as f32).clamp(0.0, 1.0);
            }
        }
        out
    }
}

/// One round of the distribution transfer: each pixel moved along each rotated axis by its 1-D map.
fn apply_round(out: &mut Planar, r: &M3, knots: &AxisMaps) {
    let n = out.width * out.height;
    for (axis, k) in r.iter().zip(knots) {
        for i in 0..n {
            let v: f64 = (0..3).map(|c| axis[c] * out.data[c * n + i] as f64).sum();
            let moved = piecewise(k, v) - v;
            for (c, a) in axis.iter().enumerate() {
                out.data[c * n + i] = (out.data[c * n + i] as f64 + moved * a).clamp(0.0, 1.0) as f32;
            }
        }
    }
}

/// The content carried into the colours of `to` (`ColourMap::fit`). A colour map: equal colours stay equal.
pub fn carry(content: &Planar, to: &ColourSample) -> Planar {
    ColourMap::fit(content, to).1
}

/// At most this many of a result's pixels are what `Finish` fits its colour map on (every k-th row and column, not
/// averaged: an averaged copy has less colour spread than the result, and the map fitted to it overshoots); a kiosk
/// image's 8 million pixels would take seconds to sort ten times over.
const FINISH_FIT_PIXELS: usize = 256 * 256;
/// The painting is sampled for the finish at the result's longest side, up to this: its colours are compared with
/// the result's at the same scale. Sampled at `schedule::PALETTE_SIDE` (128 px) instead, a 512-px result was
/// carried to a palette with less spread than the painting has at 512 px: the two Starry Night pairs at 1.54 / 1.53
/// against 0.72 / 0.63 (docs/quality.md).
const FINISH_STYLE_SIDE: usize = 1024;

/// The longest side at which a finish of `image` samples the painting's colours (`StyleSource::colours`).
pub fn finish_side(image: &Planar) -> usize {
    image.width.max(image.height).min(FINISH_STYLE_SIDE)
}

/// Every k-th pixel of every k-th row of `img`, k the smallest that leaves at most `max` pixels.
fn strided(img: &Planar, max: usize) -> Planar {
    let n = img.width * img.height;
    let k = (1..).find(|k| n.div_ceil(k * k) <= max).expect("some stride fits");
    if k == 1 {
        return img.clone();
    }
    let (w, h) = (img.width.div_ceil(k), img.height.div_ceil(k));
    let mut out = Planar::new(w, h);
    for c in 0..3 {
        for y in 0..h {
            for x in 0..w {
                out.data[c * w * h + y * w + x] = img.data[c * n + y * k * img.width + x * k];
            }
        }
    }
    out
}

/// The share of `Finish`'s amount by which it moves the luminance (BT.601 Y); the chroma moves by all of it. The
/// light/dark contrasts are the scene's structure: carried all the way, the map flattens some of them (on the 12
/// bench pairs at 256 px structure 0.825 → 0.807, the cat under Starry Night below the 0.6 bound); a third keeps
/// them (0.822) and still takes most of the palette's way (1.08 → 0.64; docs/quality.md; both with the painting
/// sampled at 128 px, before `FINISH_STYLE_SIDE`).
pub const FINISH_LUMA_SHARE: f32 = 0.3;

/// After the transfer, the result carried towards the colours of `to` by a colour map fitted to it
/// (`ColourMap::fit`): each pixel's chroma (BT.601 CbCr) `amount` of the way to where the map takes it, its
/// luminance `amount × FINISH_LUMA_SHARE` of the way.
///
/// Why after the transfer: the run starts in the painting's colours (`carry`), but the style and content terms pull
/// them apart again where the painting's colours are far from each other — Starry Night's blues and yellows ended
/// at palette 1.6–2.0 against 0.6–1.0 for the other paintings (docs/quality.md). A map of the finished picture's
/// colours keeps every stroke (equal colours stay equal) and moves the palette back.
///
/// Kept by a camera stream: its frames until the next cold one are finished by the cold frame's map, so that what
/// did not change keeps its colour, while the optimiser goes on from the unfinished results.
#[derive(Debug, Clone)]
pub struct Finish {
    map: Option<ColourMap>,
    amount: f32,
}

impl Finish {
    /// The map from `image`'s colours towards `to`'s (the painting sampled at `finish_side(image)`), applied `amount`
    /// (clamped to [0, 1]) of the way.
    pub fn fit(image: &Planar, to: &ColourSample, amount: f32) -> Finish {
        let amount = amount.clamp(0.0, 1.0);
        if amount == 0.0 {
            return Finish { map: None, amount };
        }
        Finish { map: Some(ColourMap::fit(&strided(image, FINISH_FIT_PIXELS), to).0), amount }
    }

    /// `image` finished.
    pub fn apply(&self, image: &Planar) -> Planar {
        let Some(map) = &self.map else { return image.clone() };
        let mut out = map.apply(image);
        let n = image.width * image.height;
        let (a, al) = (self.amount, self.amount * FINISH_LUMA_SHARE);
        for i in 0..n {
            let (y0, cb0, cr0) = rgb_to_ycbcr(image.data[i], image.data[n + i], image.data[2 * n + i]);
            let (y1, cb1, cr1) = rgb_to_ycbcr(out.data[i], out.data[n + i], out.data[2 * n + i]);
            let (r, g, b) = ycbcr_to_rgb(y0 + al * (y1 - y0), cb0 + a * (cb1 - cb0), cr0 + a * (cr1 - cr0));
            out.data[i] = r.clamp(0.0, 1.0);
            out.data[n + i] = g.clamp(0.0, 1.0);
            out.data[2 * n + i] = b.clamp(0.0, 1.0);
        }
        out
    }
}

/// The piecewise-linear map through `knots` (x increasing; flat runs of x take the middle of their y).
fn piecewise(knots: &[(f64, f64)], x: f64) -> f64 {
    let i = knots.partition_point(|k| k.0 < x);
    if i == 0 {
        return knots[0].1 + (x - knots[0].0);
    }
    if i == knots.len() {
        let l = knots[knots.len() - 1];
        return l.1 + (x - l.0);
    }
    let (a, b) = (knots[i - 1], knots[i]);
    if b.0 - a.0 < 1e-12 {
        return 0.5 * (a.1 + b.1);
    }
    a.1 + (b.1 - a.1) * (x - a.0) / (b.0 - a.0)
}

/// A random rotation of RGB space (rows orthonormal): Gram–Schmidt on Gaussian vectors.
#[allow(clippy::needless_range_loop)] // 3×3 algebra reads as index loops
fn random_rotation(rng: &mut rand_chacha::ChaCha8Rng) -> M3 {
    use rand::Rng;
    let mut m: M3 = std::array::from_fn(|_| std::array::from_fn(|_| rng.sample::<f64, _>(rand_distr::StandardNormal)));
    for i in 0..3 {
        for j in 0..i {
            let d: f64 = (0..3).map(|k| m[i][k] * m[j][k]).sum();
            for k in 0..3 {
                m[i][k] -= d * m[j][k];
            }
        }
        let norm = (0..3).map(|k| m[i][k] * m[i][k]).sum::<f64>().sqrt().max(1e-12);
        (0..3).for_each(|k| m[i][k] /= norm);
    }
    m
}

/// The linear part of the colour map from `from` to `to`: (A, μ_from, μ_to).
fn linear_map(from: &ColourStats, to: &ColourStats) -> (M3, [f64; 3], [f64; 3]) {
    // a flat content (one colour) has no covariance to map: the floor keeps A finite
    let eps = 1e-6;
    let c_half = spectral(&from.cov, eps, f64::sqrt);
    let c_inv_half = spectral(&from.cov, eps, |x| 1.0 / x.sqrt());
    let middle = spectral(&mul(&mul(&c_half, &to.cov), &c_half), 0.0, f64::sqrt);
    (mul(&mul(&c_inv_half, &middle), &c_inv_half), from.mean, to.mean)
}

/// The content given the mean and covariance `to` by the linear part of the colour map alone.
pub fn carry_linear(content: &Planar, to: &ColourStats) -> Planar {
    let (a, from, to) = linear_map(&ColourStats::of(content), to);
    ColourMap { a, from, to, rounds: Vec::new() }.apply_linear(content)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversion_round_trips() {
        for &(r, g, b) in &[(0.0, 0.0, 0.0), (1.0, 1.0, 1.0), (0.2, 0.7, 0.4), (0.9, 0.1, 0.5)] {
            let (y, cb, cr) = rgb_to_ycbcr(r, g, b);
            let (r2, g2, b2) = ycbcr_to_rgb(y, cb, cr);
            assert!((r - r2).abs() < 1e-5 && (g - g2).abs() < 1e-5 && (b - b2).abs() < 1e-5);
        }
        let (_, cb, cr) = rgb_to_ycbcr(0.5, 0.5, 0.5);
        assert!((cb - 0.5).abs() < 1e-6 && (cr - 0.5).abs() < 1e-6);
    }

    #[test]
    fn style_luminance_takes_the_reference_mean_and_deviation() {
        let (w, h) = (20, 10);
        let n = w * h;
        let mut s = Planar::new(w, h);
        let mut r = Planar::new(w, h);
        for i in 0..n {
            let t = (i % 7) as f32 / 7.0;
            (s.data[i], s.data[n + i], s.data[2 * n + i]) = (0.9 * t, 0.2, 0.1 + 0.5 * t);
            let y = 0.4 + 0.1 * ((i % 3) as f32 - 1.0);
            (r.data[i], r.data[n + i], r.data[2 * n + i]) = (y, y, y);
        }
        let m = matched_luminance(&s, &r);
        let mean = |p: &Planar| p.data[..n].iter().sum::<f32>() / n as f32;
        let sd = |p: &Planar| {
            let mu = mean(p);
            (p.data[..n].iter().map(|v| (v - mu) * (v - mu)).sum::<f32>() / n as f32).sqrt()
        };
        assert!((mean(&m) - mean(&r)).abs() < 1e-4 && (sd(&m) - sd(&r)).abs() < 1e-4);
        // grey: the three channels equal
        assert!((0..n).all(|i| m.data[i] == m.data[n + i] && m.data[i] == m.data[2 * n + i]));
    }

    #[test]
    fn luminance_from_stylized_chroma_from_content() {
        let (w, h) = (16, 8);
        let n = w * h;
        let mut s = Planar::new(w, h);
        let mut c = Planar::new(w, h);
        for i in 0..n {
            let t = i as f32 / n as f32;
            s.data[i] = 0.3 + 0.4 * t;
            s.data[n + i] = 0.5;
            s.data[2 * n + i] = 0.6 - 0.2 * t;
            c.data[i] = 0.6;
            c.data[n + i] = 0.4 + 0.1 * t;
            c.data[2 * n + i] = 0.3;
        }
        let o = original_colors(&s, &c);
        for i in 0..n {
            let (y, _, _) = rgb_to_ycbcr(o.data[i], o.data[n + i], o.data[2 * n + i]);
            let (ys, _, _) = rgb_to_ycbcr(s.data[i], s.data[n + i], s.data[2 * n + i]);
            let (_, cb, cr) = rgb_to_ycbcr(o.data[i], o.data[n + i], o.data[2 * n + i]);
            let (_, cbc, crc) = rgb_to_ycbcr(c.data[i], c.data[n + i], c.data[2 * n + i]);
            assert!((y - ys).abs() < 1e-3 && (cb - cbc).abs() < 1e-3 && (cr - crc).abs() < 1e-3);
        }
    }

    #[test]
    fn carried_content_takes_the_target_mean_and_covariance() {
        // a content with correlated channels, a target with other correlations (both well inside [0, 1], both of
        // full rank: three independent components)
        let (w, h) = (40, 30);
        let n = w * h;
        let mut c = Planar::new(w, h);
        let mut t = Planar::new(w, h);
        for i in 0..n {
            let (u, v, z) = ((i % 13) as f32 / 13.0, (i % 7) as f32 / 7.0, (i % 5) as f32 / 5.0);
            (c.data[i], c.data[n + i], c.data[2 * n + i]) =
                (0.3 + 0.3 * u, 0.3 + 0.2 * u + 0.1 * v, 0.4 + 0.2 * v + 0.1 * z);
            (t.data[i], t.data[n + i], t.data[2 * n + i]) =
                (0.5 + 0.1 * v + 0.05 * z, 0.4 - 0.1 * u, 0.45 + 0.1 * u - 0.05 * v);
        }
        let target = ColourStats::of(&t);
        let got = ColourStats::of(&carry_linear(&c, &target));
        for a in 0..3 {
            assert!((got.mean[a] - target.mean[a]).abs() < 1e-4, "mean {a}: {got:?} vs {target:?}");
            for b in 0..3 {
                assert!((got.cov[a][b] - target.cov[a][b]).abs() < 1e-5, "cov {a}{b}: {got:?} vs {target:?}");
            }
        }
        // carrying an image into its own colours changes nothing
        let same = carry_linear(&c, &ColourStats::of(&c));
        assert!(same.data.iter().zip(&c.data).all(|(x, y)| (x - y).abs() < 1e-4));
    }

    #[test]
    fn the_distribution_transfer_takes_the_target_colours_and_the_map_can_be_reused() {
        // a bimodal target (two colours) that no linear map reaches from a smooth ramp
        let (w, h) = (64, 32);
        let n = w * h;
        let mut c = Planar::new(w, h);
        let mut t = Planar::new(w, h);
        for i in 0..n {
            let u = (i % w) as f32 / w as f32;
            (c.data[i], c.data[n + i], c.data[2 * n + i]) = (0.2 + 0.6 * u, 0.3 + 0.4 * u, 0.5);
            let (r, g, b) = if (i / w) % 2 == 0 { (0.9, 0.8, 0.2) } else { (0.1, 0.2, 0.6) };
            (t.data[i], t.data[n + i], t.data[2 * n + i]) = (r, g, b);
        }
        let sample = ColourSample::of(std::slice::from_ref(&t), &[], 256).unwrap();
        let (map, carried) = ColourMap::fit(&c, &sample);
        // the share of pixels within 0.1 of one of the two target colours: the linear map spreads them along a
        // line between the two, the distribution transfer gathers them
        let near = |p: &Planar| {
            (0..n)
                .filter(|&i| {
                    let px = [p.data[i], p.data[n + i], p.data[2 * n + i]];
                    [[0.9, 0.8, 0.2], [0.1, 0.2, 0.6]]
                        .iter()
                        .any(|q: &[f32; 3]| (0..3).map(|k| (px[k] - q[k]).powi(2)).sum::<f32>().sqrt() < 0.1)
                })
                .count() as f64
                / n as f64
        };
        let linear = carry_linear(&c, &sample.stats());
        assert!(
            near(&carried) > 0.8 && near(&carried) > near(&linear) + 0.3,
            "{} vs {}",
            near(&carried),
            near(&linear)
        );
        // the fitted map applied again gives the same image: a stream's frames can share it
        assert_eq!(map.apply(&c).data, carried.data);
    }

    #[test]
    fn finishing_carries_the_chroma_and_a_share_of_the_luminance_and_keeps_equal_colours_equal() {
        // a result with more pixels than the map is fitted on (a strided subsample), in colours far from the
        // target's two
        let (w, h) = (400, 200);
        let n = w * h;
        let mut img = Planar::new(w, h);
        let mut t = Planar::new(64, 32);
        for i in 0..n {
            let (u, v) = ((i % w) as f32 / w as f32, ((i / w) % 50) as f32 / 50.0);
            (img.data[i], img.data[n + i], img.data[2 * n + i]) = (0.3 + 0.4 * u, 0.6 - 0.2 * v, 0.2 + 0.1 * u);
        }
        let tn = 64 * 32;
        for i in 0..tn {
            let (r, g, b) = if (i / 64) % 2 == 0 { (0.9, 0.8, 0.2) } else { (0.1, 0.2, 0.6) };
            (t.data[i], t.data[tn + i], t.data[2 * tn + i]) = (r, g, b);
        }
        let sample = ColourSample::of(std::slice::from_ref(&t), &[], 256).unwrap();
        let finish = |amount: f32| Finish::fit(&img, &sample, amount).apply(&img);
        assert_eq!(finish(0.0).data, img.data, "0: untouched");
        let full = finish(1.0);
        let half = finish(0.5);
        // all the way: the chroma where the map takes it, the luminance FINISH_LUMA_SHARE of the way
        let map = ColourMap::fit(&strided(&img, FINISH_FIT_PIXELS), &sample).0.apply(&img);
        let ycc = |p: &Planar, i: usize| rgb_to_ycbcr(p.data[i], p.data[n + i], p.data[2 * n + i]);
        let inside = |p: &Planar, i: usize| (0..3).all(|c| p.data[c * n + i] > 0.0 && p.data[c * n + i] < 1.0);
        let (mut moved, mut checked) = (0.0, 0);
        for i in (0..n).step_by(37).filter(|&i| inside(&full, i) && inside(&half, i)) {
            checked += 1;
            let ((y0, b0, r0), (y1, b1, r1)) = (ycc(&img, i), ycc(&map, i));
            let ((yf, bf, rf), (yh, bh, rh)) = (ycc(&full, i), ycc(&half, i));
            // (pixels that came out inside [0, 1]: not clamped)
            assert!((bf - b1).abs() < 1e-4 && (rf - r1).abs() < 1e-4, "pixel {i}: chroma not carried");
            assert!((yf - (y0 + FINISH_LUMA_SHARE * (y1 - y0))).abs() < 1e-4, "pixel {i}: luminance");
            assert!((bh - (b0 + 0.5 * (b1 - b0))).abs() < 1e-4 && (rh - (r0 + 0.5 * (r1 - r0))).abs() < 1e-4);
            assert!((yh - (y0 + 0.5 * FINISH_LUMA_SHARE * (y1 - y0))).abs() < 1e-4, "pixel {i}: half luminance");
            moved += (b1 - b0).abs() + (r1 - r0).abs();
        }
        assert!(checked > n / 37 / 2, "{checked} pixels checked");
        assert!(moved > 0.01 * checked as f32, "the map moved nothing: the test shows nothing");
        // a colour map: two pixels of one colour (rows repeat every 50) stay one colour
        let px = |p: &Planar, i: usize| [p.data[i], p.data[n + i], p.data[2 * n + i]];
        let (a, b) = (7 + 3 * w, 7 + 53 * w);
        // the map is fitted on pixels of the result as they are (every other row and column here), not averaged
        let sub = strided(&img, FINISH_FIT_PIXELS);
        assert_eq!((sub.width, sub.height), (200, 100));
        assert_eq!(sub.data[200 * 100 + 200 + 1], img.data[n + 2 * w + 2]);
        assert_eq!(sub.data[2 * 200 * 100 + 3 * 200 + 5], img.data[2 * n + 6 * w + 10]);
        assert_eq!(px(&img, a), px(&img, b));
        assert_eq!(px(&half, a), px(&half, b));
    }
}
