# A one-image run at a size the engines have not compiled for exact shapes: `fastimg transform`
# of one image, SD-Turbo + TAESD (2 steps x 0.5, guidance 0, euler_a, OpenVINO bf16), in a fresh
# process each, for each SIZE in turn: dynamic shapes (one graph for every size, compiled and
# cached before: nothing compiled), static shapes the first time at that size (its graphs
# compiled and cached), static shapes again (imported from that cache).
#   ET=ENGINE_FOLDER IN=IMAGE OUT=FOLDER bash coldstart-new-size.sh [SIZE ...]
# The engines: make-model sd-turbo and taesd, then
#   fastimg export models/sd-turbo --vae models/taesd -o engines/sd-turbo-taesd
# One line per run in $OUT/coldstart-new-size.jsonl: size, shapes, which run, wall seconds,
# peak RSS.
set -e
run() {  # size shapes label
    local times
    times=$(mktemp)
    /usr/bin/time -o "$times" -f "%e %M" taskset -c 0,1 python -m fastimg \
        transform "$IN" --engines "$ET" --prompt "a watercolor" --steps 2 --strength 0.5 \
        --guidance 0 --scheduler euler_a --seed 1 --size "$1" --precision bf16 --shapes "$2" \
        --overwrite --quiet -o "${TMPDIR:-/tmp}/coldstart-$1-$2.png" >/dev/null
    read -r wall rss <"$times"
    rm -f "$times"
    printf '{"size": %s, "shapes": "%s", "run": "%s", "wall_seconds": %s, "peak_rss_mb": %s, "cpu": "%s"}\n' \
        "$1" "$2" "$3" "$wall" "$((rss / 1024))" "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)" \
        | tee -a "$OUT/coldstart-new-size.jsonl"
}
run 512 dynamic fill >/dev/null  # the dynamic graphs compiled and cached: nothing timed
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(384 448 576)
for size in "${sizes[@]}"; do
    run "$size" dynamic "cached"
    run "$size" static "first at this size"
    run "$size" static "cached"
done
