#!/usr/bin/env bash
# Issue 19's device check: one prepared run on a lent GPU machine (the `device` tool), everything
# it measures packed into $OUT/gpu-check.tgz (re-packed after every step, so a run cut short still
# brings back what finished) plus $OUT/gpu-check.log.
#
# The GPU image has torch, Triton, pytest, click, scipy and matplotlib but not robust-snn's other
# dependencies, and cannot reach the internet, so they travel as wheels; the MNIST training split
# (for the adversarial-training timing) travels gzip-compressed:
#
#   printf '/.whl/\n/.gpudata/\n' >> .git/info/exclude
#   python3 -m pip download --no-deps -d .whl snntorch==1.0.0 torchattacks==3.5.1 spikingjelly==2.0.0 loguru==0.7.3
#   mkdir -p .gpudata/MNIST/raw && for f in $ROBUST_SNN_DATA/MNIST/raw/*; do gzip -9 -c $f > .gpudata/MNIST/raw/$(basename $f).gz; done
#
# then run (device tool): command "bash benchmarks/gpu_check.sh", carry [".whl", ".gpudata"], timeout_s 590.
# Steps in order of importance, each with its own time limit inside GPU_CHECK_BUDGET seconds (default 560);
# a step that no longer fits is skipped and says so:
#   1. the Triton LIF tests, compiled on CUDA (then the interpreted ones) -> triton-compiled.txt, triton-interpreted.txt
#   2. GPU numerics: TF32/bf16 spike flips, graph replay vs eager      -> numerics.json
#   3. bench.py, batch 128, T = 8 and 25, train/infer/PGD-10, with
#      the snnTorch loop, SpikingJelly and CUDA-graph replay           -> bench-128.json (written after every case)
#   4. the standard suite on the first 1,000 images at eps 0.1, without and with --cuda-graphs
#                                                                      -> suite-1k-eager.json, suite-1k-graphs.json
#   5. bench.py, batch 256, T = 25, train and PGD-10                   -> bench-256.json
#   6. the PGD-AT recipe of csnn-mnist-at-pgd.pt (8 epochs), timed      -> at/ (log, per-epoch times)
#   7. the standard suite on the full test split (10,000 images) with --cuda-graphs; the same for the PGD-AT
#      model csnn-mnist-at-pgd.pt at eps 0.3 (the subject of the GPU timings so far); the first again without --cuda-graphs
set -o pipefail
OUT=${OUT:-/tmp/gpu-check}
WORK=${GPU_CHECK_WORK:-/tmp/gpu-check-work}
BUDGET=${GPU_CHECK_BUDGET:-560}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
DATA=${GPU_CHECK_DATA:-.gpudata}
DEADLINE=$((SECONDS + BUDGET))
mkdir -p "$OUT" "$WORK"
LOG="$OUT/gpu-check.log"
: > "$LOG"

say() { echo "[$(date +%T) +${SECONDS}s] $*" | tee -a "$LOG"; }
pack() { tar czf "$OUT/.gpu-check.tgz" -C "$WORK" . && mv "$OUT/.gpu-check.tgz" "$OUT/gpu-check.tgz"; }
# step NAME LIMIT COMMAND...: run COMMAND with at most LIMIT seconds (less if the budget is nearly spent)
step() {
    local name=$1 limit=$2 left
    shift 2
    left=$((DEADLINE - SECONDS - 5))
    if [ "$left" -lt 20 ]; then
        say "SKIP $name: ${left}s of the budget left"
        return 0
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    say "START $name (limit ${limit}s)"
    local t0=$SECONDS rc=0
    timeout "$limit" bash -c "$*" || rc=$?
    LAST_RC=$rc
    say "END $name rc=$rc wall=$((SECONDS - t0))s"
    echo "$name rc=$rc wall_s=$((SECONDS - t0)) limit_s=$limit" >> "$WORK/steps.txt"
    pack
}

