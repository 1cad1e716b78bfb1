//! Picture-quality measures computed outside the optimiser's network, so that the optimiser cannot game them:
//! palette (colour distributions), texture (local patch statistics at several scales) and structure (the
//! content's strong edges at the scale of the scene's objects, and its coarse light/dark layout).
//!
//! What each misses (docs/quality.md says it with figures): a plain colour transfer of the content scores a perfect
//! palette and structure and fails texture; a blurred photo keeps the layout and loses edges; a copy of the style
//! scores perfect palette and texture and no structure. Only the three together say "the painting, and the scene".

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

use crate::imageio::Planar;

/// Longest side at which the structure measures look at the scene: the scale of its objects (a house, a face, a
/// tree), not of brush strokes, which a stylisation is meant to change.
pub const STRUCTURE_SIDE: usize = 128;
/// Fraction of pixels counted as the content's (and the result's) strong edges at that scale.
const EDGE_FRACTION: f64 = 0.10;
/// Side of the square patches of the texture measure, and the scales (downsampling factors) it looks at.
const PATCH: usize = 5;
const TEXTURE_SCALES: [usize; 3] = [1, 2, 4];
/// Random directions of the sliced Wasserstein distances, quantiles compared per direction, patches sampled.
const DIRECTIONS: usize = 64;
const QUANTILES: usize = 256;
const MAX_PATCHES: usize = 6000;
/// Patch contrast (RMS, Lab / 100) below which a patch counts as flat: its shape is not normalised up from noise.
const CONTRAST_FLOOR: f32 = 0.02;

/// The measures of one result against its content and style.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Measures {
    /// Sliced Wasserstein-1 distance between the CIELAB pixel distributions of result and style (Lab units; 0: the
    /// style's palette).
    pub palette: f64,
    /// Multi-scale 5×5-patch sliced Wasserstein distance to the style (patches contrast-normalised: their shape, which
    /// a colour map keeps), relative to the content's own (1: not
    /// stylised; 0: the style's texture).
    pub texture: f64,
    /// Recall of the content's strong edges at the scene's scale, relative to the photo (1) and the style (0).
    pub structure: f64,
    /// Correlation of the 32-px luminance of result and content (the light/dark layout; 1 for the content).
    pub layout: f64,
    /// A band along an edge that the photo does not have (`border`, 1/255 of luminance; 0 for the photo, 20–34
    /// with the dotted bright rows the optimiser once drew along the top).
    pub border: f64,
}

/// The three measures (and the layout) of `result` for a `content` / `style` pair. The style is compared at the
/// result's longest side (as the optimiser sees it with `--style-scale 1`).
pub fn measure(result: &Planar, content: &Planar, style: &Planar) -> Measures {
    let content = content.resize(result.width, result.height);
    let style = style.fit_longest(result.width.max(result.height));
    let (lr, lc, ls) = (lab(result), lab(&content), lab(&style));
    let palette = sliced_w1(&pixels(&lr), &pixels(&ls), 3, 1);
    let texture = {
        let d = |a: &Lab| -> f64 { TEXTURE_SCALES.iter().map(|&s| patch_distance(a, &ls, s)).sum() };
        d(&lr) / d(&lc).max(1e-9)
    };
    Measures {
        palette,
        texture,
        structure: structure(result, &content, &style),
        layout: layout(result, &content),
        border: border(result, &content),
    }
}

/// Rows (and columns) counted as the border, and those beyond them that say what the picture is like there.
const BORDER_ROWS: usize = 3;
const BORDER_BASE: std::ops::Range<usize> = 3..12;

/// Along each side, how the mean luminance of each of the outermost `BORDER_ROWS` rows (columns) departs from the
/// median of the next ones (`BORDER_BASE`), in 1/255.
fn edge_profile(img: &Planar) -> [[f64; BORDER_ROWS]; 4] {
    let (w, h) = (img.width, img.height);
    let y: Vec<f64> = crate::transfer::color::luma(img).iter().map(|&v| 255.0 * v as f64).collect();
    let rows: Vec<f64> = (0..h).map(|r| y[r * w..(r + 1) * w].iter().sum::<f64>() / w as f64).collect();
    let cols: Vec<f64> = (0..w).map(|c| (0..h).map(|r| y[r * w + c]).sum::<f64>() / h as f64).collect();
    let side = |profile: &dyn Fn(usize) -> f64| {
        let mut base: Vec<f64> = BORDER_BASE.map(profile).collect();
        base.sort_by(f64::total_cmp);
        let median = base[base.len() / 2];
        std::array::from_fn(|k| profile(k) - median)
    };
    [side(&|k| rows[k]), side(&|k| rows[h - 1 - k]), side(&|k| cols[k]), side(&|k| cols[w - 1 - k])]
}

