"""Command line: export features.onnx, objective.onnx, prelude.onnx, tile_stats.onnx, tile_grad.onnx (each with its
.onnx.data weights) and manifest.json.

    python -m fuchun_export --weights hed --out models/out/vgg16-max
    python -m fuchun_export --weights keras-h5 vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5 --out DIR
    python -m fuchun_export --weights npz my_vgg.npz --out DIR
    python -m fuchun_export --weights random --seed 3 --out DIR
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import onnx
from onnx import helper

from . import __version__
from .graph import (DIFF_SCALE, OBJECTIVE_SCALE, OPSET, TERMS, ConfigError, LossConfig, build_features, build_loss, build_prelude,
                    exact_hist_layers, layer_info)
from .gradient import GRAD_SEED, objective_from_loss
from .precision import fp32_values
from .weights import WeightsError, load_hed, load_keras_h5, load_npz, random_weights

# Default term weights, tuned by eye on the bundled example (Tübingen photo + Fuchun scroll, hed weights, 192-512
# px): the weighted terms of the result are of the same order (at 256 px: content ≈ 50, style ≈ 4, shift ≈ 5,
# hist ≈ 11, tv ≈ 0.5) and the photo reads as an ink-and-wash painting whose buildings stay recognisable. With other weights
# (keras-h5, npz) the activation scales differ and these need re-tuning; the CLI flags override them.

DEFAULT_TERM_WEIGHTS = {"content": 3.0, "style": 0.1, "shift": 0.05, "hist": 10.0, "tv": 30.0, "temporal": 0.0}
# The term weights the runtime uses by default, with each layer's loss divided by its target's mean square (the
# runtime's layer normalisation, src/transfer/inputs.rs): chosen by the quality bench (docs/quality.md) — with the
# content carried into the painting's colours and held at relu2_1/relu3_1/relu4_2, the style side at 3x the earlier
# 2.5 / 1.25 / 1.25 paints the strokes without losing the scene. The temporal term acts only on camera streams, which
# set its weight per frame.
NORMALIZED_TERM_WEIGHTS = {"content": 1.0, "style": 7.5, "shift": 3.75, "hist": 3.75, "tv": 30.0, "temporal": 0.0}
# The terms the runtime's one knob `strength` multiplies: the painting's side against the content.
STYLE_SIDE_TERMS = ["style", "shift", "hist"]


def default_layer_weights(weights, cfg):
    """Per-layer weights: each term is the plain average over its layers (1/L each); the content layers' as configured,
    normalised to sum 1."""
    total = float(sum(cfg.content_weights))
    return {
        "content": [float(w) / total for w in cfg.content_weights],
        "style": [1.0 / len(cfg.style_layers)] * len(cfg.style_layers),
        "shift": [1.0 / max(1, len(cfg.shift_layers))] * len(cfg.shift_layers),
        "hist": [1.0 / max(1, len(cfg.hist_layers))] * len(cfg.hist_layers),
    }


def build_all(weights, cfg, dtype=np.float32, surgery=True, fused=True):
    cfg.validate(weights.arch, weights)
    features = build_features(weights, cfg, dtype)
    loss = build_loss(weights, cfg, dtype)
    objective = objective_from_loss(loss, surgery, fused)
    return features, loss, objective


def flops_per_pixel(weights, cfg):
    """Multiply-adds x2 per input pixel of the forward pass up to the deepest layer used."""
    from .graph import layer_names
    order = layer_names(weights.arch)
    deepest = max(order.index(l) for l in cfg.all_layers())
    total = 0.0
    for layer in order[:deepest + 1]:
        if layer.startswith("relu"):
            k = weights.kernels["conv" + layer[4:]]
            stride = 2 ** (int(layer[4]) - 1)
            total += 2.0 * k.shape[0] * k.shape[1] * 9 / stride ** 2
    return total


def _io(value, meaning):
    t = value.type.tensor_type
    shape = [d.dim_param if d.dim_param else d.dim_value for d in t.shape.dim]
    return {"name": value.name, "dtype": helper.tensor_dtype_to_np_dtype(t.elem_type).name, "shape": shape,
            "meaning": meaning}


def _meaning(name):
    if name == "x":
        return "image, RGB float in [0,1], [1,3,H,W]; H and W >= min_size"
    for prefix, text in (("content_", "content target: the content image's activations at this layer"),
                         ("gram_", "style target: Gram matrix F F^T / (h w) of the style activations"),
                         ("shift_h_", "long-range target: Gram between the activations and themselves shifted "
                                      "right by delta"),
                         ("shift_v_", "long-range target: Gram between the activations and themselves shifted "
                                      "down by delta"),
                         ("hist_target_", "histogram-matched activations of the image at this layer: the "
                                          "style's quantile at each element's rank (computed by the runtime)"),
                         ("hist_", "histogram target: per-channel table of K sorted quantiles of the style "
                                   "activations"),
                         ("feat_", "activations of this layer, [1,C,h,w]"),
                         ("layers_", "each layer's weighted loss (layer_weights[l] * loss_l, summing to the term's "
                                     "loss), in the order of the manifest's layer list for the term")):
        if name.startswith(prefix):
            return f"{text} ({name[len(prefix):]})"
    return {
        "term_weights": f"weights of the terms, in the order {list(TERMS)}; 0 disables a term",
        "content_layer_weights": "per content layer weights", "style_layer_weights": "per style layer weights",
        "shift_layer_weights": "per long-range (shift) layer weights",
        "hist_layer_weights": "per histogram layer weights",
        "temporal_prev": "temporal term: the previous stylised frame, RGB float in [0,1], [1,3,H,W] (zeros when unused)",
        "temporal_weights": "temporal term: per-pixel weight, [1,1,H,W] (0 where the scene changed; zeros when unused)",
        "total": "sum over terms of term_weights[t] * loss_t",
        "grad": "d total / d x, [1,3,H,W]",
    }.get(name, "loss of the term " + name[5:] + " (layer-weighted, before its term weight)")


def _tiled_meaning(name):
    """Meanings of the tile graphs' own inputs and outputs (None for the names they share with the objective)."""
    for prefix, text in (("gram_sum_", "raw Gram sum over the block's inner positions, sum_p F(p) F(p)^T"),
                         ("shift_h_sum_", "raw sum over the inner head positions p of F(p) F(p + delta right)^T"),
                         ("shift_v_sum_", "raw sum over the inner head positions p of F(p) F(p + delta down)^T"),
                         ("style_adjoint_", "d total / d (Gram sum) of the whole image, [C,C] (runtime)"),
                         ("shift_h_adjoint_", "d total / d (horizontal shifted-Gram sum) of the whole image (runtime)"),
                         ("shift_v_adjoint_", "d total / d (vertical shifted-Gram sum) of the whole image (runtime)"),
                         ("sums_", "the block's inner sums of squared differences of this term (per layer; tv: "
                                   "horizontal, vertical), before the whole image's count and the weights")):
        if name.startswith(prefix):
            return f"{text} ({name[len(prefix):]})"
    return {
        "inner": "1 on the block's inner rectangle, 0 on its margin, [1,1,H,W]",
        "content_factors": "per content layer term_weight * layer_weight / (C h w of the whole image)",
        "hist_factors": "per histogram layer term_weight * layer_weight / (C h w of the whole image)",
        "tv_factors": "term_weight / the whole image's pair count, horizontal and vertical",
        "temporal_factor": "term_weight / (3 H W of the whole image)",
        "grad": "the block's share of d total / d x (margin included: add it into the image's gradient)",
    }.get(name)


