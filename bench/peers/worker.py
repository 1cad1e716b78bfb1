"""One implementation of the objective as a long-lived process, driven by side_by_side.py over stdin/stdout (one
JSON line per answer), so that its peak RSS is its own:

    load DUMP_DIR   read x, the feed and the quantile tables the Rust runtime dumped; set up; answer {"ok": ...}
    eval            one evaluation (loss + gradient); answer {"seconds": s, "match_seconds": s, "total": loss}
    quit

Kinds: `torch` (torch_objective.py; the histogram targets re-matched to the image's own activations in every
evaluation, as the runtime does, unless --no-match) and `ort` (objective.onnx through onnxruntime's Python API,
session options as the Rust runtime's, the feed as dumped: the graph alone).
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

import common


def answer(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


class TorchPeer:
    def __init__(self, a, manifest):
        import torch
        import torch_objective as to
        if a.threads:
            torch.set_num_threads(a.threads)
        self.torch, self.to = torch, to
        self.obj = to.TorchObjective(manifest, to.load_weights(manifest))
        self.m, self.match = manifest, not a.no_match

    def load(self, feed, tables):
        t = self.torch
        self.x = t.from_numpy(feed["x"])
        self.feed = {k: t.from_numpy(v) for k, v in feed.items() if k != "x"}
        sizes = {l: tuple(feed[f"hist_target_{l}"].shape[2:]) for l in self.m["hist_layers"]}
        self.tables = self.to.expanded_tables(self.m, tables, sizes) if self.match else None
        return {"torch": t.__version__, "threads": t.get_num_threads(),
                "cpu_capability": t.backends.cpu.get_cpu_capability()}

    def eval(self):
        total, _, _, grad = self.obj.evaluate(self.x, self.feed, self.tables)
        self.last_grad = grad.numpy()
        return float(total), self.obj.match_seconds


class OrtPeer:
    def __init__(self, a, manifest):
        import onnxruntime as ort
        self.ort, self.a, self.m = ort, a, manifest

    def load(self, feed, tables):
        ort, a = self.ort, self.a
        so = common.session_options(ort, a.threads, {"on": True, "off": False}.get(a.spinning), True, a.affinities)
        for entry in a.config:
            key, _, value = entry.partition("=")
            so.add_session_config_entry(key, value)
        path = f"{self.m['dir']}/{self.m['graphs']['objective']['file']}"
        if a.provider == "openvino":
            # the onnxruntime-openvino build (its own venv: it replaces the onnxruntime package), FP32 asked for
            # explicitly (OpenVINO's CPU plugin may default to bf16 on CPUs that have it)
            providers = [("OpenVINOExecutionProvider", {"device_type": "CPU", "precision": "FP32"}),
                         "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        self.sess = ort.InferenceSession(path, so, providers=providers)
        if a.provider == "openvino" and "OpenVINOExecutionProvider" not in self.sess.get_providers():
            raise SystemExit(f"OpenVINOExecutionProvider did not load (available: {ort.get_available_providers()})")
        self.feed = feed
        return {"onnxruntime": ort.__version__, "providers": self.sess.get_providers()}

    def eval(self):
        names = ["total", "grad"] if self.a.total_and_grad else [o.name for o in self.sess.get_outputs()]
        out = dict(zip(names, self.sess.run(names, self.feed)))
        self.last_grad = out["grad"]
        return float(out["total"]), 0.0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", choices=["torch", "ort"])
    p.add_argument("--model", default=common.DEFAULT_MODEL)
    p.add_argument("--threads", type=int, default=0, help="intra-op threads (0: the library's default)")
    p.add_argument("--no-match", action="store_true", help="torch: keep the dumped histogram targets")
    p.add_argument("--spinning", choices=["default", "on", "off"], default="off",
                   help="ort: session.intra_op.allow_spinning (off, as the Rust runtime sets it; default: "
                        "ONNX Runtime's, on)")
    p.add_argument("--affinities", default=None, help="ort: session.intra_op_thread_affinities")
    p.add_argument("--provider", choices=["cpu", "openvino"], default="cpu", help="ort: execution provider")
    p.add_argument("--config", action="append", default=[], metavar="KEY=VALUE",
                   help="ort: a session configuration entry (e.g. session.set_denormal_as_zero=1)")
    p.add_argument("--total-and-grad", action="store_true",
                   help="ort: fetch only total and grad (default: every output, as the Rust runtime)")
    a = p.parse_args()
    m = common.load_manifest(a.model)
    peer = TorchPeer(a, m) if a.kind == "torch" else OrtPeer(a, m)
    ref = None
    for line in sys.stdin:
        cmd = line.split()
        if not cmd:
            continue
        if cmd[0] == "load":
            feed, tables, ref = common.load_dump(cmd[1], m)
            answer({"ok": True, **peer.load(feed, tables)})
        elif cmd[0] == "eval":
            t = time.perf_counter()
            total, match = peer.eval()
            seconds = time.perf_counter() - t
            # the gradient against the one the fuchun binary dumped for the same x (not timed)
            g = peer.last_grad
            err = float(np.abs(g - ref["grad"]).max() / np.abs(ref["grad"]).max()) if ref else None
            answer({"seconds": seconds, "match_seconds": match, "total": total, "grad_error": err})
        elif cmd[0] == "quit":
            break
        else:
            answer({"error": f"unknown command {cmd[0]!r}"})
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