/// A band along an edge that the photo does not have: the largest difference, over the four sides and the
/// outermost `BORDER_ROWS` rows (columns), between the result's and the photo's `edge_profile` (1/255 of
/// luminance; 0 for the photo). Measured: 1–4 on results without a band, 20–34 with the dotted bright rows the
/// optimiser drew along the top and bottom before `transfer::canvas`.
pub fn border(result: &Planar, content: &Planar) -> f64 {
    if result.width < BORDER_BASE.end || result.height < BORDER_BASE.end {
        return 0.0;
    }
    let (a, b) = (edge_profile(result), edge_profile(content));
    a.iter().flatten().zip(b.iter().flatten()).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

/// An image in CIELAB (D65), channel planes.
struct Lab {
    w: usize,
    h: usize,
    /// L, a, b planes of `w * h` each.
    p: [Vec<f32>; 3],
}

fn srgb_to_linear(v: f32) -> f32 {
    let v = v.clamp(0.0, 1.0);
    if v <= 0.04045 {
        v / 12.92
    } else {
        ((v + 0.055) / 1.055).powf(2.4)
    }
}

/// sRGB in [0, 1] to CIELAB (D65 white).
pub fn rgb_to_lab(r: f32, g: f32, b: f32) -> [f32; 3] {
    let (r, g, b) = (srgb_to_linear(r), srgb_to_linear(g), srgb_to_linear(b));
    let x = (0.412_456_4 * r + 0.357_576_1 * g + 0.180_437_5 * b) / 0.950_47;
    let y = 0.212_672_9 * r + 0.715_152_2 * g + 0.072_175 * b;
    let z = (0.019_333_9 * r + 0.119_192 * g + 0.950_304_1 * b) / 1.088_83;
    let f = |t: f32| if t > 0.008_856 { t.cbrt() } else { 7.787 * t + 16.0 / 116.0 };
    let (fx, fy, fz) = (f(x), f(y), f(z));
    [116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)]
}

fn lab(img: &Planar) -> Lab {
    let n = img.width * img.height;
    let mut p = [vec![0.0; n], vec![0.0; n], vec![0.0; n]];
    for i in 0..n {
        let v = rgb_to_lab(img.data[i], img.data[n + i], img.data[2 * n + i]);
        for (plane, value) in p.iter_mut().zip(v) {
            plane[i] = value;
        }
    }
    Lab { w: img.width, h: img.height, p }
}

/// The pixels as points (row-major, 3 values each).
fn pixels(l: &Lab) -> Vec<f32> {
    (0..l.w * l.h).flat_map(|i| [l.p[0][i], l.p[1][i], l.p[2][i]]).collect()
}

/// Sliced Wasserstein-1 distance between two point sets of dimension `dim` (flat, row-major): the mean over
/// `DIRECTIONS` random unit directions (fixed seed) of the mean absolute difference of the projections' quantile
/// functions at `QUANTILES` levels. Symmetric, 0 for equal distributions, in the points' units.
pub fn sliced_w1(a: &[f32], b: &[f32], dim: usize, seed: u64) -> f64 {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (na, nb) = (a.len() / dim, b.len() / dim);
    if na == 0 || nb == 0 {
        return f64::NAN;
    }
    let mut total = 0.0;
    let (mut pa, mut pb) = (vec![0.0f32; na], vec![0.0f32; nb]);
    for _ in 0..DIRECTIONS {
        let mut d: Vec<f32> = (0..dim).map(|_| rng.sample::<f32, _>(StandardNormal)).collect();
        let norm = d.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
        d.iter_mut().for_each(|v| *v /= norm);
        let project = |pts: &[f32], out: &mut Vec<f32>| {
            for (o, p) in out.iter_mut().zip(pts.chunks_exact(dim)) {
                *o = p.iter().zip(&d).map(|(x, y)| x * y).sum();
            }
            out.sort_unstable_by(f32::total_cmp);
        };
        project(a, &mut pa);
        project(b, &mut pb);
        let q = |s: &[f32], t: f64| s[((t * s.len() as f64) as usize).min(s.len() - 1)] as f64;
        total += (0..QUANTILES)
            .map(|k| {
                let t = (k as f64 + 0.5) / QUANTILES as f64;
                (q(&pa, t) - q(&pb, t)).abs()
            })
            .sum::<f64>()
            / QUANTILES as f64;
    }
    total / DIRECTIONS as f64
}