def _graph_entry(file, model, tiled=False):
    def meaning(v):
        return (_tiled_meaning(v.name) if tiled else None) or _meaning(v.name)
    return {"file": file, "inputs": [_io(v, meaning(v)) for v in model.graph.input],
            "outputs": [_io(v, meaning(v)) for v in model.graph.output]}


def manifest(weights, cfg, features, objective, files, prelude=None, tiles=None):
    from .graph import layer_names
    layers = []
    for name in cfg.all_layers():
        c, s = layer_info(weights.arch, weights, name)
        layers.append({"name": name, "channels": int(c), "stride": int(s)})
    deepest_stride = max(l["stride"] for l in layers)
    min_size = max([deepest_stride] + [(d + 1) * layer_info(weights.arch, weights, l)[1]
                                       for l, d in cfg.shift_layers.items()])
    import onnx_ad
    return {
        "format": "fuchun-model",
        "format_version": 3,
        "exporter": {"name": "fuchun_export", "version": __version__},
        "versions": {"onnx": onnx.__version__, "onnx_ad": getattr(onnx_ad, "__version__", "unknown"),
                     "numpy": np.__version__, "python": sys.version.split()[0]},
        "opset": OPSET,
        "weights": weights.source,
        "architecture": weights.arch,
        "pooling": cfg.pooling,
        "preprocess": weights.preprocess.to_json(),
        "all_layers": layer_names(weights.arch),
        "layers": layers,
        "terms": list(TERMS),
        "content_layers": list(cfg.content_layers),
        "style_layers": list(cfg.style_layers),
        "shift_layers": [{"layer": l, "delta": int(d)} for l, d in cfg.shift_layers.items()],
        "hist_layers": list(cfg.hist_layers),
        "hist_exact_layers": exact_hist_layers(weights, cfg),
        "quantiles": cfg.quantiles,
        "min_size": int(min_size),
        "default_term_weights": DEFAULT_TERM_WEIGHTS,
        "normalized_term_weights": NORMALIZED_TERM_WEIGHTS,
        "style_side_terms": STYLE_SIDE_TERMS,
        "layer_groups": [{"term": "content", "layers": list(cfg.content_layers)},
                         {"term": "style", "layers": list(cfg.style_layers)},
                         {"term": "shift", "layers": list(cfg.shift_layers)},
                         {"term": "hist", "layers": list(cfg.hist_layers)}],
        "default_layer_weights": default_layer_weights(weights, cfg),
        "fp16": {
            "fp32_values": sorted(fp32_values(objective)),
            "note": "objective.onnx keeps every value in float16's range (README 'Float16') except these: the "
                    "unscaling of the total, loss_* and grad outputs (scalars and one [1,3,H,W] product), which a "
                    "float16 engine must compute in float32",
            "grad_seed": GRAD_SEED,
            "objective_scale": OBJECTIVE_SCALE,
            "diff_scale": dict(DIFF_SCALE),
        },
        "forward_flops_per_pixel": flops_per_pixel(weights, cfg),
        "objective_flops_per_pixel": 2.0 * flops_per_pixel(weights, cfg),
        "formulas": {
            "gram": "G(F) = F F^T / (h w), F reshaped to [C, h w]",
            "content": "sum_l w_l * mean((F_l - P_l)^2)",
            "style": "sum_l w_l * mean_{C x C}((G(F_l) - A_l)^2)",
            "shift": "sum_l w_l * (mean((Gh_l - Ah_l)^2) + mean((Gv_l - Av_l)^2)) / 2, "
                     "Gh = F[:, :, :, :-d] F[:, :, :, d:]^T / (h (w - d)), Gv likewise along the height",
            "hist": "sum_l w_l * mean((F_l - M_l)^2), M_l = hist_target_l (an input, so no derivative): per "
                    "channel the quantile table resampled to h w entries, taken at each element's rank; the "
                    "runtime matches hist_exact_layers from prelude.onnx before each evaluation and the others "
                    "from the objective's feat_l outputs of the previous evaluation (see `hist_every`)",
            "tv": "mean((x[..., 1:] - x[..., :-1])^2) + mean((x[:, :, 1:] - x[:, :, :-1])^2)",
            "temporal": "mean over [1,3,H,W] of m * (x - prev)^2, prev = temporal_prev (the previous stylised "
                        "frame), m = temporal_weights [1,1,H,W] (0 where the scene changed), broadcast over channels",
            "total": "sum_t term_weights[t] * loss_t",
            "quantile": "q_k = sorted value at position p = (k + 0.5) n / K - 0.5 (clipped to [0, n-1]), linear "
                        "interpolation",
        },
        "graphs": {
            "features": {"file": files["features"],
                         "inputs": [_io(v, _meaning(v.name)) for v in features.graph.input],
                         "outputs": [_io(v, _meaning(v.name)) for v in features.graph.output]},
            "objective": {"file": files["objective"],
                          "inputs": [_io(v, _meaning(v.name)) for v in objective.graph.input],
                          "outputs": [_io(v, _meaning(v.name)) for v in objective.graph.output]},
            **({"prelude": {"file": files["prelude"],
                            "inputs": [_io(v, _meaning(v.name)) for v in prelude.graph.input],
                            "outputs": [_io(v, _meaning(v.name)) for v in prelude.graph.output]}}
               if prelude is not None else {}),
            **({"tile_stats": _graph_entry(files["tile_stats"], tiles[0], True),
                "tile_grad": _graph_entry(files["tile_grad"], tiles[1], True)} if tiles is not None else {}),
        },
        **({"tiling": tiling_entry(weights, cfg)} if tiles is not None else {}),
    }


