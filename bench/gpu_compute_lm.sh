#!/usr/bin/env bash
# LM-family compute comparison (BIF vs EK-FAC) on a GPU, with a larger family than the CPU run:
# 0.3M .. ~120M parameters (layers x width as in Pythia's family), then prints the table.
# Usage: bash bench/gpu_compute_lm.sh [extra Hydra overrides]
# Results go to $OUT/compute_lm_gpu when OUT is set (device machines), else results/compute_gpu;
# the model cache stays under results/cache/compute_lm_gpu so a rerun skips training.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python
DEST=${OUT:+$OUT/compute_lm_gpu}
DEST=${DEST:-results/compute_gpu}
"$PY" - <<'PY'
import torch
assert torch.cuda.is_available(), "no CUDA device: this script is for a GPU machine"
print("device:", torch.cuda.get_device_name(0))
PY
"$PY" -m experiments.compute_lm experiment=compute_lm \
  compute_lm.device=cuda compute_lm.torch_threads=null \
  'compute_lm.hidden_sizes=[64,128,256,512,768]' \
  'compute_lm.num_layers=[2,3,6,8,12]' \
  'compute_lm.num_heads=[4,4,8,8,12]' \
  compute_lm.train_steps=200 compute_lm.train_batch_size=32 \
  compute_lm.num_train=256 compute_lm.num_query=64 \
  'compute_lm.q_grid=[10,100,1000,3000]' 'compute_lm.q_sizes=[0,2]' \
  compute_lm.pilot_draws=20 compute_lm.pilot_burn_in=20 \
  compute_lm.output_dir="$DEST" \
  compute_lm.cache_dir=results/cache/compute_lm_gpu \
  tracking.enabled=false "$@"
"$PY" - "$DEST" <<'PY'
import sys
from pathlib import Path

import pandas as pd

out = Path(sys.argv[1])
t = pd.read_csv(out / "model_scaling.csv")
cols = ["method", "size", "num_params", "phase", "seconds", "peak_memory_mb", "status", "healthy"]
pd.set_option("display.width", 200)
print(t[cols].to_string(index=False))
print((out / "lm_family" / "summary.md").read_text())
PY
