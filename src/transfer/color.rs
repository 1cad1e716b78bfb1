//! Colour handling: `--original-colors` keeps the content's chroma and takes only the luminance from the
//! stylised image (BT.601 full-range YCbCr, as in Gatys et al.'s colour-preservation note).

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
}
