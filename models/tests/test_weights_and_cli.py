"""Weight sources (hed, keras-h5, npz, random) and the command line's handling of bad input."""
import json
import os
import subprocess
import sys

import h5py
import numpy as np
import onnxruntime as ort
import pytest

from fuchun_export import reference as ref
from fuchun_export.weights import _TORCH_INDEX, conv_names, load_keras_h5, load_npz, random_weights

MODELS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(os.path.dirname(MODELS), "examples")


def cli(*args):
    return subprocess.run([sys.executable, "-m", "fuchun_export", *args], cwd=MODELS, capture_output=True,
                          text=True, timeout=600)


def _session(path):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def test_real_hed_weights_export_and_give_finite_loss_and_gradient(tmp_path):
    from PIL import Image
    r = cli("--weights", "hed", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    man = json.load(open(tmp_path / "manifest.json"))
    assert man["weights"]["kind"] == "hed" and len(man["weights"]["sha256"]) == 64
    assert man["architecture"] == "vgg16" and man["preprocess"]["channel_order"] == "bgr"
    assert man["preprocess"]["mean"] == [104.00699, 116.66877, 122.67892]
    assert abs(man["forward_flops_per_pixel"] - 574848) < 1
    content = np.asarray(Image.open(os.path.join(EXAMPLES, "tubingen.jpg")).convert("RGB").resize((96, 72)),
                         np.float32).transpose(2, 0, 1)[None] / 255
    style = np.asarray(Image.open(os.path.join(EXAMPLES, "fuchun.jpg")).convert("RGB").resize((128, 68)),
                       np.float32).transpose(2, 0, 1)[None] / 255
    fs = _session(str(tmp_path / "features.onnx"))
    names = [o.name for o in fs.get_outputs()]
    fc = dict(zip(names, fs.run(None, {"x": content})))
    fst = dict(zip(names, fs.run(None, {"x": style})))
    feed = {"x": content + np.float32(0.05) * np.random.default_rng(0).standard_normal(content.shape).astype(np.float32)}
    for l in man["content_layers"]:
        feed[f"content_{l}"] = fc[f"feat_{l}"]
    for l in man["style_layers"]:
        feed[f"gram_{l}"] = ref.gram(fst[f"feat_{l}"]).astype(np.float32)
    for item in man["shift_layers"]:
        gh, gv = ref.shifted_grams(fst[f"feat_{item['layer']}"], item["delta"])
        feed[f"shift_h_{item['layer']}"], feed[f"shift_v_{item['layer']}"] = gh.astype(np.float32), gv.astype(np.float32)
    for l in man["hist_layers"]:
        table = ref.quantiles(fst[f"feat_{l}"], man["quantiles"])
        feed[f"hist_target_{l}"] = ref.matched(fc[f"feat_{l}"], table).astype(np.float32)
    for k, v in man["default_layer_weights"].items():
        feed[f"{k}_layer_weights"] = np.asarray(v, np.float32)
    feed["term_weights"] = np.asarray([man["default_term_weights"][t] for t in man["terms"]], np.float32)
    feed["temporal_prev"] = content          # x is the content with noise: the temporal term is positive
    feed["temporal_weights"] = np.ones((1, 1) + content.shape[2:], np.float32)
    obj = _session(str(tmp_path / "objective.onnx"))
    res = dict(zip([o.name for o in obj.get_outputs()], obj.run(None, feed)))
    assert np.isfinite(res["total"]) and res["total"] > 0
    assert res["grad"].shape == content.shape and np.all(np.isfinite(res["grad"]))
    assert np.abs(res["grad"]).max() > 0
    for t in man["terms"]:
        assert np.isfinite(res[f"loss_{t}"]) and res[f"loss_{t}"] > 0, t


def _save_keras(path, w, layout_names):
    with h5py.File(path, "w") as f:
        for name in conv_names(w.arch):
            b, i = name[4], name[6:]
            g = f.create_group(f"block{b}_conv{i}")
            g.create_dataset(f"block{b}_conv{i}_W_1:0" if layout_names else "kernel:0",
                             data=w.kernels[name].transpose(2, 3, 1, 0))   # OIHW -> HWIO
            g.create_dataset(f"block{b}_conv{i}_b_1:0" if layout_names else "bias:0", data=w.biases[name])


@pytest.mark.parametrize("arch", ["vgg16", "vgg19"])
def test_keras_h5_detects_architecture_and_converts_layout(tmp_path, arch):
    w = random_weights(arch, seed=2, width_divisor=16)
    _save_keras(tmp_path / "w.h5", w, layout_names=arch == "vgg16")
    got = load_keras_h5(str(tmp_path / "w.h5"))
    assert got.arch == arch and got.preprocess.channel_order == "bgr"
    for name in conv_names(arch):
        np.testing.assert_array_equal(got.kernels[name], w.kernels[name])
    r = cli("--weights", "keras-h5", str(tmp_path / "w.h5"), "--style-layers", "relu1_1,relu5_4" if arch == "vgg19"
            else "relu1_1,relu5_3", "--out", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    assert json.load(open(tmp_path / "out" / "manifest.json"))["architecture"] == arch


@pytest.mark.parametrize("naming", ["torchvision", "plain", "hwio"])
def test_npz_archives(tmp_path, naming):
    w = random_weights("vgg16", seed=3, width_divisor=16)
    arrays = {}
    for name, idx in zip(conv_names("vgg16"), _TORCH_INDEX["vgg16"]):
        if naming == "torchvision":
            arrays[f"features.{idx}.weight"], arrays[f"features.{idx}.bias"] = w.kernels[name], w.biases[name]
        elif naming == "plain":
            arrays[f"{name}.weight"], arrays[f"{name}.bias"] = w.kernels[name], w.biases[name]
        else:
            arrays[f"{name}/kernel"], arrays[f"{name}/bias"] = w.kernels[name].transpose(2, 3, 1, 0), w.biases[name]
    if naming == "plain":   # Caffe-style preprocessing given in the archive
        arrays.update({"meta.mean": np.array([1.0, 2.0, 3.0]), "meta.bgr": np.array(1), "meta.scale": np.array(255.0)})
    np.savez(tmp_path / "w.npz", **arrays)
    got = load_npz(str(tmp_path / "w.npz"))
    for name in conv_names("vgg16"):
        np.testing.assert_array_equal(got.kernels[name], w.kernels[name])
    if naming == "plain":
        assert got.preprocess.channel_order == "bgr" and got.preprocess.mean == (1.0, 2.0, 3.0)
    else:
        assert got.preprocess.channel_order == "rgb" and got.preprocess.scale == 1.0
    # preprocessing is applied exactly as the numpy reference does it
    r = cli("--weights", "npz", str(tmp_path / "w.npz"), "--out", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    x = np.random.default_rng(0).random((1, 3, 32, 32))
    fs = _session(str(tmp_path / "out" / "features.onnx"))
    out = dict(zip([o.name for o in fs.get_outputs()], fs.run(None, {"x": x.astype(np.float32)})))
    want = ref.vgg_forward(x, got, ["relu1_1"])["relu1_1"]
    assert np.max(np.abs(out["feat_relu1_1"] - want)) <= 1e-4 * np.max(np.abs(want))


def test_avg_pooling_and_vgg19_random(tmp_path):
    r = cli("--weights", "random", "--arch", "vgg19", "--width-divisor", "16", "--pooling", "avg",
            "--style-layers", "relu1_1,relu3_4", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    man = json.load(open(tmp_path / "manifest.json"))
    assert man["pooling"] == "avg" and man["architecture"] == "vgg19"
    x = np.random.default_rng(1).random((1, 3, 37, 45))
    w = random_weights("vgg19", 0, 16)
    fs = _session(str(tmp_path / "features.onnx"))
    out = dict(zip([o.name for o in fs.get_outputs()], fs.run(None, {"x": x.astype(np.float32)})))["feat_relu4_1"]
    want = ref.vgg_forward(x, w, ["relu4_1"], "avg")["relu4_1"]
    assert np.max(np.abs(out - want)) <= 1e-4 * np.max(np.abs(want))
    obj = __import__("onnx").load(str(tmp_path / "objective.onnx"))
    assert "MaxPool" not in {n.op_type for n in obj.graph.node}


@pytest.mark.parametrize("case", ["missing", "corrupt", "unknown-layer", "wrong-arch", "npz-corrupt",
                                  "unknown-source", "bad-shift"])
def test_bad_input_gives_clear_error(tmp_path, case):
    if case == "missing":
        args, needle = ["--weights", "keras-h5", str(tmp_path / "nope.h5")], "does not exist"
    elif case == "corrupt":
        (tmp_path / "bad.h5").write_bytes(b"\x89HDF\r\n" + os.urandom(1000))
        args, needle = ["--weights", "keras-h5", str(tmp_path / "bad.h5")], "not a readable HDF5"
    elif case == "unknown-layer":
        args, needle = ["--weights", "random", "--style-layers", "relu1_1,relu9_9"], "unknown layer 'relu9_9'"
    elif case == "wrong-arch":
        with h5py.File(tmp_path / "resnet.h5", "w") as f:
            f.create_dataset("block1_conv1/kernel:0", data=np.zeros((7, 7, 3, 64), np.float32))
            f.create_dataset("block1_conv1/bias:0", data=np.zeros(64, np.float32))
        args, needle = ["--weights", "keras-h5", str(tmp_path / "resnet.h5")], "expected [out, 3, 3, 3]"
    elif case == "npz-corrupt":
        (tmp_path / "w.npz").write_bytes(b"PK\x03\x04garbage")
        args, needle = ["--weights", "npz", str(tmp_path / "w.npz")], "not a readable .npz"
    elif case == "unknown-source":
        args, needle = ["--weights", "caffe"], "unknown weight source 'caffe'"
    else:
        args, needle = ["--weights", "random", "--shift-layers", "relu3_1"], "LAYER:DELTA"
    r = cli(*args, "--out", str(tmp_path / "out"))
    assert r.returncode != 0
    assert needle in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_refinement_keeps_the_shallow_layers_and_is_named_by_its_manifest(tmp_path):
    """The finest scale's objective (refine/): the layers down to relu3_1 with their weights and deltas; none when a
    term would lose every layer, or when nothing is left out; a bad layer name is a clear error."""
    from fuchun_export.export import refine_config
    from fuchun_export.graph import ConfigError, LossConfig
    cfg = LossConfig()
    r = refine_config(cfg, "vgg16", "relu3_1")
    assert r.content_layers == ["relu2_1", "relu3_1"] and r.content_weights == [0.3, 1.0]
    assert r.style_layers == ["relu1_1", "relu2_1", "relu3_1"]
    assert r.shift_layers == {"relu2_1": 8, "relu3_1": 4} and r.hist_layers == ["relu1_1"]
    assert refine_config(LossConfig(content_layers=["relu4_2"]), "vgg16", "relu3_1") is None
    assert refine_config(cfg, "vgg16", "relu5_1") is None
    with pytest.raises(ConfigError, match="not a layer"):
        refine_config(cfg, "vgg16", "relu9_1")
    out = tmp_path / "m"
    r = cli("--weights", "random", "--width-divisor", "8", "--out", str(out))
    assert r.returncode == 0, r.stderr
    man = json.load(open(out / "manifest.json"))
    sub = json.load(open(out / "refine" / "manifest.json"))
    assert man["refine"]["dir"] == "refine" and man["refine"]["deepest_layer"] == "relu3_1"
    assert "refine" not in sub and sub["style_layers"] == ["relu1_1", "relu2_1", "relu3_1"]
    assert sub["forward_flops_per_pixel"] < 0.5 * man["forward_flops_per_pixel"]
    import hashlib
    assert man["refine"]["manifest_sha256"] == hashlib.sha256(open(out / "refine" / "manifest.json", "rb").read()).hexdigest()
    # exported again without it: the stale refinement goes
    r = cli("--weights", "random", "--width-divisor", "8", "--out", str(out), "--refine-deepest", "")
    assert r.returncode == 0, r.stderr
    assert not (out / "refine").exists() and "refine" not in json.load(open(out / "manifest.json"))
