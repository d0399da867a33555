#!/usr/bin/env bash
# fastimg's GPU checks in one run on an offline GPU machine (device tool; ../shared/gpu-on-device.md):
# onnxruntime-gpu arrives in pieces under /tmp/ort (part.*, an xz tarball of the unpacked wheel),
# OpenVINO as .gpucarry/ov.tar.xz (the unpacked wheel less its GPU/NPU plugins and the TF,
# Paddle, JAX and GGUF frontends), the other wheels in .whl/ (fastimg itself built here with
# pip wheel --no-deps -w .whl .), an int8 engine folder in .gpucarry/tiny-int8. Writes logs and
# records under $OUT. Each step is timeboxed and the steps go on after a failure, so one run
# reports everything it can. The CPU beside the GPU (a Xeon with AMX) gives the CPU-kernel
# figures too: OpenVINO's bf16 and int8 paths, on 2 pinned cores and on all of them.
set -u
OUT=${OUT:-/tmp/gpu-check-out}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu-check.log") 2>&1
start=$(date +%s)
left() { echo $(($1 - ($(date +%s) - start))); }
step() { echo; echo "=== $* ($(($(date +%s) - start)) s)"; }

step "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 --version
grep -m1 "model name" /proc/cpuinfo; nproc
grep -o -w -E "amx_bf16|amx_int8|avx512_bf16|avx512_vnni" /proc/cpuinfo | sort -u | tr '\n' ' '; echo

step "install"
cat /tmp/ort/part.* >/tmp/ort.tar.xz
mkdir -p /tmp/site
tar -xJf /tmp/ort.tar.xz -C /tmp/site
tar -xJf .gpucarry/ov.tar.xz -C /tmp/site
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site PATH=/tmp/site/bin:$PATH PYTHONUNBUFFERED=1
python3 -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())"
python3 -c "import openvino as ov; c = ov.Core(); print('openvino', ov.__version__, c.available_devices, c.get_property('CPU', 'OPTIMIZATION_CAPABILITIES'))"

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

step "fastimg doctor --check on the tiny model"
timeout 120 fastimg make-model tiny -o /tmp/models/tiny >/dev/null &&
    timeout 120 fastimg export /tmp/models/tiny -o /tmp/engines/tiny >/dev/null &&
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
