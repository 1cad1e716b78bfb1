"""The tiled objective (tile_stats + tile_grad, fuchun_export/tile.py) against the whole-image objective, in float64:
every term's loss and the gradient, blocks of odd sizes at the image's border, pairs of the long-range term and of
tv across block borders, the histogram term matched on the global ranks. The numpy orchestration below is the
algorithm the Rust runtime implements (src/transfer/tiled/)."""
import numpy as np
import pytest

from conftest import evaluator, make_feed
from fuchun_export import reference as ref
from fuchun_export.export import build_all
from fuchun_export.graph import TERMS, LossConfig, layer_info
from fuchun_export.tile import build_tile_grad, build_tile_stats, geometry, plan

# Shallow layers keep the float64 interpreter fast and the margin (8 px) small against the image, so that blocks
# have inner regions, margins and image borders of every kind; the graph code is the same as for relu5_1.
SHALLOW = dict(content_layers=["relu1_2", "relu2_1"], style_layers=["relu1_1", "relu2_1"],
               shift_layers={"relu1_2": 3, "relu2_1": 2}, hist_layers=["relu1_1", "relu2_1"], quantiles=16)


def _run(ev, feed):
    names = [i for i in ev.input_names]
    return dict(zip(ev.output_names, ev.run(None, {k: feed[k] for k in names})))


