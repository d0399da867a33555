#!/usr/bin/env bash
# fastimg's GPU checks in one run on an offline GPU machine (device tool; ../shared/gpu-on-device.md):
# onnxruntime-gpu arrives in pieces under /tmp/ort (part.*, an xz tarball of the unpacked wheel),
# OpenVINO as .gpucarry/ov.tar.xz (the unpacked wheel less its GPU/NPU plugins and the TF,
# Paddle, JAX and GGUF frontends), the other wheels in .whl/ (fastimg itself built here with
# pip wheel --no-deps -w .whl .), an int8 engine folder in .gpucarry/tiny-int8. Writes logs and
# records under $OUT. Each step is timeboxed and the steps go on after a failure, so one run
# reports everything it can. The CPU beside the GPU (a Xeon with AMX) gives the CPU-kernel
# figures too: OpenVINO's bf16 and int8 paths, on 2 pinned cores and on all of them.
# Issue 29's stream figures are bench/gpu_stream.sh's, a run of their own (each run < 600 s).
source "$(dirname "$0")/device_setup.sh"

# In one process here, without pyproject's -n auto (pytest-xdist is not carried, and -s below
# prints each PSNR, which workers would swallow).
serial=(-o "addopts=-m 'not slow'" -p no:xdist -p no:cacheprovider)

step "fastimg doctor"
timeout 60 fastimg doctor

step "GPU tests"
NEW_KINDS="controlnets_masks_and_depth or controlnet or depth or inpaint"
timeout "$(left 200)" python3 -m pytest "${serial[@]}" --basetemp /tmp/pt -q -rs \
    tests/e2e/test_gpu.py tests/test_gpu.py tests/diffusion/test_arrays.py \
    tests/backends tests/diffusion/test_pipeline_plans.py -k "not ($NEW_KINDS)" 2>&1 | tail -40

step "GPU tests: ControlNets, masks and the depth model on the GPU backends (issues 26, 27)"
# Exports seven tiny folders (ControlNet, two ControlNets, SDXL ControlNet, depth, inpainting,
# inpainting + ControlNet); each folder kind on onnxruntime-cuda (and TensorRT where installed)
# against ONNX Runtime fp32 on the CPU, and through stand-in plan sets; prints each PSNR.
timeout "$(left 380)" python3 -m pytest "${serial[@]}" --basetemp /tmp/pt3 -q -rs -s \
    tests/e2e/test_gpu.py tests/diffusion/test_pipeline_plans.py -k "$NEW_KINDS" 2>&1 |
    grep -E "dB|passed|failed|FAILED|SKIPPED|Error" | tail -60

step "fastimg doctor --check on the tiny model, with fp16 graphs for ONNX Runtime CUDA"
timeout 120 fastimg make-model tiny -o /tmp/models/tiny >/dev/null &&
    timeout 120 fastimg export /tmp/models/tiny -o /tmp/engines/tiny --cuda-fp16 >/dev/null &&
    timeout 120 fastimg doctor --check /tmp/engines/tiny

step "CPU kernels (AMX): bf16 and int8 against fp32, static against dynamic"
mkdir -p "$OUT/results"
timeout 120 taskset -c 0,1 python3 -m fastimg_bench.kernel_check .gpucarry/tiny-int8 \
    --threads 2 -o "$OUT/results/kernel-check-amx-2cores.json" | tail -30
timeout 120 python3 -m fastimg_bench.kernel_check .gpucarry/tiny-int8 \
    -o "$OUT/results/kernel-check-amx-all-cores.json" >/dev/null && echo "all cores: written"

step "CPU-kernel-sensitive tests on AMX (OpenVINO bf16, int8 engines, static shapes)"
timeout "$(left 500)" python3 -m pytest "${serial[@]}" --basetemp /tmp/pt2 -q -rs \
    tests/backends/test_openvino.py tests/e2e/test_parity.py tests/diffusion/test_pipeline_reuse.py \
    tests/engine_folder/test_compiled_cache.py 2>&1 | tail -30

step "done"
