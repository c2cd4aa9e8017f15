#!/usr/bin/env bash
# The GPU checks of one session, in one command that fits one device call (about 9 minutes; see
# README's "Reproducing" notes). Usage: bench/device_check.sh [PART...], PARTs (default: all):
#   bench     bench/run.py --device cuda (the CUDA section of docs/performance.md), run alone
#             first so that nothing else shares the GPU while it times
#   smoke     the CLI end to end with --device cuda (demo; evaluate --level quick)
#   levels    bench/levels.py --device cuda: the levels' wall time (standard at 10k samples first),
#             run alone after the other parts
#   peer      bench/autoattack.py: deepcloak's levels against AutoAttack, one process per family
#   defaults  experiments/default_mask.py: --tune on seeds 100-101, the winner written into the
#             selector's defaults (bench/apply_tuned_defaults.py), then the published 5 seeds x 4
#             families with those defaults
# After bench, smoke, peer and defaults run side by side (their wall times are upper bounds), then
# levels alone. On 2026-12-04 (H200) bench took 63 s, smoke 64 s, defaults 321 s (tuning and the
# published run both done; with them done, run "bench/device_check.sh bench smoke peer levels").
# Each part has
# a deadline (seconds from the start: SMOKE_END, LEVELS_END, PEER_END, TUNE_END, PUBLISH_END)
# that leaves time to pack. Outputs go to $OUT (default runs/device): parts.txt, logs.tgz, and
# docs.tgz / runs.tgz with what the scripts wrote. Fashion-MNIST is read from .devcarry/data and
# wheels missing on the machine (ART, torchattacks) come from .devcarry/whl when present.
set -uo pipefail
OUT="${OUT:-runs/device}"
T0=$(date +%s)
mkdir -p "$OUT" /tmp/dc-logs
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if [ -d .devcarry/whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .devcarry/whl/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
[ -d .devcarry/data ] && export DEEPCLOAK_DATA_ROOT="$PWD/.devcarry/data"
nvidia-smi -L > /tmp/dc-logs/gpu.txt 2>&1
PARTS="${*:-bench smoke levels peer defaults}"
has() { [[ " $PARTS " == *" $1 "* ]]; }
left() { echo $(( $1 - ($(date +%s) - T0) )); }  # seconds until deadline $1
part() {  # part NAME DEADLINE COMMAND...: run with a deadline, log, record rc and time
  local name=$1 end=$2; shift 2
  local start=$(date +%s) budget; budget=$(left "$end")
  if [ "$budget" -le 5 ]; then echo "$name: skipped (no time left)" >> /tmp/dc-logs/parts.txt; return; fi
  timeout "$budget" "$@" > "/tmp/dc-logs/$name.log" 2>&1
  echo "$name: rc=$? in $(( $(date +%s) - start )) s (deadline $end s)" >> /tmp/dc-logs/parts.txt
}
ckpt=runs/paper/resnet.safetensors

has bench && part bench "${BENCH_END:-130}" python3 bench/run.py --device cuda --threads 1 --repeats 3

export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
if has smoke; then
  ( part smoke-demo "${SMOKE_END:-300}" python3 -m deepcloak demo --device cuda --out /tmp/dc-demo
    part smoke-evaluate "${SMOKE_END:-300}" python3 -m deepcloak evaluate "$ckpt" \
      --data fashion-mnist --level quick --eps 0.02 --device cuda --out /tmp/dc-eval ) &
fi
if has peer; then
  for fam in resnet cnn vgg wrn; do
    part "peer-$fam" "${PEER_END:-565}" python3 bench/autoattack.py --device cuda --families "$fam" \
      --levels standard,thorough,before --json "runs/autoattack/full-$fam.json" &
  done
fi
if has defaults; then
  ( part tune "${TUNE_END:-330}" python3 experiments/default_mask.py --tune --device cuda --jobs 8
    python3 bench/apply_tuned_defaults.py docs/default_mask_tuning.json \
      >> /tmp/dc-logs/tune.log 2>&1
    part publish "${PUBLISH_END:-565}" python3 experiments/default_mask.py --device cuda --jobs 10 ) &
fi
wait
# levels alone, after the rest: its wall times are what a user plans by (on 2026-12-04, beside 13
# other GPU processes, standard at 10k samples did not finish in 500 s)
if has levels; then
  part levels-10k "${LEVELS_END:-565}" python3 bench/levels.py --device cuda --model "$ckpt" \
    --levels standard --max-samples 10000 --threads 1 --no-write
  part levels "${LEVELS_END:-565}" python3 bench/levels.py --device cuda --model "$ckpt" \
    --levels quick,standard,thorough --threads 1 --no-write
fi
cp /tmp/dc-logs/parts.txt "$OUT/" 2>/dev/null
git diff --stat > /tmp/dc-logs/diff-stat.txt 2>&1
git diff src > /tmp/dc-logs/src.diff 2>&1
tar czf "$OUT/logs.tgz" -C /tmp/dc-logs . 2>/dev/null
tar czf "$OUT/docs.tgz" docs 2>/dev/null
find runs -name '*.json' -o -name '*.npz' -o -name '*.log' | grep -v '^runs/device' \
  | tar czf "$OUT/runs.tgz" -T - 2>/dev/null
find runs/paper runs/autoattack -name '*.safetensors' 2>/dev/null | tar czf "$OUT/models.tgz" -T - 2>/dev/null
echo "packed at $(( $(date +%s) - T0 )) s"
exit 0
