#!/usr/bin/env bash
# The GPU check (bench/gpu_check.py): GPU tests, then the three goal benchmarks beside PyTorch.
#   bash bench/gpu_check.sh [--dry-run] [--out DIR] [--only PART,...]
# Python: $PYTHON, else the repo's .venv, else python3 (the device machine's, with JAX CUDA).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -n "${PYTHON:-}" ]]; then py=$PYTHON
elif [[ -x .venv/bin/python ]]; then py=.venv/bin/python
else py=python3
fi
exec "$py" bench/gpu_check.py "$@"
