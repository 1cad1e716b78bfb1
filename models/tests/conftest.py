import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fuchun_export.export import build_all, default_layer_weights, export  # noqa: E402
from fuchun_export.graph import LossConfig, TERMS  # noqa: E402
from fuchun_export.weights import random_weights  # noqa: E402

# A narrow random VGG16 (channels / 8) keeps the float64 reference interpreter fast; the graph code is the same.
SMALL = dict(arch="vgg16", seed=1, width_divisor=8)
SMALL_CFG = dict(quantiles=16)


@pytest.fixture(scope="session")
def small_weights():
    return random_weights(**SMALL)


@pytest.fixture(scope="session")
def small_cfg():
    return LossConfig(**SMALL_CFG)


@pytest.fixture(scope="session")
def graphs64(small_weights, small_cfg):
    """(features, loss, objective) in float64."""
    return build_all(small_weights, small_cfg, dtype=np.float64)


@pytest.fixture(scope="session")
def export32(small_weights, small_cfg, tmp_path_factory):
    out = tmp_path_factory.mktemp("small")
    man = export(small_weights, small_cfg, str(out), log=lambda *_: None)
    return str(out), man


def make_feed(manifest, feats, rng, image, term_weights=None, dtype=np.float32, own=None):
    """Targets built from a second image's features (`feats`, layer -> array), random layer weights. The histogram
    targets are the image's own activations (`own`, layer -> array; default `feats`, which must then be of the
    image's size) matched to the quantiles of `feats`, as the runtime computes them."""
    from fuchun_export import reference as ref
    feed = {"x": image.astype(dtype)}
    for l in manifest["content_layers"]:
        feed[f"content_{l}"] = (feats[l] * 0.8 + 0.1).astype(dtype)
    for l in manifest["style_layers"]:
        feed[f"gram_{l}"] = (ref.gram(feats[l]) * 1.3).astype(dtype)
    for item in manifest["shift_layers"]:
        gh, gv = ref.shifted_grams(feats[item["layer"]], item["delta"])
        feed[f"shift_h_{item['layer']}"], feed[f"shift_v_{item['layer']}"] = (gh * 0.7).astype(dtype), (gv * 1.2).astype(dtype)
    for l in manifest["hist_layers"]:
        table = ref.quantiles(feats[l], manifest["quantiles"]) * 1.5 + 0.2
        feed[f"hist_target_{l}"] = ref.matched((own if own is not None else feats)[l], table).astype(dtype)
    for key, layers in (("content", manifest["content_layers"]), ("style", manifest["style_layers"]),
                        ("shift", manifest["shift_layers"]), ("hist", manifest["hist_layers"])):
        feed[f"{key}_layer_weights"] = (rng.random(len(layers)) + 0.5).astype(dtype)
    # temporal: a previous frame near the image, a weight map with a zero (changed) region
    h, w = image.shape[2:]
    feed["temporal_prev"] = np.clip(image + 0.1 * rng.standard_normal(image.shape), 0, 1).astype(dtype)
    m = rng.random((1, 1, h, w)) + 0.5
    m[..., : h // 3, : w // 2] = 0.0
    feed["temporal_weights"] = m.astype(dtype)
    tw = np.ones(len(TERMS)) if term_weights is None else np.asarray(term_weights)
    feed["term_weights"] = tw.astype(dtype)
    return feed


def evaluator(model):
    """onnx.reference's float64 interpreter. Its GatherElements mishandles rank-2 data (onnx 1.23), so that one
    operator is replaced by numpy's take_along_axis, which is its definition."""
    from onnx.reference import ReferenceEvaluator
    from onnx.reference.op_run import OpRun

    class GatherElements(OpRun):
        def _run(self, data, indices, axis=None):
            idx = np.where(indices < 0, indices + data.shape[axis or 0], indices)
            return (np.take_along_axis(data, idx, axis=axis or 0),)

    return ReferenceEvaluator(model, new_ops=[GatherElements])
