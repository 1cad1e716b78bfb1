#!/usr/bin/env bash
# GPU check for any Linux machine with an NVIDIA GPU and the onnxruntime-gpu wheel (not run in CI).
#
#   scripts/gpu-check.sh [--binary PATH] [--ort-library PATH] [--model DIR] [--size N] [--iterations N]
#                        [--out DIR] [--no-fp16]
#
# Without --binary it builds `cargo build --release --features cuda,tensorrt` first; with --binary (a prebuilt
# fuchun, e.g. copied to a machine without a Rust toolchain) nothing is built. Then:
#   1. fuchun doctor: a real session of the graphs on CPU, CUDA and TensorRT (ok / failed and why, placement)
#   2. fuchun bench (evaluation speed only) on CUDA, TensorRT FP32 and TensorRT FP16
#   3. fuchun stylize of the example on CPU, CUDA, TensorRT FP32 and FP16 with the same budget; the final loss of
#      each GPU run must be within 1 % of the CPU's; evaluations per second and the partition of each run
# Exit status ≠ 0 when a step fails or a loss differs by more than 1 %. Everything is logged under --out.
set -uo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/.." && pwd)"
binary=""
ort=""
model="$repo/models/out/vgg16-max"
size=256
iterations=60
out="$repo/out/gpu-check"
fp16=1

usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
die() { echo "gpu-check: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
    case "$1" in
        --binary) binary="${2:-}"; shift 2 ;;
        --ort-library) ort="${2:-}"; shift 2 ;;
        --model) model="${2:-}"; shift 2 ;;
        --size) size="${2:-}"; shift 2 ;;
        --iterations) iterations="${2:-}"; shift 2 ;;
        --out) out="${2:-}"; shift 2 ;;
        --no-fp16) fp16=0; shift ;;
        -h|--help) usage 0 ;;
        *) echo "unknown option $1" >&2; usage 2 ;;
    esac
done

command -v python3 >/dev/null || die "python3 is needed (it reads the traces; it also finds onnxruntime-gpu)"
if [ -z "$binary" ]; then
    command -v cargo >/dev/null || die "no cargo here: pass --binary PATH (a fuchun built with --features cuda,tensorrt)"
    (cd "$repo" && cargo build --release --locked --features cuda,tensorrt) || die "build failed"
    binary="${CARGO_TARGET_DIR:-$repo/target}/release/fuchun"
fi
[ -x "$binary" ] || die "no executable fuchun at $binary"
if [ -z "$ort" ]; then
    ort="${ORT_DYLIB_PATH:-}"
fi
if [ -z "$ort" ]; then
    capi="$(python3 -c 'import onnxruntime, os; print(os.path.join(os.path.dirname(onnxruntime.__file__), "capi"))' 2>/dev/null || true)"
    [ -n "$capi" ] && ort="$(ls "$capi"/libonnxruntime.so* 2>/dev/null | sort | tail -n 1)"
fi
[ -n "$ort" ] && [ -f "$ort" ] || die "ONNX Runtime not found: pass --ort-library PATH (libonnxruntime.so of onnxruntime-gpu)"
# CUDA, cuDNN and TensorRT from pip's nvidia-* / tensorrt wheels (PyTorch's, or onnxruntime-gpu[cuda,cudnn]): ONNX
# Runtime's Python package loads them itself, a Rust program finds them only on the loader's path (on the H200 of
# 2026-12-04 CUDA 13's were in site-packages/nvidia/cu13/lib and nvidia/cudnn/lib)
pylibs="$(python3 -c '
import glob, os, sys
dirs = set()
for p in sys.path:
    for pat in ("nvidia/*/lib", "tensorrt_libs"):
        dirs.update(d for d in glob.glob(os.path.join(p, pat)) if os.path.isdir(d))
print(":".join(sorted(dirs)))' 2>/dev/null || true)"
[ -n "$pylibs" ] && export LD_LIBRARY_PATH="$pylibs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
[ -f "$model/manifest.json" ] || die "no exported model in $model: run \`make models\` or pass --model DIR"
content="$repo/examples/tubingen.jpg"; style="$repo/examples/fuchun.jpg"
[ -f "$content" ] && [ -f "$style" ] || die "the example images are missing ($content, $style)"
mkdir -p "$out" || die "cannot create $out"
cache="$out/tensorrt-cache"

