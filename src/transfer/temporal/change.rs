//! What differs between two frames of a camera: the change mask (blurred colour planes compared, dilated, with a
//! feathered weight), the block-matching motion of what moved, and the translation of a camera that panned.

use serde::{Deserialize, Serialize};

use crate::imageio::Planar;
use crate::transfer::color;

/// How consecutive frames are compared (at the result's size, on luminance in [0, 1]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChangeParams {
    /// A pixel changed when its blurred luminance differs by more than this (0–1). Sensor noise and JPEG
    /// re-compression stay well below it once blurred.
    pub threshold: f32,
    /// Radius (pixels) of the box blur applied twice to both frames before comparing.
    pub blur_px: usize,
    /// Changed regions grow by this many pixels (square), to cover the soft edges of a moving object.
    pub dilate_px: usize,
    /// Width (pixels) of the ramp of the temporal weight and of the blend of the starting image around changed
    /// regions: no hard seam where the previous result meets the newly painted part.
    pub feather_px: usize,
    /// Above this changed fraction the frame is a new scene: a cold run.
    pub scene_change: f32,
}

impl Default for ChangeParams {
    fn default() -> Self {
        ChangeParams::DEFAULT
    }
}

impl ChangeParams {
    pub const DEFAULT: ChangeParams =
        ChangeParams { threshold: 0.06, blur_px: 2, dilate_px: 6, feather_px: 4, scene_change: 0.5 };

    pub fn validate(&self) -> Result<(), String> {
        if !(self.threshold.is_finite() && self.threshold > 0.0 && self.threshold < 1.0) {
            return Err(format!("threshold must be in (0, 1), got {}", self.threshold));
        }
        if !(self.scene_change.is_finite() && self.scene_change > 0.0 && self.scene_change <= 1.0) {
            return Err(format!("scene_change must be in (0, 1], got {}", self.scene_change));
        }
        if self.blur_px > 64 || self.dilate_px > 256 || self.feather_px > 256 {
            return Err("blur_px (≤ 64), dilate_px and feather_px (≤ 256) are pixel radii".into());
        }
        Ok(())
    }
}

/// Which pixels changed between two frames of the same size.
#[derive(Debug, Clone)]
pub struct ChangeMask {
    pub width: usize,
    pub height: usize,
    /// Row-major; true where the scene changed (after dilation).
    pub changed: Vec<bool>,
    /// Fraction of changed pixels.
    pub fraction: f64,
    /// Row-major, in [0, 1]: 1 far from any change, 0 on changed pixels, a ramp of `feather_px` between.
    pub unchanged: Vec<f32>,
}

/// Box filter of radius `r` (mean over the (2r+1)² window clipped to the image), separable, O(1) per pixel.
pub(super) fn box_blur(v: &[f32], w: usize, h: usize, r: usize) -> Vec<f32> {
    if r == 0 {
        return v.to_vec();
    }
    let pass = |src: &[f32], len: usize, lines: usize, at: &dyn Fn(usize, usize) -> usize| -> Vec<f32> {
        let mut out = vec![0.0f32; src.len()];
        let mut prefix = vec![0.0f64; len + 1];
        for line in 0..lines {
            for i in 0..len {
                prefix[i + 1] = prefix[i] + src[at(line, i)] as f64;
            }
            for i in 0..len {
                let (a, b) = (i.saturating_sub(r), (i + r + 1).min(len));
                out[at(line, i)] = ((prefix[b] - prefix[a]) / (b - a) as f64) as f32;
            }
        }
        out
    };
    let rows = pass(v, w, h, &|y, x| y * w + x);
    pass(&rows, h, w, &|x, y| y * w + x)
}

/// Grow the true pixels by `r` (square window), separably.
pub fn dilate(m: &[bool], w: usize, h: usize, r: usize) -> Vec<bool> {
    if r == 0 {
        return m.to_vec();
    }
    let pass = |src: &[bool], len: usize, lines: usize, at: &dyn Fn(usize, usize) -> usize| -> Vec<bool> {
        let mut out = vec![false; src.len()];
        for line in 0..lines {
            // distance to the last true pixel seen, forwards then backwards
            let mut last: Option<usize> = None;
            for i in 0..len {
                if src[at(line, i)] {
                    last = Some(i);
                }
                out[at(line, i)] = last.is_some_and(|j| i - j <= r);
            }
            let mut next: Option<usize> = None;
            for i in (0..len).rev() {
                if src[at(line, i)] {
                    next = Some(i);
                }
                if next.is_some_and(|j| j - i <= r) {
                    out[at(line, i)] = true;
                }
            }
        }
        out
    };
    let rows = pass(m, w, h, &|y, x| y * w + x);
    pass(&rows, h, w, &|x, y| y * w + x)
}

