#!/bin/bash
# The runtime's rewrites (fastimg.backends.openvino_rewrites) probed on the graphs it compiles for
# dynamic shapes (serve, the Python API, runs of several image sizes): each component compiled for
# dynamic shapes as read and rewritten where the rewrite holds at every size, run on one 512x512
# call's shapes, timed in turn. ENGINES: folders exported by `fastimg export` from `fastimg
# make-model` models.
set -euo pipefail
E=${ENGINES:-/tmp/ov/engines}
R=$(dirname "$0")
probe() { python -m fastimg_bench.rewrite_probe "$@" --shapes dynamic --size 512 --precision bf16; }
probe "$E/sd15" --component vae_decoder --rewrite upsampled-convolutions --repeats 6 -o "$R/dynamic-upsampled-convolutions-sd15-vae_decoder-512-bf16.json"
probe "$E/sd-turbo-taesd" --component vae_decoder --rewrite upsampled-convolutions --repeats 8 -o "$R/dynamic-upsampled-convolutions-taesd-vae_decoder-512-bf16.json"
probe "$E/sd15" --component unet --rewrite projection-slices --repeats 8 -o "$R/dynamic-projection-slices-sd15-unet-512-bf16.json"
probe "$E/sd-turbo-taesd" --component unet --rewrite projection-slices --repeats 8 -o "$R/dynamic-projection-slices-sd-turbo-unet-512-bf16.json"