/// Box-downsampled by `f` (each output pixel the mean of an f×f block).
fn downsample(l: &Lab, f: usize) -> Lab {
    if f == 1 {
        return Lab { w: l.w, h: l.h, p: l.p.clone() };
    }
    let (w, h) = ((l.w / f).max(1), (l.h / f).max(1));
    let p = std::array::from_fn(|c| {
        let mut out = vec![0.0f32; w * h];
        for y in 0..h {
            for x in 0..w {
                let mut s = 0.0;
                let mut k = 0;
                for dy in 0..f {
                    for dx in 0..f {
                        let (sx, sy) = (x * f + dx, y * f + dy);
                        if sx < l.w && sy < l.h {
                            s += l.p[c][sy * l.w + sx];
                            k += 1;
                        }
                    }
                }
                out[y * w + x] = s / k.max(1) as f32;
            }
        }
        out
    });
    Lab { w, h, p }
}

/// 5×5 patches of an image at downsampling `f`, each channel's patch mean removed (the local contrast and its
/// shape, not the colour, which the palette measures), Lab scaled to about unit range; at most `MAX_PATCHES`,
/// on a fixed pseudo-random sample of positions.
fn patches(l: &Lab, f: usize) -> Vec<f32> {
    let d = downsample(l, f);
    if d.w < PATCH || d.h < PATCH {
        return Vec::new();
    }
    let positions = (d.w - PATCH + 1) * (d.h - PATCH + 1);
    let take = positions.min(MAX_PATCHES);
    let mut rng = ChaCha8Rng::seed_from_u64(7 + f as u64);
    let mut out = Vec::with_capacity(take * 3 * PATCH * PATCH);
    for k in 0..take {
        let i = if take == positions { k } else { rng.random_range(0..positions) };
        let (x0, y0) = (i % (d.w - PATCH + 1), i / (d.w - PATCH + 1));
        let start = out.len();
        for c in 0..3 {
            let vals: Vec<f32> =
                (0..PATCH * PATCH).map(|j| d.p[c][(y0 + j / PATCH) * d.w + x0 + j % PATCH] / 100.0).collect();
            let mean = vals.iter().sum::<f32>() / vals.len() as f32;
            out.extend(vals.iter().map(|v| v - mean));
        }
        // contrast-normalised: the patch's shape, not its amplitude, which a colour map changes
        let p = &mut out[start..];
        let rms = (p.iter().map(|v| v * v).sum::<f32>() / p.len() as f32).sqrt();
        p.iter_mut().for_each(|v| *v /= rms + CONTRAST_FLOOR);
    }
    out
}

fn patch_distance(a: &Lab, b: &Lab, f: usize) -> f64 {
    let (pa, pb) = (patches(a, f), patches(b, f));
    if pa.is_empty() || pb.is_empty() {
        return 0.0;
    }
    sliced_w1(&pa, &pb, 3 * PATCH * PATCH, 100 + f as u64)
}

/// Luminance (Lab L) at longest side `side`.
fn luminance_at(img: &Planar, side: usize) -> (usize, usize, Vec<f32>) {
    let s = img.fit_longest(side);
    let l = lab(&s);
    (l.w, l.h, l.p[0].clone())
}

/// Gradient magnitude (Sobel) of a plane after a 3×3 binomial blur; borders replicate.
fn gradient(w: usize, h: usize, v: &[f32]) -> Vec<f32> {
    let at = |p: &[f32], x: isize, y: isize| {
        p[(y.clamp(0, h as isize - 1) as usize) * w + x.clamp(0, w as isize - 1) as usize]
    };
    let mut b = vec![0.0f32; w * h];
    for y in 0..h as isize {
        for x in 0..w as isize {
            let mut s = 0.0;
            for (dy, ky) in [(-1, 1.0), (0, 2.0), (1, 1.0)] {
                for (dx, kx) in [(-1, 1.0), (0, 2.0), (1, 1.0)] {
                    s += ky * kx * at(v, x + dx, y + dy);
                }
            }
            b[y as usize * w + x as usize] = s / 16.0;
        }
    }
    let mut g = vec![0.0f32; w * h];
    for y in 0..h as isize {
        for x in 0..w as isize {
            let gx = at(&b, x + 1, y - 1) + 2.0 * at(&b, x + 1, y) + at(&b, x + 1, y + 1)
                - at(&b, x - 1, y - 1)
                - 2.0 * at(&b, x - 1, y)
                - at(&b, x - 1, y + 1);
            let gy = at(&b, x - 1, y + 1) + 2.0 * at(&b, x, y + 1) + at(&b, x + 1, y + 1)
                - at(&b, x - 1, y - 1)
                - 2.0 * at(&b, x, y - 1)
                - at(&b, x + 1, y - 1);
            g[y as usize * w + x as usize] = (gx * gx + gy * gy).sqrt();
        }
    }
    g
}

