# The per-call overhead of a 1-step SD-Turbo + TAESD call at 512 (int8), before and after the
# per-call malloc_trim was dropped, alternated twice in one run (bench/overhead.py; "before"
# puts the old free_bytes back: the heap handed back to the system before every call).
#   ET=ENGINE_FOLDER OUT=FOLDER bash overhead-before-after.sh
set -e
for round in 1 2; do
for side in before after; do
  taskset -c 0,1 python -c "
import sys
from fastimg import machine
if '$side' == 'before':
    available = machine.free_bytes
    def free_bytes(device='cpu'):
        machine.return_freed_memory()
        return available(device)
    machine.free_bytes = free_bytes
from fastimg_bench.overhead import main
sys.exit(main(sys.argv[1:]))
" "$ET" --precision int8 --real 3 --repeats 30 -o "$OUT/overhead-sd-turbo-taesd-512-int8-c-$side-$round.json"
done
done