if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        2>&1 | tail -n 3 | tee -a "$LOG"
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
RSNN="python3 -m robust_snn"

nvidia-smi > "$WORK/nvidia-smi.txt" 2>&1
python3 -c "import torch, triton; print(torch.__version__, triton.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no cuda')" \
    2>&1 | tee "$WORK/versions.txt" | tee -a "$LOG"
nproc >> "$WORK/versions.txt"

# The compiled kernels decide whether the rest runs with them; the interpreter's tests are recorded apart
# (on the first device run Triton 3.6's interpreter with NumPy 2.4 could not take a runtime loop bound, a fault of
# that interpreter, not of the kernels, which passed compiled; the loop bound T is a constexpr since).
step triton-compiled 90 "python3 -m pytest -q -p no:cacheprovider -k cuda tests/test_triton_lif.py > $WORK/triton-compiled.txt 2>&1"
if [ "${LAST_RC:-1}" -ne 0 ]; then  # measure the rest without the kernel rather than not at all
    say "compiled Triton LIF tests did not pass: the remaining steps run with ROBUST_SNN_TRITON=0"
    export ROBUST_SNN_TRITON=0
    echo "ROBUST_SNN_TRITON=0 (the Triton tests did not pass)" >> "$WORK/steps.txt"
fi
step triton-interpreted 40 "python3 -m pytest -q -p no:cacheprovider -k 'not cuda' tests/test_triton_lif.py \
    > $WORK/triton-interpreted.txt 2>&1"
step numerics 50 "python3 benchmarks/gpu_numerics.py --device $DEVICE --limit 1000 > $WORK/numerics.json 2> $WORK/numerics.err"
step bench-128 170 "python3 benchmarks/bench.py --device $DEVICE --steps 8,25 --batch-size 128 --min-seconds 0.5 \
    --out $WORK/bench-128.json > $WORK/bench-128.txt 2> $WORK/bench-128.err"
for mode in eager graphs; do
    flag=""; [ "$mode" = graphs ] && flag="--cuda-graphs"
    step "suite-1k-$mode" 60 "$RSNN attack --eps 0.1 --limit 1000 --device $DEVICE $flag --json > $WORK/suite-1k-$mode.json \
        2> $WORK/suite-1k-$mode.err"
done
step bench-256 70 "python3 benchmarks/bench.py --device $DEVICE --steps 25 --batch-size 256 --modes train,pgd10 --min-seconds 0.5 \
    --out $WORK/bench-256.json > $WORK/bench-256.txt 2> $WORK/bench-256.err"
mkdir -p "$WORK/at"
step at-recipe 75 "$RSNN -v train --batch-size 256 --adv-eps 0.3 --num-steps 8 --device $DEVICE --quiet --channels 32,64 \
    --hidden 256 --epochs 8 --adv pgd --adv-steps 10 --adv-warmup 2 --data-dir $DATA --out $WORK/at/csnn-mnist-at-pgd.pt \
    > $WORK/at/train.log 2>&1"
rm -f "$WORK"/at/*.state.pt
pack
step suite-10k-graphs 170 "$RSNN attack --eps 0.1 --limit all --device $DEVICE --cuda-graphs --json > $WORK/suite-10k-graphs.json \
    2> $WORK/suite-10k-graphs.err"
step suite-10k-at-graphs 170 "$RSNN attack --checkpoint checkpoints/csnn-mnist-at-pgd.pt --eps 0.3 --limit all --device $DEVICE \
    --cuda-graphs --json > $WORK/suite-10k-at-graphs.json 2> $WORK/suite-10k-at-graphs.err"
step suite-10k-eager 170 "$RSNN attack --eps 0.1 --limit all --device $DEVICE --json > $WORK/suite-10k-eager.json \
    2> $WORK/suite-10k-eager.err"
say "done"
tail -n 2 "$WORK"/*.err 2>/dev/null | tail -n 40 | tee -a "$LOG"
