#!/bin/bash
# A UNet's upsamplings to its skip connections' sizes run per output phase, cropped, with the odd
# sides' last row and column corrected (fastimg.backends.openvino_upsampling): the graph compiled
# for dynamic shapes (512), the graph compiled for an odd latent size's static shapes (520 px:
# 65x65 latents, where the skips are odd), and the int8 UNet as the export would quantize it
# rewritten (it does not: no faster), as read and rewritten, timed in turn. ENGINES: folders
# exported by `fastimg export` from `fastimg make-model` models.
set -euo pipefail
E=${ENGINES:-/tmp/ov/engines}
R=$(dirname "$0")
probe() { python -m fastimg_bench.rewrite_probe "$@" --component unet --rewrite upsampled-convolutions; }
probe "$E/sd15" --shapes dynamic --size 512 --precision bf16 --repeats 8 -o "$R/skip-upsampled-sd15-unet-512-bf16-dynamic.json"
probe "$E/sd-turbo-taesd" --shapes dynamic --size 512 --precision bf16 --repeats 8 -o "$R/skip-upsampled-sd-turbo-unet-512-bf16-dynamic.json"
probe "$E/sd15" --shapes static --size 520 --precision bf16 --repeats 8 -o "$R/skip-upsampled-sd15-unet-520-bf16-static.json"
probe "$E/sd15" --size 512 --precision int8 --int8-method full --calibration-size 256 --calibration-calls 3 --repeats 6 -o "$R/skip-upsampled-sd15-unet-512-int8.json"
