"""Independent numpy implementations of the loss formulas (models/README.md), for tests and for checking the Rust
runtime's targets. Nothing here is used to build the graphs.

    python -m fuchun_export.reference targets FEATURES_DIR OUT_DIR --quantiles 256 --shift relu3_1:4
computes Gram, shifted-Gram and quantile targets of every `feat_<layer>.npy` in FEATURES_DIR (the Rust tests
compare the runtime's targets with these).
"""
from __future__ import annotations

import sys

import numpy as np


def gram(f):
    """f: [1, C, h, w] -> F F^T / (h w)."""
    c = f.shape[1]
    m = f.reshape(c, -1).astype(np.float64)
    return m @ m.T / m.shape[1]


def shifted_grams(f, d):
    """(horizontal, vertical) Grams between f and f shifted by d feature pixels."""
    c = f.shape[1]
    f = f.astype(np.float64)
    a, b = f[:, :, :, :-d].reshape(c, -1), f[:, :, :, d:].reshape(c, -1)
    gh = a @ b.T / a.shape[1]
    a, b = f[:, :, :-d, :].reshape(c, -1), f[:, :, d:, :].reshape(c, -1)
    gv = a @ b.T / a.shape[1]
    return gh, gv


def resample_sorted(s, k):
    """k values from each row of the sorted array s [C, n]: position p = (j + 0.5) n / k - 0.5, clipped to
    [0, n - 1], linear interpolation. Used both for style quantiles (n -> K) and for matching (K -> h w)."""
    s = np.asarray(s, dtype=np.float64)
    n = s.shape[1]
    p = np.clip((np.arange(k) + 0.5) * n / k - 0.5, 0, n - 1)
    lo = np.floor(p).astype(np.int64)
    hi = np.minimum(lo + 1, n - 1)
    frac = p - lo
    return s[:, lo] + (s[:, hi] - s[:, lo]) * frac


def quantiles(f, k):
    """Per-channel table of k quantiles of f [1, C, h, w] -> [C, k]."""
    c = f.shape[1]
    return resample_sorted(np.sort(f.reshape(c, -1).astype(np.float64), axis=1), k)


def matched(f, table):
    """Histogram matching by rank: each element becomes the table (resampled to h w entries) at its rank."""
    c = f.shape[1]
    flat = f.reshape(c, -1)
    n = flat.shape[1]
    full = resample_sorted(table, n)
    order = np.argsort(flat, axis=1, kind="stable")
    out = np.empty_like(full)
    np.put_along_axis(out, order, full, axis=1)
    return out.reshape(f.shape)


def mse(a, b):
    return float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))


def terms(x, feats, targets, manifest, layer_weights):
    """Each term's (layer-weighted) loss from features `feats` (feat name -> array) and targets (graph input name
    -> array), following the manifest's layer lists."""
    lw = layer_weights
    out = {"content": sum(w * mse(feats[l], targets[f"content_{l}"])
                          for w, l in zip(lw["content"], manifest["content_layers"])),
           "style": sum(w * mse(gram(feats[l]), targets[f"gram_{l}"])
                        for w, l in zip(lw["style"], manifest["style_layers"]))}
    s = 0.0
    for w, item in zip(lw["shift"], manifest["shift_layers"]):
        gh, gv = shifted_grams(feats[item["layer"]], item["delta"])
        s += w * 0.5 * (mse(gh, targets[f"shift_h_{item['layer']}"]) + mse(gv, targets[f"shift_v_{item['layer']}"]))
    out["shift"] = s
    # the objective's histogram term: the distance to the matched activations it is given (hist_target_<layer>,
    # = matched(F, table) computed by the runtime), or to the matching of F itself when given the table
    out["hist"] = sum(w * mse(feats[l], targets[f"hist_target_{l}"] if f"hist_target_{l}" in targets
                              else matched(feats[l], targets[f"hist_{l}"]))
                      for w, l in zip(lw["hist"], manifest["hist_layers"]))
    x = np.asarray(x, np.float64)
    out["tv"] = float(np.mean((x[..., 1:] - x[..., :-1]) ** 2) + np.mean((x[:, :, 1:] - x[:, :, :-1]) ** 2))
    prev, m = targets.get("temporal_prev"), targets.get("temporal_weights")
    out["temporal"] = 0.0 if prev is None else float(np.mean(np.broadcast_to(m, x.shape) * (x - prev) ** 2))
    return out


