#!/usr/bin/env bash
# Install fuchun as a systemd service.
#
#   deploy/install.sh --target jetson|linux [--root DIR] [--dry-run] [--binary PATH] [--model DIR]
#                     [--ort-library PATH] [--no-enable]
#
# jetson: JetPack with the onnxruntime-gpu wheel (CUDA + TensorRT providers); build the binary with
#         `cargo build --release --features cuda,tensorrt` first.
# linux:  any x86-64/arm64 Linux, CPU provider, ONNX Runtime from the project's .venv (`make models`).
#
# Re-runnable: an existing /etc/fuchun/fuchun.toml and fuchun.env are kept. --root installs into another
# directory tree (no user is created and systemd is not touched unless the root is /). --dry-run prints what
# would be done and changes nothing.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/.." && pwd)"
target=""
root="/"
dry=0
enable=1
binary="$repo/target/release/fuchun"
model="$repo/models/out/vgg16-max"
ort_library=""

die() { echo "install.sh: $*" >&2; exit 1; }
usage() { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }

while [ $# -gt 0 ]; do
    case "$1" in
        --target) target="${2:-}"; shift 2 ;;
        --root) root="${2:-}"; shift 2 ;;
        --dry-run) dry=1; shift ;;
        --binary) binary="${2:-}"; shift 2 ;;
        --model) model="${2:-}"; shift 2 ;;
        --ort-library) ort_library="${2:-}"; shift 2 ;;
        --no-enable) enable=0; shift ;;
        -h|--help) usage 0 ;;
        *) echo "unknown option $1" >&2; usage 2 ;;
    esac
done
case "$target" in
    jetson|linux) ;;
    "") die "--target jetson|linux is required" ;;
    *) die "unknown target '$target': use jetson or linux" ;;
esac
root="${root%/}"
R="${root:-}"   # prefix for every installed path ("" for /)

run() {
    if [ "$dry" = 1 ]; then echo "would: $*"; else "$@"; fi
}

# --- find what to install ------------------------------------------------------------------------------------
[ -x "$binary" ] || die "no fuchun binary at $binary: build it (cargo build --release$([ "$target" = jetson ] && echo ' --features cuda,tensorrt')) or pass --binary"
[ -f "$model/manifest.json" ] || die "no exported model in $model: run \`make models\` or pass --model DIR"

find_ort() {
    if [ -n "$ort_library" ]; then echo "$ort_library"; return; fi
    local candidates=()
    if [ "$target" = jetson ]; then
        # the JetPack onnxruntime-gpu wheel, then system locations
        local site
        site="$(python3 -c 'import onnxruntime, os; print(os.path.dirname(onnxruntime.__file__))' 2>/dev/null || true)"
        [ -n "$site" ] && candidates+=("$site"/capi/libonnxruntime.so*)
        candidates+=(/usr/lib/aarch64-linux-gnu/libonnxruntime.so* /usr/local/lib/libonnxruntime.so*)
    else
        candidates+=("$repo"/.venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so*)
        candidates+=(/usr/lib/x86_64-linux-gnu/libonnxruntime.so* /usr/local/lib/libonnxruntime.so*)
    fi
    for c in "${candidates[@]}"; do
        if [ -f "$c" ]; then echo "$c"; return; fi
    done
}
ort="$(find_ort)"
[ -n "$ort" ] && [ -f "$ort" ] || die "ONNX Runtime not found: $([ "$target" = jetson ] && echo 'install the JetPack onnxruntime-gpu wheel' || echo 'run `make venv`') or pass --ort-library PATH"
ort_dir="$(dirname "$ort")"
providers=()
for p in "$ort_dir"/libonnxruntime_providers_shared.so "$ort_dir"/libonnxruntime_providers_cuda.so "$ort_dir"/libonnxruntime_providers_tensorrt.so; do
    [ -f "$p" ] && providers+=("$p")
