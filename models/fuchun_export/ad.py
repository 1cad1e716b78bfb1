"""onnx_ad, adapted to image graphs of dynamic height and width, and to GPU back ends (TensorRT, ONNX Runtime CUDA).

onnx_ad's reverse rule for Conv sets ConvTranspose's `output_shape` from the input's static shape, so it refuses a
graph whose H and W are symbolic. For a "same" convolution (stride 1, dilation 1, pads (k-1)/2 on each side, as
in every VGG layer) the transposed convolution's pads alone give exactly the input's size, so `output_shape` is not
needed. This module registers a Conv rule that emits that form in the dynamic case and defers to onnx_ad's own
rule otherwise; everything else (the walk, the other rules, the seed handling) is onnx_ad's.

Two more adaptations make the gradient graph one TensorRT and ONNX Runtime's CUDA provider run whole:

* Broadcast undo with constant axes. Where an operand's shape is symbolic, onnx_ad sums the incoming derivative over
  `Squeeze(NonZero(Equal(Shape(operand), 1)))`: axes known only at run time, which TensorRT refuses and which leave
  the ReduceSum's output without a rank under ONNX shape inference. Here the axes are decided from the symbolic
  shapes the exporter declares (graph.py writes every activation's dims as value_info, named like the graph's
  inputs: `relu4_2_h`, ...): an axis is summed when the operand lacks it or its extent is the constant 1; an axis
  of symbolic extent is left alone when every other operand of the node has, on that axis, the same symbol, the
  constant 1, or no axis at all: then the result has the operand's extent there, whatever its value at run time
  (1 included), and a sum over it would be the identity. Anything else raises instead of guessing.
* MaxPool without `Indices` and without ScatterND (see `_max_pool_reverse`).
"""
import re

import numpy as np
from onnx import TensorProto, helper
from onnx_ad import rules as _rules
from onnx_ad._build import Context as _Context, UnsupportedOperator
from onnx_ad._passes import Pairs

_original_conv_reverse = _rules.REVERSE["Conv"]


def _same_conv_reverse(ctx, node, grads):
    x, w, y = node.input[0], node.input[1], node.output[0]
    if ctx.shapes.static(x) is not None or not ctx.asked_for(x):
        return _original_conv_reverse(ctx, node, grads)
    attrs, spatial = _rules._conv_attributes(ctx, node)
    kernel = ctx.shapes.static(w)
    if kernel is None:
        raise UnsupportedOperator("Conv needs a declared weight shape in reverse mode")
    same = (attrs["group"] == 1 and all(s == 1 for s in attrs["strides"])
            and all(d == 1 for d in attrs["dilations"])
            and all(attrs["pads"][i] == attrs["pads"][i + spatial] == (kernel[2 + i] - 1) // 2
                    and kernel[2 + i] % 2 == 1 for i in range(spatial)))
    if not same:
        return _original_conv_reverse(ctx, node, grads)
    if ctx.asked_for(w) or (len(node.input) > 2 and node.input[2] and ctx.asked_for(node.input[2])):
        raise UnsupportedOperator("fuchun differentiates images only: Conv weights must be constants")
    seeded = ctx.full(grads[0], y)
    folded = _rules._fold_seed_into_batch(ctx, seeded, y)
    transposed = ctx.b.op("ConvTranspose", [folded, w], stem="a_conv", pads=attrs["pads"],
                          strides=attrs["strides"], dilations=attrs["dilations"], group=1)
    adj_x = _rules._unfold_batch_into_seed(ctx, transposed, x, ctx.rank(x))
    return [adj_x] + [None] * (len(node.input) - 1)


_rules.REVERSE["Conv"] = _same_conv_reverse


# ---- broadcast undo with constant axes ----------------------------------------------------------------------------

_ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Pow", "Sum", "Max", "Min", "Mean", "Where", "PRelu"}
_state = {"declared": None, "node": None, "producers": None, "inputs": None}
_original_unbroadcast = _Context.unbroadcast


