"""Tiled evaluation of the objective (issue 19; Galerne et al., EGSR 2024, extended to the long-range, histogram,
tv and temporal terms): two graphs that run on one block of the image at a time, and the block geometry.

A block is the block's *inner* rectangle (a tile of a partition of the image, its sides at multiples of `align`
except at the image's border) grown by `margin` pixels on each side that is not the image's border. `inner` is a
[1,1,H,W] 0/1 mask of the inner rectangle within the block.

* `tile_stats.onnx` (forward only): block x, inner -> the block's share of every global statistic: for each style
  layer the raw Gram sum over the inner positions, sum_p F(p) F(p)^T, for each shift layer the raw sums
  sum_p F(p) F(p + delta)^T over the inner *head* positions p (a pair belongs to the block holding its head, so
  each pair of the whole image is counted once, also when its tail lies across a block border), and the
  activations of the histogram layers (the runtime copies their inner region into the layer's global map and
  matches that, so the ranks are the global ones).
* `tile_grad.onnx` (forward + gradient): block x, inner, the block's crops of the image-sized targets, and the
  derivatives of the objective with respect to the global statistics (adjoints, computed by the runtime from the
  summed statistics) -> the block's inner sums of the additive terms and the gradient of the *surrogate*
    S = sum_l <B_l, sum_{p in inner} F_l(p) F_l(p)^T> + sum_l <Bh_l, sum_{p head in inner} F_l(p) F_l(p+d)^T> + ...
        + sum_l c_l sum_{p in inner} (F_l - P_l)^2 + ...
  whose derivative with respect to every inner activation is the whole objective's (the adjoints and factors
  carry the term weights, layer weights and global counts). The block's whole gradient (margin included) is
  added into the image's: the activations it differentiates are exact (the margin covers their receptive field),
  and the ones outside the inner region get no derivative (masked), so the sum over blocks is exact.

Exactness needs: every activation of an inner position (and of a shifted pair's tail) computed from the same
pixels as in the whole image. The margin covers `reach`, the pixels a layer's activation depends on beyond its own
cell (1 pixel at the input's resolution per 3x3 convolution up to the deepest layer: 58 px for relu5_1), plus the
largest shift in pixels; it and the block borders are multiples of `align` (the deepest layer's stride), so every
pooling window of a block is one of the whole image's.
"""
from __future__ import annotations

import numpy as np

from .gradient import objective_from_loss
from .graph import Builder, LossConfig, _shifted_pair, layer_info, layer_names, vgg_features
from .weights import Weights

FACTORS = {"content": "content_factors", "hist": "hist_factors"}


