#!/usr/bin/env bash
# MSRL slide embeddings written back into a TRIDENT job, as TRIDENT's own slide encoders write them:
# <job>/<mag>x_<ps>px_<ov>px_overlap/slide_features_<name>/<slide>.h5 (re-runs skip finished slides).
#
# Usage: examples/05_encode_slides.sh [WORK_DIR]
# Budget (env): EPOCHS (default 2), CASES (demo cohort size, default 120).
set -euo pipefail
WORK=${1:-encode_example}
EPOCHS=${EPOCHS:-2}

msrl-plugin make-cohort --tier test --set n_cases="${CASES:-120}" --seed 0 --out "$WORK/job" > /dev/null
JOB=$WORK/job

# train one fold of MSRL (in practice: train on all your labelled cases, or pick a fold's model)
msrl-plugin train --model msrl --features "$JOB" --clinical "$JOB/clinical.csv" --genomics "$JOB/genomics.csv" \
    --k 5 --k-end 1 --max-epochs "$EPOCHS" --param pretrain_epochs="$EPOCHS" --results-dir "$WORK/results"

msrl-plugin encode-slides --job-dir "$JOB" --model-path "$WORK/results/msrl_s1/s_0_checkpoint.pt" \
    --name msrl-synthetic

# every slide now has a TRIDENT slide-feature file: one 'features' vector per slide
python - "$JOB" <<'PY'
import sys
from pathlib import Path

import h5py

files = sorted(Path(sys.argv[1]).glob("*/slide_features_msrl-synthetic/*.h5"))
with h5py.File(files[0]) as f:
    print(f"{len(files)} slide embeddings; {files[0].name}: features {f['features'].shape}, "
          f"attrs {dict(f['features'].attrs)}")
PY
