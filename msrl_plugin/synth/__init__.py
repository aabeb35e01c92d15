"""Semi-synthetic multimodal cohorts: real (or Gaussian) genomics, WSI bags with a known amount of signal.

``generate_cohort(CohortConfig.test_tier(), seed=0)`` builds one in memory; ``write_cohort`` writes it in
TRIDENT/CLAM layout so every reader and the CLI are exercised (``shared/benchmark.md``).
"""
from .config import CohortConfig
from .generator import CohortTruth, SynthCohort, generate_cohort
from .writer import write_cohort

__all__ = ["CohortConfig", "CohortTruth", "SynthCohort", "generate_cohort", "write_cohort"]
