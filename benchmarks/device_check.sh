#!/usr/bin/env bash
# One prepared check of a device machine: every experiment's paper profile trained for a bounded number of
# steps by dllab's own loops, printing images (tokens) per second and each experiment's projected training
# time (details: benchmarks/device_check.py). Meant to finish in well under 10 minutes on one GPU.
#
#   benchmarks/device_check.sh                 # paper profiles on the GPU (or whatever device `auto` finds)
#   benchmarks/device_check.sh --smoke         # smoke profiles on the CPU, seconds (tests/test_device_check.py)
#   benchmarks/device_check.sh --steps 20 --only lab1.cnn-depth,lab2.finetune
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c 'import torch; print(f"torch {torch.__version__}; cuda: {torch.cuda.is_available()}" + (f" ({torch.cuda.get_device_name(0)}, bf16 {torch.cuda.is_bf16_supported()})" if torch.cuda.is_available() else "") + f"; cpu capability {torch.backends.cpu.get_cpu_capability()}")'
# The hard stop leaves time to rerun within a 10-minute slot.
exec timeout 540 "$PY" benchmarks/device_check.py "$@"
