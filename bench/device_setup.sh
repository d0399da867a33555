#!/usr/bin/env bash
# The start of every device script (sourced by gpu_check.sh, gpu_stream.sh, amx_figures.sh):
# the log under $OUT/LOG_NAME, the clock (left N: seconds left of a budget of N from the
# start; step: a heading with the time so far), what the machine is, and the install of the
# carried wheels (see gpu_check.sh; SKIP_INSTALL=1 uses what is installed, for a dry run on
# another machine).
set -u
OUT=${OUT:-/tmp/gpu-check-out}
mkdir -p "$OUT"
exec > >(tee "$OUT/${LOG_NAME:-gpu-check}.log") 2>&1
start=$(date +%s)
left() { echo $(($1 - ($(date +%s) - start))); }
step() { echo; echo "=== $* ($(($(date +%s) - start)) s)"; }

step "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || echo "no nvidia-smi"
python3 --version
grep -m1 "model name" /proc/cpuinfo; nproc
grep -o -w -E "amx_bf16|amx_int8|avx512_bf16|avx512_vnni" /proc/cpuinfo | sort -u | tr '\n' ' '; echo

if [ "${SKIP_INSTALL:-0}" != 1 ]; then
    step "install"
    cat /tmp/ort/part.* >/tmp/ort.tar.xz
    mkdir -p /tmp/site
    tar -xJf /tmp/ort.tar.xz -C /tmp/site
    tar -xJf .gpucarry/ov.tar.xz -C /tmp/site
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site PATH=/tmp/site/bin:$PATH PYTHONUNBUFFERED=1
fi
python3 -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())"
python3 -c "import openvino as ov; c = ov.Core(); print('openvino', ov.__version__, c.available_devices, c.get_property('CPU', 'OPTIMIZATION_CAPABILITIES'))"
