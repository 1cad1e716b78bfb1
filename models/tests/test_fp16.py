"""Float16 safety of the objective with the real weights (hed) and the real example images: evaluated with every float
value rounded to float16 where it is made (fuchun_export.precision.fp16_rounded), the loss stays finite and within 1 %
of float32 and the gradient's direction within cosine 0.999; and no value the graph computes in float16 leaves its
range. (The `fp32_*` values -- the outputs' unscaling -- are the ones the manifest asks to keep in float32.)"""
import json
import os

import numpy as np
import onnx
import pytest

from fuchun_export import precision as P
from fuchun_export.export import export
from fuchun_export.graph import LossConfig
from fuchun_export.weights import load_hed

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "examples")
SIZE = int(os.environ.get("FUCHUN_FP16_SIZE", "256"))


@pytest.fixture(scope="module")
def hed_export(tmp_path_factory):
    d = tmp_path_factory.mktemp("hed-max")
    export(load_hed(None), LossConfig(), str(d), log=lambda *_: None)
    feed, man = P.real_feed(str(d), f"{EXAMPLES}/tubingen.jpg", f"{EXAMPLES}/fuchun.jpg", SIZE)
    return str(d), feed, man


def test_manifest_names_the_float32_values(hed_export):
    d, _, man = hed_export
    obj = onnx.load(f"{d}/objective.onnx", load_external_data=False)
    assert set(man["fp16"]["fp32_values"]) == P.fp32_values(obj)
    assert man["fp16"]["grad_seed"] == 256.0


def test_fp16_rounded_objective_matches_float32(hed_export):
    d, feed, man = hed_export
    obj = onnx.load(f"{d}/objective.onnx")
    ref = P.run(P.session(obj), feed)
    half = P.run(P.session(P.fp16_rounded(obj)), feed)
    for name in ["total"] + [f"loss_{t}" for t in man["terms"]]:
        a, b = float(half[name]), float(ref[name])
        assert np.isfinite(a) and abs(a - b) <= 0.01 * abs(b), f"{name}: float16 {a} vs float32 {b}"
    g16, g32 = half["grad"].ravel().astype(np.float64), ref["grad"].ravel().astype(np.float64)
    assert np.all(np.isfinite(g16))
    cos = g16 @ g32 / (np.linalg.norm(g16) * np.linalg.norm(g32))
    assert cos >= 0.999, cos


def test_values_stay_in_float16_range(hed_export):
    d, feed, _ = hed_export
    obj = onnx.load(f"{d}/objective.onnx")
    keep32 = P.fp32_values(obj)
    model, names = P.range_stats(obj)
    per = P.summarize(P.run(P.session(model), feed), names)
    over = {k: v[1] for k, v in per.items() if k not in keep32 and not v[1] <= P.FP16_MAX / 2}
    assert not over, f"values past 65504/2: {over}"
    # gradient convolutions (the backward pass): at most a few percent of their values below float16's normal range
    seeded = {o for n in obj.graph.node if n.op_type == "Conv" and n.input[1].endswith("_as_conv") for o in n.output}
    assert seeded
    worst = max(per[k][2] for k in seeded)
    assert worst <= 0.10, f"{100 * worst:.1f} % of a gradient convolution's values below 2^-14"
