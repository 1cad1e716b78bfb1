"""ONNX graphs: the VGG feature extractor and the style-transfer loss (forward only; the gradient comes from
onnx_ad.reverse in export.py). Formulas are documented in models/README.md and mirrored in reference.py."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .weights import Weights, conv_names

# Opset 17: the newest TensorRT 8.6 (JetPack 6.0) parses; see gpu_support/.
OPSET = 17
TERMS = ("content", "style", "shift", "hist", "tv", "temporal")

# Float16 safety (models/README.md, "Float16"). The Gram differences G - A of the style and shift terms reach ~1.4e4
# with the hed weights, their squares 2e8, a layer's mean 4e5: each difference is scaled by 2^-3 / C (C^2 elements)
# before squaring and summed, so those terms are computed as loss * 2^-6 inside the graph; the histogram term's
# differences (up to ~180 at relu1_1) and the content term's (up to ~225 at relu2_1) are halved before squaring
# (loss * 2^-2), the TV term's image differences
# multiplied by 2^4 (loss * 2^8: most squared pixel differences are below 2^-14), and so are the temporal term's. The differentiated objective is
# total * OBJECTIVE_SCALE (`total_scaled`), seeded with GRAD_SEED (export.py) so that fewer of the backward pass's
# values fall below float16's normal range; the `total`, `loss_*` and `grad` outputs are unscaled by a few scalar
# (and one [1,3,H,W]) operations named `fp32_*`, which must run in float32 (manifest: fp16.fp32_values).
DIFF_SCALE = {"content": 2.0 ** -1, "style": 2.0 ** -3, "shift": 2.0 ** -3, "hist": 2.0 ** -1, "tv": 2.0 ** 4, "temporal": 2.0 ** 4}
OBJECTIVE_SCALE = 1.0


class ConfigError(Exception):
    """An export configuration that cannot work (unknown layer, bad shift ...)."""


def layer_names(arch):
    """Every addressable layer in network order: relu1_1, relu1_2, pool1, relu2_1, ..."""
    out = []
    for conv in conv_names(arch):
        b, i = conv[4], conv[6:]
        out.append(f"relu{b}_{i}")
        last = [c for c in conv_names(arch) if c[4] == b][-1]
        if conv == last:
            out.append(f"pool{b}")
    return out


def layer_info(arch, weights: Weights, name):
    """(channels, stride) of a layer."""
    if name not in layer_names(arch):
        raise ConfigError(f"unknown layer {name!r} for {arch}: valid layers are {', '.join(layer_names(arch))}")
    b = int(name[4])
    if name.startswith("pool"):
        conv = [c for c in conv_names(arch) if c[4] == str(b)][-1]
        return weights.kernels[conv].shape[0], 2 ** b
    return weights.kernels["conv" + name[4:]].shape[0], 2 ** (b - 1)


DEFAULT_CONTENT_LAYERS = ["relu2_1", "relu3_1", "relu4_2"]
DEFAULT_CONTENT_WEIGHTS = [0.3, 1.0, 1.0]


@dataclass
class LossConfig:
    # Content layers and their default weights (normalised to sum 1 in the manifest). The shallow layers hold the
    # scene's structures (edges, windows, a face's features) that relu4_2 alone lets the style paint over; relu2_1
    # at a lower weight, so that the strokes of the painting still replace the photo's fine texture
    # (docs/quality.md, the front of settings tried).
    content_layers: list = field(default_factory=lambda: list(DEFAULT_CONTENT_LAYERS))
    style_layers: list = field(default_factory=lambda: ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"])
    # Long-range consistency: layer -> shift in feature pixels. Default: 16 image pixels at every layer.
    shift_layers: dict = field(default_factory=lambda: {"relu2_1": 8, "relu3_1": 4, "relu4_1": 2})
    hist_layers: list = field(default_factory=lambda: ["relu1_1", "relu4_1"])
    quantiles: int = 256
    pooling: str = "max"
    # None: DEFAULT_CONTENT_WEIGHTS for the default layers, 1 each for layers given without weights
    content_weights: list = None

    def __post_init__(self):
        if self.content_weights is None:
            default = list(self.content_layers) == DEFAULT_CONTENT_LAYERS
            self.content_weights = list(DEFAULT_CONTENT_WEIGHTS) if default else [1.0] * len(self.content_layers)

    def validate(self, arch, weights):
        if self.pooling not in ("max", "avg"):
            raise ConfigError(f"unknown pooling {self.pooling!r}: use max or avg")
        if not self.content_layers or not self.style_layers:
            raise ConfigError("at least one content layer and one style layer are needed")
        if len(self.content_weights) != len(self.content_layers) or not all(w >= 0 for w in self.content_weights) \
                or sum(self.content_weights) <= 0:
            raise ConfigError(f"content layer weights {self.content_weights} must be one non-negative number per "
                              f"content layer {self.content_layers}, not all 0")
        for name in self.all_layers():
            layer_info(arch, weights, name)
        for name, d in self.shift_layers.items():
            if int(d) < 1:
                raise ConfigError(f"shift for {name} must be >= 1 feature pixel, got {d}")
        if self.quantiles < 2:
            raise ConfigError(f"--quantiles must be >= 2, got {self.quantiles}")

    def all_layers(self):
        seen = []
        for name in [*self.content_layers, *self.style_layers, *self.shift_layers, *self.hist_layers]:
            if name not in seen:
                seen.append(name)
        return seen


class Builder:
    """Tiny helper around onnx.helper that names values uniquely."""

    def __init__(self, dtype):
        self.dtype = np.dtype(dtype)
        self.elem = helper.np_dtype_to_tensor_dtype(self.dtype)
        self.nodes, self.inits, self.inputs, self.outputs = [], [], [], []
        self._n = 0
        # Symbolic shapes of the values whose extents the exporter knows (value -> dims, ints or dim names).
        # Written as value_info: onnx_ad's broadcast undo (ad.py) reads them to choose constant reduction axes.
        self.shapes = {}

    def name(self, stem):
        self._n += 1
        return f"{stem}_{self._n}"

    def op(self, op_type, inputs, stem=None, n_out=1, **attrs):
        outs = [self.name(stem or op_type.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, **attrs))
        return outs[0] if n_out == 1 else outs

    def const(self, value, stem="c", dtype=None):
        arr = np.asarray(value, dtype=dtype or self.dtype)
        name = self.name(stem)
        self.inits.append(numpy_helper.from_array(arr, name))
        return name

    def i64(self, value, stem="i"):
        return self.const(value, stem, np.int64)

    def input(self, name, shape, elem=None):
        self.inputs.append(helper.make_tensor_value_info(name, elem or self.elem, shape))
        self.shapes[name] = list(shape)
        return name

    def declare(self, value, shape):
        self.shapes[value] = list(shape)
        return value

    def output(self, value, name, shape, elem=None):
        self.nodes.append(helper.make_node("Identity", [value], [name]))
        self.outputs.append(helper.make_tensor_value_info(name, elem or self.elem, shape))

    def model(self, graph_name, doc=""):
        io = {v.name for v in self.inputs + self.outputs}
        info = [helper.make_tensor_value_info(v, self.elem, dims) for v, dims in self.shapes.items() if v not in io]
        graph = helper.make_graph(self.nodes, graph_name, self.inputs, self.outputs, self.inits, value_info=info)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="fuchun-export", doc_string=doc)
        model.ir_version = 9
        return model


def vgg_features(b: Builder, weights: Weights, x, wanted, pooling):
    """Append the preprocessing and VGG layers up to the deepest wanted one; returns {layer: value}."""
    pre = weights.preprocess
    perm = [2, 1, 0] if pre.channel_order == "bgr" else [0, 1, 2]
    # Per-channel affine in RGB order; the BGR reorder is folded exactly into conv1_1's input channels.
    mean_rgb = np.array([pre.mean[perm[c]] for c in range(3)])
    std_rgb = np.array([pre.std[perm[c]] for c in range(3)])
    scale = (pre.scale / std_rgb).reshape(1, 3, 1, 1)
    shift = (-mean_rgb / std_rgb).reshape(1, 3, 1, 1)
    v = b.declare(b.op("Add", [b.declare(b.op("Mul", [x, b.const(scale, "pre_scale")]), [1, 3, "H", "W"]),
                               b.const(shift, "pre_shift")], "pre"), [1, 3, "H", "W"])
    order = layer_names(weights.arch)
    deepest = max(order.index(w) for w in wanted)
    found = {}
    for layer in order[:deepest + 1]:
        # Every activation's symbolic shape, named like the graph inputs of that layer (content_relu4_2 is
        # [1, C, relu4_2_h, relu4_2_w]): onnx_ad's broadcast undo reads them (ad.py).
        dims = [1, layer_info(weights.arch, weights, layer)[0], f"{layer}_h", f"{layer}_w"]
        if layer.startswith("relu"):
            conv = "conv" + layer[4:]
            k = weights.kernels[conv]
            if conv == "conv1_1":
                k = k[:, perm]  # network expects BGR; our input v is RGB
            v = b.op("Conv", [v, b.const(k, conv + "_W"), b.const(weights.biases[conv], conv + "_B")], conv,
                     kernel_shape=[3, 3], pads=[1, 1, 1, 1])
            v = b.op("Relu", [b.declare(v, dims)], layer)
        else:
            if pooling == "max":
                v = b.op("MaxPool", [v], layer, kernel_shape=[2, 2], strides=[2, 2])
            else:
                v = _avg_pool2(b, v)
        b.declare(v, dims)
        if layer in wanted:
            found[layer] = v
    return found


def _avg_pool2(b, v):
    """2x2 average pooling, stride 2, floor mode (as AveragePool). Written as crop + reshape + mean because
    onnx_ad differentiates AveragePool only for a static input shape; this form works for any H and W."""
    for axis in (2, 3):
        extent = b.op("Gather", [b.op("Shape", [v]), b.i64([axis])], axis=0)
        keep = b.op("Mul", [b.op("Div", [extent, b.i64([2])]), b.i64([2])])
        v, _ = b.op("Split", [v, b.op("Concat", [keep, b.op("Sub", [extent, keep])], axis=0)], "crop", n_out=2,
                    axis=axis)
    shape = b.op("Shape", [v])
    half = b.op("Div", [b.op("Gather", [shape, b.i64([2, 3])], axis=0), b.i64([2])])
    h2, w2 = b.op("Split", [half, b.i64([1, 1])], n_out=2, axis=0)
    target = b.op("Concat", [b.op("Gather", [shape, b.i64([0, 1])], axis=0), h2, b.i64([2]), w2, b.i64([2])], axis=0)
    return b.op("ReduceMean", [b.op("Reshape", [v, target])], "pool", axes=[3, 5], keepdims=0)


def exact_hist_layers(weights: Weights, cfg: LossConfig):
    """Histogram layers at full resolution (block 1). Their activations are cheap to compute (the first convolutions
    only) and their matching must be exact: matched from the previous evaluation's activations instead, the
    objective moves under L-BFGS's line search (1.4 evaluations per iteration instead of 1.04, measured). The
    runtime matches them from prelude.onnx before each evaluation; deeper layers from the objective's outputs."""
    return [l for l in cfg.hist_layers if layer_info(weights.arch, weights, l)[1] == 1]


