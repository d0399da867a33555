# What a 1-step SD-Turbo + TAESD call at 512 (int8) spends outside its engines, PNG included:
# the code before this session (ffade74, a worktree) against HEAD, alternated twice in one run.
#   ET=ENGINE_FOLDER OUT=FOLDER BEFORE=PATH_WITH_ffade74s_PACKAGES bash overhead-session.sh
# BEFORE holds links named fastimg, fastimg_bench and fastimg_export to ffade74's src/fastimg,
# bench and export, put first on PYTHONPATH.
set -e
for round in 1 2; do
    PYTHONPATH="$BEFORE" taskset -c 0,1 python -m fastimg_bench.overhead "$ET" --precision int8 \
        --real 3 --repeats 30 -o "$OUT/overhead-sd-turbo-taesd-512-int8-ffade74-$round.json"
    taskset -c 0,1 python -m fastimg_bench.overhead "$ET" --precision int8 \
        --real 3 --repeats 30 -o "$OUT/overhead-sd-turbo-taesd-512-int8-head-$round.json"
done
