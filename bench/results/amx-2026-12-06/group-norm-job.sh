#!/usr/bin/env bash
# The sd15 job (512, DDIM 4 steps x 0.5, guidance 0) on OpenVINO bf16, dynamic and static shapes,
# from the folder exported before model.ov.onnx existed (amx-2026-12-05's) and from a new export
# of the same model (GroupNorms as reductions in OpenVINO's graph); the two folders alternated.
set -euo pipefail
WORK=${WORK:-/tmp/amx-work}
OUT=${OUT:-bench/results/amx-2026-12-06}
if [ ! -f "$WORK/engines/sd15-gn/manifest.json" ]; then
    taskset -c 0,1 fastimg export "$WORK/models/sd15" -o "$WORK/engines/sd15-gn" \
        | tee "$OUT/export-sd15-gn.log"
fi
for run in 1 2; do
    for folder in sd15-int8 sd15-gn; do
        taskset -c 0,1 fastimg bench --model "$WORK/models/sd15" --engines "$WORK/engines/$folder" \
            --size 512 --backend openvino:bf16 --backend openvino:bf16:static --repeats 3 \
            --no-cold-start -o "$OUT/sd15-512-bf16-$folder-$run"
    done
done
