#!/usr/bin/env bash
# A CLAM project as CLAM lays it out: a dataset CSV, DATA_ROOT_DIR/h5_files/<slide>.h5 and
# splits/<task>_100/splits_<k>.csv; trained with CLAM's own flag spellings.
#
# Usage: examples/02_clam_native.sh [WORK_DIR]
# Budget (env): EPOCHS (default 2), CASES (demo cohort size, default 120).
# Step 1 only builds a CLAM-style project from the demo cohort; with your own CLAM project, start at step 2.
set -euo pipefail
WORK=${1:-clam_example}
EPOCHS=${EPOCHS:-2}

# 1. a CLAM project from the demo cohort: h5_files/, a dataset CSV, ragged splits_<k>.csv of slide ids
msrl-plugin make-cohort --tier test --set n_cases="${CASES:-120}" --seed 0 --out "$WORK/cohort" > /dev/null
python - "$WORK" <<'PY'
import shutil, sys
from pathlib import Path

import pandas as pd

work = Path(sys.argv[1])
cohort, clam = work / "cohort", work / "clam"
h5_dir = clam / "features" / "h5_files"
h5_dir.mkdir(parents=True, exist_ok=True)
for bag in (cohort / "20x_256px_0px_overlap" / "features_synthetic").glob("*.h5"):
    shutil.copy(bag, h5_dir / bag.name)
dataset = pd.read_csv(cohort / "clinical.csv")
dataset.to_csv(clam / "tcga_survival.csv", index=False)   # case_id, slide_id, survival_months, censorship
slides = dataset.groupby("case_id")["slide_id"].apply(list)
split_dir = clam / "splits" / "tcga_survival_100"
split_dir.mkdir(parents=True, exist_ok=True)
for k in range(2):  # CLAM's create_splits form: train / val / test columns of slide ids, padded
    split = pd.read_csv(cohort / "splits" / f"splits_{k}.csv", index_col=0)
    train = list(split["train"].dropna())
    cols = {"train": train[len(train) // 10:], "val": train[: len(train) // 10], "test": list(split["test"].dropna())}
    cols = {role: [s for c in ids for s in slides[c]] for role, ids in cols.items()}
    n = max(map(len, cols.values()))
    pd.DataFrame({r: v + [None] * (n - len(v)) for r, v in cols.items()}).to_csv(split_dir / f"splits_{k}.csv")
PY

# 2. CLAM's flags: --data_root_dir, --csv_path, --split_dir, --results_dir, --exp_code, --model_type, ...
cd "$WORK/clam"
msrl-plugin train --model_type abmil --data_root_dir features --csv_path tcga_survival.csv \
    --split_dir tcga_survival_100 --results_dir results --exp_code tcga_abmil \
    --max_epochs "$EPOCHS" --reg 1e-5 --drop_out 0.25 --k_start 0 --k_end 2

# 3. results_dir/<exp_code>_s<seed>/ as CLAM writes it: summary.csv, s_<k>_checkpoint.pt, split_<k>_results.csv
cat results/tcga_abmil_s1/summary.csv
