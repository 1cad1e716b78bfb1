"""The objective's gradient graph: the loss graph differentiated by onnx_ad (ad.py), seeded, scaled back and cleaned
(dead nodes, unused initializers, topological order); used for the whole-image objective (export.py) and the tile
graphs (tile.py) alike."""
from __future__ import annotations

import numpy as np
from onnx import helper, numpy_helper

from .graph import OBJECTIVE_SCALE

# The backward pass is seeded with GRAD_SEED (see objective_from_loss): large enough that the deepest gradient
# convolutions stay in float16's normal range, small enough that the scalar adjoints (GRAD_SEED * term weight /
# internal scale) and the Gram adjoints stay below 65504 at 256-1024 px with the default weights.
GRAD_SEED = 2.0 ** 8


def objective_from_loss(loss_model, surgery=True, fused=True):
    """Reverse-mode gradient of `total_scaled` (= OBJECTIVE_SCALE * total, graph.py) w.r.t. `x` by onnx_ad; the seed is
    fixed to GRAD_SEED and the gradient divided back (float32 `fp32_*` operations) and reshaped to
    the image's shape, so the runtime feeds only x, targets and weights and gets d total / d x."""
    from .ad import reverse
    model = reverse(loss_model, inputs=["x"], outputs=["total_scaled"], layout="onnx", fused=fused)
    g = model.graph
    seed = [i for i in g.input if i.name.startswith("adj_")]
    grad = [o for o in g.output if o.name.startswith("adj_")]
    if len(seed) != 1 or len(grad) != 1:
        raise RuntimeError(f"unexpected onnx_ad signature: seeds {[i.name for i in seed]}, "
                           f"gradients {[o.name for o in grad]}")
    seed_name, grad_name = seed[0].name, grad[0].name
    elem = seed[0].type.tensor_type.elem_type
    dtype = helper.tensor_dtype_to_np_dtype(elem)
    g.input.remove(seed[0])
    g.output.remove(grad[0])
    g.output.remove([o for o in g.output if o.name == "total_scaled"][0])
    # Seed = GRAD_SEED instead of 1: the backward pass's values are GRAD_SEED times larger (fewer below float16's
    # normal range), and `grad` divides it back in float32 (README "Float16").
    g.initializer.extend([numpy_helper.from_array(np.array([GRAD_SEED], dtype), seed_name),
                          numpy_helper.from_array(np.array(1.0 / OBJECTIVE_SCALE / GRAD_SEED, dtype),
                                                  "fp32_grad_unscale"),
                          numpy_helper.from_array(np.array([4], dtype=np.int64), "grad_seed_axis")])
    g.node.extend([
        helper.make_node("Squeeze", [grad_name, "grad_seed_axis"], ["fp32_grad_seeded"]),
        helper.make_node("Mul", ["fp32_grad_seeded", "fp32_grad_unscale"], ["grad"]),
    ])
    g.output.append(helper.make_tensor_value_info("grad", elem, [1, 3, "H", "W"]))
    if surgery:
        from .surgery import conv_transpose_to_conv, relu_masks_from_outputs, seed_axis_transposes
        conv_transpose_to_conv(model)
        seed_axis_transposes(model)
        relu_masks_from_outputs(model)
    _topological(model)
    prune_dead_nodes(model)
    prune_initializers(model)
    if surgery:
        from .surgery import align_broadcast_ranks
        align_broadcast_ranks(model)
    return model


def prune_dead_nodes(model):
    """Drop nodes no output needs (onnx_ad builds the derivative of every operand a rule has, and some end at a
    Shape, which carries none: the derivative of 1/sqrt(h w) in each Gram is a full-size reduction)."""
    g = model.graph
    need = {o.name for o in g.output}
    live = []
    for n in reversed(g.node):
        if any(o in need for o in n.output):
            live.append(n)
            need.update(i for i in n.input if i)
    live.reverse()
    del g.node[:]
    g.node.extend(live)


def _topological(model):
    """The seed nodes are appended after their readers: sort the nodes (stable) so every input is defined first."""
    g = model.graph
    defined = {i.name for i in g.input} | {t.name for t in g.initializer} | {""}
    pending, order = list(g.node), []
    while pending:
        rest = []
        for n in pending:
            if all(i in defined for i in n.input):
                order.append(n)
                defined.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            missing = sorted({i for n in rest for i in n.input if i not in defined} - {o for n in rest for o in n.output})
            raise RuntimeError(f"objective graph: undefined inputs {missing[:5]} or a cycle")
        pending = rest
    del g.node[:]
    g.node.extend(order)


def prune_initializers(model):
    """Drop initializers no node reads (onnx_ad folds some shape arithmetic and leaves the constants behind)."""
    g = model.graph
    used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    keep = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