done
if [ "$target" = jetson ] && [ ${#providers[@]} -lt 3 ]; then
    echo "install.sh: warning: CUDA/TensorRT provider libraries not found beside $ort; only the CPU provider will work" >&2
fi

echo "fuchun install: target $target, root ${root:-/}, binary $binary, model $model, ONNX Runtime $ort"

# --- files ---------------------------------------------------------------------------------------------------
libdir="/usr/local/lib/fuchun"
share="/usr/local/share/fuchun"
run install -d -m 0755 "$R/usr/local/bin" "$R$libdir" "$R$share/styles" "$R/usr/local/share/doc/fuchun" \
    "$R/etc/fuchun" "$R/etc/systemd/system" "$R/var/lib/fuchun/models" "$R/var/cache/fuchun"
run install -m 0755 "$binary" "$R/usr/local/bin/fuchun"
run install -m 0644 "$ort" "$R$libdir/$(basename "$ort")"
for p in "${providers[@]}"; do run install -m 0644 "$p" "$R$libdir/$(basename "$p")"; done
run rm -rf "$R/var/lib/fuchun/models/vgg16-max"
run cp -r "$model" "$R/var/lib/fuchun/models/vgg16-max"
for s in fuchun.jpg starry_night.jpg; do run install -m 0644 "$repo/examples/$s" "$R$share/styles/$s"; done
run install -m 0644 "$repo/examples/SOURCES.md" "$R$share/styles/SOURCES.md"
run install -m 0644 "$repo/README.md" "$R/usr/local/share/doc/fuchun/README.md"
run install -m 0644 "$repo/deploy/fuchun.example.toml" "$R/usr/local/share/doc/fuchun/fuchun.example.toml"
for u in fuchun.service fuchun-view.service fuchun-kiosk.service; do
    run install -m 0644 "$repo/systemd/$u" "$R/etc/systemd/system/$u"
done

provider=cpu; trt=""; warm=""
if [ "$target" = jetson ]; then
    provider=auto
    # FP16 stays off: it becomes safe once the graphs' FP16 emulation test passes. The Jetson's GPU shares the
    # RAM: the CUDA arena grows only by what is asked for and cuDNN picks convolution algorithms by heuristics
    # (no per-size benchmarking); set gpu_mem_limit_mb to cap the arena.
    trt='# FP16 becomes safe once the graphs'"'"' FP16 emulation test passes; until then FP32 engines.
tensorrt_fp16 = false
tensorrt_cache = "/var/cache/fuchun/tensorrt"   # engines keyed by the graphs'"'"' sha256, and the timing cache
cudnn_conv_algo_search = "heuristic"
cuda_arena_extend_strategy = "same_as_requested"
# gpu_mem_limit_mb = 2048'
    warm='warmup = true          # every configured size before READY=1 (TensorRT engines built then, not on a frame)
frame_aspect = "16:9"   # the cameras'"'"' frame aspect: warm-up sizes and the TensorRT opt shape'
fi
config="$R/etc/fuchun/fuchun.toml"
if [ -e "$config" ]; then
    echo "keeping the existing $config"
else
    body="# fuchun configuration written by deploy/install.sh ($target). Every option: /usr/local/share/doc/fuchun/fuchun.example.toml
[mqtt]
host = \"127.0.0.1\"
port = 1883
client_id = \"fuchun-$(hostname -s 2>/dev/null || echo host)\"
# username = \"fuchun\"   # password: FUCHUN_MQTT_PASSWORD in /etc/fuchun/fuchun.env

[model]
dir = \"/var/lib/fuchun/models/vgg16-max\"
ort_library = \"$libdir/$(basename "$ort")\"
provider = \"$provider\"
$trt

[daemon]
cache_dir = \"/var/cache/fuchun\"
$warm

[styles.ink]
images = [\"$share/styles/fuchun.jpg\"]
image_size = 384
iterations = 100
"
    if [ "$dry" = 1 ]; then echo "would: write $config"; else printf '%s' "$body" > "$config"; chmod 0640 "$config"; fi
fi
envfile="$R/etc/fuchun/fuchun.env"
if [ -e "$envfile" ]; then
    echo "keeping the existing $envfile"
else
    if [ "$dry" = 1 ]; then echo "would: write $envfile (mode 0600)"; else
        printf '# secrets for fuchun.service\n# FUCHUN_MQTT_PASSWORD=\n' > "$envfile"; chmod 0600 "$envfile"; fi
fi

# --- user and service (only on the real root) ----------------------------------------------------------------
if [ -z "$R" ]; then
    if ! id fuchun >/dev/null 2>&1; then
        groups=""
        getent group video >/dev/null 2>&1 && groups="--groups video"
        # shellcheck disable=SC2086
        run useradd --system --home-dir /var/lib/fuchun --no-create-home --shell /usr/sbin/nologin $groups fuchun
    fi
    run chown -R fuchun:fuchun /var/lib/fuchun /var/cache/fuchun
    run chgrp fuchun /etc/fuchun/fuchun.toml
    if [ "$enable" = 1 ] && [ -d /run/systemd/system ]; then
        run systemctl daemon-reload
        run systemctl enable --now fuchun.service
        echo "check it with: fuchun doctor --config /etc/fuchun/fuchun.toml; journalctl -u fuchun -f"
    else
        echo "systemd not running (or --no-enable): start it later with systemctl enable --now fuchun"
    fi
else
    echo "installed under $R (no user created, systemd untouched)"
fi
