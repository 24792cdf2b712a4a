#!/usr/bin/env bash
# The README's test command (and CI's, via .ci/run): install what the tests need, then run the whole suite.
#   bash scripts/test.sh [pytest args]
# 1. Chromium for the browser test, from Debian's packages (never a downloaded browser);
# 2. robust-snn with its dev extra (pytest, Gradio, Playwright);
# 3. the real MNIST files under $ROBUST_SNN_DATA (default ../shared/datasets), never downloaded here.
set -euo pipefail
cd "$(dirname "$0")/.."
say() { echo "scripts/test.sh: $*" >&2; }

export ROBUST_SNN_DATA="${ROBUST_SNN_DATA:-$(cd .. && pwd)/shared/datasets}"
for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
    if [ ! -f "$ROBUST_SNN_DATA/MNIST/raw/$f" ] && [ ! -f "$ROBUST_SNN_DATA/MNIST/raw/$f.gz" ]; then
        say "MNIST not found under $ROBUST_SNN_DATA/MNIST/raw; get it once with: python -c \"import torchvision as tv; [tv.datasets.MNIST('$HOME/data', train=t, download=True) for t in (True, False)]\" && export ROBUST_SNN_DATA=$HOME/data"
        exit 1
    fi
done
if ! command -v chromium >/dev/null 2>&1 && [ ! -x /usr/bin/chromium ]; then
    if ! command -v apt-get >/dev/null 2>&1; then
        say "the browser test needs Chromium at /usr/bin/chromium; install it with your system's package manager"; exit 1
    fi
    if [ "$(id -u)" -eq 0 ]; then SUDO=""
    elif command -v sudo >/dev/null 2>&1; then SUDO="sudo"
    else say "the browser test needs Chromium: run 'apt-get install chromium' as root, then rerun"; exit 1
    fi
    say "installing Chromium from Debian's packages (for the browser test)"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi

python -m pip install -q -e ".[dev]"

export PYTHONUNBUFFERED=1
exec python -m pytest "$@"