echo "== gpu-check: binary $binary, ONNX Runtime $ort, model $model, ${size}px × $iterations iterations, logs in $out"
[ -n "$pylibs" ] && echo "   libraries from Python wheels on LD_LIBRARY_PATH: $pylibs"
command -v nvidia-smi >/dev/null && nvidia-smi -L
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
common=(--model "$model" --ort-library "$ort")

echo; echo "== doctor"
"$binary" doctor --no-broker "${common[@]}" 2>&1 | tee "$out/doctor.txt" || fail "doctor"

# name | provider flags
runs=("cpu|--provider cpu" "cuda|--provider cuda" "tensorrt-fp32|--provider tensorrt --tensorrt-cache $cache")
[ "$fp16" = 1 ] && runs+=("tensorrt-fp16|--provider tensorrt --tensorrt-fp16 --tensorrt-cache $cache")

echo; echo "== bench (evaluation speed at 256² and 512²)"
for r in "${runs[@]}"; do
    name="${r%%|*}"; flags="${r#*|}"
    [ "$name" = cpu ] && continue
    echo "-- $name"
    # shellcheck disable=SC2086
    FUCHUN_LOG=info,ort=error "$binary" bench "${common[@]}" $flags --sizes 256,512 --repeats 3 \
        --memory-iterations 0 --schedule-size 0 --warm-size 0 >"$out/bench-$name.txt" 2>"$out/bench-$name.log" \
        || { fail "bench on $name (see $out/bench-$name.log)"; tail -n 5 "$out/bench-$name.log"; continue; }
    cat "$out/bench-$name.txt"
done

echo; echo "== stylize the example on each provider (same budget, no early stop)"
for r in "${runs[@]}"; do
    name="${r%%|*}"; flags="${r#*|}"
    # shellcheck disable=SC2086
    FUCHUN_LOG=info,ort=error "$binary" stylize "${common[@]}" $flags --content "$content" --style "$style" \
        -o "$out/stylized-$name.png" --image-size "$size" --iterations "$iterations" --tol 0 --seed 0 -q \
        --trace "$out/trace-$name.jsonl" >"$out/stylize-$name.txt" 2>"$out/stylize-$name.log" \
        || { fail "stylize on $name (see $out/stylize-$name.log)"; tail -n 5 "$out/stylize-$name.log"; continue; }
done

python3 - "$out" "${runs[@]}" <<'PY' || failures=$((failures + 1))
import json, re, sys, os
out, runs = sys.argv[1], [r.split("|")[0] for r in sys.argv[2:]]
def trace(name):
    p = os.path.join(out, f"trace-{name}.jsonl")
    if not os.path.exists(p):
        return None
    rows = [json.loads(l) for l in open(p) if l.strip()]
    return rows or None
def placement(name):
    p = os.path.join(out, f"stylize-{name}.log")
    if not os.path.exists(p):
        return "no log"
    for line in open(p, errors="replace"):
        line = re.sub(r"\x1b\[[0-9;]*m", "", line).rstrip()
        if line.startswith("error:"):
            return "failed: " + line[len("error: "):][:100]
        m = re.search(r"report=(.*)$", line)
        if "execution provider" in line and m:
            return m.group(1)
    return "unknown (not in the log)"
cpu = trace("cpu")
bad = 0
print(f"{'run':<15} {'evals':>6} {'evals/s':>8} {'final loss':>12} {'vs CPU':>8}  partition")
for name in runs:
    t = trace(name)
    if t is None:
        print(f"{name:<15} {'-':>6} {'-':>8} {'-':>12} {'-':>8}  {placement(name)}")
        bad += 1
        continue
    evals, secs = len(t), t[-1]["elapsed_ms"] / 1e3
    loss = t[-1]["total"]
    if cpu and name != "cpu":
        rel = abs(loss - cpu[-1]["total"]) / abs(cpu[-1]["total"])
        verdict = f"{100 * rel:.2f}%" + ("" if rel <= 0.01 else " FAIL")
        bad += rel > 0.01
    else:
        verdict = "ref"
    print(f"{name:<15} {evals:>6} {evals / secs:>8.2f} {loss:>12.5e} {verdict:>8}  {placement(name)}")
sys.exit(1 if bad else 0)
PY

echo
if [ "$failures" -gt 0 ]; then
    echo "gpu-check: $failures problem(s); logs in $out"
    exit 1
fi
echo "gpu-check: all steps passed; logs in $out"