def build_prelude(weights: Weights, cfg: LossConfig, dtype=np.float32):
    """image -> activations of the exactly matched histogram layers (None when there are none)."""
    layers = exact_hist_layers(weights, cfg)
    if not layers:
        return None
    b = Builder(dtype)
    x = b.input("x", [1, 3, "H", "W"])
    feats = vgg_features(b, weights, x, layers, cfg.pooling)
    for layer in layers:
        c, _ = layer_info(weights.arch, weights, layer)
        b.output(feats[layer], f"feat_{layer}", [1, c, f"{layer}_h", f"{layer}_w"])
    return b.model("fuchun_prelude", "image -> activations of the histogram layers matched before each evaluation")


def build_features(weights: Weights, cfg: LossConfig, dtype=np.float32):
    b = Builder(dtype)
    x = b.input("x", [1, 3, "H", "W"])
    feats = vgg_features(b, weights, x, cfg.all_layers(), cfg.pooling)
    for layer in cfg.all_layers():
        c, s = layer_info(weights.arch, weights, layer)
        b.output(feats[layer], f"feat_{layer}", [1, c, f"{layer}_h", f"{layer}_w"])
    return b.model("fuchun_features", "image -> VGG activations used to build style-transfer targets")


# ---- loss pieces -------------------------------------------------------------------------------------

