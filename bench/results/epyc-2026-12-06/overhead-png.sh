# What a 1-step SD-Turbo + TAESD call at 512 (OpenVINO bf16) spends outside its engines, PNG
# included: f37dd2e (the PNG's rows deflated on one thread) against HEAD (deflated in pieces on
# every core), alternated twice in one run.
#   ET=ENGINE_FOLDER OUT=FOLDER BEFORE=PATH_WITH_f37dd2es_PACKAGES bash overhead-png.sh
# BEFORE holds links named fastimg, fastimg_bench and fastimg_export to f37dd2e's src/fastimg,
# bench and export, put first on PYTHONPATH. The engines: make-model sd-turbo and taesd, then
#   fastimg export models/sd-turbo --vae models/taesd -o engines/sd-turbo-taesd
set -e
for round in 1 2; do
    PYTHONPATH="$BEFORE" taskset -c 0,1 python -m fastimg_bench.overhead "$ET" --precision bf16 \
        --real 3 --repeats 30 -o "$OUT/overhead-sd-turbo-taesd-512-bf16-f37dd2e-$round.json"
    taskset -c 0,1 python -m fastimg_bench.overhead "$ET" --precision bf16 \
        --real 3 --repeats 30 -o "$OUT/overhead-sd-turbo-taesd-512-bf16-head-$round.json"
done