def tiling_entry(weights, cfg):
    from .tile import geometry
    reach, align, margin = geometry(weights, cfg)
    return {"reach": reach, "align": align, "margin": margin,
            "note": "tile_stats.onnx and tile_grad.onnx evaluate the objective block by block, exactly "
                    "(models/README.md, 'Tiled evaluation'): inner rectangles at multiples of align (or the "
                    "image border), each grown by margin px on its sides inside the image; float32 only"}


# The finest scale's objective (`refine/`, a model directory of its own): the model's layers down to this one only.
# At the output size the coarser scales have already laid out the picture; what is left is fine strokes, which the
# shallow layers carry. Up to relu3_1 VGG16's forward pass is 39 % of the one up to relu5_1, and on the bench pairs
# the results were as painted, with more of the scene (docs/quality.md, "The finest scale with the shallow layers").
DEFAULT_REFINE_DEEPEST = "relu3_1"


def refine_config(cfg, arch, deepest):
    """`cfg` restricted to the layers down to `deepest` (content weights kept, shift deltas kept), or None when a
    term the model has would lose every layer (the finest scale then runs the whole objective)."""
    from .graph import layer_names
    order = layer_names(arch)
    if deepest not in order:
        raise ConfigError(f"--refine-deepest {deepest!r} is not a layer of {arch}: use one of "
                          f"{', '.join(l for l in order if l.startswith('relu'))}, or '' for none")
    keep = lambda l: order.index(l) <= order.index(deepest)
    content = [(l, w) for l, w in zip(cfg.content_layers, cfg.content_weights) if keep(l)]
    style = [l for l in cfg.style_layers if keep(l)]
    shift = {l: d for l, d in cfg.shift_layers.items() if keep(l)}
    hist = [l for l in cfg.hist_layers if keep(l)]
    if not content or not style or (cfg.shift_layers and not shift) or (cfg.hist_layers and not hist):
        return None
    if (content, style, shift, hist) == (list(zip(cfg.content_layers, cfg.content_weights)), cfg.style_layers,
                                         cfg.shift_layers, cfg.hist_layers):
        return None     # nothing deeper to leave out: the refinement would be the objective itself
    return LossConfig([l for l, _ in content], style, shift, hist, cfg.quantiles, cfg.pooling,
                      content_weights=[w for _, w in content])


