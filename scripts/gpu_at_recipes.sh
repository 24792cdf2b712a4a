#!/usr/bin/env bash
# Several adversarial-training recipes of scripts/train_at_recipes.sh at once on one lent GPU (the `device` tool),
# within a time budget, everything packed under $OUT for the trip back: one process per recipe, side by side, so that
# one lease compares several recipes. It buys little speed: on the H100 (2026-11-27, Triton kernel on) four such runs
# and an evaluation kept the GPU 99 % busy at about 690 training img/s each (2,760 together), two runs at 1,440 each,
# against 2,330-2,510 img/s for one PGD-AT run alone on the torch LIF path
# (benchmarks/results/h100-2026-11-27-at/).
#
#   bash scripts/gpu_at_recipes.sh RECIPE ...        (device tool: carry .whl, .gpudata and .gpuruns; timeout_s 590)
#
# A run resumes from .gpuruns/csnn-mnist-at-RECIPE.state.pt when that file is there (carry the state of a CPU run to
# continue it on the GPU) and is stopped at the budget's end; each one's finished checkpoint, or else its training
# state (to continue with --resume, on the CPU or the next GPU), comes back in $OUT/runs.tar.part-*
# (`cat runs.tar.part-* | tar x`). States over 15 MB (the 1,024-unit recipes') do not fit the trip back and stay.
#
# Set up here, once (the GPU image has torch, Triton, pytest, click, scipy and matplotlib; the MNIST training split
# travels gzip-compressed):
#   printf '/.whl/\n/.gpudata/\n/.gpuruns/\n' >> .git/info/exclude
#   python3 -m pip download --no-deps -d .whl snntorch==1.0.0 torchattacks==3.5.1
#   mkdir -p .gpudata/MNIST/raw && for f in $ROBUST_SNN_DATA/MNIST/raw/*; do gzip -9 -c $f > .gpudata/MNIST/raw/$(basename $f).gz; done
#   mkdir -p .gpuruns   # and copy in any .state.pt to continue
#
# Options by environment: GPU_AT_BUDGET (seconds, default 540), GPU_AT_EVAL (a command run beside the trainings
# when set, its stdout kept as eval.json), GPU_AT_DATA (default .gpudata).
set -uo pipefail
OUT=${OUT:-/tmp/gpu-at}
BUDGET=${GPU_AT_BUDGET:-540}
DATA=${GPU_AT_DATA:-.gpudata}
WORK=/tmp/gpu-at-work
DEADLINE=$((SECONDS + BUDGET))
mkdir -p "$OUT" "$WORK/runs"
LOG="$OUT/gpu-at.log"
: > "$LOG"
say() { echo "[$(date +%T) +${SECONDS}s] $*" | tee -a "$LOG"; }
[ $# -gt 0 ] || { echo "usage: bash scripts/gpu_at_recipes.sh RECIPE ..." >&2; exit 2; }

if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        2>&1 | tail -n 3 | tee -a "$LOG"
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 ROBUST_SNN_DATA=$DATA OMP_NUM_THREADS=2
# train_at_recipes.sh calls `robust-snn`, which is not installed there
mkdir -p /tmp/bin && printf '#!/bin/sh\nexec python3 -m robust_snn "$@"\n' > /tmp/bin/robust-snn && chmod +x /tmp/bin/robust-snn
export PATH="/tmp/bin:$PATH"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; } 2>&1 | tee -a "$LOG"

# pack: finished checkpoints, logs and curves; the training state of an unfinished run when it fits the trip back
pack() {
    local list=$WORK/pack.list
    (cd "$WORK" && find . -type f ! -name '*.state.pt' ! -name 'pack.*' > "$list"
     find . -type f -name '*.state.pt' -size -15M >> "$list"
     tar cf pack.tar -T "$list" && rm -f "$OUT"/runs.tar.part-* && split -b 15M -d pack.tar "$OUT/runs.tar.part-" && rm pack.tar)
}

# the kernel the trainings will use, compiled on this GPU (T is a constexpr since the first device run)
timeout 90 python3 -m pytest -q -p no:cacheprovider -k cuda tests/test_triton_lif.py > "$WORK/triton-compiled.txt" 2>&1
rc=$?
say "compiled Triton LIF tests: rc=$rc ($(tail -n 1 "$WORK/triton-compiled.txt"))"
if [ $rc -ne 0 ]; then
    say "the trainings run with ROBUST_SNN_TRITON=0 (the torch LIF path)"
    export ROBUST_SNN_TRITON=0
fi

pids=()
for name in "$@"; do
    [ -f ".gpuruns/csnn-mnist-at-$name.state.pt" ] && cp ".gpuruns/csnn-mnist-at-$name.state.pt" "$WORK/runs/"
    left=$((DEADLINE - SECONDS - 20))
    say "START $name (stopped after ${left}s if unfinished)"
    timeout "$left" bash scripts/train_at_recipes.sh "$WORK/runs" "$name" > "$WORK/runs/$name.log" 2>&1 &
    pids+=($!)
done
if [ -n "${GPU_AT_EVAL:-}" ]; then
    left=$((DEADLINE - SECONDS - 20))
    say "START eval (stopped after ${left}s): $GPU_AT_EVAL"
    (t0=$SECONDS; timeout "$left" bash -c "$GPU_AT_EVAL" > "$WORK/eval.json" 2> "$WORK/eval.err"
     echo "eval rc=$? wall_s=$((SECONDS - t0))" >> "$WORK/eval.err") &
    pids+=($!)
fi
while [ $((DEADLINE - SECONDS)) -gt 15 ]; do
    sleep 10
    running=0; for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && running=$((running + 1)); done
    [ $running -eq 0 ] && break
    [ $((SECONDS % 60)) -lt 10 ] && say "$running running; GPU $(nvidia-smi --query-gpu=utilization.gpu,memory.used \
        --format=csv,noheader 2>/dev/null)"
done
wait
for name in "$@"; do say "$name: $(grep -h 'epoch\|Error\|error' "$WORK/runs/$name.log" | tail -n 2 | tr '\n' ' ')"; done
pack
say "packed: $(ls -l "$OUT" | tail -n +2 | awk '{print $5, $9}' | tr '\n' ' ')"
