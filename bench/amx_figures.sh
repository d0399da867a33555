#!/usr/bin/env bash
# Issues 24's, 26's and 29's CPU targets in one unattended run, on a CPU with AMX (a session whose
# own CPU has it: grep -o amx_bf16 /proc/cpuinfo), pinned to 2 cores as the targets are set:
#   1. the sd15 job (512, DDIM 4 steps x 0.5, guidance 0) against diffusers and optimum-intel
#      bf16, with OpenVINO bf16 dynamic and static and the int8 mix (issue 24: >= 1.25x and
#      >= 1.6x the peer's bf16), cold start and peak memory as the bench records them;
#   2. SD-Turbo + TAESD at 512, one UNet call, bf16 and int8 (issue 24: <= 0.6 s), and what
#      its int8 call with static shapes spends outside the engines (issue 24: under 2 %);
#   3. the stream at 256 and 512, bf16, int8 and int8 with static shapes (issue 29: >= 5 and
#      >= 1.5 frames/s, >= 5x diffusers frame by frame);
#   4. per-layer profiles of the UNet at 512 (bf16, int8), the attention probe and the static
#      graphs' rewrites (GEGLU's projections, the upsamplings' convolutions; issue 24);
#   5. the ControlNet job at 512 in bf16 and int8, a random ControlNet of the UNet (issue 26:
#      >= 4x diffusers).
# Several hours on 2 cores: each int8 export (calibrated at CALIBRATION px: 256 by default, as
# the EPYC records did) runs just before the first step that measures it, so a run cut off
# keeps what it measured; each step is timeboxed and the steps go on after a failure. Records
# and logs under $OUT. The peer's virtual environment is built once as bench/peers/README.md
# says (PEER=/path/to/python to use another; SKIP_PEER=1 to leave it out).
# Disk: about 65 GB (models and engine folders under WORK, 45 GB with OpenVINO's compiled
# caches; the peer's venv and caches, 18 GB): left in place, they and a CI run filled 100 GB.
# CORES=0-15 measures on 16 cores (the GPU machine's Xeon); the records are named for the count.
# A dry run elsewhere (minutes): SKIP_PEER=1 SD=tiny TURBO=tiny VAE=own SIZES=64 JOB_SIZE=64 \
#   CALIBRATION=64 CORES=0 OUT=/tmp/amx-dry WORK=/tmp/amx-dry-work bash bench/amx_figures.sh
set -u
{ # read whole before it runs: an edit to this file during its hours changes nothing
export SKIP_INSTALL=1 LOG_NAME=amx-figures
OUT=$(realpath -m "${OUT:-bench/results/amx-$(date -u +%Y-%m-%d)}")  # absolute: the run cds
WORK=$(realpath -m "${WORK:-/tmp/amx-work}")
source "$(dirname "$0")/device_setup.sh"
SD=${SD:-sd15}
TURBO=${TURBO:-sd-turbo}
VAE=${VAE:-taesd}
SIZES=${SIZES:-"256 512"}
JOB_SIZE=${JOB_SIZE:-512}
CALIBRATION=${CALIBRATION:-256}
CORES=${CORES:-0,1}
PEER=${PEER:-/tmp/peer-venv/bin/python}
mkdir -p "$WORK/models" "$WORK/engines" "$OUT/results"
cd "$WORK" || exit 1
pin=(taskset -c "$CORES")  # the cores every measured step runs on
tag=amx-$("${pin[@]}" nproc)cores  # in every record's name: amx-2cores, amx-16cores
vae_args() { [ "$VAE" = own ] || echo "--vae $WORK/models/$VAE"; }

# A copy of MODEL whose UNet's native size is CALIBRATION px (hardlinked weights, its own
# config): the int8 export calibrates there, and the graphs run at any size.
calibration_copy() {
    local model=$1 copy=$WORK/models/$1-$CALIBRATION
    [ -d "$copy" ] || { cp -al "$WORK/models/$model" "$copy" && python3 - "$copy" "$CALIBRATION" <<'EOF'
import json, os, sys
path = os.path.join(sys.argv[1], "unet", "config.json")
config = json.load(open(path))
config["sample_size"] = int(sys.argv[2]) // 8
with open(path + ".new", "w") as f:
    json.dump(config, f, indent=2)
os.replace(path + ".new", path)  # a new file: the hardlinked original keeps its config
EOF
    } || rm -rf "$copy"  # (never a copy left at the model's own size)
    echo "$copy"
}

step "random-weight models: $SD, $TURBO, $VAE, a ControlNet of $SD's UNet"
for name in "$SD" "$TURBO" "$VAE"; do
    [ "$name" = own ] || [ -d "models/$name" ] ||
        timeout 900 fastimg make-model "$name" -o "models/$name" >/dev/null || echo "failed: $name"
done
[ -d "models/$SD-controlnet" ] || timeout 900 python3 - "models/$SD" <<'EOF' || echo "failed"
import sys
from fastimg_export.loading import load_pipeline
from fastimg_export.random_controlnets import random_controlnet
unet = load_pipeline(sys.argv[1]).unet  # as real ControlNets are made: ControlNetModel.from_unet
random_controlnet(unet, seed=2).save_pretrained(sys.argv[1] + "-controlnet")
EOF

if [ "${SKIP_PEER:-0}" != 1 ] && [ ! -x "$PEER" ]; then
    step "optimum-intel's virtual environment (bench/peers/README.md)"
    venv=$(dirname "$(dirname "$PEER")")
    timeout 1800 bash -c 'python3 -m venv "$1" && "$1/bin/pip" install -q torch==2.13.0 &&
        "$1/bin/pip" install -q "optimum-intel[openvino]==2.2.0" "diffusers<=0.39" \
            "transformers<5.6" "huggingface_hub<1.22" pillow &&
        "$1/bin/pip" uninstall -q -y torchvision' _ "$venv" || echo "the peer's venv failed"
fi
peer_args=()
[ "${SKIP_PEER:-0}" != 1 ] && [ -x "$PEER" ] && peer_args=(--peer "optimum-intel:bf16=$PEER")

# An engine folder with the fp32 graphs the bf16 sides run and int8 graphs beside them,
# calibrated at CALIBRATION px, made just before the step that measures it (a run cut off
# keeps the figures already made): export_int8 MODEL FOLDER [EXPORT OPTION...]
export_int8() {
    local model=$1 folder=$2
    [ -d "$folder" ] && return
    step "export $folder with int8 graphs calibrated at $CALIBRATION px"
    local log=$OUT/results/export-$(basename "$folder").log started
    started=$(date +%s)
    timeout 7200 "${pin[@]}" fastimg export "$(calibration_copy "$model")" -o "$folder" "${@:3}" \
        --int8 --int8-images 3 >"$log" 2>&1
    echo "  exit $? after $(($(date +%s) - started)) s; the whole log: $log"
    grep -E "kept|dropped|alone|int8 mix|rror|Traceback|Killed" "$log" | tail -40
}

export_int8 "$SD" "engines/$SD-int8"
step "issue 24: the $SD job at $JOB_SIZE against diffusers and optimum-intel bf16"
timeout 5400 "${pin[@]}" fastimg bench --model "models/$SD" --engines "engines/$SD-int8" --size "$JOB_SIZE" \
    --backend openvino:bf16 --backend openvino:bf16:static --backend openvino:int8 \
    --backend openvino:int8:static "${peer_args[@]}" --repeats 3 \
    -o "$OUT/results/$SD-$JOB_SIZE-$tag" 2>&1 | tee "$OUT/results/$SD-$JOB_SIZE.log" | tail -30

# shellcheck disable=SC2046  # vae_args is words or nothing
export_int8 "$TURBO" "engines/$TURBO-$VAE-int8" $(vae_args)
step "issue 24: $TURBO + $VAE at $JOB_SIZE, one UNet call"
# shellcheck disable=SC2046
timeout 1800 "${pin[@]}" fastimg bench --model "models/$TURBO" --engines "engines/$TURBO-$VAE-int8" \
    $(vae_args) --size "$JOB_SIZE" --steps 2 --strength 0.5 --sampler euler_a \
    --backend openvino:bf16 --backend openvino:bf16:static --backend openvino:int8 \
    --backend openvino:int8:static --repeats 5 \
    -o "$OUT/results/$TURBO-$VAE-$JOB_SIZE-$tag" 2>&1 | tee "$OUT/results/$TURBO.log" |
    tail -20
step "issue 24: what that int8 call with static shapes spends outside its engines"
timeout 900 "${pin[@]}" python3 -m fastimg_bench.overhead "engines/$TURBO-$VAE-int8" \
    --precision int8 --shapes static --size "$JOB_SIZE" --real 3 --repeats 30 \
    -o "$OUT/results/overhead-$TURBO-$VAE-$JOB_SIZE-int8-static-$tag.json" | tail -12

for size in $SIZES; do
    step "issue 29: the stream at $size"
    # shellcheck disable=SC2046
    timeout 2400 "${pin[@]}" fastimg bench --stream --model "models/$TURBO" \
        --engines "engines/$TURBO-$VAE-int8" $(vae_args) --size "$size" --steps 2 --strength 0.5 \
        --sampler euler_a --backend openvino:bf16 --backend openvino:int8 \
        --backend openvino:int8:static --frames 24 --warmup 2 \
        -o "$OUT/results/stream-$TURBO-$VAE-$size-$tag" 2>&1 |
        tee "$OUT/results/stream-$size.log" | tail -12
done

step "issue 24: where the UNet's time goes at $JOB_SIZE (bf16, int8), and attention alone"
for precision in bf16 int8; do
    timeout 900 "${pin[@]}" python3 -m fastimg_bench.layers "engines/$SD-int8" unet "$JOB_SIZE" "$precision" \
        >"$OUT/results/layers-unet-$precision-$JOB_SIZE-$tag.txt" 2>&1
    head -16 "$OUT/results/layers-unet-$precision-$JOB_SIZE-$tag.txt"
    # the default path for one image size (static shapes: projections split, GroupNorm graph)
    timeout 900 "${pin[@]}" python3 -m fastimg_bench.layers "engines/$SD-int8" unet "$JOB_SIZE" "$precision" \
        --shapes static >"$OUT/results/layers-unet-$precision-static-$JOB_SIZE-$tag.txt" 2>&1
    head -16 "$OUT/results/layers-unet-$precision-static-$JOB_SIZE-$tag.txt"
done
# the VAE decoder as the int8 job runs it (static shapes): what is not a convolution
timeout 900 "${pin[@]}" python3 -m fastimg_bench.layers "engines/$SD-int8" vae_decoder "$JOB_SIZE" int8 \
    --shapes static >"$OUT/results/layers-vae_decoder-int8-static-$JOB_SIZE-$tag.txt" 2>&1
head -16 "$OUT/results/layers-vae_decoder-int8-static-$JOB_SIZE-$tag.txt"
# the peer's UNet (the IR optimum-intel converted from torch, left by the sd15 job's peer side),
# profiled as the peer runs it: bf16, static shapes, no rewrite of ours
peer_unet=$(ls "${FASTIMG_PEER_CACHE:-$HOME/.cache/fastimg/peers}/$SD"-*/ir-*/unet/openvino_model.xml \
    2>/dev/null | head -1 || true)
if [ -n "$peer_unet" ]; then
    timeout 900 "${pin[@]}" python3 -m fastimg_bench.layers "engines/$SD-int8" unet "$JOB_SIZE" bf16 \
        --shapes static --graph "$peer_unet" >"$OUT/results/layers-peer-unet-bf16-static-$JOB_SIZE-$tag.txt" 2>&1
    head -16 "$OUT/results/layers-peer-unet-bf16-static-$JOB_SIZE-$tag.txt"
fi
timeout 600 "${pin[@]}" python3 -m fastimg_bench.attention_probe --head-dims 32,40,48,64 \
    -o "$OUT/results/attention-probe-$tag.json"
timeout 900 "${pin[@]}" python3 -m fastimg_bench.rewrite_probe "engines/$SD-int8" --size "$JOB_SIZE" \
    --precision bf16 --repeats 5 -o "$OUT/results/rewrite-probe-unet-$JOB_SIZE-$tag.json"
# sd15's 40-channel heads padded to 64 (not done by the runtime: faster alone on AMX, slower on
# an AVX-512 EPYC; this says whether the whole UNet gains)
timeout 900 "${pin[@]}" python3 -m fastimg_bench.rewrite_probe "engines/$SD-int8" --size "$JOB_SIZE" \
    --precision bf16 --rewrite attention-heads --repeats 5 \
    -o "$OUT/results/rewrite-probe-heads-unet-$JOB_SIZE-$tag.json"
timeout 1800 "${pin[@]}" python3 -m fastimg_bench.rewrite_probe "engines/$SD-int8" --size "$JOB_SIZE" \
    --precision int8 --int8-method full --repeats 5 \
    -o "$OUT/results/rewrite-probe-unet-$JOB_SIZE-int8-$tag.json"
# the upsamplings' convolutions run per output phase: the float graphs as the runtime compiles
# them for static shapes, and the VAE decoder's int8 graph as the export quantizes it
timeout 1800 "${pin[@]}" python3 -m fastimg_bench.rewrite_probe "engines/$SD-int8" --size "$JOB_SIZE" \
    --precision bf16 --rewrite upsampled-convolutions --component vae_decoder --component unet \
    --repeats 5 -o "$OUT/results/rewrite-probe-upsampled-$JOB_SIZE-$tag.json"
timeout 1800 "${pin[@]}" python3 -m fastimg_bench.rewrite_probe "engines/$SD-int8" --size "$JOB_SIZE" \
    --precision int8 --rewrite upsampled-convolutions --component vae_decoder --repeats 5 \
    -o "$OUT/results/rewrite-probe-upsampled-vae_decoder-$JOB_SIZE-int8-$tag.json"
# the same for dynamic shapes (serve, the Python API): the decoder's phases hold at every size
timeout 1800 "${pin[@]}" python3 -m fastimg_bench.rewrite_probe "engines/$SD-int8" --size "$JOB_SIZE" \
    --precision bf16 --rewrite upsampled-convolutions --component vae_decoder --shapes dynamic \
    --repeats 5 -o "$OUT/results/rewrite-probe-upsampled-vae_decoder-$JOB_SIZE-dynamic-$tag.json"

export_int8 "$SD" "engines/$SD-cn-int8" --controlnet "models/$SD-controlnet"
step "issue 26: the ControlNet job at $JOB_SIZE"
timeout 5400 "${pin[@]}" fastimg bench --model "models/$SD" --engines "engines/$SD-cn-int8" \
    --size "$JOB_SIZE" --controlnet "models/$SD-controlnet" --backend openvino:bf16 \
    --backend openvino:int8 --repeats 3 --no-cold-start \
    -o "$OUT/results/$SD-controlnet-$JOB_SIZE-$tag" 2>&1 |
    tee "$OUT/results/$SD-controlnet.log" | tail -20

step "done"
exit
}
