#!/usr/bin/env bash
# Use the third-party `meanpool` aggregator like a built-in one. Install it first:
#   pip install ./examples/custom_aggregator
#
# Usage: examples/custom_aggregator/run.sh [WORK_DIR]      Budget (env): EPOCHS (2), FOLDS (2), CASES (120).
set -euo pipefail
WORK=${1:-custom_aggregator_example}
EPOCHS=${EPOCHS:-2}
FOLDS=${FOLDS:-2}

msrl-plugin list-models | grep meanpool   # found through the msrl_plugin.aggregators entry point
msrl-plugin make-cohort --tier test --set n_cases="${CASES:-120}" --seed 0 --out "$WORK/job" > /dev/null
JOB=$WORK/job
msrl-plugin train --model meanpool --features "$JOB" --clinical "$JOB/clinical.csv" --k "$FOLDS" \
    --max-epochs "$EPOCHS" --param hidden_dim=64 --results-dir "$WORK/results"
# the same package lends its encoder to MSRL: MSRL's borrowing around a slide encoder it did not ship with
msrl-plugin train --model msrl_h --features "$JOB" --clinical "$JOB/clinical.csv" --k "$FOLDS" \
    --max-epochs "$EPOCHS" --param wsi_encoder=meanpool --param pretrain_epochs=1 --results-dir "$WORK/results"
msrl-plugin compare --features "$JOB" --clinical "$JOB/clinical.csv" --models abmil,meanpool --k "$FOLDS" \
    --max-epochs "$EPOCHS" --n-boot 1000 --no-report --out "$WORK/compare"
