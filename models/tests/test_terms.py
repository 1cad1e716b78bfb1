"""Each term's value against the independent numpy formulas; one graph at several sizes; histogram matching."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

from conftest import evaluator, make_feed
from fuchun_export import reference as ref
from fuchun_export.export import manifest
from fuchun_export.graph import TERMS


def _session(path):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def _run(sess, feed):
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feed)))


def test_features_match_numpy_vgg(export32, small_weights, small_cfg):
    out_dir, man = export32
    x = np.random.default_rng(0).random((1, 3, 40, 56))
    got = _run(_session(f"{out_dir}/features.onnx"), {"x": x.astype(np.float32)})
    want = ref.vgg_forward(x, small_weights, small_cfg.all_layers())
    for layer in small_cfg.all_layers():
        a, b = got[f"feat_{layer}"], want[layer]
        assert a.shape == b.shape
        assert np.max(np.abs(a - b)) <= 1e-4 * np.max(np.abs(b)), layer


def test_each_term_matches_numpy(graphs64, small_weights, small_cfg):
    features, loss, objective = graphs64
    man = manifest(small_weights, small_cfg, features, objective, {"features": "f", "objective": "o"})
    rng = np.random.default_rng(11)
    style = ref.vgg_forward(rng.random((1, 3, 48, 40)), small_weights, small_cfg.all_layers())
    x = rng.random((1, 3, 40, 32))
    feed = make_feed(man, {l: v for l, v in style.items()}, rng, x, dtype=np.float64)
    # content targets must have the image's own feature shape
    own = ref.vgg_forward(x, small_weights, small_cfg.all_layers())
    for l in man["content_layers"]:
        feed[f"content_{l}"] = own[l] * 0.5 + 0.3
    feed["term_weights"] = np.array([0.5, 2.0, 3.0, 0.25, 7.0])
    res = dict(zip(evaluator(objective).output_names, evaluator(objective).run(None, feed)))
    lw = {k: list(feed[f"{k}_layer_weights"]) for k in ("content", "style", "shift", "hist")}
    want = ref.terms(x, own, feed, man, lw)
    for t in TERMS:
        assert want[t] > 0
        assert abs(float(res[f"loss_{t}"]) - want[t]) <= 1e-9 * want[t], t
    total = sum(w * want[t] for w, t in zip(feed["term_weights"], TERMS))
    assert abs(float(res["total"]) - total) <= 1e-9 * total


@pytest.mark.parametrize("shape", [(32, 48), (64, 64), (33, 47), (24, 24)])
def test_one_graph_serves_several_sizes(export32, small_weights, small_cfg, shape):
    out_dir, man = export32
    assert man["min_size"] == 24
    rng = np.random.default_rng(2)
    x = rng.random((1, 3) + shape)
    feats = _run(_session(f"{out_dir}/features.onnx"), {"x": x.astype(np.float32)})
    feats = {k[5:]: v for k, v in feats.items()}
    feed = make_feed(man, feats, rng, x)
    res = _run(_session(f"{out_dir}/objective.onnx"), feed)
    assert res["grad"].shape == (1, 3) + shape
    assert np.all(np.isfinite(res["grad"])) and np.isfinite(res["total"])
    lw = {k: list(feed[f"{k}_layer_weights"]) for k in ("content", "style", "shift", "hist")}
    want = ref.terms(x, feats, feed, man, lw)
    for t in TERMS:
        assert abs(float(res[f"loss_{t}"]) - want[t]) <= 2e-4 * max(want[t], 1e-6), t


def test_below_min_size_is_not_finite(export32):
    """min_size in the manifest is tight: below it a long-range Gram has no pixel pairs. The runtime rejects such
    images before running the graph (this shows why it must)."""
    out_dir, man = export32
    rng = np.random.default_rng(2)
    x = rng.random((1, 3, man["min_size"] - 1, 40))
    feats = {k[5:]: v for k, v in _run(_session(f"{out_dir}/features.onnx"), {"x": x.astype(np.float32)}).items()}
    with np.errstate(all="ignore"):
        feed = make_feed(man, feats, rng, x)
    for l in man["content_layers"]:
        feed[f"content_{l}"] = feats[l]
    try:
        res = _run(_session(f"{out_dir}/objective.onnx"), feed)
    except Exception as e:  # ONNX Runtime refuses the empty shifted Gram
        assert "reshape" in str(e).lower()
    else:
        assert not np.isfinite(res["loss_shift"])


def _with_matched_outputs(loss):
    m = onnx.ModelProto()
    m.CopyFrom(loss)
    for node in m.graph.node:
        if node.output[0].startswith("matched_full"):
            m.graph.output.append(helper.make_tensor_value_info(node.output[0], onnx.TensorProto.DOUBLE, None))
    return m


def test_histogram_target_is_piecewise_constant(graphs64, small_weights, small_cfg):
    features, loss, objective = graphs64
    man = manifest(small_weights, small_cfg, features, objective, {"features": "f", "objective": "o"})
    ev = evaluator(_with_matched_outputs(loss))
    names = [n for n in ev.output_names if n.startswith("matched_full")]
    assert len(names) == len(man["hist_layers"])
    rng = np.random.default_rng(4)
    x = rng.random((1, 3, 32, 32))
    feats = ref.vgg_forward(x, small_weights, small_cfg.all_layers())
    feed = make_feed(man, feats, rng, x, dtype=np.float64)
    base = dict(zip(ev.output_names, ev.run(None, feed)))
    nudged = dict(zip(ev.output_names, ev.run(None, dict(feed, x=x + 1e-9 * rng.standard_normal(x.shape)))))
    for n in names:
        np.testing.assert_array_equal(base[n], nudged[n])       # matched target does not move
    assert base["loss_hist"] != nudged["loss_hist"]             # while the loss does (the image did change)
    # the matched tensor is the style table at each element's rank, i.e. the numpy reference
    for n, layer in zip(names, man["hist_layers"]):
        want = ref.matched(feats[layer], feed[f"hist_{layer}"])
        # ties (ReLU zeros) may be ordered differently; compare as sorted per channel, and exactly where no ties
        c = want.shape[1]
        np.testing.assert_allclose(np.sort(base[n].reshape(c, -1), 1), np.sort(want.reshape(c, -1), 1), rtol=1e-12)
        f = feats[layer].reshape(c, -1)
        distinct = f > 0
        np.testing.assert_allclose(base[n].reshape(c, -1)[distinct], want.reshape(c, -1)[distinct], rtol=1e-12)
    # a large change (rank changes) moves it
    moved = dict(zip(ev.output_names, ev.run(None, dict(feed, x=rng.random(x.shape)))))
    assert any(not np.array_equal(base[n], moved[n]) for n in names)


def test_quantiles_of_identical_size_are_the_sorted_values():
    f = np.random.default_rng(0).standard_normal((1, 3, 8, 8))
    q = ref.quantiles(f, 64)
    np.testing.assert_array_equal(q, np.sort(f.reshape(3, -1), 1))
    m = ref.matched(f, q)
    np.testing.assert_array_equal(m, f)   # an image matched to its own histogram is itself
