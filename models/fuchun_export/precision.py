"""Float16 audits of exported graphs, run on the CPU with ONNX Runtime (tests/test_fp16.py, and by hand:
`python -m fuchun_export.precision --help`).

* `fp16_rounded(model)`: the model with every float tensor rounded to float16 where it is made: a
  Cast(float16) -> Cast(float32) pair after every float node output, float inputs rounded on entry, float initializers
  rounded in place. Each operation still computes in float32, so this is a lower bound on what a float16 engine
  (TensorRT with FP16, ONNX Runtime CUDA on a converted graph) does to the values, but it catches what matters
  most: overflow past 65504, underflow below 6.1e-5 (float16's smallest normal number) and the 11-bit mantissa.
* `range_stats(model)`: the model with, after every float node output, three scalar outputs: max |v|, the count of
  nonzero values with |v| < 2^-14 (float16 subnormals and flushes) and the count of elements; float16 keeps them
  within the same ONNX Runtime run, so a 1024 px evaluation needs no more memory than a plain one.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper, shape_inference

FP16_MAX = 65504.0
FP16_MIN_NORMAL = 2.0 ** -14


def float_outputs(model):
    """Names of node outputs whose element type is float32 (by ONNX shape inference)."""
    inferred = shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    types = {v.name: v.type.tensor_type.elem_type
             for v in list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input)}
    return [o for n in model.graph.node for o in n.output if o and types.get(o) == TensorProto.FLOAT]


def _copy(model):
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def fp32_values(model):
    """The values the exporter wants computed in float32: named `fp32_*` (the unscaling of the outputs: a few
    scalars and one [1,3,H,W] product), and the graph outputs they feed."""
    g = model.graph
    head = {o for n in g.node for o in n.output if o.startswith("fp32_")}
    return head | {n.output[0] for n in g.node if n.op_type in ("Identity", "Mul", "Gather") and
                   set(n.input) & head and n.output[0] in {o.name for o in g.output}}


def fp16_rounded(model, round_inputs=True, round_weights=True):
    m = _copy(model)
    g = m.graph
    floats = set(float_outputs(model)) - fp32_values(model)
    nodes = []
    if round_inputs:
        for v in g.input:
            if v.type.tensor_type.elem_type == TensorProto.FLOAT:
                raw = v.name + "__raw"
                for n in g.node:
                    for i, name in enumerate(n.input):
                        if name == v.name:
                            n.input[i] = raw
                nodes.append(helper.make_node("Cast", [v.name], [v.name + "__h"], to=TensorProto.FLOAT16))
                nodes.append(helper.make_node("Cast", [v.name + "__h"], [raw], to=TensorProto.FLOAT))
    if round_weights:
        for i, t in enumerate(g.initializer):
            if t.data_type == TensorProto.FLOAT and not t.name.startswith("fp32_"):
                a = numpy_helper.to_array(t).astype(np.float16).astype(np.float32)
                g.initializer[i].CopyFrom(numpy_helper.from_array(a, t.name))
    for n in g.node:
        nodes.append(n)
        for j, o in enumerate(list(n.output)):
            if o in floats:
                raw = o + "__f32"
                n.output[j] = raw
                nodes.append(helper.make_node("Cast", [raw], [o + "__h"], to=TensorProto.FLOAT16))
                nodes.append(helper.make_node("Cast", [o + "__h"], [o], to=TensorProto.FLOAT))
    del g.node[:]
    g.node.extend(nodes)
    return m


def range_stats(model, skip=("Shape", "Size", "Cast", "Identity"), small_for=("Conv", "MatMul")):
    """Adds outputs `max__i`, and for the outputs of `small_for` operators `small__i` and `count__i`, for the i-th
    float node output; returns (model, names). (Counting small values everywhere makes the run ~8x slower.)"""
    m = _copy(model)
    g = m.graph
    floats = set(float_outputs(model))
    small = numpy_helper.from_array(np.array(FP16_MIN_NORMAL, np.float32), "stat_small")
    zero = numpy_helper.from_array(np.array(0.0, np.float32), "stat_zero")
    g.initializer.extend([small, zero])
    nodes, names = [], []
    for n in g.node:
        nodes.append(n)
        if n.op_type in skip:
            continue
        for o in n.output:
            if o not in floats:
                continue
            i = len(names)
            names.append((o, n.op_type))
            a = f"stat_abs__{i}"
            nodes.append(helper.make_node("Abs", [o], [a]))
            nodes.append(helper.make_node("ReduceMax", [a], [f"max__{i}"], keepdims=0))
            g.output.append(helper.make_tensor_value_info(f"max__{i}", TensorProto.FLOAT, []))
            if n.op_type not in small_for:
                continue
            tiny = helper.make_node("And", [f"stat_lt__{i}", f"stat_gt__{i}"], [f"stat_tiny__{i}"])
            nodes.append(helper.make_node("Less", [a, "stat_small"], [f"stat_lt__{i}"]))
            nodes.append(helper.make_node("Greater", [a, "stat_zero"], [f"stat_gt__{i}"]))
            nodes.append(tiny)
            nodes.append(helper.make_node("Cast", [f"stat_tiny__{i}"], [f"stat_tinyf__{i}"], to=TensorProto.FLOAT))
            nodes.append(helper.make_node("ReduceSum", [f"stat_tinyf__{i}"], [f"small__{i}"], keepdims=0))
            nodes.append(helper.make_node("Size", [o], [f"count__{i}"]))
            for stat, elem in (("small", TensorProto.FLOAT), ("count", TensorProto.INT64)):
                g.output.append(helper.make_tensor_value_info(f"{stat}__{i}", elem, []))
    del g.node[:]
    g.node.extend(nodes)
    return m, names


def session(model, threads=0, lean=False):
    """An ONNX Runtime CPU session; `lean`: no memory arena (the range statistics at 1024 px otherwise grow it past
    23 GB)."""
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if lean:
        so.enable_cpu_mem_arena = False
        so.enable_mem_pattern = False
    if threads:
        so.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def run(sess, feed, names=None):
    out = sess.run(names, {k: v for k, v in feed.items() if k in {i.name for i in sess.get_inputs()}})
    return dict(zip(names or [o.name for o in sess.get_outputs()], out))


def summarize(results, names, backward_from=None):
    """{value: (op, max|v|, fraction of nonzero values below 2^-14)} plus overall figures."""
    per = {}
    for i, (name, op) in enumerate(names):
        if f"count__{i}" in results:
            count = int(results[f"count__{i}"])
            per[name] = (op, float(results[f"max__{i}"]), float(results[f"small__{i}"]) / max(count, 1), count)
        else:
            per[name] = (op, float(results[f"max__{i}"]), float("nan"), 0)
    return per


def real_feed(out_dir, content, style, size, seed=0):
    """Targets from the real example images at `size` (square, resized), as the runtime builds them; x is the
    content image plus a little noise (an evaluation early in an optimisation)."""
    import json

    from PIL import Image

    from . import reference as ref
    man = json.load(open(f"{out_dir}/manifest.json"))

    def load(path):
        img = Image.open(path).convert("RGB").resize((size, size), Image.BILINEAR)
        return np.asarray(img, np.float32).transpose(2, 0, 1)[None] / 255

    c, s = load(content), load(style)
    feats = session(onnx.load(f"{out_dir}/features.onnx"))
    fc = run(feats, {"x": c})
    fs = run(feats, {"x": s})
    rng = np.random.default_rng(seed)
    x = np.clip(c + np.float32(0.05) * rng.standard_normal(c.shape).astype(np.float32), 0, 1)
    fx = run(feats, {"x": x})
    feed = {"x": x}
    for l in man["content_layers"]:
        feed[f"content_{l}"] = fc[f"feat_{l}"]
    for l in man["style_layers"]:
        feed[f"gram_{l}"] = ref.gram(fs[f"feat_{l}"].astype(np.float64)).astype(np.float32)
    for item in man["shift_layers"]:
        gh, gv = ref.shifted_grams(fs[f"feat_{item['layer']}"].astype(np.float64), item["delta"])
        feed[f"shift_h_{item['layer']}"], feed[f"shift_v_{item['layer']}"] = gh.astype(np.float32), gv.astype(np.float32)
    for l in man["hist_layers"]:
        table = ref.quantiles(fs[f"feat_{l}"], man["quantiles"])
        feed[f"hist_target_{l}"] = ref.matched(fx[f"feat_{l}"], table).astype(np.float32)
    for k, v in man["default_layer_weights"].items():
        feed[f"{k}_layer_weights"] = np.asarray(v, np.float32)
    tw = dict(man["default_term_weights"])
    if "temporal" in man["terms"]:
        # a camera stream's frame: the previous result near x, held everywhere but a changed third of the frame,
        # with the daemon's default temporal weight
        prev = np.clip(x + np.float32(0.02) * rng.standard_normal(x.shape).astype(np.float32), 0, 1)
        m = np.ones((1, 1) + x.shape[2:], np.float32)
        m[..., : x.shape[2] // 3, :] = 0.0
        feed["temporal_prev"], feed["temporal_weights"] = prev, m
        tw["temporal"] = 200.0
    feed["term_weights"] = np.asarray([tw[t] for t in man["terms"]], np.float32)
    return feed, man


def main(argv=None):
    import argparse
    import json
    import os
    import time
    p = argparse.ArgumentParser(prog="python -m fuchun_export.precision", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_dir")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--examples", default=os.path.join(os.path.dirname(__file__), "..", "..", "examples"))
    p.add_argument("--fp16", action="store_true", help="also run the float16-rounded objective and compare")
    p.add_argument("--json", help="write the per-tensor figures here")
    a = p.parse_args(argv)
    t0 = time.time()
    feed, man = real_feed(a.model_dir, f"{a.examples}/tubingen.jpg", f"{a.examples}/fuchun.jpg", a.size)
    obj = onnx.load(f"{a.model_dir}/objective.onnx")
    stats_model, names = range_stats(obj)
    res = run(session(stats_model, lean=True), feed)
    per = summarize(res, names)
    over = {k: v for k, v in per.items() if v[1] > FP16_MAX}
    under_conv = {k: v for k, v in per.items() if v[0] == "Conv" and v[2] > 0.05}
    worst = sorted(per.items(), key=lambda kv: -kv[1][1])[:8]
    print(f"{a.size} px, {len(per)} float tensors, max |v| {max(v[1] for v in per.values()):.4g}; "
          f"{len(over)} above 65504; loss {float(res['total']):.6g} ({time.time() - t0:.0f} s)")
    for k, v in worst:
        print(f"  {v[0]:10s} {k:40s} max {v[1]:.4g}")
    convs = [(k, v) for k, v in per.items() if v[0] == "Conv"]
    print("gradient convolutions (backward) below 2^-14:")
    for k, v in convs:
        if "grad" in k or "a_conv" in k or "_as_conv" in k or not k.startswith("conv"):
            print(f"  {k:40s} {100 * v[2]:6.2f} % max {v[1]:.3g}")
    print(f"{len(under_conv)} Conv outputs with more than 5 % of their values nonzero and below 2^-14")
    if a.fp16:
        ref32 = run(session(obj), feed)
        h = run(session(fp16_rounded(obj)), feed)
        g32, g16 = ref32["grad"].ravel().astype(np.float64), h["grad"].ravel().astype(np.float64)
        cos = float(g32 @ g16 / (np.linalg.norm(g32) * np.linalg.norm(g16)))
        print(f"fp16-rounded: total {float(h['total']):.6g} vs {float(ref32['total']):.6g} "
              f"(rel {abs(float(h['total']) / float(ref32['total']) - 1):.3g}), grad cosine {cos:.6f}")
        for t in man["terms"]:
            print(f"  loss_{t}: {float(h['loss_' + t]):.6g} vs {float(ref32['loss_' + t]):.6g}")
    if a.json:
        json.dump({k: {"op": v[0], "max": v[1], "below_min_normal": v[2], "count": v[3]} for k, v in per.items()},
                  open(a.json, "w"), indent=1)


if __name__ == "__main__":
    main()
