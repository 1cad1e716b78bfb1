"""Graph surgery on the gradient graph after onnx_ad.reverse, exact rewrites only (the tests compare the result with
finite differences and with the float64 reference).

ConvTranspose → Conv: the input gradient of a stride-1 convolution with constant weights W is a convolution of the
output gradient with W' = W with input and output channels swapped and the kernel flipped, padded by k-1-p.
ONNX Runtime's Conv kernels (im2col + SGEMM, NCHWc) are much faster than its ConvTranspose, and the rewrite drops
ConvTranspose's large column buffer (see docs/performance.md for the measurements).
"""
import numpy as np
import onnx
from onnx import helper, numpy_helper


def _attr(node, name, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _int64_initializer(g, cache, name, values):
    """The name of an int64 initializer holding `values`, added to the graph once per `name`."""
    if name not in cache:
        g.initializer.append(numpy_helper.from_array(np.array(values, dtype=np.int64), name))
        cache[name] = name
    return name


def static_ranks(model):
    """value -> rank, from the initializers and ONNX shape inference (values of unknown rank are absent)."""
    from onnx import shape_inference
    inferred = shape_inference.infer_shapes(model, data_prop=True).graph
    rank = {t.name: len(t.dims) for t in model.graph.initializer}
    for v in list(inferred.input) + list(inferred.value_info) + list(inferred.output):
        t = v.type.tensor_type
        if t.HasField("shape"):
            rank[v.name] = len(t.shape.dim)
    return rank


def conv_transpose_to_conv(model):
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    converted = 0
    for i, node in enumerate(g.node):
        if node.op_type != "ConvTranspose" or len(node.input) < 2 or node.input[1] not in inits:
            continue
        w = numpy_helper.to_array(inits[node.input[1]])
        if w.ndim != 4:
            continue
        k = list(w.shape[2:])
        strides = list(_attr(node, "strides", [1, 1]))
        dilations = list(_attr(node, "dilations", [1, 1]))
        pads = list(_attr(node, "pads", [0, 0, 0, 0]))
        if (strides != [1, 1] or dilations != [1, 1] or _attr(node, "group", 1) != 1
                or _attr(node, "output_shape") is not None or _attr(node, "output_padding") is not None
                or _attr(node, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET")):
            continue
        flipped = np.ascontiguousarray(np.flip(w.transpose(1, 0, 2, 3), axis=(2, 3)))
        name = node.input[1] + "_as_conv"
        if name not in inits:
            t = numpy_helper.from_array(flipped.astype(w.dtype), name)
            g.initializer.append(t)
            inits[name] = t
        new_pads = [k[0] - 1 - pads[0], k[1] - 1 - pads[1], k[0] - 1 - pads[2], k[1] - 1 - pads[3]]
        if min(new_pads) < 0:
            continue
        inputs = [node.input[0], name] + list(node.input[2:3])
        conv = helper.make_node("Conv", inputs, list(node.output), name=node.name or f"grad_conv_{i}",
                                kernel_shape=k, pads=new_pads, strides=[1, 1], dilations=[1, 1])
        g.node[i].CopyFrom(conv)
        converted += 1
    # weights only a ConvTranspose used are now unused
    used = {x for n in g.node for x in n.input}
    keep = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    return converted


def seed_axis_transposes(model):
    """onnx_ad moves the seed axis of rank-5 gradient tensors (NCHW + seed) to the front and back with Transposes,
    which copy whole activation-sized tensors. The objective's seed count is pinned to 1 (export.py), so moving
    that axis is a reshape: Squeeze + Unsqueeze, which ONNX Runtime does without copying. A seed axis that is not
    of size 1 would make Squeeze fail loudly at run time, never silently differ."""
    g = model.graph
    out = []
    count = 0
    axes = {}

    def const(vals):
        return _int64_initializer(g, axes, f"seed_axes_{'_'.join(map(str, vals))}", vals)

    for node in g.node:
        perm = list(_attr(node, "perm", []) or []) if node.op_type == "Transpose" else []
        if len(perm) == 5 and perm == [4, 0, 1, 2, 3]:
            src, dst = 4, 0
        elif len(perm) == 5 and perm == [1, 2, 3, 4, 0]:
            src, dst = 0, 4
        else:
            out.append(node)
            continue
        mid = node.output[0] + "_seedless"
        out.append(helper.make_node("Squeeze", [node.input[0], const([src])], [mid]))
        out.append(helper.make_node("Unsqueeze", [mid, const([dst])], list(node.output)))
        count += 1
    del g.node[:]
    g.node.extend(out)
    return count


def relu_masks_from_outputs(model):
    """onnx_ad's ReLU derivative is the mask `pre > 0` of the ReLU's input, and it reads the input's shape, so the
    pre-activation tensor of every layer stays alive until the backward pass reaches it, beside the activation, and
    ONNX Runtime cannot fuse Conv with Relu (the Conv output has other readers). `relu(pre) > 0` is the same mask
    and `relu(pre)` has the same shape, so those readers are moved to the ReLU's output: one tensor per layer is
    kept instead of two, and Conv+Relu fuse. Exact (same values bit for bit)."""
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    readers = {}
    for n in g.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)

    def zero_constant(name):
        return name in inits and not np.any(numpy_helper.to_array(inits[name]))

    moved = 0
    for relu in [n for n in g.node if n.op_type == "Relu"]:
        pre, post = relu.input[0], relu.output[0]
        others = [n for n in readers.get(pre, []) if n is not relu]
        movable = all((n.op_type == "Shape" and len(n.input) == 1) or
                      (n.op_type == "Greater" and n.input[0] == pre and zero_constant(n.input[1])) for n in others)
        if not others or not movable or pre in {o.name for o in g.output}:
            continue
        for n in others:
            n.input[0] = post
        moved += 1
    return moved


# Numpy-style broadcasting operators: an operand of lower rank is aligned to the right.
BROADCASTING = {"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Where", "Equal", "Greater", "Less",
                "GreaterOrEqual", "LessOrEqual", "And", "Or", "Xor", "PRelu", "Mod", "BitShift"}


def align_broadcast_ranks(model):
    """Give every operand of a broadcasting operator the rank of the largest (Unsqueeze with leading axes, a view).
    ONNX Runtime's CPU kernels take a slow per-element path when the operands' ranks differ and the innermost axis
    of the result has extent 1 — the gradient's trailing seed axis: a `[1, 64, 256, 256, 1]` tensor times a scalar
    or a `[1]` took 29 ms, times a `[1, 1, 1, 1, 1]` 2.7 ms (docs/performance.md). Numpy broadcasting prepends the
    same axes, so the values are the same bit for bit. Ranks from ONNX shape inference; an operand of unknown rank
    leaves its node alone."""
    g = model.graph
    rank = static_ranks(model)
    axes, lifted, out, count = {}, {}, [], 0

    def const(k):
        return _int64_initializer(g, axes, f"lead_axes_{k}", list(range(k)))

    for node in g.node:
        ins = [i for i in node.input if i]
        if node.op_type in BROADCASTING and len(ins) >= 2 and all(i in rank for i in ins):
            top = max(rank[i] for i in ins)
            for j, name in enumerate(node.input):
                if name and rank[name] < top:
                    key = (name, top)
                    if key not in lifted:
                        lifted[key] = f"{name}_rank{top}"
                        out.append(helper.make_node("Unsqueeze", [name, const(top - rank[name])], [lifted[key]]))
                    node.input[j] = lifted[key]
                    count += 1
        out.append(node)
    del g.node[:]
    g.node.extend(out)
    return count
