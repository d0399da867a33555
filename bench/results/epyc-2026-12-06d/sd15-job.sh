#!/bin/bash
# The sd15 job (512, DDIM 4 steps x 0.5, guidance 0) on this machine with the upsampled
# convolutions run per phase: fastimg's default path for one image size (OpenVINO bf16, static
# shapes) against diffusers and optimum-intel's bf16, with cold starts and peak memory.
# MODELS/ENGINES: `fastimg make-model sd15` and `fastimg export` of it; PEER: the peer's venv
# (bench/peers/README.md); FASTIMG_PEER_CACHE: where the peer's converted IR is kept.
set -euo pipefail
M=${MODELS:-/tmp/ov/models}
E=${ENGINES:-/tmp/ov/engines}
R=$(dirname "$0")
fastimg bench --model "$M/sd15" --engines "$E/sd15" --size 512 --backend openvino:bf16:static \
    --peer "optimum-intel:bf16=${PEER:-/tmp/peer-venv/bin/python}" --repeats 3 \
    -o "$R/sd15-512-bf16-static-epyc"
