#!/usr/bin/env bash
# fastimg's GPU checks in one run on an offline GPU machine (device tool; ../shared/gpu-on-device.md):
# onnxruntime-gpu arrives in pieces under /tmp/ort (part.*, an xz tarball of the unpacked wheel),
# the other wheels in .whl/. Writes logs and bench records under $OUT. Each step is timeboxed
# and the steps go on after a failure, so one run reports everything it can.
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

step "install"
cat /tmp/ort/part.* >/tmp/ort.tar.xz
python3 -c "import tarfile; tarfile.open('/tmp/ort.tar.xz').extractall('/tmp/site')"
# fastimg itself travels as a wheel in .whl too (built here: pip wheel --no-deps -w .whl .)
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site PATH=/tmp/site/bin:$PATH PYTHONUNBUFFERED=1
python3 -c "import onnxruntime as o; print(o.__version__, o.get_available_providers())"

step "does the CUDA provider land without and with preload_dlls?"
python3 - <<'EOF'
import subprocess, sys, onnx
from onnx import TensorProto, helper
x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2])
y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])
graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
onnx.save(model, "/tmp/relu.onnx")
for preload in (False, True):
    code = ("import onnxruntime as o\n" + ("o.preload_dlls()\n" if preload else "")
            + "s = o.InferenceSession('/tmp/relu.onnx', providers=['CUDAExecutionProvider'])\n"
            + "print(s.get_providers())")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    print(f"preload_dlls={preload}:", r.stdout.strip(), r.stderr.strip()[-300:])
EOF

step "fastimg doctor"
timeout 60 fastimg doctor

step "GPU tests"
timeout "$(left 200)" python3 -m pytest -p no:cacheprovider --basetemp /tmp/pt -q -rs \
    tests/e2e/test_gpu.py tests/test_gpu.py tests/diffusion/test_arrays.py \
    tests/backends tests/diffusion/test_pipeline_plans.py 2>&1 | tail -60

step "fastimg doctor --check on the tiny model"
timeout 120 fastimg make-model tiny -o /tmp/models/tiny >/dev/null &&
    timeout 120 fastimg export /tmp/models/tiny -o /tmp/engines/tiny >/dev/null &&
    timeout 120 fastimg doctor --check /tmp/engines/tiny

step "bench: sd15 at 512, ONNX Runtime CUDA against diffusers on the same GPU"
mkdir -p "$OUT/results"
timeout "$(left 520)" fastimg bench --model sd15 --size 512 --steps 20 --strength 0.5 \
    --guidance 7.5 --backend onnxruntime-cuda:fp32 --no-cold-start --repeats 3 \
    -o "$OUT/results/sd15-512-${RESULT:-gpu}-ort-cuda"

step "done"