def _declared_shapes(model):
    """value -> dims (ints, dim names, or None where unknown) from the model's inputs, outputs, value_info and
    initializers."""
    out = {t.name: list(t.dims) for t in model.graph.initializer}
    for v in list(model.graph.input) + list(model.graph.output) + list(model.graph.value_info):
        t = v.type.tensor_type
        if t.HasField("shape"):
            out[v.name] = [d.dim_value if d.WhichOneof("value") == "dim_value" else (d.dim_param or None)
                           for d in t.shape.dim]
    return out


def _dims(ctx, name):
    declared = (_state["declared"] or {}).get(name)
    if declared is not None:
        return declared
    shape = ctx.shapes.shape(name)
    return None if shape is None else list(shape)


def _same_extent(ctx, node, target, axis_from_end, dim):
    """Whether, for every run-time size, the result of `node` has the extent of `target` along the axis
    `axis_from_end` (counted from the last axis, 1 = last): then summing over it is the identity."""
    if node is None:
        return False
    if node.op_type == "MatMul":
        # a 2-D product does not broadcast: each operand's contribution has that operand's shape exactly
        return all(len(_dims(ctx, i) or []) == 2 for i in node.input[:2])
    if node.op_type not in _ELEMENTWISE or dim is None:
        return False
    for other in node.input:
        if not other or other == target:
            continue
        dims = _dims(ctx, other)
        if dims is None:
            return False
        if axis_from_end > len(dims):
            continue                          # `other` lacks the axis: it is broadcast along it
        d = dims[len(dims) - axis_from_end]
        if d != 1 and d != dim:
            return False
    return True


def _unbroadcast(self, value, source_rank, target):
    if self.shapes.static(target) is not None:
        return _original_unbroadcast(self, value, source_rank, target)
    dims = _dims(self, target)
    if dims is None:
        raise UnsupportedOperator(f"the rank of '{target}' is unknown: declare its shape (graph.py)")
    lead = source_rank - len(dims)
    if lead < 0:
        raise UnsupportedOperator(f"'{target}' has rank {len(dims)}, more than the {source_rank} it feeds")
    axes = list(range(lead))
    for i, d in enumerate(dims):
        if isinstance(d, int) and d == 1:
            axes.append(lead + i)
        elif isinstance(d, int) and d > 1:
            continue
        elif not _same_extent(self, _state["node"], target, len(dims) - i, d):
            node = _state["node"]
            raise UnsupportedOperator(
                f"cannot prove that axis {i} of '{target}' (extent {d!r}) is never broadcast in "
                f"{node.op_type if node is not None else '?'} '{node.output[0] if node is not None else '?'}': "
                "declare the symbolic shapes of its operands (graph.py)")
    if not axes:
        return value
    reduced = self.reduce_sum(value, axes, keepdims=1)
    if lead == 0:
        return reduced                        # keepdims: already shape(target) ++ [seed]
    return self.squeeze(reduced, list(range(lead)))


# ---- max pooling without Indices and ScatterND --------------------------------------------------------------------

