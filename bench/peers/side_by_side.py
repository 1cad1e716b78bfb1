"""Side-by-side bench: fuchun's evaluation, the PyTorch implementation of the same objective and the same graph
through ONNX Runtime's Python API, in alternating rounds of one evaluation each, on the same inputs.

    bench/peers/.venv/bin/python bench/peers/side_by_side.py [--sizes 128,256,512] [--rounds 5]
    ./target/release/fuchun bench --peers            (the same, through the binary)

Per size, every implementation is a process of its own (so its peak RSS is its own, read from /proc/PID/status
VmHWM at the end of the size): fuchun's (`fuchun bench --peer-worker`) builds the inputs as `fuchun bench` does
and dumps them after its warm-up evaluation; the Python peers (worker.py) load that dump, so all run on the same
x, targets, weights and histogram tables. Each takes --warmup evaluations (2), then `--rounds` rounds of one
evaluation each, the order rotated every round. What one evaluation is:
  fuchun  prelude.onnx + relu1_1 matching (radix sort) + objective.onnx + relu4_1 matching from its outputs
  torch   forward, both histogram layers matched to the image's own activations (torch.argsort), loss, autograd
  ort     objective.onnx alone, fed the dump (session options as the Rust runtime's, spinning off)

--impl adds or replaces implementations: KIND[@PATH][:key=value...], e.g. `fuchun@/tmp/old-fuchun`,
`fuchun:threads=1`, `torch:threads=1`, `torch:match=off`, `torch:env.OMP_WAIT_POLICY=PASSIVE` (env.NAME=VALUE
sets the worker's environment), `ort:spinning=default` (ONNX Runtime's: on), `ort:threads=1`,
`ort:affinities=2`, `ort:config.session.set_denormal_as_zero=1` (any session configuration entry),
`ort:provider=openvino:python=PATH`, `fuchun:model=DIR` or `ort:model=DIR` (another export of the objective, with
the same inputs: the exporter before a change). A `name=` key labels it. The reference of the ratio column and of the targets
is the torch implementation with the lowest median at that size.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile

import common

# PyTorch twice: its defaults, and with OpenMP's passive wait (its threads sleep instead of spinning when idle,
# which was 1.2-2.7x faster on the project's shared 2-core machine); the ratio column and the targets take the
# faster of the two.
DEFAULT_IMPLS = ["fuchun", "torch", "torch:env.OMP_WAIT_POLICY=PASSIVE:name=torch (OMP passive wait)", "ort"]


class Impl:
    def __init__(self, spec, a):
        self.spec = spec
        head, *opts = spec.split(":")
        self.kind, _, path = head.partition("@")
        if self.kind not in ("fuchun", "torch", "ort"):
            raise SystemExit(f"--impl {spec}: unknown kind {self.kind!r} (fuchun, torch or ort)")
        self.opts = dict(o.split("=", 1) for o in opts)
        self.name = self.opts.pop("name", spec)
        self.a = a
        self.path = path or (a.fuchun if self.kind == "fuchun" else None)
        # another export of the same objective (e.g. the exporter before a change), same inputs
        self.model = os.path.abspath(self.opts.pop("model", a.model))
        self.proc = None
        self.times, self.match, self.totals, self.errors, self.info = [], [], [], [], {}

    def command(self, size):
        a, o = self.a, self.opts
        if self.kind == "fuchun":
            cmd = [self.path, "bench", "--peer-worker", "--sizes", str(size), "--model", self.model, "--content",
                   a.content, "--style", a.style, "--provider", "cpu", "--peer-noise", str(a.noise)]
            if "threads" in o:
                cmd += ["--threads", o["threads"]]
            return cmd
        python = o.get("python", sys.executable)
        cmd = [python, os.path.join(common.HERE, "worker.py"), self.kind, "--model", self.model]
        if "threads" in o:
            cmd += ["--threads", o["threads"]]
        if self.kind == "torch" and o.get("match") == "off":
            cmd.append("--no-match")
        if self.kind == "ort":
            for key in ("spinning", "provider", "affinities"):
                if key in o:
                    cmd += [f"--{key}", o[key]]
            cmd += [f"--config={k[7:]}={v}" for k, v in o.items() if k.startswith("config.")]
        return cmd

    def start(self, size):
        env = dict(os.environ)
        env.update({k[4:]: v for k, v in self.opts.items() if k.startswith("env.")})
        self.proc = subprocess.Popen(self.command(size), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, cwd=common.HERE, env=env)
        self.times, self.match, self.totals, self.errors, self.rss = [], [], [], [], None

    def ask(self, line):
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        reply = self.proc.stdout.readline()
        if not reply:
            raise SystemExit(f"{self.name}: the worker exited (command {line!r}); see its messages above")
        r = json.loads(reply)
        if "error" in r:
            raise SystemExit(f"{self.name}: {r['error']}")
        return r

    def eval(self, record=True):
        r = self.ask("eval")
        if record:
            self.times.append(r["seconds"])
            self.match.append(r.get("match_seconds", 0.0))
            self.totals.append(r["total"])
            if r.get("grad_error") is not None:
                self.errors.append(r["grad_error"])
        return r

    def stop(self):
        self.rss = common.peak_rss_bytes(self.proc.pid)
        self.proc.stdin.write("quit\n")
        self.proc.stdin.flush()
        self.proc.wait(timeout=120)


def fmt_mb(b):
    return f"{b / 1e6:.0f}" if b else "?"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="128,256,512")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2, help="evaluations per implementation before the rounds "
                   "(PyTorch's oneDNN builds its kernels for a new shape in its first one or two)")
    p.add_argument("--fuchun", default=common.DEFAULT_FUCHUN)
    p.add_argument("--model", default=common.DEFAULT_MODEL)
    p.add_argument("--content", default=os.path.join(common.ROOT, "examples", "tubingen.jpg"))
    p.add_argument("--style", default=os.path.join(common.ROOT, "examples", "fuchun.jpg"))
    p.add_argument("--noise", type=float, default=0.0, help="x = content + uniform noise of this amplitude")
    p.add_argument("--impl", action="append", default=None, help="implementation spec (see above); repeatable")
    p.add_argument("--json", help="also write every measurement to this file")
    a = p.parse_args()
    a.model, a.content, a.style, a.fuchun = map(os.path.abspath, (a.model, a.content, a.style, a.fuchun))
    m = common.load_manifest(a.model)
    impls = [Impl(s, a) for s in (a.impl or DEFAULT_IMPLS)]
    if not any(i.kind == "fuchun" for i in impls):
        raise SystemExit("at least one fuchun implementation is needed: it makes the inputs")
    isa, cpu, cores, extra = common.host_isa()
    import onnxruntime
    print(f"side-by-side bench, {datetime.datetime.now().isoformat(timespec='minutes')}: host ISA {isa} "
          f"({cpu}, {cores} cores{', ' + ' '.join(extra) if extra else ''}); ONNX Runtime {onnxruntime.__version__} "
          f"(Python); model {m['dir']} ({m['architecture']} {m['pooling']}, terms {', '.join(m['terms'])})")
    print(f"{a.rounds} rounds of one evaluation each per implementation, order rotated each round, after {a.warmup} "
          f"warm-up(s); GFLOP/s = objective_flops_per_pixel ({m['objective_flops_per_pixel']:.0f}) x pixels / median")
    report = {"date": datetime.datetime.now().isoformat(), "isa": isa, "cpu": cpu, "cores": cores, "sizes": []}
    for size in [int(s) for s in a.sizes.split(",") if s]:
        with tempfile.TemporaryDirectory(prefix=f"fuchun-peers-{size}-") as dump:
            for i in impls:
                i.start(size)
            first = next(i for i in impls if i.kind == "fuchun")
            for i in impls:
                if i.kind == "fuchun":
                    for _ in range(max(a.warmup, 1)):
                        i.eval(record=False)
            first.ask(f"dump {dump}")
            for i in impls:
                if i.kind != "fuchun":
                    i.info = i.ask(f"load {dump}")
                    for _ in range(a.warmup):
                        i.eval(record=False)
            for r in range(a.rounds):
                k = r % len(impls)
                for i in impls[k:] + impls[:k]:
                    i.eval()
            for i in impls:
                i.stop()
        pixels = size * size
        print(f"\n{size}x{size}:")
        print(f"{'implementation':<34} {'median s':>9} {'min':>7} {'max':>7} {'match s':>8} {'GFLOP/s':>8} "
              f"{'peak RSS MB':>11} {'/ best torch':>12} {'total loss':>12} {'grad err':>9}")
        row = {"size": size, "impls": {}}
        torches = [i for i in impls if i.kind == "torch"]
        ref = min(torches, key=lambda i: statistics.median(i.times)) if torches else None
        ref_med = statistics.median(ref.times) if ref else None
        for i in impls:
            med = statistics.median(i.times)
            gflops = m["objective_flops_per_pixel"] * pixels / med / 1e9
            ratio = f"{med / ref_med:.2f}" if ref_med else "-"
            print(f"{i.name:<34} {med:>9.3f} {min(i.times):>7.3f} {max(i.times):>7.3f} "
                  f"{statistics.median(i.match):>8.3f} {gflops:>8.1f} {fmt_mb(i.rss):>11} {ratio:>12} "
                  f"{statistics.median(i.totals):>12.6g} {max(i.errors) if i.errors else float('nan'):>9.1e}")
            row["impls"][i.name] = {"spec": i.spec, "seconds": i.times, "median": med, "match_seconds": i.match,
                                    "gflops": gflops, "peak_rss_bytes": i.rss, "totals": i.totals,
                                    "grad_errors": i.errors, "info": i.info}
        report["sizes"].append(row)
        if ref_med:
            for i in impls:
                if i.kind == "fuchun" and size >= 256:
                    med = statistics.median(i.times)
                    print(f"target at {size}²: {i.name} {med:.3f} s ≤ {ref.name} {ref_med:.3f} s: "
                          f"{'met' if med <= ref_med else 'NOT met'} ({med / ref_med:.2f}x)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
