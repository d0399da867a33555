#!/usr/bin/env bash
# Issue 24: the sd15 job at 512 with the VAE's int8 graphs for static shapes (quantized from
# OpenVINO's GroupNorm graph), against int8 with dynamic shapes, bf16 static and optimum-intel's
# bf16, in one run, pinned to 2 cores. A new export with --int8 (calibrated at 256 px), then
# the job. Run from the repository root: OUT=bench/results/amx-2026-12-06b WORK=/tmp/amx-work
set -u
OUT=$(realpath "${OUT:-bench/results/amx-2026-12-06b}")
WORK=${WORK:-/tmp/amx-work}
PEER=${PEER:-/tmp/peer-venv/bin/python}
cd "$WORK" || exit 1
pin=(taskset -c 0,1)
if [ ! -d engines/sd15-int8-static ]; then
    started=$(date +%s)
    # models/sd15-256: sd15 with its UNet's native size 256 (hardlinked weights), as
    # bench/amx_figures.sh's calibration_copy makes it
    timeout 7200 "${pin[@]}" fastimg export models/sd15-256 -o engines/sd15-int8-static \
        --int8 --int8-images 3 >"$OUT/export-sd15-int8-static.log" 2>&1
    echo "export: exit $? after $(($(date +%s) - started)) s"
fi
timeout 5400 "${pin[@]}" fastimg bench --model models/sd15 --engines engines/sd15-int8-static \
    --size 512 --backend openvino:bf16:static --backend openvino:int8 \
    --backend openvino:int8:static --peer "optimum-intel:bf16=$PEER" --repeats 3 \
    -o "$OUT/sd15-512-int8-static" 2>&1 | tee "$OUT/sd15-512.log" | tail -30
