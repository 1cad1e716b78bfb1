//! The blocks of an image for the tiled objective: inner rectangles that partition the image (sides at multiples
//! of the manifest's `align`, except at the image's border), each grown by `margin` inside the image. Mirrors
//! `plan` in models/fuchun_export/tile.py, whose float64 test checks the geometry against the whole objective.

/// Rows `y0..y1` and columns `x0..x1` of an image, in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rect {
    pub y0: usize,
    pub y1: usize,
    pub x0: usize,
    pub x1: usize,
}

impl Rect {
    pub fn height(&self) -> usize {
        self.y1 - self.y0
    }

    pub fn width(&self) -> usize {
        self.x1 - self.x0
    }
}

/// One block: what the graphs run on (`outer`) and the part whose statistics and derivatives it owns (`inner`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    pub outer: Rect,
    pub inner: Rect,
}

/// The tile side actually used for `inner` (a multiple of `align`, at least `align`).
pub fn tile_side(inner: usize, align: usize) -> usize {
    (inner / align * align).max(align)
}

/// Blocks of a `height × width` image, row-major; the last tile of a row or column takes the rest.
pub fn plan(height: usize, width: usize, inner: usize, margin: usize, align: usize) -> Vec<Block> {
    let side = tile_side(inner, align);
    let spans = |n: usize| (0..n).step_by(side).map(move |a| (a, (a + side).min(n))).collect::<Vec<_>>();
    let (rows, cols) = (spans(height), spans(width));
    let mut out = Vec::with_capacity(rows.len() * cols.len());
    for &(iy0, iy1) in &rows {
        for &(ix0, ix1) in &cols {
            let outer = Rect {
                y0: iy0.saturating_sub(margin),
                y1: (iy1 + margin).min(height),
                x0: ix0.saturating_sub(margin),
                x1: (ix1 + margin).min(width),
            };
            out.push(Block { outer, inner: Rect { y0: iy0, y1: iy1, x0: ix0, x1: ix1 } });
        }
    }
    out
}

/// The largest block of a plan (its shape `[height, width]`): what one evaluation's activations scale with.
pub fn largest_block(height: usize, width: usize, inner: usize, margin: usize, align: usize) -> [usize; 2] {
    let side = tile_side(inner, align);
    let one = |n: usize| if side >= n { n } else { (side + 2 * margin).min(n) };
    [one(height), one(width)]
}

impl Block {
    /// The `inner` mask input: 1 on the inner rectangle, 0 on the margin, `outer`-sized, row-major.
    pub fn mask(&self) -> Vec<f32> {
        let (h, w) = (self.outer.height(), self.outer.width());
        let mut m = vec![0.0f32; h * w];
        for y in self.inner.y0 - self.outer.y0..self.inner.y1 - self.outer.y0 {
            let row = &mut m[y * w..(y + 1) * w];
            row[self.inner.x0 - self.outer.x0..self.inner.x1 - self.outer.x0].fill(1.0);
        }
        m
    }

    /// The block's extent at a layer of stride `s` in an image of `height × width`: (rows, cols) of the layer's
    /// map, starting at (row0, col0). The block's origin is a multiple of the stride, so its cells are the image's.
    pub fn at_stride(&self, s: usize) -> (usize, usize, usize, usize) {
        (self.outer.y0 / s, self.outer.height() / s, self.outer.x0 / s, self.outer.width() / s)
    }

    /// The inner cells at stride `s`, relative to the image's layer map: (row0, row1, col0, col1). At the image's
    /// border the floor-mode pooling drops the last partial cell, as the whole image's does.
    pub fn inner_at_stride(&self, s: usize, height: usize, width: usize) -> (usize, usize, usize, usize) {
        let end = |v: usize, n: usize| if v == n { n / s } else { v / s };
        (self.inner.y0 / s, end(self.inner.y1, height), self.inner.x0 / s, end(self.inner.x1, width))
    }
}

/// Copy rows `r0..r0+rows`, columns `c0..c0+cols` of every channel of a `[C, h, w]` map.
pub fn crop(src: &[f32], [c, h, w]: [usize; 3], (r0, rows, c0, cols): (usize, usize, usize, usize)) -> Vec<f32> {
    debug_assert!(r0 + rows <= h && c0 + cols <= w && src.len() == c * h * w);
    let mut out = Vec::with_capacity(c * rows * cols);
    for ch in 0..c {
        for y in r0..r0 + rows {
            let at = (ch * h + y) * w + c0;
            out.extend_from_slice(&src[at..at + cols]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inner_rectangles_partition_the_image_and_margins_stay_inside() {
        for (h, w, inner, margin, align) in [(37, 30, 10, 8, 2), (64, 64, 64, 8, 2), (509, 765, 128, 80, 16)] {
            let mut cover = vec![0u8; h * w];
            for b in plan(h, w, inner, margin, align) {
                let (o, i) = (b.outer, b.inner);
                assert!(o.y0 <= i.y0 && i.y1 <= o.y1 && o.x0 <= i.x0 && i.x1 <= o.x1);
                assert!(i.y0.is_multiple_of(align) && i.x0.is_multiple_of(align));
                assert!(o.y0 == 0 || i.y0 - o.y0 == margin);
                assert!(o.x1 == w || o.x1 - i.x1 == margin);
                for y in i.y0..i.y1 {
                    for x in i.x0..i.x1 {
                        cover[y * w + x] += 1;
                    }
                }
                let m = b.mask();
                assert_eq!(m.iter().filter(|v| **v == 1.0).count(), i.height() * i.width());
            }
            assert!(cover.iter().all(|c| *c == 1));
            let [bh, bw] = largest_block(h, w, inner, margin, align);
            assert!(plan(h, w, inner, margin, align).iter().all(|b| b.outer.height() <= bh && b.outer.width() <= bw));
        }
    }

    #[test]
    fn crop_takes_the_rows_and_columns_of_each_channel() {
        let src: Vec<f32> = (0..2 * 3 * 4).map(|v| v as f32).collect();
        assert_eq!(crop(&src, [2, 3, 4], (1, 2, 1, 2)), vec![5.0, 6.0, 9.0, 10.0, 17.0, 18.0, 21.0, 22.0]);
    }
}