def export(weights, cfg, out_dir, log=print, surgery=True, refine_deepest=DEFAULT_REFINE_DEEPEST):
    t0 = time.time()
    features, _, objective = build_all(weights, cfg, surgery=surgery)
    prelude = build_prelude(weights, cfg)
    from .tile import build_tile_grad, build_tile_stats
    tiles = (build_tile_stats(weights, cfg), build_tile_grad(weights, cfg, surgery=surgery))
    os.makedirs(out_dir, exist_ok=True)
    graphs = {"features": features, "objective": objective, "prelude": prelude, "tile_stats": tiles[0],
              "tile_grad": tiles[1]}
    files = {k: f"{k}.onnx" for k, g in graphs.items() if g is not None}
    for stale in ("prelude.onnx", "prelude.onnx.data"):
        if prelude is None and os.path.exists(os.path.join(out_dir, stale)):
            os.remove(os.path.join(out_dir, stale))
    man = manifest(weights, cfg, features, objective, files, prelude, tiles)
    from .weights import sha256_file
    refine_dir = os.path.join(out_dir, "refine")
    refine = refine_config(cfg, weights.arch, refine_deepest) if refine_deepest else None
    if refine is not None:
        export(weights, refine, refine_dir, log=log, surgery=surgery, refine_deepest=None)
        man["refine"] = {"dir": "refine", "deepest_layer": refine_deepest,
                         "manifest_sha256": sha256_file(os.path.join(refine_dir, "manifest.json"))}
    elif os.path.isdir(refine_dir):
        import shutil
        shutil.rmtree(refine_dir)   # a refinement of an earlier export with other layers
    for key, model in ((k, graphs[k]) for k in files):
        onnx.checker.check_model(model)
        # The weights go to an external data file beside the graph: ONNX Runtime then keeps one copy of them
        # instead of the protobuf's and its own (-105 MB resident for the two graphs, docs/performance.md).
        data = files[key] + ".data"
        tmp = os.path.join(out_dir, files[key] + ".tmp")
        if os.path.exists(os.path.join(out_dir, data)):
            os.remove(os.path.join(out_dir, data))   # onnx appends to an existing data file
        onnx.save_model(model, tmp, save_as_external_data=True, all_tensors_to_one_file=True, location=data,
                        size_threshold=1024)
        os.replace(tmp, os.path.join(out_dir, files[key]))
        man["graphs"][key]["sha256"] = sha256_file(os.path.join(out_dir, files[key]))
        if os.path.exists(os.path.join(out_dir, data)):      # absent when every tensor is below the threshold
            man["graphs"][key]["data"] = {"file": data, "sha256": sha256_file(os.path.join(out_dir, data))}
    man["export_seconds"] = round(time.time() - t0, 2)
    tmp = os.path.join(out_dir, "manifest.json.tmp")
    with open(tmp, "w") as f:
        json.dump(man, f, indent=2)
        f.write("\n")
    os.replace(tmp, os.path.join(out_dir, "manifest.json"))
    log(f"exported {weights.arch}/{cfg.pooling} from {weights.source.get('kind')} to {out_dir} "
        f"in {time.time() - t0:.1f} s")
    return man


