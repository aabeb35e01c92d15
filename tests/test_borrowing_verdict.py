"""compare's borrowing verdict needs enough pairs for its Wilcoxon test to reach p < 0.05 (issue 20, item 6)."""
from __future__ import annotations

import pandas as pd
import pytest

from msrl_plugin.evaluation.compare import ComparisonResult


def _verdict(n_pairs: int) -> str:
    rows = [{"model": m, "seed": 0, "fold": k, "c_index": v}
            for k in range(n_pairs) for m, v in (("abmil", 0.6), ("msrl", 0.7 + 0.001 * k),
                                                 ("msrl:shuffled_buffer", 0.6 + 0.001 * (k % 2)))]
    result = ComparisonResult("survival", ["abmil", "msrl", "msrl:shuffled_buffer"], "abmil", pd.DataFrame(rows),
                              {}, {}, n_boot=200)
    return result.borrowing().iloc[0]["verdict"]


@pytest.mark.parametrize("n_pairs", [1, 3, 5])
def test_below_six_pairs_is_too_few_to_tell(n_pairs):
    # 3 pairs all one way: Wilcoxon p 0.25, yet a bootstrap CI above 0 (issue 20 called this "evidence")
    assert _verdict(n_pairs) == "too few pairs to tell"


def test_six_pairs_can_give_evidence():
    assert _verdict(6) == "evidence of borrowing"