def geometry(weights: Weights, cfg: LossConfig):
    """(reach, align, margin) in pixels for the layers of `cfg` (see the module's documentation)."""
    order = layer_names(weights.arch)
    deepest = max(order.index(l) for l in cfg.all_layers())
    reach = 0
    for layer in order[:deepest + 1]:
        if layer.startswith("relu"):
            reach += 2 ** (int(layer[4]) - 1)      # one pixel at the convolution's input resolution
    align = max(layer_info(weights.arch, weights, l)[1] for l in cfg.all_layers())
    shift = max([d * layer_info(weights.arch, weights, l)[1] for l, d in cfg.shift_layers.items()] or [0])
    margin = -(-(reach + shift) // align) * align
    return reach, align, margin


def plan(height, width, inner, margin, align):
    """Blocks for an image: [(y0, y1, x0, x1) block, (iy0, iy1, ix0, ix1) inner], row-major. `inner` is the tile
    side (rounded down to a multiple of `align`, at least `align`); the last tile of a row or column takes the
    rest. Mirrored by the Rust runtime (src/transfer/tiled/plan.rs)."""
    side = max(align, inner // align * align)
    rows = [(a, min(a + side, height)) for a in range(0, height, side)]
    cols = [(a, min(a + side, width)) for a in range(0, width, side)]
    out = []
    for iy0, iy1 in rows:
        for ix0, ix1 in cols:
            block = (max(0, iy0 - margin), min(height, iy1 + margin), max(0, ix0 - margin), min(width, ix1 + margin))
            out.append((block, (iy0, iy1, ix0, ix1)))
    return out


def _layer_mask(b, inner, stride, layer, cache):
    """The inner mask at a layer's resolution: a cell is inner when its pixels are (all or none are: the inner
    rectangle's sides are multiples of the stride, or the image border, which floor-mode pooling drops the same
    way), so a max pool of the stride's size gives it with the layer's extent."""
    if layer not in cache:
        # a value of its own per layer, whose declared extents are the layer's symbols (ad.py's broadcast undo
        # matches them with the activations'; `inner` itself is declared H x W)
        m = inner if stride == 1 else b.op("MaxPool", [inner], "tile_mask", kernel_shape=[stride, stride],
                                           strides=[stride, stride])
        cache[layer] = b.declare(b.op("Identity", [m], "tile_mask"), [1, 1, f"{layer}_h", f"{layer}_w"])
    return cache[layer]


def _halves(b, v, axis, d):
    """(v[..., :-d], v[..., d:]) along `axis`, named `tile_half`, not `shift_a*`: the fused shifted-Gram rule of
    ad.py must not take them for the objective's."""
    return _shifted_pair(b, v, axis, d, stem="tile_half")


def _flat(b, v, channels, sym):
    return b.declare(b.op("Reshape", [v, b.i64([channels, -1])], "tile_flat"), [channels, sym])


def _mask_flat(b, m, sym):
    return b.declare(b.op("Reshape", [m, b.i64([1, -1])], "tile_mflat"), [1, sym])


def _pairs(b, f, m, c, layer, axis, d):
    """(heads masked by the inner mask, tails) of a shift layer, flattened to [C, n]."""
    head, tail = _halves(b, f, axis, d)
    mh, _ = _halves(b, m, axis, d)
    sym = f"{layer}_a{axis}_n"
    return (b.declare(b.op("Mul", [_flat(b, head, c, sym), _mask_flat(b, mh, sym)], "tile_masked"), [c, sym]),
            _flat(b, tail, c, sym))


def _stat_layers(cfg: LossConfig):
    return [l for l in cfg.all_layers() if l in cfg.style_layers or l in cfg.shift_layers or l in cfg.hist_layers]


def build_tile_stats(weights: Weights, cfg: LossConfig, dtype=np.float32):
    """Block x + inner mask -> the block's shares of the global statistics (first pass, forward only)."""
    b = Builder(dtype)
    x = b.input("x", [1, 3, "H", "W"])
    inner = b.input("inner", [1, 1, "H", "W"])
    feats = vgg_features(b, weights, x, _stat_layers(cfg), cfg.pooling)
    masks = {}
    for layer in cfg.style_layers:
        c, s = layer_info(weights.arch, weights, layer)
        sym = f"{layer}_n"
        flat = _flat(b, feats[layer], c, sym)
        m = _mask_flat(b, _layer_mask(b, inner, s, layer, masks), sym)
        g = b.op("MatMul", [b.op("Mul", [flat, m]), b.op("Transpose", [flat], perm=[1, 0])])
        b.output(g, f"gram_sum_{layer}", [c, c])
    for layer, d in cfg.shift_layers.items():
        c, s = layer_info(weights.arch, weights, layer)
        m = _layer_mask(b, inner, s, layer, masks)
        for axis, side in ((3, "h"), (2, "v")):
            heads, tails = _pairs(b, feats[layer], m, c, layer, axis, d)
            g = b.op("MatMul", [heads, b.op("Transpose", [tails], perm=[1, 0])])
            b.output(g, f"shift_{side}_sum_{layer}", [c, c])
    for layer in cfg.hist_layers:
        c, _ = layer_info(weights.arch, weights, layer)
        b.output(feats[layer], f"feat_{layer}", [1, c, f"{layer}_h", f"{layer}_w"])
    return b.model("fuchun_tile_stats", "block of the image -> its shares of the objective's global statistics")


def _masked_sum_sq(b, d, m):
    """sum(m * d^2) (no mean: the runtime divides by the whole image's count), summed one axis at a time: a single
    float32 ReduceSum over a block's 5 million values at relu1_1 was 5e-5 off (relative, against float64); row by
    row, as the objective's means, it is within 1e-7."""
    v = b.declare(b.op("Mul", [b.declare(b.op("Mul", [d, d], "tile_sq"), b.shapes[d]), m], "tile_msq"), b.shapes[d])
    for axis in reversed(range(len(b.shapes[d]))):
        v = b.op("ReduceSum", [v, b.i64([axis])], "tile_sum", keepdims=0)
    return v


def _stack(b, values):
    return b.op("Concat", [b.op("Unsqueeze", [v, b.i64([0])]) for v in values], axis=0)


def build_tile_loss(weights: Weights, cfg: LossConfig, dtype=np.float32):
    """The second pass's forward graph: block x, inner mask, the block's crops of the targets, adjoints and factors
    -> `total_scaled` (the surrogate S, differentiated by gradient.objective_from_loss) and the inner sums of the
    additive terms (`sums_<term>`)."""
    b = Builder(dtype)
    arch = weights.arch
    x = b.input("x", [1, 3, "H", "W"])
    inner = b.input("inner", [1, 1, "H", "W"])
    feats = vgg_features(b, weights, x, cfg.all_layers(), cfg.pooling)
    masks = {}
    parts = []

    for term, layers, target in (("content", cfg.content_layers, "content_"),
                                 ("hist", cfg.hist_layers, "hist_target_")):
        sums = []
        for layer in layers:
            c, s = layer_info(arch, weights, layer)
            dims = [1, c, f"{layer}_h", f"{layer}_w"]
            t = b.input(f"{target}{layer}", dims)
            d = b.declare(b.op("Sub", [feats[layer], t], "tile_diff"), dims)
            sums.append(_masked_sum_sq(b, d, _layer_mask(b, inner, s, layer, masks)))
        if sums:
            stacked = _stack(b, sums)
            b.output(stacked, f"sums_{term}", [len(sums)])
            factors = b.input(FACTORS[term], [len(sums)])
            parts.append(b.op("ReduceSum", [b.op("Mul", [stacked, factors])], keepdims=0))

    for layer in cfg.style_layers:
        c, s = layer_info(arch, weights, layer)
        sym = f"{layer}_n"
        flat = _flat(b, feats[layer], c, sym)
        m = _mask_flat(b, _layer_mask(b, inner, s, layer, masks), sym)
        adj = b.input(f"style_adjoint_{layer}", [c, c])
        masked = b.declare(b.op("Mul", [flat, m], "tile_masked"), [c, sym])
        mixed = b.declare(b.op("MatMul", [adj, flat], "tile_mixed"), [c, sym])
        parts.append(b.op("ReduceSum", [b.declare(b.op("Mul", [masked, mixed]), [c, sym])], keepdims=0))

    for layer, d in cfg.shift_layers.items():
        c, s = layer_info(arch, weights, layer)
        m = _layer_mask(b, inner, s, layer, masks)
        for axis, side in ((3, "h"), (2, "v")):
            heads, tails = _pairs(b, feats[layer], m, c, layer, axis, d)
            adj = b.input(f"shift_{side}_adjoint_{layer}", [c, c])
            sym = b.shapes[tails][1]
            mixed = b.declare(b.op("MatMul", [adj, tails], "tile_mixed"), [c, sym])
            parts.append(b.op("ReduceSum", [b.declare(b.op("Mul", [heads, mixed]), [c, sym])], keepdims=0))

    # tv: the pixel pairs whose first pixel is inner (each pair of the image once)
    sums = []
    for axis in (3, 2):
        first, second = _halves(b, x, axis, 1)
        mh, _ = _halves(b, inner, axis, 1)
        dx = b.declare(b.op("Sub", [second, first], "tile_diff"), b.shapes[second])
        sums.append(_masked_sum_sq(b, dx, mh))
    stacked = _stack(b, sums)
    b.output(stacked, "sums_tv", [2])
    parts.append(b.op("ReduceSum", [b.op("Mul", [stacked, b.input("tv_factors", [2])])], keepdims=0))

    prev = b.input("temporal_prev", [1, 3, "H", "W"])
    tw = b.input("temporal_weights", [1, 1, "H", "W"])
    d = b.declare(b.op("Sub", [x, prev], "tile_diff"), [1, 3, "H", "W"])
    mt = b.declare(b.op("Mul", [tw, inner]), [1, 1, "H", "W"])
    stacked = _stack(b, [_masked_sum_sq(b, d, mt)])
    b.output(stacked, "sums_temporal", [1])
    parts.append(b.op("ReduceSum", [b.op("Mul", [stacked, b.input("temporal_factor", [1])])], keepdims=0))

    total = parts[0]
    for p in parts[1:]:
        total = b.op("Add", [total, p])
    b.output(total, "total_scaled", [])
    return b.model("fuchun_tile_loss", "block of the image -> the surrogate whose gradient is the block's share of "
                                       "the whole objective's")


def build_tile_grad(weights: Weights, cfg: LossConfig, dtype=np.float32, surgery=True):
    """tile_grad.onnx: the surrogate's gradient with respect to the block (the same onnx_ad pass and rewrites as
    objective.onnx)."""
    return objective_from_loss(build_tile_loss(weights, cfg, dtype), surgery)
