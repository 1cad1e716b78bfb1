//! The canvas a scale is optimised on: the image with a free margin around it, cut away afterwards.
//!
//! Why: at the image's border the network's zero padding is part of what the style terms see. With the HED-tuned
//! VGG16 the optimiser answered it by painting a dotted dark first row and a bright second one along the top (and
//! fainter along the bottom) of every result, whatever the style — each of the style, long-range and histogram
//! terms alone drew it, the content term alone did not, nor did the random-weight graph. Optimised on a canvas that
//! reaches `MARGIN` pixels beyond the image (filled by reflecting it, held by the content term there like anywhere
//! else), that answer is drawn in the margin, which is cut away: the image's own border rows are inner pixels of the
//! canvas and get the same treatment as the rest.

use anyhow::Result;

use super::inputs::TemporalInputs;
use super::tiled::plan::crop;
use crate::imageio::Planar;

/// Pixels of free canvas on every side of the image (enough for the dotted rows, two to three pixels deep, to
/// form outside the image; docs/quality.md gives the rows' brightness with and without it).
pub const MARGIN: usize = 8;

/// Index `i` (which may lie up to a few periods outside `0..n`) reflected into `0..n` without repeating the edge
/// pixel (`…, 2, 1, 0, 1, 2, …`); a one-pixel side repeats its pixel.
fn reflect(i: isize, n: usize) -> usize {
    if n == 1 {
        return 0;
    }
    let period = 2 * (n as isize - 1);
    let j = i.rem_euclid(period);
    (if j < n as isize { j } else { period - j }) as usize
}

/// `img` ([c, h, w] planar) with `m` pixels on every side filled by reflecting it.
pub fn pad(data: &[f32], [c, h, w]: [usize; 3], m: usize) -> Vec<f32> {
    debug_assert_eq!(data.len(), c * h * w);
    let (pw, ph) = (w + 2 * m, h + 2 * m);
    let mut out = Vec::with_capacity(c * ph * pw);
    let cols: Vec<usize> = (0..pw).map(|x| reflect(x as isize - m as isize, w)).collect();
    for ch in 0..c {
        for y in 0..ph {
            let row = &data[(ch * h + reflect(y as isize - m as isize, h)) * w..][..w];
            out.extend(cols.iter().map(|&x| row[x]));
        }
    }
    out
}

/// The planar RGB image on its canvas (`pad` with `MARGIN`).
pub fn extend(img: &Planar) -> Planar {
    Planar {
        width: img.width + 2 * MARGIN,
        height: img.height + 2 * MARGIN,
        data: pad(&img.data, [3, img.height, img.width], MARGIN),
    }
}

/// The temporal term's inputs for a `w × h` image, on its canvas: the previous result reflected like the image, the
/// weights zero in the margin (`extend_weights`).
pub fn extend_temporal(t: &TemporalInputs, w: usize, h: usize) -> Result<TemporalInputs> {
    t.check(w, h)?;
    Ok(TemporalInputs { previous: extend(&t.previous), weights: extend_weights(&t.weights, w, h) })
}

/// Per-pixel weights ([h, w]) on the canvas: zero in the margin (the temporal term holds only the image's pixels).
fn extend_weights(weights: &[f32], w: usize, h: usize) -> Vec<f32> {
    let pw = w + 2 * MARGIN;
    let mut out = vec![0.0; pw * (h + 2 * MARGIN)];
    for (y, row) in weights.chunks_exact(w).enumerate() {
        out[(y + MARGIN) * pw + MARGIN..][..w].copy_from_slice(row);
    }
    out
}

/// `canvas` with the margin of `from` (a canvas of the same size), its image kept: a stream's frame starts with the
/// margin its previous frame converged to, instead of a reflection the optimiser would have to paint again.
pub fn take_margin(canvas: &mut Planar, from: &Planar) {
    debug_assert_eq!((canvas.width, canvas.height), (from.width, from.height));
    let (w, h) = (canvas.width, canvas.height);
    for ch in 0..3 {
        for y in 0..h {
            let row = (ch * h + y) * w;
            let inside = (MARGIN..h - MARGIN).contains(&y);
            for x in 0..w {
                if !(inside && (MARGIN..w - MARGIN).contains(&x)) {
                    canvas.data[row + x] = from.data[row + x];
                }
            }
        }
    }
}

/// The image inside a canvas made by `extend`.
pub fn inner(canvas: &Planar) -> Planar {
    inner_of(&canvas.data, canvas.width, canvas.height)
}

/// The image inside the planar RGB canvas `data` of `width × height` (the optimiser's variables, uncopied).
pub fn inner_of(data: &[f32], width: usize, height: usize) -> Planar {
    let (w, h) = (width - 2 * MARGIN, height - 2 * MARGIN);
    Planar { width: w, height: h, data: crop(data, [3, height, width], (MARGIN, h, MARGIN, w)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reflection_mirrors_without_repeating_the_edge() {
        let got: Vec<usize> = (-4..8).map(|i| reflect(i, 4)).collect();
        assert_eq!(got, vec![2, 3, 2, 1, 0, 1, 2, 3, 2, 1, 0, 1]);
        assert!((-9..10).all(|i| reflect(i, 1) == 0));
        // a margin wider than the image folds back and forth
        assert_eq!((-6..0).map(|i| reflect(i, 3)).collect::<Vec<_>>(), vec![2, 1, 0, 1, 2, 1]);
    }

    #[test]
    fn the_inner_image_is_given_back_and_the_margin_mirrors_it() {
        let (w, h) = (5, 3);
        let img = Planar { width: w, height: h, data: (0..3 * w * h).map(|v| v as f32).collect() };
        let canvas = extend(&img);
        assert_eq!((canvas.width, canvas.height), (w + 2 * MARGIN, h + 2 * MARGIN));
        assert_eq!(inner(&canvas).data, img.data);
        let at = |p: &Planar, c: usize, y: usize, x: usize| p.data[(c * p.height + y) * p.width + x];
        // the row above the image is its second row, the column left of it its second column
        for x in 0..w {
            assert_eq!(at(&canvas, 2, MARGIN - 1, MARGIN + x), at(&img, 2, 1, x));
        }
        for y in 0..h {
            assert_eq!(at(&canvas, 1, MARGIN + y, MARGIN - 1), at(&img, 1, y, 1));
        }
        // the margin of another canvas, the image kept
        let mut other = canvas.clone();
        other.data.iter_mut().for_each(|v| *v = -1.0);
        let mut taken = canvas.clone();
        take_margin(&mut taken, &other);
        assert_eq!(inner(&taken).data, img.data);
        assert_eq!(taken.data.iter().filter(|v| **v == -1.0).count(), 3 * (canvas.width * canvas.height - w * h));
        let weights = extend_weights(&[1.0; 15], w, h);
        assert_eq!(weights.iter().sum::<f32>(), 15.0);
        assert_eq!(weights[MARGIN * canvas.width + MARGIN], 1.0);
        assert_eq!(weights[MARGIN * canvas.width + MARGIN - 1], 0.0);
    }
}
