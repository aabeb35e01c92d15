#!/usr/bin/env bash
# A TRIDENT job dir end to end: validate -> train ABMIL and MSRL -> compare -> predict -> heatmap.
#
# Usage: examples/01_trident_end_to_end.sh [WORK_DIR]
# Budget (env): EPOCHS (default 2), FOLDS (default 2), CASES (demo cohort size, default 120).
# The demo cohort stands in for your own job dir: replace JOB, CLINICAL and GENOMICS with your paths (and add
# --patch-encoder NAME if the job holds several patch encoders' features).
set -euo pipefail
WORK=${1:-trident_example}
EPOCHS=${EPOCHS:-2}
FOLDS=${FOLDS:-2}

msrl-plugin make-cohort --tier test --set n_cases="${CASES:-120}" --seed 0 --out "$WORK/job"  # your job dir
JOB=$WORK/job
CLINICAL=$JOB/clinical.csv     # case_id, slide_id, survival_months, censorship (1 = censored)
GENOMICS=$JOB/genomics.csv     # case_id + numeric columns; cases without a row have no genomics

# 1. check every bag (keys, dtypes, dims, coords, empty bags, .lock files); exit code 1 = not usable
msrl-plugin validate "$JOB"

# 2. cross-validate the baseline and MSRL on the same folds (same --seed) and the same epoch budget
msrl-plugin train --model abmil --features "$JOB" --clinical "$CLINICAL" --k "$FOLDS" \
    --max-epochs "$EPOCHS" --results-dir "$WORK/results"
msrl-plugin train --model msrl --features "$JOB" --clinical "$CLINICAL" --genomics "$GENOMICS" --k "$FOLDS" \
    --max-epochs "$EPOCHS" --param pretrain_epochs="$EPOCHS" --results-dir "$WORK/results"

# 3. the honest comparison: same folds, seeds and budget, paired statistics and a one-file HTML report
msrl-plugin compare --features "$JOB" --clinical "$CLINICAL" --genomics "$GENOMICS" --models abmil,msrl \
    --k "$FOLDS" --max-epochs "$EPOCHS" --param msrl.pretrain_epochs="$EPOCHS" --n-boot 1000 \
    --out "$WORK/compare"

# 4. WSI-only prediction with one fold's MSRL model (no genomics needed at inference)
msrl-plugin predict --model-path "$WORK/results/msrl_s1/s_0_checkpoint.pt" --features "$JOB" \
    --out "$WORK/predictions.csv"

# 5. attention heatmap (h5 + CSV + PNG) of the first slide of the clinical table
SLIDE=$(sed -n 2p "$CLINICAL" | cut -d, -f2)
msrl-plugin heatmap --model-path "$WORK/results/msrl_s1/s_0_checkpoint.pt" --features "$JOB" \
    --slide "$SLIDE" --out "$WORK/heatmaps"

echo "done: $WORK/results, $WORK/compare/report.html, $WORK/predictions.csv, $WORK/heatmaps/"