def _mean_square(b, d, scale=1.0, count=None):
    """scale^2 mean(d^2). With `count` (static, the Gram terms' C^2): sum((d scale / sqrt(count))^2), each square
    already divided. Otherwise ((d scale)^2 averaged one axis at a time: the same mean, and the derivative of each
    ReduceMean divides by that axis's extent (<= 1024) instead of the element count (64 h w at relu1_1, past
    float16's 65504 from ~40 px)."""
    if count:
        scaled = b.op("Mul", [d, b.const(scale / np.sqrt(count), "diff_scale")], "scaled_diff")
        if d in b.shapes:
            b.declare(scaled, b.shapes[d])
        return b.op("ReduceSum", [b.op("Mul", [scaled, scaled])], "mse", keepdims=0)
    if scale != 1.0:
        scaled = b.op("Mul", [d, b.const(scale, "diff_scale")], "scaled_diff")
        if d in b.shapes:
            b.declare(scaled, b.shapes[d])
        d = scaled
    v = b.op("Mul", [d, d])
    for axis in reversed(range(len(b.shapes[d]))):
        v = b.op("ReduceMean", [v], "mse", axes=[axis], keepdims=0)
    return v


def _mse(b, a, t, scale=1.0, count=None):
    """scale^2 mean((a - t)^2) (see _mean_square)."""
    d = b.op("Sub", [a, t])
    if a in b.shapes:
        b.declare(d, b.shapes[a])
    return _mean_square(b, d, scale, count)


