#!/usr/bin/env bash
# Several adversarial-training recipes of scripts/train_at_recipes.sh at once on one lent GPU (the `device` tool),
# within a time budget, everything packed under $OUT for the trip back: one process per recipe, side by side, so that
# one lease compares several recipes. On the H100 (2026-11-27, Triton kernel on) four such runs and an evaluation kept
# the GPU 99 % busy at about 690 training img/s each (2,760 together), two runs at 1,440 each (2,880 together):
# the GPU is the limit, so side by side divides it rather than adding to it (benchmarks/results/h100-2026-11-27-at/).
#
#   bash scripts/gpu_at_recipes.sh RECIPE ...        (device tool: carry .whl, .gpudata and .gpuruns; timeout_s 590)
#
# A run resumes from .gpuruns/csnn-mnist-at-RECIPE.state.pt when that file is there (carry the state of a CPU run to
# continue it on the GPU) and is stopped at the budget's end; each one's finished checkpoint, or else its training
# state (to continue with --resume, on the CPU or the next GPU), comes back in $OUT/runs.tar.part-*
# (`cat runs.tar.part-* | tar x`). States over 15 MB (the 1,024-unit recipes') do not fit the trip back (8 files of
# 16 MiB at most): they stay in /tmp/gpu-at-work on the machine, where a next call on the same warm machine (within
# its idle time) resumes them, and are lost when it is given back. That folder is reused by every call on one machine.
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
DATA=$(realpath "${GPU_AT_DATA:-.gpudata}")
WORK=/tmp/gpu-at-work  # kept between calls on one warm machine (see above)
DEADLINE=$((SECONDS + BUDGET))
mkdir -p "$OUT" "$WORK/runs"
LOG="$OUT/gpu-at.log"
: > "$LOG"
say() { echo "[$(date +%T) +${SECONDS}s] $*" | tee -a "$LOG"; }
[ $# -gt 0 ] || { echo "usage: bash scripts/gpu_at_recipes.sh RECIPE ..." >&2; exit 2; }

if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        > "$WORK/pip.txt" 2>&1 || { say "installing .whl/ failed: $(tail -n 2 "$WORK/pip.txt")"; exit 1; }
    export PYTHONPATH=/tmp/site
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; echo "$(nproc --all) CPU cores"
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; } 2>&1 | tee -a "$LOG"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 ROBUST_SNN_DATA=$DATA OMP_NUM_THREADS=2
# train_at_recipes.sh calls `robust-snn`, which is not installed there
mkdir -p /tmp/bin && printf '#!/bin/sh\nexec python3 -m robust_snn "$@"\n' > /tmp/bin/robust-snn && chmod +x /tmp/bin/robust-snn
export PATH="/tmp/bin:$PATH"

# pack: finished checkpoints, logs and curves, then the training states of unfinished runs while the whole stays
# within what comes back (64 MiB in all: 60 MiB of 15 MiB parts; a state cut short by the budget, *.tmp, never)
pack() {
    (cd "$WORK" || exit 1
     find . -type f ! -name '*.state.pt' ! -name '*.tmp' ! -name 'pack.*' > pack.list
     local total state size
     total=$(xargs -d '\n' du -cb < pack.list | tail -n 1 | cut -f1)
     for state in $(find . -type f -name '*.state.pt' -size -15M); do
         size=$(stat -c %s "$state")
         if [ $((total + size)) -le $((60 * 1024 * 1024)) ]; then echo "$state" >> pack.list; total=$((total + size))
         else echo "left out (no room): $state" >> "$LOG"; fi
     done
     tar cf pack.tar -T pack.list && rm -f "$OUT"/runs.tar.part-* && split -b 15M -d pack.tar "$OUT/runs.tar.part-" \
         && rm pack.tar) || { say "packing failed"; return 1; }
    [ "$(ls "$OUT"/runs.tar.part-* | wc -l)" -le 4 ] || { say "over 60 MiB of results: some parts will not come back"; return 1; }
}
# launch NAME COMMAND...: in the background, stopped (TERM, then KILL 10 s later) at the budget's end; skipped when
# too little is left
pids=(); names=()
launch() {
    local name=$1 left=$((DEADLINE - SECONDS - 30))
    shift
    if [ "$left" -lt 30 ]; then say "SKIP $name: ${left}s of the budget left"; return; fi
    say "START $name (stopped after ${left}s if unfinished)"
    timeout -k 10 "$left" "$@" &
    pids+=($!); names+=("$name")
}

# the kernel the trainings will use, compiled on this GPU (T is a constexpr since the first device run)
timeout 90 python3 -m pytest -q -p no:cacheprovider -k cuda tests/test_triton_lif.py > "$WORK/triton-compiled.txt" 2>&1
rc=$?
say "compiled Triton LIF tests: rc=$rc ($(tail -n 1 "$WORK/triton-compiled.txt"))"
if [ $rc -ne 0 ]; then
    say "the trainings run with ROBUST_SNN_TRITON=0 (the torch LIF path)"
    export ROBUST_SNN_TRITON=0
fi

for name in "$@"; do
    # a carried state starts a run; it never replaces a newer one an earlier call on this machine left
    if [ -f ".gpuruns/csnn-mnist-at-$name.state.pt" ] && [ ! -f "$WORK/runs/csnn-mnist-at-$name.state.pt" ]; then
        cp ".gpuruns/csnn-mnist-at-$name.state.pt" "$WORK/runs/"
    fi
    launch "$name" bash -c "bash scripts/train_at_recipes.sh '$WORK/runs' '$name' > '$WORK/runs/$name.log' 2>&1"
done
if [ -n "${GPU_AT_EVAL:-}" ]; then
    launch eval bash -c 'SECONDS=0; eval "$GPU_AT_EVAL" > "$1/eval.json" 2> "$1/eval.err"; rc=$?
                         echo "eval rc=$rc wall_s=$SECONDS" >> "$1/eval.err"; exit $rc' _ "$WORK"
fi
while [ $((DEADLINE - SECONDS)) -gt 15 ]; do
    sleep 10
    running=0; for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && running=$((running + 1)); done
    [ $running -eq 0 ] && break
    [ $((SECONDS % 60)) -lt 10 ] && say "$running running; GPU $(nvidia-smi --query-gpu=utilization.gpu,memory.used \
        --format=csv,noheader 2>/dev/null)"
done
failed=0
for i in "${!pids[@]}"; do
    wait "${pids[$i]}"; rc=$?  # 124: stopped at the budget's end (a training resumes from its state)
    name=${names[$i]}
    detail=""; [ -f "$WORK/runs/$name.log" ] && detail=$(tail -n 2 "$WORK/runs/$name.log" | tr '\n' ' ')
    say "$name: rc=$rc $detail"
    [ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] && failed=1
done
pack || failed=1
say "packed: $(ls -l "$OUT" | tail -n +2 | awk '{print $5, $9}' | tr '\n' ' ')"
exit $failed