def _attr(node, name, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


_original_max_pool_reverse = _rules.REVERSE["MaxPool"]


def _max_pool_reverse(ctx, node, grads):
    """2x2 max pooling, stride 2, floor mode (VGG's): the input gradient routes each window's output gradient to the
    element MaxPool's `Indices` would name, the first maximum of the window in row-major order (ONNX Runtime's
    kernels and onnx.reference both take a later element only if it is strictly greater). Without Indices: the
    even-sized crop of x is taken apart into its four window positions (0,0), (0,1), (1,0), (1,1) by SpaceToDepth
    and Split, four [N, C, h, w] planes, each compared with the pooled y; the first equal one gets the gradient:
        m00 = e00, m01 = e01 (1 - e00), m10 = e10 (1 - e00)(1 - e01), m11 = e11 (1 - e00)(1 - e01)(1 - e10),
    e = (x == y) as 0/1; the four routed planes go back together by Concat and DepthToSpace (DCR: the inverse of
    SpaceToDepth). Every operation is on operands of one shape: in the earlier [N, C, h, 2, w, 2] form the window
    axes of extent 2 against 1 took ONNX Runtime's per-element broadcasting path (docs/performance.md). The dropped
    last row/column of an odd size gets zero (Pad). Exact: the same element gets the same gradient as onnx_ad's
    MaxPool(Indices) + ScatterND(add) (tests/test_gpu_graph.py, with ties)."""
    k = list(_attr(node, "kernel_shape", []))
    ok = (k == [2, 2] and list(_attr(node, "strides", [1, 1])) == [2, 2]
          and not any(_attr(node, "pads", [0, 0, 0, 0])) and list(_attr(node, "dilations", [1, 1])) == [1, 1]
          and not _attr(node, "ceil_mode", 0) and _attr(node, "auto_pad", "NOTSET") in ("NOTSET", b"NOTSET", "VALID",
                                                                                        b"VALID")
          and (len(node.output) == 1 or not node.output[1]) and ctx.rank(node.input[0]) == 4)
    if not ok:
        return _original_max_pool_reverse(ctx, node, grads)
    b = ctx.b
    x, y = node.input[0], node.output[0]
    dtype = ctx.dtype(x)
    ys = ctx.shape_of(y)                                                   # [N, C, h, w]
    crop = b.op("Slice", [x, b.ints([0, 0]), b.op("Mul", [ctx.slice(ys, [2], [4], [0]), b.ints([2])]),
                          b.ints([2, 3])], stem="mp_crop")                  # [N, C, 2h, 2w]
    planes = b.op("Split", [b.op("SpaceToDepth", [crop], blocksize=2, stem="mp_planes")], outputs=4, axis=1,
                  stem="mp_plane")                                         # x[:, :, i::2, j::2], (i, j) row-major
    e00, e01, e10, e11 = (b.op("Equal", [p, y], stem="mp_e") for p in planes)         # bool: a quarter of float's
    free0 = b.op("Not", [e00])
    free1 = b.op("And", [free0, b.op("Not", [e01])])
    masks = [e00, b.op("And", [e01, free0]), b.op("And", [e10, free1]),
             b.op("And", [e11, b.op("And", [free1, b.op("Not", [e10])])])]
    masks = [b.op("Cast", [m], to=dtype, stem="mp_m") for m in masks]
    front = _rules._seed_front(ctx, ctx.full(grads[0], y), 4)              # [S, N, C, h, w]
    routed = b.op("Concat", [b.op("Mul", [front, m], stem="mp_routed") for m in masks], axis=2)   # [S, N, 4C, h, w]
    spread = b.op("DepthToSpace", [_rules._merge_leading(ctx, routed)], blocksize=2, mode="DCR",
                  stem="mp_spread")                                        # [S N, C, 2h, 2w]
    flat = _rules._unfold_batch_into_seed(ctx, spread, crop, 4)            # [N, C, 2h, 2w, S]
    xs = ctx.shape_of(x)
    rest = b.op("Sub", [ctx.slice(xs, [2], [4], [0]), b.op("Mul", [ctx.slice(ys, [2], [4], [0]), b.ints([2])])])
    pads = b.op("Concat", [b.ints([0] * 5), b.ints([0, 0]), rest, b.ints([0])], axis=0, stem="mp_pads")
    return [b.op("Pad", [flat, pads], stem="a_maxpool")]


# ---- Gram matrices: the gradient from the unscaled features -----------------------------------------------------

_original_matmul_reverse = _rules.REVERSE["MatMul"]


def _gram_parts(node):
    """For a Gram product built by graph._gram, MatMul(Mul(flat1, r), Transpose(Mul(flat2, r))), the names
    (flat1, flat2, r); None for any other MatMul."""
    producers = _state["producers"] or {}
    if not re.fullmatch(r"gram_\d+", node.output[0]):
        return None
    left, right = producers.get(node.input[0]), producers.get(node.input[1])
    if right is None or right.op_type != "Transpose" or list(_attr(right, "perm", [])) != [1, 0]:
        return None
    other = producers.get(right.input[0])
    parts = []
    for p in (left, other):
        if p is None or p.op_type != "Mul" or not p.output[0].startswith("scaled_"):
            return None
        parts.append(p.input)
    (flat1, r1), (flat2, r2) = parts
    return (flat1, flat2, r1) if r1 == r2 else None


def _gram_reverse(ctx, node, grads):
    """G = (F1 r)(F2 r)^T with r = 1/sqrt(n) (graph._gram: the factors are scaled for float16's range). onnx_ad's
    chain through MatMul, Transpose and Mul reads the scaled factors in the backward pass, which keeps both alive
    from the forward pass (a copy of every style and shift layer's features) and moves [n, C] transposes around.
    Here the contributions go to the unscaled F1 and F2 directly:
        dF1 = ((r dG) F2) r,   dF2 = ((r dG)^T F1) r,   and for F1 = F2: dF = ((r (dG + dG^T)) F) r.
    One r on the [C, C] side and one on the result keep every value where onnx_ad's graph has it ((r dG) F2 is its
    dG (F2 r)); r^2 on the small matrix alone would put it below float16's normal range. Exact
    (tests/test_gradients.py)."""
    parts = _gram_parts(node)
    if parts is None:
        return _original_matmul_reverse(ctx, node, grads)
    flat1, flat2, r = parts
    b = ctx.b
    front = _rules._seed_front(ctx, ctx.full(grads[0], node.output[0]), 2)          # [S, C, C]

    def flipped(m):
        return b.op("Transpose", [m], perm=[0, 2, 1], stem="gram_dgt")

    def product(m, f):
        return _rules._seed_back(ctx, _gram_product(b, m, f, r), 2)                # [C, n, S]

    if flat1 == flat2:
        return Pairs([(flat1, product(b.op("Add", [front, flipped(front)], stem="gram_sym"), flat1))])
    head, tail = _shift_half(flat1), _shift_half(flat2)
    if head and tail and head[:3] == tail[:3] and head[3] and not tail[3]:
        return _shifted_gram_reverse(ctx, front, r, *head[:3], head[4])
    return Pairs([(flat1, product(front, flat2)), (flat2, product(flipped(front), flat1))])


def _shift_half(flat):
    """For a factor of a shifted Gram, `Reshape(half)` with `half` an output of one of graph._shifted_pair's Splits
    (named `shift_a{axis}_d{d}_*`): (features, axis, d, is the head v[..., :-d], the Reshape's target); else None."""
    producers = _state["producers"] or {}
    reshape = producers.get(flat)
    split = producers.get(reshape.input[0]) if reshape is not None and reshape.op_type == "Reshape" else None
    if split is None or split.op_type != "Split" or len(split.output) != 2:
        return None
    m = re.fullmatch(r"shift_a(\d)_d(\d+)_\d+", split.output[0])
    if m is None or _attr(split, "axis", 0) != int(m.group(1)):
        return None
    return split.input[0], int(m.group(1)), int(m.group(2)), reshape.input[0] == split.output[0], reshape.input[1]


def _shifted_gram_reverse(ctx, front, r, v, axis, d, flat_shape):
    """The shifted Gram G = (H r)(T r)^T of v's halves H = v[..., :-d] and T = v[..., d:] along `axis` (Berger &
    Memisevic), with the derivative `_gram_reverse` gives: dH = ((r dG) T) r, dT = ((r dG^T) H) r. The halves the
    forward pass made are not read here: each is taken from v again (Slice, in the backward pass) and the two
    derivatives go to v itself, zero-padded on the side each half lacks. onnx_ad's way (the Split's outputs read
    by the products and by the Reshape's and Split's reverses) kept four copies of every shift layer alive from the
    forward pass to the backward pass: 218 MB at 512x512, live at the peak (docs/performance.md). v is kept anyway
    (its own Gram). Same values (tests/test_gradients.py)."""
    b = ctx.b
    big = np.iinfo(np.int64).max

    def again(head):
        starts, ends = ([0], [-d]) if head else ([d], [big])
        half = b.op("Slice", [v, b.ints(starts), b.ints(ends), b.ints([axis])], stem="shift_again")
        return b.op("Reshape", [half, flat_shape], stem="shift_again_flat")

    # [S, C, n'] -> [S N, C, h', w'] (N = 1, as graph._gram's [C, -1] factors), then padded back to v's extent
    lacks = [d if a == axis else 0 for a in range(4)]
    less = b.op("Sub", [ctx.shape_of(v), b.ints(lacks)], stem="shift_less")
    target = b.op("Concat", [b.ints([-1]), ctx.slice(less, [1], [4], [0])], axis=0, stem="shift_target")

    def placed(m, pads):
        return b.op("Pad", [b.op("Reshape", [m, target], stem="shift_grad"), b.ints(pads)], stem="shift_pad")

    d_head = placed(_gram_product(b, front, again(False), r), [0] * 4 + lacks)    # the head lacks v's end
    flipped = b.op("Transpose", [front], perm=[0, 2, 1], stem="gram_dgt")
    d_tail = placed(_gram_product(b, flipped, again(True), r), lacks + [0] * 4)   # the tail its start
    both = b.op("Add", [d_head, d_tail], stem="shift_dv")
    return Pairs([(v, _rules._unfold_batch_into_seed(ctx, both, v, 4))])


def _gram_product(b, m, f, r):
    """((r m) f) r: a Gram product's derivative [S, C, n] from the seed-first adjoint m [S, C, C], factor f [C, n]."""
    scaled = b.op("MatMul", [b.op("Mul", [m, r], stem="gram_dg"), f], stem="gram_da")
    return b.op("Mul", [scaled, r], stem="gram_df")


# ---- mean squares: one pass ------------------------------------------------------------------------------------

_original_reduce_mean_reverse = _rules.REVERSE["ReduceMean"]


def _mean_square_parts(node):
    """For mean(d^2) built by graph._mean_square (Mul(d, d), then ReduceMean one axis at a time, last axis first,
    down to a scalar): (d, the means from the innermost out); None for any other ReduceMean."""
    producers = _state["producers"] or {}
    means = []
    v = node
    while v is not None and v.op_type == "ReduceMean" and v.output[0].startswith("mse_"):
        axes = list(_attr(v, "axes", []))
        if _attr(v, "keepdims", 1) != 0 or len(axes) != 1 or len(v.input) != 1:
            return None
        means.append(v)
        v = producers.get(v.input[0])
    if not means or v is None or v.op_type != "Mul" or v.input[0] != v.input[1]:
        return None
    # the axes, innermost mean first, must be rank-1, rank-2, ..., 0 of d: the whole tensor, down to a scalar
    if [list(_attr(m, "axes"))[0] for m in reversed(means)] != list(range(len(means) - 1, -1, -1)):
        return None
    return v.input[0], list(reversed(means))


def _mean_square_reverse(ctx, node, grads):
    """mean(d^2), taken one axis at a time (graph._mean_square): onnx_ad expands the scalar adjoint back through
    every ReduceMean (a full-size Expand and Div for the last one) and then through the square (two products, a
    broadcast undo each, and their sum): five or more passes over a tensor as large as relu1_1. Its derivative is
    2 d (g / n_0 / n_1 / ... ), one pass; the scalar is divided by one extent at a time, as onnx_ad's chain does,
    so no intermediate leaves float16's range that the chain's did not. Exact (tests/test_gradients.py)."""
    parts = _mean_square_parts(node)
    if parts is None:
        return _original_reduce_mean_reverse(ctx, node, grads)
    d, means = parts
    b = ctx.b
    coef = ctx.full(grads[0], node.output[0])                                       # [S]
    dtype = ctx.dtype(d)
    again = _difference_again(ctx, d)
    shape = ctx.shape_of(again[1] if again else d)
    for m in reversed(means):                                                       # outermost (axis 0) first
        axis = list(_attr(m, "axes"))[0]
        extent = b.op("Cast", [ctx.slice(shape, [axis], [axis + 1], [0])], to=dtype, stem="ms_extent")
        coef = b.op("Div", [coef, extent], stem="ms_coef")
    coef = b.op("Mul", [coef, ctx.constant(2.0, dtype)], stem="ms_twice")
    return Pairs([(d, b.op("Mul", [ctx.lift(again[0] if again else d), coef], stem="ms_grad"))])


def _difference_again(ctx, d):
    """For d = (a - t) s or d = a - t with t a graph input (a layer's features against a target: the content and
    histogram terms), the same values made again for the backward pass, and a: (t - a)(-s) is (a - t) s bit for
    bit (negation is exact and rounding symmetric; only a zero's sign may differ). Read there instead of d, d dies
    with the forward pass; a and t are kept anyway (a by its other terms, t is an input): 64 MB fewer at the peak
    for the histogram term at relu1_1 at 512x512 (docs/performance.md). The operands are swapped, not repeated,
    so ONNX Runtime's common-subexpression elimination cannot merge the two back into one. None otherwise."""
    producers, consts = _state["producers"] or {}, ctx.values                   # constants: onnx_ad's table
    p = producers.get(d)
    scale = 1.0
    if p is not None and p.op_type == "Mul" and p.input[1] in consts and consts[p.input[1]].size == 1:
        scale = float(consts[p.input[1]].reshape(()))
        p = producers.get(p.input[0])
    if p is None or p.op_type != "Sub" or p.input[1] not in _state["inputs"]:
        return None
    a, t = p.input
    declared = _state["declared"] or {}
    if declared.get(a) is None or declared.get(a) != declared.get(t):
        return None
    b = ctx.b
    swapped = b.op("Sub", [t, a], stem="diff_again")
    return b.op("Mul", [swapped, ctx.constant(-scale, ctx.dtype(d))], stem="diff_again"), a


def _tracking(rule):
    def tracked(ctx, node, grads):
        outer = _state["node"]
        _state["node"] = node
        try:
            return rule(ctx, node, grads)
        finally:
            _state["node"] = outer
    tracked.fuchun_tracked = True
    return tracked


def reverse(model, fused=True, **kwargs):
    """onnx_ad.reverse with the rules above; the model's declared symbolic shapes decide the broadcast axes.
    `fused=False` leaves the Gram products and mean squares to onnx_ad's op-by-op chain (tests compare the two)."""
    from onnx_ad import reverse as _reverse
    saved = dict(_rules.REVERSE)
    _state["declared"] = _declared_shapes(model)
    _Context.unbroadcast = _unbroadcast
    _rules.REVERSE["MaxPool"] = _max_pool_reverse
    if fused:
        _rules.REVERSE["MatMul"] = _gram_reverse
        _rules.REVERSE["ReduceMean"] = _mean_square_reverse
    _state["producers"] = {o: n for n in model.graph.node for o in n.output}
    _state["inputs"] = {i.name for i in model.graph.input}
    for op, rule in dict(_rules.REVERSE).items():
        if not getattr(rule, "fuchun_tracked", False):
            _rules.REVERSE[op] = _tracking(rule)
    try:
        return _reverse(model, **kwargs)
    finally:
        _rules.REVERSE.clear()
        _rules.REVERSE.update(saved)
        _Context.unbroadcast = _original_unbroadcast
        _state["declared"] = None
        _state["producers"] = None
        _state["inputs"] = None
