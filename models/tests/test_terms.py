"""Each term's value against the independent numpy formulas; one graph at several sizes; the histogram layers."""
import numpy as np
import onnxruntime as ort
import pytest

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
    own = ref.vgg_forward(x, small_weights, small_cfg.all_layers())
    feed = make_feed(man, {l: v for l, v in style.items()}, rng, x, dtype=np.float64, own=own)
    # content targets must have the image's own feature shape
    for l in man["content_layers"]:
        feed[f"content_{l}"] = own[l] * 0.5 + 0.3
    feed["term_weights"] = np.array([0.5, 2.0, 3.0, 0.25, 7.0, 40.0])
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
    """min_size in the manifest is tight: at min_size every term is finite; one pixel below it a long-range Gram
    has no pixel pairs (ONNX Runtime refuses the empty reshape, or the term is not finite). The runtime rejects
    such images before running the graph (this shows why it must)."""
    out_dir, man = export32
    rng = np.random.default_rng(2)
    x = rng.random((1, 3, man["min_size"], 40))
    feats = {k[5:]: v for k, v in _run(_session(f"{out_dir}/features.onnx"), {"x": x.astype(np.float32)}).items()}
    feed = make_feed(man, feats, rng, x)
    for l in man["content_layers"]:
        feed[f"content_{l}"] = feats[l]
    res = _run(_session(f"{out_dir}/objective.onnx"), feed)
    assert all(np.isfinite(res[f"loss_{t}"]) for t in TERMS), "not finite at min_size itself"
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


def test_objective_returns_the_histogram_layers_activations(export32, small_weights, small_cfg):
    """The runtime matches the histogram targets from prelude.onnx (full-resolution layers, before each evaluation)
    and from the objective's feat_ outputs (deeper layers): both must be the image's activations, and the histogram
    term must treat its target as a constant."""
    out_dir, man = export32
    rng = np.random.default_rng(6)
    x = rng.random((1, 3, 40, 48))
    feats = {k[5:]: v for k, v in _run(_session(f"{out_dir}/features.onnx"), {"x": x.astype(np.float32)}).items()}
    feed = make_feed(man, feats, rng, x)
    obj = _session(f"{out_dir}/objective.onnx")
    res = _run(obj, feed)
    exact = man["hist_exact_layers"]
    assert exact == ["relu1_1"]
    lagged = [l for l in man["hist_layers"] if l not in exact]
    assert [n for n in res if n.startswith("feat_")] == [f"feat_{l}" for l in lagged]
    for l in lagged:
        np.testing.assert_allclose(res[f"feat_{l}"], feats[l], rtol=1e-5, atol=1e-5 * np.abs(feats[l]).max())
    # the exactly matched layers come from prelude.onnx, which computes just them
    pre = _run(_session(f"{out_dir}/prelude.onnx"), {"x": x.astype(np.float32)})
    assert sorted(pre) == [f"feat_{l}" for l in exact]
    for l in exact:
        np.testing.assert_allclose(pre[f"feat_{l}"], feats[l], rtol=1e-5, atol=1e-5 * np.abs(feats[l]).max())
    # exact matching of the image to its own histogram: the term vanishes
    same = dict(feed, **{f"hist_target_{l}": feats[l] for l in man["hist_layers"]},
                term_weights=np.eye(len(TERMS), dtype=np.float32)[TERMS.index("hist")])
    zero = _run(obj, same)
    assert abs(float(zero["loss_hist"])) <= 1e-9 and np.abs(zero["grad"]).max() <= 1e-9


def test_quantiles_of_identical_size_are_the_sorted_values():
    f = np.random.default_rng(0).standard_normal((1, 3, 8, 8))
    q = ref.quantiles(f, 64)
    np.testing.assert_array_equal(q, np.sort(f.reshape(3, -1), 1))
    m = ref.matched(f, q)
    np.testing.assert_array_equal(m, f)   # an image matched to its own histogram is itself
