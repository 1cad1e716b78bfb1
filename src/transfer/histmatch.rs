//! Histogram matching (Risser et al. 2017): every activation of a channel replaced by the style's quantile at its
//! rank within that channel. The objective graph takes the result as a constant target (`hist_target_<layer>`),
//! so the sort — the costliest step of the histogram term — runs here, on all cores, with an LSD radix sort, and
//! as often as the schedule asks (`hist_every`). The formula is `matched` in models/fuchun_export/reference.py.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{anyhow, bail, Result};

use super::targets::{resample_sorted, StyleTargets};
use crate::engine::{FeatureMap, Losses, Manifest, Model, ObjectiveInputs};

/// A float's bits mapped to an unsigned key whose integer order is the float order (negatives flipped).
#[inline]
fn key(v: f32) -> u32 {
    let b = v.to_bits();
    if b & 0x8000_0000 != 0 {
        !b
    } else {
        b | 0x8000_0000
    }
}

/// Reusable buffers for one channel.
#[derive(Default)]
struct Scratch {
    keys: Vec<u32>,
    keys2: Vec<u32>,
    idx: Vec<u32>,
    idx2: Vec<u32>,
    table: Vec<f32>,
}

/// Indices of `values` in ascending order (stable: equal values keep their index order), by three 11-bit LSD
/// radix passes; the result is in `s.idx`.
fn argsort(values: &[f32], s: &mut Scratch) {
    let n = values.len();
    s.keys.clear();
    s.keys.extend(values.iter().map(|v| key(*v)));
    s.idx.clear();
    s.idx.extend(0..n as u32);
    s.keys2.resize(n, 0);
    s.idx2.resize(n, 0);
    for shift in [0u32, 11, 22] {
        let mut count = [0usize; 2048];
        for k in &s.keys {
            count[((k >> shift) & 0x7ff) as usize] += 1;
        }
        if count.contains(&n) {
            continue; // every key has the same digit: the pass would not move anything
        }
        let mut pos = 0;
        for c in count.iter_mut() {
            let here = *c;
            *c = pos;
            pos += here;
        }
        for (k, i) in s.keys.iter().zip(&s.idx) {
            let d = ((k >> shift) & 0x7ff) as usize;
            s.keys2[count[d]] = *k;
            s.idx2[count[d]] = *i;
            count[d] += 1;
        }
        std::mem::swap(&mut s.keys, &mut s.keys2);
        std::mem::swap(&mut s.idx, &mut s.idx2);
    }
}

/// Histogram-matched copy of `features` ([C, n], row-major) into `out`: `match_in_place` on a copy.
pub fn match_histograms(features: &[f32], channels: usize, tables: &[f32], out: &mut [f32], threads: usize) {
    assert_eq!(out.len(), features.len());
    out.copy_from_slice(features);
    match_in_place(out, channels, tables, threads);
}

/// Set the objective's `hist_target_<layer>` inputs to the histogram matching of `feats` (activations of the image
/// being optimised) to the style's quantile tables.
pub fn update_targets(
    m: &Manifest,
    feats: &BTreeMap<String, FeatureMap>,
    style: &StyleTargets,
    inputs: &mut ObjectiveInputs,
) -> Result<()> {
    for l in &m.hist_layers {
        let f = feats.get(l).ok_or_else(|| anyhow!("activations of histogram layer {l} missing"))?;
        update_layer(m.quantiles, l, [f.channels, f.height, f.width], &f.data, style, inputs)?;
    }
    Ok(())
}

