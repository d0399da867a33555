#!/bin/bash
# A dynamic-shape start and call of the sd15 job (OpenVINO bf16, 512, DDIM 4 steps x 0.5, g 0)
# before and after the runtime rewrote the graphs it compiles for dynamic shapes: OLD is a
# worktree of the commit before (git worktree add /tmp/oldtree aab5993), NEW this checkout; each
# side on its own hardlinked copy of the engine folder without compiled caches, each run its own
# process, the sides alternated: with nothing compiled, then twice with their caches.
set -euo pipefail
ENGINES=${ENGINES:-/tmp/ov/engines/sd15}
OLD=${OLD:-/tmp/oldtree}
R=$(cd "$(dirname "$0")" && pwd)
for side in old new; do
    rm -rf "/tmp/ov/cold-$side" && mkdir -p "/tmp/ov/cold-$side"
    for f in "$ENGINES"/*; do [ "$(basename "$f")" = openvino_cache ] || cp -al "$f" "/tmp/ov/cold-$side/"; done
done
run() {
    if [ "$1" = old ]; then PYTHONPATH="$OLD/src" python "$R/dynamic-start.py" /tmp/ov/cold-old
    else python "$R/dynamic-start.py" /tmp/ov/cold-new; fi
}
for phase in uncached cached cached2; do
    for side in old new; do echo "$phase $side $(run $side 2>/dev/null | tail -1)"; done
done