def vgg_forward(x, weights, layers, pooling="max"):
    """Plain numpy VGG forward (im2col), float64, returning {layer: activations}; for small test networks."""
    from .graph import layer_names
    pre = weights.preprocess
    perm = [2, 1, 0] if pre.channel_order == "bgr" else [0, 1, 2]
    v = np.asarray(x, np.float64)[:, perm] * pre.scale
    v = (v - np.array(pre.mean).reshape(1, 3, 1, 1)) / np.array(pre.std).reshape(1, 3, 1, 1)
    order = layer_names(weights.arch)
    out = {}
    for layer in order[:max(order.index(l) for l in layers) + 1]:
        if layer.startswith("relu"):
            k = weights.kernels["conv" + layer[4:]].astype(np.float64)
            b = weights.biases["conv" + layer[4:]].astype(np.float64)
            _, c, h, w = v.shape
            p = np.pad(v, ((0, 0), (0, 0), (1, 1), (1, 1)))
            cols = np.stack([p[0, :, i:i + h, j:j + w] for i in range(3) for j in range(3)], axis=1)  # c,9,h,w
            v = np.einsum("ock,ckhw->ohw", k.reshape(k.shape[0], c, 9), cols)[None]
            v = np.maximum(v + b.reshape(1, -1, 1, 1), 0)
        else:
            _, c, h, w = v.shape
            v = v[:, :, :h // 2 * 2, :w // 2 * 2].reshape(1, c, h // 2, 2, w // 2, 2)
            v = v.max(axis=(3, 5)) if pooling == "max" else v.mean(axis=(3, 5))
        if layer in layers:
            out[layer] = v
    return out


def _targets_main(argv):
    """Read `feat_<layer>.npy` files from a directory, write gram_/shift_h_/shift_v_/hist_<layer>.npy (float64),
    and with --match the histogram-matched activations of a second image."""
    import argparse
    import os
    p = argparse.ArgumentParser(prog="python -m fuchun_export.reference targets")
    p.add_argument("features_dir")
    p.add_argument("out_dir")
    p.add_argument("--quantiles", type=int, default=256)
    p.add_argument("--shift", default="", help="LAYER:DELTA,...")
    p.add_argument("--match", metavar="IMAGE_FEATURES_DIR",
                   help="also write hist_target_<layer>.npy: the activations in this directory matched to the "
                        "quantiles of the features in FEATURES_DIR")
    a = p.parse_args(argv)
    shifts = dict((s.split(":")[0], int(s.split(":")[1])) for s in a.shift.split(",") if s)
    os.makedirs(a.out_dir, exist_ok=True)
    for name in sorted(os.listdir(a.features_dir)):
        if not (name.startswith("feat_") and name.endswith(".npy")):
            continue
        layer = name[5:-4]
        f = np.load(os.path.join(a.features_dir, name))
        out = {f"gram_{layer}": gram(f), f"hist_{layer}": quantiles(f, a.quantiles)}
        if a.match and os.path.exists(os.path.join(a.match, name)):
            out[f"hist_target_{layer}"] = matched(np.load(os.path.join(a.match, name)), out[f"hist_{layer}"])
        if layer in shifts:
            out[f"shift_h_{layer}"], out[f"shift_v_{layer}"] = shifted_grams(f, shifts[layer])
        for key, value in out.items():
            np.save(os.path.join(a.out_dir, key + ".npy"), np.ascontiguousarray(value))
    return 0


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] != "targets":
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(_targets_main(sys.argv[2:]))
