#!/usr/bin/env bash
# Issue 19's device check: one prepared run on a lent GPU machine (the `device` tool), writing
# everything under $OUT. The GPU image has torch, Triton and pytest but not robust-snn's
# pure-Python dependencies, and cannot reach the internet, so they travel as wheels:
#
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps -d .whl snntorch==1.0.0 torchattacks==3.5.1 tonic==1.7.0 \
#       expelliarmus importRosbag spikingjelly==2.0.0
#   (expelliarmus has binary wheels: add --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 for it)
#
# then run (device tool): command "bash benchmarks/gpu_check.sh", carry [".whl"], timeout_s 540.
# Steps, cheapest first, so a run cut short still brings back the kernel tests:
#   1. the Triton LIF tests compiled on CUDA (and interpreted) -> triton-tests.txt
#   2. bench.py on CUDA: train / inference / PGD-10 at T = 8 and 25, batch 128 and 256, with the
#      snnTorch-loop and SpikingJelly peers -> bench-128.json, bench-256.json
#   3. the standard suite on the full test split, timed -> suite-10k.json
set -o pipefail
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
python3 -c "import torch, triton; print(torch.__version__, triton.__version__, torch.cuda.get_device_name())" | tee "$OUT/versions.txt"
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_triton_lif.py 2>&1 | tee "$OUT/triton-tests.txt"
timeout 150 python3 benchmarks/bench.py --device cuda --steps 8,25 --batch-size 128 --min-seconds 1 --json > "$OUT/bench-128.json" 2> "$OUT/bench-128.err"
timeout 60 python3 benchmarks/bench.py --device cuda --steps 25 --batch-size 256 --modes pgd10 --min-seconds 1 --json > "$OUT/bench-256.json" 2> "$OUT/bench-256.err"
/usr/bin/time -v timeout 180 python3 -m robust_snn attack --eps 0.1 --limit all --device cuda --json > "$OUT/suite-10k.json" 2> "$OUT/suite-10k.err"
tail -n 3 "$OUT"/*.err
