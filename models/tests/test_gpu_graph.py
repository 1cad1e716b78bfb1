"""The exported graphs run whole under TensorRT (8.6, 10) and ONNX Runtime's CUDA provider: every node against the
operator tables in models/gpu_support/ (from onnx-tensorrt's and ONNX Runtime's documentation, sources cited in each
file), every value with a static rank under ONNX shape inference; and every rewrite that got them there (constant
broadcast axes, max-pool backward without Indices/ScatterND) against onnx_ad's own graph in float64, ties included."""
import csv
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper, shape_inference

from conftest import evaluator, make_feed
from fuchun_export import reference as ref
from fuchun_export.export import build_all, export, manifest
from fuchun_export.graph import OPSET, TERMS, LossConfig
from fuchun_export.weights import load_hed, random_weights

TABLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "gpu_support")


def _read(name):
    with open(os.path.join(TABLES, name)) as f:
        return list(csv.DictReader(line for line in f if not line.startswith("#")))


TRT = {v: {r["op"]: r for r in _read(f"tensorrt-{v}.csv")} for v in ("8.6", "10.1")}
ORT_CUDA = _read("onnxruntime-cuda.csv")

_TRT_TYPE = {TensorProto.FLOAT: "FP32", TensorProto.FLOAT16: "FP16", TensorProto.INT32: "INT32",
             TensorProto.INT64: "INT64", TensorProto.BOOL: "BOOL", TensorProto.INT8: "INT8"}
_ORT_TYPE = {TensorProto.FLOAT: "float", TensorProto.FLOAT16: "float16", TensorProto.INT32: "int32",
             TensorProto.INT64: "int64", TensorProto.BOOL: "bool", TensorProto.DOUBLE: "double"}