def _count(b, v, axes):
    """Number of elements along `axes` of v, as a float scalar (no derivative: comes from Shape). The product is
    taken in floating point: TensorRT reduces only floating-point tensors."""
    shape = b.op("Shape", [v])
    dims = b.op("Cast", [b.op("Gather", [shape, b.i64(axes)], axis=0)], to=b.elem)
    return b.op("ReduceProd", [dims], axes=[0], keepdims=0)


def _gram(b, f1, f2, channels):
    """f1 f2^T / n over the n spatial positions, [C, C], as (f1 / sqrt(n)) (f2 / sqrt(n))^T: each factor is scaled
    before the product, so no intermediate is n times larger than the result (F F^T alone reaches ~2e9 at 512 px
    with the hed weights, beyond float16's 65504)."""
    shape = b.i64([channels, -1])
    # 1 / (sqrt(h) sqrt(w)): h w itself passes 65504 at 256 px
    dims = b.op("Cast", [b.op("Gather", [b.op("Shape", [f1]), b.i64([2, 3])], axis=0)], to=b.elem)
    r = b.op("Div", [b.const(1.0), b.op("ReduceProd", [b.op("Sqrt", [dims])], axes=[0], keepdims=0)], "inv_sqrt_n")

    def factor(f):
        flat = b.declare(b.op("Reshape", [f, shape]), [channels, f"{f}_n"])
        return b.declare(b.op("Mul", [flat, r], "scaled"), [channels, f"{f}_n"])

    a = factor(f1)
    c = a if f2 == f1 else factor(f2)
    return b.op("MatMul", [a, b.op("Transpose", [c], perm=[1, 0])], "gram")


def _shifted_pair(b, v, axis, d, stem=None):
    """(v[..., :-d], v[..., d:]) along `axis`, by Split with sizes computed at run time (onnx_ad reverses Split
    into a Concat with zeros for any image size; Slice would need a static shape). Both halves have the extent
    (extent - d) along `axis`: one symbol, declared for the broadcast undo (ad.py). The Splits' outputs are named
    `shift_a{axis}_d{d}_*` unless `stem` names them otherwise: ad.py's shifted-Gram rule finds the objective's pair
    by that name."""
    extent = b.op("Gather", [b.op("Shape", [v]), b.i64([axis])], axis=0)        # [1]
    rest = b.op("Sub", [extent, b.i64([d])])
    stem = stem or f"shift_a{axis}_d{d}"
    head, _ = b.op("Split", [v, b.op("Concat", [rest, b.i64([d])], axis=0)], stem, n_out=2, axis=axis)
    _, tail = b.op("Split", [v, b.op("Concat", [b.i64([d]), rest], axis=0)], stem, n_out=2, axis=axis)
    if v in b.shapes:
        dims = list(b.shapes[v])
        dims[axis] = f"{dims[axis]}_less_{d}"
        b.declare(head, dims)
        b.declare(tail, dims)
    return head, tail


