"""What the peers share: the manifest, the inputs the Rust runtime dumped (`fuchun bench --peer-worker`, command
`dump DIR`), ONNX Runtime sessions made as the Rust runtime makes them, the host's ISA and peak RSS."""
from __future__ import annotations

import json
import os

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
DEFAULT_MODEL = os.path.join(ROOT, "models", "out", "vgg16-max")
DEFAULT_FUCHUN = os.path.join(ROOT, "target", "release", "fuchun")


def load_manifest(model_dir):
    with open(os.path.join(model_dir, "manifest.json")) as f:
        m = json.load(f)
    m["dir"] = model_dir
    return m


def objective_input_names(manifest):
    return [i["name"] for i in manifest["graphs"]["objective"]["inputs"]]


def load_dump(dump_dir, manifest):
    """x, the objective's feed (every graph input, as the Rust runtime fed its last evaluation), the style's
    quantile tables (layer -> [C, K]) and, when the dump has them, the runtime's own results of that evaluation."""
    feed = {}
    for name in objective_input_names(manifest):
        path = os.path.join(dump_dir, name + ".npy")
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: the dump lacks the graph input {name}")
        feed[name] = np.load(path)
    tables = {l: np.load(os.path.join(dump_dir, f"quantiles_{l}.npy")) for l in manifest["hist_layers"]}
    result = None
    if os.path.exists(os.path.join(dump_dir, "losses.json")):
        with open(os.path.join(dump_dir, "losses.json")) as f:
            result = json.load(f)
        result["grad"] = np.load(os.path.join(dump_dir, "grad.npy"))
    return feed, tables, result


def session_options(ort, threads=0, spinning=None, hot=True, affinities=None):
    """Session options as src/engine/runtime.rs sets them: for the objective (`SessionUse::Hot`) every graph
    optimisation and the CPU arena, for prelude.onnx and features.onnx (`hot=False`, `SessionUse::Occasional`) the
    extended level without the arena; memory pattern off, ONNX Runtime's default intra-op threads unless `threads`.
    `spinning` (True/False) sets `session.intra_op.allow_spinning`; None leaves ONNX Runtime's default."""
    so = ort.SessionOptions()
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if hot
                                   else ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED)
    so.enable_mem_pattern = False
    so.enable_cpu_mem_arena = hot
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    if spinning is not None:
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    if affinities:
        so.add_session_config_entry("session.intra_op_thread_affinities", affinities)
    return so


def host_isa():
    """'AVX-512' / 'AVX2' / 'no AVX2' from /proc/cpuinfo, with the model name and the core count."""
    flags, model = set(), "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
                elif line.startswith("model name") and model == "unknown CPU":
                    model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    extra = [f for f in ("avx512_bf16", "avx512_vnni", "amx_tile", "fma") if f in flags]
    return isa, model, os.cpu_count(), extra


def peak_rss_bytes(pid="self"):
    """VmHWM of a process (bytes), None if unreadable."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None