/// The change mask between `prev` and `cur` (same size): both blurred, compared per colour channel, thresholded,
/// dilated; the soft `unchanged` map ramps over `feather_px` pixels outside the changed region.
pub fn change_mask(prev: &Planar, cur: &Planar, p: &ChangeParams) -> ChangeMask {
    assert_eq!((prev.width, prev.height), (cur.width, cur.height), "frames of different sizes");
    compare(&blurred_colour(prev, p), &blurred_colour(cur, p), cur.width, cur.height, p)
}

/// The change mask from blurred planes of two frames of `w × h` (`blurred_colour`: a pixel changed where any plane
/// moved by more than the threshold).
pub(super) fn compare(a: &[f32], b: &[f32], w: usize, h: usize, p: &ChangeParams) -> ChangeMask {
    let n = w * h;
    let planes = a.len() / n.max(1);
    let raw: Vec<bool> =
        (0..n).map(|i| (0..planes).any(|c| (a[c * n + i] - b[c * n + i]).abs() > p.threshold)).collect();
    let changed = dilate(&raw, w, h, p.dilate_px);
    let fraction = changed.iter().filter(|c| **c).count() as f64 / (w * h).max(1) as f64;
    // the ramp: unchanged pixels within feather_px of a change get a weight growing with the distance (from a box
    // filter of the changed region grown by feather_px, so changed pixels themselves stay at exactly 0)
    let unchanged = if p.feather_px == 0 {
        changed.iter().map(|c| if *c { 0.0 } else { 1.0 }).collect()
    } else {
        let grown = dilate(&changed, w, h, p.feather_px);
        let g: Vec<f32> = grown.iter().map(|c| if *c { 1.0 } else { 0.0 }).collect();
        let soft = box_blur(&g, w, h, p.feather_px);
        changed.iter().zip(&soft).map(|(c, s)| if *c { 0.0 } else { (1.0 - s).clamp(0.0, 1.0) }).collect()
    };
    ChangeMask { width: w, height: h, changed, fraction, unchanged }
}

/// Blurred luminance, as the motion search and the pan search compare it (row-major, one value per pixel).
#[cfg(test)]
pub(super) fn blurred_grey(img: &Planar, p: &ChangeParams) -> Vec<f32> {
    grey(&blurred_colour(img, p))
}

/// The luminance of colour planes (R, G, B, row-major): of `blurred_colour`'s, the blurred luminance the motion and
/// pan searches compare (the blur and the luminance are both linear, so the order does not matter).
pub(super) fn grey(colour: &[f32]) -> Vec<f32> {
    let n = colour.len() / 3;
    (0..n).map(|i| color::rgb_to_ycbcr(colour[i], colour[n + i], colour[2 * n + i]).0).collect()
}

/// Blurred colour planes (R, G, B, row-major), as the change mask compares them. On colour, not luminance: where a
/// moving object had about the background's luminance, a mask on luminance called the pixels it left (or reached)
/// unchanged, and the temporal term held them to the previous result — at 512 px a ring of the first frame's object
/// stayed in the background after it had gone (issue 20).
pub(super) fn blurred_colour(img: &Planar, p: &ChangeParams) -> Vec<f32> {
    let (w, h) = (img.width, img.height);
    img.data.chunks(w * h).flat_map(|c| box_blur(&box_blur(c, w, h, p.blur_px), w, h, p.blur_px)).collect()
}

/// Side of the blocks of the motion search, in pixels.
const BLOCK: usize = 8;

