#!/usr/bin/env bash
# The GPU checks of one session, in one command (the device tool's machine; see README's
# "Reproducing" notes). Usage: bench/device_check.sh PART... with PART one of
#   smoke     the CLI end to end with --device cuda (demo; evaluate --level quick)
#   defaults  experiments/default_mask.py: --tune, then the published 5 seeds x 4 families
#   bench     bench/run.py --device cuda (the CUDA section of docs/performance.md)
#   peer      bench/autoattack.py: deepcloak's levels against AutoAttack, sample by sample
# Outputs (logs, the docs the scripts rewrite) go to $OUT (default: runs/device).
# Fashion-MNIST is read from $DEEPCLOAK_DATA_ROOT; wheels missing on the machine (ART,
# torchattacks) are installed from .devcarry/whl when that folder exists.
set -uo pipefail
OUT="${OUT:-runs/device}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if [ -d .devcarry/whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .devcarry/whl/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
[ -d .devcarry/data ] && export DEEPCLOAK_DATA_ROOT="$PWD/.devcarry/data"
nvidia-smi -L > "$OUT/gpu.txt" 2>&1
for part in "$@"; do
  start=$(date +%s)
  case "$part" in
    smoke)
      timeout 60 python3 -m deepcloak demo --device cuda --out /tmp/dc-demo 2>&1 | grep -v '━'
      timeout "${SMOKE_EVAL_S:-90}" python3 -m deepcloak evaluate runs/paper/resnet.safetensors --data fashion-mnist \
        --level quick --eps 0.02 --device cuda --out /tmp/dc-eval 2>&1 | grep -v '━' ;;
    defaults)
      timeout "${TUNE_S:-200}" python3 experiments/default_mask.py --tune --device cuda --jobs 4
      timeout "${PUBLISH_S:-330}" python3 experiments/default_mask.py --device cuda --jobs 4 ;;
    bench)
      timeout "${BENCH_S:-180}" python3 bench/run.py --device cuda --threads 1 --repeats 3 ;;
    peer)
      timeout "${PEER_S:-300}" python3 bench/autoattack.py --device cuda ;;
  esac > "$OUT/$part.log" 2>&1
  echo "$part: rc=$? in $(( $(date +%s) - start )) s" | tee -a "$OUT/parts.txt"
done
tar czf "$OUT/docs.tgz" docs/*.md docs/*.json 2>/dev/null
find runs -name '*.json' -size -2M 2>/dev/null | tar czf "$OUT/runs-json.tgz" -T - 2>/dev/null
exit 0
