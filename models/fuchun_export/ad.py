"""onnx_ad, adapted to image graphs of dynamic height and width.

onnx_ad's reverse rule for Conv sets ConvTranspose's `output_shape` from the input's static shape, so it refuses a
graph whose H and W are symbolic. For a "same" convolution (stride 1, dilation 1, pads (k-1)/2 on each side, as
in every VGG layer) the transposed convolution's pads alone give exactly the input's size, so `output_shape` is not
needed. This module registers a Conv rule that emits that form in the dynamic case and defers to onnx_ad's own
rule otherwise; everything else (the walk, the other rules, the seed handling) is onnx_ad's.
"""
from onnx_ad import rules as _rules
from onnx_ad._build import UnsupportedOperator

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


def reverse(model, **kwargs):
    from onnx_ad import reverse as _reverse
    return _reverse(model, **kwargs)
