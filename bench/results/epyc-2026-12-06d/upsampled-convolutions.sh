#!/bin/bash
# The upsampled-convolutions rewrite (fastimg.backends.openvino_upsampling) probed on this
# machine: each component compiled for one 512x512 call's shapes, as read and rewritten, timed
# in turn. ENGINES: folders exported by `fastimg export` from `fastimg make-model` models.
set -euo pipefail
E=${ENGINES:-/tmp/ov/engines}
R=$(dirname "$0")
probe() { python -m fastimg_bench.rewrite_probe "$@" --rewrite upsampled-convolutions; }
probe "$E/sd15" --component vae_decoder --size 512 --precision bf16 --repeats 6 -o "$R/upsampled-convolutions-sd15-vae_decoder-512-bf16.json"
probe "$E/sd15" --component unet --size 512 --precision bf16 --repeats 8 -o "$R/upsampled-convolutions-sd15-unet-512-bf16.json"
probe "$E/sd-turbo-taesd" --component unet --component vae_decoder --size 512 --precision bf16 --repeats 8 -o "$R/upsampled-convolutions-sd-turbo-taesd-512-bf16.json"
probe "$E/sd15" --component vae_decoder --size 512 --precision int8 --calibration-size 256 --calibration-calls 3 --repeats 6 -o "$R/upsampled-convolutions-sd15-vae_decoder-512-int8.json"
