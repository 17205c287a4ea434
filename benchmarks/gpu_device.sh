#!/usr/bin/env bash
# The suite's GPU section on a bare GPU machine that has python3 with CUDA torch, transformers and
# sentence-transformers but not this package's other dependencies, nor network access.
#
#   benchmarks/gpu_device.sh DATASET_DIR OUT_DIR [WHEEL_DIR]
#
# WHEEL_DIR holds wheels for what that python lacks, fetched beforehand on a machine with a registry, e.g.
#   pip download --only-binary=:all: --no-deps --python-version 3.12 -d .whl \
#     pydantic pydantic-core annotated-types typing-inspection typing-extensions diskcache ir-measures
# They are unpacked into a scratch folder put on PYTHONPATH: the machine's own packages are left alone.
set -euo pipefail
dataset=${1:?usage: gpu_device.sh DATASET_DIR OUT_DIR [WHEEL_DIR]}
out=${2:?usage: gpu_device.sh DATASET_DIR OUT_DIR [WHEEL_DIR]}
wheels=${3:-}
repo=$(cd "$(dirname "$0")/.." && pwd)
site=$(mktemp -d)
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$out/env.txt"
if [ -n "$wheels" ]; then
  compgen -G "$wheels/*.whl" >/dev/null || { echo "no wheels in $wheels" >&2; exit 2; }
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$wheels"/*.whl
fi
export PYTHONPATH="$site:$repo${PYTHONPATH:+:$PYTHONPATH}"
python3 - <<'PY' | tee -a "$out/env.txt"
import torch, transformers, sentence_transformers, pydantic, diskcache, dheera_local
assert torch.cuda.is_available(), "no CUDA device visible to torch"
print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0),
      transformers.__version__, sentence_transformers.__version__)
PY
# 8 minutes at most, as the issue sets; the results folder lands under OUT_DIR.
timeout 480 python3 "$repo/benchmarks/suite.py" --only gpu --dataset "$dataset" --out "$out" 2>&1 | tee "$out/suite.log"
# LLM rerankers: the Qwen3-Reranker-0.6B-shaped twin in bf16, ours against the model card's loop (4 minutes at most).
timeout 240 python3 "$repo/benchmarks/llm_rerankers.py" --device cuda --dtype bfloat16 --rounds 2 \
  --dataset "$dataset" --models-dir "$out/models" --out "$out/llm_rerankers.json" 2>&1 | tee "$out/llm_rerankers.log"
