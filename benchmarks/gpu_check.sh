#!/usr/bin/env bash
# One prepared GPU check (issue 6 figures), within ~8 minutes on one H100/H200:
#   1. the batch-128 JAX / PyTorch-eager step ratio and bf16 images/s at batch 1024
#      (benchmarks.der_step; the PyTorch part is skipped, and said so, without torch);
#   2. the `seed` preset (25 + 3 x 25 classes) end to end on synthetic CIFAR-shaped data
#      at a stated fraction of its schedule (benchmarks.der_protocol, EPOCHS_SCALE).
# JSON goes to benchmarks/results/gpu_check_*.json; a log to benchmarks/results/gpu_check.log.
#
# Usage:  bash benchmarks/gpu_check.sh            # on the GPU machine
#         DRY=1 bash benchmarks/gpu_check.sh      # parse every command's flags only (CPU)
# Knobs:  EPOCHS_SCALE (0.05: 10 + 3 x 8.5 epochs), PROTOCOL_TIMEOUT_S (240),
#         STEP_BUDGET_S (150).
set -u
cd "$(dirname "$0")/.."
RES=benchmarks/results
mkdir -p "$RES"
LOG=$RES/gpu_check.log
EPOCHS_SCALE=${EPOCHS_SCALE:-0.05}
PROTOCOL_TIMEOUT_S=${PROTOCOL_TIMEOUT_S:-240}
STEP_BUDGET_S=${STEP_BUDGET_S:-150}
DRY=${DRY:-0}

STEP_ARGS=(--steps-t 1,4 --batch-sizes 128,1024 --dtypes float32,bfloat16
  --time-budget-s "$STEP_BUDGET_S" --out "$RES/gpu_check_der_step.json")
TORCH_ARGS=(--torch --torch-modes eager --torch-batch-sizes 128 --torch-steps-t 1,4)
PROTO_ARGS=(--presets seed --epochs-scale "$EPOCHS_SCALE" --timeout-s "$PROTOCOL_TIMEOUT_S"
  --runs-dir /tmp/gpu_check_runs --out "$RES/gpu_check_der_protocol.json")

if [ "$DRY" = "1" ]; then
  # Argument parsing only: each module's parser must accept the flags used below.
  python - "${STEP_ARGS[@]}" "${TORCH_ARGS[@]}" <<'PY' || exit 1
import sys
from benchmarks import der_step
a = der_step.parse_args(sys.argv[1:])
print("der_step flags ok:", a.batch_sizes, a.dtypes, a.torch)
PY
  python - "${PROTO_ARGS[@]}" <<'PY' || exit 1
import sys
from benchmarks import der_protocol
a = der_protocol.parse_args(sys.argv[1:])
print("der_protocol flags ok:", a.presets, a.epochs_scale)
PY
  exit 0
fi

{
  echo "== gpu_check $(date -u +%FT%TZ)"
  pip install --no-deps -e . >/dev/null 2>&1 || echo "pip install -e . failed (continuing)"
  python -c "import jax; print('devices', jax.devices())"
  T0=$(date +%s)
  if python -c "import torch" 2>/dev/null; then
    timeout $((STEP_BUDGET_S + 120)) python -m benchmarks.der_step "${STEP_ARGS[@]}" "${TORCH_ARGS[@]}"
  else
    echo "torch not installed: JAX/PyTorch-eager ratio skipped"
    timeout $((STEP_BUDGET_S + 120)) python -m benchmarks.der_step "${STEP_ARGS[@]}"
  fi
  echo "der_step rc=$? after $(( $(date +%s) - T0 )) s"
  T1=$(date +%s)
  timeout $((PROTOCOL_TIMEOUT_S + 60)) python -m benchmarks.der_protocol "${PROTO_ARGS[@]}"
  echo "der_protocol rc=$? after $(( $(date +%s) - T1 )) s (epochs scale $EPOCHS_SCALE)"
  echo "== done after $(( $(date +%s) - T0 )) s"
} 2>&1 | tee "$LOG"
