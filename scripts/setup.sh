#!/usr/bin/env bash
# Create .venv and install dllab with the exact versions in constraints.txt (CPU or CUDA torch alike), with the
# test, ray, mlflow, wandb, attacks and export extras: CI runs the Ray sweep test against a local Ray instance, the
# tracking tests against the real MLflow 3 and W&B (offline), APGD against the real torchattacks, and dllab export's
# check against the real onnxruntime.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q -c constraints.txt -e '.[test,ray,mlflow,wandb,attacks,export]'
# Offline machines with the staged datasets beside the repo: use them as the default data root.
if [ ! -e data ] && [ -d ../shared/data ]; then
  ln -s ../shared/data data
  echo "setup: data -> ../shared/data (offline datasets)"
fi
echo "setup: ok ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
