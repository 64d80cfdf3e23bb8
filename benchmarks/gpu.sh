#!/usr/bin/env bash
# The GPU path in one command: the fast suite against AutoAttack (standard) on a WideResNet-28-10, 10,000 images.
# Refuses, and starts nothing, without a CUDA GPU. Run from the repository root: bash benchmarks/gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}"
if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "benchmarks/gpu.sh: no CUDA GPU visible to torch; this benchmark measures the GPU path only." >&2
    echo "  On a CPU run: python -m benchmarks.suite --help" >&2
    exit 2
fi
exec timeout 570 "$PYTHON" -m benchmarks.gpu "$@"