def parse_layers(text):
    return [s.strip() for s in text.split(",") if s.strip()]


def parse_weighted(text, what):
    """LAYER[:W],… -> (names, weights); a layer without a weight gets 1."""
    names, weights = [], []
    for item in parse_layers(text):
        name, _, w = item.partition(":")
        try:
            weights.append(float(w) if w else 1.0)
        except ValueError:
            raise ConfigError(f"--{what}: weight {w!r} of {name} is not a number") from None
        names.append(name.strip())
    return names, weights


def parse_shift(text):
    out = {}
    for item in parse_layers(text):
        if ":" not in item:
            raise ConfigError(f"--shift-layers item {item!r} must be LAYER:DELTA, e.g. relu3_1:4")
        name, d = item.split(":", 1)
        try:
            out[name] = int(d)
        except ValueError:
            raise ConfigError(f"--shift-layers: delta {d!r} of {name} is not an integer") from None
    return out


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m fuchun_export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", nargs="+", default=["hed"], metavar=("KIND", "PATH"),
                   help="hed (default, offline) | keras-h5 PATH | npz PATH | random")
    p.add_argument("--seed", type=int, default=0, help="seed for --weights random")
    p.add_argument("--arch", default="vgg16", help="architecture for --weights random (vgg16|vgg19)")
    p.add_argument("--width-divisor", type=int, default=1, help="shrink channels for --weights random (tests)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--pooling", default="max", choices=["max", "avg"])
    p.add_argument("--content-layers", default="relu2_1:0.3,relu3_1,relu4_2",
                   help="LAYER[:WEIGHT] list; the weights (default 1) are the model's default content layer weights")
    p.add_argument("--style-layers", default="relu1_1,relu2_1,relu3_1,relu4_1,relu5_1")
    p.add_argument("--shift-layers", default="relu2_1:8,relu3_1:4,relu4_1:2",
                   help="LAYER:DELTA list for the long-range term (delta in feature pixels); '' disables it")
    p.add_argument("--hist-layers", default="relu1_1,relu4_1", help="'' disables the histogram term")
    p.add_argument("--quantiles", type=int, default=256, help="quantiles per channel in the histogram targets")
    p.add_argument("--refine-deepest", default=DEFAULT_REFINE_DEEPEST,
                   help="also export the finest scale's objective (refine/) with the layers down to this one; "
                        "'' exports none")
    p.add_argument("--keep-conv-transpose", action="store_true",
                   help="export onnx_ad's gradient graph without the surgery (ConvTranspose rewrite, seed axis, ReLU masks), for A/B measurements")
    a = p.parse_args(argv)
    try:
        kind, rest = a.weights[0], a.weights[1:]
        if kind == "hed":
            w = load_hed(rest[0] if rest else None)
        elif kind in ("keras-h5", "npz"):
            if len(rest) != 1:
                raise WeightsError(f"--weights {kind} needs exactly one PATH")
            w = load_keras_h5(rest[0]) if kind == "keras-h5" else load_npz(rest[0])
        elif kind == "random":
            w = random_weights(a.arch, a.seed, a.width_divisor)
        else:
            raise WeightsError(f"unknown weight source {kind!r}: use hed, keras-h5 PATH, npz PATH or random")
        content, content_weights = parse_weighted(a.content_layers, "content-layers")
        cfg = LossConfig(content, parse_layers(a.style_layers), parse_shift(a.shift_layers),
                         parse_layers(a.hist_layers), a.quantiles, a.pooling, content_weights=content_weights)
        export(w, cfg, a.out, surgery=not a.keep_conv_transpose, refine_deepest=a.refine_deepest)
    except (WeightsError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