def tiled(stats, grad, weights, cfg, x, feed, inner, norms=None):
    """The tiled evaluation: (losses by term, gradient). `feed` holds the whole-image objective's inputs (its
    targets, weights and hist tables in `hist_<layer>`)."""
    reach, align, margin = geometry(weights, cfg)
    _, _, h, w = x.shape
    blocks = plan(h, w, inner, margin, align)
    info = {l: layer_info(weights.arch, weights, l) for l in cfg.all_layers()}
    tw = dict(zip(TERMS, feed["term_weights"]))
    lw = {k: list(feed[f"{k}_layer_weights"]) for k in ("content", "style", "shift", "hist")}
    # pass 1: statistics summed over the inner regions, histogram layers' activations gathered
    sums, maps = {}, {l: np.zeros((1, info[l][0], h // info[l][1], w // info[l][1])) for l in cfg.hist_layers}
    for (y0, y1, x0, x1), (iy0, iy1, ix0, ix1) in blocks:
        m = np.zeros((1, 1, y1 - y0, x1 - x0))
        m[..., iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0] = 1
        out = _run(stats, {"x": x[..., y0:y1, x0:x1], "inner": m})
        for k, v in out.items():
            if k.startswith("feat_"):
                l, s = k[5:], info[k[5:]][1]
                a, b = iy0 // s, (iy1 // s if iy1 < h else h // s)
                c, d = ix0 // s, (ix1 // s if ix1 < w else w // s)
                maps[l][..., a:b, c:d] = v[..., a - y0 // s:b - y0 // s, c - x0 // s:d - x0 // s]
            else:
                sums[k] = sums.get(k, 0) + v
    losses = {t: 0.0 for t in TERMS}
    adj = {}
    for i, l in enumerate(cfg.style_layers):
        c, s = info[l]
        n = (h // s) * (w // s)
        d = sums[f"gram_sum_{l}"] / n - feed[f"gram_{l}"]
        losses["style"] += lw["style"][i] * np.mean(d ** 2)
        adj[f"style_adjoint_{l}"] = tw["style"] * lw["style"][i] * 2 * d / (c * c * n)
    for i, (l, dl) in enumerate(cfg.shift_layers.items()):
        c, s = info[l]
        hl, wl = h // s, w // s
        for side, n in (("h", hl * (wl - dl)), ("v", (hl - dl) * wl)):
            d = sums[f"shift_{side}_sum_{l}"] / n - feed[f"shift_{side}_{l}"]
            losses["shift"] += lw["shift"][i] * 0.5 * np.mean(d ** 2)
            adj[f"shift_{side}_adjoint_{l}"] = tw["shift"] * lw["shift"][i] * d / (c * c * n)
    hist = {l: ref.matched(maps[l], feed[f"hist_{l}"]) for l in cfg.hist_layers}
    counts = {l: info[l][0] * (h // info[l][1]) * (w // info[l][1]) for l in cfg.all_layers()}
    factors = {"content_factors": np.array([tw["content"] * lw["content"][i] / counts[l]
                                            for i, l in enumerate(cfg.content_layers)]),
               "hist_factors": np.array([tw["hist"] * lw["hist"][i] / counts[l] for i, l in enumerate(cfg.hist_layers)]),
               "tv_factors": tw["tv"] / np.array([3 * h * (w - 1), 3 * (h - 1) * w]),
               "temporal_factor": np.array([tw["temporal"] / (3 * h * w)])}
    # pass 2: each block's gradient of the surrogate, margins included, added up
    g = np.zeros_like(x)
    parts = {"content": 0.0, "hist": 0.0, "tv": 0.0, "temporal": 0.0}
    for (y0, y1, x0, x1), (iy0, iy1, ix0, ix1) in blocks:
        m = np.zeros((1, 1, y1 - y0, x1 - x0))
        m[..., iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0] = 1
        bf = {"x": x[..., y0:y1, x0:x1], "inner": m, **adj, **factors,
              "temporal_prev": feed["temporal_prev"][..., y0:y1, x0:x1],
              "temporal_weights": feed["temporal_weights"][..., y0:y1, x0:x1]}
        for name, layers, src in (("content_", cfg.content_layers, feed), ("hist_target_", cfg.hist_layers, None)):
            for l in layers:
                s = info[l][1]
                full = feed[f"content_{l}"] if src is not None else hist[l]
                bf[f"{name}{l}"] = full[..., y0 // s:y0 // s + (y1 - y0) // s, x0 // s:x0 // s + (x1 - x0) // s]
        out = _run(grad, bf)
        g[..., y0:y1, x0:x1] += out["grad"]
        parts["content"] += out["sums_content"]
        parts["hist"] += out["sums_hist"]
        parts["tv"] += out["sums_tv"]
        parts["temporal"] += out["sums_temporal"]
    losses["content"] = sum(lw["content"][i] * parts["content"][i] / counts[l]
                            for i, l in enumerate(cfg.content_layers))
    losses["hist"] = sum(lw["hist"][i] * parts["hist"][i] / counts[l] for i, l in enumerate(cfg.hist_layers))
    losses["tv"] = parts["tv"][0] / (3 * h * (w - 1)) + parts["tv"][1] / (3 * (h - 1) * w)
    losses["temporal"] = parts["temporal"][0] / (3 * h * w)
    return losses, g, hist


@pytest.fixture(scope="module")
def shallow(small_weights):
    cfg = LossConfig(**SHALLOW)
    _, _, objective = build_all(small_weights, cfg, dtype=np.float64)
    return (cfg, evaluator(objective), evaluator(build_tile_stats(small_weights, cfg, np.float64)),
            evaluator(build_tile_grad(small_weights, cfg, np.float64)), objective)


def test_geometry_covers_the_receptive_field(small_weights):
    reach, align, margin = geometry(small_weights, LossConfig())
    # relu5_1: 2x1 + 2x2 + 3x4 + 3x8 + 1x16 = 58 px beyond its cell (receptive field 16 + 2 * 58 = 132), shifts
    # 8 * 2 = 4 * 4 = 2 * 8 = 16 px, rounded up to the stride 16
    assert (reach, align, margin) == (58, 16, 80)
    assert geometry(small_weights, LossConfig(**SHALLOW)) == (4, 2, 8)


def test_plan_partitions_the_image():
    for h, w, inner in ((37, 30, 10), (64, 64, 64), (50, 21, 7), (16, 16, 100)):
        cover = np.zeros((h, w), int)
        for (y0, y1, x0, x1), (iy0, iy1, ix0, ix1) in plan(h, w, inner, 8, 2):
            assert y0 <= iy0 < iy1 <= y1 and x0 <= ix0 < ix1 <= x1
            assert iy0 % 2 == 0 and ix0 % 2 == 0 and (iy1 % 2 == 0 or iy1 == h) and (ix1 % 2 == 0 or ix1 == w)
            assert (y0 == 0 or iy0 - y0 == 8) and (y1 == h or y1 - iy1 == 8)
            cover[iy0:iy1, ix0:ix1] += 1
        assert np.all(cover == 1)


@pytest.mark.parametrize("shape,inner", [((37, 30), 10), ((34, 41), 16), ((29, 27), 7)])
def test_tiled_equals_whole_in_float64(shallow, small_weights, shape, inner):
    cfg, whole, stats, grad, objective = shallow
    man = _man(cfg)
    rng = np.random.default_rng(sum(shape) + inner)
    x = rng.random((1, 3) + shape)
    style = ref.vgg_forward(rng.random((1, 3, 40, 36)), small_weights, cfg.all_layers())
    own = ref.vgg_forward(x, small_weights, cfg.all_layers())
    feed = make_feed(man, style, rng, x, dtype=np.float64, own=own)
    for l in cfg.content_layers:
        feed[f"content_{l}"] = own[l] * 0.5 + 0.3 * rng.random(own[l].shape)
    for l in cfg.hist_layers:
        feed[f"hist_{l}"] = ref.quantiles(style[l], cfg.quantiles) * 1.5 + 0.2
    feed["term_weights"] = np.array([0.5, 2.0, 3.0, 0.25, 7.0, 40.0])
    want = _run(whole, feed)
    losses, g, hist = tiled(stats, grad, small_weights, cfg, x, feed, inner)
    for l in cfg.hist_layers:          # the global ranks: the same targets as the whole image's
        np.testing.assert_array_equal(hist[l], feed[f"hist_target_{l}"])
    for t in TERMS:
        assert want[f"loss_{t}"] > 0, t
        assert abs(losses[t] - float(want[f"loss_{t}"])) <= 1e-10 * float(want[f"loss_{t}"]), t
    scale = np.max(np.abs(want["grad"]))
    assert np.max(np.abs(g - want["grad"])) <= 1e-10 * scale
    # each term alone too (a term's gradient could hide behind another's)
    for i, t in enumerate(TERMS):
        only = dict(feed, term_weights=np.eye(len(TERMS))[i] * feed["term_weights"])
        w1 = _run(whole, only)["grad"]
        _, g1, _ = tiled(stats, grad, small_weights, cfg, x, only, inner)
        assert np.max(np.abs(g1 - w1)) <= 1e-10 * np.max(np.abs(w1)), t


def _man(cfg):
    return {"content_layers": cfg.content_layers, "style_layers": cfg.style_layers,
            "shift_layers": [{"layer": l, "delta": d} for l, d in cfg.shift_layers.items()],
            "hist_layers": cfg.hist_layers, "quantiles": cfg.quantiles}