/// Set `hist_target_<layer>` to the matching of one layer's activations (`[C, h, w]`, e.g. straight from the
/// objective's `feat_<layer>` output); in place when the input already holds a target of that size.
pub fn update_layer(
    quantiles: usize,
    layer: &str,
    shape: [usize; 3],
    data: &[f32],
    style: &StyleTargets,
    inputs: &mut ObjectiveInputs,
) -> Result<()> {
    let [c, h, w] = shape;
    let table = layer_table(quantiles, layer, shape, data.len(), style)?;
    let name = format!("hist_target_{layer}");
    let threads = default_threads();
    match inputs.get_mut(&name) {
        Some(out) if out.len() == data.len() => match_histograms(data, c, table, out, threads),
        _ => {
            let mut out = data.to_vec();
            match_in_place(&mut out, c, table, threads);
            inputs.set(&name, &[1, c, h, w], out)?;
        }
    }
    Ok(())
}

/// Replace `data` ([C, n] activations) by their histogram matching to `tables` ([C, K]), in place.
pub fn match_in_place(data: &mut [f32], channels: usize, tables: &[f32], threads: usize) {
    assert!(channels > 0 && data.len().is_multiple_of(channels) && tables.len().is_multiple_of(channels));
    let n = data.len() / channels;
    let k = tables.len() / channels;
    if n == 0 {
        return;
    }
    let threads = threads.clamp(1, channels);
    let per = channels.div_ceil(threads);
    std::thread::scope(|scope| {
        for (d, t) in data.chunks_mut(per * n).zip(tables.chunks(per * k)) {
            scope.spawn(move || {
                let mut s = Scratch::default();
                for (dc, tc) in d.chunks_mut(n).zip(t.chunks(k)) {
                    // the argsort keeps its own copy of the values (the keys), so the channel can be overwritten
                    argsort(dc, &mut s);
                    s.table.resize(n, 0.0);
                    resample_sorted(tc, n, &mut s.table);
                    for (j, i) in s.idx.iter().enumerate() {
                        dc[*i as usize] = s.table[j];
                    }
                }
            });
        }
    });
}

/// `match_in_place` for one layer's activations (`[C, h, w]`) and the style's table of that layer.
pub fn match_layer_in_place(
    quantiles: usize,
    layer: &str,
    shape: [usize; 3],
    data: &mut [f32],
    style: &StyleTargets,
) -> Result<()> {
    let table = layer_table(quantiles, layer, shape, data.len(), style)?;
    match_in_place(data, shape[0], table, default_threads());
    Ok(())
}

/// The style's quantile table of `layer`, checked against activations of `shape` holding `len` values.
fn layer_table<'a>(
    quantiles: usize,
    layer: &str,
    shape: [usize; 3],
    len: usize,
    style: &'a StyleTargets,
) -> Result<&'a [f32]> {
    let [c, h, w] = shape;
    if len != c * h * w || c == 0 {
        bail!("activations of {layer}: {len} values for shape {shape:?}");
    }
    let table = style.get(&format!("quantiles_{layer}"))?;
    if table.len() != c * quantiles {
        bail!("quantile table of {layer} has {} values for {c} channels x {quantiles} quantiles", table.len());
    }
    Ok(table)
}

/// One evaluation with its histogram targets re-matched when `rematch`: the full-resolution layers to `x` itself
/// (prelude.onnx, in place) before the run, the deeper ones from the run's activations for the next evaluation.
/// Returns the losses and the seconds spent in the prelude and the matching.
#[allow(clippy::too_many_arguments)]
pub fn evaluate(
    model: &mut Model,
    x: &[f32],
    height: usize,
    width: usize,
    inputs: &mut ObjectiveInputs,
    grad: &mut [f32],
    style: &StyleTargets,
    rematch: bool,
) -> Result<(Losses, f64)> {
    if !rematch {
        return Ok((model.evaluate(x, height, width, inputs, grad, None)?, 0.0));
    }
    let quantiles = model.manifest.quantiles;
    let t = Instant::now();
    let mut in_place =
        |layer: &str, shape: [usize; 3], data: &mut [f32]| match_layer_in_place(quantiles, layer, shape, data, style);
    model.prelude(x, height, width, inputs, &mut in_place)?;
    let mut seconds = t.elapsed().as_secs_f64();
    let mut from_outputs = |layer: &str, shape: [usize; 3], data: &[f32], inputs: &mut ObjectiveInputs| {
        let t = Instant::now();
        let r = update_layer(quantiles, layer, shape, data, style, inputs);
        seconds += t.elapsed().as_secs_f64();
        r
    };
    let losses = model.evaluate(x, height, width, inputs, grad, Some(&mut from_outputs))?;
    Ok((losses, seconds))
}