/// The strongest `EDGE_FRACTION` of the pixels by gradient magnitude.
fn strong_edges(g: &[f32]) -> Vec<bool> {
    let mut sorted = g.to_vec();
    sorted.sort_unstable_by(f32::total_cmp);
    let k = ((1.0 - EDGE_FRACTION) * sorted.len() as f64) as usize;
    let t = sorted[k.min(sorted.len() - 1)];
    g.iter().map(|v| *v >= t && *v > 0.0).collect()
}

/// Fraction of the content's strong edges with a strong edge of `other` within one pixel, at `STRUCTURE_SIDE`.
fn edge_recall(other: &Planar, content: &Planar) -> f64 {
    let (w, h, lc) = luminance_at(content, STRUCTURE_SIDE);
    let o = other.resize(content.width, content.height);
    let (_, _, lo) = luminance_at(&o, STRUCTURE_SIDE);
    let (ec, eo) = (strong_edges(&gradient(w, h, &lc)), strong_edges(&gradient(w, h, &lo)));
    let (mut hit, mut all) = (0usize, 0usize);
    for y in 0..h {
        for x in 0..w {
            if !ec[y * w + x] {
                continue;
            }
            all += 1;
            let near = (y.saturating_sub(1)..=(y + 1).min(h - 1))
                .any(|yy| (x.saturating_sub(1)..=(x + 1).min(w - 1)).any(|xx| eo[yy * w + xx]));
            hit += near as usize;
        }
    }
    hit as f64 / all.max(1) as f64
}

/// Edge recall of `result`, rescaled so that the content scores 1 and the style (stretched to the content's
/// shape: where its edges fall by chance) scores 0.
fn structure(result: &Planar, content: &Planar, style: &Planar) -> f64 {
    let chance = edge_recall(&style.resize(content.width, content.height), content);
    (edge_recall(result, content) - chance) / (1.0 - chance).max(1e-9)
}

/// The content carried into the style's colours by a colour map alone (`transfer::color::carry`): the "plain colour
/// transfer" that the bench and the measures' tests use as a known answer (the style's palette, the photo's
/// structure, none of the painting's texture).
pub fn colour_transfer(content: &Planar, style: &Planar) -> Planar {
    use crate::transfer::color::{carry, ColourSample};
    match ColourSample::of(std::slice::from_ref(style), &[], crate::transfer::schedule::PALETTE_SIDE) {
        Some(sample) => carry(content, &sample),
        None => content.clone(),
    }
}

