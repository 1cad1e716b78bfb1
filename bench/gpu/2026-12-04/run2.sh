#!/usr/bin/env bash
# device side, second run: assemble as run.sh, then doctor (which operators run outside CUDA), bench on CUDA at
# 256/512/1024 and the kiosk 1920x1080 (tiled and whole), bench on this machine's CPU for the ratio
set -u
G=/root/g; repo=$PWD
mkdir -p $G && cp .gpu/p5/* $G/ && cd $G || exit 2
cat part0 part1 part2 part3 part4 > pay.tar && echo "$(cut -d' ' -f1 pay.sha)  pay.tar" | sha256sum -c - || exit 3
rm -rf x; mkdir -p x lib && tar xf pay.tar -C x || exit 3
for f in libonnxruntime_providers_cuda.so libonnxruntime.so.1.31.1 libonnxruntime_providers_tensorrt.so libonnxruntime_providers_shared.so; do xz -dc x/$f.xz > lib/$f || exit 4; done
xz -dc x/fuchun.xz > fuchun && chmod +x fuchun
M=$repo/models/out/vgg16-max; mkdir -p $M && cp x/m/* $M/ && xz -dc x/objective.data.xz > $M/objective.onnx.data || exit 5
head -c 39978752 $M/objective.onnx.data > $M/features.onnx.data; cp $M/features.onnx.data $M/tile_stats.onnx.data; cp $M/objective.onnx.data $M/tile_grad.onnx.data
libdirs=$(find /opt /usr/local /usr/lib -xdev \( -name 'libcublas.so.*' -o -name 'libcublasLt.so.*' -o -name 'libcudnn.so.9*' -o -name 'libcufft.so.*' -o -name 'libcurand.so.*' -o -name 'libcudart.so.*' -o -name 'libnvrtc.so.*' \) -printf '%h\n' 2>/dev/null | sort -u | paste -sd:)
export LD_LIBRARY_PATH=$G/lib:$libdirs:${LD_LIBRARY_PATH:-}
L=$G/lib/libonnxruntime.so.1.31.1
cd $repo
echo "== cpu"; grep -m1 "model name" /proc/cpuinfo; grep -o -w 'avx512f\|avx2\|amx_tile' /proc/cpuinfo | sort | uniq -c
echo "== doctor"; timeout 60 $G/fuchun doctor --no-broker --model $M --ort-library $L 2>&1 | tee $OUT/doctor.txt
echo "== bench cuda"; FUCHUN_LOG=info,ort=error timeout 130 $G/fuchun bench --model $M --ort-library $L --provider cuda --sizes 256,512,1024 --repeats 3 --memory-iterations 0 --schedule-size 0 --warm-size 0 --compare-size 0 --stream-size 0 --kiosk 1920x1080 --kiosk-whole --kiosk-iterations 2 > $OUT/bench-cuda.txt 2> $OUT/bench-cuda.log; echo "exit $?"; cat $OUT/bench-cuda.txt; tail -4 $OUT/bench-cuda.log
echo "== bench cpu"; FUCHUN_LOG=info,ort=error timeout 90 $G/fuchun bench --model $M --ort-library $L --provider cpu --sizes 256,512 --repeats 3 --memory-iterations 0 --schedule-size 0 --warm-size 0 --compare-size 0 --stream-size 0 > $OUT/bench-cpu.txt 2> $OUT/bench-cpu.log; echo "exit $?"; cat $OUT/bench-cpu.txt
ls -la $OUT