/// Threads for the sort: the machine's cores (the ONNX Runtime session is idle while it runs).
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn radix_argsort_agrees_with_a_stable_comparison_sort() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        for n in [1usize, 2, 7, 1000, 70_000] {
            // ReLU-like: many exact zeros (ties), a few negatives and huge values, -0.0
            let v: Vec<f32> = (0..n)
                .map(|i| match i % 7 {
                    0 | 1 => 0.0,
                    2 => -0.0,
                    3 => -rng.random::<f32>() * 10.0,
                    4 => rng.random::<f32>() * 1e6,
                    _ => rng.random::<f32>(),
                })
                .collect();
            let mut s = Scratch::default();
            argsort(&v, &mut s);
            let mut want: Vec<u32> = (0..n as u32).collect();
            want.sort_by_key(|i| key(v[*i as usize])); // stable
            assert_eq!(s.idx, want, "n = {n}");
            assert!(s.idx.windows(2).all(|w| v[w[0] as usize] <= v[w[1] as usize]));
        }
    }

    #[test]
    fn matching_to_own_table_of_full_size_is_the_identity() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
        let (c, n) = (5, 64);
        let f: Vec<f32> = (0..c * n).map(|_| rng.random::<f32>() - 0.3).collect();
        let mut tables = Vec::new();
        for ch in 0..c {
            let mut row = f[ch * n..(ch + 1) * n].to_vec();
            row.sort_by(|a, b| a.total_cmp(b));
            tables.extend(row);
        }
        for threads in [1, 2, 3, 8] {
            let mut out = vec![0.0; c * n];
            match_histograms(&f, c, &tables, &mut out, threads);
            assert_eq!(out, f, "threads {threads}");
        }
    }

    #[test]
    fn in_place_matching_equals_matching_into_another_buffer() {
        let (c, n, k) = (7, 3000, 32);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
        let f: Vec<f32> = (0..c * n).map(|i| if i % 3 == 0 { 0.0 } else { rng.random::<f32>() }).collect();
        let tables: Vec<f32> = (0..c * k).map(|i| (i % k) as f32 * 0.5 + (i / k) as f32).collect();
        let mut out = vec![0.0; c * n];
        match_histograms(&f, c, &tables, &mut out, 2);
        for threads in [1, 3] {
            let mut inplace = f.clone();
            match_in_place(&mut inplace, c, &tables, threads);
            assert_eq!(inplace, out, "threads {threads}");
        }
    }

    #[test]
    fn matched_values_follow_the_ranks_and_take_the_table_distribution() {
        let (c, n, k) = (3, 1000, 16);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let f: Vec<f32> = (0..c * n).map(|_| rng.random::<f32>()).collect();
        let tables: Vec<f32> = (0..c).flat_map(|ch| (0..k).map(move |j| (ch * 100 + j * j) as f32)).collect();
        let mut out = vec![0.0; c * n];
        match_histograms(&f, c, &tables, &mut out, 2);
        for ch in 0..c {
            let (fc, oc) = (&f[ch * n..(ch + 1) * n], &out[ch * n..(ch + 1) * n]);
            // monotone in the activation
            let mut order: Vec<usize> = (0..n).collect();
            order.sort_by(|a, b| fc[*a].total_cmp(&fc[*b]));
            assert!(order.windows(2).all(|w| oc[w[0]] <= oc[w[1]]));
            // the extremes are the table's extremes
            let lo = oc.iter().cloned().fold(f32::INFINITY, f32::min);
            let hi = oc.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!((lo, hi), (tables[ch * k], tables[ch * k + k - 1]));
        }
    }
}
