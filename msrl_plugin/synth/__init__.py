"""Semi-synthetic multimodal cohorts: real (or Gaussian) genomics, WSI bags with a known amount of signal.

``generate_cohort(CohortConfig.test_tier(), seed=0)`` builds one in memory; ``write_cohort`` writes it in
TRIDENT/CLAM layout so every reader and the CLI are exercised (``shared/benchmark.md``). ``n_external`` adds an
external test cohort (``SynthCohort.external``); ``generate_pancancer_pool`` gives other cancer types of the same
population for pre-training.
"""
from .config import CohortConfig
from .external import generate_pancancer_pool, with_external
from .generator import generate_cohort
from .parts import CohortTruth, SynthCohort
from .writer import write_cohort

__all__ = ["CohortConfig", "CohortTruth", "SynthCohort", "generate_cohort", "generate_pancancer_pool",
           "with_external", "write_cohort"]