/// Block-matching motion of the changed region (a coarse dense optical flow): for each `BLOCK`² block holding a
/// changed pixel, the displacement (dx, dy), |dx|, |dy| ≤ `radius`, such that `prev` at (x + dx, y + dy) best
/// matches `cur` at (x, y) (mean absolute difference of the blurred luminances `a`, `b`). Returns, per pixel, the
/// source position in `prev` when the match holds at that pixel (difference ≤ `threshold`), else None.
pub(super) fn motion(
    a: &[f32],
    b: &[f32],
    w: usize,
    h: usize,
    changed: &[bool],
    radius: usize,
    threshold: f32,
) -> Vec<Option<usize>> {
    let mut src = vec![None; w * h];
    let r = radius as isize;
    for by in (0..h).step_by(BLOCK) {
        for bx in (0..w).step_by(BLOCK) {
            let (ye, xe) = ((by + BLOCK).min(h), (bx + BLOCK).min(w));
            if !(by..ye).any(|y| (bx..xe).any(|x| changed[y * w + x])) {
                continue;
            }
            let mut best = (f32::INFINITY, 0isize, 0isize);
            for dy in -r..=r {
                for dx in -r..=r {
                    let (mut sum, mut count) = (0.0f32, 0usize);
                    for y in by..ye {
                        let sy = y as isize + dy;
                        if sy < 0 || sy >= h as isize {
                            continue;
                        }
                        for x in bx..xe {
                            let sx = x as isize + dx;
                            if sx < 0 || sx >= w as isize {
                                continue;
                            }
                            sum += (b[y * w + x] - a[sy as usize * w + sx as usize]).abs();
                            count += 1;
                        }
                    }
                    // a displacement must see most of the block; ties go to the smaller displacement
                    if count * 2 >= (ye - by) * (xe - bx) {
                        let cost = sum / count as f32 + 1e-4 * (dx.abs() + dy.abs()) as f32;
                        if cost < best.0 {
                            best = (cost, dx, dy);
                        }
                    }
                }
            }
            if !best.0.is_finite() {
                continue;
            }
            for y in by..ye {
                for x in bx..xe {
                    let (sx, sy) = (x as isize + best.1, y as isize + best.2);
                    if changed[y * w + x] && sx >= 0 && sy >= 0 && (sx as usize) < w && (sy as usize) < h {
                        let j = sy as usize * w + sx as usize;
                        if (b[y * w + x] - a[j]).abs() <= threshold {
                            src[y * w + x] = Some(j);
                        }
                    }
                }
            }
        }
    }
    src
}

/// `out(x, y) = v(x + dx, y + dy)` over a `w × h` image, `fill` where that falls outside.
pub(super) fn shift_values<T: Copy>(v: &[T], w: usize, h: usize, dx: isize, dy: isize, fill: T) -> Vec<T> {
    let mut out = vec![fill; w * h];
    for y in 0..h {
        let sy = y as isize + dy;
        if sy < 0 || sy >= h as isize {
            continue;
        }
        for x in 0..w {
            let sx = x as isize + dx;
            if sx >= 0 && sx < w as isize {
                out[y * w + x] = v[sy as usize * w + sx as usize];
            }
        }
    }
    out
}

