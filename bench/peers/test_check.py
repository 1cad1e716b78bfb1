"""The exported objective against the independent PyTorch implementation (torch_objective.py), on the real hed
weights and the bundled images, fed exactly as the Rust runtime feeds it: the fuchun binary builds the inputs
(`fuchun bench --peer-worker`: per-layer normalised weights, style targets, histogram targets matched from the
evaluated image by prelude.onnx and the radix sort), evaluates twice and dumps its feed, gradient and losses.
Then: (1) objective.onnx through onnxruntime's Python API on that feed reproduces the binary's own results;
(2) the PyTorch objective on the same feed agrees in loss (every term, every layer) and gradient to float32
tolerance; (3) the PyTorch histogram matching of the graph's own activations reproduces the runtime's targets.

Run by `make peers` (bench/peers/.venv); skipped when torch, the binary or the model is missing.
"""
from __future__ import annotations

import os
import subprocess

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

import common  # noqa: E402
import torch_objective as to  # noqa: E402

FUCHUN = os.environ.get("FUCHUN_BIN", common.DEFAULT_FUCHUN)
MODEL = os.environ.get("FUCHUN_MODEL", common.DEFAULT_MODEL)
# 100 px: odd pooled sizes (25 -> 12 -> 6) exercise floor-mode pooling; 128 px: even everywhere.
SIZES = [100, 128]
# x = content + uniform noise (so the content term and its gradient are not zero)
NOISE = 0.1

pytestmark = pytest.mark.skipif(not (os.path.isfile(FUCHUN) and os.path.isfile(os.path.join(MODEL, "manifest.json"))),
                                reason="needs target/release/fuchun and models/out/vgg16-max (make build models)")


@pytest.fixture(scope="module")
def manifest():
    return common.load_manifest(MODEL)


@pytest.fixture(scope="module")
def objective(manifest):
    return to.TorchObjective(manifest, to.load_weights(manifest), dtype=torch.float32)


@pytest.fixture(scope="module", params=SIZES)
def dumped(request, manifest, tmp_path_factory):
    """The Rust runtime's feed, gradient and losses of its second evaluation of one image (the first re-matches
    the deeper histogram layers from its outputs, so the second is fed the matching of this very image)."""
    size = request.param
    out = tmp_path_factory.mktemp(f"dump{size}")
    cmd = [FUCHUN, "bench", "--peer-worker", "--sizes", str(size), "--model", MODEL, "--provider", "cpu",
           "--peer-noise", str(NOISE), "--content", os.path.join(common.ROOT, "examples", "tubingen.jpg"),
           "--style", os.path.join(common.ROOT, "examples", "fuchun.jpg")]
    r = subprocess.run(cmd, input=f"eval\neval\ndump {out}\nquit\n", capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    feed, tables, result = common.load_dump(str(out), manifest)
    assert result is not None
    return size, feed, tables, result


def ort_session(manifest, graph):
    """A session made as the Rust runtime makes it for this graph (the objective `Hot`, prelude `Occasional`:
    another optimisation level rounds the activations differently, which can swap the ranks of near-equal ones)."""
    path = os.path.join(MODEL, manifest["graphs"][graph]["file"])
    so = common.session_options(ort, hot=graph == "objective")
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def run_graph(manifest, feed):
    sess = ort_session(manifest, "objective")
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, feed)))


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def test_python_onnxruntime_reproduces_the_binary(manifest, dumped):
    _, feed, _, result = dumped
    out = run_graph(manifest, feed)
    assert abs(float(out["total"]) - result["total"]) <= 1e-5 * abs(result["total"])
    for t in manifest["terms"]:
        assert abs(float(out[f"loss_{t}"]) - result["terms"][t]) <= 1e-5 * abs(result["total"]), t
    assert rel(out["grad"], result["grad"]) <= 1e-5


def test_pytorch_objective_agrees_with_the_graph(manifest, objective, dumped):
    size, feed, _, _ = dumped
    out = run_graph(manifest, feed)
    tfeed = {k: torch.from_numpy(v) for k, v in feed.items() if k != "x"}
    total, terms, layers, grad = objective.evaluate(torch.from_numpy(feed["x"]), tfeed)
    total = float(total.detach())
    print(f"\n{size}px total graph {float(out['total']):.7g} torch {total:.7g}")
    assert abs(total - float(out["total"])) <= 1e-4 * abs(float(out["total"]))
    for t in manifest["terms"]:
        g, p = float(out[f"loss_{t}"]), float(terms[t].detach())
        print(f"  {t:<8} graph {g:.7g} torch {p:.7g}")
        # each term to 1e-4 of itself, or of the total for terms that are ~0 (content at a content-like x)
        assert abs(g - p) <= 1e-4 * max(abs(g), 1e-3 * abs(float(out["total"]))), t
    for group, v in layers.items():
        g = out[f"layers_{group}"]
        assert np.allclose(v.detach().numpy(), g, rtol=1e-4, atol=1e-7 * abs(float(out["total"]))), group
    g, p = out["grad"].astype(np.float64), grad.numpy().astype(np.float64)
    cos = float((g * p).sum() / np.sqrt((g * g).sum() * (p * p).sum()))
    err = rel(p, g)
    print(f"  grad: max |torch - graph| / max |graph| = {err:.2e}, cosine {cos:.9f}")
    assert err <= 1e-3 and cos >= 1 - 1e-6
    # and not trivially: every term contributes to the gradient
    assert np.abs(g).max() > 0 and all(float(terms[t].detach()) > 0 for t in ("style", "shift", "hist", "tv"))


def test_pytorch_matching_reproduces_the_runtime_targets(manifest, objective, dumped):
    """The runtime's radix-sort matching (hist_target_<layer>) equals the rank matching in torch of the same
    activations: relu1_1 from prelude.onnx (matched before the evaluation), deeper layers from the objective's
    feat_ outputs (matched after the previous evaluation of the same image)."""
    _, feed, tables, _ = dumped
    acts = {}
    prelude = manifest["graphs"].get("prelude")
    if prelude:
        sess = ort_session(manifest, "prelude")
        acts.update(zip([o.name[5:] for o in sess.get_outputs()], sess.run(None, {"x": feed["x"]})))
    out = run_graph(manifest, feed)
    acts.update({k[5:]: v for k, v in out.items() if k.startswith("feat_")})
    assert set(acts) == set(manifest["hist_layers"])
    sizes = {l: acts[l].shape[2:] for l in acts}
    full = to.expanded_tables(manifest, tables, sizes)
    for l, a in acts.items():
        mine = to.match_histograms(torch.from_numpy(a), full[l]).numpy()
        want = feed[f"hist_target_{l}"]
        assert np.allclose(mine, want, rtol=1e-5, atol=1e-5 * np.abs(want).max()), l