# The axes-like operand of each operator (input index), which TensorRT wants constant.
_AXES_INPUT = {"Slice": 3, "Squeeze": 1, "Unsqueeze": 1, "ReduceSum": 1, "ReduceMean": 1, "ReduceProd": 1,
               "ReduceMax": 1, "Pad": 3}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The three exports the project ships: hed max, hed avg, and the random test graph (make test-models)."""
    hed = load_hed(None)
    out = {}
    for name, w, cfg in (("vgg16-max", hed, LossConfig(pooling="max")), ("vgg16-avg", hed, LossConfig(pooling="avg")),
                         ("test-random", random_weights("vgg16", 1, 8), LossConfig(quantiles=64))):
        d = tmp_path_factory.mktemp(name)
        export(w, cfg, str(d), log=lambda *_: None)
        for g in ("features", "objective", "prelude", "tile_stats", "tile_grad"):
            if os.path.exists(d / f"{g}.onnx"):
                out[f"{name}/{g}"] = onnx.load(str(d / f"{g}.onnx"), load_external_data=False)
    return out


def _types(model):
    inferred = shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    g = inferred.graph
    types = {t.name: t.data_type for t in model.graph.initializer}
    for v in list(g.input) + list(g.value_info) + list(g.output):
        types[v.name] = v.type.tensor_type.elem_type
    return inferred, types


def test_every_value_has_a_static_rank(exported):
    for key, model in exported.items():
        inferred, _ = _types(model)
        known = {v.name: v for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
        missing = [o for n in model.graph.node for o in n.output
                   if o and (o not in known or not known[o].type.tensor_type.HasField("shape"))]
        assert not missing, f"{key}: {len(missing)} values without a rank, e.g. {missing[:5]}"
        opset = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")][0]
        assert opset == OPSET <= 17, key


def test_no_operator_tensorrt_refuses(exported):
    for key, model in exported.items():
        inits = {t.name for t in model.graph.initializer}
        for n in model.graph.node:
            assert n.op_type not in ("NonZero", "ScatterND", "ScatterElements"), (key, n.op_type)
            if n.op_type == "MaxPool":
                assert len(n.output) == 1 or not n.output[1], f"{key}: MaxPool with Indices"
            i = _AXES_INPUT.get(n.op_type)
            if i is not None and len(n.input) > i and n.input[i]:
                assert n.input[i] in inits, f"{key}: {n.op_type} reads its axes from {n.input[i]}, not a constant"


def _node_types(n, types):
    """Element types that decide an operator's kernel: its data input's (and a Cast's output)."""
    data = [types.get(n.input[0])] if n.input and n.input[0] else []
    if n.op_type in ("ConstantOfShape",):
        data = [types.get(n.output[0])]
    if n.op_type == "Cast":
        data.append(types.get(n.output[0]))
    return [t for t in data if t]


# Restrictions in the TensorRT tables, and how the check below handles each for the operators the graphs use.
_HANDLED = ("`axes` must be an initializer", "`axes` must be a constant tensor", "2D or 3D pooling only",
            "`Indices` output tensor unsupported", "`dilations` must be empty or all ones",
            "`reduction` is not supported")


@pytest.mark.parametrize("version", ["8.6", "10.1"])
def test_every_node_in_the_tensorrt_table(exported, version):
    table = TRT[version]
    for key, model in exported.items():
        _, types = _types(model)
        for n in model.graph.node:
            row = table.get(n.op_type)
            assert row is not None and row["supported"] == "Y", f"TensorRT {version}: {n.op_type} ({key})"
            allowed = {t.strip() for t in row["types"].split(",") if t.strip()}
            if version == "8.6" and "INT32" in allowed:
                # 8.6's table: "limited support for INT32, INT64 ... TensorRT will attempt to cast down INT64 to
                # INT32" -- shape arithmetic, whose values (extents) fit in int32.
                allowed.add("INT64")
            for t in _node_types(n, types):
                if n.op_type in ("Shape", "Size") and version == "8.6":
                    continue      # their int64 output is the cast-down case above; the input type is listed
                assert _TRT_TYPE.get(t) in allowed, f"TensorRT {version}: {n.op_type} on {_TRT_TYPE.get(t, t)} ({key})"
            for clause in [c.strip() for c in row["restrictions"].replace(". ", ".|").split("|") if c.strip()]:
                assert any(h.rstrip(".") in clause for h in _HANDLED), \
                    f"TensorRT {version}: unreviewed restriction of {n.op_type}: {clause}"
            if n.op_type == "MaxPool":
                assert len(n.output) == 1
                attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
                assert len(attrs["kernel_shape"]) == 2 and set(attrs.get("dilations", [1, 1])) == {1}


def test_every_node_in_the_onnxruntime_cuda_table(exported):
    for key, model in exported.items():
        _, types = _types(model)
        opset = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")][0]
        for n in model.graph.node:
            rows = [r for r in ORT_CUDA if r["op"] == n.op_type and int(r["since"]) <= opset
                    and (not r["until"] or opset <= int(r["until"]))]
            assert rows, f"CUDA provider: no {n.op_type} kernel for opset {opset} ({key})"
            ts = _node_types(n, types)
            assert _ORT_TYPE[ts[0]] in rows[0]["types"].split(), f"CUDA: {n.op_type} on {_ORT_TYPE[ts[0]]} ({key})"
            if n.op_type == "Cast":
                assert _ORT_TYPE[ts[1]] in rows[0]["types2"].split()


# ---- the rewrites against onnx_ad's own graph, in float64 ------------------------------------------------------

def _plain(loss):
    """onnx_ad's graph of the same loss: broadcast undo by NonZero, MaxPool(Indices) + ScatterND(add)."""
    from onnx_ad import reverse
    m = reverse(loss, inputs=["x"], outputs=["total_scaled"], layout="onnx")
    g = m.graph
    seed = [i for i in g.input if i.name.startswith("adj_")][0]
    g.input.remove(seed)
    g.initializer.append(numpy_helper.from_array(np.ones([1]), seed.name))
    return m


@pytest.mark.parametrize("pooling,shape", [("max", (33, 27)), ("max", (24, 24)), ("avg", (35, 29)),
                                           ("avg", (24, 31))])
def test_rewritten_objective_equals_onnx_ads(small_weights, pooling, shape):
    """24 = min_size: the shifted Grams' halves are then 1 pixel high, the case the constant axes must get right."""
    cfg = LossConfig(quantiles=16, pooling=pooling)
    features, loss, objective = build_all(small_weights, cfg, dtype=np.float64)
    ops = {n.op_type for n in _plain(loss).graph.node}
    assert "NonZero" in ops and ("ScatterND" in ops) == (pooling == "max")
    man = manifest(small_weights, cfg, features, objective, {"features": "f", "objective": "o"})
    rng = np.random.default_rng(4)
    image = rng.random((1, 3) + shape)
    own = ref.vgg_forward(image, small_weights, cfg.all_layers(), pooling)
    feats = ref.vgg_forward(rng.random((1, 3, 40, 36)), small_weights, cfg.all_layers(), pooling)
    feed = make_feed(man, feats, rng, image, dtype=np.float64, own=own)
    for l in man["content_layers"]:
        feed[f"content_{l}"] = own[l] * 0.7
    a_ev, b_ev = evaluator(objective), evaluator(_plain(loss))
    a = dict(zip(a_ev.output_names, a_ev.run(None, feed)))
    b = dict(zip(b_ev.output_names, b_ev.run(None, feed)))
    gb = [v for k, v in b.items() if k.startswith("adj_")][0][..., 0]
    for t in ["total"] + [f"loss_{t}" for t in TERMS]:
        assert a[t] == pytest.approx(b[t], rel=1e-13, abs=1e-300)
    np.testing.assert_allclose(a["grad"], gb, rtol=1e-12, atol=1e-12 * np.abs(gb).max())
    lw = {k: list(feed[f"{k}_layer_weights"]) for k in ("content", "style", "shift", "hist")}
    want = ref.terms(image, own, feed, man, lw)
    for t in TERMS:      # the rescaled loss formulas (README "Float16") against the plain numpy ones
        assert abs(float(a[f"loss_{t}"]) - want[t]) <= 1e-9 * want[t], t


def _pool_graph(shape, rule_graph):
    b = [helper.make_tensor_value_info("x", TensorProto.DOUBLE, list(shape)),
         helper.make_tensor_value_info("w", TensorProto.DOUBLE, [shape[0], shape[1], shape[2] // 2, shape[3] // 2])]
    nodes = [helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Mul", ["y", "w"], ["yw"]),
             helper.make_node("ReduceSum", ["yw"], ["total_scaled"], keepdims=0)]
    g = helper.make_graph(nodes, "pool", b, [helper.make_tensor_value_info("total_scaled", TensorProto.DOUBLE, [])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 9
    from fuchun_export.ad import reverse as ours
    from onnx_ad import reverse as theirs
    out = (ours if rule_graph else theirs)(m, inputs=["x"], outputs=["total_scaled"], layout="onnx")
    seed = [i for i in out.graph.input if i.name.startswith("adj_")][0]
    out.graph.input.remove(seed)
    out.graph.initializer.append(numpy_helper.from_array(np.ones([1]), seed.name))
    return out


@pytest.mark.parametrize("shape", [(1, 3, 8, 10), (2, 4, 7, 9)])
def test_max_pool_backward_with_ties(shape):
    """Integer inputs with many exact ties (whole windows equal, zeros as after a ReLU): the mask picks the element
    MaxPool's Indices picks -- in onnx.reference and in ONNX Runtime -- the first maximum in row-major order."""
    rng = np.random.default_rng(0)
    x = np.maximum(rng.integers(-2, 3, size=shape), 0).astype(np.float64)
    x[..., 0:2, 0:2] = 1.0                        # a window of equal nonzero values
    w = rng.standard_normal((shape[0], shape[1], shape[2] // 2, shape[3] // 2))
    ours, theirs = _pool_graph(shape, True), _pool_graph(shape, False)
    assert {n.op_type for n in ours.graph.node}.isdisjoint({"ScatterND", "NonZero"})
    assert all(len(n.output) == 1 for n in ours.graph.node if n.op_type == "MaxPool")
    grad = lambda ev: [v for k, v in zip(ev.output_names, ev.run(None, {"x": x, "w": w})) if k.startswith("adj_")][0]
    a, b = grad(evaluator(ours)), grad(evaluator(theirs))
    np.testing.assert_array_equal(a, b)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    run = lambda m: [v for o, v in zip(m.graph.output, ort.InferenceSession(m.SerializeToString(), so,
                     providers=["CPUExecutionProvider"]).run(None, {"x": x, "w": w})) if o.name.startswith("adj_")][0]
    np.testing.assert_array_equal(run(ours), a)
    np.testing.assert_array_equal(run(theirs), a)   # ONNX Runtime's Indices choose as onnx.reference's
    # and the choice is the first maximum of each window (row-major): exactly one nonzero per window
    assert np.count_nonzero(a[..., : 2 * (shape[2] // 2), : 2 * (shape[3] // 2), 0]) <= w.size
    assert a[0, 0, 0, 0, 0] == w[0, 0, 0, 0] and a[0, 0, 0, 1, 0] == 0 and a[0, 0, 1, 0, 0] == 0