/// The translation (dx, dy), |dx|, |dy| ≤ `radius`, that best maps `a` onto `b` — b(x, y) ≈ a(x + dx, y + dy):
/// how far a panning camera turned between two frames. Mean absolute difference over every other pixel of the
/// overlap, which must cover half the frame; ties go to the smaller shift.
pub(super) fn global_shift(a: &[f32], b: &[f32], w: usize, h: usize, radius: usize) -> (isize, isize) {
    let r = radius as isize;
    let (wi, hi) = (w as isize, h as isize);
    let mut best = (f32::INFINITY, 0, 0);
    for dy in -r..=r {
        for dx in -r..=r {
            let (x0, x1, y0, y1) = ((-dx).max(0), (wi - dx).min(wi), (-dy).max(0), (hi - dy).min(hi));
            if x1 <= x0 || y1 <= y0 || ((x1 - x0) * (y1 - y0) * 2) < wi * hi {
                continue;
            }
            let (mut sum, mut count) = (0.0f32, 0usize);
            for y in (y0..y1).step_by(2) {
                for x in (x0..x1).step_by(2) {
                    sum += (b[(y * wi + x) as usize] - a[((y + dy) * wi + x + dx) as usize]).abs();
                    count += 1;
                }
            }
            let cost = sum / count as f32 + 1e-4 * (dx.abs() + dy.abs()) as f32;
            if cost < best.0 {
                best = (cost, dx, dy);
            }
        }
    }
    (best.1, best.2)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flat(w: usize, h: usize, v: f32) -> Planar {
        Planar { width: w, height: h, data: vec![v; 3 * w * h] }
    }

    #[test]
    fn blur_keeps_a_constant_and_dilation_grows_by_the_radius() {
        let v = vec![0.3f32; 20 * 10];
        assert!(box_blur(&v, 20, 10, 3).iter().all(|x| (x - 0.3).abs() < 1e-6));
        let mut m = vec![false; 20 * 10];
        m[5 * 20 + 10] = true;
        let d = dilate(&m, 20, 10, 2);
        assert_eq!(d.iter().filter(|x| **x).count(), 25);
        assert!(d[3 * 20 + 8] && d[7 * 20 + 12] && !d[2 * 20 + 10] && !d[5 * 20 + 13]);
    }

    #[test]
    fn a_moving_square_is_found_and_noise_is_not() {
        let (w, h) = (64, 48);
        let a = flat(w, h, 0.5);
        let mut b = a.clone();
        let mut rng = 12345u64;
        for v in b.data.iter_mut() {
            rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            *v += ((rng >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.04; // ±0.02 noise
        }
        let p = ChangeParams::default();
        let m = change_mask(&a, &b, &p);
        assert_eq!(m.fraction, 0.0, "noise alone is not a change");
        assert!(m.unchanged.iter().all(|u| *u == 1.0));
        for y in 20..30 {
            for x in 30..40 {
                for c in 0..3 {
                    b.data[c * w * h + y * w + x] = 0.9;
                }
            }
        }
        let m = change_mask(&a, &b, &p);
        // the square (10×10) is inside the mask; the mask is no larger than the square grown by blur and dilation
        for y in 20..30 {
            for x in 30..40 {
                assert!(m.changed[y * w + x] && m.unchanged[y * w + x] == 0.0);
            }
        }
        let grown = 10 + 2 * (2 * p.blur_px + p.dilate_px);
        assert!(m.fraction * (w * h) as f64 <= (grown * grown) as f64, "{}", m.fraction);
        assert!(m.fraction > 100.0 / (w * h) as f64);
        // the weight ramps: 0 at the border of the mask, 1 beyond feather_px, in between strictly between
        assert_eq!(m.unchanged[5 * w + 5], 1.0);
        let edge = (20..30).map(|y| (0..w).filter(|&x| m.changed[y * w + x]).min().unwrap()).min().unwrap();
        assert!(m.unchanged[25 * w + edge - 1] > 0.0 && m.unchanged[25 * w + edge - 1] < 1.0);
    }

    #[test]
    fn lights_on_is_a_new_scene() {
        let a = flat(40, 30, 0.3);
        let b = flat(40, 30, 0.6);
        let m = change_mask(&a, &b, &ChangeParams::default());
        assert_eq!(m.fraction, 1.0);
    }

    #[test]
    fn a_change_of_colour_at_the_same_luminance_is_a_change() {
        // a red square of the grey background's luminance: a mask on luminance saw nothing there
        let (w, h) = (48, 32);
        let n = w * h;
        let grey = flat(w, h, 0.3);
        let mut frame = grey.clone();
        let (r, b) = (0.6f32, 0.0f32);
        let g = (0.3 - 0.299 * r - 0.114 * b) / 0.587;
        for i in (0..n).filter(|&i| (20..30).contains(&(i % w)) && (10..20).contains(&(i / w))) {
            (frame.data[i], frame.data[n + i], frame.data[2 * n + i]) = (r, g, b);
        }
        let p = ChangeParams::default();
        let lum = compare(&blurred_grey(&grey, &p), &blurred_grey(&frame, &p), w, h, &p);
        assert_eq!(lum.fraction, 0.0, "the same luminance");
        let m = change_mask(&grey, &frame, &p);
        assert!(m.changed[15 * w + 25] && m.unchanged[15 * w + 25] == 0.0);
        assert!(m.fraction >= 100.0 / n as f64);
        assert_eq!(m.unchanged[2 * w + 2], 1.0, "far from the square");
    }
}
