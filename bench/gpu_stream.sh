#!/usr/bin/env bash
# Issue 29's stream figures in one run on the lent GPU machine (the carried wheels installed as
# gpu_check.sh says; diffusers among them): the random-weight SD-Turbo with the TAESD-shaped
# autoencoder, exported on the machine's CPU with --cuda-fp16; `fastimg bench --stream` at each
# size on ONNX Runtime CUDA in fp16 with CUDA graphs (static shapes) and without, and in fp32
# (with the stream batch, and each side again with it off) beside diffusers frame by frame on
# the same GPU in fp16 and fp32 and on the CPU (the images' reference); then, with the time
# left, the same stream on 2 pinned cores of the Xeon beside it (OpenVINO bf16, AMX) for the CPU
# targets; and where the TensorRT-RTX plugin was carried (unpacked in /tmp/rtx), whether ONNX
# Runtime's TensorRT-RTX provider runs here (bench/trt_rtx_probe.py). Records and logs under
# $OUT/results.
# A dry run elsewhere: SKIP_INSTALL=1 STREAM_MODEL=tiny STREAM_SIZES=64 GPU_SIDES="--backend
# onnxruntime:fp32" CPU_SIDES="--backend onnxruntime:fp32" bash bench/gpu_stream.sh
LOG_NAME=gpu-stream
source "$(dirname "$0")/device_setup.sh"
BUDGET=${BUDGET:-540}  # seconds: the device tool's limit for one command is 600
MODEL=${STREAM_MODEL:-sd-turbo}
VAE=${STREAM_VAE:-taesd}
SIZES=${STREAM_SIZES:-"512 256"}
GPU_SIDES=${GPU_SIDES:-"--backend onnxruntime-cuda:fp16:static --backend onnxruntime-cuda:fp16 --backend onnxruntime-cuda:fp32"}
CPU_SIDES=${CPU_SIDES:-"--backend openvino:bf16"}
WORK=${WORK:-/tmp/stream-work}
mkdir -p "$WORK" "$OUT/results"
engines=$WORK/engines/$MODEL-$VAE
job=(--model "$WORK/models/$MODEL" --engines "$engines" --vae "$WORK/models/$VAE" --steps 2
     --strength 0.5 --guidance 0 --sampler euler_a)

step "random-weight $MODEL and $VAE"
timeout 300 fastimg make-model "$MODEL" -o "$WORK/models/$MODEL" >/dev/null &&
    timeout 60 fastimg make-model "$VAE" -o "$WORK/models/$VAE" >/dev/null && echo built

step "export with fp16 graphs for ONNX Runtime CUDA"
/usr/bin/time -f "export: %e s, peak RSS %M KB" timeout "$(left 300)" fastimg export \
    "$WORK/models/$MODEL" -o "$engines" --vae "$WORK/models/$VAE" --cuda-fp16 --overwrite 2>&1 |
    grep -v "^  .*Winograd" | tail -20

for size in $SIZES; do
    step "the stream on the GPU at $size"
    # shellcheck disable=SC2086  # the sides are words
    timeout "$(left $((BUDGET - 150)))" fastimg bench --stream "${job[@]}" --size "$size" \
        $GPU_SIDES --stream-batch --frames 24 --warmup 4 \
        -o "$OUT/results/stream-$MODEL-$VAE-$size-gpu" 2>&1 | tail -12
done

if [ -d /tmp/rtx ]; then  # the TensorRT-RTX plugin wheel, unpacked (carried like /tmp/ort)
    # It runs on the plain onnxruntime (the machine's own), not beside onnxruntime-gpu.
    for graph in vae_decoder unet; do
        step "ONNX Runtime's TensorRT-RTX provider on the $graph graph"
        PYTHONPATH=/tmp/rtx timeout 60 python3 bench/trt_rtx_probe.py \
            "$engines/$graph/model.onnx" -o "$OUT/results/trt-rtx-probe-$graph.json" | tail -12
        grep -q '"stage": "done"' "$OUT/results/trt-rtx-probe-$graph.json" 2>/dev/null || break
    done
fi

step "the stream on 2 pinned CPU cores at ${SIZES##* } (what is left of the budget)"
# shellcheck disable=SC2086
timeout "$(left "$BUDGET")" taskset -c 0,1 fastimg bench --stream "${job[@]}" \
    --size "${SIZES##* }" $CPU_SIDES --frames 12 --warmup 1 \
    -o "$OUT/results/stream-$MODEL-$VAE-${SIZES##* }-cpu-2cores" 2>&1 | tail -8

step "done"
