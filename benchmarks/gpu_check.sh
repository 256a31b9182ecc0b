#!/usr/bin/env bash
# The GPU check, for a machine with one CUDA GPU and PyTorch (no install step: the code runs from the tree).
# In under 8 minutes: the device-aware tests (parity with transformers, the engine's invariants) on CUDA,
# then prefill and batch-1/batch-8 decode of the bench preset in bf16 on the GPU (mimo bench).
#   bash benchmarks/gpu_check.sh [OUT_DIR]      (default OUT_DIR: $OUT, else benchmarks/results)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-${OUT:-benchmarks/results}}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 MIMO_TEST_DEVICE=cuda
status=0
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
$PY -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, torch.cuda.get_device_name(0))" \
  || exit 1
echo "== tests on cuda (parity with transformers, engine invariants)"
timeout 300 $PY -m pytest -q -p no:cacheprovider tests/parity tests/unit/test_engine.py 2>&1 | tee "$OUT/gpu-tests.log" \
  || status=1
echo "== mimo bench, bench preset, bf16, on the GPU"
timeout 200 $PY -m mimo bench --preset bench --dtype bfloat16 --device cuda --batches 1,8 --new-tokens 64 \
  --json-out "$OUT/gpu-bench.json" 2>&1 | tee "$OUT/gpu-bench.log" || status=1
exit $status