/// Pearson correlation of the luminance of `result` and `content` (of the same shape) at 32 px (longest side).
fn layout(result: &Planar, content: &Planar) -> f64 {
    let (_, _, a) = luminance_at(result, 32);
    let (_, _, b) = luminance_at(content, 32);
    let n = a.len().min(b.len()) as f64;
    let (ma, mb) = (a.iter().sum::<f32>() as f64 / n, b.iter().sum::<f32>() as f64 / n);
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(&b) {
        let (dx, dy) = (*x as f64 - ma, *y as f64 - mb);
        sab += dx * dy;
        saa += dx * dx;
        sbb += dy * dy;
    }
    sab / (saa * sbb).sqrt().max(1e-12)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::imageio::{load_path, Limits};

    fn example(name: &str, side: usize) -> Planar {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples").join(name);
        load_path(&p, &Limits::default()).expect("bundled example").fit_longest(side)
    }

    fn blurred(p: &Planar, passes: usize) -> Planar {
        // repeated 3x3 box blur: a photo that lost its edges but kept its layout
        let (w, h) = (p.width, p.height);
        let mut out = p.clone();
        for _ in 0..passes {
            let src = out.clone();
            for c in 0..3 {
                for y in 0..h {
                    for x in 0..w {
                        let (mut s, mut k) = (0.0, 0.0);
                        for yy in y.saturating_sub(1)..=(y + 1).min(h - 1) {
                            for xx in x.saturating_sub(1)..=(x + 1).min(w - 1) {
                                s += src.data[c * w * h + yy * w + xx];
                                k += 1.0;
                            }
                        }
                        out.data[c * w * h + y * w + x] = s / k;
                    }
                }
            }
        }
        out
    }

    #[test]
    fn lab_of_known_colours() {
        let white = rgb_to_lab(1.0, 1.0, 1.0);
        assert!((white[0] - 100.0).abs() < 0.01 && white[1].abs() < 0.01 && white[2].abs() < 0.01, "{white:?}");
        assert_eq!(rgb_to_lab(0.0, 0.0, 0.0), [0.0, 0.0, 0.0]);
        // sRGB red: L 53.24, a 80.09, b 67.20 (CIE 1976, D65)
        let red = rgb_to_lab(1.0, 0.0, 0.0);
        assert!(
            (red[0] - 53.24).abs() < 0.05 && (red[1] - 80.09).abs() < 0.1 && (red[2] - 67.20).abs() < 0.1,
            "{red:?}"
        );
    }

    #[test]
    fn sliced_distance_of_a_shift_is_the_shift_along_the_directions() {
        // two point clouds a constant (3, 0, 0) apart: |<d, shift>| averaged over random unit directions in 3-D is
        // 3/2 in expectation; equal clouds are 0 apart
        let a: Vec<f32> = (0..3000).map(|i| ((i * 7919) % 1000) as f32 / 100.0).collect();
        let b: Vec<f32> = a.chunks(3).flat_map(|p| [p[0] + 3.0, p[1], p[2]]).collect();
        assert_eq!(sliced_w1(&a, &a, 3, 1), 0.0);
        let d = sliced_w1(&a, &b, 3, 1);
        assert!((d - 1.5).abs() < 0.25, "{d}");
        assert!((sliced_w1(&b, &a, 3, 1) - d).abs() < 1e-9, "symmetric");
    }

    #[test]
    fn a_band_along_an_edge_is_seen_on_any_side() {
        let photo = example("tubingen.jpg", 256);
        assert_eq!(border(&photo, &photo), 0.0);
        let (w, h) = (photo.width, photo.height);
        // the second row (or column) from each side 20/255 brighter, as the dotted rows were
        for name in ["top", "bottom", "left", "right"] {
            let mut p = photo.clone();
            for r in 0..h {
                for c in 0..w {
                    let hit = match name {
                        "top" => r == 1,
                        "bottom" => r == h - 2,
                        "left" => c == 1,
                        _ => c == w - 2,
                    };
                    if hit {
                        for ch in 0..3 {
                            let v = &mut p.data[(ch * h + r) * w + c];
                            *v = (*v + 20.0 / 255.0).min(1.0);
                        }
                    }
                }
            }
            let b = border(&p, &photo);
            // 20 where nothing clips at white
            assert!((15.0..=20.01).contains(&b), "{name}: {b}");
        }
    }

    #[test]
    fn known_answers_on_the_bundled_pair() {
        let content = example("tubingen.jpg", 128);
        let style = example("fuchun.jpg", 128);
        // the photo: structure, texture and layout 1 by definition; far from the style's palette
        let m = measure(&content, &content, &style);
        assert!((m.structure - 1.0).abs() < 1e-9 && (m.texture - 1.0).abs() < 1e-9, "{m:?}");
        assert!((m.layout - 1.0).abs() < 1e-6 && m.palette > 10.0, "{m:?}");
        // the style: no structure of the photo, its own texture and palette
        let s = measure(&style.resize(content.width, content.height), &content, &style);
        assert!(s.structure.abs() < 1e-9 && s.texture < 0.35 && s.palette < 1.5, "{s:?}");

        // a plain colour transfer: the style's palette and the photo's structure, not the painting's texture
        let t = measure(&colour_transfer(&content, &style), &content, &style);
        assert!(t.palette < 1.0 && t.structure > 0.7 && t.layout > 0.9, "{t:?}");
        assert!(t.texture > 0.8, "a colour transfer must fail texture: {t:?}");
        // a blurred photo keeps its layout and palette, loses the edges' detail and the photo's texture
        let b = measure(&blurred(&content, 4), &content, &style);
        assert!(b.layout > 0.97 && (b.palette - m.palette).abs() < 2.0, "{b:?}");
        assert!(b.structure < m.structure && b.texture != 1.0, "{b:?}");
    }
}