def _weighted_sum(b, losses, weights_input, per_layer=None, term=None):
    """sum_l w[l] * loss[l] with w a graph input of shape [L]; 0 when there are no layers. With `per_layer` (a dict),
    the weighted per-layer values w[l] * loss[l] ([L]) are recorded under `term` (outputs `layers_<term>`)."""
    if not losses:
        return b.const(0.0, "zero")
    stacked = b.op("Concat", [b.op("Unsqueeze", [l, b.i64([0])]) for l in losses], axis=0)
    weighted = b.op("Mul", [stacked, weights_input])
    if per_layer is not None:
        per_layer[term] = (weighted, len(losses))
    return b.op("ReduceSum", [weighted], keepdims=0)


def build_loss(weights: Weights, cfg: LossConfig, dtype=np.float32):
    """The forward loss graph: x + targets + weights -> total and each term. Input/output names are the
    contract with the Rust runtime (see manifest.py)."""
    b = Builder(dtype)
    arch = weights.arch
    x = b.input("x", [1, 3, "H", "W"])
    feats = vgg_features(b, weights, x, cfg.all_layers(), cfg.pooling)
    info = {name: layer_info(arch, weights, name) for name in cfg.all_layers()}
    terms = {}
    per_layer = {}

    losses = []
    for layer in cfg.content_layers:
        c = info[layer][0]
        t = b.input(f"content_{layer}", [1, c, f"{layer}_h", f"{layer}_w"])
        losses.append(_mse(b, feats[layer], t, DIFF_SCALE["content"]))
    w_content = b.input("content_layer_weights", [len(cfg.content_layers)])
    terms["content"] = _weighted_sum(b, losses, w_content, per_layer, "content")

    losses = []
    for layer in cfg.style_layers:
        c = info[layer][0]
        t = b.input(f"gram_{layer}", [c, c])
        losses.append(_mse(b, _gram(b, feats[layer], feats[layer], c), t, DIFF_SCALE["style"], c * c))
    w_style = b.input("style_layer_weights", [len(cfg.style_layers)])
    terms["style"] = _weighted_sum(b, losses, w_style, per_layer, "style")

    losses = []
    for layer, d in cfg.shift_layers.items():
        c, f = info[layer][0], feats[layer]
        th = b.input(f"shift_h_{layer}", [c, c])
        tv = b.input(f"shift_v_{layer}", [c, c])
        gh = _gram(b, *_shifted_pair(b, f, 3, d), c)
        gv = _gram(b, *_shifted_pair(b, f, 2, d), c)
        both = b.op("Add", [_mse(b, gh, th, DIFF_SCALE["shift"], c * c), _mse(b, gv, tv, DIFF_SCALE["shift"], c * c)])
        losses.append(b.op("Mul", [both, b.const(0.5)]))
    if cfg.shift_layers:
        w_shift = b.input("shift_layer_weights", [len(cfg.shift_layers)])
        terms["shift"] = _weighted_sum(b, losses, w_shift, per_layer, "shift")
    else:
        terms["shift"] = b.const(0.0, "zero")

    losses = []
    for layer in cfg.hist_layers:
        c = info[layer][0]
        # The histogram-matched activations come in as a target: the runtime computes them from this graph's feat_
        # outputs (a radix sort per channel, src/transfer/histmatch.rs), which is much cheaper than TopK in the
        # graph (27 % of an evaluation at 512 px) and lets it choose how often to re-sort.
        m = b.input(f"hist_target_{layer}", [1, c, f"{layer}_h", f"{layer}_w"])
        losses.append(_mse(b, feats[layer], m, DIFF_SCALE["hist"]))
    if cfg.hist_layers:
        w_hist = b.input("hist_layer_weights", [len(cfg.hist_layers)])
        terms["hist"] = _weighted_sum(b, losses, w_hist, per_layer, "hist")
    else:
        terms["hist"] = b.const(0.0, "zero")

    left, right = _shifted_pair(b, x, 3, 1)
    top, bottom = _shifted_pair(b, x, 2, 1)
    dx = b.declare(b.op("Sub", [right, left]), b.shapes[right])
    dy = b.declare(b.op("Sub", [bottom, top]), b.shapes[bottom])
    terms["tv"] = b.op("Add", [_mean_square(b, dx, DIFF_SCALE["tv"]), _mean_square(b, dy, DIFF_SCALE["tv"])], "tv")

    # Short-term temporal consistency (Ruder, Dosovitskiy & Brox 2016): the previous stylised frame of a camera and a
    # per-pixel weight map (0 where the scene changed), mean over [1,3,H,W] of m (x - prev)^2. For a single image
    # the runtime feeds zeros and a term weight of 0.
    prev = b.input("temporal_prev", [1, 3, "H", "W"])
    m = b.input("temporal_weights", [1, 1, "H", "W"])
    d = b.declare(b.op("Sub", [x, prev]), [1, 3, "H", "W"])
    sd = b.declare(b.op("Mul", [d, b.const(DIFF_SCALE["temporal"], "diff_scale")], "scaled_diff"), [1, 3, "H", "W"])
    v = b.declare(b.op("Mul", [b.declare(b.op("Mul", [sd, sd]), [1, 3, "H", "W"]), m], "weighted_sq"),
                  [1, 3, "H", "W"])
    for axis in (3, 2, 1, 0):
        v = b.op("ReduceMean", [v], "temporal", axes=[axis], keepdims=0)
    terms["temporal"] = v

    # terms[t] is loss_t * k_t, k_t = DIFF_SCALE[t]^2 (1 for the others).
    k = np.array([DIFF_SCALE.get(t, 1.0) ** 2 for t in TERMS])
    tw = b.input("term_weights", [len(TERMS)])
    stacked = b.op("Concat", [b.op("Unsqueeze", [terms[t], b.i64([0])]) for t in TERMS], axis=0)
    # the objective onnx_ad differentiates: sum_t tw_t (OBJECTIVE_SCALE / k_t) terms[t] = OBJECTIVE_SCALE * total
    factors = b.op("Mul", [tw, b.const(OBJECTIVE_SCALE / k, "objective_factors")])
    scaled = b.op("ReduceSum", [b.op("Mul", [stacked, factors])], "total_scaled", keepdims=0)
    b.output(scaled, "total_scaled", [])
    # the outputs, in float32: loss_t = terms[t] / k_t, total = sum_t tw_t loss_t
    unscaled = b.op("Mul", [stacked, b.const(1.0 / k, "fp32_unscale")], "fp32_losses")
    total = b.op("ReduceSum", [b.op("Mul", [unscaled, tw], "fp32_weighted")], "fp32_total", keepdims=0)
    b.output(total, "total", [])
    for i, t in enumerate(TERMS):
        b.output(b.op("Gather", [unscaled, b.i64(i)], f"fp32_loss_{t}", axis=0), f"loss_{t}", [])
    # each layer's weighted share of its term (sums to loss_t), for traces and the layer-balance checks
    for t, (weighted, n) in per_layer.items():
        k_t = DIFF_SCALE.get(t, 1.0) ** 2
        b.output(b.op("Mul", [weighted, b.const(1.0 / k_t, "fp32_layer_unscale")], f"fp32_layers_{t}"),
                 f"layers_{t}", [n])
    exact = exact_hist_layers(weights, cfg)
    for layer in cfg.hist_layers:
        if layer not in exact:
            b.output(feats[layer], f"feat_{layer}", [1, info[layer][0], f"{layer}_h", f"{layer}_w"])
    return b.model("fuchun_loss", "style-transfer loss: content + style (Gram) + shift (Berger-Memisevic) "
                                  "+ hist (Risser) + tv + temporal (Ruder)")
