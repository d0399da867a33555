# A cold start with everything compiled (every compiled model in the engines' openvino_cache):
# `fastimg transform` of one image, SD-Turbo + TAESD at 512 (2 steps x 0.5, guidance 0, euler_a,
# OpenVINO bf16), static shapes and dynamic, 875e9a9 (a static session read each graph for its
# inputs and outputs) against HEAD (they are recorded beside the compiled models), in turn.
#   ET=ENGINE_FOLDER IN=IMAGE OUT=FOLDER BEFORE=PATH_WITH_875e9a9s_PACKAGES bash coldstart-static.sh
# BEFORE holds links named fastimg, fastimg_bench and fastimg_export to 875e9a9's src/fastimg,
# bench and export, put first on PYTHONPATH. The engines: make-model sd-turbo and taesd, then
#   fastimg export models/sd-turbo --vae models/taesd -o engines/sd-turbo-taesd
# One line per run in $OUT/coldstart-static.jsonl: side, shapes, round, wall seconds, peak RSS.
set -e
run() {  # side shapes round [PYTHONPATH]
    local times
    times=$(mktemp)
    PYTHONPATH="${4:-}" /usr/bin/time -o "$times" -f "%e %M" taskset -c 0,1 python -m fastimg \
        transform "$IN" --engines "$ET" --prompt "a watercolor" --steps 2 --strength 0.5 \
        --guidance 0 --scheduler euler_a --seed 1 --size 512 --precision bf16 --shapes "$2" \
        --overwrite --quiet -o "${TMPDIR:-/tmp}/coldstart-$1-$2.png" >/dev/null
    read -r wall rss <"$times"
    rm -f "$times"
    printf '{"side": "%s", "shapes": "%s", "round": %s, "wall_seconds": %s, "peak_rss_mb": %s, "cpu": "%s"}\n' \
        "$1" "$2" "$3" "$wall" "$((rss / 1024))" "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)" \
        | tee -a "$OUT/coldstart-static.jsonl"
}
for shapes in static dynamic; do  # fill the caches: nothing timed
    run fill "$shapes" 0 >/dev/null
done
for round in 1 2 3; do
    for shapes in static dynamic; do
        run 875e9a9 "$shapes" "$round" "$BEFORE"
        run head "$shapes" "$round"
    done
done
